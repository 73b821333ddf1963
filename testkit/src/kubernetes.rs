//! A real Kubernetes control plane for tests: etcd and kube-apiserver as local processes,
//! built from the Go module proxy by `tools/k8s-envtest/build.sh` (which `scripts/test.sh`
//! runs) and cached under `~/.cache/datatracing/k8s/<version>`.
//!
//! Each [`ApiServer`] gets its own data directory and ports, RBAC authorization, and a static
//! admin token (group `system:masters`). Clients connect over TLS with the API server's
//! self-signed certificate (accept it: the tests talk to 127.0.0.1 only).
// Test infrastructure: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

use crate::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kubernetes version the harness builds and runs by default.
pub const K8S_VERSION: &str = "1.34.4";
/// The admin bearer token every harness API server accepts.
pub const ADMIN_TOKEN: &str = "datatracing-test-admin";

/// A running etcd + kube-apiserver pair, stopped when dropped.
#[derive(Debug)]
pub struct ApiServer {
    url: String,
    etcd: Child,
    apiserver: Child,
    dir: tempfile::TempDir,
}

fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DATATRACING_K8S_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/datatracing/k8s").join(K8S_VERSION)
}

/// A tool built next to the API server (`kubectl`, `helm`), failing loudly with the build
/// command when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing.\nBuild it with: ./tools/k8s-envtest/build.sh   (scripts/test.sh does this; needs Go)",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl ApiServer {
    /// Starts etcd and the API server and waits (bounded) until `/readyz` answers 200.
    pub fn start() -> ApiServer {
        let bins = bin_dir();
        let (apiserver_bin, etcd_bin) = (bins.join("kube-apiserver"), bins.join("etcd"));
        assert!(
            apiserver_bin.exists() && etcd_bin.exists(),
            "the test Kubernetes API server is not built ({} is missing).\n\
             Build it with: ./tools/k8s-envtest/build.sh   (scripts/test.sh does this; needs Go)",
            apiserver_bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        run(Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(p.join("sa.key"))
            .arg("2048"));
        run(Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(p.join("sa.key"))
            .arg("-out")
            .arg(p.join("sa.pub")));
        std::fs::write(
            p.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )
        .unwrap();

        let (client, peer, secure) = (free_port(), free_port(), free_port());
        let etcd = Command::new(&etcd_bin)
            .arg("--data-dir")
            .arg(p.join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
            .arg("--unsafe-no-fsync")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p.join("etcd.log")).unwrap())
            .spawn()
            .expect("start etcd");
        let apiserver = Command::new(&apiserver_bin)
            .arg(format!("--etcd-servers=http://127.0.0.1:{client}"))
            .arg("--cert-dir")
            .arg(p.join("certs"))
            .arg(format!("--secure-port={secure}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--service-account-key-file")
            .arg(p.join("sa.pub"))
            .arg("--service-account-signing-key-file")
            .arg(p.join("sa.key"))
            .arg("--token-auth-file")
            .arg(p.join("tokens.csv"))
            .arg("--authorization-mode=RBAC")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--disable-admission-plugins=ServiceAccount")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p.join("apiserver.log")).unwrap())
            .spawn()
            .expect("start kube-apiserver");
        let server = ApiServer {
            url: format!("https://127.0.0.1:{secure}"),
            etcd,
            apiserver,
            dir,
        };
        server.wait_ready(Duration::from_secs(90));
        server
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let code = Command::new("curl")
                .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
                .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
                .arg(format!("{}/readyz", self.url))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if code == "200" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready at {}; log: {}",
                self.url,
                std::fs::read_to_string(self.log_path())
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The API server's URL (`https://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin bearer token.
    pub fn token(&self) -> &str {
        ADMIN_TOKEN
    }

    /// Writes a kubeconfig for kubectl, helm and `datatracing operator` into `dir`,
    /// authenticated with `token`, and returns its path.
    pub fn write_kubeconfig(&self, dir: &std::path::Path, token: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\nusers:\n- name: test\n  user:\n    token: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n",
                self.url, token
            ),
        )
        .unwrap();
        path
    }

    /// The API server's log file (for failure messages).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("apiserver.log")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}
