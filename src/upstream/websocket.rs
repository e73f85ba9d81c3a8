//! Directus's realtime WebSocket: one unfiltered subscription per collection (with the
//! configured `fields` and `limit: 0`), events to the hub at once, the JSON heartbeat answered,
//! and the activity cursor run after every (re)connect and every `reconcile_interval`.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{CollectionConfig, Config, DirectusConfig, MAX_RESPONSE_BYTES};
use crate::hub::event::{Action, CurrentRecords, Key};
use crate::hub::{Command, UpstreamState};
use crate::upstream::sync::{SyncError, Syncer};
use crate::upstream::tls;

/// How long Directus may take to answer the auth frame.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Silence after which the connection counts as dead: Directus pings every 30 s by default.
const SILENCE_LIMIT: Duration = Duration::from_secs(75);

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Why a WebSocket session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("Directus WebSockets: {0}")]
    Socket(String),
    #[error(
        "Directus has WebSockets disabled: set WEBSOCKETS_ENABLED=true in Directus, or use directus.mode = \"poll\""
    )]
    Disabled,
}

/// One connected session: connect, authenticate, subscribe, catch up, then relay events until
/// the connection drops (an error) or `shutdown` (Ok).
pub async fn session(
    syncer: &mut Syncer,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let directus = config.directus.as_ref().ok_or(SessionError::Disabled)?;
    let info = syncer
        .directus
        .server_info()
        .await
        .map_err(SyncError::from)?;
    let path = info.websocket_path.ok_or(SessionError::Disabled)?;
    let url = websocket_url(directus, &path)?;
    let roots = tls::roots(directus.ca_file.as_deref()).map_err(SessionError::Socket)?;
    let connector = Connector::Rustls(tls::client_config(roots, &[]));
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_RESPONSE_BYTES))
        .max_frame_size(Some(MAX_RESPONSE_BYTES));
    let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        Some(ws_config),
        true,
        Some(connector),
    )
    .await
    .map_err(|e| SessionError::Socket(format!("cannot connect to {url}: {e}")))?;
    debug!(%url, "WebSocket connected");

    authenticate(&mut socket, syncer).await?;
    for c in &config.collections {
        let subscribe = json!({
            "type": "subscribe",
            "collection": c.name,
            "uid": c.name,
            "query": {"fields": c.fields, "limit": 0},
        });
        send(&mut socket, &subscribe).await?;
    }
    // Subscribed before catching up: nothing falls between the two.
    syncer.catch_up().await?;
    syncer.reload_unfollowed().await?;
    super::report_upstream(syncer, UpstreamState::Live).await?;
    info!(%url, "following Directus over its WebSocket");

    let collections: HashMap<&str, &CollectionConfig> = config
        .collections
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    let mut reconcile = super::reconcile_timer(directus.reconcile_interval);
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => {
                socket.close(None).await.ok();
                return Ok(());
            }
            _ = reconcile.tick() => {
                syncer.catch_up().await?;
                syncer.reload_unfollowed().await?;
                continue;
            }
            message = tokio::time::timeout(SILENCE_LIMIT, socket.next()) => message,
        };
        let text = match message {
            Err(_) => {
                return Err(SessionError::Socket(format!(
                    "no message from Directus for {SILENCE_LIMIT:?}"
                )));
            }
            Ok(None) => return Err(SessionError::Socket("Directus closed the WebSocket".into())),
            Ok(Some(Err(e))) => return Err(SessionError::Socket(format!("WebSocket error: {e}"))),
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Err(SessionError::Socket(format!(
                    "Directus closed the WebSocket ({frame:?})"
                )));
            }
            Ok(Some(Ok(_))) => continue,
        };
        let Ok(message) = serde_json::from_str::<Value>(text.as_str()) else {
            warn!(
                "Directus sent a WebSocket message that is not JSON; ignored (nothing is lost: the activity-log catch-up covers it)"
            );
            continue;
        };
        match message["type"].as_str() {
            Some("ping") => send(&mut socket, &json!({"type": "pong"})).await?,
            Some("subscription") => {
                if let Some(sync) = to_sync(&message, &collections) {
                    syncer
                        .hub()
                        .send(Command::Sync(sync))
                        .await
                        .map_err(|_| SyncError::Stopped)?;
                }
            }
            Some("auth") if message["status"] == "error" => {
                let code = message["error"]["code"].as_str().unwrap_or_default();
                if code == "TOKEN_EXPIRED" {
                    debug!("Directus says the WebSocket token expired; authenticating again");
                    send_auth(&mut socket, syncer).await?;
                } else {
                    return Err(SessionError::Socket(format!(
                        "Directus refused authentication: {}",
                        message["error"]["message"].as_str().unwrap_or(code)
                    )));
                }
            }
            Some("subscribe") if message["status"] == "error" => {
                return Err(SessionError::Socket(format!(
                    "Directus refused a subscription: {}; the relay's user needs read on every relayed collection",
                    message["error"]["message"]
                        .as_str()
                        .unwrap_or("no reason given")
                )));
            }
            _ => {}
        }
    }
}

fn websocket_url(directus: &DirectusConfig, path: &str) -> Result<url::Url, SessionError> {
    let mut url = directus.url.clone();
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme).map_err(|()| {
        SessionError::Socket(format!("cannot make a WebSocket URL from {}", directus.url))
    })?;
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{base}{path}"));
    Ok(url)
}

/// Sends the auth frame with the current token (refreshing a login session first).
async fn send_auth(socket: &mut Socket, syncer: &mut Syncer) -> Result<(), SessionError> {
    let token = syncer
        .directus
        .access_token()
        .await
        .map_err(SyncError::from)?;
    send(
        socket,
        &json!({"type": "auth", "access_token": token.expose(), "uid": "relay-auth"}),
    )
    .await
}

async fn authenticate(socket: &mut Socket, syncer: &mut Syncer) -> Result<(), SessionError> {
    send_auth(socket, syncer).await?;
    let answer = tokio::time::timeout(AUTH_TIMEOUT, async {
        while let Some(message) = socket.next().await {
            if let Ok(Message::Text(text)) = message {
                let value: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                if value["type"] == "auth" {
                    return Some(value);
                }
            }
        }
        None
    })
    .await
    .map_err(|_| SessionError::Socket("Directus did not answer the auth frame in time".into()))?
    .ok_or_else(|| {
        SessionError::Socket("Directus closed the WebSocket during authentication".into())
    })?;
    if answer["status"] == "ok" {
        Ok(())
    } else {
        Err(SessionError::Socket(format!(
            "Directus refused the token on its WebSocket ({}); check directus.token",
            answer["error"]["code"].as_str().unwrap_or("no code")
        )))
    }
}

async fn send(socket: &mut Socket, message: &Value) -> Result<(), SessionError> {
    socket
        .send(Message::text(message.to_string()))
        .await
        .map_err(|e| SessionError::Socket(format!("cannot send to Directus: {e}")))
}

/// A subscription event as current records for the hub: `create`/`update` carry the items
/// re-read by Directus, `delete` carries keys.
pub fn to_sync(
    message: &Value,
    collections: &HashMap<&str, &CollectionConfig>,
) -> Option<CurrentRecords> {
    let event = message["event"].as_str()?;
    let config = collections.get(message["uid"].as_str()?)?;
    let data = message["data"].as_array()?;
    let (hint, items) = match event {
        "create" | "update" => {
            let hint = if event == "create" {
                Action::Create
            } else {
                Action::Update
            };
            let items = data
                .iter()
                .filter_map(|record| {
                    let key = record.get(&config.key_field).and_then(Key::from_json)?;
                    Some((key, Some(record.clone())))
                })
                .collect();
            (hint, items)
        }
        "delete" => (
            Action::Delete,
            data.iter()
                .filter_map(Key::from_json)
                .map(|k| (k, None))
                .collect(),
        ),
        _ => return None,
    };
    Some(CurrentRecords {
        collection: config.name.clone(),
        items,
        hint,
        complete: false,
        payload: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages captured from Directus 12.4.0 (`ws_capture_subscriptions.jsonl`).
    #[test]
    fn turns_captured_events_into_current_records() {
        let screens = CollectionConfig::new("screens");
        let collections: HashMap<&str, &CollectionConfig> = [("screens", &screens)].into();
        let cases = [
            (
                r#"{"type":"subscription","event":"create","data":[{"id":9,"name":"WS single","status":"draft","sort":null,"date_created":"2026-11-28T17:39:00.036Z","date_updated":null}],"uid":"screens"}"#,
                Action::Create,
                vec!["9"],
                true,
            ),
            (
                r#"{"type":"subscription","event":"update","data":[{"id":10,"status":"draft"},{"id":11,"status":"draft"}],"uid":"screens"}"#,
                Action::Update,
                vec!["10", "11"],
                true,
            ),
            (
                r#"{"type":"subscription","event":"delete","data":["9"],"uid":"screens"}"#,
                Action::Delete,
                vec!["9"],
                false,
            ),
            (
                r#"{"type":"subscription","event":"delete","data":[10,11],"uid":"screens"}"#,
                Action::Delete,
                vec!["10", "11"],
                false,
            ),
        ];
        for (text, hint, keys, with_records) in cases {
            let message: Value = serde_json::from_str(text).expect("JSON");
            let sync = to_sync(&message, &collections).expect("an event");
            assert_eq!(sync.hint, hint, "{text}");
            let got: Vec<&str> = sync.items.iter().map(|(k, _)| k.text.as_str()).collect();
            assert_eq!(got, keys, "{text}");
            assert!(
                sync.items.iter().all(|(_, r)| r.is_some() == with_records),
                "{text}"
            );
        }
        let init: Value = serde_json::from_str(
            r#"{"type":"subscription","event":"init","data":[],"uid":"screens"}"#,
        )
        .expect("JSON");
        assert_eq!(to_sync(&init, &collections), None);
        let other: Value = serde_json::from_str(
            r#"{"type":"subscription","event":"create","data":[{"id":1}],"uid":"elsewhere"}"#,
        )
        .expect("JSON");
        assert_eq!(to_sync(&other, &collections), None);
    }
}
