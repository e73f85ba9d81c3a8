//! The activity cursor: the source of truth behind every mode.
//!
//! At start-up the relay reads the newest activity id, then loads every collection (so the
//! mirror holds current records), then follows `directus_activity` from that id: create,
//! update and delete rows of the relayed collections, with an overlap below the cursor for
//! databases that make ids visible out of order. Changed items are re-read by key, so the hub
//! always gets current records and never moves an item backwards; the mirror drops what kiosks
//! already have.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;
use tracing::{debug, info, warn};

use crate::config::{CollectionConfig, Config};
use crate::hub::event::{Action, Change, CurrentRecords, Key};
use crate::hub::{Command, HubHandle};
use crate::metrics::Metrics;
use crate::upstream::directus::{Accountability, Directus, DirectusError, PAGE};

/// Activity ids re-read below the cursor on every catch-up. Ids are allocated before commit on
/// multi-writer databases, so a lower id can appear after a higher one was read.
pub const OVERLAP_IDS: u64 = 100;

/// Keys re-read per `/items` request.
pub const KEYS_PER_READ: usize = 100;

/// Why a sync step stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Directus(#[from] DirectusError),
    #[error("the relay is shutting down")]
    Stopped,
}

/// The activity cursor and what it needs.
#[derive(Debug)]
pub struct Syncer {
    pub directus: Directus,
    collections: Vec<CollectionConfig>,
    max_items: usize,
    hub: HubHandle,
    metrics: Arc<Metrics>,
    /// The newest activity id whose change is in the hub.
    cursor: u64,
    /// Start-up continues from a saved cursor.
    resume: bool,
    /// Ids above `cursor - OVERLAP_IDS` already handled.
    done: BTreeSet<u64>,
    /// Collections followed through the activity log.
    followed: Vec<String>,
    /// Collections whose activity is off (or unreadable): reloaded whole on every reconcile.
    reloaded: Vec<String>,
}

impl Syncer {
    /// `resume` is the saved cursor of a previous run whose mirror was restored: start-up then
    /// follows the activity log from there instead of reloading every collection.
    pub fn new(
        directus: Directus,
        config: &Config,
        hub: HubHandle,
        metrics: Arc<Metrics>,
        resume: Option<u64>,
    ) -> Syncer {
        Syncer {
            directus,
            collections: config.collections.clone(),
            max_items: config.limits.mirror_items,
            hub,
            metrics,
            cursor: resume.unwrap_or(0),
            resume: resume.is_some(),
            done: BTreeSet::new(),
            followed: Vec::new(),
            reloaded: Vec::new(),
        }
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn hub(&self) -> &HubHandle {
        &self.hub
    }

    /// Start-up (and after every outage): find out which collections the activity log covers,
    /// note the newest id, load every collection whole, and set the cursor to that id — no
    /// change can slip between the load and the cursor.
    pub async fn start(&mut self) -> Result<(), SyncError> {
        let newest = match self.directus.newest_activity_id().await {
            Ok(id) => Some(id),
            Err(e) if e.is_forbidden() => {
                warn!(
                    "Directus refused the activity log (403): give the relay's user read on directus_activity. Until then every collection is reloaded whole every directus.reconcile_interval, and deletes show up only then"
                );
                None
            }
            Err(e) => return Err(e.into()),
        };
        self.followed.clear();
        self.reloaded.clear();
        for c in self.collections.clone() {
            let recorded = match newest {
                None => Accountability::Off,
                Some(_) => self.directus.accountability(&c.name).await?,
            };
            match recorded {
                Accountability::Recorded => self.followed.push(c.name.clone()),
                Accountability::Unknown => {
                    debug!(
                        collection = c.name,
                        "cannot read the collection's settings; assuming its activity is recorded"
                    );
                    self.followed.push(c.name.clone());
                }
                Accountability::Off => {
                    if newest.is_some() {
                        warn!(
                            collection = c.name,
                            "Directus records no activity for this collection (accountability is off): the relay reloads it whole every directus.reconcile_interval. Set the collection's Activity Tracking to record activity to relay its changes at once"
                        );
                    }
                    self.reloaded.push(c.name.clone());
                }
            }
            if !(self.resume && newest.is_some()) || self.reloaded.contains(&c.name) {
                self.load(&c).await?;
            }
        }
        match newest {
            Some(_) if self.resume => {
                info!(
                    cursor = self.cursor,
                    "resuming from the saved activity cursor"
                );
                self.catch_up().await?;
            }
            Some(newest) => {
                self.cursor = newest;
                self.done.clear();
            }
            None => {}
        }
        self.resume = false;
        self.report_cursor().await?;
        info!(cursor = self.cursor, "in sync with Directus");
        Ok(())
    }

    /// Reads the whole collection, page by page, and hands it to the hub as complete (so
    /// items deleted meanwhile are deleted). Stops reading once past the mirror bound.
    async fn load(&mut self, collection: &CollectionConfig) -> Result<(), SyncError> {
        let mut items: Vec<(Key, Option<Value>)> = Vec::new();
        let mut after: Option<Value> = None;
        let mut complete = true;
        loop {
            let page = self
                .directus
                .items_page(
                    &collection.name,
                    &collection.key_field,
                    &collection.fields,
                    after.as_ref(),
                    PAGE,
                )
                .await?;
            let full = page.len() == PAGE;
            for record in page {
                let Some(key) = record.get(&collection.key_field).and_then(Key::from_json) else {
                    warn!(
                        collection = collection.name,
                        key_field = collection.key_field,
                        "an item has no usable key field, so it is skipped: check collections.key_field against the collection's primary key in Directus"
                    );
                    continue;
                };
                after = Some(key.json.clone());
                items.push((key, Some(record)));
            }
            if items.len() > self.max_items {
                complete = false;
                break;
            }
            if !full {
                break;
            }
        }
        debug!(
            collection = collection.name,
            items = items.len(),
            complete,
            "collection loaded"
        );
        self.send(CurrentRecords {
            collection: collection.name.clone(),
            items,
            hint: Action::Create,
            complete,
            payload: None,
        })
        .await
    }

    /// Reloads the collections the activity log does not cover.
    pub async fn reload_unfollowed(&mut self) -> Result<(), SyncError> {
        for name in self.reloaded.clone() {
            if let Some(c) = self.collections.iter().find(|c| c.name == name).cloned() {
                self.load(&c).await?;
            }
        }
        Ok(())
    }

    /// Follows the activity log from the cursor; returns how many rows were new.
    pub async fn catch_up(&mut self) -> Result<usize, SyncError> {
        if self.followed.is_empty() {
            return Ok(0);
        }
        let mut after = self.cursor.saturating_sub(OVERLAP_IDS);
        let mut handled = 0;
        loop {
            let page = self
                .directus
                .activity_after(after, &self.followed, PAGE)
                .await?;
            let full = page.len() == PAGE;
            let Some(last) = page.last().map(|r| r.id) else {
                break;
            };
            let fresh: Vec<_> = page
                .into_iter()
                .filter(|r| !self.done.contains(&r.id))
                .collect();
            handled += fresh.len();
            self.apply_rows(&fresh).await?;
            for row in &fresh {
                self.done.insert(row.id);
            }
            self.cursor = self.cursor.max(last);
            after = last;
            if !full {
                break;
            }
        }
        self.metrics.activity_cursor.set(self.cursor as i64);
        self.metrics.last_caught_up.set(crate::clock::unix_now());
        let floor = self.cursor.saturating_sub(OVERLAP_IDS);
        self.done = self.done.split_off(&floor);
        if handled > 0 {
            debug!(
                rows = handled,
                cursor = self.cursor,
                "caught up from the activity log"
            );
        }
        Ok(handled)
    }

    /// Re-reads the items the rows name and hands their current records to the hub.
    async fn apply_rows(
        &mut self,
        rows: &[crate::upstream::directus::ActivityRow],
    ) -> Result<(), SyncError> {
        // Per collection, the keys in first-seen order and what happened to each.
        let mut order: Vec<String> = Vec::new();
        let mut keys: HashMap<String, Vec<(String, Action)>> = HashMap::new();
        for row in rows {
            let action = match row.action.as_str() {
                "create" => Action::Create,
                "update" => Action::Update,
                "delete" => Action::Delete,
                _ => continue,
            };
            let list = keys.entry(row.collection.clone()).or_insert_with(|| {
                order.push(row.collection.clone());
                Vec::new()
            });
            match list.iter_mut().find(|(k, _)| *k == row.item) {
                Some((_, seen)) if *seen == Action::Create && action == Action::Update => {}
                Some((_, seen)) => *seen = action,
                None => list.push((row.item.clone(), action)),
            }
        }
        for collection in order {
            let Some(config) = self
                .collections
                .iter()
                .find(|c| c.name == collection)
                .cloned()
            else {
                continue;
            };
            let list = keys.remove(&collection).unwrap_or_default();
            for chunk in list.chunks(KEYS_PER_READ) {
                let wanted: Vec<String> = chunk.iter().map(|(k, _)| k.clone()).collect();
                let records = self
                    .directus
                    .items_by_keys(&collection, &config.key_field, &wanted, &config.fields)
                    .await?;
                let mut by_key: HashMap<String, Value> = records
                    .into_iter()
                    .filter_map(|r| {
                        let key = r.get(&config.key_field).and_then(Key::from_json)?;
                        Some((key.text, r))
                    })
                    .collect();
                let hint = chunk.last().map_or(Action::Update, |(_, a)| *a);
                let items = chunk
                    .iter()
                    .map(|(k, _)| {
                        let record = by_key.remove(k);
                        let json = record
                            .as_ref()
                            .and_then(|r| r.get(&config.key_field).cloned())
                            .unwrap_or_else(|| Value::String(k.clone()));
                        (
                            Key {
                                text: k.clone(),
                                json,
                            },
                            record,
                        )
                    })
                    .collect();
                self.send(CurrentRecords {
                    collection: collection.clone(),
                    items,
                    hint,
                    complete: false,
                    payload: None,
                })
                .await?;
            }
        }
        Ok(())
    }

    /// A change a webhook announced: re-reads its items for their full records (deletes need
    /// no read) and hands them to the hub with the submitted payload. If Directus cannot be
    /// read, the change goes to the hub as sent, so kiosks still get it.
    pub async fn reread(&mut self, change: Change) -> Result<(), SyncError> {
        let Some(config) = self
            .collections
            .iter()
            .find(|c| c.name == change.collection)
            .cloned()
        else {
            return Ok(());
        };
        let records = if change.action == Action::Delete {
            Vec::new()
        } else {
            let wanted: Vec<String> = change.keys.iter().map(|k| k.text.clone()).collect();
            match self
                .directus
                .items_by_keys(&config.name, &config.key_field, &wanted, &config.fields)
                .await
            {
                Ok(records) => records,
                Err(e) => {
                    self.hub
                        .apply(change)
                        .await
                        .map_err(|_| SyncError::Stopped)?;
                    return Err(e.into());
                }
            }
        };
        let mut by_key: HashMap<String, Value> = records
            .into_iter()
            .filter_map(|r| Some((r.get(&config.key_field).and_then(Key::from_json)?.text, r)))
            .collect();
        let items = change
            .keys
            .iter()
            .map(|k| (k.clone(), by_key.remove(&k.text)))
            .collect();
        self.send(CurrentRecords {
            collection: change.collection,
            items,
            hint: change.action,
            complete: false,
            payload: change.payload,
        })
        .await
    }

    /// Tells the hub the cursor, after the changes it covers (kept in the state file).
    async fn report_cursor(&self) -> Result<(), SyncError> {
        self.hub
            .send(Command::Cursor(self.cursor))
            .await
            .map_err(|_| SyncError::Stopped)
    }

    async fn send(&self, sync: CurrentRecords) -> Result<(), SyncError> {
        self.hub
            .send(Command::Sync(sync))
            .await
            .map_err(|_| SyncError::Stopped)
    }
}
