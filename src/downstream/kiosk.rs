//! Socket.IO for kiosks on namespace `/`, with the event names of the Directus hook extension.
//!
//! Handlers only translate: every emit, room change and ack goes through the hub, which keeps
//! the order of acks, replays and live events.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::socket::DisconnectReason;
use socketioxide::{SocketIo, SocketIoBuilder};
use tracing::{debug, info};

use crate::config::Limits;
use crate::hub::{self, Command, HubHandle, SubscribeRequest};
use crate::metrics::Metrics;

/// The Socket.IO builder with the relay's bounds: the per-kiosk queue, and the largest message
/// a kiosk may send on either transport.
pub fn builder(limits: &Limits) -> SocketIoBuilder {
    SocketIo::builder()
        .max_buffer_size(limits.kiosk_queue)
        .max_payload(limits.max_message_bytes as u64)
        .ws_max_message_size(limits.max_message_bytes)
        .ws_max_frame_size(limits.max_message_bytes)
}

/// Registers the `/` namespace: each kiosk is announced to the hub and may `subscribe`.
pub fn attach(io: &SocketIo, hub: HubHandle, metrics: Arc<Metrics>) {
    io.ns("/", async move |socket: SocketRef| {
        metrics.kiosks_connected.inc();
        info!(sid = %socket.id, transport = ?socket.transport_type(), "kiosk connected");
        let on_disconnect = metrics.clone();
        socket.on_disconnect(async move |socket: SocketRef, reason: DisconnectReason| {
            on_disconnect.kiosks_connected.dec();
            info!(sid = %socket.id, reason = hub::describe_disconnect(reason), "kiosk disconnected");
        });
        let to_hub = hub.clone();
        socket.on(
            "subscribe",
            async move |socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
                subscribe(socket, data.ok(), ack, &to_hub).await;
            },
        );
        hub.send(Command::Connected(socket)).await.ok();
    });
}

async fn subscribe(socket: SocketRef, data: Option<Value>, ack: AckSender, hub: &HubHandle) {
    let request = data
        .ok_or_else(|| "subscribe needs one JSON object argument".to_owned())
        .and_then(|d| {
            serde_json::from_value::<SubscribeRequest>(d).map_err(|e| {
                format!(
                    "subscribe expects {{\"collections\": [...], \"since\": {{\"epoch\": ..., \"seq\": ...}}}}: {e}"
                )
            })
        });
    match request {
        Ok(request) => {
            let command = Command::Subscribe {
                socket,
                request,
                ack,
            };
            hub.send(command).await.ok();
        }
        Err(error) => {
            debug!(sid = %socket.id, error, "subscribe refused");
            ack.send(&json!({ "ok": false, "error": error })).ok();
        }
    }
}
