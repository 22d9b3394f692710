//! The answers to a refused credential (RFC 6750 §3): the §2 error body with a
//! `WWW-Authenticate: Bearer` challenge that says no more than expired / not yet valid / not valid.

use actix_web::http::header::{self, HeaderValue};

use super::Auth;
use super::token::Reason;
use crate::http::error::{ApiError, ErrorCode};

/// How long a client should wait when no key set is loaded.
const RETRY_AFTER_SECONDS: &str = "5";

/// The answer for a request refused for `reason`.
pub fn refusal(reason: Reason, auth: &Auth) -> ApiError {
    let realm = &auth.realm;
    let invalid = |description: &str| {
        (
            ErrorCode::InvalidToken,
            "the bearer token is not accepted",
            format!(
                r#"Bearer realm="{realm}", error="invalid_token", error_description="{description}""#
            ),
        )
    };
    let (code, message, challenge) = match reason {
        Reason::Missing => (
            ErrorCode::AuthenticationRequired,
            "a bearer token is required",
            format!(r#"Bearer realm="{realm}""#),
        ),
        Reason::Malformed | Reason::MultipleCredentials => (
            ErrorCode::InvalidRequest,
            "send one bearer token, in the Authorization header or the cookie",
            format!(r#"Bearer realm="{realm}", error="invalid_request""#),
        ),
        Reason::Expired => invalid("token expired"),
        Reason::NotYetValid => invalid("token not yet valid"),
        Reason::BadSignature
        | Reason::BadIssuer
        | Reason::BadAlgorithm
        | Reason::UnknownKey
        | Reason::Lifetime
        | Reason::Invalid => invalid("token not valid"),
        Reason::BadAudience => (
            ErrorCode::InsufficientScope,
            "the bearer token is not for this API",
            format!(r#"Bearer realm="{realm}", error="insufficient_scope""#),
        ),
        Reason::InsufficientScope => (
            ErrorCode::InsufficientScope,
            "the bearer token lacks the scope this request needs",
            format!(
                r#"Bearer realm="{realm}", error="insufficient_scope", scope="{}""#,
                auth.write_scope.as_deref().unwrap_or_default()
            ),
        ),
        Reason::NoKeys => {
            return ApiError::new(
                ErrorCode::AuthUnavailable,
                "tokens cannot be verified right now",
            )
            .with_header(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        Reason::Ok => unreachable!("an accepted token is never refused"),
    };
    let error = ApiError::new(code, message);
    match HeaderValue::try_from(challenge) {
        Ok(challenge) => error.with_header(header::WWW_AUTHENTICATE, challenge),
        // The realm and scope come from flags; one a header cannot carry leaves the challenge out.
        Err(_) => error,
    }
}
