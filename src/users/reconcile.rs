//! The users role's background reconciler: indexes users that another writer (the seeds'
//! Node.js service during a migration) put in `users:index` but not in our indexes, and drops
//! ordered-index entries whose user that writer deleted, and, a step per tick, sweeps the email
//! guards for those whose owner that writer deleted or gave another address (a guard left
//! behind would refuse that address forever). No manual step, bounded work per tick.

use std::time::{Duration, Instant};

use redis::{self, aio::ConnectionLike};
use slog::Logger;

use super::reindex::{self, BATCH, Report};
use super::store::{BY_CREATED, INDEX, StoreError, UserStore, ordered_member};

/// How often the counts are compared (one round trip: SCARD + ZCARD).
const INTERVAL: Duration = Duration::from_secs(1);
/// Redis work one tick may do before yielding to the next tick.
const BUDGET: Duration = Duration::from_millis(200);

/// Where an unfinished pass stands between ticks.
#[derive(Debug, Default)]
struct State {
    /// The scan in progress: `None` when none is.
    pass: Option<Pass>,
    /// The counts when the pass in progress started.
    started_with: Option<(u64, u64)>,
    /// The counts a finished pass left unequal although nothing was written during it (e.g.
    /// an unreadable record): no new pass until they change, so a difference nobody can fix
    /// does not cost a sweep every second.
    settled: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy)]
enum Pass {
    /// SSCAN of `users:index`, indexing ids missing from `users:by_created`.
    Missing(u64),
    /// ZSCAN of `users:by_created`, dropping ids whose user is gone.
    Dangling(u64),
}

/// Runs the reconciler until the returned handle is aborted: once at start, then every second.
/// Each tick also takes one step of the endless guard sweep (one SCAN step of `BATCH` slots:
/// a pass over 1 M users' keys takes about half an hour, at ~3 ms of Redis work a second).
pub fn spawn(store: UserStore, log: Logger) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut state = State::default();
        let mut guards: u64 = 0;
        loop {
            let mut report = Report::default();
            if let Err(e) = tick(&store, &mut state, &mut report).await {
                slog::debug!(log, "reconciler tick failed"; "error" => %e);
            }
            match sweep_guards(&store, guards, &mut report).await {
                Ok(next) => guards = next,
                Err(e) => slog::debug!(log, "guard sweep step failed"; "error" => %e),
            }
            log_report(&log, &report);
            tokio::time::sleep(INTERVAL).await;
        }
    })
}

/// Runs passes until the indexes agree with `users:index` (or a pass changes nothing): the
/// export calls it first, so users only `users:index` knows are exported too.
pub async fn until_settled(store: &UserStore, log: &Logger) -> Result<(), StoreError> {
    let mut state = State::default();
    loop {
        let mut report = Report::default();
        let done = tick(store, &mut state, &mut report).await?;
        log_report(log, &report);
        if done {
            return Ok(());
        }
    }
}

async fn sweep_guards(
    store: &UserStore,
    cursor: u64,
    report: &mut Report,
) -> Result<u64, StoreError> {
    let mut conn = store.connection().await?;
    reindex::sweep_guards(&mut conn, cursor, true, report).await
}

fn log_report(log: &Logger, report: &Report) {
    if report.added_to_by_created
        + report.email_guards_added
        + report.dangling_ids_removed
        + report.stale_guards_removed
        > 0
    {
        slog::info!(log, "reconciled users written by another service";
            "added_to_by_created" => report.added_to_by_created,
            "email_guards_added" => report.email_guards_added,
            "dangling_ids_removed" => report.dangling_ids_removed,
            "stale_guards_removed" => report.stale_guards_removed);
    }
    for dup in &report.duplicate_emails {
        slog::warn!(log, "duplicate email left for a human to resolve";
            "email" => &dup.email, "kept_by" => &dup.kept_by, "also_used_by" => &dup.also_used_by);
    }
}

/// One bounded step; `true` when there is nothing (more) to do for now.
async fn tick(
    store: &UserStore,
    state: &mut State,
    report: &mut Report,
) -> Result<bool, StoreError> {
    let mut conn = store.connection().await?;
    let started = Instant::now();
    let pass = match state.pass {
        Some(pass) => pass,
        None => {
            let counts = counts(&mut conn).await?;
            if counts.0 == counts.1 || state.settled == Some(counts) {
                if counts.0 == counts.1 {
                    state.settled = None;
                }
                return Ok(true);
            }
            state.started_with = Some(counts);
            Pass::Missing(0)
        }
    };
    let mut pass = pass;
    loop {
        pass = match pass {
            Pass::Missing(cursor) => {
                let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
                    .arg(INDEX)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(BATCH)
                    .query_async(&mut conn)
                    .await?;
                let scores: Vec<Option<f64>> = match ids.is_empty() {
                    true => Vec::new(),
                    false => {
                        redis::cmd("ZMSCORE")
                            .arg(BY_CREATED)
                            .arg(&ids)
                            .query_async(&mut conn)
                            .await?
                    }
                };
                let missing: Vec<String> = ids
                    .into_iter()
                    .zip(scores)
                    .filter(|(_, score)| score.is_none())
                    .map(|(id, _)| id)
                    .collect();
                reindex::index_ids(&mut conn, &missing, report).await?;
                match next {
                    0 => Pass::Dangling(0),
                    next => Pass::Missing(next),
                }
            }
            Pass::Dangling(cursor) => {
                if cursor == 0 {
                    let (index, ordered) = counts(&mut conn).await?;
                    if ordered <= index {
                        break;
                    }
                }
                let (next, batch): (u64, Vec<String>) = redis::cmd("ZSCAN")
                    .arg(BY_CREATED)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(BATCH)
                    .query_async(&mut conn)
                    .await?;
                let entries: Vec<(&str, String)> = batch
                    .chunks_exact(2)
                    .map(|pair| {
                        let member = ordered_member(reindex::score_ms(&pair[1]), &pair[0]);
                        (pair[0].as_str(), member)
                    })
                    .collect();
                report.dangling_ids_removed += reindex::drop_dangling(&mut conn, &entries).await?;
                match next {
                    0 => break,
                    next => Pass::Dangling(next),
                }
            }
        };
        if started.elapsed() > BUDGET {
            state.pass = Some(pass);
            return Ok(false);
        }
    }
    // A whole pass is done. Unequal counts that nobody changed during it stay so until the
    // data changes; if someone wrote meanwhile (ids added behind the scan), the next tick
    // starts another pass.
    state.pass = None;
    let counts = counts(&mut conn).await?;
    let quiet = state.started_with.take() == Some(counts);
    state.settled = (counts.0 != counts.1 && quiet).then_some(counts);
    Ok(true)
}

async fn counts(conn: &mut impl ConnectionLike) -> Result<(u64, u64), StoreError> {
    Ok(redis::pipe()
        .scard(INDEX)
        .zcard(BY_CREATED)
        .query_async(conn)
        .await?)
}
