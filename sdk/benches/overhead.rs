//! The SDK's cost per span created and exported, against plain opentelemetry-rust doing the
//! same work: a span with the same attributes (step kind, job, run, one input and one output
//! dataset, three counts) and one link, ended and handed through the same batch span
//! processor configuration to an exporter that discards the batch. The difference is the
//! `Step` builder and the export counters (`CountingProcessor`, `CountingExporter`).
//!
//! `cargo bench -p datatracing-sdk --bench overhead`; figures in docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use datatracing_sdk::conventions as c;
use datatracing_sdk::{Counts, Dataset, ExportConfig, Pipeline, Step, StepKind};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};

/// Discards every batch: measures the pipeline, not a network.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

const QUEUE: usize = 1 << 16;
const BATCH: usize = 512;

fn upstream() -> SpanContext {
    SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

fn plain_provider() -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(Discard)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_max_queue_size(QUEUE)
                        .with_max_export_batch_size(BATCH)
                        .with_scheduled_delay(Duration::from_millis(100))
                        .build(),
                )
                .build(),
        )
        .build()
}

fn sdk_pipeline() -> Pipeline {
    let mut config = ExportConfig::new("http://127.0.0.1:1", "bench");
    config.max_queue_size = QUEUE;
    config.max_export_batch_size = BATCH;
    config.scheduled_delay = Duration::from_millis(100);
    config.install_with(Discard).unwrap()
}

/// Names a job knows at run time (a run id, dataset names from its configuration), held as
/// `String`s the way a job holds them.
struct Names {
    run: String,
    orders: String,
    enriched: String,
}

fn names() -> Names {
    Names {
        run: format!("run-{}", std::process::id()),
        orders: "kafka://b:9092/orders".to_string(),
        enriched: "kafka://b:9092/enriched".to_string(),
    }
}

/// One span the plain way, with run-time names: each span gets its own copy, as with the SDK.
fn plain_dynamic_span<T: Tracer>(tracer: &T, link: &SpanContext, n: &Names) {
    let mut span = tracer
        .span_builder("enrich orders")
        .with_kind(SpanKind::Internal)
        .with_attributes(vec![
            KeyValue::new(c::JOB_NAME, "orders-enricher"),
            KeyValue::new(c::RUN_ID, n.run.clone()),
            KeyValue::new(c::RECORDS_IN, 100i64),
            KeyValue::new(c::RECORDS_OUT, 98i64),
            KeyValue::new(c::RECORDS_REJECTED, 2i64),
            KeyValue::new(c::SPAN_KIND, "TRANSFORM"),
            KeyValue::new(
                c::DATASET_INPUTS,
                Value::Array(Array::String(vec![n.orders.clone().into()])),
            ),
            KeyValue::new(
                c::DATASET_OUTPUTS,
                Value::Array(Array::String(vec![n.enriched.clone().into()])),
            ),
        ])
        .with_links(vec![Link::new(
            link.clone(),
            vec![
                KeyValue::new(c::LINK_TYPE, "data_dependency"),
                KeyValue::new(c::LINK_DATASET, n.orders.clone()),
            ],
            0,
        )])
        .start_with_context(tracer, &Context::new());
    span.end();
}

/// One span the plain way, every name a string literal (no copies at all).
fn plain_span<T: Tracer>(tracer: &T, link: &SpanContext) {
    let mut span = tracer
        .span_builder("enrich orders")
        .with_kind(SpanKind::Internal)
        .with_attributes(vec![
            KeyValue::new(c::JOB_NAME, "orders-enricher"),
            KeyValue::new(c::RUN_ID, "run-1"),
            KeyValue::new(c::RECORDS_IN, 100i64),
            KeyValue::new(c::RECORDS_OUT, 98i64),
            KeyValue::new(c::RECORDS_REJECTED, 2i64),
            KeyValue::new(c::SPAN_KIND, "TRANSFORM"),
            KeyValue::new(
                c::DATASET_INPUTS,
                Value::Array(Array::String(vec!["kafka://b:9092/orders".into()])),
            ),
            KeyValue::new(
                c::DATASET_OUTPUTS,
                Value::Array(Array::String(vec!["kafka://b:9092/enriched".into()])),
            ),
        ])
        .with_links(vec![Link::new(
            link.clone(),
            vec![
                KeyValue::new(c::LINK_TYPE, "data_dependency"),
                KeyValue::new(c::LINK_DATASET, "kafka://b:9092/orders"),
            ],
            0,
        )])
        .start_with_context(tracer, &Context::new());
    span.end();
}

/// The same span with the SDK.
fn sdk_span<T: Tracer>(
    tracer: &T,
    link: &SpanContext,
    orders: &Dataset,
    enriched: &Dataset,
    n: &Names,
) {
    let mut span = Step::new("enrich orders", StepKind::Transform)
        .job("orders-enricher", n.run.clone())
        .input(orders)
        .output(enriched)
        .counts(Counts {
            records_in: Some(100),
            records_out: Some(98),
            records_rejected: Some(2),
            ..Counts::default()
        })
        .data_dependency(link.clone(), Some(orders))
        .start_with_context(tracer, &Context::new());
    span.end();
}

/// This process's CPU time in nanoseconds: the sum over its threads (the batch processor's
/// too) of the time the scheduler ran them (`/proc/self/task/*/schedstat`, nanosecond
/// resolution; `/proc/self/stat` counts 10 ms ticks, too coarse for rounds of tens of
/// milliseconds).
fn cpu_nanos() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// With `OVERHEAD_ONLY=plain|sdk|literals`, makes `OVERHEAD_SPANS` (default 1,000,000) spans
/// of that variant and nothing else, for counting instructions with `perf stat`
/// (load-independent, unlike time on a shared machine); otherwise does nothing.
fn only(_: &mut Criterion) {
    let Ok(which) = std::env::var("OVERHEAD_ONLY") else {
        return;
    };
    let spans: usize = std::env::var("OVERHEAD_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let link = upstream();
    let n = names();
    let (orders, enriched) = (
        Dataset::new("kafka://b:9092", "orders"),
        Dataset::new("kafka://b:9092", "enriched"),
    );
    if which == "sdk" {
        let pipeline = sdk_pipeline();
        let tracer = pipeline.tracer("bench");
        for _ in 0..spans {
            sdk_span(&tracer, &link, &orders, &enriched, &n);
        }
        let counts = pipeline.shutdown(Duration::from_secs(30)).unwrap();
        eprintln!("{counts:?}");
    } else {
        let provider = plain_provider();
        let tracer = provider.tracer("bench");
        for _ in 0..spans {
            if which == "literals" {
                plain_span(&tracer, &link);
            } else {
                plain_dynamic_span(&tracer, &link, &n);
            }
        }
        provider.shutdown().unwrap();
    }
    std::process::exit(0);
}

/// Rounds of each variant alternating, so load from elsewhere on the machine hits both
/// alike: the median per-span process CPU time of each and their ratio.
///
/// A round is smaller than the queue and ends with a flush, so no variant ever drops a
/// span: every span is built, queued, batched and exported in all three, and the CPU time
/// of the batch thread is counted with the producer's. (Rounds larger than the queue let
/// the queue overflow by chance, and a dropped span is cheaper than an exported one.)
fn paired(_: &mut Criterion) {
    const ROUNDS: usize = 41;
    const SPANS: usize = QUEUE * 3 / 4;
    let provider = plain_provider();
    let plain = provider.tracer("bench");
    let pipeline = sdk_pipeline();
    let ours = pipeline.tracer("bench");
    let link = upstream();
    let n = names();
    let (orders, enriched) = (
        Dataset::new("kafka://b:9092", "orders"),
        Dataset::new("kafka://b:9092", "enriched"),
    );
    let per_span = |t: u64| (cpu_nanos() - t) as f64 / SPANS as f64;
    let (mut a, mut b, mut x) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = cpu_nanos();
        for _ in 0..SPANS {
            plain_dynamic_span(&plain, &link, &n);
        }
        provider.force_flush().unwrap();
        a.push(per_span(t));
        let t = cpu_nanos();
        for _ in 0..SPANS {
            sdk_span(&ours, &link, &orders, &enriched, &n);
        }
        pipeline.flush().unwrap();
        b.push(per_span(t));
        // Plain, with string literals only: the floor.
        let t = cpu_nanos();
        for _ in 0..SPANS {
            plain_span(&plain, &link);
        }
        provider.force_flush().unwrap();
        x.push(per_span(t));
    }
    let ratios: Vec<f64> = a.iter().zip(&b).map(|(p, s)| s / p).collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (pa, pb, px, pr) = (median(a), median(b), median(x), median(ratios));
    let counts = pipeline.shutdown(Duration::from_secs(30)).unwrap();
    assert_eq!(counts.dropped, 0, "rounds fit the queue: {counts:?}");
    eprintln!(
        "paired, {ROUNDS} alternating rounds of {SPANS} spans, median process CPU per span: \
         plain opentelemetry {pa:.0} ns, datatracing-sdk {pb:.0} ns, ratio of medians {:.3}, \
         median of per-round ratios {pr:.3}; plain with string literals only {px:.0} ns \
         ({counts:?})",
        pb / pa
    );
}

fn overhead(crit: &mut Criterion) {
    let mut group = crit.benchmark_group("span created+exported");
    group.measurement_time(Duration::from_secs(10));

    let provider = plain_provider();
    let tracer = provider.tracer("bench");
    let link = upstream();
    let n = names();
    group.bench_function("plain opentelemetry", |b| {
        b.iter(|| plain_dynamic_span(&tracer, &link, &n))
    });
    group.bench_function("plain opentelemetry, string literals", |b| {
        b.iter(|| plain_span(&tracer, &link))
    });
    provider.shutdown().unwrap();

    let pipeline = sdk_pipeline();
    let tracer = pipeline.tracer("bench");
    let (orders, enriched) = (
        Dataset::new("kafka://b:9092", "orders"),
        Dataset::new("kafka://b:9092", "enriched"),
    );
    group.bench_function("datatracing-sdk Step", |b| {
        b.iter(|| sdk_span(&tracer, &link, &orders, &enriched, &n))
    });
    let counts = pipeline.shutdown(Duration::from_secs(30)).unwrap();
    // Spans the queue dropped cost less than exported ones: say how many there were.
    eprintln!("datatracing-sdk pipeline: {counts:?}");
    group.finish();
}

criterion_group!(benches, only, overhead, paired);
criterion_main!(benches);
