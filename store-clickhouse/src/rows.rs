//! Row types exchanged with ClickHouse (RowBinary) and their conversions.

use std::collections::BTreeMap;

use clickhouse::Row;
use datatracing_core::{Span, SpanId, SpanKind, Status, StatusCode, Tenant, Timestamp, TraceId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One span as stored in `spans`.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub(crate) struct SpanRow {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: [u8; 8],
    pub service: String,
    pub operation: String,
    pub kind: String,
    pub start_time: i64,
    pub end_time: i64,
    pub duration_ns: u64,
    pub status: String,
    pub status_message: String,
    /// Search text of every attribute value, for `key = value` filters and skip indexes.
    pub attributes: BTreeMap<String, String>,
    /// Typed attributes, for a lossless round trip.
    pub attributes_json: String,
    pub events_json: String,
    pub links_json: String,
    /// The tenant the span was accepted for (ADR 0010); `''` is the default tenant.
    pub tenant: String,
}

fn json_or_empty<T: Serialize>(v: &T, empty: bool) -> String {
    if empty {
        String::new()
    } else {
        serde_json::to_string(v).unwrap_or_default()
    }
}

impl From<&Span> for SpanRow {
    fn from(s: &Span) -> Self {
        SpanRow {
            trace_id: *s.trace_id.as_bytes(),
            span_id: *s.span_id.as_bytes(),
            parent_id: s.parent_id.map(|p| *p.as_bytes()).unwrap_or_default(),
            service: s.service.clone(),
            operation: s.operation.clone(),
            kind: s.kind.as_str().to_string(),
            start_time: s.start_time.unix_nanos(),
            end_time: s.end_time.unix_nanos(),
            duration_ns: s.duration_nanos().max(0).unsigned_abs(),
            status: s.status.code.as_str().to_string(),
            status_message: s.status.message.clone().unwrap_or_default(),
            attributes: s
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.to_search_text()))
                .collect(),
            attributes_json: json_or_empty(&s.attributes, s.attributes.is_empty()),
            events_json: json_or_empty(&s.events, s.events.is_empty()),
            links_json: json_or_empty(&s.links, s.links.is_empty()),
            tenant: Tenant::of_span(s).to_string(),
        }
    }
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(s: &str, what: &str) -> Result<T> {
    if s.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(s)
        .map_err(|e| Error::Client(format!("corrupt {what} in a stored span: {e}")))
}

impl TryFrom<SpanRow> for Span {
    type Error = Error;
    fn try_from(r: SpanRow) -> Result<Span> {
        let parent = SpanId::from_bytes(r.parent_id);
        Ok(Span {
            trace_id: TraceId::from_bytes(r.trace_id),
            span_id: SpanId::from_bytes(r.span_id),
            parent_id: (!parent.is_zero()).then_some(parent),
            service: r.service,
            operation: r.operation,
            kind: r
                .kind
                .parse::<SpanKind>()
                .map_err(|e| Error::Client(e.to_string()))?,
            start_time: Timestamp::from_unix_nanos(r.start_time),
            end_time: Timestamp::from_unix_nanos(r.end_time),
            status: Status {
                code: r
                    .status
                    .parse::<StatusCode>()
                    .map_err(|e| Error::Client(e.to_string()))?,
                message: (!r.status_message.is_empty()).then_some(r.status_message),
            },
            attributes: parse_json(&r.attributes_json, "attributes")?,
            events: parse_json(&r.events_json, "events")?,
            links: parse_json(&r.links_json, "links")?,
        })
    }
}

/// First search step: matching traces, newest matching span first.
#[derive(Debug, Row, Deserialize)]
pub(crate) struct MatchRow {
    pub trace_id: [u8; 16],
    pub latest: i64,
    /// Rows the fast path read (0 for the exact path).
    pub scanned: u64,
    /// The query's `now64(9)` (Unix nanoseconds): the snapshot its `ingested_at` bound used.
    pub snap: i64,
}

/// Second search step: a summary computed in ClickHouse.
#[derive(Debug, Row, Deserialize)]
pub(crate) struct SummaryRow {
    pub trace_id: [u8; 16],
    pub root_service: String,
    pub root_operation: String,
    pub start_ns: i64,
    pub duration_ns: i64,
    pub span_count: u64,
    pub error_count: u64,
    pub services: Vec<String>,
}

/// One `span_links` row: a link from a span to a span of another trace.
#[derive(Debug, Row, Deserialize)]
pub(crate) struct LinkRow {
    pub source_trace_id: [u8; 16],
    pub source_span_id: [u8; 8],
    pub target_trace_id: [u8; 16],
    pub target_span_id: [u8; 8],
    pub link_type: String,
    /// `''` when the link names no dataset.
    pub dataset: String,
}

/// One element of `trace_summaries.links_out`: source span, target trace, target span,
/// link type, dataset (`''` when the link names none).
pub(crate) type LinkOut = ([u8; 8], [u8; 16], [u8; 8], String, String);

/// A trace's links to spans of other traces, from `trace_summaries`.
#[derive(Debug, Row, Deserialize)]
pub(crate) struct TraceLinksRow {
    pub trace_id: [u8; 16],
    pub links: Vec<LinkOut>,
}

/// A span's links as stored in `spans`, for upstream lineage.
#[derive(Debug, Row, Deserialize)]
pub(crate) struct SpanLinksRow {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub links_json: String,
}

/// One claim in the owner table.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub(crate) struct OwnerRow {
    pub uid: String,
    pub owner: String,
}

/// `system.tables` row used to read a table's TTL.
#[derive(Debug, Row, Deserialize)]
pub(crate) struct TableRow {
    pub name: String,
    pub engine_full: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use datatracing_core::{AttributeValue, Attributes};

    #[test]
    fn span_round_trips_through_a_row() {
        let span = Span {
            trace_id: TraceId::from_bytes([1; 16]),
            span_id: SpanId::from_bytes([2; 8]),
            parent_id: Some(SpanId::from_bytes([3; 8])),
            service: "s".into(),
            operation: "o".into(),
            kind: SpanKind::Join,
            start_time: Timestamp::from_unix_nanos(1_700_000_000_123_456_789),
            end_time: Timestamp::from_unix_nanos(1_700_000_001_000_000_000),
            status: Status::with_message(StatusCode::Timeout, "slow"),
            attributes: Attributes::from([("n".to_string(), AttributeValue::Int(5))]),
            events: vec![],
            links: vec![],
        };
        let row = SpanRow::from(&span);
        assert_eq!(row.attributes["n"], "5");
        assert_eq!(row.events_json, "");
        let back = Span::try_from(row).unwrap();
        assert_eq!(back, span);
    }
}
