//! Kiosk access: the token a kiosk shows in its handshake decides what it may read.
//!
//! Every path to a kiosk checks the [`Access`] stored on its socket: the rooms it joins
//! without subscribing, and every collection or routed room it subscribes to (which covers
//! replays and snapshots). Tokens are compared in constant time and never logged.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::config::{ClientsConfig, Secret};
use crate::fleet::identity::BadDevice;

/// What one kiosk may read, kept in its socket's extensions.
#[derive(Debug, Clone)]
pub struct Access {
    /// The token's name (`anonymous` without one), for logs.
    pub name: Arc<str>,
    /// The readable collections; `None`: every relayed collection.
    collections: Option<Arc<HashSet<String>>>,
    /// The devices that may use the token (`clients.tokens.devices`); `None`: any, or none.
    devices: Option<Arc<[String]>>,
}

impl Access {
    fn new(name: &str, collections: &[String], devices: Option<&[String]>) -> Self {
        let all = collections.iter().any(|c| c == "*");
        Self {
            name: name.into(),
            collections: (!all).then(|| Arc::new(collections.iter().cloned().collect())),
            devices: devices.map(Arc::from),
        }
    }

    /// Whether a kiosk that named `device` (or none) may use this token.
    pub fn device_allowed(&self, device: Option<&str>) -> bool {
        match (&self.devices, device) {
            (None, _) => true,
            (Some(patterns), Some(device)) => crate::device::device_allowed(patterns, device),
            (Some(_), None) => false,
        }
    }

    /// Whether this kiosk may read `collection`.
    pub fn may_read(&self, collection: &str) -> bool {
        self.collections
            .as_ref()
            .is_none_or(|c| c.contains(collection))
    }

    /// The collections this kiosk may read, or `None` for all of them.
    pub fn collections(&self) -> Option<impl Iterator<Item = &String>> {
        self.collections.as_ref().map(|c| c.iter())
    }
}

/// Why a kiosk's connection is refused; the kiosk receives this text as its `connect_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_clients` kiosks are connected.
    Full(usize),
    /// The handshake has no token and tokenless kiosks are not served.
    NoToken,
    /// The token matches none configured.
    BadToken,
    /// Too many wrong tokens came from the kiosk's address: refused for this many more
    /// seconds without looking at the token.
    Throttled(u64),
    /// The handshake's `device` is malformed, or the token is limited to other devices.
    Device(BadDevice),
}

impl Refused {
    /// The reason label in `relay_kiosks_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Full(_) => "full",
            Refused::NoToken => "no-token",
            Refused::BadToken => "bad-token",
            Refused::Throttled(_) => "throttled",
            Refused::Device(_) => "bad-device",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Full(max) => write!(
                f,
                "the relay is full: {max} kiosks are connected (limits.max_clients); try again later"
            ),
            Refused::NoToken => f.write_str(
                "this relay needs a kiosk token: connect with auth: {token: \"…\"} (clients.tokens)",
            ),
            Refused::BadToken => f.write_str("the kiosk token is not valid (clients.tokens)"),
            Refused::Throttled(secs) => write!(
                f,
                "too many wrong kiosk tokens from this address; try again in {secs} s (clients.wrong_token_limit)"
            ),
            Refused::Device(bad) => bad.fmt(f),
        }
    }
}

/// Decides, from the handshake, what a kiosk may read.
#[derive(Debug)]
pub struct Gate {
    anonymous: Option<Access>,
    tokens: Vec<(Secret, Access)>,
}

impl Gate {
    pub fn new(clients: &ClientsConfig) -> Self {
        let anonymous = clients
            .allow_anonymous
            .then(|| Access::new("anonymous", &clients.anonymous_collections, None));
        let tokens = clients
            .tokens
            .iter()
            .filter_map(|t| {
                let secret = t.token.clone()?;
                Some((
                    secret,
                    Access::new(&t.name, &t.collections, t.devices.as_deref()),
                ))
            })
            .collect();
        Self { anonymous, tokens }
    }

    /// The access of a kiosk that showed `token` (the handshake's `auth.token`, if any).
    /// Every configured token is compared, each in constant time, so the answer's timing does
    /// not tell which one came close.
    pub fn admit(&self, token: Option<&str>) -> Result<Access, Refused> {
        let Some(token) = token else {
            return self.anonymous.clone().ok_or(Refused::NoToken);
        };
        let mut found = None;
        for (secret, access) in &self.tokens {
            if secret.matches(token.as_bytes()) && found.is_none() {
                found = Some(access);
            }
        }
        found.cloned().ok_or(Refused::BadToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn gate(clients: &str) -> Gate {
        let config = Config::from_toml(&format!(
            "[webhook]\nsecret = \"0123456789abcdef\"\n[[collections]]\nname = \"screens\"\n[[collections]]\nname = \"menus\"\n{clients}"
        ))
        .expect("valid");
        Gate::new(&config.clients)
    }

    const TOKENS: &str = r#"
[[clients.tokens]]
name = "lobby"
token = "lobby-token-0123456789"
collections = ["screens"]
[[clients.tokens]]
name = "office"
token = "office-token-0123456789"
collections = ["*"]
"#;

    #[test]
    fn a_token_reads_its_collections_only() {
        let gate = gate(TOKENS);
        let lobby = gate
            .admit(Some("lobby-token-0123456789"))
            .expect("admitted");
        assert_eq!(&*lobby.name, "lobby");
        assert!(lobby.may_read("screens"));
        assert!(!lobby.may_read("menus"));
        let office = gate
            .admit(Some("office-token-0123456789"))
            .expect("admitted");
        assert!(office.may_read("screens") && office.may_read("menus"));
        assert!(office.collections().is_none());
    }

    #[test]
    fn wrong_or_missing_tokens_are_refused() {
        let gate = gate(TOKENS);
        assert_eq!(
            gate.admit(Some("lobby-token-012345678"))
                .expect_err("refused"),
            Refused::BadToken
        );
        assert_eq!(
            gate.admit(Some("")).expect_err("refused"),
            Refused::BadToken
        );
        assert_eq!(gate.admit(None).expect_err("refused"), Refused::NoToken);
    }

    #[test]
    fn anonymous_kiosks_need_allow_anonymous_and_read_what_it_names() {
        let gate = gate(&format!(
            "[clients]\nallow_anonymous = true\nanonymous_collections = [\"menus\"]\n{TOKENS}"
        ));
        let anonymous = gate.admit(None).expect("admitted");
        assert!(anonymous.may_read("menus"));
        assert!(!anonymous.may_read("screens"));
        assert_eq!(
            gate.admit(Some("not-a-token")).expect_err("refused"),
            Refused::BadToken
        );
    }

    #[test]
    fn a_token_limited_to_devices_admits_only_them() {
        let limited = gate(
            r#"
[[clients.tokens]]
name = "lobby"
token = "lobby-token-0123456789"
collections = ["screens"]
devices = ["lobby-*", "hall"]
"#,
        );
        let lobby = limited
            .admit(Some("lobby-token-0123456789"))
            .expect("admitted");
        assert!(lobby.device_allowed(Some("lobby-left")));
        assert!(lobby.device_allowed(Some("hall")));
        assert!(!lobby.device_allowed(Some("office")));
        assert!(
            !lobby.device_allowed(None),
            "a limited token needs a device"
        );
        let open = gate(TOKENS)
            .admit(Some("office-token-0123456789"))
            .expect("admitted");
        assert!(open.device_allowed(None));
        assert!(open.device_allowed(Some("anything")));
    }
}
