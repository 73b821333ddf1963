//! Jaeger's trace JSON, written from the spans straight into one buffer.
//!
//! A search answer is 20 traces of 10 spans (about 222 KiB) and was the larger part of a
//! Jaeger search's cost: built as typed serde values it still took an owned hex string per
//! id, a tag list and a process per span, and `serde_json` looked every byte of every string
//! up in its escape table. Here each trace is written once into the answer's buffer: ids as
//! hex straight from their bytes, the common text (nothing to escape) checked eight bytes at
//! a time, processes compared span against span. The bytes are those the serde form wrote:
//! object keys in sorted order (as a `serde_json` map and the former field order gave them),
//! the same escapes, floats through `serde_json` itself.

use std::borrow::Cow;

use datatracing_core::{AttributeValue, LinkType, Span, SpanKind, StatusCode, Timestamp, TraceId};
use datatracing_store::CappedTrace;

use super::{LINK_TYPES_TAG, RESOURCE_PREFIX, STATUS_TAG, STEP_KIND_TAG, jaeger_kind};

/// An id asked for by `traceID` that no stored trace has.
pub(crate) struct NotFound {
    pub trace_id: TraceId,
}

/// A trace to answer: its spans in our order (start time, then span id) and, when a cap cut
/// it, the warning that says so.
pub(crate) struct Trace<'a> {
    trace_id: TraceId,
    spans: &'a [Span],
    truncated: bool,
}

impl<'a> Trace<'a> {
    /// A trace read with a span cap: a cut one says so in its warnings.
    pub fn capped(trace_id: TraceId, capped: &'a CappedTrace) -> Self {
        Trace {
            trace_id,
            spans: &capped.spans,
            truncated: capped.truncated,
        }
    }
}

/// Jaeger's success envelope `{data, errors, limit, offset, total}` around traces (`total`
/// is 0 for traces, as Jaeger answers), with the unknown ids in `errors`.
pub(crate) fn traces_answer(traces: &[Trace<'_>], missing: &[NotFound]) -> Vec<u8> {
    // Sized for the usual span (about 1.1 KiB of JSON in the load's traces) so that an
    // answer is rarely copied while it grows.
    let spans: usize = traces.iter().map(|t| t.spans.len()).sum();
    let mut out = Vec::with_capacity(256 + spans * 1280);
    out.extend_from_slice(b"{\"data\":[");
    let mut scratch = Scratch::default();
    for (i, t) in traces.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_trace(&mut out, t, &mut scratch);
    }
    out.extend_from_slice(b"],\"errors\":");
    if missing.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        out.push(b'[');
        for (i, m) in missing.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"msg\":\"trace not found\",\"traceID\":");
            trace_id(&mut out, m.trace_id);
            out.push(b'}');
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"limit\":0,\"offset\":0,\"total\":0}");
    out
}

/// Lists reused from trace to trace of one answer.
#[derive(Default)]
struct Scratch<'a> {
    /// The process (index into `firsts`) of each span of the trace.
    process_of: Vec<usize>,
    /// For each process, the first span that has it.
    firsts: Vec<usize>,
    tags: Vec<Tag<'a>>,
}

fn write_trace<'a>(out: &mut Vec<u8>, t: &Trace<'a>, scratch: &mut Scratch<'a>) {
    let spans = t.spans;
    // Processes are `p1`, `p2`, ... in order of first use; a span shares the process of an
    // earlier span with the same service and resource tags.
    scratch.process_of.clear();
    scratch.firsts.clear();
    for (i, s) in spans.iter().enumerate() {
        let p = match scratch
            .firsts
            .iter()
            .position(|&f| same_process(&spans[f], s))
        {
            Some(p) => p,
            None => {
                scratch.firsts.push(i);
                scratch.firsts.len() - 1
            }
        };
        scratch.process_of.push(p);
    }
    out.extend_from_slice(b"{\"processes\":{");
    // Keys of a JSON object in text order, as the map they were before: `p10` before `p2`.
    let mut order: Vec<usize> = (0..scratch.firsts.len()).collect();
    if order.len() > 9 {
        order.sort_by_cached_key(|p| format!("p{}", p + 1));
    }
    for (n, &p) in order.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"p");
        int(out, p as i64 + 1);
        out.extend_from_slice(b"\":{\"serviceName\":");
        let s = &spans[scratch.firsts[p]];
        string(out, &s.service);
        out.extend_from_slice(b",\"tags\":[");
        for (i, (k, v)) in resource_attributes(s).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_tag(out, &tag(k, v));
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"},\"spans\":[");
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_span(out, s, scratch.process_of[i], &mut scratch.tags);
    }
    out.extend_from_slice(b"],\"traceID\":");
    trace_id(out, t.trace_id);
    out.extend_from_slice(b",\"warnings\":");
    if t.truncated {
        out.push(b'[');
        string(
            out,
            &format!(
                "trace truncated to its first {} spans (query.max_trace_spans)",
                spans.len()
            ),
        );
        out.push(b']');
    } else {
        out.extend_from_slice(b"null");
    }
    out.push(b'}');
}

fn write_span<'a>(out: &mut Vec<u8>, s: &'a Span, process: usize, tags: &mut Vec<Tag<'a>>) {
    out.extend_from_slice(b"{\"duration\":");
    int(out, s.duration_nanos() / 1_000);
    out.extend_from_slice(b",\"logs\":[");
    for (i, e) in s.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"fields\":[");
        write_tag(out, &str_tag("event", e.name.as_str()));
        for (k, v) in &e.attributes {
            out.push(b',');
            write_tag(out, &tag(k, v));
        }
        out.extend_from_slice(b"],\"timestamp\":");
        int(out, micros(e.time));
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"operationName\":");
    string(out, &s.operation);
    out.extend_from_slice(b",\"processID\":\"p");
    int(out, process as i64 + 1);
    out.extend_from_slice(b"\",\"references\":[");
    let mut first = true;
    if let Some(p) = s.parent_id {
        reference(out, "CHILD_OF", p.as_bytes(), s.trace_id);
        first = false;
    }
    for l in &s.links {
        if !first {
            out.push(b',');
        }
        first = false;
        let ty = match l.link_type {
            LinkType::ChildOf => "CHILD_OF",
            LinkType::FollowsFrom | LinkType::DataDependency => "FOLLOWS_FROM",
        };
        reference(out, ty, l.span_id.as_bytes(), l.trace_id);
    }
    out.extend_from_slice(b"],\"spanID\":");
    hex(out, s.span_id.as_bytes());
    out.extend_from_slice(b",\"startTime\":");
    int(out, micros(s.start_time));
    out.extend_from_slice(b",\"tags\":[");
    span_tags(s, tags);
    for (i, t) in tags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_tag(out, t);
    }
    tags.clear();
    out.extend_from_slice(b"],\"traceID\":");
    trace_id(out, s.trace_id);
    out.extend_from_slice(b",\"warnings\":null}");
}

fn reference(out: &mut Vec<u8>, ref_type: &str, span: &[u8], trace: TraceId) {
    out.extend_from_slice(b"{\"refType\":\"");
    out.extend_from_slice(ref_type.as_bytes());
    out.extend_from_slice(b"\",\"spanID\":");
    hex(out, span);
    out.extend_from_slice(b",\"traceID\":");
    trace_id(out, trace);
    out.push(b'}');
}

/// A tag `{key, type, value}`.
#[derive(PartialEq)]
struct Tag<'a> {
    key: &'a str,
    ty: &'static str,
    value: TagValue<'a>,
}

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

fn write_tag(out: &mut Vec<u8>, t: &Tag<'_>) {
    out.extend_from_slice(b"{\"key\":");
    string(out, t.key);
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(t.ty.as_bytes());
    out.extend_from_slice(b"\",\"value\":");
    match &t.value {
        TagValue::Str(s) => string(out, s),
        TagValue::Int(i) => int(out, *i),
        TagValue::Float(f) => {
            // `serde_json` writes floats as the serde form did (`null` when not finite);
            // writing into a `Vec` cannot fail.
            if serde_json::to_writer(&mut *out, f).is_err() {
                out.extend_from_slice(b"null");
            }
        }
        TagValue::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
    }
    out.push(b'}');
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
fn json_text<T: serde::Serialize + ?Sized>(v: &T) -> Cow<'static, str> {
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

/// A span's resource attributes, prefix removed: its process's tags.
fn resource_attributes(s: &Span) -> impl Iterator<Item = (&str, &AttributeValue)> {
    s.attributes
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(RESOURCE_PREFIX).map(|k| (k, v)))
}

/// Whether two spans have one process: the same service and the same tags (compared as
/// their JSON compares).
fn same_process(a: &Span, b: &Span) -> bool {
    if a.service != b.service {
        return false;
    }
    let (mut x, mut y) = (resource_attributes(a), resource_attributes(b));
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some((ka, va)), Some((kb, vb))) => {
                if ka != kb || (va != vb && tag(ka, va) != tag(kb, vb)) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

fn span_tags<'a>(s: &'a Span, tags: &mut Vec<Tag<'a>>) {
    tags.extend(
        s.attributes
            .iter()
            .filter(|(k, _)| !k.starts_with(RESOURCE_PREFIX))
            .map(|(k, v)| tag(k, v)),
    );
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
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of an id, quoted.
fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
    out.push(b'"');
}

/// Jaeger's text for a trace id, quoted: 16 hex digits when the high half is zero (a 64-bit
/// id), else 32 (as `jaeger_id_text`).
fn trace_id(out: &mut Vec<u8>, id: TraceId) {
    let bytes = id.as_bytes();
    match bytes.split_at(8) {
        (high, low) if high.iter().all(|b| *b == 0) => hex(out, low),
        _ => hex(out, bytes),
    }
}

fn int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Whether any of eight bytes is a control character, `"` or `\`: the bytes JSON text must
/// escape. Exact as a yes/no (the borrow of the subtraction only starts at such a byte).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    (below(w, 0x20)
        | below(w ^ (ONES * u64::from(b'"')), 1)
        | below(w ^ (ONES * u64::from(b'\\')), 1))
        != 0
}

/// `s` as a JSON string, with the escapes `serde_json` writes: `\"`, `\\`, the short forms
/// of backspace, tab, newline, form feed and carriage return, `\u00xx` for other control
/// characters, and everything else as is.
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut done = 0;
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        if needs_escape(u64::from_le_bytes(w)) {
            for i in at..at + 8 {
                done = escape_at(out, bytes, done, i);
            }
        }
        at += 8;
    }
    for i in at..bytes.len() {
        done = escape_at(out, bytes, done, i);
    }
    out.extend_from_slice(&bytes[done..]);
    out.push(b'"');
}

/// Escapes `bytes[i]` if it must be, after the plain run `bytes[done..i]`; the new start of
/// the plain run.
fn escape_at(out: &mut Vec<u8>, bytes: &[u8], done: usize, i: usize) -> usize {
    let b = bytes[i];
    let short: &[u8] = match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        0x08 => b"\\b",
        0x09 => b"\\t",
        0x0a => b"\\n",
        0x0c => b"\\f",
        0x0d => b"\\r",
        0x00..=0x1f => b"",
        _ => return done,
    };
    out.extend_from_slice(&bytes[done..i]);
    if short.is_empty() {
        out.extend_from_slice(b"\\u00");
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    } else {
        out.extend_from_slice(short);
    }
    i + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The escaper writes what `serde_json` writes, for every byte that needs care, at
    /// every position of the eight-byte chunks and in the tail after them.
    #[test]
    fn strings_escape_like_serde_json() {
        let mut texts: Vec<String> = vec![
            String::new(),
            "plain ascii text, longer than one chunk".into(),
            "ünïcödé ✓ and 𝄞 outside the basic plane".into(),
            "\u{7f} delete is not escaped".into(),
        ];
        for c in (0u8..0x20).chain([b'"', b'\\']) {
            for at in 0..19 {
                let mut t = "abcdefghijklmnopqr".to_string();
                t.insert(at, char::from(c));
                texts.push(t);
            }
        }
        texts.push("\"\\\n\r\t\u{8}\u{c}\u{1}\u{1f}".repeat(3));
        for t in &texts {
            let mut out = Vec::new();
            string(&mut out, t);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(t).unwrap(),
                "{t:?}"
            );
        }
    }

    proptest::proptest! {
        /// Any text and any integer come out as `serde_json` writes them.
        #[test]
        fn any_string_and_integer_as_serde_json(t in "\\PC*|[\\x00-\\x7f]{0,40}", v: i64) {
            let mut out = Vec::new();
            string(&mut out, &t);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&t).unwrap());
            let mut out = Vec::new();
            int(&mut out, v);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }

    #[test]
    fn integers_as_serde_json() {
        for v in [0, 1, -1, 9, 10, 99, 100, 1_234_567, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            int(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }

    #[test]
    fn trace_ids_as_jaeger_text() {
        let mut out = Vec::new();
        trace_id(
            &mut out,
            TraceId::from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0xbc]).unwrap(),
        );
        assert_eq!(out, b"\"0000000000000abc\"");
        out.clear();
        let long =
            TraceId::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x0a, 0xbc]).unwrap();
        trace_id(&mut out, long);
        assert_eq!(
            out,
            format!("\"{}\"", super::super::jaeger_id_text(long)).as_bytes()
        );
    }
}
