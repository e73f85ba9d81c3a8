//! Screens as a fleet: which screen is which (the `device` a kiosk names in its handshake),
//! which one is missing and since when, and commands to one screen or many.
//!
//! The kiosk server tells the fleet when a named kiosk connects and disconnects; the hub counts
//! each connection's deliveries and cut-offs in its [`tally::ScreenTag`]; a task marks screens
//! missing after `clients.missing_after` and saves the list (`screens.json` in `state_dir`, at
//! most once per `persist_interval`, and at shutdown), so a restarted relay still knows which
//! screens to expect. The HTTP API and the status page read [`Fleet::view`] and send
//! [`commands`].

pub mod commands;
pub mod identity;
pub mod screens;
pub mod tally;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::extract::SocketRef;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::connection::ConnectionHandle;
use crate::metrics::{DeviceLabels, Metrics, StateLabels};
use identity::Identity;
use screens::{Arrival, Departure, Known, Screens, State};
use tally::{ScreenTag, Tally};

/// The file the list of screens is saved in, inside `state_dir`.
pub const FILE_NAME: &str = "screens.json";
/// The longest user agent kept of a screen.
const MAX_USER_AGENT_LEN: usize = 200;

#[derive(Debug, Serialize, Deserialize)]
struct SavedScreens {
    version: u32,
    screens: Vec<Known>,
}

/// The known screens, shared by the kiosk server, the HTTP API and the fleet's task.
#[derive(Debug)]
pub struct Fleet {
    screens: Mutex<Screens<SocketRef>>,
    metrics: Arc<Metrics>,
    state_dir: PathBuf,
    persist_interval: Duration,
    missing_after: Duration,
    /// Something worth saving changed since the last save.
    dirty: AtomicBool,
}

impl Fleet {
    /// The fleet, with the screens saved by the last run (a damaged file is set aside and
    /// reported; the relay starts with no screens known).
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Arc<Self> {
        let remembered = load(&config.state_dir);
        if !remembered.is_empty() {
            info!(
                screens = remembered.len(),
                "known screens loaded; each is reported missing if it does not connect within clients.missing_after"
            );
        }
        let fleet = Arc::new(Self {
            screens: Mutex::new(Screens::new(
                config.clients.max_screens,
                config.clients.missing_after,
                remembered,
                Instant::now(),
                now_unix(),
            )),
            metrics,
            state_dir: config.state_dir.clone(),
            persist_interval: config.persist_interval,
            missing_after: config.clients.missing_after,
            dirty: AtomicBool::new(false),
        });
        fleet.update_metrics(&fleet.lock());
        fleet
    }

    fn lock(&self) -> MutexGuard<'_, Screens<SocketRef>> {
        self.screens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kiosk that named its device connected (with the token called `token`).
    pub fn connected(&self, socket: &SocketRef, identity: &Identity, token: &str) {
        let Some(device) = identity.device.clone() else {
            return;
        };
        let parts = socket.req_parts();
        let address = parts
            .extensions
            .get::<ConnectionHandle>()
            .and_then(ConnectionHandle::peer)
            .map(|addr| addr.ip().to_string());
        let user_agent = parts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(MAX_USER_AGENT_LEN).collect());
        let known = Known {
            device: device.clone(),
            name: identity.name.clone(),
            app_version: identity.app_version.clone(),
            token: token.to_owned(),
            address,
            user_agent,
            transport: transport(socket),
            protocol: format!("{:?}", socket.protocol()).to_lowercase(),
            first_seen: 0,
            last_seen: 0,
            subscriptions: Vec::new(),
        };
        socket.extensions.insert(ScreenTag {
            device: device.as_str().into(),
            tally: Arc::new(Tally::default()),
        });
        let arrival = Arrival {
            known,
            sid: socket.id.to_string(),
            handle: socket.clone(),
        };
        let mut screens = self.lock();
        let outcome = screens.connect(arrival, Instant::now(), now_unix());
        if let Some(forgotten) = &outcome.forgotten {
            self.metrics.screen_last_seen.remove(&DeviceLabels {
                device: forgotten.clone(),
            });
            warn!(
                device = %forgotten,
                max = screens.len(),
                "forgot the screen away longest to make room for a new one (clients.max_screens)"
            );
        }
        if let Some(away) = outcome.back_after {
            info!(device, away_secs = away, "missing screen is back");
        } else if outcome.new {
            info!(device, token, "new screen");
        }
        self.dirty.store(true, Ordering::Relaxed);
        self.update_counts(&screens);
        self.set_last_seen(&device, now_unix());
    }

    /// A kiosk's connection closed; nothing to do unless it named its device.
    pub fn disconnected(&self, socket: &SocketRef) {
        let Some(tag) = socket.extensions.get::<ScreenTag>() else {
            return;
        };
        let departure = Departure {
            device: tag.device.to_string(),
            sid: socket.id.to_string(),
            transport: transport(socket),
            subscriptions: rooms(socket),
            delivered: tag.tally.delivered_so_far(),
            cut_off: tag.tally.was_cut_off(),
        };
        let device = departure.device.clone();
        let mut screens = self.lock();
        screens.disconnect(departure, Instant::now(), now_unix());
        self.dirty.store(true, Ordering::Relaxed);
        self.update_counts(&screens);
        if let Some(screen) = screens.get(&device) {
            self.set_last_seen(&device, screen.known.last_seen);
        }
    }

    /// Forgets a screen (an admin's request). Its open connections stay open.
    pub fn forget(&self, device: &str) -> bool {
        let mut screens = self.lock();
        let forgotten = screens.forget(device);
        if forgotten {
            self.metrics.screen_last_seen.remove(&DeviceLabels {
                device: device.to_owned(),
            });
            info!(device, "screen forgotten by the admin");
            self.dirty.store(true, Ordering::Relaxed);
            self.update_counts(&screens);
        }
        forgotten
    }

    /// Whether the relay knows `device`, and its open connections (one socket per namespace).
    pub fn connections(&self, device: &str) -> Option<Vec<SocketRef>> {
        let screens = self.lock();
        let screen = screens.get(device)?;
        Some(
            screen
                .connections
                .iter()
                .map(|c| c.handle.clone())
                .collect(),
        )
    }

    /// One open connection of every online screen that `select` accepts (its token name and
    /// rooms), by device.
    pub fn online_where(
        &self,
        select: impl Fn(&str, &[String]) -> bool,
    ) -> Vec<(String, SocketRef)> {
        let screens = self.lock();
        let mut chosen: Vec<(String, SocketRef)> = screens
            .iter()
            .filter_map(|screen| {
                let first = screen.connections.first()?;
                let rooms: Vec<String> = screen
                    .connections
                    .iter()
                    .flat_map(|c| rooms(&c.handle))
                    .collect();
                select(&screen.known.token, &rooms)
                    .then(|| (screen.known.device.clone(), first.handle.clone()))
            })
            .collect();
        chosen.sort_by(|a, b| a.0.cmp(&b.0));
        chosen
    }

    /// How many screens are online, and the devices of those missing (sorted): what the
    /// heartbeat row says, without the whole view.
    pub fn summary(&self) -> (usize, Vec<String>) {
        let screens = self.lock();
        let online = screens
            .iter()
            .filter(|s| s.state() == State::Online)
            .count();
        let mut missing: Vec<String> = screens
            .iter()
            .filter(|s| s.state() == State::Missing)
            .map(|s| s.known.device.clone())
            .collect();
        missing.sort();
        (online, missing)
    }

    /// Every known screen for the status page and `GET /api/screens`: missing ones first, then
    /// away, then online, each by device id.
    pub fn view(&self) -> Value {
        let now = now_unix();
        let screens = self.lock();
        let mut list: Vec<(State, &str, Value)> = screens
            .iter()
            .map(|screen| {
                let state = screen.state();
                let live = screen.connections.first().map(|c| &c.handle);
                let delivered = screen.delivered_before
                    + screen
                        .connections
                        .iter()
                        .filter_map(|c| c.handle.extensions.get::<ScreenTag>())
                        .map(|tag| tag.tally.delivered_so_far())
                        .sum::<u64>();
                let subscriptions: Vec<String> = if screen.connections.is_empty() {
                    screen.known.subscriptions.clone()
                } else {
                    screen
                        .connections
                        .iter()
                        .flat_map(|c| rooms(&c.handle))
                        .collect()
                };
                let k = &screen.known;
                let entry = json!({
                    "device": k.device,
                    "name": k.name,
                    "state": state,
                    "since": screen.since_unix,
                    "token": k.token,
                    "address": k.address,
                    "user_agent": k.user_agent,
                    "transport": live.map_or_else(|| k.transport.clone(), transport),
                    "protocol": k.protocol,
                    "app_version": k.app_version,
                    "first_seen": k.first_seen,
                    "last_seen": if live.is_some() { now } else { k.last_seen },
                    "subscriptions": subscriptions,
                    "connections": screen.connections.len(),
                    "queue": live.map(crate::kiosk_queue::queue_depth),
                    "queue_full": live.map(crate::kiosk_queue::queue_full),
                    "delivered": delivered,
                    "cut_offs_last_hour": screen.cut_offs_last_hour(now),
                    "connects_last_hour": screen.connects_last_hour(now),
                });
                (state, k.device.as_str(), entry)
            })
            .collect();
        let order = |s: &State| match s {
            State::Missing => 0,
            State::Away => 1,
            State::Online => 2,
        };
        list.sort_by(|a, b| order(&a.0).cmp(&order(&b.0)).then(a.1.cmp(b.1)));
        let counts = screens.counts();
        let named: usize = screens.iter().map(|s| s.connections.len()).sum();
        let anonymous = usize::try_from(self.metrics.kiosks_connected.get())
            .unwrap_or(0)
            .saturating_sub(named);
        let count = |state: State| counts.iter().find(|c| c.0 == state).map_or(0, |c| c.1);
        json!({
            "missing_after_secs": self.missing_after.as_secs(),
            "online": count(State::Online),
            "away": count(State::Away),
            "missing": count(State::Missing),
            "anonymous_connections": anonymous,
            "screens": list.into_iter().map(|(_, _, v)| v).collect::<Vec<_>>(),
        })
    }

    /// Checks for missing screens every few seconds and saves the list when it changed, at
    /// most once per `persist_interval`; saves once more when `stop` is cancelled.
    pub fn spawn(self: Arc<Self>, stop: CancellationToken, tracker: &TaskTracker) {
        let check_every =
            (self.missing_after / 10).clamp(Duration::from_secs(1), Duration::from_secs(5));
        tracker.spawn(async move {
            let mut check = tokio::time::interval(check_every);
            let mut save = tokio::time::interval(self.persist_interval);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = check.tick() => self.check_missing(),
                    _ = save.tick() => self.save_if_changed().await,
                }
            }
            self.save_if_changed().await;
        });
    }

    fn check_missing(&self) {
        let mut screens = self.lock();
        let went = screens.check_missing(Instant::now(), now_unix());
        for (device, away) in &went {
            warn!(
                device,
                away_secs = away,
                "screen missing: not connected for clients.missing_after"
            );
        }
        // Online screens' last-seen gauges follow the clock.
        self.update_metrics(&screens);
    }

    async fn save_if_changed(&self) {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let saved = SavedScreens {
            version: 1,
            screens: self.lock().to_save(now_unix()),
        };
        let dir = self.state_dir.clone();
        let result = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
            crate::atomic_file::write(&dir, FILE_NAME, &bytes)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        if let Err(e) = result {
            self.dirty.store(true, Ordering::Relaxed);
            warn!(
                error = %e,
                dir = %self.state_dir.display(),
                "cannot save the list of known screens; it is tried again every persist_interval"
            );
        }
    }

    /// Every figure: the counts by state, and each screen's last-seen time (online: now). At
    /// start and on every check for missing screens; a connect or disconnect changes only its
    /// own screen's.
    fn update_metrics(&self, screens: &Screens<SocketRef>) {
        self.update_counts(screens);
        let now = now_unix();
        for screen in screens.iter() {
            let seen = if screen.connections.is_empty() {
                screen.known.last_seen
            } else {
                now
            };
            self.set_last_seen(&screen.known.device, seen);
        }
    }

    fn update_counts(&self, screens: &Screens<SocketRef>) {
        for (state, n) in screens.counts() {
            self.metrics
                .screens
                .get_or_create(&StateLabels {
                    state: state.label().to_owned(),
                })
                .set(n as i64);
        }
    }

    fn set_last_seen(&self, device: &str, unix: u64) {
        self.metrics
            .screen_last_seen
            .get_or_create(&DeviceLabels {
                device: device.to_owned(),
            })
            .set(unix as i64);
    }
}

/// Unix seconds now.
fn now_unix() -> u64 {
    u64::try_from(crate::clock::unix_now()).unwrap_or(0)
}

/// The transport a socket uses now: `polling` or `websocket`.
fn transport(socket: &SocketRef) -> String {
    format!("{:?}", socket.transport_type()).to_lowercase()
}

/// The rooms a socket is in, as the status page names them.
fn rooms(socket: &SocketRef) -> Vec<String> {
    let mut rooms: Vec<String> = socket.rooms().into_iter().map(|r| r.to_string()).collect();
    rooms.sort();
    rooms
}

/// The screens saved by the last run; none when there is no file or it cannot be read.
fn load(dir: &std::path::Path) -> Vec<Known> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the list of known screens; starting with none");
            return Vec::new();
        }
    };
    match serde_json::from_slice::<SavedScreens>(&bytes) {
        Ok(saved) => saved
            .screens
            .into_iter()
            .filter(|k| crate::device::is_device_id(&k.device))
            .collect(),
        Err(e) => {
            let aside = dir.join(format!("{FILE_NAME}.corrupt-{}", now_unix()));
            let moved = std::fs::rename(&path, &aside).is_ok();
            warn!(
                path = %path.display(),
                error = %e,
                set_aside = moved,
                "the list of known screens is damaged; it was set aside and the relay starts with no screens known"
            );
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_list_is_set_aside_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).is_empty());
        std::fs::write(dir.path().join(FILE_NAME), b"{\"version\":1,\"scr").expect("write");
        assert!(load(dir.path()).is_empty());
        assert!(!dir.path().join(FILE_NAME).exists(), "set aside");
        let saved = SavedScreens {
            version: 1,
            screens: vec![Known {
                device: "lobby".into(),
                name: Some("Lobby".into()),
                app_version: None,
                token: "screens".into(),
                address: None,
                user_agent: None,
                transport: "websocket".into(),
                protocol: "v4".into(),
                first_seen: 1,
                last_seen: 2,
                subscriptions: vec!["screens".into()],
            }],
        };
        crate::atomic_file::write(
            dir.path(),
            FILE_NAME,
            &serde_json::to_vec(&saved).expect("json"),
        )
        .expect("write");
        assert_eq!(load(dir.path()), saved.screens);
    }
}
