//! Forwarding spans to the replica that owns their trace: one bounded queue and one task
//! per peer, sent as OTLP/gRPC with the loop-guard header, retried with backoff until the
//! request's deadline.
//!
//! What travels is either a client request's part already encoded ([`Payload::Encoded`],
//! cut from the received bytes by [`super::split`], sent as is, one call per part so the
//! owner's partial-success count belongs to one client request), or decoded spans (hand-off
//! of a buffer, JSON requests), merged into batches and encoded once.
//!
//! The caller waits for the outcome: the owner's acknowledgement (its own durable queue or
//! store has the spans), or the payload back to keep locally. Nothing is dropped here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::Retryable;
use datatracing_config::ForwardConfig;
use datatracing_core::{RetryPolicy, Span};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::client::{PeerClient, PeerTls};
use super::metrics::{PeerLabels, RouteMetrics};
use super::token::PeerToken;
use crate::otlp::convert::to_otlp;
use crate::otlp::grpc::EXPORT_PATH;

/// The gRPC metadata key that marks spans forwarded by a peer: the receiver keeps them
/// whatever its own ring says, so spans are forwarded at most once (no loops while two
/// replicas disagree about membership). The value is the sender's address.
pub const FORWARDED_HEADER: &str = "x-datatracing-forwarded-by";

/// The gRPC metadata key naming the tenant of a forwarded encoded part (empty: the default
/// tenant): the owner stamps it on the spans, as the replica the client reached would have.
/// Believed only from a request authenticated with a `peer` token (or with `auth` off,
/// where every span is the default tenant's anyway). Decoded spans travel already stamped
/// and without it.
pub const TENANT_HEADER: &str = "x-datatracing-tenant";

/// Why spans came back to be kept locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// The peer's queue here is full.
    QueueFull,
    /// The owner could not be reached (or kept failing) before the deadline.
    Unreachable,
    /// The TLS handshake with the owner failed (its certificate is not trusted here, or
    /// not valid for the server name).
    Tls,
    /// The owner refused the request in a way retrying cannot fix.
    Refused,
    /// This replica is stopping.
    ShuttingDown,
}

impl Fallback {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Fallback::QueueFull => "queue_full",
            Fallback::Unreachable => "unreachable",
            Fallback::Tls => "tls",
            Fallback::Refused => "refused",
            Fallback::ShuttingDown => "shutting_down",
        }
    }
}

/// What is forwarded.
#[derive(Debug)]
pub(crate) enum Payload {
    /// Decoded spans (already validated here); merged with others into batches.
    Spans(Vec<Span>),
    /// An encoded `ExportTraceServiceRequest` (validated by the owner); sent alone.
    Encoded {
        /// The request.
        body: bytes::Bytes,
        /// Spans it holds.
        spans: usize,
        /// The tenant the client sent them for.
        tenant: datatracing_core::Tenant,
    },
}

impl Payload {
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Spans(s) => s.len(),
            Payload::Encoded { spans, .. } => *spans,
        }
    }
}

/// The owner's acknowledgement.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// Spans the owner refused as invalid (its partial success), for an encoded payload.
    pub rejected: usize,
    /// The owner's message about them.
    pub message: Option<String>,
}

pub(crate) type Forwarded = Result<Accepted, (Payload, Fallback)>;

type Ack = oneshot::Sender<Forwarded>;

struct Item {
    payload: Payload,
    deadline: Instant,
    queued: Instant,
    ack: Ack,
    _room: OwnedSemaphorePermit,
}

struct Peer {
    tx: mpsc::UnboundedSender<Item>,
    room: Arc<Semaphore>,
}

/// The per-peer queues and their tasks.
#[derive(Clone)]
pub(crate) struct Forwarder {
    peers: Arc<Mutex<HashMap<String, Peer>>>,
    config: ForwardConfig,
    self_addr: Arc<str>,
    metrics: RouteMetrics,
    token: PeerToken,
    tls: Option<PeerTls>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    pub(crate) fn new(
        config: ForwardConfig,
        self_addr: &str,
        metrics: RouteMetrics,
        token: PeerToken,
        tls: Option<PeerTls>,
    ) -> Self {
        Self {
            peers: Arc::default(),
            config,
            self_addr: self_addr.into(),
            metrics,
            token,
            tls,
        }
    }

    /// Sends `payload` to `peer` and waits for its acknowledgement; on failure the payload
    /// comes back with the reason, for the caller to keep.
    pub(crate) async fn forward(&self, peer: &str, payload: Payload) -> Forwarded {
        let n = payload.len();
        let (ack, rx) = oneshot::channel();
        let queued = {
            let mut peers = match self.peers.lock() {
                Ok(p) => p,
                Err(p) => p.into_inner(),
            };
            let p = peers
                .entry(peer.to_string())
                .or_insert_with(|| self.spawn_peer(peer));
            let Ok(room) = Arc::clone(&p.room).try_acquire_many_owned(n as u32) else {
                return Err((payload, Fallback::QueueFull));
            };
            let now = Instant::now();
            let item = Item {
                payload,
                deadline: now + self.config.timeout.get(),
                queued: now,
                ack,
                _room: room,
            };
            p.tx.send(item)
                .map_err(|e| (e.0.payload, Fallback::ShuttingDown))
        };
        queued?;
        self.queue_gauge(peer, n as i64);
        let r = rx
            .await
            .unwrap_or_else(|_| Err((Payload::Spans(Vec::new()), Fallback::ShuttingDown)));
        self.queue_gauge(peer, -(n as i64));
        r
    }

    fn queue_gauge(&self, peer: &str, delta: i64) {
        self.metrics
            .queue_spans
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .inc_by(delta);
    }

    /// Forgets peers no longer in the ring: their tasks finish what they hold and stop.
    pub(crate) fn retain(&self, members: &[String]) {
        let mut peers = match self.peers.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        let gone: Vec<String> = peers
            .keys()
            .filter(|k| !members.contains(k))
            .cloned()
            .collect();
        for g in gone {
            peers.remove(&g);
            self.metrics.forget_peer(&g);
        }
    }

    fn spawn_peer(&self, peer: &str) -> Peer {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(self.config.max_queue_spans));
        let task = PeerTask {
            peer: peer.to_string(),
            client: PeerClient::new(
                peer,
                self.config.connect_timeout.get(),
                self.config.compression == datatracing_config::ForwardCompression::Gzip,
                self.token.clone(),
                self.tls.as_ref(),
            ),
            config: self.config.clone(),
            self_addr: Arc::clone(&self.self_addr),
            metrics: self.metrics.clone(),
        };
        tokio::spawn(task.run(rx));
        Peer { tx, room }
    }
}

#[derive(Clone)]
struct PeerTask {
    peer: String,
    client: Option<PeerClient>,
    config: ForwardConfig,
    self_addr: Arc<str>,
    metrics: RouteMetrics,
}

/// Whether a gRPC failure may pass (the owner is down, busy or restarting).
fn retryable(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Unknown
            | Code::Cancelled
    )
}

impl PeerTask {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Item>) {
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        loop {
            let room = in_flight.len() < self.config.max_in_flight;
            tokio::select! {
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                item = rx.recv(), if open && room => match item {
                    Some(first) if matches!(first.payload, Payload::Encoded { .. }) => {
                        in_flight.push(self.clone().send(vec![first]));
                    }
                    Some(first) => {
                        let mut n = first.payload.len();
                        let mut items = vec![first];
                        while n < self.config.max_batch_spans {
                            match rx.try_recv() {
                                // An encoded part is sent on its own, beside the batch.
                                Ok(i) if matches!(i.payload, Payload::Encoded { .. }) => {
                                    in_flight.push(self.clone().send(vec![i]));
                                }
                                Ok(i) => {
                                    n += i.payload.len();
                                    items.push(i);
                                }
                                Err(_) => break,
                            }
                        }
                        in_flight.push(self.clone().send(items));
                    }
                    None => open = false,
                },
                else => break,
            }
            if !open && in_flight.is_empty() {
                break;
            }
        }
    }

    /// Sends one encoded part, or a batch of decoded spans, and answers every item.
    async fn send(self, mut items: Vec<Item>) {
        let deadline = items
            .iter()
            .map(|i| i.deadline)
            .min()
            .unwrap_or_else(Instant::now);
        let encoded = match items.as_mut_slice() {
            [
                Item {
                    payload:
                        Payload::Encoded {
                            body,
                            spans,
                            tenant,
                        },
                    ..
                },
            ] => Some((body.clone(), *spans, tenant.clone())),
            _ => None,
        };
        let is_encoded = encoded.is_some();
        let tenant = encoded.as_ref().map(|(_, _, t)| t.clone());
        let (body, n, lens, all) = match encoded {
            Some((body, n, _)) => (body, n, Vec::new(), Vec::new()),
            None => {
                let lens: Vec<usize> = items.iter().map(|i| i.payload.len()).collect();
                let mut all: Vec<Span> = Vec::with_capacity(lens.iter().sum());
                for i in &mut items {
                    if let Payload::Spans(s) = &mut i.payload {
                        all.append(s);
                    }
                }
                // Encoded once; every retry sends the same bytes.
                let body = bytes::Bytes::from(to_otlp(&all).encode_to_vec());
                (body, all.len(), lens, all)
            }
        };
        let outcome = match &self.client {
            Some(client) => {
                let tenant = tenant.as_ref().map(datatracing_core::Tenant::as_str);
                self.attempts(client, body.clone(), tenant, deadline).await
            }
            None => Err(Fallback::Refused),
        };
        let labels = PeerLabels {
            peer: self.peer.clone(),
        };
        match outcome {
            Ok(resp) => {
                self.metrics
                    .forwarded
                    .get_or_create(&labels)
                    .inc_by(n as u64);
                self.metrics.batches.get_or_create(&labels).inc();
                let rejected = resp
                    .partial_success
                    .filter(|p| p.rejected_spans > 0)
                    .map(|p| {
                        (
                            usize::try_from(p.rejected_spans).unwrap_or(0),
                            p.error_message,
                        )
                    });
                let accepted = match (is_encoded, rejected) {
                    // The owner validated the part: its verdict is the client's.
                    (true, Some((rejected, message))) => Accepted {
                        rejected,
                        message: Some(message),
                    },
                    (false, Some((rejected, message))) => {
                        // Valid here, refused there (a clock or limit differing between
                        // replicas): the owner said why; the client cannot be told per span.
                        tracing::warn!(peer = %self.peer, rejected, error = %message, "owner rejected forwarded spans");
                        Accepted::default()
                    }
                    (_, None) => Accepted::default(),
                };
                for i in items {
                    self.metrics
                        .duration
                        .observe(i.queued.elapsed().as_secs_f64());
                    let _ = i.ack.send(Ok(accepted.clone()));
                }
            }
            Err(why) if is_encoded => {
                for i in items {
                    let _ = i.ack.send(Err((i.payload, why)));
                }
            }
            Err(why) => {
                // Hand every request its own spans back, in order.
                let mut rest = all.into_iter();
                for (i, n) in items.into_iter().zip(lens) {
                    let spans: Vec<Span> = rest.by_ref().take(n).collect();
                    let _ = i.ack.send(Err((Payload::Spans(spans), why)));
                }
            }
        }
    }

    async fn attempts(
        &self,
        client: &PeerClient,
        body: bytes::Bytes,
        tenant: Option<&str>,
        deadline: Instant,
    ) -> Result<ExportTraceServiceResponse, Fallback> {
        let mut metadata = vec![(FORWARDED_HEADER, &*self.self_addr)];
        if let Some(t) = tenant {
            metadata.push((TENANT_HEADER, t));
        }
        let backoff =
            RetryPolicy::forever(self.config.retry_backoff.get(), self.config.timeout.get());
        let attempt = || {
            let left = deadline.saturating_duration_since(Instant::now());
            client.call::<ExportTraceServiceResponse>(
                EXPORT_PATH,
                body.clone(),
                &metadata,
                left.max(Duration::from_millis(1)),
            )
        };
        let run = attempt
            .retry(backoff.backoff())
            .sleep(tokio::time::sleep)
            .when(retryable)
            .notify(|e: &tonic::Status, delay| {
                self.metrics
                    .retries
                    .get_or_create(&PeerLabels {
                        peer: self.peer.clone(),
                    })
                    .inc();
                tracing::debug!(peer = %self.peer, code = ?e.code(), ?delay, "forwarding failed; retrying");
            });
        match tokio::time::timeout_at(deadline.into(), run).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if retryable(&e) && client.tls_failing() => {
                tracing::warn!(peer = %self.peer, code = ?e.code(), error = %e.message(), "TLS handshake with the owner fails; keeping its spans here");
                Err(Fallback::Tls)
            }
            Ok(Err(e)) if retryable(&e) => {
                tracing::warn!(peer = %self.peer, code = ?e.code(), error = %e.message(), "owner unreachable; keeping its spans here");
                Err(Fallback::Unreachable)
            }
            Ok(Err(e)) => {
                tracing::warn!(peer = %self.peer, code = ?e.code(), error = %e.message(), "owner refused forwarded spans; keeping them here");
                Err(Fallback::Refused)
            }
            Err(_) if client.tls_failing() => {
                tracing::warn!(peer = %self.peer, "TLS handshake with the owner fails; keeping its spans here");
                Err(Fallback::Tls)
            }
            Err(_) => {
                tracing::warn!(peer = %self.peer, "owner did not answer in time; keeping its spans here");
                Err(Fallback::Unreachable)
            }
        }
    }
}
