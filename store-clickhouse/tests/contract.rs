//! The storage contract against a real ClickHouse engine (see `datatracing_testkit`), one
//! database per test. Checks write through the store (batcher and all) and read through a
//! separately opened [`ClickHouseReader`], as a collector and a query process would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use datatracing_store::{TraceReader, TraceWriter};
use datatracing_store_clickhouse::{
    ClickHouseConfig, ClickHouseMetrics, ClickHouseReader, ClickHouseStore,
};
use datatracing_store_contract::Fixture;
use datatracing_testkit::clickhouse::{ClickHouse, unique_database};

struct Ch {
    store: ClickHouseStore,
    reader: ClickHouseReader,
}

impl Fixture for Ch {
    fn writer(&self) -> &dyn TraceWriter {
        &self.store
    }
    fn reader(&self) -> &dyn TraceReader {
        &self.reader
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
    let store = ClickHouseStore::open(config.clone(), ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    let reader = ClickHouseReader::open(config, ClickHouseMetrics::unregistered())
        .await
        .unwrap();
    Ch { store, reader }
}

datatracing_store_contract::trace_store_contract!(make);
