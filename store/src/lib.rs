//! The storage contract (`TraceStore`) and the embedded default store.
//!
//! Every backend implements [`TraceStore`] and must pass the [`contract`] suite, which is
//! written once and instantiated per backend with [`trace_store_contract!`].

mod embedded;
mod error;

pub mod contract;

use std::sync::Arc;

use async_trait::async_trait;
use datatracing_core::{Span, TraceId, TraceQuery, TraceSummary};

pub use embedded::{EmbeddedConfig, EmbeddedStore, OpenMode, Synchronous};
pub use error::{Error, Result};

/// A place spans are written to and read from.
///
/// `write` returns only once the spans are durable to the backend's own standard: for the
/// embedded store, committed to its write-ahead log. Callers acknowledge clients after that.
#[async_trait]
pub trait TraceStore: Send + Sync + std::fmt::Debug + 'static {
    /// A short backend name for logs and metrics (`embedded`, `clickhouse`).
    fn backend(&self) -> &'static str;

    /// Writes a batch. Writing a span that is already stored (same trace and span id) must
    /// not make it appear twice in [`TraceStore::search`] counts. The batch is shared (`Arc`)
    /// so callers can retry without copying spans.
    async fn write(&self, spans: Arc<[Span]>) -> Result<()>;

    /// All stored spans of a trace, ordered by start time then span id; `None` if unknown.
    async fn get_trace(&self, trace_id: TraceId) -> Result<Option<Vec<Span>>>;

    /// Trace summaries matching a validated query, with the semantics documented on
    /// [`TraceQuery`].
    async fn search(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>>;

    /// Cheap check that the backend answers, for readiness probes.
    async fn health(&self) -> Result<()>;

    /// Flushes and releases resources; later writes fail with [`Error::Closed`].
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
