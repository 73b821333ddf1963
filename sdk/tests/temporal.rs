//! Propagation through Temporal workflow headers, against a real Temporal dev server
//! (testkit::temporal) and Temporal's own Python SDK tracing interceptor, both ways, with
//! every span exported to the real `datatracing` binary:
//!
//! - a context injected by this SDK (`TemporalHeaders::inject`) and put on a workflow start
//!   is continued by Temporal's interceptor: its workflow and activity spans join our trace
//!   under our span;
//! - the header Temporal's interceptor injects on a workflow start is extracted here
//!   (`TemporalHeaders::extract`) as its StartWorkflow span, and a step started from it joins
//!   the Python trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datatracing_e2e::Server;
use datatracing_sdk::propagation::{TEMPORAL_HEADER, TemporalHeaders, TemporalPayload};
use datatracing_sdk::{ExportConfig, Step, StepKind};
use datatracing_testkit::temporal::Temporal;
use opentelemetry::Context;
use opentelemetry::trace::{Span as _, TraceContextExt};
use serde_json::{Value, json};

fn python(mode: &str, temporal: &Temporal, collector: &str, stdin: &str) -> Value {
    let py = datatracing_testkit::python::python(&[
        "temporalio.contrib.opentelemetry",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    ]);
    let mut child = Command::new(py)
        // The Temporal example's workflow and worker (examples/temporal).
        .arg(datatracing_e2e::workspace_root().join("examples/temporal/orders_workflow.py"))
        .args([mode, &temporal.address(), collector])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python {mode}: {}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        temporal.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The stored trace once it has `spans` spans, bounded.
async fn stored(server: &Server, trace_id: &str, spans: usize) -> Value {
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/traces/{trace_id}", server.query());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        if v["spans"].as_array().map_or(0, Vec::len) >= spans {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} incomplete: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Distinct span ids among the spans Python recorded (a workflow task that is replayed may
/// record a workflow span again under the same id).
fn distinct(spans: &Value) -> usize {
    spans
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["span_id"].as_str().unwrap())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

fn named<'a>(spans: &'a Value, prefix: &str) -> &'a Value {
    spans
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no span {prefix}* in {spans}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_context_is_continued_by_temporals_interceptor() {
    let temporal = Temporal::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let collector = format!("http://{}", server.ingest());
    let pipeline = ExportConfig::new(&collector, "orders-scheduler")
        .install()
        .unwrap();
    let tracer = pipeline.tracer("temporal-interop");
    let span = Step::new("start order workflow", StepKind::Publish)
        .job("orders-scheduler", "run-1")
        .start_with_context(&tracer, &Context::new());
    let cx = Context::new().with_span(span);
    let (trace_id, span_id) = {
        let sc = cx.span().span_context().clone();
        (sc.trace_id().to_string(), sc.span_id().to_string())
    };

    let payload = TemporalHeaders::inject(&cx);
    let given = json!({
        "metadata": payload.metadata.iter()
            .map(|(k, v)| (k.clone(), String::from_utf8(v.clone()).unwrap()))
            .collect::<HashMap<_, _>>(),
        "data": String::from_utf8(payload.data).unwrap(),
    });
    let py = python("continue", &temporal, &collector, &given.to_string());
    assert_eq!(py["result"]["total"], 40);
    cx.span().end();

    // Temporal's interceptor continued our trace: the workflow under our span, the activity
    // below it.
    let spans = &py["spans"];
    assert!(
        spans
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["trace_id"] == trace_id.as_str()),
        "every Temporal span is in our trace: {spans}"
    );
    named(spans, "RunWorkflow:OrderWorkflow");
    let run_activity = named(spans, "RunActivity:enrich");
    let start_activity = named(spans, "StartActivity:enrich");
    assert_eq!(run_activity["parent_id"], start_activity["span_id"]);
    // Every one of them descends from our span.
    let parents: HashMap<&str, &str> = spans
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| Some((s["span_id"].as_str()?, s["parent_id"].as_str()?)))
        .collect();
    for s in spans.as_array().unwrap() {
        let mut at = s["span_id"].as_str().unwrap();
        for _ in 0..parents.len() + 1 {
            match parents.get(at) {
                Some(p) => at = p,
                None => break,
            }
        }
        assert_eq!(
            at, span_id,
            "{} does not descend from our span: {spans}",
            s["name"]
        );
    }

    let counts = tokio::task::spawn_blocking(move || pipeline.shutdown(Duration::from_secs(10)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((counts.exported, counts.dropped, counts.failed), (1, 0, 0));

    // DataTracing holds one trace: our span as the root, Temporal's spans under it.
    let dag = stored(&server, &trace_id, distinct(spans) + 1).await;
    assert_eq!(dag["roots"], json!([span_id]), "{dag}");
    assert_eq!(dag["orphans"], json!([]), "{dag}");
    let services: std::collections::BTreeSet<&str> = dag["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(
        services,
        ["orders-scheduler", "temporal-python"]
            .into_iter()
            .collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporals_interceptor_context_is_extracted_here() {
    let temporal = Temporal::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let collector = format!("http://{}", server.ingest());
    let py = python("inject", &temporal, &collector, "");
    let spans = &py["spans"];
    let start_workflow = named(spans, "StartWorkflow:OrderWorkflow");
    let client_span = named(spans, "python client");

    let raw = &py["result"]["header"];
    let b64 = |s: &Value| {
        let out = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(s.as_str().unwrap().as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        out.stdout
    };
    let payload = TemporalPayload {
        metadata: raw["metadata"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), b64(v)))
            .collect(),
        data: b64(&raw["data"]),
    };
    let headers = HashMap::from([(TEMPORAL_HEADER.to_string(), payload)]);
    let cx = TemporalHeaders::extract(&headers).unwrap();
    let sc = cx.span().span_context().clone();
    assert!(sc.is_valid() && sc.is_remote());
    assert_eq!(
        sc.trace_id().to_string(),
        client_span["trace_id"].as_str().unwrap()
    );
    assert_eq!(
        sc.span_id().to_string(),
        start_workflow["span_id"].as_str().unwrap()
    );

    // A Rust step started from it joins the Python trace under StartWorkflow.
    let pipeline = ExportConfig::new(&collector, "orders-worker-rs")
        .install()
        .unwrap();
    let mut step = Step::new("load order", StepKind::Ingest)
        .start_with_context(&pipeline.tracer("temporal-interop"), &cx);
    let step_id = step.span_context().span_id().to_string();
    step.end();
    tokio::task::spawn_blocking(move || pipeline.shutdown(Duration::from_secs(10)))
        .await
        .unwrap()
        .unwrap();
    let trace_id = client_span["trace_id"].as_str().unwrap();
    let dag = stored(&server, trace_id, distinct(spans) + 1).await;
    let ours = dag["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["span_id"] == step_id.as_str())
        .unwrap_or_else(|| panic!("our step is not in {dag}"));
    assert_eq!(ours["parent_id"], start_workflow["span_id"]);
    assert_eq!(ours["kind"], "INGEST");
    assert_eq!(dag["roots"], json!([client_span["span_id"]]), "{dag}");
}
