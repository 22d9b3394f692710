//! Prometheus metrics: one recorder per process, real histograms, the names of CONTRACT §7.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::http::Method;
use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "http_requests_in_flight";
pub const UPSTREAM_DURATION: &str = "upstream_request_duration_seconds";
pub const REDIS_DURATION: &str = "redis_operation_duration_seconds";
pub const USERS_TOTAL: &str = "users_total";
pub const USERS_CREATED: &str = "users_created_total";
pub const USERS_DELETED: &str = "users_deleted_total";

/// Buckets of every latency histogram, 1 ms … 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const UPKEEP_EVERY: Duration = Duration::from_secs(5);

struct Registry {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

static REGISTRY: OnceLock<Option<Registry>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls are no-ops) and its upkeep thread.
pub fn install() {
    REGISTRY.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| b.install_recorder())
            .ok()?;
        let process = metrics_process::Collector::default();
        process.describe();
        describe();
        let upkeep = handle.clone();
        // Without upkeep, histogram samples pile up between scrapes.
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            })
            .ok()?;
        Some(Registry { handle, process })
    });
}

/// The Prometheus text exposition of every metric of this process.
pub fn render() -> String {
    match REGISTRY.get() {
        Some(Some(registry)) => {
            registry.process.collect();
            registry.handle.render()
        }
        _ => String::new(),
    }
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

/// Metric handles of one label set, kept per thread: a request then costs two atomic updates
/// instead of building a labelled key and looking it up in the shared registry.
struct HttpHandles {
    method: &'static str,
    route: Box<str>,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

struct UpstreamHandles {
    service: &'static str,
    method: &'static str,
    status: u16,
    duration: Histogram,
}

/// Handle caches keyed by `label_hash`; the map hashes that key with FNV-1a too.
type HandleCache<T> = HashMap<u64, Vec<T>, BuildHasherDefault<Fnv>>;

thread_local! {
    static HTTP_HANDLES: RefCell<HandleCache<HttpHandles>> = RefCell::default();
    static UPSTREAM_HANDLES: RefCell<HandleCache<UpstreamHandles>> = RefCell::default();
    static IN_FLIGHT: Gauge = gauge!(HTTP_IN_FLIGHT);
}

/// FNV-1a. The keys are label sets we build ourselves from a bounded set of values (route
/// patterns, standard methods, status codes), so SipHash's flooding resistance buys nothing
/// on this per-request path.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn label_hash(parts: impl Hash) -> u64 {
    let mut hasher = Fnv::default();
    parts.hash(&mut hasher);
    hasher.finish()
}

/// Counts one served request. `route` is a route pattern or `unmatched`, never a raw path.
pub fn record_http(method: &Method, route: &str, status: u16, elapsed: Duration) {
    let method = method_label(method);
    let key = label_hash((method, route, status));
    HTTP_HANDLES.with_borrow_mut(|cache| {
        let slot = cache.entry(key).or_default();
        let position = slot
            .iter()
            .position(|h| h.method == method && h.status == status && &*h.route == route);
        let handles = match position {
            Some(i) => &slot[i],
            None => {
                let labels = [
                    ("method", method.to_owned()),
                    ("route", route.to_owned()),
                    ("status_code", status.to_string()),
                ];
                slot.push(HttpHandles {
                    method,
                    route: route.into(),
                    status,
                    requests: counter!(HTTP_REQUESTS, &labels),
                    duration: histogram!(HTTP_DURATION, &labels),
                });
                &slot[slot.len() - 1]
            }
        };
        handles.requests.increment(1);
        handles.duration.record(elapsed.as_secs_f64());
    });
}

/// Tracks a request in flight until dropped.
pub struct InFlight;

impl InFlight {
    pub fn start() -> Self {
        IN_FLIGHT.with(|g| g.increment(1.0));
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.with(|g| g.decrement(1.0));
    }
}

/// Times one Redis operation; `status` is `ok`, `miss` or `error`.
pub fn record_redis(operation: &'static str, status: &'static str, elapsed: Duration) {
    histogram!(REDIS_DURATION, "operation" => operation, "status" => status)
        .record(elapsed.as_secs_f64());
}

/// Times one call to an upstream service.
pub fn record_upstream(service: &'static str, method: &Method, status: u16, elapsed: Duration) {
    let method = method_label(method);
    let key = label_hash((service, method, status));
    UPSTREAM_HANDLES.with_borrow_mut(|cache| {
        let slot = cache.entry(key).or_default();
        let position = slot
            .iter()
            .position(|h| h.service == service && h.method == method && h.status == status);
        let handles = match position {
            Some(i) => &slot[i],
            None => {
                slot.push(UpstreamHandles {
                    service,
                    method,
                    status,
                    duration: histogram!(
                        UPSTREAM_DURATION,
                        "service" => service,
                        "method" => method,
                        "status_code" => status.to_string()
                    ),
                });
                &slot[slot.len() - 1]
            }
        };
        handles.duration.record(elapsed.as_secs_f64());
    });
}

pub fn set_users_total(total: u64) {
    gauge!(USERS_TOTAL).set(total as f64);
}

pub fn user_created() {
    counter!(USERS_CREATED).increment(1);
}

pub fn user_deleted() {
    counter!(USERS_DELETED).increment(1);
}
