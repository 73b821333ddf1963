//! The query HTTP API.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use datatracing_core::{AttributeFilter, TraceDag, TraceId, TraceQuery, parse_duration_ns};
use datatracing_http::ApiError;
use datatracing_store::TraceReader;

pub(crate) fn routes(store: Arc<dyn TraceReader>) -> Router {
    Router::new()
        .route("/api/v1/traces", get(search))
        .route("/api/v1/traces/{trace_id}", get(get_trace))
        .with_state(store)
}

#[tracing::instrument(skip_all, fields(trace_id = %raw_id))]
async fn get_trace(
    State(store): State<Arc<dyn TraceReader>>,
    Path(raw_id): Path<String>,
) -> Result<axum::Json<TraceDag>, ApiError> {
    let trace_id: TraceId = raw_id
        .parse()
        .map_err(|e| ApiError::invalid_argument(format!("malformed trace id: {e}")))?;
    let spans = store
        .get_trace(trace_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("trace {trace_id} not found")))?;
    let dag = TraceDag::build(trace_id, spans)
        .ok_or_else(|| ApiError::not_found(format!("trace {trace_id} not found")))?;
    Ok(axum::Json(dag))
}

/// Raw search parameters; every value is parsed with its own precise error.
/// `attribute` may repeat (`attribute=dataset=orders&attribute=late`).
#[derive(Debug, Default)]
pub(crate) struct SearchParams {
    service: Option<String>,
    operation: Option<String>,
    status: Option<String>,
    start: Option<String>,
    end: Option<String>,
    min_duration: Option<String>,
    max_duration: Option<String>,
    limit: Option<String>,
    attribute: Vec<String>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

impl SearchParams {
    /// Reads a raw query string; unknown or repeated single-valued parameters are errors.
    pub(crate) fn from_query_string(raw: &str) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
            .map_err(|e| ApiError::invalid_argument(format!("malformed query string: {e}")))?;
        let mut p = SearchParams::default();
        for (k, v) in pairs {
            let slot = match k.as_str() {
                "service" => &mut p.service,
                "operation" => &mut p.operation,
                "status" => &mut p.status,
                "start" => &mut p.start,
                "end" => &mut p.end,
                "min_duration" => &mut p.min_duration,
                "max_duration" => &mut p.max_duration,
                "limit" => &mut p.limit,
                "attribute" => {
                    p.attribute.push(v);
                    continue;
                }
                other => {
                    return Err(ApiError::invalid_argument(format!(
                        "unknown parameter {other:?}; expected service, operation, status, start, end, \
                         min_duration, max_duration, limit or attribute"
                    )));
                }
            };
            if slot.replace(v).is_some() {
                return Err(ApiError::invalid_argument(format!(
                    "parameter {k} given twice"
                )));
            }
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
            Some(s) => s
                .parse::<usize>()
                .map_err(|_| bad("limit", &format!("{s:?} is not a positive integer")))?,
        };
        let attributes = self
            .attribute
            .iter()
            .map(|a| AttributeFilter::parse(a).map_err(|e| bad("attribute", &e)))
            .collect::<Result<Vec<_>, _>>()?;
        let q = TraceQuery {
            service: non_empty(self.service),
            operation: non_empty(self.operation),
            status: non_empty(self.status)
                .map(|s| s.parse().map_err(|e| bad("status", &e)))
                .transpose()?,
            start: time("start", self.start)?,
            end: time("end", self.end)?,
            min_duration_nanos: dur("min_duration", self.min_duration)?,
            max_duration_nanos: dur("max_duration", self.max_duration)?,
            attributes,
            limit,
            ..TraceQuery::default()
        };
        q.validate()?;
        Ok(q)
    }
}

#[tracing::instrument(skip_all)]
async fn search(
    State(store): State<Arc<dyn TraceReader>>,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let query = SearchParams::from_query_string(raw.as_deref().unwrap_or(""))?.into_query()?;
    let page = store.search(&query).await?;
    Ok(axum::Json(serde_json::json!({
        "traces": page.traces,
        "limit": query.limit,
    })))
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
