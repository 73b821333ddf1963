//! Enforces the crate dependency rules in `docs/architecture.md`, read from `cargo metadata`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// For each workspace crate: the workspace crates it may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("datatracing-core", &[]),
    ("datatracing-store", &["datatracing-core"]),
    (
        "datatracing-store-sqlite",
        &["datatracing-core", "datatracing-store"],
    ),
    // Test code: the contract suite, a dev-dependency of backends' tests only.
    (
        "datatracing-store-contract",
        &["datatracing-core", "datatracing-store"],
    ),
    (
        "datatracing-store-clickhouse",
        &["datatracing-core", "datatracing-store"],
    ),
    // Test infrastructure: used only as a dev-dependency, depends on nothing of ours.
    ("datatracing-testkit", &[]),
    // The end-to-end harness starts the binary as a process; the tests (dev-dependencies)
    // may use any crate.
    ("datatracing-e2e", &[]),
    (
        "datatracing-http",
        &["datatracing-core", "datatracing-store"],
    ),
    (
        "datatracing-collector",
        &["datatracing-core", "datatracing-store", "datatracing-http"],
    ),
    (
        "datatracing-query",
        &["datatracing-core", "datatracing-store", "datatracing-http"],
    ),
    // The operator renders the collector's and query's configuration from their own structs
    // and applies retention through the ClickHouse crate; it never opens a store.
    (
        "datatracing-operator",
        &[
            "datatracing-core",
            "datatracing-store-clickhouse",
            "datatracing-http",
            "datatracing-collector",
            "datatracing-query",
        ],
    ),
    (
        "datatracing-cli",
        &[
            "datatracing-operator",
            "datatracing-core",
            "datatracing-store",
            "datatracing-store-sqlite",
            "datatracing-store-clickhouse",
            "datatracing-http",
            "datatracing-collector",
            "datatracing-query",
        ],
    ),
    // The load command talks to servers over HTTP only, like any client.
    ("datatracing-loadgen", &[]),
    // The ClickHouse load validation drives the store crate directly.
    (
        "datatracing-clickhouse-bench",
        &[
            "datatracing-core",
            "datatracing-store",
            "datatracing-store-clickhouse",
        ],
    ),
];

/// Crates that are test code: never a normal dependency of anything.
const DEV_ONLY: &[&str] = &["datatracing-testkit", "datatracing-store-contract"];

/// The storage contract names no database: backends live in their own crates.
const STORE_FORBIDDEN: &[&str] = &["rusqlite", "clickhouse"];

/// The model crate stays free of I/O and runtimes.
const CORE_FORBIDDEN: &[&str] = &["tokio", "axum", "hyper", "rusqlite", "reqwest", "tracing"];

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn workspace_crates_follow_the_dependency_rules() {
    let meta = metadata();
    let packages = meta["packages"].as_array().unwrap();
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    for name in &members {
        assert!(
            allowed.contains_key(name.as_str()),
            "crate {name} is not in docs/architecture.md's rules"
        );
    }
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let deps: Vec<(&str, bool)> = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["name"].as_str().unwrap(), d["kind"].is_null()))
            .collect();
        for (dep, normal) in &deps {
            if *normal && members.contains(*dep) {
                assert!(
                    allowed[name].contains(dep),
                    "{name} must not depend on {dep} (see docs/architecture.md)"
                );
            }
        }
        for (dep, normal) in &deps {
            assert!(
                !(*normal && DEV_ONLY.contains(dep)),
                "{name}: {dep} may only be a dev-dependency"
            );
        }
        if name == "datatracing-store" {
            for (dep, normal) in &deps {
                assert!(
                    !(*normal && STORE_FORBIDDEN.contains(dep)),
                    "datatracing-store must stay backend-neutral, found {dep}"
                );
            }
        }
        if name == "datatracing-core" {
            for (dep, normal) in &deps {
                assert!(
                    !(*normal && CORE_FORBIDDEN.contains(dep)),
                    "datatracing-core must stay I/O-free, found {dep}"
                );
            }
        }
    }
}
