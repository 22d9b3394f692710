//! The users role SIGKILLed behind the gateway: 502 at once (nothing listens: the connect is
//! refused), the gateway's pooled connections to the dead process are not reused into errors,
//! and traffic flows within a second of users listening again on the same address.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{ENVS, PATIENCE, Statuses};
use crate::Report;
use crate::harness::{Platform, Redis, free_port, loopback};
use crate::http::Client;
use crate::load::{Latencies, ms};

pub fn behind_gateway(report: &mut Report) {
    let redis = Redis::start();
    let users_addr = loopback(free_port());
    let mut users = Platform::users(None, users_addr, &redis.url(), &[], ENVS);
    let users_url = format!("http://{users_addr}");
    let gateway = Platform::gateway(&users_url, &[], ENVS);
    let addr = gateway.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = Client::new(addr, PATIENCE);
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    let outcome = match client.get("/api/users?limit=1") {
                        Ok(r) => r.status.to_string(),
                        Err(e) => e.to_string(),
                    };
                    seen.push((start, Instant::now(), outcome));
                    std::thread::sleep(Duration::from_millis(5));
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    users.kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let restarting = Instant::now();
    let users = Platform::users(None, users_addr, &redis.url(), &[], ENVS);
    let listening = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let seen: Vec<(Instant, Instant, String)> = load
        .into_iter()
        .flat_map(|h| h.join().expect("load thread"))
        .collect();
    // Then one kept-alive client in sequence: any stale pooled connection would show as a 502.
    let mut after = Statuses::default();
    let mut client = Client::new(addr, PATIENCE);
    for _ in 0..100 {
        after.add(match client.get("/api/users?limit=1") {
            Ok(r) => r.status.to_string(),
            Err(e) => e.to_string(),
        });
    }

    let mut down = Statuses::default();
    let mut down_lat = Latencies::default();
    for (start, end, outcome) in seen
        .iter()
        .filter(|(s, e, _)| *s >= killed && *e <= restarting)
    {
        down.add(outcome);
        down_lat.push(*end - *start);
    }
    let first_ok = seen
        .iter()
        .filter(|(s, _, o)| *s >= listening && o == "200")
        .map(|(_, e, _)| *e - listening)
        .min();
    let mut recovered = Statuses::default();
    if let Some(first) = first_ok {
        for (_, _, outcome) in seen.iter().filter(|(s, _, _)| *s >= listening + first) {
            recovered.add(outcome);
        }
    }
    let before = seen.iter().filter(|(_, e, _)| *e < killed).count();

    report.figure("before", before);
    report.figure("while down", format!("{down} {}", down_lat.summary()));
    report.figure("p99", ms(down_lat.quantile(0.99)));
    report.figure("users restart", ms(listening - restarting));
    report.figure(
        "first 200 after listening",
        first_ok.map(ms).unwrap_or("never".into()),
    );
    report.figure("then", &recovered);
    report.figure("100 sequential", &after);
    report.promise(
        down.total() > 0 && down.other_than(&["502"]) == 0,
        format!("502 while users is down: {down}"),
    );
    report.promise(
        down_lat.quantile(0.99) < Duration::from_millis(100),
        format!("502 in under 100 ms (p99 {})", ms(down_lat.quantile(0.99))),
    );
    report.promise(
        down_lat.max() < Duration::from_secs(1),
        format!(
            "no 502 slower than the connect timeout (1 s): {}",
            ms(down_lat.max())
        ),
    );
    report.promise(
        first_ok.is_some_and(|d| d <= Duration::from_secs(1)),
        format!("recovers within 1 s: {first_ok:?}"),
    );
    report.promise(
        recovered.other_than(&["200"]) == 0,
        format!("200 only once recovered: {recovered}"),
    );
    report.promise(
        after.get("200") == 100,
        format!("no stuck pooled connection: {after}"),
    );
    drop(users);
}
