//! Shared set-up for the operator's tests: a real API server with the CRDs installed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datatracing_operator::crd;
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
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\nusers:\n- name: test\n  user:\n    token: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n",
                self.server.url(),
                token
            ),
        )
        .unwrap();
        path
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
