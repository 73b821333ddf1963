//! Search requests and trace summaries: the read side of the storage contract.
//!
//! Search semantics (every backend implements exactly these): a trace matches when at least
//! one of its spans satisfies every given span filter at once: `service`, `operation`,
//! `kind`, `status`, span start time within `[start, end]`, every attribute filter, the link
//! filters (`linked_trace`: the span links to a span of that trace; `linked_service`: the span
//! links to a stored span of that service in another trace; links within one trace do not
//! count), the dataset filter (`dataset`: the span's `datatracing.dataset.inputs` or
//! `datatracing.dataset.outputs` holds that dataset name), and, with
//! [`DurationScope::Span`], span duration within `[min_duration, max_duration]`. With
//! [`DurationScope::Trace`] the duration bounds apply to the whole trace instead (earliest
//! span start to latest span end, the `duration_nanos` of its [`TraceSummary`]). Results are
//! ordered by the start time of each trace's latest matching span, newest first, ties broken
//! by trace id, and cut at `limit`.
//!
//! Paging: a page that is not the last carries a [`SearchCursor`]; the query with that cursor
//! returns the traces that follow, in the same order. A cursor pins a backend-defined
//! *snapshot* (the data visible when the first page was read): spans stored later are
//! ignored by the later pages, so inserts between pages cause neither duplicates nor gaps.

use std::collections::{BTreeSet, HashSet};

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{SpanId, TraceId};
use crate::span::{Attributes, SpanKind, StatusCode};
use crate::timestamp::Timestamp;

/// Whether `min_duration` / `max_duration` bound each matching span or the whole trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurationScope {
    /// The matching span's own duration (the default).
    #[default]
    Span,
    /// The trace's duration: earliest span start to latest span end.
    Trace,
}

impl DurationScope {
    /// The name used in requests and responses.
    pub fn as_str(self) -> &'static str {
        match self {
            DurationScope::Span => "span",
            DurationScope::Trace => "trace",
        }
    }
}

impl std::str::FromStr for DurationScope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "span" => Ok(DurationScope::Span),
            "trace" => Ok(DurationScope::Trace),
            other => Err(Error::Query(format!(
                "duration_scope must be span or trace, got {:?}",
                other.chars().take(64).collect::<String>()
            ))),
        }
    }
}

/// A trace search.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceQuery {
    /// Span service equals.
    pub service: Option<String>,
    /// Span operation equals.
    pub operation: Option<String>,
    /// Span (step) kind equals.
    pub kind: Option<SpanKind>,
    /// Span status code equals.
    pub status: Option<StatusCode>,
    /// Span start time at or after.
    pub start: Option<Timestamp>,
    /// Span start time at or before.
    pub end: Option<Timestamp>,
    /// Duration at least, in nanoseconds (of the span or the trace: `duration_scope`).
    pub min_duration_nanos: Option<i64>,
    /// Duration at most, in nanoseconds (of the span or the trace: `duration_scope`).
    pub max_duration_nanos: Option<i64>,
    /// What the duration bounds apply to.
    pub duration_scope: DurationScope,
    /// Span attribute conditions, all of which the same span must satisfy.
    pub attributes: Vec<AttributeFilter>,
    /// The span has a link to a span of this other trace (any link type).
    pub linked_trace: Option<TraceId>,
    /// The span has a link to a stored span of another trace whose service is this.
    pub linked_service: Option<String>,
    /// The span read or wrote this dataset: its
    /// [`DATASET_INPUTS`](crate::conventions::DATASET_INPUTS) or
    /// [`DATASET_OUTPUTS`](crate::conventions::DATASET_OUTPUTS) attribute holds the name (an
    /// array element, or the whole value when a producer sent a single string).
    pub dataset: Option<String>,
    /// Maximum number of traces returned.
    pub limit: usize,
    /// Continue after this cursor (from the previous page's `next_cursor`).
    pub cursor: Option<SearchCursor>,
}

/// A numeric comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NumericOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl NumericOp {
    /// The operator as written in requests and in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            NumericOp::Eq => "=",
            NumericOp::Ne => "!=",
            NumericOp::Gt => ">",
            NumericOp::Ge => ">=",
            NumericOp::Lt => "<",
            NumericOp::Le => "<=",
        }
    }

    /// Parses an operator name; `None` when it is not a numeric comparison.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "=" | "==" => NumericOp::Eq,
            "!=" => NumericOp::Ne,
            ">" => NumericOp::Gt,
            ">=" => NumericOp::Ge,
            "<" => NumericOp::Lt,
            "<=" => NumericOp::Le,
            _ => return None,
        })
    }

    /// `lhs op rhs`.
    pub fn eval(self, lhs: f64, rhs: f64) -> bool {
        match self {
            NumericOp::Eq => lhs == rhs,
            NumericOp::Ne => lhs != rhs,
            NumericOp::Gt => lhs > rhs,
            NumericOp::Ge => lhs >= rhs,
            NumericOp::Lt => lhs < rhs,
            NumericOp::Le => lhs <= rhs,
        }
    }
}

/// What an [`AttributeFilter`] asks of the attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeOp {
    /// The key is present, whatever its value.
    Exists,
    /// The value's search text equals this.
    Eq(String),
    /// The key is present and its search text differs from this.
    Ne(String),
    /// The key is present and its search text contains a match of this regular expression
    /// (unanchored; RE2-compatible syntax, the common subset of both backends' engines).
    Regex(String),
    /// The key is present, its search text is a decimal number, and `number op operand`.
    Numeric(NumericOp, f64),
    /// The value is an array with an element whose search text equals this, or a scalar
    /// whose search text equals it (dataset lists, tags: `["a","b"]` contains `a`).
    Contains(String),
}

/// A condition on one span attribute.
///
/// Values compare as search text ([`AttributeValue::to_search_text`](crate::AttributeValue::to_search_text)):
/// strings as themselves, numbers in their shortest decimal form (`42`, `0.5`, `1`), booleans
/// as `true` / `false`, arrays as their JSON text. Every backend stores and compares that form.
/// Numeric comparisons read that text as a 64-bit float, so integers beyond 2^53 compare
/// approximately, and a string attribute holding a number (`"42"`) compares as one.
#[derive(Clone, Debug, PartialEq)]
pub struct AttributeFilter {
    /// The attribute key (any text, including `=` and other punctuation).
    pub key: String,
    /// The condition on its value.
    pub op: AttributeOp,
}

/// An [`AttributeFilter`] with its regular expression compiled, for evaluating many spans.
#[derive(Clone, Debug)]
pub struct AttributeMatcher {
    key: String,
    op: AttributeOp,
    regex: Option<Regex>,
}

impl AttributeMatcher {
    /// Whether a span's attributes satisfy the filter.
    pub fn matches(&self, attributes: &Attributes) -> bool {
        let Some(v) = attributes.get(&self.key) else {
            return false;
        };
        match &self.op {
            AttributeOp::Exists => true,
            AttributeOp::Eq(want) => v.to_search_text() == *want,
            AttributeOp::Ne(want) => v.to_search_text() != *want,
            AttributeOp::Regex(_) => self
                .regex
                .as_ref()
                .is_some_and(|r| r.is_match(&v.to_search_text())),
            AttributeOp::Numeric(op, rhs) => v
                .to_search_text()
                .parse::<f64>()
                .is_ok_and(|lhs| op.eval(lhs, *rhs)),
            AttributeOp::Contains(want) => v.contains_text(want),
        }
    }
}

impl AttributeFilter {
    /// Longest key accepted.
    pub const MAX_KEY_BYTES: usize = 256;
    /// Longest string operand accepted.
    pub const MAX_VALUE_BYTES: usize = 4096;
    /// Longest regular expression accepted.
    pub const MAX_REGEX_BYTES: usize = 512;
    /// Largest compiled regular expression, bounding compile time and memory.
    pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

    /// Equality on the search text.
    pub fn eq(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            op: AttributeOp::Eq(value.into()),
        }
    }

    /// Presence of the key.
    pub fn exists(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            op: AttributeOp::Exists,
        }
    }

    /// Parses the query-string form: `key=value` (equals) or `key` (exists). The key ends at
    /// the first `=`, so keys containing `=` need the JSON search body.
    pub fn parse(s: &str) -> Result<Self> {
        let f = match s.split_once('=') {
            Some((k, v)) => Self::eq(k, v),
            None => Self::exists(s),
        };
        if f.key.is_empty() {
            return Err(Error::Query(
                "attribute filter needs a key: use key=value or key".into(),
            ));
        }
        Ok(f)
    }

    /// Builds a filter from an operator name and a JSON operand: numbers take `=`, `!=`,
    /// `>`, `>=`, `<`, `<=`; strings take `=`, `!=`, `regex`; `exists` takes no value.
    pub fn from_parts(key: String, op: &str, value: Option<&serde_json::Value>) -> Result<Self> {
        use serde_json::Value;
        let bad = |m: String| Err(Error::Query(format!("attribute {key:?}: {m}")));
        let op = match (op, value) {
            ("exists", None) => AttributeOp::Exists,
            ("exists", Some(_)) => return bad("exists takes no value".into()),
            (_, None) => return bad(format!("operator {op:?} needs a value")),
            ("regex", Some(Value::String(p))) => AttributeOp::Regex(p.clone()),
            ("=" | "==", Some(Value::String(v))) => AttributeOp::Eq(v.clone()),
            ("!=", Some(Value::String(v))) => AttributeOp::Ne(v.clone()),
            ("contains", Some(Value::String(v))) => AttributeOp::Contains(v.clone()),
            (_, Some(Value::Number(n))) => match (NumericOp::parse(op), n.as_f64()) {
                (Some(o), Some(x)) => AttributeOp::Numeric(o, x),
                (None, _) => {
                    return bad(format!(
                        "operator {op:?} does not apply to a number; use =, !=, >, >=, < or <="
                    ));
                }
                (_, None) => return bad("the number is out of range".into()),
            },
            (o, Some(Value::String(_))) if NumericOp::parse(o).is_some() => {
                return bad(format!(
                    "operator {op:?} compares numbers: give a JSON number, not a string"
                ));
            }
            (_, Some(Value::String(_))) => {
                return bad(format!(
                    "unknown operator {:?}; strings take =, !=, regex or contains",
                    op.chars().take(16).collect::<String>()
                ));
            }
            (_, Some(_)) => return bad("the value must be a string or a number".into()),
        };
        let f = Self { key, op };
        f.validate()?;
        Ok(f)
    }

    /// Checks bounds, and that a regular expression compiles within its size limit.
    pub fn validate(&self) -> Result<()> {
        self.compile().map(|_| ())
    }

    /// The filter ready to evaluate many spans (its regular expression compiled once).
    pub fn compile(&self) -> Result<AttributeMatcher> {
        let bad = |m: String| Err(Error::Query(format!("attribute {:?}: {m}", self.key)));
        if self.key.is_empty() {
            return Err(Error::Query(
                "attribute filter needs a non-empty key".into(),
            ));
        }
        if self.key.len() > Self::MAX_KEY_BYTES {
            return Err(Error::Query(format!(
                "attribute keys in filters are at most {} bytes",
                Self::MAX_KEY_BYTES
            )));
        }
        let mut regex = None;
        match &self.op {
            AttributeOp::Exists => {}
            AttributeOp::Eq(v) | AttributeOp::Ne(v) | AttributeOp::Contains(v) => {
                if v.len() > Self::MAX_VALUE_BYTES {
                    return bad(format!(
                        "values are at most {} bytes",
                        Self::MAX_VALUE_BYTES
                    ));
                }
            }
            AttributeOp::Numeric(_, x) => {
                if !x.is_finite() {
                    return bad("the number must be finite".into());
                }
            }
            AttributeOp::Regex(p) => {
                if p.is_empty() || p.len() > Self::MAX_REGEX_BYTES {
                    return bad(format!(
                        "a regex must have 1 to {} bytes",
                        Self::MAX_REGEX_BYTES
                    ));
                }
                if let Some(flag) = unsupported_regex_flag(p) {
                    return bad(format!(
                        "regex flag {flag:?} is not supported (use i, m, s or U)"
                    ));
                }
                match RegexBuilder::new(p)
                    .size_limit(Self::REGEX_SIZE_LIMIT)
                    .dfa_size_limit(Self::REGEX_SIZE_LIMIT)
                    .build()
                {
                    Ok(r) => regex = Some(r),
                    Err(e) => {
                        return bad(format!(
                            "invalid regex: {}",
                            e.to_string().lines().last().unwrap_or_default().trim()
                        ));
                    }
                }
            }
        }
        Ok(AttributeMatcher {
            key: self.key.clone(),
            op: self.op.clone(),
            regex,
        })
    }

    /// Whether a span's attributes satisfy this filter (compiles a regex on every call; use
    /// [`Self::compile`] for many spans). An invalid filter matches nothing.
    pub fn matches(&self, attributes: &Attributes) -> bool {
        self.compile().is_ok_and(|m| m.matches(attributes))
    }
}

/// The first inline flag outside `i`, `m`, `s`, `U` (and `-`), which the ClickHouse regex
/// engine (RE2) does not share with Rust's: refusing them keeps both backends equal.
fn unsupported_regex_flag(pattern: &str) -> Option<char> {
    let b = pattern.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == b'(' && b.get(i + 1) == Some(&b'?') {
            let mut j = i + 2;
            while let Some(&c) = b.get(j) {
                match c {
                    b':' | b')' => break,
                    b'i' | b'm' | b's' | b'U' | b'-' => j += 1,
                    // `(?P<name>` is a named group, not a flag.
                    b'P' if j == i + 2 => break,
                    other => return Some(char::from(other)),
                }
            }
        }
        i += 1;
    }
    None
}

/// An opaque position in a paged search: the sort key of the last trace returned, the
/// backend's snapshot, and a fingerprint of the filters it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchCursor {
    /// Backend-defined snapshot of the first page (a row sequence, an insert time).
    pub snapshot: i64,
    /// Start time (Unix nanoseconds) of the last returned trace's latest matching span.
    pub latest_nanos: i64,
    /// The last returned trace.
    pub trace_id: TraceId,
    /// [`TraceQuery::fingerprint`] of the query that produced it.
    pub fingerprint: u64,
}

const CURSOR_VERSION: u8 = 1;
const CURSOR_BYTES: usize = 1 + 8 + 8 + 16 + 8;

impl SearchCursor {
    /// The cursor as URL-safe text.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(CURSOR_BYTES);
        b.push(CURSOR_VERSION);
        b.extend_from_slice(&self.snapshot.to_be_bytes());
        b.extend_from_slice(&self.latest_nanos.to_be_bytes());
        b.extend_from_slice(self.trace_id.as_bytes());
        b.extend_from_slice(&self.fingerprint.to_be_bytes());
        hex::encode(b)
    }

    /// Parses [`Self::encode`]'s text.
    pub fn decode(s: &str) -> Result<Self> {
        let bad = || Error::Query("cursor is malformed (pass next_cursor back unchanged)".into());
        if s.len() != CURSOR_BYTES * 2 {
            return Err(bad());
        }
        let b = hex::decode(s).map_err(|_| bad())?;
        if b[0] != CURSOR_VERSION {
            return Err(bad());
        }
        let i64_at = |i: usize| -> Result<i64> {
            Ok(i64::from_be_bytes(
                b[i..i + 8].try_into().map_err(|_| bad())?,
            ))
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[17..33]);
        Ok(Self {
            snapshot: i64_at(1)?,
            latest_nanos: i64_at(9)?,
            trace_id: TraceId::from_bytes(id),
            fingerprint: u64::from_be_bytes(b[33..41].try_into().map_err(|_| bad())?),
        })
    }

    /// Whether a trace with this sort key comes after the cursor (newest first, then by id).
    pub fn is_before(&self, latest_nanos: i64, trace_id: TraceId) -> bool {
        latest_nanos < self.latest_nanos
            || (latest_nanos == self.latest_nanos && trace_id > self.trace_id)
    }
}

/// An opaque position in the spans of one trace, ordered by start time then span id: the
/// last span of a page. Bound to its trace, so a cursor of another trace is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanCursor {
    /// The trace being paged.
    pub trace_id: TraceId,
    /// Start time (Unix nanoseconds) of the last span returned.
    pub start_nanos: i64,
    /// Span id of the last span returned.
    pub span_id: SpanId,
}

const SPAN_CURSOR_VERSION: u8 = 1;
const SPAN_CURSOR_BYTES: usize = 1 + 16 + 8 + 8;

impl SpanCursor {
    /// The position just after `span`.
    pub fn after(span: &crate::Span) -> Self {
        Self {
            trace_id: span.trace_id,
            start_nanos: span.start_time.unix_nanos(),
            span_id: span.span_id,
        }
    }

    /// The cursor as URL-safe text.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(SPAN_CURSOR_BYTES);
        b.push(SPAN_CURSOR_VERSION);
        b.extend_from_slice(self.trace_id.as_bytes());
        b.extend_from_slice(&self.start_nanos.to_be_bytes());
        b.extend_from_slice(self.span_id.as_bytes());
        hex::encode(b)
    }

    /// Parses [`Self::encode`]'s text.
    pub fn decode(s: &str) -> Result<Self> {
        let bad = || Error::Query("cursor is malformed (pass next_cursor back unchanged)".into());
        if s.len() != SPAN_CURSOR_BYTES * 2 {
            return Err(bad());
        }
        let b = hex::decode(s).map_err(|_| bad())?;
        if b[0] != SPAN_CURSOR_VERSION {
            return Err(bad());
        }
        let mut trace = [0u8; 16];
        trace.copy_from_slice(&b[1..17]);
        let mut span = [0u8; 8];
        span.copy_from_slice(&b[25..33]);
        Ok(Self {
            trace_id: TraceId::from_bytes(trace),
            start_nanos: i64::from_be_bytes(b[17..25].try_into().map_err(|_| bad())?),
            span_id: SpanId::from_bytes(span),
        })
    }

    /// Whether `span` comes after this position.
    pub fn is_before(&self, span: &crate::Span) -> bool {
        (span.start_time.unix_nanos(), span.span_id) > (self.start_nanos, self.span_id)
    }
}

/// One page of search results.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchPage {
    /// Matching traces in result order.
    pub traces: Vec<TraceSummary>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<SearchCursor>,
}

/// A time window for listing services and operations; either bound may be open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeWindow {
    /// At or after.
    pub start: Option<Timestamp>,
    /// At or before.
    pub end: Option<Timestamp>,
}

impl TimeWindow {
    /// Checks that the window is not inverted.
    pub fn validate(&self) -> Result<()> {
        if let (Some(s), Some(e)) = (self.start, self.end)
            && e < s
        {
            return Err(Error::Query("end must not be before start".into()));
        }
        Ok(())
    }
}

/// An operation of a service, with the kind its spans have.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Operation {
    /// The operation name.
    pub name: String,
    /// The span (step) kind.
    pub span_kind: SpanKind,
}

/// Most names a services or operations listing returns.
pub const MAX_NAMES: usize = 10_000;

/// FNV-1a, a stable 64-bit hash (the standard library's hasher may change between releases).
fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl TraceQuery {
    /// Default number of traces returned.
    pub const DEFAULT_LIMIT: usize = 20;
    /// Largest `limit` accepted.
    pub const MAX_LIMIT: usize = 1000;
    /// Most attribute filters in one query.
    pub const MAX_ATTRIBUTE_FILTERS: usize = 16;
    /// Most regex attribute filters in one query (each costs a compile and a per-span scan).
    pub const MAX_REGEX_FILTERS: usize = 4;

    /// A query with only a limit.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// A stable hash of the filters (everything but `limit` and `cursor`): a cursor is only
    /// valid for the query it came from.
    pub fn fingerprint(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut put = |s: &str| {
            h = fnv1a(&(s.len() as u64).to_le_bytes(), h);
            h = fnv1a(s.as_bytes(), h);
        };
        put(self.service.as_deref().unwrap_or("\u{0}"));
        put(self.operation.as_deref().unwrap_or("\u{0}"));
        put(self.kind.map_or("\u{0}", SpanKind::as_str));
        put(self.status.map_or("\u{0}", StatusCode::as_str));
        put(&format!("{:?}", self.start.map(Timestamp::unix_nanos)));
        put(&format!("{:?}", self.end.map(Timestamp::unix_nanos)));
        put(&format!(
            "{:?}/{:?}",
            self.min_duration_nanos, self.max_duration_nanos
        ));
        put(self.duration_scope.as_str());
        for f in &self.attributes {
            put(&f.key);
            match &f.op {
                AttributeOp::Exists => put("exists"),
                AttributeOp::Eq(v) => {
                    put("=");
                    put(v);
                }
                AttributeOp::Ne(v) => {
                    put("!=");
                    put(v);
                }
                AttributeOp::Regex(v) => {
                    put("regex");
                    put(v);
                }
                AttributeOp::Numeric(o, x) => {
                    put(o.as_str());
                    put(&x.to_bits().to_string());
                }
                AttributeOp::Contains(v) => {
                    put("contains");
                    put(v);
                }
            }
        }
        // Only when given, so cursors of queries without link filters keep their fingerprint.
        if let Some(t) = self.linked_trace {
            put("linked_trace");
            put(&t.to_string());
        }
        if let Some(s) = &self.linked_service {
            put("linked_service");
            put(s);
        }
        if let Some(d) = &self.dataset {
            put("dataset");
            put(d);
        }
        h
    }

    /// The span-level duration bounds (none with trace scope).
    pub fn span_duration_bounds(&self) -> (Option<i64>, Option<i64>) {
        match self.duration_scope {
            DurationScope::Span => (self.min_duration_nanos, self.max_duration_nanos),
            DurationScope::Trace => (None, None),
        }
    }

    /// The trace-level duration bounds (none with span scope, or when neither is given).
    pub fn trace_duration_bounds(&self) -> Option<(i64, i64)> {
        match self.duration_scope {
            DurationScope::Trace
                if self.min_duration_nanos.is_some() || self.max_duration_nanos.is_some() =>
            {
                Some((
                    self.min_duration_nanos.unwrap_or(0),
                    self.max_duration_nanos.unwrap_or(i64::MAX),
                ))
            }
            _ => None,
        }
    }

    /// Checks internal consistency and bounds.
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
        let regexes = self
            .attributes
            .iter()
            .filter(|f| matches!(f.op, AttributeOp::Regex(_)))
            .count();
        if regexes > Self::MAX_REGEX_FILTERS {
            return Err(Error::Query(format!(
                "at most {} regex attribute filters are allowed",
                Self::MAX_REGEX_FILTERS
            )));
        }
        for f in &self.attributes {
            f.validate()?;
        }
        for (name, v) in [
            ("service", &self.service),
            ("operation", &self.operation),
            ("linked_service", &self.linked_service),
            ("dataset", &self.dataset),
        ] {
            if v.as_deref().is_some_and(|s| s.is_empty()) {
                return Err(Error::Query(format!("{name} must not be empty when given")));
            }
        }
        if self
            .dataset
            .as_ref()
            .is_some_and(|d| d.len() > AttributeFilter::MAX_VALUE_BYTES)
        {
            return Err(Error::Query(format!(
                "dataset is at most {} bytes",
                AttributeFilter::MAX_VALUE_BYTES
            )));
        }
        if let Some(c) = &self.cursor
            && c.fingerprint != self.fingerprint()
        {
            return Err(Error::Query(
                "cursor belongs to a different search: repeat the filters of the first page".into(),
            ));
        }
        Ok(())
    }
}

/// What a search returns per trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
            AttributeFilter::parse("a=b=c").unwrap().op,
            AttributeOp::Eq("b=c".into())
        );
        assert!(AttributeFilter::parse("=x").is_err());
    }

    fn typed(key: &str, op: &str, v: serde_json::Value) -> Result<AttributeFilter> {
        let v = (!v.is_null()).then_some(v);
        AttributeFilter::from_parts(key.into(), op, v.as_ref())
    }

    #[test]
    fn typed_attribute_filters() {
        use serde_json::json;
        let attrs = crate::Attributes::from([
            ("rows".to_string(), crate::AttributeValue::Int(42)),
            ("ratio".to_string(), crate::AttributeValue::Float(0.5)),
            ("a=b".to_string(), crate::AttributeValue::from("x=y")),
            (
                "path".to_string(),
                crate::AttributeValue::from("s3://lake/orders"),
            ),
            ("flag".to_string(), crate::AttributeValue::Bool(true)),
        ]);
        let m = |k: &str, op: &str, v: serde_json::Value| typed(k, op, v).unwrap().matches(&attrs);
        assert!(m("rows", ">", json!(41)));
        assert!(!m("rows", ">", json!(42)));
        assert!(m("rows", ">=", json!(42)));
        assert!(m("rows", "<", json!(42.5)));
        assert!(m("rows", "<=", json!(42)));
        assert!(m("rows", "=", json!(42)));
        assert!(m("rows", "!=", json!(7)));
        assert!(!m("rows", "!=", json!(42)));
        assert!(m("ratio", "<", json!(1)));
        assert!(!m("flag", ">", json!(0)), "booleans are not numbers");
        assert!(!m("missing", "!=", json!(1)), "!= needs the key");
        assert!(m("a=b", "=", json!("x=y")), "keys and values may hold '='");
        assert!(m("a=b", "!=", json!("x")));
        assert!(!m("missing", "!=", json!("x")));
        assert!(m("path", "regex", json!("^s3://[a-z]+/")));
        assert!(!m("path", "regex", json!("^gs://")));
        assert!(m("flag", "exists", serde_json::Value::Null));
        assert!(
            m("rows", "=", json!("42")),
            "string equality compares search text"
        );

        for (k, op, v, needle) in [
            ("rows", ">", json!("5"), "give a JSON number"),
            ("path", "regex", json!(5), "does not apply to a number"),
            ("path", "like", json!("x"), "unknown operator"),
            ("path", "regex", json!("(unclosed"), "invalid regex"),
            ("path", "regex", json!("(?x)a b"), "flag 'x'"),
            ("path", "regex", json!("a{1000}{1000}"), "invalid regex"),
            ("path", "regex", json!(""), "1 to 512 bytes"),
            ("path", "exists", json!(1), "no value"),
            ("path", "=", serde_json::Value::Null, "needs a value"),
            ("path", "=", json!(true), "string or a number"),
            ("", "exists", serde_json::Value::Null, "non-empty key"),
        ] {
            let e = typed(k, op, v).unwrap_err().to_string();
            assert!(e.contains(needle), "{op}: {e} should mention {needle}");
        }
        assert!(typed(&"k".repeat(300), "exists", serde_json::Value::Null).is_err());
        assert!(typed("k", "regex", json!("a".repeat(600))).is_err());
        assert!(unsupported_regex_flag(r"(?i)a(?P<n>b)\(?x").is_none());
        assert_eq!(unsupported_regex_flag("(?R)a"), Some('R'));
    }

    #[test]
    fn cursor_round_trips_and_is_bound_to_its_query() {
        let q = TraceQuery {
            service: Some("etl".into()),
            attributes: vec![AttributeFilter::eq("a=b", "c")],
            ..TraceQuery::with_limit(5)
        };
        let c = SearchCursor {
            snapshot: -3,
            latest_nanos: 1_700_000_000_000_000_000,
            trace_id: TraceId::from_bytes([9; 16]),
            fingerprint: q.fingerprint(),
        };
        assert_eq!(SearchCursor::decode(&c.encode()).unwrap(), c);
        let sc = SpanCursor {
            trace_id: TraceId::from_bytes([7; 16]),
            start_nanos: -5,
            span_id: SpanId::from_bytes([3; 8]),
        };
        assert_eq!(SpanCursor::decode(&sc.encode()).unwrap(), sc);
        assert!(
            SpanCursor::decode(&c.encode()).is_err(),
            "a search cursor is not a span cursor"
        );
        assert!(SpanCursor::decode("zz").is_err());
        for bad in [
            "",
            "zz",
            &c.encode()[2..],
            &format!("02{}", &c.encode()[2..]),
        ] {
            assert!(SearchCursor::decode(bad).is_err(), "{bad}");
        }
        let next = TraceQuery {
            cursor: Some(c),
            limit: 50,
            ..q.clone()
        };
        assert!(
            next.validate().is_ok(),
            "the limit may change between pages"
        );
        let other = TraceQuery {
            service: Some("other".into()),
            ..next.clone()
        };
        assert!(
            other
                .validate()
                .unwrap_err()
                .to_string()
                .contains("different search")
        );
        let other = TraceQuery {
            attributes: vec![AttributeFilter::eq("a", "b=c")],
            ..next
        };
        assert!(
            other.validate().is_err(),
            "key/value split is part of the fingerprint"
        );
        assert!(c.is_before(c.latest_nanos - 1, TraceId::from_bytes([0; 16])));
        assert!(c.is_before(c.latest_nanos, TraceId::from_bytes([10; 16])));
        assert!(!c.is_before(c.latest_nanos, TraceId::from_bytes([9; 16])));
        assert!(!c.is_before(c.latest_nanos + 1, TraceId::from_bytes([10; 16])));
    }

    #[test]
    fn query_bounds_filters() {
        let mut q = TraceQuery::with_limit(1);
        q.attributes = (0..5)
            .map(|i| AttributeFilter {
                key: format!("k{i}"),
                op: AttributeOp::Regex("a".into()),
            })
            .collect();
        assert!(q.validate().unwrap_err().to_string().contains("regex"));
        q.attributes = (0..17)
            .map(|i| AttributeFilter::exists(format!("k{i}")))
            .collect();
        assert!(q.validate().is_err());
        q.attributes = vec![AttributeFilter {
            key: "k".into(),
            op: AttributeOp::Numeric(NumericOp::Gt, f64::NAN),
        }];
        assert!(q.validate().is_err(), "non-finite numbers are refused");
        let trace = TraceQuery {
            min_duration_nanos: Some(5),
            duration_scope: DurationScope::Trace,
            ..TraceQuery::with_limit(1)
        };
        assert_eq!(trace.span_duration_bounds(), (None, None));
        assert_eq!(trace.trace_duration_bounds(), Some((5, i64::MAX)));
        assert_eq!(TraceQuery::with_limit(1).trace_duration_bounds(), None);
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
