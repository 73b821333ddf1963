//! Secret rotation on a real API server (issue 15): the collector and query pod templates
//! carry the password Secret's version, so rewriting the Secret rolls both Deployments
//! (the pods read the password file at start) and changes nothing else in them. No
//! ClickHouse: the failing retention step retries, and each retry reconciles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Operator, free_port, wait_for};
use datatracing_operator::crd::TracingPipeline;
use datatracing_operator::render::{CONFIG_HASH_ANNOTATION, SECRET_VERSION_ANNOTATION};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const OPERATOR_NS: &str = "datatracing-system";
const NS: &str = "team-r2";
const WAIT: Duration = Duration::from_secs(60);

/// `(secret version, config hash)` of a Deployment's pod template.
async fn versions(api: &Api<Deployment>, name: &str) -> Option<(String, String)> {
    let a = api
        .get_opt(name)
        .await
        .ok()??
        .spec?
        .template
        .metadata?
        .annotations?;
    Some((
        a.get(SECRET_VERSION_ANNOTATION)?.clone(),
        a.get(CONFIG_HASH_ANNOTATION)?.clone(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_password_rolls_collector_and_query() {
    let cluster = Cluster::start().await;
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster
        .operator_token(OPERATOR_NS, &["secretAccess.namespaces={team-r2}"])
        .await;
    let op = Operator::start(&cluster, &token, "op-rot", OPERATOR_NS);
    let admin = cluster.admin.clone();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "clickhouse-credentials"},
        "stringData": {"password": "first"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    let p: TracingPipeline = serde_json::from_value(json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
        "metadata": {"name": "orders"},
        "spec": {"storage": {"url": format!("http://127.0.0.1:{}", free_port()),
                             "passwordSecretRef": {"name": "clickhouse-credentials", "key": "password"}}}
    }))
    .unwrap();
    pipelines.create(&PostParams::default(), &p).await.unwrap();

    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let (v1, collector_hash) = wait_for("collector secret version", WAIT, || {
        versions(&deployments, "orders-collector")
    })
    .await;
    let (q1, query_hash) = wait_for("query secret version", WAIT, || {
        versions(&deployments, "orders-query")
    })
    .await;
    assert_eq!(v1, q1);
    assert!(!v1.contains("first"), "a version, not the password: {v1}");

    // Rotate: both templates move to a new version; the configuration hashes stay.
    secrets
        .patch(
            "clickhouse-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "second"}})),
        )
        .await
        .unwrap();
    for (name, hash) in [
        ("orders-collector", &collector_hash),
        ("orders-query", &query_hash),
    ] {
        let (v2, h2) = wait_for(
            &format!("{name} rolled for the new password"),
            WAIT,
            || async { versions(&deployments, name).await.filter(|(v, _)| *v != v1) },
        )
        .await;
        assert_ne!(v2, v1);
        assert_eq!(&h2, hash, "{name}: only the secret version changed");
    }
    // The status follows (written after the children, at the end of the reconcile).
    wait_for("status.passwordSecretVersion", WAIT, || async {
        let v = pipelines
            .get("orders")
            .await
            .ok()?
            .status?
            .password_secret_version?;
        (v != v1).then_some(())
    })
    .await;
    op.stop().await.unwrap();
}
