//! The storage contract every backend implements, independent of any database.
//!
//! Writing and reading are separate traits, so each process holds only the side it needs:
//! the collector a [`TraceWriter`], the query service a [`TraceReader`]. A backend may
//! implement both on one value (the embedded store, which shares one SQLite database) or on
//! separate values (ClickHouse, whose reader opens without migrating or batching). Both
//! extend [`Health`], which readiness probes use.
//!
//! Errors are backend-neutral ([`Error`]): each says whether retrying may help
//! ([`Error::is_transient`]), so callers never have to know which database answered.
//! Backends live in their own crates (`datatracing-store-sqlite`,
//! `datatracing-store-clickhouse`) and prove themselves against the shared contract suite
//! (`datatracing-store-contract`, a dev-dependency only).

mod error;

use std::sync::Arc;

use async_trait::async_trait;
use datatracing_core::{Operation, SearchPage, Span, TimeWindow, TraceId, TraceQuery};

pub use error::{Error, Result};

/// A trace read with a span limit.
#[derive(Clone, Debug, PartialEq)]
pub struct CappedTrace {
    /// The first spans, by start time then span id.
    pub spans: Vec<Span>,
    /// Whether the trace has spans beyond these.
    pub truncated: bool,
}

impl CappedTrace {
    /// Cuts spans read with a limit of `max_spans + 1` down to `max_spans`.
    pub fn from_overfetch(mut spans: Vec<Span>, max_spans: usize) -> Option<Self> {
        if spans.is_empty() {
            return None;
        }
        let truncated = spans.len() > max_spans;
        spans.truncate(max_spans);
        Some(Self { spans, truncated })
    }
}

/// What every storage handle answers, whichever side it serves.
#[async_trait]
pub trait Health: Send + Sync + std::fmt::Debug + 'static {
    /// A short backend name for logs and metrics (`embedded`, `clickhouse`).
    fn backend(&self) -> &'static str;

    /// Cheap check that the backend answers, for readiness probes.
    async fn health(&self) -> Result<()>;
}

/// The write side: where the collector puts spans.
#[async_trait]
pub trait TraceWriter: Health {
    /// Writes a batch. Returns only once the spans are durable to the backend's own
    /// standard (for the embedded store, committed to its write-ahead log); callers
    /// acknowledge clients after that. Writing a span that is already stored (same trace and
    /// span id) must not make it appear twice in [`TraceReader::search`] counts. The batch
    /// is shared (`Arc`) so callers can retry without copying spans.
    async fn write(&self, spans: Arc<[Span]>) -> Result<()>;

    /// Flushes and releases resources; later writes fail with [`Error::Closed`].
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// The read side: what the query service asks.
#[async_trait]
pub trait TraceReader: Health {
    /// All stored spans of a trace, ordered by start time then span id; `None` if unknown.
    async fn get_trace(&self, trace_id: TraceId) -> Result<Option<Vec<Span>>>;

    /// At most `max_spans` distinct spans of a trace, the first by start time then span id,
    /// and whether the trace has more; `None` if unknown. Reads no more than one span past
    /// the limit, so a huge trace costs bounded memory.
    async fn get_trace_capped(
        &self,
        trace_id: TraceId,
        max_spans: usize,
    ) -> Result<Option<CappedTrace>>;

    /// One page of trace summaries matching a validated query, with the semantics
    /// documented on [`TraceQuery`]: at most `limit` traces, and a cursor for the next page
    /// unless this is the last one. Continuing from a cursor reads the snapshot the cursor
    /// pins, so spans stored after the first page never duplicate or displace traces.
    async fn search(&self, query: &TraceQuery) -> Result<SearchPage>;

    /// Services with spans in the window, sorted, at most `limit`. Served from an index of
    /// names kept at one-hour resolution, not from the spans: a service is listed when the
    /// first and last span it had within some hour bracket a point of the window.
    async fn services(&self, window: &TimeWindow, limit: usize) -> Result<Vec<String>>;

    /// The operations of a service with spans in the window, each with its span kind,
    /// sorted by name then kind (in `SpanKind` declaration order), at most `limit`; same
    /// index and resolution as
    /// [`TraceReader::services`].
    async fn operations(
        &self,
        service: &str,
        window: &TimeWindow,
        limit: usize,
    ) -> Result<Vec<Operation>>;
}
