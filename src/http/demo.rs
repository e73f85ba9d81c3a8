//! The demo kiosk at `/demo` and the one script it loads: the site's copy of socket.io-client,
//! `demo.client_file`, served as `/demo/socket.io.min.js`.
//!
//! Nothing from the request reaches the page: it is the same bytes for every URL, it loads
//! scripts from the relay's own origin only (its `Content-Security-Policy` says so too), and
//! reads its query string only as data (collection, token, key field).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use tracing::{info, warn};

use super::{Body, html, text, with_header};
use crate::config::DemoConfig;

/// The demo kiosk: the wire contract in one page, for a site's web developer to copy.
const PAGE: &str = include_str!("../demo.html");

/// The largest socket.io-client bundle served for the demo page.
const CLIENT_MAX_BYTES: u64 = 1 << 20;

/// Scripts from the relay's own origin and the page's inline ones only; no plugins, and no
/// `<base>` that could point the relative script URL elsewhere.
const PAGE_POLICY: &str = "script-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'";

/// What kiosks are told when the client file cannot be read: what is missing and which key
/// fixes it, never the path or the operating system's error (those go to the log).
pub const CLIENT_MISSING: &str = "the operator has not installed the demo's socket.io client (demo.client_file): copy dist/socket.io.min.js of the socket.io-client npm package to the file that key names\n";

/// The demo page.
pub(super) fn page() -> Response<Body> {
    with_header(html(PAGE), header::CONTENT_SECURITY_POLICY, PAGE_POLICY)
}

/// The site's copy of socket.io-client, read from `demo.client_file` on each request (so an
/// operator can install it without a restart), and the one warning its absence is worth.
#[derive(Debug)]
pub struct DemoClient {
    file: PathBuf,
    /// The last read error logged, so that a page reloaded all day logs it once; cleared when
    /// the file is read again.
    logged: Mutex<Option<String>>,
}

impl DemoClient {
    pub fn new(config: &DemoConfig) -> Self {
        Self {
            file: config.client_file.clone(),
            logged: Mutex::new(None),
        }
    }

    pub(super) fn serve(&self) -> Response<Body> {
        let read = std::fs::File::open(&self.file).and_then(|file| {
            let mut bytes = Vec::new();
            file.take(CLIENT_MAX_BYTES).read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        match read {
            Ok(bytes) => {
                if logged.take().is_some() {
                    info!(path = %self.file.display(), "the demo's socket.io client (demo.client_file) can be read again");
                }
                with_header(
                    Response::new(Full::new(Bytes::from(bytes))),
                    header::CONTENT_TYPE,
                    "text/javascript; charset=utf-8",
                )
            }
            Err(e) => {
                let error = e.to_string();
                if logged.as_deref() != Some(error.as_str()) {
                    warn!(
                        path = %self.file.display(),
                        %error,
                        "/demo/socket.io.min.js answers 404: demo.client_file cannot be read; copy dist/socket.io.min.js of the socket.io-client npm package there (logged once until the error changes)"
                    );
                    *logged = Some(error);
                }
                text(StatusCode::NOT_FOUND, CLIENT_MISSING)
            }
        }
    }
}
