//! The state file: epoch, seq, the activity cursor, the mirror and (after a clean stop) the
//! replay ring, so a relay that restarts — even without an uplink — serves the last known
//! content at once and kiosks can resume.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the folder) by a writer task,
//! at most once per `persist_interval` while something changed, and once more on shutdown. A
//! file that cannot be read back is reported and set aside, never fatal; a collection (or the
//! replay ring) that cannot be read back is left out, and the rest is restored.
//!
//! Only the shutdown write is marked `clean`: it holds the last seq kiosks were sent, and the
//! replay ring. A debounced write may be older than what kiosks already have, so after a crash
//! or power cut the relay keeps the content but starts a new epoch (see `Hub::restore`); the
//! ring is of no use then, so debounced writes leave it out and spare the SD card.

use std::collections::BTreeMap;
use std::fs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::replay::ReplayRing;
use crate::metrics::Metrics;

/// The state file's name inside `state_dir`.
pub const FILE_NAME: &str = "state.json";

/// The temporary file a write goes to before it is renamed over [`FILE_NAME`].
pub const TMP_NAME: &str = "state.json.tmp";

/// The layout version written into the file. The replay ring (`ring`) was added without a new
/// version: older relays ignore it.
pub const VERSION: u32 = 1;

/// While writes keep failing, one warning per this long, with the failures since the last.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

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
    /// The last webhook journal record the state includes (`webhook.durable`); 0: none.
    #[serde(default)]
    pub journal: u64,
    /// The replay ring, oldest first; only in a clean file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ring: Vec<SavedEvent>,
    /// Collections whose part of the file could not be read back, left out of `mirror`.
    #[serde(skip)]
    pub lost: Vec<String>,
}

/// One event of the replay ring as saved: what kiosks were sent, and where it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedEvent {
    pub seq: u64,
    /// `create`, `update`, `pre-delete` or `delete`.
    pub action: String,
    /// The Socket.IO event name kiosks received it under.
    pub name: String,
    pub collection: String,
    pub namespace: String,
    /// The routed room it went to; absent: the collection's room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The body as sent, byte for byte.
    pub body: Box<RawValue>,
}

impl PartialEq for SavedEvent {
    fn eq(&self, other: &Self) -> bool {
        (
            self.seq,
            &self.action,
            &self.name,
            &self.collection,
            &self.namespace,
            &self.room,
            self.body.get(),
        ) == (
            other.seq,
            &other.action,
            &other.name,
            &other.collection,
            &other.namespace,
            &other.room,
            other.body.get(),
        )
    }
}

/// [`Saved`] as written, borrowing the hub's mirror and ring instead of copying them.
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
    pub journal: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring: Option<RingRef<'a>>,
}

/// The replay ring as written: its events, oldest first.
#[derive(Debug)]
pub struct RingRef<'a>(pub &'a ReplayRing);

impl Serialize for RingRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct EventRef<'a> {
            seq: u64,
            action: &'static str,
            name: &'a str,
            collection: &'a str,
            namespace: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            room: Option<&'a str>,
            body: &'a RawValue,
        }
        serializer.collect_seq(self.0.events().map(|e| EventRef {
            seq: e.seq,
            action: e.action.action(),
            name: &e.name,
            collection: &e.collection,
            namespace: &e.namespace,
            room: e.room.as_deref(),
            body: &e.body,
        }))
    }
}

/// The file as read: each collection, and the ring, kept as raw JSON to be read one by one, so
/// that a part that cannot be read loses only that part.
#[derive(Deserialize)]
struct SavedFile {
    version: u32,
    epoch: String,
    seq: u64,
    cursor: Option<u64>,
    saved_at: String,
    saved_unix: i64,
    #[serde(default)]
    clean: bool,
    mirror: BTreeMap<String, Box<RawValue>>,
    #[serde(default)]
    journal: u64,
    #[serde(default)]
    ring: Option<Box<RawValue>>,
}

/// Reads a state file's contents. Only a file whose frame (epoch, seq, …, the list of
/// collections) cannot be read is an error; a collection that cannot be read is logged, left
/// out and named in [`Saved::lost`], a ring that cannot be read is logged and left out.
///
/// With a collection lost the file no longer says what kiosks have, nor what the activity
/// cursor covers, so it counts as not clean (kiosks take a snapshot in a new epoch rather than
/// resume past content the relay no longer holds) and the cursor is dropped (with Directus,
/// every collection is read again).
pub fn parse(bytes: &[u8]) -> serde_json::Result<Saved> {
    let file: SavedFile = serde_json::from_slice(bytes)?;
    let mut saved = Saved {
        version: file.version,
        epoch: file.epoch,
        seq: file.seq,
        cursor: file.cursor,
        saved_at: file.saved_at,
        saved_unix: file.saved_unix,
        clean: file.clean,
        mirror: BTreeMap::new(),
        journal: file.journal,
        ring: Vec::new(),
        lost: Vec::new(),
    };
    for (collection, raw) in file.mirror {
        match serde_json::from_str::<BTreeMap<String, Value>>(raw.get()) {
            Ok(items) => {
                saved.mirror.insert(collection, items);
            }
            Err(e) => {
                warn!(
                    collection,
                    %e,
                    "this collection's part of the state file is damaged; it is left out, the other collections are restored"
                );
                saved.lost.push(collection);
            }
        }
    }
    if let Some(raw) = file.ring {
        match serde_json::from_str::<Vec<SavedEvent>>(raw.get()) {
            Ok(ring) => saved.ring = ring,
            Err(e) => warn!(
                %e,
                "the replay ring in the state file is damaged; left out: resuming screens take a snapshot"
            ),
        }
    }
    if !saved.lost.is_empty() {
        saved.clean = false;
        saved.cursor = None;
        saved.ring.clear();
    }
    Ok(saved)
}

/// Reads the state file from `dir`. Missing: `None`. Unreadable or corrupt: reported, renamed
/// to `state.json.corrupt-<time>` so nothing overwrites the evidence, and `None`. Damaged in
/// part: what can be read is returned, and a copy is kept as `state.json.corrupt-<time>`.
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
    let aside = dir.join(format!("{FILE_NAME}.corrupt-{}", crate::clock::unix_now()));
    match parse(&bytes) {
        Ok(saved) if saved.version == VERSION => {
            if !saved.lost.is_empty() {
                let kept = fs::copy(&path, &aside).is_ok();
                warn!(
                    path = %path.display(),
                    lost = saved.lost.join(", "),
                    copy = kept.then(|| aside.display().to_string()),
                    "the state file is damaged in part: the collections named are left out (and read again from Directus, when there is one); screens take a snapshot in a new epoch"
                );
            }
            info!(path = %path.display(), seq = saved.seq, saved_at = saved.saved_at, "last known content loaded");
            Some(saved)
        }
        Ok(saved) => {
            warn!(path = %path.display(), version = saved.version, "state file from another version of the relay; starting without it");
            None
        }
        Err(e) => {
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

/// Writes `bytes` as the state file, replacing it whole ([`crate::atomic_file`]).
pub fn write_atomic(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::atomic_file::write(dir, FILE_NAME, bytes)
}

/// A serialised state offered to the writer, and the last webhook journal record it includes.
type Offer = Option<(Arc<Vec<u8>>, u64)>;

/// The writer task's end: the hub offers serialised states; only the newest is written. One
/// task does every write, so two writes never share the temporary file.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: Arc<watch::Sender<Offer>>,
    dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Starts the writer task for `dir` on `tracker`. It ends when every handle is dropped,
    /// after writing the last state offered. After each state written, `journal_saved` (with
    /// `webhook.durable`) is told the last journal record it includes.
    pub fn spawn(
        dir: PathBuf,
        metrics: Arc<Metrics>,
        journal_saved: Option<watch::Sender<u64>>,
        tracker: &TaskTracker,
    ) -> Writer {
        // The temporary file is the writer's own; one left by a crash is never read, and goes.
        let tmp = dir.join(TMP_NAME);
        if fs::remove_file(&tmp).is_ok() {
            info!(path = %tmp.display(), "removed a state file left half-written by a crash");
        }
        let (tx, mut rx) = watch::channel::<Offer>(None);
        let (task_dir, task_metrics) = (dir.clone(), metrics.clone());
        tracker.spawn(async move {
            let mut log = FailureLog::default();
            // `changed` still reports a value offered just before the last handle was dropped.
            while rx.changed().await.is_ok() {
                let Some((bytes, journal)) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let (dir, metrics) = (task_dir.clone(), task_metrics.clone());
                let result =
                    tokio::task::spawn_blocking(move || write_counted(&dir, &metrics, &bytes))
                        .await;
                match result {
                    Ok(Ok(())) => {
                        if let Some(saved) = &journal_saved {
                            saved.send_replace(journal);
                        }
                        if let Some(failures) = log.succeeded() {
                            info!(failures, "the state file is written again");
                        }
                        debug!("state saved");
                    }
                    Ok(Err(e)) => {
                        if let Some(failures) = log.failed(Instant::now()) {
                            warn!(
                                dir = %task_dir.display(),
                                %e,
                                failures,
                                "cannot write the state file: after a restart kiosks get no content until Directus answers; check that state_dir is writable and has room (logged at most once a minute while it lasts; relay_state_write_failures_total counts every failure)"
                            );
                        }
                    }
                    Err(e) => {
                        task_metrics.board.save_failed(&e.to_string());
                        warn!(%e, "the state file writer stopped: the last known content will not survive a restart; restart the relay, and report this if it comes back")
                    }
                }
            }
        });
        Writer {
            tx: Arc::new(tx),
            dir,
            metrics,
        }
    }

    /// Hands a serialised state, which includes the webhook journal up to record `journal`,
    /// to the writer task; a newer one replaces a waiting one.
    pub fn offer(&self, bytes: Vec<u8>, journal: u64) {
        self.tx.send_replace(Some((Arc::new(bytes), journal)));
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
            metrics.state_write_failing.set(0);
            metrics.board.saved();
        }
        Err(e) => {
            metrics.state_write_failures.inc();
            metrics.state_write_failing.set(1);
            metrics.board.save_failed(&e.to_string());
        }
    }
    result
}

/// Failed writes logged at a bounded rate: the first of a run of failures at once, then at most
/// one line per [`FAILURE_LOG_INTERVAL`], saying how many failed since the last line.
#[derive(Debug, Default)]
struct FailureLog {
    /// Failures in the current run, and those not yet in a log line.
    run: u64,
    unlogged: u64,
    last_line: Option<Instant>,
}

impl FailureLog {
    /// Notes a failure; `Some(failures since the last line)` when a line is due.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.run += 1;
        self.unlogged += 1;
        let due = self
            .last_line
            .is_none_or(|last| now.duration_since(last) >= FAILURE_LOG_INTERVAL);
        if !due {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// Notes a success; `Some(failures in the run it ends)` when it ends one.
    fn succeeded(&mut self) -> Option<u64> {
        let run = std::mem::take(&mut self.run);
        *self = FailureLog::default();
        (run > 0).then_some(run)
    }
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
            journal: 0,
            ring: Vec::new(),
            lost: Vec::new(),
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

    /// How many copies of a damaged file were set aside in `dir`.
    fn corrupt_copies(dir: &Path) -> usize {
        fs::read_dir(dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.json.corrupt-")
            })
            .count()
    }

    #[test]
    fn a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = serde_json::to_vec(&saved(3)).expect("json");
        fs::write(dir.path().join(FILE_NAME), &full[..full.len() / 2]).expect("write");
        assert_eq!(load(dir.path()), None);
        assert!(!dir.path().join(FILE_NAME).exists());
        assert_eq!(corrupt_copies(dir.path()), 1);
    }

    /// A collection nested past what serde_json reads (as a record accepted before the relay
    /// bounded nesting could be) loses that collection only: the others, the epoch and the seq
    /// are kept; the file no longer counts as clean and the cursor goes, so kiosks take a
    /// snapshot and Directus is read again. A copy of the file is kept as evidence.
    #[test]
    fn a_damaged_collection_loses_only_that_collection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = format!("{}1{}", "[".repeat(130), "]".repeat(130));
        let file = format!(
            r#"{{"version":1,"epoch":"e","seq":9,"cursor":7,"saved_at":"t","saved_unix":1,"clean":true,
            "mirror":{{"channels":{{"a":{{"slug":"a"}}}},"screens":{{"1":{{"id":1,"deep":{deep}}}}},"menu":{{"1":[]}}}},
            "ring":[{{"seq":9,"action":"update","name":"data.update","collection":"channels","namespace":"/","body":{{}}}}]}}"#
        );
        fs::write(dir.path().join(FILE_NAME), &file).expect("write");
        let saved = load(dir.path()).expect("the rest is loaded");
        assert_eq!(saved.lost, ["screens"]);
        assert_eq!(
            saved.mirror.keys().collect::<Vec<_>>(),
            ["channels", "menu"]
        );
        assert_eq!((saved.epoch.as_str(), saved.seq), ("e", 9));
        assert!(!saved.clean, "kiosks must not resume past lost content");
        assert_eq!(saved.cursor, None, "the lost collection is read again");
        assert!(saved.ring.is_empty());
        assert!(dir.path().join(FILE_NAME).exists());
        assert_eq!(corrupt_copies(dir.path()), 1);

        // A damaged ring loses the ring only.
        let file = r#"{"version":1,"epoch":"e","seq":9,"cursor":7,"saved_at":"t","saved_unix":1,"clean":true,
            "mirror":{"channels":{}},"ring":[{"seq":"nine"}]}"#;
        let saved = parse(file.as_bytes()).expect("parsed");
        assert!(saved.clean && saved.ring.is_empty() && saved.lost.is_empty());
        assert_eq!(saved.cursor, Some(7));
    }

    #[test]
    fn failed_writes_are_logged_at_a_bounded_rate() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(log.failed(at(0)), Some(1), "the first at once");
        assert_eq!(log.failed(at(5)), None);
        assert_eq!(log.failed(at(30)), None);
        assert_eq!(
            log.failed(at(60)),
            Some(3),
            "a minute later, with the count since"
        );
        assert_eq!(log.failed(at(61)), None);
        assert_eq!(log.succeeded(), Some(5), "the run it ends");
        assert_eq!(log.succeeded(), None);
        assert_eq!(log.failed(at(62)), Some(1), "a new run is told at once");
    }
}
