//! `Idempotency-Key` on `POST /users` (draft-ietf-httpapi-idempotency-key-header, as Stripe
//! does it): the key a request sends, and the fingerprint its body is recognised by.

use actix_web::HttpRequest;
use aws_lc_rs::digest::{SHA256, digest};
use serde_json::{Map, Value};

use crate::http::error::ApiError;

pub const HEADER: &str = "Idempotency-Key";
/// Longest key accepted (Stripe's bound).
const MAX_LEN: usize = 255;

/// A request's key: 1–255 visible ASCII characters (an sf-string of the draft keeps its quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of `req`, if it sent one; sent twice or not 1–255 visible ASCII: a 400.
    pub fn from_request(req: &HttpRequest) -> Result<Option<Self>, ApiError> {
        let mut values = req.headers().get_all(HEADER);
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ApiError::field(HEADER, "must be sent once"));
        }
        Self::parse(value.as_bytes()).map(Some)
    }

    fn parse(raw: &[u8]) -> Result<Self, ApiError> {
        match std::str::from_utf8(raw) {
            Ok(key)
                if (1..=MAX_LEN).contains(&key.len())
                    && key.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Ok(Self(key.to_owned()))
            }
            _ => Err(ApiError::field(
                HEADER,
                format!("must be 1 to {MAX_LEN} visible ASCII characters"),
            )),
        }
    }

    /// Where the create under this key is recorded.
    pub fn redis_key(&self) -> String {
        format!("idempotency:users:{}", self.0)
    }
}

/// SHA-256 (hex) of the body as parsed: members sorted by name, no whitespace, so a retry of
/// the same JSON matches however it was spaced or ordered, and any other body does not.
pub fn fingerprint(body: &Map<String, Value>) -> String {
    let canonical = serde_json::to_string(body).expect("a JSON map always serializes");
    digest(&SHA256, canonical.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_255_visible_ascii_characters() {
        for good in [
            "a",
            "8e03978e-40d5-43e8-bc93-6894a57f9324",
            "\"quoted\"",
            &"k".repeat(255),
        ] {
            assert!(IdempotencyKey::parse(good.as_bytes()).is_ok(), "{good}");
        }
        for bad in ["", "a b", "tab\t", "é", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(IdempotencyKey::parse(b"\xff").is_err());
    }

    #[test]
    fn the_fingerprint_ignores_spacing_and_member_order_only() {
        let parse = |text: &str| -> Map<String, Value> { serde_json::from_str(text).unwrap() };
        let a = fingerprint(&parse(r#"{"name":"A","email":"a@example.com"}"#));
        let b = fingerprint(&parse(r#"{ "email": "a@example.com", "name": "A" }"#));
        let c = fingerprint(&parse(r#"{"name":"B","email":"a@example.com"}"#));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 64);
    }
}
