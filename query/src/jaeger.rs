//! The Jaeger-compatible read API: the classic HTTP endpoints that Jaeger UI and Grafana's
//! Jaeger data source call, on the paths Jaeger serves them, so those viewers work unchanged
//! when pointed at the query port.
//!
//! - `GET /api/services`, `GET /api/services/{service}/operations`,
//!   `GET /api/operations?service=&spanKind=`
//! - `GET /api/traces?service=&operation=&tags=&tag=&minDuration=&maxDuration=&start=&end=&limit=&lookback=`
//!   and `GET /api/traces?traceID=..&traceID=..`
//! - `GET /api/traces/{trace_id}`
//! - `GET /api/dependencies?endTs=&lookback=`
//! - api_v3 (`/api/v3/services`, `/api/v3/operations`, `/api/v3/traces/{trace_id}`,
//!   `/api/v3/traces?query.*`) answering OTLP/JSON: the `v3` module.
//!
//! Every answer is Jaeger's envelope `{data, total, limit, offset, errors}`; errors are
//! `{data: null, errors: [{code, msg}]}` with the HTTP status in `code`.
//!
//! The span mapping is the one Jaeger itself applies to OTLP, applied to the span as our
//! collector would re-export it: resource attributes (stored as `resource.<key>`) become the
//! process's tags, the OpenTelemetry kind becomes `span.kind`, the status becomes
//! `otel.status_code` / `otel.status_description` / `error`, events become logs with an
//! `event` field, the parent a `CHILD_OF` reference and links `FOLLOWS_FROM` (or `CHILD_OF`)
//! references. What OTLP cannot carry travels as tags, as it does through OTLP: a pipeline
//! step kind as `datatracing.span.kind`, TIMEOUT / CANCELLED as `datatracing.status`, and
//! link types as `datatracing.link.types` (one entry per link, in reference order) whenever
//! a link is a DATA_DEPENDENCY, which Jaeger has no reference type for.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use datatracing_core::{
    AttributeFilter, MAX_NAMES, Operation, SpanKind, StatusCode, TimeWindow, Timestamp, TraceId,
    TraceQuery,
};
use datatracing_http::ApiError;
use datatracing_store::{CappedTrace, TraceReader};

use crate::tenant::Tenanted;
use serde_json::{Value, json};

use crate::dependencies;

mod model;
mod v3;

use model::{NotFound, Trace, traces_answer};

/// Search limit when the request names none (Jaeger's own default).
const DEFAULT_SEARCH_LIMIT: usize = 100;
/// Dependencies look back this far when the request says nothing (Jaeger's default: a day).
const DEFAULT_DEPENDENCY_LOOKBACK_MS: i64 = 24 * 3600 * 1000;
/// Most trace ids one `/api/traces?traceID=` request may name.
const MAX_TRACE_IDS: usize = 100;
// The `datatracing.*` tags that carry what Jaeger's model has no field for: the step kind
// and detailed status (docs/conventions.md) and, Jaeger-only, the types of a span's links.
use datatracing_core::conventions::{SPAN_KIND as STEP_KIND_TAG, STATUS as STATUS_TAG};
const LINK_TYPES_TAG: &str = "datatracing.link.types";
const RESOURCE_PREFIX: &str = "resource.";

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Jaeger {
    pub(crate) store: Arc<dyn TraceReader>,
    /// `query.max_trace_spans`: the cap on one trace and on the spans of one search answer.
    pub(crate) max_trace_spans: usize,
}

impl crate::tenant::Scoped for Jaeger {
    fn scoped(&self, tenant: &datatracing_core::Tenant) -> Self {
        Self {
            store: crate::tenant::scope_reader(&self.store, tenant),
            ..self.clone()
        }
    }
}

pub(crate) fn routes(state: Jaeger) -> Router {
    Router::new()
        .route("/api/services", get(services))
        .route(
            "/api/services/{service}/operations",
            get(service_operations),
        )
        .route("/api/operations", get(operations))
        .route("/api/traces", get(search))
        .route("/api/traces/{trace_id}", get(get_trace))
        .route("/api/dependencies", get(dependencies))
        .merge(v3::routes())
        .with_state(state)
}

/// `e` in Jaeger's error envelope, for answers made outside a handler (the read cap).
pub(crate) fn error_response(e: ApiError) -> Response {
    JaegerError(e).into_response()
}

/// `e` in the api_v3 gateway's error shape, for answers made outside a handler.
pub(crate) fn v3_error_response(e: ApiError) -> Response {
    v3::error_response(e)
}

/// An [`ApiError`] answered in Jaeger's error envelope, with the same status code (and
/// `Retry-After` when the store is unavailable).
#[derive(Debug)]
pub(crate) struct JaegerError(ApiError);

impl<E: Into<ApiError>> From<E> for JaegerError {
    fn from(e: E) -> Self {
        JaegerError(e.into())
    }
}

impl IntoResponse for JaegerError {
    fn into_response(self) -> Response {
        let status = self.0.code.http_status();
        let body = json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": status.as_u16(), "msg": self.0.message}],
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.0.retry_after_secs
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}

type JResult = Result<axum::Json<Value>, JaegerError>;

fn bad(msg: impl Into<String>) -> JaegerError {
    JaegerError(ApiError::invalid_argument(msg))
}

/// Jaeger's success envelope. `total` is the number of items for listings and 0 for traces
/// and dependencies, as Jaeger answers.
fn envelope(data: Value, total: usize) -> axum::Json<Value> {
    axum::Json(json!({
        "data": data, "total": total, "limit": 0, "offset": 0, "errors": null,
    }))
}

/// Query-string pairs. Unknown parameters are ignored and the first of repeated ones wins,
/// as in Jaeger: viewers send parameters of their own (`lookback`, `prettyPrint`, ...).
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<&str>) -> Result<Self, JaegerError> {
        serde_urlencoded::from_str(raw.unwrap_or(""))
            .map(Params)
            .map_err(|e| bad(format!("malformed query string: {e}")))
    }

    /// The first non-empty value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

fn parse_int(name: &str, v: &str) -> Result<i64, JaegerError> {
    v.parse::<i64>().map_err(|_| {
        bad(format!(
            "unable to parse param '{name}': {:?} is not an integer",
            short(v)
        ))
    })
}

/// Microseconds (or milliseconds, `unit_nanos`) since the epoch as a timestamp.
fn epoch_param(name: &str, v: &str, unit_nanos: i64) -> Result<Timestamp, JaegerError> {
    let n = parse_int(name, v)?;
    n.checked_mul(unit_nanos)
        .map(Timestamp::from_unix_nanos)
        .ok_or_else(|| {
            bad(format!(
                "unable to parse param '{name}': {n} is out of range"
            ))
        })
}

/// A Go duration (`1.5s`, `100ms`, `1m30s`, `250us`, `250µs`, `42ns`, `2h`): what Jaeger's
/// `minDuration` / `maxDuration` / `lookback` accept. Returns nanoseconds.
pub(crate) fn parse_go_duration(s: &str) -> Option<i64> {
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * unit;
    }
    // Beyond i64 nanoseconds (292 years) is not a duration anyone searches for.
    (total.is_finite() && total < i64::MAX as f64).then_some(total.round() as i64)
}

fn duration_param(name: &str, v: Option<&str>) -> Result<Option<i64>, JaegerError> {
    v.map(|s| {
        parse_go_duration(s).ok_or_else(|| {
            bad(format!(
                "unable to parse param '{name}': invalid duration {:?}",
                short(s)
            ))
        })
    })
    .transpose()
}

/// Jaeger's trace ids: 1 to 32 hex digits, left-padded with zeros.
fn parse_trace_id(raw: &str) -> Result<TraceId, JaegerError> {
    if raw.is_empty() || raw.len() > 32 {
        return Err(bad(format!(
            "malformed trace id {:?}: expected 1 to 32 hex digits",
            short(raw)
        )));
    }
    let padded = format!("{raw:0>32}");
    TraceId::from_hex(&padded).map_err(|e| bad(format!("malformed trace id {:?}: {e}", short(raw))))
}

fn path_error(r: PathRejection) -> JaegerError {
    bad(format!("malformed path: {}", r.body_text()))
}

// ---- listings -----------------------------------------------------------------------------

#[tracing::instrument(skip_all)]
async fn services(Tenanted(j): Tenanted<Jaeger>) -> JResult {
    let services = j.store.services(&TimeWindow::default(), MAX_NAMES).await?;
    let n = services.len();
    Ok(envelope(json!(services), n))
}

fn check_service(service: &str) -> Result<(), JaegerError> {
    if service.is_empty() || service.len() > 1024 {
        return Err(bad("service must have 1 to 1024 bytes"));
    }
    Ok(())
}

#[tracing::instrument(skip_all)]
async fn service_operations(
    Tenanted(j): Tenanted<Jaeger>,
    service: Result<Path<String>, PathRejection>,
) -> JResult {
    let Path(service) = service.map_err(path_error)?;
    check_service(&service)?;
    let ops = j
        .store
        .operations(&service, &TimeWindow::default(), MAX_NAMES)
        .await?;
    // One name per operation, whatever kinds its spans have (the store sorts by name).
    let mut names: Vec<String> = ops.into_iter().map(|o| o.name).collect();
    names.dedup();
    let n = names.len();
    Ok(envelope(json!(names), n))
}

/// The OpenTelemetry kind a span has in Jaeger: pipeline step kinds are INTERNAL there (the
/// step travels in the `datatracing.span.kind` tag).
fn jaeger_kind(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        _ => "internal",
    }
}

#[tracing::instrument(skip_all)]
async fn operations(Tenanted(j): Tenanted<Jaeger>, RawQuery(raw): RawQuery) -> JResult {
    let p = Params::parse(raw.as_deref())?;
    let service = p
        .get("service")
        .ok_or_else(|| bad("parameter 'service' is required"))?;
    check_service(service)?;
    let kind = p.get("spanKind").map(str::to_ascii_lowercase);
    if let Some(k) = &kind
        && !["server", "client", "producer", "consumer", "internal"].contains(&k.as_str())
    {
        return Err(bad(format!(
            "unable to parse param 'spanKind': {:?} is not one of server, client, producer, consumer, internal",
            short(k)
        )));
    }
    let ops = j
        .store
        .operations(service, &TimeWindow::default(), MAX_NAMES)
        .await?;
    let data = operation_list(ops, kind.as_deref());
    let n = data.len();
    Ok(envelope(Value::Array(data), n))
}

/// Operations as both Jaeger APIs list them: `{name, spanKind}` with Jaeger's kind names,
/// only `kind` when given, each pair once (several step kinds map to one Jaeger kind).
pub(crate) fn operation_list(ops: Vec<Operation>, kind: Option<&str>) -> Vec<Value> {
    let mut seen = std::collections::BTreeSet::new();
    ops.into_iter()
        .map(|o| (o.name, jaeger_kind(o.span_kind)))
        .filter(|(_, k)| kind.is_none_or(|want| want == *k))
        .filter(|(name, k)| seen.insert((name.clone(), *k)))
        .map(|(name, k)| json!({"name": name, "spanKind": k}))
        .collect()
}

// ---- traces -------------------------------------------------------------------------------

#[tracing::instrument(skip_all)]
async fn get_trace(
    Tenanted(j): Tenanted<Jaeger>,
    raw_id: Result<Path<String>, PathRejection>,
) -> Result<Response, JaegerError> {
    let Path(raw_id) = raw_id.map_err(path_error)?;
    let id = parse_trace_id(&raw_id)?;
    match j.store.get_trace_capped(id, j.max_trace_spans).await? {
        Some(t) => Ok(bytes_response(traces_answer(&[Trace::capped(id, &t)], &[]))),
        None => Err(JaegerError(ApiError::not_found("trace not found"))),
    }
}

/// An answer already written as JSON (`model`), with the header `axum::Json` sets.
fn bytes_response(body: Vec<u8>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The search filters of `/api/traces` as our queries (their union is the answer).
fn search_queries(p: &Params) -> Result<Vec<TraceQuery>, JaegerError> {
    let service = p
        .get("service")
        .ok_or_else(|| bad("parameter 'service' is required"))?;
    let end = p
        .get("end")
        .map(|v| epoch_param("end", v, 1_000))
        .transpose()?;
    let start = match p.get("start") {
        Some(v) => Some(epoch_param("start", v, 1_000)?),
        // Without a start, `lookback` (a Go duration, or Jaeger UI's `custom`) bounds the
        // window back from `end` (or now); without either the window is open.
        None => match p.get("lookback").filter(|l| *l != "custom") {
            Some(l) => {
                let d = duration_param("lookback", Some(l))?.unwrap_or(0);
                Some(end.unwrap_or_else(Timestamp::now).saturating_add_nanos(-d))
            }
            None => None,
        },
    };
    let limit = match p.get("limit") {
        None => DEFAULT_SEARCH_LIMIT,
        Some(v) => {
            let n = parse_int("limit", v)?;
            // Jaeger reads 0 or less as "no preference"; above our maximum is our maximum.
            if n <= 0 {
                DEFAULT_SEARCH_LIMIT
            } else {
                usize::try_from(n).map_or(TraceQuery::MAX_LIMIT, |n| n.min(TraceQuery::MAX_LIMIT))
            }
        }
    };
    let min = duration_param("minDuration", p.get("minDuration"))?;
    let max = duration_param("maxDuration", p.get("maxDuration"))?;
    if let (Some(min), Some(max)) = (min, max)
        && max < min
    {
        return Err(bad("'maxDuration' should be greater than 'minDuration'"));
    }
    let q = TraceQuery {
        service: Some(service.to_string()),
        operation: p.get("operation").map(str::to_string),
        start,
        end,
        min_duration_nanos: min,
        max_duration_nanos: max,
        limit,
        ..TraceQuery::default()
    };
    with_tags(q, tags(p)?)
}

/// A query with Jaeger tag filters applied, as the alternatives whose union answers it.
fn with_tags(
    mut q: TraceQuery,
    tags: BTreeMap<String, String>,
) -> Result<Vec<TraceQuery>, JaegerError> {
    let mut alt = Alternatives {
        statuses: None,
        kinds: None,
    };
    for (k, v) in tags {
        apply_tag(&mut q, &mut alt, k, v)?;
    }
    if alt.kinds.is_some() && q.kind.is_some() {
        return Err(bad(format!(
            "span.kind and {STEP_KIND_TAG} cannot both be given"
        )));
    }
    q.validate()?;
    let mut out = Vec::new();
    for status in alt
        .statuses
        .map_or(vec![None], |v| v.into_iter().map(Some).collect())
    {
        for kind in alt
            .kinds
            .clone()
            .map_or(vec![q.kind], |v| v.into_iter().map(Some).collect())
        {
            out.push(TraceQuery {
                status,
                kind,
                ..q.clone()
            });
        }
    }
    Ok(out)
}

/// Tag filters: `tag=key:value` (repeatable) and `tags=`, a JSON object of strings or, as
/// Grafana's search form writes them, logfmt (`key=value key2="a b"`).
fn tags(p: &Params) -> Result<BTreeMap<String, String>, JaegerError> {
    let mut out = BTreeMap::new();
    for t in p.all("tag") {
        let (k, v) = t.split_once(':').ok_or_else(|| {
            bad(format!(
                "malformed 'tag' parameter, expecting key:value, received: {}",
                short(t)
            ))
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    for t in p.all("tags") {
        if t.trim_start().starts_with('{') {
            let map: BTreeMap<String, String> = serde_json::from_str(t).map_err(|e| {
                bad(format!(
                    "malformed 'tags' parameter, cannot unmarshal JSON: {e}"
                ))
            })?;
            out.extend(map);
        } else {
            out.extend(
                parse_logfmt(t).map_err(|e| bad(format!("malformed 'tags' parameter: {e}")))?,
            );
        }
    }
    Ok(out)
}

/// logfmt pairs: `key=value`, values optionally double-quoted with `\"` and `\\` escapes;
/// a bare `key` means `key=true`, as logfmt defines.
pub(crate) fn parse_logfmt(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            if c == '"' {
                return Err(format!("unexpected quote in key after {:?}", short(&key)));
            }
            key.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            out.push((key, "true".to_string()));
            continue;
        }
        chars.next();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of {:?}", short(&key))),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(format!("unterminated quoted value of {:?}", short(&key)));
                        }
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if key.is_empty() {
            return Err("a pair has an empty key".into());
        }
        out.push((key, value));
    }
}

/// A search is the union of one or more store queries: Jaeger's `error=true` and
/// `span.kind=internal` each stand for several of our status codes or kinds.
struct Alternatives {
    statuses: Option<Vec<StatusCode>>,
    kinds: Option<Vec<SpanKind>>,
}

/// The statuses Jaeger shows as `error=true` / `otel.status_code=ERROR`.
const ERROR_STATUSES: &[StatusCode] = &[
    StatusCode::Error,
    StatusCode::Timeout,
    StatusCode::Cancelled,
];

/// One tag filter. The tags Jaeger derives from span fields filter those fields (`error`,
/// `otel.status_code`, `span.kind`, `datatracing.span.kind`, `datatracing.status`); any
/// other key is a span attribute compared as text. Process tags are the `resource.<key>`
/// attributes: filter them under that name.
fn apply_tag(
    q: &mut TraceQuery,
    alt: &mut Alternatives,
    key: String,
    value: String,
) -> Result<(), JaegerError> {
    let invalid = |what: &str| bad(format!("tag {key}: {:?} is not {what}", short(&value)));
    match key.as_str() {
        "error" => match value.as_str() {
            "true" => alt.statuses = Some(ERROR_STATUSES.to_vec()),
            // OTLP spans never carry `error=false`; a span attribute of that name might.
            "false" => q.attributes.push(AttributeFilter::eq(key, value)),
            _ => return Err(invalid("true or false")),
        },
        "otel.status_code" => {
            alt.statuses = Some(match value.to_ascii_uppercase().as_str() {
                "OK" => vec![StatusCode::Ok],
                "ERROR" => ERROR_STATUSES.to_vec(),
                _ => return Err(invalid("OK or ERROR")),
            });
        }
        STATUS_TAG => {
            alt.statuses = Some(vec![
                value
                    .parse::<StatusCode>()
                    .map_err(|_| invalid("a status code"))?,
            ]);
        }
        "span.kind" => {
            alt.kinds = Some(match value.to_ascii_lowercase().as_str() {
                "server" => vec![SpanKind::Server],
                "client" => vec![SpanKind::Client],
                "producer" => vec![SpanKind::Producer],
                "consumer" => vec![SpanKind::Consumer],
                // Pipeline step kinds are INTERNAL spans in Jaeger's view.
                "internal" => SpanKind::ALL
                    .iter()
                    .copied()
                    .filter(|k| jaeger_kind(*k) == "internal")
                    .collect(),
                _ => return Err(invalid("server, client, producer, consumer or internal")),
            });
        }
        STEP_KIND_TAG => {
            q.kind = Some(value.parse().map_err(|_| invalid("a step kind"))?);
        }
        _ => q.attributes.push(AttributeFilter::eq(key, value)),
    }
    Ok(())
}

/// The union of the alternatives' results, newest first, at most the queries' `limit`.
async fn find(
    j: &Jaeger,
    queries: &[TraceQuery],
) -> Result<Vec<datatracing_core::TraceSummary>, JaegerError> {
    let limit = queries.first().map_or(DEFAULT_SEARCH_LIMIT, |q| q.limit);
    let mut found: Vec<datatracing_core::TraceSummary> = Vec::new();
    for q in queries {
        for t in j.store.search(q).await?.traces {
            if !found.iter().any(|f| f.trace_id == t.trace_id) {
                found.push(t);
            }
        }
    }
    found.sort_by(|a, b| {
        b.start_time
            .cmp(&a.start_time)
            .then(a.trace_id.cmp(&b.trace_id))
    });
    found.truncate(limit);
    Ok(found)
}

/// The ids of [`find`]'s answer. One query (the usual case) needs no summaries: its
/// page's ids in the store's order (newest matching span first), read without them.
async fn find_ids(j: &Jaeger, queries: &[TraceQuery]) -> Result<Vec<TraceId>, JaegerError> {
    match queries {
        [q] => Ok(j.store.search_ids(q).await?),
        _ => Ok(find(j, queries).await?.iter().map(|s| s.trace_id).collect()),
    }
}

#[tracing::instrument(skip_all)]
async fn search(
    Tenanted(j): Tenanted<Jaeger>,
    RawQuery(raw): RawQuery,
) -> Result<Response, JaegerError> {
    let p = Params::parse(raw.as_deref())?;
    let ids: Vec<&str> = p.all("traceID").collect();
    if !ids.is_empty() {
        return traces_by_id(&j, &ids).await;
    }
    let ids = find_ids(&j, &search_queries(&p)?).await?;
    // One answer holds at most `max_trace_spans` spans, like one trace: later traces are
    // left out once the budget is spent (the cut trace says so in its warnings). One
    // batched read for all of them.
    let traces = j.store.get_traces_capped(&ids, j.max_trace_spans).await?;
    if traces.iter().map(|(_, t)| t.spans.len()).sum::<usize>() >= j.max_trace_spans
        && traces.len() < ids.len()
    {
        tracing::info!(
            max_spans = j.max_trace_spans,
            "jaeger search answer cut at the span budget"
        );
    }
    let data: Vec<Trace<'_>> = traces.iter().map(|(id, t)| Trace::capped(*id, t)).collect();
    Ok(bytes_response(traces_answer(&data, &[])))
}

/// `/api/traces?traceID=a&traceID=b`: the traces found, in the order asked. Each unknown id
/// is an entry in `errors` beside the data, with status 200 even when none is found, as
/// Jaeger answers.
async fn traces_by_id(j: &Jaeger, raw: &[&str]) -> Result<Response, JaegerError> {
    if raw.len() > MAX_TRACE_IDS {
        return Err(bad(format!(
            "at most {MAX_TRACE_IDS} traceID parameters are allowed"
        )));
    }
    let ids = raw
        .iter()
        .map(|r| {
            parse_trace_id(r)
                .map_err(|e| bad(format!("cannot parse traceID param: {}", e.0.message)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut found: std::collections::HashMap<TraceId, CappedTrace> = j
        .store
        .get_traces_capped(&ids, j.max_trace_spans)
        .await?
        .into_iter()
        .collect();
    // The answer follows the ids asked: an id absent while budget was left is unknown; once
    // the budget is spent the rest is left out, as the store's read does. An id asked twice
    // is answered once.
    let mut answered = std::collections::HashSet::new();
    let mut budget = j.max_trace_spans;
    let mut kept = Vec::new();
    let mut missing = Vec::new();
    for id in ids {
        if answered.contains(&id) {
            continue;
        }
        if let Some(t) = found.remove(&id) {
            budget = budget.saturating_sub(t.spans.len());
            kept.push((id, t));
            answered.insert(id);
        } else if budget > 0 {
            missing.push(NotFound { trace_id: id });
        } else {
            break;
        }
    }
    let data: Vec<Trace<'_>> = kept.iter().map(|(id, t)| Trace::capped(*id, t)).collect();
    Ok(bytes_response(traces_answer(&data, &missing)))
}

/// Jaeger's text for a trace id: 16 hex digits when the high half is zero (a 64-bit id),
/// else 32. Viewers pass it back as is; [`parse_trace_id`] pads it again. (Answers write it
/// with `model`'s writer; this form is what the tests compare with.)
#[cfg(test)]
fn jaeger_id_text(id: TraceId) -> String {
    let hex = id.to_hex();
    match hex.strip_prefix("0000000000000000") {
        Some(low) => low.to_string(),
        None => hex,
    }
}

// ---- dependencies -------------------------------------------------------------------------

#[tracing::instrument(skip_all)]
async fn dependencies(Tenanted(j): Tenanted<Jaeger>, RawQuery(raw): RawQuery) -> JResult {
    let p = Params::parse(raw.as_deref())?;
    let end = match p.get("endTs") {
        Some(v) => epoch_param("endTs", v, 1_000_000)?,
        None => Timestamp::now(),
    };
    let lookback_ms = match p.get("lookback") {
        Some(v) => parse_int("lookback", v)?,
        None => DEFAULT_DEPENDENCY_LOOKBACK_MS,
    };
    if lookback_ms < 0 {
        return Err(bad(
            "unable to parse param 'lookback': must not be negative",
        ));
    }
    let start = end.saturating_add_nanos(-lookback_ms.saturating_mul(1_000_000));
    let window = TimeWindow {
        start: Some(start),
        end: Some(end),
    };
    let deps = dependencies::compute(j.store.as_ref(), window, j.max_trace_spans).await?;
    let data: Vec<Value> = deps
        .edges
        .into_iter()
        .map(|e| json!({"parent": e.parent, "child": e.child, "callCount": e.call_count}))
        .collect();
    Ok(envelope(Value::Array(data), 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_go_duration("250us"), Some(250_000));
        assert_eq!(parse_go_duration("250µs"), Some(250_000));
        assert_eq!(parse_go_duration("42ns"), Some(42));
        assert_eq!(parse_go_duration("0"), Some(0));
        for bad in ["", "10", "-1s", "1x", "s", "1.2.3s", "9999999999h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn logfmt() {
        assert_eq!(
            parse_logfmt(r#"a=1 b="x y" c d="q\"e""#).unwrap(),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".into(), "x y".into()),
                ("c".into(), "true".into()),
                ("d".into(), "q\"e".into()),
            ]
        );
        assert!(parse_logfmt(r#"a="open"#).is_err());
        assert!(parse_logfmt("=v").is_err());
    }

    #[test]
    fn trace_ids_pad_like_jaeger() {
        assert_eq!(
            parse_trace_id("1234").unwrap().to_hex(),
            "00000000000000000000000000001234"
        );
        assert!(parse_trace_id("zz").is_err());
        // 64-bit ids are written in 16 digits, as Jaeger does, and read back padded.
        let short = parse_trace_id("abc").unwrap();
        assert_eq!(jaeger_id_text(short), "0000000000000abc");
        assert_eq!(parse_trace_id(&jaeger_id_text(short)).unwrap(), short);
        let long = parse_trace_id("1000000000000000abc").unwrap();
        assert_eq!(jaeger_id_text(long), "00000000000001000000000000000abc");
        assert!(parse_trace_id(&"1".repeat(33)).is_err());
    }

    #[test]
    fn floats_print_like_go() {
        assert_eq!(model::go_float(3.0), "3");
        assert_eq!(model::go_float(2.5), "2.5");
        assert_eq!(model::go_float(-1.0), "-1");
    }
}
