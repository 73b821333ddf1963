//! Tenant isolation through the real binary over HTTP (ADR 0010): three tokens bound to
//! different tenants (two named, one the default) write the same trace id, each with its
//! own service, and every query route (v1, the Jaeger-compatible API and api_v3) answers
//! each tenant from its own spans only: another tenant's trace is a 404 like an unknown
//! one, searches, names, lineage and dependencies never show another tenant's data. A
//! client that sets the reserved tenant attribute itself (native JSON and OTLP/HTTP JSON)
//! is overruled by its token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use datatracing_core::Timestamp;
use datatracing_e2e::{Server, command};
use datatracing_testkit::clickhouse::{ClickHouse, unique_database};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ALPHA: &str = "alpha-token-2c9e7b14d0a3";
const BETA: &str = "beta-token-81f0c6e25b97";
const SHARED: &str = "default-token-5d3a9f07e1c2";

/// The trace every tenant writes.
const T: &str = "7e000000000000000000000000000001";
/// A trace only alpha has, linked from alpha's D and (by id) from beta's E.
const ONLY_ALPHA: &str = "7e000000000000000000000000000002";
const D: &str = "7e000000000000000000000000000003";
const E: &str = "7e000000000000000000000000000004";
/// Never written.
const UNKNOWN: &str = "7e0000000000000000000000000000ff";

const TENANTS: [(&str, &str); 3] = [
    (ALPHA, "svc-alpha"),
    (BETA, "svc-beta"),
    (SHARED, "svc-shared"),
];

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        "auth:\n  tokens:\n\
         \x20   - {name: team-alpha, scopes: [ingest, query], env: DT_ALPHA, tenant: alpha}\n\
         \x20   - {name: team-beta, scopes: [ingest, query], env: DT_BETA, tenant: beta}\n\
         \x20   - {name: shared, scopes: [ingest, query], env: DT_SHARED}\n",
    )
    .unwrap();
    path
}

/// The binary with the three tokens, on the embedded store or on ClickHouse (`db` there).
fn start(dir: &Path, clickhouse: Option<(&ClickHouse, &str)>) -> Server {
    let command = |sub: &str| match clickhouse {
        None => {
            let mut c = command(sub);
            c.arg("--data-dir").arg(dir.join("data"));
            c
        }
        Some((server, db)) => datatracing_e2e::clickhouse_command(sub, server, db),
    };
    if clickhouse.is_some() {
        let out = command("migrate").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut c = command("all-in-one");
    c.arg("-c")
        .arg(config(dir))
        .env("DT_ALPHA", ALPHA)
        .env("DT_BETA", BETA)
        .env("DT_SHARED", SHARED);
    Server::spawn(c, true, true)
}

fn at(offset_ms: i64) -> Value {
    let t = Timestamp::now().saturating_add_nanos(-600_000_000_000 + offset_ms * 1_000_000);
    serde_json::to_value(t).unwrap()
}

fn span(trace: &str, id: &str, service: &str, links: Value, attributes: Value) -> Value {
    json!({
        "trace_id": trace, "span_id": id, "service": service,
        "operation": format!("load-{service}"),
        "kind": "INGEST", "start_time": at(0), "end_time": at(1000),
        "status": {"code": "OK"}, "links": links, "attributes": attributes
    })
}

fn follows(trace: &str) -> Value {
    json!([{"trace_id": trace, "span_id": "00000000000000a1", "type": "FOLLOWS_FROM"}])
}

async fn get(c: &reqwest::Client, url: &str, token: &str) -> (StatusCode, String) {
    let resp = c.get(url).bearer_auth(token).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_route_answers_from_the_callers_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    check(start(dir.path(), None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_route_answers_from_the_callers_tenant_only_on_clickhouse() {
    let dir = tempfile::tempdir().unwrap();
    let db = unique_database("tenants");
    check(start(dir.path(), Some((ClickHouse::shared(), &db)))).await;
}

async fn check(server: Server) {
    let c = reqwest::Client::new();
    let ingest = format!("http://{}", server.ingest());
    let query = format!("http://{}", server.query());

    // Alpha claims to be beta in the reserved attribute; its token decides.
    let alpha = json!({"spans": [
        span(T, "00000000000000a1", "svc-alpha", json!([]), json!({"datatracing.tenant": "beta"})),
        span(ONLY_ALPHA, "00000000000000a1", "svc-alpha", json!([]), json!({})),
        span(D, "00000000000000a1", "svc-alpha", follows(T), json!({})),
    ]});
    let beta = json!({"spans": [
        span(T, "00000000000000a1", "svc-beta", json!([]), json!({})),
        span(E, "00000000000000a1", "svc-beta", follows(ONLY_ALPHA), json!({})),
    ]});
    let shared = json!({"spans": [
        span(T, "00000000000000a1", "svc-shared", json!([]), json!({"datatracing.tenant": "alpha"})),
    ]});
    for (token, body) in [(ALPHA, &alpha), (BETA, &beta), (SHARED, &shared)] {
        let resp = c
            .post(format!("{ingest}/api/v1/spans"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::ACCEPTED,
            "{}",
            resp.text().await.unwrap()
        );
    }
    // OTLP/HTTP JSON from beta, claiming alpha in the span's attributes.
    let otlp = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc-beta"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": T, "spanId": "00000000000000b2", "parentSpanId": "00000000000000a1",
            "name": "otlp-step", "kind": 1,
            "startTimeUnixNano": (Timestamp::now().unix_nanos() - 600_000_000_000).to_string(),
            "endTimeUnixNano": (Timestamp::now().unix_nanos() - 599_000_000_000).to_string(),
            "attributes": [{"key": "datatracing.tenant", "value": {"stringValue": "alpha"}}]
        }]}]
    }]});
    let resp = c
        .post(format!("{ingest}/v1/traces"))
        .bearer_auth(BETA)
        .json(&otlp)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap()
    );

    let now_us = Timestamp::now().unix_nanos() / 1_000;
    let hour_ago = Timestamp::now().saturating_add_nanos(-3_600_000_000_000);
    let in_a_minute = Timestamp::now().saturating_add_nanos(60_000_000_000);
    let rfc = |t: Timestamp| {
        serde_json::to_value(t)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    for (token, own) in TENANTS {
        let others: Vec<&str> = TENANTS
            .iter()
            .map(|(_, s)| *s)
            .filter(|s| *s != own)
            .collect();
        let routes = [
            format!("/api/v1/traces/{T}"),
            format!("/api/v1/traces/{T}/spans"),
            format!("/api/v1/traces/{T}/lineage?direction=both"),
            format!("/api/v1/traces?service={own}"),
            "/api/v1/services".to_string(),
            format!("/api/v1/services/{own}/operations"),
            "/api/v1/dependencies".to_string(),
            "/api/services".to_string(),
            format!("/api/services/{own}/operations"),
            format!("/api/operations?service={own}"),
            format!("/api/traces/{T}"),
            format!("/api/traces?service={own}&lookback=2h"),
            format!(
                "/api/dependencies?endTs={}&lookback=7200000",
                now_us / 1_000
            ),
            "/api/v3/services".to_string(),
            format!("/api/v3/operations?service={own}"),
            format!("/api/v3/traces/{T}"),
            format!(
                "/api/v3/traces?query.service_name={own}&query.start_time_min={}&query.start_time_max={}",
                rfc(hour_ago),
                rfc(in_a_minute)
            ),
        ];
        for path in &routes {
            let (status, body) = get(&c, &format!("{query}{path}"), token).await;
            assert_eq!(status, StatusCode::OK, "{own} {path}: {body}");
            // Dependencies are edges between services: the default tenant has a single span.
            if !path.contains("dependencies") || token != SHARED {
                assert!(
                    body.contains(own),
                    "{own} {path} lacks its own data: {body}"
                );
            }
            for other in &others {
                assert!(!body.contains(other), "{own} {path} shows {other}: {body}");
            }
        }
        // Searching for another tenant's service finds nothing.
        for other in &others {
            for path in [
                format!("/api/v1/traces?service={other}"),
                format!("/api/traces?service={other}&lookback=2h"),
            ] {
                let (status, body) = get(&c, &format!("{query}{path}"), token).await;
                assert_eq!(status, StatusCode::OK, "{path}");
                assert!(!body.contains(T), "{own} {path}: {body}");
            }
        }
        let resp = c
            .post(format!("{query}/api/v1/traces/search"))
            .bearer_auth(token)
            .json(&json!({"linked_trace": ONLY_ALPHA}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let found = resp.text().await.unwrap();
        for other in &others {
            assert!(!found.contains(other), "{own}: {found}");
        }
    }

    // Alpha's own trace is a 404 for the others, answered exactly like a trace never seen.
    for path in [
        "/api/v1/traces/{}",
        "/api/v1/traces/{}/lineage",
        "/api/traces/{}",
        "/api/v3/traces/{}",
    ] {
        let unknown = get(
            &c,
            &format!("{query}{}", path.replace("{}", UNKNOWN)),
            ALPHA,
        )
        .await;
        for token in [BETA, SHARED] {
            let (status, body) = get(
                &c,
                &format!("{query}{}", path.replace("{}", ONLY_ALPHA)),
                token,
            )
            .await;
            assert_eq!(status, unknown.0, "{path}: {body}");
            assert_eq!(
                body.replace(ONLY_ALPHA, UNKNOWN),
                unknown.1,
                "{path}: the same answer as for an unknown trace"
            );
        }
    }
    let (status, _) = get(&c, &format!("{query}/api/v1/traces/{ONLY_ALPHA}"), ALPHA).await;
    assert_eq!(status, StatusCode::OK);

    // Beta's link into alpha's trace is a dangling node: no summary, nothing of alpha.
    let (_, lineage) = get(
        &c,
        &format!("{query}/api/v1/traces/{E}/lineage?direction=upstream"),
        BETA,
    )
    .await;
    let lineage: Value = serde_json::from_str(&lineage).unwrap();
    let node = lineage["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["trace_id"] == ONLY_ALPHA)
        .expect("the edge is beta's own");
    assert_eq!(node["stored"], false, "{lineage}");

    // The reserved attribute holds the token's tenant, whatever the client sent.
    let tenant_attr = |dag: &Value| -> Vec<Value> {
        dag["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["attributes"]["datatracing.tenant"].clone())
            .collect()
    };
    let (_, a) = get(&c, &format!("{query}/api/v1/traces/{T}"), ALPHA).await;
    assert_eq!(
        tenant_attr(&serde_json::from_str(&a).unwrap()),
        vec![json!("alpha")]
    );
    let (_, b) = get(&c, &format!("{query}/api/v1/traces/{T}"), BETA).await;
    assert_eq!(
        tenant_attr(&serde_json::from_str(&b).unwrap()),
        vec![json!("beta"), json!("beta")],
        "native and OTLP spans: {b}"
    );
    let (_, s) = get(&c, &format!("{query}/api/v1/traces/{T}"), SHARED).await;
    assert_eq!(
        tenant_attr(&serde_json::from_str(&s).unwrap()),
        vec![Value::Null],
        "the default tenant's spans carry no tenant: {s}"
    );
}
