//! The monitoring artifacts (`k8s/monitoring`) against the real binary: every PromQL
//! expression in the alert rules and dashboards names only metrics the roles export, every
//! alert carries its runbook, and a real Prometheus scrapes `platform all` with the local
//! configuration and computes a p99 from our histograms.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{Http, Process, RedisServer, free_port, wait_until};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/monitoring")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Series that come from elsewhere, by name: kube-state-metrics (PodRestartLoop,
/// HPAMaxReplicas) and Prometheus itself.
const EXTERNAL_METRICS: &[&str] = &[
    "kube_pod_container_status_restarts_total",
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
    "up",
];

/// Words that group or modify, followed by a parenthesized list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATORS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN",
];

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// keywords, label names (inside `{}` or grouping clauses), durations or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Index after the `close` that ends what starts at `from`, stepping over quoted strings.
    let skip_until = |from: usize, close: char| -> usize {
        let mut j = from + 1;
        let mut quote = None;
        while j < chars.len() {
            match (quote, chars[j]) {
                (Some(_), '\\') => j += 1,
                (Some(q), c) if c == q => quote = None,
                (None, c) if c == close => break,
                (None, '"' | '\'' | '`') if close != chars[j] => quote = Some(chars[j]),
                _ => {}
            }
            j += 1;
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_until(i, c),
            '{' => i = skip_until(i, '}'),
            '[' => i = skip_until(i, ']'),
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_until(i, '}');
                } else {
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let rest: String = chars[next..].iter().take(8).collect();
                // `sum by (…) (…)`: an aggregation whose grouping comes first.
                let grouped = rest.starts_with("by") || rest.starts_with("without");
                let is_grouping = GROUPING.contains(&word.as_str());
                let keyword = is_grouping || OPERATORS.contains(&word.as_str());
                let called = chars.get(next) == Some(&'(') || (grouped && !keyword);
                if called && is_grouping {
                    i = skip_until(next, ')');
                } else if !called && !keyword {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every `expr:` of a Prometheus rule file (one-line or `|` block).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        let value = value.trim();
        if value == "|" || value == ">" || value == "|-" || value == ">-" {
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            exprs.push(block.join(" "));
        } else {
            exprs.push(value.trim_matches(['\'', '"']).to_owned());
        }
    }
    exprs
}

/// Every PromQL query of a Grafana dashboard: panel targets and template variables
/// (`label_values(<selector>, label)` contributes its selector).
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        ("query" | "definition", Value::String(q))
                            if q.starts_with("label_values(") =>
                        {
                            let inner = &q["label_values(".len()..q.len() - 1];
                            let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s);
                            out.push(selector.to_owned());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    walk(dashboard, &mut exprs);
    exprs
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = monitoring_dir().join("dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("dashboards dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let json =
                serde_json::from_str(&read(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The series names a `/metrics` page declares (histograms expand to _bucket/_sum/_count).
fn exported_names(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            names.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Traffic through both roles that makes every labelled series exist: creates, reads,
/// updates, deletes, a 404, a 400, an unmatched path, a scrape.
async fn traffic(gateway: &Http, users: &Http, round: usize) {
    let created = gateway
        .json(
            "POST",
            "/api/users",
            &format!(r#"{{"name":"Load {round}","email":"load{round}@example.com"}}"#),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(gateway.get(&format!("/api/users/{id}")).await.status, 200);
    assert_eq!(
        gateway
            .json(
                "PATCH",
                &format!("/api/users/{id}"),
                r#"{"name":"Renamed"}"#
            )
            .await
            .status,
        200
    );
    assert_eq!(gateway.get("/api/users?limit=5").await.status, 200);
    assert_eq!(
        gateway.delete(&format!("/api/users/{id}")).await.status,
        204
    );
    assert_eq!(gateway.get(&format!("/api/users/{id}")).await.status, 404);
    assert_eq!(gateway.get("/api/users/not-a-uuid").await.status, 400);
    assert_eq!(gateway.get("/no/such/path").await.status, 404);
    assert_eq!(users.get("/health/ready").await.status, 200);
    assert_eq!(users.get("/metrics").await.status, 200);
}

/// A JWK set with one ES256 key (RFC 7515 A.3's), for a gateway that verifies tokens.
const STATIC_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"static","alg":"ES256","use":"sig","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

#[test]
fn the_promql_extractor_finds_metric_names_only() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, job) (rate(a_bucket{route!~"/health.*|x{1}"}[$__rate_interval])))
           > 2 unless on (namespace) sum without (pod) (b_total offset 5m) / ignoring(x) c:rate5m and time() - d{job=~"$job"} > 1e3"#,
    );
    let expected: BTreeSet<String> = ["a_bucket", "b_total", "c:rate5m", "d"]
        .map(String::from)
        .into();
    assert_eq!(names, expected);
}

#[actix_web::test]
async fn rules_and_dashboards_name_only_metrics_the_binary_exports() {
    let redis = RedisServer::start();
    // Token verification on (a key set, no mode that needs tokens) and both rate-limit tiers (a
    // quota no test reaches, the shared one in the test's Redis): their series exist too.
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, STATIC_JWKS).expect("write the key set");
    let jwks = jwks.to_string_lossy().into_owned();
    let (process, users_port) = Process::all_with(
        &redis.url(),
        &[
            ("JWT_ISSUER", "https://issuer.test"),
            ("JWKS_FILE", &jwks),
            ("RATE_LIMIT", "redis"),
            ("RATE_LIMIT_REDIS_URL", &redis.url()),
            ("RATE_LIMIT_IP_REQUESTS", "1000000"),
            ("RATE_LIMIT_REQUESTS", "1000000"),
        ],
    );
    let (gateway, users) = (Http::new(process.port), Http::new(users_port));
    traffic(&gateway, &users, 0).await;
    // A refused upstream call is the one series this traffic cannot make without a dead users
    // role; `upstream_request_duration_seconds` exists already from the proxied requests.
    // Each role's port shows its own series: together they are what the binary exports.
    let page = gateway.get("/metrics").await.text + &users.get("/metrics").await.text;
    let mut known = exported_names(&page);
    known.extend(EXTERNAL_METRICS.iter().map(|s| s.to_string()));
    for must in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "upstream_request_duration_seconds_bucket",
        "redis_operation_duration_seconds_bucket",
        "users_total",
        "users_created_total",
        "users_deleted_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "authentication_attempts_total",
        "jwks_refresh_total",
        "jwks_keys",
        "jwks_last_success_timestamp_seconds",
        "rate_limit_decisions_total",
        "rate_limit_tracked_keys",
        "http_requests_shed_total",
    ] {
        assert!(
            known.contains(must),
            "the binary does not export {must}:\n{page}"
        );
    }

    let mut checked = 0;
    let rules = read(&monitoring_dir().join("alerts.yml"));
    let mut sources: Vec<(String, String)> = rule_exprs(&rules)
        .into_iter()
        .map(|e| ("alerts.yml".to_owned(), e))
        .collect();
    assert_eq!(sources.len(), 13, "one expr per alert");
    for (file, dashboard) in dashboards() {
        let exprs = dashboard_exprs(&dashboard);
        assert!(
            exprs.len() >= 5,
            "{file}: too few queries found ({})",
            exprs.len()
        );
        sources.extend(exprs.into_iter().map(|e| (file.clone(), e)));
    }
    for (file, expr) in &sources {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{file}: no metric in {expr}");
        for name in names {
            assert!(
                known.contains(&name),
                "{file}: `{name}` is not exported by the binary (in {expr})"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} metric references checked");
}

#[test]
fn every_alert_has_summary_description_and_a_runbook_section() {
    let rules = read(&monitoring_dir().join("alerts.yml"));
    let runbooks = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks.md"));
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    let names: Vec<&str> = blocks
        .iter()
        .filter_map(|b| b.lines().next())
        .map(str::trim)
        .collect();
    assert_eq!(
        names,
        [
            "HighErrorRate",
            "HighP99Latency",
            "PodRestartLoop",
            "RedisDown",
            "HPAMaxReplicas",
            "UpstreamErrors",
            "RedisSlow",
            "JwksUnavailable",
            "JwksStale",
            "HighTokenRejectionRate",
            "RateLimitStoreUnavailable",
            "HighRateLimiting",
            "LoadShedding"
        ]
    );
    for (name, block) in names.iter().zip(&blocks) {
        for field in ["summary:", "description:", "runbook_url:", "severity:"] {
            assert!(block.contains(field), "{name} has no {field}");
        }
        let url = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap_or_default();
        let anchor = url
            .rsplit_once("docs/runbooks.md#")
            .map(|(_, a)| a)
            .unwrap_or_default();
        assert_eq!(anchor, name.to_lowercase(), "{name}: runbook_url {url}");
        assert!(
            anchors.contains(anchor),
            "{name}: docs/runbooks.md has no section `## {name}`"
        );
    }
}

/// A real Prometheus (Debian package) on loopback, killed on drop.
struct Prometheus {
    child: Child,
    http: Http,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Runs the repository's local config with its targets moved to `gateway` and `users`,
    /// and 1 s intervals.
    fn start(gateway: &str, users: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = read(&monitoring_dir().join("prometheus-local.yml"))
            .replace("127.0.0.1:3000", gateway)
            .replace("127.0.0.1:3001", users)
            .replace("scrape_interval: 5s", "scrape_interval: 1s")
            .replace("evaluation_interval: 5s", "evaluation_interval: 1s")
            .replace("scrape_timeout: 2s", "scrape_timeout: 1s");
        assert!(
            config.contains(gateway) && config.contains(users),
            "the local config scrapes 127.0.0.1:3000 and 127.0.0.1:3001"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        std::fs::copy(
            monitoring_dir().join("alerts.yml"),
            dir.path().join("alerts.yml"),
        )
        .expect("copy rules");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("`prometheus` runs (Debian package prometheus; `make test` installs it)");
        // Its HTTP API answers once the listener is up (it loads the rules before that).
        wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            child,
            http: Http::new(port),
            _dir: dir,
        }
    }

    async fn query(&self, promql: &str) -> Vec<Value> {
        let q: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let reply = self.http.get(&format!("/api/v1/query?query={q}")).await;
        if reply.status != 200 {
            return Vec::new();
        }
        reply.body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

#[actix_web::test]
async fn a_real_prometheus_scrapes_platform_all_and_computes_p99() {
    let redis = RedisServer::start();
    let (process, users_port) = Process::all(&redis.url());
    let (gateway, users) = (Http::new(process.port), Http::new(users_port));
    let prometheus = Prometheus::start(
        &format!("127.0.0.1:{}", process.port),
        &format!("127.0.0.1:{users_port}"),
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    let (mut up, mut not_found, mut unmatched, mut p99, mut rules) = (false, false, false, None, 0);
    while Instant::now() < deadline
        && !(up && not_found && unmatched && p99.is_some() && rules == 13)
    {
        round += 1;
        traffic(&gateway, &users, round).await;
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;

        up = prometheus
            .query(r#"up{job=~"gateway|users",namespace="local"} == 1"#)
            .await
            .len()
            == 2;
        not_found = !prometheus
            .query(r#"http_requests_total{job="gateway",method="GET",route="/api/users/{tail}",status_code="404"} > 0"#)
            .await
            .is_empty();
        unmatched = !prometheus
            .query(r#"http_requests_total{route="unmatched",status_code="404"}"#)
            .await
            .is_empty();
        p99 = prometheus
            .query(r#"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{job="gateway",route="/api/users/{tail}"}[10s])))"#)
            .await
            .first()
            .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
            .filter(|v| v.is_finite() && *v > 0.0);
        let reply = prometheus.http.get("/api/v1/rules?type=alert").await;
        rules = if reply.status == 200 {
            reply.body["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .filter(|r| r["health"] == "ok")
                .count()
        } else {
            0
        };
    }
    assert!(up, "Prometheus never scraped both roles (up == 1)");
    assert!(
        not_found,
        "no 404 series with method/route/status_code labels"
    );
    assert!(unmatched, "no route=\"unmatched\" series");
    let p99 = p99.expect("no p99 computed from http_request_duration_seconds_bucket");
    assert!(p99 < 10.0, "p99 {p99} s is outside the buckets");
    assert_eq!(
        rules, 13,
        "Prometheus did not load all 13 alert rules healthy"
    );
}
