//! The policy in force: loaded from a file, swapped on reload when the new one compiles,
//! watched for changes, and reported on the status endpoint.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use datatracing_config::SamplingConfig;
use datatracing_core::policy::{CompiledPolicy, SamplingPolicy};
use serde::Serialize;

use super::metrics::{OutcomeLabel, SamplingMetrics};

/// What the status endpoint reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PolicyStatus {
    /// Hash of the policy in force.
    pub active_hash: String,
    /// Number of rules in force.
    pub rules: usize,
    /// Whether decisions are only counted (dry run).
    pub dry_run: bool,
    /// The last rejected policy's problems, if the last reload failed.
    pub last_error: Option<String>,
    /// Successful and rejected reloads since start.
    pub reloads_ok: u64,
    /// Rejected reloads since start.
    pub reloads_rejected: u64,
}

/// The policy in force, swappable at run time, shared by the sampler and the admin routes.
#[derive(Debug)]
pub struct PolicyHolder {
    current: RwLock<Arc<CompiledPolicy>>,
    status: Mutex<PolicyStatus>,
    file: Option<PathBuf>,
    last_text: Mutex<Option<String>>,
    metrics: SamplingMetrics,
}

impl PolicyHolder {
    /// Loads and compiles the policy file; fails with every problem listed.
    pub fn load(config: &SamplingConfig, metrics: SamplingMetrics) -> Result<Arc<Self>, String> {
        let file = config.policy_file.clone().ok_or("no policy file")?;
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let compiled = compile_text(&text)?;
        let status = PolicyStatus {
            active_hash: compiled.hash().to_string(),
            rules: compiled.source().rules.len(),
            dry_run: config.dry_run,
            ..PolicyStatus::default()
        };
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(compiled)),
            status: Mutex::new(status),
            file: Some(file),
            last_text: Mutex::new(Some(text)),
            metrics,
        }))
    }

    /// A holder for a policy given directly (tests, tools).
    pub fn from_policy(
        policy: &SamplingPolicy,
        dry_run: bool,
        metrics: SamplingMetrics,
    ) -> Result<Arc<Self>, String> {
        let compiled = policy.compile().map_err(|e| join(&e))?;
        Ok(Arc::new(Self {
            status: Mutex::new(PolicyStatus {
                active_hash: compiled.hash().to_string(),
                rules: policy.rules.len(),
                dry_run,
                ..PolicyStatus::default()
            }),
            current: RwLock::new(Arc::new(compiled)),
            file: None,
            last_text: Mutex::new(None),
            metrics,
        }))
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<CompiledPolicy> {
        self.current
            .read()
            .map(|p| Arc::clone(&p))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// The status report.
    pub fn status(&self) -> PolicyStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Re-reads the policy file. `Ok(true)` when a new policy is in force, `Ok(false)` when
    /// the file did not change; an invalid policy is rejected and the old one stays.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if self
            .last_text
            .lock()
            .map(|t| t.as_deref() == Some(text.as_str()))
            .unwrap_or(false)
        {
            return Ok(false);
        }
        if let Ok(mut t) = self.last_text.lock() {
            *t = Some(text.clone());
        }
        match compile_text(&text) {
            Ok(compiled) => {
                let (hash, rules) = (compiled.hash().to_string(), compiled.source().rules.len());
                if let Ok(mut cur) = self.current.write() {
                    *cur = Arc::new(compiled);
                }
                if let Ok(mut s) = self.status.lock() {
                    s.active_hash = hash.clone();
                    s.rules = rules;
                    s.last_error = None;
                    s.reloads_ok += 1;
                }
                self.metrics
                    .reloads
                    .get_or_create(&OutcomeLabel { outcome: "ok" })
                    .inc();
                tracing::info!(hash, rules, "sampling policy reloaded");
                Ok(true)
            }
            Err(e) => {
                if let Ok(mut s) = self.status.lock() {
                    s.last_error = Some(e.clone());
                    s.reloads_rejected += 1;
                }
                self.metrics
                    .reloads
                    .get_or_create(&OutcomeLabel {
                        outcome: "rejected",
                    })
                    .inc();
                tracing::error!(error = %e, "new sampling policy rejected; the previous one stays in force");
                Err(e)
            }
        }
    }
}

fn join(errors: &[datatracing_core::policy::PolicyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses (YAML is a superset of JSON, so one parser reads both) and compiles a policy.
fn compile_text(text: &str) -> Result<CompiledPolicy, String> {
    let policy: SamplingPolicy =
        serde_saphyr::from_str(text).map_err(|e| format!("not a sampling policy: {e}"))?;
    policy.compile().map_err(|e| join(&e))
}

/// Re-reads the policy file periodically until the holder is gone.
pub(crate) async fn watch_policy(
    holder: std::sync::Weak<PolicyHolder>,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(h) = holder.upgrade() else { return };
        // Errors are logged, counted and shown on the status endpoint by `reload`.
        let _ = tokio::task::spawn_blocking(move || h.reload()).await;
    }
}
