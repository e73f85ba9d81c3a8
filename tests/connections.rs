//! Sessions and connections within their limits, over real sockets: the header and idle
//! timeouts, Engine.IO sessions that never join a namespace, the cap on pending sessions, and
//! the cap on connections while someone holds sockets open.
//!
//! Timeouts are short here (hundreds of milliseconds); every test waits for what it expects
//! with a deadline, and only asserts lower bounds on time, which no slow machine breaks.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{SECRET, get};
use directus_relay::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen soon.
const PATIENCE: Duration = Duration::from_secs(10);

struct Relay {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Relay {
    async fn start(limits: &str) -> Relay {
        let mut config = Config::from_toml(&format!(
            "[webhook]\nsecret = \"{SECRET}\"\n[[collections]]\nname = \"screens\"\n[clients]\nallow_anonymous = true\n[limits]\n{limits}\n"
        ))
        .expect("valid config");
        config.state_dir = std::env::temp_dir().join(format!(
            "relay-connections-test-{}",
            directus_relay::random_hex(6)
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(directus_relay::run(config, listener, shutdown.clone()));
        Relay {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("stops in time")
            .expect("no panic")
            .expect("clean stop");
    }
}

/// One request on a connection of its own; the whole answer, head and body.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

fn status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A bare Engine.IO handshake over polling; its session id.
async fn handshake(addr: SocketAddr) -> Result<String, String> {
    let answer = request(addr, "GET", "/socket.io/?EIO=4&transport=polling", "").await;
    if status(&answer) != 200 {
        return Err(answer);
    }
    let open = body(&answer);
    let json = open.strip_prefix('0').expect("an open packet");
    let open: serde_json::Value = serde_json::from_str(json).expect("JSON");
    Ok(open["sid"].as_str().expect("sid").to_owned())
}

/// Joins the `/` namespace on session `sid` (polling), as socket.io-client does.
async fn join(addr: SocketAddr, sid: &str) {
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let answer = request(addr, "POST", &path, "40").await;
    assert_eq!(status(&answer), 200, "{answer}");
    let answer = request(addr, "GET", &path, "").await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(
        body(&answer).split('\u{1e}').any(|p| p.starts_with("40{")),
        "the connect is confirmed: {answer}"
    );
}

/// Waits until the relay ends the connection (EOF or reset); how long that took.
async fn closed(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .expect("the relay closes the connection");
    start.elapsed()
}

#[tokio::test]
async fn a_connection_that_sends_no_request_head_is_closed_after_the_header_timeout() {
    let relay = Relay::start("header_timeout = \"200ms\"\nidle_timeout = \"60s\"").await;
    // A request head sent slowly: one line, then nothing.
    let mut slow = TcpStream::connect(relay.addr).await.expect("connect");
    let start = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("send");
    let mut silent = TcpStream::connect(relay.addr).await.expect("connect");
    closed(&mut slow).await;
    closed(&mut silent).await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(get(relay.addr, "/healthz").await.0, 200);
    relay.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let relay = Relay::start("header_timeout = \"200ms\"\nidle_timeout = \"1s\"").await;
    let start = Instant::now();
    let mut stream = TcpStream::connect(relay.addr).await.expect("connect");
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", relay.addr).as_bytes())
        .await
        .expect("send");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).ends_with("ok\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "kept alive after the answer");
        answer.extend_from_slice(&buf[..n]);
    }
    // After a request, the idle timeout applies, not the header timeout.
    closed(&mut stream).await;
    let open = start.elapsed();
    assert!(open >= Duration::from_secs(1), "closed after {open:?}");
    relay.stop().await;
}

#[tokio::test]
async fn a_session_that_never_joins_is_closed_after_the_join_timeout() {
    let relay = Relay::start("join_timeout = \"200ms\"\nmax_pending_sessions = 1").await;
    let sid = handshake(relay.addr).await.expect("a session");
    let refused = handshake(relay.addr)
        .await
        .expect_err("one pending at most");
    assert_eq!(status(&refused), 503);
    // Closed by the join timeout: its id is unknown, and its place is free again.
    let deadline = Instant::now() + PATIENCE;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    loop {
        let answer = request(relay.addr, "GET", &path, "").await;
        if status(&answer) == 400 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session still lives: {answer}"
        );
    }
    let deadline = Instant::now() + PATIENCE;
    while handshake(relay.addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the pending place is never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_session_past_max_pending_sessions_is_refused_in_words() {
    let relay = Relay::start("join_timeout = \"60s\"\nmax_pending_sessions = 2").await;
    // A session that joins counts as a kiosk, no longer as pending.
    let kiosk = handshake(relay.addr).await.expect("a session");
    join(relay.addr, &kiosk).await;
    handshake(relay.addr).await.expect("first pending");
    handshake(relay.addr).await.expect("second pending");
    let refused = handshake(relay.addr).await.expect_err("a third is refused");
    assert_eq!(status(&refused), 503, "{refused}");
    assert_eq!(
        body(&refused),
        "too many new Socket.IO sessions at once (limits.max_pending_sessions); try again in a few seconds\n"
    );
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 60\r\n"),
        "{refused}"
    );
    // Requests of existing sessions and everything else still get through.
    assert_eq!(get(relay.addr, "/healthz").await.0, 200);
    let (_, metrics) = get(relay.addr, "/metrics").await;
    assert!(
        metrics.contains("relay_sessions_refused_total 1\n"),
        "counted: {metrics}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn with_every_connection_held_idle_healthz_and_a_new_kiosk_still_get_in() {
    let relay = Relay::start(
        "max_clients = 2\nmax_pending_sessions = 2\nmax_connections = 6\nheader_timeout = \"60s\"\nidle_timeout = \"60s\"",
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(TcpStream::connect(relay.addr).await.expect("connect"));
    }
    assert_eq!(get(relay.addr, "/healthz").await, (200, "ok\n".into()));
    let sid = handshake(relay.addr)
        .await
        .expect("a new kiosk gets a session");
    join(relay.addr, &sid).await;
    // The oldest idle connections made room, and were counted.
    closed(&mut idle[0]).await;
    let (_, metrics) = get(relay.addr, "/metrics").await;
    assert!(
        !metrics.contains("relay_connections_closed_total{reason=\"evicted\"} 0\n")
            && metrics.contains("relay_connections_closed_total{reason=\"evicted\"}"),
        "counted: {metrics}"
    );
    relay.stop().await;
}
