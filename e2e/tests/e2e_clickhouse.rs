//! The real binary on ClickHouse (`storage.backend: clickhouse`): `datatracing migrate`, then
//! the all-in-one ingests a pipeline and serves its DAG and search from ClickHouse; a
//! standalone `datatracing query` reads without ever migrating.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datatracing_e2e::{Server, get_json};
use datatracing_testkit::clickhouse::{ClickHouse, unique_database};
use serde_json::{Value, json};

fn base(server: &ClickHouse, db: &str, subcommand: &str) -> Command {
    datatracing_e2e::clickhouse_command(subcommand, server, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_on_clickhouse() {
    let server = ClickHouse::shared();
    let db = unique_database("e2e");

    let out = base(server, &db, "migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("schema is up to date"));

    let running = Server::spawn(base(server, &db, "all-in-one"), true, true);
    let (ingest, query) = (running.ingest(), running.query());
    let client = reqwest::Client::new();
    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    // Recent times: ClickHouse's TTL may drop parts older than the retention at any merge.
    let now = datatracing_core::Timestamp::now();
    let start = now.saturating_add_nanos(-60_000_000_000).to_rfc3339();
    let end = now.saturating_add_nanos(-59_000_000_000).to_rfc3339();
    let span = |id: &str, parent: Option<&str>, service: &str, links: Value| {
        let mut s = json!({
            "trace_id": trace, "span_id": id, "service": service, "operation": "step",
            "kind": "TRANSFORM", "start_time": start, "end_time": end,
            "attributes": {"dataset": "orders"}, "links": links
        });
        if let Some(p) = parent {
            s["parent_id"] = json!(p);
        }
        s
    };
    let links = json!([
        {"trace_id": trace, "span_id": "000000000000000a", "type": "DATA_DEPENDENCY"},
        {"trace_id": trace, "span_id": "000000000000000b", "type": "DATA_DEPENDENCY"}
    ]);
    let body = json!({"spans": [
        span("000000000000000a", None, "ingest-a", json!([])),
        span("000000000000000b", None, "ingest-b", json!([])),
        span("000000000000000c", Some("000000000000000a"), "join", links),
    ]});
    let r = client
        .post(format!("http://{ingest}/api/v1/spans"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());

    let dag: Value = get_json(&client, &format!("http://{query}/api/v1/traces/{trace}")).await;
    assert_eq!(dag["spans"].as_array().unwrap().len(), 3, "{dag}");
    let dd = dag["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "DATA_DEPENDENCY")
        .count();
    assert_eq!(dd, 2);
    let found: Value = get_json(
        &client,
        &format!("http://{query}/api/v1/traces?service=join&attribute=dataset%3Dorders"),
    )
    .await;
    assert_eq!(found["traces"][0]["trace_id"], trace, "{found}");
    assert_eq!(found["traces"][0]["span_count"], 3);
    let metrics = datatracing_e2e::metrics(&client, ingest).await;
    assert!(
        metrics.contains("datatracing_clickhouse_inserted_spans_total 3"),
        "{metrics}"
    );
    let ready = client
        .get(format!("http://{query}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[test]
fn migrate_refuses_the_embedded_backend_and_unreachable_servers_fail_loudly() {
    let out = Command::new(datatracing_e2e::binary())
        .arg("migrate")
        .env_remove("DATATRACING_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.backend: clickhouse"));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "storage:\n  backend: clickhouse\n  clickhouse:\n    url: http://127.0.0.1:9\n    connect_timeout: 300ms\n",
    )
    .unwrap();
    let out = Command::new(datatracing_e2e::binary())
        .args(["migrate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connecting to ClickHouse at http://127.0.0.1:9"),
        "{err}"
    );
}

/// Whether `db` exists on the server, asked over its HTTP interface.
async fn database_exists(server: &ClickHouse, db: &str) -> bool {
    let mut url = reqwest::Url::parse(server.url()).unwrap();
    url.query_pairs_mut()
        .append_pair(
            "query",
            &format!("SELECT count() FROM system.databases WHERE name = '{db}'"),
        )
        .append_pair("user", server.user())
        .append_pair("password", server.password());
    let body = reqwest::Client::new()
        .get(url)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    body.trim() == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_query_never_migrates() {
    let server = ClickHouse::shared();
    let db = unique_database("e2e_query");

    // Nobody migrated: query exits with an error naming the fix, and creates nothing.
    let mut child = base(server, &db, "query")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("query started on a database without the schema (it must refuse)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("datatracing migrate"), "{err}");
    assert!(
        !database_exists(server, &db).await,
        "a query process created the database"
    );

    // Once migrated, query starts, serves, and is ready.
    let out = base(server, &db, "migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let running = Server::spawn(base(server, &db, "query"), false, true);
    let client = reqwest::Client::new();
    let found: Value = get_json(
        &client,
        &format!("http://{}/api/v1/traces?service=nobody", running.query()),
    )
    .await;
    assert_eq!(found["traces"], json!([]), "{found}");
    let ready = client
        .get(format!("http://{}/readyz", running.query()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let log = running.log.lock().unwrap().join("\n");
    assert!(log.contains("ClickHouse reader opened"), "{log}");
    assert!(!log.contains("applied ClickHouse migration"), "{log}");
}
