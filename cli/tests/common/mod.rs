//! Shared by the end-to-end tests: the real `datatracing` binary as a child process, and
//! small HTTP helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `datatracing` server process, killed when dropped.
pub struct Server {
    pub child: Child,
    ingest: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    query: Option<SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The binary with the test-friendly flags every server test wants.
pub fn command(subcommand: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_datatracing"));
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ingest(&self) -> SocketAddr {
        self.ingest.expect("this server has no collector")
    }

    pub fn grpc(&self) -> SocketAddr {
        self.grpc.expect("this server has no OTLP/gRPC listener")
    }

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
