//! Lineage across replicas: when a trace kept with `keep_linked` links to a trace another
//! replica owns, that owner is told to keep it, and a replica that sees a link to a trace
//! it does not own tells that trace's owner, so either end of a link can start the keep.
//!
//! Messages are small (trace ids), batched per owner, sent as one gRPC call
//! (`datatracing.peer.v1.Peer/Lineage`) and retried a few times; a message that still
//! cannot be delivered is dropped and counted, like a lineage id forgotten for capacity on
//! one collector (`docs/adr/0009-trace-routing.md`). Every queue here is bounded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use bytes::Bytes;
use datatracing_core::{RetryPolicy, TraceId};
use prost::Message;
use tokio::sync::{mpsc, watch};

use super::client::{PeerClient, PeerTls};
use super::metrics::RouteMetrics;
use super::ring::Ring;
use super::token::PeerToken;

/// The gRPC method lineage messages are sent to.
pub(crate) const LINEAGE_PATH: &str = "/datatracing.peer.v1.Peer/Lineage";
/// The gRPC service name of peer messages.
pub(crate) const PEER_SERVICE: &str = "datatracing.peer.v1.Peer";

/// Messages waiting to be sent, at most (more are dropped and counted).
const OUTBOX: usize = 65_536;
/// Messages in one call, at most.
const BATCH: usize = 4_096;

/// A lineage message between replicas, about traces the receiver owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// `linked` (owned by the sender) links to `trace` (owned by the receiver).
    Link {
        /// The receiver's trace.
        trace: TraceId,
        /// The sender's trace linked to it.
        linked: TraceId,
    },
    /// Keep `trace` for lineage: a trace linked to it was kept with `keep_linked`.
    Keep {
        /// The receiver's trace.
        trace: TraceId,
    },
    /// `trace` was decided by the sender, its owner until the members changed: the
    /// receiver, its owner now, applies the same decision to its spans (buffered there or
    /// still to come), so the trace is decided once.
    Decided {
        /// The receiver's trace.
        trace: TraceId,
        /// The decision.
        decision: datatracing_core::policy::Decision,
    },
}

/// What reaches the writer's task (the sampler) from the routing side.
#[derive(Debug)]
pub enum PeerInput {
    /// Lineage messages from another replica.
    Lineage(Vec<PeerMessage>),
    /// The members changed: buffered traces this replica no longer owns go to their owner.
    RingChanged,
    /// Buffered spans a hand-off could not deliver: kept and decided here.
    Returned(Vec<datatracing_core::Span>),
}

impl PeerMessage {
    fn target(&self) -> TraceId {
        match self {
            PeerMessage::Link { trace, .. }
            | PeerMessage::Keep { trace }
            | PeerMessage::Decided { trace, .. } => *trace,
        }
    }
}

/// One link notice on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WireLink {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub linked_trace_id: Vec<u8>,
}

/// A batch of lineage messages on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WireBatch {
    #[prost(message, repeated, tag = "1")]
    pub links: Vec<WireLink>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub keep: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "3")]
    pub decided: Vec<WireDecided>,
}

/// A decision handed to a trace's new owner on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WireDecided {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bool, tag = "2")]
    pub keep: bool,
    #[prost(string, tag = "3")]
    pub rule: String,
    #[prost(uint32, tag = "4")]
    pub sample_rate: u32,
    #[prost(bool, tag = "5")]
    pub keep_linked: bool,
    #[prost(bool, tag = "6")]
    pub rate_limited: bool,
}

/// The (empty) reply.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WireAck {}

fn encode(msgs: &[PeerMessage]) -> Bytes {
    let mut b = WireBatch::default();
    for m in msgs {
        match m {
            PeerMessage::Link { trace, linked } => b.links.push(WireLink {
                trace_id: trace.as_bytes().to_vec(),
                linked_trace_id: linked.as_bytes().to_vec(),
            }),
            PeerMessage::Keep { trace } => b.keep.push(trace.as_bytes().to_vec()),
            PeerMessage::Decided { trace, decision } => b.decided.push(WireDecided {
                trace_id: trace.as_bytes().to_vec(),
                keep: decision.keep,
                rule: decision.rule.clone(),
                sample_rate: decision.sample_rate,
                keep_linked: decision.keep_linked,
                rate_limited: decision.rate_limited,
            }),
        }
    }
    Bytes::from(b.encode_to_vec())
}

/// Decodes a batch; malformed ids are skipped.
pub(crate) fn decode(body: Bytes) -> Result<Vec<PeerMessage>, prost::DecodeError> {
    let b = WireBatch::decode(body)?;
    let id = |v: &[u8]| TraceId::from_slice(v).ok();
    let mut out = Vec::with_capacity(b.links.len() + b.keep.len() + b.decided.len());
    for l in b.links {
        if let (Some(trace), Some(linked)) = (id(&l.trace_id), id(&l.linked_trace_id)) {
            out.push(PeerMessage::Link { trace, linked });
        }
    }
    out.extend(
        b.keep
            .iter()
            .filter_map(|k| id(k))
            .map(|trace| PeerMessage::Keep { trace }),
    );
    out.extend(b.decided.into_iter().filter_map(|d| {
        Some(PeerMessage::Decided {
            trace: id(&d.trace_id)?,
            decision: datatracing_core::policy::Decision {
                keep: d.keep,
                rule: d.rule,
                sample_rate: d.sample_rate.max(1),
                keep_linked: d.keep_linked,
                rate_limited: d.rate_limited,
            },
        })
    }));
    Ok(out)
}

/// The sampler's view of the other replicas: who owns a trace, and a bounded outbox.
#[derive(Clone, Debug)]
pub struct PeerLineage {
    ring: watch::Receiver<Arc<Ring>>,
    out: mpsc::Sender<PeerMessage>,
    metrics: RouteMetrics,
}

impl PeerLineage {
    /// Whether this replica owns `t` now.
    pub(crate) fn owns(&self, t: &TraceId) -> bool {
        self.ring.borrow().owns(t)
    }

    /// Queues a message for the owner of its trace (dropped and counted when full).
    pub(crate) fn send(&self, m: PeerMessage) {
        if self.out.try_send(m).is_err() {
            self.metrics.lineage("dropped", 1);
        }
    }
}

#[cfg(test)]
impl PeerLineage {
    /// A handle whose messages the test reads from the returned receiver.
    pub(crate) fn for_test(
        ring: watch::Receiver<Arc<Ring>>,
    ) -> (Self, mpsc::Receiver<PeerMessage>) {
        let (out, rx) = mpsc::channel(64);
        let metrics = RouteMetrics::register(&mut prometheus_client::registry::Registry::default());
        (Self { ring, out, metrics }, rx)
    }
}

/// Starts the sender task; returns the sampler's handle.
pub(crate) fn start(
    ring: watch::Receiver<Arc<Ring>>,
    metrics: RouteMetrics,
    connect_timeout: Duration,
    token: PeerToken,
    tls: Option<PeerTls>,
) -> PeerLineage {
    let (out, rx) = mpsc::channel(OUTBOX);
    tokio::spawn(send_loop(
        rx,
        ring.clone(),
        metrics.clone(),
        connect_timeout,
        token,
        tls,
    ));
    PeerLineage { ring, out, metrics }
}

async fn send_loop(
    mut rx: mpsc::Receiver<PeerMessage>,
    ring: watch::Receiver<Arc<Ring>>,
    metrics: RouteMetrics,
    connect_timeout: Duration,
    token: PeerToken,
    tls: Option<PeerTls>,
) {
    let mut clients: HashMap<String, PeerClient> = HashMap::new();
    let mut buf = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut buf, BATCH).await > 0 {
        let mut by_owner: HashMap<String, Vec<PeerMessage>> = HashMap::new();
        {
            let ring = ring.borrow();
            for m in buf.drain(..) {
                // Routed now: an owner that changed since the message was queued gets it.
                match ring.route(&m.target()) {
                    Some(owner) => by_owner.entry(owner.to_string()).or_default().push(m),
                    None => metrics.lineage("local", 1),
                }
            }
        }
        clients.retain(|peer, _| ring.borrow().members().any(|m| m == peer));
        let mut calls = Vec::new();
        for (owner, msgs) in by_owner {
            let client = match clients.get(&owner) {
                Some(c) => c.clone(),
                None => match PeerClient::new(
                    &owner,
                    connect_timeout,
                    true,
                    token.clone(),
                    tls.as_ref(),
                ) {
                    Some(c) => {
                        clients.insert(owner.clone(), c.clone());
                        c
                    }
                    None => continue,
                },
            };
            let metrics = metrics.clone();
            calls.push(async move {
                let body = encode(&msgs);
                let policy = RetryPolicy::attempts(
                    4,
                    Duration::from_millis(50),
                    Duration::from_millis(500),
                );
                let r = (|| {
                    client.call::<WireAck>(LINEAGE_PATH, body.clone(), &[], Duration::from_secs(2))
                })
                .retry(policy.backoff())
                .sleep(tokio::time::sleep)
                .await;
                match r {
                    Ok(_) => metrics.lineage("sent", msgs.len()),
                    Err(e) => {
                        tracing::warn!(peer = %owner, error = %e, messages = msgs.len(), "lineage messages not delivered; dropped");
                        metrics.lineage("dropped", msgs.len());
                    }
                }
            });
        }
        futures::future::join_all(calls).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_wire() {
        let t = |n: u8| TraceId::from_bytes([n; 16]);
        let msgs = vec![
            PeerMessage::Link {
                trace: t(1),
                linked: t(2),
            },
            PeerMessage::Keep { trace: t(3) },
            PeerMessage::Decided {
                trace: t(4),
                decision: datatracing_core::policy::Decision {
                    keep: true,
                    rule: "errors".into(),
                    sample_rate: 10,
                    keep_linked: true,
                    rate_limited: false,
                },
            },
            PeerMessage::Decided {
                trace: t(5),
                decision: datatracing_core::policy::Decision {
                    keep: false,
                    rule: "default".into(),
                    sample_rate: 1,
                    keep_linked: false,
                    rate_limited: true,
                },
            },
        ];
        assert_eq!(decode(encode(&msgs)).unwrap(), msgs);
        assert!(decode(Bytes::from_static(&[0xff, 0xff])).is_err());
    }
}

/// The receiving side: `datatracing.peer.v1.Peer/Lineage`, served on the OTLP/gRPC
/// listener next to the trace service. Messages go to the writer (the sampler's task)
/// through a bounded channel; when it is full they are dropped and counted.
#[derive(Clone, Debug)]
pub(crate) struct PeerService {
    pub(crate) inbox: mpsc::Sender<PeerInput>,
    pub(crate) metrics: RouteMetrics,
    pub(crate) auth: datatracing_http::Authenticator,
}

impl tonic::server::NamedService for PeerService {
    const NAME: &'static str = PEER_SERVICE;
}

/// Server codec: the request as bytes, the reply with prost.
#[derive(Debug, Default, Clone, Copy)]
struct ServerCodec;

impl tonic::codec::Codec for ServerCodec {
    type Encode = WireAck;
    type Decode = Bytes;
    type Encoder = ServerCodec;
    type Decoder = ServerCodec;

    fn encoder(&mut self) -> Self::Encoder {
        ServerCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        ServerCodec
    }
}

impl tonic::codec::Encoder for ServerCodec {
    type Item = WireAck;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: WireAck,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.encode(buf)
            .map_err(|e| tonic::Status::internal(format!("encoding the reply: {e}")))
    }
}

impl tonic::codec::Decoder for ServerCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf;
        let n = buf.remaining();
        Ok(Some(buf.copy_to_bytes(n)))
    }
}

struct Handle(PeerService);

impl tonic::server::UnaryService<Bytes> for Handle {
    type Response = WireAck;
    type Future = tonic::codegen::BoxFuture<tonic::Response<WireAck>, tonic::Status>;

    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let msgs = decode(req.into_inner())
                .map_err(|e| tonic::Status::invalid_argument(format!("lineage batch: {e}")))?;
            let n = msgs.len();
            if n > 0 {
                if svc.inbox.try_send(PeerInput::Lineage(msgs)).is_err() {
                    svc.metrics.lineage("dropped", n);
                } else {
                    svc.metrics.lineage("received", n);
                }
            }
            Ok(tonic::Response::new(WireAck {}))
        })
    }
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for PeerService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let svc = self.clone();
        let allowed = self.auth.authorize(
            req.headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some(datatracing_config::Scope::Peer),
        );
        Box::pin(async move {
            if req.uri().path() != LINEAGE_PATH {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            }
            if let Err(e) = allowed {
                return Ok(tonic::Status::from(e).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ServerCodec)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .send_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(4 << 20);
            Ok(grpc.unary(Handle(svc), req).await)
        })
    }
}
