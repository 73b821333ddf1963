//! What the operator renders is what the real binary runs: the sample TracingPipeline's
//! ConfigMap (configuration + merged sampling policy) starts `datatracing collector` and
//! `datatracing query` against a real ClickHouse engine, the collector reports the sampling hash the operator puts in
//! status, and picks up a new policy file without a restart. The operator Deployments in the
//! chart and in `config/manager` pass flags the binary accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use datatracing_e2e::{Server, get_json};
use datatracing_operator::crd::{SamplingPolicy, TracingPipeline};
use datatracing_operator::render::{CONFIG_DIR, CONFIG_KEY, SAMPLING_KEY, SECRET_DIR};
use datatracing_operator::{policy, render};
use datatracing_testkit::clickhouse::{ClickHouse, unique_database};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn sample<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let text = std::fs::read_to_string(root().join("config/samples").join(name)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// Polls `/readyz` until 200 (bounded), failing with the server's log.
async fn await_ready(client: &reqwest::Client, server: &Server, addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {:?}",
            server.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_runs_the_configuration_the_operator_renders() {
    let ch = tokio::task::spawn_blocking(ClickHouse::shared)
        .await
        .unwrap();
    let mut pipeline: TracingPipeline = sample("tracingpipeline.yaml");
    pipeline.metadata.namespace = Some("team-a".into());
    pipeline.metadata.uid = Some("0b9f3c1e-1111-4222-8333-944445555666".into());
    pipeline.spec.storage.url = ch.url().to_string();
    pipeline.spec.storage.database = unique_database("rendered");
    pipeline.spec.storage.user = ch.user().to_string();
    let policies: Vec<SamplingPolicy> = vec![
        sample("samplingpolicy-errors.yaml"),
        sample("samplingpolicy-baseline.yaml"),
    ];
    let policy::Merged {
        policy: merged,
        sources,
        hash: merged_hash,
    } = policy::merge(policies, &pipeline.spec.sampling.default_action).unwrap();
    let sampling = render::sampling_yaml(&merged, &sources).unwrap();
    let desired = render::desired(&pipeline, "img", Some(&sampling)).unwrap();
    let data = desired.config_map.data.unwrap();

    // Lay the ConfigMap and the Secret out as the kubelet would, under a temporary root.
    let dir = tempfile::tempdir().unwrap();
    let (config_dir, secret_dir) = (dir.path().join("config"), dir.path().join("secret"));
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&secret_dir).unwrap();
    let config = data[CONFIG_KEY]
        .replace(CONFIG_DIR, config_dir.to_str().unwrap())
        .replace(SECRET_DIR, secret_dir.to_str().unwrap());
    std::fs::write(config_dir.join(CONFIG_KEY), &config).unwrap();
    std::fs::write(config_dir.join(SAMPLING_KEY), &data[SAMPLING_KEY]).unwrap();
    std::fs::write(secret_dir.join("password"), ch.password()).unwrap();

    // The pod's command line, plus test ports.
    let container = &desired
        .collector
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0];
    let args = container.args.clone().unwrap();
    assert_eq!(args[0], "collector");
    let mut cmd = datatracing_e2e::command("collector");
    cmd.arg("--config").arg(config_dir.join(CONFIG_KEY));
    // The sample's three collectors route by trace id; the pod's IP comes from the downward
    // API. No API server here: the collector serves with every trace local.
    assert!(data[CONFIG_KEY].contains("self: ${POD_IP}:4317"));
    cmd.env("POD_IP", "127.0.0.1");
    let server = Server::spawn(cmd, true, false);
    let client = reqwest::Client::new();
    await_ready(&client, &server, server.ingest()).await;

    // The query pods run the same file.
    let query_pod = desired.query.spec.unwrap().template.spec.unwrap();
    let query_args = query_pod.containers[0].args.clone().unwrap();
    assert_eq!(query_args[0], "query");
    let mut cmd = datatracing_e2e::command("query");
    cmd.arg("--config").arg(config_dir.join(CONFIG_KEY));
    // The query pods get POD_IP too (the file names it; they do not use it).
    let query_env = query_pod.containers[0].env.clone().unwrap_or_default();
    assert!(query_env.iter().any(|e| e.name == "POD_IP"));
    cmd.env("POD_IP", "127.0.0.1");
    let query = Server::spawn(cmd, false, true);
    await_ready(&client, &query, query.query()).await;

    // The hash the operator reports in status is the collector's.
    let status_url = format!("http://{}/admin/sampling", server.ingest());
    let status = get_json(&client, &status_url).await;
    assert_eq!(status["status"]["active_hash"], merged_hash.as_str());
    assert_eq!(status["status"]["rules"], merged.rules.len());

    // A ConfigMap update (sampling only) is reloaded live.
    let mut fewer = merged.clone();
    fewer.rules.truncate(1);
    let next = fewer.compile().unwrap().hash().to_string();
    std::fs::write(
        config_dir.join(SAMPLING_KEY),
        render::sampling_yaml(&fewer, &sources).unwrap(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(&client, &status_url).await["status"]["active_hash"] != next.as_str() {
        assert!(Instant::now() < deadline, "policy not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a command that must succeed and returns its standard output.
fn stdout_of(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn operator_args(manifest: &str) -> Vec<String> {
    let v: serde_json::Value = manifest
        .split("\n---")
        .filter_map(|d| serde_saphyr::from_str::<serde_json::Value>(d).ok())
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    v["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_operator_manifests_pass_flags_the_binary_accepts() {
    let manager = std::fs::read_to_string(root().join("config/manager/manager.yaml")).unwrap();
    let chart = stdout_of(
        std::process::Command::new(datatracing_testkit::kubernetes::tool("helm"))
            .args(["template", "dt"])
            .arg(root().join("charts/datatracing-operator"))
            .args(["--kube-version", "1.34.4", "--set", "watchNamespace=team-a"]),
    );
    for args in [operator_args(&manager), operator_args(&chart)] {
        let cli = datatracing_cli::Cli::try_parse_from(
            std::iter::once("datatracing".to_string()).chain(args.clone()),
        )
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let datatracing_cli::Command::Operator(op) = cli.command else {
            panic!("not the operator: {args:?}")
        };
        let config = op.config(datatracing_config::OperatorConfig::default());
        assert!(config.validate().is_ok());
        assert!(config.leader_election.enabled);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datatracing_operator_runs_against_an_api_server_and_stops_on_sigterm() {
    use datatracing_testkit::kubernetes::{ApiServer, tool};
    let api = tokio::task::spawn_blocking(ApiServer::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path(), api.token());
    let kubectl = |args: &[&str]| {
        stdout_of(
            std::process::Command::new(tool("kubectl"))
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(args),
        )
    };

    // Without CRDs the operator refuses to start, and says why.
    let port = datatracing_testkit::free_port();
    let operator = |port: u16| {
        let mut c = std::process::Command::new(datatracing_e2e::binary());
        c.args(["operator", "--log-format", "json", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env_remove("POD_NAMESPACE");
        c
    };
    let out = operator(port).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("are the CRDs installed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    kubectl(&[
        "apply",
        "--server-side",
        "-f",
        root().join("crds").to_str().unwrap(),
    ]);
    // `kubectl wait --for=condition` fails at once ("status.conditions accessor error: <nil>")
    // instead of waiting when it reads a CRD before the API server wrote any condition, which
    // a fast machine hits: ask again until the CRDs have conditions (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::process::Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "wait",
                "--for=condition=Established",
                "crd/tracingpipelines.datatracing.io",
                "crd/samplingpolicies.datatracing.io",
                "--timeout=60s",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("status.conditions accessor error") && Instant::now() < deadline,
            "kubectl wait for the CRDs: {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Settings from the file's `operator:` section, one of them overridden by its variable.
    let config_path = dir.path().join("datatracing.yaml");
    std::fs::write(
        &config_path,
        "operator:\n  field_manager: dt-from-file\n  leader_election:\n    lease_name: lease-from-file\n    identity: replica-from-file\n    lease_duration: 21s\n    renew_interval: 4s\n",
    )
    .unwrap();
    let log_path = dir.path().join("operator.log");
    let mut child = operator(port)
        .arg("--config")
        .arg(&config_path)
        .env("DATATRACING_OPERATOR_IDENTITY", "replica-from-env")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok
            && kubectl(&["get", "lease", "-n", "default", "-o", "name"]).contains("lease-from-file")
        {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "operator exited early; log:\n{}",
            log()
        );
        assert!(
            Instant::now() < deadline,
            "operator never became ready and leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease = |path: &str| {
        kubectl(&[
            "get",
            "lease",
            "-n",
            "default",
            "lease-from-file",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
    };
    assert_eq!(lease(".spec.holderIdentity"), "replica-from-env");
    assert_eq!(lease(".spec.leaseDurationSeconds"), "21");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no exit within 30s of SIGTERM; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit:?}; log:\n{}", log());
    // A leader that stops deletes its Lease (nobody else holds it), so an uninstall leaves
    // none behind.
    assert!(
        !kubectl(&["get", "lease", "-n", "default", "-o", "name"]).contains("lease-from-file"),
        "the lease is deleted on shutdown"
    );
}
