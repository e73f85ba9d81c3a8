//! Prometheus metrics, served at `/metrics` in the OpenMetrics text format.
//!
//! Counters and gauges are atomics inside `prometheus-client`; every part of the relay holds
//! an `Arc<Metrics>` and updates its own figures.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EventLabels {
    pub collection: String,
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CollectionLabels {
    pub collection: String,
}

/// Every figure the relay reports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// What the status page shows: recent events and refusals, the mirror, the rooms.
    pub board: crate::status_page::Board,
    /// The files cache's figures (`[assets]`), under `relay_assets_*`.
    pub assets: std::sync::Arc<crate::assets::AssetFigures>,
    /// Kiosks connected right now.
    pub kiosks_connected: Gauge,
    /// Kiosks refused, by reason (`full`, `no-token`, `bad-token`).
    pub kiosks_refused: Family<ReasonLabels, Counter>,
    /// Changes accepted from upstream, by collection and action.
    pub changes_in: Family<EventLabels, Counter>,
    /// Changes dropped because kiosks already had them.
    pub duplicates: Family<CollectionLabels, Counter>,
    /// Events emitted to kiosks (once per event, not per kiosk), by collection and action.
    pub events_out: Family<EventLabels, Counter>,
    /// Events sent with keys only because they exceeded `limits.max_event_bytes`.
    pub events_truncated: Family<CollectionLabels, Counter>,
    /// Event packets queued to kiosks (once per kiosk).
    pub deliveries: Counter,
    /// Kiosks cut off because their outbound queue was full.
    pub kiosk_overflows: Counter,
    /// Not reported: counts the times a kiosk may have joined or left a room (connected,
    /// subscribed, cut off, disconnected), so the hub recounts the status page's rooms only
    /// after a change instead of walking every kiosk every second.
    pub room_changes: AtomicU64,
    /// Webhook requests refused, by reason.
    pub webhook_rejects: Family<ReasonLabels, Counter>,
    /// Commands waiting in the hub's inbox.
    pub hub_queue_depth: Gauge,
    /// Engine.IO sessions refused because `limits.max_pending_sessions` had not joined yet.
    pub sessions_refused: Counter,
    /// Connections the relay closed for the bounds on connections, by reason: `evicted` (the
    /// idlest, for a new one at `limits.max_connections`), `turned-away` (a new one at the cap
    /// with none idle), `timed-out` (`limits.header_timeout` or `limits.idle_timeout`).
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// Bytes of snapshot answers queued to kiosks and not read yet (`limits.snapshot_bytes`).
    pub snapshot_bytes_charged: Gauge,
    /// Subscribes waiting for room in the snapshot budget.
    pub subscribes_waiting: Gauge,
    /// The seq of the newest event.
    pub seq: Gauge,
    pub replay_events: Gauge,
    pub replay_bytes: Gauge,
    /// Items mirrored, per collection.
    pub mirror_items: Family<CollectionLabels, Gauge>,
    pub mirror_bytes: Gauge,
    /// Subscribe requests answered with a replay, a snapshot, or refused.
    pub subscribes: Family<ReasonLabels, Counter>,
    /// 1 for the upstream's current state (`live`, `catching-up`, `offline`), 0 for the others.
    pub upstream: Family<StateLabels, Gauge>,
    /// Times the upstream went offline.
    pub upstream_outages: Counter,
    /// The activity id the relay has caught up to.
    pub activity_cursor: Gauge,
    /// Unix time of the last catch-up that reached the end of the activity log.
    pub last_caught_up: Gauge,
    /// Unix time of the last event emitted to kiosks.
    pub last_change: Gauge,
    /// State file writes, and the bytes written (what an SD card sees).
    pub state_writes: Counter,
    pub state_write_bytes: Counter,
    /// State file writes that failed.
    pub state_write_failures: Counter,
    /// How long the last state file write took, fsyncs included.
    pub state_last_write: Gauge<f64, AtomicU64>,
    /// Unix time of the last state file write.
    pub state_last_write_time: Gauge,
    /// 1 while the last state file write failed: the relay serves, but cannot save.
    pub state_write_failing: Gauge,
    /// Webhook journal fsyncs (`webhook.durable`), each shared by a batch of webhooks.
    pub journal_syncs: Counter,
    /// Webhook journal writes or fsyncs that failed (their webhooks were answered 503).
    pub journal_failures: Counter,
    /// How long the last journal write and fsync took, and all of them together.
    pub journal_last_sync: Gauge<f64, AtomicU64>,
    pub journal_sync_seconds: Counter<f64, AtomicU64>,
    /// Bytes in the webhook journal's files.
    pub journal_bytes: Gauge,
    /// Known screens by state (`online`, `away`, `missing`).
    pub screens: Family<StateLabels, Gauge>,
    /// Unix time each known screen was last seen (connected: now); at most
    /// `clients.max_screens` devices, removed when a screen is forgotten.
    pub screen_last_seen: Family<DeviceLabels, Gauge>,
    /// Commands sent to screens, by outcome (`acked`, `not-acked`, `not-connected`).
    pub screen_commands: Family<ReasonLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeviceLabels {
    pub device: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

impl Metrics {
    /// A kiosk joined or left a room, or may have: see [`Metrics::room_changes`].
    pub fn note_room_change(&self) {
        self.room_changes.fetch_add(1, Ordering::Release);
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("relay");
        let m = Metrics {
            kiosks_connected: Gauge::default(),
            kiosks_refused: Family::default(),
            screens: Family::default(),
            screen_last_seen: Family::default(),
            screen_commands: Family::default(),
            changes_in: Family::default(),
            duplicates: Family::default(),
            events_out: Family::default(),
            events_truncated: Family::default(),
            deliveries: Counter::default(),
            kiosk_overflows: Counter::default(),
            room_changes: AtomicU64::new(0),
            webhook_rejects: Family::default(),
            hub_queue_depth: Gauge::default(),
            sessions_refused: Counter::default(),
            connections_closed: Family::default(),
            snapshot_bytes_charged: Gauge::default(),
            subscribes_waiting: Gauge::default(),
            seq: Gauge::default(),
            replay_events: Gauge::default(),
            replay_bytes: Gauge::default(),
            mirror_items: Family::default(),
            mirror_bytes: Gauge::default(),
            subscribes: Family::default(),
            upstream: Family::default(),
            upstream_outages: Counter::default(),
            activity_cursor: Gauge::default(),
            last_caught_up: Gauge::default(),
            last_change: Gauge::default(),
            state_writes: Counter::default(),
            state_write_bytes: Counter::default(),
            state_write_failures: Counter::default(),
            state_last_write: Gauge::default(),
            state_last_write_time: Gauge::default(),
            state_write_failing: Gauge::default(),
            journal_syncs: Counter::default(),
            journal_failures: Counter::default(),
            journal_last_sync: Gauge::default(),
            journal_sync_seconds: Counter::default(),
            journal_bytes: Gauge::default(),
            registry: Registry::default(),
            board: crate::status_page::Board::default(),
            assets: Default::default(),
        };
        m.assets.register(&mut registry);
        registry.register(
            "kiosks_connected",
            "Kiosks connected now",
            m.kiosks_connected.clone(),
        );
        registry.register(
            "kiosks_refused",
            "Kiosks refused: full (limits.max_clients), no-token, bad-token",
            m.kiosks_refused.clone(),
        );
        registry.register(
            "changes_in",
            "Changes accepted from upstream",
            m.changes_in.clone(),
        );
        registry.register(
            "duplicates_dropped",
            "Changes dropped because kiosks already had them",
            m.duplicates.clone(),
        );
        registry.register(
            "events_out",
            "Events emitted to kiosks",
            m.events_out.clone(),
        );
        registry.register(
            "events_truncated",
            "Events sent with keys only because they exceeded limits.max_event_bytes",
            m.events_truncated.clone(),
        );
        registry.register(
            "deliveries",
            "Event packets queued to kiosks",
            m.deliveries.clone(),
        );
        registry.register(
            "kiosk_overflows",
            "Kiosks cut off because their outbound queue was full",
            m.kiosk_overflows.clone(),
        );
        registry.register(
            "webhook_rejects",
            "Webhook requests refused",
            m.webhook_rejects.clone(),
        );
        registry.register(
            "hub_queue_depth",
            "Commands waiting for the hub",
            m.hub_queue_depth.clone(),
        );
        registry.register(
            "sessions_refused",
            "Engine.IO sessions refused: limits.max_pending_sessions had not joined yet",
            m.sessions_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed for the bounds on connections, by reason (evicted, turned-away, timed-out)",
            m.connections_closed.clone(),
        );
        registry.register(
            "snapshot_bytes_charged",
            "Bytes of snapshot answers queued to kiosks and not read yet (limits.snapshot_bytes)",
            m.snapshot_bytes_charged.clone(),
        );
        registry.register(
            "subscribes_waiting",
            "Subscribes waiting for room in the snapshot budget",
            m.subscribes_waiting.clone(),
        );
        registry.register("seq", "Seq of the newest event", m.seq.clone());
        registry.register(
            "screens",
            "Known screens by state (clients.missing_after)",
            m.screens.clone(),
        );
        registry.register(
            "screen_last_seen_timestamp_seconds",
            "Unix time each known screen was last seen (clients.max_screens devices at most)",
            m.screen_last_seen.clone(),
        );
        registry.register(
            "screen_commands",
            "Commands sent to screens by outcome",
            m.screen_commands.clone(),
        );
        registry.register(
            "replay_events",
            "Events held for resuming kiosks",
            m.replay_events.clone(),
        );
        registry.register(
            "replay_bytes",
            "Bytes held for resuming kiosks",
            m.replay_bytes.clone(),
        );
        registry.register(
            "mirror_items",
            "Items mirrored per collection",
            m.mirror_items.clone(),
        );
        registry.register(
            "mirror_bytes",
            "Bytes of mirrored records",
            m.mirror_bytes.clone(),
        );
        registry.register(
            "subscribes",
            "Kiosk subscribe requests by outcome",
            m.subscribes.clone(),
        );
        registry.register(
            "upstream",
            "1 for the upstream's current state",
            m.upstream.clone(),
        );
        registry.register(
            "upstream_outages",
            "Times the upstream went offline",
            m.upstream_outages.clone(),
        );
        registry.register(
            "activity_cursor",
            "Activity id the relay has caught up to",
            m.activity_cursor.clone(),
        );
        registry.register(
            "last_caught_up_timestamp_seconds",
            "Unix time of the last complete catch-up from the activity log",
            m.last_caught_up.clone(),
        );
        registry.register(
            "last_change_timestamp_seconds",
            "Unix time of the last event emitted to kiosks",
            m.last_change.clone(),
        );
        registry.register(
            "state_writes",
            "State file writes (debounced by persist_interval, plus start-up and shutdown)",
            m.state_writes.clone(),
        );
        registry.register(
            "state_write_bytes",
            "Bytes written to the state file",
            m.state_write_bytes.clone(),
        );
        registry.register(
            "state_write_failures",
            "State file writes that failed",
            m.state_write_failures.clone(),
        );
        registry.register(
            "state_last_write_seconds",
            "How long the last state file write took, fsyncs included",
            m.state_last_write.clone(),
        );
        registry.register(
            "state_last_write_timestamp_seconds",
            "Unix time of the last state file write",
            m.state_last_write_time.clone(),
        );
        registry.register(
            "state_write_failing",
            "1 while the last state file write failed (the relay serves but cannot save)",
            m.state_write_failing.clone(),
        );
        registry.register(
            "journal_syncs",
            "Webhook journal fsyncs, each shared by a batch of webhooks",
            m.journal_syncs.clone(),
        );
        registry.register(
            "journal_failures",
            "Webhook journal writes or fsyncs that failed (their webhooks were answered 503)",
            m.journal_failures.clone(),
        );
        registry.register(
            "journal_last_sync_seconds",
            "How long the last webhook journal write and fsync took",
            m.journal_last_sync.clone(),
        );
        registry.register(
            "journal_sync_seconds",
            "Time spent writing and fsyncing the webhook journal",
            m.journal_sync_seconds.clone(),
        );
        registry.register(
            "journal_bytes",
            "Bytes in the webhook journal's files",
            m.journal_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            out = format!("# metrics could not be encoded: {e}\n");
        }
        out
    }

    /// Counts a refused webhook and lists it on the status page.
    pub fn reject(&self, status: u16, reason: &'static str, message: &str) {
        self.webhook_rejects
            .get_or_create(&reason_labels(reason))
            .inc();
        self.board.reject(status, reason, message);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn event_labels(collection: &str, action: &str) -> EventLabels {
    EventLabels {
        collection: collection.to_owned(),
        action: action.to_owned(),
    }
}

pub fn collection_labels(collection: &str) -> CollectionLabels {
    CollectionLabels {
        collection: collection.to_owned(),
    }
}

pub fn reason_labels(reason: &str) -> ReasonLabels {
    ReasonLabels {
        reason: reason.to_owned(),
    }
}
