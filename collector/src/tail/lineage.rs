//! Lineage: links seen between traces, and the traces awaited because a linked trace was
//! kept with `keep_linked`.
//!
//! An awaited trace is kept when it is decided or when its spans arrive. Its spans may
//! never come (the link points at a trace another collector holds, or one that was never
//! exported), so awaiting is bounded twice: an id is forgotten `lineage_timeout` after it
//! was first awaited, and at most `decision_cache_size` ids are awaited (the oldest are
//! forgotten first). Both are counted in `datatracing_sampling_lineage_forgotten`.

use std::collections::{HashMap, HashSet, VecDeque};

use datatracing_core::{LinkType, Span, TraceId};

use super::metrics::{ReasonLabel, SamplingMetrics};

pub(super) struct Lineage {
    /// Links seen between traces (both directions).
    links: HashMap<TraceId, HashSet<TraceId>>,
    /// Keys of `links` in the order they were added, to forget the oldest first.
    link_order: VecDeque<TraceId>,
    /// Awaited ids and when each was first awaited (nanoseconds).
    awaited: HashMap<TraceId, i64>,
    /// Awaited ids by age; entries of ids no longer awaited (or awaited again since) are
    /// skipped when they reach the front.
    order: VecDeque<(i64, TraceId)>,
    cap: usize,
    ttl_ns: i64,
    metrics: SamplingMetrics,
}

impl Lineage {
    pub(super) fn new(cap: usize, ttl_ns: i64, metrics: SamplingMetrics) -> Self {
        Self {
            links: HashMap::new(),
            link_order: VecDeque::new(),
            awaited: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            ttl_ns,
            metrics,
        }
    }

    /// Records the cross-trace links of a span that lineage follows; returns the linked
    /// traces this span linked to for the first time (their owners may need telling).
    pub(super) fn note_links(&mut self, span: &Span) -> Vec<TraceId> {
        let mut new = Vec::new();
        for l in &span.links {
            if l.trace_id != span.trace_id
                && matches!(
                    l.link_type,
                    LinkType::FollowsFrom | LinkType::DataDependency
                )
                && self.link_pair(span.trace_id, l.trace_id)
            {
                new.push(l.trace_id);
            }
        }
        new
    }

    /// Records a link between two traces (both directions); whether it is new.
    pub(super) fn link_pair(&mut self, a: TraceId, b: TraceId) -> bool {
        let new = self.link(a, b);
        self.link(b, a);
        // Bound the link map like the caches: the traces first linked longest ago go.
        while self.links.len() > self.cap.saturating_mul(2) {
            let Some(old) = self.link_order.pop_front() else {
                break;
            };
            self.links.remove(&old);
        }
        new
    }

    fn link(&mut self, from: TraceId, to: TraceId) -> bool {
        let order = &mut self.link_order;
        self.links
            .entry(from)
            .or_insert_with(|| {
                order.push_back(from);
                HashSet::new()
            })
            .insert(to)
    }

    /// Traces linked to `t` either way.
    pub(super) fn linked(&self, t: &TraceId) -> impl Iterator<Item = &TraceId> {
        self.links.get(t).into_iter().flatten()
    }

    /// Whether `t` is awaited for lineage.
    pub(super) fn is_awaited(&self, t: &TraceId) -> bool {
        self.awaited.contains_key(t)
    }

    /// Awaits `t` from `now` (an id already awaited keeps its first time).
    pub(super) fn await_trace(&mut self, t: TraceId, now: i64) {
        if self.awaited.contains_key(&t) {
            return;
        }
        self.awaited.insert(t, now);
        self.order.push_back((now, t));
        while self.awaited.len() > self.cap {
            let Some((since, old)) = self.order.pop_front() else {
                break;
            };
            if self.awaited.get(&old) == Some(&since) {
                self.awaited.remove(&old);
                self.forgotten("capacity");
            }
        }
        // Entries of ids decided since then pile up in `order`; rebuild it when they
        // outnumber the live ones so it stays bounded too.
        if self.order.len() > self.cap.saturating_mul(2).max(64) {
            let mut live: Vec<(i64, TraceId)> =
                self.awaited.iter().map(|(t, since)| (*since, *t)).collect();
            live.sort_unstable();
            self.order = live.into();
        }
        self.update_gauge();
    }

    /// Stops awaiting `t` (it was decided).
    pub(super) fn resolved(&mut self, t: &TraceId) {
        if self.awaited.remove(t).is_some() {
            self.update_gauge();
        }
    }

    /// Forgets ids awaited for longer than the timeout.
    pub(super) fn expire(&mut self, now: i64) {
        while let Some(&(since, t)) = self.order.front() {
            if now - since < self.ttl_ns {
                break;
            }
            self.order.pop_front();
            if self.awaited.get(&t) == Some(&since) {
                self.awaited.remove(&t);
                self.forgotten("expired");
            }
        }
        self.update_gauge();
    }

    fn forgotten(&self, reason: &'static str) {
        self.metrics
            .lineage_forgotten
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    fn update_gauge(&self) {
        self.metrics
            .lineage_pending
            .set(i64::try_from(self.awaited.len()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> TraceId {
        TraceId::from_bytes(n.to_be_bytes())
    }

    #[test]
    fn awaiting_is_bounded_by_count_and_time() {
        let mut l = Lineage::new(3, 100, SamplingMetrics::default());
        for n in 1..=5 {
            l.await_trace(id(n), n as i64);
        }
        assert_eq!(l.awaited.len(), 3, "capacity keeps the newest");
        assert!(!l.is_awaited(&id(2)) && l.is_awaited(&id(3)) && l.is_awaited(&id(5)));
        l.resolved(&id(4));
        l.expire(103);
        assert!(!l.is_awaited(&id(3)), "awaited since 3, expired at 103");
        assert!(l.is_awaited(&id(5)));
        l.expire(105);
        assert!(l.awaited.is_empty() && l.order.is_empty());
        // Churn (await then resolve) does not grow the age queue without bound.
        for n in 0..10_000u128 {
            l.await_trace(id(n), 200);
            l.resolved(&id(n));
        }
        assert!(l.order.len() <= 64 + 1);
    }
}
