//! `[limits]`: the named bound on every queue, buffer and input, and the memory budget they add
//! up to.

use serde::{Deserialize, Serialize};

use super::defaults;
use super::units::byte_size;

/// Largest REST response the relay reads from Directus. A page of items or activity larger
/// than this is refused with an error (lower the page size or the fields read). Fixed, not a
/// key; counted in [`Limits::memory_budget_bytes`].
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// Named bounds on every queue, buffer and input. See the README for the policy when full.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Changes waiting for the hub. Full: the webhook answers 503.
    #[serde(default = "defaults::hub_inbox")]
    pub hub_inbox: usize,
    /// Events kept for resuming kiosks. Full: the oldest is dropped.
    #[serde(default = "defaults::replay_events")]
    pub replay_events: usize,
    /// Bytes of events kept for resuming kiosks. Full: the oldest is dropped.
    #[serde(default = "defaults::replay_bytes", with = "byte_size")]
    pub replay_bytes: usize,
    /// Items mirrored per collection. Exceeded: that collection stops being mirrored.
    #[serde(default = "defaults::mirror_items")]
    pub mirror_items: usize,
    /// Bytes of mirrored records, all collections together. Exceeded: the collection that
    /// grew past it stops being mirrored.
    #[serde(default = "defaults::mirror_bytes", with = "byte_size")]
    pub mirror_bytes: usize,
    /// Largest webhook body accepted. Larger: 413.
    #[serde(default = "defaults::webhook_body_bytes", with = "byte_size")]
    pub webhook_body_bytes: usize,
    /// Packets queued per kiosk. Full: the kiosk stops receiving and is disconnected; it
    /// reconnects and resumes.
    #[serde(default = "defaults::kiosk_queue")]
    pub kiosk_queue: usize,
    /// Kiosks connected at once. More: refused with a `connect_error` that says why.
    #[serde(default = "defaults::max_clients")]
    pub max_clients: usize,
    /// Largest message a kiosk may send (WebSocket message and frame, polling payload).
    #[serde(default = "defaults::max_message_bytes", with = "byte_size")]
    pub max_message_bytes: usize,
    /// Largest event sent to kiosks. Larger: sent with keys only and `truncated: true`.
    #[serde(default = "defaults::max_event_bytes", with = "byte_size")]
    pub max_event_bytes: usize,
    /// Kiosk requests (a connected kiosk's status, a subscribe) waiting for the hub, in a queue
    /// of their own so that changes never wait behind them. Full: a kiosk's request waits its
    /// turn (each kiosk has at most one subscribe in progress, so at most `max_clients` wait).
    #[serde(default = "defaults::kiosk_requests")]
    pub kiosk_requests: usize,
    /// Collections and routed rooms one subscribe may name. More: the subscribe is declined
    /// with an error that says so.
    #[serde(default = "defaults::max_subscribe_targets")]
    pub max_subscribe_targets: usize,
    /// Bytes of snapshot answers queued to kiosks and not read yet. Full: a subscribe that
    /// needs a snapshot waits its turn (in the order kiosks asked); a kiosk that stops reading
    /// its snapshot is cut off and resumes later. One snapshot larger than this is answered
    /// alone.
    #[serde(default = "defaults::snapshot_bytes", with = "byte_size")]
    pub snapshot_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            hub_inbox: defaults::hub_inbox(),
            replay_events: defaults::replay_events(),
            replay_bytes: defaults::replay_bytes(),
            mirror_items: defaults::mirror_items(),
            mirror_bytes: defaults::mirror_bytes(),
            webhook_body_bytes: defaults::webhook_body_bytes(),
            kiosk_queue: defaults::kiosk_queue(),
            max_clients: defaults::max_clients(),
            max_message_bytes: defaults::max_message_bytes(),
            max_event_bytes: defaults::max_event_bytes(),
            kiosk_requests: defaults::kiosk_requests(),
            max_subscribe_targets: defaults::max_subscribe_targets(),
            snapshot_bytes: defaults::snapshot_bytes(),
        }
    }
}

impl Limits {
    /// The worst-case memory of a relay with these limits: the README's memory budget
    /// ("The memory budget"), with the per-kiosk figures measured there.
    pub fn memory_budget_bytes(&self) -> u64 {
        const MIB: u64 = 1 << 20;
        const KIOSK: u64 = (30 + 140) << 10;
        8 * MIB
            + KIOSK * self.max_clients as u64
            + 3 * self.mirror_bytes as u64
            + self.replay_bytes as u64
            + (self.kiosk_queue * self.max_event_bytes) as u64
            + 3 * MAX_RESPONSE_BYTES as u64
    }

    /// The most events replayed to one subscribing kiosk; more missed events get a snapshot.
    /// Half the kiosk queue, so that the ack and the replay always fit into it.
    pub fn max_replay_per_subscribe(&self) -> usize {
        self.kiosk_queue / 2
    }
}
