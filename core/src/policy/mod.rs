//! Sampling policies: an ordered list of rules over composable conditions, the first match
//! decides, a required default closes the list.
//!
//! The model is plain serde data (YAML or JSON) with a JSON Schema, shared by the collector
//! and the `SamplingPolicy` custom resource. Every condition node is a struct whose fields
//! are all optional and exactly one of which must be set: that keeps the schema structural
//! (no untagged enums) and lets validation name the offending path.
//! [`SamplingPolicy::compile`] validates and precompiles (regexes, globs) into a
//! [`CompiledPolicy`] that evaluates traces; evaluation never panics and never does I/O.
//!
//! Unit enums carry plain comments on their variants, not doc comments: with doc comments
//! schemars emits `oneOf` of constants instead of a string `enum`, which a structural CRD
//! schema cannot use.

mod eval;
mod validate;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::ConfigDuration;
use crate::span::{SpanKind, StatusCode};

pub use eval::{CompiledPolicy, Decision, LINEAGE_RULE, TraceFacts, trace_hash};
pub use validate::PolicyError;

/// A sampling policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplingPolicy {
    /// Rules in order; the first whose condition matches decides.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// What happens to a trace no rule matched. Required: there is no implicit default.
    pub default: Action,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Name, stamped on kept spans (`datatracing.sampling.rule`); unique in the policy.
    pub name: String,
    /// `trace`: different spans may satisfy different conditions; `span`: one span must
    /// satisfy the whole condition.
    #[serde(default)]
    pub scope: Scope,
    /// The condition.
    pub when: Condition,
    /// What to do when it matches.
    pub action: Action,
}

/// Evaluation scope of a rule's condition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = crate::schema::string_enum)]
pub enum Scope {
    /// Conditions about spans hold if some span satisfies them, each on its own.
    #[default]
    Trace,
    /// The whole condition must hold for one span.
    Span,
}

/// Keep or drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = crate::schema::string_enum)]
pub enum Verdict {
    /// Keep the trace.
    Keep,
    /// Drop the trace.
    Drop,
}

/// A rule's action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Keep or drop.
    pub decision: Verdict,
    /// With `keep`: keep 1 trace in N, chosen from the trace id so every collector agrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    /// With `keep`: at most this many traces or spans per second (token bucket); traces over
    /// the limit are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// With `keep`: also keep traces linked to this one (FOLLOWS_FROM, DATA_DEPENDENCY, in
    /// either direction, transitively) that are still buffered or decided later, whatever
    /// their own rules say; they are stamped with the rule `lineage`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_linked: bool,
}

/// What a rate limit counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = crate::schema::string_enum)]
pub enum RateUnit {
    /// Traces per second.
    #[default]
    Traces,
    /// Spans per second.
    Spans,
}

/// A token bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate per second.
    pub per_second: f64,
    /// What is counted.
    #[serde(default)]
    pub unit: RateUnit,
    /// Bucket size (burst); defaults to one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
}

/// A condition node: set exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Every sub-condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<Condition>>,
    /// At least one sub-condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<Condition>>,
    /// The sub-condition does not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<Condition>>,
    /// Trace or span duration bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationCondition>,
    /// A span's status is in the set (error presence: `[ERROR, TIMEOUT]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<StatusCode>>,
    /// A span's operation matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<StringMatch>,
    /// A span's service matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<StringMatch>,
    /// A span's kind is in the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Vec<SpanKind>>,
    /// A span attribute condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<AttributeCondition>,
    /// The number of spans in the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_count: Option<CountRange>,
    /// Whether the trace's root span (a span without parent) has arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_present: Option<bool>,
    /// Whether the trace is linked to a trace that was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_to_kept: Option<bool>,
    /// Holds for this fraction of traces (0..=1), chosen from the trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
}

/// Whose duration a duration condition measures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = crate::schema::string_enum)]
pub enum DurationOf {
    /// First span start to last span end.
    #[default]
    Trace,
    /// A single span.
    Span,
}

/// Duration bounds: `over` (strictly longer) and/or `under` (strictly shorter).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DurationCondition {
    /// Trace or span.
    #[serde(default)]
    pub of: DurationOf,
    /// Longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over: Option<ConfigDuration>,
    /// Shorter than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub under: Option<ConfigDuration>,
}

/// A string test: set exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// Equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Shell-style pattern: `*` any run, `?` one character.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// Regular expression (whole-string match is up to the pattern: anchor it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// An attribute test on one key: set exactly one test besides `key`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributeCondition {
    /// The attribute key.
    pub key: String,
    /// The key is present (`true`) or absent (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// The value's search text equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// The key is present and its value's search text differs from this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<String>,
    /// The value's search text is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "in")]
    pub in_set: Option<Vec<String>>,
    /// The value's search text matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// A numeric comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<NumberRange>,
    /// An element of the array value has this search text (a scalar value: the value
    /// does), e.g. a dataset in `datatracing.dataset.inputs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
}

/// Numeric bounds on an int or float attribute; all given bounds must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NumberRange {
    /// Greater than.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    /// Greater than or equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    /// Less than.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    /// Less than or equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
}

/// Inclusive bounds on a count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CountRange {
    /// At least.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u64>,
    /// At most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}
