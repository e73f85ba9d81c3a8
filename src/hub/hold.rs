//! Ready before shown (`hold_for_assets`): a change to a collection that holds for its files
//! waits, in the order it came, until the files of its items are cached (they are prefetched
//! at once), at most `assets.hold_timeout`; then it is applied and sent anyway, and counted.
//! Until then the mirror, snapshots and kiosks keep the item as it was, so that a screen never
//! shows an item whose pictures are not there yet. Also here: telling the files cache what
//! each item references.

use std::collections::{HashMap, VecDeque};

use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::info;

use super::event::Action;
use super::{Command, Hub, mirror};
use crate::assets::Assets;
use crate::config::CollectionConfig;

/// Changes held per collection at most; one more releases the oldest at once (sent before its
/// files are cached, and counted with the timeouts).
pub const HELD_PER_COLLECTION: usize = 256;

/// The changes held back, per collection, oldest first.
#[derive(Debug, Default)]
pub(super) struct Holds {
    queues: HashMap<String, VecDeque<Held>>,
}

impl Holds {
    pub(super) fn any(&self) -> bool {
        self.queues.values().any(|q| !q.is_empty())
    }
}

#[derive(Debug)]
struct Held {
    command: Command,
    files: Vec<String>,
    deadline: Instant,
}

impl Hub {
    /// Tells the files cache what an item references now (`None`: it is gone).
    pub(super) fn note_files(&self, collection: &str, key: &str, record: Option<&Value>) {
        if let Some(assets) = &self.assets {
            assets.reference(collection, key, record);
        }
    }

    /// Holds a change to a `hold_for_assets` collection while its files are not cached, or
    /// while earlier changes to it are held; gives it back when it can be handled now.
    pub(super) fn hold(&mut self, command: Command) -> Option<Command> {
        let Some(assets) = self.assets.clone() else {
            return Some(command);
        };
        let collection = match &command {
            Command::Apply(change) | Command::Journaled { change, .. } => &change.collection,
            Command::Sync(sync) => &sync.collection,
            _ => return Some(command),
        };
        let Some(settings) = self.config.collection(collection) else {
            return Some(command);
        };
        if !settings.hold_for_assets {
            return Some(command);
        }
        let files = self.files_of(&assets, &settings, &command);
        let queued = self
            .holds
            .queues
            .get(&settings.name)
            .is_some_and(|q| !q.is_empty());
        if !queued && assets.all_cached(&files) {
            return Some(command);
        }
        let queue = self.holds.queues.entry(settings.name.clone()).or_default();
        queue.push_back(Held {
            command,
            files,
            deadline: Instant::now() + assets.hold_timeout(),
        });
        self.metrics.assets.held.inc();
        if queue.len() > HELD_PER_COLLECTION
            && let Some(oldest) = queue.pop_front()
        {
            self.metrics.assets.held.dec();
            self.metrics.assets.hold_timeouts.inc();
            info!(
                collection = settings.name,
                max = HELD_PER_COLLECTION,
                "too many changes held for their files: the oldest is sent before its files are cached"
            );
            self.handle_now(oldest.command);
        }
        None
    }

    /// The files the items of a change reference once it is applied; each is referenced at
    /// once, so that it is prefetched.
    fn files_of(
        &self,
        assets: &Assets,
        settings: &CollectionConfig,
        command: &Command,
    ) -> Vec<String> {
        let collection = settings.name.as_str();
        let mut files = Vec::new();
        let mut take = |key: &str, record: &Value| {
            assets.reference(collection, key, Some(record));
            for id in assets.ids(collection, record) {
                if !files.contains(&id) {
                    files.push(id);
                }
            }
        };
        match command {
            Command::Apply(change) | Command::Journaled { change, .. } => {
                if change.action == Action::Delete {
                    return files;
                }
                for key in &change.keys {
                    let record = match self.mirror.get(collection, &key.text) {
                        Some(known) => mirror::merge(known, change.payload.as_ref()),
                        None => mirror::merge(
                            &json!({ settings.key_field.as_str(): key.json }),
                            change.payload.as_ref(),
                        ),
                    };
                    take(&key.text, &record);
                }
            }
            Command::Sync(sync) => {
                for (key, record) in &sync.items {
                    if let Some(record) = record {
                        take(&key.text, record);
                    }
                }
            }
            _ => {}
        }
        files
    }

    /// Handles every held change whose files are now cached or whose time is up, in order.
    /// With `all`, every held change (at shutdown).
    pub(super) fn release_held(&mut self, all: bool) {
        let Some(assets) = self.assets.clone() else {
            return;
        };
        let now = Instant::now();
        let collections: Vec<String> = self.holds.queues.keys().cloned().collect();
        for collection in collections {
            while let Some(front) = self.holds.queues.get(&collection).and_then(|q| q.front()) {
                let ready = assets.all_cached(&front.files);
                if !ready && front.deadline > now && !all {
                    break;
                }
                let Some(held) = self
                    .holds
                    .queues
                    .get_mut(&collection)
                    .and_then(|q| q.pop_front())
                else {
                    break;
                };
                self.metrics.assets.held.dec();
                if !ready {
                    self.metrics.assets.hold_timeouts.inc();
                    info!(
                        collection,
                        files = held.files.len(),
                        "a change held for its files is sent before they are cached (assets.hold_timeout)"
                    );
                }
                self.handle_now(held.command);
            }
        }
        self.holds.queues.retain(|_, q| !q.is_empty());
    }
}
