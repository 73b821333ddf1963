//! The durable queue: acknowledged while the store is down, written when it returns,
//! replayed after a restart, and bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::harness;
use datatracing_collector::{CollectorConfig, DurableQueueConfig};
use datatracing_core::TraceId;
use datatracing_store::TraceReader;
use serde_json::{Value, json};
use tower::ServiceExt;

fn config(dir: &std::path::Path) -> CollectorConfig {
    CollectorConfig {
        durable_queue: DurableQueueConfig {
            enabled: true,
            dir: dir.to_path_buf(),
            retry_backoff: datatracing_core::ConfigDuration::from_millis(20),
            ..DurableQueueConfig::default()
        },
        ..CollectorConfig::default()
    }
}

fn batch(trace: u8, n: u64) -> Value {
    let t = format!("{:032x}", u128::from(trace) + (1 << 64));
    let spans: Vec<Value> = (1..=n)
        .map(|i| {
            json!({"trace_id": t, "span_id": format!("{i:016x}"), "service": "s", "operation": "o",
                   "start_time": "2026-11-28T10:00:00Z", "end_time": "2026-11-28T10:00:01Z"})
        })
        .collect();
    json!({ "spans": spans })
}

fn trace_id(trace: u8) -> TraceId {
    format!("{:032x}", u128::from(trace) + (1 << 64))
        .parse()
        .unwrap()
}

async fn post(router: &axum::Router, body: &Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/spans")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn wait_for(store: &dyn TraceReader, trace: u8, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = store
            .get_trace(trace_id(trace))
            .await
            .unwrap()
            .map_or(0, |s| s.len());
        if got == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trace {trace}: {got} of {n} spans written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_during_an_outage_and_written_after_it() {
    let wal_dir = tempfile::tempdir().unwrap();
    let h = harness(config(wal_dir.path())).await;
    h.store.down.store(true, Ordering::SeqCst);
    for t in 1..=3u8 {
        let (status, resp) = post(&h.router, &batch(t, 4)).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "accepted while the store is down: {resp}"
        );
    }
    assert!(
        h.store
            .inner
            .get_trace(trace_id(1))
            .await
            .unwrap()
            .is_none(),
        "nothing written yet"
    );
    h.store.down.store(false, Ordering::SeqCst);
    for t in 1..=3u8 {
        wait_for(&h.store.inner, t, 4).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replays_what_was_not_written() {
    let wal_dir = tempfile::tempdir().unwrap();
    {
        let mut h = harness(config(wal_dir.path())).await;
        h.store.down.store(true, Ordering::SeqCst);
        let (status, _) = post(&h.router, &batch(7, 5)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        // Shut down while the store is still down: the spans stay in the log.
        let stats = h
            .writer
            .take()
            .unwrap()
            .finish(Duration::from_millis(300))
            .await;
        assert_eq!(stats.written, 0);
    }
    let h = harness(config(wal_dir.path())).await;
    wait_for(&h.store.inner, 7, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_durable_queue_throttles() {
    let wal_dir = tempfile::tempdir().unwrap();
    let mut c = config(wal_dir.path());
    c.durable_queue.max_bytes = 4096;
    let h = harness(c).await;
    h.store.down.store(true, Ordering::SeqCst);
    let mut throttled = false;
    for t in 1..=40u8 {
        let (status, resp) = post(&h.router, &batch(t, 3)).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(resp["error"]["code"], "resource_exhausted");
            throttled = true;
            break;
        }
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    assert!(throttled, "the log is bounded");
}

/// A request whose spans alone exceed the whole log can never be appended: 413 and
/// "do not retry as is", not the 429 a retrying client would loop on forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_durable_queue_is_413_not_429() {
    let wal_dir = tempfile::tempdir().unwrap();
    let mut c = config(wal_dir.path());
    c.durable_queue.max_bytes = 4096;
    let h = harness(c).await;
    let (status, resp) = post(&h.router, &batch(1, 200)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    assert_eq!(resp["error"]["code"], "payload_too_large");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("durable_queue.max_bytes"),
        "{resp}"
    );
    // Nothing was reserved by the refused request: a small one is still acknowledged.
    let (status, resp) = post(&h.router, &batch(2, 3)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    wait_for(&h.store.inner, 2, 3).await;
    assert!(
        h.store
            .inner
            .get_trace(trace_id(1))
            .await
            .unwrap()
            .is_none()
    );
}

/// One flipped byte in a segment that is not the last: the damaged record is skipped and
/// counted, every other acknowledged span reaches the store, and shutdown is bounded. Before,
/// the drain re-read the bad record forever (a spinning thread), delivered nothing from that
/// read, and the process never exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_is_skipped_counted_and_the_rest_delivered() {
    let wal_dir = tempfile::tempdir().unwrap();
    let mut c = config(wal_dir.path());
    // One append per segment.
    c.durable_queue.segment_bytes = 1024;
    {
        let mut h = harness(c.clone()).await;
        h.store.down.store(true, Ordering::SeqCst);
        for t in 1..=4u8 {
            let (status, _) = post(&h.router, &batch(t, 30)).await;
            assert_eq!(status, StatusCode::ACCEPTED);
        }
        h.writer
            .take()
            .unwrap()
            .finish(Duration::from_millis(300))
            .await;
    }
    let mut segments: Vec<_> = std::fs::read_dir(wal_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 4, "{segments:?}");
    // The second append (trace 2) is the only record of the second segment.
    let mut bytes = std::fs::read(&segments[1]).unwrap();
    bytes[40] ^= 0x10;
    std::fs::write(&segments[1], bytes).unwrap();

    let mut h = harness(c).await;
    for t in [1u8, 3, 4] {
        wait_for(&h.store.inner, t, 30).await;
    }
    assert!(
        h.store
            .inner
            .get_trace(trace_id(2))
            .await
            .unwrap()
            .is_none()
    );
    let metrics = {
        let resp = h
            .router
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
    };
    assert!(
        metrics.contains("datatracing_collector_wal_corrupt_records_total 1"),
        "{metrics}"
    );
    assert!(wal_dir.path().join("corrupt").read_dir().unwrap().count() == 1);
    let started = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        h.writer.take().unwrap().finish(Duration::from_secs(2)),
    )
    .await
    .expect("shutdown within the drain timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}

async fn readyz(router: &axum::Router) -> (StatusCode, Value) {
    let resp = router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/readyz")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// With the durable queue, a store outage leaves the collector ready (it still acknowledges
/// into the queue) and `/readyz` says so, until the queue is full; without it, the outage
/// makes the collector unready as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_through_a_store_outage_until_the_durable_queue_is_full() {
    let wal_dir = tempfile::tempdir().unwrap();
    let mut c = config(wal_dir.path());
    c.durable_queue.max_bytes = 20_000;
    let h = harness(c).await;
    assert_eq!(readyz(&h.router).await.0, StatusCode::OK);
    h.store.down.store(true, Ordering::SeqCst);
    let (status, body) = readyz(&h.router).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["details"]["store"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{body}"
    );
    assert_eq!(body["details"]["durable_queue"]["max_bytes"], 20_000);
    // Fill the queue while the store is down.
    let mut t = 1u8;
    while post(&h.router, &batch(t, 10)).await.0 == StatusCode::ACCEPTED {
        t += 1;
        assert!(t < 200, "the queue never filled");
    }
    let (status, body) = readyz(&h.router).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("durable queue is full"),
        "{body}"
    );
    // The store returns: the queue drains and the collector is ready again.
    h.store.down.store(false, Ordering::SeqCst);
    wait_for(&h.store.inner, 1, 10).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while readyz(&h.router).await.0 != StatusCode::OK {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Without the durable queue the same outage makes the collector unready.
    let h = harness(CollectorConfig::default()).await;
    h.store.down.store(true, Ordering::SeqCst);
    assert_eq!(readyz(&h.router).await.0, StatusCode::SERVICE_UNAVAILABLE);
}
