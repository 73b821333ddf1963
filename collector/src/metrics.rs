//! Collector metrics. Names are stable: dashboards and alerts depend on them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use datatracing_config::CollectorConfig;

/// The protocol label of spans a peer forwarded (`Protocol::Peer`): they are counted in
/// the `peer_spans_*` metrics, not in the client ones, so nothing is counted twice.
const PEER: &str = "peer";

/// Label set: the ingest protocol.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// `native_json`, `otlp_http_protobuf`, `otlp_http_json`, `otlp_grpc`.
    pub protocol: &'static str,
}

/// Label set: protocol and a reason from a fixed list.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Ingest protocol.
    pub protocol: &'static str,
    /// `invalid`, `queue_full`, `too_large`, `decode_busy`, `shutting_down`, `store_unavailable`, `store_rejected`.
    pub reason: &'static str,
}

/// Label set of spans a peer forwarded and this replica refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerRejectLabels {
    /// As in `spans_rejected_total`.
    pub reason: &'static str,
}

/// Label set of dropped spans: by then the protocol no longer matters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `store_rejected`.
    pub reason: &'static str,
}

/// All collector metrics.
#[derive(Clone, Debug)]
pub struct CollectorMetrics {
    /// `datatracing_collector_spans_received_total`: spans in parsed requests from clients
    /// (whichever replica owns them: summed over replicas, every client span once).
    pub received: Family<ProtocolLabels, Counter>,
    /// `datatracing_collector_spans_accepted_total`: spans acknowledged to clients (kept here
    /// or accepted by their owner).
    pub accepted: Family<ProtocolLabels, Counter>,
    /// `datatracing_collector_spans_rejected_total`: client spans refused, by reason (an
    /// owner's verdict on a forwarded span counts on the replica that answered the client).
    pub rejected: Family<ReasonLabels, Counter>,
    /// `datatracing_collector_peer_spans_received_total`: spans a peer replica forwarded
    /// here (they were counted as received by that peer).
    pub peer_received: Counter,
    /// `datatracing_collector_peer_spans_accepted_total`: forwarded spans acknowledged to
    /// the peer.
    pub peer_accepted: Counter,
    /// `datatracing_collector_peer_spans_rejected_total`: forwarded spans refused, by reason.
    pub peer_rejected: Family<PeerRejectLabels, Counter>,
    /// `datatracing_collector_spans_written_total`: spans committed to the store.
    pub written: Counter,
    /// `datatracing_collector_spans_dropped_total`: acknowledged spans that were lost, by
    /// reason (with the durable queue: the store rejected them permanently).
    pub dropped: Family<DropLabels, Counter>,
    /// `datatracing_collector_durable_queue_bytes`: bytes in the durable queue not yet
    /// written to the store.
    pub wal_bytes: Gauge,
    /// `datatracing_collector_attributes_truncated_total`: attribute keys and values (and
    /// status messages) cut to the configured limits.
    pub truncated: Family<ProtocolLabels, Counter>,
    /// `datatracing_collector_store_write_errors_total`: failed store write attempts.
    pub write_errors: Counter,
    /// `datatracing_collector_queue_spans`: spans waiting to be written.
    pub queue_spans: Gauge,
    /// `datatracing_collector_queue_bytes`: their approximate size.
    pub queue_bytes: Gauge,
    /// `datatracing_collector_batch_spans`: spans per store write.
    pub batch_spans: Histogram,
    /// `datatracing_collector_store_write_duration_seconds`: store write latency.
    pub write_duration: Histogram,
    /// `datatracing_collector_store_writes_in_flight`: store writes running now (at most
    /// `collector.batch.max_in_flight`).
    pub writes_in_flight: Gauge,
    /// `datatracing_collector_decode_memory_bytes`: estimated memory of the OTLP requests
    /// being decoded now (at most `collector.max_decode_memory_bytes`).
    pub decode_memory: Gauge,
    /// `datatracing_collector_wal_corrupt_records_total`: damaged durable queue records
    /// (stretches) skipped by the drain.
    pub wal_corrupt_records: Counter,
}

impl CollectorMetrics {
    /// Registers every collector metric.
    pub fn register(registry: &mut Registry, config: &CollectorConfig) -> Self {
        let m = Self {
            received: Family::default(),
            accepted: Family::default(),
            rejected: Family::default(),
            peer_received: Counter::default(),
            peer_accepted: Counter::default(),
            peer_rejected: Family::default(),
            written: Counter::default(),
            dropped: Family::default(),
            wal_bytes: Gauge::default(),
            truncated: Family::default(),
            write_errors: Counter::default(),
            queue_spans: Gauge::default(),
            queue_bytes: Gauge::default(),
            batch_spans: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            write_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            writes_in_flight: Gauge::default(),
            decode_memory: Gauge::default(),
            wal_corrupt_records: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("datatracing_collector");
        r.register(
            "spans_received",
            "Spans received in parsed requests",
            m.received.clone(),
        );
        r.register(
            "spans_accepted",
            "Spans acknowledged to clients",
            m.accepted.clone(),
        );
        r.register(
            "spans_rejected",
            "Spans refused, by reason",
            m.rejected.clone(),
        );
        r.register(
            "peer_spans_received",
            "Spans a peer replica forwarded here",
            m.peer_received.clone(),
        );
        r.register(
            "peer_spans_accepted",
            "Forwarded spans acknowledged to the peer",
            m.peer_accepted.clone(),
        );
        r.register(
            "peer_spans_rejected",
            "Forwarded spans refused, by reason",
            m.peer_rejected.clone(),
        );
        r.register(
            "spans_written",
            "Spans committed to the store",
            m.written.clone(),
        );
        r.register(
            "spans_dropped",
            "Acknowledged spans lost, by reason",
            m.dropped.clone(),
        );
        r.register(
            "durable_queue_bytes",
            "Bytes in the durable queue not yet written to the store",
            m.wal_bytes.clone(),
        );
        r.register(
            "attributes_truncated",
            "Attribute keys and values cut to the configured limits",
            m.truncated.clone(),
        );
        r.register(
            "store_write_errors",
            "Failed store write attempts",
            m.write_errors.clone(),
        );
        r.register(
            "queue_spans",
            "Spans waiting to be written",
            m.queue_spans.clone(),
        );
        r.register(
            "queue_bytes",
            "Approximate bytes waiting to be written",
            m.queue_bytes.clone(),
        );
        let cap_spans = Gauge::<i64>::default();
        cap_spans.set(i64::try_from(config.queue.max_spans).unwrap_or(i64::MAX));
        let cap_bytes = Gauge::<i64>::default();
        cap_bytes.set(i64::try_from(config.queue.max_bytes).unwrap_or(i64::MAX));
        r.register("queue_capacity_spans", "Queue capacity in spans", cap_spans);
        r.register("queue_capacity_bytes", "Queue capacity in bytes", cap_bytes);
        r.register(
            "batch_spans",
            "Spans per store write",
            m.batch_spans.clone(),
        );
        r.register_with_unit(
            "store_write_duration",
            "Store write latency",
            prometheus_client::registry::Unit::Seconds,
            m.write_duration.clone(),
        );
        r.register(
            "store_writes_in_flight",
            "Store writes running now",
            m.writes_in_flight.clone(),
        );
        r.register(
            "wal_corrupt_records",
            "Damaged durable queue records skipped",
            m.wal_corrupt_records.clone(),
        );
        r.register(
            "decode_memory_bytes",
            "Estimated memory of the OTLP requests being decoded now",
            m.decode_memory.clone(),
        );
        m
    }

    pub(crate) fn drop_spans(&self, reason: &'static str, n: usize) {
        self.dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(n as u64);
    }

    /// Counts refused spans: a client's by protocol, a peer's apart.
    pub(crate) fn reject(&self, protocol: &'static str, reason: &'static str, n: usize) {
        if protocol == PEER {
            self.peer_rejected
                .get_or_create(&PeerRejectLabels { reason })
                .inc_by(n as u64);
        } else {
            self.rejected
                .get_or_create(&ReasonLabels { protocol, reason })
                .inc_by(n as u64);
        }
    }

    /// Counts received spans: a client's by protocol, a peer's apart.
    pub(crate) fn receive(&self, protocol: &'static str, n: usize) {
        if protocol == PEER {
            self.peer_received.inc_by(n as u64);
        } else {
            self.received
                .get_or_create(&ProtocolLabels { protocol })
                .inc_by(n as u64);
        }
    }

    /// Counts acknowledged spans: a client's by protocol, a peer's apart.
    pub(crate) fn accept(&self, protocol: &'static str, n: usize) {
        if protocol == PEER {
            self.peer_accepted.inc_by(n as u64);
        } else {
            self.accepted
                .get_or_create(&ProtocolLabels { protocol })
                .inc_by(n as u64);
        }
    }
}
