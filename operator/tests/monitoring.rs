//! Observability of the data plane on a real API server (issue 15): Services have a
//! `metrics` port, pods carry Prometheus annotations, a ServiceMonitor is rendered only when
//! its CRD exists (both cases: a minimal ServiceMonitor CRD is installed mid-test), and the
//! operator exports a per-pipeline condition gauge. No ClickHouse: retention stays
//! unapplied, which the gauge shows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Operator, free_port, wait_for};
use datatracing_operator::crd::TracingPipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

const OPERATOR_NS: &str = "datatracing-system";
const NS: &str = "team-o";
const WAIT: Duration = Duration::from_secs(60);

fn pipeline(monitor: Value, clickhouse: &str) -> Value {
    json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
        "metadata": {"name": "orders"},
        "spec": {"monitoring": {"serviceMonitor": monitor},
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

/// The `ResourcesApplied` message once it describes the current generation.
async fn resources_applied(api: &Api<TracingPipeline>) -> Option<String> {
    let p = api.get("orders").await.ok()?;
    let c = p
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "ResourcesApplied")?;
    (c.observed_generation == p.metadata.generation && c.status == "True").then_some(c.message)
}

fn gauge(condition: &str, value: u8) -> String {
    format!(
        "datatracing_operator_pipeline_condition{{namespace=\"{NS}\",pipeline=\"orders\",condition=\"{condition}\"}} {value}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_ports_annotations_service_monitor_when_served_and_condition_gauge() {
    let cluster = Cluster::start().await;
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster.operator_token(OPERATOR_NS, &[]).await;
    let op = Operator::start(&cluster, &token, "op-o", OPERATOR_NS);
    let admin = cluster.admin.clone();
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    let clickhouse = format!("http://127.0.0.1:{}", free_port());

    // No ServiceMonitor CRD: everything else is applied, and the status says what was not.
    apply(&pipelines, pipeline(json!({"enabled": true}), &clickhouse)).await;
    let msg = wait_for("ResourcesApplied", WAIT, || resources_applied(&pipelines)).await;
    assert!(msg.contains("ServiceMonitor not created"), "{msg}");
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    for (name, target) in [("orders-collector", "otlp-http"), ("orders-query", "http")] {
        let ports = services
            .get(name)
            .await
            .unwrap()
            .spec
            .unwrap()
            .ports
            .unwrap();
        let metrics = ports
            .iter()
            .find(|p| p.name.as_deref() == Some("metrics"))
            .unwrap_or_else(|| panic!("{name} has no metrics port"));
        assert_eq!(
            metrics.target_port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(target.into()))
        );
    }
    let d = Api::<Deployment>::namespaced(admin.clone(), NS)
        .get("orders-collector")
        .await
        .unwrap();
    let annotations = d
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "4318");

    // The condition gauge: resources applied, retention not (no ClickHouse).
    wait_for("condition gauge", WAIT, || async {
        let m = op.metrics().await;
        (m.contains(&gauge("ResourcesApplied", 1)) && m.contains(&gauge("RetentionApplied", 0)))
            .then_some(())
    })
    .await;

    // The Prometheus Operator's CRD appears (a minimal one): the next reconcile creates the
    // ServiceMonitor, with no operator restart.
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"plural": "servicemonitors", "singular": "servicemonitor",
                           "kind": "ServiceMonitor", "listKind": "ServiceMonitorList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                          "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    wait_for("ServiceMonitor CRD served", WAIT, || async {
        let c = crds
            .get("servicemonitors.monitoring.coreos.com")
            .await
            .ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
    apply(
        &pipelines,
        pipeline(json!({"enabled": true, "interval": "15s"}), &clickhouse),
    )
    .await;
    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
    let monitors: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        NS,
        &ApiResource::from_gvk_with_plural(&gvk, "servicemonitors"),
    );
    // A retry of the earlier generation may create it first, without the interval.
    let sm = wait_for("ServiceMonitor with interval 15s", WAIT, || async {
        monitors
            .get_opt("orders")
            .await
            .ok()?
            .filter(|sm| sm.data["spec"]["endpoints"][0]["interval"] == "15s")
    })
    .await;
    let uid = pipelines.get("orders").await.unwrap().metadata.uid.unwrap();
    assert_eq!(sm.metadata.owner_references.unwrap()[0].uid, uid);
    let endpoint = &sm.data["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["interval"], "15s");
    assert_eq!(
        sm.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "orders"
    );
    // The status catches up (the reconcile that created it writes status after retention,
    // and one that ran before discovery listed the new CRD may have reported it missing).
    wait_for("ResourcesApplied without the note", WAIT, || async {
        resources_applied(&pipelines)
            .await
            .filter(|m| !m.contains("ServiceMonitor"))
    })
    .await;

    // Turned off: ours is removed.
    apply(&pipelines, pipeline(json!({"enabled": false}), &clickhouse)).await;
    wait_for("ServiceMonitor removed", WAIT, || async {
        monitors
            .get_opt("orders")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // A deleted pipeline leaves no gauge behind.
    pipelines
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("gauge removed", WAIT, || async {
        (!op.metrics().await.contains("pipeline=\"orders\"")).then_some(())
    })
    .await;
    op.stop().await.unwrap();
}
