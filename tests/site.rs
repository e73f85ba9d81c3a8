//! What the relay serves from files, driven in-process over real sockets: the built-in scripts
//! (socket.io-client where Node's socket.io serves it, relay-client.js, the licence notice)
//! and the kiosk app of `[site]`: types, validators, ranges, index files, and every way out of
//! the folder refused without saying where the folder is.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::SECRET;
use directus_relay::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

type Running = (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

/// A relay with its state in `state` and `extra` config.
async fn start(state: &Path, extra: &str) -> Running {
    let mut config = Config::from_toml(&format!(
        "[webhook]\nsecret = \"{SECRET}\"\n[clients]\nallow_anonymous = true\n{extra}"
    ))
    .expect("valid config");
    config.state_dir = state.to_path_buf();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(directus_relay::run(config, listener, shutdown.clone()));
    (addr, shutdown, task)
}

/// An answer: status, head, body bytes.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(": ")?;
            key.eq_ignore_ascii_case(name).then(|| value.trim_end())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request line` with `headers` exactly as written (no normalising of the path).
async fn fetch(addr: SocketAddr, line: &str, headers: &[&str]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{line}\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .ok();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    Answer {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    fetch(addr, &format!("GET {path} HTTP/1.1"), &[]).await
}

/// CRC-32 (IEEE), as a gzip trailer holds it.
fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &b| {
        (0..8).fold(crc ^ u32::from(b), |c, _| {
            if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            }
        })
    })
}

#[tokio::test]
async fn the_built_in_scripts_and_the_licence() {
    let state = tempfile::tempdir().expect("tempdir");
    let (addr, shutdown, task) = start(state.path(), "").await;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = [
        (
            "/socket.io/socket.io.min.js",
            repo.join("client/vendor/socket.io.min.js"),
        ),
        ("/relay-client.js", repo.join("client/relay-client.js")),
        (
            "/relay-client.classic.js",
            repo.join("client/relay-client.classic.js"),
        ),
    ];
    let gzip = "Accept-Encoding: gzip, deflate";
    for (path, file) in files {
        let answer = fetch(addr, &format!("GET {path} HTTP/1.1"), &[gzip]).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.header("content-encoding"), Some("gzip"), "{path}");
        assert_eq!(answer.header("vary"), Some("Accept-Encoding"));
        // The gzip stream's trailer: the CRC-32 and the length of what it holds, which must be
        // the file of client/ (the e2e suite also compares the decompressed bytes).
        let raw = std::fs::read(&file).expect("read");
        let body = &answer.body;
        assert_eq!(&body[..2], &[0x1f, 0x8b], "{path}: a gzip stream");
        let trailer = &body[body.len() - 8..];
        let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        let size = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
        assert_eq!(
            (crc, size as usize),
            (crc32(&raw), raw.len()),
            "{path} holds {}",
            file.display()
        );
        assert_eq!(
            answer.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(answer.header("cache-control"), Some("no-cache"));
        assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
        let etag = answer.header("etag").expect("an etag").to_owned();
        let again = fetch(
            addr,
            &format!("GET {path} HTTP/1.1"),
            &[gzip, &format!("If-None-Match: {etag}")],
        )
        .await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
        let head = fetch(addr, &format!("HEAD {path} HTTP/1.1"), &[gzip]).await;
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("content-length"),
            Some(answer.body.len().to_string().as_str())
        );
        assert!(head.body.is_empty());
        let plain = get(addr, path).await;
        assert_eq!(plain.status, 406, "{path} without Accept-Encoding: gzip");
        assert!(
            plain.text().contains("curl --compressed"),
            "{}",
            plain.text()
        );
    }
    let licence = get(addr, "/licenses/socket.io-client.txt").await;
    assert_eq!(licence.status, 200);
    let text = licence.text();
    assert!(
        text.contains("socket.io-client 4.8.4")
            && text.contains("Guillermo Rauch")
            && text.contains("Permission is hereby granted"),
        "{text}"
    );
    // Socket.IO itself still answers under its path.
    let polling = get(addr, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(polling.status, 200, "{}", polling.text());
    assert!(polling.text().contains("\"sid\""), "{}", polling.text());
    assert_eq!(
        fetch(
            addr,
            "POST /relay-client.js HTTP/1.1",
            &["Content-Length: 0"]
        )
        .await
        .status,
        405
    );
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

/// A kiosk app with an index, a sub-folder, a script, a folder without an index, a hidden
/// file, a symlink inside and one out of the folder, next to a secret outside it.
fn app(state: &Path) -> std::path::PathBuf {
    let site = state.join("site");
    std::fs::create_dir_all(site.join("sub")).expect("mkdir");
    std::fs::create_dir_all(site.join("empty")).expect("mkdir");
    std::fs::write(site.join("index.html"), "<p>kiosk app</p>").expect("write");
    std::fs::write(site.join("sub/index.html"), "<p>sub page</p>").expect("write");
    std::fs::write(site.join("app.js"), "console.log('app');").expect("write");
    std::fs::write(site.join("style.css"), "p{}").expect("write");
    std::fs::write(site.join(".hidden"), "hidden").expect("write");
    std::fs::write(site.join("empty/notes.txt"), "notes").expect("write");
    std::fs::write(state.join("secret.txt"), "SECRET-OUTSIDE").expect("write");
    std::os::unix::fs::symlink(state.join("secret.txt"), site.join("out.txt")).expect("symlink");
    std::os::unix::fs::symlink(state, site.join("up")).expect("symlink");
    std::os::unix::fs::symlink(site.join("app.js"), site.join("in.js")).expect("symlink");
    site
}

#[tokio::test]
async fn the_kiosk_app_is_served_from_its_folder_only() {
    let state = tempfile::tempdir().expect("tempdir");
    let site = app(state.path());
    let (addr, shutdown, task) = start(state.path(), "").await;

    let index = get(addr, "/app/").await;
    assert_eq!(index.status, 200);
    assert_eq!(index.text(), "<p>kiosk app</p>");
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(index.header("cache-control"), Some("no-cache"));
    assert!(index.header("last-modified").is_some());
    for (path, location) in [
        ("/app", "/app/"),
        ("/app?token=abc", "/app/?token=abc"),
        ("/app/sub", "/app/sub/"),
    ] {
        let answer = get(addr, path).await;
        assert_eq!(answer.status, 308, "{path}");
        assert_eq!(answer.header("location"), Some(location), "{path}");
    }
    assert_eq!(get(addr, "/app/sub/").await.text(), "<p>sub page</p>");
    for (path, content_type) in [
        ("/app/app.js", "text/javascript; charset=utf-8"),
        ("/app/style.css", "text/css; charset=utf-8"),
        ("/app/in.js", "text/javascript; charset=utf-8"),
        ("/app/index.html", "text/html; charset=utf-8"),
    ] {
        let answer = get(addr, path).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.header("content-type"), Some(content_type), "{path}");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    }

    let dir = site.display().to_string();
    let parent = state.path().display().to_string();
    for path in [
        "/app/empty/",
        "/app/empty",
        "/app/nope.html",
        "/app/../secret.txt",
        "/app/sub/../../secret.txt",
        "/app/%2e%2e/secret.txt",
        "/app/%2E%2E/secret.txt",
        "/app/sub/%2e%2e/%2e%2e/secret.txt",
        "/app/..%2fsecret.txt",
        "/app/%2e%2e%2fsecret.txt",
        "/app/..%5csecret.txt",
        "/app/out.txt",
        "/app/up/secret.txt",
        "/app/.hidden",
        "/app/index.html%00.js",
        "/app/%00",
        "/app//etc/passwd",
        "/app/%2fetc%2fpasswd",
        "/app/app.js/",
        "/app/%ff",
    ] {
        let answer = get(addr, path).await;
        let text = answer.text();
        assert!(
            answer.status == 404 || (path == "/app/empty" && answer.status == 308),
            "{path}: {} {text}",
            answer.status
        );
        for leak in [
            "SECRET-OUTSIDE",
            "notes",
            dir.as_str(),
            parent.as_str(),
            "os error",
        ] {
            assert!(!text.contains(leak), "{path}: {leak:?} in {text}");
        }
    }
    assert_eq!(
        fetch(addr, "POST /app/ HTTP/1.1", &["Content-Length: 0"])
            .await
            .status,
        405
    );
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

#[tokio::test]
async fn kiosk_app_files_revalidate_and_serve_ranges() {
    let state = tempfile::tempdir().expect("tempdir");
    let site = app(state.path());
    // Larger than one chunk of the streamed body, and not a multiple of it.
    let video: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(site.join("clip.mp4"), &video).expect("write");
    let (addr, shutdown, task) = start(state.path(), "[site]\npath = \"/kiosk/\"").await;
    assert_eq!(get(addr, "/app/").await.status, 404, "site.path moved it");

    let whole = get(addr, "/kiosk/clip.mp4").await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-type"), Some("video/mp4"));
    assert_eq!(whole.header("content-length"), Some("3000001"));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert!(whole.body == video, "the whole file, byte for byte");
    let etag = whole.header("etag").expect("etag").to_owned();
    let modified = whole
        .header("last-modified")
        .expect("last-modified")
        .to_owned();

    let line = "GET /kiosk/clip.mp4 HTTP/1.1";
    let current = fetch(addr, line, &[&format!("If-None-Match: {etag}")]).await;
    assert_eq!(current.status, 304);
    assert!(current.body.is_empty());
    assert_eq!(current.header("etag"), Some(etag.as_str()));
    assert!(modified.ends_with(" GMT"), "{modified}");
    let other = fetch(addr, line, &["If-None-Match: \"another\""]).await;
    assert_eq!(other.status, 200);

    let part = fetch(addr, line, &["Range: bytes=1000-1999"]).await;
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some("bytes 1000-1999/3000001")
    );
    assert_eq!(part.body, video[1000..2000]);
    let tail = fetch(addr, line, &["Range: bytes=-10"]).await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, video[video.len() - 10..]);
    let past = fetch(addr, line, &["Range: bytes=5000000-"]).await;
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some("bytes */3000001"));
    let stale = fetch(
        addr,
        line,
        &["Range: bytes=0-9", "If-Range: \"an-old-version\""],
    )
    .await;
    assert_eq!(
        stale.status, 200,
        "If-Range of another version: the whole file"
    );
    let head = fetch(addr, "HEAD /kiosk/clip.mp4 HTTP/1.1", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("3000001"));
    assert!(head.body.is_empty());

    // Replaced in place: a new ETag, and the new bytes.
    std::fs::write(site.join("clip.mp4"), b"new").expect("write");
    let changed = fetch(addr, line, &[&format!("If-None-Match: {etag}")]).await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body, b"new");
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

/// Before the app is installed its path answers 404 with the key to set, not the folder; once
/// the files are there they are served, without a restart.
#[tokio::test]
async fn a_missing_kiosk_app_says_which_key_and_not_where() {
    let state = tempfile::tempdir().expect("tempdir");
    let (addr, shutdown, task) = start(state.path(), "").await;
    let answer = get(addr, "/app/").await;
    assert_eq!(answer.status, 404);
    assert_eq!(
        answer.text(),
        "no kiosk app is installed on this relay (site.dir)\n"
    );
    std::fs::create_dir(state.path().join("site")).expect("mkdir");
    std::fs::write(state.path().join("site/index.html"), "installed").expect("write");
    assert_eq!(get(addr, "/app/").await.text(), "installed");
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}

/// A screen that reads a large file slowly gets all of it: the connection counts as busy, not
/// idle, while the body is sent, so `limits.idle_timeout` does not cut the download. (The pause
/// is the condition under test: longer than the idle timeout, with the answer half sent.)
#[tokio::test]
async fn a_slow_download_is_not_cut_as_idle() {
    let state = tempfile::tempdir().expect("tempdir");
    let site = app(state.path());
    let size = 8 << 20;
    std::fs::write(site.join("big.bin"), vec![7u8; size]).expect("write");
    let (addr, shutdown, task) = start(
        state.path(),
        "[limits]\nidle_timeout = \"200ms\"\nheader_timeout = \"200ms\"",
    )
    .await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /app/big.bin HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut first = vec![0u8; 64 << 10];
    stream
        .read_exact(&mut first)
        .await
        .expect("the first bytes");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest))
        .await
        .expect("in time")
        .expect("read to the end");
    first.extend_from_slice(&rest);
    let split = first
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    assert_eq!(first.len() - split - 4, size, "the whole file");
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
}
