//! Where changes come from: Directus Flow webhooks, Directus's realtime WebSocket, or polling of
//! its activity log — with the activity cursor behind all of them.
//!
//! * [`webhook`]: the Flow webhook receiver.
//! * [`directus`]: the REST client; [`tls`]: rustls with ring and built-in roots.
//! * [`sync`]: start-up load and the activity cursor.
//! * [`websocket`]: Directus's realtime subscriptions.
//! * [`backoff`]: reconnect pacing.

pub mod backoff;
pub mod directus;
pub mod sync;
pub mod tls;
pub mod webhook;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, Mode};
use crate::hub::{Command, HubHandle, Upstream};
use backoff::Backoff;
use directus::Directus;
use sync::{SyncError, Syncer};
use websocket::SessionError;

/// After a webhook, how long the relay waits for more before it runs the cursor: a batch
/// write sends one webhook per item.
pub const KICK_DEBOUNCE: Duration = Duration::from_millis(200);

/// Starts following Directus in the configured mode, if `[directus]` is configured. `kick`
/// is notified by the webhook receiver after each accepted change.
pub fn spawn(
    config: Arc<Config>,
    hub: HubHandle,
    kick: Arc<Notify>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let Some(directus) = &config.directus else {
        return Ok(());
    };
    let client = Directus::new(directus).map_err(|e| anyhow::anyhow!("directus: {e}"))?;
    info!(url = %directus.url, mode = ?directus.mode, "following Directus");
    let syncer = Syncer::new(client, &config, hub);
    tracker.spawn(supervise(syncer, config, kick, shutdown));
    Ok(())
}

async fn supervise(
    mut syncer: Syncer,
    config: Arc<Config>,
    kick: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new();
    let mut started = false;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = run_once(&mut syncer, &config, &kick, &shutdown, &mut started, &mut backoff) => result,
        };
        if shutdown.is_cancelled() {
            return;
        }
        let error = match result {
            Ok(()) => return,
            Err(SessionError::Sync(SyncError::Stopped)) => return,
            Err(e) => e,
        };
        let wait = backoff.next_wait();
        warn!(%error, retry_in = ?wait, "Directus is unavailable; kiosks keep the last known content");
        if syncer
            .hub()
            .send(Command::Upstream(Upstream::Offline))
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn run_once(
    syncer: &mut Syncer,
    config: &Config,
    kick: &Notify,
    shutdown: &CancellationToken,
    started: &mut bool,
    backoff: &mut Backoff,
) -> Result<(), SessionError> {
    let Some(directus) = &config.directus else {
        return Ok(());
    };
    state(syncer, Upstream::CatchingUp).await?;
    if *started {
        syncer.catch_up().await?;
        syncer.reload_unfollowed().await?;
    } else {
        syncer.start().await?;
        *started = true;
    }
    backoff.reset();
    match directus.mode {
        Mode::Websocket => websocket::session(syncer, config, shutdown).await,
        Mode::Poll => {
            state(syncer, Upstream::Live).await?;
            let mut reconcile = tokio::time::interval(directus.reconcile_interval);
            reconcile.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(directus.poll_interval) => {
                        syncer.catch_up().await?;
                    }
                    _ = reconcile.tick() => syncer.reload_unfollowed().await?,
                }
            }
        }
        Mode::Webhook => {
            state(syncer, Upstream::Live).await?;
            let mut reconcile = tokio::time::interval(directus.reconcile_interval);
            reconcile.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = kick.notified() => {
                        tokio::time::sleep(KICK_DEBOUNCE).await;
                        syncer.catch_up().await?;
                    }
                    _ = reconcile.tick() => {
                        syncer.catch_up().await?;
                        syncer.reload_unfollowed().await?;
                    }
                }
            }
        }
    }
}

async fn state(syncer: &Syncer, state: Upstream) -> Result<(), SessionError> {
    syncer
        .hub()
        .send(Command::Upstream(state))
        .await
        .map_err(|_| SessionError::Sync(SyncError::Stopped))
}
