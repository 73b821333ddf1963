//! The per-trace buffer: spans waiting for their trace's decision, with the accounting the
//! budgets (`max_traces`, `max_bytes`) are checked against.

use std::collections::{BTreeSet, HashMap, VecDeque};

use datatracing_core::{Span, TraceId};

/// One trace's buffered spans and the times its decision depends on.
pub(super) struct Buffered {
    pub(super) spans: Vec<Span>,
    pub(super) bytes: usize,
    pub(super) first_ns: i64,
    pub(super) last_ns: i64,
    pub(super) root_ns: Option<i64>,
}

/// When a buffered trace comes due (nanoseconds, from the sampling config).
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    pub(super) wait: i64,
    pub(super) idle: i64,
    pub(super) max_age: i64,
    pub(super) max_spans: usize,
}

/// Buffered traces, in arrival order, with their total spans and bytes.
#[derive(Default)]
pub(super) struct TraceBuffer {
    traces: HashMap<TraceId, Buffered>,
    /// First-arrival order; entries of traces already decided are skipped and trimmed.
    arrival: VecDeque<(i64, TraceId)>,
    bytes: usize,
    spans: usize,
}

impl TraceBuffer {
    /// Adds a span that arrived at `now`.
    pub(super) fn push(&mut self, span: Span, now: i64) {
        let t = span.trace_id;
        let size = span.size_bytes();
        let root = span.parent_id.is_none();
        let arrival = &mut self.arrival;
        let b = self.traces.entry(t).or_insert_with(|| {
            arrival.push_back((now, t));
            Buffered {
                spans: Vec::new(),
                bytes: 0,
                first_ns: now,
                last_ns: now,
                root_ns: None,
            }
        });
        b.spans.push(span);
        b.bytes += size;
        b.last_ns = now;
        if root && b.root_ns.is_none() {
            b.root_ns = Some(now);
        }
        self.bytes += size;
        self.spans += 1;
    }

    /// Takes a trace out of the buffer.
    pub(super) fn remove(&mut self, t: &TraceId) -> Option<Buffered> {
        let b = self.traces.remove(t)?;
        self.bytes -= b.bytes;
        self.spans -= b.spans.len();
        Some(b)
    }

    pub(super) fn get(&self, t: &TraceId) -> Option<&Buffered> {
        self.traces.get(t)
    }

    pub(super) fn contains(&self, t: &TraceId) -> bool {
        self.traces.contains_key(t)
    }

    /// Traces whose decision is due at `now`, ordered by first arrival.
    pub(super) fn due(&self, now: i64, timing: Timing) -> BTreeSet<(i64, TraceId)> {
        self.traces
            .iter()
            .filter(|(_, b)| {
                b.root_ns.is_some_and(|r| now - r >= timing.wait)
                    || now - b.last_ns >= timing.idle
                    || now - b.first_ns >= timing.max_age
                    || b.spans.len() >= timing.max_spans
            })
            .map(|(t, b)| (b.first_ns, *t))
            .collect()
    }

    /// The oldest trace by first arrival (possibly already decided: callers check).
    pub(super) fn pop_oldest(&mut self) -> Option<TraceId> {
        self.arrival.pop_front().map(|(_, t)| t)
    }

    /// Drops arrival entries of traces already decided so the queue stays small.
    pub(super) fn trim_arrival(&mut self) {
        while let Some((_, t)) = self.arrival.front() {
            if self.traces.contains_key(t) {
                break;
            }
            self.arrival.pop_front();
        }
    }

    /// Buffered trace ids in arrival order.
    pub(super) fn in_arrival_order(&self) -> Vec<TraceId> {
        self.arrival.iter().map(|(_, t)| *t).collect()
    }

    /// Empties the buffer.
    pub(super) fn clear(&mut self) {
        self.traces.clear();
        self.arrival.clear();
        self.bytes = 0;
        self.spans = 0;
    }

    pub(super) fn len(&self) -> usize {
        self.traces.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn spans(&self) -> usize {
        self.spans
    }
}
