//! Sampling policy evaluation, table-driven over the trace fixtures in `fixtures/traces`,
//! plus property tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use datatracing_core::policy::{CompiledPolicy, Condition, SamplingPolicy, TraceFacts};
use datatracing_core::{Span, TraceId};
use proptest::prelude::*;
use serde_json::{Value, json};

fn fixture(name: &str) -> BTreeMap<TraceId, Vec<Span>> {
    let path = format!(
        "{}/../fixtures/traces/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let spans: Vec<Span> = serde_json::from_value(v["spans"].clone()).unwrap();
    let mut by_trace: BTreeMap<TraceId, Vec<Span>> = BTreeMap::new();
    for s in spans {
        by_trace.entry(s.trace_id).or_default().push(s);
    }
    by_trace
}

fn one(name: &str) -> Vec<Span> {
    fixture(name).into_values().next().unwrap()
}

fn policy(rules: Value, default: Value) -> CompiledPolicy {
    let p: SamplingPolicy =
        serde_json::from_value(json!({ "rules": rules, "default": default })).unwrap();
    p.compile().unwrap_or_else(|e| panic!("{e:?}"))
}

fn matches(when: Value, scope: &str, spans: &[Span]) -> bool {
    let p = policy(
        json!([{ "name": "r", "scope": scope, "when": when, "action": { "decision": "keep" } }]),
        json!({ "decision": "drop" }),
    );
    p.evaluate(
        &TraceFacts {
            spans,
            linked_to_kept: false,
        },
        0,
    )
    .keep
}

#[test]
fn every_condition_type_on_the_fixtures() {
    let cases: Vec<(&str, Value, &str, bool)> = vec![
        (
            "error_in_step",
            json!({"status": ["ERROR", "TIMEOUT"]}),
            "trace",
            true,
        ),
        (
            "healthy",
            json!({"status": ["ERROR", "TIMEOUT"]}),
            "trace",
            false,
        ),
        (
            "slow_step",
            json!({"duration": {"of": "trace", "over": "10s"}}),
            "trace",
            true,
        ),
        (
            "healthy",
            json!({"duration": {"of": "trace", "over": "10s"}}),
            "trace",
            false,
        ),
        (
            "healthy",
            json!({"duration": {"of": "trace", "under": "2s"}}),
            "trace",
            true,
        ),
        (
            "slow_step",
            json!({"duration": {"of": "span", "over": "11s", "under": "12s"}}),
            "trace",
            true,
        ),
        (
            "healthy",
            json!({"operation": {"exact": "transform orders"}}),
            "trace",
            true,
        ),
        (
            "healthy",
            json!({"operation": {"prefix": "load"}}),
            "trace",
            true,
        ),
        (
            "large_trace",
            json!({"operation": {"glob": "partition 4?"}}),
            "trace",
            true,
        ),
        (
            "healthy",
            json!({"operation": {"regex": "^consume (orders|payments)$"}}),
            "trace",
            true,
        ),
        (
            "healthy",
            json!({"operation": {"regex": "^payments"}}),
            "trace",
            false,
        ),
        (
            "healthy",
            json!({"service": {"exact": "spark-etl"}}),
            "trace",
            true,
        ),
        ("fan_in", json!({"kind": ["JOIN"]}), "trace", true),
        ("healthy", json!({"kind": ["JOIN"]}), "trace", false),
        (
            "healthy",
            json!({"attribute": {"key": "dataset", "exists": true}}),
            "trace",
            true,
        ),
        (
            "fan_in",
            json!({"attribute": {"key": "dataset", "exists": false}}),
            "span",
            true,
        ),
        (
            "error_in_step",
            json!({"attribute": {"key": "dataset", "equals": "payments"}}),
            "trace",
            true,
        ),
        (
            "healthy",
            json!({"attribute": {"key": "dataset", "not_equals": "orders"}}),
            "trace",
            false,
        ),
        (
            "healthy",
            json!({"attribute": {"key": "table", "in": ["orders_daily", "x"]}}),
            "trace",
            true,
        ),
        (
            "healthy",
            json!({"attribute": {"key": "table", "regex": "_daily$"}}),
            "trace",
            true,
        ),
        (
            "healthy",
            json!({"attribute": {"key": "records", "number": {"gte": 1000, "lt": 2000}}}),
            "trace",
            true,
        ),
        (
            "error_in_step",
            json!({"attribute": {"key": "failed_rows", "number": {"gt": 3}}}),
            "trace",
            false,
        ),
        (
            "large_trace",
            json!({"span_count": {"min": 1000}}),
            "trace",
            true,
        ),
        ("healthy", json!({"span_count": {"min": 4}}), "trace", false),
        ("no_root", json!({"root_present": false}), "trace", true),
        ("healthy", json!({"root_present": true}), "trace", true),
        ("healthy", json!({"linked_to_kept": true}), "trace", false),
        ("healthy", json!({"probability": 1.0}), "trace", true),
        ("healthy", json!({"probability": 0.0}), "trace", false),
    ];
    for (fix, when, scope, want) in cases {
        let spans = one(fix);
        assert_eq!(
            matches(when.clone(), scope, &spans),
            want,
            "{fix} {scope} {when}"
        );
    }
}

#[test]
fn nesting_and_scope() {
    let spans = one("healthy");
    let both = json!({"all": [{"service": {"exact": "kafka-ingest"}}, {"operation": {"exact": "transform orders"}}]});
    assert!(
        matches(both.clone(), "trace", &spans),
        "different spans may satisfy each part"
    );
    assert!(
        !matches(both, "span", &spans),
        "no single span satisfies both"
    );
    let nested = json!({"any": [
        {"not": {"service": {"prefix": "spark"}}},
        {"all": [{"kind": ["TRANSFORM"]}, {"not": {"attribute": {"key": "dataset", "exists": false}}}]}
    ]});
    assert!(matches(nested.clone(), "span", &spans));
    // In trace scope, `not` negates "some span satisfies".
    assert!(!matches(
        json!({"not": {"service": {"exact": "spark-etl"}}}),
        "trace",
        &spans
    ));
    assert!(matches(
        json!({"not": {"service": {"exact": "spark-etl"}}}),
        "span",
        &spans
    ));
}

#[test]
fn first_match_decides_and_default_closes() {
    let p = policy(
        json!([
            {"name": "drop-health", "when": {"operation": {"glob": "GET /health*"}}, "action": {"decision": "drop"}},
            {"name": "errors", "when": {"status": ["ERROR"]}, "action": {"decision": "keep"}},
            {"name": "catch-all-validate", "when": {"kind": ["VALIDATE"]}, "action": {"decision": "drop"}}
        ]),
        json!({"decision": "keep"}),
    );
    let err = one("error_in_step");
    let d = p.evaluate(
        &TraceFacts {
            spans: &err,
            linked_to_kept: false,
        },
        0,
    );
    assert!(d.keep);
    assert_eq!(
        d.rule, "errors",
        "the earlier matching rule wins over the later one"
    );
    let ok = one("healthy");
    let d = p.evaluate(
        &TraceFacts {
            spans: &ok,
            linked_to_kept: false,
        },
        0,
    );
    assert_eq!((d.keep, d.rule.as_str()), (true, "default"));
}

fn synthetic(n: u64) -> Vec<Vec<Span>> {
    let base = one("healthy");
    (0..n)
        .map(|i| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&(i * 7919 + 1).to_be_bytes());
            b[8..].copy_from_slice(&(i ^ 0xdead_beef).to_be_bytes());
            let id = TraceId::from_bytes(b);
            base.iter()
                .cloned()
                .map(|mut s| {
                    s.trace_id = id;
                    s
                })
                .collect()
        })
        .collect()
}

#[test]
fn sampling_is_deterministic_and_close_to_the_rate() {
    let make = || policy(json!([]), json!({"decision": "keep", "sample_rate": 10}));
    let (a, b) = (make(), make());
    let traces = synthetic(10_000);
    let mut kept = 0;
    for t in &traces {
        let f = TraceFacts {
            spans: t,
            linked_to_kept: false,
        };
        let (da, db) = (a.evaluate(&f, 0), b.evaluate(&f, 0));
        assert_eq!(da, db, "two collectors (two compiled copies) agree");
        assert_eq!(da.sample_rate, 10);
        kept += usize::from(da.keep);
    }
    assert!(
        (850..=1150).contains(&kept),
        "kept {kept} of 10,000 at 1 in 10"
    );
    let p = policy(
        json!([{"name": "p", "when": {"probability": 0.25}, "action": {"decision": "keep"}}]),
        json!({"decision": "drop"}),
    );
    let hits = traces
        .iter()
        .filter(|t| {
            p.evaluate(
                &TraceFacts {
                    spans: t,
                    linked_to_kept: false,
                },
                0,
            )
            .keep
        })
        .count();
    assert!(
        (2250..=2750).contains(&hits),
        "probability 0.25 kept {hits}"
    );
}

#[test]
fn rate_limits_follow_the_given_clock() {
    let p = policy(
        json!([{"name": "limited", "when": {"root_present": true},
                "action": {"decision": "keep", "rate_limit": {"per_second": 2, "burst": 2}}}]),
        json!({"decision": "drop"}),
    );
    let traces = synthetic(5);
    let at = |i: usize, ns: i64| {
        p.evaluate(
            &TraceFacts {
                spans: &traces[i],
                linked_to_kept: false,
            },
            ns,
        )
    };
    assert!(at(0, 0).keep && at(1, 0).keep);
    let third = at(2, 0);
    assert!(!third.keep && third.rate_limited, "the bucket is empty");
    assert_eq!(third.rule, "limited");
    assert!(
        !at(3, 400_000_000).keep,
        "0.4s refills 0.8 tokens: not enough"
    );
    assert!(at(3, 600_000_000).keep, "0.6s refills 1.2 tokens");
    let spans_limited = policy(
        json!([{"name": "s", "when": {"root_present": true},
                "action": {"decision": "keep", "rate_limit": {"per_second": 5, "unit": "spans"}}}]),
        json!({"decision": "drop"}),
    );
    let big = one("large_trace");
    assert!(
        !spans_limited
            .evaluate(
                &TraceFacts {
                    spans: &big,
                    linked_to_kept: false
                },
                0
            )
            .keep,
        "1,000 spans > 5 tokens"
    );
}

#[test]
fn linked_to_kept_and_stamping_fields() {
    let p = policy(
        json!([
            {"name": "errors", "when": {"status": ["ERROR"]}, "action": {"decision": "keep", "keep_linked": true}},
            {"name": "lineage", "when": {"linked_to_kept": true}, "action": {"decision": "keep"}}
        ]),
        json!({"decision": "drop"}),
    );
    let chain = fixture("cross_trace_chain");
    let mut decisions = Vec::new();
    for spans in chain.values() {
        let failed = spans
            .iter()
            .any(|s| s.status.code == datatracing_core::StatusCode::Error);
        decisions.push(p.evaluate(
            &TraceFacts {
                spans,
                linked_to_kept: !failed,
            },
            0,
        ));
    }
    assert!(decisions.iter().all(|d| d.keep));
    assert_eq!(
        decisions
            .iter()
            .filter(|d| d.rule == "errors" && d.keep_linked)
            .count(),
        1
    );
    assert_eq!(
        decisions
            .iter()
            .filter(|d| d.rule == "lineage" && !d.keep_linked)
            .count(),
        2
    );
}

#[test]
fn the_policy_hash_is_stable_and_tells_policies_apart() {
    let a = policy(json!([]), json!({"decision": "keep", "sample_rate": 10}));
    let b = policy(json!([]), json!({"decision": "keep", "sample_rate": 10}));
    let c = policy(json!([]), json!({"decision": "keep", "sample_rate": 11}));
    assert_eq!(a.hash(), b.hash());
    assert_ne!(a.hash(), c.hash());
    assert_eq!(a.hash().len(), 16);
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"status": ["ERROR"]})),
        Just(json!({"service": {"prefix": "spark"}})),
        Just(json!({"operation": {"glob": "*orders*"}})),
        Just(json!({"kind": ["TRANSFORM", "JOIN"]})),
        Just(json!({"attribute": {"key": "dataset", "exists": true}})),
        Just(json!({"attribute": {"key": "records", "number": {"gt": 10}}})),
        Just(json!({"duration": {"of": "span", "over": "100ms"}})),
        Just(json!({"duration": {"of": "trace", "under": "5s"}})),
        Just(json!({"span_count": {"min": 2}})),
        Just(json!({"root_present": true})),
        Just(json!({"probability": 0.5})),
        Just(json!({"linked_to_kept": false})),
    ]
}

fn tree() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({"all": v})),
            prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({"any": v})),
            inner.prop_map(|c| json!({"not": c})),
        ]
    })
}

proptest! {
    #[test]
    fn double_negation_is_identity_and_nothing_panics(
        c in tree(),
        scope in prop_oneof![Just("trace"), Just("span")],
        fix in prop_oneof![Just("healthy"), Just("error_in_step"), Just("fan_in"), Just("no_root"), Just("clock_skew")],
    ) {
        let _: Condition = serde_json::from_value(c.clone()).unwrap();
        let spans = one(fix);
        let plain = matches(c.clone(), scope, &spans);
        let twice = matches(json!({"not": {"not": c}}), scope, &spans);
        prop_assert_eq!(plain, twice);
    }
}

/// `contains` matches an element of an array attribute: "keep every trace that read or
/// wrote this dataset" is one rule over the pipeline conventions' dataset lists.
#[test]
fn contains_matches_an_element_of_an_array_attribute() {
    let chain = fixture("cross_trace_chain");
    let wrote = chain
        .values()
        .find(|s| s[0].service == "transform-job")
        .unwrap();
    let read = chain
        .values()
        .find(|s| s[0].service == "publish-job")
        .unwrap();
    let first = chain
        .values()
        .find(|s| s[0].service == "ingest-job")
        .unwrap();
    let outputs =
        |v: &str| json!({"attribute": {"key": "datatracing.dataset.outputs", "contains": v}});
    assert!(matches(outputs("warehouse.clean_files"), "span", wrote));
    assert!(
        !matches(outputs("warehouse.clean"), "span", wrote),
        "whole elements only"
    );
    assert!(!matches(outputs("warehouse.clean_files"), "span", read));
    assert!(
        !matches(outputs("warehouse.clean_files"), "span", first),
        "absent key"
    );
    assert!(matches(
        json!({"attribute": {"key": "datatracing.dataset.inputs", "contains": "warehouse.clean_files"}}),
        "trace",
        read
    ));
    // A scalar contains itself.
    assert!(matches(
        json!({"attribute": {"key": "dataset", "contains": "orders"}}),
        "trace",
        &one("healthy")
    ));
}
