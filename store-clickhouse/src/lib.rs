//! The ClickHouse [`TraceWriter`](datatracing_store::TraceWriter) and
//! [`TraceReader`](datatracing_store::TraceReader): production storage.
//!
//! - [`schema`]: tables, versioned migrations, clustered DDL.
//! - `client`: HTTP or HTTPS (rustls) to the server, verified against
//!   `storage.clickhouse.ca_file` or the system's trust store.
//! - [`ClickHouseAdmin`]: migrations and retention (`set_retention` / `retention`), for the
//!   `datatracing migrate` command and the operator; the operator's storage ownership
//!   (`claim` / `owner` / `release`).
//! - [`ClickHouseStore`]: RowBinary inserts with LZ4, sent as soon as an insert slot is free
//!   (writes that wait for a slot are merged), retried on the shared `RetryPolicy` under one
//!   insert deduplication token per insert (a retry never duplicates rows), and reads that
//!   prune by time bounds and compute search summaries in ClickHouse.
//! - [`ClickHouseReader`]: the reads alone, for query processes: opening one connects and
//!   verifies the schema, never migrates and starts no batcher.

mod admin;
mod batcher;
mod client;
mod error;
mod metrics;
mod reader;
mod rows;
pub mod schema;
mod store;

pub use admin::{
    ClickHouseAdmin, MigrationReport, RetentionReport, SchemaState, StorageOwner, TableRetention,
};
// The settings are in this crate's API (`ClickHouseStore::open`, `ClickHouseAdmin::new`), so
// re-exported for callers; they live in `datatracing-config`.
pub use datatracing_config::{ClickHouseBatchConfig, ClickHouseConfig, Compression};
pub use error::{Error, Result};
pub use metrics::ClickHouseMetrics;
pub use reader::ClickHouseReader;
pub use store::ClickHouseStore;
