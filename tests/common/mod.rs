//! Helpers shared by the integration tests: a minimal HTTP/1.1 client over a raw socket, so
//! tests control every byte (lying Content-Length, chunked bodies) without a client crate.

#![allow(dead_code)]

pub mod pki;
pub mod ws;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const SECRET: &str = "integration-secret-0123456789";

/// Sends `head` (request line and headers, without the blank line) and `body`, returns the
/// status and the body of the answer.
pub async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    // The relay may answer and close before reading all of an oversized body.
    stream.write_all(&request).await.ok();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .ok();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    raw(addr, &format!("GET {path} HTTP/1.1"), b"").await
}

/// POSTs `body` to the webhook with `secret` (none when `None`).
pub async fn post_hook(addr: SocketAddr, secret: Option<&str>, body: &str) -> (u16, String) {
    let secret = secret
        .map(|s| format!("\r\nX-Relay-Secret: {s}"))
        .unwrap_or_default();
    let head = format!(
        "POST /hooks/directus HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}{secret}",
        body.len()
    );
    raw(addr, &head, body.as_bytes()).await
}

pub const CREATE: &str =
    r#"{"event":"screens.items.create","payload":{"name":"Lobby"},"key":1,"collection":"screens"}"#;
