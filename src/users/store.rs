//! `UserStore`: users in Redis under the seeds' key layout, every write one atomic Lua script.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use ::metrics::{Counter, Gauge, counter, gauge, histogram};
use deadpool_redis::redis::{self, AsyncCommands, Script};
use deadpool_redis::{Connection, Pool};
use uuid::Uuid;

use super::cursor::Cursor;
use crate::accounts::domain::{NewUser, User, UserPatch};
use crate::config::RedisSettings;
use crate::telemetry::metrics::{self, Metrics};

pub use crate::accounts::{BY_CREATED, INDEX, created_score, email_key, user_key};
use crate::accounts::{credential_key, to_json};

/// How often an update or delete retries when the user changed under it.
const CAS_ATTEMPTS: usize = 5;

static UPDATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/update.lua")));
static PAGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/page.lua")));

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such user")]
    NotFound,
    #[error("the email belongs to another user")]
    DuplicateEmail,
    #[error("the user kept changing during the update")]
    Conflict,
    #[error("redis is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// No pooled connection came free within `--redis-pool-wait`: too many requests at once.
    #[error("no pooled redis connection came free in time")]
    Busy,
    #[error("stored record {key} is not a user")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.into())
    }
}

impl From<deadpool_redis::PoolError> for StoreError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        match e {
            deadpool_redis::PoolError::Timeout(deadpool_redis::TimeoutType::Wait) => Self::Busy,
            e => Self::Unavailable(e.into()),
        }
    }
}

/// One page of users, and where the next one starts if more remain.
#[derive(Debug)]
pub struct Page {
    pub users: Vec<User>,
    pub next: Option<Cursor>,
    pub total: u64,
}

#[derive(Clone)]
pub struct UserStore {
    pool: Pool,
    timeout: Duration,
    metrics: StoreMetrics,
}

/// The users role's store metrics. Counters and the ping outcomes that alerts use exist at 0
/// from the start, so `rate()` and absence alerts work before the first event.
#[derive(Clone)]
struct StoreMetrics {
    registry: Metrics,
    created: Counter,
    deleted: Counter,
    total: Gauge,
    shed: Counter,
}

impl StoreMetrics {
    fn new(registry: &Metrics) -> Self {
        let (created, deleted, total) = registry.register(|| {
            for status in ["ok", "error"] {
                let _ =
                    histogram!(metrics::REDIS_DURATION, "operation" => "ping", "status" => status);
            }
            (
                counter!(metrics::USERS_CREATED),
                counter!(metrics::USERS_DELETED),
                gauge!(metrics::USERS_TOTAL),
            )
        });
        Self {
            registry: registry.clone(),
            created,
            deleted,
            total,
            shed: registry.shed(crate::http::shed::STORE_POOL),
        }
    }
}

impl UserStore {
    /// Builds the pool; connections are made on first use, so Redis may be down at start.
    pub fn new(settings: &RedisSettings, metrics: &Metrics) -> anyhow::Result<Self> {
        let pool = crate::redis::pool(settings)?;
        let timeout = settings.redis_timeout;
        Ok(Self {
            pool,
            timeout,
            metrics: StoreMetrics::new(metrics),
        })
    }

    /// Runs `op` on a pooled connection within the timeout, and times it. A connection is
    /// waited for at most `--redis-pool-wait` (then `Busy`, counted as shed, not timed).
    async fn run<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.run_on(operation, false, op).await
    }

    /// `run`; a `patient` caller (readiness) waits for a connection up to the whole timeout,
    /// since a busy pool is not a Redis that is down.
    async fn run_on<T, F, Fut>(
        &self,
        operation: &'static str,
        patient: bool,
        op: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, async {
            let conn = match patient {
                true => {
                    self.pool
                        .timeout_get(&crate::redis::patient(self.timeout))
                        .await?
                }
                false => self.pool.get().await?,
            };
            op(conn).await
        })
        .await
        {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(anyhow::anyhow!(
                "redis did not answer within {:?}",
                self.timeout
            ))),
        };
        let status = match &result {
            Ok(_) | Err(StoreError::DuplicateEmail | StoreError::Conflict) => "ok",
            Err(StoreError::NotFound) => "miss",
            Err(StoreError::Unavailable(_) | StoreError::Corrupt { .. }) => "error",
            Err(StoreError::Busy) => {
                // Redis was not asked: no operation to time.
                self.metrics.shed.increment(1);
                return result;
            }
        };
        self.metrics
            .registry
            .record_redis(operation, status, started.elapsed());
        result
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run_on("ping", true, |mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    pub async fn count(&self) -> Result<u64, StoreError> {
        self.run(
            "count",
            |mut conn| async move { Ok(conn.scard(INDEX).await?) },
        )
        .await
    }

    /// Sets `users_total` to the stored count; left as it was when Redis does not answer.
    pub async fn refresh_total(&self) {
        if let Ok(total) = self.count().await {
            self.metrics.total.set(total as f64);
        }
    }

    pub async fn create(&self, new: &NewUser) -> Result<User, StoreError> {
        let created = &self.metrics.created;
        self.run("create", |mut conn| async move {
            let outcome = crate::accounts::create(&mut conn, new, None).await;
            match outcome.map_err(StoreError::Unavailable)? {
                Some(user) => {
                    created.increment(1);
                    Ok(user)
                }
                None => Err(StoreError::DuplicateEmail),
            }
        })
        .await
    }

    pub async fn get(&self, id: Uuid) -> Result<User, StoreError> {
        self.run("get", |mut conn| async move {
            read(&mut conn, id)
                .await?
                .map(|(user, _)| user)
                .ok_or(StoreError::NotFound)
        })
        .await
    }

    pub async fn update(&self, id: Uuid, patch: &UserPatch) -> Result<User, StoreError> {
        self.run("update", |mut conn| async move {
            for _ in 0..CAS_ATTEMPTS {
                let (current, raw) = read(&mut conn, id).await?.ok_or(StoreError::NotFound)?;
                let updated = patch.apply(&current, crate::timestamp::now());
                let outcome: String = UPDATE
                    .key(user_key(&current.id))
                    .key(email_key(&current.email))
                    .key(email_key(&updated.email))
                    .key(INDEX)
                    .key(BY_CREATED)
                    .arg(&current.id)
                    .arg(&raw)
                    .arg(to_json(&updated))
                    .arg(created_score(&updated))
                    .invoke_async(&mut conn)
                    .await?;
                match outcome.as_str() {
                    "ok" => return Ok(updated),
                    "taken" => return Err(StoreError::DuplicateEmail),
                    "missing" => return Err(StoreError::NotFound),
                    "changed" => continue,
                    other => return Err(unexpected("update", other)),
                }
            }
            Err(StoreError::Conflict)
        })
        .await
    }

    pub async fn delete(&self, id: Uuid) -> Result<(), StoreError> {
        let deleted = &self.metrics.deleted;
        self.run("delete", |mut conn| async move {
            for _ in 0..CAS_ATTEMPTS {
                let (current, raw) = read(&mut conn, id).await?.ok_or(StoreError::NotFound)?;
                let outcome: String = crate::accounts::DELETE
                    .key(user_key(&current.id))
                    .key(email_key(&current.email))
                    .key(INDEX)
                    .key(BY_CREATED)
                    .key(credential_key(&current.id))
                    .arg(&current.id)
                    .arg(&raw)
                    .invoke_async(&mut conn)
                    .await?;
                match outcome.as_str() {
                    "ok" => {
                        deleted.increment(1);
                        return Ok(());
                    }
                    "missing" => return Err(StoreError::NotFound),
                    "changed" => continue,
                    other => return Err(unexpected("delete", other)),
                }
            }
            Err(StoreError::Conflict)
        })
        .await
    }

    /// Up to `limit` users after `after`, oldest first, with the total count.
    pub async fn page(&self, after: Option<Cursor>, limit: usize) -> Result<Page, StoreError> {
        self.run("list", |mut conn| async move {
            let (from, after_id) = match after {
                Some(c) => (c.score.to_string(), c.id.hyphenated().to_string()),
                None => ("-inf".to_owned(), String::new()),
            };
            let entries: Vec<(String, f64)> = PAGE
                .key(BY_CREATED)
                .arg(from)
                .arg(after_id)
                .arg(limit)
                .invoke_async(&mut conn)
                .await?;
            let more = entries.len() > limit;
            let entries = &entries[..entries.len().min(limit)];
            let next = if more {
                entries.last().and_then(|(id, score)| {
                    Some(Cursor {
                        score: *score as i64,
                        id: Uuid::try_parse(id).ok()?,
                    })
                })
            } else {
                None
            };
            let mut pipe = redis::pipe();
            pipe.scard(INDEX);
            if !entries.is_empty() {
                let keys: Vec<String> = entries.iter().map(|(id, _)| user_key(id)).collect();
                pipe.mget(keys);
            }
            let (total, raws): (u64, Vec<Option<String>>) = if entries.is_empty() {
                let (total,): (u64,) = pipe.query_async(&mut conn).await?;
                (total, Vec::new())
            } else {
                pipe.query_async(&mut conn).await?
            };
            let mut users = Vec::with_capacity(raws.len());
            // A user deleted between the two calls is simply not on the page.
            for (raw, (id, _)) in raws.into_iter().zip(entries) {
                if let Some(raw) = raw {
                    users.push(parse(id, &raw)?);
                }
            }
            Ok(Page { users, next, total })
        })
        .await
    }

    /// A pooled connection for maintenance tasks (reindex), bounded by the pool's timeouts.
    pub(super) async fn connection(&self) -> Result<Connection, StoreError> {
        Ok(self.pool.get().await?)
    }

    pub fn close(&self) {
        self.pool.close();
    }
}

/// The user `id` and the exact JSON it is stored as, if it exists.
pub(super) async fn read(
    conn: &mut Connection,
    id: Uuid,
) -> Result<Option<(User, String)>, StoreError> {
    let id = id.hyphenated().to_string();
    let raw: Option<String> = conn.get(user_key(&id)).await?;
    raw.map(|raw| parse(&id, &raw).map(|user| (user, raw)))
        .transpose()
}

fn parse(id: &str, raw: &str) -> Result<User, StoreError> {
    serde_json::from_str(raw).map_err(|source| StoreError::Corrupt {
        key: user_key(id),
        source,
    })
}

fn unexpected(script: &str, outcome: &str) -> StoreError {
    StoreError::Unavailable(crate::accounts::unexpected(script, outcome))
}
