//! `platform users reindex`: builds our indexes for users the seeds' services wrote, streamed
//! in batches (SCAN + MGET + pipelined `reindex_one.lua`), with bounded memory.

use std::sync::LazyLock;

use crate::redis::Connection;
use deadpool_redis::redis::{self, Script, Value};
use serde::Serialize;
use uuid::Uuid;

use super::store::{self, BY_CREATED, BY_CREATED_LEX, INDEX, StoreError, UserStore};
use crate::accounts::domain::User;
use crate::telemetry::metrics::Metrics;

static REINDEX_ONE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reindex_one.lua")));
/// Removes an index entry whose user is gone, atomically with the check.
static DROP_DANGLING: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/drop_dangling.lua")));

/// Keys or ids asked for per round trip.
pub(super) const BATCH: usize = 1000;
/// Findings listed one by one in a report; beyond, only counted (bounded memory).
const MAX_LISTED: usize = 1000;

/// What a reindex run found and did. Re-running it on the same data changes nothing.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    pub users: u64,
    pub added_to_index: u64,
    pub added_to_by_created: u64,
    pub email_guards_added: u64,
    pub dangling_ids_removed: u64,
    pub unreadable_count: u64,
    pub duplicate_email_count: u64,
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

pub async fn reindex(store: &UserStore) -> Result<Report, StoreError> {
    let mut conn = store.connection().await?;
    let mut report = Report::default();

    // Every user record, indexed or not, a batch of keys at a time.
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("user:*")
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut conn)
            .await?;
        let ids: Vec<String> = keys
            .iter()
            .filter_map(|key| key.strip_prefix("user:"))
            .filter(|id| Uuid::try_parse(id).is_ok())
            .map(str::to_owned)
            .collect();
        index_ids(&mut conn, &ids, &mut report).await?;
        if next == 0 {
            break;
        }
        cursor = next;
    }

    // Index entries whose user is gone.
    for (command, key) in [("SSCAN", INDEX), ("ZSCAN", BY_CREATED)] {
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd(command)
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await?;
            let step = if command == "ZSCAN" { 2 } else { 1 };
            let ids: Vec<&String> = batch.iter().step_by(step).collect();
            report.dangling_ids_removed += drop_dangling(&mut conn, &ids).await?;
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    // users:by_created_lex mirrors users:by_created, whatever was fixed above.
    store.sync_ordered_index().await?;
    Ok(report)
}

/// Adds the users `ids` (that exist and are readable) to our indexes: one MGET and one
/// pipeline of `reindex_one.lua`, oldest first so the older user keeps a shared email.
pub(super) async fn index_ids(
    conn: &mut Connection,
    ids: &[String],
    report: &mut Report,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = ids.iter().map(|id| store::user_key(id)).collect();
    let raws: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
    let mut users: Vec<(User, String)> = Vec::with_capacity(raws.len());
    for (raw, key) in raws.into_iter().zip(keys) {
        let Some(raw) = raw else { continue };
        match serde_json::from_str::<User>(&raw) {
            Ok(user) => users.push((user, raw)),
            Err(_) => {
                report.unreadable_count += 1;
                if report.unreadable.len() < MAX_LISTED {
                    report.unreadable.push(key);
                }
            }
        }
    }
    users.sort_by_key(|(user, _)| (store::created_score(user), user.id.clone()));
    report.users += users.len() as u64;
    let mut pipe = redis::pipe();
    pipe.load_script(&REINDEX_ONE).ignore();
    for (user, raw) in &users {
        pipe.invoke_script(
            REINDEX_ONE
                .key(store::user_key(&user.id))
                .key(store::email_key(&user.email))
                .key(INDEX)
                .key(BY_CREATED)
                .key(BY_CREATED_LEX)
                .arg(&user.id)
                .arg(raw)
                .arg(store::created_score(user))
                .arg(store::ordered_member(store::created_score(user), &user.id)),
        );
    }
    let outcomes: Vec<Value> = pipe.query_async(conn).await?;
    for (outcome, (user, _)) in outcomes.into_iter().zip(&users) {
        let Ok((indexed, ordered, email)) = redis::from_redis_value::<(u64, u64, String)>(outcome)
        else {
            // Changed or deleted since we read it: whoever wrote it indexed it (or the next
            // reconciler pass does).
            continue;
        };
        report.added_to_index += indexed;
        report.added_to_by_created += ordered;
        match email.as_str() {
            "added" => report.email_guards_added += 1,
            "kept" => {}
            owner => {
                report.duplicate_email_count += 1;
                if report.duplicate_emails.len() < MAX_LISTED {
                    report.duplicate_emails.push(Duplicate {
                        email: user.email.to_lowercase(),
                        kept_by: owner.to_owned(),
                        also_used_by: user.id.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Removes those of `ids` whose user record is gone from both indexes; how many it removed.
pub(super) async fn drop_dangling(
    conn: &mut Connection,
    ids: &[&String],
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let keys: Vec<String> = ids.iter().map(|id| store::user_key(id)).collect();
    let exists: Vec<bool> = {
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.exists(key);
        }
        pipe.query_async(conn).await?
    };
    let gone: Vec<(&&String, &String)> = ids
        .iter()
        .zip(&keys)
        .zip(exists)
        .filter(|(_, exists)| !exists)
        .map(|(pair, _)| pair)
        .collect();
    if gone.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    pipe.load_script(&DROP_DANGLING).ignore();
    for (id, key) in &gone {
        pipe.invoke_script(
            DROP_DANGLING
                .key(*key)
                .key(INDEX)
                .key(BY_CREATED)
                .arg(id.as_str()),
        );
    }
    let removed: Vec<u64> = pipe.query_async(conn).await?;
    Ok(removed.into_iter().sum())
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
    slog::info!(log, "reindex done";
        "users" => report.users,
        "added_to_index" => report.added_to_index,
        "added_to_by_created" => report.added_to_by_created,
        "email_guards_added" => report.email_guards_added,
        "dangling_ids_removed" => report.dangling_ids_removed,
        "duplicate_emails" => report.duplicate_email_count,
        "unreadable" => report.unreadable_count,
        "duration_ms" => started.elapsed().as_millis() as u64,
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
