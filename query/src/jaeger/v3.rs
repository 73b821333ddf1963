//! Jaeger's api_v3 over HTTP, which newer Jaeger UI releases call: `GET /api/v3/services`,
//! `/api/v3/operations?service=&span_kind=`, `/api/v3/traces/{trace_id}` and
//! `/api/v3/traces?query.*`, answering OTLP/JSON (`{"result": {"resourceSpans": [...]}}`)
//! and errors as `{"error": {"httpCode", "message"}}`.
//!
//! Spans are given back as the OTLP our collector took in: `service.name` and the
//! `resource.<key>` attributes form the resource, `otel.scope.name` / `.version` the scope,
//! a pipeline step kind is an INTERNAL span with `datatracing.span.kind`, TIMEOUT and
//! CANCELLED are ERROR with `datatracing.status`, and every link carries its type in
//! `datatracing.link.type` (`follows_from`, `data_dependency`, `child_of`).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery};
use axum::http::StatusCode as Http;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use datatracing_core::{
    AttributeValue, Attributes, LinkType, MAX_NAMES, Span, SpanKind, StatusCode, TimeWindow,
    Timestamp, TraceQuery,
};
use datatracing_http::ApiError;
use serde_json::{Value, json};

use crate::tenant::Tenanted;

use super::{
    Jaeger, JaegerError, Params, RESOURCE_PREFIX, STATUS_TAG, STEP_KIND_TAG, check_service, find,
    parse_go_duration, parse_trace_id, short, with_tags,
};

/// Traces a v3 search returns when `query.num_traces` is absent (Jaeger refuses that).
const DEFAULT_NUM_TRACES: usize = 20;
/// Header set on a trace answer cut at `query.max_trace_spans` (OTLP has no place for it).
const TRUNCATED_HEADER: &str = "x-datatracing-truncated";
use datatracing_core::conventions::LINK_TYPE as LINK_TYPE_ATTR;
const SCOPE_NAME: &str = "otel.scope.name";
const SCOPE_VERSION: &str = "otel.scope.version";

pub(super) fn routes() -> Router<Jaeger> {
    Router::new()
        .route("/api/v3/services", get(services))
        .route("/api/v3/operations", get(operations))
        .route("/api/v3/traces", get(find_traces))
        .route("/api/v3/traces/{trace_id}", get(get_trace))
}

/// An error in the api_v3 gateway's shape.
#[derive(Debug)]
struct V3Error(ApiError);

impl From<JaegerError> for V3Error {
    fn from(e: JaegerError) -> Self {
        V3Error(e.0)
    }
}

impl From<datatracing_store::Error> for V3Error {
    fn from(e: datatracing_store::Error) -> Self {
        V3Error(e.into())
    }
}

impl IntoResponse for V3Error {
    fn into_response(self) -> Response {
        let status = self.0.code.http_status();
        let body = json!({"error": {"httpCode": status.as_u16(), "message": self.0.message}});
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

/// `e` in this API's error shape.
pub(super) fn error_response(e: ApiError) -> Response {
    V3Error(e).into_response()
}

fn malformed(param: &str, e: impl std::fmt::Display) -> V3Error {
    V3Error(ApiError::invalid_argument(format!(
        "malformed parameter {param}: {e}"
    )))
}

fn not_found() -> V3Error {
    V3Error(ApiError::not_found("No traces found"))
}

fn rfc3339(param: &str, v: &str) -> Result<Timestamp, V3Error> {
    Timestamp::parse_rfc3339(v).map_err(|e| malformed(param, e))
}

#[tracing::instrument(skip_all)]
async fn services(Tenanted(j): Tenanted<Jaeger>) -> Result<axum::Json<Value>, V3Error> {
    let services = j.store.services(&TimeWindow::default(), MAX_NAMES).await?;
    Ok(axum::Json(json!({ "services": services })))
}

/// Like Jaeger, a missing service or an unknown kind is an empty list, not an error.
#[tracing::instrument(skip_all)]
async fn operations(
    Tenanted(j): Tenanted<Jaeger>,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<Value>, V3Error> {
    let p = Params::parse(raw.as_deref())?;
    let Some(service) = p.get("service") else {
        return Ok(axum::Json(json!({"operations": []})));
    };
    check_service(service)?;
    let kind = p.get("span_kind").map(str::to_ascii_lowercase);
    let ops = j
        .store
        .operations(service, &TimeWindow::default(), MAX_NAMES)
        .await?;
    let operations = super::operation_list(ops, kind.as_deref());
    Ok(axum::Json(json!({ "operations": operations })))
}

#[tracing::instrument(skip_all)]
async fn get_trace(
    Tenanted(j): Tenanted<Jaeger>,
    raw_id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, V3Error> {
    let Path(raw_id) = raw_id.map_err(|r| malformed("trace_id", r.body_text()))?;
    let id = parse_trace_id(&raw_id).map_err(|e| malformed("trace_id", e.0.message))?;
    // The window only narrows where Jaeger looks; a trace is read whole here, but the
    // parameters are still checked.
    let p = Params::parse(raw.as_deref())?;
    for param in ["start_time", "end_time"] {
        if let Some(v) = p.get(param) {
            rfc3339(param, v)?;
        }
    }
    let capped = j
        .store
        .get_trace_capped(id, j.max_trace_spans)
        .await?
        .ok_or_else(not_found)?;
    let mut resp = axum::Json(json!({"result": traces_data(&capped.spans)})).into_response();
    if capped.truncated {
        resp.headers_mut().insert(
            TRUNCATED_HEADER,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

#[tracing::instrument(skip_all)]
async fn find_traces(
    Tenanted(j): Tenanted<Jaeger>,
    RawQuery(raw): RawQuery,
) -> Result<Response, V3Error> {
    let p = Params::parse(raw.as_deref())?;
    let (Some(min), Some(max)) = (p.get("query.start_time_min"), p.get("query.start_time_max"))
    else {
        return Err(V3Error(ApiError::invalid_argument(
            "query.start_time_min and query.start_time_max are required",
        )));
    };
    let start = rfc3339("query.start_time_min", min)?;
    let end = rfc3339("query.start_time_max", max)?;
    let limit = match p
        .get("query.num_traces")
        .map(|v| ("query.num_traces", v))
        .or_else(|| {
            p.get("query.search_depth")
                .map(|v| ("query.search_depth", v))
        }) {
        None => DEFAULT_NUM_TRACES,
        Some((param, v)) => match v.parse::<i64>() {
            Ok(n) if n > 0 => {
                usize::try_from(n).map_or(TraceQuery::MAX_LIMIT, |n| n.min(TraceQuery::MAX_LIMIT))
            }
            _ => {
                return Err(malformed(
                    param,
                    format!("{:?} is not a positive integer", short(v)),
                ));
            }
        },
    };
    let duration = |param: &str| -> Result<Option<i64>, V3Error> {
        p.get(param)
            .map(|v| {
                parse_go_duration(v)
                    .ok_or_else(|| malformed(param, format!("invalid duration {:?}", short(v))))
            })
            .transpose()
    };
    let min_duration = duration("query.duration_min")?;
    let max_duration = duration("query.duration_max")?;
    let tags: BTreeMap<String, String> = match p.get("query.attributes") {
        None => BTreeMap::new(),
        Some(v) => serde_json::from_str(v).map_err(|e| malformed("query.attributes", e))?,
    };
    let q = TraceQuery {
        service: p.get("query.service_name").map(str::to_string),
        operation: p.get("query.operation_name").map(str::to_string),
        start: Some(start),
        end: Some(end),
        min_duration_nanos: min_duration,
        max_duration_nanos: max_duration,
        limit,
        ..TraceQuery::default()
    };
    let found = find(&j, &with_tags(q, tags)?).await?;
    // The answer holds at most `max_trace_spans` spans, as the classic search: one
    // batched read, cut where the budget ends.
    let ids: Vec<datatracing_core::TraceId> = found.iter().map(|t| t.trace_id).collect();
    let traces = j.store.get_traces_capped(&ids, j.max_trace_spans).await?;
    let read: usize = traces.iter().map(|(_, t)| t.spans.len()).sum();
    let last_read = traces
        .last()
        .and_then(|(last, _)| ids.iter().position(|id| id == last));
    let truncated = traces.iter().any(|(_, t)| t.truncated)
        || (read >= j.max_trace_spans && last_read.is_some_and(|p| p + 1 < ids.len()));
    let mut spans = Vec::with_capacity(read);
    for (_, t) in traces {
        spans.extend(t.spans);
    }
    // Jaeger answers an empty search with 404; viewers expect that.
    if spans.is_empty() {
        return Err(not_found());
    }
    let mut resp = (Http::OK, axum::Json(json!({"result": traces_data(&spans)}))).into_response();
    if truncated {
        resp.headers_mut().insert(
            TRUNCATED_HEADER,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

// ---- OTLP/JSON ----------------------------------------------------------------------------

fn any_value(v: &AttributeValue) -> Value {
    fn arr(values: Vec<Value>) -> Value {
        json!({"arrayValue": {"values": values}})
    }
    match v {
        AttributeValue::String(s) => json!({ "stringValue": s }),
        // OTLP/JSON writes 64-bit integers as strings.
        AttributeValue::Int(i) => json!({"intValue": i.to_string()}),
        AttributeValue::Float(f) => json!({ "doubleValue": f }),
        AttributeValue::Bool(b) => json!({ "boolValue": b }),
        AttributeValue::StringArray(a) => {
            arr(a.iter().map(|s| json!({"stringValue": s})).collect())
        }
        AttributeValue::IntArray(a) => arr(a
            .iter()
            .map(|i| json!({"intValue": i.to_string()}))
            .collect()),
        AttributeValue::FloatArray(a) => arr(a.iter().map(|f| json!({"doubleValue": f})).collect()),
        AttributeValue::BoolArray(a) => arr(a.iter().map(|b| json!({"boolValue": b})).collect()),
    }
}

fn key_values<'a>(attrs: impl IntoIterator<Item = (&'a str, &'a AttributeValue)>) -> Vec<Value> {
    let mut out: Vec<(&str, Value)> = attrs
        .into_iter()
        .map(|(k, v)| (k, json!({"key": k, "value": any_value(v)})))
        .collect();
    out.sort_by(|a, b| a.0.cmp(b.0));
    out.into_iter().map(|(_, v)| v).collect()
}

fn nanos_text(t: Timestamp) -> String {
    t.unix_nanos().max(0).to_string()
}

/// The span's resource (service and `resource.*` attributes) and scope, as OTLP/JSON.
fn resource_and_scope(s: &Span) -> (Value, Value) {
    let service = AttributeValue::String(s.service.clone());
    let resource = key_values(
        std::iter::once(("service.name", &service)).chain(
            s.attributes
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(RESOURCE_PREFIX).map(|k| (k, v))),
        ),
    );
    let mut scope = serde_json::Map::new();
    for (attr, field) in [(SCOPE_NAME, "name"), (SCOPE_VERSION, "version")] {
        if let Some(AttributeValue::String(v)) = s.attributes.get(attr) {
            scope.insert(field.into(), json!(v));
        }
    }
    (json!({ "attributes": resource }), Value::Object(scope))
}

fn otlp_span(s: &Span) -> Value {
    let mut extra = Attributes::new();
    let kind = match s.kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
        SpanKind::Internal => 1,
        step => {
            extra.insert(
                STEP_KIND_TAG.into(),
                AttributeValue::String(step.as_str().into()),
            );
            1
        }
    };
    let code = match s.status.code {
        StatusCode::Unset => 0,
        StatusCode::Ok => 1,
        StatusCode::Error => 2,
        detailed => {
            extra.insert(
                STATUS_TAG.into(),
                AttributeValue::String(detailed.as_str().into()),
            );
            2
        }
    };
    let attributes = key_values(
        s.attributes
            .iter()
            .filter(|(k, _)| {
                !k.starts_with(RESOURCE_PREFIX) && *k != SCOPE_NAME && *k != SCOPE_VERSION
            })
            .chain(extra.iter())
            .map(|(k, v)| (k.as_str(), v)),
    );
    let mut status = serde_json::Map::new();
    if let Some(m) = &s.status.message {
        status.insert("message".into(), json!(m));
    }
    if code != 0 {
        status.insert("code".into(), json!(code));
    }
    let mut span = json!({
        "traceId": s.trace_id.to_hex(),
        "spanId": s.span_id.to_hex(),
        "name": s.operation,
        "kind": kind,
        "startTimeUnixNano": nanos_text(s.start_time),
        "endTimeUnixNano": nanos_text(s.end_time),
        "status": status,
    });
    if let Some(p) = s.parent_id {
        span["parentSpanId"] = json!(p.to_hex());
    }
    if !attributes.is_empty() {
        span["attributes"] = Value::Array(attributes);
    }
    if !s.events.is_empty() {
        span["events"] = s
            .events
            .iter()
            .map(|e| {
                let mut ev = json!({"timeUnixNano": nanos_text(e.time), "name": e.name});
                if !e.attributes.is_empty() {
                    ev["attributes"] = Value::Array(key_values(
                        e.attributes.iter().map(|(k, v)| (k.as_str(), v)),
                    ));
                }
                ev
            })
            .collect();
    }
    if !s.links.is_empty() {
        span["links"] = s
            .links
            .iter()
            .map(|l| {
                let ty = AttributeValue::String(
                    match l.link_type {
                        LinkType::ChildOf => "child_of",
                        LinkType::FollowsFrom => "follows_from",
                        LinkType::DataDependency => "data_dependency",
                    }
                    .into(),
                );
                let attrs = key_values(
                    l.attributes
                        .iter()
                        .map(|(k, v)| (k.as_str(), v))
                        .chain(std::iter::once((LINK_TYPE_ATTR, &ty))),
                );
                json!({"traceId": l.trace_id.to_hex(), "spanId": l.span_id.to_hex(), "attributes": attrs})
            })
            .collect();
    }
    span
}

/// A scope and its spans, as OTLP/JSON values.
type ScopeGroup = (Value, Vec<Value>);

/// `TracesData` as OTLP/JSON: spans grouped by resource, then scope, in order of first use.
pub(super) fn traces_data(spans: &[Span]) -> Value {
    let mut groups: Vec<(Value, Vec<ScopeGroup>)> = Vec::new();
    for s in spans {
        let (resource, scope) = resource_and_scope(s);
        let gi = match groups.iter().position(|(r, _)| *r == resource) {
            Some(i) => i,
            None => {
                groups.push((resource, Vec::new()));
                groups.len() - 1
            }
        };
        let scopes = &mut groups[gi].1;
        let si = match scopes.iter().position(|(sc, _)| *sc == scope) {
            Some(i) => i,
            None => {
                scopes.push((scope, Vec::new()));
                scopes.len() - 1
            }
        };
        scopes[si].1.push(otlp_span(s));
    }
    let resource_spans: Vec<Value> = groups
        .into_iter()
        .map(|(resource, scopes)| {
            let scope_spans: Vec<Value> = scopes
                .into_iter()
                .map(|(scope, spans)| json!({"scope": scope, "spans": spans}))
                .collect();
            json!({"resource": resource, "scopeSpans": scope_spans})
        })
        .collect();
    json!({ "resourceSpans": resource_spans })
}
