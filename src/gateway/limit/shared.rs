//! The shared tier: the "client" policy kept in a Redis every gateway pod asks (per-pod limits
//! alone admit pods × quota). One script per decision (`scripts/gcra.lua`: Redis' clock, one
//! key, `SET … PX` so keys expire with their TAT), bounded by `--rate-limit-redis-timeout`.
//! After a failure Redis is not asked for a short back-off: an outage costs no time per request.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_redis::Pool;
use deadpool_redis::redis::Script;

use super::gcra::{Decision, Policy};
use crate::config::{LimitSettings, RedisSettings};

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/gcra.lua")));

/// How long Redis is left alone after a failure.
const BACK_OFF: Duration = Duration::from_secs(1);
/// Connections to the limiter's Redis per gateway process: one decision holds one for a round
/// trip (well under a millisecond), so a few absorb thousands of decisions a second.
const POOL_SIZE: u16 = 16;
/// The prefix of every key this tier writes.
const KEY_PREFIX: &str = "ratelimit:";

pub struct Shared {
    pool: Pool,
    timeout: Duration,
    start: Instant,
    /// Microseconds since `start` before which Redis is not asked (0: ask).
    skip_until: AtomicU64,
}

impl Shared {
    /// The pool (its connections are made on first use: Redis may be down at start).
    pub fn new(settings: &LimitSettings) -> anyhow::Result<Option<Self>> {
        let Some(url) = &settings.rate_limit_redis_url else {
            return Ok(None);
        };
        let redis = RedisSettings {
            redis_url: url.clone(),
            redis_password: None,
            redis_pool_size: POOL_SIZE,
            redis_timeout: settings.rate_limit_redis_timeout,
        };
        // Building a pool only parses the URL: an error names no part of it.
        let pool = crate::redis::pool(&redis)
            .map_err(|_| anyhow::anyhow!("--rate-limit-redis-url is not a usable Redis URL"))?;
        Ok(Some(Self {
            pool,
            timeout: settings.rate_limit_redis_timeout,
            start: Instant::now(),
            skip_until: AtomicU64::new(0),
        }))
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The decision for `key` under `policy` (`key` is `client:sub:<sub>` or `client:ip:<ip>`),
    /// or `None` when Redis failed or is in its back-off.
    pub async fn decide(&self, policy: &Policy, key: &str) -> Option<Decision> {
        // Past the back-off, the next decision tries Redis again (several may, at once).
        if self.now() < self.skip_until.load(Ordering::Relaxed) {
            return None;
        }
        let asked = tokio::time::timeout(self.timeout, async {
            let mut conn = self.pool.get().await.ok()?;
            GCRA.key(format!("{KEY_PREFIX}{key}"))
                .arg(policy.interval_us)
                .arg(policy.tolerance_us)
                .invoke_async::<(u8, u64)>(&mut conn)
                .await
                .ok()
        })
        .await;
        match asked {
            Ok(Some((allowed, lead))) => Some(policy.outcome(allowed == 1, lead)),
            _ => {
                let until = self.now() + u64::try_from(BACK_OFF.as_micros()).unwrap_or(0);
                self.skip_until.store(until, Ordering::Relaxed);
                None
            }
        }
    }
}
