//! The smaller sections of the config: `[webhook]`, `[directus]`, `[clients]`, `[tls]`,
//! `[log]`, `[admin]`, `[demo]` and `[site]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults;
use super::secret::Secret;
use super::units::duration;

/// The demo kiosk page at `/demo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// Retired: the relay serves its own socket.io-client at `/socket.io/socket.io.min.js`,
    /// which the demo page loads. Still accepted, so that a config file written for an older
    /// relay keeps working after an upgrade; the relay warns at start that it is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_file: Option<PathBuf>,
}

/// `[site]`: a static kiosk app served from a folder of the relay's machine, so that a screen
/// that starts while the uplink is down still loads its page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// The folder served. Absent: `site` in `state_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// The URL path it is served under, with a slash at both ends (`"/app/"`).
    #[serde(default = "defaults::site_path")]
    pub path: String,
}

impl Default for SiteConfig {
    fn default() -> Self {
        Self {
            dir: None,
            path: defaults::site_path(),
        }
    }
}

/// Who may read the status page's data (`/status.json`) and, with `protect_metrics`, `/metrics`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Sent as `Authorization: Bearer …`. Absent: the status is open to anyone who can reach
    /// the relay (it holds no secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `/metrics` needs the admin token too. Off by default, so that Prometheus scrapers set
    /// up without one keep working; needs `token`.
    #[serde(default)]
    pub protect_metrics: bool,
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
    /// Wrong kiosk tokens one client address may send within `wrong_token_window`; the next
    /// handshakes from it are refused for `wrong_token_backoff`, doubled each time again.
    #[serde(default = "defaults::wrong_token_limit")]
    pub wrong_token_limit: u32,
    #[serde(default = "defaults::wrong_token_window", with = "duration")]
    pub wrong_token_window: Duration,
    /// How long the first refusal lasts; each further one lasts twice the last, up to
    /// [`MAX_WRONG_TOKEN_BACKOFF`].
    #[serde(default = "defaults::wrong_token_backoff", with = "duration")]
    pub wrong_token_backoff: Duration,
    /// A known screen (a kiosk that named its `device`) away this long is reported missing.
    #[serde(default = "defaults::missing_after", with = "duration")]
    pub missing_after: Duration,
    /// The most screens remembered; a new one past it makes the relay forget the screen away
    /// longest. At least `limits.max_clients`.
    #[serde(default = "defaults::max_screens")]
    pub max_screens: usize,
}

/// The longest an address is refused for wrong kiosk tokens, however often it comes back.
pub const MAX_WRONG_TOKEN_BACKOFF: Duration = Duration::from_secs(15 * 60);

impl Default for ClientsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: defaults::allowed_origins(),
            allow_anonymous: false,
            anonymous_collections: defaults::all_collections(),
            tokens: Vec::new(),
            wrong_token_limit: defaults::wrong_token_limit(),
            wrong_token_window: defaults::wrong_token_window(),
            wrong_token_backoff: defaults::wrong_token_backoff(),
            missing_after: defaults::missing_after(),
            max_screens: defaults::max_screens(),
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
    /// The devices that may use this token: ids, or patterns with one `*` (`"lobby-*"`).
    /// Absent: any device, and kiosks that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
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
    /// A 202 means "on disk": each change is appended to a journal in `state_dir` and fsynced
    /// (one fsync per batch of webhooks waiting) before the answer, and replayed at start. Only
    /// without `[directus]`, whose activity log already recovers what a crash loses.
    #[serde(default)]
    pub durable: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            path: defaults::webhook_path(),
            secret: None,
            secret_file: None,
            durable: false,
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
    /// A collection the relay writes one row into for itself every minute (keyed by
    /// `site_name`: upstream state, screens online and missing, last change, memory). Absent:
    /// nothing is written to Directus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_collection: Option<String>,
}

/// `[tls]`: the certificate kiosks see. Both files are PEM; the key may be PKCS#8, RSA
/// (PKCS#1) or SEC1 (EC).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain: the server's certificate first, then intermediates.
    pub cert_file: PathBuf,
    /// The private key of the first certificate.
    pub key_file: PathBuf,
}
