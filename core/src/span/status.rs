//! A span's [`Status`]: a [`StatusCode`] and an optional message, with its two JSON forms.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::StatusCode;

/// A span's status: a code and an optional message.
///
/// JSON: `"OK"` when there is no message, else `{"code": "ERROR", "message": "..."}`;
/// both forms are accepted on input.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Status {
    /// The outcome.
    pub code: StatusCode,
    /// Human-readable detail, usually for errors.
    pub message: Option<String>,
}

impl Status {
    /// A status without a message.
    pub fn new(code: StatusCode) -> Self {
        Self {
            code,
            message: None,
        }
    }

    /// A status with a message.
    pub fn with_message(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Some(message.into()),
        }
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match &self.message {
            None => self.code.serialize(s),
            Some(m) => {
                let mut st = s.serialize_struct("Status", 2)?;
                st.serialize_field("code", &self.code)?;
                st.serialize_field("message", m)?;
                st.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Status;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code string or an object with `code` and `message`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Status, E> {
                Ok(Status::new(v.parse().map_err(E::custom)?))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Status, A::Error> {
                let mut code = None;
                let mut message = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "code" => code = Some(map.next_value::<StatusCode>()?),
                        "message" => message = map.next_value::<Option<String>>()?,
                        other => {
                            return Err(de::Error::unknown_field(other, &["code", "message"]));
                        }
                    }
                }
                let code = code.ok_or_else(|| de::Error::missing_field("code"))?;
                Ok(Status { code, message })
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Status {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Status".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let code = generator.subschema_for::<StatusCode>();
        schemars::json_schema!({
            "description": "Span outcome: a code string, or an object with code and message.",
            "oneOf": [
                code,
                {
                    "type": "object",
                    "properties": { "code": code, "message": { "type": "string" } },
                    "required": ["code"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_string_form_and_case_insensitivity() {
        let s: Status = serde_json::from_str("\"ok\"").unwrap();
        assert_eq!(s, Status::new(StatusCode::Ok));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"OK\"");
        assert!(serde_json::from_str::<Status>("\"FINE\"").is_err());
        assert!(serde_json::from_str::<Status>(r#"{"message":"x"}"#).is_err());
    }
}
