//! Scenario 7, routing between collector pods (ADR 0009): the sample pipeline (three
//! collectors, tail sampling, so the operator renders the peers' headless Service, the
//! EndpointSlice RBAC and `collector.peers`) with its keep-failures policy; the baseline
//! policy replaced by one rule keeping the hand-off load (`service: e2e-load`), the rest
//! dropped by the pipeline's default.
//!
//! 1. The ring: `status.collectorRingSize` is 3 and every collector reports 3 members, from
//!    the EndpointSlices the kubelet's readiness and the EndpointSlice controller wrote.
//! 2. Routing: a bounded corpus whose every trace is dealt over the three pods' own
//!    addresses (not the Service; half the requests OTLP/protobuf, half native JSON), so only
//!    forwarding can bring a trace together: every error trace is stored complete and
//!    decided by the errors rule, no other trace is stored, and every pod forwarded to its
//!    peers without falling back.
//! 3. Hand-off: the pipeline scaled to 2 collectors under a bounded load of traces that the
//!    policy keeps whichever way they are decided (one error span each: a trace decided
//!    whole is stamped `keep-failures/errors`, a fragment without its error span
//!    `baseline/keep-load`); the ring goes
//!    to 2, no acknowledged span is lost, and the traces decided in parts are counted.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datatracing_e2e::cluster::Cluster;
use datatracing_operator::crd::TracingPipeline;
use kube::Api;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use serde_json::{Value, json};

use crate::support::{self, Sent, eventually};

const NS: &str = "e2e-routing";
const DATABASE: &str = "e2e_routing";
const COLLECTORS: &str = "app.kubernetes.io/instance=orders,app.kubernetes.io/component=collector";
/// Traces of the routing corpus; one in five has an error span.
const TRACES: usize = 300;
/// Spans per trace: a root and three children, dealt over the pods.
const SPANS: usize = 4;
/// The child that fails in an error trace (not the root, so the root's owner must receive
/// it from a peer for the trace to be kept whole).
const ERROR_SPAN: usize = 2;

/// The sample's errors rule, as the merged policy names it (`<policy>/<rule>`).
const ERRORS_RULE: &str = "keep-failures/errors";

/// Query replicas down to one (the scenario reads ClickHouse), and the baseline policy
/// replaced by a rule that keeps the hand-off load and nothing else: the routing corpus is
/// then kept only by the sample's errors rule.
const PATCHES: &str = r#"  - target:
      kind: TracingPipeline
      name: orders
    patch: |-
      - op: replace
        path: /spec/query/replicas
        value: 1
  - target:
      kind: SamplingPolicy
      name: baseline
    patch: |-
      - op: replace
        path: /spec/rules
        value: [{name: keep-load, when: {service: {exact: e2e-load}}, action: {decision: keep}}]
"#;

fn trace_id(phase: u64, i: usize) -> String {
    format!(
        "{:016x}{:016x}",
        0x7275_7465_0000_0000 + phase,
        i as u64 + 1
    )
}

/// Trace `i` of `phase`: a root and children, child [`ERROR_SPAN`] failed when `error`.
fn trace(phase: u64, i: usize, service: &str, error: bool) -> Vec<Value> {
    let now = datatracing_core::Timestamp::now().unix_nanos() - 60_000_000_000;
    let ts =
        |ns: i64| serde_json::to_value(datatracing_core::Timestamp::from_unix_nanos(ns)).unwrap();
    (0..SPANS)
        .map(|k| {
            let at = now + k as i64 * 1_000;
            let mut s = json!({
                "trace_id": trace_id(phase, i),
                "span_id": format!("{:016x}", k + 1),
                "service": service,
                "operation": format!("step {k}"),
                "start_time": ts(at),
                "end_time": ts(at + 500),
            });
            if k > 0 {
                s["parent_id"] = json!("0000000000000001");
            }
            if error && k == ERROR_SPAN {
                s["status"] = json!({"code": "ERROR", "message": "bad rows"});
            }
            s
        })
        .collect()
}

/// Posts `spans` to the collector at `ip`: as OTLP/HTTP protobuf when `otlp` (which a routed
/// collector splits by owner at the wire level), else as native JSON (decoded before
/// routing). True when acknowledged with nothing rejected.
async fn post(client: &reqwest::Client, ip: &str, spans: &[Value], otlp: bool) -> bool {
    if otlp {
        use prost::Message;
        let spans: Vec<datatracing_core::Span> = spans
            .iter()
            .map(|s| serde_json::from_value(s.clone()).unwrap())
            .collect();
        let body = datatracing_collector::otlp::convert::to_otlp(&spans).encode_to_vec();
        let Ok(r) = client
            .post(format!("http://{ip}:4318/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
        else {
            return false;
        };
        if r.status() != 200 {
            return false;
        }
        let Ok(bytes) = r.bytes().await else {
            return false;
        };
        let resp = ExportTraceServiceResponse::decode(bytes).expect("an OTLP answer");
        assert!(resp.partial_success.is_none(), "{resp:?}");
        return true;
    }
    let Ok(r) = client
        .post(format!("http://{ip}:4318/api/v1/spans"))
        .json(&json!({ "spans": spans }))
        .send()
        .await
    else {
        return false;
    };
    if r.status() != 202 {
        return false;
    }
    let Ok(v) = r.json::<Value>().await else {
        return false;
    };
    assert_eq!(v["rejected"], 0, "{v}");
    true
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// A collector pod's `/metrics` text; empty when it cannot be read.
async fn metrics(ip: &str) -> String {
    let Ok(r) = http().get(format!("http://{ip}:4318/metrics")).send().await else {
        return String::new();
    };
    r.text().await.unwrap_or_default()
}

/// The sum of every series of metric `name` (any labels).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the pipeline reports `size` ring members and every collector pod (there must
/// be `size`) counts `size` members; returns the pods' IPs.
async fn wait_ring(cluster: &Cluster, client: &kube::Client, ns: &str, size: usize) -> Vec<String> {
    let pipelines: Api<TracingPipeline> = Api::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(90),
        &format!(
            "status.collectorRingSize {size} and {size} collectors each with {size} ring members"
        ),
        || cluster.describe(ns),
        || async {
            let status = pipelines.get("orders").await.ok()?.status?;
            if status.collector_ring_size != Some(i32::try_from(size).ok()?) {
                return None;
            }
            let ips = support::pod_ips(client, ns, COLLECTORS).await;
            if ips.len() != size {
                return None;
            }
            for ip in &ips {
                let members = metric(&metrics(ip).await, "datatracing_collector_ring_members");
                if members != size as f64 {
                    return None;
                }
            }
            Some(ips)
        },
    )
    .await
}

/// Per stored trace of `service`: (span ids, sampling rules stamped), both sorted and
/// comma-joined.
async fn stored(cluster: &Cluster, service: &str) -> BTreeMap<String, (String, String)> {
    let query = format!(
        "SELECT lower(hex(trace_id)), \
         arrayStringConcat(arraySort(groupUniqArray(lower(hex(span_id)))), ','), \
         arrayStringConcat(arraySort(groupUniqArray(attributes['datatracing.sampling.rule'])), ',') \
         FROM {DATABASE}.spans WHERE service = '{service}' GROUP BY trace_id"
    );
    support::clickhouse_rows(cluster, &query)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| Some((r.first()?.clone(), (r.get(1)?.clone(), r.get(2)?.clone()))))
        .collect()
}

/// Waits until no collector buffers a trace, holds spans for a peer or is writing, and the
/// spans written did not change between two looks.
async fn settled(cluster: &Cluster, ns: &str, ips: &[String]) {
    let last = Cell::new(-1.0);
    eventually(
        Duration::from_secs(90),
        "every collector idle (nothing buffered, queued for a peer or being written)",
        || cluster.describe(ns),
        || async {
            let mut busy = false;
            let mut written = 0.0;
            for ip in ips {
                let m = metrics(ip).await;
                busy |= m.is_empty()
                    || [
                        "datatracing_sampling_buffered_traces",
                        "datatracing_collector_forward_queue_spans",
                        "datatracing_collector_store_writes_in_flight",
                    ]
                    .iter()
                    .any(|name| metric(&m, name) > 0.0);
                written += metric(&m, "datatracing_collector_spans_written_total");
            }
            let same = written == last.replace(written);
            (!busy && same).then_some(())
        },
    )
    .await
}

/// A bounded load of traces kept by the policy: batches of 5 traces of [`SPANS`] spans
/// (service `e2e-load`, one error span each), each trace dealt over the collector pods,
/// one batch every 50 ms at most, until stopped (at most 2,000 batches and 5 minutes). A
/// request that is not acknowledged goes to the next pod; a pod that fails three times in a
/// row (it stopped) gets no more requests.
struct HandoffLoad {
    stop: Arc<AtomicBool>,
    batches: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Sent>,
}

impl HandoffLoad {
    fn start(ips: Vec<String>) -> HandoffLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let batches = Arc::new(AtomicU64::new(0));
        let (s, b) = (stop.clone(), batches.clone());
        let task = tokio::spawn(async move {
            let client = http();
            let mut live = ips;
            let mut failures: BTreeMap<String, u32> = BTreeMap::new();
            let mut sent = Sent::default();
            let mut requests = 0usize;
            let deadline = Instant::now() + Duration::from_secs(300);
            for batch in 0..2_000usize {
                if s.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let ids: Vec<usize> = (batch * 5..batch * 5 + 5).collect();
                let mut per: Vec<Vec<Value>> = vec![Vec::new(); live.len()];
                for &i in &ids {
                    for (k, span) in trace(2, i, "e2e-load", true).into_iter().enumerate() {
                        per[(i + k) % live.len()].push(span);
                    }
                }
                for (t, spans) in per.iter().enumerate() {
                    let mut attempt = 0;
                    loop {
                        let ip = live[(t + attempt) % live.len()].clone();
                        requests += 1;
                        if post(&client, &ip, spans, requests.is_multiple_of(2)).await {
                            failures.remove(&ip);
                            break;
                        }
                        sent.failed += 1;
                        let n = failures.entry(ip.clone()).or_default();
                        *n += 1;
                        if *n >= 3 && live.len() > 1 {
                            live.retain(|a| *a != ip);
                        }
                        attempt += 1;
                        assert!(attempt < 50, "a request was never acknowledged");
                        // A pace between attempts, not a synchronisation.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                for &i in &ids {
                    sent.acked.insert(trace_id(2, i), SPANS as u64);
                }
                b.fetch_add(1, Ordering::Relaxed);
                // A pace: the load stays modest on a two-core node.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent
        });
        HandoffLoad {
            stop,
            batches,
            task,
        }
    }

    async fn wait_batches(&self, cluster: &Cluster, ns: &str, more: u64, what: &str) {
        let from = self.batches.load(Ordering::Relaxed);
        eventually(
            Duration::from_secs(90),
            &format!("{more} more acknowledged batches {what}"),
            || cluster.describe(ns),
            || async { (self.batches.load(Ordering::Relaxed) >= from + more).then_some(()) },
        )
        .await
    }

    async fn stop(self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("hand-off load")
    }
}

#[test]
fn routed_collector_pods_decide_whole_traces_and_hand_over_when_scaled_down() {
    let cluster = Cluster::shared();
    let _shared = cluster.shared_lock();
    cluster.block_on(async {
        let started = Instant::now();
        let ns = cluster.namespace(NS).await;
        let client = cluster.client().await;
        support::clickhouse_secret(cluster, &ns);
        let overlay = support::samples_overlay_with(cluster, &ns, DATABASE, PATCHES);
        cluster.kubectl_ok(&["apply", "-k", overlay.path().to_str().unwrap()]);
        let wait = Duration::from_secs(180);
        support::wait_available(cluster, &client, &ns, "orders-collector", 3, wait).await;
        support::wait_condition(cluster, &client, &ns, "orders", "Ready", wait).await;

        // 1. The ring, from the EndpointSlices of real pods.
        let ips = wait_ring(cluster, &client, &ns, 3).await;
        let ring_at = started.elapsed();

        // 2. Every trace's spans dealt over the three pods' own addresses.
        let errors: BTreeSet<String> = (0..TRACES)
            .filter(|i| i % 5 == 2)
            .map(|i| trace_id(1, i))
            .collect();
        let mut per: Vec<Vec<Value>> = vec![Vec::new(); 3];
        // Span k of every trace, then span k+1: roots first, as a pipeline's runs start.
        for k in 0..SPANS {
            for i in 0..TRACES {
                let span = trace(1, i, "e2e-route", errors.contains(&trace_id(1, i)))
                    .swap_remove(k);
                per[(i + k) % 3].push(span);
            }
        }
        let sending = Instant::now();
        let mut tasks = Vec::new();
        for (ip, spans) in ips.iter().cloned().zip(per) {
            tasks.push(tokio::spawn(async move {
                let client = http();
                for (n, req) in spans.chunks(50).enumerate() {
                    assert!(
                        post(&client, &ip, req, n % 2 == 1).await,
                        "a request to the collector pod {ip} was not acknowledged"
                    );
                }
            }));
        }
        for t in tasks {
            t.await.expect("sender");
        }
        eventually(
            Duration::from_secs(90),
            &format!("the {} error traces stored", errors.len()),
            || cluster.describe(&ns),
            || async {
                let have = stored(cluster, "e2e-route").await;
                errors
                    .iter()
                    .all(|t| have.get(t).is_some_and(|(spans, _)| spans.split(',').count() == SPANS))
                    .then_some(())
            },
        )
        .await;
        let decided_in = sending.elapsed();
        settled(cluster, &ns, &ips).await;
        let have = stored(cluster, "e2e-route").await;
        let all_spans = (1..=SPANS)
            .map(|k| format!("{k:016x}"))
            .collect::<Vec<_>>()
            .join(",");
        let kept: BTreeSet<String> = have.keys().cloned().collect();
        assert_eq!(
            kept, errors,
            "exactly the error traces stored (stored {} of {TRACES} traces)",
            kept.len()
        );
        for (t, (spans, rules)) in &have {
            assert_eq!(spans, &all_spans, "trace {t} stored complete");
            assert_eq!(rules, ERRORS_RULE, "trace {t} decided whole by the errors rule");
        }
        let mut forwarded = 0.0;
        let mut peer_accepted = 0.0;
        let mut late = 0.0;
        for ip in &ips {
            let m = metrics(ip).await;
            let f = metric(&m, "datatracing_collector_forward_spans_total");
            assert!(f > 0.0, "the collector pod {ip} forwarded nothing:\n{m}");
            assert_eq!(
                metric(&m, "datatracing_collector_forward_fallback_spans_total"),
                0.0,
                "the collector pod {ip} kept spans its peers own"
            );
            forwarded += f;
            peer_accepted += metric(&m, "datatracing_collector_peer_spans_accepted_total");
            late += metric(&m, "datatracing_sampling_late_spans_total");
        }
        eprintln!(
            "scenario 7: ring of 3 after {:.1}s; {TRACES} traces ({} spans) dealt over 3 pods, \
             {} error traces stored whole in {:.1}s, {} others absent; {forwarded} spans \
             forwarded ({peer_accepted} accepted by owners), {late} late",
            ring_at.as_secs_f64(),
            TRACES * SPANS,
            errors.len(),
            decided_in.as_secs_f64(),
            TRACES - errors.len(),
        );

        // 3. Scale down under load: the leaving pod turns unready, hands over what it
        // buffers, forwards what still reaches it, and stops.
        let load = HandoffLoad::start(ips.clone());
        load.wait_batches(cluster, &ns, 20, "before the scale-down").await;
        let scaled = Instant::now();
        cluster.kubectl_ok(&[
            "patch",
            "tracingpipeline",
            "orders",
            "-n",
            &ns,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"collector":{"replicas":2}}}"#,
        ]);
        // What each pod handed over, read while they are there (the leaving one's metrics
        // go with it).
        let seen: std::cell::RefCell<BTreeMap<String, (u64, u64, u64)>> = Default::default();
        eventually(
            Duration::from_secs(120),
            "2 collector pods left after the scale-down",
            || cluster.describe(&ns),
            || async {
                for ip in &ips {
                    let m = metrics(ip).await;
                    if m.is_empty() {
                        continue;
                    }
                    seen.borrow_mut().insert(
                        ip.clone(),
                        (
                            metric(&m, "datatracing_collector_handoff_spans_total") as u64,
                            metric(&m, "datatracing_sampling_handed_over_decisions_total") as u64,
                            metric(&m, "datatracing_collector_forward_fallback_spans_total") as u64,
                        ),
                    );
                }
                (support::pods(&client, &ns, COLLECTORS).await.len() == 2).then_some(())
            },
        )
        .await;
        support::wait_available(cluster, &client, &ns, "orders-collector", 2, wait).await;
        let remaining = wait_ring(cluster, &client, &ns, 2).await;
        let ring_down = scaled.elapsed();
        load.wait_batches(cluster, &ns, 20, "after the scale-down").await;
        let sent = load.stop().await;
        let stored_traces = support::wait_all_stored(cluster, &ns, DATABASE, &sent).await;
        let load_traces = stored(cluster, "e2e-load").await;
        let split: Vec<&String> = load_traces
            .iter()
            .filter(|(_, (_, rules))| rules != ERRORS_RULE)
            .map(|(t, _)| t)
            .collect();
        let left: Vec<&String> = ips.iter().filter(|ip| !remaining.contains(ip)).collect();
        let seen = seen.into_inner();
        support::delete_namespace(cluster, &ns);
        eprintln!(
            "scenario 7: scaled 3 -> 2 under load: ring of 2 after {:.1}s; {} traces ({} spans) \
             acknowledged, {} requests unanswered (sent again to another pod), all stored ({stored_traces} \
             traces stored); {} decided in parts (split), e.g. {:?}; leaving pod {left:?}: \
             (handed-off spans, handed-over decisions, fallback spans) last seen {:?}; all pods: \
             {seen:?}; done in {:.1}s",
            ring_down.as_secs_f64(),
            sent.acked.len(),
            sent.acked.values().sum::<u64>(),
            sent.failed,
            split.len(),
            &split[..split.len().min(5)],
            left.iter().map(|ip| seen.get(*ip)).collect::<Vec<_>>(),
            started.elapsed().as_secs_f64()
        );
    });
}
