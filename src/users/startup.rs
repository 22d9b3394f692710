//! Building and running the users role: `Application::build(settings)` → `run_until_stopped()`.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, web};
use slog::{Logger, info, warn};

use super::routes;
use super::store::UserStore;
use crate::config::UsersSettings;
use crate::http::error;
use crate::http::observe::{AppLogger, observe};
use crate::http::ops::{Draining, Ops, ReadinessCheck};
use crate::server;
use crate::telemetry::{logging, metrics};

pub const SERVICE: &str = "users";

pub struct Application {
    port: u16,
    server: Server,
    store: UserStore,
    draining: Draining,
    log: Logger,
}

impl Application {
    /// Binds the port and starts serving; Redis may still be down (the role is then not ready).
    pub fn build(settings: &UsersSettings, log: Logger) -> anyhow::Result<Self> {
        let listener = server::bind(settings.common.host, settings.port)?;
        Self::with_listener(settings, listener, Draining::default(), log)
    }

    /// As `build`, on a listener bound by the caller and with a shared drain flag (`platform all`).
    pub fn with_listener(
        settings: &UsersSettings,
        listener: TcpListener,
        draining: Draining,
        log: Logger,
    ) -> anyhow::Result<Self> {
        metrics::install();
        let log = logging::for_service(&log, SERVICE);
        let port = listener.local_addr()?.port();
        let store = UserStore::new(&settings.redis)?;
        info!(log.new(slog::o!(settings.common.clone())), "starting";
            "port" => port,
            "redis_url" => settings.redis.redacted_url(),
            "redis_password" => if settings.redis.redis_password.is_some() { "***" } else { "none" },
            "redis_pool_size" => settings.redis.redis_pool_size,
            "redis_timeout_ms" => settings.redis.redis_timeout.as_millis() as u64,
        );
        let app_store = store.clone();
        let app_draining = draining.clone();
        let app_log = AppLogger(log.clone());
        let server = server::start(listener, &settings.common, move || {
            let ready_store = app_store.clone();
            let count_store = app_store.clone();
            let ops = Ops::new(SERVICE, app_draining.clone())
                .check(ReadinessCheck::new("redis", move || {
                    let store = ready_store.clone();
                    async move { store.ping().await.is_ok() }
                }))
                .before_scrape(move || {
                    let store = count_store.clone();
                    async move {
                        if let Ok(total) = store.count().await {
                            metrics::set_users_total(total);
                        }
                    }
                });
            App::new()
                .app_data(web::Data::new(app_store.clone()))
                .app_data(web::Data::new(app_log.clone()))
                .wrap(from_fn(observe))
                .configure(|cfg| ops.configure(cfg))
                .configure(routes::configure)
                .default_service(web::to(error::not_found))
        })?;
        Ok(Self {
            port,
            server,
            store,
            draining,
            log,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn draining(&self) -> Draining {
        self.draining.clone()
    }

    /// The server, for `platform all` to run beside another role's.
    pub fn into_parts(self) -> (Server, UserStore) {
        (self.server, self.store)
    }

    /// Serves until SIGTERM/SIGINT and a graceful drain, then closes the Redis pool.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let result =
            server::run_until_stopped(vec![self.server], self.draining, self.log.clone()).await;
        self.store.close();
        match &result {
            Ok(()) => info!(self.log, "stopped"),
            Err(e) => warn!(self.log, "stopped with an error"; "error" => format!("{e:#}")),
        }
        result
    }
}
