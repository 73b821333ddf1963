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
//! cluster, through the `Distributed` tables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use datatracing_core::{AttributeValue, Attributes, Link, LinkType, TraceId, TraceQuery};
use datatracing_store::{TraceReader, TraceWriter};
use datatracing_store_clickhouse::schema::Schema;
use datatracing_store_clickhouse::{
    ClickHouseConfig, ClickHouseMetrics, ClickHouseReader, ClickHouseStore,
};
use datatracing_store_contract::{Fixture, fresh_trace_id, simple_span, span_id};
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
    let server = server();
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
const SHARDED: [(&str, &str); 6] = [
    ("spans", "cityHash64(trace_id)"),
    ("span_index", "cityHash64(trace_id)"),
    ("trace_bounds", "cityHash64(trace_id)"),
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
    assert_eq!(again.version, 6);

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
        "the six storage tables and schema_migrations (each once, though migrate ran twice): {replicated:#?}"
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
        // Migration 5 added the tenant to every table but the bounds (keyed by trace).
        assert_eq!(
            cols.iter().any(|(n, _)| n == "tenant"),
            table != "trace_bounds",
            "{table}: {cols:?}"
        );
        assert_eq!(cols, columns(&db, &local).await, "{table} and {local}");
    }
    // The views in force after migration 6, each from spans_local into a `_local` table.
    let views: BTreeSet<&str> = built
        .iter()
        .filter(|t| t.engine == "MaterializedView")
        .map(|t| t.name.as_str())
        .collect();
    let expected_views = [
        ("span_index_v3_mv", "span_index_local"),
        ("trace_bounds_v2_mv", "trace_bounds_local"),
        ("span_names_v2_mv", "span_names_local"),
        ("span_links_v3_mv", "span_links_local"),
        ("span_attributes_v2_mv", "span_attributes_local"),
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
    root.links = vec![Link {
        trace_id: upstream,
        span_id: span_id(1),
        link_type: LinkType::DataDependency,
        attributes: Attributes::from([(
            datatracing_core::conventions::LINK_DATASET.to_string(),
            AttributeValue::from("raw"),
        )]),
    }];
    let child = simple_span(t, 2, Some(1), &svc, start.saturating_add_nanos(10), 500);
    store.write(vec![root, child].into()).await.unwrap();
    for (table, rows) in [
        ("spans_local", 2),
        ("span_index_local", 2),
        ("trace_bounds_local", 1),
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
    let linked: Vec<TraceId> = reader
        .search(&TraceQuery {
            linked_trace: Some(upstream),
            ..TraceQuery::with_limit(10)
        })
        .await
        .unwrap()
        .traces
        .iter()
        .map(|s| s.trace_id)
        .collect();
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
    admin.recreate_missing().await.unwrap();
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
