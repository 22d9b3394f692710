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
use slog::{Logger, info, warn};

use crate::config::CommonSettings;
use crate::http::ops::Draining;

/// Idle keep-alive of our servers; the gateway's pooled connections must idle for less.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Time a client gets to send the request head.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `host:port` (port 0 picks a free one).
pub fn bind(host: std::net::IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(host, port);
    TcpListener::bind(addr).with_context(|| format!("failed to listen on {addr}"))
}

/// One role's HTTP server, serving from the moment it is awaited: what every role builds and
/// what `platform all` runs a list of.
pub struct Application {
    port: u16,
    server: Server,
    draining: Draining,
    log: Logger,
    on_stop: Vec<Box<dyn FnOnce()>>,
}

impl Application {
    /// Serves `factory`'s app on `listener`; from SIGTERM on, `draining` is set (readiness
    /// answers 503). Signals are ours to handle (`run_until_stopped`).
    pub fn start<F, I, S, B>(
        listener: TcpListener,
        common: &CommonSettings,
        draining: Draining,
        log: Logger,
        factory: F,
    ) -> anyhow::Result<Self>
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
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(factory)
            .disable_signals()
            .keep_alive(KEEP_ALIVE)
            .client_request_timeout(REQUEST_HEAD_TIMEOUT)
            .shutdown_timeout(common.shutdown_timeout.as_secs_f64().ceil() as u64)
            .workers(common.effective_workers())
            .listen(listener)
            .context("failed to start the HTTP server")?
            .run();
        Ok(Self {
            port,
            server,
            draining,
            log,
            on_stop: Vec::new(),
        })
    }

    /// Something to close once the server has drained (a connection pool).
    pub fn on_stop(mut self, close: impl FnOnce() + 'static) -> Self {
        self.on_stop.push(Box::new(close));
        self
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT and a graceful drain.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        run_until_stopped(vec![self]).await
    }
}

/// Serves every application until SIGTERM/SIGINT. Then none is ready any more, and they stop
/// one after the other in list order, each draining its in-flight requests before the next
/// stops: list a role before the roles it calls. Each closes what it holds and logs `stopped`.
pub async fn run_until_stopped(apps: Vec<Application>) -> anyhow::Result<()> {
    let stopping: Vec<_> = apps
        .iter()
        .map(|app| (app.server.handle(), app.draining.clone(), app.log.clone()))
        .collect();
    actix_web::rt::spawn(async move {
        let signal = wait_for_signal().await;
        for (_, draining, log) in &stopping {
            info!(log, "shutting down: draining in-flight requests"; "signal" => signal);
            draining.start();
        }
        for (handle, _, _) in &stopping {
            handle.stop(true).await;
        }
    });
    // Every server runs only while polled: all are awaited together.
    let served = futures_util::future::join_all(apps.into_iter().map(|app| async move {
        let served = app.server.await.context("HTTP server failed");
        for close in app.on_stop {
            close();
        }
        match &served {
            Ok(()) => info!(app.log, "stopped"),
            Err(e) => warn!(app.log, "stopped with an error"; "error" => format!("{e:#}")),
        }
        served
    }))
    .await;
    served.into_iter().collect()
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
