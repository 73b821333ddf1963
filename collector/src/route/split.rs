//! Splitting an encoded OTLP/protobuf trace request by owner without decoding it.
//!
//! A routed replica used to decode a request, convert every span, encode the foreign ones
//! again and send them to their owner, which decoded and converted them once more: a
//! forwarded span went through the codec three times. Here the request is walked at the
//! wire level instead: `ResourceSpans` → `ScopeSpans` → `Span`, reading only each span's
//! `trace_id`. The bytes of each span are copied, untouched, into a request per owner,
//! under a copy of their resource's and scope's own fields (resource, scope, schema URL), so
//! each owner receives an ordinary `ExportTraceServiceRequest` holding exactly its spans, in
//! their original order. This replica decodes only its own part. A request whose spans all
//! have one owner is passed on as it came (no copy).
//!
//! Validation happens once, split between the two replicas, with the answers the client got
//! before routing:
//! - *whether the request decodes* is decided for the whole request, before anything is
//!   forwarded or kept, by the shape check that runs first ([`crate::otlp::shape::protobuf_checked`]):
//!   in the same pass that counts spans and estimates memory, it checks every field of every
//!   message as the protobuf decoder checks it (keys, wire types of known fields, varints,
//!   lengths, UTF-8 of strings), so a request the decoder would refuse is refused whole
//!   (400 / INVALID_ARGUMENT) and no owner ever sees a part of it. The split itself only
//!   walks the request's outer structure (resources, scopes, the top-level fields of each
//!   span) and never descends into attributes, events or links;
//! - *whether each span is valid* (ids, timestamps, limits, retention) is decided by the
//!   replica that decodes it, the owner; the owner's partial-success count comes back with
//!   its acknowledgement and is added to the client's answer.
//!
//! Spans without a 16-byte trace id stay here (their conversion refuses them).
//! [`split`] allocates one small record per span plus the per-owner requests.

use bytes::{BufMut, Bytes};
use datatracing_core::TraceId;

use super::ring::Ring;

/// Why a request does not decode (the protobuf decoder would refuse it as well).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf: {0}")]
pub(crate) struct SplitError(&'static str);

type R<T> = Result<T, SplitError>;

/// One owner's part of a request, encoded.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    /// The owner's address.
    pub peer: String,
    /// An `ExportTraceServiceRequest` holding the owner's spans.
    pub body: Bytes,
    /// How many spans it holds.
    pub spans: usize,
}

/// A request split by owner.
#[derive(Debug, Clone, Default)]
pub(crate) struct Split {
    /// This replica's part (an empty request when it owns nothing of it).
    pub local: Bytes,
    /// Spans in `local`.
    pub local_spans: usize,
    /// Every other owner's part; owners without spans are absent.
    pub remote: Vec<Part>,
}

/// The protobuf wire types OTLP uses (groups are refused, as by the shape check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

/// The varint at `*pos`, read by the shape check's reader (the decoder's rules).
#[inline(always)]
fn varint(buf: &[u8], pos: &mut usize) -> R<u64> {
    let mut rest = buf.get(*pos..).unwrap_or_default();
    let v = crate::otlp::shape::varint(&mut rest).map_err(|e| match e {
        crate::otlp::shape::ShapeError::Protobuf(m) => SplitError(m),
        crate::otlp::shape::ShapeError::Json(_) => SplitError("invalid varint"),
    })?;
    *pos = buf.len() - rest.len();
    Ok(v)
}

/// One field: its number, wire type, where it starts (its key) and where its value is.
struct Field {
    number: u32,
    wire: Wire,
    start: usize,
    value: (usize, usize),
}

/// Reads the field at `*pos` (which ends before `end`).
fn field(buf: &[u8], pos: &mut usize, end: usize) -> R<Field> {
    let start = *pos;
    let key = varint(&buf[..end], pos)?;
    let key = u32::try_from(key).map_err(|_| SplitError("invalid key"))?;
    if key >> 3 == 0 {
        return Err(SplitError("invalid tag 0"));
    }
    let (wire, len) = match key & 7 {
        0 => {
            let s = *pos;
            varint(&buf[..end], pos)?;
            (Wire::Varint, *pos - s)
        }
        1 => (Wire::Fixed64, 8),
        2 => {
            let n = varint(&buf[..end], pos)?;
            (
                Wire::Len,
                usize::try_from(n).map_err(|_| SplitError("length out of range"))?,
            )
        }
        5 => (Wire::Fixed32, 4),
        _ => return Err(SplitError("unsupported wire type")),
    };
    let value_start = if wire == Wire::Varint {
        *pos - len
    } else {
        *pos
    };
    let value_end = value_start
        .checked_add(len)
        .filter(|e| *e <= end)
        .ok_or(SplitError("field runs past the end of its message"))?;
    *pos = value_end;
    Ok(Field {
        number: key >> 3,
        wire,
        start,
        value: (value_start, value_end),
    })
}

/// The value of the last field 1 of the span at `buf[start..end]` (the decoder keeps the
/// last occurrence), when it is length-delimited: the span's trace id. Only the span's own
/// fields are read; nested messages are skipped by their length.
fn trace_id_of(buf: &[u8], start: usize, end: usize) -> R<Option<(usize, usize)>> {
    let mut pos = start;
    let mut id = None;
    while pos < end {
        let f = field(buf, &mut pos, end)?;
        if f.number == 1 && f.wire == Wire::Len {
            id = Some(f.value);
        }
    }
    Ok(id)
}

fn want(got: Wire, expected: Wire) -> R<()> {
    if got == expected {
        Ok(())
    } else {
        Err(SplitError("invalid wire type for a known field"))
    }
}

/// A scope's own fields and its spans, each span with its destination (0: here, `i + 1`:
/// ring member `i`).
#[derive(Default)]
struct ScopeSpans {
    header: Vec<(usize, usize)>,
    spans: Vec<(usize, usize, usize)>,
}

#[derive(Default)]
struct ResourceSpans {
    header: Vec<(usize, usize)>,
    scopes: Vec<ScopeSpans>,
}

fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn ranges_len(r: &[(usize, usize)]) -> usize {
    r.iter().map(|(s, e)| e - s).sum()
}

/// Splits `raw` (an encoded `ExportTraceServiceRequest` that
/// [`crate::otlp::shape::protobuf_checked`] accepted) by the owner of each span's trace id on
/// `ring`. Malformed structure found on the way is still an error, whole; the fields inside
/// spans are not checked here.
pub(crate) fn split(raw: &Bytes, ring: &Ring) -> Result<Split, SplitError> {
    let buf = &raw[..];
    let mut resources = Vec::new();
    let mut counts = vec![0usize; ring.len() + 1];
    let mut pos = 0;
    while pos < buf.len() {
        let f = field(buf, &mut pos, buf.len())?;
        if f.number != 1 {
            continue;
        }
        want(f.wire, Wire::Len)?;
        resources.push(resource_spans(buf, f.value, ring, &mut counts)?);
    }
    let owners = counts.iter().filter(|c| **c > 0).count();
    let mut out = Split::default();
    if owners <= 1 {
        // One owner (or no span): the request as it came.
        match counts.iter().position(|c| *c > 0) {
            None | Some(0) => {
                out.local = raw.clone();
                out.local_spans = counts[0];
            }
            Some(d) => out.remote.push(Part {
                peer: ring.member(d - 1).to_string(),
                body: raw.clone(),
                spans: counts[d],
            }),
        }
        return Ok(out);
    }
    for (d, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let body = Bytes::from(encode_part(buf, &resources, d));
        if d == 0 {
            out.local = body;
            out.local_spans = n;
        } else {
            out.remote.push(Part {
                peer: ring.member(d - 1).to_string(),
                body,
                spans: n,
            });
        }
    }
    Ok(out)
}

fn resource_spans(
    buf: &[u8],
    (start, end): (usize, usize),
    ring: &Ring,
    counts: &mut [usize],
) -> R<ResourceSpans> {
    let mut r = ResourceSpans::default();
    let mut pos = start;
    while pos < end {
        let f = field(buf, &mut pos, end)?;
        if f.number == 2 {
            want(f.wire, Wire::Len)?;
            r.scopes.push(scope_spans(buf, f.value, ring, counts)?);
            continue;
        }
        r.header.push((f.start, pos));
    }
    Ok(r)
}

fn scope_spans(
    buf: &[u8],
    (start, end): (usize, usize),
    ring: &Ring,
    counts: &mut [usize],
) -> R<ScopeSpans> {
    let mut sc = ScopeSpans::default();
    let mut pos = start;
    while pos < end {
        let f = field(buf, &mut pos, end)?;
        if f.number == 2 {
            want(f.wire, Wire::Len)?;
            let (s, e) = f.value;
            let dest = trace_id_of(buf, s, e)?
                .and_then(|(a, b)| <[u8; 16]>::try_from(&buf[a..b]).ok())
                .and_then(|id| ring.route_index(&TraceId::from_bytes(id)))
                .map_or(0, |i| i + 1);
            counts[dest] += 1;
            sc.spans.push((dest, f.start, pos));
            continue;
        }
        sc.header.push((f.start, pos));
    }
    Ok(sc)
}

/// Encodes destination `d`'s request: each resource and scope that has spans for it, with
/// their own fields copied, and the spans' bytes.
fn encode_part(buf: &[u8], resources: &[ResourceSpans], d: usize) -> Vec<u8> {
    let scope_len = |sc: &ScopeSpans| -> usize {
        let spans: usize = sc
            .spans
            .iter()
            .filter(|(x, _, _)| *x == d)
            .map(|(_, s, e)| e - s)
            .sum();
        if spans == 0 {
            0
        } else {
            ranges_len(&sc.header) + spans
        }
    };
    // Lengths first, so the part is allocated once at its exact size (growing a large
    // buffer faults in fresh pages at every step).
    let mut all_lens = Vec::new();
    let mut sizes = Vec::with_capacity(resources.len());
    for r in resources {
        let start = all_lens.len();
        all_lens.extend(r.scopes.iter().map(scope_len));
        let scopes: usize = all_lens[start..]
            .iter()
            .filter(|l| **l > 0)
            .map(|l| 1 + varint_len(*l) + l)
            .sum();
        sizes.push(if scopes == 0 {
            0
        } else {
            ranges_len(&r.header) + scopes
        });
    }
    let total: usize = sizes
        .iter()
        .filter(|s| **s > 0)
        .map(|s| 1 + varint_len(*s) + s)
        .sum();
    let mut out = Vec::with_capacity(total);
    let mut at = 0;
    for (r, size) in resources.iter().zip(sizes) {
        let lens = &all_lens[at..at + r.scopes.len()];
        at += r.scopes.len();
        if size == 0 {
            continue;
        }
        out.push(0x0a); // ExportTraceServiceRequest.resource_spans (1, length-delimited)
        put_varint(&mut out, size);
        for (s, e) in &r.header {
            out.put_slice(&buf[*s..*e]);
        }
        for (sc, l) in r.scopes.iter().zip(lens.iter()) {
            if *l == 0 {
                continue;
            }
            out.push(0x12); // ResourceSpans.scope_spans (2, length-delimited)
            put_varint(&mut out, *l);
            for (s, e) in &sc.header {
                out.put_slice(&buf[*s..*e]);
            }
            for (_, s, e) in sc.spans.iter().filter(|(x, _, _)| *x == d) {
                out.put_slice(&buf[*s..*e]);
            }
        }
    }
    debug_assert_eq!(out.len(), total, "the part's size was computed exactly");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans as Rs, ScopeSpans as Ss, Span};
    use proptest::prelude::*;
    use prost::Message;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    /// A span with a field of every wire type the trace messages use, so that mutations
    /// reach each kind of field.
    fn span(trace: u8, i: u8) -> Span {
        use opentelemetry_proto::tonic::trace::v1::{Status, span};
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![i + 1; 8],
            name: format!("s{trace}-{i}"),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_001_000,
            attributes: vec![
                kv("k", "v"),
                KeyValue {
                    key: "n".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(300)),
                    }),
                    ..Default::default()
                },
                KeyValue {
                    key: "d".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::DoubleValue(0.5)),
                    }),
                    ..Default::default()
                },
            ],
            events: vec![span::Event {
                time_unix_nano: 1_700_000_000_000_000_500,
                name: "e".into(),
                attributes: vec![kv("ek", "ev")],
                dropped_attributes_count: 1,
            }],
            links: vec![span::Link {
                trace_id: vec![trace ^ 0xff; 16],
                span_id: vec![9; 8],
                flags: 0x100,
                ..Default::default()
            }],
            status: Some(Status {
                message: "m".into(),
                code: 2,
            }),
            flags: 0x101,
            ..Default::default()
        }
    }

    /// A request of `resources` × `scopes` × spans of the given traces.
    fn request(resources: usize, scopes: usize, traces: &[u8]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: (0..resources)
                .map(|r| Rs {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", &format!("svc{r}"))],
                        ..Default::default()
                    }),
                    scope_spans: (0..scopes)
                        .map(|s| Ss {
                            scope: Some(InstrumentationScope {
                                name: format!("scope{s}"),
                                ..Default::default()
                            }),
                            spans: traces
                                .iter()
                                .enumerate()
                                .map(|(i, t)| span(*t, i as u8))
                                .collect(),
                            schema_url: "https://example.invalid/schema".into(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
        }
    }

    fn ring() -> Ring {
        Ring::new(vec!["a:1".into(), "b:1".into(), "c:1".into()], "a:1")
    }

    /// The spans of a request with their resource and scope, in order.
    fn flatten(
        r: &ExportTraceServiceRequest,
    ) -> Vec<(Option<Resource>, Option<InstrumentationScope>, String, Span)> {
        let mut out = Vec::new();
        for rs in &r.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push((
                        rs.resource.clone(),
                        ss.scope.clone(),
                        ss.schema_url.clone(),
                        s.clone(),
                    ));
                }
            }
        }
        out
    }

    fn owner(ring: &Ring, s: &Span) -> Option<String> {
        let id = TraceId::from_bytes(<[u8; 16]>::try_from(&s.trace_id[..]).unwrap());
        ring.route(&id).map(str::to_string)
    }

    #[test]
    fn every_owner_gets_exactly_its_spans_under_their_resource_and_scope() {
        let ring = ring();
        let req = request(2, 2, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2]);
        let raw = Bytes::from(req.encode_to_vec());
        let parts = split(&raw, &ring).unwrap();
        assert!(!parts.remote.is_empty(), "several owners among ten traces");
        let all = flatten(&req);
        let local = ExportTraceServiceRequest::decode(parts.local.clone()).unwrap();
        let want_local: Vec<_> = all
            .iter()
            .filter(|x| owner(&ring, &x.3).is_none())
            .cloned()
            .collect();
        assert_eq!(flatten(&local), want_local);
        assert_eq!(parts.local_spans, want_local.len());
        for p in &parts.remote {
            let got = ExportTraceServiceRequest::decode(p.body.clone()).unwrap();
            let want: Vec<_> = all
                .iter()
                .filter(|x| owner(&ring, &x.3).as_deref() == Some(p.peer.as_str()))
                .cloned()
                .collect();
            assert_eq!(flatten(&got), want, "part for {}", p.peer);
            assert_eq!(p.spans, want.len());
        }
        let n: usize = parts.local_spans + parts.remote.iter().map(|p| p.spans).sum::<usize>();
        assert_eq!(n, all.len());
    }

    #[test]
    fn a_request_with_one_owner_passes_untouched() {
        let ring = ring();
        let t = (0..=255u8)
            .find(|t| owner(&ring, &span(*t, 0)).is_some())
            .unwrap();
        let raw = Bytes::from(request(2, 1, &[t, t, t]).encode_to_vec());
        let parts = split(&raw, &ring).unwrap();
        assert_eq!(parts.local_spans, 0);
        assert_eq!(parts.remote.len(), 1);
        assert_eq!(parts.remote[0].body, raw);
        assert_eq!(parts.remote[0].spans, 6);
        let mine = (0..=255u8)
            .find(|t| owner(&ring, &span(*t, 0)).is_none())
            .unwrap();
        let raw = Bytes::from(request(1, 1, &[mine]).encode_to_vec());
        let parts = split(&raw, &ring).unwrap();
        assert_eq!((parts.local.clone(), parts.local_spans), (raw, 1));
        assert!(parts.remote.is_empty());
    }

    #[test]
    fn spans_without_a_usable_trace_id_stay_here() {
        let ring = ring();
        let mut req = request(1, 1, &[1, 2, 3, 4, 5, 6]);
        req.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![7; 3];
        req.resource_spans[0].scope_spans[0].spans[1].trace_id = Vec::new();
        let parts = split(&Bytes::from(req.encode_to_vec()), &ring).unwrap();
        let local = ExportTraceServiceRequest::decode(parts.local).unwrap();
        let ids: Vec<_> = flatten(&local).into_iter().map(|x| x.3.trace_id).collect();
        assert!(ids.contains(&vec![7; 3]) && ids.contains(&Vec::new()));
    }

    #[test]
    fn what_the_decoder_refuses_is_refused_whole() {
        let good = request(1, 1, &[1, 2, 3]).encode_to_vec();
        // A span name that is not UTF-8, deep inside the request.
        let mut req = request(1, 1, &[1, 2, 3]);
        req.resource_spans[0].scope_spans[0].spans[2].name = "\u{e9}\u{e9}".into();
        let mut bad = req.encode_to_vec();
        let at = bad
            .windows(4)
            .position(|w| w == "\u{e9}\u{e9}".as_bytes())
            .unwrap();
        bad[at] = 0xff;
        let cases: Vec<Vec<u8>> = vec![
            bad,
            // Truncated.
            good[..good.len() - 3].to_vec(),
            // A known field (a span's start time, fixed64) sent as a varint.
            {
                let mut r = request(1, 1, &[1]);
                r.resource_spans[0].scope_spans[0].spans[0].start_time_unix_nano = 5;
                let mut b = r.encode_to_vec();
                let at = b.iter().position(|x| *x == 0x39).unwrap(); // field 7, fixed64
                b[at] = 0x38; // field 7, varint
                b.truncate(at + 2);
                b
            },
            // Field number 0.
            vec![0x02, 0x00],
        ];
        for c in cases {
            assert!(
                ExportTraceServiceRequest::decode(&c[..]).is_err(),
                "the decoder refuses this case too"
            );
            // What a routed replica runs before splitting; the split never sees it.
            assert!(crate::otlp::shape::protobuf_checked(&c).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// On mutated requests: the checked shape accepts exactly what the decoder accepts,
        /// reads the same shape as the unchecked one, and the split of what it accepts holds
        /// every span once.
        #[test]
        fn accepts_what_the_decoder_accepts(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
            let ring = ring();
            let mut b = request(2, 2, &[1, 2, 3, 4]).encode_to_vec();
            for (at, v) in flips {
                let i = at % b.len();
                b[i] = v;
            }
            let decoded = ExportTraceServiceRequest::decode(&b[..]);
            let shaped = crate::otlp::shape::protobuf(&b);
            // The shape check refuses groups, which the decoder skips; compare where it passes.
            if let Ok(shaped) = shaped {
                let checked = crate::otlp::shape::protobuf_checked(&b);
                prop_assert_eq!(decoded.is_ok(), checked.is_ok(), "decoder {:?} checked shape {:?}", decoded.as_ref().err(), checked.as_ref().err());
                if let (Ok(d), Ok(checked)) = (decoded, checked) {
                    // The same pass, the same shape.
                    prop_assert_eq!(checked, shaped);
                    let s = split(&Bytes::from(b.clone()), &ring);
                    prop_assert!(s.is_ok(), "a checked request splits: {:?}", s.err());
                    let s = s.unwrap();
                    let n = s.local_spans + s.remote.iter().map(|p| p.spans).sum::<usize>();
                    prop_assert_eq!(n, flatten(&d).len());
                    // Every part decodes to the spans of its owner.
                    for p in &s.remote {
                        let part = ExportTraceServiceRequest::decode(p.body.clone());
                        prop_assert!(part.is_ok());
                        prop_assert_eq!(flatten(&part.unwrap()).len(), p.spans);
                    }
                }
            }
        }
    }
}
