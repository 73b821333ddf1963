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

/// One pipeline trace: a root ingest, then steps; every fifth trace has a fan-in join.
fn trace(rng: &mut StdRng, n: usize, base_ns: i64) -> (String, Vec<Value>) {
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
        for i in 0..traces {
            let base = start_base + (i as i64) * 3_000_000;
            let (id, spans) = trace(&mut rng, args.spans_per_trace, base);
            trace_ids.push(id);
            for s in spans {
                pending.push(s);
                if pending.len() == args.batch {
                    let body = serde_json::to_vec(&json!({ "spans": pending }))?;
                    total_bytes += body.len();
                    bodies.push(body.into());
                    pending.clear();
                }
            }
        }
        if !pending.is_empty() {
            let body = serde_json::to_vec(&json!({ "spans": pending }))?;
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
        let cpu_before = args.server_pid.map(cpu_seconds).transpose()?;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (bodies, next, client) = (bodies.clone(), next.clone(), client.clone());
            let url = format!("{}/api/v1/spans", args.ingest);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await?;
                    if r.status() != 202 {
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
        println!(
            "\n## Ingest (native JSON, {} spans/request, {} connections)",
            args.batch, args.concurrency
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
    }

    if args.queries > 0 {
        if trace_ids.is_empty() {
            bail!(
                "--spans 0 needs stored traces from a previous run with the same --seed; not supported yet"
            );
        }
        let pick: Vec<String> = (0..args.queries)
            .map(|_| {
                let id = &trace_ids[rng.random_range(0..trace_ids.len())];
                format!("{}/api/v1/traces/{id}", args.query)
            })
            .collect();
        let (p50, p99) = timed_gets(&client, &pick).await?;
        println!("\n## Queries ({} requests each, sequential)", args.queries);
        println!("| query | p50 | p99 |\n|---|---|---|");
        println!("| get-trace (random id) | {p50:.2} ms | {p99:.2} ms |");
        let searches: &[(&str, &str)] = &[
            ("search service", "service=spark-etl&limit=20"),
            (
                "search service+operation",
                "service=spark-etl&operation=join-step-4&limit=20",
            ),
            (
                "search service+min_duration",
                "service=warehouse-loader&min_duration=1500ms&limit=20",
            ),
            (
                "search service+status=ERROR",
                "service=quality-checks&status=ERROR&limit=20",
            ),
            ("search time range only", "limit=20"),
        ];
        for (name, q) in searches {
            let urls: Vec<String> = (0..args.queries.min(500))
                .map(|_| {
                    let end = rfc3339(now_ns - rng.random_range(0..3_000_000_000_000i64));
                    format!("{}/api/v1/traces?{q}&end={end}", args.query)
                })
                .collect();
            let (p50, p99) = timed_gets(&client, &urls).await?;
            println!("| {name} (+ random end) | {p50:.2} ms | {p99:.2} ms |");
        }
    }
    Ok(())
}
