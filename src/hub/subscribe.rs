//! The subscribe protocol: what a kiosk may ask for, the rooms it joins, and its ack with a
//! snapshot or the events it missed (a replay).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use socketioxide::extract::{AckSender, SocketRef};
use tracing::debug;

use super::deliver::CutOff;
use super::event::Event;
use super::rooms;
use super::snapshot::{Target, ack_entry};
use super::{Hub, Room};
use crate::config::CollectionConfig;
use crate::kiosk::access::Access;
use crate::metrics;

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

/// Where a kiosk left off.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Since {
    pub epoch: String,
    pub seq: u64,
}

/// Why the hub declines a subscribe: a reason label (the `subscribes` metric) and words for the
/// kiosk (its ack's `error`).
#[derive(Debug)]
struct Declined {
    reason: &'static str,
    message: String,
}

impl Declined {
    fn new(reason: &'static str, message: String) -> Self {
        Self { reason, message }
    }
}

/// Marks a kiosk that has subscribed: it no longer receives what it got by default.
#[derive(Debug, Clone, Copy)]
struct Subscribed;

/// A kiosk's one subscribe in progress. The kiosk server takes it before it hands a subscribe
/// to the hub, and a kiosk that asks again before it is answered is told to wait: however
/// many subscribes a kiosk sends, the hub holds at most one of its answers at a time. Freed
/// when dropped, once the hub answered (or could not).
#[derive(Debug)]
pub struct SubscribeSlot(Arc<AtomicBool>);

/// The flag behind a kiosk's [`SubscribeSlot`], kept in its socket's extensions.
#[derive(Debug, Clone, Default)]
struct SlotFlag(Arc<AtomicBool>);

impl SlotFlag {
    fn take(&self) -> Option<SubscribeSlot> {
        self.0
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| SubscribeSlot(self.0.clone()))
    }
}

impl SubscribeSlot {
    /// The kiosk's slot, or `None` while one of its subscribes is still being answered.
    pub fn take(socket: &SocketRef) -> Option<SubscribeSlot> {
        let flag = socket.extensions.get::<SlotFlag>().unwrap_or_else(|| {
            let flag = SlotFlag::default();
            socket.extensions.insert(flag.clone());
            flag
        });
        flag.take()
    }
}

impl Drop for SubscribeSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What a kiosk that subscribes again before its first subscribe is answered is told.
pub const SUBSCRIBE_IN_PROGRESS: &str = "a subscribe from this kiosk is still being answered: wait for its answer before sending another";

/// A subscribe waiting for room in the budget, with the kiosk's one subscribe slot.
pub(super) struct Waiting {
    pub(super) socket: SocketRef,
    pub(super) request: SubscribeRequest,
    pub(super) ack: AckSender,
    pub(super) slot: SubscribeSlot,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("sid", &self.socket.id)
            .field("request", &self.request)
            .finish()
    }
}

/// A subscribe's ack. Fields in the order a JSON map gives them (alphabetical), so the bytes
/// are those kiosks always received; each target's entry is serialised JSON, shared.
#[derive(Serialize)]
struct Ack<'a> {
    collections: BTreeMap<&'a str, Shared>,
    epoch: &'a str,
    ok: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rooms: Vec<Shared>,
    seq: u64,
}

/// Serialised JSON shared between acks, written as it is.
struct Shared(Arc<RawValue>);

impl Serialize for Shared {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl Hub {
    pub(super) fn subscribe(
        &mut self,
        socket: SocketRef,
        request: SubscribeRequest,
        ack: AckSender,
        slot: SubscribeSlot,
    ) {
        let asked = Waiting {
            socket,
            request,
            ack,
            slot,
        };
        if let Some(waiting) = self.answer(asked, false) {
            self.budget.wait(waiting);
            self.note_budget();
        }
    }

    /// Answers the subscribes that waited for room in the snapshot budget, in the order they
    /// came, while there is room.
    pub(super) fn answer_waiting(&mut self) {
        while let Some(waiting) = self.budget.next_waiting() {
            if let Some(waiting) = self.answer(waiting, true) {
                self.budget.wait_first(waiting);
                break;
            }
        }
        self.note_budget();
    }

    /// Answers a subscribe: an ack with a replay or a snapshot, then the replayed events. A
    /// snapshot that the budget cannot take now is handed back, to wait (`queued`: it has
    /// waited already, and only needs to fit).
    fn answer(&mut self, asked: Waiting, queued: bool) -> Option<Waiting> {
        let Waiting {
            socket,
            request,
            ack,
            slot,
        } = asked;
        // socketioxide sends the connect packet before it marks the socket connected, so a
        // kiosk that subscribes on `connect` can be heard first; it is in the namespace then.
        let gone = !socket.connected()
            && self
                .io
                .of(socket.ns())
                .and_then(|ns| ns.get_socket(socket.id))
                .is_none();
        if socket.extensions.get::<CutOff>().is_some() || gone {
            return None;
        }
        let targets = match self.targets(&socket, &request) {
            Ok(targets) => targets,
            Err(declined) => {
                self.decline(ack, declined);
                return None;
            }
        };
        let replay = self.replay_for(&request, &targets);
        let mut rooms = match replay {
            None => self.prepare_rooms(&targets),
            Some(_) => HashMap::new(),
        };
        let mut collections = BTreeMap::new();
        let mut routed = Vec::new();
        let mut snapshot_bytes = 0;
        for target in &targets {
            let entry = match &replay {
                Some(events) => ack_entry(
                    target,
                    json!({
                        "mode": "replay",
                        "events": events.iter().filter(|e| target.matches(e)).count(),
                    }),
                ),
                None => match rooms.remove(&target.room_name()) {
                    Some(entry) => entry,
                    None => self.shared_snapshot(target),
                },
            };
            if replay.is_none() {
                snapshot_bytes += entry.get().len();
            }
            match &target.room {
                None => {
                    collections.insert(target.collection.as_str(), Shared(entry));
                }
                Some(_) => routed.push(Shared(entry)),
            }
        }
        if replay.is_none() {
            let room = match queued {
                true => self.budget.fits(snapshot_bytes),
                false => self.budget.admits(snapshot_bytes),
            };
            if !room {
                return Some(Waiting {
                    socket,
                    request,
                    ack,
                    slot,
                });
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
        let ack_body = Ack {
            collections,
            epoch: &self.epoch,
            ok: true,
            rooms: routed,
            seq: self.seq,
        };
        if let Err(e) = ack.send(&ack_body) {
            self.send_failed(&socket, e);
            return None;
        }
        if replay.is_none() {
            self.budget
                .charge(&socket, snapshot_bytes, tokio::time::Instant::now());
            self.note_budget();
        }
        for event in replay.into_iter().flatten() {
            self.send(&socket, &event);
        }
        debug!(sid = %socket.id, outcome, "kiosk subscribed");
        drop(slot);
        None
    }

    /// Looks at what kiosks have read of their snapshots: frees what was read, cuts off the
    /// kiosks that stopped reading, and answers the subscribes that waited.
    pub(super) fn check_budget(&mut self) {
        let checked = self.budget.check(tokio::time::Instant::now());
        for (socket, stalled) in checked.stalled {
            self.cut_off_stalled(&socket, stalled);
        }
        self.budget.forget(|w| !w.socket.connected());
        self.answer_waiting();
    }

    /// The budget's figures: bytes charged and subscribes waiting.
    fn note_budget(&self) {
        self.metrics
            .snapshot_bytes_charged
            .set(self.budget.charged() as i64);
        self.metrics
            .subscribes_waiting
            .set(self.budget.waiting() as i64);
    }

    /// What a subscribe asks for, checked against the relayed collections, their routed
    /// rooms and the kiosk's token.
    fn targets(
        &self,
        socket: &SocketRef,
        request: &SubscribeRequest,
    ) -> Result<Vec<Target>, Declined> {
        if request.collections.is_empty() {
            return Err(Declined::new(
                "invalid",
                "subscribe needs \"collections\": a list of collection names".into(),
            ));
        }
        let most = self.config.limits.max_subscribe_targets;
        if request.collections.len() > most {
            return Err(Declined::new(
                "too-many-targets",
                format!(
                    "one subscribe may name at most {most} collections and rooms (limits.max_subscribe_targets); this one names {}",
                    request.collections.len()
                ),
            ));
        }
        let access = socket.extensions.get::<Access>();
        let mut targets: Vec<Target> = Vec::new();
        for wanted in &request.collections {
            let (name, filter) = match wanted {
                Wanted::Collection(name) => (name, None),
                Wanted::Filtered(f) => (&f.collection, f.filter.as_ref()),
            };
            // The token is checked first, and a refusal names only what it may read: a kiosk
            // learns nothing about collections (or their namespaces) outside its token.
            let token = access.as_ref().map_or("none", |a| &*a.name);
            let Some(settings) = self.config.collection(name) else {
                let readable: Vec<&str> = self
                    .config
                    .collections
                    .iter()
                    .map(|c| c.name.as_str())
                    .filter(|c| access.as_ref().is_some_and(|a| a.may_read(c)))
                    .collect();
                let readable = if readable.is_empty() {
                    "none".to_owned()
                } else {
                    readable.join(", ")
                };
                return Err(Declined::new(
                    "unknown-collection",
                    format!(
                        "collection {name:?} is not relayed; this kiosk's token ({token}) may read: {readable}"
                    ),
                ));
            };
            if !access.as_ref().is_some_and(|a| a.may_read(name)) {
                return Err(Declined::new(
                    "forbidden",
                    format!("this kiosk's token ({token}) may not read {name:?}"),
                ));
            }
            let namespace = &*self.shapes.get(name).namespace;
            if namespace != socket.ns() {
                return Err(Declined::new(
                    "wrong-namespace",
                    format!(
                        "collection {name:?} is served on the namespace {namespace:?}: connect to it there (io(\"http://<relay>{}\"))",
                        if namespace == "/" { "" } else { namespace }
                    ),
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

    fn decline(&self, ack: AckSender, declined: Declined) {
        self.metrics
            .subscribes
            .get_or_create(&metrics::reason_labels(declined.reason))
            .inc();
        // The kiosk may have asked without an ack; nothing more to tell it then.
        ack.send(&json!({ "ok": false, "error": declined.message }))
            .ok();
    }

    /// The events a resuming kiosk missed in what it wants, or `None` when it must take a
    /// snapshot: no `since`, another epoch, events already dropped from the ring, or more
    /// events than fit in its queue.
    pub(super) fn replay_for(
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
fn routed_room(settings: &CollectionConfig, filter: &Map<String, Value>) -> Result<Room, Declined> {
    let collection = &settings.name;
    let invalid = |message: String| Err(Declined::new("invalid", message));
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::Hub;
    use super::super::event::{Action, Event};
    use super::super::snapshot::Target;
    use super::super::testing::{change, hub, request};
    use super::SlotFlag;

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

    #[test]
    fn a_kiosk_has_one_subscribe_in_progress_at_a_time() {
        let flag = SlotFlag::default();
        let first = flag.take().expect("free at first");
        assert!(flag.take().is_none(), "taken while the first is answered");
        drop(first);
        let again = flag.take().expect("free once the first was answered");
        assert!(flag.take().is_none());
        drop(again);
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
}
