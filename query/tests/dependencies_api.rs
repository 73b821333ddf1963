//! `GET /api/v1/dependencies` (the pipeline map) through the router (`oneshot`) on the real
//! embedded store: edges from parent/child and from links across traces, split by relation,
//! with error counts and rates; the window; the work bound; and bad parameters answered in
//! the JSON error envelope.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::StatusCode;
use datatracing_core::{
    Attributes, Link, LinkType, Span, Status, StatusCode as SpanStatus, Timestamp,
};
use datatracing_query::QueryConfig;
use datatracing_store::TraceWriter;
use datatracing_store_contract::{fresh_trace_id, simple_span, span_id};
use serde_json::{Value, json};

use common::{embedded as setup, get};

fn link(trace: datatracing_core::TraceId, span: u64, link_type: LinkType) -> Link {
    Link {
        trace_id: trace,
        span_id: span_id(span),
        link_type,
        attributes: Attributes::new(),
    }
}

fn edge<'a>(body: &'a Value, parent: &str, child: &str) -> &'a Value {
    body["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["parent"] == parent && e["child"] == child)
        .unwrap_or_else(|| panic!("no edge {parent} -> {child} in {body}"))
}

#[tokio::test]
async fn edges_from_parents_and_links_with_error_rates() {
    let (_d, store, router) = setup(QueryConfig::default()).await;
    let t0 = Timestamp::now().saturating_add_nanos(-60_000_000_000);
    let t = fresh_trace_id();
    // Fan-in: two ingests, a join (child of the first, DATA_DEPENDENCY on both) that fails.
    let a = simple_span(t, 1, None, "kafka-ingest", t0, 100);
    let b = simple_span(t, 2, None, "cdc-ingest", t0, 100);
    let mut join = simple_span(
        t,
        3,
        Some(1),
        "spark-etl",
        t0.saturating_add_nanos(200),
        100,
    );
    join.status = Status::with_message(SpanStatus::Error, "late partition");
    join.links = vec![
        link(t, 1, LinkType::DataDependency),
        link(t, 2, LinkType::DataDependency),
    ];
    // A downstream trace continuing the join (FOLLOWS_FROM), timing out once and once not.
    let down = fresh_trace_id();
    let mut serve = simple_span(
        down,
        1,
        None,
        "feature-api",
        t0.saturating_add_nanos(500),
        10,
    );
    serve.links = vec![link(t, 3, LinkType::FollowsFrom)];
    let mut retry = simple_span(
        down,
        2,
        Some(1),
        "feature-api",
        t0.saturating_add_nanos(600),
        10,
    );
    retry.status = Status::new(SpanStatus::Timeout);
    store.write(vec![a, b, join].into()).await.unwrap();
    store.write(vec![serve, retry].into()).await.unwrap();

    let (status, body) = get(&router, "/api/v1/dependencies").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["traces_read"], 2, "{body}");
    assert_eq!(body["spans_read"], 5, "{body}");
    assert_eq!(body["truncated"], false);
    assert_eq!(body["max_traces"], 2000);
    assert_eq!(
        edge(&body, "kafka-ingest", "spark-etl"),
        &json!({"parent": "kafka-ingest", "child": "spark-etl", "call_count": 2,
                "error_count": 2, "error_rate": 1.0, "child_of": 1, "follows_from": 0,
                "data_dependency": 1, "datasets": []})
    );
    let cdc = edge(&body, "cdc-ingest", "spark-etl");
    assert_eq!(
        (cdc["call_count"].as_u64(), cdc["data_dependency"].as_u64()),
        (Some(1), Some(1))
    );
    let cross = edge(&body, "spark-etl", "feature-api");
    assert_eq!(cross["follows_from"], 1, "the link across traces: {body}");
    assert_eq!(cross["error_count"], 0);
    let same = edge(&body, "feature-api", "feature-api");
    assert_eq!(
        (same["call_count"].as_u64(), same["error_rate"].as_f64()),
        (Some(1), Some(1.0))
    );
    assert_eq!(body["edges"].as_array().unwrap().len(), 4, "{body}");
    assert_eq!(
        body["services"],
        json!([
            {"service": "cdc-ingest", "span_count": 1, "error_count": 0},
            {"service": "feature-api", "span_count": 2, "error_count": 1},
            {"service": "kafka-ingest", "span_count": 1, "error_count": 0},
            {"service": "spark-etl", "span_count": 1, "error_count": 1},
        ])
    );
    assert_eq!(body["datasets"], json!([]), "no span names a dataset");

    // Jaeger's /api/dependencies is the same computation with only the call counts.
    let (_, jaeger) = get(&router, "/api/dependencies").await;
    let mut calls: Vec<(String, u64)> = jaeger["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                format!(
                    "{}>{}",
                    e["parent"].as_str().unwrap(),
                    e["child"].as_str().unwrap()
                ),
                e["callCount"].as_u64().unwrap(),
            )
        })
        .collect();
    calls.sort();
    let mut v1: Vec<(String, u64)> = body["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                format!(
                    "{}>{}",
                    e["parent"].as_str().unwrap(),
                    e["child"].as_str().unwrap()
                ),
                e["call_count"].as_u64().unwrap(),
            )
        })
        .collect();
    v1.sort();
    assert_eq!(calls, v1);

    // A window that ends before the spans reads nothing; the window is echoed.
    let start = t0.saturating_add_nanos(-10_000_000_000).to_rfc3339();
    let end = t0.saturating_add_nanos(-1_000_000_000).to_rfc3339();
    let (status, body) = get(
        &router,
        &format!("/api/v1/dependencies?start={start}&end={end}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["edges"], json!([]));
    assert_eq!(body["traces_read"], 0);
    assert_eq!(body["start"], start);
    assert_eq!(body["end"], end);
}

#[tokio::test]
async fn work_is_bounded_and_the_cut_is_reported() {
    let config = QueryConfig {
        max_trace_spans: 5,
        ..QueryConfig::default()
    };
    let (_d, store, router) = setup(config).await;
    let t0 = Timestamp::now().saturating_add_nanos(-60_000_000_000);
    // Eight traces of a root and four children: 40 spans; the budget is 4 x 5 = 20.
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
    let (status, body) = get(&router, "/api/v1/dependencies").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    assert_eq!(body["spans_read"], 20);
    assert_eq!(body["traces_read"], 4);
    assert_eq!(edge(&body, "up", "down")["call_count"], 16);
}

#[tokio::test]
async fn bad_parameters_are_400_in_the_error_envelope() {
    let (_d, _store, router) = setup(QueryConfig::default()).await;
    for (uri, needle) in [
        ("/api/v1/dependencies?start=yesterday", "start"),
        ("/api/v1/dependencies?end=2026-13-01T00:00:00Z", "end"),
        (
            "/api/v1/dependencies?start=2026-11-28T10:00:00Z&end=2026-11-28T09:00:00Z",
            "end must not be before start",
        ),
        ("/api/v1/dependencies?lookback=1h", "unknown parameter"),
        (
            "/api/v1/dependencies?start=2026-11-28T10:00:00Z&start=2026-11-28T11:00:00Z",
            "twice",
        ),
    ] {
        let (status, body) = get(&router, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "invalid_argument", "{uri}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{uri}: {msg:?} should mention {needle:?}"
        );
    }
}

/// Spans that follow the pipeline conventions: the map names the datasets on each edge (the
/// upstream outputs the downstream reads, or a DATA_DEPENDENCY link's own dataset) and lists
/// every dataset with its producers and consumers.
#[tokio::test]
async fn the_map_is_grouped_by_dataset_when_spans_name_them() {
    use datatracing_core::AttributeValue;
    use datatracing_core::conventions::{DATASET_INPUTS, DATASET_OUTPUTS, LINK_DATASET};
    const ORDERS: &str = "kafka://broker:9092/orders";
    const ENRICHED: &str = "s3://lake/enriched_orders";
    const CUSTOMERS: &str = "postgres://db:5432/crm.customers";
    let list = |v: &[&str]| AttributeValue::StringArray(v.iter().map(|s| s.to_string()).collect());
    let (_d, store, router) = setup(QueryConfig::default()).await;
    let t0 = Timestamp::now().saturating_add_nanos(-60_000_000_000);
    let t = fresh_trace_id();
    let mut ingest = simple_span(t, 1, None, "orders-ingest", t0, 100);
    ingest
        .attributes
        .insert(DATASET_OUTPUTS.into(), list(&[ORDERS]));
    // A child reading what its parent wrote, and a dataset its parent did not write.
    let mut enrich = simple_span(t, 2, Some(1), "enrich", t0.saturating_add_nanos(100), 100);
    enrich
        .attributes
        .insert(DATASET_INPUTS.into(), list(&[ORDERS, CUSTOMERS]));
    // One name as a plain string is read too.
    enrich.attributes.insert(
        DATASET_OUTPUTS.into(),
        AttributeValue::String(ENRICHED.into()),
    );
    // A downstream job: a DATA_DEPENDENCY link naming its dataset, a FOLLOWS_FROM naming none.
    let down = fresh_trace_id();
    let mut aggregate = simple_span(down, 1, None, "aggregate", t0.saturating_add_nanos(300), 10);
    let mut dep = link(t, 2, LinkType::DataDependency);
    dep.attributes
        .insert(LINK_DATASET.into(), AttributeValue::String(ENRICHED.into()));
    aggregate.links = vec![dep, link(t, 1, LinkType::FollowsFrom)];
    store.write(vec![ingest, enrich].into()).await.unwrap();
    store.write(vec![aggregate].into()).await.unwrap();

    let (status, body) = get(&router, "/api/v1/dependencies").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        edge(&body, "orders-ingest", "enrich")["datasets"],
        json!([ORDERS])
    );
    assert_eq!(
        edge(&body, "enrich", "aggregate")["datasets"],
        json!([ENRICHED])
    );
    assert_eq!(
        edge(&body, "orders-ingest", "aggregate")["datasets"],
        json!([]),
        "the job chain link carries no data: {body}"
    );
    assert_eq!(
        body["datasets"],
        json!([
            {"dataset": ORDERS, "producers": ["orders-ingest"], "consumers": ["enrich"],
             "write_count": 1, "read_count": 1},
            {"dataset": CUSTOMERS, "producers": [], "consumers": ["enrich"],
             "write_count": 0, "read_count": 1},
            {"dataset": ENRICHED, "producers": ["enrich"], "consumers": ["aggregate"],
             "write_count": 1, "read_count": 1},
        ]),
        "{body}"
    );
}
