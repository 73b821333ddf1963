//! The insert batcher: turns writes into deduplicated, retried ClickHouse inserts with
//! bounded concurrency.
//!
//! A write is inserted as soon as an insert slot is free: the caller (the collector's
//! writer) has grouped its spans already, so waiting here for more would only add latency.
//! Writes that arrive while every slot is busy are merged into the next insert, up to
//! `batch.max_rows` / `batch.max_bytes`, so under load inserts grow instead of queueing.
//! `batch.flush_interval` adds a wait for more writes before each insert, for callers that
//! write many small batches (zero by default).
//!
//! Retries live here, next to the deduplication token: every attempt of one insert carries
//! the same token, so ClickHouse drops a block it already committed when a retry follows an
//! ambiguous failure. The retry policy is the shared one (`RetryPolicy` on `backon`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use clickhouse::Client;
use datatracing_config::ClickHouseBatchConfig;
use datatracing_core::{RetryPolicy, Span};
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::admin::timed;
use crate::error::{Error, Result};
use crate::metrics::{ClickHouseMetrics, ReasonLabel};
use crate::rows::SpanRow;

/// The table inserts go to, unqualified: the client carries the database, and the crate
/// quotes the name as one identifier.
const INSERT_TABLE: &str = "spans";

pub(crate) type Reply = oneshot::Sender<datatracing_store::Result<()>>;
/// A write waiting for the batcher: its spans and where to answer.
pub(crate) type Pending = (Arc<[Span]>, Reply);

/// What inserts need.
pub(crate) struct Inserter {
    pub(crate) client: Client,
    pub(crate) batch: ClickHouseBatchConfig,
    pub(crate) retry: RetryPolicy,
    pub(crate) insert_timeout: Duration,
    pub(crate) metrics: ClickHouseMetrics,
}

/// The writes of one insert.
struct Group {
    writes: Vec<Pending>,
    rows: usize,
    bytes: usize,
}

impl Group {
    fn new() -> Self {
        Self {
            writes: Vec::new(),
            rows: 0,
            bytes: 0,
        }
    }

    fn full(&self, cfg: &ClickHouseBatchConfig) -> bool {
        self.rows >= cfg.max_rows || self.bytes >= cfg.max_bytes
    }

    /// Adds a write if it fits (a first write always does); hands it back otherwise.
    fn add(&mut self, p: Pending, cfg: &ClickHouseBatchConfig) -> Option<Pending> {
        let bytes: usize = p.0.iter().map(Span::size_bytes).sum();
        if !self.writes.is_empty()
            && (self.rows + p.0.len() > cfg.max_rows || self.bytes + bytes > cfg.max_bytes)
        {
            return Some(p);
        }
        self.rows += p.0.len();
        self.bytes += bytes;
        self.writes.push(p);
        None
    }
}

/// Runs until every sender is gone, then finishes the inserts in flight.
pub(crate) async fn run(inserter: Arc<Inserter>, mut rx: mpsc::Receiver<Pending>) {
    let cfg = inserter.batch.clone();
    let linger = cfg.flush_interval.get();
    let slots = Arc::new(Semaphore::new(cfg.max_concurrent_inserts));
    let mut inflight = JoinSet::new();
    // A write that did not fit the previous insert starts the next one.
    let mut carry: Option<Pending> = None;
    let mut open = true;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None if open => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
            None => break,
        };
        while inflight.try_join_next().is_some() {}
        let mut group = Group::new();
        carry = group.add(first, &cfg);
        inserter.metrics.pending_spans.inc_by(group.rows as i64);
        // Optionally wait for more writes to join.
        if !linger.is_zero() {
            let deadline = tokio::time::Instant::now() + linger;
            while open && carry.is_none() && !group.full(&cfg) {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(p) => carry = add(&mut group, p, &cfg, &inserter),
                        None => open = false,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        // Wait for a slot; writes arriving meanwhile join this insert while they fit.
        let permit = loop {
            if !open || carry.is_some() || group.full(&cfg) {
                break Arc::clone(&slots).acquire_owned().await;
            }
            tokio::select! {
                biased;
                permit = Arc::clone(&slots).acquire_owned() => break permit,
                msg = rx.recv() => match msg {
                    Some(p) => carry = add(&mut group, p, &cfg, &inserter),
                    None => open = false,
                },
            }
        };
        let Ok(permit) = permit else { break };
        // And whatever is already waiting, without waiting for more.
        while open && carry.is_none() && !group.full(&cfg) {
            match rx.try_recv() {
                Ok(p) => carry = add(&mut group, p, &cfg, &inserter),
                Err(_) => break,
            }
        }
        inserter.metrics.pending_spans.dec_by(group.rows as i64);
        inserter.metrics.inserts_in_flight.inc();
        let inserter = Arc::clone(&inserter);
        inflight.spawn(async move {
            let result = inserter.insert_group(&group.writes).await;
            // The slot is free before the writers hear back.
            drop(permit);
            inserter.metrics.inserts_in_flight.dec();
            answer(group.writes, &result);
        });
    }
    while inflight.join_next().await.is_some() {}
}

fn add(
    group: &mut Group,
    p: Pending,
    cfg: &ClickHouseBatchConfig,
    inserter: &Inserter,
) -> Option<Pending> {
    let n = p.0.len();
    let back = group.add(p, cfg);
    if back.is_none() {
        inserter.metrics.pending_spans.inc_by(n as i64);
    }
    back
}

impl Inserter {
    async fn insert_group(&self, writes: &[Pending]) -> Result<()> {
        let rows: Vec<SpanRow> = writes
            .iter()
            .flat_map(|(s, _)| s.iter())
            .map(SpanRow::from)
            .collect();
        let n = rows.len() as u64;
        // One token for every attempt of this insert: ClickHouse drops a retried block it
        // has already committed, so a retry after an ambiguous failure cannot duplicate rows.
        let token = format!("dt-{:032x}", rand::rng().random::<u128>());
        let result = self.insert_with_retry(&rows, &token).await;
        match &result {
            Ok(()) => {
                self.metrics.inserted_spans.inc_by(n);
                self.metrics.insert_batches.inc();
            }
            Err(e) => {
                self.metrics
                    .dropped_spans
                    .get_or_create(&ReasonLabel { reason: e.reason() })
                    .inc_by(n);
                tracing::error!(error = %e, spans = n, "giving up on a ClickHouse insert; writers get the error");
            }
        }
        result
    }

    async fn insert_with_retry(&self, rows: &[SpanRow], token: &str) -> Result<()> {
        let attempt = || async {
            let started = Instant::now();
            let result = insert_once(&self.client, self.insert_timeout, rows, token).await;
            self.metrics
                .insert_duration
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                self.metrics
                    .insert_errors
                    .get_or_create(&ReasonLabel { reason: e.reason() })
                    .inc();
            }
            result
        };
        attempt
            .retry(self.retry.backoff())
            .sleep(tokio::time::sleep)
            .when(Error::is_transient)
            .notify(|e, delay| {
                self.metrics.insert_retries.inc();
                tracing::warn!(error = %e, ?delay, rows = rows.len(), "ClickHouse insert failed; retrying");
            })
            .await
    }
}

/// Tells every writer of an insert how it went.
fn answer(writes: Vec<Pending>, result: &Result<()>) {
    for (_, reply) in writes {
        let r = match result {
            Ok(()) => Ok(()),
            Err(e) if e.is_transient() => Err(datatracing_store::Error::Unavailable(e.to_string())),
            Err(e) => Err(datatracing_store::Error::Rejected(e.to_string())),
        };
        let _ = reply.send(r);
    }
}

/// One insert attempt of `rows` with a deduplication token.
pub(crate) async fn insert_once(
    client: &Client,
    timeout: Duration,
    rows: &[SpanRow],
    token: &str,
) -> Result<()> {
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
