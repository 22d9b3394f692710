//! The client_credentials grant (RFC 6749 §4.4): the request, the client's credentials, the
//! scope, and the access token (RFC 9068 JWT, ES256).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;

use super::error::OAuthError;
use super::keys::SigningKey;

pub const CLIENT_CREDENTIALS: &str = "client_credentials";
pub const REFRESH_TOKEN: &str = "refresh_token";
/// The `grant` label of tokens a login issues.
pub const PASSWORD: &str = "password";
/// The `client_id` claim of tokens issued to people (login, refresh): the platform's own
/// first-party client, which needs no secret.
pub const FIRST_PARTY_CLIENT: &str = "platform";

/// The form's parameters, each at most once.
fn form_pairs(form: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(form)
        .map_err(|_| OAuthError::InvalidRequest("the body is not a valid form"))?;
    let mut names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(OAuthError::InvalidRequest("a parameter is repeated"));
    }
    Ok(pairs)
}

/// The refresh token of a `grant_type=refresh_token` request (RFC 6749 §6), `None` for any
/// other grant.
pub fn refresh_request(form: &[u8]) -> Result<Option<String>, OAuthError> {
    let pairs = form_pairs(form)?;
    let param = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    if param("grant_type").map(String::as_str) != Some(REFRESH_TOKEN) {
        return Ok(None);
    }
    match param("refresh_token") {
        Some(token) if !token.is_empty() => Ok(Some(token.clone())),
        _ => Err(OAuthError::InvalidRequest("refresh_token is missing")),
    }
}

/// A token request, parsed: the grant, the client's credentials, the requested scopes.
#[derive(Debug)]
pub struct TokenRequest {
    pub client_id: String,
    pub secret: String,
    /// Whether the credentials came in `Authorization: Basic`.
    pub basic: bool,
    pub scope: Option<Vec<String>>,
}

impl TokenRequest {
    /// Parses the form body and the `Authorization` header (RFC 6749 §2.3.1, §3.2, §4.4.2).
    pub fn parse(form: &[u8], authorization: Option<&str>) -> Result<Self, OAuthError> {
        let pairs = form_pairs(form)?;
        let param = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        match param("grant_type") {
            None => return Err(OAuthError::InvalidRequest("grant_type is missing")),
            Some(CLIENT_CREDENTIALS) => {}
            Some(_) => return Err(OAuthError::UnsupportedGrantType),
        }
        let in_body = (param("client_id"), param("client_secret"));
        let (client_id, secret, basic) = match (authorization, in_body) {
            (Some(_), (Some(_), _) | (_, Some(_))) => {
                return Err(OAuthError::InvalidRequest(
                    "client credentials in both the header and the body",
                ));
            }
            (Some(header), _) => {
                let (id, secret) =
                    basic_credentials(header).ok_or(OAuthError::InvalidClient { basic: true })?;
                (id, secret, true)
            }
            (None, (Some(id), Some(secret))) => (id.to_owned(), secret.to_owned(), false),
            (None, _) => return Err(OAuthError::InvalidClient { basic: false }),
        };
        let scope = match param("scope").map(str::trim) {
            None | Some("") => None,
            Some(scope) => Some(parse_scope(scope)?),
        };
        Ok(Self {
            client_id,
            secret,
            basic,
            scope,
        })
    }
}

/// Scope tokens (RFC 6749 §3.3: NQCHAR, space-separated), each once.
fn parse_scope(scope: &str) -> Result<Vec<String>, OAuthError> {
    let mut tokens: Vec<String> = Vec::new();
    for token in scope.split(' ').filter(|t| !t.is_empty()) {
        let valid = token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !valid {
            return Err(OAuthError::InvalidScope);
        }
        if !tokens.iter().any(|t| t == token) {
            tokens.push(token.to_owned());
        }
    }
    Ok(tokens)
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1) → (id, secret).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let (id, secret) = (form_decode(id)?, form_decode(secret)?);
    (!id.is_empty()).then_some((id, secret))
}

/// application/x-www-form-urlencoded decoding of one value: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// The scopes granted: those requested, each one the client's (none requested: all of them).
pub fn granted(
    requested: Option<Vec<String>>,
    allowed: &[String],
) -> Result<Vec<String>, OAuthError> {
    match requested {
        None => Ok(allowed.to_vec()),
        Some(requested) if requested.iter().all(|s| allowed.contains(s)) => Ok(requested),
        Some(_) => Err(OAuthError::InvalidScope),
    }
}

/// RFC 9068 §2.2 claims.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    nbf: u64,
    jti: String,
    scope: &'a str,
    client_id: &'a str,
}

/// What a token is issued with.
pub struct Issuer {
    pub issuer: String,
    pub audience: String,
    pub ttl: Duration,
}

impl Issuer {
    /// Signs an access token for `subject` (a client, or a user's id) obtained through
    /// `client_id`, with `scope` (space-separated).
    pub fn issue(
        &self,
        key: &SigningKey,
        subject: &str,
        client_id: &str,
        scope: &str,
        now: SystemTime,
    ) -> anyhow::Result<String> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            iss: &self.issuer,
            sub: subject,
            aud: &self.audience,
            exp: iat + self.ttl.as_secs(),
            iat,
            nbf: iat,
            jti: uuid::Uuid::new_v4().to_string(),
            scope,
            client_id,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &key.encoding)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &str = "grant_type=client_credentials";

    #[test]
    fn credentials_come_from_basic_or_the_body_never_both() {
        // RFC 6749 §2.3.1: each part is form-urlencoded before base64.
        let header = format!("Basic {}", STANDARD.encode("my%3Aapp:p%40ss+word"));
        let req = TokenRequest::parse(FORM.as_bytes(), Some(&header)).expect("parsed");
        assert_eq!(
            (req.client_id.as_str(), req.secret.as_str()),
            ("my:app", "p@ss word")
        );
        assert!(req.basic && req.scope.is_none());
        let body = format!("{FORM}&client_id=a&client_secret=b&scope=x%20y%20x");
        let req = TokenRequest::parse(body.as_bytes(), None).expect("parsed");
        assert_eq!(req.scope, Some(vec!["x".to_owned(), "y".to_owned()]));
        assert!(!req.basic);
        assert_eq!(
            TokenRequest::parse(body.as_bytes(), Some(&header)).map(|_| ()),
            Err(OAuthError::InvalidRequest(
                "client credentials in both the header and the body"
            ))
        );
        assert_eq!(
            TokenRequest::parse(FORM.as_bytes(), None).map(|_| ()),
            Err(OAuthError::InvalidClient { basic: false })
        );
        assert_eq!(
            TokenRequest::parse(FORM.as_bytes(), Some("Bearer x")).map(|_| ()),
            Err(OAuthError::InvalidClient { basic: true })
        );
    }

    #[test]
    fn the_grant_and_parameters_are_checked() {
        let parse = |form: &str| TokenRequest::parse(form.as_bytes(), None).map(|_| ());
        assert_eq!(
            parse("grant_type=password&client_id=a&client_secret=b"),
            Err(OAuthError::UnsupportedGrantType)
        );
        assert!(matches!(
            parse("client_id=a"),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert!(matches!(
            parse("grant_type=client_credentials&grant_type=client_credentials"),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert_eq!(
            parse("grant_type=client_credentials&client_id=a&client_secret=b&scope=%22"),
            Err(OAuthError::InvalidScope)
        );
    }

    #[test]
    fn only_a_subset_of_the_clients_scopes_is_granted() {
        let allowed = ["a".to_owned(), "b".to_owned()];
        assert_eq!(granted(None, &allowed), Ok(allowed.to_vec()));
        assert_eq!(
            granted(Some(vec!["b".into()]), &allowed),
            Ok(vec!["b".into()])
        );
        assert_eq!(
            granted(Some(vec!["b".into(), "c".into()]), &allowed),
            Err(OAuthError::InvalidScope)
        );
    }
}
