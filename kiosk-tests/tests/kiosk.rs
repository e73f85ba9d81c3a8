//! The kiosk wire contract, end to end through a real Socket.IO client: webhook bodies in,
//! `data.*` events out, subscribe with snapshot or replay.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kiosk_tests::{Kiosk, PATIENCE, Relay, config, hook, keys, seq};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("../../tests/fixtures/webhook_bodies.jsonl");

#[tokio::test]
async fn a_kiosk_is_told_the_relay_status_on_connect() {
    let relay = Relay::start(&config("")).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    let status = kiosk.expect("relay.status").await;
    assert_eq!(status["upstream"], "live");
    assert_eq!(status["seq"], 0);
    assert_eq!(status["epoch"].as_str().map(str::len), Some(16), "{status}");
    assert!(
        status["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{status}"
    );
    kiosk.disconnect().await;
    relay.stop().await;
}

/// Every webhook body captured from Directus 12.4.0 reaches a kiosk that never subscribed,
/// with the hook extension's event names, string keys, merged records and increasing seq.
#[tokio::test]
async fn every_captured_webhook_body_reaches_a_kiosk() {
    let relay = Relay::start(&config("")).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    kiosk.expect("relay.status").await;

    let mut expected = Vec::new();
    for body in FIXTURE.lines() {
        relay.change(body).await;
        let sent: Value = serde_json::from_str(body).expect("fixture is JSON");
        let action = sent["event"]
            .as_str()
            .and_then(|e| e.rsplit('.').next())
            .expect("event");
        let names: &[&str] = match action {
            "create" => &["data.create"],
            "update" => &["data.update"],
            _ => &["data.pre-delete", "data.delete"],
        };
        for name in names {
            expected.push((name.to_string(), sent.clone()));
        }
    }

    let mut last_seq = 0;
    let mut received = Vec::new();
    for (name, sent) in &expected {
        let (got, body) = kiosk.next_data().await;
        assert_eq!(&got, name, "for {sent}: {body}");
        assert_eq!(body["collection"], sent["collection"]);
        let sent_keys: Vec<String> = match sent.get("key").filter(|k| *k != "undefined") {
            Some(key) => vec![key_text(key)],
            None => sent["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .map(key_text)
                .collect(),
        };
        assert_eq!(keys(&body), sent_keys, "keys are strings: {body}");
        assert_eq!(seq(&body), last_seq + 1, "seq increases by one: {body}");
        last_seq = seq(&body);
        assert!(body["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
        if name != "data.pre-delete" && name != "data.delete" {
            assert_eq!(
                body["payload"], sent["payload"],
                "the submitted change: {body}"
            );
        }
        received.push(body);
    }
    kiosk.assert_quiet(Duration::from_millis(200)).await;

    // Records are the merged state the relay knows.
    let create_24 = &received[0];
    assert_eq!(
        create_24["record"],
        json!({"id": 24, "name": "Hook single", "status": "draft"})
    );
    let update_24 = received
        .iter()
        .find(|b| b["keys"] == json!(["24"]) && b.get("records").is_some())
        .expect("update of 24");
    assert_eq!(
        update_24["records"],
        json!([{"id": 24, "name": "Hook single", "status": "published"}])
    );
    let batch = received
        .iter()
        .find(|b| b["keys"] == json!(["25", "26"]) && b["payload"] == json!({"sort": 5}))
        .expect("batch update of 25 and 26");
    assert_eq!(
        batch["records"],
        json!([
            {"id": 25, "name": "Hook batch 1b", "status": "published", "sort": 5},
            {"id": 26, "name": "Hook batch 2b", "status": "published", "sort": 5}
        ])
    );
    // A delete carries the last known record, in pre-delete and delete alike.
    let deletes: Vec<&Value> = received
        .iter()
        .filter(|b| {
            b["keys"] == json!(["24"]) && b.get("record").is_none() && b.get("payload").is_none()
        })
        .collect();
    assert_eq!(deletes.len(), 2);
    for d in deletes {
        assert_eq!(d["records"], update_24["records"]);
    }
    let uuid_create = received
        .iter()
        .find(|b| b["collection"] == "announcements")
        .expect("announcement create");
    assert_eq!(
        uuid_create["record"]["id"],
        "a1aaf176-4a68-4d78-b9b0-475ac2f28bbb"
    );

    kiosk.disconnect().await;
    relay.stop().await;
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test]
async fn repeated_changes_reach_kiosks_once() {
    let relay = Relay::start(&config("")).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    kiosk.expect("relay.status").await;

    let create = hook("screens", "create", json!(1), json!({"name": "Lobby"}));
    let update = hook("screens", "update", json!([1]), json!({"name": "Hall"}));
    let delete = hook("screens", "delete", json!(["1"]), json!(["1"]));
    for body in [&create, &create, &update, &update, &delete, &delete] {
        relay.change(body).await;
    }
    assert_eq!(kiosk.next().await.0, "data.create");
    assert_eq!(kiosk.next().await.0, "data.update");
    assert_eq!(kiosk.next().await.0, "data.pre-delete");
    assert_eq!(kiosk.next().await.0, "data.delete");
    kiosk.assert_quiet(Duration::from_millis(200)).await;

    // Going back to an earlier state is a change, not a duplicate.
    for status in ["a", "b", "a"] {
        let body = hook("screens", "update", json!([2]), json!({ "status": status }));
        relay.change(&body).await;
    }
    for status in ["a", "b", "a"] {
        let body = kiosk.expect("data.update").await;
        assert_eq!(body["records"][0]["status"], status);
    }

    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.contains(r#"relay_duplicates_dropped_total{collection="screens"} 3"#),
        "{metrics}"
    );
    kiosk.disconnect().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_subscribed_kiosk_gets_a_snapshot_then_only_its_collections() {
    let relay = Relay::start(&config("")).await;
    relay
        .change(&hook(
            "screens",
            "create",
            json!(1),
            json!({"name": "Lobby"}),
        ))
        .await;
    relay
        .change(&hook(
            "screens",
            "create",
            json!(2),
            json!({"name": "Hall"}),
        ))
        .await;
    relay
        .change(&hook(
            "announcements",
            "create",
            json!("a"),
            json!({"title": "Hi"}),
        ))
        .await;

    let mut kiosk = Kiosk::connect(&relay).await;
    kiosk.expect("relay.status").await;
    let ack = kiosk.subscribe(json!({"collections": ["screens"]})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["seq"], 3);
    assert_eq!(ack["collections"]["screens"]["mode"], "snapshot");
    let mut items: Vec<Value> = ack["collections"]["screens"]["items"]
        .as_array()
        .expect("items")
        .clone();
    items.sort_by_key(|i| i["id"].as_i64());
    assert_eq!(
        items,
        vec![
            json!({"id": 1, "name": "Lobby"}),
            json!({"id": 2, "name": "Hall"})
        ]
    );

    relay
        .change(&hook(
            "announcements",
            "update",
            json!(["a"]),
            json!({"title": "Ho"}),
        ))
        .await;
    relay
        .change(&hook(
            "screens",
            "update",
            json!([1]),
            json!({"name": "Lobby 2"}),
        ))
        .await;
    let body = kiosk.expect("data.update").await;
    assert_eq!(
        body["collection"], "screens",
        "announcements are not sent: {body}"
    );
    assert_eq!(seq(&body), 5);
    kiosk.assert_quiet(Duration::from_millis(200)).await;
    kiosk.disconnect().await;
    relay.stop().await;
}

/// A kiosk that reconnects with its last `{epoch, seq}` gets exactly what it missed, in its
/// collections, then the live stream.
#[tokio::test]
async fn a_resuming_kiosk_gets_exactly_the_events_it_missed() {
    let relay = Relay::start(&config("")).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    let status = kiosk.expect("relay.status").await;
    let epoch = status["epoch"].as_str().expect("epoch").to_owned();
    kiosk
        .subscribe(json!({"collections": ["screens", "announcements"]}))
        .await;
    relay
        .change(&hook("screens", "create", json!(1), json!({"name": "A"})))
        .await;
    let last = seq(&kiosk.expect("data.create").await);
    kiosk.disconnect().await;

    // While it is away: screens and announcements change.
    relay
        .change(&hook("screens", "update", json!([1]), json!({"name": "B"})))
        .await;
    relay
        .change(&hook(
            "announcements",
            "create",
            json!("x"),
            json!({"title": "T"}),
        ))
        .await;
    relay
        .change(&hook("screens", "create", json!(2), json!({"name": "C"})))
        .await;
    relay
        .change(&hook("screens", "delete", json!([1]), json!([1])))
        .await;

    let mut kiosk = Kiosk::connect(&relay).await;
    kiosk.expect("relay.status").await;
    let ack = kiosk
        .subscribe(json!({"collections": ["screens"], "since": {"epoch": epoch, "seq": last}}))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        ack["collections"]["screens"],
        json!({"mode": "replay", "events": 4})
    );
    let mut replayed = Vec::new();
    for _ in 0..4 {
        let (name, body) = kiosk.next().await;
        replayed.push((name, seq(&body)));
    }
    assert_eq!(
        replayed,
        vec![
            ("data.update".to_string(), 2),
            ("data.create".to_string(), 4),
            ("data.pre-delete".to_string(), 5),
            ("data.delete".to_string(), 6),
        ]
    );
    relay
        .change(&hook("screens", "update", json!([2]), json!({"name": "D"})))
        .await;
    assert_eq!(seq(&kiosk.expect("data.update").await), 7);
    kiosk.assert_quiet(Duration::from_millis(200)).await;
    kiosk.disconnect().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_resume_that_cannot_be_replayed_gets_a_snapshot() {
    let relay = Relay::start(&config("[limits]\nreplay_events = 3")).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    let epoch = kiosk.expect("relay.status").await["epoch"].clone();
    for n in 1..=5 {
        relay
            .change(&hook("screens", "create", json!(n), json!({"n": n})))
            .await;
    }
    let cases = [
        (json!({"epoch": "another-epoch", "seq": 5}), "another epoch"),
        (
            json!({"epoch": epoch, "seq": 1}),
            "events 2 and 3 were dropped from the ring",
        ),
        (json!({"epoch": epoch, "seq": 99}), "a seq from the future"),
    ];
    for (since, why) in cases {
        let ack = kiosk
            .subscribe(json!({"collections": ["screens"], "since": since}))
            .await;
        assert_eq!(
            ack["collections"]["screens"]["mode"], "snapshot",
            "{why}: {ack}"
        );
        assert_eq!(
            ack["collections"]["screens"]["items"]
                .as_array()
                .map(Vec::len),
            Some(5),
            "{why}"
        );
    }
    let ack = kiosk
        .subscribe(json!({"collections": ["screens"], "since": {"epoch": epoch, "seq": 2}}))
        .await;
    assert_eq!(
        ack["collections"]["screens"],
        json!({"mode": "replay", "events": 3})
    );
    kiosk.disconnect().await;
    relay.stop().await;
}

#[tokio::test]
async fn bad_subscribe_requests_are_refused_with_a_reason() {
    let relay = Relay::start(&config("")).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    let cases = [
        (
            json!({"collections": ["nope"]}),
            "collection \"nope\" is not relayed",
        ),
        (json!({"collections": []}), "needs \"collections\""),
        (json!({"collection": "screens"}), "subscribe expects"),
        (json!("screens"), "subscribe expects"),
        (
            json!({"collections": ["screens"], "since": {"seq": "x"}}),
            "subscribe expects",
        ),
    ];
    for (request, words) in cases {
        let ack = kiosk.subscribe(request.clone()).await;
        assert_eq!(ack["ok"], false, "{request}: {ack}");
        let error = ack["error"].as_str().expect("error text");
        assert!(error.contains(words), "{request}: {error}");
    }
    // Still connected and served.
    relay
        .change(&hook("screens", "create", json!(1), json!({})))
        .await;
    assert_eq!(kiosk.next_data().await.0, "data.create");
    kiosk.disconnect().await;
    relay.stop().await;
}

/// While changes pour in, kiosks subscribe with a snapshot or a resume: applying what each
/// receives after its ack to what the ack gave it ends in exactly the relay's final state,
/// and resumed streams have no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_changes_arrive_loses_and_doubles_nothing() {
    const WRITERS: u64 = 4;
    const MIN_PER_WRITER: u64 = 30;
    const MAX_PER_WRITER: u64 = 1000;
    // A queue large enough that the resume from seq 0 is always replayed.
    let relay = Arc::new(Relay::start(&config("[limits]\nkiosk_queue = 4096")).await);
    let mut early = Kiosk::connect(&relay).await;
    let epoch = early.expect("relay.status").await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    early.subscribe(json!({"collections": ["screens"]})).await;

    // Writers keep going until both kiosks have subscribed, so the subscribes happen mid-stream.
    let subscribed = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let relay = relay.clone();
        let subscribed = subscribed.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while n < MIN_PER_WRITER || (!subscribed.load(Ordering::Relaxed) && n < MAX_PER_WRITER)
            {
                let key = w * 1000 + n % 7;
                let body = match n % 3 {
                    0 => hook("screens", "create", json!(key), json!({"n": n, "w": w})),
                    1 => hook("screens", "update", json!([key]), json!({"n": n})),
                    _ => hook("screens", "delete", json!([key]), json!([key])),
                };
                relay.change(&body).await;
                n += 1;
            }
        }));
    }

    // Subscribe with a snapshot and with a resume while the writers run.
    for _ in 0..10 {
        early.next_data().await;
    }
    let mut snap = Kiosk::connect(&relay).await;
    let snap_ack = snap.subscribe(json!({"collections": ["screens"]})).await;
    let mut resumed = Kiosk::connect(&relay).await;
    let resume_ack = resumed
        .subscribe(json!({"collections": ["screens"], "since": {"epoch": epoch, "seq": 0}}))
        .await;
    subscribed.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let mut last = Kiosk::connect(&relay).await;
    let final_ack = last.subscribe(json!({"collections": ["screens"]})).await;
    let final_seq = final_ack["seq"].as_u64().expect("seq");
    let final_state = items_by_key(&final_ack["collections"]["screens"]["items"]);
    let snap_seq = snap_ack["seq"].as_u64().expect("seq");
    assert!(
        snap_seq >= 10 && snap_seq + 20 < final_seq,
        "the snapshot was taken mid-stream: {snap_seq} of {final_seq}"
    );

    // The snapshot kiosk: snapshot + events after it = final state.
    let mut state = items_by_key(&snap_ack["collections"]["screens"]["items"]);
    let mut next_seq = snap_ack["seq"].as_u64().expect("seq") + 1;
    drain_until(&mut snap, final_seq, |name, body| {
        assert_eq!(seq(body), next_seq, "no gap, no duplicate after a snapshot");
        next_seq += 1;
        apply(&mut state, name, body);
    })
    .await;
    assert_eq!(state, final_state);

    // The resumed kiosk: every event from 1, in order, once.
    assert_eq!(
        resume_ack["collections"]["screens"]["mode"], "replay",
        "{resume_ack}"
    );
    let mut state = BTreeMap::new();
    let mut next_seq = 1;
    drain_until(&mut resumed, final_seq, |name, body| {
        assert_eq!(seq(body), next_seq, "no gap, no duplicate after a resume");
        next_seq += 1;
        apply(&mut state, name, body);
    })
    .await;
    assert_eq!(state, final_state);
    early.disconnect().await;
    match Arc::try_unwrap(relay) {
        Ok(relay) => relay.stop().await,
        Err(_) => panic!("relay still shared"),
    }
}

fn items_by_key(items: &Value) -> BTreeMap<String, Value> {
    items
        .as_array()
        .expect("items")
        .iter()
        .map(|i| (i["id"].to_string(), i.clone()))
        .collect()
}

fn apply(state: &mut BTreeMap<String, Value>, name: &str, body: &Value) {
    match name {
        "data.create" => {
            state.insert(body["record"]["id"].to_string(), body["record"].clone());
        }
        "data.update" => {
            for r in body["records"].as_array().expect("records") {
                state.insert(r["id"].to_string(), r.clone());
            }
        }
        "data.delete" => {
            for key in keys(body) {
                state.remove(&key);
            }
        }
        _ => {}
    }
}

async fn drain_until(kiosk: &mut Kiosk, final_seq: u64, mut each: impl FnMut(&str, &Value)) {
    loop {
        let (name, body) = kiosk.next_data().await;
        each(&name, &body);
        if seq(&body) == final_seq {
            return;
        }
    }
}

/// On shutdown the relay closes each kiosk's transport (not a Socket.IO disconnect, after
/// which browser clients would not reconnect by themselves), and its run ends without error.
#[tokio::test]
async fn shutdown_closes_kiosk_transports_so_kiosks_reconnect() {
    let relay = Relay::start(&config("")).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    kiosk.expect("relay.status").await;
    relay.stop().await;
    kiosk.assert_quiet(Duration::from_millis(500)).await;
}

/// A kiosk that says in its handshake which collections it will subscribe to gets nothing
/// before its subscribe is answered, so a resume never repeats what it already received.
#[tokio::test]
async fn a_kiosk_announcing_its_subscription_gets_nothing_before_the_ack() {
    let relay = Relay::start(&config("")).await;
    let mut first = Kiosk::connect(&relay).await;
    let epoch = first.expect("relay.status").await["epoch"].clone();
    relay
        .change(&hook("screens", "create", json!(1), json!({"n": 1})))
        .await;
    first.expect("data.create").await;

    let mut kiosk = Kiosk::connect_with_auth(&relay, json!({"collections": ["screens"]})).await;
    relay
        .change(&hook("screens", "create", json!(2), json!({"n": 2})))
        .await;
    relay
        .change(&hook("announcements", "create", json!("a"), json!({})))
        .await;
    // The first kiosk has both, so the relay has emitted them.
    first.expect("data.create").await;
    first.expect("data.create").await;
    let ack = kiosk
        .subscribe(json!({"collections": ["screens"], "since": {"epoch": epoch, "seq": 1}}))
        .await;
    assert_eq!(
        ack["collections"]["screens"],
        json!({"mode": "replay", "events": 1})
    );
    let before: Vec<String> = kiosk
        .before_ack
        .iter()
        .map(|r| match r {
            kiosk_tests::Received::Event(name, _) => name.clone(),
            kiosk_tests::Received::Ack(_) => "ack".into(),
        })
        .collect();
    assert_eq!(
        before,
        vec!["relay.status"],
        "nothing but the status before the ack"
    );
    assert_eq!(seq(&kiosk.expect("data.create").await), 2);
    kiosk.assert_quiet(Duration::from_millis(200)).await;
    relay.stop().await;
}

/// A restarted relay (same state directory) keeps its epoch, seq, content and replay ring: a
/// kiosk that was up to date resumes with nothing to replay, one that was behind gets the
/// events it missed, and one from before the ring (or without `since`) the snapshot.
#[tokio::test]
async fn a_restarted_relay_keeps_its_epoch_seq_and_content() {
    let relay = Relay::start(&config("")).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    let epoch = kiosk.expect("relay.status").await["epoch"].clone();
    relay
        .change(&hook("screens", "create", json!(1), json!({"name": "A"})))
        .await;
    relay
        .change(&hook("screens", "create", json!(2), json!({"name": "B"})))
        .await;
    relay
        .change(&hook("screens", "delete", json!([2]), json!([2])))
        .await;
    for _ in 0..4 {
        kiosk.next_data().await;
    }
    kiosk.disconnect().await;
    let state_dir = relay.state_dir.clone();
    relay.stop().await;

    let relay = Relay::start_in(&config(""), state_dir, "127.0.0.1:0").await;
    let mut kiosk = Kiosk::connect(&relay).await;
    let status = kiosk.expect("relay.status").await;
    assert_eq!(status["epoch"], epoch);
    assert_eq!(status["seq"], 4);
    let ack = kiosk
        .subscribe(json!({"collections": ["screens"], "since": {"epoch": epoch, "seq": 4}}))
        .await;
    assert_eq!(
        ack["collections"]["screens"],
        json!({"mode": "replay", "events": 0})
    );
    let ack = kiosk
        .subscribe(json!({"collections": ["screens"], "since": {"epoch": epoch, "seq": 1}}))
        .await;
    assert_eq!(
        ack["collections"]["screens"],
        json!({"mode": "replay", "events": 3})
    );
    for (name, expected) in [
        ("data.create", 2),
        ("data.pre-delete", 3),
        ("data.delete", 4),
    ] {
        assert_eq!(seq(&kiosk.expect(name).await), expected);
    }
    let ack = kiosk.subscribe(json!({"collections": ["screens"]})).await;
    assert_eq!(
        ack["collections"]["screens"],
        json!({"mode": "snapshot", "items": [{"id": 1, "name": "A"}]})
    );
    relay
        .change(&hook(
            "screens",
            "update",
            json!([1]),
            json!({"name": "A2"}),
        ))
        .await;
    assert_eq!(seq(&kiosk.expect("data.update").await), 5);
    relay.stop().await;
}

/// Past `limits.max_clients`, a kiosk is refused with a `connect_error` that says why; when a
/// kiosk leaves, there is room again.
#[tokio::test]
async fn kiosks_past_max_clients_are_refused_with_a_reason() {
    let relay = Relay::start(&config("[limits]\nmax_clients = 2")).await;
    let mut first = Kiosk::connect(&relay).await;
    first.expect("relay.status").await;
    let mut second = Kiosk::connect(&relay).await;
    second.expect("relay.status").await;
    let mut third = Kiosk::connect(&relay).await;
    let error = third.expect(kiosk_tests::ERROR).await;
    assert!(
        error.to_string().contains("limits.max_clients"),
        "the refusal says why: {error}"
    );
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.contains("relay_kiosks_refused_total{reason=\"full\"} 1"),
        "{metrics}"
    );
    third.disconnect().await;
    first.disconnect().await;
    // The relay frees the place when it has handled the disconnect: wait until it counts one
    // kiosk before the next comes.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, metrics) = relay.get("/metrics").await;
        if metrics.lines().any(|l| l == "relay_kiosks_connected 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never counted the first kiosk gone: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = Kiosk::connect(&relay).await;
    again.expect("relay.status").await;
    relay.stop().await;
}
