//! The body every HTTP route answers with: bytes already in memory, or a file streamed chunk by
//! chunk (from disk or through from Directus) without holding it whole.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tokio::sync::mpsc;

/// Held by a streamed body: its connection is busy, not idle, until the body is sent.
pub type Busy = Option<crate::connection::Busy>;

/// A response body: in memory, or streamed; a read error mid-way ends the connection.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A body of bytes in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// No body (`HEAD`, 304).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body fed chunk by chunk through a bounded channel: the sender waits while the client has
/// not read what was sent, so memory stays at the channel's few chunks.
/// `busy` keeps the connection from counting as idle until the body is sent.
pub fn channel(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>, busy: Busy) -> Body {
    let stream = futures_util::stream::unfold((rx, busy), |(mut rx, busy)| async move {
        let next = rx.recv().await?;
        Some((next.map(http_body::Frame::data), (rx, busy)))
    });
    StreamBody::new(stream).boxed_unsync()
}
