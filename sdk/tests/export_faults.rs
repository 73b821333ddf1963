//! The export preset against the real collector (the `datatracing` binary) under faults,
//! counting what the SDK says it sent against what the collector stored:
//!
//! - the collector is stopped and restarted on the same port: nothing is lost while the
//!   queue holds the spans made meanwhile;
//! - the collector answers 429 and 503 with `Retry-After`: the exporter waits as told and
//!   nothing is lost;
//! - the collector is slow to answer (within the export deadline): nothing is lost;
//! - the queue bound is exceeded while the collector is unreachable: the drop counter equals
//!   exactly the spans the collector never stored.
//!
//! The 429/503 and slow answers come from a small fault proxy in front of the real collector
//! (the collector answers 429 only under real overload, which a test cannot time).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datatracing_e2e::{Server, binary};
use datatracing_sdk::{ExportConfig, ExportCounts, Pipeline, Step, StepKind};
use opentelemetry::Context;
use opentelemetry::trace::{Span as _, TraceContextExt, TraceId};

const PER_TRACE: usize = 100;

/// `datatracing all-in-one` on `data_dir` with the collector on a fixed port (so a restart
/// comes back where the exporter sends).
fn start_server(data_dir: &Path, ingest_port: u16) -> Server {
    let mut c = Command::new(binary());
    c.args([
        "all-in-one",
        "--ingest-addr",
        &format!("127.0.0.1:{ingest_port}"),
        "--grpc-addr",
        "127.0.0.1:0",
        "--query-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .env_remove("DATATRACING_CONFIG");
    Server::spawn(c, true, true)
}

/// Stops the server the way an orchestrator does (SIGTERM) and waits for it to exit.
fn stop_server(mut server: Server) {
    let status = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `traces` traces of [`PER_TRACE`] spans each: an INGEST root and TRANSFORM children.
fn emit(pipeline: &Pipeline, traces: usize) -> Vec<TraceId> {
    let tracer = pipeline.tracer("export-faults");
    (0..traces)
        .map(|i| {
            let root = Step::new(format!("batch {i}"), StepKind::Ingest).start(&tracer);
            let trace_id = root.span_context().trace_id();
            let cx = Context::current_with_span(root);
            for j in 1..PER_TRACE {
                Step::new(format!("record {j}"), StepKind::Transform)
                    .start_with_context(&tracer, &cx)
                    .end();
            }
            cx.span().end();
            trace_id
        })
        .collect()
}

/// Spans the query service returns for the traces.
async fn stored(query: SocketAddr, traces: &[TraceId]) -> usize {
    let client = reqwest::Client::new();
    let mut n = 0;
    for t in traces {
        let r = client
            .get(format!("http://{query}/api/v1/traces/{t}"))
            .send()
            .await
            .unwrap();
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            continue;
        }
        let v: serde_json::Value = r.json().await.unwrap();
        n += v["spans"].as_array().map_or(0, Vec::len);
    }
    n
}

/// Waits (bounded) until the store holds `want` spans of the traces, then returns what it
/// holds (the collector acknowledges before its writer commits).
async fn stored_eventually(query: SocketAddr, traces: &[TraceId], want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = stored(query, traces).await;
        if n >= want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shutdown(pipeline: Pipeline) -> ExportCounts {
    tokio::task::spawn_blocking(move || pipeline.shutdown(Duration::from_secs(60)).unwrap())
        .await
        .unwrap()
}

fn config(endpoint: String) -> ExportConfig {
    let mut c = ExportConfig::new(endpoint, "export-faults");
    c.scheduled_delay = Duration::from_millis(50);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_briefly_down_loses_nothing_within_the_queue_bound() {
    let dir = tempfile::tempdir().unwrap();
    let port = datatracing_testkit::free_port();
    let server = start_server(dir.path(), port);
    let pipeline = config(format!("http://127.0.0.1:{port}"))
        .install()
        .unwrap();

    let mut traces = emit(&pipeline, 5);
    let pipeline = tokio::task::spawn_blocking(move || {
        pipeline.flush().unwrap();
        pipeline
    })
    .await
    .unwrap();
    assert_eq!(pipeline.counts().exported, 500);
    stop_server(server);

    // Down: these spans wait in the queue while the exporter retries.
    traces.extend(emit(&pipeline, 20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = pipeline.counts();
    assert_eq!(during.exported, 500, "nothing can be exported while down");
    assert_eq!(during.failed, 0);

    let server = start_server(dir.path(), port);
    let counts = shutdown(pipeline).await;
    assert_eq!(
        counts,
        ExportCounts {
            ended: 2500,
            exported: 2500,
            failed: 0,
            dropped: 0
        }
    );
    assert_eq!(stored_eventually(server.query(), &traces, 2500).await, 2500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_is_counted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let port = datatracing_testkit::free_port();
    // Nothing listens yet: the first export blocks in its retries while spans pile up.
    let mut c = config(format!("http://127.0.0.1:{port}"));
    c.max_queue_size = 300;
    c.max_export_batch_size = 100;
    let pipeline = c.install().unwrap();
    let traces = emit(&pipeline, 20);
    let ended = pipeline.counts();
    assert_eq!(ended.ended, 2000);
    assert!(
        ended.dropped >= 2000 - 300 - 100,
        "at most the queue and one batch in flight are kept: {ended:?}"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = start_server(dir.path(), port);
    let counts = shutdown(pipeline).await;
    assert_eq!(counts.failed, 0, "{counts:?}");
    assert_eq!(counts.ended, counts.exported + counts.dropped, "{counts:?}");
    assert!(counts.dropped > 0, "{counts:?}");
    let kept = counts.exported as usize;
    assert_eq!(
        stored_eventually(server.query(), &traces, kept).await,
        kept,
        "the collector stored exactly what the SDK says it exported: {counts:?}"
    );
}

/// What the fault proxy answers next; an empty plan forwards to the collector.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Refuse(StatusCode, &'static str),
    Delay(Duration),
}

#[derive(Clone)]
struct Proxy {
    target: SocketAddr,
    plan: Arc<Mutex<VecDeque<Fault>>>,
    /// When each request arrived and what it was answered.
    seen: Arc<Mutex<Vec<(Instant, u16)>>>,
    client: reqwest::Client,
}

async fn proxy_handler(State(p): State<Proxy>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = Instant::now();
    let fault = p.plan.lock().unwrap().pop_front();
    match fault {
        Some(Fault::Refuse(status, retry_after)) => {
            p.seen.lock().unwrap().push((arrived, status.as_u16()));
            return (status, [(header::RETRY_AFTER, retry_after)], "busy").into_response();
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    let mut req = p
        .client
        .post(format!("http://{}/v1/traces", p.target))
        .body(body);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        req = req.header(header::CONTENT_TYPE, ct.as_bytes());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    p.seen.lock().unwrap().push((arrived, status));
    let body = r.bytes().await.unwrap();
    (StatusCode::from_u16(status).unwrap(), body).into_response()
}

async fn start_proxy(target: SocketAddr, plan: Vec<Fault>) -> (SocketAddr, Proxy) {
    let proxy = Proxy {
        target,
        plan: Arc::new(Mutex::new(plan.into())),
        seen: Arc::default(),
        client: reqwest::Client::new(),
    };
    let app = axum::Router::new()
        .fallback(proxy_handler)
        .with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_answers_are_retried_after_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = datatracing_e2e::Server::start(dir.path());
    let (addr, proxy) = start_proxy(
        server.ingest(),
        vec![
            Fault::Refuse(StatusCode::TOO_MANY_REQUESTS, "1"),
            Fault::Refuse(StatusCode::SERVICE_UNAVAILABLE, "1"),
        ],
    )
    .await;
    let mut c = config(format!("http://{addr}"));
    c.max_export_batch_size = 1000;
    let pipeline = c.install().unwrap();
    let traces = emit(&pipeline, 3);
    let counts = shutdown(pipeline).await;
    assert_eq!(
        counts,
        ExportCounts {
            ended: 300,
            exported: 300,
            failed: 0,
            dropped: 0
        }
    );
    let seen = proxy.seen.lock().unwrap().clone();
    let codes: Vec<u16> = seen.iter().map(|s| s.1).collect();
    assert_eq!(&codes[..3], [429, 503, 200], "{codes:?}");
    for pair in seen.windows(2).take(2) {
        let gap = pair[1].0 - pair[0].0;
        // The backoff alone would retry after 100-250 ms.
        assert!(
            gap >= Duration::from_millis(950),
            "retried {gap:?} after Retry-After: 1"
        );
    }
    assert_eq!(stored_eventually(server.query(), &traces, 300).await, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_collector_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = datatracing_e2e::Server::start(dir.path());
    let (addr, proxy) = start_proxy(
        server.ingest(),
        vec![
            Fault::Delay(Duration::from_millis(1500)),
            Fault::Delay(Duration::from_millis(1500)),
        ],
    )
    .await;
    let mut c = config(format!("http://{addr}"));
    c.max_export_batch_size = 100;
    c.export_timeout = Duration::from_secs(5);
    let pipeline = c.install().unwrap();
    let traces = emit(&pipeline, 5);
    let counts = shutdown(pipeline).await;
    assert_eq!(
        counts,
        ExportCounts {
            ended: 500,
            exported: 500,
            failed: 0,
            dropped: 0
        }
    );
    // A slow answer within the deadline is neither a failure nor retried.
    let seen = proxy.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.1 == 200), "{seen:?}");
    assert!(
        proxy.plan.lock().unwrap().is_empty(),
        "both slow answers were given"
    );
    assert_eq!(stored_eventually(server.query(), &traces, 500).await, 500);
}
