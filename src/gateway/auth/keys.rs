//! The key set tokens are verified with: loaded from a JWKS URL or file by one task, refreshed
//! on a schedule, fetched once more (single-flight, rate-limited) for an unknown key id; the
//! last good set keeps serving when a refresh fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::web;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use metrics::{Counter, Gauge, counter, gauge};
use slog::{Logger, info, warn};
use tokio::sync::{mpsc, watch};

use crate::config::AuthSettings;
use crate::telemetry::metrics::Metrics;

/// Longest a provider's `Cache-Control: max-age` may stretch the schedule: past two missed
/// refreshes, JwksStale fires (30 min).
const MAX_AGE_CEILING: Duration = Duration::from_secs(15 * 60);
/// Longest wait between retries while a fetch keeps failing.
const RETRY_CEILING: Duration = Duration::from_secs(30);
/// How often a key file is looked at for changes.
const FILE_POLL: Duration = Duration::from_secs(1);
/// Largest key set accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One verification key of the set.
pub struct Key {
    pub key: DecodingKey,
    /// The algorithm the JWK names, when it names one: the token's must then be that one.
    pub alg: Option<Algorithm>,
}

/// A loaded key set: by key id, and the keys without one.
#[derive(Default)]
struct Loaded {
    by_id: HashMap<String, Arc<Key>>,
    unnamed: Vec<Arc<Key>>,
}

impl Loaded {
    fn len(&self) -> usize {
        self.by_id.len() + self.unnamed.len()
    }

    /// The key for `kid`; a token without one may use the set's only key.
    fn get(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        match kid {
            Some(kid) => self.by_id.get(kid).cloned(),
            None if self.len() == 1 => self.by_id.values().chain(&self.unnamed).next().cloned(),
            None => None,
        }
    }
}

/// Why no key was found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No key set has loaded yet (the provider has been down since start).
    NoKeys,
    /// The set has no key with this id, even after asking the provider again.
    Unknown,
}

/// Where the key set comes from.
#[derive(Clone, Debug)]
enum Source {
    Url {
        url: String,
        /// The URL as logs show it: no credentials, no query.
        shown: String,
        ca_file: Option<PathBuf>,
    },
    File(PathBuf),
}

/// The key set, shared by every worker of the gateway.
pub struct KeySet {
    current: RwLock<Option<Arc<Loaded>>>,
    /// Counts the key sets loaded: a verification made with an older one is not reused.
    version: AtomicU64,
    /// The finished fetch attempts and whether the last one loaded: waiters for a refetch
    /// watch it.
    attempts: watch::Sender<Attempts>,
    refetch: mpsc::Sender<()>,
    fetching: Mutex<Fetching>,
    /// What the current set was loaded from: an unchanged document changes nothing.
    fingerprint: Mutex<Option<u64>>,
    min_refetch: Duration,
    timeout: Duration,
    metrics: KeyMetrics,
}

#[derive(Clone, Copy, Default)]
struct Attempts {
    finished: u64,
    last_loaded: bool,
}

/// When the last fetch started (refetches are rate-limited) and whether one is under way.
#[derive(Default)]
struct Fetching {
    started: Option<Instant>,
    in_flight: bool,
}

struct KeyMetrics {
    ok: Counter,
    error: Counter,
    keys: Gauge,
    last_success: Gauge,
}

impl KeySet {
    /// The key set of `settings`, and the task that loads and refreshes it (spawn it on a
    /// runtime that lives as long as the gateway).
    pub fn start(
        settings: &AuthSettings,
        metrics: &Metrics,
        log: Logger,
    ) -> anyhow::Result<(Arc<Self>, impl Future<Output = ()> + 'static)> {
        let source = match (&settings.jwks_url, &settings.jwks_file) {
            (Some(url), _) => Source::Url {
                url: url.to_string(),
                shown: shown_url(url),
                ca_file: settings.jwks_ca_file.clone(),
            },
            (None, Some(file)) => Source::File(file.clone()),
            (None, None) => anyhow::bail!("no key source: --jwks-url or --jwks-file"),
        };
        let client = match &source {
            Source::Url { ca_file, .. } => Some(tls_config(ca_file.as_deref())?),
            Source::File(_) => None,
        };
        let metrics = metrics.register(|| KeyMetrics {
            ok: counter!("jwks_refresh_total", "result" => "ok"),
            error: counter!("jwks_refresh_total", "result" => "error"),
            keys: gauge!("jwks_keys"),
            last_success: gauge!("jwks_last_success_timestamp_seconds"),
        });
        let (refetch, requests) = mpsc::channel(1);
        let keys = Arc::new(Self {
            current: RwLock::new(None),
            version: AtomicU64::new(0),
            attempts: watch::Sender::new(Attempts::default()),
            refetch,
            fetching: Mutex::default(),
            fingerprint: Mutex::new(None),
            min_refetch: settings.jwks_min_refetch,
            timeout: settings.jwks_timeout,
            metrics,
        });
        let task = refresh(
            keys.clone(),
            source,
            client,
            settings.jwks_refresh,
            requests,
            log,
        );
        Ok((keys, task))
    }

    /// Which key set is current (it changes with every load).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Whether a key set has loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.current.read().is_ok_and(|c| c.is_some())
    }

    fn lookup(&self, kid: Option<&str>) -> Result<Arc<Key>, Missing> {
        let current = self.current.read().ok().and_then(|c| c.clone());
        match current {
            None => Err(Missing::NoKeys),
            Some(loaded) => loaded.get(kid).ok_or(Missing::Unknown),
        }
    }

    /// The key for a token's `kid`. A miss waits for the fetch under way, or asks for one:
    /// at most one per `--jwks-min-refetch` whatever the number of tokens (every waiter wakes
    /// when it ends). A refetch that failed leaves the gateway unable to tell (`NoKeys`).
    pub async fn find(&self, kid: Option<&str>) -> Result<Arc<Key>, Missing> {
        let missing = match self.lookup(kid) {
            Ok(key) => return Ok(key),
            Err(missing) => missing,
        };
        let mut finished = self.attempts.subscribe();
        let (in_flight, may_start) = self
            .fetching
            .lock()
            .map(|f| {
                let may_start = f.started.is_none_or(|at| at.elapsed() >= self.min_refetch);
                (f.in_flight, may_start)
            })
            .unwrap_or((false, false));
        if !in_flight {
            if !may_start {
                return Err(missing);
            }
            // A full channel means a refetch is already asked for: wait for that one. A closed
            // one means no task runs any more: nothing to wait for.
            if let Err(mpsc::error::TrySendError::Closed(())) = self.refetch.try_send(()) {
                return Err(missing);
            }
        }
        let waited = tokio::time::timeout(
            self.timeout.saturating_add(Duration::from_millis(500)),
            finished.changed(),
        )
        .await;
        let loaded = waited.is_ok() && finished.borrow().last_loaded;
        match self.lookup(kid) {
            Ok(key) => Ok(key),
            Err(Missing::Unknown) if !loaded => Err(Missing::NoKeys),
            Err(missing) => Err(missing),
        }
    }

    fn may_fetch(&self) -> bool {
        self.fetching
            .lock()
            .map(|f| f.started.is_none_or(|at| at.elapsed() >= self.min_refetch))
            .unwrap_or(false)
    }

    fn fetch_started(&self) {
        if let Ok(mut f) = self.fetching.lock() {
            *f = Fetching {
                started: Some(Instant::now()),
                in_flight: true,
            };
        }
    }

    fn fetch_finished(&self, loaded: bool) {
        if let Ok(mut f) = self.fetching.lock() {
            f.in_flight = false;
        }
        self.attempts.send_modify(|a| {
            a.finished += 1;
            a.last_loaded = loaded;
        });
    }

    /// Wakes the waiters of a refetch that was not made (too soon after the last fetch).
    fn nothing_fetched(&self) {
        self.attempts.send_modify(|a| a.finished += 1);
    }

    /// A document fetched or read whole: the set it holds becomes current if it differs
    /// from the one loaded (only then do cached verifications go stale).
    fn loaded(&self, body: &[u8], set: Loaded) {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut hasher);
        let fingerprint = hasher.finish();
        let changed = self
            .fingerprint
            .lock()
            .map(|mut seen| seen.replace(fingerprint) != Some(fingerprint))
            .unwrap_or(true);
        if changed || !self.is_loaded() {
            let count = set.len();
            if let Ok(mut current) = self.current.write() {
                *current = Some(Arc::new(set));
            }
            self.version.fetch_add(1, Ordering::AcqRel);
            self.metrics.keys.set(count as f64);
        }
        self.metrics.ok.increment(1);
        self.confirmed();
    }

    /// The current set is known to be the provider's now (`jwks_last_success_timestamp_seconds`).
    fn confirmed(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.metrics.last_success.set(now.as_secs_f64());
    }
}

/// A URL as logs may show it: scheme, host, port and path; no credentials, no query.
fn shown_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// The TLS settings of the JWKS client: the system's roots, and the operator's CA file.
fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context as _;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates leave only the CA file, which a private provider needs anyway.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect)
            .with_context(|| {
                format!(
                    "--jwks-ca-file {}: not a PEM certificate file",
                    path.display()
                )
            })?;
        anyhow::ensure!(
            !certs.is_empty(),
            "--jwks-ca-file {}: no certificate in it",
            path.display()
        );
        for cert in certs {
            roots.add(cert).with_context(|| {
                format!(
                    "--jwks-ca-file {}: a certificate is not usable",
                    path.display()
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS settings for the JWKS client")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Loads the key set, then keeps it fresh: on the schedule (a `Cache-Control: max-age` within
/// bounds, else `--jwks-refresh`), on a refetch request, and with growing retries after a
/// failure. A file is read every second and its set loaded when the content changed.
async fn refresh(
    keys: Arc<KeySet>,
    source: Source,
    tls: Option<Arc<rustls::ClientConfig>>,
    every: Duration,
    mut requests: mpsc::Receiver<()>,
    log: Logger,
) {
    let client = tls.map(|tls| {
        awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(tls).timeout(keys.timeout))
            .timeout(keys.timeout)
            // A redirect could lead to plain http, where anyone on the path could add a key.
            .disable_redirects()
            .finish()
    });
    let mut next = tokio::time::Instant::now();
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            request = requests.recv() => {
                if request.is_none() {
                    return;
                }
                if !keys.may_fetch() {
                    keys.nothing_fetched();
                    continue;
                }
            }
        }
        keys.fetch_started();
        let outcome = match (&source, &client) {
            (Source::Url { url, shown, .. }, Some(client)) => fetch(client, url, keys.timeout)
                .await
                .map_err(|e| e.context(format!("GET {shown}"))),
            (Source::File(path), _) => read_file(path).map(|(body, set)| (body, set, None)),
            (Source::Url { .. }, None) => Err(anyhow::anyhow!("no HTTP client for the key set")),
        };
        let wait = match outcome {
            Ok((body, set, max_age)) => {
                if failures > 0 || !keys.is_loaded() {
                    info!(log, "key set loaded"; "keys" => set.len());
                }
                failures = 0;
                keys.loaded(&body, set);
                keys.fetch_finished(true);
                match (&source, max_age) {
                    (Source::File(_), _) => FILE_POLL,
                    (Source::Url { .. }, Some(age)) => age
                        .max(keys.min_refetch)
                        .min(MAX_AGE_CEILING.max(keys.min_refetch)),
                    (Source::Url { .. }, None) => every,
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                keys.metrics.error.increment(1);
                keys.fetch_finished(false);
                // A file that stays broken is polled every second: its warning once.
                if failures == 1 || matches!(source, Source::Url { .. }) {
                    warn!(log, "key set not loaded; the last good one keeps serving";
                        "error" => format!("{e:#}"), "has_keys" => keys.is_loaded());
                }
                match &source {
                    Source::File(_) => FILE_POLL,
                    Source::Url { .. } => {
                        let backoff = Duration::from_secs(1 << (failures - 1).min(5));
                        backoff.min(RETRY_CEILING).min(every)
                    }
                }
            }
        };
        next = tokio::time::Instant::now() + wait;
    }
}

/// One GET of the JWKS URL: the parsed set and the response's max-age, if any.
async fn fetch(
    client: &awc::Client,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<(web::Bytes, Loaded, Option<Duration>)> {
    let mut response = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "status {}",
        response.status()
    );
    let max_age = response
        .headers()
        .get(actix_web::http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let body = response
        .body()
        .limit(MAX_JWKS_BYTES)
        .await
        .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?;
    let set = parse(&body)?;
    Ok((body, set, max_age))
}

fn read_file(path: &std::path::Path) -> anyhow::Result<(web::Bytes, Loaded)> {
    use std::io::Read as _;
    let mut body = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_JWKS_BYTES as u64 + 1).read_to_end(&mut body))
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    anyhow::ensure!(
        body.len() <= MAX_JWKS_BYTES,
        "{} is too large",
        path.display()
    );
    let set = parse(&body)?;
    Ok((body.into(), set))
}

/// The signing keys of a JWKS document; keys for other uses or of unknown types are skipped.
fn parse(body: &[u8]) -> anyhow::Result<Loaded> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| anyhow::anyhow!("not a JWK set: {e}"))?;
    let mut loaded = Loaded::default();
    for jwk in &set.keys {
        let for_signatures = !matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        );
        // A shared secret has no place in a public key set (HS/RS confusion).
        let public = !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_));
        if !(for_signatures && public) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        let key = Arc::new(Key { key, alg });
        match &jwk.common.key_id {
            Some(kid) => {
                loaded.by_id.insert(kid.clone(), key);
            }
            None => loaded.unnamed.push(key),
        }
    }
    anyhow::ensure!(loaded.len() > 0, "the JWK set has no usable signing key");
    Ok(loaded)
}

/// `max-age` of a `Cache-Control` value (`no-store`/`no-cache` count as none).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let (name, seconds) = directive.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        seconds
            .trim()
            .trim_matches('"')
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("Max-Age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn only_signing_keys_are_loaded_and_a_lone_key_serves_tokens_without_kid() {
        let ec = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let doc = format!(
            r#"{{"keys":[{{"kid":"a","use":"sig","alg":"ES256",{e}}},{{"kid":"b","use":"enc",{e}}},{{"kty":"oct","k":"c2VjcmV0"}}]}}"#,
            e = &ec[1..ec.len() - 1]
        );
        let loaded = parse(doc.as_bytes()).expect("one usable key");
        assert_eq!(loaded.len(), 1, "encryption and unknown keys are skipped");
        let key = loaded.get(Some("a")).expect("by id");
        assert_eq!(key.alg, Some(Algorithm::ES256));
        assert!(loaded.get(Some("b")).is_none());
        assert!(
            loaded.get(None).is_some(),
            "the only key serves a token without kid"
        );
        assert!(parse(br#"{"keys":[]}"#).is_err());
        assert!(parse(b"not json").is_err());
    }
}
