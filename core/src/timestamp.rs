//! Nanosecond timestamps and their RFC 3339 text form.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};

/// A point in time as nanoseconds since the Unix epoch (UTC).
///
/// `i64` nanoseconds cover the years 1677 to 2262, which is what OTLP and ClickHouse's
/// `DateTime64(9)` can hold as well.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From nanoseconds since the Unix epoch.
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn unix_nanos(self) -> i64 {
        self.0
    }

    /// The current time.
    pub fn now() -> Self {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Self(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    /// Parses RFC 3339 with up to nanosecond precision (any offset; stored as UTC).
    pub fn parse_rfc3339(s: &str) -> Result<Self> {
        let dt = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| Error::Timestamp {
            input: truncate_for_error(s),
            reason: e.to_string(),
        })?;
        let nanos = i64::try_from(dt.unix_timestamp_nanos()).map_err(|_| Error::Timestamp {
            input: truncate_for_error(s),
            reason: "outside the representable range (years 1677 to 2262)".into(),
        })?;
        Ok(Self(nanos))
    }

    /// RFC 3339 in UTC, with as many fractional digits as needed.
    pub fn to_rfc3339(self) -> String {
        match OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0))
            .ok()
            .and_then(|dt| dt.format(&Rfc3339).ok())
        {
            Some(s) => s,
            // Every i64 nanosecond value is in range for `time`; this only guards the formatter.
            None => format!("{}ns", self.0),
        }
    }

    /// Saturating difference `self - earlier` in nanoseconds.
    pub fn saturating_nanos_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Saturating `self + nanos`.
    pub fn saturating_add_nanos(self, nanos: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(nanos))
    }
}

fn truncate_for_error(s: &str) -> String {
    s.chars().take(64).collect()
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Timestamp, E> {
                Timestamp::parse_rfc3339(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 timestamp with up to nanosecond precision, e.g. 2026-11-28T10:00:00.123456789Z",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanosecond_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-11-28T10:00:00.123456789Z").unwrap();
        assert_eq!(t.unix_nanos() % 1_000_000_000, 123_456_789);
        assert_eq!(t.to_rfc3339(), "2026-11-28T10:00:00.123456789Z");
        let offset = Timestamp::parse_rfc3339("2026-11-28T11:00:00.123456789+01:00").unwrap();
        assert_eq!(offset, t);
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        assert!(Timestamp::parse_rfc3339("2026-11-28 10:00:00").is_err());
        assert!(Timestamp::parse_rfc3339("9999-01-01T00:00:00Z").is_err());
    }
}
