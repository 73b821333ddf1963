//! End to end: the real `datatracing` binary as a process, real HTTP clients.
//!
//! Ingests a multi-service pipeline trace (fan-in through two DATA_DEPENDENCY links, and a
//! downstream trace linked by FOLLOWS_FROM), fetches the DAG, then SIGKILLs the process while
//! writes are in flight, restarts it on the same data directory and checks that every
//! acknowledged span is there. Also checks SIGTERM drains and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datatracing_e2e::{Server, get_json};
use serde_json::{Value, json};

fn span(
    trace: &str,
    id: &str,
    parent: Option<&str>,
    service: &str,
    op: &str,
    kind: &str,
    start_ms: u64,
) -> Value {
    let start = format!(
        "2026-11-28T10:00:{:02}.{:03}000001Z",
        start_ms / 1000,
        start_ms % 1000
    );
    let end_ms = start_ms + 500;
    let end = format!(
        "2026-11-28T10:00:{:02}.{:03}Z",
        end_ms / 1000,
        end_ms % 1000
    );
    let mut s = json!({
        "trace_id": trace, "span_id": id, "service": service, "operation": op, "kind": kind,
        "start_time": start, "end_time": end, "status": "OK",
        "attributes": {"pipeline": "orders-daily", "records": 1000}
    });
    if let Some(p) = parent {
        s["parent_id"] = json!(p);
    }
    s
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const DOWNSTREAM: &str = "5bf92f3577b34da6a3ce929d0e0e4736";

async fn post(
    client: &reqwest::Client,
    ingest: SocketAddr,
    spans: Vec<Value>,
) -> reqwest::Response {
    client
        .post(format!("http://{ingest}/api/v1/spans"))
        .json(&json!({ "spans": spans }))
        .send()
        .await
        .expect("post")
}

fn pipeline() -> Vec<Vec<Value>> {
    let mut join = span(
        TRACE,
        "000000000000000c",
        Some("000000000000000a"),
        "spark-etl",
        "join orders+customers",
        "JOIN",
        1000,
    );
    join["links"] = json!([
        {"trace_id": TRACE, "span_id": "000000000000000a", "type": "DATA_DEPENDENCY"},
        {"trace_id": TRACE, "span_id": "000000000000000b", "type": "DATA_DEPENDENCY"}
    ]);
    let mut serve = span(
        DOWNSTREAM,
        "00000000000000f1",
        None,
        "feature-api",
        "refresh features",
        "SERVE",
        5000,
    );
    serve["links"] =
        json!([{"trace_id": TRACE, "span_id": "000000000000000f", "type": "FOLLOWS_FROM"}]);
    vec![
        // Each service reports on its own, as in a real pipeline.
        vec![span(
            TRACE,
            "000000000000000a",
            None,
            "kafka-ingest",
            "consume orders",
            "INGEST",
            0,
        )],
        vec![span(
            TRACE,
            "000000000000000b",
            Some("000000000000000a"),
            "cdc-ingest",
            "read customers",
            "INGEST",
            100,
        )],
        vec![
            join,
            span(
                TRACE,
                "000000000000000d",
                Some("000000000000000c"),
                "spark-etl",
                "validate schema",
                "VALIDATE",
                1600,
            ),
        ],
        vec![
            span(
                TRACE,
                "000000000000000e",
                Some("000000000000000c"),
                "warehouse-loader",
                "materialize orders_enriched",
                "MATERIALIZE",
                2200,
            ),
            span(
                TRACE,
                "000000000000000f",
                Some("000000000000000e"),
                "warehouse-loader",
                "publish snapshot",
                "PUBLISH",
                2800,
            ),
        ],
        vec![serve],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_dag_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = Server::start(dir.path());

    for batch in pipeline() {
        let resp = post(&client, server.ingest(), batch.clone()).await;
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["accepted"], batch.len());
    }

    let dag: Value = get_json(
        &client,
        &format!("http://{}/api/v1/traces/{TRACE}", server.query()),
    )
    .await;
    assert_eq!(dag["spans"].as_array().unwrap().len(), 6, "{dag}");
    let fan_in: Vec<&Value> = dag["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "DATA_DEPENDENCY" && e["to"] == "000000000000000c")
        .collect();
    assert_eq!(fan_in.len(), 2, "join has two data dependencies: {dag}");
    assert_eq!(dag["roots"], json!(["000000000000000a"]));
    assert_eq!(dag["summary"]["services"].as_array().unwrap().len(), 4);
    let downstream: Value = get_json(
        &client,
        &format!("http://{}/api/v1/traces/{DOWNSTREAM}", server.query()),
    )
    .await;
    assert_eq!(downstream["cross_trace_links"][0]["target_trace_id"], TRACE);
    assert_eq!(
        downstream["cross_trace_links"][0]["target_span_id"],
        "000000000000000f"
    );
    assert_eq!(downstream["cross_trace_links"][0]["type"], "FOLLOWS_FROM");

    // Load in flight, then SIGKILL. Every span whose request got 202 must survive.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let client = client.clone();
        let ingest = server.ingest();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked: Vec<(String, usize)> = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && i < 10_000 {
                let trace = format!("{:016x}{:016x}", 0xabcd_0000 + w, i + 1);
                let spans: Vec<Value> = (0..50u64)
                    .map(|s| {
                        span(
                            &trace,
                            &format!("{:016x}", s + 1),
                            None,
                            "load",
                            "step",
                            "TRANSFORM",
                            s,
                        )
                    })
                    .collect();
                match client
                    .post(format!("http://{ingest}/api/v1/spans"))
                    .json(&json!({ "spans": spans }))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 => acked.push((trace, 50)),
                    _ => break, // the server is gone: this request was never acknowledged
                }
                i += 1;
            }
            acked
        }));
    }
    // Kill once a good number of requests have been acknowledged (a condition, not a sleep).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found: Value = get_json(
            &client,
            &format!(
                "http://{}/api/v1/traces?service=load&limit=1000",
                server.query()
            ),
        )
        .await;
        if found["traces"].as_array().unwrap().len() >= 40 || Instant::now() > deadline {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut server = server;
    server.child.kill().unwrap(); // SIGKILL on Unix
    server.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() >= 40,
        "only {} requests acknowledged before the kill",
        acked.len()
    );
    drop(server);

    let server = Server::start(dir.path());
    let mut missing = Vec::new();
    for (trace, n) in &acked {
        let resp = client
            .get(format!("http://{}/api/v1/traces/{trace}", server.query()))
            .send()
            .await
            .unwrap();
        let got = if resp.status() == 200 {
            resp.json::<Value>().await.unwrap()["spans"]
                .as_array()
                .unwrap()
                .len()
        } else {
            0
        };
        if got != *n {
            missing.push((trace.clone(), got));
        }
    }
    assert!(
        missing.is_empty(),
        "acknowledged spans lost after SIGKILL: {missing:?}"
    );
    let dag: Value = get_json(
        &client,
        &format!("http://{}/api/v1/traces/{TRACE}", server.query()),
    )
    .await;
    assert_eq!(
        dag["spans"].as_array().unwrap().len(),
        6,
        "the pipeline trace survived too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = Server::start(dir.path());
    let resp = post(&client, server.ingest(), pipeline().remove(0)).await;
    assert_eq!(resp.status(), 202);
    let status = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within 30s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    // The reader thread may still be flushing the last lines; wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("shutdown complete"))
    {
        assert!(
            Instant::now() < deadline,
            "log: {:?}",
            server.log.lock().unwrap()
        );
        std::thread::yield_now();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_collector_and_query_share_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let collector = Server::start_command(dir.path(), "collector");
    // The query process opens the collector's store read-only, from another process.
    let query = Server::start_command(dir.path(), "query");
    for batch in pipeline() {
        assert_eq!(post(&client, collector.ingest(), batch).await.status(), 202);
    }
    let dag: Value = get_json(
        &client,
        &format!("http://{}/api/v1/traces/{TRACE}", query.query()),
    )
    .await;
    assert_eq!(dag["spans"].as_array().unwrap().len(), 6, "{dag}");
    let ready = client
        .get(format!("http://{}/readyz", query.query()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // The collector has no query routes, and the query service has no ingest route.
    let r = client
        .get(format!(
            "http://{}/api/v1/traces/{TRACE}",
            collector.ingest()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .post(format!("http://{}/api/v1/spans", query.query()))
        .json(&json!({"spans": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Issue 13: a password in the ClickHouse URL was printed verbatim by print-config and in
/// start-up errors. Now the URL is refused, for any backend, without being repeated.
#[test]
fn a_password_in_the_clickhouse_url_is_refused_and_never_printed() {
    for (subcommand, storage) in [
        ("print-config", "embedded"),
        ("print-config", "clickhouse"),
        ("collector", "clickhouse"),
    ] {
        let out = Command::new(datatracing_e2e::binary())
            .args([subcommand, "--storage", storage])
            .env(
                "DATATRACING_CLICKHOUSE_URL",
                "http://default:hunter2@127.0.0.1:9",
            )
            .env_remove("DATATRACING_CONFIG")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{subcommand} {storage}: {stdout}");
        assert!(
            stderr.contains("must not carry credentials") && stderr.contains("password_file"),
            "{subcommand} {storage}: {stderr}"
        );
        assert!(
            !stdout.contains("hunter2") && !stderr.contains("hunter2"),
            "{subcommand} {storage} printed the password: {stdout}{stderr}"
        );
    }
}

#[test]
fn print_config_applies_env_and_flags_and_bad_config_fails_loudly() {
    let out = Command::new(datatracing_e2e::binary())
        .args(["print-config", "--retention", "24h"])
        .env("DATATRACING_DATA_DIR", "/var/lib/dt")
        .env_remove("DATATRACING_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("data_dir: /var/lib/dt"), "{yaml}");
    assert!(yaml.contains("retention: 24h"), "{yaml}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "collector:\n  max_body_bytez: 5\n").unwrap();
    let out = Command::new(datatracing_e2e::binary())
        .args(["all-in-one", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_body_bytez"), "{err}");
}
