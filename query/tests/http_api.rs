//! The query API driven through its router (`oneshot`) on the real embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use datatracing_core::{
    Attributes, Link, LinkType, SpanKind, Status, StatusCode as SpanStatus, Timestamp,
};
use datatracing_http::{HttpMetrics, Readiness};
use datatracing_query::{QueryConfig, QueryService};
use datatracing_store::TraceWriter;
use datatracing_store_contract::{fresh_trace_id, simple_span, span_id};
use datatracing_store_sqlite::{EmbeddedConfig, EmbeddedStore, OpenMode};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tower::ServiceExt;

async fn setup() -> (tempfile::TempDir, Arc<EmbeddedStore>, Router) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        EmbeddedStore::open(
            EmbeddedConfig {
                retention: datatracing_core::ConfigDuration::from_secs(0),
                ..EmbeddedConfig::new(dir.path())
            },
            OpenMode::ReadWrite,
        )
        .await
        .unwrap(),
    );
    let mut registry = Registry::default();
    let http = HttpMetrics::register(&mut registry);
    let svc = QueryService::new(QueryConfig::default(), store.clone(), http).unwrap();
    let readiness = Readiness::new(store.clone());
    readiness.set_ready(true);
    let router = svc.router(readiness, Arc::new(registry));
    (dir, store, router)
}

async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    let resp = router
        .clone()
        .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn trace_dag_with_fan_in_and_cross_trace_link() {
    let (_d, store, router) = setup().await;
    let t = fresh_trace_id();
    let upstream = fresh_trace_id();
    let t0 = Timestamp::now();
    let a = simple_span(t, 1, None, "ingest-a", t0, 100);
    let b = simple_span(t, 2, None, "ingest-b", t0, 100);
    let mut join = simple_span(t, 3, Some(1), "join", t0.saturating_add_nanos(200), 100);
    join.kind = SpanKind::Join;
    join.status = Status::with_message(SpanStatus::Error, "late partition");
    join.links = vec![
        Link {
            trace_id: t,
            span_id: span_id(1),
            link_type: LinkType::DataDependency,
            attributes: Attributes::new(),
        },
        Link {
            trace_id: t,
            span_id: span_id(2),
            link_type: LinkType::DataDependency,
            attributes: Attributes::new(),
        },
        Link {
            trace_id: upstream,
            span_id: span_id(9),
            link_type: LinkType::FollowsFrom,
            attributes: Attributes::new(),
        },
    ];
    store.write(vec![a, b, join].into()).await.unwrap();

    let (status, dag) = get(&router, &format!("/api/v1/traces/{t}")).await;
    assert_eq!(status, StatusCode::OK, "{dag}");
    assert_eq!(dag["trace_id"], t.to_string());
    assert_eq!(dag["spans"].as_array().unwrap().len(), 3);
    let dd: Vec<&Value> = dag["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "DATA_DEPENDENCY")
        .collect();
    assert_eq!(dd.len(), 2);
    assert_eq!(dag["roots"].as_array().unwrap().len(), 2);
    assert_eq!(
        dag["cross_trace_links"][0]["target_trace_id"],
        upstream.to_string()
    );
    assert_eq!(dag["cross_trace_links"][0]["type"], "FOLLOWS_FROM");
    assert_eq!(dag["summary"]["error_count"], 1);
    assert_eq!(dag["spans"][2]["status"]["message"], "late partition");
}

#[tokio::test]
async fn unknown_and_malformed_trace_ids() {
    let (_d, _store, router) = setup().await;
    let (status, body) = get(&router, &format!("/api/v1/traces/{}", fresh_trace_id())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    for bad in [
        "abc",
        "zzf7651916cd43dd8448eb211c80319c",
        "0af7651916cd43dd8448eb211c80319c00",
    ] {
        let (status, body) = get(&router, &format!("/api/v1/traces/{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"]["code"], "invalid_argument");
    }
}

#[tokio::test]
async fn search_with_parameters() {
    let (_d, store, router) = setup().await;
    let t = fresh_trace_id();
    let svc = format!("svc-{t}");
    let t0 = Timestamp::parse_rfc3339("2026-11-28T10:00:00Z").unwrap();
    let mut slow = simple_span(t, 1, None, &svc, t0, 2_000_000_000);
    slow.status = Status::new(SpanStatus::Error);
    store.write(vec![slow].into()).await.unwrap();

    let base = format!("/api/v1/traces?service={svc}");
    let (status, body) = get(&router, &base).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["traces"][0]["trace_id"], t.to_string());
    assert_eq!(body["traces"][0]["duration_nanos"], 2_000_000_000i64);
    assert_eq!(body["limit"], 20);
    let hits = |q: &str| {
        let router = router.clone();
        let uri = format!("{base}&{q}");
        async move {
            let (status, body) = get(&router, &uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            body["traces"].as_array().unwrap().len()
        }
    };
    assert_eq!(hits("status=ERROR").await, 1);
    assert_eq!(hits("status=ok").await, 0);
    assert_eq!(hits("min_duration=1s&max_duration=3s").await, 1);
    assert_eq!(hits("min_duration=2500ms").await, 0);
    assert_eq!(
        hits("start=2026-11-28T09:00:00Z&end=2026-11-28T11:00:00%2B00:00").await,
        1
    );
    assert_eq!(hits("start=2026-11-28T10:00:00.000000001Z").await, 0);
    assert_eq!(hits("operation=op-1&limit=1").await, 1);
}

#[tokio::test]
async fn invalid_search_parameters_get_400() {
    let (_d, _store, router) = setup().await;
    for q in [
        "limit=abc",
        "limit=0",
        "limit=100000",
        "status=broken",
        "start=yesterday",
        "end=2026-13-01T00:00:00Z",
        "min_duration=5",
        "min_duration=2s&max_duration=1s",
        "start=2026-11-28T10:00:00Z&end=2026-11-28T09:00:00Z",
        "servce=typo",
    ] {
        let (status, body) = get(&router, &format!("/api/v1/traces?{q}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{q}");
    }
}

#[tokio::test]
async fn ops_endpoints() {
    let (_d, _store, router) = setup().await;
    let (status, _) = get(&router, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&router, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(&router, "/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}
