//! Tail sampling: buffer spans by trace, decide each trace with the sampling policy when it
//! is complete enough, keep decisions for late spans, keep lineages whole, stamp kept spans.
//!
//! A trace is decided when its root span has arrived and `decision_wait` has passed, or when
//! no span arrived for `idle_timeout`, or at `max_trace_age`, or when it holds
//! `max_spans_per_trace` spans. The buffer is bounded by `max_traces` and `max_bytes`: over
//! either, the oldest traces are decided early (and counted). Buffered spans live in memory:
//! a crash loses undecided traces, as with every tail sampler.
//!
//! Settings are `datatracing_config::SamplingConfig`. Modules: `metrics`, `policy` (the policy in force
//! and its reload watch), `buffer` (spans awaiting a decision), `decisions` (decisions
//! remembered for late spans), `lineage` (links and awaited linked traces), `sampler` (the
//! decision passes) and `admin` (status and reload routes).

mod admin;
mod buffer;
mod decisions;
mod lineage;
mod metrics;
mod policy;
mod sampler;

pub(crate) use admin::admin_routes;
pub use metrics::SamplingMetrics;
pub(crate) use policy::watch_policy;
pub use policy::{PolicyHolder, PolicyStatus};
pub use sampler::TailSampler;

/// Attribute naming the rule that kept a span.
pub const RULE_ATTR: &str = "datatracing.sampling.rule";
/// Attribute with the sample rate (1 in N) under which a span was kept.
pub const RATE_ATTR: &str = "datatracing.sampling.rate";
