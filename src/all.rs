//! `platform all`: every role in one process, the gateway pointed at the in-process users role.

use slog::Logger;

use crate::config::AllSettings;
use crate::{gateway, server, users};

pub async fn run(settings: &AllSettings, log: Logger) -> anyhow::Result<()> {
    let users = users::build(&settings.users(), log.clone())?;
    let gateway = gateway::build(&settings.gateway(users.port()), log)?;
    // The gateway first: it drains its requests while the roles behind it still answer them.
    server::run_until_stopped(vec![gateway, users]).await
}
