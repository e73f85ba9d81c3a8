//! `[site]`: the kiosk app, a folder of static files served under `site.path` (`/app/`), so
//! that a screen that starts while the uplink is down still loads its page from the relay.
//!
//! Only files inside `site.dir` are served: the URL's path is percent-decoded segment by
//! segment, and a segment that is empty, starts with a dot (`.`, `..`, `.git`), or holds a
//! `/`, `\`, NUL or control character is a 404; the file found is resolved with its symlinks
//! and must still lie in the folder (a symlink out of it is a 404), and must be a regular
//! file. A directory serves its `index.html`; there are no listings. Files are read a chunk at
//! a time ([`FileBody`]), with `ETag` (a `304` for a current copy) and `Last-Modified`, one
//! byte range (`206`, for seeking in a video) and `Cache-Control: no-cache`. The folder is looked
//! at on every request: the app can be installed or replaced without a restart. Answers never
//! show a path or an operating system error; the log does, once per distinct problem.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::{Either, Full};
use tracing::{info, warn};

use super::conditional;
use super::file_body::{FileBody, blocking, taken};
use crate::connection::Busy;

/// What a file answer's body is: bytes in memory (errors, redirects, `304`s) or a file.
pub type SiteBody = Either<Full<Bytes>, FileBody>;

/// The kiosk app's folder and where it is served.
#[derive(Debug)]
pub struct Site {
    dir: PathBuf,
    /// `site.path`, with a slash at both ends.
    prefix: String,
    /// The last problem with the folder itself logged, so that a screen reloading all day
    /// logs it once; cleared when the folder can be read again.
    logged: Mutex<Option<String>>,
}

/// What kiosks are told when the folder is missing: the key to set, never the path.
const NO_SITE: &str = "no kiosk app is installed on this relay (site.dir)\n";

impl Site {
    pub fn new(dir: PathBuf, path: &str) -> Self {
        Self {
            dir,
            prefix: path.to_owned(),
            logged: Mutex::new(None),
        }
    }

    /// Logs at start where the app is served from, and whether it is there yet.
    pub fn announce(&self) {
        let state = if self.dir.is_dir() {
            "serving the kiosk app (site.dir)"
        } else {
            "no kiosk app installed yet: its path answers 404 until its files are copied to site.dir"
        };
        info!(dir = %self.dir.display(), path = %self.prefix, "{state}");
    }

    /// Whether `path` is this site's: its prefix, or the prefix without its last slash.
    pub fn owns(&self, path: &str) -> bool {
        path.starts_with(&self.prefix) || path == self.bare()
    }

    fn bare(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }

    /// The answer to a request for one of [`Site::owns`]'s paths.
    /// `busy` marks the connection busy while a file is sent.
    pub async fn serve(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        busy: Option<Busy>,
    ) -> Response<SiteBody> {
        if method != Method::GET && method != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let path = uri.path();
        if path == self.bare() {
            return redirect(&self.prefix, uri.query());
        }
        let rest = &path[self.prefix.len()..];
        let Some(wanted) = Wanted::parse(rest) else {
            return not_found();
        };
        let dir = self.dir.clone();
        let found = match taken::<Found>(blocking(move || wanted.open(&dir)).await) {
            Ok(found) => found,
            Err(e) => return cannot_read(&e),
        };
        match found {
            Found::File(file) => {
                self.clear_logged();
                file.answer(method, headers, busy)
            }
            Found::Directory => {
                self.clear_logged();
                redirect(&format!("{path}/"), uri.query())
            }
            Found::Missing => {
                self.clear_logged();
                not_found()
            }
            Found::NoSite(e) => {
                self.log_once(
                    e.to_string(),
                    "the kiosk app's folder (site.dir) cannot be read: its pages answer 404",
                );
                text(StatusCode::NOT_FOUND, NO_SITE)
            }
            Found::Failed(e) => cannot_read(&e),
        }
    }

    fn log_once(&self, error: String, message: &str) {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.as_deref() != Some(error.as_str()) {
            warn!(dir = %self.dir.display(), %error, "{message} (logged once until the error changes)");
            *logged = Some(error);
        }
    }

    fn clear_logged(&self) {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.take().is_some() {
            info!(dir = %self.dir.display(), "the kiosk app's folder (site.dir) can be read again");
        }
    }
}

/// A request's path inside the site, checked segment by segment.
#[derive(Debug, PartialEq, Eq)]
struct Wanted {
    segments: Vec<String>,
    /// It ended with a slash (or was the site's root): its `index.html` is meant.
    directory: bool,
}

impl Wanted {
    /// `None` for anything that is not a plain path inside the folder.
    fn parse(rest: &str) -> Option<Wanted> {
        let directory = rest.is_empty() || rest.ends_with('/');
        let body = rest.strip_suffix('/').unwrap_or(rest);
        let mut segments = Vec::new();
        if !body.is_empty() {
            for raw in body.split('/') {
                let segment = percent_decode(raw)?;
                let forbidden = |c: char| c == '/' || c == '\\' || c.is_control();
                if segment.is_empty() || segment.starts_with('.') || segment.contains(forbidden) {
                    return None;
                }
                segments.push(segment);
            }
        }
        Some(Wanted {
            segments,
            directory,
        })
    }

    /// Finds and opens the file (blocking).
    fn open(&self, dir: &Path) -> Found {
        let root = match dir.canonicalize() {
            Ok(root) => root,
            Err(e) => return Found::NoSite(e),
        };
        let mut path = root.clone();
        path.extend(&self.segments);
        if self.directory {
            path.push("index.html");
        }
        let real = match path.canonicalize() {
            Ok(real) => real,
            Err(e) if missing(&e) => return Found::Missing,
            Err(e) => return Found::Failed(e),
        };
        // A symlink that leads out of the folder.
        if !real.starts_with(&root) {
            return Found::Missing;
        }
        let meta = match std::fs::metadata(&real) {
            Ok(meta) => meta,
            Err(e) if missing(&e) => return Found::Missing,
            Err(e) => return Found::Failed(e),
        };
        if meta.is_dir() && !self.directory {
            return Found::Directory;
        }
        if !meta.is_file() {
            return Found::Missing;
        }
        let file = match File::open(&real) {
            Ok(file) => file,
            Err(e) if missing(&e) => return Found::Missing,
            Err(e) => return Found::Failed(e),
        };
        // What was opened, which may have been replaced since it was looked at.
        let meta = match file.metadata() {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Found::Missing,
            Err(e) => return Found::Failed(e),
        };
        let modified = meta.modified().ok();
        let stamp = modified
            .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Found::File(Opened {
            file,
            len: meta.len(),
            modified,
            etag: format!("\"{:x}-{stamp:x}\"", meta.len()),
            content_type: content_type(&real),
        })
    }
}

fn missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidFilename
    )
}

/// What a request found.
#[derive(Debug)]
enum Found {
    File(Opened),
    /// A directory asked for without the trailing slash: redirected to it.
    Directory,
    Missing,
    /// The folder itself cannot be read (not installed yet, or not readable).
    NoSite(io::Error),
    Failed(io::Error),
}

/// An open file and what its answer says about it.
#[derive(Debug)]
struct Opened {
    file: File,
    len: u64,
    modified: Option<SystemTime>,
    etag: String,
    content_type: &'static str,
}

impl Opened {
    fn answer(
        self,
        method: &Method,
        headers: &HeaderMap,
        busy: Option<Busy>,
    ) -> Response<SiteBody> {
        let mut response = if conditional::not_modified(headers, &self.etag) {
            let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            let range = headers
                .get(header::RANGE)
                .filter(|_| conditional::range_allowed(headers, &self.etag))
                .and_then(|v| v.to_str().ok())
                .map_or(Ranged::Whole, |v| byte_range(v, self.len));
            match range {
                Ranged::Unsatisfiable => {
                    let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "");
                    if let Ok(v) = header::HeaderValue::from_str(&format!("bytes */{}", self.len)) {
                        r.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return r;
                }
                Ranged::Part(start, end) => self.body(method, start, end, true, busy),
                Ranged::Whole => self.body(method, 0, self.len, false, busy),
            }
        };
        let h = response.headers_mut();
        if let Ok(v) = header::HeaderValue::from_str(&self.etag) {
            h.insert(header::ETAG, v);
        }
        if let Some(modified) = self.modified
            && let Ok(v) = header::HeaderValue::from_str(&httpdate::fmt_http_date(modified))
        {
            h.insert(header::LAST_MODIFIED, v);
        }
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
        h.insert(
            header::ACCEPT_RANGES,
            header::HeaderValue::from_static("bytes"),
        );
        response
    }

    /// Bytes `start..end` of the file, as a 200 or (a range) a 206.
    fn body(
        &self,
        method: &Method,
        start: u64,
        end: u64,
        partial: bool,
        busy: Option<Busy>,
    ) -> Response<SiteBody> {
        let len = end - start;
        let body = if method == Method::HEAD || len == 0 {
            Either::Left(Full::new(Bytes::new()))
        } else {
            // A seek on a regular file only moves an offset: not worth a blocking task.
            let file = self.file.try_clone().and_then(|mut file| {
                file.seek(SeekFrom::Start(start))?;
                Ok(file)
            });
            match file {
                Ok(file) => Either::Right(FileBody::new(file, len, busy)),
                Err(e) => return cannot_read(&e),
            }
        };
        let mut r = Response::new(body);
        if partial {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(self.content_type),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            header::HeaderValue::from_static("nosniff"),
        );
        h.insert(header::CONTENT_LENGTH, len.into());
        if partial {
            let range = format!("bytes {start}-{}/{}", end - 1, self.len);
            if let Ok(v) = header::HeaderValue::from_str(&range) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        r
    }
}

/// What a `Range` header asks of a file.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// Not one byte range the relay serves (several ranges, another unit, not a range): the
    /// whole file.
    Whole,
    /// Bytes `start..end`.
    Part(u64, u64),
    /// A range the file does not have (416).
    Unsatisfiable,
}

/// One range of `Range: bytes=…` of a file of `len` bytes.
fn byte_range(value: &str, len: u64) -> Ranged {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ranged::Whole;
    };
    let Some((first, last)) = spec.split_once('-').filter(|_| !spec.contains(',')) else {
        return Ranged::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if first.is_empty() {
        // The last N bytes.
        return match number(last) {
            None => Ranged::Whole,
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if len == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part(len - n.min(len), len),
        };
    }
    let Some(start) = number(first) else {
        return Ranged::Whole;
    };
    if start >= len {
        return Ranged::Unsatisfiable;
    }
    if last.is_empty() {
        return Ranged::Part(start, len);
    }
    match number(last) {
        Some(last) if last >= start => Ranged::Part(start, last.saturating_add(1).min(len)),
        _ => Ranged::Whole,
    }
}

/// `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `Content-Type` of a file, by its extension.
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "ogv" => "video/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "oga" => "audio/ogg",
        "wav" => "audio/wav",
        "vtt" => "text/vtt; charset=utf-8",
        "pdf" => "application/pdf",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<SiteBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A file that could not be read: logged (the answer names nothing), and a 500.
fn cannot_read(error: &dyn std::fmt::Display) -> Response<SiteBody> {
    warn!(%error, "cannot read a kiosk app file (site.dir)");
    text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read this file\n")
}

fn not_found() -> Response<SiteBody> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// A redirect to `location` (a path of this site), keeping the query (a kiosk's token).
fn redirect(location: &str, query: Option<&str>) -> Response<SiteBody> {
    let target = match query {
        Some(q) => format!("{location}?{q}"),
        None => location.to_owned(),
    };
    let mut r = text(StatusCode::PERMANENT_REDIRECT, "");
    if let Ok(v) = header::HeaderValue::from_str(&target) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_the_folder_only() {
        let ok = |rest: &str, segments: &[&str], directory: bool| {
            assert_eq!(
                Wanted::parse(rest),
                Some(Wanted {
                    segments: segments.iter().map(|s| s.to_string()).collect(),
                    directory
                }),
                "{rest:?}"
            );
        };
        ok("", &[], true);
        ok("index.html", &["index.html"], false);
        ok("img/logo%20big.png", &["img", "logo big.png"], false);
        ok("sub/", &["sub"], true);
        ok("caf%C3%A9.css", &["café.css"], false);
        for refused in [
            "../secret",
            "a/../../b",
            "%2e%2e/secret",
            "%2E%2E%2Fsecret",
            "a/%2e%2e/b",
            "./index.html",
            ".git/config",
            ".env",
            "a%2fb",
            "a%5cb",
            "a%00b",
            "a%0ab",
            "a//b",
            "%zz",
            "%e9",
            "a%",
        ] {
            assert_eq!(Wanted::parse(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn byte_ranges() {
        let cases = [
            ("bytes=0-99", Ranged::Part(0, 100)),
            ("bytes=100-", Ranged::Part(100, 1000)),
            ("bytes=-100", Ranged::Part(900, 1000)),
            ("bytes=-5000", Ranged::Part(0, 1000)),
            ("bytes=990-5000", Ranged::Part(990, 1000)),
            ("bytes=1000-", Ranged::Unsatisfiable),
            ("bytes=-0", Ranged::Unsatisfiable),
            ("bytes=5-1", Ranged::Whole),
            ("bytes=0-1,5-6", Ranged::Whole),
            ("items=0-1", Ranged::Whole),
            ("bytes=a-b", Ranged::Whole),
            ("bytes=+1-2", Ranged::Whole),
        ];
        for (value, expected) in cases {
            assert_eq!(byte_range(value, 1000), expected, "{value}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        for (name, expected) in [
            ("index.html", "text/html; charset=utf-8"),
            ("APP.JS", "text/javascript; charset=utf-8"),
            ("m.mjs", "text/javascript; charset=utf-8"),
            ("s.css", "text/css; charset=utf-8"),
            ("i.svg", "image/svg+xml"),
            ("v.mp4", "video/mp4"),
            ("f.woff2", "font/woff2"),
            ("README", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(name)), expected, "{name}");
        }
    }
}
