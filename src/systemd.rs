//! systemd integration: `READY=1`, `STATUS=`, `WATCHDOG=1` while the hub is alive, and
//! `STOPPING=1`. Every call does nothing when the relay does not run under systemd
//! (`NOTIFY_SOCKET` unset).

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::hub::HubHandle;
use crate::metrics::Metrics;

/// How often `STATUS=` is refreshed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        debug!(%e, "could not notify systemd");
    }
}

/// Tells systemd the relay is serving.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the relay is shutting down.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// One line for `systemctl status`.
pub fn status_line(hub: &HubHandle, metrics: &Metrics) -> String {
    let report = hub.report();
    format!(
        "upstream {} since {}; {} kiosks; seq {}",
        report.upstream.as_str(),
        report.since,
        metrics.kiosks_connected.get(),
        report.seq
    )
}

/// Refreshes `STATUS=` and, when systemd asked for a watchdog (`WATCHDOG_USEC`), sends
/// `WATCHDOG=1` at half its period, but only while the hub's loop is alive: a stuck hub stops
/// the pings and systemd restarts the relay.
pub fn spawn_reporter(
    hub: HubHandle,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let watchdog = sd_notify::watchdog_enabled();
    if let Some(period) = watchdog {
        info!(?period, "systemd watchdog enabled");
    }
    let period = watchdog.map_or(STATUS_INTERVAL, |w| (w / 2).min(STATUS_INTERVAL));
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(period);
        let mut last_status = String::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let status = status_line(&hub, &metrics);
            if status != last_status {
                notify(&[NotifyState::Status(&status)]);
                last_status = status;
            }
            if watchdog.is_some() && hub.liveness().is_alive() {
                notify(&[NotifyState::Watchdog]);
            }
        }
    });
}
