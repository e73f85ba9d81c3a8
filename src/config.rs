//! Configuration: built-in defaults, then a TOML file, then `RELAY_*` environment variables,
//! layered by figment; then secrets are resolved and every value is validated.
//!
//! Every key is documented in the README. Errors name the key and say what was expected.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Where the relay looks for its config file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/directus-relay/relay.toml";

/// Name of the systemd credential (`LoadCredential=webhook_secret:…`) read when neither
/// `webhook.secret` nor `webhook.secret_file` is set.
pub const WEBHOOK_SECRET_CREDENTIAL: &str = "webhook_secret";

/// Credential names for the Directus token and password.
pub const DIRECTUS_TOKEN_CREDENTIAL: &str = "directus_token";
pub const DIRECTUS_PASSWORD_CREDENTIAL: &str = "directus_password";

/// Shortest webhook secret or kiosk token accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// Credential name of the status page's admin token.
pub const ADMIN_TOKEN_CREDENTIAL: &str = "admin_token";

/// The name of the kiosk token generated when the relay starts without a config file.
pub const GENERATED_TOKEN_NAME: &str = "generated";

/// Credential name prefix for kiosk tokens given neither inline nor as a file:
/// `LoadCredential=kiosk_token_lobby:…` for the token named `lobby`.
pub const KIOSK_TOKEN_CREDENTIAL_PREFIX: &str = "kiosk_token_";

/// Paths the relay serves itself; the webhook path may not shadow them.
const RESERVED_PATHS: [&str; 7] = [
    "/demo",
    "/socket.io",
    "/healthz",
    "/readyz",
    "/metrics",
    "/status",
    "/status.json",
];

/// The whole configuration, as read from the file and the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One HTTP port for Socket.IO, the webhook, `/healthz`, `/readyz` and `/metrics`.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Where the relay keeps its state file.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(default = "defaults::shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// The state file is written at most this often while something changes (and on shutdown).
    #[serde(default = "defaults::persist_interval", with = "duration")]
    pub persist_interval: Duration,
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// The Directus server to read from. Absent: webhooks are the only source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directus: Option<DirectusConfig>,
    /// The collections relayed to kiosks. Empty: every collection the webhook sends.
    #[serde(default)]
    pub collections: Vec<CollectionConfig>,
    #[serde(default)]
    pub clients: ClientsConfig,
    #[serde(default)]
    pub limits: Limits,
    /// HTTPS and WSS on `listen`. Absent: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsConfig>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub demo: DemoConfig,
}

/// The demo kiosk page at `/demo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// The site's copy of the socket.io-client browser bundle (`dist/socket.io.min.js` of the
    /// npm package), served as `/demo/socket.io.min.js`.
    #[serde(default = "defaults::demo_client_file")]
    pub client_file: PathBuf,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            client_file: defaults::demo_client_file(),
        }
    }
}

/// Who may read the status page's data (`/status.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Sent as `Authorization: Bearer …`. Absent: the status is open to anyone who can reach
    /// the relay (it holds no secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// How the relay writes its log (to stderr; systemd's journal takes it from there).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text`: one line per record, without a timestamp under systemd (the journal adds one);
    /// `json`: one JSON object per line, for log collectors.
    #[serde(default)]
    pub format: LogFormat,
    /// What to log, as a `RUST_LOG` filter (`info`, `debug`, `directus_relay::hub=debug`);
    /// `RUST_LOG` itself wins when set.
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: defaults::log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Who may connect as a kiosk, and what each may read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsConfig {
    /// Web origins whose pages may connect (`["*"]`: any). Browsers enforce it for polling;
    /// the relay also refuses WebSocket upgrades from other origins.
    #[serde(default = "defaults::allowed_origins")]
    pub allowed_origins: Vec<String>,
    /// Kiosks that connect without a token are served (only `anonymous_collections`).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// What a kiosk without a token may read when `allow_anonymous` is set (`["*"]`: all).
    #[serde(default = "defaults::all_collections")]
    pub anonymous_collections: Vec<String>,
    /// Kiosk access tokens, each with the collections it may read.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: defaults::allowed_origins(),
            allow_anonymous: false,
            anonymous_collections: defaults::all_collections(),
            tokens: Vec::new(),
        }
    }
}

/// One kiosk access token (`[[clients.tokens]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Names the token in logs and metrics; the token itself is never shown.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A file holding the token (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The collections kiosks with this token may read (`["*"]`: all).
    pub collections: Vec<String>,
}

impl ClientsConfig {
    /// Whether any kiosk can connect: with a token, or without one.
    pub fn admits_anyone(&self) -> bool {
        self.allow_anonymous || !self.tokens.is_empty()
    }

    /// Whether a page from `origin` may connect.
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// The Directus Flow webhook receiver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default = "defaults::webhook_path")]
    pub path: String,
    /// Sent by the Flow in the `X-Relay-Secret` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// A file holding the secret (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            path: defaults::webhook_path(),
            secret: None,
            secret_file: None,
        }
    }
}

/// How changes reach the relay from Directus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Directus's realtime WebSocket, with the activity log as the catch-up.
    Websocket,
    /// The activity log every `poll_interval`.
    Poll,
    /// Flow webhooks, with the activity log as the catch-up.
    Webhook,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Websocket => "websocket",
            Mode::Poll => "poll",
            Mode::Webhook => "webhook",
        }
    }
}

/// The Directus server the relay reads from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectusConfig {
    /// `https://cms.example.com` (plain `http://` only to this machine).
    pub url: url::Url,
    /// A static token of the relay's Directus user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Email and password, for those who cannot use a static token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default = "defaults::mode")]
    pub mode: Mode,
    /// How often `poll` mode reads the activity log.
    #[serde(default = "defaults::poll_interval", with = "duration")]
    pub poll_interval: Duration,
    /// How often every mode re-reads the activity log to repair anything missed.
    #[serde(default = "defaults::reconcile_interval", with = "duration")]
    pub reconcile_interval: Duration,
    /// Extra CA certificates (PEM) for a Directus behind a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Timeout of every request to Directus.
    #[serde(default = "defaults::request_timeout", with = "duration")]
    pub request_timeout: Duration,
}

impl DirectusConfig {
    /// The credentials, once secrets are resolved.
    pub fn auth(&self) -> Option<crate::upstream::directus::Auth> {
        use crate::upstream::directus::Auth;
        match (&self.token, &self.email, &self.password) {
            (Some(token), _, _) => Some(Auth::Token(token.clone())),
            (None, Some(email), Some(password)) => Some(Auth::Login {
                email: email.clone(),
                password: password.clone(),
            }),
            _ => None,
        }
    }
}

/// One relayed collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    pub name: String,
    /// The primary key field, written into records built from webhook payloads.
    #[serde(default = "defaults::key_field")]
    pub key_field: String,
    /// The fields read from Directus (`["*"]`: all), which must include `key_field`.
    #[serde(default = "defaults::fields")]
    pub fields: Vec<String>,
    /// Fields whose values name routed rooms (`"screen"`, or a path such as `"screen.code"`
    /// into a related item): kiosks can subscribe to just the items with a given value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms_by: Vec<String>,
    /// The Socket.IO namespace kiosks connect to for this collection's events.
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    /// The event name of every action: a name, or a template with `{collection}` and
    /// `{action}` (`create`, `update`, `pre-delete`, `delete`).
    #[serde(default = "defaults::event_name")]
    pub event_name: String,
    /// Per-action names (or templates) that replace `event_name` for those actions.
    #[serde(default, skip_serializing_if = "EventNames::is_empty")]
    pub event_names: EventNames,
    /// Whether kiosks get `data.pre-delete` before `data.delete`.
    #[serde(default = "defaults::yes")]
    pub pre_delete: bool,
    /// The record fields kiosks receive, in events and snapshots (paths such as
    /// `"image.url"` allowed; the key field is always kept). Empty: every field read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emit_fields: Vec<String>,
    /// Whether events carry `payload`, the submitted change.
    #[serde(default = "defaults::yes")]
    pub emit_payload: bool,
    /// Events carry only `{collection, keys, seq}` and snapshots only keys, for screens that
    /// fetch the items themselves.
    #[serde(default)]
    pub compact: bool,
}

impl CollectionConfig {
    /// A collection with every setting at its default.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key_field: defaults::key_field(),
            fields: defaults::fields(),
            rooms_by: Vec::new(),
            namespace: defaults::namespace(),
            event_name: defaults::event_name(),
            event_names: EventNames::default(),
            pre_delete: true,
            emit_fields: Vec::new(),
            emit_payload: true,
            compact: false,
        }
    }

    /// The event name (or template) for `action` (`create`, `update`, `pre-delete`, `delete`).
    pub fn event_template(&self, action: &str) -> &str {
        let custom = match action {
            "create" => &self.event_names.create,
            "update" => &self.event_names.update,
            "pre-delete" => &self.event_names.pre_delete,
            "delete" => &self.event_names.delete,
            _ => &None,
        };
        custom.as_deref().unwrap_or(&self.event_name)
    }
}

/// Per-action event names of a collection; unset ones follow `event_name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventNames {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<String>,
    #[serde(
        default,
        rename = "pre-delete",
        alias = "pre_delete",
        skip_serializing_if = "Option::is_none"
    )]
    pub pre_delete: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
}

impl EventNames {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The actions an event name is given for, as `{action}` spells them.
pub const EVENT_ACTIONS: [&str; 4] = ["create", "update", "pre-delete", "delete"];

/// Event names Socket.IO clients keep for themselves, and the relay's own: a data event with
/// one of these names would never reach a kiosk's handler, or would be mistaken for another.
pub const RESERVED_EVENT_NAMES: [&str; 9] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
    "error",
    "relay.status",
    "subscribe",
];

/// The longest event name accepted.
pub const MAX_EVENT_NAME_LEN: usize = 128;

/// `template` with `{collection}` and `{action}` filled in.
pub fn expand_event_name(template: &str, collection: &str, action: &str) -> String {
    template
        .replace("{collection}", collection)
        .replace("{action}", action)
}

/// Named bounds on every queue, buffer and input. See the README for the policy when full.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Changes waiting for the hub. Full: the webhook answers 503.
    #[serde(default = "defaults::hub_inbox")]
    pub hub_inbox: usize,
    /// Events kept for resuming kiosks. Full: the oldest is dropped.
    #[serde(default = "defaults::replay_events")]
    pub replay_events: usize,
    /// Bytes of events kept for resuming kiosks. Full: the oldest is dropped.
    #[serde(default = "defaults::replay_bytes", with = "byte_size")]
    pub replay_bytes: usize,
    /// Items mirrored per collection. Exceeded: that collection stops being mirrored.
    #[serde(default = "defaults::mirror_items")]
    pub mirror_items: usize,
    /// Bytes of mirrored records, all collections together. Exceeded: the collection that
    /// grew past it stops being mirrored.
    #[serde(default = "defaults::mirror_bytes", with = "byte_size")]
    pub mirror_bytes: usize,
    /// Largest webhook body accepted. Larger: 413.
    #[serde(default = "defaults::webhook_body_bytes", with = "byte_size")]
    pub webhook_body_bytes: usize,
    /// Packets queued per kiosk. Full: the kiosk stops receiving and is disconnected; it
    /// reconnects and resumes.
    #[serde(default = "defaults::kiosk_queue")]
    pub kiosk_queue: usize,
    /// Kiosks connected at once. More: refused with a `connect_error` that says why.
    #[serde(default = "defaults::max_clients")]
    pub max_clients: usize,
    /// Largest message a kiosk may send (WebSocket message and frame, polling payload).
    #[serde(default = "defaults::max_message_bytes", with = "byte_size")]
    pub max_message_bytes: usize,
    /// Largest event sent to kiosks. Larger: sent with keys only and `truncated: true`.
    #[serde(default = "defaults::max_event_bytes", with = "byte_size")]
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            hub_inbox: defaults::hub_inbox(),
            replay_events: defaults::replay_events(),
            replay_bytes: defaults::replay_bytes(),
            mirror_items: defaults::mirror_items(),
            mirror_bytes: defaults::mirror_bytes(),
            webhook_body_bytes: defaults::webhook_body_bytes(),
            kiosk_queue: defaults::kiosk_queue(),
            max_clients: defaults::max_clients(),
            max_message_bytes: defaults::max_message_bytes(),
            max_event_bytes: defaults::max_event_bytes(),
        }
    }
}

impl Limits {
    /// The worst-case memory of a relay with these limits: the README's memory budget
    /// ("The memory budget"), with the per-kiosk figures measured there.
    pub fn memory_budget_bytes(&self) -> u64 {
        const MIB: u64 = 1 << 20;
        const KIOSK: u64 = (30 + 140) << 10;
        8 * MIB
            + KIOSK * self.max_clients as u64
            + 3 * self.mirror_bytes as u64
            + self.replay_bytes as u64
            + (self.kiosk_queue * self.max_event_bytes) as u64
            + 3 * crate::upstream::directus::MAX_RESPONSE_BYTES as u64
    }

    /// The most events replayed to one subscribing kiosk; more missed events get a snapshot.
    /// Half the kiosk queue, so that the ack and the replay always fit into it.
    pub fn max_replay_per_subscribe(&self) -> usize {
        self.kiosk_queue / 2
    }
}

mod defaults {
    use super::*;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    /// systemd's `StateDirectory=` when it set one, else the usual place.
    pub fn state_dir() -> PathBuf {
        std::env::var_os("STATE_DIRECTORY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/directus-relay"))
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(5)
    }
    pub fn persist_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn webhook_path() -> String {
        "/hooks/directus".into()
    }
    pub fn key_field() -> String {
        "id".into()
    }
    pub fn allowed_origins() -> Vec<String> {
        vec!["*".into()]
    }
    pub fn fields() -> Vec<String> {
        vec!["*".into()]
    }
    pub fn namespace() -> String {
        "/".into()
    }
    pub fn event_name() -> String {
        "data.{action}".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn mode() -> Mode {
        Mode::Websocket
    }
    pub fn poll_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn reconcile_interval() -> Duration {
        Duration::from_secs(300)
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn hub_inbox() -> usize {
        1024
    }
    pub fn replay_events() -> usize {
        10_000
    }
    pub fn replay_bytes() -> usize {
        8 << 20
    }
    pub fn mirror_items() -> usize {
        10_000
    }
    pub fn mirror_bytes() -> usize {
        16 << 20
    }
    pub fn webhook_body_bytes() -> usize {
        1 << 20
    }
    pub fn kiosk_queue() -> usize {
        256
    }
    pub fn max_clients() -> usize {
        500
    }
    pub fn max_message_bytes() -> usize {
        64 << 10
    }
    pub fn max_event_bytes() -> usize {
        256 << 10
    }
    pub fn demo_client_file() -> PathBuf {
        "/usr/share/directus-relay/socket.io.min.js".into()
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn all_collections() -> Vec<String> {
        vec!["*".into()]
    }
}

/// Where a configuration came from, for the operator's benefit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A config file was read.
    File(PathBuf),
    /// No file: built-in defaults and environment only.
    Defaults,
}

/// A configuration problem, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Loads the configuration: `path` if given (it must exist), else [`DEFAULT_CONFIG_PATH`]
    /// if it exists, else defaults only; then `RELAY_*` variables; then resolves secrets and
    /// validates.
    pub fn load(path: Option<&Path>) -> Result<(Config, Source), ConfigError> {
        let source = match path {
            Some(p) if !p.exists() => return Err(ConfigError::Missing { path: p.into() }),
            Some(p) => Source::File(p.into()),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Source::File(DEFAULT_CONFIG_PATH.into())
            }
            None => Source::Defaults,
        };
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Source::File(path) = &source {
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut config: Config = figment
            .merge(env_provider())
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        config.resolve_secrets(credentials.as_deref())?;
        if source == Source::Defaults && !config.clients.admits_anyone() {
            config.clients.tokens.push(TokenConfig {
                name: GENERATED_TOKEN_NAME.into(),
                token: Some(Secret::generate()),
                token_file: None,
                collections: defaults::all_collections(),
            });
        }
        config.validate()?;
        Ok((config, source))
    }

    /// Parses a TOML document on its own (no environment), for tests and examples.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with_credentials(text, None)
    }

    /// Parses a TOML document with secrets looked up in `credentials_dir` as systemd's
    /// `$CREDENTIALS_DIRECTORY` would provide them.
    pub fn from_toml_with_credentials(
        text: &str,
        credentials_dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        config.resolve_secrets(credentials_dir)?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_secrets(&mut self, credentials_dir: Option<&Path>) -> Result<(), ConfigError> {
        let webhook = &mut self.webhook;
        webhook.secret = resolve_secret(
            "webhook.secret",
            webhook.secret.take(),
            webhook.secret_file.as_deref(),
            credentials_dir,
            WEBHOOK_SECRET_CREDENTIAL,
        )?;
        if let Some(directus) = &mut self.directus {
            directus.token = resolve_secret(
                "directus.token",
                directus.token.take(),
                directus.token_file.as_deref(),
                credentials_dir,
                DIRECTUS_TOKEN_CREDENTIAL,
            )?;
            directus.password = resolve_secret(
                "directus.password",
                directus.password.take(),
                directus.password_file.as_deref(),
                credentials_dir,
                DIRECTUS_PASSWORD_CREDENTIAL,
            )?;
        }
        self.admin.token = resolve_secret(
            "admin.token",
            self.admin.token.take(),
            self.admin.token_file.as_deref(),
            credentials_dir,
            ADMIN_TOKEN_CREDENTIAL,
        )?;
        for (i, t) in self.clients.tokens.iter_mut().enumerate() {
            t.token = resolve_secret(
                &format!("clients.tokens[{i}].token"),
                t.token.take(),
                t.token_file.as_deref(),
                credentials_dir,
                &format!("{KIOSK_TOKEN_CREDENTIAL_PREFIX}{}", t.name),
            )?;
        }
        Ok(())
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let path = &self.webhook.path;
        if !path.starts_with('/') || path.len() < 2 {
            return Err(invalid(
                "webhook.path",
                format!("must be an absolute path such as \"/hooks/directus\", got {path:?}"),
            ));
        }
        if let Some(reserved) = RESERVED_PATHS
            .iter()
            .find(|r| path == *r || path.starts_with(&format!("{r}/")))
        {
            return Err(invalid(
                "webhook.path",
                format!("{path:?} collides with {reserved}, which the relay serves itself"),
            ));
        }
        if let Some(secret) = &self.webhook.secret {
            long_enough("webhook.secret", secret)?;
        }
        if let Some(directus) = &self.directus {
            validate_directus(directus)?;
            if self.collections.is_empty() {
                return Err(invalid(
                    "collections",
                    "list the collections to relay: with [directus] the relay reads them from Directus",
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, c) in self.collections.iter().enumerate() {
            let key = format!("collections[{i}].name");
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            {
                return Err(invalid(
                    key,
                    format!(
                        "{:?} is not a Directus collection name (letters, digits, _ and -)",
                        c.name
                    ),
                ));
            }
            if c.name.starts_with("directus_") {
                return Err(invalid(
                    key,
                    format!("{:?} is a Directus system collection", c.name),
                ));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(invalid(key, format!("{:?} is listed twice", c.name)));
            }
            if c.key_field.is_empty() {
                return Err(invalid(
                    format!("collections[{i}].key_field"),
                    "must not be empty",
                ));
            }
            if !c.fields.iter().any(|f| f == "*" || *f == c.key_field) {
                return Err(invalid(
                    format!("collections[{i}].fields"),
                    format!("must include the key field {:?} (or \"*\")", c.key_field),
                ));
            }
            field_paths(&format!("collections[{i}].rooms_by"), &c.rooms_by)?;
            validate_shape(&format!("collections[{i}]"), c)?;
        }
        if self.persist_interval < Duration::from_millis(100) {
            return Err(invalid("persist_interval", "must be at least 100ms"));
        }
        for (i, origin) in self.clients.allowed_origins.iter().enumerate() {
            let valid = origin == "*"
                || url::Url::parse(origin).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.path() == "/"
                        && u.query().is_none()
                        && u.fragment().is_none()
                });
            if !valid {
                return Err(invalid(
                    format!("clients.allowed_origins[{i}]"),
                    format!(
                        "{origin:?} is not an origin such as \"https://signage.example.com\" (or \"*\")"
                    ),
                ));
            }
        }
        self.validate_clients()?;
        if let Some(token) = &self.admin.token {
            long_enough("admin.token", token)?;
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not a log filter such as \"info\" or \"directus_relay=debug\": {e}",
                    self.log.level
                ),
            ));
        }
        let l = &self.limits;
        let minimums: [(&str, usize, usize); 10] = [
            ("limits.max_clients", l.max_clients, 1),
            ("limits.hub_inbox", l.hub_inbox, 1),
            ("limits.replay_events", l.replay_events, 1),
            ("limits.replay_bytes", l.replay_bytes, 1024),
            ("limits.mirror_items", l.mirror_items, 1),
            ("limits.mirror_bytes", l.mirror_bytes, 1024),
            ("limits.webhook_body_bytes", l.webhook_body_bytes, 1024),
            ("limits.kiosk_queue", l.kiosk_queue, 16),
            ("limits.max_message_bytes", l.max_message_bytes, 1024),
            ("limits.max_event_bytes", l.max_event_bytes, 1024),
        ];
        for (key, value, min) in minimums {
            if value < min {
                return Err(invalid(
                    key,
                    format!("is {value}; it must be at least {min}"),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    /// Kiosk tokens and the collections they name.
    fn validate_clients(&self) -> Result<(), ConfigError> {
        let clients = &self.clients;
        if !clients.admits_anyone() {
            return Err(invalid(
                "clients",
                "no kiosk can connect: add a [[clients.tokens]] entry, or set clients.allow_anonymous = true to serve screens without a token",
            ));
        }
        self.validate_readable(
            "clients.anonymous_collections",
            &clients.anonymous_collections,
        )?;
        let mut names = HashSet::new();
        for (i, t) in clients.tokens.iter().enumerate() {
            let key = format!("clients.tokens[{i}]");
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} is not a name (letters, digits, _ and -)", t.name),
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} is used twice", t.name),
                ));
            }
            let Some(token) = &t.token else {
                return Err(invalid(
                    format!("{key}.token"),
                    format!(
                        "not set: set token, token_file, or provide the systemd credential {KIOSK_TOKEN_CREDENTIAL_PREFIX}{}",
                        t.name
                    ),
                ));
            };
            long_enough(&format!("{key}.token"), token)?;
            let same = clients.tokens[..i]
                .iter()
                .find(|other| other.token.as_ref() == Some(token));
            if let Some(other) = same {
                return Err(invalid(
                    format!("{key}.token"),
                    format!(
                        "is the same as the token {:?}; every token must be different",
                        other.name
                    ),
                ));
            }
            self.validate_readable(&format!("{key}.collections"), &t.collections)?;
        }
        Ok(())
    }

    /// A list of collections a kiosk may read: `"*"` or relayed collections.
    fn validate_readable(&self, key: &str, list: &[String]) -> Result<(), ConfigError> {
        if list.is_empty() {
            return Err(invalid(
                key,
                "is empty: list the collections, or \"*\" for all",
            ));
        }
        for (i, name) in list.iter().enumerate() {
            if name != "*" && self.collection(name).is_none() {
                return Err(invalid(
                    format!("{key}[{i}]"),
                    format!("{name:?} is not a relayed collection (see [[collections]])"),
                ));
            }
        }
        Ok(())
    }

    /// Whether the relay needs a webhook secret: it receives webhooks as its source.
    pub fn needs_webhook_secret(&self) -> bool {
        self.directus
            .as_ref()
            .is_none_or(|d| d.mode == Mode::Webhook)
    }

    /// The configured collection, or `None` when it is not relayed. With no collections
    /// configured every collection is relayed with default settings.
    pub fn collection(&self, name: &str) -> Option<CollectionConfig> {
        if self.collections.is_empty() {
            return Some(CollectionConfig::new(name));
        }
        self.collections.iter().find(|c| c.name == name).cloned()
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: defaults::listen(),
            state_dir: defaults::state_dir(),
            shutdown_grace: defaults::shutdown_grace(),
            persist_interval: defaults::persist_interval(),
            webhook: WebhookConfig::default(),
            directus: None,
            collections: Vec::new(),
            clients: ClientsConfig::default(),
            limits: Limits::default(),
            tls: None,
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            demo: DemoConfig::default(),
        }
    }
}

/// `RELAY_*` environment variables, `__` for nesting. Empty values count as unset (figment
/// alone would read `RELAY_X=` as an empty string).
fn env_provider() -> Env {
    Env::prefixed("RELAY_")
        .filter(|key| {
            let name = format!("RELAY_{}", key.as_str().to_ascii_uppercase());
            std::env::var_os(name).is_some_and(|v| !v.is_empty())
        })
        .split("__")
}

fn validate_directus(d: &DirectusConfig) -> Result<(), ConfigError> {
    match d.url.scheme() {
        "https" => {}
        "http" if is_loopback(&d.url) => {}
        "http" => {
            return Err(invalid(
                "directus.url",
                format!(
                    "{} is plain http to another host: the token would travel unencrypted; use https://",
                    d.url
                ),
            ));
        }
        other => {
            return Err(invalid(
                "directus.url",
                format!("{other}:// is not a Directus URL; use https://"),
            ));
        }
    }
    if d.url.query().is_some() || d.url.fragment().is_some() {
        return Err(invalid("directus.url", "must not have a query or fragment"));
    }
    match (&d.token, &d.email, &d.password) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(invalid(
                "directus.token",
                "set either a token or email and password, not both",
            ));
        }
        (Some(_), None, None) | (None, Some(_), Some(_)) => {}
        (None, Some(_), None) => {
            return Err(invalid(
                "directus.password",
                "email is set but password is not",
            ));
        }
        (None, None, Some(_)) => {
            return Err(invalid(
                "directus.email",
                "password is set but email is not",
            ));
        }
        (None, None, None) => {
            return Err(invalid(
                "directus.token",
                format!(
                    "not set: set directus.token, directus.token_file, or provide the systemd credential {DIRECTUS_TOKEN_CREDENTIAL}"
                ),
            ));
        }
    }
    let positive = [
        ("directus.poll_interval", d.poll_interval),
        ("directus.reconcile_interval", d.reconcile_interval),
        ("directus.request_timeout", d.request_timeout),
    ];
    for (key, value) in positive {
        if value < Duration::from_millis(100) {
            return Err(invalid(key, "must be at least 100ms"));
        }
    }
    Ok(())
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A secret or token of at least [`MIN_SECRET_LEN`] characters.
/// A list of field names or paths such as `"screen.code"`, none twice.
fn field_paths(key: &str, fields: &[String]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (j, field) in fields.iter().enumerate() {
        let key = format!("{key}[{j}]");
        let valid = !field.is_empty()
            && field.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            });
        if !valid {
            return Err(invalid(
                key,
                format!("{field:?} is not a field name (or a path such as \"screen.code\")"),
            ));
        }
        if !seen.insert(field.as_str()) {
            return Err(invalid(key, format!("{field:?} is listed twice")));
        }
    }
    Ok(())
}

/// How a collection's events look: namespace, event names, emitted fields.
fn validate_shape(key: &str, c: &CollectionConfig) -> Result<(), ConfigError> {
    let ns = &c.namespace;
    let valid_ns = ns == "/"
        || (ns.starts_with('/')
            && ns[1..].split('/').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            }));
    if !valid_ns {
        return Err(invalid(
            format!("{key}.namespace"),
            format!(
                "{ns:?} is not a Socket.IO namespace such as \"/\" or \"/menu\" (letters, digits, _ and -, after a /)"
            ),
        ));
    }
    let names = [
        ("event_name", Some(&c.event_name), &EVENT_ACTIONS[..]),
        (
            "event_names.create",
            c.event_names.create.as_ref(),
            &["create"],
        ),
        (
            "event_names.update",
            c.event_names.update.as_ref(),
            &["update"],
        ),
        (
            "event_names.pre-delete",
            c.event_names.pre_delete.as_ref(),
            &["pre-delete"],
        ),
        (
            "event_names.delete",
            c.event_names.delete.as_ref(),
            &["delete"],
        ),
    ];
    for (name_key, template, actions) in names {
        let Some(template) = template else { continue };
        let name_key = format!("{key}.{name_key}");
        let mut rest = template.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').map(|c| open + c);
            let placeholder = close.map(|close| &rest[open..=close]);
            match placeholder {
                Some("{collection}" | "{action}") => rest = &rest[open + 1..],
                _ => {
                    return Err(invalid(
                        name_key,
                        format!(
                            "{template:?} has an unknown placeholder {:?}: only {{collection}} and {{action}} are filled in",
                            placeholder.unwrap_or(&rest[open..])
                        ),
                    ));
                }
            }
        }
        for action in actions {
            let name = expand_event_name(template, &c.name, action);
            if name.is_empty() {
                return Err(invalid(name_key, "must not be empty"));
            }
            if name.len() > MAX_EVENT_NAME_LEN {
                return Err(invalid(
                    name_key,
                    format!("{name:?} is longer than {MAX_EVENT_NAME_LEN} bytes"),
                ));
            }
            if RESERVED_EVENT_NAMES.contains(&name.as_str()) {
                return Err(invalid(
                    name_key,
                    format!(
                        "{name:?} is reserved (Socket.IO clients keep connect, connect_error, disconnect, disconnecting, newListener, removeListener and error for themselves; relay.status and subscribe are the relay's own): choose another name"
                    ),
                ));
            }
        }
    }
    field_paths(&format!("{key}.emit_fields"), &c.emit_fields)?;
    if c.compact && !c.emit_fields.is_empty() {
        return Err(invalid(
            format!("{key}.emit_fields"),
            "compact events carry no fields: remove emit_fields or set compact = false",
        ));
    }
    Ok(())
}

fn long_enough(key: &str, secret: &Secret) -> Result<(), ConfigError> {
    let len = secret.expose().len();
    if len < MIN_SECRET_LEN {
        return Err(invalid(
            key,
            format!("is {len} characters long; use at least {MIN_SECRET_LEN} random characters"),
        ));
    }
    Ok(())
}

fn resolve_secret(
    key: &str,
    inline: Option<Secret>,
    file: Option<&Path>,
    credentials_dir: Option<&Path>,
    credential: &str,
) -> Result<Option<Secret>, ConfigError> {
    let file_key = format!("{key}_file");
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(
            key,
            format!("set either {key} or {file_key}, not both"),
        )),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(path)) => read_secret_file(path)
            .map(Some)
            .map_err(|message| invalid(file_key, message)),
        (None, None) => {
            let Some(dir) = credentials_dir else {
                return Ok(None);
            };
            let path = dir.join(credential);
            if !path.exists() {
                return Ok(None);
            }
            read_secret_file(&path).map(Some).map_err(|message| {
                invalid(key, format!("systemd credential {credential}: {message}"))
            })
        }
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(secret))
}

fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = key_path(&e.path);
            let origin = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!(" (from {source})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            let what = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    let expected = expected.join(", ");
                    let key = if key.is_empty() { field.clone() } else { key };
                    return format!("{key}: unknown key{origin}; expected one of: {expected}");
                }
                kind => kind.to_string(),
            };
            if key.is_empty() {
                format!("{what}{origin}")
            } else {
                format!("{key}: {what}{origin}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `["collections", "0", "name"]` → `collections[0].name`, as the README writes keys.
fn key_path(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if part.chars().all(|c| c.is_ascii_digit()) && !key.is_empty() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// A secret value: never printed, compared in constant time.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// A fresh random secret of 32 hex characters.
    pub fn generate() -> Self {
        Self(crate::random_hex(16))
    }

    /// The secret itself. Only for comparing and for sending it to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with `candidate` in time independent of where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("********")
    }
}

/// Durations written as `"500ms"`, `"5s"`, `"2m"`, `"1h"`, or a number of seconds.
pub mod duration {
    use super::*;

    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration such as \"5s\" or \"500ms\""))?;
        let seconds = match unit.trim() {
            "ms" => number / 1000.0,
            "" | "s" => number,
            "m" | "min" => number * 60.0,
            "h" => number * 3600.0,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?}; use ms, s, m or h"
                ));
            }
        };
        Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
    }

    pub fn format(d: Duration) -> String {
        if d.subsec_millis() != 0 || d.is_zero() {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}s", d.as_secs())
        }
    }

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Sizes written as a number of bytes or as `"64KiB"`, `"8 MiB"`, `"1GiB"` (also kB, MB, GB).
pub mod byte_size {
    use super::*;

    pub fn parse(text: &str) -> Result<usize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: usize = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size such as \"64KiB\" or \"8MiB\""))?;
        let factor: usize = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?}; use B, KiB, MiB or GiB"
                ));
            }
        };
        number
            .checked_mul(factor)
            .ok_or_else(|| format!("{text:?} is too large"))
    }

    pub fn format(n: usize) -> String {
        match n {
            n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
            n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
            n => format!("{n}B"),
        }
    }

    pub fn serialize<S: serde::Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*n))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(n),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }
}
