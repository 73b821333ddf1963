//! A ClickHouse writer that is opened in the background: a collector with the durable
//! queue starts (and acknowledges into its queue) while ClickHouse is unreachable, instead
//! of failing after the connect timeout and restarting in a loop during exactly the outage
//! the queue is meant to absorb.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use datatracing_config::ClickHouseConfig;
use datatracing_core::Span;
use datatracing_store::{Error, Health, Result, TraceWriter};
use datatracing_store_clickhouse::{ClickHouseMetrics, ClickHouseStore};
use tokio_util::sync::CancellationToken;

/// Writes fail as unavailable (the durable queue retries them) until the store is open.
#[derive(Debug)]
pub(crate) struct DeferredWriter {
    store: OnceLock<Arc<ClickHouseStore>>,
    last_error: Mutex<String>,
    stop: CancellationToken,
}

impl DeferredWriter {
    /// Starts opening the store in the background, retrying every attempt's failure with a
    /// growing pause (up to 30 s) until it opens or the writer is closed.
    pub(crate) fn open(config: ClickHouseConfig, metrics: ClickHouseMetrics) -> Arc<Self> {
        let this = Arc::new(Self {
            store: OnceLock::new(),
            last_error: Mutex::new("not connected yet".into()),
            stop: CancellationToken::new(),
        });
        let weak = Arc::downgrade(&this);
        let stop = this.stop.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(500);
            loop {
                let opened = tokio::select! {
                    r = ClickHouseStore::open(config.clone(), metrics.clone()) => r,
                    _ = stop.cancelled() => return,
                };
                let Some(this) = weak.upgrade() else { return };
                match opened {
                    Ok(store) => {
                        tracing::info!(url = %config.url, "connected to ClickHouse; draining the durable queue");
                        let _ = this.store.set(Arc::new(store));
                        return;
                    }
                    Err(e) => {
                        if e.is_transient() {
                            tracing::warn!(url = %config.url, error = %e, retry_in = ?pause, "ClickHouse not reachable; acknowledging into the durable queue meanwhile");
                        } else {
                            // Credentials or schema: retrying will not fix it by itself, but
                            // the queue keeps acknowledging while someone does.
                            tracing::error!(url = %config.url, error = %e, retry_in = ?pause, "ClickHouse refused the collector; acknowledging into the durable queue until this is fixed");
                        }
                        if let Ok(mut last) = this.last_error.lock() {
                            *last = e.to_string();
                        }
                    }
                }
                drop(this);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => return,
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        });
        this
    }

    fn not_yet(&self) -> Error {
        let last = self
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        Error::Unavailable(format!("ClickHouse not connected yet: {last}"))
    }
}

#[async_trait]
impl Health for DeferredWriter {
    fn backend(&self) -> &'static str {
        "clickhouse"
    }

    async fn health(&self) -> Result<()> {
        match self.store.get() {
            Some(s) => s.health().await,
            None => Err(self.not_yet()),
        }
    }
}

#[async_trait]
impl TraceWriter for DeferredWriter {
    async fn write(&self, spans: Arc<[Span]>) -> Result<()> {
        match self.store.get() {
            Some(s) => s.write(spans).await,
            None => Err(self.not_yet()),
        }
    }

    fn retention(&self) -> Option<Duration> {
        self.store.get().and_then(|s| s.retention())
    }

    async fn close(&self) -> Result<()> {
        self.stop.cancel();
        match self.store.get() {
            Some(s) => s.close().await,
            None => Ok(()),
        }
    }
}
