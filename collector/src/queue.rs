//! The bounded queue between receiving and writing, measured in spans and in bytes.
//!
//! Capacity is reserved with semaphores before a request's spans enter the channel and
//! released when the writer is done with them, so the channel itself needs no bound and a
//! full queue is detected without waiting.

use std::sync::Arc;

use datatracing_core::Span;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::metrics::CollectorMetrics;
use datatracing_config::{QueueConfig, QueueMode};

/// Outcome of writing a queued request's spans, sent back to the waiting request.
pub type WriteOutcome = Result<(), WriteFailure>;

/// Why queued spans were not written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFailure {
    /// A message safe to log (never sent to clients verbatim).
    pub message: String,
    /// Whether the store may take the same spans later (the client should retry), as opposed
    /// to having refused them for good (a retry would fail the same way, forever).
    pub transient: bool,
}

/// Why spans could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// No room now; the client should retry later.
    #[error("queue full")]
    Full,
    /// The collector is shutting down.
    #[error("collector is shutting down")]
    Closed,
}

/// Capacity held by queued spans; released (and gauges updated) when dropped.
#[derive(Debug)]
struct Reservation {
    _spans: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    n_spans: i64,
    n_bytes: i64,
    metrics: CollectorMetrics,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.metrics.queue_spans.dec_by(self.n_spans);
        self.metrics.queue_bytes.dec_by(self.n_bytes);
    }
}

/// One request's spans in the queue.
#[derive(Debug)]
pub struct QueueItem {
    /// The spans.
    pub spans: Vec<Span>,
    /// Where the writer reports the outcome.
    pub ack: oneshot::Sender<WriteOutcome>,
    reservation: Reservation,
}

impl QueueItem {
    /// Releases the queue capacity early (once the spans have been moved out).
    pub fn release(self) -> oneshot::Sender<WriteOutcome> {
        drop(self.reservation);
        self.ack
    }
}

/// The sending side, shared by all receivers (protocol handlers).
#[derive(Clone, Debug)]
pub struct SpanQueue {
    tx: mpsc::UnboundedSender<QueueItem>,
    spans: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    mode: QueueMode,
    block_timeout: std::time::Duration,
    metrics: CollectorMetrics,
}

impl SpanQueue {
    /// A queue and its receiving side (for the writer).
    pub fn new(
        config: &QueueConfig,
        metrics: CollectorMetrics,
    ) -> (Self, mpsc::UnboundedReceiver<QueueItem>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                tx,
                spans: Arc::new(Semaphore::new(config.max_spans)),
                bytes: Arc::new(Semaphore::new(config.max_bytes)),
                max_bytes: config.max_bytes,
                mode: config.mode,
                block_timeout: config.block_timeout.get(),
                metrics,
            },
            rx,
        )
    }

    /// Queues spans without waiting; the receiver resolves once they are written (or not).
    pub fn try_enqueue(
        &self,
        spans: Vec<Span>,
    ) -> Result<oneshot::Receiver<WriteOutcome>, EnqueueError> {
        let (n_spans, bytes_u32) = self.sizes(&spans)?;
        let span_permit = Arc::clone(&self.spans)
            .try_acquire_many_owned(n_spans)
            .map_err(|_| EnqueueError::Full)?;
        let byte_permit = Arc::clone(&self.bytes)
            .try_acquire_many_owned(bytes_u32)
            .map_err(|_| EnqueueError::Full)?;
        self.push(spans, n_spans, bytes_u32, span_permit, byte_permit)
    }

    /// Queues spans following the configured mode: at once or refused (`reject`), or after
    /// waiting up to `block_timeout` for room (`block`).
    pub async fn enqueue(
        &self,
        spans: Vec<Span>,
    ) -> Result<oneshot::Receiver<WriteOutcome>, EnqueueError> {
        if self.mode == QueueMode::Reject {
            return self.try_enqueue(spans);
        }
        let (n_spans, bytes_u32) = self.sizes(&spans)?;
        let wait = async {
            let s = Arc::clone(&self.spans).acquire_many_owned(n_spans).await;
            let b = Arc::clone(&self.bytes).acquire_many_owned(bytes_u32).await;
            (s, b)
        };
        match tokio::time::timeout(self.block_timeout, wait).await {
            Ok((Ok(s), Ok(b))) => self.push(spans, n_spans, bytes_u32, s, b),
            Ok(_) => Err(EnqueueError::Closed),
            Err(_) => Err(EnqueueError::Full),
        }
    }

    fn sizes(&self, spans: &[Span]) -> Result<(u32, u32), EnqueueError> {
        if self.tx.is_closed() {
            return Err(EnqueueError::Closed);
        }
        let n_spans = u32::try_from(spans.len()).map_err(|_| EnqueueError::Full)?;
        let n_bytes = spans
            .iter()
            .map(Span::size_bytes)
            .sum::<usize>()
            .min(self.max_bytes);
        let bytes_u32 = u32::try_from(n_bytes).map_err(|_| EnqueueError::Full)?;
        Ok((n_spans, bytes_u32))
    }

    fn push(
        &self,
        spans: Vec<Span>,
        n_spans: u32,
        bytes_u32: u32,
        span_permit: OwnedSemaphorePermit,
        byte_permit: OwnedSemaphorePermit,
    ) -> Result<oneshot::Receiver<WriteOutcome>, EnqueueError> {
        self.metrics.queue_spans.inc_by(i64::from(n_spans));
        self.metrics.queue_bytes.inc_by(i64::from(bytes_u32));
        let (ack, rx) = oneshot::channel();
        let item = QueueItem {
            spans,
            ack,
            reservation: Reservation {
                _spans: span_permit,
                _bytes: byte_permit,
                n_spans: i64::from(n_spans),
                n_bytes: i64::from(bytes_u32),
                metrics: self.metrics.clone(),
            },
        };
        self.tx.send(item).map_err(|_| EnqueueError::Closed)?;
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datatracing_core::{Timestamp, TraceId};
    use prometheus_client::registry::Registry;

    fn spans(n: usize) -> Vec<Span> {
        // The storage contract's span builder; one trace, ids 1..=n.
        (0..n as u64)
            .map(|i| {
                datatracing_store_contract::simple_span(
                    TraceId::from_bytes([1; 16]),
                    i,
                    None,
                    "s",
                    Timestamp::from_unix_nanos(1),
                    1,
                )
            })
            .collect()
    }

    #[test]
    fn full_queue_refuses_and_frees_on_release() {
        let metrics = CollectorMetrics::register(&mut Registry::default(), &Default::default());
        let (q, mut rx) = SpanQueue::new(
            &QueueConfig {
                max_spans: 10,
                max_bytes: 1 << 20,
                ..QueueConfig::default()
            },
            metrics.clone(),
        );
        let _a = q.try_enqueue(spans(6)).unwrap();
        assert_eq!(q.try_enqueue(spans(5)).unwrap_err(), EnqueueError::Full);
        assert_eq!(metrics.queue_spans.get(), 6);
        let item = rx.try_recv().unwrap();
        let _ack = item.release();
        assert_eq!(metrics.queue_spans.get(), 0);
        assert_eq!(metrics.queue_bytes.get(), 0);
        assert!(q.try_enqueue(spans(10)).is_ok());
        rx.close();
        assert_eq!(q.try_enqueue(spans(1)).unwrap_err(), EnqueueError::Closed);
    }

    #[tokio::test]
    async fn block_mode_waits_for_room_then_gives_up() {
        let metrics = CollectorMetrics::register(&mut Registry::default(), &Default::default());
        let (q, mut rx) = SpanQueue::new(
            &QueueConfig {
                max_spans: 2,
                mode: QueueMode::Block,
                block_timeout: datatracing_core::ConfigDuration::from_millis(200),
                ..QueueConfig::default()
            },
            metrics,
        );
        let _first = q.enqueue(spans(2)).await.unwrap();
        assert_eq!(
            q.enqueue(spans(1)).await.unwrap_err(),
            EnqueueError::Full,
            "times out"
        );
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.enqueue(spans(1)).await.is_ok() })
        };
        // Room appears while the request waits: it gets in.
        let item = rx.recv().await.unwrap();
        drop(item.release());
        assert!(waiting.await.unwrap());
    }

    #[test]
    fn byte_budget_is_enforced() {
        let metrics = CollectorMetrics::register(&mut Registry::default(), &Default::default());
        let one = spans(1)[0].size_bytes();
        let (q, _rx) = SpanQueue::new(
            &QueueConfig {
                max_spans: 1000,
                max_bytes: one * 3,
                ..QueueConfig::default()
            },
            metrics,
        );
        assert!(q.try_enqueue(spans(3)).is_ok());
        assert_eq!(q.try_enqueue(spans(1)).unwrap_err(), EnqueueError::Full);
    }
}
