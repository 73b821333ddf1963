//! The DAG explorer in a real browser: the real `datatracing` binary loaded with the fixture
//! traces (and a failing join, a page's worth of small traces and a 2,000-span trace made
//! here), and Debian's headless chromium driven by Playwright (`e2e/browser/ui.mjs`) through
//! the pages as a person would use them. Once on the embedded store and once on ClickHouse.
//!
//! Needs `node`, `chromium` and `npm ci --prefix e2e/browser`; `scripts/test.sh` installs
//! them. A missing one fails the test with the command to run, never skips it.
//!
//! `DATATRACING_UI_SCREENSHOTS=<dir>` also writes the README's screenshots there:
//! `DATATRACING_UI_SCREENSHOTS=$PWD/docs/images cargo test -p datatracing-e2e --test ui -- embedded`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datatracing_core::Timestamp;
use datatracing_e2e::{Server, workspace_root};
use datatracing_testkit::clickhouse::{ClickHouse, unique_database};
use serde_json::{Value, json};

/// The fixtures' own clock: every time in them is shifted by (start of the test data -
/// this), so the data is recent (ClickHouse's TTL, relative time windows) wherever it runs.
const FIXTURE_EPOCH: &str = "2026-11-28T10:00:00Z";
const FAILING_JOIN: &str = "0000000000000000000000000000f001";
const LARGE: &str = "0000000000000000000000000000f002";
const LARGE_SPANS: u64 = 2_000;
/// Generous bounds for the 2,000-span trace (measured figures are printed and reported):
/// first render grouped by service, then every span drawn.
const LARGE_GROUPED_BOUND_MS: u64 = 20_000;
const LARGE_ALL_SPANS_BOUND_MS: u64 = 60_000;

fn shifted(t: &str, delta: i64) -> String {
    Timestamp::parse_rfc3339(t)
        .unwrap()
        .saturating_add_nanos(delta)
        .to_rfc3339()
}

/// Every fixture span, with its times shifted by `delta` nanoseconds.
fn fixture_spans(delta: i64) -> Vec<Value> {
    let dir = workspace_root().join("fixtures/traces");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "fixtures missing in {}", dir.display());
    let mut out = Vec::new();
    for f in files {
        let v: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        for mut s in v["spans"].as_array().unwrap().clone() {
            for k in ["start_time", "end_time"] {
                s[k] = json!(shifted(s[k].as_str().unwrap(), delta));
            }
            if let Some(events) = s.get_mut("events").and_then(Value::as_array_mut) {
                for e in events {
                    e["time"] = json!(shifted(e["time"].as_str().unwrap(), delta));
                }
            }
            out.push(s);
        }
    }
    out
}

fn at(t0: Timestamp, ms: i64) -> String {
    t0.saturating_add_nanos(ms * 1_000_000).to_rfc3339()
}

fn sid(n: u64) -> String {
    format!("{n:016x}")
}

/// A fan-in whose join fails, kept by the `errors` sampling rule, with a downstream
/// materialize that was cancelled.
/// Datasets the failing join's pipeline names (`docs/conventions.md`).
const ORDERS_TOPIC: &str = "kafka://broker:9092/orders";
const ENRICHED: &str = "s3://lake/orders_enriched";

fn failing_join(t0: Timestamp) -> Vec<Value> {
    let s = |id: u64, parent: Option<u64>, svc: &str, op: &str, kind: &str, from: i64, to: i64| {
        let mut v = json!({"trace_id": FAILING_JOIN, "span_id": sid(id), "service": svc,
            "operation": op, "kind": kind, "start_time": at(t0, from), "end_time": at(t0, to),
            "status": "OK", "attributes": {"pipeline": "orders-daily", "dataset": "orders"}});
        if let Some(p) = parent {
            v["parent_id"] = json!(sid(p));
        }
        v
    };
    let root = s(1, None, "airflow", "orders-daily", "INTERNAL", 0, 4_000);
    let mut orders = s(
        2,
        Some(1),
        "kafka-ingest",
        "consume orders",
        "INGEST",
        10,
        900,
    );
    let customers = s(
        3,
        Some(1),
        "cdc-ingest",
        "read customers",
        "INGEST",
        20,
        1_400,
    );
    let mut join = s(
        4,
        Some(1),
        "spark-etl",
        "join orders+customers",
        "JOIN",
        1_450,
        3_300,
    );
    join["status"] = json!({"code": "ERROR", "message": "schema mismatch on customer_id"});
    join["attributes"] = json!({"pipeline": "orders-daily", "dataset": "orders", "records": 182_344,
        "datatracing.sampling.rule": "errors", "datatracing.sampling.rate": 1.0,
        "datatracing.dataset.outputs": [ENRICHED]});
    join["events"] =
        json!([{"name": "retry", "time": at(t0, 2_000), "attributes": {"attempt": 2}}]);
    join["links"] = json!([
        {"trace_id": FAILING_JOIN, "span_id": sid(2), "type": "DATA_DEPENDENCY",
         "attributes": {"datatracing.link.dataset": ORDERS_TOPIC}},
        {"trace_id": FAILING_JOIN, "span_id": sid(3), "type": "DATA_DEPENDENCY"}
    ]);
    let mut mat = s(
        5,
        Some(4),
        "warehouse",
        "materialize orders_enriched",
        "MATERIALIZE",
        3_310,
        3_900,
    );
    mat["status"] = json!({"code": "CANCELLED", "message": "upstream failed"});
    // Pipeline conventions on some spans, so the map can group by dataset.
    mat["attributes"]["datatracing.dataset.inputs"] = json!([ENRICHED]);
    orders["attributes"]["datatracing.dataset.outputs"] = json!([ORDERS_TOPIC]);
    let validate = s(6, Some(2), "dq", "validate orders", "VALIDATE", 910, 1_300);
    vec![root, orders, customers, join, mat, validate]
}

/// 2,000 spans: a tree (each span a child of the one a third of its number back) over
/// eight services, with a DATA_DEPENDENCY link on every tenth span.
fn large(t0: Timestamp) -> Vec<Value> {
    const KINDS: [&str; 6] = [
        "INGEST",
        "TRANSFORM",
        "ENRICH",
        "VALIDATE",
        "JOIN",
        "AGGREGATE",
    ];
    (0..LARGE_SPANS)
        .map(|i| {
            let depth = (i as f64 + 1.0).log(3.0).floor() as i64;
            let mut v = json!({"trace_id": LARGE, "span_id": sid(i + 1),
                "service": format!("stage-{}", depth.min(7)), "operation": format!("partition {i}"),
                "kind": KINDS[(i % 6) as usize], "start_time": at(t0, depth * 100 + (i % 50) as i64),
                "end_time": at(t0, depth * 100 + 90 + (i % 50) as i64), "status": if i % 97 == 5 { "ERROR" } else { "OK" }});
            if i > 0 {
                v["parent_id"] = json!(sid((i - 1) / 3 + 1));
            }
            if i > 10 && i % 10 == 0 {
                v["links"] = json!([{"trace_id": LARGE, "span_id": sid(i - 7), "type": "DATA_DEPENDENCY"}]);
            }
            v
        })
        .collect()
}

/// 25 small healthy traces, so the search has more than one page.
fn filler(t0: Timestamp) -> Vec<Value> {
    (0..25)
        .map(|n| {
            json!({"trace_id": format!("{:032x}", 0xe000 + n), "span_id": sid(1), "service": "nightly-export",
                "operation": "export", "kind": "PUBLISH", "start_time": at(t0, 60_000 + n * 1_000),
                "end_time": at(t0, 60_000 + n * 1_000 + 200 + n * 37), "status": "OK"})
        })
        .collect()
}

/// What the browser script is told: trace ids and a window around the data.
struct Loaded {
    case: Value,
}

/// Bearer tokens for a server with `auth.tokens` set: one with the ingest scope, one with
/// the query scope.
struct Tokens {
    ingest: &'static str,
    query: &'static str,
}

/// Posts the fixtures and the generated traces and waits (bounded) until every trace reads
/// back whole.
async fn load(server: &Server, tokens: Option<&Tokens>) -> Loaded {
    let with = |req: reqwest::RequestBuilder, token: fn(&Tokens) -> &'static str| match tokens {
        Some(t) => req.bearer_auth(token(t)),
        None => req,
    };
    let t0 = Timestamp::now().saturating_add_nanos(-2 * 3600 * 1_000_000_000);
    let delta = t0.saturating_nanos_since(Timestamp::parse_rfc3339(FIXTURE_EPOCH).unwrap());
    let mut spans = fixture_spans(delta);
    spans.extend(failing_join(
        t0.saturating_add_nanos(5 * 60 * 1_000_000_000),
    ));
    spans.extend(filler(t0.saturating_add_nanos(10 * 60 * 1_000_000_000)));
    spans.extend(large(t0.saturating_add_nanos(15 * 60 * 1_000_000_000)));
    let mut want: std::collections::BTreeMap<String, u64> = Default::default();
    for s in &spans {
        *want
            .entry(s["trace_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let client = reqwest::Client::new();
    for chunk in spans.chunks(500) {
        let resp = with(
            client.post(format!("http://{}/api/v1/spans", server.ingest())),
            |t| t.ingest,
        )
        .json(&json!({ "spans": chunk }))
        .send()
        .await
        .unwrap();
        assert!(
            resp.status().is_success(),
            "ingest: {}",
            resp.text().await.unwrap()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (trace, n) in &want {
        loop {
            let r = with(
                client.get(format!("http://{}/api/v1/traces/{trace}", server.query())),
                |t| t.query,
            )
            .send()
            .await
            .unwrap();
            if r.status().is_success() {
                let v: Value = r.json().await.unwrap();
                if v["spans"].as_array().map(Vec::len) == Some(*n as usize) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace} never read back whole"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let tid = |n: u32| format!("{n:032x}");
    Loaded {
        case: json!({
            "failing_join": FAILING_JOIN,
            "fan_in": tid(0x1004),
            "chain": [tid(0x2001), tid(0x2002), tid(0x2003)],
            "large": LARGE,
            "start": t0.saturating_add_nanos(-3600 * 1_000_000_000).to_rfc3339(),
            "end": Timestamp::now().to_rfc3339(),
            // Before the 2,000-span trace: the README's pipeline map shows the fixtures.
            "before_large": t0.saturating_add_nanos(12 * 60 * 1_000_000_000).to_rfc3339(),
        }),
    }
}

/// Runs the browser script against `server`; returns its report after asserting every
/// scenario in it passed and every `expect`ed one ran.
fn run_browser(
    server: &Server,
    loaded: &Loaded,
    scenarios: &[&str],
    screenshots: Option<&str>,
) -> Value {
    let browser_dir = workspace_root().join("e2e/browser");
    let chromium =
        std::env::var("DATATRACING_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "no chromium at {chromium}: install it (Debian: apt-get install -y chromium) or run scripts/test.sh, which does"
    );
    assert!(
        browser_dir
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "Playwright is not installed: run `npm ci --prefix e2e/browser` (scripts/test.sh does)"
    );
    let mut cmd = Command::new("node");
    cmd.arg(browser_dir.join("ui.mjs"))
        .env("DATATRACING_UI_BASE", format!("http://{}", server.query()))
        .env("DATATRACING_UI_CASE", loaded.case.to_string())
        .env("DATATRACING_CHROMIUM", &chromium)
        .env("DATATRACING_UI_SCENARIOS", scenarios.join(","))
        .stdin(Stdio::null());
    if let Some(dir) = screenshots {
        std::fs::create_dir_all(dir).unwrap();
        cmd.args(["--screenshots", dir]);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run node (install Node.js 20+): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "the browser script printed no report (exit {:?}):\n{stdout}\n{stderr}",
                out.status.code()
            )
        });
    let results = report["results"].as_array().unwrap();
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r["ok"] != true)
        .map(|r| format!("{}: {}", r["name"], r["error"].as_str().unwrap_or("")))
        .collect();
    assert!(
        failed.is_empty(),
        "browser scenarios failed:\n{}",
        failed.join("\n\n")
    );
    for s in scenarios {
        assert!(
            results.iter().any(|r| r["name"] == *s && r["ok"] == true),
            "scenario {s} did not run: {report}"
        );
    }
    assert!(
        out.status.success(),
        "browser script exited {:?}:\n{stderr}",
        out.status.code()
    );
    eprintln!("browser report: {report}");
    report
}

const ALL: &[&str] = &[
    "search_finds_failing_join",
    "search_pages_with_cursors",
    "dag_draws_every_span_and_fan_in",
    "critical_path_and_node_details",
    "keyboard_selects_a_node",
    "follows_from_opens_downstream",
    "unknown_trace_says_not_found",
    "api_errors_are_messages",
    "pipeline_map",
    "large_trace_renders",
    "no_off_origin_requests",
    "no_console_errors",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let loaded = load(&server, None).await;
    let shots = std::env::var("DATATRACING_UI_SCREENSHOTS").ok();
    let mut want = ALL.to_vec();
    if shots.is_some() {
        want.push("screenshots");
    }
    let report =
        tokio::task::block_in_place(|| run_browser(&server, &loaded, &want, shots.as_deref()));
    let grouped = report["figures"]["large_grouped_ms"].as_u64().unwrap();
    let all = report["figures"]["large_all_spans_ms"].as_u64().unwrap();
    let layout = &report["figures"]["large_all_spans_layout_ms"];
    eprintln!(
        "2,000-span trace: page ready (grouped by service) in {grouped} ms, every span drawn in {all} ms (dagre layout {layout} ms of it)"
    );
    assert!(
        grouped < LARGE_GROUPED_BOUND_MS,
        "grouped render took {grouped} ms"
    );
    assert!(
        all < LARGE_ALL_SPANS_BOUND_MS,
        "drawing every span took {all} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_in_a_real_browser() {
    let ch = ClickHouse::shared();
    let db = unique_database("ui");
    let base = |sub: &str| datatracing_e2e::clickhouse_command(sub, ch, &db);
    let out = base("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::spawn(base("all-in-one"), true, true);
    let loaded = load(&server, None).await;
    // Every page on ClickHouse; the 2,000-span timing is measured on the embedded store.
    let want: Vec<&str> = ALL
        .iter()
        .copied()
        .filter(|s| *s != "large_trace_renders")
        .collect();
    tokio::task::block_in_place(|| run_browser(&server, &loaded, &want, None));
}

/// With `auth.tokens` set the pages load without a token (they are static), and the UI asks
/// for one when the API refuses, then reads with it (`token_prompt` in e2e/browser/ui.mjs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_protected_server_in_a_real_browser() {
    const TOKENS: Tokens = Tokens {
        ingest: "ui-ingest-4b0c9e2f7a1d",
        query: "ui-query-8e3f1a6c2b9d",
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "auth:\n  tokens:\n\
         \x20   - {name: pipelines, scopes: [ingest], env: DT_UI_INGEST_TOKEN}\n\
         \x20   - {name: viewers, scopes: [query], env: DT_UI_QUERY_TOKEN}\n",
    )
    .unwrap();
    let mut c = datatracing_e2e::command("all-in-one");
    c.arg("-c")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("DT_UI_INGEST_TOKEN", TOKENS.ingest)
        .env("DT_UI_QUERY_TOKEN", TOKENS.query);
    let server = Server::spawn(c, true, true);
    let mut loaded = load(&server, Some(&TOKENS)).await;
    loaded.case["ingest_token"] = json!(TOKENS.ingest);
    loaded.case["query_token"] = json!(TOKENS.query);
    tokio::task::block_in_place(|| {
        run_browser(
            &server,
            &loaded,
            &[
                "token_prompt",
                "no_off_origin_requests",
                "no_console_errors",
            ],
            None,
        )
    });
}
