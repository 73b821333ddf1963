//! A three-job pipeline over Apache Kafka, instrumented with `datatracing-sdk`; each job is
//! a separate run of this program, as a scheduler would start them:
//!
//! ```text
//! kafka-pipeline produce   <brokers> <collector> <records>          # orders -> topic `orders`
//! kafka-pipeline transform <brokers> <collector> <records>          # `orders` -> `orders_enriched`
//! kafka-pipeline aggregate <brokers> <collector> <records> <file>   # `orders_enriched` -> a JSON file
//! ```
//!
//! - `produce` publishes one record per order, each from its own PUBLISH span whose context
//!   travels in the record's `traceparent` header.
//! - `transform` reads them in one batch: its TRANSFORM span starts a new trace with one
//!   DATA_DEPENDENCY link per record to the span that produced it (fan-in), validates every
//!   record in a VALIDATE child (negative amounts are rejected and counted), and writes the
//!   valid ones to `orders_enriched` in a MATERIALIZE child, carrying its own context on.
//! - `aggregate` continues from the transform job with a FOLLOWS_FROM link and writes the
//!   total to a file.
//!
//! Each job prints its span ids as one JSON line, exports to the collector at `<collector>`
//! (its OTLP/HTTP base URL) and shuts its exporter down within 10 s.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::error::Error;
use std::time::Duration;

use datatracing_sdk::conventions as c;
use datatracing_sdk::propagation::{self, KafkaHeaders};
use datatracing_sdk::step::{record_counts, set_timeout};
use datatracing_sdk::{Counts, Dataset, ExportConfig, Step, StepKind};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const ORDERS: &str = "orders";
const ENRICHED: &str = "orders_enriched";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (job, brokers, collector, records) = match args.as_slice() {
        [job, brokers, collector, records, ..] => (job, brokers, collector, records.parse()?),
        _ => return Err(usage()),
    };
    let client = ClientBuilder::new(vec![brokers.clone()]).build().await?;
    let ns = format!("kafka://{brokers}");
    let out = match job.as_str() {
        "produce" => produce(&client, &ns, collector, records).await?,
        "transform" => transform(&client, &ns, collector, records).await?,
        "aggregate" => {
            let file = args.get(4).ok_or_else(usage)?;
            aggregate(&client, &ns, collector, records, file).await?
        }
        _ => return Err(usage()),
    };
    println!("{out}");
    Ok(())
}

fn usage() -> Box<dyn Error + Send + Sync> {
    "usage: kafka-pipeline produce|transform|aggregate <brokers> <collector> <records> [file]"
        .into()
}

async fn partition(client: &Client, topic: &str) -> Result<PartitionClient> {
    match client
        .controller_client()?
        .create_topic(topic, 1, 1, 5_000)
        .await
    {
        Ok(()) => {}
        // Another job created it first.
        Err(rskafka::client::error::Error::ServerError {
            protocol_error: rskafka::client::error::ProtocolError::TopicAlreadyExists,
            ..
        }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(client
        .partition_client(topic, 0, UnknownTopicHandling::Retry)
        .await?)
}

/// Reads exactly `n` records from the start of `topic`, waiting for them at most 30 s.
async fn read(p: &PartitionClient, n: usize) -> Result<Vec<(i64, Record)>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < n {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("only {} of {n} records arrived within 30 s", out.len()).into());
        }
        let (batch, _) = p.fetch_records(out.len() as i64, 1..1_000_000, 500).await?;
        out.extend(batch.into_iter().map(|r| (r.offset, r.record)));
    }
    out.truncate(n);
    Ok(out)
}

fn run_id() -> String {
    format!("run-{}", std::process::id())
}

async fn produce(client: &Client, ns: &str, collector: &str, n: usize) -> Result<String> {
    let pipeline = ExportConfig::new(collector, "orders-producer").install()?;
    let tracer = pipeline.tracer("kafka-pipeline");
    let orders = Dataset::new(ns, ORDERS);
    let p = partition(client, ORDERS).await?;

    let root = Step::new("publish orders", StepKind::Publish)
        .job("orders-producer", run_id())
        .output(&orders)
        .start(&tracer);
    let cx = Context::current_with_span(root);
    let mut spans = Vec::new();
    let mut records = Vec::new();
    for i in 0..n {
        let span = Step::new("publish order", StepKind::Publish)
            .otel_kind(SpanKind::Producer)
            .output(&orders)
            .attribute(KeyValue::new("messaging.system", "kafka"))
            .attribute(KeyValue::new("messaging.destination.name", ORDERS))
            .start_with_context(&tracer, &cx);
        let span_cx = cx.with_span(span);
        let mut headers = BTreeMap::new();
        propagation::inject(&span_cx, &mut KafkaHeaders(&mut headers));
        // Every fourth order is invalid, for the transform job to reject.
        let amount = if i % 4 == 3 { -1 } else { 10 * (i as i64 + 1) };
        records.push(Record {
            key: Some(format!("order-{i}").into_bytes()),
            value: Some(
                json!({"order": i, "amount": amount})
                    .to_string()
                    .into_bytes(),
            ),
            headers,
            timestamp: chrono::Utc::now(),
        });
        spans.push(span_cx);
    }
    let offsets = p.produce(records, Compression::NoCompression).await?;
    let mut ids = Vec::new();
    for (span_cx, offset) in spans.iter().zip(&offsets) {
        let span = span_cx.span();
        span.set_attribute(KeyValue::new(c::OFFSET_START, *offset));
        span.set_attribute(KeyValue::new(c::OFFSET_END, *offset));
        span.set_attribute(KeyValue::new("messaging.kafka.offset", *offset));
        ids.push(span.span_context().span_id().to_string());
        span.end();
    }
    let root = cx.span();
    root.set_attributes(
        Counts {
            records_out: Some(n as i64),
            ..Counts::default()
        }
        .attributes(),
    );
    let (trace_id, root_id) = ids_of(&cx);
    root.end();
    let counts = pipeline.shutdown(Duration::from_secs(10))?;
    Ok(
        json!({"trace_id": trace_id, "root": root_id, "records": ids, "exported": counts.exported})
            .to_string(),
    )
}

async fn transform(client: &Client, ns: &str, collector: &str, n: usize) -> Result<String> {
    let pipeline = ExportConfig::new(collector, "orders-enricher").install()?;
    let tracer = pipeline.tracer("kafka-pipeline");
    let (orders, enriched) = (Dataset::new(ns, ORDERS), Dataset::new(ns, ENRICHED));
    let input = partition(client, ORDERS).await?;
    let output = partition(client, ENRICHED).await?;
    let records = read(&input, n).await?;

    // One span for the batch, in a trace of its own, linked to every record's producer.
    let mut step = Step::new("enrich orders", StepKind::Transform)
        .job("orders-enricher", run_id())
        .otel_kind(SpanKind::Consumer)
        .input(&orders)
        .output(&enriched)
        .attribute(KeyValue::new(c::PARTITION, "0"))
        .attribute(KeyValue::new(c::OFFSET_START, records[0].0))
        .attribute(KeyValue::new(c::OFFSET_END, records[records.len() - 1].0));
    for (_, r) in &records {
        let mut headers = r.headers.clone();
        let upstream = propagation::extract(&KafkaHeaders(&mut headers));
        step = step.data_dependency(upstream.span().span_context().clone(), Some(&orders));
    }
    let root = step.start_with_context(&tracer, &Context::new());
    let cx = Context::new().with_span(root);

    let mut valid = Vec::new();
    let mut rejected = 0i64;
    for (offset, r) in &records {
        let mut span = Step::new("validate order", StepKind::Validate)
            .attribute(KeyValue::new(c::OFFSET_START, *offset))
            .start_with_context(&tracer, &cx);
        let value: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap_or(b"{}"))?;
        if value["amount"].as_i64().unwrap_or(-1) < 0 {
            rejected += 1;
            span.set_status(Status::error("negative amount"));
        } else {
            valid.push(value);
        }
        span.end();
    }

    let mut write = Step::new("write orders_enriched", StepKind::Materialize)
        .output(&enriched)
        .start_with_context(&tracer, &cx);
    let mut headers = BTreeMap::new();
    propagation::inject(&cx, &mut KafkaHeaders(&mut headers));
    let out: Vec<Record> = valid
        .iter()
        .map(|v| Record {
            key: None,
            value: Some(
                json!({"order": v["order"], "amount": v["amount"], "currency": "EUR"})
                    .to_string()
                    .into_bytes(),
            ),
            headers: headers.clone(),
            timestamp: chrono::Utc::now(),
        })
        .collect();
    match tokio::time::timeout(
        Duration::from_secs(10),
        output.produce(out, Compression::NoCompression),
    )
    .await
    {
        Ok(result) => {
            result?;
        }
        Err(_) => set_timeout(&mut write, "writing orders_enriched took longer than 10 s"),
    }
    record_counts(
        &mut write,
        Counts {
            records_out: Some(valid.len() as i64),
            ..Counts::default()
        },
    );
    write.end();

    let root = cx.span();
    root.set_attributes(
        Counts {
            records_in: Some(records.len() as i64),
            records_out: Some(valid.len() as i64),
            records_rejected: Some(rejected),
            ..Counts::default()
        }
        .attributes(),
    );
    let (trace_id, root_id) = ids_of(&cx);
    root.end();
    pipeline.shutdown(Duration::from_secs(10))?;
    Ok(
        json!({"trace_id": trace_id, "root": root_id, "valid": valid.len(), "rejected": rejected})
            .to_string(),
    )
}

async fn aggregate(
    client: &Client,
    ns: &str,
    collector: &str,
    n: usize,
    file: &str,
) -> Result<String> {
    let pipeline = ExportConfig::new(collector, "orders-aggregator").install()?;
    let tracer = pipeline.tracer("kafka-pipeline");
    let input = partition(client, ENRICHED).await?;
    let records = read(&input, n).await?;
    // The transform job that wrote the records: this job continues from it.
    let mut headers = records
        .first()
        .map(|(_, r)| r.headers.clone())
        .unwrap_or_default();
    let upstream = propagation::extract(&KafkaHeaders(&mut headers));
    let root = Step::new("aggregate order totals", StepKind::Aggregate)
        .job("orders-aggregator", run_id())
        .input(&Dataset::new(ns, ENRICHED))
        .output(&Dataset::new("file://", file))
        .follows_from(upstream.span().span_context().clone())
        .counts(Counts {
            records_in: Some(records.len() as i64),
            ..Counts::default()
        })
        .start_with_context(&tracer, &Context::new());
    let cx = Context::new().with_span(root);
    let total: i64 = records
        .iter()
        .filter_map(|(_, r)| serde_json::from_slice::<serde_json::Value>(r.value.as_deref()?).ok())
        .filter_map(|v| v["amount"].as_i64())
        .sum();
    let mut write = Step::new("write totals", StepKind::Materialize)
        .output(&Dataset::new("file://", file))
        .start_with_context(&tracer, &cx);
    std::fs::write(
        file,
        json!({"orders": records.len(), "total": total}).to_string(),
    )?;
    record_counts(
        &mut write,
        Counts {
            records_out: Some(1),
            ..Counts::default()
        },
    );
    write.end();
    let (trace_id, root_id) = ids_of(&cx);
    cx.span().end();
    pipeline.shutdown(Duration::from_secs(10))?;
    Ok(json!({"trace_id": trace_id, "root": root_id, "total": total}).to_string())
}

fn ids_of(cx: &Context) -> (String, String) {
    let sc = cx.span().span_context().clone();
    (sc.trace_id().to_string(), sc.span_id().to_string())
}
