//! Scaling on a real API server (issue 15): the scale subresource of TracingPipeline drives
//! the collector replicas, and with `collector.autoscaling` a HorizontalPodAutoscaler owns
//! them: the operator neither resets nor fights its count, and hands them back when the
//! section is removed. No ClickHouse and no controller-manager: the test plays the
//! autoscaler by writing the Deployment's scale subresource, as the HPA controller does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Operator, free_port, wait_for};
use datatracing_operator::crd::TracingPipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const OPERATOR_NS: &str = "datatracing-system";
const NS: &str = "team-h";
const WAIT: Duration = Duration::from_secs(60);

fn pipeline(collector: Value, clickhouse: &str) -> Value {
    json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
        "metadata": {"name": "orders"},
        "spec": {"collector": collector, "storage": {"url": clickhouse, "database": "orders"}}
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

async fn replicas(api: &Api<Deployment>) -> Option<i32> {
    api.get_opt("orders-collector").await.ok()??.spec?.replicas
}

async fn wait_replicas(api: &Api<Deployment>, want: i32, what: &str) {
    wait_for(what, WAIT, || async {
        (replicas(api).await? == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scale_subresource_and_an_autoscaler_own_the_collector_replicas() {
    let cluster = Cluster::start().await;
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster.operator_token(OPERATOR_NS, &[]).await;
    let op = Operator::start(&cluster, &token, "op-h", OPERATOR_NS);
    let admin = cluster.admin.clone();
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), NS);
    let clickhouse = format!("http://127.0.0.1:{}", free_port());

    // `kubectl scale tracingpipeline orders --replicas 4`.
    apply(&pipelines, pipeline(json!({"replicas": 2}), &clickhouse)).await;
    wait_replicas(&deployments, 2, "2 collectors").await;
    pipelines
        .patch_scale(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    wait_replicas(
        &deployments,
        4,
        "4 collectors through the scale subresource",
    )
    .await;
    let p = pipelines.get("orders").await.unwrap();
    assert_eq!(p.spec.collector.replicas, 4);
    let scale = wait_for("scale selector", WAIT, || async {
        let s = pipelines.get_scale("orders").await.ok()?;
        s.status.as_ref()?.selector.is_some().then_some(s)
    })
    .await;
    let selector = scale.status.unwrap().selector.unwrap();
    assert!(
        selector.contains("app.kubernetes.io/component=collector")
            && selector.contains("app.kubernetes.io/instance=orders"),
        "{selector}"
    );

    // An autoscaler: rendered, and the current count is not reset when the operator stops
    // setting it.
    let autoscaled = |max: i32| {
        pipeline(
            json!({"replicas": 4, "autoscaling": {"minReplicas": 2, "maxReplicas": max}}),
            &clickhouse,
        )
    };
    apply(&pipelines, autoscaled(6)).await;
    let hpa = wait_for("HPA", WAIT, || async {
        hpas.get_opt("orders-collector").await.ok()?
    })
    .await;
    let spec = hpa.spec.unwrap();
    assert_eq!(spec.scale_target_ref.name, "orders-collector");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 6));
    assert_eq!(
        spec.metrics.unwrap()[0]
            .resource
            .as_ref()
            .unwrap()
            .target
            .average_utilization,
        Some(80)
    );
    assert_eq!(replicas(&deployments).await, Some(4), "not reset to 1");

    // The autoscaler scales (as the HPA controller does, through the scale subresource); a
    // later reconcile (a spec change, observed on the HPA) leaves its count alone.
    deployments
        .patch_scale(
            "orders-collector",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    apply(&pipelines, autoscaled(7)).await;
    wait_for("HPA max 7", WAIT, || async {
        (hpas
            .get_opt("orders-collector")
            .await
            .ok()??
            .spec?
            .max_replicas
            == 7)
            .then_some(())
    })
    .await;
    assert_eq!(
        replicas(&deployments).await,
        Some(5),
        "the operator does not fight the HPA"
    );

    // Autoscaling removed: our HPA goes, the spec's count is back.
    apply(&pipelines, pipeline(json!({"replicas": 3}), &clickhouse)).await;
    wait_replicas(&deployments, 3, "spec replicas again").await;
    wait_for("HPA deleted", WAIT, || async {
        hpas.get_opt("orders-collector")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // CEL: min above max is refused.
    let e = pipelines
        .patch(
            "orders",
            &PatchParams::apply("tests").force(),
            &Patch::Apply(pipeline(
                json!({"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}),
                &clickhouse,
            )),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("must not exceed"), "{e}");
    op.stop().await.unwrap();
}
