//! The users role's background reconciler: indexes users that another writer (the seeds'
//! Node.js service during a migration) put in `users:index` but not in our indexes, and drops
//! ordered-index entries whose user that writer deleted: at once when the counts differ, and
//! in a slow walk that indexes every user again (addresses that writer changed, guards whose
//! holder left: `guards.rs`). No manual step, bounded work per tick.

use std::time::{Duration, Instant};

use redis::{self, aio::ConnectionLike};
use slog::Logger;

use super::reindex::{self, BATCH, Report};
use super::store::{BY_CREATED, INDEX, StoreError, UserStore, ordered_member};

/// How often the counts are compared (one round trip: SCARD + ZCARD).
const INTERVAL: Duration = Duration::from_secs(1);
/// Redis work one tick may do before yielding to the next tick.
const BUDGET: Duration = Duration::from_millis(200);
/// Where the slow walk over the indexes stands, shared by every pod.
const WALK_CURSOR: &str = "users:reconcile_walk_cursor";
/// Users (or entries) per step of the walk: ~2-3 ms of Redis work a step at 1 M users; a whole
/// walk (4,000 steps over `users:index`, as many over `users:by_created`) takes ~2.2 h with one
/// pod, less with more (they share the cursor).
const WALK_BATCH: usize = 250;

/// What a `Missing` step indexes: the ids missing from `users:by_created` (a count-triggered
/// pass), or every id (the walk: also guards and handovers no count shows).
#[derive(Clone, Copy)]
enum Scope {
    Missing,
    Every,
}

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
/// Each tick also takes one step of the slow walk over both indexes, from a cursor every pod
/// shares (`WALK_BATCH` entries a step, a few ms of Redis work).
pub fn spawn(store: UserStore, log: Logger) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut state = State::default();
        loop {
            let mut report = Report::default();
            if let Err(e) = tick(&store, &mut state, &mut report).await {
                slog::debug!(log, "reconciler tick failed"; "error" => %e);
            }
            // The walk is what finds addresses the other service changed: a step that fails
            // is a warning (at most one a second, while Redis fails).
            if let Err(e) = walk(&store, &mut report).await {
                slog::warn!(log, "reconciler walk step failed"; "error" => %e);
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

fn log_report(log: &Logger, report: &Report) {
    if report.added_to_by_created
        + report.email_guards_added
        + report.dangling_ids_removed
        + report.guards_handed_over
        > 0
    {
        slog::info!(log, "reconciled users written by another service";
            "added_to_by_created" => report.added_to_by_created,
            "email_guards_added" => report.email_guards_added,
            "dangling_ids_removed" => report.dangling_ids_removed,
            "guards_handed_over" => report.guards_handed_over);
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
        // The count-triggered pass looks for dangling entries only if the counts show some.
        if let Pass::Dangling(0) = pass {
            let (index, ordered) = counts(&mut conn).await?;
            if ordered <= index {
                break;
            }
        }
        match step(&mut conn, pass, Scope::Missing, report).await? {
            Some(next) => pass = next,
            None => break,
        }
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

/// One SCAN step of a pass; the next step, `None` when the pass is done.
async fn step<C: ConnectionLike + Send>(
    conn: &mut C,
    pass: Pass,
    scope: Scope,
    report: &mut Report,
) -> Result<Option<Pass>, StoreError> {
    let count = match scope {
        Scope::Missing => BATCH,
        Scope::Every => WALK_BATCH,
    };
    match pass {
        Pass::Missing(cursor) => {
            let (next, ids): (u64, Vec<Vec<u8>>) = redis::cmd("SSCAN")
                .arg(INDEX)
                .arg(cursor)
                .arg("COUNT")
                .arg(count)
                .query_async(conn)
                .await?;
            // An id that is not UTF-8 is no id of ours (its record cannot be `user:<uuid>`).
            let ids: Vec<String> = ids
                .into_iter()
                .filter_map(|id| String::from_utf8(id).ok())
                .collect();
            if let Scope::Every = scope {
                reindex::index_ids(conn, &ids, report).await?;
                return Ok(Some(match next {
                    0 => Pass::Dangling(0),
                    next => Pass::Missing(next),
                }));
            }
            let scores: Vec<Option<f64>> = match ids.is_empty() {
                true => Vec::new(),
                false => {
                    redis::cmd("ZMSCORE")
                        .arg(BY_CREATED)
                        .arg(&ids)
                        .query_async(conn)
                        .await?
                }
            };
            let missing: Vec<String> = ids
                .into_iter()
                .zip(scores)
                .filter(|(_, score)| score.is_none())
                .map(|(id, _)| id)
                .collect();
            reindex::index_ids(conn, &missing, report).await?;
            Ok(Some(match next {
                0 => Pass::Dangling(0),
                next => Pass::Missing(next),
            }))
        }
        Pass::Dangling(cursor) => {
            let (next, batch): (u64, Vec<String>) = redis::cmd("ZSCAN")
                .arg(BY_CREATED)
                .arg(cursor)
                .arg("COUNT")
                .arg(count)
                .query_async(conn)
                .await?;
            let entries: Vec<(&str, String)> = batch
                .chunks_exact(2)
                .map(|pair| {
                    let member = ordered_member(reindex::score_ms(&pair[1]), &pair[0]);
                    (pair[0].as_str(), member)
                })
                .collect();
            report.dangling_ids_removed += reindex::drop_dangling(conn, &entries).await?;
            Ok(match next {
                0 => None,
                next => Some(Pass::Dangling(next)),
            })
        }
    }
}

/// One step of the slow walk over both indexes from where the last one (of any pod) left it:
/// every user of `users:index` indexed again (what is missing is added: an entry, or the email
/// guard of a user whose guard a stale holder had or whose address was freed), then entries
/// whose user is gone dropped. It catches what equal counts hide (the other service deleting
/// one user and creating another between two ticks) and what counts never show (addresses).
async fn walk(store: &UserStore, report: &mut Report) -> Result<(), StoreError> {
    let mut conn = store.connection().await?;
    let at: Option<Vec<u8>> = redis::cmd("GET")
        .arg(WALK_CURSOR)
        .query_async(&mut conn)
        .await?;
    // No (or an unreadable) position: a new walk from the start.
    let at = at.and_then(|at| String::from_utf8(at).ok());
    let pass = match at.as_deref().and_then(|at| at.split_once(':')) {
        Some(("d", cursor)) => cursor.parse().map_or(Pass::Missing(0), Pass::Dangling),
        Some((_, cursor)) => Pass::Missing(cursor.parse().unwrap_or(0)),
        None => Pass::Missing(0),
    };
    let next = match step(&mut conn, pass, Scope::Every, report).await? {
        Some(Pass::Dangling(cursor)) => format!("d:{cursor}"),
        Some(Pass::Missing(cursor)) => format!("m:{cursor}"),
        None => "m:0".to_owned(),
    };
    redis::cmd("SET")
        .arg(WALK_CURSOR)
        .arg(next)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

async fn counts(conn: &mut impl ConnectionLike) -> Result<(u64, u64), StoreError> {
    Ok(redis::pipe()
        .scard(INDEX)
        .zcard(BY_CREATED)
        .query_async(conn)
        .await?)
}
