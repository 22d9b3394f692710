//! HTTP server start-up and graceful shutdown, shared by every role.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_http::Request;
use actix_service::{IntoServiceFactory, ServiceFactory};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Extensions, Response, Server, ServerHandle};
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
    /// The listening socket (a duplicate of the server's), closed when the drain starts.
    listener: TcpListener,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    drain_time: Duration,
}

/// Counts a connection as open until actix drops its data (when the connection ends).
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
        // The drain is part of the shutdown timeout (`CommonSettings::check`): what is left of
        // it is the in-flight requests' (actix counts it from `stop`).
        let in_flight_time = common.shutdown_timeout.saturating_sub(common.drain_time);
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        let own = listener
            .try_clone()
            .context("failed to duplicate the listening socket")?;
        let server = HttpServer::new(factory)
            .disable_signals()
            .keep_alive(KEEP_ALIVE)
            .client_request_timeout(REQUEST_HEAD_TIMEOUT)
            .shutdown_timeout(in_flight_time.as_secs_f64().ceil() as u64)
            .workers(common.effective_workers())
            .on_connect(move |_, data: &mut Extensions| {
                data.insert(OpenConnection::new(&counted));
            })
            .listen(listener)
            .context("failed to start the HTTP server")?
            .run();
        Ok(Self {
            port,
            server,
            draining,
            log,
            on_stop: Vec::new(),
            listener: own,
            open,
            drain_time: common.drain_time,
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
/// one after the other in list order (list a role before the roles it calls): each closes its
/// listening socket (new connections are refused), from then on answers with
/// `Connection: close` (the `observe` middleware), serves what arrives on its open connections
/// until none is left or
/// the drain time since the signal is over, then stops (idle connections closed, in-flight
/// requests finished within the rest of the shutdown timeout), closes what it holds and logs
/// `stopped`.
pub async fn run_until_stopped(apps: Vec<Application>) -> anyhow::Result<()> {
    let stopping: Vec<_> = apps
        .iter()
        .map(|app| Stopping {
            handle: app.server.handle(),
            draining: app.draining.clone(),
            log: app.log.clone(),
            listener: app.listener.try_clone(),
            open: app.open.clone(),
            drain_time: app.drain_time,
        })
        .collect();
    actix_web::rt::spawn(async move {
        let signal = wait_for_signal().await;
        let since = tokio::time::Instant::now();
        for role in &stopping {
            // Not ready first, then the line that says so: whoever acts on the line (a test,
            // an operator) finds the role already refusing readiness.
            role.draining.start();
            info!(role.log, "shutting down: draining in-flight requests"; "signal" => signal);
        }
        for role in &stopping {
            role.stop(since).await;
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

/// What stopping one application needs.
struct Stopping {
    handle: ServerHandle,
    draining: Draining,
    log: Logger,
    listener: std::io::Result<TcpListener>,
    open: Arc<AtomicUsize>,
    drain_time: Duration,
}

impl Stopping {
    /// Refuses new connections, drains the open ones until `since` + the drain time, stops.
    async fn stop(&self, since: tokio::time::Instant) {
        // The accept thread lets go of the socket first (else it would spin on its error),
        // then the socket stops listening: connects are refused at once (nothing was sent, a
        // client tries another pod), instead of waiting in the backlog until the exit.
        self.handle.pause().await;
        let closed = self
            .listener
            .as_ref()
            .map_err(|e| e.kind().into())
            .and_then(|l| socket2::SockRef::from(l).shutdown(std::net::Shutdown::Read));
        if let Err(e) = closed {
            warn!(self.log, "the listening socket stays open until the stop"; "error" => e.to_string());
        }
        // Only now are clients told to reconnect: they find the socket refusing, never a
        // backlog about to be reset.
        self.draining.close_connections();
        // Clients on open connections get their answers, each with `Connection: close`, and
        // reconnect elsewhere; a connection with nothing to send is closed by the stop below.
        let until = since + self.drain_time;
        while self.open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        info!(self.log, "drained"; "open_connections" => self.open.load(Ordering::SeqCst));
        self.handle.stop(true).await;
    }
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
