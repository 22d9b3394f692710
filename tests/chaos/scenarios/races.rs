//! Concurrency races on the users store: one email created at once by many clients; emails
//! swapped, users created and deleted at once. Redis is checked while it runs (no two users
//! share an email, in one MGET snapshot) and key by key at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use super::{ENVS, PATIENCE, Rng, Statuses, user_body};
use crate::harness::{Platform, Redis, free_port, loopback};
use crate::http::Client;
use crate::{Report, store};

const RACERS: usize = 48;

pub fn one_email(report: &mut Report) {
    let redis = Redis::start();
    let users = Platform::users(None, loopback(free_port()), &redis.url(), &[], ENVS);
    let addr = users.addr;
    let barrier = Arc::new(Barrier::new(RACERS));
    // The same address in three spellings: the guard is on the lowercased email.
    let spellings = ["race@example.com", "RACE@example.com", "Race@Example.COM"];
    let threads: Vec<_> = (0..RACERS)
        .map(|n| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut client = Client::new(addr, PATIENCE);
                // Connected before the start, so the requests leave together.
                let _ = client.get("/health/live");
                barrier.wait();
                let body = user_body(&format!("Racer {n}"), spellings[n % spellings.len()]);
                match client.request("POST", "/users", &[], Some(&body)) {
                    Ok(r) => r.status.to_string(),
                    Err(e) => e.to_string(),
                }
            })
        })
        .collect();
    let mut statuses = Statuses::default();
    for t in threads {
        statuses.add(t.join().expect("racer thread"));
    }
    let stored = store::check(&mut redis.conn());
    report.figure("creates", RACERS);
    report.figure("answers", &statuses);
    report.figure("users stored", stored.users.len());
    report.figure("key problems", stored.problems.len());
    report.promise(
        statuses.get("201") == 1,
        format!("exactly one 201: {statuses}"),
    );
    report.promise(
        statuses.get("409") == RACERS - 1,
        format!("the others 409: {statuses}"),
    );
    report.promise(
        stored.users.len() == 1,
        format!("one user stored, not {}", stored.users.len()),
    );
    report.promise(
        stored.problems.is_empty(),
        format!("keys consistent: {:?}", stored.problems),
    );
}

const SEEDED: usize = 16;
/// Emails the load moves users between: more than users, so swaps both succeed and collide.
const EMAILS: usize = 24;
const WORKERS: usize = 8;
const RUN_FOR: Duration = Duration::from_secs(3);

pub fn swaps_and_deletes(report: &mut Report) {
    let redis = Redis::start();
    let users = Platform::users(None, loopback(free_port()), &redis.url(), &[], ENVS);
    let addr = users.addr;
    let email = |i: usize| format!("swap{i}@example.com");
    let ids = Arc::new(Mutex::new(Vec::new()));
    let mut client = Client::new(addr, PATIENCE);
    for i in 0..SEEDED {
        let r = client
            .request("POST", "/users", &[], Some(&user_body("Seed", &email(i))))
            .expect("seeding answered");
        assert_eq!(r.status, 201, "seeding");
        let id = r.json()["id"].as_str().expect("id").to_owned();
        ids.lock().expect("ids").push(id);
    }

    let stop = Arc::new(AtomicBool::new(false));
    // The watcher: an MGET of every user is one atomic snapshot; no two may share an email.
    let watcher = {
        let (stop, redis_addr) = (stop.clone(), redis.addr);
        std::thread::spawn(move || {
            let mut conn = crate::resp::Conn::open(redis_addr).expect("redis");
            let (mut snapshots, mut shared) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let keys = conn.must(&["KEYS", "user:*"]).texts();
                if !keys.is_empty() {
                    let args: Vec<&str> = std::iter::once("MGET")
                        .chain(keys.iter().map(String::as_str))
                        .collect();
                    let mut seen = std::collections::HashSet::new();
                    for v in conn.must(&args).texts() {
                        let user: serde_json::Value = serde_json::from_str(&v).unwrap_or_default();
                        let e = user["email"].as_str().unwrap_or_default().to_lowercase();
                        if !seen.insert(e.clone()) {
                            shared.push(e);
                        }
                    }
                    snapshots += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (snapshots, shared)
        })
    };

    let deadline = Instant::now() + RUN_FOR;
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let ids = ids.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(w as u64 + 7);
                let mut client = Client::new(addr, PATIENCE);
                let (mut patch, mut delete, mut create) = (
                    Statuses::default(),
                    Statuses::default(),
                    Statuses::default(),
                );
                while Instant::now() < deadline {
                    let id = {
                        let ids = ids.lock().expect("ids");
                        (!ids.is_empty()).then(|| ids[rng.below(ids.len())].clone())
                    };
                    // With no user left, create one.
                    let roll = if id.is_some() { rng.below(10) } else { 9 };
                    let id = id.unwrap_or_default();
                    let target = format!("swap{}@example.com", rng.below(EMAILS));
                    let path = format!("/users/{id}");
                    let (counts, answer) = if roll < 5 {
                        let body = serde_json::json!({"email": target}).to_string();
                        (&mut patch, client.request("PATCH", &path, &[], Some(&body)))
                    } else if roll < 7 {
                        let r = client.request("DELETE", &path, &[], None);
                        if r.as_ref().is_ok_and(|r| r.status == 204) {
                            ids.lock().expect("ids").retain(|known| *known != id);
                        }
                        (&mut delete, r)
                    } else {
                        let r =
                            client.request("POST", "/users", &[], Some(&user_body("New", &target)));
                        if let Ok(r) = &r
                            && r.status == 201
                            && let Some(id) = r.json()["id"].as_str()
                        {
                            ids.lock().expect("ids").push(id.to_owned());
                        }
                        (&mut create, r)
                    };
                    counts.add(match answer {
                        Ok(r) => r.status.to_string(),
                        Err(e) => e.to_string(),
                    });
                }
                (patch, delete, create)
            })
        })
        .collect();
    let (mut patch, mut delete, mut create) = (
        Statuses::default(),
        Statuses::default(),
        Statuses::default(),
    );
    for w in workers {
        let (p, d, c) = w.join().expect("worker thread");
        patch.merge(&p);
        delete.merge(&d);
        create.merge(&c);
    }
    stop.store(true, Ordering::SeqCst);
    let (snapshots, shared) = watcher.join().expect("watcher thread");
    let stored = store::check(&mut redis.conn());

    report.figure("ops", patch.total() + delete.total() + create.total());
    report.figure("PATCH", &patch);
    report.figure("DELETE", &delete);
    report.figure("POST", &create);
    report.figure("snapshots", snapshots);
    report.figure("shared emails", shared.len());
    report.figure("users left", stored.users.len());
    report.figure("key problems", stored.problems.len());
    report.promise(
        patch.other_than(&["200", "404", "409"]) == 0,
        format!("PATCH answers 200/404/409: {patch}"),
    );
    report.promise(
        delete.other_than(&["204", "404", "409"]) == 0,
        format!("DELETE answers 204/404/409: {delete}"),
    );
    report.promise(
        create.other_than(&["201", "409"]) == 0,
        format!("POST answers 201/409: {create}"),
    );
    report.promise(
        patch.get("200") > 0 && delete.get("204") > 0,
        "the load both swapped and deleted",
    );
    report.promise(
        snapshots > 0 && shared.is_empty(),
        format!("no two users ever share an email: {shared:?}"),
    );
    report.promise(
        stored.problems.is_empty(),
        format!("keys consistent: {:?}", stored.problems),
    );
}

/// The key-by-key check itself, on a store broken on purpose: each kind of damage is found
/// (a check that cannot fail would make the races above prove nothing).
pub fn checker_finds_damage(report: &mut Report) {
    let redis = Redis::start();
    let users = Platform::users(None, loopback(free_port()), &redis.url(), &[], ENVS);
    let mut client = Client::new(users.addr, PATIENCE);
    let ids: Vec<String> = (0..4)
        .map(|i| {
            let r = client
                .request(
                    "POST",
                    "/users",
                    &[],
                    Some(&user_body("Checked", &format!("c{i}@example.com"))),
                )
                .expect("answered");
            assert_eq!(r.status, 201, "create");
            r.json()["id"].as_str().expect("id").to_owned()
        })
        .collect();
    let mut conn = redis.conn();
    let clean = store::check(&mut conn).problems;
    conn.must(&["SREM", "users:index", &ids[0]]);
    conn.must(&["SET", "users:email:ghost@example.com", "no-such-user"]);
    // User 1 now claims user 2's email: two users share it, and c1's guard points nowhere valid.
    let json = conn.must(&["GET", &format!("user:{}", ids[1])]);
    let moved = json
        .text()
        .expect("user JSON")
        .replace("c1@example.com", "c2@example.com");
    conn.must(&["SET", &format!("user:{}", ids[1]), &moved]);
    conn.must(&["ZADD", "users:by_created", "1", &ids[3]]);
    let found = store::check(&mut conn).problems;
    let has = |what: &str| found.iter().any(|p| p.contains(what));
    report.figure("problems on a clean store", clean.len());
    report.figure("on the damaged one", found.len());
    report.promise(clean.is_empty(), format!("a clean store passes: {clean:?}"));
    report.promise(
        has(&format!("user {} is not in users:index", ids[0])),
        "a missing index entry is found",
    );
    report.promise(
        has("users:email:ghost@example.com guards no-such-user"),
        "a dangling email guard is found",
    );
    report.promise(
        has("share the email c2@example.com"),
        "a shared email is found",
    );
    report.promise(
        has(&format!("user {}: by_created score", ids[3])),
        "a wrong score is found",
    );
}
