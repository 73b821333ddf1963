//! OTLP ingest: `/v1/traces` over HTTP (protobuf or JSON, optionally gzip) and
//! `TraceService/Export` over gRPC, with the response semantics of the OTLP specification:
//! partial success for invalid spans, 400 / INVALID_ARGUMENT for undecodable requests (not
//! retryable), 429 / 503 (RESOURCE_EXHAUSTED / UNAVAILABLE) with a retry delay when
//! throttling.

pub mod convert;
pub(crate) mod decode;
pub(crate) mod grpc;
pub(crate) mod http;
pub(crate) mod shape;

use datatracing_core::Tenant;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};

use crate::ingest::{Ingest, IngestError, Protocol};
use decode::{DecodeError, DecodePool, Encoded, Prepared};

/// Outcome of one export: either a response (possibly with partial success) or a refusal.
pub(crate) enum Outcome {
    Done(ExportTraceServiceResponse),
    /// The request was refused before its spans were looked at.
    Refused(DecodeError),
    Throttled(IngestError),
}

/// Decodes (within the pool's bounds), prepares and submits one request.
pub(crate) async fn export(
    ingest: &Ingest,
    pool: &DecodePool,
    protocol: Protocol,
    tenant: &Tenant,
    req: Encoded,
) -> Outcome {
    let p = protocol.label();
    let Prepared {
        valid,
        rejected: n_rejected,
        first_error,
    } = match pool.decode(ingest, protocol, req).await {
        Ok(prepared) => prepared,
        Err(e) => {
            let (reason, n, detail) = match &e {
                DecodeError::Invalid(m) => ("invalid", 1, m.clone()),
                DecodeError::TooManySpans { limit, got } => (
                    "too_large",
                    *got,
                    format!("{got} spans over the limit of {limit}"),
                ),
                DecodeError::TooLarge(m) => ("too_large", 1, m.clone()),
                DecodeError::Busy => ("decode_busy", 1, "decode budget exhausted".into()),
            };
            ingest.metrics.reject(p, reason, n);
            ingest.logs.client_error(p, reason, &detail);
            return Outcome::Refused(e);
        }
    };
    if let Some(e) = &first_error {
        ingest.logs.client_error(p, "invalid_span", e);
    }
    match ingest.submit(protocol, tenant, valid, n_rejected).await {
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

impl DecodeError {
    /// The client-facing code and message; every protocol maps the code through the one
    /// table in `datatracing_http::ErrorCode`.
    pub(crate) fn to_api(&self) -> datatracing_http::ApiError {
        use datatracing_http::{ApiError, ErrorCode};
        match self {
            DecodeError::Invalid(m) => ApiError::new(ErrorCode::InvalidArgument, m.clone()),
            DecodeError::TooManySpans { limit, got } => ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("{got} spans in one request exceed the limit of {limit}; split the batch"),
            ),
            DecodeError::TooLarge(m) => ApiError::new(ErrorCode::PayloadTooLarge, m.clone()),
            DecodeError::Busy => ApiError::new(
                ErrorCode::ResourceExhausted,
                "the collector is decoding as much as it may at once; retry later",
            )
            .with_retry_after(1),
        }
    }
}
