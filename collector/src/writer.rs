//! The write stage: drains the queue into the store in batches and reports each request's
//! outcome back to it.
//!
//! The writer never waits to fill a batch: it takes everything queued (up to
//! `batch.max_spans`), writes it, and repeats. Under load, requests that arrive during a
//! write form the next batch, so batches grow with load and an idle collector answers fast.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datatracing_core::{Span, Timestamp};
use datatracing_store::TraceWriter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::BatchConfig;
use crate::metrics::CollectorMetrics;
use crate::queue::{QueueItem, WriteFailure, WriteOutcome};
use crate::sample::Sampler;

/// Counts reported when the writer stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Spans committed.
    pub written: u64,
    /// Spans whose write failed (their requests were answered 503, so clients retry).
    pub failed: u64,
}

/// Stops the writer after it has drained the queue.
#[derive(Debug)]
pub struct WriterHandle {
    closing: CancellationToken,
    task: JoinHandle<WriterStats>,
}

impl WriterHandle {
    /// Closes the queue to new requests, writes what is queued, and waits up to `timeout`.
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
                // and keep the data, so stopping here loses nothing that was promised.
                tracing::warn!(
                    ?timeout,
                    "queue did not drain in time; unacknowledged requests abandoned"
                );
                abort.abort();
                WriterStats::default()
            }
        }
    }
}

/// Starts the writer task.
pub fn spawn(
    rx: mpsc::UnboundedReceiver<QueueItem>,
    store: Arc<dyn TraceWriter>,
    sampler: Box<dyn Sampler>,
    config: BatchConfig,
    metrics: CollectorMetrics,
) -> WriterHandle {
    let closing = CancellationToken::new();
    let task = tokio::spawn(run(rx, store, sampler, config, metrics, closing.clone()));
    WriterHandle { closing, task }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<QueueItem>,
    store: Arc<dyn TraceWriter>,
    mut sampler: Box<dyn Sampler>,
    config: BatchConfig,
    metrics: CollectorMetrics,
    closing: CancellationToken,
) -> WriterStats {
    let mut stats = WriterStats::default();
    let mut closed = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => match item {
                Some(i) => i,
                None => break,
            },
            _ = closing.cancelled(), if !closed => {
                // Refuse new requests but keep draining what is already queued.
                rx.close();
                closed = true;
                continue;
            }
            _ = tick.tick(), if sampler.pending() => {
                // Traces whose decision came due without new spans arriving.
                let due = sampler.tick();
                let _ = write_with_retry(&*store, due, &config, &metrics, &mut stats).await;
                continue;
            }
        };
        let mut items = vec![first];
        let mut n = items[0].spans.len();
        while n < config.max_spans {
            match rx.try_recv() {
                Ok(item) => {
                    n += item.spans.len();
                    items.push(item);
                }
                Err(_) => break,
            }
        }
        let mut spans = Vec::with_capacity(n);
        let acks: Vec<_> = items
            .into_iter()
            .map(|mut item| {
                spans.append(&mut item.spans);
                item
            })
            .collect();
        let to_write = sampler.offer(spans);
        let outcome = write_with_retry(&*store, to_write, &config, &metrics, &mut stats).await;
        for item in acks {
            // The request may have timed out and gone; its spans are written regardless.
            let _ = item.release().send(outcome.clone());
        }
    }
    let rest = sampler.flush();
    if !rest.is_empty() {
        let _ = write_with_retry(&*store, rest, &config, &metrics, &mut stats).await;
    }
    stats
}

async fn write_with_retry(
    store: &dyn TraceWriter,
    spans: Vec<Span>,
    config: &BatchConfig,
    metrics: &CollectorMetrics,
    stats: &mut WriterStats,
) -> WriteOutcome {
    if spans.is_empty() {
        return Ok(());
    }
    let n = spans.len() as u64;
    let batch: Arc<[Span]> = spans.into();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let started = Instant::now();
        let result = store.write(Arc::clone(&batch)).await;
        metrics
            .write_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                metrics.written.inc_by(n);
                metrics.batch_spans.observe(n as f64);
                stats.written += n;
                return Ok(());
            }
            Err(e) => {
                metrics.write_errors.inc();
                if !e.is_transient() || attempt >= config.max_attempts {
                    tracing::error!(error = %e, spans = n, attempt, "store write failed");
                    stats.failed += n;
                    return Err(WriteFailure {
                        message: e.to_string(),
                        transient: e.is_transient(),
                    });
                }
                let delay = backoff(config.retry_backoff.get(), attempt, Duration::MAX);
                tracing::warn!(error = %e, spans = n, attempt, ?delay, "store write failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Longest pause between store attempts for acknowledged spans (they are retried forever).
const DURABLE_RETRY_CAP: Duration = Duration::from_secs(30);

/// Starts the drain task of the durable queue: log -> sample -> store -> checkpoint.
pub(crate) fn spawn_durable(
    wal: crate::wal::Wal,
    from: crate::wal::Pos,
    store: Arc<dyn TraceWriter>,
    sampler: Box<dyn Sampler>,
    config: BatchConfig,
    retry: Duration,
    metrics: CollectorMetrics,
) -> WriterHandle {
    let closing = CancellationToken::new();
    let task = tokio::spawn(run_durable(
        wal,
        from,
        store,
        sampler,
        config,
        retry,
        metrics,
        closing.clone(),
    ));
    WriterHandle { closing, task }
}

#[allow(clippy::too_many_arguments)]
async fn run_durable(
    wal: crate::wal::Wal,
    mut cursor: crate::wal::Pos,
    store: Arc<dyn TraceWriter>,
    mut sampler: Box<dyn Sampler>,
    config: BatchConfig,
    retry: Duration,
    metrics: CollectorMetrics,
    closing: CancellationToken,
) -> WriterStats {
    let mut stats = WriterStats::default();
    let mut head_rx = wal.head();
    let dir = wal.dir().to_path_buf();
    loop {
        let head = *head_rx.borrow_and_update();
        if cursor >= head {
            if closing.is_cancelled() {
                break;
            }
            tokio::select! {
                changed = head_rx.changed() => if changed.is_err() { break },
                _ = closing.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)), if sampler.pending() => {
                    let due = sampler.tick();
                    let _ = write_with_retry(&*store, due, &config, &metrics, &mut stats).await;
                }
            }
            continue;
        }
        let (dir2, max) = (dir.clone(), config.max_spans);
        let read =
            tokio::task::spawn_blocking(move || crate::wal::read_batch(&dir2, cursor, head, max))
                .await;
        let (spans, next, bytes) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // A record that does not decode can never be written; skip past it loudly.
                tracing::error!(error = %e, ?cursor, "unreadable durable queue record; stopping the drain");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "durable queue read task failed");
                break;
            }
        };
        let n = spans.len() as u64;
        let batch: Arc<[Span]> = sampler.offer(spans).into();
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let result = if batch.is_empty() {
                Ok(())
            } else {
                store.write(Arc::clone(&batch)).await
            };
            metrics
                .write_duration
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    metrics.written.inc_by(batch.len() as u64);
                    metrics.batch_spans.observe(batch.len() as f64);
                    stats.written += batch.len() as u64;
                    break;
                }
                Err(e) if e.is_transient() => {
                    // Acknowledged spans are retried until the store takes them; shutdown
                    // leaves them in the log for the next start.
                    metrics.write_errors.inc();
                    attempt += 1;
                    let delay = backoff(retry, attempt, DURABLE_RETRY_CAP);
                    tracing::warn!(error = %e, spans = n, attempt, ?delay, "store unavailable; acknowledged spans stay queued");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    metrics.write_errors.inc();
                    metrics.drop_spans("store_rejected", batch.len());
                    stats.failed += batch.len() as u64;
                    tracing::error!(error = %e, spans = batch.len(), "store rejected acknowledged spans; they are dropped and counted");
                    break;
                }
            }
        }
        if let Err(e) = crate::wal::checkpoint(&wal, next, bytes, n) {
            tracing::error!(error = %e, "cannot advance the durable queue checkpoint; spans may be written twice");
        }
        metrics
            .wal_bytes
            .set(i64::try_from(wal.pending_bytes()).unwrap_or(i64::MAX));
        cursor = next;
    }
    let rest = sampler.flush();
    if !rest.is_empty() {
        let _ = write_with_retry(&*store, rest, &config, &metrics, &mut stats).await;
    }
    stats
}

/// Exponential backoff from `base` (attempt 1) with up to 50% jitter, so many collectors do
/// not retry in lockstep; the exponential part stops growing at `cap`, and after 10
/// doublings.
fn backoff(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let exp = datatracing_core::exponential_backoff(base, attempt.min(11), cap);
    let jitter_range = (exp.as_nanos() / 2).max(1);
    let jitter = (Timestamp::now().unix_nanos().unsigned_abs() as u128) % jitter_range;
    exp + Duration::from_nanos(u64::try_from(jitter).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let base = Duration::from_millis(100);
        let b1 = backoff(base, 1, Duration::MAX);
        let b3 = backoff(base, 3, Duration::MAX);
        assert!(b1 >= base && b1 < base * 3 / 2 + Duration::from_nanos(1));
        assert!(b3 >= base * 4 && b3 <= base * 6);
        assert!(backoff(base, 40, Duration::MAX) <= base * 1024 * 3 / 2);
        assert!(backoff(base, 40, DURABLE_RETRY_CAP) <= DURABLE_RETRY_CAP * 3 / 2);
    }
}
