//! The Socket.IO server for kiosks: its bounds, a namespace for `/` and each one the
//! collections name, and admission at connect time (the address's wrong tokens, the token,
//! the kiosk limit, the first rooms).
//!
//! Past admission the handlers only translate: a kiosk's `subscribe` is handed to the hub, which
//! answers it, makes every later room change (subscribe, cut-off) and sends every event, so
//! acks, replays and live events keep their order. The one room change made here is the first:
//! a kiosk that does not announce a subscribe joins the rooms of what it may read in the connect
//! middleware, before socketioxide confirms the connection, so it misses nothing sent after.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::{SocketIo, SocketIoBuilder};
use tracing::{debug, info, warn};

use super::access::{Access, Gate, Refused};
use super::throttle::Throttle;
use crate::config::{Config, Limits};
use crate::connection::ConnectionHandle;
use crate::fleet::Fleet;
use crate::fleet::identity::Identity;
use crate::hub::shape::Shapes;
use crate::hub::{
    self, Command, HubHandle, SUBSCRIBE_IN_PROGRESS, SubscribeRequest, SubscribeSlot,
};
use crate::metrics::{self, Metrics};

/// How much of a kiosk's WebSocket tungstenite reads at once. tungstenite zero-fills the buffer
/// before each read, so all of it is resident while a kiosk is being read; an idle kiosk gives
/// it back (vendor/README.md). What kiosks send is small: pongs of a few bytes, the connect
/// packet and `subscribe` (tens to hundreds of bytes); a larger message only takes more reads.
/// engineioxide's default, 4,096, cost 3.5 KiB more per kiosk.
const WS_READ_BUFFER_BYTES: usize = 512;

/// How much of a kiosk's outgoing frames tungstenite gathers before it writes them: events
/// queued while a write is under way go out together, up to this. A kiosk that falls behind
/// holds this much (plus one frame) in its write buffer; once written, the buffer is given
/// back (vendor/README.md). tungstenite's default, 128 KiB, kept ~140 KiB per kiosk that had
/// fallen behind, for good.
const WS_WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// The Socket.IO builder with the relay's bounds: the per-kiosk queue, the largest message
/// a kiosk may send on either transport, and how long a session may take to join a namespace
/// (`limits.join_timeout`; see [`super::pending`]).
pub fn builder(limits: &Limits) -> SocketIoBuilder {
    SocketIo::builder()
        .connect_timeout(limits.join_timeout)
        .max_buffer_size(limits.kiosk_queue)
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .ws_write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_payload(limits.max_message_bytes as u64)
        .ws_max_message_size(limits.max_message_bytes)
        .ws_max_frame_size(limits.max_message_bytes)
}

/// Registers the namespaces: `/` and those the collections name. A kiosk's token is checked,
/// its handlers are set up, and it joins the rooms of what it may read, in the connect
/// middleware: socketioxide awaits the middleware before it confirms the connection, so even a
/// kiosk that subscribes at once is heard. The hub then tells it the relay's status.
pub fn attach(
    io: &SocketIo,
    hub: HubHandle,
    metrics: Arc<Metrics>,
    throttle: Arc<Throttle>,
    fleet: Arc<Fleet>,
    config: &Config,
) {
    let connected = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Gate::new(&config.clients));
    for namespace in Shapes::namespaces(config) {
        let kiosks = Kiosks {
            hub: hub.clone(),
            metrics: metrics.clone(),
            connected: connected.clone(),
            max_clients: config.limits.max_clients,
            gate: gate.clone(),
            throttle: throttle.clone(),
            fleet: fleet.clone(),
        };
        let hub = hub.clone();
        let announce = async move |socket: SocketRef| {
            hub.send(Command::Connected(socket)).await.ok();
        };
        let setup = move |socket: SocketRef, TryData(auth): TryData<Value>| {
            let kiosks = kiosks.clone();
            async move { kiosks.admit(socket, auth.unwrap_or(Value::Null)) }
        };
        io.ns(namespace, announce.with(setup));
    }
}

/// What the connect middleware of every namespace shares: kiosks are counted across them.
#[derive(Debug, Clone)]
struct Kiosks {
    hub: HubHandle,
    metrics: Arc<Metrics>,
    connected: Arc<AtomicUsize>,
    max_clients: usize,
    gate: Arc<Gate>,
    throttle: Arc<Throttle>,
    fleet: Arc<Fleet>,
}

impl Kiosks {
    /// Checks the kiosk's address (not refused for wrong tokens), its token (from the
    /// handshake's `auth`, or the `token` query parameter that socket.io-client 2.x, which has
    /// no `auth`, sends) and the kiosk limit.
    fn admit(&self, socket: SocketRef, auth: Value) -> Result<(), Refused> {
        let peer = socket
            .req_parts()
            .extensions
            .get::<ConnectionHandle>()
            .and_then(ConnectionHandle::peer)
            .map(|addr| addr.ip());
        let refuse = |refused: Refused| {
            self.metrics
                .kiosks_refused
                .get_or_create(&metrics::reason_labels(refused.label()))
                .inc();
            let sid = socket.id.to_string();
            match (&refused, peer) {
                // Counted, and logged at a bounded rate, by the throttle.
                (Refused::BadToken, Some(peer)) => self.throttle.note_wrong_token(peer, &sid),
                (Refused::Throttled(_), _) => {
                    debug!(sid, ?peer, reason = %refused, "kiosk refused")
                }
                // Not guesses, but as cheap to repeat: a script opening sessions past
                // max_clients logs one line per address per window, like one without a token.
                (Refused::NoToken | Refused::Full(_), Some(peer)) => {
                    if self.throttle.worth_a_warning(peer, Instant::now()) {
                        warn!(sid, %peer, reason = %refused, "kiosk refused (once per address per clients.wrong_token_window)");
                    }
                }
                _ => warn!(sid, ?peer, reason = %refused, "kiosk refused"),
            }
            refused
        };
        if let Some(left) = peer.and_then(|peer| self.throttle.refused(peer, Instant::now())) {
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(refuse(Refused::Throttled(secs)));
        }
        let query_token = query_token(&socket);
        let token = match auth.get("token") {
            None | Some(Value::Null) => query_token.as_deref(),
            Some(Value::String(token)) => Some(token.as_str()),
            Some(_) => return Err(refuse(Refused::BadToken)),
        };
        let access = self.gate.admit(token).map_err(refuse)?;
        let identity = Identity::from_handshake(&auth, socket.req_parts().uri.query())
            .map_err(|bad| refuse(Refused::Device(bad)))?;
        if !access.device_allowed(identity.device.as_deref()) {
            return Err(refuse(Refused::Device(
                crate::fleet::identity::BadDevice::NotAllowed,
            )));
        }
        if self.connected.fetch_add(1, Ordering::SeqCst) >= self.max_clients {
            self.connected.fetch_sub(1, Ordering::SeqCst);
            return Err(refuse(Refused::Full(self.max_clients)));
        }
        super::pending::joined(&socket);
        let will_subscribe = auth.get("collections").is_some();
        self.fleet.connected(&socket, &identity, &access.name);
        set_up(
            &socket,
            self.hub.clone(),
            self.metrics.clone(),
            self.connected.clone(),
            self.fleet.clone(),
            access,
            will_subscribe,
        );
        Ok(())
    }
}

/// The `token` parameter of the handshake's query string, if any.
fn query_token(socket: &SocketRef) -> Option<String> {
    let query = socket.req_parts().uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
}

/// A kiosk that announces in its handshake that it will subscribe
/// (`auth: {collections: [...]}`) receives nothing until its subscribe is answered; any other
/// kiosk receives every collection it may read from the moment it connects.
fn set_up(
    socket: &SocketRef,
    hub: HubHandle,
    metrics: Arc<Metrics>,
    connected: Arc<AtomicUsize>,
    fleet: Arc<Fleet>,
    access: Access,
    will_subscribe: bool,
) {
    metrics.kiosks_connected.inc();
    info!(
        sid = %socket.id,
        transport = ?socket.transport_type(),
        token = &*access.name,
        will_subscribe,
        "kiosk connected"
    );
    if !will_subscribe {
        match access.collections() {
            None => socket.join(hub::ALL_ROOM),
            Some(collections) => socket.join(collections.cloned().collect::<Vec<_>>()),
        }
        metrics.note_room_change();
    }
    socket.extensions.insert(access);
    socket.on_disconnect(async move |socket: SocketRef, reason: DisconnectReason| {
        connected.fetch_sub(1, Ordering::SeqCst);
        fleet.disconnected(&socket);
        metrics.kiosks_connected.dec();
        // socketioxide takes it out of its rooms just after this handler: the hub recounts
        // on the next two ticks, so the second count sees it gone.
        metrics.note_room_change();
        info!(sid = %socket.id, reason = describe_disconnect(reason), "kiosk disconnected");
    });
    socket.on(
        "subscribe",
        async move |socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
            subscribe(socket, data.ok(), ack, &hub).await;
        },
    );
}

async fn subscribe(socket: SocketRef, data: Option<Value>, ack: AckSender, hub: &HubHandle) {
    let request = data
        .ok_or_else(|| "subscribe needs one JSON object argument".to_owned())
        .and_then(|d| {
            serde_json::from_value::<SubscribeRequest>(d).map_err(|e| {
                format!(
                    "subscribe expects {{\"collections\": [\"name\" or {{\"collection\": \"name\", \"where\": {{\"field\": value}}}}, ...], \"since\": {{\"epoch\": ..., \"seq\": ...}}}}: {e}"
                )
            })
        });
    match request {
        Ok(request) => {
            let Some(slot) = SubscribeSlot::take(&socket) else {
                debug!(sid = %socket.id, "subscribe refused: one is in progress");
                ack.send(&json!({ "ok": false, "error": SUBSCRIBE_IN_PROGRESS }))
                    .ok();
                return;
            };
            let command = Command::Subscribe {
                socket,
                request,
                ack,
                slot,
            };
            hub.send(command).await.ok();
        }
        Err(error) => {
            debug!(sid = %socket.id, error, "subscribe refused");
            ack.send(&json!({ "ok": false, "error": error })).ok();
        }
    }
}

/// What a kiosk's disconnect is worth logging.
fn describe_disconnect(reason: DisconnectReason) -> &'static str {
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
