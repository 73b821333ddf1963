//! The Jaeger-compatible read API, proven against Jaeger itself.
//!
//! Starts Jaeger v2 (memory storage; the binary from `tools/jaeger/build.sh`, named by
//! `DATATRACING_JAEGER`) and the real `datatracing all-in-one`, sends both the same OTLP/JSON
//! requests (a generated corpus: several services, two processes of one service, resource
//! attributes of every type, every OpenTelemetry span kind, step kinds, OK / ERROR / UNSET
//! statuses with messages, TIMEOUT, events with attributes, cross-trace links of all three
//! types, scalar, array and key-value-list attributes), then calls every Jaeger endpoint on
//! both and compares the JSON structurally: envelopes, ids, references and their order,
//! start times and durations in microseconds, typed tags, logs, processes, error statuses
//! and error envelopes.
//!
//! Intended differences, each normalised or checked explicitly below:
//! - Span order: Jaeger lists a trace's spans in arrival order, we by start time then span
//!   id. Spans are compared by id, and ours are checked to be in start-time order. Lists
//!   without a defined order (services, operations, search results) compare as sets.
//! - Warnings: Jaeger adds clock-skew notes to spans; we add none (trace-level warnings
//!   only when a trace is cut at `query.max_trace_spans`). Span warnings are not compared.
//! - DATA_DEPENDENCY links: Jaeger drops link attributes, so to it they are plain
//!   FOLLOWS_FROM references. We give the same reference and add the tag
//!   `datatracing.link.types` (the type of each link, in order); the test checks that tag
//!   against the corpus and then removes it.
//! - Dependencies: Jaeger counts parent/child edges only; we also count an edge for each link
//!   whose target span is stored (the linked span's service is the upstream side). The test
//!   computes the link edges from the corpus and expects ours = Jaeger's + those.
//! - Not in the corpus because they differ by design (documented in the README): an OTLP
//!   span kind of UNSPECIFIED (Jaeger: no `span.kind` tag; we store INTERNAL), a step kind
//!   on a span whose OTLP kind is not INTERNAL (we keep the step kind, the OTLP kind is not
//!   stored), bytes attributes (we store hex text, Jaeger a `binary` tag), and tag filters
//!   on process tags or log fields (Jaeger matches them too; we match span attributes, with
//!   process tags under `resource.<key>`).
//! - Search without a start: Jaeger defaults to its lookback window, we to an open window;
//!   the corpus is recent, so both find it all.
//! - `error=true`: Jaeger v1.76's memory store does not match it against ERROR spans (see
//!   the check below), so ours is checked against the corpus instead.
//! - api_v3: key-value-list attributes come back as their JSON text (that is how they are
//!   stored; the comparison renders Jaeger's the same way); every link carries
//!   `datatracing.link.type` (checked against the corpus, then removed on both sides with
//!   `opentracing.ref_type`); a search without `query.num_traces` is a 500 on Jaeger and
//!   20 traces on ours (the test always sends it); `query.attributes` is ignored by Jaeger
//!   and applied by us (not compared; query/tests/jaeger_api.rs covers it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use datatracing_e2e::{Server, workspace_root};
use serde_json::{Value, json};

// ---- the Jaeger process ---------------------------------------------------------------------

/// Jaeger v2: `DATATRACING_JAEGER`, else where `tools/jaeger/build.sh` caches the version
/// `bench/versions.env` pins. Missing, the test fails and names the command that builds it.
fn jaeger_binary() -> PathBuf {
    let build = format!("{}/tools/jaeger/build.sh", workspace_root().display());
    let path = std::env::var_os("DATATRACING_JAEGER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let versions =
                std::fs::read_to_string(workspace_root().join("bench/versions.env")).unwrap();
            let version = versions
                .lines()
                .find_map(|l| l.strip_prefix("JAEGER_VERSION="))
                .expect("JAEGER_VERSION in bench/versions.env")
                .trim()
                .to_string();
            let cache = std::env::var_os("DATATRACING_BENCH_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                        .join(".cache/datatracing/bench")
                });
            cache.join(format!("jaeger-{version}")).join("jaeger")
        });
    assert!(
        path.is_file(),
        "Jaeger v2 is not at {}: build it with `export DATATRACING_JAEGER=$({build})` \
         (scripts/test.sh does this)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Jaeger {
    child: Child,
    query: String,
    otlp: String,
    _dir: tempfile::TempDir,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_jaeger(client: &reqwest::Client) -> Jaeger {
    let dir = tempfile::tempdir().unwrap();
    let (query, grpc, otlp) = (free_port(), free_port(), free_port());
    let config = format!(
        "extensions:
  jaeger_storage:
    backends:
      store:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: store
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{grpc}
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
exporters:
  jaeger_storage_exporter:
    trace_storage: store
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
"
    );
    let path = dir.path().join("jaeger.yaml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("jaeger.log")).unwrap();
    let child = Command::new(jaeger_binary())
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start jaeger");
    let j = Jaeger {
        child,
        query: format!("http://127.0.0.1:{query}"),
        otlp: format!("http://127.0.0.1:{otlp}"),
        _dir: dir,
    };
    // Ready when both the query API and the OTLP receiver answer.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = client.get(format!("{}/api/services", j.query)).send().await;
        let o = client
            .post(format!("{}/v1/traces", j.otlp))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await;
        if q.is_ok_and(|r| r.status().is_success()) && o.is_ok_and(|r| r.status().is_success()) {
            return j;
        }
        let log = std::fs::read_to_string(j._dir.path().join("jaeger.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "jaeger did not start: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- the corpus -----------------------------------------------------------------------------

/// A small deterministic generator (the corpus must be the same on every run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn s(v: &str) -> Value {
    json!({"stringValue": v})
}
fn i(v: i64) -> Value {
    json!({"intValue": v.to_string()})
}
fn d(v: f64) -> Value {
    json!({"doubleValue": v})
}
fn b(v: bool) -> Value {
    json!({"boolValue": v})
}
fn arr(vs: Vec<Value>) -> Value {
    json!({"arrayValue": {"values": vs}})
}
fn kv(k: &str, v: Value) -> Value {
    json!({"key": k, "value": v})
}

/// One generated span and what the test needs to know about it.
struct GenSpan {
    trace: String,
    id: String,
    service: usize,
    otlp: Value,
    /// (target trace, target span, link type name) per link.
    links: Vec<(String, String, &'static str)>,
}

/// The services and their resources; `notifier` runs as two processes (two hosts).
fn resources() -> Vec<(&'static str, Value)> {
    let res = |svc: &str, host: &str, ordinal: i64, quota: f64, canary: bool| {
        json!({"attributes": [
            kv("service.name", s(svc)),
            kv("host.name", s(host)),
            kv("k8s.pod.ordinal", i(ordinal)),
            kv("cpu.quota", d(quota)),
            kv("deployment.canary", b(canary)),
        ]})
    };
    vec![
        ("orders-api", res("orders-api", "node-a", 0, 1.5, false)),
        (
            "ingest-worker",
            res("ingest-worker", "node-b", 1, 2.0, true),
        ),
        ("spark-etl", res("spark-etl", "node-c", 2, 0.25, false)),
        (
            "feature-store",
            res("feature-store", "node-d", 3, 4.0, false),
        ),
        ("notifier", res("notifier", "node-e", 4, 0.5, false)),
        ("notifier", res("notifier", "node-f", 5, 0.5, true)),
    ]
}

const OPS: &[&str] = &[
    "GET /orders",
    "consume orders",
    "join orders+customers",
    "write features",
    "send email",
    "validate schema",
];
const STEP_KINDS: &[&str] = &["INGEST", "TRANSFORM", "JOIN", "VALIDATE", "MATERIALIZE"];

fn now_nanos() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

/// Generates `traces` traces of 3 to 9 spans over the last ten minutes.
fn corpus(traces: usize, base: i64) -> Vec<GenSpan> {
    let mut rng = Lcg(0x5eed);
    let mut out: Vec<GenSpan> = Vec::new();
    for t in 0..traces {
        // The first trace has a 64-bit id (high half zero), which Jaeger writes in 16 digits.
        let high = if t == 0 { 0 } else { 0xa11c_e000 + t as u64 };
        let trace = format!("{high:016x}{:016x}", rng.next());
        let n = 3 + rng.below(7) as usize;
        // Odd nanoseconds, so microsecond truncation of starts and durations is exercised.
        let t0 = base + (t as i64) * 40_000_000_000 + rng.below(1_000) as i64;
        let mut ids: Vec<(String, i64, i64)> = Vec::new(); // (id, start, end)
        for k in 0..n {
            let id = format!(
                "{:08x}{:08x}",
                t as u64 + 1,
                k as u64 + 1 + rng.below(1 << 20)
            );
            let service = if k == 0 { t % 6 } else { rng.below(6) as usize };
            let (parent, start) = if k == 0 {
                (None, t0)
            } else {
                let p = rng.below(k as u64) as usize;
                let (pid, pstart, _) = &ids[p];
                (
                    Some(pid.clone()),
                    pstart + 1_000 + rng.below(5_000_000) as i64,
                )
            };
            let dur = 1_000_000 + rng.below(900_000_000) as i64 + rng.below(999) as i64;
            let end = start + dur;
            let mut attrs = vec![
                kv("rows", i(rng.below(100_000) as i64)),
                kv("dataset", s(["orders", "customers", "features"][k % 3])),
                kv("ok", b(rng.below(2) == 0)),
                kv(
                    "ratio",
                    d(if k % 2 == 0 {
                        2.0
                    } else {
                        rng.below(1000) as f64 / 8.0
                    }),
                ),
                kv("labels", arr(vec![s("a"), s(&format!("l{k}"))])),
                kv("sizes", arr(vec![i(1), i(k as i64)])),
                kv("weights", arr(vec![d(1.0), d(2.5)])),
                kv("flags", arr(vec![b(true), b(false)])),
            ];
            if k % 4 == 1 {
                attrs.push(kv(
                    "meta",
                    json!({"kvlistValue": {"values": [kv("owner", s("data")), kv("tier", i(2))]}}),
                ));
            }
            // OTLP kinds 1..=5; every third internal span carries a pipeline step kind.
            let mut kind = 1 + rng.below(5);
            if k == 0 {
                kind = 2;
            }
            if kind == 1 && k % 3 == 0 {
                attrs.push(kv(
                    "datatracing.span.kind",
                    s(STEP_KINDS[k % STEP_KINDS.len()]),
                ));
            }
            let status = match (t + k) % 6 {
                0 => json!({"code": 2, "message": format!("failed at step {k}")}),
                1 => json!({"code": 1}),
                2 => json!({"code": 0, "message": "not judged"}),
                3 => {
                    attrs.push(kv("datatracing.status", s("TIMEOUT")));
                    json!({"code": 2, "message": "deadline"})
                }
                _ => json!({"code": 0}),
            };
            let events: Vec<Value> = (0..rng.below(3))
                .map(|e| {
                    json!({
                        "timeUnixNano": (start + 1_001 + e as i64 * 777).to_string(),
                        "name": format!("event-{e}"),
                        "attributes": if e == 0 { json!([]) } else {
                            json!([kv("attempt", i(e as i64)), kv("note", s("retry"))])
                        },
                    })
                })
                .collect();
            // Links to spans of earlier traces: FOLLOWS_FROM, DATA_DEPENDENCY and CHILD_OF.
            let mut links = Vec::new();
            if t > 0 && k % 3 == 2 {
                let count = 1 + rng.below(2);
                for l in 0..count {
                    let prior: Vec<&GenSpan> = out.iter().filter(|g| g.trace != trace).collect();
                    let target = prior[rng.below(prior.len() as u64) as usize];
                    let ty =
                        ["FOLLOWS_FROM", "DATA_DEPENDENCY", "CHILD_OF"][(t + k + l as usize) % 3];
                    links.push((target.trace.clone(), target.id.clone(), ty));
                }
            }
            let otlp_links: Vec<Value> = links
                .iter()
                .map(|(tr, sp, ty)| {
                    let attrs = match *ty {
                        "DATA_DEPENDENCY" => vec![
                            kv("datatracing.link.type", s("data_dependency")),
                            kv("edge", s("orders")),
                        ],
                        "CHILD_OF" => vec![kv("opentracing.ref_type", s("child_of"))],
                        _ => vec![],
                    };
                    json!({"traceId": tr, "spanId": sp, "attributes": attrs})
                })
                .collect();
            let mut span = json!({
                "traceId": trace, "spanId": id, "name": OPS[(service + k) % OPS.len()],
                "kind": kind,
                "startTimeUnixNano": start.to_string(), "endTimeUnixNano": end.to_string(),
                "attributes": attrs, "status": status, "events": events, "links": otlp_links,
            });
            if let Some(p) = parent {
                span["parentSpanId"] = json!(p);
            }
            ids.push((id.clone(), start, end));
            out.push(GenSpan {
                trace: trace.clone(),
                id,
                service,
                otlp: span,
                links,
            });
        }
    }
    out
}

/// OTLP/JSON requests: one per half of the corpus, spans grouped by resource and scope.
fn requests(spans: &[GenSpan]) -> Vec<Value> {
    let res = resources();
    let mid = spans.len() / 2;
    [&spans[..mid], &spans[mid..]]
        .iter()
        .map(|part| {
            let resource_spans: Vec<Value> = (0..res.len())
                .filter_map(|r| {
                    let mine: Vec<Value> = part
                        .iter()
                        .filter(|g| g.service == r)
                        .map(|g| g.otlp.clone())
                        .collect();
                    (!mine.is_empty()).then(|| {
                        json!({"resource": res[r].1, "scopeSpans": [{
                            "scope": {"name": "pipeline-sdk", "version": "1.4.2"},
                            "spans": mine,
                        }]})
                    })
                })
                .collect();
            json!({"resourceSpans": resource_spans})
        })
        .collect()
}

// ---- comparison ---------------------------------------------------------------------------

/// A tag as a comparable triple (numbers as f64, so `3` and `3.0` compare equal).
fn tag_key(t: &Value) -> (String, String, String) {
    let v = &t["value"];
    let value = match v.as_f64() {
        Some(f) if !v.is_boolean() => format!("{f}"),
        _ => v.to_string(),
    };
    (
        t["key"].as_str().unwrap().to_string(),
        t["type"].as_str().unwrap().to_string(),
        value,
    )
}

fn tags(v: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = v
        .as_array()
        .map(|a| a.iter().map(tag_key).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// A trace reduced to what both must agree on, spans by id with their process resolved.
fn normalise(trace: &Value, link_types: &BTreeMap<String, Vec<&str>>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for sp in trace["spans"].as_array().unwrap() {
        let id = sp["spanID"].as_str().unwrap().to_string();
        let process = &trace["processes"][sp["processID"].as_str().unwrap()];
        let mut span_tags = tags(&sp["tags"]);
        // Ours only: the link types tag, checked against the corpus, then removed.
        if let Some(pos) = span_tags
            .iter()
            .position(|(k, _, _)| k == "datatracing.link.types")
        {
            let (_, _, v) = span_tags.remove(pos);
            let want = &link_types[&id];
            assert!(want.contains(&"DATA_DEPENDENCY"), "span {id}: {v}");
            let got: Vec<String> =
                serde_json::from_str(&serde_json::from_str::<String>(&v).unwrap()).unwrap();
            assert_eq!(&got, want, "span {id}: link types");
        } else if let Some(want) = link_types.get(&id) {
            assert!(
                !want.contains(&"DATA_DEPENDENCY") || trace_is_jaegers(trace),
                "span {id} has a DATA_DEPENDENCY link but no datatracing.link.types tag"
            );
        }
        let logs: Vec<Value> = sp["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| json!({"timestamp": l["timestamp"], "fields": l["fields"].as_array().unwrap().iter().map(tag_key).map(|t| json!(t)).collect::<Vec<_>>()}))
            .collect();
        out.insert(
            id,
            json!({
                "traceID": sp["traceID"],
                "operationName": sp["operationName"],
                "references": sp["references"],
                "startTime": sp["startTime"],
                "duration": sp["duration"],
                "tags": span_tags,
                "logs": logs,
                "process": {"serviceName": process["serviceName"], "tags": tags(&process["tags"])},
            }),
        );
    }
    out
}

/// Marker set on Jaeger's answers before normalising (it never carries our tag).
fn trace_is_jaegers(trace: &Value) -> bool {
    trace["__jaeger"].as_bool() == Some(true)
}

struct Both {
    client: reqwest::Client,
    jaeger: String,
    ours: String,
}

impl Both {
    /// GET `path` from both; returns (status, body) of each.
    async fn get(&self, path: &str) -> ((u16, Value), (u16, Value)) {
        let one = |base: &str| {
            let url = format!("{base}{path}");
            let client = self.client.clone();
            async move {
                let r = client.get(&url).send().await.unwrap();
                let status = r.status().as_u16();
                let text = r.text().await.unwrap();
                let body: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"));
                (status, body)
            }
        };
        let jaeger = one(&self.jaeger).await;
        let ours = one(&self.ours).await;
        (jaeger, ours)
    }

    /// Ours alone (for the forms Jaeger does not accept, such as logfmt tags): succeeds.
    async fn ours_ok(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}{path}", self.ours))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "ours {path}: {body}");
        assert_eq!(body["errors"], Value::Null, "ours {path}: {body}");
        body["data"].clone()
    }

    /// Both succeed with the same envelope fields; returns the two `data` values.
    async fn ok(&self, path: &str) -> (Value, Value) {
        let ((js, jb), (os, ob)) = self.get(path).await;
        assert_eq!(js, 200, "jaeger {path}: {jb}");
        assert_eq!(os, 200, "ours {path}: {ob}");
        for f in ["total", "limit", "offset", "errors"] {
            assert_eq!(jb[f], ob[f], "{path}: envelope field {f}");
        }
        (jb["data"].clone(), ob["data"].clone())
    }
}

fn sorted_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.to_string()).collect())
        .unwrap_or_default()
}

fn traces_by_id(data: &Value, jaeger: bool) -> BTreeMap<String, Value> {
    data.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if jaeger {
                t["__jaeger"] = json!(true);
            }
            (t["traceID"].as_str().unwrap().to_string(), t)
        })
        .collect()
}

fn assert_spans_in_start_order(trace: &Value) {
    let starts: Vec<(i64, String)> = trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["startTime"].as_i64().unwrap(),
                s["spanID"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut sorted = starts.clone();
    sorted.sort();
    assert_eq!(starts, sorted, "our spans are in start-time order");
}

fn compare_traces(
    what: &str,
    jaeger: &Value,
    ours: &Value,
    link_types: &BTreeMap<String, Vec<&str>>,
) -> usize {
    let j = traces_by_id(jaeger, true);
    let o = traces_by_id(ours, false);
    assert_eq!(
        j.keys().collect::<Vec<_>>(),
        o.keys().collect::<Vec<_>>(),
        "{what}: the same traces"
    );
    for (id, jt) in &j {
        let ot = &o[id];
        assert_spans_in_start_order(ot);
        let jn = normalise(jt, link_types);
        let on = normalise(ot, link_types);
        assert_eq!(
            jn.keys().collect::<Vec<_>>(),
            on.keys().collect::<Vec<_>>(),
            "{what}: trace {id} has the same spans"
        );
        for (sid, js) in &jn {
            assert_eq!(
                js, &on[sid],
                "{what}: trace {id} span {sid} differs (left: Jaeger, right: ours)"
            );
        }
    }
    j.len()
}

// ---- api_v3 (OTLP/JSON) -------------------------------------------------------------------

/// An OTLP/JSON AnyValue in one canonical form: numbers as f64 text, 64-bit ints from their
/// string form, and key-value lists as their JSON text (we store them as that text).
fn any_canon(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        return json!(["string", s]);
    }
    if let Some(i) = v.get("intValue") {
        let n: i64 = match i {
            Value::String(s) => s.parse().unwrap(),
            other => other.as_i64().unwrap(),
        };
        return json!(["int", n]);
    }
    if let Some(d) = v.get("doubleValue") {
        return json!(["double", format!("{}", d.as_f64().unwrap())]);
    }
    if let Some(b) = v.get("boolValue") {
        return json!(["bool", b]);
    }
    if let Some(a) = v.get("arrayValue") {
        let values: Vec<Value> = a["values"]
            .as_array()
            .map(|vs| vs.iter().map(any_canon).collect())
            .unwrap_or_default();
        return json!(["array", values]);
    }
    if let Some(kv) = v.get("kvlistValue") {
        // Intended difference: key-value lists are stored as their JSON text.
        let map: serde_json::Map<String, Value> = kv["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["key"].as_str().unwrap().to_string(),
                    plain_json(&e["value"]),
                )
            })
            .collect();
        return json!(["string", Value::Object(map).to_string()]);
    }
    panic!("unexpected AnyValue {v}");
}

fn plain_json(v: &Value) -> Value {
    match any_canon(v) {
        Value::Array(pair) if pair[0] == "int" || pair[0] == "bool" || pair[0] == "string" => {
            pair[1].clone()
        }
        Value::Array(pair) if pair[0] == "double" => {
            json!(pair[1].as_str().unwrap().parse::<f64>().unwrap())
        }
        other => other,
    }
}

/// Attributes as a sorted map, without `skip` keys.
fn attrs_canon(v: &Value, skip: &[&str]) -> BTreeMap<String, Value> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|kv| !skip.contains(&kv["key"].as_str().unwrap()))
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap().to_string(),
                        any_canon(&kv["value"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The spans of an OTLP/JSON `TracesData`, by span id, each with its resource and scope.
/// `link_types` (ours) checks `datatracing.link.type` against the corpus; Jaeger keeps
/// whatever link attributes came in, so the link type attributes are then removed on both.
fn otlp_spans(
    data: &Value,
    link_types: Option<&BTreeMap<String, Vec<&str>>>,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for rs in data["resourceSpans"].as_array().unwrap() {
        let resource = attrs_canon(&rs["resource"]["attributes"], &[]);
        for ss in rs["scopeSpans"].as_array().unwrap() {
            for sp in ss["spans"].as_array().unwrap() {
                let id = sp["spanId"].as_str().unwrap().to_string();
                let links: Vec<Value> = sp["links"]
                    .as_array()
                    .map(|ls| {
                        ls.iter()
                            .enumerate()
                            .map(|(i, l)| {
                                if let Some(want) = link_types {
                                    let got = attrs_canon(&l["attributes"], &[])
                                        ["datatracing.link.type"]
                                        .clone();
                                    let want = want[&id][i].to_ascii_lowercase();
                                    assert_eq!(got, json!(["string", want]), "span {id} link {i}");
                                }
                                json!({
                                    "traceId": l["traceId"], "spanId": l["spanId"],
                                    "attributes": attrs_canon(&l["attributes"], &["datatracing.link.type", "opentracing.ref_type"]),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let events: Vec<Value> = sp["events"]
                    .as_array()
                    .map(|es| {
                        es.iter()
                            .map(|e| json!({"time": e["timeUnixNano"], "name": e["name"], "attributes": attrs_canon(&e["attributes"], &[])}))
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(
                    id,
                    json!({
                        "resource": resource,
                        "scope": {"name": ss["scope"]["name"], "version": ss["scope"]["version"]},
                        "traceId": sp["traceId"],
                        "parentSpanId": sp["parentSpanId"],
                        "name": sp["name"],
                        "kind": sp["kind"].as_i64().unwrap_or(0),
                        "start": sp["startTimeUnixNano"],
                        "end": sp["endTimeUnixNano"],
                        "attributes": attrs_canon(&sp["attributes"], &[]),
                        "events": events,
                        "links": links,
                        "status": {
                            "code": sp["status"]["code"].as_i64().unwrap_or(0),
                            "message": sp["status"]["message"].as_str().unwrap_or(""),
                        },
                    }),
                );
            }
        }
    }
    out
}

fn compare_otlp(
    what: &str,
    jaeger: &Value,
    ours: &Value,
    link_types: &BTreeMap<String, Vec<&str>>,
) -> usize {
    let j = otlp_spans(jaeger, None);
    let o = otlp_spans(ours, Some(link_types));
    assert_eq!(
        j.keys().collect::<Vec<_>>(),
        o.keys().collect::<Vec<_>>(),
        "{what}: the same spans"
    );
    for (id, js) in &j {
        assert_eq!(
            js, &o[id],
            "{what}: span {id} differs (left: Jaeger, right: ours)"
        );
    }
    j.len()
}

// ---- the test -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_api_matches_jaeger_v2() {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let jaeger = start_jaeger(&client).await;
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());

    let base = now_nanos() - 600_000_000_000;
    let spans = corpus(12, base);
    for body in requests(&spans) {
        for url in [
            format!("{}/v1/traces", jaeger.otlp),
            format!("http://{}/v1/traces", server.ingest()),
        ] {
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{url}: {}", r.status());
        }
    }
    let trace_ids: BTreeSet<String> = spans.iter().map(|g| g.trace.clone()).collect();
    let span_count = |t: &str| spans.iter().filter(|g| g.trace == t).count();
    // Jaeger's OTLP receiver answers before its store has the spans: wait (bounded) for all.
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in &trace_ids {
        loop {
            let v: Value = client
                .get(format!("{}/api/traces/{t}", jaeger.query))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v["data"][0]["spans"].as_array().map(Vec::len) == Some(span_count(t)) {
                break;
            }
            assert!(Instant::now() < deadline, "jaeger never stored trace {t}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let both = Both {
        client: client.clone(),
        jaeger: jaeger.query.clone(),
        ours: format!("http://{}", server.query()),
    };
    let link_types: BTreeMap<String, Vec<&str>> = spans
        .iter()
        .filter(|g| !g.links.is_empty())
        .map(|g| (g.id.clone(), g.links.iter().map(|l| l.2).collect()))
        .collect();
    let res = resources();
    let services: BTreeSet<&str> = res.iter().map(|r| r.0).collect();

    // Services and operations.
    let (j, o) = both.ok("/api/services").await;
    assert_eq!(sorted_set(&j), sorted_set(&o), "services");
    assert_eq!(sorted_set(&o).len(), services.len());
    for svc in &services {
        let (j, o) = both.ok(&format!("/api/services/{svc}/operations")).await;
        assert_eq!(sorted_set(&j), sorted_set(&o), "operations of {svc}");
        assert!(!sorted_set(&o).is_empty());
        let (j, o) = both.ok(&format!("/api/operations?service={svc}")).await;
        assert_eq!(
            sorted_set(&j),
            sorted_set(&o),
            "operations with kinds of {svc}"
        );
        for kind in ["server", "client", "producer", "consumer", "internal"] {
            let (j, o) = both
                .ok(&format!("/api/operations?service={svc}&spanKind={kind}"))
                .await;
            assert_eq!(sorted_set(&j), sorted_set(&o), "{kind} operations of {svc}");
        }
    }
    let (j, o) = both.ok("/api/services/no-such-service/operations").await;
    assert_eq!(
        sorted_set(&j),
        sorted_set(&o),
        "unknown service: no operations"
    );

    // Every trace by id, and several at once (one unknown among them).
    let mut compared = 0;
    for t in &trace_ids {
        let (j, o) = both.ok(&format!("/api/traces/{t}")).await;
        compared += compare_traces(&format!("trace {t}"), &j, &o, &link_types);
    }
    assert_eq!(compared, trace_ids.len());
    let some: Vec<&String> = trace_ids.iter().take(3).collect();
    let path = format!(
        "/api/traces?traceID={}&traceID={}&traceID=0000000000000000000000000000abcd&traceID={}",
        some[0], some[1], some[2]
    );
    let (j, o) = both.ok(&path).await;
    assert_eq!(compare_traces("traceID list", &j, &o, &link_types), 3);

    let (j, o) = both
        .ok("/api/traces?traceID=0123456789abcdef0123456789abcdef")
        .await;
    assert_eq!(compare_traces("unknown traceID", &j, &o, &link_types), 0);

    // Searches built from the corpus.
    let first = &spans[0];
    let first_svc = res[first.service].0;
    let first_op = first.otlp["name"].as_str().unwrap();
    let window_start = base / 1_000 + 100_000_000; // µs: cuts off the first traces
    let window_end = base / 1_000 + 400_000_000;
    let mut searches: Vec<String> = Vec::new();
    for svc in &services {
        searches.push(format!("service={svc}"));
        searches.push(format!("service={svc}&limit=1000"));
        searches.push(format!(
            "service={svc}&tags=%7B%22dataset%22%3A%22orders%22%7D"
        ));
        searches.push(format!("service={svc}&tag=dataset:customers"));
        searches.push(format!("service={svc}&minDuration=300ms"));
        searches.push(format!("service={svc}&minDuration=100ms&maxDuration=0.5s"));
        searches.push(format!(
            "service={svc}&start={window_start}&end={window_end}"
        ));
    }
    searches.push(format!(
        "service={first_svc}&operation={}",
        urlencode(first_op)
    ));
    let mut nonempty = 0;
    for q in &searches {
        let (j, o) = both.ok(&format!("/api/traces?{q}")).await;
        if compare_traces(q, &j, &o, &link_types) > 0 {
            nonempty += 1;
        }
    }
    assert!(
        nonempty * 2 > searches.len(),
        "most searches find something ({nonempty} of {})",
        searches.len()
    );
    // `error=true`: Jaeger v1.76's memory store does not match it against ERROR spans
    // (observed: a trace whose only span has status ERROR is not found, one with an OK span
    // is), so ours is checked against the corpus: traces with an ERROR span (TIMEOUT
    // included, as it travels as ERROR) in the service.
    for svc in &services {
        let want: BTreeSet<String> = spans
            .iter()
            .filter(|g| res[g.service].0 == *svc && g.otlp["status"]["code"] == json!(2))
            .map(|g| jaeger_text(&g.trace))
            .collect();
        for q in [
            "tags=%7B%22error%22%3A%22true%22%7D",
            "tag=error:true",
            "tags=error%3Dtrue",
        ] {
            let o = both
                .ours_ok(&format!("/api/traces?service={svc}&{q}&limit=1000"))
                .await;
            let got: BTreeSet<String> = traces_by_id(&o, false).into_keys().collect();
            assert_eq!(got, want, "{svc} {q}: traces with an error span");
        }
    }
    // The same tag filter as Grafana's logfmt (ours) and Jaeger's JSON map.
    for svc in &services {
        let (j, _) = both
            .ok(&format!("/api/traces?service={svc}&tags=%7B%22dataset%22%3A%22features%22%2C%22ok%22%3A%22true%22%7D"))
            .await;
        let o = both
            .ours_ok(&format!(
                "/api/traces?service={svc}&tags=dataset%3Dfeatures%20ok%3Dtrue"
            ))
            .await;
        compare_traces("logfmt tags", &j, &o, &link_types);
    }
    // A limit below the matches: as many traces on both, all of them matches.
    let svc = res[0].0;
    let (_, all) = both.ok(&format!("/api/traces?service={svc}")).await;
    let (j, o) = both.ok(&format!("/api/traces?service={svc}&limit=2")).await;
    let all: BTreeSet<String> = traces_by_id(&all, false).into_keys().collect();
    assert!(all.len() > 2, "the corpus gives {svc} more than 2 traces");
    for (who, d) in [("jaeger", &j), ("ours", &o)] {
        let got: BTreeSet<String> = traces_by_id(d, false).into_keys().collect();
        assert_eq!(got.len(), 2, "{who}: limit=2");
        assert!(got.is_subset(&all), "{who}: limited results are matches");
    }

    // Dependencies: Jaeger's parent/child edges plus one per stored link target.
    let end_ms = now_nanos() / 1_000_000 + 60_000;
    let (j, o) = both
        .ok(&format!(
            "/api/dependencies?endTs={end_ms}&lookback=3600000"
        ))
        .await;
    let edges = |v: &Value| -> BTreeMap<(String, String), u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    (
                        e["parent"].as_str().unwrap().to_string(),
                        e["child"].as_str().unwrap().to_string(),
                    ),
                    e["callCount"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let mut want = edges(&j);
    assert!(!want.is_empty(), "jaeger found dependencies");
    let by_id: BTreeMap<(&str, &str), usize> = spans
        .iter()
        .map(|g| ((g.trace.as_str(), g.id.as_str()), g.service))
        .collect();
    for g in &spans {
        for (tr, sp, _) in &g.links {
            let up = by_id[&(tr.as_str(), sp.as_str())];
            *want
                .entry((res[up].0.to_string(), res[g.service].0.to_string()))
                .or_default() += 1;
        }
    }
    assert_eq!(
        edges(&o),
        want,
        "dependencies: Jaeger's edges plus link edges"
    );

    // api_v3: services, operations, traces by id and searches as OTLP/JSON.
    let v3 = |path: String| {
        let both = &both;
        async move {
            let ((js, jb), (os, ob)) = both.get(&path).await;
            assert_eq!(js, os, "{path}: status (jaeger {jb}, ours {ob})");
            (js, jb, ob)
        }
    };
    let (_, j, o) = v3("/api/v3/services".into()).await;
    assert_eq!(sorted_set(&j["services"]), sorted_set(&o["services"]));
    let (_, j, o) = v3("/api/v3/operations".into()).await;
    assert_eq!(j, o, "v3 operations without a service");
    for svc in &services {
        for kind in [
            "",
            "&span_kind=server",
            "&span_kind=internal",
            "&span_kind=producer",
        ] {
            let (_, j, o) = v3(format!("/api/v3/operations?service={svc}{kind}")).await;
            assert_eq!(
                sorted_set(&j["operations"]),
                sorted_set(&o["operations"]),
                "v3 operations of {svc}{kind}"
            );
        }
    }
    let mut v3_spans = 0;
    for t in &trace_ids {
        let (status, j, o) = v3(format!("/api/v3/traces/{t}")).await;
        assert_eq!(status, 200, "{o}");
        v3_spans += compare_otlp(
            &format!("v3 trace {t}"),
            &j["result"],
            &o["result"],
            &link_types,
        );
    }
    assert_eq!(v3_spans, spans.len());
    let rfc = |nanos: i64| datatracing_core::Timestamp::from_unix_nanos(nanos).to_rfc3339();
    let (tmin, tmax) = (
        rfc(base - 60_000_000_000),
        rfc(now_nanos() + 60_000_000_000),
    );
    let window =
        format!("query.start_time_min={tmin}&query.start_time_max={tmax}&query.num_traces=1000");
    let mut v3_found = 0;
    for svc in &services {
        for extra in [
            String::new(),
            "&query.duration_min=300ms".to_string(),
            "&query.duration_min=100ms&query.duration_max=500ms".to_string(),
            format!("&query.operation_name={}", urlencode(first_op)),
        ] {
            let path = format!("/api/v3/traces?{window}&query.service_name={svc}{extra}");
            let (status, j, o) = v3(path.clone()).await;
            if status == 200 {
                v3_found += compare_otlp(&path, &j["result"], &o["result"], &link_types);
            } else {
                assert_eq!(status, 404, "{path}: {j}");
                assert_eq!(o["error"]["httpCode"], 404, "{path}: {o}");
            }
        }
    }
    assert!(
        v3_found >= spans.len(),
        "v3 searches found the corpus ({v3_found} spans)"
    );
    // A narrower window.
    let path = format!(
        "/api/v3/traces?query.start_time_min={}&query.start_time_max={}&query.num_traces=1000",
        rfc(window_start * 1000),
        rfc(window_end * 1000)
    );
    let (status, j, o) = v3(path.clone()).await;
    assert_eq!(status, 200, "{path}: {j}");
    assert!(compare_otlp(&path, &j["result"], &o["result"], &link_types) > 0);
    // Errors in the gateway's shape.
    for path in [
        "/api/v3/traces/zzz".to_string(),
        "/api/v3/traces/0123456789abcdef0123456789abcdef".to_string(),
        format!("/api/v3/traces/{}?start_time=yesterday", some[0]),
        "/api/v3/traces".to_string(),
        format!("/api/v3/traces?query.start_time_min=x&query.start_time_max={tmax}"),
        format!("/api/v3/traces?{window}&query.duration_min=x"),
        format!(
            "/api/v3/traces?query.start_time_min={tmin}&query.start_time_max={tmax}&query.num_traces=x"
        ),
        format!("/api/v3/traces?{window}&query.service_name=no-such-service"),
    ] {
        let (status, j, o) = v3(path.clone()).await;
        assert!(status >= 400, "{path}: {j}");
        for body in [&j, &o] {
            assert_eq!(body["error"]["httpCode"], json!(status), "{path}: {body}");
            assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        }
    }

    // Errors: the same status and Jaeger's error envelope.
    let unknown = "0123456789abcdef0123456789abcdef";
    for path in [
        "/api/traces".to_string(),
        "/api/traces/zzz".to_string(),
        format!("/api/traces/{unknown}"),
        "/api/traces/1234".to_string(),
        "/api/traces?traceID=xyz".to_string(),
        "/api/traces?service=orders-api&minDuration=abc".to_string(),
        "/api/traces?service=orders-api&maxDuration=12parsecs".to_string(),
        "/api/traces?service=orders-api&minDuration=2s&maxDuration=1s".to_string(),
        "/api/traces?service=orders-api&limit=x".to_string(),
        "/api/traces?service=orders-api&tags=%7Bbad".to_string(),
        "/api/traces?service=orders-api&tag=nocolon".to_string(),
        "/api/traces?service=orders-api&start=yesterday".to_string(),
        "/api/traces?service=orders-api&end=1.5".to_string(),
        "/api/operations".to_string(),
        "/api/dependencies?endTs=now".to_string(),
        "/api/dependencies?endTs=1&lookback=week".to_string(),
    ] {
        let ((js, jb), (os, ob)) = both.get(&path).await;
        assert_eq!(js, os, "{path}: status (jaeger {jb}, ours {ob})");
        assert!(js >= 400, "{path}: an error");
        for body in [&jb, &ob] {
            assert_eq!(body["data"], Value::Null, "{path}: {body}");
            let errors = body["errors"].as_array().unwrap();
            assert_eq!(errors.len(), 1, "{path}: {body}");
            assert_eq!(errors[0]["code"], json!(js), "{path}: {body}");
            assert!(!errors[0]["msg"].as_str().unwrap().is_empty());
        }
    }
    drop(server);
    drop(jaeger);
}

/// How Jaeger writes a trace id: 16 digits when the high half is zero.
fn jaeger_text(id: &str) -> String {
    id.strip_prefix("0000000000000000")
        .unwrap_or(id)
        .to_string()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
