//! Test infrastructure: real peers started as local processes, never mocks of what a test is
//! about. Used only as a dev-dependency.

pub mod clickhouse;
