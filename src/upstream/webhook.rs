//! The webhook receiver: a Directus Flow (event trigger, `action` type, one `request`
//! operation) POSTs `{{$trigger}}` for every item change.
//!
//! Accepted bodies, as Directus 12 sends them (see the README for the Flow):
//!
//! ```json
//! {"event":"screens.items.create","payload":{"name":"Lobby"},"key":24,"collection":"screens"}
//! {"event":"screens.items.update","payload":{"status":"published"},"keys":[25,26],"collection":"screens"}
//! {"event":"screens.items.delete","payload":["24"],"keys":["24"],"collection":"screens"}
//! ```
//!
//! Keys may be numbers or strings and are normalised to strings. A template path that does not
//! exist arrives as the string `"undefined"` and counts as absent.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Map, Value};
use tracing::{debug, warn};

use crate::config::Config;
use crate::hub::event::{Action, Change, Key};
use crate::hub::{Busy, HubHandle};
use crate::metrics::Metrics;
use crate::nesting::{self, MAX_NESTING};
use crate::upstream::journal::{self, JournalError, JournalHandle};

/// The header the Flow sends the shared secret in.
pub const SECRET_HEADER: &str = "x-relay-secret";

/// Why a webhook request was refused: the HTTP status, a metric label and a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl Reject {
    fn bad(reason: &'static str, message: impl Into<String>) -> Self {
        Reject {
            status: StatusCode::BAD_REQUEST,
            reason,
            message: message.into(),
        }
    }
}

/// Where an accepted change goes: straight to the hub, or (with a Directus to read from) to the
/// upstream, which re-reads the items for their full records first.
#[derive(Debug, Clone)]
pub enum Sink {
    Hub(HubHandle),
    Upstream(tokio::sync::mpsc::Sender<Change>),
    /// `webhook.durable`: the journal, which answers once the change is on disk.
    Journal(JournalHandle),
}

/// Checks the secret, reads the body within `limits.webhook_body_bytes`, parses it and hands
/// the change on. Answers at once; the hub (or the upstream) does the rest.
pub async fn receive<B>(
    headers: &HeaderMap,
    body: B,
    config: &Config,
    sink: &Sink,
    metrics: &Metrics,
) -> Result<Change, Reject>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let result = receive_inner(headers, body, config, sink).await;
    match &result {
        Ok(change) => debug!(
            collection = change.collection,
            action = change.action.as_str(),
            keys = change.keys.len(),
            "webhook accepted"
        ),
        Err(reject) => {
            metrics.reject(reject.status.as_u16(), reject.reason, &reject.message);
            warn!(
                status = reject.status.as_u16(),
                reason = reject.reason,
                "webhook refused: {}",
                reject.message
            );
        }
    }
    result
}

async fn receive_inner<B>(
    headers: &HeaderMap,
    body: B,
    config: &Config,
    sink: &Sink,
) -> Result<Change, Reject>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    check_secret(headers, config)?;
    let limit = config.limits.webhook_body_bytes;
    let too_large = || Reject {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        reason: "too-large",
        message: format!("body is larger than limits.webhook_body_bytes ({limit} bytes)"),
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(too_large());
    }
    let mut body = body;
    let mut bytes = Vec::new();
    let bytes = loop {
        match body.frame().await {
            None => break Bytes::from(bytes),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > limit {
                        drain(body).await;
                        return Err(too_large());
                    }
                    bytes.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Err(Reject::bad(
                    "unreadable",
                    format!("body could not be read: {e}"),
                ));
            }
        }
    };
    let change = parse(&bytes)?;

    if config.collection(&change.collection).is_none() {
        let known: Vec<&str> = config.collections.iter().map(|c| c.name.as_str()).collect();
        return Err(Reject::bad(
            "unknown-collection",
            format!(
                "collection {:?} is not relayed (relayed: {}); add it to [[collections]] or remove it from the Flow's trigger",
                change.collection,
                known.join(", ")
            ),
        ));
    }
    let busy = || Reject {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "busy",
        message: format!(
            "the relay's queue is full (limits.hub_inbox = {}); the change was not taken",
            config.limits.hub_inbox
        ),
    };
    let stopping = || Reject {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "stopping",
        message: "the relay is shutting down".into(),
    };
    let sent = match sink {
        Sink::Hub(hub) => hub.try_apply(change.clone()),
        Sink::Upstream(tx) => tx.try_send(change.clone()).map_err(Busy::from),
        Sink::Journal(journal) => {
            return match journal.commit(change.clone()).await {
                Ok(()) => Ok(change),
                Err(JournalError::Busy) => Err(busy()),
                Err(JournalError::Stopped) => Err(stopping()),
                Err(JournalError::Disk(e)) => Err(Reject {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: "not-saved",
                    message: format!(
                        "the change could not be written to disk ({e}); it was not taken (webhook.durable): check that state_dir is writable and has room"
                    ),
                }),
                Err(JournalError::Full) => Err(Reject {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: "not-saved",
                    message: format!(
                        "the webhook journal holds its most ({} MiB) because the state file cannot be written; the change was not taken (webhook.durable)",
                        journal::MAX_BYTES >> 20
                    ),
                }),
            };
        }
    };
    match sent {
        Ok(()) => Ok(change),
        Err(Busy::Full) => Err(busy()),
        Err(Busy::Stopped) => Err(stopping()),
    }
}

/// Bytes of an oversized body read and thrown away, so the client, still sending, receives
/// the 413 instead of a reset connection (a Directus Flow sends the whole body at once).
pub const DRAIN_LIMIT: usize = 16 << 20;
/// How long draining may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

async fn drain<B>(mut body: B)
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let drained = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len();
            }
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    };
    tokio::time::timeout(DRAIN_TIME, drained).await.ok();
}

fn check_secret(headers: &HeaderMap, config: &Config) -> Result<(), Reject> {
    let Some(secret) = &config.webhook.secret else {
        return Err(Reject {
            status: StatusCode::UNAUTHORIZED,
            reason: "no-secret-configured",
            message: "the relay has no webhook secret configured".into(),
        });
    };
    let unauthorized = |message: &str| Reject {
        status: StatusCode::UNAUTHORIZED,
        reason: "bad-secret",
        message: message.into(),
    };
    let mut values = headers.get_all(SECRET_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(unauthorized("the X-Relay-Secret header is missing")),
        (Some(_), Some(_)) => Err(unauthorized("the X-Relay-Secret header is sent twice")),
        (Some(value), None) if secret.matches(value.as_bytes()) => Ok(()),
        (Some(_), None) => Err(unauthorized(
            "the X-Relay-Secret header does not match webhook.secret",
        )),
    }
}

/// Parses one webhook body into a [`Change`].
pub fn parse(body: &[u8]) -> Result<Change, Reject> {
    if nesting::depth_of_bytes(body, MAX_NESTING) > MAX_NESTING {
        return Err(Reject::bad(
            "too-deep",
            format!(
                "body nests deeper than {MAX_NESTING} levels of [ and {{ (the relay's limit, so that everything it saves can be read back at the next start); flatten the payload"
            ),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Reject::bad("malformed", format!("body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(Reject::bad(
            "malformed",
            "body must be a JSON object such as Directus's {{$trigger}}",
        ));
    };
    let event = present(&fields, "event")
        .ok_or_else(|| Reject::bad("missing-field", "\"event\" is missing"))?
        .as_str()
        .ok_or_else(|| Reject::bad("malformed", "\"event\" must be a string"))?;
    let (prefix, action) = parse_event(event)?;
    let collection = match present(&fields, "collection") {
        Some(Value::String(c)) if !c.is_empty() => c.clone(),
        Some(_) => {
            return Err(Reject::bad(
                "malformed",
                "\"collection\" must be a non-empty string",
            ));
        }
        None => prefix.map(str::to_owned).ok_or_else(|| {
            Reject::bad(
                "missing-field",
                format!("\"collection\" is missing and event {event:?} does not name one"),
            )
        })?,
    };
    if let Some(prefix) = prefix
        && prefix != collection
    {
        return Err(Reject::bad(
            "malformed",
            format!("event {event:?} is for {prefix:?} but \"collection\" is {collection:?}"),
        ));
    }
    let keys = parse_keys(&fields, action)?;
    let payload = match (action, present(&fields, "payload")) {
        (Action::Delete, _) => None,
        (_, None) => None,
        (_, Some(Value::Object(p))) => Some(Value::Object(p.clone())),
        (_, Some(_)) => {
            return Err(Reject::bad(
                "malformed",
                format!("\"payload\" of a {} must be an object", action.as_str()),
            ));
        }
    };
    Ok(Change {
        collection,
        action,
        keys,
        payload,
    })
}

/// `screens.items.create` → (Some("screens"), Create); `items.update` → (None, Update).
fn parse_event(event: &str) -> Result<(Option<&str>, Action), Reject> {
    let (prefix, rest) = match event.rsplit_once(".items.") {
        Some((prefix, rest)) => (Some(prefix), rest),
        None => (None, event.strip_prefix("items.").unwrap_or("")),
    };
    let action = match rest {
        "create" => Action::Create,
        "update" => Action::Update,
        "delete" => Action::Delete,
        _ => {
            return Err(Reject::bad(
                "unknown-event",
                format!(
                    "unknown event {event:?}: expected <collection>.items.create, .items.update or .items.delete (use an \"action\" event trigger)"
                ),
            ));
        }
    };
    Ok((prefix.filter(|p| !p.is_empty()), action))
}

fn parse_keys(fields: &Map<String, Value>, action: Action) -> Result<Vec<Key>, Reject> {
    let raw: Vec<&Value> = match (present(fields, "keys"), present(fields, "key")) {
        (Some(Value::Array(keys)), _) => keys.iter().collect(),
        (Some(_), _) => return Err(Reject::bad("malformed", "\"keys\" must be an array")),
        (None, Some(key)) => vec![key],
        (None, None) => {
            return Err(Reject::bad(
                "missing-field",
                format!("a {} needs \"key\" or \"keys\"", action.as_str()),
            ));
        }
    };
    if raw.is_empty() {
        return Err(Reject::bad("missing-field", "\"keys\" is empty"));
    }
    raw.into_iter()
        .map(|k| {
            Key::from_json(k).ok_or_else(|| {
                Reject::bad(
                    "malformed",
                    format!("key {k} is neither a string nor an integer"),
                )
            })
        })
        .collect()
}

/// The field, unless it is absent, `null` or the `"undefined"` a Flow template renders for a
/// path that does not exist.
fn present<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    match fields.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "undefined" => None,
        Some(v) => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(change: &Change) -> Vec<&str> {
        change.keys.iter().map(|k| k.text.as_str()).collect()
    }

    /// Every body captured from Directus 12.4.0 (`webhook_capture.jsonl`, PROTOCOL.md §4.3-4.4).
    #[test]
    fn parses_every_captured_body() {
        type Case = (
            &'static str,
            &'static str,
            Action,
            &'static [&'static str],
            Option<Value>,
        );
        let cases: [Case; 10] = [
            (
                r#"{"event":"screens.items.create","payload":{"name":"Hook single","status":"draft"},"key":24,"collection":"screens"}"#,
                "screens",
                Action::Create,
                &["24"],
                Some(json!({"name":"Hook single","status":"draft"})),
            ),
            (
                r#"{"event":"screens.items.update","payload":{"status":"published"},"keys":["24"],"collection":"screens"}"#,
                "screens",
                Action::Update,
                &["24"],
                Some(json!({"status":"published"})),
            ),
            (
                r#"{"event":"screens.items.update","payload":{"status":"published"},"keys":[25,26],"collection":"screens"}"#,
                "screens",
                Action::Update,
                &["25", "26"],
                Some(json!({"status":"published"})),
            ),
            (
                r#"{"event":"screens.items.delete","payload":["24"],"keys":["24"],"collection":"screens"}"#,
                "screens",
                Action::Delete,
                &["24"],
                None,
            ),
            (
                r#"{"event":"screens.items.delete","payload":[26],"keys":[26],"collection":"screens"}"#,
                "screens",
                Action::Delete,
                &["26"],
                None,
            ),
            (
                r#"{"event":"announcements.items.create","payload":{"title":"Hook ann","body":"b","screen":25,"published":true},"key":"a1aaf176-4a68-4d78-b9b0-475ac2f28bbb","collection":"announcements"}"#,
                "announcements",
                Action::Create,
                &["a1aaf176-4a68-4d78-b9b0-475ac2f28bbb"],
                Some(json!({"title":"Hook ann","body":"b","screen":25,"published":true})),
            ),
            (
                r#"{"event":"announcements.items.create","payload":{"title":"Nested","screen":{"name":"Nested screen"}},"key":"0b5a4f0e-0000-4000-8000-000000000001","collection":"announcements"}"#,
                "announcements",
                Action::Create,
                &["0b5a4f0e-0000-4000-8000-000000000001"],
                Some(json!({"title":"Nested","screen":{"name":"Nested screen"}})),
            ),
            // The object-shaped template of §4.4: absent paths arrive as "undefined".
            (
                r#"{"event":"screens.items.create","collection":"screens","key":28,"keys":"undefined","payload":{"name":"variant create"},"user":"6ac4f826-185e-4a9d-a99b-30d453f70e70","origin_ip":"127.0.0.1"}"#,
                "screens",
                Action::Create,
                &["28"],
                Some(json!({"name":"variant create"})),
            ),
            (
                r#"{"event":"screens.items.update","collection":"screens","key":"undefined","keys":["28"],"payload":{"name":"variant update"},"user":"6ac4f826-185e-4a9d-a99b-30d453f70e70","origin_ip":"127.0.0.1"}"#,
                "screens",
                Action::Update,
                &["28"],
                Some(json!({"name":"variant update"})),
            ),
            // Without "collection", the event names it.
            (
                r#"{"event":"channels.items.update","payload":{"label":"News"},"keys":["news"]}"#,
                "channels",
                Action::Update,
                &["news"],
                Some(json!({"label":"News"})),
            ),
        ];
        for (body, collection, action, expected_keys, payload) in cases {
            let change = parse(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert_eq!(change.collection, collection, "{body}");
            assert_eq!(change.action, action, "{body}");
            assert_eq!(keys(&change), expected_keys, "{body}");
            assert_eq!(change.payload, payload, "{body}");
        }
    }

    /// Truncated and corrupted versions of every captured body: each is parsed or refused,
    /// never a panic.
    #[test]
    fn no_input_panics() {
        let fixture = include_str!("../../tests/fixtures/webhook_bodies.jsonl");
        let mut cases = 0;
        for body in fixture.lines().map(str::as_bytes) {
            for cut in 0..body.len() {
                let _ = parse(&body[..cut]);
                cases += 1;
            }
            for (i, replacement) in
                (0..body.len()).zip([b'"', b'{', b']', b'0', b'\\', 0xff].iter().cycle())
            {
                let mut corrupted = body.to_vec();
                corrupted[i] = *replacement;
                let _ = parse(&corrupted);
                cases += 1;
            }
        }
        for odd in [
            &b"null"[..],
            b"[]",
            b"{}",
            b"\"x\"",
            b"{\"event\":null}",
            b"{\"event\":\".items.create\",\"key\":1}",
        ] {
            assert!(parse(odd).is_err());
        }
        assert!(cases > 4000, "{cases}");
    }

    /// The hub's inbox full: 503, and the change is not taken.
    #[tokio::test]
    async fn a_full_hub_answers_503() {
        let config =
            Config::from_toml("clients.allow_anonymous = true\n[webhook]\nsecret = \"0123456789abcdef\"\n[limits]\nhub_inbox = 1")
                .expect("valid");
        // A hub that is never started never drains its inbox.
        let (hub, _inbox) = crate::hub::channel(&config);
        let metrics = Metrics::new();
        let mut headers = HeaderMap::new();
        headers.insert(SECRET_HEADER, "0123456789abcdef".parse().expect("header"));
        let body = || {
            http_body_util::Full::new(Bytes::from_static(
                br#"{"event":"screens.items.create","key":1,"collection":"screens"}"#,
            ))
        };
        let sink = Sink::Hub(hub);
        assert!(
            receive(&headers, body(), &config, &sink, &metrics)
                .await
                .is_ok()
        );
        let reject = receive(&headers, body(), &config, &sink, &metrics)
            .await
            .expect_err("inbox is full");
        assert_eq!(reject.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            reject.message.contains("limits.hub_inbox = 1"),
            "{}",
            reject.message
        );
        assert!(
            metrics
                .encode()
                .contains(r#"relay_webhook_rejects_total{reason="busy"} 1"#)
        );
    }

    #[test]
    fn numeric_keys_keep_their_json_type_for_records() {
        let change = parse(
            br#"{"event":"screens.items.create","payload":{},"key":24,"collection":"screens"}"#,
        )
        .expect("valid");
        assert_eq!(change.keys[0].json, json!(24));
    }

    #[test]
    fn refuses_bad_bodies_with_a_reason() {
        let cases: [(&str, &str, &str); 14] = [
            ("", "malformed", "not valid JSON"),
            ("{not json", "malformed", "not valid JSON"),
            ("[1,2]", "malformed", "must be a JSON object"),
            (
                r#"{"collection":"screens","key":1}"#,
                "missing-field",
                "\"event\" is missing",
            ),
            (
                r#"{"event":5,"collection":"screens","key":1}"#,
                "malformed",
                "\"event\" must be a string",
            ),
            (
                r#"{"event":"screens.items.sort","collection":"screens","key":1}"#,
                "unknown-event",
                "unknown event",
            ),
            (
                r#"{"event":"users.create","collection":"screens","key":1}"#,
                "unknown-event",
                "unknown event",
            ),
            (
                r#"{"event":"items.create","key":1}"#,
                "missing-field",
                "\"collection\" is missing",
            ),
            (
                r#"{"event":"screens.items.create","collection":"other","key":1}"#,
                "malformed",
                "is for \"screens\"",
            ),
            (
                r#"{"event":"screens.items.update","collection":"screens","payload":{}}"#,
                "missing-field",
                "needs \"key\" or \"keys\"",
            ),
            (
                r#"{"event":"screens.items.update","collection":"screens","keys":[]}"#,
                "missing-field",
                "\"keys\" is empty",
            ),
            (
                r#"{"event":"screens.items.update","collection":"screens","keys":"1"}"#,
                "malformed",
                "\"keys\" must be an array",
            ),
            (
                r#"{"event":"screens.items.update","collection":"screens","keys":[{"id":1}]}"#,
                "malformed",
                "neither a string nor an integer",
            ),
            (
                r#"{"event":"screens.items.update","collection":"screens","keys":[1],"payload":"x"}"#,
                "malformed",
                "must be an object",
            ),
        ];
        for (body, reason, words) in cases {
            let reject = parse(body.as_bytes()).expect_err(body);
            assert_eq!(reject.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(reject.reason, reason, "{body}");
            assert!(reject.message.contains(words), "{body}: {}", reject.message);
            assert!(
                !reject.message.contains('\n'),
                "one line: {}",
                reject.message
            );
        }
    }
}
