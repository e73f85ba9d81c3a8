//! A kiosk that stops reading is cut off by closing its connection — within seconds, not at
//! the Engine.IO heartbeat — while the other kiosks keep receiving everything.
//!
//! The slow kiosk is a raw Engine.IO v4 client over a socket with a tiny receive buffer, so
//! the relay's per-kiosk queue fills after a few events.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kiosk_tests::{Kiosk, PATIENCE, Relay, config, hook, seq};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Largest number of changes posted while waiting for the slow kiosk to be cut off.
const MAX_CHANGES: u64 = 400;

/// Payload bytes per change: with the record, an event is about twice that.
const PAYLOAD_BYTES: usize = 16 << 10;

type Ws = WebSocketStream<TcpStream>;

/// A TCP connection to the relay that reads little: a 4 KiB receive buffer.
async fn tight_socket(relay: &Relay) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(relay.addr).await.expect("connect")
}

async fn text(ws: &mut Ws) -> String {
    kiosk_tests::ws::next_text(ws, PATIENCE).await
}

/// A kiosk that connects with WebSocket at once, joins `/` and then reads nothing more.
async fn direct_websocket(relay: &Relay) -> Ws {
    direct_websocket_with(relay, "40").await
}

/// The same, with its own Socket.IO connect packet (`40{"device":…}` names the screen).
async fn direct_websocket_with(relay: &Relay, connect: &str) -> Ws {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", relay.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tight_socket(relay).await)
        .await
        .expect("websocket handshake");
    let open = text(&mut ws).await;
    assert!(open.starts_with("0{"), "Engine.IO open packet: {open}");
    join_with(&mut ws, connect).await;
    ws
}

/// A kiosk that starts on long-polling, as socket.io-client does by default, upgrades to
/// WebSocket, joins `/` and then reads nothing more.
async fn upgraded_from_polling(relay: &Relay) -> Ws {
    let http = reqwest::Client::new();
    let open = http
        .get(relay.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .expect("polling handshake")
        .text()
        .await
        .expect("open packet");
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet"))
        .unwrap_or_else(|e| panic!("open packet {open}: {e}"));
    let sid = open["sid"].as_str().expect("sid").to_owned();
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        relay.addr
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tight_socket(relay).await)
        .await
        .expect("websocket handshake");
    ws.send(Message::text("2probe")).await.expect("probe");
    assert_eq!(text(&mut ws).await, "3probe");
    ws.send(Message::text("5")).await.expect("upgrade");
    join(&mut ws).await;
    ws
}

/// Joins namespace `/` and waits for the relay's greeting.
async fn join(ws: &mut Ws) {
    join_with(ws, "40").await;
}

async fn join_with(ws: &mut Ws, connect: &str) {
    ws.send(Message::text(connect))
        .await
        .expect("connect packet");
    loop {
        let packet = text(ws).await;
        if packet.starts_with("42[\"relay.status\"") {
            return;
        }
        assert!(
            packet.starts_with("40") || packet == "2" || packet == "6",
            "unexpected packet before the greeting: {packet}"
        );
    }
}

async fn overflows(relay: &Relay) -> u64 {
    let (_, metrics) = relay.get("/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("relay_kiosk_overflows_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no relay_kiosk_overflows_total in {metrics}"))
}

/// Reads whatever is left until the connection ends; panics if it is still open after
/// `PATIENCE` (the heartbeat alone would take 45 s).
async fn assert_closed_soon(mut ws: Ws) {
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(message) = ws.next().await {
            if message.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the slow kiosk's connection is still open after {PATIENCE:?}"
    );
}

/// Creates item 1, then updates it with `PAYLOAD_BYTES` of filler until the relay has cut a
/// kiosk off, calling `after_each` after every change; returns the number of changes.
async fn post_until_a_kiosk_is_cut_off(relay: &Relay, mut after_each: impl AsyncFnMut()) -> u64 {
    let filler = "x".repeat(PAYLOAD_BYTES);
    relay
        .change(&hook("screens", "create", json!(1), json!({"n": 0})))
        .await;
    let mut posted = 1;
    while overflows(relay).await == 0 {
        assert!(
            posted < MAX_CHANGES,
            "{posted} changes did not fill a queue of 16"
        );
        relay
            .change(&hook(
                "screens",
                "update",
                json!([1]),
                json!({"n": posted, "filler": filler}),
            ))
            .await;
        posted += 1;
        after_each().await;
    }
    posted
}

async fn a_kiosk_that_stops_reading_is_cut_off(connect_slow: impl AsyncFnOnce(&Relay) -> Ws) {
    let relay = Relay::start(&config("[limits]\nkiosk_queue = 16")).await;
    let mut steady = Kiosk::connect(&relay).await;
    steady.expect("relay.status").await;
    let slow = connect_slow(&relay).await;

    let posted = post_until_a_kiosk_is_cut_off(&relay, async || {}).await;
    assert_eq!(overflows(&relay).await, 1, "one kiosk cut off, once");
    assert_closed_soon(slow).await;

    // The steady kiosk missed nothing.
    for expected in 1..=posted {
        let (name, body) = steady.next_data().await;
        assert_eq!(seq(&body), expected, "{name}");
    }
    steady.assert_quiet(Duration::from_millis(200)).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_websocket_kiosk_that_stops_reading_is_cut_off_by_closing_its_connection() {
    a_kiosk_that_stops_reading_is_cut_off(direct_websocket).await;
}

#[tokio::test]
async fn an_upgraded_kiosk_that_stops_reading_is_cut_off_by_closing_its_connection() {
    a_kiosk_that_stops_reading_is_cut_off(upgraded_from_polling).await;
}

/// A named screen that stops reading shows how many events wait in its queue, in the fleet's
/// per-screen view, until the queue is full and it is cut off.
#[tokio::test]
async fn a_screen_that_stops_reading_shows_its_queue_depth() {
    const ADMIN: &str = "queue-admin-token-0123456789";
    let relay = Relay::start(&config(&format!(
        "[admin]\ntoken = \"{ADMIN}\"\n[limits]\nkiosk_queue = 16"
    )))
    .await;
    let slow = direct_websocket_with(&relay, r#"40{"device":"slow-screen"}"#).await;
    let queue = async || {
        let (status, list) = relay
            .api(reqwest::Method::GET, "/api/screens", Some(ADMIN), None)
            .await;
        assert_eq!(status, 200, "{list}");
        let screen = list["screens"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["device"] == "slow-screen"))
            .cloned()
            .unwrap_or_else(|| panic!("slow-screen is not listed: {list}"));
        (screen["queue"].as_u64(), screen["queue_full"].as_bool())
    };
    assert_eq!(queue().await, (Some(0), Some(false)), "nothing queued yet");

    let mut depths = Vec::new();
    post_until_a_kiosk_is_cut_off(&relay, async || {
        if let (Some(depth), _) = queue().await {
            depths.push(depth);
        }
    })
    .await;
    assert!(
        depths.iter().any(|&d| d > 0),
        "the queue never showed an event waiting: {depths:?}"
    );
    assert!(
        depths.iter().all(|&d| d <= 16),
        "a depth past kiosk_queue: {depths:?}"
    );
    assert!(
        depths.windows(2).any(|w| w[1] > w[0]),
        "the depth never grew while the screen did not read: {depths:?}"
    );
    // Cut off: once the relay has seen it go, no live connection, so no queue to show.
    assert_closed_soon(slow).await;
    let gone = tokio::time::timeout(PATIENCE, async {
        while queue().await.0.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the cut-off screen still shows a queue");
    relay.stop().await;
}

/// A kiosk that sends a message past `limits.max_message_bytes` (here 10 MiB in one frame, and
/// the same in 64 KiB fragments) has its connection closed; the others go on receiving.
#[tokio::test]
async fn a_kiosk_sending_a_10_mib_message_is_cut_off() {
    let relay = Relay::start(&config("")).await;
    let mut steady = Kiosk::connect(&relay).await;
    steady.expect("relay.status").await;
    let message = format!("42[\"subscribe\",\"{}\"]", "A".repeat(10 << 20));
    for fragment in [None, Some(64 << 10)] {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", relay.addr);
        let tcp = TcpStream::connect(relay.addr).await.expect("connect");
        let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .expect("websocket handshake");
        assert!(text(&mut ws).await.starts_with("0{"));
        join(&mut ws).await;
        let sent = match fragment {
            None => ws.send(Message::text(message.clone())).await,
            Some(size) => {
                let mut parts = message.as_bytes().chunks(size).peekable();
                let mut result = Ok(());
                let mut first = true;
                while let Some(part) = parts.next() {
                    let kind = if first { Data::Text } else { Data::Continue };
                    let frame = Frame::message(
                        bytes::Bytes::copy_from_slice(part),
                        OpCode::Data(kind),
                        parts.peek().is_none(),
                    );
                    first = false;
                    result = ws.send(Message::Frame(frame)).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
        // The relay may close while the message is still being written.
        drop(sent);
        assert_closed_soon(ws).await;
    }
    relay
        .change(&hook("screens", "create", json!(1), json!({"n": 1})))
        .await;
    let (_, body) = steady.next_data().await;
    assert_eq!(seq(&body), 1);
    relay.stop().await;
}
