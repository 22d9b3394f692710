//! Entry point: parse the command line, start logging, run the chosen role.

use std::process::ExitCode;

use platform::config::{self, Role, UsersTask};
use platform::telemetry::logging;
use platform::users;

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = config::parse_cli();
    let result = match cli.role {
        Role::Users(cmd) => {
            let common = &cmd.settings.common;
            let (log, _guard) = logging::init(users::SERVICE, common.log_format, common.log_level);
            match cmd.task {
                None => match users::Application::build(&cmd.settings, log.clone()) {
                    Ok(app) => app.run_until_stopped().await,
                    Err(e) => Err(e),
                },
                Some(UsersTask::Reindex) => {
                    platform::users::reindex::run(&cmd.settings, &log).await
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("platform: {e:#}");
            ExitCode::FAILURE
        }
    }
}
