//! Replays the fuzz targets' committed corpus (`fuzz/corpus/<target>/`) through the same
//! entry points on stable Rust, so every input a fuzzer ever kept (crashes it found
//! included, once fixed) stays a regression test of the normal suite. The coverage-guided
//! runs themselves are `scripts/fuzz.sh` (nightly, bounded).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use datatracing_collector::fuzzing::{self, Harness};

/// The corpus of one target; read at run time, so a shared build cache never points at an
/// old checkout.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
    let dir = PathBuf::from(root).join("../fuzz/corpus").join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "{}: the committed corpus is missing",
        dir.display()
    );
    files
}

/// Runs `one` on every corpus file, naming the file that fails.
fn replay(target: &str, one: impl Fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(&bytes))) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{target}: {} fails: {why}", path.display());
        }
    }
}

#[test]
fn otlp_protobuf_corpus() {
    let h = Harness::new();
    replay("otlp_protobuf", |d| {
        if let Some((&mode, body)) = d.split_first() {
            h.otlp(false, mode & 1 == 1, body);
        }
    });
}

#[test]
fn otlp_json_corpus() {
    let h = Harness::new();
    replay("otlp_json", |d| {
        if let Some((&mode, body)) = d.split_first() {
            h.otlp(true, mode & 1 == 1, body);
        }
    });
}

#[test]
fn native_json_corpus() {
    let h = Harness::new();
    replay("native_json", |d| h.native_json(d));
}

#[test]
fn policy_corpus() {
    replay("policy", |d| {
        if let Ok(text) = std::str::from_utf8(d) {
            fuzzing::policy(text);
        }
    });
}

#[test]
fn wal_reader_corpus() {
    replay("wal_reader", fuzzing::wal);
}
