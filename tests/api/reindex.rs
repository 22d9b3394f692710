use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};
use serde_json::Value;

use crate::helpers::{RedisServer, poll_until, run_binary, spawn_app_with};

/// Writes a user the way the seeds' services do: `SET user:<id>` + `SADD users:index`, nothing else.
pub fn seed_user(redis: &RedisServer, name: &str, email: &str, created_at: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let json = format!(
        r#"{{"id":"{id}","name":"{name}","email":"{email}","created_at":"{created_at}","updated_at":"{created_at}"}}"#
    );
    redis.cli(&["SET", &format!("user:{id}"), &json]);
    redis.cli(&["SADD", "users:index", &id]);
    id
}

fn reindex(redis_url: &str) -> Vec<Value> {
    let (code, out, err) = run_binary(&["users", "reindex", "--redis-url", redis_url]);
    assert_eq!(code, Some(0), "stderr: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect()
}

fn summary(lines: &[Value]) -> Value {
    lines
        .iter()
        .find(|l| l["msg"] == "reindex done")
        .cloned()
        .expect("a summary line")
}

#[actix_web::test]
async fn reindex_makes_seed_data_listable_and_guards_its_emails() {
    // No users role runs yet (its reconciler would index the data before the command does).
    let redis = RedisServer::start();
    let old = seed_user(&redis, "Old", "dup@example.com", "2024-01-01T00:00:00.000Z");
    let mid = seed_user(&redis, "Mid", "mid@example.com", "2024-06-01T00:00:00.000Z");
    let young = seed_user(
        &redis,
        "Young",
        "DUP@example.com",
        "2025-01-01T00:00:00.000Z",
    );
    let dangling = uuid::Uuid::new_v4().to_string();
    redis.cli(&["SADD", "users:index", &dangling]);
    redis.cli(&["SET", "user:not-a-uuid", "whatever"]);

    let lines = reindex(&redis.url());
    let done = summary(&lines);
    assert_eq!(done["users"], 3);
    assert_eq!(done["added_to_by_created"], 3);
    assert_eq!(done["email_guards_added"], 2);
    assert_eq!(done["dangling_ids_removed"], 1);
    assert_eq!(done["duplicate_emails"], 1);
    let dup = lines
        .iter()
        .find(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("duplicate email"))
        })
        .expect("reported");
    assert_eq!(
        (dup["kept_by"].as_str(), dup["also_used_by"].as_str()),
        (Some(old.as_str()), Some(young.as_str()))
    );

    let app = spawn_app_with(redis, &[]).await;
    let listed = app.get("/users").await;
    let ids: Vec<&str> = listed
        .body
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![old.as_str(), mid.as_str(), young.as_str()],
        "oldest first"
    );
    assert_eq!(listed.header("x-total-count").as_deref(), Some("3"));
    app.json(
        "POST",
        "/users",
        r#"{"name":"X","email":"Mid@example.com"}"#,
    )
    .await
    .assert_error(409, "duplicate_email");

    // Running it again changes nothing.
    let again = summary(&reindex(&app.redis.url()));
    for field in [
        "added_to_index",
        "added_to_by_created",
        "email_guards_added",
        "dangling_ids_removed",
    ] {
        assert_eq!(again[field], 0, "{field}: {again}");
    }
    assert_eq!(again["users"], 3);
}

#[test]
fn reindex_against_a_down_redis_fails_with_a_clear_message() {
    let port = crate::helpers::free_port();
    let (code, _, err) = run_binary(&[
        "users",
        "reindex",
        "--redis-url",
        &format!("redis://127.0.0.1:{port}"),
        "--redis-timeout",
        "500ms",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("platform: reindex failed"), "{err}");
}

/// Writes `n` users the way the seeds' services do, pipelined; their ids.
pub async fn seed_many(url: &str, n: usize, tag: &str) -> Vec<String> {
    let client = redis::Client::open(url).expect("redis url");
    // redis-rs gives up on a reply after 0.5 s by default: too short beside a busy reindex.
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(20)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("redis connection");
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(500) {
        let mut pipe = redis::pipe();
        for i in chunk * 500..(chunk * 500 + 500).min(n) {
            let id = uuid::Uuid::new_v4().to_string();
            let at = format!(
                "2025-01-01T00:{:02}:{:02}.{:03}Z",
                i / 60000 % 60,
                i / 1000 % 60,
                i % 1000
            );
            let json = format!(
                r#"{{"id":"{id}","name":"Seed {i}","email":"{tag}{i}@example.com","created_at":"{at}","updated_at":"{at}"}}"#
            );
            pipe.set(format!("user:{id}"), json).ignore();
            pipe.sadd("users:index", &id).ignore();
            ids.push(id);
        }
        let () = pipe.query_async(&mut conn).await.expect("seeded");
    }
    ids
}

#[actix_web::test]
async fn reindex_indexes_thousands_of_users_while_the_api_creates_and_deletes() {
    let redis = RedisServer::start();
    let seeded = seed_many(&redis.url(), 3000, "bulk").await;
    let app = spawn_app_with(redis, &[]).await;
    // Our own writes run while the command does: creates and deletes through the API.
    let writer = async {
        let mut kept = Vec::new();
        for i in 0..60 {
            let user = app
                .create_user("Live", &format!("live{i}@example.com"))
                .await;
            let id = user["id"].as_str().expect("id").to_owned();
            if i % 2 == 0 {
                app.delete(&format!("/users/{id}")).await;
            } else {
                kept.push(id);
            }
        }
        kept
    };
    let url = app.redis.url();
    let command = actix_web::rt::task::spawn_blocking(move || reindex(&url));
    let kept = writer.await;
    let lines = command.await;
    let done = summary(&lines.expect("reindex ran"));
    assert!(done["users"].as_u64().expect("users") >= 3000, "{done}");
    assert_eq!(done["duplicate_emails"], 0, "{done}");

    let expected = seeded.len() + kept.len();
    let (index, ordered, emails, users) = app.stored_counts();
    assert_eq!(
        (index, ordered, emails, users),
        (expected, expected, expected, expected)
    );
    // Every user is listed exactly once, and the count agrees.
    let mut listed = Vec::new();
    let mut path = "/users?limit=1000".to_owned();
    loop {
        let page = app.get(&path).await;
        assert_eq!(page.header("x-total-count"), Some(expected.to_string()));
        listed.extend(
            page.body
                .as_array()
                .expect("array")
                .iter()
                .map(|u| u["id"].as_str().unwrap().to_owned()),
        );
        let Some(link) = page.header("link") else {
            break;
        };
        path = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_owned();
    }
    listed.sort();
    listed.dedup();
    assert_eq!(listed.len(), expected);
    let mut conn = redis::Client::open(app.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let owner: Option<String> = conn.get("users:email:bulk7@example.com").await.unwrap();
    assert_eq!(owner.as_deref(), Some(seeded[7].as_str()));
}

#[actix_web::test]
async fn users_the_seed_service_writes_are_listed_and_guarded_without_a_manual_step() {
    // Data the seed service wrote before the switch...
    let redis = RedisServer::start();
    let before = seed_user(
        &redis,
        "Before",
        "before@example.com",
        "2024-01-01T00:00:00.000Z",
    );
    let app = spawn_app_with(redis, &[]).await;
    // ...and while both run side by side.
    let during = seed_user(
        &app.redis,
        "During",
        "During@example.com",
        "2024-02-01T00:00:00.000Z",
    );
    let more = seed_many(&app.redis.url(), 1500, "side").await;
    let expected = 2 + more.len();
    poll_until(
        Duration::from_secs(20),
        "list and count agree",
        async || {
            let page = app.get("/users?limit=1000").await;
            let count = page.header("x-total-count");
            let first: Vec<&str> = page.body.as_array().map_or(Vec::new(), |a| {
                a.iter().take(2).filter_map(|u| u["id"].as_str()).collect()
            });
            count == Some(expected.to_string())
                && page.header("link").is_some()
                && first == [before.as_str(), during.as_str()]
                && app.stored_counts() == (expected, expected, expected, expected)
        },
    )
    .await;
    app.json(
        "POST",
        "/users",
        r#"{"name":"X","email":"during@EXAMPLE.com"}"#,
    )
    .await
    .assert_error(409, "duplicate_email");
    // A user the seed service deletes leaves the list too...
    app.redis.cli(&["DEL", &format!("user:{during}")]);
    app.redis.cli(&["SREM", "users:index", &during]);
    poll_until(
        Duration::from_secs(20),
        "deleted seed user unlisted",
        async || {
            let page = app.get("/users?limit=2").await;
            page.header("x-total-count") == Some((expected - 1).to_string())
                && app
                    .redis
                    .cli(&["ZSCORE", "users:by_created", &during])
                    .trim()
                    .is_empty()
        },
    )
    .await;
    // Its address stays guarded: nothing proves that no other live user has it (the seed
    // service never touches our guards), and a guard is never dropped, only handed over.
    let guard = |email: &str| app.redis.cli(&["GET", &format!("users:email:{email}")]);
    assert_eq!(guard("during@example.com").trim(), during);
    // A user whose address the seed service changes gets its new address guarded by the
    // reconciler's walk (its old guard stays, as above).
    let changed = app.redis.cli(&["GET", &format!("user:{before}")]);
    let changed = changed
        .trim()
        .replace("before@example.com", "Before2@example.com");
    app.redis.cli(&["SET", &format!("user:{before}"), &changed]);
    poll_until(Duration::from_secs(30), "new address guarded", async || {
        guard("before2@example.com").trim() == before
    })
    .await;
    app.json(
        "POST",
        "/users",
        r#"{"name":"Z","email":"BEFORE2@example.com"}"#,
    )
    .await
    .assert_error(409, "duplicate_email");
}

#[actix_web::test]
async fn a_reindex_guards_changed_addresses_and_hands_over_guards_whose_holder_left() {
    let redis = RedisServer::start();
    let at = "2024-01-01T00:00:00.000Z";
    let gone = seed_user(&redis, "Gone", "gone@example.com", at);
    let moved = seed_user(&redis, "Moved", "moved@example.com", at);
    let kept = seed_user(&redis, "Kept", "Kept@example.com", at);
    let taken = seed_user(&redis, "Taken", "taken@example.com", at);
    let mover = seed_user(&redis, "Mover", "mover@example.com", at);
    let first = summary(&reindex(&redis.url()));
    assert_eq!(first["email_guards_added"], 5, "{first}");

    // The seed service deletes one user, changes two addresses (one onto another user's) and
    // gives the deleted user's address to a new user; it never touches our guards.
    redis.cli(&["DEL", &format!("user:{gone}")]);
    redis.cli(&["SREM", "users:index", &gone]);
    let readdress = |id: &str, from: &str, to: &str| {
        let json = redis.cli(&["GET", &format!("user:{id}")]);
        redis.cli(&["SET", &format!("user:{id}"), &json.trim().replace(from, to)]);
    };
    readdress(&moved, "moved@example.com", "New@example.com");
    readdress(&mover, "mover@example.com", "TAKEN@example.com");
    let heir = seed_user(&redis, "Heir", "GONE@example.com", at);

    let done = summary(&reindex(&redis.url()));
    assert_eq!(done["guards_handed_over"], 1, "{done}");
    assert_eq!(done["email_guards_added"], 1, "{done}");
    assert_eq!(done["duplicate_emails"], 1, "{done}");
    assert_eq!(done["dangling_ids_removed"], 1, "{done}");
    let owner = |email: &str| {
        let owner = redis.cli(&["GET", &format!("users:email:{email}")]);
        owner.trim().to_owned()
    };
    assert_eq!(owner("gone@example.com"), heir);
    assert_eq!(owner("new@example.com"), moved);
    assert_eq!(owner("kept@example.com"), kept);
    assert_eq!(owner("taken@example.com"), taken);
    // Guards whose holder left and that nobody claims stay (never dropped).
    assert_eq!(owner("moved@example.com"), moved);
    assert_eq!(owner("mover@example.com"), mover);

    // Nothing left to do: a re-run changes nothing (the duplicate is reported again).
    let again = summary(&reindex(&redis.url()));
    assert_eq!(again["guards_handed_over"], 0, "{again}");
    assert_eq!(again["email_guards_added"], 0, "{again}");
    assert_eq!(again["duplicate_emails"], 1, "{again}");
}

/// The score and `users:by_created_lex` member of a user created at `at` (as the store writes).
fn ordered_entry(at_ms: i64, id: &str) -> (String, String) {
    (at_ms.to_string(), format!("{at_ms:015}:{id}"))
}

#[actix_web::test]
async fn a_user_deleted_or_changed_between_its_read_and_its_indexing_is_not_indexed() {
    // The batch script as the reindex runs it, with two users as they were read before a
    // concurrent delete (all entries gone) and a concurrent email change: neither may be
    // indexed from the stale read, nor keep a guard for an address it no longer has.
    let redis = RedisServer::start();
    let gone = seed_user(
        &redis,
        "Gone",
        "gone@example.com",
        "2024-01-01T00:00:00.000Z",
    );
    let moved = seed_user(
        &redis,
        "Moved",
        "old@example.com",
        "2024-02-01T00:00:00.000Z",
    );
    let gone_raw = redis.cli(&["GET", &format!("user:{gone}")]);
    let moved_raw = redis.cli(&["GET", &format!("user:{moved}")]);
    redis.cli(&["DEL", &format!("user:{gone}")]);
    redis.cli(&["SREM", "users:index", &gone]);
    redis.cli(&[
        "SET",
        &format!("user:{moved}"),
        &moved_raw.replace("old@", "new@"),
    ]);

    let script = redis::Script::new(include_str!("../../src/users/scripts/reindex_batch.lua"));
    let mut invocation = script.prepare_invoke();
    invocation
        .key("users:index")
        .key("users:by_created")
        .key("users:by_created_lex");
    invocation
        .key(format!("user:{gone}"))
        .key(format!("user:{moved}"));
    invocation
        .key("users:email:gone@example.com")
        .key("users:email:old@example.com");
    for (id, raw, at) in [
        (&gone, &gone_raw, 1_704_067_200_000i64),
        (&moved, &moved_raw, 1_706_745_600_000),
    ] {
        let (score, member) = ordered_entry(at, id);
        invocation
            .arg(id.as_str())
            .arg(raw.as_str())
            .arg(score)
            .arg(member);
    }
    let mut conn = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let outcome: (u64, u64, u64, Vec<u64>, Vec<u64>, Vec<String>) = invocation
        .invoke_async(&mut conn)
        .await
        .expect("script ran");
    assert_eq!(outcome, (0, 0, 0, vec![1, 2], vec![], vec![]));
    assert_eq!(redis.cli(&["ZCARD", "users:by_created"]), "0");
    assert_eq!(redis.cli(&["ZCARD", "users:by_created_lex"]), "0");
    assert_eq!(redis.cli(&["SISMEMBER", "users:index", &gone]), "0");
    assert_eq!(redis.cli(&["EXISTS", "users:email:gone@example.com"]), "0");
    assert_eq!(redis.cli(&["EXISTS", "users:email:old@example.com"]), "0");

    // The command itself reads the changed user again and indexes it as it now is.
    let done = summary(&reindex(&redis.url()));
    assert_eq!(
        (done["users"].as_u64(), done["changed"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(redis.cli(&["GET", "users:email:new@example.com"]), moved);
    assert_eq!(redis.cli(&["EXISTS", "users:email:old@example.com"]), "0");
}

#[actix_web::test]
async fn users_deleted_through_the_api_during_a_reindex_stay_deleted() {
    let app = spawn_app_with(RedisServer::start(), &[]).await;
    let url = app.redis.url();
    let seeded = seed_many(&url, 20_000, "race").await;
    let command = actix_web::rt::task::spawn_blocking(move || reindex(&url));
    // Seeded users, oldest and newest, deleted while the command (and the role's reconciler)
    // index them: the delete removes every entry; a stale read must not put one back.
    let deleted: Vec<&String> = seeded.iter().step_by(50).collect();
    for id in &deleted {
        let status = app.delete(&format!("/users/{id}")).await.status;
        assert!(status == 204 || status == 404, "{status}");
    }
    let done = summary(&command.await.expect("reindex ran"));
    assert_eq!(done["duplicate_emails"], 0, "{done}");
    let expected = seeded.len() - deleted.len();
    let page = app.get("/users?limit=1").await;
    assert_eq!(page.header("x-total-count"), Some(expected.to_string()));
    for (i, id) in seeded.iter().enumerate().step_by(50) {
        assert_eq!(app.redis.cli(&["EXISTS", &format!("user:{id}")]), "0");
        assert_eq!(
            app.redis.cli(&["SISMEMBER", "users:index", id]),
            "0",
            "{id}"
        );
        assert_eq!(
            app.redis.cli(&["ZSCORE", "users:by_created", id]),
            "",
            "{id}"
        );
        let email = format!("users:email:race{i}@example.com");
        assert_eq!(app.redis.cli(&["EXISTS", &email]), "0", "{email}");
    }
    let expected = seeded.len() - deleted.len();
    assert_eq!(
        app.stored_counts(),
        (expected, expected, expected, expected)
    );
    let lex: usize = app
        .redis
        .cli(&["ZCARD", "users:by_created_lex"])
        .parse()
        .expect("count");
    assert_eq!(lex, expected);
}

#[actix_web::test]
async fn dangling_entries_of_all_three_indexes_are_removed() {
    let redis = RedisServer::start();
    let kept = seed_user(
        &redis,
        "Kept",
        "kept@example.com",
        "2024-01-01T00:00:00.000Z",
    );
    // An id only users:index still holds; one only the ordered indexes hold.
    let only_index = uuid::Uuid::new_v4().to_string();
    redis.cli(&["SADD", "users:index", &only_index]);
    let only_ordered = uuid::Uuid::new_v4().to_string();
    let (score, member) = ordered_entry(1_704_067_200_000, &only_ordered);
    redis.cli(&["ZADD", "users:by_created", &score, &only_ordered]);
    redis.cli(&["ZADD", "users:by_created_lex", "0", &member]);
    // Members of users:by_created_lex that users:by_created does not hold: not one of ours,
    // and an existing user's at a time that is not its own.
    let (_, wrong_time) = ordered_entry(5, &kept);
    redis.cli(&[
        "ZADD",
        "users:by_created_lex",
        "0",
        "junk",
        "0",
        &wrong_time,
    ]);
    // A record whose id is not its key's: reported, left alone.
    let other = uuid::Uuid::new_v4().to_string();
    let json = redis.cli(&["GET", &format!("user:{kept}")]);
    redis.cli(&["SET", &format!("user:{other}"), &json]);

    let done = summary(&reindex(&redis.url()));
    assert_eq!(done["users"], 1, "{done}");
    assert_eq!(done["dangling_ids_removed"], 2, "{done}");
    assert_eq!(done["dangling_members_removed"], 2, "{done}");
    assert_eq!(done["unreadable"], 1, "{done}");
    assert_eq!(redis.cli(&["SMEMBERS", "users:index"]), kept);
    assert_eq!(redis.cli(&["ZRANGE", "users:by_created", "0", "-1"]), kept);
    let (_, own) = ordered_entry(1_704_067_200_000, &kept);
    assert_eq!(
        redis.cli(&["ZRANGE", "users:by_created_lex", "0", "-1"]),
        own
    );

    let again = summary(&reindex(&redis.url()));
    assert_eq!(
        (
            again["dangling_ids_removed"].as_u64(),
            again["dangling_members_removed"].as_u64()
        ),
        (Some(0), Some(0))
    );
}

#[actix_web::test]
async fn an_email_guard_another_user_holds_is_reported_and_kept() {
    let redis = RedisServer::start();
    let holder = seed_user(
        &redis,
        "Holder",
        "holder@example.com",
        "2024-01-01T00:00:00.000Z",
    );
    let first = summary(&reindex(&redis.url()));
    assert_eq!(first["email_guards_added"], 1);
    // The seed service then writes a second user with the holder's address (case aside).
    let late = seed_user(
        &redis,
        "Late",
        "HOLDER@example.com",
        "2023-01-01T00:00:00.000Z",
    );
    let lines = reindex(&redis.url());
    let done = summary(&lines);
    assert_eq!(done["duplicate_emails"], 1, "{done}");
    assert_eq!(done["added_to_by_created"], 1, "{done}");
    let dup = lines
        .iter()
        .find(|l| l["msg"] == "duplicate email left for a human to resolve")
        .expect("reported");
    assert_eq!(dup["email"], "holder@example.com");
    assert_eq!(dup["kept_by"].as_str(), Some(holder.as_str()));
    assert_eq!(dup["also_used_by"].as_str(), Some(late.as_str()));
    assert_eq!(
        redis.cli(&["GET", "users:email:holder@example.com"]),
        holder
    );
}

#[actix_web::test]
async fn the_ordered_member_follows_the_time_users_by_created_already_holds() {
    // users:by_created already holds the user at another time than its record's (an older
    // version's data): its member in users:by_created_lex is built for that time, so the two
    // ordered indexes agree; before 1970 too (the member's negative form).
    let redis = RedisServer::start();
    let id = seed_user(
        &redis,
        "Early",
        "early@example.com",
        "1969-12-31T23:59:59.000Z",
    );
    redis.cli(&["ZADD", "users:by_created", "-1500", &id]);
    let done = summary(&reindex(&redis.url()));
    assert_eq!(done["added_to_by_created"], 0, "{done}");
    assert_eq!(done["dangling_members_removed"], 0, "{done}");
    assert_eq!(
        redis.cli(&["ZRANGE", "users:by_created_lex", "0", "-1"]),
        format!("-999999999998500:{id}")
    );
    assert_eq!(redis.cli(&["ZSCORE", "users:by_created", &id]), "-1500");
}

/// A guard is handed over only if it and both records are still what the caller read: a
/// create, update or delete in between is never undone.
#[test]
fn a_guard_is_handed_over_only_while_it_and_both_records_are_as_read() {
    let script = include_str!("../../src/users/scripts/hand_over_guard.lua");
    let redis = RedisServer::start();
    let (holder, claimant) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let user = |id: &str, email: &str| {
        format!(r#"{{"id":"{id}","name":"A","email":"{email}","created_at":"x","updated_at":"x"}}"#)
    };
    let guard = "users:email:a@example.com";
    let (holder_key, claimant_key) = (format!("user:{holder}"), format!("user:{claimant}"));
    redis.cli(&["SET", guard, &holder]);
    redis.cli(&["SET", &holder_key, &user(&holder, "b@example.com")]);
    redis.cli(&["SET", &claimant_key, &user(&claimant, "a@example.com")]);
    let hand_over = |holder_read: &str, claimant_read: &str| {
        let keys = [guard, holder_key.as_str(), claimant_key.as_str()];
        let args = [
            holder.as_str(),
            holder_read,
            claimant.as_str(),
            claimant_read,
        ];
        redis.cli(&[&["EVAL", script, "3"], &keys[..], &args[..]].concat())
    };
    // Read before something changed: nothing happens.
    let holder_now = user(&holder, "b@example.com");
    let claimant_now = user(&claimant, "a@example.com");
    assert_eq!(
        hand_over(&user(&holder, "a@example.com"), &claimant_now).trim(),
        "0"
    );
    assert_eq!(hand_over("", &claimant_now).trim(), "0");
    assert_eq!(
        hand_over(&holder_now, &user(&claimant, "c@example.com")).trim(),
        "0"
    );
    assert_eq!(redis.cli(&["GET", guard]).trim(), holder);
    // A holder key that is not a string is never as read (and no error either).
    redis.cli(&["DEL", &holder_key]);
    redis.cli(&["HSET", &holder_key, "f", "v"]);
    assert_eq!(hand_over("", &claimant_now).trim(), "0");
    assert_eq!(redis.cli(&["GET", guard]).trim(), holder);
    // As read: the guard goes to the claimant.
    redis.cli(&["DEL", &holder_key]);
    assert_eq!(hand_over("", &claimant_now).trim(), "1");
    assert_eq!(redis.cli(&["GET", guard]).trim(), claimant);
    // A guard another user took since the read stays that user's.
    redis.cli(&["SET", guard, "someone-else"]);
    assert_eq!(hand_over("", &claimant_now).trim(), "0");
    assert_eq!(redis.cli(&["GET", guard]).trim(), "someone-else");
}

#[actix_web::test]
async fn an_address_the_seed_service_gives_to_a_new_user_is_guarded_for_that_user() {
    let redis = RedisServer::start();
    let at = "2024-01-01T00:00:00.000Z";
    let gone = seed_user(&redis, "Gone", "reused@example.com", at);
    let app = spawn_app_with(redis, &[]).await;
    let guard = || {
        let owner = app.redis.cli(&["GET", "users:email:reused@example.com"]);
        owner.trim().to_owned()
    };
    poll_until(Duration::from_secs(20), "first owner guarded", async || {
        guard() == gone
    })
    .await;
    // The seed service deletes the user and gives the address to a new one: the reconciler
    // indexes the new user while the old guard still stands, and hands the guard over.
    app.redis.cli(&["DEL", &format!("user:{gone}")]);
    app.redis.cli(&["SREM", "users:index", &gone]);
    let new = seed_user(&app.redis, "New", "Reused@example.com", at);
    poll_until(Duration::from_secs(20), "guard handed over", async || {
        guard() == new
    })
    .await;
    app.json(
        "POST",
        "/users",
        r#"{"name":"X","email":"reused@example.com"}"#,
    )
    .await
    .assert_error(409, "duplicate_email");
}

#[actix_web::test]
async fn a_duplicate_address_goes_to_the_other_user_when_the_one_who_kept_it_leaves() {
    let redis = RedisServer::start();
    let shared = "users:email:shared@example.com";
    let older = seed_user(
        &redis,
        "Older",
        "shared@example.com",
        "2024-01-01T00:00:00.000Z",
    );
    let younger = seed_user(
        &redis,
        "Younger",
        "SHARED@example.com",
        "2024-02-01T00:00:00.000Z",
    );
    let first = summary(&reindex(&redis.url()));
    assert_eq!(first["duplicate_emails"], 1, "{first}");
    assert_eq!(redis.cli(&["GET", shared]).trim(), older);

    // The seed service deletes the user who kept the address: a reindex hands it to the other.
    redis.cli(&["DEL", &format!("user:{older}")]);
    redis.cli(&["SREM", "users:index", &older]);
    let done = summary(&reindex(&redis.url()));
    assert_eq!(redis.cli(&["GET", shared]).trim(), younger, "{done}");
    assert_eq!(done["duplicate_emails"], 0, "{done}");
    assert_eq!(done["guards_handed_over"], 1, "{done}");
    let again = summary(&reindex(&redis.url()));
    assert_eq!(again["guards_handed_over"], 0, "{again}");
    assert_eq!(again["email_guards_added"], 0, "{again}");
    assert_eq!(again["duplicate_emails"], 0, "{again}");

    // With the role running, its walk does the same when our API deletes the one who kept it
    // (the delete drops the guard: the other user gets it)...
    let at = "2024-03-01T00:00:00.000Z";
    let a = seed_user(&redis, "A", "twice@example.com", at);
    let b = seed_user(&redis, "B", "twice@example.com", "2024-04-01T00:00:00.000Z");
    let app = spawn_app_with(redis, &[]).await;
    let guard = |email: &str| {
        let owner = app.redis.cli(&["GET", &format!("users:email:{email}")]);
        owner.trim().to_owned()
    };
    poll_until(Duration::from_secs(20), "duplicate indexed", async || {
        guard("twice@example.com") == a
    })
    .await;
    let deleted = app
        .send(app.client.delete(app.url(&format!("/users/{a}"))), None)
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    poll_until(
        Duration::from_secs(30),
        "guard to the other user",
        async || guard("twice@example.com") == b,
    )
    .await;
    app.json(
        "POST",
        "/users",
        r#"{"name":"X","email":"twice@example.com"}"#,
    )
    .await
    .assert_error(409, "duplicate_email");

    // ...and when the seed service swaps two users' addresses through a third one.
    let (h, x) = (
        seed_user(&app.redis, "H", "e@example.com", at),
        seed_user(&app.redis, "X", "f@example.com", at),
    );
    poll_until(Duration::from_secs(20), "both guarded", async || {
        guard("e@example.com") == h && guard("f@example.com") == x
    })
    .await;
    let readdress = |id: &str, from: &str, to: &str| {
        let json = app.redis.cli(&["GET", &format!("user:{id}")]);
        app.redis
            .cli(&["SET", &format!("user:{id}"), &json.trim().replace(from, to)]);
    };
    readdress(&h, "e@example.com", "tmp@example.com");
    readdress(&x, "f@example.com", "e@example.com");
    readdress(&h, "tmp@example.com", "f@example.com");
    poll_until(Duration::from_secs(30), "guards swapped", async || {
        guard("e@example.com") == x && guard("f@example.com") == h
    })
    .await;
    for email in ["e@example.com", "f@example.com"] {
        let body = format!(r#"{{"name":"Y","email":"{email}"}}"#);
        app.json("POST", "/users", &body)
            .await
            .assert_error(409, "duplicate_email");
    }
}

/// A guard naming a user for an address the seeds' service moved it away from is stale: our API
/// does not move that user back onto the address (the seed service may have given it to
/// someone else, whom the reconciler has not indexed yet).
#[actix_web::test]
async fn our_api_does_not_move_a_user_back_onto_an_address_the_seed_service_moved_it_from() {
    let app = spawn_app_with(RedisServer::start(), &[]).await;
    let user = app.create_user("H", "x@example.com").await;
    let id = user["id"].as_str().unwrap_or_default().to_owned();
    let key = format!("user:{id}");
    let json = app.redis.cli(&["GET", &key]);
    app.redis.cli(&[
        "SET",
        &key,
        &json.trim().replace("x@example.com", "y@example.com"),
    ]);
    let path = format!("/users/{id}");
    app.json("PATCH", &path, r#"{"email":"x@example.com"}"#)
        .await
        .assert_error(409, "duplicate_email");
    // Its own current address, or a free one, is fine.
    let renamed = app.json("PATCH", &path, r#"{"name":"H2"}"#).await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    let moved = app
        .json("PATCH", &path, r#"{"email":"z@example.com"}"#)
        .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
}
