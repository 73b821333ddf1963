//! The ClickHouse store: writes go to the insert batcher (`batcher`: prompt, retried,
//! deduplicated inserts), reads are those of [`ClickHouseReader`] on the same connection.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use datatracing_config::ClickHouseConfig;
use datatracing_core::{
    Operation, SearchPage, Span, TimeWindow, TraceId, TraceQuery, TraceSummary,
};
use datatracing_store::{CappedTrace, CrossLink, Health, TraceReader, TraceWriter};
use tokio::sync::{mpsc, oneshot};

use crate::admin::ClickHouseAdmin;
use crate::batcher::{Inserter, Pending};
use crate::error::Result;
use crate::metrics::ClickHouseMetrics;
use crate::reader::ClickHouseReader;
use crate::rows::SpanRow;

struct Inner {
    admin: ClickHouseAdmin,
    config: ClickHouseConfig,
    metrics: ClickHouseMetrics,
    /// Days in the spans table's TTL as last read (0: none or not read), for
    /// [`TraceWriter::retention`]; re-read every [`RETENTION_REFRESH`] because an operator can
    /// change it while the collector runs (`set_retention`).
    retention_days: AtomicU32,
}

/// How often the spans table's TTL is read again.
const RETENTION_REFRESH: Duration = Duration::from_secs(60);

/// The ClickHouse-backed [`TraceWriter`] and [`TraceReader`].
#[derive(Clone)]
pub struct ClickHouseStore {
    inner: Arc<Inner>,
    reader: ClickHouseReader,
    tx: Arc<Mutex<Option<mpsc::Sender<Pending>>>>,
    batcher: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore")
            .field("url", &self.inner.config.url)
            .field("database", &self.inner.config.database)
            .finish_non_exhaustive()
    }
}

impl ClickHouseStore {
    /// Connects (waiting up to `connect_timeout` for the server), migrates when configured,
    /// and starts the batcher: for processes that write. Fails with a clear error when the
    /// server is unreachable or rejects the credentials. Processes that only read open a
    /// [`ClickHouseReader`] instead.
    pub async fn open(config: ClickHouseConfig, metrics: ClickHouseMetrics) -> Result<Self> {
        let admin = ClickHouseAdmin::connect(&config).await?;
        if config.migrate_on_start {
            admin.migrate().await?;
        }
        let reader =
            ClickHouseReader::new(admin.clone(), metrics.clone(), config.query_timeout.get());
        let inner = Arc::new(Inner {
            admin,
            config,
            metrics,
            retention_days: AtomicU32::new(0),
        });
        refresh_retention(&inner).await;
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETENTION_REFRESH).await;
                let Some(inner) = weak.upgrade() else { return };
                refresh_retention(&inner).await;
            }
        });
        let inserter = Arc::new(Inserter {
            client: inner.admin.client().clone(),
            batch: inner.config.batch.clone(),
            retry: inner.config.retry_policy(),
            insert_timeout: inner.config.insert_timeout.get(),
            metrics: inner.metrics.clone(),
        });
        let (tx, rx) = mpsc::channel(1024);
        let batcher = tokio::spawn(crate::batcher::run(inserter, rx));
        tracing::info!(url = %inner.config.url, database = %inner.config.database, "ClickHouse store opened");
        Ok(Self {
            inner,
            reader,
            tx: Arc::new(Mutex::new(Some(tx))),
            batcher: Arc::new(Mutex::new(Some(batcher))),
        })
    }

    /// The read side on the same connection.
    pub fn reader(&self) -> &ClickHouseReader {
        &self.reader
    }

    /// Administration for the same database (retention, migrations).
    pub fn admin(&self) -> &ClickHouseAdmin {
        &self.inner.admin
    }

    /// Reads the spans table's TTL again now (it is also re-read every minute).
    pub async fn refresh_retention(&self) {
        refresh_retention(&self.inner).await;
    }

    /// Inserts rows as one deduplicated insert, once. Public so tests can prove that a
    /// repeated token does not duplicate rows.
    #[doc(hidden)]
    pub async fn insert_with_token(&self, spans: &[Span], token: &str) -> Result<()> {
        crate::batcher::insert_once(
            self.inner.admin.client(),
            self.inner.config.insert_timeout.get(),
            &spans.iter().map(SpanRow::from).collect::<Vec<_>>(),
            token,
        )
        .await
    }
}

/// Reads the spans table's TTL into `inner.retention_days`; keeps the last value when the
/// read fails (a transient error must not switch the check off).
async fn refresh_retention(inner: &Inner) {
    match inner.admin.retention().await {
        Ok(tables) => {
            let days = tables
                .iter()
                .find(|t| t.table == inner.admin.spans_storage_table())
                .and_then(|t| t.days)
                .unwrap_or(0);
            inner.retention_days.store(days, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the spans table's retention"),
    }
}

#[async_trait]
impl Health for ClickHouseStore {
    fn backend(&self) -> &'static str {
        "clickhouse"
    }

    async fn health(&self) -> datatracing_store::Result<()> {
        self.reader.health().await
    }
}

#[async_trait]
impl TraceWriter for ClickHouseStore {
    async fn write(&self, spans: Arc<[Span]>) -> datatracing_store::Result<()> {
        if spans.is_empty() {
            return Ok(());
        }
        let tx = self
            .tx
            .lock()
            .map_err(|_| datatracing_store::Error::Closed)?
            .clone()
            .ok_or(datatracing_store::Error::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send((spans, reply))
            .await
            .map_err(|_| datatracing_store::Error::Closed)?;
        rx.await.map_err(|_| datatracing_store::Error::Closed)?
    }

    fn retention(&self) -> Option<Duration> {
        match self.inner.retention_days.load(Ordering::Relaxed) {
            0 => None,
            days => Some(Duration::from_secs(u64::from(days) * 24 * 3600)),
        }
    }

    async fn close(&self) -> datatracing_store::Result<()> {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.batcher.lock().ok().and_then(|mut b| b.take());
        if let Some(h) = handle {
            h.await.map_err(|e| {
                datatracing_store::Error::Unavailable(format!("batcher failed: {e}"))
            })?;
        }
        Ok(())
    }
}

#[async_trait]
impl TraceReader for ClickHouseStore {
    fn for_tenant(&self, tenant: &datatracing_core::Tenant) -> Arc<dyn TraceReader> {
        self.reader.for_tenant(tenant)
    }

    async fn get_trace(&self, trace_id: TraceId) -> datatracing_store::Result<Option<Vec<Span>>> {
        self.reader.get_trace(trace_id).await
    }

    async fn get_trace_capped(
        &self,
        trace_id: TraceId,
        max_spans: usize,
    ) -> datatracing_store::Result<Option<CappedTrace>> {
        self.reader.get_trace_capped(trace_id, max_spans).await
    }

    async fn trace_spans(
        &self,
        trace_id: TraceId,
        after: Option<datatracing_core::SpanCursor>,
        limit: usize,
    ) -> datatracing_store::Result<Vec<Span>> {
        self.reader.trace_spans(trace_id, after, limit).await
    }

    async fn search(&self, q: &TraceQuery) -> datatracing_store::Result<SearchPage> {
        self.reader.search(q).await
    }

    async fn services(
        &self,
        window: &TimeWindow,
        limit: usize,
    ) -> datatracing_store::Result<Vec<String>> {
        self.reader.services(window, limit).await
    }

    async fn operations(
        &self,
        service: &str,
        window: &TimeWindow,
        limit: usize,
    ) -> datatracing_store::Result<Vec<Operation>> {
        self.reader.operations(service, window, limit).await
    }
    async fn summaries(&self, traces: &[TraceId]) -> datatracing_store::Result<Vec<TraceSummary>> {
        self.reader.summaries(traces).await
    }

    async fn links_from(
        &self,
        traces: &[TraceId],
        limit: usize,
    ) -> datatracing_store::Result<Vec<CrossLink>> {
        self.reader.links_from(traces, limit).await
    }

    async fn links_to(
        &self,
        traces: &[TraceId],
        limit: usize,
    ) -> datatracing_store::Result<Vec<CrossLink>> {
        self.reader.links_to(traces, limit).await
    }
}
