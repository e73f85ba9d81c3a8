//! Reading a raw Engine.IO WebSocket in tests, for the checks no Socket.IO client can make.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The next text message, skipping pings and binary ones; panics when none comes within
/// `patience` or the connection ends.
pub async fn next_text<S>(ws: &mut WebSocketStream<S>, patience: Duration) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(patience, ws.next())
            .await
            .expect("a message in time")
            .expect("connection open")
            .expect("a message");
        if let Message::Text(text) = message {
            return text.to_string();
        }
    }
}
