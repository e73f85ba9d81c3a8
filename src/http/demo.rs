//! The demo kiosk at `/demo`. It loads the relay's built-in socket.io-client
//! (`/socket.io/socket.io.min.js`, `http/client_js.rs`).
//!
//! Nothing from the request reaches the page: it is the same bytes for every URL, it loads
//! scripts from the relay's own origin only (its `Content-Security-Policy` says so too), and
//! reads its query string only as data (collection, token, key field).

use http::{Response, header};

use super::{Body, html, with_header};

/// The demo kiosk: the wire contract in one page, for a site's web developer to copy.
const PAGE: &str = include_str!("../demo.html");

/// Scripts from the relay's own origin and the page's inline ones only; no plugins, and no
/// `<base>` that could point the relative script URL elsewhere.
const PAGE_POLICY: &str = "script-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'";

/// The demo page.
pub(super) fn page() -> Response<Body> {
    with_header(html(PAGE), header::CONTENT_SECURITY_POLICY, PAGE_POLICY)
}
