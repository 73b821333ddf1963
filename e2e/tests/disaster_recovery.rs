//! The embedded-store sections of `runbooks/disaster-recovery.md`, run as written against
//! the real binary: an online backup while spans keep arriving, the data directory lost,
//! the restore, and every acknowledged trace read back over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use datatracing_e2e::{Server, binary, workspace_root};
use serde_json::{Value, json};

/// The ```sh block of the runbook whose first line is `# dr: <step>`.
fn block(step: &str) -> String {
    datatracing_testkit::runbook_block(
        &workspace_root().join("runbooks/disaster-recovery.md"),
        step,
    )
}

/// Runs a runbook block with bash, the built `datatracing` first on the PATH.
fn run_block(step: &str, data_dir: &Path, backup_file: &Path) -> std::process::Output {
    let bin_dir = binary().parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &block(step)])
        .env("PATH", path)
        .env("DATA_DIR", data_dir)
        .env("BACKUP_FILE", backup_file)
        .env_remove("DATATRACING_CONFIG")
        .output()
        .unwrap()
}

fn trace_body(trace: &str, spans: usize) -> Value {
    let base = datatracing_core::Timestamp::now().saturating_add_nanos(-300_000_000_000);
    let at = |ms: i64| base.saturating_add_nanos(ms * 1_000_000).to_rfc3339();
    let spans: Vec<Value> = (0..spans)
        .map(|i| {
            let mut s = json!({
                "trace_id": trace, "span_id": format!("{:016x}", i + 1),
                "service": "dr-embedded", "operation": format!("step-{i}"), "kind": "TRANSFORM",
                "start_time": at(i as i64 * 10), "end_time": at(i as i64 * 10 + 5), "status": "OK"
            });
            if i > 0 {
                s["parent_id"] = json!(format!("{:016x}", i));
            }
            s
        })
        .collect();
    json!({ "spans": spans })
}

async fn ingest(client: &reqwest::Client, server: &Server, trace: &str) {
    let r = client
        .post(format!("http://{}/api/v1/spans", server.ingest()))
        .json(&trace_body(trace, 4))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runbook_backs_up_and_restores_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backup = dir.path().join("traces-2026-12-02.db");
    let client = reqwest::Client::new();
    let server = Server::start(&data);
    let acknowledged: Vec<String> = (1..=30u32).map(|i| format!("{i:032x}")).collect();
    for t in &acknowledged {
        ingest(&client, &server, t).await;
    }

    // Online: spans keep arriving while the backup runs.
    let during = {
        let (client, addr) = (client.clone(), server.ingest());
        tokio::spawn(async move {
            for i in 1000..1100u32 {
                let r = client
                    .post(format!("http://{addr}/api/v1/spans"))
                    .json(&trace_body(&format!("{i:032x}"), 4))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        })
    };
    let out = tokio::task::spawn_blocking({
        let (data, backup) = (data.clone(), backup.clone());
        move || run_block("back up the embedded store", &data, &backup)
    })
    .await
    .unwrap();
    during.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("wrote ") && stdout.contains(" spans"),
        "{stdout}"
    );

    // Restore refuses while the server has the directory.
    let refused = run_block("restore the embedded store", &data, &backup);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("stop it first"), "{stderr}");

    // Lose the data directory, restore by the runbook, start again.
    let mut server = server;
    nix_term(&mut server);
    std::fs::remove_dir_all(&data).unwrap();
    let out = run_block("restore the embedded store", &data, &backup);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(&data);
    for t in &acknowledged {
        let r = client
            .get(format!("http://{}/api/v1/traces/{t}", server.query()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "trace {t} after restore");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["spans"].as_array().map(Vec::len),
            Some(4),
            "trace {t}: {body}"
        );
    }
}

/// SIGTERM and a bounded wait for the exit, so the store is closed cleanly.
fn nix_term(server: &mut Server) {
    let pid = server.pid().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            assert!(s.success(), "server exit: {s}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not stop within 30s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
