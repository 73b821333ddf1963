//! Test infrastructure: real peers started as local processes, never mocks of what a test is
//! about (a ClickHouse engine, a Kubernetes API server). Used only as a dev-dependency.

pub mod clickhouse;
pub mod kubernetes;
pub mod python;

/// A TCP port free on 127.0.0.1 right now (for processes that must be told their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}
