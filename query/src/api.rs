//! The query HTTP API.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use datatracing_core::{TraceDag, TraceId, TraceQuery, parse_duration_ns};
use datatracing_http::ApiError;
use datatracing_store::TraceStore;
use serde::Deserialize;

pub(crate) fn routes(store: Arc<dyn TraceStore>) -> Router {
    Router::new()
        .route("/api/v1/traces", get(search))
        .route("/api/v1/traces/{trace_id}", get(get_trace))
        .with_state(store)
}

#[tracing::instrument(skip_all, fields(trace_id = %raw_id))]
async fn get_trace(
    State(store): State<Arc<dyn TraceStore>>,
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
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchParams {
    service: Option<String>,
    operation: Option<String>,
    status: Option<String>,
    start: Option<String>,
    end: Option<String>,
    min_duration: Option<String>,
    max_duration: Option<String>,
    limit: Option<String>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

impl SearchParams {
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
            limit,
        };
        q.validate()?;
        Ok(q)
    }
}

#[tracing::instrument(skip_all)]
async fn search(
    State(store): State<Arc<dyn TraceStore>>,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let Query(params) = params?;
    let query = params.into_query()?;
    let traces = store.search(&query).await?;
    Ok(axum::Json(serde_json::json!({
        "traces": traces,
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
