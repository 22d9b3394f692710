//! Building the users role: `build(settings, log)` → `Application::run_until_stopped()`.

use actix_web::middleware::from_fn;
use actix_web::{App, web};
use slog::{Logger, info};

use super::routes;
use super::store::UserStore;
use crate::config::UsersSettings;
use crate::http::error;
use crate::http::observe::{Observer, observe};
use crate::http::ops::{Draining, Ops, ReadinessCheck};
use crate::http::shed::Admission;
use crate::server::{self, Application};
use crate::telemetry::logging;
use crate::telemetry::metrics::Metrics;

pub const SERVICE: &str = "users";

/// Binds the port and serves; Redis may still be down (the role is then not ready).
pub fn build(settings: &UsersSettings, log: Logger) -> anyhow::Result<Application> {
    let listener = server::bind(settings.common.host, settings.port)?;
    let log = logging::for_service(&log, SERVICE);
    let metrics = Metrics::new();
    let redis =
        crate::redis::Redis::new(&settings.redis, log.new(slog::o!("component" => "redis")))?;
    let store = UserStore::on(redis.clone(), &metrics)
        .with_idempotency_ttl(settings.idempotency.idempotency_ttl);
    info!(log.new(slog::o!(settings.common.clone())), "starting";
        "port" => listener.local_addr()?.port(),
        "redis_url" => settings.redis.redacted_url(),
        "redis_password" => if settings.redis.redis_password.is_some() { "***" } else { "none" },
        "redis_pool_size" => settings.redis.redis_pool_size,
        "redis_timeout_ms" => settings.redis.redis_timeout.as_millis() as u64,
        "redis_pool_wait_ms" => settings.redis.redis_pool_wait.as_millis() as u64,
        "redis_sentinels" => settings.redis.redis_sentinels.join(","),
        "redis_master_name" => &settings.redis.redis_master_name,
        "redis_min_replicas_ack" => settings.redis.redis_min_replicas_ack,
    );
    // A Redis an older version wrote gets users:by_created_lex now, not at the first list.
    actix_web::rt::spawn(store.clone().sync_at_start());
    // Users the seeds' service writes (before or during a migration) are indexed without a
    // manual step; its commands are pipelined on the shared connection with the requests'
    // (its metrics kept apart).
    let reconciler_store = UserStore::on(redis, &Metrics::new());
    let reconciler = super::reconcile::spawn(reconciler_store.clone(), log.clone());
    let draining = Draining::default();
    // One in-flight count per role, shared by its workers.
    let admission = Admission::new(&settings.common);
    let (app_store, app_draining, app_log) = (store.clone(), draining.clone(), log.clone());
    let app = Application::start(listener, &settings.common, draining, log, move || {
        let (ready_store, count_store) = (app_store.clone(), app_store.clone());
        let ops = Ops::new(SERVICE, app_draining.clone(), metrics.clone())
            .check(ReadinessCheck::new("redis", move || {
                let store = ready_store.clone();
                async move { store.ping().await.is_ok() }
            }))
            .before_scrape(move || {
                let store = count_store.clone();
                async move { store.refresh_total().await }
            });
        App::new()
            .app_data(web::Data::new(app_store.clone()))
            .app_data(Observer::new(app_log.clone(), &metrics, &admission))
            .wrap(from_fn(observe))
            .configure(|cfg| ops.configure(cfg))
            .configure(routes::configure)
            .default_service(web::to(error::not_found))
    })?;
    Ok(app.on_stop(move || {
        reconciler.abort();
        reconciler_store.close();
        store.close()
    }))
}
