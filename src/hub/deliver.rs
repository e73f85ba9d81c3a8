//! Delivery: events built, numbered, serialised once, kept for replay and queued to the kiosks
//! of their rooms; a kiosk whose queue is full is cut off.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;
use socketioxide::extract::SocketRef;
use tokio::time::Instant;
use tracing::warn;

use super::event::{Event, EventBody, EventName, Stamped};
use super::rooms::{self, Item};
use super::{ALL_ROOM, Hub, Room};
use crate::clock::{self, now_rfc3339};
use crate::fleet::tally::ScreenTag;
use crate::kiosk_queue::queue_full;
use crate::metrics;

/// How long the hub keeps trying to disconnect a kiosk whose queue was full.
const CUT_OFF_RETRY: Duration = Duration::from_millis(250);
const CUT_OFF_GIVE_UP: Duration = Duration::from_secs(60);

/// Marks a kiosk that was cut off; it gets nothing more until it reconnects.
#[derive(Debug, Clone, Copy)]
pub(super) struct CutOff;

impl Hub {
    /// The events of one change for one room, in the order kiosks apply them.
    pub(super) fn emit_change<'a>(
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
        self.metrics.last_change.set(clock::unix_now());
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
            } else if let Some(tag) = socket.extensions.get::<ScreenTag>() {
                tag.tally.delivered(1);
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
    pub(super) fn kiosks(&self) -> Vec<SocketRef> {
        self.namespaces
            .iter()
            .filter_map(|path| self.io.of(path.as_str()))
            .flat_map(|ns| ns.sockets())
            .collect()
    }

    /// Sends one event to one kiosk (a replay).
    pub(super) fn send(&self, socket: &SocketRef, event: &Event) {
        match socket.emit(&*event.name, &*event.body) {
            Ok(()) => {
                self.metrics.deliveries.inc();
                if let Some(tag) = socket.extensions.get::<ScreenTag>() {
                    tag.tally.delivered(1);
                }
            }
            Err(e) => self.send_failed(socket, e),
        }
    }

    pub(super) fn send_failed(&self, socket: &SocketRef, error: socketioxide::SendError) {
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
        warn!(
            sid = %socket.id,
            queue = self.config.limits.kiosk_queue,
            "kiosk is not reading fast enough (its queue of limits.kiosk_queue packets is full); disconnecting it so it resumes without gaps"
        );
        self.disconnect_kiosk(socket);
    }

    /// Cuts off a kiosk that stopped reading its snapshot, so that what was queued for it is
    /// freed and kiosks waiting for theirs get their turn.
    pub(super) fn cut_off_stalled(&self, socket: &SocketRef, stalled: Duration) {
        if socket.extensions.get::<CutOff>().is_some() {
            return;
        }
        warn!(
            sid = %socket.id,
            stalled_secs = stalled.as_secs(),
            "kiosk stopped reading its snapshot; disconnecting it so that it resumes later and other kiosks get theirs"
        );
        self.disconnect_kiosk(socket);
    }

    /// Closes a kiosk's transport (it reconnects and resumes), or disconnects it where it
    /// has none of its own.
    fn disconnect_kiosk(&self, socket: &SocketRef) {
        socket.extensions.insert(CutOff);
        if let Some(tag) = socket.extensions.get::<ScreenTag>() {
            tag.tally.cut_off();
        }
        socket.leave_all();
        self.metrics.note_room_change();
        self.metrics.kiosk_overflows.inc();
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
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::event::Action;
    use super::super::snapshot::Target;
    use super::super::testing::{change, events, hub};

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
