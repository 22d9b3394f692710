//! The opaque list cursor: where the previous page ended (its member of `users:by_created_lex`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

/// The (score, id) of the last user of a page; the next page starts right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub score: i64,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.score, self.id.hyphenated()))
    }

    pub fn decode(text: &str) -> Option<Self> {
        if text.len() > 128 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let plain = std::str::from_utf8(&bytes).ok()?;
        let (score, id) = plain.split_once(':')?;
        Some(Self {
            score: score.parse().ok()?,
            id: Uuid::try_parse(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_url_safe() {
        let cursor = Cursor {
            score: 1_795_435_200_000,
            id: Uuid::new_v4(),
        };
        let text = cursor.encode();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Cursor::decode(&text), Some(cursor));
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "",
            "!!!",
            "bm90LWEtY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("x:y"),
            &"A".repeat(200),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn every_cursor_round_trips_as_short_url_safe_text(score in any::<i64>(), id in any::<u128>()) {
                let cursor = Cursor { score, id: Uuid::from_u128(id) };
                let text = cursor.encode();
                prop_assert!(text.len() <= 128);
                prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
                prop_assert_eq!(Cursor::decode(&text), Some(cursor));
            }

            #[test]
            fn decoding_any_text_never_panics(text in any::<String>()) {
                let _ = Cursor::decode(&text);
            }

            /// Well-formed base64 of anything: what decodes re-encodes to a cursor that
            /// decodes to the same value.
            #[test]
            fn what_decodes_is_a_cursor(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
                if let Some(cursor) = Cursor::decode(&URL_SAFE_NO_PAD.encode(&bytes)) {
                    prop_assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
                }
            }
        }
    }
}
