//! Saving and restoring: what the hub writes to the state file, and how it takes up where a
//! previous run left off.

use tracing::{info, warn};

use std::sync::Arc;

use super::event::{Event, EventName};
use super::replay::ReplayRing;
use super::{Hub, UpstreamSince, UpstreamState, state_file};
use crate::clock::Timestamp;

impl Hub {
    /// Takes up where a previous run left off: the mirror as it was, the cursor, and the
    /// content's time. The epoch, the seq and the replay ring continue only after a clean
    /// shutdown; otherwise events sent after the last save may be lost from the file, and
    /// reusing their seqs would make resuming kiosks skip new events, so kiosks start over with
    /// a snapshot in a new epoch. A file with a collection left out (damaged) counts as not
    /// clean (see `state_file::parse`): kiosks must not resume past content the relay lost.
    pub(super) fn restore(&mut self, mut saved: state_file::Saved) {
        self.cursor = saved.cursor;
        self.journal = saved.journal;
        self.known_current = Timestamp {
            rfc3339: saved.saved_at.clone(),
            unix: saved.saved_unix,
        };
        for (collection, items) in std::mem::take(&mut saved.mirror) {
            if self.config.collection(&collection).is_none() {
                continue;
            }
            for (key, record) in items {
                self.seen.observe(&collection, &key, &record.to_string());
                self.note_files(&collection, &key, Some(&record));
                self.mirror.put(&collection, &key, record);
            }
            self.note_mirror(&collection);
        }
        let limits = &self.config.limits;
        self.ring = ReplayRing::new(limits.replay_events, limits.replay_bytes, 0);
        if saved.clean {
            self.epoch = std::mem::take(&mut saved.epoch);
            self.seq = saved.seq;
            self.restore_ring(std::mem::take(&mut saved.ring));
            self.claim_epoch();
        } else if !saved.lost.is_empty() {
            info!(
                lost = saved.lost.join(", "),
                "part of the saved content was lost: the rest is served, and screens reload it instead of resuming"
            );
        } else {
            info!(
                saved_at = saved.saved_at,
                "the relay did not stop cleanly last time (crash, kill or power cut): the saved content is served, but screens reload it instead of resuming, since changes sent after the last save may be missing from it"
            );
        }
        if self.ring.head() != self.seq {
            let limits = &self.config.limits;
            self.ring = ReplayRing::new(limits.replay_events, limits.replay_bytes, self.seq);
        }
        self.metrics.replay_events.set(self.ring.len() as i64);
        self.metrics.replay_bytes.set(self.ring.bytes() as i64);
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

    /// Puts the saved replay ring back, so that kiosks that missed events around the restart
    /// get exactly those. Only a ring that ends at the saved seq without a gap, whose events
    /// still go by the same names to the same namespaces, is taken; otherwise resuming kiosks
    /// take a snapshot. The ring's limits are today's: a smaller ring keeps the newest events.
    fn restore_ring(&mut self, saved: Vec<state_file::SavedEvent>) {
        let Some(start) = saved.first().map(|e| e.seq).filter(|&seq| seq > 0) else {
            return;
        };
        let mut events = Vec::with_capacity(saved.len());
        let mut expected = start;
        for event in saved {
            let shape = self.shapes.get(&event.collection);
            let action = EventName::from_action(&event.action);
            let same = self.config.collection(&event.collection).is_some()
                && event.seq == expected
                && action.is_some_and(|a| shape.name(a).is_some_and(|n| **n == *event.name))
                && *shape.namespace == *event.namespace;
            let (Some(action), true) = (action, same) else {
                info!(
                    seq = event.seq,
                    collection = event.collection,
                    "the saved replay ring does not fit this configuration or has a gap; resuming screens take a snapshot"
                );
                return;
            };
            expected += 1;
            events.push(Arc::new(Event {
                seq: event.seq,
                action,
                name: shape
                    .name(action)
                    .cloned()
                    .unwrap_or_else(|| event.name.into()),
                collection: event.collection.into(),
                namespace: shape.namespace.clone(),
                room: event.room.map(Into::into),
                body: event.body,
            }));
        }
        if expected != self.seq + 1 {
            info!(
                ring_ends = expected - 1,
                seq = self.seq,
                "the saved replay ring does not end at the saved seq; resuming screens take a snapshot"
            );
            return;
        }
        let limits = &self.config.limits;
        let mut ring = ReplayRing::new(limits.replay_events, limits.replay_bytes, start - 1);
        for event in events {
            ring.push(event);
        }
        info!(
            events = ring.len(),
            "replay ring restored: screens that resume get what they missed"
        );
        self.ring = ring;
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
                Ok(bytes) => writer.offer(bytes, self.journal),
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
            journal: self.journal,
            // Only a clean file continues the epoch, so only it needs the ring.
            ring: clean.then_some(state_file::RingRef(&self.ring)),
        })
    }

    /// Hands the last write to the writer: nothing is emitted after this, so it holds the last
    /// seq, and says so (`clean`). The writer task writes it after any write in progress and
    /// ends; the tracker waits for it.
    pub(super) fn save_last(&mut self) {
        if let Some(writer) = self.writer.take() {
            match self.serialise(true) {
                Ok(bytes) => writer.offer(bytes, self.journal),
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
    use super::super::snapshot::Target;
    use super::super::testing::{change, hub, request};
    use super::super::{Hub, UpstreamState, state_file};
    use crate::clock;
    use crate::metrics::Metrics;

    fn saved_from(hub: &Hub, clean: bool) -> state_file::Saved {
        let bytes = hub.serialise(clean).expect("serialise");
        state_file::parse(&bytes).expect("the loader reads what the hub writes")
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
        let old = state_file::parse(&serde_json::to_vec(&old).expect("json"))
            .expect("an old file still loads");
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
        let writer =
            state_file::Writer::spawn(dir.path().to_owned(), metrics.clone(), None, &tracker);
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
            None,
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

    fn ring_of(hub: &Hub, since: u64) -> Option<Vec<(u64, String, String)>> {
        hub.ring.since(since).map(|events| {
            events
                .map(|e| (e.seq, e.name.to_string(), e.body.get().to_owned()))
                .collect()
        })
    }

    /// After a clean stop the ring comes back with the state: a kiosk that resumes gets exactly
    /// the events it missed, byte for byte, and new events follow on.
    #[test]
    fn a_clean_shutdown_keeps_the_replay_ring() {
        let mut before = hub_with_two_screens();
        before.apply(change("screens", Action::Delete, &[json!(1)], None));
        let kept = ring_of(&before, 0).expect("ring");
        assert_eq!(kept.len(), 4);
        let mut after = hub("");
        after.restore(saved_from(&before, true));
        assert_eq!(ring_of(&after, 0), Some(kept.clone()));
        assert_eq!(ring_of(&after, 2), Some(kept[2..].to_vec()));
        let screens = [Target {
            collection: "screens".into(),
            room: None,
        }];
        let resume = request(&["screens"], Some((&before.epoch, 1)));
        let replay = after.replay_for(&resume, &screens).expect("a replay");
        assert_eq!(replay.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);
        after.apply(change(
            "screens",
            Action::Create,
            &[json!(9)],
            Some(json!({})),
        ));
        assert_eq!(
            ring_of(&after, 4).map(|r| r.len()),
            Some(1),
            "seq 5 follows"
        );

        // A write while running leaves the ring out: only a clean file continues the epoch.
        let running = saved_from(&before, false);
        assert!(running.ring.is_empty());
        let bytes = before.serialise(false).expect("serialise");
        assert!(!String::from_utf8_lossy(&bytes).contains("\"ring\""));
    }

    /// A ring that no longer fits is not restored: kiosks take a snapshot.
    #[test]
    fn a_saved_ring_that_does_not_fit_is_left_out() {
        let before = hub_with_two_screens();
        let clean = saved_from(&before, true);

        // The collection is no longer relayed.
        let mut dropped = hub("[[collections]]\nname = \"menu\"");
        dropped.config.collections.retain(|c| c.name != "screens");
        dropped.restore(clean.clone());
        assert_eq!(dropped.epoch, before.epoch);
        assert_eq!(
            ring_of(&dropped, 0),
            None,
            "a resume from 0 gets a snapshot"
        );
        assert_eq!(ring_of(&dropped, 2), Some(vec![]));

        // A gap, or a ring that does not end at the saved seq.
        for broken in [
            {
                let mut s = clean.clone();
                s.ring.remove(0);
                s.ring.insert(0, clean.ring[1].clone());
                s
            },
            {
                let mut s = clean.clone();
                s.ring.pop();
                s
            },
        ] {
            let mut after = hub("");
            after.restore(broken);
            assert_eq!(after.seq, 2);
            assert_eq!(ring_of(&after, 0), None);
            assert_eq!(ring_of(&after, 2), Some(vec![]));
        }

        // A smaller ring today keeps the newest events.
        let mut small = hub("[limits]\nreplay_events = 1");
        small.restore(clean);
        assert_eq!(ring_of(&small, 1).map(|r| r.len()), Some(1));
        assert_eq!(ring_of(&small, 0), None);
    }

    /// A small deterministic generator (xorshift64*), so the property test needs no crate and
    /// every run checks the same cases.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
    }

    /// A JSON string with escapes, non-ASCII text and surrogate pairs.
    fn string(rng: &mut Rng) -> String {
        let parts = [
            "a",
            "Lobby",
            " ",
            "\\\"",
            "\\\\",
            "\\/",
            "\\n",
            "\\t",
            "\\b",
            "\\f",
            "\\r",
            "\\u00e9",
            "\\u005b",
            "\\ud83d\\ude00",
            "ü",
            "日本",
            "🙂",
            "[",
            "{",
            "]",
            "}",
            ",",
        ];
        let mut out = String::from("\"");
        for _ in 0..rng.below(6) {
            out.push_str(rng.pick(&parts));
        }
        out.push('"');
        out
    }

    fn scalar(rng: &mut Rng) -> String {
        let numbers = [
            "0",
            "-0",
            "1",
            "-17",
            "3.5",
            "1e5",
            "-2.5E-3",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "1.7976931348623157e308",
            "5e-324",
            "0.1",
        ];
        match rng.below(5) {
            0 => rng.pick(&numbers).to_owned(),
            1 => rng.pick(&["true", "false", "null"]).to_owned(),
            _ => string(rng),
        }
    }

    /// A value nested exactly `depth` levels deep (0: a scalar); `object` forces an object at
    /// the top.
    fn value(rng: &mut Rng, depth: usize, object: bool) -> String {
        if depth == 0 {
            return scalar(rng);
        }
        let children = 1 + rng.below(3) as usize;
        let deep_one = rng.below(children as u64) as usize;
        let items: Vec<String> = (0..children)
            .map(|i| {
                let d = if i == deep_one {
                    depth - 1
                } else {
                    rng.below(depth.min(3) as u64) as usize
                };
                value(rng, d, false)
            })
            .collect();
        if object || rng.below(2) == 0 {
            let fields: Vec<String> = items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    format!(
                        "{}:{v}",
                        if i == 0 {
                            string(rng)
                        } else {
                            format!("\"f{i}\"")
                        }
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        } else {
            format!("[{}]", items.join(","))
        }
    }

    /// Any body the webhook accepts round-trips through save and restore: what the hub holds
    /// and what it would replay come back the same, from a clean file and from one written
    /// while running; bodies nested deeper than the limit are refused with a 400 in words.
    #[test]
    fn every_accepted_webhook_body_round_trips_through_the_state_file() {
        use crate::nesting::{MAX_NESTING, depth_of_bytes};
        use crate::upstream::webhook;

        let mut rng = Rng(0x5eed_0fd1_4ec7_0a1d);
        let mut before = hub("[limits]\nreplay_events = 100000\nmirror_items = 100000");
        let (mut accepted, mut refused) = (0, 0);
        let payload_depths = (1..=MAX_NESTING + 8).chain((0..300).map(|_| 0));
        for wanted in payload_depths {
            let depth = if wanted == 0 {
                1 + rng.below(MAX_NESTING as u64 + 8) as usize
            } else {
                wanted
            };
            let action = rng.pick(&["create", "update"]);
            let key = rng.below(40);
            let key = if rng.below(2) == 0 {
                key.to_string()
            } else {
                format!("\"k{key}\"")
            };
            let body = format!(
                r#"{{"event":"screens.items.{action}","collection":"screens","keys":[{key}],"payload":{}}}"#,
                value(&mut rng, depth, true)
            );
            assert_eq!(
                depth_of_bytes(body.as_bytes(), usize::MAX),
                depth + 1,
                "{body}"
            );
            match webhook::parse(body.as_bytes()) {
                Ok(change) => {
                    assert!(depth < MAX_NESTING, "accepted at depth {}", depth + 1);
                    before.apply(change);
                    accepted += 1;
                }
                Err(reject) => {
                    assert!(
                        depth >= MAX_NESTING,
                        "refused at depth {}: {reject:?}",
                        depth + 1
                    );
                    assert_eq!(reject.status, http::StatusCode::BAD_REQUEST);
                    assert_eq!(reject.reason, "too-deep");
                    assert!(
                        reject.message.contains("deeper than 64 levels"),
                        "{}",
                        reject.message
                    );
                    refused += 1;
                }
            }
        }
        assert!(
            accepted > 200 && refused > 20,
            "{accepted} accepted, {refused} refused"
        );

        for clean in [true, false] {
            let bytes = before.serialise(clean).expect("serialise");
            let saved = state_file::parse(&bytes).expect("what the hub writes reads back");
            assert!(saved.lost.is_empty());
            let mut after = hub("[limits]\nreplay_events = 100000\nmirror_items = 100000");
            after.restore(saved);
            assert_eq!(after.mirror.len("screens"), before.mirror.len("screens"));
            for key in before.mirror.keys("screens") {
                assert_eq!(
                    after.mirror.get("screens", key),
                    before.mirror.get("screens", key)
                );
            }
            if clean {
                assert_eq!(after.seq, before.seq);
                assert_eq!(ring_of(&after, 0), ring_of(&before, 0));
            }
        }
    }

    /// The state says how far it includes the webhook journal, and keeps saying it after a
    /// restart, so the journal is cut and replayed from the right record.
    #[test]
    fn the_state_says_how_far_it_includes_the_webhook_journal() {
        let mut before = hub("");
        let journaled = |journal| super::super::Command::Journaled {
            change: change(
                "screens",
                Action::Create,
                &[json!(journal)],
                Some(json!({})),
            ),
            journal,
        };
        before.handle(journaled(7));
        before.handle(journaled(8));
        assert_eq!(before.seq, 2);
        for clean in [true, false] {
            let saved = saved_from(&before, clean);
            assert_eq!(saved.journal, 8);
            let mut after = hub("");
            after.restore(saved);
            assert_eq!(after.journal, 8);
            assert_eq!(saved_from(&after, false).journal, 8);
        }
    }
}
