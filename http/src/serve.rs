//! Common layers and graceful serving.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;

use crate::code::ErrorCode;
use crate::error::ApiError;
use crate::ops::{HttpLabels, HttpMetrics};

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener failed.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Adds what every server needs: envelope answers for unknown routes (404) and wrong
/// methods (405), a per-request timeout (504), panic containment (500, logged) and metrics.
pub fn finish_router(
    router: Router,
    server: &'static str,
    timeout: Duration,
    metrics: HttpMetrics,
) -> Router {
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let metrics = metrics.clone();
            async move { observe(server, timeout, metrics, req, next).await }
        }))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::internal(&"request handler panicked").into_response()
            },
        ))
}

async fn observe(
    server: &'static str,
    timeout: Duration,
    metrics: HttpMetrics,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            ErrorCode::Timeout,
            format!("request exceeded the {timeout:?} limit"),
        )
        .into_response(),
    };
    let labels = HttpLabels {
        server,
        route,
        method,
        status: resp.status().as_u16(),
    };
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Serves `router` on `listener` until `shutdown` fires, then stops accepting, lets in-flight
/// requests finish for up to `drain`, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    let server =
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        r = server => r?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(%addr, ?drain, "in-flight requests did not finish in time; closing anyway");
        }
    }
    tracing::info!(%addr, "server stopped");
    Ok(())
}

/// The method as a metric label: the standard methods by name, anything else as `other`.
/// HTTP allows any token as a method; labelling by the raw token let a client grow
/// `/metrics` and the process's memory without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}
