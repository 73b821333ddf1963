//! Test infrastructure: real peers started as local processes, never mocks of what a test is
//! about (a ClickHouse engine, a Kubernetes API server). Used only as a dev-dependency.

pub mod clickhouse;
pub mod kubernetes;
pub mod python;
