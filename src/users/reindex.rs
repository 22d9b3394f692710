//! `platform users reindex`: builds our indexes for users the seeds' services wrote.

use std::sync::LazyLock;

use deadpool_redis::redis::{self, AsyncCommands, Script, Value};
use serde::Serialize;
use uuid::Uuid;

use super::store::{self, BY_CREATED, BY_CREATED_LEX, INDEX, StoreError, UserStore};
use crate::accounts::domain::User;
use crate::telemetry::metrics::Metrics;

static REINDEX_ONE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reindex_one.lua")));

/// What a reindex run found and did. Re-running it on the same data changes nothing.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    pub users: u64,
    pub added_to_index: u64,
    pub added_to_by_created: u64,
    pub email_guards_added: u64,
    pub dangling_ids_removed: u64,
    pub unreadable: Vec<String>,
    pub duplicate_emails: Vec<Duplicate>,
}

/// Two users with one email: the older keeps it, the other is reported for a human to fix.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Duplicate {
    pub email: String,
    pub kept_by: String,
    pub also_used_by: String,
}

pub async fn reindex(store: &UserStore) -> Result<Report, StoreError> {
    let mut conn = store.connection().await?;
    let mut report = Report::default();

    // Every user record, wherever it is indexed or not.
    let mut users: Vec<(User, String)> = Vec::new();
    let keys: Vec<String> = scan(&mut conn, "SCAN", None, "user:*").await?;
    for key in keys {
        let Some(id) = key
            .strip_prefix("user:")
            .and_then(|id| Uuid::try_parse(id).ok())
        else {
            continue;
        };
        match store::read(&mut conn, id).await {
            Ok(Some(found)) => users.push(found),
            Ok(None) => {}
            Err(StoreError::Corrupt { key, .. }) => report.unreadable.push(key),
            Err(e) => return Err(e),
        }
    }
    // Oldest first, so the oldest user keeps a shared email.
    users.sort_by_key(|(user, _)| (store::created_score(user), user.id.clone()));
    report.users = users.len() as u64;

    for (user, raw) in &users {
        let outcome: Value = REINDEX_ONE
            .key(store::user_key(&user.id))
            .key(store::email_key(&user.email))
            .key(INDEX)
            .key(BY_CREATED)
            .key(BY_CREATED_LEX)
            .arg(&user.id)
            .arg(raw)
            .arg(store::created_score(user))
            .arg(store::ordered_member(store::created_score(user), &user.id))
            .invoke_async(&mut conn)
            .await?;
        let Ok((indexed, ordered, email)) = redis::from_redis_value::<(u64, u64, String)>(outcome)
        else {
            // Changed or deleted since we read it: the API's own scripts indexed it.
            continue;
        };
        report.added_to_index += indexed;
        report.added_to_by_created += ordered;
        match email.as_str() {
            "added" => report.email_guards_added += 1,
            "kept" => {}
            owner => report.duplicate_emails.push(Duplicate {
                email: user.email.to_lowercase(),
                kept_by: owner.to_owned(),
                also_used_by: user.id.clone(),
            }),
        }
    }

    // Index entries whose user is gone.
    let indexed: Vec<String> = scan(&mut conn, "SSCAN", Some(INDEX), "*").await?;
    let ordered: Vec<String> = scan(&mut conn, "ZSCAN", Some(BY_CREATED), "*").await?;
    for id in indexed.iter().chain(ordered.iter()) {
        let exists: bool = conn.exists(store::user_key(id)).await?;
        if !exists {
            let (srem, zrem): (u64, u64) = redis::pipe()
                .srem(INDEX, id)
                .zrem(BY_CREATED, id)
                .query_async(&mut conn)
                .await?;
            report.dangling_ids_removed += u64::from(srem + zrem > 0);
        }
    }
    // users:by_created_lex mirrors users:by_created, whatever was fixed above.
    store.sync_ordered_index().await?;
    Ok(report)
}

/// All members of a SCAN-family iteration (`ZSCAN` yields member, score pairs: scores dropped).
async fn scan(
    conn: &mut deadpool_redis::Connection,
    command: &str,
    key: Option<&str>,
    pattern: &str,
) -> Result<Vec<String>, StoreError> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let mut cmd = redis::cmd(command);
        if let Some(key) = key {
            cmd.arg(key);
        }
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        let (next, batch): (u64, Vec<String>) = cmd.query_async(conn).await?;
        if command == "ZSCAN" {
            out.extend(batch.into_iter().step_by(2));
        } else {
            out.extend(batch);
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The `reindex` command: run once and log the report (a summary line, then one line per finding).
pub async fn run(
    settings: &crate::config::UsersSettings,
    log: &slog::Logger,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let log = &crate::telemetry::logging::for_service(log, super::SERVICE);
    let store = UserStore::new(&settings.redis, &Metrics::new())?;
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
        "duplicate_emails" => report.duplicate_emails.len(),
        "unreadable" => report.unreadable.len(),
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
