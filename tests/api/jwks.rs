//! JWT test harness: the committed test keys, a token builder, forged tokens, JWKS sources.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Map, Value, json};

/// The issuer every test gateway trusts (`--jwt-issuer`).
pub const ISSUER: &str = "https://auth.platform.test";
/// The audience every test gateway accepts (`--jwt-audiences`).
pub const AUDIENCE: &str = "platform-api";

/// A test signing key from `tests/fixtures/jwt/` (made once with `openssl genpkey`; its public
/// JWK beside it was computed by `jwks.py` there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Es256,
    /// A second P-256 key: the one a rotation adds.
    Es256Next,
    EdDsa,
    Rs256,
}

/// The key set a JWKS source serves unless a test says otherwise.
pub const INITIAL_KEYS: [Key; 3] = [Key::Es256, Key::EdDsa, Key::Rs256];

/// The RSA key's public half as PEM: the HMAC secret of the classic algorithm-confusion forgery.
const RS256_PUBLIC_PEM: &str = include_str!("../fixtures/jwt/rs256.pub.pem");

impl Key {
    fn private_pem(self) -> &'static str {
        match self {
            Key::Es256 => include_str!("../fixtures/jwt/es256.pem"),
            Key::Es256Next => include_str!("../fixtures/jwt/es256-next.pem"),
            Key::EdDsa => include_str!("../fixtures/jwt/eddsa.pem"),
            Key::Rs256 => include_str!("../fixtures/jwt/rs256.pem"),
        }
    }

    /// The public JWK (`kty`, curve or modulus, `kid`, `alg`, `use: sig`).
    pub fn jwk(self) -> Value {
        let text = match self {
            Key::Es256 => include_str!("../fixtures/jwt/es256.jwk.json"),
            Key::Es256Next => include_str!("../fixtures/jwt/es256-next.jwk.json"),
            Key::EdDsa => include_str!("../fixtures/jwt/eddsa.jwk.json"),
            Key::Rs256 => include_str!("../fixtures/jwt/rs256.jwk.json"),
        };
        serde_json::from_str(text).expect("a fixture JWK is JSON")
    }

    pub fn kid(self) -> String {
        self.jwk()["kid"]
            .as_str()
            .expect("a fixture JWK has a kid")
            .to_owned()
    }

    pub fn algorithm(self) -> Algorithm {
        match self {
            Key::Es256 | Key::Es256Next => Algorithm::ES256,
            Key::EdDsa => Algorithm::EdDSA,
            Key::Rs256 => Algorithm::RS256,
        }
    }

    fn encoding_key(self) -> EncodingKey {
        let pem = self.private_pem().as_bytes();
        match self {
            Key::Es256 | Key::Es256Next => EncodingKey::from_ec_pem(pem),
            Key::EdDsa => EncodingKey::from_ed_pem(pem),
            Key::Rs256 => EncodingKey::from_rsa_pem(pem),
        }
        .expect("a fixture key is PKCS#8 PEM")
    }
}

/// `{"keys":[…]}` with the public JWKs of `keys`.
pub fn key_set(keys: &[Key]) -> String {
    let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
    json!({ "keys": keys }).to_string()
}

/// Unix time in seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The claims and header of one test token; valid for the test gateways unless changed.
#[derive(Clone)]
pub struct Token {
    key: Key,
    kid: Option<String>,
    claims: Map<String, Value>,
}

impl Token {
    /// `iss` = ISSUER, `aud` = AUDIENCE, `sub` = "user-42", issued now, expiring in 5 minutes,
    /// `kid` of `key`.
    pub fn new(key: Key) -> Self {
        let now = now();
        let claims = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user-42",
            "iat": now,
            "exp": now + 300,
        });
        let Value::Object(claims) = claims else {
            unreachable!("an object literal")
        };
        Self {
            key,
            kid: Some(key.kid()),
            claims,
        }
    }

    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.claims.insert(name.to_owned(), value.into());
        self
    }

    pub fn without(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    pub fn iss(self, iss: &str) -> Self {
        self.claim("iss", iss)
    }

    /// A string or, with `json!([..])`, an array.
    pub fn aud(self, aud: impl Into<Value>) -> Self {
        self.claim("aud", aud)
    }

    pub fn sub(self, sub: &str) -> Self {
        self.claim("sub", sub)
    }

    /// The space-separated `scope` claim.
    pub fn scope(self, scope: &str) -> Self {
        self.claim("scope", scope)
    }

    /// `exp` at now + `secs` (negative: in the past).
    pub fn exp_in(self, secs: i64) -> Self {
        self.claim("exp", now() + secs)
    }

    pub fn nbf_in(self, secs: i64) -> Self {
        self.claim("nbf", now() + secs)
    }

    pub fn iat_in(self, secs: i64) -> Self {
        self.claim("iat", now() + secs)
    }

    /// The header's `kid`, whatever key signs.
    pub fn kid(mut self, kid: &str) -> Self {
        self.kid = Some(kid.to_owned());
        self
    }

    pub fn no_kid(mut self) -> Self {
        self.kid = None;
        self
    }

    /// A compact JWS signed with the key's own algorithm.
    pub fn sign(&self) -> String {
        let mut header = Header::new(self.key.algorithm());
        header.kid.clone_from(&self.kid);
        jsonwebtoken::encode(&header, &self.claims, &self.key.encoding_key()).expect("signs")
    }

    /// Forged: `{"alg":"none"}` and an empty signature.
    pub fn sign_alg_none(&self) -> String {
        let mut header = json!({"alg": "none", "typ": "JWT"});
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        format!(
            "{}.{}.",
            b64(header.to_string().as_bytes()),
            b64(Value::Object(self.claims.clone()).to_string().as_bytes())
        )
    }

    /// Forged: HS256 with the RSA key's public PEM as the HMAC secret, under the RSA key's kid
    /// (the classic algorithm-confusion attack on a verifier that trusts the header's `alg`).
    pub fn sign_hs256_with_public_key(&self) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(Key::Rs256.kid());
        let secret = EncodingKey::from_secret(RS256_PUBLIC_PEM.as_bytes()).expect("an HMAC key");
        jsonwebtoken::encode(&header, &self.claims, &secret).expect("signs")
    }

    /// Forged: a valid token with one character of its signature changed (in the middle, so
    /// the decoded bytes differ whatever the base64 decoder does with trailing bits).
    pub fn sign_corrupted(&self) -> String {
        let token = self.sign();
        let signature_at = token.rfind('.').expect("three parts") + 1;
        let at = signature_at + 10;
        let mut bytes = token.into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).expect("still ASCII")
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the JWKS server answers to `GET /jwks.json`.
struct Answer {
    status: u16,
    body: String,
    cache_control: Option<String>,
}

struct Shared {
    answer: Mutex<Answer>,
    fetches: AtomicUsize,
}

/// The server side of the test PKI and the CA's PEM in a file (`--jwks-ca-file`).
struct Tls {
    config: Arc<rustls::ServerConfig>,
    ca_file: tempfile::NamedTempFile,
}

/// A JWKS endpoint on 127.0.0.1, in threads of its own (it never depends on the test's
/// runtime): HTTP, or HTTPS with a certificate from a CA made for this server only.
pub struct JwksServer {
    port: u16,
    tls: Option<Tls>,
    shared: Arc<Shared>,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl JwksServer {
    /// Serving `keys` over plain HTTP.
    pub fn http(keys: &[Key]) -> Self {
        Self::serving(keys, None)
    }

    /// Serving `keys` over HTTPS; clients trust it only through `ca_file()`.
    pub fn https(keys: &[Key]) -> Self {
        Self::serving(keys, Some(test_pki()))
    }

    fn serving(keys: &[Key], tls: Option<Tls>) -> Self {
        let shared = Arc::new(Shared {
            answer: Mutex::new(Answer {
                status: 200,
                body: key_set(keys),
                cache_control: None,
            }),
            fetches: AtomicUsize::new(0),
        });
        let mut server = Self {
            port: 0,
            tls,
            shared,
            running: None,
        };
        server.start();
        server
    }

    /// `http(s)://127.0.0.1:PORT/jwks.json`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/jwks.json", self.port)
    }

    /// The PEM of the CA that signed this server's certificate (HTTPS only).
    pub fn ca_file(&self) -> &Path {
        self.tls
            .as_ref()
            .map(|t| t.ca_file.path())
            .expect("an HTTPS JWKS server")
    }

    /// Serves `keys` from now on (a rotation).
    pub fn set_keys(&self, keys: &[Key]) {
        self.with_answer(|a| {
            a.status = 200;
            a.body = key_set(keys);
        });
    }

    /// Answers `status` (with a small JSON error body) from now on; `set_keys` answers 200 again.
    pub fn set_status(&self, status: u16) {
        self.with_answer(|a| {
            a.status = status;
            a.body = json!({"error": "test"}).to_string();
        });
    }

    /// The `Cache-Control` header of the answers from now on (`None`: no header).
    pub fn set_cache_control(&self, value: Option<&str>) {
        self.with_answer(|a| a.cache_control = value.map(str::to_owned));
    }

    fn with_answer(&self, change: impl FnOnce(&mut Answer)) {
        change(
            &mut self
                .shared
                .answer
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    /// `GET /jwks.json` requests answered so far (TLS handshakes that failed are not requests).
    pub fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// Closes the listener: connections are refused until `start`.
    pub fn stop(&mut self) {
        if let Some((stopping, thread)) = self.running.take() {
            stopping.store(true, Ordering::SeqCst);
            // Wakes the blocked `accept`; the loop sees the flag and drops the listener.
            let _ = TcpStream::connect(("127.0.0.1", self.port));
            let _ = thread.join();
        }
    }

    /// Listens again, on the same port as before (any port the first time).
    pub fn start(&mut self) {
        if self.running.is_some() {
            return;
        }
        // std sets SO_REUSEADDR on Unix: the port can be bound again right after `stop`.
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind the JWKS port");
        self.port = listener.local_addr().map(|a| a.port()).expect("port");
        let stopping = Arc::new(AtomicBool::new(false));
        let (flag, shared) = (stopping.clone(), self.shared.clone());
        let tls = self.tls.as_ref().map(|t| t.config.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (shared, tls) = (shared.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared, tls);
                });
            }
        });
        self.running = Some((stopping, thread));
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    stream: TcpStream,
    shared: &Shared,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let Some(config) = tls else {
        return answer(stream, shared);
    };
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    answer(&mut tls, shared)?;
    tls.conn.send_close_notify();
    tls.flush()
}

/// Reads one request head and answers it; `Connection: close`, so one request per connection.
fn answer(mut stream: impl Read + Write, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
    }
    drop(reader);
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body, cache_control) = if method == "GET" && target == "/jwks.json" {
        shared.fetches.fetch_add(1, Ordering::SeqCst);
        let a = shared.answer.lock().unwrap_or_else(PoisonError::into_inner);
        (a.status, a.body.clone(), a.cache_control.clone())
    } else {
        (404, json!({"error": "not_found"}).to_string(), None)
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(value) = cache_control {
        head.push_str(&format!("Cache-Control: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// A CA made for one server, and that server's certificate for 127.0.0.1 and localhost.
fn test_pki() -> Tls {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "platform test JWKS CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().expect("server key");
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("server certificate");

    // Explicit provider: no dependence on which rustls backend the process installed.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server TLS config");

    let mut ca_file = tempfile::NamedTempFile::new().expect("temp file");
    ca_file
        .write_all(ca_cert.pem().as_bytes())
        .and_then(|()| ca_file.flush())
        .expect("CA PEM written");
    Tls {
        config: Arc::new(config),
        ca_file,
    }
}

/// A JWKS file (`--jwks-file`) in a temp dir; rewritten whole (write beside, then rename).
pub struct JwksFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl JwksFile {
    pub fn new(keys: &[Key]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jwks.json");
        let file = Self { _dir: dir, path };
        file.set_keys(keys);
        file
    }

    pub fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temp path")
    }

    pub fn set_keys(&self, keys: &[Key]) {
        let next = self.path.with_extension("json.next");
        std::fs::write(&next, key_set(keys)).expect("JWKS written");
        std::fs::rename(&next, &self.path).expect("JWKS renamed into place");
    }
}

// The harness checks itself, so a failing auth test points at the gateway, not at the keys.

#[test]
fn fixture_jwks_verify_what_their_keys_sign_and_reject_the_forgeries() {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation, decode};

    let set: JwkSet = serde_json::from_str(&key_set(&[
        Key::Es256,
        Key::Es256Next,
        Key::EdDsa,
        Key::Rs256,
    ]))
    .expect("a JWK set");
    let verify = |token: &str, key: Key| {
        let jwk = set.find(&key.kid()).expect("kid in the set");
        let mut validation = Validation::new(key.algorithm());
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        decode::<Value>(
            token,
            &DecodingKey::from_jwk(jwk).expect("a usable JWK"),
            &validation,
        )
        .is_ok()
    };
    for key in [Key::Es256, Key::Es256Next, Key::EdDsa, Key::Rs256] {
        assert!(verify(&Token::new(key).sign(), key), "{key:?}");
        assert!(!verify(&Token::new(key).sign_corrupted(), key), "{key:?}");
    }
    assert!(!verify(&Token::new(Key::Es256).sign(), Key::Es256Next));
    let header = |token: &str| {
        let part = token.split('.').next().unwrap_or_default();
        serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(part).unwrap_or_default())
            .unwrap_or_default()
    };
    let none = Token::new(Key::Es256).sign_alg_none();
    assert_eq!(header(&none)["alg"], "none");
    assert!(none.ends_with('.'));
    let hs = Token::new(Key::Rs256).sign_hs256_with_public_key();
    assert_eq!(header(&hs)["alg"], "HS256");
    assert_eq!(header(&hs)["kid"], "rs256-1");
}

/// `GET /jwks.json` over plain TCP: the status code, or `None` when the connection failed.
fn fetch_plain(port: u16) -> Option<u16> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.write_all(b"GET /jwks.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_jwks_server_goes_down_and_up_on_the_same_port_and_counts_fetches() {
    let mut server = JwksServer::http(&INITIAL_KEYS);
    let port = server.port;
    assert_eq!(fetch_plain(port), Some(200));
    server.stop();
    assert_eq!(fetch_plain(port), None);
    server.start();
    assert_eq!(server.port, port);
    server.set_status(500);
    assert_eq!(fetch_plain(port), Some(500));
    assert_eq!(server.fetches(), 2);
}

#[test]
fn the_https_jwks_server_is_trusted_through_its_ca_file_only() {
    use rustls::pki_types::ServerName;
    use rustls::pki_types::pem::PemObject;

    let server = JwksServer::https(&[Key::Es256]);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let get = |roots: rustls::RootCertStore| {
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("127.0.0.1").expect("an IP name");
        let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let tcp = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut text = String::new();
        tls.write_all(b"GET /jwks.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .and_then(|()| tls.read_to_string(&mut text))
            .map(|_| text)
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(server.ca_file()).expect("CA PEM") {
        roots.add(cert.expect("a certificate")).expect("a CA");
    }
    let answer = get(roots).expect("trusted through the CA file");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains(r#""kid":"es256-1""#), "{answer}");
    assert!(get(rustls::RootCertStore::empty()).is_err());
    assert_eq!(server.fetches(), 1);
}
