//! The collector: receive spans, validate them, queue them with a bound, sample, and write
//! them to a [`TraceStore`](datatracing_store::TraceStore).
//!
//! The stages are separate modules with narrow seams so later work can fill them without
//! touching the others:
//!
//! ```text
//! receive (HTTP, per protocol) -> queue (bounded: spans + bytes) -> sample -> write (batches)
//! ```
//!
//! Acknowledgement: a `202` is sent only after the spans are committed to the store (the
//! writer batches concurrent requests into one commit), so an acknowledged span survives
//! `kill -9`. See `docs/adr/0002-ack-after-commit.md`.

mod config;
mod error;
mod ingest;
mod metrics;
mod queue;
mod receive;
mod sample;
mod writer;

use std::sync::Arc;

use axum::Router;
use datatracing_http::{HttpMetrics, Readiness, finish_router, ops_routes, serve};
use datatracing_store::TraceStore;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{BatchConfig, CollectorConfig, QueueConfig};
pub use error::{Error, Result};
pub use metrics::CollectorMetrics;
pub use queue::{EnqueueError, SpanQueue};
pub use sample::{PassThrough, Sampler};
pub use writer::{WriterHandle, WriterStats};

/// A collector wired to a store; call [`Collector::run`] to serve.
#[derive(Debug)]
pub struct Collector {
    config: CollectorConfig,
    store: Arc<dyn TraceStore>,
    metrics: CollectorMetrics,
    http_metrics: HttpMetrics,
}

impl Collector {
    /// Validates the configuration and registers metrics.
    /// `http_metrics` is registered once per process and shared by all servers in it.
    pub fn new(
        config: CollectorConfig,
        store: Arc<dyn TraceStore>,
        registry: &mut Registry,
        http_metrics: HttpMetrics,
    ) -> Result<Self> {
        config.validate()?;
        let metrics = CollectorMetrics::register(registry, &config);
        Ok(Self {
            config,
            store,
            metrics,
            http_metrics,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &CollectorConfig {
        &self.config
    }

    /// Starts the writer and returns the HTTP routes plus the handle that stops the writer.
    /// Used by [`Collector::run`] and by tests that drive the router directly.
    pub fn start(
        &self,
        readiness: Readiness,
        registry: Arc<Registry>,
    ) -> (Router, writer::WriterHandle) {
        let (queue, rx) = SpanQueue::new(&self.config.queue, self.metrics.clone());
        let handle = writer::spawn(
            rx,
            Arc::clone(&self.store),
            Box::new(PassThrough),
            self.config.batch.clone(),
            self.metrics.clone(),
        );
        let ingest = ingest::Ingest {
            queue,
            metrics: self.metrics.clone(),
            limits: self.config.limits.clone(),
        };
        let api = receive::routes(receive::ReceiveState::new(&self.config, ingest));
        let router = finish_router(
            api.merge(ops_routes(readiness, registry)),
            "collector",
            self.config.request_timeout.get(),
            self.http_metrics.clone(),
        );
        (router, handle)
    }

    /// Serves until `shutdown` fires, then drains: stops accepting, lets in-flight requests
    /// finish (bounded by `drain_timeout`), writes what is queued, and returns.
    pub async fn run(
        self,
        listener: TcpListener,
        readiness: Readiness,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let (router, writer) = self.start(readiness, registry);
        tracing::info!(addr = %listener.local_addr()?, "collector listening");
        serve(listener, router, shutdown, self.config.drain_timeout.get()).await?;
        let stats = writer.finish(self.config.drain_timeout.get()).await;
        tracing::info!(
            written_spans = stats.written,
            failed_spans = stats.failed,
            "collector drained"
        );
        Ok(())
    }
}
