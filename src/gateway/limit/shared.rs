//! The shared tier: the "client" policy kept in a Redis every gateway pod asks (per-pod limits
//! alone admit pods × quota). One script per decision (`scripts/gcra.lua`: Redis' clock, one
//! key, `SET … PX` so keys expire with their TAT), bounded by `--rate-limit-redis-timeout`.
//! After a failure Redis is not asked for a short back-off: an outage costs no time per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{AsyncConnectionConfig, Client, Script};

use super::gcra::{Decision, Policy};
use crate::config::LimitSettings;

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/gcra.lua")));

/// How long Redis is left alone after a failure.
const BACK_OFF: Duration = Duration::from_secs(1);
/// The prefix of every key this tier writes.
const KEY_PREFIX: &str = "ratelimit:";

/// One multiplexed connection per gateway process, shared by its workers: concurrent decisions
/// are pipelined on it. Not a pool: deadpool's recycling PINGs at every checkout, a second
/// round trip per decision (docs/performance.md: CPU per request 1.84× through a pool, 1.36×
/// with one connection).
pub struct Shared {
    client: Client,
    config: AsyncConnectionConfig,
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Held while connecting, so a burst of requests opens one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
    start: Instant,
    /// Microseconds since `start` before which Redis is not asked (0: ask).
    skip_until: AtomicU64,
}

impl Shared {
    /// The client (it connects on first use: Redis may be down at start).
    pub fn new(settings: &LimitSettings) -> anyhow::Result<Option<Self>> {
        let Some(url) = &settings.rate_limit_redis_url else {
            return Ok(None);
        };
        // An error names no part of the URL: it may hold a password.
        let unusable = || anyhow::anyhow!("--rate-limit-redis-url is not a usable Redis URL");
        let info = crate::redis::connection_info(url, settings.rate_limit_redis_password.as_ref())
            .map_err(|_| unusable())?;
        let client = Client::open(info).map_err(|_| unusable())?;
        let timeout = settings.rate_limit_redis_timeout;
        // redis-rs' own connect (1 s) and reply (0.5 s) bounds would outlast ours.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        Ok(Some(Self {
            client,
            config,
            conn: Mutex::default(),
            connecting: tokio::sync::Mutex::default(),
            timeout,
            start: Instant::now(),
            skip_until: AtomicU64::new(0),
        }))
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The shared connection, opened when there is none.
    async fn connection(&self) -> Option<MultiplexedConnection> {
        if let Some(conn) = self.current() {
            return Some(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Some(conn);
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .ok()?;
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Some(conn)
    }

    /// The decision for `key` under `policy` (`key` is `client:sub:<sub>` or `client:ip:<ip>`),
    /// or `None` when Redis failed or is in its back-off.
    pub async fn decide(&self, policy: &Policy, key: &str) -> Option<Decision> {
        // Past the back-off, the next decisions try Redis again (several may, at once).
        if self.now() < self.skip_until.load(Ordering::Relaxed) {
            return None;
        }
        let asked = tokio::time::timeout(self.timeout, async {
            let mut conn = self.connection().await?;
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
                // A broken connection is not asked again: the next attempt opens a new one.
                *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let until = self.now() + u64::try_from(BACK_OFF.as_micros()).unwrap_or(0);
                self.skip_until.store(until, Ordering::Relaxed);
                None
            }
        }
    }
}
