//! Prefetch: `assets.concurrency` workers download, in the background, the referenced files
//! that are not cached. There is no queue to overflow: the work is "referenced and not cached",
//! read from the store each time a worker is free, so a burst of items only makes that set
//! larger. A failed file is retried with backoff (1 s doubled up to 5 min); a full disk stops
//! every worker for [`DISK_FULL_PAUSE`] (or until room is made); serving goes on meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::Inner;
use super::fetch::{FetchError, download};

/// How long prefetching stops after the disk was full.
pub const DISK_FULL_PAUSE: Duration = Duration::from_secs(60);

/// How often the cache's figures are published.
pub const FIGURES_EVERY: Duration = Duration::from_secs(1);

/// Starts the workers and the figures' publisher.
pub fn spawn(inner: Arc<Inner>, shutdown: CancellationToken, tracker: &TaskTracker) {
    for _ in 0..inner.config.concurrency {
        tracker.spawn(worker(inner.clone(), shutdown.clone()));
    }
    tracker.spawn(async move {
        let mut every = tokio::time::interval(FIGURES_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => inner.store().publish(&inner.figures),
            }
        }
    });
}

async fn worker(inner: Arc<Inner>, shutdown: CancellationToken) {
    loop {
        let now = Instant::now();
        let (next, wait_until) = {
            let mut store = inner.store();
            match store.disk_full_until {
                Some(until) if until > now => (None, Some(until)),
                _ => {
                    if store.disk_full_until.take().is_some() {
                        inner.figures.disk_full.set(0);
                        inner.figures.problem(None);
                    }
                    (store.next_wanted(now), store.next_retry())
                }
            }
        };
        let Some(file) = next else {
            let sleep = async {
                match wait_until {
                    Some(at) => {
                        tokio::time::sleep_until(at.max(now + Duration::from_millis(10))).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = inner.wake.notified() => {}
                _ = sleep => {}
            }
            continue;
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = download(&inner, &file, "") => result,
        };
        match result {
            Ok(meta) => {
                debug!(file, bytes = meta.size, "file cached");
                inner.store().clear_over_budget(&inner.figures);
            }
            Err(error) => {
                inner.figures.failures.inc();
                inner.figures.error(format!("{file}: {error}"));
                let mut store = inner.store();
                store.failed(&file, Instant::now());
                match &error {
                    FetchError::DiskFull(detail) => {
                        warn!(file, %detail, pause = ?DISK_FULL_PAUSE, "the disk is full: prefetching files stops for a while; cached files are still served");
                        store.disk_full_until = Some(Instant::now() + DISK_FULL_PAUSE);
                        inner.figures.disk_full.set(1);
                        inner.figures.problem(Some(format!(
                            "the disk is full ({detail}): files are not prefetched; cached ones are still served"
                        )));
                    }
                    FetchError::NoRoom => {
                        debug!(file, "file not cached: no room next to the referenced ones")
                    }
                    _ => warn!(file, %error, "could not cache a file; retrying later"),
                }
            }
        }
    }
}
