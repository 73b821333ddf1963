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
    samples_overlay_with(cluster, ns, database, "")
}

/// [`samples_overlay`] with `extra` appended to its `patches:` list (YAML items indented
/// by two spaces).
pub fn samples_overlay_with(
    cluster: &Cluster,
    ns: &str,
    database: &str,
    extra: &str,
) -> tempfile::TempDir {
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
{extra}"#,
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

/// A `TracingPipeline` named `name` in a new namespace `ns` (2 collectors with a 64 MiB
/// durable queue, 1 query, ClickHouse database `database`), waited for until its collectors
/// are Available and it is Ready. Returns the namespace, a client and the collector
/// Service's address: what the scenarios that load a durable pipeline start from.
pub async fn durable_pipeline(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    database: &str,
) -> (String, kube::Client, String) {
    let ns = cluster.namespace(ns).await;
    let client = cluster.client().await;
    clickhouse_secret(cluster, &ns);
    cluster.apply(&format!(
        r#"apiVersion: datatracing.io/v1alpha1
kind: TracingPipeline
metadata:
  name: {name}
  namespace: {ns}
spec:
  collector:
    replicas: 2
    resources: {{requests: {{cpu: 50m, memory: 128Mi}}}}
    durableQueue:
      maxBytes: 67108864
  query:
    replicas: 1
    resources: {{requests: {{cpu: 20m, memory: 64Mi}}}}
  storage:
    url: {url}
    database: {database}
    user: {user}
    passwordSecretRef: {{name: clickhouse-credentials, key: password}}
"#,
        url = cluster.clickhouse_url(),
        user = datatracing_e2e::cluster::CLICKHOUSE_USER,
    ));
    let wait = Duration::from_secs(180);
    let collectors = format!("{name}-collector");
    wait_available(cluster, &client, &ns, &collectors, 2, wait).await;
    wait_condition(cluster, &client, &ns, name, "Ready", wait).await;
    let collector = service_ip(&client, &ns, &collectors).await;
    (ns, client, collector)
}

/// What a [`Load`] sent: every request the collector acknowledged, by trace, and those it
/// did not.
#[derive(Debug, Default)]
pub struct Sent {
    /// Trace id (hex) -> spans of the acknowledged request that carried the trace (one
    /// request per trace).
    pub acked: BTreeMap<String, u64>,
    /// Requests answered with another status (the client would retry them).
    pub refused: u64,
    /// Requests without an answer (connection refused or reset, timeout).
    pub failed: u64,
}

/// Bounded load on a collector: `workers` loops each POST native JSON requests of
/// `spans` spans (one new trace per request), one every 50 ms at most, until stopped, for
/// at most `max_requests` each and 15 minutes. Only test traffic inside the cluster's
/// network.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<Sent>>,
}

impl Load {
    pub fn start(url: &str, label: u32, workers: u32, spans: u32, max_requests: u32) -> Load {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let handles = (0..workers)
            .map(|w| {
                let (stop, acked, url) = (stop.clone(), acked.clone(), url.to_string());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .expect("http client");
                    let mut sent = Sent::default();
                    let deadline = Instant::now() + Duration::from_secs(15 * 60);
                    for i in 0..max_requests {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let trace = format!("{label:08x}{w:08x}{i:016x}");
                        let now = datatracing_core::Timestamp::now().unix_nanos();
                        let batch: Vec<Value> = (0..spans)
                            .map(|s| {
                                serde_json::json!({
                                    "trace_id": trace,
                                    "span_id": format!("{:08x}{s:08x}", i + 1),
                                    "service": "e2e-load",
                                    "operation": format!("step-{}", s % 4),
                                    "kind": "TRANSFORM",
                                    "start_time": datatracing_core::Timestamp::from_unix_nanos(now - 2_000_000),
                                    "end_time": datatracing_core::Timestamp::from_unix_nanos(now - 1_000_000),
                                    "status": "OK",
                                    "attributes": {"records": i},
                                })
                            })
                            .collect();
                        let resp = client
                            .post(&url)
                            .json(&serde_json::json!({ "spans": batch }))
                            .send()
                            .await;
                        match resp {
                            Ok(r) if r.status().is_success() => {
                                sent.acked.insert(trace, u64::from(spans));
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => sent.refused += 1,
                            Err(_) => sent.failed += 1,
                        }
                        // A pace, not a synchronisation: the load stays modest on a
                        // two-core node shared with the other scenarios.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    sent
                })
            })
            .collect();
        Load {
            stop,
            acked,
            workers: handles,
        }
    }

    /// Requests acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `more` requests beyond those acknowledged now are acknowledged (the
    /// collectors answer again after a disruption).
    pub async fn wait_acked(&self, cluster: &Cluster, ns: &str, more: u64, what: &str) {
        let from = self.acked();
        eventually(
            Duration::from_secs(90),
            &format!("{more} more acknowledged requests {what}"),
            || cluster.describe(ns),
            || async { (self.acked() >= from + more).then_some(()) },
        )
        .await
    }

    /// Stops every worker and returns what was sent.
    pub async fn stop(self) -> Sent {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Sent::default();
        for w in self.workers {
            let s = w.await.expect("load worker");
            all.acked.extend(s.acked);
            all.refused += s.refused;
            all.failed += s.failed;
        }
        all
    }
}

/// SQL `query` on the test ClickHouse, answered as TSV rows; `None` when it fails.
pub async fn clickhouse_rows(cluster: &Cluster, query: &str) -> Option<Vec<Vec<String>>> {
    let resp = reqwest::Client::new()
        .post(cluster.clickhouse().url())
        .header(
            "X-ClickHouse-User",
            datatracing_e2e::cluster::CLICKHOUSE_USER,
        )
        .header(
            "X-ClickHouse-Key",
            datatracing_e2e::cluster::CLICKHOUSE_PASSWORD,
        )
        .body(format!("{query} FORMAT TSV"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .ok()?;
    let text = resp.error_for_status().ok()?.text().await.ok()?;
    Some(
        text.lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect(),
    )
}

/// Waits until every acknowledged trace of `sent` is in `database`'s spans table with all
/// its spans; fails naming the missing ones. Returns how many traces were stored in all
/// (acknowledged or not: an answer lost in a crash may hide a stored request).
pub async fn wait_all_stored(cluster: &Cluster, ns: &str, database: &str, sent: &Sent) -> usize {
    let query = format!(
        "SELECT lower(hex(trace_id)), uniqExact(span_id) FROM {database}.spans \
         WHERE service = 'e2e-load' GROUP BY trace_id"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let missing: Vec<String> = loop {
        let stored: BTreeMap<String, u64> = clickhouse_rows(cluster, &query)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| Some((r.first()?.clone(), r.get(1)?.parse().ok()?)))
            .collect();
        let missing: Vec<String> = sent
            .acked
            .iter()
            .filter(|(t, n)| stored.get(t.as_str()).is_none_or(|have| have < n))
            .map(|(t, n)| {
                let have = stored.get(t.as_str()).copied().unwrap_or(0);
                format!("{t} ({have} of {n} spans)")
            })
            .collect();
        if missing.is_empty() {
            return stored.len();
        }
        if Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    panic!(
        "{} of {} acknowledged traces not stored whole after 120s, e.g. {:?}\n{}",
        missing.len(),
        sent.acked.len(),
        &missing[..missing.len().min(10)],
        cluster.describe(ns)
    );
}

/// The (container id, restart count) of pod `name`'s first container.
pub async fn container_of(client: &kube::Client, ns: &str, name: &str) -> (String, i32) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = api.get(name).await.expect("get the pod");
    let status = &pod
        .status
        .expect("pod status")
        .container_statuses
        .expect("container statuses")[0];
    (
        status.container_id.clone().expect("a running container"),
        status.restart_count,
    )
}

/// Waits until every pod of Deployment `name` runs `image`, the Deployment is Available
/// with `replicas` pods and no pod of an older template is left.
pub async fn wait_rolled(
    cluster: &Cluster,
    client: &kube::Client,
    ns: &str,
    selector: &str,
    image: &str,
    replicas: usize,
    timeout: Duration,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(
        timeout,
        &format!("the pods {selector} in {ns} all ready on {image}"),
        || cluster.describe(ns),
        || async {
            let list = api
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?;
            let ready = |p: &Pod| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            };
            let on_image = |p: &Pod| {
                p.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .all(|c| c.image.as_deref() == Some(image))
                })
            };
            (list.items.len() == replicas
                && list
                    .items
                    .iter()
                    .all(|p| p.metadata.deletion_timestamp.is_none() && ready(p) && on_image(p)))
            .then_some(())
        },
    )
    .await
}

/// Pod `name`'s container log (its current container, or the previous one's with
/// `previous`); empty when it cannot be read.
pub fn pod_log(cluster: &Cluster, ns: &str, name: &str, previous: bool) -> String {
    let mut args = vec!["logs", "-n", ns, name];
    if previous {
        args.push("--previous");
    }
    cluster
        .kubectl()
        .args(&args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Deletes a scenario's namespace without waiting, so the pods it ran leave the two-core
/// node to the scenarios after it.
pub fn delete_namespace(cluster: &Cluster, ns: &str) {
    cluster.kubectl_ok(&["delete", "namespace", ns, "--wait=false"]);
}
