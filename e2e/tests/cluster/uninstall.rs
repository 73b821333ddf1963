//! Scenario 6, uninstall: deleting a pipeline with `deletionPolicy: Retain` keeps its
//! ClickHouse database, with `Delete` drops it, and both take their children with them;
//! `helm uninstall` then leaves no object of the operator's release behind (the CRDs stay,
//! as Helm never deletes them: runbooks/operator.md "Uninstall"). The operator is installed
//! again at the end, for scenarios that run later. It changes what every scenario relies on,
//! so it runs alone (`Cluster::exclusive`).

use std::time::Duration;

use datatracing_e2e::cluster::{
    CLICKHOUSE_PASSWORD, CLICKHOUSE_USER, Cluster, OPERATOR_NAMESPACE, OPERATOR_RELEASE,
};

use crate::support::{self, eventually};

const NS: &str = "e2e-uninstall";

fn pipeline(cluster: &Cluster, name: &str, database: &str, policy: &str) -> String {
    format!(
        r#"apiVersion: datatracing.io/v1alpha1
kind: TracingPipeline
metadata:
  name: {name}
  namespace: {NS}
spec:
  collector:
    replicas: 1
    resources: {{requests: {{cpu: 20m, memory: 64Mi}}}}
  query:
    replicas: 1
    resources: {{requests: {{cpu: 20m, memory: 64Mi}}}}
  storage:
    url: {url}
    database: {database}
    user: {CLICKHOUSE_USER}
    passwordSecretRef: {{name: clickhouse-credentials, key: password}}
    deletionPolicy: {policy}
"#,
        url = cluster.clickhouse_url()
    )
}

/// The databases of the test ClickHouse.
async fn databases(cluster: &Cluster) -> Vec<String> {
    let text = reqwest::Client::new()
        .post(cluster.clickhouse().url())
        .header("X-ClickHouse-User", CLICKHOUSE_USER)
        .header("X-ClickHouse-Key", CLICKHOUSE_PASSWORD)
        .body("SELECT name FROM system.databases FORMAT TSVRaw")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("ClickHouse")
        .error_for_status()
        .expect("ClickHouse answers")
        .text()
        .await
        .expect("a body");
    text.lines().map(str::to_string).collect()
}

/// Every object of the operator's release still in the cluster, as `kind/name` lines.
fn release_objects(cluster: &Cluster) -> String {
    let out = cluster
        .kubectl()
        .args([
            "get",
            "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,poddisruptionbudgets,leases,configmaps,secrets",
            "--all-namespaces",
            "-l",
            &format!("app.kubernetes.io/instance={OPERATOR_RELEASE}"),
            "-o",
            "name",
        ])
        .output()
        .expect("kubectl");
    let mut found = String::from_utf8_lossy(&out.stdout).into_owned();
    // What the chart's objects leave without its labels: the operator's pods' Lease and
    // anything else in its namespace.
    let leftovers = cluster
        .kubectl()
        .args(["get", "pods,leases", "-n", OPERATOR_NAMESPACE, "-o", "name"])
        .output()
        .expect("kubectl");
    found.push_str(&String::from_utf8_lossy(&leftovers.stdout));
    found.trim().to_string()
}

#[test]
fn deletion_policies_and_helm_uninstall_leave_what_they_promise() {
    let cluster = Cluster::shared();
    let _alone = cluster.exclusive();
    cluster.block_on(async {
        let ns = cluster.namespace(NS).await;
        let client = cluster.client().await;
        support::clickhouse_secret(cluster, &ns);
        cluster.apply(&pipeline(cluster, "keep", "e2e_keep", "Retain"));
        cluster.apply(&pipeline(cluster, "drop", "e2e_drop", "Delete"));
        let wait = Duration::from_secs(180);
        for name in ["keep", "drop"] {
            support::wait_condition(cluster, &client, &ns, name, "Ready", wait).await;
        }
        let dbs = databases(cluster).await;
        assert!(
            dbs.contains(&"e2e_keep".to_string()) && dbs.contains(&"e2e_drop".to_string()),
            "{dbs:?}"
        );

        cluster.kubectl_ok(&[
            "delete",
            "tracingpipeline",
            "keep",
            "drop",
            "-n",
            &ns,
            "--wait=true",
            "--timeout=120s",
        ]);
        let dbs = databases(cluster).await;
        assert!(
            dbs.contains(&"e2e_keep".to_string()),
            "Retain keeps: {dbs:?}"
        );
        assert!(
            !dbs.contains(&"e2e_drop".to_string()),
            "Delete drops: {dbs:?}"
        );
        // The children go with their owner (the garbage collector follows the owner
        // references the operator set).
        eventually(
            Duration::from_secs(120),
            "the pipelines' Deployments, Services and ConfigMaps to be collected",
            || cluster.describe(&ns),
            || async {
                let out = cluster
                    .kubectl()
                    .args([
                        "get",
                        "deployments,services,configmaps,poddisruptionbudgets",
                        "-n",
                        &ns,
                        "-l",
                        "app.kubernetes.io/managed-by=datatracing-operator",
                        "-o",
                        "name",
                    ])
                    .output()
                    .ok()?;
                (out.status.success() && out.stdout.is_empty()).then_some(())
            },
        )
        .await;

        let out = cluster
            .helm()
            .args([
                "uninstall",
                OPERATOR_RELEASE,
                "--namespace",
                OPERATOR_NAMESPACE,
                "--wait",
                "--timeout",
                "2m",
            ])
            .output()
            .expect("helm");
        assert!(
            out.status.success(),
            "helm uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eventually(
            Duration::from_secs(120),
            "no object of the operator's release left",
            || release_objects(cluster),
            || async { release_objects(cluster).is_empty().then_some(()) },
        )
        .await;
        // The CRDs stay (and with them any pipeline a user still has).
        cluster.kubectl_ok(&["get", "crd", "tracingpipelines.datatracing.io"]);

        cluster.install_operator();
    });
}
