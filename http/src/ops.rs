//! Operational endpoints (`/healthz`, `/readyz`, `/metrics`) and HTTP request metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use datatracing_store::Health;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::code::ErrorCode;
use crate::error::ApiError;

/// Whether a server should receive traffic: false before start-up completes and as soon as
/// shutdown begins, and whenever the store (if it has one) does not answer, unless a
/// [`Buffer`] (the collector's durable queue) still takes what the store cannot.
#[derive(Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    store: Option<Arc<dyn Health>>,
    buffer: Arc<std::sync::OnceLock<Arc<dyn Buffer>>>,
}

/// Something that takes writes while the store is down: with room left, the process
/// stays ready through a store outage.
pub trait Buffer: Send + Sync + 'static {
    /// `Ok(details)` while there is room (the details go into `/readyz`), `Err(reason)`
    /// when full.
    fn room(&self) -> Result<serde_json::Value, String>;
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.is_flagged_ready())
            .finish()
    }
}

impl Readiness {
    /// Starts not ready.
    pub fn new(store: Arc<dyn Health>) -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            store: Some(store),
            buffer: Arc::default(),
        }
    }

    /// For a process without a store (the operator): the flag alone decides.
    pub fn flag_only() -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            store: None,
            buffer: Arc::default(),
        }
    }

    /// Declares a buffer that absorbs store outages (once; later calls are ignored). Shared
    /// by every clone of this readiness.
    pub fn set_buffer(&self, buffer: Arc<dyn Buffer>) {
        let _ = self.buffer.set(buffer);
    }

    /// Flips the flag.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// The flag alone (without asking the store).
    pub fn is_flagged_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    registry: Arc<Registry>,
}

/// `/healthz` (process alive), `/readyz` (accepting traffic, store answering) and
/// `/metrics` (Prometheus / OpenMetrics text).
pub fn ops_routes(readiness: Readiness, registry: Arc<Registry>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            readiness,
            registry,
        })
}

async fn readyz(State(s): State<OpsState>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if !s.readiness.is_flagged_ready() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "not ready (starting or shutting down)",
        ));
    }
    if let Some(store) = &s.readiness.store
        && let Err(e) = store.health().await
    {
        // The durable queue takes what the store cannot: stay ready while it has room, so
        // Kubernetes keeps routing to the collector exactly when the queue is meant to
        // absorb the outage.
        return match s.readiness.buffer.get().map(|b| b.room()) {
            Some(Ok(details)) => Ok(axum::Json(serde_json::json!({
                "status": "ready",
                "details": {
                    "store": format!("unreachable: {e}"),
                    "durable_queue": details,
                }
            }))),
            Some(Err(full)) => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("store not ready: {e}; {full}"),
            )),
            None => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("store not ready: {e}"),
            )),
        };
    }
    Ok(axum::Json(serde_json::json!({"status": "ready"})))
}

async fn metrics(State(s): State<OpsState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    pub server: &'static str,
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

/// Request counts and latencies per server, route (the matched pattern, never the raw path),
/// method (standard methods, else `other`) and status: every label is bounded.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    pub(crate) requests: Family<HttpLabels, Counter>,
    pub(crate) duration: Family<HttpLabels, Histogram>,
}

impl HttpMetrics {
    /// Registers `datatracing_http_requests_total` and
    /// `datatracing_http_request_duration_seconds`.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<HttpLabels, Counter>::default();
        let duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "datatracing_http_requests",
            "HTTP requests handled",
            requests.clone(),
        );
        registry.register(
            "datatracing_http_request_duration_seconds",
            "HTTP request latency",
            duration.clone(),
        );
        Self { requests, duration }
    }
}
