//! The collector's HTTP API driven through its router (`oneshot`), on the real embedded
//! store; a gate/fault wrapper around the store injects slow and failing writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::harness;
use datatracing_collector::{CollectorConfig, QueueConfig};
use datatracing_store::TraceReader;
use serde_json::{Value, json};
use tower::ServiceExt;

fn span_json(trace: &str, span: &str) -> Value {
    json!({
        "trace_id": trace, "span_id": span, "service": "orders-etl", "operation": "load",
        "kind": "MATERIALIZE", "start_time": "2026-11-28T10:00:00Z", "end_time": "2026-11-28T10:00:02Z",
        "attributes": {"table": "orders", "rows": 10}
    })
}

const T1: &str = "0af7651916cd43dd8448eb211c80319c";

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value, header::HeaderMap) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value, headers)
}

async fn post(router: &Router, body: &Value) -> (StatusCode, Value, header::HeaderMap) {
    call(
        router,
        "POST",
        "/api/v1/spans",
        Some("application/json"),
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

fn assert_envelope(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
    assert!(body["error"]["details"].is_array(), "body: {body}");
}

async fn metrics(router: &Router) -> String {
    let (status, body, _) = call(router, "GET", "/metrics", None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    body.as_str().unwrap().to_string()
}

#[tokio::test]
async fn accepted_spans_are_stored_and_counted() {
    let h = harness(CollectorConfig::default()).await;
    let body =
        json!({"spans": [span_json(T1, "b7ad6b7169203331"), span_json(T1, "b7ad6b7169203332")]});
    let (status, resp, _) = post(&h.router, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp, json!({"accepted": 2, "rejected": 0, "errors": []}));
    // Acknowledged means stored: no waiting needed.
    let stored = h
        .store
        .get_trace(T1.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.len(), 2);
    let m = metrics(&h.router).await;
    assert!(
        m.contains("datatracing_collector_spans_accepted_total{protocol=\"native_json\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("datatracing_collector_spans_written_total 2"),
        "{m}"
    );
    assert!(m.contains("datatracing_collector_queue_spans 0"), "{m}");
}

#[tokio::test]
async fn one_bad_span_is_rejected_and_the_rest_accepted() {
    let h = harness(CollectorConfig::default()).await;
    let mut bad = span_json(T1, "b7ad6b7169203332");
    bad["end_time"] = json!("2026-11-28T09:00:00Z");
    let mut wrong_type = span_json(T1, "b7ad6b7169203333");
    wrong_type["trace_id"] = json!(12345);
    let mut zero = span_json(T1, "b7ad6b7169203334");
    zero["span_id"] = json!("0000000000000000");
    let body = json!({"spans": [span_json(T1, "b7ad6b7169203331"), bad, wrong_type, zero]});
    let (status, resp, _) = post(&h.router, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["accepted"], 1);
    assert_eq!(resp["rejected"], 3);
    let errors = resp["errors"].as_array().unwrap();
    assert_eq!(errors[0]["index"], 1);
    assert_eq!(errors[0]["field"], "end_time");
    assert_eq!(errors[1]["index"], 2);
    assert_eq!(errors[1]["field"], "trace_id");
    assert!(
        errors[1]["message"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{resp}"
    );
    assert_eq!(errors[2]["field"], "span_id");
    assert!(errors[2]["message"].as_str().unwrap().contains("zeros"));
    let m = metrics(&h.router).await;
    assert!(m.contains("datatracing_collector_spans_rejected_total{protocol=\"native_json\",reason=\"invalid\"} 3"), "{m}");
}

#[tokio::test]
async fn all_bad_spans_give_400_with_details() {
    let h = harness(CollectorConfig::default()).await;
    let mut missing = span_json(T1, "b7ad6b7169203331");
    missing.as_object_mut().unwrap().remove("service");
    let mut bad_hex = span_json(T1, "b7ad6b7169203332");
    bad_hex["trace_id"] = json!("zzf7651916cd43dd8448eb211c80319c");
    let (status, resp, _) = post(&h.router, &json!({"spans": [missing, bad_hex]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(&resp, "invalid_spans");
    let details = resp["error"]["details"].as_array().unwrap();
    assert_eq!(details.len(), 2);
    assert!(
        details[0]["message"]
            .as_str()
            .unwrap()
            .contains("missing field `service`"),
        "{resp}"
    );
    assert_eq!(details[1]["index"], 1);
    assert!(
        h.store
            .get_trace(T1.parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn malformed_bodies_and_wrong_content_types() {
    let h = harness(CollectorConfig::default()).await;
    for body in [
        &b"{not json"[..],
        b"[]",
        b"{\"spans\": {}}",
        b"{\"spans\": [], \"extra\": 1}",
        b"\xff\xfe",
    ] {
        let (status, resp, _) = call(
            &h.router,
            "POST",
            "/api/v1/spans",
            Some("application/json"),
            body.to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_envelope(&resp, "invalid_json");
    }
    for ct in [None, Some("text/plain"), Some("application/x-protobuf")] {
        let (status, resp, _) = call(
            &h.router,
            "POST",
            "/api/v1/spans",
            ct,
            b"{\"spans\":[]}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_envelope(&resp, "unsupported_media_type");
    }
    let (status, _, _) = call(
        &h.router,
        "POST",
        "/api/v1/spans",
        Some("application/json; charset=utf-8"),
        b"{\"spans\":[]}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "charset parameter is fine");
}

#[tokio::test]
async fn oversized_bodies_and_batches_get_413() {
    let config = CollectorConfig {
        max_body_bytes: 4096,
        max_spans_per_request: 3,
        queue: QueueConfig {
            max_spans: 10,
            max_bytes: 1 << 20,
            ..QueueConfig::default()
        },
        ..CollectorConfig::default()
    };
    let h = harness(config).await;
    let mut big = span_json(T1, "b7ad6b7169203331");
    big["attributes"]["blob"] = json!("x".repeat(5000));
    let (status, resp, _) = post(&h.router, &json!({"spans": [big]})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(&resp, "payload_too_large");
    let spans: Vec<Value> = (1..=4)
        .map(|i| span_json(T1, &format!("b7ad6b716920333{i}")))
        .collect();
    let (status, resp, _) = post(&h.router, &json!({"spans": spans})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4 spans"),
        "{resp}"
    );
}

#[tokio::test]
async fn oversized_attribute_values_are_truncated_and_counted() {
    let mut config = CollectorConfig::default();
    config.limits.max_value_len = 100;
    let h = harness(config).await;
    let mut big = span_json(T1, "b7ad6b7169203331");
    big["attributes"]["sql"] = json!("s".repeat(101));
    let (status, resp, _) = post(
        &h.router,
        &json!({"spans": [big, span_json(T1, "b7ad6b7169203332")]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        resp["accepted"], 2,
        "a long value costs its tail, not the span: {resp}"
    );
    let stored = h
        .store
        .get_trace(T1.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let sql = stored.iter().find_map(|s| s.attributes.get("sql")).unwrap();
    assert_eq!(
        sql,
        &datatracing_core::AttributeValue::String("s".repeat(100))
    );
    let m = metrics(&h.router).await;
    assert!(
        m.contains("datatracing_collector_attributes_truncated_total{protocol=\"native_json\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_envelope() {
    let h = harness(CollectorConfig::default()).await;
    let (status, resp, _) = call(&h.router, "GET", "/api/v2/nothing", None, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(&resp, "not_found");
    let (status, resp, _) = call(&h.router, "GET", "/api/v1/spans", None, vec![]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_envelope(&resp, "method_not_allowed");
}

#[tokio::test]
async fn full_queue_answers_429_with_retry_after_and_loses_nothing() {
    let config = common::one_request_queue(2);
    let h = harness(config).await;
    // Hold every write at the gate so the first request occupies the whole queue.
    let held = h.hold_writes().await;
    let router = h.router.clone();
    let first = tokio::spawn(async move {
        post(&router, &json!({"spans": [span_json(T1, "b7ad6b7169203331"), span_json(T1, "b7ad6b7169203332")]})).await
    });
    // Wait until the first request's spans are queued (a condition, not a sleep).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !metrics(&h.router)
        .await
        .contains("datatracing_collector_queue_spans 2")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first request never queued"
        );
        tokio::task::yield_now().await;
    }
    let (status, resp, headers) = post(
        &h.router,
        &json!({"spans": [span_json(T1, "b7ad6b7169203333")]}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_envelope(&resp, "resource_exhausted");
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "1");
    drop(held);
    let (status, resp, _) = first.await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(
        h.store
            .get_trace(T1.parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .len(),
        2
    );
    let m = metrics(&h.router).await;
    assert!(m.contains("reason=\"queue_full\"} 1"), "{m}");
}

#[tokio::test]
async fn writes_are_pipelined_up_to_max_in_flight() {
    let mut config = CollectorConfig::default();
    config.batch.max_in_flight = 3;
    let h = harness(config).await;
    let held = h.hold_writes().await;
    let in_write = || h.store.in_write.load(Ordering::SeqCst);
    let mut posts = Vec::new();
    for i in 0..4u64 {
        let router = h.router.clone();
        let span = format!("b7ad6b71692033{:02x}", 0x31 + i);
        posts.push(tokio::spawn(async move {
            post(&router, &json!({"spans": [span_json(T1, &span)]})).await
        }));
        // Each request is taken as its own batch while fewer than 3 writes run; the fourth
        // waits in the queue. Await each state (a condition, not a sleep).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let ready = if i < 3 {
                in_write() == i as usize + 1
            } else {
                metrics(&h.router)
                    .await
                    .contains("datatracing_collector_queue_spans 4")
            };
            if ready {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "request {i}: {} writes running",
                in_write()
            );
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(
        in_write(),
        3,
        "never more than max_in_flight writes at once"
    );
    assert!(
        metrics(&h.router)
            .await
            .contains("datatracing_collector_store_writes_in_flight 3")
    );
    drop(held);
    for p in posts {
        let (status, resp, _) = p.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    }
    assert_eq!(
        h.store
            .get_trace(T1.parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn store_failure_answers_503_and_acknowledges_nothing() {
    let h = harness(CollectorConfig::default()).await;
    h.store.down.store(true, Ordering::SeqCst);
    let (status, resp, headers) = post(
        &h.router,
        &json!({"spans": [span_json(T1, "b7ad6b7169203331")]}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_envelope(&resp, "unavailable");
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert!(
        !resp.to_string().contains("injected"),
        "internal errors must not leak: {resp}"
    );
    let m = metrics(&h.router).await;
    assert!(m.contains("reason=\"store_unavailable\"} 1"), "{m}");
    // Retries live in the store, next to its deduplication token (the ClickHouse tests
    // cover them); the collector does not retry on top, so one failed attempt here means
    // the client is asked to retry at once.
    assert!(
        m.contains("datatracing_collector_store_write_errors_total 1"),
        "one collector attempt per write: {m}"
    );
    h.store.down.store(false, Ordering::SeqCst);
    let (status, _, _) = post(
        &h.router,
        &json!({"spans": [span_json(T1, "b7ad6b7169203331")]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "recovers once the store does");
}

/// Regression: the embedded store used to report every write failure as transient, so a
/// span SQLite refuses for good was retried, answered 503, resent by the client, forever.
/// Here the real store refuses through a trigger (a constraint failure): the collector tries
/// once and answers a non-retryable 500.
#[tokio::test]
async fn a_permanent_store_failure_is_not_answered_503() {
    let h = harness(CollectorConfig::default()).await;
    rusqlite::Connection::open(h._dir.path().join("traces.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON spans WHEN NEW.span_id = x'00000000000000bb'
             BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;",
        )
        .unwrap();
    let (status, resp, headers) = post(
        &h.router,
        &json!({"spans": [span_json(T1, "00000000000000bb")]}),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{resp}");
    assert_envelope(&resp, "internal");
    assert!(
        !headers.contains_key(header::RETRY_AFTER),
        "nothing to retry after"
    );
    assert!(
        !resp.to_string().contains("trigger"),
        "internal errors must not leak: {resp}"
    );
    let m = metrics(&h.router).await;
    assert!(m.contains("reason=\"store_rejected\"} 1"), "{m}");
    assert!(
        m.contains("datatracing_collector_store_write_errors_total 1"),
        "a permanent failure is not retried: {m}"
    );
    // Other spans are still stored.
    let (status, _, _) = post(
        &h.router,
        &json!({"spans": [span_json(T1, "b7ad6b7169203331")]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        h.store
            .get_trace(T1.parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn readiness_follows_the_flag_and_shutdown_refuses_new_work() {
    let mut h = harness(CollectorConfig::default()).await;
    let (status, _, _) = call(&h.router, "GET", "/readyz", None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&h.router, "GET", "/healthz", None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    h.readiness.set_ready(false);
    let (status, resp, _) = call(&h.router, "GET", "/readyz", None, vec![]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_envelope(&resp, "unavailable");
    let stats = h
        .writer
        .take()
        .unwrap()
        .finish(std::time::Duration::from_secs(5))
        .await;
    assert_eq!(stats.failed, 0);
    let (status, resp, _) = post(
        &h.router,
        &json!({"spans": [span_json(T1, "b7ad6b7169203331")]}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{resp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_times_out_instead_of_holding_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness(CollectorConfig {
        request_timeout: datatracing_core::ConfigDuration::from_millis(300),
        ..CollectorConfig::default()
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(datatracing_http::serve(
        listener,
        h.router.clone(),
        shutdown.clone(),
        std::time::Duration::from_secs(1),
    ));
    // Slowloris: promise a large body, send a few bytes, then stall.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        b"POST /api/v1/spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"spans\": [",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("the server answers a stalled body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
    // Other clients are still served.
    let (status, _, _) = call(&h.router, "GET", "/healthz", None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// Issue 13: spans dated years ahead were accepted, and time-based retention never removes
/// them. A start more than `limits.max_future_skew` (1 h) after the collector's clock is a
/// field error; ordinary clock skew is not.
#[tokio::test]
async fn spans_from_the_far_future_are_rejected_with_a_field_error() {
    let h = harness(CollectorConfig::default()).await;
    let at = |minutes: i64| {
        datatracing_core::Timestamp::now()
            .saturating_add_nanos(minutes * 60 * 1_000_000_000)
            .to_rfc3339()
    };
    let mut skewed = span_json(T1, "b7ad6b7169203331");
    skewed["start_time"] = json!(at(10));
    skewed["end_time"] = json!(at(11));
    let mut future = span_json(T1, "b7ad6b7169203332");
    future["start_time"] = json!(at(120));
    future["end_time"] = json!(at(121));
    let mut far = span_json(T1, "b7ad6b7169203333");
    far["start_time"] = json!("2261-01-01T00:00:00Z");
    far["end_time"] = json!("2261-01-01T00:00:01Z");
    let (status, resp, _) = post(&h.router, &json!({"spans": [skewed, future, far]})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["accepted"], 1, "{resp}");
    assert_eq!(resp["rejected"], 2, "{resp}");
    for (e, index) in resp["errors"].as_array().unwrap().iter().zip([1, 2]) {
        assert_eq!(e["index"], index, "{resp}");
        assert_eq!(e["field"], "start_time", "{resp}");
        assert!(
            e["message"].as_str().unwrap().contains("max_future_skew"),
            "{resp}"
        );
    }
    let stored = h
        .store
        .get_trace(T1.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.len(), 1);
}
