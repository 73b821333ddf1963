//! Service-to-service dependencies over a time window: who calls whom, how often, and how
//! often the called side failed. One computation serves two answers: the v1 pipeline map
//! (`GET /api/v1/dependencies?start=&end=`, this module's route) and Jaeger's
//! `/api/dependencies` (the `jaeger` module), which keeps only the call counts.
//!
//! An edge `upstream -> downstream` is counted once per span whose parent, or whose linked
//! span (any link type, in any trace read), is known: the parent or linked span's service is
//! the upstream side. Where spans follow the pipeline conventions (`docs/conventions.md`),
//! the map is also grouped by dataset: each edge names the datasets that flowed along it (a
//! DATA_DEPENDENCY link's `datatracing.link.dataset`, else the upstream span's outputs that
//! the downstream span reads), and `datasets` lists every dataset with the services that
//! wrote and read it. The work is bounded: at most [`MAX_TRACES`] traces (newest first) and
//! [`SPAN_FACTOR`] times `query.max_trace_spans` spans in all are read, and the answer says
//! when a bound cut it (`truncated`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::RawQuery;
use axum::routing::get;
use datatracing_core::{
    LinkType, Span, SpanId, StatusCode, TimeWindow, Timestamp, TraceId, TraceQuery,
};
use datatracing_http::ApiError;
use datatracing_store::TraceReader;

use crate::tenant::Tenanted;
use serde::Serialize;

/// Most traces one computation reads; the edges describe at most these.
pub(crate) const MAX_TRACES: usize = 2_000;
/// One computation reads at most this many times `query.max_trace_spans` spans in all
/// (newest traces first): 200,000 with the default.
pub(crate) const SPAN_FACTOR: usize = 4;
/// Most datasets one computation names; further names are left out (`truncated`).
pub(crate) const MAX_DATASETS: usize = 1_000;
/// Most datasets named on one edge.
pub(crate) const MAX_EDGE_DATASETS: usize = 20;
/// The v1 window when `start` is not given: this long before `end` (a day, as Jaeger).
const DEFAULT_LOOKBACK_NANOS: i64 = 24 * 3600 * 1_000_000_000;

/// How an edge's calls relate the two spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relation {
    /// A parent/child pair, or a link typed CHILD_OF.
    ChildOf,
    /// A FOLLOWS_FROM link.
    FollowsFrom,
    /// A DATA_DEPENDENCY link.
    DataDependency,
}

impl From<LinkType> for Relation {
    fn from(t: LinkType) -> Self {
        match t {
            LinkType::ChildOf => Relation::ChildOf,
            LinkType::FollowsFrom => Relation::FollowsFrom,
            LinkType::DataDependency => Relation::DataDependency,
        }
    }
}

/// One service-to-service edge.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub(crate) struct Edge {
    /// The upstream service (the parent or linked span's).
    pub(crate) parent: String,
    /// The downstream service (the child or linking span's).
    pub(crate) child: String,
    /// Calls in all (the sum of the three relation counts).
    pub(crate) call_count: u64,
    /// Calls whose downstream span ended in ERROR or TIMEOUT.
    pub(crate) error_count: u64,
    /// `error_count / call_count`.
    pub(crate) error_rate: f64,
    /// Calls through parent/child (and CHILD_OF links).
    pub(crate) child_of: u64,
    /// Calls through FOLLOWS_FROM links.
    pub(crate) follows_from: u64,
    /// Calls through DATA_DEPENDENCY links.
    pub(crate) data_dependency: u64,
    /// Datasets that flowed along this edge (sorted, at most 20): a DATA_DEPENDENCY link's
    /// `datatracing.link.dataset`, else the upstream span's `datatracing.dataset.outputs`
    /// that the downstream span lists in `datatracing.dataset.inputs`. Empty when the spans
    /// do not follow the conventions.
    pub(crate) datasets: Vec<String>,
}

/// One dataset and the services that wrote and read it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub(crate) struct DatasetNode {
    /// The dataset's qualified name (`namespace/name`, see `docs/conventions.md`).
    pub(crate) dataset: String,
    /// Services with a span listing it in `datatracing.dataset.outputs`, by name.
    pub(crate) producers: Vec<String>,
    /// Services with a span listing it in `datatracing.dataset.inputs` (or a DATA_DEPENDENCY
    /// link naming it), by name.
    pub(crate) consumers: Vec<String>,
    /// Spans that wrote it.
    pub(crate) write_count: u64,
    /// Spans that read it.
    pub(crate) read_count: u64,
}

/// One service's own figures over the traces read.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub(crate) struct ServiceNode {
    /// The service name.
    pub(crate) service: String,
    /// Its spans.
    pub(crate) span_count: u64,
    /// Its spans that ended in ERROR or TIMEOUT.
    pub(crate) error_count: u64,
}

/// The computed dependencies and how much was read to get them.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub(crate) struct Dependencies {
    /// Services seen, by name.
    pub(crate) services: Vec<ServiceNode>,
    /// Edges, by (parent, child).
    pub(crate) edges: Vec<Edge>,
    /// Datasets named by the spans read (pipeline conventions), by name; at most 1,000.
    pub(crate) datasets: Vec<DatasetNode>,
    /// Traces read.
    pub(crate) traces_read: usize,
    /// Spans read.
    pub(crate) spans_read: usize,
    /// Whether a bound (trace count, span budget, per-trace cap) left spans unread.
    pub(crate) truncated: bool,
}

/// Whether a status counts as a failed call.
fn failed(code: StatusCode) -> bool {
    matches!(code, StatusCode::Error | StatusCode::Timeout)
}

/// Reads the traces with a span in `window` (newest first, within the bounds) and computes
/// their dependencies.
pub(crate) async fn compute(
    store: &dyn TraceReader,
    window: TimeWindow,
    max_trace_spans: usize,
) -> Result<Dependencies, ApiError> {
    let mut query = TraceQuery {
        start: window.start,
        end: window.end,
        limit: TraceQuery::MAX_LIMIT,
        ..TraceQuery::default()
    };
    let mut ids = Vec::new();
    let mut truncated = false;
    loop {
        let page = store.search(&query).await?;
        ids.extend(page.traces.iter().map(|t| t.trace_id));
        match page.next_cursor {
            Some(c) if ids.len() < MAX_TRACES => query.cursor = Some(c),
            Some(_) => {
                truncated = true;
                break;
            }
            None => break,
        }
    }
    if ids.len() > MAX_TRACES {
        ids.truncate(MAX_TRACES);
        truncated = true;
    }
    // Only the call structure is kept of each trace, and a bounded number of spans is read
    // in all, so a request costs bounded memory whatever the window holds.
    let mut graph = CallGraph::default();
    let max_spans = max_trace_spans.saturating_mul(SPAN_FACTOR);
    let mut budget = max_spans;
    let mut traces_read = 0;
    for id in ids {
        if budget == 0 {
            tracing::info!(max_spans, "dependencies cut at the span budget");
            truncated = true;
            break;
        }
        if let Some(t) = store
            .get_trace_capped(id, budget.min(max_trace_spans))
            .await?
        {
            traces_read += 1;
            truncated |= t.truncated;
            budget = budget.saturating_sub(t.spans.len());
            graph.add(&t.spans);
        }
    }
    truncated |= graph.datasets_cut;
    Ok(Dependencies {
        services: graph.services(),
        edges: graph.edges(),
        datasets: graph.datasets(),
        traces_read,
        spans_read: max_spans - budget,
        truncated,
    })
}

/// One call: the upstream span, the calling span's service, how, whether it failed, and the
/// datasets it may have carried (the link's dataset, else the calling span's inputs).
struct Call {
    upstream: (TraceId, SpanId),
    service: usize,
    relation: Relation,
    failed: bool,
    /// A DATA_DEPENDENCY link's own dataset: the edge carries exactly it.
    named: Option<usize>,
    /// The calling span's inputs, matched against the upstream span's outputs.
    inputs: Vec<usize>,
}

/// Who wrote and read one dataset: service index to span count.
#[derive(Default)]
struct DatasetUse {
    writers: BTreeMap<usize, u64>,
    readers: BTreeMap<usize, u64>,
}

/// The call structure of spans: each span's service and outcome, what it calls upstream
/// (its parent and its links), and the datasets it read and wrote, without other
/// attributes or events.
#[derive(Default)]
struct CallGraph {
    /// Service names, each once, with their span and error counts.
    services: Vec<(String, u64, u64)>,
    index: HashMap<String, usize>,
    /// Span to index into `services`.
    service_of: HashMap<(TraceId, SpanId), usize>,
    calls: Vec<Call>,
    /// Dataset names, each once, with who used them.
    datasets: Vec<(String, DatasetUse)>,
    dataset_index: HashMap<String, usize>,
    /// A span's output datasets (only spans that have some).
    outputs_of: HashMap<(TraceId, SpanId), Vec<usize>>,
    /// Whether `MAX_DATASETS` left names out.
    datasets_cut: bool,
}

/// The dataset names of a conventions attribute: a string array, or one string.
fn dataset_names(attrs: &datatracing_core::Attributes, key: &str) -> Vec<String> {
    use datatracing_core::AttributeValue;
    match attrs.get(key) {
        Some(AttributeValue::StringArray(v)) => v.clone(),
        Some(AttributeValue::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

impl CallGraph {
    fn service_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        self.services.push((name.to_string(), 0, 0));
        self.index.insert(name.to_string(), self.services.len() - 1);
        self.services.len() - 1
    }

    /// The index of a dataset name, `None` once `MAX_DATASETS` names are known.
    fn dataset_index(&mut self, name: String) -> Option<usize> {
        if let Some(i) = self.dataset_index.get(&name) {
            return Some(*i);
        }
        if self.datasets.len() >= MAX_DATASETS {
            self.datasets_cut = true;
            return None;
        }
        self.dataset_index.insert(name.clone(), self.datasets.len());
        self.datasets.push((name, DatasetUse::default()));
        Some(self.datasets.len() - 1)
    }

    /// Interns `names` and counts one use each by `svc`, as a writer or a reader.
    fn use_datasets(&mut self, names: Vec<String>, svc: usize, write: bool) -> Vec<usize> {
        let mut ids: Vec<usize> = names
            .into_iter()
            .filter_map(|n| self.dataset_index(n))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for &d in &ids {
            let used = &mut self.datasets[d].1;
            let by = if write {
                &mut used.writers
            } else {
                &mut used.readers
            };
            *by.entry(svc).or_default() += 1;
        }
        ids
    }

    fn add(&mut self, spans: &[Span]) {
        use datatracing_core::conventions::{DATASET_INPUTS, DATASET_OUTPUTS, LINK_DATASET};
        for s in spans {
            let svc = self.service_index(&s.service);
            let failed = failed(s.status.code);
            self.services[svc].1 += 1;
            self.services[svc].2 += u64::from(failed);
            self.service_of.insert((s.trace_id, s.span_id), svc);
            let outputs =
                self.use_datasets(dataset_names(&s.attributes, DATASET_OUTPUTS), svc, true);
            if !outputs.is_empty() {
                self.outputs_of.insert((s.trace_id, s.span_id), outputs);
            }
            let mut inputs =
                self.use_datasets(dataset_names(&s.attributes, DATASET_INPUTS), svc, false);
            // A dependency link's dataset is read even if the span does not list it.
            let mut named_by_link = Vec::with_capacity(s.links.len());
            for l in &s.links {
                let named = match l.link_type {
                    LinkType::DataDependency => dataset_names(&l.attributes, LINK_DATASET)
                        .into_iter()
                        .next()
                        .and_then(|n| self.dataset_index(n)),
                    _ => None,
                };
                if let Some(d) = named
                    && !inputs.contains(&d)
                {
                    *self.datasets[d].1.readers.entry(svc).or_default() += 1;
                    inputs.push(d);
                }
                named_by_link.push(named);
            }
            if let Some(p) = s.parent_id {
                self.calls.push(Call {
                    upstream: (s.trace_id, p),
                    service: svc,
                    relation: Relation::ChildOf,
                    failed,
                    named: None,
                    inputs: inputs.clone(),
                });
            }
            for (l, named) in s.links.iter().zip(named_by_link) {
                self.calls.push(Call {
                    upstream: (l.trace_id, l.span_id),
                    service: svc,
                    relation: l.link_type.into(),
                    failed,
                    named,
                    inputs: if named.is_some() {
                        Vec::new()
                    } else {
                        inputs.clone()
                    },
                });
            }
        }
    }

    fn datasets(&self) -> Vec<DatasetNode> {
        let names = |by: &BTreeMap<usize, u64>| -> Vec<String> {
            let mut v: Vec<String> = by.keys().map(|i| self.services[*i].0.clone()).collect();
            v.sort();
            v
        };
        let mut out: Vec<DatasetNode> = self
            .datasets
            .iter()
            .map(|(name, used)| DatasetNode {
                dataset: name.clone(),
                producers: names(&used.writers),
                consumers: names(&used.readers),
                write_count: used.writers.values().sum(),
                read_count: used.readers.values().sum(),
            })
            .collect();
        out.sort_by(|a, b| a.dataset.cmp(&b.dataset));
        out
    }

    fn services(&self) -> Vec<ServiceNode> {
        let mut out: Vec<ServiceNode> = self
            .services
            .iter()
            .map(|(name, spans, errors)| ServiceNode {
                service: name.clone(),
                span_count: *spans,
                error_count: *errors,
            })
            .collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    /// The edges, by (parent, child). Same-service pairs count, as in Jaeger.
    fn edges(&self) -> Vec<Edge> {
        let mut edges: BTreeMap<(&str, &str), (Edge, BTreeSet<usize>)> = BTreeMap::new();
        for call in &self.calls {
            let Some(parent) = self.service_of.get(&call.upstream) else {
                continue;
            };
            let (p, c) = (&self.services[*parent].0, &self.services[call.service].0);
            let (e, datasets) = edges.entry((p, c)).or_insert_with(|| {
                (
                    Edge {
                        parent: p.clone(),
                        child: c.clone(),
                        ..Edge::default()
                    },
                    BTreeSet::new(),
                )
            });
            e.call_count += 1;
            e.error_count += u64::from(call.failed);
            match call.relation {
                Relation::ChildOf => e.child_of += 1,
                Relation::FollowsFrom => e.follows_from += 1,
                Relation::DataDependency => e.data_dependency += 1,
            }
            if let Some(d) = call.named {
                datasets.insert(d);
            } else if let Some(outputs) = self.outputs_of.get(&call.upstream) {
                datasets.extend(call.inputs.iter().filter(|d| outputs.contains(d)));
            }
        }
        edges
            .into_values()
            .map(|(mut e, datasets)| {
                e.error_rate = e.error_count as f64 / e.call_count as f64;
                let mut names: Vec<String> = datasets
                    .into_iter()
                    .map(|d| self.datasets[d].0.clone())
                    .collect();
                names.sort();
                names.truncate(MAX_EDGE_DATASETS);
                e.datasets = names;
                e
            })
            .collect()
    }
}

/// State of the v1 route.
#[derive(Clone)]
pub(crate) struct DependenciesApi {
    pub(crate) store: Arc<dyn TraceReader>,
    /// `query.max_trace_spans`.
    pub(crate) max_trace_spans: usize,
}

impl crate::tenant::Scoped for DependenciesApi {
    fn scoped(&self, tenant: &datatracing_core::Tenant) -> Self {
        Self {
            store: crate::tenant::scope_reader(&self.store, tenant),
            ..self.clone()
        }
    }
}

pub(crate) fn routes(state: DependenciesApi) -> Router {
    Router::new()
        .route("/api/v1/dependencies", get(get_dependencies))
        .with_state(state)
}

/// `start` and `end` (RFC 3339, both optional): `end` defaults to now and `start` to a day
/// before `end`. Unknown or repeated parameters and an inverted window are 400s.
fn window_params(raw: Option<&str>) -> Result<(Timestamp, Timestamp), ApiError> {
    let (mut start, mut end) = (None, None);
    for (k, v) in crate::api::query_pairs(raw.unwrap_or(""), &["start", "end"], &[])? {
        if v.is_empty() {
            continue;
        }
        let t = Timestamp::parse_rfc3339(&v)
            .map_err(|e| ApiError::invalid_argument(format!("parameter {k}: {e}")))?;
        if k == "start" {
            start = Some(t);
        } else {
            end = Some(t);
        }
    }
    let end = end.unwrap_or_else(Timestamp::now);
    let start = start.unwrap_or_else(|| end.saturating_add_nanos(-DEFAULT_LOOKBACK_NANOS));
    TimeWindow {
        start: Some(start),
        end: Some(end),
    }
    .validate()?;
    Ok((start, end))
}

/// The pipeline map: services with their span and error counts, and the edges between them
/// with call counts, error counts and rates, split by relation, over `[start, end]`.
#[tracing::instrument(skip_all)]
#[utoipa::path(get, path = "/api/v1/dependencies", tag = "dependencies",
    params(
        ("start" = Option<String>, Query, description = "RFC 3339 window start (default a day before end)"),
        ("end" = Option<String>, Query, description = "RFC 3339 window end (default now)"),
    ),
    responses(
        (status = 200, description = "The pipeline map over the window", body = crate::openapi::DependenciesResponse),
        (status = 400, description = "A bad or unknown parameter, or an inverted window", body = crate::openapi::ErrorEnvelope),
        (status = 429, description = "Too many expensive reads; see Retry-After", body = crate::openapi::ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "The store is unavailable; see Retry-After", body = crate::openapi::ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
pub(crate) async fn get_dependencies(
    Tenanted(api): Tenanted<DependenciesApi>,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<crate::openapi::DependenciesResponse>, ApiError> {
    let (start, end) = window_params(raw.as_deref())?;
    let window = TimeWindow {
        start: Some(start),
        end: Some(end),
    };
    let deps = compute(api.store.as_ref(), window, api.max_trace_spans).await?;
    Ok(axum::Json(crate::openapi::DependenciesResponse {
        map: deps,
        start: start.to_rfc3339(),
        end: end.to_rfc3339(),
        max_traces: MAX_TRACES,
    }))
}
