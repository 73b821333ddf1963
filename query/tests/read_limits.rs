//! The cap on expensive reads, without timing: a store whose trace reads wait on a gate
//! (around the real embedded store) fills every slot and the queue, then the probes, the
//! listings, the overload answers of each API and the metrics are checked, and the gate is
//! opened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use datatracing_core::{
    Operation, SearchPage, Span, SpanCursor, TimeWindow, Timestamp, TraceId, TraceQuery,
    TraceSummary,
};
use datatracing_http::{HttpMetrics, Readiness};
use datatracing_query::{QueryConfig, QueryMetrics, QueryService};
use datatracing_store::{CappedTrace, CrossLink, Health, TraceReader, TraceWriter};
use datatracing_store_contract::{fresh_trace_id, simple_span};
use datatracing_store_sqlite::{EmbeddedConfig, EmbeddedStore, OpenMode};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::watch;

use common::{embedded, fetch, send};

/// The embedded store, with trace and search reads held until the gate opens.
#[derive(Debug)]
struct Gated {
    inner: Arc<EmbeddedStore>,
    open: watch::Receiver<bool>,
    /// Reads that reached the store.
    entered: AtomicUsize,
}

impl Gated {
    async fn pass(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.clone();
        open.wait_for(|o| *o).await.unwrap();
    }
}

#[async_trait]
impl Health for Gated {
    fn backend(&self) -> &'static str {
        "gated"
    }
    async fn health(&self) -> datatracing_store::Result<()> {
        self.inner.health().await
    }
}

#[async_trait]
impl TraceReader for Gated {
    fn for_tenant(&self, tenant: &datatracing_core::Tenant) -> Arc<dyn TraceReader> {
        self.inner.for_tenant(tenant)
    }

    async fn get_trace(&self, id: TraceId) -> datatracing_store::Result<Option<Vec<Span>>> {
        self.pass().await;
        self.inner.get_trace(id).await
    }
    async fn get_trace_capped(
        &self,
        id: TraceId,
        max: usize,
    ) -> datatracing_store::Result<Option<CappedTrace>> {
        self.pass().await;
        self.inner.get_trace_capped(id, max).await
    }
    async fn trace_spans(
        &self,
        id: TraceId,
        after: Option<SpanCursor>,
        limit: usize,
    ) -> datatracing_store::Result<Vec<Span>> {
        self.pass().await;
        self.inner.trace_spans(id, after, limit).await
    }
    async fn search(&self, q: &TraceQuery) -> datatracing_store::Result<SearchPage> {
        self.pass().await;
        self.inner.search(q).await
    }
    async fn services(
        &self,
        w: &TimeWindow,
        limit: usize,
    ) -> datatracing_store::Result<Vec<String>> {
        self.inner.services(w, limit).await
    }
    async fn operations(
        &self,
        service: &str,
        w: &TimeWindow,
        limit: usize,
    ) -> datatracing_store::Result<Vec<Operation>> {
        self.inner.operations(service, w, limit).await
    }
    async fn summaries(&self, traces: &[TraceId]) -> datatracing_store::Result<Vec<TraceSummary>> {
        self.inner.summaries(traces).await
    }
    async fn links_from(
        &self,
        traces: &[TraceId],
        limit: usize,
    ) -> datatracing_store::Result<Vec<CrossLink>> {
        self.inner.links_from(traces, limit).await
    }
    async fn links_to(
        &self,
        traces: &[TraceId],
        limit: usize,
    ) -> datatracing_store::Result<Vec<CrossLink>> {
        self.inner.links_to(traces, limit).await
    }
}

/// `GET uri`: the status, the `retry-after` header and the body as JSON (`Null` if not).
async fn call(router: &Router, uri: &str) -> (StatusCode, Option<String>, Value) {
    let reply = send(
        router,
        Request::builder().uri(uri).body(Body::empty()).unwrap(),
    )
    .await;
    (reply.status, reply.header("retry-after"), reply.json())
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_beyond_the_cap_and_queue_are_refused_while_probes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
            .await
            .unwrap(),
    );
    let t = fresh_trace_id();
    inner
        .write(vec![simple_span(t, 1, None, "capped", Timestamp::now(), 10)].into())
        .await
        .unwrap();
    let (gate, open) = watch::channel(false);
    let store = Arc::new(Gated {
        inner,
        open,
        entered: AtomicUsize::new(0),
    });
    let mut registry = Registry::default();
    let http = HttpMetrics::register(&mut registry);
    let metrics = QueryMetrics::register(&mut registry);
    let config = QueryConfig {
        max_concurrent_reads: 2,
        max_queued_reads: 1,
        ..QueryConfig::default()
    };
    let svc = QueryService::new(config, store.clone(), http)
        .unwrap()
        .with_metrics(metrics.clone());
    let readiness = Readiness::new(store.clone());
    readiness.set_ready(true);
    let router = svc.router(readiness, Arc::new(registry));

    // Two reads take both slots and wait in the store; a third waits in the queue.
    let held: Vec<_> = [
        format!("/api/v1/traces/{t}"),
        "/api/v1/traces?service=capped".to_string(),
        format!("/api/v1/traces/{t}/spans"),
    ]
    .into_iter()
    .map(|uri| {
        let router = router.clone();
        tokio::spawn(async move { call(&router, &uri).await })
    })
    .collect();
    until("two reads are in the store and one is queued", || {
        store.entered.load(Ordering::SeqCst) == 2 && metrics.reads_queued.get() == 1
    })
    .await;
    assert_eq!(metrics.reads_in_flight.get(), 2);

    // Probes, metrics and listings are outside the cap.
    for uri in [
        "/readyz",
        "/healthz",
        "/metrics",
        "/api/v1/services",
        "/api/v1/services/capped/operations",
        "/api/services",
        "/api/v3/services",
    ] {
        let (status, _, body) = call(&router, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }

    // Every capped endpoint is refused at once, in its API's envelope, with Retry-After.
    let refused = [
        (format!("/api/v1/traces/{t}"), "ours"),
        (format!("/api/v1/traces/{t}/lineage"), "ours"),
        (format!("/api/v1/traces/{t}/spans"), "ours"),
        ("/api/v1/traces".to_string(), "ours"),
        ("/api/v1/dependencies".to_string(), "ours"),
        ("/api/dependencies".to_string(), "jaeger"),
        (format!("/api/traces/{t}"), "jaeger"),
        ("/api/traces?service=capped".to_string(), "jaeger"),
        (format!("/api/v3/traces/{t}"), "v3"),
        ("/api/v3/traces?query.service_name=capped".to_string(), "v3"),
    ];
    for (uri, envelope) in &refused {
        let (status, retry_after, body) = call(&router, uri).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{uri}: {body}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{uri}");
        let message = match *envelope {
            "ours" => {
                assert_eq!(body["error"]["code"], "resource_exhausted", "{body}");
                &body["error"]["message"]
            }
            "jaeger" => {
                assert_eq!(body["errors"][0]["code"], 429, "{body}");
                &body["errors"][0]["msg"]
            }
            _ => {
                assert_eq!(body["error"]["httpCode"], 429, "{body}");
                &body["error"]["message"]
            }
        };
        assert!(
            message.as_str().unwrap().contains("max_concurrent_reads"),
            "{uri}: {body}"
        );
    }
    let post = send(
        &router,
        Request::post("/api/v1/traces/search")
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        metrics.reads_rejected.get(),
        refused.len() as u64 + 1,
        "each refusal is counted"
    );
    assert_eq!(
        store.entered.load(Ordering::SeqCst),
        2,
        "nothing else reached the store"
    );

    // Opening the gate lets the held and the queued reads finish, and new reads pass.
    gate.send(true).unwrap();
    for h in held {
        let (status, _, body) = h.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(metrics.reads_queued.get(), 0);
    assert_eq!(metrics.reads_in_flight.get(), 0);
    let (status, _, body) = call(&router, &format!("/api/v1/traces/{t}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = call(&router, &format!("/api/traces/{t}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_metrics_endpoint_names_the_read_cap_metrics() {
    let (_dir, _store, router) = embedded(QueryConfig::default()).await;
    let reply = fetch(&router, "/metrics").await;
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    for name in [
        "datatracing_query_reads_rejected_total",
        "datatracing_query_reads_queued",
        "datatracing_query_reads_in_flight",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}
