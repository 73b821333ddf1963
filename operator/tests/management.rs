//! `spec.managementState` on a real API server (issue 15): `Unmanaged` pauses reconciliation
//! during an incident (hand edits to the children stay, the `Managed` condition says so),
//! and `Managed` again reverts them. No ClickHouse: retention stays unapplied, which does
//! not stop the children being written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Operator, free_port, wait_for};
use datatracing_operator::crd::TracingPipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

const OPERATOR_NS: &str = "datatracing-system";
const NS: &str = "team-m";
const WAIT: Duration = Duration::from_secs(60);

fn pipeline(state: &str, replicas: i32, clickhouse: &str) -> Value {
    json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
        "metadata": {"name": "orders"},
        "spec": {"managementState": state,
                 "collector": {"replicas": replicas},
                 "storage": {"url": clickhouse, "database": "orders"}}
    })
}

async fn apply(api: &Api<TracingPipeline>, body: Value) {
    api.patch(
        "orders",
        &PatchParams::apply("tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
}

/// The `Managed` condition once it describes the pipeline's current generation.
async fn managed(api: &Api<TracingPipeline>) -> Option<Condition> {
    let p = api.get("orders").await.ok()?;
    let c = p
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Managed")?;
    (c.observed_generation == p.metadata.generation).then_some(c)
}

async fn collector_replicas(api: &Api<Deployment>) -> Option<i32> {
    api.get_opt("orders-collector").await.ok()??.spec?.replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unmanaged_pauses_reconciliation_and_managed_reverts_hand_edits() {
    let cluster = Cluster::start().await;
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster.operator_token(OPERATOR_NS, &[]).await;
    let op = Operator::start(&cluster, &token, "op-m", OPERATOR_NS);
    let admin = cluster.admin.clone();
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    let clickhouse = format!("http://127.0.0.1:{}", free_port());

    apply(&pipelines, pipeline("Managed", 2, &clickhouse)).await;
    let c = wait_for("Managed=True", WAIT, || managed(&pipelines)).await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "Reconciled")
    );
    wait_for("collector with 2 replicas", WAIT, || async {
        (collector_replicas(&deployments).await? == 2).then_some(())
    })
    .await;

    // Pause, then edit the children by hand as during an incident.
    apply(&pipelines, pipeline("Unmanaged", 2, &clickhouse)).await;
    let c = wait_for("Managed=False", WAIT, || async {
        managed(&pipelines).await.filter(|c| c.status == "False")
    })
    .await;
    assert_eq!(c.reason, "Unmanaged");
    assert!(c.message.contains("paused"), "{}", c.message);
    deployments
        .patch(
            "orders-collector",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    config_maps
        .delete("orders-config", &DeleteParams::default())
        .await
        .unwrap();
    // A spec change is reconciled (the condition describes the new generation) and still
    // nothing is written: the hand edits stay, the new replica count is not applied.
    apply(&pipelines, pipeline("Unmanaged", 3, &clickhouse)).await;
    let c = wait_for("Managed=False for the new generation", WAIT, || async {
        managed(&pipelines).await.filter(|c| c.status == "False")
    })
    .await;
    assert_eq!(c.reason, "Unmanaged");
    assert_eq!(collector_replicas(&deployments).await, Some(5));
    assert!(
        config_maps
            .get_opt("orders-config")
            .await
            .unwrap()
            .is_none()
    );
    let st = pipelines.get("orders").await.unwrap();
    assert_ne!(
        st.status.unwrap().observed_generation,
        st.metadata.generation,
        "observedGeneration stays at the last generation reconciled"
    );

    // Resume: the spec wins again.
    apply(&pipelines, pipeline("Managed", 3, &clickhouse)).await;
    wait_for("collector back to the spec", WAIT, || async {
        (collector_replicas(&deployments).await? == 3).then_some(())
    })
    .await;
    wait_for("ConfigMap recreated", WAIT, || async {
        config_maps.get_opt("orders-config").await.ok()?
    })
    .await;
    let c = wait_for("Managed=True again", WAIT, || async {
        managed(&pipelines).await.filter(|c| c.status == "True")
    })
    .await;
    assert_eq!(c.reason, "Reconciled");
    op.stop().await.unwrap();
}
