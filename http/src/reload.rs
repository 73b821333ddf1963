//! Re-reading mounted files (token files, certificates) on an interval: one task per
//! watcher, the reads on a blocking thread, never two reads of one watcher at once, and a
//! late tick delayed rather than bunched (a slow volume must not turn into a burst of reads).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `reload` every `every` (the first run one interval from now) until `shutdown`.
pub(crate) fn every(
    every: Duration,
    shutdown: CancellationToken,
    reload: impl Fn() + Clone + Send + 'static,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let _ = tokio::task::spawn_blocking(reload.clone()).await;
                }
            }
        }
    });
}
