//! What the users and auth roles share about accounts: the domain types, the Redis key
//! layout, and the scripts that create and delete a user (with its credential, if any) in
//! one atomic step. Neither role imports the other; both import this.

pub mod domain;

use std::sync::LazyLock;

use redis::Script;
use uuid::Uuid;

use domain::{NewUser, User};

pub const INDEX: &str = "users:index";
pub const BY_CREATED: &str = "users:by_created";
/// Every user of `users:by_created` as the member [`ordered_member`] at score 0: ordered
/// lexicographically by (creation ms, id), so a page starts inside a group of equal times in
/// O(log n) (`ZRANGE … BYLEX`).
pub const BY_CREATED_LEX: &str = "users:by_created_lex";

/// Creates a user, its index entries and (when given) its credential, or nothing.
pub static CREATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/create.lua")));
/// Deletes a user, its index entries and its credential.
pub static DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/delete.lua")));

pub fn user_key(id: &str) -> String {
    format!("user:{id}")
}

pub fn email_key(email: &str) -> String {
    format!("users:email:{}", email.to_lowercase())
}

/// The Argon2id PHC hash of a user's password: never inside `user:<id>`, which the users API
/// answers as stored.
pub fn credential_key(id: &str) -> String {
    format!("credential:{id}")
}

/// The sort key of a user in `users:by_created`: its creation time in ms (0 if unreadable).
pub fn created_score(user: &User) -> i64 {
    crate::timestamp::parse_millis(&user.created_at).unwrap_or(0)
}

/// Digits of a member's time: enough for every four-digit year (CONTRACT §2 timestamps).
const TIME_DIGITS: i64 = 1_000_000_000_000_000;

/// A user's member in `users:by_created_lex`: the creation ms zero-padded to 15 digits (before
/// 1970: `-` and 10^15 + ms, which sorts first and oldest first), `:`, the id. Byte order is
/// (ms, id) order, the order of `users:by_created`. Times beyond ±10^15 ms (only a forged
/// cursor has them) are clamped.
pub fn ordered_member(score: i64, id: &str) -> String {
    if score >= 0 {
        format!("{:015}:{id}", score.min(TIME_DIGITS - 1))
    } else {
        format!("-{:015}:{id}", (TIME_DIGITS + score).max(0))
    }
}

/// The (ms, id) of a member of `users:by_created_lex`, if it is one.
pub fn parse_ordered_member(member: &str) -> Option<(i64, &str)> {
    let (time, id) = member.split_once(':')?;
    let (negative, digits) = match time.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, time),
    };
    if digits.len() != 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    Some((if negative { n - TIME_DIGITS } else { n }, id))
}

pub fn to_json(user: &User) -> String {
    serde_json::to_string(user).expect("a struct of strings always serializes")
}

pub fn unexpected(script: &str, outcome: &str) -> anyhow::Error {
    anyhow::anyhow!("{script} script answered {outcome:?}")
}

/// Creates `new` (and its `credential`, a PHC hash, if given) in one script: the user, or
/// `None` when the email is taken. Redis refusing the script (e.g. at maxmemory) writes nothing.
pub async fn create(
    conn: &mut crate::redis::Connection,
    new: &NewUser,
    credential: Option<&str>,
) -> anyhow::Result<Option<User>> {
    match create_recorded(conn, new, credential, None).await? {
        Created::User(user) => Ok(Some(user)),
        Created::EmailTaken => Ok(None),
        other => Err(anyhow::anyhow!(
            "create script answered {other:?} without a record"
        )),
    }
}

/// Where a create is recorded for retries that carry the same key: `idempotency:users:<key>`
/// (a hash: fingerprint, status, id, body), kept `ttl`.
#[derive(Debug)]
pub struct Record<'a> {
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub ttl: std::time::Duration,
}

/// What a create did.
#[derive(Debug)]
pub enum Created {
    User(User),
    EmailTaken,
    /// The record's key was used before for a request with another fingerprint.
    KeyReused,
    /// The record's key was used before for this request: its answer, as first given.
    Replay {
        status: u16,
        id: String,
        body: String,
    },
}

/// `create`, and with a `record` the answer of an earlier request under its key, or the new
/// user recorded under it, in the same script.
pub async fn create_recorded(
    conn: &mut crate::redis::Connection,
    new: &NewUser,
    credential: Option<&str>,
    record: Option<&Record<'_>>,
) -> anyhow::Result<Created> {
    let now = crate::timestamp::now();
    let user = User {
        id: Uuid::new_v4().to_string(),
        name: new.name.as_str().to_owned(),
        email: new.email.as_str().to_owned(),
        created_at: now.clone(),
        updated_at: Some(now),
    };
    let mut script = CREATE.prepare_invoke();
    script
        .key(user_key(&user.id))
        .key(email_key(&user.email))
        .key(INDEX)
        .key(BY_CREATED)
        .key(credential_key(&user.id))
        .key(BY_CREATED_LEX)
        .arg(&user.id)
        .arg(to_json(&user))
        .arg(created_score(&user))
        .arg(credential.unwrap_or(""))
        .arg(ordered_member(created_score(&user), &user.id));
    if let Some(record) = record {
        let ttl_ms = u64::try_from(record.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        script.key(record.key).arg(record.fingerprint).arg(ttl_ms);
    }
    let outcome: Vec<String> = script.invoke_async(conn).await?;
    match outcome
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["ok"] => Ok(Created::User(user)),
        ["taken"] => Ok(Created::EmailTaken),
        ["reused"] => Ok(Created::KeyReused),
        ["replay", status, id, body] => Ok(Created::Replay {
            status: status
                .parse()
                .map_err(|_| unexpected("create", &outcome.join(" ")))?,
            id: (*id).to_owned(),
            body: (*body).to_owned(),
        }),
        _ => Err(unexpected("create", &outcome.join(" "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_members_sort_as_time_then_id_and_parse_back() {
        let id = "5b0d7c1e-8f7a-4a8e-9a55-1f2b3c4d5e6f";
        let times = [
            -62_167_219_200_000,
            -5,
            -1,
            0,
            1,
            1_767_225_600_000,
            253_402_300_799_999,
        ];
        let members: Vec<String> = times.iter().map(|t| ordered_member(*t, id)).collect();
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(members, sorted);
        for (t, m) in times.iter().zip(&members) {
            assert_eq!(parse_ordered_member(m), Some((*t, id)), "{m}");
        }
        assert_eq!(ordered_member(1_767_225_600_000, "a"), "001767225600000:a");
        assert!(ordered_member(7, "a") < ordered_member(7, "b"));
        assert_eq!(
            ordered_member(i64::MAX, "a"),
            ordered_member(TIME_DIGITS - 1, "a")
        );
        assert_eq!(ordered_member(i64::MIN, "a"), "-000000000000000:a");
        for bad in ["", "12:a", "x00000000000000:a", "001767225600000"] {
            assert_eq!(parse_ordered_member(bad), None, "{bad}");
        }
    }
}
