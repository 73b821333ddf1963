//! The operator and ClickHouse storage it does not control alone, on a real API server and
//! a real ClickHouse engine: a second pipeline pointed at a database another pipeline owns
//! is refused (its retention and deletion leave the owner's data alone), and schema or TTLs
//! changed behind the operator's back are reported and repaired on resync.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Operator, clickhouse_query, wait_for};
use datatracing_operator::crd::TracingPipeline;
use datatracing_testkit::clickhouse::{ClickHouse, unique_database};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const OPERATOR_NS: &str = "datatracing-system";
const WAIT: Duration = Duration::from_secs(60);

async fn apply(api: &Api<TracingPipeline>, name: &str, storage: Value) {
    let body = json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
        "metadata": {"name": name},
        "spec": {"storage": storage}
    });
    api.patch(
        name,
        &PatchParams::apply("tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

/// `RetentionApplied` of `name` once its status describes its generation, if `status`.
async fn retention(api: &Api<TracingPipeline>, name: &str, status: &str) -> Option<Condition> {
    let p = api.get(name).await.ok()?;
    let s = p.status?;
    if s.observed_generation != p.metadata.generation {
        return None;
    }
    s.conditions
        .into_iter()
        .find(|c| c.type_ == "RetentionApplied" && c.status == status)
}

/// Notes of the events about `name` in `ns` with `reason`.
async fn event_notes(admin: &kube::Client, ns: &str, name: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| e.note)
        .collect()
}

async fn sql(ch: &ClickHouse, q: &str) -> String {
    clickhouse_query(ch.url(), ch.user(), ch.password(), q).await
}

async fn spans_engine(ch: &ClickHouse, db: &str) -> String {
    sql(
        ch,
        &format!(
            "SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = 'spans'"
        ),
    )
    .await
}

/// Pipeline reconciles the operator has run so far.
async fn reconciles(op: &Operator) -> u64 {
    let text = op.metrics().await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(
                "datatracing_operator_reconciles_total{controller=\"tracingpipeline\"} ",
            )?
            .parse()
            .ok()
        })
        .unwrap_or(0)
}

/// Waits for two more pipeline reconciles: the later one started after the earlier one's
/// status write reached the operator's cache, so it checks for drift rather than applying.
async fn settled(op: &Operator) {
    let start = reconciles(op).await;
    wait_for("two more reconciles", WAIT, || async {
        (reconciles(op).await >= start + 2).then_some(())
    })
    .await;
}

/// Defect 1 of issue 15: a second pipeline (another namespace) with the same ClickHouse
/// database was accepted, set its own TTL on the first one's tables (3 days instead of 30)
/// and, deleted with `deletionPolicy: Delete`, dropped the first one's live database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_pipeline_on_an_owned_database_is_refused() {
    let cluster = Cluster::start().await;
    let ch = tokio::task::spawn_blocking(ClickHouse::shared)
        .await
        .unwrap();
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace("team-s").await;
    cluster.namespace("team-t").await;
    let token = cluster.operator_token(OPERATOR_NS, &[]).await;
    let op = Operator::start(&cluster, &token, "op-s", OPERATOR_NS);
    let first: Api<TracingPipeline> = Api::namespaced(cluster.admin.clone(), "team-s");
    let second: Api<TracingPipeline> = Api::namespaced(cluster.admin.clone(), "team-t");
    let db = unique_database("shared");
    let storage = |days: u32| {
        json!({"url": ch.url(), "database": db, "user": ch.user(),
               "retentionDays": days, "deletionPolicy": "Delete"})
    };

    apply(&first, "lake", storage(30)).await;
    wait_for("first: RetentionApplied True", WAIT, || {
        retention(&first, "lake", "True")
    })
    .await;

    apply(&second, "lake", storage(3)).await;
    let refused = wait_for("second: RetentionApplied False", WAIT, || {
        retention(&second, "lake", "False")
    })
    .await;
    assert_eq!(refused.reason, "StorageConflict", "{}", refused.message);
    assert!(
        refused.message.contains("team-s/lake"),
        "names the owner: {}",
        refused.message
    );
    wait_for("a StorageConflict event", WAIT, || async {
        (!event_notes(&cluster.admin, "team-t", "lake", "StorageConflict")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    let ttl = spans_engine(ch, &db).await;
    assert!(
        ttl.contains("toIntervalDay(30)"),
        "the owner's TTL stays: {ttl}"
    );
    let owner = sql(
        ch,
        &format!("SELECT owner FROM {db}.datatracing_owner ORDER BY claimed_at LIMIT 1"),
    )
    .await;
    assert_eq!(
        owner.trim(),
        "team-s/lake",
        "ownership recorded in ClickHouse"
    );

    // Deleting the refused pipeline (deletionPolicy: Delete) leaves the owner's database.
    second
        .delete("lake", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("second pipeline gone", WAIT, || async {
        matches!(second.get_opt("lake").await, Ok(None)).then_some(())
    })
    .await;
    let tables = sql(
        ch,
        &format!("SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'spans'"),
    )
    .await;
    assert_eq!(tables.trim(), "1", "the owner's database survives");
    assert!(retention(&first, "lake", "True").await.is_some());

    // The owner's own deletion drops it.
    first
        .delete("lake", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("first pipeline gone", WAIT, || async {
        matches!(first.get_opt("lake").await, Ok(None)).then_some(())
    })
    .await;
    let dbs = sql(
        ch,
        &format!("SELECT count() FROM system.databases WHERE name = '{db}'"),
    )
    .await;
    assert_eq!(dbs.trim(), "0", "dropped by its owner");
    op.stop().await.unwrap();
}

/// Defect 2 of issue 15: a TTL changed or a database dropped outside the operator stayed
/// `RetentionSet` until the spec changed. Each resync now checks, reports the difference in
/// `RetentionApplied=False` (reason `StorageDrift`) and an event, and repairs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_drift_is_reported_and_repaired_on_resync() {
    let cluster = Cluster::start().await;
    let ch = tokio::task::spawn_blocking(ClickHouse::shared)
        .await
        .unwrap();
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace("team-d").await;
    let token = cluster.operator_token(OPERATOR_NS, &[]).await;
    // A short resync; the repair waits one retry_backoff, long enough to see the report.
    let op = Operator::start_with(&cluster, &token, "op-d", OPERATOR_NS, |c| {
        c.resync_interval = datatracing_core::ConfigDuration::from_secs(2);
        c.retry_backoff = datatracing_core::ConfigDuration::from_secs(3);
        c.max_retry_backoff = datatracing_core::ConfigDuration::from_secs(5);
    });
    let pipelines: Api<TracingPipeline> = Api::namespaced(cluster.admin.clone(), "team-d");
    let db = unique_database("drift");
    apply(
        &pipelines,
        "lake",
        json!({"url": ch.url(), "database": db, "user": ch.user(), "retentionDays": 30}),
    )
    .await;
    wait_for("RetentionApplied True", WAIT, || {
        retention(&pipelines, "lake", "True")
    })
    .await;

    // A TTL changed by hand (once the reconciles the pipeline's creation set off are over:
    // one of them may still apply retention and so repair the change unreported).
    settled(&op).await;
    sql(
        ch,
        &format!("ALTER TABLE {db}.spans MODIFY TTL toDateTime(start_time) + toIntervalDay(3)"),
    )
    .await;
    let drift = wait_for("drift reported", WAIT, || {
        retention(&pipelines, "lake", "False")
    })
    .await;
    assert_eq!(drift.reason, "StorageDrift", "{}", drift.message);
    assert!(
        drift.message.contains("spans keeps 3 days (spec: 30 days)"),
        "{}",
        drift.message
    );
    wait_for("repaired", WAIT, || retention(&pipelines, "lake", "True")).await;
    let ttl = spans_engine(ch, &db).await;
    assert!(ttl.contains("toIntervalDay(30)"), "{ttl}");

    // A materialized view dropped by hand: its table would silently stop filling.
    settled(&op).await;
    sql(ch, &format!("DROP VIEW {db}.trace_summaries_mv SYNC")).await;
    let drift = wait_for("lost view reported", WAIT, || {
        retention(&pipelines, "lake", "False")
    })
    .await;
    assert_eq!(drift.reason, "StorageDrift", "{}", drift.message);
    assert!(
        drift
            .message
            .contains(&format!("{db}.trace_summaries_mv is missing")),
        "{}",
        drift.message
    );
    let repaired = wait_for("view recreated", WAIT, || {
        retention(&pipelines, "lake", "True")
    })
    .await;
    assert!(
        repaired.message.contains("recreated trace_summaries_mv"),
        "{}",
        repaired.message
    );
    let views = sql(
        ch,
        &format!(
            "SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'trace_summaries_mv'"
        ),
    )
    .await;
    assert_eq!(views.trim(), "1");

    // The database dropped by hand.
    settled(&op).await;
    sql(ch, &format!("DROP DATABASE {db} SYNC")).await;
    let drift = wait_for("drop reported", WAIT, || {
        retention(&pipelines, "lake", "False")
    })
    .await;
    assert_eq!(drift.reason, "StorageDrift", "{}", drift.message);
    assert!(
        // (or, when the drop overlapped the check, what vanished halfway through)
        drift.message.contains("none of the trace tables") || drift.message.contains("disappeared"),
        "{}",
        drift.message
    );
    wait_for("recreated", WAIT, || retention(&pipelines, "lake", "True")).await;
    let ttl = spans_engine(ch, &db).await;
    assert!(ttl.contains("toIntervalDay(30)"), "{ttl}");
    let notes = event_notes(&cluster.admin, "team-d", "lake", "StorageDrift").await;
    assert!(notes.len() >= 3, "each drift has its event: {notes:?}");
    op.stop().await.unwrap();
}
