//! Backup and restore of the embedded store, for single-node users (the disaster-recovery
//! runbook's embedded section).
//!
//! A backup is `VACUUM INTO` a new file from a read transaction: in WAL mode that is one
//! consistent snapshot taken while the server keeps writing (the writer is never blocked),
//! and the copy is compact. SQLite's page-by-page backup API was the alternative; a source
//! written by another connection restarts it, so under steady ingest it may never finish.
//! The copy is written next to its destination, checked (`integrity_check`, schema version,
//! span count) and only then renamed into place, so a failed backup leaves no file that
//! looks like a good one.
//!
//! Restore checks the backup the same way and replaces the data directory's database by a
//! rename. It refuses while a collector or all-in-one holds the data directory (the lock
//! file [`crate::embedded`] holds while a read-write store is open) and refuses to replace an
//! existing store unless asked to.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::embedded::{DB_FILE, LOCK_FILE, SCHEMA_VERSION};
use crate::{Error, Result};

/// What a backup or a restore wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// The file written (the backup, or the restored database).
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Spans it holds.
    pub spans: u64,
    /// Its schema version.
    pub schema_version: i64,
}

/// Copies the store under `data_dir` into `output` (which must not exist), online.
pub fn backup(data_dir: &Path, output: &Path) -> Result<BackupReport> {
    let source = data_dir.join(DB_FILE);
    if !source.is_file() {
        return Err(Error::Config(format!(
            "no embedded store at {} (is --data-dir right?)",
            source.display()
        )));
    }
    if output.exists() {
        return Err(Error::Config(format!(
            "{} exists; a backup never overwrites a file (choose a new name)",
            output.display()
        )));
    }
    let partial = partial_path(output)?;
    // A partial file from an interrupted run is ours to replace.
    remove_if_exists(&partial)?;
    let conn = Connection::open_with_flags(
        &source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let target = partial
        .to_str()
        .ok_or_else(|| Error::Config(format!("{} is not UTF-8", partial.display())))?;
    let copied = conn.execute("VACUUM INTO ?1", [target]);
    drop(conn);
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(e.into());
    }
    let report = match verify(&partial) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, output)?;
    sync_dir(output)?;
    Ok(BackupReport {
        path: output.to_path_buf(),
        ..report
    })
}

/// Makes `input` (a file [`backup`] wrote) the store of `data_dir`. The data directory must
/// not be in use; an existing store there is replaced only with `replace`.
pub fn restore(input: &Path, data_dir: &Path, replace: bool) -> Result<BackupReport> {
    if !input.is_file() {
        return Err(Error::Config(format!("no backup at {}", input.display())));
    }
    let report = verify(input)?;
    std::fs::create_dir_all(data_dir)?;
    // Held until the restore is done, so a server started meanwhile waits or fails.
    let _lock = lock_data_dir(data_dir)?;
    let db = data_dir.join(DB_FILE);
    if db.exists() && !replace {
        return Err(Error::Config(format!(
            "{} already holds a store; pass --replace to overwrite it with the backup",
            db.display()
        )));
    }
    let partial = partial_path(&db)?;
    remove_if_exists(&partial)?;
    std::fs::copy(input, &partial)?;
    File::open(&partial)?.sync_all()?;
    // The old database's write-ahead log and index belong to the old file: left in place they
    // would be replayed into the restored one.
    for suffix in ["-wal", "-shm"] {
        remove_if_exists(&data_dir.join(format!("{DB_FILE}{suffix}")))?;
    }
    std::fs::rename(&partial, &db)?;
    sync_dir(&db)?;
    Ok(BackupReport { path: db, ..report })
}

/// Takes the data directory's lock without waiting: fails when a read-write store (a
/// collector or all-in-one process) has it open.
pub(crate) fn lock_data_dir(data_dir: &Path) -> Result<File> {
    let path = data_dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::InUse(data_dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Opens a backup read-only and checks it: SQLite's integrity check, a schema version this
/// binary reads, and the spans table.
fn verify(path: &Path) -> Result<BackupReport> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Corrupt(format!("{} is not a SQLite database: {e}", path.display())))?;
    let not_a_backup = |e: rusqlite::Error| {
        Error::Corrupt(format!("{} is not a store backup: {e}", path.display()))
    };
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(not_a_backup)?;
    if check != "ok" {
        return Err(Error::Corrupt(format!(
            "{} failed SQLite's integrity check: {check}",
            path.display()
        )));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(not_a_backup)?;
    if !(1..=SCHEMA_VERSION).contains(&version) {
        return Err(Error::Config(format!(
            "{} has schema version {version}; this binary reads 1 to {SCHEMA_VERSION}",
            path.display()
        )));
    }
    let spans: i64 = conn
        .query_row("SELECT count(*) FROM spans", [], |r| r.get(0))
        .map_err(not_a_backup)?;
    Ok(BackupReport {
        path: path.to_path_buf(),
        bytes: std::fs::metadata(path)?.len(),
        spans: u64::try_from(spans).unwrap_or(0),
        schema_version: version,
    })
}

fn partial_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Config(format!("{} names no file", path.display())))?;
    let mut partial = name.to_os_string();
    partial.push(".partial");
    Ok(path.with_file_name(partial))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Makes a rename in the file's directory durable.
fn sync_dir(file: &Path) -> Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()?;
    Ok(())
}
