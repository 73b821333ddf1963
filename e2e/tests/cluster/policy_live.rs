//! Scenario 2, a GitOps policy change, live: an edited SamplingPolicy is applied; the test
//! measures the time from that API write until every running collector reports the new
//! policy's hash at `/admin/sampling`, and checks that no collector pod restarted or was
//! replaced. Then an invalid policy is refused (reported on the policy and the pipeline) and
//! the collectors keep the last good one.
//!
//! What governs the latency: the kubelet refreshes a mounted ConfigMap on its pod sync
//! (`syncFrequency`, 1m by default, plus its ConfigMap cache), then the collector re-reads
//! the file within `sampling.reload_interval` (5s). The test node runs with
//! `DATATRACING_E2E_KUBELET_SYNC` (default 5s); the measured figures for both settings are in
//! e2e/README.md and runbooks/operator.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datatracing_e2e::cluster::Cluster;
use datatracing_operator::crd::{SamplingPolicy, TracingPipeline};
use kube::Api;

use crate::support::{self, eventually};

const NS: &str = "e2e-policy";
const COLLECTORS: &str = "app.kubernetes.io/instance=orders,app.kubernetes.io/component=collector";

/// Each collector pod's active sampling hash (`GET /admin/sampling` on the pod's address).
async fn collector_hashes(client: &kube::Client) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for ip in support::pod_ips(client, NS, COLLECTORS).await {
        let v = support::get_json(&format!("http://{ip}:4318/admin/sampling")).await;
        let hash = v.and_then(|v| v["status"]["active_hash"].as_str().map(str::to_string));
        out.insert(ip, hash);
    }
    out
}

fn all_equal(hashes: &BTreeMap<String, Option<String>>, want: &str, count: usize) -> bool {
    hashes.len() == count && hashes.values().all(|h| h.as_deref() == Some(want))
}

/// The baseline sample with `rate` as its sample rate and `regex` (if any) as an extra
/// rule's operation pattern.
fn baseline(rate: u32, regex: Option<&str>) -> String {
    let extra = regex
        .map(|r| {
            format!(
                "    - name: odd-operations\n      when:\n        operation:\n          regex: \"{r}\"\n      action:\n        decision: keep\n"
            )
        })
        .unwrap_or_default();
    format!(
        r#"apiVersion: datatracing.io/v1alpha1
kind: SamplingPolicy
metadata:
  name: baseline
  namespace: {NS}
  labels:
    datatracing.io/pipeline: orders
spec:
  priority: 0
  rules:
{extra}    - name: drop-health-checks
      when:
        operation:
          prefix: health
      action:
        decision: drop
    - name: sample-rest
      when:
        root_present: true
      action:
        decision: keep
        sample_rate: {rate}
        rate_limit:
          per_second: 200
"#
    )
}

#[test]
fn a_policy_edit_reaches_every_running_collector_without_a_restart() {
    let cluster = Cluster::shared();
    let _shared = cluster.shared_lock();
    cluster.block_on(async {
        let ns = cluster.namespace(NS).await;
        let client = cluster.client().await;
        support::clickhouse_secret(cluster, &ns);
        let overlay = support::samples_overlay(cluster, &ns, "e2e_policy");
        cluster.kubectl_ok(&["apply", "-k", overlay.path().to_str().unwrap()]);
        let wait = Duration::from_secs(180);
        support::wait_available(cluster, &client, &ns, "orders-collector", 3, wait).await;
        let p = support::wait_condition(cluster, &client, &ns, "orders", "Ready", wait).await;
        let before = p.status.unwrap().sampling_hash.expect("a sampling hash");
        eventually(
            Duration::from_secs(60),
            "every collector on the applied policy",
            || cluster.describe(&ns),
            || async { all_equal(&collector_hashes(&client).await, &before, 3).then_some(()) },
        )
        .await;
        let pods_before = support::pods(&client, &ns, COLLECTORS).await;
        assert_eq!(pods_before.len(), 3, "{pods_before:?}");

        // Edits, as GitOps applies them: the changed manifest. Three of them, as the
        // latency depends on where in the kubelet's sync period the write lands.
        let mut current = before.clone();
        let mut latencies = Vec::new();
        for rate in [10, 5, 4] {
            let written = Instant::now();
            cluster.apply(&baseline(rate, None));
            let previous = current.clone();
            current = eventually(
                Duration::from_secs(300),
                &format!("every collector on the policy with sample rate {rate}"),
                || cluster.describe(&ns),
                || async {
                    let hashes = collector_hashes(&client).await;
                    let first = hashes.values().next()?.clone()?;
                    (first != previous && all_equal(&hashes, &first, 3)).then_some(first)
                },
            )
            .await;
            latencies.push(written.elapsed());
        }
        let after = current;
        let latency = latencies.iter().max().copied().unwrap_or_default();
        eprintln!(
            "scenario 2: policy write -> every collector's /admin/sampling in {} (kubelet syncFrequency {})",
            latencies
                .iter()
                .map(|l| format!("{:.1}s", l.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", "),
            cluster.kubelet_sync()
        );
        let pipelines: Api<TracingPipeline> = Api::namespaced(client.clone(), &ns);
        eventually(
            Duration::from_secs(30),
            "status.samplingHash to name the collectors' policy",
            || cluster.describe(&ns),
            || async {
                let p = pipelines.get("orders").await.ok()?;
                (p.status?.sampling_hash? == after).then_some(())
            },
        )
        .await;
        assert_eq!(
            support::pods(&client, &ns, COLLECTORS).await,
            pods_before,
            "a sampling change restarts or replaces no collector (names, UIDs, restart counts)"
        );

        // An invalid policy (a pattern the API server cannot check) is refused by the
        // operator; the running collectors keep the last good one.
        cluster.apply(&baseline(10, Some("(unclosed")));
        let policies: Api<SamplingPolicy> = Api::namespaced(client.clone(), &ns);
        eventually(
            Duration::from_secs(60),
            "the invalid policy reported as not Accepted",
            || cluster.describe(&ns),
            || async {
                let st = policies.get("baseline").await.ok()?.status?;
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "False" && c.reason == "Invalid")
                    .then_some(())
            },
        )
        .await;
        let p = eventually(
            Duration::from_secs(60),
            "the pipeline to report the invalid policy",
            || cluster.describe(&ns),
            || async {
                let p = pipelines.get("orders").await.ok()?;
                let st = p.status.as_ref()?;
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "ConfigurationGenerated" && c.reason == "InvalidSamplingPolicy")
                    .then_some(p)
            },
        )
        .await;
        assert_eq!(p.status.unwrap().sampling_hash.as_deref(), Some(after.as_str()));
        // Nothing may change now: watch the collectors for longer than a change takes to
        // arrive (twice the slowest above, and at least a kubelet sync period and a half).
        let watch = (latency * 2).max(cluster.kubelet_sync_period() * 3 / 2 + Duration::from_secs(2));
        let until = Instant::now() + watch;
        while Instant::now() < until {
            let hashes = collector_hashes(&client).await;
            assert!(
                all_equal(&hashes, &after, 3),
                "a collector left the last good policy: {hashes:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(
            support::pods(&client, &ns, COLLECTORS).await,
            pods_before,
            "no restart after the invalid policy either"
        );
        support::delete_namespace(cluster, &ns);
    });
}
