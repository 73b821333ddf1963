//! The tail sampler: buffers spans by trace, decides each trace with the policy in force
//! when it comes due, keeps lineages whole, and stamps kept spans.

use std::collections::HashMap;
use std::sync::Arc;

use datatracing_config::{SamplingConfig, ShutdownRule};
use datatracing_core::policy::{Decision, LINEAGE_RULE, TraceFacts};
use datatracing_core::{AttributeValue, ConfigDuration, Span, Timestamp, TraceId};

use super::buffer::{Timing, TraceBuffer};
use super::decisions::DecisionCache;
use super::lineage::Lineage;
use super::metrics::{DecisionLabels, OutcomeLabel, ReasonLabel, SamplingMetrics};
use super::policy::PolicyHolder;
use super::{RATE_ATTR, RULE_ATTR};
use crate::route::lineage::{PeerLineage, PeerMessage};
use crate::sample::Sampler;

/// The tail sampler. `now` is injected so tests drive time.
pub struct TailSampler {
    config: SamplingConfig,
    policy: Arc<PolicyHolder>,
    metrics: SamplingMetrics,
    buffer: TraceBuffer,
    kept: DecisionCache,
    dropped: DecisionCache,
    lineage: Lineage,
    /// The other replicas, when routing is on: lineage crosses to their traces.
    peers: Option<PeerLineage>,
    now: Box<dyn Fn() -> i64 + Send>,
}

impl std::fmt::Debug for TailSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailSampler")
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

/// One decision pass: what it releases, the drops it holds back until the pass ends (a
/// trace decided later in the same pass may keep them for lineage), and the traces still
/// to look at. Work is a list, not recursion, so a long chain of linked traces cannot
/// exhaust the stack.
#[derive(Default)]
struct Pass {
    out: Vec<Span>,
    deferred: HashMap<TraceId, (Vec<Span>, Decision)>,
    /// Deferred ids in the order they were deferred, for a deterministic settle.
    deferred_order: Vec<TraceId>,
    work: Vec<TraceId>,
}

fn ns(d: ConfigDuration) -> i64 {
    i64::try_from(d.get().as_nanos()).unwrap_or(i64::MAX)
}

fn lineage_decision() -> Decision {
    Decision {
        keep: true,
        rule: LINEAGE_RULE.to_string(),
        sample_rate: 1,
        keep_linked: true,
        rate_limited: false,
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
        let lineage = Lineage::new(cache, ns(config.lineage_timeout), metrics.clone());
        Self {
            config,
            policy,
            metrics,
            buffer: TraceBuffer::default(),
            kept: DecisionCache::new(cache),
            dropped: DecisionCache::new(cache),
            lineage,
            peers: None,
            now,
        }
    }

    /// Sends lineage to the owners of traces this replica does not own.
    pub fn with_peers(mut self, peers: PeerLineage) -> Self {
        self.peers = Some(peers);
        self
    }

    /// The peers, when `t` belongs to another replica.
    fn remote(&self, t: &TraceId) -> Option<&PeerLineage> {
        self.peers.as_ref().filter(|p| !p.owns(t))
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

    fn linked_to_kept(&self, t: &TraceId) -> bool {
        self.lineage.is_awaited(t)
            || self
                .lineage
                .linked(t)
                .any(|l| self.kept.get(l).is_some_and(|d| d.keep_linked))
    }

    /// Decides `t` and every trace its decision pulls into the lineage.
    fn decide(&mut self, t: TraceId, pass: &mut Pass) {
        pass.work.push(t);
        while let Some(t) = pass.work.pop() {
            if let Some(b) = self.buffer.remove(&t) {
                let policy = self.policy.current();
                let facts = TraceFacts {
                    spans: &b.spans,
                    linked_to_kept: self.linked_to_kept(&t),
                };
                let d = policy.evaluate(&facts, (self.now)());
                if d.keep || self.config.dry_run {
                    self.keep(t, b.spans, d, pass);
                } else {
                    pass.deferred.insert(t, (b.spans, d));
                    pass.deferred_order.push(t);
                }
            } else if self.linked_to_kept(&t)
                && let Some((spans, _)) = pass.deferred.remove(&t)
            {
                // Dropped earlier in this pass; a trace kept since asked for its lineage.
                self.keep(t, spans, lineage_decision(), pass);
            }
        }
    }

    fn keep(&mut self, t: TraceId, spans: Vec<Span>, d: Decision, pass: &mut Pass) {
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
        pass.out.extend(spans.into_iter().map(|mut s| {
            Self::stamp(&mut s, &d, dry);
            s
        }));
        let spread = d.keep && d.keep_linked;
        if d.keep {
            self.kept.insert(t, d);
        } else {
            self.dropped.insert(t, d);
        }
        self.lineage.resolved(&t);
        if spread {
            // Lineage: traces linked either way are kept, now if buffered or dropped
            // earlier in this pass, later if they have not arrived.
            let now = (self.now)();
            let linked: Vec<TraceId> = self
                .lineage
                .linked(&t)
                .filter(|l| self.kept.get(l).is_none())
                .copied()
                .collect();
            for l in linked {
                if let Some(p) = self.remote(&l) {
                    // Its owner keeps it (now, or when its spans arrive there).
                    p.send(PeerMessage::Keep { trace: l });
                    continue;
                }
                self.lineage.await_trace(l, now);
                pass.work.push(l);
            }
        }
    }

    /// Ends a decision pass: the drops held back are final.
    fn settle(&mut self, mut pass: Pass) -> Vec<Span> {
        for t in std::mem::take(&mut pass.deferred_order) {
            let Some((_, d)) = pass.deferred.remove(&t) else {
                continue; // kept for lineage later in the pass
            };
            self.metrics
                .decisions
                .get_or_create(&DecisionLabels {
                    rule: d.rule.clone(),
                    outcome: "drop",
                })
                .inc();
            self.dropped.insert(t, d);
            self.lineage.resolved(&t);
        }
        pass.out
    }

    fn update_gauges(&self) {
        self.metrics.buffered_traces.set(self.buffer.len() as i64);
        self.metrics.buffered_spans.set(self.buffer.spans() as i64);
        self.metrics.buffered_bytes.set(self.buffer.bytes() as i64);
    }

    fn early(&self, reason: &'static str) {
        self.metrics
            .early
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Decides every trace whose time has come, and the oldest while over budget.
    fn decide_due(&mut self, mut pass: Pass) -> Vec<Span> {
        let now = (self.now)();
        self.lineage.expire(now);
        let timing = Timing {
            wait: ns(self.config.decision_wait),
            idle: ns(self.config.idle_timeout),
            max_age: ns(self.config.max_trace_age),
            max_spans: self.config.max_spans_per_trace,
        };
        for (first, t) in self.buffer.due(now, timing) {
            if let Some(b) = self.buffer.get(&t) {
                if b.spans.len() >= timing.max_spans {
                    self.early("span_limit");
                } else if now - first >= timing.max_age
                    && b.root_ns.is_none_or(|r| now - r < timing.wait)
                    && now - b.last_ns < timing.idle
                {
                    self.early("max_age");
                }
            }
            self.decide(t, &mut pass);
        }
        while self.buffer.len() > self.config.max_traces
            || self.buffer.bytes() > self.config.max_bytes
        {
            let reason = if self.buffer.len() > self.config.max_traces {
                "max_traces"
            } else {
                "max_bytes"
            };
            let Some(oldest) = self.buffer.pop_oldest() else {
                break;
            };
            if self.buffer.contains(&oldest) {
                self.early(reason);
                self.decide(oldest, &mut pass);
            }
        }
        let out = self.settle(pass);
        self.buffer.trim_arrival();
        self.update_gauges();
        out
    }
}

impl Sampler for TailSampler {
    fn offer(&mut self, spans: Vec<Span>) -> Vec<Span> {
        let now = (self.now)();
        let mut pass = Pass::default();
        for mut span in spans {
            for l in self.lineage.note_links(&span) {
                if let Some(p) = self.remote(&l) {
                    // The owner of `l` learns of the link, so a keep on its side spreads here.
                    p.send(PeerMessage::Link {
                        trace: l,
                        linked: span.trace_id,
                    });
                }
            }
            let t = span.trace_id;
            if let Some(d) = self.kept.get(&t) {
                let d = d.clone();
                Self::stamp(&mut span, &d, self.config.dry_run);
                self.metrics
                    .late
                    .get_or_create(&OutcomeLabel { outcome: "kept" })
                    .inc();
                pass.out.push(span);
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
                    pass.out.push(span);
                }
                continue;
            }
            self.buffer.push(span, now);
        }
        self.decide_due(pass)
    }

    fn tick(&mut self) -> Vec<Span> {
        self.decide_due(Pass::default())
    }

    fn flush(&mut self) -> Vec<Span> {
        let mut pass = Pass::default();
        for t in self.buffer.in_arrival_order() {
            match self.config.on_shutdown {
                ShutdownRule::Decide => self.decide(t, &mut pass),
                ShutdownRule::KeepAll => {
                    if let Some(b) = self.buffer.remove(&t) {
                        pass.out.extend(b.spans);
                    }
                }
                ShutdownRule::DropAll => {
                    self.buffer.remove(&t);
                }
            }
        }
        let out = self.settle(pass);
        self.buffer.clear();
        self.update_gauges();
        out
    }

    fn pending(&self) -> bool {
        !self.buffer.is_empty()
    }

    fn take_unowned(&mut self) -> Vec<Span> {
        let Some(p) = &self.peers else {
            return Vec::new();
        };
        let gone: Vec<TraceId> = self
            .buffer
            .in_arrival_order()
            .into_iter()
            .filter(|t| self.buffer.contains(t) && !p.owns(t))
            .collect();
        let mut out = Vec::new();
        for t in gone {
            if let Some(b) = self.buffer.remove(&t) {
                out.extend(b.spans);
            }
        }
        self.buffer.trim_arrival();
        self.update_gauges();
        out
    }

    fn peer(&mut self, msgs: Vec<PeerMessage>) -> Vec<Span> {
        let now = (self.now)();
        let mut pass = Pass::default();
        for m in msgs {
            match m {
                PeerMessage::Link { trace, linked } => {
                    self.lineage.link_pair(trace, linked);
                    if self.kept.get(&trace).is_some_and(|d| d.keep_linked)
                        && self.kept.get(&linked).is_none()
                        && let Some(p) = self.remote(&linked)
                    {
                        p.send(PeerMessage::Keep { trace: linked });
                    }
                }
                PeerMessage::Keep { trace } => {
                    if self.kept.get(&trace).is_some() {
                        continue;
                    }
                    // Kept now if buffered; awaited (bounded) if its spans are still to come.
                    self.lineage.await_trace(trace, now);
                    self.decide(trace, &mut pass);
                }
            }
        }
        let out = self.settle(pass);
        self.update_gauges();
        out
    }
}
