//! A collector with the durable queue while ClickHouse is unreachable: it starts (it used to
//! exit after the connect timeout), is ready with `/readyz` saying why, acknowledges spans
//! into the queue, and writes them once a real ClickHouse engine (chdb-http) answers on the
//! configured address. Real clients on loopback (reqwest).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use datatracing_cli::{Command, run};
use datatracing_config::{Backend, Config};
use datatracing_core::ConfigDuration;
use datatracing_testkit::clickhouse::{ChdbOptions, ClickHouse, unique_database};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_starts_and_stays_ready_while_clickhouse_is_down() {
    let wal = tempfile::tempdir().unwrap();
    let (ch_port, ingest_port) = (free_port(), free_port());
    let database = unique_database("outage");
    let mut config = Config::default();
    config.storage.backend = Backend::Clickhouse;
    config.storage.clickhouse.url = format!("http://127.0.0.1:{ch_port}");
    config.storage.clickhouse.database = database.clone();
    config.storage.clickhouse.connect_timeout = ConfigDuration::from_secs(1);
    config.collector.listen = format!("127.0.0.1:{ingest_port}").parse().unwrap();
    config.collector.grpc_listen = None;
    config.collector.drain_timeout = ConfigDuration::from_secs(3);
    config.collector.durable_queue.enabled = true;
    config.collector.durable_queue.dir = wal.path().to_path_buf();
    config.collector.durable_queue.retry_backoff = ConfigDuration::from_millis(100);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(run(&Command::Collector, config, shutdown.clone()));

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{ingest_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready: Value = loop {
        assert!(
            !server.is_finished(),
            "the collector exited: {:?}",
            server.await
        );
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().as_u16() == 200
        {
            break r.json().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "never ready while ClickHouse was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        ready["details"]["store"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{ready}"
    );
    assert!(
        ready["details"]["durable_queue"]["pending_bytes"].is_number(),
        "{ready}"
    );

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let now = datatracing_core::Timestamp::now().unix_nanos();
    let at = |nanos: i64| {
        serde_json::to_value(datatracing_core::Timestamp::from_unix_nanos(nanos)).unwrap()
    };
    let spans: Vec<Value> = (1..=3)
        .map(|i| {
            json!({"trace_id": trace, "span_id": format!("{i:016x}"), "service": "etl",
                   "operation": "step", "start_time": at(now - 10_000_000_000),
                   "end_time": at(now - 9_000_000_000)})
        })
        .collect();
    let resp = client
        .post(format!("{base}/api/v1/spans"))
        .json(&json!({ "spans": spans }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        202,
        "{}",
        resp.text().await.unwrap()
    );

    // ClickHouse comes up on the configured address: the queued spans are written.
    let ch = tokio::task::spawn_blocking(move || {
        ClickHouse::start_chdb(ChdbOptions {
            port: ch_port,
            ..ChdbOptions::default()
        })
    })
    .await
    .unwrap();
    let query = format!("SELECT count() FROM {database}.spans FORMAT TabSeparated");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = client
            .post(ch.url())
            .body(query.clone())
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success());
        let n = match count {
            Some(r) => r.text().await.unwrap().trim().parse::<u64>().unwrap_or(0),
            None => 0,
        };
        if n == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of 3 spans written after ClickHouse came up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r: Value = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"status": "ready"}));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("shutdown within the drain timeout")
        .unwrap()
        .unwrap();
}

/// An INSERT the engine refuses (TOO_MANY_PARTS, forced with `parts_to_throw_insert = 1`
/// while merges are stopped) is an error the collector sees and retries: nothing
/// acknowledged is lost once inserts are accepted again. The test front (chdb-http) used to
/// answer such an INSERT with 200, so the spans were checkpointed out of the durable queue
/// and never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_the_engine_refuses_are_retried_and_nothing_is_lost() {
    let ch = tokio::task::spawn_blocking(|| ClickHouse::start_chdb(ChdbOptions::default()))
        .await
        .unwrap();
    let wal = tempfile::tempdir().unwrap();
    let ingest_port = free_port();
    let database = unique_database("refused");
    let mut config = Config::default();
    config.storage.backend = Backend::Clickhouse;
    config.storage.clickhouse.url = ch.url().to_string();
    config.storage.clickhouse.database = database.clone();
    config.storage.clickhouse.retry_backoff = ConfigDuration::from_millis(50);
    config.storage.clickhouse.max_retry_backoff = ConfigDuration::from_millis(200);
    config.collector.listen = format!("127.0.0.1:{ingest_port}").parse().unwrap();
    config.collector.grpc_listen = None;
    config.collector.drain_timeout = ConfigDuration::from_secs(3);
    config.collector.durable_queue.enabled = true;
    config.collector.durable_queue.dir = wal.path().to_path_buf();
    config.collector.durable_queue.retry_backoff = ConfigDuration::from_millis(100);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(run(&Command::Collector, config, shutdown.clone()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{ingest_port}");
    let sql = |q: String| {
        let client = client.clone();
        let url = ch.url().to_string();
        async move {
            let r = client.post(url).body(q.clone()).send().await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert!(status.is_success(), "{q}: {status} {text}");
            text
        }
    };
    let count = |what: &'static str| {
        let q = format!("SELECT {what} FROM {database}.spans FORMAT TabSeparated");
        async move { sql(q).await.trim().parse::<u64>().unwrap() }
    };
    // Connected and migrated: plain ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().as_u16() == 200
            && r.json::<Value>().await.unwrap() == json!({"status": "ready"})
        {
            break;
        }
        assert!(!server.is_finished(), "the collector exited");
        assert!(Instant::now() < deadline, "never connected to ClickHouse");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = datatracing_core::Timestamp::now().unix_nanos();
    let at =
        |n: i64| serde_json::to_value(datatracing_core::Timestamp::from_unix_nanos(n)).unwrap();
    let post = |trace: &'static str, ids: std::ops::RangeInclusive<u64>| {
        let spans: Vec<Value> = ids
            .map(|i| {
                json!({"trace_id": trace, "span_id": format!("{i:016x}"), "service": "etl",
                       "operation": "step", "start_time": at(now - 10_000_000_000),
                       "end_time": at(now - 9_000_000_000)})
            })
            .collect();
        let client = client.clone();
        let url = format!("{base}/api/v1/spans");
        async move {
            let r = client
                .post(url)
                .json(&json!({ "spans": spans }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202);
        }
    };
    let wait_count = |n: u64, why: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = count("uniqExact(trace_id, span_id)").await;
            if got == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{why}: {got} of {n} spans stored"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // One part in the table, then no further part may be added.
    post("0af7651916cd43dd8448eb211c80319c", 1..=1).await;
    wait_count(1, "warm-up").await;
    sql(format!("SYSTEM STOP MERGES {database}.spans")).await;
    sql(format!(
        "ALTER TABLE {database}.spans MODIFY SETTING parts_to_throw_insert = 1"
    ))
    .await;
    post("4bf92f3577b34da6a3ce929d0e0e4736", 1..=3).await;
    // The refusal reaches the collector as a failed write (it was a silent 200).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let errors = metrics
            .lines()
            .find_map(|l| l.strip_prefix("datatracing_collector_store_write_errors_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if errors >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed write seen:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count("uniqExact(trace_id, span_id)").await,
        1,
        "nothing stored while refused"
    );
    // Inserts are accepted again: the durable queue delivers everything it acknowledged.
    sql(format!(
        "ALTER TABLE {database}.spans MODIFY SETTING parts_to_throw_insert = 3000"
    ))
    .await;
    sql(format!("SYSTEM START MERGES {database}.spans")).await;
    wait_count(4, "after the refusal").await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("shutdown within the drain timeout")
        .unwrap()
        .unwrap();
}
