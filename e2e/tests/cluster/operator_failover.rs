//! Scenario 4, the operator half: the leading operator pod is killed (force-deleted, as a
//! lost node's pods are); the standby takes the Lease, and a change made while no replica
//! led is reconciled. The collector half is `collector_kill.rs`. It stops the operator every
//! scenario relies on, so it runs alone (`Cluster::exclusive`).

use std::time::{Duration, Instant};

use datatracing_e2e::cluster::{CLICKHOUSE_USER, Cluster, OPERATOR_NAMESPACE};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use crate::support::{self, eventually};

const NS: &str = "e2e-failover";

fn pipeline(cluster: &Cluster, retention: u32) -> String {
    format!(
        r#"apiVersion: datatracing.io/v1alpha1
kind: TracingPipeline
metadata:
  name: failover
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
    database: e2e_failover
    user: {CLICKHOUSE_USER}
    passwordSecretRef: {{name: clickhouse-credentials, key: password}}
    retentionDays: {retention}
"#,
        url = cluster.clickhouse_url()
    )
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("datatracing-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[test]
fn the_standby_operator_takes_over_and_reconciles_what_changed_meanwhile() {
    let cluster = Cluster::shared();
    let _alone = cluster.exclusive();
    cluster.block_on(async {
        let ns = cluster.namespace(NS).await;
        let client = cluster.client().await;
        support::clickhouse_secret(cluster, &ns);
        cluster.apply(&pipeline(cluster, 30));
        let wait = Duration::from_secs(180);
        support::wait_condition(cluster, &client, &ns, "failover", "Ready", wait).await;

        let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        let leader = holder(&leases).await.expect("a leader");
        let killed = Instant::now();
        cluster.kubectl_ok(&[
            "delete",
            "pod",
            &leader,
            "-n",
            OPERATOR_NAMESPACE,
            "--grace-period=0",
            "--force",
        ]);
        // The change, made while the leader is gone.
        cluster.apply(&pipeline(cluster, 9));
        let successor = eventually(
            Duration::from_secs(60),
            "another operator replica to hold the Lease",
            || cluster.describe(OPERATOR_NAMESPACE),
            || async { holder(&leases).await.filter(|h| *h != leader) },
        )
        .await;
        let takeover = killed.elapsed();
        let p = support::wait_condition(cluster, &client, &ns, "failover", "RetentionApplied", wait)
            .await;
        assert_eq!(p.status.as_ref().unwrap().retention_days, Some(9));
        eprintln!(
            "scenario 4: leader {leader} force-deleted; {successor} held the Lease after {:.1}s, the change made meanwhile was reconciled after {:.1}s",
            takeover.as_secs_f64(),
            killed.elapsed().as_secs_f64()
        );
        // The Deployment replaces the killed pod: two replicas again before others run.
        support::wait_available(
            cluster,
            &client,
            OPERATOR_NAMESPACE,
            "datatracing-operator",
            2,
            wait,
        )
        .await;
        support::delete_namespace(cluster, &ns);
    });
}
