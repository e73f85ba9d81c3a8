//! `[tls]`: kiosks on wss and webhooks on https, on the relay's one port.

use std::sync::Arc;

use futures_util::SinkExt;
use kiosk_tests::pki::Pki;
use kiosk_tests::ws::next_text;
use kiosk_tests::{Kiosk, PATIENCE, Relay, config, hook, keys};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

fn connector(pki: &Pki) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(pki.ca_der.clone()))
        .expect("CA");
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A Socket.IO kiosk over wss (the rust_socketio client, which trusts the test CA) receives a
/// change posted to the webhook over https; a raw Engine.IO client on wss from the first byte
/// does too; and plain HTTP on the TLS port gets no answer.
#[tokio::test]
async fn kiosks_on_wss_receive_changes_posted_over_https() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let section = pki.issue("relay").section(dir.path());
    let relay = Relay::start_tls(&config(&section), &pki.ca_pem).await;
    assert!(relay.url("/").starts_with("https://"));

    let mut kiosk = Kiosk::connect(&relay).await;
    kiosk.expect("relay.status").await;

    let tls = connector(&pki)
        .connect(
            ServerName::try_from("localhost").expect("name"),
            TcpStream::connect(relay.addr).await.expect("connect"),
        )
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "HTTP/1.1 negotiated, as WebSocket upgrades need"
    );
    let url = format!(
        "wss://localhost:{}/socket.io/?EIO=4&transport=websocket",
        relay.addr.port()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WebSocket over TLS");
    assert!(
        next_text(&mut ws, PATIENCE).await.starts_with("0{"),
        "Engine.IO open"
    );
    ws.send(Message::text("40")).await.expect("join /");

    relay
        .change(&hook("screens", "create", json!(7), json!({"name": "TLS"})))
        .await;
    let body = kiosk.expect("data.create").await;
    assert_eq!(keys(&body), vec!["7"]);
    let event = loop {
        let text = next_text(&mut ws, PATIENCE).await;
        if let Some(event) = text.strip_prefix("42") {
            let event: Value = serde_json::from_str(event).expect("event JSON");
            if event[0] == "data.create" {
                break event;
            }
        }
    };
    assert_eq!(event[1]["record"], json!({"id": 7, "name": "TLS"}));

    let (status, body) = relay.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"), "/healthz on https");

    // Plain HTTP on the TLS port: no HTTP answer, and the relay goes on.
    let mut plain = TcpStream::connect(relay.addr).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, plain.read_to_end(&mut answer))
        .await
        .expect("the relay closes a plain-HTTP connection")
        .ok();
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "plain HTTP served on a TLS port: {}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(relay.get("/healthz").await.0, 200);
    kiosk.disconnect().await;
    relay.stop().await;
}
