//! Email guards another writer left stale. The seeds' service deletes a user or changes its
//! address without touching `users:email:*`, so a guard can name an owner that is gone or that
//! holds another address now: it would refuse that address forever, and the owner's new one
//! would be unguarded. Such a guard is dropped (moved to the owner's address if nobody holds
//! it), each only if the guard and the owner's record are still what was read
//! (`drop_stale_guards.lua`), so a concurrent create, update or delete is never undone.
//!
//! Two ways in: the endless sweep over every guard (the reconciler, a step per tick; a whole
//! pass in `platform users reindex`), and indexing, when a user's address is held by another
//! user (`resolve_claims`): a stale holder gives it up and the claimant takes it; a holder that
//! still has the address is a duplicate, reported, and its address marked contested. The sweep
//! knows of no claimant, so it leaves a contested address's guard alone: dropping it would let a
//! second user take an address a live user still has.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{self, Script};

use super::reindex::{BATCH, Report};
use super::store::{self, StoreError};
use crate::accounts::EMAIL_PREFIX;
use crate::accounts::domain::User;

/// The addresses two live users were found to share (guards the sweep leaves alone).
pub const CONTESTED: &str = "users:contested_emails";
/// Where the reconcilers' sweep stands, shared by every pod (one pass for all, resumed after
/// a restart).
pub const SWEEP_CURSOR: &str = "users:guard_sweep_cursor";

static DROP_STALE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/drop_stale_guards.lua")));

/// A user record as read.
enum Record {
    Gone,
    Raw(String),
    /// Not a string, or not UTF-8: not a user, left alone.
    Odd,
}

fn records(values: Vec<Option<Vec<u8>>>) -> Vec<Record> {
    values
        .into_iter()
        .map(|value| match value {
            None => Record::Gone,
            Some(bytes) => String::from_utf8(bytes).map_or(Record::Odd, Record::Raw),
        })
        .collect()
}

async fn read_records<C: ConnectionLike + Send>(
    conn: &mut C,
    owners: &[&str],
) -> Result<Vec<Record>, StoreError> {
    let keys: Vec<String> = owners.iter().map(|id| store::user_key(id)).collect();
    Ok(records(
        redis::cmd("MGET").arg(keys).query_async(conn).await?,
    ))
}

/// A guard whose owner is gone or has another address now.
struct Stale {
    guard: String,
    owner: String,
    /// The owner's JSON as read, "" when it was gone.
    raw: String,
    /// The owner's guard now (the guard itself when the owner is gone).
    now: String,
    /// The owner's address now, if it has one.
    email: Option<String>,
}

/// `guard`'s owner `owner` is stale given its record as read; `None` when the owner still has
/// the address, or its record is not one of a user with that id (left alone).
fn stale(guard: &str, owner: &str, record: Record) -> Option<Stale> {
    let (raw, now, email) = match record {
        Record::Gone => (String::new(), guard.to_owned(), None),
        Record::Odd => return None,
        Record::Raw(raw) => {
            let user = serde_json::from_str::<User>(&raw)
                .ok()
                .filter(|user| user.id == owner)?;
            let now = store::email_key(&user.email);
            if now == guard {
                return None;
            }
            (raw, now, Some(user.email))
        }
    };
    Some(Stale {
        guard: guard.to_owned(),
        owner: owner.to_owned(),
        raw,
        now,
        email,
    })
}

/// Runs `drop_stale_guards.lua` on `stale`, leaving contested addresses alone when
/// `spare_contested`; an address an owner moved to that another user holds is reported as a
/// duplicate when `report_taken`.
async fn drop_stale<C: ConnectionLike + Send>(
    conn: &mut C,
    stale: &[Stale],
    spare_contested: bool,
    report_taken: bool,
    report: &mut Report,
) -> Result<(), StoreError> {
    let mut invocation = DROP_STALE.prepare_invoke();
    invocation
        .key(CONTESTED)
        .arg(if spare_contested { "1" } else { "0" });
    for s in stale {
        invocation
            .key(&s.guard)
            .key(store::user_key(&s.owner))
            .key(&s.now)
            .arg(&s.owner)
            .arg(&s.raw);
    }
    let (dropped, added, taken, holders): (u64, u64, Vec<usize>, Vec<String>) =
        invocation.invoke_async(conn).await?;
    report.stale_guards_removed += dropped;
    report.email_guards_added += added;
    if report_taken {
        for (position, holder) in taken.into_iter().zip(holders) {
            if let Some(s) = stale.get(position.wrapping_sub(1)) {
                report.duplicate(s.email.as_deref().unwrap_or_default(), holder, &s.owner);
            }
        }
    }
    Ok(())
}

/// One SCAN step of the sweep from `cursor`: the stale guards it finds are dropped or moved
/// (contested addresses left alone). The next cursor (0: a pass is done).
pub async fn sweep_step<C: ConnectionLike + Send>(
    conn: &mut C,
    cursor: u64,
    report_taken: bool,
    report: &mut Report,
) -> Result<u64, StoreError> {
    let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(format!("{EMAIL_PREFIX}*"))
        .arg("COUNT")
        .arg(BATCH)
        .query_async(conn)
        .await?;
    let guards: Vec<String> = keys
        .into_iter()
        .filter_map(|key| String::from_utf8(key).ok())
        .collect();
    if guards.is_empty() {
        return Ok(next);
    }
    // A key that is not a string reads as nil: skipped.
    let owners: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&guards).query_async(conn).await?;
    let held: Vec<(String, String)> = guards
        .into_iter()
        .zip(owners)
        .filter_map(|(guard, owner)| Some((guard, String::from_utf8(owner?).ok()?)))
        .collect();
    if held.is_empty() {
        return Ok(next);
    }
    let owners: Vec<&str> = held.iter().map(|(_, owner)| owner.as_str()).collect();
    let found: Vec<Stale> = held
        .iter()
        .zip(read_records(conn, &owners).await?)
        .filter_map(|((guard, owner), record)| stale(guard, owner, record))
        .collect();
    if !found.is_empty() {
        drop_stale(conn, &found, true, report_taken, report).await?;
    }
    Ok(next)
}

/// A user whose address another user's guard holds: its id, its address, the holder.
pub struct Claim {
    pub id: String,
    pub email: String,
    pub holder: String,
}

/// Settles `claims`: a holder that is gone or has another address now gives the guard up (it
/// moves to the holder's address, as in the sweep) and the claimant's id is returned, to be
/// indexed again (it then takes the address); a holder that still has the address is a
/// duplicate: reported, and the address marked contested.
pub async fn resolve_claims<C: ConnectionLike + Send>(
    conn: &mut C,
    claims: Vec<Claim>,
    report: &mut Report,
) -> Result<Vec<String>, StoreError> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let holders: Vec<&str> = claims.iter().map(|c| c.holder.as_str()).collect();
    let records = read_records(conn, &holders).await?;
    let (mut found, mut retry, mut contested) = (Vec::new(), Vec::new(), Vec::new());
    for (claim, record) in claims.iter().zip(records) {
        let guard = store::email_key(&claim.email);
        match stale(&guard, &claim.holder, record) {
            Some(s) => {
                found.push(s);
                retry.push(claim.id.clone());
            }
            None => {
                report.duplicate(&claim.email, claim.holder.clone(), &claim.id);
                contested.push(guard);
            }
        }
    }
    if !contested.is_empty() {
        redis::cmd("SADD")
            .arg(CONTESTED)
            .arg(contested)
            .query_async::<()>(conn)
            .await?;
    }
    if !found.is_empty() {
        // The claimant is indexed again and reports its own duplicate if it meets one.
        drop_stale(conn, &found, false, false, report).await?;
    }
    Ok(retry)
}
