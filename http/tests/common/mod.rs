//! A served test listener (`serve_with`, one `GET /ok` route) shared by the connection and
//! TLS tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use datatracing_http::{ConnectionLimits, HttpMetrics, TlsAcceptor, finish_router, serve_with};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `GET /ok` on a loopback port with `limits` (and TLS when given), registering the
/// HTTP metrics in `registry`; cancel the token to stop.
pub async fn start(
    registry: &mut Registry,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
) -> (SocketAddr, CancellationToken) {
    let metrics = HttpMetrics::register(registry);
    let router = finish_router(
        Router::new().route("/ok", get(|| async { "ok" })),
        "test",
        Duration::from_secs(5),
        metrics,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        serve_with(
            listener,
            router,
            stop,
            Duration::from_secs(1),
            &limits,
            tls.as_ref(),
        )
        .await
        .unwrap();
    });
    (addr, shutdown)
}
