//! Enforces the crate dependency rules in `docs/architecture.md`, read from `cargo metadata`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// For each workspace crate: the workspace crates it may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("datatracing-core", &[]),
    // Every process's configuration; a leaf (see CONFIG_ALLOWED_EXTERNAL).
    ("datatracing-config", &["datatracing-core"]),
    ("datatracing-store", &["datatracing-core"]),
    (
        "datatracing-store-sqlite",
        &[
            "datatracing-core",
            "datatracing-config",
            "datatracing-store",
        ],
    ),
    // Test code: the contract suite, a dev-dependency of backends' tests only.
    (
        "datatracing-store-contract",
        &["datatracing-core", "datatracing-store"],
    ),
    (
        "datatracing-store-clickhouse",
        &[
            "datatracing-core",
            "datatracing-config",
            "datatracing-store",
        ],
    ),
    // Test infrastructure: used only as a dev-dependency, depends on nothing of ours.
    ("datatracing-testkit", &[]),
    // The end-to-end harness starts the binary as a process; the tests (dev-dependencies)
    // may use any crate.
    // Test-only itself: its harness may use the test kit (the Python SDK runner).
    ("datatracing-e2e", &["datatracing-testkit"]),
    // The SDK sits on OpenTelemetry and reads the conventions from core; nothing else of ours.
    ("datatracing-sdk", &["datatracing-core"]),
    // Instrumented example programs: what a user would write, so the SDK only.
    ("datatracing-examples", &["datatracing-sdk"]),
    // `config` for the ConnectionLimits every listener is served with and the `auth:`
    // section its token checks read.
    (
        "datatracing-http",
        &[
            "datatracing-core",
            "datatracing-config",
            "datatracing-store",
        ],
    ),
    (
        "datatracing-collector",
        &[
            "datatracing-core",
            "datatracing-config",
            "datatracing-store",
            "datatracing-http",
        ],
    ),
    (
        "datatracing-query",
        &[
            "datatracing-core",
            "datatracing-config",
            "datatracing-store",
            "datatracing-http",
            "datatracing-ui",
        ],
    ),
    // The web UI's embedded assets and the router serving them; it reads the query API over
    // HTTP from the browser, so it links nothing of ours.
    ("datatracing-ui", &[]),
    // The operator renders the pods' configuration as a typed `datatracing_config::Config`
    // and applies retention through the ClickHouse crate; it never opens a store and never
    // links the collector or the query server.
    (
        "datatracing-operator",
        &[
            "datatracing-core",
            "datatracing-config",
            "datatracing-store-clickhouse",
            "datatracing-http",
        ],
    ),
    (
        "datatracing-cli",
        &[
            "datatracing-operator",
            "datatracing-core",
            "datatracing-config",
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

/// Crates that are test code: never a normal dependency of anything but the e2e harness
/// (itself test-only, never published).
const DEV_ONLY: &[&str] = &["datatracing-testkit", "datatracing-store-contract"];

/// The storage contract names no database: backends live in their own crates.
const STORE_FORBIDDEN: &[&str] = &["rusqlite", "clickhouse"];

/// The model crate stays free of I/O and runtimes.
const CORE_FORBIDDEN: &[&str] = &["tokio", "axum", "hyper", "rusqlite", "reqwest", "tracing"];

/// The configuration crate is a leaf anything may depend on cheaply: these are all the
/// external crates it may use (no runtime, server, storage driver, Kubernetes or CLI crate).
const CONFIG_ALLOWED_EXTERNAL: &[&str] = &["serde", "serde-saphyr", "schemars", "thiserror"];

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
                !(*normal && DEV_ONLY.contains(dep) && name != "datatracing-e2e"),
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
        if name == "datatracing-config" {
            for (dep, normal) in &deps {
                assert!(
                    !*normal || CONFIG_ALLOWED_EXTERNAL.contains(dep) || members.contains(*dep),
                    "datatracing-config must stay a leaf, found {dep}"
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

#[test]
fn the_operator_links_neither_the_collector_nor_the_query_server() {
    let meta = metadata();
    let operator = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "datatracing-operator")
        .expect("the operator crate");
    let deps: Vec<&str> = operator["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for forbidden in ["datatracing-collector", "datatracing-query"] {
        assert!(
            !deps.contains(&forbidden),
            "the operator depends on {forbidden} (any kind); its configuration comes from datatracing-config"
        );
    }
    assert!(deps.contains(&"datatracing-config"));
}
