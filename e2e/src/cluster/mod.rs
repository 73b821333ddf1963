//! A real one-node Kubernetes cluster for the end-to-end scenarios (`e2e/tests/cluster`):
//! the operator installed with its Helm chart, and the pods it renders running the product
//! image, built here from the tests' own (dev-profile) build of the binary. Nothing is pulled from a registry and no
//! traffic leaves the machine: the whole cluster lives in a private network, mount and PID
//! namespace the harness creates.
//!
//! # Using it
//!
//! ```no_run
//! use datatracing_e2e::cluster::Cluster;
//!
//! #[test]
//! fn my_scenario() {
//!     let cluster = Cluster::shared(); // boots once per test binary; later calls wait for it
//!     cluster.block_on(async {
//!         let client = cluster.client().await;
//!         let ns = cluster.namespace("e2e-mine").await; // its own namespace per scenario
//!         // ... kubectl/helm (cluster.kubectl(), cluster.helm()), kube API calls, HTTP to
//!         // Service IPs: all inside the cluster's network namespace.
//!     });
//! }
//! ```
//!
//! - [`Cluster::shared`] boots the cluster the first time (a minute or two when the
//!   binaries are built) and moves the calling thread into the cluster's network namespace:
//!   sockets it opens and processes it starts (curl, Python, kubectl) reach Service and pod
//!   addresses, and nothing else. [`Cluster::block_on`] runs a future on a runtime whose
//!   threads are all inside; use it instead of `#[tokio::test]` (whose worker threads would
//!   not be).
//! - Each scenario uses its own Kubernetes namespace ([`Cluster::namespace`]), so scenarios
//!   run in parallel. A scenario that changes what others rely on (the operator's release,
//!   the node) holds [`Cluster::exclusive`]; the others hold [`Cluster::shared_lock`].
//! - [`Cluster::clickhouse`] is the test ClickHouse engine (`tools/chdb-http` over
//!   chdb-core), listening on the node: pods reach it at [`Cluster::clickhouse_url`], the
//!   test at `clickhouse().url()`.
//!
//! # Lifecycle
//!
//! Everything the harness starts is recorded by PID in the cluster directory
//! (`$TMPDIR/dte-<test pid>`); a watchdog (`teardown.sh --watch`) waits on a pipe from the
//! test process and, when that process ends for any reason (all tests done, a panic, Ctrl-C,
//! SIGTERM, SIGKILL), stops the processes in reverse order, ends the namespaces (whose end
//! kills the containers and drops every mount), removes the kubelet's cgroups and the
//! directory. A run that finds the leftovers of a run whose watchdog could not finish tears
//! them down before it starts.
//!
//! # Needs
//!
//! Root; `tools/k8s-envtest/build.sh --node` (kubelet, controller-manager, scheduler,
//! kube-proxy, pause next to the API server, etcd, kubectl and helm); Debian's `containerd`,
//! `runc`, `containernetworking-plugins` and `iptables`; the Python test virtualenv
//! (chdb-core, the OpenTelemetry SDK). `scripts/test.sh` installs all of them. A missing
//! one fails the test with the command that installs it.
// Test infrastructure: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod image;
pub mod node;

use std::cell::Cell;
use std::fs::{self, File};
use std::future::Future;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use datatracing_testkit::clickhouse::{ChdbOptions, ClickHouse};
use k8s_openapi::api::core::v1::Node as K8sNode;

pub use node::{ADMIN_TOKEN, API_PORT, API_SERVICE_IP, NODE_IP, NODE_NAME, Node, poll, run};

/// The operator's Helm release (its full name, ServiceAccount and Deployment too).
pub const OPERATOR_RELEASE: &str = "datatracing-operator";
/// The namespace the operator is installed in.
pub const OPERATOR_NAMESPACE: &str = "datatracing-system";
/// The product image's repository (the tag is the binary's content hash).
pub const IMAGE_REPOSITORY: &str = "datatracing.test/datatracing";
/// The test ClickHouse's user (the one config/samples names).
pub const CLICKHOUSE_USER: &str = "datatracing";
/// The test ClickHouse's password (what the scenarios put in their Secret).
pub const CLICKHOUSE_PASSWORD: &str = "e2e-clickhouse-password";
/// The kubelet's pod sync period, which bounds how long a ConfigMap change takes to reach a
/// mounted volume: `DATATRACING_E2E_KUBELET_SYNC` (a Go duration), else this short test
/// setting (the kubelet's own default is 1m).
pub const DEFAULT_KUBELET_SYNC: &str = "5s";

/// The running cluster. See the module documentation.
#[derive(Debug)]
pub struct Cluster {
    node: Node,
    netns: File,
    kubeconfig: PathBuf,
    image: String,
    clickhouse: ClickHouse,
    clickhouse_port: u16,
    kubelet_sync: String,
    lock: RwLock<()>,
    timings: Vec<(String, Duration)>,
}

thread_local! {
    static ENTERED: Cell<bool> = const { Cell::new(false) };
}

/// Where the Kubernetes binaries are (`DATATRACING_K8S_DIR`, else the build script's cache).
fn bins_dir() -> PathBuf {
    datatracing_testkit::kubernetes::tool("kube-apiserver")
        .parent()
        .expect("a directory")
        .to_path_buf()
}

fn check_host() -> PathBuf {
    let bins = bins_dir();
    for b in [
        "kubelet",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "pause",
        "etcd",
        "kubectl",
        "helm",
    ] {
        assert!(
            bins.join(b).exists(),
            "{} is missing.\nBuild it with: ./tools/k8s-envtest/build.sh --node   (scripts/test.sh does this; needs Go)",
            bins.join(b).display()
        );
    }
    for (tool, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("iptables", "iptables"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
        ("openssl", "openssl"),
        ("curl", "curl"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "the e2e cluster needs {tool}: apt-get update && apt-get install -y {package}   (scripts/test.sh does this)"
        );
    }
    assert!(
        Path::new("/usr/lib/cni/bridge").exists(),
        "the e2e cluster needs the CNI plugins in /usr/lib/cni: apt-get install -y containernetworking-plugins   (scripts/test.sh does this)"
    );
    let uid = run(Command::new("id").arg("-u"));
    assert_eq!(
        uid.trim(),
        "0",
        "the e2e cluster needs root (namespaces, cgroups, containers)"
    );
    bins
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").args(args).current_dir(dir));
}

/// A CA, the API server's serving certificate (for its Service address, the node address
/// and loopback) and the service-account signing key.
fn pki(dir: &Path) {
    let pki = dir.join("pki");
    fs::create_dir_all(&pki).unwrap();
    openssl(
        &pki,
        &[
            "req",
            "-x509",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-days",
            "2",
            "-subj",
            "/CN=dte-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        &pki,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
        ],
    );
    fs::write(
        pki.join("apiserver.ext"),
        format!(
            "subjectAltName=IP:{API_SERVICE_IP},IP:{NODE_IP},IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost\n\
             extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        ),
    )
    .unwrap();
    openssl(
        &pki,
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "apiserver.ext",
            "-out",
            "apiserver.crt",
        ],
    );
    openssl(&pki, &["genrsa", "-out", "sa.key", "2048"]);
    openssl(&pki, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
}

/// One kubeconfig per identity; every identity is a static token (a test node).
fn kubeconfig(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: dte\n  cluster:\n    server: https://127.0.0.1:{API_PORT}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: dte\n  context:\n    cluster: dte\n    user: {name}\ncurrent-context: dte\n",
            dir.join("pki/ca.crt").display()
        ),
    )
    .unwrap();
    path
}

fn containerd_config(dir: &Path) -> PathBuf {
    let cni = dir.join("cni");
    fs::create_dir_all(&cni).unwrap();
    fs::write(
        cni.join("10-dte.conflist"),
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "dte",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true, "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": node::POD_SUBNET}]],
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": dir.join("cni-ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ]
        })
        .to_string(),
    )
    .unwrap();
    let path = dir.join("containerd.toml");
    fs::write(
        &path,
        format!(
            r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"

[grpc]
  address = "{d}/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
            d = dir.display(),
            pause = node::PAUSE_IMAGE,
            cni = cni.display(),
        ),
    )
    .unwrap();
    path
}

fn kubelet_config(dir: &Path, cgroup_root: &str, sync: &str) -> PathBuf {
    let path = dir.join("kubelet.yaml");
    fs::write(
        &path,
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://{d}/containerd.sock
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: {d}/pod-logs
syncFrequency: {sync}
readOnlyPort: 0
serializeImagePulls: false
"#,
            d = dir.display(),
        ),
    )
    .unwrap();
    path
}

fn kube_proxy_config(dir: &Path, kubeconfig: &Path) -> PathBuf {
    let path = dir.join("kube-proxy.yaml");
    fs::write(
        &path,
        format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: {NODE_NAME}
clusterCIDR: {pods}
clientConnection:
  kubeconfig: {kc}
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
            pods = node::POD_SUBNET,
            kc = kubeconfig.display(),
        ),
    )
    .unwrap();
    path
}

/// A failure message's context: the last lines of a few logs.
fn logs(node: &Node, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("--- {n} ---\n{}", node.log_tail(n, 30)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Boot phases and how long each took (printed as they end).
struct Laps {
    list: Vec<(String, Duration)>,
    since: Instant,
}

impl Laps {
    fn push(&mut self, what: &str, d: Duration) {
        eprintln!("e2e cluster: {what}: {:.1}s", d.as_secs_f64());
        self.list.push((what.to_string(), d));
    }

    fn lap(&mut self, what: &str) {
        self.push(what, self.since.elapsed());
        self.since = Instant::now();
    }
}

impl Cluster {
    /// The cluster shared by every test in this process, booted by the first call; moves
    /// the calling thread into its network namespace. Panics (failing the test) when the
    /// cluster cannot boot; every later call fails the same way, without booting again.
    pub fn shared() -> &'static Cluster {
        static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
        let c = CLUSTER.get_or_init(|| {
            std::panic::catch_unwind(Cluster::boot).map_err(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".into())
            })
        });
        match c {
            Ok(c) => {
                c.enter();
                c
            }
            Err(e) => panic!("the e2e cluster did not boot: {e}"),
        }
    }

    /// Moves the calling thread into the cluster's network namespace (once per thread).
    /// Processes the thread starts inherit it.
    pub fn enter(&self) {
        if ENTERED.get() {
            return;
        }
        rustix::thread::move_into_link_name_space(
            self.netns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("enter the cluster's network namespace (setns)");
        ENTERED.set(true);
    }

    /// Runs `f` to completion on a runtime whose threads are inside the cluster's network
    /// namespace (a kube client, reqwest and spawned tasks then all reach the cluster).
    pub fn block_on<F: Future>(&'static self, f: F) -> F::Output {
        self.enter();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || self.enter())
            .build()
            .expect("a tokio runtime")
            .block_on(f)
    }

    fn boot() -> Cluster {
        let started = Instant::now();
        let mut laps = Laps {
            list: Vec::new(),
            since: Instant::now(),
        };
        let bins = check_host();
        let base = std::env::temp_dir();
        node::reap_leftovers(&base);

        // The binary (the tests' own build: cargo, a no-op when it is current) and its image
        // tarball, while the node boots. Not a release build: the scenarios test behaviour,
        // not speed, and a cold release build is a third compile of the workspace (about 19
        // minutes of a CI run's 2 cores); see e2e/README.md.
        let image_work = base.join(format!("dte-image-{}", std::process::id()));
        let image_thread = std::thread::spawn(move || {
            let t = Instant::now();
            let binary = crate::image_binary();
            let build = t.elapsed();
            let t = Instant::now();
            let (reference, tarball) = write_product_image(binary, &image_work, "");
            (reference, tarball, build, t.elapsed())
        });

        let node = Node::create(&base, &bins);
        let netns = File::open(node.netns_path()).expect("open the network namespace");
        ENTERED.set(false);
        rustix::thread::move_into_link_name_space(
            netns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("enter the cluster's network namespace (setns)");
        ENTERED.set(true);
        let dir = node.dir.clone();
        pki(&dir);
        let tokens = [
            (ADMIN_TOKEN, "admin", "system:masters"),
            ("dte-kubelet", "system:node:dte-node", "system:nodes"),
            // With one identity for all its controllers (no per-controller service
            // accounts), the controller-manager needs more than its own ClusterRole grants.
            (
                "dte-controller-manager",
                "system:kube-controller-manager",
                "system:masters",
            ),
            ("dte-scheduler", "system:kube-scheduler", ""),
            ("dte-proxy", "system:kube-proxy", ""),
        ];
        fs::write(
            dir.join("tokens.csv"),
            tokens
                .iter()
                .map(|(t, u, g)| format!("{t},{u},{u},\"{g}\"\n"))
                .collect::<String>(),
        )
        .unwrap();
        let admin = kubeconfig(&dir, "admin", ADMIN_TOKEN);
        let kcm = kubeconfig(&dir, "controller-manager", "dte-controller-manager");
        let scheduler = kubeconfig(&dir, "scheduler", "dte-scheduler");
        let kubelet = kubeconfig(&dir, "kubelet", "dte-kubelet");
        let proxy = kubeconfig(&dir, "kube-proxy", "dte-proxy");
        let d = |p: &str| dir.join(p).display().to_string();

        node.spawn(
            "containerd",
            Path::new("/usr/bin/containerd"),
            &[
                "--config".into(),
                containerd_config(&dir).display().to_string(),
            ],
        );
        node.spawn(
            "etcd",
            &bins.join("etcd"),
            &[
                format!("--data-dir={}", d("etcd")),
                "--listen-client-urls=http://127.0.0.1:2379".into(),
                "--advertise-client-urls=http://127.0.0.1:2379".into(),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--unsafe-no-fsync".into(),
            ],
        );
        node.spawn(
            "kube-apiserver",
            &bins.join("kube-apiserver"),
            &[
                "--etcd-servers=http://127.0.0.1:2379".into(),
                format!("--advertise-address={NODE_IP}"),
                "--bind-address=0.0.0.0".into(),
                format!("--secure-port={API_PORT}"),
                format!("--tls-cert-file={}", d("pki/apiserver.crt")),
                format!("--tls-private-key-file={}", d("pki/apiserver.key")),
                format!("--token-auth-file={}", d("tokens.csv")),
                "--authorization-mode=Node,RBAC".into(),
                format!("--service-cluster-ip-range={}", node::SERVICE_RANGE),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", d("pki/sa.pub")),
                format!("--service-account-signing-key-file={}", d("pki/sa.key")),
                "--kubelet-preferred-address-types=InternalIP".into(),
                "--allow-privileged=true".into(),
            ],
        );
        poll(Duration::from_secs(120), "kube-apiserver /readyz", || {
            // Not `run`: curl fails while nothing listens yet.
            let code = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(dir.join("pki/ca.crt"))
                .arg("-H")
                .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
                .arg(format!("https://127.0.0.1:{API_PORT}/readyz"))
                .args(["--max-time", "2"])
                .stdin(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            if code == "200" {
                return Some(());
            }
            assert!(
                node.running("kube-apiserver") && node.running("etcd"),
                "the control plane stopped:\n{}",
                logs(&node, &["etcd", "kube-apiserver"])
            );
            None
        });
        laps.lap("control plane (etcd, kube-apiserver) ready");

        node.spawn(
            "kube-controller-manager",
            &bins.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", kcm.display()),
                format!("--service-account-private-key-file={}", d("pki/sa.key")),
                format!("--root-ca-file={}", d("pki/ca.crt")),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=false".into(),
                "--bind-address=127.0.0.1".into(),
            ],
        );
        node.spawn(
            "kube-scheduler",
            &bins.join("kube-scheduler"),
            &[
                format!("--kubeconfig={}", scheduler.display()),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
            ],
        );
        let kubelet_sync = std::env::var("DATATRACING_E2E_KUBELET_SYNC")
            .unwrap_or_else(|_| DEFAULT_KUBELET_SYNC.to_string());
        let kubelet_yaml = kubelet_config(&dir, &node.cgroup_root, &kubelet_sync);
        node.spawn(
            "kubelet",
            &bins.join("kubelet"),
            &[
                format!("--config={}", kubelet_yaml.display()),
                format!("--kubeconfig={}", kubelet.display()),
                format!("--root-dir={}", d("kubelet")),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
            ],
        );
        node.spawn(
            "kube-proxy",
            &bins.join("kube-proxy"),
            &[format!(
                "--config={}",
                kube_proxy_config(&dir, &proxy).display()
            )],
        );

        // The pod sandbox image, then the node's readiness.
        let pause_tar = dir.join("pause.tar");
        image::write_image(
            &image::ImageSpec {
                reference: node::PAUSE_IMAGE.into(),
                files: vec![(bins.join("pause"), "/pause".into())],
                entrypoint: vec!["/pause".into()],
                user: "65535:65535".into(),
                strip: Vec::new(),
            },
            &dir.join("pause-image"),
            &pause_tar,
        );
        import_image(&node, &pause_tar);
        let kubectl_admin = |args: &[&str]| {
            Command::new(bins.join("kubectl"))
                .arg("--kubeconfig")
                .arg(&admin)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        // Ready, and schedulable: the controller-manager lifts the not-ready taint a moment
        // after the kubelet reports Ready.
        poll(
            Duration::from_secs(120),
            "the node to be Ready and untainted",
            || {
                let status = kubectl_admin(&[
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints}",
                ]);
                if status.trim() == "True" {
                    return Some(());
                }
                for p in ["containerd", "kubelet", "kube-proxy"] {
                    assert!(
                        node.running(p),
                        "{p} stopped:\n{}",
                        logs(&node, &["containerd", "kubelet"])
                    );
                }
                None
            },
        );
        laps.lap("node Ready (kubelet, containerd, kube-proxy)");

        // The test ClickHouse on the node's addresses: started from this thread, so inside
        // the network namespace; it exits with this process (it watches its parent).
        let clickhouse = ClickHouse::start_chdb(ChdbOptions {
            host: Some("0.0.0.0".into()),
            path: Some(dir.join("clickhouse")),
            user: Some(CLICKHOUSE_USER.into()),
            password: Some(CLICKHOUSE_PASSWORD.into()),
            ..ChdbOptions::default()
        });
        let clickhouse_port: u16 = clickhouse
            .url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the ClickHouse port");
        laps.lap("ClickHouse engine (chdb) up");

        let (image, tarball, build, write) = image_thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        laps.push("binary build (cargo, beside the boot)", build);
        laps.push("product image tarball written", write);
        laps.lap("waited for the binary and image");
        import_image(&node, &tarball);
        let _ = fs::remove_file(&tarball);
        laps.lap("product image imported (ctr)");

        let cluster = Cluster {
            node,
            netns,
            kubeconfig: admin,
            image,
            clickhouse,
            clickhouse_port,
            kubelet_sync,
            lock: RwLock::new(()),
            timings: Vec::new(),
        };
        cluster.install_operator();
        laps.lap("operator installed with Helm (2 replicas Available)");
        laps.push("cluster boot, total", started.elapsed());
        Cluster {
            timings: laps.list,
            ..cluster
        }
    }

    /// `helm install` of charts/datatracing-operator with the local image, as a user does
    /// (two replicas with leader election, its ServiceAccount and RBAC), waiting until the
    /// Deployment is Available.
    pub fn install_operator(&self) {
        let (repository, tag) = self.image.rsplit_once(':').expect("a tagged image");
        let chart = crate::workspace_root().join("charts/datatracing-operator");
        let out = self
            .helm()
            .args(["upgrade", "--install", OPERATOR_RELEASE])
            .arg(&chart)
            .args([
                "--namespace",
                OPERATOR_NAMESPACE,
                "--create-namespace",
                "--set",
                &format!("image.repository={repository}"),
                "--set",
                &format!("image.tag={tag}"),
                "--set",
                "image.pullPolicy=Never",
                "--set",
                "replicaCount=2",
                "--set",
                "leaderElection.enabled=true",
                "--wait",
                "--timeout",
                "3m",
            ])
            .output()
            .expect("run helm");
        assert!(
            out.status.success(),
            "helm install failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.describe(OPERATOR_NAMESPACE)
        );
    }

    /// kubectl with the admin's kubeconfig (started from a thread inside the network
    /// namespace: this one is moved in).
    pub fn kubectl(&self) -> Command {
        self.enter();
        let mut c = Command::new(self.node.bins.join("kubectl"));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c.stdin(Stdio::null());
        c
    }

    /// helm with the admin's kubeconfig, its caches in the cluster directory.
    pub fn helm(&self) -> Command {
        self.enter();
        let mut c = Command::new(self.node.bins.join("helm"));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        let home = self.node.dir.join("helm");
        c.env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        c.stdin(Stdio::null());
        c
    }

    /// `kubectl` with `args`, its stdout; panics with stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        run(self.kubectl().args(args))
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> String {
        use std::io::Write;
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kube client as the admin. Call it inside [`Cluster::block_on`].
    pub async fn client(&self) -> kube::Client {
        self.enter();
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kube config");
        kube::Client::try_from(config).expect("kube client")
    }

    /// Creates namespace `name` for one scenario (deleting a leftover of an earlier test in
    /// this cluster first) and grants the operator read access to its Secrets, as a user
    /// does (a RoleBinding to the chart's `<release>-secret-reader` ClusterRole,
    /// runbooks/operator.md "Secret access"). Returns the name.
    pub async fn namespace(&self, name: &str) -> String {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {OPERATOR_RELEASE}-secret-reader\n  namespace: {name}\n\
             roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {OPERATOR_RELEASE}-secret-reader\n\
             subjects:\n- kind: ServiceAccount\n  name: {OPERATOR_RELEASE}\n  namespace: {OPERATOR_NAMESPACE}\n"
        ));
        name.to_string()
    }

    /// What is in namespace `ns` (pods, workloads, services, events) and the operator's
    /// and kubelet's last log lines: for failure messages.
    pub fn describe(&self, ns: &str) -> String {
        let get = |args: &[&str]| {
            self.kubectl()
                .args(args)
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default()
        };
        format!(
            "=== kubectl get all,cm,events -n {ns}\n{}\n=== pods\n{}\n=== operator log\n{}\n=== kubelet log\n{}",
            get(&["get", "all,cm,events", "-n", ns, "-o", "wide"]),
            get(&["describe", "pods", "-n", ns]),
            get(&[
                "logs",
                "-n",
                OPERATOR_NAMESPACE,
                "-l",
                "app.kubernetes.io/name=datatracing-operator",
                "--tail=30",
                "--prefix"
            ]),
            self.node.log_tail("kubelet", 20),
        )
    }

    /// The product image (`repository:tag`) the operator and its pods run.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// Builds the binary again and imports it as a new image whose tag ends in
    /// `suffix` (an upgrade's "new version"); returns the reference.
    pub fn build_image(&self, suffix: &str) -> String {
        let binary = crate::image_binary();
        let work = self.node.dir.join(format!("image-{suffix}"));
        let (reference, tarball) = write_product_image(binary, &work, suffix);
        import_image(&self.node, &tarball);
        let _ = fs::remove_file(&tarball);
        reference
    }

    /// Kills a running container's process with SIGKILL, as a crash or the kernel's OOM
    /// killer would (`container_id` as a pod's status names it, `containerd://<id>`). The
    /// kubelet restarts it in the same pod, with the pod's volumes.
    pub fn kill_container(&self, container_id: &str) {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        run(self
            .node
            .inside(Path::new("/usr/bin/ctr"))
            .arg("--address")
            .arg(self.node.dir.join("containerd.sock"))
            .args(["-n", "k8s.io", "tasks", "kill", "--signal", "SIGKILL", id])
            .stdin(Stdio::null()));
    }

    /// The test ClickHouse (its `url()` works from inside the network namespace).
    pub fn clickhouse(&self) -> &ClickHouse {
        &self.clickhouse
    }

    /// The ClickHouse URL pods use (the node's address).
    pub fn clickhouse_url(&self) -> String {
        format!("http://{NODE_IP}:{}", self.clickhouse_port)
    }

    /// The kubelet's sync period this cluster runs with (a Go duration).
    pub fn kubelet_sync(&self) -> &str {
        &self.kubelet_sync
    }

    /// [`Cluster::kubelet_sync`] as a duration (seconds, minutes or hours; a minute if it
    /// cannot be read).
    pub fn kubelet_sync_period(&self) -> Duration {
        let s = self.kubelet_sync.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let n: u64 = s[..split].parse().unwrap_or(60);
        match &s[split..] {
            "s" => Duration::from_secs(n),
            "h" => Duration::from_secs(n * 3600),
            _ => Duration::from_secs(n * 60),
        }
    }

    /// The node's processes (logs, PIDs).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// How long each boot phase took.
    pub fn timings(&self) -> &[(String, Duration)] {
        &self.timings
    }

    /// Held by scenarios that only touch their own namespace.
    pub fn shared_lock(&self) -> RwLockReadGuard<'_, ()> {
        self.lock.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Held by scenarios that change what every scenario relies on (the operator's
    /// release, the node): they run alone.
    pub fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.lock.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The ready node object (for capacity checks).
    pub async fn node_object(&self) -> K8sNode {
        let api: kube::Api<K8sNode> = kube::Api::all(self.client().await);
        api.get(NODE_NAME).await.expect("get the node")
    }
}

/// The product image tarball for `binary`: tagged with the binary's content hash (and
/// `suffix`), written next to `work`. Returns (reference, tarball path).
fn write_product_image(binary: &Path, work: &Path, suffix: &str) -> (String, PathBuf) {
    use sha2::{Digest, Sha256};
    let bytes = fs::read(binary).expect("read the binary");
    let hash = hex::encode(&Sha256::digest(&bytes)[..6]);
    let tag = if suffix.is_empty() {
        format!("e2e-{hash}")
    } else {
        format!("e2e-{hash}-{suffix}")
    };
    let reference = format!("{IMAGE_REPOSITORY}:{tag}");
    let tarball = work.with_extension("tar");
    image::write_image(&image::product_image(binary, &reference), work, &tarball);
    (reference, tarball)
}

/// `ctr images import` into the CRI's namespace (`k8s.io`).
fn import_image(node: &Node, tarball: &Path) {
    let out = node
        .inside(Path::new("/usr/bin/ctr"))
        .arg("--address")
        .arg(node.dir.join("containerd.sock"))
        .args(["-n", "k8s.io", "images", "import"])
        .arg(tarball)
        .stdin(Stdio::null())
        .output()
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr images import {} failed: {}{}\n{}",
        tarball.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log_tail("containerd", 20)
    );
}
