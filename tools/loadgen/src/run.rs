//! One run, in phases: connect every kiosk (bounded concurrency), settle and sample the idle
//! relay, send the oversized message, post the warm-up events and sample the warm relay, post
//! the events at the set rate (lagging kiosks stop reading for a while), wait for the last
//! deliveries, sample again, read the stalled kiosks' backlogs, and report.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::args::Options;
use crate::hook;
use crate::kiosk::{self, ConnectFailure, Tally, Ws};
use crate::procfs::{self, Memory, Peak, Proc};
use crate::stats::Counter;

/// The drain ends early once no new delivery arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(2);
/// How often the phases poll their counters.
const POLL: Duration = Duration::from_millis(20);
/// The load's timeline: a row this often, at most this many rows.
const TIMELINE_EVERY: Duration = Duration::from_secs(1);
const TIMELINE_ROWS: usize = 600;
/// How long reading kiosks get to stop at the end.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The first few problems, so that the report says why something failed.
#[derive(Debug, Default)]
struct Notes(Mutex<Vec<String>>);

impl Notes {
    fn add(&self, note: String) {
        if let Ok(mut notes) = self.0.lock()
            && notes.len() < 5
            && !notes.contains(&note)
        {
            notes.push(note);
        }
    }
    fn list(&self) -> Vec<String> {
        self.0.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Posted {
    accepted: Counter,
    busy: Counter,
    refused: Counter,
    errors: Counter,
}

fn memory(relay: Option<Proc>) -> Option<Memory> {
    relay.and_then(|p| p.memory().ok())
}

fn cpu(relay: Option<Proc>) -> Option<f64> {
    relay.and_then(|p| p.cpu_seconds().ok())
}

/// The relay's user + system and user CPU seconds, from one reading of its `stat`.
fn cpu_and_user(relay: Option<Proc>) -> (Option<f64>, Option<f64>) {
    match relay.and_then(|p| p.cpu_split().ok()) {
        Some((user, system)) => (Some(user + system), Some(user)),
        None => (None, None),
    }
}

fn kib(m: Option<Memory>) -> Value {
    m.map_or(Value::Null, |m| m.rss_kib.into())
}

fn seconds(from: Option<f64>, to: Option<f64>) -> Value {
    match (from, to) {
        (Some(a), Some(b)) => round3(b - a),
        _ => Value::Null,
    }
}

fn round3(x: f64) -> Value {
    json!((x * 1000.0).round() / 1000.0)
}

pub async fn run(o: Options, nofile: u64) -> Result<Value, String> {
    let start = Instant::now();
    let tally = Arc::new(Tally::new(start));
    let notes = Arc::new(Notes::default());
    let relay = o.pid.map(Proc::Pid);
    if let Some(proc) = relay {
        proc.memory()
            .map_err(|e| format!("cannot read /proc/{}/status: {e}", o.pid.unwrap_or(0)))?;
    }
    let peak = relay.map(Peak::start);
    let own_cpu_start = Proc::Myself.cpu_seconds().ok();
    let loadavg_start = loadavg();
    let mem_start = memory(relay);
    let cpu_start = cpu(relay);

    // Connect.
    let options = Arc::new(o.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(o.connect_concurrency));
    let (stalled_tx, mut stalled_rx) = mpsc::channel::<Ws>(o.stalled.max(1));
    // With --stall-for the stalled kiosks are readers that lag once: this says until when.
    let (lag_tx, lag_rx) = watch::channel(None::<Instant>);
    let connected = Arc::new(Counter::default());
    let refused = Arc::new(Counter::default());
    let failed = Arc::new(Counter::default());
    let total = o.kiosks + o.stalled;
    let mut readers = Vec::with_capacity(o.kiosks);
    for i in 0..total {
        let stalls = i >= o.kiosks;
        let held = stalls && o.stall_for.is_none();
        let lag = (stalls && !held).then(|| lag_rx.clone());
        let (options, permits, tally, stop_rx, stalled_tx, notes) = (
            options.clone(),
            permits.clone(),
            tally.clone(),
            stop_rx.clone(),
            stalled_tx.clone(),
            notes.clone(),
        );
        let (connected, refused, failed) = (connected.clone(), refused.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else {
                return;
            };
            let result = kiosk::connect(&options).await;
            drop(permit);
            match result {
                Ok(ws) => {
                    connected.inc();
                    if held {
                        stalled_tx.send(ws).await.ok();
                    } else {
                        kiosk::read(ws, tally, stop_rx, lag).await;
                    }
                }
                Err(ConnectFailure::Refused(why)) => {
                    refused.inc();
                    notes.add(format!("kiosk refused: {why}"));
                }
                Err(ConnectFailure::Failed(why)) => {
                    failed.inc();
                    notes.add(format!("kiosk failed to connect: {why}"));
                }
            }
        });
        if !held {
            readers.push(task);
        }
    }
    drop(stalled_tx);
    while connected.get() + refused.get() + failed.get() < total as u64 {
        tokio::time::sleep(POLL).await;
    }
    let mut stalled = Vec::new();
    while let Ok(ws) = stalled_rx.try_recv() {
        stalled.push(ws);
    }
    let connect_secs = start.elapsed().as_secs_f64();
    let cpu_connected = cpu(relay);

    tokio::time::sleep(o.settle).await;
    let mem_idle = memory(relay);

    // The oversized message.
    let oversize = match o.oversize {
        None => Value::Null,
        Some(bytes) => {
            let before = memory(relay);
            let result = kiosk::oversize(&options, bytes).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = memory(relay);
            match result {
                Ok(r) => json!({
                    "bytes": r.bytes,
                    "fragment_bytes": o.oversize_fragment,
                    "cut_off": r.cut_off,
                    "how": r.how,
                    "ms_to_cut_off": r.millis_to_cut_off,
                    "send_error": r.send_error,
                    "rss_before_kib": kib(before),
                    "rss_after_kib": kib(after),
                    "hwm_before_kib": before.map(|m| m.hwm_kib),
                    "hwm_after_kib": after.map(|m| m.hwm_kib),
                }),
                Err(e) => json!({ "bytes": bytes, "error": format!("{e:?}") }),
            }
        }
    };

    // The load.
    let readers_at_load = connected.get().saturating_sub(stalled.len() as u64)
        - tally.readers_closed.get().min(connected.get());
    let mut warmup = Value::Null;
    let mut mem_warm = None;
    let mut metrics_warm = Value::Null;
    let mut tcp_warm = None;
    if o.events > 0 && o.warmup > 0 {
        let posted = Arc::new(Posted::default());
        let warm_start = Instant::now();
        post_all(&options, 0..o.warmup, warm_start, &posted, &tally, &notes).await;
        let expected = posted.accepted.get() * readers_at_load;
        drain(&tally, expected, o.drain, true).await;
        let secs = warm_start.elapsed().as_secs_f64();
        tokio::time::sleep(o.settle).await;
        mem_warm = memory(relay);
        tcp_warm = procfs::tcp_buffers_kib();
        metrics_warm = scrape_metrics(&o).await;
        warmup = json!({
            "events": o.warmup,
            "accepted": posted.accepted.get(),
            "expected": expected,
            "delivered": tally.delivered.get(),
            "secs": round3(secs),
        });
        tally.latency.reset();
        tally.latency_scheduled.reset();
    }
    let delivered_before = tally.delivered.get();
    let posted = Arc::new(Posted::default());
    let mut load = Value::Null;
    let mut cpu_load = (None, None);
    let mut user_cpu_load = (None, None);
    let mut own_cpu_load = (None, None);
    let mut mem_peak = None;
    let (mut mem_lagging, mut tcp_lagging) = (None, None);
    // Seconds from the lag's end until every kiosk had every event (null: not within --drain).
    let mut catch_up = None;
    if o.events > 0 {
        if let (Some(peak), Some(m)) = (&peak, memory(relay)) {
            peak.reset(m.rss_kib);
        }
        (cpu_load.0, user_cpu_load.0) = cpu_and_user(relay);
        own_cpu_load.0 = Proc::Myself.cpu_seconds().ok();
        let load_start = Instant::now();
        let lag_ends = load_start + o.stall_for.unwrap_or_default();
        if o.stall_for.is_some() {
            lag_tx.send_replace(Some(lag_ends));
        }
        let rows = Arc::new(Mutex::new(Vec::new()));
        let timeline = tokio::spawn(timeline(
            relay,
            load_start,
            cpu_load.0,
            (tally.clone(), posted.clone()),
            rows.clone(),
        ));
        let first = o.warmup;
        post_all(
            &options,
            first..first + o.events,
            load_start,
            &posted,
            &tally,
            &notes,
        )
        .await;
        // The lagging kiosks still read nothing: what they have waiting, in the server and
        // in the kernel's socket buffers.
        if o.stall_for.is_some() && Instant::now() < lag_ends {
            (mem_lagging, tcp_lagging) = (memory(relay), procfs::tcp_buffers_kib());
        }
        let post_secs = load_start.elapsed().as_secs_f64();
        let expected = posted.accepted.get() * readers_at_load;
        let drain_start = Instant::now();
        let lagged = o.stall_for.is_some();
        let done = drain(&tally, delivered_before + expected, o.drain, !lagged).await;
        if lagged {
            catch_up =
                Some(done.map(|at| round3(at.saturating_duration_since(lag_ends).as_secs_f64())));
        }
        (cpu_load.1, user_cpu_load.1) = cpu_and_user(relay);
        timeline.abort();
        let timeline = rows.lock().map(|r| r.clone()).unwrap_or_default();
        own_cpu_load.1 = Proc::Myself.cpu_seconds().ok();
        mem_peak = peak.as_ref().map(Peak::get);
        let delivered = tally.delivered.get() - delivered_before;
        let attempted =
            posted.accepted.get() + posted.busy.get() + posted.refused.get() + posted.errors.get();
        load = json!({
            "events_planned": o.events,
            "accepted": posted.accepted.get(),
            "busy_503": posted.busy.get(),
            "refused": posted.refused.get(),
            "post_errors": posted.errors.get(),
            "post_secs": round3(post_secs),
            "drain_secs": round3(drain_start.elapsed().as_secs_f64()),
            "rate_target": o.rate,
            "unposted": o.events.saturating_sub(attempted),
            "rate_achieved": round3(attempted as f64 / post_secs),
            "readers": readers_at_load,
            "expected": expected,
            "delivered": delivered,
            "lost": expected.saturating_sub(delivered),
            "duplicates": tally.duplicates.get(),
            "foreign_events": tally.foreign.get(),
            "frame_bytes_avg": tally
                .bytes
                .get()
                .checked_div(tally.delivered.get() + tally.duplicates.get()),
            "timeline": timeline,
            "latency_ms": {
                "p50": tally.latency.quantile(0.50) as f64 / 1000.0,
                "p99": tally.latency.quantile(0.99) as f64 / 1000.0,
                "max": tally.latency.max() as f64 / 1000.0,
            },
            "latency_from_schedule_ms": {
                "p50": tally.latency_scheduled.quantile(0.50) as f64 / 1000.0,
                "p99": tally.latency_scheduled.quantile(0.99) as f64 / 1000.0,
                "max": tally.latency_scheduled.max() as f64 / 1000.0,
            },
        });
    }

    tokio::time::sleep(o.settle).await;
    let mem_after = memory(relay);
    let metrics = scrape_metrics(&o).await;

    // What the stalled kiosks had waiting, read all at once.
    let drains: Vec<_> = stalled
        .into_iter()
        .map(|ws| tokio::spawn(kiosk::drain(ws)))
        .collect();
    let (mut stalled_closed, mut stalled_events, mut stalled_bytes) = (0u64, 0u64, 0u64);
    for drain in drains {
        if let Ok(d) = drain.await {
            stalled_closed += u64::from(d.closed);
            stalled_events += d.events;
            stalled_bytes += d.bytes;
        }
    }

    stop_tx.send(true).ok();
    for reader in readers {
        tokio::time::timeout(STOP_GRACE, reader).await.ok();
    }
    if let Value::Object(load) = &mut load {
        let readers_open = tally.readers_open.get();
        let warm_accepted = warmup["accepted"].as_u64().unwrap_or(0);
        let expected_open = (warm_accepted + posted.accepted.get()) * readers_open;
        load.insert("readers_open_at_end".into(), readers_open.into());
        load.insert(
            "lost_by_open_readers".into(),
            expected_open
                .saturating_sub(tally.delivered_open.get())
                .into(),
        );
    }
    let own_cpu_end = Proc::Myself.cpu_seconds().ok();
    let mem_end = memory(relay);
    let lag = match o.stall_for {
        Some(stall) if o.events > 0 && o.stalled > 0 => {
            let per_kiosk = |rss_kib: Option<u64>| match (rss_kib, mem_warm) {
                (Some(rss), Some(warm)) => {
                    round3((rss as f64 - warm.rss_kib as f64) / o.stalled as f64)
                }
                _ => Value::Null,
            };
            let tcp_per_kiosk = match (tcp_lagging, tcp_warm) {
                (Some(lagging), Some(warm)) => {
                    round3((lagging as f64 - warm as f64) / o.stalled as f64)
                }
                _ => Value::Null,
            };
            json!({
                "kiosks": o.stalled,
                "stall_s": round3(stall.as_secs_f64()),
                "caught_up_s": catch_up.flatten(),
                "kept_per_kiosk_kib": per_kiosk(mem_after.map(|m| m.rss_kib)),
                "peak_per_kiosk_kib": per_kiosk(mem_peak),
                "rss_lagging_kib": kib(mem_lagging),
                "tcp_buffers_warm_kib": tcp_warm,
                "tcp_buffers_lagging_kib": tcp_lagging,
                "tcp_buffers_per_kiosk_kib": tcp_per_kiosk,
            })
        }
        _ => Value::Null,
    };

    Ok(json!({
        "kiosks": o.kiosks,
        "stalled": o.stalled,
        "subscribe": o.subscribe,
        "token": o.token.is_some(),
        "event_bytes": o.event_bytes,
        "nofile_limit": nofile,
        "connect": {
            "connected": connected.get(),
            "refused": refused.get(),
            "failed": failed.get(),
            "secs": round3(connect_secs),
        },
        "warmup": warmup,
        "load": load,
        "lag": lag,
        "closed_by_relay": {
            "readers": tally.readers_closed.get(),
            "stalled": stalled_closed,
        },
        "stalled_backlog": { "events": stalled_events, "bytes": stalled_bytes },
        "oversize": oversize,
        "relay": {
            "pid": o.pid,
            "rss_start_kib": kib(mem_start),
            "rss_idle_kib": kib(mem_idle),
            "rss_warm_kib": kib(mem_warm),
            "rss_peak_load_kib": mem_peak,
            "rss_after_kib": kib(mem_after),
            "rss_end_kib": kib(mem_end),
            "hwm_kib": mem_end.map(|m| m.hwm_kib),
            "cpu_connect_s": seconds(cpu_start, cpu_connected),
            "cpu_load_s": seconds(cpu_load.0, cpu_load.1),
            "metrics_warm": metrics_warm,
            "cpu_load_user_s": seconds(user_cpu_load.0, user_cpu_load.1),
            "metrics": metrics,
        },
        "loadgen_cpu_s": {
            "total": seconds(own_cpu_start, own_cpu_end),
            "load": seconds(own_cpu_load.0, own_cpu_load.1),
        },
        "loadavg_1m": { "start": loadavg_start, "end": loadavg() },
        "notes": notes.list(),
    }))
}

/// One row a second while the load runs: `[secs, relay RSS KiB, relay CPU s since the
/// start, webhook answers 2xx, 503, deliveries]`, so a slow phase shows when it began.
/// The rows go into a shared list, so that the task can simply be aborted.
async fn timeline(
    relay: Option<Proc>,
    start: Instant,
    cpu_start: Option<f64>,
    (tally, posted): (Arc<Tally>, Arc<Posted>),
    rows: Arc<Mutex<Vec<Value>>>,
) {
    let mut tick = tokio::time::interval(TIMELINE_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let row = json!([
            start.elapsed().as_secs(),
            kib(memory(relay)),
            seconds(cpu_start, cpu(relay)),
            posted.accepted.get(),
            posted.busy.get(),
            tally.delivered.get(),
        ]);
        match rows.lock() {
            Ok(mut rows) if rows.len() < TIMELINE_ROWS => rows.push(row),
            _ => return,
        }
    }
}

/// The machine's one-minute load average: the cores are shared, so it says how much CPU the
/// relay and the loadgen could get.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Posts events `range` from `--posters` connections, each at its slot of the schedule
/// (`n / rate` seconds after `start`, counting from the range's first event), and returns once
/// all are posted (or `--post-for` is over).
async fn post_all(
    o: &Arc<Options>,
    range: Range<u64>,
    start: Instant,
    posted: &Arc<Posted>,
    tally: &Arc<Tally>,
    notes: &Arc<Notes>,
) {
    let next = Arc::new(AtomicU64::new(range.start));
    let mut posters = Vec::with_capacity(o.posters);
    for _ in 0..o.posters {
        let (o, range, next, posted, tally, notes) = (
            o.clone(),
            range.clone(),
            next.clone(),
            posted.clone(),
            tally.clone(),
            notes.clone(),
        );
        posters.push(tokio::spawn(async move {
            post(&o, range, start, &next, &posted, &tally, &notes).await;
        }));
    }
    for poster in posters {
        poster.await.ok();
    }
}

/// Waits until `expected` first deliveries in all arrived, at most `longest`, and returns
/// when they had. With `quiet` it ends early once none arrived for [`DRAIN_QUIET`]; without,
/// it waits for every one (after a lag: a catch-up may pause longer, and the sample after
/// the drain must see every kiosk caught up).
async fn drain(tally: &Tally, expected: u64, longest: Duration, quiet: bool) -> Option<Instant> {
    let start = Instant::now();
    let (mut last, mut last_change) = (tally.delivered.get(), start);
    loop {
        if tally.delivered.get() >= expected {
            return Some(Instant::now());
        }
        if start.elapsed() >= longest || (quiet && last_change.elapsed() >= DRAIN_QUIET) {
            return None;
        }
        tokio::time::sleep(POLL).await;
        let now = tally.delivered.get();
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
    }
}

/// Takes event numbers until all of `range` are posted, each at its slot of the schedule
/// (`(n - range.start) / rate` seconds after `start`), and stamps it with the time it is
/// actually sent.
async fn post(
    o: &Options,
    range: Range<u64>,
    load_start: Instant,
    next: &AtomicU64,
    posted: &Posted,
    tally: &Tally,
    notes: &Notes,
) {
    let mut client = hook::Client::new(&o.addr);
    let secret = o.secret.clone().unwrap_or_default();
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Relay-Secret", secret.as_str()),
    ];
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= range.end || o.post_for.is_some_and(|d| load_start.elapsed() >= d) {
            return;
        }
        let slot = load_start + Duration::from_secs_f64((n - range.start) as f64 / o.rate);
        tokio::time::sleep_until(slot.into()).await;
        let key = if o.keys == 0 { n } else { n % o.keys };
        let planned = slot.saturating_duration_since(tally.start).as_micros() as u64;
        let body = hook::update_body(
            &o.collection,
            key,
            n,
            (planned, tally.now_us()),
            o.event_bytes,
        );
        match client
            .request("POST", &o.hook_path, &headers, body.as_bytes())
            .await
        {
            Ok((status, _)) if (200..300).contains(&status) => posted.accepted.inc(),
            Ok((503, _)) => posted.busy.inc(),
            Ok((status, answer)) => {
                posted.refused.inc();
                notes.add(format!("webhook answered {status}: {}", answer.trim()));
            }
            Err(e) => {
                posted.errors.inc();
                notes.add(format!("webhook request failed: {e}"));
            }
        }
    }
}

/// The relay's own counters of interest, when `/metrics` answers.
async fn scrape_metrics(o: &Options) -> Value {
    let mut client = hook::Client::new(&o.addr);
    let Ok((200, text)) = client.request("GET", "/metrics", &[], b"").await else {
        return Value::Null;
    };
    let names = [
        "kiosks_connected",
        "kiosks_refused_total",
        "kiosk_overflows_total",
        "deliveries_total",
        "events_out_total",
        "webhook_rejects_total",
        "duplicates_dropped_total",
        "replay_bytes",
        "mirror_bytes",
    ];
    names
        .iter()
        .map(|name| (name.to_string(), hook::metric(&text, name).into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}
