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
        // Decisions of traces owned elsewhere now go to their new owner, which applies
        // them to the trace's spans that reach it later (or already did): decided once.
        // Kept here as well, for spans still on their way to this replica.
        for (t, d) in self.kept.iter().chain(self.dropped.iter()) {
            if !p.owns(t) {
                p.send(PeerMessage::Decided {
                    trace: *t,
                    decision: d.clone(),
                });
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
                PeerMessage::Decided { trace, decision } => {
                    if self.kept.get(&trace).is_some() || self.dropped.get(&trace).is_some() {
                        continue;
                    }
                    self.metrics.handed_over.inc();
                    match self.buffer.remove(&trace) {
                        // Spans that arrived here first get the previous owner's decision.
                        Some(b) if decision.keep || self.config.dry_run => {
                            self.keep(trace, b.spans, decision, &mut pass);
                        }
                        Some(b) => {
                            pass.deferred.insert(trace, (b.spans, decision));
                            pass.deferred_order.push(trace);
                        }
                        None if decision.keep => self.kept.insert(trace, decision),
                        None => self.dropped.insert(trace, decision),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Ring;
    use datatracing_core::{Link, LinkType, StatusCode, Timestamp};
    use std::sync::atomic::{AtomicI64, Ordering};

    const SEC: i64 = 1_000_000_000;

    fn replica(
        me: &str,
        clock: Arc<AtomicI64>,
    ) -> (TailSampler, tokio::sync::mpsc::Receiver<PeerMessage>) {
        let policy: datatracing_core::policy::SamplingPolicy =
            serde_json::from_value(serde_json::json!({
                "rules": [{"name": "errors", "when": {"status": ["ERROR"]},
                           "action": {"decision": "keep", "keep_linked": true}}],
                "default": {"decision": "drop"}
            }))
            .unwrap();
        let metrics = SamplingMetrics::default();
        let holder = PolicyHolder::from_policy(&policy, false, metrics.clone()).unwrap();
        let config = SamplingConfig {
            decision_wait: ConfigDuration::from_secs(2),
            ..SamplingConfig::default()
        };
        let ring = Ring::new(vec!["a:1".into(), "b:1".into()], me);
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(ring));
        let (peers, outbox) = PeerLineage::for_test(rx);
        let s = TailSampler::with_clock(
            config,
            holder,
            metrics,
            Box::new(move || clock.load(Ordering::SeqCst)),
        )
        .with_peers(peers);
        (s, outbox)
    }

    /// A trace id `b:1` owns (`owned_by_b`) or `a:1` owns.
    fn trace(owned_by_b: bool, skip: u128) -> TraceId {
        let ring = Ring::new(vec!["a:1".into(), "b:1".into()], "a:1");
        (1..10_000u128)
            .map(|n| TraceId::from_bytes((n * 7919).to_be_bytes()))
            .filter(|t| ring.owns(t) != owned_by_b)
            .nth(skip as usize)
            .unwrap()
    }

    fn root(t: TraceId, error: bool, link: Option<TraceId>) -> Span {
        let mut s = datatracing_store_contract::simple_span(
            t,
            1,
            None,
            "s",
            Timestamp::from_unix_nanos(1),
            1,
        );
        if error {
            s.status.code = StatusCode::Error;
        }
        if let Some(l) = link {
            s.links.push(Link {
                trace_id: l,
                span_id: datatracing_core::SpanId::from_bytes([0, 0, 0, 0, 0, 0, 0, 1]),
                link_type: LinkType::FollowsFrom,
                attributes: Default::default(),
            });
        }
        s
    }

    /// A keep with keep_linked on replica A reaches B, which owns the linked trace; a link
    /// seen on A is announced to the owner of the linked trace.
    #[test]
    fn lineage_crosses_to_the_owner_of_the_linked_trace() {
        let clock = Arc::new(AtomicI64::new(0));
        let (mut a, mut a_out) = replica("a:1", clock.clone());
        let (mut b, _b_out) = replica("b:1", clock.clone());
        let (t, l) = (trace(false, 0), trace(true, 0));
        assert!(a.offer(vec![root(t, true, Some(l))]).is_empty(), "buffered");
        assert_eq!(
            a_out.try_recv().unwrap(),
            PeerMessage::Link {
                trace: l,
                linked: t
            },
            "B learns that T links to its trace"
        );
        assert!(b.offer(vec![root(l, false, None)]).is_empty());
        clock.store(3 * SEC, Ordering::SeqCst);
        let kept = a.tick();
        assert_eq!(kept.len(), 1, "T kept on A");
        assert_eq!(a_out.try_recv().unwrap(), PeerMessage::Keep { trace: l });
        // B keeps L for lineage at once, before its own decision (which would drop it).
        let out = b.peer(vec![PeerMessage::Keep { trace: l }]);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].attributes.get(RULE_ATTR),
            Some(&AttributeValue::String(LINEAGE_RULE.into()))
        );
        assert!(b.tick().is_empty() && !b.pending());
        // A link announced after T was kept is answered with a keep.
        let later = trace(true, 1);
        let none = a.peer(vec![PeerMessage::Link {
            trace: t,
            linked: later,
        }]);
        assert!(none.is_empty());
        assert_eq!(
            a_out.try_recv().unwrap(),
            PeerMessage::Keep { trace: later }
        );
    }

    /// After a membership change the traces this replica no longer owns leave its buffer.
    #[test]
    fn unowned_traces_are_taken_out_for_hand_off() {
        let clock = Arc::new(AtomicI64::new(0));
        let (mut a, _out) = replica("a:1", clock);
        let (mine, theirs) = (trace(false, 0), trace(true, 0));
        // Both buffered here (spans a peer could not take are kept locally).
        a.offer(vec![root(mine, false, None), root(theirs, false, None)]);
        let gone = a.take_unowned();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].trace_id, theirs);
        assert!(a.pending(), "its own trace stays");
    }

    /// After a membership change the decisions of traces owned elsewhere go to their new
    /// owner, which applies them to the spans it buffered and to spans still to come.
    #[test]
    fn decisions_are_handed_to_the_new_owner() {
        let clock = Arc::new(AtomicI64::new(0));
        let (mut a, mut a_out) = replica("a:1", clock.clone());
        let (mut b, _b_out) = replica("b:1", clock.clone());
        // Decided on A (which owned them before the members changed): one kept, one dropped.
        let (kept, dropped) = (trace(true, 0), trace(true, 1));
        a.offer(vec![root(kept, true, None), root(dropped, false, None)]);
        clock.store(3 * SEC, Ordering::SeqCst);
        assert_eq!(a.tick().len(), 1, "the failing trace kept");
        assert!(a.take_unowned().is_empty(), "nothing left buffered");
        let mut handed = Vec::new();
        while let Ok(m) = a_out.try_recv() {
            if let PeerMessage::Decided { trace, decision } = m {
                handed.push((trace, decision.keep, decision.rule));
            }
        }
        handed.sort();
        let mut want = vec![
            (kept, true, "errors".to_string()),
            (dropped, false, "default".to_string()),
        ];
        want.sort();
        assert_eq!(handed, want);
        // On B, a late span of the kept trace was buffered before the decision arrived: the
        // decision releases it with A's rule instead of B deciding on its own (drop).
        let mut child = root(kept, false, None);
        child.span_id = datatracing_core::SpanId::from_bytes([0, 0, 0, 0, 0, 0, 0, 2]);
        child.parent_id = Some(datatracing_core::SpanId::from_bytes([
            0, 0, 0, 0, 0, 0, 0, 1,
        ]));
        assert!(b.offer(vec![child]).is_empty());
        let msgs: Vec<PeerMessage> = want
            .iter()
            .map(|(t, keep, rule)| PeerMessage::Decided {
                trace: *t,
                decision: Decision {
                    keep: *keep,
                    rule: rule.clone(),
                    sample_rate: 1,
                    keep_linked: *keep,
                    rate_limited: false,
                },
            })
            .collect();
        let out = b.peer(msgs);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].attributes.get(RULE_ATTR),
            Some(&AttributeValue::String("errors".into()))
        );
        // A span of the dropped trace arriving later follows A's decision too.
        let mut late = root(dropped, false, None);
        late.span_id = datatracing_core::SpanId::from_bytes([0, 0, 0, 0, 0, 0, 0, 3]);
        assert!(b.offer(vec![late]).is_empty() && !b.pending());
    }
}
