//! Decoding OTLP requests within bounds, off the async workers.
//!
//! Every OTLP request (HTTP and gRPC alike) is inflated, measured, decoded, converted and
//! validated here, in this order:
//!
//! 1. it waits for one of `collector.decode_workers` slots, then runs on a blocking thread,
//!    so a large request never stalls the async workers that answer probes and other
//!    listeners;
//! 2. gzip is inflated up to `collector.max_decompressed_bytes`;
//! 3. its [`shape`](super::shape) is read without decoding: more spans than
//!    `max_spans_per_request`, or an estimated memory above `max_request_memory_bytes`, is
//!    refused before anything is built;
//! 4. the estimate is taken from the process-wide decode budget
//!    (`max_decode_memory_bytes`, shared by HTTP and gRPC); when it does not fit the request
//!    is refused at once as retryable, never queued with its memory;
//! 5. with routing on, a protobuf request from a client is split by owner at the wire level
//!    ([`crate::route::split`]), which also checks that all of it decodes; only this
//!    replica's part is decoded and converted here, the other parts travel as bytes;
//! 6. only then is it decoded and converted; the budget is returned when the spans leave for
//!    the queue (which has its own bounds).

use std::sync::Arc;

use axum::body::Bytes;
use datatracing_core::Span;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{convert, shape};
use crate::ingest::{Ingest, Protocol};

/// How a request body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    Protobuf,
    Json,
}

/// A request as received: its bytes, how they are encoded, and how they are compressed.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub wire: Wire,
    pub body: Bytes,
    pub compression: Compression,
}

/// What was done to a body on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Sent as is: at most `max_body_bytes`.
    None,
    /// Sent gzip, inflated here up to `max_decompressed_bytes`.
    Gzip,
    /// Sent gzip and inflated by the transport (gRPC) within `max_decompressed_bytes`.
    Inflated,
}

/// Why a request was not decoded.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Not a valid request (400 / INVALID_ARGUMENT).
    Invalid(String),
    /// More spans than allowed (413 / RESOURCE_EXHAUSTED, not retryable).
    TooManySpans { limit: usize, got: usize },
    /// Too large, inflated or decoded (413 / RESOURCE_EXHAUSTED, not retryable).
    TooLarge(String),
    /// The decode budget is taken by other requests (429 / RESOURCE_EXHAUSTED, retryable).
    Busy,
}

/// A decoded request's spans, truncated and validated.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    pub valid: Vec<Span>,
    pub rejected: usize,
    pub first_error: Option<String>,
    /// The parts other replicas own, still encoded (routing on, split requested).
    pub forward: Vec<crate::route::split::Part>,
}

/// Bounds and budgets of OTLP decoding; cheap to clone, one per collector.
#[derive(Clone, Debug)]
pub(crate) struct DecodePool {
    workers: Arc<Semaphore>,
    /// The in-flight decode budget, in KiB permits.
    budget: Arc<Semaphore>,
    max_spans: usize,
    max_body: usize,
    max_decompressed: usize,
    max_request_memory: usize,
    /// `datatracing_collector_decode_memory_bytes`: budget taken now.
    in_use: Gauge,
}

/// KiB permits for `bytes`, rounded up.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl DecodePool {
    pub(crate) fn new(config: &datatracing_config::CollectorConfig, in_use: Gauge) -> Self {
        Self {
            workers: Arc::new(Semaphore::new(config.decode_workers)),
            budget: Arc::new(Semaphore::new(config.max_decode_memory_bytes / 1024)),
            max_spans: config.max_spans_per_request,
            max_body: config.max_body_bytes,
            max_decompressed: config.max_decompressed_bytes,
            max_request_memory: config.max_request_memory_bytes,
            in_use,
        }
    }

    /// Decodes, converts and validates one request within the bounds (see the module
    /// documentation for the order).
    ///
    /// With `split` (and routing on), a protobuf request is split by owner first and only
    /// this replica's part is decoded; the others come back in [`Prepared::forward`].
    pub(crate) async fn decode(
        &self,
        ingest: &Ingest,
        protocol: Protocol,
        req: Encoded,
        split: bool,
    ) -> Result<Prepared, DecodeError> {
        let Ok(worker) = Arc::clone(&self.workers).acquire_owned().await else {
            return Err(DecodeError::Busy);
        };
        let this = self.clone();
        let ingest = ingest.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _worker = worker;
            this.decode_split(&ingest, protocol, req, split)
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(DecodeError::Invalid(format!("decoding failed: {e}"))),
        }
    }

    /// Runs CPU-heavy request work (the native JSON parse) on one of the same blocking
    /// slots, so no protocol decodes on the async workers.
    pub(crate) async fn run_blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, DecodeError> {
        let Ok(worker) = Arc::clone(&self.workers).acquire_owned().await else {
            return Err(DecodeError::Busy);
        };
        tokio::task::spawn_blocking(move || {
            let _worker = worker;
            work()
        })
        .await
        .map_err(|e| DecodeError::Invalid(format!("decoding failed: {e}")))
    }

    fn take_budget(&self, bytes: usize) -> Result<Budget, DecodeError> {
        let permits = kib(bytes);
        let permit = Arc::clone(&self.budget)
            .try_acquire_many_owned(permits)
            .map_err(|_| DecodeError::Busy)?;
        let bytes = i64::from(permits) * 1024;
        self.in_use.inc_by(bytes);
        Ok(Budget {
            _permit: permit,
            bytes,
            gauge: self.in_use.clone(),
        })
    }

    pub(crate) fn decode_blocking(
        &self,
        ingest: &Ingest,
        protocol: Protocol,
        req: Encoded,
    ) -> Result<Prepared, DecodeError> {
        self.decode_split(ingest, protocol, req, false)
    }

    fn decode_split(
        &self,
        ingest: &Ingest,
        protocol: Protocol,
        req: Encoded,
        split: bool,
    ) -> Result<Prepared, DecodeError> {
        let limit = match req.compression {
            Compression::None | Compression::Gzip => self.max_body,
            Compression::Inflated => self.max_decompressed,
        };
        if req.body.len() > limit {
            return Err(DecodeError::TooLarge(format!(
                "request of {} bytes exceeds the limit of {limit} bytes",
                req.body.len(),
            )));
        }
        // An inflated body is held before its shape is known: reserve the most it can be.
        let (raw, inflate_budget) = if req.compression == Compression::Gzip {
            let b = self.take_budget(self.max_decompressed)?;
            (
                Bytes::from(gunzip_bounded(&req.body, self.max_decompressed)?),
                Some(b),
            )
        } else {
            (req.body, None)
        };
        let raw = match req.wire {
            Wire::Json => non_finite_doubles(&raw).map_or(raw, Bytes::from),
            Wire::Protobuf => raw,
        };
        // A request about to be split is checked whole here (the split does not look
        // inside spans), so it is refused before any part of it reaches an owner.
        let split = split && ingest.router.is_some() && req.wire == Wire::Protobuf;
        let shape = match req.wire {
            Wire::Protobuf if split => shape::protobuf_checked(&raw),
            Wire::Protobuf => shape::protobuf(&raw),
            Wire::Json => shape::json(&raw),
        }
        .map_err(|e| DecodeError::Invalid(format!("undecodable OTLP request: {e}")))?;
        if shape.spans > self.max_spans {
            return Err(DecodeError::TooManySpans {
                limit: self.max_spans,
                got: shape.spans,
            });
        }
        if shape.memory > self.max_request_memory {
            return Err(DecodeError::TooLarge(format!(
                "decoding this request would take about {} bytes, over the limit of {} bytes \
                 (collector.max_request_memory_bytes); send fewer spans or attributes per request",
                shape.memory, self.max_request_memory
            )));
        }
        drop(inflate_budget);
        let _budget = self.take_budget(shape.memory)?;
        let mut forward = Vec::new();
        let raw = match &ingest.router {
            Some(router) if split => {
                let parts = crate::route::split::split(&raw, &router.ring())
                    .map_err(|e| DecodeError::Invalid(format!("undecodable OTLP request: {e}")))?;
                forward = parts.remote;
                parts.local
            }
            _ => raw,
        };
        let decoded = match req.wire {
            Wire::Protobuf => ExportTraceServiceRequest::decode(raw).map_err(|e| e.to_string()),
            Wire::Json => {
                serde_json::from_slice::<ExportTraceServiceRequest>(&raw).map_err(|e| e.to_string())
            }
        }
        .map_err(|e| DecodeError::Invalid(format!("undecodable OTLP request: {e}")))?;
        Ok(Prepared {
            forward,
            ..prepare(ingest, protocol, decoded)
        })
    }
}

/// The OTLP JSON mapping writes non-finite doubles as the strings `"NaN"`, `"Infinity"` and
/// `"-Infinity"`, which the generated decoder refuses (it takes only JSON numbers), failing
/// the whole request. Such a `"doubleValue"` is rewritten to the `"stringValue"` the
/// converter makes of a non-finite double anyway (`NaN`, `inf`, `-inf`), so the attribute is
/// stored as it would be from protobuf. Returns `None` (no copy) when there is none. The
/// scan follows JSON strings and escapes, so text inside string values is never touched.
pub(crate) fn non_finite_doubles(raw: &[u8]) -> Option<Vec<u8>> {
    const KEY: &[u8] = b"doubleValue";
    if !raw.windows(3).any(|w| w == b"NaN" || w == b"Inf") {
        return None;
    }
    /// The end (exclusive, after the closing quote) of the string starting at `at`.
    fn string_end(raw: &[u8], at: usize) -> Option<usize> {
        let mut i = at + 1;
        while i < raw.len() {
            match raw[i] {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
        None
    }
    fn skip_ws(raw: &[u8], mut i: usize) -> usize {
        while i < raw.len() && matches!(raw[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    }
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'"' {
            i += 1;
            continue;
        }
        let end = string_end(raw, i)?;
        if &raw[i + 1..end - 1] == KEY {
            let colon = skip_ws(raw, end);
            if raw.get(colon) == Some(&b':') {
                let v = skip_ws(raw, colon + 1);
                if raw.get(v) == Some(&b'"') {
                    let v_end = string_end(raw, v)?;
                    let named = match &raw[v + 1..v_end - 1] {
                        b"NaN" => Some("NaN"),
                        b"Infinity" => Some("inf"),
                        b"-Infinity" => Some("-inf"),
                        _ => None,
                    };
                    if let Some(name) = named {
                        let o = out.get_or_insert_with(|| Vec::with_capacity(raw.len()));
                        o.extend_from_slice(&raw[copied..i]);
                        o.extend_from_slice(b"\"stringValue\":\"");
                        o.extend_from_slice(name.as_bytes());
                        o.push(b'"');
                        copied = v_end;
                    }
                    i = v_end;
                    continue;
                }
            }
        }
        i = end;
    }
    let mut o = out?;
    o.extend_from_slice(&raw[copied..]);
    Some(o)
}

/// Taken decode budget, returned on drop.
struct Budget {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    gauge: Gauge,
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}

/// Converts and validates every span of a decoded request.
fn prepare(ingest: &Ingest, protocol: Protocol, req: ExportTraceServiceRequest) -> Prepared {
    let (spans, unmapped) = convert::from_otlp(req);
    let mut first_error = unmapped
        .first()
        .map(|r| format!("span {}: {}", r.index, r.reason));
    let mut rejected = unmapped.len();
    let mut valid = Vec::with_capacity(spans.len());
    let now = datatracing_core::Timestamp::now();
    for mut span in spans {
        let errors = ingest.prepare(protocol, now, &mut span);
        if errors.is_empty() {
            valid.push(span);
        } else {
            rejected += 1;
            first_error.get_or_insert_with(|| format!("span {}: {}", span.span_id, errors[0]));
        }
    }
    Prepared {
        valid,
        rejected,
        first_error,
        forward: Vec::new(),
    }
}

/// Inflates gzip with a hard cap on the output, so a small bomb cannot take memory. Every
/// member of a multi-member body is inflated (the cap counts them together): a single-member
/// decoder dropped everything after the first member and still answered 200. Bytes after the
/// last member that are not another member are an error, not ignored.
pub(crate) fn gunzip_bounded(body: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    flate2::read::MultiGzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Invalid(format!("invalid gzip body: {e}")))?;
    if out.len() > max {
        return Err(DecodeError::TooLarge(format!(
            "decompressed body exceeds the limit of {max} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_decode_budget_is_shared_and_returned() {
        let config = datatracing_config::CollectorConfig {
            max_body_bytes: 1 << 20,
            max_decompressed_bytes: 1 << 20,
            max_request_memory_bytes: 1 << 20,
            max_decode_memory_bytes: 1 << 20,
            ..Default::default()
        };
        let gauge = Gauge::default();
        let pool = DecodePool::new(&config, gauge.clone());
        let held = pool.take_budget(900 * 1024).unwrap();
        assert_eq!(gauge.get(), 900 * 1024);
        assert!(matches!(
            pool.take_budget(200 * 1024),
            Err(DecodeError::Busy)
        ));
        // A clone (the other protocol's handle) sees the same budget.
        assert!(matches!(
            pool.clone().take_budget(200 * 1024),
            Err(DecodeError::Busy)
        ));
        drop(held);
        assert_eq!(gauge.get(), 0);
        assert!(pool.take_budget(1 << 20).is_ok());
    }

    #[test]
    fn non_finite_doubles_become_the_strings_the_converter_makes() {
        let raw = br#"{"a":{"doubleValue":"NaN"},"b":{"doubleValue" : "Infinity"},"c":{"doubleValue":"-Infinity"},"d":{"doubleValue":1.5},"e":{"stringValue":"{\"doubleValue\":\"NaN\"}"}}"#;
        let out = String::from_utf8(non_finite_doubles(raw).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"a":{"stringValue":"NaN"},"b":{"stringValue":"inf"},"c":{"stringValue":"-inf"},"d":{"doubleValue":1.5},"e":{"stringValue":"{\"doubleValue\":\"NaN\"}"}}"#
        );
        assert!(non_finite_doubles(br#"{"d":{"doubleValue":1.5}}"#).is_none());
        assert!(non_finite_doubles(br#"{"s":"NaN"}"#).is_none());
        // Unterminated strings are left to the decoder to refuse.
        assert!(non_finite_doubles(br#"{"doubleValue":"NaN"#).is_none());
    }

    #[test]
    fn gunzip_is_bounded() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 10 * 1024 * 1024]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(
            bomb.len() < 64 * 1024,
            "10 MiB of zeros compress to {} bytes",
            bomb.len()
        );
        assert!(matches!(
            gunzip_bounded(&bomb, 1024 * 1024),
            Err(DecodeError::TooLarge(_))
        ));
        assert_eq!(
            gunzip_bounded(&bomb, 16 * 1024 * 1024)
                .ok()
                .map(|v| v.len()),
            Some(10 * 1024 * 1024)
        );
        assert!(matches!(
            gunzip_bounded(b"not gzip", 1024),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn every_gzip_member_is_inflated_within_one_bound() {
        let member = |data: &[u8]| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        };
        let mut two = member(b"first,");
        two.extend(member(b"second"));
        assert_eq!(
            gunzip_bounded(&two, 1024).ok().as_deref(),
            Some(&b"first,second"[..])
        );
        // The cap is for all members together.
        let mut big = member(&[0; 600]);
        big.extend(member(&[0; 600]));
        assert!(matches!(
            gunzip_bounded(&big, 1000),
            Err(DecodeError::TooLarge(_))
        ));
        // Trailing bytes that are not a member.
        let mut trailing = member(b"data");
        trailing.extend_from_slice(b"garbage");
        assert!(matches!(
            gunzip_bounded(&trailing, 1024),
            Err(DecodeError::Invalid(_))
        ));
    }
}
