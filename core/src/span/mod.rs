//! Spans and their native JSON form (the DataTracing v2 field names).
//!
//! - [`Span`], [`Event`], [`Link`] (here): the record and its size accounting.
//! - `kinds`: the closed enums [`SpanKind`], [`StatusCode`], [`LinkType`].
//! - `status`: [`Status`], a code with an optional message.
//! - `attribute`: [`AttributeValue`] and [`Attributes`].

mod attribute;
mod kinds;
mod status;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{SpanId, TraceId};
use crate::timestamp::Timestamp;

pub use attribute::{AttributeValue, Attributes};
pub use kinds::{LinkType, SpanKind, StatusCode};
pub use status::Status;

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
    fn unknown_fields_are_named() {
        let mut v: serde_json::Value = serde_json::from_str(sample_json()).unwrap();
        v["duration"] = 5.into();
        let err = serde_json::from_value::<Span>(v).unwrap_err().to_string();
        assert!(err.contains("duration"), "{err}");
    }
}
