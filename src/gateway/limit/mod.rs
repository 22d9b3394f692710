//! Rate limits at the edge (part of the request filter), GCRA in two tiers: the "ip" policy
//! per pod and per client address, checked before any token is verified; the "client" policy
//! per verified subject, else per address, per pod (`local`) or shared in Redis (`redis`).

pub mod answer;
pub mod gcra;
pub mod local;
mod shared;

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use metrics::{Counter, Gauge, counter, gauge};

use self::answer::{Headers, Quota};
use self::gcra::{Decision, Policy};
use self::local::{KeyRef, Table};
use self::shared::Shared;
use crate::config::{FailureMode, LimitSettings, RateLimitMode};
use crate::http::client::ClientKey;
use crate::http::error::{ApiError, ErrorCode};
use crate::telemetry::metrics::{Metrics, RATE_LIMIT_DECISIONS, RATE_LIMIT_TRACKED_KEYS};

/// How often expired keys leave the per-pod tables (and the tracked-keys gauge is set).
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// A policy's counters: `rate_limit_decisions_total{policy, decision}`.
struct Counters {
    allowed: Counter,
    limited: Counter,
    /// fail_open or fail_closed, as the failure mode says (the shared tier's policy only).
    failed: Option<Counter>,
    tracked: Gauge,
}

impl Counters {
    fn new(policy: &'static str, failed: Option<&'static str>) -> Self {
        let decision =
            |d: &'static str| counter!(RATE_LIMIT_DECISIONS, "policy" => policy, "decision" => d);
        Self {
            allowed: decision("allowed"),
            limited: decision("limited"),
            failed: failed.map(decision),
            tracked: gauge!(RATE_LIMIT_TRACKED_KEYS, "policy" => policy),
        }
    }

    fn count(&self, decision: &Decision) {
        if decision.allowed {
            self.allowed.increment(1);
        } else {
            self.limited.increment(1);
        }
    }
}

/// The gateway's limits, shared by its workers.
pub struct Limits {
    ip: Option<(Table, Counters)>,
    /// The "client" policy per pod: its tier in `local` mode, the fallback in `redis` mode.
    client: Option<(Table, Counters)>,
    shared: Option<Shared>,
    failure_mode: FailureMode,
    headers: Headers,
}

impl Limits {
    /// The limits `settings` ask for (`None` when off), and the task that prunes their tables.
    pub fn new(settings: &LimitSettings, metrics: &Metrics) -> anyhow::Result<Option<Arc<Self>>> {
        settings.check().map_err(anyhow::Error::msg)?;
        if settings.rate_limit == RateLimitMode::Off {
            return Ok(None);
        }
        let window = settings.rate_limit_window;
        let max_keys = settings.rate_limit_max_keys;
        let ip = settings
            .rate_limit_ip_requests
            .map(|q| Policy::new("ip", q, window, q));
        let client = settings
            .rate_limit_requests
            .map(|q| Policy::new("client", q, window, settings.burst().unwrap_or(q)));
        let shared = match settings.rate_limit {
            RateLimitMode::Redis => Shared::new(settings)?,
            _ => None,
        };
        let failed = match settings.rate_limit_failure_mode {
            FailureMode::Open => "fail_open",
            FailureMode::Closed => "fail_closed",
        };
        // A policy left out never decides, so the stand-in's header is never sent.
        let headers = Headers::new(
            settings.rate_limit_headers,
            &ip.unwrap_or(Policy::new("ip", 1, window, 1)),
            &client.unwrap_or(Policy::new("client", 1, window, 1)),
        );
        let shared_policy = shared.as_ref().map(|_| "client");
        let table = |policy: Policy| {
            let failed = (shared_policy == Some(policy.name)).then_some(failed);
            let counters = metrics.register(|| Counters::new(policy.name, failed));
            (Table::new(policy, max_keys), counters)
        };
        let limits = Arc::new(Self {
            ip: ip.map(table),
            client: client.map(table),
            shared,
            failure_mode: settings.rate_limit_failure_mode,
            headers,
        });
        actix_web::rt::spawn(prune(Arc::downgrade(&limits)));
        Ok(Some(limits))
    }

    /// The "ip" policy, per pod, before any token is verified: `Err` is the 429.
    pub fn check_ip(&self, client: Option<IpAddr>, quota: &mut Quota) -> Result<(), ApiError> {
        let (Some((table, counters)), Some(ip)) = (&self.ip, client) else {
            return Ok(());
        };
        let decision = table.decide(KeyRef::Client(ClientKey::of(ip)));
        counters.count(&decision);
        quota.ip = Some(decision);
        self.verdict(&decision, quota)
    }

    /// The "client" policy for the verified `subject`, else the client address.
    pub async fn check_client(
        &self,
        subject: Option<&str>,
        client: Option<IpAddr>,
        quota: &mut Quota,
    ) -> Result<(), ApiError> {
        let Some((table, counters)) = &self.client else {
            return Ok(());
        };
        let key = match (subject, client) {
            (Some(subject), _) => KeyRef::Subject(bounded(subject)),
            (None, Some(ip)) => KeyRef::Client(ClientKey::of(ip)),
            (None, None) => return Ok(()),
        };
        let decision = match &self.shared {
            None => {
                let decision = table.decide(key);
                counters.count(&decision);
                decision
            }
            Some(shared) => {
                let text = match key {
                    KeyRef::Subject(subject) => format!("client:sub:{subject}"),
                    KeyRef::Client(ip) => format!("client:ip:{}", ip.text()),
                };
                match shared.decide(table.policy(), &text).await {
                    Some(decision) => {
                        counters.count(&decision);
                        decision
                    }
                    None => {
                        if let Some(failed) = &counters.failed {
                            failed.increment(1);
                        }
                        if self.failure_mode == FailureMode::Closed {
                            return Err(self.headers.annotate(unavailable(), quota));
                        }
                        table.decide(key)
                    }
                }
            }
        };
        quota.client = Some(decision);
        self.verdict(&decision, quota)
    }

    fn verdict(&self, decision: &Decision, quota: &Quota) -> Result<(), ApiError> {
        if decision.allowed {
            Ok(())
        } else {
            Err(self.headers.limited(decision, quota))
        }
    }

    /// The answers' rate-limit headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// `error` with the headers of `quota` when limits are on: every answer of a limited
    /// route tells its limits (a refused credential, an upstream's failure).
    pub fn annotated(limits: Option<&Self>, quota: &Quota, error: ApiError) -> ApiError {
        match limits {
            Some(limits) => limits.headers.annotate(error, quota),
            None => error,
        }
    }

    fn prune(&self) {
        for (table, counters) in self.ip.iter().chain(self.client.iter()) {
            counters.tracked.set(table.prune() as f64);
        }
    }
}

/// The closed mode's answer while the shared tier cannot decide: the server's fault, not the
/// client's quota, hence a 503 rather than a 429.
fn unavailable() -> ApiError {
    ApiError::new(
        ErrorCode::Overloaded,
        "the rate limiter cannot decide right now",
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
}

/// Prunes the tables every `PRUNE_EVERY` while the gateway lives.
async fn prune(limits: Weak<Limits>) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        every.tick().await;
        match limits.upgrade() {
            Some(limits) => limits.prune(),
            None => return,
        }
    }
}

/// Longest part of a `sub` a limit keys by: a signed token may carry a subject of any length,
/// and each one is a key of the per-pod table and of the shared store.
const MAX_SUBJECT_KEY: usize = 256;

/// `subject` cut to at most `MAX_SUBJECT_KEY` bytes, at a character boundary (subjects that
/// share so long a prefix share a quota: the safe side).
fn bounded(subject: &str) -> &str {
    let mut end = subject.len().min(MAX_SUBJECT_KEY);
    while !subject.is_char_boundary(end) {
        end -= 1;
    }
    &subject[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_keyed_by_at_most_256_bytes_cut_at_a_character() {
        assert_eq!(bounded("alice"), "alice");
        let long = "é".repeat(200); // 400 bytes
        let key = bounded(&long);
        assert!(key.len() <= MAX_SUBJECT_KEY && key.len() >= MAX_SUBJECT_KEY - 1);
        assert!(long.starts_with(key));
    }
}
