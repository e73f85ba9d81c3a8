//! Engine.IO sessions that have not joined a namespace yet, and their limit
//! (`limits.max_pending_sessions`).
//!
//! A session costs memory from the handshake on (about 11 KiB), before any token is checked,
//! and a kiosk is counted by `limits.max_clients` only once it joins. So every request that
//! opens a session (a `/socket.io/` request without `sid`) takes a [`PendingSession`] first, or
//! is answered `503` when `max_pending_sessions` are open. The permit travels in the request's
//! extensions, which engineioxide keeps with the session for as long as it lives: it is given
//! back when the session joins a namespace (the kiosk is then counted by `max_clients`), or when
//! the session is gone, whichever comes first. A session that does not join is closed by
//! socketioxide after `limits.join_timeout` (a socket.io-client 2 session, which joins `/` at
//! its handshake, is closed by the Engine.IO heartbeat instead when it is refused). So at most
//! `max_clients + max_pending_sessions` sessions exist at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use socketioxide::extract::SocketRef;
use tracing::debug;

use crate::connection::{detach_head, opens_session};
use prometheus_client::metrics::counter::Counter;

/// What a refused session opener reads.
pub const FULL_MESSAGE: &str = "too many new Socket.IO sessions at once (limits.max_pending_sessions); try again in a few seconds\n";

/// The count of sessions that have not joined a namespace, against its limit.
#[derive(Debug)]
pub struct PendingSessions {
    open: AtomicUsize,
    max: usize,
    retry_after: String,
    /// `relay_sessions_refused_total`.
    refused: Counter,
}

impl PendingSessions {
    /// `join_timeout` is how long a pending session may live: the `Retry-After` of a refusal.
    /// Each refusal counts in `refused`.
    pub fn new(max: usize, join_timeout: Duration, refused: Counter) -> Arc<Self> {
        let seconds = join_timeout.as_secs_f64().ceil().max(1.0) as u64;
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            retry_after: seconds.to_string(),
            refused,
        })
    }

    /// Sessions open that have not joined a namespace.
    pub fn len(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A permit for one more session, unless `max` are pending.
    pub fn try_open(self: &Arc<Self>) -> Option<PendingSession> {
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()?;
        Some(PendingSession(Arc::new(Permit {
            sessions: self.clone(),
            joined: AtomicBool::new(false),
        })))
    }
}

/// One session counted as pending until it joins a namespace or is gone. Cloneable because
/// request extensions are; the clones share the one count.
#[derive(Debug, Clone)]
pub struct PendingSession(Arc<Permit>);

#[derive(Debug)]
struct Permit {
    sessions: Arc<PendingSessions>,
    joined: AtomicBool,
}

impl PendingSession {
    /// The session joined a namespace: from now on it counts as a kiosk.
    pub fn joined(&self) {
        if !self.0.joined.swap(true, Ordering::SeqCst) {
            self.0.sessions.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !*self.joined.get_mut() {
            self.sessions.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Marks the session of a kiosk that was admitted to a namespace as joined.
pub fn joined(socket: &SocketRef) {
    if let Some(pending) = socket.req_parts().extensions.get::<PendingSession>() {
        pending.joined();
    }
}

/// The service in front of Socket.IO that gives every session opener its permit, or a `503`.
#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    sessions: Arc<PendingSessions>,
}

impl<S> Gate<S> {
    pub fn new(inner: S, sessions: Arc<PendingSessions>) -> Self {
        Self { inner, sessions }
    }
}

type Refusal = Full<Bytes>;

impl<S, B, RB> hyper::service::Service<Request<B>> for Gate<S>
where
    S: hyper::service::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Either<RB, Refusal>>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut req: Request<B>) -> Self::Future {
        if opens_session(req.uri()) {
            match self.sessions.try_open() {
                Some(permit) => {
                    req.extensions_mut().insert(permit);
                    detach_head(&mut req);
                }
                None => {
                    self.sessions.refused.inc();
                    debug!(
                        max_pending_sessions = self.sessions.max,
                        "refused a new Socket.IO session"
                    );
                    let refusal = refusal(&self.sessions.retry_after);
                    return Box::pin(async move { Ok(refusal) });
                }
            }
        }
        let answer = self.inner.call(req);
        Box::pin(async move { Ok(answer.await?.map(Either::Left)) })
    }
}

fn refusal<RB>(retry_after: &str) -> Response<Either<RB, Refusal>> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        FULL_MESSAGE.as_bytes(),
    ))));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(value) = header::HeaderValue::from_str(retry_after) {
        headers.insert(header::RETRY_AFTER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_counts_until_it_joins_or_is_gone() {
        let sessions = PendingSessions::new(2, Duration::from_millis(200), Counter::default());
        assert_eq!(sessions.retry_after, "1");
        let first = sessions.try_open().expect("room");
        let second = sessions.try_open().expect("room");
        assert!(sessions.try_open().is_none(), "two pending at most");
        let copy = first.clone();
        copy.joined();
        first.joined();
        assert_eq!(sessions.len(), 1, "joined once, counted once");
        drop(copy);
        drop(first);
        assert_eq!(
            sessions.len(),
            1,
            "a joined session is not given back twice"
        );
        drop(second);
        assert!(sessions.is_empty());
    }
}
