//! What the files cache tells `/metrics` and the status page: files and bytes against the
//! budget, referenced against cached, hits, misses, failures, and the last problem in words.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::clock::now_rfc3339;

/// The cache's figures; shared by the cache, its workers and `/metrics`.
#[derive(Debug, Default)]
pub struct AssetFigures {
    enabled: AtomicBool,
    /// Files (originals) and variants on disk.
    pub files: Gauge,
    pub variants: Gauge,
    /// Bytes on disk, and the budget (`assets.max_bytes`).
    pub bytes: Gauge,
    pub max_bytes: Gauge,
    /// Files that relayed items reference, and how many of them are cached.
    pub referenced: Gauge,
    pub referenced_cached: Gauge,
    /// Bytes the referenced files need, as far as known.
    pub referenced_bytes: Gauge,
    /// Requests answered from disk, and requests for what was not cached.
    pub hits: Counter,
    pub misses: Counter,
    /// Misses answered with 504: Directus unreachable.
    pub unavailable: Counter,
    /// Downloads completed, and downloads that failed.
    pub downloads: Counter,
    pub failures: Counter,
    /// Variants removed to stay under the budget.
    pub evictions: Counter,
    /// Items held back for their files (`hold_for_assets`), now; and those sent anyway after
    /// `assets.hold_timeout`.
    pub held: Gauge,
    pub hold_timeouts: Counter,
    /// 1 while the referenced files do not fit `max_bytes`, or the disk is full.
    pub over_budget: Gauge,
    pub disk_full: Gauge,
    words: Mutex<Words>,
}

#[derive(Debug, Default)]
struct Words {
    last_error: Option<(String, String)>,
    problem: Option<String>,
    paths: Vec<String>,
}

impl AssetFigures {
    /// Registers every figure under `relay_assets_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("assets");
        r.register("files", "Files cached (originals)", self.files.clone());
        r.register(
            "variants",
            "Cached variants of files (originals and transformations)",
            self.variants.clone(),
        );
        r.register("bytes", "Bytes the files cache holds", self.bytes.clone());
        r.register(
            "max_bytes",
            "The files cache's budget (assets.max_bytes)",
            self.max_bytes.clone(),
        );
        r.register(
            "referenced",
            "Files that relayed items reference",
            self.referenced.clone(),
        );
        r.register(
            "referenced_cached",
            "Referenced files that are cached",
            self.referenced_cached.clone(),
        );
        r.register(
            "referenced_bytes",
            "Bytes of the referenced files that are cached or being fetched",
            self.referenced_bytes.clone(),
        );
        r.register(
            "hits",
            "File requests answered from the cache",
            self.hits.clone(),
        );
        r.register(
            "misses",
            "File requests for what was not cached",
            self.misses.clone(),
        );
        r.register(
            "unavailable",
            "File requests answered 504: not cached and Directus unreachable",
            self.unavailable.clone(),
        );
        r.register(
            "downloads",
            "Files downloaded into the cache",
            self.downloads.clone(),
        );
        r.register(
            "failures",
            "File downloads that failed",
            self.failures.clone(),
        );
        r.register(
            "evictions",
            "Variants removed to stay under assets.max_bytes",
            self.evictions.clone(),
        );
        r.register(
            "held",
            "Items held back until their files are cached (hold_for_assets)",
            self.held.clone(),
        );
        r.register(
            "hold_timeouts",
            "Held items sent anyway after assets.hold_timeout",
            self.hold_timeouts.clone(),
        );
        r.register(
            "over_budget",
            "1 while the referenced files do not fit assets.max_bytes",
            self.over_budget.clone(),
        );
        r.register(
            "disk_full",
            "1 while the disk is full and prefetching is stopped",
            self.disk_full.clone(),
        );
    }

    pub fn enable(&self, max_bytes: usize, paths: Vec<String>) {
        self.enabled.store(true, Ordering::Relaxed);
        self.max_bytes.set(max_bytes as i64);
        self.words().paths = paths;
    }

    fn words(&self) -> std::sync::MutexGuard<'_, Words> {
        self.words.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a failure (never with a secret in it).
    pub fn error(&self, message: String) {
        self.words().last_error = Some((now_rfc3339(), message));
    }

    /// Sets or clears the problem the status page shows loudly.
    pub fn problem(&self, problem: Option<String>) {
        self.words().problem = problem;
    }

    /// The status page's `assets` entry (`null` without `[assets]`).
    pub fn status(&self) -> Value {
        if !self.enabled.load(Ordering::Relaxed) {
            return Value::Null;
        }
        let words = self.words();
        json!({
            "files": self.files.get(),
            "variants": self.variants.get(),
            "bytes": self.bytes.get(),
            "max_bytes": self.max_bytes.get(),
            "referenced": self.referenced.get(),
            "referenced_cached": self.referenced_cached.get(),
            "hits": self.hits.get(),
            "misses": self.misses.get(),
            "unavailable": self.unavailable.get(),
            "downloads": self.downloads.get(),
            "failures": self.failures.get(),
            "evictions": self.evictions.get(),
            "held": self.held.get(),
            "hold_timeouts": self.hold_timeouts.get(),
            "problem": words.problem,
            "last_error": words.last_error.as_ref().map(|(at, message)| json!({"at": at, "message": message})),
            "fields": words.paths,
        })
    }
}
