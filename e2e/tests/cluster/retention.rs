//! Scenario 3, retention: changing a running pipeline's `retentionDays` changes the TTL of
//! its ClickHouse tables, the status reports the new retention, and no pod restarts (the
//! operator applies retention itself; it is not in the pods' restart hash).

use std::time::{Duration, Instant};

use datatracing_e2e::cluster::{CLICKHOUSE_PASSWORD, CLICKHOUSE_USER, Cluster};

use crate::support::{self, eventually};

const NS: &str = "e2e-retention";
const DATABASE: &str = "e2e_retention";
const PODS: &str = "app.kubernetes.io/instance=orders";

/// The `spans` table's engine clause (its TTL included), read from the test ClickHouse.
async fn spans_engine(cluster: &Cluster) -> Option<String> {
    let sql = format!(
        "SELECT engine_full FROM system.tables WHERE database = '{DATABASE}' AND name = 'spans' FORMAT TSVRaw"
    );
    let resp = reqwest::Client::new()
        .post(cluster.clickhouse().url())
        .header("X-ClickHouse-User", CLICKHOUSE_USER)
        .header("X-ClickHouse-Key", CLICKHOUSE_PASSWORD)
        .body(sql)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let text = resp.error_for_status().ok()?.text().await.ok()?;
    (!text.trim().is_empty()).then(|| text.trim().to_string())
}

#[test]
fn a_retention_change_reaches_clickhouse_without_restarting_pods() {
    let cluster = Cluster::shared();
    let _shared = cluster.shared_lock();
    cluster.block_on(async {
        let ns = cluster.namespace(NS).await;
        let client = cluster.client().await;
        support::clickhouse_secret(cluster, &ns);
        let overlay = support::samples_overlay(cluster, &ns, DATABASE);
        cluster.kubectl_ok(&["apply", "-k", overlay.path().to_str().unwrap()]);
        let wait = Duration::from_secs(180);
        support::wait_available(cluster, &client, &ns, "orders-collector", 3, wait).await;
        support::wait_available(cluster, &client, &ns, "orders-query", 2, wait).await;
        let p = support::wait_condition(cluster, &client, &ns, "orders", "Ready", wait).await;
        assert_eq!(p.status.unwrap().retention_days, Some(30));
        let engine = spans_engine(cluster).await.expect("the spans table");
        assert!(engine.contains("toIntervalDay(30)"), "{engine}");
        let pods_before = support::pods(&client, &ns, PODS).await;
        assert_eq!(pods_before.len(), 5, "{pods_before:?}");

        let changed = Instant::now();
        cluster.kubectl_ok(&[
            "patch",
            "tracingpipeline",
            "orders",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"storage":{"retentionDays":7}}}"#,
        ]);
        let p = support::wait_condition(cluster, &client, &ns, "orders", "RetentionApplied", wait)
            .await;
        assert_eq!(p.status.as_ref().unwrap().retention_days, Some(7));
        let engine = eventually(
            Duration::from_secs(30),
            "the spans table's TTL at 7 days",
            || cluster.describe(&ns),
            || async {
                spans_engine(cluster)
                    .await
                    .filter(|e| e.contains("toIntervalDay(7)"))
            },
        )
        .await;
        assert!(!engine.contains("toIntervalDay(30)"), "{engine}");
        eprintln!(
            "scenario 3: retentionDays 30 -> 7 applied to ClickHouse and reported in {:.1}s",
            changed.elapsed().as_secs_f64()
        );
        support::wait_condition(cluster, &client, &ns, "orders", "Ready", wait).await;
        assert_eq!(
            support::pods(&client, &ns, PODS).await,
            pods_before,
            "a retention change restarts or replaces no pod (names, UIDs, restart counts)"
        );
        support::delete_namespace(cluster, &ns);
    });
}
