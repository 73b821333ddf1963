//! A real Apache Kafka broker in KRaft mode (one process as broker and controller, no
//! ZooKeeper), run from the jars `tools/kafka/install.sh` copies from Maven into
//! `~/.cache/datatracing/kafka/<version>/libs` (`DATATRACING_KAFKA_DIR` overrides), on
//! loopback ports, with its data in a temporary directory. Stopped by PID when dropped.
// Test infrastructure: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running broker.
#[derive(Debug)]
pub struct Kafka {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

fn install_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DATATRACING_KAFKA_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let base = home.join(".cache/datatracing/kafka");
    // The newest installed version (the pom pins one; an older one may linger).
    let mut versions: Vec<PathBuf> = std::fs::read_dir(&base)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join(".complete").is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or(base)
}

impl Kafka {
    /// Starts a broker and waits (bounded) until it accepts connections.
    pub fn start() -> Kafka {
        let home = install_dir();
        let libs = home.join("libs");
        assert!(
            libs.is_dir(),
            "the Kafka broker jars are missing ({} does not exist).\n\
             Install them with:\n  tools/kafka/install.sh\n(scripts/test.sh does this; \
             it needs Java 17+ and Maven).",
            libs.display()
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = crate::free_port();
        let controller = crate::free_port();
        let config = dir.path().join("server.properties");
        std::fs::write(
            &config,
            format!(
                "process.roles=broker,controller\n\
                 node.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 controller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 log.dirs={}\n\
                 num.partitions=1\n\
                 offsets.topic.replication.factor=1\n\
                 transaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n\
                 auto.create.topics.enable=false\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log4j = dir.path().join("log4j.properties");
        std::fs::write(
            &log4j,
            "log4j.rootLogger=WARN, stderr\n\
             log4j.appender.stderr=org.apache.log4j.ConsoleAppender\n\
             log4j.appender.stderr.Target=System.err\n\
             log4j.appender.stderr.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n\n\
             log4j.logger.kafka.server.KafkaServer=INFO\n",
        )
        .unwrap();
        let java = |main: &str| {
            let mut c = Command::new("java");
            c.arg("-Xmx512m")
                .arg(format!("-Dlog4j.configuration=file:{}", log4j.display()))
                .arg("-cp")
                .arg(format!("{}/*", libs.display()))
                .arg(main);
            c
        };
        let out = java("kafka.tools.StorageTool")
            .args([
                "format",
                "--ignore-formatted",
                "-t",
                "ZGF0YXRyYWNpbmd0ZXN0Cg",
                "-c",
            ])
            .arg(&config)
            .output()
            .expect("run java (Java 17+ is required)");
        assert!(
            out.status.success(),
            "formatting the Kafka storage failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
        let child = java("kafka.Kafka")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the Kafka broker");
        let mut kafka = Kafka {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while TcpStream::connect_timeout(&kafka.addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = kafka.child.try_wait().unwrap() {
                panic!("the Kafka broker exited ({status}):\n{}", kafka.log());
            }
            assert!(
                Instant::now() < deadline,
                "the Kafka broker did not listen within 90 s:\n{}",
                kafka.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        kafka
    }

    /// `host:port` of the broker's listener (the bootstrap address).
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// What the broker wrote so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
