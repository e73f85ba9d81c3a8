//! directus-relay: keeps a bounded mirror of Directus collections and pushes every change to a
//! site's screens over Socket.IO, with the event names of the Directus hook extension.
//!
//! # Layout
//!
//! The data path, from Directus to a screen:
//!
//! ```text
//! Flow webhook ─► upstream::webhook ─┐
//! realtime WS  ─► upstream::websocket├─► hub::ingest ─► hub::deliver ─► Socket.IO rooms ─► kiosks
//! activity log ─► upstream::sync ────┘   (mirror,        (serialise once,     ▲
//!                                         seq, epoch)      replay ring)        │
//!                           kiosk::server (admission) ─► hub::subscribe (ack: replay or snapshot)
//! ```
//!
//! * [`config`]: defaults → TOML file → `RELAY_*` environment, secrets, validation, one file
//!   per job.
//! * [`upstream`]: where changes come from: Flow webhooks ([`upstream::webhook`]; with
//!   `webhook.durable`, through the journal [`upstream::journal`]), Directus's
//!   realtime WebSocket ([`upstream::websocket`]) or polling, all backed by the activity cursor
//!   ([`upstream::sync`]) over a small REST client ([`upstream::directus`]).
//! * [`hub`]: the one task that owns epoch, seq, the mirror and the replay ring; it ingests
//!   changes (`hub/ingest.rs`), delivers events to kiosks (`hub/deliver.rs`), answers
//!   `subscribe` (`hub/subscribe.rs`) and saves its state (`hub/persist.rs`,
//!   [`hub::state_file`]).
//! * [`kiosk`]: the Socket.IO server and who may connect ([`kiosk::server`]); which token may
//!   read what ([`kiosk::access`]); wrong tokens per client address ([`kiosk::throttle`]);
//!   sessions that have not joined yet ([`kiosk::pending`]).
//! * [`http`]: the single HTTP port, its routes and graceful shutdown; the demo kiosk page
//!   (`http/demo.rs`); the built-in scripts, socket.io-client and relay-client.js
//!   ([`http::client_js`]), and the kiosk app of `[site]` (`http/site.rs`), answered first
//!   (`http/local.rs`).
//! * [`connection`]: one accepted connection, its kill switch (a slow kiosk's is closed) and
//!   its header and idle timeouts.
//! * [`connections`]: every open connection: the cap below the descriptor limit, and which one
//!   gives way when it is full.
//! * [`tls`]: HTTPS/WSS for kiosks, the certificate ([`certificate`]) re-read on SIGHUP.
//! * [`report`]: what the hub tells the rest of the relay about itself; [`status_page`]
//!   gathers what the status page shows; [`metrics`]: Prometheus figures.
//! * [`assets`]: the Directus files items reference, prefetched into a bounded disk cache and
//!   served at `/assets/<id>` (`[assets]`), so pictures stay on screen while the uplink is down.
//! * [`systemd`]: readiness, status, watchdog and stopping notifications.
//! * [`clock`]: timestamps, in one place.
//! * [`nesting`]: how deeply JSON taken into the mirror may nest ([`nesting::MAX_NESTING`]),
//!   so that the state file can always be read back.
//!
//! [`run`] wires them together; `main.rs` only parses the command line, loads the config,
//! binds the listener and turns signals into a shutdown token and [`Reload`]s.

pub mod assets;
pub mod atomic_file;
pub mod boot_import;
pub mod certificate;
pub mod clock;
pub mod config;
pub mod connection;
pub mod connections;
pub mod device;
pub mod fleet;
pub mod http;
pub mod hub;
pub mod kiosk;
pub mod kiosk_queue;
pub mod metrics;
pub mod nesting;
pub mod report;
pub mod status_page;
pub mod systemd;
pub mod tls;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

/// Asks a running relay to re-read what it can without a restart: the TLS certificate
/// (`main` triggers it on SIGHUP). Requests made before the relay listens are kept; several
/// in a row count as one.
#[derive(Debug, Clone, Default)]
pub struct Reload(Arc<Notify>);

impl Reload {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.0.notify_one();
    }
}

/// Serves the relay on `listener` until `shutdown` is cancelled, then closes kiosk sessions
/// cleanly, lets in-flight requests finish within `shutdown_grace`, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_reload(config, listener, shutdown, Reload::new()).await
}

/// [`run`], re-reading the TLS certificate whenever `reload` is triggered.
pub async fn run_with_reload(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    reload: Reload,
) -> anyhow::Result<()> {
    let mut config = config;
    let asset_paths = assets::prepare(&mut config).await;
    let config = Arc::new(config);
    let tls = config.tls.as_ref().map(tls::KioskTls::new).transpose()?;
    let metrics = Arc::new(metrics::Metrics::new());
    let tracker = TaskTracker::new();
    let stop_tasks = CancellationToken::new();

    let (hub, inbox) = hub::channel(&config);
    let fleet = fleet::Fleet::new(&config, metrics.clone());
    let (sink, webhooks, journal_inbox) = upstream::webhook_sink(&config, &hub);
    let shared = http::Shared {
        config: config.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        sink,
        fleet: fleet.clone(),
    };
    if let Some(file) = &config.demo.client_file {
        warn!(
            client_file = %file.display(),
            "demo.client_file is ignored: the relay serves its own socket.io-client {} at /socket.io/socket.io.min.js, which /demo loads; remove the key",
            http::client_js::SOCKET_IO_CLIENT_VERSION
        );
    }
    let site = Arc::new(http::Site::new(config.site_dir(), &config.site.path));
    site.announce();
    connections::check_descriptor_limit(&config.limits);
    let (svc, io) =
        kiosk::server::builder(&config.limits).build_with_inner_svc(http::service(shared.clone()));
    let throttle = Arc::new(kiosk::throttle::Throttle::new(&config.clients));
    let assets = assets::Assets::start(
        &config,
        asset_paths,
        metrics.assets.clone(),
        throttle.clone(),
        stop_tasks.clone(),
        &tracker,
    )?;
    let pending = kiosk::pending::PendingSessions::new(
        config.limits.max_pending_sessions(),
        config.limits.join_timeout,
        metrics.sessions_refused.clone(),
    );
    let svc = kiosk::pending::Gate::new(svc, pending);
    kiosk::server::attach(
        &io,
        hub.clone(),
        metrics.clone(),
        throttle.clone(),
        fleet.clone(),
        &config,
    );
    throttle.spawn_summary(stop_tasks.clone(), &tracker);
    fleet.clone().spawn(stop_tasks.clone(), &tracker);
    upstream::heartbeat::spawn(
        &config,
        hub.clone(),
        fleet.clone(),
        metrics.clone(),
        stop_tasks.clone(),
        &tracker,
    );
    let saved = hub::state_file::load(&config.state_dir);
    let resume_cursor = saved.as_ref().and_then(resumable_cursor);
    // With webhook.durable: what was answered 202 after the last state write, replayed below.
    let journal = match journal_inbox {
        None => None,
        Some(inbox) => {
            let upto = saved.as_ref().map_or(0, |s| s.journal);
            let recovered =
                upstream::journal::recover(&config.state_dir, upto).with_context(|| {
                    format!(
                        "cannot read the webhook journal in {} (webhook.durable)",
                        config.state_dir.display()
                    )
                })?;
            let (saved_tx, saved_rx) = tokio::sync::watch::channel(upto);
            Some((inbox, recovered, saved_tx, saved_rx))
        }
    };
    let persistence = hub::Persistence {
        saved,
        writer: Some(hub::state_file::Writer::spawn(
            config.state_dir.clone(),
            metrics.clone(),
            journal.as_ref().map(|j| j.2.clone()),
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
        assets.clone(),
        stop_tasks.clone(),
        &tracker,
    );
    if let Some((inbox, mut recovered, _, saved_rx)) = journal {
        let changes = std::mem::take(&mut recovered.changes);
        if !changes.is_empty() {
            info!(
                changes = changes.len(),
                "replaying webhook changes answered 202 after the last state write"
            );
        }
        for (journal, change) in changes {
            hub.send(hub::Command::Journaled { change, journal })
                .await
                .map_err(|_| anyhow::anyhow!("the hub stopped while the journal was replayed"))?;
        }
        upstream::journal::spawn(
            config.state_dir.clone(),
            recovered,
            inbox,
            hub.clone(),
            saved_rx,
            metrics.clone(),
            stop_tasks.clone(),
            &tracker,
        );
    }
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

    spawn_reloader(reload, tls.clone(), stop_tasks.clone(), &tracker);

    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = http::Server::start(
        listener,
        tls,
        assets::Route::new(
            http::LocalFiles::new(http::Cors::new(svc, config.clients.clone()), site),
            assets,
        ),
        &config.limits,
        &metrics,
    );
    shared.ready.store(true, Ordering::Relaxed);
    info!(%addr, scheme, webhook = %config.webhook.path, "relay listening");
    systemd::ready(&systemd::status_line(&hub, &metrics));

    shutdown.cancelled().await;
    info!("shutting down");
    systemd::stopping();
    shared.ready.store(false, Ordering::Relaxed);
    server.shutdown(&io, config.shutdown_grace).await;
    stop_tasks.cancel();
    tracker.close();
    tracker.wait().await;
    // The hub's last save was the last write: if it failed, what changed since the last good
    // one is lost, and the next start cannot continue the epoch. Say so, and exit non-zero.
    if let Some(problem) = metrics.board.saving().describe() {
        anyhow::bail!(
            "stopped, but the final save failed: {problem}; the next start serves the content of the last good save, in a new epoch"
        );
    }
    info!("stopped");
    Ok(())
}

/// Re-reads the certificate on each reload request; a bad file keeps the previous one.
fn spawn_reloader(
    reload: Reload,
    tls: Option<tls::KioskTls>,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = reload.0.notified() => {}
            }
            match &tls {
                None => info!("reload requested: nothing to reload (no [tls] section)"),
                Some(tls) => match tls.reload() {
                    Ok(()) => info!(
                        cert_file = %tls.cert_file().display(),
                        "reloaded the TLS certificate; new connections use it, connected kiosks stay"
                    ),
                    Err(e) => warn!("kept the previous certificate: {e}"),
                },
            }
        }
    });
}

/// Directus shows activity of the last 30 days only (unlicensed); a saved cursor older than
/// this is not resumed from: the relay reloads every collection instead.
pub const RESUME_WINDOW_SECS: i64 = 25 * 24 * 3600;

fn resumable_cursor(saved: &hub::state_file::Saved) -> Option<u64> {
    let age = clock::unix_now() - saved.saved_unix;
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

    fn saved(age_secs: i64, cursor: Option<u64>) -> hub::state_file::Saved {
        hub::state_file::Saved {
            version: hub::state_file::VERSION,
            epoch: "e".into(),
            seq: 1,
            cursor,
            saved_at: String::new(),
            saved_unix: clock::unix_now() - age_secs,
            clean: true,
            mirror: Default::default(),
            journal: 0,
            ring: Vec::new(),
            lost: Vec::new(),
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
