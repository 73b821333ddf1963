//! The Helm chart and the kustomize manifests: `helm lint`, `helm template` accepted by a
//! real API server (`kubectl apply --dry-run=server`), `kubectl apply -k config/default`,
//! the samples, and one set of RBAC rules in both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Cluster, helm_template, repo_root, run};
use datatracing_testkit::kubernetes::tool;
use serde_json::Value;

fn docs(yaml: &str) -> Vec<Value> {
    yaml.split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn rules_of(all: &[Value], kind: &str, name_suffix: &str) -> Value {
    all.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with(name_suffix)
        })
        .unwrap_or_else(|| panic!("no {kind} *{name_suffix}"))["rules"]
        .clone()
}

#[test]
fn helm_lint_passes() {
    let out = run(std::process::Command::new(tool("helm"))
        .args(["lint", "--strict"])
        .arg(repo_root().join("charts/datatracing-operator")));
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn chart_and_kustomize_grant_the_same_rules() {
    let chart = docs(&helm_template("datatracing-system", &[]));
    let config = docs(&std::fs::read_to_string(repo_root().join("config/rbac/role.yaml")).unwrap());
    let leader = docs(
        &std::fs::read_to_string(repo_root().join("config/rbac/leader_election_role.yaml"))
            .unwrap(),
    );
    assert_eq!(
        rules_of(&chart, "ClusterRole", "datatracing-operator"),
        rules_of(&config, "ClusterRole", "datatracing-operator")
    );
    assert_eq!(
        rules_of(&chart, "Role", "leader-election"),
        rules_of(&leader, "Role", "leader-election")
    );
    // Namespace-scoped install: a Role in the watched namespace, no cluster-wide grant.
    let scoped = docs(&helm_template(
        "datatracing-system",
        &["watchNamespace=team-a"],
    ));
    assert!(!scoped.iter().any(|d| d["kind"] == "ClusterRole"));
    let role = scoped
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == "team-a")
        .unwrap();
    assert_eq!(
        role["rules"],
        rules_of(&config, "ClusterRole", "datatracing-operator")
    );
    let args = scoped.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--namespace=team-a"),
        "{args}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_accepts_the_chart_the_manifests_and_the_samples() {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    cluster.namespace("datatracing-system").await;
    cluster.namespace("team-a").await;
    for sets in [
        &[][..],
        &[
            "watchNamespace=team-a",
            "replicaCount=1",
            "leaderElection.enabled=false",
        ][..],
    ] {
        let file = dir.path().join("chart.yaml");
        std::fs::write(&file, helm_template("datatracing-system", sets)).unwrap();
        let out = run(cluster
            .kubectl(dir.path())
            .args(["apply", "--dry-run=server", "-f"])
            .arg(&file));
        for kind in [
            "serviceaccount",
            "deployment.apps",
            "service",
            "rolebinding.rbac.authorization.k8s.io",
        ] {
            assert!(out.contains(kind), "{out}");
        }
    }
    // The chart refuses two leaderless replicas.
    let refused = std::process::Command::new(tool("helm"))
        .args(["template", "dt"])
        .arg(repo_root().join("charts/datatracing-operator"))
        .args([
            "--kube-version",
            "1.34.4",
            "--set",
            "leaderElection.enabled=false",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs leaderElection.enabled"));

    // kustomize: the whole install applies for real (the Deployment never runs here).
    let out = run(cluster
        .kubectl(dir.path())
        .args(["apply", "--server-side", "-k"])
        .arg(repo_root().join("config/default")));
    assert!(out.contains("customresourcedefinition.apiextensions.k8s.io/tracingpipelines.datatracing.io serverside-applied"), "{out}");
    assert!(
        out.contains("deployment.apps/datatracing-operator serverside-applied"),
        "{out}"
    );

    // The samples are valid objects.
    let out = run(cluster
        .kubectl(dir.path())
        .args(["apply", "--dry-run=server", "-n", "team-a", "-k"])
        .arg(repo_root().join("config/samples")));
    assert!(
        out.contains("tracingpipeline.datatracing.io/orders created (server dry run)"),
        "{out}"
    );
    assert!(
        out.contains("samplingpolicy.datatracing.io/keep-failures created (server dry run)"),
        "{out}"
    );
    assert!(
        out.contains("samplingpolicy.datatracing.io/baseline created (server dry run)"),
        "{out}"
    );
}
