//! Routing between collectors as the operator renders it on a real API server: with tail
//! sampling and several replicas, the headless peers Service, the Role and RoleBinding that
//! let the collector pods read its EndpointSlices (granted by an operator holding only the
//! chart's RBAC), and the ring size in `status`; with one replica, none of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Operator, apply, free_port, wait_for};
use datatracing_operator::crd::{SamplingPolicy, TracingPipeline};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use serde_json::{Value, json};

const OPERATOR_NS: &str = "datatracing-system";
const NS: &str = "team-r";
const PEERS: &str = "orders-collector-peers";
const WAIT: Duration = Duration::from_secs(60);

fn pipeline(replicas: i32, clickhouse: &str, touch: &str) -> Value {
    json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
        "metadata": {"name": "orders", "annotations": {"test/touch": touch}},
        "spec": {"storage": {"url": clickhouse, "database": "orders"},
                 "collector": {"replicas": replicas},
                 "sampling": {"selector": {"matchLabels": {"datatracing.io/pipeline": "orders"}}}}
    })
}

async fn ring_size(api: &Api<TracingPipeline>) -> Option<Option<i32>> {
    let p = api.get("orders").await.ok()?;
    let s = p.status?;
    // Only a status that describes the current spec counts.
    (s.observed_generation == p.metadata.generation && s.config_hash.is_some())
        .then_some(s.collector_ring_size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routing_collectors_get_a_peers_service_rbac_and_a_ring_size() {
    let cluster = Cluster::start().await;
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster.operator_token(OPERATOR_NS, &[]).await;
    let op = Operator::start(&cluster, &token, "op-r", OPERATOR_NS);
    let admin = cluster.admin.clone();
    // Nothing listens here: retention fails fast and is retried; status is still written.
    let clickhouse = format!("http://127.0.0.1:{}", free_port());

    let policies: Api<SamplingPolicy> = Api::namespaced(admin.clone(), NS);
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    apply(
        &policies,
        json!({
            "apiVersion": "datatracing.io/v1alpha1", "kind": "SamplingPolicy",
            "metadata": {"name": "errors", "labels": {"datatracing.io/pipeline": "orders"}},
            "spec": {"rules": [{"name": "errors", "when": {"status": ["ERROR"]},
                                "action": {"decision": "keep", "keep_linked": true}}]}
        }),
    )
    .await;
    apply(&pipelines, pipeline(3, &clickhouse, "1")).await;

    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    let svc = wait_for("the peers Service", WAIT, || async {
        services.get(PEERS).await.ok()
    })
    .await;
    assert_eq!(
        svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None"),
        "headless"
    );
    let role = Api::<Role>::namespaced(admin.clone(), NS)
        .get(PEERS)
        .await
        .unwrap();
    assert_eq!(
        role.rules.unwrap()[0].resources.as_deref(),
        Some(&["endpointslices".to_string()][..])
    );
    let binding = Api::<RoleBinding>::namespaced(admin.clone(), NS)
        .get(PEERS)
        .await
        .unwrap();
    assert_eq!(binding.subjects.unwrap()[0].name, "orders-datatracing");
    wait_for("ring size 0 (no pod is ready here)", WAIT, || async {
        ring_size(&pipelines).await.filter(|s| *s == Some(0))
    })
    .await;

    // Endpoints appear (a kubelet would publish them): two ready, one not.
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), NS);
    apply(
        &slices,
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "orders-collector-peers-x",
                         "labels": {"kubernetes.io/service-name": PEERS}},
            "addressType": "IPv4",
            "ports": [{"name": "otlp-grpc", "port": 4317, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}}
            ]
        }),
    )
    .await;
    apply(&pipelines, pipeline(3, &clickhouse, "2")).await;
    wait_for("ring size 2", WAIT, || async {
        ring_size(&pipelines).await.filter(|s| *s == Some(2))
    })
    .await;

    // One replica: nothing to route, the peers objects go and status says nothing.
    apply(&pipelines, pipeline(1, &clickhouse, "3")).await;
    wait_for("the peers Service removed", WAIT, || async {
        services.get(PEERS).await.is_err().then_some(())
    })
    .await;
    // The operator removes the Service, the RoleBinding and the Role one after the other:
    // the Role may outlive the Service by a request.
    let roles = Api::<Role>::namespaced(admin.clone(), NS);
    wait_for("the peers Role removed", WAIT, || async {
        roles.get(PEERS).await.is_err().then_some(())
    })
    .await;
    wait_for("no ring size", WAIT, || async {
        ring_size(&pipelines).await.filter(Option::is_none)
    })
    .await;

    op.stop().await.unwrap();
}
