//! Shared by the collector's integration tests: the collector on the real embedded store,
//! behind a wrapper that can hold writes at a gate or fail them (fault injection only).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod raw_grpc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use axum::Router;
use datatracing_collector::{Collector, CollectorConfig};
use datatracing_core::{
    Operation, SearchPage, Span, TimeWindow, TraceId, TraceQuery, TraceSummary,
};
use datatracing_http::{HttpMetrics, Readiness};
use datatracing_store::{CappedTrace, CrossLink, Health, TraceReader, TraceWriter};
use datatracing_store_sqlite::{EmbeddedConfig, EmbeddedStore, OpenMode};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

/// Delegates to the embedded store; can hold writes at a gate or fail them.
#[derive(Debug)]
pub struct FaultyStore {
    pub inner: EmbeddedStore,
    pub gate: Semaphore,
    pub fail: AtomicBool,
    /// Writes fail as a down store would (transient).
    pub down: AtomicBool,
    /// Writes running now (waiting at the gate or writing).
    pub in_write: AtomicUsize,
}

#[async_trait]
impl Health for FaultyStore {
    fn backend(&self) -> &'static str {
        "faulty"
    }
    async fn health(&self) -> datatracing_store::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(datatracing_store::Error::Unavailable(
                "store down (test)".into(),
            ));
        }
        self.inner.health().await
    }
}

#[async_trait]
impl TraceWriter for FaultyStore {
    async fn write(&self, spans: Arc<[Span]>) -> datatracing_store::Result<()> {
        self.in_write.fetch_add(1, Ordering::SeqCst);
        let result = self.write_through(spans).await;
        self.in_write.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn retention(&self) -> Option<std::time::Duration> {
        self.inner.retention()
    }
}

impl FaultyStore {
    async fn write_through(&self, spans: Arc<[Span]>) -> datatracing_store::Result<()> {
        let _permit = self.gate.acquire().await.unwrap();
        if self.down.load(Ordering::SeqCst) {
            return Err(datatracing_store::Error::Unavailable(
                "injected outage".into(),
            ));
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(datatracing_store::Error::Corrupt(
                "injected permanent failure".into(),
            ));
        }
        self.inner.write(spans).await
    }
}

#[async_trait]
impl TraceReader for FaultyStore {
    fn for_tenant(&self, tenant: &datatracing_core::Tenant) -> Arc<dyn TraceReader> {
        self.inner.for_tenant(tenant)
    }

    async fn get_trace(&self, id: TraceId) -> datatracing_store::Result<Option<Vec<Span>>> {
        self.inner.get_trace(id).await
    }
    async fn get_trace_capped(
        &self,
        id: TraceId,
        max: usize,
    ) -> datatracing_store::Result<Option<CappedTrace>> {
        self.inner.get_trace_capped(id, max).await
    }
    async fn trace_spans(
        &self,
        id: TraceId,
        after: Option<datatracing_core::SpanCursor>,
        limit: usize,
    ) -> datatracing_store::Result<Vec<Span>> {
        self.inner.trace_spans(id, after, limit).await
    }
    async fn search(&self, q: &TraceQuery) -> datatracing_store::Result<SearchPage> {
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

/// Permits of the write gate: each write takes one, `hold_writes` takes them all. It must fit
/// in `acquire_many`'s u32: `Semaphore::MAX_PERMITS as u32` truncates, so holding took only
/// part of the permits and writes went through while "held".
const GATE_PERMITS: u32 = 1 << 20;

pub struct Harness {
    pub _dir: tempfile::TempDir,
    pub store: Arc<FaultyStore>,
    pub router: Router,
    pub readiness: Readiness,
    pub writer: Option<datatracing_collector::WriterHandle>,
}

pub async fn harness(config: CollectorConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let inner = EmbeddedStore::open(
        EmbeddedConfig {
            retention: datatracing_core::ConfigDuration::from_secs(0),
            ..EmbeddedConfig::new(dir.path())
        },
        OpenMode::ReadWrite,
    )
    .await
    .unwrap();
    let store = Arc::new(FaultyStore {
        inner,
        gate: Semaphore::new(GATE_PERMITS as usize),
        fail: AtomicBool::new(false),
        down: AtomicBool::new(false),
        in_write: AtomicUsize::new(0),
    });
    let mut registry = Registry::default();
    let http = HttpMetrics::register(&mut registry);
    let collector = Collector::new(config, store.clone(), &mut registry, http).unwrap();
    let readiness = Readiness::new(store.clone());
    readiness.set_ready(true);
    let started = collector
        .start(readiness.clone(), Arc::new(registry))
        .unwrap();
    let (router, writer) = (started.router, started.writer);
    Harness {
        _dir: dir,
        store,
        router,
        readiness,
        writer: Some(writer),
    }
}

/// A config whose queue holds exactly one request of `spans` spans.
pub fn one_request_queue(spans: usize) -> CollectorConfig {
    CollectorConfig {
        max_spans_per_request: spans,
        queue: datatracing_collector::QueueConfig {
            max_spans: spans,
            max_bytes: 16 << 20,
            ..datatracing_collector::QueueConfig::default()
        },
        ..CollectorConfig::default()
    }
}

impl Harness {
    /// Holds every store write at the gate until the returned permit is dropped.
    pub async fn hold_writes(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.store.gate.acquire_many(GATE_PERMITS).await.unwrap()
    }
}

/// A collector on the real embedded store (in a temporary directory), served on loopback
/// HTTP and OTLP/gRPC ports, for tests that talk to it with real clients.
pub struct Served {
    pub store: Arc<EmbeddedStore>,
    pub http: std::net::SocketAddr,
    pub grpc: std::net::SocketAddr,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<datatracing_collector::Result<()>>,
    pub dir: tempfile::TempDir,
}

/// Serves `config` with `auth` (use `Authenticator::disabled()` for none); readiness is
/// the flag alone, set by the collector's run.
pub async fn serve(config: CollectorConfig, auth: datatracing_http::Authenticator) -> Served {
    serve_tls(config, auth, None).await
}

/// [`serve`] with TLS: the HTTP and the gRPC listener's acceptors.
pub async fn serve_tls(
    config: CollectorConfig,
    auth: datatracing_http::Authenticator,
    tls: Option<(datatracing_http::TlsAcceptor, datatracing_http::TlsAcceptor)>,
) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
            .await
            .unwrap(),
    );
    let mut registry = Registry::default();
    let http = HttpMetrics::register(&mut registry);
    let collector = Collector::new(config, store.clone(), &mut registry, http)
        .unwrap()
        .with_auth(auth);
    let collector = match tls {
        Some((h, g)) => collector.with_tls(h, g),
        None => collector,
    };
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http, grpc) = (
        http_listener.local_addr().unwrap(),
        grpc_listener.local_addr().unwrap(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(collector.run(
        http_listener,
        Some(grpc_listener),
        Readiness::flag_only(),
        Arc::new(registry),
        shutdown.clone(),
    ));
    Served {
        store,
        http,
        grpc,
        shutdown,
        task,
        dir,
    }
}

impl Served {
    /// Shuts down and waits for the drain; the run must end cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}
