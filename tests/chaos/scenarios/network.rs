//! Slow and lossy links, between the gateway and users, and between users and Redis, in a
//! network namespace of this run (`crate::netns`): the configured timeouts fire, nothing
//! hangs, and creates retried with their Idempotency-Key are never written twice.
//!
//! Gateway ↔ users: users and its Redis live in the namespace (Redis on the namespace's
//! address, which the users role reaches over the namespace's own loopback path, so only the
//! gateway's traffic crosses the faulty veth). Users ↔ Redis: only Redis lives there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::redis_faults::{Exchange, finish_pending, settle, writers};
use super::{ENVS, PATIENCE, Rng, Statuses, user_body};
use crate::harness::{Platform, Redis, free_port, loopback};
use crate::http::{Client, Failure};
use crate::load::{Latencies, ms};
use crate::netns::Link;
use crate::{Report, store};

/// 64 kbit/s: a 100-user page (≈ 40 KB here) takes ≈ 5 s, one user (≈ 400 B) ≈ 50 ms.
const SLOW: &str = "64kbit";
/// Each packet dropped with this probability, either way.
const LOSS: f64 = 0.2;
const RUN_FOR: Duration = Duration::from_secs(4);

fn outcome(answer: &Result<crate::http::Response, Failure>) -> String {
    match answer {
        Ok(r) => r.status.to_string(),
        // The head came, then the body stopped: what a client sees of a cut stream.
        Err(Failure::NoAnswer(_)) => "cut".to_owned(),
        Err(Failure::NotSent(_)) => "not-sent".to_owned(),
    }
}

/// Users with the longest names and long emails: pages that take a while on a slow link.
fn seed(addr: SocketAddr, prefix: &str, n: usize) -> Vec<String> {
    let mut client = Client::new(addr, PATIENCE);
    let name = "N".repeat(100);
    (0..n)
        .map(|i| {
            let email = format!("{}-{i}@example.com", "e".repeat(180));
            let r = client
                .request(
                    "POST",
                    &format!("{prefix}/users"),
                    &[],
                    Some(&user_body(&name, &email)),
                )
                .expect("seeding answered");
            assert_eq!(r.status, 201, "seeding");
            r.json()["id"].as_str().expect("id").to_owned()
        })
        .collect()
}

/// Readers of one user at a time and of a 100-user page, until `RUN_FOR` has passed.
fn readers(
    addr: SocketAddr,
    prefix: &'static str,
    ids: Arc<Vec<String>>,
) -> (Vec<Exchange>, Vec<Exchange>) {
    let deadline = Instant::now() + RUN_FOR;
    let one = |w: u64| {
        let ids = ids.clone();
        std::thread::spawn(move || {
            let (mut client, mut rng, mut log) =
                (Client::new(addr, PATIENCE), Rng::new(w), Vec::new());
            while Instant::now() < deadline {
                let path = match w {
                    0 => format!("{prefix}/users?limit=100"),
                    _ => format!("{prefix}/users/{}", ids[rng.below(ids.len())]),
                };
                let start = Instant::now();
                let answer = client.get(&path);
                log.push(Exchange {
                    start,
                    end: Instant::now(),
                    outcome: outcome(&answer),
                    id: None,
                    email: String::new(),
                    replayed: false,
                });
            }
            log
        })
    };
    let pages = one(0);
    let singles: Vec<_> = (1..=2).map(one).collect();
    let singles = singles
        .into_iter()
        .flat_map(|h| h.join().expect("reader"))
        .collect();
    (pages.join().expect("reader"), singles)
}

fn tally(log: &[Exchange]) -> (Statuses, Latencies) {
    let (mut s, mut l) = (Statuses::default(), Latencies::default());
    for e in log {
        s.add(&e.outcome);
        l.push(e.took());
    }
    (s, l)
}

/// Time until `path` answers 200 again once the link is healed.
fn recovery(addr: SocketAddr, path: &str) -> Option<Duration> {
    let start = Instant::now();
    let mut client = Client::new(addr, PATIENCE);
    crate::harness::wait_for(Duration::from_secs(10), || {
        client.get(path).is_ok_and(|r| r.status == 200)
    })
    .then(|| start.elapsed())
}

/// The slow-link scenarios: pages cut by the timeout, single users served, all bounded.
fn slow(
    report: &mut Report,
    link: &Link,
    addr: SocketAddr,
    prefix: &'static str,
    bound: Duration,
    timeout_status: &str,
) {
    let ids = Arc::new(seed(addr, prefix, 100));
    link.slow(SLOW);
    let (pages, singles) = readers(addr, prefix, ids);
    link.heal();
    let recovered = recovery(addr, &format!("{prefix}/users?limit=100"));
    let (page_s, page_l) = tally(&pages);
    let (one_s, one_l) = tally(&singles);
    report.figure("pages", format!("{page_s} {}", page_l.summary()));
    report.figure("single users", format!("{one_s} {}", one_l.summary()));
    report.figure(
        "recovered after heal",
        recovered.map(ms).unwrap_or("never".into()),
    );
    report.promise(
        page_s.get(timeout_status) + page_s.get("cut") > 0
            && page_s.other_than(&[timeout_status, "cut", "200"]) == 0,
        format!(
            "a page slower than the timeout is cut by it ({timeout_status} or a cut body): {page_s}"
        ),
    );
    report.promise(
        page_l.max().max(one_l.max()) <= bound,
        format!(
            "nothing over the timeout + 1 s ({}): pages max {}, singles max {}",
            ms(bound),
            ms(page_l.max()),
            ms(one_l.max())
        ),
    );
    // The page saturates the link, so how many single users get through depends on timing:
    // a figure, not a promise. What they get is: their user, or the timeout's answer.
    report.promise(
        one_s.other_than(&["200", timeout_status, "cut"]) == 0,
        format!("single users: 200 or the timeout's answer: {one_s}"),
    );
    report.promise(
        recovered.is_some_and(|d| d <= Duration::from_secs(2)),
        format!("recovers within 2 s of the heal: {recovered:?}"),
    );
}

/// The lossy-link scenarios: writers retrying with their keys; bounded, and written once.
fn lossy(
    report: &mut Report,
    link: &Link,
    addr: SocketAddr,
    prefix: &'static str,
    bound: Duration,
    redis: &Redis,
) {
    link.lossy(LOSS);
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers(addr, prefix, 4, stop.clone(), PATIENCE);
    std::thread::sleep(RUN_FOR);
    stop.store(true, Ordering::SeqCst);
    let mut log: Vec<Exchange> = load
        .into_iter()
        .flat_map(|h| h.join().expect("writer"))
        .collect();
    link.heal();
    let during = log.len();
    let (statuses, latencies) = tally(&log);
    finish_pending(addr, prefix, &mut log);
    let stored = store::check(&mut redis.conn());
    let (acked, problems) = settle(&log, &stored);
    let lost = acked
        .values()
        .filter(|id| !stored.users.contains_key(*id))
        .count();
    let creates = log
        .iter()
        .map(|e| &e.email)
        .collect::<std::collections::HashSet<_>>()
        .len();
    let replayed = log.iter().filter(|e| e.replayed).count();
    report.figure("requests", format!("{statuses} {}", latencies.summary()));
    report.figure("p99", ms(latencies.quantile(0.99)));
    report.figure("creates", format!("{creates} in {during} requests"));
    report.figure("replayed", replayed);
    report.figure("stored", stored.users.len());
    report.figure("lost", lost);
    report.figure("key problems", stored.problems.len() + problems.len());
    report.promise(
        latencies.max() <= bound,
        format!(
            "nothing over its timeouts + 1 s ({}): {}",
            ms(bound),
            ms(latencies.max())
        ),
    );
    report.promise(
        statuses.get("201") > 0,
        format!("writes get through the lossy link: {statuses}"),
    );
    report.promise(
        acked.len() == creates && stored.users.len() == creates,
        format!(
            "every create stored once: {creates} creates, {} acknowledged, {} stored",
            acked.len(),
            stored.users.len()
        ),
    );
    report.promise(lost == 0, format!("{lost} acknowledged users missing"));
    report.promise(
        problems.is_empty(),
        format!("creates settle once each: {problems:?}"),
    );
    report.promise(
        stored.problems.is_empty(),
        format!("keys consistent: {:?}", stored.problems),
    );
}

const UPSTREAM: [&str; 4] = [
    "--upstream-timeout",
    "1s",
    "--upstream-connect-timeout",
    "500ms",
];
/// Upstream timeout and connect timeout (a retried GET may connect twice), + 1 s.
const UPSTREAM_BOUND: Duration = Duration::from_millis(1000 + 2 * 500 + 1000);
const REDIS: [&str; 4] = ["--redis-timeout", "500ms", "--redis-pool-wait", "250ms"];
const REDIS_BOUND: Duration = Duration::from_millis(500 + 250 + 1000);

/// Users and its Redis inside `link`'s namespace; the gateway here, in front of it.
fn behind_link(link: &Link) -> (Redis, Platform, Platform) {
    let redis = Redis::start_in(&link.ns, link.ns_ip);
    let users_addr = SocketAddr::new(link.ns_ip, free_port());
    let users = Platform::users(Some(&link.ns), users_addr, &redis.url(), &[], ENVS);
    let gateway = Platform::gateway(&format!("http://{users_addr}"), &UPSTREAM, ENVS);
    (redis, users, gateway)
}

pub fn slow_gateway_users(report: &mut Report) {
    let link = Link::new(0);
    let (_redis, _users, gateway) = behind_link(&link);
    slow(report, &link, gateway.addr, "/api", UPSTREAM_BOUND, "504");
}

pub fn lossy_gateway_users(report: &mut Report) {
    let link = Link::new(1);
    let (redis, _users, gateway) = behind_link(&link);
    lossy(report, &link, gateway.addr, "/api", UPSTREAM_BOUND, &redis);
}

pub fn slow_users_redis(report: &mut Report) {
    let link = Link::new(2);
    let redis = Redis::start_in(&link.ns, link.ns_ip);
    let users = Platform::users(None, loopback(free_port()), &redis.url(), &REDIS, ENVS);
    slow(report, &link, users.addr, "", REDIS_BOUND, "503");
}

pub fn lossy_users_redis(report: &mut Report) {
    let link = Link::new(3);
    let redis = Redis::start_in(&link.ns, link.ns_ip);
    let users = Platform::users(None, loopback(free_port()), &redis.url(), &REDIS, ENVS);
    lossy(report, &link, users.addr, "", REDIS_BOUND, &redis);
}
