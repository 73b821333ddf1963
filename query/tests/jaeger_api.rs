//! The Jaeger-compatible API driven through the router (`oneshot`) on the real embedded
//! store: what the differential test against Jaeger (e2e/tests/jaeger_compat.rs) cannot
//! show because Jaeger has no such thing (step kinds, DATA_DEPENDENCY, TIMEOUT and
//! CANCELLED, link edges in dependencies, truncation), and every error path in Jaeger's
//! envelope, including a failing store. The mapping checks also run over ClickHouse (a
//! real engine, a writer and a separately opened reader), since the two stores answer the
//! reads the Jaeger API makes with different SQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use datatracing_core::{
    AttributeValue, Attributes, Event, Link, LinkType, Operation, SearchPage, Span, SpanKind,
    Status, StatusCode as SpanStatus, TimeWindow, Timestamp, TraceId, TraceQuery,
};
use datatracing_query::QueryConfig;
use datatracing_store::{CappedTrace, Health, TraceReader, TraceWriter};
use datatracing_store_clickhouse::{
    ClickHouseConfig, ClickHouseMetrics, ClickHouseReader, ClickHouseStore,
};
use datatracing_store_contract::{fresh_trace_id, simple_span, span_id};
use datatracing_testkit::clickhouse::{ClickHouse, unique_database};
use serde_json::{Value, json};
use tower::ServiceExt;

use common::{embedded as setup, router_over, send};

/// A ClickHouse store (a database of its own on the shared test engine, see
/// `datatracing_testkit::clickhouse`) and the query router over a separately opened reader,
/// as a query process reads it.
async fn setup_clickhouse(config: QueryConfig) -> (ClickHouseReader, ClickHouseStore, Router) {
    let server = ClickHouse::shared();
    let ch = ClickHouseConfig {
        url: server.url().to_string(),
        user: server.user().to_string(),
        password: server.password().to_string(),
        database: unique_database("jaeger"),
        ..ClickHouseConfig::default()
    };
    let store = ClickHouseStore::open(ch.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let reader = ClickHouseReader::open(ch, ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let router = router_over(Arc::new(reader.clone()), config);
    (reader, store, router)
}

/// `GET uri`: the status, the body (which must be JSON) and the `retry-after` header.
async fn get(router: &Router, uri: &str) -> (StatusCode, Value, Option<String>) {
    let reply = send(
        router,
        Request::builder().uri(uri).body(Body::empty()).unwrap(),
    )
    .await;
    let body = serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
        panic!(
            "{uri}: not JSON ({e}): {}",
            String::from_utf8_lossy(&reply.body)
        )
    });
    (reply.status, body, reply.header("retry-after"))
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == key)
}

fn span_by_id(trace: &Value, id: u64) -> &Value {
    let hex = span_id(id).to_hex();
    trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spanID"] == hex)
        .unwrap()
}

#[tokio::test]
async fn pipeline_semantics_survive_the_jaeger_mapping() {
    let config = QueryConfig::default();
    let (_d, store, router) = setup(config).await;
    check_pipeline_semantics(store.as_ref(), &router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_semantics_survive_the_jaeger_mapping_on_clickhouse() {
    let config = QueryConfig::default();
    let (_ch, store, router) = setup_clickhouse(config).await;
    check_pipeline_semantics(&store, &router).await;
}

async fn check_pipeline_semantics(store: &dyn TraceWriter, router: &Router) {
    let router = router.clone();
    let upstream = fresh_trace_id();
    let t = fresh_trace_id();
    let t0 = Timestamp::now().saturating_add_nanos(-60_000_000_000);
    let mut source = simple_span(upstream, 1, None, "kafka-ingest", t0, 1_000_000);
    source.kind = SpanKind::Ingest;
    let mut root = simple_span(
        t,
        1,
        None,
        "spark-etl",
        t0.saturating_add_nanos(2_000_500),
        9_999,
    );
    root.kind = SpanKind::Join;
    root.status = Status::with_message(SpanStatus::Timeout, "late partition");
    root.attributes = Attributes::from([
        ("rows".to_string(), AttributeValue::Int(42)),
        (
            "resource.host.name".to_string(),
            AttributeValue::from("node-1"),
        ),
        (
            "sizes".to_string(),
            AttributeValue::FloatArray(vec![1.0, 2.5]),
        ),
    ]);
    root.links = vec![
        Link {
            trace_id: upstream,
            span_id: span_id(1),
            link_type: LinkType::DataDependency,
            attributes: Attributes::new(),
        },
        Link {
            trace_id: upstream,
            span_id: span_id(1),
            link_type: LinkType::FollowsFrom,
            attributes: Attributes::new(),
        },
    ];
    root.events = vec![Event {
        name: "retry".into(),
        time: t0.saturating_add_nanos(2_001_700),
        attributes: Attributes::from([("attempt".to_string(), AttributeValue::Int(2))]),
    }];
    let mut child = simple_span(
        t,
        2,
        Some(1),
        "feature-api",
        t0.saturating_add_nanos(3_000_000),
        1_000,
    );
    child.kind = SpanKind::Server;
    child.status = Status::new(SpanStatus::Cancelled);
    store.write(vec![source, root, child].into()).await.unwrap();

    let (status, body, _) = get(&router, &format!("/api/traces/{t}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["errors"], Value::Null);
    let trace = &body["data"][0];
    assert_eq!(trace["traceID"], t.to_hex());
    let root = span_by_id(trace, 1);
    // Step kind: an INTERNAL span to Jaeger, the step in its own tag.
    assert_eq!(tag(root, "span.kind").unwrap()["value"], "internal");
    assert_eq!(tag(root, "datatracing.span.kind").unwrap()["value"], "JOIN");
    // TIMEOUT: an error to Jaeger, the precise status in its own tag.
    assert_eq!(tag(root, "error").unwrap()["value"], true);
    assert_eq!(tag(root, "otel.status_code").unwrap()["value"], "ERROR");
    assert_eq!(tag(root, "datatracing.status").unwrap()["value"], "TIMEOUT");
    assert_eq!(
        tag(root, "otel.status_description").unwrap()["value"],
        "late partition"
    );
    // DATA_DEPENDENCY: a FOLLOWS_FROM reference and the link types tag.
    assert_eq!(
        root["references"],
        json!([
            {"refType": "FOLLOWS_FROM", "traceID": upstream.to_hex(), "spanID": span_id(1).to_hex()},
            {"refType": "FOLLOWS_FROM", "traceID": upstream.to_hex(), "spanID": span_id(1).to_hex()},
        ])
    );
    assert_eq!(
        tag(root, "datatracing.link.types").unwrap()["value"],
        r#"["DATA_DEPENDENCY","FOLLOWS_FROM"]"#
    );
    // Attributes: typed, arrays as Go-style JSON text, resource attributes on the process.
    assert_eq!(
        tag(root, "rows").unwrap(),
        &json!({"key": "rows", "type": "int64", "value": 42})
    );
    assert_eq!(tag(root, "sizes").unwrap()["value"], "[1,2.5]");
    assert!(tag(root, "resource.host.name").is_none());
    let process = &trace["processes"][root["processID"].as_str().unwrap()];
    assert_eq!(
        process,
        &json!({"serviceName": "spark-etl", "tags": [{"key": "host.name", "type": "string", "value": "node-1"}]})
    );
    // Microseconds, truncated; duration from nanoseconds (9,999 ns is 9 µs).
    assert_eq!(root["duration"], 9);
    assert_eq!(
        root["startTime"],
        t0.saturating_add_nanos(2_000_500).unix_nanos() / 1000
    );
    assert_eq!(
        root["logs"],
        json!([{"timestamp": t0.saturating_add_nanos(2_001_700).unix_nanos() / 1000, "fields": [
            {"key": "event", "type": "string", "value": "retry"},
            {"key": "attempt", "type": "int64", "value": 2},
        ]}])
    );
    // CANCELLED on a SERVER span; the parent a CHILD_OF reference.
    let child = span_by_id(trace, 2);
    assert_eq!(tag(child, "span.kind").unwrap()["value"], "server");
    assert_eq!(
        tag(child, "datatracing.status").unwrap()["value"],
        "CANCELLED"
    );
    assert!(tag(child, "datatracing.span.kind").is_none());
    assert_eq!(child["references"][0]["refType"], "CHILD_OF");
    assert_ne!(child["processID"], root["processID"]);

    // Dependencies: parent/child and the links (twice to the same upstream span).
    let (status, deps, _) = get(&router, "/api/dependencies").await;
    assert_eq!(status, StatusCode::OK, "{deps}");
    let mut edges: Vec<(String, String, u64)> = deps["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["parent"].as_str().unwrap().to_string(),
                e["child"].as_str().unwrap().to_string(),
                e["callCount"].as_u64().unwrap(),
            )
        })
        .collect();
    edges.sort();
    assert_eq!(
        edges,
        vec![
            ("kafka-ingest".into(), "spark-etl".into(), 2),
            ("spark-etl".into(), "feature-api".into(), 1),
        ]
    );
    // A window that ends before the spans: nothing.
    let before_ms = t0.unix_nanos() / 1_000_000 - 10_000;
    let (_, deps, _) = get(
        &router,
        &format!("/api/dependencies?endTs={before_ms}&lookback=1000"),
    )
    .await;
    assert_eq!(deps["data"], json!([]));

    // Listings and searches that read the step kind and the error status.
    let (_, ops, _) = get(
        &router,
        "/api/operations?service=spark-etl&spanKind=internal",
    )
    .await;
    assert_eq!(
        ops["data"],
        json!([{"name": root["operationName"], "spanKind": "internal"}])
    );
    assert_eq!(ops["total"], 1);
    for q in [
        "service=spark-etl&tags=%7B%22error%22%3A%22true%22%7D",
        "service=spark-etl&tags=datatracing.span.kind%3DJOIN",
        "service=spark-etl&tag=span.kind:internal",
        "service=spark-etl&tag=rows:42",
        "service=feature-api&tags=error%3Dtrue",
        "service=spark-etl&minDuration=9us&maxDuration=10us",
    ] {
        let (status, found, _) = get(&router, &format!("/api/traces?{q}")).await;
        assert_eq!(status, StatusCode::OK, "{q}: {found}");
        let ids: Vec<&str> = found["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["traceID"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec![t.to_hex().as_str()], "{q}");
    }
    for q in [
        "service=spark-etl&tag=rows:41",
        "service=spark-etl&minDuration=10us",
        "service=kafka-ingest&tags=error%3Dtrue",
    ] {
        let (_, found, _) = get(&router, &format!("/api/traces?{q}")).await;
        assert_eq!(found["data"], json!([]), "{q}");
    }
}

#[tokio::test]
async fn large_traces_are_cut_with_a_warning_and_searches_keep_to_the_span_budget() {
    let config = QueryConfig {
        max_trace_spans: 5,
        ..QueryConfig::default()
    };
    let (_d, store, router) = setup(config).await;
    check_large_traces(store.as_ref(), &router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_traces_are_cut_with_a_warning_and_searches_keep_to_the_span_budget_on_clickhouse() {
    let config = QueryConfig {
        max_trace_spans: 5,
        ..QueryConfig::default()
    };
    let (_ch, store, router) = setup_clickhouse(config).await;
    check_large_traces(&store, &router).await;
}

async fn check_large_traces(store: &dyn TraceWriter, router: &Router) {
    let router = router.clone();
    let t0 = Timestamp::now().saturating_add_nanos(-60_000_000_000);
    let big = fresh_trace_id();
    let spans: Vec<Span> = (0..8)
        .map(|i| {
            simple_span(
                big,
                i,
                None,
                "wide",
                t0.saturating_add_nanos(i as i64 * 1000),
                10,
            )
        })
        .collect();
    store.write(spans.into()).await.unwrap();
    let small: Vec<TraceId> = (0..3).map(|_| fresh_trace_id()).collect();
    for (n, s) in small.iter().enumerate() {
        store
            .write(
                vec![simple_span(
                    *s,
                    1,
                    None,
                    "wide",
                    t0.saturating_add_nanos(n as i64 + 9_000_000),
                    10,
                )]
                .into(),
            )
            .await
            .unwrap();
    }
    let (status, body, _) = get(&router, &format!("/api/traces/{big}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"][0]["spans"].as_array().unwrap().len(), 5);
    assert!(
        body["data"][0]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("truncated to its first 5 spans"),
        "{}",
        body["data"][0]["warnings"]
    );
    // Search: the three small traces (newest) fit, the big one gets what is left.
    let (_, found, _) = get(&router, "/api/traces?service=wide").await;
    let traces = found["data"].as_array().unwrap();
    let total: usize = traces
        .iter()
        .map(|t| t["spans"].as_array().unwrap().len())
        .sum();
    assert_eq!(total, 5, "one answer holds at most max_trace_spans spans");
    assert_eq!(traces.len(), 4);
    assert!(
        traces[3]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("truncated")
    );
}

#[tokio::test]
async fn dependencies_read_a_bounded_number_of_spans() {
    let config = QueryConfig {
        max_trace_spans: 5,
        ..QueryConfig::default()
    };
    let (_d, store, router) = setup(config).await;
    let t0 = Timestamp::now().saturating_add_nanos(-60_000_000_000);
    // Eight traces of a root and four children: 32 calls, 40 spans; the budget is 4 x 5.
    for n in 0..8 {
        let t = fresh_trace_id();
        let start = t0.saturating_add_nanos(n * 1_000_000);
        let spans: Vec<Span> = (0..5)
            .map(|i| {
                let (parent, svc) = if i == 0 {
                    (None, "up")
                } else {
                    (Some(0), "down")
                };
                simple_span(t, i, parent, svc, start.saturating_add_nanos(i as i64), 10)
            })
            .collect();
        store.write(spans.into()).await.unwrap();
    }
    let (status, deps, _) = get(&router, "/api/dependencies").await;
    assert_eq!(status, StatusCode::OK, "{deps}");
    assert_eq!(
        deps["data"],
        json!([{"parent": "up", "child": "down", "callCount": 16}]),
        "the four newest traces, 20 spans"
    );
}

/// Asserts Jaeger's error envelope with `status`.
fn assert_error(uri: &str, status: StatusCode, want: StatusCode, body: &Value) {
    assert_eq!(status, want, "{uri}: {body}");
    assert_eq!(body["data"], Value::Null, "{uri}: {body}");
    assert_eq!(body["total"], 0);
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{uri}: {body}");
    assert_eq!(errors[0]["code"], want.as_u16(), "{uri}: {body}");
    assert!(!errors[0]["msg"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn bad_input_is_a_jaeger_error_never_a_panic() {
    let (_d, _store, router) = setup(QueryConfig::default()).await;
    let many_ids: String = (0..101)
        .map(|i| format!("traceID={:032x}", i + 1))
        .collect::<Vec<_>>()
        .join("&");
    let cases = [
        ("/api/traces".to_string(), "service"),
        ("/api/traces?service=".to_string(), "service"),
        ("/api/traces/zzz".to_string(), "trace id"),
        (format!("/api/traces/{}", "a".repeat(33)), "trace id"),
        ("/api/traces/%FF".to_string(), "path"),
        ("/api/services/%FF/operations".to_string(), "path"),
        ("/api/traces?traceID=xyz".to_string(), "traceID"),
        (format!("/api/traces?{many_ids}"), "at most 100"),
        (
            "/api/traces?service=a&minDuration=abc".to_string(),
            "minDuration",
        ),
        (
            "/api/traces?service=a&minDuration=-1s".to_string(),
            "minDuration",
        ),
        (
            "/api/traces?service=a&maxDuration=9999999999h".to_string(),
            "maxDuration",
        ),
        (
            "/api/traces?service=a&minDuration=2s&maxDuration=1s".to_string(),
            "maxDuration",
        ),
        ("/api/traces?service=a&limit=x".to_string(), "limit"),
        (
            "/api/traces?service=a&limit=99999999999999999999".to_string(),
            "limit",
        ),
        ("/api/traces?service=a&start=yesterday".to_string(), "start"),
        (
            "/api/traces?service=a&end=9223372036854775807".to_string(),
            "end",
        ),
        ("/api/traces?service=a&start=20&end=10".to_string(), "end"),
        (
            "/api/traces?service=a&lookback=forever".to_string(),
            "lookback",
        ),
        ("/api/traces?service=a&tags=%7Bbad".to_string(), "tags"),
        (
            "/api/traces?service=a&tags=%7B%22k%22%3A1%7D".to_string(),
            "tags",
        ),
        ("/api/traces?service=a&tags=k%3D%22open".to_string(), "tags"),
        ("/api/traces?service=a&tag=nocolon".to_string(), "tag"),
        ("/api/traces?service=a&tag=error:maybe".to_string(), "error"),
        (
            "/api/traces?service=a&tag=span.kind:sideways".to_string(),
            "span.kind",
        ),
        (
            "/api/traces?service=a&tag=datatracing.span.kind:BAKE".to_string(),
            "datatracing.span.kind",
        ),
        (
            "/api/traces?service=a&tag=span.kind:server&tag=datatracing.span.kind:JOIN".to_string(),
            "cannot both",
        ),
        ("/api/operations".to_string(), "service"),
        (
            "/api/operations?service=a&spanKind=sideways".to_string(),
            "spanKind",
        ),
        (
            format!("/api/operations?service={}", "s".repeat(1025)),
            "service",
        ),
        ("/api/dependencies?endTs=now".to_string(), "endTs"),
        (
            "/api/dependencies?endTs=1&lookback=week".to_string(),
            "lookback",
        ),
        ("/api/dependencies?lookback=-5".to_string(), "lookback"),
    ];
    for (uri, needle) in cases {
        let (status, body, _) = get(&router, &uri).await;
        assert_error(&uri, status, StatusCode::BAD_REQUEST, &body);
        let msg = body["errors"][0]["msg"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{uri}: {msg:?} should mention {needle}"
        );
    }
    let (status, body, _) = get(&router, &format!("/api/traces/{}", fresh_trace_id())).await;
    assert_error("unknown trace", status, StatusCode::NOT_FOUND, &body);
    // Short ids are zero-padded, as Jaeger reads them.
    let (status, body, _) = get(&router, "/api/traces/1234").await;
    assert_error("short id", status, StatusCode::NOT_FOUND, &body);
    // Empty store: empty listings, not errors.
    let (status, body, _) = get(&router, "/api/services").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"data": [], "total": 0, "limit": 0, "offset": 0, "errors": null})
    );
}

/// A reader whose every read fails as the given store error.
#[derive(Debug)]
struct Failing(datatracing_store::Error);

#[async_trait]
impl Health for Failing {
    fn backend(&self) -> &'static str {
        "failing"
    }
    async fn health(&self) -> datatracing_store::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl TraceReader for Failing {
    fn for_tenant(&self, _: &datatracing_core::Tenant) -> Arc<dyn TraceReader> {
        Arc::new(Failing(self.0.clone()))
    }

    async fn get_trace(&self, _: TraceId) -> datatracing_store::Result<Option<Vec<Span>>> {
        Err(self.0.clone())
    }
    async fn get_trace_capped(
        &self,
        _: TraceId,
        _: usize,
    ) -> datatracing_store::Result<Option<CappedTrace>> {
        Err(self.0.clone())
    }
    async fn trace_spans(
        &self,
        _: TraceId,
        _: Option<datatracing_core::SpanCursor>,
        _: usize,
    ) -> datatracing_store::Result<Vec<Span>> {
        Err(self.0.clone())
    }
    async fn search(&self, _: &TraceQuery) -> datatracing_store::Result<SearchPage> {
        Err(self.0.clone())
    }
    async fn services(&self, _: &TimeWindow, _: usize) -> datatracing_store::Result<Vec<String>> {
        Err(self.0.clone())
    }
    async fn operations(
        &self,
        _: &str,
        _: &TimeWindow,
        _: usize,
    ) -> datatracing_store::Result<Vec<Operation>> {
        Err(self.0.clone())
    }
    async fn summaries(
        &self,
        _: &[TraceId],
    ) -> datatracing_store::Result<Vec<datatracing_core::TraceSummary>> {
        Err(self.0.clone())
    }
    async fn links_from(
        &self,
        _: &[TraceId],
        _: usize,
    ) -> datatracing_store::Result<Vec<datatracing_store::CrossLink>> {
        Err(self.0.clone())
    }
    async fn links_to(
        &self,
        _: &[TraceId],
        _: usize,
    ) -> datatracing_store::Result<Vec<datatracing_store::CrossLink>> {
        Err(self.0.clone())
    }
}

#[tokio::test]
async fn store_failures_are_jaeger_errors_with_the_right_status() {
    let uris = [
        "/api/services".to_string(),
        "/api/services/a/operations".to_string(),
        "/api/operations?service=a".to_string(),
        "/api/traces?service=a".to_string(),
        format!("/api/traces/{}", fresh_trace_id()),
        format!("/api/traces?traceID={}", fresh_trace_id()),
        "/api/dependencies".to_string(),
    ];
    for (error, want, retry) in [
        (
            datatracing_store::Error::Unavailable("busy".into()),
            StatusCode::SERVICE_UNAVAILABLE,
            true,
        ),
        (
            datatracing_store::Error::Rejected("schema".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
        ),
    ] {
        let router = router_over(Arc::new(Failing(error)), QueryConfig::default());
        for uri in &uris {
            let (status, body, retry_after) = get(&router, uri).await;
            assert_error(uri, status, want, &body);
            assert_eq!(retry_after.is_some(), retry, "{uri}: Retry-After");
            // Internals stay in the log.
            assert!(!body.to_string().contains("schema"), "{uri}: {body}");
        }
    }
}

fn otlp_attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a Value> {
    attrs
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

#[tokio::test]
async fn api_v3_gives_back_otlp_with_pipeline_semantics() {
    let config = QueryConfig {
        max_trace_spans: 3,
        ..QueryConfig::default()
    };
    let (_d, store, router) = setup(config).await;
    check_api_v3(store.as_ref(), &router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_v3_gives_back_otlp_with_pipeline_semantics_on_clickhouse() {
    let config = QueryConfig {
        max_trace_spans: 3,
        ..QueryConfig::default()
    };
    let (_ch, store, router) = setup_clickhouse(config).await;
    check_api_v3(&store, &router).await;
}

async fn check_api_v3(store: &dyn TraceWriter, router: &Router) {
    let router = router.clone();
    let t = fresh_trace_id();
    let t0 = Timestamp::now().saturating_add_nanos(-60_000_000_000);
    let mut root = simple_span(t, 1, None, "spark-etl", t0, 5_000_000);
    root.kind = SpanKind::Aggregate;
    root.status = Status::with_message(SpanStatus::Timeout, "late");
    root.attributes = Attributes::from([
        ("rows".to_string(), AttributeValue::Int(7)),
        (
            "resource.host.name".to_string(),
            AttributeValue::from("node-1"),
        ),
        ("otel.scope.name".to_string(), AttributeValue::from("sdk")),
    ]);
    root.links = vec![Link {
        trace_id: t,
        span_id: span_id(2),
        link_type: LinkType::DataDependency,
        attributes: Attributes::from([("edge".to_string(), AttributeValue::from("orders"))]),
    }];
    let mut child = simple_span(t, 2, Some(1), "spark-etl", t0.saturating_add_nanos(10), 100);
    child.attributes = Attributes::from([
        (
            "resource.host.name".to_string(),
            AttributeValue::from("node-1"),
        ),
        ("otel.scope.name".to_string(), AttributeValue::from("sdk")),
    ]);
    store.write(vec![root, child].into()).await.unwrap();

    let (status, body, _) = get(&router, &format!("/api/v3/traces/{t}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rs = &body["result"]["resourceSpans"][0];
    assert_eq!(
        otlp_attr(&rs["resource"]["attributes"], "service.name").unwrap(),
        &json!({"stringValue": "spark-etl"})
    );
    assert_eq!(
        otlp_attr(&rs["resource"]["attributes"], "host.name").unwrap(),
        &json!({"stringValue": "node-1"})
    );
    let scoped = &rs["scopeSpans"][0];
    assert_eq!(scoped["scope"], json!({"name": "sdk"}));
    let root = &scoped["spans"][0];
    assert_eq!(root["spanId"], span_id(1).to_hex());
    assert_eq!(root["kind"], 1, "a step kind is an INTERNAL span");
    assert_eq!(root["status"], json!({"code": 2, "message": "late"}));
    assert_eq!(root["startTimeUnixNano"], t0.unix_nanos().to_string());
    let attrs = &root["attributes"];
    assert_eq!(otlp_attr(attrs, "rows").unwrap(), &json!({"intValue": "7"}));
    assert_eq!(
        otlp_attr(attrs, "datatracing.span.kind").unwrap(),
        &json!({"stringValue": "AGGREGATE"})
    );
    assert_eq!(
        otlp_attr(attrs, "datatracing.status").unwrap(),
        &json!({"stringValue": "TIMEOUT"})
    );
    assert!(otlp_attr(attrs, "resource.host.name").is_none());
    assert!(otlp_attr(attrs, "otel.scope.name").is_none());
    let link = &root["links"][0];
    assert_eq!(
        otlp_attr(&link["attributes"], "datatracing.link.type").unwrap(),
        &json!({"stringValue": "data_dependency"})
    );
    assert_eq!(
        otlp_attr(&link["attributes"], "edge").unwrap(),
        &json!({"stringValue": "orders"})
    );
    // One resource, one scope: both spans in the same group.
    assert_eq!(body["result"]["resourceSpans"].as_array().unwrap().len(), 1);
    assert_eq!(scoped["spans"][1]["parentSpanId"], span_id(1).to_hex());

    // Searches: attributes are applied (Jaeger v1.76 ignores them), num_traces defaults.
    let w = format!(
        "query.start_time_min={}&query.start_time_max={}",
        t0.saturating_add_nanos(-1_000).to_rfc3339(),
        Timestamp::now().to_rfc3339()
    );
    let (status, body, _) = get(
        &router,
        &format!("/api/v3/traces?{w}&query.service_name=spark-etl&query.attributes=%7B%22rows%22%3A%227%22%7D"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"],
        t.to_hex()
    );
    let (status, body, _) = get(
        &router,
        &format!("/api/v3/traces?{w}&query.service_name=spark-etl&query.attributes=%7B%22rows%22%3A%228%22%7D"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["message"], "No traces found");

    // Listings.
    let (_, body, _) = get(&router, "/api/v3/services").await;
    assert_eq!(body, json!({"services": ["spark-etl"]}));
    let (_, body, _) = get(
        &router,
        "/api/v3/operations?service=spark-etl&span_kind=internal",
    )
    .await;
    // The AGGREGATE step and the INTERNAL child are both INTERNAL to Jaeger.
    assert_eq!(
        body,
        json!({"operations": [
            {"name": "op-1", "spanKind": "internal"},
            {"name": "op-2", "spanKind": "internal"},
        ]})
    );
    let (_, body, _) = get(
        &router,
        "/api/v3/operations?service=spark-etl&span_kind=server",
    )
    .await;
    assert_eq!(body, json!({"operations": []}));
}

#[tokio::test]
async fn api_v3_cut_traces_say_so_in_a_header() {
    let config = QueryConfig {
        max_trace_spans: 3,
        ..QueryConfig::default()
    };
    let (_d, store, router) = setup(config).await;
    let t = fresh_trace_id();
    let t0 = Timestamp::now().saturating_add_nanos(-60_000_000_000);
    let spans: Vec<Span> = (0..5)
        .map(|i| simple_span(t, i, None, "wide", t0.saturating_add_nanos(i as i64), 10))
        .collect();
    store.write(spans.into()).await.unwrap();
    let resp = router
        .clone()
        .oneshot(
            Request::builder()
                .uri(format!("/api/v3/traces/{t}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-datatracing-truncated"], "true");
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        body["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn api_v3_errors_are_in_the_gateway_shape() {
    let (_d, _store, router) = setup(QueryConfig::default()).await;
    let now = Timestamp::now().to_rfc3339();
    let w = format!("query.start_time_min={now}&query.start_time_max={now}");
    for (uri, want, needle) in [
        (
            "/api/v3/traces/zzz".to_string(),
            StatusCode::BAD_REQUEST,
            "trace_id",
        ),
        (
            "/api/v3/traces/%FF".to_string(),
            StatusCode::BAD_REQUEST,
            "trace_id",
        ),
        (
            format!("/api/v3/traces/{}", fresh_trace_id()),
            StatusCode::NOT_FOUND,
            "No traces found",
        ),
        (
            format!("/api/v3/traces/{}?end_time=x", fresh_trace_id()),
            StatusCode::BAD_REQUEST,
            "end_time",
        ),
        (
            "/api/v3/traces".to_string(),
            StatusCode::BAD_REQUEST,
            "required",
        ),
        (
            format!("/api/v3/traces?query.start_time_min=x&query.start_time_max={now}"),
            StatusCode::BAD_REQUEST,
            "query.start_time_min",
        ),
        (
            format!("/api/v3/traces?{w}&query.num_traces=0"),
            StatusCode::BAD_REQUEST,
            "query.num_traces",
        ),
        (
            format!("/api/v3/traces?{w}&query.search_depth=x"),
            StatusCode::BAD_REQUEST,
            "query.search_depth",
        ),
        (
            format!("/api/v3/traces?{w}&query.duration_max=soon"),
            StatusCode::BAD_REQUEST,
            "query.duration_max",
        ),
        (
            format!("/api/v3/traces?{w}&query.attributes=%5B1%5D"),
            StatusCode::BAD_REQUEST,
            "query.attributes",
        ),
        (
            format!("/api/v3/traces?{w}&query.attributes=%7B%22error%22%3A%22perhaps%22%7D"),
            StatusCode::BAD_REQUEST,
            "error",
        ),
        (
            format!("/api/v3/traces?{w}&query.service_name=nothing"),
            StatusCode::NOT_FOUND,
            "No traces found",
        ),
        (
            format!("/api/v3/operations?service={}", "s".repeat(1025)),
            StatusCode::BAD_REQUEST,
            "service",
        ),
    ] {
        let (status, body, _) = get(&router, &uri).await;
        assert_eq!(status, want, "{uri}: {body}");
        assert_eq!(body["error"]["httpCode"], want.as_u16(), "{uri}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{uri}: {msg:?} should mention {needle}"
        );
    }
    // Store failures.
    let router = router_over(
        Arc::new(Failing(datatracing_store::Error::Unavailable(
            "busy".into(),
        ))),
        QueryConfig::default(),
    );
    for uri in [
        "/api/v3/services".to_string(),
        "/api/v3/operations?service=a".to_string(),
        format!("/api/v3/traces/{}", fresh_trace_id()),
        format!("/api/v3/traces?{w}"),
    ] {
        let (status, body, retry) = get(&router, &uri).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
        assert_eq!(body["error"]["httpCode"], 503, "{uri}: {body}");
        assert!(retry.is_some(), "{uri}: Retry-After");
    }
}
