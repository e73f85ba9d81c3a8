//! The mirror: the current record of every item of every relayed collection, bounded in items
//! per collection and in bytes overall.
//!
//! When a collection outgrows a bound it stops being mirrored: its records are dropped, kiosks
//! get no snapshot for it, and duplicates are recognised by the last fingerprint per key
//! ([`Fingerprints`]) instead of by the record.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value};

/// Why a collection is not mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// More items than `limits.mirror_items`.
    Items,
    /// All mirrored records together passed `limits.mirror_bytes`.
    Bytes,
}

impl Overflow {
    pub fn describe(self) -> &'static str {
        match self {
            Overflow::Items => "more items than limits.mirror_items",
            Overflow::Bytes => "the mirror passed limits.mirror_bytes",
        }
    }
}

#[derive(Debug, Default)]
struct CollectionMirror {
    items: HashMap<String, Value>,
    bytes: usize,
    overflow: Option<Overflow>,
}

/// The mirror as `{collection: {key: record}}`, collections that overflowed left out.
impl serde::Serialize for Mirror {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mirrored: Vec<_> = self
            .collections
            .iter()
            .filter(|(_, c)| c.overflow.is_none())
            .collect();
        let mut map = serializer.serialize_map(Some(mirrored.len()))?;
        for (name, c) in mirrored {
            map.serialize_entry(name, &c.items)?;
        }
        map.end()
    }
}

/// The outcome of writing a record into the mirror.
#[derive(Debug, PartialEq)]
pub enum Put {
    /// Stored; the record differs from what was there (or nothing was).
    Changed,
    /// The mirror already held exactly this record.
    Unchanged,
    /// The collection is not mirrored (now or any more).
    NotMirrored,
}

/// Current records per collection and key.
#[derive(Debug)]
pub struct Mirror {
    collections: HashMap<String, CollectionMirror>,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
}

impl Mirror {
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            collections: HashMap::new(),
            bytes: 0,
            max_items,
            max_bytes,
        }
    }

    /// The record held for `key`, if the collection is mirrored and the item known.
    pub fn get(&self, collection: &str, key: &str) -> Option<&Value> {
        self.collections.get(collection)?.items.get(key)
    }

    /// Why `collection` is not mirrored, or `None` when it is.
    pub fn overflow(&self, collection: &str) -> Option<Overflow> {
        self.collections.get(collection)?.overflow
    }

    /// Stores `record` for `key`. Returns [`Put::NotMirrored`] when the collection has
    /// overflowed, now or before; the caller then falls back to fingerprints.
    pub fn put(&mut self, collection: &str, key: &str, record: Value) -> Put {
        let c = self.collections.entry(collection.to_owned()).or_default();
        if c.overflow.is_some() {
            return Put::NotMirrored;
        }
        let size = record_size(key, &record);
        let old_size = c.items.get(key).map(|old| record_size(key, old));
        if c.items.get(key) == Some(&record) {
            return Put::Unchanged;
        }
        let overflow = if old_size.is_none() && c.items.len() >= self.max_items {
            Some(Overflow::Items)
        } else if self.bytes - old_size.unwrap_or(0) + size > self.max_bytes {
            Some(Overflow::Bytes)
        } else {
            None
        };
        if let Some(reason) = overflow {
            self.bytes -= c.bytes;
            *c = CollectionMirror {
                overflow: Some(reason),
                ..CollectionMirror::default()
            };
            return Put::NotMirrored;
        }
        c.bytes = c.bytes - old_size.unwrap_or(0) + size;
        self.bytes = self.bytes - old_size.unwrap_or(0) + size;
        c.items.insert(key.to_owned(), record);
        Put::Changed
    }

    /// Removes `key`; returns its last record when it was known.
    pub fn remove(&mut self, collection: &str, key: &str) -> Option<Value> {
        let c = self.collections.get_mut(collection)?;
        let record = c.items.remove(key)?;
        let size = record_size(key, &record);
        c.bytes -= size;
        self.bytes -= size;
        Some(record)
    }

    /// All keys and records of a mirrored collection (in no particular order), or `None` when it is
    /// not mirrored.
    pub fn snapshot(&self, collection: &str) -> Option<Vec<(&String, &Value)>> {
        match self.collections.get(collection) {
            None => Some(Vec::new()),
            Some(c) if c.overflow.is_some() => None,
            Some(c) => Some(c.items.iter().collect()),
        }
    }

    /// Keys mirrored in `collection`.
    pub fn keys(&self, collection: &str) -> impl Iterator<Item = &String> {
        self.collections
            .get(collection)
            .into_iter()
            .flat_map(|c| c.items.keys())
    }

    /// Items mirrored in `collection`.
    pub fn len(&self, collection: &str) -> usize {
        self.collections
            .get(collection)
            .map_or(0, |c| c.items.len())
    }

    /// Bytes held by all mirrored records (as serialised JSON).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Names of the collections the mirror has seen.
    pub fn collections(&self) -> impl Iterator<Item = &str> {
        self.collections.keys().map(String::as_str)
    }

    /// Items and bytes per collection, for the status page.
    pub fn stats(&self) -> Vec<crate::status_page::MirrorNote> {
        let mut stats: Vec<_> = self
            .collections
            .iter()
            .map(|(name, c)| crate::status_page::MirrorNote {
                collection: name.clone(),
                items: c.items.len(),
                bytes: c.bytes,
                overflow: c.overflow.map(Overflow::describe),
            })
            .collect();
        stats.sort_by(|a, b| a.collection.cmp(&b.collection));
        stats
    }
}

/// What a record counts for against the byte bound: its JSON text plus the key.
fn record_size(key: &str, record: &Value) -> usize {
    key.len() + serde_json::to_string(record).map_or(0, |s| s.len())
}

/// `base` with every top-level field of `patch` written over it, the way Directus applies a
/// partial update. A non-object patch leaves `base` as it is.
pub fn merge(base: &Value, patch: Option<&Value>) -> Value {
    let mut merged = match base {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    if let Some(Value::Object(fields)) = patch {
        for (k, v) in fields {
            merged.insert(k.clone(), v.clone());
        }
    }
    Value::Object(merged)
}

/// The last fingerprint seen per (collection, key), for collections that are not mirrored:
/// a change equal to the last one seen for the same item is a duplicate. Bounded; the oldest
/// entry is forgotten first, which at worst lets one duplicate through.
#[derive(Debug)]
pub struct Fingerprints {
    last: HashMap<u64, u64>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl Fingerprints {
    pub fn new(capacity: usize) -> Self {
        Self {
            last: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `state` for the item; `false` when it equals the last state recorded for it.
    pub fn observe(&mut self, collection: &str, key: &str, state: &impl Hash) -> bool {
        let item = hash(&(collection, key));
        let print = hash(state);
        match self.last.entry(item) {
            Entry::Occupied(mut e) => {
                if *e.get() == print {
                    return false;
                }
                e.insert(print);
            }
            Entry::Vacant(e) => {
                e.insert(print);
                self.order.push_back(item);
                if self.order.len() > self.capacity
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.last.remove(&oldest);
                }
            }
        }
        true
    }
}

fn hash(value: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn put_reports_changes_and_duplicates() {
        let mut m = Mirror::new(10, 1 << 20);
        assert_eq!(
            m.put("screens", "1", json!({"id": 1, "name": "Lobby"})),
            Put::Changed
        );
        assert_eq!(
            m.put("screens", "1", json!({"id": 1, "name": "Lobby"})),
            Put::Unchanged
        );
        assert_eq!(
            m.put("screens", "1", json!({"id": 1, "name": "Hall"})),
            Put::Changed
        );
        assert_eq!(
            m.get("screens", "1"),
            Some(&json!({"id": 1, "name": "Hall"}))
        );
        assert_eq!(
            m.remove("screens", "1"),
            Some(json!({"id": 1, "name": "Hall"}))
        );
        assert_eq!(m.remove("screens", "1"), None);
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn byte_accounting_follows_replacements() {
        let mut m = Mirror::new(10, 1 << 20);
        m.put("a", "1", json!({"v": "x"}));
        let one = m.bytes();
        m.put("a", "1", json!({"v": "xxxxxxxxxx"}));
        assert_eq!(m.bytes(), one + 9);
        m.put("b", "1", json!({"v": "x"}));
        assert_eq!(m.bytes(), 2 * one + 9);
        m.remove("a", "1");
        assert_eq!(m.bytes(), one);
    }

    #[test]
    fn a_collection_past_its_item_bound_stops_being_mirrored() {
        let mut m = Mirror::new(2, 1 << 20);
        m.put("screens", "1", json!({}));
        m.put("screens", "2", json!({}));
        m.put("other", "1", json!({}));
        assert_eq!(m.put("screens", "3", json!({})), Put::NotMirrored);
        assert_eq!(m.overflow("screens"), Some(Overflow::Items));
        assert_eq!(m.snapshot("screens"), None);
        assert_eq!(m.len("screens"), 0);
        assert_eq!(m.put("screens", "1", json!({})), Put::NotMirrored);
        // Other collections keep working, and the bytes of the dropped one are released.
        assert_eq!(m.snapshot("other").map(|s| s.len()), Some(1));
        assert_eq!(m.bytes(), record_size("1", &json!({})));
    }

    #[test]
    fn the_collection_that_passes_the_byte_bound_stops_being_mirrored() {
        let big = json!({"text": "x".repeat(600)});
        let mut m = Mirror::new(100, 1024);
        assert_eq!(m.put("a", "1", big.clone()), Put::Changed);
        assert_eq!(m.put("b", "1", big.clone()), Put::NotMirrored);
        assert_eq!(m.overflow("b"), Some(Overflow::Bytes));
        assert_eq!(m.overflow("a"), None);
        assert!(m.bytes() <= 1024);
    }

    #[test]
    fn unknown_collections_have_an_empty_snapshot() {
        let m = Mirror::new(1, 1024);
        assert_eq!(m.snapshot("nothing"), Some(vec![]));
    }

    #[test]
    fn merge_applies_top_level_fields() {
        let base = json!({"id": 1, "name": "Lobby", "status": "draft"});
        let merged = merge(&base, Some(&json!({"status": "published"})));
        assert_eq!(
            merged,
            json!({"id": 1, "name": "Lobby", "status": "published"})
        );
        assert_eq!(merge(&base, None), base);
        assert_eq!(merge(&base, Some(&json!(["1"]))), base);
    }

    #[test]
    fn fingerprints_drop_only_a_repeat_of_the_last_state() {
        let mut f = Fingerprints::new(10);
        assert!(f.observe("s", "1", &"published"));
        assert!(!f.observe("s", "1", &"published"));
        assert!(f.observe("s", "1", &"draft"));
        // Back to an earlier state is a real change.
        assert!(f.observe("s", "1", &"published"));
        assert!(f.observe("s", "2", &"published"));
    }

    #[test]
    fn fingerprints_are_bounded() {
        let mut f = Fingerprints::new(3);
        for key in ["1", "2", "3", "4"] {
            assert!(f.observe("s", key, &"x"));
        }
        assert_eq!(f.last.len(), 3);
        // "1" was forgotten, so its repeat passes; "4" is still known.
        assert!(f.observe("s", "1", &"x"));
        assert!(!f.observe("s", "4", &"x"));
    }
}
