//! The relay restarted while changes keep coming: kiosks that resume from the last
//! `{epoch, seq}` they saw, as examples/kiosk.html does, end with every item's final state,
//! and see no event twice and none missing.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiosk_tests::{Kiosk, PATIENCE, Received, Relay, SECRET, config, hook, keys, seq};
use serde_json::{Map, Value, json};

const KIOSKS: usize = 4;
const WRITERS: u64 = 2;
/// Changes accepted in each phase: before the restart, while the kiosks are away, after.
const PER_PHASE: u64 = 60;

type View = BTreeMap<String, Value>;

/// A kiosk page: its view of `screens` and where it left off.
struct Page {
    kiosk: Kiosk,
    view: View,
    epoch: String,
    /// The seq of the next event this page must receive.
    next: u64,
    seen: HashSet<(String, u64)>,
    modes: Vec<String>,
}

impl Page {
    /// Connects like examples/kiosk.html (announcing its subscription) and subscribes.
    async fn connect(relay: &Relay) -> Page {
        let kiosk = Kiosk::connect_with_auth(relay, json!({"collections": ["screens"]})).await;
        let mut page = Page {
            kiosk,
            view: View::new(),
            epoch: String::new(),
            next: 0,
            seen: HashSet::new(),
            modes: Vec::new(),
        };
        page.subscribe().await;
        page
    }

    /// Connects again and resumes from the last `{epoch, seq}` seen, as the page does on
    /// reconnect.
    async fn reconnect(mut self, relay: &Relay) -> Page {
        let kiosk = Kiosk::connect_with_auth(relay, json!({"collections": ["screens"]})).await;
        std::mem::replace(&mut self.kiosk, kiosk).disconnect().await;
        self.subscribe().await;
        self
    }

    async fn subscribe(&mut self) {
        let mut request = json!({"collections": ["screens"]});
        if !self.epoch.is_empty() {
            request["since"] = json!({"epoch": self.epoch, "seq": self.next - 1});
        }
        let ack = self.kiosk.subscribe(request).await;
        assert_eq!(ack["ok"], true, "{ack}");
        let collection = &ack["collections"]["screens"];
        let mode = collection["mode"].as_str().expect("mode").to_owned();
        match mode.as_str() {
            "replay" => assert_eq!(
                ack["epoch"],
                self.epoch.as_str(),
                "replay in the same epoch"
            ),
            "snapshot" => {
                self.view = collection["items"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .map(|i| (i["id"].to_string(), i.clone()))
                    .collect();
                self.epoch = ack["epoch"].as_str().expect("epoch").to_owned();
                self.next = ack["seq"].as_u64().expect("seq") + 1;
            }
            other => panic!("unexpected mode {other}: {ack}"),
        }
        self.modes.push(mode);
    }

    fn apply(&mut self, name: &str, body: &Value) {
        if !name.starts_with("data.") {
            return;
        }
        let seq = seq(body);
        assert!(
            self.seen.insert((self.epoch.clone(), seq)),
            "event {seq} of epoch {} received twice",
            self.epoch
        );
        assert_eq!(seq, self.next, "no gap: {body}");
        self.next += 1;
        match name {
            "data.create" => {
                self.view
                    .insert(keys(body)[0].clone(), body["record"].clone());
            }
            "data.update" => {
                for (k, r) in keys(body)
                    .into_iter()
                    .zip(body["records"].as_array().expect("records"))
                {
                    self.view.insert(k, r.clone());
                }
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }

    /// Applies what has arrived so far, without waiting.
    fn catch_up(&mut self) {
        while let Some(received) = self.kiosk.try_next() {
            if let Received::Event(name, body) = received {
                self.apply(&name, &body);
            }
        }
    }

    /// Applies events until the one with `last`.
    async fn read_until(&mut self, last: u64) {
        while self.next <= last {
            let (name, body) = self.kiosk.next().await;
            self.apply(&name, &body);
        }
    }
}

/// Posts `body` until the relay accepts it. Directus Flows do not retry a failed webhook (the
/// activity-log catch-up covers that in production); the test retries so that every change it
/// made is known to have been accepted, including those made while the relay restarts.
async fn post_until_accepted(http: &reqwest::Client, url: &str, body: &str) {
    let deadline = Instant::now() + PATIENCE * 3;
    loop {
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .header("X-Relay-Secret", SECRET)
            .body(body.to_owned())
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().as_u16() == 202) {
            return;
        }
        assert!(Instant::now() < deadline, "the relay never took {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Merges `payload` into the record of `key`, as the relay does.
fn merge(model: &mut View, key: u64, payload: &Value) {
    let record = model
        .entry(key.to_string())
        .or_insert_with(|| json!({"id": key}));
    let fields: &Map<String, Value> = payload.as_object().expect("object");
    for (k, v) in fields {
        record[k] = v.clone();
    }
}

/// Creates and updates from each writer, until `stop`; returns what the relay accepted.
fn spawn_writer(
    url: String,
    w: u64,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<View> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut model = View::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let key = w * 100_000 + n;
            let payload = json!({"w": w, "n": n});
            post_until_accepted(
                &http,
                &url,
                &hook("screens", "create", json!(key), payload.clone()),
            )
            .await;
            merge(&mut model, key, &payload);
            if n % 3 == 2 {
                let old = w * 100_000 + n / 2;
                let payload = json!({"u": n});
                post_until_accepted(
                    &http,
                    &url,
                    &hook("screens", "update", json!([old]), payload.clone()),
                )
                .await;
                merge(&mut model, old, &payload);
            }
            accepted.fetch_add(1, Ordering::Relaxed);
            n += 1;
        }
        model
    })
}

async fn wait_accepted(accepted: &AtomicU64, at_least: u64) {
    let deadline = Instant::now() + PATIENCE * 3;
    while accepted.load(Ordering::Relaxed) < at_least {
        assert!(Instant::now() < deadline, "writers stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Kiosks resuming across a graceful restart (same port, same state directory) while changes
/// keep coming: the epoch continues, and every kiosk ends with the final state of every item,
/// each event seen once, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiosks_resume_across_a_restart_mid_stream() {
    let toml = config("[limits]\nkiosk_queue = 4096");
    let relay = Relay::start(&toml).await;
    let addr = relay.addr;
    let state_dir = relay.state_dir.clone();
    let url = relay.url("/hooks/directus");

    let mut pages = Vec::new();
    for _ in 0..KIOSKS {
        pages.push(Page::connect(&relay).await);
    }
    let epoch = pages[0].epoch.clone();

    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| spawn_writer(url.clone(), w, accepted.clone(), stop.clone()))
        .collect();

    wait_accepted(&accepted, PER_PHASE).await;
    relay.stop().await;
    let relay = Relay::start_in(&toml, state_dir, &addr.to_string()).await;
    let restarted_at = accepted.load(Ordering::Relaxed);
    wait_accepted(&accepted, restarted_at + PER_PHASE).await;

    // Each page applies what it got before the restart, then reconnects and resumes.
    let mut resumed = Vec::new();
    for mut page in pages {
        page.catch_up();
        resumed.push(page.reconnect(&relay).await);
    }
    let mut pages = resumed;
    for page in &pages {
        assert_eq!(page.epoch, epoch, "a clean restart continues the epoch");
    }
    let reconnected_at = accepted.load(Ordering::Relaxed);
    wait_accepted(&accepted, reconnected_at + PER_PHASE).await;
    stop.store(true, Ordering::Relaxed);
    let mut model = View::new();
    for writer in writers {
        model.extend(writer.await.expect("writer"));
    }

    // The relay holds exactly what was accepted, and every page reaches it.
    let mut last = Kiosk::connect(&relay).await;
    let ack = last.subscribe(json!({"collections": ["screens"]})).await;
    assert_eq!(ack["epoch"], epoch.as_str());
    let final_seq = ack["seq"].as_u64().expect("seq");
    let snapshot: View = ack["collections"]["screens"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| (i["id"].to_string(), i.clone()))
        .collect();
    assert_eq!(snapshot.len(), model.len());
    assert!(
        snapshot == model,
        "the relay's content is every accepted change"
    );
    for (i, page) in pages.iter_mut().enumerate() {
        page.read_until(final_seq).await;
        let missing: Vec<&String> = model
            .keys()
            .filter(|k| !page.view.contains_key(*k))
            .collect();
        assert!(missing.is_empty(), "kiosk {i} never got {missing:?}");
        assert!(
            page.view == model,
            "kiosk {i} ends with every item's final state"
        );
        eprintln!(
            "kiosk {i}: subscribes {:?}, {} events",
            page.modes,
            page.seen.len()
        );
    }
    relay.stop().await;
}

/// A kiosk that was away while changes came in, just before a clean restart, gets exactly the
/// events it missed when it resumes after the restart: a replay from the saved ring, byte for
/// byte what a kiosk that stayed connected received, and the live stream follows on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kiosk_that_missed_events_before_a_restart_gets_them_replayed() {
    let toml = config("");
    let relay = Relay::start(&toml).await;
    let state_dir = relay.state_dir.clone();
    relay
        .change(&hook("screens", "create", json!(1), json!({"n": 1})))
        .await;
    let mut away = Kiosk::connect(&relay).await;
    let ack = away.subscribe(json!({"collections": ["screens"]})).await;
    let epoch = ack["epoch"].as_str().expect("epoch").to_owned();
    let left_at = ack["seq"].as_u64().expect("seq");
    let mut witness = Kiosk::connect(&relay).await;
    witness.subscribe(json!({"collections": ["screens"]})).await;
    away.disconnect().await;

    relay
        .change(&hook("screens", "create", json!(2), json!({"n": 2})))
        .await;
    relay
        .change(&hook("screens", "update", json!([1]), json!({"n": 3})))
        .await;
    relay
        .change(&hook("screens", "delete", json!([2]), json!([2])))
        .await;
    let mut missed = Vec::new();
    for _ in 0..4 {
        missed.push(witness.next_data().await);
    }
    witness.disconnect().await;
    relay.stop().await;

    let relay = Relay::start_in(&toml, state_dir, "127.0.0.1:0").await;
    let mut back = Kiosk::connect(&relay).await;
    let ack = back
        .subscribe(json!({"collections": ["screens"], "since": {"epoch": epoch, "seq": left_at}}))
        .await;
    assert_eq!(ack["epoch"], epoch.as_str(), "{ack}");
    assert_eq!(ack["seq"], left_at + 4, "{ack}");
    assert_eq!(
        ack["collections"]["screens"],
        json!({"mode": "replay", "events": 4}),
        "{ack}"
    );
    let mut replayed = Vec::new();
    for _ in 0..4 {
        replayed.push(back.next_data().await);
    }
    let names: Vec<&str> = replayed.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "data.create",
            "data.update",
            "data.pre-delete",
            "data.delete"
        ]
    );
    let seqs: Vec<u64> = replayed.iter().map(|(_, body)| seq(body)).collect();
    assert_eq!(seqs, [left_at + 1, left_at + 2, left_at + 3, left_at + 4]);
    assert_eq!(replayed, missed, "exactly what a connected kiosk received");

    relay
        .change(&hook("screens", "create", json!(9), json!({})))
        .await;
    let (name, body) = back.next_data().await;
    assert_eq!((name.as_str(), seq(&body)), ("data.create", left_at + 5));
    relay.stop().await;
}
