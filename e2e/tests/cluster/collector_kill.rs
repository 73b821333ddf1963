//! Scenario 4, the collector half: collectors with the durable queue on, under a bounded
//! load, lose no acknowledged span when one crashes (its container SIGKILLed while the
//! store is slow, so its log holds acknowledged spans not yet stored: the kubelet restarts
//! it in the same pod and it replays the log) or when one is deleted (the Deployment
//! replaces it; the stopping pod writes its log to the store before it exits). The store
//! is slowed through the shared test ClickHouse, so it runs alone (`Cluster::exclusive`).

use std::time::{Duration, Instant};

use datatracing_e2e::cluster::Cluster;

use crate::support::{self, Load, eventually};

const NS: &str = "e2e-collector-kill";
const DATABASE: &str = "e2e_collector_kill";
const COLLECTORS: &str = "app.kubernetes.io/instance=kill,app.kubernetes.io/component=collector";

/// A collector pod's `datatracing_collector_durable_queue_bytes`.
async fn log_bytes(pod_ip: &str) -> Option<u64> {
    let text = reqwest::Client::new()
        .get(format!("http://{pod_ip}:4318/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("datatracing_collector_durable_queue_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Waits until a collector pod (not `except`) reports acknowledged spans in its log on
/// two reads in a row (the gauge also counts an append the drain is about to take); returns
/// its name and the bytes.
async fn backlog_on(
    cluster: &Cluster,
    client: &kube::Client,
    ns: &str,
    except: Option<&str>,
) -> (String, u64) {
    eventually(
        Duration::from_secs(60),
        "a collector's durable queue to hold acknowledged spans (store slowed)",
        || cluster.describe(ns),
        || async {
            for (name, ip) in collectors(client, ns).await {
                if Some(name.as_str()) == except {
                    continue;
                }
                let first = log_bytes(&ip).await.unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(500)).await;
                let second = log_bytes(&ip).await.unwrap_or(0);
                if first > 0 && second > 0 {
                    return Some((name, second));
                }
            }
            None
        },
    )
    .await
}

/// Each collector pod: (name, IP).
async fn collectors(client: &kube::Client, ns: &str) -> Vec<(String, String)> {
    use k8s_openapi::api::core::v1::Pod;
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
    let list = api
        .list(&kube::api::ListParams::default().labels(COLLECTORS))
        .await
        .expect("list pods");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name?, p.status?.pod_ip?)))
        .collect()
}

#[test]
fn collectors_with_the_durable_queue_lose_no_acknowledged_span_when_killed() {
    let cluster = Cluster::shared();
    let _alone = cluster.exclusive();
    cluster.block_on(async {
        let started = Instant::now();
        let (ns, client, collector) =
            support::durable_pipeline(cluster, NS, "kill", DATABASE).await;
        let wait = Duration::from_secs(180);
        let load = Load::start(
            &format!("http://{collector}:4318/api/v1/spans"),
            4,
            2,
            20,
            20_000,
        );
        load.wait_acked(cluster, &ns, 20, "before any failure").await;

        // 1. A crash with acknowledged spans not yet stored: the store slows down (fault
        // injection: each query to the shared test ClickHouse waits 1 s, behind its one
        // connection), the collectors keep acknowledging into their logs.
        cluster.clickhouse().set_delay(1000);
        let (victim, backlog) = backlog_on(cluster, &client, &ns, None).await;
        let uid = support::pods(&client, &ns, COLLECTORS).await[&victim].0.clone();
        let (container, restarts) = support::container_of(&client, &ns, &victim).await;
        let crashed = Instant::now();
        cluster.kill_container(&container);
        cluster.clickhouse().set_delay(0);
        eventually(
            Duration::from_secs(120),
            &format!("collector {victim} restarted in the same pod"),
            || cluster.describe(&ns),
            || async {
                let pods = support::pods(&client, &ns, COLLECTORS).await;
                let (now_uid, now_restarts) = pods.get(&victim)?;
                (now_uid == &uid && *now_restarts > restarts).then_some(())
            },
        )
        .await;
        support::wait_available(cluster, &client, &ns, "kill-collector", 2, wait).await;
        let recovered = crashed.elapsed();
        let log = support::pod_log(cluster, &ns, &victim, false);
        assert!(
            log.contains("durable queue holds acknowledged spans from a previous run; replaying"),
            "the restarted collector replays its log:\n{log}"
        );
        load.wait_acked(cluster, &ns, 20, "after the crash").await;

        // 2. A pod deleted under load (a rollout, a drain, an eviction through the API)
        // while its log holds acknowledged spans: it stops gracefully, writes its log to the
        // store (which recovers once the pod has its SIGTERM), and the Deployment replaces
        // it.
        cluster.clickhouse().set_delay(1000);
        let (other, other_backlog) = backlog_on(cluster, &client, &ns, Some(&victim)).await;
        let deleted = Instant::now();
        cluster.kubectl_ok(&["delete", "pod", &other, "-n", &ns, "--wait=false"]);
        eventually(
            Duration::from_secs(60),
            &format!("{other} to get its SIGTERM (after the preStop delay)"),
            || support::pod_log(cluster, &ns, &other, false),
            || async {
                support::pod_log(cluster, &ns, &other, false)
                    .contains("shutting down")
                    .then_some(())
            },
        )
        .await;
        cluster.clickhouse().set_delay(0);
        eventually(
            wait,
            &format!("a new collector pod in place of {other}"),
            || cluster.describe(&ns),
            || async {
                let pods = support::pods(&client, &ns, COLLECTORS).await;
                (pods.len() == 2 && !pods.contains_key(&other)).then_some(())
            },
        )
        .await;
        support::wait_available(cluster, &client, &ns, "kill-collector", 2, wait).await;
        let replaced = deleted.elapsed();
        load.wait_acked(cluster, &ns, 20, "after the replacement").await;

        let sent = load.stop().await;
        assert!(sent.acked.len() >= 60, "{sent:?}");
        let stored = support::wait_all_stored(cluster, &ns, DATABASE, &sent).await;
        support::delete_namespace(cluster, &ns);
        eprintln!(
            "scenario 4 (collectors): {} requests acknowledged ({} spans), {} refused, {} unanswered; \
             all acknowledged stored ({stored} traces stored in all); {victim} killed with {backlog} bytes \
             in its log, back in the same pod after {:.1}s; {other} deleted with {other_backlog} bytes in \
             its log and replaced after {:.1}s; done in {:.1}s",
            sent.acked.len(),
            sent.acked.values().sum::<u64>(),
            sent.refused,
            sent.failed,
            recovered.as_secs_f64(),
            replaced.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    });
}
