//! Defect 10 of issue 15: the operator's ClusterRole could read every Secret in the cluster.
//! Now it reads Secrets only in namespaces that grant it (optionally only named ones); this
//! runs as the chart's ServiceAccount on a real API server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Operator, wait_for};
use datatracing_operator::crd::TracingPipeline;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const OPERATOR_NS: &str = "datatracing-system";
const WAIT: Duration = Duration::from_secs(60);

async fn secret(admin: &kube::Client, ns: &str, name: &str) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name}, "stringData": {"password": "pw"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(ref e)) if e.code == 403)
}

/// `(reason, message)` of the pipeline's `RetentionApplied` once it has one.
async fn retention(api: &Api<TracingPipeline>, name: &str, reason: &str) -> String {
    wait_for(
        &format!("{name}: RetentionApplied {reason}"),
        WAIT,
        || async {
            let st = api.get(name).await.ok()?.status?;
            let c = st
                .conditions
                .iter()
                .find(|c| c.type_ == "RetentionApplied")?;
            (c.reason == reason).then(|| c.message.clone())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_reads_only_the_secrets_a_namespace_grants() {
    let cluster = Cluster::start().await;
    let admin = cluster.admin.clone();
    for ns in [OPERATOR_NS, "team-a", "team-b"] {
        cluster.namespace(ns).await;
    }
    for (ns, name) in [
        ("team-a", "clickhouse-credentials"),
        ("team-a", "unrelated"),
        ("team-b", "clickhouse-credentials"),
    ] {
        secret(&admin, ns, name).await;
    }
    let token = cluster
        .operator_token(
            OPERATOR_NS,
            &[
                "secretAccess.namespaces={team-a}",
                "secretAccess.secretNames={clickhouse-credentials}",
            ],
        )
        .await;
    let sa = common::client_with_token(&cluster.server, &token);

    // What the chart's ServiceAccount may do with Secrets: get the named one where granted,
    // nothing else (before: get, list and watch on every Secret in the cluster).
    let team_a: Api<Secret> = Api::namespaced(sa.clone(), "team-a");
    let team_b: Api<Secret> = Api::namespaced(sa.clone(), "team-b");
    assert!(team_a.get("clickhouse-credentials").await.is_ok());
    assert!(forbidden(team_a.get("unrelated").await), "other Secret");
    assert!(
        forbidden(team_b.get("clickhouse-credentials").await),
        "namespace without a grant"
    );
    assert!(forbidden(team_a.list(&ListParams::default()).await));
    assert!(forbidden(
        Api::<Secret>::all(sa.clone())
            .list(&ListParams::default())
            .await
    ));

    // The operator, with that token, reads the granted Secret (and gets as far as
    // ClickHouse, which is not there) and reports the ungranted one with the grant it needs.
    let op = Operator::start(&cluster, &token, "op-secrets", OPERATOR_NS);
    let closed = common::free_port();
    for ns in ["team-a", "team-b"] {
        let api: Api<TracingPipeline> = Api::namespaced(admin.clone(), ns);
        let p: TracingPipeline = serde_json::from_value(json!({
            "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
            "metadata": {"name": "orders"},
            "spec": {"storage": {"url": format!("http://127.0.0.1:{closed}"),
                                 "passwordSecretRef": {"name": "clickhouse-credentials", "key": "password"}}}
        }))
        .unwrap();
        api.create(&PostParams::default(), &p).await.unwrap();
    }
    let a: Api<TracingPipeline> = Api::namespaced(admin.clone(), "team-a");
    let b: Api<TracingPipeline> = Api::namespaced(admin.clone(), "team-b");
    retention(&a, "orders", "ClickHouseUnreachable").await;
    let msg = retention(&b, "orders", "SecretForbidden").await;
    assert!(
        msg.contains("Secret team-b/clickhouse-credentials") && msg.contains("RoleBinding"),
        "{msg}"
    );

    // A namespace admin grants it by binding the secret-reader ClusterRole: picked up by
    // the retry, no restart.
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "datatracing-operator-secrets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "dt-datatracing-operator-secret-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "dt-datatracing-operator",
                      "namespace": OPERATOR_NS}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "team-b")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    retention(&b, "orders", "ClickHouseUnreachable").await;
    op.stop().await.unwrap();
}
