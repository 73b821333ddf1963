//! The sampling stage: decides which queued spans are written.
//!
//! [`PassThrough`] keeps everything; [`crate::tail::TailSampler`] applies a sampling policy.

use datatracing_core::Span;

use crate::route::lineage::PeerMessage;

/// Decides which spans of a batch to keep. Implementations may buffer spans across calls
/// (tail sampling) and release them later; `flush` hands back whatever is still held.
pub trait Sampler: Send + 'static {
    /// Takes a batch and returns the spans to write now.
    fn offer(&mut self, spans: Vec<Span>) -> Vec<Span>;

    /// Called periodically without new spans: returns spans whose decision came due.
    fn tick(&mut self) -> Vec<Span> {
        Vec::new()
    }

    /// Returns every span still held (called at shutdown).
    fn flush(&mut self) -> Vec<Span> {
        Vec::new()
    }

    /// Lineage messages from other replicas; returns spans they released.
    fn peer(&mut self, _msgs: Vec<PeerMessage>) -> Vec<Span> {
        Vec::new()
    }

    /// Takes out the buffered traces this replica no longer owns (the members changed).
    fn take_unowned(&mut self) -> Vec<Span> {
        Vec::new()
    }

    /// Whether spans are held (so the writer keeps ticking).
    fn pending(&self) -> bool {
        false
    }
}

/// Keeps every span.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl Sampler for PassThrough {
    fn offer(&mut self, spans: Vec<Span>) -> Vec<Span> {
        spans
    }
}
