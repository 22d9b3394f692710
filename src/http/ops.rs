//! Operational endpoints of every role: `/health`, `/health/live`, `/health/ready`, `/metrics`.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures_util::future::{LocalBoxFuture, join_all};
use serde_json::{Map, Value, json};

use crate::telemetry::metrics::Metrics;

/// Upper bound of one readiness check (CONTRACT §6).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Set once shutdown starts: readiness answers 503 from then on, and every answer carries
/// `Connection: close` (`observe`), so keep-alive clients leave before the connection closes.
#[derive(Clone, Default, Debug)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
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
    pub fn is_draining(&self) -> bool {
        self.draining.is_draining()
    }

    /// Mounts the four endpoints.
    pub fn configure(self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(self))
            .route("/health", web::get().to(summary))
            .route("/health/live", web::get().to(live))
            .route("/health/ready", web::get().to(ready))
            .route("/metrics", web::get().to(render_metrics));
    }
}

async fn summary(ops: web::Data<Ops>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "service": ops.service,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive", "timestamp": crate::timestamp::now()}))
}

async fn ready(ops: web::Data<Ops>) -> HttpResponse {
    let results = join_all(ops.checks.iter().map(|c| async move {
        let up = tokio::time::timeout(CHECK_TIMEOUT, (c.check)())
            .await
            .unwrap_or(false);
        (c.name, up)
    }))
    .await;
    let all_up = results.iter().all(|(_, up)| *up);
    let dependencies: Map<String, Value> = results
        .into_iter()
        .map(|(name, up)| (name.to_owned(), Value::from(if up { "up" } else { "down" })))
        .collect();
    let ready = all_up && !ops.draining.is_draining();
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "dependencies": dependencies,
        "timestamp": crate::timestamp::now(),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn render_metrics(ops: web::Data<Ops>) -> HttpResponse {
    if let Some(hook) = &ops.before_scrape {
        hook().await;
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(ops.metrics.render())
}
