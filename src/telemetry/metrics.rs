//! Prometheus metrics: one registry per role, real histograms, the names of CONTRACT §7.

use std::cell::RefCell;
use std::hash::Hash;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_web::http::Method;
use hashbrown::{Equivalent, HashMap};
use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram, with_local_recorder,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "http_requests_in_flight";
pub const HTTP_SHED: &str = "http_requests_shed_total";
pub const UPSTREAM_DURATION: &str = "upstream_request_duration_seconds";
pub const REDIS_DURATION: &str = "redis_operation_duration_seconds";
pub const USERS_TOTAL: &str = "users_total";
pub const USERS_CREATED: &str = "users_created_total";
pub const USERS_DELETED: &str = "users_deleted_total";
pub const TOKENS_ISSUED: &str = "tokens_issued_total";
pub const AUTHENTICATION_ATTEMPTS: &str = "authentication_attempts_total";
pub const PASSWORD_HASH_DURATION: &str = "password_hash_duration_seconds";
pub const RATE_LIMIT_DECISIONS: &str = "rate_limit_decisions_total";
pub const RATE_LIMIT_TRACKED_KEYS: &str = "rate_limit_tracked_keys";

/// Buckets of every latency histogram, 1 ms … 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// One role's metrics: its own registry, which only that role's `/metrics` renders (a
/// Prometheus scraping both ports of `platform all` counts each request once). Cheap to clone;
/// every worker of the role shares it.
#[derive(Clone)]
pub struct Metrics(Arc<Registry>);

struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    in_flight: Gauge,
    shed_in_flight: Counter,
    shed_bodies: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A new registry with every metric described, `http_requests_in_flight` and
    /// `http_requests_shed_total{reason="in_flight"|"bodies"}` at 0, and an upkeep thread that ends when
    /// the last clone is dropped.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("LATENCY_BUCKETS is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let process = metrics_process::Collector::default();
        let (in_flight, shed_in_flight, shed_bodies) = with_local_recorder(&recorder, || {
            process.describe();
            describe();
            (
                gauge!(HTTP_IN_FLIGHT),
                counter!(HTTP_SHED, "reason" => crate::http::shed::IN_FLIGHT),
                counter!(HTTP_SHED, "reason" => crate::http::shed::BODIES),
            )
        });
        let registry = Arc::new(Registry {
            recorder,
            handle,
            process,
            in_flight,
            shed_in_flight,
            shed_bodies,
        });
        spawn_upkeep(Arc::downgrade(&registry));
        Self(registry)
    }

    /// The Prometheus text exposition of this role's metrics and of the process.
    pub fn render(&self) -> String {
        with_local_recorder(&self.0.recorder, || self.0.process.collect());
        self.0.handle.render()
    }

    /// Runs `register` against this role's registry: `counter!`, `gauge!` and `histogram!`
    /// inside it make handles of this role.
    pub fn register<T>(&self, register: impl FnOnce() -> T) -> T {
        with_local_recorder(&self.0.recorder, register)
    }

    /// The `http_requests_shed_total` counter of `reason` (at 0 from this call on).
    pub fn shed(&self, reason: &'static str) -> Counter {
        self.register(|| counter!(HTTP_SHED, "reason" => reason))
    }

    /// Times one Redis operation; `status` is `ok`, `miss` or `error`.
    pub fn record_redis(&self, operation: &'static str, status: &'static str, elapsed: Duration) {
        self.register(|| histogram!(REDIS_DURATION, "operation" => operation, "status" => status))
            .record(elapsed.as_secs_f64());
    }

    /// The per-request recorder of one worker thread.
    pub fn worker(&self) -> WorkerMetrics {
        WorkerMetrics {
            metrics: self.clone(),
            http: HandleCache::default(),
            upstream: HandleCache::default(),
        }
    }
}

/// Without upkeep, histogram samples pile up between scrapes.
fn spawn_upkeep(registry: Weak<Registry>) {
    let upkeep = move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            match registry.upgrade() {
                Some(registry) => registry.handle.run_upkeep(),
                None => return,
            }
        }
    };
    // Without the thread, samples are still drained at every scrape.
    let _ = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(upkeep);
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests served, by route pattern and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request"
    );
    describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being served now");
    describe_counter!(
        HTTP_SHED,
        "HTTP requests refused with 503 overloaded, by reason (in_flight, store_pool, uploads)"
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Time the upstream took to answer the gateway"
    );
    describe_histogram!(
        REDIS_DURATION,
        Unit::Seconds,
        "Time of one store operation on Redis"
    );
    describe_gauge!(USERS_TOTAL, "Users in the store (SCARD users:index)");
    describe_counter!(USERS_CREATED, "Users created by this process");
    describe_counter!(USERS_DELETED, "Users deleted by this process");
    describe_counter!(TOKENS_ISSUED, "Access tokens issued, by grant type");
    describe_counter!(
        RATE_LIMIT_DECISIONS,
        "Rate-limit decisions, by policy and decision (allowed, limited, fail_open, fail_closed)"
    );
    describe_gauge!(
        RATE_LIMIT_TRACKED_KEYS,
        "Keys a per-pod rate-limit table holds, by policy (set when it is pruned)"
    );
    describe_histogram!(
        PASSWORD_HASH_DURATION,
        Unit::Seconds,
        "Time of one Argon2id secret verification"
    );
}

/// The `method` label: the standard methods by name, anything else `OTHER` (a client can send
/// any token as a method; it must not create series).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Metric handles of one family on one thread, found by their label values: a request then
/// costs a hash lookup and atomic updates instead of building a labelled key for the registry.
struct HandleCache<K, H>(RefCell<HashMap<K, H>>);

impl<K, H> Default for HandleCache<K, H> {
    fn default() -> Self {
        Self(RefCell::new(HashMap::default()))
    }
}

impl<K: Hash + Eq, H> HandleCache<K, H> {
    /// Calls `use_handle` with the handle of `labels`, made by `make` the first time.
    fn with<'q, Q>(&self, labels: &'q Q, make: impl FnOnce() -> H, use_handle: impl FnOnce(&H))
    where
        Q: Hash + Equivalent<K> + ?Sized,
        &'q Q: Into<K>,
    {
        let mut map = self.0.borrow_mut();
        use_handle(map.entry_ref(labels).or_insert_with(make));
    }
}

/// The labels of `http_requests_total` and `http_request_duration_seconds`, as stored.
#[derive(Hash, PartialEq, Eq)]
struct HttpKey {
    method: &'static str,
    route: Box<str>,
    status: u16,
}

/// The same labels borrowed from a request; hashes as its `HttpKey` does.
#[derive(Hash)]
struct HttpLabels<'a> {
    method: &'static str,
    route: &'a str,
    status: u16,
}

impl Equivalent<HttpKey> for HttpLabels<'_> {
    fn equivalent(&self, key: &HttpKey) -> bool {
        self.method == key.method && self.status == key.status && self.route == &*key.route
    }
}

impl From<&HttpLabels<'_>> for HttpKey {
    fn from(labels: &HttpLabels<'_>) -> Self {
        Self {
            method: labels.method,
            route: labels.route.into(),
            status: labels.status,
        }
    }
}

/// The labels of `upstream_request_duration_seconds`.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct UpstreamKey {
    service: &'static str,
    method: &'static str,
    status: u16,
}

impl From<&UpstreamKey> for UpstreamKey {
    fn from(key: &UpstreamKey) -> Self {
        *key
    }
}

/// What one worker thread of a role records per request (built in the app factory, so never
/// shared between threads).
pub struct WorkerMetrics {
    metrics: Metrics,
    http: HandleCache<HttpKey, (Counter, Histogram)>,
    upstream: HandleCache<UpstreamKey, Histogram>,
}

impl WorkerMetrics {
    /// Counts one served request. `route` is a route pattern or `unmatched`, never a raw path.
    pub fn record_http(&self, method: &Method, route: &str, status: u16, elapsed: Duration) {
        let labels = HttpLabels {
            method: method_label(method),
            route,
            status,
        };
        let make = || {
            let labels = [
                ("method", labels.method.to_owned()),
                ("route", route.to_owned()),
                ("status_code", status.to_string()),
            ];
            self.metrics.register(|| {
                (
                    counter!(HTTP_REQUESTS, &labels),
                    histogram!(HTTP_DURATION, &labels),
                )
            })
        };
        self.http.with(&labels, make, |(requests, duration)| {
            requests.increment(1);
            duration.record(elapsed.as_secs_f64());
        });
    }

    /// Times one exchange with an upstream service.
    pub fn record_upstream(
        &self,
        service: &'static str,
        method: &Method,
        status: u16,
        elapsed: Duration,
    ) {
        let key = UpstreamKey {
            service,
            method: method_label(method),
            status,
        };
        let make = || {
            self.metrics.register(|| {
                histogram!(
                    UPSTREAM_DURATION,
                    "service" => service,
                    "method" => key.method,
                    "status_code" => status.to_string()
                )
            })
        };
        self.upstream.with(&key, make, |duration| {
            duration.record(elapsed.as_secs_f64());
        });
    }

    /// One more request in flight; each call is paired with one `request_ended`.
    pub fn request_started(&self) {
        self.metrics.0.in_flight.increment(1.0);
    }

    pub fn request_ended(&self) {
        self.metrics.0.in_flight.decrement(1.0);
    }

    /// One request refused by the role's in-flight cap.
    pub fn request_shed(&self) {
        self.metrics.0.shed_in_flight.increment(1);
    }

    /// One request refused because as many bodies as the cap were already on their way in.
    pub fn body_shed(&self) {
        self.metrics.0.shed_bodies.increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines of `rendered` whose series starts with `prefix`, sorted.
    fn series<'a>(rendered: &'a str, prefix: &str) -> Vec<&'a str> {
        let mut found: Vec<&str> = rendered.lines().filter(|l| l.starts_with(prefix)).collect();
        found.sort_unstable();
        found
    }

    #[test]
    fn each_registry_renders_only_its_own_series() {
        let (gateway, users) = (Metrics::new(), Metrics::new());
        let worker = gateway.worker();
        worker.record_http(&Method::GET, "/api/users", 200, Duration::from_millis(3));
        worker.record_http(&Method::GET, "/api/users", 200, Duration::from_millis(4));
        worker.record_http(
            &Method::from_bytes(b"BREW").expect("token"),
            "x",
            418,
            Duration::ZERO,
        );
        users.record_redis("get", "ok", Duration::from_millis(1));

        let shown = gateway.render();
        assert_eq!(
            series(&shown, "http_requests_total{"),
            vec![
                r#"http_requests_total{method="GET",route="/api/users",status_code="200"} 2"#,
                r#"http_requests_total{method="OTHER",route="x",status_code="418"} 1"#
            ],
            "{shown}"
        );
        assert!(series(&shown, "redis_operation").is_empty(), "{shown}");
        let shown = users.render();
        assert!(series(&shown, "http_requests_total").is_empty(), "{shown}");
        assert_eq!(
            series(&shown, "redis_operation_duration_seconds_count"),
            vec![r#"redis_operation_duration_seconds_count{operation="get",status="ok"} 1"#]
        );
        assert!(
            shown.contains("process_"),
            "process metrics on every role: {shown}"
        );
    }

    #[test]
    fn in_flight_starts_at_zero_and_follows_requests() {
        let metrics = Metrics::new();
        let worker = metrics.worker();
        assert!(metrics.render().contains("http_requests_in_flight 0\n"));
        assert!(
            metrics
                .render()
                .contains("http_requests_shed_total{reason=\"in_flight\"} 0\n")
        );
        worker.request_started();
        assert!(metrics.render().contains("http_requests_in_flight 1\n"));
        worker.request_ended();
        assert!(metrics.render().contains("http_requests_in_flight 0\n"));
    }
}
