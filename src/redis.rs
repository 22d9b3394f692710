//! The Redis connection pool every role that keeps state builds the same way.

use deadpool_redis::redis::{AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo};
use deadpool_redis::{Manager, Pool, PoolConfig, Runtime, Timeouts};

use crate::config::{RedisSettings, Secret};

/// Where and as whom to connect: `url`, with `password` (a setting of its own, kept out of
/// the URL) when given.
pub fn connection_info(
    url: &url::Url,
    password: Option<&Secret>,
) -> deadpool_redis::redis::RedisResult<ConnectionInfo> {
    let mut info = url.as_str().into_connection_info()?;
    if let Some(password) = password {
        let redis = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        info = info.set_redis_settings(redis);
    }
    Ok(info)
}

/// Builds the pool; connections are made on first use, so Redis may be down at start. A
/// request waits at most `--redis-pool-wait` for a free connection: beyond it, the pool is
/// the bottleneck and the request is shed rather than stacked (`PoolError::Timeout(Wait)`).
pub fn pool(settings: &RedisSettings) -> anyhow::Result<Pool> {
    settings.check().map_err(anyhow::Error::msg)?;
    let info = connection_info(&settings.redis_url, settings.redis_password.as_ref())?;
    let timeout = settings.redis_timeout;
    // Without a config of its own redis-rs gives up on a reply after 0.5 s and on a connect
    // after 1 s, whatever --redis-timeout says; it must be the one bound (and it also bounds
    // each command of a reindex, which runs outside a pool wait).
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let manager = Manager::new_with_config(info, connection)?;
    Ok(Pool::builder(manager)
        .config(PoolConfig {
            max_size: usize::from(settings.redis_pool_size),
            timeouts: Timeouts {
                wait: Some(settings.redis_pool_wait),
                ..patient(timeout)
            },
            ..PoolConfig::default()
        })
        .runtime(Runtime::Tokio1)
        .build()?)
}

/// Pool timeouts that wait for a connection as long as for the rest (readiness checks).
pub fn patient(timeout: std::time::Duration) -> Timeouts {
    Timeouts {
        wait: Some(timeout),
        create: Some(timeout),
        recycle: Some(timeout),
    }
}

/// `PING` within `--redis-timeout` (pool wait included): whether Redis answers. It waits
/// for a pooled connection that long too: a busy pool is not a Redis that is down.
pub async fn ping(pool: &Pool, timeout: std::time::Duration) -> bool {
    use deadpool_redis::redis;
    tokio::time::timeout(timeout, async {
        let mut conn = pool.timeout_get(&patient(timeout)).await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    })
    .await
    .ok()
    .flatten()
    .is_some()
}
