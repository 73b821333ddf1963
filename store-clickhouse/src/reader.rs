//! The ClickHouse read side: trace lookups and searches that prune by time bounds and
//! aggregate in ClickHouse. Opening a reader only connects and checks that the schema is in
//! place: it never creates or migrates tables and runs no insert batcher, so a query
//! process holds no write machinery and cannot change the database.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datatracing_config::ClickHouseConfig;
use datatracing_core::conventions::{DATASET_INPUTS, DATASET_OUTPUTS};
use datatracing_core::{
    AttributeOp, Link, LinkType, NumericOp, Operation, SearchCursor, SearchPage, Span, SpanCursor,
    SpanId, SpanKind, Tenant, TimeWindow, Timestamp, TraceId, TraceQuery, TraceSummary,
};
use datatracing_store::{
    CappedTrace, CrossLink, Health, TraceReader, cross_links, read_traces_one_by_one,
    traces_in_asked_order,
};

use crate::admin::{ClickHouseAdmin, timed};
use crate::error::{Error, Result};
use crate::metrics::{ClickHouseMetrics, ReasonLabel};
use crate::rows::{LinkRow, MatchRow, SpanLinksRow, SpanRow, SummaryRow, TraceLinksRow};

/// Most trace ids in one `IN (...)` list.
const IN_CHUNK: usize = 1000;

struct Inner {
    admin: ClickHouseAdmin,
    metrics: ClickHouseMetrics,
    query_timeout: Duration,
    spans_table: String,
    index_table: String,
    /// `trace_summaries` (migration 7): per trace and day, the summary states and the
    /// start bounds that prune reads of `spans`.
    summaries_table: String,
    names_table: String,
    links_table: String,
    /// The storage tables (`*_local` when clustered) of the tables placed by trace id, for
    /// subqueries that match the outer row's trace id on its own shard.
    spans_local: String,
    index_local: String,
    /// `span_attributes` (local when clustered) when the attribute index is on.
    attrs_local: Option<String>,
    /// `GLOBAL ` when clustered: before an `IN` whose subquery reads `span_links` or the
    /// whole `span_index`, rows that may live on any shard.
    global: &'static str,
}

/// The ClickHouse-backed [`TraceReader`]. Cheap to clone.
#[derive(Clone)]
pub struct ClickHouseReader {
    inner: Arc<Inner>,
    /// The tenant every read of this handle is confined to ([`TraceReader::for_tenant`]).
    tenant: Tenant,
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
            summaries_table: schema.table("trace_summaries"),
            names_table: schema.table("span_names"),
            links_table: schema.table("span_links"),
            spans_local: schema.local_table("spans"),
            index_local: schema.local_table("span_index"),
            attrs_local: schema
                .attribute_index
                .then(|| schema.local_table("span_attributes")),
            global: schema.global_in(),
            admin,
            metrics,
            query_timeout,
        };
        Self {
            inner: Arc::new(inner),
            tenant: Tenant::default_tenant(),
        }
    }

    /// `AND tenant = '…'` for every read. Inlined rather than bound so that each statement
    /// shape keeps its binds; safe because a [`Tenant`] only holds `[a-z0-9-]`.
    fn tenant_sql(&self) -> String {
        format!(" AND tenant = '{}'", self.tenant.as_str())
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
    fn for_tenant(&self, tenant: &Tenant) -> Arc<dyn TraceReader> {
        Arc::new(Self {
            inner: Arc::clone(&self.inner),
            tenant: tenant.clone(),
        })
    }

    async fn get_trace(&self, trace_id: TraceId) -> datatracing_store::Result<Option<Vec<Span>>> {
        self.read_trace(trace_id, None).await
    }

    async fn get_trace_capped(
        &self,
        trace_id: TraceId,
        max_spans: usize,
    ) -> datatracing_store::Result<Option<CappedTrace>> {
        let spans = self
            .read_trace(trace_id, Some(max_spans.saturating_add(1)))
            .await?;
        Ok(spans.and_then(|s| CappedTrace::from_overfetch(s, max_spans)))
    }

    async fn get_traces_capped(
        &self,
        traces: &[TraceId],
        max_spans: usize,
    ) -> datatracing_store::Result<Vec<(TraceId, CappedTrace)>> {
        if traces.is_empty() || max_spans == 0 {
            return Ok(Vec::new());
        }
        if traces.len() > IN_CHUNK {
            return read_traces_one_by_one(self, traces, max_spans).await;
        }
        let i = &self.inner;
        // One read for all, one span past the budget: when it fits, every trace is whole
        // and the answer is just the spans grouped; when not, who gets cut depends on the
        // order asked, which the loop of capped reads applies.
        let sql = format!(
            "SELECT ?fields FROM {spans} WHERE trace_id IN ({list}){tenant}{bounds} \
             ORDER BY trace_id, start_time, span_id LIMIT 1 BY trace_id, span_id LIMIT {n}",
            spans = i.spans_table,
            list = hex_list(traces),
            bounds = self.time_bounds(traces),
            tenant = self.tenant_sql(),
            n = max_spans.saturating_add(1),
        );
        let rows: Vec<SpanRow> = timed(
            i.query_timeout,
            "get traces",
            i.admin.client().query(&sql).fetch_all::<SpanRow>(),
        )
        .await
        .map_err(|e| self.query_error(e))?;
        if rows.len() > max_spans {
            return read_traces_one_by_one(self, traces, max_spans).await;
        }
        let spans = rows
            .into_iter()
            .map(Span::try_from)
            .collect::<Result<Vec<_>>>()
            .map_err(|e| self.query_error(e))?;
        Ok(traces_in_asked_order(traces, spans))
    }

    async fn trace_spans(
        &self,
        trace_id: TraceId,
        after: Option<SpanCursor>,
        limit: usize,
    ) -> datatracing_store::Result<Vec<Span>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .read_trace_page(trace_id, after, limit)
            .await?
            .unwrap_or_default())
    }

    async fn search(&self, q: &TraceQuery) -> datatracing_store::Result<SearchPage> {
        let (ids, next_cursor) = self.matching_traces(q).await?;
        if ids.is_empty() {
            return Ok(SearchPage::default());
        }
        let mut rows = self.summary_rows(&ids).await?;
        // Keep the order of the first step.
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(pos) = rows.iter().position(|r| r.trace_id == id) {
                out.push(rows.swap_remove(pos));
            }
        }
        Ok(SearchPage {
            traces: out,
            next_cursor,
        })
    }

    async fn search_ids(&self, q: &TraceQuery) -> datatracing_store::Result<Vec<TraceId>> {
        Ok(self.matching_traces(q).await?.0)
    }

    async fn services(
        &self,
        window: &TimeWindow,
        limit: usize,
    ) -> datatracing_store::Result<Vec<String>> {
        let i = &self.inner;
        let mut sql = Sql::default();
        names_window(window, &mut sql);
        let text = format!(
            "SELECT DISTINCT toString(service) AS s FROM {names} WHERE 1{tenant}{f} ORDER BY s LIMIT {limit}",
            names = i.names_table,
            tenant = self.tenant_sql(),
            f = sql.sql
        );
        let mut query = i.admin.client().query(&text);
        for b in sql.binds {
            query = b.bind(query);
        }
        timed(i.query_timeout, "services", query.fetch_all::<String>())
            .await
            .map_err(|e| self.query_error(e))
    }

    async fn operations(
        &self,
        service: &str,
        window: &TimeWindow,
        limit: usize,
    ) -> datatracing_store::Result<Vec<Operation>> {
        let i = &self.inner;
        let mut sql = Sql::default();
        sql.push(" AND service = ?", [Bindable::Str(service.to_string())]);
        names_window(window, &mut sql);
        // Ordered by name here and by (name, kind) below: the first `limit` of the final
        // order are among the first `limit + kinds` rows by name.
        let text = format!(
            "SELECT DISTINCT toString(operation) AS o, toString(kind) AS k FROM {names} WHERE 1{tenant}{f} \
             ORDER BY o LIMIT {n}",
            names = i.names_table,
            tenant = self.tenant_sql(),
            f = sql.sql,
            n = limit + SpanKind::ALL.len(),
        );
        let mut query = i.admin.client().query(&text);
        for b in sql.binds {
            query = b.bind(query);
        }
        let rows = timed(
            i.query_timeout,
            "operations",
            query.fetch_all::<(String, String)>(),
        )
        .await
        .map_err(|e| self.query_error(e))?;
        let mut out = rows
            .into_iter()
            .map(|(name, kind)| {
                let span_kind = kind
                    .parse::<SpanKind>()
                    .map_err(|e| Error::Client(format!("corrupt kind in span_names: {e}")))?;
                Ok(Operation { name, span_kind })
            })
            .collect::<Result<Vec<_>>>()
            .map_err(|e| self.query_error(e))?;
        out.sort();
        out.truncate(limit);
        Ok(out)
    }

    async fn summaries(&self, traces: &[TraceId]) -> datatracing_store::Result<Vec<TraceSummary>> {
        let mut out = Vec::with_capacity(traces.len());
        for chunk in traces.chunks(IN_CHUNK) {
            out.extend(self.summary_rows(chunk).await?);
        }
        Ok(out)
    }

    async fn links_from(
        &self,
        traces: &[TraceId],
        limit: usize,
    ) -> datatracing_store::Result<Vec<CrossLink>> {
        let i = &self.inner;
        let mut out = std::collections::BTreeSet::new();
        for chunk in traces.chunks(IN_CHUNK) {
            if out.len() >= limit {
                break;
            }
            // Each trace's links out, kept with its summary (migration 7): a key range of
            // 256-row granules per trace instead of its spans' links text. At most `n` per
            // trace are read; which ones is arbitrary, as `limit` allows.
            let sql = format!(
                "SELECT trace_id, arraySlice(groupUniqArrayArray(links_out), 1, {n}) AS links \
                 FROM {summaries} WHERE trace_id IN ({list}){tenant} GROUP BY trace_id",
                summaries = i.summaries_table,
                list = hex_list(chunk),
                tenant = self.tenant_sql(),
                n = limit - out.len(),
            );
            let rows = timed(
                i.query_timeout,
                "links from",
                i.admin.client().query(&sql).fetch_all::<TraceLinksRow>(),
            )
            .await
            .map_err(|e| self.query_error(e))?;
            let mut summarized = std::collections::HashSet::new();
            for r in rows {
                let from_trace = TraceId::from_bytes(r.trace_id);
                summarized.insert(from_trace);
                for (from_span, to_trace, to_span, link_type, dataset) in r.links {
                    out.insert(self.stored_link(
                        "trace_summaries",
                        (from_trace, SpanId::from_bytes(from_span)),
                        (to_trace, to_span),
                        &link_type,
                        dataset,
                    )?);
                }
            }
            // A trace with spans but no summary row (a day's row can leave with retention
            // before that day's last spans) has its links read from the spans.
            let missing: Vec<TraceId> = chunk
                .iter()
                .filter(|t| !summarized.contains(t))
                .copied()
                .collect();
            if !missing.is_empty() && out.len() < limit {
                self.links_from_spans(&missing, limit - out.len(), &mut out)
                    .await?;
            }
        }
        Ok(out.into_iter().take(limit).collect())
    }

    async fn links_to(
        &self,
        traces: &[TraceId],
        limit: usize,
    ) -> datatracing_store::Result<Vec<CrossLink>> {
        let i = &self.inner;
        let mut out = std::collections::BTreeSet::new();
        for chunk in traces.chunks(IN_CHUNK) {
            if out.len() >= limit {
                break;
            }
            // A key range per trace: span_links is ordered by the linked trace. A span
            // indexed twice (a retried insert, the migration's backfill) is read once.
            let sql = format!(
                "SELECT source_trace_id, source_span_id, target_trace_id, target_span_id, \
                        toString(link_type) AS link_type, dataset \
                 FROM {links} WHERE target_trace_id IN ({list}){tenant} \
                 LIMIT 1 BY source_trace_id, source_span_id, target_trace_id, target_span_id, link_type, dataset \
                 LIMIT {n}",
                links = i.links_table,
                tenant = self.tenant_sql(),
                list = hex_list(chunk),
                n = limit - out.len(),
            );
            let rows = timed(
                i.query_timeout,
                "links to",
                i.admin.client().query(&sql).fetch_all::<LinkRow>(),
            )
            .await
            .map_err(|e| self.query_error(e))?;
            for r in rows {
                out.insert(self.stored_link(
                    "span_links",
                    (
                        TraceId::from_bytes(r.source_trace_id),
                        SpanId::from_bytes(r.source_span_id),
                    ),
                    (r.target_trace_id, r.target_span_id),
                    &r.link_type,
                    r.dataset,
                )?);
            }
        }
        Ok(prefer_named(out).take(limit).collect())
    }
}

impl ClickHouseReader {
    /// The first step of a search: the ids of one page of matching traces, newest first,
    /// and the cursor for the next page.
    async fn matching_traces(
        &self,
        q: &TraceQuery,
    ) -> datatracing_store::Result<(Vec<TraceId>, Option<SearchCursor>)> {
        let i = &self.inner;
        // The snapshot is the server's clock: index rows carry the server time of their
        // insert (`ingested_at`). The first page bounds them by `now64(9)`, one value for the
        // whole query, and returns it (`snap`) for the cursor; later pages reuse it, so they
        // ignore spans inserted after the first page was read.
        let mut filters = Sql::default();
        match &q.cursor {
            Some(c) => filters.push(
                " AND ingested_at <= fromUnixTimestamp64Nano(toInt64(?))",
                [Bindable::I64(c.snapshot)],
            ),
            None => filters.push(" AND ingested_at <= now64(9)", []),
        }
        self.span_filters(q, &mut filters);
        if let Some((min, max)) = q.trace_duration_bounds() {
            // Whole-trace duration, from the spans table (ordered by trace id) for the
            // traces that have a matching span. Clustered, every row of a trace is on one
            // shard, so each shard answers for its own traces from its local tables.
            let cond = format!(
                " AND trace_id IN (SELECT trace_id FROM {spans} WHERE 1{tenant} AND trace_id IN \
                 (SELECT trace_id FROM {index} WHERE 1{f}) GROUP BY trace_id HAVING \
                 toUnixTimestamp64Nano(max(end_time)) - toUnixTimestamp64Nano(min(start_time)) BETWEEN ? AND ?)",
                spans = i.spans_local,
                index = i.index_local,
                tenant = self.tenant_sql(),
                f = filters.sql,
            );
            let mut binds = filters.binds.clone();
            binds.extend([Bindable::I64(min), Bindable::I64(max)]);
            filters.push(&cond, binds);
        }
        let limit = q.limit.max(1);
        let fetch = limit + 1;
        // Fast path: the newest `window` matching rows, grouped. When they hold at least
        // `fetch` traces, those are exactly the `fetch` traces whose latest matching span is
        // newest (a trace's latest span is among the newest rows if the trace is). A top-N
        // read is much cheaper than aggregating every matching row of a long time range.
        // The rows are those at or after the start of the `window`-th newest (ties at that
        // instant included, so the set does not depend on how ties are cut): a scalar
        // subquery finds that start with a bare `ORDER BY start_time DESC LIMIT`, which the
        // engine reads newest first from `span_index`'s projections (migration 7) and stops
        // after `window` rows (a second sort key, or `WITH TIES`, makes it read every
        // matching row), then the outer read is a short time range of the same projection.
        // That needs filters the projections hold; the others (attributes, datasets,
        // links, whole-trace durations) read `span_index` itself, where that shape would
        // read every matching row twice, so they keep one read of the newest rows.
        let projected = q.attributes.is_empty()
            && q.dataset.is_none()
            && q.linked_trace.is_none()
            && q.linked_service.is_none()
            && q.trace_duration_bounds().is_none();
        let window = (fetch * 50).min(100_000);
        // After a cursor, a page holds the traces whose latest matching row is before the
        // cursor's key (latest, trace id), and no trace with a matching row past it (its key
        // placed it on an earlier page).
        let mut having = String::new();
        let mut having_binds = Vec::new();
        if let Some(c) = &q.cursor {
            let k = Bindable::I64(c.latest_nanos);
            let id = Bindable::Str(c.trace_id.to_string());
            having = " HAVING latest < ? OR (latest = ? AND trace_id > unhex(?))".into();
            having_binds = vec![k.clone(), k, id];
        }
        let (fast, fast_binds) = match (&q.cursor, projected) {
            (None, true) => {
                let sql = format!(
                    "SELECT trace_id, toUnixTimestamp64Nano(max(start_time)) AS latest, \
                            toUInt64(sum(count()) OVER ()) AS scanned, toUnixTimestamp64Nano(now64(9)) AS snap \
                     FROM {index} WHERE 1{sql} AND start_time >= \
                           (SELECT min(start_time) FROM (SELECT start_time FROM {index} WHERE 1{sql} \
                            ORDER BY start_time DESC LIMIT {window})) \
                     GROUP BY trace_id ORDER BY latest DESC, trace_id ASC LIMIT {fetch}",
                    index = i.index_table,
                    sql = filters.sql,
                );
                let binds = filters
                    .binds
                    .iter()
                    .chain(&filters.binds)
                    .cloned()
                    .collect();
                (sql, binds)
            }
            (Some(c), true) => {
                // The window is the newest `window` rows at or before the cursor's key;
                // the outer read takes every matching row from its start on, those past
                // the key too, so that a trace of an earlier page has its true latest
                // and the cursor's condition (on the grouped rows, as the exact read's
                // HAVING) drops it. No "not on an earlier page" subquery: that one read
                // every matching row past the key a second time. `scanned` counts the
                // window's rows (at or before the key) before that condition drops any
                // trace, so a window full of an earlier page's rows is seen as truncated.
                let k = Bindable::I64(c.latest_nanos);
                let key = "fromUnixTimestamp64Nano(toInt64(?))";
                let sql = format!(
                    "SELECT trace_id, latest, scanned, snap FROM \
                     (SELECT trace_id, toUnixTimestamp64Nano(max(start_time)) AS latest, \
                             toUInt64(sum(countIf(start_time <= {key})) OVER ()) AS scanned, \
                             toUnixTimestamp64Nano(now64(9)) AS snap \
                      FROM {index} WHERE 1{sql} AND start_time >= \
                            (SELECT min(start_time) FROM (SELECT start_time FROM {index} WHERE 1{sql} \
                             AND start_time <= {key} ORDER BY start_time DESC LIMIT {window})) \
                      GROUP BY trace_id) \
                     WHERE latest < ? OR (latest = ? AND trace_id > unhex(?)) \
                     ORDER BY latest DESC, trace_id ASC LIMIT {fetch}",
                    index = i.index_table,
                    sql = filters.sql,
                );
                let binds = std::iter::once(k.clone())
                    .chain(filters.binds.iter().cloned())
                    .chain(filters.binds.iter().cloned())
                    .chain(std::iter::once(k))
                    .chain(having_binds.iter().cloned())
                    .collect();
                (sql, binds)
            }
            (cursor, false) => {
                // After a cursor: only rows at or before it, and no trace that also has a
                // matching row past it (clustered, that row is on the trace's shard, so
                // the local index answers).
                let mut window_rows = filters.clone();
                if let Some(c) = cursor {
                    let k = Bindable::I64(c.latest_nanos);
                    let id = Bindable::Str(c.trace_id.to_string());
                    window_rows.push(
                        " AND start_time <= fromUnixTimestamp64Nano(toInt64(?))",
                        [k.clone()],
                    );
                    window_rows.sql.push_str(&format!(
                        " AND trace_id NOT IN (SELECT trace_id FROM {index} WHERE 1{f} \
                         AND (start_time > fromUnixTimestamp64Nano(toInt64(?)) \
                         OR (start_time = fromUnixTimestamp64Nano(toInt64(?)) AND trace_id <= unhex(?))))",
                        index = i.index_local,
                        f = filters.sql
                    ));
                    window_rows.binds.extend(filters.binds.iter().cloned());
                    window_rows.binds.extend([k.clone(), k, id]);
                }
                let sql = format!(
                    "SELECT trace_id, toUnixTimestamp64Nano(max(start_time)) AS latest, \
                            toUInt64(sum(count()) OVER ()) AS scanned, toUnixTimestamp64Nano(now64(9)) AS snap \
                     FROM (SELECT trace_id, start_time FROM {index} WHERE 1{sql} \
                           ORDER BY start_time DESC, trace_id ASC LIMIT {window}) \
                     GROUP BY trace_id ORDER BY latest DESC, trace_id ASC LIMIT {fetch}",
                    index = i.index_table,
                    sql = window_rows.sql,
                );
                (sql, window_rows.binds)
            }
        };
        let exact = format!(
            "SELECT trace_id, toUnixTimestamp64Nano(max(start_time)) AS latest, toUInt64(0) AS scanned, \
                    toUnixTimestamp64Nano(now64(9)) AS snap \
             FROM {index} WHERE 1{sql} GROUP BY trace_id{having} ORDER BY latest DESC, trace_id ASC LIMIT {fetch}",
            index = i.index_table,
            sql = filters.sql,
        );
        let run = |sql: String, binds: Vec<Bindable>| async move {
            let mut query = i.admin.client().query(&sql);
            for b in binds {
                query = b.bind(query);
            }
            timed(i.query_timeout, "search", query.fetch_all::<MatchRow>()).await
        };
        let mut matches = run(fast, fast_binds)
            .await
            .map_err(|e| self.query_error(e))?;
        let truncated = match matches.first() {
            Some(m) => m.scanned as usize >= window,
            // A cursor page of the projected read drops earlier pages' traces after
            // counting its window: with none left, whether the window was full is unknown.
            None => projected && q.cursor.is_some(),
        };
        if matches.len() < fetch && truncated {
            // Too many rows per trace in the window: fall back to aggregating everything.
            let mut binds = filters.binds;
            binds.extend(having_binds);
            matches = run(exact, binds).await.map_err(|e| self.query_error(e))?;
        }
        let snapshot = q
            .cursor
            .map_or_else(|| matches.first().map_or(0, |m| m.snap), |c| c.snapshot);
        let next_cursor = (matches.len() > limit).then(|| {
            let last = &matches[limit - 1];
            SearchCursor {
                snapshot,
                latest_nanos: last.latest,
                trace_id: TraceId::from_bytes(last.trace_id),
                fingerprint: q.fingerprint(),
            }
        });
        matches.truncate(limit);
        let ids = matches
            .iter()
            .map(|m| TraceId::from_bytes(m.trace_id))
            .collect();
        Ok((ids, next_cursor))
    }

    /// A cross-trace link as `table` stores it: the type as text, the dataset `''` when the
    /// link names none.
    fn stored_link(
        &self,
        table: &str,
        (from_trace, from_span): (TraceId, SpanId),
        (to_trace, to_span): ([u8; 16], [u8; 8]),
        link_type: &str,
        dataset: String,
    ) -> datatracing_store::Result<CrossLink> {
        let link_type = link_type.parse::<LinkType>().map_err(|e| {
            self.query_error(Error::Client(format!("corrupt link type in {table}: {e}")))
        })?;
        Ok(CrossLink {
            from_trace,
            from_span,
            to_trace: TraceId::from_bytes(to_trace),
            to_span: SpanId::from_bytes(to_span),
            link_type,
            dataset: (!dataset.is_empty()).then_some(dataset),
        })
    }

    /// The links out of `ids` (at most `IN_CHUNK`) read from their spans (the links of at
    /// most `n` spans), into `out`.
    async fn links_from_spans(
        &self,
        ids: &[TraceId],
        n: usize,
        out: &mut std::collections::BTreeSet<CrossLink>,
    ) -> datatracing_store::Result<()> {
        let i = &self.inner;
        // `spans` is ordered by trace id and the bounds prune partitions; only spans with at
        // least one link out of their trace are read, so `n` rows hold at least `n` links.
        let sql = format!(
            "SELECT trace_id, span_id, links_json FROM {spans} \
             WHERE trace_id IN ({list}){tenant}{bounds} \
               AND links_json != '' \
               AND arrayExists(l -> unhex(JSONExtractString(l, 'trace_id')) != trace_id, \
                               JSONExtractArrayRaw(links_json)) \
             LIMIT 1 BY trace_id, span_id LIMIT {n}",
            spans = i.spans_table,
            list = hex_list(ids),
            tenant = self.tenant_sql(),
            bounds = self.time_bounds(ids),
        );
        let rows = timed(
            i.query_timeout,
            "links from",
            i.admin.client().query(&sql).fetch_all::<SpanLinksRow>(),
        )
        .await
        .map_err(|e| self.query_error(e))?;
        for r in rows {
            let links: Vec<Link> = serde_json::from_str(&r.links_json).map_err(|e| {
                self.query_error(Error::Client(format!(
                    "corrupt links in a stored span: {e}"
                )))
            })?;
            out.extend(cross_links(
                TraceId::from_bytes(r.trace_id),
                SpanId::from_bytes(r.span_id),
                &links,
            ));
        }
        Ok(())
    }

    /// `AND start_time` bounds covering every span of `ids` (at most `IN_CHUNK`), from
    /// `trace_summaries`, so a read of `spans` touches only the partitions they name. The
    /// bounds are one scalar subquery of the same statement, both ends as a tuple (ClickHouse
    /// runs it first and prunes partitions with its values): that saves a round trip per
    /// read, and each id is a granule of 256 rows there (8,192 in `trace_bounds`, which
    /// answered this before migration 7). Any tenant's rows bound the read, as
    /// `trace_bounds`' did (it has no tenant): the read itself is confined to the tenant.
    /// When one of the traces has no bounds row (it does not exist, or retention dropped
    /// its row before its last spans) they cover every representable time: the read is
    /// then a key lookup in every partition, slower but complete, since a trace is
    /// readable whenever any of its spans is stored.
    fn time_bounds(&self, ids: &[TraceId]) -> String {
        let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
        // DateTime64(9) spans 1900-01-01 to 2262-04-11.
        let bounds = format!(
            "(SELECT if(uniqExact(trace_id) = {distinct}, (min(start_min), max(start_max)), \
             (toDateTime64('1900-01-01 00:00:00', 9, 'UTC'), toDateTime64('2262-04-11 23:47:16', 9, 'UTC'))) \
             FROM {summaries} WHERE trace_id IN ({list}))",
            summaries = self.inner.summaries_table,
            list = hex_list(ids),
        );
        format!(
            " AND start_time >= tupleElement({bounds}, 1) AND start_time <= tupleElement({bounds}, 2)"
        )
    }

    /// Summaries of those of `ids` with stored spans (at most `IN_CHUNK` ids), merged in
    /// ClickHouse from `trace_summaries` (one row of aggregate states per trace and day, or
    /// several before merges): a key range of 256-row granules per id instead of the
    /// trace's spans, with the same root key, counts of distinct span ids and services as
    /// the spans give. A trace with stored spans but no summary row (a day's row can leave
    /// with retention before that day's last spans, as `trace_bounds`' rows can) is
    /// summarized from its spans, as before migration 7: one more statement, only then.
    async fn summary_rows(&self, ids: &[TraceId]) -> datatracing_store::Result<Vec<TraceSummary>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = hex_list(ids);
        let sql = format!(
            "SELECT trace_id, \
                    tupleElement(argMinMerge(root), 1) AS root_service, \
                    tupleElement(argMinMerge(root), 2) AS root_operation, \
                    toUnixTimestamp64Nano(min(start_min)) AS start_ns, \
                    toUnixTimestamp64Nano(max(end_max)) - toUnixTimestamp64Nano(min(start_min)) AS duration_ns, \
                    uniqExactMerge(span_ids) AS span_count, \
                    uniqExactMerge(error_ids) AS error_count, \
                    arraySort(groupUniqArrayArray(services)) AS services \
             FROM {summaries} \
             WHERE trace_id IN ({list}){tenant} \
             GROUP BY trace_id",
            summaries = self.inner.summaries_table,
            tenant = self.tenant_sql(),
        );
        let mut out = self.fetch_summaries(&sql).await?;
        let found: std::collections::HashSet<TraceId> = out.iter().map(|s| s.trace_id).collect();
        let mut missing: Vec<TraceId> =
            ids.iter().filter(|t| !found.contains(t)).copied().collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let root_key = "tuple(parent_id != unhex('0000000000000000'), start_time, span_id)";
            let sql = format!(
                "SELECT trace_id, \
                        toString(argMin(service, {root_key})) AS root_service, \
                        toString(argMin(operation, {root_key})) AS root_operation, \
                        toUnixTimestamp64Nano(min(start_time)) AS start_ns, \
                        toUnixTimestamp64Nano(max(end_time)) - toUnixTimestamp64Nano(min(start_time)) AS duration_ns, \
                        uniqExact(span_id) AS span_count, \
                        uniqExactIf(span_id, status IN ('ERROR', 'TIMEOUT')) AS error_count, \
                        arraySort(groupUniqArray(toString(service))) AS services \
                 FROM {spans} \
                 WHERE trace_id IN ({list}){tenant}{bounds} \
                 GROUP BY trace_id",
                spans = self.inner.spans_table,
                list = hex_list(&missing),
                tenant = self.tenant_sql(),
                bounds = self.time_bounds(&missing),
            );
            out.extend(self.fetch_summaries(&sql).await?);
        }
        Ok(out)
    }

    /// Runs a summaries statement (the columns of [`SummaryRow`]).
    async fn fetch_summaries(&self, sql: &str) -> datatracing_store::Result<Vec<TraceSummary>> {
        let i = &self.inner;
        let rows: Vec<SummaryRow> = timed(
            i.query_timeout,
            "summaries",
            i.admin.client().query(sql).fetch_all::<SummaryRow>(),
        )
        .await
        .map_err(|e| self.query_error(e))?;
        Ok(rows
            .into_iter()
            .map(|r| TraceSummary {
                trace_id: TraceId::from_bytes(r.trace_id),
                root_service: r.root_service,
                root_operation: r.root_operation,
                start_time: Timestamp::from_unix_nanos(r.start_ns),
                duration_nanos: r.duration_ns.max(0),
                span_count: r.span_count,
                error_count: r.error_count,
                services: r.services,
            })
            .collect())
    }

    /// The spans of a trace, the first `limit` by start time then span id when given.
    async fn read_trace(
        &self,
        trace_id: TraceId,
        limit: Option<usize>,
    ) -> datatracing_store::Result<Option<Vec<Span>>> {
        self.read_trace_page(trace_id, None, limit.unwrap_or(0))
            .await
    }

    /// The spans of a trace after `after` by start time then span id, at most `limit`
    /// (0: all); `None` when there are none.
    async fn read_trace_page(
        &self,
        trace_id: TraceId,
        after: Option<SpanCursor>,
        limit: usize,
    ) -> datatracing_store::Result<Option<Vec<Span>>> {
        let i = &self.inner;
        // A span stored twice (a retried insert) is one span: `LIMIT 1 BY span_id` keeps
        // the first copy in the sort order.
        let after_sql = after.map_or_else(String::new, |c| {
            format!(
                " AND (start_time, span_id) > (fromUnixTimestamp64Nano(toInt64({})), unhex('{}'))",
                c.start_nanos, c.span_id
            )
        });
        // trace_summaries (ordered by trace id) names the partitions to read.
        let sql = format!(
            "SELECT ?fields FROM {spans} \
             WHERE trace_id = unhex(?){tenant}{bounds}{after_sql} \
             ORDER BY start_time, span_id LIMIT 1 BY span_id{limit}",
            spans = i.spans_table,
            tenant = self.tenant_sql(),
            bounds = self.time_bounds(&[trace_id]),
            limit = if limit > 0 {
                format!(" LIMIT {limit}")
            } else {
                String::new()
            },
        );
        let hex = trace_id.to_string();
        let rows: Vec<SpanRow> = timed(
            i.query_timeout,
            "get trace",
            i.admin
                .client()
                .query(&sql)
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

    /// The conditions one index row (one span) must satisfy, appended to `out`.
    fn span_filters(&self, q: &TraceQuery, out: &mut Sql) {
        let i = &self.inner;
        let tenant = self.tenant_sql();
        out.sql.push_str(&tenant);
        if let Some(s) = &q.service {
            out.push(" AND service = ?", [Bindable::Str(s.clone())]);
        }
        if let Some(o) = &q.operation {
            out.push(" AND operation = ?", [Bindable::Str(o.clone())]);
        }
        if let Some(k) = q.kind {
            out.push(" AND kind = ?", [Bindable::Str(k.as_str().to_string())]);
        }
        if let Some(st) = q.status {
            out.push(" AND status = ?", [Bindable::Str(st.as_str().to_string())]);
        }
        push_time_bounds(&mut out.sql, &mut out.binds, q);
        if let Some(d) = &q.dataset {
            let k = |name: &str| format!("attributes['{name}']");
            out.push(
                &format!(
                    " AND ({} OR {})",
                    contains_sql(&k(DATASET_INPUTS)),
                    contains_sql(&k(DATASET_OUTPUTS))
                ),
                (0..4).map(|_| Bindable::Str(d.clone())),
            );
        }
        if let Some(t) = q.linked_trace {
            // A key range of span_links, which is ordered by the linked trace. Clustered,
            // a link's row is on its source's shard (the views) or wherever a backfill put
            // it, not necessarily on the outer row's: the subquery is GLOBAL.
            out.push(
                &format!(
                    " AND (trace_id, span_id) {g}IN (SELECT source_trace_id, source_span_id FROM {links} \
                     WHERE target_trace_id = unhex(?){tenant})",
                    g = i.global,
                    links = i.links_table
                ),
                [Bindable::Str(t.to_string())],
            );
        }
        if let Some(svc) = &q.linked_service {
            // The linked span must be in the page's snapshot too, as the matching span is.
            // Clustered, both subqueries are GLOBAL: a link's row need not be on the shard
            // of its source or of its target, and the inner one sits in the outer, which
            // runs on the initiator (a local table there would hold one shard's rows).
            let mut sub = Sql::default();
            match &q.cursor {
                Some(c) => sub.push(
                    " AND ingested_at <= fromUnixTimestamp64Nano(toInt64(?))",
                    [Bindable::I64(c.snapshot)],
                ),
                None => sub.push(" AND ingested_at <= now64(9)", []),
            }
            out.push(
                &format!(
                    " AND (trace_id, span_id) {g}IN (SELECT source_trace_id, source_span_id FROM {links} \
                     WHERE 1{tenant} AND (target_trace_id, target_span_id) {g}IN \
                     (SELECT trace_id, span_id FROM {index} WHERE service = ?{tenant}{snap}))",
                    g = i.global,
                    links = i.links_table,
                    index = i.index_table,
                    snap = sub.sql,
                ),
                std::iter::once(Bindable::Str(svc.clone())).chain(sub.binds),
            );
        }
        let (min, max) = q.span_duration_bounds();
        if let Some(d) = min {
            out.push(" AND duration_ns >= ?", [Bindable::I64(d)]);
        }
        if let Some(d) = max {
            out.push(" AND duration_ns <= ?", [Bindable::I64(d)]);
        }
        for f in &q.attributes {
            let key = || Bindable::Str(f.key.clone());
            // Clustered, a span's attribute rows are on its trace's shard, as its index
            // row is: the local attribute table answers.
            match (&f.op, &i.attrs_local) {
                (AttributeOp::Eq(v), Some(attrs)) => {
                    // Equality goes through span_attributes, ordered by (key, value, time):
                    // a key range, instead of reading every span's attribute map.
                    out.push(
                        &format!(
                            " AND (trace_id, span_id) IN (SELECT trace_id, span_id FROM {attrs} WHERE key = ? AND value = ?{tenant}"
                        ),
                        [key(), Bindable::Str(v.clone())],
                    );
                    push_time_bounds(&mut out.sql, &mut out.binds, q);
                    out.sql.push(')');
                }
                (AttributeOp::Eq(v), None) => out.push(
                    " AND attributes[?] = ? AND mapContains(attributes, ?)",
                    [key(), Bindable::Str(v.clone()), key()],
                ),
                (AttributeOp::Contains(v), Some(attrs)) => {
                    out.push(
                        &format!(
                            " AND (trace_id, span_id) IN (SELECT trace_id, span_id FROM {attrs} WHERE key = ? AND {}{tenant}",
                            contains_sql("value")
                        ),
                        [key(), Bindable::Str(v.clone()), Bindable::Str(v.clone())],
                    );
                    push_time_bounds(&mut out.sql, &mut out.binds, q);
                    out.sql.push(')');
                }
                (AttributeOp::Contains(v), None) => out.push(
                    &format!(
                        " AND mapContains(attributes, ?) AND {}",
                        contains_sql("attributes[?]")
                    ),
                    [
                        key(),
                        key(),
                        Bindable::Str(v.clone()),
                        key(),
                        Bindable::Str(v.clone()),
                    ],
                ),
                (AttributeOp::Exists, _) => out.push(" AND mapContains(attributes, ?)", [key()]),
                (AttributeOp::Ne(v), _) => out.push(
                    " AND mapContains(attributes, ?) AND attributes[?] != ?",
                    [key(), key(), Bindable::Str(v.clone())],
                ),
                (AttributeOp::Regex(p), _) => out.push(
                    " AND mapContains(attributes, ?) AND match(attributes[?], ?)",
                    [key(), key(), Bindable::Str(p.clone())],
                ),
                (AttributeOp::Numeric(op, x), _) => {
                    // A value that is not a number reads as NULL, which no comparison keeps.
                    let op = match op {
                        NumericOp::Eq => "=",
                        NumericOp::Ne => "!=",
                        NumericOp::Gt => ">",
                        NumericOp::Ge => ">=",
                        NumericOp::Lt => "<",
                        NumericOp::Le => "<=",
                    };
                    out.push(
                        &format!(
                            " AND mapContains(attributes, ?) AND toFloat64OrNull(attributes[?]) {op} ?"
                        ),
                        [key(), key(), Bindable::F64(*x)],
                    );
                }
            }
        }
    }
}

/// Drops a link's row without a dataset when a row of the same link has one: links stored
/// before schema version 6 were indexed without their dataset and backfilled with it.
fn prefer_named(links: std::collections::BTreeSet<CrossLink>) -> impl Iterator<Item = CrossLink> {
    let named: std::collections::HashSet<_> = links
        .iter()
        .filter(|l| l.dataset.is_some())
        .map(|l| {
            (
                l.from_trace,
                l.from_span,
                l.to_trace,
                l.to_span,
                l.link_type,
            )
        })
        .collect();
    links.into_iter().filter(move |l| {
        l.dataset.is_some()
            || !named.contains(&(
                l.from_trace,
                l.from_span,
                l.to_trace,
                l.to_span,
                l.link_type,
            ))
    })
}

/// Whether the attribute text `expr` (its search text: arrays as JSON) equals the next bound
/// value, or is a JSON array with an element equal to the value after it: strings compare
/// unquoted, other elements as their JSON text, as `AttributeValue::contains_text` does.
fn contains_sql(expr: &str) -> String {
    format!(
        "({expr} = ? OR has(arrayMap(x -> if(startsWith(x, '\"'), JSONExtractString(x), x), \
         JSONExtractArrayRaw({expr})), ?))"
    )
}

/// A SQL fragment and the values bound to its placeholders, in order.
#[derive(Clone, Default)]
struct Sql {
    sql: String,
    binds: Vec<Bindable>,
}

impl Sql {
    fn push(&mut self, sql: &str, binds: impl IntoIterator<Item = Bindable>) {
        self.sql.push_str(sql);
        self.binds.extend(binds);
    }
}

/// `span_names` rows overlapping a window (each row is one service/operation/kind in one
/// hour, or part of it before merges; any part in the window is evidence enough).
fn names_window(w: &TimeWindow, sql: &mut Sql) {
    if let Some(t) = w.start {
        sql.push(
            " AND hour >= toStartOfHour(fromUnixTimestamp64Nano(toInt64(?))) \
             AND last_seen >= fromUnixTimestamp64Nano(toInt64(?))",
            [Bindable::I64(t.unix_nanos()), Bindable::I64(t.unix_nanos())],
        );
    }
    if let Some(t) = w.end {
        sql.push(
            " AND hour <= toStartOfHour(fromUnixTimestamp64Nano(toInt64(?))) \
             AND first_seen <= fromUnixTimestamp64Nano(toInt64(?))",
            [Bindable::I64(t.unix_nanos()), Bindable::I64(t.unix_nanos())],
        );
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
    F64(f64),
}

impl Bindable {
    fn bind(self, q: clickhouse::query::Query) -> clickhouse::query::Query {
        match self {
            Bindable::Str(s) => q.bind(s),
            Bindable::I64(v) => q.bind(v),
            Bindable::F64(v) => q.bind(v),
        }
    }
}

fn hex_list(ids: &[TraceId]) -> String {
    ids.iter()
        .map(|t| format!("unhex('{t}')"))
        .collect::<Vec<_>>()
        .join(", ")
}
