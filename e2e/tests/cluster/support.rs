//! What several scenarios do: wait for workloads and conditions, find Service addresses,
//! read pods' identities, write the samples' overlay.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use datatracing_e2e::cluster::Cluster;
use datatracing_operator::crd::TracingPipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

/// Polls `f` every 250 ms until it returns `Some`, failing with `what` and `context()`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(
    timeout: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?}: {what}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until Deployment `name` has `replicas` updated, available replicas (and no others).
pub async fn wait_available(
    cluster: &Cluster,
    client: &kube::Client,
    ns: &str,
    name: &str,
    replicas: i32,
    timeout: Duration,
) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually(
        timeout,
        &format!("Deployment {ns}/{name} Available with {replicas} replicas"),
        || cluster.describe(ns),
        || async {
            let d = api.get_opt(name).await.ok()??;
            let s = d.status?;
            let generation = d.metadata.generation?;
            (s.observed_generation == Some(generation)
                && s.available_replicas == Some(replicas)
                && s.updated_replicas == Some(replicas)
                && s.replicas == Some(replicas))
            .then_some(())
        },
    )
    .await
}

/// Waits until TracingPipeline `name` reports condition `kind` True for its current
/// generation; returns the object.
pub async fn wait_condition(
    cluster: &Cluster,
    client: &kube::Client,
    ns: &str,
    name: &str,
    kind: &str,
    timeout: Duration,
) -> TracingPipeline {
    let api: Api<TracingPipeline> = Api::namespaced(client.clone(), ns);
    eventually(
        timeout,
        &format!("TracingPipeline {ns}/{name} {kind}=True"),
        || cluster.describe(ns),
        || async {
            let p = api.get_opt(name).await.ok()??;
            let status = p.status.as_ref()?;
            let current = status.observed_generation == p.metadata.generation;
            let ok = status
                .conditions
                .iter()
                .any(|c| c.type_ == kind && c.status == "True");
            (current && ok).then_some(p)
        },
    )
    .await
}

/// Service `name`'s cluster IP.
pub async fn service_ip(client: &kube::Client, ns: &str, name: &str) -> String {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = api.get(name).await.expect("get the Service");
    svc.spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP Service")
}

/// GET `url` as JSON; `None` when it cannot be reached or does not answer 200.
pub async fn get_json(url: &str) -> Option<Value> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let resp = client.get(url).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// Every pod matching `selector`: name -> (UID, total container restarts).
pub async fn pods(
    client: &kube::Client,
    ns: &str,
    selector: &str,
) -> BTreeMap<String, (String, i32)> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods");
    list.items
        .into_iter()
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            (
                p.metadata.name.unwrap_or_default(),
                (p.metadata.uid.unwrap_or_default(), restarts),
            )
        })
        .collect()
}

/// Every running pod's IP matching `selector`.
pub async fn pod_ips(client: &kube::Client, ns: &str, selector: &str) -> Vec<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status?.pod_ip)
        .collect()
}

/// A kustomization over config/samples, as a user would write one: the scenario's
/// namespace, storage pointed at the test ClickHouse (database `database`), and requests a
/// one-node, two-core test cluster can hold next to the other scenarios (the samples ask
/// for 1.9 cores).
pub fn samples_overlay(cluster: &Cluster, ns: &str, database: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let samples = datatracing_e2e::workspace_root().join("config/samples");
    // Kustomize loads bases by a path relative to the kustomization.
    let relative = std::iter::repeat_n("..", dir.path().components().count() - 1)
        .collect::<Vec<_>>()
        .join("/");
    let kustomization = format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {ns}
resources:
  - {relative}{samples}
patches:
  - target:
      kind: TracingPipeline
      name: orders
    patch: |-
      - op: replace
        path: /spec/storage/url
        value: {url}
      - op: replace
        path: /spec/storage/database
        value: {database}
      - op: replace
        path: /spec/collector/resources
        value: {{requests: {{cpu: 50m, memory: 128Mi}}, limits: {{memory: 1Gi}}}}
      - op: replace
        path: /spec/query/resources
        value: {{requests: {{cpu: 20m, memory: 64Mi}}}}
"#,
        samples = samples.display(),
        url = cluster.clickhouse_url(),
    );
    std::fs::write(dir.path().join("kustomization.yaml"), kustomization).expect("write");
    dir
}

/// The Secret the samples' pipeline reads its ClickHouse password from.
pub fn clickhouse_secret(cluster: &Cluster, ns: &str) {
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: clickhouse-credentials\n  namespace: {ns}\nstringData:\n  password: {}\n",
        datatracing_e2e::cluster::CLICKHOUSE_PASSWORD
    ));
}
