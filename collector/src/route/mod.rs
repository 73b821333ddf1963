//! Trace-aware routing between collector replicas: every replica hashes trace ids onto the
//! same ring of members ([`ring`]), keeps the spans it owns, and forwards the others to
//! their owner ([`forward`]), so each trace is tail-sampled whole by one replica. Lineage
//! decisions cross replicas as small peer messages ([`lineage`]).
//!
//! Membership comes from the configuration (`collector.peers.static`), from a members file
//! re-read while running (`collector.peers.file`), or from anything else that publishes a
//! new [`Ring`] on the watch channel. See `docs/adr/0009-trace-routing.md`.

mod client;
mod forward;
pub(crate) mod lineage;
mod metrics;
mod ring;
pub(crate) mod split;
mod token;

use std::collections::HashMap;
use std::sync::Arc;

use datatracing_config::{PeersConfig, parse_members};
use datatracing_core::Span;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub(crate) use client::PeerTls;
pub(crate) use forward::{Accepted, Fallback, Payload};
pub use forward::{FORWARDED_HEADER, TENANT_HEADER};
pub use lineage::{PeerInput, PeerMessage};
pub use metrics::{ResultLabels, RouteMetrics};
pub use ring::Ring;
pub(crate) use token::PeerToken;

use forward::Forwarder;

/// The members now, by the configured source. A members file that cannot be read or
/// parsed is an error at start (later, the previous members stay in force).
pub(crate) fn initial_members(config: &PeersConfig) -> Result<Vec<String>, String> {
    if config.kubernetes.is_some() {
        // Filled by the EndpointSlice watch; until then every trace is local.
        return Ok(Vec::new());
    }
    match &config.file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read collector.peers.file {}: {e}", path.display()))
            .and_then(|t| parse_members(&t).map_err(|e| e.to_string())),
        None => Ok(config.static_peers.clone()),
    }
}

/// The routing handle shared by every receiver.
#[derive(Clone, Debug)]
pub(crate) struct Router {
    ring: watch::Receiver<Arc<Ring>>,
    forwarder: Forwarder,
    pub(crate) metrics: RouteMetrics,
    self_addr: Arc<str>,
    token: PeerToken,
    tls: Option<PeerTls>,
}

impl Router {
    /// A router over `members`; [`Router::watch_file`] keeps a members file in force.
    pub(crate) fn new(
        config: &PeersConfig,
        members: Vec<String>,
        metrics: RouteMetrics,
        token: PeerToken,
        tls: Option<datatracing_http::ClientTls>,
    ) -> (Self, watch::Sender<Arc<Ring>>) {
        let tls = tls.map(|client| PeerTls {
            client,
            metrics: metrics.clone(),
        });
        let ring = Ring::new(members, &config.self_addr);
        metrics.ring_members.set(ring.len() as i64);
        let (tx, rx) = watch::channel(Arc::new(ring));
        (
            Self {
                ring: rx,
                forwarder: Forwarder::new(
                    config.forward.clone(),
                    &config.self_addr,
                    metrics.clone(),
                    token.clone(),
                    tls.clone(),
                ),
                metrics,
                self_addr: config.self_addr.as_str().into(),
                token,
                tls,
            },
            tx,
        )
    }

    /// The ring in force.
    pub(crate) fn ring(&self) -> Arc<Ring> {
        Arc::clone(&self.ring.borrow())
    }

    /// A receiver that sees every new ring.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Ring>> {
        self.ring.clone()
    }

    /// The token presented to peers.
    pub(crate) fn token(&self) -> &PeerToken {
        &self.token
    }

    /// The peer link's TLS, when `collector.peers.tls` is set.
    pub(crate) fn tls(&self) -> Option<&PeerTls> {
        self.tls.as_ref()
    }

    /// This replica's peer address.
    pub(crate) fn self_addr(&self) -> &str {
        &self.self_addr
    }

    /// Splits spans into those this replica keeps and those owned by each peer.
    pub(crate) fn split(&self, spans: Vec<Span>) -> (Vec<Span>, HashMap<String, Vec<Span>>) {
        let ring = self.ring();
        let mut local = Vec::new();
        let mut remote: HashMap<String, Vec<Span>> = HashMap::new();
        for s in spans {
            match ring.route(&s.trace_id) {
                None => local.push(s),
                Some(peer) => match remote.get_mut(peer) {
                    Some(v) => v.push(s),
                    None => {
                        remote.insert(peer.to_string(), vec![s]);
                    }
                },
            }
        }
        (local, remote)
    }

    /// Forwards decoded spans to their owner; on failure they come back to be kept here.
    pub(crate) async fn forward(
        &self,
        peer: &str,
        spans: Vec<Span>,
    ) -> Result<(), (Vec<Span>, Fallback)> {
        match self.forward_payload(peer, Payload::Spans(spans)).await {
            Ok(_) => Ok(()),
            Err((Payload::Spans(s), why)) => Err((s, why)),
            Err((Payload::Encoded { .. }, why)) => Err((Vec::new(), why)),
        }
    }

    /// Forwards a payload to its owner: the owner's acknowledgement, or the payload back
    /// to be kept here.
    pub(crate) async fn forward_payload(
        &self,
        peer: &str,
        payload: Payload,
    ) -> Result<Accepted, (Payload, Fallback)> {
        let n = payload.len();
        let r = self.forwarder.forward(peer, payload).await;
        if let Err((_, why)) = &r {
            self.metrics.fallback(peer, why.label(), n);
        }
        r
    }
}

/// Hands buffered traces this replica no longer owns to their new owners (after a
/// membership change, and when this replica leaves the ring on its way out), so each trace
/// is still decided once. Spans that cannot be delivered come back to be decided here.
#[derive(Clone, Debug)]
pub(crate) struct Handoff {
    router: Router,
    back: tokio::sync::mpsc::Sender<PeerInput>,
}

impl Handoff {
    pub(crate) fn new(router: Router, back: tokio::sync::mpsc::Sender<PeerInput>) -> Self {
        Self { router, back }
    }

    /// Forwards `spans` to their owners in the background.
    pub(crate) fn send(&self, spans: Vec<Span>) {
        let (router, back) = (self.router.clone(), self.back.clone());
        tokio::spawn(async move {
            let (mut returned, remote) = router.split(spans);
            let sent = futures::future::join_all(remote.into_iter().map(|(peer, s)| {
                let router = router.clone();
                async move {
                    let n = s.len();
                    router.forward(&peer, s).await.map(|()| n)
                }
            }))
            .await;
            for r in sent {
                match r {
                    Ok(n) => {
                        router.metrics.handoff.inc_by(n as u64);
                    }
                    Err((s, _)) => returned.extend(s),
                }
            }
            if !returned.is_empty() && back.send(PeerInput::Returned(returned)).await.is_err() {
                tracing::warn!("buffered spans could not be handed off while stopping");
            }
        });
    }

    /// Tells the writer whenever the members change.
    pub(crate) fn watch_ring(&self) {
        let mut ring = self.router.subscribe();
        let back = self.back.clone();
        tokio::spawn(async move {
            while ring.changed().await.is_ok() {
                if back.send(PeerInput::RingChanged).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Sets the members from a source outside this crate (the Kubernetes EndpointSlice watch
/// in the `datatracing` binary).
#[derive(Clone, Debug)]
pub struct Membership {
    router: Router,
    tx: watch::Sender<Arc<Ring>>,
}

impl Membership {
    pub(crate) fn new(router: Router, tx: watch::Sender<Arc<Ring>>) -> Self {
        Self { router, tx }
    }

    /// Replaces the members; returns whether they changed.
    pub fn set(&self, members: Vec<String>) -> bool {
        publish(&self.tx, &self.router, members)
    }

    /// The ring in force.
    pub fn ring(&self) -> Arc<Ring> {
        self.router.ring()
    }
}

/// Publishes a new ring (from the members file, or a membership watch) and forgets the
/// peers that left. Unchanged members publish nothing.
pub(crate) fn publish(
    tx: &watch::Sender<Arc<Ring>>,
    router: &Router,
    members: Vec<String>,
) -> bool {
    let ring = Ring::new(members.clone(), router.self_addr());
    if **tx.borrow() == ring {
        return false;
    }
    tracing::info!(members = ?members, owns_traces = ring.members().any(|m| m == router.self_addr()), "routing ring changed");
    router.metrics.ring_members.set(ring.len() as i64);
    router.metrics.ring_changes.inc();
    router.forwarder.retain(&members);
    tx.send_replace(Arc::new(ring));
    true
}

/// Re-reads the members file every `reload_interval` until `stop`; a file that cannot be
/// read or parsed leaves the members as they were (logged).
pub(crate) async fn watch_file(
    config: PeersConfig,
    router: Router,
    tx: watch::Sender<Arc<Ring>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.reload_interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let c = config.clone();
        match tokio::task::spawn_blocking(move || initial_members(&c)).await {
            Ok(Ok(members)) => {
                publish(&tx, &router, members);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "members file unreadable; keeping the members in force")
            }
            Err(e) => tracing::warn!(error = %e, "members file read task failed"),
        }
    }
}
