//! Validation: every value checked after loading, each error naming the key and saying what
//! was expected.

use std::collections::HashSet;
use std::time::Duration;

use super::collection::{EVENT_ACTIONS, MAX_EVENT_NAME_LEN, RESERVED_EVENT_NAMES};
use super::error::{ConfigError, invalid};
use super::secret::{
    ADMIN_TOKEN_CREDENTIAL, DIRECTUS_TOKEN_CREDENTIAL, KIOSK_TOKEN_CREDENTIAL_PREFIX,
    MIN_SECRET_LEN,
};
use super::{
    CollectionConfig, Config, DirectusConfig, MAX_ASSET_CONCURRENCY, MAX_WRONG_TOKEN_BACKOFF,
    MIN_ASSET_BYTES, Secret, TlsConfig, expand_event_name,
};
use crate::certificate;
use crate::device::is_device_pattern;

/// Paths the relay serves itself; neither the webhook path nor the kiosk app's may shadow
/// them.
const RESERVED_PATHS: [&str; 12] = [
    "/api",
    "/demo",
    "/socket.io",
    "/healthz",
    "/readyz",
    "/metrics",
    "/status",
    "/status.json",
    "/relay-client.js",
    "/relay-client.classic.js",
    "/licenses",
    "/assets",
];

/// The reserved path `path` is, or lies under.
fn reserved(path: &str) -> Option<&'static str> {
    RESERVED_PATHS
        .iter()
        .find(|r| path == **r || path.starts_with(&format!("{r}/")))
        .copied()
}

impl Config {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_webhook()?;
        if let Some(directus) = &self.directus {
            validate_directus(directus)?;
            if self.collections.is_empty() {
                return Err(invalid(
                    "collections",
                    "list the collections to relay: with [directus] the relay reads them from Directus",
                ));
            }
        }
        self.validate_collections()?;
        let site = self.site_name.trim();
        if site.is_empty() || site.len() > 100 || site.chars().any(char::is_control) {
            return Err(invalid(
                "site_name",
                "must be 1 to 100 characters without control characters",
            ));
        }
        if self.persist_interval < Duration::from_millis(100) {
            return Err(invalid("persist_interval", "must be at least 100ms"));
        }
        self.validate_origins()?;
        self.validate_clients()?;
        if let Some(token) = &self.admin.token {
            long_enough("admin.token", token)?;
        }
        if self.admin.protect_metrics && self.admin.token.is_none() {
            return Err(invalid(
                "admin.protect_metrics",
                format!(
                    "needs an admin token: set admin.token, admin.token_file or the systemd credential {ADMIN_TOKEN_CREDENTIAL}"
                ),
            ));
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
        self.validate_limits()?;
        self.validate_site()?;
        self.validate_assets()?;
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    /// The webhook path and secret.
    fn validate_webhook(&self) -> Result<(), ConfigError> {
        let path = &self.webhook.path;
        if !path.starts_with('/') || path.len() < 2 {
            return Err(invalid(
                "webhook.path",
                format!("must be an absolute path such as \"/hooks/directus\", got {path:?}"),
            ));
        }
        if let Some(reserved) = reserved(path) {
            return Err(invalid(
                "webhook.path",
                format!("{path:?} collides with {reserved}, which the relay serves itself"),
            ));
        }
        if let Some(secret) = &self.webhook.secret {
            long_enough("webhook.secret", secret)?;
        }
        if self.webhook.durable && self.directus.is_some() {
            return Err(invalid(
                "webhook.durable",
                "is for webhooks alone (no [directus]): with Directus, the activity log already recovers what a crash loses; remove webhook.durable or [directus]",
            ));
        }
        Ok(())
    }

    /// The kiosk app's folder and URL path.
    fn validate_site(&self) -> Result<(), ConfigError> {
        let path = &self.site.path;
        let inner = path
            .strip_prefix('/')
            .and_then(|p| p.strip_suffix('/'))
            .unwrap_or("");
        if inner.is_empty() || !inner.split('/').all(is_name) {
            return Err(invalid(
                "site.path",
                format!(
                    "must be a path with a slash at both ends such as \"/app/\" (letters, digits, _ and - between the slashes), got {path:?}"
                ),
            ));
        }
        let bare = path.trim_end_matches('/');
        if let Some(reserved) = reserved(bare).or_else(|| {
            RESERVED_PATHS
                .iter()
                .find(|r| r.starts_with(path.as_str()))
                .copied()
        }) {
            return Err(invalid(
                "site.path",
                format!("{path:?} collides with {reserved}, which the relay serves itself"),
            ));
        }
        let hook = &self.webhook.path;
        if hook == bare || hook.starts_with(path.as_str()) {
            return Err(invalid(
                "site.path",
                format!(
                    "{path:?} holds webhook.path {hook:?}: choose another path for one of them"
                ),
            ));
        }
        if let Some(dir) = &self.site.dir
            && !dir.is_absolute()
        {
            return Err(invalid(
                "site.dir",
                format!(
                    "{:?} is not an absolute path (such as \"/var/lib/directus-relay/site\")",
                    dir.display().to_string()
                ),
            ));
        }
        Ok(())
    }

    /// Every `[[collections]]` entry: name, key field, fields read, rooms and event shape.
    fn validate_collections(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, c) in self.collections.iter().enumerate() {
            let key = format!("collections[{i}].name");
            if !is_name(&c.name) {
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
        Ok(())
    }

    /// `[assets]` and each collection's `asset_fields` and `hold_for_assets`.
    fn validate_assets(&self) -> Result<(), ConfigError> {
        let a = &self.assets;
        for (i, c) in self.collections.iter().enumerate() {
            if let Some(fields) = &c.asset_fields {
                field_paths(&format!("collections[{i}].asset_fields"), fields)?;
            }
            if c.hold_for_assets && !a.enabled {
                return Err(invalid(
                    format!("collections[{i}].hold_for_assets"),
                    "holds items until their files are cached, which needs [assets] enabled = true",
                ));
            }
        }
        if !a.enabled {
            return Ok(());
        }
        if self.directus.is_none() {
            return Err(invalid(
                "assets.enabled",
                "the relay downloads files from Directus: add a [directus] section, or set assets.enabled = false",
            ));
        }
        if a.max_bytes < MIN_ASSET_BYTES {
            return Err(invalid(
                "assets.max_bytes",
                format!(
                    "is {}; it must be at least {} (the disk budget of the files cache)",
                    super::byte_size::format(a.max_bytes),
                    super::byte_size::format(MIN_ASSET_BYTES)
                ),
            ));
        }
        if a.concurrency < 1 || a.concurrency > MAX_ASSET_CONCURRENCY {
            return Err(invalid(
                "assets.concurrency",
                format!(
                    "is {}; it must be between 1 and {MAX_ASSET_CONCURRENCY} (files downloaded at once)",
                    a.concurrency
                ),
            ));
        }
        if a.hold_timeout < Duration::from_secs(1) || a.hold_timeout > Duration::from_secs(600) {
            return Err(invalid("assets.hold_timeout", "must be between 1s and 10m"));
        }
        let dir = a.dir(&self.state_dir);
        if dir == self.state_dir {
            return Err(invalid(
                "assets.dir",
                "must not be state_dir itself (the cache removes files it does not know); use a folder of its own, such as the default assets/ under state_dir",
            ));
        }
        Ok(())
    }

    /// The web origins whose pages may connect.
    fn validate_origins(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// Every bound at or above its minimum.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let minimums: [(&str, usize, usize); 13] = [
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
            ("limits.kiosk_requests", l.kiosk_requests, 1),
            ("limits.max_subscribe_targets", l.max_subscribe_targets, 1),
            ("limits.snapshot_bytes", l.snapshot_bytes, 1024),
        ];
        for (key, value, min) in minimums {
            if value < min {
                return Err(invalid(
                    key,
                    format!("is {value}; it must be at least {min}"),
                ));
            }
        }
        if l.max_pending_sessions == Some(0) {
            return Err(invalid(
                "limits.max_pending_sessions",
                "is 0; it must be at least 1, or no kiosk could start a session",
            ));
        }
        if let Some(max) = l.max_connections {
            // A kiosk may hold two connections while it upgrades from polling.
            let least = l.max_clients.saturating_add(1);
            if max < least {
                return Err(invalid(
                    "limits.max_connections",
                    format!(
                        "is {max}; it must be more than limits.max_clients ({}), or kiosks could not all connect and /healthz or the webhook could not get in; leave it unset for max_clients + max_pending_sessions + {}",
                        l.max_clients,
                        super::limits::CONNECTION_HEADROOM
                    ),
                ));
            }
        }
        let timeouts = [
            ("limits.join_timeout", l.join_timeout),
            ("limits.header_timeout", l.header_timeout),
            ("limits.idle_timeout", l.idle_timeout),
        ];
        for (key, value) in timeouts {
            if value < Duration::from_millis(100) {
                return Err(invalid(
                    key,
                    format!(
                        "is {}; it must be at least 100ms",
                        super::duration::format(value)
                    ),
                ));
            }
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
        if clients.wrong_token_limit < 1 {
            return Err(invalid(
                "clients.wrong_token_limit",
                "is 0; it must be at least 1 (wrong kiosk tokens an address may send within clients.wrong_token_window)",
            ));
        }
        if clients.wrong_token_window < Duration::from_secs(1) {
            return Err(invalid("clients.wrong_token_window", "must be at least 1s"));
        }
        let backoff = clients.wrong_token_backoff;
        if backoff < Duration::from_secs(1) || backoff > MAX_WRONG_TOKEN_BACKOFF {
            return Err(invalid(
                "clients.wrong_token_backoff",
                format!(
                    "must be between 1s and {}m",
                    MAX_WRONG_TOKEN_BACKOFF.as_secs() / 60
                ),
            ));
        }
        let mut names = HashSet::new();
        for (i, t) in clients.tokens.iter().enumerate() {
            let key = format!("clients.tokens[{i}]");
            if !is_name(&t.name) {
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
            if let Some(devices) = &t.devices {
                if devices.is_empty() {
                    return Err(invalid(
                        format!("{key}.devices"),
                        "is empty, so no screen could use the token: name device ids or patterns (\"lobby-*\"), or remove the key to let any device use it",
                    ));
                }
                if let Some(bad) = devices.iter().find(|d| !is_device_pattern(d)) {
                    return Err(invalid(
                        format!("{key}.devices"),
                        format!(
                            "{bad:?} is not a device id or pattern: letters, digits, '.', '_', ':' and '-', with at most one '*'"
                        ),
                    ));
                }
            }
        }
        if clients.missing_after < Duration::from_secs(1) {
            return Err(invalid("clients.missing_after", "must be at least 1s"));
        }
        if clients.max_screens < self.limits.max_clients {
            return Err(invalid(
                "clients.max_screens",
                format!(
                    "is {}, below limits.max_clients ({}): every connected screen must fit the list",
                    clients.max_screens, self.limits.max_clients
                ),
            ));
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
}

impl TlsConfig {
    /// Reads both files and checks they make a usable certificate and key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        certificate::load(&self.cert_file, &self.key_file)
            .map(|_| ())
            .map_err(|e| invalid(e.key, e.message))
    }
}

fn validate_directus(d: &DirectusConfig) -> Result<(), ConfigError> {
    if let Some(collection) = d.heartbeat_collection.as_ref().filter(|c| !is_name(c)) {
        return Err(invalid(
            "directus.heartbeat_collection",
            format!("{collection:?} is not a collection name (letters, digits, _ and -)"),
        ));
    }
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

/// A name as collections, kiosk tokens, field path parts and namespace parts are written: not
/// empty, and only ASCII letters, digits, `_` and `-`.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A list of field names or paths such as `"screen.code"`, none twice.
fn field_paths(key: &str, fields: &[String]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (j, field) in fields.iter().enumerate() {
        let key = format!("{key}[{j}]");
        let valid = !field.is_empty() && field.split('.').all(is_name);
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
    let valid_ns = ns == "/" || (ns.starts_with('/') && ns[1..].split('/').all(is_name));
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

/// A secret or token of at least [`MIN_SECRET_LEN`] characters.
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        }
    }

    fn message(result: Result<(), ConfigError>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn unusable_files_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = config(dir.path());
        let text = message(tls.validate());
        assert!(
            text.starts_with("tls.cert_file: cannot read ") && text.contains("No such file"),
            "{text}"
        );
        std::fs::write(&tls.cert_file, "not a certificate\n").expect("write");
        let text = message(tls.validate());
        assert!(
            text.starts_with("tls.cert_file: ") && text.contains("holds no PEM certificate"),
            "{text}"
        );
        std::fs::write(
            &tls.cert_file,
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let text = message(tls.validate());
        assert!(text.starts_with("tls.cert_file: "), "{text}");
    }
}
