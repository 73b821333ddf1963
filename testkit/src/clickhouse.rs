//! A real ClickHouse engine for tests, found or started in this order:
//!
//! 1. `DATATRACING_TEST_CLICKHOUSE_URL`: a server someone else runs (used as is).
//! 2. A Docker engine answers `docker info`: a `clickhouse/clickhouse-server` container.
//! 3. Otherwise: `tools/chdb-http/server.py`, ClickHouse's HTTP interface in front of the real
//!    ClickHouse engine from the `chdb-core` package, in a Python virtualenv that
//!    `scripts/test.sh` installs (`DATATRACING_PYTHON` overrides the interpreter).
//!
//! Each test should use its own database ([`unique_database`]) so tests run in parallel.
// Test infrastructure: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Environment variable naming an existing server to use.
pub const URL_ENV: &str = "DATATRACING_TEST_CLICKHOUSE_URL";
/// Image used when a Docker engine is available.
pub const DOCKER_IMAGE: &str = "clickhouse/clickhouse-server:25.8";

enum Kind {
    External,
    Docker {
        container: String,
    },
    Chdb {
        python: PathBuf,
        host: Option<String>,
        path: PathBuf,
        backups_path: Option<PathBuf>,
        cluster: Option<String>,
        cluster_shards: u32,
        tls: Option<crate::tls::Pair>,
        _dir: Option<tempfile::TempDir>,
    },
}

/// A running ClickHouse HTTP endpoint.
pub struct ClickHouse {
    url: String,
    port: u16,
    user: String,
    password: String,
    kind: Kind,
    child: Mutex<Option<Child>>,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A database name unique to this process and call.
pub fn unique_database(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The workspace root, from the `CARGO_MANIFEST_DIR` cargo sets for the running test (not
/// the compile-time one: a target directory shared by several checkouts keeps this crate
/// built with the path of the checkout that built it first).
fn repo_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .map_or_else(|| start.join(".."), Path::to_path_buf)
}

fn docker_available() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Options for a dedicated chdb-backed server.
#[derive(Debug, Clone, Default)]
pub struct ChdbOptions {
    /// Data directory; a temporary one when `None`.
    pub path: Option<PathBuf>,
    /// Address to listen on (default `127.0.0.1`; the URL always names `127.0.0.1`).
    pub host: Option<String>,
    /// Port; any free port when 0.
    pub port: u16,
    /// User (default `default`).
    pub user: Option<String>,
    /// Password (default empty).
    pub password: Option<String>,
    /// A directory `BACKUP ... TO File(...)` / `RESTORE ... FROM File(...)` may use.
    pub backups_path: Option<PathBuf>,
    /// Define this cluster (one shard, this engine) and rewrite its `ON CLUSTER` and
    /// `Replicated*` DDL to what one node runs (`tools/chdb-http/server.py --cluster`).
    pub cluster: Option<String>,
    /// With `cluster`: list the engine as this many shards of it (`--shards`; 0 or 1: one).
    /// Reads through a `Distributed` table then see each row this many times, and the
    /// engine applies the checks of a query fanning out to several shards.
    pub cluster_shards: u32,
    /// Serve HTTPS with this certificate and key (the URL is then `https://127.0.0.1:port`).
    pub tls: Option<crate::tls::Pair>,
}

impl ClickHouse {
    /// The server shared by every test in this process.
    pub fn shared() -> &'static ClickHouse {
        static SHARED: OnceLock<ClickHouse> = OnceLock::new();
        SHARED.get_or_init(|| {
            if let Ok(url) = std::env::var(URL_ENV) {
                return ClickHouse {
                    port: 0,
                    url,
                    user: std::env::var("DATATRACING_TEST_CLICKHOUSE_USER")
                        .unwrap_or_else(|_| "default".into()),
                    password: std::env::var("DATATRACING_TEST_CLICKHOUSE_PASSWORD")
                        .unwrap_or_default(),
                    kind: Kind::External,
                    child: Mutex::new(None),
                };
            }
            if docker_available() {
                return Self::start_docker();
            }
            Self::start_chdb(ChdbOptions::default())
        })
    }

    fn start_docker() -> ClickHouse {
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--rm",
                "-p",
                "127.0.0.1::8123",
                "--label",
                "datatracing-test=1",
            ])
            .args(["-e", "CLICKHOUSE_SKIP_USER_SETUP=1", DOCKER_IMAGE])
            .output()
            .expect("docker run");
        assert!(
            out.status.success(),
            "docker run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let container = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let port_out = Command::new("docker")
            .args(["port", &container, "8123/tcp"])
            .output()
            .expect("docker port");
        let mapping = String::from_utf8_lossy(&port_out.stdout);
        let port: u16 = mapping
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok())
            .expect("container port");
        let ch = ClickHouse {
            url: format!("http://127.0.0.1:{port}"),
            port,
            user: "default".into(),
            password: String::new(),
            kind: Kind::Docker { container },
            child: Mutex::new(None),
        };
        ch.wait_ready(Duration::from_secs(120));
        ch
    }

    /// Starts a dedicated chdb-backed server (for tests that stop, restart or slow it).
    pub fn start_chdb(opts: ChdbOptions) -> ClickHouse {
        // (Or set DATATRACING_TEST_CLICKHOUSE_URL to use a ClickHouse server instead.)
        let python = crate::python::python(&["chdb", "lz4"]);
        let (dir, path) = match opts.path {
            Some(p) => (None, p),
            None => {
                let d = tempfile::tempdir().expect("tempdir");
                let p = d.path().to_path_buf();
                (Some(d), p)
            }
        };
        let mut ch = ClickHouse {
            url: String::new(),
            port: opts.port,
            user: opts.user.unwrap_or_else(|| "default".into()),
            password: opts.password.unwrap_or_default(),
            kind: Kind::Chdb {
                python,
                host: opts.host,
                path,
                backups_path: opts.backups_path,
                cluster: opts.cluster,
                cluster_shards: opts.cluster_shards,
                tls: opts.tls,
                _dir: dir,
            },
            child: Mutex::new(None),
        };
        let port = ch.spawn_chdb();
        ch.port = port;
        let scheme = match &ch.kind {
            Kind::Chdb { tls: Some(_), .. } => "https",
            _ => "http",
        };
        ch.url = format!("{scheme}://127.0.0.1:{port}");
        ch
    }

    fn spawn_chdb(&self) -> u16 {
        let Kind::Chdb {
            python,
            host,
            path,
            backups_path,
            cluster,
            cluster_shards,
            tls,
            ..
        } = &self.kind
        else {
            panic!("only a chdb-backed server can be (re)started by the harness");
        };
        let script = repo_root().join("tools/chdb-http/server.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg("--path")
            .arg(path)
            .args([
                "--port",
                &self.port.to_string(),
                "--user",
                &self.user,
                "--password",
                &self.password,
            ])
            .args(
                host.iter()
                    .flat_map(|h| [std::ffi::OsStr::new("--host"), std::ffi::OsStr::new(h)]),
            )
            .args(
                backups_path
                    .iter()
                    .flat_map(|p| [std::ffi::OsStr::new("--backups-path"), p.as_os_str()]),
            )
            .args(
                cluster
                    .iter()
                    .flat_map(|c| [std::ffi::OsStr::new("--cluster"), std::ffi::OsStr::new(c)]),
            )
            .args(
                (*cluster_shards > 1)
                    .then(|| ["--shards".to_string(), cluster_shards.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(tls.iter().flat_map(|t| {
                [
                    std::ffi::OsStr::new("--tls-cert"),
                    t.cert.as_os_str(),
                    std::ffi::OsStr::new("--tls-key"),
                    t.key.as_os_str(),
                ]
            }))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tools/chdb-http/server.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("chdb HTTP front did not start within 120s");
        let port: u16 = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the front: {line}"));
        *self.child.lock().unwrap() = Some(child);
        port
    }

    /// The HTTP URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The user tests should connect as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password tests should use.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Whether the harness can stop, restart and slow this server (chdb-backed only).
    pub fn is_controllable(&self) -> bool {
        matches!(self.kind, Kind::Chdb { .. })
    }

    /// Kills the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The old socket may linger briefly; the front sets SO_REUSEADDR, so retry.
            let port = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.spawn_chdb()));
            match port {
                Ok(p) => {
                    assert_eq!(p, self.port, "restarted on another port");
                    return;
                }
                Err(e) if Instant::now() > deadline => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Delays every later query by `ms` (fault injection; chdb-backed only).
    pub fn set_delay(&self, ms: u64) {
        assert!(
            self.is_controllable(),
            "delay injection needs the chdb-backed server"
        );
        let addr = format!("127.0.0.1:{}", self.port);
        let mut s = std::net::TcpStream::connect(&addr).expect("connect for admin call");
        use std::io::{Read, Write};
        write!(s, "POST /__admin/delay?ms={ms} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .expect("admin write");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "admin call failed: {resp}"
        );
    }

    /// The statements a `--cluster` front rewrote so far, as its JSON list of
    /// `{"original": ..., "rewritten": ...}` (chdb-backed only).
    pub fn cluster_rewrites(&self) -> String {
        self.admin_get("/__admin/cluster-rewrites")
    }

    fn admin_get(&self, path: &str) -> String {
        assert!(
            self.is_controllable(),
            "admin calls need the chdb-backed server"
        );
        let addr = format!("127.0.0.1:{}", self.port);
        let mut s = std::net::TcpStream::connect(&addr).expect("connect for admin call");
        use std::io::{Read, Write};
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("admin write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("admin read");
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "admin call failed: {resp}"
        );
        resp.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default()
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let addr = self.url.trim_start_matches("http://").to_string();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                use std::io::{Read, Write};
                let _ = write!(
                    s,
                    "GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                );
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp);
                if resp.contains("Ok.") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "ClickHouse at {} not ready",
                self.url
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill();
        if let Kind::Docker { container } = &self.kind {
            let _ = Command::new("docker")
                .args(["rm", "-f", container])
                .output();
        }
    }
}
