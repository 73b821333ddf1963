//! Table layout and versioned migrations. See `docs/adr/0003-clickhouse-schema.md`.
//!
//! Single node, three tables and two materialized views:
//! - `spans`: every span, ordered by trace id, so a trace is a contiguous range (get-trace
//!   reads a granule or two).
//! - `span_index`: a narrow copy of the searchable columns (service, operation, time,
//!   duration, status, attributes as text) ordered by (service, operation, time), fed by
//!   `span_index_mv`; searches read only this.
//! - `trace_bounds`: trace id to first/last span start, fed by `trace_bounds_mv`, so
//!   get-trace reads only the daily partitions the trace lives in.
//!
//! Version 2 adds `span_names` (service, operation, kind, hour, first and last start in that
//! hour; fed by `span_names_mv` and filled once from `spans`), which lists services and
//! operations without reading spans, and gives `span_index` the span kind and `ingested_at`
//! (the server time the span was inserted; a search cursor's snapshot). Existing index rows
//! get kind `''` (a kind search does not find spans stored before version 2) and
//! `ingested_at` 1970 (every snapshot includes them). `span_index_v2_mv` replaces
//! `span_index_mv`: it is created before the old one is dropped, so no insert misses the
//! index (a few may be indexed twice, which searches tolerate).
//!
//! Version 3 adds `span_links`, the reverse-link index: one row per link from a span to a
//! span of another trace (target trace and span, source trace and span, link type, the
//! source span's start for partitions and TTL), ordered by the linked trace, fed by
//! `span_links_mv` from the spans' `links_json` and filled once from `spans`. Downstream
//! lineage and the `linked_trace` / `linked_service` filters read it. The view exists before
//! the backfill runs, so spans inserted meanwhile may be indexed twice; reads deduplicate.
//! The backfill skips spans whose links are indexed already, so it can run again.
//!
//! Version 4 makes a `trace_bounds` row cover one day of one trace: `trace_bounds_v2_mv`
//! groups each insert by (trace id, day of start). Before, one row covered a whole insert,
//! so a batch holding a span older than the retention put the row for its recent spans
//! into that span's expired partition; retention dropped the row while the recent spans
//! stayed, and reads pruned by the bounds found nothing. Now a day's row lives and expires
//! with that day's spans. The backfill splits the rows stored before that span several
//! days. Reads still fall back to an unpruned key lookup when a trace has no bounds row.
//!
//! Version 6 adds the dataset a link names (its `datatracing.link.dataset` attribute) to
//! `span_links`: `span_links_v3_mv` writes it, created before `span_links_v2_mv` is dropped;
//! the backfill inserts a row with the dataset for each stored link that names one, so a
//! link stored before may have a row without and a row with its dataset, and reads keep the
//! one with the dataset.
//!
//! Version 7 adds `trace_summaries`, one row of aggregate states per tenant, trace and day
//! (first and last start, last end, span and failed-span id sets, the root by `argMin`, the
//! services, the links to other traces), keyed by trace id with granules of 256 rows and
//! fed by `trace_summaries_mv`, filled once from `spans`: search summaries, the partition
//! bounds of `spans` reads and upstream lineage read it instead of the spans and
//! `trace_bounds`. It also gives `span_index` two projections ordered by `(tenant,
//! start_time)` and `(tenant, service, start_time)`, which a newest-first search reads in
//! order and stops early.
//!
//! Version 8 gives `trace_summaries` small compressed blocks (4-16 KiB instead of the
//! engine's 64 KiB-1 MiB): its reads are key lookups of a granule or two per trace, and with
//! large blocks each granule read decompressed a whole block per column. Parts written
//! before keep their blocks until a merge rewrites them or retention drops them. `spans`
//! keeps its blocks: the same change there made inserts cost a tenth more engine CPU (ADR
//! 0003).
//!
//! Version 9 stops feeding `trace_bounds` (drops `trace_bounds_v2_mv`): since version 7 no
//! read uses it, and its view cost about 5-7 % of the engine's CPU per inserted span. The
//! table stays, emptied by retention, so a version-6 reader still running during an
//! upgrade finds no bounds row for new traces and takes its unpruned key lookup (slower,
//! not wrong). A later migration can drop the table.
//!
//! Clustered (`cluster` set): the same tables as `*_local` Replicated tables on every node,
//! Distributed tables with the plain names in front (sharded by trace id so a trace lives on
//! one shard), and every statement `ON CLUSTER`.

use datatracing_core::TENANT_ATTRIBUTE;
use datatracing_core::conventions::LINK_DATASET;

/// Where the tables live and how they are built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    /// Database name (a validated identifier).
    pub database: String,
    /// Cluster name for clustered installs.
    pub cluster: Option<String>,
    /// Retention in days given to new tables.
    pub retention_days: u32,
    /// Also maintain `span_attributes`, one row per attribute ordered by (key, value, time),
    /// for fast attribute equality search (costs storage; see ADR 0003).
    pub attribute_index: bool,
}

/// One schema version: idempotent statements applied in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// Version number, increasing from 1.
    pub version: u32,
    /// Short description.
    pub name: &'static str,
    /// DDL statements.
    pub statements: Vec<String>,
}

/// A table that carries a TTL, with the column its TTL is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlTable {
    /// Table name (the storage table: `*_local` when clustered).
    pub name: &'static str,
    /// `DateTime64` column the TTL counts from.
    pub time_column: &'static str,
}

const SPANS: TtlTable = TtlTable {
    name: "spans",
    time_column: "start_time",
};
const INDEX: TtlTable = TtlTable {
    name: "span_index",
    time_column: "start_time",
};
const ATTRS: TtlTable = TtlTable {
    name: "span_attributes",
    time_column: "start_time",
};
const BOUNDS: TtlTable = TtlTable {
    name: "trace_bounds",
    time_column: "start_min",
};
const NAMES: TtlTable = TtlTable {
    name: "span_names",
    time_column: "hour",
};
const LINKS: TtlTable = TtlTable {
    name: "span_links",
    time_column: "start_time",
};
const SUMMARIES: TtlTable = TtlTable {
    name: "trace_summaries",
    time_column: "start_min",
};

/// `span_index`'s projection ordered by `(tenant, start_time)`: searches without a service
/// read it newest first and stop early (migration 7).
pub const INDEX_BY_TIME: &str = "by_time";
/// `span_index`'s projection ordered by `(tenant, service, start_time)`: the same for
/// searches by service (migration 7).
pub const INDEX_BY_SERVICE: &str = "by_service_time";
/// The columns of both projections: every column a search filter other than attributes,
/// datasets and links reads, so such a search can be answered from a projection alone.
const INDEX_PROJECTED: &str =
    "tenant, service, operation, kind, status, start_time, trace_id, duration_ns, ingested_at";

/// The settings of the backfills that aggregate per trace (`GROUP BY trace_id, ...` over
/// `spans`). `spans` is ordered by trace id, so the engine can aggregate as it reads, a few
/// traces at a time, instead of holding every trace's state until the end; small read and
/// insert blocks keep the rows in flight few. At 10M spans the `trace_summaries` backfill
/// peaked at 4.6 GiB without them and 1.5-1.7 GiB with them (and ran 26 s, now 14-17 s);
/// without them its memory grows with the table, so a large database could not upgrade.
/// The spill to disk covers a plan that cannot aggregate in order.
const PER_TRACE_BACKFILL: &str = "SETTINGS optimize_aggregation_in_order = 1, max_block_size = 8192, \
     min_insert_block_size_rows = 65536, min_insert_block_size_bytes = 67108864, \
     max_bytes_before_external_group_by = 1073741824";

/// Compressed blocks of 4-16 KiB for `trace_summaries`, read by key a granule or two per
/// trace (migration 8). At 10M spans a summary read of 20 traces decompressed 12.8 MiB with
/// the engine's default blocks and 1.8 MiB with these: 23-24 ms of engine time against
/// 13 ms, for 2 % more storage and no measurable insert cost (docs/benchmarks.md).
const SMALL_BLOCKS: &str = "min_compress_block_size = 4096, max_compress_block_size = 16384";

/// The table recording which TracingPipeline owns the database.
pub const OWNER_TABLE: &str = "datatracing_owner";

impl Schema {
    fn on_cluster(&self) -> String {
        self.cluster
            .as_ref()
            .map(|c| format!(" ON CLUSTER {c}"))
            .unwrap_or_default()
    }

    /// The storage table name of `table` (`spans_local` when clustered).
    pub fn storage_table(&self, table: &str) -> String {
        match self.cluster {
            Some(_) => format!("{table}_local"),
            None => table.to_string(),
        }
    }

    /// Fully qualified name to insert into and read from (the Distributed table when
    /// clustered).
    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.database)
    }

    /// Fully qualified storage table (`db.spans_local` when clustered, else `db.spans`): what
    /// a subquery reads when it only needs the rows on the shard running it. Only for rows
    /// placed by trace id (`spans` and the tables its views fill per trace: `span_index`,
    /// `trace_bounds`, `span_attributes`) matched against the trace id of a query over one
    /// of those, and never inside a `GLOBAL` subquery (that runs on the initiator only).
    pub fn local_table(&self, table: &str) -> String {
        format!("{}.{}", self.database, self.storage_table(table))
    }

    /// `GLOBAL ` when clustered, else nothing: put before `IN` / `NOT IN` when the subquery
    /// reads a `Distributed` table whose rows are not on the shard of the outer row (see
    /// ADR 0009, "ClickHouse at scale"). ClickHouse runs such a subquery once, on the node
    /// that received the query, and sends its result to every shard; a plain `IN` over a
    /// `Distributed` table inside a query over one is refused when the cluster has two or
    /// more shards (`distributed_product_mode = 'deny'`).
    pub fn global_in(&self) -> &'static str {
        if self.cluster.is_some() {
            "GLOBAL "
        } else {
            ""
        }
    }

    /// Tables whose TTL carries the retention.
    pub fn ttl_tables(&self) -> Vec<TtlTable> {
        let mut t = vec![SPANS, INDEX, BOUNDS, NAMES, LINKS, SUMMARIES];
        if self.attribute_index {
            t.push(ATTRS);
        }
        t
    }

    /// Every table and materialized view the migrations leave in the database: each one a
    /// statement creates and no later statement drops, in creation order. Derived from the
    /// statements themselves, so a migration cannot add an object this list forgets; drift
    /// checks and repair compare it with the database.
    pub fn objects(&self) -> Vec<String> {
        const CREATES: [&str; 2] = [
            "CREATE TABLE IF NOT EXISTS ",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS ",
        ];
        const DROP: &str = "DROP TABLE IF EXISTS ";
        let qualified = format!("{}.", self.database);
        let name = |rest: &str| -> Option<String> {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '(')
                .unwrap_or(rest.len());
            rest[..end].strip_prefix(&qualified).map(str::to_string)
        };
        let mut out: Vec<String> = Vec::new();
        for m in self.migrations() {
            for s in &m.statements {
                if let Some(n) = CREATES
                    .iter()
                    .find_map(|c| s.strip_prefix(c))
                    .and_then(name)
                    && !out.contains(&n)
                {
                    out.push(n);
                } else if let Some(n) = s.strip_prefix(DROP).and_then(name) {
                    out.retain(|o| *o != n);
                }
            }
        }
        out
    }

    /// The TTL expression for a table and a number of days.
    pub fn ttl_expression(table: TtlTable, days: u32) -> String {
        format!("toDateTime({}) + toIntervalDay({days})", table.time_column)
    }

    fn engine(&self, kind: &str, table: &str) -> String {
        match &self.cluster {
            None => format!("{kind}()"),
            Some(_) => format!(
                "Replicated{kind}('/clickhouse/tables/{{shard}}/{}/{}', '{{replica}}')",
                self.database,
                self.storage_table(table)
            ),
        }
    }

    /// `CREATE DATABASE`, run without a current database.
    pub fn create_database(&self) -> String {
        format!(
            "CREATE DATABASE IF NOT EXISTS {}{}",
            self.database,
            self.on_cluster()
        )
    }

    /// Drops the database and every table in it (`deletionPolicy: Delete`).
    pub fn drop_database(&self) -> String {
        format!(
            "DROP DATABASE IF EXISTS {}{} SYNC",
            self.database,
            self.on_cluster()
        )
    }

    /// The table naming the database's owner (the TracingPipeline whose storage it is): one
    /// row per claim, the earliest in force.
    pub fn create_owner_table(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{OWNER_TABLE}{oc} (\n\
             \x20   uid String,\n\
             \x20   owner String,\n\
             \x20   claimed_at DateTime64(3) DEFAULT now64(3)\n\
             ) ENGINE = {engine} ORDER BY (claimed_at, uid)",
            db = self.database,
            oc = self.on_cluster(),
            engine = match &self.cluster {
                None => "MergeTree()".to_string(),
                Some(_) => format!(
                    "ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{}/{OWNER_TABLE}', '{{replica}}')",
                    self.database
                ),
            }
        )
    }

    /// Empties the owner table (the claim is released or handed over).
    pub fn truncate_owner_table(&self) -> String {
        format!(
            "TRUNCATE TABLE IF EXISTS {}.{OWNER_TABLE}{}",
            self.database,
            self.on_cluster()
        )
    }

    /// The bookkeeping table for applied migrations.
    pub fn create_migrations_table(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations{oc} (\n\
             \x20   version UInt32,\n\
             \x20   name String,\n\
             \x20   applied_at DateTime DEFAULT now()\n\
             ) ENGINE = {engine} ORDER BY version",
            db = self.database,
            oc = self.on_cluster(),
            engine = match &self.cluster {
                None => "ReplacingMergeTree()".to_string(),
                Some(_) => format!(
                    "ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{}/schema_migrations', '{{replica}}')",
                    self.database
                ),
            }
        )
    }

    /// Every migration, in order.
    pub fn migrations(&self) -> Vec<Migration> {
        vec![
            Migration {
                version: 1,
                name: "spans, span_index, trace_bounds and their materialized views",
                statements: self.v1(),
            },
            Migration {
                version: 2,
                name: "span_names (services and operations), span kind and ingested_at in span_index",
                statements: self.v2(),
            },
            Migration {
                version: 3,
                name: "span_links (reverse-link index for lineage and link filters)",
                statements: self.v3(),
            },
            Migration {
                version: 4,
                name: "trace_bounds rows per trace and day (a trace stays readable when retention drops part of it)",
                statements: self.v4(),
            },
            Migration {
                version: 5,
                name: "tenants: a tenant column on spans and every index (ADR 0010)",
                statements: self.v5(),
            },
            Migration {
                version: 6,
                name: "the dataset each link names, in span_links (lineage by dataset)",
                statements: self.v6(),
            },
            Migration {
                version: 7,
                name: "trace_summaries (search summaries and trace bounds per trace and day), newest-first projections of span_index",
                statements: self.v7(),
            },
            Migration {
                version: 8,
                name: "small compressed blocks for trace_summaries (summary and bounds lookups decompress less)",
                statements: self.v8(),
            },
            Migration {
                version: 9,
                name: "nothing feeds trace_bounds any more (no read has used it since version 7)",
                statements: vec![format!(
                    "DROP TABLE IF EXISTS {}.trace_bounds_v2_mv{}",
                    self.database,
                    self.on_cluster()
                )],
            },
        ]
    }

    /// The aggregate states of `trace_summaries` over the spans of `from`, one row per
    /// tenant, trace and day (what the view writes per insert and the backfill once). The
    /// root is the same key the reader used over `spans` before: a span without a parent
    /// first, then the earliest, then the lowest span id. Span and error counts are sets of
    /// span ids, so a span stored twice (or summarized by both the view and the backfill)
    /// counts once. `links_out` is the set of the trace's links to spans of other traces
    /// (source span, target trace and span, type, dataset), for upstream lineage: the same
    /// links `span_links` indexes by target, with the same checks.
    fn summaries_select(from: &str) -> String {
        format!(
            "SELECT tenant, trace_id, min(start_time) AS start_min, max(start_time) AS start_max,\n\
             \x20      max(end_time) AS end_max,\n\
             \x20      uniqExactState(reinterpretAsUInt64(span_id)) AS span_ids,\n\
             \x20      uniqExactStateIf(reinterpretAsUInt64(span_id), status IN ('ERROR', 'TIMEOUT')) AS error_ids,\n\
             \x20      argMinState((toString(service), toString(operation)),\n\
             \x20                  (parent_id != unhex('0000000000000000'), start_time, span_id)) AS root,\n\
             \x20      groupUniqArray(toString(service)) AS services,\n\
             \x20      groupUniqArrayArray(arrayMap(l -> (span_id,\n\
             \x20          toFixedString(unhex(JSONExtractString(l, 'trace_id')), 16),\n\
             \x20          toFixedString(unhex(JSONExtractString(l, 'span_id')), 8),\n\
             \x20          JSONExtractString(l, 'type'),\n\
             \x20          JSONExtractString(l, 'attributes', '{LINK_DATASET}')),\n\
             \x20        arrayFilter(l -> length(JSONExtractString(l, 'trace_id')) = 32\n\
             \x20          AND length(JSONExtractString(l, 'span_id')) = 16\n\
             \x20          AND unhex(JSONExtractString(l, 'trace_id')) != trace_id,\n\
             \x20          JSONExtractArrayRaw(links_json)))) AS links_out\n\
             FROM {from} GROUP BY tenant, trace_id, toDate(start_time)"
        )
    }

    fn v8(&self) -> Vec<String> {
        let db = &self.database;
        let oc = self.on_cluster();
        // The storage table: a Distributed table stores nothing. New parts (inserts,
        // merges) take the setting; the stored ones keep their blocks until merged or
        // expired (an `OPTIMIZE ... FINAL` would rewrite them, at the cost of a full copy).
        vec![format!(
            "ALTER TABLE {db}.{table}{oc} MODIFY SETTING {SMALL_BLOCKS}",
            table = self.storage_table("trace_summaries")
        )]
    }

    fn v7(&self) -> Vec<String> {
        let db = &self.database;
        let oc = self.on_cluster();
        let spans = self.storage_table("spans");
        let index = self.storage_table("span_index");
        let summaries = self.storage_table("trace_summaries");
        let dedup = if self.cluster.is_none() {
            ", non_replicated_deduplication_window = 1000"
        } else {
            ""
        };
        // Keyed by trace id with small granules: a summary or bounds read of 20 traces
        // reads 20 granules of 256 rows. One row per tenant, trace and day, partitioned by
        // that day, so a day's row lives and expires with that day's spans (as
        // `trace_bounds` since migration 4): a trace is summarized from the spans retention
        // has left.
        let mut out = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.{summaries}{oc} (\n\
                 \x20   tenant    LowCardinality(String) CODEC(ZSTD(1)),\n\
                 \x20   trace_id  FixedString(16) CODEC(ZSTD(1)),\n\
                 \x20   start_min SimpleAggregateFunction(min, DateTime64(9)) CODEC(Delta(8), ZSTD(1)),\n\
                 \x20   start_max SimpleAggregateFunction(max, DateTime64(9)) CODEC(Delta(8), ZSTD(1)),\n\
                 \x20   end_max   SimpleAggregateFunction(max, DateTime64(9)) CODEC(Delta(8), ZSTD(1)),\n\
                 \x20   span_ids  AggregateFunction(uniqExact, UInt64) CODEC(ZSTD(1)),\n\
                 \x20   error_ids AggregateFunction(uniqExact, UInt64) CODEC(ZSTD(1)),\n\
                 \x20   root      AggregateFunction(argMin, Tuple(String, String), Tuple(UInt8, DateTime64(9), FixedString(8))) CODEC(ZSTD(1)),\n\
                 \x20   services  SimpleAggregateFunction(groupUniqArrayArray, Array(String)) CODEC(ZSTD(1)),\n\
                 \x20   links_out SimpleAggregateFunction(groupUniqArrayArray, Array(Tuple(FixedString(8), FixedString(16), FixedString(8), String, String))) CODEC(ZSTD(1))\n\
                 ) ENGINE = {engine}\n\
                 PARTITION BY toDate(start_min)\n\
                 ORDER BY (trace_id, tenant)\n\
                 TTL {ttl}\n\
                 SETTINGS index_granularity = 256, ttl_only_drop_parts = 1{dedup}",
                engine = self.engine("AggregatingMergeTree", "trace_summaries"),
                ttl = Self::ttl_expression(SUMMARIES, self.retention_days),
            ),
            format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trace_summaries_mv{oc} TO {db}.{summaries} AS\n{}",
                Self::summaries_select(&format!("{db}.{spans}"))
            ),
        ];
        if let Some(cluster) = &self.cluster {
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {db}.trace_summaries{oc} AS {db}.{summaries}\n\
                 ENGINE = Distributed({cluster}, {db}, {summaries}, cityHash64(trace_id))"
            ));
        }
        // The view exists before the backfill, so spans inserted meanwhile are summarized
        // by both; every state absorbs a repeat (min, max, sets, argMin), so this can run
        // again too.
        out.push(format!(
            "INSERT INTO {summaries_t} (tenant, trace_id, start_min, start_max, end_max, span_ids, error_ids, root, services, links_out)\n{}\n{PER_TRACE_BACKFILL}",
            Self::summaries_select(&self.table("spans")),
            summaries_t = self.table("trace_summaries"),
        ));
        // Newest-first search: `span_index` is ordered by (service, operation, start_time),
        // so `ORDER BY start_time DESC LIMIT n` with only a service (or no service) cannot
        // read in order and reads every matching row of the window. These projections can,
        // and stop after n rows. The engine picks one when it reads fewer granules than the
        // table. Materializing builds them for the parts stored before (a mutation, in the
        // background; parts without them are read from the table meanwhile); running it
        // again only rebuilds them.
        out.push(format!(
            "ALTER TABLE {db}.{index}{oc} \
             ADD PROJECTION IF NOT EXISTS {INDEX_BY_TIME} (SELECT {INDEX_PROJECTED} ORDER BY (tenant, start_time)), \
             ADD PROJECTION IF NOT EXISTS {INDEX_BY_SERVICE} (SELECT {INDEX_PROJECTED} ORDER BY (tenant, service, start_time))"
        ));
        for p in [INDEX_BY_TIME, INDEX_BY_SERVICE] {
            out.push(format!(
                "ALTER TABLE {db}.{index}{oc} MATERIALIZE PROJECTION {p}"
            ));
        }
        out
    }

    fn v6(&self) -> Vec<String> {
        let db = &self.database;
        let oc = self.on_cluster();
        let spans = self.storage_table("spans");
        let links = self.storage_table("span_links");
        let column = "dataset String CODEC(ZSTD(1))";
        let mut out = vec![format!(
            "ALTER TABLE {db}.{links}{oc} ADD COLUMN IF NOT EXISTS {column}"
        )];
        if self.cluster.is_some() {
            out.push(format!(
                "ALTER TABLE {db}.span_links{oc} ADD COLUMN IF NOT EXISTS {column}"
            ));
        }
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_links_v3_mv{oc} TO {db}.{links} AS\n{}",
            Self::links_select(&format!("{db}.{spans}"), true, true)
        ));
        out.push(format!("DROP TABLE IF EXISTS {db}.span_links_v2_mv{oc}"));
        // Only spans whose links mention the attribute are expanded; a link whose row with
        // the dataset exists already is skipped, so a repair run adds nothing twice.
        out.push(format!(
            "INSERT INTO {links_t} (target_trace_id, target_span_id, source_trace_id, source_span_id, link_type, start_time, tenant, dataset)\n{}\n\
             \x20 AND position(links_json, '{LINK_DATASET}') > 0 AND dataset != ''\n\
             \x20 AND (trace_id, span_id, tenant) {g}NOT IN (SELECT source_trace_id, source_span_id, tenant FROM {links_t} WHERE dataset != '')",
            Self::links_select(&self.table("spans"), true, true),
            links_t = self.table("span_links"),
            g = self.global_in(),
        ));
        out
    }

    fn v5(&self) -> Vec<String> {
        let db = &self.database;
        let oc = self.on_cluster();
        let spans = self.storage_table("spans");
        let index = self.storage_table("span_index");
        let names = self.storage_table("span_names");
        let links = self.storage_table("span_links");
        let attrs = self.storage_table("span_attributes");
        // No DEFAULT expression: ClickHouse refuses a new column with one in a sorting key,
        // and the type's default ('') is the default tenant anyway.
        let column = "tenant LowCardinality(String) CODEC(ZSTD(1))";
        let mut tables = vec!["spans", "span_index", "span_links"];
        if self.attribute_index {
            tables.push("span_attributes");
        }
        let mut out = Vec::new();
        for t in &tables {
            out.push(format!(
                "ALTER TABLE {db}.{local}{oc} ADD COLUMN IF NOT EXISTS {column}",
                local = self.storage_table(t)
            ));
        }
        // span_names aggregates rows of equal key: the tenant must be part of it, or two
        // tenants' rows would merge. Appending a column added by the same ALTER to the
        // sorting key rewrites nothing; running it again changes nothing.
        out.push(format!(
            "ALTER TABLE {db}.{names}{oc} ADD COLUMN IF NOT EXISTS {column}, \
             MODIFY ORDER BY (service, operation, kind, hour, tenant)"
        ));
        if self.cluster.is_some() {
            tables.push("span_names");
            for t in &tables {
                out.push(format!(
                    "ALTER TABLE {db}.{t}{oc} ADD COLUMN IF NOT EXISTS {column}"
                ));
            }
        }
        // New views carrying the tenant, created before the old ones are dropped (an insert
        // in between is indexed twice, which reads tolerate).
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_index_v3_mv{oc} TO {db}.{index} AS\n\
             SELECT tenant, service, operation, kind, start_time, trace_id, span_id, duration_ns, status, attributes,\n\
             \x20      now64(9) AS ingested_at\n\
             FROM {db}.{spans}"
        ));
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_names_v2_mv{oc} TO {db}.{names} AS\n\
             SELECT tenant, service, operation, kind, toStartOfHour(start_time) AS hour,\n\
             \x20      min(start_time) AS first_seen, max(start_time) AS last_seen\n\
             FROM {db}.{spans} GROUP BY tenant, service, operation, kind, hour"
        ));
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_links_v2_mv{oc} TO {db}.{links} AS\n{}",
            Self::links_select(&format!("{db}.{spans}"), true, false)
        ));
        if self.attribute_index {
            out.push(format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_attributes_v2_mv{oc} TO {db}.{attrs} AS\n\
                 SELECT tenant, key, value, start_time, trace_id, span_id\n\
                 FROM {db}.{spans} ARRAY JOIN mapKeys(attributes) AS key, mapValues(attributes) AS value"
            ));
        }
        // Only a repair (`recreate_missing` after a table was lost) finds rows here: the
        // earlier backfills fill the default tenant's, these the others'.
        out.push(format!(
            "INSERT INTO {names_t} (tenant, service, operation, kind, hour, first_seen, last_seen)\n\
             SELECT tenant, service, operation, kind, toStartOfHour(start_time) AS hour, min(start_time), max(start_time)\n\
             FROM {spans_t} WHERE tenant != '' GROUP BY tenant, service, operation, kind, hour",
            names_t = self.table("span_names"),
            spans_t = self.table("spans"),
        ));
        out.push(format!(
            "INSERT INTO {links_t} (target_trace_id, target_span_id, source_trace_id, source_span_id, link_type, start_time, tenant)\n{}\n\
             \x20 AND tenant != ''\n\
             \x20 AND (trace_id, span_id, tenant) {g}NOT IN (SELECT source_trace_id, source_span_id, tenant FROM {links_t})",
            Self::links_select(&self.table("spans"), true, false),
            links_t = self.table("span_links"),
            g = self.global_in(),
        ));
        for old in [
            "span_index_v2_mv",
            "span_names_mv",
            "span_links_mv",
            "span_attributes_mv",
        ] {
            out.push(format!("DROP TABLE IF EXISTS {db}.{old}{oc}"));
        }
        out
    }

    /// The rows of `span_links` for the spans of `from` (with their tenant when `tenant`).
    /// Ids in links_json are validated hex; the length checks keep a malformed row from
    /// failing the spans insert the view runs in.
    fn links_select(from: &str, tenant: bool, dataset: bool) -> String {
        format!(
            "SELECT toFixedString(unhex(JSONExtractString(l, 'trace_id')), 16) AS target_trace_id,\n\
             \x20      toFixedString(unhex(JSONExtractString(l, 'span_id')), 8) AS target_span_id,\n\
             \x20      trace_id AS source_trace_id, span_id AS source_span_id,\n\
             \x20      JSONExtractString(l, 'type') AS link_type, start_time{t}{d}\n\
             FROM {from} ARRAY JOIN JSONExtractArrayRaw(links_json) AS l\n\
             WHERE links_json != '' AND length(JSONExtractString(l, 'trace_id')) = 32\n\
             \x20 AND length(JSONExtractString(l, 'span_id')) = 16\n\
             \x20 AND unhex(JSONExtractString(l, 'trace_id')) != trace_id",
            t = if tenant { ", tenant" } else { "" },
            // A dataset that is not a string (an array, say) reads as '' (none), as
            // `datatracing_store::link_dataset` reads it.
            d = if dataset {
                format!(", JSONExtractString(l, 'attributes', '{LINK_DATASET}') AS dataset")
            } else {
                String::new()
            }
        )
    }

    fn v4(&self) -> Vec<String> {
        let db = &self.database;
        let oc = self.on_cluster();
        let spans = self.storage_table("spans");
        let bounds = self.storage_table("trace_bounds");
        vec![
            // Created before the old view is dropped, so no insert misses the bounds (a few
            // get rows from both, which min/max absorb).
            format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trace_bounds_v2_mv{oc} TO {db}.{bounds} AS\n\
                 SELECT trace_id, min(start_time) AS start_min, max(start_time) AS start_max\n\
                 FROM {db}.{spans} GROUP BY trace_id, toDate(start_time)"
            ),
            format!("DROP TABLE IF EXISTS {db}.trace_bounds_mv{oc}"),
            // Rows written by the old view that span days get one row per day, each in its
            // day's partition. Only those traces' spans are read (a key range each); min/max
            // make a repeated run harmless.
            format!(
                "INSERT INTO {bounds_t} (trace_id, start_min, start_max)\n\
                 SELECT trace_id, min(start_time), max(start_time) FROM {spans_t}\n\
                 WHERE trace_id IN (SELECT trace_id FROM {bounds_local} WHERE toDate(start_min) != toDate(start_max))\n\
                 GROUP BY trace_id, toDate(start_time)\n{PER_TRACE_BACKFILL}",
                bounds_t = self.table("trace_bounds"),
                bounds_local = self.local_table("trace_bounds"),
                spans_t = self.table("spans"),
            ),
        ]
    }

    fn v3(&self) -> Vec<String> {
        let db = &self.database;
        let oc = self.on_cluster();
        let spans = self.storage_table("spans");
        let links = self.storage_table("span_links");
        let dedup = if self.cluster.is_none() {
            ", non_replicated_deduplication_window = 1000"
        } else {
            ""
        };
        let select = |from: &str| Self::links_select(from, false, false);
        let mut out = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.{links}{oc} (\n\
                 \x20   target_trace_id FixedString(16) CODEC(ZSTD(1)),\n\
                 \x20   target_span_id  FixedString(8) CODEC(ZSTD(1)),\n\
                 \x20   source_trace_id FixedString(16) CODEC(ZSTD(1)),\n\
                 \x20   source_span_id  FixedString(8) CODEC(ZSTD(1)),\n\
                 \x20   link_type       LowCardinality(String) CODEC(ZSTD(1)),\n\
                 \x20   start_time      DateTime64(9) CODEC(Delta(8), ZSTD(1))\n\
                 ) ENGINE = {engine}\n\
                 PARTITION BY toDate(start_time)\n\
                 ORDER BY (target_trace_id, source_trace_id, source_span_id)\n\
                 TTL {ttl}\n\
                 SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1{dedup}",
                engine = self.engine("MergeTree", "span_links"),
                ttl = Self::ttl_expression(LINKS, self.retention_days),
            ),
            format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_links_mv{oc} TO {db}.{links} AS\n{}",
                select(&format!("{db}.{spans}"))
            ),
        ];
        if let Some(cluster) = &self.cluster {
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {db}.span_links{oc} AS {db}.{links}\n\
                 ENGINE = Distributed({cluster}, {db}, {links}, cityHash64(target_trace_id))"
            ));
        }
        // Spans whose links are indexed already are skipped (a span's links are inserted
        // together), so running it again (drift repair) adds nothing twice.
        out.push(format!(
            "INSERT INTO {links_t} (target_trace_id, target_span_id, source_trace_id, source_span_id, link_type, start_time)\n{}\n\
             \x20 AND (trace_id, span_id) {g}NOT IN (SELECT source_trace_id, source_span_id FROM {links_t})\n\
             \x20 AND attributes['{TENANT_ATTRIBUTE}'] = ''",
            select(&self.table("spans")),
            links_t = self.table("span_links"),
            g = self.global_in(),
        ));
        out
    }

    fn v2(&self) -> Vec<String> {
        let db = &self.database;
        let oc = self.on_cluster();
        let spans = self.storage_table("spans");
        let index = self.storage_table("span_index");
        let names = self.storage_table("span_names");
        let add_columns = |table: &str| {
            [
                format!(
                    "ALTER TABLE {db}.{table}{oc} ADD COLUMN IF NOT EXISTS kind LowCardinality(String) DEFAULT '' CODEC(ZSTD(1))"
                ),
                format!(
                    "ALTER TABLE {db}.{table}{oc} ADD COLUMN IF NOT EXISTS ingested_at DateTime64(9) DEFAULT toDateTime64(0, 9) CODEC(Delta(8), ZSTD(1))"
                ),
            ]
        };
        let mut out = vec![format!(
            "CREATE TABLE IF NOT EXISTS {db}.{names}{oc} (\n\
             \x20   service    LowCardinality(String) CODEC(ZSTD(1)),\n\
             \x20   operation  LowCardinality(String) CODEC(ZSTD(1)),\n\
             \x20   kind       LowCardinality(String) CODEC(ZSTD(1)),\n\
             \x20   hour       DateTime CODEC(Delta(4), ZSTD(1)),\n\
             \x20   first_seen SimpleAggregateFunction(min, DateTime64(9)) CODEC(ZSTD(1)),\n\
             \x20   last_seen  SimpleAggregateFunction(max, DateTime64(9)) CODEC(ZSTD(1))\n\
             ) ENGINE = {engine}\n\
             PARTITION BY toDate(hour)\n\
             ORDER BY (service, operation, kind, hour)\n\
             TTL {ttl}\n\
             SETTINGS ttl_only_drop_parts = 1",
            engine = self.engine("AggregatingMergeTree", "span_names"),
            ttl = Self::ttl_expression(NAMES, self.retention_days),
        )];
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_names_mv{oc} TO {db}.{names} AS\n\
             SELECT service, operation, kind, toStartOfHour(start_time) AS hour,\n\
             \x20      min(start_time) AS first_seen, max(start_time) AS last_seen\n\
             FROM {db}.{spans} GROUP BY service, operation, kind, hour"
        ));
        out.extend(add_columns(&index));
        if self.cluster.is_some() {
            out.extend(add_columns("span_index"));
        }
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_index_v2_mv{oc} TO {db}.{index} AS\n\
             SELECT service, operation, kind, start_time, trace_id, span_id, duration_ns, status, attributes,\n\
             \x20      now64(9) AS ingested_at\n\
             FROM {db}.{spans}"
        ));
        out.push(format!("DROP TABLE IF EXISTS {db}.span_index_mv{oc}"));
        if let Some(cluster) = &self.cluster {
            // No trace id here: spread the rows by service.
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {db}.span_names{oc} AS {db}.{names}\n\
                 ENGINE = Distributed({cluster}, {db}, {names}, cityHash64(service))"
            ));
        }
        // Index what is already stored (once; min/max make a repeated run harmless).
        out.push(format!(
            "INSERT INTO {names_t} (service, operation, kind, hour, first_seen, last_seen)\n\
             SELECT service, operation, kind, toStartOfHour(start_time) AS hour, min(start_time), max(start_time)\n\
             FROM {spans_t} WHERE attributes['{TENANT_ATTRIBUTE}'] = '' GROUP BY service, operation, kind, hour",
            names_t = self.table("span_names"),
            spans_t = self.table("spans"),
        ));
        out
    }

    fn v1(&self) -> Vec<String> {
        let db = &self.database;
        let oc = self.on_cluster();
        let days = self.retention_days;
        let spans = self.storage_table("spans");
        let index = self.storage_table("span_index");
        let bounds = self.storage_table("trace_bounds");
        let attrs = self.storage_table("span_attributes");
        let dedup = if self.cluster.is_none() {
            // Non-replicated tables deduplicate retried inserts only with a window.
            ", non_replicated_deduplication_window = 1000"
        } else {
            ""
        };
        let mut out = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.{spans}{oc} (\n\
                 \x20   trace_id        FixedString(16) CODEC(ZSTD(1)),\n\
                 \x20   span_id         FixedString(8) CODEC(ZSTD(1)),\n\
                 \x20   parent_id       FixedString(8) CODEC(ZSTD(1)),\n\
                 \x20   service         LowCardinality(String) CODEC(ZSTD(1)),\n\
                 \x20   operation       LowCardinality(String) CODEC(ZSTD(1)),\n\
                 \x20   kind            LowCardinality(String) CODEC(ZSTD(1)),\n\
                 \x20   start_time      DateTime64(9) CODEC(Delta(8), ZSTD(1)),\n\
                 \x20   end_time        DateTime64(9) CODEC(Delta(8), ZSTD(1)),\n\
                 \x20   duration_ns     UInt64 CODEC(T64, ZSTD(1)),\n\
                 \x20   status          LowCardinality(String) CODEC(ZSTD(1)),\n\
                 \x20   status_message  String CODEC(ZSTD(1)),\n\
                 \x20   attributes      Map(LowCardinality(String), String) CODEC(ZSTD(1)),\n\
                 \x20   attributes_json String CODEC(ZSTD(3)),\n\
                 \x20   events_json     String CODEC(ZSTD(3)),\n\
                 \x20   links_json      String CODEC(ZSTD(3))\n\
                 ) ENGINE = {engine}\n\
                 PARTITION BY toDate(start_time)\n\
                 ORDER BY (trace_id, start_time, span_id)\n\
                 TTL {ttl}\n\
                 SETTINGS index_granularity = 2048, ttl_only_drop_parts = 1{dedup}",
                engine = self.engine("MergeTree", "spans"),
                ttl = Self::ttl_expression(SPANS, days),
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.{index}{oc} (\n\
                 \x20   service     LowCardinality(String) CODEC(ZSTD(1)),\n\
                 \x20   operation   LowCardinality(String) CODEC(ZSTD(1)),\n\
                 \x20   start_time  DateTime64(9) CODEC(Delta(8), ZSTD(1)),\n\
                 \x20   trace_id    FixedString(16) CODEC(ZSTD(1)),\n\
                 \x20   span_id     FixedString(8) CODEC(ZSTD(1)),\n\
                 \x20   duration_ns UInt64 CODEC(T64, ZSTD(1)),\n\
                 \x20   status      LowCardinality(String) CODEC(ZSTD(1)),\n\
                 \x20   attributes  Map(LowCardinality(String), String) CODEC(ZSTD(1)),\n\
                 \x20   INDEX idx_attr_keys mapKeys(attributes) TYPE bloom_filter(0.01) GRANULARITY 1,\n\
                 \x20   INDEX idx_attr_values mapValues(attributes) TYPE bloom_filter(0.01) GRANULARITY 1,\n\
                 \x20   INDEX idx_duration duration_ns TYPE minmax GRANULARITY 1,\n\
                 \x20   INDEX idx_status status TYPE set(8) GRANULARITY 1\n\
                 ) ENGINE = {engine}\n\
                 PARTITION BY toDate(start_time)\n\
                 ORDER BY (service, operation, start_time)\n\
                 TTL {ttl}\n\
                 SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1{dedup}",
                engine = self.engine("MergeTree", "span_index"),
                ttl = Self::ttl_expression(INDEX, days),
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.{bounds}{oc} (\n\
                 \x20   trace_id  FixedString(16) CODEC(ZSTD(1)),\n\
                 \x20   start_min SimpleAggregateFunction(min, DateTime64(9)) CODEC(Delta(8), ZSTD(1)),\n\
                 \x20   start_max SimpleAggregateFunction(max, DateTime64(9)) CODEC(Delta(8), ZSTD(1))\n\
                 ) ENGINE = {engine}\n\
                 PARTITION BY toDate(start_min)\n\
                 ORDER BY trace_id\n\
                 TTL {ttl}\n\
                 SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1{dedup}",
                engine = self.engine("AggregatingMergeTree", "trace_bounds"),
                ttl = Self::ttl_expression(BOUNDS, days),
            ),
            format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_index_mv{oc} TO {db}.{index} AS\n\
                 SELECT service, operation, start_time, trace_id, span_id, duration_ns, status, attributes\n\
                 FROM {db}.{spans}"
            ),
            format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trace_bounds_mv{oc} TO {db}.{bounds} AS\n\
                 SELECT trace_id, min(start_time) AS start_min, max(start_time) AS start_max\n\
                 FROM {db}.{spans} GROUP BY trace_id"
            ),
        ];
        if self.attribute_index {
            out.extend([
            // One row per attribute, ordered by (key, value, time): an equality filter is a
            // primary-key range instead of a scan of every span's map.
                format!(
                "CREATE TABLE IF NOT EXISTS {db}.{attrs}{oc} (\n\
                 \x20   key        LowCardinality(String) CODEC(ZSTD(1)),\n\
                 \x20   value      String CODEC(ZSTD(1)),\n\
                 \x20   start_time DateTime64(9) CODEC(Delta(8), ZSTD(1)),\n\
                 \x20   trace_id   FixedString(16) CODEC(ZSTD(1)),\n\
                 \x20   span_id    FixedString(8) CODEC(ZSTD(1))\n\
                 ) ENGINE = {engine}\n\
                 PARTITION BY toDate(start_time)\n\
                 ORDER BY (key, value, start_time)\n\
                 TTL {ttl}\n\
                 SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1{dedup}",
                engine = self.engine("MergeTree", "span_attributes"),
                ttl = Self::ttl_expression(ATTRS, days),
            ),
                format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.span_attributes_mv{oc} TO {db}.{attrs} AS\n\
                 SELECT key, value, start_time, trace_id, span_id\n\
                 FROM {db}.{spans} ARRAY JOIN mapKeys(attributes) AS key, mapValues(attributes) AS value"
            )
            ]);
        }
        if let Some(cluster) = &self.cluster {
            let mut distributed = vec![
                ("spans", &spans),
                ("span_index", &index),
                ("trace_bounds", &bounds),
            ];
            if self.attribute_index {
                distributed.push(("span_attributes", &attrs));
            }
            for (name, local) in distributed {
                out.push(format!(
                    "CREATE TABLE IF NOT EXISTS {db}.{name}{oc} AS {db}.{local}\n\
                     ENGINE = Distributed({cluster}, {db}, {local}, cityHash64(trace_id))"
                ));
            }
        }
        out
    }

    /// The statement that sets a table's retention.
    pub fn modify_ttl(&self, table: TtlTable, days: u32) -> String {
        format!(
            "ALTER TABLE {}.{}{} MODIFY TTL {}",
            self.database,
            self.storage_table(table.name),
            self.on_cluster(),
            Self::ttl_expression(table, days)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single() -> Schema {
        Schema {
            database: "dt".into(),
            cluster: None,
            retention_days: 7,
            attribute_index: true,
        }
    }

    fn clustered() -> Schema {
        Schema {
            cluster: Some("prod".into()),
            ..single()
        }
    }

    #[test]
    fn every_migration_statement_can_run_again() {
        // `ClickHouseAdmin::recreate_missing` re-runs them to restore dropped tables.
        for schema in [single(), clustered()] {
            for m in schema.migrations() {
                for s in &m.statements {
                    // Creating is guarded, dropping the view migration 2 replaced is too, and
                    // the backfill of the names index only widens min/max bounds again.
                    // Materializing a projection again rebuilds it, and every state of the
                    // summaries absorbs a repeated backfill.
                    let idempotent = s.contains(" IF NOT EXISTS ")
                        || s.starts_with("DROP TABLE IF EXISTS ")
                        || s.contains(" MATERIALIZE PROJECTION ")
                        || s.contains(" MODIFY SETTING ")
                        || s.starts_with(&format!(
                            "INSERT INTO {}.trace_summaries ",
                            schema.database
                        ))
                        || s.starts_with(&format!("INSERT INTO {}.span_names", schema.database))
                        || (s.starts_with(&format!("INSERT INTO {}.span_links", schema.database))
                            && s.contains(" NOT IN (SELECT source_trace_id, source_span_id"))
                        || (s
                            .starts_with(&format!("INSERT INTO {}.trace_bounds", schema.database))
                            && s.contains("min(start_time), max(start_time)"));
                    assert!(idempotent, "{s}");
                }
            }
        }
        let owner = clustered().create_owner_table();
        assert!(
            owner.starts_with("CREATE TABLE IF NOT EXISTS dt.datatracing_owner ON CLUSTER prod")
        );
        assert!(
            owner.contains("ReplicatedMergeTree('/clickhouse/tables/{shard}/dt/datatracing_owner'")
        );
    }

    #[test]
    fn the_attribute_index_is_optional() {
        let lean = Schema {
            attribute_index: false,
            ..single()
        };
        let s = &lean.migrations()[0].statements;
        assert_eq!(s.len(), 5);
        assert!(!s.iter().any(|x| x.contains("span_attributes")));
        assert_eq!(lean.ttl_tables().len(), 6);
    }

    #[test]
    fn the_objects_are_what_the_migrations_leave() {
        // Views a later migration replaced (`span_index_mv`, `span_links_v2_mv`, ...) are
        // gone; every table and the views that feed them now are there.
        let tables = [
            "spans",
            "span_index",
            "trace_bounds",
            "span_attributes",
            "span_names",
            "span_links",
            "trace_summaries",
        ];
        let views = [
            "span_index_v3_mv",
            "span_names_v2_mv",
            "span_links_v3_mv",
            "span_attributes_v2_mv",
            "trace_summaries_mv",
        ];
        let mut want: Vec<String> = tables.iter().chain(&views).map(|t| t.to_string()).collect();
        want.sort();
        let mut got = single().objects();
        got.sort();
        assert_eq!(got, want);

        // Clustered: the storage tables are `*_local`, with a Distributed table of each name.
        let mut want: Vec<String> = tables
            .iter()
            .flat_map(|t| [t.to_string(), format!("{t}_local")])
            .chain(views.iter().map(|v| v.to_string()))
            .collect();
        want.sort();
        let mut got = clustered().objects();
        got.sort();
        assert_eq!(got, want);

        let lean = Schema {
            attribute_index: false,
            ..single()
        };
        assert!(!lean.objects().iter().any(|o| o.contains("attributes")));
    }

    #[test]
    fn per_trace_backfills_aggregate_in_order_with_bounded_memory() {
        for schema in [single(), clustered()] {
            let per_trace: Vec<String> = schema
                .migrations()
                .into_iter()
                .flat_map(|m| m.statements)
                .filter(|s| {
                    s.starts_with("INSERT INTO ")
                        && (s.contains("GROUP BY trace_id")
                            || s.contains("GROUP BY tenant, trace_id"))
                })
                .collect();
            assert_eq!(
                per_trace.len(),
                2,
                "trace_bounds (v4), trace_summaries (v7)"
            );
            for s in per_trace {
                assert!(s.ends_with(PER_TRACE_BACKFILL), "{s}");
            }
        }
        assert!(PER_TRACE_BACKFILL.contains("optimize_aggregation_in_order = 1"));
        assert!(PER_TRACE_BACKFILL.contains("max_bytes_before_external_group_by = "));
    }

    #[test]
    fn single_node_ddl() {
        let m = single().migrations();
        assert_eq!(m.len(), 9);
        assert_eq!(
            m[8].statements,
            ["DROP TABLE IF EXISTS dt.trace_bounds_v2_mv"]
        );
        assert_eq!(
            m[7].statements,
            [
                "ALTER TABLE dt.trace_summaries MODIFY SETTING min_compress_block_size = 4096, max_compress_block_size = 16384",
            ]
        );
        let v7 = &m[6].statements;
        assert_eq!(v7.len(), 6);
        assert!(
            v7[0].starts_with("CREATE TABLE IF NOT EXISTS dt.trace_summaries (")
                && v7[0].contains("ENGINE = AggregatingMergeTree()")
                && v7[0].contains("ORDER BY (trace_id, tenant)")
                && v7[0].contains("PARTITION BY toDate(start_min)")
                && v7[0].contains("TTL toDateTime(start_min) + toIntervalDay(7)")
                && v7[0].contains("index_granularity = 256"),
            "summaries keyed by trace id, small granules, expiring by day: {}",
            v7[0]
        );
        assert!(
            v7[1].starts_with("CREATE MATERIALIZED VIEW IF NOT EXISTS dt.trace_summaries_mv TO dt.trace_summaries AS")
                && v7[1].contains("FROM dt.spans GROUP BY tenant, trace_id, toDate(start_time)")
                && v7[1].contains("(parent_id != unhex('0000000000000000'), start_time, span_id)"),
            "one row per tenant, trace and day, the reader's root key: {}",
            v7[1]
        );
        assert!(
            v7[2].starts_with("INSERT INTO dt.trace_summaries (")
                && v7[2].contains("FROM dt.spans GROUP BY tenant, trace_id, toDate(start_time)"),
            "backfill, after the view exists: {}",
            v7[2]
        );
        assert_eq!(
            v7[3],
            "ALTER TABLE dt.span_index \
             ADD PROJECTION IF NOT EXISTS by_time (SELECT tenant, service, operation, kind, status, start_time, trace_id, duration_ns, ingested_at ORDER BY (tenant, start_time)), \
             ADD PROJECTION IF NOT EXISTS by_service_time (SELECT tenant, service, operation, kind, status, start_time, trace_id, duration_ns, ingested_at ORDER BY (tenant, service, start_time))"
        );
        assert_eq!(
            v7[4..],
            [
                "ALTER TABLE dt.span_index MATERIALIZE PROJECTION by_time",
                "ALTER TABLE dt.span_index MATERIALIZE PROJECTION by_service_time"
            ]
        );
        assert!(single().ttl_tables().contains(&SUMMARIES));
        let v6 = &m[5].statements;
        assert_eq!(
            v6[0],
            "ALTER TABLE dt.span_links ADD COLUMN IF NOT EXISTS dataset String CODEC(ZSTD(1))"
        );
        assert!(
            v6[1].starts_with("CREATE MATERIALIZED VIEW IF NOT EXISTS dt.span_links_v3_mv")
                && v6[1].contains("'datatracing.link.dataset') AS dataset"),
            "{}",
            v6[1]
        );
        assert_eq!(v6[2], "DROP TABLE IF EXISTS dt.span_links_v2_mv");
        assert!(v6[3].starts_with("INSERT INTO dt.span_links "), "backfill");
        let v5 = &m[4].statements;
        assert!(
            v5.iter().any(|x| x
                == "ALTER TABLE dt.span_names ADD COLUMN IF NOT EXISTS tenant LowCardinality(String) CODEC(ZSTD(1)), \
                    MODIFY ORDER BY (service, operation, kind, hour, tenant)"),
            "two tenants' names never merge: {v5:?}"
        );
        for old in [
            "span_index_v2_mv",
            "span_names_mv",
            "span_links_mv",
            "span_attributes_mv",
        ] {
            let created = v5
                .iter()
                .position(|x| {
                    x.starts_with("CREATE MATERIALIZED VIEW") && x.contains("SELECT tenant")
                })
                .unwrap();
            let dropped = v5
                .iter()
                .position(|x| *x == format!("DROP TABLE IF EXISTS dt.{old}"))
                .unwrap();
            assert!(created < dropped, "the new views exist before {old} goes");
        }
        let v4 = &m[3].statements;
        assert!(
            v4[0].contains("TO dt.trace_bounds AS")
                && v4[0].ends_with("GROUP BY trace_id, toDate(start_time)"),
            "one bounds row per trace and day: {}",
            v4[0]
        );
        assert_eq!(v4[1], "DROP TABLE IF EXISTS dt.trace_bounds_mv");
        assert!(
            v4[2].starts_with("INSERT INTO dt.trace_bounds "),
            "backfill"
        );
        let v3 = &m[2].statements;
        assert!(v3[0].contains("ORDER BY (target_trace_id, source_trace_id, source_span_id)"));
        assert!(
            v3[1].contains("TO dt.span_links AS") && v3[1].contains("FROM dt.spans ARRAY JOIN")
        );
        assert!(v3[2].starts_with("INSERT INTO dt.span_links "), "backfill");
        let v2 = &m[1].statements;
        assert!(v2[0].contains("ORDER BY (service, operation, kind, hour)"));
        assert!(v2[1].contains("TO dt.span_names AS") && v2[1].contains("toStartOfHour"));
        assert!(v2[2].contains("ALTER TABLE dt.span_index ADD COLUMN IF NOT EXISTS kind"));
        assert!(v2[3].contains("ingested_at DateTime64(9) DEFAULT toDateTime64(0, 9)"));
        let new_mv = v2
            .iter()
            .position(|x| x.contains("span_index_v2_mv"))
            .unwrap();
        let drop_old = v2
            .iter()
            .position(|x| x.contains("DROP TABLE IF EXISTS dt.span_index_mv"))
            .unwrap();
        assert!(
            new_mv < drop_old,
            "the new view exists before the old one goes"
        );
        assert!(v2[new_mv].contains("now64(9) AS ingested_at"));
        assert!(
            v2.last().unwrap().starts_with("INSERT INTO dt.span_names"),
            "backfill"
        );
        let s = &m[0].statements;
        assert_eq!(s.len(), 7);
        assert!(
            s[5].contains("ORDER BY (key, value, start_time)"),
            "attribute equality is a key range"
        );
        assert!(
            s[6].contains("ARRAY JOIN mapKeys(attributes) AS key, mapValues(attributes) AS value")
        );
        assert!(s[0].starts_with("CREATE TABLE IF NOT EXISTS dt.spans ("));
        assert!(s[0].contains("ENGINE = MergeTree()"));
        assert!(
            s[0].contains("ORDER BY (trace_id, start_time, span_id)"),
            "a trace is one contiguous range"
        );
        assert!(
            s[1].contains("ORDER BY (service, operation, start_time)"),
            "search reads the index"
        );
        assert!(s[1].contains("bloom_filter") && s[1].contains("mapValues(attributes)"));
        assert!(s[3].contains("TO dt.span_index AS") && s[4].contains("TO dt.trace_bounds AS"));
        assert!(s[0].contains("PARTITION BY toDate(start_time)"));
        assert!(s[0].contains("TTL toDateTime(start_time) + toIntervalDay(7)"));
        assert!(s[0].contains("ttl_only_drop_parts = 1"));
        assert!(s[0].contains("non_replicated_deduplication_window"));
        assert!(
            !s.iter()
                .any(|x| x.contains("ON CLUSTER") || x.contains("Distributed"))
        );
        assert_eq!(
            single().modify_ttl(SPANS, 30),
            "ALTER TABLE dt.spans MODIFY TTL toDateTime(start_time) + toIntervalDay(30)"
        );
    }

    /// Every `IN (SELECT ... FROM <table>` in `sql`: whether it is `GLOBAL`, and the table.
    fn in_subqueries(sql: &str) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        for (at, _) in sql.match_indices("IN (SELECT ") {
            let global = sql[..at].ends_with("GLOBAL ") || sql[..at].ends_with("GLOBAL NOT ");
            let from = at + sql[at..].find(" FROM ").unwrap() + " FROM ".len();
            let table = sql[from..].split([' ', '\n', ')']).next().unwrap();
            out.push((global, table.to_string()));
        }
        out
    }

    #[test]
    fn clustered_backfills_read_no_distributed_table_in_a_plain_in() {
        // On two or more shards ClickHouse refuses an `IN` over a Distributed table inside a
        // query over one (`tests/cluster.rs` runs them on two shards); the single-node SQL
        // keeps its plain `IN` over the plain tables.
        let backfills = |s: &Schema| -> Vec<String> {
            s.migrations()
                .into_iter()
                .flat_map(|m| m.statements)
                .filter(|x| x.starts_with("INSERT"))
                .collect()
        };
        let mut seen = Vec::new();
        for sql in backfills(&clustered()) {
            for (global, table) in in_subqueries(&sql) {
                assert!(global != table.ends_with("_local"), "{sql}");
                seen.push((global, table));
            }
        }
        assert_eq!(
            seen,
            [
                (true, "dt.span_links".to_string()),
                (false, "dt.trace_bounds_local".to_string()),
                (true, "dt.span_links".to_string()),
                (true, "dt.span_links".to_string()),
            ]
        );
        for sql in backfills(&single()) {
            assert!(!sql.contains("GLOBAL") && !sql.contains("_local"), "{sql}");
            assert!(in_subqueries(&sql).iter().all(|(g, _)| !g), "{sql}");
        }
        assert_eq!(single().local_table("spans"), single().table("spans"));
        assert_eq!(clustered().local_table("spans"), "dt.spans_local");
        assert_eq!(
            (single().global_in(), clustered().global_in()),
            ("", "GLOBAL ")
        );
    }

    #[test]
    fn clustered_ddl() {
        let c = clustered();
        assert_eq!(
            c.create_database(),
            "CREATE DATABASE IF NOT EXISTS dt ON CLUSTER prod"
        );
        assert_eq!(
            c.migrations()[8].statements,
            ["DROP TABLE IF EXISTS dt.trace_bounds_v2_mv ON CLUSTER prod"]
        );
        assert_eq!(
            c.migrations()[7].statements,
            [
                "ALTER TABLE dt.trace_summaries_local ON CLUSTER prod MODIFY SETTING min_compress_block_size = 4096, max_compress_block_size = 16384",
            ],
            "the storage table, not the Distributed one"
        );
        let v7 = &c.migrations()[6].statements;
        assert!(
            v7[0].starts_with(
                "CREATE TABLE IF NOT EXISTS dt.trace_summaries_local ON CLUSTER prod ("
            )
        );
        assert!(v7[0].contains(
            "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/dt/trace_summaries_local', '{replica}')"
        ));
        assert!(
            v7[1].contains("trace_summaries_mv ON CLUSTER prod TO dt.trace_summaries_local")
                && v7[1].contains("FROM dt.spans_local GROUP BY")
        );
        assert!(v7[2].contains(
            "ENGINE = Distributed(prod, dt, trace_summaries_local, cityHash64(trace_id))"
        ));
        assert!(
            v7[3].starts_with("INSERT INTO dt.trace_summaries (")
                && v7[3].contains("FROM dt.spans GROUP BY"),
            "the backfill reads and writes through the Distributed tables: {}",
            v7[3]
        );
        assert!(v7[4].starts_with(
            "ALTER TABLE dt.span_index_local ON CLUSTER prod ADD PROJECTION IF NOT EXISTS by_time"
        ));
        assert_eq!(
            v7[5..],
            [
                "ALTER TABLE dt.span_index_local ON CLUSTER prod MATERIALIZE PROJECTION by_time",
                "ALTER TABLE dt.span_index_local ON CLUSTER prod MATERIALIZE PROJECTION by_service_time"
            ]
        );
        let v4 = &c.migrations()[3].statements;
        assert!(
            v4[0].contains("trace_bounds_v2_mv ON CLUSTER prod TO dt.trace_bounds_local")
                && v4[0].contains("FROM dt.spans_local")
        );
        assert!(
            v4[2].contains("INSERT INTO dt.trace_bounds ") && v4[2].contains("FROM dt.spans\n")
        );
        let v2 = &c.migrations()[1].statements;
        assert!(
            v2.iter()
                .filter(|x| !x.starts_with("INSERT"))
                .all(|x| x.contains(" ON CLUSTER prod"))
        );
        assert!(v2.iter().any(|x| x.contains(
            "ALTER TABLE dt.span_index_local ON CLUSTER prod ADD COLUMN IF NOT EXISTS ingested_at"
        )));
        assert!(
            v2.iter().any(|x| x.contains(
                "ALTER TABLE dt.span_index ON CLUSTER prod ADD COLUMN IF NOT EXISTS ingested_at"
            )),
            "the Distributed table gets the columns too"
        );
        assert!(v2.iter().any(|x| x.contains("Distributed(prod, dt, span_names_local, cityHash64(service))")));
        assert!(
            v2.last().unwrap().contains("INSERT INTO dt.span_names ")
                && v2.last().unwrap().contains("FROM dt.spans ")
        );
        let s = &c.migrations()[0].statements;
        assert_eq!(s.len(), 11);
        assert!(s.iter().all(|x| x.contains(" ON CLUSTER prod")));
        assert!(s[0].starts_with("CREATE TABLE IF NOT EXISTS dt.spans_local ON CLUSTER prod"));
        assert!(s[0].contains(
            "ReplicatedMergeTree('/clickhouse/tables/{shard}/dt/spans_local', '{replica}')"
        ));
        assert!(
            s[1].contains("ReplicatedMergeTree('/clickhouse/tables/{shard}/dt/span_index_local'")
        );
        assert!(s[2].contains(
            "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/dt/trace_bounds_local'"
        ));
        assert!(s[3].contains("TO dt.span_index_local") && s[3].contains("FROM dt.spans_local"));
        assert!(s[4].contains("TO dt.trace_bounds_local") && s[4].contains("FROM dt.spans_local"));
        assert!(
            s[5].contains(
                "ReplicatedMergeTree('/clickhouse/tables/{shard}/dt/span_attributes_local'"
            )
        );
        assert!(
            s[6].contains("TO dt.span_attributes_local") && s[6].contains("FROM dt.spans_local")
        );
        assert!(s[7].contains("ENGINE = Distributed(prod, dt, spans_local, cityHash64(trace_id))"));
        assert!(
            s[8].contains("ENGINE = Distributed(prod, dt, span_index_local, cityHash64(trace_id))")
        );
        assert!(
            s[9].contains(
                "ENGINE = Distributed(prod, dt, trace_bounds_local, cityHash64(trace_id))"
            )
        );
        assert!(s[10].contains(
            "ENGINE = Distributed(prod, dt, span_attributes_local, cityHash64(trace_id))"
        ));
        assert!(
            !s[0].contains("non_replicated_deduplication_window"),
            "replicated tables dedup natively"
        );
        assert_eq!(
            c.modify_ttl(BOUNDS, 3),
            "ALTER TABLE dt.trace_bounds_local ON CLUSTER prod MODIFY TTL toDateTime(start_min) + toIntervalDay(3)"
        );
        assert!(
            c.create_migrations_table()
                .contains("ReplicatedReplacingMergeTree")
        );
        assert_eq!(
            c.table("spans"),
            "dt.spans",
            "reads and writes go through the Distributed table"
        );
    }
}
