//! The query HTTP API: trace DAGs, lineage across linked traces, search (query string and
//! JSON body, both paged with cursors), and the services / operations listings.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery};
use axum::routing::{get, post};
use datatracing_config::LineageConfig;
use datatracing_core::{
    AttributeFilter, DurationScope, MAX_NAMES, SearchCursor, SearchPage, SpanCursor, SpanKind,
    TimeWindow, TraceDag, TraceId, TraceQuery, parse_duration_ns,
};
use datatracing_http::ApiError;
use datatracing_store::{Direction, LineageLimits, TraceReader};

use crate::tenant::Tenanted;
use serde::Deserialize;

use crate::openapi::{
    ErrorEnvelope, LineageResponse, OperationsResponse, SearchResponse, ServicesResponse, SpanPage,
    TraceResponse,
};

/// Largest JSON search body accepted (16 filters with long regexes fit many times over).
const MAX_SEARCH_BODY: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) store: Arc<dyn TraceReader>,
    /// `query.max_trace_spans`.
    pub(crate) max_trace_spans: usize,
    /// `query.lineage`.
    pub(crate) lineage: LineageConfig,
}

impl crate::tenant::Scoped for Api {
    fn scoped(&self, tenant: &datatracing_core::Tenant) -> Self {
        Self {
            store: crate::tenant::scope_reader(&self.store, tenant),
            ..self.clone()
        }
    }
}

pub(crate) fn routes(api: Api) -> Router {
    let store = Arc::clone(&api.store);
    let trace = Router::new()
        .route("/api/v1/traces/{trace_id}", get(get_trace))
        .route("/api/v1/traces/{trace_id}/lineage", get(get_lineage))
        .route("/api/v1/traces/{trace_id}/spans", get(get_trace_spans))
        .with_state(api);
    Router::new()
        .route("/api/v1/traces", get(search))
        .route(
            "/api/v1/traces/search",
            post(search_body).layer(DefaultBodyLimit::max(MAX_SEARCH_BODY)),
        )
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{service}/operations", get(operations))
        .with_state(store)
        .merge(trace)
}

/// The DAG of a trace, read with the `max_trace_spans` cap. The body always says whether it
/// was cut (`truncated`), and when it was, the cap (`max_spans`): the DAG then holds the
/// first spans by start time, and its summary, critical path and self times describe those.
#[tracing::instrument(skip_all)]
#[utoipa::path(get, path = "/api/v1/traces/{trace_id}", tag = "traces",
    params(("trace_id" = String, Path, description = "The trace id: 32 hex digits")),
    responses(
        (status = 200, description = "The trace DAG, cut at query.max_trace_spans spans", body = TraceResponse),
        (status = 400, description = "Malformed trace id", body = ErrorEnvelope),
        (status = 404, description = "No span of this trace is stored", body = ErrorEnvelope),
        (status = 429, description = "Too many expensive reads; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "The store is unavailable; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
async fn get_trace(
    Tenanted(api): Tenanted<Api>,
    raw_id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<TraceResponse>, ApiError> {
    let trace_id = trace_id_in_path(raw_id)?;
    let capped = api
        .store
        .get_trace_capped(trace_id, api.max_trace_spans)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("trace {trace_id} not found")))?;
    // Where the spans past the cut start: after the last one in this body.
    let more = capped
        .truncated
        .then(|| capped.spans.last().map(SpanCursor::after))
        .flatten();
    let dag = TraceDag::build(trace_id, capped.spans)
        .ok_or_else(|| ApiError::not_found(format!("trace {trace_id} not found")))?;
    Ok(axum::Json(TraceResponse {
        dag,
        truncated: capped.truncated,
        max_spans: capped.truncated.then_some(api.max_trace_spans),
        next_spans: more.map(|c| format!("/api/v1/traces/{trace_id}/spans?cursor={}", c.encode())),
    }))
}

/// Spans per page of `/api/v1/traces/{id}/spans` unless `limit` says otherwise.
const DEFAULT_SPAN_PAGE: usize = 1000;

/// A trace's spans one page at a time, by start time then span id, so a trace cut at
/// `query.max_trace_spans` can be read whole: `limit` (1 to `query.max_trace_spans`, default
/// the smaller of 1000 and that) and `cursor` (the `next_cursor` of the previous page, or
/// the cursor in a truncated trace's `next_spans`). `next_cursor` is absent on the last page.
/// An unknown trace is a 404; a cursor of another trace a 400.
#[tracing::instrument(skip_all)]
#[utoipa::path(get, path = "/api/v1/traces/{trace_id}/spans", tag = "traces",
    params(
        ("trace_id" = String, Path, description = "The trace id: 32 hex digits"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page, or the cursor in a truncated trace's next_spans"),
        ("limit" = Option<usize>, Query, description = "Spans per page, 1 to query.max_trace_spans (default the smaller of 1000 and that)"),
    ),
    responses(
        (status = 200, description = "One page of spans by start time, then span id", body = SpanPage),
        (status = 400, description = "Malformed id, cursor or limit, or a cursor of another trace", body = ErrorEnvelope),
        (status = 404, description = "No span of this trace is stored", body = ErrorEnvelope),
        (status = 429, description = "Too many expensive reads; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "The store is unavailable; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
async fn get_trace_spans(
    Tenanted(api): Tenanted<Api>,
    raw_id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<SpanPage>, ApiError> {
    let trace_id = trace_id_in_path(raw_id)?;
    let max = api.max_trace_spans;
    let mut limit = DEFAULT_SPAN_PAGE.min(max);
    let mut after = None;
    for (k, v) in query_pairs(raw.as_deref().unwrap_or(""), &["cursor", "limit"], &[])? {
        if v.is_empty() {
            continue;
        }
        if k == "limit" {
            limit = v
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=max).contains(l))
                .ok_or_else(|| {
                    ApiError::invalid_argument(format!(
                        "parameter limit: must be an integer from 1 to {max} (query.max_trace_spans)"
                    ))
                })?;
        } else {
            let c = SpanCursor::decode(&v)
                .map_err(|e| ApiError::invalid_argument(format!("parameter cursor: {e}")))?;
            if c.trace_id != trace_id {
                return Err(ApiError::invalid_argument(
                    "parameter cursor: it belongs to another trace",
                ));
            }
            after = Some(c);
        }
    }
    // One more than asked tells whether another page follows.
    let mut spans = api
        .store
        .trace_spans(trace_id, after, limit.saturating_add(1))
        .await?;
    if spans.is_empty() && after.is_none() {
        return Err(ApiError::not_found(format!("trace {trace_id} not found")));
    }
    let more = spans.len() > limit;
    spans.truncate(limit);
    let next_cursor = spans
        .last()
        .filter(|_| more)
        .map(|last| SpanCursor::after(last).encode());
    Ok(axum::Json(SpanPage {
        trace_id,
        spans,
        limit,
        next_cursor,
    }))
}

/// The traces linked to a trace through `FOLLOWS_FROM` and `DATA_DEPENDENCY` links:
/// `direction` (`upstream`, `downstream`, `both`; default `both`) and `depth` (link hops,
/// 1 to `query.lineage.max_depth`, default `query.lineage.default_depth`). At most
/// `query.lineage.max_nodes` traces; `truncated` says when a bound cut the graph. An unknown
/// root trace is a 404; links to traces that are not stored give nodes with `stored: false`.
/// `dataset` follows only the links naming that dataset; `datasets` groups the edges by the
/// dataset they name (producers and consumers of each).
#[tracing::instrument(skip_all)]
#[utoipa::path(get, path = "/api/v1/traces/{trace_id}/lineage", tag = "traces",
    params(
        ("trace_id" = String, Path, description = "The root trace id: 32 hex digits"),
        ("direction" = Option<String>, Query, description = "upstream, downstream or both (default)"),
        ("depth" = Option<usize>, Query, description = "Link hops, 1 to query.lineage.max_depth (default query.lineage.default_depth)"),
        ("dataset" = Option<String>, Query, description = "Follow only the links naming this dataset (datatracing.link.dataset)"),
    ),
    responses(
        (status = 200, description = "The lineage graph", body = LineageResponse),
        (status = 400, description = "Malformed id, direction or depth", body = ErrorEnvelope),
        (status = 404, description = "The root trace is not stored", body = ErrorEnvelope),
        (status = 429, description = "Too many expensive reads; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "The store is unavailable; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
async fn get_lineage(
    Tenanted(api): Tenanted<Api>,
    raw_id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<LineageResponse>, ApiError> {
    let trace_id = trace_id_in_path(raw_id)?;
    let mut direction = Direction::Both;
    let mut depth = api.lineage.default_depth;
    let mut dataset = None;
    for (k, v) in query_pairs(
        raw.as_deref().unwrap_or(""),
        &["direction", "depth", "dataset"],
        &[],
    )? {
        if v.is_empty() {
            continue;
        }
        if k == "dataset" {
            if v.len() > AttributeFilter::MAX_VALUE_BYTES {
                return Err(ApiError::invalid_argument(format!(
                    "parameter dataset: at most {} bytes",
                    AttributeFilter::MAX_VALUE_BYTES
                )));
            }
            dataset = Some(v);
        } else if k == "direction" {
            direction = v
                .parse()
                .map_err(|e| ApiError::invalid_argument(format!("parameter direction: {e}")))?;
        } else {
            let max = api.lineage.max_depth;
            depth = v
                .parse::<usize>()
                .ok()
                .filter(|d| (1..=max).contains(d))
                .ok_or_else(|| {
                    ApiError::invalid_argument(format!(
                        "parameter depth: must be an integer from 1 to {max} (query.lineage.max_depth)"
                    ))
                })?;
        }
    }
    let limits = LineageLimits {
        max_depth: depth,
        max_nodes: api.lineage.max_nodes,
    };
    let graph = datatracing_store::lineage(
        api.store.as_ref(),
        trace_id,
        direction,
        limits,
        dataset.as_deref(),
    )
    .await?
    .ok_or_else(|| ApiError::not_found(format!("trace {trace_id} not found")))?;
    Ok(axum::Json(LineageResponse {
        lineage: graph,
        max_nodes: api.lineage.max_nodes,
    }))
}

/// A path segment that is not valid percent-encoded UTF-8, in the envelope.
fn path_error(r: PathRejection) -> ApiError {
    ApiError::invalid_argument(format!("malformed path: {}", r.body_text()))
}

/// The trace id of a v1 path (`/api/v1/traces/{trace_id}...`): 32 hex digits, else a 400.
fn trace_id_in_path(raw: Result<Path<String>, PathRejection>) -> Result<TraceId, ApiError> {
    let Path(raw) = raw.map_err(path_error)?;
    raw.parse()
        .map_err(|e| ApiError::invalid_argument(format!("malformed trace id: {e}")))
}

/// Raw search parameters; every value is parsed with its own precise error.
/// `attribute` may repeat (`attribute=dataset=orders&attribute=late`).
#[derive(Debug, Default)]
pub(crate) struct SearchParams {
    service: Option<String>,
    operation: Option<String>,
    kind: Option<String>,
    status: Option<String>,
    start: Option<String>,
    end: Option<String>,
    min_duration: Option<String>,
    max_duration: Option<String>,
    duration_scope: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    linked_trace: Option<String>,
    linked_service: Option<String>,
    dataset: Option<String>,
    /// Query-string filters (`key=value` or `key`).
    attribute: Vec<String>,
    /// Filters from a JSON body, already typed.
    typed: Vec<AttributeFilter>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// Splits a raw query string into pairs, refusing parameters not in `known` and repeated
/// ones (`repeatable` may repeat).
pub(crate) fn query_pairs(
    raw: &str,
    known: &[&str],
    repeatable: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::invalid_argument(format!("malformed query string: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    for (k, _) in &pairs {
        if !known.contains(&k.as_str()) {
            return Err(ApiError::invalid_argument(format!(
                "unknown parameter {:?}; expected {}",
                k.chars().take(64).collect::<String>(),
                known.join(", ")
            )));
        }
        if !repeatable.contains(&k.as_str()) && !seen.insert(k.clone()) {
            return Err(ApiError::invalid_argument(format!(
                "parameter {k} given twice"
            )));
        }
    }
    Ok(pairs)
}

impl SearchParams {
    const KNOWN: &'static [&'static str] = &[
        "service",
        "operation",
        "kind",
        "status",
        "start",
        "end",
        "min_duration",
        "max_duration",
        "duration_scope",
        "limit",
        "cursor",
        "attribute",
        "linked_trace",
        "linked_service",
        "dataset",
    ];

    /// Reads a raw query string; unknown or repeated single-valued parameters are errors.
    pub(crate) fn from_query_string(raw: &str) -> Result<Self, ApiError> {
        let mut p = SearchParams::default();
        for (k, v) in query_pairs(raw, Self::KNOWN, &["attribute"])? {
            let slot = match k.as_str() {
                "service" => &mut p.service,
                "operation" => &mut p.operation,
                "kind" => &mut p.kind,
                "status" => &mut p.status,
                "start" => &mut p.start,
                "end" => &mut p.end,
                "min_duration" => &mut p.min_duration,
                "max_duration" => &mut p.max_duration,
                "duration_scope" => &mut p.duration_scope,
                "limit" => &mut p.limit,
                "cursor" => &mut p.cursor,
                "linked_trace" => &mut p.linked_trace,
                "linked_service" => &mut p.linked_service,
                "dataset" => &mut p.dataset,
                _ => {
                    p.attribute.push(v);
                    continue;
                }
            };
            *slot = Some(v);
        }
        Ok(p)
    }

    pub(crate) fn into_query(self) -> Result<TraceQuery, ApiError> {
        let bad = |param: &str, e: &dyn std::fmt::Display| {
            ApiError::invalid_argument(format!("parameter {param}: {e}"))
        };
        let time = |param: &str, v: Option<String>| {
            non_empty(v)
                .map(|s| datatracing_core::Timestamp::parse_rfc3339(&s).map_err(|e| bad(param, &e)))
                .transpose()
        };
        let dur = |param: &str, v: Option<String>| {
            non_empty(v)
                .map(|s| parse_duration_ns(&s).map_err(|e| bad(param, &e)))
                .transpose()
        };
        let limit = match non_empty(self.limit) {
            None => TraceQuery::DEFAULT_LIMIT,
            Some(s) => s.parse::<usize>().map_err(|_| {
                bad(
                    "limit",
                    &format!(
                        "{:?} is not a positive integer",
                        s.chars().take(32).collect::<String>()
                    ),
                )
            })?,
        };
        let mut attributes = self
            .attribute
            .iter()
            .map(|a| AttributeFilter::parse(a).map_err(|e| bad("attribute", &e)))
            .collect::<Result<Vec<_>, _>>()?;
        attributes.extend(self.typed);
        let q = TraceQuery {
            service: non_empty(self.service),
            operation: non_empty(self.operation),
            kind: non_empty(self.kind)
                .map(|s| s.parse::<SpanKind>().map_err(|e| bad("kind", &e)))
                .transpose()?,
            status: non_empty(self.status)
                .map(|s| s.parse().map_err(|e| bad("status", &e)))
                .transpose()?,
            start: time("start", self.start)?,
            end: time("end", self.end)?,
            min_duration_nanos: dur("min_duration", self.min_duration)?,
            max_duration_nanos: dur("max_duration", self.max_duration)?,
            duration_scope: non_empty(self.duration_scope)
                .map(|s| {
                    s.parse::<DurationScope>()
                        .map_err(|e| bad("duration_scope", &e))
                })
                .transpose()?
                .unwrap_or_default(),
            attributes,
            linked_trace: non_empty(self.linked_trace)
                .map(|s| s.parse::<TraceId>().map_err(|e| bad("linked_trace", &e)))
                .transpose()?,
            linked_service: non_empty(self.linked_service),
            dataset: non_empty(self.dataset),
            limit,
            cursor: non_empty(self.cursor)
                .map(|s| SearchCursor::decode(&s).map_err(|e| bad("cursor", &e)))
                .transpose()?,
        };
        q.validate()?;
        Ok(q)
    }
}

/// The JSON search body of `POST /api/v1/traces/search`: the query-string parameters as
/// fields, and typed attribute filters whose keys may hold any character.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchBody {
    service: Option<String>,
    operation: Option<String>,
    kind: Option<String>,
    status: Option<String>,
    start: Option<String>,
    end: Option<String>,
    min_duration: Option<String>,
    max_duration: Option<String>,
    duration_scope: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    linked_trace: Option<String>,
    linked_service: Option<String>,
    dataset: Option<String>,
    #[serde(default)]
    attributes: Vec<AttributeBody>,
}

/// `{"key": "...", "op": "=", "value": 42}`: numbers take `=`, `!=`, `>`, `>=`, `<`, `<=`;
/// strings take `=`, `!=`, `regex`, `contains` (an element of an array attribute, e.g. a
/// dataset list); `value` is absent for `exists`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttributeBody {
    key: String,
    op: String,
    value: Option<serde_json::Value>,
}

impl SearchBody {
    fn into_params(self) -> Result<SearchParams, ApiError> {
        if self.attributes.len() > TraceQuery::MAX_ATTRIBUTE_FILTERS {
            return Err(ApiError::invalid_argument(format!(
                "at most {} attribute filters are allowed",
                TraceQuery::MAX_ATTRIBUTE_FILTERS
            )));
        }
        let typed = self
            .attributes
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                AttributeFilter::from_parts(a.key, &a.op, a.value.as_ref())
                    .map_err(|e| ApiError::invalid_argument(format!("attributes[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SearchParams {
            service: self.service,
            operation: self.operation,
            kind: self.kind,
            status: self.status,
            start: self.start,
            end: self.end,
            min_duration: self.min_duration,
            max_duration: self.max_duration,
            duration_scope: self.duration_scope,
            limit: self.limit.map(|l| l.to_string()),
            cursor: self.cursor,
            linked_trace: self.linked_trace,
            linked_service: self.linked_service,
            dataset: self.dataset,
            attribute: Vec::new(),
            typed,
        })
    }
}

fn page_body(query: &TraceQuery, page: SearchPage) -> SearchResponse {
    SearchResponse {
        traces: page.traces,
        limit: query.limit,
        duration_scope: query.duration_scope.as_str().to_string(),
        next_cursor: page.next_cursor.map(|c| c.encode()),
    }
}

#[tracing::instrument(skip_all)]
#[utoipa::path(get, path = "/api/v1/traces", tag = "search",
    params(
        ("service" = Option<String>, Query, description = "Spans of this service"),
        ("operation" = Option<String>, Query, description = "Spans of this operation"),
        ("kind" = Option<String>, Query, description = "Span (step) kind, e.g. TRANSFORM"),
        ("status" = Option<String>, Query, description = "Span status, e.g. ERROR"),
        ("start" = Option<String>, Query, description = "RFC 3339; spans starting at or after"),
        ("end" = Option<String>, Query, description = "RFC 3339; spans starting at or before"),
        ("min_duration" = Option<String>, Query, description = "e.g. 1.5s, 200ms"),
        ("max_duration" = Option<String>, Query, description = "e.g. 10s"),
        ("duration_scope" = Option<String>, Query, description = "span (default) or trace"),
        ("attribute" = Option<Vec<String>>, Query, description = "key=value or key (exists); repeatable"),
        ("linked_trace" = Option<String>, Query, description = "Traces with a span linking to this trace"),
        ("linked_service" = Option<String>, Query, description = "Traces with a span linking to a span of this service"),
        ("dataset" = Option<String>, Query, description = "Traces with a span that read or wrote this dataset (datatracing.dataset.inputs / outputs)"),
        ("limit" = Option<usize>, Query, description = "Traces per page"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "One page of trace summaries, newest first", body = SearchResponse),
        (status = 400, description = "A bad or unknown parameter", body = ErrorEnvelope),
        (status = 429, description = "Too many expensive reads; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "The store is unavailable; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
async fn search(
    Tenanted(store): Tenanted<Arc<dyn TraceReader>>,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<SearchResponse>, ApiError> {
    let query = SearchParams::from_query_string(raw.as_deref().unwrap_or(""))?.into_query()?;
    let page = store.search(&query).await?;
    Ok(axum::Json(page_body(&query, page)))
}

/// Whether a `Content-Type` names JSON (`application/json` or a `+json` type, any
/// parameters).
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

#[tracing::instrument(skip_all)]
#[utoipa::path(post, path = "/api/v1/traces/search", tag = "search",
    request_body(content = SearchBody, content_type = "application/json", description = "The query-string parameters as fields, and typed attribute filters"),
    responses(
        (status = 200, description = "One page of trace summaries, newest first", body = SearchResponse),
        (status = 400, description = "Malformed body or a bad field", body = ErrorEnvelope),
        (status = 413, description = "Body over 64 KiB", body = ErrorEnvelope),
        (status = 415, description = "Content-Type is not JSON", body = ErrorEnvelope),
        (status = 429, description = "Too many expensive reads; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "The store is unavailable; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
async fn search_body(
    Tenanted(store): Tenanted<Arc<dyn TraceReader>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<SearchResponse>, ApiError> {
    if !is_json(&headers) {
        return Err(ApiError::new(
            datatracing_http::ErrorCode::UnsupportedMediaType,
            "the search body must be JSON (Content-Type: application/json)",
        ));
    }
    let body = body?;
    let parsed: SearchBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_argument(format!("invalid search body: {e}")))?;
    let query = parsed.into_params()?.into_query()?;
    let page = store.search(&query).await?;
    Ok(axum::Json(page_body(&query, page)))
}

/// `start`, `end` and `limit` of the listings.
fn listing_params(raw: Option<&str>) -> Result<(TimeWindow, usize), ApiError> {
    let mut window = TimeWindow::default();
    let mut limit = MAX_NAMES;
    for (k, v) in query_pairs(raw.unwrap_or(""), &["start", "end", "limit"], &[])? {
        if v.is_empty() {
            continue;
        }
        let bad =
            |e: &dyn std::fmt::Display| ApiError::invalid_argument(format!("parameter {k}: {e}"));
        match k.as_str() {
            "start" => {
                window.start =
                    Some(datatracing_core::Timestamp::parse_rfc3339(&v).map_err(|e| bad(&e))?)
            }
            "end" => {
                window.end =
                    Some(datatracing_core::Timestamp::parse_rfc3339(&v).map_err(|e| bad(&e))?)
            }
            _ => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_NAMES).contains(l))
                    .ok_or_else(|| bad(&format!("must be an integer from 1 to {MAX_NAMES}")))?
            }
        }
    }
    window.validate()?;
    Ok((window, limit))
}

#[tracing::instrument(skip_all)]
#[utoipa::path(get, path = "/api/v1/services", tag = "names",
    params(
        ("start" = Option<String>, Query, description = "RFC 3339 window start"),
        ("end" = Option<String>, Query, description = "RFC 3339 window end"),
        ("limit" = Option<usize>, Query, description = "Most names returned"),
    ),
    responses(
        (status = 200, description = "Services with spans in the window, sorted", body = ServicesResponse),
        (status = 400, description = "A bad or unknown parameter", body = ErrorEnvelope),
        (status = 503, description = "The store is unavailable; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
async fn services(
    Tenanted(store): Tenanted<Arc<dyn TraceReader>>,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<ServicesResponse>, ApiError> {
    let (window, limit) = listing_params(raw.as_deref())?;
    // One more than asked tells whether the list was cut.
    let mut services = store.services(&window, limit + 1).await?;
    let truncated = services.len() > limit;
    services.truncate(limit);
    Ok(axum::Json(ServicesResponse {
        services,
        truncated,
    }))
}

#[tracing::instrument(skip_all)]
#[utoipa::path(get, path = "/api/v1/services/{service}/operations", tag = "names",
    params(
        ("service" = String, Path, description = "The service, 1 to 1024 bytes"),
        ("start" = Option<String>, Query, description = "RFC 3339 window start"),
        ("end" = Option<String>, Query, description = "RFC 3339 window end"),
        ("limit" = Option<usize>, Query, description = "Most operations returned"),
    ),
    responses(
        (status = 200, description = "The service's operations with their span kinds", body = OperationsResponse),
        (status = 400, description = "A bad or unknown parameter", body = ErrorEnvelope),
        (status = 503, description = "The store is unavailable; see Retry-After", body = ErrorEnvelope, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
async fn operations(
    Tenanted(store): Tenanted<Arc<dyn TraceReader>>,
    service: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<OperationsResponse>, ApiError> {
    let Path(service) = service.map_err(path_error)?;
    if service.is_empty() || service.len() > 1024 {
        return Err(ApiError::invalid_argument(
            "service must have 1 to 1024 bytes",
        ));
    }
    let (window, limit) = listing_params(raw.as_deref())?;
    let mut operations = store.operations(&service, &window, limit + 1).await?;
    let truncated = operations.len() > limit;
    operations.truncate(limit);
    Ok(axum::Json(OperationsResponse {
        service,
        operations,
        truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_parameters() {
        let q = SearchParams {
            service: Some("etl".into()),
            status: Some("error".into()),
            start: Some("2026-11-28T00:00:00Z".into()),
            min_duration: Some("1.5s".into()),
            limit: Some("5".into()),
            operation: Some(String::new()),
            ..SearchParams::default()
        }
        .into_query()
        .unwrap();
        assert_eq!(q.service.as_deref(), Some("etl"));
        assert_eq!(q.operation, None, "empty means absent");
        assert_eq!(q.min_duration_nanos, Some(1_500_000_000));
        assert_eq!(q.limit, 5);

        let p =
            SearchParams::from_query_string("service=a&attribute=dataset%3Dorders&attribute=late")
                .unwrap();
        let q = p.into_query().unwrap();
        assert_eq!(q.attributes.len(), 2);
        assert_eq!(q.attributes[0], AttributeFilter::eq("dataset", "orders"));
        assert_eq!(q.attributes[1], AttributeFilter::exists("late"));
        assert!(SearchParams::from_query_string("service=a&service=b").is_err());
        assert!(SearchParams::from_query_string("servce=a").is_err());

        let cases = [
            (
                SearchParams {
                    limit: Some("-1".into()),
                    ..Default::default()
                },
                "limit",
            ),
            (
                SearchParams {
                    limit: Some("0".into()),
                    ..Default::default()
                },
                "limit",
            ),
            (
                SearchParams {
                    status: Some("meh".into()),
                    ..Default::default()
                },
                "status",
            ),
            (
                SearchParams {
                    start: Some("yesterday".into()),
                    ..Default::default()
                },
                "start",
            ),
            (
                SearchParams {
                    min_duration: Some("100".into()),
                    ..Default::default()
                },
                "min_duration",
            ),
            (
                SearchParams {
                    min_duration: Some("2s".into()),
                    max_duration: Some("1s".into()),
                    ..Default::default()
                },
                "max_duration",
            ),
        ];
        for (p, needle) in cases {
            let e = p.into_query().unwrap_err();
            assert!(
                e.message.contains(needle),
                "{} should mention {needle}",
                e.message
            );
        }
    }
}
