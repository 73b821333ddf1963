//! The batch chain example (`src/bin/batch-chain.rs`): three processes, each started by the
//! one before with the trace context only in its environment, against the real `datatracing`
//! binary. The stored trace is one trace of three spans from three services, each job the
//! child of the job that started it, with the step kinds, datasets and counts the jobs set,
//! and the chain's baggage carried to the last job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use datatracing_e2e::Server;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_chain_is_one_trace_through_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_batch-chain"))
        .arg(format!("http://{}", server.ingest()))
        .arg(work.path())
        .args(["extract", "transform", "load"])
        .env_remove("TRACEPARENT")
        .env_remove("TRACESTATE")
        .env_remove("BAGGAGE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    let trace_id = jobs[0]["trace_id"].as_str().unwrap();
    assert!(jobs.iter().all(|j| j["trace_id"] == trace_id), "{jobs:?}");
    let loaded: Vec<i64> =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("load.json")).unwrap())
            .unwrap();
    assert_eq!(loaded, [8, 16, 24, 32, 40]);

    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/traces/{trace_id}", server.query());
    let deadline = Instant::now() + Duration::from_secs(30);
    let dag: Value = loop {
        let v: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        if v["spans"].as_array().map_or(0, Vec::len) >= 3 {
            break v;
        }
        assert!(Instant::now() < deadline, "trace incomplete: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spans = dag["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 3, "{dag}");
    let by_id = |id: &Value| spans.iter().find(|s| s["span_id"] == *id).unwrap();
    let (extract, transform, load) = (
        by_id(&jobs[0]["span_id"]),
        by_id(&jobs[1]["span_id"]),
        by_id(&jobs[2]["span_id"]),
    );
    assert_eq!(extract["kind"], "INGEST");
    assert_eq!(extract["service"], "batch-extract");
    assert_eq!(extract["parent_id"], Value::Null);
    assert_eq!(transform["kind"], "TRANSFORM");
    assert_eq!(transform["service"], "batch-transform");
    assert_eq!(transform["parent_id"], extract["span_id"]);
    assert_eq!(load["kind"], "MATERIALIZE");
    assert_eq!(load["parent_id"], transform["span_id"]);
    // The chain's run id travelled as baggage to every job.
    let run = &extract["attributes"]["datatracing.run.id"];
    assert!(run.as_str().unwrap().starts_with("chain-"));
    assert_eq!(transform["attributes"]["datatracing.run.id"], *run);
    assert_eq!(load["attributes"]["datatracing.run.id"], *run);
    assert_eq!(
        load["attributes"]["datatracing.dataset.inputs"],
        serde_json::json!([format!("file://{}/transform.json", work.path().display())])
    );
    assert_eq!(load["attributes"]["datatracing.records.in"], 5);
    assert_eq!(dag["roots"], serde_json::json!([jobs[0]["span_id"]]));
}
