//! Reading a bounded JSON request body into a JSON object, with the §2 errors.

use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, TRANSFER_ENCODING};
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::error::{ApiError, ErrorCode};

/// The body a request head announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declared {
    /// `Content-Length`, above zero.
    Length(u64),
    /// `Transfer-Encoding` (chunked): the length is known at its end.
    Chunked,
}

/// What the request head says of its body; `None` when it has none (actix-http has already
/// refused a malformed `Content-Length`).
pub fn declared(headers: &HeaderMap) -> Option<Declared> {
    if headers.contains_key(TRANSFER_ENCODING) {
        return Some(Declared::Chunked);
    }
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&len| len > 0)
        .map(Declared::Length)
}

/// Reads at most `limit` bytes of `payload` and parses them as a JSON object.
/// Over the limit → 413 (the rest is not read), not `application/json` → 415,
/// not JSON → 400 `invalid_json`, JSON but not an object → 400 `validation_error`.
pub async fn json_object(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    let too_large = || ApiError::payload_too_large(limit as u64);
    if let Some(Declared::Length(len)) = declared(req.headers())
        && len > limit as u64
    {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("could not read the body: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if !is_json(req) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be application/json",
        ));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::field("body", "must be a JSON object")),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// `application/json` or any `application/*+json`, parameters (charset) allowed.
fn is_json(req: &HttpRequest) -> bool {
    let Some(value) = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn json_content_types_are_recognised() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(
                is_json(
                    &TestRequest::default()
                        .insert_header((CONTENT_TYPE, ok))
                        .to_http_request()
                ),
                "{ok}"
            );
        }
        for bad in ["text/plain", "application/jsonx", "multipart/form-data"] {
            assert!(
                !is_json(
                    &TestRequest::default()
                        .insert_header((CONTENT_TYPE, bad))
                        .to_http_request()
                ),
                "{bad}"
            );
        }
        assert!(!is_json(&TestRequest::default().to_http_request()));
    }
}
