//! Administration: connectivity, migrations and retention.

use std::future::Future;
use std::time::Duration;

use clickhouse::Client;
use datatracing_config::{ClickHouseConfig, Compression};

use crate::error::{Error, Result};
use crate::rows::{OwnerRow, TableRow};
use crate::schema::{OWNER_TABLE, Schema};

/// The least time a migration statement may take, client and server side. A backfill
/// reads every stored span (migration 7's took 41 s and 4.7 GiB at 10M spans on the test
/// engine), longer than `query_timeout` allows a read; the statements are idempotent, so
/// a run cut short is repeated whole by the next `migrate`.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(3600);

/// What `migrate` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call (empty when already up to date).
    pub applied: Vec<u32>,
    /// The schema version now in place.
    pub version: u32,
}

/// The retention carried by one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRetention {
    /// Storage table name.
    pub table: String,
    /// Days in its TTL; `None` when it has no TTL.
    pub days: Option<u32>,
}

/// What the database holds of the schema, from one read of `system.tables`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaState {
    /// The retention of every trace table that exists.
    pub retention: Vec<TableRetention>,
    /// The tables and views of the current schema the database lacks, in creation order.
    pub missing: Vec<String>,
}

/// What `set_retention` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionReport {
    /// The retention now in force, in days.
    pub days: u32,
    /// Tables whose TTL was changed.
    pub changed: Vec<String>,
    /// Tables that already had this TTL.
    pub unchanged: Vec<String>,
}

/// Who owns a database: the operator records the TracingPipeline whose storage it is, so a
/// second pipeline pointed at the same database is refused instead of changing the first
/// one's retention or dropping its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageOwner {
    /// The owner's unique id (the pipeline's UID).
    pub uid: String,
    /// The owner's name (`namespace/name`): a pipeline deleted and created again under the
    /// same name (a GitOps re-apply) gets a new UID and takes its storage back.
    pub name: String,
}

/// Connectivity, migrations and retention for one ClickHouse database.
#[derive(Clone)]
pub struct ClickHouseAdmin {
    client: Client,
    root: Client,
    schema: Schema,
    query_timeout: Duration,
}

impl std::fmt::Debug for ClickHouseAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseAdmin")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

pub(crate) fn build_client(
    cfg: &ClickHouseConfig,
    connector: &crate::client::Connector,
    password: &str,
    with_database: bool,
) -> Client {
    let mut c = crate::client::client(connector)
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_compression(match cfg.compression {
            Compression::Lz4 => clickhouse::Compression::Lz4,
            Compression::None => clickhouse::Compression::None,
        })
        .with_setting(
            "max_execution_time",
            cfg.query_timeout.get().as_secs().max(1).to_string(),
        );
    if !password.is_empty() {
        c = c.with_password(password);
    }
    if with_database {
        c = c.with_database(&cfg.database);
    }
    c
}

/// Runs a ClickHouse call with a client-side deadline on top of the server's own.
pub(crate) async fn timed<T>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = std::result::Result<T, clickhouse::error::Error>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::Timeout(format!("{what} exceeded {timeout:?}"))),
    }
}

fn ttl_days(engine_full: &str) -> Option<u32> {
    let i = engine_full.find("toIntervalDay(")? + "toIntervalDay(".len();
    let rest = &engine_full[i..];
    rest[..rest.find(')')?].trim().parse().ok()
}

/// The retention of those of `tables` that `rows` (from `system.tables`) hold, in the order
/// given.
fn retention_of(tables: Vec<String>, rows: &[TableRow]) -> Vec<TableRetention> {
    tables
        .into_iter()
        .filter_map(|table| {
            let row = rows.iter().find(|r| r.name == table)?;
            Some(TableRetention {
                days: ttl_days(&row.engine_full),
                table,
            })
        })
        .collect()
}

/// Those of `names` that `rows` (from `system.tables`) lack, in the order given.
fn absent_from(names: Vec<String>, rows: &[TableRow]) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| !rows.iter().any(|r| r.name == *n))
        .collect()
}

impl ClickHouseAdmin {
    /// Builds clients from validated configuration (no I/O yet).
    pub fn new(config: &ClickHouseConfig) -> Result<Self> {
        Self::build(config, None)
    }

    /// [`ClickHouseAdmin::new`] trusting the CAs in `ca_pem` (PEM text) for an `https://`
    /// URL instead of `ca_file`: for a process that read the CA from elsewhere (the
    /// operator, from the pipeline's Secret).
    pub fn with_ca_pem(config: &ClickHouseConfig, ca_pem: &[u8]) -> Result<Self> {
        Self::build(config, Some(ca_pem))
    }

    fn build(config: &ClickHouseConfig, ca_pem: Option<&[u8]>) -> Result<Self> {
        config.validate()?;
        let password = config.resolve_password()?;
        let connector = crate::client::connector(config, ca_pem)?;
        Ok(Self {
            client: build_client(config, &connector, &password, true),
            root: build_client(config, &connector, &password, false),
            schema: Schema {
                database: config.database.clone(),
                cluster: config.cluster.clone(),
                retention_days: config.initial_retention_days,
                attribute_index: config.attribute_index,
            },
            query_timeout: config.query_timeout.get(),
        })
    }

    /// Builds the clients and waits up to `connect_timeout` for the server to answer.
    /// Unreachable servers fail with the URL and the time waited; bad credentials at once.
    pub async fn connect(config: &ClickHouseConfig) -> Result<Self> {
        let admin = Self::new(config)?;
        admin
            .wait_until_reachable(config.connect_timeout.get())
            .await
            .map_err(|e| match e {
                Error::Unreachable(m) | Error::Timeout(m) => Error::Unreachable(format!(
                    "{} did not answer within {:?}: {m}",
                    config.url,
                    config.connect_timeout.get()
                )),
                other => other,
            })?;
        Ok(admin)
    }

    /// The schema this admin manages.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// One round trip to the server (no database needed).
    pub async fn ping(&self) -> Result<()> {
        timed(
            self.query_timeout,
            "ping",
            self.root.query("SELECT 1").fetch_one::<u8>(),
        )
        .await?;
        Ok(())
    }

    /// Pings until the server answers or `timeout` passes. Non-transient failures (bad
    /// credentials) fail at once: waiting would not fix them.
    pub async fn wait_until_reachable(&self, timeout: Duration) -> Result<()> {
        use backon::Retryable;
        let policy = datatracing_core::RetryPolicy::within(
            timeout,
            Duration::from_millis(100),
            Duration::from_secs(2),
        );
        (|| self.ping())
            .retry(policy.backoff())
            .sleep(tokio::time::sleep)
            .when(Error::is_transient)
            .notify(|e, delay| {
                tracing::warn!(error = %e, ?delay, "ClickHouse not reachable yet; retrying");
            })
            .await
    }

    /// Creates the database and applies every migration not yet applied. Idempotent.
    pub async fn migrate(&self) -> Result<MigrationReport> {
        let t = self.query_timeout;
        timed(
            t,
            "create database",
            self.root
                .query_raw(&self.schema.create_database())
                .execute(),
        )
        .await?;
        timed(
            t,
            "create schema_migrations",
            self.root
                .query_raw(&self.schema.create_migrations_table())
                .execute(),
        )
        .await?;
        let done: Vec<u32> = timed(
            t,
            "read schema_migrations",
            self.root
                .query(&format!(
                    "SELECT DISTINCT version FROM {}.schema_migrations",
                    self.schema.database
                ))
                .fetch_all::<u32>(),
        )
        .await?;
        let mut applied = Vec::new();
        for m in self.schema.migrations() {
            if done.contains(&m.version) {
                continue;
            }
            for stmt in &m.statements {
                self.run_migration_statement(stmt).await?;
            }
            timed(
                t,
                "record migration",
                self.root
                    .query(&format!(
                        "INSERT INTO {}.schema_migrations (version, name) VALUES (?, ?)",
                        self.schema.database
                    ))
                    .bind(m.version)
                    .bind(m.name)
                    .execute(),
            )
            .await?;
            tracing::info!(
                version = m.version,
                name = m.name,
                "applied ClickHouse migration"
            );
            applied.push(m.version);
        }
        let version = self
            .schema
            .migrations()
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        Ok(MigrationReport { applied, version })
    }

    /// Checks, changing nothing, that the database holds the tables reads use and every
    /// migration this binary knows; returns the schema version. For processes that only
    /// read: they must neither create nor alter the schema. A missing or older schema is
    /// [`Error::Schema`], which names what is missing and how to create it.
    pub async fn verify_schema(&self) -> Result<u32> {
        let t = self.query_timeout;
        let db = &self.schema.database;
        let mut wanted: Vec<String> = [
            "schema_migrations",
            "spans",
            "span_index",
            "span_names",
            "span_links",
            "trace_summaries",
        ]
        .map(String::from)
        .to_vec();
        if self.schema.attribute_index {
            wanted.push("span_attributes".into());
        }
        let missing = self.absent(wanted).await?;
        if !missing.is_empty() {
            return Err(Error::Schema(format!(
                "database {db} lacks the DataTracing tables {} (a reader never creates them: \
                 run `datatracing migrate`, or start a collector with migrate_on_start)",
                missing.join(", ")
            )));
        }
        let applied: Vec<u32> = timed(
            t,
            "read schema_migrations",
            self.root
                .query(&format!(
                    "SELECT DISTINCT version FROM {db}.schema_migrations"
                ))
                .fetch_all::<u32>(),
        )
        .await?;
        let pending: Vec<u32> = self
            .schema
            .migrations()
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect();
        if !pending.is_empty() {
            return Err(Error::Schema(format!(
                "database {db} lacks migrations {pending:?} (run `datatracing migrate`)"
            )));
        }
        Ok(applied.into_iter().max().unwrap_or(0))
    }

    /// The storage table that holds the spans (`spans`, or `spans_local` on a cluster).
    pub fn spans_storage_table(&self) -> String {
        self.schema.storage_table("spans")
    }

    /// The retention of every trace table that exists.
    pub async fn retention(&self) -> Result<Vec<TableRetention>> {
        let names = self.ttl_storage_tables();
        let rows = self.tables(&names).await?;
        Ok(retention_of(names, &rows))
    }

    /// The trace tables' retention and the schema's missing tables and views, from one read
    /// of `system.tables`: what the operator's drift check compares with a pipeline's spec.
    pub async fn schema_state(&self) -> Result<SchemaState> {
        let ttl = self.ttl_storage_tables();
        let objects = self.schema.objects();
        let mut names = objects.clone();
        names.extend(ttl.iter().filter(|t| !objects.contains(t)).cloned());
        let rows = self.tables(&names).await?;
        Ok(SchemaState {
            retention: retention_of(ttl, &rows),
            missing: absent_from(objects, &rows),
        })
    }

    /// The storage tables that carry a TTL (`_local` ones on a cluster).
    pub fn ttl_storage_tables(&self) -> Vec<String> {
        self.schema
            .ttl_tables()
            .iter()
            .map(|t| self.schema.storage_table(t.name))
            .collect()
    }

    /// The rows of `system.tables` for those of `names` the database holds.
    async fn tables(&self, names: &[String]) -> Result<Vec<TableRow>> {
        timed(
            self.query_timeout,
            "read tables",
            self.root
                .query(
                    "SELECT name, engine_full FROM system.tables WHERE database = ? AND name IN ?",
                )
                .bind(&self.schema.database)
                .bind(names)
                .fetch_all::<TableRow>(),
        )
        .await
    }

    /// The owner recorded in the database; `None` when the database, its owner table or a
    /// claim is missing.
    pub async fn owner(&self) -> Result<Option<StorageOwner>> {
        let t = self.query_timeout;
        let db = &self.schema.database;
        let exists: u64 = timed(
            t,
            "read owner table",
            self.root
                .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
                .bind(db)
                .bind(OWNER_TABLE)
                .fetch_one::<u64>(),
        )
        .await?;
        if exists == 0 {
            return Ok(None);
        }
        let row = timed(
            t,
            "read owner",
            self.root
                .query(&format!(
                    "SELECT uid, owner FROM {db}.{OWNER_TABLE} ORDER BY claimed_at, uid LIMIT 1"
                ))
                .fetch_optional::<OwnerRow>(),
        )
        .await?;
        Ok(row.map(|r| StorageOwner {
            uid: r.uid,
            name: r.owner,
        }))
    }

    /// Claims the database for `owner` and returns the owner in force: `owner` when nobody
    /// had claimed it, it already owned it, or the recorded owner has `owner`'s name (the same
    /// pipeline created again); otherwise the other owner, and nothing changes. Creates the
    /// database and the owner table if needed. Of two claims racing for an unclaimed
    /// database, the earlier row wins for both.
    pub async fn claim(&self, owner: &StorageOwner) -> Result<StorageOwner> {
        let t = self.query_timeout;
        for (what, sql) in [
            ("create database", self.schema.create_database()),
            ("create owner table", self.schema.create_owner_table()),
        ] {
            timed(t, what, self.root.query_raw(&sql).execute()).await?;
        }
        match self.owner().await? {
            Some(current) if current.uid == owner.uid => return Ok(current),
            Some(current) if current.name != owner.name => return Ok(current),
            Some(previous) => {
                tracing::info!(owner = %owner.name, previous = %previous.uid, uid = %owner.uid, "storage claimed again by a re-created owner");
                timed(
                    t,
                    "release owner",
                    self.root
                        .query_raw(&self.schema.truncate_owner_table())
                        .execute(),
                )
                .await?;
            }
            None => {}
        }
        timed(
            t,
            "record owner",
            self.root
                .query(&format!(
                    "INSERT INTO {}.{OWNER_TABLE} (uid, owner) VALUES (?, ?)",
                    self.schema.database
                ))
                .bind(&owner.uid)
                .bind(&owner.name)
                .execute(),
        )
        .await?;
        Ok(self.owner().await?.unwrap_or_else(|| owner.clone()))
    }

    /// Removes `uid`'s claim (the owner is gone and leaves the data), so another owner may
    /// claim the database. Another owner's claim stays. Idempotent.
    pub async fn release(&self, uid: &str) -> Result<()> {
        if self.owner().await?.is_some_and(|o| o.uid == uid) {
            timed(
                self.query_timeout,
                "release owner",
                self.root
                    .query_raw(&self.schema.truncate_owner_table())
                    .execute(),
            )
            .await?;
        }
        Ok(())
    }

    /// The tables and views of the current schema ([`Schema::objects`]) that the database
    /// lacks, in creation order.
    pub async fn missing_objects(&self) -> Result<Vec<String>> {
        self.absent(self.schema.objects()).await
    }

    /// Those of `names` (tables or views) the database lacks, in the order given.
    async fn absent(&self, names: Vec<String>) -> Result<Vec<String>> {
        let rows = self.tables(&names).await?;
        Ok(absent_from(names, &rows))
    }

    /// Recreates the tables and views of the current schema that are missing although their
    /// migration is recorded (dropped by hand), and returns them; when none is missing it
    /// changes nothing. Otherwise it runs every migration statement again: each can (creates
    /// are `IF NOT EXISTS`, replaced views are dropped `IF EXISTS`, the backfills only widen
    /// bounds, skip links already indexed or feed aggregate states that absorb a repeat),
    /// and a lost view means its table missed inserts, which only the backfills restore.
    /// That is a scan of `spans` per backfill, so it runs only when something is missing:
    /// the operator calls this on every spec change. Run after [`migrate`](Self::migrate).
    pub async fn recreate_missing(&self) -> Result<Vec<String>> {
        let missing = self.missing_objects().await?;
        if missing.is_empty() {
            return Ok(missing);
        }
        tracing::warn!(
            database = %self.schema.database,
            missing = %missing.join(", "),
            "ClickHouse objects missing; running every migration statement again to restore them"
        );
        for m in self.schema.migrations() {
            for stmt in &m.statements {
                self.run_migration_statement(stmt).await?;
            }
        }
        Ok(missing)
    }

    /// Runs one migration statement with [`MIGRATION_TIMEOUT`] (or `query_timeout` when
    /// longer) as its deadline.
    async fn run_migration_statement(&self, stmt: &str) -> Result<()> {
        let t = self.query_timeout.max(MIGRATION_TIMEOUT);
        timed(
            t,
            "migration",
            self.root
                .query_raw(stmt)
                .with_setting("max_execution_time", t.as_secs().to_string())
                .execute(),
        )
        .await
    }

    /// Drops the database with all its data. Idempotent. Only the operator calls this, when
    /// a pipeline with `deletionPolicy: Delete` is deleted.
    pub async fn drop_database(&self) -> Result<()> {
        timed(
            self.query_timeout,
            "drop database",
            self.root.query(&self.schema.drop_database()).execute(),
        )
        .await
    }

    /// Sets the retention of every trace table to `days` with `ALTER TABLE ... MODIFY TTL`
    /// (`materialize_ttl_after_modify = 0`: existing parts are not rewritten; they age out
    /// as whole daily partitions). Tables already at `days` are left alone, so repeating the
    /// call is free.
    pub async fn set_retention(&self, days: u32) -> Result<RetentionReport> {
        if days == 0 || days > 36_500 {
            return Err(Error::Config(format!(
                "retention must be 1..=36500 days, got {days}"
            )));
        }
        let current = self.retention().await?;
        let mut report = RetentionReport {
            days,
            changed: Vec::new(),
            unchanged: Vec::new(),
        };
        for table in self.schema.ttl_tables() {
            let name = self.schema.storage_table(table.name);
            let Some(now) = current.iter().find(|c| c.table == name).map(|c| c.days) else {
                return Err(Error::Schema(format!(
                    "table {name} is missing; run migrations first"
                )));
            };
            if now == Some(days) {
                report.unchanged.push(name);
                continue;
            }
            timed(
                self.query_timeout,
                "modify ttl",
                self.root
                    .query_raw(&self.schema.modify_ttl(table, days))
                    .with_setting("materialize_ttl_after_modify", "0")
                    .execute(),
            )
            .await?;
            tracing::info!(table = %name, days, previous = ?now, "retention changed");
            report.changed.push(name);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ttl_days() {
        assert_eq!(
            ttl_days(
                "MergeTree PARTITION BY toDate(start_time) TTL toDateTime(start_time) + toIntervalDay(30) SETTINGS x"
            ),
            Some(30)
        );
        assert_eq!(ttl_days("MergeTree ORDER BY x"), None);
    }
}
