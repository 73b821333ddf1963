//! Sampling hot paths: policy evaluation and the tail buffer.
//!
//! `cargo bench -p datatracing-collector --bench sampling`; figures in docs/benchmarks.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datatracing_collector::Sampler;
use datatracing_collector::tail::{PolicyHolder, SamplingMetrics, TailSampler};
use datatracing_config::SamplingConfig;
use datatracing_core::policy::{SamplingPolicy, TraceFacts};
use datatracing_core::{Span, TraceId};

/// A realistic 10-rule policy: errors, slow steps, datasets, services, kinds, sampling.
const POLICY: &str = r#"{
  "rules": [
    {"name": "errors", "when": {"status": ["ERROR", "TIMEOUT"]}, "action": {"decision": "keep", "keep_linked": true}},
    {"name": "slow-steps", "scope": "span", "when": {"all": [{"kind": ["TRANSFORM", "JOIN", "AGGREGATE"]}, {"duration": {"of": "span", "over": "10s"}}]}, "action": {"decision": "keep"}},
    {"name": "slow-traces", "when": {"duration": {"of": "trace", "over": "60s"}}, "action": {"decision": "keep"}},
    {"name": "payments", "when": {"attribute": {"key": "dataset", "equals": "payments"}}, "action": {"decision": "keep", "rate_limit": {"per_second": 1000}}},
    {"name": "big-batches", "when": {"attribute": {"key": "records", "number": {"gt": 1000000}}}, "action": {"decision": "keep"}},
    {"name": "health", "when": {"operation": {"glob": "GET /health*"}}, "action": {"decision": "drop"}},
    {"name": "internal-tools", "when": {"service": {"regex": "^(debug|canary)-"}}, "action": {"decision": "drop"}},
    {"name": "backfills", "when": {"attribute": {"key": "job", "regex": "^backfill"}}, "action": {"decision": "keep", "sample_rate": 100}},
    {"name": "no-root", "when": {"root_present": false}, "action": {"decision": "keep", "sample_rate": 20}},
    {"name": "joins", "when": {"kind": ["JOIN"]}, "action": {"decision": "keep", "sample_rate": 5}}
  ],
  "default": {"decision": "keep", "sample_rate": 10}
}"#;

fn traces() -> Vec<Vec<Span>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/traces");
    [
        "healthy",
        "error_in_step",
        "slow_step",
        "fan_in",
        "late_spans",
        "no_root",
    ]
    .iter()
    .map(|n| {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{n}.json")).unwrap())
                .unwrap();
        serde_json::from_value(v["spans"].clone()).unwrap()
    })
    .collect()
}

fn evaluate(c: &mut Criterion) {
    let policy: SamplingPolicy = serde_json::from_str(POLICY).unwrap();
    let compiled = policy.compile().unwrap();
    let traces = traces();
    let spans: usize = traces.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(spans as u64));
    g.bench_function("evaluate 10-rule policy (span evaluations)", |b| {
        let mut now = 0i64;
        b.iter(|| {
            now += 1_000;
            for t in &traces {
                std::hint::black_box(compiled.evaluate(
                    &TraceFacts {
                        spans: t,
                        linked_to_kept: false,
                    },
                    now,
                ));
            }
        });
    });
    g.finish();
}

fn buffer(c: &mut Criterion) {
    let policy: SamplingPolicy = serde_json::from_str(POLICY).unwrap();
    let base = traces();
    let per_round = 1_000usize;
    let spans_per_round: usize = (0..per_round).map(|i| base[i % base.len()].len()).sum();
    let mut g = c.benchmark_group("tail buffer");
    g.throughput(Throughput::Elements(spans_per_round as u64));
    g.bench_function("insert 1,000 traces then decide them", |b| {
        let clock = Arc::new(AtomicI64::new(0));
        let c2 = clock.clone();
        let holder = PolicyHolder::from_policy(&policy, false, SamplingMetrics::default()).unwrap();
        let mut sampler = TailSampler::with_clock(
            SamplingConfig::default(),
            holder,
            SamplingMetrics::default(),
            Box::new(move || c2.load(Ordering::Relaxed)),
        );
        let mut round = 0u64;
        b.iter(|| {
            round += 1;
            for i in 0..per_round {
                let mut t = base[i % base.len()].clone();
                let id =
                    TraceId::from_bytes(((u128::from(round) << 32) | i as u128 | 1).to_be_bytes());
                for s in &mut t {
                    s.trace_id = id;
                }
                std::hint::black_box(sampler.offer(t));
            }
            clock.fetch_add(3_600_000_000_000, Ordering::Relaxed);
            std::hint::black_box(sampler.tick());
        });
    });
    g.finish();

    // Memory accounting per buffered span, from the sampler's own gauges.
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = SamplingMetrics::register(&mut registry);
    let holder = PolicyHolder::from_policy(&policy, false, metrics.clone()).unwrap();
    let mut sampler =
        TailSampler::with_clock(SamplingConfig::default(), holder, metrics, Box::new(|| 0));
    for i in 0..10_000usize {
        let mut t = base[i % base.len()].clone();
        let id = TraceId::from_bytes((i as u128 + 1).to_be_bytes());
        for s in &mut t {
            s.trace_id = id;
        }
        sampler.offer(t);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let (bytes, spans) = (
        gauge("datatracing_sampling_buffered_bytes"),
        gauge("datatracing_sampling_buffered_spans"),
    );
    println!(
        "buffered: {spans} spans, {bytes} bytes accounted, {:.0} bytes per span",
        bytes / spans.max(1.0)
    );
}

criterion_group!(benches, evaluate, buffer);
criterion_main!(benches);
