//! What the users role promises about its keys in Redis, checked key by key (black-box: the
//! layout of ARCHITECTURE.md and src/accounts/mod.rs, read with plain commands).
//!
//! For every `user:<id>`: its JSON names the id; `users:email:<lowercased email>` holds the id;
//! the id is in `users:index`; `users:by_created` scores it with its `created_at` in ms;
//! `users:by_created_lex` holds `<ms, 15 digits>:<id>`. And the other way: every email guard,
//! index member, score and lex member belongs to a stored user; no two users share an email.

use std::collections::{HashMap, HashSet};

use crate::resp::{Conn, Value};

pub struct Stored {
    /// id → lowercased email
    pub users: HashMap<String, String>,
    /// What breaks the promises above (empty when consistent).
    pub problems: Vec<String>,
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS.mmmZ`, as the service writes it.
fn millis(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() != 24 || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days from civil (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

fn lex_member(ms: i64, id: &str) -> String {
    format!("{ms:015}:{id}")
}

pub fn check(redis: &mut Conn) -> Stored {
    let mut problems = Vec::new();
    let keys = redis.must(&["KEYS", "user:*"]).texts();
    let mut users = HashMap::new();
    let mut created = HashMap::new();
    if !keys.is_empty() {
        let args: Vec<&str> = std::iter::once("MGET")
            .chain(keys.iter().map(String::as_str))
            .collect();
        for (key, value) in keys.iter().zip(redis.must(&args).array()) {
            let id = key.trim_start_matches("user:").to_owned();
            let Value::Text(json) = value else {
                continue; // deleted between KEYS and MGET: nothing to check
            };
            let user: serde_json::Value = match serde_json::from_str(&json) {
                Ok(u) => u,
                Err(e) => {
                    problems.push(format!("{key} is not JSON ({e})"));
                    continue;
                }
            };
            if user["id"] != id.as_str() {
                problems.push(format!("{key} holds id {}", user["id"]));
            }
            let email = user["email"].as_str().unwrap_or_default().to_lowercase();
            match user["created_at"].as_str().and_then(millis) {
                Some(ms) => {
                    created.insert(id.clone(), ms);
                }
                None => problems.push(format!("{key} has created_at {}", user["created_at"])),
            }
            users.insert(id, email);
        }
    }
    // No two users share an email.
    let mut owners: HashMap<&str, &str> = HashMap::new();
    for (id, email) in &users {
        if let Some(other) = owners.insert(email, id) {
            problems.push(format!("users {other} and {id} share the email {email}"));
        }
    }
    // Each user's guard, index entry, score and lex member.
    let index: HashSet<String> = redis
        .must(&["SMEMBERS", "users:index"])
        .texts()
        .into_iter()
        .collect();
    let scored = redis
        .must(&["ZRANGE", "users:by_created", "0", "-1", "WITHSCORES"])
        .texts();
    let scores: HashMap<String, i64> = scored
        .chunks(2)
        .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.parse::<f64>().ok()? as i64)))
        .collect();
    let lex: HashSet<String> = redis
        .must(&["ZRANGE", "users:by_created_lex", "0", "-1"])
        .texts()
        .into_iter()
        .collect();
    for (id, email) in &users {
        let guard = redis.must(&["GET", &format!("users:email:{email}")]);
        if guard.text() != Some(id) {
            problems.push(format!("users:email:{email} is {guard:?}, not user {id}"));
        }
        if !index.contains(id) {
            problems.push(format!("user {id} is not in users:index"));
        }
        match (scores.get(id), created.get(id)) {
            (Some(s), Some(ms)) if s == ms => {
                if !lex.contains(&lex_member(*ms, id)) {
                    problems.push(format!("user {id} is not in users:by_created_lex"));
                }
            }
            (s, ms) => problems.push(format!(
                "user {id}: by_created score {s:?}, created_at {ms:?}"
            )),
        }
    }
    // Nothing indexed that is not a user.
    for key in redis.must(&["KEYS", "users:email:*"]).texts() {
        let email = key.trim_start_matches("users:email:");
        let owner = redis.must(&["GET", &key]);
        let owner = owner.text().unwrap_or_default();
        if users.get(owner).map(String::as_str) != Some(email) {
            problems.push(format!(
                "{key} guards {owner}, whose email is {:?}",
                users.get(owner)
            ));
        }
    }
    for id in &index {
        if !users.contains_key(id) {
            problems.push(format!("users:index holds {id}, not a user"));
        }
    }
    for id in scores.keys() {
        if !users.contains_key(id) {
            problems.push(format!("users:by_created holds {id}, not a user"));
        }
    }
    for member in &lex {
        let id = member.split_once(':').map(|(_, id)| id).unwrap_or_default();
        if !users.contains_key(id) {
            problems.push(format!("users:by_created_lex holds {member}, not a user"));
        }
    }
    problems.truncate(10);
    Stored { users, problems }
}
