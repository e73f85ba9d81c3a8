//! A small Directus REST client: the few reads the relay needs, with timeouts, bounded
//! response bodies and errors that tell the operator what to check.

use std::fmt;
use std::time::Duration;

pub use reqwest::Method;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use crate::config::{DirectusConfig, MAX_RESPONSE_BYTES, Secret};
use crate::upstream::tls;

/// Items or activity rows asked for per request.
pub const PAGE: usize = 500;

/// An error talking to Directus, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum DirectusError {
    #[error("cannot reach Directus at {url}: {detail}; check directus.url and the network")]
    Unreachable { url: String, detail: String },
    #[error(
        "TLS with Directus at {url} failed: {detail}; check the certificate (or directus.ca_file for a private CA)"
    )]
    Tls { url: String, detail: String },
    #[error("Directus did not answer {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("Directus answered {status} for {url}: {message}{hint}")]
    Status {
        url: String,
        status: u16,
        message: String,
        hint: String,
    },
    #[error("Directus sent an unexpected answer for {url}: {detail}")]
    Protocol { url: String, detail: String },
}

impl DirectusError {
    /// Whether the problem is with the token (401), which retrying will not fix.
    pub fn is_auth(&self) -> bool {
        matches!(self, DirectusError::Status { status: 401, .. })
    }

    /// Whether Directus refused for lack of permission (403).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, DirectusError::Status { status: 403, .. })
    }
}

/// What `/server/info` says about the realtime WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub version: Option<String>,
    /// The WebSocket path, when Directus has WebSockets enabled.
    pub websocket_path: Option<String>,
    /// Seconds between Directus's heartbeats, when enabled.
    pub heartbeat: Option<u64>,
}

/// One row of `directus_activity`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ActivityRow {
    pub id: u64,
    pub action: String,
    pub collection: String,
    /// Always a string, whatever the key type.
    pub item: String,
}

/// Whether Directus records activity for a collection (`meta.accountability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accountability {
    Recorded,
    Off,
    /// The token may not read `directus_collections`.
    Unknown,
}

/// The relay's credentials towards Directus.
#[derive(Clone)]
pub enum Auth {
    Token(Secret),
    Login { email: String, password: Secret },
}

impl Auth {
    /// The credentials `[directus]` gives, once secrets are resolved: the token, else email and
    /// password; `None` when neither is complete.
    pub fn from_config(config: &DirectusConfig) -> Option<Auth> {
        match (&config.token, &config.email, &config.password) {
            (Some(token), _, _) => Some(Auth::Token(token.clone())),
            (None, Some(email), Some(password)) => Some(Auth::Login {
                email: email.clone(),
                password: password.clone(),
            }),
            _ => None,
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Token(_) => f.write_str("Auth::Token(********)"),
            Auth::Login { email, .. } => write!(f, "Auth::Login({email}, ********)"),
        }
    }
}

/// Tokens obtained by logging in with email and password.
#[derive(Clone)]
struct Session {
    access: Secret,
    refresh: Secret,
    expires: tokio::time::Instant,
}

/// A Directus server as the relay sees it.
pub struct Directus {
    base: Url,
    http: reqwest::Client,
    auth: Auth,
    session: Option<Session>,
    timeout: Duration,
}

impl fmt::Debug for Directus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directus")
            .field("base", &self.base.as_str())
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// An HTTP client for Directus: TLS with the built-in roots and `ca_file`, https only for an
/// https URL, the connect timeout and the relay's user agent; `finish` adds what differs (a
/// timeout per request, or per read for large files).
pub fn http_client(
    config: &DirectusConfig,
    finish: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, String> {
    let roots = tls::roots(config.ca_file.as_deref())?;
    let tls = tls::client_config(roots, &[b"h2", b"http/1.1"]);
    let builder = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .https_only(config.url.scheme() == "https")
        .connect_timeout(config.request_timeout)
        .user_agent(concat!("directus-relay/", env!("CARGO_PKG_VERSION")));
    finish(builder)
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))
}

impl Directus {
    /// Builds the client: [`http_client`] with a timeout on every whole request.
    pub fn new(config: &DirectusConfig) -> Result<Directus, String> {
        let http = http_client(config, |b| b.timeout(config.request_timeout))?;
        let auth = Auth::from_config(config)
            .ok_or("directus: set token, token_file, or email and password")?;
        Ok(Directus {
            base: config.url.clone(),
            http,
            auth,
            session: None,
            timeout: config.request_timeout,
        })
    }

    /// The same server with other credentials (an admin token for `setup-flow`).
    pub fn with_auth(&self, auth: Auth) -> Directus {
        Directus {
            base: self.base.clone(),
            http: self.http.clone(),
            auth,
            session: None,
            timeout: self.timeout,
        }
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `GET /server/ping` without a token: whether Directus answers at all.
    pub async fn ping(&self) -> Result<(), DirectusError> {
        let url = self.url("/server/ping");
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(status_error(&url, status, b"", ""))
        }
    }

    /// Sends `body` with `method` to `path` and returns the JSON answer (`null` for 204).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, DirectusError> {
        self.request(method, path, Some(body), "").await
    }

    /// The token to present now, logging in or refreshing first when needed.
    pub async fn access_token(&mut self) -> Result<Secret, DirectusError> {
        let (email, password) = match &self.auth {
            Auth::Token(token) => return Ok(token.clone()),
            Auth::Login { email, password } => (email.clone(), password.clone()),
        };
        let now = tokio::time::Instant::now();
        if let Some(session) = &self.session {
            if session.expires > now + Duration::from_secs(30) {
                return Ok(session.access.clone());
            }
            let refresh = session.refresh.clone();
            match self
                .auth_request(
                    "/auth/refresh",
                    json!({"refresh_token": refresh.expose(), "mode": "json"}),
                )
                .await
            {
                Ok(session) => {
                    self.session = Some(session);
                    return Ok(self
                        .session
                        .as_ref()
                        .map(|s| s.access.clone())
                        .unwrap_or(refresh));
                }
                Err(e) => {
                    tracing::info!(%e, "refreshing the Directus session failed; logging in again")
                }
            }
        }
        let session = self
            .auth_request(
                "/auth/login",
                json!({"email": email, "password": password.expose(), "mode": "json"}),
            )
            .await?;
        let access = session.access.clone();
        self.session = Some(session);
        Ok(access)
    }

    async fn auth_request(&self, path: &str, body: Value) -> Result<Session, DirectusError> {
        let url = self.url(path);
        let response = self
            .http
            .post(url.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        let value = self.read(&url, response, "").await?;
        #[derive(Deserialize)]
        struct Tokens {
            access_token: String,
            refresh_token: String,
            expires: u64,
        }
        let tokens: Tokens =
            serde_json::from_value(value["data"].clone()).map_err(|e| DirectusError::Protocol {
                url: url.to_string(),
                detail: format!("no tokens in the login answer: {e}"),
            })?;
        Ok(Session {
            access: Secret::new(tokens.access_token),
            refresh: Secret::new(tokens.refresh_token),
            expires: tokio::time::Instant::now() + Duration::from_millis(tokens.expires),
        })
    }

    fn url(&self, path_and_query: &str) -> Url {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        match path_and_query.split_once('?') {
            Some((path, query)) => {
                url.set_path(&format!("{base_path}{path}"));
                url.set_query(Some(query));
            }
            None => url.set_path(&format!("{base_path}{path_and_query}")),
        }
        url
    }

    /// GETs `path` (with its query) and returns the JSON answer. `hint` is added to 403s.
    pub async fn get(&mut self, path: &str, hint: &str) -> Result<Value, DirectusError> {
        self.request(Method::GET, path, None, hint).await
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        hint: &str,
    ) -> Result<Value, DirectusError> {
        let token = self.access_token().await?;
        let url = self.url(path);
        let mut request = self
            .http
            .request(method, url.clone())
            .bearer_auth(token.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        self.read(&url, response, hint).await
    }

    async fn read(
        &self,
        url: &Url,
        mut response: reqwest::Response,
        hint: &str,
    ) -> Result<Value, DirectusError> {
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(DirectusError::Protocol {
                            url: url.to_string(),
                            detail: format!("answer larger than {MAX_RESPONSE_BYTES} bytes"),
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(self.transport_error(url, e)),
            }
        }
        if !status.is_success() {
            return Err(status_error(url, status, &body, hint));
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| DirectusError::Protocol {
            url: url.to_string(),
            detail: format!("not JSON ({e})"),
        })
    }

    fn transport_error(&self, url: &Url, error: reqwest::Error) -> DirectusError {
        let url = url.to_string();
        if error.is_timeout() {
            return DirectusError::Timeout {
                url,
                timeout: self.timeout,
            };
        }
        let detail = error_chain(&error);
        let lower = detail.to_ascii_lowercase();
        if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
            DirectusError::Tls { url, detail }
        } else {
            DirectusError::Unreachable { url, detail }
        }
    }

    /// Version and WebSocket settings (`GET /server/info`).
    pub async fn server_info(&mut self) -> Result<ServerInfo, DirectusError> {
        let info = self.get("/server/info", "").await?;
        let data = &info["data"];
        let websocket = &data["websocket"];
        let websocket_path = websocket["rest"]["path"].as_str().map(str::to_owned);
        Ok(ServerInfo {
            version: data["version"].as_str().map(str::to_owned),
            websocket_path,
            heartbeat: websocket["heartbeat"].as_u64(),
        })
    }

    /// The id of the newest activity row of any collection (0 when there is none).
    pub async fn newest_activity_id(&mut self) -> Result<u64, DirectusError> {
        let answer = self
            .get("/activity?sort=-id&limit=1&fields=id", ACTIVITY_HINT)
            .await?;
        Ok(answer["data"][0]["id"].as_u64().unwrap_or(0))
    }

    /// Create, update and delete rows of `collections` with an id above `after`, oldest first.
    pub async fn activity_after(
        &mut self,
        after: u64,
        collections: &[String],
        limit: usize,
    ) -> Result<Vec<ActivityRow>, DirectusError> {
        let filter = json!({
            "_and": [
                {"id": {"_gt": after}},
                {"collection": {"_in": collections}},
                {"action": {"_in": ["create", "update", "delete"]}},
            ]
        });
        let path = format!(
            "/activity?filter={}&sort=id&limit={limit}&fields=id,action,collection,item",
            encode(&filter.to_string())
        );
        let answer = self.get(&path, ACTIVITY_HINT).await?;
        serde_json::from_value(answer["data"].clone()).map_err(|e| DirectusError::Protocol {
            url: self.url(&path).to_string(),
            detail: format!("activity rows not as expected: {e}"),
        })
    }

    /// The current records of `keys` (absent ones are missing from the answer).
    pub async fn items_by_keys(
        &mut self,
        collection: &str,
        key_field: &str,
        keys: &[String],
        fields: &[String],
    ) -> Result<Vec<Value>, DirectusError> {
        let filter = json!({ key_field: { "_in": keys } });
        let path = format!(
            "/items/{}?filter={}&fields={}&limit=-1",
            encode(collection),
            encode(&filter.to_string()),
            encode(&fields.join(","))
        );
        let hint = read_hint(collection);
        let answer = self.get(&path, &hint).await?;
        items_of(answer, &self.url(&path))
    }

    /// One page of a collection in key order, after `after` (the last key of the previous page).
    pub async fn items_page(
        &mut self,
        collection: &str,
        key_field: &str,
        fields: &[String],
        after: Option<&Value>,
        limit: usize,
    ) -> Result<Vec<Value>, DirectusError> {
        let filter = match after {
            Some(last) => format!(
                "&filter={}",
                encode(&json!({ key_field: { "_gt": last } }).to_string())
            ),
            None => String::new(),
        };
        let path = format!(
            "/items/{}?sort={}&limit={limit}&fields={}{filter}",
            encode(collection),
            encode(key_field),
            encode(&fields.join(","))
        );
        let hint = read_hint(collection);
        let answer = self.get(&path, &hint).await?;
        items_of(answer, &self.url(&path))
    }

    /// Whether Directus records activity for `collection`.
    pub async fn accountability(
        &mut self,
        collection: &str,
    ) -> Result<Accountability, DirectusError> {
        let path = format!(
            "/collections/{}?fields=meta.accountability",
            encode(collection)
        );
        match self.get(&path, "").await {
            Ok(answer) => Ok(match &answer["data"]["meta"]["accountability"] {
                Value::Null => Accountability::Off,
                _ => Accountability::Recorded,
            }),
            Err(e) if e.is_forbidden() => Ok(Accountability::Unknown),
            Err(e) => Err(e),
        }
    }
}

const ACTIVITY_HINT: &str = " The relay's user needs read on directus_activity (a permission with no rule and all fields; an unlicensed Directus allows nothing narrower).";

fn read_hint(collection: &str) -> String {
    format!(" The relay's user needs read on {collection}, and the collection must exist.")
}

fn items_of(answer: Value, url: &Url) -> Result<Vec<Value>, DirectusError> {
    match answer {
        Value::Object(mut map) => match map.remove("data") {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(DirectusError::Protocol {
                url: url.to_string(),
                detail: "no \"data\" list in the answer".into(),
            }),
        },
        _ => Err(DirectusError::Protocol {
            url: url.to_string(),
            detail: "the answer is not a JSON object".into(),
        }),
    }
}

fn status_error(url: &Url, status: StatusCode, body: &[u8], hint: &str) -> DirectusError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned()
        });
    let hint = match status.as_u16() {
        401 => {
            " Check directus.token (or email and password): Directus does not accept it.".to_owned()
        }
        403 => hint.to_owned(),
        404 => " Check directus.url.".to_owned(),
        _ => String::new(),
    };
    DirectusError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        message,
        hint,
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
