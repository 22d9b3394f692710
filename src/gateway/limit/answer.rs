//! What a limited route's answers say of the limits: `RateLimit-Policy` and `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers, structured fields), or the legacy `X-RateLimit-*`;
//! the 429 with `Retry-After` in whole seconds (at least 1, a little jitter so refused clients
//! do not all come back in the same second).

use actix_web::http::header::{self, HeaderName, HeaderValue};

use super::gcra::{Decision, Policy};
use crate::config::RateLimitHeaders;
use crate::http::error::{ApiError, ErrorCode};

pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The decisions one request had, policy by policy.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quota {
    pub ip: Option<Decision>,
    pub client: Option<Decision>,
}

/// The headers of both policies, made once: `RateLimit-Policy` never changes.
pub struct Headers {
    style: RateLimitHeaders,
    ip: Policy,
    client: Policy,
    /// `RateLimit-Policy` for: only "ip", only "client", both.
    policy: [HeaderValue; 3],
}

impl Headers {
    pub fn new(style: RateLimitHeaders, ip: &Policy, client: &Policy) -> Self {
        let one = |p: &Policy| {
            let window = p.window.as_secs() + u64::from(p.window.subsec_nanos() > 0);
            format!(r#""{}";q={};w={}"#, p.name, p.quota, window)
        };
        let value = |s: String| HeaderValue::try_from(s).expect("names and numbers are ASCII");
        Self {
            style,
            ip: *ip,
            client: *client,
            policy: [
                value(one(ip)),
                value(one(client)),
                value(format!("{}, {}", one(ip), one(client))),
            ],
        }
    }

    /// Adds the headers of `quota` to an answer, through `add`.
    pub fn add(&self, quota: &Quota, mut add: impl FnMut(HeaderName, HeaderValue)) {
        let decided = || {
            let ip = quota.ip.map(|d| (&self.ip, d));
            ip.into_iter()
                .chain(quota.client.map(|d| (&self.client, d)))
        };
        let policy = match (quota.ip.is_some(), quota.client.is_some()) {
            (true, false) => &self.policy[0],
            (false, true) => &self.policy[1],
            (true, true) => &self.policy[2],
            (false, false) => return,
        };
        let draft = matches!(self.style, RateLimitHeaders::Draft | RateLimitHeaders::Both);
        let legacy = matches!(
            self.style,
            RateLimitHeaders::Legacy | RateLimitHeaders::Both
        );
        if draft {
            let mut text = Text::default();
            for (policy, decision) in decided() {
                if text.len > 0 {
                    text.push(b", ");
                }
                text.push(b"\"");
                text.push(policy.name.as_bytes());
                text.push(b"\";r=");
                text.number(decision.remaining);
                text.push(b";t=");
                text.number(seconds(decision.reset_us));
            }
            add(RATELIMIT_POLICY, policy.clone());
            add(RATELIMIT, text.value());
        }
        if legacy {
            // One policy only: the one with least left.
            let tightest = decided().min_by_key(|(_, d)| (d.remaining, u64::MAX - d.reset_us));
            if let Some((policy, decision)) = tightest {
                add(X_RATELIMIT_LIMIT, number(u64::from(policy.quota)));
                add(X_RATELIMIT_REMAINING, number(decision.remaining));
                add(X_RATELIMIT_RESET, number(seconds(decision.reset_us)));
            }
        }
    }

    /// The 429 for a refused `decision`, with every header of `quota`.
    pub fn limited(&self, decision: &Decision, quota: &Quota) -> ApiError {
        let jitter = 1.0 + fastrand::f64() * 0.1;
        let wait = (decision.retry_after_us as f64 * jitter / 1e6)
            .ceil()
            .max(1.0) as u64;
        let error = ApiError::new(ErrorCode::RateLimited, "too many requests: slow down")
            .with_header(header::RETRY_AFTER, number(wait));
        self.annotate(error, quota)
    }

    /// `error` with the headers of `quota` (a 401 counted against the limit says so too).
    pub fn annotate(&self, mut error: ApiError, quota: &Quota) -> ApiError {
        self.add(quota, |name, value| error.headers.push((name, value)));
        error
    }
}

/// Whole seconds, rounded up.
fn seconds(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

fn number(n: u64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    HeaderValue::from_str(buf.format(n)).expect("digits")
}

/// A header value built on the stack: two policies' names and numbers fit.
struct Text {
    buf: [u8; 128],
    len: usize,
}

impl Default for Text {
    fn default() -> Self {
        Self {
            buf: [0; 128],
            len: 0,
        }
    }
}

impl Text {
    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(self.buf.len());
        self.buf[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
    }

    fn number(&mut self, n: u64) {
        let mut buf = itoa::Buffer::new();
        self.push(buf.format(n).as_bytes());
    }

    fn value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.buf[..self.len]).expect("quoted names and digits")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policies() -> (Policy, Policy) {
        (
            Policy::new("ip", 100, Duration::from_secs(60), 100),
            Policy::new("client", 10, Duration::from_secs(1), 20),
        )
    }

    fn all(headers: &Headers, quota: &Quota) -> Vec<(String, String)> {
        let mut out = Vec::new();
        headers.add(quota, |n, v| {
            out.push((n.to_string(), v.to_str().unwrap_or("").to_owned()))
        });
        out
    }

    #[test]
    fn draft_headers_are_structured_fields_for_each_policy_decided() {
        let (ip, client) = policies();
        let headers = Headers::new(RateLimitHeaders::Draft, &ip, &client);
        let d = |remaining, reset_us| Decision {
            allowed: true,
            remaining,
            reset_us,
            retry_after_us: 0,
        };
        let quota = Quota {
            ip: Some(d(42, 17_200_000)),
            client: None,
        };
        assert_eq!(
            all(&headers, &quota),
            vec![
                ("ratelimit-policy".into(), r#""ip";q=100;w=60"#.into()),
                ("ratelimit".into(), r#""ip";r=42;t=18"#.into()),
            ]
        );
        let quota = Quota {
            ip: Some(d(42, 18_000_000)),
            client: Some(d(3, 1)),
        };
        assert_eq!(
            all(&headers, &quota),
            vec![
                (
                    "ratelimit-policy".into(),
                    r#""ip";q=100;w=60, "client";q=10;w=1"#.into()
                ),
                (
                    "ratelimit".into(),
                    r#""ip";r=42;t=18, "client";r=3;t=1"#.into()
                ),
            ]
        );
        assert!(all(&headers, &Quota::default()).is_empty());
        let legacy = Headers::new(RateLimitHeaders::Legacy, &ip, &client);
        assert_eq!(
            all(&legacy, &quota),
            vec![
                ("x-ratelimit-limit".into(), "10".into()),
                ("x-ratelimit-remaining".into(), "3".into()),
                ("x-ratelimit-reset".into(), "1".into()),
            ]
        );
        assert_eq!(
            all(&Headers::new(RateLimitHeaders::Both, &ip, &client), &quota).len(),
            5
        );
        assert!(all(&Headers::new(RateLimitHeaders::None, &ip, &client), &quota).is_empty());
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one_near_the_wait() {
        let (ip, client) = policies();
        let headers = Headers::new(RateLimitHeaders::None, &ip, &client);
        for (wait_us, low, high) in [
            (1, 1, 1),
            (600_000, 1, 1),
            (2_500_000, 3, 3),
            (30_000_000, 30, 33),
        ] {
            let refused = Decision {
                allowed: false,
                remaining: 0,
                reset_us: wait_us,
                retry_after_us: wait_us,
            };
            let error = headers.limited(&refused, &Quota::default());
            assert_eq!(error.code, ErrorCode::RateLimited);
            let (_, value) = &error.headers[0];
            let secs: u64 = value.to_str().expect("ascii").parse().expect("seconds");
            assert!((low..=high).contains(&secs), "{wait_us} µs → {secs} s");
        }
    }
}
