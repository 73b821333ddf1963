//! Operator metrics (stable names, `datatracing_operator_` prefix).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Which controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// `tracingpipeline` or `samplingpolicy`.
    pub controller: &'static str,
}

/// Which controller, and why it failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// `tracingpipeline` or `samplingpolicy`.
    pub controller: &'static str,
    /// A bounded reason (see `Error::metric_reason`).
    pub reason: &'static str,
}

/// One condition of one TracingPipeline.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabel {
    /// The pipeline's namespace.
    pub namespace: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The condition type (`Ready`, `RetentionApplied`, ...).
    pub condition: &'static str,
}

/// Reconcile counts, errors and durations; leadership; retention calls; pipeline conditions.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `datatracing_operator_reconciles_total{controller}`
    pub reconciles: Family<ControllerLabel, Counter>,
    /// `datatracing_operator_reconcile_errors_total{controller,reason}`
    pub errors: Family<ErrorLabel, Counter>,
    /// `datatracing_operator_reconcile_duration_seconds{controller}`
    pub duration: Family<ControllerLabel, Histogram>,
    /// `datatracing_operator_leader`: 1 while this replica holds the lease.
    pub leader: Gauge,
    /// `datatracing_operator_retention_applied_total`
    pub retention_applied: Counter,
    /// `datatracing_operator_retention_errors_total`
    pub retention_errors: Counter,
    /// `datatracing_operator_pipeline_condition{namespace,pipeline,condition}`: 1 while the
    /// condition is True, 0 otherwise; gone when the pipeline is.
    pub pipeline_condition: Family<ConditionLabel, Gauge>,
}

impl Metrics {
    /// Registers every metric.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            leader: Gauge::default(),
            retention_applied: Counter::default(),
            retention_errors: Counter::default(),
            pipeline_condition: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("datatracing_operator");
        r.register("reconciles", "Reconciles run", m.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            m.errors.clone(),
        );
        r.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconcile",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        r.register(
            "retention_applied",
            "Successful ClickHouse retention applications",
            m.retention_applied.clone(),
        );
        r.register(
            "retention_errors",
            "Failed ClickHouse retention applications",
            m.retention_errors.clone(),
        );
        r.register(
            "pipeline_condition",
            "1 while the TracingPipeline condition is True (as this leader last wrote it), else 0",
            m.pipeline_condition.clone(),
        );
        m
    }
}
