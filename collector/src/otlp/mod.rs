//! OTLP ingest: `/v1/traces` over HTTP (protobuf or JSON, optionally gzip) and
//! `TraceService/Export` over gRPC, with the response semantics of the OTLP specification:
//! partial success for invalid spans, 400 / INVALID_ARGUMENT for undecodable requests (not
//! retryable), 429 / 503 (RESOURCE_EXHAUSTED / UNAVAILABLE) with a retry delay when
//! throttling.

pub mod convert;
pub(crate) mod grpc;
pub(crate) mod http;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};

use crate::ingest::{Ingest, IngestError, Protocol};

/// Outcome of one export: either a response (possibly with partial success) or a throttle.
pub(crate) enum Outcome {
    Done(ExportTraceServiceResponse),
    TooMany { limit: usize, got: usize },
    Throttled(IngestError),
}

/// Converts, prepares and submits one decoded request.
pub(crate) async fn export(
    ingest: &Ingest,
    protocol: Protocol,
    max_spans: usize,
    req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> Outcome {
    let got = convert::span_count(&req);
    if got > max_spans {
        ingest.metrics.reject(protocol.label(), "too_large", got);
        return Outcome::TooMany {
            limit: max_spans,
            got,
        };
    }
    let (spans, unmapped) = convert::from_otlp(req);
    let mut first_error = unmapped
        .first()
        .map(|r| format!("span {}: {}", r.index, r.reason));
    let mut n_rejected = unmapped.len();
    let mut valid = Vec::with_capacity(spans.len());
    let now = datatracing_core::Timestamp::now();
    for mut span in spans {
        let errors = ingest.prepare(protocol, now, &mut span);
        if errors.is_empty() {
            valid.push(span);
        } else {
            n_rejected += 1;
            first_error.get_or_insert_with(|| format!("span {}: {}", span.span_id, errors[0]));
        }
    }
    if let Some(e) = &first_error {
        ingest
            .logs
            .client_error(protocol.label(), "invalid_span", e);
    }
    match ingest.submit(protocol, valid, n_rejected).await {
        Ok(_) => Outcome::Done(ExportTraceServiceResponse {
            partial_success: (n_rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: n_rejected as i64,
                error_message: format!(
                    "{n_rejected} span(s) rejected; first: {}",
                    first_error.unwrap_or_default()
                ),
            }),
        }),
        Err(e) => Outcome::Throttled(e),
    }
}
