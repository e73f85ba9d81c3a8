//! `[[collections]]`: one relayed collection, the fields it reads and how its events look.

use serde::{Deserialize, Serialize};

use super::defaults;

/// One relayed collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    pub name: String,
    /// The primary key field, written into records built from webhook payloads.
    #[serde(default = "defaults::key_field")]
    pub key_field: String,
    /// The fields read from Directus (`["*"]`: all), which must include `key_field`.
    #[serde(default = "defaults::fields")]
    pub fields: Vec<String>,
    /// Fields whose values name routed rooms (`"screen"`, or a path such as `"screen.code"`
    /// into a related item): kiosks can subscribe to just the items with a given value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms_by: Vec<String>,
    /// The Socket.IO namespace kiosks connect to for this collection's events.
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    /// The event name of every action: a name, or a template with `{collection}` and
    /// `{action}` (`create`, `update`, `pre-delete`, `delete`).
    #[serde(default = "defaults::event_name")]
    pub event_name: String,
    /// Per-action names (or templates) that replace `event_name` for those actions.
    #[serde(default, skip_serializing_if = "EventNames::is_empty")]
    pub event_names: EventNames,
    /// Whether kiosks get `data.pre-delete` before `data.delete`.
    #[serde(default = "defaults::yes")]
    pub pre_delete: bool,
    /// The record fields kiosks receive, in events and snapshots (paths such as
    /// `"image.url"` allowed; the key field is always kept). Empty: every field read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emit_fields: Vec<String>,
    /// Whether events carry `payload`, the submitted change.
    #[serde(default = "defaults::yes")]
    pub emit_payload: bool,
    /// Events carry only `{collection, keys, seq}` and snapshots only keys, for screens that
    /// fetch the items themselves.
    #[serde(default)]
    pub compact: bool,
    /// With `[assets]`: the paths in a record that hold Directus file ids (`"image"`,
    /// `"gallery.directus_files_id"`, `"hero.file"`). Absent: found from Directus's schema
    /// (`/fields`, `/relations`) at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_fields: Option<Vec<String>>,
    /// With `[assets]`: an item's create or update reaches kiosks only once its files are
    /// cached (at most `assets.hold_timeout` later).
    #[serde(default)]
    pub hold_for_assets: bool,
}

impl CollectionConfig {
    /// A collection with every setting at its default.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key_field: defaults::key_field(),
            fields: defaults::fields(),
            rooms_by: Vec::new(),
            namespace: defaults::namespace(),
            event_name: defaults::event_name(),
            event_names: EventNames::default(),
            pre_delete: true,
            emit_fields: Vec::new(),
            emit_payload: true,
            compact: false,
            asset_fields: None,
            hold_for_assets: false,
        }
    }

    /// The event name (or template) for `action` (`create`, `update`, `pre-delete`, `delete`).
    pub fn event_template(&self, action: &str) -> &str {
        let custom = match action {
            "create" => &self.event_names.create,
            "update" => &self.event_names.update,
            "pre-delete" => &self.event_names.pre_delete,
            "delete" => &self.event_names.delete,
            _ => &None,
        };
        custom.as_deref().unwrap_or(&self.event_name)
    }
}

/// Per-action event names of a collection; unset ones follow `event_name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventNames {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<String>,
    #[serde(
        default,
        rename = "pre-delete",
        alias = "pre_delete",
        skip_serializing_if = "Option::is_none"
    )]
    pub pre_delete: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
}

impl EventNames {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The actions an event name is given for, as `{action}` spells them.
pub const EVENT_ACTIONS: [&str; 4] = ["create", "update", "pre-delete", "delete"];

/// Event names Socket.IO clients keep for themselves, and the relay's own: a data event with
/// one of these names would never reach a kiosk's handler, or would be mistaken for another.
pub const RESERVED_EVENT_NAMES: [&str; 9] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
    "error",
    "relay.status",
    "subscribe",
];

/// The longest event name accepted.
pub const MAX_EVENT_NAME_LEN: usize = 128;

/// `template` with `{collection}` and `{action}` filled in.
pub fn expand_event_name(template: &str, collection: &str, action: &str) -> String {
    template
        .replace("{collection}", collection)
        .replace("{action}", action)
}
