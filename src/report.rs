//! What the hub reports about itself to the rest of the relay (the status page, `/readyz`,
//! systemd): the upstream's state and since when, the epoch and the newest seq. It imports
//! nothing above the clock, so the status page can show it without depending on the hub.

use crate::clock::now_rfc3339;

/// What the hub tells the rest of the relay about itself, refreshed every hub tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubStatus {
    pub upstream: Upstream,
    pub since: String,
    pub epoch: String,
    pub seq: u64,
}

impl Default for HubStatus {
    fn default() -> Self {
        Self {
            upstream: Upstream::Offline,
            since: now_rfc3339(),
            epoch: String::new(),
            seq: 0,
        }
    }
}

/// Upstream state as kiosks see it in `relay.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Live,
    CatchingUp,
    Offline,
}

impl Upstream {
    pub fn as_str(self) -> &'static str {
        match self {
            Upstream::Live => "live",
            Upstream::CatchingUp => "catching-up",
            Upstream::Offline => "offline",
        }
    }
}
