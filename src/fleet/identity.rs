//! Which screen a kiosk is: the `device` id (and optional `name` and `app_version`) it gives in
//! its handshake, as `auth: {device, name, app_version}` or, for socket.io-client 2 (which has
//! no `auth`), as query parameters of the same names.

use serde_json::Value;

use crate::device::{MAX_DEVICE_LEN, is_device_id};

/// The longest display name and app version kept; longer ones are cut.
pub const MAX_LABEL_LEN: usize = 100;

/// What a kiosk says about itself. `device` is `None` for a kiosk that does not name itself:
/// it is served as an anonymous connection and not remembered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub device: Option<String>,
    pub name: Option<String>,
    pub app_version: Option<String>,
}

/// Why a kiosk's `device` is refused; the kiosk receives this text as its `connect_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadDevice {
    /// Not a string, empty, too long, or with other characters than allowed.
    Malformed,
    /// The kiosk's token is limited to other devices (`clients.tokens.devices`).
    NotAllowed,
}

impl std::fmt::Display for BadDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadDevice::Malformed => write!(
                f,
                "the device id is malformed: 1 to {MAX_DEVICE_LEN} letters, digits, '.', '_', ':' or '-'"
            ),
            BadDevice::NotAllowed => f.write_str(
                "this kiosk token may not be used by this device (clients.tokens.devices)",
            ),
        }
    }
}

impl Identity {
    /// Reads the identity from the handshake's `auth` object, falling back to the query string
    /// (`device=…&name=…&app_version=…`).
    pub fn from_handshake(auth: &Value, query: Option<&str>) -> Result<Self, BadDevice> {
        let from_query = |key: &str| -> Option<String> {
            url::form_urlencoded::parse(query?.as_bytes())
                .find(|(name, _)| name == key)
                .map(|(_, value)| value.into_owned())
        };
        let field = |key: &str| -> Result<Option<String>, BadDevice> {
            match auth.get(key) {
                None | Some(Value::Null) => Ok(from_query(key)),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(_) => Err(BadDevice::Malformed),
            }
        };
        let device = field("device")?;
        if device.as_deref().is_some_and(|d| !is_device_id(d)) {
            return Err(BadDevice::Malformed);
        }
        // A name or version that is not a string is ignored rather than refused: it is only shown.
        Ok(Self {
            device,
            name: field("name").ok().flatten().and_then(label),
            app_version: field("app_version").ok().flatten().and_then(label),
        })
    }
}

/// A name or version as it is kept: control characters removed, trimmed, cut to
/// [`MAX_LABEL_LEN`] characters; `None` when nothing is left.
fn label(text: String) -> Option<String> {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LABEL_LEN)
        .collect();
    let clean = clean.trim();
    (!clean.is_empty()).then(|| clean.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_identity_comes_from_auth_or_the_query_string() {
        let id = Identity::from_handshake(
            &json!({"token": "x", "device": "lobby-left", "name": "  Lobby, left\u{7} ", "app_version": "2.1"}),
            None,
        )
        .expect("valid");
        assert_eq!(id.device.as_deref(), Some("lobby-left"));
        assert_eq!(id.name.as_deref(), Some("Lobby, left"));
        assert_eq!(id.app_version.as_deref(), Some("2.1"));

        let id = Identity::from_handshake(
            &Value::Null,
            Some("EIO=3&transport=polling&device=hall.1&name=Hall%20one"),
        )
        .expect("valid");
        assert_eq!(id.device.as_deref(), Some("hall.1"));
        assert_eq!(id.name.as_deref(), Some("Hall one"));

        let none = Identity::from_handshake(&json!({"token": "x"}), Some("EIO=4")).expect("valid");
        assert_eq!(none, Identity::default());
    }

    #[test]
    fn malformed_device_ids_are_refused() {
        for bad in [
            json!({"device": ""}),
            json!({"device": "a b"}),
            json!({"device": "<script>"}),
            json!({"device": "x".repeat(MAX_DEVICE_LEN + 1)}),
            json!({"device": 7}),
            json!({"device": ["a"]}),
        ] {
            assert_eq!(
                Identity::from_handshake(&bad, None),
                Err(BadDevice::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            Identity::from_handshake(&Value::Null, Some("device=%2e%2e%2F")),
            Err(BadDevice::Malformed)
        );
        let longest = "x".repeat(MAX_DEVICE_LEN);
        assert!(Identity::from_handshake(&json!({"device": longest}), None).is_ok());
    }

    #[test]
    fn names_are_cleaned_and_cut() {
        let long = "é".repeat(MAX_LABEL_LEN + 50);
        let id = Identity::from_handshake(
            &json!({"device": "a", "name": long, "app_version": 3}),
            None,
        )
        .expect("valid");
        assert_eq!(id.name.map(|n| n.chars().count()), Some(MAX_LABEL_LEN));
        assert_eq!(id.app_version, None);
        let blank =
            Identity::from_handshake(&json!({"device": "a", "name": " \n "}), None).expect("valid");
        assert_eq!(blank.name, None);
    }
}
