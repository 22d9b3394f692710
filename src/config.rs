//! Command line and environment configuration, parsed and typed once at start-up.

use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Command, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use url::Url;

/// `platform <role>`: one binary, one role per subcommand.
#[derive(Debug, Parser)]
#[command(name = "platform", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub role: Role,
}

// Parsed once at start and never moved around: the size of the largest role does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Role {
    /// Run the API gateway (proxies /api/users to the users service).
    Gateway(GatewaySettings),
    /// Run the users service (user CRUD over Redis).
    Users(UsersCommand),
    /// Run the auth service (OAuth 2.0 token endpoint, signing keys, JWKS).
    Auth(AuthCommand),
    /// Run the gateway, the users and the auth service in one process (local runs, small installs).
    All(AllSettings),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = false)]
pub struct AuthCommand {
    #[command(subcommand)]
    pub task: Option<AuthTask>,
    #[command(flatten)]
    pub settings: AuthRoleSettings,
}

#[derive(Debug, Subcommand)]
pub enum AuthTask {
    /// Write a new ES256 (P-256) signing key into DIR (mode 0600), named by time and key id.
    GenerateKey {
        /// The signing keys directory.
        dir: std::path::PathBuf,
    },
    /// Read a client secret from stdin and print its Argon2id PHC hash (for the clients file).
    HashSecret,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = false)]
pub struct UsersCommand {
    #[command(subcommand)]
    pub task: Option<UsersTask>,
    #[command(flatten)]
    pub settings: UsersSettings,
}

#[derive(Debug, Subcommand)]
pub enum UsersTask {
    /// Build `users:by_created` and `users:email:*` for users written by the seeds' services.
    Reindex,
    /// Dump every user as JSON lines: a header, one user per line (oldest first), a footer
    /// with the count (a file without it is truncated).
    Export(ExportArgs),
    /// Restore users from an export file: keeps ids and timestamps, skips identical users,
    /// reports (and does not write) a user whose email or id belongs to another user.
    Import {
        /// The export file to read (`-` for stdin).
        file: std::path::PathBuf,
    },
}

/// Where `platform users export` writes, and from where it resumes.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Write to this file (replaced atomically when complete).
    #[arg(
        long,
        env = "EXPORT_OUTPUT",
        required_unless_present = "dir",
        conflicts_with = "dir"
    )]
    pub output: Option<std::path::PathBuf>,
    /// Write `users-<UTC time>.jsonl` into this directory (atomically: temp file + rename).
    #[arg(long, env = "BACKUP_DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// With --dir: keep only the newest N exports there, deleting older ones.
    #[arg(long, env = "BACKUP_KEEP", requires = "dir", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: Option<u32>,
    /// Resume: export only users after this one (the id on the last user line of a broken
    /// export), in the export's order.
    #[arg(long, env = "EXPORT_AFTER")]
    pub after: Option<uuid::Uuid>,
}

/// Settings every role shares.
#[derive(Debug, Clone, Args)]
pub struct CommonSettings {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0", global = true)]
    pub host: IpAddr,
    /// Log level: trace, debug, info, warning, error, critical.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", value_parser = parse_log_level, global = true)]
    pub log_level: slog::Level,
    /// Log format: one JSON object per line, or coloured text for humans.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_timeout: Duration,
    /// Part of --shutdown-timeout during which, after SIGTERM, requests on open connections are
    /// still served, each answered with `Connection: close`, before idle connections are closed.
    #[arg(long, env = "DRAIN_TIME", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub drain_time: Duration,
    /// HTTP worker threads (default: one per CPU).
    #[arg(long, env = "WORKERS", global = true)]
    pub workers: Option<usize>,
    /// Requests served at once by a role (its workers together); beyond: 503 `overloaded` at
    /// once. Health and metrics endpoints are never refused.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub max_in_flight: u32,
    /// Time a client has to send a whole request body (from the request's start); then 408.
    #[arg(long, env = "CLIENT_BODY_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration, global = true)]
    pub client_body_timeout: Duration,
}

impl CommonSettings {
    /// Values that contradict each other.
    pub fn check(&self) -> Result<(), String> {
        // Part of the shutdown timeout, leaving in-flight requests the rest.
        if self.drain_time >= self.shutdown_timeout {
            return Err("--drain-time must be shorter than --shutdown-timeout".into());
        }
        Ok(())
    }

    /// Worker threads the server really starts (the flag, or one per available CPU).
    pub fn effective_workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
            .max(1)
    }
}

/// The shared settings as fields of the start-up log line.
impl slog::KV for CommonSettings {
    fn serialize(&self, _: &slog::Record, s: &mut dyn slog::Serializer) -> slog::Result {
        s.emit_arguments("host", &format_args!("{}", self.host))?;
        s.emit_str("log_level", &self.log_level.as_str().to_lowercase())?;
        s.emit_str(
            "log_format",
            match self.log_format {
                LogFormat::Json => "json",
                LogFormat::Pretty => "pretty",
            },
        )?;
        s.emit_usize("workers", self.effective_workers())?;
        s.emit_u32("max_in_flight", self.max_in_flight)?;
        s.emit_f64(
            "client_body_timeout_s",
            self.client_body_timeout.as_secs_f64(),
        )?;
        s.emit_f64("drain_time_s", self.drain_time.as_secs_f64())?;
        s.emit_f64("shutdown_timeout_s", self.shutdown_timeout.as_secs_f64())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Settings of the users role.
#[derive(Debug, Clone, Args)]
pub struct UsersSettings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// Port of the users service.
    #[arg(long, env = "PORT", default_value_t = 3001, global = true)]
    pub port: u16,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub idempotency: IdempotencySettings,
}

/// How long the users role remembers a create's `Idempotency-Key`.
#[derive(Debug, Clone, Copy, Args)]
pub struct IdempotencySettings {
    /// How long a POST /users answer is kept for retries with the same Idempotency-Key.
    #[arg(long, env = "IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_positive_duration, global = true)]
    pub idempotency_ttl: Duration,
}

/// Settings of the auth role (`platform auth`); `AuthSettings` is the gateway's verification.
#[derive(Debug, Clone, Args)]
pub struct AuthRoleSettings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// Port of the auth service.
    #[arg(long, env = "PORT", default_value_t = 3002, global = true)]
    pub port: u16,
    /// Proxies whose X-Forwarded-For is believed (the gateway's addresses), comma-separated CIDRs.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr, global = true)]
    pub trusted_proxies: Vec<crate::http::client::Cidr>,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub tokens: TokenSettings,
}

/// What the auth role issues tokens with: identity, keys, clients, secret hashing.
#[derive(Debug, Clone, Args)]
pub struct TokenSettings {
    /// The issuer (`iss`) as clients see it, e.g. http://127.0.0.1:3000/api/auth; required.
    #[arg(long, env = "AUTH_ISSUER", global = true)]
    pub issuer: Option<String>,
    /// The audience (`aud`) of access tokens.
    #[arg(
        long,
        env = "AUTH_AUDIENCE",
        default_value = "platform-api",
        global = true
    )]
    pub audience: String,
    /// Lifetime of an access token.
    #[arg(long, env = "ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_positive_duration, global = true)]
    pub access_token_ttl: Duration,
    /// Directory of ES256 private keys (PKCS#8 PEM, `*.pem`), e.g. a mounted Secret.
    #[arg(long, env = "SIGNING_KEYS_DIR", global = true)]
    pub signing_keys_dir: Option<std::path::PathBuf>,
    /// How long a new key is published before it signs (at least the JWKS max-age, 300 s).
    #[arg(long, env = "KEY_PUBLISH_DELAY", default_value = "300s", value_parser = humantime::parse_duration, global = true)]
    pub key_publish_delay: Duration,
    /// JSON file of OAuth clients: [{"client_id","secret_hash","scopes":[…]}], re-read on change.
    #[arg(long, env = "CLIENTS_FILE", global = true)]
    pub clients_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub argon2: Argon2Settings,
    #[command(flatten)]
    pub accounts: AccountSettings,
}

/// People's accounts at the auth role: what a login grants and how failed logins are throttled.
#[derive(Debug, Clone, Args)]
pub struct AccountSettings {
    /// Scope (space-separated) of the access token a login or a refresh issues to a user.
    #[arg(
        long,
        env = "USER_SCOPE",
        default_value = "users:read users:write",
        global = true
    )]
    pub user_scope: String,
    /// Lifetime of a refresh token (each use rotates it and starts this anew).
    #[arg(long, env = "REFRESH_TOKEN_TTL", default_value = "30d", value_parser = parse_positive_duration, global = true)]
    pub refresh_token_ttl: Duration,
    /// Failed logins per account (lowercased email) within the window before 429.
    #[arg(long, env = "LOGIN_MAX_FAILURES", default_value_t = 5, global = true)]
    pub login_max_failures: u32,
    /// Failed logins per client IP within the window before 429.
    #[arg(
        long,
        env = "LOGIN_MAX_FAILURES_PER_IP",
        default_value_t = 50,
        global = true
    )]
    pub login_max_failures_per_ip: u32,
    /// How long failed logins count (from the first failure of a window).
    #[arg(long, env = "LOGIN_FAILURE_WINDOW", default_value = "15m", value_parser = parse_positive_duration, global = true)]
    pub login_failure_window: Duration,
}

/// Argon2id cost of client secret hashes (OWASP's minimum by default).
#[derive(Debug, Clone, Copy, Args)]
pub struct Argon2Settings {
    /// Argon2id memory cost in KiB.
    #[arg(
        long,
        env = "ARGON2_MEMORY_KIB",
        default_value_t = 19456,
        global = true
    )]
    pub argon2_memory_kib: u32,
    /// Argon2id iterations (time cost).
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = 2, global = true)]
    pub argon2_iterations: u32,
    /// Argon2id lanes (parallelism).
    #[arg(long, env = "ARGON2_PARALLELISM", default_value_t = 1, global = true)]
    pub argon2_parallelism: u32,
}

/// Settings of the gateway role.
#[derive(Debug, Clone, Args)]
pub struct GatewaySettings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// Port of the gateway.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Base URL of the users service.
    #[arg(long, env = "USER_SERVICE_URL", default_value = "http://127.0.0.1:3001", value_parser = parse_http_url)]
    pub users_url: Url,
    /// Base URL of the auth service (`/api/auth…` is proxied to it).
    #[arg(long, env = "AUTH_SERVICE_URL", default_value = "http://127.0.0.1:3002", value_parser = parse_http_url)]
    pub auth_url: Url,
    #[command(flatten)]
    pub upstream: UpstreamSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub limits: LimitSettings,
}

/// How the gateway talks to its upstream.
#[derive(Debug, Clone, Args)]
pub struct UpstreamSettings {
    /// Upper bound for one upstream exchange, response body included.
    #[arg(long, env = "UPSTREAM_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub upstream_timeout: Duration,
    /// Upper bound for opening a connection to the upstream.
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_positive_duration)]
    pub upstream_connect_timeout: Duration,
    /// Largest request body the gateway forwards (bytes); larger → 413.
    #[arg(long, env = "MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: u64,
}

/// Which `/api/…` requests need a bearer token. A token that is present is always verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// No request needs one (the seeds' clients keep working).
    Off,
    /// POST, PUT, PATCH and DELETE need one; reads are anonymous.
    Writes,
    /// Every `/api/…` request needs one.
    All,
}

/// How the gateway verifies JWT bearer tokens (AUTH.md §6).
#[derive(Debug, Clone, Args)]
pub struct AuthSettings {
    /// Which /api requests need a bearer token: off, writes, all.
    #[arg(long, env = "AUTH_MODE", value_enum, default_value_t = AuthMode::Off)]
    pub auth_mode: AuthMode,
    /// The tokens' issuer (`iss`, compared exactly); required when auth is on.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Accepted audiences (`aud`, any of them), comma-separated; none: `aud` is not checked.
    #[arg(long, env = "JWT_AUDIENCES", value_delimiter = ',')]
    pub jwt_audiences: Vec<String>,
    /// Accepted signing algorithms, comma-separated (asymmetric only).
    #[arg(long, env = "JWT_ALGORITHMS", value_delimiter = ',', default_value = "ES256,EdDSA,RS256", value_parser = parse_algorithm)]
    pub jwt_algorithms: Vec<jsonwebtoken::Algorithm>,
    /// URL of the key set (JWKS), http or https.
    #[arg(long, env = "JWKS_URL", value_parser = parse_jwks_url, conflicts_with = "jwks_file")]
    pub jwks_url: Option<Url>,
    /// A key set (JWKS) file, re-read when it changes (a mounted ConfigMap or Secret).
    #[arg(long, env = "JWKS_FILE")]
    pub jwks_file: Option<std::path::PathBuf>,
    /// PEM file of CA certificates trusted for --jwks-url, besides the system's.
    #[arg(long, env = "JWKS_CA_FILE")]
    pub jwks_ca_file: Option<std::path::PathBuf>,
    /// How often the key set is fetched again (a Cache-Control max-age overrides it, within bounds).
    #[arg(long, env = "JWKS_REFRESH", default_value = "5m", value_parser = parse_positive_duration)]
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by tokens with an unknown key id.
    #[arg(long, env = "JWKS_MIN_REFETCH", default_value = "30s", value_parser = parse_positive_duration)]
    pub jwks_min_refetch: Duration,
    /// Upper bound of one key set fetch.
    #[arg(long, env = "JWKS_TIMEOUT", default_value = "2s", value_parser = parse_positive_duration)]
    pub jwks_timeout: Duration,
    /// Clock skew allowed on `exp` and `nbf`.
    #[arg(long, env = "JWT_LEEWAY", default_value = "60s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,
    /// Longest accepted token lifetime (`exp` - `iat`).
    #[arg(long, env = "JWT_MAX_LIFETIME", default_value = "24h", value_parser = parse_positive_duration)]
    pub jwt_max_lifetime: Duration,
    /// A cookie that may carry the token instead of `Authorization: Bearer`.
    #[arg(long, env = "JWT_COOKIE")]
    pub jwt_cookie: Option<String>,
    /// Verified claims sent upstream as headers, `claim=Header,…`; clients can never send these.
    #[arg(long, env = "JWT_CLAIM_HEADERS", value_delimiter = ',', default_value = "sub=X-User-Id,scope=X-User-Scope", value_parser = parse_claim_header)]
    pub jwt_claim_headers: Vec<ClaimHeader>,
    /// Send the used credential upstream (the Authorization header or the token cookie; removed otherwise).
    #[arg(long, env = "JWT_FORWARD_TOKEN")]
    pub jwt_forward_token: bool,
    /// A scope that writes (POST, PUT, PATCH, DELETE) need, when set.
    #[arg(long, env = "JWT_WRITE_SCOPE")]
    pub jwt_write_scope: Option<String>,
    /// The realm named in `WWW-Authenticate` challenges.
    #[arg(long, env = "AUTH_REALM", default_value = "platform")]
    pub auth_realm: String,
}

/// A claim sent upstream as a header once its token is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub claim: String,
    pub header: actix_web::http::header::HeaderName,
}

fn parse_claim_header(s: &str) -> Result<ClaimHeader, String> {
    let (claim, header) = s.split_once('=').ok_or("expected claim=Header-Name")?;
    let header = actix_web::http::header::HeaderName::from_bytes(header.trim().as_bytes())
        .map_err(|_| "not a valid header name")?;
    match claim.trim() {
        "" => Err("the claim name is empty".into()),
        claim => Ok(ClaimHeader {
            claim: claim.to_owned(),
            header,
        }),
    }
}

/// Asymmetric JWS algorithms only: `none` does not parse, and an HMAC secret cannot come
/// from a public key set.
fn parse_algorithm(s: &str) -> Result<jsonwebtoken::Algorithm, String> {
    use jsonwebtoken::Algorithm;
    let alg: Algorithm = s
        .trim()
        .parse()
        .map_err(|_| "not a JWS algorithm (none is never accepted)")?;
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            Err("HMAC algorithms cannot be verified with a public key set".into())
        }
        alg => Ok(alg),
    }
}

fn parse_jwks_url(s: &str) -> Result<Url, String> {
    url_with_scheme(s, &["http", "https"])
}

impl AuthSettings {
    /// Whether tokens are checked at all: a mode that needs them, or a key source given.
    pub fn is_on(&self) -> bool {
        self.auth_mode != AuthMode::Off || self.jwks_url.is_some() || self.jwks_file.is_some()
    }

    /// What a mode that needs tokens cannot run without, and values no sane setup has.
    pub fn check(&self) -> Result<(), String> {
        // Claim headers are stripped from every request, auth on or off.
        self.check_claim_headers()?;
        if !self.is_on() {
            return Ok(());
        }
        if self
            .jwt_issuer
            .as_deref()
            .is_none_or(|i| i.trim().is_empty())
        {
            return Err("--jwt-issuer is required when tokens are verified".into());
        }
        if self.jwks_url.is_none() && self.jwks_file.is_none() {
            return Err("--jwks-url or --jwks-file is required when tokens are verified".into());
        }
        if self.jwks_ca_file.is_some() && self.jwks_url.is_none() {
            return Err("--jwks-ca-file applies to --jwks-url only".into());
        }
        if self.jwt_algorithms.is_empty() {
            return Err("--jwt-algorithms is empty".into());
        }
        let day = Duration::from_secs(24 * 3600);
        if self.jwks_min_refetch > day
            || self.jwks_refresh > day
            || self.jwks_timeout > Duration::from_secs(60)
        {
            return Err(
                "--jwks-refresh and --jwks-min-refetch are at most 24h, --jwks-timeout at most 60s"
                    .into(),
            );
        }
        if self.jwt_leeway > Duration::from_secs(600) {
            return Err("--jwt-leeway is at most 10m".into());
        }
        let quotable = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ')
        };
        if !quotable(&self.auth_realm) || !self.jwt_write_scope.as_deref().is_none_or(quotable) {
            return Err(
                "--auth-realm and --jwt-write-scope must be printable ASCII without quotes".into(),
            );
        }
        let cookie_name = |c: &str| {
            c.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        };
        if !self.jwt_cookie.as_deref().is_none_or(cookie_name) {
            return Err("--jwt-cookie is not a cookie name".into());
        }
        Ok(())
    }

    /// A claim header may not be one the proxy or the HTTP framing owns, nor appear twice.
    fn check_claim_headers(&self) -> Result<(), String> {
        use actix_web::http::header;
        let owned = [
            header::AUTHORIZATION,
            header::COOKIE,
            header::HOST,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
            header::TE,
            header::UPGRADE,
            header::EXPECT,
            header::FORWARDED,
        ];
        let mut seen: Vec<&actix_web::http::header::HeaderName> = Vec::new();
        for ClaimHeader { header, .. } in &self.jwt_claim_headers {
            let name = header.as_str();
            if owned.contains(header)
                || name.starts_with("x-forwarded-")
                || name == "x-request-id"
                || name == "keep-alive"
            {
                return Err(format!(
                    "--jwt-claim-headers: {name} is set by the proxy itself"
                ));
            }
            if seen.contains(&header) {
                return Err(format!("--jwt-claim-headers: {name} is named twice"));
            }
            seen.push(header);
        }
        Ok(())
    }
}

/// Where rate limits are kept (`--rate-limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RateLimitMode {
    /// No limits.
    Off,
    /// Every policy per pod.
    Local,
    /// The "ip" policy per pod, the "client" policy shared by every gateway in a Redis.
    Redis,
}

/// What a rate-limit decision does when the shared Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailureMode {
    /// Decide with the per-pod table instead (counted as fail_open).
    Open,
    /// Refuse the request: 503 overloaded (counted as fail_closed).
    Closed,
}

/// Which rate-limit headers answers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RateLimitHeaders {
    /// `RateLimit` and `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
    Draft,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    Legacy,
    Both,
    None,
}

/// The client's address and the gateway's rate limits (AUTH.md §5).
#[derive(Debug, Clone, Args)]
pub struct LimitSettings {
    /// Proxies whose X-Forwarded-For is believed, comma-separated CIDRs (a bare IP is one address).
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<crate::http::client::Cidr>,
    /// Rate limits: off, local (per pod), redis (the client policy shared in --rate-limit-redis-url).
    #[arg(long, env = "RATE_LIMIT", value_enum, default_value_t = RateLimitMode::Off)]
    pub rate_limit: RateLimitMode,
    /// Policy "ip": requests per --rate-limit-window per client address, per pod, checked before any token.
    #[arg(long, env = "RATE_LIMIT_IP_REQUESTS")]
    pub rate_limit_ip_requests: Option<u32>,
    /// Policy "client": requests per --rate-limit-window per verified subject, else per address.
    #[arg(long, env = "RATE_LIMIT_REQUESTS")]
    pub rate_limit_requests: Option<u32>,
    /// The window both policies' quotas are counted over.
    #[arg(long, env = "RATE_LIMIT_WINDOW", default_value = "60s", value_parser = parse_positive_duration)]
    pub rate_limit_window: Duration,
    /// Requests the "client" policy admits at once (default: its quota).
    #[arg(long, env = "RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// The Redis of the shared tier (its own: the users' Redis runs noeviction); keep the
    /// password out of it and use --rate-limit-redis-password.
    #[arg(long, env = "RATE_LIMIT_REDIS_URL", value_parser = parse_redis_url)]
    pub rate_limit_redis_url: Option<Url>,
    /// The shared tier's Redis password (AUTH), e.g. from a Kubernetes Secret.
    #[arg(long, env = "RATE_LIMIT_REDIS_PASSWORD", hide_env_values = true)]
    pub rate_limit_redis_password: Option<Secret>,
    /// Upper bound of one shared-tier decision (connecting included).
    #[arg(long, env = "RATE_LIMIT_REDIS_TIMEOUT", default_value = "100ms", value_parser = parse_positive_duration)]
    pub rate_limit_redis_timeout: Duration,
    /// When the shared Redis fails: open (decide per pod) or closed (503).
    #[arg(long, env = "RATE_LIMIT_FAILURE_MODE", value_enum, default_value_t = FailureMode::Open)]
    pub rate_limit_failure_mode: FailureMode,
    /// Rate-limit headers on answers: draft, legacy, both, none.
    #[arg(long, env = "RATE_LIMIT_HEADERS", value_enum, default_value_t = RateLimitHeaders::Draft)]
    pub rate_limit_headers: RateLimitHeaders,
    /// Most keys each per-pod table holds (when full: expired keys go, else those nearest to expiry).
    #[arg(long, env = "RATE_LIMIT_MAX_KEYS", default_value_t = 100_000)]
    pub rate_limit_max_keys: usize,
}

fn parse_cidr(s: &str) -> Result<crate::http::client::Cidr, String> {
    s.parse()
}

impl LimitSettings {
    /// The quota of the "client" policy's burst.
    pub fn burst(&self) -> Option<u32> {
        self.rate_limit_burst.or(self.rate_limit_requests)
    }

    /// What a mode cannot run without, and bounds no sane setup exceeds.
    pub fn check(&self) -> Result<(), String> {
        let positive = |n: Option<u32>| n.is_none_or(|n| (1..=1_000_000_000).contains(&n));
        if !positive(self.rate_limit_ip_requests)
            || !positive(self.rate_limit_requests)
            || !positive(self.rate_limit_burst)
        {
            return Err(
                "--rate-limit-ip-requests, --rate-limit-requests and --rate-limit-burst are 1 to 10^9"
                    .into(),
            );
        }
        if self.rate_limit_window > Duration::from_secs(24 * 3600)
            || self.rate_limit_window < Duration::from_millis(1)
        {
            return Err("--rate-limit-window is 1ms to 24h".into());
        }
        // The time a full burst stands for (burst × window / requests, in µs) must stay far from
        // u64 and exact in the Lua script's doubles (2^48 µs is about 9 years).
        if let (Some(burst), Some(requests)) = (self.burst(), self.rate_limit_requests) {
            let span =
                u128::from(burst) * self.rate_limit_window.as_micros() / u128::from(requests);
            if span > 1 << 48 {
                return Err(
                    "--rate-limit-burst × --rate-limit-window / --rate-limit-requests is at most 2^48 µs (about 9 years)"
                        .into(),
                );
            }
        }
        if self.rate_limit_redis_timeout > Duration::from_secs(5) {
            return Err("--rate-limit-redis-timeout is at most 5s".into());
        }
        if !(16..=100_000_000).contains(&self.rate_limit_max_keys) {
            return Err("--rate-limit-max-keys is 16 to 10^8".into());
        }
        match self.rate_limit {
            RateLimitMode::Off => Ok(()),
            RateLimitMode::Local
                if self.rate_limit_ip_requests.is_none() && self.rate_limit_requests.is_none() =>
            {
                Err(
                    "--rate-limit local needs --rate-limit-ip-requests or --rate-limit-requests"
                        .into(),
                )
            }
            RateLimitMode::Local => Ok(()),
            RateLimitMode::Redis if self.rate_limit_requests.is_none() => {
                Err("--rate-limit redis needs --rate-limit-requests".into())
            }
            RateLimitMode::Redis if self.rate_limit_redis_url.is_none() => {
                Err("--rate-limit redis needs --rate-limit-redis-url".into())
            }
            RateLimitMode::Redis => Ok(()),
        }
    }
}

/// Settings of `platform all`: both roles, the gateway pointed at the in-process users service.
#[derive(Debug, Clone, Args)]
pub struct AllSettings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// Port of the gateway.
    #[arg(long, env = "GATEWAY_PORT", default_value_t = 3000)]
    pub gateway_port: u16,
    /// Port of the users service.
    #[arg(long, env = "USERS_PORT", default_value_t = 3001)]
    pub users_port: u16,
    /// Port of the auth service.
    #[arg(long, env = "AUTH_PORT", default_value_t = 3002)]
    pub auth_port: u16,
    #[command(flatten)]
    pub upstream: UpstreamSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub limits: LimitSettings,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub idempotency: IdempotencySettings,
    #[command(flatten)]
    pub tokens: TokenSettings,
}

impl AllSettings {
    pub fn users(&self) -> UsersSettings {
        UsersSettings {
            common: self.common.clone(),
            port: self.users_port,
            redis: self.redis.clone(),
            idempotency: self.idempotency,
        }
    }

    /// Where the roles reach each other: the listening host, loopback when it is unspecified.
    fn loopback_host(&self) -> IpAddr {
        match self.common.host {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        }
    }

    /// The auth role's settings; its issuer defaults to the gateway's `/api/auth` on loopback.
    pub fn auth_role(&self) -> AuthRoleSettings {
        let mut tokens = self.tokens.clone();
        if tokens.issuer.is_none() {
            tokens.issuer = Some(format!("http://127.0.0.1:{}/api/auth", self.gateway_port));
        }
        // The in-process gateway calls the auth role from the listening host: its
        // X-Forwarded-For names the client the gateway resolved.
        let mut trusted_proxies = self.limits.trusted_proxies.clone();
        trusted_proxies.push(self.loopback_host().into());
        AuthRoleSettings {
            common: self.common.clone(),
            port: self.auth_port,
            trusted_proxies,
            redis: self.redis.clone(),
            tokens,
        }
    }

    /// The gateway's settings once the users and auth services listen on their ports. Without
    /// a key source of its own, and when the auth role has signing keys, the gateway verifies
    /// tokens against the in-process auth role's JWKS, issuer and audience.
    pub fn gateway(&self, users_port: u16, auth_port: u16) -> GatewaySettings {
        let host = self.loopback_host();
        let url = |port: u16, path: &str| {
            Url::parse(&format!(
                "http://{}{path}",
                std::net::SocketAddr::new(host, port)
            ))
            .unwrap_or_else(|_| unreachable_url())
        };
        let mut auth = self.auth.clone();
        if auth.jwks_url.is_none()
            && auth.jwks_file.is_none()
            && self.tokens.signing_keys_dir.is_some()
        {
            auth.jwks_url = Some(url(auth_port, "/.well-known/jwks.json"));
            let role = self.auth_role();
            if auth.jwt_issuer.is_none() {
                auth.jwt_issuer = role.tokens.issuer;
            }
            if auth.jwt_audiences.is_empty() {
                auth.jwt_audiences = vec![role.tokens.audience];
            }
        }
        GatewaySettings {
            common: self.common.clone(),
            port: self.gateway_port,
            users_url: url(users_port, "/"),
            auth_url: url(auth_port, "/"),
            upstream: self.upstream.clone(),
            auth,
            limits: self.limits.clone(),
        }
    }
}

fn unreachable_url() -> Url {
    // A socket address always forms a valid URL; this keeps the signature infallible.
    Url::parse("http://127.0.0.1:3001/").expect("constant URL is valid")
}

/// How the users role reaches Redis.
#[derive(Debug, Clone, Args)]
pub struct RedisSettings {
    /// Redis URL (`redis://`: plain TCP, this binary has no TLS, so a `rediss://` URL is
    /// refused at start); keep the password out of it and use --redis-password.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", value_parser = parse_redis_url, global = true)]
    pub redis_url: Url,
    /// Redis password (AUTH), e.g. from a Kubernetes Secret.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true, global = true)]
    pub redis_password: Option<Secret>,
    /// Redis operations in flight per process (one shared connection).
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024), global = true)]
    pub redis_pool_size: u16,
    /// Upper bound for one Redis operation (connecting included) and for each connect.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "2s", value_parser = parse_positive_duration, global = true)]
    pub redis_timeout: Duration,
    /// Longest wait of a users request for its turn among the --redis-pool-size operations in
    /// flight (at most --redis-timeout); then 503 `overloaded`.
    #[arg(long, env = "REDIS_POOL_WAIT", default_value = "250ms", value_parser = parse_positive_duration, global = true)]
    pub redis_pool_wait: Duration,
    /// Redis Sentinels (host:port, comma-separated): when given, the master named by
    /// --redis-master-name is found and followed through failovers through them. The
    /// Sentinels and the master they name are reached over plain TCP (no TLS); of
    /// --redis-url only the user name and the database are used, not its host and port.
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',', value_parser = parse_host_port, global = true)]
    pub redis_sentinels: Vec<String>,
    /// The master's name at the Sentinels (`sentinel monitor <name> …`).
    #[arg(
        long,
        env = "REDIS_MASTER_NAME",
        default_value = "mymaster",
        global = true
    )]
    pub redis_master_name: String,
    /// Password of the Sentinels themselves (their `requirepass`), when they have one.
    #[arg(
        long,
        env = "REDIS_SENTINEL_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub redis_sentinel_password: Option<Secret>,
    /// Acknowledged writes: a write is answered as done only once `WAIT N` confirms that N
    /// replicas hold it (0: when the master has it).
    #[arg(
        long,
        env = "REDIS_MIN_REPLICAS_ACK",
        default_value_t = 0,
        global = true
    )]
    pub redis_min_replicas_ack: u8,
}

impl RedisSettings {
    /// Values that contradict each other.
    pub fn check(&self) -> Result<(), String> {
        if self.redis_pool_wait > self.redis_timeout {
            return Err("--redis-pool-wait must not exceed --redis-timeout".into());
        }
        Ok(())
    }

    /// The URL with any password replaced by `***`, safe to log.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.redis_url)
    }
}

/// A value that never prints itself: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// `redis://user:pw@host:6379/0` → `redis://user:***@host:6379/0`.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Setting a password only fails for URLs without a host, which have none to hide.
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

fn parse_log_level(s: &str) -> Result<slog::Level, String> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Ok(slog::Level::Trace),
        "debug" => Ok(slog::Level::Debug),
        "info" => Ok(slog::Level::Info),
        "warn" | "warning" => Ok(slog::Level::Warning),
        "error" => Ok(slog::Level::Error),
        "critical" | "fatal" => Ok(slog::Level::Critical),
        _ => Err("expected one of trace, debug, info, warning, error, critical".into()),
    }
}

// The URL parsers' reasons never quote the URL, not even its scheme: a password pasted in
// place of a URL would otherwise reach the error line (url's own reasons are fixed texts).
fn parse_redis_url(s: &str) -> Result<Url, String> {
    url_with_scheme(s, &["redis", "rediss"])
}

/// `host:port` with a port (a Sentinel's address); the host may be a name or an IP.
fn parse_host_port(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (host, port) = s
        .rsplit_once(':')
        .ok_or("expected host:port (e.g. redis-sentinel:26379)")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("the address has no host".into());
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or("the port must be 1-65535")?;
    Ok(s.to_owned())
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    url_with_scheme(s, &["http"])
}

/// A URL with a host and one of `schemes`. The reason never quotes the value (it may hold a
/// password): `url`'s own errors are fixed texts, and the scheme is not repeated.
fn url_with_scheme(s: &str, schemes: &[&str]) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| e.to_string())?;
    if !schemes.contains(&url.scheme()) {
        let expected: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        return Err(format!(
            "unsupported scheme: expected {}",
            expected.join(" or ")
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(url)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// The command line as clap sees it, every environment value hidden from `--help` (a value
/// may be a secret, such as a Redis URL with its password). Applied to the whole tree here,
/// so a flag added later cannot forget it.
pub fn command() -> Command {
    fn hide_env_values(cmd: Command) -> Command {
        cmd.mut_args(|arg| arg.hide_env_values(true))
            .mut_subcommands(hide_env_values)
    }
    hide_env_values(Cli::command())
}

/// Parses `args` (the program name first) with [`command`].
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches_mut(&mut matches)
}

/// Parses the command line, printing the error as one line and exiting 2 when it is wrong.
pub fn parse_cli() -> Cli {
    match try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            eprintln!("platform: {}", error_line(&err));
            std::process::exit(2);
        }
    }
}

/// clap's error in one line that names the flag and the reason but never a word from the
/// command line or the environment other than a flag's name: a rejected value may be a secret
/// (a URL with its password, a password split by an unquoted space) and this line lands in
/// container logs. clap's own message quotes the value.
fn error_line(err: &clap::Error) -> String {
    let context = |kind| match err.get(kind) {
        Some(ContextValue::String(text)) => Some(text.as_str()),
        _ => None,
    };
    // The flag as `--name <VALUE_NAME>`, from our definitions.
    let arg = context(ContextKind::InvalidArg);
    match (err.kind(), arg) {
        (ErrorKind::ValueValidation, Some(arg)) => match std::error::Error::source(err) {
            Some(reason) => format!("invalid value for '{arg}': {reason}"),
            None => format!("invalid value for '{arg}'"),
        },
        (ErrorKind::InvalidValue, Some(arg))
            if context(ContextKind::InvalidValue).is_some_and(str::is_empty) =>
        {
            format!("a value is required for '{arg}' but none was supplied")
        }
        (ErrorKind::InvalidValue, Some(arg)) => match err.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) => format!(
                "invalid value for '{arg}' [possible values: {}]",
                valid.join(", ")
            ),
            _ => format!("invalid value for '{arg}'"),
        },
        (ErrorKind::TooManyValues, Some(arg)) => format!("unexpected extra value for '{arg}'"),
        (ErrorKind::UnknownArgument, Some(word)) => match flag_name(word) {
            Some(flag) => format!("unexpected argument '{flag}' found"),
            None => "unexpected argument found (not shown: it may be a secret)".into(),
        },
        (ErrorKind::InvalidSubcommand, _) => {
            "unrecognized subcommand (not shown: it may be a secret)".into()
        }
        // These name flags and subcommands and count values; none quotes a value.
        (
            ErrorKind::ArgumentConflict
            | ErrorKind::NoEquals
            | ErrorKind::MissingRequiredArgument
            | ErrorKind::MissingSubcommand
            | ErrorKind::TooFewValues
            | ErrorKind::WrongNumberOfValues
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
            _,
        ) => {
            let rendered = err.to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            line.trim_start_matches("error: ").to_owned()
        }
        // Anything else, or a kind clap adds later: its fixed description only.
        (kind, _) => kind.as_str().unwrap_or("invalid arguments").to_owned(),
    }
}

/// The flag part of an unexpected command-line word (`--name` of `--name=value`, `-x` of
/// `-xvalue`), or `None` when the word is not a flag.
fn flag_name(word: &str) -> Option<&str> {
    if word.starts_with("--") {
        return word.split('=').next();
    }
    let first = word.strip_prefix('-')?.chars().next()?;
    word.get(..1 + first.len_utf8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        try_parse_from(std::iter::once("platform").chain(args.iter().copied()))
    }

    #[test]
    fn users_defaults_match_the_contract() {
        let Ok(Cli {
            role: Role::Users(cmd),
        }) = parse(&["users"])
        else {
            panic!("users must parse");
        };
        assert_eq!(cmd.settings.port, 3001);
        assert_eq!(
            cmd.settings.common.shutdown_timeout,
            Duration::from_secs(25)
        );
        assert_eq!(
            cmd.settings.redis.redis_url.as_str(),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            cmd.settings.redis.redis_pool_wait,
            Duration::from_millis(250)
        );
        assert_eq!(cmd.settings.common.max_in_flight, 1024);
        assert_eq!(
            cmd.settings.common.client_body_timeout,
            Duration::from_secs(10)
        );
        assert!(cmd.task.is_none());
    }

    #[test]
    fn gateway_and_all_defaults_match_the_contract() {
        let Ok(Cli {
            role: Role::Gateway(gw),
        }) = parse(&["gateway"])
        else {
            panic!("gateway must parse");
        };
        assert_eq!(gw.port, 3000);
        assert_eq!(gw.users_url.as_str(), "http://127.0.0.1:3001/");
        assert_eq!(gw.upstream.upstream_timeout, Duration::from_secs(5));
        assert_eq!(gw.upstream.max_body, 1024 * 1024);
        let Ok(Cli {
            role: Role::All(all),
        }) = parse(&["all", "--users-port", "4001"])
        else {
            panic!("all must parse");
        };
        assert_eq!((all.gateway_port, all.users().port), (3000, 4001));
        let gateway = all.gateway(4001, 4002);
        assert_eq!(gateway.users_url.as_str(), "http://127.0.0.1:4001/");
        assert_eq!(gateway.auth_url.as_str(), "http://127.0.0.1:4002/");
        assert!(gateway.auth.jwks_url.is_none(), "no signing keys: no JWKS");
        assert_eq!(all.auth_port, 3002);
        assert_eq!(gw.auth_url.as_str(), "http://127.0.0.1:3002/");
        assert!(parse(&["gateway", "--users-url", "ftp://x"]).is_err());
        assert!(parse(&["gateway", "--upstream-timeout", "0s"]).is_err());
        assert!(parse(&["gateway", "--max-in-flight", "0"]).is_err());
        assert!(parse(&["gateway", "--client-body-timeout", "0s"]).is_err());
        let Ok(Cli {
            role: Role::All(all),
        }) = parse(&["all", "--max-in-flight", "8", "--client-body-timeout", "2s"])
        else {
            panic!("all must parse");
        };
        // Each role of `platform all` gets its own cap of this size.
        for common in [&all.users().common, &all.gateway(1, 2).common] {
            assert_eq!(common.max_in_flight, 8);
            assert_eq!(common.client_body_timeout, Duration::from_secs(2));
        }
    }

    fn limits(args: &[&str]) -> Result<LimitSettings, String> {
        let args: Vec<&str> = ["gateway"].iter().chain(args).copied().collect();
        match parse(&args) {
            Ok(Cli {
                role: Role::Gateway(gw),
            }) => gw.limits.check().map(|()| gw.limits),
            Ok(_) => Err("not the gateway".into()),
            Err(e) => Err(format!("clap: {e}")),
        }
    }

    #[test]
    fn rate_limit_defaults_and_checks() {
        let off = limits(&[]).expect("defaults");
        assert_eq!(off.rate_limit, RateLimitMode::Off);
        assert!(off.trusted_proxies.is_empty());
        assert_eq!(off.rate_limit_window, Duration::from_secs(60));
        assert_eq!(off.rate_limit_redis_timeout, Duration::from_millis(100));
        assert_eq!(off.rate_limit_failure_mode, FailureMode::Open);
        assert_eq!(off.rate_limit_headers, RateLimitHeaders::Draft);
        assert_eq!(off.rate_limit_max_keys, 100_000);
        let local =
            limits(&["--rate-limit", "local", "--rate-limit-requests", "10"]).expect("local");
        assert_eq!(local.burst(), Some(10));
        let trusted = limits(&["--trusted-proxies", "10.0.0.0/8, ::1,192.0.2.1"]).expect("CIDRs");
        assert_eq!(trusted.trusted_proxies.len(), 3);
        for bad in [
            &["--trusted-proxies", "10.0.0.0/33"][..],
            &["--rate-limit", "local"],
            &["--rate-limit", "redis", "--rate-limit-requests", "10"],
            &[
                "--rate-limit",
                "redis",
                "--rate-limit-redis-url",
                "redis://r",
            ],
            &["--rate-limit-requests", "0"],
            &["--rate-limit-window", "0s"],
            &["--rate-limit-redis-timeout", "1m"],
            &["--rate-limit-max-keys", "1"],
            &["--rate-limit", "sometimes"],
            // A burst worth 10^9 days cannot be counted in µs.
            &[
                "--rate-limit-requests",
                "1",
                "--rate-limit-burst",
                "1000000000",
                "--rate-limit-window",
                "24h",
            ],
        ] {
            assert!(limits(bad).is_err(), "{bad:?}");
        }
        let Ok(Cli {
            role: Role::All(all),
        }) = parse(&["all", "--trusted-proxies", "10.0.0.0/8"])
        else {
            panic!("all must parse");
        };
        let role = all.auth_role();
        assert!(
            role.trusted_proxies
                .iter()
                .any(|c| c.contains(IpAddr::from([127, 0, 0, 1])))
        );
        assert!(
            role.trusted_proxies
                .iter()
                .any(|c| c.contains(IpAddr::from([10, 1, 2, 3])))
        );
        assert_eq!(all.gateway(1, 2).limits.trusted_proxies.len(), 1);
    }

    #[test]
    fn reindex_is_a_users_subcommand_and_accepts_flags_after_it() {
        let Ok(Cli {
            role: Role::Users(cmd),
        }) = parse(&["users", "reindex", "--redis-url", "redis://db:6380"])
        else {
            panic!("reindex must parse");
        };
        assert!(matches!(cmd.task, Some(UsersTask::Reindex)));
        assert_eq!(cmd.settings.redis.redis_url.port(), Some(6380));
    }

    #[test]
    fn auth_defaults_and_all_points_the_gateway_at_the_in_process_auth_role() {
        let Ok(Cli {
            role: Role::Auth(cmd),
        }) = parse(&["auth"])
        else {
            panic!("auth must parse");
        };
        let tokens = &cmd.settings.tokens;
        assert_eq!(cmd.settings.port, 3002);
        assert_eq!(tokens.audience, "platform-api");
        assert_eq!(tokens.access_token_ttl, Duration::from_secs(15 * 60));
        assert_eq!(tokens.key_publish_delay, Duration::from_secs(300));
        assert_eq!(tokens.argon2.argon2_memory_kib, 19456);
        assert!(tokens.issuer.is_none() && cmd.task.is_none());
        let Ok(Cli {
            role: Role::Auth(cmd),
        }) = parse(&["auth", "generate-key", "/keys"])
        else {
            panic!("generate-key must parse");
        };
        assert!(matches!(cmd.task, Some(AuthTask::GenerateKey { .. })));
        let Ok(Cli {
            role: Role::All(all),
        }) = parse(&["all", "--auth-port", "5002", "--signing-keys-dir", "/k"])
        else {
            panic!("all must parse");
        };
        let gateway = all.gateway(5001, 5002);
        assert_eq!(
            gateway.auth.jwks_url.map(String::from).as_deref(),
            Some("http://127.0.0.1:5002/.well-known/jwks.json")
        );
        assert_eq!(
            gateway.auth.jwt_issuer.as_deref(),
            Some("http://127.0.0.1:3000/api/auth")
        );
        assert_eq!(gateway.auth.auth_mode, AuthMode::Off);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse(&["users", "--port", "70000"]).is_err());
        assert!(parse(&["users", "--redis-url", "http://x"]).is_err());
        assert!(parse(&["users", "--redis-url", "not a url"]).is_err());
        assert!(parse(&["users", "--redis-timeout", "0s"]).is_err());
        assert!(parse(&["users", "--log-level", "loud"]).is_err());
        assert!(parse(&["users", "--shutdown-timeout", "soon"]).is_err());
        assert!(parse(&["users", "--no-such-flag"]).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        let url = Url::parse("redis://user:hunter2@db:6379/0").expect("valid url");
        assert_eq!(redact_url(&url), "redis://user:***@db:6379/0");
    }

    /// Every command, subcommands and their propagated global flags included.
    fn all_commands(cmd: &Command) -> Vec<&Command> {
        std::iter::once(cmd)
            .chain(cmd.get_subcommands().flat_map(all_commands))
            .collect()
    }

    #[test]
    fn help_never_shows_an_environment_value() {
        let mut cmd = command();
        cmd.build();
        let mut checked = 0;
        for sub in all_commands(&cmd) {
            for arg in sub.get_arguments().filter(|a| a.get_env().is_some()) {
                assert!(
                    arg.is_hide_env_values_set(),
                    "`{}` of `{}` would print its environment value in --help",
                    arg.get_id(),
                    sub.get_name()
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "the walk reached the flags ({checked})");
    }

    #[test]
    fn no_rejected_value_reaches_the_error_line() {
        const SECRET: &str = "sekrit-pw";
        let values = [
            format!("redis://:{SECRET}@"),
            format!("http://user:{SECRET}@"),
            format!("{SECRET}:rest@db"),
            format!("ftp://user:{SECRET}@host"),
            SECRET.to_owned(),
        ];
        let mut cmd = command();
        cmd.build();
        let mut rejected = 0;
        for sub in all_commands(&cmd).into_iter().skip(1) {
            let path: Vec<&str> = match sub.get_name() {
                "reindex" => vec!["users", "reindex"],
                "generate-key" => vec!["auth", "generate-key"],
                "hash-secret" => vec!["auth", "hash-secret"],
                name => vec![name],
            };
            for flag in sub.get_arguments().filter_map(|a| a.get_long()) {
                for value in &values {
                    let long = format!("--{flag}");
                    let joined = format!("--{flag}={value}");
                    for tail in [vec![long.as_str(), value.as_str()], vec![joined.as_str()]] {
                        let args = std::iter::once("platform")
                            .chain(path.iter().copied())
                            .chain(tail);
                        let Err(err) = try_parse_from(args) else {
                            continue;
                        };
                        let line = error_line(&err);
                        assert!(!line.contains(SECRET), "{flag}={value} → {line}");
                        rejected += 1;
                    }
                }
            }
        }
        assert!(rejected > 50, "enough values were rejected ({rejected})");
        for words in [
            &["platform", SECRET][..],
            &["platform", "users", SECRET],
            &["platform", "gateway", SECRET],
            &["platform", "users", "--redis-password", "a", SECRET],
        ] {
            let err = try_parse_from(words).expect_err("a stray word is rejected");
            assert!(!error_line(&err).contains(SECRET), "{words:?}");
        }
    }

    #[test]
    fn the_error_line_names_the_flag_and_the_reason() {
        let line = |args: &[&str]| error_line(&parse(args).expect_err("rejected"));
        assert_eq!(
            line(&["users", "--redis-url", "redis://:pw@"]),
            "invalid value for '--redis-url <REDIS_URL>': empty host"
        );
        assert_eq!(
            line(&["users", "--log-format", "loud"]),
            "invalid value for '--log-format <LOG_FORMAT>' [possible values: json, pretty]"
        );
        assert_eq!(
            line(&["users", "--redis-pasword=pw"]),
            "unexpected argument '--redis-pasword' found"
        );
        assert_eq!(
            line(&["users", "--port", "1", "--port", "2"]),
            "the argument '--port <PORT>' cannot be used multiple times"
        );
        assert_eq!(flag_name("-xpw"), Some("-x"));
        assert_eq!(flag_name("pw"), None);
    }
}
