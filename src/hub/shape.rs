//! How a collection's events look to kiosks: their names, their namespace, and which parts of
//! the records they carry. Built once from the config; the hub asks it for every event.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::event::{EventBody, EventName};
use crate::config::{CollectionConfig, Config, expand_event_name};

/// The shape of one collection's events.
#[derive(Debug)]
pub struct Shape {
    /// The Socket.IO namespace its events go to.
    pub namespace: Arc<str>,
    /// The name of each event, by [`EventName`]; `None`: not sent (`pre_delete = false`).
    names: [Option<Arc<str>>; 4],
    /// The names differ from `data.*`: events then say their `action`, since one name may
    /// stand for several.
    pub renamed: bool,
    key_field: String,
    /// The record paths kiosks receive, split at dots; empty: every field.
    emit_fields: Vec<Vec<String>>,
    pub emit_payload: bool,
    pub compact: bool,
}

impl Shape {
    pub fn new(c: &CollectionConfig) -> Self {
        let name = |event: EventName| {
            let action = event.action();
            (event != EventName::PreDelete || c.pre_delete)
                .then(|| expand_event_name(c.event_template(action), &c.name, action).into())
        };
        let names = EventName::ALL.map(name);
        let renamed = EventName::ALL
            .iter()
            .zip(&names)
            .any(|(event, name)| name.as_deref().is_some_and(|n| n != event.as_str()));
        Shape {
            namespace: c.namespace.as_str().into(),
            names,
            renamed,
            key_field: c.key_field.clone(),
            emit_fields: c
                .emit_fields
                .iter()
                .map(|f| f.split('.').map(str::to_owned).collect())
                .collect(),
            emit_payload: c.emit_payload,
            compact: c.compact,
        }
    }

    /// The name kiosks receive `event` under, or `None` when it is not sent.
    pub fn name(&self, event: EventName) -> Option<&Arc<str>> {
        self.names[event as usize].as_ref()
    }

    /// `body` as kiosks receive it: compact, or projected, with `payload` or without.
    pub fn shape<'a>(&self, body: EventBody<'a>, action: EventName) -> EventBody<'a> {
        let action = self.renamed.then(|| action.action());
        if self.compact {
            return EventBody {
                action,
                payload: None,
                record: None,
                records: None,
                ..body
            };
        }
        let project = |value: Cow<'a, Value>| match value {
            Cow::Borrowed(value) => self.project(value),
            Cow::Owned(value) => Cow::Owned(self.project(&value).into_owned()),
        };
        EventBody {
            action,
            payload: body.payload.filter(|_| self.emit_payload).map(project),
            record: body.record.map(project),
            records: body
                .records
                .map(|records| records.into_iter().map(project).collect()),
            ..body
        }
    }

    /// `record` as kiosks receive it: only the `emit_fields` (and the key field).
    pub fn project<'a>(&self, record: &'a Value) -> Cow<'a, Value> {
        if self.emit_fields.is_empty() {
            return Cow::Borrowed(record);
        }
        let Value::Object(object) = record else {
            return Cow::Borrowed(record);
        };
        let mut out = Map::new();
        if let Some(key) = object.get(&self.key_field) {
            out.insert(self.key_field.clone(), key.clone());
        }
        for path in &self.emit_fields {
            copy_path(object, path, &mut out);
        }
        Cow::Owned(Value::Object(out))
    }
}

/// Copies the value at `path` from `from` into `to`, keeping the nesting; through a list of
/// related items, from each of them.
fn copy_path(from: &Map<String, Value>, path: &[String], to: &mut Map<String, Value>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(value) = from.get(first) else {
        return;
    };
    if rest.is_empty() {
        to.insert(first.clone(), value.clone());
        return;
    }
    match value {
        Value::Object(inner) => {
            let slot = to
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(slot) = slot {
                copy_path(inner, rest, slot);
            }
        }
        Value::Array(items) => {
            let slot = to
                .entry(first.clone())
                .or_insert_with(|| Value::Array(vec![Value::Object(Map::new()); items.len()]));
            if let Value::Array(slots) = slot {
                for (item, slot) in items.iter().zip(slots) {
                    match (item, slot) {
                        (Value::Object(item), Value::Object(slot)) => copy_path(item, rest, slot),
                        (item, slot) => *slot = item.clone(),
                    }
                }
            }
        }
        // A related item not expanded (its key) or null: kept as it is.
        other => {
            to.insert(first.clone(), other.clone());
        }
    }
}

/// The shapes of the relayed collections.
#[derive(Debug)]
pub struct Shapes {
    by_collection: HashMap<String, Arc<Shape>>,
    /// With no collections configured every collection is relayed with default settings.
    default: Arc<Shape>,
}

impl Shapes {
    pub fn new(config: &Config) -> Self {
        Shapes {
            by_collection: config
                .collections
                .iter()
                .map(|c| (c.name.clone(), Arc::new(Shape::new(c))))
                .collect(),
            default: Arc::new(Shape::new(&CollectionConfig::new(""))),
        }
    }

    /// The shape of `collection`'s events (the default one when it is not configured).
    pub fn get(&self, collection: &str) -> &Arc<Shape> {
        self.by_collection.get(collection).unwrap_or(&self.default)
    }

    /// Every namespace a kiosk may connect to: `/` and the collections' own.
    pub fn namespaces(config: &Config) -> Vec<String> {
        let mut namespaces = vec!["/".to_owned()];
        for c in &config.collections {
            if !namespaces.contains(&c.namespace) {
                namespaces.push(c.namespace.clone());
            }
        }
        namespaces
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn collection(toml: &str) -> CollectionConfig {
        let config = Config::from_toml(&format!(
            "clients.allow_anonymous = true\n[[collections]]\nname = \"menu\"\n{toml}"
        ))
        .expect("valid config");
        config.collections[0].clone()
    }

    #[test]
    fn default_names_are_those_of_the_hook_extension() {
        let shape = Shape::new(&collection(""));
        for event in EventName::ALL {
            assert_eq!(shape.name(event).map(|n| &**n), Some(event.as_str()));
        }
        assert!(!shape.renamed);
        assert_eq!(&*shape.namespace, "/");
    }

    #[test]
    fn names_follow_the_template_then_the_per_action_names() {
        let shape = Shape::new(&collection(
            "event_name = \"{collection}.{action}\"\nevent_names = { update = \"menu:changed\" }\npre_delete = false",
        ));
        let names = EventName::ALL.map(|e| shape.name(e).map(|n| n.to_string()));
        assert_eq!(
            names,
            [
                Some("menu.create".into()),
                Some("menu:changed".into()),
                None,
                Some("menu.delete".into())
            ]
        );
        assert!(shape.renamed);
    }

    #[test]
    fn switching_pre_delete_off_alone_is_no_renaming() {
        let shape = Shape::new(&collection("pre_delete = false"));
        assert!(!shape.renamed);
        assert_eq!(shape.name(EventName::PreDelete), None);
    }

    #[test]
    fn projection_keeps_the_key_and_the_listed_paths() {
        let shape = Shape::new(&collection(
            "emit_fields = [\"title\", \"image.url\", \"tags.name\", \"screen\"]",
        ));
        let record = json!({
            "id": 7, "title": "Soup", "secret": "x", "price": 4,
            "image": {"url": "/a.png", "size": 10},
            "tags": [{"name": "hot", "id": 1}, {"name": "veg", "id": 2}],
            "screen": 3,
        });
        assert_eq!(
            shape.project(&record).into_owned(),
            json!({
                "id": 7, "title": "Soup", "image": {"url": "/a.png"},
                "tags": [{"name": "hot"}, {"name": "veg"}], "screen": 3,
            })
        );
        // A path into a relation that was not expanded keeps the key it holds.
        let flat = json!({"id": 8, "image": "f1d2", "tags": [1, 2]});
        assert_eq!(
            shape.project(&flat).into_owned(),
            json!({"id": 8, "image": "f1d2", "tags": [1, 2]})
        );
    }

    #[test]
    fn without_emit_fields_records_pass_unchanged() {
        let shape = Shape::new(&collection(""));
        let record = json!({"id": 1, "secret": "x"});
        assert!(matches!(shape.project(&record), Cow::Borrowed(_)));
    }
}
