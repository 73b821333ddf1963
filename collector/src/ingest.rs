//! What every protocol does with spans once it has decoded them: truncate, validate, count,
//! queue, and wait for the write. Protocol modules only decode and encode.

use datatracing_core::{FieldError, Limits, Span};

use crate::metrics::{CollectorMetrics, ProtocolLabels};
use crate::queue::{EnqueueError, SpanQueue};
use crate::wal::{AppendError, Wal};

/// Ingest protocols, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    NativeJson,
    OtlpHttpProtobuf,
    OtlpHttpJson,
    OtlpGrpc,
}

impl Protocol {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Protocol::NativeJson => "native_json",
            Protocol::OtlpHttpProtobuf => "otlp_http_protobuf",
            Protocol::OtlpHttpJson => "otlp_http_json",
            Protocol::OtlpGrpc => "otlp_grpc",
        }
    }
}

/// Why accepted spans could not be acknowledged. Nothing was kept: the client must retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IngestError {
    /// The queue is full.
    QueueFull,
    /// The collector is shutting down.
    ShuttingDown,
    /// The store failed after retries.
    StoreUnavailable,
}

/// The shared back half of every receiver.
#[derive(Clone, Debug)]
pub(crate) struct Ingest {
    pub queue: SpanQueue,
    pub metrics: CollectorMetrics,
    pub limits: Limits,
    /// The durable queue, when on: requests are acknowledged once it has their spans.
    pub wal: Option<Wal>,
}

impl Ingest {
    /// Truncates over-long values (counted), then validates; returns the problems, if any.
    pub(crate) fn prepare(&self, protocol: Protocol, span: &mut Span) -> Vec<FieldError> {
        let cut = span.truncate_to(&self.limits);
        if cut > 0 {
            self.metrics
                .truncated
                .get_or_create(&ProtocolLabels {
                    protocol: protocol.label(),
                })
                .inc_by(cut as u64);
        }
        span.validate(&self.limits)
    }

    /// Counts a request's spans, queues the valid ones and waits until they are written.
    /// Returns how many were acknowledged.
    pub(crate) async fn submit(
        &self,
        protocol: Protocol,
        valid: Vec<Span>,
        rejected: usize,
    ) -> Result<usize, IngestError> {
        let p = protocol.label();
        let labels = ProtocolLabels { protocol: p };
        self.metrics
            .received
            .get_or_create(&labels)
            .inc_by((valid.len() + rejected) as u64);
        if rejected > 0 {
            self.metrics.reject(p, "invalid", rejected);
        }
        let n = valid.len();
        if n == 0 {
            return Ok(0);
        }
        if let Some(wal) = &self.wal {
            let r = wal.append(&valid).await;
            self.metrics
                .wal_bytes
                .set(i64::try_from(wal.pending_bytes()).unwrap_or(i64::MAX));
            return match r {
                Ok(()) => {
                    self.metrics
                        .accepted
                        .get_or_create(&labels)
                        .inc_by(n as u64);
                    Ok(n)
                }
                Err(AppendError::Full) => {
                    self.metrics.reject(p, "queue_full", n);
                    Err(IngestError::QueueFull)
                }
                Err(AppendError::Unavailable(e)) => {
                    tracing::error!(error = %e, "durable queue append failed; asking the client to retry");
                    self.metrics.reject(p, "durable_queue_unavailable", n);
                    Err(IngestError::StoreUnavailable)
                }
            };
        }
        let done = match self.queue.enqueue(valid).await {
            Ok(rx) => rx,
            Err(EnqueueError::Full) => {
                self.metrics.reject(p, "queue_full", n);
                return Err(IngestError::QueueFull);
            }
            Err(EnqueueError::Closed) => {
                self.metrics.reject(p, "shutting_down", n);
                return Err(IngestError::ShuttingDown);
            }
        };
        match done.await {
            Ok(Ok(())) => {
                self.metrics
                    .accepted
                    .get_or_create(&labels)
                    .inc_by(n as u64);
                Ok(n)
            }
            Ok(Err(failure)) => {
                tracing::warn!(error = %failure.message, spans = n, protocol = p, "store write failed; asking the client to retry");
                self.metrics.reject(p, "store_unavailable", n);
                Err(IngestError::StoreUnavailable)
            }
            Err(_) => {
                self.metrics.reject(p, "shutting_down", n);
                Err(IngestError::ShuttingDown)
            }
        }
    }
}
