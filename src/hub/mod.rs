//! The hub: the one task that owns `epoch`, `seq`, the mirror and the replay ring, and the only
//! place that emits to kiosks.
//!
//! Everything reaches it as a [`Command`] through one bounded inbox, so a change, a kiosk's
//! subscribe and its replay are handled one after the other: a subscribing kiosk gets its ack,
//! then the replayed events, then the live stream, without gap or duplicate.

pub mod event;
pub mod mirror;
pub mod replay;
pub mod rooms;
pub mod shape;
pub mod state;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::socket::DisconnectReason;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{CollectionConfig, Config};
use crate::downstream::access::Access;
use crate::metrics::{self, Metrics};
use event::{Action, Change, Event, EventBody, EventName, Stamped, Sync, now_rfc3339};
use futures_util::FutureExt;
use mirror::{Fingerprints, Mirror, Put};
use replay::ReplayRing;
use rooms::Item;
use shape::Shapes;

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

/// How long the hub keeps trying to disconnect a kiosk whose queue was full.
const CUT_OFF_RETRY: Duration = Duration::from_millis(250);
const CUT_OFF_GIVE_UP: Duration = Duration::from_secs(60);

/// A request to the hub.
pub enum Command {
    /// A change from upstream, as submitted (webhook): merged into the known records.
    Apply(Change),
    /// Current records from Directus: they replace the known records.
    Sync(Sync),
    /// The upstream's state changed; kiosks are told.
    Upstream(Upstream),
    /// The activity id the mirror is now caught up to (kept in the state file).
    Cursor(u64),
    /// A kiosk connected: tell it the relay's status.
    Connected(SocketRef),
    /// A kiosk asks for collections, optionally resuming.
    Subscribe {
        socket: SocketRef,
        request: SubscribeRequest,
        ack: AckSender,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Apply(change) => f.debug_tuple("Apply").field(change).finish(),
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

/// The body of a kiosk's `subscribe`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    pub collections: Vec<Wanted>,
    #[serde(default)]
    pub since: Option<Since>,
}

/// One entry of a subscribe's `collections`: a name, or `{collection, where: {field: value}}`
/// for a routed room.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Wanted {
    Collection(String),
    Filtered(Filtered),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filtered {
    pub collection: String,
    #[serde(rename = "where", default)]
    pub filter: Option<Map<String, Value>>,
}

/// What a change did to a collection's items.
#[derive(Debug, Default)]
struct Outcome {
    created: Vec<Item>,
    updated: Vec<Item>,
    deleted: Vec<Item>,
}

impl Outcome {
    fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }
}

/// A routed room: its name, and the `{field: value}` its events and acks carry.
#[derive(Debug, Clone)]
struct Room {
    name: String,
    filter: Value,
    field: String,
    value: String,
}

/// A collection, or one of its routed rooms, that a kiosk subscribed to.
#[derive(Debug)]
struct Target {
    collection: String,
    room: Option<Room>,
}

impl Target {
    fn room_name(&self) -> String {
        match &self.room {
            Some(room) => room.name.clone(),
            None => self.collection.clone(),
        }
    }

    /// Whether `event` went to this target's room.
    fn matches(&self, event: &Event) -> bool {
        match (&self.room, &event.room) {
            (None, None) => *event.collection == *self.collection,
            (Some(room), Some(name)) => **name == *room.name,
            _ => false,
        }
    }
}

/// Where a kiosk left off.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Since {
    pub epoch: String,
    pub seq: u64,
}

/// Why the hub would not take a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The inbox is full (`limits.hub_inbox`).
    Full,
    /// The hub has stopped (shutting down).
    Stopped,
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
    tx: mpsc::Sender<Command>,
    liveness: Arc<Liveness>,
    status: watch::Receiver<HubStatus>,
    status_tx: Arc<watch::Sender<HubStatus>>,
}

impl HubHandle {
    /// Hands a change to the hub without waiting.
    pub fn try_apply(&self, change: Change) -> Result<(), Busy> {
        self.tx
            .try_send(Command::Apply(change))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Busy::Full,
                mpsc::error::TrySendError::Closed(_) => Busy::Stopped,
            })
    }

    /// Hands a change to the hub, waiting while its inbox is full.
    pub async fn apply(&self, change: Change) -> Result<(), Busy> {
        self.send(Command::Apply(change)).await
    }

    /// Sends any command, waiting while the inbox is full.
    pub async fn send(&self, command: Command) -> Result<(), Busy> {
        self.tx.send(command).await.map_err(|_| Busy::Stopped)
    }

    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// The hub's latest published status.
    pub fn status(&self) -> HubStatus {
        self.status.borrow().clone()
    }

    /// Commands waiting in the inbox.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// The hub's inbox, handed to [`start`].
#[derive(Debug)]
pub struct Inbox(mpsc::Receiver<Command>);

/// Creates the hub's bounded inbox (`limits.hub_inbox`) and the handle to reach it, before the
/// parts the hub needs exist.
pub fn channel(config: &Config) -> (HubHandle, Inbox) {
    let (tx, rx) = mpsc::channel(config.limits.hub_inbox);
    let liveness = Arc::new(Liveness::new());
    liveness.beat();
    let (status_tx, status) = watch::channel(HubStatus::default());
    let handle = HubHandle {
        tx,
        liveness,
        status,
        status_tx: Arc::new(status_tx),
    };
    (handle, Inbox(rx))
}

/// What the hub starts from: the saved state, and where to save it.
#[derive(Debug, Default)]
pub struct Persistence {
    pub saved: Option<state::Saved>,
    pub writer: Option<state::Writer>,
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
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let mut hub = Hub::new(config.clone(), io, metrics, handle.status_tx.clone());
    hub.writer = persistence.writer;
    if let Some(saved) = persistence.saved {
        hub.restore(saved);
    }
    info!(epoch = %hub.epoch, "hub started");
    hub.publish_status();
    hub.note_upstream();
    tracker.spawn(hub.run(inbox.0, shutdown, handle.liveness.clone()));
}

/// What the hub tells the rest of the relay about itself, refreshed every [`HUB_TICK`].
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

/// Marks a kiosk that was cut off; it gets nothing more until it reconnects.
#[derive(Debug, Clone, Copy)]
struct CutOff;

/// Marks a kiosk that has subscribed: it no longer receives what it got by default.
#[derive(Debug, Clone, Copy)]
struct Subscribed;

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
    upstream: (Upstream, String),
    status_tx: Arc<watch::Sender<HubStatus>>,
    cursor: Option<u64>,
    /// When the content was last known current (RFC 3339, Unix seconds): saved with it, so a
    /// relay that restarts without an uplink tells kiosks the content's real age.
    known_current: (String, i64),
    /// Something worth saving changed since the last save.
    dirty: bool,
    writer: Option<state::Writer>,
    /// The status page's kiosks per room, as last counted.
    board_rooms: BoardRooms,
}

/// The rooms' kiosk counts of the status page. Counting walks every kiosk of every room, which
/// at 10,000 kiosks cost as much every second as a broadcast; it is redone only after
/// [`Metrics::room_changes`] moved (twice: a kiosk that disconnects leaves its rooms just after
/// saying so), and every [`BOARD_RECOUNT`] ticks in any case.
#[derive(Debug, Default)]
struct BoardRooms {
    /// `room_changes` when last counted.
    changes: u64,
    /// Counted twice without a change in between.
    settled: bool,
    /// Ticks since the last count.
    age: u32,
    rooms: Vec<(String, usize)>,
    kiosks: usize,
}

/// Ticks after which the status page's rooms are recounted even without a known change.
const BOARD_RECOUNT: u32 = 30;

impl Hub {
    fn new(
        config: Config,
        io: SocketIo,
        metrics: Arc<Metrics>,
        status_tx: Arc<watch::Sender<HubStatus>>,
    ) -> Self {
        let limits = &config.limits;
        Hub {
            mirror: Mirror::new(limits.mirror_items, limits.mirror_bytes),
            ring: ReplayRing::new(limits.replay_events, limits.replay_bytes, 0),
            seen: Fingerprints::new(SEEN_ITEMS),
            epoch: crate::random_hex(8),
            seq: 0,
            // Webhooks alone are live at once; a Directus source first catches up.
            upstream: match config.directus {
                None => (Upstream::Live, now_rfc3339()),
                Some(_) => (Upstream::CatchingUp, now_rfc3339()),
            },
            shapes: Shapes::new(&config),
            namespaces: Shapes::namespaces(&config),
            config,
            io,
            metrics,
            status_tx,
            cursor: None,
            known_current: (now_rfc3339(), metrics::unix_now()),
            dirty: false,
            writer: None,
            board_rooms: BoardRooms::default(),
        }
    }

    /// Takes up where a previous run left off: the mirror as it was, the cursor, and the
    /// content's time. The epoch and seq continue only after a clean shutdown; otherwise events
    /// sent after the last save may be lost from the file, and reusing their seqs would make
    /// resuming kiosks skip new events, so kiosks start over with a snapshot in a new epoch.
    fn restore(&mut self, saved: state::Saved) {
        self.cursor = saved.cursor;
        self.known_current = (saved.saved_at.clone(), saved.saved_unix);
        for (collection, items) in saved.mirror {
            if self.config.collection(&collection).is_none() {
                continue;
            }
            for (key, record) in items {
                self.seen.observe(&collection, &key, &record.to_string());
                self.mirror.put(&collection, &key, record);
            }
            self.note_mirror(&collection);
        }
        if saved.clean {
            self.epoch = saved.epoch;
            self.seq = saved.seq;
            self.claim_epoch();
        } else {
            info!(
                saved_at = saved.saved_at,
                "the relay did not stop cleanly last time (crash, kill or power cut): the saved content is served, but screens reload it instead of resuming, since changes sent after the last save may be missing from it"
            );
        }
        let limits = &self.config.limits;
        self.ring = ReplayRing::new(limits.replay_events, limits.replay_bytes, self.seq);
        // Until upstream says otherwise, kiosks are told the content is from the last save.
        let state = if self.config.directus.is_some() {
            Upstream::Offline
        } else {
            Upstream::Live
        };
        self.upstream = (state, saved.saved_at);
        self.metrics.seq.set(self.seq as i64);
    }

    /// Marks the state file as not clean before the first event of a continued epoch, so a
    /// crash from now on starts a new epoch. When that cannot be written, the epoch is not
    /// continued: the file would still say clean with a seq kiosks are about to pass.
    fn claim_epoch(&mut self) {
        let Some(writer) = &self.writer else {
            return;
        };
        let written = self
            .serialise(false)
            .map_err(std::io::Error::other)
            .and_then(|bytes| writer.write_now(&bytes));
        if let Err(e) = written {
            warn!(%e, "cannot write the state file: screens reload the content instead of resuming");
            self.epoch = crate::random_hex(8);
            self.seq = 0;
        }
    }

    /// Offers the current state to the writer when it changed.
    fn save_if_dirty(&mut self) {
        if !self.dirty {
            return;
        }
        if let Some(writer) = &self.writer {
            match self.serialise(false) {
                Ok(bytes) => writer.offer(bytes),
                Err(e) => {
                    warn!(%e, "cannot serialise the state (a bug): the last known content will not survive a restart; please report this")
                }
            }
        }
        self.dirty = false;
    }

    /// The state file's contents; `clean` only for the last write, after the last event.
    fn serialise(&self, clean: bool) -> serde_json::Result<Vec<u8>> {
        let (saved_at, saved_unix) = match self.upstream.0 {
            Upstream::Live => (now_rfc3339(), crate::metrics::unix_now()),
            Upstream::CatchingUp | Upstream::Offline => self.known_current.clone(),
        };
        serde_json::to_vec(&state::SavedRef {
            version: state::VERSION,
            epoch: &self.epoch,
            seq: self.seq,
            cursor: self.cursor,
            saved_at,
            saved_unix,
            clean,
            mirror: &self.mirror,
        })
    }

    fn publish_status(&self) {
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

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
        liveness: Arc<Liveness>,
    ) {
        let mut tick = tokio::time::interval(HUB_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persist = tokio::time::interval(self.config.persist_interval);
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                _ = tick.tick() => {
                    self.publish_status();
                    self.publish_board();
                }
                _ = persist.tick() => self.save_if_dirty(),
            }
            liveness.beat();
            self.metrics.hub_queue_depth.set(rx.len() as i64);
        }
        rx.close();
        while let Ok(command) = rx.try_recv() {
            self.handle(command);
        }
        // Nothing is emitted after this: the last write holds the last seq, and says so. The
        // writer task writes it after any write in progress and ends; the tracker waits for it.
        if let Some(writer) = self.writer.take() {
            match self.serialise(true) {
                Ok(bytes) => writer.offer(bytes),
                Err(e) => {
                    warn!(%e, "cannot serialise the state (a bug): the last known content will not survive a restart; please report this")
                }
            }
        }
        info!(seq = self.seq, "hub stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Apply(change) => self.apply(change),
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
            } => self.subscribe(socket, request, ack),
        }
    }

    fn apply(&mut self, change: Change) {
        let collection = change.collection.as_str();
        self.metrics
            .changes_in
            .get_or_create(&metrics::event_labels(collection, change.action.as_str()))
            .inc();
        let Some(settings) = self.config.collection(collection) else {
            debug!(collection, "change for a collection that is not relayed");
            return;
        };
        let routed = !settings.rooms_by.is_empty();
        let mut outcome = Outcome::default();
        match change.action {
            Action::Create | Action::Update => {
                for key in &change.keys {
                    let known = self.mirror.get(collection, &key.text).cloned();
                    let record = match &known {
                        Some(known) => mirror::merge(known, change.payload.as_ref()),
                        None => mirror::merge(
                            &json!({ settings.key_field.as_str(): key.json }),
                            change.payload.as_ref(),
                        ),
                    };
                    let fresh = self
                        .seen
                        .observe(collection, &key.text, &record.to_string());
                    let changed = match self.mirror.put(collection, &key.text, record.clone()) {
                        Put::Changed => true,
                        Put::Unchanged => false,
                        Put::NotMirrored => fresh,
                    };
                    if !changed {
                        continue;
                    }
                    let item = Item {
                        key: key.text.clone(),
                        record,
                        before: known.filter(|_| routed),
                    };
                    match change.action {
                        Action::Create => outcome.created.push(item),
                        _ => outcome.updated.push(item),
                    }
                }
            }
            Action::Delete => {
                for key in &change.keys {
                    let last = self.mirror.remove(collection, &key.text);
                    let fresh = self.seen.observe(collection, &key.text, &"\0deleted");
                    if last.is_some() || fresh {
                        outcome.deleted.push(Item {
                            key: key.text.clone(),
                            record: last.unwrap_or(Value::Null),
                            before: None,
                        });
                    }
                }
            }
        }
        self.note_mirror(collection);
        self.publish(&settings, change.payload.as_ref(), &outcome);
    }

    /// Replaces known records with current ones: new keys are created, changed ones updated,
    /// vanished ones deleted; what kiosks already have is not sent again.
    fn sync(&mut self, sync: Sync) {
        let collection = sync.collection.as_str();
        let Some(settings) = self.config.collection(collection) else {
            return;
        };
        self.metrics
            .changes_in
            .get_or_create(&metrics::event_labels(collection, sync.hint.as_str()))
            .inc();
        let routed = !settings.rooms_by.is_empty();
        let mut outcome = Outcome::default();
        let mut listed = HashSet::new();
        for (key, record) in sync.items {
            listed.insert(key.text.clone());
            let known = self.mirror.get(collection, &key.text);
            let is_known = known.is_some();
            let before = known.filter(|_| routed).cloned();
            match record {
                Some(record) => {
                    let fresh = self
                        .seen
                        .observe(collection, &key.text, &record.to_string());
                    let put = self.mirror.put(collection, &key.text, record.clone());
                    let item = Item {
                        key: key.text,
                        record,
                        before,
                    };
                    match put {
                        Put::Unchanged => {}
                        Put::Changed if is_known => outcome.updated.push(item),
                        Put::Changed => outcome.created.push(item),
                        Put::NotMirrored if !fresh => {}
                        Put::NotMirrored if sync.hint == Action::Create => {
                            outcome.created.push(item)
                        }
                        Put::NotMirrored => outcome.updated.push(item),
                    }
                }
                None => {
                    let last = self.mirror.remove(collection, &key.text);
                    let fresh = self.seen.observe(collection, &key.text, &"\0deleted");
                    let mirrored = self.mirror.overflow(collection).is_none();
                    if last.is_some() || (fresh && !mirrored) {
                        outcome.deleted.push(Item {
                            key: key.text,
                            record: last.unwrap_or(Value::Null),
                            before: None,
                        });
                    }
                }
            }
        }
        if sync.complete && self.mirror.overflow(collection).is_none() {
            let gone: Vec<String> = self
                .mirror
                .keys(collection)
                .filter(|k| !listed.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(last) = self.mirror.remove(collection, &key) {
                    self.seen.observe(collection, &key, &"\0deleted");
                    outcome.deleted.push(Item {
                        key,
                        record: last,
                        before: None,
                    });
                }
            }
        }
        self.note_mirror(collection);
        self.publish(&settings, sync.payload.as_ref(), &outcome);
    }

    /// Tells kiosks what a change did: the collection's room first, then every routed room
    /// the change touched.
    fn publish(&mut self, settings: &CollectionConfig, payload: Option<&Value>, outcome: &Outcome) {
        let collection = settings.name.as_str();
        if outcome.is_empty() {
            self.duplicate(collection);
            return;
        }
        let whole = rooms::RoomChange {
            arrived: outcome.created.iter().collect(),
            updated: outcome.updated.iter().collect(),
            left: Vec::new(),
            deleted: outcome.deleted.iter().collect(),
        };
        self.emit_change(collection, None, payload, &whole);
        for field in &settings.rooms_by {
            let plan = rooms::plan(field, &outcome.created, &outcome.updated, &outcome.deleted);
            for (value, change) in &plan {
                let room = Room {
                    name: rooms::room_name(collection, field, value),
                    filter: json!({ field.as_str(): value }),
                    field: field.clone(),
                    value: value.clone(),
                };
                self.emit_change(collection, Some(&room), payload, change);
            }
        }
    }

    /// The events of one change for one room, in the order kiosks apply them.
    fn emit_change<'a>(
        &mut self,
        collection: &'a str,
        room: Option<&Room>,
        payload: Option<&'a Value>,
        change: &rooms::RoomChange<'a>,
    ) {
        let body = |keys: Vec<&'a str>| EventBody {
            room: room.map(|r| r.filter.clone()),
            ..EventBody::new(collection, keys)
        };
        let room_name = room.map(|r| r.name.as_str());
        let payload = payload.map(Cow::Borrowed);
        for item in &change.arrived {
            let event = EventBody {
                payload: payload.clone(),
                record: Some(Cow::Borrowed(&item.record)),
                ..body(vec![&item.key])
            };
            self.emit(EventName::Create, event, room_name);
        }
        let keys = |items: &[&'a Item]| items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>();
        let records = |items: &[&'a Item]| {
            items
                .iter()
                .map(|i| Cow::Borrowed(&i.record))
                .collect::<Vec<_>>()
        };
        if !change.updated.is_empty() {
            let event = EventBody {
                payload,
                records: Some(records(&change.updated)),
                ..body(keys(&change.updated))
            };
            self.emit(EventName::Update, event, room_name);
        }
        if !change.left.is_empty() {
            let event = EventBody {
                records: Some(records(&change.left)),
                ..body(keys(&change.left))
            };
            self.emit(EventName::Delete, event, room_name);
        }
        if !change.deleted.is_empty() {
            for name in [EventName::PreDelete, EventName::Delete] {
                let event = EventBody {
                    records: Some(records(&change.deleted)),
                    ..body(keys(&change.deleted))
                };
                self.emit(name, event, room_name);
            }
        }
    }

    fn set_upstream(&mut self, state: Upstream) {
        if self.upstream.0 == state {
            return;
        }
        info!(upstream = state.as_str(), "upstream state changed");
        if self.upstream.0 == Upstream::Live {
            self.known_current = (now_rfc3339(), metrics::unix_now());
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

    fn note_upstream(&self) {
        for s in [Upstream::Live, Upstream::CatchingUp, Upstream::Offline] {
            let labels = metrics::StateLabels {
                state: s.as_str().into(),
            };
            let value = i64::from(s == self.upstream.0);
            self.metrics.upstream.get_or_create(&labels).set(value);
        }
    }

    fn duplicate(&self, collection: &str) {
        debug!(collection, "duplicate change dropped");
        self.metrics
            .duplicates
            .get_or_create(&metrics::collection_labels(collection))
            .inc();
    }

    fn note_mirror(&self, collection: &str) {
        if let Some(reason) = self.mirror.overflow(collection) {
            let items = self
                .metrics
                .mirror_items
                .get_or_create(&metrics::collection_labels(collection));
            if items.get() != -1 {
                warn!(
                    collection,
                    reason = reason.describe(),
                    "collection too large to mirror: kiosks get no snapshot of it until the relay restarts; raise the limit to mirror it"
                );
                items.set(-1);
            }
        } else {
            self.metrics
                .mirror_items
                .get_or_create(&metrics::collection_labels(collection))
                .set(self.mirror.len(collection) as i64);
        }
        self.metrics.mirror_bytes.set(self.mirror.bytes() as i64);
    }

    /// Assigns the next seq, serialises the event once, keeps it for replay and queues it to
    /// every kiosk of its room: a routed room, or the collection's room and the
    /// all-collections room.
    fn emit(&mut self, action: EventName, body: EventBody<'_>, room: Option<&str>) {
        let collection = body.collection;
        let shape = self.shapes.get(collection).clone();
        let Some(name) = shape.name(action).cloned() else {
            return;
        };
        let body = shape.shape(body, action);
        self.seq += 1;
        let ts = now_rfc3339();
        if room.is_none() {
            let board = &self.metrics.board;
            board.event(self.seq, collection, action.action(), &body.keys, &ts);
        }
        let ts = (!shape.compact).then_some(ts.as_str());
        let body = match self.serialise_event(body, ts) {
            Ok(body) => body,
            Err(e) => {
                // Values that came in as JSON always serialise; this is a bug, not bad input.
                warn!(%e, collection, "event could not be serialised (a bug); skipped: kiosks get the item with their next snapshot; please report this");
                self.seq -= 1;
                return;
            }
        };
        let event = Arc::new(Event {
            seq: self.seq,
            action,
            name,
            collection: collection.into(),
            namespace: shape.namespace.clone(),
            room: room.map(Into::into),
            body,
        });
        self.ring.push(event.clone());
        self.metrics.seq.set(self.seq as i64);
        self.metrics.last_change.set(metrics::unix_now());
        self.dirty = true;
        self.metrics.replay_events.set(self.ring.len() as i64);
        self.metrics.replay_bytes.set(self.ring.bytes() as i64);
        self.metrics
            .events_out
            .get_or_create(&metrics::event_labels(collection, action.action()))
            .inc();
        let rooms = match room {
            Some(room) => vec![room.to_owned()],
            None => vec![ALL_ROOM.to_owned(), collection.to_owned()],
        };
        self.broadcast(rooms, &event);
    }

    /// Tells the status page about the mirror and the kiosks per room (rooms of a namespace
    /// other than `/` are prefixed with it); the rooms are recounted only when they may have
    /// changed (see [`BoardRooms`]).
    fn publish_board(&mut self) {
        let changes = self.metrics.room_changes.load(Ordering::Acquire);
        let board = &self.board_rooms;
        let counted = changes == board.changes && board.settled && board.age + 1 < BOARD_RECOUNT;
        if counted {
            self.board_rooms.age += 1;
        } else {
            let (rooms, kiosks) = self.count_rooms();
            self.board_rooms = BoardRooms {
                settled: changes == self.board_rooms.changes,
                changes,
                age: 0,
                rooms,
                kiosks,
            };
        }
        let board = &self.board_rooms;
        self.metrics
            .board
            .set_kiosks(self.mirror.stats(), board.rooms.clone(), board.kiosks);
    }

    /// The kiosks of every room, and in all.
    fn count_rooms(&self) -> (Vec<(String, usize)>, usize) {
        let mut rooms: Vec<(String, usize)> = Vec::new();
        let mut kiosks = 0;
        for path in &self.namespaces {
            let Some(ns) = self.io.of(path.as_str()) else {
                continue;
            };
            let names = ns.clone().rooms().now_or_never().and_then(Result::ok);
            for room in names.unwrap_or_default() {
                let count = ns.clone().to(room.clone()).sockets().len();
                let label = match path.as_str() {
                    "/" => room.to_string(),
                    path => format!("{path} {room}"),
                };
                rooms.push((label, count));
            }
            kiosks += ns.sockets().len();
        }
        rooms.sort();
        (rooms, kiosks)
    }

    /// The event's JSON; past `limits.max_event_bytes`, without its records and payload and
    /// marked `truncated`, so a kiosk knows to fetch the items itself.
    fn serialise_event(
        &self,
        body: EventBody<'_>,
        ts: Option<&str>,
    ) -> serde_json::Result<Box<serde_json::value::RawValue>> {
        let stamp = |body: &EventBody<'_>| {
            serde_json::value::to_raw_value(&Stamped {
                body,
                seq: self.seq,
                ts,
            })
        };
        let full = stamp(&body)?;
        let max = self.config.limits.max_event_bytes;
        if full.get().len() <= max {
            return Ok(full);
        }
        warn!(
            collection = body.collection,
            keys = body.keys.len(),
            bytes = full.get().len(),
            max,
            "event larger than limits.max_event_bytes: kiosks get its keys only (truncated: true)"
        );
        self.metrics
            .events_truncated
            .get_or_create(&metrics::collection_labels(body.collection))
            .inc();
        stamp(&EventBody {
            payload: None,
            record: None,
            records: None,
            truncated: true,
            ..body
        })
    }

    /// Queues `event` to every kiosk in `rooms`, encoded once for all of them. A kiosk whose
    /// queue is full is cut off first, so no kiosk silently misses an event.
    ///
    /// Only the rooms that have kiosks are addressed. Usually that is one (a kiosk that did not
    /// subscribe is in the all-collections room only, one that did is in collection rooms
    /// only), and a broadcast to one room walks it; to several rooms socketioxide records every
    /// kiosk it has sent to in a hash set, so that a kiosk in two of them gets the event once,
    /// which cost more than the send itself (SipHash of every kiosk's id, twice per event).
    fn broadcast(&self, rooms: Vec<String>, event: &Event) {
        let Some(ns) = self.io.of(&*event.namespace) else {
            return;
        };
        let mut targets = Vec::with_capacity(rooms.len());
        let mut sockets: Vec<SocketRef> = Vec::new();
        for room in rooms {
            let members = ns.clone().to(room.clone()).sockets();
            if members.is_empty() {
                continue;
            }
            if sockets.is_empty() {
                sockets = members;
            } else {
                // A kiosk in several rooms gets the event once.
                let known: HashSet<_> = sockets.iter().map(|s| s.id).collect();
                sockets.extend(members.into_iter().filter(|s| !known.contains(&s.id)));
            }
            targets.push(room);
        }
        if sockets.is_empty() {
            return;
        }
        let mut receivers = sockets.len();
        for socket in &sockets {
            if queue_full(socket) {
                self.cut_off(socket);
                receivers -= 1;
            }
        }
        let sent = ns
            .to(targets)
            .emit(&*event.name, &*event.body)
            .now_or_never();
        match sent {
            Some(Ok(())) => {}
            Some(Err(socketioxide::BroadcastError::Socket(errors))) => {
                receivers = receivers.saturating_sub(errors.len());
                // A heartbeat took the last place in a queue since the check above.
                for socket in sockets.iter().filter(|s| queue_full(s)) {
                    self.cut_off(socket);
                }
            }
            Some(Err(e)) => {
                warn!(%e, seq = event.seq, "could not send an event to kiosks; they get it when they next resume")
            }
            None => warn!(
                seq = event.seq,
                "sending to kiosks did not complete at once"
            ),
        }
        self.metrics.deliveries.inc_by(receivers as u64);
    }

    /// Every connected kiosk, in every namespace. None once the Socket.IO server is closed at
    /// shutdown: socketioxide's `io.sockets` panics then, and the hub still applies the
    /// changes accepted during the grace period before its last save.
    fn kiosks(&self) -> Vec<SocketRef> {
        self.namespaces
            .iter()
            .filter_map(|path| self.io.of(path.as_str()))
            .flat_map(|ns| ns.sockets())
            .collect()
    }

    /// Sends one event to one kiosk (a replay).
    fn send(&self, socket: &SocketRef, event: &Event) {
        match socket.emit(&*event.name, &*event.body) {
            Ok(()) => {
                self.metrics.deliveries.inc();
            }
            Err(e) => self.send_failed(socket, e),
        }
    }

    fn send_failed(&self, socket: &SocketRef, error: socketioxide::SendError) {
        use socketioxide::SendError;
        use socketioxide::SocketError;
        match error {
            SendError::Socket(SocketError::InternalChannelFull) => self.cut_off(socket),
            SendError::Socket(SocketError::Closed) => {}
            other => {
                warn!(sid = %socket.id, %other, "could not send to a kiosk; it gets what it missed when it next resumes")
            }
        }
    }

    /// A kiosk whose queue is full would silently miss events. Instead it gets nothing more
    /// and its connection is closed, which frees its queue at once; socket.io-client then
    /// reconnects by itself and resumes from its last seq. A polling kiosk has no connection
    /// of its own: it is disconnected as soon as its queue has room for the disconnect packet.
    fn cut_off(&self, socket: &SocketRef) {
        if socket.extensions.get::<CutOff>().is_some() {
            return;
        }
        socket.extensions.insert(CutOff);
        socket.leave_all();
        self.metrics.note_room_change();
        self.metrics.kiosk_overflows.inc();
        warn!(
            sid = %socket.id,
            queue = self.config.limits.kiosk_queue,
            "kiosk is not reading fast enough (its queue of limits.kiosk_queue packets is full); disconnecting it so it resumes without gaps"
        );
        let closed = crate::connection::close_transport(socket);
        let socket = socket.clone();
        tokio::spawn(async move {
            if closed {
                // The kiosk is gone once the engine sees its transport fail.
                tokio::time::sleep(CUT_OFF_RETRY).await;
            }
            let deadline = Instant::now() + CUT_OFF_GIVE_UP;
            while socket.connected() && Instant::now() < deadline {
                if socket.clone().disconnect().is_ok() {
                    return;
                }
                tokio::time::sleep(CUT_OFF_RETRY).await;
            }
        });
    }

    fn status(&self) -> Value {
        json!({
            "upstream": self.upstream.0.as_str(),
            "since": self.upstream.1,
            "epoch": self.epoch,
            "seq": self.seq,
        })
    }

    fn connected(&self, socket: SocketRef) {
        if !socket.connected() {
            return;
        }
        if let Err(e) = socket.emit("relay.status", &self.status()) {
            self.send_failed(&socket, e);
        }
    }

    fn subscribe(&mut self, socket: SocketRef, request: SubscribeRequest, ack: AckSender) {
        // socketioxide sends the connect packet before it marks the socket connected, so a
        // kiosk that subscribes on `connect` can be heard first; it is in the namespace then.
        let gone = !socket.connected()
            && self
                .io
                .of(socket.ns())
                .and_then(|ns| ns.get_socket(socket.id))
                .is_none();
        if socket.extensions.get::<CutOff>().is_some() || gone {
            return;
        }
        let targets = match self.targets(&socket, &request) {
            Ok(targets) => targets,
            Err((reason, message)) => return self.refuse(ack, reason, message),
        };
        let replay = self.replay_for(&request, &targets);
        let mut collections = Map::new();
        let mut routed = Vec::new();
        for target in &targets {
            let mut entry = match &replay {
                Some(events) => json!({
                    "mode": "replay",
                    "events": events.iter().filter(|e| target.matches(e)).count(),
                }),
                None => self.snapshot(target),
            };
            match &target.room {
                None => {
                    collections.insert(target.collection.clone(), entry);
                }
                Some(room) => {
                    entry["collection"] = json!(target.collection);
                    entry["where"] = room.filter.clone();
                    routed.push(entry);
                }
            }
        }
        let outcome = if replay.is_some() {
            "replay"
        } else {
            "snapshot"
        };
        self.metrics
            .subscribes
            .get_or_create(&metrics::reason_labels(outcome))
            .inc();

        // The first subscribe replaces what the kiosk received by default; later ones add.
        if socket.extensions.get::<Subscribed>().is_none() {
            socket.leave_all();
            socket.extensions.insert(Subscribed);
        }
        socket.join(targets.iter().map(Target::room_name).collect::<Vec<_>>());
        self.metrics.note_room_change();
        let mut ack_body = json!({
            "ok": true,
            "epoch": self.epoch,
            "seq": self.seq,
            "collections": collections,
        });
        if !routed.is_empty() {
            ack_body["rooms"] = Value::Array(routed);
        }
        if let Err(e) = ack.send(&ack_body) {
            return self.send_failed(&socket, e);
        }
        for event in replay.into_iter().flatten() {
            self.send(&socket, &event);
        }
        debug!(sid = %socket.id, outcome, "kiosk subscribed");
    }

    /// What a subscribe asks for, checked against the relayed collections, their routed
    /// rooms and the kiosk's token. The error is a reason label and words for the kiosk.
    fn targets(
        &self,
        socket: &SocketRef,
        request: &SubscribeRequest,
    ) -> Result<Vec<Target>, (&'static str, String)> {
        if request.collections.is_empty() {
            return Err((
                "invalid",
                "subscribe needs \"collections\": a list of collection names".into(),
            ));
        }
        let access = socket.extensions.get::<Access>();
        let mut targets: Vec<Target> = Vec::new();
        for wanted in &request.collections {
            let (name, filter) = match wanted {
                Wanted::Collection(name) => (name, None),
                Wanted::Filtered(f) => (&f.collection, f.filter.as_ref()),
            };
            let Some(settings) = self.config.collection(name) else {
                let known: Vec<&str> = self
                    .config
                    .collections
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                return Err((
                    "unknown-collection",
                    format!(
                        "collection {name:?} is not relayed; relayed collections: {}",
                        known.join(", ")
                    ),
                ));
            };
            let namespace = &*self.shapes.get(name).namespace;
            if namespace != socket.ns() {
                return Err((
                    "wrong-namespace",
                    format!(
                        "collection {name:?} is served on the namespace {namespace:?}: connect to it there (io(\"http://<relay>{}\"))",
                        if namespace == "/" { "" } else { namespace }
                    ),
                ));
            }
            if !access.as_ref().is_some_and(|a| a.may_read(name)) {
                let token = access.as_ref().map_or("none", |a| &*a.name);
                return Err((
                    "forbidden",
                    format!("this kiosk's token ({token}) may not read {name:?}"),
                ));
            }
            let room = match filter.filter(|f| !f.is_empty()) {
                None => None,
                Some(filter) => Some(routed_room(&settings, filter)?),
            };
            let target = Target {
                collection: name.clone(),
                room,
            };
            if !targets.iter().any(|t| t.room_name() == target.room_name()) {
                targets.push(target);
            }
        }
        Ok(targets)
    }

    /// The current items of a target as kiosks receive them (projected, or just their keys
    /// when compact), or why there are none.
    fn snapshot(&self, target: &Target) -> Value {
        let collection = target.collection.as_str();
        let shape = self.shapes.get(collection);
        match self.mirror.snapshot(collection) {
            Some(mut items) => {
                if let Some(room) = &target.room {
                    items.retain(|(_, record)| {
                        rooms::values(record, &room.field).contains(&room.value)
                    });
                }
                if shape.compact {
                    let keys: Vec<&str> = items.iter().map(|(key, _)| key.as_str()).collect();
                    return json!({ "mode": "snapshot", "keys": keys });
                }
                let items: Vec<Cow<Value>> = items
                    .into_iter()
                    .map(|(_, record)| shape.project(record))
                    .collect();
                json!({ "mode": "snapshot", "items": items })
            }
            None => json!({
                "mode": "none",
                "reason": self.mirror.overflow(collection).map(|o| o.describe()),
            }),
        }
    }

    fn refuse(&self, ack: AckSender, reason: &str, message: String) {
        self.metrics
            .subscribes
            .get_or_create(&metrics::reason_labels(reason))
            .inc();
        // The kiosk may have asked without an ack; nothing more to tell it then.
        ack.send(&json!({ "ok": false, "error": message })).ok();
    }

    /// The events a resuming kiosk missed in what it wants, or `None` when it must take a
    /// snapshot: no `since`, another epoch, events already dropped from the ring, or more
    /// events than fit in its queue.
    fn replay_for(
        &self,
        request: &SubscribeRequest,
        targets: &[Target],
    ) -> Option<Vec<Arc<Event>>> {
        let since = request.since.as_ref()?;
        if since.epoch != self.epoch {
            return None;
        }
        let events: Vec<Arc<Event>> = self
            .ring
            .since(since.seq)?
            .filter(|e| targets.iter().any(|t| t.matches(e)))
            .cloned()
            .collect();
        (events.len() <= self.config.limits.max_replay_per_subscribe()).then_some(events)
    }
}

/// The routed room a subscribe's `where: {field: value}` names.
fn routed_room(
    settings: &CollectionConfig,
    filter: &Map<String, Value>,
) -> Result<Room, (&'static str, String)> {
    let collection = &settings.name;
    let invalid = |message: String| Err(("invalid", message));
    if filter.len() > 1 {
        return invalid(format!(
            "\"where\" names one field; to follow several values, subscribe to {collection:?} once per value"
        ));
    }
    let Some((field, value)) = filter.iter().next() else {
        return invalid("\"where\" is empty".into());
    };
    if !settings.rooms_by.contains(field) {
        let fields = if settings.rooms_by.is_empty() {
            "none".to_owned()
        } else {
            settings.rooms_by.join(", ")
        };
        return invalid(format!(
            "{collection:?} has no rooms by {field:?}; its routed fields (rooms_by): {fields}"
        ));
    }
    let Some(value) = rooms::scalar(value) else {
        return invalid(format!(
            "\"where\": {{{field:?}: …}} must be a string, number or boolean"
        ));
    };
    Ok(Room {
        name: rooms::room_name(collection, field, &value),
        filter: json!({ field.as_str(): value }),
        field: field.clone(),
        value,
    })
}

/// Whether a kiosk's queue has no room for one more packet. Asking socketioxide to emit a value
/// that refuses to serialise takes a place in the queue and gives it back at once: the answer
/// says whether there was one, and nothing is sent. It runs for every kiosk on every event, so
/// it is kept cheap: an empty event name (nothing to escape) and an empty error message
/// (serde_json then allocates only its error box, and finds no position in the message).
fn queue_full(socket: &SocketRef) -> bool {
    struct Probe;
    impl serde::Serialize for Probe {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom(""))
        }
    }
    use socketioxide::{SendError, SocketError};
    matches!(
        socket.emit("", &Probe),
        Err(SendError::Socket(SocketError::InternalChannelFull))
    )
}

/// What a kiosk's disconnect is worth logging.
pub fn describe_disconnect(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "connection closed",
        DisconnectReason::MultipleHttpPollingError => "polling error",
        DisconnectReason::PacketParsingError => "sent a malformed packet",
        DisconnectReason::TransportError => "transport error",
        DisconnectReason::HeartbeatTimeout => "stopped answering heartbeats",
        DisconnectReason::ClientNSDisconnect => "disconnected",
        DisconnectReason::ServerNSDisconnect => "disconnected by the relay",
        DisconnectReason::ClosingServer => "relay shutting down",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event::Key;

    fn hub(extra: &str) -> Hub {
        let config = Config::from_toml(&format!(
            "clients.allow_anonymous = true\n[webhook]\nsecret = \"0123456789abcdef\"\n[[collections]]\nname = \"screens\"\n[[collections]]\nname = \"channels\"\nkey_field = \"slug\"\n{extra}"
        ))
        .expect("valid");
        let (_svc, io) = SocketIo::new_svc();
        io.ns("/", async |_: SocketRef| {});
        let (status_tx, _) = watch::channel(HubStatus::default());
        Hub::new(config, io, Arc::new(Metrics::new()), Arc::new(status_tx))
    }

    fn change(collection: &str, action: Action, keys: &[Value], payload: Option<Value>) -> Change {
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
    fn events(hub: &Hub, since: u64) -> Vec<(u64, String, Value)> {
        hub.ring
            .since(since)
            .expect("in the ring")
            .map(|e| {
                let body: Value = serde_json::from_str(e.body.get()).expect("JSON");
                (e.seq, e.name.to_string(), body)
            })
            .collect()
    }

    #[test]
    fn assigns_consecutive_seqs_and_builds_records() {
        let mut hub = hub("");
        hub.apply(change(
            "screens",
            Action::Create,
            &[json!(1)],
            Some(json!({"name": "Lobby"})),
        ));
        hub.apply(change(
            "channels",
            Action::Create,
            &[json!("news")],
            Some(json!({"label": "News"})),
        ));
        hub.apply(change(
            "screens",
            Action::Update,
            &[json!("1")],
            Some(json!({"status": "on"})),
        ));
        hub.apply(change("screens", Action::Delete, &[json!(1)], None));
        let got = events(&hub, 0);
        let names: Vec<(u64, &str)> = got.iter().map(|(s, n, _)| (*s, n.as_str())).collect();
        assert_eq!(
            names,
            vec![
                (1, "data.create"),
                (2, "data.create"),
                (3, "data.update"),
                (4, "data.pre-delete"),
                (5, "data.delete")
            ]
        );
        assert_eq!(got[0].2["record"], json!({"id": 1, "name": "Lobby"}));
        assert_eq!(got[0].2["keys"], json!(["1"]));
        assert_eq!(
            got[1].2["record"],
            json!({"slug": "news", "label": "News"}),
            "key_field"
        );
        assert_eq!(
            got[2].2["records"],
            json!([{"id": 1, "name": "Lobby", "status": "on"}])
        );
        assert_eq!(got[2].2["payload"], json!({"status": "on"}));
        assert_eq!(
            got[3].2["records"], got[2].2["records"],
            "pre-delete has the last record"
        );
        assert_eq!(got[4].2["records"], got[2].2["records"]);
        assert!(got[4].2.get("payload").is_none());
        assert_eq!(hub.mirror.get("screens", "1"), None);
        assert_eq!(hub.seq, 5);
    }

    #[test]
    fn drops_what_kiosks_already_have() {
        let mut hub = hub("");
        let create = change(
            "screens",
            Action::Create,
            &[json!(1)],
            Some(json!({"name": "A"})),
        );
        hub.apply(create.clone());
        hub.apply(create);
        hub.apply(change(
            "screens",
            Action::Update,
            &[json!(1)],
            Some(json!({"name": "A"})),
        ));
        assert_eq!(hub.seq, 1, "same record: nothing new");
        // An update of several keys carries only those that changed.
        hub.apply(change(
            "screens",
            Action::Create,
            &[json!(2)],
            Some(json!({"name": "B"})),
        ));
        hub.apply(change(
            "screens",
            Action::Update,
            &[json!(1), json!(2)],
            Some(json!({"name": "B"})),
        ));
        let last = events(&hub, 2);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].2["keys"], json!(["1"]));
        // A delete of an item already deleted is dropped; of one never seen, it is sent.
        hub.apply(change("screens", Action::Delete, &[json!(1)], None));
        hub.apply(change("screens", Action::Delete, &[json!(1)], None));
        assert_eq!(hub.seq, 5);
        hub.apply(change("screens", Action::Delete, &[json!(99)], None));
        let last = events(&hub, 5);
        assert_eq!(last.len(), 2);
        assert_eq!(last[1].2["records"], json!([null]), "never seen: no record");
        // Unrelayed collections are ignored.
        hub.apply(change("other", Action::Create, &[json!(1)], None));
        assert_eq!(hub.seq, 7);
    }

    #[test]
    fn a_collection_past_its_bound_is_still_relayed_and_deduplicated() {
        let mut hub = hub("[limits]\nmirror_items = 2");
        for key in 1..=3 {
            hub.apply(change(
                "screens",
                Action::Create,
                &[json!(key)],
                Some(json!({"n": key})),
            ));
        }
        assert_eq!(
            hub.seq, 3,
            "the third create is relayed although not mirrored"
        );
        assert_eq!(hub.mirror.snapshot("screens"), None);
        hub.apply(change(
            "screens",
            Action::Update,
            &[json!(3)],
            Some(json!({"n": 4})),
        ));
        hub.apply(change(
            "screens",
            Action::Update,
            &[json!(3)],
            Some(json!({"n": 4})),
        ));
        assert_eq!(hub.seq, 4, "the repeat is recognised by fingerprint");
    }

    fn request(collections: &[&str], since: Option<(&str, u64)>) -> SubscribeRequest {
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

    #[test]
    fn replay_is_chosen_only_when_it_is_complete_and_fits() {
        let mut hub = hub("[limits]\nreplay_events = 4\nkiosk_queue = 16");
        for key in 1..=6 {
            let collection = if key % 2 == 0 { "screens" } else { "channels" };
            hub.apply(change(
                collection,
                Action::Create,
                &[json!(key)],
                Some(json!({})),
            ));
        }
        let epoch = hub.epoch.clone();
        let screens = [Target {
            collection: "screens".into(),
            room: None,
        }];
        let seqs =
            |r: Option<Vec<Arc<Event>>>| r.map(|v| v.iter().map(|e| e.seq).collect::<Vec<_>>());
        let replay = |since| seqs(hub.replay_for(&request(&["screens"], since), &screens));
        assert_eq!(replay(Some((epoch.as_str(), 3))), Some(vec![4, 6]));
        assert_eq!(
            replay(Some((epoch.as_str(), 2))),
            Some(vec![4, 6]),
            "ring holds 3..=6"
        );
        assert_eq!(
            replay(Some((epoch.as_str(), 1))),
            None,
            "event 2 was dropped"
        );
        assert_eq!(replay(Some((epoch.as_str(), 6))), Some(vec![]));
        assert_eq!(replay(Some(("other", 3))), None);
        assert_eq!(replay(None), None);

        // More missed events than half the kiosk queue: a snapshot.
        let mut hub = hub_with_many_events();
        let epoch = hub.epoch.clone();
        let all = hub.replay_for(&request(&["screens"], Some((&epoch, 0))), &screens);
        assert!(all.is_none(), "20 missed events do not fit a queue of 16");
        hub.apply(change(
            "screens",
            Action::Create,
            &[json!("x")],
            Some(json!({})),
        ));
        let recent = hub.replay_for(&request(&["screens"], Some((&epoch, 20))), &screens);
        assert_eq!(recent.map(|v| v.len()), Some(1));
    }

    fn hub_with_many_events() -> Hub {
        let mut hub = hub("[limits]\nkiosk_queue = 16");
        for key in 1..=20 {
            hub.apply(change(
                "screens",
                Action::Create,
                &[json!(key)],
                Some(json!({})),
            ));
        }
        hub
    }

    /// Changes accepted during the shutdown grace period reach the hub after the Socket.IO
    /// server is closed: they are still applied (and saved), nothing panics.
    #[test]
    fn changes_after_the_socket_io_server_closed_are_still_applied() {
        let mut hub = hub("");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(hub.io.close());
        hub.apply(change(
            "screens",
            Action::Create,
            &[json!(1)],
            Some(json!({})),
        ));
        hub.set_upstream(Upstream::Offline);
        assert_eq!(hub.seq, 1);
        assert_eq!(hub.mirror.len("screens"), 1);
    }

    fn saved_from(hub: &Hub, clean: bool) -> state::Saved {
        let bytes = hub.serialise(clean).expect("serialise");
        serde_json::from_slice(&bytes).expect("the loader reads what the hub writes")
    }

    fn hub_with_two_screens() -> Hub {
        let mut hub = hub("");
        for key in 1..=2 {
            hub.apply(change(
                "screens",
                Action::Create,
                &[json!(key)],
                Some(json!({"n": key})),
            ));
        }
        hub.cursor = Some(42);
        hub
    }

    #[test]
    fn a_clean_shutdown_continues_the_epoch() {
        let before = hub_with_two_screens();
        let mut after = hub("");
        after.restore(saved_from(&before, true));
        assert_eq!(
            (after.epoch.as_str(), after.seq),
            (before.epoch.as_str(), 2)
        );
        assert_eq!(after.cursor, Some(42));
        assert_eq!(after.mirror.len("screens"), 2);
        let screens = [Target {
            collection: "screens".into(),
            room: None,
        }];
        let resume = request(&["screens"], Some((&before.epoch, 2)));
        assert_eq!(
            after.replay_for(&resume, &screens).map(|e| e.len()),
            Some(0)
        );
        after.apply(change(
            "screens",
            Action::Create,
            &[json!(3)],
            Some(json!({})),
        ));
        assert_eq!(after.seq, 3, "seq continues");
    }

    /// A state written while running may lag behind what kiosks were sent: restoring it keeps
    /// the content and cursor but starts a new epoch, so no seq is handed out twice.
    #[test]
    fn a_state_not_written_at_shutdown_starts_a_new_epoch() {
        let before = hub_with_two_screens();
        let saved = saved_from(&before, false);
        assert!(!saved.clean);
        let mut after = hub("");
        after.restore(saved);
        assert_ne!(after.epoch, before.epoch);
        assert_eq!(after.seq, 0);
        assert_eq!(after.cursor, Some(42), "the cursor is kept");
        assert_eq!(after.mirror.len("screens"), 2, "the content is kept");
        let screens = [Target {
            collection: "screens".into(),
            room: None,
        }];
        let resume = request(&["screens"], Some((&before.epoch, 2)));
        assert!(
            after.replay_for(&resume, &screens).is_none(),
            "a kiosk of the old epoch gets a snapshot"
        );
        after.apply(change(
            "screens",
            Action::Create,
            &[json!(3)],
            Some(json!({})),
        ));
        assert_eq!(after.seq, 1);

        // Files from before the field existed count as not clean.
        let mut old: Value =
            serde_json::from_slice(&before.serialise(true).expect("serialise")).expect("json");
        old.as_object_mut().expect("object").remove("clean");
        let old: state::Saved = serde_json::from_value(old).expect("an old file still loads");
        assert!(!old.clean);
        let mut after = hub("");
        after.restore(old);
        assert_ne!(after.epoch, before.epoch);
        assert_eq!(after.mirror.len("screens"), 2);
    }

    /// Continuing an epoch first marks the file on disk as not clean, so a crash later in this
    /// run cannot continue it again; if that write fails, the epoch is not continued.
    #[tokio::test]
    async fn a_continued_epoch_is_marked_unclean_on_disk_before_anything_is_sent() {
        let before = hub_with_two_screens();
        let dir = tempfile::tempdir().expect("tempdir");
        let tracker = TaskTracker::new();
        let metrics = Arc::new(Metrics::new());
        let writer = state::Writer::spawn(dir.path().to_owned(), metrics.clone(), &tracker);
        let mut after = hub("");
        after.writer = Some(writer);
        after.restore(saved_from(&before, true));
        assert_eq!(after.epoch, before.epoch);
        let on_disk = state::load(dir.path()).expect("written at once");
        assert!(!on_disk.clean);
        assert_eq!(
            (on_disk.epoch.as_str(), on_disk.seq),
            (before.epoch.as_str(), 2)
        );
        assert_eq!(metrics.state_writes.get(), 1);
        // The relay is killed now: the next start does not continue the epoch.
        let mut next = hub("");
        next.restore(on_disk);
        assert_ne!(next.epoch, before.epoch);

        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"").expect("write");
        let mut unwritable = hub("");
        unwritable.writer = Some(state::Writer::spawn(not_a_dir, metrics.clone(), &tracker));
        unwritable.restore(saved_from(&before, true));
        assert_ne!(unwritable.epoch, before.epoch);
        assert_eq!(unwritable.seq, 0);
        assert_eq!(unwritable.mirror.len("screens"), 2);
        assert_eq!(metrics.state_write_failures.get(), 1);
    }

    /// While Directus is away the file keeps the time the content was last known current, so
    /// restarts without an uplink keep telling kiosks the content's real age.
    #[test]
    fn the_saved_time_is_when_the_content_was_last_current() {
        let mut hub =
            hub("[directus]\nurl = \"https://cms.example.com\"\ntoken = \"0123456789abcdef\"");
        let mut saved = saved_from(&hub_with_two_screens(), true);
        saved.saved_at = "2026-11-28T17:00:00.000Z".into();
        saved.saved_unix = 1_795_885_200;
        hub.restore(saved);
        assert_eq!(hub.status()["upstream"], "offline");
        assert_eq!(hub.status()["since"], "2026-11-28T17:00:00.000Z");
        let again = saved_from(&hub, true);
        assert_eq!(
            (again.saved_at.as_str(), again.saved_unix),
            ("2026-11-28T17:00:00.000Z", 1_795_885_200)
        );
        hub.set_upstream(Upstream::CatchingUp);
        assert_eq!(saved_from(&hub, true).saved_unix, 1_795_885_200);
        hub.set_upstream(Upstream::Offline);
        assert_eq!(
            hub.status()["since"],
            "2026-11-28T17:00:00.000Z",
            "a failed catch-up does not make the content newer"
        );
        hub.set_upstream(Upstream::Live);
        let live = saved_from(&hub, true);
        assert!(live.saved_unix >= metrics::unix_now() - 60, "live: now");
        hub.set_upstream(Upstream::Offline);
        let offline = saved_from(&hub, true);
        assert!(offline.saved_unix >= live.saved_unix);
        assert_ne!(offline.saved_at, "2026-11-28T17:00:00.000Z");
    }

    #[test]
    fn renamed_events_say_their_action_and_pre_delete_can_be_off() {
        let mut hub = hub(
            "[[collections]]\nname = \"menu\"\nevent_name = \"menu:changed\"\nevent_names = { delete = \"{collection}.removed\" }\npre_delete = false",
        );
        hub.apply(change(
            "menu",
            Action::Create,
            &[json!(1)],
            Some(json!({"a": 1})),
        ));
        hub.apply(change(
            "menu",
            Action::Update,
            &[json!(1)],
            Some(json!({"a": 2})),
        ));
        hub.apply(change("menu", Action::Delete, &[json!(1)], None));
        hub.apply(change("screens", Action::Delete, &[json!(5)], None));
        let got: Vec<(u64, String, Value)> = events(&hub, 0)
            .into_iter()
            .map(|(seq, name, body)| (seq, name, body["action"].clone()))
            .collect();
        assert_eq!(
            got,
            [
                (1, "menu:changed".into(), json!("create")),
                (2, "menu:changed".into(), json!("update")),
                (3, "menu.removed".into(), json!("delete")),
                (4, "data.pre-delete".into(), Value::Null),
                (5, "data.delete".into(), Value::Null),
            ],
            "seqs stay consecutive without pre-delete; other collections keep data.*"
        );
    }

    #[test]
    fn events_and_snapshots_carry_only_the_emitted_fields() {
        let mut hub = hub(
            "[[collections]]\nname = \"menu\"\nemit_fields = [\"title\"]\nemit_payload = false",
        );
        let record = json!({"title": "Soup", "cost": 2});
        hub.apply(change("menu", Action::Create, &[json!(1)], Some(record)));
        hub.apply(change(
            "menu",
            Action::Update,
            &[json!(1)],
            Some(json!({"cost": 3})),
        ));
        let got = events(&hub, 0);
        assert_eq!(got[0].2["record"], json!({"id": 1, "title": "Soup"}));
        assert_eq!(got[1].2["records"], json!([{"id": 1, "title": "Soup"}]));
        assert!(got.iter().all(|(_, _, body)| body.get("payload").is_none()));
        let target = Target {
            collection: "menu".into(),
            room: None,
        };
        assert_eq!(
            hub.snapshot(&target),
            json!({"mode": "snapshot", "items": [{"id": 1, "title": "Soup"}]})
        );
        assert_eq!(
            hub.mirror.get("menu", "1"),
            Some(&json!({"id": 1, "title": "Soup", "cost": 3})),
            "the mirror keeps every field read"
        );
    }

    #[test]
    fn compact_events_and_snapshots_carry_keys_only() {
        let mut hub = hub("[[collections]]\nname = \"menu\"\ncompact = true");
        hub.apply(change(
            "menu",
            Action::Create,
            &[json!(1)],
            Some(json!({"t": 1})),
        ));
        hub.apply(change(
            "menu",
            Action::Create,
            &[json!("b")],
            Some(json!({"t": 2})),
        ));
        let got = events(&hub, 0);
        assert_eq!(
            got[0].2,
            json!({"collection": "menu", "keys": ["1"], "seq": 1})
        );
        let target = Target {
            collection: "menu".into(),
            room: None,
        };
        let mut snapshot = hub.snapshot(&target);
        let keys = snapshot["keys"].as_array_mut().expect("keys");
        keys.sort_by_key(|k| k.to_string());
        assert_eq!(snapshot, json!({"mode": "snapshot", "keys": ["1", "b"]}));
    }
}
