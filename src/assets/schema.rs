//! Which fields of the relayed collections hold Directus file ids, and the ids in a record.
//!
//! A path names where file ids sit in a record: `"image"` (a single file: `uuid` with the
//! `file` special, or any many-to-one into `directus_files`), `"gallery.directus_files_id"`
//! (a files list: the `files` special, through its junction collection), `"hero.file"` (a file
//! of a related item). At start the paths come from each collection's `asset_fields`, else from
//! Directus's `/relations` (and `/fields` for the specials), and are kept in the cache's folder,
//! so that a relay that starts without an uplink still knows them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::upstream::directus::{Directus, DirectusError};

/// Where the last discovered paths are kept, in the cache's folder.
pub const SCHEMA_FILE: &str = "schema.json";

/// The longest file id taken from a record (Directus's are 36-character UUIDs).
pub const MAX_ID_LEN: usize = 64;

/// File ids in one record at most; the rest are not cached (logged by the caller).
pub const MAX_IDS_PER_ITEM: usize = 256;

/// How each path was found, for the log and `directus-relay check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Named in `asset_fields`.
    Configured,
    /// A single file field (`file` special or a relation to `directus_files`).
    File,
    /// A files list, through its junction collection.
    Files,
}

/// The record paths that hold file ids, per relayed collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetPaths {
    pub collections: BTreeMap<String, Vec<(String, Origin)>>,
}

impl AssetPaths {
    /// The paths of `collection` (none when it references no files).
    pub fn of(&self, collection: &str) -> &[(String, Origin)] {
        self.collections
            .get(collection)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The file ids `record` references, each once, in the order found.
    pub fn ids(&self, collection: &str, record: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for (path, _) in self.of(collection) {
            let parts: Vec<&str> = path.split('.').collect();
            collect(record, &parts, &mut out);
        }
        out
    }

    /// One line per collection, as the log and `check` show it.
    pub fn describe(&self) -> Vec<String> {
        self.collections
            .iter()
            .map(|(collection, paths)| {
                if paths.is_empty() {
                    return format!("{collection}: no file fields");
                }
                let list: Vec<String> = paths
                    .iter()
                    .map(|(path, origin)| {
                        let how = match origin {
                            Origin::Configured => "asset_fields",
                            Origin::File => "file",
                            Origin::Files => "files list",
                        };
                        format!("{path} ({how})")
                    })
                    .collect();
                format!("{collection}: {}", list.join(", "))
            })
            .collect()
    }

    /// Reads the paths kept by the last start.
    pub fn load(dir: &Path) -> Option<AssetPaths> {
        let text = std::fs::read(dir.join(SCHEMA_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Keeps the paths for the next start (temp file, rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!("{SCHEMA_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(SCHEMA_FILE))
    }
}

/// Whether `text` can be a Directus file id: a UUID, or at most [`MAX_ID_LEN`] letters,
/// digits and `-` (so that it is also a safe file name).
pub fn is_file_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_ID_LEN
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Walks `parts` into `value`: lists are walked item by item; at the end a string is an id, and
/// so is an object's `id` (a file expanded with its fields).
fn collect(value: &Value, parts: &[&str], out: &mut Vec<String>) {
    if out.len() >= MAX_IDS_PER_ITEM {
        return;
    }
    match value {
        Value::Array(items) => {
            for item in items {
                collect(item, parts, out);
            }
        }
        Value::Object(map) => match parts.split_first() {
            Some((first, rest)) => {
                if let Some(inner) = map.get(*first) {
                    collect(inner, rest, out);
                }
            }
            None => {
                if let Some(id) = map.get("id") {
                    collect(id, &[], out);
                }
            }
        },
        Value::String(id) if parts.is_empty() && is_file_id(id) && !out.contains(id) => {
            out.push(id.clone());
        }
        _ => {}
    }
}

/// The paths every relayed collection's `asset_fields` names, and which collections are left
/// for Directus's schema to tell.
pub fn configured(config: &Config) -> (AssetPaths, Vec<String>) {
    let mut paths = AssetPaths::default();
    let mut undecided = Vec::new();
    for c in &config.collections {
        match &c.asset_fields {
            Some(fields) => {
                paths.collections.insert(
                    c.name.clone(),
                    fields
                        .iter()
                        .map(|f| (f.clone(), Origin::Configured))
                        .collect(),
                );
            }
            None => undecided.push(c.name.clone()),
        }
    }
    (paths, undecided)
}

/// Finds the file fields of `collections` from Directus's `/fields` and `/relations`.
pub async fn discover(
    client: &mut Directus,
    collections: &[String],
) -> Result<AssetPaths, DirectusError> {
    let hint = " Give the relay's user read on directus_fields and directus_relations (all fields, no rule), or name the file fields of each collection with asset_fields.";
    let fields = client.get("/fields?limit=-1", hint).await?;
    let relations = client.get("/relations?limit=-1", hint).await?;
    Ok(from_schema(
        &fields["data"],
        &relations["data"],
        collections,
    ))
}

/// The file fields that `/fields` and `/relations` answers describe.
pub fn from_schema(fields: &Value, relations: &Value, collections: &[String]) -> AssetPaths {
    let empty = Vec::new();
    let fields = fields.as_array().unwrap_or(&empty);
    let relations = relations.as_array().unwrap_or(&empty);
    let text = |v: &Value, key: &str| v[key].as_str().map(str::to_owned);
    let specials = |f: &Value| -> Vec<String> {
        match &f["meta"]["special"] {
            Value::Array(list) => list
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            Value::String(s) => s.split(',').map(|s| s.trim().to_owned()).collect(),
            _ => Vec::new(),
        }
    };
    let mut paths = AssetPaths::default();
    for collection in collections {
        let mut found: Vec<(String, Origin)> = Vec::new();
        let mut add = |path: String, origin: Origin| {
            if !found.iter().any(|(p, _)| *p == path) {
                found.push((path, origin));
            }
        };
        // A single file: a many-to-one from this collection into directus_files.
        for r in relations {
            if text(r, "collection").as_deref() == Some(collection)
                && text(r, "related_collection").as_deref() == Some("directus_files")
                && let Some(field) = text(r, "field")
            {
                add(field, Origin::File);
            }
        }
        // A files list: the junction's relation back to this collection names the alias
        // (`one_field`) and the junction's field towards directus_files (`junction_field`).
        for r in relations {
            let meta = &r["meta"];
            let (Some(junction), Some(alias), Some(file_field)) = (
                text(r, "collection"),
                text(meta, "one_field"),
                text(meta, "junction_field"),
            ) else {
                continue;
            };
            if text(r, "related_collection").as_deref() != Some(collection) {
                continue;
            }
            let to_files = relations.iter().any(|other| {
                text(other, "collection").as_deref() == Some(&junction)
                    && text(other, "field").as_deref() == Some(&file_field)
                    && text(other, "related_collection").as_deref() == Some("directus_files")
            });
            if to_files {
                add(format!("{alias}.{file_field}"), Origin::Files);
            }
        }
        // The `file` special on a field whose relation the relay may not see.
        for f in fields {
            if text(f, "collection").as_deref() == Some(collection)
                && specials(f).iter().any(|s| s == "file")
                && let Some(field) = text(f, "field")
            {
                add(field, Origin::File);
            }
        }
        paths.collections.insert(collection.clone(), found);
    }
    paths
}

/// The fields a collection must read so that its records carry the files lists' ids: with
/// `fields = ["*"]` Directus gives a files list as junction row ids, so `"gallery.directus_files_id"`
/// is read as well.
pub fn extra_fields(paths: &AssetPaths, collection: &str, fields: &[String]) -> Vec<String> {
    paths
        .of(collection)
        .iter()
        .filter(|(path, _)| path.contains('.'))
        .filter(|(path, _)| !fields.iter().any(|f| f == path))
        .map(|(path, _)| path.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_file_fields_and_files_lists_from_the_schema() {
        let fields = json!([
            {"collection": "articles", "field": "image", "type": "uuid", "meta": {"special": ["file"]}},
            {"collection": "articles", "field": "gallery", "type": "alias", "meta": {"special": ["files"]}},
            {"collection": "articles", "field": "poster", "type": "uuid", "meta": {"special": "file"}},
            {"collection": "other", "field": "image", "type": "uuid", "meta": {"special": ["file"]}},
        ]);
        let relations = json!([
            {"collection": "articles", "field": "image", "related_collection": "directus_files", "meta": {"one_field": null, "junction_field": null}},
            {"collection": "articles_files", "field": "articles_id", "related_collection": "articles", "meta": {"one_field": "gallery", "junction_field": "directus_files_id"}},
            {"collection": "articles_files", "field": "directus_files_id", "related_collection": "directus_files", "meta": {"one_field": null, "junction_field": "articles_id"}},
            {"collection": "announcements", "field": "screen", "related_collection": "screens", "meta": {"one_field": null}},
        ]);
        let paths = from_schema(
            &fields,
            &relations,
            &["articles".to_owned(), "screens".to_owned()],
        );
        assert_eq!(
            paths.of("articles"),
            [
                ("image".to_owned(), Origin::File),
                ("gallery.directus_files_id".to_owned(), Origin::Files),
                ("poster".to_owned(), Origin::File),
            ]
        );
        assert!(paths.of("screens").is_empty());
        assert_eq!(
            paths.describe(),
            [
                "articles: image (file), gallery.directus_files_id (files list), poster (file)",
                "screens: no file fields"
            ]
        );
        assert_eq!(
            extra_fields(&paths, "articles", &["*".to_owned()]),
            ["gallery.directus_files_id"]
        );
    }

    #[test]
    fn takes_ids_from_strings_lists_and_expanded_files() {
        let mut paths = AssetPaths::default();
        paths.collections.insert(
            "articles".into(),
            vec![
                ("image".into(), Origin::File),
                ("gallery.directus_files_id".into(), Origin::Files),
                ("hero.file".into(), Origin::Configured),
            ],
        );
        let record = json!({
            "id": 1,
            "image": "a1b2",
            "gallery": [{"directus_files_id": "c3"}, {"directus_files_id": {"id": "d4", "type": "image/png"}}, {"directus_files_id": "a1b2"}],
            "hero": {"file": "../etc/passwd"},
        });
        assert_eq!(paths.ids("articles", &record), ["a1b2", "c3", "d4"]);
        assert!(paths.ids("articles", &json!({"image": null})).is_empty());
        assert!(paths.ids("other", &record).is_empty());
    }
}
