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
use crate::route::Payload;
use crate::route::split::Part;
use decode::{Compression, DecodeError, DecodePool, Encoded, Prepared, Wire};

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
    // A client's protobuf request is split by owner before decoding; not a peer's (the
    // loop guard keeps it here). Each part carries the client's tenant to its owner.
    let split = ingest.router.is_some() && !protocol.is_peer();
    let Prepared {
        valid,
        rejected: n_rejected,
        first_error,
        forward,
    } = match pool.decode(ingest, protocol, req, split).await {
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
    let (result, n_rejected, first_error) = if forward.is_empty() {
        let r = ingest.submit(protocol, tenant, valid, n_rejected).await;
        (r.map(|_| ()), n_rejected, first_error)
    } else {
        submit_parts(
            ingest,
            pool,
            protocol,
            tenant,
            (valid, n_rejected, first_error),
            forward,
        )
        .await
    };
    match result {
        Ok(()) => Outcome::Done(ExportTraceServiceResponse {
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

/// Keeps this replica's spans and forwards the encoded parts to their owners, all at once;
/// answers once every part is accepted (ADR 0009). A part its owner could not take in time
/// is decoded and kept here instead. Returns the outcome, and the invalid spans of the whole
/// request (this replica's and the owners') with the first reason.
async fn submit_parts(
    ingest: &Ingest,
    pool: &DecodePool,
    protocol: Protocol,
    tenant: &Tenant,
    (valid, local_rejected, first_error): (Vec<datatracing_core::Span>, usize, Option<String>),
    parts: Vec<Part>,
) -> (Result<(), IngestError>, usize, Option<String>) {
    let Some(router) = &ingest.router else {
        return (Err(IngestError::ShuttingDown), local_rejected, first_error);
    };
    let p = protocol.label();
    // Spans a client sent here, whoever owns them; the owner counts them as from a peer.
    ingest
        .metrics
        .receive(p, parts.iter().map(|x| x.spans).sum());
    let forwards = futures::future::join_all(parts.into_iter().map(|part| async move {
        let n = part.spans;
        let payload = Payload::Encoded {
            body: part.body,
            spans: n,
            tenant: tenant.clone(),
        };
        (n, router.forward_payload(&part.peer, payload).await)
    }));
    let (mine, forwarded) = tokio::join!(
        ingest.submit(protocol, tenant, valid, local_rejected),
        forwards
    );
    let mut result = mine.map(|_| ());
    let mut rejected = local_rejected;
    let mut first = first_error;
    let mut accepted = 0;
    for (n, r) in forwarded {
        match r {
            Ok(a) => {
                accepted += n.saturating_sub(a.rejected);
                if a.rejected > 0 {
                    rejected += a.rejected;
                    ingest.metrics.reject(p, "invalid", a.rejected);
                    if first.is_none() {
                        first = a.message.map(|m| owner_first_error(&m).to_string());
                    }
                }
            }
            Err((Payload::Encoded { body, spans, .. }, _)) => {
                match keep_here(ingest, pool, protocol, tenant, body, spans).await {
                    Ok((r, e)) => {
                        rejected += r;
                        if first.is_none() {
                            first = e;
                        }
                    }
                    Err(e) => result = result.and(Err(e)),
                }
            }
            // Encoded parts come back encoded.
            Err((Payload::Spans(_), _)) => {}
        }
    }
    if accepted > 0 {
        ingest.metrics.accept(p, accepted);
    }
    (result, rejected, first)
}

/// The reason an owner gave for the first span it refused (its answer reads
/// "N span(s) rejected; first: <reason>").
fn owner_first_error(message: &str) -> &str {
    message
        .split_once("; first: ")
        .map_or(message, |(_, first)| first)
}

/// Decodes and keeps here a part its owner could not take (the no-loss fallback of
/// ADR 0009). Returns the part's invalid spans and the first reason.
async fn keep_here(
    ingest: &Ingest,
    pool: &DecodePool,
    protocol: Protocol,
    tenant: &Tenant,
    body: bytes::Bytes,
    spans: usize,
) -> Result<(usize, Option<String>), IngestError> {
    let req = Encoded {
        wire: Wire::Protobuf,
        body,
        // At most the request it was cut from, which was within the inflated limit.
        compression: Compression::Inflated,
    };
    match pool.decode(ingest, protocol, req, false).await {
        Ok(prepared) => {
            ingest
                .keep(protocol, tenant, prepared.valid, prepared.rejected)
                .await?;
            Ok((prepared.rejected, prepared.first_error))
        }
        Err(DecodeError::Busy) => {
            ingest
                .metrics
                .reject(protocol.label(), "decode_busy", spans);
            Err(IngestError::QueueFull)
        }
        Err(e) => {
            // The split checked that the whole request decodes; this is a bug, not the
            // client's fault, but the spans cannot be kept.
            tracing::error!(error = ?e, spans, "a part of a checked request did not decode");
            ingest.metrics.reject(protocol.label(), "invalid", spans);
            Ok((spans, Some(format!("{e:?}"))))
        }
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
