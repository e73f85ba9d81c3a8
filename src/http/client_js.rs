//! The scripts a kiosk page needs, served from copies built into the binary, so that a page
//! needs nothing but the relay:
//!
//! * `/socket.io/socket.io.min.js`: the socket.io-client browser bundle, where Node's
//!   socket.io server serves it, in the version the relay is tested with
//!   ([`SOCKET_IO_CLIENT_VERSION`]; `client/vendor/README.md` says how it was obtained and
//!   checked). socket.io-client is MIT-licensed, © Guillermo Rauch and Socket.IO
//!   contributors; its notice is served at `/licenses/socket.io-client.txt`.
//! * `/relay-client.js`: the kiosk client library (`client/relay-client.js`, an ES module),
//!   and `/relay-client.classic.js`, the same for a classic `<script>`.
//!
//! The scripts are kept gzip-compressed (`build.rs`: 26 KB instead of 83, for the release
//! binaries' 4 MiB budget) and sent as they are kept, `Content-Encoding: gzip`, which every
//! browser accepts; a client that does not say `Accept-Encoding: gzip` gets a `406` that says
//! so (`curl --compressed`). Each answer carries an `ETag` (a `304` for a page that has the
//! same bytes) and `Cache-Control: no-cache`, so a screen revalidates after a relay upgrade;
//! the scripts may be loaded by pages of any origin (`Access-Control-Allow-Origin: *`: they
//! hold no secret).

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::Full;

use super::conditional;

/// The socket.io-client release built in: the one `e2e/package.json` tests the relay with.
pub const SOCKET_IO_CLIENT_VERSION: &str = "4.8.4";

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// What the bundle holds and under which licences, then socket.io-client's `LICENSE`.
const SOCKET_IO_NOTICE: &str = concat!(
    "socket.io-client 4.8.4 (dist/socket.io.min.js), served by directus-relay at\n",
    "/socket.io/socket.io.min.js, unchanged from the npm package.\n\n",
    "The bundle also holds engine.io-client, engine.io-parser and socket.io-parser\n",
    "(MIT License, Copyright (c) 2014-present Guillermo Rauch and Socket.IO contributors)\n",
    "and @socket.io/component-emitter (MIT License, Copyright (c) 2014 Component\n",
    "contributors <dev@component.io>), under the terms below.\n\n",
    include_str!("../../client/vendor/socket.io-client.LICENSE"),
);

/// One built-in file.
#[derive(Debug)]
struct Builtin {
    path: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
    /// `bytes` are gzip-compressed (`build.rs`).
    gzip: bool,
}

const FILES: [Builtin; 4] = [
    Builtin {
        path: "/socket.io/socket.io.min.js",
        bytes: include_bytes!(concat!(env!("OUT_DIR"), "/socket.io.min.js.gz")),
        content_type: JAVASCRIPT,
        gzip: true,
    },
    Builtin {
        path: "/licenses/socket.io-client.txt",
        bytes: SOCKET_IO_NOTICE.as_bytes(),
        content_type: TEXT,
        gzip: false,
    },
    Builtin {
        path: "/relay-client.js",
        bytes: include_bytes!(concat!(env!("OUT_DIR"), "/relay-client.js.gz")),
        content_type: JAVASCRIPT,
        gzip: true,
    },
    Builtin {
        path: "/relay-client.classic.js",
        bytes: include_bytes!(concat!(env!("OUT_DIR"), "/relay-client.classic.js.gz")),
        content_type: JAVASCRIPT,
        gzip: true,
    },
];

/// What a client that cannot take a compressed script is told.
const GZIP_ONLY: &str = "this relay keeps its scripts gzip-compressed: ask with Accept-Encoding: gzip (every browser does; curl --compressed)\n";

/// Whether `Accept-Encoding` takes gzip (`gzip`, `x-gzip` or `*`, without `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            // q=0, 0.0, 0.00…: not acceptable (compared as text: no float parser for this).
            let refused = parts.any(|p| {
                p.strip_prefix("q=").is_some_and(|q| {
                    let q = q.trim();
                    q.starts_with('0') && q.bytes().all(|b| b == b'0' || b == b'.')
                })
            });
            !refused
                && (name.eq_ignore_ascii_case("gzip")
                    || name.eq_ignore_ascii_case("x-gzip")
                    || name == "*")
        })
}

/// Each file's entity tag: a hash of its bytes, worked out by the compiler.
const HASHES: [u64; FILES.len()] = {
    let mut hashes = [0; FILES.len()];
    let mut i = 0;
    while i < FILES.len() {
        hashes[i] = fnv1a(FILES[i].bytes);
        i += 1;
    }
    hashes
};

/// FNV-1a, 64 bits: enough to tell two versions of a file apart.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash = (hash ^ bytes[i] as u64).wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The answer for a built-in file, or `None` when `path` names none.
pub fn serve(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
    let i = FILES.iter().position(|f| f.path == path)?;
    let file = &FILES[i];
    let etag = format!("\"{:016x}\"", HASHES[i]);
    let etag = etag.as_str();
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(TEXT));
        r
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Some(r);
    }
    if file.gzip && !accepts_gzip(headers) {
        let mut r = plain(StatusCode::NOT_ACCEPTABLE, GZIP_ONLY);
        r.headers_mut().insert(
            header::VARY,
            header::HeaderValue::from_static("Accept-Encoding"),
        );
        return Some(r);
    }
    let mut response = if conditional::not_modified(headers, etag) {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from_static(file.bytes)
        };
        let mut r = Response::new(Full::new(body));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(file.content_type),
        );
        h.insert(header::CONTENT_LENGTH, file.bytes.len().into());
        if file.gzip {
            h.insert(
                header::CONTENT_ENCODING,
                header::HeaderValue::from_static("gzip"),
            );
        }
        r
    };
    if file.gzip {
        response.headers_mut().insert(
            header::VARY,
            header::HeaderValue::from_static("Accept-Encoding"),
        );
    }
    let h = response.headers_mut();
    if let Ok(value) = header::HeaderValue::from_str(etag) {
        h.insert(header::ETAG, value);
    }
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundle built in is the release pinned here, in `client/vendor` and in the e2e
    /// suite that tests the relay with it.
    #[test]
    fn the_built_in_socket_io_client_is_the_pinned_release() {
        let bundle = include_str!("../../client/vendor/socket.io.min.js");
        let head = &bundle[..200];
        assert!(
            head.contains(&format!("Socket.IO v{SOCKET_IO_CLIENT_VERSION}\n")),
            "{head}"
        );
        assert!(SOCKET_IO_NOTICE.contains(SOCKET_IO_CLIENT_VERSION));
        let pinned = include_str!("../../client/vendor/socket.io-client.version");
        assert!(
            pinned
                .lines()
                .any(|l| l == format!("version: {SOCKET_IO_CLIENT_VERSION}")),
            "{pinned}"
        );
        let e2e: serde_json::Value =
            serde_json::from_str(include_str!("../../e2e/package.json")).expect("JSON");
        assert_eq!(
            e2e["dependencies"]["socket.io-client"], SOCKET_IO_CLIENT_VERSION,
            "e2e/package.json tests another socket.io-client than the one built in"
        );
        assert!(SOCKET_IO_NOTICE.contains("Permission is hereby granted"));
    }

    /// The classic build is relay-client.js wrapped, not a copy that drifted: every line of
    /// the module, without its `export`, is in it.
    #[test]
    fn the_classic_build_holds_the_module() {
        let module = include_str!("../../client/relay-client.js");
        let classic = include_str!("../../client/relay-client.classic.js");
        for line in module.lines() {
            let line = line.strip_prefix("export ").unwrap_or(line);
            assert!(
                classic.contains(line),
                "relay-client.classic.js is stale (node client/build-classic.mjs): {line}"
            );
        }
    }

    fn accepting(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            header::HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn gzip_is_accepted_unless_refused() {
        for (value, expected) in [
            ("gzip, deflate, br", true),
            ("br;q=1.0, gzip;q=0.8", true),
            ("x-gzip", true),
            ("*", true),
            ("GZIP", true),
            ("identity", false),
            ("gzip;q=0", false),
            ("gzip; q=0.000", false),
            ("gzip;q=0.001", true),
            ("br", false),
            ("", false),
        ] {
            assert_eq!(accepts_gzip(&accepting(value)), expected, "{value:?}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn answers_carry_validators_and_304_when_current() {
        let get = |headers: &HeaderMap| {
            serve(&Method::GET, "/socket.io/socket.io.min.js", headers).expect("built in")
        };
        let first = get(&accepting("gzip"));
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[header::CONTENT_TYPE], JAVASCRIPT);
        assert_eq!(first.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(first.headers()[header::VARY], "Accept-Encoding");
        assert_eq!(first.headers()[header::CACHE_CONTROL], "no-cache");
        let etag = first.headers()[header::ETAG].clone();
        let mut again = accepting("gzip");
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(get(&again).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(get(&HeaderMap::new()).status(), StatusCode::NOT_ACCEPTABLE);
        let licence = serve(
            &Method::GET,
            "/licenses/socket.io-client.txt",
            &HeaderMap::new(),
        )
        .expect("built in");
        assert_eq!(licence.status(), StatusCode::OK, "plain text, uncompressed");
        assert!(serve(&Method::GET, "/socket.io/socket.io.js", &HeaderMap::new()).is_none());
        let post = serve(&Method::POST, "/relay-client.js", &HeaderMap::new()).expect("built in");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
