//! Redis Sentinel: finding the master, and the write fence that keeps a failover from losing
//! acknowledged writes.
//!
//! After `SENTINEL FAILOVER` the old master answers `PING` and `ROLE` as a master for ~10 s,
//! and every write it takes once a replica is promoted is dropped when it is demoted (even one
//! that `WAIT 1` confirmed: the replica not promoted still follows it). So every sentinel's
//! events are listened to: from the first failover event (long before the promotion) until
//! that failover's `+switch-master` (or, if it was missed, until the sentinels agree on the new
//! master: `Shared::settle`), writes are refused, and a write that overlaps any such event is
//! not answered as done (`Fence`). See ARCHITECTURE.md, "Redis: topologies and what they
//! guarantee".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError,
    Value,
};
use slog::{Logger, info, warn};

use crate::config::RedisSettings;

/// A fence with no failover event for this long lifts by itself (an attempt that was aborted
/// or whose end we missed); during a failover the leader publishes an event at least every
/// second or so.
const FENCE_QUIET: Duration = Duration::from_secs(5);
/// How long the master a `+switch-master` switched away from is not connected to again
/// whatever a sentinel says: a sentinel that has not heard of the switch still names it, and
/// after a planned failover it answers `ROLE` as a master for a while; writes it takes are
/// lost when it is demoted. Sentinel's default `failover-timeout` (3 min), by which any
/// sentinel has long learnt the new configuration (a switch back to it is announced by a
/// `+switch-master` of its own, which ends this).
const SWITCHED_AWAY: Duration = Duration::from_secs(180);
/// How often a promotion whose `+switch-master` has not come is checked with the sentinels.
const SETTLE_EVERY: Duration = Duration::from_secs(1);
/// Pause between attempts to (re)subscribe to a sentinel.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// How often a subscription is PINGed: a frozen or unreachable sentinel would otherwise look
/// listened to (its connection open, no event) for as long as TCP takes to notice.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Events a sentinel publishes from the start of a failover until its end (`+switch-master`).
fn failover_event(channel: &str) -> bool {
    channel.starts_with("+failover-")
        || channel.starts_with("-failover-abort")
        || matches!(
            channel,
            "+new-epoch"
                | "+vote-for-leader"
                | "+try-failover"
                | "+elected-leader"
                | "+selected-slave"
                | "+promoted-slave"
                | "+slave-reconf-sent"
                | "+slave-reconf-inprog"
                | "+slave-reconf-done"
        )
}

/// Whether an event's payload is about master `name`: `master <name> <ip> <port>`, or
/// `<type> <name> <ip> <port> @ <master> <ip> <port>`; an event that names no master
/// (`+new-epoch`, `+vote-for-leader`) may be ours.
fn about(payload: &str, name: &str) -> bool {
    let words: Vec<&str> = payload.split(' ').collect();
    if let Some(at) = words.iter().position(|w| *w == "@") {
        return words.get(at + 1) == Some(&name);
    }
    match words.first() {
        Some(&"master") => words.get(1) == Some(&name),
        _ => true,
    }
}

/// Events of the promotion stage: a replica was (being) made master, so writes the old master
/// takes from now on are lost when it is demoted, however long the rest takes (a replica's
/// full resync of a large data set may be silent for longer than `FENCE_QUIET`).
fn promotion_event(channel: &str) -> bool {
    channel == "+promoted-slave"
        || channel == "+failover-state-reconf-slaves"
        || channel.starts_with("+slave-reconf-")
}

/// The `<ip> <port>` of the master an event is about, when it names one.
fn master_address(payload: &str) -> Option<String> {
    let words: Vec<&str> = payload.split(' ').collect();
    let at = match words.iter().position(|w| *w == "@") {
        Some(at) => at,
        None if words.first() == Some(&"master") => 0,
        None => return None,
    };
    Some(format!("{} {}", words.get(at + 2)?, words.get(at + 3)?))
}

/// The epoch of `+new-epoch <epoch>` and `+vote-for-leader <runid> <epoch>`.
fn event_epoch(channel: &str, payload: &str) -> Option<u64> {
    match channel {
        "+new-epoch" | "+vote-for-leader" => payload.split(' ').next_back()?.parse().ok(),
        _ => None,
    }
}

/// Whether writes may go on, and what a write must find unchanged when it ends.
#[derive(Default)]
pub struct Fence {
    /// Bumped by every failover event and every change of the subscriptions.
    epoch: AtomicU64,
    state: Mutex<FenceState>,
}

#[derive(Default)]
struct FenceState {
    /// The last failover event, while one is under way.
    failover: Option<Instant>,
    /// When the promotion stage was first seen: from then the fence stays until
    /// `+switch-master` (or `SWITCHED_AWAY`, Sentinel's default failover-timeout), not only
    /// until a quiet period.
    promoted: Option<Instant>,
    /// The `<ip> <port>` of the master the failover under way is failing over, once one of
    /// its events named it: only a `+switch-master` away from that master ends its fence.
    of: Option<String>,
    /// Sentinels listened to right now.
    live: usize,
    /// Whether any sentinel was ever listened to.
    ever: bool,
}

impl Fence {
    fn state(&self) -> std::sync::MutexGuard<'_, FenceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn blocked(state: &mut FenceState) -> Option<String> {
        if state.live == 0 {
            return Some("no sentinel is listened to".into());
        }
        match state.promoted {
            Some(at) if at.elapsed() < SWITCHED_AWAY => {
                return Some("a replica was promoted; waiting for the switch".into());
            }
            Some(_) => state.promoted = None,
            None => {}
        }
        match state.failover {
            Some(at) if at.elapsed() < FENCE_QUIET => Some("a failover is under way".into()),
            _ => {
                // No failover under way any more: the next one's events say what it is of.
                state.failover = None;
                state.of = None;
                None
            }
        }
    }

    /// The epoch a write starts in, or why it may not start.
    pub fn open_epoch(&self) -> Result<u64, String> {
        let mut state = self.state();
        match Self::blocked(&mut state) {
            Some(why) => Err(why),
            None => Ok(self.epoch.load(Ordering::SeqCst)),
        }
    }

    /// Whether a write that started in `epoch` may be answered as done.
    pub fn still(&self, epoch: u64) -> Result<(), String> {
        let mut state = self.state();
        if let Some(why) = Self::blocked(&mut state) {
            return Err(why);
        }
        match self.epoch.load(Ordering::SeqCst) == epoch {
            true => Ok(()),
            false => Err("a failover event came during the write".into()),
        }
    }

    /// A failover event; `of`: the master it names, when it names one.
    fn failover_event(&self, promotion: bool, of: Option<String>) {
        let mut state = self.state();
        let now = Instant::now();
        state.failover = Some(now);
        if promotion && state.promoted.is_none() {
            state.promoted = Some(now);
        }
        if of.is_some() {
            state.of = of;
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// An attempt aborted: no replica is promoted by it.
    fn aborted(&self) {
        self.state().promoted = None;
    }

    /// The master switched away from `old`: the fence goes if it is that master's failover
    /// (or one whose events named no master); `false` when it belongs to another failover,
    /// which goes on. Either way a write under way is not confirmed (the master changed).
    fn switched(&self, old: &str) -> bool {
        let mut state = self.state();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if state.of.as_deref().is_some_and(|of| of != old) {
            return false;
        }
        state.failover = None;
        state.promoted = None;
        state.of = None;
        true
    }

    /// The master a replica was promoted in place of, if that was at least `FENCE_QUIET` ago
    /// and the fence still waits for its switch (a `+switch-master` that may have been missed).
    fn stalled_promotion(&self) -> Option<String> {
        let state = self.state();
        match state.promoted {
            Some(at) if at.elapsed() >= FENCE_QUIET && at.elapsed() < SWITCHED_AWAY => {
                state.of.clone()
            }
            _ => None,
        }
    }

    /// Whether the failover under way is that of the master at `address` (`<ip> <port>`).
    fn failing_over(&self, address: &str) -> bool {
        self.state().of.as_deref() == Some(address)
    }

    /// Whether any sentinel was ever listened to.
    pub fn heard(&self) -> bool {
        self.state().ever
    }

    /// Counts a subscription up or down; `true` when one comes back after none was listened
    /// to (a `+switch-master` may have been missed meanwhile).
    fn subscribed(&self, up: bool) -> bool {
        let mut state = self.state();
        let recovered = up && state.live == 0 && state.ever;
        match up {
            true => {
                state.live += 1;
                state.ever = true;
            }
            false => state.live = state.live.saturating_sub(1),
        }
        // An event may have been missed while a subscription was down.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        recovered
    }
}

/// The sentinels of one master, and what their events told.
pub struct Sentinels {
    shared: Arc<Shared>,
    pub fence: Arc<Fence>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What a finished failover leaves behind: its tail (the leader still reconfiguring replicas,
/// the other sentinels learning the new epoch) must not fence writes again.
#[derive(Default)]
struct Switch {
    /// The `<ip> <port>` of the master it switched away from.
    old: String,
    /// The `<ip> <port>` of the master it switched to.
    new: String,
    /// The highest epoch announced before it.
    epoch: u64,
    /// When it was acted on.
    at: Option<Instant>,
}

impl Switch {
    /// Why a `+switch-master` from `old` to `new` tells nothing new, if it does not: it goes
    /// to the master the last switch went to (another sentinel's copy, or a lagging one
    /// catching up from further back), or it is a late copy of the switch before that one
    /// (to the master the last switch left, from another than the one it went to; a real
    /// switch back would come from the current master). Sentinel starts no new failover of a
    /// master within twice its `failover-timeout`, far longer than such a copy's delay.
    fn known(&self, old: &str, new: &str) -> Option<&'static str> {
        let at = self.at?;
        if new == self.new {
            return Some("it names the master already switched to");
        }
        if new == self.old && old != self.new && at.elapsed() < SWITCHED_AWAY {
            return Some("a late copy of an earlier switch");
        }
        None
    }
}

struct Shared {
    sentinels: Vec<ConnectionInfo>,
    master_name: String,
    /// Database and data password of the master's connections.
    template: ConnectionInfo,
    /// The address the last `+switch-master` named: asked first, since a sentinel that has
    /// not heard of the switch yet still names the old master (which answers `ROLE` as one).
    hint: Mutex<Option<(String, u16)>>,
    /// The last `+switch-master` acted on (every sentinel publishes it).
    last_switch: Mutex<Switch>,
    /// The highest epoch an event announced.
    epoch_seen: AtomicU64,
    /// The master the current connections go to (`<ip> <port>`), once one was connected to.
    current: Mutex<Option<String>>,
    /// Connect and reply bounds for asking a sentinel outside a connect.
    config: AsyncConnectionConfig,
    fence: Arc<Fence>,
    timeout: Duration,
    log: Logger,
}

impl Sentinels {
    pub fn new(
        settings: &RedisSettings,
        template: ConnectionInfo,
        log: Logger,
    ) -> anyhow::Result<Self> {
        let sentinels = settings
            .redis_sentinels
            .iter()
            .map(|address| {
                let (host, port) = address
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse().ok()?)))
                    .ok_or_else(|| {
                        anyhow::anyhow!("--redis-sentinels: {address} is not host:port")
                    })?;
                let info = ConnectionAddr::Tcp(host.to_owned(), port).into_connection_info()?;
                let redis = match &settings.redis_sentinel_password {
                    Some(password) => info
                        .redis_settings()
                        .clone()
                        .set_password(password.expose()),
                    None => info.redis_settings().clone(),
                };
                Ok(info
                    .set_redis_settings(redis)
                    .set_tcp_settings(super::tcp_settings()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let fence = Arc::new(Fence::default());
        Ok(Self {
            shared: Arc::new(Shared {
                sentinels,
                master_name: settings.redis_master_name.clone(),
                template,
                hint: Mutex::default(),
                last_switch: Mutex::default(),
                epoch_seen: AtomicU64::new(0),
                current: Mutex::default(),
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(settings.redis_timeout))
                    .set_response_timeout(Some(settings.redis_timeout)),
                fence: fence.clone(),
                timeout: settings.redis_timeout,
                log,
            }),
            fence,
            tasks: Mutex::default(),
        })
    }

    /// Listens to every sentinel's events from now on; `on_switch` runs when the master changed.
    pub fn listen(&self, on_switch: impl Fn() + Send + Sync + 'static) {
        let on_switch: Arc<dyn Fn() + Send + Sync> = Arc::new(on_switch);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for index in 0..self.shared.sentinels.len() {
            let (shared, on_switch) = (self.shared.clone(), on_switch.clone());
            tasks.push(tokio::spawn(listen_one(shared, index, on_switch)));
        }
        let shared = self.shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(SETTLE_EVERY);
            loop {
                every.tick().await;
                shared.settle(&*on_switch).await;
            }
        }));
    }

    pub fn stop(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    /// A connection that answered as a replica: the master is asked of the sentinels again.
    pub fn forget_hint(&self) {
        *self.shared.hint.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A connection to the master: the last announced one if it still is one, else the first
    /// address a sentinel names that answers `ROLE` as a master.
    pub async fn connect_master(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, RedisError> {
        let shared = &self.shared;
        let hint = shared
            .hint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((host, port)) = hint
            && !shared.switched_away_from(&host, port)
        {
            match shared.master_at(&host, port, config).await {
                Ok(conn) => return Ok(shared.connected(&host, port, conn)),
                Err(_) => self.forget_hint(),
            }
        }
        // Every sentinel at once, each bounded: the first that names a master that is one wins.
        let mut asked: FuturesUnordered<_> = (0..shared.sentinels.len())
            .map(|i| shared.ask(i, config))
            .collect();
        let mut last = None;
        let mut tried = Vec::new();
        while let Some(answer) = asked.next().await {
            match answer {
                Ok(Some(address))
                    if !tried.contains(&address)
                        && !shared.switched_away_from(&address.0, address.1) =>
                {
                    tried.push(address.clone());
                    match shared.master_at(&address.0, address.1, config).await {
                        Ok(conn) => return Ok(shared.connected(&address.0, address.1, conn)),
                        Err(e) => last = Some(e),
                    }
                }
                Ok(_) => {}
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            RedisError::from((
                redis::ErrorKind::MasterNameNotFoundBySentinel,
                "no sentinel names the master",
            ))
        }))
    }
}

impl Shared {
    /// Whether `host:port` is the master the last `+switch-master` switched away from, less
    /// than `SWITCHED_AWAY` ago: a sentinel naming it has not heard of the switch.
    fn switched_away_from(&self, host: &str, port: u16) -> bool {
        let last = self.last_switch.lock().unwrap_or_else(|e| e.into_inner());
        last.at.is_some_and(|at| at.elapsed() < SWITCHED_AWAY)
            && last.old == format!("{host} {port}")
    }

    /// Notes the master a connection was opened to.
    fn connected(
        &self,
        host: &str,
        port: u16,
        conn: MultiplexedConnection,
    ) -> MultiplexedConnection {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{host} {port}"));
        conn
    }

    /// After a (re)subscription: a `+switch-master` may have been missed while it was down, so
    /// the sentinel is asked for the master; if it names another one than the connections go
    /// to (and not the one a switch left), they go and the master is found anew.
    async fn check_master(
        &self,
        index: usize,
        sentinel: &str,
        on_switch: &(dyn Fn() + Send + Sync),
    ) {
        let Ok(Some((host, port))) = self.ask(index, &self.config).await else {
            return;
        };
        let named = format!("{host} {port}");
        let current = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if current.is_none_or(|c| c == named) || self.switched_away_from(&host, port) {
            return;
        }
        warn!(self.log, "a sentinel names another master: finding it anew";
            "sentinel" => sentinel, "named" => &named);
        *self.hint.lock().unwrap_or_else(|e| e.into_inner()) = None;
        on_switch();
    }

    /// Ends the fence of a promotion whose `+switch-master` did not reach us (every
    /// subscription was down at that moment) once the sentinels agree that it happened, rather
    /// than after `SWITCHED_AWAY`: see `agreed`, and the master they name must answer `ROLE` as
    /// one. It is then acted on as that switch (the connections go, the failed master is
    /// refused for `SWITCHED_AWAY`).
    async fn settle(&self, on_switch: &(dyn Fn() + Send + Sync)) {
        let Some(failed) = self.fence.stalled_promotion() else {
            return;
        };
        let answers: Vec<_> = (0..self.sentinels.len())
            .map(|i| self.ask(i, &self.config))
            .collect::<FuturesUnordered<_>>()
            .collect()
            .await;
        let Some((host, port)) = agreed(&answers, self.sentinels.len(), &failed) else {
            return;
        };
        if self.switched_away_from(&host, port)
            || self.master_at(&host, port, &self.config).await.is_err()
            || self.fence.stalled_promotion().as_deref() != Some(failed.as_str())
        {
            return;
        }
        warn!(self.log, "no +switch-master came for a promotion, but the sentinels agree on \
            the new master: acted on as its switch"; "failed" => &failed,
            "master" => format!("{host} {port}"));
        let payload = format!("{} {failed} {host} {port}", self.master_name);
        self.event(
            "every sentinel that answered",
            "+switch-master",
            &payload,
            on_switch,
        );
    }

    /// The master's address as sentinel `index` tells it.
    async fn ask(
        &self,
        index: usize,
        config: &AsyncConnectionConfig,
    ) -> Result<Option<(String, u16)>, RedisError> {
        let bounded = tokio::time::timeout(self.timeout, async {
            let mut conn = Client::open(self.sentinels[index].clone())?
                .get_multiplexed_async_connection_with_config(config)
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master_name)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        });
        bounded.await.unwrap_or_else(|_| Err(timed_out()))
    }

    /// A connection to `host:port` if it answers `ROLE` as a master.
    async fn master_at(
        &self,
        host: &str,
        port: u16,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, RedisError> {
        let info = self
            .template
            .clone()
            .set_addr(ConnectionAddr::Tcp(host.to_owned(), port));
        let bounded = tokio::time::timeout(self.timeout, async {
            let mut conn = Client::open(info)?
                .get_multiplexed_async_connection_with_config(config)
                .await?;
            let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
            match role.first() {
                Some(Value::BulkString(b)) if b == b"master" => Ok(conn),
                Some(Value::SimpleString(s)) if s == "master" => Ok(conn),
                _ => Err(RedisError::from((
                    redis::ErrorKind::Client,
                    "the address the sentinels name is not a master",
                ))),
            }
        });
        bounded.await.unwrap_or_else(|_| Err(timed_out()))
    }
}

/// The master the sentinels agree on after a promotion in place of `failed`: a majority of
/// the `total` sentinels answered, every one that named a master named this one, and it is not
/// `failed`. A sentinel names the promoted replica only once it was promoted (the leader) or
/// it learnt the switch (the others), so a lagging one (still naming `failed`) or a split
/// vote keeps the fence; one that does not answer neither vetoes nor counts.
fn agreed(
    answers: &[Result<Option<(String, u16)>, RedisError>],
    total: usize,
    failed: &str,
) -> Option<(String, u16)> {
    let mut named = answers.iter().filter_map(|a| a.as_ref().ok()?.as_ref());
    let first = named.next()?;
    let count = 1 + named.clone().count();
    let same = named.all(|a| a == first);
    (same && count > total / 2 && format!("{} {}", first.0, first.1) != failed)
        .then(|| first.clone())
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer within --redis-timeout",
    ))
}

/// Listens to sentinel `index` for as long as the process runs, subscribing again after a loss.
async fn listen_one(shared: Arc<Shared>, index: usize, on_switch: Arc<dyn Fn() + Send + Sync>) {
    let sentinel = format!("{:?}", shared.sentinels[index].addr());
    let mut reported = false;
    loop {
        let subscribed = tokio::time::timeout(shared.timeout, async {
            let mut pubsub = Client::open(shared.sentinels[index].clone())?
                .get_async_pubsub()
                .await?;
            pubsub.psubscribe("*").await?;
            Ok::<_, RedisError>(pubsub)
        })
        .await
        .unwrap_or_else(|_| Err(timed_out()));
        match subscribed {
            Ok(pubsub) => {
                reported = false;
                if shared.fence.subscribed(true) {
                    // No sentinel was listened to for a while: the master is found again
                    // rather than trusted.
                    *shared.hint.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    on_switch();
                }
                info!(shared.log, "listening to a sentinel"; "sentinel" => &sentinel);
                shared.check_master(index, &sentinel, &*on_switch).await;
                let (mut sink, mut messages) = pubsub.split();
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                heartbeat.tick().await;
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let channel = message.get_channel_name().to_owned();
                            let payload: String = message.get_payload().unwrap_or_default();
                            shared.event(&sentinel, &channel, &payload, &*on_switch);
                        }
                        _ = heartbeat.tick() => {
                            let pong = tokio::time::timeout(shared.timeout, sink.ping::<Value>());
                            if !matches!(pong.await, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                shared.fence.subscribed(false);
                warn!(shared.log, "a sentinel subscription ended"; "sentinel" => &sentinel);
            }
            Err(e) if !reported => {
                reported = true;
                warn!(shared.log, "a sentinel cannot be listened to"; "sentinel" => &sentinel,
                    "error" => e.to_string());
            }
            Err(_) => {}
        }
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

impl Shared {
    /// Whether a failover event belongs to the tail of the failover already switched to.
    fn after_switch(&self, channel: &str, payload: &str) -> bool {
        let last = self.last_switch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(epoch) = event_epoch(channel, payload) {
            self.epoch_seen.fetch_max(epoch, Ordering::SeqCst);
            return last.at.is_some() && epoch <= last.epoch;
        }
        master_address(payload).is_some_and(|address| address == last.old)
    }

    fn event(&self, sentinel: &str, channel: &str, payload: &str, on_switch: &dyn Fn()) {
        if channel == "+switch-master" {
            // <name> <old ip> <old port> <new ip> <new port>
            let words: Vec<&str> = payload.split(' ').collect();
            let [name, _, _, host, port] = words.as_slice() else {
                return;
            };
            let Ok(port) = port.parse::<u16>() else {
                return;
            };
            if *name != self.master_name {
                return;
            }
            let (old, new) = (words[1..3].join(" "), words[3..5].join(" "));
            {
                let mut last = self.last_switch.lock().unwrap_or_else(|e| e.into_inner());
                // The switch of the failover under way is acted on whatever came before (a
                // switch back to the master we know, after one we missed).
                if !self.fence.failing_over(&old)
                    && let Some(why) = last.known(&old, &new)
                {
                    // Every sentinel publishes its own copy of a switch, a slow one's possibly
                    // after the next failover began: it changes nothing (it must not end that
                    // failover's fence, nor send the connections back).
                    info!(self.log, "a switch already acted on: ignored"; "sentinel" => sentinel,
                        "why" => why, "detail" => payload);
                    return;
                }
                *last = Switch {
                    old: old.clone(),
                    new,
                    epoch: self.epoch_seen.load(Ordering::SeqCst),
                    at: Some(Instant::now()),
                };
            }
            *self.hint.lock().unwrap_or_else(|e| e.into_inner()) = Some(((*host).to_owned(), port));
            // Connections go before writes resume, so none is written to the old master.
            on_switch();
            match self.fence.switched(&old) {
                true => {
                    info!(self.log, "the master changed; writes resume"; "sentinel" => sentinel,
                    "event" => channel, "detail" => payload)
                }
                // A switch we missed, heard while the next failover is under way.
                false => {
                    info!(self.log, "the master changed; writes wait for the failover under way";
                    "sentinel" => sentinel, "event" => channel, "detail" => payload)
                }
            }
        } else if failover_event(channel)
            && about(payload, &self.master_name)
            && !self.after_switch(channel, payload)
        {
            self.fence
                .failover_event(promotion_event(channel), master_address(payload));
            if channel.starts_with("-failover-abort") {
                self.fence.aborted();
            }
            info!(self.log, "failover under way; writes wait for its end"; "sentinel" => sentinel,
                "event" => channel, "detail" => payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_events_are_told_apart_and_matched_to_their_master() {
        for channel in [
            "+new-epoch",
            "+try-failover",
            "+failover-state-select-slave",
            "+failover-end",
            "-failover-abort-not-elected",
            "+promoted-slave",
        ] {
            assert!(failover_event(channel), "{channel}");
        }
        for channel in ["+sdown", "+slave", "+sentinel", "+switch-master", "+reboot"] {
            assert!(!failover_event(channel), "{channel}");
        }
        assert!(about("master mymaster 127.0.0.1 6379", "mymaster"));
        assert!(!about("master other 127.0.0.1 6379", "mymaster"));
        assert!(about(
            "slave 127.0.0.1:7 127.0.0.1 7 @ mymaster 127.0.0.1 6379",
            "mymaster"
        ));
        assert!(!about(
            "slave a 127.0.0.1 7 @ other 127.0.0.1 6379",
            "mymaster"
        ));
        assert!(about("12", "mymaster"));
        assert_eq!(
            master_address("slave a 127.0.0.1 7 @ mymaster 127.0.0.2 6379").as_deref(),
            Some("127.0.0.2 6379")
        );
        assert_eq!(
            master_address("master mymaster 127.0.0.1 6379").as_deref(),
            Some("127.0.0.1 6379")
        );
        assert_eq!(master_address("12"), None);
        assert_eq!(event_epoch("+new-epoch", "12"), Some(12));
        assert_eq!(event_epoch("+vote-for-leader", "abc 7"), Some(7));
        assert_eq!(event_epoch("+try-failover", "master m 1 2"), None);
    }

    #[test]
    fn a_write_overlapping_a_failover_event_is_not_confirmed() {
        let fence = Fence::default();
        assert!(fence.open_epoch().is_err(), "no sentinel listened to");
        assert!(!fence.subscribed(true), "the first subscription");
        let epoch = fence.open_epoch().expect("open");
        assert!(fence.still(epoch).is_ok());
        fence.failover_event(false, None);
        assert!(fence.still(epoch).is_err(), "overlapped an event");
        assert!(fence.open_epoch().is_err(), "fenced until the switch");
        assert!(fence.switched("127.0.0.1 1000"));
        let epoch = fence.open_epoch().expect("open after the switch");
        assert!(fence.still(epoch).is_ok());
        assert!(!fence.subscribed(false));
        assert!(fence.open_epoch().is_err());
        assert!(fence.subscribed(true), "back after none was listened to");
    }

    fn sentinels() -> Sentinels {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            redis: RedisSettings,
        }
        let flags = <Flags as clap::Parser>::try_parse_from([
            "test",
            "--redis-url",
            "redis://127.0.0.1:1/0",
            "--redis-sentinels",
            "127.0.0.1:2",
        ])
        .expect("flags parse");
        let template = "redis://127.0.0.1:1/0"
            .into_connection_info()
            .expect("a URL");
        let log = Logger::root(slog::Discard, slog::o!());
        Sentinels::new(&flags.redis, template, log).expect("sentinels")
    }

    #[test]
    fn after_a_switch_its_old_master_is_never_taken_again_and_a_promotion_fences_until_it() {
        let sentinels = sentinels();
        let shared = &sentinels.shared;
        shared.fence.subscribed(true);
        assert!(
            !shared.switched_away_from("127.0.0.1", 1000),
            "no switch yet"
        );
        // The leader's promotion stage, then a silence longer than the quiet period.
        shared.event(
            "s",
            "+promoted-slave",
            "slave 127.0.0.1:2000 127.0.0.1 2000 @ mymaster 127.0.0.1 1000",
            &|| {},
        );
        let earlier = Instant::now().checked_sub(FENCE_QUIET * 2).expect("uptime");
        shared.fence.state().failover = Some(earlier);
        assert!(
            shared.fence.open_epoch().is_err(),
            "fenced until the switch"
        );
        let switched = std::sync::atomic::AtomicBool::new(false);
        shared.event(
            "s",
            "+switch-master",
            "mymaster 127.0.0.1 1000 127.0.0.1 2000",
            &|| switched.store(true, Ordering::SeqCst),
        );
        assert!(switched.load(Ordering::SeqCst), "connections dropped");
        assert!(shared.fence.open_epoch().is_ok(), "writes resume");
        // A lagging sentinel still names the old master: it is not taken, the new one is.
        assert!(shared.switched_away_from("127.0.0.1", 1000));
        assert!(!shared.switched_away_from("127.0.0.1", 2000));
        let hint = shared.hint.lock().expect("hint").clone();
        assert_eq!(hint, Some(("127.0.0.1".to_owned(), 2000)));
        // The tail of that failover fences nothing.
        shared.event(
            "s",
            "+slave-reconf-done",
            "slave 127.0.0.1:3000 127.0.0.1 3000 @ mymaster 127.0.0.1 1000",
            &|| {},
        );
        assert!(shared.fence.open_epoch().is_ok());
    }

    #[test]
    fn a_stalled_promotion_ends_only_when_a_majority_agrees_on_another_master() {
        let at = |port: u16| Ok(Some(("127.0.0.1".to_owned(), port)));
        let down = || Err(timed_out());
        let failed = "127.0.0.1 1000";
        let new = Some(("127.0.0.1".to_owned(), 2000));
        assert_eq!(agreed(&[at(2000), at(2000), at(2000)], 3, failed), new);
        assert_eq!(agreed(&[at(2000), down(), at(2000)], 3, failed), new);
        assert_eq!(
            agreed(&[at(2000), down(), Ok(None)], 3, failed),
            None,
            "no majority"
        );
        assert_eq!(
            agreed(&[at(2000), at(1000), at(2000)], 3, failed),
            None,
            "one lags"
        );
        assert_eq!(
            agreed(&[at(2000), at(3000), at(2000)], 3, failed),
            None,
            "split"
        );
        assert_eq!(
            agreed(&[at(1000), at(1000), at(1000)], 3, failed),
            None,
            "not moved"
        );
        assert_eq!(agreed(&[down(), down(), down()], 3, failed), None);

        let fence = Fence::default();
        fence.subscribed(true);
        assert_eq!(fence.stalled_promotion(), None);
        fence.failover_event(true, Some(failed.to_owned()));
        assert_eq!(fence.stalled_promotion(), None, "the switch may still come");
        let earlier = Instant::now().checked_sub(FENCE_QUIET * 2).expect("uptime");
        fence.state().promoted = Some(earlier);
        assert_eq!(fence.stalled_promotion().as_deref(), Some(failed));
        assert!(fence.switched(failed));
        assert_eq!(fence.stalled_promotion(), None);
        assert!(fence.open_epoch().is_ok());
    }

    /// Every sentinel publishes its own `+switch-master` for one switch; a slow one's copy may
    /// come after the next failover began. Neither it nor a switch from another failover may
    /// end the fence of the one under way, nor send the connections back.
    #[test]
    fn a_late_or_foreign_switch_master_does_not_end_the_fence_of_the_failover_under_way() {
        let sentinels = sentinels();
        let shared = &sentinels.shared;
        shared.fence.subscribed(true);
        let (a_to_b, b_to_c) = (
            "mymaster 127.0.0.1 1000 127.0.0.1 2000",
            "mymaster 127.0.0.1 2000 127.0.0.1 3000",
        );
        let moved = std::sync::atomic::AtomicUsize::new(0);
        let on_switch = || {
            moved.fetch_add(1, Ordering::SeqCst);
        };
        let hint = || shared.hint.lock().expect("hint").clone();
        shared.event("s1", "+new-epoch", "1", &on_switch);
        shared.event("s1", "+switch-master", a_to_b, &on_switch);
        assert!(shared.fence.open_epoch().is_ok(), "A -> B: writes resume");
        assert_eq!(moved.load(Ordering::SeqCst), 1);
        // A new failover, of B, begins; a slow sentinel's copy of A -> B comes after it.
        shared.event("s1", "+new-epoch", "2", &on_switch);
        shared.event(
            "s1",
            "+try-failover",
            "master mymaster 127.0.0.1 2000",
            &on_switch,
        );
        shared.event("s3", "+switch-master", a_to_b, &on_switch);
        assert!(
            shared.fence.open_epoch().is_err(),
            "the duplicate lifted the fence"
        );
        assert_eq!(moved.load(Ordering::SeqCst), 1, "a duplicate moves nothing");
        // Past the promotion, and quiet for longer than the quiet period: still fenced.
        shared.event(
            "s1",
            "+promoted-slave",
            "slave 127.0.0.1:3000 127.0.0.1 3000 @ mymaster 127.0.0.1 2000",
            &on_switch,
        );
        let earlier = Instant::now().checked_sub(FENCE_QUIET * 2).expect("uptime");
        shared.fence.state().failover = Some(earlier);
        shared.event("s2", "+switch-master", a_to_b, &on_switch);
        assert!(shared.fence.open_epoch().is_err(), "fenced until B -> C");
        // The switch of this failover ends it.
        shared.event("s1", "+switch-master", b_to_c, &on_switch);
        assert!(shared.fence.open_epoch().is_ok(), "B -> C: writes resume");
        assert_eq!(moved.load(Ordering::SeqCst), 2);
        assert_eq!(hint(), Some(("127.0.0.1".to_owned(), 3000)));
        // A very late copy of A -> B: not a switch back to B (that one would leave C).
        shared.event("s3", "+switch-master", a_to_b, &on_switch);
        assert_eq!(hint(), Some(("127.0.0.1".to_owned(), 3000)), "stays on C");
        assert!(
            shared.switched_away_from("127.0.0.1", 2000),
            "B still refused"
        );
        assert_eq!(moved.load(Ordering::SeqCst), 2);
        // A lagging sentinel that jumps from A straight to C: nothing new either.
        shared.event(
            "s3",
            "+switch-master",
            "mymaster 127.0.0.1 1000 127.0.0.1 3000",
            &on_switch,
        );
        assert!(
            shared.switched_away_from("127.0.0.1", 2000),
            "B still refused"
        );
        assert_eq!(moved.load(Ordering::SeqCst), 2);
        assert!(shared.fence.open_epoch().is_ok());
    }

    /// A switch we missed, heard only while the next failover is under way (its first
    /// `+switch-master` reached no subscription): the connections follow it, the fence stays.
    #[test]
    fn a_switch_heard_during_the_next_failover_moves_the_connections_but_keeps_its_fence() {
        let sentinels = sentinels();
        let shared = &sentinels.shared;
        shared.fence.subscribed(true);
        let moved = std::sync::atomic::AtomicUsize::new(0);
        let on_switch = || {
            moved.fetch_add(1, Ordering::SeqCst);
        };
        shared.event(
            "s1",
            "+promoted-slave",
            "slave 127.0.0.1:3000 127.0.0.1 3000 @ mymaster 127.0.0.1 2000",
            &on_switch,
        );
        assert!(shared.fence.open_epoch().is_err());
        shared.event(
            "s2",
            "+switch-master",
            "mymaster 127.0.0.1 1000 127.0.0.1 2000",
            &on_switch,
        );
        assert_eq!(moved.load(Ordering::SeqCst), 1, "connections follow A -> B");
        assert!(
            shared.fence.open_epoch().is_err(),
            "B's failover is still under way"
        );
        shared.event(
            "s1",
            "+switch-master",
            "mymaster 127.0.0.1 2000 127.0.0.1 3000",
            &on_switch,
        );
        assert!(shared.fence.open_epoch().is_ok());
        assert_eq!(moved.load(Ordering::SeqCst), 2);
        // We miss C -> A entirely, then see A fail over back to C: that switch is acted on,
        // although it names the master the last switch we heard went to.
        shared.event(
            "s1",
            "+promoted-slave",
            "slave 127.0.0.1:3000 127.0.0.1 3000 @ mymaster 127.0.0.1 1000",
            &on_switch,
        );
        assert!(shared.fence.open_epoch().is_err());
        shared.event(
            "s1",
            "+switch-master",
            "mymaster 127.0.0.1 1000 127.0.0.1 3000",
            &on_switch,
        );
        assert!(
            shared.fence.open_epoch().is_ok(),
            "A -> C ends A's failover"
        );
        assert!(shared.switched_away_from("127.0.0.1", 1000));
        assert_eq!(moved.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn after_a_promotion_the_fence_outlasts_the_quiet_period_until_the_switch() {
        let fence = Fence::default();
        fence.subscribed(true);
        let long_ago = |fence: &Fence| {
            let earlier = Instant::now().checked_sub(FENCE_QUIET * 2).expect("uptime");
            fence.state().failover = Some(earlier);
        };
        // An early event alone: the fence lifts after the quiet period (an aborted attempt).
        fence.failover_event(false, None);
        assert!(fence.open_epoch().is_err());
        long_ago(&fence);
        assert!(fence.open_epoch().is_ok(), "quiet period over");
        // Once a replica was promoted: no event for longer than the quiet period (a long
        // resync) and the fence still holds, until the switch.
        for channel in [
            "+promoted-slave",
            "+failover-state-reconf-slaves",
            "+slave-reconf-sent",
        ] {
            assert!(promotion_event(channel), "{channel}");
        }
        assert!(!promotion_event("+try-failover"));
        fence.failover_event(true, Some("127.0.0.1 1000".into()));
        long_ago(&fence);
        assert!(
            fence.open_epoch().is_err(),
            "promoted: fenced until the switch"
        );
        assert!(fence.switched("127.0.0.1 1000"));
        assert!(fence.open_epoch().is_ok());
        // An abort after a promotion falls back to the quiet period.
        fence.failover_event(true, Some("127.0.0.1 1000".into()));
        fence.aborted();
        long_ago(&fence);
        assert!(fence.open_epoch().is_ok());
    }
}
