//! `platform all`: the gateway and the users service in one process, one drain for both.

use slog::{Logger, info};

use crate::config::AllSettings;
use crate::http::ops::Draining;
use crate::{gateway, server, users};

pub async fn run(settings: &AllSettings, log: Logger) -> anyhow::Result<()> {
    let draining = Draining::default();
    let users_listener = server::bind(settings.common.host, settings.users_port)?;
    let users_port = users_listener.local_addr()?.port();
    let users = users::Application::with_listener(
        &settings.users(),
        users_listener,
        draining.clone(),
        log.clone(),
    )?;
    let gateway_listener = server::bind(settings.common.host, settings.gateway_port)?;
    let gateway = gateway::Application::with_listener(
        &settings.gateway(users_port),
        gateway_listener,
        draining.clone(),
        log.clone(),
    )?;
    let (users_server, store) = users.into_parts();
    let result = server::run_until_stopped(
        vec![gateway.into_server(), users_server],
        draining,
        log.clone(),
    )
    .await;
    store.close();
    info!(log, "stopped");
    result
}
