//! Span validation against configurable limits, with path-addressed errors.
//!
//! Parsing (serde) already guarantees shapes: ids are hex of the right length, times are
//! RFC 3339. Validation checks what parsing cannot: zero ids, time order, empty names, and
//! sizes. Each problem names the field it is about, so a client can fix its instrumentation.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::span::{Attributes, Span};
use crate::{ConfigDuration, Timestamp};

/// Size limits for incoming spans. Every field has a safe default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Maximum bytes in `service`.
    pub max_service_len: usize,
    /// Maximum bytes in `operation`, event names and attribute keys.
    pub max_name_len: usize,
    /// Maximum bytes in one string attribute value (or one element of a string array) and in
    /// the status message.
    pub max_value_len: usize,
    /// Maximum attributes on a span, an event or a link.
    pub max_attributes: usize,
    /// Maximum elements in an attribute array.
    pub max_array_len: usize,
    /// Maximum events on a span.
    pub max_events: usize,
    /// Maximum links on a span.
    pub max_links: usize,
    /// How far in the future a span may start (clock skew between hosts). Later starts are
    /// rejected: time-based retention would never remove them.
    pub max_future_skew: ConfigDuration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_service_len: 256,
            max_name_len: 1024,
            max_value_len: 16 * 1024,
            max_attributes: 128,
            max_array_len: 1024,
            max_events: 256,
            max_links: 128,
            max_future_skew: ConfigDuration::from_secs(3600),
        }
    }
}

/// One problem with one field of a span.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Path of the field, e.g. `attributes.rows` or `links[1].span_id`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl Limits {
    /// Checks that every limit is usable (non-zero).
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("max_service_len", self.max_service_len),
            ("max_name_len", self.max_name_len),
            ("max_value_len", self.max_value_len),
            ("max_attributes", self.max_attributes),
            ("max_array_len", self.max_array_len),
        ];
        for (name, v) in all {
            if v == 0 {
                return Err(format!("limits.{name} must be greater than 0"));
            }
        }
        if self.max_future_skew.get().is_zero() {
            return Err("limits.max_future_skew must be greater than 0".into());
        }
        Ok(())
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary; true when it cut.
fn truncate_str(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

fn truncate_attributes(attrs: &mut crate::span::Attributes, limits: &Limits) -> usize {
    use crate::span::AttributeValue;
    let mut n = 0;
    if attrs.keys().any(|k| k.len() > limits.max_name_len) {
        let old = std::mem::take(attrs);
        for (mut k, v) in old {
            if truncate_str(&mut k, limits.max_name_len) {
                n += 1;
            }
            attrs.entry(k).or_insert(v);
        }
    }
    for v in attrs.values_mut() {
        match v {
            AttributeValue::String(s) => n += usize::from(truncate_str(s, limits.max_value_len)),
            AttributeValue::StringArray(a) => {
                for s in a.iter_mut() {
                    n += usize::from(truncate_str(s, limits.max_value_len));
                }
            }
            _ => {}
        }
    }
    n
}

impl Span {
    /// Truncates over-long attribute keys and string values (on span, events and links) and
    /// the status message to the limits; returns how many were cut. Collectors call this
    /// before [`Span::validate`]: a long SQL text in an attribute should cost its tail, not
    /// the span.
    pub fn truncate_to(&mut self, limits: &Limits) -> usize {
        let mut n = truncate_attributes(&mut self.attributes, limits);
        for e in &mut self.events {
            n += truncate_attributes(&mut e.attributes, limits);
        }
        for l in &mut self.links {
            n += truncate_attributes(&mut l.attributes, limits);
        }
        if let Some(m) = &mut self.status.message {
            n += usize::from(truncate_str(m, limits.max_value_len));
        }
        n
    }

    /// The problem with this span's start when it is more than `limits.max_future_skew`
    /// after `now` (the receiver's clock), if any. Separate from [`Span::validate`] because
    /// it needs a clock, which this crate does not read.
    pub fn check_not_in_future(&self, now: Timestamp, limits: &Limits) -> Option<FieldError> {
        let skew = i64::try_from(limits.max_future_skew.get().as_nanos()).unwrap_or(i64::MAX);
        (self.start_time > now.saturating_add_nanos(skew)).then(|| {
            FieldError::new(
                "start_time",
                format!(
                    "{} is more than {} after the collector's clock ({}); \
                     check the sender's clock (limits.max_future_skew)",
                    self.start_time,
                    crate::format_duration_ns(skew),
                    now
                ),
            )
        })
    }

    /// The problem with this span's start when it is already older than `retention` (the
    /// store's) at `now`: stored, it would be deleted at the next retention run without ever
    /// being read, so it is refused with a field error instead of acknowledged.
    pub fn check_retained(
        &self,
        now: Timestamp,
        retention: std::time::Duration,
    ) -> Option<FieldError> {
        let keep = i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
        // In the configuration's terms (`168h`) when it is whole hours.
        let shown = if retention.as_secs().is_multiple_of(3600) && retention.subsec_nanos() == 0 {
            format!("{}h", retention.as_secs() / 3600)
        } else {
            crate::format_duration_ns(keep)
        };
        (self.start_time < now.saturating_add_nanos(-keep)).then(|| {
            FieldError::new(
                "start_time",
                format!(
                    "{} is older than the store's retention ({shown}) at the collector's clock \
                     ({now}); the span would be deleted without being read",
                    self.start_time,
                ),
            )
        })
    }

    /// Validates this span; returns every problem found (empty when valid).
    pub fn validate(&self, limits: &Limits) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.trace_id.is_zero() {
            errs.push(FieldError::new("trace_id", "must not be all zeros"));
        }
        if self.span_id.is_zero() {
            errs.push(FieldError::new("span_id", "must not be all zeros"));
        }
        if self.parent_id.is_some_and(|p| p.is_zero()) {
            errs.push(FieldError::new(
                "parent_id",
                "must not be all zeros (omit it for a root span)",
            ));
        }
        if self.parent_id == Some(self.span_id) {
            errs.push(FieldError::new("parent_id", "must differ from span_id"));
        }
        check_name(&mut errs, "service", &self.service, limits.max_service_len);
        check_name(&mut errs, "operation", &self.operation, limits.max_name_len);
        if self.end_time < self.start_time {
            errs.push(FieldError::new(
                "end_time",
                format!("{} is before start_time {}", self.end_time, self.start_time),
            ));
        }
        if let Some(m) = &self.status.message
            && m.len() > limits.max_value_len
        {
            errs.push(too_long("status.message", m.len(), limits.max_value_len));
        }
        check_attributes(&mut errs, "attributes", &self.attributes, limits);
        if self.events.len() > limits.max_events {
            errs.push(too_many("events", self.events.len(), limits.max_events));
        } else {
            for (i, e) in self.events.iter().enumerate() {
                check_name(
                    &mut errs,
                    &format!("events[{i}].name"),
                    &e.name,
                    limits.max_name_len,
                );
                check_attributes(
                    &mut errs,
                    &format!("events[{i}].attributes"),
                    &e.attributes,
                    limits,
                );
            }
        }
        if self.links.len() > limits.max_links {
            errs.push(too_many("links", self.links.len(), limits.max_links));
        } else {
            for (i, l) in self.links.iter().enumerate() {
                if l.trace_id.is_zero() {
                    errs.push(FieldError::new(
                        format!("links[{i}].trace_id"),
                        "must not be all zeros",
                    ));
                }
                if l.span_id.is_zero() {
                    errs.push(FieldError::new(
                        format!("links[{i}].span_id"),
                        "must not be all zeros",
                    ));
                }
                if l.trace_id == self.trace_id && l.span_id == self.span_id {
                    errs.push(FieldError::new(
                        format!("links[{i}]"),
                        "a span must not link to itself",
                    ));
                }
                check_attributes(
                    &mut errs,
                    &format!("links[{i}].attributes"),
                    &l.attributes,
                    limits,
                );
            }
        }
        errs
    }
}

fn check_name(errs: &mut Vec<FieldError>, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        errs.push(FieldError::new(field, "must not be empty"));
    } else if value.len() > max {
        errs.push(too_long(field, value.len(), max));
    }
}

fn check_attributes(errs: &mut Vec<FieldError>, field: &str, attrs: &Attributes, limits: &Limits) {
    if attrs.len() > limits.max_attributes {
        errs.push(too_many(field, attrs.len(), limits.max_attributes));
        return;
    }
    for (k, v) in attrs {
        if k.is_empty() {
            errs.push(FieldError::new(field, "attribute keys must not be empty"));
            continue;
        }
        // Built only for an error: this loop runs for every attribute of every span.
        let path = || format!("{field}.{}", k.chars().take(64).collect::<String>());
        if k.len() > limits.max_name_len {
            errs.push(FieldError::new(
                field,
                format!(
                    "attribute key of {} bytes exceeds the limit of {}",
                    k.len(),
                    limits.max_name_len
                ),
            ));
        }
        if v.longest_string() > limits.max_value_len {
            errs.push(too_long(&path(), v.longest_string(), limits.max_value_len));
        }
        if v.array_len() > limits.max_array_len {
            errs.push(FieldError::new(
                path(),
                format!(
                    "array of {} elements exceeds the limit of {}",
                    v.array_len(),
                    limits.max_array_len
                ),
            ));
        }
    }
}

fn too_long(field: &str, len: usize, max: usize) -> FieldError {
    FieldError::new(field, format!("{len} bytes exceeds the limit of {max}"))
}

fn too_many(field: &str, n: usize, max: usize) -> FieldError {
    FieldError::new(field, format!("{n} entries exceed the limit of {max}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AttributeValue, Link, LinkType, SpanId, SpanKind, Status, Timestamp, TraceId};

    fn span() -> Span {
        Span {
            trace_id: TraceId::from_bytes([1; 16]),
            span_id: SpanId::from_bytes([2; 8]),
            parent_id: None,
            service: "svc".into(),
            operation: "op".into(),
            kind: SpanKind::Transform,
            start_time: Timestamp::from_unix_nanos(10),
            end_time: Timestamp::from_unix_nanos(20),
            status: Status::default(),
            attributes: Attributes::new(),
            events: vec![],
            links: vec![],
        }
    }

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn valid_span_passes() {
        assert!(span().validate(&Limits::default()).is_empty());
        let limits = Limits::default();
        let now = span().start_time;
        assert!(span().check_not_in_future(now, &limits).is_none());
        let mut late = span();
        late.start_time = now.saturating_add_nanos(3_600_000_000_000);
        assert!(
            late.check_not_in_future(now, &limits).is_none(),
            "exactly the skew is allowed"
        );
        late.start_time = now.saturating_add_nanos(3_600_000_000_001);
        let e = late.check_not_in_future(now, &limits).unwrap();
        assert_eq!(e.field, "start_time");
        assert!(e.message.contains("max_future_skew"), "{e}");
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let mut s = span();
        s.trace_id = TraceId::default();
        s.span_id = SpanId::default();
        s.service = " ".into();
        s.operation = String::new();
        s.end_time = Timestamp::from_unix_nanos(5);
        s.attributes
            .insert("big".into(), AttributeValue::String("x".repeat(20)));
        s.links.push(Link {
            trace_id: TraceId::from_bytes([3; 16]),
            span_id: SpanId::default(),
            link_type: LinkType::FollowsFrom,
            attributes: Attributes::new(),
        });
        let limits = Limits {
            max_value_len: 10,
            ..Limits::default()
        };
        let errs = s.validate(&limits);
        assert_eq!(
            fields(&errs),
            [
                "trace_id",
                "span_id",
                "service",
                "operation",
                "end_time",
                "attributes.big",
                "links[0].span_id"
            ]
        );
        assert!(errs[4].message.contains("before start_time"), "{}", errs[4]);
    }

    #[test]
    fn too_many_attributes() {
        let mut s = span();
        for i in 0..5 {
            s.attributes.insert(format!("k{i}"), AttributeValue::Int(i));
        }
        let errs = s.validate(&Limits {
            max_attributes: 4,
            ..Limits::default()
        });
        assert_eq!(fields(&errs), ["attributes"]);
        assert!(errs[0].message.contains("5 entries exceed the limit of 4"));
    }

    #[test]
    fn truncation_cuts_on_char_boundaries_and_counts() {
        let mut s = span();
        s.attributes
            .insert("sql".into(), AttributeValue::String("é".repeat(10)));
        s.attributes.insert("k".repeat(20), AttributeValue::Int(1));
        s.attributes.insert(
            "tags".into(),
            AttributeValue::StringArray(vec!["abcdefghijkl".into(), "ok".into()]),
        );
        let limits = Limits {
            max_value_len: 5,
            max_name_len: 8,
            ..Limits::default()
        };
        assert_eq!(s.truncate_to(&limits), 3);
        assert_eq!(
            s.attributes["sql"],
            AttributeValue::String("éé".into()),
            "4 bytes: no half character"
        );
        assert!(s.attributes.contains_key("kkkkkkkk"));
        assert_eq!(
            s.attributes["tags"],
            AttributeValue::StringArray(vec!["abcde".into(), "ok".into()])
        );
        assert!(s.validate(&limits).is_empty());
        assert_eq!(s.truncate_to(&limits), 0, "idempotent");
    }

    #[test]
    fn limits_reject_zero() {
        assert!(
            Limits {
                max_attributes: 0,
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
        let parsed: Limits = serde_json::from_str(r#"{"max_links": 3}"#).unwrap();
        assert_eq!(parsed.max_links, 3);
        assert!(serde_json::from_str::<Limits>(r#"{"max_linkz": 3}"#).is_err());
    }
}
