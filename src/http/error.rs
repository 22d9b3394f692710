//! The one JSON error body of CONTRACT §2 and the code → status table, defined once.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, HeaderName, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use futures_util::future::{Ready, ready};
use serde::Serialize;
use utoipa::ToSchema;

/// Every error code either role answers with. The status of each is fixed here. The
/// schema's names are `as_str`'s (a unit test holds them equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ErrorCode {
    ValidationError,
    InvalidJson,
    DuplicateEmail,
    UserNotFound,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    ExpectationFailed,
    InvalidRequest,
    AuthenticationRequired,
    InvalidToken,
    InsufficientScope,
    InvalidCredentials,
    TooManyAttempts,
    RateLimited,
    RequestTimeout,
    Conflict,
    IdempotencyKeyReused,
    StoreUnavailable,
    AuthUnavailable,
    UpstreamUnavailable,
    UpstreamTimeout,
    Overloaded,
    InternalServerError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidationError => "validation_error",
            Self::InvalidJson => "invalid_json",
            Self::DuplicateEmail => "duplicate_email",
            Self::UserNotFound => "user_not_found",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::ExpectationFailed => "expectation_failed",
            Self::InvalidRequest => "invalid_request",
            Self::AuthenticationRequired => "authentication_required",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
            Self::InvalidCredentials => "invalid_credentials",
            Self::TooManyAttempts => "too_many_attempts",
            Self::RateLimited => "rate_limited",
            Self::RequestTimeout => "request_timeout",
            Self::Overloaded => "overloaded",
            Self::AuthUnavailable => "auth_unavailable",
            Self::Conflict => "conflict",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::StoreUnavailable => "store_unavailable",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::InternalServerError => "internal_server_error",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::ValidationError | Self::InvalidJson | Self::InvalidRequest => {
                StatusCode::BAD_REQUEST
            }
            Self::AuthenticationRequired | Self::InvalidToken | Self::InvalidCredentials => {
                StatusCode::UNAUTHORIZED
            }
            Self::TooManyAttempts | Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::InsufficientScope => StatusCode::FORBIDDEN,
            Self::UserNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::DuplicateEmail | Self::Conflict => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            Self::StoreUnavailable | Self::AuthUnavailable | Self::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ErrorCode {
    /// Whether the connection closes after this answer, the one place that decides it. An
    /// answer given before the request's body was read leaves that body on the connection,
    /// where it would be parsed as the next request (actix-web #2632): after a 413 (the rest
    /// is never read), and after an answer given before a handler read the body (unknown
    /// path, wrong method or media type, a refused expectation or credential) to a request
    /// that has one.
    pub fn closes_connection(self, request_has_body: bool) -> bool {
        match self {
            // The rest of the body was never read (413), or is still on its way (408).
            Self::PayloadTooLarge | Self::RequestTimeout => true,
            Self::NotFound
            | Self::MethodNotAllowed
            | Self::UnsupportedMediaType
            | Self::ExpectationFailed
            | Self::InvalidRequest
            | Self::AuthenticationRequired
            | Self::InvalidToken
            | Self::InsufficientScope
            | Self::AuthUnavailable
            | Self::RateLimited
            | Self::Overloaded => request_has_body,
            Self::ValidationError
            | Self::InvalidJson
            | Self::DuplicateEmail
            | Self::UserNotFound
            | Self::InvalidCredentials
            | Self::TooManyAttempts
            | Self::Conflict
            | Self::IdempotencyKeyReused
            | Self::StoreUnavailable
            | Self::UpstreamUnavailable
            | Self::UpstreamTimeout
            | Self::InternalServerError => false,
        }
    }
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field (a body member, a query parameter, a path segment or a header).
    #[schema(value_type = String, example = "email")]
    pub field: &'static str,
    #[schema(example = "must contain one @")]
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// An error answered to a client. 5xx keep their cause for the log, never for the body.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Vec<FieldError>,
    pub cause: Option<anyhow::Error>,
    /// Headers the answer carries besides the body (`WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The error body of CONTRACT §2, the one every error of every role has.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// A stable snake_case code; the status says the rest.
    #[schema(value_type = ErrorCode)]
    error: &'static str,
    /// What went wrong, for a person.
    #[schema(value_type = String)]
    message: &'a str,
    /// Each invalid field (validation errors only).
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    #[schema(value_type = Option<Vec<FieldError>>)]
    details: &'a [FieldError],
    /// The request's id, as in the `X-Request-ID` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    request_id: Option<&'a str>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            cause: None,
            headers: Vec::new(),
        }
    }

    /// The same error, answered with `name: value` as well.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A 400 naming each invalid field; the message repeats the first one.
    pub fn validation(details: Vec<FieldError>) -> Self {
        let message = details
            .iter()
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            details,
            ..Self::new(ErrorCode::ValidationError, message)
        }
    }

    pub fn field(field: &'static str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    /// A 5xx whose cause is logged but never shown to the client.
    pub fn with_cause(code: ErrorCode, message: impl Into<String>, cause: anyhow::Error) -> Self {
        Self {
            cause: Some(cause),
            ..Self::new(code, message)
        }
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no route matches this path")
    }

    /// A 413 for a body over `limit` bytes.
    pub fn payload_too_large(limit: u64) -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than {limit} bytes"),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            ErrorCode::MethodNotAllowed,
            "this method is not allowed on this path",
        )
    }

    /// The response for this error, carrying `request_id` in its body when known.
    pub fn render(&self, request_id: Option<&str>) -> HttpResponse {
        let body = ErrorBody {
            error: self.code.as_str(),
            message: &self.message,
            details: &self.details,
            request_id,
        };
        let mut response = HttpResponse::build(self.code.status());
        for (name, value) in &self.headers {
            response.insert_header((name.clone(), value.clone()));
        }
        response.json(body)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    /// Rendered without a request id here; the observe middleware renders it again with one.
    fn error_response(&self) -> HttpResponse {
        self.render(None)
    }
}

/// Default service of an app: unknown path.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found())
}

/// Default service of a resource: known path, wrong method.
pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::method_not_allowed())
}

/// Default service of a resource serving `methods` (e.g. `"GET, POST"`): the 405 with the
/// `Allow` header RFC 9110 §15.5.6 requires.
pub fn allow(
    methods: &'static str,
) -> impl Fn() -> Ready<Result<HttpResponse, ApiError>> + Clone + 'static {
    move || {
        ready(Err(
            ApiError::method_not_allowed().with_header(ALLOW, HeaderValue::from_static(methods))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document's names of the codes are the ones answered.
    #[test]
    fn the_schema_names_every_code_as_answered() {
        let schema = serde_json::to_value(<ErrorCode as utoipa::PartialSchema>::schema())
            .expect("a schema serializes");
        let named: Vec<String> = serde_json::from_value(schema["enum"].clone()).expect("an enum");
        use ErrorCode::*;
        let all = [
            ValidationError,
            InvalidJson,
            DuplicateEmail,
            UserNotFound,
            NotFound,
            MethodNotAllowed,
            PayloadTooLarge,
            UnsupportedMediaType,
            ExpectationFailed,
            InvalidRequest,
            AuthenticationRequired,
            InvalidToken,
            InsufficientScope,
            InvalidCredentials,
            TooManyAttempts,
            RateLimited,
            RequestTimeout,
            Conflict,
            IdempotencyKeyReused,
            StoreUnavailable,
            AuthUnavailable,
            UpstreamUnavailable,
            UpstreamTimeout,
            Overloaded,
            InternalServerError,
        ];
        let answered: Vec<&str> = all.iter().map(|c| c.as_str()).collect();
        assert_eq!(named, answered);
    }

    #[test]
    fn validation_message_names_the_fields() {
        let err = ApiError::validation(vec![
            FieldError::new("email", "must contain one @"),
            FieldError::new("name", "must not be empty"),
        ]);
        assert_eq!(err.code.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            err.message,
            "email: must contain one @; name: must not be empty"
        );
    }
}
