//! How the users role's failures reach the client: one exhaustive mapping to §2 errors.

use crate::http::error::{ApiError, ErrorCode};

use super::store::StoreError;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::new(ErrorCode::UserNotFound, "user not found"),
            StoreError::DuplicateEmail => ApiError::new(
                ErrorCode::DuplicateEmail,
                "a user with this email already exists",
            ),
            StoreError::Conflict => ApiError::new(
                ErrorCode::Conflict,
                "the user was changed concurrently; retry the request",
            ),
            StoreError::IdempotencyKeyReused => ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was already used for a request with another body",
            ),
            StoreError::Unavailable(cause) => ApiError::with_cause(
                ErrorCode::StoreUnavailable,
                "the user store is unavailable; retry later",
                cause,
            ),
            StoreError::Busy => {
                crate::http::shed::overloaded("the user store is busy; retry later")
            }
            e @ StoreError::Corrupt { .. } => ApiError::with_cause(
                ErrorCode::InternalServerError,
                "internal server error",
                e.into(),
            ),
        }
    }
}
