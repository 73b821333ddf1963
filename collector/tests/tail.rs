//! Tail sampling with a controllable clock: decision timing, budgets, decision caches,
//! lineage, stamping, dry run, reload, shutdown rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use datatracing_collector::Sampler;
use datatracing_collector::tail::{
    PolicyHolder, RATE_ATTR, RULE_ATTR, SamplingMetrics, TailSampler,
};
use datatracing_config::{SamplingConfig, ShutdownRule};
use datatracing_core::policy::SamplingPolicy;
use datatracing_core::{AttributeValue, ConfigDuration, Span, TraceId};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

const SEC: i64 = 1_000_000_000;

fn fixture(name: &str) -> Vec<Span> {
    let path = format!(
        "{}/../fixtures/traces/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(v["spans"].clone()).unwrap()
}

fn policy(v: Value) -> SamplingPolicy {
    serde_json::from_value(v).unwrap()
}

fn errors_policy() -> SamplingPolicy {
    policy(json!({
        "rules": [{"name": "errors", "when": {"status": ["ERROR"]}, "action": {"decision": "keep", "keep_linked": true}}],
        "default": {"decision": "drop"}
    }))
}

struct Rig {
    clock: Arc<AtomicI64>,
    sampler: TailSampler,
    registry: Registry,
}

fn rig(config: SamplingConfig, p: SamplingPolicy) -> Rig {
    let mut registry = Registry::default();
    let metrics = SamplingMetrics::register(&mut registry);
    let holder = PolicyHolder::from_policy(&p, config.dry_run, metrics.clone()).unwrap();
    let clock = Arc::new(AtomicI64::new(0));
    let c = clock.clone();
    let sampler = TailSampler::with_clock(
        config,
        holder,
        metrics,
        Box::new(move || c.load(Ordering::SeqCst)),
    );
    Rig {
        clock,
        sampler,
        registry,
    }
}

fn config() -> SamplingConfig {
    SamplingConfig {
        decision_wait: ConfigDuration::from_secs(2),
        idle_timeout: ConfigDuration::from_secs(5),
        max_trace_age: ConfigDuration::from_secs(30),
        ..SamplingConfig::default()
    }
}

impl Rig {
    fn at(&self, s: i64) {
        self.clock.store(s * SEC, Ordering::SeqCst);
    }
    fn metrics(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).unwrap();
        s
    }
}

#[test]
fn decided_after_the_root_and_the_wait_then_stamped() {
    let mut r = rig(config(), errors_policy());
    let spans = fixture("error_in_step");
    assert!(
        r.sampler.offer(spans.clone()).is_empty(),
        "buffered, not decided"
    );
    r.at(1);
    assert!(r.sampler.tick().is_empty(), "the wait has not passed");
    r.at(2);
    let out = r.sampler.tick();
    assert_eq!(out.len(), 2);
    for s in &out {
        assert_eq!(s.attributes[RULE_ATTR], AttributeValue::from("errors"));
        assert_eq!(s.attributes[RATE_ATTR], AttributeValue::Int(1));
    }
    assert!(!r.sampler.pending());
    let m = r.metrics();
    assert!(
        m.contains("datatracing_sampling_decisions_total{rule=\"errors\",outcome=\"keep\"} 1"),
        "{m}"
    );
}

#[test]
fn idle_traces_without_root_are_decided_and_late_spans_follow() {
    let mut r = rig(config(), errors_policy());
    let mut orphans = fixture("no_root");
    let late = orphans.pop().unwrap();
    r.sampler.offer(orphans);
    r.at(4);
    assert!(r.sampler.tick().is_empty());
    r.at(5);
    assert!(r.sampler.tick().is_empty(), "decided: dropped by default");
    r.at(6);
    assert!(
        r.sampler.offer(vec![late]).is_empty(),
        "a late span follows the drop"
    );
    let m = r.metrics();
    assert!(
        m.contains("datatracing_sampling_late_spans_total{outcome=\"dropped\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("datatracing_sampling_decisions_total{rule=\"default\",outcome=\"drop\"} 1"),
        "{m}"
    );

    // A late span of a kept trace is kept and stamped.
    let mut r = rig(config(), errors_policy());
    let spans = fixture("error_in_step");
    r.sampler.offer(spans.clone());
    r.at(2);
    assert_eq!(r.sampler.tick().len(), 2);
    let mut extra = spans[1].clone();
    extra.span_id = "00000000000000ff".parse().unwrap();
    let out = r.sampler.offer(vec![extra]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].attributes[RULE_ATTR], AttributeValue::from("errors"));
}

#[test]
fn max_age_span_limit_and_budgets_decide_early() {
    let mut c = config();
    c.max_spans_per_trace = 500;
    c.max_traces = 2;
    let keep_all = policy(json!({"rules": [], "default": {"decision": "keep"}}));
    let mut r = rig(c, keep_all);
    // A trace that never stops growing and has no root: decided at max age.
    let mut stream = fixture("no_root");
    for s in 0..31 {
        r.at(s);
        let mut span = stream[0].clone();
        span.span_id = format!("{:016x}", 100 + s).parse().unwrap();
        stream.push(span.clone());
        let out = r.sampler.offer(vec![span]);
        if s < 30 {
            assert!(out.is_empty(), "second {s}");
        } else {
            assert_eq!(out.len(), 31);
        }
    }
    // 1,000 spans exceed the per-trace limit: decided at once.
    let out = r.sampler.offer(fixture("large_trace"));
    assert_eq!(out.len(), 1000);
    // A third buffered trace is over max_traces: the oldest goes first.
    let (a, b, c3) = (fixture("healthy"), fixture("fan_in"), fixture("slow_step"));
    assert!(r.sampler.offer(a.clone()).is_empty());
    assert!(r.sampler.offer(b).is_empty());
    let out = r.sampler.offer(c3);
    assert_eq!(out.len(), a.len());
    assert_eq!(out[0].trace_id, a[0].trace_id);
    let m = r.metrics();
    for reason in ["max_age", "span_limit", "max_traces"] {
        assert!(
            m.contains(&format!(
                "datatracing_sampling_early_decisions_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {m}"
        );
    }
}

#[test]
fn lineage_keeps_buffered_and_later_linked_traces() {
    let mut r = rig(config(), errors_policy());
    let chain = fixture("cross_trace_chain");
    let id = |n: u128| TraceId::from_bytes(n.to_be_bytes());
    // The first two jobs arrive and wait; the failing third job arrives and is decided.
    let (first_two, last): (Vec<Span>, Vec<Span>) =
        chain.into_iter().partition(|s| s.trace_id != id(0x2003));
    assert!(r.sampler.offer(first_two).is_empty());
    r.at(1);
    let mut out = r.sampler.offer(last);
    r.at(3);
    out.extend(r.sampler.tick());
    let mut kept: Vec<(TraceId, String)> = out
        .iter()
        .map(|s| {
            (
                s.trace_id,
                match &s.attributes[RULE_ATTR] {
                    AttributeValue::String(r) => r.clone(),
                    _ => String::new(),
                },
            )
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        vec![
            (id(0x2001), "lineage".into()),
            (id(0x2002), "lineage".into()),
            (id(0x2003), "errors".into())
        ],
        "the whole lineage is kept, transitively"
    );
    // A downstream job that shows up later, linking to the failed one, joins the lineage.
    let mut later = fixture("healthy");
    for s in &mut later {
        s.trace_id = id(0x2004);
    }
    later[0].links.push(datatracing_core::Link {
        trace_id: id(0x2003),
        span_id: "0000000000000001".parse().unwrap(),
        link_type: datatracing_core::LinkType::DataDependency,
        attributes: Default::default(),
    });
    r.at(10);
    assert!(r.sampler.offer(later).is_empty());
    r.at(12);
    let out = r.sampler.tick();
    assert_eq!(out.len(), 3);
    assert_eq!(
        out[0].attributes[RULE_ATTR],
        AttributeValue::from("lineage")
    );
}

#[test]
fn dry_run_keeps_everything_and_says_what_would_happen() {
    let mut c = config();
    c.dry_run = true;
    let mut r = rig(c, errors_policy());
    r.sampler.offer(fixture("healthy"));
    r.at(2);
    let out = r.sampler.tick();
    assert_eq!(out.len(), 3);
    assert_eq!(
        out[0].attributes[RULE_ATTR],
        AttributeValue::from("dry-run-drop:default")
    );
    assert!(r.metrics().contains("outcome=\"would_drop\"} 1"));
}

#[test]
fn shutdown_rules() {
    for (rule, want) in [
        (ShutdownRule::Decide, 2),
        (ShutdownRule::KeepAll, 5),
        (ShutdownRule::DropAll, 0),
    ] {
        let mut c = config();
        c.on_shutdown = rule;
        let mut r = rig(c, errors_policy());
        r.sampler.offer(fixture("error_in_step"));
        r.sampler.offer(fixture("healthy"));
        assert_eq!(r.sampler.flush().len(), want, "{rule:?}");
        assert!(!r.sampler.pending());
    }
}

#[test]
fn reload_swaps_valid_policies_and_keeps_the_old_one_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, "rules: []\ndefault: { decision: drop }\n").unwrap();
    let mut registry = Registry::default();
    let metrics = SamplingMetrics::register(&mut registry);
    let c = SamplingConfig {
        enabled: true,
        policy_file: Some(file.clone()),
        ..SamplingConfig::default()
    };
    let holder = PolicyHolder::load(&c, metrics).unwrap();
    let first = holder.status().active_hash;
    assert_eq!(holder.reload(), Ok(false), "unchanged file");
    std::fs::write(
        &file,
        "{\"rules\": [], \"default\": {\"decision\": \"keep\"}}",
    )
    .unwrap();
    assert_eq!(holder.reload(), Ok(true), "JSON works too");
    let second = holder.status().active_hash;
    assert_ne!(first, second);
    std::fs::write(&file, "rules:\n  - name: x\n    when: {}\n    action: { decision: keep }\ndefault: { decision: keep }\n").unwrap();
    let err = holder.reload().unwrap_err();
    assert!(
        err.contains("rules[0].when: set exactly one condition"),
        "{err}"
    );
    let status = holder.status();
    assert_eq!(
        status.active_hash, second,
        "the previous policy stays in force"
    );
    assert_eq!((status.reloads_ok, status.reloads_rejected), (1, 1));
    assert!(status.last_error.unwrap().contains("rules[0].when"));
    let mut m = String::new();
    prometheus_client::encoding::text::encode(&mut m, &registry).unwrap();
    assert!(
        m.contains("datatracing_sampling_policy_reloads_total{outcome=\"rejected\"} 1"),
        "{m}"
    );
}

/// One root span of trace `n` (status OK, or ERROR when `error`), linked to trace `link_to`.
fn linked_root(n: u128, link_to: Option<u128>, error: bool) -> Span {
    static ROOT: std::sync::OnceLock<Span> = std::sync::OnceLock::new();
    let mut s = ROOT.get_or_init(|| fixture("healthy").remove(0)).clone();
    s.trace_id = TraceId::from_bytes(n.to_be_bytes());
    s.status.code = if error {
        datatracing_core::StatusCode::Error
    } else {
        datatracing_core::StatusCode::Ok
    };
    s.links.clear();
    if let Some(l) = link_to {
        s.links.push(datatracing_core::Link {
            trace_id: TraceId::from_bytes(l.to_be_bytes()),
            span_id: "0000000000000001".parse().unwrap(),
            link_type: datatracing_core::LinkType::FollowsFrom,
            attributes: Default::default(),
        });
    }
    s
}

#[test]
fn a_long_lineage_chain_is_kept_without_recursion() {
    // Trace n follows from trace n-1; the first one fails. Propagating along the chain one
    // call deeper per trace would overflow a test thread's stack long before the end.
    const N: u128 = 50_000;
    let mut c = config();
    c.max_traces = 1_000_000;
    c.decision_cache_size = 1_000_000;
    let mut r = rig(c, errors_policy());
    let chain: Vec<Span> = (1..=N)
        .map(|n| linked_root(n, (n > 1).then(|| n - 1), n == 1))
        .collect();
    assert!(r.sampler.offer(chain).is_empty());
    r.at(3);
    let out = r.sampler.tick();
    assert_eq!(out.len() as u128, N, "the whole chain is kept");
    let lineage = out
        .iter()
        .filter(|s| s.attributes[RULE_ATTR] == AttributeValue::from("lineage"))
        .count();
    assert_eq!(lineage as u128, N - 1);
    assert!(!r.sampler.pending());
}

#[test]
fn linked_traces_that_never_arrive_are_forgotten_within_bounds() {
    let mut c = config();
    c.decision_cache_size = 100;
    c.lineage_timeout = ConfigDuration::from_secs(60);
    let mut r = rig(c, errors_policy());
    let pending = |r: &Rig| -> i64 {
        let m = r.metrics();
        m.lines()
            .find_map(|l| l.strip_prefix("datatracing_sampling_lineage_pending "))
            .unwrap_or_else(|| panic!("no lineage gauge in {m}"))
            .parse()
            .unwrap()
    };
    // A stream of failing traces, each linked to an upstream trace this collector never
    // sees: every kept trace awaits its upstream, but no more than the cap at once.
    let mut max_seen = 0;
    for round in 0..50u128 {
        let batch: Vec<Span> = (0..20u128)
            .map(|i| {
                let n = 1 + round * 20 + i;
                linked_root(n, Some(1_000_000 + n), true)
            })
            .collect();
        r.at(round as i64 * 3);
        r.sampler.offer(batch);
        r.at(round as i64 * 3 + 2);
        assert_eq!(r.sampler.tick().len(), 20);
        max_seen = max_seen.max(pending(&r));
    }
    assert_eq!(
        max_seen, 100,
        "the awaited ids reach the cap and stay there"
    );
    let m = r.metrics();
    assert!(
        m.contains("datatracing_sampling_lineage_forgotten_total{reason=\"capacity\"} 900"),
        "{m}"
    );
    // After the timeout every awaited id is forgotten, counted as expired.
    r.at(50 * 3 + 61);
    r.sampler.tick();
    assert_eq!(pending(&r), 0);
    let m = r.metrics();
    assert!(
        m.contains("datatracing_sampling_lineage_forgotten_total{reason=\"expired\"}"),
        "{m}"
    );
    // An upstream trace that arrives while awaited is still kept for lineage.
    r.at(300);
    r.sampler.offer(vec![linked_root(9_001, Some(9_000), true)]);
    r.at(303);
    assert_eq!(r.sampler.tick().len(), 1);
    assert_eq!(pending(&r), 1);
    r.at(304);
    r.sampler.offer(vec![linked_root(9_000, None, false)]);
    r.at(306);
    let out = r.sampler.tick();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].attributes[RULE_ATTR],
        AttributeValue::from("lineage")
    );
    assert_eq!(pending(&r), 0);
}
