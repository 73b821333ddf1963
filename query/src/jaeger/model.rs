//! Jaeger's trace JSON as typed values that borrow from the spans they describe.
//!
//! A search answer is hundreds of spans of tens of tags each; built as `serde_json::Value`
//! trees, every tag was a map of three owned keys and the answer cost more to assemble than
//! to read from the store. These types serialize straight from the spans instead. Their
//! fields are declared in key order, so the bytes are those the `Value` trees gave (a
//! `serde_json` map writes its keys sorted).

use std::borrow::Cow;
use std::collections::BTreeMap;

use datatracing_core::{AttributeValue, LinkType, Span, SpanKind, StatusCode, Timestamp, TraceId};
use datatracing_store::CappedTrace;
use serde::Serialize;

use super::{
    LINK_TYPES_TAG, RESOURCE_PREFIX, STATUS_TAG, STEP_KIND_TAG, jaeger_id_text, jaeger_kind,
};

/// Jaeger's success envelope `{data, errors, limit, offset, total}`.
#[derive(Serialize)]
pub(crate) struct Envelope<T> {
    pub data: T,
    pub errors: Option<Vec<NotFound>>,
    pub limit: u32,
    pub offset: u32,
    pub total: usize,
}

impl<T> Envelope<T> {
    /// `total` is the number of items for listings and 0 for traces, as Jaeger answers.
    pub fn new(data: T, total: usize) -> Self {
        Envelope {
            data,
            errors: None,
            limit: 0,
            offset: 0,
            total,
        }
    }
}

/// An id asked for by `traceID` that no stored trace has.
#[derive(Serialize)]
pub(crate) struct NotFound {
    pub msg: &'static str,
    #[serde(rename = "traceID")]
    pub trace_id: String,
}

/// A trace: its spans, the processes they point at (`p1`, `p2`, ... in order of first use)
/// and, when a cap cut it, a warning.
#[derive(Serialize)]
pub(crate) struct Trace<'a> {
    processes: BTreeMap<String, Process<'a>>,
    spans: Vec<JSpan<'a>>,
    #[serde(rename = "traceID")]
    trace_id: String,
    warnings: Option<Vec<String>>,
}

#[derive(Serialize, PartialEq)]
struct Process<'a> {
    #[serde(rename = "serviceName")]
    service_name: &'a str,
    tags: Vec<Tag<'a>>,
}

#[derive(Serialize)]
struct JSpan<'a> {
    duration: i64,
    logs: Vec<Log<'a>>,
    #[serde(rename = "operationName")]
    operation_name: &'a str,
    #[serde(rename = "processID")]
    process_id: String,
    references: Vec<Reference>,
    #[serde(rename = "spanID")]
    span_id: String,
    #[serde(rename = "startTime")]
    start_time: i64,
    tags: Vec<Tag<'a>>,
    #[serde(rename = "traceID")]
    trace_id: String,
    warnings: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Log<'a> {
    fields: Vec<Tag<'a>>,
    timestamp: i64,
}

#[derive(Serialize)]
struct Reference {
    #[serde(rename = "refType")]
    ref_type: &'static str,
    #[serde(rename = "spanID")]
    span_id: String,
    #[serde(rename = "traceID")]
    trace_id: String,
}

/// A tag `{key, type, value}`.
#[derive(Serialize, PartialEq)]
struct Tag<'a> {
    key: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
    value: TagValue<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum TagValue<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl PartialEq for TagValue<'_> {
    /// As the JSON compares: a float that is not finite is written `null`, so two such
    /// values are the same tag.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TagValue::Str(a), TagValue::Str(b)) => a == b,
            (TagValue::Int(a), TagValue::Int(b)) => a == b,
            (TagValue::Bool(a), TagValue::Bool(b)) => a == b,
            (TagValue::Float(a), TagValue::Float(b)) => {
                a == b || (!a.is_finite() && !b.is_finite())
            }
            _ => false,
        }
    }
}

/// Go's text form of a float in JSON: integral values without a fraction (`3`, not `3.0`).
pub(crate) fn go_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{}", f as i128)
    } else {
        f.to_string()
    }
}

/// Arrays are their JSON text (Jaeger's model has no arrays).
fn json_text<T: Serialize + ?Sized>(v: &T) -> Cow<'static, str> {
    Cow::Owned(serde_json::to_string(v).unwrap_or_default())
}

fn tag<'a>(key: &'a str, v: &'a AttributeValue) -> Tag<'a> {
    let (ty, value) = match v {
        AttributeValue::String(s) => ("string", TagValue::Str(Cow::Borrowed(s))),
        AttributeValue::Int(i) => ("int64", TagValue::Int(*i)),
        AttributeValue::Float(f) => ("float64", TagValue::Float(*f)),
        AttributeValue::Bool(b) => ("bool", TagValue::Bool(*b)),
        AttributeValue::StringArray(a) => ("string", TagValue::Str(json_text(a))),
        AttributeValue::IntArray(a) => ("string", TagValue::Str(json_text(a))),
        AttributeValue::BoolArray(a) => ("string", TagValue::Str(json_text(a))),
        AttributeValue::FloatArray(a) => (
            "string",
            TagValue::Str(Cow::Owned(format!(
                "[{}]",
                a.iter().map(|f| go_float(*f)).collect::<Vec<_>>().join(",")
            ))),
        ),
    };
    Tag { key, ty, value }
}

fn str_tag<'a>(key: &'a str, v: impl Into<Cow<'a, str>>) -> Tag<'a> {
    Tag {
        key,
        ty: "string",
        value: TagValue::Str(v.into()),
    }
}

fn micros(t: Timestamp) -> i64 {
    t.unix_nanos().div_euclid(1_000)
}

/// The process of a span: its service and its resource attributes, prefix removed.
fn process(s: &Span) -> Process<'_> {
    let tags = s
        .attributes
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(RESOURCE_PREFIX).map(|k| tag(k, v)))
        .collect();
    Process {
        service_name: &s.service,
        tags,
    }
}

fn span_tags(s: &Span) -> Vec<Tag<'_>> {
    let mut tags: Vec<Tag<'_>> = s
        .attributes
        .iter()
        .filter(|(k, _)| !k.starts_with(RESOURCE_PREFIX))
        .map(|(k, v)| tag(k, v))
        .collect();
    tags.push(str_tag("span.kind", jaeger_kind(s.kind)));
    if !matches!(
        s.kind,
        SpanKind::Internal
            | SpanKind::Server
            | SpanKind::Client
            | SpanKind::Producer
            | SpanKind::Consumer
    ) {
        tags.push(str_tag(STEP_KIND_TAG, s.kind.as_str()));
    }
    match s.status.code {
        StatusCode::Unset => {}
        StatusCode::Ok => tags.push(str_tag("otel.status_code", "OK")),
        code => {
            tags.push(Tag {
                key: "error",
                ty: "bool",
                value: TagValue::Bool(true),
            });
            tags.push(str_tag("otel.status_code", "ERROR"));
            if code != StatusCode::Error {
                tags.push(str_tag(STATUS_TAG, code.as_str()));
            }
        }
    }
    if let Some(m) = &s.status.message {
        tags.push(str_tag("otel.status_description", m.as_str()));
    }
    if s.links
        .iter()
        .any(|l| l.link_type == LinkType::DataDependency)
    {
        let types: Vec<&str> = s.links.iter().map(|l| l.link_type.as_str()).collect();
        tags.push(str_tag(LINK_TYPES_TAG, json_text(&types)));
    }
    // By key, as Jaeger lists them (the attributes were sorted; the derived tags were not).
    // Stable, so tags of one key keep their order.
    tags.sort_by(|a, b| a.key.cmp(b.key));
    tags
}

fn references(s: &Span) -> Vec<Reference> {
    let parent = s.parent_id.map(|p| Reference {
        ref_type: "CHILD_OF",
        span_id: p.to_hex(),
        trace_id: jaeger_id_text(s.trace_id),
    });
    parent
        .into_iter()
        .chain(s.links.iter().map(|l| Reference {
            ref_type: match l.link_type {
                LinkType::ChildOf => "CHILD_OF",
                LinkType::FollowsFrom | LinkType::DataDependency => "FOLLOWS_FROM",
            },
            span_id: l.span_id.to_hex(),
            trace_id: jaeger_id_text(l.trace_id),
        }))
        .collect()
}

impl<'a> Trace<'a> {
    /// A trace in our span order (start time, then span id).
    pub fn new(trace_id: TraceId, spans: &'a [Span]) -> Self {
        let mut processes: Vec<Process<'a>> = Vec::new();
        let mut json_spans = Vec::with_capacity(spans.len());
        for s in spans {
            let p = process(s);
            let idx = match processes.iter().position(|q| *q == p) {
                Some(i) => i,
                None => {
                    processes.push(p);
                    processes.len() - 1
                }
            };
            let logs = s
                .events
                .iter()
                .map(|e| Log {
                    fields: std::iter::once(str_tag("event", e.name.as_str()))
                        .chain(e.attributes.iter().map(|(k, v)| tag(k, v)))
                        .collect(),
                    timestamp: micros(e.time),
                })
                .collect();
            json_spans.push(JSpan {
                duration: s.duration_nanos() / 1_000,
                logs,
                operation_name: &s.operation,
                process_id: format!("p{}", idx + 1),
                references: references(s),
                span_id: s.span_id.to_hex(),
                start_time: micros(s.start_time),
                tags: span_tags(s),
                trace_id: jaeger_id_text(s.trace_id),
                warnings: None,
            });
        }
        Trace {
            processes: processes
                .into_iter()
                .enumerate()
                .map(|(i, p)| (format!("p{}", i + 1), p))
                .collect(),
            spans: json_spans,
            trace_id: jaeger_id_text(trace_id),
            warnings: None,
        }
    }

    /// A trace read with a span cap: a cut one says so in its warnings.
    pub fn capped(trace_id: TraceId, capped: &'a CappedTrace) -> Self {
        let mut t = Trace::new(trace_id, &capped.spans);
        if capped.truncated {
            t.warnings = Some(vec![format!(
                "trace truncated to its first {} spans (query.max_trace_spans)",
                capped.spans.len()
            )]);
        }
        t
    }
}
