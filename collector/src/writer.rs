//! The write stage: takes batches from the source (the in-memory queue, or the durable
//! queue's log), samples them, and keeps up to `batch.max_in_flight` store writes running.
//!
//! The writer never waits to fill a batch: it takes everything queued (up to
//! `batch.max_spans`) and starts writing it. Under load, requests that arrive while writes
//! run form the next batches, so batches grow with load and an idle collector answers fast.
//! Each backend groups writes once more in its own way (SQLite commits concurrent writes
//! together; ClickHouse merges writes that wait for an insert slot), and retries transient
//! failures itself, next to its deduplication token, so the writer does not retry a store
//! write that the store has given up on: the requests are answered 503 and clients retry.
//!
//! Completions are handled in the order the batches were taken. With the in-memory queue
//! that answers each request; with the durable queue it advances the log's checkpoint,
//! which therefore never passes a batch that is not stored yet. The durable queue's spans
//! were acknowledged already, so their writes are retried until the store takes them (or
//! the collector stops: they stay in the log for the next start).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use datatracing_config::BatchConfig;
use datatracing_core::{RetryPolicy, Span};
use datatracing_store::TraceWriter;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::CollectorMetrics;
use crate::queue::{QueueItem, WriteFailure, WriteOutcome};
use crate::route::Handoff;
use crate::route::lineage::PeerInput;
use crate::sample::Sampler;
use crate::wal;

/// Counts reported when the writer stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Spans committed.
    pub written: u64,
    /// Spans whose write failed (their requests were answered 503, so clients retry), or
    /// that the store rejected from the durable queue (dropped and counted).
    pub failed: u64,
}

/// Stops the writer after it has drained its source.
#[derive(Debug)]
pub struct WriterHandle {
    closing: CancellationToken,
    task: JoinHandle<WriterStats>,
}

impl WriterHandle {
    /// Closes the source to new spans, writes what it holds, and waits up to `timeout`.
    pub async fn finish(self, timeout: Duration) -> WriterStats {
        self.closing.cancel();
        let abort = self.task.abort_handle();
        match tokio::time::timeout(timeout, self.task).await {
            Ok(Ok(stats)) => stats,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "writer task failed");
                WriterStats::default()
            }
            Err(_) => {
                // Requests still queued were never acknowledged: their clients see an error
                // and keep the data; durable spans stay in the log. Stopping here loses
                // nothing that was promised.
                tracing::warn!(
                    ?timeout,
                    "writer did not drain in time; unacknowledged requests abandoned"
                );
                abort.abort();
                WriterStats::default()
            }
        }
    }
}

/// Where batches come from.
pub(crate) enum Source {
    /// The in-memory queue: requests wait for their write's outcome.
    Queue {
        rx: mpsc::UnboundedReceiver<QueueItem>,
        closed: bool,
    },
    /// The durable queue's log: requests were acknowledged after the append.
    Log(wal::Drain),
}

/// A batch taken from the source, and what to do once it is written.
struct Batch {
    spans: Vec<Span>,
    done: Done,
}

enum Done {
    /// Answer these requests (their queue capacity is held until then).
    Answer(Vec<QueueItem>),
    /// Advance the log's checkpoint past this batch.
    Checkpoint(wal::Checkpoint),
    /// Spans the sampler released on its own (a tick, or shutdown).
    Nothing,
}

struct Finished {
    done: Done,
    outcome: WriteOutcome,
    written: u64,
    failed: u64,
}

type Write = Pin<Box<dyn Future<Output = Finished> + Send>>;

impl Source {
    /// The next batch; `None` once the source is closed and empty.
    async fn next(&mut self, max_spans: usize, closing: &CancellationToken) -> Option<Batch> {
        match self {
            Source::Queue { rx, closed } => {
                let first = loop {
                    tokio::select! {
                        biased;
                        item = rx.recv() => break item?,
                        _ = closing.cancelled(), if !*closed => {
                            // Refuse new requests but keep draining what is already queued.
                            rx.close();
                            *closed = true;
                        }
                    }
                };
                let mut n = first.spans.len();
                let mut items = vec![first];
                while n < max_spans {
                    match rx.try_recv() {
                        Ok(item) => {
                            n += item.spans.len();
                            items.push(item);
                        }
                        Err(_) => break,
                    }
                }
                let mut spans = Vec::with_capacity(n);
                for item in &mut items {
                    spans.append(&mut item.spans);
                }
                Some(Batch {
                    spans,
                    done: Done::Answer(items),
                })
            }
            Source::Log(drain) => {
                let (spans, checkpoint) = drain.next().await?;
                Some(Batch {
                    spans,
                    done: Done::Checkpoint(checkpoint),
                })
            }
        }
    }
}

/// Starts the writer task. `retry` is how the durable queue's writes are retried; the
/// in-memory queue's writes are tried once (the store retries inside).
/// The sampling stage: the sampler, and lineage messages other replicas send it.
pub(crate) struct Sampling {
    pub sampler: Box<dyn Sampler>,
    pub peers: Option<mpsc::Receiver<PeerInput>>,
    /// Where buffered traces this replica no longer owns go.
    pub handoff: Option<Handoff>,
}

pub(crate) fn spawn(
    source: Source,
    store: Arc<dyn TraceWriter>,
    sampling: Sampling,
    config: BatchConfig,
    retry: RetryPolicy,
    metrics: CollectorMetrics,
    closing: CancellationToken,
) -> WriterHandle {
    let writer = Writer {
        store,
        metrics,
        retry,
        durable: matches!(source, Source::Log(_)),
        closing: closing.clone(),
    };
    let task = tokio::spawn(run(source, writer, sampling, config));
    WriterHandle { closing, task }
}

/// What a write needs; cheap to clone into each write.
#[derive(Clone)]
struct Writer {
    store: Arc<dyn TraceWriter>,
    metrics: CollectorMetrics,
    retry: RetryPolicy,
    durable: bool,
    closing: CancellationToken,
}

async fn run(
    mut source: Source,
    writer: Writer,
    sampling: Sampling,
    config: BatchConfig,
) -> WriterStats {
    let Sampling {
        mut sampler,
        mut peers,
        handoff,
    } = sampling;
    let mut stats = WriterStats::default();
    let mut in_flight: FuturesOrdered<Write> = FuturesOrdered::new();
    let mut open = true;
    // Set when a durable write stopped without storing its batch (shutdown while the
    // store was down): later batches are not checkpointed either, so all of them replay.
    let mut stalled = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let closing = writer.closing.clone();
    loop {
        let room = in_flight.len() < config.max_in_flight;
        tokio::select! {
            biased;
            Some(f) = in_flight.next(), if !in_flight.is_empty() => {
                finish(f, &mut source, &mut stats, &mut stalled);
            }
            batch = source.next(config.max_spans, &closing), if open && room => match batch {
                Some(Batch { spans, done }) => {
                    let spans = sampler.offer(spans);
                    in_flight.push_back(Box::pin(writer.clone().write(spans, done)));
                }
                None => open = false,
            },
            Some(input) = recv_peer(&mut peers), if room && peers.is_some() => {
                let out = match input {
                    // Lineage from other replicas may keep buffered traces now.
                    PeerInput::Lineage(msgs) => sampler.peer(msgs),
                    PeerInput::RingChanged => {
                        let gone = sampler.take_unowned();
                        if let (false, Some(h)) = (gone.is_empty(), &handoff) {
                            h.send(gone);
                        }
                        Vec::new()
                    }
                    PeerInput::Returned(spans) => sampler.offer(spans),
                };
                in_flight.push_back(Box::pin(writer.clone().write(out, Done::Nothing)));
            }
            _ = tick.tick(), if room && sampler.pending() => {
                // Traces whose decision came due without new spans arriving.
                let due = sampler.tick();
                in_flight.push_back(Box::pin(writer.clone().write(due, Done::Nothing)));
            }
            else => break,
        }
        writer.metrics.writes_in_flight.set(in_flight.len() as i64);
        if !open && in_flight.is_empty() {
            break;
        }
    }
    let rest = sampler.flush();
    if !rest.is_empty() {
        let f = writer.clone().write(rest, Done::Nothing).await;
        finish(f, &mut source, &mut stats, &mut stalled);
    }
    if let Source::Log(drain) = source {
        drain.close().await;
    }
    stats
}

async fn recv_peer(peers: &mut Option<mpsc::Receiver<PeerInput>>) -> Option<PeerInput> {
    match peers {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

fn finish(f: Finished, source: &mut Source, stats: &mut WriterStats, stalled: &mut bool) {
    stats.written += f.written;
    stats.failed += f.failed;
    match f.done {
        Done::Answer(items) => {
            for item in items {
                // The request may have timed out and gone; its spans are written regardless.
                let _ = item.release().send(f.outcome.clone());
            }
        }
        Done::Checkpoint(c) => {
            if f.outcome.is_err() {
                *stalled = true;
            }
            if !*stalled && let Source::Log(drain) = source {
                drain.checkpoint(c);
            }
        }
        Done::Nothing => {}
    }
}

impl Writer {
    async fn write(self, spans: Vec<Span>, done: Done) -> Finished {
        let n = spans.len() as u64;
        let (outcome, stored) = if spans.is_empty() {
            (Ok(()), true)
        } else if self.durable {
            self.write_durable(spans.into()).await
        } else {
            let r = self.write_once(spans.into()).await;
            let stored = r.is_ok();
            (r, stored)
        };
        Finished {
            done,
            outcome,
            written: if stored { n } else { 0 },
            failed: if stored { 0 } else { n },
        }
    }

    async fn attempt(&self, batch: &Arc<[Span]>) -> datatracing_store::Result<()> {
        let started = Instant::now();
        let result = self.store.write(Arc::clone(batch)).await;
        self.metrics
            .write_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => {
                self.metrics.written.inc_by(batch.len() as u64);
                self.metrics.batch_spans.observe(batch.len() as f64);
            }
            Err(_) => {
                self.metrics.write_errors.inc();
            }
        }
        result
    }

    /// One attempt: the store has retried what it could.
    async fn write_once(&self, batch: Arc<[Span]>) -> WriteOutcome {
        self.attempt(&batch).await.map_err(|e| {
            tracing::error!(error = %e, spans = batch.len(), "store write failed");
            WriteFailure {
                message: e.to_string(),
                transient: e.is_transient(),
            }
        })
    }

    /// Acknowledged spans: retried while the store is unavailable, until it takes them or
    /// the drain's deadline aborts the writer (they stay in the log). Retrying on after the
    /// stop signal matters where the log does not outlive the process's home (a pod's
    /// `emptyDir`): a store that recovers within the drain still gets them. A permanent
    /// refusal drops them, counted: the outcome is then `Ok` (the log moves past them) but
    /// nothing was stored.
    async fn write_durable(&self, batch: Arc<[Span]>) -> (WriteOutcome, bool) {
        let n = batch.len();
        let result = (|| self.attempt(&batch))
            .retry(self.retry.backoff())
            .sleep(tokio::time::sleep)
            .when(|e: &datatracing_store::Error| e.is_transient())
            .notify(|e, delay| {
                tracing::warn!(error = %e, spans = n, ?delay, "store unavailable; acknowledged spans stay queued");
            })
            .await;
        match result {
            Ok(()) => (Ok(()), true),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, spans = n, "stopping with acknowledged spans unwritten; they stay in the durable queue for the next start");
                let message = e.to_string();
                let failure = WriteFailure {
                    message,
                    transient: true,
                };
                (Err(failure), false)
            }
            Err(e) => {
                self.metrics.drop_spans("store_rejected", n);
                tracing::error!(error = %e, spans = n, "store rejected acknowledged spans; they are dropped and counted");
                (Ok(()), false)
            }
        }
    }
}
