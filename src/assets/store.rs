//! The cache on disk: what is cached (the index), which files items reference, and what goes
//! when room is needed.
//!
//! On disk, under `assets.dir`: `files/<name>` holds a variant's bytes and `files/<name>.json`
//! its [`Meta`]; `<name>` is the file id for the original and `<id>~<hash>` for a
//! transformation. A download is written to `tmp/` and renamed into `files/` (bytes first, meta
//! last), so the folder itself is the index: at start every variant with its meta and the right
//! size is taken back, anything else (a download cut by a crash or kill -9) is removed.
//!
//! The budget (`assets.max_bytes`) counts the bytes on disk and those being downloaded: a
//! download takes room chunk by chunk ([`Store::grow`]), and room is made by removing the least
//! recently used variant of a file that no item references. A file that items reference is
//! never removed for another; when the referenced files alone do not fit, the download that
//! does not fit is dropped and the status page says so. At most [`VARIANTS_PER_FILE`]
//! variants of one file are kept; a new one replaces that file's least recently used
//! transformation.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::figures::AssetFigures;

/// Variants (the original and transformations) kept per file; a new one replaces the least
/// recently used transformation of that file.
pub const VARIANTS_PER_FILE: usize = 8;

/// Items whose files are tracked at most; files of items past this are not cached (logged).
pub const REFERENCED_ITEMS: usize = 200_000;

/// Retry pacing of a failed download: doubled from the first, up to the last.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// What the cache knows about one variant, kept beside its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The Directus file id.
    pub file: String,
    /// The transformation, as a canonical query (`""`: the original).
    pub params: String,
    pub content_type: String,
    pub size: u64,
    /// FNV-1a 64 of the bytes, hex; also the `ETag`.
    pub checksum: String,
    /// As Directus sent it (an HTTP date), else when the relay fetched it.
    pub last_modified: String,
}

impl Meta {
    pub fn etag(&self) -> String {
        format!("\"{}-{:x}\"", self.checksum, self.size)
    }
}

/// The name of a variant on disk.
pub fn variant_name(file: &str, params: &str) -> String {
    if params.is_empty() {
        file.to_owned()
    } else {
        format!(
            "{file}~{:016x}",
            fnv64(0xcbf2_9ce4_8422_2325, params.as_bytes())
        )
    }
}

/// FNV-1a 64, continued from `hash`.
pub fn fnv64(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[derive(Debug)]
struct Entry {
    meta: Meta,
    last_used: u64,
}

/// Why a download may not take more room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoom {
    /// Everything that could go is gone, and the rest is referenced.
    Budget,
}

/// Which items reference which files.
#[derive(Debug, Default)]
struct References {
    items: HashMap<(String, String), Vec<String>>,
    /// File id → collection → items of it that reference the file.
    files: HashMap<String, HashMap<String, u32>>,
    full_logged: bool,
}

impl References {
    /// Sets the files of one item; returns whether a file is referenced that was not before.
    fn set(&mut self, collection: &str, key: &str, ids: Vec<String>) -> bool {
        let item = (collection.to_owned(), key.to_owned());
        if !self.items.contains_key(&item)
            && !ids.is_empty()
            && self.items.len() >= REFERENCED_ITEMS
        {
            if !self.full_logged {
                self.full_logged = true;
                warn!(
                    max = REFERENCED_ITEMS,
                    "the files of more items than the cache tracks are not cached"
                );
            }
            return false;
        }
        let old = if ids.is_empty() {
            self.items.remove(&item).unwrap_or_default()
        } else {
            self.items.insert(item, ids.clone()).unwrap_or_default()
        };
        for id in old.iter().filter(|id| !ids.contains(id)) {
            if let Some(by) = self.files.get_mut(id) {
                if let Some(n) = by.get_mut(collection) {
                    *n -= 1;
                    if *n == 0 {
                        by.remove(collection);
                    }
                }
                if by.is_empty() {
                    self.files.remove(id);
                }
            }
        }
        let mut new = false;
        for id in ids.iter().filter(|id| !old.contains(id)) {
            let by = self.files.entry(id.clone()).or_default();
            new |= by.is_empty();
            *by.entry(collection.to_owned()).or_default() += 1;
        }
        new
    }
}

/// A failed file's next attempt.
#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    wait: Duration,
}

/// The cache's index, budget and references. Owned by [`super::Assets`] behind a mutex that is
/// held only for bookkeeping, never across disk reads or the network (removing a file when
/// making room is the one disk operation under it).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    max_bytes: u64,
    entries: HashMap<String, Entry>,
    used: u64,
    /// Bytes taken by downloads under way.
    reserved: u64,
    tick: u64,
    refs: References,
    /// Variants being downloaded into the cache.
    in_flight: HashSet<String>,
    retry: HashMap<String, Retry>,
    /// The disk is full: prefetching waits until this time.
    pub disk_full_until: Option<Instant>,
    /// The referenced files did not fit the budget: the bytes they asked for.
    over_budget: bool,
    /// When the figures were last published by [`Store::publish_soon`].
    published: Option<Instant>,
}

/// How often [`Store::publish_soon`] publishes at most (each time counts every variant and
/// reference, so not once per item of a large load).
pub const PUBLISH_SOON: Duration = Duration::from_millis(100);

impl Store {
    /// Opens the cache in `dir`, taking back every complete variant and removing the rest.
    pub fn open(dir: &Path, max_bytes: usize) -> std::io::Result<Store> {
        let files = dir.join("files");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&files)?;
        std::fs::create_dir_all(&tmp)?;
        for leftover in std::fs::read_dir(&tmp)?.flatten() {
            std::fs::remove_file(leftover.path()).ok();
        }
        let mut store = Store {
            dir: dir.to_owned(),
            max_bytes: max_bytes as u64,
            entries: HashMap::new(),
            used: 0,
            reserved: 0,
            tick: 0,
            refs: References::default(),
            in_flight: HashSet::new(),
            retry: HashMap::new(),
            disk_full_until: None,
            over_budget: false,
            published: None,
        };
        let mut found: Vec<(std::time::SystemTime, String, Meta)> = Vec::new();
        let mut dropped = 0usize;
        for entry in std::fs::read_dir(&files)?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(variant) = name.strip_suffix(".json") else {
                if !files.join(format!("{name}.json")).exists() {
                    std::fs::remove_file(&path).ok();
                    dropped += 1;
                }
                continue;
            };
            let meta: Option<Meta> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let data = files.join(variant);
            let fits = meta.as_ref().is_some_and(|m| {
                variant_name(&m.file, &m.params) == variant
                    && std::fs::metadata(&data).is_ok_and(|d| d.len() == m.size)
            });
            match meta {
                Some(meta) if fits => {
                    let when = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    found.push((when, variant.to_owned(), meta));
                }
                _ => {
                    std::fs::remove_file(&path).ok();
                    std::fs::remove_file(&data).ok();
                    dropped += 1;
                }
            }
        }
        // Least recently cached first: the order of use is not kept across restarts.
        found.sort_by_key(|(when, _, _)| *when);
        for (_, name, meta) in found {
            store.tick += 1;
            store.used += meta.size;
            store.entries.insert(
                name,
                Entry {
                    meta,
                    last_used: store.tick,
                },
            );
        }
        info!(
            dir = %dir.display(),
            variants = store.entries.len(),
            bytes = store.used,
            dropped,
            "files cache opened"
        );
        Ok(store)
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join("files").join(name)
    }

    pub fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join("files").join(format!("{name}.json"))
    }

    pub fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }

    /// A fresh temporary path for a download of `name`.
    pub fn temp_path(&self, name: &str) -> PathBuf {
        self.dir
            .join("tmp")
            .join(format!("{name}.{}", crate::random_hex(4)))
    }

    /// The variant's meta when it is cached, marked as used.
    pub fn lookup(&mut self, file: &str, params: &str) -> Option<Meta> {
        let name = variant_name(file, params);
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(&name)?;
        if entry.meta.params != params {
            return None;
        }
        entry.last_used = tick;
        Some(entry.meta.clone())
    }

    /// Whether the original of `file` is cached.
    pub fn has(&self, file: &str) -> bool {
        self.entries.contains_key(file)
    }

    /// The collections whose items reference `file`.
    pub fn referenced_by(&self, file: &str) -> Vec<String> {
        self.refs
            .files
            .get(file)
            .map(|by| by.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Sets the files one item references (none: it is gone); returns whether a file is now
    /// referenced that was not before.
    pub fn reference(&mut self, collection: &str, key: &str, ids: Vec<String>) -> bool {
        self.refs.set(collection, key, ids)
    }

    /// Claims `name` for a download into the cache; `false` when one is under way.
    pub fn start(&mut self, name: &str) -> bool {
        self.in_flight.insert(name.to_owned())
    }

    /// A referenced file to prefetch: not cached, not being fetched, not waiting to retry.
    pub fn next_wanted(&mut self, now: Instant) -> Option<String> {
        let id = self
            .refs
            .files
            .keys()
            .find(|id| {
                !self.entries.contains_key(*id)
                    && !self.in_flight.contains(*id)
                    && self.retry.get(*id).is_none_or(|r| r.at <= now)
            })?
            .clone();
        self.in_flight.insert(id.clone());
        Some(id)
    }

    /// When the next file waiting to retry is due, if any is referenced.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retry
            .iter()
            .filter(|(id, _)| self.refs.files.contains_key(*id) && !self.entries.contains_key(*id))
            .map(|(_, r)| r.at)
            .min()
    }

    /// Takes `more` bytes of the budget for a download of `file`, making room by removing the
    /// least recently used variants no item references (and, for a new transformation, the
    /// file's own oldest transformation).
    pub fn grow(&mut self, file: &str, more: u64, figures: &AssetFigures) -> Result<(), NoRoom> {
        while self.used + self.reserved + more > self.max_bytes {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| !self.refs.files.contains_key(&e.meta.file) && e.meta.file != file)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(name, _)| name.clone());
            match victim {
                Some(name) => {
                    self.remove(&name);
                    figures.evictions.inc();
                }
                None => {
                    if !self.over_budget {
                        self.over_budget = true;
                        warn!(
                            max_bytes = self.max_bytes,
                            "the files that relayed items reference do not fit assets.max_bytes: some are not cached; raise assets.max_bytes"
                        );
                    }
                    figures.over_budget.set(1);
                    figures.problem(Some(format!(
                        "the files that relayed items reference need more than assets.max_bytes ({} bytes): some are not cached, and screens show them only while Directus is reachable",
                        self.max_bytes
                    )));
                    return Err(NoRoom::Budget);
                }
            }
        }
        self.reserved += more;
        Ok(())
    }

    /// Gives back room a download took and did not use.
    pub fn release(&mut self, bytes: u64) {
        self.reserved = self.reserved.saturating_sub(bytes);
    }

    /// Ends a download of `name` that did not make it into the cache.
    pub fn abandon(&mut self, name: &str, reserved: u64) {
        self.in_flight.remove(name);
        self.release(reserved);
    }

    /// A failed download of a file: retried later, each time waiting twice as long.
    pub fn failed(&mut self, file: &str, now: Instant) {
        let wait = self
            .retry
            .get(file)
            .map_or(RETRY_FIRST, |r| (r.wait * 2).min(RETRY_MAX));
        self.retry.insert(
            file.to_owned(),
            Retry {
                at: now + wait,
                wait,
            },
        );
    }

    /// A download now on disk under its name (bytes and meta renamed into place): counted in
    /// the cache, its room moved from reserved to used.
    pub fn insert(&mut self, meta: Meta, reserved: u64) {
        let name = variant_name(&meta.file, &meta.params);
        self.in_flight.remove(&name);
        self.release(reserved);
        self.retry.remove(&meta.file);
        if let Some(old) = self.entries.remove(&name) {
            self.used -= old.meta.size;
        }
        if !meta.params.is_empty() {
            let mut transformations: Vec<(u64, String)> = self
                .entries
                .iter()
                .filter(|(_, e)| e.meta.file == meta.file && !e.meta.params.is_empty())
                .map(|(n, e)| (e.last_used, n.clone()))
                .collect();
            transformations.sort();
            let keep = VARIANTS_PER_FILE.saturating_sub(2);
            let excess = transformations.len().saturating_sub(keep);
            for (_, victim) in transformations.into_iter().take(excess) {
                self.remove(&victim);
            }
        }
        self.tick += 1;
        self.used += meta.size;
        self.entries.insert(
            name,
            Entry {
                meta,
                last_used: self.tick,
            },
        );
    }

    /// Forgets every cached variant of `file` (it changed in Directus); whether there was one.
    pub fn forget(&mut self, file: &str) -> bool {
        let names: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.meta.file == file)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &names {
            self.remove(name);
        }
        self.retry.remove(file);
        !names.is_empty()
    }

    /// Removes a variant from the index and the disk.
    fn remove(&mut self, name: &str) {
        if let Some(entry) = self.entries.remove(name) {
            self.used -= entry.meta.size;
            std::fs::remove_file(self.meta_path(name)).ok();
            std::fs::remove_file(self.data_path(name)).ok();
        }
    }

    /// Whether the referenced files fit (after the budget problem cleared).
    pub fn clear_over_budget(&mut self, figures: &AssetFigures) {
        if self.over_budget {
            self.over_budget = false;
            figures.over_budget.set(0);
            figures.problem(None);
        }
    }

    /// Publishes the cache's figures.
    pub fn publish(&self, figures: &AssetFigures) {
        let files = self
            .entries
            .values()
            .filter(|e| e.meta.params.is_empty())
            .count();
        figures.files.set(files as i64);
        figures.variants.set(self.entries.len() as i64);
        figures.bytes.set(self.used as i64);
        figures.referenced.set(self.refs.files.len() as i64);
        let cached: Vec<&Entry> = self
            .refs
            .files
            .keys()
            .filter_map(|id| self.entries.get(id))
            .collect();
        figures.referenced_cached.set(cached.len() as i64);
        figures
            .referenced_bytes
            .set(cached.iter().map(|e| e.meta.size).sum::<u64>() as i64);
    }

    /// Publishes the figures unless that was done within [`PUBLISH_SOON`].
    pub fn publish_soon(&mut self, figures: &AssetFigures, now: Instant) {
        if self
            .published
            .is_none_or(|at| now.duration_since(at) >= PUBLISH_SOON)
        {
            self.published = Some(now);
            self.publish(figures);
        }
    }

    /// Bytes on disk and taken by downloads.
    pub fn used(&self) -> (u64, u64) {
        (self.used, self.reserved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(file: &str, params: &str, size: u64) -> Meta {
        Meta {
            file: file.into(),
            params: params.into(),
            content_type: "image/png".into(),
            size,
            checksum: "0".into(),
            last_modified: String::new(),
        }
    }

    /// Puts a variant on disk as a download would, and into the index.
    fn put(store: &mut Store, figures: &AssetFigures, m: Meta) -> Result<(), NoRoom> {
        let name = variant_name(&m.file, &m.params);
        store.grow(&m.file, m.size, figures)?;
        std::fs::write(store.data_path(&name), vec![0u8; m.size as usize]).expect("data");
        std::fs::write(
            store.meta_path(&name),
            serde_json::to_vec(&m).expect("json"),
        )
        .expect("meta");
        store.insert(m.clone(), m.size);
        Ok(())
    }

    #[test]
    fn evicts_the_least_recently_used_unreferenced_file_and_never_a_referenced_one() {
        let dir = tempfile::tempdir().expect("dir");
        let figures = AssetFigures::default();
        let mut store = Store::open(dir.path(), 3000).expect("open");
        store.reference("articles", "1", vec!["a".into()]);
        for f in ["a", "b", "c"] {
            put(&mut store, &figures, meta(f, "", 1000)).expect("fits");
        }
        store.lookup("b", "");
        put(&mut store, &figures, meta("d", "", 1000)).expect("room made");
        assert!(store.has("a"), "referenced");
        assert!(store.has("b"), "used recently");
        assert!(!store.has("c"), "least recently used, unreferenced");
        assert!(!store.data_path("c").exists());
        assert_eq!(store.used(), (3000, 0));
        // Everything referenced: a file that does not fit is refused, loudly.
        for (k, f) in ["b", "d"].iter().enumerate() {
            store.reference("articles", &format!("k{k}"), vec![(*f).into()]);
        }
        assert_eq!(
            put(&mut store, &figures, meta("e", "", 10)),
            Err(NoRoom::Budget)
        );
        assert_eq!(figures.over_budget.get(), 1);
        // An item no longer referencing a file makes it evictable.
        store.reference("articles", "k0", vec![]);
        put(&mut store, &figures, meta("e", "", 10)).expect("b goes");
        assert!(!store.has("b"));
    }

    #[test]
    fn the_folder_is_the_index_and_partial_downloads_are_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let figures = AssetFigures::default();
        {
            let mut store = Store::open(dir.path(), 1 << 20).expect("open");
            put(&mut store, &figures, meta("a", "", 10)).expect("fits");
            put(&mut store, &figures, meta("a", "width=10", 5)).expect("fits");
            // A crash in the middle of writing: bytes without meta, meta with the wrong size,
            // a temporary file.
            std::fs::write(store.data_path("b"), b"partial").expect("write");
            std::fs::write(store.temp_path("c"), b"partial").expect("write");
            std::fs::write(store.data_path("d"), b"short").expect("write");
            std::fs::write(
                store.meta_path("d"),
                serde_json::to_vec(&meta("d", "", 100)).expect("json"),
            )
            .expect("write");
        }
        let mut store = Store::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(store.lookup("a", ""), Some(meta("a", "", 10)));
        assert_eq!(
            store.lookup("a", "width=10"),
            Some(meta("a", "width=10", 5))
        );
        assert_eq!(store.lookup("a", "width=11"), None);
        assert!(!store.has("b") && !store.data_path("b").exists());
        assert!(!store.has("d") && !store.data_path("d").exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp"))
                .expect("tmp")
                .count(),
            0
        );
        assert_eq!(store.used(), (15, 0));
    }

    #[test]
    fn keeps_a_bounded_number_of_variants_per_file() {
        let dir = tempfile::tempdir().expect("dir");
        let figures = AssetFigures::default();
        let mut store = Store::open(dir.path(), 1 << 20).expect("open");
        put(&mut store, &figures, meta("a", "", 10)).expect("fits");
        for w in 0..20 {
            put(&mut store, &figures, meta("a", &format!("width={w}"), 1)).expect("fits");
        }
        store.publish(&figures);
        assert_eq!(figures.variants.get() as usize, VARIANTS_PER_FILE);
        assert!(store.has("a"), "the original stays");
        assert!(store.lookup("a", "width=19").is_some());
        assert!(store.lookup("a", "width=0").is_none());
    }
}
