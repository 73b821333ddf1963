//! The operator against a real API server and a real ClickHouse engine, authenticated as the
//! ServiceAccount the chart creates (so it has exactly the chart's RBAC permissions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Cluster, Operator, apply, clickhouse_query, wait_for};
use datatracing_operator::crd::{SamplingPolicy, TracingPipeline, TracingPipelineStatus};
use datatracing_operator::render::{CONFIG_HASH_ANNOTATION, CONFIG_KEY, SAMPLING_KEY};
use datatracing_testkit::clickhouse::{ChdbOptions, ClickHouse, unique_database};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const OPERATOR_NS: &str = "datatracing-system";
const NS: &str = "team-a";
const WAIT: Duration = Duration::from_secs(60);

fn condition<'a>(
    s: &'a TracingPipelineStatus,
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions.iter().find(|c| c.type_ == t)
}

/// Waits until the pipeline's status (for its current generation) satisfies `check`.
async fn wait_status(
    api: &Api<TracingPipeline>,
    name: &str,
    what: &str,
    check: impl Fn(&TracingPipelineStatus) -> bool,
) -> TracingPipeline {
    wait_for(what, WAIT, || async {
        let p = api.get(name).await.ok()?;
        let s = p.status.as_ref()?;
        (s.observed_generation == p.metadata.generation && check(s)).then_some(p.clone())
    })
    .await
}

fn is(s: &TracingPipelineStatus, t: &str, status: &str) -> bool {
    condition(s, t).is_some_and(|c| c.status == status)
}

fn policy(name: &str, priority: i32, rules: Value) -> Value {
    json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "SamplingPolicy",
        "metadata": {"name": name, "labels": {"datatracing.io/pipeline": "orders"}},
        "spec": {"priority": priority, "rules": rules}
    })
}

fn errors_rules(regex: &str) -> Value {
    json!([
        {"name": "errors", "when": {"status": ["ERROR", "TIMEOUT"]}, "action": {"decision": "keep", "keep_linked": true}},
        {"name": "by-operation", "when": {"operation": {"regex": regex}}, "action": {"decision": "keep"}}
    ])
}

fn baseline_rules(rate: u32) -> Value {
    json!([{"name": "rest", "when": {"root_present": true},
            "action": {"decision": "keep", "sample_rate": rate}}])
}

/// Plays the kubelet and the Deployment controller (neither runs here): marks every replica
/// of `name` available for its current generation.
async fn mark_available(admin: &kube::Client, name: &str) {
    let api: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let d = api.get(name).await.unwrap();
    let n = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "observedGeneration": d.metadata.generation, "replicas": n,
            "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}})),
    )
    .await
    .unwrap();
}

/// The `spans` table's engine clause (where its TTL shows).
async fn spans_engine(ch: &ClickHouse, db: &str) -> String {
    clickhouse_query(
        ch.url(),
        ch.user(),
        ch.password(),
        &format!(
            "SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = 'spans'"
        ),
    )
    .await
}

async fn config_map(admin: &kube::Client) -> BTreeMap<String, String> {
    Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get("orders-config")
        .await
        .unwrap()
        .data
        .unwrap()
}

async fn template_hash(admin: &kube::Client, name: &str) -> (String, Option<i64>) {
    let d = Api::<Deployment>::namespaced(admin.clone(), NS)
        .get(name)
        .await
        .unwrap();
    let hash = d
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()[CONFIG_HASH_ANNOTATION]
        .clone();
    (hash, d.metadata.generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipeline_is_reconciled_updated_and_deleted() {
    let cluster = Cluster::start().await;
    let ch = tokio::task::spawn_blocking(|| {
        ClickHouse::start_chdb(ChdbOptions {
            password: Some("s3cret-pw".into()),
            ..Default::default()
        })
    })
    .await
    .unwrap();
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster
        .operator_token(OPERATOR_NS, &["secretAccess.namespaces={team-a}"])
        .await;
    let op = Operator::start(&cluster, &token, "op-1", OPERATOR_NS);
    let admin = cluster.admin.clone();

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "clickhouse-credentials"},
        "stringData": {"password": ch.password()}
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let policies: Api<SamplingPolicy> = Api::namespaced(admin.clone(), NS);
    apply(&policies, policy("baseline", 0, baseline_rules(20))).await;
    apply(
        &policies,
        policy("keep-failures", 100, errors_rules("^publish-")),
    )
    .await;

    let db = unique_database("operator");
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    let spec = json!({
        "collector": {"replicas": 2, "podDisruptionBudget": {"minAvailable": 1}},
        "query": {"replicas": 1},
        "storage": {"url": ch.url(), "database": db, "user": ch.user(),
                    "passwordSecretRef": {"name": "clickhouse-credentials", "key": "password"},
                    "retentionDays": 7, "deletionPolicy": "Delete"},
        "sampling": {"selector": {"matchLabels": {"datatracing.io/pipeline": "orders"}},
                     "defaultAction": {"decision": "drop"}}
    });
    apply(
        &pipelines,
        json!({"apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
               "metadata": {"name": "orders"}, "spec": spec}),
    )
    .await;

    // Children exist, owned by the pipeline; configuration and retention are applied.
    let p = wait_status(
        &pipelines,
        "orders",
        "configuration and retention applied",
        |s| is(s, "ConfigurationGenerated", "True") && is(s, "RetentionApplied", "True"),
    )
    .await;
    let uid = p.uid().unwrap();
    let status = p.status.clone().unwrap();
    assert!(
        p.finalizers()
            .contains(&"datatracing.io/storage-cleanup".to_string())
    );
    assert_eq!(status.retention_days, Some(7));
    assert_eq!(
        status.sampling_policies,
        ["keep-failures", "baseline"],
        "priority order"
    );
    assert_eq!(
        condition(&status, "CollectorAvailable").unwrap().reason,
        "ReplicasUnavailable"
    );
    assert_eq!(condition(&status, "Ready").unwrap().status, "False");
    let owned = |meta: &kube::api::ObjectMeta| {
        meta.owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    };
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get("orders-config")
        .await
        .unwrap();
    assert!(owned(&cm.metadata));
    for name in ["orders-collector", "orders-query"] {
        assert!(owned(
            &Api::<Deployment>::namespaced(admin.clone(), NS)
                .get(name)
                .await
                .unwrap()
                .metadata
        ));
        assert!(owned(
            &Api::<Service>::namespaced(admin.clone(), NS)
                .get(name)
                .await
                .unwrap()
                .metadata
        ));
    }
    assert!(owned(
        &Api::<ServiceAccount>::namespaced(admin.clone(), NS)
            .get("orders-datatracing")
            .await
            .unwrap()
            .metadata
    ));
    let pdb = Api::<PodDisruptionBudget>::namespaced(admin.clone(), NS)
        .get("orders-collector")
        .await
        .unwrap();
    assert!(owned(&pdb.metadata));
    let svc = Api::<Service>::namespaced(admin.clone(), NS)
        .get("orders-collector")
        .await
        .unwrap();
    let ports: Vec<i32> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [4317, 4318, 9464], "OTLP gRPC, OTLP HTTP, metrics");
    let qsvc = Api::<Service>::namespaced(admin.clone(), NS)
        .get("orders-query")
        .await
        .unwrap();
    assert_eq!(qsvc.spec.unwrap().ports.unwrap()[0].port, 16686);
    let data = config_map(&admin).await;
    let sampling_before = data[SAMPLING_KEY].clone();
    let errors_at = sampling_before.find("keep-failures/errors").unwrap();
    let rest_at = sampling_before.find("baseline/rest").unwrap();
    assert!(errors_at < rest_at, "{sampling_before}");
    assert!(data[CONFIG_KEY].contains(&format!("database: {db}")));
    let (hash0, gen0) = template_hash(&admin, "orders-collector").await;
    assert_eq!(Some(&hash0), status.config_hash.as_ref());

    // Retention really is in ClickHouse.
    let ttl = spans_engine(&ch, &db).await;
    assert!(ttl.contains("toIntervalDay(7)"), "{ttl}");

    // The SamplingPolicies report acceptance and their users.
    let accepted = wait_for("SamplingPolicy status", WAIT, || async {
        let sp = policies.get("baseline").await.ok()?;
        let st = sp.status?;
        (st.used_by == ["orders"]
            && st
                .conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && c.status == "True"))
        .then_some(st)
    })
    .await;
    assert_eq!(accepted.rule_count, Some(1));

    // Pods "become available" (no kubelet here): Ready turns True.
    mark_available(&admin, "orders-collector").await;
    mark_available(&admin, "orders-query").await;
    wait_status(&pipelines, "orders", "Ready", |s| is(s, "Ready", "True")).await;

    // A sampling change updates the ConfigMap and nothing in the pod template.
    let hash_before = p.status.as_ref().unwrap().sampling_hash.clone();
    apply(&policies, policy("baseline", 0, baseline_rules(50))).await;
    let p2 = wait_status(&pipelines, "orders", "new sampling hash", |s| {
        s.sampling_hash != hash_before && s.sampling_hash.is_some()
    })
    .await;
    let data = config_map(&admin).await;
    assert!(
        data[SAMPLING_KEY].contains("sample_rate: 50"),
        "{}",
        data[SAMPLING_KEY]
    );
    assert_eq!(
        template_hash(&admin, "orders-collector").await,
        (hash0.clone(), gen0),
        "no restart for sampling changes"
    );
    let sampling_good = data[SAMPLING_KEY].clone();

    // An invalid policy (a regex the API server cannot check) is reported on the policy and
    // the pipeline, and the last good sampling configuration stays.
    apply(
        &policies,
        policy("keep-failures", 100, errors_rules("(unclosed")),
    )
    .await;
    let bad = wait_for("policy rejected", WAIT, || async {
        let st = policies.get("keep-failures").await.ok()?.status?;
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "Accepted" && c.status == "False")
    })
    .await;
    assert_eq!(bad.reason, "Invalid");
    assert!(
        bad.message.contains("spec.rules[1].when.operation.regex"),
        "{}",
        bad.message
    );
    let p3 = wait_status(
        &pipelines,
        "orders",
        "pipeline reports the invalid policy",
        |s| {
            condition(s, "ConfigurationGenerated")
                .is_some_and(|c| c.reason == "InvalidSamplingPolicy")
        },
    )
    .await;
    let msg = &condition(p3.status.as_ref().unwrap(), "ConfigurationGenerated")
        .unwrap()
        .message;
    assert!(
        msg.contains("keep-failures") && msg.contains("previous sampling configuration stays"),
        "{msg}"
    );
    assert_eq!(
        p3.status.as_ref().unwrap().sampling_hash,
        p2.status.as_ref().unwrap().sampling_hash
    );
    assert_eq!(
        config_map(&admin).await[SAMPLING_KEY],
        sampling_good,
        "last good policy kept"
    );
    // Defect 7 of issue 15: with the ConfigMap lost while the policy is invalid, it was never
    // recreated (new pods could not start). It comes back with the last good sampling.
    let cms = Api::<ConfigMap>::namespaced(admin.clone(), NS);
    let lost = cms.get("orders-config").await.unwrap().metadata.uid;
    cms.delete("orders-config", &DeleteParams::default())
        .await
        .unwrap();
    let recreated = wait_for("ConfigMap recreated", WAIT, || async {
        cms.get_opt("orders-config")
            .await
            .unwrap()
            .filter(|cm| cm.metadata.uid != lost)
    })
    .await;
    let data = recreated.data.unwrap();
    assert_eq!(
        data[SAMPLING_KEY], sampling_good,
        "last good policy restored"
    );
    assert!(data.contains_key(CONFIG_KEY));
    apply(
        &policies,
        policy("keep-failures", 100, errors_rules("^publish-")),
    )
    .await;
    wait_status(&pipelines, "orders", "policy fixed", |s| {
        is(s, "ConfigurationGenerated", "True")
    })
    .await;

    // A collector setting change rolls the collector pods through the template hash, and
    // leaves the query pods alone.
    let (query_hash0, query_gen0) = template_hash(&admin, "orders-query").await;
    pipelines
        .patch("orders", &PatchParams::apply("tests").force(), &Patch::Apply(json!({
            "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
            "metadata": {"name": "orders"},
            "spec": {"collector": {"replicas": 2, "maxSpansPerRequest": 5000, "podDisruptionBudget": {"minAvailable": 1}},
                     "query": {"replicas": 1},
                     "storage": spec["storage"].clone(), "sampling": spec["sampling"].clone()}})))
        .await
        .unwrap();
    let p4 = wait_status(&pipelines, "orders", "new config hash", |s| {
        s.config_hash.as_deref() != Some(&hash0)
    })
    .await;
    let (hash1, _) = template_hash(&admin, "orders-collector").await;
    assert_eq!(
        Some(&hash1),
        p4.status.as_ref().unwrap().config_hash.as_ref()
    );
    assert!(config_map(&admin).await[CONFIG_KEY].contains("max_spans_per_request: 5000"));
    assert_eq!(
        template_hash(&admin, "orders-query").await,
        (query_hash0, query_gen0),
        "query pods do not restart for collector settings"
    );

    // A retention change runs the ALTER and rolls no pods (defect 8 of issue 15: the
    // rendered file's `initial_retention_days` moved both restart hashes).
    let before = (
        template_hash(&admin, "orders-collector").await,
        template_hash(&admin, "orders-query").await,
    );
    pipelines
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storage": {"retentionDays": 30}}})),
        )
        .await
        .unwrap();
    wait_status(&pipelines, "orders", "retention 30", |s| {
        s.retention_days == Some(30) && is(s, "RetentionApplied", "True")
    })
    .await;
    let ttl = spans_engine(&ch, &db).await;
    assert!(ttl.contains("toIntervalDay(30)"), "{ttl}");
    assert_eq!(
        (
            template_hash(&admin, "orders-collector").await,
            template_hash(&admin, "orders-query").await,
        ),
        before,
        "a retention change does not roll collector or query pods"
    );
    assert!(
        config_map(&admin).await[CONFIG_KEY].contains("initial_retention_days: 30"),
        "new pods create tables with the new retention"
    );

    // Events tell the story.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), NS);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("orders"))
        .filter_map(|e| e.reason)
        .collect();
    for r in [
        "RetentionApplied",
        "SamplingPolicyApplied",
        "InvalidSamplingPolicy",
        "ConfigurationChanged",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }

    // Ops endpoints, metrics and leadership.
    assert_eq!(op.readyz().await, 200);
    let m = op.metrics().await;
    assert!(
        m.contains("datatracing_operator_reconciles_total{controller=\"tracingpipeline\"}"),
        "{m}"
    );
    assert!(m.contains("datatracing_operator_leader 1"), "{m}");
    assert!(
        m.contains("datatracing_operator_retention_applied_total"),
        "{m}"
    );
    let lease = Api::<Lease>::namespaced(admin.clone(), OPERATOR_NS)
        .get("datatracing-operator")
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("op-1"));

    // Deleting with deletionPolicy: Delete drops the database, then the finalizer goes.
    pipelines
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("pipeline gone", WAIT, || async {
        matches!(pipelines.get_opt("orders").await, Ok(None)).then_some(())
    })
    .await;
    let n = clickhouse_query(
        ch.url(),
        ch.user(),
        ch.password(),
        &format!("SELECT count() FROM system.databases WHERE name = '{db}'"),
    )
    .await;
    assert_eq!(n.trim(), "0", "database dropped");

    // Released on shutdown by deleting it: an uninstall leaves no Lease behind (defect 9
    // of issue 15: `helm uninstall` left it).
    op.stop().await.unwrap();
    let lease = Api::<Lease>::namespaced(admin.clone(), OPERATOR_NS)
        .get_opt("datatracing-operator")
        .await
        .unwrap();
    assert!(lease.is_none(), "released on shutdown: {lease:?}");
}
