//! The Python interpreter of the test virtualenv (`~/.cache/datatracing/venv`, installed by
//! `scripts/test.sh` from `tools/test-requirements.txt`; `DATATRACING_PYTHON` overrides it).
// Test infrastructure: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The test interpreter, after checking that it imports every module in `modules`.
pub fn python(modules: &[&str]) -> PathBuf {
    let python = match std::env::var_os("DATATRACING_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".cache/datatracing/venv/bin/python"),
    };
    let ok = Command::new(&python)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the Python test environment is missing ({} cannot import {}).\n\
         Install it with:\n  python3 -m venv ~/.cache/datatracing/venv && \
         ~/.cache/datatracing/venv/bin/pip install -r tools/test-requirements.txt\n\
         (scripts/test.sh does this).",
        python.display(),
        modules.join(", ")
    );
    python
}
