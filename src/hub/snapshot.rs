//! Snapshots: the current items of a collection or routed room as kiosks receive them,
//! serialised once and shared by every kiosk that asks until the mirror changes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::event::Event;
use super::rooms;
use super::{Hub, Room};

/// A collection, or one of its routed rooms, that a kiosk subscribed to.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) collection: String,
    pub(super) room: Option<Room>,
}

impl Target {
    pub(super) fn room_name(&self) -> String {
        match &self.room {
            Some(room) => room.name.clone(),
            None => self.collection.clone(),
        }
    }

    /// Whether `event` went to this target's room.
    pub(super) fn matches(&self, event: &Event) -> bool {
        match (&self.room, &event.room) {
            (None, None) => *event.collection == *self.collection,
            (Some(room), Some(name)) => **name == *room.name,
            _ => false,
        }
    }
}

/// Snapshots as kiosks receive them, serialised once per target (collection or routed room)
/// and shared by every kiosk that asks for it until the mirror changes: a crowd of screens
/// that power on together costs one serialisation, not one each. Holds at most `max_bytes`
/// (`limits.mirror_bytes`); past that, snapshots are serialised for each kiosk as before.
#[derive(Debug)]
pub(super) struct SnapshotCache {
    entries: HashMap<String, Arc<RawValue>>,
    bytes: usize,
    max_bytes: usize,
}

impl SnapshotCache {
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Forgets every snapshot: the mirror is about to change.
    pub(super) fn clear(&mut self) {
        if !self.entries.is_empty() {
            self.entries.clear();
            self.bytes = 0;
        }
    }

    pub(super) fn get(&self, room: &str) -> Option<Arc<RawValue>> {
        self.entries.get(room).cloned()
    }

    fn keep(&mut self, room: String, entry: &Arc<RawValue>) {
        let size = entry.get().len();
        if self.bytes + size <= self.max_bytes {
            self.bytes += size;
            self.entries.insert(room, entry.clone());
        }
    }
}

impl Hub {
    /// A target's snapshot entry for an ack, serialised once and shared until the mirror
    /// changes.
    pub(super) fn shared_snapshot(&mut self, target: &Target) -> Arc<RawValue> {
        let room = target.room_name();
        if let Some(entry) = self.snapshots.get(&room) {
            return entry;
        }
        let entry = ack_entry(target, self.snapshot(target));
        self.snapshots.keep(room, &entry);
        entry
    }

    /// The current items of a target as kiosks receive them (projected, or just their keys
    /// when compact), or why there are none.
    pub(super) fn snapshot(&self, target: &Target) -> Value {
        let collection = target.collection.as_str();
        match self.mirror.snapshot(collection) {
            Some(mut items) => {
                if let Some(room) = &target.room {
                    items.retain(|(_, record)| {
                        rooms::values(record, &room.field).contains(&room.value)
                    });
                }
                self.shaped_snapshot(collection, items)
            }
            None => json!({
                "mode": "none",
                "reason": self.mirror.overflow(collection).map(|o| o.describe()),
            }),
        }
    }

    /// A snapshot of `items` of `collection` as kiosks receive it: projected, or just the keys
    /// when compact.
    fn shaped_snapshot(&self, collection: &str, items: Vec<(&String, &Value)>) -> Value {
        let shape = self.shapes.get(collection);
        if shape.compact {
            let keys: Vec<&str> = items.iter().map(|(key, _)| key.as_str()).collect();
            return json!({ "mode": "snapshot", "keys": keys });
        }
        let items: Vec<Cow<Value>> = items
            .into_iter()
            .map(|(_, record)| shape.project(record))
            .collect();
        json!({ "mode": "snapshot", "items": items })
    }

    /// Serialises the snapshots of the routed rooms among `targets` that are not shared yet,
    /// with one pass over a collection for all its rooms by the same field rather than one
    /// pass per room: returned by room name for this answer, and kept for the next kiosks
    /// (within the cache's bound).
    pub(super) fn prepare_rooms(&mut self, targets: &[Target]) -> HashMap<String, Arc<RawValue>> {
        let mut wanted: BTreeMap<(&str, &str), BTreeMap<&str, &Target>> = BTreeMap::new();
        for target in targets {
            if let Some(room) = &target.room
                && self.snapshots.get(&room.name).is_none()
            {
                wanted
                    .entry((target.collection.as_str(), room.field.as_str()))
                    .or_default()
                    .insert(room.value.as_str(), target);
            }
        }
        let mut prepared = Vec::new();
        for ((collection, field), rooms) in wanted {
            let Some(items) = self.mirror.snapshot(collection).filter(|_| rooms.len() > 1) else {
                continue;
            };
            let mut by_value: HashMap<&str, Vec<(&String, &Value)>> = HashMap::new();
            for (key, record) in items {
                for value in rooms::values(record, field) {
                    if let Some((value, _)) = rooms.get_key_value(value.as_str()) {
                        by_value.entry(value).or_default().push((key, record));
                    }
                }
            }
            for (value, target) in rooms {
                let items = by_value.remove(value).unwrap_or_default();
                let entry = ack_entry(target, self.shaped_snapshot(collection, items));
                prepared.push((target.room_name(), entry));
            }
        }
        for (room, entry) in &prepared {
            self.snapshots.keep(room.clone(), entry);
        }
        prepared.into_iter().collect()
    }
}

/// A target's entry in an ack, serialised: a routed room's also names its collection and
/// `where`.
pub(super) fn ack_entry(target: &Target, mut entry: Value) -> Arc<RawValue> {
    if let Some(room) = &target.room {
        entry["collection"] = json!(target.collection);
        entry["where"] = room.filter.clone();
    }
    // Serialising a JSON value cannot fail: its keys are strings and its numbers finite.
    Arc::from(serde_json::value::to_raw_value(&entry).expect("a JSON value serialises"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::event::Action;
    use super::super::rooms;
    use super::super::testing::{change, hub};
    use super::{SnapshotCache, Target};

    #[test]
    fn a_snapshot_is_serialised_once_until_the_mirror_changes() {
        let mut hub = hub("");
        hub.apply(change(
            "screens",
            Action::Create,
            &[json!(1)],
            Some(json!({"name": "Lobby"})),
        ));
        let screens = Target {
            collection: "screens".into(),
            room: None,
        };
        let first = hub.shared_snapshot(&screens);
        let second = hub.shared_snapshot(&screens);
        assert!(
            Arc::ptr_eq(&first, &second),
            "the second kiosk shares the bytes"
        );
        let body: serde_json::Value = serde_json::from_str(first.get()).expect("JSON");
        assert_eq!(
            body,
            json!({"mode": "snapshot", "items": [{"id": 1, "name": "Lobby"}]})
        );

        hub.apply(change(
            "screens",
            Action::Update,
            &[json!(1)],
            Some(json!({"name": "Hall"})),
        ));
        let after = hub.shared_snapshot(&screens);
        assert!(!Arc::ptr_eq(&first, &after), "a change serialises anew");
        assert!(after.get().contains("Hall"), "{}", after.get());
    }

    #[test]
    fn rooms_prepared_in_one_pass_are_the_rooms_snapshots() {
        let mut hub = hub("[[collections]]\nname = \"notes\"\nrooms_by = [\"place\"]");
        let places = [
            json!("hall"),
            json!("lobby"),
            json!(["hall", "lobby"]),
            json!(7),
        ];
        for (key, place) in places.iter().enumerate() {
            hub.apply(change(
                "notes",
                Action::Create,
                &[json!(key)],
                Some(json!({"place": place, "text": format!("note {key}")})),
            ));
        }
        let target = |value: &str| Target {
            collection: "notes".into(),
            room: Some(super::Room {
                name: rooms::room_name("notes", "place", value),
                filter: json!({ "place": value }),
                field: "place".into(),
                value: value.into(),
            }),
        };
        let targets = [
            target("hall"),
            target("lobby"),
            target("7"),
            target("attic"),
        ];
        let mut prepared = hub.prepare_rooms(&targets);
        for target in &targets {
            let kept = hub
                .snapshots
                .get(&target.room_name())
                .expect("kept for the next kiosk");
            let prepared = prepared.remove(&target.room_name()).expect("prepared");
            assert!(Arc::ptr_eq(&kept, &prepared), "the same bytes");
            let alone = super::ack_entry(target, hub.snapshot(target));
            let parse = |raw: &serde_json::value::RawValue| {
                let mut v: serde_json::Value = serde_json::from_str(raw.get()).expect("JSON");
                if let Some(items) = v["items"].as_array_mut() {
                    items.sort_by_key(|i| i["text"].to_string());
                }
                v
            };
            assert_eq!(parse(&prepared), parse(&alone), "{}", target.room_name());
        }
        let hall = hub.snapshots.get(&targets[0].room_name()).expect("hall");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(hall.get()).expect("JSON")["items"]
                .as_array()
                .map(Vec::len),
            Some(2),
            "hall holds the note in the hall and the one in both"
        );
    }

    #[test]
    fn the_snapshot_cache_keeps_no_more_than_its_bound() {
        let raw = |text: &str| Arc::from(serde_json::value::to_raw_value(text).expect("JSON"));
        let mut cache = SnapshotCache::new(24);
        cache.keep("screens".into(), &raw("0123456789")); // 12 bytes with its quotes
        cache.keep("channels".into(), &raw("0123456789"));
        cache.keep("menus".into(), &raw("0123456789"));
        assert!(cache.get("screens").is_some() && cache.get("channels").is_some());
        assert!(cache.get("menus").is_none(), "past the bound: not kept");
        assert_eq!(cache.bytes, 24);
        cache.clear();
        assert!(cache.get("screens").is_none());
        assert_eq!(cache.bytes, 0);
    }
}
