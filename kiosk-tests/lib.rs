//! Test harness: the whole relay in-process on `127.0.0.1:0`, kiosks that connect with the
//! `rust_socketio` client crate, and webhook posts over real HTTP.

pub mod fake_directus;
#[path = "../tests/common/pki.rs"]
pub mod pki;
#[path = "../tests/common/ws.rs"]
pub mod ws;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use directus_relay::Config;
use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The webhook secret of [`config`].
pub const SECRET: &str = "kiosk-tests-secret-0123456789";

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A config relaying `screens` and `announcements` to kiosks without a token, with `extra`
/// TOML appended.
pub fn config(extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
clients.allow_anonymous = true
[webhook]
secret = "{SECRET}"
[[collections]]
name = "screens"
[[collections]]
name = "announcements"
{extra}
"#
    )
}

/// A relay running in this process.
#[derive(Debug)]
pub struct Relay {
    pub addr: SocketAddr,
    /// The relay's state directory, removed when the last clone of it is dropped: a test that
    /// restarts the relay hands a clone to [`Relay::start_in`].
    pub state_dir: std::sync::Arc<tempfile::TempDir>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
    /// With `[tls]`: the CA that kiosks and webhook posts trust.
    ca_pem: Option<String>,
}

impl Relay {
    /// Starts the relay with `toml` on an ephemeral port.
    pub async fn start(toml: &str) -> Relay {
        let state_dir = std::sync::Arc::new(tempfile::tempdir().expect("state dir"));
        Self::start_in(toml, state_dir, "127.0.0.1:0").await
    }

    /// Starts the relay with `toml`, keeping its state in `state_dir`, listening on `listen`.
    pub async fn start_in(
        toml: &str,
        state_dir: std::sync::Arc<tempfile::TempDir>,
        listen: &str,
    ) -> Relay {
        let mut config = Config::from_toml(toml).expect("test config is valid");
        config.state_dir = state_dir.path().to_owned();
        let listener = TcpListener::bind(listen).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(directus_relay::run(config, listener, shutdown.clone()));
        Relay {
            addr,
            state_dir,
            shutdown,
            task,
            http: reqwest::Client::new(),
            ca_pem: None,
        }
    }

    /// Starts the relay with `toml`, which has a `[tls]` section whose certificate `ca_pem`
    /// issued; kiosks and webhook posts then use https and trust that CA.
    pub async fn start_tls(toml: &str, ca_pem: &str) -> Relay {
        let mut relay = Self::start(toml).await;
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA certificate");
        relay.http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .expect("https client");
        relay.ca_pem = Some(ca_pem.to_owned());
        relay
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// POSTs `body` to the webhook with the right secret; returns status and body.
    pub async fn post(&self, body: &str) -> (u16, String) {
        self.post_with_secret(body, Some(SECRET)).await
    }

    pub async fn post_with_secret(&self, body: &str, secret: Option<&str>) -> (u16, String) {
        let mut request = self
            .http
            .post(self.url("/hooks/directus"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(secret) = secret {
            request = request.header("X-Relay-Secret", secret);
        }
        let response = request.send().await.expect("webhook request");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// POSTs and asserts the relay accepted the change.
    pub async fn change(&self, body: &str) {
        let (status, text) = self.post(body).await;
        assert_eq!(status, 202, "webhook refused: {text}");
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// A request to the relay's HTTP API, with `bearer` as `Authorization: Bearer` and `body`
    /// as JSON; returns the status and the JSON answer (`null` when it is not JSON).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("API request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Stops the relay the way SIGTERM does and checks it ended cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("relay stops within the grace period")
            .expect("relay task did not panic");
        result.expect("relay ended without error");
    }
}

/// One thing a kiosk received: an event with its name, or the ack of its subscribe.
#[derive(Debug, Clone)]
pub enum Received {
    Event(String, Value),
    Ack(Value),
}

/// A kiosk: a real Socket.IO client that records everything it receives, in order.
pub struct Kiosk {
    client: Client,
    tx: mpsc::Sender<Received>,
    rx: mpsc::Receiver<Received>,
    stash: VecDeque<Received>,
    /// What arrived, unread, before the last subscribe's ack.
    pub before_ack: Vec<Received>,
}

/// The name under which a kiosk records the relay's Socket.IO disconnect packet: a clean close,
/// as opposed to a dropped connection.
pub const SERVER_DISCONNECT: &str = "(disconnected by the relay)";

/// The name under which a kiosk records a client error, such as a refused connection.
pub const ERROR: &str = "(error)";

/// What a kiosk may hold before the test reads it.
const KIOSK_BUFFER: usize = 100_000;

fn first_arg(payload: Payload) -> Value {
    match payload {
        #[allow(deprecated)]
        Payload::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        Payload::Text(mut values) if !values.is_empty() => values.swap_remove(0),
        Payload::Text(_) => Value::Null,
        Payload::Binary(_) => Value::Null,
    }
}

impl Kiosk {
    pub async fn connect(relay: &Relay) -> Kiosk {
        Self::connect_with_auth(relay, Value::Null).await
    }

    /// Connects with `auth` as the Socket.IO handshake data (none when `null`).
    pub async fn connect_with_auth(relay: &Relay, auth: Value) -> Kiosk {
        Self::connect_to(relay, "/", auth).await
    }

    /// Connects to `namespace` with `auth` (none when `null`).
    pub async fn connect_to(relay: &Relay, namespace: &str, auth: Value) -> Kiosk {
        let (tx, rx) = mpsc::channel(KIOSK_BUFFER);
        let on_event = tx.clone();
        let on_close = tx.clone();
        let on_error = tx.clone();
        let mut builder = ClientBuilder::new(relay.url("/"))
            .namespace(namespace)
            .reconnect(false);
        if !auth.is_null() {
            builder = builder.auth(auth);
        }
        if let Some(ca_pem) = &relay.ca_pem {
            let ca = native_tls::Certificate::from_pem(ca_pem.as_bytes()).expect("CA certificate");
            let connector = native_tls::TlsConnector::builder()
                .add_root_certificate(ca)
                .build()
                .expect("TLS connector");
            builder = builder.tls_config(connector);
        }
        let client = builder
            .on_any(move |event, payload, _client| {
                let tx = on_event.clone();
                async move {
                    let name = String::from(event);
                    tx.send(Received::Event(name, first_arg(payload)))
                        .await
                        .ok();
                }
                .boxed()
            })
            .on(Event::Error, move |payload, _client| {
                let tx = on_error.clone();
                async move {
                    tx.send(Received::Event(ERROR.into(), first_arg(payload)))
                        .await
                        .ok();
                }
                .boxed()
            })
            .on(Event::Close, move |_payload, _client| {
                let tx = on_close.clone();
                async move {
                    tx.send(Received::Event(SERVER_DISCONNECT.into(), Value::Null))
                        .await
                        .ok();
                }
                .boxed()
            })
            .connect()
            .await
            .expect("kiosk connects");
        let mut kiosk = Kiosk {
            client,
            tx,
            rx,
            stash: VecDeque::new(),
            before_ack: Vec::new(),
        };
        // The client returns before the namespace is joined; the relay greets every kiosk with
        // `relay.status`, so the first thing received proves the kiosk is connected.
        let first = kiosk.receive().await;
        kiosk.stash.push_back(first);
        kiosk
    }

    async fn receive(&mut self) -> Received {
        if let Some(r) = self.stash.pop_front() {
            return r;
        }
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("kiosk received something in time")
            .expect("kiosk channel open")
    }

    /// The next event, skipping nothing.
    pub async fn next(&mut self) -> (String, Value) {
        match self.receive().await {
            Received::Event(name, body) => (name, body),
            Received::Ack(ack) => panic!("expected an event, got the ack {ack}"),
        }
    }

    /// The next `data.*` event, skipping `relay.status`.
    pub async fn next_data(&mut self) -> (String, Value) {
        loop {
            let (name, body) = self.next().await;
            if name != "relay.status" {
                return (name, body);
            }
        }
    }

    /// The next event, which must be `name`.
    pub async fn expect(&mut self, name: &str) -> Value {
        let (got, body) = self.next().await;
        assert_eq!(got, name, "unexpected event {got}: {body}");
        body
    }

    /// Sends `subscribe` with `request` and returns its ack. What was unread or arrived before
    /// the ack moves to [`Kiosk::before_ack`]; [`Kiosk::next`] then returns what followed it.
    pub async fn subscribe(&mut self, request: Value) -> Value {
        // The ack goes into the same channel as events: the client runs ack and event
        // callbacks one at a time in arrival order, so the channel holds the true order.
        let on_ack = self.tx.clone();
        self.client
            .emit_with_ack("subscribe", request, PATIENCE, move |payload, _client| {
                let on_ack = on_ack.clone();
                async move {
                    // The client hands the ack's argument list over as one array.
                    let ack = match first_arg(payload) {
                        Value::Array(mut args) if args.len() == 1 => args.swap_remove(0),
                        other => other,
                    };
                    on_ack.send(Received::Ack(ack)).await.ok();
                }
                .boxed()
            })
            .await
            .expect("subscribe sent");
        let mut before: Vec<Received> = self.stash.drain(..).collect();
        let ack = loop {
            let received = tokio::time::timeout(PATIENCE, self.rx.recv())
                .await
                .expect("subscribe acknowledged in time")
                .expect("kiosk channel open");
            match received {
                Received::Ack(ack) => break ack,
                event => before.push(event),
            }
        };
        self.before_ack = before;
        ack
    }

    /// What has arrived and not been read yet, without waiting.
    pub fn try_next(&mut self) -> Option<Received> {
        self.stash.pop_front().or_else(|| self.rx.try_recv().ok())
    }

    /// Asserts nothing more arrives within `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(r) = self.stash.pop_front() {
            panic!("expected silence, got {r:?}");
        }
        if let Ok(Some(r)) = tokio::time::timeout(wait, self.rx.recv()).await {
            panic!("expected silence, got {r:?}");
        }
    }

    pub async fn disconnect(self) {
        self.client.disconnect().await.ok();
    }
}

/// The `seq` of an event body.
pub fn seq(body: &Value) -> u64 {
    body["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {body}"))
}

/// The `keys` of an event body.
pub fn keys(body: &Value) -> Vec<String> {
    body["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys in {body}"))
        .iter()
        .map(|k| {
            k.as_str()
                .unwrap_or_else(|| panic!("key {k} is not a string"))
                .to_owned()
        })
        .collect()
}

/// A webhook body as a Directus Flow sends it.
pub fn hook(collection: &str, action: &str, keys: Value, payload: Value) -> String {
    let key_field = if action == "create" { "key" } else { "keys" };
    serde_json::json!({
        "event": format!("{collection}.items.{action}"),
        "collection": collection,
        key_field: keys,
        "payload": payload,
    })
    .to_string()
}
