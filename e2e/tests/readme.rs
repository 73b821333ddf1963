//! The README's tour works as written on any day: every `curl` block of "A 60-second tour"
//! is run by bash against the real binary (default retention), and each command's output is
//! compared with what the README shows after it (`# {...}` lines; elided ones by their
//! keys), so the README cannot drift from what a user sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use datatracing_e2e::{Server, binary, workspace_root};
use serde_json::Value;

/// A command of the tour: its script, and what the README says it prints (the `# ` lines
/// right after it), if anything.
struct Block {
    script: String,
    expected: Option<String>,
}

/// The commands of the `sh` blocks between the tour's heading and the next section that
/// call `curl`. A block may hold several commands, each followed by its output.
fn tour_blocks(readme: &str) -> Vec<Block> {
    let start = readme
        .find("## A 60-second tour")
        .expect("README has the tour");
    let rest = &readme[start + 3..];
    let tour = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut push = |script: &mut Vec<&str>, comment: &mut Vec<&str>| {
        let text = script.join("\n");
        if text.contains("curl") {
            blocks.push(Block {
                script: text,
                expected: (!comment.is_empty()).then(|| comment.join(" ")),
            });
        }
        script.clear();
        comment.clear();
    };
    let mut lines = tour.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```sh" {
            continue;
        }
        let (mut script, mut comment) = (Vec::new(), Vec::new());
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            match line.strip_prefix('#') {
                Some(c) => comment.push(c.trim()),
                None => {
                    if !comment.is_empty() {
                        push(&mut script, &mut comment);
                    }
                    script.push(line);
                }
            }
        }
        push(&mut script, &mut comment);
    }
    blocks
}

/// Compares a command's output with the README's. An output shown whole must be equal; one
/// with `...` (elided) must be valid JSON once the elisions are taken out and name only keys
/// the real output has.
fn check_output(script: &str, expected: &str, body: &Value) {
    if !expected.contains("...") {
        let expected: Value = serde_json::from_str(expected)
            .unwrap_or_else(|e| panic!("the README's output after {script:?} is not JSON: {e}"));
        assert_eq!(body, &expected, "{script}");
        return;
    }
    let text = body.to_string();
    let mut rest = expected;
    while let Some(i) = rest.find("\":") {
        let key_start = rest[..i].rfind('"').map_or(0, |j| j + 1);
        let key = &rest[key_start..i];
        assert!(
            text.contains(&format!("\"{key}\":")),
            "{script}\nthe README shows key {key:?}, the output has none: {text}"
        );
        rest = &rest[i + 2..];
    }
}

#[test]
fn the_readme_tour_works_today_as_written() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let blocks = tour_blocks(&readme);
    assert!(
        blocks.len() >= 5,
        "expected the tour's curl blocks, found {}",
        blocks.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(binary());
    c.args([
        "all-in-one",
        "--ingest-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
        "--query-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ])
    .arg("--data-dir")
    .arg(dir.path())
    // The default retention (168 h), as a user runs it: dated spans would be purged.
    .env_remove("DATATRACING_CONFIG")
    .env_remove("DATATRACING_RETENTION");
    let server = Server::spawn(c, true, true);

    let mut outputs = Vec::new();
    for block in &blocks {
        let script = block
            .script
            .replace("localhost:4318", &server.ingest().to_string())
            .replace("localhost:16686", &server.query().to_string());
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "{script}\nfailed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{script}\nprinted no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        match &block.expected {
            Some(expected) => check_output(&script, expected, &body),
            None => assert!(body.get("error").is_none(), "{script}\nanswered {body}"),
        }
        outputs.push(body);
    }

    // What the prose around the blocks promises: the fan-in trace with its two
    // DATA_DEPENDENCY edges, the downstream trace's cross-trace link, and the failing
    // join found by the search.
    let trace = outputs
        .iter()
        .find(|o| o["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the tour fetches the fan-in trace");
    assert_eq!(trace["spans"].as_array().unwrap().len(), 3, "{trace}");
    let data_deps = trace["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "DATA_DEPENDENCY")
        .count();
    assert_eq!(data_deps, 2, "{trace}");
    let downstream = outputs
        .iter()
        .find(|o| o["trace_id"] == "5bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the tour fetches the downstream trace");
    assert!(
        downstream["cross_trace_links"]
            .to_string()
            .contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{downstream}"
    );
    let search = outputs
        .iter()
        .find(|o| o.get("traces").is_some())
        .expect("the tour searches");
    assert!(
        search["traces"]
            .to_string()
            .contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "the search for failing joins finds the tour's trace: {search}"
    );
    let lineage = outputs
        .iter()
        .find(|o| o["root"] == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the tour asks for the fan-in trace's lineage");
    let nodes: Vec<(&str, u64)> = lineage["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["trace_id"].as_str().unwrap(),
                n["depth"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        vec![
            ("4bf92f3577b34da6a3ce929d0e0e4736", 0),
            ("5bf92f3577b34da6a3ce929d0e0e4736", 1)
        ],
        "the downstream trace is one hop downstream: {lineage}"
    );
    assert_eq!(lineage["edges"][0]["type"], "FOLLOWS_FROM", "{lineage}");
    assert_eq!(lineage["truncated"], false, "{lineage}");
}
