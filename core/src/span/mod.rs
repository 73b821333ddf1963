//! Spans and their native JSON form (the DataTracing v2 field names).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::ids::{SpanId, TraceId};
use crate::timestamp::Timestamp;

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
        #[default]
        Internal => "INTERNAL",
        Ingest => "INGEST",
        Transform => "TRANSFORM",
        Enrich => "ENRICH",
        Validate => "VALIDATE",
        Join => "JOIN",
        Aggregate => "AGGREGATE",
        Materialize => "MATERIALIZE",
        Publish => "PUBLISH",
        Serve => "SERVE",
        Client => "CLIENT",
        Server => "SERVER",
        Producer => "PRODUCER",
        Consumer => "CONSUMER",
    }
);

named_enum!(
    /// Outcome of a span. The order is the storage code: append only.
    StatusCode, "status code", {
        #[default]
        Unset => "UNSET",
        Ok => "OK",
        Error => "ERROR",
        Timeout => "TIMEOUT",
        Cancelled => "CANCELLED",
    }
);

named_enum!(
    /// How a link relates two spans. The order is the storage code: append only.
    LinkType, "link type", {
        ChildOf => "CHILD_OF",
        #[default]
        FollowsFrom => "FOLLOWS_FROM",
        DataDependency => "DATA_DEPENDENCY",
    }
);

impl StatusCode {
    /// Whether this status counts as a failure in summaries and error counts.
    pub fn is_error(self) -> bool {
        matches!(self, StatusCode::Error | StatusCode::Timeout)
    }
}

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

/// A typed attribute value: a scalar or a homogeneous array of scalars.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    StringArray(Vec<String>),
    IntArray(Vec<i64>),
    FloatArray(Vec<f64>),
    BoolArray(Vec<bool>),
}

impl AttributeValue {
    /// Approximate size in bytes, for limits and memory accounting.
    pub fn size_bytes(&self) -> usize {
        match self {
            AttributeValue::String(s) => s.len(),
            AttributeValue::Int(_) | AttributeValue::Float(_) => 8,
            AttributeValue::Bool(_) => 1,
            AttributeValue::StringArray(v) => v.iter().map(String::len).sum(),
            AttributeValue::IntArray(v) => v.len() * 8,
            AttributeValue::FloatArray(v) => v.len() * 8,
            AttributeValue::BoolArray(v) => v.len(),
        }
    }

    /// Length of the longest string held, for the value-length limit.
    pub fn longest_string(&self) -> usize {
        match self {
            AttributeValue::String(s) => s.len(),
            AttributeValue::StringArray(v) => v.iter().map(String::len).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Number of array elements (0 for scalars).
    pub fn array_len(&self) -> usize {
        match self {
            AttributeValue::StringArray(v) => v.len(),
            AttributeValue::IntArray(v) => v.len(),
            AttributeValue::FloatArray(v) => v.len(),
            AttributeValue::BoolArray(v) => v.len(),
            _ => 0,
        }
    }

    /// The value as search text (what `key=value` filters compare against).
    pub fn to_search_text(&self) -> String {
        match self {
            AttributeValue::String(s) => s.clone(),
            AttributeValue::Int(i) => i.to_string(),
            AttributeValue::Float(f) => f.to_string(),
            AttributeValue::Bool(b) => b.to_string(),
            other => serde_json::to_string(other).unwrap_or_default(),
        }
    }
}

impl From<&str> for AttributeValue {
    fn from(v: &str) -> Self {
        AttributeValue::String(v.to_string())
    }
}
impl From<String> for AttributeValue {
    fn from(v: String) -> Self {
        AttributeValue::String(v)
    }
}
impl From<i64> for AttributeValue {
    fn from(v: i64) -> Self {
        AttributeValue::Int(v)
    }
}
impl From<f64> for AttributeValue {
    fn from(v: f64) -> Self {
        AttributeValue::Float(v)
    }
}
impl From<bool> for AttributeValue {
    fn from(v: bool) -> Self {
        AttributeValue::Bool(v)
    }
}

impl Serialize for AttributeValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AttributeValue::String(v) => v.serialize(s),
            AttributeValue::Int(v) => v.serialize(s),
            AttributeValue::Float(v) => v.serialize(s),
            AttributeValue::Bool(v) => v.serialize(s),
            AttributeValue::StringArray(v) => v.serialize(s),
            AttributeValue::IntArray(v) => v.serialize(s),
            AttributeValue::FloatArray(v) => v.serialize(s),
            AttributeValue::BoolArray(v) => v.serialize(s),
        }
    }
}

/// One array element while an attribute array is being read.
enum Scalar {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::S(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::S(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::I(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(v).map_or(Scalar::F(v as f64), Scalar::I))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::F(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::B(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl From<Scalar> for AttributeValue {
    fn from(s: Scalar) -> Self {
        match s {
            Scalar::S(v) => AttributeValue::String(v),
            Scalar::I(v) => AttributeValue::Int(v),
            Scalar::F(v) => AttributeValue::Float(v),
            Scalar::B(v) => AttributeValue::Bool(v),
        }
    }
}

impl<'de> Deserialize<'de> for AttributeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AttributeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number, boolean, or an array of one of those")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AttributeValue, E> {
                Ok(AttributeValue::String(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<AttributeValue, E> {
                Ok(AttributeValue::String(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AttributeValue, E> {
                Ok(AttributeValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AttributeValue, E> {
                Ok(i64::try_from(v).map_or(AttributeValue::Float(v as f64), AttributeValue::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<AttributeValue, E> {
                Ok(AttributeValue::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<AttributeValue, E> {
                Ok(AttributeValue::Bool(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AttributeValue, A::Error> {
                let mut items: Vec<Scalar> =
                    Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element::<Scalar>()? {
                    items.push(item);
                }
                homogeneous(items).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Turns scalars into a typed array. Integers mixed with floats become a float array (JSON
/// does not distinguish `1` from `1.0` reliably); any other mix is an error.
fn homogeneous(items: Vec<Scalar>) -> Result<AttributeValue, &'static str> {
    const MIXED: &str = "attribute arrays must hold one type (strings, numbers or booleans)";
    let Some(first) = items.first() else {
        return Ok(AttributeValue::StringArray(Vec::new()));
    };
    match first {
        Scalar::S(_) => items
            .into_iter()
            .map(|i| match i {
                Scalar::S(s) => Ok(s),
                _ => Err(MIXED),
            })
            .collect::<Result<_, _>>()
            .map(AttributeValue::StringArray),
        Scalar::B(_) => items
            .into_iter()
            .map(|i| match i {
                Scalar::B(b) => Ok(b),
                _ => Err(MIXED),
            })
            .collect::<Result<_, _>>()
            .map(AttributeValue::BoolArray),
        Scalar::I(_) | Scalar::F(_) => {
            if items.iter().all(|i| matches!(i, Scalar::I(_))) {
                items
                    .into_iter()
                    .map(|i| match i {
                        Scalar::I(v) => Ok(v),
                        _ => Err(MIXED),
                    })
                    .collect::<Result<_, _>>()
                    .map(AttributeValue::IntArray)
            } else {
                items
                    .into_iter()
                    .map(|i| match i {
                        Scalar::I(v) => Ok(v as f64),
                        Scalar::F(v) => Ok(v),
                        _ => Err(MIXED),
                    })
                    .collect::<Result<_, _>>()
                    .map(AttributeValue::FloatArray)
            }
        }
    }
}

impl JsonSchema for AttributeValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AttributeValue".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A string, number or boolean, or a homogeneous array of one of those.",
            "oneOf": [
                { "type": "string" },
                { "type": "number" },
                { "type": "boolean" },
                { "type": "array", "items": { "type": "string" } },
                { "type": "array", "items": { "type": "number" } },
                { "type": "array", "items": { "type": "boolean" } }
            ]
        })
    }
}

/// Attributes, ordered by key so that encodings and comparisons are deterministic.
pub type Attributes = BTreeMap<String, AttributeValue>;

/// A timestamped event inside a span (a log line, a retry, a checkpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// What happened.
    pub name: String,
    /// When it happened.
    pub time: Timestamp,
    /// Typed attributes of the event.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: Attributes,
}

/// A typed reference from this span to another span, possibly in another trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Trace of the linked span.
    pub trace_id: TraceId,
    /// The linked span.
    pub span_id: SpanId,
    /// How the two spans relate; defaults to FOLLOWS_FROM.
    #[serde(rename = "type", default)]
    pub link_type: LinkType,
    /// Typed attributes of the link.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: Attributes,
}

/// One unit of work in a data pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "DataTracing span (native JSON, v2 field names)")]
pub struct Span {
    /// The trace this span belongs to.
    pub trace_id: TraceId,
    /// This span's id, unique within the trace.
    pub span_id: SpanId,
    /// The parent span, absent for a root span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<SpanId>,
    /// The service (pipeline component) that emitted the span.
    pub service: String,
    /// The operation, e.g. the step or job name.
    pub operation: String,
    /// What kind of step this is; defaults to INTERNAL.
    #[serde(default)]
    pub kind: SpanKind,
    /// Start of the work.
    pub start_time: Timestamp,
    /// End of the work; not before `start_time`.
    pub end_time: Timestamp,
    /// Outcome; defaults to UNSET.
    #[serde(default)]
    pub status: Status,
    /// Typed attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: Attributes,
    /// Events during the span.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// Links to other spans (fan-in, lineage, cross-trace continuation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

impl Span {
    /// Duration in nanoseconds (never negative for a validated span).
    pub fn duration_nanos(&self) -> i64 {
        self.end_time.saturating_nanos_since(self.start_time)
    }

    /// Approximate heap footprint in bytes, for queue and buffer budgets. Calibrated against
    /// RSS with the load command (docs/benchmarks.md): it errs on the high side.
    pub fn size_bytes(&self) -> usize {
        fn attrs(a: &Attributes) -> usize {
            // Key and value headers, the map's node share and allocator rounding: measured
            // heap use is several times the raw text, so count it.
            a.iter().map(|(k, v)| k.len() + v.size_bytes() + 96).sum()
        }
        // The struct itself, its strings' headers and allocator slack.
        320 + self.service.len()
            + self.operation.len()
            + self.status.message.as_ref().map_or(0, String::len)
            + attrs(&self.attributes)
            + self
                .events
                .iter()
                .map(|e| 96 + e.name.len() + attrs(&e.attributes))
                .sum::<usize>()
            + self
                .links
                .iter()
                .map(|l| 96 + attrs(&l.attributes))
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_json() -> &'static str {
        r#"{
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "b7ad6b7169203331",
            "parent_id": "00f067aa0ba902b7",
            "service": "orders-etl",
            "operation": "enrich-customers",
            "kind": "ENRICH",
            "start_time": "2026-11-28T10:00:00.000000001Z",
            "end_time": "2026-11-28T10:00:01.5Z",
            "status": {"code": "ERROR", "message": "lookup timed out"},
            "attributes": {"rows": 1200, "ratio": 0.5, "dataset": "orders", "ok": false,
                           "tags": ["a", "b"], "sizes": [1, 2.5]},
            "events": [{"name": "retry", "time": "2026-11-28T10:00:00.5Z", "attributes": {"attempt": 2}}],
            "links": [{"trace_id": "1af7651916cd43dd8448eb211c80319c", "span_id": "c7ad6b7169203331", "type": "DATA_DEPENDENCY"}]
        }"#
    }

    #[test]
    fn parses_the_v2_form() {
        let span: Span = serde_json::from_str(sample_json()).unwrap();
        assert_eq!(span.kind, SpanKind::Enrich);
        assert_eq!(
            span.status,
            Status::with_message(StatusCode::Error, "lookup timed out")
        );
        assert_eq!(span.attributes["rows"], AttributeValue::Int(1200));
        assert_eq!(span.attributes["ratio"], AttributeValue::Float(0.5));
        assert_eq!(
            span.attributes["tags"],
            AttributeValue::StringArray(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            span.attributes["sizes"],
            AttributeValue::FloatArray(vec![1.0, 2.5])
        );
        assert_eq!(span.links[0].link_type, LinkType::DataDependency);
        assert_eq!(span.duration_nanos(), 1_499_999_999);
    }

    #[test]
    fn json_round_trip_is_lossless() {
        let span: Span = serde_json::from_str(sample_json()).unwrap();
        let text = serde_json::to_string(&span).unwrap();
        let again: Span = serde_json::from_str(&text).unwrap();
        assert_eq!(span, again);
    }

    #[test]
    fn status_string_form_and_case_insensitivity() {
        let s: Status = serde_json::from_str("\"ok\"").unwrap();
        assert_eq!(s, Status::new(StatusCode::Ok));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"OK\"");
        assert!(serde_json::from_str::<Status>("\"FINE\"").is_err());
        assert!(serde_json::from_str::<Status>(r#"{"message":"x"}"#).is_err());
    }

    #[test]
    fn rejects_bad_attribute_shapes() {
        for bad in [
            r#"{"a": null}"#,
            r#"{"a": {"b": 1}}"#,
            r#"{"a": [1, "x"]}"#,
            r#"{"a": [[1]]}"#,
        ] {
            assert!(
                serde_json::from_str::<Attributes>(bad).is_err(),
                "{bad} should fail"
            );
        }
    }

    #[test]
    fn unknown_fields_are_named() {
        let mut v: serde_json::Value = serde_json::from_str(sample_json()).unwrap();
        v["duration"] = 5.into();
        let err = serde_json::from_value::<Span>(v).unwrap_err().to_string();
        assert!(err.contains("duration"), "{err}");
    }

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
