//! Kiosks in a crowd: many subscribes at once never make the webhook refuse a change, each
//! kiosk has one subscribe answered at a time, and one subscribe's cost is bounded.

use futures_util::SinkExt;
use kiosk_tests::{Kiosk, PATIENCE, Relay, config, hook};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = WebSocketStream<TcpStream>;

/// A raw Engine.IO kiosk on `/`, joined and greeted.
async fn raw_kiosk(relay: &Relay) -> Ws {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", relay.addr);
    let tcp = TcpStream::connect(relay.addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("websocket handshake");
    let open = kiosk_tests::ws::next_text(&mut ws, PATIENCE).await;
    assert!(open.starts_with("0{"), "Engine.IO open packet: {open}");
    ws.send(Message::text("40")).await.expect("connect packet");
    loop {
        let packet = kiosk_tests::ws::next_text(&mut ws, PATIENCE).await;
        if packet.starts_with("42[\"relay.status\"") {
            return ws;
        }
    }
}

/// Sends `count` subscribes with ack ids 0.. at once, then reads until each is answered;
/// returns the answers by ack id.
async fn flood(mut ws: Ws, count: usize) -> Vec<Value> {
    for id in 0..count {
        ws.send(Message::text(format!(
            "42{id}[\"subscribe\",{{\"collections\":[\"screens\"]}}]"
        )))
        .await
        .expect("subscribe sent");
    }
    let mut answers = vec![Value::Null; count];
    let mut left = count;
    while left > 0 {
        let packet = kiosk_tests::ws::next_text(&mut ws, PATIENCE).await;
        if packet == "2" {
            ws.send(Message::text("3")).await.expect("pong");
            continue;
        }
        let Some(ack) = packet.strip_prefix("43") else {
            continue;
        };
        let start = ack.find('[').expect("ack arguments");
        let id: usize = ack[..start].parse().expect("ack id");
        let mut args: Vec<Value> = serde_json::from_str(&ack[start..]).expect("JSON");
        assert!(answers[id].is_null(), "ack {id} answered twice");
        answers[id] = args.swap_remove(0);
        left -= 1;
    }
    ws.close(None).await.ok();
    answers
}

/// Ten kiosks each send thirty subscribes (300 in all, more than the 64 changes the hub's
/// inbox holds) for a collection of 100 items at once while changes are posted: every change
/// is accepted (kiosk requests wait in a lane of their own, and the hub takes changes first),
/// every subscribe is answered, and a kiosk that asks again before its answer is told to
/// wait. Saving is set far apart so that only kiosks compete with the changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_crowds_never_make_the_webhook_refuse_changes() {
    let toml = format!(
        "persist_interval = \"1h\"\n{}",
        config("[limits]\nhub_inbox = 64")
    );
    let relay = Relay::start(&toml).await;
    let pad = "x".repeat(1000);
    for key in 0..100 {
        relay
            .change(&hook("screens", "create", json!(key), json!({ "pad": pad })))
            .await;
    }
    let mut kiosks = Vec::new();
    for _ in 0..10 {
        kiosks.push(raw_kiosk(&relay).await);
    }
    let floods: Vec<_> = kiosks
        .into_iter()
        .map(|ws| tokio::spawn(flood(ws, 30)))
        .collect();
    let mut statuses = Vec::new();
    for key in 1000..1100 {
        let (status, _) = relay
            .post(&hook("screens", "create", json!(key), json!({})))
            .await;
        statuses.push(status);
    }
    let mut answered = 0;
    for flood in floods {
        let acks = flood.await.expect("kiosk task");
        let ok = acks.iter().filter(|a| a["ok"] == true).count();
        assert!(ok >= 1, "each kiosk gets at least one answer: {acks:?}");
        for ack in acks.iter().filter(|a| a["ok"] != true) {
            let error = ack["error"].as_str().unwrap_or_default();
            assert!(error.contains("still being answered"), "{ack}");
        }
        for ack in acks.iter().filter(|a| a["ok"] == true) {
            let items = ack["collections"]["screens"]["items"]
                .as_array()
                .expect("a snapshot");
            assert!(items.len() >= 100, "the whole collection: {}", items.len());
        }
        answered += ok;
    }
    let refused: Vec<_> = statuses.iter().filter(|s| **s != 202).collect();
    assert!(
        refused.is_empty(),
        "webhooks refused while kiosks subscribed: {refused:?}"
    );
    assert!(answered >= 10);
    relay.stop().await;
}

#[tokio::test]
async fn a_subscribe_naming_too_many_rooms_is_declined_in_words() {
    let relay = Relay::start(&config("[limits]\nmax_subscribe_targets = 2")).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    let ack = kiosk
        .subscribe(json!({"collections": ["screens", "announcements", "screens"]}))
        .await;
    assert_eq!(ack["ok"], false, "{ack}");
    let error = ack["error"].as_str().expect("error text");
    assert!(
        error.contains("at most 2") && error.contains("limits.max_subscribe_targets"),
        "{error}"
    );
    let ack = kiosk
        .subscribe(json!({"collections": ["screens", "announcements"]}))
        .await;
    assert_eq!(ack["ok"], true, "within the bound: {ack}");
    kiosk.disconnect().await;
    relay.stop().await;
}
