//! Stage 4, response filter: the upstream's response head becomes the client's.

use actix_web::HttpResponseBuilder;
use actix_web::http::StatusCode;
use actix_web::http::header;
use awc::ClientResponse;

use super::headers;
use crate::http::error::{ApiError, ErrorCode};

/// The client's response head for the upstream's: end-to-end headers only, the length left
/// to the body. A 408 from the upstream means it gave up on reading the gateway's request (its
/// own timer, or it was frozen): its fault, never the client's, so the client gets a 502.
pub fn filter<S>(upstream: &ClientResponse<S>) -> Result<HttpResponseBuilder, ApiError> {
    let status = upstream.status();
    if status == StatusCode::REQUEST_TIMEOUT {
        return Err(ApiError::with_cause(
            ErrorCode::UpstreamUnavailable,
            "the users service is unavailable",
            anyhow::anyhow!("users upstream answered 408: it timed out reading the request"),
        ));
    }
    let mut out = HttpResponseBuilder::new(status);
    for (name, value) in headers::end_to_end(upstream.headers(), &[header::CONTENT_LENGTH]) {
        out.append_header((name.clone(), value.clone()));
    }
    Ok(out)
}
