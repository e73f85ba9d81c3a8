//! The operator's view: what the status page at `/status` shows, gathered as it happens and
//! served as JSON at `/status.json`.
//!
//! The hub notes each event and, every tick, the mirror and the rooms; the webhook notes each
//! refusal. Everything kept here is bounded ([`RECENT_EVENTS`], [`RECENT_REJECTS`], a minute of
//! per-second counts) and holds no secret.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Value, json};

use crate::clock::now_rfc3339;
use crate::config::Config;
use crate::report::HubReport;

/// Events the page lists, newest first.
pub const RECENT_EVENTS: usize = 50;
/// Webhook refusals the page lists, newest first.
pub const RECENT_REJECTS: usize = 20;
/// Keys listed per event; the rest are counted.
const KEYS_SHOWN: usize = 10;

/// One event as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct EventNote {
    pub seq: u64,
    pub collection: String,
    pub action: &'static str,
    pub keys: Vec<String>,
    /// Keys beyond those listed.
    pub more_keys: usize,
    pub ts: String,
}

/// One refused webhook as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RejectNote {
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
    pub ts: String,
}

/// A collection's mirror as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorNote {
    pub collection: String,
    pub items: usize,
    pub bytes: usize,
    /// Why it is not mirrored, when it is not.
    pub overflow: Option<&'static str>,
}

/// How writing the state file goes, as the status page and `/readyz` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SavingNote {
    /// Since when writes fail (RFC 3339); `None` while they succeed.
    pub failing_since: Option<String>,
    /// Failed writes since then.
    pub failures: u64,
    /// What the last failure said.
    pub error: Option<String>,
    /// When the state file was last written (RFC 3339), in this run.
    pub last_saved: Option<String>,
}

impl SavingNote {
    /// Whether the last write failed.
    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }

    /// One line for `/readyz` and logs while writes fail.
    pub fn describe(&self) -> Option<String> {
        let since = self.failing_since.as_ref()?;
        Some(format!(
            "cannot write the state file since {since} ({} failed writes, last: {}); last saved: {}",
            self.failures,
            self.error.as_deref().unwrap_or("unknown error"),
            self.last_saved.as_deref().unwrap_or("never in this run"),
        ))
    }
}

#[derive(Debug, Default)]
struct Inner {
    events: VecDeque<EventNote>,
    rejects: VecDeque<RejectNote>,
    /// Events per second over the last minute: (second since start, count).
    per_second: VecDeque<(u64, u64)>,
    mirror: Vec<MirrorNote>,
    rooms: Vec<(String, usize)>,
    kiosks: usize,
    saving: SavingNote,
}

/// What the status page shows, shared by the parts that know it.
#[derive(Debug)]
pub struct Board {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Default for Board {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            inner: Mutex::default(),
        }
    }
}

impl Board {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep showing it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes an event sent to kiosks.
    pub fn event(&self, seq: u64, collection: &str, action: &'static str, keys: &[&str], ts: &str) {
        let note = EventNote {
            seq,
            collection: collection.to_owned(),
            action,
            keys: keys
                .iter()
                .take(KEYS_SHOWN)
                .map(|k| k.to_string())
                .collect(),
            more_keys: keys.len().saturating_sub(KEYS_SHOWN),
            ts: ts.to_owned(),
        };
        let second = self.start.elapsed().as_secs();
        let mut inner = self.inner();
        inner.events.push_front(note);
        inner.events.truncate(RECENT_EVENTS);
        match inner.per_second.back_mut() {
            Some((s, count)) if *s == second => *count += 1,
            _ => inner.per_second.push_back((second, 1)),
        }
        while inner
            .per_second
            .front()
            .is_some_and(|(s, _)| second.saturating_sub(*s) >= 60)
        {
            inner.per_second.pop_front();
        }
    }

    /// Notes a refused webhook.
    pub fn reject(&self, status: u16, reason: &'static str, message: &str) {
        let mut inner = self.inner();
        inner.rejects.push_front(RejectNote {
            status,
            reason,
            message: message.to_owned(),
            ts: now_rfc3339(),
        });
        inner.rejects.truncate(RECENT_REJECTS);
    }

    /// Notes a state file written.
    pub fn saved(&self) {
        let mut inner = self.inner();
        inner.saving = SavingNote {
            last_saved: Some(now_rfc3339()),
            ..SavingNote::default()
        };
    }

    /// Notes a state file write that failed.
    pub fn save_failed(&self, error: &str) {
        let mut inner = self.inner();
        let saving = &mut inner.saving;
        saving.failing_since.get_or_insert_with(now_rfc3339);
        saving.failures += 1;
        saving.error = Some(error.to_owned());
    }

    /// How writing the state file goes.
    pub fn saving(&self) -> SavingNote {
        self.inner().saving.clone()
    }

    /// The hub's view of its mirror and of the kiosks per room, refreshed every tick.
    pub fn set_kiosks(&self, mirror: Vec<MirrorNote>, rooms: Vec<(String, usize)>, kiosks: usize) {
        let mut inner = self.inner();
        inner.mirror = mirror;
        inner.rooms = rooms;
        inner.kiosks = kiosks;
    }

    /// Events in the last minute.
    fn events_per_minute(inner: &Inner, now: u64) -> u64 {
        inner
            .per_second
            .iter()
            .filter(|(s, _)| now.saturating_sub(*s) < 60)
            .map(|(_, n)| n)
            .sum()
    }

    /// Everything the page shows, as JSON.
    pub fn render(&self, config: &Config, hub: &HubReport) -> Value {
        let now = self.start.elapsed().as_secs();
        let inner = self.inner();
        let rooms: Vec<Value> = inner
            .rooms
            .iter()
            .map(|(room, kiosks)| json!({ "room": room, "kiosks": kiosks }))
            .collect();
        json!({
            "upstream": { "state": hub.upstream.as_str(), "since": hub.since },
            "source": match &config.directus {
                Some(d) => format!("{} ({})", d.url, d.mode.as_str()),
                None => "webhooks only".to_owned(),
            },
            "epoch": hub.epoch,
            // The hub publishes its status once a tick; the newest event may be newer.
            "seq": inner.events.front().map_or(hub.seq, |e| e.seq.max(hub.seq)),
            "kiosks": { "connected": inner.kiosks, "max": config.limits.max_clients, "rooms": rooms },
            "mirror": inner.mirror,
            "events_per_minute": Self::events_per_minute(&inner, now),
            "events": inner.events,
            "rejects": inner.rejects,
            "saving": inner.saving,
            "memory": {
                "rss_bytes": rss_bytes(),
                "budget_bytes": config.memory_budget_bytes(),
            },
            "uptime_secs": now,
            "version": env!("CARGO_PKG_VERSION"),
            "now": now_rfc3339(),
        })
    }
}

/// The relay's resident memory, from `VmRSS` in `/proc/self/status` (Linux; in kB whatever
/// the page size, which is 16 KiB on a Raspberry Pi 5); `None` elsewhere.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_events_and_counts_the_last_minute() {
        let board = Board::default();
        for seq in 1..=(RECENT_EVENTS as u64 + 5) {
            board.event(seq, "screens", "update", &["1"], "t");
        }
        let many: Vec<String> = (0..15).map(|k| k.to_string()).collect();
        let keys: Vec<&str> = many.iter().map(String::as_str).collect();
        board.event(99, "screens", "delete", &keys, "t");
        let inner = board.inner();
        assert_eq!(inner.events.len(), RECENT_EVENTS);
        assert_eq!(inner.events[0].seq, 99);
        assert_eq!(inner.events[0].keys.len(), KEYS_SHOWN);
        assert_eq!(inner.events[0].more_keys, 5);
        assert_eq!(
            inner.events[RECENT_EVENTS - 1].seq,
            7,
            "the oldest are gone"
        );
        assert_eq!(
            Board::events_per_minute(&inner, 0),
            RECENT_EVENTS as u64 + 6
        );
        assert_eq!(Board::events_per_minute(&inner, 60), 0, "a minute later");
    }

    #[test]
    fn keeps_the_newest_rejects() {
        let board = Board::default();
        for n in 0..(RECENT_REJECTS + 3) {
            board.reject(400, "malformed", &format!("bad body {n}"));
        }
        let inner = board.inner();
        assert_eq!(inner.rejects.len(), RECENT_REJECTS);
        assert_eq!(
            inner.rejects[0].message,
            format!("bad body {}", RECENT_REJECTS + 2)
        );
    }
}
