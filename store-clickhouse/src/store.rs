//! The ClickHouse store: a batcher in front of retried, deduplicated inserts, and
//! reads that prune by time and aggregate in ClickHouse.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datatracing_core::{Span, Timestamp, TraceId, TraceQuery, TraceSummary};
use datatracing_store::{Health, TraceReader, TraceWriter};
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::admin::{ClickHouseAdmin, timed};
use crate::config::ClickHouseConfig;
use crate::error::{Error, Result};
use crate::metrics::{ClickHouseMetrics, ReasonLabel};
use crate::rows::{MatchRow, SpanRow, SummaryRow};

type Reply = oneshot::Sender<datatracing_store::Result<()>>;
/// A write waiting for the batcher: its spans and where to answer.
type Pending = (Arc<[Span]>, Reply);

struct Inner {
    admin: ClickHouseAdmin,
    config: ClickHouseConfig,
    metrics: ClickHouseMetrics,
    spans_table: String,
    index_table: String,
    /// `span_attributes` when the attribute index is on.
    attrs_table: Option<String>,
    bounds_table: String,
}

/// The table inserts go to, unqualified: the client carries the database, and the crate
/// quotes the name as one identifier.
const INSERT_TABLE: &str = "spans";

/// The ClickHouse-backed [`TraceWriter`] and [`TraceReader`].
#[derive(Clone)]
pub struct ClickHouseStore {
    inner: Arc<Inner>,
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
    /// and starts the batcher. Fails with a clear error when the server is unreachable or
    /// rejects the credentials.
    pub async fn open(config: ClickHouseConfig, metrics: ClickHouseMetrics) -> Result<Self> {
        let admin = ClickHouseAdmin::new(&config)?;
        admin
            .wait_until_reachable(config.connect_timeout.get())
            .await
            .map_err(|e| match e {
                Error::Unreachable(m) | Error::Timeout(m) => Error::Unreachable(format!(
                    "{} did not answer within {:?}: {m}",
                    config.url,
                    config.connect_timeout.get()
                )),
                other => other,
            })?;
        if config.migrate_on_start {
            admin.migrate().await?;
        }
        let inner = Arc::new(Inner {
            spans_table: admin.schema().table("spans"),
            index_table: admin.schema().table("span_index"),
            attrs_table: admin
                .schema()
                .attribute_index
                .then(|| admin.schema().table("span_attributes")),
            bounds_table: admin.schema().table("trace_bounds"),
            admin,
            config,
            metrics,
        });
        let (tx, rx) = mpsc::channel(1024);
        let batcher = tokio::spawn(batcher(Arc::clone(&inner), rx));
        tracing::info!(url = %inner.config.url, database = %inner.config.database, "ClickHouse store opened");
        Ok(Self {
            inner,
            tx: Arc::new(Mutex::new(Some(tx))),
            batcher: Arc::new(Mutex::new(Some(batcher))),
        })
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

    fn query_error(&self, e: Error) -> datatracing_store::Error {
        self.inner
            .metrics
            .query_errors
            .get_or_create(&ReasonLabel { reason: e.reason() })
            .inc();
        tracing::warn!(error = %e, "ClickHouse query failed");
        e.into()
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

fn hex_list(ids: &[TraceId]) -> String {
    ids.iter()
        .map(|t| format!("unhex('{t}')"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Health for ClickHouseStore {
    fn backend(&self) -> &'static str {
        "clickhouse"
    }

    async fn health(&self) -> datatracing_store::Result<()> {
        self.inner
            .admin
            .ping()
            .await
            .map_err(|e| self.query_error(e))
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
        let i = &self.inner;
        // The scalar subqueries read trace_bounds (ordered by trace id) and become constants
        // before the main query is planned, so it reads only the partitions in the bounds.
        let sql = format!(
            "SELECT ?fields FROM {spans} \
             WHERE trace_id = unhex(?) \
               AND start_time >= (SELECT min(start_min) FROM {bounds} WHERE trace_id = unhex(?)) \
               AND start_time <= (SELECT max(start_max) FROM {bounds} WHERE trace_id = unhex(?)) \
             ORDER BY start_time, span_id LIMIT 1 BY span_id",
            spans = i.spans_table,
            bounds = i.bounds_table
        );
        let hex = trace_id.to_string();
        let rows: Vec<SpanRow> = timed(
            i.config.query_timeout.get(),
            "get trace",
            i.admin
                .client()
                .query(&sql)
                .bind(&hex)
                .bind(&hex)
                .bind(&hex)
                .fetch_all::<SpanRow>(),
        )
        .await
        .map_err(|e| self.query_error(e))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let spans = rows
            .into_iter()
            .map(Span::try_from)
            .collect::<Result<Vec<_>>>()
            .map_err(|e| self.query_error(e))?;
        Ok(Some(spans))
    }

    async fn search(&self, q: &TraceQuery) -> datatracing_store::Result<Vec<TraceSummary>> {
        let i = &self.inner;
        // Step 1 reads only the narrow index table, ordered for exactly these filters.
        let mut sql = String::new();
        let mut binds: Vec<Bindable> = Vec::new();
        if let Some(s) = &q.service {
            sql.push_str(" AND service = ?");
            binds.push(Bindable::Str(s.clone()));
        }
        if let Some(o) = &q.operation {
            sql.push_str(" AND operation = ?");
            binds.push(Bindable::Str(o.clone()));
        }
        if let Some(st) = q.status {
            sql.push_str(" AND status = ?");
            binds.push(Bindable::Str(st.as_str().to_string()));
        }
        push_time_bounds(&mut sql, &mut binds, q);
        if let Some(d) = q.min_duration_nanos {
            sql.push_str(" AND duration_ns >= ?");
            binds.push(Bindable::I64(d));
        }
        if let Some(d) = q.max_duration_nanos {
            sql.push_str(" AND duration_ns <= ?");
            binds.push(Bindable::I64(d));
        }
        for f in &q.attributes {
            match (&f.value, &i.attrs_table) {
                (Some(v), Some(attrs_table)) => {
                    // Equality goes through span_attributes, ordered by (key, value, time):
                    // a key range, instead of reading every span's attribute map.
                    sql.push_str(&format!(
                        " AND (trace_id, span_id) IN (SELECT trace_id, span_id FROM {} WHERE key = ? AND value = ?",
                        attrs_table
                    ));
                    binds.push(Bindable::Str(f.key.clone()));
                    binds.push(Bindable::Str(v.clone()));
                    push_time_bounds(&mut sql, &mut binds, q);
                    sql.push(')');
                }
                (Some(v), None) => {
                    sql.push_str(" AND attributes[?] = ? AND mapContains(attributes, ?)");
                    binds.push(Bindable::Str(f.key.clone()));
                    binds.push(Bindable::Str(v.clone()));
                    binds.push(Bindable::Str(f.key.clone()));
                }
                (None, _) => {
                    sql.push_str(" AND mapContains(attributes, ?)");
                    binds.push(Bindable::Str(f.key.clone()));
                }
            }
        }
        let limit = q.limit.max(1);
        // Fast path: the newest `window` matching rows, grouped. When they hold at least
        // `limit` traces, those are exactly the `limit` traces whose latest matching span is
        // newest (a trace's latest span is among the newest rows if the trace is). A top-N
        // read is much cheaper than aggregating every matching row of a long time range.
        let window = (limit * 50).min(100_000);
        let fast = format!(
            "SELECT trace_id, toUnixTimestamp64Nano(max(start_time)) AS latest, \
                    toUInt64(sum(count()) OVER ()) AS scanned \
             FROM (SELECT trace_id, start_time FROM {index} WHERE 1{sql} \
                   ORDER BY start_time DESC, trace_id ASC LIMIT {window}) \
             GROUP BY trace_id ORDER BY latest DESC, trace_id ASC LIMIT {limit}",
            index = i.index_table
        );
        let exact = format!(
            "SELECT trace_id, toUnixTimestamp64Nano(max(start_time)) AS latest, toUInt64(0) AS scanned \
             FROM {index} WHERE 1{sql} GROUP BY trace_id ORDER BY latest DESC, trace_id ASC LIMIT {limit}",
            index = i.index_table
        );
        let run = |sql: String, binds: Vec<Bindable>| async move {
            let mut query = i.admin.client().query(&sql);
            for b in binds {
                query = match b {
                    Bindable::Str(s) => query.bind(s),
                    Bindable::I64(v) => query.bind(v),
                };
            }
            timed(
                i.config.query_timeout.get(),
                "search",
                query.fetch_all::<MatchRow>(),
            )
            .await
        };
        let mut matches = run(fast, binds.clone())
            .await
            .map_err(|e| self.query_error(e))?;
        let truncated = matches
            .first()
            .is_some_and(|m| m.scanned as usize >= window);
        if matches.len() < limit && truncated {
            // Too many rows per trace in the window: fall back to aggregating everything.
            matches = run(exact, binds).await.map_err(|e| self.query_error(e))?;
        }
        if matches.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<TraceId> = matches
            .iter()
            .map(|m| TraceId::from_bytes(m.trace_id))
            .collect();
        let list = hex_list(&ids);
        let root_key = "tuple(parent_id != unhex('0000000000000000'), start_time, span_id)";
        let summary_sql = format!(
            "SELECT trace_id, \
                    toString(argMin(service, {root_key})) AS root_service, \
                    toString(argMin(operation, {root_key})) AS root_operation, \
                    toUnixTimestamp64Nano(min(start_time)) AS start_ns, \
                    toUnixTimestamp64Nano(max(end_time)) - toUnixTimestamp64Nano(min(start_time)) AS duration_ns, \
                    uniqExact(span_id) AS span_count, \
                    uniqExactIf(span_id, status IN ('ERROR', 'TIMEOUT')) AS error_count, \
                    arraySort(groupUniqArray(toString(service))) AS services \
             FROM {spans} \
             WHERE trace_id IN ({list}) \
               AND start_time >= (SELECT min(start_min) FROM {bounds} WHERE trace_id IN ({list})) \
               AND start_time <= (SELECT max(start_max) FROM {bounds} WHERE trace_id IN ({list})) \
             GROUP BY trace_id",
            spans = i.spans_table,
            bounds = i.bounds_table,
        );
        let rows: Vec<SummaryRow> = timed(
            i.config.query_timeout.get(),
            "search summaries",
            i.admin
                .client()
                .query(&summary_sql)
                .fetch_all::<SummaryRow>(),
        )
        .await
        .map_err(|e| self.query_error(e))?;
        // Keep the order of the first step.
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = rows.iter().find(|r| r.trace_id == *id.as_bytes()) {
                out.push(TraceSummary {
                    trace_id: id,
                    root_service: r.root_service.clone(),
                    root_operation: r.root_operation.clone(),
                    start_time: Timestamp::from_unix_nanos(r.start_ns),
                    duration_nanos: r.duration_ns.max(0),
                    span_count: r.span_count,
                    error_count: r.error_count,
                    services: r.services.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// `AND start_time` bounds of a search, for the index table and for the attribute subquery
/// (both are partitioned and ordered by time, so each needs its own bounds to prune).
fn push_time_bounds(sql: &mut String, binds: &mut Vec<Bindable>, q: &TraceQuery) {
    if let Some(t) = q.start {
        sql.push_str(" AND start_time >= fromUnixTimestamp64Nano(toInt64(?))");
        binds.push(Bindable::I64(t.unix_nanos()));
    }
    if let Some(t) = q.end {
        sql.push_str(" AND start_time <= fromUnixTimestamp64Nano(toInt64(?))");
        binds.push(Bindable::I64(t.unix_nanos()));
    }
}

#[derive(Clone)]
enum Bindable {
    Str(String),
    I64(i64),
}
