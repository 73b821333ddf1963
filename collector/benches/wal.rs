//! The durable queue's record payload: binary (current) against JSON (before), encoding on
//! the request path and decoding on replay, for a batch of 1,000 spans shaped like the load
//! generator's (10 attributes, a status, a link on every fifth span).
//!
//! `cargo bench -p datatracing-collector --bench wal`; figures in docs/benchmarks.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datatracing_collector::wal_record::{decode, encode};
use datatracing_core::{
    AttributeValue, Attributes, Link, LinkType, Span, SpanId, SpanKind, Status, StatusCode,
    Timestamp, TraceId,
};

fn spans(n: usize) -> Vec<Span> {
    (0..n)
        .map(|i| {
            let mut attributes = Attributes::new();
            for k in 0..6 {
                attributes.insert(
                    format!("attr.{k}"),
                    AttributeValue::String(format!("value-{}-{k}", i % 50)),
                );
            }
            for k in 6..10 {
                attributes.insert(format!("attr.{k}"), AttributeValue::Int((i * k) as i64));
            }
            let trace = TraceId::from_bytes(((i / 10) as u128 + 1).to_be_bytes());
            Span {
                trace_id: trace,
                span_id: SpanId::from_bytes((i as u64 + 1).to_be_bytes()),
                parent_id: (i % 10 != 0).then(|| SpanId::from_bytes((i as u64).to_be_bytes())),
                service: "spark-etl".into(),
                operation: format!("transform-step-{}", i % 7),
                kind: SpanKind::Transform,
                start_time: Timestamp::from_unix_nanos(1_764_000_000_000_000_000 + i as i64),
                end_time: Timestamp::from_unix_nanos(1_764_000_001_000_000_000 + i as i64),
                status: Status {
                    code: StatusCode::Ok,
                    message: None,
                },
                attributes,
                events: Vec::new(),
                links: if i % 5 == 0 {
                    vec![Link {
                        trace_id: TraceId::from_bytes([3; 16]),
                        span_id: SpanId::from_bytes([4; 8]),
                        link_type: LinkType::DataDependency,
                        attributes: Attributes::new(),
                    }]
                } else {
                    Vec::new()
                },
            }
        })
        .collect()
}

fn records(c: &mut Criterion) {
    let batch = spans(1_000);
    let binary = encode(&batch);
    let json = serde_json::to_vec(&batch).unwrap();
    println!(
        "payload bytes per span: binary {}, JSON {}",
        binary.len() / batch.len(),
        json.len() / batch.len()
    );
    let mut g = c.benchmark_group("wal record");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("encode binary", |b| {
        b.iter(|| std::hint::black_box(encode(&batch)))
    });
    g.bench_function("encode JSON (before)", |b| {
        b.iter(|| std::hint::black_box(serde_json::to_vec(&batch).unwrap()))
    });
    g.bench_function("decode binary", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            decode(&binary, &mut out).unwrap();
            std::hint::black_box(out)
        })
    });
    g.bench_function("decode JSON (before)", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            decode(&json, &mut out).unwrap();
            std::hint::black_box(out)
        })
    });
    g.finish();
}

criterion_group!(benches, records);
criterion_main!(benches);
