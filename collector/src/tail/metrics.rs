//! Sampling metrics (`datatracing_sampling_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DecisionLabels {
    pub(super) rule: String,
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabel {
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabel {
    pub(super) outcome: &'static str,
}

/// Sampling metrics (`datatracing_sampling_*`). `Default` gives unregistered metrics.
#[derive(Clone, Debug, Default)]
pub struct SamplingMetrics {
    pub(super) decisions: Family<DecisionLabels, Counter>,
    pub(super) early: Family<ReasonLabel, Counter>,
    pub(super) late: Family<OutcomeLabel, Counter>,
    pub(super) reloads: Family<OutcomeLabel, Counter>,
    pub(super) buffered_traces: Gauge,
    pub(super) buffered_spans: Gauge,
    pub(super) buffered_bytes: Gauge,
    pub(super) lineage_forgotten: Family<ReasonLabel, Counter>,
    pub(super) lineage_pending: Gauge,
    pub(super) handed_over: Counter,
}

impl SamplingMetrics {
    /// Registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("datatracing_sampling");
        r.register(
            "decisions",
            "Trace decisions by rule and outcome",
            m.decisions.clone(),
        );
        r.register(
            "early_decisions",
            "Traces decided before their time, by reason",
            m.early.clone(),
        );
        r.register(
            "late_spans",
            "Spans arriving after their trace was decided, by outcome",
            m.late.clone(),
        );
        r.register(
            "policy_reloads",
            "Policy reloads by outcome (ok, rejected)",
            m.reloads.clone(),
        );
        r.register(
            "buffered_traces",
            "Traces waiting for a decision",
            m.buffered_traces.clone(),
        );
        r.register(
            "buffered_spans",
            "Spans waiting for a decision",
            m.buffered_spans.clone(),
        );
        r.register(
            "buffered_bytes",
            "Approximate bytes waiting for a decision",
            m.buffered_bytes.clone(),
        );
        r.register(
            "lineage_forgotten",
            "Linked trace ids waiting to be kept for lineage that were forgotten before their \
             trace arrived, by reason (expired, capacity)",
            m.lineage_forgotten.clone(),
        );
        r.register(
            "lineage_pending",
            "Linked trace ids waiting to be kept for lineage",
            m.lineage_pending.clone(),
        );
        r.register(
            "handed_over_decisions",
            "Decisions received from a trace's previous owner after a membership change",
            m.handed_over.clone(),
        );
        m
    }
}
