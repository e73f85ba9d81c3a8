//! Where changes come from: Directus Flow webhooks, Directus's realtime WebSocket, or polling of
//! its activity log — with the activity cursor behind all of them.
//!
//! * [`webhook`]: the Flow webhook receiver.
//! * [`directus`]: the REST client; [`tls`]: rustls with ring and built-in roots.
//! * [`sync`]: start-up load and the activity cursor.
//! * [`websocket`]: Directus's realtime subscriptions.
//! * [`journal`]: with `webhook.durable`, the journal that makes a 202 mean "on disk".
//! * [`backoff`]: reconnect pacing.
//! * [`check`], [`flow`]: the `check` and `setup-flow` commands.

pub mod backoff;
pub mod check;
pub mod directus;
pub mod flow;
pub mod heartbeat;
pub mod journal;
pub mod sync;
pub mod tls;
pub mod webhook;
pub mod websocket;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, Mode};
use crate::hub::event::Change;
use crate::hub::{Command, HubHandle, UpstreamState};
use backoff::Backoff;
use directus::Directus;
use sync::{SyncError, Syncer};
use websocket::SessionError;

/// Webhook changes waiting for the upstream to re-read their items.
type Webhooks = Option<mpsc::Receiver<Change>>;

/// Where the webhook receiver sends changes: with a Directus in webhook mode, to the upstream
/// (which re-reads each item for its full record), bounded by `limits.hub_inbox`; with
/// `webhook.durable`, to the journal (whose inbox is returned, for [`journal::spawn`]); else to
/// the hub.
pub fn webhook_sink(
    config: &Config,
    hub: &HubHandle,
) -> (webhook::Sink, Webhooks, Option<journal::JournalInbox>) {
    match &config.directus {
        Some(d) if d.mode == Mode::Webhook => {
            let (tx, rx) = mpsc::channel(config.limits.hub_inbox);
            (webhook::Sink::Upstream(tx), Some(rx), None)
        }
        _ if config.webhook.durable => {
            let (handle, inbox) = journal::channel(config.limits.hub_inbox);
            (webhook::Sink::Journal(handle), None, Some(inbox))
        }
        _ => (webhook::Sink::Hub(hub.clone()), None, None),
    }
}

/// Starts following Directus in the configured mode, if `[directus]` is configured.
pub fn spawn(
    config: Arc<Config>,
    hub: HubHandle,
    metrics: Arc<crate::metrics::Metrics>,
    resume_cursor: Option<u64>,
    webhooks: Webhooks,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let Some(directus) = &config.directus else {
        return Ok(());
    };
    let client = Directus::new(directus).map_err(|e| anyhow::anyhow!("directus: {e}"))?;
    info!(url = %directus.url, mode = ?directus.mode, "following Directus");
    let syncer = Syncer::new(client, &config, hub, metrics, resume_cursor);
    tracker.spawn(supervise(syncer, config, webhooks, shutdown));
    Ok(())
}

async fn supervise(
    mut syncer: Syncer,
    config: Arc<Config>,
    mut webhooks: Webhooks,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new();
    let mut started = false;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = run_once(&mut syncer, &config, webhooks.as_mut(), &shutdown, &mut started, &mut backoff) => result,
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
            .send(Command::Upstream(UpstreamState::Offline))
            .await
            .is_err()
        {
            return;
        }
        // While Directus is away, webhooks still reach kiosks as sent.
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut sleep => break,
                Some(change) = next_webhook(webhooks.as_mut()) => {
                    if syncer.hub().apply(change).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn next_webhook(webhooks: Option<&mut mpsc::Receiver<Change>>) -> Option<Change> {
    match webhooks {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn run_once(
    syncer: &mut Syncer,
    config: &Config,
    mut webhooks: Option<&mut mpsc::Receiver<Change>>,
    shutdown: &CancellationToken,
    started: &mut bool,
    backoff: &mut Backoff,
) -> Result<(), SessionError> {
    let Some(directus) = &config.directus else {
        return Ok(());
    };
    report_upstream(syncer, UpstreamState::CatchingUp).await?;
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
            report_upstream(syncer, UpstreamState::Live).await?;
            let mut reconcile = reconcile_timer(directus.reconcile_interval);
            // An interval, not a sleep per turn: the reconcile tick must not push polls back.
            let mut poll = reconcile_timer(directus.poll_interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = poll.tick() => {
                        syncer.catch_up().await?;
                    }
                    _ = reconcile.tick() => syncer.reload_unfollowed().await?,
                }
            }
        }
        Mode::Webhook => {
            report_upstream(syncer, UpstreamState::Live).await?;
            let mut reconcile = reconcile_timer(directus.reconcile_interval);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    Some(change) = next_webhook(webhooks.as_deref_mut()) => {
                        syncer.reread(change).await?;
                        // Take whatever else arrived meanwhile, then run the cursor.
                        while let Some(more) = webhooks.as_deref_mut().and_then(|rx| rx.try_recv().ok()) {
                            syncer.reread(more).await?;
                        }
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

/// Ticks every `period`, the first time one period from now.
fn reconcile_timer(period: std::time::Duration) -> tokio::time::Interval {
    tokio::time::interval_at(tokio::time::Instant::now() + period, period)
}

/// Tells the hub the upstream's state; an error only when the hub has stopped.
async fn report_upstream(syncer: &Syncer, state: UpstreamState) -> Result<(), SessionError> {
    syncer
        .hub()
        .send(Command::Upstream(state))
        .await
        .map_err(|_| SessionError::Sync(SyncError::Stopped))
}
