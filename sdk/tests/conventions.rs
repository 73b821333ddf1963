//! The pipeline conventions are one set of names: `docs/conventions.md` documents exactly the
//! constants the SDK exports, and the collector and the query service read those constants
//! instead of spelling the names themselves (a renamed constant changes all three at once).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use datatracing_e2e::workspace_root;
use datatracing_sdk::conventions::{LINK_ATTRIBUTES, SPAN_ATTRIBUTES};

/// The `datatracing.*` names in the first column of the attribute tables of the document.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(workspace_root().join("docs/conventions.md")).unwrap();
    let tables = doc.split("## Dataset names").next().unwrap();
    tables
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.starts_with("datatracing."))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_document_lists_exactly_the_constants() {
    let code: BTreeSet<String> = SPAN_ATTRIBUTES
        .iter()
        .chain(LINK_ATTRIBUTES)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(documented(), code);
}

fn rust_sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_collector_and_query_use_the_constants_not_their_own_spelling() {
    let mut files = Vec::new();
    for dir in ["collector/src", "query/src", "store/src", "ui/src"] {
        let dir = workspace_root().join(dir);
        if dir.is_dir() {
            rust_sources(&dir, &mut files);
        }
    }
    assert!(files.len() > 10, "found only {files:?}");
    let mut spelled = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for name in SPAN_ATTRIBUTES.iter().chain(LINK_ATTRIBUTES) {
            if text.contains(&format!("\"{name}\"")) {
                spelled.push(format!("{} spells \"{name}\"", file.display()));
            }
        }
    }
    assert!(
        spelled.is_empty(),
        "use datatracing_core::conventions: {spelled:#?}"
    );
    // And they do read them from there.
    for (file, must) in [
        ("collector/src/otlp/convert.rs", "conventions::SPAN_KIND"),
        ("collector/src/otlp/convert.rs", "conventions::STATUS"),
        ("collector/src/otlp/convert.rs", "conventions::LINK_TYPE"),
        ("query/src/jaeger.rs", "conventions::{SPAN_KIND"),
        ("query/src/jaeger/v3.rs", "conventions::LINK_TYPE"),
    ] {
        let text = std::fs::read_to_string(workspace_root().join(file)).unwrap();
        assert!(text.contains(must), "{file} does not use {must}");
    }
}
