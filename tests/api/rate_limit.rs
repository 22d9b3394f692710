//! Rate limits at the gateway (issue 15): the client address, the per-pod "ip" policy before
//! any token, the "client" policy per pod or shared in a real Redis by several gateways, the
//! answers' headers, Redis failing, and no secret of the limiter's Redis URL in any output.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::auth::sample;
use crate::helpers::{
    Http, Process, RedisServer, Reply, TestGateway, json_lines, poll_until, run_binary_with_env,
    spawn_gateway,
};
use crate::jwks::{AUDIENCE, INITIAL_KEYS, ISSUER, JwksServer, Key, Token};
use crate::upstream::{Behaviour, FakeUpstream};

/// A path the Echo upstream answers with the request it received.
const ECHO: &str = "/api/users/headers";
const DEADLINE: Duration = Duration::from_secs(10);

async fn get_with(gw: &Http, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = gw.client.get(gw.url(path));
    for (name, value) in headers {
        req = req.append_header((*name, *value));
    }
    gw.send(req, None).await
}

async fn decisions(gw: &Http, policy: &str, decision: &str) -> Option<f64> {
    let text = gw.get("/metrics").await.text;
    sample(
        &text,
        "rate_limit_decisions_total",
        &[("policy", policy), ("decision", decision)],
    )
}

/// `Retry-After` in whole seconds.
fn retry_after(reply: &Reply) -> u64 {
    let value = reply.header("retry-after").unwrap_or_default();
    value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After in seconds: {value:?}"))
}

/// A gateway in front of `upstream` whose "client" policy (1000 a minute) is shared in
/// `redis`, with `extra` flags.
async fn shared_gateway(upstream: &str, redis: &RedisServer, extra: &[&str]) -> TestGateway {
    let url = redis.url();
    let flags = [
        "--rate-limit",
        "redis",
        "--rate-limit-requests",
        "1000",
        "--rate-limit-redis-url",
        &url,
    ];
    spawn_gateway(upstream, &[&flags[..], extra].concat()).await
}

/// A gateway in front of `upstream` that needs a token from `jwks` on every request, with
/// `extra` flags; returned once its key set has loaded.
async fn verifying_gateway(upstream: &str, jwks: &JwksServer, extra: &[&str]) -> TestGateway {
    let url = jwks.url();
    let flags = [
        "--auth-mode",
        "all",
        "--jwt-issuer",
        ISSUER,
        "--jwt-audiences",
        AUDIENCE,
        "--jwks-url",
        &url,
    ];
    let gw = spawn_gateway(upstream, &[&flags[..], extra].concat()).await;
    poll_until(DEADLINE, "the key set loads", async || {
        gw.get("/health/ready").await.status == 200
    })
    .await;
    gw
}

#[actix_web::test]
async fn the_ip_limit_answers_429_with_the_contract_body_retry_after_and_the_draft_headers() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let flags = [
        "--rate-limit",
        "local",
        "--rate-limit-ip-requests",
        "5",
        "--rate-limit-window",
        "60s",
    ];
    let gw = spawn_gateway(&echo.url(), &flags).await;
    // Counters exist at 0 before any request; the shared tier's failures are not counted here.
    assert_eq!(decisions(&gw, "ip", "allowed").await, Some(0.0));
    assert_eq!(decisions(&gw, "ip", "limited").await, Some(0.0));
    assert_eq!(decisions(&gw, "ip", "fail_open").await, None);
    assert_eq!(decisions(&gw, "client", "allowed").await, None);

    let first = std::time::Instant::now();
    for left in (0..5).rev() {
        let ok = gw.get(ECHO).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(
            ok.header("ratelimit-policy").as_deref(),
            Some(r#""ip";q=5;w=60"#)
        );
        // One request costs 12 s of the window: the quota is whole again 12 s per request
        // later, less the time the requests took (however slow this machine is today).
        let t: u64 = 12 * (5 - left);
        let lag = first.elapsed().as_secs() + 1;
        let seen = ok.header("ratelimit").unwrap_or_default();
        let reset: u64 = seen
            .strip_prefix(&format!(r#""ip";r={left};t="#))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{seen}: not r={left}"));
        assert!(
            (t.saturating_sub(lag)..=t).contains(&reset),
            "{seen}: t not within {lag} s of {t}"
        );
        assert_eq!(ok.header("retry-after"), None);
    }
    let refused = gw.get(ECHO).await;
    refused.assert_error(429, "rate_limited");
    assert_eq!(
        refused.header("ratelimit-policy").as_deref(),
        Some(r#""ip";q=5;w=60"#)
    );
    let seen = refused.header("ratelimit").unwrap_or_default();
    assert!(seen.starts_with(r#""ip";r=0;t="#), "{seen}");
    // The GCRA wait is one interval (12 s) less the time taken since the first request, plus
    // at most 10 % of jitter, in whole seconds.
    let wait = retry_after(&refused);
    let lag = first.elapsed().as_secs() + 1;
    assert!(
        (12u64.saturating_sub(lag)..=14).contains(&wait),
        "Retry-After {wait}"
    );
    assert_eq!(decisions(&gw, "ip", "allowed").await, Some(5.0));
    assert_eq!(decisions(&gw, "ip", "limited").await, Some(1.0));
    // /health and /metrics are the app's own routes: never limited.
    assert_eq!(gw.get("/health/live").await.status, 200);
    let tracked = gw.get("/metrics").await.text;
    assert!(
        tracked.contains("rate_limit_tracked_keys{policy=\"ip\"}"),
        "{tracked}"
    );
}

#[actix_web::test]
async fn legacy_headers_are_sent_on_request() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let flags = [
        "--rate-limit",
        "local",
        "--rate-limit-requests",
        "2",
        "--rate-limit-window",
        "10s",
        "--rate-limit-headers",
        "legacy",
    ];
    let gw = spawn_gateway(&echo.url(), &flags).await;
    let ok = gw.get(ECHO).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(ok.header("x-ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(ok.header("x-ratelimit-reset").as_deref(), Some("5"));
    assert_eq!(ok.header("ratelimit"), None);
    assert_eq!(gw.get(ECHO).await.status, 200);
    let refused = gw.get(ECHO).await;
    refused.assert_error(429, "rate_limited");
    assert_eq!(
        refused.header("x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert!((4..=6).contains(&retry_after(&refused)));
}

#[actix_web::test]
async fn hundreds_of_parallel_requests_admit_exactly_the_burst() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let flags = [
        "--rate-limit",
        "local",
        "--rate-limit-requests",
        "60",
        "--rate-limit-window",
        "60s",
        "--rate-limit-burst",
        "40",
    ];
    let gw = spawn_gateway(&echo.url(), &flags).await;
    let started = Instant::now();
    let replies = join_all((0..300).map(|_| gw.get(ECHO))).await;
    let elapsed = started.elapsed().as_secs();
    let admitted = replies.iter().filter(|r| r.status == 200).count();
    let limited = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!(admitted + limited, 300);
    // One more per second of refill (quota 60 per 60 s).
    assert!(
        (40..=41 + elapsed as usize).contains(&admitted),
        "{admitted} admitted in {elapsed} s"
    );
}

/// `platform gateway` as a process on a free port, in front of `upstream`, with `flags`.
fn gateway_process(upstream: &str, flags: &[&str]) -> (Process, Http) {
    let port = crate::helpers::free_port();
    let port_text = port.to_string();
    let args = [
        &[
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            &port_text,
            "--users-url",
            upstream,
        ][..],
        flags,
    ]
    .concat();
    let process = Process::spawn(&args, &[], port);
    (process, Http::new(port))
}

#[actix_web::test]
async fn three_gateways_sharing_one_redis_admit_the_quota_once_not_three_times() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let redis = RedisServer::start();
    let url = redis.url();
    let flags = [
        "--rate-limit",
        "redis",
        "--rate-limit-requests",
        "60",
        "--rate-limit-window",
        "60s",
        "--rate-limit-redis-url",
        &url,
        "--rate-limit-redis-timeout",
        "2s",
    ];
    let gateways: Vec<(Process, Http)> = (0..3)
        .map(|_| gateway_process(&echo.url(), &flags))
        .collect();
    let started = Instant::now();
    let replies = join_all((0..300).map(|i| gateways[i % 3].1.get(ECHO))).await;
    let elapsed = started.elapsed().as_secs();
    let admitted = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(admitted + limited.len(), 300);
    assert!(
        (60..=61 + elapsed as usize).contains(&admitted),
        "{admitted} admitted in {elapsed} s by three gateways"
    );
    for reply in &limited {
        assert!(retry_after(reply) >= 1);
        assert!(
            reply
                .header("ratelimit")
                .is_some_and(|v| v.starts_with(r#""client";r=0;"#))
        );
    }
    // Decided in Redis (one key, expiring), not per pod.
    let keys = redis.cli(&["--scan", "--pattern", "ratelimit:*"]);
    assert_eq!(keys, "ratelimit:client:ip:127.0.0.1");
    let ttl: i64 = redis
        .cli(&["PTTL", "ratelimit:client:ip:127.0.0.1"])
        .parse()
        .expect("a TTL");
    assert!((1..=61_000).contains(&ttl), "{ttl}");
    let mut fail_open = 0.0;
    for (_, http) in &gateways {
        fail_open += decisions(http, "client", "fail_open").await.unwrap_or(-1.0);
    }
    assert_eq!(fail_open, 0.0);
}

#[actix_web::test]
async fn a_shared_redis_that_dies_falls_back_to_the_local_table_then_recovers() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let mut redis = RedisServer::start();
    let gw = shared_gateway(
        &echo.url(),
        &redis,
        &["--rate-limit-redis-timeout", "100ms"],
    )
    .await;
    assert_eq!(gw.get(ECHO).await.status, 200);
    assert_eq!(decisions(&gw, "client", "allowed").await, Some(1.0));
    assert_eq!(decisions(&gw, "client", "fail_open").await, Some(0.0));

    redis.kill();
    let started = Instant::now();
    let replies = join_all((0..50).map(|_| gw.get(ECHO))).await;
    let took = started.elapsed();
    assert!(replies.iter().all(|r| r.status == 200));
    // Bounded by the Redis timeout and then the back-off, never by a hang (generous bound).
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(decisions(&gw, "client", "fail_open").await, Some(50.0));
    assert!(replies[0].header("ratelimit").is_some());

    redis.restart();
    poll_until(DEADLINE, "decisions are made in Redis again", async || {
        gw.get(ECHO).await;
        !redis
            .cli(&["--scan", "--pattern", "ratelimit:*"])
            .is_empty()
    })
    .await;
}

#[actix_web::test]
async fn in_closed_mode_a_dead_shared_redis_refuses_with_503() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let mut redis = RedisServer::start();
    let gw = shared_gateway(
        &echo.url(),
        &redis,
        &["--rate-limit-failure-mode", "closed"],
    )
    .await;
    assert_eq!(gw.get(ECHO).await.status, 200);
    assert_eq!(decisions(&gw, "client", "fail_closed").await, Some(0.0));
    redis.kill();
    let refused = gw.get(ECHO).await;
    refused.assert_error(503, "overloaded");
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    assert_eq!(decisions(&gw, "client", "fail_closed").await, Some(1.0));
    redis.restart();
    poll_until(DEADLINE, "Redis decides again", async || {
        gw.get(ECHO).await.status == 200
    })
    .await;
}

#[actix_web::test]
async fn a_flood_of_bad_tokens_is_limited_before_any_verification() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let flags = ["--rate-limit", "local", "--rate-limit-ip-requests", "5"];
    let gw = verifying_gateway(&echo.url(), &jwks, &flags).await;
    let forged = format!("Bearer {}", Token::new(Key::Es256).sign_corrupted());
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let reply = get_with(&gw, ECHO, &[("Authorization", &forged)]).await;
        if reply.status == 401 {
            // A refused credential counts against the limit and says so.
            assert!(reply.header("ratelimit").is_some(), "{:?}", reply.headers);
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses[..5], [401; 5]);
    assert_eq!(statuses[5..], [429; 15]);
    let text = gw.get("/metrics").await.text;
    let verified = sample(
        &text,
        "authentication_attempts_total",
        &[("reason", "bad_signature")],
    );
    assert_eq!(verified, Some(5.0), "only 5 tokens were verified");
}

/// Refused credentials are charged to their address' shared "client" quota: two gateways
/// sharing one Redis limit a flood of bad tokens together, with no per-pod "ip" policy at all.
#[actix_web::test]
async fn bad_tokens_count_against_the_shared_client_quota_of_their_address() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let redis = RedisServer::start();
    let url = redis.url();
    let flags = [
        "--rate-limit",
        "redis",
        "--rate-limit-requests",
        "4",
        "--rate-limit-redis-url",
        &url,
    ];
    let (a, b) = (
        verifying_gateway(&echo.url(), &jwks, &flags).await,
        verifying_gateway(&echo.url(), &jwks, &flags).await,
    );
    let forged = format!("Bearer {}", Token::new(Key::Es256).sign_corrupted());
    let mut statuses = Vec::new();
    for gw in [&a, &b, &a, &b, &a, &b] {
        statuses.push(
            get_with(gw, ECHO, &[("Authorization", &forged)])
                .await
                .status,
        );
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429]);
}

#[actix_web::test]
async fn the_client_policy_counts_a_verified_subject_wherever_it_comes_from() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let flags = [
        "--trusted-proxies",
        "127.0.0.1",
        "--rate-limit",
        "local",
        "--rate-limit-requests",
        "2",
    ];
    let gw = verifying_gateway(&echo.url(), &jwks, &flags).await;
    let alice = format!("Bearer {}", Token::new(Key::Es256).sub("alice").sign());
    let bob = format!("Bearer {}", Token::new(Key::Es256).sub("bob").sign());
    // Alice from two addresses: one quota.
    for from in ["1.1.1.1", "2.2.2.2"] {
        let reply = get_with(
            &gw,
            ECHO,
            &[("Authorization", &alice), ("X-Forwarded-For", from)],
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let refused = get_with(
        &gw,
        ECHO,
        &[("Authorization", &alice), ("X-Forwarded-For", "3.3.3.3")],
    )
    .await;
    refused.assert_error(429, "rate_limited");
    // Bob from Alice's address: his own quota.
    let reply = get_with(
        &gw,
        ECHO,
        &[("Authorization", &bob), ("X-Forwarded-For", "1.1.1.1")],
    )
    .await;
    assert_eq!(reply.status, 200);
}

#[actix_web::test]
async fn a_spoofed_x_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let flags = ["--rate-limit", "local", "--rate-limit-ip-requests", "2"];
    let gw = spawn_gateway(&echo.url(), &flags).await;
    for spoof in ["1.1.1.1", "2.2.2.2"] {
        let reply = get_with(&gw, ECHO, &[("X-Forwarded-For", spoof)]).await;
        assert_eq!(reply.status, 200);
        // What an untrusted peer claims is not passed on either: the next hop sees the client.
        assert_eq!(
            reply.body["headers"]["x-forwarded-for"],
            serde_json::json!(["127.0.0.1"])
        );
    }
    get_with(&gw, ECHO, &[("X-Forwarded-For", "3.3.3.3")])
        .await
        .assert_error(429, "rate_limited");
    gw.get(ECHO).await.assert_error(429, "rate_limited");
    wait_for_remote_addrs(&gw, 4);
    assert!(remote_addrs(&gw).iter().all(|a| a == "127.0.0.1"));
}

#[actix_web::test]
async fn behind_trusted_proxies_the_client_is_the_first_untrusted_hop_from_the_right() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let flags = [
        "--trusted-proxies",
        "127.0.0.0/8, 10.0.0.0/8",
        "--rate-limit",
        "local",
        "--rate-limit-ip-requests",
        "2",
    ];
    let gw = spawn_gateway(&echo.url(), &flags).await;
    let chain = "1.2.3.4, 5.6.7.8";
    for _ in 0..2 {
        assert_eq!(
            get_with(&gw, ECHO, &[("X-Forwarded-For", chain)])
                .await
                .status,
            200
        );
    }
    // Same client behind one more trusted hop; a different leftmost entry changes nothing.
    get_with(
        &gw,
        ECHO,
        &[("X-Forwarded-For", "9.9.9.9, 5.6.7.8, 10.0.0.1")],
    )
    .await
    .assert_error(429, "rate_limited");
    // Another client has its own quota; upstream, the chain starts at the client.
    let other = get_with(&gw, ECHO, &[("X-Forwarded-For", "1.2.3.4, 5.6.7.9")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(
        other.body["headers"]["x-forwarded-for"],
        serde_json::json!(["5.6.7.9, 127.0.0.1"])
    );
    wait_for_remote_addrs(&gw, 4);
    assert_eq!(
        remote_addrs(&gw),
        vec!["5.6.7.8", "5.6.7.8", "5.6.7.8", "5.6.7.9"]
    );
    let starting = json_lines(&gw.logs)
        .into_iter()
        .find(|l| l["msg"] == "starting")
        .expect("the start-up line");
    assert_eq!(starting["trusted_proxies"], "127.0.0.0/8,10.0.0.0/8");
    assert_eq!(starting["rate_limit"], "local");
    assert_eq!(starting["rate_limit_ip_requests"], 2);
}

fn remote_addrs(gw: &TestGateway) -> Vec<String> {
    json_lines(&gw.logs)
        .into_iter()
        .filter(|l| l["msg"] == "request" && l["path"] == ECHO)
        .map(|l| l["remote_addr"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn wait_for_remote_addrs(gw: &TestGateway, n: usize) {
    crate::helpers::wait_until(DEADLINE, || remote_addrs(gw).len() >= n);
}

const SECRET: &str = "pw-Rl7c9q";

#[actix_web::test]
async fn the_password_of_the_limiter_s_redis_never_reaches_a_log_line_or_an_error() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let redis = RedisServer::start_with_password(SECRET);
    let url = format!("redis://:{SECRET}@127.0.0.1:{}", redis.port);
    let (mut process, http) = gateway_process(
        &echo.url(),
        &[
            "--rate-limit",
            "redis",
            "--rate-limit-requests",
            "100",
            "--rate-limit-redis-url",
            &url,
        ],
    );
    assert_eq!(http.get(ECHO).await.status, 200);
    assert_eq!(decisions(&http, "client", "allowed").await, Some(1.0));
    process.sigterm();
    process.wait_exit(DEADLINE);
    let out = process.stdout();
    assert!(out.contains("rate_limit_redis_url"), "{out}");
    assert!(out.contains(":***@"), "{out}");
    assert!(!out.contains(SECRET), "{out}");

    // The password apart from the URL, from the environment (a Kubernetes Secret).
    let port = crate::helpers::free_port();
    let port_text = port.to_string();
    let plain = redis.url();
    let args = [
        "gateway",
        "--host",
        "127.0.0.1",
        "--port",
        &port_text,
        "--users-url",
        &echo.url(),
        "--rate-limit",
        "redis",
        "--rate-limit-requests",
        "100",
        "--rate-limit-redis-url",
        &plain,
    ];
    let mut process = Process::spawn(&args, &[("RATE_LIMIT_REDIS_PASSWORD", SECRET)], port);
    let http = Http::new(port);
    assert_eq!(http.get(ECHO).await.status, 200);
    assert_eq!(
        decisions(&http, "client", "allowed").await,
        Some(1.0),
        "decided in Redis"
    );
    assert_eq!(decisions(&http, "client", "fail_open").await, Some(0.0));
    process.sigterm();
    process.wait_exit(DEADLINE);
    assert!(!process.stdout().contains(SECRET));

    // A URL that does not parse, and a mode without what it needs: one line, no secret.
    let bad = format!("redis://:{SECRET}@");
    for (args, envs) in [
        (
            vec!["gateway", "--rate-limit-redis-url", bad.as_str()],
            vec![],
        ),
        (
            vec!["gateway"],
            vec![("RATE_LIMIT_REDIS_URL", bad.as_str())],
        ),
    ] {
        let (code, out, err) = run_binary_with_env(&args, &envs);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("--rate-limit-redis-url"), "{err}");
        assert!(!out.contains(SECRET) && !err.contains(SECRET), "{err}");
    }
    let (code, _, err) = run_binary_with_env(&["gateway", "--rate-limit", "redis"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--rate-limit-requests"), "{err}");
}

#[actix_web::test]
async fn a_frozen_shared_redis_costs_one_timeout_not_one_per_request() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let redis = RedisServer::start();
    let gw = shared_gateway(
        &echo.url(),
        &redis,
        &["--rate-limit-redis-timeout", "300ms"],
    )
    .await;
    assert_eq!(gw.get(ECHO).await.status, 200);
    redis.pause();
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(gw.get(ECHO).await.status, 200);
    }
    let took = started.elapsed();
    redis.resume();
    // One request waits out the timeout; the back-off spares the others (20 × 300 ms = 6 s
    // if each waited; a generous bound for a loaded machine).
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(decisions(&gw, "client", "fail_open").await >= Some(1.0));
}

#[actix_web::test]
async fn ipv6_clients_share_the_quota_of_their_64() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let flags = [
        "--trusted-proxies",
        "127.0.0.1",
        "--rate-limit",
        "local",
        "--rate-limit-ip-requests",
        "2",
    ];
    let gw = spawn_gateway(&echo.url(), &flags).await;
    for client in ["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"] {
        let reply = get_with(&gw, ECHO, &[("X-Forwarded-For", client)]).await;
        assert_eq!(reply.status, 200);
    }
    get_with(&gw, ECHO, &[("X-Forwarded-For", "2001:db8:1:2::abcd")])
        .await
        .assert_error(429, "rate_limited");
    let next = get_with(&gw, ECHO, &[("X-Forwarded-For", "2001:db8:1:3::1")]).await;
    assert_eq!(next.status, 200, "the next /64 is another client");
    wait_for_remote_addrs(&gw, 4);
    // The log keeps the whole address.
    assert_eq!(remote_addrs(&gw)[1], "2001:db8:1:2:ffff:ffff:ffff:ffff");
}
