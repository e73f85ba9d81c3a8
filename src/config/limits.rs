//! `[limits]`: the named bound on every queue, buffer and input, and the memory budget they add
//! up to.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults;
use super::units::{byte_size, duration};

/// Largest REST response the relay reads from Directus. A page of items or activity larger
/// than this is refused with an error (lower the page size or the fields read). Fixed, not a
/// key; counted in [`Limits::memory_budget_bytes`].
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// Connections kept free above [`Limits::max_connections`]'s default for requests that are
/// not kiosks (the webhook, `/healthz`, `/metrics`, a polling kiosk's second connection).
pub const CONNECTION_HEADROOM: usize = 64;

/// The kernel's send buffer of every accepted connection (`SO_SNDBUF`; Linux doubles the
/// figure asked for), instead of letting it grow to `net.ipv4.tcp_wmem`'s 4 MiB: what a kiosk
/// does not read stays in the relay's own bounded queues, where it is counted, and the kernel
/// holds at most 32 KiB per connection (socket buffers count against the unit's `MemoryMax`).
/// That is some twenty segments on Ethernet or Wi-Fi: 3 MB/s over a round trip of 10 ms, ten
/// times that on a wired LAN. Fixed, not a key; counted in [`Limits::memory_budget_bytes`].
pub const SEND_BUFFER: usize = 16 << 10;

/// [`SEND_BUFFER`] for a kiosk on the relay's own machine (a screen attached to the Pi that
/// runs the relay): loopback's segments are 64 KiB, and a send buffer of less than two of them
/// waits for a delayed acknowledgement after every write (measured: an 8 MB snapshot took 3.9 s
/// instead of 0.04 s).
pub const LOOPBACK_SEND_BUFFER: usize = 64 << 10;

/// Descriptors the relay needs besides its connections: the listener, the state file and its
/// temporary copy, connections to Directus, the runtime's own (epoll, eventfd), stdio.
pub const OTHER_DESCRIPTORS: u64 = 64;

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
    /// How long an Engine.IO session may take to join a namespace (socketioxide's connect
    /// timeout). Longer: the session is closed.
    #[serde(default = "defaults::join_timeout", with = "duration")]
    pub join_timeout: Duration,
    /// Engine.IO sessions that have not joined a namespace, at once. Default: `max_clients`.
    /// More: a request that would open one is answered 503 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_sessions: Option<usize>,
    /// How long a new connection may take to send its first request head. Longer: closed.
    #[serde(default = "defaults::header_timeout", with = "duration")]
    pub header_timeout: Duration,
    /// How long a connection that is not a kiosk's WebSocket may carry no request (kept
    /// alive between requests, or a request head sent slowly). Longer: closed.
    #[serde(default = "defaults::idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// Open connections, kiosks' included. Default: `max_clients + max_pending_sessions + 64`.
    /// Full: the connection idle the longest is closed for a new one; with none idle, the new
    /// one is closed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
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
            join_timeout: defaults::join_timeout(),
            max_pending_sessions: None,
            header_timeout: defaults::header_timeout(),
            idle_timeout: defaults::idle_timeout(),
            max_connections: None,
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
        // A connected kiosk, and one that fell behind (README, "The memory budget").
        const KIOSK: u64 = (8 + 24) << 10;
        const PENDING_SESSION: u64 = 11 << 10;
        const CONNECTION: u64 = 16 << 10;
        // What the kernel holds for a kiosk that falls behind (twice `SO_SNDBUF`): not RSS,
        // but counted by the unit's memory cgroup.
        const KERNEL_SEND_BUFFER: u64 = 2 * SEND_BUFFER as u64;
        8 * MIB
            + KIOSK * self.max_clients as u64
            + PENDING_SESSION * self.max_pending_sessions() as u64
            + CONNECTION * self.max_connections() as u64
            + 3 * self.mirror_bytes as u64
            + self.replay_bytes as u64
            + (self.kiosk_queue * self.max_event_bytes) as u64
            + 3 * MAX_RESPONSE_BYTES as u64
            + self.snapshot_bytes.max(self.mirror_bytes) as u64
            + self.mirror_bytes as u64
            + KERNEL_SEND_BUFFER * self.max_clients as u64
    }

    /// `max_pending_sessions`, or `max_clients` when it is not set.
    pub fn max_pending_sessions(&self) -> usize {
        self.max_pending_sessions.unwrap_or(self.max_clients)
    }

    /// `max_connections`, or `max_clients + max_pending_sessions + 64`
    /// when it is not set.
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or(
            self.max_clients
                .saturating_add(self.max_pending_sessions())
                .saturating_add(CONNECTION_HEADROOM),
        )
    }

    /// The descriptors the relay may need with these limits: [`Limits::max_connections`] and
    /// the relay's own 64 (`OTHER_DESCRIPTORS`).
    pub fn descriptors_needed(&self) -> u64 {
        self.max_connections() as u64 + OTHER_DESCRIPTORS
    }

    /// The most events replayed to one subscribing kiosk; more missed events get a snapshot.
    /// Half the kiosk queue, so that the ack and the replay always fit into it.
    pub fn max_replay_per_subscribe(&self) -> usize {
        self.kiosk_queue / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's memory budget with the default limits ("The memory budget").
    #[test]
    fn the_default_budget_is_the_one_the_readme_gives() {
        let limits = Limits::default();
        assert_eq!(limits.max_pending_sessions(), 500);
        assert_eq!(limits.max_connections(), 1064);
        let mib = limits.memory_budget_bytes() as f64 / (1u64 << 20) as f64;
        assert_eq!(mib.round(), 309.0, "{mib} MiB");
        let config = super::super::Config::default();
        let mib = config.memory_budget_bytes() as f64 / (1u64 << 20) as f64;
        assert_eq!(mib.round(), 311.0, "with the known screens: {mib} MiB");
    }
}
