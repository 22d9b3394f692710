//! `platform users reindex`: builds our indexes for users the seeds' services wrote, streamed
//! in batches with bounded memory, and removes index entries whose user is gone.
//!
//! Redis is single-threaded and the bottleneck, so the work it does per user is kept small: one
//! `reindex_batch.lua` per batch of users (a few variadic commands inside, not several per
//! user), variadic `EXISTS` to find dangling entries (a closer look only where a batch's count
//! is short), and two connections so that Redis indexes one batch while the next one is read
//! and parsed. Every write rechecks what it depends on in the same step, so it is safe while
//! the service serves traffic: a concurrent create, update or delete is never undone.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{self, Script};
use serde::Serialize;
use uuid::Uuid;

use super::guards::{self, Claim};
use super::store::{self, BY_CREATED, BY_CREATED_LEX, INDEX, StoreError, UserStore};
use crate::accounts::domain::User;
use crate::accounts::parse_ordered_member;
use crate::telemetry::metrics::Metrics;

/// Indexes a batch of users, each if it still is what was read.
static REINDEX_BATCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reindex_batch.lua")));
/// Removes index entries whose user is gone, atomically with the check.
static DROP_DANGLING: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/drop_dangling.lua")));
/// Removes `users:by_created_lex` members that `users:by_created` does not hold.
static PRUNE_LEX: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reindex_prune_lex.lua")));

/// Keys or ids asked for per round trip.
pub(super) const BATCH: usize = 1000;
/// Users per `reindex_batch.lua`: Redis runs nothing else meanwhile (about 1 ms at 1 M users).
/// At most 2000: a Lua `unpack` takes at most 8000 values (LUAI_MAXCSTACK).
const SCRIPT_BATCH: usize = 500;
/// Users read, then sorted together before they are indexed `SCRIPT_BATCH` at a time: the
/// more are sorted together, the closer consecutive inserts land in the sorted sets (memory
/// stays bounded: the command's peak RSS is ~38 MB at 1 M users).
const SORT_GROUP: usize = 32_768;
/// Ids per closer look (one variadic `EXISTS` each) in a batch whose count is short.
const LOOK_CLOSER: usize = 32;
/// Batches read ahead of the indexing (memory stays bounded by this many batches).
const READ_AHEAD: usize = 4;
/// Times a user that changed between its read and its indexing is read again.
const CHANGED_RETRIES: usize = 3;
/// Findings listed one by one in a report; beyond, only counted (bounded memory).
const MAX_LISTED: usize = 1000;

/// What a reindex run found and did. Re-running it on the same data changes nothing.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    pub users: u64,
    pub added_to_index: u64,
    pub added_to_by_created: u64,
    pub email_guards_added: u64,
    /// Ids removed from `users:index` or `users:by_created` because their user is gone.
    pub dangling_ids_removed: u64,
    /// Members removed from `users:by_created_lex` that `users:by_created` does not hold.
    pub dangling_members_removed: u64,
    /// Email guards handed from a holder that no longer has the address (gone, or another
    /// address now) to a user who has it.
    pub guards_handed_over: u64,
    pub unreadable_count: u64,
    pub duplicate_email_count: u64,
    /// Users that changed after being read every time they were read (left to their writer).
    pub changed_count: u64,
    /// The first `MAX_LISTED` unreadable keys.
    pub unreadable: Vec<String>,
    /// The first `MAX_LISTED` duplicate emails.
    pub duplicate_emails: Vec<Duplicate>,
}

/// Two users with one email: the one indexed first keeps it (the older one within a batch),
/// the other is reported for a human to fix.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Duplicate {
    pub email: String,
    pub kept_by: String,
    pub also_used_by: String,
}

impl Report {
    pub(super) fn duplicate(&mut self, email: &str, kept_by: String, also_used_by: &str) {
        self.duplicate_email_count += 1;
        if self.duplicate_emails.len() < MAX_LISTED {
            self.duplicate_emails.push(Duplicate {
                email: email.to_lowercase(),
                kept_by,
                also_used_by: also_used_by.to_owned(),
            });
        }
    }

    fn unreadable(&mut self, key: String) {
        self.unreadable_count += 1;
        if self.unreadable.len() < MAX_LISTED {
            self.unreadable.push(key);
        }
    }
}

/// A user record as read: its id (from its key), and its stored value if it exists (bytes: a
/// value that is not UTF-8 is reported as unreadable, never an error that stops the run).
type Read = (String, Option<Vec<u8>>);

/// A readable user, the JSON it was read as and its `users:by_created` score.
struct Parsed {
    user: User,
    raw: String,
    score: i64,
}

pub async fn reindex(store: &UserStore) -> Result<Report, StoreError> {
    let mut reader = store.connection().await?;
    let mut writer = store.connection().await?;
    let mut report = Report::default();
    // Ordered indexes empty at the start (a first migration): every entry they hold at the end
    // was written by this run for a user it had just checked, or by one of our own creates.
    let (_, ordered, lex) = sizes(&mut writer).await?;
    let written_by_us = ordered == 0 && lex == 0;

    // Every user record, indexed or not: one connection scans and reads, the other indexes
    // what was read before, so Redis always has work queued.
    let (batches, mut to_index) = tokio::sync::mpsc::channel::<Vec<Read>>(READ_AHEAD);
    let read = async move { scan_users(&mut reader, batches).await };
    let index = async {
        let mut group: Vec<Parsed> = Vec::with_capacity(SORT_GROUP + BATCH);
        loop {
            let batch = to_index.recv().await;
            let last = batch.is_none();
            if let Some(batch) = batch {
                group.extend(parse(batch, &mut report));
            }
            if group.len() >= SORT_GROUP || (last && !group.is_empty()) {
                report.users += group.len() as u64;
                sort_oldest_first(&mut group);
                let users = std::mem::replace(&mut group, Vec::with_capacity(SORT_GROUP + BATCH));
                let changed = index_users(&mut writer, users, &mut report).await?;
                reindex_changed(&mut writer, changed, &mut report).await?;
            }
            if last {
                return Ok::<_, StoreError>(());
            }
        }
    };
    tokio::try_join!(read, index)?;

    // Entries whose user is gone, and members the ordered index does not hold. One pass over
    // `users:by_created_lex` checks its members (not needed when this run wrote them all);
    // after it every member left belongs to a distinct `users:by_created` entry whose user
    // exists, so equal sizes prove the other two indexes hold nothing else (every user found
    // above is in all three, and our own writes change the three together): their passes run
    // only when the sizes differ.
    if !written_by_us {
        prune_lex(&mut writer, &mut report).await?;
    }
    let (index, ordered, lex) = sizes(&mut writer).await?;
    if ordered != lex {
        report.dangling_ids_removed += drop_dangling_in(&mut writer, BY_CREATED).await?;
    }
    if index != lex {
        report.dangling_ids_removed += drop_dangling_in(&mut writer, INDEX).await?;
    }
    Ok(report)
}

/// The sizes of `users:index`, `users:by_created` and `users:by_created_lex`.
async fn sizes<C: ConnectionLike + Send>(conn: &mut C) -> Result<(u64, u64, u64), StoreError> {
    Ok(redis::pipe()
        .scard(INDEX)
        .zcard(BY_CREATED)
        .zcard(BY_CREATED_LEX)
        .query_async(conn)
        .await?)
}

/// SCANs the `user:*` keys and sends them with their records, a batch at a time; each round
/// trip reads the batch found and asks for the next one.
async fn scan_users<C: ConnectionLike + Send>(
    conn: &mut C,
    out: tokio::sync::mpsc::Sender<Vec<Read>>,
) -> Result<(), StoreError> {
    let scan = |cursor: u64| {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg("user:*")
            .arg("COUNT")
            .arg(BATCH);
        cmd
    };
    let (mut cursor, mut keys): (u64, Vec<Vec<u8>>) = scan(0).query_async(conn).await?;
    loop {
        let ids: Vec<String> = keys
            .iter()
            .filter_map(|key| std::str::from_utf8(key).ok()?.strip_prefix("user:"))
            .filter(|id| Uuid::try_parse(id).is_ok())
            .map(str::to_owned)
            .collect();
        let mut pipe = redis::pipe();
        if !ids.is_empty() {
            pipe.cmd("MGET").arg(user_keys(&ids));
        }
        if cursor != 0 {
            pipe.add_command(scan(cursor));
        }
        if pipe.is_empty() {
            return Ok(());
        }
        let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
        let next = match cursor {
            0 => None,
            _ => Some(
                redis::from_redis_value::<(u64, Vec<Vec<u8>>)>(
                    replies.pop().expect("one reply per command"),
                )
                .map_err(redis::RedisError::from)?,
            ),
        };
        if let Some(raws) = replies.pop() {
            let raws: Vec<Option<Vec<u8>>> =
                redis::from_redis_value(raws).map_err(redis::RedisError::from)?;
            // The indexing side stopped (it failed): its error is the one reported.
            if out.send(ids.into_iter().zip(raws).collect()).await.is_err() {
                return Ok(());
            }
        }
        match next {
            Some((next, found)) => (cursor, keys) = (next, found),
            None => return Ok(()),
        }
    }
}

fn user_keys<S: AsRef<str>>(ids: &[S]) -> Vec<String> {
    ids.iter().map(|id| store::user_key(id.as_ref())).collect()
}

/// The readable users of `batch` (a record that is not a user, or whose id is not its key's, is
/// reported and left alone), oldest first: the older of two users with one email keeps it.
fn parse(batch: Vec<Read>, report: &mut Report) -> Vec<Parsed> {
    let mut users: Vec<Parsed> = Vec::with_capacity(batch.len());
    for (id, raw) in batch {
        let Some(raw) = raw else { continue };
        let Ok(raw) = String::from_utf8(raw) else {
            report.unreadable(store::user_key(&id));
            continue;
        };
        match serde_json::from_str::<User>(&raw) {
            Ok(user) if user.id == id => {
                let score = store::created_score(&user);
                users.push(Parsed { user, raw, score });
            }
            _ => report.unreadable(store::user_key(&id)),
        }
    }
    sort_oldest_first(&mut users);
    users
}

/// Oldest first, then by id: the older of two users with one email keeps it, and inserts in
/// order land near each other in the sorted sets' skiplists (fewer cache misses in Redis).
fn sort_oldest_first(users: &mut [Parsed]) {
    users.sort_unstable_by(|a, b| (a.score, &a.user.id).cmp(&(b.score, &b.user.id)));
}

/// Adds the users `ids` (that exist and are readable) to our indexes; a user that changes
/// between its read and its indexing is read again, a few times.
pub(super) async fn index_ids<C: ConnectionLike + Send>(
    conn: &mut C,
    ids: &[String],
    report: &mut Report,
) -> Result<(), StoreError> {
    let users = read_parsed(conn, ids, report).await?;
    report.users += users.len() as u64;
    let changed = index_users(conn, users, report).await?;
    reindex_changed(conn, changed, report).await
}

async fn read_parsed<C: ConnectionLike + Send>(
    conn: &mut C,
    ids: &[String],
    report: &mut Report,
) -> Result<Vec<Parsed>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let raws: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(user_keys(ids))
        .query_async(conn)
        .await?;
    Ok(parse(ids.iter().cloned().zip(raws).collect(), report))
}

/// Reads again and indexes users that changed since they were read (a user deleted since is
/// simply gone); those still changing after `CHANGED_RETRIES` reads are counted and left to
/// whoever keeps writing them (the reconciler's next pass indexes them if need be).
async fn reindex_changed<C: ConnectionLike + Send>(
    conn: &mut C,
    mut changed: Vec<String>,
    report: &mut Report,
) -> Result<(), StoreError> {
    for _ in 0..CHANGED_RETRIES {
        if changed.is_empty() {
            return Ok(());
        }
        let users = read_parsed(conn, &changed, report).await?;
        changed = index_users(conn, users, report).await?;
    }
    report.changed_count += changed.len() as u64;
    Ok(())
}

/// Runs `reindex_batch.lua` on `users` (sorted oldest first), `SCRIPT_BATCH` at a time; the ids
/// of users that changed since they were read.
async fn index_users<C: ConnectionLike + Send>(
    conn: &mut C,
    users: Vec<Parsed>,
    report: &mut Report,
) -> Result<Vec<String>, StoreError> {
    let mut changed = Vec::new();
    for chunk in users.chunks(SCRIPT_BATCH) {
        let mut invocation = REINDEX_BATCH.prepare_invoke();
        invocation.key(INDEX).key(BY_CREATED).key(BY_CREATED_LEX);
        for parsed in chunk {
            invocation.key(store::user_key(&parsed.user.id));
        }
        for parsed in chunk {
            invocation.key(store::email_key(&parsed.user.email));
        }
        for Parsed { user, raw, score } in chunk {
            invocation
                .arg(&user.id)
                .arg(raw)
                .arg(*score)
                .arg(store::ordered_member(*score, &user.id));
        }
        let (indexed, ordered, guards, moved, taken, owners): (
            u64,
            u64,
            u64,
            Vec<usize>,
            Vec<usize>,
            Vec<String>,
        ) = invocation.invoke_async(conn).await?;
        report.added_to_index += indexed;
        report.added_to_by_created += ordered;
        report.email_guards_added += guards;
        let at = |position: usize| chunk.get(position.wrapping_sub(1));
        changed.extend(moved.into_iter().filter_map(at).map(|p| p.user.id.clone()));
        let claims = taken
            .into_iter()
            .zip(owners)
            .filter_map(|(position, holder)| {
                let Parsed { user, raw, .. } = at(position)?;
                Some(Claim {
                    id: user.id.clone(),
                    email: user.email.clone(),
                    raw: raw.clone(),
                    holder,
                })
            })
            .collect();
        // A guard whose holder no longer has the address goes to the user who has it.
        changed.extend(guards::resolve_claims(conn, claims, report).await?);
    }
    Ok(changed)
}

/// One pass over `users:index` or `users:by_created` removing the ids whose user is gone; how
/// many it removed.
async fn drop_dangling_in<C: ConnectionLike + Send>(
    conn: &mut C,
    index: &'static str,
) -> Result<u64, StoreError> {
    let ordered = index == BY_CREATED;
    let mut removed = 0;
    let mut cursor: u64 = 0;
    loop {
        let (next, flat): (u64, Vec<String>) = redis::cmd(if ordered { "ZSCAN" } else { "SSCAN" })
            .arg(index)
            .arg(cursor)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(conn)
            .await?;
        let entries: Vec<(&str, String)> = match ordered {
            true => flat
                .chunks_exact(2)
                .map(|pair| {
                    let member = store::ordered_member(score_ms(&pair[1]), &pair[0]);
                    (pair[0].as_str(), member)
                })
                .collect(),
            false => flat.iter().map(|id| (id.as_str(), String::new())).collect(),
        };
        removed += drop_dangling(conn, &entries).await?;
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// Removes those of `entries` (id, its `users:by_created_lex` member or "" if unknown) whose
/// user record is gone from our three indexes; how many ids it removed. One variadic `EXISTS`
/// for all (the usual answer: they all exist), then a closer look only where a count is short.
pub(super) async fn drop_dangling<C: ConnectionLike + Send>(
    conn: &mut C,
    entries: &[(&str, String)],
) -> Result<u64, StoreError> {
    if entries.is_empty() || count_existing(conn, entries).await? == entries.len() {
        return Ok(0);
    }
    drop_gone(conn, entries).await
}

/// `drop_dangling` for entries some of whose users are known to be gone: a variadic `EXISTS`
/// per `LOOK_CLOSER` entries, then `drop_dangling.lua` (which checks each again) where a count
/// is short.
async fn drop_gone<C: ConnectionLike + Send>(
    conn: &mut C,
    entries: &[(&str, String)],
) -> Result<u64, StoreError> {
    let mut pipe = redis::pipe();
    for chunk in entries.chunks(LOOK_CLOSER) {
        pipe.cmd("EXISTS").arg(user_keys(
            &chunk.iter().map(|(id, _)| id).collect::<Vec<_>>(),
        ));
    }
    let counts: Vec<usize> = pipe.query_async(conn).await?;
    let mut removed = 0;
    for (chunk, count) in entries.chunks(LOOK_CLOSER).zip(counts) {
        if count == chunk.len() {
            continue;
        }
        let mut invocation = DROP_DANGLING.prepare_invoke();
        invocation.key(INDEX).key(BY_CREATED).key(BY_CREATED_LEX);
        for (id, member) in chunk {
            invocation.key(store::user_key(id));
            invocation.arg(*id).arg(member);
        }
        removed += invocation.invoke_async::<u64>(conn).await?;
    }
    Ok(removed)
}

/// How many of the entries' user records exist (an id listed twice counts twice).
async fn count_existing<C: ConnectionLike + Send>(
    conn: &mut C,
    entries: &[(&str, String)],
) -> Result<usize, StoreError> {
    Ok(redis::cmd("EXISTS")
        .arg(user_keys(
            &entries.iter().map(|(id, _)| id).collect::<Vec<_>>(),
        ))
        .query_async(conn)
        .await?)
}

/// One pass over `users:by_created_lex`: removes the members whose user is gone (with the user's
/// other entries) and those `users:by_created` does not hold (not one of ours, or another time
/// than the user's), each after checking again in the same step. It replaces a whole sync of
/// the two ordered indexes: every user indexed above got its member already.
async fn prune_lex<C: ConnectionLike + Send>(
    conn: &mut C,
    report: &mut Report,
) -> Result<(), StoreError> {
    let mut cursor: u64 = 0;
    loop {
        let (next, flat): (u64, Vec<String>) = redis::cmd("ZSCAN")
            .arg(BY_CREATED_LEX)
            .arg(cursor)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(conn)
            .await?;
        let members: Vec<(&String, Option<(i64, &str)>)> = flat
            .iter()
            .step_by(2)
            .map(|member| (member, parse_ordered_member(member)))
            .collect();
        let ours: Vec<(&str, String)> = members
            .iter()
            .filter_map(|(member, parsed)| parsed.map(|(_, id)| (id, (*member).clone())))
            .collect();
        // Where `users:by_created` holds each id, and how many of the users exist.
        let (scores, existing): (Vec<Option<String>>, usize) = match ours.is_empty() {
            true => (Vec::new(), 0),
            false => {
                let ids: Vec<&str> = ours.iter().map(|(id, _)| *id).collect();
                redis::pipe()
                    .cmd("ZMSCORE")
                    .arg(BY_CREATED)
                    .arg(&ids)
                    .cmd("EXISTS")
                    .arg(user_keys(&ids))
                    .query_async(conn)
                    .await?
            }
        };
        if existing < ours.len() {
            report.dangling_ids_removed += drop_gone(conn, &ours).await?;
        }
        let mut prune = PRUNE_LEX.prepare_invoke();
        prune.key(BY_CREATED).key(BY_CREATED_LEX);
        let mut stale = 0;
        let mut scores = scores.iter();
        for (member, parsed) in &members {
            let (id, score) = match parsed {
                Some((_, id)) => (*id, scores.next().and_then(Option::as_deref)),
                None => ("", None),
            };
            let held = score.is_some_and(|s| {
                parsed.is_some() && store::ordered_member(score_ms(s), id) == **member
            });
            if !held {
                prune.arg(*member).arg(id).arg(score.unwrap_or(""));
                stale += 1;
            }
        }
        if stale > 0 {
            report.dangling_members_removed += prune.invoke_async::<u64>(conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A score as Redis prints it, as whole ms (what our scripts write; anything else truncated).
pub(super) fn score_ms(score: &str) -> i64 {
    score.parse::<f64>().map_or(0, |s| s as i64)
}

/// The `reindex` command: run once and log the report (a summary line, then one line per finding).
pub async fn run(
    settings: &crate::config::UsersSettings,
    log: &slog::Logger,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let log = &crate::telemetry::logging::for_service(log, super::SERVICE);
    let store = UserStore::new(&settings.redis, &Metrics::new())?;
    let started = std::time::Instant::now();
    let report = reindex(&store)
        .await
        .with_context(|| format!("reindex failed on {}", settings.redis.redacted_url()))?;
    store.close();
    let elapsed = started.elapsed();
    slog::info!(log, "reindex done";
        "users" => report.users,
        "added_to_index" => report.added_to_index,
        "added_to_by_created" => report.added_to_by_created,
        "email_guards_added" => report.email_guards_added,
        "dangling_ids_removed" => report.dangling_ids_removed,
        "dangling_members_removed" => report.dangling_members_removed,
        "guards_handed_over" => report.guards_handed_over,
        "duplicate_emails" => report.duplicate_email_count,
        "unreadable" => report.unreadable_count,
        "changed" => report.changed_count,
        "duration_ms" => elapsed.as_millis() as u64,
        "users_per_s" => (report.users as f64 / elapsed.as_secs_f64().max(1e-3)) as u64,
    );
    for dup in &report.duplicate_emails {
        slog::warn!(log, "duplicate email left for a human to resolve";
            "email" => &dup.email, "kept_by" => &dup.kept_by, "also_used_by" => &dup.also_used_by);
    }
    for key in &report.unreadable {
        slog::warn!(log, "record is not a user and was left alone"; "key" => key);
    }
    Ok(())
}
