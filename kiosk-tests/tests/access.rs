//! Kiosk access by token: who may connect, and that a kiosk never receives a collection its
//! token may not read — not by default, not in a snapshot, a replay or a routed room.

use std::time::Duration;

use kiosk_tests::{ERROR, Kiosk, Relay, SECRET, hook, seq};
use serde_json::{Value, json};

const LOBBY: &str = "lobby-token-0123456789";
const OFFICE: &str = "office-token-0123456789";

/// `screens` and `announcements` (both routed by `screen`); the lobby token reads screens
/// only, the office token everything; `extra` is appended to `[clients]`.
fn config(clients: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[webhook]
secret = "{SECRET}"
[[collections]]
name = "screens"
rooms_by = ["zone"]
[[collections]]
name = "announcements"
rooms_by = ["screen"]
[[collections]]
name = "menu"
namespace = "/menu"
[clients]
{clients}
[[clients.tokens]]
name = "lobby"
token = "{LOBBY}"
collections = ["screens"]
[[clients.tokens]]
name = "office"
token = "{OFFICE}"
collections = ["*"]
"#
    )
}

async fn connect(relay: &Relay, token: &str) -> Kiosk {
    let mut kiosk = Kiosk::connect_with_auth(relay, json!({ "token": token })).await;
    kiosk.expect("relay.status").await;
    kiosk
}

#[tokio::test]
async fn kiosks_without_a_valid_token_are_refused_with_a_reason() {
    let relay = Relay::start(&config("")).await;
    let mut none = Kiosk::connect(&relay).await;
    let error = none.expect(ERROR).await.to_string();
    assert!(error.contains("needs a kiosk token"), "{error}");
    let mut wrong =
        Kiosk::connect_with_auth(&relay, json!({"token": "office-token-012345678"})).await;
    let error = wrong.expect(ERROR).await.to_string();
    assert!(error.contains("not valid"), "{error}");
    let mut odd = Kiosk::connect_with_auth(&relay, json!({"token": 42})).await;
    odd.expect(ERROR).await;

    connect(&relay, OFFICE).await;
    let (_, metrics) = relay.get("/metrics").await;
    for expected in [
        "relay_kiosks_refused_total{reason=\"no-token\"} 1",
        "relay_kiosks_refused_total{reason=\"bad-token\"} 2",
        "relay_kiosks_connected 1",
    ] {
        assert!(metrics.contains(expected), "{expected}: {metrics}");
    }
    relay.stop().await;
}

/// A lobby kiosk gets screens and nothing else: by default, in a snapshot, in a replay, and
/// a routed room of a collection it may not read is refused.
#[tokio::test]
async fn a_token_reads_only_its_collections_on_every_path() {
    let relay = Relay::start(&config("")).await;
    let mut office = connect(&relay, OFFICE).await;
    let mut lobby = connect(&relay, LOBBY).await;
    let epoch = office
        .subscribe(json!({"collections": ["screens", "announcements"]}))
        .await["epoch"]
        .clone();
    for (collection, key) in [
        ("announcements", "a1"),
        ("screens", "s1"),
        ("announcements", "a2"),
        ("screens", "s2"),
    ] {
        relay
            .change(&hook(
                collection,
                "create",
                json!(key),
                json!({"screen": 1, "zone": "hall"}),
            ))
            .await;
    }
    // Default (never subscribed): screens only, in order.
    for expected in ["s1", "s2"] {
        let (name, body) = lobby.next_data().await;
        assert_eq!(
            (name.as_str(), body["keys"][0].as_str()),
            ("data.create", Some(expected)),
            "{body}"
        );
    }
    lobby.assert_quiet(Duration::from_millis(200)).await;
    // The office kiosk gets everything, so the announcements were sent.
    for _ in 0..4 {
        office.next_data().await;
    }

    // Snapshot and replay of what it may read; a collection or room it may not read is refused.
    let mut resuming = connect(&relay, LOBBY).await;
    let ack = resuming
        .subscribe(json!({"collections": ["screens"], "since": {"epoch": epoch, "seq": 0}}))
        .await;
    assert_eq!(ack["collections"]["screens"]["mode"], "replay", "{ack}");
    let replayed: Vec<u64> = vec![
        seq(&resuming.next_data().await.1),
        seq(&resuming.next_data().await.1),
    ];
    // Each create also went to its routed room (seqs 2, 4, 6, 8), which this kiosk did not ask for.
    assert_eq!(replayed, [3, 7], "the screens events only");
    for forbidden in [
        json!({"collections": ["announcements"]}),
        json!({"collections": ["screens", "announcements"]}),
        json!({"collections": [{"collection": "announcements", "where": {"screen": 1}}]}),
    ] {
        let ack = lobby.subscribe(forbidden.clone()).await;
        assert_eq!(ack["ok"], false, "{forbidden}: {ack}");
        let error = ack["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("(lobby) may not read \"announcements\""),
            "{error}"
        );
    }
    let ack = lobby.subscribe(json!({"collections": ["screens"]})).await;
    let items = ack["collections"]["screens"]["items"]
        .as_array()
        .expect("snapshot");
    assert_eq!(items.len(), 2, "{ack}");
    assert!(ack["collections"].get("announcements").is_none());

    relay
        .change(&hook(
            "announcements",
            "update",
            json!(["a1"]),
            json!({"title": "x"}),
        ))
        .await;
    relay
        .change(&hook(
            "screens",
            "update",
            json!(["s1"]),
            json!({"title": "x"}),
        ))
        .await;
    let (_, body) = lobby.next_data().await;
    assert_eq!(body["collection"], "screens", "{body}");
    relay.stop().await;
}

#[tokio::test]
async fn anonymous_kiosks_need_allow_anonymous_and_read_only_what_it_names() {
    let relay = Relay::start(&config(
        "allow_anonymous = true\nanonymous_collections = [\"announcements\"]",
    ))
    .await;
    let mut anonymous = Kiosk::connect(&relay).await;
    anonymous.expect("relay.status").await;
    relay
        .change(&hook("screens", "create", json!("s1"), json!({})))
        .await;
    relay
        .change(&hook("announcements", "create", json!("a1"), json!({})))
        .await;
    let (_, body) = anonymous.next_data().await;
    assert_eq!(body["collection"], "announcements", "{body}");
    let ack: Value = anonymous
        .subscribe(json!({"collections": ["screens"]}))
        .await;
    assert!(
        ack["error"]
            .as_str()
            .unwrap_or_default()
            .contains("(anonymous) may not read"),
        "{ack}"
    );
    // A wrong token is still refused, even though tokenless kiosks are served.
    let mut wrong = Kiosk::connect_with_auth(&relay, json!({"token": "not-a-token-at-all"})).await;
    wrong.expect(ERROR).await;
    relay.stop().await;
}

/// A refused subscribe names only what the kiosk's token may read: the relayed collections it
/// lists, and nothing (not even the namespace) of a collection outside the token.
#[tokio::test]
async fn refusals_name_only_what_the_token_may_read() {
    let relay = Relay::start(&config("")).await;
    let mut lobby = connect(&relay, LOBBY).await;
    let refused = async |kiosk: &mut Kiosk, request: Value| -> String {
        let ack = kiosk.subscribe(request.clone()).await;
        assert_eq!(ack["ok"], false, "{request}: {ack}");
        ack["error"].as_str().unwrap_or_default().to_owned()
    };
    let error = refused(&mut lobby, json!({"collections": ["payroll"]})).await;
    assert!(
        error.contains("\"payroll\" is not relayed; this kiosk's token (lobby) may read: screens"),
        "{error}"
    );
    for other in ["announcements", "menu", "/menu"] {
        assert!(!error.contains(other), "{other:?} in {error}");
    }
    let error = refused(&mut lobby, json!({"collections": ["menu"]})).await;
    assert_eq!(error, "this kiosk's token (lobby) may not read \"menu\"");

    // The office token reads everything: its list has every relayed collection, and it is
    // told where a collection is served.
    let mut office = connect(&relay, OFFICE).await;
    let error = refused(&mut office, json!({"collections": ["payroll"]})).await;
    assert!(
        error.ends_with("(office) may read: screens, announcements, menu"),
        "{error}"
    );
    let error = refused(&mut office, json!({"collections": ["menu"]})).await;
    assert!(
        error.contains("served on the namespace \"/menu\""),
        "{error}"
    );
    relay.stop().await;
}

/// Past `clients.wrong_token_limit` wrong tokens from one address, its handshakes are refused
/// for `clients.wrong_token_backoff` with a reason in words, even with the right token (which
/// is then not looked at); afterwards the right token gets in again. The throttle's own tests
/// (src/kiosk/throttle.rs) cover the window, the growing backoff and the bounded table.
#[tokio::test]
async fn an_address_sending_too_many_wrong_tokens_is_refused_for_a_while() {
    let relay = Relay::start(&config(
        "wrong_token_limit = 2\nwrong_token_backoff = \"1s\"",
    ))
    .await;
    for _ in 0..2 {
        let mut wrong =
            Kiosk::connect_with_auth(&relay, json!({"token": "office-token-012345678"})).await;
        let error = wrong.expect(ERROR).await.to_string();
        assert!(error.contains("the kiosk token is not valid"), "{error}");
    }
    let mut refused = Kiosk::connect_with_auth(&relay, json!({"token": OFFICE})).await;
    let error = refused.expect(ERROR).await.to_string();
    assert!(
        error.contains("too many wrong kiosk tokens from this address; try again in 1 s"),
        "{error}"
    );
    assert!(!error.contains(OFFICE), "{error}");

    // The refusal ends by itself: retry until the right token is admitted.
    let deadline = tokio::time::Instant::now() + kiosk_tests::PATIENCE;
    loop {
        let mut kiosk = Kiosk::connect_with_auth(&relay, json!({"token": OFFICE})).await;
        let (name, body) = kiosk.next().await;
        if name == "relay.status" {
            break;
        }
        assert_eq!(name, ERROR);
        assert!(body.to_string().contains("try again in"), "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after {:?}",
            kiosk_tests::PATIENCE
        );
        // Between attempts, as socket.io-client's reconnection delay would.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = relay.get("/metrics").await;
    for expected in [
        "relay_kiosks_refused_total{reason=\"bad-token\"} 2",
        "relay_kiosks_refused_total{reason=\"throttled\"}",
    ] {
        assert!(metrics.contains(expected), "{expected}: {metrics}");
    }
    relay.stop().await;
}
