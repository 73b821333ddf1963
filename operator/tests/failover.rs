//! Two operator replicas on one Lease, installed namespace-scoped (the chart's
//! `watchNamespace`: no cluster-wide grants), a ClickHouse that is unreachable at first, a
//! password Secret that appears late, and deletion with `deletionPolicy: Retain`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Operator, clickhouse_query, forward, free_port, wait_for};
use datatracing_operator::crd::TracingPipeline;
use datatracing_testkit::clickhouse::{ClickHouse, unique_database};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const OPERATOR_NS: &str = "datatracing-system";
const NS: &str = "team-b";
const WAIT: Duration = Duration::from_secs(60);

async fn holder(admin: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(admin.clone(), OPERATOR_NS)
        .get_opt("datatracing-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_retries_until_clickhouse_answers_and_a_follower_takes_over() {
    let cluster = Cluster::start().await;
    let ch = tokio::task::spawn_blocking(ClickHouse::shared)
        .await
        .unwrap();
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster
        .operator_token(OPERATOR_NS, &["watchNamespace=team-b"])
        .await;
    let admin = cluster.admin.clone();

    // Two replicas: exactly one leads.
    let a = Operator::start_scoped(&cluster, &token, "op-a", OPERATOR_NS, Some(NS));
    let b = Operator::start_scoped(&cluster, &token, "op-b", OPERATOR_NS, Some(NS));
    let first = wait_for("a leader", WAIT, || holder(&admin)).await;
    let (leader, follower) = if first == "op-a" { (a, b) } else { (b, a) };
    wait_for("leader gauge", WAIT, || async {
        leader
            .metrics()
            .await
            .contains("datatracing_operator_leader 1")
            .then_some(())
    })
    .await;
    assert!(
        follower
            .metrics()
            .await
            .contains("datatracing_operator_leader 0")
    );
    // A standby replica is ready too (it serves and would take over).
    wait_for("standby ready", WAIT, || async {
        (follower.readyz().await == 200).then_some(())
    })
    .await;

    // A password Secret that does not exist yet: reported, then picked up when created.
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    let late_db = unique_database("late");
    pipelines
        .patch(
            "late-secret",
            &PatchParams::apply("tests"),
            &Patch::Apply(json!({
                "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
                "metadata": {"name": "late-secret"},
                "spec": {"storage": {"url": ch.url(), "database": late_db, "user": ch.user(),
                                     "passwordSecretRef": {"name": "late", "key": "password"}}}
            })),
        )
        .await
        .unwrap();
    let missing = wait_for("SecretNotFound", WAIT, || async {
        let st = pipelines.get("late-secret").await.ok()?.status?;
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "RetentionApplied" && c.status == "False")
    })
    .await;
    assert_eq!(missing.reason, "SecretNotFound");
    assert!(
        missing
            .message
            .contains("Secret team-b/late does not exist"),
        "{}",
        missing.message
    );
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "late"}, "stringData": {"password": ch.password()}
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    wait_for("retention applied once the Secret exists", WAIT, || async {
        let st = pipelines.get("late-secret").await.ok()?.status?;
        st.conditions
            .iter()
            .any(|c| c.type_ == "RetentionApplied" && c.status == "True")
            .then_some(())
    })
    .await;

    // ClickHouse "down": nothing listens on the pipeline's port yet.
    let port = free_port();
    let db = unique_database("failover");
    pipelines
        .patch(
            "lake",
            &PatchParams::apply("tests"),
            &Patch::Apply(json!({
                "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
                "metadata": {"name": "lake"},
                "spec": {"storage": {"url": format!("http://127.0.0.1:{port}"), "database": db,
                                     "user": ch.user(), "retentionDays": 3}}
            })),
        )
        .await
        .unwrap();
    let unreachable = wait_for("RetentionApplied False", WAIT, || async {
        let st = pipelines.get("lake").await.ok()?.status?;
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "RetentionApplied" && c.status == "False")
    })
    .await;
    assert_eq!(unreachable.reason, "ClickHouseUnreachable");
    assert!(
        unreachable.message.contains("retried with backoff"),
        "{}",
        unreachable.message
    );
    let generation = pipelines.get("lake").await.unwrap().metadata.generation;

    // The leader goes away (graceful: it releases the lease); the follower takes over.
    let gone = leader.identity.clone();
    leader.stop().await.unwrap();
    let new = wait_for("the follower leads", WAIT, || async {
        holder(&admin).await.filter(|h| *h != gone)
    })
    .await;
    assert_eq!(new, follower.identity);

    // ClickHouse "comes back" on the same address: the retry succeeds without a spec change.
    let target = ch.url().trim_start_matches("http://").to_string();
    let _fwd = forward(port, target).await;
    let p = wait_for("RetentionApplied True after retries", WAIT, || async {
        let p = pipelines.get("lake").await.ok()?;
        let ok = p
            .status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == "RetentionApplied" && c.status == "True");
        ok.then_some(p)
    })
    .await;
    assert_eq!(
        p.metadata.generation, generation,
        "no spec change was needed"
    );
    assert_eq!(p.status.unwrap().retention_days, Some(3));
    let m = follower.metrics().await;
    assert!(
        m.contains("datatracing_operator_retention_errors_total"),
        "{m}"
    );

    // Retain: deleting the pipeline keeps the data.
    pipelines
        .delete("lake", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("pipeline gone", WAIT, || async {
        matches!(pipelines.get_opt("lake").await, Ok(None)).then_some(())
    })
    .await;
    let n = clickhouse_query(
        ch.url(),
        ch.user(),
        ch.password(),
        &format!("SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'spans'"),
    )
    .await;
    assert_eq!(n.trim(), "1", "data retained");
    // The last replica stops (an uninstall): no Lease is left behind.
    follower.stop().await.unwrap();
    assert_eq!(holder(&admin).await, None);
    let left = Api::<Lease>::namespaced(admin.clone(), OPERATOR_NS)
        .get_opt("datatracing-operator")
        .await
        .unwrap();
    assert!(left.is_none(), "{left:?}");
}
