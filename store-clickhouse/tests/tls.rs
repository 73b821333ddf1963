//! TLS to ClickHouse: the real engine behind an HTTPS front (`tools/chdb-http` with a
//! certificate from the test CA). The client verifies the server against
//! `storage.clickhouse.ca_file`: with the right CA, migrations, writes and reads go through;
//! with another CA, or none for a private CA, opening fails at once with a TLS error that
//! says what to check, and is not retried.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use datatracing_core::{ConfigDuration, Timestamp};
use datatracing_store::{TraceReader, TraceWriter};
use datatracing_store_clickhouse::{ClickHouseConfig, ClickHouseMetrics, ClickHouseStore, Error};
use datatracing_store_contract::{fresh_trace_id, simple_span};
use datatracing_testkit::clickhouse::{ChdbOptions, ClickHouse, unique_database};
use datatracing_testkit::tls::Pki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_ca_file_works_and_another_ca_fails_clearly() {
    let pki = Pki::new("clickhouse");
    let other = Pki::new("other");
    let server = ClickHouse::start_chdb(ChdbOptions {
        tls: Some(pki.server("clickhouse", "clickhouse")),
        ..ChdbOptions::default()
    });
    assert!(server.url().starts_with("https://"), "{}", server.url());
    let config = ClickHouseConfig {
        url: server.url().to_string(),
        ca_file: Some(pki.ca.cert.clone()),
        database: unique_database("tls"),
        connect_timeout: ConfigDuration::from_secs(20),
        ..ClickHouseConfig::default()
    };
    config.validate().unwrap();

    let store = ClickHouseStore::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let trace = fresh_trace_id();
    let start = Timestamp::from_unix_nanos(Timestamp::now().unix_nanos() - 60_000_000_000);
    let span = simple_span(trace, 1, None, "tls-etl", start, 1_000_000);
    store.write(Arc::from(vec![span])).await.unwrap();
    let read = store.get_trace(trace).await.unwrap().unwrap();
    assert_eq!(read.len(), 1);
    store.close().await.unwrap();

    // Another CA, and the system trust store (which does not know the test CA): refused in
    // the handshake, at once rather than after connect_timeout.
    for ca_file in [Some(other.ca.cert.clone()), None] {
        let started = Instant::now();
        let err = ClickHouseStore::open(
            ClickHouseConfig {
                ca_file: ca_file.clone(),
                ..config.clone()
            },
            ClickHouseMetrics::unregistered(),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Tls(_)), "{ca_file:?}: {text}");
        assert!(
            !err.is_transient(),
            "a certificate that fails verification is not retried"
        );
        assert!(
            text.contains("invalid peer certificate") && text.contains("ca_file"),
            "{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    // A CA file that is not one: a configuration error naming the setting.
    let err = ClickHouseStore::open(
        ClickHouseConfig {
            ca_file: Some(pki.dir().join("clickhouse.key")),
            ..config
        },
        ClickHouseMetrics::unregistered(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("storage.clickhouse.ca_file"),
        "{err}"
    );
}
