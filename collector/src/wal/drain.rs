//! Draining the log: a reader task hands the writer batches read from the checkpoint on,
//! and a checkpoint thread advances the checkpoint once the writer has stored them.
//!
//! Reading (file I/O and decoding) runs on the blocking pool, and checkpointing (a file
//! write, an fsync, a rename and segment deletions) on a thread of its own, so neither
//! holds up the async workers that serve requests. Checkpoints that queue up while one is
//! written are merged into one.

use std::sync::mpsc as std_mpsc;

use datatracing_core::Span;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Pos, Wal, checkpoint, read_batch};

use crate::metrics::CollectorMetrics;

/// Where the checkpoint moves once a batch is stored, and what that releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) pos: Pos,
    pub(crate) bytes: u64,
    pub(crate) spans: u64,
}

/// The writer's side of the drain.
pub(crate) struct Drain {
    batches: mpsc::Receiver<(Vec<Span>, Checkpoint)>,
    checkpoints: Option<std_mpsc::Sender<Checkpoint>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain").finish_non_exhaustive()
    }
}

impl Drain {
    /// Starts reading at `from` in batches of at most `max_spans`. Once `closing` fires the
    /// reader stops at the end of what is logged.
    pub(crate) fn start(
        wal: Wal,
        from: Pos,
        max_spans: usize,
        metrics: CollectorMetrics,
        closing: CancellationToken,
    ) -> std::io::Result<Self> {
        // One batch read ahead while the writer's writes run.
        let (tx, batches) = mpsc::channel(1);
        let (checkpoints, rx) = std_mpsc::channel();
        let w = wal.clone();
        let metrics_read = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("dt-wal-checkpoint".into())
            .spawn(move || checkpoint_loop(w, rx, metrics))?;
        tokio::spawn(read_loop(wal, from, max_spans, tx, closing, metrics_read));
        Ok(Self {
            batches,
            checkpoints: Some(checkpoints),
            thread: Some(thread),
        })
    }

    /// The next batch and where the checkpoint goes once it is stored; `None` when the
    /// reader has stopped.
    pub(crate) async fn next(&mut self) -> Option<(Vec<Span>, Checkpoint)> {
        self.batches.recv().await
    }

    /// Advances the checkpoint (asynchronously; batches must be passed in log order).
    pub(crate) fn checkpoint(&self, c: Checkpoint) {
        if let Some(tx) = &self.checkpoints {
            let _ = tx.send(c);
        }
    }

    /// Waits for the last checkpoint to be written.
    pub(crate) async fn close(mut self) {
        drop(self.checkpoints.take());
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

async fn read_loop(
    wal: Wal,
    mut cursor: Pos,
    max_spans: usize,
    tx: mpsc::Sender<(Vec<Span>, Checkpoint)>,
    closing: CancellationToken,
    metrics: CollectorMetrics,
) {
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
            }
            continue;
        }
        let dir2 = dir.clone();
        let read =
            tokio::task::spawn_blocking(move || read_batch(&dir2, cursor, head, max_spans)).await;
        let super::Batch {
            spans,
            next,
            bytes,
            corrupt,
        } = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // An I/O error (not damage, which is skipped): retry after a pause rather
                // than spin or give up on acknowledged spans.
                tracing::error!(error = %e, ?cursor, "cannot read the durable queue; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = closing.cancelled() => break,
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "durable queue read task failed");
                break;
            }
        };
        for c in &corrupt {
            tracing::error!(
                segment = %c.segment.display(),
                offset = c.offset,
                skipped_bytes = c.skipped,
                reason = %c.reason,
                "corrupt durable queue record skipped; a link to the segment is kept in corrupt/"
            );
            metrics.wal_corrupt_records.inc();
        }
        let c = Checkpoint {
            pos: next,
            bytes,
            spans: spans.len() as u64,
        };
        // A batch of damage only is still sent, empty: the writer checkpoints past it in
        // log order, after the batches before it are stored.
        if tx.send((spans, c)).await.is_err() {
            break;
        }
        cursor = next;
    }
}

fn checkpoint_loop(wal: Wal, rx: std_mpsc::Receiver<Checkpoint>, metrics: CollectorMetrics) {
    while let Ok(mut c) = rx.recv() {
        // Later checkpoints supersede earlier ones; what they release adds up.
        while let Ok(more) = rx.try_recv() {
            c = Checkpoint {
                pos: more.pos.max(c.pos),
                bytes: c.bytes + more.bytes,
                spans: c.spans + more.spans,
            };
        }
        if let Err(e) = checkpoint(&wal, c.pos, c.bytes, c.spans) {
            tracing::error!(error = %e, "cannot advance the durable queue checkpoint; spans may be written twice");
        }
        metrics
            .wal_bytes
            .set(i64::try_from(wal.pending_bytes()).unwrap_or(i64::MAX));
    }
}
