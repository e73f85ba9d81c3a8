//! Ingest: changes and current records from upstream, merged into the mirror, turned into what
//! kiosks are told.

use std::collections::HashSet;

use serde_json::{Value, json};
use tracing::{debug, warn};

use super::event::{Action, Change, CurrentRecords};
use super::mirror::{self, Put};
use super::rooms::{self, Item};
use super::{Hub, Room};
use crate::config::CollectionConfig;
use crate::metrics;
use crate::nesting;

/// What a change did to a collection's items.
#[derive(Debug, Default)]
struct Outcome {
    created: Vec<Item>,
    updated: Vec<Item>,
    deleted: Vec<Item>,
}

impl Outcome {
    fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }
}

impl Hub {
    pub(super) fn apply(&mut self, change: Change) {
        // The mirror may change: snapshots serialised before no longer hold.
        self.snapshots.clear();
        let collection = change.collection.as_str();
        self.metrics
            .changes_in
            .get_or_create(&metrics::event_labels(collection, change.action.as_str()))
            .inc();
        let Some(settings) = self.config.collection(collection) else {
            debug!(collection, "change for a collection that is not relayed");
            return;
        };
        if change.payload.as_ref().is_some_and(nesting::too_deep) {
            warn!(
                collection,
                max = nesting::MAX_NESTING,
                "change skipped: its payload nests deeper than the relay takes (it could not be read back from the state file)"
            );
            return;
        }
        let routed = !settings.rooms_by.is_empty();
        let mut outcome = Outcome::default();
        match change.action {
            Action::Create | Action::Update => {
                for key in &change.keys {
                    let known = self.mirror.get(collection, &key.text).cloned();
                    let record = match &known {
                        Some(known) => mirror::merge(known, change.payload.as_ref()),
                        None => mirror::merge(
                            &json!({ settings.key_field.as_str(): key.json }),
                            change.payload.as_ref(),
                        ),
                    };
                    let fresh = self
                        .seen
                        .observe(collection, &key.text, &record.to_string());
                    self.note_files(collection, &key.text, Some(&record));
                    let changed = match self.mirror.put(collection, &key.text, record.clone()) {
                        Put::Changed => true,
                        Put::Unchanged => false,
                        Put::NotMirrored => fresh,
                    };
                    if !changed {
                        continue;
                    }
                    let item = Item {
                        key: key.text.clone(),
                        record,
                        before: known.filter(|_| routed),
                    };
                    match change.action {
                        Action::Create => outcome.created.push(item),
                        _ => outcome.updated.push(item),
                    }
                }
            }
            Action::Delete => {
                for key in &change.keys {
                    let last = self.mirror.remove(collection, &key.text);
                    self.note_files(collection, &key.text, None);
                    let fresh = self.seen.observe(collection, &key.text, &"\0deleted");
                    if last.is_some() || fresh {
                        outcome.deleted.push(Item {
                            key: key.text.clone(),
                            record: last.unwrap_or(Value::Null),
                            before: None,
                        });
                    }
                }
            }
        }
        self.note_mirror(collection);
        self.publish(&settings, change.payload.as_ref(), &outcome);
    }

    /// Replaces known records with current ones: new keys are created, changed ones updated,
    /// vanished ones deleted; what kiosks already have is not sent again.
    pub(super) fn sync(&mut self, sync: CurrentRecords) {
        self.snapshots.clear();
        let collection = sync.collection.as_str();
        let Some(settings) = self.config.collection(collection) else {
            return;
        };
        self.metrics
            .changes_in
            .get_or_create(&metrics::event_labels(collection, sync.hint.as_str()))
            .inc();
        let routed = !settings.rooms_by.is_empty();
        let mut outcome = Outcome::default();
        let mut listed = HashSet::new();
        for (key, record) in sync.items {
            listed.insert(key.text.clone());
            if record.as_ref().is_some_and(nesting::too_deep) {
                // Kept as it was (or absent): never a record the state file cannot read back.
                warn!(
                    collection,
                    key = key.text,
                    max = nesting::MAX_NESTING,
                    "record from Directus skipped: it nests deeper than the relay takes (it could not be read back from the state file); kiosks keep what they had"
                );
                continue;
            }
            let known = self.mirror.get(collection, &key.text);
            let is_known = known.is_some();
            let before = known.filter(|_| routed).cloned();
            match record {
                Some(record) => {
                    let fresh = self
                        .seen
                        .observe(collection, &key.text, &record.to_string());
                    self.note_files(collection, &key.text, Some(&record));
                    let put = self.mirror.put(collection, &key.text, record.clone());
                    let item = Item {
                        key: key.text,
                        record,
                        before,
                    };
                    match put {
                        Put::Unchanged => {}
                        Put::Changed if is_known => outcome.updated.push(item),
                        Put::Changed => outcome.created.push(item),
                        Put::NotMirrored if !fresh => {}
                        Put::NotMirrored if sync.hint == Action::Create => {
                            outcome.created.push(item)
                        }
                        Put::NotMirrored => outcome.updated.push(item),
                    }
                }
                None => {
                    self.note_files(collection, &key.text, None);
                    let last = self.mirror.remove(collection, &key.text);
                    let fresh = self.seen.observe(collection, &key.text, &"\0deleted");
                    let mirrored = self.mirror.overflow(collection).is_none();
                    if last.is_some() || (fresh && !mirrored) {
                        outcome.deleted.push(Item {
                            key: key.text,
                            record: last.unwrap_or(Value::Null),
                            before: None,
                        });
                    }
                }
            }
        }
        if sync.complete && self.mirror.overflow(collection).is_none() {
            let gone: Vec<String> = self
                .mirror
                .keys(collection)
                .filter(|k| !listed.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                self.note_files(collection, &key, None);
                if let Some(last) = self.mirror.remove(collection, &key) {
                    self.seen.observe(collection, &key, &"\0deleted");
                    outcome.deleted.push(Item {
                        key,
                        record: last,
                        before: None,
                    });
                }
            }
        }
        self.note_mirror(collection);
        self.publish(&settings, sync.payload.as_ref(), &outcome);
    }

    /// Tells kiosks what a change did: the collection's room first, then every routed room
    /// the change touched.
    fn publish(&mut self, settings: &CollectionConfig, payload: Option<&Value>, outcome: &Outcome) {
        let collection = settings.name.as_str();
        if outcome.is_empty() {
            self.duplicate(collection);
            return;
        }
        let whole = rooms::RoomChange {
            arrived: outcome.created.iter().collect(),
            updated: outcome.updated.iter().collect(),
            left: Vec::new(),
            deleted: outcome.deleted.iter().collect(),
        };
        self.emit_change(collection, None, payload, &whole);
        for field in &settings.rooms_by {
            let plan = rooms::plan(field, &outcome.created, &outcome.updated, &outcome.deleted);
            for (value, change) in &plan {
                let room = Room {
                    name: rooms::room_name(collection, field, value),
                    filter: json!({ field.as_str(): value }),
                    field: field.clone(),
                    value: value.clone(),
                };
                self.emit_change(collection, Some(&room), payload, change);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::event::{Action, CurrentRecords, Key};
    use super::super::rooms;
    use super::super::snapshot::Target;
    use super::super::testing::{change, events, hub};
    use super::super::{Room, UpstreamState};

    #[test]
    fn assigns_consecutive_seqs_and_builds_records() {
        let mut hub = hub("");
        hub.apply(change(
            "screens",
            Action::Create,
            &[json!(1)],
            Some(json!({"name": "Lobby"})),
        ));
        hub.apply(change(
            "channels",
            Action::Create,
            &[json!("news")],
            Some(json!({"label": "News"})),
        ));
        hub.apply(change(
            "screens",
            Action::Update,
            &[json!("1")],
            Some(json!({"status": "on"})),
        ));
        hub.apply(change("screens", Action::Delete, &[json!(1)], None));
        let got = events(&hub, 0);
        let names: Vec<(u64, &str)> = got.iter().map(|(s, n, _)| (*s, n.as_str())).collect();
        assert_eq!(
            names,
            vec![
                (1, "data.create"),
                (2, "data.create"),
                (3, "data.update"),
                (4, "data.pre-delete"),
                (5, "data.delete")
            ]
        );
        assert_eq!(got[0].2["record"], json!({"id": 1, "name": "Lobby"}));
        assert_eq!(got[0].2["keys"], json!(["1"]));
        assert_eq!(
            got[1].2["record"],
            json!({"slug": "news", "label": "News"}),
            "key_field"
        );
        assert_eq!(
            got[2].2["records"],
            json!([{"id": 1, "name": "Lobby", "status": "on"}])
        );
        assert_eq!(got[2].2["payload"], json!({"status": "on"}));
        assert_eq!(
            got[3].2["records"], got[2].2["records"],
            "pre-delete has the last record"
        );
        assert_eq!(got[4].2["records"], got[2].2["records"]);
        assert!(got[4].2.get("payload").is_none());
        assert_eq!(hub.mirror.get("screens", "1"), None);
        assert_eq!(hub.seq, 5);
    }

    #[test]
    fn drops_what_kiosks_already_have() {
        let mut hub = hub("");
        let create = change(
            "screens",
            Action::Create,
            &[json!(1)],
            Some(json!({"name": "A"})),
        );
        hub.apply(create.clone());
        hub.apply(create);
        hub.apply(change(
            "screens",
            Action::Update,
            &[json!(1)],
            Some(json!({"name": "A"})),
        ));
        assert_eq!(hub.seq, 1, "same record: nothing new");
        // An update of several keys carries only those that changed.
        hub.apply(change(
            "screens",
            Action::Create,
            &[json!(2)],
            Some(json!({"name": "B"})),
        ));
        hub.apply(change(
            "screens",
            Action::Update,
            &[json!(1), json!(2)],
            Some(json!({"name": "B"})),
        ));
        let last = events(&hub, 2);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].2["keys"], json!(["1"]));
        // A delete of an item already deleted is dropped; of one never seen, it is sent.
        hub.apply(change("screens", Action::Delete, &[json!(1)], None));
        hub.apply(change("screens", Action::Delete, &[json!(1)], None));
        assert_eq!(hub.seq, 5);
        hub.apply(change("screens", Action::Delete, &[json!(99)], None));
        let last = events(&hub, 5);
        assert_eq!(last.len(), 2);
        assert_eq!(last[1].2["records"], json!([null]), "never seen: no record");
        // Unrelayed collections are ignored.
        hub.apply(change("other", Action::Create, &[json!(1)], None));
        assert_eq!(hub.seq, 7);
    }

    #[test]
    fn a_collection_past_its_bound_is_still_relayed_and_deduplicated() {
        let mut hub = hub("[limits]\nmirror_items = 2");
        for key in 1..=3 {
            hub.apply(change(
                "screens",
                Action::Create,
                &[json!(key)],
                Some(json!({"n": key})),
            ));
        }
        assert_eq!(
            hub.seq, 3,
            "the third create is relayed although not mirrored"
        );
        assert_eq!(hub.mirror.snapshot("screens"), None);
        hub.apply(change(
            "screens",
            Action::Update,
            &[json!(3)],
            Some(json!({"n": 4})),
        ));
        hub.apply(change(
            "screens",
            Action::Update,
            &[json!(3)],
            Some(json!({"n": 4})),
        ));
        assert_eq!(hub.seq, 4, "the repeat is recognised by fingerprint");
    }

    /// A create for a key the relay already holds, with another room value, moves the item:
    /// the old room is told it left (`data.delete`, as for an update), the new one that it
    /// arrived, and a snapshot of the old room no longer holds it.
    #[test]
    fn a_create_that_moves_a_known_key_tells_the_old_room_it_left() {
        let mut hub = hub("[[collections]]\nname = \"news\"\nrooms_by = [\"screen\"]");
        hub.apply(change(
            "news",
            Action::Create,
            &[json!("a1")],
            Some(json!({"id": "a1", "screen": 1})),
        ));
        let before = hub.seq;
        hub.apply(change(
            "news",
            Action::Create,
            &[json!("a1")],
            Some(json!({"id": "a1", "screen": 2})),
        ));
        let told: Vec<(String, Value, Value)> = events(&hub, before)
            .into_iter()
            .map(|(_, name, body)| (name, body["where"].clone(), body["keys"].clone()))
            .collect();
        assert_eq!(
            told,
            [
                ("data.create".into(), Value::Null, json!(["a1"])),
                ("data.delete".into(), json!({"screen": "1"}), json!(["a1"])),
                ("data.create".into(), json!({"screen": "2"}), json!(["a1"])),
            ]
        );
        let room = |value: &str| Target {
            collection: "news".into(),
            room: Some(Room {
                name: rooms::room_name("news", "screen", value),
                filter: json!({ "screen": value }),
                field: "screen".into(),
                value: value.into(),
            }),
        };
        assert_eq!(
            hub.snapshot(&room("1")),
            json!({"mode": "snapshot", "items": []})
        );
        assert_eq!(
            hub.snapshot(&room("2"))["items"],
            json!([{"id": "a1", "screen": 2}])
        );
        // A create that keeps the item where it was tells no room that it left.
        let before = hub.seq;
        hub.apply(change(
            "news",
            Action::Create,
            &[json!("a1")],
            Some(json!({"title": "same screen"})),
        ));
        let names: Vec<String> = events(&hub, before).into_iter().map(|e| e.1).collect();
        assert_eq!(names, ["data.create", "data.create"]);
    }

    /// Changes accepted during the shutdown grace period reach the hub after the Socket.IO
    /// server is closed: they are still applied (and saved), nothing panics.
    #[test]
    fn changes_after_the_socket_io_server_closed_are_still_applied() {
        let mut hub = hub("");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(hub.io.close());
        hub.apply(change(
            "screens",
            Action::Create,
            &[json!(1)],
            Some(json!({})),
        ));
        hub.set_upstream(UpstreamState::Offline);
        assert_eq!(hub.seq, 1);
        assert_eq!(hub.mirror.len("screens"), 1);
    }

    /// What could not be read back from the state file is never taken in: a record from
    /// Directus nested past the limit is skipped (the item stays as it was, even in a complete
    /// re-read), and so is a change whose payload nests past it.
    #[test]
    fn records_nested_past_the_limit_are_skipped() {
        let nested = |depth: usize| (1..depth).fold(json!([]), |v, _| json!([v]));
        let mut hub = hub("");
        hub.apply(change(
            "screens",
            Action::Create,
            &[json!(1)],
            Some(json!({"v": 1})),
        ));
        let deep = json!({"id": 1, "deep": nested(crate::nesting::MAX_NESTING)});
        let fits = json!({"id": 2, "deep": nested(crate::nesting::MAX_NESTING - 1)});
        hub.sync(CurrentRecords {
            collection: "screens".into(),
            items: vec![
                (Key::from_json(&json!(1)).expect("key"), Some(deep.clone())),
                (Key::from_json(&json!(2)).expect("key"), Some(fits.clone())),
            ],
            hint: Action::Update,
            complete: true,
            payload: None,
        });
        assert_eq!(
            hub.mirror.get("screens", "1"),
            Some(&json!({"id": 1, "v": 1}))
        );
        assert_eq!(hub.mirror.get("screens", "2"), Some(&fits));
        assert_eq!(hub.seq, 2, "only the record that fits is told");
        hub.apply(change("screens", Action::Update, &[json!(2)], Some(deep)));
        assert_eq!(hub.seq, 2);
        assert_eq!(hub.mirror.get("screens", "2"), Some(&fits));
    }
}
