//! An in-process stand-in for Directus 12.4 over TLS, for hermetic tests of the relay's
//! upstream. It serves what the relay reads — `/server/info`, `/activity`, `/items/<c>`,
//! `/collections/<c>`, `/auth/login`, the schema (`/fields`, `/relations`) and files (`/files/<id>`,
//! `/assets/<id>` with transformation parameters and `Range`) — and `/websocket` subscriptions, with the payload shapes
//! captured from a real Directus (`shared/directus/PROTOCOL.md`), and lets a test break it:
//! take it down, drop sockets, expire tokens, or make an activity id visible late.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

/// The static token the fake accepts (a read-only relay user).
pub const TOKEN: &str = "fake-directus-static-token";

/// An admin token: the only one that may manage Flows.
pub const ADMIN_TOKEN: &str = "fake-directus-admin-token";

/// A test CA and a server certificate for 127.0.0.1 and localhost that it signed.
pub struct TestCa {
    pub ca_pem: String,
    server: (
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    ),
}

impl TestCa {
    pub fn new() -> TestCa {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "relay test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let server_params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        TestCa {
            ca_pem: ca_cert.pem(),
            server: (
                vec![server_cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            ),
        }
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns its path.
    pub fn write_ca(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone)]
struct Row {
    id: u64,
    action: &'static str,
    collection: String,
    item: String,
}

#[derive(Default)]
struct State {
    items: HashMap<String, BTreeMap<String, Value>>,
    key_fields: HashMap<String, String>,
    activity: Vec<Row>,
    /// Rows written but not visible yet (a transaction still open).
    hidden: Vec<u64>,
    next_id: u64,
    activity_off: Vec<String>,
    activity_forbidden: bool,
    logins: usize,
    down: bool,
    requests: Vec<String>,
    flows: Vec<Value>,
    operations: Vec<Value>,
    /// Collections made through `POST /collections` (the heartbeat's), with their rows.
    made: BTreeMap<String, BTreeMap<String, Value>>,
    /// Files by id: bytes and content type.
    files: HashMap<String, (Bytes, String)>,
    /// What `/fields` and `/relations` answer.
    fields: Vec<Value>,
    relations: Vec<Value>,
    /// `/assets` answers send half the body, then close (a cut download).
    cut_assets: bool,
    /// `/assets` requests answered so far.
    asset_gets: usize,
}

/// The fake server. Cheap to clone; every clone drives the same server.
#[derive(Clone)]
pub struct FakeDirectus {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Value>,
    kill_sockets: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
    /// `/assets` answers wait while this is false.
    assets_open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl FakeDirectus {
    /// Starts the fake with `collections` (name, key field) over TLS signed by `ca`.
    pub async fn start(ca: &TestCa, collections: &[(&str, &str)]) -> FakeDirectus {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut state = State {
            next_id: 1,
            ..State::default()
        };
        for (name, key) in collections {
            state.items.insert(name.to_string(), BTreeMap::new());
            state.key_fields.insert(name.to_string(), key.to_string());
        }
        // System activity before ours, as in a real database.
        for _ in 0..5 {
            let id = state.next_id;
            state.next_id += 1;
            state.activity.push(Row {
                id,
                action: "login",
                collection: "directus_users".into(),
                item: "admin".into(),
            });
        }
        let (events, _) = broadcast::channel(1024);
        let fake = FakeDirectus {
            addr,
            state: Arc::new(Mutex::new(state)),
            events,
            kill_sockets: Arc::new(Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
            assets_open: Arc::new(tokio::sync::watch::channel(true).0),
        };
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(ca.server.0.clone(), ca.server.1.clone_key())
        .expect("server cert");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = server.stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                if server.state().down {
                    drop(stream);
                    continue;
                }
                let acceptor = acceptor.clone();
                let server = server.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, std::convert::Infallible>(server.handle(req).await) }
                    });
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await
                        .ok();
                });
            }
        });
        fake
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake state")
    }

    /// The paths requested so far (with queries).
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    /// Refuses every connection (and closes open sockets) until `up` is called.
    pub fn down(&self) {
        self.state().down = true;
        self.drop_sockets();
    }

    pub fn up(&self) {
        self.state().down = false;
    }

    /// Closes every open WebSocket.
    pub fn drop_sockets(&self) {
        let mut kill = self.kill_sockets.lock().expect("kill");
        kill.cancel();
        *kill = CancellationToken::new();
    }

    /// Refuses the activity log to the relay's token (no read on `directus_activity`).
    pub fn forbid_activity(&self) {
        self.state().activity_forbidden = true;
    }

    /// How many times someone logged in with email and password.
    pub fn logins(&self) -> usize {
        self.state().logins
    }

    /// Switches activity off for a collection (`meta.accountability = null`).
    pub fn activity_off(&self, collection: &str) {
        self.state().activity_off.push(collection.into());
    }

    /// Writes `record` as a create, logs it and tells subscribers. Returns the activity id.
    pub fn create(&self, collection: &str, record: Value) -> u64 {
        self.write(collection, "create", record)
    }

    /// Merges `fields` into an item, logs it and tells subscribers.
    pub fn update(&self, collection: &str, key: &str, fields: Value) -> u64 {
        let mut record = {
            let state = self.state();
            state.items[collection][key].clone()
        };
        if let (Value::Object(r), Value::Object(f)) = (&mut record, fields) {
            r.extend(f);
        }
        self.write(collection, "update", record)
    }

    /// Deletes an item, logs it and tells subscribers.
    pub fn delete(&self, collection: &str, key: &str) -> u64 {
        let (id, logged) = {
            let mut state = self.state();
            state
                .items
                .get_mut(collection)
                .expect("collection")
                .remove(key);
            let logged = !state.activity_off.iter().any(|c| c == collection);
            (
                self.log(&mut state, "delete", collection, key, logged),
                logged,
            )
        };
        let _ = logged;
        self.events
            .send(json!({"type":"subscription","event":"delete","data":[key],"uid":collection}))
            .ok();
        id
    }

    /// Changes an item without any activity row or event, like a database cascade.
    pub fn silent_update(&self, collection: &str, key: &str, fields: Value) {
        let mut state = self.state();
        let item = state
            .items
            .get_mut(collection)
            .and_then(|c| c.get_mut(key))
            .expect("item");
        if let (Value::Object(r), Value::Object(f)) = (item, fields) {
            r.extend(f);
        }
    }

    /// Writes an item whose activity row stays invisible until [`FakeDirectus::commit_late`],
    /// while later rows are visible: ids committed out of order.
    pub fn create_uncommitted(&self, collection: &str, record: Value) -> u64 {
        let id = self.write_quiet(collection, "create", record);
        self.state().hidden.push(id);
        id
    }

    pub fn commit_late(&self, id: u64) {
        self.state().hidden.retain(|h| *h != id);
    }

    fn write(&self, collection: &str, action: &'static str, record: Value) -> u64 {
        let id = self.write_quiet(collection, action, record.clone());
        self.events
            .send(json!({"type":"subscription","event":action,"data":[record],"uid":collection}))
            .ok();
        id
    }

    fn write_quiet(&self, collection: &str, action: &'static str, record: Value) -> u64 {
        let mut state = self.state();
        let key_field = state.key_fields[collection].clone();
        let key = key_text(&record[&key_field]);
        state
            .items
            .get_mut(collection)
            .expect("collection")
            .insert(key.clone(), record);
        let logged = !state.activity_off.iter().any(|c| c == collection);
        self.log(&mut state, action, collection, &key, logged)
    }

    fn log(
        &self,
        state: &mut State,
        action: &'static str,
        collection: &str,
        key: &str,
        logged: bool,
    ) -> u64 {
        let id = state.next_id;
        state.next_id += 1;
        if logged {
            state.activity.push(Row {
                id,
                action,
                collection: collection.into(),
                item: key.into(),
            });
        }
        // Flow runs and system writes share the id sequence.
        state.next_id += 1;
        id
    }

    /// Uploads a file (as `/files` would): its bytes are served at `/assets/<id>`.
    pub fn add_file(&self, id: &str, bytes: impl Into<Bytes>, content_type: &str) {
        self.state()
            .files
            .insert(id.into(), (bytes.into(), content_type.into()));
    }

    /// Replaces a file's bytes under the same id ("Replace file"), logged as an update of
    /// `directus_files`.
    pub fn replace_file(&self, id: &str, bytes: impl Into<Bytes>) {
        let mut state = self.state();
        let content_type = state.files.get(id).map(|f| f.1.clone()).expect("file");
        state.files.insert(id.into(), (bytes.into(), content_type));
        self.log(&mut state, "update", "directus_files", id, true);
    }

    /// What `/fields` and `/relations` answer.
    pub fn set_schema(&self, fields: Vec<Value>, relations: Vec<Value>) {
        let mut state = self.state();
        state.fields = fields;
        state.relations = relations;
    }

    /// From now on `/assets` answers are cut half-way (or whole again).
    pub fn cut_assets(&self, cut: bool) {
        self.state().cut_assets = cut;
    }

    /// `/assets` answers wait until [`FakeDirectus::release_assets`].
    pub fn hold_assets(&self) {
        self.assets_open.send_replace(false);
    }

    pub fn release_assets(&self) {
        self.assets_open.send_replace(true);
    }

    /// `/assets` requests answered so far.
    pub fn asset_gets(&self) -> usize {
        self.state().asset_gets
    }

    /// The bytes `/assets/<id>?<query>` gives: the file itself, or for a transformation the
    /// file prefixed with the canonical parameters (so that each variant differs).
    pub fn variant(&self, id: &str, query: &str) -> Option<Vec<u8>> {
        let bytes = self.state().files.get(id)?.0.clone();
        let mut params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .filter(|(k, _)| k != "access_token")
            .collect();
        params.sort();
        if params.is_empty() {
            return Some(bytes.to_vec());
        }
        let prefix = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let mut out = format!("{prefix}:").into_bytes();
        out.extend_from_slice(&bytes);
        Some(out)
    }

    async fn asset(&self, id: &str, query: &str, range: Option<String>) -> Response<Full<Bytes>> {
        let mut open = self.assets_open.subscribe();
        open.wait_for(|open| *open).await.ok();
        let (variant, content_type, cut) = {
            let mut state = self.state();
            state.asset_gets += 1;
            let Some((_, content_type)) = state.files.get(id) else {
                return json_response(
                    StatusCode::NOT_FOUND,
                    json!({"errors":[{"message":"Route doesn't exist."}]}),
                );
            };
            let content_type = content_type.clone();
            let cut = state.cut_assets;
            drop(state);
            let variant = self.variant(id, query).expect("file");
            (variant, content_type, cut)
        };
        let total = variant.len();
        let builder = Response::builder()
            .header("content-type", content_type)
            .header("last-modified", "Sat, 05 Dec 2026 10:00:00 GMT")
            .header("accept-ranges", "bytes");
        let range = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| {
                let a: usize = a.parse().ok()?;
                let b: usize = if b.is_empty() {
                    total - 1
                } else {
                    b.parse().ok()?
                };
                Some((a, b.min(total - 1)))
            });
        if let Some((a, b)) = range {
            return builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header("content-range", format!("bytes {a}-{b}/{total}"))
                .header("content-length", b - a + 1)
                .body(Full::new(Bytes::from(variant[a..=b].to_vec())))
                .expect("response");
        }
        let body = if cut {
            variant[..total / 2].to_vec()
        } else {
            variant
        };
        builder
            .header("content-length", total)
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    }

    /// The current items of a collection.
    pub fn items(&self, collection: &str) -> BTreeMap<String, Value> {
        self.state().items[collection].clone()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        self.state().requests.push(format!("{path}?{query}"));
        if self.state().down {
            // Connections already open when it went down get what a proxy would answer.
            return json_response(
                StatusCode::BAD_GATEWAY,
                json!({"errors":[{"message":"Bad Gateway"}]}),
            );
        }
        if path == "/websocket" {
            return self.websocket(req);
        }
        if path == "/server/ping" {
            return Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .body(Full::new(Bytes::from_static(b"pong")))
                .expect("response");
        }
        if path == "/auth/login" {
            self.state().logins += 1;
            return json_response(
                StatusCode::OK,
                json!({"data": {"access_token": TOKEN, "refresh_token": "r", "expires": 900_000}}),
            );
        }
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        if path.starts_with("/flows") || path.starts_with("/operations") {
            return self.flows(req, &bearer).await;
        }
        if path == "/collections" || (path.starts_with("/items/") && req.method() != "GET") {
            return self.writes(req, &bearer).await;
        }
        let authorized = bearer == TOKEN || bearer == ADMIN_TOKEN;
        if !authorized {
            return json_response(
                StatusCode::UNAUTHORIZED,
                json!({"errors":[{"message":"Invalid user credentials.","extensions":{"code":"INVALID_CREDENTIALS"}}]}),
            );
        }
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if path == "/fields" {
            let fields = self.state().fields.clone();
            return json_response(StatusCode::OK, json!({ "data": fields }));
        }
        if path == "/relations" {
            let relations = self.state().relations.clone();
            return json_response(StatusCode::OK, json!({ "data": relations }));
        }
        if let Some(id) = path.strip_prefix("/files/") {
            let size = self.state().files.get(id).map(|(b, _)| b.len());
            return match size {
                // Directus gives filesize as a string with some databases (bigInteger).
                Some(size) => json_response(
                    StatusCode::OK,
                    json!({"data": {"filesize": size.to_string()}}),
                ),
                None => json_response(
                    StatusCode::FORBIDDEN,
                    json!({"errors":[{"message":"You don't have permission to access this."}]}),
                ),
            };
        }
        if let Some(id) = path.strip_prefix("/assets/") {
            let range = req
                .headers()
                .get("range")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return self.asset(id, &query, range).await;
        }
        if path == "/server/info" {
            return json_response(
                StatusCode::OK,
                json!({"data":{"version":"12.4.0","websocket":{"rest":{"authentication":"handshake","path":"/websocket"},"heartbeat":30}}}),
            );
        }
        if path == "/activity" {
            if self.state().activity_forbidden {
                return json_response(
                    StatusCode::FORBIDDEN,
                    json!({"errors":[{"message":"You don't have permission to access collection \"directus_activity\" or it does not exist. Queried in root.","extensions":{"code":"FORBIDDEN"}}]}),
                );
            }
            return json_response(StatusCode::OK, json!({"data": self.activity(&params)}));
        }
        if let Some(collection) = path.strip_prefix("/collections/") {
            let known = {
                let state = self.state();
                state.items.contains_key(collection) || state.made.contains_key(collection)
            };
            if !known {
                return json_response(
                    StatusCode::FORBIDDEN,
                    json!({"errors":[{"message":"You don't have permission to access this.","extensions":{"code":"FORBIDDEN"}}]}),
                );
            }
            let off = self.state().activity_off.iter().any(|c| c == collection);
            let accountability = if off { Value::Null } else { json!("all") };
            return json_response(
                StatusCode::OK,
                json!({"data":{"meta":{"accountability": accountability}}}),
            );
        }
        if let Some(collection) = path.strip_prefix("/items/") {
            return match self.items_query(collection, &params) {
                Some(items) => json_response(StatusCode::OK, json!({ "data": items })),
                None => json_response(
                    StatusCode::FORBIDDEN,
                    json!({"errors":[{"message":format!("You don't have permission to access collection \"{collection}\" or it does not exist. Queried in root."),"extensions":{"code":"FORBIDDEN"}}]}),
                ),
            };
        }
        json_response(
            StatusCode::NOT_FOUND,
            json!({"errors":[{"message":"Route doesn't exist."}]}),
        )
    }

    /// Writes: `POST /collections` (admin only) makes a collection; `POST /items/<c>` creates
    /// and `PATCH /items/<c>/<key>` updates a row of one made so (keyed by `site`); like
    /// Directus, an update of a missing row and anything on an unknown collection is a 403.
    async fn writes(&self, req: Request<Incoming>, bearer: &str) -> Response<Full<Bytes>> {
        let forbidden = || {
            json_response(
                StatusCode::FORBIDDEN,
                json!({"errors":[{"message":"You don't have permission to access this.","extensions":{"code":"FORBIDDEN"}}]}),
            )
        };
        let (method, path, _, body) = read_request(req).await;
        let mut state = self.state();
        if path == "/collections" {
            if bearer != ADMIN_TOKEN || method != "POST" {
                return forbidden();
            }
            let name = body["collection"].as_str().unwrap_or_default().to_owned();
            state.made.insert(name, BTreeMap::new());
            return json_response(StatusCode::OK, json!({ "data": body }));
        }
        if bearer != TOKEN && bearer != ADMIN_TOKEN {
            return forbidden();
        }
        let rest = path.trim_start_matches("/items/");
        let (collection, key) = match rest.split_once('/') {
            Some((c, k)) => (c.to_owned(), Some(k.to_owned())),
            None => (rest.to_owned(), None),
        };
        let Some(rows) = state.made.get_mut(&collection) else {
            return forbidden();
        };
        match (method.as_str(), key) {
            ("PATCH", Some(key)) => match rows.get_mut(&key) {
                Some(Value::Object(row)) => {
                    if let Value::Object(fields) = body {
                        row.extend(fields);
                    }
                    let row = Value::Object(row.clone());
                    json_response(StatusCode::OK, json!({ "data": row }))
                }
                _ => forbidden(),
            },
            ("POST", None) => {
                let key = body["site"].as_str().unwrap_or_default().to_owned();
                if rows.contains_key(&key) {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"errors":[{"message":"Value for field \"site\" in collection has to be unique.","extensions":{"code":"RECORD_NOT_UNIQUE"}}]}),
                    );
                }
                rows.insert(key, body.clone());
                json_response(StatusCode::OK, json!({ "data": body }))
            }
            _ => forbidden(),
        }
    }

    /// The rows of a collection made through `POST /collections`, if it was.
    pub fn made_rows(&self, collection: &str) -> Option<BTreeMap<String, Value>> {
        self.state().made.get(collection).cloned()
    }

    /// Flows and operations, for `setup-flow`: admin only, like Directus.
    async fn flows(&self, req: Request<Incoming>, bearer: &str) -> Response<Full<Bytes>> {
        if bearer != ADMIN_TOKEN {
            return json_response(
                StatusCode::FORBIDDEN,
                json!({"errors":[{"message":"You don't have permission to access collection \"directus_flows\" or it does not exist. Queried in root.","extensions":{"code":"FORBIDDEN"}}]}),
            );
        }
        let (method, path, query, body) = read_request(req).await;
        let mut state = self.state();
        let answer = match (method.as_str(), path.as_str()) {
            ("GET", "/flows") => {
                let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect();
                let filter: Value = params
                    .get("filter")
                    .and_then(|f| serde_json::from_str(f).ok())
                    .unwrap_or(Value::Null);
                let name = filter["name"]["_eq"].clone();
                let flows: Vec<Value> = state
                    .flows
                    .iter()
                    .filter(|f| name.is_null() || f["name"] == name)
                    .map(|f| {
                        let mut f = f.clone();
                        let ops: Vec<Value> = state
                            .operations
                            .iter()
                            .filter(|o| o["flow"] == f["id"])
                            .map(|o| json!({"id": o["id"], "key": o["key"]}))
                            .collect();
                        f["operations"] = Value::Array(ops);
                        f
                    })
                    .collect();
                json!({ "data": flows })
            }
            ("POST", "/flows") => {
                let mut flow = body;
                flow["id"] = json!(format!("flow-{}", state.flows.len() + 1));
                flow["operation"] = Value::Null;
                state.flows.push(flow.clone());
                json!({ "data": flow })
            }
            ("POST", "/operations") => {
                let mut op = body;
                op["id"] = json!(format!("op-{}", state.operations.len() + 1));
                state.operations.push(op.clone());
                json!({ "data": op })
            }
            ("PATCH", p) => {
                let (list, id) = match p.strip_prefix("/flows/") {
                    Some(id) => (&mut state.flows, id.to_owned()),
                    None => (
                        &mut state.operations,
                        p.trim_start_matches("/operations/").to_owned(),
                    ),
                };
                let Some(item) = list.iter_mut().find(|i| i["id"] == id.as_str()) else {
                    return json_response(
                        StatusCode::NOT_FOUND,
                        json!({"errors":[{"message":"not found"}]}),
                    );
                };
                if let (Value::Object(item), Value::Object(fields)) = (item, body) {
                    item.extend(fields);
                }
                json!({ "data": {"id": id} })
            }
            _ => {
                return json_response(
                    StatusCode::NOT_FOUND,
                    json!({"errors":[{"message":"Route doesn't exist."}]}),
                );
            }
        };
        json_response(StatusCode::OK, answer)
    }

    /// The Flows and operations set up so far.
    pub fn flows_and_operations(&self) -> (Vec<Value>, Vec<Value>) {
        let state = self.state();
        (state.flows.clone(), state.operations.clone())
    }

    fn activity(&self, params: &HashMap<String, String>) -> Vec<Value> {
        let state = self.state();
        let filter: Value = params
            .get("filter")
            .and_then(|f| serde_json::from_str(f).ok())
            .unwrap_or(Value::Null);
        let mut after = 0;
        let mut collections: Option<Vec<String>> = None;
        let mut actions: Option<Vec<String>> = None;
        for clause in filter["_and"].as_array().into_iter().flatten() {
            if let Some(id) = clause["id"]["_gt"].as_u64() {
                after = id;
            }
            if let Some(list) = clause["collection"]["_in"].as_array() {
                collections = Some(
                    list.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                );
            }
            if let Some(list) = clause["action"]["_in"].as_array() {
                actions = Some(
                    list.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                );
            }
        }
        let mut rows: Vec<&Row> = state
            .activity
            .iter()
            .filter(|r| r.id > after && !state.hidden.contains(&r.id))
            .filter(|r| {
                collections
                    .as_ref()
                    .is_none_or(|c| c.contains(&r.collection))
            })
            .filter(|r| {
                actions
                    .as_ref()
                    .is_none_or(|a| a.iter().any(|x| x == r.action))
            })
            .collect();
        if params.get("sort").map(String::as_str) == Some("-id") {
            rows.reverse();
        }
        let limit: usize = params
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100);
        rows.into_iter()
            .take(limit)
            .map(|r| json!({"id": r.id, "action": r.action, "collection": r.collection, "item": r.item}))
            .collect()
    }

    fn items_query(
        &self,
        collection: &str,
        params: &HashMap<String, String>,
    ) -> Option<Vec<Value>> {
        let state = self.state();
        let items = state.items.get(collection)?;
        let key_field = &state.key_fields[collection];
        let filter: Value = params
            .get("filter")
            .and_then(|f| serde_json::from_str(f).ok())
            .unwrap_or(Value::Null);
        let wanted: Option<Vec<String>> = filter[key_field]["_in"]
            .as_array()
            .map(|keys| keys.iter().map(key_text).collect());
        let after = filter[key_field].get("_gt").map(key_text);
        let limit: i64 = params
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100);
        let mut out: Vec<(String, Value)> = items
            .iter()
            .filter(|(k, _)| wanted.as_ref().is_none_or(|w| w.contains(k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Key order, numeric keys as numbers.
        out.sort_by(|a, b| compare_keys(&a.0, &b.0));
        if let Some(after) = after {
            out.retain(|(k, _)| compare_keys(k, &after) == std::cmp::Ordering::Greater);
        }
        if limit >= 0 {
            out.truncate(limit as usize);
        }
        Some(out.into_iter().map(|(_, v)| v).collect())
    }

    fn websocket(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return json_response(StatusCode::BAD_REQUEST, json!({}));
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let server = self.clone();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            server.serve_socket(ws).await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .expect("response")
    }

    async fn serve_socket<S>(&self, ws: tokio_tungstenite::WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (mut tx, mut rx) = ws.split();
        let kill = self.kill_sockets.lock().expect("kill").clone();
        let mut events = self.events.subscribe();
        let mut authenticated = false;
        let mut subscribed: Vec<String> = Vec::new();
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = kill.cancelled() => return,
                _ = ping.tick() => {
                    if authenticated && tx.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                        return;
                    }
                }
                event = events.recv() => {
                    let Ok(event) = event else { return };
                    let wanted = event["type"] == "auth"
                        || subscribed.iter().any(|c| Some(c.as_str()) == event["uid"].as_str());
                    if authenticated && wanted && tx.send(Message::text(event.to_string())).await.is_err() {
                        return;
                    }
                }
                message = rx.next() => {
                    let Some(Ok(Message::Text(text))) = message else { return };
                    let message: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                    let reply = match message["type"].as_str() {
                        Some("auth") if message["access_token"] == TOKEN => {
                            authenticated = true;
                            json!({"type":"auth","status":"ok","uid":message["uid"]})
                        }
                        Some("auth") => {
                            tx.send(Message::text(r#"{"type":"auth","status":"error","error":{"code":"AUTH_FAILED","message":"Authentication handshake failed."}}"#)).await.ok();
                            return;
                        }
                        _ if !authenticated => return,
                        Some("subscribe") => {
                            let collection = message["collection"].as_str().unwrap_or_default().to_owned();
                            subscribed.push(collection);
                            json!({"type":"subscription","event":"init","data":[],"uid":message["uid"]})
                        }
                        _ => continue,
                    };
                    if tx.send(Message::text(reply.to_string())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Sends `TOKEN_EXPIRED` to every socket, as Directus does for an expiring JWT.
    pub fn expire_tokens(&self) {
        self.events
            .send(json!({"type":"auth","status":"error","error":{"code":"TOKEN_EXPIRED","message":"Token expired."}}))
            .ok();
    }

    pub fn stop(&self) {
        self.stop.cancel();
        self.drop_sockets();
    }
}

fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn compare_keys(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// A request's method, path, query and JSON body (`null` when it has none or it is not JSON).
async fn read_request(req: Request<Incoming>) -> (hyper::Method, String, String, Value) {
    use http_body_util::BodyExt;
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        method,
        path,
        query,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}
