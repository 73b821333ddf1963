//! The cap on expensive reads (`query.max_concurrent_reads`, `query.max_queued_reads`).
//!
//! A trace fetch, a span page, a search, a lineage walk or a dependency map can read and
//! hold many spans; a burst of them once took 1.3 GB and slowed `/readyz` to seconds. At most
//! `max_concurrent_reads` of them run at once, at most `max_queued_reads` more wait for a
//! slot (each wait bounded by the request timeout, which wraps this layer), and any more
//! are answered at once with 429 `resource_exhausted` and `Retry-After`, in the envelope of
//! the API that was called. Probes, metrics and the name listings (served from a small
//! index) are never capped, so the process stays observable and small reads stay fast.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use datatracing_http::{ApiError, ErrorCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

/// Seconds a rejected client is told to wait.
const RETRY_AFTER_SECS: u64 = 1;

/// Metrics of the read cap.
#[derive(Clone, Debug, Default)]
pub struct QueryMetrics {
    /// `datatracing_query_reads_rejected_total`: expensive reads refused with 429.
    pub reads_rejected: Counter,
    /// `datatracing_query_reads_queued`: expensive reads waiting for a slot.
    pub reads_queued: Gauge,
    /// `datatracing_query_reads_in_flight`: expensive reads running.
    pub reads_in_flight: Gauge,
}

impl QueryMetrics {
    /// Unregistered metrics (for tests that do not expose them).
    pub fn unregistered() -> Self {
        Self::default()
    }

    /// Registers every metric under `datatracing_query_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("datatracing_query");
        r.register(
            "reads_rejected",
            "Expensive reads refused because query.max_concurrent_reads and query.max_queued_reads were full",
            m.reads_rejected.clone(),
        );
        r.register(
            "reads_queued",
            "Expensive reads waiting for a query.max_concurrent_reads slot",
            m.reads_queued.clone(),
        );
        r.register(
            "reads_in_flight",
            "Expensive reads running",
            m.reads_in_flight.clone(),
        );
        m
    }
}

/// Which API answered, for the shape of the overload error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Envelope {
    Ours,
    Jaeger,
    JaegerV3,
}

/// The envelope of a capped request, `None` when the request is not capped.
fn capped(method: &Method, path: &str) -> Option<Envelope> {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if method != Method::GET && method != Method::POST {
        return None;
    }
    if under("/api/v1/traces") || under("/api/v1/dependencies") {
        Some(Envelope::Ours)
    } else if under("/api/v3/traces") {
        Some(Envelope::JaegerV3)
    } else if under("/api/traces") || under("/api/dependencies") {
        Some(Envelope::Jaeger)
    } else {
        None
    }
}

/// The shared state of the cap.
#[derive(Clone, Debug)]
pub(crate) struct ReadLimiter {
    /// Slots for running reads.
    running: Arc<Semaphore>,
    /// Slots for running plus waiting reads: a read that gets none is refused.
    admitted: Arc<Semaphore>,
    metrics: QueryMetrics,
    max_concurrent: usize,
}

impl ReadLimiter {
    pub(crate) fn new(max_concurrent: usize, max_queued: usize, metrics: QueryMetrics) -> Self {
        Self {
            running: Arc::new(Semaphore::new(max_concurrent)),
            admitted: Arc::new(Semaphore::new(max_concurrent.saturating_add(max_queued))),
            metrics,
            max_concurrent,
        }
    }
}

/// Decrements a gauge when dropped (a cancelled request still leaves the gauges right).
struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    fn inc(g: &'a Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The middleware: capped requests take a slot (waiting in the bounded queue if needed) or
/// are refused; everything else passes untouched.
pub(crate) async fn limit_reads(
    State(limiter): State<ReadLimiter>,
    req: Request,
    next: Next,
) -> Response {
    let Some(envelope) = capped(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let Ok(_admitted) = Arc::clone(&limiter.admitted).try_acquire_owned() else {
        limiter.metrics.reads_rejected.inc();
        let err = ApiError::new(
            ErrorCode::ResourceExhausted,
            format!(
                "too many expensive reads in progress (query.max_concurrent_reads = {}, \
                 plus query.max_queued_reads waiting); retry later",
                limiter.max_concurrent
            ),
        )
        .with_retry_after(RETRY_AFTER_SECS);
        return match envelope {
            Envelope::Ours => err.into_response(),
            Envelope::Jaeger => crate::jaeger::error_response(err),
            Envelope::JaegerV3 => crate::jaeger::v3_error_response(err),
        };
    };
    let running = {
        let _queued = GaugeGuard::inc(&limiter.metrics.reads_queued);
        Arc::clone(&limiter.running).acquire_owned().await
    };
    let Ok(_running) = running else {
        // The semaphore is never closed; answer as overloaded rather than panic.
        return ApiError::new(ErrorCode::Unavailable, "read slots are closed").into_response();
    };
    let _in_flight = GaugeGuard::inc(&limiter.metrics.reads_in_flight);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_expensive_reads_are_capped() {
        let get = Method::GET;
        for (path, want) in [
            ("/api/v1/traces", Some(Envelope::Ours)),
            ("/api/v1/traces/search", Some(Envelope::Ours)),
            (
                "/api/v1/traces/0af7651916cd43dd8448eb211c80319c",
                Some(Envelope::Ours),
            ),
            ("/api/v1/traces/x/lineage", Some(Envelope::Ours)),
            ("/api/v1/traces/x/spans", Some(Envelope::Ours)),
            ("/api/traces", Some(Envelope::Jaeger)),
            ("/api/traces/abc", Some(Envelope::Jaeger)),
            ("/api/v3/traces", Some(Envelope::JaegerV3)),
            ("/api/v3/traces/abc", Some(Envelope::JaegerV3)),
            ("/api/v1/dependencies", Some(Envelope::Ours)),
            ("/api/dependencies", Some(Envelope::Jaeger)),
            ("/", None),
            ("/ui/app.js", None),
            ("/api/v1/services", None),
            ("/api/v1/services/etl/operations", None),
            ("/api/services", None),
            ("/api/operations", None),
            ("/api/v3/services", None),
            ("/api/v3/operations", None),
            ("/api/tracesx", None),
            ("/readyz", None),
            ("/healthz", None),
            ("/metrics", None),
        ] {
            assert_eq!(capped(&get, path), want, "{path}");
        }
        assert_eq!(
            capped(&Method::POST, "/api/v1/traces/search"),
            Some(Envelope::Ours)
        );
        assert_eq!(capped(&Method::DELETE, "/api/v1/traces/x"), None);
    }
}
