//! Routed rooms (`rooms_by`): a kiosk follows just the items with a given field value, is told
//! when an item leaves or arrives, and resumes or takes a snapshot of just its room.

use std::time::Duration;

use kiosk_tests::{Kiosk, Relay, config, hook, keys, seq};
use serde_json::{Value, json};

fn routed() -> String {
    // `config()` relays screens and announcements; route announcements by screen.
    config("").replace(
        "name = \"announcements\"",
        "name = \"announcements\"\nrooms_by = [\"screen\", \"zone.code\"]",
    )
}

async fn subscribe_room(kiosk: &mut Kiosk, filter: Value, since: Option<&Value>) -> Value {
    let mut request = json!({"collections": [{"collection": "announcements", "where": filter}]});
    if let Some(since) = since {
        request["since"] = since.clone();
    }
    let ack = kiosk.subscribe(request).await;
    assert_eq!(ack["ok"], true, "{ack}");
    ack
}

fn item_keys(entry: &Value) -> Vec<String> {
    let mut keys: Vec<String> = entry["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {entry}"))
        .iter()
        .map(|i| i["id"].as_str().expect("string id").to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn an_item_that_moves_leaves_one_room_and_arrives_in_the_other() {
    let relay = Relay::start(&routed()).await;
    let announce = |key: &str, payload: Value| hook("announcements", "create", json!(key), payload);
    relay
        .change(&announce("a1", json!({"id": "a1", "screen": 1})))
        .await;
    relay
        .change(&announce("a2", json!({"id": "a2", "screen": 2})))
        .await;
    // A related item, expanded: routes by its id.
    relay
        .change(&announce(
            "a3",
            json!({"id": "a3", "screen": {"id": 1, "name": "Lobby"}}),
        ))
        .await;

    let mut one = Kiosk::connect(&relay).await;
    let ack = subscribe_room(&mut one, json!({"screen": 1}), None).await;
    let room = &ack["rooms"][0];
    assert_eq!(
        (room["collection"].as_str(), room["mode"].as_str()),
        (Some("announcements"), Some("snapshot")),
        "{ack}"
    );
    assert_eq!(room["where"], json!({"screen": "1"}));
    assert_eq!(item_keys(room), ["a1", "a3"]);
    let since = json!({"epoch": ack["epoch"], "seq": ack["seq"]});
    let mut two = Kiosk::connect(&relay).await;
    let ack = subscribe_room(&mut two, json!({"screen": "2"}), None).await;
    assert_eq!(item_keys(&ack["rooms"][0]), ["a2"]);
    let mut whole = Kiosk::connect(&relay).await;
    whole
        .subscribe(json!({"collections": ["announcements"]}))
        .await;

    // a1 moves from screen 1 to screen 2.
    relay
        .change(&hook(
            "announcements",
            "update",
            json!(["a1"]),
            json!({"screen": 2}),
        ))
        .await;
    let (name, left) = one.next_data().await;
    assert_eq!(
        (name.as_str(), keys(&left)),
        ("data.delete", vec!["a1".to_owned()]),
        "{left}"
    );
    assert_eq!(left["where"], json!({"screen": "1"}));
    let (name, arrived) = two.next_data().await;
    assert_eq!(name, "data.create", "{arrived}");
    assert_eq!(arrived["record"]["screen"], 2);
    assert_eq!(arrived["where"], json!({"screen": "2"}));
    let (name, update) = whole.next_data().await;
    assert_eq!(
        (name.as_str(), update.get("where")),
        ("data.update", None),
        "{update}"
    );

    // a3 changes but stays: only screen 1 hears of it. a2 is deleted: only screen 2.
    relay
        .change(&hook(
            "announcements",
            "update",
            json!(["a3"]),
            json!({"title": "new"}),
        ))
        .await;
    relay
        .change(&hook("announcements", "delete", json!(["a2"]), Value::Null))
        .await;
    let (name, update) = one.next_data().await;
    assert_eq!(
        (name.as_str(), keys(&update)),
        ("data.update", vec!["a3".to_owned()])
    );
    one.assert_quiet(Duration::from_millis(200)).await;
    for expected in ["data.pre-delete", "data.delete"] {
        let (name, body) = two.next_data().await;
        assert_eq!(
            (name.as_str(), keys(&body)),
            (expected, vec!["a2".to_owned()]),
            "{body}"
        );
    }
    two.assert_quiet(Duration::from_millis(200)).await;

    // A kiosk resuming screen 1 from before the move gets that room's events only.
    let mut resumed = Kiosk::connect(&relay).await;
    let ack = subscribe_room(&mut resumed, json!({"screen": 1}), Some(&since)).await;
    assert_eq!(ack["rooms"][0]["mode"], "replay", "{ack}");
    assert_eq!(ack["rooms"][0]["events"], 2, "{ack}");
    let first = resumed.next_data().await;
    let second = resumed.next_data().await;
    assert_eq!(
        [
            (first.0.as_str(), keys(&first.1)),
            (second.0.as_str(), keys(&second.1))
        ],
        [
            ("data.delete", vec!["a1".to_owned()]),
            ("data.update", vec!["a3".to_owned()])
        ]
    );
    assert!(seq(&first.1) < seq(&second.1));
    // And a fresh snapshot of screen 1 now holds a3 only.
    let mut fresh = Kiosk::connect(&relay).await;
    let ack = subscribe_room(&mut fresh, json!({"screen": 1}), None).await;
    assert_eq!(item_keys(&ack["rooms"][0]), ["a3"]);
    relay.stop().await;
}

#[tokio::test]
async fn rooms_follow_paths_into_related_items() {
    let relay = Relay::start(&routed()).await;
    let mut hall = Kiosk::connect(&relay).await;
    subscribe_room(&mut hall, json!({"zone.code": "H"}), None).await;
    relay
        .change(&hook(
            "announcements",
            "create",
            json!("a1"),
            json!({"id": "a1", "zone": {"id": 4, "code": "H"}}),
        ))
        .await;
    relay
        .change(&hook(
            "announcements",
            "create",
            json!("a2"),
            json!({"id": "a2", "zone": {"id": 5, "code": "L"}}),
        ))
        .await;
    relay
        .change(&hook(
            "announcements",
            "update",
            json!(["a2"]),
            json!({"zone": {"id": 4, "code": "H"}}),
        ))
        .await;
    let (name, body) = hall.next_data().await;
    assert_eq!(
        (name.as_str(), keys(&body)),
        ("data.create", vec!["a1".to_owned()])
    );
    let (name, body) = hall.next_data().await;
    assert_eq!(
        (name.as_str(), keys(&body)),
        ("data.create", vec!["a2".to_owned()]),
        "moved in"
    );
    relay.stop().await;
}

#[tokio::test]
async fn bad_room_requests_are_refused_with_a_reason() {
    let relay = Relay::start(&routed()).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    let cases = [
        (
            json!({"collection": "announcements", "where": {"title": "x"}}),
            "has no rooms by \"title\"",
        ),
        (
            json!({"collection": "screens", "where": {"screen": 1}}),
            "its routed fields (rooms_by): none",
        ),
        (
            json!({"collection": "announcements", "where": {"screen": 1, "zone.code": "H"}}),
            "names one field",
        ),
        (
            json!({"collection": "announcements", "where": {"screen": [1]}}),
            "string, number or boolean",
        ),
        (
            json!({"collection": "announcements", "filter": {}}),
            "subscribe expects",
        ),
    ];
    for (entry, expected) in cases {
        let ack = kiosk.subscribe(json!({"collections": [entry]})).await;
        assert_eq!(ack["ok"], false, "{ack}");
        let error = ack["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{expected}: {error}");
    }
    relay.stop().await;
}

/// An event larger than `limits.max_event_bytes` reaches kiosks with its keys only and
/// `truncated: true`; smaller ones are whole.
#[tokio::test]
async fn an_event_past_max_event_bytes_is_sent_with_keys_only() {
    let relay = Relay::start(&config("[limits]\nmax_event_bytes = \"2KiB\"")).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    relay
        .change(&hook(
            "screens",
            "create",
            json!(1),
            json!({"text": "x".repeat(4000)}),
        ))
        .await;
    relay
        .change(&hook(
            "screens",
            "create",
            json!(2),
            json!({"text": "short"}),
        ))
        .await;
    let (_, big) = kiosk.next_data().await;
    assert_eq!(big["truncated"], true, "{big}");
    assert_eq!(keys(&big), ["1"]);
    assert!(
        big.get("record").is_none() && big.get("payload").is_none(),
        "{big}"
    );
    let (_, small) = kiosk.next_data().await;
    assert!(small.get("truncated").is_none(), "{small}");
    assert_eq!(small["record"]["text"], "short");
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.contains("relay_events_truncated_total{collection=\"screens\"} 1"),
        "{metrics}"
    );
    relay.stop().await;
}

/// A `create` for a key the relay already holds, with another room value (Directus re-created
/// the item, or the Flow sent a create twice), moves it: the old room is told it left, as for
/// an update, and a fresh snapshot of the old room agrees.
#[tokio::test]
async fn a_create_that_moves_a_known_item_tells_the_old_room_it_left() {
    let relay = Relay::start(&routed()).await;
    let announce = |payload: Value| hook("announcements", "create", json!("a1"), payload);
    relay
        .change(&announce(json!({"id": "a1", "screen": 1})))
        .await;
    let mut one = Kiosk::connect(&relay).await;
    let ack = subscribe_room(&mut one, json!({"screen": 1}), None).await;
    assert_eq!(item_keys(&ack["rooms"][0]), ["a1"]);
    let mut two = Kiosk::connect(&relay).await;
    subscribe_room(&mut two, json!({"screen": 2}), None).await;

    relay
        .change(&announce(json!({"id": "a1", "screen": 2})))
        .await;
    let (name, left) = one.next_data().await;
    assert_eq!(
        (name.as_str(), keys(&left)),
        ("data.delete", vec!["a1".to_owned()]),
        "{left}"
    );
    assert_eq!(left["where"], json!({"screen": "1"}));
    assert_eq!(left["records"][0]["screen"], 2, "{left}");
    let (name, arrived) = two.next_data().await;
    assert_eq!(
        (name.as_str(), keys(&arrived)),
        ("data.create", vec!["a1".to_owned()])
    );
    assert!(seq(&left) < seq(&arrived));

    let mut fresh = Kiosk::connect(&relay).await;
    let ack = subscribe_room(&mut fresh, json!({"screen": 1}), None).await;
    assert_eq!(item_keys(&ack["rooms"][0]), Vec::<String>::new(), "{ack}");
    one.assert_quiet(Duration::from_millis(200)).await;
    relay.stop().await;
}
