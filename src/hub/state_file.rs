//! The state file: epoch, seq, the activity cursor and the mirror, so a relay that restarts
//! — even without an uplink — serves the last known content at once and kiosks can resume.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the folder) by a writer task,
//! at most once per `persist_interval` while something changed, and once more on shutdown. A
//! file that cannot be read back is reported and set aside, never fatal.
//!
//! Only the shutdown write is marked `clean`: it holds the last seq kiosks were sent. A debounced
//! write may be older than what kiosks already have, so after a crash or power cut the relay
//! keeps the content but starts a new epoch (see `Hub::restore`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// The state file's name inside `state_dir`.
pub const FILE_NAME: &str = "state.json";

/// The temporary file a write goes to before it is renamed over [`FILE_NAME`].
pub const TMP_NAME: &str = "state.json.tmp";

/// The layout version written into the file.
pub const VERSION: u32 = 1;

/// What the relay keeps across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub version: u32,
    pub epoch: String,
    pub seq: u64,
    /// The activity id the mirror is caught up to, when a Directus is followed.
    pub cursor: Option<u64>,
    /// When the content was last known current (RFC 3339, and as Unix seconds).
    pub saved_at: String,
    pub saved_unix: i64,
    /// Written at a clean shutdown, after the last event: `seq` is the last seq any kiosk was
    /// sent. Files written while running, and older files without the field, are not.
    #[serde(default)]
    pub clean: bool,
    /// Mirrored records per collection and key.
    pub mirror: BTreeMap<String, BTreeMap<String, Value>>,
}

/// [`Saved`] as written, borrowing the hub's mirror instead of copying it.
#[derive(Debug, Serialize)]
pub struct SavedRef<'a> {
    pub version: u32,
    pub epoch: &'a str,
    pub seq: u64,
    pub cursor: Option<u64>,
    pub saved_at: String,
    pub saved_unix: i64,
    pub clean: bool,
    pub mirror: &'a super::mirror::Mirror,
}

/// Reads the state file from `dir`. Missing: `None`. Unreadable or corrupt: reported, renamed
/// to `state.json.corrupt-<time>` so nothing overwrites the evidence, and `None`.
pub fn load(dir: &Path) -> Option<Saved> {
    let path = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), %e, "cannot read the state file; starting without the last known content");
            return None;
        }
    };
    match serde_json::from_slice::<Saved>(&bytes) {
        Ok(saved) if saved.version == VERSION => {
            info!(path = %path.display(), seq = saved.seq, saved_at = saved.saved_at, "last known content loaded");
            Some(saved)
        }
        Ok(saved) => {
            warn!(path = %path.display(), version = saved.version, "state file from another version of the relay; starting without it");
            None
        }
        Err(e) => {
            let aside = dir.join(format!("{FILE_NAME}.corrupt-{}", crate::clock::unix_now()));
            let moved = fs::rename(&path, &aside).is_ok();
            warn!(
                path = %path.display(),
                %e,
                set_aside = moved.then(|| aside.display().to_string()),
                "the state file is damaged (a power cut while writing?); set aside, starting without the last known content"
            );
            None
        }
    }
}

/// Writes `bytes` as the state file: a temporary file, fsync, rename over the old one, fsync
/// of the folder. A crash at any point leaves the old file or the new one, never a mix.
pub fn write_atomic(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(TMP_NAME);
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(FILE_NAME))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The writer task's end: the hub offers serialised states; only the newest is written. One
/// task does every write, so two writes never share the temporary file.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: Arc<watch::Sender<Option<Arc<Vec<u8>>>>>,
    dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Starts the writer task for `dir` on `tracker`. It ends when every handle is dropped,
    /// after writing the last state offered.
    pub fn spawn(dir: PathBuf, metrics: Arc<Metrics>, tracker: &TaskTracker) -> Writer {
        // The temporary file is the writer's own; one left by a crash is never read, and goes.
        let tmp = dir.join(TMP_NAME);
        if fs::remove_file(&tmp).is_ok() {
            info!(path = %tmp.display(), "removed a state file left half-written by a crash");
        }
        let (tx, mut rx) = watch::channel::<Option<Arc<Vec<u8>>>>(None);
        let (task_dir, task_metrics) = (dir.clone(), metrics.clone());
        tracker.spawn(async move {
            let mut failing = false;
            // `changed` still reports a value offered just before the last handle was dropped.
            while rx.changed().await.is_ok() {
                let Some(bytes) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let (dir, metrics) = (task_dir.clone(), task_metrics.clone());
                let result =
                    tokio::task::spawn_blocking(move || write_counted(&dir, &metrics, &bytes))
                        .await;
                match result {
                    Ok(Ok(())) => {
                        if failing {
                            info!("the state file is written again");
                        }
                        failing = false;
                        debug!("state saved");
                    }
                    Ok(Err(e)) => {
                        if !failing {
                            warn!(dir = %task_dir.display(), %e, "cannot write the state file: after a restart kiosks get no content until Directus answers; check that state_dir is writable");
                        }
                        failing = true;
                    }
                    Err(e) => warn!(%e, "the state file writer stopped: the last known content will not survive a restart; restart the relay, and report this if it comes back"),
                }
            }
        });
        Writer {
            tx: Arc::new(tx),
            dir,
            metrics,
        }
    }

    /// Hands a serialised state to the writer task; a newer one replaces a waiting one.
    pub fn offer(&self, bytes: Vec<u8>) {
        self.tx.send_replace(Some(Arc::new(bytes)));
    }

    /// Writes at once, on the caller's thread. Only before anything was offered (at start-up),
    /// so it cannot race the writer task.
    pub fn write_now(&self, bytes: &[u8]) -> std::io::Result<()> {
        write_counted(&self.dir, &self.metrics, bytes)
    }
}

/// [`write_atomic`], counted in the `relay_state_*` metrics.
fn write_counted(dir: &Path, metrics: &Metrics, bytes: &[u8]) -> std::io::Result<()> {
    let started = Instant::now();
    let result = write_atomic(dir, bytes);
    match &result {
        Ok(()) => {
            metrics.state_writes.inc();
            metrics.state_write_bytes.inc_by(bytes.len() as u64);
            metrics
                .state_last_write
                .set(started.elapsed().as_secs_f64());
            metrics.state_last_write_time.set(crate::clock::unix_now());
        }
        Err(_) => {
            metrics.state_write_failures.inc();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn saved(seq: u64) -> Saved {
        Saved {
            version: VERSION,
            epoch: "e".into(),
            seq,
            cursor: Some(7),
            saved_at: "2026-11-28T17:00:00.000Z".into(),
            saved_unix: 1_795_885_200,
            clean: true,
            mirror: [(
                "screens".to_string(),
                [("1".to_string(), json!({"id": 1}))].into(),
            )]
            .into(),
        }
    }

    #[test]
    fn writes_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()), None);
        write_atomic(dir.path(), &serde_json::to_vec(&saved(3)).expect("json")).expect("write");
        assert_eq!(load(dir.path()), Some(saved(3)));
        write_atomic(dir.path(), &serde_json::to_vec(&saved(4)).expect("json")).expect("write");
        assert_eq!(load(dir.path()).map(|s| s.seq), Some(4));
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = serde_json::to_vec(&saved(3)).expect("json");
        fs::write(dir.path().join(FILE_NAME), &full[..full.len() / 2]).expect("write");
        assert_eq!(load(dir.path()), None);
        assert!(!dir.path().join(FILE_NAME).exists());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.json.corrupt-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
    }
}
