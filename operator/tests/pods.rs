//! Pod customisation and disruption budgets of collector and query on a real API server
//! (issue 15): the CRD with its CEL rules is accepted, the options reach the Deployments the
//! API server stores, budgets exist by default, and reserved names are refused at admission. No ClickHouse: retention stays unapplied, which
//! does not stop the children being written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Operator, free_port, wait_for};
use datatracing_operator::crd::TracingPipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const OPERATOR_NS: &str = "datatracing-system";
const NS: &str = "team-p";
const WAIT: Duration = Duration::from_secs(60);

fn pipeline(name: &str, collector: Value, clickhouse: &str) -> Value {
    json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
        "metadata": {"name": name},
        "spec": {"collector": collector,
                 "storage": {"url": clickhouse, "database": name}}
    })
}

async fn apply(api: &Api<TracingPipeline>, body: &Value) -> Result<TracingPipeline, kube::Error> {
    let name = body["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply("tests").force(),
        &Patch::Apply(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_options_reach_the_deployment_and_reserved_names_are_refused() {
    let cluster = Cluster::start().await;
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster.operator_token(OPERATOR_NS, &[]).await;
    let op = Operator::start(&cluster, &token, "op-p", OPERATOR_NS);
    let admin = cluster.admin.clone();
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let clickhouse = format!("http://127.0.0.1:{}", free_port());

    let options = json!({
        "replicas": 2,
        "nodeSelector": {"pool": "tracing"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "tracing", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"topologyKey": "topology.kubernetes.io/zone",
             "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "orders"}}}}]}},
        "priorityClassName": "tracing-high",
        "env": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "envFrom": [{"secretRef": {"name": "proxy-settings"}}],
        "volumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
        "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/extra", "readOnly": true}],
        "podAnnotations": {"example.com/team": "data"},
        "podLabels": {"team": "data"},
        "imagePullSecrets": [{"name": "pull"}],
        "serviceAccountName": "tracing-wi",
        "preStopDelaySeconds": 10,
        "terminationGracePeriodSeconds": 45
    });
    // A budget of the user's under the query budget's name: the default one yields to it.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(admin.clone(), NS);
    let theirs: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "orders-query"},
        "spec": {"minAvailable": 0, "selector": {"matchLabels": {"team": "data"}}}
    }))
    .unwrap();
    pdbs.create(&Default::default(), &theirs).await.unwrap();
    apply(&pipelines, &pipeline("orders", options, &clickhouse))
        .await
        .unwrap();
    let d = wait_for("collector Deployment", WAIT, || async {
        deployments.get_opt("orders-collector").await.ok()?
    })
    .await;
    let t = d.spec.unwrap().template;
    let meta = t.metadata.unwrap();
    assert_eq!(meta.labels.unwrap()["team"], "data");
    assert_eq!(meta.annotations.unwrap()["example.com/team"], "data");
    let pod = t.spec.unwrap();
    assert_eq!(pod.node_selector.unwrap()["pool"], "tracing");
    assert_eq!(
        pod.tolerations.unwrap()[0].value.as_deref(),
        Some("tracing")
    );
    assert!(pod.affinity.unwrap().pod_anti_affinity.is_some());
    let spread = pod.topology_spread_constraints.unwrap();
    assert_eq!(
        (
            spread[0].topology_key.as_str(),
            spread[0].when_unsatisfiable.as_str()
        ),
        ("kubernetes.io/hostname", "ScheduleAnyway"),
        "default spread"
    );
    assert_eq!(pod.priority_class_name.as_deref(), Some("tracing-high"));
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "pull");
    assert_eq!(pod.service_account_name.as_deref(), Some("tracing-wi"));
    assert_eq!(pod.termination_grace_period_seconds, Some(45));
    assert!(pod.volumes.unwrap().iter().any(|v| v.name == "ca"));
    let c = &pod.containers[0];
    assert_eq!(c.env.as_ref().unwrap()[0].name, "RUST_BACKTRACE");
    assert!(c.env_from.as_ref().unwrap()[0].secret_ref.is_some());
    assert!(
        c.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.mount_path == "/etc/ssl/extra")
    );
    assert!(c.startup_probe.is_some());
    let pre_stop = c.lifecycle.clone().unwrap().pre_stop.unwrap();
    assert_eq!(pre_stop.sleep.unwrap().seconds, 10);
    // The query Deployment keeps its defaults.
    let q = wait_for("query Deployment", WAIT, || async {
        deployments.get_opt("orders-query").await.ok()?
    })
    .await;
    assert!(
        q.spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .node_selector
            .is_none()
    );

    // A disruption budget by default (maxUnavailable 1); the user's query budget stays
    // theirs, and the status says ours was not created.
    let pdb = wait_for("PodDisruptionBudget orders-collector", WAIT, || async {
        pdbs.get_opt("orders-collector").await.ok()?
    })
    .await;
    let spec = pdb.spec.unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(spec.min_available, None);
    let msg = wait_for("ResourcesApplied with a note", WAIT, || async {
        let st = pipelines.get("orders").await.ok()?.status?;
        let c = st
            .conditions
            .into_iter()
            .find(|c| c.type_ == "ResourcesApplied")?;
        (c.status == "True").then_some(c.message)
    })
    .await;
    assert!(
        msg.contains("default budget not created: PodDisruptionBudget team-p/orders-query"),
        "{msg}"
    );
    let user = pdbs.get("orders-query").await.unwrap();
    assert!(user.metadata.owner_references.is_none(), "still the user's");
    assert_eq!(user.spec.unwrap().min_available, Some(IntOrString::Int(0)));
    pdbs.delete("orders-query", &Default::default())
        .await
        .unwrap();
    // A percentage is taken; `enabled: false` removes ours.
    let mut spec = pipeline(
        "orders",
        json!({"replicas": 2, "podDisruptionBudget": {"enabled": false}}),
        &clickhouse,
    );
    spec["spec"]["query"] = json!({"podDisruptionBudget": {"maxUnavailable": "50%"}});
    apply(&pipelines, &spec).await.unwrap();
    wait_for("query budget 50%, collector budget gone", WAIT, || async {
        let q = pdbs.get_opt("orders-query").await.ok()??.spec?;
        let gone = pdbs.get_opt("orders-collector").await.ok()?.is_none();
        (gone && q.max_unavailable == Some(IntOrString::String("50%".into()))).then_some(())
    })
    .await;

    // Reserved names and a grace period shorter than the drain are refused by CEL.
    for (bad, expect) in [
        (
            json!({"env": [{"name": "DATATRACING_STORAGE__BACKEND", "value": "sqlite"}]}),
            "reserved",
        ),
        (
            json!({"podLabels": {"app.kubernetes.io/instance": "other"}}),
            "reserved",
        ),
        (
            json!({"volumeMounts": [{"name": "x", "mountPath": "/etc/datatracing/config"}]}),
            "reserved",
        ),
        (
            json!({"volumes": [{"name": "config", "emptyDir": {}}]}),
            "reserved",
        ),
        (
            json!({"volumes": [{"name": "durable-queue", "emptyDir": {}}]}),
            "reserved",
        ),
        (
            json!({"volumeMounts": [{"name": "x", "mountPath": "/var/lib/datatracing/durable-queue"}]}),
            "reserved",
        ),
        (
            json!({"durableQueue": {"maxBytes": 1024}}),
            "should be greater than or equal to 16777216",
        ),
        (
            json!({"podAnnotations": {"datatracing.io/config-hash": "x"}}),
            "reserved",
        ),
        (
            json!({"terminationGracePeriodSeconds": 3}),
            "must exceed preStopDelaySeconds",
        ),
        (
            json!({"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}),
            "not both",
        ),
        (
            json!({"podDisruptionBudget": {"maxUnavailable": "half"}}),
            "percentage",
        ),
        (
            json!({"replicas": 2, "podDisruptionBudget": {"minAvailable": 2}}),
            "minAvailable must be below collector.replicas",
        ),
    ] {
        let e = apply(&pipelines, &pipeline("refused", bad.clone(), &clickhouse))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, kube::Error::Api(s) if s.code == 422 && s.message.contains(expect)),
            "{bad}: {e}"
        );
    }
    op.stop().await.unwrap();
}
