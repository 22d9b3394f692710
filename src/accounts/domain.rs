//! Users and the requests that make or change them, valid by construction ("parse, don't validate").

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::http::error::FieldError;

const NAME_MAX_CHARS: usize = 100;
const EMAIL_MAX_CHARS: usize = 254;

/// A user as stored in `user:<id>` and answered by the API, field for field as the seeds write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// A UUID v4, set by the server.
    #[schema(example = "5b0d7c1e-8f7a-4a8e-9a55-1f2b3c4d5e6f")]
    pub id: String,
    #[schema(example = "Ada Lovelace")]
    pub name: String,
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// RFC 3339 UTC with milliseconds, set by the server.
    #[schema(example = "2026-11-23T12:00:00.000Z")]
    pub created_at: String,
    /// RFC 3339 UTC with milliseconds, set by the server at each update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "2026-11-23T12:00:00.000Z")]
    pub updated_at: Option<String>,
}

/// A trimmed name of 1–100 characters without control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim();
        let chars = name.chars().count();
        if chars == 0 {
            return Err("must not be empty".into());
        }
        if chars > NAME_MAX_CHARS {
            return Err(format!("must be at most {NAME_MAX_CHARS} characters"));
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A trimmed address with one `@`, a local part and a dotted domain; compared lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let email = raw.trim();
        if email.is_empty() {
            return Err("must not be empty".into());
        }
        if email.chars().count() > EMAIL_MAX_CHARS {
            return Err(format!("must be at most {EMAIL_MAX_CHARS} characters"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters".into());
        }
        let mut parts = email.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err("must contain one @".into());
        };
        if local.is_empty() {
            return Err("must have a name before the @".into());
        }
        let labels_ok = domain.split('.').all(|label| !label.is_empty());
        if !domain.contains('.') || !labels_ok {
            return Err("must have a domain with a dot after the @".into());
        }
        Ok(Self(email.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness is decided on.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// The body of `POST /users`; other members are ignored. The patterns say what `UserName`
/// and `Email` accept (a name has a non-space, no control character; an email, untrimmed,
/// one `@`, a local part and a dotted domain); `\s` is Unicode White_Space in ECMA-262 and
/// Python as in Rust's `trim`.
#[derive(Debug, Clone, PartialEq, Eq, ToSchema)]
pub struct NewUser {
    #[schema(value_type = String, min_length = 1, max_length = 100, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$",
        example = "Ada Lovelace")]
    pub name: UserName,
    #[schema(value_type = String, max_length = 254, pattern = "^[^\\s@\\u0000-\\u001f\\u007f-\\u009f]+@[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+(\\.[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+)+$",
        example = "ada@example.com")]
    pub email: Email,
}

impl NewUser {
    /// Fields other than `name` and `email` are ignored, as the seeds do.
    pub fn parse(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let name = required(body, "name", UserName::parse);
        let email = required(body, "email", Email::parse);
        match (name, email) {
            (Ok(name), Ok(email)) => Ok(Self { name, email }),
            (name, email) => Err([name.err(), email.err()].into_iter().flatten().collect()),
        }
    }
}

/// The body of `PUT`/`PATCH /users/{id}`: a non-empty subset of `name`, `email`; other
/// members are ignored.
#[derive(Debug, Clone, PartialEq, Eq, ToSchema)]
pub struct UserPatch {
    #[schema(value_type = String, required = false, min_length = 1, max_length = 100,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$", example = "Ada Lovelace")]
    pub name: Option<UserName>,
    #[schema(value_type = String, required = false, max_length = 254, pattern = "^[^\\s@\\u0000-\\u001f\\u007f-\\u009f]+@[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+(\\.[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+)+$",
        example = "ada@example.com")]
    pub email: Option<Email>,
}

impl UserPatch {
    pub fn parse(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let name = optional(body, "name", UserName::parse);
        let email = optional(body, "email", Email::parse);
        match (name, email) {
            (Ok(None), Ok(None)) => Err(vec![FieldError::new(
                "body",
                "give at least one of name, email",
            )]),
            (Ok(name), Ok(email)) => Ok(Self { name, email }),
            (name, email) => Err([name.err(), email.err()].into_iter().flatten().collect()),
        }
    }

    /// `user` with this patch applied, stamped `updated_at`.
    pub fn apply(&self, user: &User, updated_at: String) -> User {
        User {
            id: user.id.clone(),
            name: self
                .name
                .as_ref()
                .map_or_else(|| user.name.clone(), |n| n.as_str().to_owned()),
            email: self
                .email
                .as_ref()
                .map_or_else(|| user.email.clone(), |e| e.as_str().to_owned()),
            created_at: user.created_at.clone(),
            updated_at: Some(updated_at),
        }
    }
}

fn required<T>(
    body: &Map<String, Value>,
    field: &'static str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, FieldError> {
    optional(body, field, parse)?.ok_or_else(|| FieldError::new(field, "is required"))
}

fn optional<T>(
    body: &Map<String, Value>,
    field: &'static str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, FieldError> {
    match body.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => parse(s).map(Some).map_err(|m| FieldError::new(field, m)),
        Some(_) => Err(FieldError::new(field, "must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded_in_characters() {
        assert_eq!(UserName::parse("  Ada  ").map(|n| n.0), Ok("Ada".into()));
        assert!(UserName::parse(&"é".repeat(100)).is_ok());
        assert!(UserName::parse(&"é".repeat(101)).is_err());
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse("a\u{0}b").is_err());
        assert!(UserName::parse("line\nbreak").is_err());
    }

    #[test]
    fn emails_need_one_at_a_local_part_and_a_dotted_domain() {
        assert!(Email::parse(" ada@example.com ").is_ok());
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a@b@c.com",
            "ada@.com",
            "ada@example.",
            "a da@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn email_key_is_lowercased_but_the_address_is_kept() {
        let email = Email::parse("Ada@Example.COM").expect("valid");
        assert_eq!(email.as_str(), "Ada@Example.COM");
        assert_eq!(email.key(), "ada@example.com");
    }

    #[test]
    fn new_user_reports_every_bad_field_and_ignores_unknown_ones() {
        let ok = NewUser::parse(&object(
            json!({"name":"Ada","email":"ada@example.com","role":"admin"}),
        ));
        assert!(ok.is_ok());
        let errs = NewUser::parse(&object(json!({"name": 5}))).expect_err("invalid");
        assert_eq!(
            errs,
            vec![
                FieldError::new("name", "must be a string"),
                FieldError::new("email", "is required")
            ]
        );
        assert!(NewUser::parse(&object(json!({"name": null, "email": "a@b.co"}))).is_err());
    }

    #[test]
    fn patch_needs_at_least_one_field_and_merges() {
        assert!(UserPatch::parse(&object(json!({}))).is_err());
        assert!(UserPatch::parse(&object(json!({"role": "x"}))).is_err());
        let patch = UserPatch::parse(&object(json!({"name": "Grace"}))).expect("valid");
        let user = User {
            id: "1".into(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            created_at: "t0".into(),
            updated_at: Some("t0".into()),
        };
        let updated = patch.apply(&user, "t1".into());
        assert_eq!(
            (updated.name.as_str(), updated.email.as_str()),
            ("Grace", "ada@example.com")
        );
        assert_eq!(
            (updated.created_at.as_str(), updated.updated_at.as_deref()),
            ("t0", Some("t1"))
        );
    }
}

/// Properties of the parsers over arbitrary input (proptest): they never panic, and what
/// they accept is the trimmed input, within the bounds, and parses again to itself.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_name_is_the_trimmed_input_and_parses_to_itself(raw in any::<String>()) {
            if let Ok(name) = UserName::parse(&raw) {
                prop_assert_eq!(name.as_str(), raw.trim());
                prop_assert!((1..=NAME_MAX_CHARS).contains(&name.as_str().chars().count()));
                prop_assert!(!name.as_str().chars().any(char::is_control));
                prop_assert_eq!(UserName::parse(name.as_str()), Ok(name.clone()));
            }
        }

        #[test]
        fn printable_names_up_to_100_characters_are_accepted(
            core in "[^\\p{Cc}\\s][^\\p{Cc}]{0,98}[^\\p{Cc}\\s]",
            pad in "[ \t\n]{0,3}",
        ) {
            let name = UserName::parse(&format!("{pad}{core}{pad}"));
            prop_assert_eq!(name.map(|n| n.0), Ok(core));
        }

        #[test]
        fn an_email_has_one_at_a_local_part_and_a_dotted_domain(raw in any::<String>()) {
            if let Ok(email) = Email::parse(&raw) {
                let text = email.as_str();
                prop_assert_eq!(text, raw.trim());
                prop_assert!(text.chars().count() <= EMAIL_MAX_CHARS);
                let (local, domain) = text.split_once('@').expect("an @");
                prop_assert!(!local.is_empty() && !domain.contains('@'));
                prop_assert!(domain.split('.').count() >= 2);
                prop_assert!(domain.split('.').all(|label| !label.is_empty()));
                prop_assert!(!text.chars().any(|c| c.is_whitespace() || c.is_control()));
                prop_assert_eq!(Email::parse(text), Ok(email.clone()));
                prop_assert_eq!(email.key(), text.to_lowercase());
            }
        }

        #[test]
        fn ordinary_addresses_are_accepted(
            email in "[A-Za-z0-9._%+-]{1,40}@[A-Za-z0-9-]{1,20}(\\.[A-Za-z0-9-]{1,20}){1,3}",
        ) {
            prop_assert_eq!(Email::parse(&email).map(|e| e.0), Ok(email));
        }

        #[test]
        fn bodies_of_any_json_never_panic_and_a_valid_user_parses(
            name in any::<String>(),
            email in any::<String>(),
            extra in any::<i64>(),
        ) {
            let body = serde_json::json!({"name": name, "email": email, "extra": extra});
            let Value::Object(body) = body else { unreachable!("an object literal") };
            let parsed = NewUser::parse(&body);
            let valid = UserName::parse(&name).is_ok() && Email::parse(&email).is_ok();
            prop_assert_eq!(parsed.is_ok(), valid);
            let patch = UserPatch::parse(&body);
            prop_assert_eq!(patch.is_ok(), valid);
        }
    }
}
