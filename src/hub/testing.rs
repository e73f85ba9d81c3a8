//! What the hub's unit tests share: a hub without kiosks, changes, and the events it kept.

use std::sync::Arc;

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use tokio::sync::watch;

use super::event::{Action, Change, Key};
use super::subscribe::{Since, SubscribeRequest, Wanted};
use super::{Hub, HubReport};
use crate::config::Config;
use crate::metrics::Metrics;

pub(super) fn hub(extra: &str) -> Hub {
    let config = Config::from_toml(&format!(
        "clients.allow_anonymous = true\n[webhook]\nsecret = \"0123456789abcdef\"\n[[collections]]\nname = \"screens\"\n[[collections]]\nname = \"channels\"\nkey_field = \"slug\"\n{extra}"
    ))
    .expect("valid");
    let (_svc, io) = SocketIo::new_svc();
    io.ns("/", async |_: SocketRef| {});
    let (report_tx, _) = watch::channel(HubReport::default());
    Hub::new(config, io, Arc::new(Metrics::new()), Arc::new(report_tx))
}

pub(super) fn change(
    collection: &str,
    action: Action,
    keys: &[Value],
    payload: Option<Value>,
) -> Change {
    Change {
        collection: collection.into(),
        action,
        keys: keys
            .iter()
            .map(|k| Key::from_json(k).expect("key"))
            .collect(),
        payload,
    }
}

/// (seq, event name, body) of everything in the ring after `since`.
pub(super) fn events(hub: &Hub, since: u64) -> Vec<(u64, String, Value)> {
    hub.ring
        .since(since)
        .expect("in the ring")
        .map(|e| {
            let body: Value = serde_json::from_str(e.body.get()).expect("JSON");
            (e.seq, e.name.to_string(), body)
        })
        .collect()
}

pub(super) fn request(collections: &[&str], since: Option<(&str, u64)>) -> SubscribeRequest {
    SubscribeRequest {
        collections: collections
            .iter()
            .map(|c| Wanted::Collection(c.to_string()))
            .collect(),
        since: since.map(|(epoch, seq)| Since {
            epoch: epoch.into(),
            seq,
        }),
    }
}
