//! ClickHouse credentials on a real API server (issue 15): the collector and query pod
//! templates carry the password Secrets' version, so rewriting a Secret rolls both
//! Deployments (the pods read the password file at start) and changes nothing else in them;
//! collectors and query can have credentials of their own. No ClickHouse: the failing
//! retention step retries, and each retry reconciles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Operator, free_port, wait_for};
use datatracing_operator::crd::TracingPipeline;
use datatracing_operator::render::{
    CONFIG_HASH_ANNOTATION, CONFIG_KEY, QUERY_CONFIG_KEY, SECRET_VERSION_ANNOTATION,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
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

/// `(--config file, mounted password Secret)` of a Deployment's container.
async fn config_and_secret(api: &Api<Deployment>, name: &str) -> Option<(String, String)> {
    let pod = api.get_opt(name).await.ok()??.spec?.template.spec?;
    let file = pod.containers[0].args.clone()?.get(2)?.clone();
    let secret = pod
        .volumes?
        .into_iter()
        .find_map(|v| v.secret)?
        .secret_name?;
    Some((file, secret))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collectors_and_query_use_credentials_of_their_own() {
    let cluster = Cluster::start().await;
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster
        .operator_token(OPERATOR_NS, &["secretAccess.namespaces={team-r2}"])
        .await;
    let op = Operator::start(&cluster, &token, "op-roles", OPERATOR_NS);
    let admin = cluster.admin.clone();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    for name in ["ddl-pw", "ingest-pw", "reader-pw"] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name}, "stringData": {"password": name}
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    let p: TracingPipeline = serde_json::from_value(json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
        "metadata": {"name": "orders"},
        "spec": {"storage": {"url": format!("http://127.0.0.1:{}", free_port()),
                             "user": "ddl",
                             "passwordSecretRef": {"name": "ddl-pw", "key": "password"},
                             "collectorCredentials": {"user": "ingest",
                                 "passwordSecretRef": {"name": "ingest-pw", "key": "password"}},
                             "queryCredentials": {"user": "reader",
                                 "passwordSecretRef": {"name": "reader-pw", "key": "password"}}}}
    }))
    .unwrap();
    pipelines.create(&PostParams::default(), &p).await.unwrap();

    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let collector = wait_for("collector", WAIT, || {
        config_and_secret(&deployments, "orders-collector")
    })
    .await;
    assert_eq!(
        collector,
        (
            format!("/etc/datatracing/config/{CONFIG_KEY}"),
            "ingest-pw".into()
        )
    );
    let query = wait_for("query", WAIT, || {
        config_and_secret(&deployments, "orders-query")
    })
    .await;
    assert_eq!(
        query,
        (
            format!("/etc/datatracing/config/{QUERY_CONFIG_KEY}"),
            "reader-pw".into()
        )
    );
    let data = Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get("orders-config")
        .await
        .unwrap()
        .data
        .unwrap();
    assert!(
        data[CONFIG_KEY].contains("user: ingest"),
        "{}",
        data[CONFIG_KEY]
    );
    assert!(data[CONFIG_KEY].contains("migrate_on_start: false"));
    assert!(data[QUERY_CONFIG_KEY].contains("user: reader"));

    // Rotating a role's Secret rolls the pods too.
    let (v1, _) = wait_for("secret version", WAIT, || {
        versions(&deployments, "orders-collector")
    })
    .await;
    secrets
        .patch(
            "ingest-pw",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "rotated"}})),
        )
        .await
        .unwrap();
    wait_for("collector rolled for the ingest password", WAIT, || async {
        versions(&deployments, "orders-collector")
            .await
            .filter(|(v, _)| *v != v1)
    })
    .await;
    op.stop().await.unwrap();
}
