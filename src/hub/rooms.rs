//! Routed rooms: per collection, fields whose values name rooms (`rooms_by`), so a kiosk can
//! follow just the items for its screen. When an update, or a create for a key the relay
//! already holds, moves an item from one value to another, the old room is told it left
//! (`data.delete`) and the new one that it arrived (`data.create`) — the case Directus's own
//! filtered subscriptions never report.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The room of the items of `collection` whose `field` has `value`.
pub fn room_name(collection: &str, field: &str, value: &str) -> String {
    format!("{collection}[{field}={value}]")
}

/// The room values of `record` for `field`: a path such as `screen` or `screen.code`. A
/// related item (an object) routes by its `id`; a list routes by each of its elements; null
/// or a missing field routes nowhere.
pub fn values(record: &Value, field: &str) -> BTreeSet<String> {
    let mut value = record;
    for part in field.split('.') {
        match value.get(part) {
            Some(inner) => value = inner,
            None => return BTreeSet::new(),
        }
    }
    let mut out = BTreeSet::new();
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect(v, &mut out)),
        other => collect(other, &mut out),
    }
    out
}

fn collect(value: &Value, out: &mut BTreeSet<String>) {
    let value = match value {
        Value::Object(related) => related.get("id").unwrap_or(&Value::Null),
        other => other,
    };
    if let Some(text) = scalar(value) {
        out.insert(text);
    }
}

/// A value as a room name part: strings as they are, numbers and booleans as written in JSON.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One item as an event reports it: its key, its record (the last known one for a delete), and
/// for an update its record before the change, when the relay knew it.
#[derive(Debug)]
pub struct Item {
    pub key: String,
    pub record: Value,
    pub before: Option<Value>,
}

/// What one routed room is told about a change.
#[derive(Debug, Default)]
pub struct RoomChange<'a> {
    /// Created, or moved in from another value: `data.create` each.
    pub arrived: Vec<&'a Item>,
    /// Updated and still here: one `data.update`.
    pub updated: Vec<&'a Item>,
    /// Updated and moved to another value: one `data.delete`.
    pub left: Vec<&'a Item>,
    /// Deleted: `data.pre-delete` and `data.delete`.
    pub deleted: Vec<&'a Item>,
}

/// Splits a change into what each value's room of `field` is told. An update whose earlier
/// record is unknown counts as staying where it is now. A create of a key the relay already
/// held (Directus re-created it, or a catch-up saw it first) is a create in every room it is
/// in now, and, like an update, leaves the rooms of its earlier record that it is no longer in.
pub fn plan<'a>(
    field: &str,
    created: &'a [Item],
    updated: &'a [Item],
    deleted: &'a [Item],
) -> BTreeMap<String, RoomChange<'a>> {
    let mut rooms: BTreeMap<String, RoomChange<'a>> = BTreeMap::new();
    for item in created {
        let now = values(&item.record, field);
        for value in &now {
            rooms.entry(value.clone()).or_default().arrived.push(item);
        }
        leave(&mut rooms, field, item, &now);
    }
    for item in updated {
        let now = values(&item.record, field);
        let before = match &item.before {
            Some(before) => values(before, field),
            None => now.clone(),
        };
        for value in &now {
            let room = rooms.entry(value.clone()).or_default();
            if before.contains(value) {
                room.updated.push(item);
            } else {
                room.arrived.push(item);
            }
        }
        leave(&mut rooms, field, item, &now);
    }
    for item in deleted {
        for value in values(&item.record, field) {
            rooms.entry(value).or_default().deleted.push(item);
        }
    }
    rooms
}

/// Tells the rooms of `item`'s earlier record that it is no longer in (`now`) that it left.
fn leave<'a>(
    rooms: &mut BTreeMap<String, RoomChange<'a>>,
    field: &str,
    item: &'a Item,
    now: &BTreeSet<String>,
) {
    let Some(before) = &item.before else { return };
    for value in values(before, field).difference(now) {
        rooms.entry(value.clone()).or_default().left.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(key: &str, record: Value, before: Option<Value>) -> Item {
        Item {
            key: key.into(),
            record,
            before,
        }
    }

    #[test]
    fn values_follow_scalars_related_items_lists_and_paths() {
        let record = json!({
            "screen": 12,
            "zone": "lobby",
            "live": true,
            "owner": {"id": "7f3c", "code": "B2"},
            "screens": [1, {"id": 2}, null],
            "none": null,
        });
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(values(&record, "screen"), set(&["12"]));
        assert_eq!(values(&record, "zone"), set(&["lobby"]));
        assert_eq!(values(&record, "live"), set(&["true"]));
        assert_eq!(values(&record, "owner"), set(&["7f3c"]));
        assert_eq!(values(&record, "owner.code"), set(&["B2"]));
        assert_eq!(values(&record, "screens"), set(&["1", "2"]));
        assert!(values(&record, "none").is_empty());
        assert!(values(&record, "missing").is_empty());
        assert!(values(&record, "zone.inner").is_empty());
    }

    #[test]
    fn a_move_leaves_one_room_and_arrives_in_another() {
        let created = [item("1", json!({"id": 1, "screen": "a"}), None)];
        let updated = [
            item(
                "2",
                json!({"id": 2, "screen": "b"}),
                Some(json!({"id": 2, "screen": "a"})),
            ),
            item(
                "3",
                json!({"id": 3, "screen": "a", "text": "new"}),
                Some(json!({"id": 3, "screen": "a"})),
            ),
            item("4", json!({"id": 4, "screen": "c"}), None),
        ];
        let deleted = [item("5", json!({"id": 5, "screen": "b"}), None)];
        let rooms = plan("screen", &created, &updated, &deleted);
        let keys = |items: &[&Item]| items.iter().map(|i| i.key.clone()).collect::<Vec<_>>();
        let a = &rooms["a"];
        assert_eq!(keys(&a.arrived), ["1"]);
        assert_eq!(keys(&a.updated), ["3"]);
        assert_eq!(keys(&a.left), ["2"]);
        let b = &rooms["b"];
        assert_eq!(keys(&b.arrived), ["2"]);
        assert_eq!(keys(&b.deleted), ["5"]);
        assert!(b.updated.is_empty() && b.left.is_empty());
        assert_eq!(keys(&rooms["c"].updated), ["4"]);
        assert_eq!(rooms.len(), 3);
    }
}
