//! The relay's status as the hub tells it: to kiosks in `relay.status` (when they connect and
//! whenever the upstream's state changes), and to the rest of the relay as [`HubReport`].

use serde_json::{Value, json};
use socketioxide::extract::SocketRef;
use tracing::info;

use super::{Hub, HubReport, UpstreamSince, UpstreamState};
use crate::clock::{Timestamp, now_rfc3339};

impl Hub {
    /// Publishes what the hub reports about itself (to `/readyz`, the status page and
    /// systemd), when it changed.
    pub(super) fn publish_report(&self) {
        let report = HubReport {
            upstream: self.upstream.state,
            since: self.upstream.since.clone(),
            epoch: self.epoch.clone(),
            seq: self.seq,
        };
        self.report_tx.send_if_modified(|old| {
            let changed = *old != report;
            *old = report;
            changed
        });
    }

    /// The upstream's state changed: kiosks are told at once.
    pub(super) fn set_upstream(&mut self, state: UpstreamState) {
        if self.upstream.state == state {
            return;
        }
        info!(upstream = state.as_str(), "upstream state changed");
        if self.upstream.state == UpstreamState::Live {
            self.known_current = Timestamp::now();
        }
        // Offline, kiosks show how old their content is: when it was last known current.
        let since = match state {
            UpstreamState::Offline => self.known_current.rfc3339.clone(),
            UpstreamState::Live | UpstreamState::CatchingUp => now_rfc3339(),
        };
        self.upstream = UpstreamSince { state, since };
        self.note_upstream();
        if state == UpstreamState::Offline {
            self.metrics.upstream_outages.inc();
        }
        self.publish_report();
        let status = self.relay_status();
        for socket in self.kiosks() {
            if let Err(e) = socket.emit("relay.status", &status) {
                self.send_failed(&socket, e);
            }
        }
    }

    /// The body of `relay.status`.
    pub(super) fn relay_status(&self) -> Value {
        json!({
            "upstream": self.upstream.state.as_str(),
            "since": self.upstream.since,
            "epoch": self.epoch,
            "seq": self.seq,
        })
    }

    pub(super) fn connected(&self, socket: SocketRef) {
        if !socket.connected() {
            return;
        }
        if let Err(e) = socket.emit("relay.status", &self.relay_status()) {
            self.send_failed(&socket, e);
        }
    }
}
