//! What the users and auth roles share about accounts: the domain types, the Redis key
//! layout, and the scripts that create and delete a user (with its credential, if any) in
//! one atomic step. Neither role imports the other; both import this.

pub mod domain;

use std::sync::LazyLock;

use deadpool_redis::redis::Script;
use uuid::Uuid;

use domain::{NewUser, User};

pub const INDEX: &str = "users:index";
pub const BY_CREATED: &str = "users:by_created";

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

pub fn to_json(user: &User) -> String {
    serde_json::to_string(user).expect("a struct of strings always serializes")
}

pub fn unexpected(script: &str, outcome: &str) -> anyhow::Error {
    anyhow::anyhow!("{script} script answered {outcome:?}")
}

/// Creates `new` (and its `credential`, a PHC hash, if given) in one script: the user, or
/// `None` when the email is taken. Redis refusing the script (e.g. at maxmemory) writes nothing.
pub async fn create(
    conn: &mut deadpool_redis::Connection,
    new: &NewUser,
    credential: Option<&str>,
) -> anyhow::Result<Option<User>> {
    let now = crate::timestamp::now();
    let user = User {
        id: Uuid::new_v4().to_string(),
        name: new.name.as_str().to_owned(),
        email: new.email.as_str().to_owned(),
        created_at: now.clone(),
        updated_at: Some(now),
    };
    let outcome: String = CREATE
        .key(user_key(&user.id))
        .key(email_key(&user.email))
        .key(INDEX)
        .key(BY_CREATED)
        .key(credential_key(&user.id))
        .arg(&user.id)
        .arg(to_json(&user))
        .arg(created_score(&user))
        .arg(credential.unwrap_or(""))
        .invoke_async(conn)
        .await?;
    match outcome.as_str() {
        "ok" => Ok(Some(user)),
        "taken" => Ok(None),
        other => Err(unexpected("create", other)),
    }
}
