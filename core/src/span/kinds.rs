//! The closed, string-named enums of a span: [`SpanKind`], [`StatusCode`] and [`LinkType`].
//! Each has a canonical SCREAMING_SNAKE JSON name and a stable one-byte storage code.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// Defines a closed, string-named enum whose JSON form is its SCREAMING_SNAKE name, parsed
/// case-insensitively (old clients send `"ok"` as often as `"OK"`).
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical JSON name.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// A stable small integer for compact storage; the declaration order is the contract.
            pub fn code(self) -> u8 {
                self as u8
            }

            /// Inverse of [`Self::code`].
            pub fn from_code(code: u8) -> Option<Self> {
                Self::ALL.get(usize::from(code)).copied()
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                $(if s.eq_ignore_ascii_case($text) { return Ok($name::$variant); })+
                Err(Error::UnknownVariant {
                    what: $what,
                    input: s.chars().take(64).collect(),
                    expected: concat!($($text, " "),+),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("one of ", $($text, " "),+))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "enum": [$($text),+] })
            }
        }
    };
}

named_enum!(
    /// What a span does. Pipeline step kinds first, then the generic OpenTelemetry kinds so
    /// OTLP spans map without loss. The order is the storage code: append only.
    SpanKind, "span kind", {
        /// Work inside a component that fits no other kind (the default).
        #[default]
        Internal => "INTERNAL",
        /// Reading data in from a source.
        Ingest => "INGEST",
        /// Changing the shape or values of data.
        Transform => "TRANSFORM",
        /// Adding data from a lookup or another source.
        Enrich => "ENRICH",
        /// Checking data against rules.
        Validate => "VALIDATE",
        /// Combining several inputs by key.
        Join => "JOIN",
        /// Grouping and summarising.
        Aggregate => "AGGREGATE",
        /// Writing a result to durable storage (a table, a file).
        Materialize => "MATERIALIZE",
        /// Handing data on to consumers (a topic, an API).
        Publish => "PUBLISH",
        /// Answering requests for data.
        Serve => "SERVE",
        /// OpenTelemetry CLIENT: an outgoing request.
        Client => "CLIENT",
        /// OpenTelemetry SERVER: handling an incoming request.
        Server => "SERVER",
        /// OpenTelemetry PRODUCER: sending a message.
        Producer => "PRODUCER",
        /// OpenTelemetry CONSUMER: receiving a message.
        Consumer => "CONSUMER",
    }
);

named_enum!(
    /// Outcome of a span. The order is the storage code: append only.
    StatusCode, "status code", {
        /// Not reported (the default).
        #[default]
        Unset => "UNSET",
        /// Succeeded.
        Ok => "OK",
        /// Failed.
        Error => "ERROR",
        /// Gave up after a time limit (counts as a failure).
        Timeout => "TIMEOUT",
        /// Stopped on request (not a failure).
        Cancelled => "CANCELLED",
    }
);

named_enum!(
    /// How a link relates two spans. The order is the storage code: append only.
    LinkType, "link type", {
        /// The linked span is a parent (an extra parent besides `parent_id`).
        ChildOf => "CHILD_OF",
        /// This span continues the linked one, possibly in another trace (the default).
        #[default]
        FollowsFrom => "FOLLOWS_FROM",
        /// This span consumed data the linked span produced.
        DataDependency => "DATA_DEPENDENCY",
    }
);

impl StatusCode {
    /// Whether this status counts as a failure in summaries and error counts.
    pub fn is_error(self) -> bool {
        matches!(self, StatusCode::Error | StatusCode::Timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_codes_are_stable() {
        assert_eq!(SpanKind::Internal.code(), 0);
        assert_eq!(SpanKind::Consumer.code(), 13);
        assert_eq!(StatusCode::from_code(4), Some(StatusCode::Cancelled));
        assert_eq!(LinkType::from_code(9), None);
        for k in SpanKind::ALL {
            assert_eq!(SpanKind::from_code(k.code()), Some(*k));
        }
    }
}
