//! The clustered schema (`storage.clickhouse.cluster`) against the real ClickHouse engine,
//! as close to a cluster as one embedded engine gets (ADR 0009, "ClickHouse at scale").
//!
//! The server is `tools/chdb-http --cluster dtc`: cluster `dtc` is one shard whose one
//! replica is the engine itself, so the `Distributed` tables read and write the `_local`
//! tables in-process. chdb has no Keeper and no distributed DDL queue, so the front removes
//! ` ON CLUSTER dtc` and maps `ReplicatedXMergeTree('<path>', '{replica}'[, args])` to
//! `XMergeTree([args])`; everything else, the column lists, the `Distributed` engines and
//! their sharding keys, the materialized views and every read and write, runs as the store
//! generated it. The first test checks that the front rewrote exactly those statements,
//! exactly that way, so the suite cannot pass by testing the single-node layout. The
//! storage contract then runs on this layout: a writer and a reader configured for the
//! cluster, through the `Distributed` tables. A second front lists the engine as two shards
//! of `dtc` (`--shards 2`), where the engine refuses what it refuses only on several shards
//! (a plain `IN` over a `Distributed` table inside a query over one); every backfill and
//! every query shape of the reader runs there and must be accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use datatracing_core::{
    AttributeFilter, AttributeOp, AttributeValue, Attributes, DurationScope, Link, LinkType,
    TraceId, TraceQuery,
};
use datatracing_store::{TraceReader, TraceWriter};
use datatracing_store_clickhouse::schema::Schema;
use datatracing_store_clickhouse::{
    ClickHouseConfig, ClickHouseMetrics, ClickHouseReader, ClickHouseStore,
};
use datatracing_store_contract::{Fixture, fresh_trace_id, page_ids, simple_span, span_id};
use datatracing_testkit::clickhouse::{ChdbOptions, ClickHouse, unique_database};

const CLUSTER: &str = "dtc";

/// One `--cluster` front for every test in this file (each uses its own database).
fn server() -> &'static ClickHouse {
    static SERVER: OnceLock<ClickHouse> = OnceLock::new();
    SERVER.get_or_init(|| {
        ClickHouse::start_chdb(ChdbOptions {
            cluster: Some(CLUSTER.into()),
            ..ChdbOptions::default()
        })
    })
}

fn config(prefix: &str) -> ClickHouseConfig {
    let server = server();
    ClickHouseConfig {
        url: server.url().to_string(),
        user: server.user().to_string(),
        password: server.password().to_string(),
        database: unique_database(prefix),
        cluster: Some(CLUSTER.into()),
        // The optional attribute index too, so all of the clustered DDL runs.
        attribute_index: true,
        ..ClickHouseConfig::default()
    }
}

fn client(db: &str) -> clickhouse::Client {
    client_of(server(), db)
}

/// A ClickHouse client for `db` on `server`.
fn client_of(server: &ClickHouse, db: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(server.url())
        .with_user(server.user())
        .with_password(server.password())
        .with_database(db)
}

/// What one node can run of a clustered statement, computed here independently of the
/// front's regular expressions: without ` ON CLUSTER dtc`, and a Replicated engine as its
/// non-replicated form with the same trailing parameters.
fn single_node_form(sql: &str) -> String {
    let s = sql.replace(&format!(" ON CLUSTER {CLUSTER}"), "");
    let Some(at) = s.find("ENGINE = Replicated") else {
        return s;
    };
    let name = at + "ENGINE = ".len();
    let open = name + s[name..].find('(').unwrap();
    let replica = "'{replica}'";
    let mut rest = open + s[open..].find(replica).unwrap() + replica.len();
    if s[rest..].starts_with(", ") {
        rest += 2;
    }
    format!(
        "{}{}({}",
        &s[..name],
        &s[name + "Replicated".len()..open],
        &s[rest..]
    )
}

#[derive(serde::Deserialize)]
struct Rewrite {
    original: String,
    rewritten: String,
}

/// The front's rewrites of statements naming database `db`.
fn rewrites_of(db: &str) -> Vec<Rewrite> {
    let all: Vec<Rewrite> = serde_json::from_str(&server().cluster_rewrites()).unwrap();
    all.into_iter()
        .filter(|r| {
            r.original.contains(&format!("{db}.")) || r.original.contains(&format!(" {db} "))
        })
        .collect()
}

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct TableInfo {
    name: String,
    engine: String,
    engine_full: String,
    create_table_query: String,
}

async fn tables(db: &str) -> Vec<TableInfo> {
    client(db)
        .query(
            "SELECT name, engine, engine_full, create_table_query FROM system.tables \
             WHERE database = ? ORDER BY name",
        )
        .bind(db)
        .fetch_all::<TableInfo>()
        .await
        .unwrap()
}

async fn columns(db: &str, table: &str) -> Vec<(String, String)> {
    client(db)
        .query(
            "SELECT name, type FROM system.columns WHERE database = ? AND table = ? \
             ORDER BY position",
        )
        .bind(db)
        .bind(table)
        .fetch_all::<(String, String)>()
        .await
        .unwrap()
}

async fn count(db: &str, table: &str) -> u64 {
    client(db)
        .query(&format!("SELECT count() FROM {db}.{table}"))
        .fetch_one::<u64>()
        .await
        .unwrap()
}

/// The storage tables and the key each `Distributed` table shards by.
const SHARDED: [(&str, &str); 7] = [
    ("spans", "cityHash64(trace_id)"),
    ("span_index", "cityHash64(trace_id)"),
    ("trace_bounds", "cityHash64(trace_id)"),
    ("trace_summaries", "cityHash64(trace_id)"),
    ("span_attributes", "cityHash64(trace_id)"),
    ("span_names", "cityHash64(service)"),
    ("span_links", "cityHash64(target_trace_id)"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clustered_schema_runs_as_generated_and_holds_what_is_written() {
    let config = config("cluster");
    let db = config.database.clone();
    let store = ClickHouseStore::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let admin = store.admin();
    let again = admin.migrate().await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(again.version, 9);

    // The front changed exactly the generated statements that name the cluster, each into
    // its single-node form; the backfills (no ON CLUSTER) reached the engine unchanged.
    let schema: &Schema = admin.schema();
    assert_eq!(schema.cluster.as_deref(), Some(CLUSTER));
    let mut generated = vec![schema.create_database(), schema.create_migrations_table()];
    generated.extend(schema.migrations().into_iter().flat_map(|m| m.statements));
    let clustered: BTreeSet<&String> = generated
        .iter()
        .filter(|s| s.contains(&format!(" ON CLUSTER {CLUSTER}")))
        .collect();
    assert_eq!(
        clustered.len(),
        generated
            .iter()
            .filter(|s| !s.starts_with("INSERT"))
            .count(),
        "every DDL statement is clustered"
    );
    let rewrites = rewrites_of(&db);
    let originals: BTreeSet<&String> = rewrites.iter().map(|r| &r.original).collect();
    assert_eq!(originals, clustered, "rewritten: exactly the clustered DDL");
    for r in &rewrites {
        assert_eq!(r.rewritten, single_node_form(&r.original));
        assert!(!r.rewritten.contains("ON CLUSTER") && !r.rewritten.contains("Replicated"));
    }
    let replicated: BTreeSet<&str> = rewrites
        .iter()
        .filter(|r| r.original.contains("ENGINE = Replicated"))
        .map(|r| r.original.as_str())
        .collect();
    assert_eq!(
        replicated.len(),
        SHARDED.len() + 1,
        "the seven storage tables and schema_migrations (each once, though migrate ran twice): {replicated:#?}"
    );

    // What the engine built: a Distributed table over each `_local` table, sharded by the
    // key the layout promises, with the same columns (the ALTERs reached both).
    let built = tables(&db).await;
    let find = |name: &str| {
        built
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name} missing: {built:#?}"))
    };
    for (table, key) in SHARDED {
        let local = format!("{table}_local");
        let front = find(table);
        assert_eq!(front.engine, "Distributed", "{table}");
        assert_eq!(
            front.engine_full,
            format!("Distributed('{CLUSTER}', '{db}', '{local}', {key})"),
            "{table}"
        );
        let storage = find(&local);
        assert!(
            storage.engine.ends_with("MergeTree") && !storage.engine.starts_with("Replicated"),
            "{local}: {}",
            storage.engine
        );
        let cols = columns(&db, table).await;
        // Migration 5 added the tenant to every table but the bounds (keyed by trace);
        // migration 7's summaries have it from the start.
        assert_eq!(
            cols.iter().any(|(n, _)| n == "tenant"),
            table != "trace_bounds",
            "{table}: {cols:?}"
        );
        assert_eq!(cols, columns(&db, &local).await, "{table} and {local}");
    }
    // The views in force after migration 9, each from spans_local into a `_local` table.
    let views: BTreeSet<&str> = built
        .iter()
        .filter(|t| t.engine == "MaterializedView")
        .map(|t| t.name.as_str())
        .collect();
    let expected_views = [
        ("span_index_v3_mv", "span_index_local"),
        ("span_names_v2_mv", "span_names_local"),
        ("span_links_v3_mv", "span_links_local"),
        ("span_attributes_v2_mv", "span_attributes_local"),
        ("trace_summaries_mv", "trace_summaries_local"),
    ];
    assert_eq!(
        views,
        expected_views
            .iter()
            .map(|(v, _)| *v)
            .collect::<BTreeSet<_>>()
    );
    for (view, target) in expected_views {
        let q = &find(view).create_table_query;
        assert!(q.contains(&format!(" TO {db}.{target} ")), "{view}: {q}");
        assert!(q.contains(&format!("FROM {db}.spans_local")), "{view}: {q}");
    }

    // Written through the store's writer (into the Distributed `spans`), every derived
    // table gets its rows on the shard's `_local` tables, and a reader configured for the
    // cluster finds them through the Distributed tables.
    let t = fresh_trace_id();
    let upstream = fresh_trace_id();
    let svc = format!("svc-{db}");
    let start = datatracing_core::Timestamp::now().saturating_add_nanos(-60_000_000_000);
    let mut root = simple_span(t, 1, None, &svc, start, 1_000);
    root.attributes = Attributes::from([("dataset".to_string(), AttributeValue::from("orders"))]);
    root.links = vec![raw_dependency(upstream)];
    let child = simple_span(t, 2, Some(1), &svc, start.saturating_add_nanos(10), 500);
    store.write(vec![root, child].into()).await.unwrap();
    for (table, rows) in [
        ("spans_local", 2),
        ("span_index_local", 2),
        ("trace_bounds_local", 0),
        ("trace_summaries_local", 1),
        ("span_names_local", 2),
        ("span_links_local", 1),
        ("span_attributes_local", 1),
    ] {
        assert_eq!(count(&db, table).await, rows, "{table}");
    }
    let reader = ClickHouseReader::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let got = reader
        .get_trace(t)
        .await
        .unwrap()
        .expect("trace is read back");
    assert_eq!(got.len(), 2);
    let found = reader
        .search(&TraceQuery {
            service: Some(svc.clone()),
            ..TraceQuery::with_limit(10)
        })
        .await
        .unwrap();
    assert_eq!(found.traces.len(), 1);
    assert_eq!(found.traces[0].trace_id, t);
    let linked: Vec<TraceId> = page_ids(
        &reader,
        &TraceQuery {
            linked_trace: Some(upstream),
            ..TraceQuery::with_limit(10)
        },
    )
    .await;
    assert_eq!(
        linked,
        vec![t],
        "the reverse-link index, through span_links"
    );

    // Retention changes the storage tables (the `_local` ones) through clustered ALTERs.
    let report = admin.set_retention(30).await.unwrap();
    assert_eq!(
        report.changed,
        [
            "spans",
            "span_index",
            "trace_bounds",
            "span_names",
            "span_links",
            "trace_summaries",
            "span_attributes"
        ]
        .map(|t| format!("{t}_local"))
        .to_vec()
    );
    assert!(
        admin
            .retention()
            .await
            .unwrap()
            .iter()
            .all(|r| r.days == Some(30))
    );

    // A lost storage table comes back with every statement run again, backfills included
    // (they read and write through the Distributed tables).
    client(&db)
        .query(&format!("DROP TABLE {db}.span_names_local"))
        .execute()
        .await
        .unwrap();
    assert_eq!(
        admin.recreate_missing().await.unwrap(),
        ["span_names_local"]
    );
    assert_eq!(count(&db, "span_names").await, 2, "refilled from spans");

    // Deleting the storage drops the clustered database.
    store.close().await.unwrap();
    admin.drop_database().await.unwrap();
    let left: u64 = client("default")
        .query("SELECT count() FROM system.databases WHERE name = ?")
        .bind(&db)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert!(
        rewrites_of(&db).iter().any(
            |r| r.original == format!("DROP DATABASE IF EXISTS {db} ON CLUSTER {CLUSTER} SYNC")
        ),
        "the drop was clustered too"
    );
}

#[test]
fn the_single_node_form_keeps_trailing_engine_parameters() {
    assert_eq!(
        single_node_form(
            "CREATE TABLE d.t ON CLUSTER dtc (v UInt32) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/d/t', '{replica}', v) ORDER BY v"
        ),
        "CREATE TABLE d.t (v UInt32) ENGINE = ReplacingMergeTree(v) ORDER BY v"
    );
    assert_eq!(
        single_node_form(
            "CREATE TABLE d.t ON CLUSTER dtc (v UInt32) ENGINE = ReplicatedMergeTree('/p', '{replica}') ORDER BY v"
        ),
        "CREATE TABLE d.t (v UInt32) ENGINE = MergeTree() ORDER BY v"
    );
}

struct Ch {
    store: ClickHouseStore,
    reader: ClickHouseReader,
}

impl Fixture for Ch {
    fn writer(&self) -> &dyn TraceWriter {
        &self.store
    }
    fn reader(&self) -> &dyn TraceReader {
        &self.reader
    }
}

async fn make() -> Ch {
    let config = config("clcontract");
    let store = ClickHouseStore::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let reader = ClickHouseReader::open(config, ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    Ch { store, reader }
}

mod contract {
    use super::make;
    datatracing_store_contract::trace_store_contract!(make);
}

/// A second front listing the engine as two shards of `dtc` (`--shards 2`): a read through
/// a `Distributed` table sees every row twice, and the engine applies what it applies only
/// to a query fanning out to several shards.
fn two_shards() -> &'static ClickHouse {
    static SERVER: OnceLock<ClickHouse> = OnceLock::new();
    SERVER.get_or_init(|| {
        ClickHouse::start_chdb(ChdbOptions {
            cluster: Some(CLUSTER.into()),
            cluster_shards: 2,
            ..ChdbOptions::default()
        })
    })
}

fn two_shard_client(db: &str) -> clickhouse::Client {
    client_of(two_shards(), db)
}

/// Each call's outcome, by name: the names of the refused ones and why, at the end.
#[derive(Default)]
struct Refusals(Vec<String>);

impl Refusals {
    fn check<T>(&mut self, name: &str, r: Result<T, impl std::fmt::Display>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(format!("{name}: {e}"));
                None
            }
        }
    }
}

/// Every query shape of the store on a cluster of two shards: a query over a `Distributed`
/// table whose `IN` reads another `Distributed` table without `GLOBAL` is refused there
/// (`distributed_product_mode = 'deny'`, code 288), which a one-shard cluster never checks.
/// Results are not the point here (each row is read twice); that each statement is accepted
/// is, with the searches' trace ids checked where reading rows twice cannot change them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_two_shards_no_statement_of_the_store_is_refused() {
    let server = two_shards();
    let config = ClickHouseConfig {
        url: server.url().to_string(),
        user: server.user().to_string(),
        password: server.password().to_string(),
        database: unique_database("cl2"),
        cluster: Some(CLUSTER.into()),
        attribute_index: true,
        ..ClickHouseConfig::default()
    };
    let db = config.database.clone();
    let ch = two_shard_client(&db);

    // The engine does check here: two shards, and the refusal is live.
    let shards: u64 = two_shard_client("default")
        .query("SELECT count() FROM system.clusters WHERE cluster = ?")
        .bind(CLUSTER)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(shards, 2);

    // Migrating runs every backfill (with the engine's default
    // `parallel_distributed_insert_select = 2`, each shard runs an INSERT ... SELECT
    // between its local tables).
    let store = ClickHouseStore::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let refused = ch
        .query(&format!(
            "SELECT count() FROM {db}.span_index WHERE trace_id IN (SELECT trace_id FROM {db}.span_index)"
        ))
        .fetch_one::<u64>()
        .await
        .expect_err("a double-distributed IN is refused on two shards")
        .to_string();
    assert!(
        refused.contains("DISTRIBUTED_IN_JOIN_SUBQUERY_DENIED"),
        "{refused}"
    );

    let mut refusals = Refusals::default();
    // The backfills again, with the SELECT run on the receiving node and its result sent
    // through the Distributed table (`parallel_distributed_insert_select = 0`, the default
    // before ClickHouse made it 2, and what a cluster whose tables differ in sharding
    // gets): the shape the engine checks.
    let schema: &Schema = store.admin().schema();
    let backfills: Vec<String> = schema
        .migrations()
        .into_iter()
        .flat_map(|m| m.statements)
        .filter(|s| s.starts_with("INSERT"))
        .collect();
    assert_eq!(backfills.len(), 7, "{backfills:#?}");
    for (n, sql) in backfills.iter().enumerate() {
        let r = ch
            .clone()
            .with_setting("parallel_distributed_insert_select", "0")
            .query(sql)
            .execute()
            .await;
        refusals.check(&format!("backfill {n}"), r);
    }

    // Data for every filter: an upstream trace, two downstream traces that link to it and
    // carry attributes, and two wide traces (more rows than the search's first window).
    let svc = format!("svc-{db}");
    let up_svc = format!("up-{db}");
    let wide_svc = format!("wide-{db}");
    let start = datatracing_core::Timestamp::now().saturating_add_nanos(-600_000_000_000);
    let upstream = fresh_trace_id();
    let mut spans = vec![simple_span(upstream, 1, None, &up_svc, start, 1_000)];
    let downstream = [fresh_trace_id(), fresh_trace_id()];
    for (n, t) in downstream.iter().enumerate() {
        let at = start.saturating_add_nanos(1_000_000 * (n as i64 + 1));
        let mut root = simple_span(*t, 1, None, &svc, at, 5_000);
        root.attributes = Attributes::from([
            ("dataset".to_string(), AttributeValue::from("orders")),
            (
                datatracing_core::conventions::DATASET_INPUTS.to_string(),
                AttributeValue::from("raw"),
            ),
        ]);
        root.links = vec![raw_dependency(upstream)];
        spans.push(root);
        spans.push(simple_span(
            *t,
            2,
            Some(1),
            &svc,
            at.saturating_add_nanos(10),
            500,
        ));
    }
    let wide = [fresh_trace_id(), fresh_trace_id()];
    for (n, t) in wide.iter().enumerate() {
        let at = start.saturating_add_nanos(10_000_000 * (n as i64 + 1));
        for s in 0..60u64 {
            spans.push(simple_span(
                *t,
                s + 1,
                (s > 0).then_some(1),
                &wide_svc,
                at.saturating_add_nanos(s as i64 * 1_000),
                100,
            ));
        }
    }
    store.write(spans.into()).await.unwrap();

    let reader = ClickHouseReader::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let ids = |page: &datatracing_core::SearchPage| -> BTreeSet<TraceId> {
        page.traces.iter().map(|s| s.trace_id).collect()
    };
    let both: BTreeSet<TraceId> = downstream.iter().copied().collect();

    // Searches, one filter kind each, then paged (a page after a cursor excludes the
    // traces of earlier pages with a NOT IN): by service alone, by all the filters at
    // once, and over the wide traces.
    let base = TraceQuery {
        service: Some(svc.clone()),
        ..TraceQuery::with_limit(10)
    };
    let attr = |key: &str, op: AttributeOp| AttributeFilter {
        key: key.to_string(),
        op,
    };
    let searches = [
        ("service", base.clone()),
        (
            "attribute equality (span_attributes)",
            TraceQuery {
                attributes: vec![attr("dataset", AttributeOp::Eq("orders".into()))],
                ..base.clone()
            },
        ),
        (
            "attribute contains (span_attributes)",
            TraceQuery {
                attributes: vec![attr(
                    datatracing_core::conventions::DATASET_INPUTS,
                    AttributeOp::Contains("raw".into()),
                )],
                ..base.clone()
            },
        ),
        (
            "trace duration",
            TraceQuery {
                duration_scope: DurationScope::Trace,
                min_duration_nanos: Some(1),
                max_duration_nanos: Some(1_000_000_000),
                ..base.clone()
            },
        ),
        (
            "linked trace",
            TraceQuery {
                service: None,
                linked_trace: Some(upstream),
                ..base.clone()
            },
        ),
        (
            "linked service",
            TraceQuery {
                linked_service: Some(up_svc.clone()),
                ..base.clone()
            },
        ),
        (
            "dataset",
            TraceQuery {
                dataset: Some("raw".into()),
                ..base.clone()
            },
        ),
    ];
    for (name, q) in &searches {
        if let Some(page) = refusals.check(&format!("search by {name}"), reader.search(q).await) {
            assert_eq!(ids(&page), both, "search by {name}");
        }
    }
    let everything = TraceQuery {
        attributes: vec![
            attr("dataset", AttributeOp::Eq("orders".into())),
            attr(
                datatracing_core::conventions::DATASET_INPUTS,
                AttributeOp::Contains("raw".into()),
            ),
        ],
        duration_scope: DurationScope::Trace,
        min_duration_nanos: Some(1),
        max_duration_nanos: Some(1_000_000_000),
        linked_trace: Some(upstream),
        linked_service: Some(up_svc.clone()),
        dataset: Some("raw".into()),
        ..TraceQuery::with_limit(1)
    };
    // The wide traces: the first window (50 rows per trace asked, 100 here) holds one
    // trace, so the search also runs its exact form, with and without a cursor.
    let wide_query = TraceQuery {
        service: Some(wide_svc.clone()),
        duration_scope: DurationScope::Trace,
        min_duration_nanos: Some(1),
        ..TraceQuery::with_limit(1)
    };
    let by_service = TraceQuery {
        limit: 1,
        ..base.clone()
    };
    for (name, q, expected) in [
        ("service", &by_service, &both),
        ("every filter", &everything, &both),
        ("wide traces", &wide_query, &wide.iter().copied().collect()),
    ] {
        let mut seen = BTreeSet::new();
        let mut q = q.clone();
        for page_no in 0..3 {
            let Some(page) = refusals.check(
                &format!("search by {name}, page {page_no}"),
                reader.search(&q).await,
            ) else {
                break;
            };
            seen.extend(ids(&page));
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        if refusals.0.is_empty() {
            assert_eq!(&seen, expected, "paged search by {name}");
        }
    }

    // Trace reads (their time bounds are scalar subqueries over trace_summaries), lineage
    // and the name lists.
    let t = downstream[0];
    refusals.check("get trace", reader.get_trace(t).await);
    refusals.check(
        "get trace capped",
        reader.get_trace_capped(wide[0], 10).await,
    );
    refusals.check(
        "get traces capped",
        reader
            .get_traces_capped(&[t, downstream[1], wide[0]], 1_000)
            .await,
    );
    let first = refusals
        .check("trace spans", reader.trace_spans(wide[0], None, 5).await)
        .unwrap_or_default();
    if let Some(last) = first.last() {
        let after = datatracing_core::SpanCursor {
            trace_id: wide[0],
            start_nanos: last.start_time.unix_nanos(),
            span_id: last.span_id,
        };
        refusals.check(
            "trace spans after a cursor",
            reader.trace_spans(wide[0], Some(after), 5).await,
        );
    }
    refusals.check("summaries", reader.summaries(&downstream).await);
    refusals.check("links from", reader.links_from(&downstream, 10).await);
    refusals.check("links to", reader.links_to(&[upstream], 10).await);
    let window = datatracing_core::TimeWindow::default();
    refusals.check("services", reader.services(&window, 100).await);
    refusals.check("operations", reader.operations(&svc, &window, 100).await);

    assert!(
        refusals.0.is_empty(),
        "refused on two shards:\n{}",
        refusals.0.join("\n")
    );
    store.close().await.unwrap();
    store.admin().drop_database().await.unwrap();
}

/// A DATA_DEPENDENCY on span 1 of `upstream`, reading its `raw` dataset.
fn raw_dependency(upstream: TraceId) -> Link {
    Link {
        trace_id: upstream,
        span_id: span_id(1),
        link_type: LinkType::DataDependency,
        attributes: Attributes::from([(
            datatracing_core::conventions::LINK_DATASET.to_string(),
            AttributeValue::from("raw"),
        )]),
    }
}
