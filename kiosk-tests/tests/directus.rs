//! The relay following a Directus (an in-process fake over TLS with a test CA) in each mode:
//! start-up load, live changes, lost webhooks repaired, outages caught up exactly once,
//! out-of-order activity ids, collections without activity, TLS and token problems.

use std::collections::BTreeMap;
use std::time::Duration;

use kiosk_tests::fake_directus::{ADMIN_TOKEN, FakeDirectus, TOKEN, TestCa};
use kiosk_tests::{Kiosk, Relay, SECRET, hook, keys, seq};
use serde_json::{Value, json};

struct Setup {
    fake: FakeDirectus,
    relay: Relay,
    config: String,
    _dir: tempfile::TempDir,
}

async fn setup(mode: &str, extra: &str, before: impl FnOnce(&FakeDirectus)) -> Setup {
    setup_reconciling(mode, "500ms", extra, before).await
}

async fn setup_reconciling(
    mode: &str,
    reconcile_interval: &str,
    extra: &str,
    before: impl FnOnce(&FakeDirectus),
) -> Setup {
    let ca = TestCa::new();
    let fake = FakeDirectus::start(&ca, &[("screens", "id"), ("channels", "slug")]).await;
    fake.create(
        "screens",
        json!({"id": 1, "name": "Lobby", "status": "published"}),
    );
    fake.create("channels", json!({"slug": "news", "label": "News"}));
    before(&fake);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = ca.write_ca(dir.path());
    let config = format!(
        r#"
clients.allow_anonymous = true
[webhook]
secret = "{SECRET}"
[directus]
url = "{url}"
token = "{TOKEN}"
ca_file = "{ca}"
mode = "{mode}"
poll_interval = "100ms"
reconcile_interval = "{reconcile_interval}"
request_timeout = "2s"
{extra}
[[collections]]
name = "screens"
[[collections]]
name = "channels"
key_field = "slug"
"#,
        url = fake.url(),
        ca = ca_file.display(),
    );
    let relay = Relay::start(&config).await;
    Setup {
        fake,
        relay,
        config,
        _dir: dir,
    }
}

/// Reads until `relay.status` says `upstream`; returns the status.
async fn wait_status(kiosk: &mut Kiosk, upstream: &str) -> Value {
    loop {
        let (name, body) = kiosk.next().await;
        if name == "relay.status" && body["upstream"] == upstream {
            return body;
        }
    }
}

/// The first `relay.status` that is not `catching-up`: a relay that cannot reach Directus says
/// catching-up during each attempt to reconnect, then offline again.
async fn status_after_attempt(kiosk: &mut Kiosk) -> Value {
    loop {
        let status = kiosk.expect("relay.status").await;
        if status["upstream"] != "catching-up" {
            return status;
        }
    }
}

/// The value of the metric line that starts with `name`, from `/metrics`.
async fn metric(relay: &Relay, name: &str) -> u64 {
    let (_, metrics) = relay.get("/metrics").await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// Connects a kiosk once the relay is live and subscribes it to both collections.
async fn live_kiosk(relay: &Relay) -> (Kiosk, Value) {
    let mut kiosk = Kiosk::connect(relay).await;
    wait_status(&mut kiosk, "live").await;
    let ack = kiosk
        .subscribe(json!({"collections": ["screens", "channels"]}))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    (kiosk, ack)
}

fn snapshot(ack: &Value, collection: &str, key_field: &str) -> BTreeMap<String, Value> {
    ack["collections"][collection]["items"]
        .as_array()
        .expect("snapshot items")
        .iter()
        .map(|i| (key_text(&i[key_field]), i.clone()))
        .collect()
}

fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Applies an event to a kiosk's view.
fn apply(view: &mut BTreeMap<String, Value>, name: &str, body: &Value) {
    match name {
        "data.create" => {
            view.insert(keys(body)[0].clone(), body["record"].clone());
        }
        "data.update" => {
            for (k, r) in keys(body)
                .into_iter()
                .zip(body["records"].as_array().expect("records"))
            {
                view.insert(k, r.clone());
            }
        }
        "data.delete" => {
            for k in keys(body) {
                view.remove(&k);
            }
        }
        _ => {}
    }
}

async fn check_live_changes(mode: &str) {
    let s = setup(mode, "", |_| {}).await;
    let (mut kiosk, ack) = live_kiosk(&s.relay).await;
    assert_eq!(
        snapshot(&ack, "screens", "id")["1"],
        json!({"id": 1, "name": "Lobby", "status": "published"}),
        "{mode}: the start-up load fills the mirror"
    );
    assert_eq!(snapshot(&ack, "channels", "slug").len(), 1);

    s.fake.create(
        "screens",
        json!({"id": 2, "name": "Hall", "status": "draft"}),
    );
    let body = kiosk.expect("data.create").await;
    assert_eq!(
        body["record"],
        json!({"id": 2, "name": "Hall", "status": "draft"}),
        "{mode}"
    );
    assert_eq!(keys(&body), vec!["2"]);

    s.fake
        .update("screens", "2", json!({"status": "published"}));
    let body = kiosk.expect("data.update").await;
    assert_eq!(body["records"][0]["status"], "published", "{mode}");

    s.fake
        .update("channels", "news", json!({"label": "World news"}));
    let body = kiosk.expect("data.update").await;
    assert_eq!(keys(&body), vec!["news"]);

    s.fake.delete("screens", "2");
    let pre = kiosk.expect("data.pre-delete").await;
    let del = kiosk.expect("data.delete").await;
    assert_eq!(keys(&del), vec!["2"]);
    assert_eq!(pre["records"], del["records"]);
    assert_eq!(seq(&del), seq(&pre) + 1);
    // Push and the cursor both saw these changes; kiosks saw each once.
    kiosk.assert_quiet(Duration::from_millis(1200)).await;
    s.relay.stop().await;
    s.fake.stop();
}

#[tokio::test]
async fn websocket_mode_relays_each_change_once() {
    check_live_changes("websocket").await;
}

#[tokio::test]
async fn poll_mode_relays_each_change_once() {
    check_live_changes("poll").await;
}

/// A Flow call that never arrives is repaired by the cursor; with Directus away, webhooks
/// still get through as sent.
#[tokio::test]
async fn webhook_mode_repairs_lost_calls_and_passes_webhooks_while_down() {
    let s = setup("webhook", "", |_| {}).await;
    let (mut kiosk, _) = live_kiosk(&s.relay).await;

    // Lost: Directus wrote it, the Flow never called.
    s.fake.create(
        "screens",
        json!({"id": 5, "name": "Lost", "status": "draft"}),
    );
    let body = kiosk.expect("data.create").await;
    assert_eq!(body["record"]["name"], "Lost");
    kiosk.assert_quiet(Duration::from_millis(1200)).await;

    // Directus unreachable: the webhook's change still reaches kiosks, merged as sent. (The
    // relay keeps trying to reconnect, so a `relay.status` may come first.)
    s.fake.down();
    wait_status(&mut kiosk, "offline").await;
    s.relay
        .change(&hook(
            "screens",
            "update",
            json!(["5"]),
            json!({"name": "While down"}),
        ))
        .await;
    let (name, body) = kiosk.next_data().await;
    assert_eq!(name, "data.update", "{body}");
    assert_eq!(
        body["records"],
        json!([{"id": 5, "name": "While down", "status": "draft"}])
    );
    s.relay.stop().await;
    s.fake.stop();
}

/// A webhook's item is re-read for its full record. The reconcile timer never fires here: a
/// reconcile between Directus's write and the webhook would relay the item first, from the
/// activity log, and the webhook's path would not be the one checked.
#[tokio::test]
async fn webhook_mode_completes_records() {
    let s = setup_reconciling("webhook", "1h", "", |_| {}).await;
    let (mut kiosk, _) = live_kiosk(&s.relay).await;

    // Delivered: the webhook carries only the submitted fields; the relay re-reads the item
    // and kiosks get its full record at once, with the submitted change as payload.
    s.fake.create(
        "screens",
        json!({"id": 6, "name": "Hooked", "status": "draft"}),
    );
    s.relay
        .change(&hook(
            "screens",
            "create",
            json!(6),
            json!({"name": "Hooked"}),
        ))
        .await;
    let body = kiosk.expect("data.create").await;
    assert_eq!(
        body["record"],
        json!({"id": 6, "name": "Hooked", "status": "draft"})
    );
    assert_eq!(body["payload"], json!({"name": "Hooked"}));
    // The cursor runs after each webhook and finds the same create: kiosks get it once.
    kiosk.assert_quiet(Duration::from_millis(1200)).await;
    s.relay.stop().await;
    s.fake.stop();
}

/// Directus goes away: kiosks hear `offline` and keep their content; changes made meanwhile
/// arrive once it is back, each exactly once, and the kiosk's view equals Directus's items.
#[tokio::test]
async fn an_outage_is_caught_up_exactly_once() {
    for mode in ["websocket", "poll"] {
        let s = setup(mode, "", |_| {}).await;
        let (mut kiosk, ack) = live_kiosk(&s.relay).await;
        let mut view = snapshot(&ack, "screens", "id");

        // Each failed reconnect attempt during the outage goes offline again and counts:
        // the counter rises, by how much depends on how many attempts fit in.
        let outages_before = metric(&s.relay, "relay_upstream_outages_total").await;
        s.fake.down();
        wait_status(&mut kiosk, "offline").await;
        s.fake.create(
            "screens",
            json!({"id": 7, "name": "While away", "status": "draft"}),
        );
        s.fake
            .update("screens", "1", json!({"name": "Lobby (renamed)"}));
        s.fake.update("screens", "1", json!({"status": "draft"}));
        s.fake.delete("screens", "7");
        s.fake.create(
            "screens",
            json!({"id": 8, "name": "Stays", "status": "draft"}),
        );
        s.fake.up();

        let mut events = Vec::new();
        loop {
            let (name, body) = kiosk.next().await;
            if name == "relay.status" {
                if body["upstream"] == "live" {
                    break;
                }
                continue;
            }
            apply(&mut view, &name, &body);
            events.push((name, keys(&body)));
        }
        // Everything is in before the relay says live again.
        kiosk.assert_quiet(Duration::from_millis(800)).await;
        let outages = metric(&s.relay, "relay_upstream_outages_total").await;
        assert!(
            outages > outages_before,
            "{mode}: relay_upstream_outages_total went from {outages_before} to {outages}"
        );
        let (_, metrics) = s.relay.get("/metrics").await;
        assert!(
            metrics.contains(r#"relay_upstream{state="live"} 1"#),
            "{mode}: {metrics}"
        );
        assert!(
            !metrics.contains("relay_activity_cursor 0\n"),
            "{mode}: {metrics}"
        );
        let expected: BTreeMap<String, Value> = s.fake.items("screens");
        assert_eq!(view, expected, "{mode}: the kiosk's view is Directus's");
        let updates_of_1 = events
            .iter()
            .filter(|(n, k)| n == "data.update" && k.contains(&"1".to_string()))
            .count();
        assert_eq!(
            updates_of_1, 1,
            "{mode}: one update for item 1, with its final state: {events:?}"
        );
        assert!(
            !events.iter().any(|(_, k)| k.contains(&"7".to_string())),
            "{mode}: item 7 came and went while away; kiosks need not hear of it: {events:?}"
        );
        s.relay.stop().await;
        s.fake.stop();
    }
}

/// An activity id that becomes visible after a higher one was read is still relayed.
#[tokio::test]
async fn ids_committed_out_of_order_are_not_skipped() {
    let s = setup("poll", "", |_| {}).await;
    let (mut kiosk, _) = live_kiosk(&s.relay).await;
    let late = s
        .fake
        .create_uncommitted("screens", json!({"id": 20, "name": "Late"}));
    s.fake.create("screens", json!({"id": 21, "name": "Early"}));
    let body = kiosk.expect("data.create").await;
    assert_eq!(keys(&body), vec!["21"]);
    kiosk.assert_quiet(Duration::from_millis(300)).await;
    s.fake.commit_late(late);
    let body = kiosk.expect("data.create").await;
    assert_eq!(keys(&body), vec!["20"]);
    s.relay.stop().await;
    s.fake.stop();
}

/// A collection whose activity is off is reloaded whole at every reconcile: its changes,
/// deletes included, still reach kiosks.
#[tokio::test]
async fn a_collection_without_activity_is_reconciled() {
    let s = setup("poll", "", |fake| fake.activity_off("channels")).await;
    let (mut kiosk, ack) = live_kiosk(&s.relay).await;
    assert_eq!(snapshot(&ack, "channels", "slug").len(), 1);
    s.fake
        .create("channels", json!({"slug": "sport", "label": "Sport"}));
    s.fake.delete("channels", "news");
    let (mut created, mut deleted) = (false, false);
    while !(created && deleted) {
        let (name, body) = kiosk.next_data().await;
        match name.as_str() {
            "data.create" => {
                assert_eq!(keys(&body), vec!["sport"]);
                created = true;
            }
            "data.pre-delete" => assert_eq!(keys(&body), vec!["news"]),
            "data.delete" => {
                assert_eq!(keys(&body), vec!["news"]);
                deleted = true;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    kiosk.assert_quiet(Duration::from_millis(800)).await;
    s.relay.stop().await;
    s.fake.stop();
}

/// A Directus whose certificate the relay cannot verify is never trusted: the relay stays
/// offline (and keeps serving kiosks).
#[tokio::test]
async fn an_unverifiable_certificate_keeps_the_relay_offline() {
    let ca = TestCa::new();
    let fake = FakeDirectus::start(&ca, &[("screens", "id")]).await;
    let config = format!(
        "clients.allow_anonymous = true\n[directus]\nurl = \"{}\"\ntoken = \"{TOKEN}\"\nmode = \"poll\"\n[[collections]]\nname = \"screens\"",
        fake.url()
    );
    let relay = Relay::start(&config).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    wait_status(&mut kiosk, "offline").await;
    assert!(
        !fake.requests().iter().any(|r| r.starts_with("/activity")),
        "no request got through: {:?}",
        fake.requests()
    );
    relay.stop().await;
    fake.stop();
}

/// A token Directus refuses: offline, and no data.
#[tokio::test]
async fn a_refused_token_keeps_the_relay_offline() {
    let ca = TestCa::new();
    let fake = FakeDirectus::start(&ca, &[("screens", "id")]).await;
    fake.create("screens", json!({"id": 1}));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "clients.allow_anonymous = true\n[directus]\nurl = \"{}\"\ntoken = \"wrong-token\"\nca_file = \"{}\"\n[[collections]]\nname = \"screens\"",
        fake.url(),
        ca.write_ca(dir.path()).display()
    );
    let relay = Relay::start(&config).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    wait_status(&mut kiosk, "offline").await;
    let ack = kiosk.subscribe(json!({"collections": ["screens"]})).await;
    assert_eq!(ack["collections"]["screens"]["items"], json!([]), "{ack}");
    relay.stop().await;
    fake.stop();
}

/// `TOKEN_EXPIRED` on the socket: the relay authenticates again and events keep coming.
#[tokio::test]
async fn an_expired_socket_token_is_renewed() {
    let s = setup("websocket", "", |_| {}).await;
    let (mut kiosk, _) = live_kiosk(&s.relay).await;
    s.fake.expire_tokens();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.fake
        .create("screens", json!({"id": 30, "name": "After expiry"}));
    let body = kiosk.expect("data.create").await;
    assert_eq!(keys(&body), vec!["30"]);
    s.relay.stop().await;
    s.fake.stop();
}

/// `directus-relay check` against a healthy Directus, then against the same one with a wrong
/// token and with activity off for a collection.
#[tokio::test]
async fn check_reports_each_problem_with_its_fix() {
    let ca = TestCa::new();
    let fake = FakeDirectus::start(&ca, &[("screens", "id"), ("channels", "slug")]).await;
    fake.activity_off("channels");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = ca.write_ca(dir.path());
    let config = |token: &str| {
        directus_relay::Config::from_toml(&format!(
            "clients.allow_anonymous = true\n[directus]\nurl = \"{}\"\ntoken = \"{token}\"\nca_file = \"{}\"\n[[collections]]\nname = \"screens\"\n[[collections]]\nname = \"channels\"\nkey_field = \"slug\"",
            fake.url(),
            ca_file.display()
        ))
        .expect("valid")
    };
    let lines = directus_relay::upstream::check::run(&config(TOKEN)).await;
    let report = directus_relay::upstream::check::render(None, &lines);
    let failed: Vec<&str> = lines
        .iter()
        .filter(|l| !l.ok)
        .map(|l| l.what.as_str())
        .collect();
    assert_eq!(failed, vec!["activity of channels"], "{report}");
    assert!(report.contains("Activity Tracking"), "{report}");
    for what in [
        "reachable",
        "TLS",
        "token",
        "read screens",
        "read channels",
        "activity",
        "websocket",
    ] {
        assert!(
            lines.iter().any(|l| l.what == what && l.ok),
            "{what}: {report}"
        );
    }

    let lines = directus_relay::upstream::check::run(&config("wrong")).await;
    let report = directus_relay::upstream::check::render(None, &lines);
    let token = lines
        .iter()
        .find(|l| l.what == "token")
        .expect("token line");
    assert!(!token.ok, "{report}");
    assert!(
        token.detail.contains("401") && token.detail.contains("directus.token"),
        "{report}"
    );
    fake.stop();
}

/// The relay restarts while Directus is unreachable: kiosks get the last known content at
/// once, marked offline with its time; when Directus is back the relay follows the activity
/// log from its saved cursor (no reload) and kiosks get exactly what changed meanwhile.
#[tokio::test]
async fn a_restart_without_uplink_serves_the_saved_content_then_catches_up() {
    let s = setup("poll", "", |_| {}).await;
    let (mut kiosk, _) = live_kiosk(&s.relay).await;
    s.fake.create("screens", json!({"id": 2, "name": "Hall"}));
    kiosk.expect("data.create").await;
    kiosk.disconnect().await;
    let state_dir = s.relay.state_dir.clone();
    s.relay.stop().await;

    // While the relay is down: changes, then Directus goes away too.
    s.fake.create("screens", json!({"id": 3, "name": "New"}));
    s.fake
        .update("screens", "1", json!({"name": "Lobby (renamed)"}));
    s.fake.down();
    let saved_at = saved_time(&state_dir);
    let relay = Relay::start_in(&s.config, state_dir.clone(), "127.0.0.1:0").await;
    let mut kiosk = Kiosk::connect(&relay).await;
    let status = status_after_attempt(&mut kiosk).await;
    assert_eq!(status["upstream"], "offline", "{status}");
    assert_eq!(
        status["since"], saved_at,
        "the content's time, not the start's"
    );

    // Restarting again while still offline keeps telling the content's real time.
    kiosk.disconnect().await;
    relay.stop().await;
    assert_eq!(saved_time(&state_dir), saved_at);
    let relay = Relay::start_in(&s.config, state_dir, "127.0.0.1:0").await;
    let mut kiosk = Kiosk::connect(&relay).await;
    let status = status_after_attempt(&mut kiosk).await;
    assert_eq!(status["upstream"], "offline", "{status}");
    assert_eq!(status["since"], saved_at, "{status}");
    let ack = kiosk
        .subscribe(json!({"collections": ["screens", "channels"]}))
        .await;
    let mut view = snapshot(&ack, "screens", "id");
    assert_eq!(
        view.keys().cloned().collect::<Vec<_>>(),
        vec!["1", "2"],
        "the saved content, served without Directus: {ack}"
    );
    assert_eq!(view["1"]["name"], "Lobby");

    let requests_before = s.fake.requests().len();
    s.fake.up();
    loop {
        let (name, body) = kiosk.next().await;
        if name == "relay.status" {
            if body["upstream"] == "live" {
                break;
            }
            continue;
        }
        apply(&mut view, &name, &body);
    }
    kiosk.assert_quiet(Duration::from_millis(600)).await;
    assert_eq!(view, s.fake.items("screens"));
    let reloads: Vec<String> = s.fake.requests()[requests_before..]
        .iter()
        .filter(|r| r.starts_with("/items/screens") && r.contains("sort="))
        .cloned()
        .collect();
    assert!(
        reloads.is_empty(),
        "resumed from the cursor, no reload: {reloads:?}"
    );
    relay.stop().await;
    s.fake.stop();
}

/// The time the state file says its content is from.
fn saved_time(state_dir: &tempfile::TempDir) -> Value {
    let saved = directus_relay::hub::state_file::load(state_dir.path()).expect("a saved state");
    Value::String(saved.saved_at)
}

/// Without read on directus_activity the relay says so and reloads collections instead: changes,
/// deletes included, still arrive (at the next reconcile).
#[tokio::test]
async fn a_token_without_the_activity_log_falls_back_to_reloads() {
    let s = setup("poll", "", |fake| fake.forbid_activity()).await;
    let (mut kiosk, ack) = live_kiosk(&s.relay).await;
    assert_eq!(snapshot(&ack, "screens", "id").len(), 1);
    s.fake
        .create("screens", json!({"id": 40, "name": "Reloaded"}));
    s.fake.delete("screens", "1");
    let mut view = snapshot(&ack, "screens", "id");
    while view != s.fake.items("screens") {
        let (name, body) = kiosk.next_data().await;
        apply(&mut view, &name, &body);
    }
    s.relay.stop().await;
    s.fake.stop();
}

/// Email and password instead of a static token: the relay logs in and follows Directus.
#[tokio::test]
async fn email_and_password_log_in() {
    let ca = TestCa::new();
    let fake = FakeDirectus::start(&ca, &[("screens", "id")]).await;
    fake.create("screens", json!({"id": 1, "name": "Lobby"}));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "clients.allow_anonymous = true\n[directus]\nurl = \"{}\"\nemail = \"relay@example.com\"\npassword = \"a-password\"\nca_file = \"{}\"\nmode = \"websocket\"\n[[collections]]\nname = \"screens\"",
        fake.url(),
        ca.write_ca(dir.path()).display()
    );
    let relay = Relay::start(&config).await;
    let mut kiosk = Kiosk::connect(&relay).await;
    wait_status(&mut kiosk, "live").await;
    let ack = kiosk.subscribe(json!({"collections": ["screens"]})).await;
    assert_eq!(snapshot(&ack, "screens", "id").len(), 1, "{ack}");
    fake.create("screens", json!({"id": 2, "name": "Hall"}));
    assert_eq!(keys(&kiosk.expect("data.create").await), vec!["2"]);
    assert_eq!(fake.logins(), 1, "one login, the session is reused");
    relay.stop().await;
    fake.stop();
}

/// `setup-flow` creates the Flow once and then updates it in place, with the relay's URL and
/// secret; the relay's read-only token is refused with a hint.
#[tokio::test]
async fn setup_flow_creates_then_updates_one_flow() {
    use directus_relay::upstream::flow::{self, Outcome};
    let ca = TestCa::new();
    let fake = FakeDirectus::start(&ca, &[("screens", "id")]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = directus_relay::Config::from_toml(&format!(
        "clients.allow_anonymous = true\n[webhook]\nsecret = \"{SECRET}\"\n[directus]\nurl = \"{}\"\ntoken = \"{TOKEN}\"\nca_file = \"{}\"\nmode = \"webhook\"\n[[collections]]\nname = \"screens\"",
        fake.url(),
        ca.write_ca(dir.path()).display()
    ))
    .expect("valid");
    let admin = directus_relay::config::Secret::new(ADMIN_TOKEN);
    let first: url::Url = "http://192.0.2.10:8080/hooks/directus"
        .parse()
        .expect("url");
    let second: url::Url = "http://192.0.2.11:8080/hooks/directus"
        .parse()
        .expect("url");
    let created = flow::setup(&config, admin.clone(), &first)
        .await
        .expect("created");
    assert!(matches!(created, Outcome::Created(_)), "{created:?}");
    let updated = flow::setup(&config, admin, &second).await.expect("updated");
    assert!(matches!(updated, Outcome::Updated(_)), "{updated:?}");

    let (flows, operations) = fake.flows_and_operations();
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(operations.len(), 1, "{operations:?}");
    let (flow, op) = (&flows[0], &operations[0]);
    assert_eq!(flow["name"], "directus-relay");
    assert_eq!(
        flow["operation"], op["id"],
        "the operation is the Flow's first step"
    );
    assert_eq!(flow["options"]["collections"], json!(["screens"]));
    assert_eq!(flow["options"]["type"], "action");
    assert_eq!(op["options"]["url"], second.as_str());
    assert_eq!(op["options"]["body"], "{{$trigger}}");
    assert_eq!(op["options"]["headers"][0]["value"], SECRET);

    let refused = flow::setup(&config, directus_relay::config::Secret::new(TOKEN), &first)
        .await
        .expect_err("a read-only token may not manage Flows");
    assert!(refused.contains("admin token"), "{refused}");
    assert!(
        flow::deny_list_warning(&first).is_none(),
        "192.0.2.10 is not local"
    );
    let local: url::Url = "http://127.0.0.1:8080/hooks/directus".parse().expect("url");
    assert!(flow::deny_list_warning(&local).is_some_and(|w| w.contains("IMPORT_IP_DENY_LIST")));
    fake.stop();
}

/// What the status page shows of the upstream: live, then offline with the content's time
/// while Directus is down, then live again; and the mirror it holds meanwhile.
#[tokio::test]
async fn the_status_page_follows_directus_going_away_and_back() {
    let s = setup("poll", "", |_| {}).await;
    let holds_screens = |status: &Value| {
        status["mirror"].as_array().is_some_and(|m| {
            m.iter()
                .any(|c| c["collection"] == "screens" && c["items"] == 1)
        })
    };
    let status_when = async |state: &str| -> Value {
        let deadline = tokio::time::Instant::now() + kiosk_tests::PATIENCE;
        loop {
            let (code, body) = s.relay.get("/status.json").await;
            assert_eq!(code, 200, "{body}");
            let status: Value = serde_json::from_str(&body).expect("JSON");
            // The mirror and the rooms are refreshed once a second.
            if status["upstream"]["state"] == state && holds_screens(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never {state} with the screens held: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let live = status_when("live").await;
    assert!(
        live["source"]
            .as_str()
            .unwrap_or_default()
            .contains("(poll)"),
        "{live}"
    );
    s.fake.down();
    let offline = status_when("offline").await;
    assert_ne!(offline["upstream"]["since"], live["upstream"]["since"]);
    s.fake.up();
    status_when("live").await;
    s.relay.stop().await;
    s.fake.stop();
}

/// `[directus] heartbeat_collection`: `setup-flow` creates the collection once, `check` writes
/// the site's row, and the running relay keeps one row up to date with its screens, at once
/// when a screen comes or goes missing.
#[tokio::test]
async fn the_site_heartbeat_row_follows_the_screens() {
    use directus_relay::upstream::{check, flow};
    let s = setup("poll", "heartbeat_collection = \"relay_sites\"", |_| {}).await;
    let toml = format!(
        "site_name = \"museum-hall\"\nclients.missing_after = \"1s\"\n{}",
        s.config
    );
    let config = directus_relay::Config::from_toml(&toml).expect("valid");
    // Only the relay started below writes rows.
    s.relay.stop().await;

    let lines = check::run(&config).await;
    let write = lines
        .iter()
        .find(|l| l.what == "write relay_sites")
        .expect("checked");
    assert!(!write.ok, "the collection does not exist yet: {lines:?}");
    assert!(write.detail.contains("setup-flow"), "{}", write.detail);

    let admin = directus_relay::config::Secret::new(ADMIN_TOKEN);
    let made = flow::setup_heartbeat(&config, admin.clone())
        .await
        .expect("made");
    assert!(made.is_some_and(|m| m.contains("created")));
    let again = flow::setup_heartbeat(&config, admin).await.expect("left");
    assert!(again.is_some_and(|m| m.contains("exists")));
    let lines = check::run(&config).await;
    assert!(lines.iter().all(|l| l.ok), "{lines:?}");
    assert_eq!(
        s.fake.made_rows("relay_sites").expect("made")["museum-hall"]["upstream"],
        "checked"
    );

    let relay = Relay::start(&toml).await;
    let kiosk = Kiosk::connect_with_auth(&relay, json!({"device": "hall-left"})).await;
    let row = wait_row(&s.fake, |row| row["screens_online"] == 1).await;
    assert_eq!(row["site"], "museum-hall");
    assert_eq!(row["upstream"], "live");
    assert!(
        row["version"].as_str().is_some_and(|v| v.contains('.')),
        "{row}"
    );
    assert!(row["memory_bytes"].as_u64().is_some_and(|m| m > 0), "{row}");
    kiosk.disconnect().await;
    let row = wait_row(&s.fake, |row| row["screens_missing"] == 1).await;
    assert_eq!(row["missing_screens"], "hall-left");
    assert_eq!(
        s.fake.made_rows("relay_sites").expect("made").len(),
        1,
        "one row per site"
    );
    relay.stop().await;
    s.fake.stop();
}

/// Waits until the site's heartbeat row satisfies `ok`.
async fn wait_row(fake: &FakeDirectus, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row = fake
            .made_rows("relay_sites")
            .and_then(|rows| rows.get("museum-hall").cloned())
            .unwrap_or(Value::Null);
        if ok(&row) {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "row never matched: {row}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
