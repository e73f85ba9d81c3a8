//! Saving and restoring: what the hub writes to the state file, and how it takes up where a
//! previous run left off.

use tracing::{info, warn};

use super::replay::ReplayRing;
use super::{Hub, UpstreamSince, UpstreamState, state_file};
use crate::clock::Timestamp;

impl Hub {
    /// Takes up where a previous run left off: the mirror as it was, the cursor, and the
    /// content's time. The epoch and seq continue only after a clean shutdown; otherwise events
    /// sent after the last save may be lost from the file, and reusing their seqs would make
    /// resuming kiosks skip new events, so kiosks start over with a snapshot in a new epoch.
    pub(super) fn restore(&mut self, saved: state_file::Saved) {
        self.cursor = saved.cursor;
        self.known_current = Timestamp {
            rfc3339: saved.saved_at.clone(),
            unix: saved.saved_unix,
        };
        for (collection, items) in saved.mirror {
            if self.config.collection(&collection).is_none() {
                continue;
            }
            for (key, record) in items {
                self.seen.observe(&collection, &key, &record.to_string());
                self.mirror.put(&collection, &key, record);
            }
            self.note_mirror(&collection);
        }
        if saved.clean {
            self.epoch = saved.epoch;
            self.seq = saved.seq;
            self.claim_epoch();
        } else {
            info!(
                saved_at = saved.saved_at,
                "the relay did not stop cleanly last time (crash, kill or power cut): the saved content is served, but screens reload it instead of resuming, since changes sent after the last save may be missing from it"
            );
        }
        let limits = &self.config.limits;
        self.ring = ReplayRing::new(limits.replay_events, limits.replay_bytes, self.seq);
        // Until upstream says otherwise, kiosks are told the content is from the last save.
        let state = if self.config.directus.is_some() {
            UpstreamState::Offline
        } else {
            UpstreamState::Live
        };
        self.upstream = UpstreamSince {
            state,
            since: saved.saved_at,
        };
        self.metrics.seq.set(self.seq as i64);
    }

    /// Marks the state file as not clean before the first event of a continued epoch, so a
    /// crash from now on starts a new epoch. When that cannot be written, the epoch is not
    /// continued: the file would still say clean with a seq kiosks are about to pass.
    fn claim_epoch(&mut self) {
        let Some(writer) = &self.writer else {
            return;
        };
        let written = self
            .serialise(false)
            .map_err(std::io::Error::other)
            .and_then(|bytes| writer.write_now(&bytes));
        if let Err(e) = written {
            warn!(%e, "cannot write the state file: screens reload the content instead of resuming");
            self.epoch = crate::random_hex(8);
            self.seq = 0;
        }
    }

    /// Offers the current state to the writer when it changed.
    pub(super) fn save_if_dirty(&mut self) {
        if !self.dirty {
            return;
        }
        if let Some(writer) = &self.writer {
            match self.serialise(false) {
                Ok(bytes) => writer.offer(bytes),
                Err(e) => {
                    warn!(%e, "cannot serialise the state (a bug): the last known content will not survive a restart; please report this")
                }
            }
        }
        self.dirty = false;
    }

    /// The state file's contents; `clean` only for the last write, after the last event.
    fn serialise(&self, clean: bool) -> serde_json::Result<Vec<u8>> {
        let saved = match self.upstream.state {
            UpstreamState::Live => Timestamp::now(),
            UpstreamState::CatchingUp | UpstreamState::Offline => self.known_current.clone(),
        };
        serde_json::to_vec(&state_file::SavedRef {
            version: state_file::VERSION,
            epoch: &self.epoch,
            seq: self.seq,
            cursor: self.cursor,
            saved_at: saved.rfc3339,
            saved_unix: saved.unix,
            clean,
            mirror: &self.mirror,
        })
    }

    /// Hands the last write to the writer: nothing is emitted after this, so it holds the last
    /// seq, and says so (`clean`). The writer task writes it after any write in progress and
    /// ends; the tracker waits for it.
    pub(super) fn save_last(&mut self) {
        if let Some(writer) = self.writer.take() {
            match self.serialise(true) {
                Ok(bytes) => writer.offer(bytes),
                Err(e) => {
                    warn!(%e, "cannot serialise the state (a bug): the last known content will not survive a restart; please report this")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};
    use tokio_util::task::TaskTracker;

    use super::super::event::Action;
    use super::super::subscribe::Target;
    use super::super::testing::{change, hub, request};
    use super::super::{Hub, UpstreamState, state_file};
    use crate::clock;
    use crate::metrics::Metrics;

    fn saved_from(hub: &Hub, clean: bool) -> state_file::Saved {
        let bytes = hub.serialise(clean).expect("serialise");
        serde_json::from_slice(&bytes).expect("the loader reads what the hub writes")
    }

    fn hub_with_two_screens() -> Hub {
        let mut hub = hub("");
        for key in 1..=2 {
            hub.apply(change(
                "screens",
                Action::Create,
                &[json!(key)],
                Some(json!({"n": key})),
            ));
        }
        hub.cursor = Some(42);
        hub
    }

    #[test]
    fn a_clean_shutdown_continues_the_epoch() {
        let before = hub_with_two_screens();
        let mut after = hub("");
        after.restore(saved_from(&before, true));
        assert_eq!(
            (after.epoch.as_str(), after.seq),
            (before.epoch.as_str(), 2)
        );
        assert_eq!(after.cursor, Some(42));
        assert_eq!(after.mirror.len("screens"), 2);
        let screens = [Target {
            collection: "screens".into(),
            room: None,
        }];
        let resume = request(&["screens"], Some((&before.epoch, 2)));
        assert_eq!(
            after.replay_for(&resume, &screens).map(|e| e.len()),
            Some(0)
        );
        after.apply(change(
            "screens",
            Action::Create,
            &[json!(3)],
            Some(json!({})),
        ));
        assert_eq!(after.seq, 3, "seq continues");
    }

    /// A state written while running may lag behind what kiosks were sent: restoring it keeps
    /// the content and cursor but starts a new epoch, so no seq is handed out twice.
    #[test]
    fn a_state_not_written_at_shutdown_starts_a_new_epoch() {
        let before = hub_with_two_screens();
        let saved = saved_from(&before, false);
        assert!(!saved.clean);
        let mut after = hub("");
        after.restore(saved);
        assert_ne!(after.epoch, before.epoch);
        assert_eq!(after.seq, 0);
        assert_eq!(after.cursor, Some(42), "the cursor is kept");
        assert_eq!(after.mirror.len("screens"), 2, "the content is kept");
        let screens = [Target {
            collection: "screens".into(),
            room: None,
        }];
        let resume = request(&["screens"], Some((&before.epoch, 2)));
        assert!(
            after.replay_for(&resume, &screens).is_none(),
            "a kiosk of the old epoch gets a snapshot"
        );
        after.apply(change(
            "screens",
            Action::Create,
            &[json!(3)],
            Some(json!({})),
        ));
        assert_eq!(after.seq, 1);

        // Files from before the field existed count as not clean.
        let mut old: Value =
            serde_json::from_slice(&before.serialise(true).expect("serialise")).expect("json");
        old.as_object_mut().expect("object").remove("clean");
        let old: state_file::Saved = serde_json::from_value(old).expect("an old file still loads");
        assert!(!old.clean);
        let mut after = hub("");
        after.restore(old);
        assert_ne!(after.epoch, before.epoch);
        assert_eq!(after.mirror.len("screens"), 2);
    }

    /// Continuing an epoch first marks the file on disk as not clean, so a crash later in this
    /// run cannot continue it again; if that write fails, the epoch is not continued.
    #[tokio::test]
    async fn a_continued_epoch_is_marked_unclean_on_disk_before_anything_is_sent() {
        let before = hub_with_two_screens();
        let dir = tempfile::tempdir().expect("tempdir");
        let tracker = TaskTracker::new();
        let metrics = Arc::new(Metrics::new());
        let writer = state_file::Writer::spawn(dir.path().to_owned(), metrics.clone(), &tracker);
        let mut after = hub("");
        after.writer = Some(writer);
        after.restore(saved_from(&before, true));
        assert_eq!(after.epoch, before.epoch);
        let on_disk = state_file::load(dir.path()).expect("written at once");
        assert!(!on_disk.clean);
        assert_eq!(
            (on_disk.epoch.as_str(), on_disk.seq),
            (before.epoch.as_str(), 2)
        );
        assert_eq!(metrics.state_writes.get(), 1);
        // The relay is killed now: the next start does not continue the epoch.
        let mut next = hub("");
        next.restore(on_disk);
        assert_ne!(next.epoch, before.epoch);

        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"").expect("write");
        let mut unwritable = hub("");
        unwritable.writer = Some(state_file::Writer::spawn(
            not_a_dir,
            metrics.clone(),
            &tracker,
        ));
        unwritable.restore(saved_from(&before, true));
        assert_ne!(unwritable.epoch, before.epoch);
        assert_eq!(unwritable.seq, 0);
        assert_eq!(unwritable.mirror.len("screens"), 2);
        assert_eq!(metrics.state_write_failures.get(), 1);
    }

    /// While Directus is away the file keeps the time the content was last known current, so
    /// restarts without an uplink keep telling kiosks the content's real age.
    #[test]
    fn the_saved_time_is_when_the_content_was_last_current() {
        let mut hub =
            hub("[directus]\nurl = \"https://cms.example.com\"\ntoken = \"0123456789abcdef\"");
        let mut saved = saved_from(&hub_with_two_screens(), true);
        saved.saved_at = "2026-11-28T17:00:00.000Z".into();
        saved.saved_unix = 1_795_885_200;
        hub.restore(saved);
        assert_eq!(hub.relay_status()["upstream"], "offline");
        assert_eq!(hub.relay_status()["since"], "2026-11-28T17:00:00.000Z");
        let again = saved_from(&hub, true);
        assert_eq!(
            (again.saved_at.as_str(), again.saved_unix),
            ("2026-11-28T17:00:00.000Z", 1_795_885_200)
        );
        hub.set_upstream(UpstreamState::CatchingUp);
        assert_eq!(saved_from(&hub, true).saved_unix, 1_795_885_200);
        hub.set_upstream(UpstreamState::Offline);
        assert_eq!(
            hub.relay_status()["since"],
            "2026-11-28T17:00:00.000Z",
            "a failed catch-up does not make the content newer"
        );
        hub.set_upstream(UpstreamState::Live);
        let live = saved_from(&hub, true);
        assert!(live.saved_unix >= clock::unix_now() - 60, "live: now");
        hub.set_upstream(UpstreamState::Offline);
        let offline = saved_from(&hub, true);
        assert!(offline.saved_unix >= live.saved_unix);
        assert_ne!(offline.saved_at, "2026-11-28T17:00:00.000Z");
    }
}
