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
//! Each answer carries an `ETag` (a `304` for a page that has the same bytes) and
//! `Cache-Control: no-cache`, so a screen revalidates after a relay upgrade; the scripts may
//! be loaded by pages of any origin (`Access-Control-Allow-Origin: *`: they hold no secret).

use std::sync::LazyLock;

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
}

const FILES: [Builtin; 4] = [
    Builtin {
        path: "/socket.io/socket.io.min.js",
        bytes: include_bytes!("../../client/vendor/socket.io.min.js"),
        content_type: JAVASCRIPT,
    },
    Builtin {
        path: "/licenses/socket.io-client.txt",
        bytes: SOCKET_IO_NOTICE.as_bytes(),
        content_type: TEXT,
    },
    Builtin {
        path: "/relay-client.js",
        bytes: include_bytes!("../../client/relay-client.js"),
        content_type: JAVASCRIPT,
    },
    Builtin {
        path: "/relay-client.classic.js",
        bytes: include_bytes!("../../client/relay-client.classic.js"),
        content_type: JAVASCRIPT,
    },
];

/// Each file's entity tag: a hash of its bytes, worked out once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|f| format!("\"{:016x}\"", fnv1a(f.bytes)))
        .collect()
});

/// FNV-1a, 64 bits: enough to tell two versions of a file apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The answer for a built-in file, or `None` when `path` names none.
pub fn serve(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
    let i = FILES.iter().position(|f| f.path == path)?;
    let file = &FILES[i];
    let etag = ETAGS[i].as_str();
    let mut response = if method != Method::GET && method != Method::HEAD {
        let mut r = Response::new(Full::new(Bytes::from_static(b"use GET\n")));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(TEXT));
        return Some(r);
    } else if conditional::not_modified(headers, etag, None) {
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
        r
    };
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
        let head = std::str::from_utf8(&FILES[0].bytes[..200]).expect("ASCII banner");
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
        let module = std::str::from_utf8(FILES[2].bytes).expect("UTF-8");
        let classic = std::str::from_utf8(FILES[3].bytes).expect("UTF-8");
        for line in module.lines() {
            let line = line.strip_prefix("export ").unwrap_or(line);
            assert!(
                classic.contains(line),
                "relay-client.classic.js is stale (node client/build-classic.mjs): {line}"
            );
        }
    }

    #[test]
    fn answers_carry_validators_and_304_when_current() {
        let get = |headers: &HeaderMap| {
            serve(&Method::GET, "/socket.io/socket.io.min.js", headers).expect("built in")
        };
        let first = get(&HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[header::CONTENT_TYPE], JAVASCRIPT);
        assert_eq!(first.headers()[header::CACHE_CONTROL], "no-cache");
        let etag = first.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(get(&again).status(), StatusCode::NOT_MODIFIED);
        assert!(serve(&Method::GET, "/socket.io/socket.io.js", &HeaderMap::new()).is_none());
        let post = serve(&Method::POST, "/relay-client.js", &HeaderMap::new()).expect("built in");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
