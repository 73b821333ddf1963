//! ClickHouse specifics against the real engine: migrations, retention, deduplication on
//! retry, and faults (server down, restarted mid-batch, rejected insert, slow query, wrong
//! credentials). Fault tests use a dedicated chdb-backed server the harness can stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use datatracing_core::{Span, Timestamp};
use datatracing_store::{Health, TraceReader, TraceWriter};
use datatracing_store_clickhouse::{
    ClickHouseConfig, ClickHouseMetrics, ClickHouseReader, ClickHouseStore, Error,
};
use datatracing_store_contract::{StoreUnderTest, fresh_trace_id, page_ids, simple_span};
use datatracing_testkit::clickhouse::{ChdbOptions, ClickHouse, unique_database};
use prometheus_client::registry::Registry;

fn config_for(server: &ClickHouse) -> ClickHouseConfig {
    ClickHouseConfig {
        url: server.url().to_string(),
        user: server.user().to_string(),
        password: server.password().to_string(),
        database: unique_database("ch"),
        ..ClickHouseConfig::default()
    }
}

fn spans(n: u64, service: &str) -> Vec<Span> {
    let t = fresh_trace_id();
    (0..n)
        .map(|i| simple_span(t, i, (i > 0).then_some(0), service, Timestamp::now(), 1_000))
        .collect()
}

async fn count(store: &ClickHouseStore, sql: &str) -> u64 {
    let client = clickhouse_client(store);
    client.query(sql).fetch_one::<u64>().await.unwrap()
}

fn clickhouse_client(store: &ClickHouseStore) -> clickhouse::Client {
    let schema = store.admin().schema();
    let server = ClickHouse::shared();
    clickhouse::Client::default()
        .with_url(server.url())
        .with_user(server.user())
        .with_password(server.password())
        .with_database(&schema.database)
}

fn metrics_text(registry: &Registry) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_retention_round_trips() {
    let config = config_for(ClickHouse::shared());
    let db = config.database.clone();
    let store = ClickHouseStore::open(config, ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let admin = store.admin();
    let again = admin.migrate().await.unwrap();
    assert!(
        again.applied.is_empty(),
        "second migrate applies nothing: {again:?}"
    );
    assert_eq!(again.version, 9);

    let initial = admin.retention().await.unwrap();
    assert_eq!(initial.len(), 6);
    assert!(initial.iter().all(|t| t.days == Some(7)), "{initial:?}");

    let report = admin.set_retention(30).await.unwrap();
    assert_eq!(
        report.changed,
        vec![
            "spans".to_string(),
            "span_index".to_string(),
            "trace_bounds".to_string(),
            "span_names".to_string(),
            "span_links".to_string(),
            "trace_summaries".to_string()
        ]
    );
    assert!(report.unchanged.is_empty());
    let report = admin.set_retention(30).await.unwrap();
    assert!(report.changed.is_empty(), "idempotent: {report:?}");
    assert_eq!(report.unchanged.len(), 6);
    assert!(
        admin
            .retention()
            .await
            .unwrap()
            .iter()
            .all(|t| t.days == Some(30))
    );

    let client = clickhouse_client(&store);
    for table in [
        "spans",
        "span_index",
        "trace_bounds",
        "span_names",
        "span_links",
        "trace_summaries",
    ] {
        let ddl: String = client
            .query(&format!("SHOW CREATE TABLE {db}.{table}"))
            .fetch_one::<String>()
            .await
            .unwrap();
        assert!(ddl.contains("toIntervalDay(30)"), "{table}: {ddl}");
        assert!(ddl.contains("ttl_only_drop_parts = 1"), "{table}: {ddl}");
    }
    assert!(matches!(
        admin.set_retention(0).await,
        Err(Error::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_insert_does_not_duplicate_rows() {
    let config = config_for(ClickHouse::shared());
    let db = config.database.clone();
    let store = ClickHouseStore::open(config, ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let batch = spans(500, "dedup");
    // The same batch twice under one token, as a retry after a lost response would send it.
    store.insert_with_token(&batch, "token-a").await.unwrap();
    store.insert_with_token(&batch, "token-a").await.unwrap();
    assert_eq!(
        count(&store, &format!("SELECT count() FROM {db}.spans")).await,
        500
    );
    assert_eq!(
        count(&store, &format!("SELECT count() FROM {db}.trace_bounds")).await,
        0,
        "since migration 9 nothing feeds the bounds"
    );
    assert_eq!(
        count(&store, &format!("SELECT count() FROM {db}.trace_summaries")).await,
        1,
        "the materialized views are deduplicated too"
    );
    assert_eq!(
        count(&store, &format!("SELECT count() FROM {db}.span_index")).await,
        500
    );
    // Control: a different token is a different batch, so the check above can fail.
    store.insert_with_token(&batch, "token-b").await.unwrap();
    assert_eq!(
        count(&store, &format!("SELECT count() FROM {db}.spans")).await,
        1_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_at_startup_fails_clearly() {
    let config = ClickHouseConfig {
        url: "http://127.0.0.1:9".into(),
        connect_timeout: datatracing_core::ConfigDuration::from_millis(500),
        ..ClickHouseConfig::default()
    };
    let err = ClickHouseStore::open(config, ClickHouseMetrics::unregistered())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable(_)), "{err}");
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_clearly() {
    let server = ClickHouse::start_chdb(ChdbOptions {
        password: Some("s3cret".into()),
        ..ChdbOptions::default()
    });
    let mut config = config_for(&server);
    config.password = "wrong".into();
    let err = ClickHouseStore::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err}");
    assert!(!err.is_transient(), "bad credentials are not retried");
    config.password = "s3cret".into();
    ClickHouseStore::open(config, ClickHouseMetrics::unregistered())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_insert_is_an_error_and_a_metric() {
    let mut registry = Registry::default();
    let metrics = ClickHouseMetrics::register(&mut registry);
    let config = config_for(ClickHouse::shared());
    let db = config.database.clone();
    let store = ClickHouseStore::open(config, metrics).await.unwrap();
    // Someone changed a column's type: our rows no longer fit.
    clickhouse_client(&store)
        .query(&format!(
            "ALTER TABLE {db}.spans MODIFY COLUMN duration_ns String CODEC(ZSTD(1))"
        ))
        .execute()
        .await
        .unwrap();
    let err = store.write(spans(3, "rejected").into()).await.unwrap_err();
    assert!(
        matches!(err, datatracing_store::Error::Rejected(_)),
        "{err}"
    );
    assert!(
        err.to_string().contains("duration_ns"),
        "the error names the column: {err}"
    );
    let m = metrics_text(&registry);
    assert!(
        m.contains("datatracing_clickhouse_dropped_spans_total{reason=\"schema\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("datatracing_clickhouse_insert_errors_total{reason=\"schema\"} 1"),
        "not retried: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_query_times_out_with_an_error_and_a_metric() {
    let server = ClickHouse::start_chdb(ChdbOptions::default());
    let mut registry = Registry::default();
    let metrics = ClickHouseMetrics::register(&mut registry);
    // Migrated first with the default timeout: on a loaded machine one of the migration
    // statements can take longer than the short timeout this test is about.
    let base = config_for(&server);
    datatracing_store_clickhouse::ClickHouseAdmin::connect(&base)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let config = ClickHouseConfig {
        query_timeout: datatracing_core::ConfigDuration::from_millis(500),
        migrate_on_start: false,
        ..base
    };
    let store = ClickHouseStore::open(config, metrics).await.unwrap();
    server.set_delay(3_000);
    let err = store.get_trace(fresh_trace_id()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    let m = metrics_text(&registry);
    assert!(
        m.contains("datatracing_clickhouse_query_errors_total{reason=\"timeout\"} 1"),
        "{m}"
    );
    server.set_delay(0);
    // The slow query still occupies the engine for a moment; the store recovers by itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match store.get_trace(fresh_trace_id()).await {
            Ok(found) => {
                assert!(found.is_none());
                break;
            }
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "never recovered: {e}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_batch_loses_and_duplicates_nothing() {
    let server = Arc::new(ClickHouse::start_chdb(ChdbOptions::default()));
    let mut registry = Registry::default();
    let metrics = ClickHouseMetrics::register(&mut registry);
    let config = ClickHouseConfig {
        max_attempts: 40,
        retry_backoff: datatracing_core::ConfigDuration::from_millis(50),
        max_retry_backoff: datatracing_core::ConfigDuration::from_millis(500),
        ..config_for(&server)
    };
    let db = config.database.clone();
    let store = ClickHouseStore::open(config, metrics).await.unwrap();

    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut written = 0u64;
            for _ in 0..15 {
                store
                    .write(spans(200, &format!("restart-{w}")).into())
                    .await
                    .expect("acknowledged write");
                written += 200;
            }
            written
        }));
    }
    // Crash the server once some batches are in, then bring it back on the same data.
    let check = clickhouse::Client::default()
        .with_url(server.url())
        .with_database(&db);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while check
        .query("SELECT count() FROM spans")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
        < 1_000
    {
        assert!(tokio::time::Instant::now() < deadline, "no writes landed");
        tokio::task::yield_now().await;
    }
    server.kill();
    let restarter = {
        let server = Arc::clone(&server);
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(700));
            server.restart();
        })
    };
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }
    restarter.await.unwrap();
    let stored = check
        .query("SELECT count() FROM spans")
        .fetch_one::<u64>()
        .await
        .unwrap();
    let distinct = check
        .query("SELECT uniqExact(trace_id, span_id) FROM spans")
        .fetch_one::<u64>()
        .await
        .unwrap();
    assert_eq!(total, 12_000);
    assert_eq!(distinct, total, "every acknowledged span is stored");
    assert_eq!(stored, total, "and none twice");
    let m = metrics_text(&registry);
    assert!(
        !m.contains("datatracing_clickhouse_insert_retries_total 0"),
        "the restart forced retries: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attribute_index_serves_the_same_searches() {
    let config = ClickHouseConfig {
        attribute_index: true,
        ..config_for(ClickHouse::shared())
    };
    let store = ClickHouseStore::open(config, ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let tables = store.admin().retention().await.unwrap();
    assert!(
        tables
            .iter()
            .any(|t| t.table == "span_attributes" && t.days == Some(7)),
        "{tables:?}"
    );
    // The storage contract's attribute checks, now answered through span_attributes.
    datatracing_store_contract::search_by_attributes(StoreUnderTest::of(&store)).await;
    datatracing_store_contract::search_filters_match_one_span_each(StoreUnderTest::of(&store))
        .await;
    datatracing_store_contract::search_by_kind_and_typed_attributes(StoreUnderTest::of(&store))
        .await;
    // `contains` (and the dataset filter) through span_attributes' key range.
    datatracing_store_contract::datasets_in_search_and_lineage(StoreUnderTest::of(&store)).await;
    datatracing_store_contract::cursor_pages_are_complete_and_stable_under_concurrent_inserts(
        StoreUnderTest::of(&store),
    )
    .await;
}

/// A fresh database as a binary of schema `version` left it: that version's migrations
/// applied and recorded, none after. Returns this version's admin (not yet migrated) and a
/// plain client for the checks.
async fn database_at_version(
    config: &ClickHouseConfig,
    version: u32,
) -> (
    datatracing_store_clickhouse::ClickHouseAdmin,
    clickhouse::Client,
) {
    let admin = datatracing_store_clickhouse::ClickHouseAdmin::connect(config)
        .await
        .unwrap();
    let client = clickhouse::Client::default()
        .with_url(ClickHouse::shared().url())
        .with_user(ClickHouse::shared().user())
        .with_password(ClickHouse::shared().password());
    let schema = admin.schema();
    client
        .query(&schema.create_database())
        .execute()
        .await
        .unwrap();
    client
        .query(&schema.create_migrations_table())
        .execute()
        .await
        .unwrap();
    let db = &config.database;
    for m in schema.migrations().iter().filter(|m| m.version <= version) {
        for stmt in &m.statements {
            client.query(stmt).execute().await.unwrap();
        }
        client
            .query(&format!(
                "INSERT INTO {db}.schema_migrations (version, name) VALUES (?, ?)"
            ))
            .bind(m.version)
            .bind(m.name)
            .execute()
            .await
            .unwrap();
    }
    (admin, client)
}

/// A database a version-1 binary created and filled is upgraded in place: the name index is
/// filled from the stored spans, old spans stay searchable and pageable, and a reader of
/// this version refuses the database until it is migrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_migrated_and_its_names_indexed() {
    use datatracing_core::{Operation, SpanKind, TimeWindow, TraceQuery};
    let config = config_for(ClickHouse::shared());
    let db = config.database.clone();
    let (admin, client) = database_at_version(&config, 1).await;
    assert_eq!(admin.schema().migrations()[0].version, 1);
    let err = ClickHouseReader::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Schema(_)), "{err}");

    // Spans written by the version-1 layout (no migration on open). This binary's writer
    // sends the tenant column (version 5), which a version-1 binary did not: the column is
    // added here as migration 5 adds it, and rows without a tenant are what such a binary
    // wrote.
    client
        .query(&format!(
            "ALTER TABLE {db}.spans ADD COLUMN IF NOT EXISTS tenant LowCardinality(String) CODEC(ZSTD(1))"
        ))
        .execute()
        .await
        .unwrap();
    let old_writer = ClickHouseStore::open(
        ClickHouseConfig {
            migrate_on_start: false,
            ..config.clone()
        },
        ClickHouseMetrics::unregistered(),
    )
    .await
    .unwrap();
    let t = fresh_trace_id();
    let now = Timestamp::now();
    let mut a = simple_span(t, 1, None, "legacy", now, 5);
    a.kind = SpanKind::Ingest;
    let b = simple_span(t, 2, Some(1), "legacy", now.saturating_add_nanos(1), 5);
    let t2 = fresh_trace_id();
    let mut c = simple_span(t2, 1, None, "legacy", now.saturating_add_nanos(2), 5);
    // A link stored before the reverse-link index existed: migration 3 indexes it, and
    // migration 6 adds the dataset it names.
    c.links = vec![datatracing_core::Link {
        trace_id: t,
        span_id: b.span_id,
        link_type: datatracing_core::LinkType::DataDependency,
        attributes: [(
            datatracing_core::conventions::LINK_DATASET.to_string(),
            datatracing_core::AttributeValue::String("lake.orders".into()),
        )]
        .into(),
    }];
    // One batch with a span two days old: the version-1 view writes one bounds row for
    // both days, in the old day's partition; migration 4 gives the recent day its own row.
    let t3 = fresh_trace_id();
    let two_days_ago = Timestamp::from_unix_nanos(now.unix_nanos() - 2 * 86_400 * 1_000_000_000);
    let d_old = simple_span(t3, 1, None, "legacy", two_days_ago, 5);
    let d_new = simple_span(t3, 2, Some(1), "legacy", now, 5);
    old_writer
        .write(vec![a, b.clone(), c, d_old, d_new].into())
        .await
        .unwrap();
    old_writer.close().await.unwrap();
    let bounds_today = format!(
        "SELECT count() FROM {db}.trace_bounds WHERE trace_id = unhex('{t3}') \
         AND toDate(start_min) = toDate(start_max) AND toDate(start_max) = toDate(now64(9))"
    );
    let today: u64 = client.query(&bounds_today).fetch_one().await.unwrap();
    assert_eq!(today, 0, "version 1: one row spanning both days");

    let report = admin.migrate().await.unwrap();
    assert_eq!(report.applied, vec![2, 3, 4, 5, 6, 7, 8, 9]);
    let today: u64 = client.query(&bounds_today).fetch_one().await.unwrap();
    assert_eq!(today, 1, "migration 4 splits the row by day");
    let reader = ClickHouseReader::open(config, ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let all = TimeWindow::default();
    assert_eq!(
        reader.services(&all, 10).await.unwrap(),
        vec!["legacy".to_string()]
    );
    assert_eq!(
        reader.operations("legacy", &all, 10).await.unwrap(),
        vec![
            Operation {
                name: "op-1".into(),
                span_kind: SpanKind::Ingest
            },
            Operation {
                name: "op-1".into(),
                span_kind: SpanKind::Transform
            },
            Operation {
                name: "op-2".into(),
                span_kind: SpanKind::Transform
            },
        ]
    );
    let q = TraceQuery {
        service: Some("legacy".into()),
        ..TraceQuery::with_limit(1)
    };
    let first = reader.search(&q).await.unwrap();
    assert_eq!(first.traces[0].trace_id, t2);
    let second = reader
        .search(&TraceQuery {
            cursor: first.next_cursor,
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        second.traces[0].trace_id, t,
        "old index rows are in every snapshot"
    );
    let third = reader
        .search(&TraceQuery {
            cursor: second.next_cursor,
            ..q
        })
        .await
        .unwrap();
    assert_eq!(third.traces[0].trace_id, t3);
    assert_eq!(third.traces[0].span_count, 2);
    assert!(third.next_cursor.is_none());
    let backfilled = reader.links_to(&[t], 10).await.unwrap();
    assert_eq!(backfilled.len(), 1, "{backfilled:?}");
    assert_eq!(
        (
            backfilled[0].from_trace,
            backfilled[0].to_span,
            backfilled[0].dataset.as_deref()
        ),
        (t2, b.span_id, Some("lake.orders"))
    );
    let found = reader
        .search(&TraceQuery {
            linked_trace: Some(t),
            ..TraceQuery::with_limit(10)
        })
        .await
        .unwrap();
    assert_eq!(found.traces.len(), 1);
    assert_eq!(found.traces[0].trace_id, t2);
    // Drift repair (a view was dropped by hand) runs every migration statement again: the
    // backfill adds nothing twice.
    client
        .query(&format!("DROP VIEW {db}.span_names_v2_mv SYNC"))
        .execute()
        .await
        .unwrap();
    assert_eq!(
        admin.recreate_missing().await.unwrap(),
        ["span_names_v2_mv"]
    );
    let rows: u64 = client
        .query(&format!("SELECT count() FROM {db}.span_links"))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        rows, 2,
        "one link, indexed once by migration 3 and once with its dataset by migration 6"
    );
    assert_eq!(reader.links_to(&[t], 10).await.unwrap(), backfilled);
}

/// The expected summary of `spans` (one trace): the one a trace read reconstructs, with the
/// same rules the embedded store summarizes by.
fn summary_of(spans: &[Span]) -> datatracing_core::TraceSummary {
    datatracing_core::TraceDag::build(spans[0].trace_id, spans.iter().cloned())
        .unwrap()
        .summary
}

/// Migration 7 on a version-6 database holding spans: the backfill summarizes what was
/// stored, spans written after it are added to the same summaries, search pages and trace
/// reads answer as before, and running every statement again changes no summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_6_database_with_spans_is_migrated_to_trace_summaries() {
    use datatracing_core::{Status, StatusCode, TraceQuery};
    let config = config_for(ClickHouse::shared());
    let db = config.database.clone();
    let (admin, client) = database_at_version(&config, 6).await;
    let old_writer = ClickHouseStore::open(
        ClickHouseConfig {
            migrate_on_start: false,
            ..config.clone()
        },
        ClickHouseMetrics::unregistered(),
    )
    .await
    .unwrap();
    let now = Timestamp::now();
    let at = |ns: i64| now.saturating_add_nanos(ns);
    // Trace t: a root, a failed child of another service, a timed-out grandchild, and the
    // same child again (a duplicate counts once).
    let t = fresh_trace_id();
    let root = simple_span(t, 1, None, "v6-orders", at(0), 5_000);
    let mut failed = simple_span(t, 2, Some(1), "v6-billing", at(10), 1_000);
    failed.status = Status::with_message(StatusCode::Error, "bad row");
    let mut slow = simple_span(t, 3, Some(2), "v6-billing", at(20), 9_000);
    slow.status = Status::new(StatusCode::Timeout);
    // Trace u: no parentless span (its root went missing), so the earliest span is its root.
    let u = fresh_trace_id();
    let orphan_late = simple_span(u, 7, Some(99), "v6-orders", at(40), 10);
    let orphan_early = simple_span(u, 8, Some(99), "v6-ship", at(30), 100);
    old_writer
        .write(
            vec![
                root.clone(),
                failed.clone(),
                slow.clone(),
                failed.clone(),
                orphan_late.clone(),
                orphan_early.clone(),
            ]
            .into(),
        )
        .await
        .unwrap();
    old_writer.close().await.unwrap();
    assert_eq!(
        client
            .query(&format!(
                "SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'trace_summaries'"
            ))
            .fetch_one::<u64>()
            .await
            .unwrap(),
        0,
        "version 6 has no summaries table"
    );

    let report = admin.migrate().await.unwrap();
    assert_eq!(report.applied, vec![7, 8, 9]);
    for (table, small) in [("trace_summaries", true), ("spans", false)] {
        let engine: String = client
            .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
            .bind(&db)
            .bind(table)
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(
            engine.contains("min_compress_block_size = 4096")
                && engine.contains("max_compress_block_size = 16384"),
            small,
            "{table}: small compressed blocks (migration 8) only where reads are lookups: {engine}"
        );
    }
    let projections: Vec<String> = client
        .query(&format!(
            "SELECT name FROM system.projections WHERE database = '{db}' AND table = 'span_index' ORDER BY name"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(projections, ["by_service_time", "by_time"]);
    let reader = ClickHouseReader::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let want_t = summary_of(&[root.clone(), failed.clone(), slow.clone()]);
    let want_u = summary_of(&[orphan_late.clone(), orphan_early.clone()]);
    assert_eq!(want_t.error_count, 2);
    assert_eq!(want_u.root_operation, "op-8");
    let mut got = reader.summaries(&[t, u]).await.unwrap();
    got.sort_by_key(|s| s.trace_id != t);
    assert_eq!(got, vec![want_t, want_u.clone()], "backfilled");

    // A span of t written after the migration joins the backfilled summary.
    let store = ClickHouseStore::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let late = simple_span(t, 4, Some(1), "v6-audit", at(50), 100_000);
    store.write(vec![late.clone()].into()).await.unwrap();
    let want_t = summary_of(&[root.clone(), failed, slow, late]);
    let page = reader
        .search(&TraceQuery {
            service: Some("v6-orders".into()),
            ..TraceQuery::with_limit(1)
        })
        .await
        .unwrap();
    assert_eq!(
        page.traces,
        vec![want_u.clone()],
        "u's latest orders span is newest"
    );
    let next = reader
        .search(&TraceQuery {
            service: Some("v6-orders".into()),
            cursor: page.next_cursor,
            ..TraceQuery::with_limit(1)
        })
        .await
        .unwrap();
    assert_eq!(next.traces, vec![want_t.clone()]);
    assert!(next.next_cursor.is_none());
    assert_eq!(reader.get_trace(t).await.unwrap().unwrap().len(), 4);

    // Nothing is missing: drift repair runs no statement. Every insert into a table takes
    // the next block number (merges only combine them), and a backfill would insert
    // summaries.
    let last_block = || async {
        client
            .query(
                "SELECT max(max_block_number) FROM system.parts \
                 WHERE database = ? AND table = 'trace_summaries' AND active",
            )
            .bind(&db)
            .fetch_one::<i64>()
            .await
            .unwrap()
    };
    let before = last_block().await;
    assert!(before > 0);
    assert!(admin.recreate_missing().await.unwrap().is_empty());
    assert_eq!(last_block().await, before, "no backfill ran");

    // The summaries' view dropped by hand, and a span of u written meanwhile (so missed by
    // the view): the repair recreates the view and runs every backfill again, which
    // summarizes that span; the states absorb the repeat of everything else.
    client
        .query(&format!("DROP VIEW {db}.trace_summaries_mv SYNC"))
        .execute()
        .await
        .unwrap();
    let missed = simple_span(u, 9, Some(99), "v6-audit", at(60), 10);
    store.write(vec![missed.clone()].into()).await.unwrap();
    assert_eq!(
        reader.summaries(&[u]).await.unwrap(),
        vec![want_u],
        "the view is gone: u's summary misses the span"
    );
    // What the operator's drift check reads: the lost view, and the tables' retention
    // as `retention` reads it, in one answer.
    let state = admin.schema_state().await.unwrap();
    assert_eq!(state.missing, ["trace_summaries_mv"]);
    assert_eq!(state.retention, admin.retention().await.unwrap());
    assert_eq!(state.retention.len(), admin.ttl_storage_tables().len());
    assert_eq!(
        admin.recreate_missing().await.unwrap(),
        ["trace_summaries_mv"]
    );
    assert!(admin.schema_state().await.unwrap().missing.is_empty());
    let want_u = summary_of(&[orphan_late, orphan_early, missed]);
    let mut got = reader.summaries(&[t, u]).await.unwrap();
    got.sort_by_key(|s| s.trace_id != t);
    assert_eq!(got, vec![want_t, want_u]);
    store.close().await.unwrap();
}

/// Whether a database exists, asked without one (a reader must not have created it).
async fn database_exists(server: &ClickHouse, db: &str) -> bool {
    clickhouse::Client::default()
        .with_url(server.url())
        .with_user(server.user())
        .with_password(server.password())
        .query("SELECT count() FROM system.databases WHERE name = ?")
        .bind(db)
        .fetch_one::<u64>()
        .await
        .unwrap()
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_migrates_and_reads_what_the_writer_stored() {
    let server = ClickHouse::shared();
    let config = config_for(server);
    assert!(
        config.migrate_on_start,
        "the writer's default; the reader ignores it"
    );
    let db = config.database.clone();

    // Nobody migrated: the reader refuses clearly and creates nothing.
    let err = ClickHouseReader::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Schema(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("datatracing migrate") && msg.contains("spans"),
        "{msg}"
    );
    assert!(
        !database_exists(server, &db).await,
        "opening a reader created the database"
    );

    // The writer migrates and writes; a reader opened afterwards sees it all.
    let store = ClickHouseStore::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let batch = spans(4, "reader-side");
    let trace = batch[0].trace_id;
    store.write(batch.into()).await.unwrap();
    let mut registry = Registry::default();
    let reader = ClickHouseReader::open(config.clone(), ClickHouseMetrics::register(&mut registry))
        .await
        .unwrap();
    reader.health().await.unwrap();
    assert_eq!(reader.backend(), "clickhouse");
    assert_eq!(reader.get_trace(trace).await.unwrap().unwrap().len(), 4);
    let found = reader
        .search(&datatracing_core::TraceQuery {
            service: Some("reader-side".into()),
            ..datatracing_core::TraceQuery::with_limit(5)
        })
        .await
        .unwrap()
        .traces;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].span_count, 4);
    let m = metrics_text(&registry);
    assert!(
        m.contains("datatracing_clickhouse_inserted_spans_total 0"),
        "a reader inserts nothing: {m}"
    );

    // A reader configured for the attribute index the database was not built with fails
    // at open, not at the first attribute search.
    let err = ClickHouseReader::open(
        ClickHouseConfig {
            attribute_index: true,
            ..config
        },
        ClickHouseMetrics::unregistered(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("span_attributes"), "{err}");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_for_an_insert_slot_are_merged_into_one_insert() {
    let server = ClickHouse::start_chdb(ChdbOptions::default());
    let mut registry = Registry::default();
    let metrics = ClickHouseMetrics::register(&mut registry);
    let mut config = config_for(&server);
    config.batch.max_concurrent_inserts = 1;
    let store = ClickHouseStore::open(config, metrics).await.unwrap();
    let m = || metrics_text(&registry);
    // A lone write is its own insert.
    store.write(spans(3, "first").into()).await.unwrap();
    assert!(
        m().contains("datatracing_clickhouse_insert_batches_total 1"),
        "{}",
        m()
    );
    // While a slow insert holds the only slot, the writes behind it wait in the batcher...
    server.set_delay(2_000);
    let wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let what = what.to_string();
        let text = &m;
        async move {
            while !text().contains(&what) {
                assert!(std::time::Instant::now() < deadline, "{what}: {}", text());
                tokio::task::yield_now().await;
            }
        }
    };
    let slow = {
        let s = store.clone();
        tokio::spawn(async move { s.write(spans(1, "slow").into()).await })
    };
    wait_for("datatracing_clickhouse_inserts_in_flight 1").await;
    let mut writes = Vec::new();
    for i in 0..3 {
        let s = store.clone();
        writes.push(tokio::spawn(async move {
            s.write(spans(2, &format!("w{i}")).into()).await
        }));
    }
    wait_for("datatracing_clickhouse_pending_spans 6").await;
    server.set_delay(0);
    slow.await.unwrap().unwrap();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    // ... and go in together: the first, the slow one, and one for the three behind it.
    let text = m();
    assert!(
        text.contains("datatracing_clickhouse_insert_batches_total 3"),
        "{text}"
    );
    assert!(
        text.contains("datatracing_clickhouse_inserted_spans_total 10"),
        "{text}"
    );
    assert!(
        text.contains("datatracing_clickhouse_inserts_in_flight 0"),
        "{text}"
    );
}

/// Issue 10: a batch holding one span older than the retention wrote a `trace_bounds` row
/// into the expired partition of that span; retention dropped the row while the batch's
/// recent spans stayed, and reads (pruned by the bounds) found nothing: 404. A second,
/// recent-only batch of the same trace then bounded reads to its own spans alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_stays_readable_when_retention_drops_one_of_its_spans() {
    use datatracing_core::TraceQuery;
    let config = config_for(ClickHouse::shared());
    let db = config.database.clone();
    let store = ClickHouseStore::open(config, ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let now = Timestamp::now();
    let expired = Timestamp::from_unix_nanos(now.unix_nanos() - 10 * 86_400 * 1_000_000_000);
    // Trace `a`: one batch, one span 10 days old (retention is 7 days), three recent.
    let a = fresh_trace_id();
    let mut first = vec![simple_span(a, 1, None, "retained", expired, 1_000)];
    first.extend((2..5).map(|i| {
        simple_span(
            a,
            i,
            Some(1),
            "retained",
            now.saturating_add_nanos(i as i64),
            1_000,
        )
    }));
    store
        .insert_with_token(&first, "old-and-new")
        .await
        .unwrap();
    // Trace `b`: the same first batch, then a second batch of recent spans only.
    let b = fresh_trace_id();
    let first_b: Vec<Span> = first
        .iter()
        .map(|s| Span {
            trace_id: b,
            ..s.clone()
        })
        .collect();
    store.insert_with_token(&first_b, "b-first").await.unwrap();
    let later = now.saturating_add_nanos(1_000_000_000);
    let second_b: Vec<Span> = (5..7)
        .map(|i| {
            simple_span(
                b,
                i,
                Some(1),
                "retained",
                later.saturating_add_nanos(i as i64),
                1,
            )
        })
        .collect();
    store
        .insert_with_token(&second_b, "b-second")
        .await
        .unwrap();

    // Retention runs: every part whose rows are all past their TTL goes.
    let client = clickhouse_client(&store);
    for table in ["spans", "span_index", "trace_bounds", "trace_summaries"] {
        client
            .query(&format!("ALTER TABLE {db}.{table} MATERIALIZE TTL"))
            .with_setting("mutations_sync", "2")
            .execute()
            .await
            .unwrap();
        client
            .query(&format!("OPTIMIZE TABLE {db}.{table} FINAL"))
            .execute()
            .await
            .unwrap();
    }
    assert_eq!(
        count(
            &store,
            &format!("SELECT count() FROM {db}.spans WHERE start_time < now64(9) - INTERVAL 8 DAY")
        )
        .await,
        0,
        "retention removed the expired spans (else this test proves nothing)"
    );

    let got_a = store
        .get_trace(a)
        .await
        .unwrap()
        .expect("trace a is readable: 3 of its spans are stored");
    assert_eq!(got_a, first[1..].to_vec());
    let got_b = store
        .get_trace(b)
        .await
        .unwrap()
        .expect("trace b is readable");
    let mut want_b = first_b[1..].to_vec();
    want_b.extend(second_b);
    assert_eq!(
        got_b, want_b,
        "every stored span of b, not only the second batch's"
    );
    let capped = store.get_trace_capped(b, 100).await.unwrap().unwrap();
    assert_eq!(capped.spans.len(), 5);
    let summaries = store.summaries(&[a, b]).await.unwrap();
    let counts: Vec<(datatracing_core::TraceId, u64)> = summaries
        .iter()
        .map(|s| (s.trace_id, s.span_count))
        .collect();
    assert!(
        counts.contains(&(a, 3)) && counts.contains(&(b, 5)),
        "{counts:?}"
    );
    let found = store
        .search(&TraceQuery {
            service: Some("retained".into()),
            limit: 10,
            ..TraceQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(found.traces.len(), 2, "{found:?}");

    // A trace without any bounds row (lost by hand here; the bounds are in
    // trace_summaries since migration 7) is read by key from every partition instead of
    // not at all, and summarized from its spans.
    client
        .query(&format!(
            "ALTER TABLE {db}.trace_summaries DELETE WHERE trace_id = unhex('{a}')"
        ))
        .with_setting("mutations_sync", "2")
        .execute()
        .await
        .unwrap();
    assert_eq!(
        count(
            &store,
            &format!("SELECT count() FROM {db}.trace_summaries WHERE trace_id = unhex('{a}')")
        )
        .await,
        0
    );
    assert_eq!(store.get_trace(a).await.unwrap(), Some(first[1..].to_vec()));
    let summaries = store.summaries(&[a, b]).await.unwrap();
    assert_eq!(summaries.len(), 2);
    let counts: Vec<(datatracing_core::TraceId, u64)> = summaries
        .iter()
        .map(|s| (s.trace_id, s.span_count))
        .collect();
    assert!(
        counts.contains(&(a, 3)) && counts.contains(&(b, 5)),
        "{counts:?}"
    );
}

/// The writer knows the spans table's retention (the collector refuses spans already older
/// than it), including after an operator changed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_reports_the_retention_in_force() {
    let config = ClickHouseConfig {
        initial_retention_days: 3,
        ..config_for(ClickHouse::shared())
    };
    let store = ClickHouseStore::open(config, ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    assert_eq!(store.retention(), Some(Duration::from_secs(3 * 24 * 3600)));
    store.admin().set_retention(11).await.unwrap();
    store.refresh_retention().await;
    assert_eq!(store.retention(), Some(Duration::from_secs(11 * 24 * 3600)));
    store.close().await.unwrap();
}

/// A search reads the newest rows of a window and falls back to aggregating every matching
/// row when that window holds too few traces. After a cursor, the window is the newest rows
/// at or before the cursor, and earlier pages' traces are dropped after it was read: a
/// window holding nothing but the rows of an earlier page's trace must still lead to the
/// older traces, in order, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pages_past_a_trace_wider_than_the_window_read_every_trace() {
    use datatracing_core::TraceQuery;
    let store = ClickHouseStore::open(
        config_for(ClickHouse::shared()),
        ClickHouseMetrics::unregistered(),
    )
    .await
    .unwrap();
    let t0 = Timestamp::now().saturating_add_nanos(-600_000_000_000);
    // Limit 1 reads a window of 100 rows. `wide` (newest) has more rows than that; `mid`
    // and `old` are older and hold 30 and 110 rows, `mid`'s interleaved with `old`'s.
    let (wide, mid, old) = (fresh_trace_id(), fresh_trace_id(), fresh_trace_id());
    let mut all = Vec::new();
    let mut rows = |t, n: u64, from: i64, step: i64| {
        all.extend((0..n).map(|i| {
            simple_span(
                t,
                i + 1,
                (i > 0).then_some(1),
                "wide-svc",
                t0.saturating_add_nanos(from + i as i64 * step),
                10,
            )
        }));
    };
    rows(wide, 150, 10_000_000, 1_000);
    rows(mid, 30, 2_000, 40_000);
    rows(old, 110, 1_000, 10_000);
    store.write(all.into()).await.unwrap();
    let expected = vec![wide, mid, old];
    let everything: Vec<_> = page_ids(
        &store,
        &TraceQuery {
            service: Some("wide-svc".into()),
            ..TraceQuery::with_limit(10)
        },
    )
    .await;
    assert_eq!(everything, expected, "one page, newest latest span first");
    let mut q = TraceQuery {
        service: Some("wide-svc".into()),
        ..TraceQuery::with_limit(1)
    };
    let mut seen = Vec::new();
    for _ in 0..5 {
        let page = store.search(&q).await.unwrap();
        assert!(page.traces.len() <= 1);
        seen.extend(page.traces.iter().map(|s| (s.trace_id, s.span_count)));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![(wide, 150), (mid, 30), (old, 110)],
        "every trace once, in order, with its summary"
    );
    store.close().await.unwrap();
}
