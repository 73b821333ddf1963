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
        .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
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
    // Defect 10 of issue 15: no cluster-wide Secret access; the secret reader is a separate
    // ClusterRole, bound per namespace.
    let main = rules_of(&config, "ClusterRole", "datatracing-operator");
    assert!(!main.to_string().contains("secrets"), "{main}");
    let reader = docs(
        &std::fs::read_to_string(repo_root().join("config/rbac/secret_reader_role.yaml")).unwrap(),
    );
    assert_eq!(
        rules_of(&chart, "ClusterRole", "secret-reader"),
        rules_of(&reader, "ClusterRole", "secret-reader")
    );
    assert!(
        !chart.iter().any(|d| d["kind"] == "ClusterRoleBinding"
            && d["roleRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .ends_with("secret-reader")),
        "the secret reader is never bound cluster-wide"
    );
    // One disruption budget for the operator's pods in both installs.
    let kustomize_pdb =
        docs(&std::fs::read_to_string(repo_root().join("config/manager/pdb.yaml")).unwrap());
    let chart_pdb = chart
        .iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .expect("the chart renders a PodDisruptionBudget");
    let manager =
        docs(&std::fs::read_to_string(repo_root().join("config/manager/manager.yaml")).unwrap());
    let chart_deployment = chart.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let kustomize_deployment = manager.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(chart_pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        chart_pdb["spec"]["maxUnavailable"],
        kustomize_pdb[0]["spec"]["maxUnavailable"]
    );
    assert_eq!(
        chart_pdb["spec"]["selector"],
        chart_deployment["spec"]["selector"]
    );
    assert_eq!(
        kustomize_pdb[0]["spec"]["selector"],
        kustomize_deployment["spec"]["selector"]
    );

    // Namespace-scoped install: a Role in the watched namespace, no cluster-wide grant.
    let scoped = docs(&helm_template(
        "datatracing-system",
        &["watchNamespace=team-a"],
    ));
    assert!(!scoped.iter().any(|d| d["kind"] == "ClusterRole"));
    let role = scoped
        .iter()
        .find(|d| {
            d["kind"] == "Role"
                && d["metadata"]["namespace"] == "team-a"
                && d["metadata"]["name"] == "dt-datatracing-operator"
        })
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

    // The sample pipeline scales by its replica count alone (runbooks/collector.md,
    // "Scaling up or down"), through the manifest and the scale subresource: its disruption
    // budget must not refuse 2 collectors (a `minAvailable: 2` did, found by the cluster
    // scenario e2e/tests/cluster/routing.rs).
    run(cluster
        .kubectl(dir.path())
        .args(["apply", "-n", "team-a", "-k"])
        .arg(repo_root().join("config/samples")));
    let replicas = |cluster: &Cluster| {
        run(cluster.kubectl(dir.path()).args([
            "get",
            "tracingpipeline",
            "orders",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.spec.collector.replicas}",
        ]))
    };
    assert_eq!(replicas(&cluster), "3");
    run(cluster.kubectl(dir.path()).args([
        "patch",
        "tracingpipeline",
        "orders",
        "-n",
        "team-a",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"collector":{"replicas":2}}}"#,
    ]));
    assert_eq!(replicas(&cluster), "2");
    for n in ["3", "2"] {
        run(cluster.kubectl(dir.path()).args([
            "scale",
            "tracingpipeline",
            "orders",
            "-n",
            "team-a",
            "--replicas",
            n,
        ]));
        assert_eq!(replicas(&cluster), n);
    }
}

/// The commands of the ```sh blocks in `runbooks/operator.md`, in order, one block per
/// entry (continuation lines joined).
fn runbook_blocks() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(repo_root().join("runbooks/operator.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut pending = String::new();
    for line in text.lines() {
        match (&mut current, line.trim()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), l) => match l.strip_suffix('\\') {
                Some(head) => pending.push_str(head),
                None => {
                    pending.push_str(l);
                    block.push(std::mem::take(&mut pending));
                }
            },
            (None, _) => {}
        }
    }
    blocks
}

/// The runbook block whose commands satisfy `pick`.
fn block(blocks: &[Vec<String>], what: &str, pick: impl Fn(&[String]) -> bool) -> Vec<String> {
    blocks
        .iter()
        .find(|b| pick(b))
        .unwrap_or_else(|| panic!("runbooks/operator.md has no block to {what}"))
        .clone()
}

/// Runs a runbook command as written (placeholders filled in, `| head` dropped, `logs`
/// read as `get`: no kubelet runs here) from the repository root, against `kubeconfig`.
fn run_runbook(command: &str, kubeconfig: &std::path::Path) -> String {
    let command = command.split(" | ").next().unwrap();
    let words: Vec<String> = command
        .replace("<registry>", "example.invalid")
        .replace("<version>", "test")
        .split_whitespace()
        .map(|w| {
            if w == "logs" {
                "get".into()
            } else {
                w.to_string()
            }
        })
        .collect();
    let mut cmd = std::process::Command::new(tool(&words[0]));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(&words[1..])
        .current_dir(repo_root());
    run(&mut cmd)
}

/// Defect 9 of issue 15: the runbook's commands failed as written (a Deployment name the
/// chart does not produce, the Lease without its namespace), `helm uninstall` left the Lease,
/// and Helm and kustomize used different Deployment selectors, so one could not replace the
/// other. This runs the runbook's install, check, switch and uninstall blocks in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runbook_installs_checks_switches_and_uninstalls() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::Api;

    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster.kubeconfig(dir.path(), cluster.server.token());
    let blocks = runbook_blocks();
    let has = |b: &[String], s: &str| b.iter().any(|c| c.contains(s));
    let install = block(&blocks, "install", |b| b[0].starts_with("helm install"));
    let check = block(&blocks, "check", |b| has(b, "get pods,lease"));
    let to_kustomize = block(&blocks, "switch to kustomize", |b| {
        has(b, "-k config/default")
    });
    let to_helm = block(&blocks, "switch to Helm", |b| {
        has(b, "meta.helm.sh/release-name")
    });
    let uninstall = block(&blocks, "uninstall", |b| has(b, "helm uninstall"));

    for c in &install {
        run_runbook(c, &kubeconfig);
    }
    // A replica leads (in this process, with the Lease where the chart's pods keep it).
    let op = common::Operator::start(
        &cluster,
        cluster.server.token(),
        "op-runbook",
        "datatracing-system",
    );
    let leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), "datatracing-system");
    common::wait_for("a leader", std::time::Duration::from_secs(60), || async {
        leases.get_opt("datatracing-operator").await.ok()?
    })
    .await;
    let out: String = check.iter().map(|c| run_runbook(c, &kubeconfig)).collect();
    assert!(out.contains("holderIdentity: op-runbook"), "{out}");

    let deployments: Api<Deployment> = Api::namespaced(cluster.admin.clone(), "datatracing-system");
    let selector = |d: Deployment| d.spec.unwrap().selector;
    let helm_selector = selector(deployments.get("datatracing-operator").await.unwrap());
    for c in &to_kustomize {
        run_runbook(c, &kubeconfig);
    }
    assert_eq!(
        selector(deployments.get("datatracing-operator").await.unwrap()),
        helm_selector
    );
    for c in &to_helm {
        run_runbook(c, &kubeconfig);
    }
    let status = run_runbook(
        "helm status datatracing-operator --namespace datatracing-system",
        &kubeconfig,
    );
    assert!(status.contains("STATUS: deployed"), "{status}");

    // Uninstall: the pods stop (here: the replica in this process), nothing is left.
    for c in &uninstall {
        run_runbook(c, &kubeconfig);
    }
    op.stop().await.unwrap();
    assert!(
        deployments
            .get_opt("datatracing-operator")
            .await
            .unwrap()
            .is_none()
    );
    let lease = leases.get_opt("datatracing-operator").await.unwrap();
    assert!(
        lease.is_none(),
        "the Lease outlives the uninstall: {lease:?}"
    );
}
