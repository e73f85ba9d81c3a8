//! Kiosks in a crowd: many subscribes at once never make the webhook refuse a change, each
//! kiosk has one subscribe answered at a time, and one subscribe's cost is bounded.

use futures_util::SinkExt;
use kiosk_tests::{Kiosk, PATIENCE, Relay, config, hook};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = WebSocketStream<TcpStream>;

/// A raw Engine.IO kiosk on `/`, joined and greeted.
async fn raw_kiosk(relay: &Relay) -> Ws {
    let tcp = TcpStream::connect(relay.addr).await.expect("connect");
    joined(relay, tcp).await
}

/// A raw kiosk whose socket takes in little, so that what it does not read stays with the
/// relay.
async fn tight_kiosk(relay: &Relay) -> Ws {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    joined(relay, socket.connect(relay.addr).await.expect("connect")).await
}

async fn joined(relay: &Relay, tcp: TcpStream) -> Ws {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", relay.addr);
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
    populate(&relay, 100, 1000).await;
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

/// The value of the metric line that starts with `name`, from `/metrics`.
async fn metric(relay: &Relay, name: &str) -> f64 {
    let (_, metrics) = relay.get("/metrics").await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// Waits, up to PATIENCE, until the metric `name` reads `value`.
async fn until_metric(relay: &Relay, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = metric(relay, name).await;
        if now == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed {now}, not {value}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `count` screens of about `bytes` each.
async fn populate(relay: &Relay, count: u64, bytes: usize) {
    let pad = "x".repeat(bytes);
    for key in 0..count {
        relay
            .change(&hook(
                "screens",
                "create",
                json!(key),
                json!({ "pad": pad }),
            ))
            .await;
    }
}

/// 300 items of 4 KB: a snapshot of about 1.2 MB.
async fn big_collection(relay: &Relay) {
    populate(relay, 300, 4000).await;
}

/// With a budget smaller than one snapshot, a kiosk that does not read its snapshot holds
/// the budget and the next kiosk's subscribe waits; once the first is cut off for not
/// reading, the second gets its whole snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kiosk_that_does_not_read_its_snapshot_is_cut_off_and_the_next_is_answered() {
    let relay = Relay::start(&config("[limits]\nsnapshot_bytes = \"256KiB\"")).await;
    big_collection(&relay).await;
    let mut stalled = tight_kiosk(&relay).await;
    stalled
        .send(Message::text(
            "420[\"subscribe\",{\"collections\":[\"screens\"]}]",
        ))
        .await
        .expect("subscribe sent");
    // Its answer is queued and charged before the reader asks.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&relay, "relay_snapshot_bytes_charged ").await == 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the snapshot was never charged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut reader = Kiosk::connect(&relay).await;
    let answered = tokio::spawn(async move {
        let ack = reader.subscribe(json!({"collections": ["screens"]})).await;
        reader.disconnect().await;
        ack
    });
    until_metric(&relay, "relay_subscribes_waiting ", 1.0).await;
    let ack = answered.await.expect("reader task");
    assert_eq!(ack["ok"], true, "{ack}");
    let items = ack["collections"]["screens"]["items"]
        .as_array()
        .expect("a snapshot");
    assert_eq!(items.len(), 300);
    until_metric(&relay, "relay_subscribes_waiting ", 0.0).await;
    assert_eq!(
        metric(&relay, "relay_kiosk_overflows_total ").await,
        1.0,
        "the stalled kiosk was cut off"
    );
    drop(stalled);
    relay.stop().await;
}

/// Twenty kiosks that read subscribe at once for a snapshot larger than half the budget: they
/// are answered one or two at a time, and every one gets the whole collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_readers_gets_every_snapshot_within_the_budget() {
    let relay = Relay::start(&config("[limits]\nsnapshot_bytes = \"2MiB\"")).await;
    big_collection(&relay).await;
    let mut kiosks = Vec::new();
    for _ in 0..20 {
        kiosks.push(Kiosk::connect(&relay).await);
    }
    let subscribes: Vec<_> = kiosks
        .into_iter()
        .map(|mut kiosk| {
            tokio::spawn(async move {
                let ack = kiosk.subscribe(json!({"collections": ["screens"]})).await;
                kiosk.disconnect().await;
                ack
            })
        })
        .collect();
    for subscribe in subscribes {
        let ack = subscribe.await.expect("kiosk task");
        assert_eq!(ack["ok"], true, "{ack}");
        let items = ack["collections"]["screens"]["items"]
            .as_array()
            .expect("a snapshot");
        assert_eq!(items.len(), 300);
    }
    until_metric(&relay, "relay_snapshot_bytes_charged ", 0.0).await;
    relay.stop().await;
}
