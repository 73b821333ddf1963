//! Typed attribute values ([`AttributeValue`]) and their JSON form: scalars, or homogeneous
//! arrays of scalars; anything else (null, objects, nested or mixed arrays) is refused.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A typed attribute value: a scalar or a homogeneous array of scalars.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    /// A string.
    String(String),
    /// A 64-bit signed integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// An array of strings.
    StringArray(Vec<String>),
    /// An array of integers.
    IntArray(Vec<i64>),
    /// An array of floats (also integers mixed with floats).
    FloatArray(Vec<f64>),
    /// An array of booleans.
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

    /// Whether an element of an array (or a scalar itself) has this search text: what the
    /// `contains` filter and the dataset search compare.
    pub fn contains_text(&self, want: &str) -> bool {
        fn any<T>(v: &[T], f: impl Fn(&T) -> bool) -> bool {
            v.iter().any(f)
        }
        match self {
            AttributeValue::StringArray(v) => any(v, |s| s == want),
            AttributeValue::IntArray(v) => any(v, |x| x.to_string() == want),
            // Elements compare as their JSON text, as the stored text holds them.
            AttributeValue::FloatArray(v) => any(v, |x| {
                let text = serde_json::Value::from(*x).to_string();
                text == want
            }),
            AttributeValue::BoolArray(v) => any(v, |b| if *b { "true" } else { "false" } == want),
            scalar => scalar.to_search_text() == want,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
