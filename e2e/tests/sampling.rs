//! Tail sampling in the real binary: decisions and stamps visible through the query API,
//! the status endpoint, and live policy reload (file change and admin endpoint).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use datatracing_e2e::{Server, get_json};
use serde_json::Value;

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../fixtures/traces/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const KEEP_ERRORS: &str = "rules:\n  - name: errors\n    when: { status: [ERROR, TIMEOUT] }\n    action: { decision: keep }\ndefault: { decision: drop }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_decides_stamps_and_reloads_live() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, KEEP_ERRORS).unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "collector:\n  sampling:\n    enabled: true\n    policy_file: {}\n    reload_interval: 100ms\n    decision_wait: 200ms\n    idle_timeout: 500ms\n",
            policy.display()
        ),
    )
    .unwrap();
    let mut c = datatracing_e2e::command("all-in-one");
    c.arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&cfg);
    let server = Server::spawn(c, true, true);
    let (ingest, query) = (server.ingest(), server.query());
    let client = reqwest::Client::new();
    for name in ["error_in_step", "healthy"] {
        let r = client
            .post(format!("http://{ingest}/api/v1/spans"))
            .json(&fixture(name))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }

    // The failing trace is kept and stamped.
    let kept = "00000000000000000000000000001002";
    eventually("the kept trace", || {
        let c = client.clone();
        async move {
            c.get(format!("http://{query}/api/v1/traces/{kept}"))
                .send()
                .await
                .unwrap()
                .status()
                == 200
        }
    })
    .await;
    let dag = get_json(&client, &format!("http://{query}/api/v1/traces/{kept}")).await;
    for s in dag["spans"].as_array().unwrap() {
        assert_eq!(s["attributes"]["datatracing.sampling.rule"], "errors");
        assert_eq!(s["attributes"]["datatracing.sampling.rate"], 1);
    }
    // The healthy trace is dropped: wait for the decision, then look.
    eventually("the drop decision", || {
        let c = client.clone();
        async move {
            let m = datatracing_e2e::metrics(&c, ingest).await;
            m.contains("datatracing_sampling_decisions_total{rule=\"default\",outcome=\"drop\"} 1")
        }
    })
    .await;
    let r = client
        .get(format!(
            "http://{query}/api/v1/traces/00000000000000000000000000001001"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Status, then a live reload through the file (as a ConfigMap update arrives).
    let status = get_json(&client, &format!("http://{ingest}/admin/sampling")).await;
    let first = status["status"]["active_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(status["status"]["rules"], 1);
    std::fs::write(&policy, "rules: []\ndefault: { decision: keep }\n").unwrap();
    let status_url = format!("http://{ingest}/admin/sampling");
    eventually("the file reload", || {
        let (c, u, first) = (client.clone(), status_url.clone(), first.clone());
        async move { get_json(&c, &u).await["status"]["active_hash"].as_str() != Some(first.as_str()) }
    })
    .await;
    let second = get_json(&client, &status_url).await["status"]["active_hash"]
        .as_str()
        .unwrap()
        .to_string();

    // An invalid policy is rejected by the admin reload; the previous one stays.
    std::fs::write(&policy, "rules:\n  - name: x\n    when: {}\n    action: { decision: keep }\ndefault: { decision: keep }\n").unwrap();
    let r = client
        .post(format!("http://{ingest}/admin/sampling/reload"))
        .send()
        .await
        .unwrap();
    // The file watcher may have seen it first; either way it is rejected and reported.
    if r.status() != 200 {
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("rules[0].when"),
            "{body}"
        );
    }
    eventually("the rejection on the status endpoint", || {
        let (c, u) = (client.clone(), status_url.clone());
        async move {
            get_json(&c, &u).await["status"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("rules[0].when"))
        }
    })
    .await;
    let status = get_json(&client, &status_url).await;
    assert_eq!(
        status["status"]["active_hash"],
        second.as_str(),
        "the previous policy stays in force"
    );
    let m = datatracing_e2e::metrics(&client, ingest).await;
    assert!(
        m.contains("datatracing_sampling_policy_reloads_total{outcome=\"rejected\"} 1"),
        "{m}"
    );
}
