//! The HTTP port, driven in-process over real sockets: health, readiness, metrics, and every
//! way a webhook can be refused, after which the relay still serves.

mod common;

use common::{CREATE, SECRET, get, post_hook, raw};
use directus_relay::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Running = (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

async fn start() -> Running {
    start_with("").await
}

async fn start_with(extra: &str) -> Running {
    start_in(extra, |_| {}).await
}

/// [`start_with`], with the config changed by `tweak` after the test's own state directory is
/// set.
async fn start_in(extra: &str, tweak: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::from_toml(&format!(
        "[webhook]\nsecret = \"{SECRET}\"\n[[collections]]\nname = \"screens\"\n[limits]\nwebhook_body_bytes = 2048\n{extra}\n{anonymous}",
        anonymous = if extra.contains("[clients]") { "" } else { "[clients]\nallow_anonymous = true" }
    ))
    .expect("valid config");
    // A state directory of this test's own, gone when the process ends.
    config.state_dir =
        std::env::temp_dir().join(format!("relay-http-test-{}", directus_relay::random_hex(6)));
    tweak(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(directus_relay::run(config, listener, shutdown.clone()));
    (addr, shutdown, task)
}

#[tokio::test]
async fn health_readiness_metrics_and_unknown_paths() {
    let (addr, shutdown, task) = start().await;
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(
        get(addr, "/readyz").await,
        (200, "ready (upstream live)\n".into())
    );
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "relay_kiosks_connected",
        "relay_hub_queue_depth",
        "relay_replay_events",
        "relay_mirror_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }
    assert_eq!(get(addr, "/nope").await.0, 404);
    assert_eq!(get(addr, "/hooks/directus").await.0, 405);
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

#[tokio::test]
async fn webhook_refusals_say_why_and_the_relay_keeps_serving() {
    let (addr, shutdown, task) = start().await;
    let big = format!(
        r#"{{"event":"screens.items.create","key":1,"payload":{{"x":"{}"}}}}"#,
        "x".repeat(4000)
    );
    let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
        (
            "no secret",
            None,
            CREATE.into(),
            401,
            "X-Relay-Secret header is missing",
        ),
        (
            "wrong secret",
            Some("integration-secret-0123456788"),
            CREATE.into(),
            401,
            "does not match",
        ),
        (
            "short secret",
            Some("x"),
            CREATE.into(),
            401,
            "does not match",
        ),
        ("garbage", Some(SECRET), "{{{".into(), 400, "not valid JSON"),
        (
            "unknown event",
            Some(SECRET),
            r#"{"event":"screens.items.sort","key":1,"collection":"screens"}"#.into(),
            400,
            "unknown event",
        ),
        (
            "unrelayed collection",
            Some(SECRET),
            r#"{"event":"channels.items.create","key":"a","collection":"channels"}"#.into(),
            400,
            "is not relayed",
        ),
        (
            "oversized",
            Some(SECRET),
            big,
            413,
            "limits.webhook_body_bytes",
        ),
        (
            "nested too deep",
            Some(SECRET),
            format!(
                r#"{{"event":"screens.items.create","key":1,"payload":{{"x":{}1{}}}}}"#,
                "[".repeat(64),
                "]".repeat(64)
            ),
            400,
            "nests deeper than 64 levels",
        ),
    ];
    for (what, secret, body, status, words) in cases {
        let (got, answer) = post_hook(addr, secret, &body).await;
        assert_eq!(got, status, "{what}: {answer}");
        let answer: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{what}: {e}: {answer}"));
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(words), "{what}: {error}");
        assert!(!error.contains(SECRET), "{what}: the secret leaked");
    }

    // A chunked body that grows past the limit is cut off too.
    let chunk = "x".repeat(1000);
    let mut chunked = String::new();
    for _ in 0..4 {
        chunked.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    chunked.push_str("0\r\n\r\n");
    let head = format!(
        "POST /hooks/directus HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Relay-Secret: {SECRET}"
    );
    assert_eq!(raw(addr, &head, chunked.as_bytes()).await.0, 413);

    // Still serving: a good change is accepted and health is fine.
    let (status, answer) = post_hook(addr, Some(SECRET), CREATE).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(get(addr, "/healthz").await.0, 200);

    let (_, metrics) = get(addr, "/metrics").await;
    for (reason, count) in [
        ("bad-secret", 3),
        ("malformed", 1),
        ("unknown-event", 1),
        ("unknown-collection", 1),
        ("too-large", 2),
        ("too-deep", 1),
    ] {
        let line = format!("relay_webhook_rejects_total{{reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
    assert!(
        metrics.contains(r#"relay_changes_in_total{collection="screens",action="create"} 1"#),
        "{metrics}"
    );
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

/// A client that sends a large body in one go (as a Directus Flow does) still reads the 413:
/// the relay drains what it refuses instead of resetting the connection.
#[tokio::test]
async fn an_oversized_body_sent_at_once_gets_its_413() {
    let (addr, shutdown, task) = start().await;
    let body = format!(
        r#"{{"event":"screens.items.create","key":1,"payload":{{"x":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    for _ in 0..3 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "POST /hooks/directus HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-Relay-Secret: {SECRET}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // Like a Flow's HTTP client, give up when the relay stops reading mid-body.
        stream
            .write_all(request.as_bytes())
            .await
            .expect("the relay reads the whole body before answering");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

#[tokio::test]
async fn kiosk_pages_from_other_origins_may_connect() {
    let (addr, shutdown, task) = start().await;
    let head =
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nOrigin: https://signage.example";
    let answer = raw_full(addr, head).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://signage.example"),
        "{answer}"
    );
    let preflight = "OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nOrigin: https://signage.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type";
    let answer = raw_full(addr, preflight).await.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 204"), "{answer}");
    assert!(
        answer.contains("access-control-allow-headers: content-type"),
        "{answer}"
    );
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

#[tokio::test]
async fn pages_from_origins_not_allowed_are_refused() {
    let (addr, shutdown, task) = start_with(
        "[clients]\nallow_anonymous = true\nallowed_origins = [\"https://signage.example\"]",
    )
    .await;
    let head = "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nOrigin: https://evil.example";
    assert!(raw_full(addr, head).await.starts_with("HTTP/1.1 403"));
    let upgrade = "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nOrigin: https://evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13";
    assert!(raw_full(addr, upgrade).await.starts_with("HTTP/1.1 403"));
    let allowed =
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nOrigin: https://signage.example";
    assert!(raw_full(addr, allowed).await.starts_with("HTTP/1.1 200"));
    // Without an Origin (not a browser), the origin rule does not apply.
    let (status, _) = get(addr, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 200);
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

/// The whole answer, headers included.
async fn raw_full(addr: std::net::SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("in time")
    .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status page and its data: the last change, the refused webhook with its reason, the
/// mirror, memory against the budget; never a secret.
#[tokio::test]
async fn the_status_page_shows_changes_refusals_and_memory() {
    let (addr, shutdown, task) = start().await;
    let (status, page) = get(addr, "/status").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<title>directus-relay status</title>"),
        "{page}"
    );
    assert_eq!(get(addr, "/").await, (200, page));

    assert_eq!(post_hook(addr, Some(SECRET), CREATE).await.0, 202);
    assert_eq!(
        post_hook(addr, Some("not-the-secret-0123456"), CREATE)
            .await
            .0,
        401
    );
    // The hub refreshes the mirror and the rooms every second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (body, s) = loop {
        let (status, body) = get(addr, "/status.json").await;
        assert_eq!(status, 200, "{body}");
        let s: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        if s["mirror"][0]["items"] == 1 || std::time::Instant::now() > deadline {
            break (body, s);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        !body.contains(SECRET) && !body.contains("not-the-secret"),
        "{body}"
    );
    assert_eq!(s["upstream"]["state"], "live", "{s}");
    assert_eq!(s["seq"], 1);
    assert_eq!(s["events_per_minute"], 1);
    let event = &s["events"][0];
    assert_eq!(
        (&event["collection"], &event["action"], &event["keys"]),
        (
            &"screens".into(),
            &"create".into(),
            &serde_json::json!(["1"])
        )
    );
    let reject = &s["rejects"][0];
    assert_eq!(
        (&reject["status"], &reject["reason"]),
        (&401.into(), &"bad-secret".into())
    );
    assert_eq!(s["mirror"][0]["collection"], "screens");
    assert_eq!(s["mirror"][0]["items"], 1);
    assert_eq!(s["kiosks"]["connected"], 0);
    let rss = s["memory"]["rss_bytes"].as_u64().expect("RSS");
    let budget = s["memory"]["budget_bytes"].as_u64().expect("budget");
    assert!(rss > 1 << 20 && rss < budget, "{rss} of {budget}");
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

/// With `[admin] token`, the status data needs it; the page itself holds no data.
#[tokio::test]
async fn the_status_needs_the_admin_token_when_there_is_one() {
    let (addr, shutdown, task) = start_with("[admin]\ntoken = \"admin-token-0123456789\"").await;
    let (status, body) = get(addr, "/status.json").await;
    assert_eq!(status, 401);
    assert!(body.contains("needs its admin token"), "{body}");
    let wrong = raw(
        addr,
        "GET /status.json HTTP/1.1\r\nAuthorization: Bearer admin-token-012345678",
        b"",
    )
    .await;
    assert_eq!(wrong.0, 401);
    let right = raw(
        addr,
        "GET /status.json HTTP/1.1\r\nAuthorization: Bearer admin-token-0123456789",
        b"",
    )
    .await;
    assert_eq!(right.0, 200, "{}", right.1);
    assert!(!right.1.contains("admin-token"), "{}", right.1);
    assert_eq!(get(addr, "/status").await.0, 200);
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

/// `/demo` is the demo kiosk page, with the socket.io-client built into the relay; a config
/// written for an older relay, with the retired `demo.client_file`, still starts.
#[tokio::test]
async fn the_demo_page_and_its_client() {
    let (addr, shutdown, task) =
        start_with("[demo]\nclient_file = \"/usr/share/directus-relay/socket.io.min.js\"").await;
    let (status, page) = get(addr, "/demo").await;
    assert_eq!(status, 200);
    assert!(page.contains("socket.emit(\"subscribe\""), "{page}");
    let head = raw_full(
        addr,
        "GET /socket.io/socket.io.min.js HTTP/1.1\r\nAccept-Encoding: gzip",
    )
    .await
    .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{}", &head[..80]);
    assert!(head.contains("content-encoding: gzip"), "{}", &head[..300]);
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

/// Nothing from a `/demo` link reaches the page: it is the same for every query string, loads
/// its script from the relay only, and says so in its Content-Security-Policy.
#[tokio::test]
async fn the_demo_page_loads_no_script_a_link_names() {
    let (addr, shutdown, task) = start().await;
    let (status, plain) = get(addr, "/demo").await;
    assert_eq!(status, 200);
    let hostile = "/demo?client=https%3A%2F%2Fevil.example%2Fx.js&collection=%3C%2Fscript%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let (status, page) = get(addr, hostile).await;
    assert_eq!(status, 200);
    assert_eq!(page, plain, "the page does not depend on the request");
    assert!(page.contains(r#"<script src="socket.io/socket.io.min.js"></script>"#));
    for absent in [
        "evil.example",
        "document.write",
        "query.get(\"client\")",
        "innerHTML",
    ] {
        assert!(!page.contains(absent), "{absent:?} in the page");
    }
    let head = raw_full(addr, "GET /demo?client=https://evil.example/x.js HTTP/1.1").await;
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: script-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'"),
        "{head}"
    );
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

/// `/metrics` is open by default, as Prometheus scrapers expect; with
/// `admin.protect_metrics`, it needs the admin token like the status data.
#[tokio::test]
async fn metrics_need_the_admin_token_when_protected() {
    let token = "admin-token-0123456789";
    let (addr, shutdown, task) = start_with(&format!("[admin]\ntoken = \"{token}\"")).await;
    assert_eq!(get(addr, "/metrics").await.0, 200, "open unless protected");
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");

    let (addr, shutdown, task) = start_with(&format!(
        "[admin]\ntoken = \"{token}\"\nprotect_metrics = true"
    ))
    .await;
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 401);
    assert!(
        body.contains("metrics need its admin token (admin.protect_metrics)"),
        "{body}"
    );
    assert!(
        !body.contains("relay_"),
        "no figures without the token: {body}"
    );
    let wrong = raw(
        addr,
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer admin-token-012345678",
        b"",
    )
    .await;
    assert_eq!(wrong.0, 401);
    let right = raw(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nAuthorization: Bearer {token}"),
        b"",
    )
    .await;
    assert_eq!(right.0, 200, "{}", right.1);
    assert!(right.1.contains("relay_kiosks_connected"), "{}", right.1);
    let head = raw_full(addr, "GET /metrics HTTP/1.1")
        .await
        .to_ascii_lowercase();
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    // The health checks stay open: a load balancer has no token.
    assert_eq!(get(addr, "/healthz").await.0, 200);
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

/// A relay that cannot write its state file keeps serving, and says so: `/readyz` stays 200
/// (kiosks still get content) but reads "degraded" with the reason, the status data and the
/// metrics show it, and the stop reports the failed final save as an error (exit status 1).
#[tokio::test]
async fn a_relay_that_cannot_save_serves_degraded_and_its_stop_fails() {
    let not_a_dir = tempfile::NamedTempFile::new().expect("temp file");
    let (addr, shutdown, task) = start_in("", |config| {
        config.state_dir = not_a_dir.path().to_owned();
        config.persist_interval = std::time::Duration::from_millis(100);
    })
    .await;
    assert_eq!(post_hook(addr, Some(SECRET), CREATE).await.0, 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let readyz = loop {
        let (status, body) = get(addr, "/readyz").await;
        if body.starts_with("degraded") {
            assert_eq!(
                status, 200,
                "a relay that serves but cannot save stays in rotation"
            );
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never degraded: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        readyz.contains("cannot write the state file since"),
        "{readyz}"
    );
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(metrics.contains("relay_state_write_failing 1"), "{metrics}");
    assert!(
        !metrics.contains("relay_state_write_failures_total 0"),
        "{metrics}"
    );
    let (_, status) = get(addr, "/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert!(status["saving"]["failing_since"].is_string(), "{status}");
    assert!(status["saving"]["failures"].as_u64() >= Some(1), "{status}");
    shutdown.cancel();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("stops promptly")
        .expect("no panic");
    let error = format!("{:#}", stopped.expect_err("the final save failed"));
    assert!(error.contains("the final save failed"), "{error}");
}

/// With `webhook.durable`, a 202 comes after the journal's fsync (counted in
/// `relay_journal_syncs_total`); after a clean stop the last state write covers the journal,
/// so the next start replays nothing twice and leaves no journal file behind.
#[tokio::test]
async fn durable_webhooks_are_journaled_and_a_clean_stop_leaves_no_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().to_owned();
    let in_dir = |config: &mut Config| {
        config.state_dir = state_dir.clone();
        config.webhook.durable = true;
    };
    let (addr, shutdown, task) = start_in("", in_dir).await;
    for key in 1..=5 {
        let body = format!(r#"{{"event":"screens.items.create","key":{key},"payload":{{}}}}"#);
        assert_eq!(post_hook(addr, Some(SECRET), &body).await.0, 202);
    }
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        !metrics.contains("relay_journal_syncs_total 0"),
        "{metrics}"
    );
    assert!(
        std::fs::read_dir(&state_dir).expect("dir").any(|e| e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .starts_with("webhook-journal.")),
        "the changes are in the journal"
    );
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");

    let (addr, shutdown, task) = start_in("", in_dir).await;
    let (_, status) = get(addr, "/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["seq"], 5, "nothing replayed twice: {status}");
    let journal_files = std::fs::read_dir(&state_dir)
        .expect("dir")
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("webhook-journal.")
            })
        })
        .count();
    assert_eq!(journal_files, 0);
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}
