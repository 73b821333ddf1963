//! Real OpenTelemetry clients: the official Python SDK's OTLP exporters (HTTP/protobuf and
//! gRPC) send a pipeline trace to the running binary; the test reads it back through the
//! query API. The SDK comes from the test virtualenv that scripts/test.sh installs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use datatracing_e2e::{Server, get_json, python_otel_send};
use serde_json::Value;

fn send(protocol: &str, endpoint: &str) -> Value {
    let v = python_otel_send(protocol, endpoint, &[]);
    assert_eq!(v["ok"], true, "the exporter reported failure: {v}");
    v
}

async fn check(server: &Server, sent: &Value, service: &str) {
    let client = reqwest::Client::new();
    let trace = sent["trace_id"].as_str().unwrap();
    let dag = get_json(
        &client,
        &format!("http://{}/api/v1/traces/{trace}", server.query()),
    )
    .await;
    let spans = dag["spans"].as_array().unwrap_or_else(|| panic!("{dag}"));
    assert_eq!(spans.len(), 3, "{dag}");
    assert!(spans.iter().all(|s| s["service"] == service), "{dag}");
    let join = spans.iter().find(|s| s["span_id"] == sent["join"]).unwrap();
    assert_eq!(join["kind"], "JOIN");
    assert_eq!(join["status"]["code"], "ERROR");
    assert_eq!(join["status"]["message"], "3 rows failed the schema check");
    assert_eq!(join["attributes"]["ratio"], 0.5);
    assert_eq!(join["attributes"]["ok"], false);
    assert_eq!(
        join["attributes"]["tables"],
        serde_json::json!(["orders", "customers"])
    );
    assert_eq!(
        join["attributes"]["resource.deployment.environment"],
        "test"
    );
    assert_eq!(join["attributes"]["otel.scope.name"], "datatracing-e2e");
    assert_eq!(join["events"][0]["name"], "spill to disk");
    let root = spans.iter().find(|s| s["span_id"] == sent["root"]).unwrap();
    assert_eq!(root["kind"], "INGEST");
    assert_eq!(root["attributes"]["records"], 1200);
    let fan_in = dag["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "DATA_DEPENDENCY" && e["to"] == sent["join"])
        .count();
    assert_eq!(fan_in, 2, "{dag}");
    assert_eq!(dag["roots"], serde_json::json!([sent["root"]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let http = send("http", &format!("http://{}/v1/traces", server.ingest()));
    check(&server, &http, "py-etl-http").await;
    let grpc = send("grpc", &server.grpc().to_string());
    check(&server, &grpc, "py-etl-grpc").await;
    let metrics = datatracing_e2e::metrics(&reqwest::Client::new(), server.ingest()).await;
    assert!(
        metrics.contains(
            "datatracing_collector_spans_accepted_total{protocol=\"otlp_http_protobuf\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("datatracing_collector_spans_accepted_total{protocol=\"otlp_grpc\"} 3"),
        "{metrics}"
    );
}
