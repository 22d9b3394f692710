//! Operational endpoints of every role: `/health`, `/health/live`, `/health/ready`, `/metrics`.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures_util::future::{LocalBoxFuture, join_all};
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::error;
use crate::telemetry::metrics::Metrics;

/// Upper bound of one readiness check (CONTRACT §6).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Set once shutdown starts: readiness answers 503 from then on. Once the role's listening
/// socket is shut as well, every answer carries `Connection: close` (`observe`), so keep-alive
/// clients leave before the connection closes; not before, or a client told to reconnect
/// could land in the listen backlog just before it is shut and be reset after writing.
#[derive(Clone, Default, Debug)]
pub struct Draining(Arc<AtomicU8>);

const NOT_READY: u8 = 1;
const CLOSING_CONNECTIONS: u8 = 2;

impl Draining {
    pub fn start(&self) {
        self.0.fetch_max(NOT_READY, Ordering::SeqCst);
    }

    /// The listening socket is shut: answers now end their connection.
    pub fn close_connections(&self) {
        self.0.fetch_max(CLOSING_CONNECTIONS, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst) >= NOT_READY
    }

    pub fn closes_connections(&self) -> bool {
        self.0.load(Ordering::SeqCst) >= CLOSING_CONNECTIONS
    }
}

type CheckFn = Rc<dyn Fn() -> LocalBoxFuture<'static, bool>>;
type ScrapeHook = Rc<dyn Fn() -> LocalBoxFuture<'static, ()>>;

/// One dependency that must answer for the role to be ready.
#[derive(Clone)]
pub struct ReadinessCheck {
    name: &'static str,
    check: CheckFn,
}

impl ReadinessCheck {
    pub fn new<F, Fut>(name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = bool> + 'static,
    {
        Self {
            name,
            check: Rc::new(move || Box::pin(check())),
        }
    }
}

/// What the operational endpoints of one role need; built once per worker.
#[derive(Clone)]
pub struct Ops {
    service: &'static str,
    checks: Vec<ReadinessCheck>,
    draining: Draining,
    metrics: Metrics,
    before_scrape: Option<ScrapeHook>,
}

impl Ops {
    pub fn new(service: &'static str, draining: Draining, metrics: Metrics) -> Self {
        Self {
            service,
            checks: Vec::new(),
            draining,
            metrics,
            before_scrape: None,
        }
    }

    pub fn check(mut self, check: ReadinessCheck) -> Self {
        self.checks.push(check);
        self
    }

    /// Runs before each `/metrics` render, e.g. to refresh a gauge read from a store.
    pub fn before_scrape<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.before_scrape = Some(Rc::new(move || Box::pin(hook())));
        self
    }

    /// Whether the role is shutting down; every answer then closes its connection (`observe`).
    /// Whether answers end their connection (shutdown, the listener shut).
    pub fn closes_connections(&self) -> bool {
        self.draining.closes_connections()
    }

    /// Mounts the four endpoints (any other method: 405 with `Allow`).
    pub fn configure(self, cfg: &mut web::ServiceConfig) {
        let get = |path| web::resource(path).default_service(web::to(error::allow("GET")));
        cfg.app_data(web::Data::new(self))
            .service(get("/health").route(web::get().to(summary)))
            .service(get("/health/live").route(web::get().to(live)))
            .service(get("/health/ready").route(web::get().to(ready)))
            .service(get("/metrics").route(web::get().to(render_metrics)));
    }
}

/// `GET /health`'s body (the seeds' legacy summary).
#[derive(Serialize, ToSchema)]
pub struct Summary {
    #[schema(example = "ok")]
    status: &'static str,
    /// The role: `gateway`, `users` or `auth`.
    #[schema(example = "users")]
    service: &'static str,
    #[schema(example = "0.1.0")]
    version: &'static str,
}

/// `GET /health/live`'s body.
#[derive(Serialize, ToSchema)]
pub struct Live {
    #[schema(example = "alive")]
    status: &'static str,
    /// RFC 3339 UTC with milliseconds.
    #[schema(example = "2026-11-23T12:00:00.000Z")]
    timestamp: String,
}

/// `GET /health/ready`'s body, 200 or 503.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, or `not ready` (503).
    #[schema(example = "ready")]
    status: &'static str,
    /// Each dependency checked: `up` or `down`.
    #[schema(value_type = BTreeMap<String, String>)]
    dependencies: BTreeMap<&'static str, &'static str>,
    #[schema(example = "2026-11-23T12:00:00.000Z")]
    timestamp: String,
}

/// The legacy summary of the role.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The role and its version", body = Summary)))]
pub(crate) async fn summary(ops: web::Data<Ops>) -> HttpResponse {
    HttpResponse::Ok().json(Summary {
        status: "ok",
        service: ops.service,
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Liveness: the process serves; never checks a dependency.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "The process serves", body = Live)))]
pub(crate) async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Live {
        status: "alive",
        timestamp: crate::timestamp::now(),
    })
}

/// Readiness: every dependency answered within 1 s and the role is not shutting down.
#[utoipa::path(get, path = "/health/ready", tag = "operations", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Not ready: a dependency is down, or the role is shutting down",
        body = Readiness)))]
pub(crate) async fn ready(ops: web::Data<Ops>) -> HttpResponse {
    let results = join_all(ops.checks.iter().map(|c| async move {
        let up = tokio::time::timeout(CHECK_TIMEOUT, (c.check)())
            .await
            .unwrap_or(false);
        (c.name, up)
    }))
    .await;
    let all_up = results.iter().all(|(_, up)| *up);
    let dependencies = results
        .into_iter()
        .map(|(name, up)| (name, if up { "up" } else { "down" }))
        .collect();
    let ready = all_up && !ops.draining.is_draining();
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" },
        dependencies,
        timestamp: crate::timestamp::now(),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The role's metrics, Prometheus text format (CONTRACT §7).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text exposition format 0.0.4",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
pub(crate) async fn render_metrics(ops: web::Data<Ops>) -> HttpResponse {
    if let Some(hook) = &ops.before_scrape {
        hook().await;
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(ops.metrics.render())
}
