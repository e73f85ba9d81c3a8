//! What the hub reports about itself to the rest of the relay (the status page, `/readyz`,
//! systemd): the upstream's state and since when, the epoch and the newest seq. It imports
//! nothing above the clock, so the status page can show it without depending on the hub.

use crate::clock::now_rfc3339;

/// What the hub tells the rest of the relay about itself, refreshed every hub tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubReport {
    pub upstream: UpstreamState,
    pub since: String,
    pub epoch: String,
    pub seq: u64,
}

impl Default for HubReport {
    fn default() -> Self {
        Self {
            upstream: UpstreamState::Offline,
            since: now_rfc3339(),
            epoch: String::new(),
            seq: 0,
        }
    }
}

/// The upstream's state as kiosks see it in `relay.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamState {
    Live,
    CatchingUp,
    Offline,
}

impl UpstreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamState::Live => "live",
            UpstreamState::CatchingUp => "catching-up",
            UpstreamState::Offline => "offline",
        }
    }
}
