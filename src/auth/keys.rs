//! Signing keys: ES256 private keys (PKCS#8 PEM) in a directory, their JWKS, which one signs,
//! and `generate-key`. The directory is read again whenever a file in it changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};
use slog::{Logger, info, warn};

/// Keys there are published in the JWKS but never sign: a retired key stays verifiable.
pub const RETIRED: &str = "retired";
const PEM_LABEL: &str = "PRIVATE KEY";

/// One ES256 key: its id (RFC 7638 thumbprint), public JWK and what signs with it.
pub struct SigningKey {
    pub kid: String,
    jwk: Value,
    pub encoding: EncodingKey,
    /// The file's modification time: when it appeared in the directory.
    modified: SystemTime,
    name: String,
}

impl SigningKey {
    /// Parses a PKCS#8 PEM file's contents.
    pub fn from_pem(pem: &[u8], modified: SystemTime, name: String) -> anyhow::Result<Self> {
        let der = pem_to_der(pem).context("not a PKCS#8 PEM private key")?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|_| anyhow::anyhow!("not a P-256 (ES256) private key"))?;
        // The uncompressed point: 0x04 ‖ x ‖ y, 32 bytes each.
        let point = pair.public_key().as_ref();
        anyhow::ensure!(
            point.len() == 65 && point[0] == 4,
            "unexpected public key form"
        );
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..]),
        );
        let kid = thumbprint(&x, &y);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid,
            "alg": "ES256", "use": "sig"});
        Ok(Self {
            kid,
            jwk,
            encoding: EncodingKey::from_ec_der(&der),
            modified,
            name,
        })
    }
}

/// RFC 7638: base64url(SHA-256) of the required members in lexicographic order, no spaces.
pub fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()))
}

fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let body = text.split_once(&begin)?.1.split_once(&end)?.0;
    let b64: String = body.split_whitespace().collect();
    STANDARD.decode(b64).ok()
}

/// The keys of one read of the directory.
#[derive(Default)]
pub struct KeySet {
    /// Keys that may sign, oldest first (by modification time, then file name).
    active: Vec<Arc<SigningKey>>,
    retired: Vec<Arc<SigningKey>>,
}

impl KeySet {
    /// Reads `dir` and `dir/retired`: every `*.pem` file. A file that cannot be read or is not
    /// an ES256 key is logged and skipped; a missing directory is an empty set.
    pub fn load(dir: &Path, log: &Logger) -> Self {
        let mut active = read_keys(dir, log);
        active.sort_by(|a, b| (a.modified, &a.name).cmp(&(b.modified, &b.name)));
        let retired = read_keys(&dir.join(RETIRED), log);
        Self { active, retired }
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// The key that signs at `now`: the newest whose file is older than `delay` (published
    /// for at least one JWKS max-age), else the oldest (a fresh install signs at once).
    pub fn signing(&self, now: SystemTime, delay: Duration) -> Option<&Arc<SigningKey>> {
        let cutoff = now.checked_sub(delay).unwrap_or(SystemTime::UNIX_EPOCH);
        self.active
            .iter()
            .rev()
            .find(|k| k.modified <= cutoff)
            .or_else(|| self.active.first())
    }

    /// The public JWK set: every key, retired ones included.
    pub fn jwks(&self) -> Value {
        let keys: Vec<&Value> = self
            .active
            .iter()
            .chain(&self.retired)
            .map(|k| &k.jwk)
            .collect();
        json!({ "keys": keys })
    }

    pub fn kids(&self) -> Vec<&str> {
        self.active
            .iter()
            .chain(&self.retired)
            .map(|k| k.kid.as_str())
            .collect()
    }
}

fn pem_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        // `..data` and friends are a mounted Secret's own; metadata follows its symlinks.
        .filter(|p| {
            p.extension().is_some_and(|e| e == "pem")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && p.is_file()
        })
        .collect();
    files.sort();
    files
}

fn read_keys(dir: &Path, log: &Logger) -> Vec<Arc<SigningKey>> {
    let mut keys = Vec::new();
    for path in pem_files(dir) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let read = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .and_then(|modified| Ok((modified, std::fs::read(&path)?)));
        let key = read
            .map_err(anyhow::Error::from)
            .and_then(|(modified, pem)| SigningKey::from_pem(&pem, modified, name.clone()));
        match key {
            Ok(key) => keys.push(Arc::new(key)),
            // The reason is ours (never the file's contents).
            Err(e) => {
                warn!(log, "signing key skipped"; "file" => name, "error" => format!("{e:#}"))
            }
        }
    }
    keys
}

/// What the files of the directory look like: a change means a reload.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    pem_files(dir)
        .into_iter()
        .chain(pem_files(&dir.join(RETIRED)))
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (p, modified, len)
        })
        .collect()
}

/// The current key set, shared by every worker and replaced whole by the watcher.
#[derive(Clone)]
pub struct SigningKeys {
    current: Arc<RwLock<Arc<KeySet>>>,
    pub publish_delay: Duration,
}

/// How often the directory is looked at.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

impl SigningKeys {
    /// Loads `dir` now and returns the watcher to spawn: it reloads when a file changes.
    pub fn start(
        dir: PathBuf,
        publish_delay: Duration,
        log: Logger,
    ) -> (Self, impl Future<Output = ()>) {
        let set = KeySet::load(&dir, &log);
        info!(log, "signing keys loaded"; "kids" => set.kids().join(","));
        let keys = Self {
            current: Arc::new(RwLock::new(Arc::new(set))),
            publish_delay,
        };
        let watched = keys.clone();
        let watch = async move {
            let mut seen = fingerprint(&dir);
            loop {
                tokio::time::sleep(POLL_EVERY).await;
                let now = fingerprint(&dir);
                if now == seen {
                    continue;
                }
                seen = now;
                let set = KeySet::load(&dir, &log);
                info!(log, "signing keys reloaded"; "kids" => set.kids().join(","));
                if let Ok(mut current) = watched.current.write() {
                    *current = Arc::new(set);
                }
            }
        };
        (keys, watch)
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

/// Writes a new P-256 key as `<UTC time>-<kid>.pem` (mode 0600) into `dir`; returns its path.
pub fn generate(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| anyhow::anyhow!("failed to generate a P-256 key"))?;
    let der = pair
        .to_pkcs8v1()
        .map_err(|_| anyhow::anyhow!("failed to encode the key"))?;
    let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
    let b64 = STANDARD.encode(der.as_ref());
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    let key = SigningKey::from_pem(pem.as_bytes(), SystemTime::now(), String::new())?;
    let stamp = time::OffsetDateTime::now_utc();
    let name = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}.pem",
        stamp.year(),
        u8::from(stamp.month()),
        stamp.day(),
        stamp.hour(),
        stamp.minute(),
        stamp.second(),
        key.kid
    );
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    // Written under a hidden name, then renamed: a watcher never reads half a key.
    let (path, partial) = (dir.join(&name), dir.join(format!(".{name}.partial")));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("failed to create {}", partial.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&partial, &path))
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_at(secs: u64, name: &str) -> Arc<SigningKey> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = generate(dir.path()).expect("generated");
        let pem = std::fs::read(path).expect("read");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        Arc::new(SigningKey::from_pem(&pem, at, name.into()).expect("parsed"))
    }

    #[test]
    fn the_newest_key_older_than_the_delay_signs_else_the_oldest() {
        let (old, new) = (key_at(1000, "a"), key_at(2000, "b"));
        let set = KeySet {
            active: vec![old.clone(), new.clone()],
            retired: vec![key_at(10, "r")],
        };
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let delay = Duration::from_secs(300);
        assert_eq!(set.signing(at(1100), delay).map(|k| &k.kid), Some(&old.kid));
        assert_eq!(set.signing(at(2299), delay).map(|k| &k.kid), Some(&old.kid));
        assert_eq!(set.signing(at(2300), delay).map(|k| &k.kid), Some(&new.kid));
        assert_eq!(set.jwks()["keys"].as_array().map(Vec::len), Some(3));
        assert!(KeySet::default().signing(at(0), delay).is_none());
    }

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint() {
        // RFC 7638 has no EC example; RFC 8037's style: compare with a hand-made canonical form.
        let kid = thumbprint("AA", "BB");
        let expected = URL_SAFE_NO_PAD.encode(digest(
            &SHA256,
            br#"{"crv":"P-256","kty":"EC","x":"AA","y":"BB"}"#,
        ));
        assert_eq!(kid, expected);
        assert_eq!(kid.len(), 43);
    }
}
