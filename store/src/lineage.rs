//! Lineage across traces: the graph of traces connected through `FOLLOWS_FROM` and
//! `DATA_DEPENDENCY` links, walked breadth first from one trace over any [`TraceReader`].
//!
//! Upstream follows the links a trace's spans declare (to the traces it consumed or
//! continued); downstream follows them backwards, through the backends' reverse-link index
//! (the traces whose spans link to it). Each level costs one batched lookup of links,
//! whatever its width, and the summaries of all nodes (the root's included, which also says
//! whether the root is stored) are read once at the end; the walk
//! stops at a depth and a node count: when
//! either bound leaves links unexplored the result says `truncated`. Visited traces are never
//! expanded twice, so cycles end the walk instead of looping; the edge that closes a cycle is
//! still reported. A link to a trace that is not stored (dangling) gives a node without a
//! summary.

use std::collections::{HashMap, HashSet};

use datatracing_core::{LinkType, SpanId, TraceId, TraceSummary};
use serde::Serialize;

use crate::{Result, TraceReader};

/// One link from a span of one trace to a span of another, as the stores index it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
pub struct CrossLink {
    /// The trace of the span that declared the link (the consumer, downstream side).
    pub from_trace: TraceId,
    /// The span that declared the link.
    pub from_span: SpanId,
    /// The linked trace (the producer, upstream side).
    pub to_trace: TraceId,
    /// The linked span.
    pub to_span: SpanId,
    /// How the spans relate.
    #[serde(rename = "type")]
    pub link_type: LinkType,
    /// The dataset the link says flowed between the spans (the link's
    /// `datatracing.link.dataset` attribute), when it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
}

impl CrossLink {
    /// Whether the link carries lineage (`FOLLOWS_FROM`, `DATA_DEPENDENCY`); `CHILD_OF`
    /// links are extra parents, not lineage.
    pub fn is_lineage(&self) -> bool {
        matches!(
            self.link_type,
            LinkType::FollowsFrom | LinkType::DataDependency
        )
    }
}

/// Which way to walk from the root trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// To the traces the root links to, and theirs, and so on.
    Upstream,
    /// To the traces that link to the root, and to them, and so on.
    Downstream,
    /// Both walks from the root (not the whole connected component: a sibling that shares
    /// an upstream trace with the root is not included).
    Both,
}

impl Direction {
    /// The name used in requests and responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
            Direction::Both => "both",
        }
    }
}

impl std::str::FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "upstream" => Ok(Direction::Upstream),
            "downstream" => Ok(Direction::Downstream),
            "both" => Ok(Direction::Both),
            other => Err(format!(
                "direction must be upstream, downstream or both, got {:?}",
                other.chars().take(32).collect::<String>()
            )),
        }
    }
}

/// The bounds of one lineage walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineageLimits {
    /// Most link hops from the root.
    pub max_depth: usize,
    /// Most traces in the graph, the root included.
    pub max_nodes: usize,
}

/// A trace in a lineage graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct LineageNode {
    /// The trace.
    pub trace_id: TraceId,
    /// Link hops from the root (0 for the root), the fewest over both walks.
    pub depth: usize,
    /// Whether any span of the trace is stored; `false` for a dangling link target.
    pub stored: bool,
    /// The trace's summary when stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<TraceSummary>,
}

/// The traces around a root and the links between them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Lineage {
    /// The trace the walk started from.
    pub root: TraceId,
    /// The direction walked.
    pub direction: Direction,
    /// The depth bound used.
    pub depth: usize,
    /// Traces, by depth then trace id; the root first.
    pub nodes: Vec<LineageNode>,
    /// Lineage links between traces of `nodes`, sorted, each once.
    pub edges: Vec<CrossLink>,
    /// The walk was restricted to links naming this dataset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// The edges grouped by the dataset they name, by name: which traces produced each
    /// dataset and which consumed it. Edges without a dataset are in no group.
    pub datasets: Vec<LineageDataset>,
    /// Whether the depth bound, the node bound or the per-level link bound left links
    /// unexplored: there is more lineage than this graph shows.
    pub truncated: bool,
}

/// One dataset of a lineage graph and the traces on either side of the links naming it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct LineageDataset {
    /// The dataset name (OpenLineage `namespace/name` or a URI, as the producer wrote it).
    pub name: String,
    /// Traces with a span a link points to for this dataset (they wrote it), sorted.
    pub producers: Vec<TraceId>,
    /// Traces with a span whose link names this dataset (they read it), sorted.
    pub consumers: Vec<TraceId>,
    /// How many edges name it.
    pub edges: usize,
}

fn group_by_dataset(edges: &[CrossLink]) -> Vec<LineageDataset> {
    let mut groups: std::collections::BTreeMap<&str, LineageDataset> = Default::default();
    for e in edges {
        let Some(name) = e.dataset.as_deref() else {
            continue;
        };
        let g = groups.entry(name).or_insert_with(|| LineageDataset {
            name: name.to_string(),
            producers: Vec::new(),
            consumers: Vec::new(),
            edges: 0,
        });
        g.producers.push(e.to_trace);
        g.consumers.push(e.from_trace);
        g.edges += 1;
    }
    groups
        .into_values()
        .map(|mut g| {
            for v in [&mut g.producers, &mut g.consumers] {
                v.sort();
                v.dedup();
            }
            g
        })
        .collect()
}

/// Most links one level of the walk reads; more leaves the graph `truncated`.
pub const MAX_LINKS_PER_LEVEL: usize = 10_000;

/// Walks the lineage of `root`, over every lineage link or, with `dataset`, only over links
/// naming that dataset. `None` when the root trace is not stored.
pub async fn lineage(
    reader: &dyn TraceReader,
    root: TraceId,
    direction: Direction,
    limits: LineageLimits,
    dataset: Option<&str>,
) -> Result<Option<Lineage>> {
    let mut walk = Walk {
        reader,
        limits,
        depth_of: HashMap::from([(root, 0)]),
        summaries: HashMap::new(),
        edges: HashSet::new(),
        truncated: false,
        dataset,
    };
    if matches!(direction, Direction::Upstream | Direction::Both) {
        walk.run(root, true).await?;
    }
    if matches!(direction, Direction::Downstream | Direction::Both) {
        walk.run(root, false).await?;
    }
    // The summaries of every node, the root's included, in one batched read after the walk
    // rather than one per level or one before it for the root: a depth-3 walk one way is
    // then 4 link reads + 1 round trips, which is what a remote store's latency is paid
    // for. A root that is not stored is walked for nothing, which only a wrong id costs.
    let found: Vec<TraceId> = walk.depth_of.keys().copied().collect();
    for s in reader.summaries(&found).await? {
        walk.summaries.insert(s.trace_id, s);
    }
    if !walk.summaries.contains_key(&root) {
        return Ok(None);
    }
    let mut nodes: Vec<LineageNode> = walk
        .depth_of
        .iter()
        .map(|(id, depth)| LineageNode {
            trace_id: *id,
            depth: *depth,
            stored: walk.summaries.contains_key(id),
            summary: walk.summaries.get(id).cloned(),
        })
        .collect();
    nodes.sort_by_key(|n| (n.depth, n.trace_id));
    let mut edges: Vec<CrossLink> = walk.edges.into_iter().collect();
    edges.sort();
    Ok(Some(Lineage {
        root,
        direction,
        depth: limits.max_depth,
        nodes,
        datasets: group_by_dataset(&edges),
        edges,
        dataset: dataset.map(str::to_string),
        truncated: walk.truncated,
    }))
}

struct Walk<'a> {
    reader: &'a dyn TraceReader,
    limits: LineageLimits,
    /// Every node of the graph with its depth.
    depth_of: HashMap<TraceId, usize>,
    summaries: HashMap<TraceId, TraceSummary>,
    edges: HashSet<CrossLink>,
    truncated: bool,
    /// Only links naming this dataset are followed.
    dataset: Option<&'a str>,
}

impl Walk<'_> {
    /// One breadth-first walk from `root`, upstream or downstream. Its own `visited` set
    /// lets the second walk of `both` pass through nodes the first one found.
    async fn run(&mut self, root: TraceId, upstream: bool) -> Result<()> {
        let mut visited = HashSet::from([root]);
        let mut frontier = vec![root];
        let mut level = 0;
        while !frontier.is_empty() {
            // One level past the depth bound is read only to learn whether the bound cut
            // something, and to report edges among nodes already in the graph.
            let beyond = level == self.limits.max_depth;
            let links = if upstream {
                self.reader
                    .links_from(&frontier, MAX_LINKS_PER_LEVEL + 1)
                    .await?
            } else {
                self.reader
                    .links_to(&frontier, MAX_LINKS_PER_LEVEL + 1)
                    .await?
            };
            if links.len() > MAX_LINKS_PER_LEVEL {
                self.truncated = true;
            }
            let mut next = Vec::new();
            for link in links.into_iter().take(MAX_LINKS_PER_LEVEL) {
                if !link.is_lineage()
                    || link.from_trace == link.to_trace
                    || self
                        .dataset
                        .is_some_and(|d| link.dataset.as_deref() != Some(d))
                {
                    continue;
                }
                let other = if upstream {
                    link.to_trace
                } else {
                    link.from_trace
                };
                if !visited.contains(&other) {
                    let known = self.depth_of.contains_key(&other);
                    if !known && (beyond || self.depth_of.len() >= self.limits.max_nodes) {
                        self.truncated = true;
                        continue;
                    }
                    if !beyond {
                        visited.insert(other);
                        let d = self.depth_of.entry(other).or_insert(level + 1);
                        *d = (*d).min(level + 1);
                        next.push(other);
                    }
                }
                self.edges.insert(link);
            }
            if beyond {
                break;
            }
            frontier = next;
            level += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_parse() {
        for d in [Direction::Upstream, Direction::Downstream, Direction::Both] {
            assert_eq!(d.as_str().parse::<Direction>(), Ok(d));
        }
        assert!(
            "sideways"
                .parse::<Direction>()
                .unwrap_err()
                .contains("upstream")
        );
    }
}
