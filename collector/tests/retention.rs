//! Spans already older than the store's retention are refused per span with a field error
//! (they would be purged without ever being read), visibly in the response and the metrics,
//! over the native API (reqwest) and OTLP/gRPC (tonic) against a served collector on the
//! real embedded store with its default retention (7 days). OTLP/JSON non-finite doubles
//! ("NaN", "Infinity", "-Infinity") are accepted as the OTLP JSON mapping allows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::serve;
use datatracing_collector::CollectorConfig;
use datatracing_collector::otlp::convert::to_otlp;
use datatracing_core::{Span, SpanId, SpanKind, Status, StatusCode, Timestamp, TraceId};
use datatracing_http::Authenticator;
use datatracing_store::TraceReader;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde_json::{Value, json};

const DAY: i64 = 24 * 3600 * 1_000_000_000;

fn span(trace: u8, id: u64, age_nanos: i64) -> Span {
    let start = Timestamp::now().unix_nanos() - age_nanos;
    Span {
        trace_id: TraceId::from_bytes([trace; 16]),
        span_id: SpanId::from_bytes(id.to_be_bytes()),
        parent_id: None,
        service: "etl".into(),
        operation: "step".into(),
        kind: SpanKind::Transform,
        start_time: Timestamp::from_unix_nanos(start),
        end_time: Timestamp::from_unix_nanos(start + 1_000),
        status: Status::new(StatusCode::Ok),
        attributes: Default::default(),
        events: vec![],
        links: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_older_than_the_retention_are_refused_per_span() {
    let served = serve(CollectorConfig::default(), Authenticator::disabled()).await;
    let (store, http_addr, grpc_addr) = (served.store.clone(), served.http, served.grpc);
    let client = reqwest::Client::new();

    // Native: one span 8 days old (retention 7 days), one recent.
    let body = json!({"spans": [span(1, 1, 8 * DAY), span(1, 2, 60_000_000_000)]});
    let resp = client
        .post(format!("http://{http_addr}/api/v1/spans"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["accepted"], 1, "{v}");
    assert_eq!(v["rejected"], 1, "{v}");
    assert_eq!(v["errors"][0]["index"], 0, "{v}");
    assert_eq!(v["errors"][0]["field"], "start_time", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("older than the store's retention (168h)"),
        "{v}"
    );

    // OTLP/gRPC: partial success names the reason.
    let mut grpc = TraceServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();
    let resp = grpc
        .export(to_otlp(&[span(2, 1, 30 * DAY), span(2, 2, 1_000_000_000)]))
        .await
        .unwrap()
        .into_inner();
    let partial = resp.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("retention"), "{partial:?}");

    let stored = |t: u8| {
        let store = store.clone();
        async move {
            store
                .get_trace(TraceId::from_bytes([t; 16]))
                .await
                .unwrap()
                .map_or(0, |s| s.len())
        }
    };
    assert_eq!(stored(1).await, 1);
    assert_eq!(stored(2).await, 1);
    let metrics = client
        .get(format!("http://{http_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"datatracing_collector_spans_rejected_total{protocol="native_json",reason="invalid"} 1"#
        ),
        "{metrics}"
    );

    served.stop().await;
}

/// OTLP/JSON doubles written as "NaN" / "Infinity" / "-Infinity" (the OTLP JSON mapping's
/// non-finite values) are accepted and stored as from protobuf; they were a 400 for the
/// whole request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_non_finite_doubles_are_accepted() {
    let served = serve(CollectorConfig::default(), Authenticator::disabled()).await;
    let (store, addr) = (served.store.clone(), served.http);
    let now = Timestamp::now().unix_nanos();
    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "step",
        "startTimeUnixNano": (now - 2_000_000).to_string(),
        "endTimeUnixNano": (now - 1_000_000).to_string(),
        "attributes": [
            {"key": "nan", "value": {"doubleValue": "NaN"}},
            {"key": "inf", "value": {"doubleValue": "Infinity"}},
            {"key": "ninf", "value": {"doubleValue": "-Infinity"}},
            {"key": "ratio", "value": {"doubleValue": 0.5}}
        ]
    }]}]}]});
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/traces"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(status, 200, "{}", resp.text().await.unwrap());
    let trace: TraceId = "5b8efff798038103d269b633813fc60c".parse().unwrap();
    let spans = store.get_trace(trace).await.unwrap().unwrap();
    let a = &spans[0].attributes;
    use datatracing_core::AttributeValue as V;
    assert_eq!(a["nan"], V::String("NaN".into()));
    assert_eq!(a["inf"], V::String("inf".into()));
    assert_eq!(a["ninf"], V::String("-inf".into()));
    assert_eq!(a["ratio"], V::Float(0.5));
    served.stop().await;
}
