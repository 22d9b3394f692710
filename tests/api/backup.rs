use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{RedisServer, run_binary, spawn_app_with};
use crate::reindex::seed_user;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("platform-backup-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs `platform users <args> --redis-url <url>`: (exit code, the summary line, all log lines, stderr).
fn users_task(url: &str, args: &[&str], summary: &str) -> (Option<i32>, Value, Vec<Value>, String) {
    let (code, out, err) = run_binary(&[&["users"], args, &["--redis-url", url]].concat());
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect();
    let done = lines
        .iter()
        .find(|l| l["msg"] == summary)
        .cloned()
        .unwrap_or(Value::Null);
    (code, done, lines, err)
}

fn export(url: &str, file: &Path, extra: &[&str]) -> Value {
    let file = file.to_str().unwrap();
    let (code, done, _, err) = users_task(
        url,
        &[&["export", "--output", file], extra].concat(),
        "export done",
    );
    assert_eq!(code, Some(0), "stderr: {err}");
    done
}

fn import(url: &str, file: &Path) -> (Option<i32>, Value, Vec<Value>, String) {
    users_task(url, &["import", file.to_str().unwrap()], "import done")
}

fn lines(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .expect("export file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// Every stored user, by id, as Redis holds it.
fn stored_users(redis: &RedisServer) -> Vec<Value> {
    let mut users: Vec<Value> = redis
        .cli(&["--scan", "--pattern", "user:*"])
        .lines()
        .filter(|k| !k.is_empty())
        .map(|k| serde_json::from_str(&redis.cli(&["GET", k])).expect("a user"))
        .collect();
    users.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    users
}

#[actix_web::test]
async fn export_flush_import_restores_ids_timestamps_and_emails_and_twice_is_once() {
    let redis = RedisServer::start();
    seed_user(
        &redis,
        "Seeded",
        "seeded@example.com",
        "2024-01-01T00:00:00.000Z",
    );
    let app = spawn_app_with(redis, &[]).await;
    for i in 0..25 {
        app.create_user(&format!("User {i}"), &format!("u{i}@Example.com"))
            .await;
    }
    let before = stored_users(&app.redis);
    assert_eq!(before.len(), 26);
    let dir = temp_dir("roundtrip");
    let file = dir.join("users.jsonl");
    let done = export(&app.redis.url(), &file, &[]);
    assert_eq!(done["users"], 26);
    let written = lines(&file);
    assert_eq!(written[0]["format"], "platform-users");
    assert_eq!(written.last().unwrap()["users"], 26);
    assert_eq!(written[1]["email"], "seeded@example.com", "oldest first");

    app.redis.cli(&["FLUSHALL"]);
    let (code, done, _, err) = import(&app.redis.url(), &file);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(
        (done["users"].as_u64(), done["imported"].as_u64()),
        (Some(26), Some(26))
    );
    assert_eq!(stored_users(&app.redis), before);
    assert_eq!(app.stored_counts(), (26, 26, 26, 26));
    let listed = app.get("/users").await;
    assert_eq!(listed.header("x-total-count").as_deref(), Some("26"));
    app.json("POST", "/users", r#"{"name":"X","email":"U3@example.COM"}"#)
        .await
        .assert_error(409, "duplicate_email");

    // Twice is once.
    let (code, again, _, err) = import(&app.redis.url(), &file);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(
        (
            again["imported"].as_u64(),
            again["skipped_identical"].as_u64()
        ),
        (Some(0), Some(26))
    );
    assert_eq!(stored_users(&app.redis), before);
    assert_eq!(app.stored_counts(), (26, 26, 26, 26));
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_web::test]
async fn import_reports_an_email_that_belongs_to_another_user_and_does_not_write_it() {
    let app = spawn_app_with(RedisServer::start(), &[]).await;
    let ada = app.create_user("Ada", "ada@example.com").await;
    app.create_user("Bob", "bob@example.com").await;
    let dir = temp_dir("conflict");
    let file = dir.join("users.jsonl");
    export(&app.redis.url(), &file, &[]);
    app.redis.cli(&["FLUSHALL"]);
    let other = app.create_user("Other Ada", "ADA@example.com").await;

    let (code, done, lines, err) = import(&app.redis.url(), &file);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(
        (done["imported"].as_u64(), done["email_conflicts"].as_u64()),
        (Some(1), Some(1))
    );
    let report = lines
        .iter()
        .find(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("user not imported"))
        })
        .expect("the conflict is reported");
    assert_eq!(report["id"], ada["id"]);
    assert_eq!(report["owner"], other["id"]);
    app.get(&format!("/users/{}", ada["id"].as_str().unwrap()))
        .await
        .assert_error(404, "user_not_found");
    assert_eq!(app.stored_counts(), (2, 2, 2, 2));
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_web::test]
async fn export_resumes_after_the_last_exported_user_and_a_truncated_file_is_refused() {
    let app = spawn_app_with(RedisServer::start(), &[]).await;
    for i in 0..30 {
        app.create_user("U", &format!("r{i}@example.com")).await;
    }
    let dir = temp_dir("resume");
    let full = dir.join("full.jsonl");
    export(&app.redis.url(), &full, &[]);
    let all = lines(&full);
    let users = &all[1..all.len() - 1];
    assert_eq!(users.len(), 30);

    // A broken export: header and the first 11 users, no footer.
    let broken = dir.join("broken.jsonl");
    let text = std::fs::read_to_string(&full).unwrap();
    std::fs::write(
        &broken,
        text.lines()
            .take(12)
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let (code, _, _, err) = import(&app.redis.url(), &broken);
    assert_eq!(code, Some(1));
    assert!(err.contains("truncated"), "{err}");

    let last = users[10]["id"].as_str().unwrap();
    let rest = dir.join("rest.jsonl");
    let done = export(&app.redis.url(), &rest, &["--after", last]);
    assert_eq!(done["users"], 19);
    let resumed = lines(&rest);
    assert_eq!(resumed[0]["after"], last);
    assert_eq!(&resumed[1..resumed.len() - 1], &users[11..]);
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_web::test]
async fn export_to_a_directory_keeps_the_newest_n_files() {
    let app = spawn_app_with(RedisServer::start(), &[]).await;
    app.create_user("Ada", "ada@example.com").await;
    let dir = temp_dir("keep");
    std::fs::write(dir.join("users-20000101T000000000Z.jsonl"), "old\n").unwrap();
    std::fs::write(
        dir.join(".users-20000101T000000001Z.jsonl.tmp"),
        "crashed\n",
    )
    .unwrap();
    std::fs::write(dir.join("unrelated.txt"), "kept\n").unwrap();
    let d = dir.to_str().unwrap();
    for _ in 0..3 {
        let (code, done, _, err) = users_task(
            &app.redis.url(),
            &["export", "--dir", d, "--keep", "2"],
            "export done",
        );
        assert_eq!(code, Some(0), "stderr: {err}");
        assert_eq!(done["users"], 1);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], "unrelated.txt");
    for name in &names[1..] {
        assert!(
            name.starts_with("users-2")
                && name.ends_with(".jsonl")
                && name != "users-20000101T000000000Z.jsonl",
            "{name}"
        );
        assert_eq!(lines(&dir.join(name)).last().unwrap()["users"], 1);
    }
    let (code, _, err) = run_binary(&["users", "export", "--keep", "2", "--output", "x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--keep needs --dir"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// An import writes as the API does: with `--redis-min-replicas-ack`, a batch counts as imported
/// only once a replica confirms it, so an import never reports users that a failover can drop.
#[actix_web::test]
async fn an_import_reports_users_imported_only_once_a_replica_confirms_them() {
    let source = RedisServer::start();
    for i in 0..3 {
        seed_user(
            &source,
            "U",
            &format!("u{i}@example.com"),
            "2024-01-01T00:00:00.000Z",
        );
    }
    let dir = temp_dir("ack");
    let file = dir.join("users.jsonl");
    export(&source.url(), &file, &[]);
    let path = file.to_str().unwrap();
    let acknowledged = [
        "import",
        path,
        "--redis-min-replicas-ack",
        "1",
        "--redis-timeout",
        "1s",
    ];

    // No replica: nothing confirms the writes, so the import fails instead of reporting them.
    let master = RedisServer::start();
    let (code, done, _, err) = users_task(&master.url(), &acknowledged, "import done");
    assert_eq!(code, Some(1), "{done}");
    assert_eq!(done, Value::Null, "no summary of an unconfirmed import");
    assert!(err.contains("not confirmed"), "{err}");

    // A replica in sync, then frozen (connected, silent): the import fails again...
    let replica = RedisServer::start();
    master.cli(&["FLUSHALL"]);
    master.cli(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
    replica.cli(&["REPLICAOF", "127.0.0.1", &master.port.to_string()]);
    let synced = async || {
        let info = master.cli(&["INFO", "replication"]);
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
            && info.contains("connected_slaves:1")
    };
    crate::helpers::poll_until(Duration::from_secs(10), "replica in sync", synced).await;
    replica.pause();
    let (code, _, _, err) = users_task(&master.url(), &acknowledged, "import done");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not confirmed"), "{err}");
    // ...and so does a re-run that finds every user there (unconfirmed) and writes nothing
    // but its final confirmation (a WAIT after no write of its own would prove nothing).
    master.cli(&["DEL", "users:import:confirmation"]);
    let (code, _, _, err) = users_task(&master.url(), &acknowledged, "import done");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not confirmed"), "{err}");
    assert_eq!(
        master.cli(&["EXISTS", "users:import:confirmation"]).trim(),
        "1"
    );
    replica.resume();
    // Once the replica answers (it acknowledges once it has caught up), the same import is
    // confirmed; the replica holds every user.
    crate::helpers::poll_until(Duration::from_secs(20), "replica caught up", async || {
        let info = master.cli(&["INFO", "replication"]);
        let replica_at = info
            .lines()
            .find(|l| l.starts_with("slave0:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("offset=")));
        let master_at = info
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"));
        replica_at.is_some() && replica_at == master_at.map(str::trim)
    })
    .await;
    let (code, done, _, err) = users_task(&master.url(), &acknowledged, "import done");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(done["skipped_identical"], 3, "{done}");
    assert_eq!(stored_users(&replica), stored_users(&source));
    std::fs::remove_dir_all(&dir).ok();
}
