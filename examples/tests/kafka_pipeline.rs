//! The Kafka pipeline example (`src/bin/kafka-pipeline.rs`) against a real Apache Kafka
//! broker in KRaft mode (testkit::kafka, installed by scripts/test.sh) and the real
//! `datatracing` binary: the three jobs run as separate processes, the trace context travels
//! only in Kafka record headers, and the traces the collector stored show the step kinds,
//! parent/child structure, the producer->transform DATA_DEPENDENCY fan-in, the
//! transform->aggregate FOLLOWS_FROM continuation, and the lineage across the three.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use datatracing_e2e::Server;
use datatracing_testkit::kafka::Kafka;
use serde_json::Value;

const RECORDS: usize = 8;

fn job(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-pipeline"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka-pipeline {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The stored trace, once it has `spans` spans (the collector acknowledges before its
/// writer commits), bounded.
async fn trace(server: &Server, id: &Value, spans: usize) -> Value {
    let client = reqwest::Client::new();
    let url = format!(
        "http://{}/api/v1/traces/{}",
        server.query(),
        id.as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        if v["spans"].as_array().map_or(0, Vec::len) >= spans {
            return v;
        }
        assert!(Instant::now() < deadline, "trace {url} incomplete: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn span<'a>(trace: &'a Value, id: &Value) -> &'a Value {
    trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["span_id"] == *id)
        .unwrap_or_else(|| panic!("no span {id} in {trace}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_pipeline_is_traced_across_three_jobs() {
    let kafka = Kafka::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let collector = format!("http://{}", server.ingest());
    let brokers = kafka.bootstrap();
    let n = RECORDS.to_string();
    let totals = dir.path().join("totals.json");

    let produced = job(&["produce", &brokers, &collector, &n]);
    let transformed = job(&["transform", &brokers, &collector, &n]);
    let valid = transformed["valid"].as_u64().unwrap() as usize;
    assert_eq!(valid, RECORDS - RECORDS / 4, "{transformed}");
    let aggregated = job(&[
        "aggregate",
        &brokers,
        &collector,
        &valid.to_string(),
        totals.to_str().unwrap(),
    ]);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&totals).unwrap()).unwrap();
    // Orders 0..8 with amount 10*(i+1), every fourth (i = 3, 7) rejected.
    assert_eq!(written["total"], 10 + 20 + 30 + 50 + 60 + 70);

    // Producer: a PUBLISH root with one PUBLISH child per record.
    let p = trace(&server, &produced["trace_id"], RECORDS + 1).await;
    let root = span(&p, &produced["root"]);
    assert_eq!(root["kind"], "PUBLISH");
    assert_eq!(root["service"], "orders-producer");
    assert_eq!(root["attributes"]["datatracing.records.out"], RECORDS);
    assert_eq!(
        root["attributes"]["datatracing.job.name"],
        "orders-producer"
    );
    let records = produced["records"].as_array().unwrap();
    assert_eq!(records.len(), RECORDS);
    for (i, r) in records.iter().enumerate() {
        let s = span(&p, r);
        assert_eq!(s["kind"], "PUBLISH");
        assert_eq!(s["parent_id"], produced["root"]);
        assert_eq!(s["attributes"]["datatracing.offset.start"], i);
    }

    // Transform: its own trace; the batch span depends on every record's producer span.
    let t = trace(&server, &transformed["trace_id"], 1 + RECORDS + 1).await;
    assert_ne!(transformed["trace_id"], produced["trace_id"]);
    let root = span(&t, &transformed["root"]);
    assert_eq!(root["kind"], "TRANSFORM");
    assert_eq!(root["parent_id"], Value::Null);
    assert_eq!(root["attributes"]["datatracing.records.in"], RECORDS);
    assert_eq!(root["attributes"]["datatracing.records.out"], valid);
    assert_eq!(
        root["attributes"]["datatracing.records.rejected"],
        RECORDS / 4
    );
    assert_eq!(
        root["attributes"]["datatracing.dataset.inputs"],
        serde_json::json!([format!("kafka://{brokers}/orders")])
    );
    let deps: Vec<&Value> = t["cross_trace_links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["span_id"] == transformed["root"])
        .collect();
    assert_eq!(deps.len(), RECORDS, "{t}");
    for (l, r) in deps.iter().zip(records) {
        assert_eq!(l["type"], "DATA_DEPENDENCY");
        assert_eq!(l["target_trace_id"], produced["trace_id"]);
        assert_eq!(l["target_span_id"], *r);
    }
    let children: Vec<&Value> = t["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["parent_id"] == transformed["root"])
        .collect();
    assert_eq!(
        children.iter().filter(|s| s["kind"] == "VALIDATE").count(),
        RECORDS
    );
    assert_eq!(
        children
            .iter()
            .filter(|s| s["kind"] == "VALIDATE" && s["status"]["code"] == "ERROR")
            .count(),
        RECORDS / 4
    );
    assert_eq!(
        children
            .iter()
            .filter(|s| s["kind"] == "MATERIALIZE")
            .count(),
        1
    );

    // Aggregate: continues from the transform job.
    let a = trace(&server, &aggregated["trace_id"], 2).await;
    let root = span(&a, &aggregated["root"]);
    assert_eq!(root["kind"], "AGGREGATE");
    let links = a["cross_trace_links"].as_array().unwrap();
    assert_eq!(links.len(), 1, "{a}");
    assert_eq!(links[0]["type"], "FOLLOWS_FROM");
    assert_eq!(links[0]["target_trace_id"], transformed["trace_id"]);
    assert_eq!(links[0]["target_span_id"], transformed["root"]);

    // Lineage from the aggregate reaches the producer through the transform.
    let lineage: Value = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/traces/{}/lineage?direction=upstream&depth=3",
            server.query(),
            aggregated["trace_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = lineage.to_string();
    for id in [&produced["trace_id"], &transformed["trace_id"]] {
        assert!(text.contains(id.as_str().unwrap()), "{id} not in {lineage}");
    }

    // The conventions are searchable: the job name finds the transform job's trace only.
    let found: Value = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/traces?attribute=datatracing.job.name%3Dorders-enricher",
            server.query()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&Value> = found["traces"]
        .as_array()
        .unwrap_or_else(|| panic!("{found}"))
        .iter()
        .map(|t| &t["trace_id"])
        .collect();
    assert_eq!(ids, [&transformed["trace_id"]], "{found}");
    drop(kafka);
}
