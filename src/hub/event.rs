//! What flows through the hub: a [`Change`] from upstream in, an [`Event`] for kiosks out.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// What happened to items, as upstream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// One item key: the string form kiosks see, and the JSON value upstream sent (a number for
/// integer keys), used when the relay writes the key into a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub text: String,
    pub json: Value,
}

impl Key {
    /// Accepts a string or an integer, as Directus sends keys; anything else is `None`.
    pub fn from_json(value: &Value) -> Option<Key> {
        let text = match value {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            _ => return None,
        };
        Some(Key {
            text,
            json: value.clone(),
        })
    }
}

/// A change reported by upstream, normalised: keys are strings, the collection is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub collection: String,
    pub action: Action,
    pub keys: Vec<Key>,
    /// The submitted fields (create, update), when upstream sent them.
    pub payload: Option<Value>,
}

/// Current records read from Directus: each key with its full record, or `None` when the item
/// no longer exists. The hub compares them with the mirror to decide what kiosks are told.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentRecords {
    pub collection: String,
    pub items: Vec<(Key, Option<Value>)>,
    /// What upstream said happened, for collections the hub cannot compare (not mirrored).
    pub hint: Action,
    /// The items are the whole collection: mirrored items not among them were deleted.
    pub complete: bool,
    /// The submitted change, when a webhook told it.
    pub payload: Option<Value>,
}

/// The Socket.IO event names kiosks know from the Directus hook-extension pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventName {
    Create,
    Update,
    PreDelete,
    Delete,
}

impl EventName {
    /// Every event, in the order of its action's life.
    pub const ALL: [EventName; 4] = [
        EventName::Create,
        EventName::Update,
        EventName::PreDelete,
        EventName::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventName::Create => "data.create",
            EventName::Update => "data.update",
            EventName::PreDelete => "data.pre-delete",
            EventName::Delete => "data.delete",
        }
    }

    /// The event whose [`EventName::action`] is `label`.
    pub fn from_action(label: &str) -> Option<EventName> {
        EventName::ALL.into_iter().find(|e| e.action() == label)
    }

    /// The action label used in metrics (and in the state file's replay ring).
    pub fn action(self) -> &'static str {
        match self {
            EventName::Create => "create",
            EventName::Update => "update",
            EventName::PreDelete => "pre-delete",
            EventName::Delete => "delete",
        }
    }
}

/// What an event says about the change; [`Stamped`] adds its seq and time.
#[derive(Debug, Serialize)]
pub struct EventBody<'a> {
    pub collection: &'a str,
    /// Said when the collection's events are renamed: one name may stand for several actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    pub keys: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Cow<'a, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<Cow<'a, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<Cow<'a, Value>>>,
    /// For an event of a routed room: `{field: value}`.
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    pub room: Option<Value>,
    /// The records and payload were left out: the event exceeded `limits.max_event_bytes`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl<'a> EventBody<'a> {
    /// An event about `keys` of `collection`, with nothing else yet.
    pub fn new(collection: &'a str, keys: Vec<&'a str>) -> Self {
        Self {
            collection,
            action: None,
            keys,
            payload: None,
            record: None,
            records: None,
            room: None,
            truncated: false,
        }
    }
}

/// The body of an event as kiosks receive it (DESIGN.md §2); compact events have no `ts`.
#[derive(Debug, Serialize)]
pub struct Stamped<'a> {
    #[serde(flatten)]
    pub body: &'a EventBody<'a>,
    pub seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<&'a str>,
}

/// An event as sent to kiosks, serialised once, kept in the replay ring.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub action: EventName,
    /// The name kiosks receive it under (`data.update` unless the collection renames it).
    pub name: Arc<str>,
    pub collection: Arc<str>,
    /// The namespace it went to.
    pub namespace: Arc<str>,
    /// The routed room it went to; `None`: the collection's room.
    pub room: Option<Box<str>>,
    /// The JSON body, ready to send.
    pub body: Box<RawValue>,
}

impl Event {
    /// Bytes this event holds, for the replay ring's byte bound (names and namespaces are
    /// shared by all events of a collection).
    pub fn weight(&self) -> usize {
        self.body.get().len()
            + self.collection.len()
            + self.room.as_ref().map_or(0, |r| r.len())
            + std::mem::size_of::<Self>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_strings_whatever_upstream_sent() {
        let cases = [
            (json!(24), Some("24")),
            (json!("24"), Some("24")),
            (
                json!("a1aaf176-4a68-4d78-b9b0-475ac2f28bbb"),
                Some("a1aaf176-4a68-4d78-b9b0-475ac2f28bbb"),
            ),
            (json!(-3), Some("-3")),
            (json!(1.5), None),
            (json!(""), None),
            (json!(null), None),
            (json!({"id": 1}), None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                Key::from_json(&value).map(|k| k.text).as_deref(),
                expected,
                "{value}"
            );
        }
    }
}
