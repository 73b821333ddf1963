//! Bearer-token authentication on every listener of the real binary, with real clients:
//! reqwest and curl on the HTTP ports, the official OpenTelemetry Python SDK's OTLP
//! exporters (HTTP/protobuf and gRPC) configured the way users configure them
//! (`OTEL_EXPORTER_OTLP_HEADERS`), token files rotated while the server runs, and the tokens
//! kept out of logs and `print-config`. The tonic client case is in
//! `collector/tests/auth.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use datatracing_e2e::{Server, command, python_otel_send};
use reqwest::StatusCode;
use serde_json::{Value, json};

const INGEST: &str = "ingest-0f4c1b7e9a2d44c6";
const QUERY: &str = "query-7d2e90c1b35a4f08";
const ADMIN: &str = "admin-c3a81f5e2b9d4067";
const ROTATED: &str = "ingest-rotated-5e81aa0c";

fn config(dir: &Path, protect_ops: bool) -> std::path::PathBuf {
    std::fs::write(dir.join("ingest-token"), format!("{INGEST}\n")).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "auth:\n  protect_ops: {protect_ops}\n  reload_interval: 100ms\n  tokens:\n\
             \x20   - {{name: pipelines, scopes: [ingest], file: {}}}\n\
             \x20   - {{name: grafana, scopes: [query], env: DT_TEST_QUERY_TOKEN}}\n\
             \x20   - {{name: operators, scopes: [admin, query], env: DT_TEST_ADMIN_TOKEN}}\n",
            dir.join("ingest-token").display(),
        ),
    )
    .unwrap();
    path
}

fn start(dir: &Path, protect_ops: bool) -> Server {
    let mut c = command("all-in-one");
    c.arg("-c")
        .arg(config(dir, protect_ops))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("DT_TEST_QUERY_TOKEN", QUERY)
        .env("DT_TEST_ADMIN_TOKEN", ADMIN);
    Server::spawn(c, true, true)
}

fn span(trace: &str) -> Value {
    json!({"spans": [{
        "trace_id": trace, "span_id": "00000000000000a1", "service": "auth-etl",
        "operation": "load", "kind": "INGEST",
        "start_time": "2026-12-01T10:00:00Z", "end_time": "2026-12-01T10:00:01Z",
        "status": {"code": "OK"}
    }]})
}

/// Status and envelope code of a request, with an optional bearer token.
async fn call(req: reqwest::RequestBuilder, token: Option<&str>) -> (StatusCode, Value, bool) {
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let challenge = resp.headers().contains_key("www-authenticate");
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body, challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_the_right_scope() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), false);
    let c = reqwest::Client::new();
    let ingest = format!("http://{}", server.ingest());
    let query = format!("http://{}", server.query());
    let trace = "4a0000000000000000000000000000a1";
    let post = || c.post(format!("{ingest}/api/v1/spans")).json(&span(trace));

    // Missing or wrong tokens: 401 with the challenge; right token, wrong scope: 403.
    for token in [
        None,
        Some("not-a-token-at-all-xx"),
        Some(&format!("{INGEST}x")),
    ] {
        let (status, body, challenge) = call(post(), token.map(|t| t as &str)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
        assert!(challenge, "WWW-Authenticate on 401");
    }
    let (status, body, challenge) = call(post(), Some(QUERY)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ingest")
    );
    assert!(!challenge);
    let (status, body, _) = call(post(), Some(INGEST)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // Every read route, the Jaeger API included, needs `query`.
    for path in [
        format!("/api/v1/traces/{trace}"),
        "/api/v1/services".to_string(),
        "/api/v1/traces?service=auth-etl".to_string(),
        format!("/api/v1/traces/{trace}/lineage"),
        "/api/v1/openapi.json".to_string(),
        "/api/services".to_string(),
        format!("/api/traces/{trace}"),
    ] {
        let url = format!("{query}{path}");
        assert_eq!(
            call(c.get(&url), None).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            call(c.get(&url), Some(INGEST)).await.0,
            StatusCode::FORBIDDEN,
            "{path}"
        );
        assert_eq!(
            call(c.get(&url), Some(QUERY)).await.0,
            StatusCode::OK,
            "{path}"
        );
        assert_eq!(
            call(c.get(&url), Some(ADMIN)).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    let (_, dag, _) = call(c.get(format!("{query}/api/v1/traces/{trace}")), Some(QUERY)).await;
    assert_eq!(dag["spans"].as_array().unwrap().len(), 1, "{dag}");

    // Admin routes need `admin`.
    let admin = format!("{ingest}/admin/sampling");
    assert_eq!(call(c.get(&admin), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(c.get(&admin), Some(QUERY)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(call(c.get(&admin), Some(ADMIN)).await.0, StatusCode::OK);

    // Probes and metrics stay open by default; the UI's static page holds no data.
    for url in [
        format!("{ingest}/healthz"),
        format!("{ingest}/readyz"),
        format!("{query}/metrics"),
        format!("{query}/"),
    ] {
        assert_eq!(
            c.get(&url).send().await.unwrap().status(),
            StatusCode::OK,
            "{url}"
        );
    }

    // curl, as the README shows it.
    let curl = |token: Option<&str>| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = cmd
            .arg(format!("{query}/api/v1/services"))
            .output()
            .expect("curl (apt-get install curl)");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(curl(None), "401");
    assert_eq!(curl(Some(QUERY)), "200");

    // A rotated token file takes over while the server runs; the old token stops working.
    std::fs::write(dir.path().join("ingest-token"), ROTATED).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if call(post(), Some(ROTATED)).await.0 == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated token was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(call(post(), Some(INGEST)).await.0, StatusCode::UNAUTHORIZED);

    // No token, rotated or not, ever reaches the log.
    let log = server.log.lock().unwrap().join("\n");
    for t in [INGEST, QUERY, ADMIN, ROTATED] {
        assert!(!log.contains(t), "token {t} in the log");
    }
    assert!(log.contains("token files reloaded"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_exporters_send_with_the_token_and_are_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), false);
    let c = reqwest::Client::new();
    let http = format!("http://{}/v1/traces", server.ingest());
    let grpc = server.grpc().to_string();
    let with = format!("authorization=Bearer%20{INGEST}");
    let wrong = format!("authorization=Bearer%20{QUERY}");
    for (protocol, endpoint) in [("http", &http), ("grpc", &grpc)] {
        let refused = python_otel_send(protocol, endpoint, &[]);
        assert_eq!(
            refused["ok"], false,
            "{protocol} without a token: {refused}"
        );
        let denied = python_otel_send(
            protocol,
            endpoint,
            &[("OTEL_EXPORTER_OTLP_HEADERS", wrong.as_str())],
        );
        assert_eq!(
            denied["ok"], false,
            "{protocol} with a query token: {denied}"
        );
        let sent = python_otel_send(
            protocol,
            endpoint,
            &[("OTEL_EXPORTER_OTLP_HEADERS", with.as_str())],
        );
        assert_eq!(sent["ok"], true, "{protocol} with the token: {sent}");
        let read = |t: &Value| {
            format!(
                "http://{}/api/v1/traces/{}",
                server.query(),
                t["trace_id"].as_str().unwrap()
            )
        };
        let (status, dag, _) = call(c.get(read(&sent)), Some(QUERY)).await;
        assert_eq!(status, StatusCode::OK, "{dag}");
        assert_eq!(dag["spans"].as_array().unwrap().len(), 3, "{dag}");
        for failed in [&refused, &denied] {
            let (status, body, _) = call(c.get(read(failed)), Some(QUERY)).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "refused spans are not stored: {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_ops_need_a_token_and_print_config_shows_references_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), true);
    let c = reqwest::Client::new();
    for url in [
        format!("http://{}/metrics", server.ingest()),
        format!("http://{}/healthz", server.query()),
        format!("http://{}/readyz", server.query()),
    ] {
        assert_eq!(
            call(c.get(&url), None).await.0,
            StatusCode::UNAUTHORIZED,
            "{url}"
        );
        assert_eq!(
            call(c.get(&url), Some(INGEST)).await.0,
            StatusCode::OK,
            "{url}: any scope"
        );
    }

    let out = command("print-config")
        .arg("-c")
        .arg(dir.path().join("config.yaml"))
        .env("DT_TEST_QUERY_TOKEN", QUERY)
        .env("DT_TEST_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("DT_TEST_QUERY_TOKEN") && text.contains("ingest-token"),
        "{text}"
    );
    for t in [INGEST, QUERY, ADMIN] {
        assert!(!text.contains(t), "print-config shows a token: {text}");
    }
}

#[test]
fn a_missing_token_fails_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = command("all-in-one")
        .arg("-c")
        .arg(config(dir.path(), false))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("DT_TEST_QUERY_TOKEN", QUERY)
        .env_remove("DT_TEST_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DT_TEST_ADMIN_TOKEN is not set"), "{err}");
}
