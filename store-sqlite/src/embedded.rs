//! The embedded store: SQLite (through rusqlite, compiled in) in WAL mode under a data
//! directory. See `docs/adr/0001-embedded-store-sqlite.md` for why SQLite.
//!
//! One writer thread owns the only write connection and commits concurrent write requests
//! together (group commit), so each acknowledged batch costs one fsync at most. Reads use a
//! small pool of connections on tokio's blocking threads; WAL lets them run while the writer
//! commits. Retention deletes old spans in bounded chunks from a background task.
//!
//! Besides `spans`, the schema keeps `span_names` (service, operation, kind, hour, first and
//! last start in that hour), maintained by the writer in the same transaction, so listing
//! services and operations reads a few index rows instead of the spans. Span row ids only
//! grow (never reused, even after retention: `store_meta` remembers the highest one purged),
//! which lets a search cursor pin "the rows that existed" as a row id.
//!
//! `span_links` (schema version 3) is the reverse-link index: one row per link from a span to
//! a span of another trace, keyed by the linked trace, written with the span and deleted with
//! it. Downstream lineage ("which traces link to this one") and the `linked_trace` /
//! `linked_service` search filters read it instead of every span's links.
//!
//! Every table carries the span's tenant (schema version 4, ADR 0010): a span is identified
//! by (tenant, trace, span), and every read statement filters on the tenant of the handle it
//! runs for, which `EmbeddedStore::with_reader` hands to each read closure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datatracing_config::{EmbeddedConfig, Synchronous};
use datatracing_core::{
    AttributeFilter, AttributeMatcher, AttributeOp, Attributes, Event, Link, Operation,
    SearchCursor, SearchPage, Span, SpanCursor, SpanId, SpanKind, Status, StatusCode,
    SummaryBuilder, Tenant, TimeWindow, Timestamp, TraceId, TraceQuery, TraceSummary,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use datatracing_store::{CappedTrace, CrossLink, Health, TraceReader, TraceWriter, cross_links};

use crate::{Error, Result};

pub(crate) const DB_FILE: &str = "traces.db";
/// Locked (advisory, whole file) by the one process that opens the store read-write, so a
/// second collector or a restore on the same directory is refused instead of interleaving.
pub(crate) const LOCK_FILE: &str = "store.lock";
pub(crate) const SCHEMA_VERSION: i64 = 5;
/// How long opening waits for the lock: a store closed in this process a moment ago may
/// still be releasing it on its writer thread.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// Width of a `span_names` bucket: services and operations are indexed per hour.
const NAME_BUCKET_NS: i64 = 3_600_000_000_000;
/// Spans committed in one group-commit transaction at most; bounds the writer's latency.
const MAX_GROUP_SPANS: usize = 50_000;
/// Rows deleted per retention transaction, so writers are never starved by a purge.
const PURGE_CHUNK: usize = 10_000;

/// Whether this process writes (collector, all-in-one) or only reads (standalone query
/// sharing the collector's data directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Owns writes and retention.
    ReadWrite,
    /// Queries only.
    ReadOnly,
}

/// Where a write is answered; the error is already classified, so one failure can answer
/// every writer of a group.
type WriteReply = oneshot::Sender<datatracing_store::Result<()>>;

enum Command {
    Write {
        spans: Arc<[Span]>,
        reply: WriteReply,
    },
    Purge {
        cutoff: Timestamp,
        reply: oneshot::Sender<Result<usize>>,
    },
}

struct Inner {
    config: EmbeddedConfig,
    mode: OpenMode,
    readers: Mutex<Vec<Connection>>,
    read_permits: Semaphore,
    writer: Mutex<Option<mpsc::Sender<Command>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    background: CancellationToken,
}

/// The embedded SQLite-backed store: a [`TraceWriter`] (read-write mode) and a
/// [`TraceReader`] over one database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// The tenant every read of this handle is confined to ([`TraceReader::for_tenant`]).
    tenant: Tenant,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("data_dir", &self.inner.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store. Must be called inside a tokio runtime: the
    /// retention task runs on it.
    pub async fn open(config: EmbeddedConfig, mode: OpenMode) -> Result<Self> {
        config.validate()?;
        let cfg = config.clone();
        let (writer_conn, readers) =
            tokio::task::spawn_blocking(move || open_connections(&cfg, mode))
                .await
                .map_err(|e| Error::Task(format!("open: {e}")))??;

        let (tx, thread) = match writer_conn {
            Some((conn, lock)) => {
                let (tx, rx) = mpsc::channel(256);
                let thread = std::thread::Builder::new()
                    .name("dt-store-writer".into())
                    .spawn(move || {
                        writer_loop(conn, rx);
                        // Released when the last write is done, not before.
                        drop(lock);
                    })?;
                (Some(tx), Some(thread))
            }
            None => (None, None),
        };
        let store = EmbeddedStore {
            inner: Arc::new(Inner {
                read_permits: Semaphore::new(readers.len()),
                readers: Mutex::new(readers),
                writer: Mutex::new(tx),
                writer_thread: Mutex::new(thread),
                background: CancellationToken::new(),
                config,
                mode,
            }),
            tenant: Tenant::default_tenant(),
        };
        if mode == OpenMode::ReadWrite && !store.inner.config.retention.get().is_zero() {
            tokio::spawn(retention_loop(store.clone()));
        }
        tracing::info!(data_dir = %store.inner.config.data_dir.display(), ?mode, "embedded store opened");
        Ok(store)
    }

    /// Deletes spans that started before `cutoff`; returns how many were deleted.
    pub async fn purge_older_than(&self, cutoff: Timestamp) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let (reply, rx) = oneshot::channel();
            self.send(Command::Purge { cutoff, reply }).await?;
            let n = rx.await.map_err(|_| Error::Closed)??;
            total += n as u64;
            if n < PURGE_CHUNK {
                return Ok(total);
            }
        }
    }

    async fn send(&self, cmd: Command) -> Result<()> {
        let tx = {
            let guard = self.inner.writer.lock().map_err(|_| Error::Closed)?;
            match guard.as_ref() {
                Some(tx) => tx.clone(),
                None if self.inner.mode == OpenMode::ReadOnly => return Err(Error::ReadOnly),
                None => return Err(Error::Closed),
            }
        };
        tx.send(cmd).await.map_err(|_| Error::Closed)
    }

    async fn with_reader<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &str) -> Result<T> + Send + 'static,
    {
        // Every read closure is handed the handle's tenant: none can be written without
        // deciding what to do with it.
        let tenant = self.tenant.clone();
        let _permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| Error::Closed)?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .readers
                .lock()
                .map_err(|_| Error::Closed)?
                .pop()
                .ok_or(Error::Closed)?;
            let deadline = Instant::now() + inner.config.query_timeout.get();
            let result = conn
                .progress_handler(10_000, Some(move || Instant::now() > deadline))
                .map_err(Error::from)
                .and_then(|()| f(&conn, tenant.as_str()));
            // Clearing a handler cannot fail in a way that matters: the next query sets its own.
            let _ = conn.progress_handler(0, None::<fn() -> bool>);
            if let Ok(mut pool) = inner.readers.lock() {
                pool.push(conn);
            }
            result.map_err(|e| match e {
                Error::Sqlite(ref s)
                    if s.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) =>
                {
                    Error::QueryTimeout(inner.config.query_timeout.get())
                }
                other => other,
            })
        })
        .await
        .map_err(|e| Error::Task(format!("read: {e}")))?
    }
}

type Writer = (Connection, std::fs::File);

/// A read connection's settings beyond [`configure`]'s.
fn configure_reader(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "query_only", true)?;
    // One plan per statement, whatever is bound: SQLite otherwise re-prepares a cached
    // statement when a parameter it looked at while planning (a LIMIT, a value it compared)
    // gets a new value; that re-parse was 13-14 % of a Jaeger search (each trace of the
    // answer binds a new span budget). The reads' plans must not depend on bound values
    // anyway (no statistics are gathered; the search's index choices are pinned in the SQL
    // and asserted by the plan tests, which plan under this setting).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

fn open_connections(
    cfg: &EmbeddedConfig,
    mode: OpenMode,
) -> Result<(Option<Writer>, Vec<Connection>)> {
    let path = cfg.data_dir.join(DB_FILE);
    let writer = match mode {
        OpenMode::ReadWrite => {
            std::fs::create_dir_all(&cfg.data_dir)?;
            let lock = lock_with_wait(&cfg.data_dir)?;
            let conn = Connection::open(&path)?;
            configure(&conn, cfg)?;
            migrate(&conn)?;
            Some((conn, lock))
        }
        OpenMode::ReadOnly => {
            if !path.exists() {
                return Err(Error::Config(format!(
                    "no embedded store at {} (start a collector on this data directory first)",
                    path.display()
                )));
            }
            None
        }
    };
    let mut readers = Vec::with_capacity(cfg.read_connections);
    for _ in 0..cfg.read_connections {
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        configure(&conn, cfg)?;
        register_functions(&conn)?;
        configure_reader(&conn)?;
        let version = check_version(&conn)?;
        if mode == OpenMode::ReadOnly && version < SCHEMA_VERSION {
            return Err(Error::Config(format!(
                "the data directory has schema version {version}, older than this binary's \
                 {SCHEMA_VERSION}; start this version's collector on it once to upgrade it"
            )));
        }
        readers.push(conn);
    }
    Ok((writer, readers))
}

fn lock_with_wait(data_dir: &std::path::Path) -> Result<std::fs::File> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match crate::backup::lock_data_dir(data_dir) {
            Err(Error::InUse(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn configure(conn: &Connection, cfg: &EmbeddedConfig) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Config(format!(
            "could not enable WAL mode (got {mode})"
        )));
    }
    let sync = match cfg.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "cache_size", -i64::from(cfg.cache_mib) * 1024)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// `dt_attr(attributes_json, key, op, operand)`: whether stored attributes satisfy an
/// [`AttributeFilter`] (see [`filter_args`] for `op` and `operand`). Evaluated in Rust so the
/// embedded store compares exactly as the model defines; the compiled filter (a regex, say)
/// is kept as SQLite auxiliary data for the statement, so it is built once, not per row.
fn register_functions(conn: &Connection) -> Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "dt_attr",
        4,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let matcher = match ctx.get_aux::<AttributeMatcher>(3)? {
                Some(m) => m,
                None => {
                    let key: String = ctx.get(1)?;
                    let op: String = ctx.get(2)?;
                    let operand = ctx.get_raw(3);
                    let filter = filter_from_args(key, &op, operand)
                        .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
                    let m = filter
                        .compile()
                        .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
                    ctx.set_aux(3, m)?
                }
            };
            let Some(json) = ctx.get::<Option<String>>(0)? else {
                return Ok(false);
            };
            let attrs: Attributes = serde_json::from_str(&json)
                .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
            Ok(matcher.matches(&attrs))
        },
    )?;
    Ok(())
}

/// The `op` and `operand` arguments of `dt_attr` for a filter.
fn filter_args(f: &AttributeFilter) -> (&'static str, Value) {
    match &f.op {
        AttributeOp::Exists => ("exists", Value::Null),
        AttributeOp::Eq(v) => ("eq", Value::Text(v.clone())),
        AttributeOp::Ne(v) => ("ne", Value::Text(v.clone())),
        AttributeOp::Regex(v) => ("regex", Value::Text(v.clone())),
        AttributeOp::Numeric(o, x) => (o.as_str(), Value::Real(*x)),
        AttributeOp::Contains(v) => ("contains", Value::Text(v.clone())),
    }
}

fn filter_from_args(
    key: String,
    op: &str,
    operand: rusqlite::types::ValueRef<'_>,
) -> std::result::Result<AttributeFilter, datatracing_core::Error> {
    let text = || -> std::result::Result<String, datatracing_core::Error> {
        operand
            .as_str()
            .map(str::to_string)
            .map_err(|_| datatracing_core::Error::Query("dt_attr operand must be text".into()))
    };
    let op = match op {
        "exists" => AttributeOp::Exists,
        "eq" => AttributeOp::Eq(text()?),
        "ne" => AttributeOp::Ne(text()?),
        "regex" => AttributeOp::Regex(text()?),
        "contains" => AttributeOp::Contains(text()?),
        other => {
            let o = datatracing_core::NumericOp::parse(other).ok_or_else(|| {
                datatracing_core::Error::Query(format!("dt_attr: unknown operator {other}"))
            })?;
            let x = operand.as_f64().map_err(|_| {
                datatracing_core::Error::Query("dt_attr operand must be a number".into())
            })?;
            AttributeOp::Numeric(o, x)
        }
    };
    Ok(AttributeFilter { key, op })
}

fn check_version(conn: &Connection) -> Result<i64> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if v > SCHEMA_VERSION {
        return Err(Error::Config(format!(
            "the data directory has schema version {v}, newer than this binary's {SCHEMA_VERSION}; upgrade DataTracing"
        )));
    }
    Ok(v)
}

/// Versioned, idempotent schema set-up. Version 1 is the first layout; version 2 adds the
/// `span_names` index (filled from the stored spans once) and `store_meta`; version 3 adds
/// the `span_links` reverse-link index (filled from the stored spans' links once); version 4
/// adds tenants (ADR 0010): a `tenant` column on spans, span_names and span_links, existing
/// rows in the default tenant `''`, and span identity becomes (tenant, trace, span); version 5
/// adds the dataset each link names to `span_links`.
fn migrate(conn: &Connection) -> Result<()> {
    let version = check_version(conn)?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    if version < 1 {
        // Must precede the first table so freed pages can be returned by incremental vacuum.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS spans (
                 id             INTEGER PRIMARY KEY,
                 trace_id       BLOB    NOT NULL,
                 span_id        BLOB    NOT NULL,
                 parent_id      BLOB,
                 service        TEXT    NOT NULL,
                 operation      TEXT    NOT NULL,
                 kind           INTEGER NOT NULL,
                 start_ns       INTEGER NOT NULL,
                 end_ns         INTEGER NOT NULL,
                 duration_ns    INTEGER NOT NULL,
                 status         INTEGER NOT NULL,
                 status_message TEXT,
                 attributes     TEXT,
                 events         TEXT,
                 links          TEXT
             );
             CREATE UNIQUE INDEX IF NOT EXISTS spans_by_trace ON spans(trace_id, span_id);
             CREATE INDEX IF NOT EXISTS spans_by_start ON spans(start_ns);
             CREATE INDEX IF NOT EXISTS spans_by_service ON spans(service, start_ns);
             CREATE INDEX IF NOT EXISTS spans_by_service_op ON spans(service, operation, start_ns);
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    if version < 2 {
        conn.execute_batch(&format!(
        "BEGIN;
         CREATE TABLE IF NOT EXISTS span_names (
             service   TEXT    NOT NULL,
             operation TEXT    NOT NULL,
             kind      INTEGER NOT NULL,
             hour      INTEGER NOT NULL,
             first_ns  INTEGER NOT NULL,
             last_ns   INTEGER NOT NULL,
             PRIMARY KEY (service, operation, kind, hour)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS span_names_by_hour ON span_names(hour);
         CREATE TABLE IF NOT EXISTS store_meta (
             key   TEXT PRIMARY KEY,
             value INTEGER NOT NULL
         ) WITHOUT ROWID;
         INSERT OR REPLACE INTO span_names (service, operation, kind, hour, first_ns, last_ns)
             SELECT service, operation, kind, start_ns / {NAME_BUCKET_NS}, min(start_ns), max(start_ns)
             FROM spans GROUP BY service, operation, kind, start_ns / {NAME_BUCKET_NS};
         PRAGMA user_version = 2;
         COMMIT;"
        ))?;
    }
    if version < 3 {
        migrate_span_links(conn)?;
    }
    if version < 4 {
        migrate_tenants(conn)?;
    }
    if version < 5 {
        migrate_link_datasets(conn)?;
    }
    Ok(())
}

/// Schema version 5: the dataset a link names, in `span_links` (lineage groups and filters
/// by it), filled from the links of the spans already stored.
fn migrate_link_datasets(conn: &Connection) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    let has: i64 = tx.query_row(
        "SELECT count(*) FROM pragma_table_info('span_links') WHERE name = 'dataset'",
        [],
        |r| r.get(0),
    )?;
    if has == 0 {
        tx.execute_batch("ALTER TABLE span_links ADD COLUMN dataset TEXT;")?;
    }
    {
        // Only spans whose links mention the attribute at all are parsed.
        let mut read =
            tx.prepare("SELECT id, trace_id, span_id, links FROM spans WHERE links LIKE ?1")?;
        let mut update = tx.prepare(
            "UPDATE span_links SET dataset = ?1 WHERE source_row = ?2 AND target_trace = ?3 \
             AND target_span = ?4 AND link_type = ?5",
        )?;
        let mut rows =
            read.query([format!("%{}%", datatracing_core::conventions::LINK_DATASET)])?;
        while let Some(r) = rows.next()? {
            let (id, trace_id, span_id, links) = stored_links(r)?;
            for l in cross_links(trace_id, span_id, &links) {
                if let Some(d) = &l.dataset {
                    update.execute(params![
                        d,
                        id,
                        l.to_trace.as_bytes().as_slice(),
                        l.to_span.as_bytes().as_slice(),
                        l.link_type.code(),
                    ])?;
                }
            }
        }
    }
    tx.execute_batch("PRAGMA user_version = 5;")?;
    tx.commit()?;
    Ok(())
}

/// Schema version 4: tenants. `span_names` gets the tenant in its key, so it is rebuilt;
/// the unique span index becomes (tenant, trace_id, span_id), so the same ids under two
/// tenants are two spans.
fn migrate_tenants(conn: &Connection) -> Result<()> {
    let has_column = |table: &str| -> Result<bool> {
        let n: i64 = conn.query_row(
            &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = 'tenant'"),
            [],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    };
    let tx = conn.unchecked_transaction()?;
    if !has_column("spans")? {
        tx.execute_batch("ALTER TABLE spans ADD COLUMN tenant TEXT NOT NULL DEFAULT '';")?;
    }
    if !has_column("span_links")? {
        tx.execute_batch("ALTER TABLE span_links ADD COLUMN tenant TEXT NOT NULL DEFAULT '';")?;
    }
    tx.execute_batch(
        "DROP INDEX IF EXISTS spans_by_trace;
         CREATE UNIQUE INDEX spans_by_trace ON spans(tenant, trace_id, span_id);
         CREATE TABLE span_names_v4 (
             tenant    TEXT    NOT NULL,
             service   TEXT    NOT NULL,
             operation TEXT    NOT NULL,
             kind      INTEGER NOT NULL,
             hour      INTEGER NOT NULL,
             first_ns  INTEGER NOT NULL,
             last_ns   INTEGER NOT NULL,
             PRIMARY KEY (tenant, service, operation, kind, hour)
         ) WITHOUT ROWID;
         INSERT INTO span_names_v4 SELECT '', service, operation, kind, hour, first_ns, last_ns FROM span_names;
         DROP TABLE span_names;
         ALTER TABLE span_names_v4 RENAME TO span_names;
         CREATE INDEX IF NOT EXISTS span_names_by_hour ON span_names(hour);
         PRAGMA user_version = 4;",
    )?;
    tx.commit()?;
    Ok(())
}

/// Schema version 3: the `span_links` table and its indexes, filled from the links of the
/// spans already stored, in one transaction.
fn migrate_span_links(conn: &Connection) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS span_links (
             source_row   INTEGER NOT NULL,
             source_trace BLOB    NOT NULL,
             source_span  BLOB    NOT NULL,
             target_trace BLOB    NOT NULL,
             target_span  BLOB    NOT NULL,
             link_type    INTEGER NOT NULL,
             tenant       TEXT    NOT NULL DEFAULT '',
             dataset      TEXT
         );
         CREATE INDEX IF NOT EXISTS span_links_by_target ON span_links(target_trace);
         CREATE INDEX IF NOT EXISTS span_links_by_source ON span_links(source_row);
         DELETE FROM span_links;",
    )?;
    {
        let mut read =
            tx.prepare("SELECT id, trace_id, span_id, links FROM spans WHERE links IS NOT NULL")?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let (id, trace_id, span_id, links) = stored_links(r)?;
            insert_links(&tx, "", id, trace_id, span_id, &links)?;
        }
    }
    tx.execute_batch("PRAGMA user_version = 3;")?;
    tx.commit()?;
    Ok(())
}

/// A `SELECT id, trace_id, span_id, links` row of `spans`, read by the migrations that
/// index the links already stored.
fn stored_links(r: &rusqlite::Row<'_>) -> Result<(i64, TraceId, SpanId, Vec<Link>)> {
    let trace_id = TraceId::from_slice(r.get_ref(1)?.as_blob()?)
        .map_err(|_| Error::Corrupt("trace_id".into()))?;
    let span_id = SpanId::from_slice(r.get_ref(2)?.as_blob()?)
        .map_err(|_| Error::Corrupt("span_id".into()))?;
    let links: Vec<Link> = serde_json::from_str(r.get_ref(3)?.as_str()?)
        .map_err(|e| Error::Corrupt(format!("links of a stored span: {e}")))?;
    Ok((r.get(0)?, trace_id, span_id, links))
}

/// Indexes a span's links to other traces under its row id.
fn insert_links(
    conn: &Connection,
    tenant: &str,
    row: i64,
    trace_id: TraceId,
    span_id: SpanId,
    links: &[Link],
) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO span_links (source_row, source_trace, source_span, target_trace, target_span, link_type, tenant, dataset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for l in cross_links(trace_id, span_id, links) {
        stmt.execute(params![
            row,
            l.from_trace.as_bytes().as_slice(),
            l.from_span.as_bytes().as_slice(),
            l.to_trace.as_bytes().as_slice(),
            l.to_span.as_bytes().as_slice(),
            l.link_type.code(),
            tenant,
            l.dataset,
        ])?;
    }
    Ok(())
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Command>) {
    let mut pending: Option<Command> = None;
    loop {
        let cmd = match pending.take() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(c) => c,
                None => break,
            },
        };
        match cmd {
            Command::Write { spans, reply } => {
                let mut total = spans.len();
                let mut group = vec![(spans, reply)];
                while total < MAX_GROUP_SPANS {
                    match rx.try_recv() {
                        Ok(Command::Write { spans, reply }) => {
                            total += spans.len();
                            group.push((spans, reply));
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(&mut conn, group);
            }
            Command::Purge { cutoff, reply } => {
                let _ = reply.send(purge_chunk(&mut conn, cutoff));
            }
        }
    }
    // Fold the WAL back into the main file so a clean shutdown leaves one tidy file.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "checkpoint at close failed");
    }
}

/// Commits a group of write requests in one transaction and answers each. A transient
/// failure (busy, disk full) fails the whole group so every writer retries. A permanent one
/// is usually caused by one request (a span the database refuses), so each request is then
/// committed alone: only the offending writer sees the error, the others are not punished
/// for sharing its transaction.
fn commit_group(conn: &mut Connection, group: Vec<(Arc<[Span]>, WriteReply)>) {
    match write_group(conn, group.iter().map(|(s, _)| &s[..])) {
        Ok(()) => {
            for (_, reply) in group {
                let _ = reply.send(Ok(()));
            }
        }
        Err(e) if group.len() > 1 && !e.is_transient() => {
            tracing::warn!(error = %e, requests = group.len(), "group commit refused; committing its requests one by one");
            for (spans, reply) in group {
                let r = write_group(conn, std::iter::once(&spans[..])).map_err(Into::into);
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, transient = e.is_transient(), "embedded store write failed");
            let e = datatracing_store::Error::from(e);
            for (_, reply) in group {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// A `span_names` row's key: tenant, service, operation, kind, hour.
type NameKey<'a> = (&'a str, &'a str, &'a str, u8, i64);

fn write_group<'a>(conn: &mut Connection, batches: impl Iterator<Item = &'a [Span]>) -> Result<()> {
    let tx = conn.transaction()?;
    {
        // Ids are assigned here, above every id ever used (also purged ones), so a row id
        // is an insertion sequence that search cursors can pin.
        let first_id: i64 = tx.query_row(
            "SELECT max(coalesce((SELECT max(id) FROM spans), 0),
                        coalesce((SELECT value FROM store_meta WHERE key = 'max_span_id'), 0)) + 1",
            [],
            |r| r.get(0),
        )?;
        // A rewritten span (a retry) keeps its row and id, so it neither vanishes from nor
        // reappears in a paged search. New spans, nearly all of them, take the plain insert:
        // an upsert with RETURNING made SQLite keep a statement journal for every row (~17%
        // of the writer's CPU in a profile); only a span already stored takes the update.
        let mut insert = tx.prepare_cached(
            "INSERT INTO spans (id, trace_id, span_id, parent_id, service, operation, kind, start_ns,
                 end_ns, duration_ns, status, status_message, attributes, events, links, tenant)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
             ON CONFLICT (tenant, trace_id, span_id) DO NOTHING",
        )?;
        let mut rewrite = tx.prepare_cached(
            "UPDATE spans SET
                 parent_id = ?3, service = ?4, operation = ?5, kind = ?6, start_ns = ?7,
                 end_ns = ?8, duration_ns = ?9, status = ?10, status_message = ?11,
                 attributes = ?12, events = ?13, links = ?14
             WHERE trace_id = ?1 AND span_id = ?2 AND tenant = ?15
             RETURNING id",
        )?;
        let mut unlink = tx.prepare_cached("DELETE FROM span_links WHERE source_row = ?1")?;
        let mut names: std::collections::HashMap<NameKey<'_>, (i64, i64)> =
            std::collections::HashMap::new();
        for (span, id) in batches.flatten().zip(first_id..) {
            let trace_id = span.trace_id.as_bytes().as_slice();
            let span_id = span.span_id.as_bytes().as_slice();
            let parent_id = span.parent_id.as_ref().map(|p| p.as_bytes().as_slice());
            let attributes = json_or_null(&span.attributes, Attributes::is_empty)?;
            let events = json_or_null(&span.events, Vec::is_empty)?;
            let links = json_or_null(&span.links, Vec::is_empty)?;
            let (kind, start, end) = (
                span.kind.code(),
                span.start_time.unix_nanos(),
                span.end_time.unix_nanos(),
            );
            let (duration, status) = (span.duration_nanos(), span.status.code.code());
            // Set by the collector from the token that sent the span (ADR 0010).
            let tenant = Tenant::of_span(span);
            // The same 15 values, in the same order, for the insert (after the row id) and
            // for the rewrite of a span already stored.
            let fields: [&dyn rusqlite::ToSql; 15] = [
                &trace_id,
                &span_id,
                &parent_id,
                &span.service,
                &span.operation,
                &kind,
                &start,
                &end,
                &duration,
                &status,
                &span.status.message,
                &attributes,
                &events,
                &links,
                &tenant,
            ];
            let inserted = insert.execute(rusqlite::params_from_iter(
                std::iter::once(&id as &dyn rusqlite::ToSql).chain(fields),
            ))?;
            let row = if inserted == 1 {
                id
            } else {
                let row: i64 = rewrite.query_row(&fields[..], |r| r.get(0))?;
                // A rewrite kept its old row: its old links go, the new ones are indexed.
                unlink.execute([row])?;
                row
            };
            insert_links(&tx, tenant, row, span.trace_id, span.span_id, &span.links)?;
            let e = names
                .entry((
                    tenant,
                    span.service.as_str(),
                    span.operation.as_str(),
                    span.kind.code(),
                    start / NAME_BUCKET_NS,
                ))
                .or_insert((start, start));
            e.0 = e.0.min(start);
            e.1 = e.1.max(start);
        }
        // One upsert per distinct (service, operation, kind, hour) of the group, not per span.
        let mut upsert = tx.prepare_cached(
            "INSERT INTO span_names (tenant, service, operation, kind, hour, first_ns, last_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (tenant, service, operation, kind, hour) DO UPDATE SET
                 first_ns = min(first_ns, excluded.first_ns),
                 last_ns = max(last_ns, excluded.last_ns)",
        )?;
        for ((tenant, service, operation, kind, hour), (first, last)) in names {
            upsert.execute(params![tenant, service, operation, kind, hour, first, last])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn json_or_null<T: Serialize>(v: &T, empty: impl Fn(&T) -> bool) -> Result<Option<String>> {
    if empty(v) {
        return Ok(None);
    }
    serde_json::to_string(v)
        .map(Some)
        .map_err(|e| Error::Corrupt(format!("cannot encode span field: {e}")))
}

fn purge_chunk(conn: &mut Connection, cutoff: Timestamp) -> Result<usize> {
    let tx = conn.transaction()?;
    // Remember the highest id before deleting: the writer never hands it out again.
    tx.execute(
        "INSERT INTO store_meta (key, value) SELECT 'max_span_id', max(id) FROM spans WHERE true HAVING max(id) IS NOT NULL
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
        [],
    )?;
    let deleted: Vec<i64> = tx
        .prepare(
            "DELETE FROM spans WHERE id IN (SELECT id FROM spans WHERE start_ns < ?1 ORDER BY start_ns LIMIT ?2) RETURNING id",
        )?
        .query_map(params![cutoff.unix_nanos(), PURGE_CHUNK as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let n = deleted.len();
    {
        // The links the purged spans declared leave the reverse index with them.
        let mut unlink = tx.prepare_cached("DELETE FROM span_links WHERE source_row = ?1")?;
        for id in &deleted {
            unlink.execute([id])?;
        }
    }
    tx.execute(
        "DELETE FROM span_names WHERE last_ns < ?1",
        [cutoff.unix_nanos()],
    )?;
    tx.commit()?;
    if n > 0 {
        conn.execute_batch("PRAGMA incremental_vacuum(2048);")?;
    }
    Ok(n)
}

async fn retention_loop(store: EmbeddedStore) {
    let retention = store.inner.config.retention.get();
    let mut tick = tokio::time::interval(store.inner.config.retention_interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = store.inner.background.cancelled() => return,
            _ = tick.tick() => {}
        }
        let nanos = i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = Timestamp::now().saturating_add_nanos(-nanos);
        match store.purge_older_than(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted_spans = n, %cutoff, "retention purged old spans"),
            Err(Error::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "retention run failed; will retry"),
        }
    }
}

const SPAN_COLUMNS: &str = "trace_id, span_id, parent_id, service, operation, kind, start_ns, end_ns, status, status_message, attributes, events, links";

fn decode_span(row: &rusqlite::Row<'_>) -> Result<Span> {
    // Ids and JSON columns are read in place (`get_ref`), not copied out first: a trace read
    // decodes every column of every span, and the copies were an allocation each.
    let corrupt = |what: &str| Error::Corrupt(format!("bad {what} in stored span"));
    let blob = |i: usize| -> Result<&[u8]> { Ok(row.get_ref(i)?.as_blob()?) };
    let trace_id = TraceId::from_slice(blob(0)?).map_err(|_| corrupt("trace_id"))?;
    let span_id = SpanId::from_slice(blob(1)?).map_err(|_| corrupt("span_id"))?;
    let parent_id = match row.get_ref(2)?.as_blob_or_null()? {
        Some(b) => Some(SpanId::from_slice(b).map_err(|_| corrupt("parent_id"))?),
        None => None,
    };
    let kind = SpanKind::from_code(row.get(5)?).ok_or_else(|| corrupt("kind"))?;
    let code = StatusCode::from_code(row.get(8)?).ok_or_else(|| corrupt("status"))?;
    let json = |i: usize| -> Result<Option<&str>> { Ok(row.get_ref(i)?.as_str_or_null()?) };
    fn parse<T: serde::de::DeserializeOwned + Default>(s: Option<&str>) -> Result<T> {
        match s {
            None => Ok(T::default()),
            Some(s) => serde_json::from_str(s).map_err(|e| Error::Corrupt(e.to_string())),
        }
    }
    Ok(Span {
        trace_id,
        span_id,
        parent_id,
        service: row.get(3)?,
        operation: row.get(4)?,
        kind,
        start_time: Timestamp::from_unix_nanos(row.get(6)?),
        end_time: Timestamp::from_unix_nanos(row.get(7)?),
        status: Status {
            code,
            message: row.get(9)?,
        },
        attributes: parse::<Attributes>(json(10)?)?,
        events: parse::<Vec<Event>>(json(11)?)?,
        links: parse::<Vec<Link>>(json(12)?)?,
    })
}

fn get_trace_sync(
    conn: &Connection,
    tenant: &str,
    trace_id: TraceId,
    limit: Option<usize>,
) -> Result<Option<Vec<Span>>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SPAN_COLUMNS} FROM spans WHERE tenant = ?3 AND trace_id = ?1 ORDER BY start_ns, span_id LIMIT ?2"
    ))?;
    let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let mut rows = stmt.query(params![trace_id.as_bytes().as_slice(), limit, tenant])?;
    let mut spans = Vec::new();
    while let Some(row) = rows.next()? {
        spans.push(decode_span(row)?);
    }
    Ok((!spans.is_empty()).then_some(spans))
}

/// [`TraceReader::get_traces_capped`] in one read transaction: each trace is an index range,
/// so one blocking task for all of them saves a thread hop per trace, which dominated.
fn get_traces_sync(
    conn: &Connection,
    tenant: &str,
    ids: &[TraceId],
    max_spans: usize,
) -> Result<Vec<(TraceId, CappedTrace)>> {
    let tx = conn.unchecked_transaction()?;
    let mut budget = max_spans;
    let mut out: Vec<(TraceId, CappedTrace)> = Vec::new();
    for &id in ids {
        if budget == 0 {
            break;
        }
        if out.iter().any(|(t, _)| *t == id) {
            continue;
        }
        let spans = get_trace_sync(&tx, tenant, id, Some(budget.saturating_add(1)))?;
        if let Some(t) = spans.and_then(|s| CappedTrace::from_overfetch(s, budget)) {
            budget -= t.spans.len();
            out.push((id, t));
        }
    }
    Ok(out)
}

fn trace_spans_sync(
    conn: &Connection,
    tenant: &str,
    trace_id: TraceId,
    after: Option<SpanCursor>,
    limit: usize,
) -> Result<Vec<Span>> {
    // Row values compare (start, span id) as one key; span ids are 8-byte blobs, which
    // compare as bytes, like `SpanId`.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SPAN_COLUMNS} FROM spans WHERE tenant = ?5 AND trace_id = ?1 AND (start_ns, span_id) > (?2, ?3) \
         ORDER BY start_ns, span_id LIMIT ?4"
    ))?;
    let (start, span) = after.map_or((i64::MIN, [0u8; 8]), |c| {
        (c.start_nanos, *c.span_id.as_bytes())
    });
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = stmt.query(params![
        trace_id.as_bytes().as_slice(),
        start,
        span.as_slice(),
        limit,
        tenant
    ])?;
    let mut spans = Vec::new();
    while let Some(row) = rows.next()? {
        spans.push(decode_span(row)?);
    }
    Ok(spans)
}

/// The WHERE clause (after `WHERE`) of a search's span filters, with its arguments:
/// everything a single span must satisfy, plus the snapshot bound.
fn span_filters(q: &TraceQuery, snapshot: i64, tenant: &str) -> (String, Vec<Value>) {
    // `+tenant`: not an index term. Left indexable, SQLite (no statistics) read every span
    // of the tenant through `spans_by_trace` and sorted them all whenever no service was
    // given (a time window alone took 2.3-2.9 s at 1M spans); this way it walks
    // `spans_by_start` (or the service indexes) newest first and stops after one page.
    let mut sql = String::from("id <= ?1 AND +tenant = ?2");
    let mut args: Vec<Value> = vec![Value::Integer(snapshot), Value::Text(tenant.to_string())];
    let mut push = |clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&format!(" AND {clause} ?{}", args.len()));
    };
    if let Some(s) = &q.service {
        push("service =", Value::Text(s.clone()));
    }
    if let Some(o) = &q.operation {
        push("operation =", Value::Text(o.clone()));
    }
    if let Some(k) = q.kind {
        push("kind =", Value::Integer(i64::from(k.code())));
    }
    if let Some(st) = q.status {
        push("status =", Value::Integer(i64::from(st.code())));
    }
    if let Some(t) = q.start {
        push("start_ns >=", Value::Integer(t.unix_nanos()));
    }
    if let Some(t) = q.end {
        push("start_ns <=", Value::Integer(t.unix_nanos()));
    }
    let (min, max) = q.span_duration_bounds();
    if let Some(d) = min {
        push("duration_ns >=", Value::Integer(d));
    }
    if let Some(d) = max {
        push("duration_ns <=", Value::Integer(d));
    }
    for f in &q.attributes {
        let (op, operand) = filter_args(f);
        args.push(Value::Text(f.key.clone()));
        args.push(Value::Text(op.to_string()));
        args.push(operand);
        let n = args.len();
        sql.push_str(&format!(
            " AND dt_attr(attributes, ?{}, ?{}, ?{n})",
            n - 2,
            n - 1
        ));
    }
    if let Some(d) = &q.dataset {
        // Two call sites of dt_attr, each with its own compiled filter.
        args.push(Value::Text(d.clone()));
        let n = args.len();
        sql.push_str(&format!(
            " AND (dt_attr(attributes, '{}', 'contains', ?{n}) \
             OR dt_attr(attributes, '{}', 'contains', ?{n}))",
            datatracing_core::conventions::DATASET_INPUTS,
            datatracing_core::conventions::DATASET_OUTPUTS,
        ));
    }
    if let Some(t) = q.linked_trace {
        args.push(Value::Blob(t.as_bytes().to_vec()));
        sql.push_str(&format!(
            " AND id IN (SELECT source_row FROM span_links WHERE target_trace = ?{})",
            args.len()
        ));
    }
    if let Some(svc) = &q.linked_service {
        // The linked span must be in the snapshot too (`?1`), or a later page could see a
        // link the first one did not.
        args.push(Value::Text(svc.clone()));
        sql.push_str(&format!(
            " AND id IN (SELECT l.source_row FROM span_links l JOIN spans t \
             ON t.trace_id = l.target_trace AND t.span_id = l.target_span \
             WHERE t.id <= ?1 AND t.tenant = ?2 AND t.service = ?{})",
            args.len()
        ));
    }
    (sql, args)
}

fn trace_summary(conn: &Connection, tenant: &str, id: TraceId) -> Result<Option<TraceSummary>> {
    let mut stmt = conn.prepare_cached(
        "SELECT span_id, parent_id IS NULL, service, operation, start_ns, end_ns, status FROM spans WHERE tenant = ?2 AND trace_id = ?1",
    )?;
    let mut b = SummaryBuilder::default();
    let mut rows = stmt.query(params![id.as_bytes().as_slice(), tenant])?;
    while let Some(r) = rows.next()? {
        let span_id = SpanId::from_slice(r.get_ref(0)?.as_blob()?)
            .map_err(|_| Error::Corrupt("span_id".into()))?;
        let status =
            StatusCode::from_code(r.get(6)?).ok_or_else(|| Error::Corrupt("status".into()))?;
        b.add(
            span_id,
            r.get(1)?,
            r.get_ref(2)?.as_str()?,
            r.get_ref(3)?.as_str()?,
            Timestamp::from_unix_nanos(r.get(4)?),
            Timestamp::from_unix_nanos(r.get(5)?),
            status,
        );
    }
    Ok(b.build(id))
}

/// The rows of a search page, newest first, after the cursor if there is one.
fn page_sql(q: &TraceQuery, snapshot: i64, tenant: &str) -> (String, Vec<Value>) {
    let (filters, mut args) = span_filters(q, snapshot, tenant);
    let mut sql = format!("SELECT trace_id, start_ns FROM spans WHERE {filters}");
    if let Some(c) = &q.cursor {
        args.push(Value::Integer(c.latest_nanos));
        args.push(Value::Blob(c.trace_id.as_bytes().to_vec()));
        let n = args.len();
        // The plain bound first: it is what an index on start_ns can seek to.
        sql.push_str(&format!(
            " AND start_ns <= ?{k} AND (start_ns < ?{k} OR (start_ns = ?{k} AND trace_id > ?{n}))",
            k = n - 1
        ));
    }
    sql.push_str(" ORDER BY start_ns DESC, trace_id ASC");
    (sql, args)
}

/// One page of a search. Rows are read newest first; the first row of a trace gives its
/// sort key (its latest matching span). After a cursor only rows past the cursor are read,
/// and a trace that also has a matching row at or before the cursor is skipped: its key
/// places it on an earlier page.
fn search_sync(conn: &Connection, tenant: &str, q: &TraceQuery) -> Result<SearchPage> {
    let (page, next_cursor) = search_page_sync(conn, tenant, q, true)?;
    Ok(SearchPage {
        traces: page.into_iter().filter_map(|(_, s)| s).collect(),
        next_cursor,
    })
}

/// The ids of [`search_sync`]'s page, without computing summaries where the query does not
/// need them (a trace-duration filter does): Jaeger's search reads the traces themselves.
fn search_ids_sync(conn: &Connection, tenant: &str, q: &TraceQuery) -> Result<Vec<TraceId>> {
    let (page, _) = search_page_sync(conn, tenant, q, false)?;
    Ok(page.into_iter().map(|(id, _)| id).collect())
}

/// One search page: each trace with its summary (always with `summaries`, else only when
/// a trace-duration filter needs it), and the next cursor.
#[allow(clippy::type_complexity)]
fn search_page_sync(
    conn: &Connection,
    tenant: &str,
    q: &TraceQuery,
    summaries: bool,
) -> Result<(Vec<(TraceId, Option<TraceSummary>)>, Option<SearchCursor>)> {
    // One read transaction: the snapshot id and every statement see the same data.
    let tx = conn.unchecked_transaction()?;
    let snapshot = match &q.cursor {
        Some(c) => c.snapshot,
        None => tx.query_row("SELECT coalesce(max(id), 0) FROM spans", [], |r| r.get(0))?,
    };
    let (sql, args) = page_sql(q, snapshot, tenant);
    let (check_filters, mut check_args) = span_filters(q, snapshot, tenant);
    // Pinned to the trace index: left to itself SQLite picked `spans_by_service` with the
    // window's start as the range and read every span of the service in the window for each
    // trace on the page (a second page took ~0.5 s at 1M spans instead of ~1 ms).
    let check_sql = format!(
        "SELECT max(start_ns) FROM spans INDEXED BY spans_by_trace WHERE {check_filters} AND tenant = ?2 AND trace_id = ?{} AND start_ns >= ?{}",
        check_args.len() + 1,
        check_args.len() + 2
    );
    let trace_bounds = q.trace_duration_bounds();

    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
    let mut seen = std::collections::HashSet::new();
    let mut page: Vec<(TraceId, Option<TraceSummary>, i64)> = Vec::new();
    let mut more = false;
    while let Some(row) = rows.next()? {
        let id = TraceId::from_slice(row.get_ref(0)?.as_blob()?)
            .map_err(|_| Error::Corrupt("trace_id".into()))?;
        if !seen.insert(id) {
            continue;
        }
        let latest: i64 = row.get(1)?;
        if let Some(c) = &q.cursor {
            check_args.push(Value::Blob(id.as_bytes().to_vec()));
            check_args.push(Value::Integer(c.latest_nanos));
            let newest: Option<i64> = tx.query_row(
                &check_sql,
                rusqlite::params_from_iter(check_args.iter()),
                |r| r.get(0),
            )?;
            check_args.truncate(check_args.len() - 2);
            if newest.is_some_and(|m| !c.is_before(m, id)) {
                continue;
            }
        }
        let summary = if summaries || trace_bounds.is_some() {
            // A trace purged meanwhile simply drops out of the result.
            let Some(summary) = trace_summary(&tx, tenant, id)? else {
                continue;
            };
            if let Some((min, max)) = trace_bounds
                && !(min..=max).contains(&summary.duration_nanos)
            {
                continue;
            }
            Some(summary)
        } else {
            None
        };
        if page.len() == q.limit {
            more = true;
            break;
        }
        page.push((id, summary, latest));
    }
    let next_cursor = match (more, page.last()) {
        (true, Some((last, _, latest))) => Some(SearchCursor {
            snapshot,
            latest_nanos: *latest,
            trace_id: *last,
            fingerprint: q.fingerprint(),
        }),
        _ => None,
    };
    Ok((
        page.into_iter().map(|(id, s, _)| (id, s)).collect(),
        next_cursor,
    ))
}

/// Most trace ids bound in one `IN (...)` list.
const IN_CHUNK: usize = 500;

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn blob_args(ids: &[TraceId]) -> Vec<Value> {
    ids.iter()
        .map(|t| Value::Blob(t.as_bytes().to_vec()))
        .collect()
}

fn summaries_sync(conn: &Connection, tenant: &str, ids: &[TraceId]) -> Result<Vec<TraceSummary>> {
    let tx = conn.unchecked_transaction()?;
    let mut out = Vec::with_capacity(ids.len());
    // Each is an index range on (trace_id, span_id); one read transaction for all.
    for id in ids {
        if let Some(s) = trace_summary(&tx, tenant, *id)? {
            out.push(s);
        }
    }
    Ok(out)
}

fn decode_link(r: &rusqlite::Row<'_>) -> Result<CrossLink> {
    let corrupt = |what: &str| Error::Corrupt(format!("bad {what} in span_links"));
    let trace = |i: usize| -> Result<TraceId> {
        TraceId::from_slice(r.get_ref(i)?.as_blob()?).map_err(|_| corrupt("trace id"))
    };
    let span = |i: usize| -> Result<SpanId> {
        SpanId::from_slice(r.get_ref(i)?.as_blob()?).map_err(|_| corrupt("span id"))
    };
    Ok(CrossLink {
        from_trace: trace(0)?,
        from_span: span(1)?,
        to_trace: trace(2)?,
        to_span: span(3)?,
        link_type: datatracing_core::LinkType::from_code(r.get(4)?)
            .ok_or_else(|| corrupt("link type"))?,
        dataset: r.get(5)?,
    })
}

/// Links out of (`from`) or into (`!from`) the traces, in chunks of `IN_CHUNK` ids.
fn links_sync(
    conn: &Connection,
    tenant: &str,
    ids: &[TraceId],
    limit: usize,
    from: bool,
) -> Result<Vec<CrossLink>> {
    let tx = conn.unchecked_transaction()?;
    let mut out = std::collections::BTreeSet::new();
    for chunk in ids.chunks(IN_CHUNK) {
        let sql = if from {
            // Through the spans' (trace_id, span_id) index to their rows' links.
            format!(
                "SELECT DISTINCT l.source_trace, l.source_span, l.target_trace, l.target_span, l.link_type, l.dataset \
                 FROM spans s JOIN span_links l ON l.source_row = s.id WHERE s.tenant = ? AND s.trace_id IN ({}) LIMIT {}",
                placeholders(chunk.len()),
                limit.saturating_sub(out.len())
            )
        } else {
            format!(
                "SELECT DISTINCT source_trace, source_span, target_trace, target_span, link_type, dataset \
                 FROM span_links WHERE tenant = ? AND target_trace IN ({}) LIMIT {}",
                placeholders(chunk.len()),
                limit.saturating_sub(out.len())
            )
        };
        let mut stmt = tx.prepare_cached(&sql)?;
        let args = std::iter::once(Value::Text(tenant.to_string())).chain(blob_args(chunk));
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            out.insert(decode_link(r)?);
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out.into_iter().take(limit).collect())
}

/// `WHERE` conditions selecting `span_names` rows that overlap a window.
fn window_filters(w: &TimeWindow, sql: &mut String, args: &mut Vec<Value>) {
    if let Some(t) = w.start {
        args.push(Value::Integer(t.unix_nanos() / NAME_BUCKET_NS));
        args.push(Value::Integer(t.unix_nanos()));
        let n = args.len();
        sql.push_str(&format!(" AND hour >= ?{} AND last_ns >= ?{n}", n - 1));
    }
    if let Some(t) = w.end {
        args.push(Value::Integer(t.unix_nanos() / NAME_BUCKET_NS));
        args.push(Value::Integer(t.unix_nanos()));
        let n = args.len();
        sql.push_str(&format!(" AND hour <= ?{} AND first_ns <= ?{n}", n - 1));
    }
}

fn services_sync(
    conn: &Connection,
    tenant: &str,
    w: &TimeWindow,
    limit: usize,
) -> Result<Vec<String>> {
    let mut sql = String::from("SELECT DISTINCT service FROM span_names WHERE tenant = ?1");
    let mut args = vec![Value::Text(tenant.to_string())];
    window_filters(w, &mut sql, &mut args);
    sql.push_str(&format!(" ORDER BY service LIMIT {limit}"));
    let mut stmt = conn.prepare_cached(&sql)?;
    let out = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(out)
}

fn operations_sync(
    conn: &Connection,
    tenant: &str,
    service: &str,
    w: &TimeWindow,
    limit: usize,
) -> Result<Vec<Operation>> {
    let mut sql = String::from(
        "SELECT DISTINCT operation, kind FROM span_names WHERE service = ?1 AND tenant = ?2",
    );
    let mut args = vec![
        Value::Text(service.to_string()),
        Value::Text(tenant.to_string()),
    ];
    window_filters(w, &mut sql, &mut args);
    // Storage codes follow the kinds' declaration order, which is `Operation`'s order too.
    sql.push_str(&format!(" ORDER BY operation, kind LIMIT {limit}"));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let kind = SpanKind::from_code(r.get(1)?).ok_or_else(|| Error::Corrupt("kind".into()))?;
        out.push(Operation {
            name: r.get(0)?,
            span_kind: kind,
        });
    }
    out.sort();
    Ok(out)
}

#[async_trait]
impl Health for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn health(&self) -> datatracing_store::Result<()> {
        self.with_reader(|c, _| {
            Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .optional()?)
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl TraceWriter for EmbeddedStore {
    fn retention(&self) -> Option<std::time::Duration> {
        let r = self.inner.config.retention.get();
        (!r.is_zero() && self.inner.mode == OpenMode::ReadWrite).then_some(r)
    }

    async fn write(&self, spans: Arc<[Span]>) -> datatracing_store::Result<()> {
        if spans.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::Write { spans, reply }).await?;
        rx.await.map_err(|_| datatracing_store::Error::Closed)?
    }

    async fn close(&self) -> datatracing_store::Result<()> {
        self.inner.background.cancel();
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        let thread = self
            .inner
            .writer_thread
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(handle) = thread {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| Error::Task(format!("close: {e}")))?
                .map_err(|_| Error::Task("the store writer thread panicked".into()))?;
        }
        Ok(())
    }
}

#[async_trait]
impl TraceReader for EmbeddedStore {
    fn for_tenant(&self, tenant: &Tenant) -> Arc<dyn TraceReader> {
        Arc::new(Self {
            inner: Arc::clone(&self.inner),
            tenant: tenant.clone(),
        })
    }

    async fn get_trace(&self, trace_id: TraceId) -> datatracing_store::Result<Option<Vec<Span>>> {
        Ok(self
            .with_reader(move |c, t| get_trace_sync(c, t, trace_id, None))
            .await?)
    }

    async fn get_trace_capped(
        &self,
        trace_id: TraceId,
        max_spans: usize,
    ) -> datatracing_store::Result<Option<CappedTrace>> {
        let spans = self
            .with_reader(move |c, t| {
                get_trace_sync(c, t, trace_id, Some(max_spans.saturating_add(1)))
            })
            .await?;
        Ok(spans.and_then(|s| CappedTrace::from_overfetch(s, max_spans)))
    }

    async fn get_traces_capped(
        &self,
        traces: &[TraceId],
        max_spans: usize,
    ) -> datatracing_store::Result<Vec<(TraceId, CappedTrace)>> {
        let ids = traces.to_vec();
        Ok(self
            .with_reader(move |c, t| get_traces_sync(c, t, &ids, max_spans))
            .await?)
    }

    async fn trace_spans(
        &self,
        trace_id: TraceId,
        after: Option<SpanCursor>,
        limit: usize,
    ) -> datatracing_store::Result<Vec<Span>> {
        Ok(self
            .with_reader(move |c, t| trace_spans_sync(c, t, trace_id, after, limit))
            .await?)
    }

    async fn search(&self, query: &TraceQuery) -> datatracing_store::Result<SearchPage> {
        let q = query.clone();
        Ok(self.with_reader(move |c, t| search_sync(c, t, &q)).await?)
    }

    async fn search_ids(&self, query: &TraceQuery) -> datatracing_store::Result<Vec<TraceId>> {
        let q = query.clone();
        Ok(self
            .with_reader(move |c, t| search_ids_sync(c, t, &q))
            .await?)
    }

    async fn services(
        &self,
        window: &TimeWindow,
        limit: usize,
    ) -> datatracing_store::Result<Vec<String>> {
        let w = *window;
        Ok(self
            .with_reader(move |c, t| services_sync(c, t, &w, limit))
            .await?)
    }

    async fn operations(
        &self,
        service: &str,
        window: &TimeWindow,
        limit: usize,
    ) -> datatracing_store::Result<Vec<Operation>> {
        let (w, service) = (*window, service.to_string());
        Ok(self
            .with_reader(move |c, t| operations_sync(c, t, &service, &w, limit))
            .await?)
    }

    async fn summaries(&self, traces: &[TraceId]) -> datatracing_store::Result<Vec<TraceSummary>> {
        let ids = traces.to_vec();
        Ok(self
            .with_reader(move |c, t| summaries_sync(c, t, &ids))
            .await?)
    }

    async fn links_from(
        &self,
        traces: &[TraceId],
        limit: usize,
    ) -> datatracing_store::Result<Vec<CrossLink>> {
        let ids = traces.to_vec();
        Ok(self
            .with_reader(move |c, t| links_sync(c, t, &ids, limit, true))
            .await?)
    }

    async fn links_to(
        &self,
        traces: &[TraceId],
        limit: usize,
    ) -> datatracing_store::Result<Vec<CrossLink>> {
        let ids = traces.to_vec();
        Ok(self
            .with_reader(move |c, t| links_sync(c, t, &ids, limit, false))
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan SQLite picks for a search page on the migrated schema (no statistics, as
    /// a store has): one line per step.
    fn plan(q: &TraceQuery) -> String {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        register_functions(&conn).unwrap();
        configure_reader(&conn).unwrap();
        let (sql, args) = page_sql(q, 1, "");
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn search_pages_walk_a_time_index_and_never_sort_every_span() {
        let t = |n| Some(Timestamp::from_unix_nanos(n));
        let window = TraceQuery {
            start: t(1),
            end: t(2),
            ..TraceQuery::with_limit(20)
        };
        let cases = [
            ("a window alone", window.clone(), "spans_by_start"),
            ("no filter", TraceQuery::with_limit(20), "spans_by_start"),
            (
                "a status",
                TraceQuery {
                    status: Some(StatusCode::Error),
                    ..window.clone()
                },
                "spans_by_start",
            ),
            (
                "a service",
                TraceQuery {
                    service: Some("etl".into()),
                    ..window.clone()
                },
                "spans_by_service",
            ),
            (
                "a linked trace",
                TraceQuery {
                    linked_trace: Some(TraceId::from_slice(&[7; 16]).unwrap()),
                    ..window.clone()
                },
                "PRIMARY KEY",
            ),
        ];
        let mut after_cursor = TraceQuery::with_limit(20);
        after_cursor.cursor = Some(SearchCursor {
            snapshot: 1,
            latest_nanos: 5,
            trace_id: TraceId::from_slice(&[1; 16]).unwrap(),
            fingerprint: 0,
        });
        // A later page seeks to the cursor rather than reading every newer span again.
        assert!(
            plan(&after_cursor).contains("spans_by_start (start_ns<?)"),
            "{}",
            plan(&after_cursor)
        );
        for (what, q, index) in cases {
            let plan = plan(&q);
            assert!(plan.contains(index), "{what}: {plan}");
            // A full sort reads every matching span before the first row of a page; the
            // index order leaves only ties on start_ns to sort.
            if index != "PRIMARY KEY" {
                assert!(
                    !plan.contains("USE TEMP B-TREE FOR ORDER BY"),
                    "{what}: {plan}"
                );
            }
        }
    }
}
