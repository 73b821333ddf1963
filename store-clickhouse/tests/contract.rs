//! The storage contract against a real ClickHouse engine (see `datatracing_testkit`), one
//! database per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use datatracing_store::TraceStore;
use datatracing_store::contract::Fixture;
use datatracing_store_clickhouse::{ClickHouseConfig, ClickHouseMetrics, ClickHouseStore};
use datatracing_testkit::clickhouse::{ClickHouse, unique_database};

struct Ch {
    store: ClickHouseStore,
}

impl Fixture for Ch {
    fn store(&self) -> &dyn TraceStore {
        &self.store
    }
}

async fn make() -> Ch {
    let server = ClickHouse::shared();
    let config = ClickHouseConfig {
        url: server.url().to_string(),
        user: server.user().to_string(),
        password: server.password().to_string(),
        database: unique_database("contract"),
        ..ClickHouseConfig::default()
    };
    let store = ClickHouseStore::open(config, ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    Ch { store }
}

datatracing_store::trace_store_contract!(make);
