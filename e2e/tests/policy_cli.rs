//! `datatracing policy validate` and `datatracing policy test` on the committed fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(datatracing_e2e::binary())
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env_remove("DATATRACING_CONFIG")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_example_and_names_every_problem() {
    let (ok, out, _) = run(&["policy", "validate", "fixtures/policies/example.yaml"]);
    assert!(ok);
    assert!(out.contains("valid, 4 rule(s), hash "), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "rules:\n  - name: slow\n    when: { any: [ { operation: { regex: \"(unclosed\" } } ] }\n    action: { decision: drop, sample_rate: 2 }\ndefault: { decision: keep }\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["policy", "validate", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(
        err.contains("rules[0].action.sample_rate: only applies to decision: keep"),
        "{err}"
    );
    assert!(
        err.contains("rules[0].when.any[0].operation.regex: invalid regex"),
        "{err}"
    );

    std::fs::write(&bad, "rules: []\n").unwrap();
    let (ok, _, err) = run(&["policy", "validate", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("missing field `default`"), "{err}");
}

#[test]
fn test_prints_a_decision_and_rule_per_fixture_trace() {
    let (ok, out, err) = run(&[
        "policy",
        "test",
        "fixtures/policies/example.yaml",
        "--traces",
        "fixtures/traces",
    ]);
    assert!(ok, "{err}");
    let line = |fixture: &str, trace_suffix: &str| {
        out.lines()
            .find(|l| l.starts_with(fixture) && l.contains(trace_suffix))
            .unwrap_or_else(|| panic!("no line for {fixture} {trace_suffix} in\n{out}"))
            .to_string()
    };
    assert!(line("error_in_step", "1002").contains("KEEP  rule=errors"));
    assert!(line("slow_step", "1003").contains("KEEP  rule=slow-steps"));
    assert!(line("cross_trace_chain", "2003").contains("KEEP  rule=errors"));
    assert!(
        line("cross_trace_chain", "2002").contains("KEEP  rule=lineage"),
        "lineage is kept whole"
    );
    assert!(
        line("cross_trace_chain", "2001").contains("KEEP  rule=lineage"),
        "transitively"
    );
    assert!(line("healthy", "1001").contains("rule=default rate=1/10"));
    assert!(out.trim_end().ends_with(')'), "{out}");
    assert!(
        out.contains("11 traces") || out.lines().count() == 12,
        "{out}"
    );
}
