//! Shared set-up for the operator's tests: a real API server with the CRDs installed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datatracing_operator::crd;
pub use datatracing_testkit::free_port;
use datatracing_testkit::kubernetes::ApiServer;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

/// A running API server and an admin client.
pub struct Cluster {
    pub server: ApiServer,
    pub admin: kube::Client,
}

pub fn client_with_token(server: &ApiServer, token: &str) -> kube::Client {
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.accept_invalid_certs = true;
    config.auth_info.token = Some(token.to_string().into());
    kube::Client::try_from(config).unwrap()
}

impl Cluster {
    /// Starts an API server and installs the CRDs (server-side apply, as a user would).
    pub async fn start() -> Cluster {
        let server = tokio::task::spawn_blocking(ApiServer::start).await.unwrap();
        let admin = client_with_token(&server, server.token());
        let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
        for c in crd::crds() {
            let name = c.metadata.name.clone().unwrap();
            crds.patch(
                &name,
                &PatchParams::apply("datatracing-tests").force(),
                &Patch::Apply(&c),
            )
            .await
            .unwrap_or_else(|e| panic!("CRD {name} rejected: {e}"));
        }
        for c in crd::crds() {
            let name = c.metadata.name.clone().unwrap();
            let crds = crds.clone();
            wait_for(
                &format!("CRD {name} Established"),
                Duration::from_secs(30),
                || {
                    let (crds, name) = (crds.clone(), name.clone());
                    async move {
                        let got = crds.get(&name).await.ok()?;
                        got.status?
                            .conditions?
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                            .then_some(())
                    }
                },
            )
            .await;
        }
        Cluster { server, admin }
    }

    /// Creates a namespace.
    pub async fn namespace(&self, name: &str) {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}
        }))
        .unwrap();
        Api::<Namespace>::all(self.admin.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }

    /// A kubeconfig for kubectl and helm, authenticated with `token`.
    pub fn kubeconfig(&self, dir: &Path, token: &str) -> PathBuf {
        self.server.write_kubeconfig(dir, token)
    }
}

/// Polls `check` until it returns `Some`, failing with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a command, failing with its output.
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `helm template` of the operator chart (release `dt`) with extra `--set` values.
pub fn helm_template(namespace: &str, sets: &[&str]) -> String {
    let mut cmd = std::process::Command::new(datatracing_testkit::kubernetes::tool("helm"));
    cmd.args(["template", "dt"])
        .arg(repo_root().join("charts/datatracing-operator"))
        .args(["--namespace", namespace, "--kube-version", "1.34.4"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    run(&mut cmd)
}

impl Cluster {
    /// `kubectl` with an admin kubeconfig in `dir`.
    pub fn kubectl(&self, dir: &Path) -> std::process::Command {
        let mut cmd = std::process::Command::new(datatracing_testkit::kubernetes::tool("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig(dir, self.server.token()));
        cmd
    }

    /// Installs the chart's ServiceAccount and RBAC (nothing else) in `namespace` as the
    /// admin, and returns a token for that ServiceAccount: the operator then runs with
    /// exactly the permissions the chart grants.
    pub async fn operator_token(&self, namespace: &str, sets: &[&str]) -> String {
        let rendered = helm_template(namespace, sets);
        let rbac: Vec<&str> = rendered
            .split("\n---")
            .filter(|doc| {
                [
                    "ServiceAccount",
                    "ClusterRole",
                    "ClusterRoleBinding",
                    "Role",
                    "RoleBinding",
                ]
                .iter()
                .any(|k| doc.contains(&format!("\nkind: {k}\n")))
            })
            .collect();
        assert!(rbac.len() >= 4, "chart renders SA and RBAC: {rendered}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rbac.yaml");
        std::fs::write(&file, rbac.join("\n---\n")).unwrap();
        run(self
            .kubectl(dir.path())
            .args(["apply", "--server-side", "-f"])
            .arg(&file));
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.admin.clone(), namespace);
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}
        });
        let tr: k8s_openapi::api::authentication::v1::TokenRequest = sas
            .create_subresource(
                "token",
                "dt-datatracing-operator",
                &PostParams::default(),
                &request,
            )
            .await
            .unwrap();
        tr.status.unwrap().token
    }
}

/// One operator replica running in this process.
pub struct Operator {
    pub shutdown: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<datatracing_operator::Result<()>>,
    pub ops: std::net::SocketAddr,
    pub identity: String,
}

impl Operator {
    /// Starts `run` as `identity` with `token`'s permissions, electing a leader on the
    /// Lease in `lease_namespace` with short timings.
    pub fn start(
        cluster: &Cluster,
        token: &str,
        identity: &str,
        lease_namespace: &str,
    ) -> Operator {
        Self::start_scoped(cluster, token, identity, lease_namespace, None)
    }

    /// Like [`Operator::start`], watching only `namespace` when given.
    pub fn start_scoped(
        cluster: &Cluster,
        token: &str,
        identity: &str,
        lease_namespace: &str,
        namespace: Option<&str>,
    ) -> Operator {
        Self::start_with(cluster, token, identity, lease_namespace, |c| {
            c.namespace = namespace.map(str::to_string);
        })
    }

    /// Like [`Operator::start`], with the test's settings changed by `tweak` last.
    pub fn start_with(
        cluster: &Cluster,
        token: &str,
        identity: &str,
        lease_namespace: &str,
        tweak: impl FnOnce(&mut datatracing_operator::OperatorConfig),
    ) -> Operator {
        let mut config = datatracing_operator::OperatorConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], free_port())),
            image: "ghcr.io/datatracing/datatracing:test".into(),
            ..Default::default()
        };
        config.leader_election.lease_namespace = Some(lease_namespace.into());
        config.leader_election.identity = Some(identity.into());
        config.leader_election.lease_duration = datatracing_core::ConfigDuration::from_secs(3);
        config.leader_election.renew_interval = datatracing_core::ConfigDuration::from_millis(500);
        config.retry_backoff = datatracing_core::ConfigDuration::from_millis(500);
        config.max_retry_backoff = datatracing_core::ConfigDuration::from_secs(2);
        config.clickhouse_timeout = datatracing_core::ConfigDuration::from_secs(5);
        tweak(&mut config);
        let client = client_with_token(&cluster.server, token);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let ops = config.listen;
        let task = tokio::spawn(datatracing_operator::run(config, client, shutdown.clone()));
        Operator {
            shutdown,
            task,
            ops,
            identity: identity.into(),
        }
    }

    /// The status code of the operator's `/readyz`.
    pub async fn readyz(&self) -> u16 {
        reqwest::get(format!("http://{}/readyz", self.ops))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The operator's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops it (graceful) and returns what `run` returned.
    pub async fn stop(self) -> datatracing_operator::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("operator stops within 30s")
            .unwrap()
    }
}

/// Forwards TCP connections from `listen` to `target` (a ClickHouse that "comes back").
pub async fn forward(listen: u16, target: String) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// Runs `sql` on a ClickHouse server over HTTP and returns the text result.
pub async fn clickhouse_query(url: &str, user: &str, password: &str, sql: &str) -> String {
    let resp = reqwest::Client::new()
        .post(url)
        .header("X-ClickHouse-User", user)
        .header("X-ClickHouse-Key", password)
        .body(sql.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{sql}: {status} {text}");
    text
}

/// Server-side apply of `body` (named by its metadata) as the field manager `tests`, forced.
pub async fn apply<K>(api: &Api<K>, body: serde_json::Value)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let name = body["metadata"]["name"]
        .as_str()
        .expect("the body has metadata.name")
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply("tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}
