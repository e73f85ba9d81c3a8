//! Screens as a fleet: kiosks that name their device are listed, reported missing, commanded
//! and remembered across a restart; acting needs the admin token.

use std::time::Duration;

use kiosk_tests::{ERROR, Kiosk, PATIENCE, Relay, SECRET};
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN: &str = "fleet-admin-token-0123456789";
const LOBBY: &str = "lobby-token-0123456789";
const OFFICE: &str = "office-token-0123456789";

/// `clients` is added to `[clients]`, `extra` at the end.
fn config(clients: &str, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[webhook]
secret = "{SECRET}"
[[collections]]
name = "screens"
[admin]
token = "{ADMIN}"
[clients]
missing_after = "1s"
allow_anonymous = true
{clients}
[[clients.tokens]]
name = "lobby"
token = "{LOBBY}"
collections = ["screens"]
devices = ["lobby-*"]
[[clients.tokens]]
name = "office"
token = "{OFFICE}"
collections = ["*"]
{extra}
"#
    )
}

async fn screens(relay: &Relay) -> Value {
    let (status, body) = relay
        .api(Method::GET, "/api/screens", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn screen<'a>(list: &'a Value, device: &str) -> Option<&'a Value> {
    list["screens"]
        .as_array()?
        .iter()
        .find(|s| s["device"] == device)
}

/// Waits until `device` is in `state` (the relay checks every second with `missing_after` 1s).
async fn wait_for_state(relay: &Relay, device: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let list = screens(relay).await;
        if let Some(s) = screen(&list, device).filter(|s| s["state"] == state) {
            return s.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{device} never became {state}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(relay: &Relay, auth: Value) -> Kiosk {
    let mut kiosk = Kiosk::connect_with_auth(relay, auth).await;
    kiosk.expect("relay.status").await;
    kiosk
}

#[tokio::test]
async fn named_screens_are_listed_and_malformed_or_foreign_devices_refused() {
    let relay = Relay::start(&config("", "")).await;
    let _left = connect(
        &relay,
        json!({"token": LOBBY, "device": "lobby-left", "name": "Lobby <left>", "app_version": "1.2"}),
    )
    .await;
    let _anonymous = connect(&relay, json!({"token": OFFICE})).await;

    let list = screens(&relay).await;
    assert_eq!(list["online"], 1, "only named kiosks are screens: {list}");
    assert_eq!(list["anonymous_connections"], 1, "{list}");
    let left = screen(&list, "lobby-left").expect("listed");
    assert_eq!(left["state"], "online");
    assert_eq!(
        left["name"], "Lobby <left>",
        "kept as given, escaped by the page"
    );
    assert_eq!(left["token"], "lobby");
    assert_eq!(left["app_version"], "1.2");
    assert_eq!(left["address"], "127.0.0.1");
    assert_eq!(left["subscriptions"], json!(["screens"]));

    let mut malformed =
        Kiosk::connect_with_auth(&relay, json!({"token": OFFICE, "device": "a b"})).await;
    let error = malformed.expect(ERROR).await.to_string();
    assert!(error.contains("device id is malformed"), "{error}");
    let mut foreign =
        Kiosk::connect_with_auth(&relay, json!({"token": LOBBY, "device": "office-1"})).await;
    let error = foreign.expect(ERROR).await.to_string();
    assert!(error.contains("may not be used by this device"), "{error}");
    let mut unnamed = Kiosk::connect_with_auth(&relay, json!({"token": LOBBY})).await;
    let error = unnamed.expect(ERROR).await.to_string();
    assert!(error.contains("may not be used by this device"), "{error}");

    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.contains("relay_screens{state=\"online\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("relay_kiosks_refused_total{reason=\"bad-device\"} 3"),
        "{metrics}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_screen_that_goes_away_is_missing_after_missing_after_and_back_when_it_returns() {
    let relay = Relay::start(&config("", "")).await;
    let kiosk = connect(&relay, json!({"token": OFFICE, "device": "hall"})).await;
    kiosk.disconnect().await;
    let away = wait_for_state(&relay, "hall", "away").await;
    assert_eq!(away["subscriptions"], json!(["*"]), "what it read: {away}");
    let missing = wait_for_state(&relay, "hall", "missing").await;
    assert_eq!(missing["connects_last_hour"], 1);
    let list = screens(&relay).await;
    assert_eq!(
        list["screens"][0]["device"], "hall",
        "missing screens come first"
    );
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.contains("relay_screens{state=\"missing\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("relay_screen_last_seen_timestamp_seconds{device=\"hall\"}"),
        "{metrics}"
    );

    let _back = connect(&relay, json!({"token": OFFICE, "device": "hall"})).await;
    let online = wait_for_state(&relay, "hall", "online").await;
    assert_eq!(online["connects_last_hour"], 2);
    relay.stop().await;
}

#[tokio::test]
async fn commands_reach_the_screen_and_need_the_admin_token() {
    let relay = Relay::start(&config("", "")).await;
    let mut kiosk = connect(&relay, json!({"token": OFFICE, "device": "hall"})).await;
    let reload = json!({"command": "reload", "args": {"delay": 2}});

    let (status, body) = relay
        .api(
            Method::POST,
            "/api/screens/hall/commands",
            None,
            Some(reload.clone()),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = relay
        .api(
            Method::POST,
            "/api/screens/hall/commands",
            Some(OFFICE),
            Some(reload.clone()),
        )
        .await;
    assert_eq!(status, 401, "a kiosk token is no admin token: {body}");
    let (status, body) = relay
        .api(
            Method::POST,
            "/api/screens/nobody/commands",
            Some(ADMIN),
            Some(reload.clone()),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = relay
        .api(
            Method::POST,
            "/api/screens/hall/commands",
            Some(ADMIN),
            Some(json!({"command": "<script>"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        !body.to_string().contains("<script>"),
        "nothing reflected: {body}"
    );

    // The test's client cannot acknowledge; the screen receives the command all the same, and
    // the answer says it was not acknowledged within the wait.
    let (status, body) = relay
        .api(
            Method::POST,
            "/api/screens/hall/commands",
            Some(ADMIN),
            Some(reload.clone()),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["acked"], false);
    let command = kiosk.expect("relay.command").await;
    assert_eq!(command["command"], "reload");
    assert_eq!(command["args"], json!({"delay": 2}));
    assert!(command["id"].as_str().is_some_and(|id| !id.is_empty()));

    let (status, body) = relay
        .api(
            Method::POST,
            "/api/commands",
            Some(ADMIN),
            Some(json!({"command": "identify", "token": "office"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["screens"], 1);
    assert_eq!(kiosk.expect("relay.command").await["command"], "identify");
    let (status, _) = relay
        .api(
            Method::POST,
            "/api/commands",
            Some(ADMIN),
            Some(json!({"command": "identify"})),
        )
        .await;
    assert_eq!(status, 400, "which screens must be named");

    kiosk.disconnect().await;
    wait_for_state(&relay, "hall", "away").await;
    let (status, body) = relay
        .api(
            Method::POST,
            "/api/screens/hall/commands",
            Some(ADMIN),
            Some(reload),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    let (status, _) = relay
        .api(Method::DELETE, "/api/screens/hall", None, None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = relay
        .api(Method::DELETE, "/api/screens/hall", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200);
    assert!(screen(&screens(&relay).await, "hall").is_none());
    relay.stop().await;
}

#[tokio::test]
async fn without_an_admin_token_nothing_acts() {
    let toml = config("", "").replace(&format!("[admin]\ntoken = \"{ADMIN}\"\n"), "");
    let relay = Relay::start(&toml).await;
    let _kiosk = connect(&relay, json!({"token": OFFICE, "device": "hall"})).await;
    let (status, body) = relay
        .api(
            Method::POST,
            "/api/screens/hall/commands",
            None,
            Some(json!({"command": "reload"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("[admin] token"),
        "{body}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn the_list_is_bounded_and_remembered_across_a_restart() {
    let toml = config("max_screens = 2", "[limits]\nmax_clients = 2");
    let relay = Relay::start(&toml).await;
    let a = connect(&relay, json!({"token": OFFICE, "device": "a"})).await;
    let _b = connect(&relay, json!({"token": OFFICE, "device": "b"})).await;
    a.disconnect().await;
    wait_for_state(&relay, "a", "away").await;
    let _c = connect(&relay, json!({"token": OFFICE, "device": "c"})).await;
    let list = screens(&relay).await;
    assert!(
        screen(&list, "a").is_none(),
        "the screen away longest is forgotten: {list}"
    );
    assert_eq!(list["online"], 2);

    let state_dir = relay.state_dir.clone();
    relay.stop().await;
    let relay = Relay::start_in(&toml, state_dir, "127.0.0.1:0").await;
    let list = screens(&relay).await;
    for device in ["b", "c"] {
        let s = screen(&list, device).unwrap_or_else(|| panic!("{device} remembered: {list}"));
        assert_eq!(s["state"], "away", "{s}");
    }
    wait_for_state(&relay, "b", "missing").await;
    relay.stop().await;
}
