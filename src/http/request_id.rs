//! Request ids (CONTRACT §5): kept from `X-Request-ID` when sane, otherwise a new UUID v4.

use std::fmt;
use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpMessage, HttpRequest};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
const MAX_LEN: usize = 128;

/// The id of the request being served, kept as the header value it is sent and echoed as;
/// cheap to clone (a kept id shares the bytes of the incoming header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The incoming id if it is 1–128 visible ASCII characters, else a fresh UUID v4.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(&HEADER)
            .filter(|v| is_sane(v.as_bytes()))
            .map_or_else(Self::generate, |v| Self(v.clone()))
    }

    fn generate() -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        Self(
            HeaderValue::from_bytes(text.as_bytes())
                .expect("a hyphenated UUID is a valid header value"),
        )
    }

    pub fn as_str(&self) -> &str {
        self.0
            .to_str()
            .expect("only visible-ASCII ids are ever made, which to_str accepts")
    }

    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

/// 1–128 visible ASCII characters.
fn is_sane(candidate: &[u8]) -> bool {
    !candidate.is_empty()
        && candidate.len() <= MAX_LEN
        && candidate.iter().all(u8::is_ascii_graphic)
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromRequest for RequestId {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    /// Set by the observe middleware; a route mounted without it still gets an id.
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let id = req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| Self::from_headers(req.headers()));
        ready(Ok(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers_with(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(value) {
            map.insert(HEADER, v);
        }
        map
    }

    #[test]
    fn a_sane_incoming_id_is_kept() {
        assert_eq!(
            RequestId::from_headers(&headers_with("abc-123_X.y")).as_str(),
            "abc-123_X.y"
        );
        let longest = "a".repeat(128);
        assert_eq!(
            RequestId::from_headers(&headers_with(&longest)).as_str(),
            longest
        );
    }

    #[test]
    fn a_missing_or_bad_id_is_replaced_by_a_uuid() {
        for bad in ["", "has space", &"a".repeat(129), "tab\there"] {
            let id = RequestId::from_headers(&headers_with(bad));
            assert!(
                uuid::Uuid::parse_str(id.as_str()).is_ok(),
                "{bad:?} gave {id}"
            );
        }
        let id = RequestId::from_headers(&HeaderMap::new());
        assert!(uuid::Uuid::parse_str(id.as_str()).is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any header bytes: kept exactly when 1–128 visible ASCII, else a new UUID v4.
            #[test]
            fn an_id_is_the_header_when_sane_else_a_uuid(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
                let mut map = HeaderMap::new();
                if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                    map.insert(HEADER, value);
                }
                let id = RequestId::from_headers(&map);
                if map.contains_key(HEADER) && is_sane(&bytes) {
                    prop_assert_eq!(id.as_str().as_bytes(), &bytes[..]);
                } else {
                    let uuid = uuid::Uuid::parse_str(id.as_str());
                    prop_assert_eq!(uuid.map(|u| u.get_version_num()), Ok(4));
                }
                // What is echoed is itself a sane id: sent back, it is kept as it is.
                let mut echoed = HeaderMap::new();
                echoed.insert(HEADER, id.header_value().clone());
                prop_assert_eq!(RequestId::from_headers(&echoed), id);
            }

            #[test]
            fn visible_ascii_ids_are_kept(text in "[!-~]{1,128}") {
                let id = RequestId::from_headers(&headers_with(&text));
                prop_assert_eq!(id.as_str(), text);
            }
        }
    }
}
