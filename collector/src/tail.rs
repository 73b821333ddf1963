//! Tail sampling: buffer spans by trace, decide each trace with the sampling policy when it
//! is complete enough, keep decisions for late spans, keep lineages whole, stamp kept spans.
//!
//! A trace is decided when its root span has arrived and `decision_wait` has passed, or when
//! no span arrived for `idle_timeout`, or at `max_trace_age`, or when it holds
//! `max_spans_per_trace` spans. The buffer is bounded by `max_traces` and `max_bytes`: over
//! either, the oldest traces are decided early (and counted). Buffered spans live in memory:
//! a crash loses undecided traces, as with every tail sampler.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use datatracing_core::policy::{CompiledPolicy, Decision, SamplingPolicy, TraceFacts};
use datatracing_core::{AttributeValue, ConfigDuration, LinkType, Span, Timestamp, TraceId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sample::Sampler;

/// Attribute naming the rule that kept a span.
pub const RULE_ATTR: &str = "datatracing.sampling.rule";
/// Attribute with the sample rate (1 in N) under which a span was kept.
pub const RATE_ATTR: &str = "datatracing.sampling.rate";

/// What happens to buffered traces at shutdown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownRule {
    // Decide every buffered trace with the policy now.
    #[default]
    Decide,
    // Keep every buffered trace.
    KeepAll,
    // Drop every buffered trace.
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
            dry_run: false,
            on_shutdown: ShutdownRule::Decide,
        }
    }
}

impl SamplingConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && self.policy_file.is_none() {
            return Err(
                "collector.sampling.policy_file is required when sampling is enabled".into(),
            );
        }
        if self.max_traces == 0
            || self.max_bytes == 0
            || self.max_spans_per_trace == 0
            || self.decision_cache_size == 0
        {
            return Err("collector.sampling limits must be positive".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    rule: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Sampling metrics (`datatracing_sampling_*`). `Default` gives unregistered metrics.
#[derive(Clone, Debug, Default)]
pub struct SamplingMetrics {
    decisions: Family<DecisionLabels, Counter>,
    early: Family<ReasonLabel, Counter>,
    late: Family<OutcomeLabel, Counter>,
    reloads: Family<OutcomeLabel, Counter>,
    buffered_traces: Gauge,
    buffered_spans: Gauge,
    buffered_bytes: Gauge,
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
        m
    }
}

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
        serde_yaml::from_str(text).map_err(|e| format!("not a sampling policy: {e}"))?;
    policy.compile().map_err(|e| join(&e))
}

struct Buffered {
    spans: Vec<Span>,
    bytes: usize,
    first_ns: i64,
    last_ns: i64,
    root_ns: Option<i64>,
}

/// A bounded set of decided trace ids, oldest forgotten first.
struct DecisionCache {
    map: HashMap<TraceId, Decision>,
    order: VecDeque<TraceId>,
    cap: usize,
}

impl DecisionCache {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }
    fn insert(&mut self, t: TraceId, d: Decision) {
        if self.map.insert(t, d).is_none() {
            self.order.push_back(t);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
    fn get(&self, t: &TraceId) -> Option<&Decision> {
        self.map.get(t)
    }
}

/// The tail sampler. `now` is injected so tests drive time.
pub struct TailSampler {
    config: SamplingConfig,
    policy: Arc<PolicyHolder>,
    metrics: SamplingMetrics,
    buffer: HashMap<TraceId, Buffered>,
    arrival: VecDeque<(i64, TraceId)>,
    bytes: usize,
    spans: usize,
    kept: DecisionCache,
    dropped: DecisionCache,
    /// Links seen between traces (both directions), for lineage.
    links: HashMap<TraceId, HashSet<TraceId>>,
    /// Traces to keep for lineage when they are decided or arrive.
    lineage: HashSet<TraceId>,
    now: Box<dyn Fn() -> i64 + Send>,
}

impl std::fmt::Debug for TailSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailSampler")
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl TailSampler {
    /// A sampler with the wall clock.
    pub fn new(
        config: SamplingConfig,
        policy: Arc<PolicyHolder>,
        metrics: SamplingMetrics,
    ) -> Self {
        Self::with_clock(
            config,
            policy,
            metrics,
            Box::new(|| Timestamp::now().unix_nanos()),
        )
    }

    /// A sampler with an injected clock (nanoseconds).
    pub fn with_clock(
        config: SamplingConfig,
        policy: Arc<PolicyHolder>,
        metrics: SamplingMetrics,
        now: Box<dyn Fn() -> i64 + Send>,
    ) -> Self {
        let cache = config.decision_cache_size;
        Self {
            config,
            policy,
            metrics,
            buffer: HashMap::new(),
            arrival: VecDeque::new(),
            bytes: 0,
            spans: 0,
            kept: DecisionCache::new(cache),
            dropped: DecisionCache::new(cache),
            links: HashMap::new(),
            lineage: HashSet::new(),
            now,
        }
    }

    fn ns(d: ConfigDuration) -> i64 {
        i64::try_from(d.get().as_nanos()).unwrap_or(i64::MAX)
    }

    fn stamp(span: &mut Span, d: &Decision, dry_run: bool) {
        let rule = if dry_run {
            format!("{}{}", if d.keep { "" } else { "dry-run-drop:" }, d.rule)
        } else {
            d.rule.clone()
        };
        span.attributes
            .insert(RULE_ATTR.into(), AttributeValue::String(rule));
        span.attributes.insert(
            RATE_ATTR.into(),
            AttributeValue::Int(i64::from(d.sample_rate)),
        );
    }

    fn note_links(&mut self, span: &Span) {
        for l in &span.links {
            if l.trace_id != span.trace_id
                && matches!(
                    l.link_type,
                    LinkType::FollowsFrom | LinkType::DataDependency
                )
            {
                self.links
                    .entry(span.trace_id)
                    .or_default()
                    .insert(l.trace_id);
                self.links
                    .entry(l.trace_id)
                    .or_default()
                    .insert(span.trace_id);
            }
        }
        // Bound the link map like the caches: forget the oldest when it grows too big.
        if self.links.len() > self.config.decision_cache_size.saturating_mul(2) {
            self.links.clear();
        }
    }

    fn linked_to_kept(&self, t: &TraceId) -> bool {
        self.lineage.contains(t)
            || self.links.get(t).is_some_and(|ls| {
                ls.iter()
                    .any(|l| self.kept.get(l).is_some_and(|d| d.keep_linked))
            })
    }

    /// Decides one buffered trace: kept spans go to `out`; drops wait in `deferred` until
    /// the end of the pass, because a trace decided later in the same pass may keep its
    /// lineage.
    fn decide(
        &mut self,
        t: TraceId,
        out: &mut Vec<Span>,
        deferred: &mut Vec<(TraceId, Vec<Span>, Decision)>,
    ) {
        let Some(b) = self.buffer.remove(&t) else {
            return;
        };
        self.bytes -= b.bytes;
        self.spans -= b.spans.len();
        let policy = self.policy.current();
        let facts = TraceFacts {
            spans: &b.spans,
            linked_to_kept: self.linked_to_kept(&t),
        };
        let d = policy.evaluate(&facts, (self.now)());
        if d.keep || self.config.dry_run {
            self.keep(t, b.spans, d, out, deferred);
        } else {
            deferred.push((t, b.spans, d));
        }
    }

    fn keep(
        &mut self,
        t: TraceId,
        spans: Vec<Span>,
        d: Decision,
        out: &mut Vec<Span>,
        deferred: &mut Vec<(TraceId, Vec<Span>, Decision)>,
    ) {
        let outcome = match (d.keep, self.config.dry_run) {
            (true, _) => "keep",
            (false, true) => "would_drop",
            (false, false) => "drop",
        };
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                rule: d.rule.clone(),
                outcome,
            })
            .inc();
        let dry = self.config.dry_run;
        out.extend(spans.into_iter().map(|mut s| {
            Self::stamp(&mut s, &d, dry);
            s
        }));
        let spread = d.keep && d.keep_linked;
        if d.keep {
            self.kept.insert(t, d);
        } else {
            self.dropped.insert(t, d);
        }
        self.lineage.remove(&t);
        if spread {
            // Lineage: traces linked either way are kept, now if buffered, later if not.
            let linked: Vec<TraceId> = self
                .links
                .get(&t)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            for l in linked {
                if self.kept.get(&l).is_none() {
                    self.lineage.insert(l);
                    if self.buffer.contains_key(&l) {
                        self.decide(l, out, deferred);
                    }
                }
            }
        }
    }

    /// Ends a decision pass: drops that a later keep turned into lineage are kept, the rest
    /// are final.
    fn settle(&mut self, mut deferred: Vec<(TraceId, Vec<Span>, Decision)>, out: &mut Vec<Span>) {
        while let Some(pos) = deferred.iter().position(|(t, _, _)| self.linked_to_kept(t)) {
            let (t, spans, _) = deferred.swap_remove(pos);
            let d = Decision {
                keep: true,
                rule: datatracing_core::policy::LINEAGE_RULE.to_string(),
                sample_rate: 1,
                keep_linked: true,
                rate_limited: false,
            };
            let mut more = Vec::new();
            self.keep(t, spans, d, out, &mut more);
            deferred.extend(more);
        }
        for (t, _, d) in deferred {
            self.metrics
                .decisions
                .get_or_create(&DecisionLabels {
                    rule: d.rule.clone(),
                    outcome: "drop",
                })
                .inc();
            self.dropped.insert(t, d);
            self.lineage.remove(&t);
        }
    }

    fn update_gauges(&self) {
        self.metrics.buffered_traces.set(self.buffer.len() as i64);
        self.metrics.buffered_spans.set(self.spans as i64);
        self.metrics.buffered_bytes.set(self.bytes as i64);
    }

    /// Decides every trace whose time has come, and the oldest while over budget.
    fn decide_due(&mut self, out: &mut Vec<Span>) {
        let now = (self.now)();
        let (wait, idle, max_age) = (
            Self::ns(self.config.decision_wait),
            Self::ns(self.config.idle_timeout),
            Self::ns(self.config.max_trace_age),
        );
        let due: BTreeSet<(i64, TraceId)> = self
            .buffer
            .iter()
            .filter(|(_, b)| {
                b.root_ns.is_some_and(|r| now - r >= wait)
                    || now - b.last_ns >= idle
                    || now - b.first_ns >= max_age
                    || b.spans.len() >= self.config.max_spans_per_trace
            })
            .map(|(t, b)| (b.first_ns, *t))
            .collect();
        let mut deferred = Vec::new();
        for (first, t) in due {
            if let Some(b) = self.buffer.get(&t) {
                if b.spans.len() >= self.config.max_spans_per_trace {
                    self.metrics
                        .early
                        .get_or_create(&ReasonLabel {
                            reason: "span_limit",
                        })
                        .inc();
                } else if now - first >= max_age
                    && b.root_ns.is_none_or(|r| now - r < wait)
                    && now - b.last_ns < idle
                {
                    self.metrics
                        .early
                        .get_or_create(&ReasonLabel { reason: "max_age" })
                        .inc();
                }
            }
            self.decide(t, out, &mut deferred);
        }
        while self.buffer.len() > self.config.max_traces || self.bytes > self.config.max_bytes {
            let reason = if self.buffer.len() > self.config.max_traces {
                "max_traces"
            } else {
                "max_bytes"
            };
            let Some((_, oldest)) = self.arrival.pop_front() else {
                break;
            };
            if self.buffer.contains_key(&oldest) {
                self.metrics
                    .early
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                self.decide(oldest, out, &mut deferred);
            }
        }
        self.settle(deferred, out);
        // Drop arrival entries of traces already decided so the queue stays small.
        while let Some((_, t)) = self.arrival.front() {
            if self.buffer.contains_key(t) {
                break;
            }
            self.arrival.pop_front();
        }
        self.update_gauges();
    }
}

impl Sampler for TailSampler {
    fn offer(&mut self, spans: Vec<Span>) -> Vec<Span> {
        let now = (self.now)();
        let mut out = Vec::new();
        for mut span in spans {
            self.note_links(&span);
            let t = span.trace_id;
            if let Some(d) = self.kept.get(&t) {
                let d = d.clone();
                Self::stamp(&mut span, &d, self.config.dry_run);
                self.metrics
                    .late
                    .get_or_create(&OutcomeLabel { outcome: "kept" })
                    .inc();
                out.push(span);
                continue;
            }
            if let Some(d) = self.dropped.get(&t) {
                self.metrics
                    .late
                    .get_or_create(&OutcomeLabel { outcome: "dropped" })
                    .inc();
                if self.config.dry_run {
                    let d = d.clone();
                    Self::stamp(&mut span, &d, true);
                    out.push(span);
                }
                continue;
            }
            let size = span.size_bytes();
            let root = span.parent_id.is_none();
            let b = self.buffer.entry(t).or_insert_with(|| {
                self.arrival.push_back((now, t));
                Buffered {
                    spans: Vec::new(),
                    bytes: 0,
                    first_ns: now,
                    last_ns: now,
                    root_ns: None,
                }
            });
            b.spans.push(span);
            b.bytes += size;
            b.last_ns = now;
            if root && b.root_ns.is_none() {
                b.root_ns = Some(now);
            }
            self.bytes += size;
            self.spans += 1;
        }
        self.decide_due(&mut out);
        out
    }

    fn tick(&mut self) -> Vec<Span> {
        let mut out = Vec::new();
        self.decide_due(&mut out);
        out
    }

    fn flush(&mut self) -> Vec<Span> {
        let mut out = Vec::new();
        let mut deferred = Vec::new();
        let traces: Vec<TraceId> = self.arrival.iter().map(|(_, t)| *t).collect();
        for t in traces {
            match self.config.on_shutdown {
                ShutdownRule::Decide => self.decide(t, &mut out, &mut deferred),
                ShutdownRule::KeepAll => {
                    if let Some(b) = self.buffer.remove(&t) {
                        out.extend(b.spans);
                    }
                }
                ShutdownRule::DropAll => {
                    self.buffer.remove(&t);
                }
            }
        }
        self.settle(deferred, &mut out);
        self.buffer.clear();
        self.arrival.clear();
        self.bytes = 0;
        self.spans = 0;
        self.update_gauges();
        out
    }

    fn pending(&self) -> bool {
        !self.buffer.is_empty()
    }
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

/// `GET /admin/sampling` (status) and `POST /admin/sampling/reload`.
pub(crate) fn admin_routes(holder: Option<Arc<PolicyHolder>>) -> axum::Router {
    use axum::routing::{get, post};
    use datatracing_http::{ApiError, ErrorCode};
    let status = {
        let holder = holder.clone();
        move || {
            let holder = holder.clone();
            async move {
                match holder {
                    Some(h) => {
                        axum::Json(serde_json::json!({ "enabled": true, "status": h.status() }))
                    }
                    None => axum::Json(serde_json::json!({ "enabled": false })),
                }
            }
        }
    };
    let reload = move || {
        let holder = holder.clone();
        async move {
            let Some(h) = holder else {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    "sampling is not enabled",
                ));
            };
            let h2 = Arc::clone(&h);
            match tokio::task::spawn_blocking(move || h2.reload()).await {
                Ok(Ok(changed)) => Ok(axum::Json(
                    serde_json::json!({ "changed": changed, "status": h.status() }),
                )),
                Ok(Err(e)) => Err(ApiError::invalid_argument(format!(
                    "policy rejected; the previous one stays: {e}"
                ))),
                Err(e) => Err(ApiError::internal(&e)),
            }
        }
    };
    axum::Router::new()
        .route("/admin/sampling", get(status))
        .route("/admin/sampling/reload", post(reload))
}
