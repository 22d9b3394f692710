//! HTTP server start-up and graceful shutdown, shared by every role.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_http::Request;
use actix_service::{IntoServiceFactory, ServiceFactory};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Response, Server};
use actix_web::{Error, HttpServer};
use anyhow::Context;
use slog::{Logger, info};

use crate::config::CommonSettings;
use crate::http::ops::Draining;

/// Idle keep-alive of our servers; the gateway's pooled connections must idle for less.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Time a client gets to send the request head.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `host:port` (port 0 picks a free one).
pub fn bind(host: std::net::IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(host, port);
    TcpListener::bind(addr).with_context(|| format!("failed to listen on {addr}"))
}

/// Starts serving `factory`'s app on `listener`. Signals are ours to handle (`run_until_stopped`).
pub fn start<F, I, S, B>(
    listener: TcpListener,
    common: &CommonSettings,
    factory: F,
) -> anyhow::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as actix_service::Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let server = HttpServer::new(factory)
        .disable_signals()
        .keep_alive(KEEP_ALIVE)
        .client_request_timeout(REQUEST_HEAD_TIMEOUT)
        .shutdown_timeout(common.shutdown_timeout.as_secs_f64().ceil() as u64)
        .workers(common.effective_workers());
    Ok(server
        .listen(listener)
        .context("failed to start the HTTP server")?
        .run())
}

/// Serves until SIGTERM/SIGINT, then: not ready, stop accepting, drain in-flight requests.
pub async fn run_until_stopped(
    servers: Vec<Server>,
    draining: Draining,
    log: Logger,
) -> anyhow::Result<()> {
    let handles: Vec<_> = servers.iter().map(Server::handle).collect();
    actix_web::rt::spawn(async move {
        let signal = wait_for_signal().await;
        info!(log, "shutting down: draining in-flight requests"; "signal" => signal);
        draining.start();
        futures_util::future::join_all(handles.iter().map(|h| h.stop(true))).await;
    });
    for result in futures_util::future::join_all(servers).await {
        result.context("HTTP server failed")?;
    }
    Ok(())
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        // Without signal handlers we can only run until killed.
        _ => std::future::pending().await,
    }
}
