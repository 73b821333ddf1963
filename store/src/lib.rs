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
pub mod lineage;

use std::sync::Arc;

use async_trait::async_trait;
use datatracing_core::{
    Link, Operation, SearchPage, Span, SpanCursor, SpanId, Tenant, TimeWindow, TraceId, TraceQuery,
    TraceSummary,
};

pub use error::{Error, Result};
pub use lineage::{
    CrossLink, Direction, Lineage, LineageDataset, LineageLimits, LineageNode, lineage,
};

/// The links of one span that point into other traces (links within its own trace are
/// edges of its DAG, not lineage), as the stores index them.
pub fn cross_links<'a>(
    trace_id: TraceId,
    span_id: SpanId,
    links: &'a [Link],
) -> impl Iterator<Item = CrossLink> + 'a {
    links
        .iter()
        .filter(move |l| l.trace_id != trace_id)
        .map(move |l| CrossLink {
            from_trace: trace_id,
            from_span: span_id,
            to_trace: l.trace_id,
            to_span: l.span_id,
            link_type: l.link_type,
            dataset: link_dataset(l),
        })
}

/// The dataset a link names (its [`LINK_DATASET`](datatracing_core::conventions::LINK_DATASET)
/// attribute), when it is a non-empty string.
pub fn link_dataset(link: &Link) -> Option<String> {
    match link
        .attributes
        .get(datatracing_core::conventions::LINK_DATASET)
    {
        Some(datatracing_core::AttributeValue::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

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

/// [`TraceReader::get_traces_capped`] as a loop of capped reads: the definition of its
/// result, and what a backend falls back to when one batched read would exceed the budget.
pub async fn read_traces_one_by_one<R: TraceReader + ?Sized>(
    reader: &R,
    traces: &[TraceId],
    max_spans: usize,
) -> Result<Vec<(TraceId, CappedTrace)>> {
    let mut budget = max_spans;
    let mut out = Vec::new();
    for &id in traces {
        if budget == 0 {
            break;
        }
        if out.iter().any(|(t, _)| *t == id) {
            continue;
        }
        if let Some(t) = reader.get_trace_capped(id, budget).await? {
            budget -= t.spans.len();
            out.push((id, t));
        }
    }
    Ok(out)
}

/// Splits spans read for several traces in one go (at most `max_spans` of them, grouped by
/// trace in any order, each trace's spans in [`TraceReader::get_trace`] order) into the
/// answer of [`TraceReader::get_traces_capped`]: since everything fit the budget, no trace
/// is cut. A backend calls this only when its batched read returned `max_spans` spans or
/// fewer.
pub fn traces_in_asked_order(traces: &[TraceId], spans: Vec<Span>) -> Vec<(TraceId, CappedTrace)> {
    let mut by_trace: std::collections::HashMap<TraceId, Vec<Span>> =
        std::collections::HashMap::new();
    for s in spans {
        by_trace.entry(s.trace_id).or_default().push(s);
    }
    traces
        .iter()
        .filter_map(|id| {
            by_trace.remove(id).map(|spans| {
                (
                    *id,
                    CappedTrace {
                        spans,
                        truncated: false,
                    },
                )
            })
        })
        .collect()
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

    /// How long the store keeps a span, counted from its start, when the store itself
    /// enforces it and knows it; `None` otherwise. The collector refuses spans already older
    /// than this (they would be deleted without ever being read).
    fn retention(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The read side: what the query service asks.
///
/// A reader handle is bound to one tenant (ADR 0010): every method answers from the spans
/// stored for that tenant only (the tenant is part of a span's identity, so the same trace
/// id under two tenants is two traces, and a trace of another tenant is answered exactly as
/// an unknown one). A backend opens its handle for the default tenant; the query service
/// asks for the caller's with [`TraceReader::for_tenant`] on every request.
#[async_trait]
pub trait TraceReader: Health {
    /// The same store seen by `tenant` only. Cheap (no I/O): called once per request.
    fn for_tenant(&self, tenant: &Tenant) -> Arc<dyn TraceReader>;

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

    /// Several whole traces for one answer (Jaeger's search and multi-id lookup), with a
    /// budget of `max_spans` spans shared by all of them: each of `traces` in the order
    /// given, read as [`TraceReader::get_trace_capped`] with what is left of the budget, and
    /// none once the budget is spent. Unknown traces are absent, a trace asked twice is
    /// answered once. The result equals that
    /// loop, which is the default; backends override it to read everything in one round
    /// trip when it fits the budget.
    async fn get_traces_capped(
        &self,
        traces: &[TraceId],
        max_spans: usize,
    ) -> Result<Vec<(TraceId, CappedTrace)>> {
        read_traces_one_by_one(self, traces, max_spans).await
    }

    /// One page of a trace's distinct spans in the order of [`TraceReader::get_trace`]
    /// (start time, then span id): at most `limit`, the first ones after `after` (the last
    /// span of the previous page; `None` for the first page). Empty when the trace is unknown
    /// or nothing follows. Reads at most `limit` spans, so any trace can be read whole in
    /// bounded pieces; a span stored between pages shows up on a later page only if it sorts
    /// after the cursor.
    async fn trace_spans(
        &self,
        trace_id: TraceId,
        after: Option<SpanCursor>,
        limit: usize,
    ) -> Result<Vec<Span>>;

    /// One page of trace summaries matching a validated query, with the semantics
    /// documented on [`TraceQuery`]: at most `limit` traces, and a cursor for the next page
    /// unless this is the last one. Continuing from a cursor reads the snapshot the cursor
    /// pins, so spans stored after the first page never duplicate or displace traces.
    async fn search(&self, query: &TraceQuery) -> Result<SearchPage>;

    /// The trace ids of the page [`TraceReader::search`] answers, in its order, for callers
    /// that read the traces themselves (Jaeger's search): backends skip the summaries where
    /// they cost a read of their own. May name a trace whose spans were purged meanwhile.
    async fn search_ids(&self, query: &TraceQuery) -> Result<Vec<TraceId>> {
        Ok(self
            .search(query)
            .await?
            .traces
            .into_iter()
            .map(|t| t.trace_id)
            .collect())
    }

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

    /// Summaries of those of `traces` that have stored spans, in any order (one batched
    /// read, not one per trace where the backend can avoid it).
    async fn summaries(&self, traces: &[TraceId]) -> Result<Vec<TraceSummary>>;

    /// The links to other traces that spans of `traces` declare (see [`cross_links`]), each
    /// stored link once, at most `limit` (which ones when there are more is unspecified).
    async fn links_from(&self, traces: &[TraceId], limit: usize) -> Result<Vec<CrossLink>>;

    /// The links from spans of other traces to spans of `traces`, read from the backend's
    /// reverse-link index (kept on write, purged with the spans that declared them), each
    /// stored link once, at most `limit`.
    async fn links_to(&self, traces: &[TraceId], limit: usize) -> Result<Vec<CrossLink>>;
}
