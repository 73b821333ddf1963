//! Tail sampling settings (`collector.sampling:`). The policy itself is a separate file
//! (`policy_file`), modelled in `datatracing_core::policy`.

use std::path::PathBuf;

use datatracing_core::ConfigDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Result};

/// What happens to buffered traces at shutdown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(transform = datatracing_core::schema::string_enum)]
pub enum ShutdownRule {
    /// Decide every buffered trace with the policy now.
    #[default]
    Decide,
    /// Keep every buffered trace.
    KeepAll,
    /// Drop every buffered trace.
    DropAll,
}

/// Tail sampling settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Sample with a policy; when off, every span is kept.
    pub enabled: bool,
    /// Policy file (YAML or JSON). Re-read when its content changes (a ConfigMap update
    /// swaps the mounted directory; the path is re-read, so the swap is seen).
    pub policy_file: Option<PathBuf>,
    /// How often the policy file is checked for changes.
    pub reload_interval: ConfigDuration,
    /// After the root span arrives, wait this long for the rest of the trace.
    pub decision_wait: ConfigDuration,
    /// Decide a trace that has received no span for this long.
    pub idle_timeout: ConfigDuration,
    /// Decide a trace this old (since its first span arrived) whatever else.
    pub max_trace_age: ConfigDuration,
    /// Decide a trace as soon as it holds this many spans.
    pub max_spans_per_trace: usize,
    /// Traces buffered at most; over it the oldest are decided early.
    pub max_traces: usize,
    /// Approximate bytes buffered at most; over it the oldest are decided early.
    pub max_bytes: usize,
    /// Decisions remembered (each of keep and drop) for spans that arrive late.
    pub decision_cache_size: usize,
    /// How long a trace linked to a kept trace (`keep_linked`) is awaited: if it arrives
    /// within this time it is kept for lineage; after it, its id is forgotten (counted).
    /// At most `decision_cache_size` such ids are awaited; over it the oldest are forgotten.
    pub lineage_timeout: ConfigDuration,
    /// Evaluate and count, stamp what would happen, but keep everything.
    pub dry_run: bool,
    /// What to do with buffered traces at shutdown.
    pub on_shutdown: ShutdownRule,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            policy_file: None,
            reload_interval: ConfigDuration::from_secs(5),
            decision_wait: ConfigDuration::from_secs(5),
            idle_timeout: ConfigDuration::from_secs(10),
            max_trace_age: ConfigDuration::from_secs(60),
            max_spans_per_trace: 10_000,
            max_traces: 100_000,
            max_bytes: 256 * 1024 * 1024,
            decision_cache_size: 200_000,
            lineage_timeout: ConfigDuration::from_secs(600),
            dry_run: false,
            on_shutdown: ShutdownRule::Decide,
        }
    }
}

impl SamplingConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.enabled && self.policy_file.is_none() {
            return Err(ConfigError::invalid(
                "collector.sampling.policy_file is required when sampling is enabled",
            ));
        }
        if self.max_traces == 0
            || self.max_bytes == 0
            || self.max_spans_per_trace == 0
            || self.decision_cache_size == 0
        {
            return Err(ConfigError::invalid(
                "collector.sampling limits must be positive",
            ));
        }
        if self.lineage_timeout.get().is_zero() {
            return Err(ConfigError::invalid(
                "collector.sampling.lineage_timeout must be positive",
            ));
        }
        Ok(())
    }
}
