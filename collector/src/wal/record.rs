//! The payload of a durable-queue record: a batch of spans in a compact binary form, so a
//! replay decodes fields instead of parsing JSON (docs/adr and `benches/wal.rs` measure it).
//!
//! The record around the payload is `[len u32][crc32 u32][payload]` (see the parent
//! module); the checksum covers the payload. The payload's first byte is its format:
//!
//! - `0x01` (written since this format): `[count varint]` then per span
//!   `trace_id[16] span_id[8] has_parent u8 [parent_id[8]] service:str operation:str kind:u8
//!   start:i64 end:i64 status:u8 has_message u8 [message:str] attributes events links`, with
//!   `str = [len varint][UTF-8]`, integers little-endian, enums by their storage code,
//!   `attributes = [count varint] (key:str value)*`, a value being a tag byte (0 string,
//!   1 int, 2 float, 3 bool, 4-7 arrays of those with a varint length) and its data,
//!   `events = [count varint] (name:str time:i64 attributes)*` and
//!   `links = [count varint] (trace_id[16] span_id[8] type:u8 attributes)*`.
//! - `[` : a JSON array of native spans, the format before `0x01`. Logs written by an older
//!   collector are still read, so an upgrade replays them; new records are always `0x01`.
//!
//! A new format takes the next byte value; readers refuse bytes they do not know, loudly.

use datatracing_core::{
    AttributeValue, Attributes, Event, Link, LinkType, Span, SpanId, SpanKind, Status, StatusCode,
    Timestamp, TraceId,
};

/// The format byte of the current payload.
const BINARY_V1: u8 = 0x01;
/// The first byte of a JSON payload (the format before `BINARY_V1`).
const JSON: u8 = b'[';

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The format byte is not one this collector knows (a newer collector wrote it).
    #[error("unknown durable queue record format {0:#04x}")]
    UnknownFormat(u8),
    /// The payload ends before its content does.
    #[error("durable queue record truncated")]
    Truncated,
    /// A field holds a value no encoder writes.
    #[error("durable queue record holds an invalid {0}")]
    Invalid(&'static str),
    /// A JSON payload (the format before the binary one) does not parse.
    #[error("durable queue JSON record: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes spans as a current-format payload.
pub fn encode(spans: &[Span]) -> Vec<u8> {
    // About 200 bytes per small span; growing once or twice is cheaper than measuring.
    let mut out = Vec::with_capacity(16 + spans.len() * 256);
    out.push(BINARY_V1);
    varint(&mut out, spans.len() as u64);
    for s in spans {
        out.extend_from_slice(s.trace_id.as_bytes());
        out.extend_from_slice(s.span_id.as_bytes());
        match &s.parent_id {
            Some(p) => {
                out.push(1);
                out.extend_from_slice(p.as_bytes());
            }
            None => out.push(0),
        }
        string(&mut out, &s.service);
        string(&mut out, &s.operation);
        out.push(s.kind.code());
        out.extend_from_slice(&s.start_time.unix_nanos().to_le_bytes());
        out.extend_from_slice(&s.end_time.unix_nanos().to_le_bytes());
        out.push(s.status.code.code());
        match &s.status.message {
            Some(m) => {
                out.push(1);
                string(&mut out, m);
            }
            None => out.push(0),
        }
        attributes(&mut out, &s.attributes);
        varint(&mut out, s.events.len() as u64);
        for e in &s.events {
            string(&mut out, &e.name);
            out.extend_from_slice(&e.time.unix_nanos().to_le_bytes());
            attributes(&mut out, &e.attributes);
        }
        varint(&mut out, s.links.len() as u64);
        for l in &s.links {
            out.extend_from_slice(l.trace_id.as_bytes());
            out.extend_from_slice(l.span_id.as_bytes());
            out.push(l.link_type.code());
            attributes(&mut out, &l.attributes);
        }
    }
    out
}

/// Decodes a payload of any known format, appending its spans to `out`.
pub fn decode(payload: &[u8], out: &mut Vec<Span>) -> Result<(), DecodeError> {
    match payload.first() {
        Some(&BINARY_V1) => Reader { buf: &payload[1..] }.spans(out),
        Some(&JSON) => {
            let spans: Vec<Span> = serde_json::from_slice(payload)?;
            out.extend(spans);
            Ok(())
        }
        Some(&other) => Err(DecodeError::UnknownFormat(other)),
        None => Err(DecodeError::Truncated),
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn attributes(out: &mut Vec<u8>, attrs: &Attributes) {
    varint(out, attrs.len() as u64);
    for (k, v) in attrs {
        string(out, k);
        match v {
            AttributeValue::String(s) => {
                out.push(0);
                string(out, s);
            }
            AttributeValue::Int(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            AttributeValue::Float(f) => {
                out.push(2);
                out.extend_from_slice(&f.to_le_bytes());
            }
            AttributeValue::Bool(b) => {
                out.push(3);
                out.push(u8::from(*b));
            }
            AttributeValue::StringArray(a) => {
                out.push(4);
                varint(out, a.len() as u64);
                for s in a {
                    string(out, s);
                }
            }
            AttributeValue::IntArray(a) => {
                out.push(5);
                varint(out, a.len() as u64);
                for i in a {
                    out.extend_from_slice(&i.to_le_bytes());
                }
            }
            AttributeValue::FloatArray(a) => {
                out.push(6);
                varint(out, a.len() as u64);
                for f in a {
                    out.extend_from_slice(&f.to_le_bytes());
                }
            }
            AttributeValue::BoolArray(a) => {
                out.push(7);
                varint(out, a.len() as u64);
                out.extend(a.iter().map(|b| u8::from(*b)));
            }
        }
    }
}

/// Reads a binary payload. Every length is checked against what is left, so a damaged
/// record (the checksum makes that unlikely) is an error, never a panic or a huge
/// allocation.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid("length"))
    }

    /// A count of items each at least `min_bytes` long, checked against what is left so a
    /// bad count cannot ask for a huge allocation.
    fn count(&mut self, min_bytes: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.varint()?).map_err(|_| DecodeError::Invalid("count"))?;
        if n.saturating_mul(min_bytes.max(1)) > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.count(1)?;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Invalid("string"))
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("flag")),
        }
    }

    fn attributes(&mut self) -> Result<Attributes, DecodeError> {
        let n = self.count(2)?;
        let mut attrs = Attributes::new();
        for _ in 0..n {
            let key = self.string()?;
            let value = match self.u8()? {
                0 => AttributeValue::String(self.string()?),
                1 => AttributeValue::Int(self.i64()?),
                2 => AttributeValue::Float(self.f64()?),
                3 => AttributeValue::Bool(self.flag()?),
                4 => {
                    let n = self.count(1)?;
                    AttributeValue::StringArray(
                        (0..n).map(|_| self.string()).collect::<Result<_, _>>()?,
                    )
                }
                5 => {
                    let n = self.count(8)?;
                    AttributeValue::IntArray((0..n).map(|_| self.i64()).collect::<Result<_, _>>()?)
                }
                6 => {
                    let n = self.count(8)?;
                    AttributeValue::FloatArray(
                        (0..n).map(|_| self.f64()).collect::<Result<_, _>>()?,
                    )
                }
                7 => {
                    let n = self.count(1)?;
                    AttributeValue::BoolArray(
                        (0..n).map(|_| self.flag()).collect::<Result<_, _>>()?,
                    )
                }
                _ => return Err(DecodeError::Invalid("attribute type")),
            };
            attrs.insert(key, value);
        }
        Ok(attrs)
    }

    fn spans(mut self, out: &mut Vec<Span>) -> Result<(), DecodeError> {
        // The smallest span: ids, flags, two empty strings, enums, times, empty lists.
        let n = self.count(16 + 8 + 1 + 2 + 1 + 16 + 2 + 3)?;
        out.reserve(n);
        for _ in 0..n {
            let trace_id = TraceId::from_bytes(self.array()?);
            let span_id = SpanId::from_bytes(self.array()?);
            let parent_id = if self.flag()? {
                Some(SpanId::from_bytes(self.array()?))
            } else {
                None
            };
            let service = self.string()?;
            let operation = self.string()?;
            let kind = SpanKind::from_code(self.u8()?).ok_or(DecodeError::Invalid("kind"))?;
            let start_time = Timestamp::from_unix_nanos(self.i64()?);
            let end_time = Timestamp::from_unix_nanos(self.i64()?);
            let code = StatusCode::from_code(self.u8()?).ok_or(DecodeError::Invalid("status"))?;
            let message = if self.flag()? {
                Some(self.string()?)
            } else {
                None
            };
            let attributes = self.attributes()?;
            let n_events = self.count(1 + 8 + 1)?;
            let mut events = Vec::with_capacity(n_events);
            for _ in 0..n_events {
                events.push(Event {
                    name: self.string()?,
                    time: Timestamp::from_unix_nanos(self.i64()?),
                    attributes: self.attributes()?,
                });
            }
            let n_links = self.count(16 + 8 + 1 + 1)?;
            let mut links = Vec::with_capacity(n_links);
            for _ in 0..n_links {
                links.push(Link {
                    trace_id: TraceId::from_bytes(self.array()?),
                    span_id: SpanId::from_bytes(self.array()?),
                    link_type: LinkType::from_code(self.u8()?)
                        .ok_or(DecodeError::Invalid("link type"))?,
                    attributes: self.attributes()?,
                });
            }
            out.push(Span {
                trace_id,
                span_id,
                parent_id,
                service,
                operation,
                kind,
                start_time,
                end_time,
                status: Status { code, message },
                attributes,
                events,
                links,
            });
        }
        if !self.buf.is_empty() {
            return Err(DecodeError::Invalid("record length"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rich_span() -> Span {
        let mut attrs = Attributes::new();
        attrs.insert("s".into(), AttributeValue::String("ünïcode".into()));
        attrs.insert("i".into(), AttributeValue::Int(-7));
        attrs.insert("f".into(), AttributeValue::Float(1.5));
        attrs.insert("b".into(), AttributeValue::Bool(true));
        attrs.insert(
            "sa".into(),
            AttributeValue::StringArray(vec!["a".into(), String::new()]),
        );
        attrs.insert("ia".into(), AttributeValue::IntArray(vec![1, i64::MIN]));
        attrs.insert("fa".into(), AttributeValue::FloatArray(vec![0.25, -3.0]));
        attrs.insert("ba".into(), AttributeValue::BoolArray(vec![false, true]));
        Span {
            trace_id: TraceId::from_bytes([7; 16]),
            span_id: SpanId::from_bytes([8; 8]),
            parent_id: Some(SpanId::from_bytes([9; 8])),
            service: "svc".into(),
            operation: "op".into(),
            kind: SpanKind::Consumer,
            start_time: Timestamp::from_unix_nanos(1_700_000_000_000_000_001),
            end_time: Timestamp::from_unix_nanos(1_700_000_000_000_000_999),
            status: Status {
                code: StatusCode::Error,
                message: Some("boom".into()),
            },
            attributes: attrs.clone(),
            events: vec![Event {
                name: "retry".into(),
                time: Timestamp::from_unix_nanos(5),
                attributes: attrs.clone(),
            }],
            links: vec![Link {
                trace_id: TraceId::from_bytes([1; 16]),
                span_id: SpanId::from_bytes([2; 8]),
                link_type: LinkType::DataDependency,
                attributes: attrs,
            }],
        }
    }

    #[test]
    fn spans_round_trip_and_old_json_records_still_read() {
        let mut bare = rich_span();
        bare.parent_id = None;
        bare.status = Status::default();
        bare.attributes.clear();
        bare.events.clear();
        bare.links.clear();
        let spans = vec![rich_span(), bare];
        let payload = encode(&spans);
        assert_eq!(payload[0], BINARY_V1);
        let mut back = Vec::new();
        decode(&payload, &mut back).unwrap();
        assert_eq!(back, spans);
        let json = serde_json::to_vec(&spans).unwrap();
        assert!(payload.len() < json.len());
        let mut from_json = Vec::new();
        decode(&json, &mut from_json).unwrap();
        assert_eq!(from_json, spans);
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        let payload = encode(&[rich_span()]);
        for cut in 0..payload.len() {
            assert!(
                decode(&payload[..cut], &mut Vec::new()).is_err(),
                "cut at {cut}"
            );
        }
        let mut extra = payload.clone();
        extra.push(0);
        assert!(decode(&extra, &mut Vec::new()).is_err());
        assert!(matches!(
            decode(&[0x7f, 0], &mut Vec::new()),
            Err(DecodeError::UnknownFormat(0x7f))
        ));
        // A count claiming more spans than the bytes could hold is refused before
        // allocating for them.
        let mut huge = vec![BINARY_V1];
        varint(&mut huge, u64::MAX >> 1);
        assert!(matches!(
            decode(&huge, &mut Vec::new()),
            Err(DecodeError::Truncated)
        ));
        // Flipping any byte either fails or decodes to something; it never panics.
        for i in 1..payload.len() {
            let mut bad = payload.clone();
            bad[i] ^= 0xff;
            let _ = decode(&bad, &mut Vec::new());
        }
    }
}
