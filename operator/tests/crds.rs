//! The CRDs install on a real API server, and the API server enforces their schemas and CEL
//! rules with the messages the code declares.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use datatracing_operator::crd::{SamplingPolicy, TracingPipeline};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};

/// Posts raw JSON (so bodies our own types would refuse reach the API server too).
async fn create_err<K>(_: &Api<K>, client: &kube::Client, body: Value) -> String
where
    K: kube::Resource<DynamicType = ()>,
{
    let ar = ApiResource::erase::<K>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), "crds", &ar);
    let obj: DynamicObject = serde_json::from_value(body).unwrap();
    match raw.create(&PostParams::default(), &obj).await {
        Ok(_) => panic!("the API server accepted an invalid object"),
        Err(e) => e.to_string(),
    }
}

fn pipeline(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
           "metadata": {"name": name}, "spec": spec})
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "datatracing.io/v1alpha1", "kind": "SamplingPolicy",
           "metadata": {"name": name}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_install_and_the_api_server_enforces_their_rules() {
    let cluster = common::Cluster::start().await;
    cluster.namespace("crds").await;
    let pipelines: Api<TracingPipeline> = Api::namespaced(cluster.admin.clone(), "crds");
    let policies: Api<SamplingPolicy> = Api::namespaced(cluster.admin.clone(), "crds");

    // A valid pipeline is stored with its defaults filled in by the API server.
    let ok: TracingPipeline = serde_json::from_value(pipeline(
        "ok",
        json!({"storage": {"url": "http://clickhouse:8123"}}),
    ))
    .unwrap();
    let stored = pipelines.create(&PostParams::default(), &ok).await.unwrap();
    assert_eq!(stored.spec.collector.replicas, 2);
    assert_eq!(stored.spec.storage.retention_days, 7);
    assert_eq!(stored.spec.storage.database, "datatracing");

    let e = create_err(
        &pipelines,
        &cluster.admin,
        pipeline("bad-url", json!({"storage": {"url": "clickhouse:8123"}})),
    )
    .await;
    assert!(
        e.contains("storage.url must be an http:// or https:// URL"),
        "{e}"
    );

    // Credentials in the URL are refused, and the API server's answer does not repeat them.
    let e = create_err(
        &pipelines,
        &cluster.admin,
        pipeline(
            "url-with-password",
            json!({"storage": {"url": "http://default:hunter2@clickhouse:8123"}}),
        ),
    )
    .await;
    assert!(e.contains("storage.url must not carry credentials"), "{e}");
    assert!(
        !e.contains("hunter2"),
        "the rejection repeats the password: {e}"
    );

    let e = create_err(
        &pipelines,
        &cluster.admin,
        pipeline(
            "bad-pdb",
            json!({"storage": {"url": "http://c:8123"},
            "collector": {"replicas": 2, "podDisruptionBudget": {"minAvailable": 2}}}),
        ),
    )
    .await;
    assert!(
        e.contains("minAvailable must be below collector.replicas"),
        "{e}"
    );

    let e = create_err(
        &pipelines,
        &cluster.admin,
        pipeline(
            "bad-tenant",
            json!({"storage": {"url": "http://c:8123"},
            "auth": {"tokens": [{"name": "team", "scopes": ["query"],
                "secretRef": {"name": "t", "key": "k"}, "tenant": "Team_A"}]}}),
        ),
    )
    .await;
    assert!(
        e.contains("auth.tokens[].tenant must be 1 to 63 lowercase letters"),
        "{e}"
    );
    let e = create_err(
        &pipelines,
        &cluster.admin,
        pipeline(
            "bad-retention",
            json!({"storage": {"url": "http://c:8123", "retentionDays": 0}}),
        ),
    )
    .await;
    assert!(e.contains("retentionDays"), "{e}");

    let e = create_err(
        &pipelines,
        &cluster.admin,
        pipeline(
            "bad-db",
            json!({"storage": {"url": "http://c:8123", "database": "a-b; DROP"}}),
        ),
    )
    .await;
    assert!(
        e.contains("storage.database must be a plain identifier"),
        "{e}"
    );

    // The database is immutable.
    let mut changed = stored.clone();
    changed.spec.storage.database = "other".into();
    let e = pipelines
        .replace("ok", &PostParams::default(), &changed)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("storage.database is immutable"), "{e}");

    // SamplingPolicy: a valid one, then each CEL rule.
    let good: SamplingPolicy = serde_json::from_value(policy(
        "errors",
        json!({"priority": 10, "rules": [{"name": "errors", "when": {"any": [
            {"status": ["ERROR"]}, {"not": {"duration": {"under": "2s"}}}]},
            "action": {"decision": "keep"}}]}),
    ))
    .unwrap();
    policies
        .create(&PostParams::default(), &good)
        .await
        .unwrap();

    let e = create_err(
        &policies,
        &cluster.admin,
        policy(
            "two-fields",
            json!({"rules": [{"name": "r", "when": {"status": ["ERROR"], "service": {"exact": "a"}},
            "action": {"decision": "keep"}}]}),
        ),
    )
    .await;
    assert!(e.contains("a condition sets exactly one of"), "{e}");

    let e = create_err(
        &policies,
        &cluster.admin,
        policy(
            "drop-rate",
            json!({"rules": [{"name": "r", "when": {"root_present": true},
            "action": {"decision": "drop", "sample_rate": 10}}]}),
        ),
    )
    .await;
    assert!(e.contains("apply to decision: keep only"), "{e}");

    let e = create_err(
        &policies,
        &cluster.admin,
        policy(
            "dup",
            json!({"rules": [
            {"name": "r", "when": {"root_present": true}, "action": {"decision": "keep"}},
            {"name": "r", "when": {"root_present": false}, "action": {"decision": "drop"}}]}),
        ),
    )
    .await;
    assert!(e.contains("rule names must be unique"), "{e}");

    let e = create_err(
        &policies,
        &cluster.admin,
        policy(
            "bad-status",
            json!({"rules": [{"name": "r", "when": {"status": ["BROKEN"]},
            "action": {"decision": "keep"}}]}),
        ),
    )
    .await;
    assert!(e.contains("Unsupported value: \"BROKEN\""), "{e}");
}
