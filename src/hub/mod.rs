//! The hub: the one task that owns `epoch`, `seq`, the mirror and the replay ring, and the only
//! place that emits to kiosks.
//!
//! Everything reaches it as a [`Command`], handled one after the other, so a subscribing kiosk
//! gets its ack, then the replayed events, then the live stream, without gap or duplicate.
//! Commands come through two bounded lanes: changes from upstream (`limits.hub_inbox`) and
//! kiosk requests (`limits.kiosk_requests`). The hub always takes a waiting change first, so
//! kiosks that connect or subscribe in a crowd never make the webhook answer 503 or delay live
//! events by more than the one kiosk request being answered.
//!
//! This file holds the hub's state, its inbox and its loop. What it does with a command is in
//! child modules, each an `impl Hub` for one job: `ingest` (changes in), `deliver` (events
//! out), `subscribe` (the kiosk protocol), `snapshot` (snapshots serialised once and shared),
//! `relay_status` (the upstream's state as kiosks and the relay see it), `persist` (the state
//! file), `board` (the status page), `figures` (metrics) and `hold` (`hold_for_assets`, and
//! what items reference for the files cache); `snapshot_budget` keeps the
//! snapshot answers in flight within their bound.

mod board;
mod deliver;
pub mod event;
mod figures;
mod hold;
mod ingest;
pub mod mirror;
mod persist;
mod relay_status;
pub mod replay;
pub mod rooms;
pub mod shape;
mod snapshot;
mod snapshot_budget;
pub mod state_file;
mod subscribe;
#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::clock::{Timestamp, now_rfc3339};
use crate::config::Config;
use crate::metrics::Metrics;
pub use crate::report::{HubReport, UpstreamState};
use event::{Change, CurrentRecords};
use mirror::{Fingerprints, Mirror};
use replay::ReplayRing;
use shape::Shapes;
pub use subscribe::{
    Filtered, SUBSCRIBE_IN_PROGRESS, Since, SubscribeRequest, SubscribeSlot, Wanted,
};

/// The room every kiosk is in until it subscribes: it receives every collection, as with the
/// Directus hook extension.
pub const ALL_ROOM: &str = "*";

/// How often the hub proves it is alive when idle (drives `/healthz` and the systemd watchdog).
pub const HUB_TICK: Duration = Duration::from_secs(1);

/// The hub counts as stuck when it has not ticked for this long.
pub const HUB_STALL: Duration = Duration::from_secs(5);

/// Items whose last state (record fingerprint, or "deleted") the hub remembers to recognise
/// duplicates beyond the mirror. About 24 bytes each; the oldest is forgotten first.
pub const SEEN_ITEMS: usize = 16_384;

/// A request to the hub.
pub enum Command {
    /// A change from upstream, as submitted (webhook): merged into the known records.
    Apply(Change),
    /// A webhook change already in the journal (`webhook.durable`) as record `journal`: applied
    /// like [`Command::Apply`], and the state saved after it says the journal is covered up to
    /// there.
    Journaled { change: Change, journal: u64 },
    /// Current records from Directus: they replace the known records.
    Sync(CurrentRecords),
    /// The upstream's state changed; kiosks are told.
    Upstream(UpstreamState),
    /// The activity id the mirror is now caught up to (kept in the state file).
    Cursor(u64),
    /// A kiosk connected: tell it the relay's status (`relay.status`).
    Connected(SocketRef),
    /// A kiosk asks for collections, optionally resuming.
    Subscribe {
        socket: SocketRef,
        request: SubscribeRequest,
        ack: AckSender,
        /// The kiosk's one subscribe in progress, freed once this one is answered.
        slot: SubscribeSlot,
    },
}

impl Command {
    /// Whether the command is a kiosk's request (its own lane), not a change from upstream.
    fn is_kiosk_request(&self) -> bool {
        matches!(self, Command::Connected(_) | Command::Subscribe { .. })
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Apply(change) => f.debug_tuple("Apply").field(change).finish(),
            Command::Journaled { change, journal } => f
                .debug_struct("Journaled")
                .field("change", change)
                .field("journal", journal)
                .finish(),
            Command::Sync(sync) => f
                .debug_struct("Sync")
                .field("collection", &sync.collection)
                .field("items", &sync.items.len())
                .field("complete", &sync.complete)
                .finish(),
            Command::Upstream(state) => f.debug_tuple("Upstream").field(state).finish(),
            Command::Cursor(id) => f.debug_tuple("Cursor").field(id).finish(),
            Command::Connected(socket) => f.debug_tuple("Connected").field(&socket.id).finish(),
            Command::Subscribe {
                socket, request, ..
            } => f
                .debug_struct("Subscribe")
                .field("sid", &socket.id)
                .field("request", request)
                .finish(),
        }
    }
}

/// Why the hub would not take a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The inbox is full (`limits.hub_inbox`).
    Full,
    /// The hub has stopped (shutting down).
    Stopped,
}

/// A bounded queue that refuses a message is full, or its receiver has stopped: the hub's inbox,
/// or the upstream's queue of webhook changes.
impl<T> From<mpsc::error::TrySendError<T>> for Busy {
    fn from(e: mpsc::error::TrySendError<T>) -> Self {
        match e {
            mpsc::error::TrySendError::Full(_) => Busy::Full,
            mpsc::error::TrySendError::Closed(_) => Busy::Stopped,
        }
    }
}

/// Proof of life from the hub's loop.
#[derive(Debug)]
pub struct Liveness {
    start: Instant,
    last_beat_ms: AtomicU64,
}

impl Liveness {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
        }
    }

    fn beat(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the hub ticked within [`HUB_STALL`].
    pub fn is_alive(&self) -> bool {
        let now = self.start.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_beat_ms.load(Ordering::Relaxed)) < HUB_STALL.as_millis() as u64
    }
}

/// The way to reach the hub. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HubHandle {
    /// Changes from upstream (`limits.hub_inbox`).
    tx: mpsc::Sender<Command>,
    /// Kiosk requests (`limits.kiosk_requests`).
    kiosk_tx: mpsc::Sender<Command>,
    liveness: Arc<Liveness>,
    report: watch::Receiver<HubReport>,
    report_tx: Arc<watch::Sender<HubReport>>,
}

impl HubHandle {
    /// Hands a change to the hub without waiting.
    pub fn try_apply(&self, change: Change) -> Result<(), Busy> {
        self.tx.try_send(Command::Apply(change)).map_err(Busy::from)
    }

    /// Hands a change to the hub, waiting while its inbox is full.
    pub async fn apply(&self, change: Change) -> Result<(), Busy> {
        self.send(Command::Apply(change)).await
    }

    /// Sends any command into its lane, waiting while that lane is full.
    pub async fn send(&self, command: Command) -> Result<(), Busy> {
        let lane = if command.is_kiosk_request() {
            &self.kiosk_tx
        } else {
            &self.tx
        };
        lane.send(command).await.map_err(|_| Busy::Stopped)
    }

    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// What the hub last reported about itself.
    pub fn report(&self) -> HubReport {
        self.report.borrow().clone()
    }

    /// Changes waiting in the inbox.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// The hub's two lanes, handed to [`start`].
#[derive(Debug)]
pub struct Inbox {
    changes: mpsc::Receiver<Command>,
    kiosks: mpsc::Receiver<Command>,
}

/// Creates the hub's bounded lanes (`limits.hub_inbox`, `limits.kiosk_requests`) and the
/// handle to reach them, before the parts the hub needs exist.
pub fn channel(config: &Config) -> (HubHandle, Inbox) {
    let (tx, changes) = mpsc::channel(config.limits.hub_inbox);
    let (kiosk_tx, kiosks) = mpsc::channel(config.limits.kiosk_requests);
    let liveness = Arc::new(Liveness::new());
    liveness.beat();
    let (report_tx, report) = watch::channel(HubReport::default());
    let handle = HubHandle {
        tx,
        kiosk_tx,
        liveness,
        report,
        report_tx: Arc::new(report_tx),
    };
    (handle, Inbox { changes, kiosks })
}

/// What the hub starts from: the saved state, and where to save it.
#[derive(Debug, Default)]
pub struct Persistence {
    pub saved: Option<state_file::Saved>,
    pub writer: Option<state_file::Writer>,
}

/// Starts the hub on `tracker`; it stops when `shutdown` is cancelled, after handling what is
/// already in its inbox and saving its state.
#[allow(clippy::too_many_arguments)]
pub fn start(
    handle: &HubHandle,
    inbox: Inbox,
    config: &Config,
    io: SocketIo,
    metrics: Arc<Metrics>,
    persistence: Persistence,
    assets: Option<crate::assets::Assets>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let mut hub = Hub::new(config.clone(), io, metrics, handle.report_tx.clone());
    hub.writer = persistence.writer;
    hub.assets = assets;
    if let Some(saved) = persistence.saved {
        hub.restore(saved);
    }
    info!(epoch = %hub.epoch, "hub started");
    hub.publish_report();
    hub.note_upstream();
    tracker.spawn(hub.run(inbox, shutdown, handle.liveness.clone()));
}

/// The upstream's state as kiosks are told it in `relay.status`, and since when (RFC 3339):
/// offline, since the content was last known current.
#[derive(Debug)]
struct UpstreamSince {
    state: UpstreamState,
    since: String,
}

/// A routed room: its name, and the `{field: value}` its events and acks carry.
#[derive(Debug, Clone)]
struct Room {
    name: String,
    filter: Value,
    field: String,
    value: String,
}

struct Hub {
    config: Config,
    io: SocketIo,
    /// How each collection's events look, and the namespaces they go to.
    shapes: Shapes,
    namespaces: Vec<String>,
    metrics: Arc<Metrics>,
    epoch: String,
    seq: u64,
    mirror: Mirror,
    ring: ReplayRing,
    seen: Fingerprints,
    /// The upstream's state as kiosks are told it, and since when.
    upstream: UpstreamSince,
    report_tx: Arc<watch::Sender<HubReport>>,
    cursor: Option<u64>,
    /// The last webhook journal record applied (`webhook.durable`); saved with the state, so
    /// the journal can be cut up to there and a restart replays only what follows.
    journal: u64,
    /// When the content was last known current: saved with it, so a relay that restarts
    /// without an uplink tells kiosks the content's real age.
    known_current: Timestamp,
    /// Something worth saving changed since the last save.
    dirty: bool,
    writer: Option<state_file::Writer>,
    /// The status page's kiosks per room, as last counted.
    board_rooms: board::BoardRooms,
    /// Snapshots serialised since the mirror last changed, shared by every kiosk that asks.
    snapshots: snapshot::SnapshotCache,
    /// Snapshot answers queued to kiosks and not read yet, and the subscribes waiting for room.
    budget: snapshot_budget::SnapshotBudget<subscribe::Waiting>,
    /// The files cache (`[assets]`): told what items reference.
    assets: Option<crate::assets::Assets>,
    /// Changes held until their files are cached (`hold_for_assets`).
    holds: hold::Holds,
}

impl Hub {
    fn new(
        config: Config,
        io: SocketIo,
        metrics: Arc<Metrics>,
        report_tx: Arc<watch::Sender<HubReport>>,
    ) -> Self {
        let limits = &config.limits;
        let mirror_bytes = limits.mirror_bytes;
        let snapshot_bytes = limits.snapshot_bytes;
        Hub {
            mirror: Mirror::new(limits.mirror_items, limits.mirror_bytes),
            ring: ReplayRing::new(limits.replay_events, limits.replay_bytes, 0),
            seen: Fingerprints::new(SEEN_ITEMS),
            epoch: crate::random_hex(8),
            seq: 0,
            // Webhooks alone are live at once; a Directus source first catches up.
            upstream: match config.directus {
                None => UpstreamSince {
                    state: UpstreamState::Live,
                    since: now_rfc3339(),
                },
                Some(_) => UpstreamSince {
                    state: UpstreamState::CatchingUp,
                    since: now_rfc3339(),
                },
            },
            shapes: Shapes::new(&config),
            namespaces: Shapes::namespaces(&config),
            config,
            io,
            metrics,
            report_tx,
            cursor: None,
            journal: 0,
            known_current: Timestamp::now(),
            dirty: false,
            writer: None,
            board_rooms: board::BoardRooms::default(),
            snapshots: snapshot::SnapshotCache::new(mirror_bytes),
            budget: snapshot_budget::SnapshotBudget::new(snapshot_bytes),
            assets: None,
            holds: hold::Holds::default(),
        }
    }

    async fn run(mut self, inbox: Inbox, shutdown: CancellationToken, liveness: Arc<Liveness>) {
        let Inbox {
            changes: mut rx,
            kiosks: mut kiosk_rx,
        } = inbox;
        let mut tick = tokio::time::interval(HUB_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persist = tokio::time::interval(self.config.persist_interval);
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut budget = tokio::time::interval(snapshot_budget::BUDGET_CHECK);
        budget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut cached = self.assets.as_ref().map(|a| a.cached());
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                // Changes first: a kiosk request is taken only when no change waits.
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(command) = kiosk_rx.recv() => self.handle(command),
                _ = tick.tick() => {
                    self.publish_report();
                    self.publish_board();
                    if self.holds.any() {
                        self.release_held(false);
                    }
                }
                Ok(()) = file_cached(&mut cached) => self.release_held(false),
                _ = persist.tick() => self.save_if_dirty(),
                _ = budget.tick(), if self.budget.is_busy() => self.check_budget(),
            }
            liveness.beat();
            self.metrics.hub_queue_depth.set(rx.len() as i64);
        }
        rx.close();
        kiosk_rx.close();
        while let Ok(command) = rx.try_recv() {
            self.handle(command);
        }
        while let Ok(command) = kiosk_rx.try_recv() {
            self.handle(command);
        }
        self.release_held(true);
        // Nothing is emitted after this: the last write holds the last seq, and says so.
        self.save_last();
        info!(seq = self.seq, "hub stopped");
    }

    fn handle(&mut self, command: Command) {
        if let Some(command) = self.hold(command) {
            self.handle_now(command);
        }
    }

    fn handle_now(&mut self, command: Command) {
        match command {
            Command::Apply(change) => self.apply(change),
            Command::Journaled { change, journal } => {
                self.apply(change);
                if journal > self.journal {
                    self.journal = journal;
                    self.dirty = true;
                }
            }
            Command::Sync(sync) => self.sync(sync),
            Command::Upstream(state) => self.set_upstream(state),
            Command::Cursor(id) => {
                if self.cursor != Some(id) {
                    self.cursor = Some(id);
                    self.dirty = true;
                }
            }
            Command::Connected(socket) => self.connected(socket),
            Command::Subscribe {
                socket,
                request,
                ack,
                slot,
            } => self.subscribe(socket, request, ack, slot),
        }
    }
}

/// Returns when the files cache has cached another file; never without one.
async fn file_cached(cached: &mut Option<watch::Receiver<u64>>) -> Result<(), ()> {
    match cached {
        Some(rx) => rx.changed().await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}
