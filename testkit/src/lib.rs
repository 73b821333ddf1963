//! Test infrastructure: real peers started as local processes, never mocks of what a test is
//! about (a ClickHouse engine, a Kubernetes API server), and test certificates made by
//! `openssl` ([`tls`]). Used only as a dev-dependency.

pub mod clickhouse;
pub mod kafka;
pub mod kubernetes;
pub mod python;
pub mod temporal;
pub mod tls;

/// A TCP port free on 127.0.0.1 right now (for processes that must be told their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// The ```sh block of a runbook whose first line is `# dr: <step>` (runbooks mark the
/// blocks their tests run this way), so tests execute the runbook as written.
pub fn runbook_block(runbook: &std::path::Path, step: &str) -> String {
    let text =
        std::fs::read_to_string(runbook).unwrap_or_else(|e| panic!("{}: {e}", runbook.display()));
    let marker = format!("# dr: {step}\n");
    text.split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.starts_with(&marker))
        .unwrap_or_else(|| panic!("{} has no block `{marker}`", runbook.display()))
        .to_string()
}
