//! What the query API's router tests share: the router over a store (as the query process
//! builds it), the real embedded store in a temporary directory, and `oneshot` requests whose
//! answers are read back whole.
#![allow(dead_code)] // each test binary uses its own part of it

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use datatracing_http::{HttpMetrics, Readiness};
use datatracing_query::{QueryConfig, QueryMetrics, QueryService};
use datatracing_store::TraceReader;
use datatracing_store_sqlite::{EmbeddedConfig, EmbeddedStore, OpenMode};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tower::ServiceExt;

/// The query router over `store`, ready, with its HTTP and query metrics registered (so
/// `/metrics` names them).
pub fn router_over(store: Arc<dyn TraceReader>, config: QueryConfig) -> Router {
    let mut registry = Registry::default();
    let http = HttpMetrics::register(&mut registry);
    let metrics = QueryMetrics::register(&mut registry);
    let svc = QueryService::new(config, store.clone(), http)
        .unwrap()
        .with_metrics(metrics);
    let readiness = Readiness::new(store);
    readiness.set_ready(true);
    svc.router(readiness, Arc::new(registry))
}

/// A fresh embedded store in a temporary directory (no retention purge, so spans of any age
/// stay) and the router over it.
pub async fn embedded(config: QueryConfig) -> (tempfile::TempDir, Arc<EmbeddedStore>, Router) {
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
    let router = router_over(store.clone(), config);
    (dir, store, router)
}

/// An answer read back whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON, `Null` when it is not JSON (the tests then assert on the status).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value, if the answer has it.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// Sends `request` through the router.
pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let resp = router.clone().oneshot(request).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// `GET uri`, answered whole (headers and raw body).
pub async fn fetch(router: &Router, uri: &str) -> Reply {
    send(
        router,
        Request::builder().uri(uri).body(Body::empty()).unwrap(),
    )
    .await
}

/// `GET uri`: the status and the body as JSON (`Null` when it is not JSON).
pub async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    let reply = send(
        router,
        Request::builder().uri(uri).body(Body::empty()).unwrap(),
    )
    .await;
    (reply.status, reply.json())
}

/// `POST uri` with a JSON body: the status and the answer as JSON (`Null` when it is not).
pub async fn post(router: &Router, uri: &str, body: impl Into<Body>) -> (StatusCode, Value) {
    let request = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let reply = send(router, request).await;
    (reply.status, reply.json())
}
