//! Common layers and graceful serving within connection limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use datatracing_config::ConnectionLimits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;

use crate::conn::{Acceptor, Conn};
use crate::tls::TlsAcceptor;

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

/// Serves `router` on `listener` with the default [`ConnectionLimits`] until `shutdown`
/// fires, then stops accepting, lets in-flight requests finish for up to `drain`, and
/// returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), ServeError> {
    serve_with(
        listener,
        router,
        shutdown,
        drain,
        &ConnectionLimits::default(),
        None,
    )
    .await
}

/// [`serve`] with explicit connection limits: at most `max_connections` open (more wait
/// in the kernel's queue), request headers within `header_read_timeout`, silent
/// connections closed after `idle_timeout`, and `Connection: close` after
/// `max_requests_per_connection` requests on one connection. With `tls`, connections are
/// TLS; the handshake counts against `header_read_timeout` and runs on the connection's
/// task.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
    limits: &ConnectionLimits,
    tls: Option<&TlsAcceptor>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    let acceptor = Acceptor::new(listener, limits);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .keep_alive(true);
    let max_requests = limits.max_requests_per_connection;
    let handshake_timeout = limits.header_read_timeout.get();
    loop {
        let tcp = tokio::select! {
            c = acceptor.accept() => c,
            _ = shutdown.cancelled() => break,
        };
        let served = Arc::new(AtomicUsize::new(0));
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let n = served.fetch_add(1, Ordering::Relaxed) + 1;
            let call = router.clone().oneshot(req.map(axum::body::Body::new));
            async move {
                let mut resp = call.await?;
                // Past the keep-alive limit: this response is the connection's last.
                if n >= max_requests {
                    resp.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let (watcher, http1, tls) = (graceful.watcher(), http1.clone(), tls.cloned());
        tokio::spawn(async move {
            let Ok(conn) = Conn::establish(tcp, tls.as_ref(), handshake_timeout).await else {
                return; // counted and logged by the TLS acceptor
            };
            let conn =
                watcher.watch(http1.serve_connection(hyper_util::rt::TokioIo::new(conn), service));
            // Timeouts and clients that hang up end here; they are not server failures.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    // Stop accepting at once: new clients are refused, not queued behind the drain.
    drop(acceptor);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
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
