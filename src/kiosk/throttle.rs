//! Wrong kiosk tokens, per client address: after `clients.wrong_token_limit` of them within
//! `clients.wrong_token_window`, an address's handshakes are refused for
//! `clients.wrong_token_backoff`, twice as long each time it comes back for more (at most
//! [`MAX_WRONG_TOKEN_BACKOFF`]). A refused handshake's token is not even compared, so guessing
//! goes no faster than the limit allows.
//!
//! The log stays small whatever arrives: at most one warning per address per window, one line
//! when an address is refused, and every minute a summary of the wrong tokens and refusals
//! ([`SUMMARY_INTERVAL`]). Tokens never appear in it.
//!
//! The table of addresses has a named bound ([`MAX_ADDRESSES`]); when it is full the address
//! seen first is forgotten, so a flood from many addresses costs memory up to that bound and
//! no more. IPv6 clients are counted per /64 (what one host can hold), IPv4 per address.
//! Kiosks behind one NAT or proxy address share its allowance.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{ClientsConfig, MAX_WRONG_TOKEN_BACKOFF};

/// Addresses remembered at once (about 150 bytes each). Full: the one seen first is forgotten.
pub const MAX_ADDRESSES: usize = 4096;

/// How often the summary of wrong tokens is logged (when there were any).
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// What one address has done lately.
#[derive(Debug)]
struct Entry {
    /// Wrong tokens since `window_start`.
    wrong: u32,
    window_start: Instant,
    /// Handshakes are refused until then.
    blocked_until: Option<Instant>,
    /// How long the last refusal lasted; the next lasts twice as long.
    last_backoff: Option<Duration>,
    /// When this address was last warned about.
    warned: Option<Instant>,
    /// The last wrong token or refused handshake.
    last_seen: Instant,
    /// Counted in the current summary's addresses.
    in_summary: bool,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            wrong: 0,
            window_start: now,
            blocked_until: None,
            last_backoff: None,
            warned: None,
            last_seen: now,
            in_summary: false,
        }
    }

    /// Quiet for a window, and, after a refusal, for as long again as the refusal lasted:
    /// nothing to remember (the next refusal starts again from `wrong_token_backoff`).
    fn stale(&self, now: Instant, window: Duration) -> bool {
        let refusal_over = match (self.blocked_until, self.last_backoff) {
            (Some(until), Some(lasted)) => now >= until + lasted,
            _ => true,
        };
        refusal_over && now.saturating_duration_since(self.last_seen) >= window
    }
}

/// What the summary counts between two of its lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Wrong tokens.
    pub wrong: u64,
    /// Addresses that sent them.
    pub addresses: u64,
    /// Handshakes refused because their address sent too many.
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Addresses in the order they were first seen: the front is forgotten first.
    order: VecDeque<IpAddr>,
    summary: Summary,
}

impl Table {
    fn entry(&mut self, key: IpAddr, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= MAX_ADDRESSES {
                match self.order.pop_front() {
                    Some(oldest) => {
                        self.entries.remove(&oldest);
                    }
                    None => break,
                }
            }
            self.order.push_back(key);
        }
        self.entries.entry(key).or_insert_with(|| Entry::new(now))
    }
}

/// What to log about one wrong token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noted {
    /// The first wrong token from this address in a window: worth one warning.
    pub warn: bool,
    /// The address is now refused, for this long.
    pub refused_for: Option<Duration>,
}

/// Wrong kiosk tokens by client address, shared by every namespace's admission.
#[derive(Debug)]
pub struct Throttle {
    limit: u32,
    window: Duration,
    backoff: Duration,
    table: Mutex<Table>,
}

impl Throttle {
    pub fn new(clients: &ClientsConfig) -> Self {
        Self {
            limit: clients.wrong_token_limit,
            window: clients.wrong_token_window,
            backoff: clients.wrong_token_backoff,
            table: Mutex::default(),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How much longer handshakes from `peer` are refused, if they are; counted for the
    /// summary.
    pub fn refused(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        let key = key(peer);
        let mut table = self.table();
        let entry = table.entries.get_mut(&key)?;
        let left = entry.blocked_until?.checked_duration_since(now)?;
        if left.is_zero() {
            return None;
        }
        entry.last_seen = now;
        table.summary.refused += 1;
        Some(left)
    }

    /// Counts a wrong token from `peer`; at the limit, refuses the address for a while.
    pub fn wrong_token(&self, peer: IpAddr, now: Instant) -> Noted {
        let key = key(peer);
        let (limit, window, backoff) = (self.limit, self.window, self.backoff);
        let mut table = self.table();
        let entry = table.entry(key, now);
        if entry.stale(now, window) {
            *entry = Entry {
                in_summary: entry.in_summary,
                ..Entry::new(now)
            };
        }
        if now.saturating_duration_since(entry.window_start) >= window {
            entry.window_start = now;
            entry.wrong = 0;
        }
        entry.wrong += 1;
        entry.last_seen = now;
        let warn = entry
            .warned
            .is_none_or(|at| now.saturating_duration_since(at) >= window);
        if warn {
            entry.warned = Some(now);
        }
        let mut refused_for = None;
        if entry.wrong >= limit {
            let wait = match entry.last_backoff {
                None => backoff,
                Some(last) => last.saturating_mul(2),
            }
            .min(MAX_WRONG_TOKEN_BACKOFF);
            entry.blocked_until = Some(now + wait);
            entry.last_backoff = Some(wait);
            entry.wrong = 0;
            entry.window_start = now;
            refused_for = Some(wait);
        }
        let new_in_summary = !entry.in_summary;
        entry.in_summary = true;
        table.summary.wrong += 1;
        if new_in_summary {
            table.summary.addresses += 1;
        }
        Noted { warn, refused_for }
    }

    /// Whether another refusal from `peer` that is no guess (a handshake without a token) is
    /// worth a warning: one per address per window, as for wrong tokens.
    pub fn worth_a_warning(&self, peer: IpAddr, now: Instant) -> bool {
        let window = self.window;
        let mut table = self.table();
        let entry = table.entry(key(peer), now);
        let warn = entry
            .warned
            .is_none_or(|at| now.saturating_duration_since(at) >= window);
        if warn {
            entry.warned = Some(now);
        }
        warn
    }

    /// What was counted since the last call, and forgets the addresses that went quiet.
    pub fn take_summary(&self, now: Instant) -> Summary {
        let window = self.window;
        let mut table = self.table();
        table.entries.retain(|_, e| !e.stale(now, window));
        for entry in table.entries.values_mut() {
            entry.in_summary = false;
        }
        let Table { entries, order, .. } = &mut *table;
        order.retain(|k| entries.contains_key(k));
        std::mem::take(&mut table.summary)
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.table().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Logs the summary every [`SUMMARY_INTERVAL`] while there is something to say.
    pub fn spawn_summary(self: Arc<Self>, stop: CancellationToken, tracker: &TaskTracker) {
        tracker.spawn(async move {
            let mut every = tokio::time::interval(SUMMARY_INTERVAL);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => {}
                }
                let summary = self.take_summary(Instant::now());
                if summary.wrong > 0 || summary.refused > 0 {
                    warn!(
                        wrong = summary.wrong,
                        addresses = summary.addresses,
                        refused = summary.refused,
                        "{} wrong kiosk tokens from {} addresses in the last minute; {} handshakes refused for too many wrong tokens (clients.wrong_token_limit)",
                        summary.wrong,
                        summary.addresses,
                        summary.refused
                    );
                }
            }
        });
    }

    /// Counts a wrong token from `peer` and logs what it is worth: one warning per address per
    /// window, one line when the address is refused.
    pub fn note_wrong_token(&self, peer: IpAddr, sid: &str) {
        let noted = self.wrong_token(peer, Instant::now());
        if noted.warn {
            warn!(
                %peer,
                sid,
                limit = self.limit,
                window = ?self.window,
                "kiosk refused: wrong token; more from this address within the window are summarised, and past clients.wrong_token_limit its handshakes are refused for a while"
            );
        }
        if let Some(wait) = noted.refused_for {
            info!(
                %peer,
                secs = wait.as_secs(),
                "refusing kiosk handshakes from this address: {} wrong tokens within {:?} (clients.wrong_token_limit, clients.wrong_token_window)",
                self.limit,
                self.window
            );
        }
    }
}

/// What an address is counted as: IPv4 as it is (also when mapped into IPv6), IPv6 by its /64.
fn key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(limit: u32, window: u64, backoff: u64) -> Throttle {
        Throttle::new(&ClientsConfig {
            wrong_token_limit: limit,
            wrong_token_window: Duration::from_secs(window),
            wrong_token_backoff: Duration::from_secs(backoff),
            ..ClientsConfig::default()
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn an_address_is_refused_after_the_limit_for_a_growing_time() {
        let throttle = throttle(3, 60, 10);
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        let first = throttle.wrong_token(a, t0);
        assert_eq!(
            first,
            Noted {
                warn: true,
                refused_for: None
            }
        );
        assert!(
            !throttle.wrong_token(a, t0 + S).warn,
            "one warning a window"
        );
        assert_eq!(throttle.refused(a, t0 + S), None, "under the limit");
        assert_eq!(
            throttle.wrong_token(a, t0 + 2 * S).refused_for,
            Some(10 * S)
        );
        assert_eq!(throttle.refused(a, t0 + 3 * S), Some(9 * S));
        assert_eq!(
            throttle.refused(ip("192.0.2.8"), t0 + 3 * S),
            None,
            "other addresses are not affected"
        );
        assert_eq!(throttle.refused(a, t0 + 12 * S), None, "the refusal ends");
        // Coming back for more at once: twice as long each time, up to the bound.
        let mut now = t0 + 12 * S;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let mut noted = None;
            for _ in 0..3 {
                noted = throttle.wrong_token(a, now).refused_for;
            }
            let wait = noted.expect("refused at the limit");
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits, [20, 40, 80, 160, 320, 640, 900, 900]);
        let summary = throttle.take_summary(now);
        assert_eq!(
            summary,
            Summary {
                wrong: 27,
                addresses: 1,
                refused: 1
            }
        );
        assert_eq!(throttle.take_summary(now), Summary::default());
    }

    #[test]
    fn wrong_tokens_spread_over_windows_are_not_refused_and_quiet_addresses_are_forgotten() {
        let throttle = throttle(3, 60, 10);
        let t0 = Instant::now();
        let a = ip("198.51.100.1");
        for minute in 0..5 {
            let noted = throttle.wrong_token(a, t0 + minute * 61 * S);
            assert_eq!(noted.refused_for, None);
            assert!(noted.warn, "a warning per window");
            throttle.wrong_token(a, t0 + minute * 61 * S + S);
        }
        assert_eq!(throttle.len(), 1);
        throttle.take_summary(t0 + 500 * S);
        assert!(throttle.is_empty(), "quiet for a window: forgotten");
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_addresses() {
        let throttle = throttle(2, 60, 10);
        let t0 = Instant::now();
        let first = ip("10.0.0.1");
        throttle.wrong_token(first, t0);
        throttle.wrong_token(first, t0);
        assert!(throttle.refused(first, t0).is_some());
        for n in 0..(MAX_ADDRESSES as u32 * 3) {
            let peer = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + n));
            throttle.wrong_token(peer, t0 + S);
        }
        assert_eq!(throttle.len(), MAX_ADDRESSES);
        assert_eq!(
            throttle.refused(first, t0 + S),
            None,
            "the address seen first was forgotten"
        );
        let summary = throttle.take_summary(t0 + 2 * S);
        assert_eq!(summary.wrong, 2 + 3 * MAX_ADDRESSES as u64);
        let order_len = throttle.table().order.len();
        assert_eq!(order_len, MAX_ADDRESSES);
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let throttle = throttle(2, 60, 10);
        let t0 = Instant::now();
        throttle.wrong_token(ip("2001:db8:1:2::1"), t0);
        throttle.wrong_token(ip("2001:db8:1:2:ffff::9"), t0);
        assert!(throttle.refused(ip("2001:db8:1:2::77"), t0).is_some());
        assert!(throttle.refused(ip("2001:db8:1:3::1"), t0).is_none());
        throttle.wrong_token(ip("::ffff:192.0.2.1"), t0);
        throttle.wrong_token(ip("192.0.2.1"), t0);
        assert!(throttle.refused(ip("192.0.2.1"), t0).is_some());
    }
}
