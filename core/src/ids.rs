//! W3C trace and span identifiers.
//!
//! Ids travel as lowercase hex in JSON. Uppercase input is accepted and normalised, because
//! some older clients emit it; the all-zero id is representable (OTLP can carry it) but
//! rejected by validation, as the W3C trace-context spec declares it invalid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

macro_rules! hex_id {
    ($name:ident, $len:literal, $what:literal, $pattern:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Number of bytes in this id.
            pub const LEN: usize = $len;

            /// Builds an id from raw bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Builds an id from a byte slice, checking its length (OTLP carries ids as bytes).
            pub fn from_slice(bytes: &[u8]) -> Result<Self> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| Error::IdLength {
                    what: $what,
                    expected: $len * 2,
                    actual: bytes.len() * 2,
                })?;
                Ok(Self(arr))
            }

            /// Parses hex (either case).
            pub fn from_hex(s: &str) -> Result<Self> {
                if s.len() != $len * 2 {
                    return Err(Error::IdLength {
                        what: $what,
                        expected: $len * 2,
                        actual: s.chars().count(),
                    });
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| Error::IdNotHex { what: $what })?;
                Ok(Self(out))
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// True for the all-zero id, which W3C trace context declares invalid.
            pub fn is_zero(&self) -> bool {
                self.0.iter().all(|b| *b == 0)
            }

            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; $len * 2];
                // Encoding into a correctly sized buffer cannot fail.
                if hex::encode_to_slice(self.0, &mut buf).is_err() {
                    return Err(fmt::Error);
                }
                f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::from_hex(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} hex characters", $len * 2)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<$name, E> {
                        $name::from_hex(v).map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": $doc,
                    "pattern": $pattern,
                })
            }
        }
    };
}

hex_id!(
    TraceId,
    16,
    "trace_id",
    "^[0-9a-fA-F]{32}$",
    "W3C trace id: 16 bytes, 32 lowercase hex characters in JSON."
);
hex_id!(
    SpanId,
    8,
    "span_id",
    "^[0-9a-fA-F]{16}$",
    "W3C span id: 8 bytes, 16 lowercase hex characters in JSON."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_normalises_case() {
        let id = TraceId::from_hex("0AF7651916CD43DD8448EB211C80319C").unwrap();
        assert_eq!(id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(id.to_hex(), id.to_string());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"0af7651916cd43dd8448eb211c80319c\"");
        assert_eq!(serde_json::from_str::<TraceId>(&json).unwrap(), id);
    }

    #[test]
    fn rejects_wrong_length_and_non_hex() {
        assert_eq!(
            SpanId::from_hex("abc").unwrap_err(),
            Error::IdLength {
                what: "span_id",
                expected: 16,
                actual: 3
            }
        );
        assert_eq!(
            SpanId::from_hex("zzzzzzzzzzzzzzzz").unwrap_err(),
            Error::IdNotHex { what: "span_id" }
        );
        // Multi-byte characters must not be mistaken for the right length.
        assert!(SpanId::from_hex("ééééééééé").is_err());
        assert!(TraceId::from_slice(&[1; 8]).is_err());
    }

    #[test]
    fn zero_is_detected() {
        assert!(SpanId::default().is_zero());
        assert!(!SpanId::from_bytes([0, 0, 0, 0, 0, 0, 0, 1]).is_zero());
    }
}
