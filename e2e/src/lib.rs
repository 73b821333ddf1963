//! End-to-end test harness: the real `datatracing` binary as a child process, and small HTTP
//! helpers. The tests themselves live in `e2e/tests`; this crate is test-only and never
//! published.
//!
//! Integration tests in another crate do not get `CARGO_BIN_EXE_datatracing`, so
//! [`binary`] asks cargo to build the binary (once per test process) into the same target
//! directory and profile as the running test, and takes the path cargo reports. When the
//! binary is up to date that is a no-op of about a second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace root (for fixtures, samples, charts, and the sources the binary is built
/// from), found at run time from the `CARGO_MANIFEST_DIR` cargo sets for the running test.
///
/// Not the compile-time `env!("CARGO_MANIFEST_DIR")`: a target directory shared by several
/// checkouts (CI's cached one under the home directory, worktrees) keeps this library
/// built once, with the path of whichever checkout built it first, so tests would read
/// that checkout's files and build that checkout's binary.
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let start = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        start
            .ancestors()
            .find(|d| d.join("Cargo.lock").is_file())
            .unwrap_or_else(|| panic!("no workspace (Cargo.lock) above {}", start.display()))
            .to_path_buf()
    })
}

/// The path of the real `datatracing` binary, built on first use.
///
/// Panics (failing the test, never skipping it) when cargo cannot build it.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_binary)
}

/// The binary the e2e cluster's product image holds: the tests' own build ([`binary`]), or
/// with `DATATRACING_E2E_IMAGE_PROFILE=release` the release build (`cargo build --release -p
/// datatracing-cli --locked` into the test's target directory), what the Dockerfile ships.
/// The 2-core CI run uses the tests' build (e2e/README.md, "Why not a release build"); the
/// GitHub workflow's cluster job sets `release`.
pub fn image_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        match std::env::var("DATATRACING_E2E_IMAGE_PROFILE").as_deref() {
            Ok("release") => cargo_build_binary(&["--release", "-p", "datatracing-cli"], "release"),
            Ok("") | Ok("test") | Err(std::env::VarError::NotPresent) => binary().to_path_buf(),
            Ok(other) => panic!(
                "DATATRACING_E2E_IMAGE_PROFILE={other}: use `release` or leave it unset (the tests' build)"
            ),
            Err(e) => panic!("DATATRACING_E2E_IMAGE_PROFILE: {e}"),
        }
    })
}

/// `cargo build --workspace --bin datatracing` with the running test's profile and target
/// directory, read from where the test executable lives (`<target-dir>/<profile-dir>/deps/`).
///
/// `--workspace` resolves dependency features across the whole workspace, as `cargo test`
/// does, so the binary links the dependency builds the tests already made. With
/// `-p datatracing-cli` alone a few features differ (those the HTTP client in the tests
/// turns on), and cargo would rebuild the HTTP and Kubernetes client stack every time it
/// alternates between the two.
fn build_binary() -> PathBuf {
    let profile = test_target_dir().1;
    cargo_build_binary(&["--workspace", "--profile", &profile], &profile)
}

/// The running test's target directory and cargo profile.
fn test_target_dir() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    match (deps.file_name(), deps.parent()) {
        (Some(name), Some(profile_dir)) if name == "deps" => {
            let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") => "dev".to_string(),
                Some(other) => other.to_string(),
                None => panic!("cannot tell the cargo profile from {}", exe.display()),
            };
            let target_dir = profile_dir
                .parent()
                .unwrap_or_else(|| panic!("no target directory above {}", exe.display()));
            (target_dir.to_path_buf(), profile)
        }
        _ => panic!(
            "the test executable {} is not in a cargo target directory (<target>/<profile>/deps)",
            exe.display()
        ),
    }
}

/// `cargo build --locked --bin datatracing` with `args` into the running test's target
/// directory; returns the executable cargo reports.
fn cargo_build_binary(args: &[&str], what: &str) -> PathBuf {
    let target_dir = test_target_dir().0;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(&cargo);
    // Cargo gives the test process this package's variables (`CARGO_MANIFEST_DIR`,
    // `CARGO_PKG_NAME`, ...). Build scripts such as ring's and cc's declare
    // `rerun-if-env-changed` on some of them, so passing them on would make this build and
    // the next plain `cargo test` rebuild those crates and everything above them in turn.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_by_cargo_for_the_test) {
            command.env_remove(&key);
        }
    }
    let out = command
        .args(["build", "--locked"])
        .args(args)
        .args([
            "--bin",
            "datatracing",
            "--message-format",
            "json-render-diagnostics",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cargo:?} to build the datatracing binary: {e}"));
    assert!(
        out.status.success(),
        "building the datatracing binary ({what}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let executable = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "datatracing")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from));
    let executable = executable.unwrap_or_else(|| {
        panic!(
            "cargo built no datatracing executable:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(executable.is_file(), "{} is missing", executable.display());
    executable
}

/// Whether cargo sets `key` for the process it runs (not for the build it was started with).
fn set_by_cargo_for_the_test(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

/// A running `datatracing` server process, killed when dropped.
#[derive(Debug)]
pub struct Server {
    /// The process; tests signal and wait on it directly.
    pub child: Child,
    ingest: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    query: Option<SocketAddr>,
    /// Every stderr line the process has written so far (JSON logs).
    pub log: Arc<Mutex<Vec<String>>>,
}

/// [`command`] on the ClickHouse store: `server`'s URL and password, database `db`.
pub fn clickhouse_command(
    subcommand: &str,
    server: &datatracing_testkit::clickhouse::ClickHouse,
    db: &str,
) -> Command {
    let mut c = command(subcommand);
    c.args([
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        server.url(),
        "--clickhouse-database",
        db,
    ])
    .env("DATATRACING_CLICKHOUSE_PASSWORD", server.password());
    c
}

/// The binary with the test-friendly flags every server test wants.
pub fn command(subcommand: &str) -> Command {
    let mut c = Command::new(binary());
    c.args([
        subcommand,
        "--ingest-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
        "--query-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
        // Tests use fixed dates; retention must never race them.
        "--retention",
        "0",
    ])
    .env_remove("DATATRACING_CONFIG");
    c
}

impl Server {
    /// `datatracing all-in-one` on the embedded store in `data_dir`.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_command(data_dir, "all-in-one")
    }

    /// A server subcommand on the embedded store in `data_dir`.
    pub fn start_command(data_dir: &Path, subcommand: &str) -> Server {
        let mut c = command(subcommand);
        c.arg("--data-dir").arg(data_dir);
        Self::spawn(c, subcommand != "query", subcommand != "collector")
    }

    /// Spawns a prepared command and waits (bounded) until the wanted listeners log their
    /// addresses.
    pub fn spawn(mut command: Command, want_ingest: bool, want_query: bool) -> Server {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn datatracing");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let (mut ingest, mut grpc, mut query) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while (want_ingest && (ingest.is_none() || grpc.is_none()))
            || (want_query && query.is_none())
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("server did not start; log: {:?}", log.lock().unwrap()));
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let addr = v["addr"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok());
            match v["message"].as_str() {
                Some("collector listening") => ingest = addr,
                Some("collector grpc listening") => grpc = addr,
                Some("query listening") => query = addr,
                _ => {}
            }
        }
        Server {
            child,
            ingest,
            grpc,
            query,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The collector's HTTP address.
    pub fn ingest(&self) -> SocketAddr {
        self.ingest.expect("this server has no collector")
    }

    /// The collector's OTLP/gRPC address.
    pub fn grpc(&self) -> SocketAddr {
        self.grpc.expect("this server has no OTLP/gRPC listener")
    }

    /// The query service's address.
    pub fn query(&self) -> SocketAddr {
        self.query.expect("this server has no query service")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET a URL and parse its JSON body.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// The Prometheus text of a server's `/metrics`.
pub async fn metrics(client: &reqwest::Client, addr: SocketAddr) -> String {
    client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Sends the small pipeline trace of `tests/python/otel_pipeline.py` with the official
/// OpenTelemetry Python SDK's OTLP exporter (`protocol`: `http` or `grpc`), with extra
/// environment for the exporter (such as `OTEL_EXPORTER_OTLP_HEADERS`). Returns the line
/// the script prints: the export result and the ids sent.
pub fn python_otel_send(protocol: &str, endpoint: &str, env: &[(&str, &str)]) -> Value {
    python_otel_send_args(protocol, endpoint, &[], env)
}

/// [`python_otel_send`] with the script's extra arguments (`--downstream`: a second trace
/// continuing the first with a FOLLOWS_FROM link).
pub fn python_otel_send_args(
    protocol: &str,
    endpoint: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Value {
    let script = workspace_root().join("e2e/tests/python/otel_pipeline.py");
    let out = Command::new(datatracing_testkit::python::python(&[
        "opentelemetry.sdk",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    ]))
    .arg(script)
    .args([protocol, endpoint])
    .args(args)
    // `requests` lets these win over the exporter's own CA file
    // (`OTEL_EXPORTER_OTLP_CERTIFICATE`); a machine-wide bundle must not decide what a TLS
    // test trusts.
    .env_remove("REQUESTS_CA_BUNDLE")
    .env_remove("CURL_CA_BUNDLE")
    .envs(env.iter().copied())
    .output()
    .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let mut v: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    v["stderr"] = Value::String(String::from_utf8_lossy(&out.stderr).into_owned());
    v
}
