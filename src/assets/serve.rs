//! `GET` and `HEAD /assets/<id>`: a cached variant from disk, with `ETag` and
//! `If-None-Match` → 304, `Range` → 206 and `Last-Modified`; a variant not cached is streamed
//! through from Directus and cached on the way; when Directus cannot be reached it is a 504 with
//! a one-line reason. Directus's transformation parameters (`key`, `width`, `height`, `fit`,
//! `quality`, `format`, `withoutEnlargement`) pass through, and each combination is a variant
//! of its own. Bodies are streamed in [`CHUNK`]s, never held whole.

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::body::{self, Body};
use super::fetch::{CacheWriter, FetchError, Head, STALL};
use super::store::Meta;
use super::{Assets, Inner, access, schema};

/// The transformation parameters passed to Directus; any other is ignored.
pub const TRANSFORMATIONS: [&str; 7] = [
    "key",
    "width",
    "height",
    "fit",
    "quality",
    "format",
    "withoutEnlargement",
];

/// Bytes read from disk (or Directus) per chunk sent.
pub const CHUNK: usize = 64 << 10;

/// Chunks in flight between a download and the client it streams to (each up to the size
/// the HTTP client read at once, some hundred KiB).
const THROUGH_CHUNKS: usize = 1;

/// How browsers and kiosks may keep a file: privately, revalidated each time (a 304 costs
/// nothing), since a file may change under the same id.
const CACHE_CONTROL: &str = "private, no-cache";

/// Answers a request under `/assets/`. Without `[assets]` every file is a 404.
pub async fn serve(assets: Option<&Assets>, req: &Parts) -> Response<Body> {
    let Some(assets) = assets else {
        return text(
            StatusCode::NOT_FOUND,
            "this relay does not serve files ([assets] enabled = false)\n",
        );
    };
    if req.method != Method::GET && req.method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let inner = &assets.inner;
    let Some(file) = req
        .uri
        .path()
        .strip_prefix("/assets/")
        .filter(|id| schema::is_file_id(id))
    else {
        return not_found();
    };
    let (query_token, params) = parse_query(req.uri.query().unwrap_or(""));
    let token = access::token(&req.headers, query_token.as_deref());
    let peer = req
        .extensions
        .get::<crate::connection::ConnectionHandle>()
        .and_then(|c| c.peer())
        .map(|a| a.ip());
    if let Some(left) = peer.and_then(|p| inner.throttle.refused(p, std::time::Instant::now())) {
        let mut refused = text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong kiosk tokens from this address; try again later (clients.wrong_token_limit)\n",
        );
        set(
            &mut refused,
            header::RETRY_AFTER,
            &(left.as_secs() + 1).to_string(),
        );
        return refused;
    }
    let referenced_by = inner.store().referenced_by(file);
    match access::allowed(&inner.gate, token, &referenced_by) {
        Ok(true) => {}
        Ok(false) => return not_found(),
        Err(()) => {
            if let Some(peer) = peer {
                inner.throttle.note_wrong_token(peer, "assets");
            }
            return not_found();
        }
    }
    let head = req.method == Method::HEAD;
    let busy = req
        .extensions
        .get::<crate::connection::ConnectionHandle>()
        .map(|c| c.busy());
    let cached = inner.store().lookup(file, &params);
    if let Some(meta) = cached {
        let Ok(permit) = inner.from_disk.clone().try_acquire_owned() else {
            let mut busy = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the relay is sending many files at once; try again shortly\n",
            );
            set(&mut busy, header::RETRY_AFTER, "2");
            return busy;
        };
        let path = inner
            .store()
            .data_path(&super::store::variant_name(file, &params));
        match tokio::fs::File::open(&path).await {
            Ok(data) => {
                inner.figures.hits.inc();
                return from_disk(&meta, data, req, head, (busy, permit)).await;
            }
            Err(e) => debug!(file, %e, "cached file vanished (evicted meanwhile); fetching"),
        }
    }
    inner.figures.misses.inc();
    inner.wake.notify_one();
    let range = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    through(inner, file, &params, range, head, busy).await
}

/// The `token` parameter, and the transformation parameters as a canonical query (sorted,
/// encoded), which names the variant.
fn parse_query(query: &str) -> (Option<String>, String) {
    let mut token = None;
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == "token" {
            token = Some(v.into_owned());
        } else if TRANSFORMATIONS.contains(&k.as_ref()) && !params.iter().any(|(p, _)| *p == k) {
            params.push((k.into_owned(), v.into_owned()));
        }
    }
    params.sort();
    let canonical = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    (token, canonical)
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(body::full(message.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn set(response: &mut Response<Body>, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// A range of a file of `size` bytes, from a `Range: bytes=…` header: `Ok(None)` for the whole
/// file (no header, several ranges, or another unit), `Err` when it cannot be satisfied.
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.checked_sub(1).ok_or(())?)
        }
        (start, "") => (start.parse().map_err(|_| ())?, size.saturating_sub(1)),
        (start, end) => {
            let start: u64 = start.parse().map_err(|_| ())?;
            let end: u64 = end.parse().map_err(|_| ())?;
            if end < start {
                return Err(());
            }
            (start, end.min(size.saturating_sub(1)))
        }
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn from_disk(
    meta: &Meta,
    mut data: tokio::fs::File,
    req: &Parts,
    head: bool,
    hold: (body::Busy, tokio::sync::OwnedSemaphorePermit),
) -> Response<Body> {
    let etag = meta.etag();
    let header = |name| req.headers.get(name).and_then(|v| v.to_str().ok());
    let mut response = Response::new(body::empty());
    set(&mut response, header::ETAG, &etag);
    set(&mut response, header::LAST_MODIFIED, &meta.last_modified);
    set(&mut response, header::CACHE_CONTROL, CACHE_CONTROL);
    if let Some(wanted) = header(header::IF_NONE_MATCH) {
        let matches = wanted
            .split(',')
            .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag);
        if matches {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return response;
        }
    }
    set(&mut response, header::CONTENT_TYPE, &meta.content_type);
    set(&mut response, header::ACCEPT_RANGES, "bytes");
    set(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // If-Range with another validator: the whole file.
    let range_header = match header(header::IF_RANGE) {
        Some(validator) if validator != etag && validator != meta.last_modified => None,
        _ => header(header::RANGE),
    };
    let (start, len) = match parse_range(range_header, meta.size) {
        Ok(None) => (0, meta.size),
        Ok(Some((start, end))) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(
                &mut response,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{end}/{}", meta.size),
            );
            (start, end - start + 1)
        }
        Err(()) => {
            let mut refused = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            set(
                &mut refused,
                header::CONTENT_RANGE,
                &format!("bytes */{}", meta.size),
            );
            return refused;
        }
    };
    set(&mut response, header::CONTENT_LENGTH, &len.to_string());
    if head {
        return response;
    }
    if start > 0
        && let Err(e) = data.seek(std::io::SeekFrom::Start(start)).await
    {
        warn!(%e, "cannot read a cached file");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the cached file\n",
        );
    }
    let stream =
        futures_util::stream::unfold((data, len, hold), |(mut data, left, hold)| async move {
            if left == 0 {
                return None;
            }
            let mut buf = vec![0u8; (left as usize).min(CHUNK)];
            match data.read(&mut buf).await {
                Ok(0) => Some((
                    Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                    (data, 0, hold),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        Ok(http_body::Frame::data(Bytes::from(buf))),
                        (data, left - n as u64, hold),
                    ))
                }
                Err(e) => Some((Err(e), (data, 0, hold))),
            }
        });
    *response.body_mut() =
        http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(stream));
    response
}

/// A miss: streamed from Directus, and cached on the way when the whole variant is asked for
/// and no download of it is under way already. A `Range` is passed to Directus as it is.
async fn through(
    inner: &Arc<Inner>,
    file: &str,
    params: &str,
    range: Option<&str>,
    head: bool,
    busy: body::Busy,
) -> Response<Body> {
    let Ok(permit) = inner.streams.clone().try_acquire_owned() else {
        let mut busy = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this file is not cached yet and the relay is fetching many others; try again shortly\n",
        );
        set(&mut busy, header::RETRY_AFTER, "5");
        return busy;
    };
    let mut upstream = match inner.upstream.open(file, params, range).await {
        Ok(response) => response,
        Err(FetchError::NotFound) => return not_found(),
        Err(FetchError::Unreachable(detail)) => {
            inner.figures.unavailable.inc();
            return text(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "this file is not cached on the relay yet, and Directus cannot be reached ({detail})\n"
                ),
            );
        }
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                &format!("Directus did not give this file: {e}\n"),
            );
        }
    };
    let head_info = Head::of(&upstream);
    let status = upstream.status();
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::OK);
    set(&mut response, header::CONTENT_TYPE, &head_info.content_type);
    set(
        &mut response,
        header::LAST_MODIFIED,
        &head_info.last_modified,
    );
    set(&mut response, header::CACHE_CONTROL, CACHE_CONTROL);
    set(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(&mut response, header::ACCEPT_RANGES, "bytes");
    for name in [header::CONTENT_LENGTH, header::CONTENT_RANGE] {
        if let Some(value) = upstream.headers().get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    if head {
        return response;
    }
    let whole = range.is_none() && status == reqwest::StatusCode::OK;
    let writer = if whole {
        CacheWriter::begin(inner, file, params, false, head_info.expected)
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let (tx, rx) = mpsc::channel(THROUGH_CHUNKS);
    let figures = inner.figures.clone();
    let slow_client = inner.slow_client;
    let file = file.to_owned();
    tokio::spawn(async move {
        let _permit = permit;
        let mut writer = writer;
        let mut client = Some(tx);
        loop {
            let chunk = match tokio::time::timeout(STALL, upstream.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    debug!(file, %e, "download cut while streaming through");
                    if let Some(tx) = client.take() {
                        tx.send(Err(std::io::Error::other("download cut")))
                            .await
                            .ok();
                    }
                    return;
                }
                Err(_) => {
                    if let Some(tx) = client.take() {
                        tx.send(Err(std::io::Error::other("download stalled")))
                            .await
                            .ok();
                    }
                    return;
                }
            };
            if let Some(w) = writer.as_mut()
                && let Err(e) = w.write(&chunk).await
            {
                debug!(file, %e, "not caching this file while streaming it");
                figures.error(format!("{file}: {e}"));
                writer = None;
            }
            if let Some(tx) = &client {
                match tokio::time::timeout(slow_client, tx.send(Ok(chunk))).await {
                    Ok(Ok(())) => {}
                    // The client left: finish the download only if it is being cached.
                    Ok(Err(_)) => client = None,
                    // A client that takes nothing for this long (a video element that has
                    // buffered enough) would make Directus's side time out: it is let go (its
                    // response ends short, and a browser asks again with a Range) while the
                    // download goes on into the cache at full speed.
                    Err(_) => {
                        debug!(
                            file,
                            "a slow client is let go; the download goes on into the cache"
                        );
                        client = None;
                    }
                }
            }
            if client.is_none() && writer.is_none() {
                return;
            }
        }
        if let Some(w) = writer
            && let Err(e) = w.finish(&head_info).await
        {
            figures.failures.inc();
            figures.error(format!("{file}: {e}"));
        }
    });
    *response.body_mut() = body::channel(rx, busy);
    response
}

/// The route in front of the relay's other routes: `/assets/…` is answered here, anything
/// else by `inner`.
#[derive(Debug, Clone)]
pub struct Route<S> {
    inner: S,
    assets: Option<Assets>,
}

impl<S> Route<S> {
    pub fn new(inner: S, assets: Option<Assets>) -> Self {
        Self { inner, assets }
    }
}

impl<S, B, ReqBody> hyper::service::Service<Request<ReqBody>> for Route<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<http_body_util::Either<B, Body>>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        if path == "/assets" || path.starts_with("/assets/") {
            let assets = self.assets.clone();
            let (parts, _) = req.into_parts();
            return Box::pin(async move {
                Ok(serve(assets.as_ref(), &parts)
                    .await
                    .map(http_body_util::Either::Right))
            });
        }
        let future = self.inner.call(req);
        Box::pin(async move { Ok(future.await?.map(http_body_util::Either::Left)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_browsers_send_them() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=50-500"), 100), Ok(Some((50, 99))));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=5-1"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=-0"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Err(()));
    }

    #[test]
    fn the_token_is_taken_out_and_transformations_named_in_one_order() {
        let (token, params) =
            parse_query("width=100&token=s3cret&height=50&fit=cover&download=1&width=200");
        assert_eq!(token.as_deref(), Some("s3cret"));
        assert_eq!(params, "fit=cover&height=50&width=100");
        assert_eq!(parse_query(""), (None, String::new()));
    }
}
