//! What the operator writes into `status` on a real API server: lists that become empty
//! are cleared (`TracingPipeline.status.samplingPolicies`, `SamplingPolicy.status.usedBy`),
//! and an invalid pipeline selector is reported instead of selecting nothing in silence.
//! No ClickHouse: retention stays unapplied, which does not stop status being written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Operator, apply, free_port, wait_for};
use datatracing_operator::crd::{SamplingPolicy, TracingPipeline};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const OPERATOR_NS: &str = "datatracing-system";
const NS: &str = "team-s";
const WAIT: Duration = Duration::from_secs(60);

fn policy(labels: Value) -> Value {
    json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "SamplingPolicy",
        "metadata": {"name": "errors", "labels": labels},
        "spec": {"rules": [{"name": "errors", "when": {"status": ["ERROR"]},
                            "action": {"decision": "keep"}}]}
    })
}

fn pipeline(selector: Value, clickhouse: &str) -> Value {
    json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
        "metadata": {"name": "orders"},
        "spec": {"storage": {"url": clickhouse, "database": "orders"},
                 "sampling": {"selector": selector}}
    })
}

/// The pipeline's `status.samplingPolicies` once its status describes its generation.
async fn sampling_policies(api: &Api<TracingPipeline>) -> Option<Vec<String>> {
    let p = api.get("orders").await.ok()?;
    let s = p.status?;
    (s.observed_generation == p.metadata.generation).then_some(s.sampling_policies)
}

async fn used_by(api: &Api<SamplingPolicy>) -> Option<Vec<String>> {
    Some(api.get("errors").await.ok()?.status?.used_by)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_lists_that_become_empty_are_cleared() {
    let cluster = Cluster::start().await;
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster.operator_token(OPERATOR_NS, &[]).await;
    let op = Operator::start(&cluster, &token, "op-s", OPERATOR_NS);
    let admin = cluster.admin.clone();
    // Nothing listens here: retention fails fast and is retried; status is still written.
    let clickhouse = format!("http://127.0.0.1:{}", free_port());

    let policies: Api<SamplingPolicy> = Api::namespaced(admin.clone(), NS);
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    apply(
        &policies,
        policy(json!({"datatracing.io/pipeline": "orders"})),
    )
    .await;
    apply(
        &pipelines,
        pipeline(
            json!({"matchLabels": {"datatracing.io/pipeline": "orders"}}),
            &clickhouse,
        ),
    )
    .await;
    wait_for("the pipeline lists the policy", WAIT, || async {
        sampling_policies(&pipelines)
            .await
            .filter(|l| *l == ["errors"])
    })
    .await;
    wait_for("the policy lists the pipeline", WAIT, || async {
        used_by(&policies).await.filter(|l| *l == ["orders"])
    })
    .await;

    // The policy loses the label the pipeline selects: both lists become empty.
    apply(
        &policies,
        policy(json!({"datatracing.io/pipeline": "other"})),
    )
    .await;
    wait_for("the pipeline no longer lists the policy", WAIT, || async {
        sampling_policies(&pipelines).await.filter(|l| l.is_empty())
    })
    .await;
    wait_for("the policy no longer lists the pipeline", WAIT, || async {
        used_by(&policies).await.filter(|l| l.is_empty())
    })
    .await;

    // Selected again (through matchExpressions this time), then the pipeline's selector
    // changes to one that selects nothing.
    apply(
        &pipelines,
        pipeline(
            json!({"matchExpressions": [{"key": "datatracing.io/pipeline",
                                         "operator": "In", "values": ["orders", "other"]}]}),
            &clickhouse,
        ),
    )
    .await;
    wait_for("selected through matchExpressions", WAIT, || async {
        sampling_policies(&pipelines)
            .await
            .filter(|l| *l == ["errors"])
    })
    .await;
    wait_for("the policy lists the pipeline again", WAIT, || async {
        used_by(&policies).await.filter(|l| *l == ["orders"])
    })
    .await;
    apply(
        &pipelines,
        pipeline(
            json!({"matchExpressions": [{"key": "datatracing.io/pipeline",
                                         "operator": "DoesNotExist"}]}),
            &clickhouse,
        ),
    )
    .await;
    wait_for("the new selector selects nothing", WAIT, || async {
        sampling_policies(&pipelines).await.filter(|l| l.is_empty())
    })
    .await;
    wait_for("the policy is unused", WAIT, || async {
        used_by(&policies).await.filter(|l| l.is_empty())
    })
    .await;

    // A selector the API server accepts but that cannot be evaluated (an unknown operator)
    // is reported, and the configuration already deployed stays (and stays in status).
    let before = pipelines.get("orders").await.unwrap().status.unwrap();
    assert!(before.config_hash.is_some());
    apply(
        &pipelines,
        pipeline(
            json!({"matchExpressions": [{"key": "datatracing.io/pipeline",
                                         "operator": "Matches", "values": ["orders"]}]}),
            &clickhouse,
        ),
    )
    .await;
    let status = wait_for("the invalid selector is reported", WAIT, || async {
        let p = pipelines.get("orders").await.ok()?;
        let s = p.status?;
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "ConfigurationGenerated")?;
        (s.observed_generation == p.metadata.generation && c.status == "False").then_some(s)
    })
    .await;
    for t in ["ConfigurationGenerated", "Ready"] {
        let c = status.conditions.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidConfiguration")
        );
        assert!(
            c.message.contains("spec.sampling.selector"),
            "{}",
            c.message
        );
    }
    assert_eq!(status.config_hash, before.config_hash);

    op.stop().await.unwrap();
}

/// An operator from before server-side apply wrote status with merge patches (an `Update`
/// field manager owns those fields). Fields the operator no longer sets must still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_written_by_merge_patches_is_taken_over() {
    let cluster = Cluster::start().await;
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster.operator_token(OPERATOR_NS, &[]).await;
    let admin = cluster.admin.clone();
    let clickhouse = format!("http://127.0.0.1:{}", free_port());
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    let policies: Api<SamplingPolicy> = Api::namespaced(admin.clone(), NS);
    apply(
        &pipelines,
        json!({
            "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
            "metadata": {"name": "orders"},
            "spec": {"storage": {"url": clickhouse, "database": "orders"}}
        }),
    )
    .await;
    apply(
        &policies,
        policy(json!({"datatracing.io/pipeline": "orders"})),
    )
    .await;
    // What the previous operator left: sampling was on, the policy was used.
    pipelines
        .patch_status(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "samplingHash": "0123456789abcdef", "samplingPolicies": ["errors"]}})),
        )
        .await
        .unwrap();
    policies
        .patch_status(
            "errors",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"usedBy": ["orders"], "ruleCount": 7}})),
        )
        .await
        .unwrap();

    let op = Operator::start(&cluster, &token, "op-u", OPERATOR_NS);
    // No selector: no sampling, and the policy is used by nobody.
    wait_for("the stale sampling status is gone", WAIT, || async {
        let p = pipelines.get("orders").await.ok()?;
        let s = p.status?;
        (s.observed_generation == p.metadata.generation
            && s.config_hash.is_some()
            && s.sampling_hash.is_none()
            && s.sampling_policies.is_empty())
        .then_some(())
    })
    .await;
    wait_for("the stale policy status is gone", WAIT, || async {
        let st = policies.get("errors").await.ok()?.status?;
        (st.observed_generation.is_some() && st.used_by.is_empty() && st.rule_count == Some(1))
            .then_some(())
    })
    .await;
    op.stop().await.unwrap();
}
