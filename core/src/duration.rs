//! Go-style duration strings (`250ms`, `1.5s`, `1h30m`), as used by Jaeger's search API.

use crate::error::{Error, Result};

const UNITS: &[(&str, f64)] = &[
    ("ns", 1.0),
    ("us", 1e3),
    ("µs", 1e3),
    ("ms", 1e6),
    ("s", 1e9),
    ("m", 60e9),
    ("h", 3600e9),
];

/// Parses a non-negative duration into nanoseconds.
///
/// A bare number other than `0` is rejected: `min_duration=100` is ambiguous, and a silent
/// guess makes searches return the wrong traces.
pub fn parse_duration_ns(input: &str) -> Result<i64> {
    let err = |reason: &str| Error::Duration {
        input: input.chars().take(64).collect(),
        reason: reason.to_string(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s == "0" {
        return Ok(0);
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit (use ns, us, ms, s, m or h)"))?;
        if num_len == 0 {
            return Err(err("expected a number"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err("bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, s)| *s)
            .ok_or_else(|| err("unknown unit (use ns, us, ms, s, m or h)"))?;
        total += value * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(total.round() as i64)
}

/// Formats nanoseconds compactly (`1.5s`, `250ms`, `17µs`), for logs and messages.
pub fn format_duration_ns(ns: i64) -> String {
    let abs = ns.unsigned_abs() as f64;
    let sign = if ns < 0 { "-" } else { "" };
    if abs >= 1e9 {
        format!("{sign}{}s", trim(abs / 1e9))
    } else if abs >= 1e6 {
        format!("{sign}{}ms", trim(abs / 1e6))
    } else if abs >= 1e3 {
        format!("{sign}{}µs", trim(abs / 1e3))
    } else {
        format!("{sign}{}ns", abs)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration_ns("250ms").unwrap(), 250_000_000);
        assert_eq!(parse_duration_ns("1.5s").unwrap(), 1_500_000_000);
        assert_eq!(parse_duration_ns("1h30m").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_duration_ns("17us").unwrap(), 17_000);
        assert_eq!(parse_duration_ns("17µs").unwrap(), 17_000);
        assert_eq!(parse_duration_ns("0").unwrap(), 0);
    }

    #[test]
    fn rejects_ambiguous_and_garbage() {
        for bad in ["", "100", "ms", "1x", "-1s", "1..2s", "1e400h"] {
            assert!(
                parse_duration_ns(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn backoff_doubles_from_base_up_to_the_cap() {
        use std::time::Duration;
        let base = Duration::from_millis(100);
        assert_eq!(exponential_backoff(base, 0, Duration::MAX), base);
        assert_eq!(exponential_backoff(base, 1, Duration::MAX), base);
        assert_eq!(exponential_backoff(base, 4, Duration::MAX), base * 8);
        assert_eq!(
            exponential_backoff(base, 99, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            exponential_backoff(Duration::MAX, 99, Duration::MAX),
            Duration::MAX
        );
    }

    #[test]
    fn formats() {
        assert_eq!(format_duration_ns(1_500_000_000), "1.5s");
        assert_eq!(format_duration_ns(250_000_000), "250ms");
        assert_eq!(format_duration_ns(999), "999ns");
    }
}

/// Exponential growth for retry delays: `base` at attempt 1, doubling per attempt, never above
/// `cap`. Callers add their own jitter (how much depends on how many clients retry at once).
pub fn exponential_backoff(
    base: std::time::Duration,
    attempt: u32,
    cap: std::time::Duration,
) -> std::time::Duration {
    base.saturating_mul(1u32 << attempt.saturating_sub(1).min(30))
        .min(cap)
}

/// A configuration duration written the Go way (`"72h"`, `"500ms"`), as Kubernetes users
/// expect in YAML. Serialises back to the same style.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConfigDuration(pub std::time::Duration);

impl ConfigDuration {
    /// From seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// The standard library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl std::str::FromStr for ConfigDuration {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let ns = parse_duration_ns(s)?;
        Ok(Self(std::time::Duration::from_nanos(ns.unsigned_abs())))
    }
}

impl serde::Serialize for ConfigDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // The largest unit that divides exactly, so `168h` stays `168h` and round-trips.
        let ns = self.0.as_nanos();
        let units: [(u128, &str); 6] = [
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        let text = if ns == 0 {
            "0".to_string()
        } else {
            let (div, unit) = units
                .iter()
                .find(|(d, _)| ns.is_multiple_of(*d))
                .copied()
                .unwrap_or((1, "ns"));
            format!("{}{unit}", ns / div)
        };
        s.serialize_str(&text)
    }
}

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for ConfigDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as 500ms, 30s, 72h or 1h30m.",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$|^0$"
        })
    }
}

#[cfg(test)]
mod config_duration_tests {
    use super::*;

    #[test]
    fn serde_round_trip() {
        let d: ConfigDuration = serde_json::from_str("\"72h\"").unwrap();
        assert_eq!(d.get(), std::time::Duration::from_secs(72 * 3600));
        let back: ConfigDuration =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<ConfigDuration>("\"72\"").is_err());
    }
}
