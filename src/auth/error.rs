//! The token endpoint's errors: RFC 6749 §5.2 bodies (`error`, `error_description`) with our
//! `message` (the same text) and `request_id`, so they also read as CONTRACT §2 bodies.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE};
use serde_json::json;

/// The realm of the `WWW-Authenticate: Basic` challenge.
pub const REALM: &str = "platform";

/// Why a token request is refused; one exhaustive table of code, status and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthError {
    /// Malformed: wrong content type, a repeated or missing parameter, two client credentials.
    InvalidRequest(&'static str),
    /// Unknown client or wrong secret (one answer for both); `basic`: it came in a header.
    InvalidClient {
        basic: bool,
    },
    UnsupportedGrantType,
    /// An unknown, expired, revoked or reused refresh token (RFC 6749 §5.2).
    InvalidGrant,
    /// A requested scope the client may not have.
    InvalidScope,
    /// No signing key is loaded yet.
    TemporarilyUnavailable,
}

impl OAuthError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient { .. } => "invalid_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidGrant => "invalid_grant",
            Self::InvalidScope => "invalid_scope",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_)
            | Self::UnsupportedGrantType
            | Self::InvalidGrant
            | Self::InvalidScope => StatusCode::BAD_REQUEST,
            Self::InvalidClient { .. } => StatusCode::UNAUTHORIZED,
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn description(&self) -> &'static str {
        match self {
            Self::InvalidRequest(why) => why,
            Self::InvalidClient { .. } => "client authentication failed",
            Self::UnsupportedGrantType => {
                "the grant_types supported are client_credentials and refresh_token"
            }
            Self::InvalidGrant => "the refresh token is invalid, expired or revoked",
            Self::InvalidScope => "a requested scope is not granted to this client",
            Self::TemporarilyUnavailable => "no signing key is loaded yet",
        }
    }

    /// The answer, with `request_id` in its body.
    pub fn render(&self, request_id: &str) -> HttpResponse {
        let mut res = HttpResponse::build(self.status());
        res.insert_header((CACHE_CONTROL, "no-store"))
            .insert_header((PRAGMA, "no-cache"));
        match self {
            Self::InvalidClient { basic: true } => {
                res.insert_header((WWW_AUTHENTICATE, format!("Basic realm=\"{REALM}\"")));
            }
            Self::TemporarilyUnavailable => {
                res.insert_header((RETRY_AFTER, "5"));
            }
            Self::InvalidRequest(_)
            | Self::InvalidClient { basic: false }
            | Self::UnsupportedGrantType
            | Self::InvalidGrant
            | Self::InvalidScope => {}
        }
        let description = self.description();
        res.json(json!({
            "error": self.code(),
            "error_description": description,
            "message": description,
            "request_id": request_id,
        }))
    }
}
