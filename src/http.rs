//! The one HTTP port: Socket.IO under `/socket.io`, the webhook, `/healthz`, `/readyz`,
//! `/metrics` (behind the admin token with `admin.protect_metrics`), the status page and the
//! demo kiosk (`http/demo.rs`), served by hyper (over TLS with `[tls]`) with graceful shutdown.
//! Before all of them, [`LocalFiles`] answers the built-in scripts (`http/client_js.rs`:
//! socket.io-client and relay-client.js) and the kiosk app under `site.path` (`http/site.rs`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub mod client_js;
mod conditional;
mod demo;
mod file_body;
mod local;
mod screens;
mod site;

pub use local::{LocalBody, LocalFiles};
pub use site::Site;

use crate::config::{Config, Limits};
use crate::connection;
use crate::connections::{self, OpenConnections};
use crate::fleet::Fleet;
use crate::hub::HubHandle;
use crate::metrics::{Metrics, ReasonLabels, reason_labels};
use crate::tls::KioskTls;
use crate::upstream::webhook;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Pause after a failed `accept` (for example when out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What hyper buffers per HTTP/1 connection, each way (its default is about 400 KiB): a
/// request head must fit, and a streamed response (a file from `/assets`) is read ahead at
/// most this far, so that many screens fetching a large video at once cost 64 KiB each instead
/// of 400 (BENCHMARKS.md, "Files").
const HTTP1_BUFFER: usize = 64 << 10;

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The status page: one file, no external resources; it polls `/status.json`.
const STATUS_PAGE: &str = include_str!("status.html");

fn html(page: &'static str) -> Response<Body> {
    let response = Response::new(Full::new(Bytes::from_static(page.as_bytes())));
    let response = with_header(response, header::CONTENT_TYPE, "text/html; charset=utf-8");
    with_header(response, header::CACHE_CONTROL, "no-store")
}

/// Whether `req` may see what `[admin] token` guards: there is no admin token, or the
/// request carries it as `Authorization: Bearer <token>` (compared in constant time).
fn admin_allowed(req: &Request<Incoming>, shared: &Shared) -> bool {
    let Some(token) = &shared.config.admin.token else {
        return true;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token.matches(given.as_bytes())
}

/// Marks a 401 as asking for the admin token as a bearer token.
fn unauthorized(response: Response<Body>) -> Response<Body> {
    with_header(
        response,
        header::WWW_AUTHENTICATE,
        "Bearer realm=\"directus-relay\"",
    )
}

/// What the status page shows. With `[admin] token`, only for `Authorization: Bearer <token>`.
fn status_json(req: &Request<Incoming>, shared: &Shared) -> Response<Body> {
    if !admin_allowed(req, shared) {
        return unauthorized(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "this relay's status needs its admin token ([admin] token)" }),
        ));
    }
    let mut status = shared
        .metrics
        .board
        .render(&shared.config, &shared.hub.report());
    status["fleet"] = shared.fleet.view();
    status["assets"] = shared.metrics.assets.status();
    with_header(
        json_response(StatusCode::OK, &status),
        header::CACHE_CONTROL,
        "no-store",
    )
}

/// What the HTTP handlers share: cloned into every request.
#[derive(Debug, Clone)]
pub struct Shared {
    pub config: Arc<Config>,
    pub hub: HubHandle,
    pub metrics: Arc<Metrics>,
    /// Set once the relay is serving.
    pub ready: Arc<AtomicBool>,
    /// Where accepted webhook changes go.
    pub sink: webhook::Sink,
    /// The known screens.
    pub fleet: Arc<Fleet>,
}

type Body = Full<Bytes>;

/// The service for everything that is not Socket.IO.
pub fn service(
    shared: Shared,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok(route(req, &shared).await) }
    })
}

async fn route(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let path = req.uri().path();
    if path == shared.config.webhook.path {
        if req.method() != Method::POST {
            return with_header(
                text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
                header::ALLOW,
                "POST",
            );
        }
        let (parts, body) = req.into_parts();
        return match webhook::receive(
            &parts.headers,
            body,
            &shared.config,
            &shared.sink,
            &shared.metrics,
        )
        .await
        {
            Ok(change) => json_response(
                StatusCode::ACCEPTED,
                &json!({
                    "ok": true,
                    "collection": change.collection,
                    "action": change.action.as_str(),
                    "keys": change.keys.len(),
                }),
            ),
            Err(reject) => json_response(
                reject.status,
                &json!({ "ok": false, "error": reject.message }),
            ),
        };
    }
    if path.starts_with("/api/") {
        return screens::route(req, shared).await;
    }
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz") => {
            if shared.hub.liveness().is_alive() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "hub is not responding\n")
            }
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if !shared.ready.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            } else if !shared.hub.liveness().is_alive() {
                text(StatusCode::SERVICE_UNAVAILABLE, "hub is not responding\n")
            } else {
                // Kiosks get the last known content whatever Directus does, and whether or not
                // the state file can be written: ready either way, degraded said in words.
                let upstream = shared.hub.report().upstream.as_str();
                match shared.metrics.board.saving().describe() {
                    None => text(StatusCode::OK, format!("ready (upstream {upstream})\n")),
                    Some(problem) => text(
                        StatusCode::OK,
                        format!("degraded (upstream {upstream}): {problem}\n"),
                    ),
                }
            }
        }
        (&Method::GET, "/metrics") => {
            if shared.config.admin.protect_metrics && !admin_allowed(&req, shared) {
                return unauthorized(text(
                    StatusCode::UNAUTHORIZED,
                    "this relay's metrics need its admin token (admin.protect_metrics): send Authorization: Bearer <admin.token>\n",
                ));
            }
            shared
                .metrics
                .hub_queue_depth
                .set(shared.hub.queue_depth() as i64);
            with_header(
                text(StatusCode::OK, shared.metrics.encode()),
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
        (&Method::GET | &Method::HEAD, "/" | "/status") => html(STATUS_PAGE),
        (&Method::GET, "/status.json") => status_json(&req, shared),
        (&Method::GET | &Method::HEAD, "/demo") => demo::page(),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    with_header(response, header::CONTENT_TYPE, "text/plain; charset=utf-8")
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = text(status, format!("{body}\n"));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn with_header(
    mut response: Response<Body>,
    name: header::HeaderName,
    value: &'static str,
) -> Response<Body> {
    response
        .headers_mut()
        .insert(name, header::HeaderValue::from_static(value));
    response
}

/// A running HTTP server: an accept loop and its connections.
#[derive(Debug)]
pub struct Server {
    stop: CancellationToken,
    accept_loop: JoinHandle<GracefulShutdown>,
}

impl Server {
    /// Accepts connections on `listener` and serves each with `svc` (HTTP/1 with upgrades for
    /// WebSocket, and HTTP/2 without TLS), over TLS when `tls` is given. Every connection can be
    /// closed through the [`connection::ConnectionHandle`] its requests carry. At most
    /// `limits.max_connections` are open (see [`connections`]); one that sends no request head
    /// within `limits.header_timeout`, or carries no request for `limits.idle_timeout`, is
    /// closed, unless it is a kiosk's WebSocket.
    pub fn start<S, B>(
        listener: TcpListener,
        tls: Option<KioskTls>,
        svc: S,
        limits: &Limits,
        metrics: &Metrics,
    ) -> Server
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stop = CancellationToken::new();
        let timeouts = Timeouts {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
        };
        let closed = metrics.connections_closed.clone();
        let open = OpenConnections::new(
            limits.max_connections(),
            closed.get_or_create(&reason_labels("evicted")).clone(),
        );
        let accept_loop = tokio::spawn(accept_loop(
            listener,
            tls,
            svc,
            open,
            timeouts,
            closed,
            stop.clone(),
        ));
        Server { stop, accept_loop }
    }

    /// Stops accepting, closes every Socket.IO session cleanly, then gives in-flight requests
    /// up to `grace` to finish.
    pub async fn shutdown(self, io: &SocketIo, grace: Duration) {
        self.stop.cancel();
        let graceful = match self.accept_loop.await {
            Ok(graceful) => graceful,
            Err(e) => {
                warn!(%e, "the accept loop ended abnormally (a bug); shutting down without waiting for requests");
                return;
            }
        };
        if tokio::time::timeout(grace, io.close()).await.is_err() {
            warn!(
                ?grace,
                "kiosk sessions did not close within the grace period"
            );
        }
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            warn!(
                ?grace,
                "some requests did not finish within the grace period"
            );
        }
    }
}

/// How long a connection may wait before its first request head, and between requests.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    idle: Duration,
}

async fn accept_loop<S, B>(
    listener: TcpListener,
    tls: Option<KioskTls>,
    svc: S,
    open: Arc<OpenConnections>,
    timeouts: Timeouts,
    closed: Family<ReasonLabels, Counter>,
    stop: CancellationToken,
) -> GracefulShutdown
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(HTTP1_BUFFER);
    let builder = Arc::new(builder);
    let upgrades = Arc::new(connection::Upgrades::default());
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(%e, "could not accept a connection: new kiosks wait until this clears; when it says too many open files, raise LimitNOFILE= in the unit or lower limits.max_clients");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        stream.set_nodelay(true).ok();
        connection::limit_send_buffer(&stream, peer);
        let handle = connection::ConnectionHandle::new(upgrades.clone()).with_peer(peer);
        let Some(place) = open.admit(&handle) else {
            debug!(%peer, "turned a connection away: every open one is busy (limits.max_connections)");
            closed.get_or_create(&reason_labels("turned-away")).inc();
            connections::turn_away(stream, tls.is_none());
            continue;
        };
        let svc = connection::Tagged::new(svc.clone(), handle.clone());
        let acceptor = tls.as_ref().map(|t| t.acceptor().clone());
        let builder = builder.clone();
        // Counts as in flight from here: shutdown waits for a handshake under way too.
        let watcher = graceful.watcher();
        let timed_out = closed.get_or_create(&reason_labels("timed-out")).clone();
        tokio::spawn(async move {
            let io = match acceptor {
                None => connection::Stream::Plain(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => connection::Stream::Tls(Box::new(tls)),
                        Ok(Err(e)) => return handshake_failed(peer, &e),
                        Err(_) => {
                            debug!(%peer, timeout = ?TLS_HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            handle.start_clock();
            let io = connection::Killable::new(io, handle.clone(), Box::new(place));
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(io), svc)
                .into_owned();
            let served = watcher.watch(connection);
            tokio::pin!(served);
            // A connection that became a WebSocket is handed to socketioxide and `served`
            // ends: the timeouts stop with it.
            let ended = tokio::select! {
                ended = &mut served => ended,
                () = handle.idle_out(timeouts.header, timeouts.idle) => {
                    debug!(%peer, "closed an idle connection (limits.header_timeout or limits.idle_timeout)");
                    timed_out.inc();
                    handle.close();
                    served.await
                }
            };
            if let Err(e) = ended {
                debug!(%peer, %e, "connection ended with an error");
            }
        });
    }
    info!("stopped accepting connections");
    graceful
}

/// A client that gave up on the handshake. One that refused the relay's certificate is worth a
/// warning (kiosks that do not trust it cannot connect); anything else is noise from scanners
/// and dropped connections.
fn handshake_failed(peer: std::net::SocketAddr, error: &std::io::Error) {
    use rustls::AlertDescription::{BadCertificate, CertificateExpired, UnknownCA};
    let refused = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::AlertReceived(BadCertificate | UnknownCA | CertificateExpired)
            )
        });
    if refused {
        warn!(%peer, %error, "a client refused the relay's TLS certificate (tls.cert_file): does it trust the certificate's issuer, and does the certificate name the address the kiosk uses?");
    } else {
        debug!(%peer, %error, "TLS handshake failed");
    }
}

/// Cross-origin access to Socket.IO for kiosk pages served from elsewhere (`[clients]
/// allowed_origins`): polling answers carry `Access-Control-Allow-Origin`, preflights are
/// answered, and requests from an origin not allowed — WebSocket upgrades included — get 403.
#[derive(Debug, Clone)]
pub struct Cors<S> {
    inner: S,
    clients: Arc<crate::config::ClientsConfig>,
    path: &'static str,
}

impl<S> Cors<S> {
    pub fn new(inner: S, clients: crate::config::ClientsConfig) -> Self {
        Self {
            inner,
            clients: Arc::new(clients),
            path: "/socket.io",
        }
    }
}

type CorsBody<B> = http_body_util::Either<B, Body>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Cors<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<CorsBody<B>>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let path = req.uri().path();
        let socket_io = path == self.path || path.starts_with(&format!("{}/", self.path));
        let origin = req.headers().get(header::ORIGIN).cloned();
        if !socket_io || origin.is_none() {
            let future = self.inner.call(req);
            return Box::pin(async move { Ok(future.await?.map(CorsBody::Left)) });
        }
        let origin = origin.unwrap_or_else(|| header::HeaderValue::from_static("null"));
        if !self.clients.allows(origin.to_str().unwrap_or("")) {
            let refused = text(
                StatusCode::FORBIDDEN,
                "this page's origin is not in clients.allowed_origins\n",
            );
            return Box::pin(async move { Ok(refused.map(CorsBody::Right)) });
        }
        if req.method() == Method::OPTIONS {
            let mut answer = text(StatusCode::NO_CONTENT, "");
            let headers = answer.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                header::HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                header::HeaderValue::from_static("600"),
            );
            headers.insert(header::VARY, header::HeaderValue::from_static("Origin"));
            return Box::pin(async move { Ok(answer.map(CorsBody::Right)) });
        }
        let future = self.inner.call(req);
        Box::pin(async move {
            let mut response = future.await?;
            let headers = response.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(header::VARY, header::HeaderValue::from_static("Origin"));
            Ok(response.map(CorsBody::Left))
        })
    }
}
