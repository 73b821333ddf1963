//! OTLP ingest: OTLP/HTTP through the router (`oneshot`) and OTLP/gRPC through a real tonic
//! client against the served collector, on the real embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use common::harness;
use datatracing_collector::CollectorConfig;
use datatracing_collector::otlp::convert::to_otlp;
use datatracing_core::{
    AttributeValue, Attributes, Link, LinkType, Span, SpanId, SpanKind, Status,
    StatusCode as SpanStatus, Timestamp, TraceId,
};
use datatracing_http::Authenticator;
use datatracing_store::TraceReader;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tower::ServiceExt;

fn spans(trace: u8, n: u64) -> Vec<Span> {
    // Recent times: the store's retention (7 days by default) must not race the test.
    let base = Timestamp::now().unix_nanos() - 60_000_000_000;
    (0..n)
        .map(|i| Span {
            trace_id: TraceId::from_bytes([trace; 16]),
            span_id: SpanId::from_bytes((i + 1).to_be_bytes()),
            parent_id: (i > 0).then(|| SpanId::from_bytes(1u64.to_be_bytes())),
            service: "orders-etl".into(),
            operation: format!("step-{i}"),
            kind: if i == 0 {
                SpanKind::Ingest
            } else {
                SpanKind::Transform
            },
            start_time: Timestamp::from_unix_nanos(base + i as i64),
            end_time: Timestamp::from_unix_nanos(base + 500_000_000 + i as i64),
            status: if i == 1 {
                Status::with_message(SpanStatus::Timeout, "slow")
            } else {
                Status::new(SpanStatus::Ok)
            },
            attributes: Attributes::from([("rows".to_string(), AttributeValue::Int(i as i64))]),
            events: vec![],
            links: if i == 2 {
                vec![Link {
                    trace_id: TraceId::from_bytes([trace; 16]),
                    span_id: SpanId::from_bytes(2u64.to_be_bytes()),
                    link_type: LinkType::DataDependency,
                    attributes: Attributes::new(),
                }]
            } else {
                vec![]
            },
        })
        .collect()
}

async fn post(
    router: &axum::Router,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::builder()
        .method("POST")
        .uri("/v1/traces")
        .header(header::CONTENT_TYPE, content_type);
    if let Some(e) = encoding {
        req = req.header(header::CONTENT_ENCODING, e);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (
        status,
        headers,
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap(),
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

async fn metrics(router: &axum::Router) -> String {
    let resp = router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap()
}

/// `google.rpc.Status` as OTLP/HTTP error bodies carry it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[tokio::test]
async fn protobuf_json_and_gzip_round_trip_into_the_store() {
    let h = harness(CollectorConfig::default()).await;
    let original = spans(1, 3);
    let req = to_otlp(&original);

    let (status, headers, body) = post(
        &h.router,
        "application/x-protobuf",
        None,
        req.encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
    let resp = ExportTraceServiceResponse::decode(body).unwrap();
    assert!(resp.partial_success.is_none(), "{resp:?}");
    let stored = h
        .store
        .get_trace(TraceId::from_bytes([1; 16]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored, original,
        "pipeline kinds, TIMEOUT and DATA_DEPENDENCY survive OTLP"
    );

    let json_req = to_otlp(&spans(2, 2));
    let (status, headers, _) = post(
        &h.router,
        "application/json",
        None,
        serde_json::to_vec(&json_req).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        h.store
            .get_trace(TraceId::from_bytes([2; 16]))
            .await
            .unwrap()
            .unwrap()
            .len(),
        2
    );

    let gz = gzip(&to_otlp(&spans(3, 4)).encode_to_vec());
    let (status, _, _) = post(&h.router, "application/x-protobuf", Some("gzip"), gz).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.store
            .get_trace(TraceId::from_bytes([3; 16]))
            .await
            .unwrap()
            .unwrap()
            .len(),
        4
    );

    // A body of two gzip members (concatenated protobuf messages merge): both are read.
    // Only the first was, and the second member's spans were dropped with a 200.
    let mut two = gzip(&to_otlp(&spans(8, 2)).encode_to_vec());
    two.extend(gzip(&to_otlp(&spans(9, 3)).encode_to_vec()));
    let (status, _, _) = post(&h.router, "application/x-protobuf", Some("gzip"), two).await;
    assert_eq!(status, StatusCode::OK);
    for (trace, n) in [(8u8, 2usize), (9, 3)] {
        assert_eq!(
            h.store
                .get_trace(TraceId::from_bytes([trace; 16]))
                .await
                .unwrap()
                .map(|s| s.len()),
            Some(n),
            "trace {trace} of the two-member body"
        );
    }

    let m = metrics(&h.router).await;
    for (p, n) in [("otlp_http_protobuf", 12), ("otlp_http_json", 2)] {
        assert!(
            m.contains(&format!(
                "datatracing_collector_spans_accepted_total{{protocol=\"{p}\"}} {n}"
            )),
            "{m}"
        );
    }
}

#[tokio::test]
async fn spec_shaped_otlp_json_is_accepted() {
    // Written by hand the way the OTLP spec shows it: camelCase, hex ids, integer enums,
    // 64-bit integers as strings.
    let body = r#"{"resourceSpans":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"billing"}},
        {"key":"host.name","value":{"stringValue":"node-7"}}]},
      "scopeSpans":[{"scope":{"name":"etl-lib","version":"1.2"},"spans":[{
        "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "parentSpanId":"eee19b7ec3c1b173","name":"aggregate invoices","kind":2,
        "startTimeUnixNano":"START","endTimeUnixNano":"END",
        "attributes":[{"key":"rows","value":{"intValue":"42"}},
                      {"key":"datatracing.span.kind","value":{"stringValue":"AGGREGATE"}}],
        "links":[{"traceId":"5b8efff798038103d269b633813fc60d","spanId":"eee19b7ec3c1b175",
                  "attributes":[{"key":"opentracing.ref_type","value":{"stringValue":"follows_from"}}]}],
        "status":{"code":2,"message":"boom"}}]}]}]}"#;
    let start = Timestamp::now().unix_nanos() - 60_000_000_000;
    let body = body
        .replace("START", &start.to_string())
        .replace("END", &(start + 1_000_000_000).to_string());
    let h = harness(CollectorConfig::default()).await;
    let (status, _, body) = post(&h.router, "application/json", None, body.into_bytes()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let span = h
        .store
        .get_trace("5b8efff798038103d269b633813fc60c".parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .remove(0);
    assert_eq!(span.service, "billing");
    assert_eq!(span.kind, SpanKind::Aggregate);
    assert_eq!(span.status, Status::with_message(SpanStatus::Error, "boom"));
    assert_eq!(span.attributes["rows"], AttributeValue::Int(42));
    assert_eq!(
        span.attributes["resource.host.name"],
        AttributeValue::from("node-7")
    );
    assert_eq!(
        span.attributes["otel.scope.name"],
        AttributeValue::from("etl-lib")
    );
    assert_eq!(span.links[0].link_type, LinkType::FollowsFrom);
    assert_eq!(span.duration_nanos(), 1_000_000_000);
}

#[tokio::test]
async fn invalid_spans_give_partial_success() {
    let h = harness(CollectorConfig::default()).await;
    let mut req = to_otlp(&spans(4, 3));
    let s = &mut req.resource_spans[0].scope_spans[0].spans;
    s[1].span_id = vec![0; 8];
    s[2].end_time_unix_nano = s[2].start_time_unix_nano - 1;
    let (status, _, body) = post(
        &h.router,
        "application/x-protobuf",
        None,
        req.encode_to_vec(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "invalid spans are not a request error (retrying would not help)"
    );
    let resp = ExportTraceServiceResponse::decode(body).unwrap();
    let partial = resp.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 2);
    assert!(
        partial.error_message.contains("span_id"),
        "{}",
        partial.error_message
    );
    assert_eq!(
        h.store
            .get_trace(TraceId::from_bytes([4; 16]))
            .await
            .unwrap()
            .unwrap()
            .len(),
        1
    );
    let m = metrics(&h.router).await;
    assert!(m.contains("datatracing_collector_spans_rejected_total{protocol=\"otlp_http_protobuf\",reason=\"invalid\"} 2"), "{m}");
}

#[tokio::test]
async fn undecodable_and_unsupported_requests() {
    let h = harness(CollectorConfig::default()).await;
    let good = to_otlp(&spans(5, 2)).encode_to_vec();
    // Truncated protobuf.
    let (status, _, body) = post(
        &h.router,
        "application/x-protobuf",
        None,
        good[..good.len() / 2].to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let st = RpcStatus::decode(body).unwrap();
    assert_eq!(st.code, 3, "INVALID_ARGUMENT");
    assert!(st.message.contains("undecodable"), "{}", st.message);
    // Invalid UTF-8 in a protobuf string field.
    let mut named = to_otlp(&spans(5, 1));
    named.resource_spans[0].scope_spans[0].spans[0].name = "h\u{e9}llo".into();
    let mut bytes = named.encode_to_vec();
    let pos = bytes.windows(2).position(|w| w == [0xC3, 0xA9]).unwrap();
    bytes[pos] = 0xFF;
    let (status, _, _) = post(&h.router, "application/x-protobuf", None, bytes).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Malformed JSON.
    let (status, headers, body) = post(
        &h.router,
        "application/json",
        None,
        b"{\"resourceSpans\": [".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let st: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(st["code"], 3);
    // Trailing bytes after the gzip member: refused, not ignored.
    let mut trailing = gzip(&to_otlp(&spans(5, 1)).encode_to_vec());
    trailing.extend_from_slice(b"garbage after the member");
    let (status, _, _) = post(&h.router, "application/x-protobuf", Some("gzip"), trailing).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Corrupt gzip.
    let (status, _, _) = post(
        &h.router,
        "application/x-protobuf",
        Some("gzip"),
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Wrong media type, unknown encoding.
    let (status, _, _) = post(&h.router, "text/plain", None, good.clone()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _, _) = post(&h.router, "application/x-protobuf", Some("br"), good).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        h.store
            .get_trace(TraceId::from_bytes([5; 16]))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn gzip_bombs_and_huge_requests_get_413() {
    let config = CollectorConfig {
        max_body_bytes: 1024 * 1024,
        max_decompressed_bytes: 4 * 1024 * 1024,
        ..CollectorConfig::default()
    };
    let h = harness(config).await;
    // 64 MiB of zeros in about 64 KiB: under the body limit, far over the inflated limit.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0u8; 1024 * 1024];
    for _ in 0..64 {
        enc.write_all(&chunk).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1024 * 1024);
    let (status, _, body) = post(&h.router, "application/x-protobuf", Some("gzip"), bomb).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        RpcStatus::decode(body)
            .unwrap()
            .message
            .contains("decompressed")
    );

    // 100,000 spans in one request: over max_spans_per_request (20,000), refused whole.
    let big = to_otlp(&spans(6, 100_000));
    let h = harness(CollectorConfig {
        max_body_bytes: 64 * 1024 * 1024,
        ..CollectorConfig::default()
    })
    .await;
    let (status, _, body) = post(
        &h.router,
        "application/x-protobuf",
        None,
        big.encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        RpcStatus::decode(body)
            .unwrap()
            .message
            .contains("100000 spans")
    );
    let m = metrics(&h.router).await;
    assert!(m.contains("reason=\"too_large\"} 100000"), "{m}");
}

#[tokio::test]
async fn throttling_answers_429_and_503_with_retry_after() {
    let config = common::one_request_queue(3);
    let h = harness(config).await;
    let held = h.hold_writes().await;
    let router = h.router.clone();
    let first = tokio::spawn(async move {
        post(
            &router,
            "application/x-protobuf",
            None,
            to_otlp(&spans(7, 3)).encode_to_vec(),
        )
        .await
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !metrics(&h.router)
        .await
        .contains("datatracing_collector_queue_spans 3")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first request never queued"
        );
        tokio::task::yield_now().await;
    }
    let (status, headers, body) = post(
        &h.router,
        "application/x-protobuf",
        None,
        to_otlp(&spans(8, 1)).encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(
        RpcStatus::decode(body).unwrap().code,
        8,
        "RESOURCE_EXHAUSTED"
    );
    drop(held);
    assert_eq!(first.await.unwrap().0, StatusCode::OK);

    h.store.down.store(true, Ordering::SeqCst);
    let (status, headers, body) = post(
        &h.router,
        "application/x-protobuf",
        None,
        to_otlp(&spans(9, 1)).encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(RpcStatus::decode(body).unwrap().code, 14, "UNAVAILABLE");

    // A permanent refusal is not retryable for OTLP exporters: 500 / INTERNAL, no delay.
    h.store.down.store(false, Ordering::SeqCst);
    h.store.fail.store(true, Ordering::SeqCst);
    let (status, headers, body) = post(
        &h.router,
        "application/x-protobuf",
        None,
        to_otlp(&spans(9, 1)).encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!headers.contains_key(header::RETRY_AFTER));
    assert_eq!(RpcStatus::decode(body).unwrap().code, 13, "INTERNAL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_with_a_real_tonic_client() {
    let served = common::serve(
        CollectorConfig {
            max_decompressed_bytes: 32 * 1024 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            ..CollectorConfig::default()
        },
        Authenticator::disabled(),
    )
    .await;
    let (store, grpc_addr) = (served.store.clone(), served.grpc);
    let mut client = TraceServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();
    let resp = client
        .export(to_otlp(&spans(10, 5)))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.partial_success.is_none());
    assert_eq!(
        store
            .get_trace(TraceId::from_bytes([10; 16]))
            .await
            .unwrap()
            .unwrap()
            .len(),
        5
    );

    // gzip-compressed calls and partial success.
    let mut gz = client
        .clone()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let mut req = to_otlp(&spans(11, 2));
    req.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1];
    let resp = gz.export(req).await.unwrap().into_inner();
    assert_eq!(resp.partial_success.unwrap().rejected_spans, 1);

    // Too many spans: RESOURCE_EXHAUSTED without RetryInfo (not retryable for OTLP).
    let err = client
        .export(to_otlp(&spans(12, 20_001)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.details().is_empty(), "no RetryInfo: {err:?}");

    // A compressed message that inflates past the limit is refused by the server.
    let mut bomb = ExportTraceServiceRequest::default();
    let mut one = to_otlp(&spans(13, 1));
    one.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(40 * 1024 * 1024);
    bomb.resource_spans = one.resource_spans;
    let mut gz_big = gz.max_encoding_message_size(usize::MAX);
    let err = gz_big.export(bomb).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(
        store
            .get_trace(TraceId::from_bytes([13; 16]))
            .await
            .unwrap()
            .is_none()
    );

    // Spans the real store refuses for good (a constraint, here a trigger) are answered
    // INTERNAL, which OTLP exporters do not retry; UNAVAILABLE would make them resend forever.
    rusqlite::Connection::open(served.dir.path().join("traces.db"))
        .unwrap()
        .execute_batch(&format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON spans WHEN NEW.trace_id = x'{}'
             BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;",
            TraceId::from_bytes([14; 16])
        ))
        .unwrap();
    let err = client.export(to_otlp(&spans(14, 2))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal, "{err}");
    assert!(!err.message().contains("trigger"), "{err}");

    served.stop().await;
}

/// Bearer tokens on OTLP/gRPC with a real tonic client: no or an unknown token is
/// UNAUTHENTICATED, a token without the `ingest` scope PERMISSION_DENIED, and nothing
/// refused is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_needs_an_ingest_token() {
    use datatracing_config::{AuthConfig, Scope, TokenConfig};
    use tonic::metadata::MetadataValue;
    let env = std::collections::HashMap::from([
        ("INGEST".to_string(), "grpc-ingest-token-123".to_string()),
        ("QUERY".to_string(), "grpc-query-token-4567".to_string()),
    ]);
    let entry = |name: &str, scope: Scope| TokenConfig {
        name: name.to_lowercase(),
        scopes: vec![scope],
        file: None,
        env: Some(name.to_string()),
        tenant: None,
    };
    let auth = Authenticator::load(
        &AuthConfig {
            tokens: vec![entry("INGEST", Scope::Ingest), entry("QUERY", Scope::Query)],
            ..AuthConfig::default()
        },
        &env,
    )
    .unwrap();
    let served = common::serve(CollectorConfig::default(), auth).await;
    let (store, grpc_addr) = (served.store.clone(), served.grpc);
    let client = TraceServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();
    let call = |token: Option<&str>, trace: u8| {
        let mut client = client.clone();
        let mut req = tonic::Request::new(to_otlp(&spans(trace, 3)));
        if let Some(t) = token {
            let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
            req.metadata_mut().insert("authorization", v);
        }
        async move { client.export(req).await }
    };
    let err = call(None, 40).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = call(Some("grpc-ingest-token-124"), 41).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = call(Some("grpc-query-token-4567"), 42).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    call(Some("grpc-ingest-token-123"), 43).await.unwrap();
    for (trace, stored) in [(40, false), (41, false), (42, false), (43, true)] {
        let found = store
            .get_trace(TraceId::from_bytes([trace; 16]))
            .await
            .unwrap()
            .is_some();
        assert_eq!(found, stored, "trace {trace}");
    }

    served.stop().await;
}

/// A token bound to a tenant on OTLP/gRPC (real tonic client): the spans are stored for the
/// token's tenant, whatever the client put in the reserved attribute, and no other tenant
/// (the default one included) reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_spans_are_stored_for_the_tokens_tenant() {
    use datatracing_config::{AuthConfig, Scope, TokenConfig};
    use datatracing_core::{TENANT_ATTRIBUTE, Tenant};
    use tonic::metadata::MetadataValue;
    let env = std::collections::HashMap::from([(
        "TEAM".to_string(),
        "grpc-team-token-98765".to_string(),
    )]);
    let auth = Authenticator::load(
        &AuthConfig {
            tokens: vec![TokenConfig {
                name: "team".into(),
                scopes: vec![Scope::Ingest],
                file: None,
                env: Some("TEAM".into()),
                tenant: Some("grpc-team".into()),
            }],
            ..AuthConfig::default()
        },
        &env,
    )
    .unwrap();
    let served = common::serve(CollectorConfig::default(), auth).await;
    let (store, grpc_addr) = (served.store.clone(), served.grpc);
    let mut client = TraceServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();
    let mut sent = spans(44, 2);
    for s in &mut sent {
        s.attributes.insert(
            TENANT_ATTRIBUTE.to_string(),
            AttributeValue::String("someone-else".into()),
        );
    }
    let mut req = tonic::Request::new(to_otlp(&sent));
    let v: MetadataValue<_> = "Bearer grpc-team-token-98765".parse().unwrap();
    req.metadata_mut().insert("authorization", v);
    client.export(req).await.unwrap();

    let id = TraceId::from_bytes([44; 16]);
    let team = store
        .for_tenant(&Tenant::parse("grpc-team").unwrap())
        .get_trace(id)
        .await
        .unwrap()
        .expect("stored for the token's tenant");
    assert_eq!(team.len(), 2);
    assert!(team.iter().all(|s| Tenant::of_span(s) == "grpc-team"));
    assert!(
        store.get_trace(id).await.unwrap().is_none(),
        "default tenant"
    );
    assert!(
        store
            .for_tenant(&Tenant::parse("someone-else").unwrap())
            .get_trace(id)
            .await
            .unwrap()
            .is_none(),
        "the tenant the client claimed"
    );
    served.stop().await;
}
