//! Email guards whose holder no longer has the address. The seeds' service deletes a user or
//! changes its address without touching `users:email:*`, so a guard can name a holder that is
//! gone or has another address now. When indexing finds a user whose address such a guard
//! holds (`resolve_claims`), the guard is handed over to that user (`hand_over_guard.lua`,
//! checked against the guard and both records as read). Maintenance never drops a guard: with
//! no index from addresses to users nothing proves that no other live user has the address, and
//! dropping its guard would let our API give it to a second user. So an address whose last holder is
//! gone stays refused until a user who has it is indexed (see ARCHITECTURE.md).

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{self, Script};

use super::reindex::Report;
use super::store::{self, StoreError};
use crate::accounts::domain::User;

static HAND_OVER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/hand_over_guard.lua")));

/// A user whose address another user's guard holds.
pub struct Claim {
    pub id: String,
    pub email: String,
    /// The claimant's record as read (the guard is handed over only if it is unchanged).
    pub raw: String,
    pub holder: String,
}

/// The holder's record as read if the holder no longer has `guard`'s address ("" when gone);
/// `None` when it still has it, or its record is not one of a user with that id.
fn no_longer_holds(guard: &str, holder: &str, record: Option<Vec<u8>>) -> Option<String> {
    let Some(bytes) = record else {
        return Some(String::new());
    };
    let raw = String::from_utf8(bytes).ok()?;
    let user = serde_json::from_str::<User>(&raw)
        .ok()
        .filter(|user| user.id == holder)?;
    (store::email_key(&user.email) != guard).then_some(raw)
}

/// Settles `claims`: a holder that is gone or has another address now hands the guard to the
/// claimant; a holder that still has the address is a duplicate, reported for a human. The ids
/// of claimants whose guard could not be handed over because something changed meanwhile (to
/// be read and indexed again).
pub async fn resolve_claims<C: ConnectionLike + Send>(
    conn: &mut C,
    claims: Vec<Claim>,
    report: &mut Report,
) -> Result<Vec<String>, StoreError> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = claims.iter().map(|c| store::user_key(&c.holder)).collect();
    let records: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(keys).query_async(conn).await?;
    let mut handovers = Vec::new();
    for (claim, record) in claims.into_iter().zip(records) {
        let guard = store::email_key(&claim.email);
        match no_longer_holds(&guard, &claim.holder, record) {
            Some(holder_raw) => handovers.push((guard, holder_raw, claim)),
            None => report.duplicate(&claim.email, claim.holder, &claim.id),
        }
    }
    if handovers.is_empty() {
        return Ok(Vec::new());
    }
    let mut invocation = HAND_OVER.prepare_invoke();
    for (guard, holder_raw, claim) in &handovers {
        invocation
            .key(guard)
            .key(store::user_key(&claim.holder))
            .key(store::user_key(&claim.id))
            .arg(&claim.holder)
            .arg(holder_raw)
            .arg(&claim.id)
            .arg(&claim.raw);
    }
    let handed: u64 = invocation.invoke_async(conn).await?;
    report.guards_handed_over += handed;
    // Not all handed over: something changed since the read; read those again (the count
    // says how many, not which: all are read again, the others find their guard theirs).
    Ok(match handed as usize == handovers.len() {
        true => Vec::new(),
        false => handovers.into_iter().map(|(_, _, c)| c.id).collect(),
    })
}
