//! The site in Directus (`[directus] heartbeat_collection`): every minute, and whenever the
//! upstream's state, the number of screens online or which screens are missing changes, the
//! relay writes one row for itself into that collection, keyed by `site_name`, so the people
//! who edit content see in Directus which sites and screens are live. A failed write is logged (once until it works
//! again) and tried at the next beat; it never holds up anything else.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::directus::{Directus, DirectusError, Method};
use crate::clock::{format_rfc3339, now_rfc3339};
use crate::config::Config;
use crate::fleet::Fleet;
use crate::hub::HubHandle;
use crate::metrics::Metrics;

/// How often the row is written when nothing changes.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// How often the relay looks for a change worth writing at once.
const CHANGE_CHECK: Duration = Duration::from_secs(2);

/// What the row says, and what a change of is written at once.
#[derive(Debug, Clone, PartialEq)]
struct Beat {
    upstream: &'static str,
    online: usize,
    /// The devices of the missing screens, sorted.
    missing: Vec<String>,
}

/// Writes the site's row, creating it when there is none.
#[derive(Debug)]
pub struct Heartbeat {
    client: Directus,
    collection: String,
    site: String,
}

impl Heartbeat {
    pub fn new(client: Directus, collection: &str, site: &str) -> Self {
        Self {
            client,
            collection: collection.to_owned(),
            site: site.to_owned(),
        }
    }

    /// Writes `row` (with the site's key): an update of the row, or a create when the update
    /// finds none (Directus answers an update of a missing row with 403). An update answers
    /// 204 (`null`) when the relay's user may not read the row back: that is a success too.
    pub async fn write(&mut self, mut row: Value) -> Result<(), DirectusError> {
        row["site"] = json!(self.site);
        let collection = encode(&self.collection);
        let item = format!("/items/{collection}/{}", encode(&self.site));
        match self.client.send(Method::PATCH, &item, &row).await {
            Ok(answer) if answer.is_null() || !answer["data"].is_null() => Ok(()),
            _ => self
                .client
                .send(Method::POST, &format!("/items/{collection}"), &row)
                .await
                .map(drop),
        }
    }
}

/// Creates the heartbeat collection unless it exists (for `setup-flow`, with an admin token).
/// `Ok(true)`: created.
pub async fn ensure_collection(
    client: &mut Directus,
    collection: &str,
) -> Result<bool, DirectusError> {
    if client
        .get(&format!("/collections/{}", encode(collection)), "")
        .await
        .is_ok()
    {
        return Ok(false);
    }
    // Each field with its meta and schema, as the Data Studio sends them: Directus 12 refuses
    // a field without meta ("Validation failed for field collection").
    let field = |name: &str, kind: &str, interface: &str| json!({ "field": name, "type": kind, "meta": { "interface": interface, "readonly": true }, "schema": {} });
    let body = json!({
        "collection": collection,
        "meta": { "icon": "router", "note": "Written by directus-relay: one row per site, updated every minute" },
        "schema": {},
        "fields": [
            {
                "field": "site",
                "type": "string",
                "meta": { "interface": "input", "readonly": true },
                "schema": { "is_primary_key": true, "length": 100, "has_auto_increment": false },
            },
            field("version", "string", "input"),
            field("upstream", "string", "input"),
            field("screens_online", "integer", "input"),
            field("screens_missing", "integer", "input"),
            field("missing_screens", "text", "input-multiline"),
            field("last_change", "timestamp", "datetime"),
            field("memory_bytes", "bigInteger", "input"),
            field("updated", "timestamp", "datetime"),
        ],
    });
    client.send(Method::POST, "/collections", &body).await?;
    Ok(true)
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The row for `beat`.
fn row(beat: &Beat, metrics: &Metrics) -> Value {
    let last_change = metrics.last_change.get();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "upstream": beat.upstream,
        "screens_online": beat.online,
        "screens_missing": beat.missing.len(),
        "missing_screens": beat.missing.join(", "),
        "last_change": (last_change > 0).then(|| format_rfc3339(
            std::time::UNIX_EPOCH + Duration::from_secs(last_change as u64)
        )),
        "memory_bytes": crate::status_page::rss_bytes(),
        "updated": now_rfc3339(),
    })
}

fn beat(hub: &HubHandle, fleet: &Fleet) -> Beat {
    let (online, missing) = fleet.summary();
    Beat {
        upstream: hub.report().upstream.as_str(),
        online,
        missing,
    }
}

/// Starts the heartbeat when `[directus] heartbeat_collection` is set.
pub fn spawn(
    config: &Config,
    hub: HubHandle,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    let Some(directus) = &config.directus else {
        return;
    };
    let Some(collection) = &directus.heartbeat_collection else {
        return;
    };
    let client = match Directus::new(directus) {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %e, "no heartbeat to Directus: cannot set up its client");
            return;
        }
    };
    let mut heartbeat = Heartbeat::new(client, collection, &config.site_name);
    let collection = collection.clone();
    tracker.spawn(async move {
        let mut every = tokio::time::interval(CHANGE_CHECK);
        let mut last: Option<(Beat, tokio::time::Instant)> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let now = beat(&hub, &fleet);
            let due = match &last {
                None => true,
                Some((before, at)) => *before != now || at.elapsed() >= INTERVAL,
            };
            if !due {
                continue;
            }
            let result = heartbeat.write(row(&now, &metrics)).await;
            last = Some((now, tokio::time::Instant::now()));
            match result {
                Ok(()) if failing => {
                    failing = false;
                    info!(collection, "the site's heartbeat row is written again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    warn!(collection, error = %e, "cannot write the site's heartbeat row to Directus; tried again every minute (directus.heartbeat_collection; `directus-relay check` says what is missing)");
                }
                Err(_) => {}
            }
        }
    });
}
