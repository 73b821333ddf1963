//! The ClickHouse store: a batcher in front of retried, deduplicated inserts, with the
//! reads of [`ClickHouseReader`] on the same connection.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datatracing_core::{Span, TraceId, TraceQuery, TraceSummary};
use datatracing_store::{Health, TraceReader, TraceWriter};
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::admin::{ClickHouseAdmin, timed};
use crate::config::ClickHouseConfig;
use crate::error::Result;
use crate::metrics::{ClickHouseMetrics, ReasonLabel};
use crate::reader::ClickHouseReader;
use crate::rows::SpanRow;

type Reply = oneshot::Sender<datatracing_store::Result<()>>;
/// A write waiting for the batcher: its spans and where to answer.
type Pending = (Arc<[Span]>, Reply);

struct Inner {
    admin: ClickHouseAdmin,
    config: ClickHouseConfig,
    metrics: ClickHouseMetrics,
}

/// The table inserts go to, unqualified: the client carries the database, and the crate
/// quotes the name as one identifier.
const INSERT_TABLE: &str = "spans";

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
        });
        let (tx, rx) = mpsc::channel(1024);
        let batcher = tokio::spawn(batcher(Arc::clone(&inner), rx));
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

    /// Inserts rows as one deduplicated batch, retrying transient errors. Public so tests
    /// can prove that a repeated token does not duplicate rows.
    #[doc(hidden)]
    pub async fn insert_with_token(&self, spans: &[Span], token: &str) -> Result<()> {
        insert_once(
            &self.inner,
            &spans.iter().map(SpanRow::from).collect::<Vec<_>>(),
            token,
        )
        .await
    }
}

/// Collects writes into batches by rows, bytes and time; runs inserts with bounded
/// concurrency; answers every writer once its spans are committed (or given up on).
async fn batcher(inner: Arc<Inner>, mut rx: mpsc::Receiver<Pending>) {
    let cfg = inner.config.batch.clone();
    let permits = Arc::new(Semaphore::new(cfg.max_concurrent_inserts));
    let mut inflight = JoinSet::new();
    let mut pending: Vec<Pending> = Vec::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let flush_now = tokio::select! {
            msg = rx.recv() => match msg {
                Some((spans, reply)) => {
                    rows += spans.len();
                    bytes += spans.iter().map(Span::size_bytes).sum::<usize>();
                    inner.metrics.pending_spans.inc_by(spans.len() as i64);
                    pending.push((spans, reply));
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + cfg.flush_interval.get());
                    rows >= cfg.max_rows || bytes >= cfg.max_bytes
                }
                None => break,
            },
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => true,
            Some(_) = inflight.join_next(), if !inflight.is_empty() => false,
        };
        if flush_now && !pending.is_empty() {
            let batch = std::mem::take(&mut pending);
            inner.metrics.pending_spans.dec_by(rows as i64);
            (rows, bytes, deadline) = (0, 0, None);
            // Backpressure: wait for an insert slot before taking more from the channel.
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let inner = Arc::clone(&inner);
            inflight.spawn(async move {
                let _permit = permit;
                insert_batch(&inner, batch).await;
            });
        }
    }
    if !pending.is_empty() {
        inner.metrics.pending_spans.dec_by(rows as i64);
        insert_batch(&inner, pending).await;
    }
    while inflight.join_next().await.is_some() {}
}

async fn insert_batch(inner: &Inner, batch: Vec<Pending>) {
    let rows: Vec<SpanRow> = batch
        .iter()
        .flat_map(|(s, _)| s.iter())
        .map(SpanRow::from)
        .collect();
    let n = rows.len() as u64;
    // One token for every attempt of this batch: ClickHouse drops a retried block it has
    // already committed, so a retry after an ambiguous failure cannot duplicate rows.
    let token = format!("dt-{:032x}", rand::rng().random::<u128>());
    let result = insert_with_retry(inner, &rows, &token).await;
    match &result {
        Ok(()) => {
            inner.metrics.inserted_spans.inc_by(n);
            inner.metrics.insert_batches.inc();
        }
        Err(e) => {
            inner
                .metrics
                .dropped_spans
                .get_or_create(&ReasonLabel { reason: e.reason() })
                .inc_by(n);
            tracing::error!(error = %e, spans = n, "giving up on a ClickHouse insert; writers get the error");
        }
    }
    for (_, reply) in batch {
        let r = match &result {
            Ok(()) => Ok(()),
            Err(e) if e.is_transient() => Err(datatracing_store::Error::Unavailable(e.to_string())),
            Err(e) => Err(datatracing_store::Error::Rejected(e.to_string())),
        };
        let _ = reply.send(r);
    }
}

async fn insert_with_retry(inner: &Inner, rows: &[SpanRow], token: &str) -> Result<()> {
    let cfg = &inner.config;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let started = Instant::now();
        let result = insert_once(inner, rows, token).await;
        inner
            .metrics
            .insert_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => return Ok(()),
            Err(e) => {
                inner
                    .metrics
                    .insert_errors
                    .get_or_create(&ReasonLabel { reason: e.reason() })
                    .inc();
                if !e.is_transient() || attempt >= cfg.max_attempts {
                    return Err(e);
                }
                // Exponential backoff with full jitter, capped.
                let cap = datatracing_core::exponential_backoff(
                    cfg.retry_backoff.get(),
                    attempt,
                    cfg.max_retry_backoff.get(),
                );
                let delay = Duration::from_nanos(
                    rand::rng().random_range(0..=cap.as_nanos().min(u128::from(u64::MAX)) as u64),
                );
                inner.metrics.insert_retries.inc();
                tracing::warn!(error = %e, attempt, ?delay, rows = rows.len(), "ClickHouse insert failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn insert_once(inner: &Inner, rows: &[SpanRow], token: &str) -> Result<()> {
    let timeout = inner.config.insert_timeout.get();
    let client = inner.admin.client();
    let work = async {
        let mut insert = client
            .insert::<SpanRow>(INSERT_TABLE)
            .await?
            .with_setting("insert_deduplicate", "1")
            .with_setting("insert_deduplication_token", token)
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    };
    timed(timeout, "insert", work).await
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
    async fn get_trace(&self, trace_id: TraceId) -> datatracing_store::Result<Option<Vec<Span>>> {
        self.reader.get_trace(trace_id).await
    }

    async fn search(&self, q: &TraceQuery) -> datatracing_store::Result<Vec<TraceSummary>> {
        self.reader.search(q).await
    }
}
