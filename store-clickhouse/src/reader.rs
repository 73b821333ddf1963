//! The ClickHouse read side: trace lookups and searches that prune by time bounds and
//! aggregate in ClickHouse. Opening a reader only connects and checks that the schema is in
//! place: it never creates or migrates tables and runs no insert batcher, so a query
//! process holds no write machinery and cannot change the database.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datatracing_config::ClickHouseConfig;
use datatracing_core::{Span, Timestamp, TraceId, TraceQuery, TraceSummary};
use datatracing_store::{Health, TraceReader};

use crate::admin::{ClickHouseAdmin, timed};
use crate::error::{Error, Result};
use crate::metrics::{ClickHouseMetrics, ReasonLabel};
use crate::rows::{MatchRow, SpanRow, SummaryRow};

struct Inner {
    admin: ClickHouseAdmin,
    metrics: ClickHouseMetrics,
    query_timeout: Duration,
    spans_table: String,
    index_table: String,
    /// `span_attributes` when the attribute index is on.
    attrs_table: Option<String>,
    bounds_table: String,
}

/// The ClickHouse-backed [`TraceReader`]. Cheap to clone.
#[derive(Clone)]
pub struct ClickHouseReader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClickHouseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseReader")
            .field("database", &self.inner.admin.schema().database)
            .finish_non_exhaustive()
    }
}

impl ClickHouseReader {
    /// Connects (waiting up to `connect_timeout` for the server) and verifies that the
    /// database holds the schema this binary reads. Never migrates, whatever
    /// `migrate_on_start` says: a database without the schema fails with
    /// [`Error::Schema`] naming what is missing and how to create it.
    pub async fn open(config: ClickHouseConfig, metrics: ClickHouseMetrics) -> Result<Self> {
        let admin = ClickHouseAdmin::connect(&config).await?;
        let version = admin.verify_schema().await?;
        tracing::info!(url = %config.url, database = %config.database, version, "ClickHouse reader opened (read-only: no migrations, no batcher)");
        Ok(Self::new(admin, metrics, config.query_timeout.get()))
    }

    /// A reader over an already connected and migrated database (the store's own reads).
    pub(crate) fn new(
        admin: ClickHouseAdmin,
        metrics: ClickHouseMetrics,
        query_timeout: Duration,
    ) -> Self {
        let schema = admin.schema();
        let inner = Inner {
            spans_table: schema.table("spans"),
            index_table: schema.table("span_index"),
            attrs_table: schema
                .attribute_index
                .then(|| schema.table("span_attributes")),
            bounds_table: schema.table("trace_bounds"),
            admin,
            metrics,
            query_timeout,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    fn query_error(&self, e: Error) -> datatracing_store::Error {
        self.inner
            .metrics
            .query_errors
            .get_or_create(&ReasonLabel { reason: e.reason() })
            .inc();
        tracing::warn!(error = %e, "ClickHouse query failed");
        e.into()
    }
}

#[async_trait]
impl Health for ClickHouseReader {
    fn backend(&self) -> &'static str {
        "clickhouse"
    }

    async fn health(&self) -> datatracing_store::Result<()> {
        self.inner
            .admin
            .ping()
            .await
            .map_err(|e| self.query_error(e))
    }
}

#[async_trait]
impl TraceReader for ClickHouseReader {
    async fn get_trace(&self, trace_id: TraceId) -> datatracing_store::Result<Option<Vec<Span>>> {
        let i = &self.inner;
        // The scalar subqueries read trace_bounds (ordered by trace id) and become constants
        // before the main query is planned, so it reads only the partitions in the bounds.
        let sql = format!(
            "SELECT ?fields FROM {spans} \
             WHERE trace_id = unhex(?) \
               AND start_time >= (SELECT min(start_min) FROM {bounds} WHERE trace_id = unhex(?)) \
               AND start_time <= (SELECT max(start_max) FROM {bounds} WHERE trace_id = unhex(?)) \
             ORDER BY start_time, span_id LIMIT 1 BY span_id",
            spans = i.spans_table,
            bounds = i.bounds_table
        );
        let hex = trace_id.to_string();
        let rows: Vec<SpanRow> = timed(
            i.query_timeout,
            "get trace",
            i.admin
                .client()
                .query(&sql)
                .bind(&hex)
                .bind(&hex)
                .bind(&hex)
                .fetch_all::<SpanRow>(),
        )
        .await
        .map_err(|e| self.query_error(e))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let spans = rows
            .into_iter()
            .map(Span::try_from)
            .collect::<Result<Vec<_>>>()
            .map_err(|e| self.query_error(e))?;
        Ok(Some(spans))
    }

    async fn search(&self, q: &TraceQuery) -> datatracing_store::Result<Vec<TraceSummary>> {
        let i = &self.inner;
        // Step 1 reads only the narrow index table, ordered for exactly these filters.
        let mut sql = String::new();
        let mut binds: Vec<Bindable> = Vec::new();
        if let Some(s) = &q.service {
            sql.push_str(" AND service = ?");
            binds.push(Bindable::Str(s.clone()));
        }
        if let Some(o) = &q.operation {
            sql.push_str(" AND operation = ?");
            binds.push(Bindable::Str(o.clone()));
        }
        if let Some(st) = q.status {
            sql.push_str(" AND status = ?");
            binds.push(Bindable::Str(st.as_str().to_string()));
        }
        push_time_bounds(&mut sql, &mut binds, q);
        if let Some(d) = q.min_duration_nanos {
            sql.push_str(" AND duration_ns >= ?");
            binds.push(Bindable::I64(d));
        }
        if let Some(d) = q.max_duration_nanos {
            sql.push_str(" AND duration_ns <= ?");
            binds.push(Bindable::I64(d));
        }
        for f in &q.attributes {
            match (&f.value, &i.attrs_table) {
                (Some(v), Some(attrs_table)) => {
                    // Equality goes through span_attributes, ordered by (key, value, time):
                    // a key range, instead of reading every span's attribute map.
                    sql.push_str(&format!(
                        " AND (trace_id, span_id) IN (SELECT trace_id, span_id FROM {} WHERE key = ? AND value = ?",
                        attrs_table
                    ));
                    binds.push(Bindable::Str(f.key.clone()));
                    binds.push(Bindable::Str(v.clone()));
                    push_time_bounds(&mut sql, &mut binds, q);
                    sql.push(')');
                }
                (Some(v), None) => {
                    sql.push_str(" AND attributes[?] = ? AND mapContains(attributes, ?)");
                    binds.push(Bindable::Str(f.key.clone()));
                    binds.push(Bindable::Str(v.clone()));
                    binds.push(Bindable::Str(f.key.clone()));
                }
                (None, _) => {
                    sql.push_str(" AND mapContains(attributes, ?)");
                    binds.push(Bindable::Str(f.key.clone()));
                }
            }
        }
        let limit = q.limit.max(1);
        // Fast path: the newest `window` matching rows, grouped. When they hold at least
        // `limit` traces, those are exactly the `limit` traces whose latest matching span is
        // newest (a trace's latest span is among the newest rows if the trace is). A top-N
        // read is much cheaper than aggregating every matching row of a long time range.
        let window = (limit * 50).min(100_000);
        let fast = format!(
            "SELECT trace_id, toUnixTimestamp64Nano(max(start_time)) AS latest, \
                    toUInt64(sum(count()) OVER ()) AS scanned \
             FROM (SELECT trace_id, start_time FROM {index} WHERE 1{sql} \
                   ORDER BY start_time DESC, trace_id ASC LIMIT {window}) \
             GROUP BY trace_id ORDER BY latest DESC, trace_id ASC LIMIT {limit}",
            index = i.index_table
        );
        let exact = format!(
            "SELECT trace_id, toUnixTimestamp64Nano(max(start_time)) AS latest, toUInt64(0) AS scanned \
             FROM {index} WHERE 1{sql} GROUP BY trace_id ORDER BY latest DESC, trace_id ASC LIMIT {limit}",
            index = i.index_table
        );
        let run = |sql: String, binds: Vec<Bindable>| async move {
            let mut query = i.admin.client().query(&sql);
            for b in binds {
                query = match b {
                    Bindable::Str(s) => query.bind(s),
                    Bindable::I64(v) => query.bind(v),
                };
            }
            timed(i.query_timeout, "search", query.fetch_all::<MatchRow>()).await
        };
        let mut matches = run(fast, binds.clone())
            .await
            .map_err(|e| self.query_error(e))?;
        let truncated = matches
            .first()
            .is_some_and(|m| m.scanned as usize >= window);
        if matches.len() < limit && truncated {
            // Too many rows per trace in the window: fall back to aggregating everything.
            matches = run(exact, binds).await.map_err(|e| self.query_error(e))?;
        }
        if matches.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<TraceId> = matches
            .iter()
            .map(|m| TraceId::from_bytes(m.trace_id))
            .collect();
        let list = hex_list(&ids);
        let root_key = "tuple(parent_id != unhex('0000000000000000'), start_time, span_id)";
        let summary_sql = format!(
            "SELECT trace_id, \
                    toString(argMin(service, {root_key})) AS root_service, \
                    toString(argMin(operation, {root_key})) AS root_operation, \
                    toUnixTimestamp64Nano(min(start_time)) AS start_ns, \
                    toUnixTimestamp64Nano(max(end_time)) - toUnixTimestamp64Nano(min(start_time)) AS duration_ns, \
                    uniqExact(span_id) AS span_count, \
                    uniqExactIf(span_id, status IN ('ERROR', 'TIMEOUT')) AS error_count, \
                    arraySort(groupUniqArray(toString(service))) AS services \
             FROM {spans} \
             WHERE trace_id IN ({list}) \
               AND start_time >= (SELECT min(start_min) FROM {bounds} WHERE trace_id IN ({list})) \
               AND start_time <= (SELECT max(start_max) FROM {bounds} WHERE trace_id IN ({list})) \
             GROUP BY trace_id",
            spans = i.spans_table,
            bounds = i.bounds_table,
        );
        let rows: Vec<SummaryRow> = timed(
            i.query_timeout,
            "search summaries",
            i.admin
                .client()
                .query(&summary_sql)
                .fetch_all::<SummaryRow>(),
        )
        .await
        .map_err(|e| self.query_error(e))?;
        // Keep the order of the first step.
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = rows.iter().find(|r| r.trace_id == *id.as_bytes()) {
                out.push(TraceSummary {
                    trace_id: id,
                    root_service: r.root_service.clone(),
                    root_operation: r.root_operation.clone(),
                    start_time: Timestamp::from_unix_nanos(r.start_ns),
                    duration_nanos: r.duration_ns.max(0),
                    span_count: r.span_count,
                    error_count: r.error_count,
                    services: r.services.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// `AND start_time` bounds of a search, for the index table and for the attribute subquery
/// (both are partitioned and ordered by time, so each needs its own bounds to prune).
fn push_time_bounds(sql: &mut String, binds: &mut Vec<Bindable>, q: &TraceQuery) {
    if let Some(t) = q.start {
        sql.push_str(" AND start_time >= fromUnixTimestamp64Nano(toInt64(?))");
        binds.push(Bindable::I64(t.unix_nanos()));
    }
    if let Some(t) = q.end {
        sql.push_str(" AND start_time <= fromUnixTimestamp64Nano(toInt64(?))");
        binds.push(Bindable::I64(t.unix_nanos()));
    }
}

#[derive(Clone)]
enum Bindable {
    Str(String),
    I64(i64),
}

fn hex_list(ids: &[TraceId]) -> String {
    ids.iter()
        .map(|t| format!("unhex('{t}')"))
        .collect::<Vec<_>>()
        .join(", ")
}
