//! Backup and restore of the embedded store (runbooks/disaster-recovery.md), and the data
//! directory lock that keeps two writers (or a restore and a writer) apart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datatracing_core::{Span, Timestamp, TraceId};
use datatracing_store::{TraceReader, TraceWriter};
use datatracing_store_contract::{fresh_trace_id, simple_span};
use datatracing_store_sqlite::{EmbeddedConfig, EmbeddedStore, Error, OpenMode, backup, restore};

async fn open(dir: &std::path::Path) -> EmbeddedStore {
    EmbeddedStore::open(EmbeddedConfig::new(dir), OpenMode::ReadWrite)
        .await
        .unwrap()
}

fn trace(id: TraceId, spans: u64) -> Vec<Span> {
    let start = Timestamp::now().saturating_add_nanos(-60_000_000_000);
    (0..spans)
        .map(|i| simple_span(id, i, i.checked_sub(1), "backup-svc", start, 1_000))
        .collect()
}

/// A backup taken while writers keep committing is a consistent snapshot that holds at
/// least every span acknowledged before it started, and restores into a store that serves
/// them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_restores_every_acknowledged_span() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = open(&data).await;
    let before: Vec<TraceId> = (0..50).map(|_| fresh_trace_id()).collect();
    for id in &before {
        store.write(trace(*id, 20).into()).await.unwrap();
    }
    // Writers keep going during the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 2_000 {
                store
                    .write(trace(fresh_trace_id(), 20).into())
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let out = dir.path().join("traces.backup");
    let data_for_backup = data.clone();
    let out_for_backup = out.clone();
    let report = tokio::task::spawn_blocking(move || backup(&data_for_backup, &out_for_backup))
        .await
        .unwrap()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let written_during = writer.await.unwrap();
    assert!(report.spans >= 50 * 20, "{report:?}");
    assert!(report.spans <= (50 + written_during) * 20, "{report:?}");
    assert_eq!(
        report.spans % 20,
        0,
        "a half-committed batch was copied: {report:?}"
    );
    assert_eq!(report.schema_version, 5);
    assert!(!dir.path().join("traces.backup.partial").exists());
    store.close().await.unwrap();

    let restored = dir.path().join("restored");
    let r = restore(&out, &restored, false).unwrap();
    assert_eq!(r.spans, report.spans);
    let store = open(&restored).await;
    for id in &before {
        assert_eq!(store.get_trace(*id).await.unwrap().unwrap().len(), 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_running_store_an_existing_store_and_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = open(&data).await;
    let id = fresh_trace_id();
    store.write(trace(id, 3).into()).await.unwrap();
    let out = dir.path().join("b.db");
    backup(&data, &out).unwrap();

    // Never overwrites a backup.
    assert!(matches!(backup(&data, &out), Err(Error::Config(m)) if m.contains("never overwrites")));
    // The server still has the directory.
    let e = restore(&out, &data, true).unwrap_err();
    assert!(matches!(e, Error::InUse(_)), "{e}");
    assert!(e.to_string().contains("stop it first"), "{e}");
    store.close().await.unwrap();

    // Stopped, but holding a store: only with `replace`.
    let e = restore(&out, &data, false).unwrap_err();
    assert!(e.to_string().contains("--replace"), "{e}");

    // Not a backup: refused, and the data directory is untouched.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
    let e = restore(&garbage, &data, true).unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    let store = open(&data).await;
    assert_eq!(store.get_trace(id).await.unwrap().unwrap().len(), 3);
    store.close().await.unwrap();

    // Replacing drops what was written after the backup, and the old write-ahead log with it.
    let later = fresh_trace_id();
    let store = open(&data).await;
    store.write(trace(later, 2).into()).await.unwrap();
    store.close().await.unwrap();
    restore(&out, &data, true).unwrap();
    let store = open(&data).await;
    assert_eq!(store.get_trace(id).await.unwrap().unwrap().len(), 3);
    assert!(store.get_trace(later).await.unwrap().is_none());
}

/// Two read-write stores on one directory would interleave writes and retention; the second
/// is refused (it was opened before the lock existed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).await;
    let second = EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadWrite).await;
    let e = second.unwrap_err();
    assert!(matches!(e, Error::InUse(_)), "{e}");
    // Readers (a standalone query server) are not writers and still open.
    EmbeddedStore::open(EmbeddedConfig::new(dir.path()), OpenMode::ReadOnly)
        .await
        .unwrap();
    first.close().await.unwrap();
    open(dir.path()).await;
}
