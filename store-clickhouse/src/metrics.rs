//! ClickHouse store metrics (stable names).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A bounded reason label (see `Error::reason`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `unreachable`, `auth`, `timeout`, `schema`, `server_transient`, `server_rejected`, ...
    pub reason: &'static str,
}

/// Metrics of one ClickHouse store.
#[derive(Clone, Debug)]
pub struct ClickHouseMetrics {
    /// `datatracing_clickhouse_inserted_spans_total`
    pub inserted_spans: Counter,
    /// `datatracing_clickhouse_insert_batches_total`
    pub insert_batches: Counter,
    /// `datatracing_clickhouse_insert_errors_total{reason}`: failed attempts.
    pub insert_errors: Family<ReasonLabel, Counter>,
    /// `datatracing_clickhouse_insert_retries_total`
    pub insert_retries: Counter,
    /// `datatracing_clickhouse_dropped_spans_total{reason}`: spans given up on (their writers
    /// got an error, so nothing acknowledged is lost silently).
    pub dropped_spans: Family<ReasonLabel, Counter>,
    /// `datatracing_clickhouse_query_errors_total{reason}`
    pub query_errors: Family<ReasonLabel, Counter>,
    /// `datatracing_clickhouse_pending_spans`: spans waiting in the batcher.
    pub pending_spans: Gauge,
    /// `datatracing_clickhouse_inserts_in_flight`: inserts running (at most
    /// `batch.max_concurrent_inserts`).
    pub inserts_in_flight: Gauge,
    /// `datatracing_clickhouse_insert_duration_seconds`
    pub insert_duration: Histogram,
}

impl ClickHouseMetrics {
    /// Unregistered metrics (for tools and tests that do not expose them).
    pub fn unregistered() -> Self {
        Self {
            inserted_spans: Counter::default(),
            insert_batches: Counter::default(),
            insert_errors: Family::default(),
            insert_retries: Counter::default(),
            dropped_spans: Family::default(),
            query_errors: Family::default(),
            pending_spans: Gauge::default(),
            inserts_in_flight: Gauge::default(),
            insert_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }

    /// Registers every metric under `datatracing_clickhouse_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        let r = registry.sub_registry_with_prefix("datatracing_clickhouse");
        r.register(
            "inserted_spans",
            "Spans inserted into ClickHouse",
            m.inserted_spans.clone(),
        );
        r.register(
            "insert_batches",
            "Insert batches committed",
            m.insert_batches.clone(),
        );
        r.register(
            "insert_errors",
            "Failed insert attempts, by reason",
            m.insert_errors.clone(),
        );
        r.register(
            "insert_retries",
            "Insert attempts retried",
            m.insert_retries.clone(),
        );
        r.register(
            "dropped_spans",
            "Spans given up on after retries, by reason (their writers got an error)",
            m.dropped_spans.clone(),
        );
        r.register(
            "query_errors",
            "Failed queries, by reason",
            m.query_errors.clone(),
        );
        r.register(
            "pending_spans",
            "Spans waiting for an insert",
            m.pending_spans.clone(),
        );
        r.register(
            "inserts_in_flight",
            "Inserts running (retries included)",
            m.inserts_in_flight.clone(),
        );
        r.register_with_unit(
            "insert_duration",
            "Insert latency",
            Unit::Seconds,
            m.insert_duration.clone(),
        );
        m
    }
}
