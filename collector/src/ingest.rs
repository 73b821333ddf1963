//! What every protocol does with spans once it has decoded them: truncate, validate, count,
//! queue, and wait for the write. Protocol modules only decode and encode.

use datatracing_core::{FieldError, Limits, Span, Tenant, Timestamp};

use crate::metrics::{CollectorMetrics, ProtocolLabels};
use crate::queue::{EnqueueError, SpanQueue};
use crate::route::Router;
use crate::wal::{AppendError, Wal};

/// Ingest protocols, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    NativeJson,
    OtlpHttpProtobuf,
    OtlpHttpJson,
    OtlpGrpc,
    /// OTLP/gRPC from a peer replica forwarding spans this replica owns, to be stamped with
    /// the tenant of the request (its `x-datatracing-tenant`, from a peer token).
    Peer,
    /// The same, spans the peer decoded and stamped already (they keep their tenant). Only
    /// with `auth` on and a `peer` token: nobody else can choose a tenant.
    PeerStamped,
}

impl Protocol {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Protocol::NativeJson => "native_json",
            Protocol::OtlpHttpProtobuf => "otlp_http_protobuf",
            Protocol::OtlpHttpJson => "otlp_http_json",
            Protocol::OtlpGrpc => "otlp_grpc",
            Protocol::Peer | Protocol::PeerStamped => "peer",
        }
    }

    /// Whether a peer replica forwarded the request (it is kept here: the loop guard).
    pub(crate) fn is_peer(self) -> bool {
        matches!(self, Protocol::Peer | Protocol::PeerStamped)
    }
}

/// Why accepted spans could not be acknowledged. Nothing was kept: the client must retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IngestError {
    /// The queue is full.
    QueueFull,
    /// The collector is shutting down.
    ShuttingDown,
    /// The store failed after retries; it may take the spans later.
    StoreUnavailable,
    /// The store refused the spans permanently: retrying the request cannot succeed.
    StoreRejected,
    /// The request's spans alone exceed the durable queue's bound
    /// (`collector.durable_queue.max_bytes`): it can never be acknowledged as sent.
    TooLarge,
}

impl IngestError {
    /// The client-facing code; every protocol maps it to its status through the one table
    /// in `datatracing_http::ErrorCode`.
    pub(crate) fn code(self) -> datatracing_http::ErrorCode {
        match self {
            IngestError::QueueFull => datatracing_http::ErrorCode::ResourceExhausted,
            IngestError::ShuttingDown | IngestError::StoreUnavailable => {
                datatracing_http::ErrorCode::Unavailable
            }
            // Not retryable for OTLP exporters (INTERNAL, HTTP 500): the store refused the
            // spans for good, and a client told to retry would resend them forever.
            IngestError::StoreRejected => datatracing_http::ErrorCode::Internal,
            IngestError::TooLarge => datatracing_http::ErrorCode::PayloadTooLarge,
        }
    }

    /// The message OTLP clients get (OTLP/HTTP and OTLP/gRPC answer alike).
    pub(crate) fn otlp_message(self) -> &'static str {
        match self {
            IngestError::QueueFull => "the collector queue is full; retry later",
            IngestError::StoreUnavailable => "spans could not be stored; retry later",
            IngestError::ShuttingDown => "the collector is shutting down; retry later",
            IngestError::StoreRejected => "the store refused these spans permanently; do not retry",
            IngestError::TooLarge => {
                "the request is larger than the collector's durable queue; send smaller requests"
            }
        }
    }
}

/// (protocol, reason): what a log line is rate-limited by.
type LogKey = (&'static str, &'static str);

/// Logs repeated client errors at most once per interval per kind, with how many were
/// suppressed, so one misbehaving client cannot flood the logs.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    last: std::sync::Mutex<std::collections::HashMap<LogKey, (std::time::Instant, u64)>>,
}

impl LogLimiter {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Logs a rejected request or span (`reason` from a fixed list) unless one of the same
    /// kind was logged within the interval.
    pub(crate) fn client_error(&self, protocol: &'static str, reason: &'static str, detail: &str) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let now = std::time::Instant::now();
        let entry = last
            .entry((protocol, reason))
            .or_insert((now - Self::EVERY, 0));
        if now.duration_since(entry.0) >= Self::EVERY {
            tracing::warn!(
                protocol,
                reason,
                detail,
                suppressed = entry.1,
                "rejected client data"
            );
            *entry = (now, 0);
        } else {
            entry.1 += 1;
        }
    }
}

/// The shared back half of every receiver.
#[derive(Clone, Debug)]
pub(crate) struct Ingest {
    pub queue: SpanQueue,
    pub metrics: CollectorMetrics,
    pub limits: Limits,
    /// The durable queue, when on: requests are acknowledged once it has their spans.
    pub wal: Option<Wal>,
    /// Rate limit for client-error logs.
    pub logs: std::sync::Arc<LogLimiter>,
    /// The store, asked for its retention (which can change while the collector runs):
    /// older spans are refused. `None` in unit tests.
    pub retention: Option<std::sync::Arc<dyn datatracing_store::TraceWriter>>,
    /// Routing between replicas, when `collector.peers` is on.
    pub router: Option<Router>,
}

impl Ingest {
    /// An ingest path with default limits and no store, durable queue or receiver of its
    /// queue: for exercising request parsing and validation on their own (unit tests, the
    /// fuzz harness).
    pub(crate) fn detached(queue: &crate::QueueConfig) -> Self {
        let metrics = CollectorMetrics::register(
            &mut prometheus_client::registry::Registry::default(),
            &Default::default(),
        );
        let (queue, _rx) = SpanQueue::new(queue, metrics.clone());
        Ingest {
            queue,
            metrics,
            limits: Limits::default(),
            wal: None,
            logs: Default::default(),
            retention: None,
            router: None,
        }
    }

    /// Truncates over-long values (counted), then validates; returns the problems, if any.
    /// `now` is read once per request by the caller, not once per span.
    pub(crate) fn prepare(
        &self,
        protocol: Protocol,
        now: Timestamp,
        span: &mut Span,
    ) -> Vec<FieldError> {
        let cut = span.truncate_to(&self.limits);
        if cut > 0 {
            self.metrics
                .truncated
                .get_or_create(&ProtocolLabels {
                    protocol: protocol.label(),
                })
                .inc_by(cut as u64);
        }
        let mut errs = span.validate(&self.limits);
        errs.extend(span.check_not_in_future(now, &self.limits));
        if let Some(r) = self.retention.as_ref().and_then(|s| s.retention()) {
            errs.extend(span.check_retained(now, r));
        }
        errs
    }

    /// Counts a request's spans, queues the valid ones and waits until they are written.
    /// Returns how many were acknowledged.
    ///
    /// One span per request (never per ingested span): what it logs while waiting for the
    /// queue, the durable log or the store carries the protocol and the batch size.
    #[tracing::instrument(
        name = "ingest",
        skip_all,
        fields(protocol = protocol.label(), spans = valid.len(), rejected = rejected)
    )]
    pub(crate) async fn submit(
        &self,
        protocol: Protocol,
        tenant: &Tenant,
        mut valid: Vec<Span>,
        rejected: usize,
    ) -> Result<usize, IngestError> {
        let p = protocol.label();
        self.metrics.receive(p, valid.len() + rejected);
        self.stamp_and_count_rejected(protocol, tenant, &mut valid, rejected);
        let n = valid.len();
        if n == 0 {
            return Ok(0);
        }
        // Spans a peer forwarded are kept whatever this replica's ring says (loop guard).
        match &self.router {
            Some(router) if !protocol.is_peer() => self.route(router, p, valid).await,
            _ => self.commit(p, valid).await,
        }
    }

    /// Keeps spans here whoever owns them (already counted as received): the fallback for
    /// a part its owner could not take. Stamps the tenant, counts the invalid ones.
    pub(crate) async fn keep(
        &self,
        protocol: Protocol,
        tenant: &Tenant,
        mut valid: Vec<Span>,
        rejected: usize,
    ) -> Result<usize, IngestError> {
        self.stamp_and_count_rejected(protocol, tenant, &mut valid, rejected);
        self.commit(protocol.label(), valid).await
    }

    /// Stamps the tenant on a request's valid spans and counts its invalid ones: the part of
    /// accepting a request that is the same whether its spans are routed or kept here.
    fn stamp_and_count_rejected(
        &self,
        protocol: Protocol,
        tenant: &Tenant,
        valid: &mut [Span],
        rejected: usize,
    ) {
        // After validation, so a client's own value in the reserved attribute never
        // survives, and before the durable queue, so a replayed span keeps its tenant.
        // A peer's stamped spans already carry the tenant of the client that sent them.
        if protocol != Protocol::PeerStamped {
            for span in valid.iter_mut() {
                tenant.stamp(span);
            }
        }
        if rejected > 0 {
            self.metrics.reject(protocol.label(), "invalid", rejected);
        }
    }

    /// Keeps the spans this replica owns and forwards the others to their owners, all at
    /// once; answers once every part is accepted. Spans an owner could not take in time
    /// are kept here instead (counted), so the no-loss promise never depends on a peer.
    async fn route(
        &self,
        router: &Router,
        p: &'static str,
        valid: Vec<Span>,
    ) -> Result<usize, IngestError> {
        let n = valid.len();
        let (local, remote) = router.split(valid);
        if remote.is_empty() {
            return self.commit(p, local).await;
        }
        let remote_n: usize = remote.values().map(Vec::len).sum();
        let forwards = futures::future::join_all(
            remote
                .into_iter()
                .map(|(peer, spans)| async move { router.forward(&peer, spans).await }),
        );
        let (mine, forwarded) = tokio::join!(self.commit(p, local), forwards);
        let mut back = Vec::new();
        for r in forwarded {
            if let Err((spans, _)) = r {
                back.extend(spans);
            }
        }
        let forwarded_ok = remote_n - back.len();
        mine?;
        if forwarded_ok > 0 {
            self.metrics.accept(p, forwarded_ok);
        }
        if !back.is_empty() {
            self.commit(p, back).await?;
        }
        Ok(n)
    }

    /// Commits spans on this replica: into the durable queue, or through the queue into
    /// the store. Counts them as accepted once done.
    async fn commit(&self, p: &'static str, valid: Vec<Span>) -> Result<usize, IngestError> {
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
                    self.metrics.accept(p, n);
                    Ok(n)
                }
                Err(AppendError::Full) => {
                    self.metrics.reject(p, "queue_full", n);
                    Err(IngestError::QueueFull)
                }
                Err(AppendError::TooLarge { bytes, max_bytes }) => {
                    tracing::warn!(
                        bytes,
                        max_bytes,
                        spans = n,
                        protocol = p,
                        "a request is larger than the whole durable queue; refused with 413"
                    );
                    self.metrics.reject(p, "too_large", n);
                    Err(IngestError::TooLarge)
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
                self.metrics.accept(p, n);
                Ok(n)
            }
            Ok(Err(failure)) if failure.transient => {
                tracing::warn!(error = %failure.message, spans = n, protocol = p, "store write failed; asking the client to retry");
                self.metrics.reject(p, "store_unavailable", n);
                Err(IngestError::StoreUnavailable)
            }
            Ok(Err(failure)) => {
                tracing::error!(error = %failure.message, spans = n, protocol = p, "store refused the spans permanently; telling the client not to retry");
                self.metrics.reject(p, "store_rejected", n);
                Err(IngestError::StoreRejected)
            }
            Err(_) => {
                self.metrics.reject(p, "shutting_down", n);
                Err(IngestError::ShuttingDown)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_client_errors_are_logged_once_per_interval() {
        let l = LogLimiter::default();
        for _ in 0..5 {
            l.client_error("native_json", "invalid", "bad id");
        }
        l.client_error("otlp_grpc", "invalid", "bad id");
        let last = l.last.lock().unwrap();
        assert_eq!(
            last[&("native_json", "invalid")].1,
            4,
            "four suppressed after the first"
        );
        assert_eq!(
            last[&("otlp_grpc", "invalid")].1,
            0,
            "other kinds have their own budget"
        );
    }
}
