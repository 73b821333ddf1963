//! Search requests and trace summaries: the read side of the storage contract.
//!
//! Search semantics (every backend implements exactly these): a trace matches when at least
//! one of its spans satisfies every given span filter at once: `service`, `operation`,
//! `status`, span start time within `[start, end]`, span duration within
//! `[min_duration, max_duration]`, and every attribute filter. Results are ordered by the start time of each trace's
//! latest matching span, newest first, ties broken by trace id, and cut at `limit`.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{SpanId, TraceId};
use crate::span::StatusCode;
use crate::timestamp::Timestamp;

/// A trace search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceQuery {
    /// Span service equals.
    pub service: Option<String>,
    /// Span operation equals.
    pub operation: Option<String>,
    /// Span status code equals.
    pub status: Option<StatusCode>,
    /// Span start time at or after.
    pub start: Option<Timestamp>,
    /// Span start time at or before.
    pub end: Option<Timestamp>,
    /// Span duration at least, in nanoseconds.
    pub min_duration_nanos: Option<i64>,
    /// Span duration at most, in nanoseconds.
    pub max_duration_nanos: Option<i64>,
    /// Span attribute conditions, all of which the same span must satisfy.
    pub attributes: Vec<AttributeFilter>,
    /// Maximum number of traces returned.
    pub limit: usize,
}

/// A condition on one span attribute.
///
/// Values compare as search text ([`AttributeValue::to_search_text`](crate::AttributeValue::to_search_text)):
/// strings as themselves, numbers in their shortest decimal form (`42`, `0.5`, `1`), booleans
/// as `true` / `false`, arrays as their JSON text. Every backend stores and compares that form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeFilter {
    /// The attribute key.
    pub key: String,
    /// `Some(v)`: the value equals `v`; `None`: the key exists.
    pub value: Option<String>,
}

impl AttributeFilter {
    /// Parses `key=value` (equals) or `key` (exists).
    pub fn parse(s: &str) -> Result<Self> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (s, None),
        };
        if key.is_empty() {
            return Err(Error::Query(
                "attribute filter needs a key: use key=value or key".into(),
            ));
        }
        Ok(Self {
            key: key.to_string(),
            value,
        })
    }

    /// Whether a span's attributes satisfy this filter.
    pub fn matches(&self, attributes: &crate::Attributes) -> bool {
        match (attributes.get(&self.key), &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(want)) => v.to_search_text() == *want,
        }
    }
}

impl TraceQuery {
    /// Default number of traces returned.
    pub const DEFAULT_LIMIT: usize = 20;
    /// Largest `limit` accepted.
    pub const MAX_LIMIT: usize = 1000;
    /// Most attribute filters in one query.
    pub const MAX_ATTRIBUTE_FILTERS: usize = 16;

    /// A query with only a limit.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Checks internal consistency.
    pub fn validate(&self) -> Result<()> {
        if self.limit == 0 || self.limit > Self::MAX_LIMIT {
            return Err(Error::Query(format!(
                "limit must be between 1 and {}",
                Self::MAX_LIMIT
            )));
        }
        if let (Some(s), Some(e)) = (self.start, self.end)
            && e < s
        {
            return Err(Error::Query("end must not be before start".into()));
        }
        if let (Some(min), Some(max)) = (self.min_duration_nanos, self.max_duration_nanos)
            && max < min
        {
            return Err(Error::Query(
                "max_duration must not be below min_duration".into(),
            ));
        }
        if self.min_duration_nanos.is_some_and(|d| d < 0)
            || self.max_duration_nanos.is_some_and(|d| d < 0)
        {
            return Err(Error::Query("durations must not be negative".into()));
        }
        if self.attributes.len() > Self::MAX_ATTRIBUTE_FILTERS {
            return Err(Error::Query(format!(
                "at most {} attribute filters are allowed",
                Self::MAX_ATTRIBUTE_FILTERS
            )));
        }
        for (name, v) in [("service", &self.service), ("operation", &self.operation)] {
            if v.as_deref().is_some_and(|s| s.is_empty()) {
                return Err(Error::Query(format!("{name} must not be empty when given")));
            }
        }
        Ok(())
    }
}

/// What a search returns per trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSummary {
    /// The trace.
    pub trace_id: TraceId,
    /// Service of the root span (the earliest span without a parent; if none, the earliest span).
    pub root_service: String,
    /// Operation of that span.
    pub root_operation: String,
    /// Earliest span start.
    pub start_time: Timestamp,
    /// Latest span end minus earliest span start, in nanoseconds.
    pub duration_nanos: i64,
    /// Number of distinct spans.
    pub span_count: u64,
    /// Spans with status ERROR or TIMEOUT.
    pub error_count: u64,
    /// Distinct services, sorted.
    pub services: Vec<String>,
}

/// Accumulates a [`TraceSummary`] from span rows in any order, ignoring duplicate span ids.
#[derive(Debug, Default)]
pub struct SummaryBuilder {
    seen: HashSet<SpanId>,
    root: Option<(bool, Timestamp, SpanId, String, String)>,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
    errors: u64,
    services: BTreeSet<String>,
}

impl SummaryBuilder {
    /// Adds one span row.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        span_id: SpanId,
        is_root: bool,
        service: &str,
        operation: &str,
        start: Timestamp,
        end: Timestamp,
        status: StatusCode,
    ) {
        if !self.seen.insert(span_id) {
            return;
        }
        // Parentless spans win; among equals, the earliest start, then the smallest span id.
        let better = match &self.root {
            None => true,
            Some((r, t, id, _, _)) => (!is_root, start, span_id) < (!*r, *t, *id),
        };
        if better {
            self.root = Some((
                is_root,
                start,
                span_id,
                service.to_string(),
                operation.to_string(),
            ));
        }
        self.start = Some(self.start.map_or(start, |s| s.min(start)));
        self.end = Some(self.end.map_or(end, |e| e.max(end)));
        if status.is_error() {
            self.errors += 1;
        }
        if !self.services.contains(service) {
            self.services.insert(service.to_string());
        }
    }

    /// The summary, or `None` when no span was added.
    pub fn build(self, trace_id: TraceId) -> Option<TraceSummary> {
        let (_, _, _, root_service, root_operation) = self.root?;
        let start = self.start?;
        let end = self.end?;
        Some(TraceSummary {
            trace_id,
            root_service,
            root_operation,
            start_time: start,
            duration_nanos: end.saturating_nanos_since(start).max(0),
            span_count: self.seen.len() as u64,
            error_count: self.errors,
            services: self.services.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_validation() {
        assert!(TraceQuery::with_limit(20).validate().is_ok());
        assert!(TraceQuery::with_limit(0).validate().is_err());
        assert!(TraceQuery::with_limit(5000).validate().is_err());
        let q = TraceQuery {
            min_duration_nanos: Some(10),
            max_duration_nanos: Some(5),
            ..TraceQuery::with_limit(1)
        };
        assert!(
            q.validate()
                .unwrap_err()
                .to_string()
                .contains("max_duration")
        );
        let q = TraceQuery {
            start: Some(Timestamp::from_unix_nanos(10)),
            end: Some(Timestamp::from_unix_nanos(5)),
            ..TraceQuery::with_limit(1)
        };
        assert!(q.validate().is_err());
    }

    #[test]
    fn attribute_filters() {
        let attrs = crate::Attributes::from([
            ("table".to_string(), crate::AttributeValue::from("orders")),
            ("rows".to_string(), crate::AttributeValue::Int(42)),
            ("ok".to_string(), crate::AttributeValue::Bool(true)),
        ]);
        assert!(
            AttributeFilter::parse("table=orders")
                .unwrap()
                .matches(&attrs)
        );
        assert!(AttributeFilter::parse("rows=42").unwrap().matches(&attrs));
        assert!(AttributeFilter::parse("ok=true").unwrap().matches(&attrs));
        assert!(AttributeFilter::parse("rows").unwrap().matches(&attrs));
        assert!(!AttributeFilter::parse("rows=43").unwrap().matches(&attrs));
        assert!(!AttributeFilter::parse("missing").unwrap().matches(&attrs));
        assert_eq!(
            AttributeFilter::parse("a=b=c").unwrap().value.as_deref(),
            Some("b=c")
        );
        assert!(AttributeFilter::parse("=x").is_err());
    }

    #[test]
    fn summary_prefers_parentless_root_and_dedups() {
        let t = Timestamp::from_unix_nanos;
        let mut b = SummaryBuilder::default();
        b.add(
            SpanId::from_bytes([2; 8]),
            false,
            "early-orphan",
            "x",
            t(0),
            t(5),
            StatusCode::Ok,
        );
        b.add(
            SpanId::from_bytes([1; 8]),
            true,
            "api",
            "root",
            t(10),
            t(50),
            StatusCode::Error,
        );
        b.add(
            SpanId::from_bytes([1; 8]),
            true,
            "api",
            "root",
            t(10),
            t(50),
            StatusCode::Error,
        );
        let s = b.build(TraceId::from_bytes([7; 16])).unwrap();
        assert_eq!(s.root_service, "api");
        assert_eq!(s.span_count, 2);
        assert_eq!(s.error_count, 1);
        assert_eq!(s.duration_nanos, 50);
        assert_eq!(
            s.services,
            vec!["api".to_string(), "early-orphan".to_string()]
        );
        assert!(
            SummaryBuilder::default()
                .build(TraceId::default())
                .is_none()
        );
    }
}
