//! One accepted connection (TCP, or TLS over TCP) and its kill switch.
//!
//! The accept loop wraps every connection's IO in [`Killable`] and tags every request read from
//! it with a [`ConnectionHandle`] (a request extension). socketioxide keeps the parts of the
//! request that opened a kiosk's session, so the hub can later close that kiosk's transport
//! with [`close_transport`]: the kiosk sees its connection drop (not a Socket.IO disconnect,
//! after which socket.io-client would not reconnect by itself), reconnects and resumes, and the
//! packets queued for it are freed at once.
//!
//! Which connection carries a session's WebSocket:
//! * a kiosk that connected with WebSocket directly: the upgrade request is the one
//!   socketioxide keeps, so its handle is the right one;
//! * a kiosk that started on long-polling and upgraded: socketioxide keeps the first polling
//!   request, from another connection. The WebSocket upgrade request
//!   (`?transport=websocket&sid=…`) registers its connection under the session id in
//!   [`Upgrades`], where [`close_transport`] finds it;
//! * a kiosk still on long-polling has no connection of its own to close: `close_transport`
//!   returns `false` and the caller falls back to a Socket.IO disconnect.
//!
//! The handle also knows whether its connection is busy (a request in flight, a long-poll
//! included), idle since when, and whether it became a WebSocket: [`ConnectionHandle::idle_out`]
//! closes a connection that sent no request head within `limits.header_timeout`, or carried no
//! request for `limits.idle_timeout`, and `connections.rs` picks the one idle the longest
//! when the connections are at their cap.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Request;
use socketioxide::TransportType;
use socketioxide::extract::SocketRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::{LOOPBACK_SEND_BUFFER, SEND_BUFFER};

/// Connections that carry an upgraded WebSocket, remembered at once. More than a relay serves;
/// past it a cut-off kiosk that upgraded from polling gets a Socket.IO disconnect instead.
pub const MAX_UPGRADED: usize = 65_536;

/// Sets an accepted connection's kernel send buffer to [`SEND_BUFFER`], or to
/// [`LOOPBACK_SEND_BUFFER`] for a peer on this machine. Best effort: on failure the kernel's
/// default stays.
pub fn limit_send_buffer(stream: &TcpStream, peer: SocketAddr) {
    let size = match peer.ip().is_loopback() {
        true => LOOPBACK_SEND_BUFFER,
        false => SEND_BUFFER,
    };
    socket2::SockRef::from(stream)
        .set_send_buffer_size(size)
        .ok();
}

/// The path under which Socket.IO is served.
const SOCKET_IO_PATH: &str = "/socket.io";

/// What a request knows about the connection it came on; cloned into every request's
/// extensions by [`Tagged`].
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    switch: Arc<Switch>,
    upgrades: Arc<Upgrades>,
    /// The client's address, as the accept loop saw it.
    peer: Option<SocketAddr>,
}

/// The connection's kill switch, shared by every request it carries.
#[derive(Debug)]
struct Switch {
    kill: CancellationToken,
    /// Set before `kill` is cancelled: what every read and write checks (an atomic load, where
    /// the token's own check takes its mutex).
    closed: AtomicBool,
    /// The session id this connection registered under in [`Upgrades`].
    upgraded: Mutex<Option<String>>,
    activity: Mutex<Activity>,
    /// Bytes handed to the operating system so far: how far a kiosk has read what it was
    /// sent (the hub's snapshot budget watches it).
    written: AtomicU64,
}

/// What a connection is doing, for its timeouts and for the cap on connections.
#[derive(Debug, Clone, Copy)]
struct Activity {
    /// Requests being answered (several with HTTP/2); a long-poll counts until answered.
    in_flight: usize,
    /// When the connection was accepted, or its last request was answered.
    since: Instant,
    /// Whether any request was read: before the first, `header_timeout` applies.
    served: bool,
    /// Answered `101 Switching Protocols`: a kiosk's WebSocket, which lives by Engine.IO's
    /// heartbeat.
    websocket: bool,
}

impl ConnectionHandle {
    pub fn new(upgrades: Arc<Upgrades>) -> Self {
        Self {
            switch: Arc::new(Switch {
                kill: CancellationToken::new(),
                closed: AtomicBool::new(false),
                upgraded: Mutex::new(None),
                activity: Mutex::new(Activity {
                    in_flight: 0,
                    since: Instant::now(),
                    served: false,
                    websocket: false,
                }),
                written: AtomicU64::new(0),
            }),
            upgrades,
            peer: None,
        }
    }

    /// The same handle, knowing the client's address (what kiosk admission throttles by).
    pub fn with_peer(self, peer: SocketAddr) -> Self {
        Self {
            peer: Some(peer),
            ..self
        }
    }

    /// The client's address; `None` for a connection accepted outside [`crate::http::Server`].
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.switch
            .activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the header timeout from now (after a TLS handshake, which has its own).
    pub fn start_clock(&self) {
        self.activity().since = Instant::now();
    }

    /// Since when the connection has been idle: `None` while a request is in flight or once
    /// it carries a WebSocket.
    pub fn idle_since(&self) -> Option<Instant> {
        let activity = self.activity();
        (activity.in_flight == 0 && !activity.websocket).then_some(activity.since)
    }

    /// Returns once the connection has sent no request head within `header` of being
    /// accepted, or has carried no request for `idle` since its last answer; never while a
    /// request is in flight or once it carries a WebSocket. The caller closes it.
    pub async fn idle_out(&self, header: Duration, idle: Duration) {
        loop {
            let next = {
                let activity = self.activity();
                let limit = if activity.served { idle } else { header };
                if activity.in_flight > 0 || activity.websocket {
                    // Checked again when it may have ended; answering resets `since`.
                    Instant::now() + idle.min(header)
                } else if activity.since.elapsed() >= limit {
                    return;
                } else {
                    activity.since + limit
                }
            };
            tokio::time::sleep_until(next.into()).await;
        }
    }

    /// Keeps the connection from counting as idle until the guard is dropped: for an answer
    /// whose body is still being sent once its head is out (a file streamed to a slow
    /// screen), which the request alone does not cover.
    pub fn busy(&self) -> Busy {
        Busy {
            _in_flight: self.request_started(),
        }
    }

    fn request_started(&self) -> InFlight {
        let mut activity = self.activity();
        activity.in_flight += 1;
        activity.served = true;
        InFlight {
            connection: self.clone(),
            websocket: false,
        }
    }

    /// Closes the connection: reads and writes fail from now on, and the socket is reset
    /// rather than left to drain what the peer does not read.
    pub fn close(&self) {
        self.switch.closed.store(true, Ordering::Release);
        self.switch.kill.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.switch.closed.load(Ordering::Acquire)
    }

    fn same(&self, other: &ConnectionHandle) -> bool {
        Arc::ptr_eq(&self.switch, &other.switch)
    }
}

/// Connections that carry a WebSocket upgraded from a polling session, by session id. An
/// entry lives as long as its connection: [`Killable`] removes it when dropped.
#[derive(Debug, Default)]
pub struct Upgrades {
    by_sid: Mutex<HashMap<String, ConnectionHandle>>,
}

impl Upgrades {
    fn register(&self, sid: &str, connection: &ConnectionHandle) {
        let mut by_sid = self.by_sid.lock().unwrap_or_else(|e| e.into_inner());
        // First come, first kept: a live entry is not replaced by another connection naming
        // the same session.
        if let Some(existing) = by_sid.get(sid)
            && !existing.is_closed()
        {
            return;
        }
        if by_sid.len() >= MAX_UPGRADED && !by_sid.contains_key(sid) {
            return;
        }
        let mut upgraded = connection
            .switch
            .upgraded
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if upgraded.is_some() {
            // One connection carries at most one WebSocket.
            return;
        }
        *upgraded = Some(sid.to_owned());
        by_sid.insert(sid.to_owned(), connection.clone());
    }

    fn find(&self, sid: &str) -> Option<ConnectionHandle> {
        let by_sid = self.by_sid.lock().unwrap_or_else(|e| e.into_inner());
        by_sid.get(sid).cloned()
    }

    fn forget(&self, connection: &ConnectionHandle) {
        let sid = connection
            .switch
            .upgraded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(sid) = sid else { return };
        let mut by_sid = self.by_sid.lock().unwrap_or_else(|e| e.into_inner());
        if by_sid.get(&sid).is_some_and(|c| c.same(connection)) {
            by_sid.remove(&sid);
        }
    }

    /// How many upgraded connections are remembered.
    pub fn len(&self) -> usize {
        self.by_sid.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Closes the connection that carries `socket`'s WebSocket, so the kiosk reconnects by itself.
/// `false` when there is none to close: a polling kiosk, or a connection accepted outside
/// [`crate::http::Server`].
pub fn close_transport(socket: &SocketRef) -> bool {
    match websocket_connection(socket) {
        Some(connection) if !connection.is_closed() => {
            connection.close();
            true
        }
        _ => false,
    }
}

/// Bytes the connection carrying `socket`'s WebSocket has handed to the operating system so
/// far; `None` for a polling kiosk, or a connection accepted outside [`crate::http::Server`].
pub fn bytes_written(socket: &SocketRef) -> Option<u64> {
    websocket_connection(socket).map(|c| c.switch.written.load(Ordering::Relaxed))
}

/// The connection that carries `socket`'s WebSocket, if it has one.
fn websocket_connection(socket: &SocketRef) -> Option<ConnectionHandle> {
    if socket.transport_type() != TransportType::Websocket {
        return None;
    }
    let parts = socket.req_parts();
    let opened_on = parts.extensions.get::<ConnectionHandle>()?;
    if query_param(parts.uri.query(), "transport") == Some("websocket") {
        Some(opened_on.clone())
    } else {
        opened_on.upgrades.find(&socket.id.to_string())
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// See [`ConnectionHandle::busy`].
#[derive(Debug)]
pub struct Busy {
    _in_flight: InFlight,
}

/// A request being answered: the connection is not idle until it is dropped.
#[derive(Debug)]
pub struct InFlight {
    connection: ConnectionHandle,
    websocket: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut activity = self.connection.activity();
        activity.in_flight -= 1;
        activity.since = Instant::now();
        activity.websocket |= self.websocket;
    }
}

/// Whether `uri` is a Socket.IO request that opens a new Engine.IO session (no `sid`).
pub fn opens_session(uri: &http::Uri) -> bool {
    let path = uri.path();
    (path == SOCKET_IO_PATH || path.starts_with(&format!("{SOCKET_IO_PATH}/")))
        && query_param(uri.query(), "sid").is_none()
}

/// A service that tags each request with its connection's [`ConnectionHandle`], and keeps
/// the handle's account of requests in flight.
#[derive(Debug, Clone)]
pub struct Tagged<S> {
    inner: S,
    connection: ConnectionHandle,
}

impl<S> Tagged<S> {
    pub fn new(inner: S, connection: ConnectionHandle) -> Self {
        Self { inner, connection }
    }
}

impl<S, B, RB> hyper::service::Service<Request<B>> for Tagged<S>
where
    S: hyper::service::Service<Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        if path == SOCKET_IO_PATH || path.starts_with(&format!("{SOCKET_IO_PATH}/")) {
            // A request that opens a session is cut down to what the session keeps in
            // `kiosk::pending::Gate`, in front of socketioxide, once every check before it ran.
            if let Some(sid) = query_param(req.uri().query(), "sid")
                && query_param(req.uri().query(), "transport") == Some("websocket")
            {
                self.connection.upgrades.register(sid, &self.connection);
            }
        }
        req.extensions_mut().insert(self.connection.clone());
        let in_flight = self.connection.request_started();
        let answer = self.inner.call(req);
        Box::pin(async move {
            // Held until answered (or dropped with the connection).
            let mut in_flight = in_flight;
            let response = answer.await?;
            in_flight.websocket = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
            Ok(response)
        })
    }
}

/// The request headers a session keeps: engineioxide answers the WebSocket handshake with the
/// key, and the fleet shows a screen's user agent. Nothing reads any other header of a
/// session's request once it is open.
const SESSION_HEADERS: [http::header::HeaderName; 2] =
    [http::header::SEC_WEBSOCKET_KEY, http::header::USER_AGENT];

/// Cuts a request that opens a session down to what the session keeps, copied out of the
/// connection's read buffer: its URI and the headers in `SESSION_HEADERS`.
///
/// socketioxide keeps the parts of the request that opened a session (the one without a
/// `sid`; polls and upgrades of a session are not kept) for as long as the kiosk is connected.
/// hyper parses the URI and header values as slices of the connection's read buffer (8–16
/// KiB): without the copy every kiosk kept its whole handshake read buffer alive, about half of
/// the relay's memory per idle kiosk. And a browser sends a dozen headers or more (accept,
/// languages, cookies, fetch metadata), a kilobyte or two that the session never reads: it
/// keeps two, in one allocation of their size.
pub fn detach_head<B>(req: &mut Request<B>) {
    if let Ok(uri) = http::Uri::try_from(req.uri().to_string()) {
        *req.uri_mut() = uri;
    }
    let kept: Vec<_> = SESSION_HEADERS
        .iter()
        .filter_map(|name| Some((name, req.headers().get(name)?)))
        .collect();
    let size = kept.iter().map(|(_, v)| v.len()).sum();
    let mut copy = bytes::BytesMut::with_capacity(size);
    for (_, value) in &kept {
        copy.extend_from_slice(value.as_bytes());
    }
    let copy = copy.freeze();
    let mut headers = http::HeaderMap::with_capacity(kept.len());
    let mut start = 0;
    for (name, value) in kept {
        let end = start + value.len();
        // The bytes were a valid value already; should it fail anyway, the original stays.
        let detached = http::HeaderValue::from_maybe_shared(copy.slice(start..end))
            .unwrap_or_else(|_| value.clone());
        headers.insert(name.clone(), detached);
        start = end;
    }
    *req.headers_mut() = headers;
}

/// What the accept loop serves: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A [`Stream`] that fails every read and write once its [`ConnectionHandle`] is closed, and
/// wakes a reader or writer that waits on the peer. On the first failure it sets a zero linger,
/// so the socket is reset when dropped: nothing queued for a peer that does not read is kept.
#[derive(Debug)]
pub struct Killable {
    io: Stream,
    connection: ConnectionHandle,
    // Readers and writers run in different tasks with different wakers: one future each, so
    // both are woken.
    read_killed: Pin<Box<WaitForCancellationFutureOwned>>,
    write_killed: Pin<Box<WaitForCancellationFutureOwned>>,
    reset: bool,
    /// What is given up with the IO: its place among the open connections.
    _held: Box<dyn std::fmt::Debug + Send + Sync>,
}

impl Killable {
    /// Wraps `io`; `held` (the connection's place among the open ones) is dropped with it.
    pub fn new(
        io: Stream,
        connection: ConnectionHandle,
        held: Box<dyn std::fmt::Debug + Send + Sync>,
    ) -> Self {
        let token = connection.switch.kill.clone();
        Self {
            _held: held,
            io,
            read_killed: Box::pin(token.clone().cancelled_owned()),
            write_killed: Box::pin(token.cancelled_owned()),
            connection,
            reset: false,
        }
    }

    /// The error of every read and write once the connection is closed. Checked before each
    /// one: an atomic load, so the hot path (a write per event per kiosk) takes no lock.
    fn closed(&mut self) -> Option<io::Error> {
        if !self.connection.is_closed() {
            return None;
        }
        if !self.reset {
            self.reset = true;
            // Best effort: without it the socket is closed normally.
            self.io.tcp().set_zero_linger().ok();
        }
        Some(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed by the relay",
        ))
    }

    /// After the inner IO returned `Pending` (the peer does not read, or has sent nothing):
    /// also waits for the connection to be closed, so a blocked reader or writer wakes up and
    /// fails then. A write or flush that completes at once never needs it.
    fn pending(&mut self, cx: &mut Context<'_>, write: bool) -> Option<io::Error> {
        let future = if write {
            self.write_killed.as_mut()
        } else {
            self.read_killed.as_mut()
        };
        if future.poll(cx).is_pending() {
            return None;
        }
        self.closed()
    }

    /// Counts what a write handed to the operating system.
    fn count(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &written {
            self.connection
                .switch
                .written
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        written
    }

    /// Runs one IO operation unless the connection is closed; when it waits, waits for the
    /// close too.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: bool,
        op: impl FnOnce(Pin<&mut Stream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Some(e) = self.closed() {
            return Poll::Ready(Err(e));
        }
        match op(Pin::new(&mut self.io), cx) {
            Poll::Pending => match self.pending(cx, write) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.connection.upgrades.forget(&self.connection);
    }
}

impl AsyncRead for Killable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut()
            .guard(cx, false, |io, cx| io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.guard(cx, true, |io, cx| io.poll_write(cx, buf));
        this.count(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.guard(cx, true, |io, cx| io.poll_write_vectored(cx, bufs));
        this.count(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guard(cx, true, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .guard(cx, true, |io, cx| io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), accepted.expect("accept").0)
    }

    /// A writer blocked on a peer that does not read wakes up and fails when the connection
    /// is closed, and the peer sees the connection end.
    #[tokio::test]
    async fn closing_wakes_a_blocked_writer_and_ends_the_connection() {
        let (mut peer, server) = pair().await;
        let upgrades = Arc::new(Upgrades::default());
        let handle = ConnectionHandle::new(upgrades);
        let mut killable = Killable::new(Stream::Plain(server), handle.clone(), Box::new(()));
        let writer = tokio::spawn(async move {
            let chunk = vec![0u8; 64 << 10];
            loop {
                if let Err(e) = killable.write_all(&chunk).await {
                    return e;
                }
            }
        });
        // The writer fills the socket buffers and blocks; the peer reads nothing. (The pause
        // only lets it get there; the test passes either way.)
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!writer.is_finished());
        handle.close();
        let error = tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .expect("the blocked writer wakes up")
            .expect("no panic");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        // Reset, not a graceful close behind megabytes of unread data.
        let mut sink = vec![0u8; 1 << 20];
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match peer.read(&mut sink).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => return Err(e.kind()),
                }
            }
        })
        .await
        .expect("the peer sees the end of the connection");
        assert_eq!(end, Err(io::ErrorKind::ConnectionReset));
    }

    #[test]
    fn an_upgraded_connection_is_found_by_session_and_forgotten_when_gone() {
        let upgrades = Arc::new(Upgrades::default());
        let first = ConnectionHandle::new(upgrades.clone());
        let second = ConnectionHandle::new(upgrades.clone());
        upgrades.register("abc", &first);
        upgrades.register("abc", &second);
        assert!(upgrades.find("abc").is_some_and(|c| c.same(&first)));
        upgrades.forget(&second);
        assert_eq!(upgrades.len(), 1, "another connection does not remove it");
        upgrades.forget(&first);
        assert!(upgrades.is_empty());
        assert!(upgrades.find("abc").is_none());
    }

    /// What socketioxide keeps of a kiosk's request no longer points into the buffer hyper
    /// read it into, and holds only the headers the session reads.
    #[test]
    fn a_socket_io_request_head_is_copied_out_of_the_read_buffer() {
        let buffer = bytes::Bytes::from(
            b"/socket.io/?EIO=4&transport=websocket dGhlIHNhbXBsZSBub25jZQ== secret kiosk/1"
                .to_vec(),
        );
        let inside = |p: *const u8| buffer.as_ptr_range().contains(&p);
        let mut req = Request::builder()
            .uri(http::Uri::from_maybe_shared(buffer.slice(0..37)).expect("uri"))
            .body(())
            .expect("request");
        let key = http::HeaderValue::from_maybe_shared(buffer.slice(38..62)).expect("key");
        let mut token = http::HeaderValue::from_maybe_shared(buffer.slice(63..69)).expect("token");
        token.set_sensitive(true);
        req.headers_mut().insert("sec-websocket-key", key);
        req.headers_mut().insert(http::header::AUTHORIZATION, token);
        let agent = http::HeaderValue::from_maybe_shared(buffer.slice(70..77)).expect("agent");
        req.headers_mut().insert(http::header::USER_AGENT, agent);
        assert!(inside(
            req.headers()["sec-websocket-key"].as_bytes().as_ptr()
        ));

        detach_head(&mut req);

        assert_eq!(req.uri(), "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(
            req.headers()["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(req.headers()[http::header::USER_AGENT], "kiosk/1");
        assert!(
            req.headers().get(http::header::AUTHORIZATION).is_none(),
            "no session reads it"
        );
        assert_eq!(req.headers().len(), 2);
        let uri = req.uri().path_and_query().expect("path").as_str();
        assert!(!inside(uri.as_ptr()));
        for value in req.headers().values() {
            assert!(!inside(value.as_bytes().as_ptr()));
        }
    }

    #[test]
    fn query_parameters() {
        let q = Some("EIO=4&transport=websocket&sid=x1");
        assert_eq!(query_param(q, "transport"), Some("websocket"));
        assert_eq!(query_param(q, "sid"), Some("x1"));
        assert_eq!(query_param(q, "t"), None);
        assert_eq!(query_param(None, "sid"), None);
    }
}
