//! The receive stage for the native JSON protocol: `POST /api/v1/spans`.
//!
//! A batch is parsed span by span, so one malformed span is rejected with its index and
//! reason while the others are accepted.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use datatracing_core::{Span, Tenant};
use datatracing_http::{ApiError, ErrorCode, ErrorDetail, Principal};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ingest::{Ingest, IngestError, Protocol};
use crate::otlp::decode::DecodePool;
use datatracing_config::CollectorConfig;

const PROTOCOL: Protocol = Protocol::NativeJson;
/// Details listed in one response at most; the counts always cover everything.
const MAX_DETAILS: usize = 100;

#[derive(Clone, Debug)]
pub(crate) struct ReceiveState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ingest: Ingest,
    max_spans: usize,
    max_body: usize,
    /// Parsing runs on the OTLP decode pool's blocking slots, off the async workers.
    pool: DecodePool,
}

impl ReceiveState {
    pub(crate) fn new(config: &CollectorConfig, ingest: Ingest, pool: DecodePool) -> Self {
        Self {
            inner: Arc::new(Inner {
                ingest,
                max_spans: config.max_spans_per_request,
                max_body: config.max_body_bytes,
                pool,
            }),
        }
    }
}

pub(crate) fn routes(state: ReceiveState) -> Router {
    let max_body = state.inner.max_body;
    Router::new()
        .route("/api/v1/spans", post(post_spans))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    #[serde(borrow)]
    spans: Vec<&'a RawValue>,
}

/// What parsing and validating a batch produced.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub valid: Vec<Span>,
    pub rejected: usize,
    pub details: Vec<ErrorDetail>,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Strips serde_json's " at line L column C" suffix: positions inside one span's text only
/// confuse clients, who get the span index and field path instead.
fn clean_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The number of spans in a batch, counted without keeping them: a list of a million `{}`
/// would otherwise take 16 bytes per element (5x the body) before the limit is checked.
#[derive(Deserialize)]
struct SpanCount {
    #[serde(default)]
    spans: Count,
}

#[derive(Default)]
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of spans")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(V)
    }
}

pub(crate) fn parse_batch(
    body: &[u8],
    ingest: &Ingest,
    max_spans: usize,
) -> Result<Parsed, ApiError> {
    // Count first; shape errors are reported by the parse below, with its message.
    if let Ok(SpanCount { spans: Count(n) }) = serde_json::from_slice::<SpanCount>(body)
        && n > max_spans
    {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("{n} spans in one request exceed the limit of {max_spans}; split the batch"),
        ));
    }
    let batch: Batch<'_> = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("request body must be a JSON object {{\"spans\": [...]}}: {e}"),
        )
    })?;
    if batch.spans.len() > max_spans {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "{} spans in one request exceed the limit of {max_spans}; split the batch",
                batch.spans.len()
            ),
        ));
    }
    let mut out = Parsed {
        valid: Vec::with_capacity(batch.spans.len()),
        ..Parsed::default()
    };
    let reject = |out: &mut Parsed, index: usize, field: Option<String>, message: String| {
        if out.details.len() < MAX_DETAILS {
            out.details.push(ErrorDetail {
                index: Some(index),
                field,
                message,
            });
        }
    };
    let now = datatracing_core::Timestamp::now();
    for (index, raw) in batch.spans.iter().enumerate() {
        let mut de = serde_json::Deserializer::from_str(raw.get());
        match serde_path_to_error::deserialize::<_, Span>(&mut de) {
            Ok(mut span) => {
                let errors = ingest.prepare(Protocol::NativeJson, now, &mut span);
                if errors.is_empty() {
                    out.valid.push(span);
                } else {
                    out.rejected += 1;
                    for e in errors {
                        reject(&mut out, index, Some(e.field), e.message);
                    }
                }
            }
            Err(e) => {
                out.rejected += 1;
                let path = e.path().to_string();
                let field = (path != ".").then_some(path);
                reject(&mut out, index, field, clean_message(e.inner()));
            }
        }
    }
    Ok(out)
}

#[tracing::instrument(
    name = "receive",
    skip_all,
    fields(protocol = PROTOCOL.label(), bytes = body.as_ref().map_or(0, |b| b.len()))
)]
async fn post_spans(
    State(state): State<ReceiveState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<serde_json::Value>), ApiError> {
    let s = &state.inner;
    let tenant = principal.map_or_else(Tenant::default_tenant, |p| p.0.tenant);
    if !is_json(&headers) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "Content-Type must be application/json",
        ));
    }
    let body = body?;
    let (ingest, max_spans) = (s.ingest.clone(), s.max_spans);
    let parsed = s
        .pool
        .run_blocking(move || parse_batch(&body, &ingest, max_spans))
        .await
        .map_err(|e| e.to_api())
        .and_then(|r| r);
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            let reason = if e.code == ErrorCode::PayloadTooLarge {
                "too_large"
            } else {
                "invalid"
            };
            s.ingest.metrics.reject(PROTOCOL.label(), reason, 1);
            s.ingest
                .logs
                .client_error(PROTOCOL.label(), reason, &e.message);
            return Err(e);
        }
    };
    if let Some(d) = parsed.details.first() {
        let detail = format!(
            "span {}: {}: {}",
            d.index.unwrap_or(0),
            d.field.as_deref().unwrap_or("-"),
            d.message
        );
        s.ingest
            .logs
            .client_error(PROTOCOL.label(), "invalid_span", &detail);
    }
    if parsed.valid.is_empty() && parsed.rejected > 0 {
        s.ingest
            .submit(PROTOCOL, &tenant, Vec::new(), parsed.rejected)
            .await
            .ok();
        return Err(ApiError::new(
            ErrorCode::InvalidSpans,
            format!("all {} spans were rejected", parsed.rejected),
        )
        .with_details(parsed.details));
    }
    let accepted = match s
        .ingest
        .submit(PROTOCOL, &tenant, parsed.valid, parsed.rejected)
        .await
    {
        Ok(n) => n,
        Err(IngestError::QueueFull) => {
            return Err(ApiError::new(
                ErrorCode::ResourceExhausted,
                "the collector queue is full; retry after the indicated delay",
            )
            .with_retry_after(1));
        }
        Err(IngestError::StoreUnavailable) => {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "spans could not be stored; nothing from this request was kept, retry later",
            )
            .with_retry_after(1));
        }
        Err(IngestError::StoreRejected) => {
            // Not 503: the store refused these spans for good, so a client told to retry
            // would resend them forever.
            return Err(ApiError::new(
                ErrorCode::Internal,
                "the store refused these spans and will refuse them again; nothing from this request was kept, do not retry it unchanged",
            ));
        }
        Err(IngestError::ShuttingDown) => return Err(shutting_down()),
        Err(IngestError::TooLarge) => {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the spans of this request are larger than the collector's durable queue (collector.durable_queue.max_bytes); nothing was kept, send them in smaller requests",
            ));
        }
    };
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "accepted": accepted,
            "rejected": parsed.rejected,
            "errors": parsed.details,
        })),
    ))
}

fn shutting_down() -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "the collector is shutting down; retry against another instance",
    )
    .with_retry_after(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest() -> Ingest {
        Ingest::detached(&Default::default())
    }

    const OK: &str = r#"{"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","service":"s","operation":"o","start_time":"2026-01-01T00:00:00Z","end_time":"2026-01-01T00:00:01Z"}"#;

    #[test]
    fn one_bad_span_is_rejected_with_index_and_field() {
        let bad_id = OK.replace("b7ad6b7169203331", "b7ad6b71692033");
        let bad_time = OK.replace("00:00:01Z", "not-a-time");
        let missing = r#"{"trace_id":"0af7651916cd43dd8448eb211c80319c"}"#;
        let body = format!(r#"{{"spans":[{OK},{bad_id},{bad_time},{missing},{OK}]}}"#);
        let p = parse_batch(body.as_bytes(), &ingest(), 100).unwrap();
        assert_eq!(p.valid.len(), 2);
        assert_eq!(p.rejected, 3);
        assert_eq!(p.details[0].index, Some(1));
        assert_eq!(p.details[0].field.as_deref(), Some("span_id"));
        assert!(
            p.details[0].message.contains("16 hex characters"),
            "{}",
            p.details[0].message
        );
        assert_eq!(p.details[1].field.as_deref(), Some("end_time"));
        assert_eq!(p.details[2].index, Some(3));
        assert!(
            p.details[2].message.contains("missing field"),
            "{}",
            p.details[2].message
        );
        assert!(
            !p.details[2].message.contains("line"),
            "positions are stripped"
        );
    }

    #[test]
    fn envelope_errors_for_bad_shapes() {
        for body in [
            "",
            "[]",
            "{\"spans\": 5}",
            "{\"spanz\": []}",
            "{\"spans\": [1,",
            "\u{0}",
        ] {
            let e = parse_batch(body.as_bytes(), &ingest(), 10).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidJson, "{body:?}");
        }
        let invalid_utf8 = b"{\"spans\": [\"\xff\"]}";
        assert_eq!(
            parse_batch(invalid_utf8, &ingest(), 10).unwrap_err().code,
            ErrorCode::InvalidJson
        );
        let many = format!("{{\"spans\":[{}]}}", [OK; 11].join(","));
        assert_eq!(
            parse_batch(many.as_bytes(), &ingest(), 10)
                .unwrap_err()
                .code,
            ErrorCode::PayloadTooLarge
        );
    }
}
