//! Files (`[assets]`): the Directus files that relayed items reference, downloaded ahead of
//! time, kept on disk within a budget and served to kiosks at `/assets/<id>`, so that pictures
//! and videos stay on screen while the uplink is down.
//!
//! # Layout
//!
//! * `schema`: which record fields hold file ids (Directus's `/fields` and `/relations`, or
//!   `asset_fields`), and the ids in one record.
//! * `store`: the cache on disk — its index, the references from items, the budget and
//!   least-recently-used eviction among the files no item references.
//! * `fetch`: one download from Directus into the cache (temporary file, size check, fsync,
//!   rename).
//! * `prefetch`: the background workers (`assets.concurrency`) with retry and backoff.
//! * `refresh`: files replaced in Directus under the same id, fetched again.
//! * `serve`: `GET`/`HEAD /assets/<id>` — variants, `ETag`/304, `Range`/206, streaming from
//!   disk or through from Directus, 504 when neither can.
//! * `access`: which kiosk token may fetch which file.
//! * `body`: response bodies streamed chunk by chunk.
//! * `figures`: what `/metrics` and the status page show.
//!
//! The hub tells the cache what each item references ([`Assets::reference`]) as items enter,
//! change or leave the mirror, and asks whether an item's files are cached
//! ([`Assets::all_cached`]) for `hold_for_assets`; it is told when a file arrives through
//! [`Assets::cached`].

mod access;
mod body;
mod fetch;
pub mod figures;
mod prefetch;
mod refresh;
pub mod schema;
mod serve;
pub mod store;

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{AssetsConfig, Config, STREAMS_FROM_DISK, STREAMS_THROUGH};
use crate::kiosk::access::Gate;
use crate::kiosk::throttle::Throttle;
use crate::upstream::directus::Directus;
pub use figures::AssetFigures;
pub use schema::AssetPaths;
pub use serve::{Route, serve};

/// How long discovery may take at start when a previous start's schema is on disk.
pub const DISCOVERY_TIMEOUT_WITH_SAVED: std::time::Duration = std::time::Duration::from_secs(3);

/// The files cache. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Assets {
    inner: Arc<Inner>,
}

/// What the cache's parts share.
#[derive(Debug)]
pub(crate) struct Inner {
    config: AssetsConfig,
    paths: AssetPaths,
    store: Mutex<store::Store>,
    upstream: fetch::Upstream,
    figures: Arc<AssetFigures>,
    /// Wakes the prefetch workers: a file is newly referenced.
    wake: Notify,
    /// Counts files cached; the hub watches it to release held items.
    cached: watch::Sender<u64>,
    gate: Gate,
    /// Wrong kiosk tokens per client address, shared with the Socket.IO admission.
    throttle: Arc<Throttle>,
    streams: Arc<Semaphore>,
    /// How long a client streamed through may take nothing: half of `directus.request_timeout`,
    /// the read timeout towards Directus.
    slow_client: std::time::Duration,
    from_disk: Arc<Semaphore>,
}

impl Inner {
    fn store(&self) -> MutexGuard<'_, store::Store> {
        // A panic while the lock was held left bookkeeping at worst stale; carry on.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Finds which fields hold files, before the relay starts following Directus: `asset_fields`
/// where given, else Directus's schema, else what the last start found. A files list needs its
/// junction's file field read: it is added to the collection's `fields`.
pub async fn prepare(config: &mut Config) -> Option<Prepared> {
    if !config.assets.enabled {
        return None;
    }
    let mut problem = None;
    let dir = config.assets.dir(&config.state_dir);
    let (mut paths, undecided) = schema::configured(config);
    if !undecided.is_empty() {
        let directus = config.directus.as_ref()?;
        let saved = AssetPaths::load(&dir);
        let timeout = match saved {
            Some(_) => DISCOVERY_TIMEOUT_WITH_SAVED.min(directus.request_timeout),
            None => directus.request_timeout * 2,
        };
        let found = match Directus::new(directus) {
            Ok(mut client) => {
                tokio::time::timeout(timeout, schema::discover(&mut client, &undecided))
                    .await
                    .map_err(|_| "timed out".to_owned())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Err(e) => Err(e),
        };
        let found = match found {
            Ok(found) => {
                std::fs::create_dir_all(&dir).ok();
                if let Err(e) = found.save(&dir) {
                    warn!(%e, dir = %dir.display(), "cannot keep the files' schema for the next start");
                }
                found
            }
            Err(e) => match saved {
                Some(saved) => {
                    warn!(%e, "cannot read Directus's schema; using the file fields found at the last start");
                    problem = Some(format!(
                        "cannot read Directus's schema ({e}); using the file fields found at the last start"
                    ));
                    saved
                }
                None => {
                    warn!(%e, "cannot read Directus's schema and none was kept: no files are cached for collections without asset_fields until the next start");
                    problem = Some(format!(
                        "cannot read Directus's schema ({e}): no files are cached for collections without asset_fields until the next start"
                    ));
                    AssetPaths::default()
                }
            },
        };
        for name in undecided {
            let list = found.of(&name).to_vec();
            paths.collections.insert(name, list);
        }
    }
    for c in &mut config.collections {
        let extra = schema::extra_fields(&paths, &c.name, &c.fields);
        if !extra.is_empty() && c.asset_fields.is_none() {
            info!(collection = c.name, fields = ?extra, "reading the files lists' file ids too");
            c.fields.extend(extra);
        }
    }
    for line in paths.describe() {
        info!("files: {line}");
    }
    Some(Prepared { paths, problem })
}

/// What [`prepare`] found: the file fields, and why they may be incomplete.
#[derive(Debug)]
pub struct Prepared {
    pub paths: AssetPaths,
    /// Directus's schema could not be read (shown on the status page as the last error).
    pub problem: Option<String>,
}

impl Assets {
    /// Opens the cache and starts prefetching; `None` without `[assets]` enabled.
    pub fn start(
        config: &Config,
        prepared: Option<Prepared>,
        figures: Arc<AssetFigures>,
        throttle: Arc<Throttle>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<Option<Assets>> {
        let (Some(Prepared { paths, problem }), Some(directus)) = (prepared, &config.directus)
        else {
            return Ok(None);
        };
        let dir = config.assets.dir(&config.state_dir);
        let store = store::Store::open(&dir, config.assets.max_bytes).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the files cache in {} (assets.dir): {e}",
                dir.display()
            )
        })?;
        let upstream =
            fetch::Upstream::new(directus).map_err(|e| anyhow::anyhow!("directus: {e}"))?;
        figures.enable(config.assets.max_bytes, paths.describe());
        if let Some(problem) = problem {
            figures.error(problem);
        }
        store.publish(&figures);
        let inner = Arc::new(Inner {
            config: config.assets.clone(),
            paths,
            store: Mutex::new(store),
            upstream,
            figures,
            wake: Notify::new(),
            cached: watch::channel(0).0,
            gate: Gate::new(&config.clients),
            throttle,
            streams: Arc::new(Semaphore::new(STREAMS_THROUGH)),
            slow_client: directus.request_timeout / 2,
            from_disk: Arc::new(Semaphore::new(STREAMS_FROM_DISK)),
        });
        prefetch::spawn(inner.clone(), shutdown.clone(), tracker);
        refresh::spawn(
            inner.clone(),
            dir,
            directus.poll_interval,
            shutdown,
            tracker,
        );
        Ok(Some(Assets { inner }))
    }

    /// The file ids `record` of `collection` references.
    pub fn ids(&self, collection: &str, record: &Value) -> Vec<String> {
        self.inner.paths.ids(collection, record)
    }

    /// Sets what one item references (`None`: it is gone); a newly referenced file is
    /// prefetched.
    pub fn reference(&self, collection: &str, key: &str, record: Option<&Value>) {
        let ids = record.map_or_else(Vec::new, |r| self.ids(collection, r));
        if self.inner.paths.of(collection).is_empty() && ids.is_empty() {
            return;
        }
        let mut store = self.inner.store();
        let new = store.reference(collection, key, ids);
        if new {
            // Soon, not at the next second: the status page shows the file as wanted.
            store.publish_soon(&self.inner.figures, tokio::time::Instant::now());
        }
        drop(store);
        if new {
            self.inner.wake.notify_waiters();
            self.inner.wake.notify_one();
        }
    }

    /// Whether every file in `ids` is cached.
    pub fn all_cached(&self, ids: &[String]) -> bool {
        let store = self.inner.store();
        ids.iter().all(|id| store.has(id))
    }

    /// Changes each time a file is cached.
    pub fn cached(&self) -> watch::Receiver<u64> {
        self.inner.cached.subscribe()
    }

    /// `assets.hold_timeout`.
    pub fn hold_timeout(&self) -> std::time::Duration {
        self.inner.config.hold_timeout
    }

    pub fn figures(&self) -> &AssetFigures {
        &self.inner.figures
    }
}
