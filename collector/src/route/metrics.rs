//! Routing metrics. Names are stable; the `peer` label is a member's address, so its
//! cardinality is the number of replicas (label sets of members that left are removed).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Label set: a peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's address.
    pub peer: String,
}

/// Label set: a peer and an outcome or reason from a fixed list.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerReasonLabels {
    /// The peer's address.
    pub peer: String,
    /// `queue_full`, `unreachable`, `tls`, `refused`, `shutting_down`.
    pub reason: &'static str,
}

/// Label set: a direction of peer lineage messages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `sent`, `received`, `dropped`.
    pub direction: &'static str,
}

/// Label set: the outcome of re-reading the peer link's TLS files.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` (a changed set loaded) or `error` (refused; the previous set kept).
    pub result: &'static str,
}

/// Routing metrics (`datatracing_collector_peer_*`, `datatracing_collector_forward_*`,
/// `datatracing_collector_ring_members`).
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    /// `datatracing_collector_ring_members`: members of the ring now.
    pub ring_members: Gauge,
    /// `datatracing_collector_ring_changes_total`: membership changes seen.
    pub ring_changes: Counter,
    /// `datatracing_collector_forward_spans_total{peer}`: spans the owner accepted.
    pub forwarded: Family<PeerLabels, Counter>,
    /// `datatracing_collector_forward_batches_total{peer}`: forwarded requests accepted.
    pub batches: Family<PeerLabels, Counter>,
    /// `datatracing_collector_forward_retries_total{peer}`: failed attempts retried.
    pub retries: Family<PeerLabels, Counter>,
    /// `datatracing_collector_forward_fallback_spans_total{peer,reason}`: spans owned by
    /// `peer` kept on this replica instead (the owner could not take them in time).
    pub fallback: Family<PeerReasonLabels, Counter>,
    /// `datatracing_collector_forward_queue_spans{peer}`: spans waiting for `peer`.
    pub queue_spans: Family<PeerLabels, Gauge>,
    /// `datatracing_collector_forward_duration_seconds`: from a request's spans entering a
    /// peer queue to the owner's acknowledgement.
    pub duration: Histogram,
    /// `datatracing_collector_peer_lineage_messages_total{direction}`: lineage notices and
    /// keeps exchanged with peers.
    pub lineage: Family<DirectionLabels, Counter>,
    /// `datatracing_collector_handoff_spans_total`: buffered spans handed to the new owner of
    /// their trace after a membership change.
    pub handoff: Counter,
    /// `datatracing_collector_peer_tls_handshake_failures_total{peer}`: TLS handshakes with
    /// `peer` that failed on this side (its certificate not trusted, or not valid for the
    /// server name).
    pub tls_failures: Family<PeerLabels, Counter>,
    /// `datatracing_collector_peer_tls_reloads_total{result}`: changed
    /// `collector.peers.tls` files loaded or refused.
    pub tls_reloads: Family<ResultLabels, Counter>,
}

impl RouteMetrics {
    /// Registers every routing metric.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            ring_members: Gauge::default(),
            ring_changes: Counter::default(),
            forwarded: Family::default(),
            batches: Family::default(),
            retries: Family::default(),
            fallback: Family::default(),
            queue_spans: Family::default(),
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            lineage: Family::default(),
            handoff: Counter::default(),
            tls_failures: Family::default(),
            tls_reloads: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("datatracing_collector");
        r.register(
            "ring_members",
            "Members of the routing ring",
            m.ring_members.clone(),
        );
        r.register(
            "ring_changes",
            "Routing ring membership changes",
            m.ring_changes.clone(),
        );
        r.register(
            "forward_spans",
            "Spans forwarded to and accepted by their owner, by peer",
            m.forwarded.clone(),
        );
        r.register(
            "forward_batches",
            "Forwarded requests accepted, by peer",
            m.batches.clone(),
        );
        r.register(
            "forward_retries",
            "Failed forwarding attempts retried, by peer",
            m.retries.clone(),
        );
        r.register(
            "forward_fallback_spans",
            "Spans owned by a peer kept on this replica instead, by peer and reason",
            m.fallback.clone(),
        );
        r.register(
            "forward_queue_spans",
            "Spans waiting to be forwarded, by peer",
            m.queue_spans.clone(),
        );
        r.register_with_unit(
            "forward_duration",
            "Time from queueing spans for a peer to its acknowledgement",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "handoff_spans",
            "Buffered spans handed to their trace's new owner after a membership change",
            m.handoff.clone(),
        );
        r.register(
            "peer_tls_handshake_failures",
            "TLS handshakes with a peer that failed on this side, by peer",
            m.tls_failures.clone(),
        );
        r.register(
            "peer_tls_reloads",
            "Changed collector.peers.tls files loaded (ok) or refused, the previous set kept (error)",
            m.tls_reloads.clone(),
        );
        r.register(
            "peer_lineage_messages",
            "Lineage notices and keeps exchanged with peers, by direction",
            m.lineage.clone(),
        );
        m
    }

    pub(crate) fn fallback(&self, peer: &str, reason: &'static str, n: usize) {
        self.fallback
            .get_or_create(&PeerReasonLabels {
                peer: peer.to_string(),
                reason,
            })
            .inc_by(n as u64);
    }

    pub(crate) fn lineage(&self, direction: &'static str, n: usize) {
        self.lineage
            .get_or_create(&DirectionLabels { direction })
            .inc_by(n as u64);
    }

    /// Removes the label sets of a peer that left the ring.
    pub(crate) fn forget_peer(&self, peer: &str) {
        let l = PeerLabels {
            peer: peer.to_string(),
        };
        self.forwarded.remove(&l);
        self.batches.remove(&l);
        self.retries.remove(&l);
        self.queue_spans.remove(&l);
        self.tls_failures.remove(&l);
    }
}
