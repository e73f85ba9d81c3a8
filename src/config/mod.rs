//! Configuration: the [`Config`] root and every section, built-in defaults, then a TOML file,
//! then `RELAY_*` environment variables, layered by figment; then secrets are resolved and every
//! value is validated.
//!
//! Every key is documented in the README. Errors name the key and say what was expected.

mod assets;
mod collection;
mod defaults;
mod error;
mod limits;
mod load;
mod secret;
mod sections;
mod units;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use assets::{
    AssetsConfig, MAX_ASSET_CONCURRENCY, MIN_ASSET_BYTES, STREAMS_FROM_DISK, STREAMS_THROUGH,
};
pub use collection::{
    CollectionConfig, EVENT_ACTIONS, EventNames, MAX_EVENT_NAME_LEN, RESERVED_EVENT_NAMES,
    expand_event_name,
};
pub use error::ConfigError;
pub use limits::{LOOPBACK_SEND_BUFFER, Limits, MAX_RESPONSE_BYTES, SEND_BUFFER};
pub use load::{DEFAULT_CONFIG_PATH, GENERATED_TOKEN_NAME, Source};
pub use secret::{
    ADMIN_TOKEN_CREDENTIAL, DIRECTUS_PASSWORD_CREDENTIAL, DIRECTUS_TOKEN_CREDENTIAL,
    KIOSK_TOKEN_CREDENTIAL_PREFIX, MIN_SECRET_LEN, Secret, WEBHOOK_SECRET_CREDENTIAL,
};
pub use sections::{
    AdminConfig, ClientsConfig, DemoConfig, DirectusConfig, LogConfig, LogFormat,
    MAX_WRONG_TOKEN_BACKOFF, Mode, SiteConfig, TlsConfig, TokenConfig, WebhookConfig,
};
pub use units::{byte_size, duration};

/// The whole configuration, as read from the file and the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One HTTP port for Socket.IO, the webhook, `/healthz`, `/readyz` and `/metrics`.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// The site's name, as the status page and the heartbeat row in Directus show it: the
    /// machine's host name unless set.
    #[serde(default = "defaults::site_name")]
    pub site_name: String,
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
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub demo: DemoConfig,
    /// The kiosk app served under `site.path`.
    #[serde(default)]
    pub site: SiteConfig,
    /// The Directus files items reference, cached and served at `/assets/<id>`.
    #[serde(default)]
    pub assets: AssetsConfig,
}

/// What one known screen may hold: its identity, address, user agent, subscriptions, the
/// times of its last 64 connects and cut-offs, and its last-seen metric. Measured (BENCHMARKS.md,
/// "A site's bad days"): 1.4 KB for a remembered screen, 1.8 KB more for a kiosk online that
/// names its device than for one that does not.
pub const SCREEN_BYTES: u64 = 2 << 10;

impl Config {
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

    /// The worst-case memory of a relay with this config: [`Limits::memory_budget_bytes`], the
    /// known screens (`clients.max_screens`, [`SCREEN_BYTES`] each) and the files in flight.
    pub fn memory_budget_bytes(&self) -> u64 {
        self.limits.memory_budget_bytes()
            + SCREEN_BYTES * self.clients.max_screens as u64
            + self.assets.memory_budget_bytes()
    }

    /// The folder of the kiosk app: `site.dir`, or `site` in `state_dir`.
    pub fn site_dir(&self) -> PathBuf {
        self.site
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("site"))
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
            site_name: defaults::site_name(),
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
            site: SiteConfig::default(),
            assets: AssetsConfig::default(),
        }
    }
}
