//! The query API driven through its router (`oneshot`) on the real embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use datatracing_core::{
    Attributes, Link, LinkType, SpanKind, Status, StatusCode as SpanStatus, Timestamp,
};
use datatracing_http::HttpMetrics;
use datatracing_query::{QueryConfig, QueryService};
use datatracing_store::TraceWriter;
use datatracing_store_contract::{fresh_trace_id, simple_span, span_id};
use datatracing_store_sqlite::{EmbeddedConfig, EmbeddedStore, OpenMode};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tower::ServiceExt;

use common::{get, post};

async fn setup() -> (tempfile::TempDir, Arc<EmbeddedStore>, Router) {
    setup_with(QueryConfig::default()).await
}

async fn setup_with(config: QueryConfig) -> (tempfile::TempDir, Arc<EmbeddedStore>, Router) {
    common::embedded(config).await
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

fn ids(body: &Value) -> Vec<String> {
    body["traces"]
        .as_array()
        .unwrap_or_else(|| panic!("no traces in {body}"))
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn services_and_operations_listings() {
    let (_d, store, router) = setup().await;
    let t = fresh_trace_id();
    let now = Timestamp::now();
    let mut a = simple_span(t, 1, None, "orders-etl", now, 10);
    a.kind = SpanKind::Ingest;
    a.operation = "load orders".into();
    let mut b = simple_span(t, 2, Some(1), "orders-etl", now, 10);
    b.kind = SpanKind::Join;
    b.operation = "join/customers".into();
    let c = simple_span(
        t,
        3,
        Some(2),
        "billing",
        now.saturating_add_nanos(-48 * 3_600_000_000_000),
        10,
    );
    store.write(vec![a, b, c].into()).await.unwrap();

    let (status, body) = get(&router, "/api/v1/services").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["services"],
        serde_json::json!(["billing", "orders-etl"])
    );
    assert_eq!(body["truncated"], false);
    let (_, body) = get(&router, "/api/v1/services?limit=1").await;
    assert_eq!(body["services"], serde_json::json!(["billing"]));
    assert_eq!(body["truncated"], true);
    let start = now.saturating_add_nanos(-3_600_000_000_000).to_rfc3339();
    let (status, body) = get(
        &router,
        &format!("/api/v1/services?start={}", start.replace('+', "%2B")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["services"], serde_json::json!(["orders-etl"]));

    let (status, body) = get(&router, "/api/v1/services/orders-etl/operations").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["service"], "orders-etl");
    assert_eq!(
        body["operations"],
        serde_json::json!([
            {"name": "join/customers", "span_kind": "JOIN"},
            {"name": "load orders", "span_kind": "INGEST"},
        ])
    );
    let (_, body) = get(&router, "/api/v1/services/nobody/operations").await;
    assert_eq!(body["operations"], serde_json::json!([]));
}

#[tokio::test]
async fn invalid_listing_parameters_get_400() {
    let (_d, _store, router) = setup().await;
    for uri in [
        "/api/v1/services?start=yesterday",
        "/api/v1/services?end=2026-13-01T00:00:00Z",
        "/api/v1/services?start=2026-11-28T10:00:00Z&end=2026-11-28T09:00:00Z",
        "/api/v1/services?limit=0",
        "/api/v1/services?limit=abc",
        "/api/v1/services?limit=10001",
        "/api/v1/services?lmit=5",
        "/api/v1/services?limit=1&limit=2",
        "/api/v1/services/x/operations?start=nope",
        "/api/v1/services/x/operations?service=x",
        "/api/v1/services?%zz",
    ] {
        let (status, body) = get(&router, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{uri}");
    }
    for uri in [
        format!("/api/v1/services/{}/operations", "s".repeat(1100)),
        "/api/v1/services/%FF/operations".to_string(),
        "/api/v1/traces/%FF".to_string(),
    ] {
        let (status, body) = get(&router, &uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{uri}");
    }
}

#[tokio::test]
async fn json_search_with_typed_filters_scope_and_cursors() {
    let (_d, store, router) = setup().await;
    let svc = format!("svc-{}", fresh_trace_id());
    let t0 = Timestamp::now().saturating_add_nanos(-60_000_000_000);
    let mut spans = Vec::new();
    let mut traces = Vec::new();
    for i in 0..5i64 {
        let t = fresh_trace_id();
        traces.push(t.to_string());
        let mut s = simple_span(t, 1, None, &svc, t0.saturating_add_nanos(i * 1_000), 1_000);
        s.kind = if i % 2 == 0 {
            SpanKind::Ingest
        } else {
            SpanKind::Join
        };
        s.attributes = Attributes::from([
            (
                "rows".to_string(),
                datatracing_core::AttributeValue::Int(i * 100),
            ),
            (
                "a=b&c".to_string(),
                datatracing_core::AttributeValue::from(format!("v{i}")),
            ),
        ]);
        spans.push(s);
    }
    // A second, late span makes the first trace last 5 s as a whole.
    spans.push(simple_span(
        fresh_trace_id_of(&traces[0]),
        2,
        Some(1),
        &svc,
        t0.saturating_add_nanos(5_000_000_000),
        1_000,
    ));
    store.write(spans.into()).await.unwrap();
    traces.reverse(); // newest first

    let (status, body) = post(
        &router,
        "/api/v1/traces/search",
        serde_json::json!({
            "service": svc,
            "kind": "ingest",
            "attributes": [
                {"key": "rows", "op": ">=", "value": 100},
                {"key": "a=b&c", "op": "regex", "value": "^v[0-9]$"},
            ],
        })
        .to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        ids(&body),
        vec![traces[0].clone(), traces[2].clone()],
        "i = 4, 2"
    );
    assert_eq!(body["duration_scope"], "span");
    assert!(body.get("next_cursor").is_none(), "{body}");

    let (_, body) = post(
        &router,
        "/api/v1/traces/search",
        serde_json::json!({"service": svc, "attributes": [{"key": "a=b&c", "op": "=", "value": "v3"}]})
            .to_string(),
    )
    .await;
    assert_eq!(ids(&body), vec![traces[1].clone()], "a key with = and &");

    let (_, body) = post(
        &router,
        "/api/v1/traces/search",
        serde_json::json!({"service": svc, "min_duration": "2s", "duration_scope": "trace"})
            .to_string(),
    )
    .await;
    assert_eq!(ids(&body), vec![traces[4].clone()]);
    assert_eq!(body["duration_scope"], "trace");

    // Pages of two through the body, then the same through the query string.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut req = serde_json::json!({"service": svc, "limit": 2});
        if let Some(c) = &cursor {
            req["cursor"] = Value::String(c.clone());
        }
        let (status, body) = post(&router, "/api/v1/traces/search", req.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        seen.extend(ids(&body));
        match body.get("next_cursor") {
            Some(c) => cursor = Some(c.as_str().unwrap().to_string()),
            None => break,
        }
        assert!(seen.len() <= 5, "{seen:?}");
    }
    let mut expected = traces.clone();
    // The 5 s span makes trace 0 the newest by its latest span.
    expected.rotate_right(1);
    assert_eq!(seen, expected);

    let (_, first) = get(&router, &format!("/api/v1/traces?service={svc}&limit=3")).await;
    let c = first["next_cursor"].as_str().unwrap().to_string();
    let (status, second) = get(
        &router,
        &format!("/api/v1/traces?service={svc}&limit=3&cursor={c}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(ids(&second), expected[3..].to_vec());
    assert!(second.get("next_cursor").is_none());
    // A cursor is bound to its filters.
    let (status, body) = get(
        &router,
        &format!("/api/v1/traces?service={svc}&kind=JOIN&cursor={c}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different search")
    );
}

fn fresh_trace_id_of(hex: &str) -> datatracing_core::TraceId {
    hex.parse().unwrap()
}

#[tokio::test]
async fn invalid_json_searches_get_400_in_the_envelope() {
    let (_d, _store, router) = setup().await;
    let many = |n: usize, op: &str, v: Value| {
        let f: Vec<Value> = (0..n)
            .map(|i| serde_json::json!({"key": format!("k{i}"), "op": op, "value": v}))
            .collect();
        serde_json::json!({ "attributes": f }).to_string()
    };
    for (body, needle) in [
        ("not json".to_string(), "invalid search body"),
        ("{\"servce\": \"x\"}".to_string(), "unknown field"),
        ("{\"limit\": \"ten\"}".to_string(), "invalid search body"),
        ("{\"limit\": 0}".to_string(), "limit"),
        ("{\"limit\": 5000}".to_string(), "limit"),
        ("{\"kind\": \"DANCE\"}".to_string(), "kind"),
        ("{\"status\": \"meh\"}".to_string(), "status"),
        ("{\"duration_scope\": \"forever\"}".to_string(), "duration_scope"),
        ("{\"min_duration\": \"5\"}".to_string(), "min_duration"),
        ("{\"start\": \"2026-11-28T10:00:00Z\", \"end\": \"2026-11-28T09:00:00Z\"}".to_string(), "end"),
        ("{\"cursor\": \"abc\"}".to_string(), "cursor"),
        (
            serde_json::json!({"attributes": [{"key": "rows", "op": ">", "value": "5"}]}).to_string(),
            "JSON number",
        ),
        (
            serde_json::json!({"attributes": [{"key": "p", "op": "regex", "value": "(a"}]}).to_string(),
            "invalid regex",
        ),
        (
            serde_json::json!({"attributes": [{"key": "p", "op": "regex", "value": "a{1000}{1000}"}]}).to_string(),
            "invalid regex",
        ),
        (
            serde_json::json!({"attributes": [{"key": "p", "op": "like", "value": "x"}]}).to_string(),
            "unknown operator",
        ),
        (
            serde_json::json!({"attributes": [{"key": "p", "op": "exists", "value": "x"}]}).to_string(),
            "no value",
        ),
        (
            serde_json::json!({"attributes": [{"key": "", "op": "exists"}]}).to_string(),
            "key",
        ),
        (
            serde_json::json!({"attributes": [{"key": "p", "op": "=", "valu": "x"}]}).to_string(),
            "unknown field",
        ),
        (many(17, "exists", Value::Null).replace(",\"value\":null", ""), "at most 16"),
        (many(5, "regex", Value::String("a".into())), "at most 4 regex"),
    ] {
        let (status, resp) = post(&router, "/api/v1/traces/search", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {resp}");
        assert_eq!(resp["error"]["code"], "invalid_argument", "{body}");
        let msg = resp["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg:?} should mention {needle}");
    }
    let huge = serde_json::json!({"service": "x".repeat(70_000)}).to_string();
    let (status, resp) = post(&router, "/api/v1/traces/search", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    assert_eq!(resp["error"]["code"], "payload_too_large");
    let (status, resp) = get(&router, "/api/v1/traces?kind=DANCE").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    let (status, resp) = get(&router, "/api/v1/traces?duration_scope=all").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    let (status, resp) = get(&router, "/api/v1/traces?cursor=00").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
}

#[tokio::test]
async fn trace_response_has_critical_path_self_times_and_a_truncation_marker() {
    let (_d, store, router) = setup_with(QueryConfig {
        max_trace_spans: 3,
        ..QueryConfig::default()
    })
    .await;
    let t = fresh_trace_id();
    let t0 = Timestamp::now();
    // Two inputs (b is slower), a join waiting for both, a publish after it.
    let a = simple_span(t, 1, None, "ingest-a", t0, 100);
    let b = simple_span(t, 2, None, "ingest-b", t0.saturating_add_nanos(5), 200);
    let mut join = simple_span(t, 3, Some(1), "join", t0.saturating_add_nanos(300), 100);
    join.links = [1, 2]
        .into_iter()
        .map(|n| Link {
            trace_id: t,
            span_id: span_id(n),
            link_type: LinkType::DataDependency,
            attributes: Attributes::new(),
        })
        .collect();
    store.write(vec![a, b, join].into()).await.unwrap();

    let (status, dag) = get(&router, &format!("/api/v1/traces/{t}")).await;
    assert_eq!(status, StatusCode::OK, "{dag}");
    assert_eq!(dag["truncated"], false);
    assert!(dag.get("max_spans").is_none());
    assert_eq!(
        dag["critical_path"],
        serde_json::json!([span_id(2).to_string(), span_id(3).to_string()]),
        "the slower input, then the join"
    );
    assert_eq!(dag["self_times"][1]["self_nanos"], 200);

    let publish = simple_span(t, 4, Some(3), "publish", t0.saturating_add_nanos(500), 10);
    store.write(vec![publish].into()).await.unwrap();
    let (status, dag) = get(&router, &format!("/api/v1/traces/{t}")).await;
    assert_eq!(status, StatusCode::OK, "{dag}");
    assert_eq!(dag["truncated"], true);
    assert_eq!(dag["max_spans"], 3);
    assert_eq!(dag["spans"].as_array().unwrap().len(), 3);
    assert_eq!(
        dag["spans"][2]["service"], "join",
        "the first spans by start time"
    );

    // The marker links to the rest: here the one span past the cut.
    let next = dag["next_spans"]
        .as_str()
        .expect("a truncated trace links to its other spans");
    assert!(
        next.starts_with(&format!("/api/v1/traces/{t}/spans?cursor=")),
        "{next}"
    );
    let (status, rest) = get(&router, next).await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_eq!(rest["spans"].as_array().unwrap().len(), 1);
    assert_eq!(rest["spans"][0]["service"], "publish");
    assert!(rest.get("next_cursor").is_none(), "the last page: {rest}");

    // Paged from the start, one span a page: every span once, in order.
    let mut services = Vec::new();
    let mut uri = format!("/api/v1/traces/{t}/spans?limit=1");
    for _ in 0..10 {
        let (status, page) = get(&router, &uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["limit"], 1);
        services.extend(
            page["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["service"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/traces/{t}/spans?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        services,
        ["ingest-a", "ingest-b", "join", "publish"]
            .map(Value::from)
            .to_vec()
    );
    let (status, all) = get(&router, &format!("/api/v1/traces/{t}/spans")).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(
        all["limit"], 3,
        "the default page is at most query.max_trace_spans"
    );
    assert!(all["next_cursor"].is_string());

    let other = fresh_trace_id();
    let cursor = next.rsplit('=').next().unwrap();
    for (uri, status, needle) in [
        (
            format!("/api/v1/traces/{other}/spans"),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            "/api/v1/traces/xyz/spans".to_string(),
            StatusCode::BAD_REQUEST,
            "trace id",
        ),
        (
            format!("/api/v1/traces/{t}/spans?limit=0"),
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            format!("/api/v1/traces/{t}/spans?limit=4"),
            StatusCode::BAD_REQUEST,
            "max_trace_spans",
        ),
        (
            format!("/api/v1/traces/{t}/spans?cursor=00"),
            StatusCode::BAD_REQUEST,
            "cursor",
        ),
        (
            format!("/api/v1/traces/{other}/spans?cursor={cursor}"),
            StatusCode::BAD_REQUEST,
            "another trace",
        ),
        (
            format!("/api/v1/traces/{t}/spans?page=2"),
            StatusCode::BAD_REQUEST,
            "unknown parameter",
        ),
    ] {
        let (got, body) = get(&router, &uri).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(needle),
            "{uri}: {body}"
        );
    }
}

#[tokio::test]
async fn a_zero_trace_span_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
            .await
            .unwrap(),
    );
    let mut registry = Registry::default();
    let http = HttpMetrics::register(&mut registry);
    let err = QueryService::new(
        QueryConfig {
            max_trace_spans: 0,
            ..QueryConfig::default()
        },
        store,
        http,
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_trace_spans"), "{err}");
}

fn follows(trace_id: datatracing_core::TraceId, span: u64) -> Link {
    Link {
        trace_id,
        span_id: span_id(span),
        link_type: LinkType::FollowsFrom,
        attributes: Attributes::new(),
    }
}

/// A chain producer <- consumer <- report (each follows from the previous one) and a link
/// from the producer to a trace that is not stored.
async fn write_chain(
    store: &EmbeddedStore,
) -> (
    datatracing_core::TraceId,
    datatracing_core::TraceId,
    datatracing_core::TraceId,
    datatracing_core::TraceId,
) {
    let (producer, consumer, report, gone) = (
        fresh_trace_id(),
        fresh_trace_id(),
        fresh_trace_id(),
        fresh_trace_id(),
    );
    let t0 = Timestamp::now();
    let mut p = simple_span(producer, 1, None, "ingest", t0, 100);
    p.links = vec![follows(gone, 1)];
    let mut c = simple_span(
        consumer,
        1,
        None,
        "transform",
        t0.saturating_add_nanos(200),
        100,
    );
    c.links = vec![follows(producer, 1)];
    let mut r = simple_span(report, 1, None, "report", t0.saturating_add_nanos(400), 100);
    r.links = vec![follows(consumer, 1)];
    store.write(vec![p, c, r].into()).await.unwrap();
    (producer, consumer, report, gone)
}

#[tokio::test]
async fn lineage_endpoint_walks_links_with_bounds_and_markers() {
    let mut config = QueryConfig::default();
    config.lineage.max_nodes = 3;
    config.lineage.default_depth = 1;
    config.lineage.max_depth = 4;
    let (_d, store, router) = setup_with(config).await;
    let (producer, consumer, report, gone) = write_chain(&store).await;

    let (status, body) = get(
        &router,
        &format!("/api/v1/traces/{producer}/lineage?direction=downstream&depth=4"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["root"], producer.to_string());
    assert_eq!(body["direction"], "downstream");
    assert_eq!(body["depth"], 4);
    assert_eq!(body["truncated"], false, "{body}");
    assert_eq!(body["max_nodes"], 3);
    let nodes: Vec<(String, u64)> = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["trace_id"].as_str().unwrap().to_string(),
                n["depth"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        vec![
            (producer.to_string(), 0),
            (consumer.to_string(), 1),
            (report.to_string(), 2)
        ]
    );
    assert_eq!(body["nodes"][1]["summary"]["root_service"], "transform");
    let edges = body["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2, "{body}");
    assert!(edges.iter().any(|e| e["from_trace"] == consumer.to_string()
        && e["to_trace"] == producer.to_string()
        && e["type"] == "FOLLOWS_FROM"
        && e["to_span"] == span_id(1).to_string()));

    // The default depth (1) and direction (both): the consumer's neighbours only, cut.
    let (status, body) = get(&router, &format!("/api/v1/traces/{consumer}/lineage")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["direction"], "both");
    assert_eq!(body["depth"], 1);
    assert_eq!(body["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(
        body["truncated"], true,
        "the producer's dangling link is past depth 1"
    );

    // Upstream from the report reaches the dangling trace only past the node cap (3).
    let (_, body) = get(
        &router,
        &format!("/api/v1/traces/{report}/lineage?direction=upstream&depth=4"),
    )
    .await;
    assert_eq!(body["nodes"].as_array().unwrap().len(), 3, "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    assert!(!body.to_string().contains(&gone.to_string()));
    // From the producer upstream, the dangling trace is a node without a summary.
    let (_, body) = get(
        &router,
        &format!("/api/v1/traces/{producer}/lineage?direction=upstream"),
    )
    .await;
    assert_eq!(body["nodes"][1]["trace_id"], gone.to_string(), "{body}");
    assert_eq!(body["nodes"][1]["stored"], false);
    assert!(body["nodes"][1].get("summary").is_none());
}

#[tokio::test]
async fn lineage_errors_are_in_the_envelope() {
    let (_d, store, router) = setup().await;
    let (producer, _, _, gone) = write_chain(&store).await;
    let (status, body) = get(&router, &format!("/api/v1/traces/{gone}/lineage")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    for (query, needle) in [
        ("direction=sideways", "direction"),
        ("direction=Upstream", "direction"),
        ("depth=0", "depth"),
        ("depth=-1", "depth"),
        ("depth=11", "max_depth"),
        ("depth=two", "depth"),
        ("depth=99999999999999999999999", "depth"),
        ("deep=2", "unknown parameter"),
        ("depth=1&depth=2", "twice"),
    ] {
        let (status, body) = get(
            &router,
            &format!("/api/v1/traces/{producer}/lineage?{query}"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{query}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }
    let (status, body) = get(&router, "/api/v1/traces/xyz/lineage").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_argument");
}

#[tokio::test]
async fn link_filters_in_the_query_string_and_the_body() {
    let (_d, store, router) = setup().await;
    let (producer, consumer, report, _) = write_chain(&store).await;
    let (status, body) = get(&router, &format!("/api/v1/traces?linked_trace={producer}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), vec![consumer.to_string()]);
    let (_, body) = get(&router, "/api/v1/traces?linked_service=transform").await;
    assert_eq!(ids(&body), vec![report.to_string()]);
    let (_, body) = get(
        &router,
        &format!("/api/v1/traces?linked_trace={producer}&service=report"),
    )
    .await;
    assert!(ids(&body).is_empty(), "filters combine on one span");
    let (status, body) = post(
        &router,
        "/api/v1/traces/search",
        serde_json::json!({"linked_service": "ingest", "limit": 5}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), vec![consumer.to_string()]);
    let (status, body) = post(
        &router,
        "/api/v1/traces/search",
        serde_json::json!({"linked_trace": consumer.to_string()}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), vec![report.to_string()]);

    let (status, body) = get(&router, "/api/v1/traces?linked_trace=nothex").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("linked_trace"),
        "{body}"
    );
    let (status, _) = post(
        &router,
        "/api/v1/traces/search",
        serde_json::json!({"linked_trace": 5}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Asserts the one error envelope: `{"error": {"code", "message", "details": [...]}}`.
fn assert_envelope(uri: &str, body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{uri}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{uri}: {body}"
    );
    assert!(body["error"]["details"].is_array(), "{uri}: {body}");
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "{uri}: only `error`: {body}"
    );
}

/// Every v1 handler's error paths, each in the envelope with its status.
#[tokio::test]
async fn every_v1_error_path_is_in_the_envelope() {
    let (_d, store, router) = setup().await;
    let t = fresh_trace_id();
    store
        .write(vec![simple_span(t, 1, None, "errs", Timestamp::now(), 10)].into())
        .await
        .unwrap();
    let unknown = fresh_trace_id();
    let gets = [
        // Malformed ids.
        (
            "/api/v1/traces/nothex".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/api/v1/traces/nothex/lineage".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/api/v1/traces/nothex/spans".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/api/v1/traces/%FF".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        // Unknown traces.
        (
            format!("/api/v1/traces/{unknown}"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("/api/v1/traces/{unknown}/lineage"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("/api/v1/traces/{unknown}/spans"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        // Bad parameters.
        (
            format!("/api/v1/traces/{t}/lineage?depth=0"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            format!("/api/v1/traces/{t}/lineage?direction=sideways"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            format!("/api/v1/traces/{t}/spans?limit=x"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/api/v1/traces?limit=0".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/api/v1/traces?bogus=1".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/api/v1/services?limit=0".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/api/v1/services?start=yesterday".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/api/v1/services/errs/operations?end=x".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        // No such route.
        (
            "/api/v1/nothing".to_string(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (uri, status, code) in gets {
        let (got, body) = get(&router, &uri).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert_envelope(&uri, &body, code);
    }

    // The JSON search body: malformed, oversized, not JSON by content type.
    let send = |content_type: Option<&'static str>, body: String| {
        let router = router.clone();
        async move {
            let mut req = Request::builder()
                .method("POST")
                .uri("/api/v1/traces/search");
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let resp = router
                .oneshot(req.body(Body::from(body)).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    for (ct, body, status, code) in [
        (
            Some("application/json"),
            "{".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Some("application/json"),
            serde_json::json!({"service": "x".repeat(70_000)}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Some("text/plain"),
            "{}".to_string(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Some("application/x-www-form-urlencoded"),
            "service=x".to_string(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            None,
            "{}".to_string(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ] {
        let (got, resp) = send(ct, body).await;
        assert_eq!(got, status, "{ct:?}: {resp}");
        assert_envelope("/api/v1/traces/search", &resp, code);
    }
    for ct in [
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/vnd.api+json",
    ] {
        let (got, resp) = send(Some(ct), "{}".to_string()).await;
        assert_eq!(got, StatusCode::OK, "{ct}: {resp}");
    }

    // A method a route does not have.
    let resp = router
        .clone()
        .oneshot(
            Request::builder()
                .method("DELETE")
                .uri(format!("/api/v1/traces/{t}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_envelope(
        "DELETE trace",
        &serde_json::from_slice(&bytes).unwrap(),
        "method_not_allowed",
    );
}

/// The pipeline conventions over HTTP: `dataset=` in the query string and the body, the
/// `contains` operator, and lineage edges with their datasets, grouped, or one dataset
/// followed; a bad dataset or operand is a 400 in the envelope.
#[tokio::test]
async fn datasets_in_search_and_lineage_over_http() {
    use datatracing_core::AttributeValue;
    use datatracing_core::conventions::{DATASET_INPUTS, DATASET_OUTPUTS, LINK_DATASET};
    let (_d, store, router) = setup().await;
    let (producer, consumer, other) = (fresh_trace_id(), fresh_trace_id(), fresh_trace_id());
    let t0 = Timestamp::now();
    let mut p = simple_span(producer, 1, None, "ingest", t0, 100);
    p.attributes.insert(
        DATASET_OUTPUTS.into(),
        AttributeValue::StringArray(vec!["lake/orders".into()]),
    );
    let o = simple_span(other, 1, None, "ingest", t0, 100);
    let mut c = simple_span(
        consumer,
        1,
        None,
        "enrich",
        t0.saturating_add_nanos(200),
        100,
    );
    c.attributes.insert(
        DATASET_INPUTS.into(),
        AttributeValue::StringArray(vec!["lake/orders".into(), "lake/customers".into()]),
    );
    let mut l = follows(producer, 1);
    l.link_type = datatracing_core::LinkType::DataDependency;
    l.attributes.insert(
        LINK_DATASET.into(),
        AttributeValue::String("lake/orders".into()),
    );
    c.links = vec![l, follows(other, 1)];
    store.write(vec![p, o, c].into()).await.unwrap();

    let mut both = vec![producer.to_string(), consumer.to_string()];
    both.sort();
    let sorted = |b: &Value| {
        let mut v = ids(b);
        v.sort();
        v
    };
    let (status, body) = get(&router, "/api/v1/traces?dataset=lake%2Forders").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(sorted(&body), both);
    let (status, body) = post(
        &router,
        "/api/v1/traces/search",
        serde_json::json!({"dataset": "lake/customers"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), vec![consumer.to_string()]);
    let (status, body) = post(
        &router,
        "/api/v1/traces/search",
        serde_json::json!({"attributes": [
            {"key": DATASET_INPUTS, "op": "contains", "value": "lake/orders"}
        ]})
        .to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), vec![consumer.to_string()]);

    let (status, body) = get(
        &router,
        &format!("/api/v1/traces/{consumer}/lineage?direction=upstream"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["edges"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(
        body["datasets"],
        serde_json::json!([{
            "name": "lake/orders",
            "producers": [producer.to_string()],
            "consumers": [consumer.to_string()],
            "edges": 1
        }]),
        "{body}"
    );
    let (status, body) = get(
        &router,
        &format!("/api/v1/traces/{consumer}/lineage?direction=upstream&dataset=lake%2Forders"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dataset"], "lake/orders");
    assert_eq!(body["nodes"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["edges"][0]["dataset"], "lake/orders");
    assert!(!body.to_string().contains(&other.to_string()), "{body}");

    let long = "d".repeat(4097);
    for (status, body) in [
        get(&router, &format!("/api/v1/traces?dataset={long}")).await,
        get(
            &router,
            &format!("/api/v1/traces/{consumer}/lineage?dataset={long}"),
        )
        .await,
        post(
            &router,
            "/api/v1/traces/search",
            serde_json::json!({"attributes": [{"key": "k", "op": "contains", "value": 3}]})
                .to_string(),
        )
        .await,
    ] {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{body}");
    }
}
