//! The bearer token a replica presents to its peers when `auth` is on
//! (`collector.peers.token_file` or `token_env`): a token of `auth.tokens` with the `peer`
//! scope, so a peer's forwarded spans and lineage messages are accepted, and only a peer may
//! say which tenant forwarded spans belong to. A token file is re-read while running, so a
//! rotated Secret takes effect without a restart.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datatracing_config::PeersConfig;
use tokio_util::sync::CancellationToken;

/// The current token (shared by every peer client); empty when none is configured.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerToken(Arc<RwLock<Option<Arc<str>>>>);

fn read(path: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read collector.peers.token_file {}: {e}",
            path.display()
        )
    })?;
    let t = t.trim();
    if t.is_empty() {
        return Err(format!(
            "collector.peers.token_file {} is empty",
            path.display()
        ));
    }
    Ok(t.to_string())
}

impl PeerToken {
    /// Reads the configured token; an unreadable or empty one is an error at start.
    pub(crate) fn load(config: &PeersConfig) -> Result<Self, String> {
        let token = match (&config.token_file, &config.token_env) {
            (Some(path), _) => Some(read(path)?),
            (None, Some(var)) => Some(
                std::env::var(var)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        format!("collector.peers.token_env: ${var} is unset or empty")
                    })?,
            ),
            (None, None) => None,
        };
        Ok(Self(Arc::new(RwLock::new(token.map(Arc::from)))))
    }

    /// The `authorization` value to send, if any.
    pub(crate) fn authorization(&self) -> Option<String> {
        let t = match self.0.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        };
        t.map(|t| format!("Bearer {t}"))
    }

    fn set(&self, token: String) {
        match self.0.write() {
            Ok(mut t) => *t = Some(token.into()),
            Err(p) => *p.into_inner() = Some(token.into()),
        }
    }

    /// Re-reads `path` every `every` until `stop`; an unreadable file keeps the token in
    /// force (logged).
    pub(crate) async fn watch(
        self,
        path: std::path::PathBuf,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let p = path.clone();
            match tokio::task::spawn_blocking(move || read(&p)).await {
                Ok(Ok(t)) => self.set(t),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "peer token unreadable; keeping the one in force")
                }
                Err(e) => tracing::warn!(error = %e, "peer token read task failed"),
            }
        }
    }
}
