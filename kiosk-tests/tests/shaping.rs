//! Events shaped per collection: renamed events, a namespace of its own, emitted fields (the
//! snapshot and the events agree), compact events, and a legacy kiosk's token in the query.

use kiosk_tests::{Kiosk, Relay, config, hook, keys, seq};
use serde_json::{Value, json};

/// `menu` renamed and in `/menu`, projected; `tickers` compact; the usual two in `/`.
fn shaped() -> String {
    config(
        r#"
[[collections]]
name = "menu"
namespace = "/menu"
event_name = "{collection}:{action}"
event_names = { update = "menu:changed" }
pre_delete = false
emit_fields = ["title", "image.url"]
emit_payload = false

[[collections]]
name = "tickers"
compact = true
"#,
    )
}

#[tokio::test]
async fn a_renamed_collection_is_served_on_its_own_namespace() {
    let relay = Relay::start(&shaped()).await;
    let mut menu = Kiosk::connect_to(&relay, "/menu", Value::Null).await;
    let mut root = Kiosk::connect(&relay).await;
    assert_eq!(menu.next().await.0, "relay.status");
    assert_eq!(root.next().await.0, "relay.status");

    relay
        .change(&hook("menu", "create", json!(1), json!({"title": "Soup"})))
        .await;
    relay
        .change(&hook(
            "menu",
            "update",
            json!([1]),
            json!({"title": "Stew"}),
        ))
        .await;
    relay
        .change(&hook("menu", "delete", json!([1]), Value::Null))
        .await;
    relay
        .change(&hook(
            "screens",
            "create",
            json!(7),
            json!({"name": "Hall"}),
        ))
        .await;

    let got: Vec<(String, Value, Vec<String>)> =
        [menu.next().await, menu.next().await, menu.next().await]
            .into_iter()
            .map(|(name, body)| (name, body["action"].clone(), keys(&body)))
            .collect();
    assert_eq!(
        got,
        [
            ("menu:create".into(), json!("create"), vec!["1".into()]),
            ("menu:changed".into(), json!("update"), vec!["1".into()]),
            ("menu:delete".into(), json!("delete"), vec!["1".into()]),
        ],
        "renamed, each saying its action, no pre-delete"
    );
    // `/` gets only the collections that stay there, under the usual names.
    let (name, body) = root.next().await;
    assert_eq!(
        (name.as_str(), keys(&body)),
        ("data.create", vec!["7".into()])
    );
    root.assert_quiet(std::time::Duration::from_millis(300))
        .await;
    menu.assert_quiet(std::time::Duration::from_millis(300))
        .await;
    relay.stop().await;
}

#[tokio::test]
async fn subscribing_names_the_namespace_a_collection_is_served_on() {
    let relay = Relay::start(&shaped()).await;
    let mut root = Kiosk::connect(&relay).await;
    let ack = root.subscribe(json!({"collections": ["menu"]})).await;
    assert_eq!(ack["ok"], false, "{ack}");
    let error = ack["error"].as_str().expect("error");
    assert!(
        error.contains("served on the namespace \"/menu\""),
        "{error}"
    );
    let mut menu = Kiosk::connect_to(&relay, "/menu", Value::Null).await;
    let ack = menu.subscribe(json!({"collections": ["screens"]})).await;
    assert_eq!(ack["ok"], false, "{ack}");
    let ack = menu.subscribe(json!({"collections": ["menu"]})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    relay.stop().await;
}

#[tokio::test]
async fn the_snapshot_and_the_events_carry_the_same_fields() {
    let relay = Relay::start(&shaped()).await;
    let record = json!({"title": "Soup", "price": 4, "image": {"url": "/soup.png", "size": 9}});
    relay
        .change(&hook("menu", "create", json!(1), record))
        .await;

    let mut menu = Kiosk::connect_to(&relay, "/menu", Value::Null).await;
    let ack = menu.subscribe(json!({"collections": ["menu"]})).await;
    let snapshot = &ack["collections"]["menu"];
    assert_eq!(snapshot["mode"], "snapshot", "{ack}");
    let expected = json!({"id": 1, "title": "Soup", "image": {"url": "/soup.png"}});
    assert_eq!(snapshot["items"], json!([expected]));

    relay
        .change(&hook(
            "menu",
            "create",
            json!(2),
            json!({"title": "Tea", "price": 2}),
        ))
        .await;
    let (name, body) = menu.next_data().await;
    assert_eq!(name, "menu:create");
    assert_eq!(body["record"], json!({"id": 2, "title": "Tea"}));
    assert!(
        body.get("payload").is_none(),
        "emit_payload = false: {body}"
    );
    relay
        .change(&hook("menu", "update", json!([1]), json!({"price": 5})))
        .await;
    let (name, body) = menu.next_data().await;
    assert_eq!(name, "menu:changed");
    assert_eq!(
        body["records"],
        json!([expected]),
        "the same fields as the snapshot"
    );

    // A resume replays the shaped events as they were sent.
    let since = json!({"epoch": ack["epoch"], "seq": seq(&body) - 1});
    let mut again = Kiosk::connect_to(&relay, "/menu", Value::Null).await;
    let ack = again
        .subscribe(json!({"collections": ["menu"], "since": since}))
        .await;
    assert_eq!(ack["collections"]["menu"]["mode"], "replay", "{ack}");
    let (name, replayed) = again.next_data().await;
    assert_eq!((name.as_str(), &replayed), ("menu:changed", &body));
    relay.stop().await;
}

#[tokio::test]
async fn compact_events_and_snapshots_carry_keys_only() {
    let relay = Relay::start(&shaped()).await;
    relay
        .change(&hook(
            "tickers",
            "create",
            json!("t1"),
            json!({"text": "Open"}),
        ))
        .await;
    let mut kiosk = Kiosk::connect(&relay).await;
    let ack = kiosk.subscribe(json!({"collections": ["tickers"]})).await;
    assert_eq!(
        ack["collections"]["tickers"],
        json!({"mode": "snapshot", "keys": ["t1"]})
    );
    relay
        .change(&hook(
            "tickers",
            "update",
            json!(["t1"]),
            json!({"text": "Closed"}),
        ))
        .await;
    let (name, body) = kiosk.next_data().await;
    assert_eq!(name, "data.update");
    assert_eq!(
        body,
        json!({"collection": "tickers", "keys": ["t1"], "seq": seq(&body)})
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_token_may_come_in_the_handshake_query() {
    let toml = config(&format!(
        "[[clients.tokens]]\nname = \"lobby\"\ntoken = \"{TOKEN}\"\ncollections = [\"screens\"]"
    ))
    .replace("clients.allow_anonymous = true", "");
    let relay = Relay::start(&toml).await;
    // socket.io-client 2.x has no handshake `auth`: its kiosks pass the token as `?token=`.
    let answer = connect_polling(&relay, TOKEN).await;
    assert!(
        answer.iter().any(|p| p.starts_with("40{\"sid\"")),
        "connected: {answer:?}"
    );
    let answer = connect_polling(&relay, "not-the-token-0123456789").await;
    assert!(
        answer
            .iter()
            .any(|p| p.starts_with("44") && p.contains("not valid")),
        "refused: {answer:?}"
    );
    relay.stop().await;
}

/// Opens an Engine.IO v4 polling session with `token` in the handshake's query, asks for the
/// namespace `/`, and returns the packets of the relay's answer.
async fn connect_polling(relay: &Relay, token: &str) -> Vec<String> {
    let http = reqwest::Client::new();
    let path = format!("/socket.io/?EIO=4&transport=polling&token={token}");
    let open = http.get(relay.url(&path)).send().await.expect("handshake");
    let open: Value =
        serde_json::from_str(open.text().await.expect("body").trim_start_matches('0'))
            .expect("open packet");
    let session = format!(
        "/socket.io/?EIO=4&transport=polling&sid={}",
        open["sid"].as_str().expect("sid")
    );
    let sent = http
        .post(relay.url(&session))
        .body("40")
        .send()
        .await
        .expect("connect");
    assert!(sent.status().is_success());
    let answer = http.get(relay.url(&session)).send().await.expect("poll");
    let answer = answer.text().await.expect("body");
    answer.split('\u{1e}').map(str::to_owned).collect()
}

const TOKEN: &str = "lobby-token-0123456789";
