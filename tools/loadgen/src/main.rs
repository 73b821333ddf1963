//! `datatracing-loadgen`: measures a running DataTracing server from the outside.
//!
//! 1. Ingest: pre-encodes realistic pipeline traces as native JSON batches (before the clock
//!    starts), posts them with N concurrent connections, and reports spans/s plus, given the
//!    server's pid, spans per server CPU-second (read from /proc).
//! 2. Queries: get-trace on random ingested trace ids, and several searches, reporting
//!    p50/p99 latency.
//!
//! Run against a release build; see docs/benchmarks.md for the exact commands.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Ingest and query load against a running DataTracing server")]
struct Args {
    /// Collector base URL.
    #[arg(long, default_value = "http://127.0.0.1:4318")]
    ingest: String,
    /// Query base URL.
    #[arg(long, default_value = "http://127.0.0.1:16686")]
    query: String,
    /// Spans to ingest (0 skips ingest and only queries).
    #[arg(long, default_value_t = 1_000_000)]
    spans: usize,
    /// Spans per request.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Concurrent ingest connections.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Spans per trace.
    #[arg(long, default_value_t = 10)]
    spans_per_trace: usize,
    /// get-trace requests (and requests per search kind).
    #[arg(long, default_value_t = 2_000)]
    queries: usize,
    /// PID of the server, to report spans per server CPU-second.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Ingest protocol: native (JSON), otlp-proto or otlp-json (OTLP/HTTP `/v1/traces`).
    #[arg(long, default_value = "native")]
    protocol: String,
    /// Target rate in spans per second (0: as fast as the server takes them).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// With `--spans 0`: the hours before now searched for stored traces to query.
    #[arg(long, default_value_t = 8)]
    discover_hours: i64,
    /// Random seed (traces are reproducible).
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const SERVICES: &[&str] = &[
    "kafka-ingest",
    "cdc-ingest",
    "spark-etl",
    "dbt-models",
    "quality-checks",
    "warehouse-loader",
    "feature-store",
    "reverse-etl",
];
const KINDS: &[&str] = &[
    "INGEST",
    "TRANSFORM",
    "ENRICH",
    "VALIDATE",
    "JOIN",
    "AGGREGATE",
    "MATERIALIZE",
    "PUBLISH",
    "SERVE",
];

fn hex(rng: &mut StdRng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

fn rfc3339(nanos: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// One pipeline trace: a root ingest, then steps with a two-input fan-in join every fifth
/// span. `upstream` are the links of the root span to earlier traces (lineage).
fn trace(rng: &mut StdRng, n: usize, base_ns: i64, upstream: Vec<Value>) -> (String, Vec<Value>) {
    let trace_id = hex(rng, 16);
    let ids: Vec<String> = (0..n).map(|_| hex(rng, 8)).collect();
    let mut spans = Vec::with_capacity(n);
    let mut t = base_ns;
    for i in 0..n {
        let service = SERVICES[(i + rng.random_range(0..2)) % SERVICES.len()];
        let kind = KINDS[i % KINDS.len()];
        let dur: i64 = rng.random_range(1_000_000..2_000_000_000);
        let error = rng.random_ratio(1, 50);
        let mut s = json!({
            "trace_id": trace_id, "span_id": ids[i], "service": service,
            "operation": format!("{}-step-{}", kind.to_lowercase(), i % 7),
            "kind": kind, "start_time": rfc3339(t), "end_time": rfc3339(t + dur),
            "status": if error { json!({"code": "ERROR", "message": "row count mismatch"}) } else { json!("OK") },
            "attributes": {
                "pipeline": format!("pipeline-{}", rng.random_range(0..50)),
                "dataset": format!("dataset_{}", rng.random_range(0..500)),
                "records.in": rng.random_range(0..1_000_000),
                "records.out": rng.random_range(0..1_000_000),
                "bytes": rng.random_range(0..1_000_000_000i64),
                "partition": format!("dt=2026-11-{:02}", rng.random_range(1..29)),
                "retry": rng.random_range(0..3),
                "ratio": rng.random::<f64>(),
                "owner": "data-platform",
                "schema.version": "v7"
            }
        });
        if i > 0 {
            s["parent_id"] = json!(ids[(i - 1) / 2]);
        } else if !upstream.is_empty() {
            s["links"] = json!(upstream);
        }
        if i >= 3 && i % 5 == 3 {
            s["links"] = json!([
                {"trace_id": trace_id, "span_id": ids[i - 1], "type": "DATA_DEPENDENCY"},
                {"trace_id": trace_id, "span_id": ids[i - 2], "type": "DATA_DEPENDENCY"}
            ]);
        }
        spans.push(s);
        t += dur / 2;
    }
    (trace_id, spans)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn nanos(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_default();
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0))
        .unwrap_or(0)
}

fn kv(key: &str, v: &Value) -> KeyValue {
    let value = match v {
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) if n.is_i64() => any_value::Value::IntValue(n.as_i64().unwrap_or(0)),
        Value::Number(n) => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
        other => any_value::Value::StringValue(other.to_string()),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// The same spans as OTLP: one resource per service, pipeline kinds and link types in the
/// attributes DataTracing reads.
fn to_otlp(spans: &[Value]) -> ExportTraceServiceRequest {
    let mut by_service: std::collections::BTreeMap<String, Vec<otlp::Span>> = Default::default();
    for s in spans {
        let mut attributes: Vec<KeyValue> = s["attributes"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| kv(k, v)).collect())
            .unwrap_or_default();
        attributes.push(kv("datatracing.span.kind", &s["kind"]));
        let status = match &s["status"] {
            Value::Object(o) => otlp::Status {
                code: otlp::status::StatusCode::Error as i32,
                message: o
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            },
            _ => otlp::Status {
                code: otlp::status::StatusCode::Ok as i32,
                message: String::new(),
            },
        };
        let links = s["links"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .map(|l| otlp::span::Link {
                        trace_id: unhex(l["trace_id"].as_str().unwrap_or_default()),
                        span_id: unhex(l["span_id"].as_str().unwrap_or_default()),
                        attributes: vec![kv("datatracing.link.type", &json!("data_dependency"))],
                        ..Default::default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        by_service
            .entry(s["service"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(otlp::Span {
                trace_id: unhex(s["trace_id"].as_str().unwrap_or_default()),
                span_id: unhex(s["span_id"].as_str().unwrap_or_default()),
                parent_span_id: s["parent_id"].as_str().map(unhex).unwrap_or_default(),
                name: s["operation"].as_str().unwrap_or_default().to_string(),
                kind: otlp::span::SpanKind::Internal as i32,
                start_time_unix_nano: nanos(&s["start_time"]),
                end_time_unix_nano: nanos(&s["end_time"]),
                attributes,
                links,
                status: Some(status),
                ..Default::default()
            });
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| otlp::ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", &json!(service))],
                    ..Default::default()
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn encode(protocol: &str, spans: &[Value]) -> anyhow::Result<Vec<u8>> {
    Ok(match protocol {
        "native" => serde_json::to_vec(&json!({ "spans": spans }))?,
        "otlp-proto" => to_otlp(spans).encode_to_vec(),
        "otlp-json" => serde_json::to_vec(&to_otlp(spans))?,
        other => bail!("unknown protocol {other}"),
    })
}

/// `datatracing_collector_spans_written_total` from the collector's /metrics.
async fn written_total(client: &reqwest::Client, ingest: &str) -> u64 {
    let Ok(r) = client.get(format!("{ingest}/metrics")).send().await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("datatracing_collector_spans_written_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc/<pid>/stat")?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    Ok(ticks / 100.0)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

async fn timed_gets(client: &reqwest::Client, urls: &[String]) -> anyhow::Result<(f64, f64)> {
    let mut lat = Vec::with_capacity(urls.len());
    for u in urls {
        let started = Instant::now();
        let r = client.get(u).send().await?;
        let status = r.status();
        let _ = r.bytes().await?;
        lat.push(started.elapsed());
        if !status.is_success() {
            bail!("{u} answered {status}");
        }
    }
    lat.sort();
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let now_ns = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos())?;
    let start_base = now_ns - 3_600_000_000_000;

    let mut trace_ids = Vec::new();
    if args.spans > 0 {
        print!("encoding {} spans... ", args.spans);
        let mut bodies: Vec<bytes::Bytes> = Vec::new();
        let mut pending: Vec<Value> = Vec::with_capacity(args.batch);
        let mut total_bytes = 0usize;
        let traces = args.spans.div_ceil(args.spans_per_trace);
        // Lineage across traces, as a chain of batch jobs: each trace's root follows from
        // the previous trace's last span, and every fourth also reads the output of the
        // trace three before (a DATA_DEPENDENCY), so lineage walks have depth and fan-in.
        let mut last_spans: Vec<(String, String)> = Vec::with_capacity(traces);
        for i in 0..traces {
            let base = start_base + (i as i64) * 3_000_000;
            let mut upstream = Vec::new();
            if let Some((t, s)) = i.checked_sub(1).and_then(|j| last_spans.get(j)) {
                upstream.push(json!({"trace_id": t, "span_id": s, "type": "FOLLOWS_FROM"}));
            }
            if i % 4 == 0
                && let Some((t, s)) = i.checked_sub(3).and_then(|j| last_spans.get(j))
            {
                upstream.push(json!({"trace_id": t, "span_id": s, "type": "DATA_DEPENDENCY"}));
            }
            let (id, spans) = trace(&mut rng, args.spans_per_trace, base, upstream);
            let last = spans
                .last()
                .and_then(|s| s["span_id"].as_str())
                .unwrap_or_default()
                .to_owned();
            last_spans.push((id.clone(), last));
            trace_ids.push((id, base));
            for s in spans {
                pending.push(s);
                if pending.len() == args.batch {
                    let body = encode(&args.protocol, &pending)?;
                    total_bytes += body.len();
                    bodies.push(body.into());
                    pending.clear();
                }
            }
        }
        if !pending.is_empty() {
            let body = encode(&args.protocol, &pending)?;
            total_bytes += body.len();
            bodies.push(body.into());
        }
        println!(
            "{} requests, {:.0} bytes/span",
            bodies.len(),
            total_bytes as f64 / args.spans as f64
        );

        let bodies = Arc::new(bodies);
        let next = Arc::new(AtomicUsize::new(0));
        let written_before = written_total(&client, &args.ingest).await;
        let cpu_before = args.server_pid.map(cpu_seconds).transpose()?;
        let started = Instant::now();
        let t0 = tokio::time::Instant::now();
        // At a fixed rate, request i starts at t0 + i * batch / rate.
        let interval =
            (args.rate > 0).then(|| Duration::from_secs_f64(args.batch as f64 / args.rate as f64));
        let (path, content_type, ok_status) = match args.protocol.as_str() {
            "native" => ("/api/v1/spans", "application/json", 202),
            "otlp-proto" => ("/v1/traces", "application/x-protobuf", 200),
            "otlp-json" => ("/v1/traces", "application/json", 200),
            other => bail!("unknown protocol {other}"),
        };
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (bodies, next, client) = (bodies.clone(), next.clone(), client.clone());
            let url = format!("{}{path}", args.ingest);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    if let Some(dt) = interval {
                        tokio::time::sleep_until(t0 + dt * i as u32).await;
                    }
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .header("content-type", content_type)
                        .body(body.clone())
                        .send()
                        .await?;
                    if r.status() != ok_status {
                        bail!(
                            "ingest answered {}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                    }
                    lat.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(lat)
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        let wall = started.elapsed().as_secs_f64();
        lat.sort();
        let rate = if args.rate > 0 {
            format!("{} spans/s target", args.rate)
        } else {
            "max rate".into()
        };
        println!(
            "\n## Ingest ({}, {} spans/request, {} connections, {rate})",
            args.protocol, args.batch, args.concurrency
        );
        println!("| metric | value |\n|---|---|");
        println!("| spans | {} |", args.spans);
        println!("| wall time | {wall:.2} s |");
        println!("| throughput | {:.0} spans/s |", args.spans as f64 / wall);
        println!(
            "| request latency p50 / p99 | {:.1} ms / {:.1} ms |",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        if let (Some(pid), Some(before)) = (args.server_pid, cpu_before) {
            let cpu = cpu_seconds(pid)? - before;
            println!("| server CPU time | {cpu:.2} s |");
            println!(
                "| spans per server CPU-second | {:.0} |",
                args.spans as f64 / cpu
            );
            if let Some(rss) = rss_mib(pid) {
                println!("| server RSS after ingest | {rss:.0} MiB |");
            }
        }
        // Sent versus stored: wait (bounded) for the writer to account for every span.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stored = written_total(&client, &args.ingest)
            .await
            .saturating_sub(written_before);
        while stored < args.spans as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stored = written_total(&client, &args.ingest)
                .await
                .saturating_sub(written_before);
        }
        println!("| sent / stored | {} / {stored} |", args.spans);
        if let (Some(pid), Some(before)) = (args.server_pid, cpu_before) {
            // With tail sampling, spans are written after their decision: count that work too.
            let cpu = cpu_seconds(pid)? - before;
            println!(
                "| spans per server CPU-second, until stored | {:.0} |",
                args.spans as f64 / cpu
            );
        }
    }

    if args.queries > 0 {
        if trace_ids.is_empty() {
            trace_ids = discover(&client, &args.query, now_ns, args.discover_hours).await?;
            println!(
                "discovered {} stored traces over the last {} h",
                trace_ids.len(),
                args.discover_hours
            );
        }
        queries(&client, &args, &trace_ids, &mut rng).await?;
    }
    Ok(())
}

/// Parses a v1 timestamp (RFC 3339) to Unix nanoseconds.
fn parse_ns(v: &Value) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339)
            .ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

/// Stored traces (id, start) for a query-only run: one search page at each of 40 random
/// points of the window, so the sample spreads over the data rather than its newest end.
async fn discover(
    client: &reqwest::Client,
    query: &str,
    now_ns: i64,
    hours: i64,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut rng = StdRng::seed_from_u64(7);
    let window = hours.max(1) * 3_600_000_000_000;
    let mut found = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let end = now_ns - rng.random_range(0..window);
        let url = format!(
            "{query}/api/v1/traces?limit=100&start={}&end={}",
            rfc3339(now_ns - window),
            rfc3339(end)
        );
        let page: Value = client
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for t in page["traces"].as_array().into_iter().flatten() {
            if let (Some(id), Some(start)) = (t["trace_id"].as_str(), parse_ns(&t["start_time"])) {
                found.insert(id.to_owned(), start);
            }
        }
    }
    if found.is_empty() {
        bail!("no stored traces in the last {hours} h at {query}: ingest first (--spans N)");
    }
    Ok(found.into_iter().collect())
}

/// GETs `url` and returns its JSON body, failing on any non-success status.
async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<(Duration, Value)> {
    let started = Instant::now();
    let r = client.get(url).send().await?;
    let status = r.status();
    let body = r.bytes().await?;
    let took = started.elapsed();
    if !status.is_success() {
        bail!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok((took, serde_json::from_slice(&body)?))
}

fn row(name: &str, lat: &mut [Duration], extra: &str) -> (f64, f64) {
    lat.sort();
    let (p50, p99) = (percentile(lat, 0.5), percentile(lat, 0.99));
    println!("| {name} | {p50:.2} ms | {p99:.2} ms | {extra} |");
    (p50, p99)
}

/// Issue 10's query set over HTTP, sequential: get-trace, the v1 searches (first page and
/// the page after through `next_cursor`), services and operations, lineage at depth 3, and
/// Jaeger's `/api/traces` against the same v1 search on the same windows.
async fn queries(
    client: &reqwest::Client,
    args: &Args,
    traces: &[(String, i64)],
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let q = &args.query;
    let n = args.queries;
    let pick = |rng: &mut StdRng| traces[rng.random_range(0..traces.len())].clone();
    // A one-hour window around a stored trace's start, so every search has data in range.
    let window = |start: i64| (start - 1_800_000_000_000, start + 1_800_000_000_000);
    println!("\n## Queries ({n} requests each, sequential, over HTTP)");
    println!("| query | p50 | p99 | results |\n|---|---|---|---|");

    let urls: Vec<String> = (0..n)
        .map(|_| format!("{q}/api/v1/traces/{}", pick(rng).0))
        .collect();
    let (p50, p99) = timed_gets(client, &urls).await?;
    println!("| get-trace (random id) | {p50:.2} ms | {p99:.2} ms | 1 trace |");

    let searches: &[(&str, &str)] = &[
        ("search service", "service=spark-etl"),
        (
            "search service+operation",
            "service=quality-checks&operation=join-step-4",
        ),
        (
            "search service+min_duration",
            "service=warehouse-loader&min_duration=1500ms",
        ),
        (
            "search service+status=ERROR",
            "service=quality-checks&status=ERROR",
        ),
        ("search time window only", ""),
    ];
    for (name, filter) in searches {
        let (mut first, mut second, mut hits) = (Vec::new(), Vec::new(), 0usize);
        for _ in 0..n {
            let (s, e) = window(pick(rng).1);
            let url = format!(
                "{q}/api/v1/traces?{filter}&limit=20&start={}&end={}",
                rfc3339(s),
                rfc3339(e)
            );
            let (took, page) = get_json(client, &url).await?;
            first.push(took);
            hits += page["traces"].as_array().map_or(0, Vec::len);
            if let Some(cursor) = page["next_cursor"].as_str() {
                let (took, page) = get_json(client, &format!("{url}&cursor={cursor}")).await?;
                second.push(took);
                hits += page["traces"].as_array().map_or(0, Vec::len);
            }
        }
        let avg = format!(
            "{:.1} traces/request",
            hits as f64 / (first.len() + second.len()) as f64
        );
        row(&format!("{name}, 1 h, page 1"), &mut first, &avg);
        let pages = format!("{} pages", second.len());
        row(
            &format!("{name}, 1 h, page 2 (cursor)"),
            &mut second,
            &pages,
        );
    }

    let (mut services, mut operations, mut names) = (Vec::new(), Vec::new(), 0usize);
    for _ in 0..n {
        let (s, e) = window(pick(rng).1);
        let range = format!("start={}&end={}", rfc3339(s), rfc3339(e));
        let (took, body) = get_json(client, &format!("{q}/api/v1/services?{range}")).await?;
        services.push(took);
        names += body["services"].as_array().map_or(0, Vec::len);
        let (took, _) = get_json(
            client,
            &format!("{q}/api/v1/services/quality-checks/operations?{range}"),
        )
        .await?;
        operations.push(took);
    }
    row(
        "services, 1 h window",
        &mut services,
        &format!("{:.1} services", names as f64 / n as f64),
    );
    row("operations of a service, 1 h window", &mut operations, "");

    for direction in ["upstream", "downstream", "both"] {
        let (mut lat, mut nodes) = (Vec::new(), 0usize);
        for _ in 0..n {
            let url = format!(
                "{q}/api/v1/traces/{}/lineage?direction={direction}&depth=3",
                pick(rng).0
            );
            let (took, body) = get_json(client, &url).await?;
            lat.push(took);
            nodes += body["nodes"].as_array().map_or(0, Vec::len);
        }
        row(
            &format!("lineage depth 3, {direction}"),
            &mut lat,
            &format!("{:.1} traces", nodes as f64 / n as f64),
        );
    }

    // The same search through both APIs, alternating so drift in the machine's load hits both.
    let (mut ours, mut jaeger, mut ours_hits, mut jaeger_hits) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..n {
        let (s, e) = window(pick(rng).1);
        let (took, page) = get_json(
            client,
            &format!(
                "{q}/api/v1/traces?service=spark-etl&limit=20&start={}&end={}",
                rfc3339(s),
                rfc3339(e)
            ),
        )
        .await?;
        ours.push(took);
        ours_hits += page["traces"].as_array().map_or(0, Vec::len);
        let (took, body) = get_json(
            client,
            &format!(
                "{q}/api/traces?service=spark-etl&limit=20&start={}&end={}",
                s / 1000,
                e / 1000
            ),
        )
        .await?;
        jaeger.push(took);
        jaeger_hits += body["data"].as_array().map_or(0, Vec::len);
    }
    let (_, ours_p99) = row(
        "v1 search service (paired)",
        &mut ours,
        &format!("{:.1} traces", ours_hits as f64 / n as f64),
    );
    let (_, jaeger_p99) = row(
        "Jaeger /api/traces service (paired)",
        &mut jaeger,
        &format!("{:.1} traces (with spans)", jaeger_hits as f64 / n as f64),
    );
    println!(
        "\nJaeger /api/traces p99 / v1 search p99: {:.2}x (target at most 1.2x)",
        jaeger_p99 / ours_p99.max(1e-9)
    );
    Ok(())
}
