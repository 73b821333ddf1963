//! The storage contract, plus embedded-store specifics: persistence across reopen,
//! retention, read-only mode, and the query timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use datatracing_core::{ConfigDuration, LinkType, Timestamp};
use datatracing_store::{TraceReader, TraceWriter};
use datatracing_store_contract::{Fixture, fresh_trace_id, simple_span};
use datatracing_store_sqlite::{EmbeddedConfig, EmbeddedStore, Error, OpenMode};

struct Embedded {
    _dir: tempfile::TempDir,
    store: EmbeddedStore,
}

impl Fixture for Embedded {
    fn writer(&self) -> &dyn TraceWriter {
        &self.store
    }
    fn reader(&self) -> &dyn TraceReader {
        &self.store
    }
}

async fn make() -> Embedded {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap();
    Embedded { _dir: dir, store }
}

datatracing_store_contract::trace_store_contract!(make);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let t = fresh_trace_id();
    {
        let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
            .await
            .unwrap();
        store
            .write(vec![simple_span(t, 1, None, "svc", Timestamp::now(), 5)].into())
            .await
            .unwrap();
        store.close().await.unwrap();
        assert!(matches!(
            store
                .write(vec![simple_span(t, 2, None, "svc", Timestamp::now(), 5)].into())
                .await,
            Err(datatracing_store::Error::Closed)
        ));
    }
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap();
    assert_eq!(store.get_trace(t).await.unwrap().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_only_old_spans() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap();
    let old = fresh_trace_id();
    let new = fresh_trace_id();
    let now = Timestamp::now();
    let day = 86_400_000_000_000i64;
    let old_spans: Vec<_> = (0..25_000u64)
        .map(|i| {
            simple_span(
                old,
                i,
                None,
                "svc",
                now.saturating_add_nanos(-10 * day + i as i64),
                5,
            )
        })
        .collect();
    store.write(old_spans.into()).await.unwrap();
    store
        .write(vec![simple_span(new, 1, None, "svc", now, 5)].into())
        .await
        .unwrap();
    let deleted = store
        .purge_older_than(now.saturating_add_nanos(-day))
        .await
        .unwrap();
    assert_eq!(deleted, 25_000, "purge runs in chunks until done");
    assert!(store.get_trace(old).await.unwrap().is_none());
    assert!(store.get_trace(new).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_retention_runs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        retention: ConfigDuration::from_secs(3600),
        retention_interval: ConfigDuration::from_secs(1),
        ..EmbeddedConfig::new(dir.path())
    };
    let store = EmbeddedStore::open(config, OpenMode::ReadWrite)
        .await
        .unwrap();
    let old = fresh_trace_id();
    store
        .write(
            vec![simple_span(
                old,
                1,
                None,
                "svc",
                Timestamp::now().saturating_add_nanos(-7_200_000_000_000),
                5,
            )]
            .into(),
        )
        .await
        .unwrap();
    // Await the condition (bounded), not a fixed sleep.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.get_trace(old).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mode_reads_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadOnly).await,
        Err(Error::Config(_))
    ));
    let rw = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap();
    let ro = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadOnly)
        .await
        .unwrap();
    let t = fresh_trace_id();
    rw.write(vec![simple_span(t, 1, None, "svc", Timestamp::now(), 5)].into())
        .await
        .unwrap();
    assert!(
        ro.get_trace(t).await.unwrap().is_some(),
        "a second process-style reader sees committed writes"
    );
    assert!(matches!(
        ro.write(vec![simple_span(t, 2, None, "svc", Timestamp::now(), 5)].into())
            .await,
        Err(datatracing_store::Error::ReadOnly)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_and_newer_schema_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = EmbeddedConfig {
        read_connections: 0,
        ..EmbeddedConfig::new(dir.path())
    };
    assert!(matches!(
        EmbeddedStore::open(bad, OpenMode::ReadWrite).await,
        Err(Error::Config(_))
    ));
    EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    bump_schema_version(dir.path());
    let err = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
    // A data dir that is a file cannot be opened.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(
        EmbeddedStore::open(EmbeddedConfig::new(&file), OpenMode::ReadWrite)
            .await
            .is_err()
    );
}

/// Simulates a data directory written by a newer release.
fn bump_schema_version(dir: &std::path::Path) {
    let conn = rusqlite::Connection::open(dir.join("traces.db")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
}

/// Makes the database refuse spans of one service, as a constraint would: a permanent
/// failure that no retry can fix.
fn refuse_service(dir: &std::path::Path, service: &str) {
    let conn = rusqlite::Connection::open(dir.join("traces.db")).unwrap();
    conn.execute_batch(&format!(
        "CREATE TRIGGER refuse_{service} BEFORE INSERT ON spans WHEN NEW.service = '{service}'
         BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;"
    ))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_sqlite_error_is_reported_as_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap();
    refuse_service(dir.path(), "poison");
    let t = fresh_trace_id();
    let err = store
        .write(vec![simple_span(t, 1, None, "poison", Timestamp::now(), 5)].into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, datatracing_store::Error::Rejected(_)),
        "a constraint failure is permanent, not Unavailable: {err:?}"
    );
    assert!(!err.is_transient(), "retrying it would fail forever: {err}");
    assert!(store.get_trace(t).await.unwrap().is_none());
    // The store itself is fine: other writes still commit.
    store
        .write(vec![simple_span(t, 2, None, "healthy", Timestamp::now(), 5)].into())
        .await
        .unwrap();
    assert_eq!(store.get_trace(t).await.unwrap().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_does_not_fail_the_requests_committed_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap();
    refuse_service(dir.path(), "poison");
    // Concurrent requests, so the writer thread commits several in one group.
    let mut tasks = tokio::task::JoinSet::new();
    let mut good = Vec::new();
    for i in 0..16u64 {
        let t = fresh_trace_id();
        let service = if i % 4 == 0 { "poison" } else { "healthy" };
        if i % 4 != 0 {
            good.push(t);
        }
        let store = store.clone();
        let spans: Vec<_> = (0..200)
            .map(|n| simple_span(t, n, None, service, Timestamp::now(), 5))
            .collect();
        tasks.spawn(async move { (service, store.write(spans.into()).await) });
    }
    while let Some(done) = tasks.join_next().await {
        let (service, result) = done.unwrap();
        match service {
            "poison" => assert!(
                matches!(result, Err(datatracing_store::Error::Rejected(_))),
                "{result:?}"
            ),
            _ => assert!(
                result.is_ok(),
                "a healthy request failed with its group: {result:?}"
            ),
        }
    }
    for t in good {
        assert_eq!(store.get_trace(t).await.unwrap().unwrap().len(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_database_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap();
    // Another process holds the write lock longer than the store's busy timeout.
    let mut blocker = rusqlite::Connection::open(dir.path().join("traces.db")).unwrap();
    let tx = blocker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let t = fresh_trace_id();
    let err = store
        .write(vec![simple_span(t, 1, None, "svc", Timestamp::now(), 5)].into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, datatracing_store::Error::Unavailable(_)),
        "{err:?}"
    );
    tx.rollback().unwrap();
    store
        .write(vec![simple_span(t, 1, None, "svc", Timestamp::now(), 5)].into())
        .await
        .unwrap();
}

/// Builds a data directory as a version-1 binary left it (no `span_names`, no `store_meta`).
fn write_v1_database(dir: &std::path::Path, spans: &[datatracing_core::Span]) {
    let conn = rusqlite::Connection::open(dir.join("traces.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE spans (
             id INTEGER PRIMARY KEY, trace_id BLOB NOT NULL, span_id BLOB NOT NULL, parent_id BLOB,
             service TEXT NOT NULL, operation TEXT NOT NULL, kind INTEGER NOT NULL,
             start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, duration_ns INTEGER NOT NULL,
             status INTEGER NOT NULL, status_message TEXT, attributes TEXT, events TEXT, links TEXT);
         CREATE UNIQUE INDEX spans_by_trace ON spans(trace_id, span_id);
         CREATE INDEX spans_by_start ON spans(start_ns);
         CREATE INDEX spans_by_service ON spans(service, start_ns);
         CREATE INDEX spans_by_service_op ON spans(service, operation, start_ns);
         PRAGMA user_version = 1;",
    )
    .unwrap();
    for s in spans {
        conn.execute(
            "INSERT INTO spans (trace_id, span_id, service, operation, kind, start_ns, end_ns, duration_ns, status, links)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9)",
            rusqlite::params![
                s.trace_id.as_bytes().as_slice(),
                s.span_id.as_bytes().as_slice(),
                s.service,
                s.operation,
                s.kind.code(),
                s.start_time.unix_nanos(),
                s.end_time.unix_nanos(),
                s.duration_nanos(),
                (!s.links.is_empty()).then(|| serde_json::to_string(&s.links).unwrap()),
            ],
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_directory_is_migrated_and_its_names_indexed() {
    use datatracing_core::{Operation, SpanKind, TimeWindow};
    let dir = tempfile::tempdir().unwrap();
    let t = fresh_trace_id();
    let now = Timestamp::now();
    let mut a = simple_span(t, 1, None, "legacy", now, 5);
    a.kind = SpanKind::Ingest;
    let mut b = simple_span(t, 2, Some(1), "legacy", now, 5);
    // A link stored before the reverse-link index existed: schema 3 indexes it.
    let upstream = fresh_trace_id();
    b.links = vec![link(upstream, 9, LinkType::DataDependency)];
    write_v1_database(dir.path(), &[a, b]);

    // A standalone query process cannot read it until a collector upgraded it.
    let err = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadOnly)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("older"), "{err}");

    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap();
    let all = TimeWindow::default();
    assert_eq!(
        store.services(&all, 100).await.unwrap(),
        vec!["legacy".to_string()]
    );
    let backfilled = store.links_to(&[upstream], 10).await.unwrap();
    assert_eq!(backfilled.len(), 1, "{backfilled:?}");
    assert_eq!(backfilled[0].from_trace, t);
    assert_eq!(
        store.operations("legacy", &all, 100).await.unwrap(),
        vec![
            Operation {
                name: "op-1".into(),
                span_kind: SpanKind::Ingest
            },
            Operation {
                name: "op-2".into(),
                span_kind: SpanKind::Transform
            },
        ]
    );
    // New writes continue after the old rows and page as usual.
    store
        .write(vec![simple_span(fresh_trace_id(), 1, None, "legacy", now, 5)].into())
        .await
        .unwrap();
    let page = store
        .search(&datatracing_core::TraceQuery {
            service: Some("legacy".into()),
            ..datatracing_core::TraceQuery::with_limit(1)
        })
        .await
        .unwrap();
    assert_eq!(page.traces.len(), 1);
    assert!(page.next_cursor.is_some());
    store.close().await.unwrap();
    // Once migrated, a read-only process opens it.
    EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadOnly)
        .await
        .unwrap();
}

/// A version-4 directory (links indexed without their dataset) gets the datasets of the
/// links already stored when a version-5 binary opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_4_directory_gets_its_link_datasets() {
    use datatracing_core::AttributeValue;
    use datatracing_core::conventions::LINK_DATASET;
    let dir = tempfile::tempdir().unwrap();
    let (t, upstream) = (fresh_trace_id(), fresh_trace_id());
    let mut s = simple_span(t, 1, None, "join", Timestamp::now(), 5);
    let mut with_dataset = link(upstream, 7, LinkType::DataDependency);
    with_dataset.attributes.insert(
        LINK_DATASET.into(),
        AttributeValue::String("warehouse.orders".into()),
    );
    s.links = vec![with_dataset, link(upstream, 8, LinkType::FollowsFrom)];
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap();
    store.write(vec![s].into()).await.unwrap();
    store.close().await.unwrap();
    {
        // What a version-4 binary left behind.
        let conn = rusqlite::Connection::open(dir.path().join("traces.db")).unwrap();
        conn.execute_batch("ALTER TABLE span_links DROP COLUMN dataset; PRAGMA user_version = 4;")
            .unwrap();
    }
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite)
        .await
        .unwrap();
    let mut got: Vec<_> = store
        .links_to(&[upstream], 10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.link_type, l.dataset))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (LinkType::FollowsFrom, None),
            (
                LinkType::DataDependency,
                Some("warehouse.orders".to_string())
            ),
        ]
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_row_ids_are_never_reused_so_cursors_stay_exact() {
    use datatracing_core::{TimeWindow, TraceQuery};
    let dir = tempfile::tempdir().unwrap();
    // No background retention: this test purges itself, at a chosen moment.
    let config = EmbeddedConfig {
        retention: ConfigDuration::from_secs(0),
        ..EmbeddedConfig::new(dir.path())
    };
    let store = EmbeddedStore::open(config, OpenMode::ReadWrite)
        .await
        .unwrap();
    let now = Timestamp::now();
    let day = 86_400_000_000_000i64;
    let q = |limit| TraceQuery {
        service: Some("svc".into()),
        ..TraceQuery::with_limit(limit)
    };
    // Two recent traces, then a late-arriving old one: the newest row is the old span.
    let (r1, r2, old) = (fresh_trace_id(), fresh_trace_id(), fresh_trace_id());
    store
        .write(
            vec![
                simple_span(r1, 1, None, "svc", now, 5),
                simple_span(r2, 1, None, "svc", now.saturating_add_nanos(-1), 5),
            ]
            .into(),
        )
        .await
        .unwrap();
    store
        .write(
            vec![simple_span(
                old,
                1,
                None,
                "gone",
                now.saturating_add_nanos(-10 * day),
                5,
            )]
            .into(),
        )
        .await
        .unwrap();
    let first = store.search(&q(1)).await.unwrap();
    assert_eq!(first.traces[0].trace_id, r1);
    let cursor = first.next_cursor.unwrap();
    // Retention removes the highest row id; a new span must not take it over, or it
    // would fall inside the first page's snapshot.
    assert_eq!(
        store
            .purge_older_than(now.saturating_add_nanos(-day))
            .await
            .unwrap(),
        1
    );
    assert!(
        store
            .services(&TimeWindow::default(), 10)
            .await
            .unwrap()
            .iter()
            .all(|s| s != "gone"),
        "retention also clears the name index"
    );
    store
        .write(
            vec![simple_span(
                fresh_trace_id(),
                1,
                None,
                "svc",
                now.saturating_add_nanos(-2),
                5,
            )]
            .into(),
        )
        .await
        .unwrap();
    let second = store
        .search(&TraceQuery {
            cursor: Some(cursor),
            ..q(10)
        })
        .await
        .unwrap();
    let ids: Vec<_> = second.traces.iter().map(|s| s.trace_id).collect();
    assert_eq!(ids, vec![r2], "only what the first page's snapshot held");
    assert!(second.next_cursor.is_none());
}

fn link(
    trace_id: datatracing_core::TraceId,
    span: u64,
    link_type: LinkType,
) -> datatracing_core::Link {
    datatracing_core::Link {
        trace_id,
        span_id: datatracing_store_contract::span_id(span),
        link_type,
        attributes: Default::default(),
    }
}

fn span_links_rows(dir: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("traces.db")).unwrap();
    conn.query_row("SELECT count(*) FROM span_links", [], |r| r.get(0))
        .unwrap()
}

/// The reverse-link index follows the spans: a rewritten span's links replace its old ones,
/// and retention deletes the links of the spans it purges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reverse_link_index_follows_rewrites_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        retention: ConfigDuration::from_secs(0),
        ..EmbeddedConfig::new(dir.path())
    };
    let store = EmbeddedStore::open(config, OpenMode::ReadWrite)
        .await
        .unwrap();
    let (target, other) = (fresh_trace_id(), fresh_trace_id());
    let (old, new) = (fresh_trace_id(), fresh_trace_id());
    let now = Timestamp::now();
    let day = 86_400_000_000_000i64;
    let mut o = simple_span(old, 1, None, "svc", now.saturating_add_nanos(-10 * day), 5);
    o.links = vec![link(target, 1, LinkType::FollowsFrom)];
    let mut n = simple_span(new, 1, None, "svc", now, 5);
    n.links = vec![
        link(target, 1, LinkType::FollowsFrom),
        link(new, 2, LinkType::FollowsFrom),
    ];
    store.write(vec![o, n.clone()].into()).await.unwrap();
    assert_eq!(store.links_to(&[target], 10).await.unwrap().len(), 2);
    assert_eq!(
        span_links_rows(dir.path()),
        2,
        "a link within the trace is not indexed"
    );

    // A retry of the same span indexes nothing twice; a corrected span moves its link.
    store.write(vec![n.clone()].into()).await.unwrap();
    assert_eq!(span_links_rows(dir.path()), 2);
    n.links = vec![link(other, 1, LinkType::DataDependency)];
    store.write(vec![n].into()).await.unwrap();
    let to_target = store.links_to(&[target], 10).await.unwrap();
    assert_eq!(to_target.len(), 1);
    assert_eq!(to_target[0].from_trace, old);
    assert_eq!(
        store.links_to(&[other], 10).await.unwrap()[0].from_trace,
        new
    );

    let purged = store
        .purge_older_than(now.saturating_add_nanos(-day))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert!(store.links_to(&[target], 10).await.unwrap().is_empty());
    assert_eq!(
        span_links_rows(dir.path()),
        1,
        "only the kept span's link remains"
    );
    assert!(
        store
            .search(&datatracing_core::TraceQuery {
                linked_trace: Some(target),
                ..datatracing_core::TraceQuery::with_limit(10)
            })
            .await
            .unwrap()
            .traces
            .is_empty()
    );
}
