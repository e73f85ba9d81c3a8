//! The files cache (`[assets]`) against the fake Directus: files found from the schema and
//! prefetched, served offline with the right headers (ETag/304, Range/206, HEAD), variants
//! streamed through and cached, eviction under the budget, interrupted downloads never
//! served, the cache kept across a restart, kiosk tokens, and `hold_for_assets`.

use std::time::Duration;

use kiosk_tests::fake_directus::{FakeDirectus, TOKEN, TestCa};
use kiosk_tests::{Kiosk, PATIENCE, Relay, SECRET};
use serde_json::{Value, json};

const LOBBY: &str = "lobby-token-0123456789";
const OTHER: &str = "other-token-0123456789";

const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const C: &str = "cccccccc-0000-4000-8000-000000000003";
const D: &str = "dddddddd-0000-4000-8000-000000000004";

/// A file's bytes: `len` bytes that differ from one file to the next.
fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `articles` has an image (a file field) and a gallery (a files list through
/// `articles_files`), as Directus's `/fields` and `/relations` describe them.
fn schema(fake: &FakeDirectus) {
    fake.set_schema(
        vec![
            json!({"collection": "articles", "field": "image", "type": "uuid", "meta": {"special": ["file"]}}),
            json!({"collection": "articles", "field": "gallery", "type": "alias", "meta": {"special": ["files"]}}),
        ],
        vec![
            json!({"collection": "articles", "field": "image", "related_collection": "directus_files", "meta": {"one_field": null, "junction_field": null}}),
            json!({"collection": "articles_files", "field": "articles_id", "related_collection": "articles", "meta": {"one_field": "gallery", "junction_field": "directus_files_id"}}),
            json!({"collection": "articles_files", "field": "directus_files_id", "related_collection": "directus_files", "meta": {"one_field": null, "junction_field": "articles_id"}}),
        ],
    );
}

struct Setup {
    fake: FakeDirectus,
    relay: Relay,
    config: String,
    _dir: tempfile::TempDir,
}

async fn setup(assets: &str, articles: &str, before: impl FnOnce(&FakeDirectus)) -> Setup {
    let ca = TestCa::new();
    let fake = FakeDirectus::start(&ca, &[("articles", "id"), ("screens", "id")]).await;
    schema(&fake);
    before(&fake);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = ca.write_ca(dir.path());
    let config = format!(
        r#"
[webhook]
secret = "{SECRET}"
[directus]
url = "{url}"
token = "{TOKEN}"
ca_file = "{ca}"
mode = "poll"
poll_interval = "100ms"
reconcile_interval = "500ms"
request_timeout = "2s"
[assets]
enabled = true
{assets}
[[collections]]
name = "articles"
{articles}
[[collections]]
name = "screens"
[[clients.tokens]]
name = "lobby"
token = "{LOBBY}"
collections = ["articles"]
[[clients.tokens]]
name = "other"
token = "{OTHER}"
collections = ["screens"]
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

/// The status page's `assets` entry.
async fn assets_status(relay: &Relay) -> Value {
    let (status, body) = relay.get("/status.json").await;
    assert_eq!(status, 200, "{body}");
    let status: Value = serde_json::from_str(&body).expect("status JSON");
    status["assets"].clone()
}

/// Polls the status page until `done` holds for its `assets` entry; returns that entry.
async fn until(relay: &Relay, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        let status = assets_status(relay).await;
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited in vain for {what}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Fetched {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Fetched {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn fetch(relay: &Relay, method: &str, path: &str, headers: &[(&str, &str)]) -> Fetched {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client.request(method, relay.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body").to_vec();
    Fetched {
        status,
        headers,
        body,
    }
}

async fn get(relay: &Relay, path: &str) -> Fetched {
    fetch(relay, "GET", path, &[]).await
}

#[tokio::test]
async fn referenced_files_are_prefetched_and_served_offline_with_http_semantics() {
    let a = bytes(1, 300_000);
    let setup = setup("", "", |fake| {
        fake.add_file(A, a.clone(), "image/png");
        fake.add_file(B, bytes(2, 1000), "image/jpeg");
        fake.add_file(C, bytes(3, 2000), "video/mp4");
        fake.add_file(D, bytes(4, 10), "image/png");
        fake.create(
            "articles",
            json!({"id": 1, "image": A, "gallery": [{"directus_files_id": B}, {"directus_files_id": C}]}),
        );
        fake.create("screens", json!({"id": 1, "name": "Lobby"}));
    })
    .await;
    let relay = &setup.relay;
    let status = until(relay, "three files cached", |s| {
        s["referenced"] == 3 && s["referenced_cached"] == 3
    })
    .await;
    assert_eq!(
        status["fields"],
        json!([
            "articles: image (file), gallery.directus_files_id (files list)",
            "screens: no file fields"
        ])
    );
    assert_eq!(status["bytes"], 303_000);
    setup.fake.down();

    let got = get(relay, &format!("/assets/{A}?token={LOBBY}")).await;
    assert_eq!(got.status, 200);
    assert!(got.body == a, "the same bytes as Directus's");
    assert_eq!(got.header("content-type"), "image/png");
    assert_eq!(got.header("content-length"), "300000");
    assert_eq!(got.header("cache-control"), "private, no-cache");
    assert_eq!(got.header("last-modified"), "Sat, 05 Dec 2026 10:00:00 GMT");
    assert_eq!(got.header("accept-ranges"), "bytes");
    let etag = got.header("etag").to_owned();
    assert!(etag.starts_with('"'), "{etag}");

    let bearer = format!("Bearer {LOBBY}");
    let got = fetch(
        relay,
        "GET",
        &format!("/assets/{C}"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!((got.status, got.body), (200, bytes(3, 2000)));

    let got = fetch(
        relay,
        "GET",
        &format!("/assets/{A}?token={LOBBY}"),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(got.status, 304);
    assert!(got.body.is_empty());
    assert_eq!(got.header("etag"), etag);

    let got = fetch(
        relay,
        "GET",
        &format!("/assets/{A}?token={LOBBY}"),
        &[("range", "bytes=1000-1999")],
    )
    .await;
    assert_eq!(got.status, 206);
    assert_eq!(got.header("content-range"), "bytes 1000-1999/300000");
    assert!(got.body == a[1000..2000]);
    let got = fetch(
        relay,
        "GET",
        &format!("/assets/{A}?token={LOBBY}"),
        &[("range", "bytes=400000-")],
    )
    .await;
    assert_eq!(got.status, 416);
    assert_eq!(got.header("content-range"), "bytes */300000");

    let got = fetch(relay, "HEAD", &format!("/assets/{A}?token={LOBBY}"), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), "300000");
    assert!(got.body.is_empty());

    // Nothing leaks: another collection's token, no token, a wrong one, a file no item
    // references, a path that is not an id: all 404.
    for path in [
        format!("/assets/{A}?token={OTHER}"),
        format!("/assets/{A}"),
        format!("/assets/{A}?token=wrong-token-0123456789"),
        format!("/assets/{D}?token={LOBBY}"),
        format!("/assets/..%2Fstate.json?token={LOBBY}"),
    ] {
        assert_eq!(get(relay, &path).await.status, 404, "{path}");
    }

    // A variant never asked for, with Directus down: 504 and one line saying why.
    let got = get(relay, &format!("/assets/{A}?width=10&token={LOBBY}")).await;
    assert_eq!(got.status, 504);
    let text = String::from_utf8(got.body).expect("text");
    assert!(
        text.contains("Directus cannot be reached") && text.lines().count() == 1,
        "{text}"
    );
    let status = assets_status(relay).await;
    assert_eq!(status["unavailable"], 1);
    assert!(status["hits"].as_u64() >= Some(5), "{status}");
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.contains("relay_assets_referenced_cached 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn wrong_tokens_in_file_urls_count_towards_the_address_limit() {
    let setup = setup("", "", |fake| {
        fake.add_file(A, bytes(1, 1000), "image/png");
        fake.create("articles", json!({"id": 1, "image": A}));
    })
    .await;
    let relay = &setup.relay;
    until(relay, "cached", |s| s["referenced_cached"] == 1).await;
    // The default limit is 10 wrong tokens per address and window; the 11th request is refused
    // whatever its token.
    for n in 0..10 {
        let got = get(relay, &format!("/assets/{A}?token=guess-{n:016}")).await;
        assert_eq!(got.status, 404, "guess {n}");
    }
    let got = get(relay, &format!("/assets/{A}?token={LOBBY}")).await;
    assert_eq!(got.status, 429);
    assert!(!got.header("retry-after").is_empty());
}

#[tokio::test]
async fn variants_are_streamed_through_cached_and_then_served_from_disk() {
    let setup = setup("", "", |fake| {
        fake.add_file(A, bytes(1, 50_000), "image/png");
        fake.create("articles", json!({"id": 1, "image": A}));
    })
    .await;
    let relay = &setup.relay;
    until(relay, "the original cached", |s| {
        s["referenced_cached"] == 1
    })
    .await;
    let want = setup
        .fake
        .variant(A, "width=10&height=5&format=webp")
        .expect("variant");
    let got = get(
        relay,
        &format!("/assets/{A}?width=10&height=5&format=webp&token={LOBBY}&unknown=1"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert!(got.body == want, "streamed through");
    until(relay, "the variant cached", |s| s["variants"] == 2).await;
    setup.fake.down();
    let got = get(
        relay,
        &format!("/assets/{A}?format=webp&token={LOBBY}&height=5&width=10"),
    )
    .await;
    assert_eq!(
        got.status, 200,
        "the same variant, parameters in another order"
    );
    assert!(got.body == want);
    assert!(!got.header("etag").is_empty());
}

/// A screen that stops reading a file streamed through (a video element with enough buffered)
/// is let go after half of `directus.request_timeout`; the download goes on into the cache.
#[tokio::test]
async fn a_client_that_stops_reading_does_not_stop_the_download_into_the_cache() {
    let setup = setup("max_bytes = \"256MiB\"", "", |fake| {
        fake.add_file(A, bytes(1, 1000), "image/png");
        fake.add_file(B, bytes(2, 48 << 20), "video/mp4");
        fake.create("articles", json!({"id": 1, "image": A}));
    })
    .await;
    let relay = &setup.relay;
    until(relay, "cached", |s| s["referenced_cached"] == 1).await;
    // Referenced, with prefetching kept busy on nothing else: a variant not cached yet.
    setup.fake.update(
        "articles",
        "1",
        json!({"gallery": [{"directus_files_id": B}]}),
    );
    until(relay, "the video cached", |s| s["referenced_cached"] == 2).await;
    let client = reqwest::Client::new();
    let response = client
        .get(relay.url(&format!("/assets/{B}?quality=50&token={LOBBY}")))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    // Nothing read from `response`: the variant is cached all the same.
    until(relay, "the variant cached", |s| s["variants"] == 3).await;
    drop(response);
    setup.fake.down();
    let got = get(relay, &format!("/assets/{B}?quality=50&token={LOBBY}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len(), (48 << 20) + "quality=50:".len());
}

#[tokio::test]
async fn eviction_keeps_the_cache_under_its_budget_and_says_when_referenced_files_do_not_fit() {
    let size = 400 << 10;
    let ids: Vec<String> = (0..6)
        .map(|i| format!("eeeeeeee-0000-4000-8000-00000000000{i}"))
        .collect();
    let setup = setup("max_bytes = \"1MiB\"", "", |fake| {
        for (i, id) in ids.iter().enumerate() {
            fake.add_file(id, bytes(i as u8, size), "image/png");
        }
        fake.create("articles", json!({"id": 1, "image": ids[0]}));
    })
    .await;
    let relay = &setup.relay;
    until(relay, "the first file cached", |s| {
        s["referenced_cached"] == 1
    })
    .await;
    for (n, id) in ids.iter().enumerate().skip(1) {
        setup.fake.update("articles", "1", json!({"image": id}));
        let status = until(relay, "the new image cached", |s| {
            s["downloads"] == n + 1 && s["referenced_cached"] == 1
        })
        .await;
        assert!(status["bytes"].as_u64() <= Some(1 << 20), "{status}");
        // The newest is the referenced one, and it is cached.
        let got = get(relay, &format!("/assets/{id}?token={LOBBY}")).await;
        assert_eq!(got.status, 200);
    }
    let status = assets_status(relay).await;
    assert!(status["evictions"].as_u64() >= Some(3), "{status}");
    assert!(status["files"].as_u64() <= Some(2), "{status}");

    // A referenced file larger than the budget: not cached, and said loudly.
    let big = "ffffffff-0000-4000-8000-000000000009";
    setup.fake.add_file(big, bytes(9, 2 << 20), "video/mp4");
    setup
        .fake
        .create("articles", json!({"id": 2, "image": big}));
    let status = until(relay, "the budget problem", |s| !s["problem"].is_null()).await;
    assert!(
        status["problem"]
            .as_str()
            .is_some_and(|p| p.contains("assets.max_bytes")),
        "{status}"
    );
    assert!(status["bytes"].as_u64() <= Some(1 << 20), "{status}");
    let (_, metrics) = relay.get("/metrics").await;
    assert!(metrics.contains("relay_assets_over_budget 1"), "{metrics}");
    // Still served while Directus is reachable: streamed through, not cached.
    let got = get(relay, &format!("/assets/{big}?token={LOBBY}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len(), 2 << 20);
    let status = assets_status(relay).await;
    assert!(status["bytes"].as_u64() <= Some(1 << 20), "{status}");
}

#[tokio::test]
async fn an_interrupted_download_is_never_served_and_is_retried() {
    let a = bytes(1, 100_000);
    let setup = setup("", "", |fake| {
        fake.add_file(A, a.clone(), "image/png");
        fake.cut_assets(true);
        fake.create("articles", json!({"id": 1, "image": A}));
    })
    .await;
    let relay = &setup.relay;
    let status = until(relay, "a failed download", |s| {
        s["failures"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(status["referenced_cached"], 0);
    assert!(
        status["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(A)),
        "{status}"
    );
    let tmp = relay.state_dir.path().join("assets").join("tmp");
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
    setup.fake.down();
    let got = get(relay, &format!("/assets/{A}?token={LOBBY}")).await;
    assert_eq!(got.status, 504, "never the partial file");
    setup.fake.cut_assets(false);
    setup.fake.up();
    until(relay, "the file cached after a retry", |s| {
        s["referenced_cached"] == 1
    })
    .await;
    let got = get(relay, &format!("/assets/{A}?token={LOBBY}")).await;
    assert!(got.status == 200 && got.body == a);
}

#[tokio::test]
async fn a_file_replaced_in_directus_is_fetched_again() {
    let setup = setup("", "", |fake| {
        fake.add_file(A, bytes(1, 10_000), "image/png");
        fake.create("articles", json!({"id": 1, "image": A}));
    })
    .await;
    let relay = &setup.relay;
    until(relay, "cached", |s| s["downloads"] == 1).await;
    setup.fake.replace_file(A, bytes(2, 12_000));
    until(relay, "fetched again", |s| {
        s["downloads"] == 2 && s["referenced_cached"] == 1
    })
    .await;
    setup.fake.down();
    let got = get(relay, &format!("/assets/{A}?token={LOBBY}")).await;
    assert!(got.status == 200 && got.body == bytes(2, 12_000));
}

#[tokio::test]
async fn the_cache_and_the_file_fields_survive_a_restart_without_directus() {
    let a = bytes(1, 10_000);
    let setup = setup("", "", |fake| {
        fake.add_file(A, a.clone(), "image/png");
        fake.create("articles", json!({"id": 1, "image": A}));
    })
    .await;
    until(&setup.relay, "cached", |s| s["referenced_cached"] == 1).await;
    let state_dir = setup.relay.state_dir.clone();
    setup.relay.stop().await;
    setup.fake.down();
    let relay = Relay::start_in(&setup.config, state_dir, "127.0.0.1:0").await;
    let status = until(&relay, "the cache opened", |s| s["files"] == 1).await;
    assert_eq!(
        status["fields"][0],
        "articles: image (file), gallery.directus_files_id (files list)"
    );
    let got = get(&relay, &format!("/assets/{A}?token={LOBBY}")).await;
    assert!(got.status == 200 && got.body == a);
    let gets = setup.fake.asset_gets();
    assert_eq!(gets, 1, "downloaded once, before the restart");
    relay.stop().await;
}

async fn live_kiosk(relay: &Relay) -> Kiosk {
    let mut kiosk = Kiosk::connect_with_auth(relay, json!({"token": LOBBY})).await;
    loop {
        let (name, body) = kiosk.next().await;
        if name == "relay.status" && body["upstream"] == "live" {
            break;
        }
    }
    let ack = kiosk.subscribe(json!({"collections": ["articles"]})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    kiosk
}

#[tokio::test]
async fn hold_for_assets_sends_an_item_once_its_files_are_cached() {
    let setup = setup("hold_timeout = \"60s\"", "hold_for_assets = true", |fake| {
        fake.add_file(A, bytes(1, 5000), "image/png");
    })
    .await;
    let relay = &setup.relay;
    let mut kiosk = live_kiosk(relay).await;
    setup.fake.hold_assets();
    setup
        .fake
        .create("articles", json!({"id": 2, "title": "new", "image": A}));
    until(relay, "the item held", |s| s["held"] == 1).await;
    setup.fake.release_assets();
    let event = kiosk.expect("data.create").await;
    assert_eq!(event["record"]["image"], A);
    // The file was cached before the item was sent.
    setup.fake.down();
    let got = get(relay, &format!("/assets/{A}?token={LOBBY}")).await;
    assert_eq!(got.status, 200);
    let status = assets_status(relay).await;
    assert_eq!(
        (status["held"].clone(), status["hold_timeouts"].clone()),
        (json!(0), json!(0))
    );
}

#[tokio::test]
async fn hold_for_assets_sends_an_item_anyway_after_the_hold_timeout() {
    let setup = setup("hold_timeout = \"1s\"", "hold_for_assets = true", |fake| {
        fake.add_file(A, bytes(1, 5000), "image/png");
    })
    .await;
    let relay = &setup.relay;
    let mut kiosk = live_kiosk(relay).await;
    setup.fake.hold_assets();
    setup.fake.create("articles", json!({"id": 3, "image": A}));
    let event = kiosk.expect("data.create").await;
    assert_eq!(event["keys"], json!(["3"]));
    let status = until(relay, "the timeout counted", |s| s["hold_timeouts"] == 1).await;
    assert_eq!(status["referenced_cached"], 0);
    setup.fake.release_assets();
}

#[tokio::test]
async fn check_reports_the_file_fields() {
    let setup = setup("", "", |_| {}).await;
    let config = directus_relay::Config::from_toml(&setup.config).expect("config");
    let lines = directus_relay::upstream::check::run(&config).await;
    let files: Vec<(String, String)> = lines
        .iter()
        .filter(|l| l.what.starts_with("files"))
        .map(|l| (l.what.clone(), l.detail.clone()))
        .collect();
    assert_eq!(
        files,
        [
            (
                "files of articles".to_owned(),
                "image (file), gallery.directus_files_id (files list)".to_owned()
            ),
            ("files of screens".to_owned(), "no file fields".to_owned()),
        ]
    );
}
