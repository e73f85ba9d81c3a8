//! Files replaced in Directus under the same id ("Replace file"): Directus logs an `update` of
//! `directus_files` in its activity log. Every `directus.poll_interval` (at least every
//! [`REFRESH_EVERY`]) the relay reads the rows after its cursor, forgets every cached variant of
//! a file updated or deleted there, and prefetches it again when items still reference it. The
//! cursor is kept in `assets.dir/files-cursor`, so that a replacement made while the relay was
//! down is noticed at the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::Inner;
use crate::upstream::directus::PAGE;

/// The longest between two reads of `directus_files` activity.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

const CURSOR_FILE: &str = "files-cursor";

fn read_cursor(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(CURSOR_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn write_cursor(path: &PathBuf, cursor: u64) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, cursor.to_string()).is_ok() {
        std::fs::rename(&tmp, path).ok();
    }
}

/// Starts following replaced files every `every` (capped at [`REFRESH_EVERY`]).
pub fn spawn(
    inner: Arc<Inner>,
    dir: PathBuf,
    every: Duration,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let every = every.min(REFRESH_EVERY);
    tracker.spawn(async move {
        let cursor_path = dir.join(CURSOR_FILE);
        // Without a cursor (the first start), from the oldest row Directus shows: a page per
        // tick, forgetting nothing that is not cached.
        let mut cursor = read_cursor(&dir).unwrap_or(0);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut directus = inner.upstream.directus.lock().await;
            let rows = match directus
                .activity_after(cursor, &["directus_files".to_owned()], PAGE)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    debug!(%e, "cannot read the activity of directus_files; trying again later");
                    continue;
                }
            };
            drop(directus);
            let Some(last) = rows.last().map(|r| r.id) else {
                continue;
            };
            let mut forgot = false;
            {
                let mut store = inner.store();
                for row in rows.iter().filter(|r| r.action != "create") {
                    if store.forget(&row.item) {
                        info!(
                            file = row.item,
                            action = row.action,
                            "a cached file changed in Directus: fetched again"
                        );
                        forgot = true;
                    }
                }
                store.publish(&inner.figures);
            }
            if forgot {
                inner.wake.notify_waiters();
                inner.wake.notify_one();
            }
            cursor = last;
            write_cursor(&cursor_path, last);
        }
    });
}
