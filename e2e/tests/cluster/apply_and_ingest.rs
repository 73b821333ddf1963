//! Scenario 1, apply and ingest: `kubectl apply -k` of config/samples (through an overlay
//! that points storage at the test ClickHouse) brings up the collector and query
//! Deployments; the Python OpenTelemetry SDK sends a fan-in pipeline trace and a downstream
//! trace linked to it to the collector Service; both are read back through the query
//! Service with the right DAG, and the TracingPipeline is Ready.

use std::time::{Duration, Instant};

use datatracing_e2e::cluster::Cluster;
use serde_json::{Value, json};

use crate::support::{self, eventually};

const NS: &str = "e2e-apply";

#[test]
fn apply_samples_and_ingest_a_pipeline_trace() {
    let cluster = Cluster::shared();
    let _shared = cluster.shared_lock();
    cluster.block_on(async {
        let started = Instant::now();
        let ns = cluster.namespace(NS).await;
        let client = cluster.client().await;
        support::clickhouse_secret(cluster, &ns);
        let overlay = support::samples_overlay(cluster, &ns, "e2e_apply");
        cluster.kubectl_ok(&["apply", "-k", overlay.path().to_str().unwrap()]);

        let minutes = Duration::from_secs(180);
        support::wait_available(cluster, &client, &ns, "orders-collector", 3, minutes).await;
        support::wait_available(cluster, &client, &ns, "orders-query", 2, minutes).await;
        support::wait_condition(cluster, &client, &ns, "orders", "Ready", minutes).await;
        eprintln!(
            "scenario 1: applied to Ready in {:.1}s",
            started.elapsed().as_secs_f64()
        );

        let collector = support::service_ip(&client, &ns, "orders-collector").await;
        let query = support::service_ip(&client, &ns, "orders-query").await;
        let endpoint = format!("http://{collector}:4318/v1/traces");
        // kube-proxy programs a new Service's rules a moment after its pods are ready:
        // retry the export until the SDK reports success.
        let sent = eventually(
            Duration::from_secs(60),
            "the Python SDK's export to the collector Service to succeed",
            || cluster.describe(&ns),
            || {
                let endpoint = endpoint.clone();
                async move {
                    let v = tokio::task::spawn_blocking(move || {
                        datatracing_e2e::python_otel_send_args(
                            "http",
                            &endpoint,
                            &["--downstream"],
                            &[],
                        )
                    })
                    .await
                    .unwrap();
                    (v["ok"] == true).then_some(v)
                }
            },
        )
        .await;
        let sent_at = Instant::now();

        // Tail sampling keeps both traces (they fail, and the keep-failures policy keeps
        // failed runs); the collector writes them once their decision wait is over.
        let trace = sent["trace_id"].as_str().unwrap();
        let url = format!("http://{query}:16686/api/v1/traces/{trace}");
        let dag: Value = eventually(
            Duration::from_secs(90),
            &format!("trace {trace} with its 3 spans from the query Service"),
            || cluster.describe(&ns),
            || async {
                let v = support::get_json(&url).await?;
                (v["spans"].as_array()?.len() == 3).then_some(v)
            },
        )
        .await;
        eprintln!(
            "scenario 1: export to readable through the query Service in {:.1}s",
            sent_at.elapsed().as_secs_f64()
        );
        let spans = dag["spans"].as_array().unwrap();
        assert!(spans.iter().all(|s| s["service"] == "py-etl-http"), "{dag}");
        let join = spans.iter().find(|s| s["span_id"] == sent["join"]).unwrap();
        assert_eq!(join["kind"], "JOIN", "{dag}");
        assert_eq!(join["status"]["code"], "ERROR", "{dag}");
        let mut fan_in: Vec<&Value> = dag["edges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "DATA_DEPENDENCY" && e["to"] == sent["join"])
            .map(|e| &e["from"])
            .collect();
        fan_in.sort_by_key(|v| v.to_string());
        let mut inputs = vec![&sent["root"], &sent["side"]];
        inputs.sort_by_key(|v| v.to_string());
        assert_eq!(fan_in, inputs, "the join's two inputs: {dag}");
        assert_eq!(dag["roots"], json!([sent["root"]]), "{dag}");

        let downstream = sent["downstream_trace"].as_str().unwrap();
        let url = format!("http://{query}:16686/api/v1/traces/{downstream}");
        let dag: Value = eventually(
            Duration::from_secs(60),
            &format!("downstream trace {downstream} from the query Service"),
            || cluster.describe(&ns),
            || async {
                support::get_json(&url)
                    .await
                    .filter(|v| v["spans"].is_array())
            },
        )
        .await;
        assert_eq!(
            dag["cross_trace_links"],
            json!([{
                "span_id": sent["downstream"],
                "target_trace_id": trace,
                "target_span_id": sent["join"],
                "type": "FOLLOWS_FROM",
            }]),
            "{dag}"
        );

        // Ready, and every child it reports on is there.
        let p = support::wait_condition(cluster, &client, &ns, "orders", "Ready", minutes).await;
        let status = p.status.unwrap();
        assert_eq!(status.collector_replicas, Some(3));
        assert_eq!(
            status.sampling_policies,
            vec!["keep-failures".to_string(), "baseline".to_string()]
        );
        eprintln!(
            "scenario 1: done in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        support::delete_namespace(cluster, &ns);
    });
}
