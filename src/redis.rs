//! The Redis connection layer the users and auth roles share: one multiplexed connection per
//! process that every request pipelines its commands on (no pool, so no `UNWATCH` + `PING`
//! per checkout: an operation sends Redis only its own commands), reconnected on demand after
//! a failure, with `--redis-timeout` bounding each connect and each reply.
//!
//! Two ways to find Redis: `--redis-url` as is, or the master `--redis-master-name` that the
//! `--redis-sentinels` name, followed through failovers (`sentinel`: events, the write fence).
//! With `--redis-min-replicas-ack N` a write is confirmed by `WAIT N` on a connection of the
//! writes' own, so a read never waits behind a `WAIT`.

pub mod sentinel;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::io::tcp::TcpSettings;
use redis::io::tcp::socket2::TcpKeepalive;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, Value,
};
use slog::{Logger, warn};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::{RedisSettings, Secret};
use sentinel::Sentinels;

/// Connections that carry the writes and their `WAIT` in acknowledged-write mode: a `WAIT`
/// blocks its connection until replicas answer, so reads never share one (a frozen replica
/// held every read ~1.5 s behind WAIT's bound when they did). One: with 4 or 16, creates were
/// slower here (ARCHITECTURE.md, "Redis: topologies and what they guarantee").
const WRITE_CONNECTIONS: usize = 1;

/// Where and as whom to connect: `url`, with `password` (a setting of its own, kept out of
/// the URL) when given.
pub fn connection_info(url: &url::Url, password: Option<&Secret>) -> RedisResult<ConnectionInfo> {
    let info = url.as_str().into_connection_info()?;
    Ok(with_password(info, password).set_tcp_settings(tcp_settings()))
}

/// TCP keepalive and `TCP_USER_TIMEOUT` on every Redis and sentinel socket: redis-rs sets
/// neither, so a host that vanishes without a reset (node loss, partition) would leave an idle
/// connection looking open, and one with unanswered data in flight retrying, for ~15 min
/// (`tcp_retries2`). With these the kernel gives up on it within ~25 s; a reply that times
/// out drops the connection at once anyway (`Connection`).
pub fn tcp_settings() -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    TcpSettings::default()
        .set_keepalive(keepalive)
        .set_user_timeout(Duration::from_secs(25))
}

fn with_password(info: ConnectionInfo, password: Option<&Secret>) -> ConnectionInfo {
    match password {
        Some(password) => {
            let redis = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info.set_redis_settings(redis)
        }
        None => info,
    }
}

/// Why a store operation got no answer from Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    /// No permit came free within `--redis-pool-wait`: too many operations at once.
    #[error("too many redis operations in flight")]
    Busy,
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The write may have been kept or may be lost: it is not answered as done.
    #[error("the write is not confirmed: {0}")]
    Unconfirmed(String),
}

/// The shared connection layer; cheap to clone (one per role, shared by its workers).
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    config: AsyncConnectionConfig,
    timeout: Duration,
    pool_wait: Duration,
    /// Operations in flight per process (`--redis-pool-size`), waited for `--redis-pool-wait`.
    permits: Semaphore,
    min_replicas_ack: u8,
    /// Reads, and writes when no acknowledgement is asked for.
    main: Slot,
    /// Writes and their `WAIT` (acknowledged-write mode only).
    writers: Vec<Slot>,
    next_writer: AtomicUsize,
    /// Bumped whenever every connection must go (the master changed): a connect that started
    /// before is not kept. A connection is stored, and every slot emptied, under this lock, so
    /// none to the old master can be stored after a switch dropped the connections.
    topology: std::sync::Mutex<u64>,
    log: Logger,
}

enum Target {
    Url(ConnectionInfo),
    Sentinel(Sentinels),
}

/// One multiplexed connection, opened on first use and again after it failed.
#[derive(Default)]
struct Slot {
    conn: std::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Held while connecting, so a burst of operations opens one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

impl Slot {
    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets the connection `generation` (or any, with `None`), if it is still the current one.
    fn discard(&self, generation: Option<u64>) {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if generation.is_none() || conn.as_ref().map(|(g, _)| *g) == generation {
            *conn = None;
        }
    }
}

/// Which connection of the layer an operation runs on.
#[derive(Clone, Copy, Debug)]
enum SlotId {
    Main,
    Writer(usize),
}

/// A connection handed to one operation (clone of the shared multiplexed connection). It
/// reports a failed connection, or one that answers as a replica, so the next operation opens
/// a new one (to the master found again, with sentinels).
#[derive(Clone)]
pub struct Connection {
    conn: MultiplexedConnection,
    redis: Redis,
    slot: SlotId,
    generation: u64,
}

/// Replies that mean the server is not (or no longer) a master that accepts our writes.
/// `NOREPLICAS` is not one: a real master says it while fewer replicas than its
/// `min-replicas-to-write` are connected (our Kubernetes Redis sets 1); the write is answered
/// 503 and the connection, and the master's address, are kept.
fn demoted(code: &str) -> bool {
    matches!(code, "READONLY" | "MASTERDOWN")
}

impl Connection {
    fn check<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            let broken = match e.code() {
                Some(code) => demoted(code),
                // Not an answer of the server (a failed connection, or a reply that came late:
                // a host gone without a reset looks the same as a stalled Redis): the next
                // operation opens another connection. Operations already sent on this one keep
                // it until they end, so a stalled command may still run; it was answered 503.
                None => true,
            };
            if broken {
                self.redis.discard(self.slot, self.generation, e);
            }
        }
        result
    }

    fn check_value(&self, value: &Value) {
        if let Value::ServerError(e) = value
            && demoted(e.code())
        {
            let error = RedisError::from(e.clone());
            self.redis.discard(self.slot, self.generation, &error);
        }
    }
}

/// Drops the connection from its slot if the operation's future is dropped before Redis
/// answered: the caller's timeout (`--redis-timeout` around a whole operation) fired first, and
/// a connection that gave no answer in time is not reused (deadpool's recycling `PING` used to
/// replace it; without this a host gone without a reset timed every request out for minutes).
struct Unanswered<'a> {
    connection: &'a Connection,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let c = self.connection;
            c.redis.discard(c.slot, c.generation, &timed_out_error());
        }
    }
}

fn timed_out_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer within --redis-timeout",
    ))
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut guard = Unanswered {
                connection: self,
                answered: false,
            };
            let result = conn.req_packed_command(cmd).await;
            guard.answered = true;
            if let Ok(value) = &result {
                self.check_value(value);
            }
            self.check(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut guard = Unanswered {
                connection: self,
                answered: false,
            };
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            guard.answered = true;
            if let Ok(values) = &result {
                values.iter().for_each(|v| self.check_value(v));
            }
            self.check(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// A write under way: what it must find unchanged when it ends to be answered as done.
pub struct Write {
    epoch: Option<u64>,
    pub connection: Connection,
}

impl Redis {
    /// The layer; it connects on first use, so Redis may be down at start. With sentinels, it
    /// starts listening to their events (on the current Tokio runtime) at once.
    pub fn new(settings: &RedisSettings, log: Logger) -> anyhow::Result<Self> {
        settings.check().map_err(anyhow::Error::msg)?;
        let info = connection_info(&settings.redis_url, settings.redis_password.as_ref())
            // The error names no part of the URL: it may hold a password.
            .map_err(|_| anyhow::anyhow!("--redis-url is not a usable Redis URL"))?;
        let timeout = settings.redis_timeout;
        // Without a config of its own redis-rs gives up on a reply after 0.5 s and on a connect
        // after 1 s, whatever --redis-timeout says; it must be the one bound.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let target = match settings.redis_sentinels.is_empty() {
            true => Target::Url(info),
            false => Target::Sentinel(Sentinels::new(settings, info, log.clone())?),
        };
        let writers = match settings.redis_min_replicas_ack {
            0 => 0,
            _ => WRITE_CONNECTIONS,
        };
        let redis = Self {
            inner: Arc::new(Inner {
                target,
                config,
                timeout,
                pool_wait: settings.redis_pool_wait,
                permits: Semaphore::new(usize::from(settings.redis_pool_size)),
                min_replicas_ack: settings.redis_min_replicas_ack,
                main: Slot::default(),
                writers: (0..writers).map(|_| Slot::default()).collect(),
                next_writer: AtomicUsize::new(0),
                topology: std::sync::Mutex::new(0),
                log,
            }),
        };
        if let Target::Sentinel(sentinels) = &redis.inner.target {
            let weak = Arc::downgrade(&redis.inner);
            sentinels.listen(move || {
                // The master changed: every connection goes, the next ones find it again.
                if let Some(inner) = weak.upgrade() {
                    Redis { inner }.discard_all();
                }
            });
        }
        Ok(redis)
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// A permit to run one operation: waited for at most `--redis-pool-wait`, or the whole
    /// `--redis-timeout` for a `patient` caller (one that another bound already throttles).
    pub async fn permit(&self, patient: bool) -> Result<SemaphorePermit<'_>, RedisFailure> {
        let wait = match patient {
            true => self.inner.timeout,
            false => self.inner.pool_wait,
        };
        match tokio::time::timeout(wait, self.inner.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(RedisFailure::Busy),
        }
    }

    fn slot(&self, id: SlotId) -> &Slot {
        match id {
            SlotId::Main => &self.inner.main,
            SlotId::Writer(i) => &self.inner.writers[i],
        }
    }

    fn discard(&self, id: SlotId, generation: u64, error: &RedisError) {
        let slot = self.slot(id);
        if slot.current().is_some_and(|(g, _)| g == generation) {
            warn!(self.inner.log, "redis connection dropped"; "error" => error.to_string(),
                "connection" => format!("{id:?}"));
            slot.discard(Some(generation));
        }
        if let (Target::Sentinel(sentinels), Some(code)) = (&self.inner.target, error.code())
            && demoted(code)
        {
            sentinels.forget_hint();
        }
    }

    /// Drops every connection (the master changed).
    fn discard_all(&self) {
        let mut topology = self.topology();
        *topology += 1;
        self.inner.main.discard(None);
        self.inner.writers.iter().for_each(|w| w.discard(None));
    }

    fn topology(&self) -> std::sync::MutexGuard<'_, u64> {
        self.inner
            .topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The connection for reads (and writes without acknowledgement), opened if there is none.
    pub async fn connection(&self) -> Result<Connection, RedisFailure> {
        self.connection_on(SlotId::Main).await
    }

    async fn connection_on(&self, id: SlotId) -> Result<Connection, RedisFailure> {
        let slot = self.slot(id);
        let wrap = |(generation, conn)| Connection {
            conn,
            redis: self.clone(),
            slot: id,
            generation,
        };
        if let Some(current) = slot.current() {
            return Ok(wrap(current));
        }
        let timeout = self.inner.timeout;
        let _connecting = tokio::time::timeout(timeout, slot.connecting.lock())
            .await
            .map_err(|_| RedisFailure::Timeout(timeout))?;
        if let Some(current) = slot.current() {
            return Ok(wrap(current));
        }
        let topology = *self.topology();
        let conn = tokio::time::timeout(timeout, self.open())
            .await
            .map_err(|_| RedisFailure::Timeout(timeout))??;
        let now = self.topology();
        if *now != topology {
            return Err(RedisFailure::Unconfirmed(
                "the master changed while connecting".into(),
            ));
        }
        let generation = slot.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *slot.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, conn.clone()));
        drop(now);
        Ok(wrap((generation, conn)))
    }

    /// A new connection to Redis: the URL's, or the master the sentinels name (checked with
    /// `ROLE`).
    async fn open(&self) -> Result<MultiplexedConnection, RedisFailure> {
        match &self.inner.target {
            Target::Url(info) => Ok(Client::open(info.clone())?
                .get_multiplexed_async_connection_with_config(&self.inner.config)
                .await?),
            Target::Sentinel(sentinels) => Ok(sentinels.connect_master(&self.inner.config).await?),
        }
    }

    /// `PING` within `--redis-timeout`: whether Redis (with sentinels, the master) answers.
    /// It takes no permit: operations in flight are not a Redis that is down. With sentinels,
    /// not before one of them was listened to: until then every write is refused (no failover
    /// could be seen), although the master may already be found through a sentinel's answer.
    /// Once one was, readiness follows the master alone (sentinels lost later refuse writes,
    /// not reads).
    pub async fn ping(&self) -> bool {
        if let Target::Sentinel(sentinels) = &self.inner.target
            && !sentinels.fence.heard()
        {
            return false;
        }
        tokio::time::timeout(self.inner.timeout, async {
            let mut conn = self.connection().await.ok()?;
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

    /// Starts a write: refused at once while a failover is under way (or no sentinel is
    /// listened to); on the writes' own connection in acknowledged-write mode.
    pub async fn begin_write(&self) -> Result<Write, RedisFailure> {
        let epoch = match &self.inner.target {
            Target::Url(_) => None,
            Target::Sentinel(sentinels) => Some(
                sentinels
                    .fence
                    .open_epoch()
                    .map_err(RedisFailure::Unconfirmed)?,
            ),
        };
        let connection = match self.inner.writers.len() {
            0 => self.connection().await?,
            n => {
                let i = self.inner.next_writer.fetch_add(1, Ordering::Relaxed) % n;
                self.connection_on(SlotId::Writer(i)).await?
            }
        };
        Ok(Write { epoch, connection })
    }

    /// Ends a write that Redis answered: with `--redis-min-replicas-ack N`, `WAIT N` confirms
    /// that N replicas hold it (and every write before it on its connection); with sentinels,
    /// no failover event may have come since it started. Otherwise it is not answered as done.
    pub async fn confirm_write(&self, write: Write) -> Result<(), RedisFailure> {
        let Write {
            epoch,
            mut connection,
        } = write;
        let fenced = |epoch: Option<u64>| match (&self.inner.target, epoch) {
            (Target::Sentinel(sentinels), Some(epoch)) => sentinels
                .fence
                .still(epoch)
                .map_err(RedisFailure::Unconfirmed),
            _ => Ok(()),
        };
        // A write a failover event overlapped is refused before its `WAIT`, not after it.
        fenced(epoch)?;
        let wanted = self.inner.min_replicas_ack;
        if wanted > 0 {
            // Half the operation's bound, so an unconfirmed write is answered, not timed out.
            let wait_ms = (self.inner.timeout.as_millis() as u64 / 2).max(1);
            let acked: u64 = redis::cmd("WAIT")
                .arg(wanted)
                .arg(wait_ms)
                .query_async(&mut connection)
                .await?;
            if acked < u64::from(wanted) {
                // The next write opens a new connection: the writes queued behind this `WAIT`
                // on this one each wait their turn, and would run ever later after their
                // 503s; they end with this connection's last operation (within
                // --redis-timeout). A `WAIT` that times out drops it too (`Unanswered`).
                self.discard(
                    connection.slot,
                    connection.generation,
                    &RedisError::from((redis::ErrorKind::Client, "the write is not confirmed")),
                );
                return Err(RedisFailure::Unconfirmed(format!(
                    "{acked} of {wanted} replicas confirmed it within {wait_ms} ms"
                )));
            }
        }
        // And one that an event overlapped during its `WAIT`.
        fenced(epoch)
    }

    /// Stops listening to the sentinels.
    pub fn close(&self) {
        if let Target::Sentinel(sentinels) = &self.inner.target {
            sentinels.stop();
        }
        self.discard_all();
    }
}
