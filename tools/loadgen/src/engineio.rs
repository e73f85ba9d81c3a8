//! The few Engine.IO v4 / Socket.IO v4 packets a kiosk sees and sends over a WebSocket, one
//! packet per text message (no polling, no binary attachments).
//!
//! ```text
//! 0{"sid":…,"pingInterval":25000,…}   open            2 / 3        ping / pong
//! 40{"sid":…}                         connected       41           disconnected
//! 42["data.update",{…}]               event           421["subscribe",{…}]  event with ack id 1
//! 431[{…}]                            ack of id 1     44{"message":…}       connect refused
//! ```

use serde_json::Value;

/// One packet, borrowing from the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0{…}`: the handshake data.
    Open(&'a str),
    /// `1`: the server closes the Engine.IO session.
    Close,
    /// `2`, answered with [`PONG`].
    Ping,
    Pong,
    Noop,
    /// `40{…}`: the namespace is connected.
    Connect(&'a str),
    /// `41`: the server disconnected the namespace.
    Disconnect,
    /// `42["name",…]`; `args` is the text after the name and its comma, without the closing `]`.
    Event {
        ack: Option<u64>,
        name: &'a str,
        args: &'a str,
    },
    /// `43<id>[…]`.
    Ack {
        id: u64,
        data: &'a str,
    },
    /// `44{…}`: the connection was refused.
    ConnectError(&'a str),
    /// Anything else (upgrade probes, binary packets, malformed text).
    Other(&'a str),
}

/// The pong a client answers every ping with.
pub const PONG: &str = "3";

/// Parses one WebSocket text message.
pub fn parse(text: &str) -> Packet<'_> {
    let Some(kind) = text.as_bytes().first() else {
        return Packet::Other(text);
    };
    let rest = &text[1..];
    match kind {
        b'0' => Packet::Open(rest),
        b'1' => Packet::Close,
        b'2' => Packet::Ping,
        b'3' => Packet::Pong,
        b'6' => Packet::Noop,
        b'4' => parse_socketio(rest).unwrap_or(Packet::Other(text)),
        _ => Packet::Other(text),
    }
}

fn parse_socketio(text: &str) -> Option<Packet<'_>> {
    let kind = *text.as_bytes().first()?;
    let mut rest = &text[1..];
    // A namespace other than `/` is written `/name,` before the id and data.
    if rest.starts_with('/') {
        rest = &rest[rest.find(',')? + 1..];
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = (digits > 0)
        .then(|| rest[..digits].parse::<u64>().ok())
        .flatten();
    let data = &rest[digits..];
    Some(match kind {
        b'0' => Packet::Connect(data),
        b'1' => Packet::Disconnect,
        b'2' => {
            let (name, args) = split_event(data)?;
            Packet::Event {
                ack: id,
                name,
                args,
            }
        }
        b'3' => Packet::Ack { id: id?, data },
        b'4' => Packet::ConnectError(data),
        _ => return None,
    })
}

/// `["name",{…}]` into `name` and `{…}`. Names with escaped quotes are not supported.
fn split_event(data: &str) -> Option<(&str, &str)> {
    let inner = data.strip_prefix("[\"")?.strip_suffix(']')?;
    let end = inner.find('"')?;
    let name = &inner[..end];
    let args = inner[end + 1..].strip_prefix(',').unwrap_or("");
    Some((name, args))
}

/// The Socket.IO connect packet, with handshake auth when there is any.
pub fn connect(token: Option<&str>, collections: Option<&[String]>) -> String {
    let mut auth = serde_json::Map::new();
    if let Some(token) = token {
        auth.insert("token".into(), Value::from(token));
    }
    if let Some(collections) = collections {
        auth.insert("collections".into(), Value::from(collections.to_vec()));
    }
    if auth.is_empty() {
        "40".into()
    } else {
        format!("40{}", Value::Object(auth))
    }
}

/// An event packet `42<ack>["name",data]`.
pub fn event(ack: Option<u64>, name: &str, data: &Value) -> String {
    let ack = ack.map(|a| a.to_string()).unwrap_or_default();
    format!(
        "42{ack}{}",
        Value::from(vec![Value::from(name), data.clone()])
    )
}

/// An event packet `42["x","AAAA…"]` of exactly `bytes` bytes (at least its 9 bytes of frame).
pub fn oversized(bytes: usize) -> String {
    const HEAD: &str = "42[\"x\",\"";
    const TAIL: &str = "\"]";
    let pad = bytes.saturating_sub(HEAD.len() + TAIL.len());
    let mut packet = String::with_capacity(HEAD.len() + pad + TAIL.len());
    packet.push_str(HEAD);
    packet.extend(std::iter::repeat_n('A', pad));
    packet.push_str(TAIL);
    packet
}

/// The unsigned integer after the first `"key":` in a JSON text, found without parsing the
/// whole text (an event is a few kilobytes and every kiosk reads every event).
pub fn find_u64(json: &str, key: &str) -> Option<u64> {
    let needle = format!("\"{key}\":");
    let start = json.find(&needle)? + needle.len();
    let digits = json[start..].bytes().take_while(u8::is_ascii_digit).count();
    json[start..start + digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_packets_a_kiosk_sees() {
        let cases: [(&str, Packet<'_>); 13] = [
            (
                r#"0{"sid":"a","pingInterval":25000}"#,
                Packet::Open(r#"{"sid":"a","pingInterval":25000}"#),
            ),
            ("1", Packet::Close),
            ("2", Packet::Ping),
            ("3", Packet::Pong),
            ("6", Packet::Noop),
            (r#"40{"sid":"b"}"#, Packet::Connect(r#"{"sid":"b"}"#)),
            ("41", Packet::Disconnect),
            (
                r#"42["data.update",{"keys":["7"]}]"#,
                Packet::Event {
                    ack: None,
                    name: "data.update",
                    args: r#"{"keys":["7"]}"#,
                },
            ),
            (
                r#"421["subscribe",{"collections":["screens"]}]"#,
                Packet::Event {
                    ack: Some(1),
                    name: "subscribe",
                    args: r#"{"collections":["screens"]}"#,
                },
            ),
            (
                r#"42/admin,["ping"]"#,
                Packet::Event {
                    ack: None,
                    name: "ping",
                    args: "",
                },
            ),
            (
                r#"4312[{"ok":true}]"#,
                Packet::Ack {
                    id: 12,
                    data: r#"[{"ok":true}]"#,
                },
            ),
            (
                r#"44{"message":"the relay is full"}"#,
                Packet::ConnectError(r#"{"message":"the relay is full"}"#),
            ),
            ("42not-an-array", Packet::Other("42not-an-array")),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), expected, "{text}");
        }
        assert_eq!(parse(""), Packet::Other(""));
        assert_eq!(parse("5probe"), Packet::Other("5probe"));
    }

    #[test]
    fn writes_connect_event_and_oversized_packets() {
        assert_eq!(connect(None, None), "40");
        assert_eq!(connect(Some("t\"k"), None), r#"40{"token":"t\"k"}"#);
        assert_eq!(
            connect(None, Some(&["screens".to_owned()])),
            r#"40{"collections":["screens"]}"#
        );
        assert_eq!(
            event(Some(1), "subscribe", &json!({"collections": ["screens"]})),
            r#"421["subscribe",{"collections":["screens"]}]"#
        );
        let big = oversized(1000);
        assert_eq!(big.len(), 1000);
        assert!(matches!(parse(&big), Packet::Event { name: "x", .. }));
    }

    #[test]
    fn finds_numbers_without_parsing_the_body() {
        let body = r#"{"collection":"screens","keys":["17"],"payload":{"n":17,"sent_at_us":123456,"zpad":"xx"},"seq":3}"#;
        assert_eq!(find_u64(body, "n"), Some(17));
        assert_eq!(find_u64(body, "sent_at_us"), Some(123456));
        assert_eq!(find_u64(body, "seq"), Some(3));
        assert_eq!(find_u64(body, "missing"), None);
        assert_eq!(find_u64(r#"{"n":"x"}"#, "n"), None);
    }
}
