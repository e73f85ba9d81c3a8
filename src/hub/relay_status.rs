//! The relay's status as the hub tells it: to kiosks in `relay.status` (when they connect and
//! whenever the upstream's state changes), and to the rest of the relay as [`HubStatus`].

use serde_json::{Value, json};
use socketioxide::extract::SocketRef;
use tracing::info;

use super::{Hub, HubStatus, Upstream};
use crate::clock::{self, now_rfc3339};

impl Hub {
    pub(super) fn publish_status(&self) {
        let status = HubStatus {
            upstream: self.upstream.0,
            since: self.upstream.1.clone(),
            epoch: self.epoch.clone(),
            seq: self.seq,
        };
        self.status_tx.send_if_modified(|old| {
            let changed = *old != status;
            *old = status;
            changed
        });
    }

    pub(super) fn set_upstream(&mut self, state: Upstream) {
        if self.upstream.0 == state {
            return;
        }
        info!(upstream = state.as_str(), "upstream state changed");
        if self.upstream.0 == Upstream::Live {
            self.known_current = (now_rfc3339(), clock::unix_now());
        }
        // Offline, kiosks show how old their content is: when it was last known current.
        let since = match state {
            Upstream::Offline => self.known_current.0.clone(),
            Upstream::Live | Upstream::CatchingUp => now_rfc3339(),
        };
        self.upstream = (state, since);
        self.note_upstream();
        if state == Upstream::Offline {
            self.metrics.upstream_outages.inc();
        }
        self.publish_status();
        let status = self.status();
        for socket in self.kiosks() {
            if let Err(e) = socket.emit("relay.status", &status) {
                self.send_failed(&socket, e);
            }
        }
    }

    pub(super) fn status(&self) -> Value {
        json!({
            "upstream": self.upstream.0.as_str(),
            "since": self.upstream.1,
            "epoch": self.epoch,
            "seq": self.seq,
        })
    }

    pub(super) fn connected(&self, socket: SocketRef) {
        if !socket.connected() {
            return;
        }
        if let Err(e) = socket.emit("relay.status", &self.status()) {
            self.send_failed(&socket, e);
        }
    }
}
