//! A request's credential and its verification: where the token may come from, the checks it
//! must pass, and what a verified token says (its subject, scopes and claim headers).

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::keys::{KeySet, Missing};
use crate::config::{AuthSettings, ClaimHeader};

/// Why a request was or was not authenticated: the `reason` label, from a fixed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Ok,
    /// No credential where one is needed.
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    Malformed,
    Expired,
    NotYetValid,
    BadSignature,
    BadIssuer,
    BadAudience,
    BadAlgorithm,
    UnknownKey,
    Lifetime,
    /// A token that does not decode, or lacks a required claim.
    Invalid,
    InsufficientScope,
    MultipleCredentials,
    /// No key set has loaded: the gateway cannot tell.
    NoKeys,
}

impl Reason {
    pub const ALL: [Reason; 15] = [
        Self::Ok,
        Self::Missing,
        Self::Malformed,
        Self::Expired,
        Self::NotYetValid,
        Self::BadSignature,
        Self::BadIssuer,
        Self::BadAudience,
        Self::BadAlgorithm,
        Self::UnknownKey,
        Self::Lifetime,
        Self::Invalid,
        Self::InsufficientScope,
        Self::MultipleCredentials,
        Self::NoKeys,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::BadIssuer => "bad_issuer",
            Self::BadAudience => "bad_audience",
            Self::BadAlgorithm => "bad_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::Lifetime => "lifetime",
            Self::Invalid => "invalid",
            Self::InsufficientScope => "insufficient_scope",
            Self::MultipleCredentials => "multiple_credentials",
            Self::NoKeys => "no_keys",
        }
    }

    /// The `status` label: the client's failure, or the gateway's own error.
    pub fn status(self) -> &'static str {
        match self {
            Self::Ok => "success",
            Self::NoKeys => "error",
            _ => "failure",
        }
    }
}

/// The bearer token of a request: `Authorization: Bearer`, or the named cookie; never the
/// query string (RFC 6750 §2.3: it ends up in logs). Two credentials are refused.
pub fn credential<'a>(
    headers: &'a HeaderMap,
    cookie: Option<&str>,
) -> Result<Option<&'a str>, Reason> {
    let mut authorization = headers.get_all(header::AUTHORIZATION);
    let bearer = match (authorization.next(), authorization.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err(Reason::MultipleCredentials),
        (Some(value), None) => Some(bearer(value).ok_or(Reason::Malformed)?),
    };
    let from_cookie = match cookie {
        Some(name) => cookie_value(headers, name)?,
        None => None,
    };
    match (bearer, from_cookie) {
        (Some(_), Some(_)) => Err(Reason::MultipleCredentials),
        (token, None) | (None, token) => Ok(token),
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// The named cookie's value; the same cookie twice is two credentials.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Reason> {
    let mut values = headers
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty());
    match (values.next(), values.next()) {
        (_, Some(_)) => Err(Reason::MultipleCredentials),
        (value, None) => Ok(value),
    }
}

/// What a verified token says.
#[derive(Debug)]
pub struct Verified {
    pub subject: Option<Rc<str>>,
    pub scopes: Vec<Box<str>>,
    /// The claim headers to send upstream.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Its `exp`, in Unix seconds: a cached verification ends there.
    pub expires: u64,
}

impl Verified {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }
}

/// The checks every token must pass, built once from the settings.
pub struct Checks {
    algorithms: Vec<Algorithm>,
    validation: Validation,
    max_lifetime: u64,
    claim_headers: Vec<ClaimHeader>,
}

impl Checks {
    pub fn new(settings: &AuthSettings) -> Self {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = settings.jwt_leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &settings.jwt_issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        // `JWT_AUDIENCES=` (an empty ConfigMap value) means no audience, as leaving it out does.
        let audiences: Vec<&str> = settings
            .jwt_audiences
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .collect();
        if audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Self {
            algorithms: settings.jwt_algorithms.clone(),
            validation,
            max_lifetime: settings.jwt_max_lifetime.as_secs(),
            claim_headers: settings.jwt_claim_headers.clone(),
        }
    }

    /// Verifies `token` against `keys`: the header's algorithm is allowed and is the key's,
    /// the signature holds, `iss`, `aud`, `exp`, `nbf` and the lifetime are within bounds.
    pub async fn verify(&self, token: &str, keys: &KeySet) -> Result<Verified, Reason> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Reason::Invalid)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Reason::BadAlgorithm);
        }
        let key = keys
            .find(header.kid.as_deref())
            .await
            .map_err(|missing| match missing {
                Missing::NoKeys => Reason::NoKeys,
                Missing::Unknown => Reason::UnknownKey,
            })?;
        if key.alg.is_some_and(|alg| alg != header.alg) || key.key.family() != header.alg.family() {
            return Err(Reason::BadAlgorithm);
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| reason(e.kind()))?
            .claims;
        let expires = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(Reason::Invalid)?;
        // A token issued in the future is not valid yet; one that claims a late `iat` cannot
        // stretch its lifetime past the bound either (the lifetime counts from now at most).
        let now = now();
        let issued = claims.get("iat").and_then(Value::as_u64);
        if issued.is_some_and(|iat| iat > now.saturating_add(self.validation.leeway)) {
            return Err(Reason::NotYetValid);
        }
        let from = issued.map_or(now, |iat| iat.min(now));
        if expires.saturating_sub(from) > self.max_lifetime {
            return Err(Reason::Lifetime);
        }
        // The subject is who the request is for (RFC 9068 requires it): one a header cannot
        // carry would reach the upstream as nobody.
        let subject = claims.get("sub").and_then(Value::as_str);
        if subject.is_none_or(|s| HeaderValue::from_str(s).is_err()) {
            return Err(Reason::Invalid);
        }
        Ok(self.verified(&claims, expires))
    }

    fn verified(&self, claims: &Map<String, Value>, expires: u64) -> Verified {
        let scopes = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(scope)), _) => scope.split_whitespace().map(Box::from).collect(),
            (_, Some(Value::Array(scp))) => scp
                .iter()
                .filter_map(Value::as_str)
                .map(Box::from)
                .collect(),
            _ => Vec::new(),
        };
        let headers = self
            .claim_headers
            .iter()
            .filter_map(|ch| {
                let text = claim_text(claims.get(&ch.claim)?)?;
                // A value a header cannot carry (control characters) is left out, not mangled.
                Some((ch.header.clone(), HeaderValue::from_str(&text).ok()?))
            })
            .collect();
        Verified {
            subject: claims.get("sub").and_then(Value::as_str).map(Rc::from),
            scopes,
            headers,
            expires,
        }
    }
}

/// A claim as header text: a string as is, a list of strings space-separated, a number or a
/// boolean as JSON writes it.
fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let words: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            (!words.is_empty()).then(|| words.join(" "))
        }
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        Value::Null | Value::Object(_) => None,
    }
}

/// The reason a decoding error stands for.
fn reason(kind: &ErrorKind) -> Reason {
    match kind {
        ErrorKind::ExpiredSignature => Reason::Expired,
        ErrorKind::ImmatureSignature => Reason::NotYetValid,
        ErrorKind::InvalidSignature => Reason::BadSignature,
        ErrorKind::InvalidIssuer => Reason::BadIssuer,
        ErrorKind::InvalidAudience => Reason::BadAudience,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => Reason::BadAlgorithm,
        _ => Reason::Invalid,
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    #[test]
    fn the_token_comes_from_one_place_only() {
        let cookie = Some("session");
        assert_eq!(credential(&headers(&[]), cookie), Ok(None));
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer abc.def.ghi")]), cookie),
            Ok(Some("abc.def.ghi"))
        );
        assert_eq!(
            credential(&headers(&[("authorization", "bearer  abc")]), None),
            Ok(Some("abc"))
        );
        assert_eq!(
            credential(&headers(&[("cookie", "a=1; session=tok; b=2")]), cookie),
            Ok(Some("tok"))
        );
        assert_eq!(
            credential(&headers(&[("cookie", "session=tok")]), None),
            Ok(None),
            "a cookie counts only when named"
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Basic dXNlcjpwdw==")]), cookie),
            Err(Reason::Malformed)
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer")]), cookie),
            Err(Reason::Malformed)
        );
        assert_eq!(
            credential(
                &headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
                cookie
            ),
            Err(Reason::MultipleCredentials)
        );
        assert_eq!(
            credential(
                &headers(&[("authorization", "Bearer a"), ("cookie", "session=b")]),
                cookie
            ),
            Err(Reason::MultipleCredentials)
        );
        assert_eq!(
            credential(&headers(&[("cookie", "session=a; session=b")]), cookie),
            Err(Reason::MultipleCredentials)
        );
    }

    #[test]
    fn claims_become_header_text() {
        assert_eq!(claim_text(&Value::from("a b")), Some("a b".into()));
        assert_eq!(
            claim_text(&serde_json::json!(["users:read", "users:write"])),
            Some("users:read users:write".into())
        );
        assert_eq!(claim_text(&Value::from(7)), Some("7".into()));
        assert_eq!(claim_text(&serde_json::json!({"x": 1})), None);
    }

    #[test]
    fn every_reason_has_a_distinct_label() {
        let mut labels: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
