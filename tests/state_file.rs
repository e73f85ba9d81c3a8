//! The state file under the worst an SD-card device sees: the relay binary killed with SIGKILL
//! (as a power cut would stop it) at varied moments while it writes a mirror of megabytes.
//! After every kill the file is a complete state the relay's own loader reads, and the next
//! start serves it to a kiosk, in a new epoch.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{SECRET, get};
use directus_relay::hub::state_file::{self, FILE_NAME, TMP_NAME};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_directus-relay");
const PATIENCE: Duration = Duration::from_secs(20);

/// Items in the mirror before the kills start, and the size of each record.
const ITEMS: u64 = 3000;
const BLOB: usize = 1000;
const ROUNDS: u64 = 12;
/// Items posted at most per round.
const ROUND_ITEMS: u64 = 1000;

/// A relay process; killed with SIGKILL when dropped.
struct Relay {
    child: Child,
    addr: SocketAddr,
    /// The relay's log, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    fn start(dir: &Path, persist_interval: &str) -> Relay {
        Self::start_with(dir, persist_interval, "")
    }

    /// [`Relay::start`] with `webhook` added to the `[webhook]` section.
    fn start_with(dir: &Path, persist_interval: &str, webhook: &str) -> Relay {
        let config = dir.join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\npersist_interval = \"{persist_interval}\"\nclients.allow_anonymous = true\n[webhook]\nsecret = \"{SECRET}\"\n{webhook}\n[limits]\nmirror_items = 100000\n[[collections]]\nname = \"screens\"\n",
                dir.join("state").display()
            ),
        )
        .expect("write config");
        let mut command = Command::new(BIN);
        for (key, _) in std::env::vars() {
            if key.starts_with("RELAY_") || key == "NOTIFY_SOCKET" || key.starts_with("WATCHDOG_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("STATE_TEST_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("relay starts");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let addr = loop {
            let line = rx
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("relay did not start:\n{}", seen.join("\n")));
            seen.push(line.clone());
            if line.contains("relay listening") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .expect("addr=");
                break addr.parse().expect("socket address");
            }
        };
        // Keep draining stderr so the relay never blocks on a full pipe.
        let log = Arc::new(Mutex::new(seen));
        let keep = log.clone();
        std::thread::spawn(move || {
            while let Ok(line) = rx.recv() {
                keep.lock().expect("log").push(line);
            }
        });
        Relay { child, addr, log }
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().expect("log");
        let lines: Vec<&String> = log
            .iter()
            .filter(|l| !l.contains("webhook accepted") && !l.contains("queue is full"))
            .collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        tail.iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        while self.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn metric(&self, name: &str) -> u64 {
        let (_, text) = get(self.addr, "/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The record every key gets: a torn or mixed write could not pass for it.
fn record(key: u64) -> Value {
    json!({"id": key, "blob": "x".repeat(BLOB)})
}

/// A batch create as a Flow sends it, for `keys`.
fn create(keys: &[u64]) -> String {
    json!({
        "event": "screens.items.create",
        "collection": "screens",
        "keys": keys,
        "payload": {"blob": "x".repeat(BLOB)},
    })
    .to_string()
}

/// POSTs without panicking: `None` when the relay is gone.
async fn try_post(addr: SocketAddr, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST /hooks/directus HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nX-Relay-Secret: {SECRET}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(body.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Posts creates of new keys, 10 every few milliseconds and at most [`ROUND_ITEMS`], until
/// stopped or the relay is gone (a batch refused as busy is simply not saved).
fn spawn_poster(
    addr: SocketAddr,
    next_key: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for _ in 0..ROUND_ITEMS / 10 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let first = next_key.fetch_add(10, Ordering::Relaxed);
            let keys: Vec<u64> = (first..first + 10).collect();
            if try_post(addr, &create(&keys)).await.is_none() {
                return;
            }
        }
    })
}

/// Subscribes like a kiosk page (Socket.IO over WebSocket, by hand) and returns the ack.
async fn subscribe(relay: &Relay, since: Option<(&str, u64)>) -> Value {
    let addr = relay.addr;
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    let mut request = json!({"collections": ["screens"]});
    if let Some((epoch, seq)) = since {
        request["since"] = json!({"epoch": epoch, "seq": seq});
    }
    let mut sent_subscribe = false;
    let mut heard = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no ack in time; heard {heard:?}; relay log:\n{}",
                    relay.log_tail()
                )
            })
            .expect("websocket open")
            .expect("websocket message");
        let Message::Text(text) = message else {
            continue;
        };
        let text = text.as_str();
        heard.push(text.chars().take(80).collect::<String>());
        if text.starts_with('0') {
            ws.send(Message::Text(r#"40{"collections":["screens"]}"#.into()))
                .await
                .expect("connect");
        } else if text.starts_with("40") && !sent_subscribe {
            sent_subscribe = true;
            ws.send(Message::Text(
                format!("420[\"subscribe\",{request}]").into(),
            ))
            .await
            .expect("subscribe");
        } else if text == "2" {
            ws.send(Message::Text("3".into())).await.expect("pong");
        } else if let Some(ack) = text.strip_prefix("430") {
            let mut args: Vec<Value> = serde_json::from_str(ack).expect("ack JSON");
            ws.close(None).await.ok();
            return args.swap_remove(0);
        }
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("state dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != FILE_NAME)
        .collect()
}

/// The saved keys, each record checked complete.
fn checked_items(saved: &state_file::Saved) -> Vec<u64> {
    let items = saved.mirror.get("screens").cloned().unwrap_or_default();
    let mut keys: Vec<u64> = items
        .into_iter()
        .map(|(key, saved)| {
            let key: u64 = key.parse().expect("numeric key");
            assert!(saved == record(key), "item {key} damaged: {saved}");
            key
        })
        .collect();
    keys.sort_unstable();
    keys
}

/// Kill -9 at varied moments, ≥ 10 rounds, while a mirror of a few MB is written every 100ms:
/// the file is always the previous complete state or a newer one, never set aside as corrupt,
/// a temporary file left behind is never loaded and is removed by the next start, and the next
/// start serves what was saved to a kiosk, in a new epoch (a snapshot, not a replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_writing_never_loses_the_saved_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let next_key = Arc::new(AtomicU64::new(1));

    // Round 0: fill the mirror with a few thousand ~1 KB items.
    let relay = Relay::start(dir.path(), "100ms");
    for batch in 0..ITEMS / 50 {
        let keys: Vec<u64> = (batch * 50 + 1..=batch * 50 + 50).collect();
        assert_eq!(try_post(relay.addr, &create(&keys)).await, Some(202));
    }
    next_key.store(ITEMS + 1, Ordering::Relaxed);
    let deadline = Instant::now() + PATIENCE;
    while relay.metric("relay_state_writes_total").await < 1 {
        assert!(Instant::now() < deadline, "the state was never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut kiosk_saw = {
        let ack = subscribe(&relay, None).await;
        (
            ack["epoch"].as_str().expect("epoch").to_owned(),
            ack["seq"].as_u64().expect("seq"),
        )
    };
    let mut previous: Vec<u64> = Vec::new();
    let mut relay = Some(relay);
    let mut killed_mid_write = 0;
    let mut tmp_left = 0;

    for round in 0..ROUNDS {
        // Changes keep coming; the relay is killed either in the middle of a write (the
        // temporary file exists) or after a delay that varies with the round.
        let running = relay.take().expect("running relay");
        let stop = Arc::new(AtomicBool::new(false));
        let poster = spawn_poster(running.addr, next_key.clone(), stop.clone());
        let tmp = state_dir.join(TMP_NAME);
        // A round that waited for the temporary file counts as a kill during a write, from
        // what the wait saw (the kill follows at once): looking a second time could find the
        // write just finished if this thread was preempted in between, losing a round.
        let mid_write = if round % 2 == 0 {
            let deadline = Instant::now() + PATIENCE;
            while !tmp.exists() {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no write started; relay log:\n{}",
                    running.log_tail()
                );
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            true
        } else {
            tokio::time::sleep(Duration::from_millis(30 + round * 47 % 400)).await;
            tmp.exists()
        };
        running.kill();
        stop.store(true, Ordering::Relaxed);
        poster.await.expect("poster");
        killed_mid_write += u32::from(mid_write);

        // The file the relay's own loader reads is complete and at least as new as before.
        let stray = leftovers(&state_dir);
        assert!(
            stray.iter().all(|n| n == TMP_NAME),
            "round {round}: unexpected files {stray:?}"
        );
        tmp_left += u32::from(!stray.is_empty());
        let saved = state_file::load(&state_dir).expect("a state file after every kill");
        assert!(
            leftovers(&state_dir).iter().all(|n| !n.contains("corrupt")),
            "round {round}: the state file was set aside as damaged"
        );
        assert!(!saved.clean, "a killed relay's file is not marked clean");
        let items = checked_items(&saved);
        assert!(
            items.len() as u64 >= ITEMS,
            "round {round}: {}",
            items.len()
        );
        let missing: Vec<&u64> = previous
            .iter()
            .filter(|k| items.binary_search(k).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: items saved before, then lost: {missing:?}"
        );

        // The next start: the temporary file is gone, the saved content is loaded and served
        // to a kiosk that resumes from what it saw, as a snapshot in a new epoch.
        let restarted = Relay::start(dir.path(), "100ms");
        assert!(
            !tmp.exists(),
            "round {round}: the temporary file left by the kill is removed at start"
        );
        assert_eq!(
            restarted
                .metric("relay_mirror_items{collection=\"screens\"}")
                .await,
            items.len() as u64
        );
        let ack = subscribe(&restarted, Some((&kiosk_saw.0, kiosk_saw.1))).await;
        assert_ne!(
            ack["epoch"],
            kiosk_saw.0.as_str(),
            "round {round}: {}",
            ack["epoch"]
        );
        assert_eq!(ack["seq"], 0, "a new epoch starts at seq 0");
        let snapshot = &ack["collections"]["screens"];
        assert_eq!(snapshot["mode"], "snapshot");
        let mut served: Vec<(u64, Value)> = snapshot["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| (i["id"].as_u64().expect("id"), i.clone()))
            .collect();
        served.sort_by_key(|(k, _)| *k);
        let expected: Vec<(u64, Value)> = items.iter().map(|k| (*k, record(*k))).collect();
        let differs = served.iter().zip(&expected).find(|(a, b)| a != b);
        assert!(
            served.len() == expected.len() && differs.is_none(),
            "round {round}: the snapshot is not the saved content ({} items served, {} saved; {differs:?})",
            served.len(),
            expected.len()
        );
        kiosk_saw = (ack["epoch"].as_str().expect("epoch").to_owned(), 0);
        previous = items;
        relay = Some(restarted);
    }
    assert!(
        killed_mid_write >= ROUNDS as u32 / 2,
        "killed during a write only {killed_mid_write} times"
    );
    eprintln!(
        "{ROUNDS} kills, {killed_mid_write} during a write, {tmp_left} left a temporary file"
    );

    // A clean stop after all that marks the file clean.
    relay.take().expect("relay").terminate();
    assert!(state_file::load(&state_dir).expect("state").clean);
}

/// How many state writes a steady stream of changes causes with the default
/// `persist_interval` (5 s), and how large each is. Not run by default (it takes
/// `STATE_MEASURE_SECS`, 120 by default); re-run with
/// `cargo test --test state_file -- --ignored --nocapture measure`. The README's figures come
/// from here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of a few minutes; see the README's state file section"]
async fn measure_state_writes_per_hour() {
    let secs: u64 = std::env::var("STATE_MEASURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let (slow, fast) = tokio::join!(measure(1, secs), measure(20, secs));
    for (rate, line) in [(1, slow), (20, fast)] {
        eprintln!("{rate} change(s)/s: {line}");
    }
}

/// Runs a relay with 1000 items of ~1 KB, sends `rate` updates a second for `secs`, then
/// nothing for 3 intervals; returns a summary line.
async fn measure(rate: u64, secs: u64) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), "5s");
    for batch in 0..20 {
        let keys: Vec<u64> = (batch * 50 + 1..=batch * 50 + 50).collect();
        assert_eq!(try_post(relay.addr, &create(&keys)).await, Some(202));
    }
    // Let the load be saved, then count from a quiet start.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let writes_before = relay.metric("relay_state_writes_total").await;
    let bytes_before = relay.metric("relay_state_write_bytes_total").await;
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        n += 1;
        let update = json!({"event": "screens.items.update", "collection": "screens",
            "keys": [n % 1000 + 1], "payload": {"n": n}})
        .to_string();
        assert_eq!(try_post(relay.addr, &update).await, Some(202));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let writes = relay.metric("relay_state_writes_total").await - writes_before;
    let bytes = relay.metric("relay_state_write_bytes_total").await - bytes_before;
    // Nothing changes: nothing is written (after the write of the last changes).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let settled = relay.metric("relay_state_writes_total").await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let idle = relay.metric("relay_state_writes_total").await - settled;
    let last = relay.metric("relay_state_last_write_seconds").await;
    relay.terminate();
    let per_hour = writes as f64 * 3600.0 / elapsed;
    assert!(
        per_hour <= 3600.0 / 5.0 + 3600.0 / elapsed,
        "{per_hour} writes/h"
    );
    assert_eq!(idle, 0, "writes while nothing changed");
    format!(
        "{n} changes in {elapsed:.0} s: {writes} writes ({per_hour:.0}/h), {} bytes/write, {:.1} MB/h; 0 writes in 15 s idle; last write took {last} s (rounded down)",
        bytes / writes.max(1),
        bytes as f64 * 3600.0 / elapsed / 1e6
    )
}

/// With `webhook.durable`, every change answered 202 survives kill -9 although no state write
/// happened since (a `persist_interval` of an hour): the journal is replayed at the next start,
/// and a kiosk's snapshot holds every one of them, complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_webhooks_answered_202_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start_with(dir.path(), "1h", "durable = true");
    let addr = relay.addr;
    let accepted = Arc::new(Mutex::new(Vec::<u64>::new()));
    let posters: Vec<_> = (0..8u64)
        .map(|p| {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                for n in 0..1000u64 {
                    let keys = [p * 1_000_000 + n * 2, p * 1_000_000 + n * 2 + 1];
                    match try_post(addr, &create(&keys)).await {
                        Some(202) => accepted.lock().expect("lock").extend(keys),
                        Some(status) => panic!("refused with {status}"),
                        None => return,
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while accepted.lock().expect("lock").len() < 400 {
        assert!(Instant::now() < deadline, "too few accepted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.kill();
    for poster in posters {
        poster.await.expect("poster");
    }
    let accepted = accepted.lock().expect("lock").clone();

    let relay = Relay::start_with(dir.path(), "1h", "durable = true");
    let ack = subscribe(&relay, None).await;
    let items = ack["collections"]["screens"]["items"]
        .as_array()
        .expect("a snapshot");
    let held: std::collections::HashMap<u64, &Value> = items
        .iter()
        .map(|i| (i["id"].as_u64().expect("id"), i))
        .collect();
    for key in &accepted {
        let item = held.get(key).unwrap_or_else(|| {
            panic!(
                "{key} was answered 202 and is gone; relay log:\n{}",
                relay.log_tail()
            )
        });
        assert!(**item == record(*key), "{key} damaged: {item}");
    }
    eprintln!(
        "{} changes answered 202 before the kill, all replayed ({} held)",
        accepted.len(),
        held.len()
    );
    relay.terminate();
}
