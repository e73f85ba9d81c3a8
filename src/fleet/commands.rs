//! Commands to screens: a `relay.command` event `{id, command, args}` sent to one connection of
//! a screen, with an acknowledgement the screen's page sends back (`relay-client.js` does for
//! `reload`, `identify` and `resync`; a page may handle its own names).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use socketioxide::extract::SocketRef;

use crate::metrics::{Metrics, reason_labels};

/// The event a screen receives.
pub const EVENT: &str = "relay.command";
/// How long the relay waits for a screen to acknowledge a command.
pub const ACK_WAIT: Duration = Duration::from_secs(5);
/// The largest `args` object, serialised.
pub const MAX_ARGS_BYTES: usize = 4096;
/// The longest command name.
pub const MAX_NAME_LEN: usize = 64;

/// A command as an admin posts it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub command: String,
    #[serde(default)]
    pub args: Option<Map<String, Value>>,
    /// For `POST /api/commands`: every online screen of this kiosk token (its name)…
    #[serde(default)]
    pub token: Option<String>,
    /// …or in this room (a collection, or a routed room `collection:field:value`)…
    #[serde(default)]
    pub room: Option<String>,
    /// …or every online screen.
    #[serde(default)]
    pub all: bool,
}

impl Request {
    /// Checks the name and the arguments; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = !self.command.is_empty()
            && self.command.len() <= MAX_NAME_LEN
            && self
                .command
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(format!(
                "command must be 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-' (reload, identify, resync, or a name the screens' page handles)"
            ));
        }
        if let Some(args) = &self.args {
            let size = serde_json::to_vec(args).map_or(usize::MAX, |b| b.len());
            if size > MAX_ARGS_BYTES {
                return Err(format!(
                    "args is {size} bytes serialised; at most {MAX_ARGS_BYTES}"
                ));
            }
        }
        Ok(())
    }
}

/// What became of a command sent to a screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The screen acknowledged it (its page acted on it).
    Acked,
    /// The screen answered that it does not handle it, saying why.
    Declined(String),
    /// No answer within [`ACK_WAIT`].
    Silent,
}

impl Answer {
    /// The screen's answer as the API gives it: `acked`, and the screen's reason when it
    /// declined.
    pub fn to_json(&self) -> Value {
        match self {
            Answer::Acked => json!({ "acked": true }),
            Answer::Declined(error) => json!({ "acked": false, "declined": error }),
            Answer::Silent => json!({ "acked": false }),
        }
    }
}

/// Sends `request` to `socket` and waits up to [`ACK_WAIT`] for the screen's answer; `None`
/// when it could not be sent (the connection closed, or its queue is full).
pub async fn send(socket: &SocketRef, request: &Request, metrics: &Metrics) -> Option<Answer> {
    let payload = json!({
        "id": command_id(),
        "command": request.command,
        "args": request.args.clone().unwrap_or_default(),
    });
    let answer = match socket
        .timeout(ACK_WAIT)
        .emit_with_ack::<_, Value>(EVENT, &payload)
    {
        Err(_) => None,
        Ok(ack) => Some(match ack.await {
            Err(_) => Answer::Silent,
            // A page that answers {ok: false, error} did not act on it.
            Ok(value) if value.get("ok") == Some(&Value::Bool(false)) => Answer::Declined(
                value
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("the screen declined the command")
                    .chars()
                    .take(200)
                    .collect(),
            ),
            Ok(_) => Answer::Acked,
        }),
    };
    let label = match answer {
        Some(Answer::Acked) => "acked",
        Some(Answer::Declined(_)) => "declined",
        Some(Answer::Silent) => "not-acked",
        None => "not-sent",
    };
    metrics
        .screen_commands
        .get_or_create(&reason_labels(label))
        .inc();
    answer
}

/// A random id for one command, so a page can tell two apart.
fn command_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).ok();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> Result<Request, String> {
        let request: Request = serde_json::from_value(body).map_err(|e| e.to_string())?;
        request.check().map(|()| request)
    }

    #[test]
    fn commands_are_checked() {
        assert!(request(json!({"command": "reload"})).is_ok());
        assert!(request(json!({"command": "show-page", "args": {"page": 3}})).is_ok());
        assert!(request(json!({"command": ""})).is_err());
        assert!(request(json!({"command": "a b"})).is_err());
        assert!(request(json!({"command": "<img>"})).is_err());
        assert!(request(json!({"command": "x".repeat(MAX_NAME_LEN + 1)})).is_err());
        assert!(
            request(json!({"command": "x", "args": {"big": "y".repeat(MAX_ARGS_BYTES)}})).is_err()
        );
        assert!(request(json!({"command": "x", "args": [1]})).is_err());
        assert!(request(json!({"command": "x", "unknown": 1})).is_err());
    }
}
