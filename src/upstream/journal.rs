//! The webhook journal (`webhook.durable = true`, webhooks alone): a 202 means "on disk".
//!
//! Each accepted change is appended as one line of JSON to a journal file in `state_dir` and
//! fsynced before the webhook is answered. The webhooks waiting at the same moment share one
//! write and one fsync (group commit): a batch is whatever queued while the previous fsync ran,
//! up to [`MAX_BATCH`]. After the fsync the changes go to the hub in journal order, and only
//! then is each webhook answered 202.
//!
//! Every record has a number. The state file says up to which record it includes the journal;
//! after each state write the journal's files that it covers are deleted. The journal is split
//! into files (`webhook-journal.<first record>`): at each state write the file being appended
//! to is closed and the next batch starts a new one, so a file is deleted at the latest at the
//! second state write after its last record. The journal thus holds about two
//! `persist_interval`s of changes; while the state file cannot be written it grows up to
//! [`MAX_BYTES`], after which webhooks are answered 503 until a state write succeeds.
//!
//! At start, before the relay serves, the records after the state file's are replayed into the
//! hub in order. A line cut short by a crash was never answered 202: reading a file stops there.
//! When a write or fsync fails (a full disk), the webhooks of that batch are answered 503 in
//! words, the file is abandoned (the next batch starts a new one) and nothing answered 202 is
//! lost.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::hub::event::{Action, Change, Key};
use crate::hub::{Command, HubHandle};
use crate::metrics::Metrics;

/// The journal files' names in `state_dir`: this, then the number of their first record.
pub const FILE_PREFIX: &str = "webhook-journal.";

/// The most webhooks that share one write and fsync.
pub const MAX_BATCH: usize = 512;

/// The most bytes the journal holds. It reaches this only while the state file cannot be
/// written (each state write lets it shrink); past it, webhooks are answered 503.
pub const MAX_BYTES: u64 = 64 << 20;

/// Why a change was not journaled; the webhook answers 503 with these words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalError {
    /// The journal's queue is full (`limits.hub_inbox` webhooks waiting for their fsync).
    Busy,
    /// The relay is stopping.
    Stopped,
    /// Writing or syncing the journal failed (a full or failing disk).
    Disk(String),
    /// The journal reached [`MAX_BYTES`] because the state file cannot be written.
    Full,
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The record's number, one more than the previous record's.
    j: u64,
    collection: String,
    action: Action,
    keys: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<Value>,
}

impl Record {
    fn change(self) -> Option<Change> {
        let keys = self
            .keys
            .iter()
            .map(Key::from_json)
            .collect::<Option<Vec<_>>>()?;
        Some(Change {
            collection: self.collection,
            action: self.action,
            keys,
            payload: self.payload,
        })
    }
}

/// A journal file: where it is, the number of its last record, its size.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    last: u64,
    bytes: u64,
}

/// The journal as found at start: the changes to replay, and the files it keeps until a state
/// write covers them.
#[derive(Debug)]
pub struct Recovered {
    /// Records after the state file's, in order, each with its number.
    pub changes: Vec<(u64, Change)>,
    segments: VecDeque<Segment>,
    next: u64,
}

/// Reads the journal in `dir`: every record after `saved_upto` (the state file's), in order.
/// A file is read up to its first line that cannot be read (a write cut short).
pub fn recover(dir: &Path, saved_upto: u64) -> std::io::Result<Recovered> {
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let Some(first) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(FILE_PREFIX))
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                files.push((first, entry.path()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    files.sort();
    let mut recovered = Recovered {
        changes: Vec::new(),
        segments: VecDeque::new(),
        next: saved_upto + 1,
    };
    for (_, path) in files {
        let reader = BufReader::new(fs::File::open(&path)?);
        let mut last = 0;
        let mut bytes = 0;
        for line in reader.split(b'\n') {
            let line = line?;
            let Ok(record) = serde_json::from_slice::<Record>(&line) else {
                info!(
                    path = %path.display(),
                    "the webhook journal ends with a line cut short (a crash while writing); it was never answered 202"
                );
                break;
            };
            bytes += line.len() as u64 + 1;
            last = record.j;
            recovered.next = recovered.next.max(record.j + 1);
            if record.j <= saved_upto {
                continue;
            }
            let j = record.j;
            match record.change() {
                Some(change) => recovered.changes.push((j, change)),
                None => {
                    warn!(path = %path.display(), j, "a webhook journal record has an invalid key; skipped")
                }
            }
        }
        recovered.segments.push_back(Segment { path, last, bytes });
    }
    Ok(recovered)
}

/// A change on its way to the journal, and where its answer goes.
#[derive(Debug)]
struct Entry {
    change: Change,
    reply: oneshot::Sender<Result<(), JournalError>>,
}

/// The webhook's way into the journal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JournalHandle {
    tx: mpsc::Sender<Entry>,
}

impl JournalHandle {
    /// Appends `change` to the journal and hands it to the hub; returns once it is on disk
    /// and the hub has it.
    pub async fn commit(&self, change: Change) -> Result<(), JournalError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Entry { change, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => JournalError::Busy,
                mpsc::error::TrySendError::Closed(_) => JournalError::Stopped,
            })?;
        answer.await.unwrap_or(Err(JournalError::Stopped))
    }
}

/// The files, owned by the journal task.
#[derive(Debug)]
struct Files {
    dir: PathBuf,
    /// The file being appended to, with its segment.
    active: Option<(fs::File, Segment)>,
    /// Files no longer appended to, oldest first.
    closed: VecDeque<Segment>,
    next: u64,
}

impl Files {
    fn bytes(&self) -> u64 {
        self.closed.iter().map(|s| s.bytes).sum::<u64>()
            + self.active.as_ref().map_or(0, |(_, s)| s.bytes)
    }

    /// Writes `lines` (records `first..=last`) and fsyncs them. On failure the file is
    /// abandoned: what follows its last good record is never read.
    fn append(&mut self, lines: &[u8], first: u64, last: u64) -> std::io::Result<()> {
        if self.active.is_none() {
            fs::create_dir_all(&self.dir)?;
            let path = self.dir.join(format!("{FILE_PREFIX}{first:020}"));
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            // The new file's name must survive a power cut as well as its contents.
            fs::File::open(&self.dir)?.sync_all()?;
            let segment = Segment {
                path,
                last: first.saturating_sub(1),
                bytes: 0,
            };
            self.active = Some((file, segment));
        }
        let Some((file, segment)) = &mut self.active else {
            unreachable!("opened above");
        };
        let written = file.write_all(lines).and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                segment.last = last;
                segment.bytes += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.close();
                Err(e)
            }
        }
    }

    fn close(&mut self) {
        if let Some((_, segment)) = self.active.take() {
            self.closed.push_back(segment);
        }
    }

    /// The state file now includes every record up to `upto`: the file being appended to is
    /// closed, and the files it covers are deleted.
    fn saved(&mut self, upto: u64) {
        self.close();
        while self.closed.front().is_some_and(|s| s.last <= upto) {
            let Some(segment) = self.closed.pop_front() else {
                break;
            };
            if let Err(e) = fs::remove_file(&segment.path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(path = %segment.path.display(), %e, "cannot delete a webhook journal file the state file covers; it is skipped at the next start");
            }
        }
    }
}

/// The journal's queue: webhooks waiting for their fsync, at most `queue` (`limits.hub_inbox`);
/// when it is full the webhook answers 503.
#[derive(Debug)]
pub struct JournalInbox(mpsc::Receiver<Entry>);

/// The webhook's end of the journal, and the inbox for [`spawn`], made before the journal is
/// read so the HTTP routes can be built first.
pub fn channel(queue: usize) -> (JournalHandle, JournalInbox) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    (JournalHandle { tx }, JournalInbox(rx))
}

/// Starts the journal task: it appends, fsyncs and hands changes to the hub, and deletes what
/// each state write (told through `saved`) covers. Stops with `stop`. The changes of
/// `recovered` are not replayed here: the caller hands them to the hub before serving.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    dir: PathBuf,
    recovered: Recovered,
    inbox: JournalInbox,
    hub: HubHandle,
    mut saved: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    let mut rx = inbox.0;
    let mut writer_gone = false;
    let mut start = Files {
        dir,
        active: None,
        closed: recovered.segments,
        next: recovered.next,
    };
    // What the state file already includes goes at once (a clean stop's last save covers it all).
    start.saved(*saved.borrow_and_update());
    metrics.journal_bytes.set(start.bytes() as i64);
    let mut files = Some(start);
    tracker.spawn(async move {
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                changed = saved.changed(), if !writer_gone => {
                    if changed.is_err() {
                        // The writer is gone (shutting down): nothing more is deleted.
                        writer_gone = true;
                        continue;
                    }
                    let upto = *saved.borrow_and_update();
                    let Some(mut owned) = files.take() else { break };
                    owned = tokio::task::spawn_blocking(move || {
                        owned.saved(upto);
                        owned
                    })
                    .await
                    .expect("the journal's file work does not panic");
                    metrics.journal_bytes.set(owned.bytes() as i64);
                    files = Some(owned);
                    continue;
                }
                first = rx.recv() => match first {
                    Some(first) => first,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(entry) => batch.push(entry),
                    Err(_) => break,
                }
            }
            let Some(owned) = files.take() else { break };
            let (owned, result) = write_batch(owned, &batch, &metrics).await;
            files = Some(owned);
            match result {
                Ok(first_j) => {
                    for (i, entry) in batch.into_iter().enumerate() {
                        let command = Command::Journaled {
                            change: entry.change,
                            journal: first_j + i as u64,
                        };
                        let answer = hub.send(command).await.map_err(|_| JournalError::Stopped);
                        entry.reply.send(answer).ok();
                    }
                }
                Err(e) => {
                    for entry in batch {
                        entry.reply.send(Err(e.clone())).ok();
                    }
                }
            }
        }
    });
}

/// Appends one batch with one fsync; returns the number of its first record.
async fn write_batch(
    mut files: Files,
    batch: &[Entry],
    metrics: &Metrics,
) -> (Files, Result<u64, JournalError>) {
    let first = files.next;
    let mut lines = Vec::new();
    for (i, entry) in batch.iter().enumerate() {
        let change = &entry.change;
        let record = Record {
            j: first + i as u64,
            collection: change.collection.clone(),
            action: change.action,
            keys: change.keys.iter().map(|k| k.json.clone()).collect(),
            payload: change.payload.clone(),
        };
        // Values that came in as JSON always serialise.
        if serde_json::to_writer(&mut lines, &record).is_err() {
            return (
                files,
                Err(JournalError::Disk(
                    "a change could not be serialised".into(),
                )),
            );
        }
        lines.push(b'\n');
    }
    if files.bytes() + lines.len() as u64 > MAX_BYTES {
        return (files, Err(JournalError::Full));
    }
    let last = first + batch.len() as u64 - 1;
    let started = Instant::now();
    let (mut files, result) = tokio::task::spawn_blocking(move || {
        let result = files.append(&lines, first, last);
        (files, result)
    })
    .await
    .expect("the journal's file work does not panic");
    match result {
        Ok(()) => {
            files.next = last + 1;
            metrics.journal_syncs.inc();
            let took = started.elapsed().as_secs_f64();
            metrics.journal_last_sync.set(took);
            metrics.journal_sync_seconds.inc_by(took);
            metrics.journal_bytes.set(files.bytes() as i64);
            debug!(records = batch.len(), "webhook journal synced");
            (files, Ok(first))
        }
        Err(e) => {
            // The abandoned file may hold part of this batch: the next file gets new numbers.
            files.next = last + 1;
            metrics.journal_failures.inc();
            warn!(%e, records = batch.len(), "cannot write the webhook journal: these webhooks are answered 503 and were not taken");
            (files, Err(JournalError::Disk(e.to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(key: u64, n: u64) -> Change {
        Change {
            collection: "screens".into(),
            action: Action::Update,
            keys: vec![Key::from_json(&json!(key)).expect("key")],
            payload: Some(json!({"n": n, "s": "line\nbreak \"quoted\""})),
        }
    }

    fn files(dir: &Path, recovered: Recovered) -> Files {
        Files {
            dir: dir.to_owned(),
            active: None,
            closed: recovered.segments,
            next: recovered.next,
        }
    }

    fn journal_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(FILE_PREFIX))
            })
            .count()
    }

    async fn write(files: Files, changes: &[Change]) -> Files {
        let batch: Vec<Entry> = changes
            .iter()
            .map(|c| Entry {
                change: c.clone(),
                reply: oneshot::channel().0,
            })
            .collect();
        let (files, result) = write_batch(files, &batch, &Metrics::new()).await;
        result.expect("written");
        files
    }

    /// What is written comes back in order after a "crash", from the record after the state
    /// file's; a line cut short is where reading stops; a state write deletes what it covers.
    #[tokio::test]
    async fn records_come_back_in_order_and_are_cut_after_a_state_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = files(dir.path(), recover(dir.path(), 0).expect("empty"));
        f = write(f, &[change(1, 1), change(2, 2)]).await;
        f = write(f, &[change(1, 3)]).await;
        drop(f);
        let again = recover(dir.path(), 0).expect("read");
        let got: Vec<(u64, Change)> = again.changes.clone();
        assert_eq!(
            got,
            vec![(1, change(1, 1)), (2, change(2, 2)), (3, change(1, 3))]
        );
        assert_eq!(
            recover(dir.path(), 2).expect("read").changes,
            vec![(3, change(1, 3))]
        );

        // A crash mid-line: the torn record is not replayed, later numbering goes on.
        let path = &again.segments[0].path;
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open");
        file.write_all(br#"{"j":4,"collection":"scr"#)
            .expect("write");
        let torn = recover(dir.path(), 0).expect("read");
        assert_eq!(torn.changes.len(), 3);
        assert_eq!(torn.next, 4);

        // The state file includes record 3: the journal is emptied.
        let mut f = files(dir.path(), torn);
        f = write(f, &[change(3, 4)]).await;
        assert_eq!(journal_files(dir.path()), 2);
        f.saved(3);
        assert_eq!(journal_files(dir.path()), 1, "record 4 is kept");
        assert_eq!(
            recover(dir.path(), 3).expect("read").changes,
            vec![(4, change(3, 4))]
        );
        f = write(f, &[change(3, 5)]).await;
        f.saved(5);
        assert_eq!(journal_files(dir.path()), 0);
        assert_eq!(f.bytes(), 0);
    }

    /// A journal that cannot be written (here: its folder is a file) refuses the batch in
    /// words; nothing is half-taken.
    #[tokio::test]
    async fn a_journal_that_cannot_be_written_refuses_the_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_a_dir = dir.path().join("file");
        fs::write(&not_a_dir, b"").expect("write");
        let f = Files {
            dir: not_a_dir,
            active: None,
            closed: VecDeque::new(),
            next: 1,
        };
        let batch = vec![Entry {
            change: change(1, 1),
            reply: oneshot::channel().0,
        }];
        let metrics = Metrics::new();
        let (f, result) = write_batch(f, &batch, &metrics).await;
        assert!(matches!(result, Err(JournalError::Disk(_))), "{result:?}");
        let (_, again) = write_batch(f, &batch, &metrics).await;
        assert!(matches!(again, Err(JournalError::Disk(_))), "{again:?}");
        assert_eq!(metrics.journal_failures.get(), 2);
    }
}
