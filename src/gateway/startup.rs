//! Building and running the gateway role: `Application::build(settings)` → `run_until_stopped()`.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, web};
use slog::{Logger, info};

use super::forward::{self, Upstream};
use super::readiness::UpstreamReadiness;
use crate::config::GatewaySettings;
use crate::http::observe::{AppLogger, observe};
use crate::http::ops::{Draining, Ops, ReadinessCheck};
use crate::server::{self, KEEP_ALIVE};
use crate::telemetry::{logging, metrics};

pub const SERVICE: &str = "gateway";

pub struct Application {
    port: u16,
    server: Server,
    draining: Draining,
    log: Logger,
}

/// A pooled awc client for one worker, configured as a proxy needs (see PITFALLS.md).
fn upstream_client(settings: &GatewaySettings) -> awc::Client {
    let connector = awc::Connector::new()
        .timeout(settings.upstream.upstream_connect_timeout)
        // Below the upstream's 5 s keep-alive, so we never reuse a connection it just closed.
        .conn_keep_alive(KEEP_ALIVE.saturating_sub(std::time::Duration::from_secs(1)))
        // New connections re-resolve the host: bounded lifetime follows Service/DNS changes.
        .conn_lifetime(std::time::Duration::from_secs(30))
        .limit(512);
    awc::Client::builder()
        .connector(connector)
        .timeout(settings.upstream.upstream_timeout)
        .disable_redirects()
        .no_default_headers()
        .finish()
}

impl Application {
    pub fn build(settings: &GatewaySettings, log: Logger) -> anyhow::Result<Self> {
        let listener = server::bind(settings.common.host, settings.port)?;
        Self::with_listener(settings, listener, Draining::default(), log)
    }

    pub fn with_listener(
        settings: &GatewaySettings,
        listener: TcpListener,
        draining: Draining,
        log: Logger,
    ) -> anyhow::Result<Self> {
        metrics::install();
        let log = logging::for_service(&log, SERVICE);
        let port = listener.local_addr()?.port();
        let upstream = Upstream::new(
            settings.users_url.as_str(),
            settings.upstream.upstream_timeout,
            settings.upstream.max_body,
        )?;
        let base = upstream.base.clone();
        info!(log.new(slog::o!(settings.common.clone())), "starting";
            "port" => port,
            "users_url" => crate::config::redact_url(&settings.users_url),
            "upstream_timeout_ms" => settings.upstream.upstream_timeout.as_millis() as u64,
            "upstream_connect_timeout_ms" => settings.upstream.upstream_connect_timeout.as_millis() as u64,
            "max_body" => settings.upstream.max_body,
        );
        let ready_url = format!("{base}/health/ready");
        let readiness = UpstreamReadiness::default();
        let app_draining = draining.clone();
        let app_log = AppLogger(log.clone());
        let settings = settings.clone();
        let server = server::start(listener, &settings.common.clone(), move || {
            let client = upstream_client(&settings);
            let check_client = client.clone();
            let readiness = readiness.clone();
            let ready_url = ready_url.clone();
            let ops = Ops::new(SERVICE, app_draining.clone()).check(ReadinessCheck::new(
                "user_service",
                move || {
                    let (client, readiness, url) =
                        (check_client.clone(), readiness.clone(), ready_url.clone());
                    async move { readiness.check(&client, &url).await }
                },
            ));
            App::new()
                .app_data(web::Data::new(client))
                .app_data(web::Data::new(upstream.clone()))
                .app_data(web::Data::new(app_log.clone()))
                .wrap(from_fn(observe))
                .configure(|cfg| ops.configure(cfg))
                // `/api/users` and `/api/users/…` are proxied, any other path is a 404.
                .default_service(web::to(forward::forward))
        })?;
        Ok(Self {
            port,
            server,
            draining,
            log,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn into_server(self) -> Server {
        self.server
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let result =
            server::run_until_stopped(vec![self.server], self.draining, self.log.clone()).await;
        info!(self.log, "stopped");
        result
    }
}
