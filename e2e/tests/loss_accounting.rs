//! Loss accounting with the durable queue on: clients send N spans (some invalid) while the
//! server is stopped once with SIGTERM and once with SIGKILL; clients retry what was not
//! acknowledged, as OTLP clients do. At the end, spans stored + spans explicitly rejected
//! must equal N: nothing acknowledged is lost, nothing is stored twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datatracing_e2e::Server;
use serde_json::{Value, json};

const CLIENTS: u64 = 4;
const REQUESTS: u64 = 60;
const SPANS: u64 = 50; // per request, one of them invalid

type Pending = Arc<Mutex<Vec<(u64, u64)>>>;
/// Explicit rejections per request. A request whose answer was lost may be acknowledged
/// twice (at-least-once delivery); its rejections count once.
type Rejections = Arc<Mutex<HashMap<(u64, u64), usize>>>;

fn start(dir: &Path) -> Server {
    let cfg = dir.join("config.yaml");
    let yaml = format!(
        "collector:\n  durable_queue:\n    enabled: true\n    dir: {}\n",
        dir.join("wal").display()
    );
    std::fs::write(&cfg, yaml).unwrap();
    let mut c = datatracing_e2e::command("all-in-one");
    c.arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&cfg);
    Server::spawn(c, true, true)
}

fn body(client: u64, req: u64) -> (String, Value) {
    let trace = format!("{:016x}{:016x}", 0xfeed_0000 + client, req + 1);
    let spans: Vec<Value> = (0..SPANS)
        .map(|i| {
            // The last span of every request is invalid (all-zero span id): rejected explicitly.
            let id = if i == SPANS - 1 { 0 } else { i + 1 };
            json!({"trace_id": trace, "span_id": format!("{id:016x}"), "service": "loss", "operation": "o",
                   "start_time": "2026-11-28T10:00:00Z", "end_time": "2026-11-28T10:00:01Z"})
        })
        .collect();
    (trace, json!({ "spans": spans }))
}

/// Sends every request not yet acknowledged, once, from `CLIENTS` concurrent clients.
async fn send_round(
    ingest: SocketAddr,
    pending: Pending,
    rejected: Rejections,
    acked: Arc<AtomicUsize>,
) {
    let todo: Vec<(u64, u64)> = std::mem::take(&mut *pending.lock().unwrap());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for chunk in todo.chunks(todo.len().div_ceil(CLIENTS as usize).max(1)) {
        let chunk = chunk.to_vec();
        let (client, pending, rejected, acked) = (
            client.clone(),
            pending.clone(),
            rejected.clone(),
            acked.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for (c, r) in chunk {
                let (_, b) = body(c, r);
                match client
                    .post(format!("http://{ingest}/api/v1/spans"))
                    .json(&b)
                    .send()
                    .await
                {
                    Ok(resp) if resp.status() == 202 => {
                        let v: Value = resp.json().await.unwrap();
                        rejected
                            .lock()
                            .unwrap()
                            .insert((c, r), v["rejected"].as_u64().unwrap() as usize);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    // Throttled, shutting down, or no answer at all: retry later.
                    _ => pending.lock().unwrap().push((c, r)),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_plus_rejected_equals_sent_across_sigterm_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<(u64, u64)> = (0..CLIENTS)
        .flat_map(|c| (0..REQUESTS).map(move |r| (c, r)))
        .collect();
    let pending: Pending = Arc::new(Mutex::new(all.clone()));
    let rejected: Rejections = Arc::default();
    let acked = Arc::new(AtomicUsize::new(0));

    for stop in ["TERM", "KILL"] {
        let mut server = start(dir.path());
        let before = acked.load(Ordering::SeqCst);
        let round = tokio::spawn(send_round(
            server.ingest(),
            pending.clone(),
            rejected.clone(),
            acked.clone(),
        ));
        // Stop the server while the round is in flight, once some requests have landed.
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.load(Ordering::SeqCst) < before + 10 && !round.is_finished() {
            assert!(Instant::now() < deadline, "no request was acknowledged");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(
            !round.is_finished(),
            "the stop must land mid-round; send more requests"
        );
        if stop == "TERM" {
            Command::new("kill")
                .args(["-TERM", &server.pid().to_string()])
                .status()
                .unwrap();
            let (status, _server) =
                tokio::task::spawn_blocking(move || (server.child.wait().unwrap(), server))
                    .await
                    .unwrap();
            assert!(status.success(), "SIGTERM drains and exits 0");
        } else {
            server.child.kill().unwrap();
            server.child.wait().unwrap();
        }
        round.await.unwrap();
        assert!(
            !pending.lock().unwrap().is_empty(),
            "the stop interrupted some requests"
        );
    }

    // Bring it back and retry until every request is acknowledged.
    let server = start(dir.path());
    for _ in 0..20 {
        if pending.lock().unwrap().is_empty() {
            break;
        }
        send_round(
            server.ingest(),
            pending.clone(),
            rejected.clone(),
            acked.clone(),
        )
        .await;
    }
    assert!(
        pending.lock().unwrap().is_empty(),
        "requests never acknowledged"
    );
    let rejected: usize = rejected.lock().unwrap().values().sum();
    assert_eq!(rejected, all.len(), "one invalid span per request");

    // Replayed spans drain from the durable queue asynchronously: wait for the count.
    let client = reqwest::Client::new();
    let sent = (CLIENTS * REQUESTS * SPANS) as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    let stored = loop {
        let mut stored = 0;
        for (c, r) in &all {
            let (trace, _) = body(*c, *r);
            let resp = client
                .get(format!("http://{}/api/v1/traces/{trace}", server.query()))
                .send()
                .await
                .unwrap();
            if resp.status() == 200 {
                let v: Value = resp.json().await.unwrap();
                stored += v["spans"].as_array().unwrap().len();
            }
        }
        if stored + rejected >= sent || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        stored + rejected,
        sent,
        "stored {stored} + rejected {rejected} != sent {sent}"
    );
}
