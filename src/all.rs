//! `platform all`: every role in one process, the gateway pointed at the in-process users and
//! auth roles. The auth role runs when it has a signing keys directory (`--signing-keys-dir`).

use slog::Logger;

use crate::config::AllSettings;
use crate::{auth, gateway, server, users};

pub async fn run(settings: &AllSettings, log: Logger) -> anyhow::Result<()> {
    let users = users::build(&settings.users(), log.clone())?;
    let auth = match settings.tokens.signing_keys_dir {
        Some(_) => Some(auth::build(&settings.auth_role(), log.clone())?),
        None => None,
    };
    let auth_port = auth.as_ref().map_or(settings.auth_port, |a| a.port());
    let gateway = gateway::build(&settings.gateway(users.port(), auth_port), log)?;
    // The gateway first: it drains its requests while the roles behind it still answer them.
    let roles = [Some(gateway), Some(users), auth];
    server::run_until_stopped(roles.into_iter().flatten().collect()).await
}
