//! `UserStore`: users in Redis under the seeds' key layout, every write one atomic Lua script.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use ::metrics::{Counter, Gauge, counter, gauge, histogram};
use redis::{AsyncCommands, Script};
use uuid::Uuid;

use super::cursor::Cursor;
use crate::accounts::domain::{NewUser, User, UserPatch};
use crate::config::RedisSettings;
pub use crate::redis::Connection;
use crate::redis::{Redis, RedisFailure};
use crate::telemetry::metrics::{self, Metrics};

pub use crate::accounts::{
    BY_CREATED, BY_CREATED_LEX, INDEX, created_score, email_key, ordered_member, user_key,
};
use crate::accounts::{credential_key, parse_ordered_member, to_json};

/// How often an update or delete retries when the user changed under it.
const CAS_ATTEMPTS: usize = 5;

static UPDATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/update.lua")));
static ORDERED_ADD: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/ordered_add.lua")));
static ORDERED_PRUNE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/ordered_prune.lua")));

/// Entries per step of a sync of `users:by_created_lex`: each step is one short script.
const SYNC_BATCH: usize = 500;
/// A list that finds the two ordered indexes apart syncs them at most this often per process
/// (a version that writes only `users:by_created` may still run during a rolling update).
const SYNC_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such user")]
    NotFound,
    #[error("the email belongs to another user")]
    DuplicateEmail,
    #[error("the user kept changing during the update")]
    Conflict,
    #[error("the idempotency key was used for another request")]
    IdempotencyKeyReused,
    #[error("redis is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// No permit came free within `--redis-pool-wait`: too many operations in flight at once.
    #[error("too many redis operations in flight")]
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

impl From<RedisFailure> for StoreError {
    fn from(e: RedisFailure) -> Self {
        match e {
            RedisFailure::Busy => Self::Busy,
            e => Self::Unavailable(e.into()),
        }
    }
}

/// What an operation does to Redis: a write is fenced and confirmed.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

/// One page of users, and where the next one starts if more remain.
#[derive(Debug)]
pub struct Page {
    pub users: Vec<User>,
    pub next: Option<Cursor>,
    pub total: u64,
}

/// What a sync of `users:by_created_lex` with `users:by_created` changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub added: u64,
    pub removed: u64,
}

#[derive(Clone)]
pub struct UserStore {
    redis: Redis,
    timeout: Duration,
    metrics: StoreMetrics,
    /// When a list last synced the ordered indexes; held while one does.
    last_sync: std::sync::Arc<tokio::sync::Mutex<Option<Instant>>>,
    /// How long a create's `Idempotency-Key` record is kept.
    idempotency_ttl: Duration,
}

/// What a create answers: a new user, or the first answer given under its idempotency key.
#[derive(Debug)]
pub enum Creation {
    Created(User),
    Replayed {
        status: u16,
        id: String,
        body: String,
    },
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
    /// A store on a connection layer of its own (tasks such as `platform users reindex`);
    /// connections are made on first use, so Redis may be down at start.
    pub fn new(settings: &RedisSettings, metrics: &Metrics) -> anyhow::Result<Self> {
        let log = slog::Logger::root(slog::Discard, slog::o!());
        Ok(Self::on(Redis::new(settings, log)?, metrics))
    }

    /// A store on `redis`, a connection layer that others may share.
    pub fn on(redis: Redis, metrics: &Metrics) -> Self {
        Self {
            timeout: redis.timeout(),
            redis,
            metrics: StoreMetrics::new(metrics),
            last_sync: Default::default(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// Keeps a create's `Idempotency-Key` record for `ttl` (`--idempotency-ttl`).
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl;
        self
    }

    /// Runs `op` on the shared connection within the timeout, and times it. At most
    /// `--redis-pool-size` operations run at once; one waits for its turn at most
    /// `--redis-pool-wait` (then `Busy`, counted as shed, not timed).
    pub(super) async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        op: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.run_on(operation, Access::Read, op).await
    }

    /// `run` for an operation that writes: refused during a failover, and answered as done
    /// only once confirmed (`Redis::confirm_write`: `WAIT`, no failover event meanwhile).
    pub(super) async fn write<T, F, Fut>(
        &self,
        operation: &'static str,
        op: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.run_on(operation, Access::Write, op).await
    }

    async fn run_on<T, F, Fut>(
        &self,
        operation: &'static str,
        access: Access,
        op: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        // The wait for a permit is inside --redis-timeout: it bounds the whole operation.
        let result = match tokio::time::timeout(self.timeout, async {
            let permit = self.redis.permit(false).await?;
            match access {
                Access::Read => op(self.redis.connection().await?).await,
                Access::Write => {
                    let write = self.redis.begin_write().await?;
                    let answer = op(write.connection.clone()).await;
                    // A `WAIT` holds no permit: reads are not shed behind writes that
                    // wait for replicas (each still ends within --redis-timeout).
                    drop(permit);
                    // An answer Redis gave (even "taken" or "missing") is confirmed too: a
                    // replayed create or a 409 must not rest on a write a failover drops.
                    if matches!(
                        answer,
                        Ok(_)
                            | Err(StoreError::DuplicateEmail
                                | StoreError::Conflict
                                | StoreError::IdempotencyKeyReused
                                | StoreError::NotFound)
                    ) {
                        self.redis.confirm_write(write).await?;
                    }
                    answer
                }
            }
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
            Ok(_)
            | Err(
                StoreError::DuplicateEmail
                | StoreError::Conflict
                | StoreError::IdempotencyKeyReused,
            ) => "ok",
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

    /// Whether Redis (with sentinels: the master) answers `PING` within the timeout. It takes
    /// no permit: operations in flight are not a Redis that is down.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let up = self.redis.ping().await;
        let status = if up { "ok" } else { "error" };
        self.metrics
            .registry
            .record_redis("ping", status, started.elapsed());
        match up {
            true => Ok(()),
            false => Err(StoreError::Unavailable(anyhow::anyhow!(
                "redis did not answer PING within {:?}",
                self.timeout
            ))),
        }
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

    /// Creates `new`; with an idempotency key (`idempotency:users:<key>` and the request's
    /// fingerprint) the first answer under that key instead, recorded by the same script.
    pub async fn create(
        &self,
        new: &NewUser,
        key: Option<(&str, &str)>,
    ) -> Result<Creation, StoreError> {
        let created = &self.metrics.created;
        let record = key.map(|(key, fingerprint)| crate::accounts::Record {
            key,
            fingerprint,
            ttl: self.idempotency_ttl,
        });
        self.write("create", |mut conn| async move {
            let outcome =
                crate::accounts::create_recorded(&mut conn, new, None, record.as_ref()).await;
            match outcome.map_err(StoreError::Unavailable)? {
                crate::accounts::Created::User(user) => {
                    created.increment(1);
                    Ok(Creation::Created(user))
                }
                crate::accounts::Created::EmailTaken => Err(StoreError::DuplicateEmail),
                crate::accounts::Created::KeyReused => Err(StoreError::IdempotencyKeyReused),
                crate::accounts::Created::Replay { status, id, body } => {
                    Ok(Creation::Replayed { status, id, body })
                }
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
        self.write("update", |mut conn| async move {
            for _ in 0..CAS_ATTEMPTS {
                let (current, raw) = read(&mut conn, id).await?.ok_or(StoreError::NotFound)?;
                let updated = patch.apply(&current, crate::timestamp::now());
                let outcome: String = UPDATE
                    .key(user_key(&current.id))
                    .key(email_key(&current.email))
                    .key(email_key(&updated.email))
                    .key(INDEX)
                    .key(BY_CREATED)
                    .key(BY_CREATED_LEX)
                    .arg(&current.id)
                    .arg(&raw)
                    .arg(to_json(&updated))
                    .arg(created_score(&updated))
                    .arg(ordered_member(created_score(&updated), &updated.id))
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
        self.write("delete", |mut conn| async move {
            for _ in 0..CAS_ATTEMPTS {
                let (current, raw) = read(&mut conn, id).await?.ok_or(StoreError::NotFound)?;
                let outcome: String = crate::accounts::DELETE
                    .key(user_key(&current.id))
                    .key(email_key(&current.email))
                    .key(INDEX)
                    .key(BY_CREATED)
                    .key(credential_key(&current.id))
                    .key(BY_CREATED_LEX)
                    .arg(&current.id)
                    .arg(&raw)
                    .arg(ordered_member(created_score(&current), &current.id))
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

    /// Up to `limit` users after `after`, oldest first, with the total count: a range of
    /// `users:by_created_lex` that starts right after the cursor, O(log n + limit) whatever the
    /// data and the cursor. Two round trips, as before the index: the range (with both ordered
    /// indexes' sizes and the total), then the users.
    ///
    /// When the two ordered indexes differ in size (a Redis an older version wrote, or one it
    /// still writes to during a rolling update), the first list of a process, and then at most
    /// one every `SYNC_INTERVAL`, syncs them before answering.
    pub async fn page(&self, after: Option<Cursor>, limit: usize) -> Result<Page, StoreError> {
        let (page, in_step) = self.page_once(after, limit).await?;
        if in_step {
            return Ok(page);
        }
        {
            let mut last = self.last_sync.lock().await;
            if last.is_some_and(|at| at.elapsed() < SYNC_INTERVAL) {
                return Ok(page);
            }
            // Tried at most once per interval, failed or not (a Redis at maxmemory refuses
            // the sync's scripts): the page already read is still an answer.
            *last = Some(Instant::now());
            if self.sync_ordered_index().await.is_err() {
                return Ok(page);
            }
        }
        Ok(self.page_once(after, limit).await?.0)
    }

    /// One page, and whether both ordered indexes have the same size.
    async fn page_once(
        &self,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<(Page, bool), StoreError> {
        self.run("list", |mut conn| async move {
            let start = match after {
                Some(c) => format!(
                    "({}",
                    ordered_member(c.score, &c.id.hyphenated().to_string())
                ),
                None => "-".to_owned(),
            };
            let (lex, old, total, members): (u64, u64, u64, Vec<String>) = redis::pipe()
                .zcard(BY_CREATED_LEX)
                .zcard(BY_CREATED)
                .scard(INDEX)
                .zrangebylex_limit(BY_CREATED_LEX, start, "+", 0, limit as isize + 1)
                .query_async(&mut conn)
                .await?;
            let more = members.len() > limit;
            let entries: Vec<(i64, &str)> = members[..members.len().min(limit)]
                .iter()
                .filter_map(|m| parse_ordered_member(m))
                .collect();
            let next = if more {
                entries.last().and_then(|(score, id)| {
                    Some(Cursor {
                        score: *score,
                        id: Uuid::try_parse(id).ok()?,
                    })
                })
            } else {
                None
            };
            let raws: Vec<Option<String>> = if entries.is_empty() {
                Vec::new()
            } else {
                let keys: Vec<String> = entries.iter().map(|(_, id)| user_key(id)).collect();
                redis::cmd("MGET").arg(keys).query_async(&mut conn).await?
            };
            let mut users = Vec::with_capacity(raws.len());
            // A user deleted between the two calls is simply not on the page.
            for (raw, (_, id)) in raws.into_iter().zip(&entries) {
                if let Some(raw) = raw {
                    users.push(parse(id, &raw)?);
                }
            }
            Ok((Page { users, next, total }, lex == old))
        })
        .await
    }

    /// At start: syncs the ordered indexes when they differ in size (a Redis an older version
    /// wrote), so the first list after an upgrade need not; retried each second while Redis
    /// does not answer, done after the first success.
    pub async fn sync_at_start(self) {
        loop {
            // Held so a list waits for this sync instead of running its own; not marked as a
            // list's sync, so a list that still finds the indexes apart syncs them again.
            let last = self.last_sync.lock().await;
            let done = match self.ordered_sizes().await {
                Ok((lex, old)) if lex == old => true,
                Ok(_) => self.sync_ordered_index().await.is_ok(),
                Err(_) => false,
            };
            drop(last);
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The sizes of `users:by_created_lex` and `users:by_created`.
    async fn ordered_sizes(&self) -> Result<(u64, u64), StoreError> {
        let mut conn = self.connection().await?;
        self.bounded(
            redis::pipe()
                .zcard(BY_CREATED_LEX)
                .zcard(BY_CREATED)
                .query_async(&mut conn),
        )
        .await
    }

    /// Makes `users:by_created_lex` mirror `users:by_created` (idempotent; a start-up after an
    /// upgrade, a list that finds them apart, and `platform users reindex` run it): adds an
    /// entry for every id of `users:by_created`, then removes entries it does not hold. Steps of
    /// `SYNC_BATCH` entries, each one short script that rechecks what it read, so Redis is never
    /// blocked for long and a concurrent create or delete is never undone.
    pub async fn sync_ordered_index(&self) -> Result<SyncReport, StoreError> {
        let mut conn = self.connection().await?;
        let mut report = SyncReport::default();
        let mut cursor = 0u64;
        loop {
            let (next, flat): (u64, Vec<String>) = self
                .bounded(
                    redis::cmd("ZSCAN")
                        .arg(BY_CREATED)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(SYNC_BATCH)
                        .query_async(&mut conn),
                )
                .await?;
            let mut add = ORDERED_ADD.prepare_invoke();
            add.key(BY_CREATED).key(BY_CREATED_LEX);
            for pair in flat.chunks_exact(2) {
                let (id, score) = (&pair[0], &pair[1]);
                add.arg(id)
                    .arg(score)
                    .arg(ordered_member(score_ms(score), id));
            }
            if flat.len() >= 2 {
                let added: u64 = self.bounded(add.invoke_async(&mut conn)).await?;
                report.added += added;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        loop {
            let (next, flat): (u64, Vec<String>) = self
                .bounded(
                    redis::cmd("ZSCAN")
                        .arg(BY_CREATED_LEX)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(SYNC_BATCH)
                        .query_async(&mut conn),
                )
                .await?;
            let members: Vec<&String> = flat.iter().step_by(2).collect();
            let ids: Vec<&str> = members
                .iter()
                .map(|m| parse_ordered_member(m).map_or("", |(_, id)| id))
                .collect();
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.zscore(BY_CREATED, *id);
            }
            let scores: Vec<Option<String>> = match ids.is_empty() {
                true => Vec::new(),
                false => self.bounded(pipe.query_async(&mut conn)).await?,
            };
            let mut prune = ORDERED_PRUNE.prepare_invoke();
            prune.key(BY_CREATED).key(BY_CREATED_LEX);
            let mut stale = 0;
            for ((member, id), score) in members.iter().zip(&ids).zip(&scores) {
                let held = score
                    .as_deref()
                    .is_some_and(|s| !id.is_empty() && ordered_member(score_ms(s), id) == **member);
                if !held {
                    prune
                        .arg(*member)
                        .arg(*id)
                        .arg(score.as_deref().unwrap_or(""));
                    stale += 1;
                }
            }
            if stale > 0 {
                let removed: u64 = self.bounded(prune.invoke_async(&mut conn)).await?;
                report.removed += removed;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(report)
    }

    /// `op` within the Redis timeout.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Unavailable(anyhow::anyhow!(
                "redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// The shared connection for maintenance tasks (reindex, reconcile, backups): their
    /// commands are pipelined with the requests'; opening it is bounded by the timeout.
    pub(super) async fn connection(&self) -> Result<Connection, StoreError> {
        Ok(self.redis.connection().await?)
    }

    pub fn close(&self) {
        self.redis.close();
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

/// A score as Redis prints it, as whole ms (what our scripts write; anything else truncated).
fn score_ms(score: &str) -> i64 {
    score.parse::<f64>().map_or(0, |s| s as i64)
}

fn unexpected(script: &str, outcome: &str) -> StoreError {
    StoreError::Unavailable(crate::accounts::unexpected(script, outcome))
}
