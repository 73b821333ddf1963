//! Trace DAG reconstruction: spans as nodes, parent-child relations and links as typed edges.
//!
//! Input comes from storage and may be messy: duplicated spans (retried writes), missing
//! parents (a service that never reported), parent cycles (buggy instrumentation) and links
//! into other traces. Reconstruction never loops, never drops a span, and reports each of
//! these explicitly. Output order is deterministic: spans by start time then span id, edges
//! and lists likewise, so two stores holding the same spans return byte-identical DAGs.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::ids::{SpanId, TraceId};
use crate::query::{SummaryBuilder, TraceSummary};
use crate::span::{LinkType, Span};

/// The type of a DAG edge.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EdgeType {
    /// From a span's `parent_id` to the span.
    ParentChild,
    /// A link of type CHILD_OF.
    ChildOf,
    /// A link of type FOLLOWS_FROM.
    FollowsFrom,
    /// A link of type DATA_DEPENDENCY.
    DataDependency,
}

impl From<LinkType> for EdgeType {
    fn from(t: LinkType) -> Self {
        match t {
            LinkType::ChildOf => EdgeType::ChildOf,
            LinkType::FollowsFrom => EdgeType::FollowsFrom,
            LinkType::DataDependency => EdgeType::DataDependency,
        }
    }
}

/// A typed edge between two spans of the same trace. Edges point downstream: `from` is the
/// parent or the linked (upstream) span, `to` is the child or the span that declared the link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DagEdge {
    /// Upstream span.
    pub from: SpanId,
    /// Downstream span.
    pub to: SpanId,
    /// Relation.
    #[serde(rename = "type")]
    pub edge_type: EdgeType,
}

/// A link from a span of this trace to a span of another trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct CrossTraceLink {
    /// The span (in this trace) that declared the link.
    pub span_id: SpanId,
    /// The trace the link points into.
    pub target_trace_id: TraceId,
    /// The span the link points to.
    pub target_span_id: SpanId,
    /// Relation.
    #[serde(rename = "type")]
    pub link_type: LinkType,
}

/// A link to a span of this same trace that is not (yet) stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct UnresolvedLink {
    /// The span that declared the link.
    pub span_id: SpanId,
    /// The missing target span.
    pub target_span_id: SpanId,
    /// Relation.
    #[serde(rename = "type")]
    pub link_type: LinkType,
}

/// A reconstructed trace.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TraceDag {
    /// The trace.
    pub trace_id: TraceId,
    /// Trace-level figures.
    pub summary: TraceSummary,
    /// Unique spans ordered by start time, then span id.
    pub spans: Vec<Span>,
    /// Parent-child and link edges within the trace.
    pub edges: Vec<DagEdge>,
    /// Spans without a parent.
    pub roots: Vec<SpanId>,
    /// Spans whose parent is not in the trace.
    pub orphans: Vec<SpanId>,
    /// Spans whose parent chain loops back on itself.
    pub cycles: Vec<SpanId>,
    /// Links into other traces, kept with their target.
    pub cross_trace_links: Vec<CrossTraceLink>,
    /// Links to spans of this trace that are not stored.
    pub unresolved_links: Vec<UnresolvedLink>,
    /// How many duplicate copies of a span were dropped (same span id stored twice).
    pub duplicate_spans: usize,
    /// The chain of spans that determined when the trace ended, each waited for by the next;
    /// the last one ends the trace. See [`critical_path`] for the rule (fan-in aware).
    pub critical_path: Vec<SpanId>,
    /// Each span's own time: its duration minus the time its children (by parent id) cover
    /// within it. In span order.
    pub self_times: Vec<SelfTime>,
}

/// Time a span spent outside its children.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct SelfTime {
    /// The span.
    pub span_id: SpanId,
    /// Nanoseconds of its duration not covered by any child.
    pub self_nanos: i64,
}

impl TraceDag {
    /// Builds the DAG from the spans of one trace. Spans of other traces are ignored.
    /// Returns `None` when no span belongs to `trace_id`.
    pub fn build(trace_id: TraceId, spans: impl IntoIterator<Item = Span>) -> Option<TraceDag> {
        let mut spans: Vec<Span> = spans
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        if spans.is_empty() {
            return None;
        }
        spans.sort_by_key(|s| (s.start_time, s.span_id));
        let before = spans.len();
        let mut seen = HashSet::with_capacity(spans.len());
        spans.retain(|s| seen.insert(s.span_id));
        let duplicate_spans = before - spans.len();

        let index: HashMap<SpanId, usize> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id, i))
            .collect();

        let mut edges = Vec::new();
        let mut roots = Vec::new();
        let mut orphans = Vec::new();
        let mut cross_trace_links = Vec::new();
        let mut unresolved_links = Vec::new();
        for s in &spans {
            match s.parent_id {
                None => roots.push(s.span_id),
                Some(p) if index.contains_key(&p) => edges.push(DagEdge {
                    from: p,
                    to: s.span_id,
                    edge_type: EdgeType::ParentChild,
                }),
                Some(_) => orphans.push(s.span_id),
            }
            for l in &s.links {
                if l.trace_id != trace_id {
                    cross_trace_links.push(CrossTraceLink {
                        span_id: s.span_id,
                        target_trace_id: l.trace_id,
                        target_span_id: l.span_id,
                        link_type: l.link_type,
                    });
                } else if index.contains_key(&l.span_id) {
                    edges.push(DagEdge {
                        from: l.span_id,
                        to: s.span_id,
                        edge_type: l.link_type.into(),
                    });
                } else {
                    unresolved_links.push(UnresolvedLink {
                        span_id: s.span_id,
                        target_span_id: l.span_id,
                        link_type: l.link_type,
                    });
                }
            }
        }
        let order = |id: &SpanId| index.get(id).copied().unwrap_or(usize::MAX);
        edges.sort_by_key(|e| (order(&e.to), order(&e.from), e.edge_type));
        edges.dedup();
        let cycles = parent_cycles(&spans, &index);

        let mut summary = SummaryBuilder::default();
        for s in &spans {
            summary.add(
                s.span_id,
                s.parent_id.is_none(),
                &s.service,
                &s.operation,
                s.start_time,
                s.end_time,
                s.status.code,
            );
        }
        let summary = summary.build(trace_id)?;
        let critical_path = critical_path(&spans, &index, &edges);
        let self_times = self_times(&spans, &index);
        Some(TraceDag {
            trace_id,
            summary,
            spans,
            edges,
            roots,
            orphans,
            cycles,
            cross_trace_links,
            unresolved_links,
            duplicate_spans,
            critical_path,
            self_times,
        })
    }
}

/// The critical path: start at the span that ends last (ties: the earliest start, then the
/// smallest id, so an enclosing span wins over its last child) and repeatedly step to the
/// predecessor that ended last, the one the current span waited for longest. A span's
/// predecessors are: a parent that ended before it started (a sequential upstream step);
/// a span linked into it within the trace that ended before it ended (an input; with several
/// inputs, a fan-in, the latest wins); and a child that ended before it ended (nested work).
/// An enclosing parent is not a predecessor. Each span is visited once, so cycles end.
fn critical_path(spans: &[Span], index: &HashMap<SpanId, usize>, edges: &[DagEdge]) -> Vec<SpanId> {
    let Some(last) = (0..spans.len()).max_by(|&a, &b| {
        let (x, y) = (&spans[a], &spans[b]);
        (
            x.end_time,
            std::cmp::Reverse(x.start_time),
            std::cmp::Reverse(x.span_id),
        )
            .cmp(&(
                y.end_time,
                std::cmp::Reverse(y.start_time),
                std::cmp::Reverse(y.span_id),
            ))
    }) else {
        return Vec::new();
    };
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    for e in edges {
        let (Some(&from), Some(&to)) = (index.get(&e.from), index.get(&e.to)) else {
            continue;
        };
        let (f, t) = (&spans[from], &spans[to]);
        match e.edge_type {
            EdgeType::ParentChild => {
                if f.end_time <= t.start_time {
                    preds[to].push(from);
                }
                if t.end_time <= f.end_time {
                    preds[from].push(to);
                }
            }
            _ => {
                if f.end_time <= t.end_time {
                    preds[to].push(from);
                }
            }
        }
    }
    let mut visited = vec![false; spans.len()];
    let mut path = Vec::new();
    let mut cur = Some(last);
    while let Some(i) = cur {
        visited[i] = true;
        path.push(spans[i].span_id);
        cur = preds[i]
            .iter()
            .copied()
            .filter(|&p| !visited[p])
            .max_by(|&a, &b| {
                let (x, y) = (&spans[a], &spans[b]);
                (x.end_time, x.start_time, std::cmp::Reverse(x.span_id)).cmp(&(
                    y.end_time,
                    y.start_time,
                    std::cmp::Reverse(y.span_id),
                ))
            });
    }
    path.reverse();
    path
}

/// Each span's duration minus the union of its children's intervals, clipped to the span.
fn self_times(spans: &[Span], index: &HashMap<SpanId, usize>) -> Vec<SelfTime> {
    let mut children: Vec<Vec<(i64, i64)>> = vec![Vec::new(); spans.len()];
    for s in spans {
        if let Some(&p) = s.parent_id.as_ref().and_then(|p| index.get(p))
            && spans[p].span_id != s.span_id
        {
            children[p].push((s.start_time.unix_nanos(), s.end_time.unix_nanos()));
        }
    }
    spans
        .iter()
        .zip(children)
        .map(|(s, mut kids)| {
            let (start, end) = (s.start_time.unix_nanos(), s.end_time.unix_nanos());
            kids.sort_unstable();
            let mut covered = 0i64;
            let mut reach = start;
            for (a, b) in kids {
                let (a, b) = (a.max(reach), b.min(end));
                if b > a {
                    covered = covered.saturating_add(b - a);
                    reach = b;
                }
            }
            SelfTime {
                span_id: s.span_id,
                self_nanos: end.saturating_sub(start).saturating_sub(covered).max(0),
            }
        })
        .collect()
}

/// Finds spans that lie on a parent cycle, in span order. Each span is visited a bounded
/// number of times (memoised walk), so adversarial input cannot make this quadratic.
fn parent_cycles(spans: &[Span], index: &HashMap<SpanId, usize>) -> Vec<SpanId> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Unvisited,
        OnPath,
        Done,
    }
    let mut state = vec![State::Unvisited; spans.len()];
    let mut in_cycle = vec![false; spans.len()];
    let mut path: Vec<usize> = Vec::new();
    for start in 0..spans.len() {
        if state[start] != State::Unvisited {
            continue;
        }
        let mut cur = Some(start);
        while let Some(i) = cur {
            match state[i] {
                State::Done => break,
                State::OnPath => {
                    if let Some(pos) = path.iter().position(|&p| p == i) {
                        for &member in &path[pos..] {
                            in_cycle[member] = true;
                        }
                    }
                    break;
                }
                State::Unvisited => {
                    state[i] = State::OnPath;
                    path.push(i);
                    cur = spans[i].parent_id.and_then(|p| index.get(&p).copied());
                }
            }
        }
        for &p in &path {
            state[p] = State::Done;
        }
        path.clear();
    }
    spans
        .iter()
        .zip(in_cycle)
        .filter_map(|(s, c)| c.then_some(s.span_id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attributes, Link, SpanKind, Status, StatusCode, Timestamp};

    fn tid(b: u8) -> TraceId {
        TraceId::from_bytes([b; 16])
    }
    fn sid(b: u8) -> SpanId {
        SpanId::from_bytes([b; 8])
    }

    fn span(id: u8, parent: Option<u8>, start: i64) -> Span {
        Span {
            trace_id: tid(1),
            span_id: sid(id),
            parent_id: parent.map(sid),
            service: format!("svc{}", id % 3),
            operation: format!("op{id}"),
            kind: SpanKind::Transform,
            start_time: Timestamp::from_unix_nanos(start),
            end_time: Timestamp::from_unix_nanos(start + 10),
            status: Status::default(),
            attributes: Attributes::new(),
            events: vec![],
            links: vec![],
        }
    }

    fn link(trace: u8, span: u8, t: LinkType) -> Link {
        Link {
            trace_id: tid(trace),
            span_id: sid(span),
            link_type: t,
            attributes: Attributes::new(),
        }
    }

    #[test]
    fn fan_in_and_cross_trace_links() {
        let root = span(1, None, 0);
        let a = span(2, Some(1), 5);
        let b = span(3, Some(1), 5);
        let mut join = span(4, Some(1), 20);
        join.kind = SpanKind::Join;
        join.links = vec![
            link(1, 2, LinkType::DataDependency),
            link(1, 3, LinkType::DataDependency),
        ];
        let mut publish = span(5, Some(4), 40);
        publish.links = vec![
            link(9, 7, LinkType::FollowsFrom),
            link(1, 8, LinkType::ChildOf),
        ];
        publish.status = Status::new(StatusCode::Error);

        let dag = TraceDag::build(tid(1), vec![publish, join, b, a, root]).unwrap();
        let order: Vec<SpanId> = dag.spans.iter().map(|s| s.span_id).collect();
        assert_eq!(order, vec![sid(1), sid(2), sid(3), sid(4), sid(5)]);
        assert_eq!(dag.roots, vec![sid(1)]);
        assert!(dag.orphans.is_empty() && dag.cycles.is_empty());
        let dd: Vec<_> = dag
            .edges
            .iter()
            .filter(|e| e.edge_type == EdgeType::DataDependency)
            .map(|e| (e.from, e.to))
            .collect();
        assert_eq!(dd, vec![(sid(2), sid(4)), (sid(3), sid(4))]);
        assert_eq!(
            dag.edges
                .iter()
                .filter(|e| e.edge_type == EdgeType::ParentChild)
                .count(),
            4
        );
        assert_eq!(
            dag.cross_trace_links,
            vec![CrossTraceLink {
                span_id: sid(5),
                target_trace_id: tid(9),
                target_span_id: sid(7),
                link_type: LinkType::FollowsFrom
            }]
        );
        assert_eq!(dag.unresolved_links.len(), 1);
        assert_eq!(dag.summary.span_count, 5);
        assert_eq!(dag.summary.error_count, 1);
        assert_eq!(dag.summary.duration_nanos, 50);
    }

    #[test]
    fn orphans_duplicates_and_cycles_terminate() {
        // 2 -> 3 -> 4 -> 2 is a cycle; 5 hangs below the cycle; 6 has a missing parent.
        let spans = vec![
            span(2, Some(4), 1),
            span(3, Some(2), 2),
            span(4, Some(3), 3),
            span(5, Some(4), 4),
            span(6, Some(99), 5),
            span(6, Some(99), 5),
        ];
        let dag = TraceDag::build(tid(1), spans).unwrap();
        assert_eq!(dag.cycles, vec![sid(2), sid(3), sid(4)]);
        assert_eq!(dag.orphans, vec![sid(6)]);
        assert!(dag.roots.is_empty());
        assert_eq!(dag.duplicate_spans, 1);
        assert_eq!(dag.spans.len(), 5);
    }

    fn timed(id: u8, parent: Option<u8>, start: i64, end: i64) -> Span {
        let mut s = span(id, parent, start);
        s.end_time = Timestamp::from_unix_nanos(end);
        s
    }

    #[test]
    fn critical_path_follows_the_last_input_of_a_fan_in() {
        for (a_end, b_end, expect) in [(100, 105, sid(3)), (110, 105, sid(2))] {
            let a = timed(2, None, 0, a_end);
            let b = timed(3, None, 5, b_end);
            // The join's parent is ingest a (sequential) and it links both inputs.
            let mut join = timed(4, Some(2), 200, 300);
            join.links = vec![
                link(1, 2, LinkType::DataDependency),
                link(1, 3, LinkType::DataDependency),
            ];
            let publish = timed(5, Some(4), 400, 500);
            let dag = TraceDag::build(tid(1), vec![a, b, join, publish]).unwrap();
            assert_eq!(
                dag.critical_path,
                vec![expect, sid(4), sid(5)],
                "a ends {a_end}"
            );
            // Sequential children lie outside their parent: all time is self time.
            assert!(dag.self_times.iter().all(|t| t.self_nanos > 0));
            assert_eq!(dag.self_times[2].self_nanos, 100);
        }
    }

    #[test]
    fn critical_path_and_self_time_of_nested_spans() {
        let root = timed(1, None, 0, 100);
        let a = timed(2, Some(1), 0, 40);
        let b = timed(3, Some(1), 40, 95);
        let b1 = timed(4, Some(3), 50, 90);
        // Overlaps its sibling: the overlap is not counted twice.
        let b2 = timed(5, Some(3), 60, 92);
        let dag = TraceDag::build(tid(1), vec![root, a, b, b1, b2]).unwrap();
        assert_eq!(
            dag.critical_path,
            vec![sid(5), sid(3), sid(1)],
            "root waited for b (ends last of its children), b for b2"
        );
        let selfs: Vec<i64> = dag.self_times.iter().map(|t| t.self_nanos).collect();
        // root: 100 - (0..95) = 5; a: 40; b: 55 - (50..92) = 13; b1: 40; b2: 32.
        assert_eq!(selfs, vec![5, 40, 13, 40, 32]);

        // A child that outlives its parent is clipped, and the parent is not its predecessor.
        let dag = TraceDag::build(
            tid(1),
            vec![timed(1, None, 0, 100), timed(2, Some(1), 50, 150)],
        )
        .unwrap();
        assert_eq!(dag.self_times[0].self_nanos, 50);
        assert_eq!(dag.critical_path, vec![sid(2)]);
    }

    #[test]
    fn critical_path_terminates_on_cycles() {
        let spans = vec![
            timed(2, Some(4), 1, 2),
            timed(3, Some(2), 2, 3),
            timed(4, Some(3), 3, 4),
        ];
        let dag = TraceDag::build(tid(1), spans).unwrap();
        assert!(!dag.critical_path.is_empty() && dag.critical_path.len() <= 3);
        assert_eq!(dag.critical_path.last(), Some(&sid(4)));
    }

    #[test]
    fn empty_or_foreign_spans_give_none() {
        assert!(TraceDag::build(tid(1), vec![]).is_none());
        let mut s = span(1, None, 0);
        s.trace_id = tid(2);
        assert!(TraceDag::build(tid(1), vec![s]).is_none());
    }

    #[test]
    fn deterministic_regardless_of_input_order() {
        let make = || {
            (1..=20u8)
                .map(|i| span(i, if i > 1 { Some(i / 2) } else { None }, i64::from(i % 4)))
                .collect::<Vec<_>>()
        };
        let a = TraceDag::build(tid(1), make()).unwrap();
        let mut rev = make();
        rev.reverse();
        let b = TraceDag::build(tid(1), rev).unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }
}
