//! Redis crashes (SIGKILL, restarted on its AOF) and freezes (SIGSTOP past `--redis-timeout`)
//! under a write load on the users role: honest fast 503s, readiness follows, recovery by
//! itself, and what was acknowledged is what is stored.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{ENVS, PATIENCE, Statuses, user_body};
use crate::harness::{Platform, Redis, free_port, loopback, signal};
use crate::http::Client;
use crate::load::{Latencies, ms};
use crate::{Report, store};

/// One request of the load: when it left, when it ended, what came back.
#[derive(Clone)]
pub struct Exchange {
    pub start: Instant,
    pub end: Instant,
    /// The status, or the failure.
    pub outcome: String,
    /// The created user's id on a 201.
    pub id: Option<String>,
    /// The logical create it belongs to (its email).
    pub email: String,
    pub replayed: bool,
}

impl Exchange {
    pub fn took(&self) -> Duration {
        self.end - self.start
    }
}

/// Writers creating users through `path_prefix` on `addr` until `stop`: each create carries an
/// Idempotency-Key and, when not answered 201/409, is retried with the same key (as a careful
/// client does) before the writer moves on. A 409 to a retry means the key did not replay.
pub fn writers(
    addr: SocketAddr,
    path_prefix: &'static str,
    count: usize,
    stop: Arc<AtomicBool>,
    timeout: Duration,
) -> Vec<std::thread::JoinHandle<Vec<Exchange>>> {
    (0..count)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = Client::new(addr, timeout);
                let mut log = Vec::new();
                let run = std::process::id();
                let mut i = 0;
                'creates: while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let email = format!("w{w}-{i}@example.com");
                    let key = format!("chaos-{run}-{w}-{i}");
                    let body = user_body(&format!("Writer {w}"), &email);
                    loop {
                        let start = Instant::now();
                        let answer = client.request(
                            "POST",
                            &format!("{path_prefix}/users"),
                            &[("Idempotency-Key", &key)],
                            Some(&body),
                        );
                        let end = Instant::now();
                        let (outcome, id, replayed) = match &answer {
                            Ok(r) => (
                                r.status.to_string(),
                                (r.status == 201)
                                    .then(|| r.json()["id"].as_str().map(str::to_owned))
                                    .flatten(),
                                r.header("idempotent-replayed") == Some("true"),
                            ),
                            Err(e) => (e.to_string(), None, false),
                        };
                        let done = matches!(outcome.as_str(), "201" | "409" | "400" | "422");
                        log.push(Exchange {
                            start,
                            end,
                            outcome,
                            id,
                            email: email.clone(),
                            replayed,
                        });
                        if done {
                            break;
                        }
                        if stop.load(Ordering::SeqCst) {
                            // Left unfinished: retried after the load (see `finish_pending`).
                            break 'creates;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                log
            })
        })
        .collect()
}

/// Retries, with their keys, the creates a writer left unanswered when the load stopped.
pub fn finish_pending(addr: SocketAddr, path_prefix: &str, log: &mut Vec<Exchange>) {
    let mut last: HashMap<String, String> = HashMap::new();
    for e in log.iter() {
        last.insert(e.email.clone(), e.outcome.clone());
    }
    let run = std::process::id();
    let mut client = Client::new(addr, PATIENCE);
    for (email, outcome) in last {
        if matches!(outcome.as_str(), "201" | "409" | "400" | "422") {
            continue;
        }
        // The key is derived from the email: w{w}-{i}@… ↔ chaos-{run}-{w}-{i}.
        let local = email
            .trim_end_matches("@example.com")
            .trim_start_matches('w');
        let key = format!("chaos-{run}-{}", local);
        let writer = local.split('-').next().unwrap_or_default();
        let body = user_body(&format!("Writer {writer}"), &email);
        for _ in 0..50 {
            let start = Instant::now();
            let answer = client.request(
                "POST",
                &format!("{path_prefix}/users"),
                &[("Idempotency-Key", &key)],
                Some(&body),
            );
            let (outcome, id, replayed) = match &answer {
                Ok(r) => (
                    r.status.to_string(),
                    r.json()["id"].as_str().map(str::to_owned),
                    r.header("idempotent-replayed") == Some("true"),
                ),
                Err(e) => (e.to_string(), None, false),
            };
            let done = outcome == "201" || outcome == "409";
            log.push(Exchange {
                start,
                end: Instant::now(),
                outcome,
                id,
                email: email.clone(),
                replayed,
            });
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What the writers' creates came to: (acknowledged email → id, problems).
pub fn settle(log: &[Exchange], stored: &store::Stored) -> (HashMap<String, String>, Vec<String>) {
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut problems = Vec::new();
    let mut conflicts = HashSet::new();
    for e in log {
        match (e.outcome.as_str(), &e.id) {
            ("201", Some(id)) => {
                if let Some(first) = acked.insert(e.email.clone(), id.clone())
                    && first != *id
                {
                    problems.push(format!(
                        "{} acknowledged as two users {first} and {id}",
                        e.email
                    ));
                }
            }
            ("409", _) => {
                conflicts.insert(e.email.clone());
            }
            _ => {}
        }
    }
    for email in conflicts {
        problems.push(format!(
            "a retry of {email} with its Idempotency-Key was answered 409"
        ));
    }
    let mut per_email: HashMap<&str, usize> = HashMap::new();
    for email in stored.users.values() {
        *per_email.entry(email).or_default() += 1;
    }
    if let Some((email, n)) = per_email.iter().find(|(_, n)| **n > 1) {
        problems.push(format!("{email} stored {n} times"));
    }
    problems.truncate(10);
    (acked, problems)
}

/// Polls `path` every 20 ms until `stop`: (when asked, status).
fn poller(
    addr: SocketAddr,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, Instant, u16)>> {
    std::thread::spawn(move || {
        let mut client = Client::new(addr, PATIENCE);
        let mut seen = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let start = Instant::now();
            let status = client.get(path).map(|r| r.status).unwrap_or(0);
            seen.push((start, Instant::now(), status));
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    })
}

/// How long after `from` the first answer that matches arrived (a request already in flight at
/// `from` counts: its answer is the first the fault gave).
fn first_after(
    seen: &[(Instant, Instant, u16)],
    from: Instant,
    want: impl Fn(u16) -> bool,
) -> Option<Duration> {
    seen.iter()
        .filter(|(_, end, s)| *end >= from && want(*s))
        .map(|(_, end, _)| *end - from)
        .min()
}

fn exchanges(handles: Vec<std::thread::JoinHandle<Vec<Exchange>>>) -> Vec<Exchange> {
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer thread"))
        .collect()
}

const REDIS_TIMEOUT: Duration = Duration::from_millis(1000);

pub fn sigkill(report: &mut Report) {
    let mut redis = Redis::start_aof();
    let mut users = Platform::users(
        None,
        loopback(free_port()),
        &redis.url(),
        &["--redis-timeout", "1s"],
        ENVS,
    );
    let addr = users.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers(addr, "", 4, stop.clone(), PATIENCE);
    let ready = poller(addr, "/health/ready", stop.clone());
    std::thread::sleep(Duration::from_millis(1500));

    // Taken once Redis is dead: a request that left just before may still have been answered.
    redis.kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    let restarting = Instant::now();
    redis.restart();
    let up = Instant::now();
    // Writes start succeeding again, with no restart of the users role.
    let recovered = {
        let deadline = up + Duration::from_secs(10);
        let mut probe = Client::new(addr, PATIENCE);
        let mut at = None;
        while Instant::now() < deadline {
            if probe.get("/users?limit=1").is_ok_and(|r| r.status == 200) {
                at = Some(Instant::now());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        at
    };
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let mut log = exchanges(load);
    let ready = ready.join().expect("poller thread");
    finish_pending(addr, "", &mut log);
    let still_running = users.child.try_wait().is_ok_and(|s| s.is_none());

    let stored = store::check(&mut redis.conn());
    let (acked, problems) = settle(&log, &stored);
    let present: HashSet<&String> = stored.users.keys().collect();
    // Acknowledged before the kill and gone after the restart: the AOF's loss window.
    let ack_time: HashMap<&String, Instant> = log
        .iter()
        .filter_map(|e| Some((e.id.as_ref()?, e.end)))
        .collect();
    let lost: Vec<&String> = acked.values().filter(|id| !present.contains(id)).collect();
    let window = lost
        .iter()
        .filter_map(|id| ack_time.get(id))
        .map(|t| killed.saturating_duration_since(*t))
        .max()
        .unwrap_or_default();
    let during: Vec<&Exchange> = log
        .iter()
        .filter(|e| e.start >= killed && e.end <= restarting)
        .collect();
    let mut outage = Statuses::default();
    let mut outage_lat = Latencies::default();
    for e in &during {
        outage.add(&e.outcome);
        outage_lat.push(e.took());
    }
    let worst = log.iter().map(Exchange::took).max().unwrap_or_default();
    let ready_503 = first_after(&ready, killed, |s| s == 503);

    report.figure("acked", acked.len());
    report.figure("lost", format!("{} (window {})", lost.len(), ms(window)));
    report.figure(
        "ready 503 after",
        ready_503.map(ms).unwrap_or("never".into()),
    );
    report.figure(
        "outage writes",
        format!("{outage} {}", outage_lat.summary()),
    );
    report.figure("redis restart", ms(up - restarting));
    report.figure(
        "recovered after",
        recovered.map(|t| ms(t - up)).unwrap_or("never".into()),
    );
    report.figure("slowest", ms(worst));
    report.figure("key problems", stored.problems.len() + problems.len());
    report.promise(
        window <= Duration::from_millis(2000),
        format!(
            "loss within the everysec window: {} lost, oldest {}",
            lost.len(),
            ms(window)
        ),
    );
    report.promise(
        ready_503.is_some_and(|d| d <= Duration::from_secs(2)),
        format!("readiness 503 within 2 s: {ready_503:?}"),
    );
    report.promise(
        !during.is_empty() && outage.other_than(&["503"]) == 0,
        format!("writes during the outage 503: {outage}"),
    );
    report.promise(
        outage_lat.quantile(0.5) <= Duration::from_millis(200),
        format!("outage 503s fast: {}", outage_lat.summary()),
    );
    report.promise(
        worst <= REDIS_TIMEOUT + Duration::from_secs(1),
        format!("no request over timeout + 1 s: {}", ms(worst)),
    );
    report.promise(
        recovered.is_some_and(|t| t - up <= Duration::from_secs(5)) && still_running,
        "recovers by itself within 5 s",
    );
    report.promise(
        problems.is_empty(),
        format!("creates settle once each: {problems:?}"),
    );
    report.promise(
        stored.problems.is_empty(),
        format!("keys consistent: {:?}", stored.problems),
    );
    if !report_ok(report) {
        eprintln!("users log tail:\n{}", users.tail());
    }
    users.kill();
}

fn report_ok(report: &Report) -> bool {
    report.broken.is_empty()
}

pub fn sigstop(report: &mut Report) {
    let redis = Redis::start();
    let mut users = Platform::users(
        None,
        loopback(free_port()),
        &redis.url(),
        &["--redis-timeout", "500ms"],
        ENVS,
    );
    let timeout = Duration::from_millis(500);
    let addr = users.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers(addr, "", 4, stop.clone(), PATIENCE);
    let reads = poller(addr, "/users?limit=5", stop.clone());
    let ready = poller(addr, "/health/ready", stop.clone());
    std::thread::sleep(Duration::from_millis(1000));

    // Taken once the signal is sent (`kill` has returned): not before, or a request that left
    // just before the freeze counts as one answered during it.
    signal(redis.pid(), "-STOP");
    let frozen = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    let thawed = Instant::now();
    signal(redis.pid(), "-CONT");
    let mut probe = Client::new(addr, PATIENCE);
    let recovered = crate::harness::wait_for(Duration::from_secs(10), || {
        probe.get("/users?limit=1").is_ok_and(|r| r.status == 200)
    })
    .then(Instant::now);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let mut log = exchanges(load);
    let reads = reads.join().expect("poller");
    let ready = ready.join().expect("poller");
    finish_pending(addr, "", &mut log);
    let still_running = users.child.try_wait().is_ok_and(|s| s.is_none());

    let stored = store::check(&mut redis.conn());
    let (acked, problems) = settle(&log, &stored);
    let replayed = log.iter().filter(|e| e.replayed).count();
    let mut frozen_answers = Statuses::default();
    let mut frozen_lat = Latencies::default();
    for e in log.iter().filter(|e| e.start >= frozen && e.end <= thawed) {
        frozen_answers.add(&e.outcome);
        frozen_lat.push(e.took());
    }
    for (start, end, status) in reads
        .iter()
        .filter(|(s, e, _)| *s >= frozen && *e <= thawed)
    {
        frozen_answers.add(status);
        frozen_lat.push(*end - *start);
    }
    let worst = log
        .iter()
        .map(Exchange::took)
        .chain(reads.iter().chain(&ready).map(|(s, e, _)| *e - *s))
        .max()
        .unwrap_or_default();
    let first_503 = first_after(&reads, frozen, |s| s == 503);
    let ready_503 = first_after(&ready, frozen, |s| s == 503);
    let lost = acked
        .values()
        .filter(|id| !stored.users.contains_key(*id))
        .count();

    report.figure("503 after", first_503.map(ms).unwrap_or("never".into()));
    report.figure(
        "ready 503 after",
        ready_503.map(ms).unwrap_or("never".into()),
    );
    report.figure(
        "frozen answers",
        format!("{frozen_answers} {}", frozen_lat.summary()),
    );
    report.figure("slowest", ms(worst));
    report.figure(
        "recovered after",
        recovered.map(|t| ms(t - thawed)).unwrap_or("never".into()),
    );
    report.figure("acked", acked.len());
    report.figure("replayed", replayed);
    report.figure("lost", lost);
    report.figure("key problems", stored.problems.len() + problems.len());
    report.promise(
        first_503.is_some_and(|d| d <= timeout + Duration::from_millis(500)),
        format!("503 within the timeout: {first_503:?}"),
    );
    report.promise(
        frozen_lat.len() > 0 && frozen_answers.other_than(&["503"]) == 0,
        format!("frozen: 503 only: {frozen_answers}"),
    );
    report.promise(
        worst <= timeout + Duration::from_secs(1),
        format!("no request over timeout + 1 s: {}", ms(worst)),
    );
    report.promise(
        ready_503.is_some_and(|d| d <= timeout + Duration::from_secs(1)),
        format!("readiness 503: {ready_503:?}"),
    );
    report.promise(
        recovered.is_some_and(|t| t - thawed <= Duration::from_secs(2)) && still_running,
        "recovers within 2 s of SIGCONT by itself",
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
    if !report_ok(report) {
        eprintln!("users log tail:\n{}", users.tail());
    }
    users.kill();
}
