//! The embedded store: SQLite (through rusqlite, compiled in) in WAL mode under a data
//! directory, implementing both [`TraceWriter`](datatracing_store::TraceWriter) and
//! [`TraceReader`](datatracing_store::TraceReader) on one [`EmbeddedStore`].
//!
//! - `embedded`: the store (group-commit writer thread, read pool, retention).
//! - [`backup`] / [`restore`]: an online, checked copy of the store and its restore.
//! - [`Error`]: this crate's errors; SQLite failures are classified transient (busy, locked,
//!   disk full, I/O) or permanent (constraint, corrupt, read-only, misuse, schema) and
//!   converted into the backend-neutral [`datatracing_store::Error`].

mod backup;
mod embedded;
mod error;

// The settings are in this crate's API (`EmbeddedStore::open`), so re-exported for callers;
// they live in `datatracing-config`.
pub use backup::{BackupReport, backup, restore};
pub use datatracing_config::{EmbeddedConfig, Synchronous};
pub use embedded::{EmbeddedStore, OpenMode};
pub use error::{Error, Result};
