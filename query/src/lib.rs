//! The query service: trace DAGs and trace search over a [`TraceReader`].
//!
//! - `GET /api/v1/traces/{trace_id}`: the reconstructed DAG (spans, typed edges, roots,
//!   orphans, cycles, cross-trace links, critical path, self times) and a summary, cut at
//!   `query.max_trace_spans` spans with `truncated: true` and `next_spans`, the link to the
//!   rest.
//! - `GET /api/v1/traces/{trace_id}/spans?cursor=&limit=`: a trace's spans one page at a
//!   time (start time, then span id), with `next_cursor` unless it is the last page.
//! - `GET /api/v1/traces?service=&operation=&kind=&status=&start=&end=&min_duration=&max_duration=&duration_scope=&linked_trace=&linked_service=&limit=&cursor=`
//!   and `POST /api/v1/traces/search` (the same as a JSON body, with typed attribute
//!   filters): one page of trace summaries, newest first (semantics on
//!   [`datatracing_core::TraceQuery`]), with `next_cursor` unless it is the last page.
//! - `GET /api/v1/traces/{trace_id}/lineage?direction=&depth=`: the graph of traces linked
//!   to it through `FOLLOWS_FROM` / `DATA_DEPENDENCY` links, upstream, downstream or both,
//!   bounded by `query.lineage` (depth, node count) and marked `truncated` when cut.
//! - `GET /api/v1/services`, `GET /api/v1/services/{service}/operations`: names from the
//!   stores' name index, over an optional `start`/`end` window.
//! - `GET /api/v1/dependencies?start=&end=`: the pipeline map, service-to-service edges with
//!   call and error counts, computed with bounded work (`dependencies`).
//! - The DAG explorer web UI at `/` and `/ui/...` (`datatracing-ui`), reading the v1 API.
//! - Expensive reads (trace, spans, search, lineage, dependencies, Jaeger traces and
//!   dependencies) are capped by
//!   `query.max_concurrent_reads` with a bounded queue; beyond it a 429 (`limits`).
//! - `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the v1 API, generated from
//!   the code (`openapi`), committed as `docs/openapi.json`.
//! - Jaeger's own read API on Jaeger's paths (`/api/services`, `/api/traces`, ...), so Jaeger
//!   UI and Grafana's Jaeger data source read from the query port unchanged (`jaeger`).

mod api;
mod dependencies;
mod jaeger;
mod limits;
mod openapi;
mod tenant;

use std::sync::Arc;

use axum::Router;
use datatracing_config::Scope;
use datatracing_http::{
    Authenticator, HttpMetrics, Readiness, TlsAcceptor, finish_router, ops_routes, serve_with,
};
use datatracing_store::TraceReader;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// In this crate's API (`QueryService::new`), so re-exported for callers; it lives in
// `datatracing-config`.
pub use datatracing_config::QueryConfig;
pub use limits::QueryMetrics;
pub use openapi::document as openapi_document;

/// The query service's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid query configuration: {0}")]
    Config(String),
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] datatracing_http::ServeError),
    /// Socket trouble.
    #[error("query I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<datatracing_config::ConfigError> for Error {
    fn from(e: datatracing_config::ConfigError) -> Self {
        Error::Config(e.to_string())
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The query service wired to a store.
#[derive(Debug)]
pub struct QueryService {
    config: QueryConfig,
    store: Arc<dyn TraceReader>,
    http_metrics: HttpMetrics,
    metrics: QueryMetrics,
    auth: Authenticator,
    tls: Option<TlsAcceptor>,
}

impl QueryService {
    /// Validates the configuration.
    /// `http_metrics` is registered once per process and shared by all servers in it.
    pub fn new(
        config: QueryConfig,
        store: Arc<dyn TraceReader>,
        http_metrics: HttpMetrics,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            store,
            http_metrics,
            metrics: QueryMetrics::unregistered(),
            auth: Authenticator::disabled(),
            tls: None,
        })
    }

    /// Requires a bearer token with the `query` scope on every API route (v1, Jaeger,
    /// OpenAPI), and any token on the ops routes when `auth.protect_ops` is set. The UI's
    /// static files stay open: they hold no data.
    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        self.auth = auth;
        self
    }

    /// Serves TLS with `tls` (ALPN `http/1.1`).
    pub fn with_tls(mut self, tls: TlsAcceptor) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Reports the read cap through `metrics` (registered by the caller) instead of
    /// unregistered ones.
    pub fn with_metrics(mut self, metrics: QueryMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// All routes with the common layers, for serving or for `oneshot` tests.
    pub fn router(&self, readiness: Readiness, registry: Arc<Registry>) -> Router {
        let api = api::routes(api::Api {
            store: Arc::clone(&self.store),
            max_trace_spans: self.config.max_trace_spans,
            lineage: self.config.lineage.clone(),
        })
        .merge(dependencies::routes(dependencies::DependenciesApi {
            store: Arc::clone(&self.store),
            max_trace_spans: self.config.max_trace_spans,
        }))
        .merge(jaeger::routes(jaeger::Jaeger {
            store: Arc::clone(&self.store),
            max_trace_spans: self.config.max_trace_spans,
        }))
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    openapi::document(),
                )
            }),
        )
        // Expensive reads only (the layer picks them by path); the probes and the UI's
        // static files merged below stay outside it.
        .layer(axum::middleware::from_fn_with_state(
            limits::ReadLimiter::new(
                self.config.max_concurrent_reads,
                self.config.max_queued_reads,
                self.metrics.clone(),
            ),
            limits::limit_reads,
        ));
        let ops = self.auth.ops(ops_routes(readiness, registry));
        finish_router(
            self.auth
                .protect(api, Some(Scope::Query))
                .merge(ops)
                .merge(datatracing_ui::routes()),
            "query",
            self.config.request_timeout.get(),
            self.http_metrics.clone(),
        )
    }

    /// Serves until `shutdown` fires, then drains in-flight requests (bounded).
    pub async fn run(
        self,
        listener: TcpListener,
        readiness: Readiness,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let router = self.router(readiness, registry);
        tracing::info!(addr = %listener.local_addr()?, tls = self.tls.is_some(), "query listening");
        serve_with(
            listener,
            router,
            shutdown,
            self.config.drain_timeout.get(),
            &self.config.connections,
            self.tls.as_ref(),
        )
        .await?;
        Ok(())
    }
}
