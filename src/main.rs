//! Entry point: parse the command line, start logging, run the chosen role.

use std::process::ExitCode;

use platform::config::{self, AuthTask, CommonSettings, Role, UsersTask};
use platform::telemetry::logging;
use platform::{all, auth, gateway, users};

/// mimalloc instead of glibc's malloc: a proxied request allocates and frees a few dozen
/// small objects across threads; glibc spent ~10 % of the gateway's CPU on them.
#[global_allocator]
static ALLOCATOR: platform::allocator::Allocator = platform::allocator::Allocator;

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = config::parse_cli();
    let (process, common): (&'static str, &CommonSettings) = match &cli.role {
        Role::Gateway(s) => (gateway::SERVICE, &s.common),
        Role::Users(cmd) => (users::SERVICE, &cmd.settings.common),
        Role::Auth(cmd) => (auth::SERVICE, &cmd.settings.common),
        Role::All(s) => ("all", &s.common),
    };
    if let Err(e) = common.check() {
        eprintln!("platform: {e}");
        return ExitCode::from(2);
    }
    // Dropped at the end of main: flushes the last log lines.
    let (log, _guard) = logging::init(process, common.log_format, common.log_level);
    let result = match cli.role {
        Role::Gateway(settings) => match gateway::build(&settings, log) {
            Ok(app) => app.run_until_stopped().await,
            Err(e) => Err(e),
        },
        Role::Users(cmd) => match cmd.task {
            None => match users::build(&cmd.settings, log) {
                Ok(app) => app.run_until_stopped().await,
                Err(e) => Err(e),
            },
            Some(UsersTask::Reindex) => users::reindex::run(&cmd.settings, &log).await,
            Some(UsersTask::Export(args)) => {
                users::backup::export(&cmd.settings, &args, &log).await
            }
            Some(UsersTask::Import { file }) => {
                users::backup::import(&cmd.settings, &file, &log).await
            }
        },
        Role::Auth(cmd) => match cmd.task {
            None => match auth::build(&cmd.settings, log) {
                Ok(app) => app.run_until_stopped().await,
                Err(e) => Err(e),
            },
            Some(AuthTask::GenerateKey { dir }) => auth::tasks::generate_key(&dir),
            Some(AuthTask::HashSecret) => auth::tasks::hash_secret(&cmd.settings.tokens.argon2),
        },
        Role::All(settings) => all::run(&settings, log).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("platform: {e:#}");
            ExitCode::FAILURE
        }
    }
}
