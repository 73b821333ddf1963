//! Entry points for the coverage-guided fuzz targets in `fuzz/` and for the test that replays
//! their committed corpus on stable Rust (`tests/fuzz_corpus.rs`). Each runs one decoder of
//! untrusted input with the collector's default bounds and panics when an invariant the rest
//! of the collector relies on breaks; returning normally (with an error for bad input) is the
//! expected outcome. Not an API: hidden from the docs and free to change.

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::ingest::{Ingest, Protocol};
use crate::otlp::decode::{Compression, DecodePool, Encoded, Wire};
use crate::otlp::{convert, shape};

/// The collector's request path with default bounds, built once per fuzzing process.
#[derive(Debug)]
pub struct Harness {
    ingest: Ingest,
    pool: DecodePool,
    max_spans: usize,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A harness with `CollectorConfig::default()` bounds and no store.
    pub fn new() -> Self {
        let config = datatracing_config::CollectorConfig::default();
        Self {
            pool: DecodePool::new(&config, Default::default()),
            max_spans: config.max_spans_per_request,
            ingest: Ingest::detached(&config.queue),
        }
    }

    /// One OTLP request body, as OTLP/HTTP would take it (`json` picks the encoding,
    /// `gzip` says the body is compressed). Checks that the shape read before decoding,
    /// which enforces `max_spans_per_request` and the memory budget, counts exactly the
    /// spans the decoder finds: a shape that undercounts would let a request past its limits;
    /// and that the checked scan a routed replica runs refuses exactly what the decoder
    /// refuses.
    pub fn otlp(&self, json: bool, gzip: bool, body: &[u8]) {
        let wire = if json { Wire::Json } else { Wire::Protobuf };
        if !gzip {
            let shape = match wire {
                Wire::Protobuf => shape::protobuf(body),
                Wire::Json => shape::json(body),
            };
            let decoded = match wire {
                Wire::Protobuf => ExportTraceServiceRequest::decode(body).ok(),
                Wire::Json => serde_json::from_slice::<ExportTraceServiceRequest>(body).ok(),
            };
            if let (Ok(shape), Some(req)) = (&shape, &decoded) {
                assert_eq!(
                    shape.spans,
                    convert::span_count(req),
                    "the shape scan and the decoder disagree on the span count"
                );
            }
            // A routed replica checks a request whole with the checked scan and then splits
            // it without looking inside spans: it must refuse exactly what the decoder
            // refuses (groups aside, which both scans refuse and the decoder skips).
            if let (Wire::Protobuf, Ok(shape)) = (wire, &shape) {
                let checked = shape::protobuf_checked(body);
                assert_eq!(
                    checked.is_ok(),
                    decoded.is_some(),
                    "the checked shape scan and the decoder disagree: {checked:?}"
                );
                if let Ok(checked) = checked {
                    assert_eq!(&checked, shape, "the checked scan reads another shape");
                }
            }
        }
        let req = Encoded {
            wire,
            body: Bytes::copy_from_slice(body),
            compression: if gzip {
                Compression::Gzip
            } else {
                Compression::None
            },
        };
        let protocol = if json {
            Protocol::OtlpHttpJson
        } else {
            Protocol::OtlpHttpProtobuf
        };
        if let Ok(prepared) = self.pool.decode_blocking(&self.ingest, protocol, req) {
            assert!(
                prepared.valid.len() + prepared.rejected <= self.max_spans,
                "more spans than max_spans_per_request came through"
            );
        }
    }

    /// One native JSON request body (`POST /v1/spans`).
    pub fn native_json(&self, body: &[u8]) {
        if let Ok(parsed) = crate::receive::parse_batch(body, &self.ingest, self.max_spans) {
            assert!(parsed.valid.len() + parsed.rejected <= self.max_spans);
            // A span can have several field errors, so details may outnumber rejections;
            // but no span is rejected without one.
            assert!(parsed.rejected == 0 || !parsed.details.is_empty());
        }
    }
}

/// One sampling-policy document (YAML or JSON), as the policy file, the admin reload and
/// the operator's ConfigMap deliver it. A policy that compiles must survive being written
/// back out and read again with the same hash: the operator renders policies this way.
pub fn policy(text: &str) {
    let Ok(policy) = serde_saphyr::from_str::<datatracing_core::policy::SamplingPolicy>(text)
    else {
        return;
    };
    let Ok(compiled) = policy.compile() else {
        return;
    };
    let written = serde_saphyr::to_string(&policy).unwrap_or_else(|e| {
        panic!("a compiled policy cannot be written back as YAML: {e}");
    });
    let again: datatracing_core::policy::SamplingPolicy = serde_saphyr::from_str(&written)
        .unwrap_or_else(|e| panic!("a written policy does not read back: {e}\n{written}"));
    let recompiled = again
        .compile()
        .unwrap_or_else(|e| panic!("a written policy does not compile: {e:?}\n{written}"));
    assert_eq!(compiled.hash(), recompiled.hash(), "{written}");
}

/// Damages a fresh durable-queue log as `script` says (see `wal::damage`) and reads it
/// back: reading must end, invent nothing and deliver every intact record.
pub fn wal(script: &[u8]) {
    let Some((&shape, damages)) = script.split_first() else {
        return;
    };
    #[allow(clippy::expect_used)] // the fuzzing process's own scratch space
    let dir = tempfile_dir().expect("a scratch directory for the log");
    let segments = 1 + u64::from(shape % 3);
    let per_segment = 1 + u16::from(shape / 3 % 8);
    let damages = crate::wal::damage::Damage::from_bytes(damages);
    let outcome = crate::wal::damage::damage_and_check(dir.path(), segments, per_segment, &damages);
    if let Err(e) = outcome {
        panic!("{e} (damages: {damages:?})");
    }
}

/// A directory removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> std::io::Result<Scratch> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "datatracing-fuzz-wal-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(Scratch(dir))
}
