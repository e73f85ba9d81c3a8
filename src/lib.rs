//! directus-relay: keeps a bounded mirror of Directus collections and pushes every change to a
//! site's screens over Socket.IO, with the event names of the Directus hook extension.
//!
//! # Layout
//!
//! * [`config`]: defaults → TOML file → `RELAY_*` environment, secrets, validation.
//! * [`upstream`]: where changes come from ([`upstream::webhook`]: Directus Flow webhooks).
//! * [`hub`]: the one task that owns epoch, seq, the mirror and the replay ring, and emits.
//! * [`downstream`]: Socket.IO for kiosks ([`downstream::kiosk`]).
//! * [`http`]: the single HTTP port and its graceful shutdown.
//! * [`metrics`]: Prometheus figures.
//! * [`systemd`]: readiness, status, watchdog and stopping notifications.
//!
//! [`run`] wires them together; `main.rs` only parses the command line, loads the config,
//! binds the listener and turns signals into a shutdown token.

pub mod config;
pub mod downstream;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod systemd;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use config::Config;

/// Serves the relay on `listener` until `shutdown` is cancelled, then closes kiosk sessions
/// cleanly, lets in-flight requests finish within `shutdown_grace`, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = Arc::new(metrics::Metrics::new());
    let tracker = TaskTracker::new();
    let stop_tasks = CancellationToken::new();

    let (hub, inbox) = hub::channel(&config);
    let (sink, webhooks) = upstream::webhook_sink(&config, &hub);
    let state = http::AppState {
        config: config.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        sink,
    };
    let (svc, io) = downstream::kiosk::builder(&config.limits)
        .build_with_inner_svc(http::service(state.clone()));
    downstream::kiosk::attach(&io, hub.clone(), metrics.clone(), &config.limits);
    let saved = hub::state::load(&config.state_dir);
    let resume_cursor = saved.as_ref().and_then(resumable_cursor);
    let persistence = hub::Persistence {
        saved,
        writer: Some(hub::state::Writer::spawn(
            config.state_dir.clone(),
            metrics.clone(),
            &tracker,
        )),
    };
    hub::start(
        &hub,
        inbox,
        &config,
        io.clone(),
        metrics.clone(),
        persistence,
        stop_tasks.clone(),
        &tracker,
    );
    systemd::spawn_reporter(hub.clone(), metrics.clone(), stop_tasks.clone(), &tracker);
    upstream::spawn(
        config.clone(),
        hub.clone(),
        metrics.clone(),
        resume_cursor,
        webhooks,
        stop_tasks.clone(),
        &tracker,
    )?;

    let addr = listener.local_addr()?;
    let server = http::Server::start(listener, http::Cors::new(svc, config.clients.clone()));
    state.ready.store(true, Ordering::Relaxed);
    info!(%addr, webhook = %config.webhook.path, "relay listening");
    systemd::ready(&systemd::status_line(&hub, &metrics));

    shutdown.cancelled().await;
    info!("shutting down");
    systemd::stopping();
    state.ready.store(false, Ordering::Relaxed);
    server.shutdown(&io, config.shutdown_grace).await;
    stop_tasks.cancel();
    tracker.close();
    tracker.wait().await;
    info!("stopped");
    Ok(())
}

/// Directus shows activity of the last 30 days only (unlicensed); a saved cursor older than
/// this is not resumed from: the relay reloads every collection instead.
pub const RESUME_WINDOW_SECS: i64 = 25 * 24 * 3600;

fn resumable_cursor(saved: &hub::state::Saved) -> Option<u64> {
    let age = metrics::unix_now() - saved.saved_unix;
    saved.cursor.filter(|_| age < RESUME_WINDOW_SECS)
}

/// `bytes` random bytes from the operating system, as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source failing is unrecoverable and means the system is broken.
    getrandom::fill(&mut buf).expect("the operating system's random source is unavailable");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(age_secs: i64, cursor: Option<u64>) -> hub::state::Saved {
        hub::state::Saved {
            version: hub::state::VERSION,
            epoch: "e".into(),
            seq: 1,
            cursor,
            saved_at: String::new(),
            saved_unix: metrics::unix_now() - age_secs,
            clean: true,
            mirror: Default::default(),
        }
    }

    #[test]
    fn a_saved_cursor_is_resumed_only_inside_the_activity_window() {
        assert_eq!(resumable_cursor(&saved(60, Some(42))), Some(42));
        assert_eq!(
            resumable_cursor(&saved(RESUME_WINDOW_SECS - 60, Some(42))),
            Some(42)
        );
        assert_eq!(
            resumable_cursor(&saved(RESUME_WINDOW_SECS + 60, Some(42))),
            None,
            "older than Directus shows activity: reload instead"
        );
        assert_eq!(resumable_cursor(&saved(60, None)), None);
    }
}
