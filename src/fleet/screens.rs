//! The screens the relay knows: each device id it has seen, whether it is online, away or
//! missing, and since when. Bounded by `clients.max_screens`: a new device past the limit
//! makes the relay forget the screen that has been away longest (one is always away: the limit
//! is at least `limits.max_clients`).
//!
//! Generic over `C`, what the relay keeps of a connection (a socket), so the rules are tested
//! without sockets; time is passed in, so they are tested without waiting.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use tokio::time::{Duration, Instant};

/// How far back `connects_last_hour` and `cut_offs_last_hour` look.
pub const HOUR: u64 = 3600;
/// The most connect and cut-off times kept per screen (enough to count a screen that
/// reconnects every minute for an hour).
pub const MAX_TIMES_KEPT: usize = 64;

/// What a screen is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// At least one connection.
    Online,
    /// No connection, for less than `clients.missing_after`.
    Away,
    /// No connection for `clients.missing_after` or longer.
    Missing,
}

impl State {
    pub const ALL: [State; 3] = [State::Online, State::Away, State::Missing];

    pub fn label(self) -> &'static str {
        match self {
            State::Online => "online",
            State::Away => "away",
            State::Missing => "missing",
        }
    }
}

/// What is remembered of a screen across restarts (the file `screens.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    /// The name of the kiosk token it connected with last.
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub transport: String,
    pub protocol: String,
    /// Unix seconds.
    pub first_seen: u64,
    /// Unix seconds: when it was last connected (now, while it is).
    pub last_seen: u64,
    /// The rooms it was in when it was last seen.
    #[serde(default)]
    pub subscriptions: Vec<String>,
}

/// One connection of a screen (a page may open several namespaces on one connection).
#[derive(Debug, Clone)]
pub struct Connection<C> {
    pub sid: String,
    pub handle: C,
}

/// A screen the relay knows.
#[derive(Debug, Clone)]
pub struct Screen<C> {
    pub known: Known,
    pub connections: Vec<Connection<C>>,
    /// When it last went online or offline.
    since: Instant,
    /// The same, in Unix seconds, for the page.
    pub since_unix: u64,
    pub missing: bool,
    /// Unix seconds of its connects and cut-offs, newest last, at most [`MAX_TIMES_KEPT`].
    connects: VecDeque<u64>,
    cut_offs: VecDeque<u64>,
    /// Events delivered to its connections that have closed, since the relay started.
    pub delivered_before: u64,
}

impl<C> Screen<C> {
    /// A screen with no connection, away since `now`.
    fn away(known: Known, now: Instant, now_unix: u64) -> Self {
        Self {
            known,
            connections: Vec::new(),
            since: now,
            since_unix: now_unix,
            missing: false,
            connects: VecDeque::new(),
            cut_offs: VecDeque::new(),
            delivered_before: 0,
        }
    }

    pub fn state(&self) -> State {
        if !self.connections.is_empty() {
            State::Online
        } else if self.missing {
            State::Missing
        } else {
            State::Away
        }
    }

    pub fn connects_last_hour(&self, now_unix: u64) -> usize {
        within_hour(&self.connects, now_unix)
    }

    pub fn cut_offs_last_hour(&self, now_unix: u64) -> usize {
        within_hour(&self.cut_offs, now_unix)
    }
}

fn within_hour(times: &VecDeque<u64>, now_unix: u64) -> usize {
    times.iter().filter(|&&t| t + HOUR > now_unix).count()
}

fn push_time(times: &mut VecDeque<u64>, at: u64) {
    if times.len() == MAX_TIMES_KEPT {
        times.pop_front();
    }
    times.push_back(at);
}

/// A connect, as the registry takes it.
#[derive(Debug, Clone)]
pub struct Arrival<C> {
    pub known: Known,
    pub sid: String,
    pub handle: C,
}

/// What a change did, for the log and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A missing screen connected again, after this long away (seconds).
    pub back_after: Option<u64>,
    /// A screen forgotten to make room for a new one.
    pub forgotten: Option<String>,
    /// The screen is new to the relay.
    pub new: bool,
}

/// The known screens.
#[derive(Debug)]
pub struct Screens<C> {
    screens: HashMap<String, Screen<C>>,
    max: usize,
    missing_after: Duration,
}

impl<C: Clone> Screens<C> {
    /// An empty list, or the screens remembered from the last run: away since `now` (the
    /// relay's start), so that none is reported missing before it had `missing_after` to come back.
    pub fn new(
        max: usize,
        missing_after: Duration,
        remembered: Vec<Known>,
        now: Instant,
        now_unix: u64,
    ) -> Self {
        let mut remembered = remembered;
        // The most recently seen are kept when the file holds more than the limit.
        remembered.sort_by_key(|k| std::cmp::Reverse(k.last_seen));
        remembered.truncate(max);
        let screens = remembered
            .into_iter()
            .map(|known| (known.device.clone(), Screen::away(known, now, now_unix)))
            .collect();
        Self {
            screens,
            max,
            missing_after,
        }
    }

    pub fn len(&self) -> usize {
        self.screens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.screens.is_empty()
    }

    pub fn get(&self, device: &str) -> Option<&Screen<C>> {
        self.screens.get(device)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Screen<C>> {
        self.screens.values()
    }

    /// A screen's connection opened.
    pub fn connect(&mut self, arrival: Arrival<C>, now: Instant, now_unix: u64) -> Outcome {
        let mut outcome = Outcome::default();
        let device = arrival.known.device.clone();
        if !self.screens.contains_key(&device) {
            if self.screens.len() >= self.max {
                outcome.forgotten = self.forget_longest_away();
            }
            outcome.new = true;
            let mut known = arrival.known.clone();
            known.first_seen = now_unix;
            self.screens
                .insert(device.clone(), Screen::away(known, now, now_unix));
        }
        let Some(screen) = self.screens.get_mut(&device) else {
            return outcome;
        };
        if screen.missing {
            outcome.back_after = Some(now_unix.saturating_sub(screen.known.last_seen));
        }
        if screen.connections.is_empty() {
            screen.since = now;
            screen.since_unix = now_unix;
        }
        screen.missing = false;
        let first_seen = screen.known.first_seen;
        screen.known = Known {
            first_seen,
            last_seen: now_unix,
            ..arrival.known
        };
        push_time(&mut screen.connects, now_unix);
        screen.connections.push(Connection {
            sid: arrival.sid,
            handle: arrival.handle,
        });
        outcome
    }

    /// A screen's connection closed: what it was subscribed to, how many events it was
    /// delivered, and whether the relay cut it off.
    pub fn disconnect(&mut self, departure: Departure, now: Instant, now_unix: u64) {
        let Some(screen) = self.screens.get_mut(&departure.device) else {
            return; // Forgotten while connected.
        };
        let before = screen.connections.len();
        screen.connections.retain(|c| c.sid != departure.sid);
        if screen.connections.len() == before {
            return;
        }
        screen.known.last_seen = now_unix;
        if !departure.transport.is_empty() {
            screen.known.transport = departure.transport;
        }
        screen.delivered_before += departure.delivered;
        if departure.cut_off {
            push_time(&mut screen.cut_offs, now_unix);
        }
        // A cut-off kiosk has left its rooms already: keep what it was subscribed to before.
        if !departure.subscriptions.is_empty() {
            screen.known.subscriptions = departure.subscriptions;
        }
        if screen.connections.is_empty() {
            screen.since = now;
            screen.since_unix = now_unix;
        }
    }

    /// Marks the screens away for `missing_after` as missing; returns them with how long they
    /// have been away (seconds), each once.
    pub fn check_missing(&mut self, now: Instant, now_unix: u64) -> Vec<(String, u64)> {
        let mut went = Vec::new();
        for screen in self.screens.values_mut() {
            if screen.connections.is_empty()
                && !screen.missing
                && now.saturating_duration_since(screen.since) >= self.missing_after
            {
                screen.missing = true;
                went.push((
                    screen.known.device.clone(),
                    now_unix.saturating_sub(screen.known.last_seen),
                ));
            }
        }
        went.sort();
        went
    }

    /// Forgets a screen (an admin's request); its connections stay open, as anonymous ones.
    pub fn forget(&mut self, device: &str) -> bool {
        self.screens.remove(device).is_some()
    }

    /// What is saved: every screen, online ones as seen `now_unix`.
    pub fn to_save(&self, now_unix: u64) -> Vec<Known> {
        let mut list: Vec<Known> = self
            .screens
            .values()
            .map(|s| {
                let mut known = s.known.clone();
                if !s.connections.is_empty() {
                    known.last_seen = now_unix;
                }
                known
            })
            .collect();
        list.sort_by(|a, b| a.device.cmp(&b.device));
        list
    }

    /// How many screens are in each state.
    pub fn counts(&self) -> [(State, usize); 3] {
        State::ALL.map(|state| (state, self.iter().filter(|s| s.state() == state).count()))
    }

    fn forget_longest_away(&mut self) -> Option<String> {
        let device = self
            .screens
            .values()
            .filter(|s| s.connections.is_empty())
            .min_by_key(|s| (s.known.last_seen, s.known.device.clone()))?
            .known
            .device
            .clone();
        self.screens.remove(&device);
        Some(device)
    }
}

/// A closed connection, as the registry takes it.
#[derive(Debug, Clone, Default)]
pub struct Departure {
    pub device: String,
    pub sid: String,
    /// The transport it ended on (a page starts on polling and upgrades).
    pub transport: String,
    pub subscriptions: Vec<String>,
    pub delivered: u64,
    pub cut_off: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(device: &str) -> Known {
        Known {
            device: device.into(),
            name: None,
            app_version: None,
            token: "screens".into(),
            address: Some("192.0.2.7".into()),
            user_agent: None,
            transport: "websocket".into(),
            protocol: "v4".into(),
            first_seen: 0,
            last_seen: 0,
            subscriptions: Vec::new(),
        }
    }

    fn arrival(device: &str, sid: &str) -> Arrival<u32> {
        Arrival {
            known: known(device),
            sid: sid.into(),
            handle: 0,
        }
    }

    fn departure(device: &str, sid: &str) -> Departure {
        Departure {
            device: device.into(),
            sid: sid.into(),
            ..Departure::default()
        }
    }

    const MISSING_AFTER: Duration = Duration::from_secs(300);

    #[tokio::test(start_paused = true)]
    async fn a_screen_away_for_missing_after_goes_missing_once_and_comes_back() {
        let t0 = Instant::now();
        let mut screens: Screens<u32> = Screens::new(10, MISSING_AFTER, vec![], t0, 1000);
        assert!(screens.connect(arrival("lobby", "a"), t0, 1000).new);
        assert_eq!(screens.get("lobby").map(Screen::state), Some(State::Online));

        screens.disconnect(departure("lobby", "a"), t0, 1000);
        assert_eq!(screens.get("lobby").map(Screen::state), Some(State::Away));
        let almost = t0 + MISSING_AFTER - Duration::from_secs(1);
        assert!(screens.check_missing(almost, 1299).is_empty());
        let later = t0 + MISSING_AFTER;
        assert_eq!(
            screens.check_missing(later, 1300),
            vec![("lobby".to_owned(), 300)]
        );
        assert!(
            screens
                .check_missing(later + MISSING_AFTER, 1600)
                .is_empty(),
            "once"
        );
        assert_eq!(
            screens.get("lobby").map(Screen::state),
            Some(State::Missing)
        );

        let back = screens.connect(arrival("lobby", "b"), later, 1400);
        assert_eq!(back.back_after, Some(400));
        assert!(!back.new);
        let screen = screens.get("lobby").expect("known");
        assert_eq!(screen.state(), State::Online);
        assert_eq!(screen.known.first_seen, 1000);
        assert_eq!(screen.connects_last_hour(1400), 2);
        assert_eq!(screen.connects_last_hour(1000 + HOUR), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_screen_with_two_connections_is_online_until_both_close() {
        let t0 = Instant::now();
        let mut screens: Screens<u32> = Screens::new(10, MISSING_AFTER, vec![], t0, 0);
        screens.connect(arrival("hall", "a"), t0, 0);
        screens.connect(arrival("hall", "b"), t0, 0);
        screens.disconnect(departure("hall", "a"), t0, 5);
        assert_eq!(screens.get("hall").map(Screen::state), Some(State::Online));
        assert!(
            screens
                .check_missing(t0 + MISSING_AFTER * 2, 900)
                .is_empty()
        );
        let mut last = departure("hall", "b");
        last.cut_off = true;
        last.delivered = 42;
        last.subscriptions = vec!["screens".into()];
        screens.disconnect(last, t0, 10);
        let screen = screens.get("hall").expect("known");
        assert_eq!(screen.state(), State::Away);
        assert_eq!(screen.known.last_seen, 10);
        assert_eq!(screen.cut_offs_last_hour(10), 1);
        assert_eq!(screen.delivered_before, 42);
        assert_eq!(screen.known.subscriptions, vec!["screens".to_owned()]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_list_is_bounded_by_forgetting_the_screen_away_longest() {
        let t0 = Instant::now();
        let mut screens: Screens<u32> = Screens::new(3, MISSING_AFTER, vec![], t0, 0);
        for (i, device) in ["a", "b", "c"].into_iter().enumerate() {
            screens.connect(arrival(device, device), t0, i as u64);
        }
        screens.disconnect(departure("b", "b"), t0, 10);
        screens.disconnect(departure("a", "a"), t0, 20);
        let outcome = screens.connect(arrival("d", "d"), t0, 30);
        assert_eq!(outcome.forgotten.as_deref(), Some("b"), "away longest");
        assert_eq!(screens.len(), 3);
        assert!(screens.get("b").is_none());
        assert!(
            screens.get("c").is_some(),
            "online screens are never forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn remembered_screens_have_missing_after_from_the_start_to_come_back() {
        let t0 = Instant::now();
        let mut old = known("kiosk-1");
        old.last_seen = 10; // an hour before the relay started
        let mut screens: Screens<u32> =
            Screens::new(10, MISSING_AFTER, vec![old.clone()], t0, 10 + HOUR);
        assert_eq!(screens.get("kiosk-1").map(Screen::state), Some(State::Away));
        assert!(
            screens
                .check_missing(t0 + Duration::from_secs(60), 10 + HOUR + 60)
                .is_empty()
        );
        let went = screens.check_missing(t0 + MISSING_AFTER, 10 + HOUR + 300);
        assert_eq!(went, vec![("kiosk-1".to_owned(), HOUR + 300)]);
        assert_eq!(screens.to_save(99_999), vec![old]);
    }

    #[tokio::test(start_paused = true)]
    async fn saving_shows_online_screens_as_seen_now_and_forget_removes() {
        let t0 = Instant::now();
        let mut screens: Screens<u32> = Screens::new(10, MISSING_AFTER, vec![], t0, 0);
        screens.connect(arrival("x", "1"), t0, 5);
        assert_eq!(screens.to_save(50)[0].last_seen, 50);
        assert_eq!(screens.counts()[0], (State::Online, 1));
        assert!(screens.forget("x"));
        assert!(!screens.forget("x"));
        // The forgotten screen's connection closing later changes nothing.
        screens.disconnect(departure("x", "1"), t0, 60);
        assert!(screens.is_empty());
    }

    #[test]
    fn a_file_with_more_screens_than_the_limit_keeps_the_most_recent() {
        let t0 = Instant::now();
        let list: Vec<Known> = (0..5)
            .map(|i| Known {
                last_seen: i,
                ..known(&format!("s{i}"))
            })
            .collect();
        let screens: Screens<u32> = Screens::new(2, MISSING_AFTER, list, t0, 100);
        let mut kept: Vec<_> = screens.iter().map(|s| s.known.device.clone()).collect();
        kept.sort();
        assert_eq!(kept, vec!["s3", "s4"]);
    }
}
