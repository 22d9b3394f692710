//! Authentication at the edge (part of the request filter): which requests need a bearer
//! token, verifying it against the provider's keys (cached per worker until the token's
//! `exp`), and the RFC 6750 answers when it fails.

mod answer;
pub mod keys;
pub mod token;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::HttpRequest;
use actix_web::http::Method;
use hashbrown::HashMap;
use metrics::{Counter, counter};

use self::keys::KeySet;
use self::token::{Checks, Reason, Verified};
use crate::config::{AuthMode, AuthSettings};
use crate::http::error::ApiError;
use crate::telemetry::metrics::Metrics;

/// Verified tokens one worker remembers; beyond that, expired ones go, then all. The map
/// hashes a token's few hundred bytes on every request: foldhash (hashbrown's default, seeded
/// per process), not SipHash.
const CACHE_ENTRIES: usize = 10_000;

/// The gateway's authentication, shared by its workers.
pub struct Auth {
    mode: AuthMode,
    checks: Checks,
    keys: Arc<KeySet>,
    cookie: Option<String>,
    write_scope: Option<String>,
    forward_token: bool,
    realm: String,
}

impl Auth {
    pub fn new(settings: &AuthSettings, keys: Arc<KeySet>) -> Self {
        Self {
            mode: settings.auth_mode,
            checks: Checks::new(settings),
            keys,
            // An empty value (`JWT_COOKIE=` in a ConfigMap) means none, as leaving it out does.
            cookie: settings.jwt_cookie.clone().filter(|c| !c.is_empty()),
            write_scope: settings
                .jwt_write_scope
                .clone()
                .filter(|s| !s.trim().is_empty()),
            forward_token: settings.jwt_forward_token,
            realm: settings.auth_realm.clone(),
        }
    }

    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// Whether some request needs a token (the key set is then a readiness dependency).
    pub fn is_required(&self) -> bool {
        self.mode != AuthMode::Off
    }

    /// The cookie a token may come in (`--jwt-cookie`).
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    pub fn forwards_token(&self) -> bool {
        self.forward_token
    }
}

/// A verified token, with the version of the key set it was verified with.
type Cached = (u64, Rc<Verified>);

/// One worker's side of authentication: its cache of verified tokens and its counters.
pub struct WorkerAuth {
    auth: Arc<Auth>,
    cache: RefCell<HashMap<Box<str>, Cached>>,
    /// `authentication_attempts_total`, by `Reason::ALL`'s order.
    attempts: Vec<Counter>,
}

impl WorkerAuth {
    pub fn new(auth: Arc<Auth>, metrics: &Metrics) -> Self {
        let attempts = metrics.register(|| {
            Reason::ALL
                .iter()
                .map(|reason| {
                    counter!("authentication_attempts_total",
                        "status" => reason.status(), "reason" => reason.as_str())
                })
                .collect()
        });
        Self {
            auth,
            cache: RefCell::default(),
            attempts,
        }
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The verified token of `req`, `None` for an anonymous request its mode lets through,
    /// or the answer that refuses it.
    pub async fn authenticate(&self, req: &HttpRequest) -> Result<Option<Rc<Verified>>, ApiError> {
        let result = self.check(req).await;
        let reason = match &result {
            Ok(Some(_)) => Some(Reason::Ok),
            Ok(None) => None,
            Err(reason) => Some(*reason),
        };
        if let Some(reason) = reason
            && let Some(i) = Reason::ALL.iter().position(|r| *r == reason)
        {
            self.attempts[i].increment(1);
        }
        result.map_err(|reason| answer::refusal(reason, &self.auth))
    }

    async fn check(&self, req: &HttpRequest) -> Result<Option<Rc<Verified>>, Reason> {
        let auth = &*self.auth;
        // Every method but the safe ones writes (RFC 9110 §9.2.1): an unknown one too.
        let writes = !matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        let required = match auth.mode {
            AuthMode::Off => false,
            AuthMode::Writes => writes,
            AuthMode::All => true,
        };
        let token = match token::credential(req.headers(), auth.cookie.as_deref()) {
            Ok(token) => token,
            // Without a mode that needs tokens, other schemes (Basic) pass as before.
            Err(Reason::Malformed) if auth.mode == AuthMode::Off => None,
            Err(reason) => return Err(reason),
        };
        let Some(token) = token else {
            return if required {
                Err(Reason::Missing)
            } else {
                Ok(None)
            };
        };
        let verified = self.verified(token).await?;
        if required
            && writes
            && let Some(scope) = &auth.write_scope
            && !verified.has_scope(scope)
        {
            return Err(Reason::InsufficientScope);
        }
        Ok(Some(verified))
    }

    /// A cached verification while the token has not expired and the key set has not
    /// changed (a removed key stops verifying), else a fresh one.
    async fn verified(&self, token: &str) -> Result<Rc<Verified>, Reason> {
        let now = token::now();
        let version = self.auth.keys.version();
        if let Some((seen, hit)) = self.cache.borrow().get(token)
            && *seen == version
            && now <= hit.expires
        {
            return Ok(hit.clone());
        }
        let verified = Rc::new(self.auth.checks.verify(token, &self.auth.keys).await?);
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (seen, v)| *seen == version && now <= v.expires);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        // The version read before verifying: a set loaded meanwhile makes this entry stale.
        cache.insert(token.into(), (version, verified.clone()));
        Ok(verified)
    }
}
