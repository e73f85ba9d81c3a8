//! `directus-relay check`: connects with the configured settings and says, line by line, what
//! works and how to fix what does not.

use std::fmt::Write;

use crate::config::{Config, Mode};
use crate::upstream::directus::{Accountability, Directus, DirectusError};
use crate::upstream::heartbeat::Heartbeat;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

fn ok(what: impl Into<String>, detail: impl Into<String>) -> Line {
    Line {
        ok: true,
        what: what.into(),
        detail: detail.into(),
    }
}

fn fail(what: impl Into<String>, detail: impl Into<String>) -> Line {
    Line {
        ok: false,
        what: what.into(),
        detail: detail.into(),
    }
}

/// Runs every check; stops early only when Directus cannot be reached at all.
pub async fn run(config: &Config) -> Vec<Line> {
    let Some(directus) = &config.directus else {
        return vec![fail(
            "config",
            "no [directus] section: the relay only receives webhooks, there is nothing to check",
        )];
    };
    let mut client = match Directus::new(directus) {
        Ok(client) => client,
        Err(e) => return vec![fail("config", e)],
    };
    let mut lines = Vec::new();
    match client.ping().await {
        Ok(()) => lines.push(ok("reachable", format!("{} answers", directus.url))),
        Err(e @ DirectusError::Tls { .. }) => {
            lines.push(fail("TLS", e.to_string()));
            return lines;
        }
        Err(e) => {
            lines.push(fail("reachable", e.to_string()));
            return lines;
        }
    }
    if directus.url.scheme() == "https" {
        lines.push(ok("TLS", "certificate verified"));
    } else {
        lines.push(ok("TLS", "plain http to this machine (no TLS)"));
    }
    let info = match client.server_info().await {
        Ok(info) => {
            let version = info
                .version
                .clone()
                .unwrap_or_else(|| "unknown version".into());
            lines.push(ok("token", format!("accepted (Directus {version})")));
            info
        }
        Err(e) => {
            lines.push(fail("token", e.to_string()));
            return lines;
        }
    };
    for c in &config.collections {
        let path = format!(
            "/items/{}?limit=1&fields={}",
            url::form_urlencoded::byte_serialize(c.name.as_bytes()).collect::<String>(),
            url::form_urlencoded::byte_serialize(c.key_field.as_bytes()).collect::<String>()
        );
        let hint = format!(
            " Give the relay's user read on {}, and check the name.",
            c.name
        );
        lines.push(match client.get(&path, &hint).await {
            Ok(answer) => match answer["data"].as_array() {
                Some(items) if items.first().is_none_or(|i| i.get(&c.key_field).is_some()) => {
                    ok(format!("read {}", c.name), "readable")
                }
                _ => fail(
                    format!("read {}", c.name),
                    format!(
                        "items have no field {:?}: set collections.key_field to the primary key",
                        c.key_field
                    ),
                ),
            },
            Err(e) => fail(format!("read {}", c.name), e.to_string()),
        });
    }
    match client.newest_activity_id().await {
        Ok(id) => {
            lines.push(ok("activity", format!("readable (newest id {id})")));
            for c in &config.collections {
                let what = format!("activity of {}", c.name);
                lines.push(match client.accountability(&c.name).await {
                    Ok(Accountability::Recorded) => ok(what, "recorded"),
                    Ok(Accountability::Unknown) => ok(what, "assumed recorded; give the relay's user read on directus_collections to know"),
                    Ok(Accountability::Off) => fail(
                        what,
                        "off (accountability is null): changes show up only at each reconcile_interval; turn Activity Tracking on in the collection's settings",
                    ),
                    Err(e) => fail(what, e.to_string()),
                });
            }
        }
        Err(e) => lines.push(fail("activity", e.to_string())),
    }
    let websocket_needed = directus.mode == Mode::Websocket;
    lines.push(match (&info.websocket_path, websocket_needed) {
        (Some(path), _) => ok("websocket", format!("enabled at {path}")),
        (None, true) => fail(
            "websocket",
            "disabled: set WEBSOCKETS_ENABLED=true in Directus, or directus.mode = \"poll\"",
        ),
        (None, false) => ok("websocket", "disabled (not needed in this mode)"),
    });
    if config.assets.enabled {
        files(config, &mut client, &mut lines).await;
    }
    if let Some(collection) = &directus.heartbeat_collection {
        let what = format!("write {collection}");
        let mut heartbeat = Heartbeat::new(client, collection, &config.site_name);
        let row =
            serde_json::json!({ "upstream": "checked", "updated": crate::clock::now_rfc3339() });
        lines.push(match heartbeat.write(row).await {
            Ok(()) => ok(what, format!("the site's row {:?} is written (directus.heartbeat_collection)", config.site_name)),
            Err(e) => fail(
                what,
                format!("{e}. Create the collection (directus-relay setup-flow does) and give the relay's user create and update on it"),
            ),
        });
    }
    lines
}

/// `[assets]`: which fields of each relayed collection hold files, as the relay will find them.
async fn files(config: &Config, client: &mut Directus, lines: &mut Vec<Line>) {
    let (mut paths, undecided) = crate::assets::schema::configured(config);
    if !undecided.is_empty() {
        match crate::assets::schema::discover(client, &undecided).await {
            Ok(found) => paths.collections.extend(found.collections),
            Err(e) => {
                lines.push(fail("files", e.to_string()));
                return;
            }
        }
    }
    for (collection, line) in paths.collections.keys().zip(paths.describe()) {
        let detail = line
            .strip_prefix(&format!("{collection}: "))
            .unwrap_or(&line)
            .to_owned();
        lines.push(ok(format!("files of {collection}"), detail));
    }
}

/// The report as the operator reads it.
pub fn render(url: Option<&url::Url>, lines: &[Line]) -> String {
    let mut out = String::new();
    if let Some(url) = url {
        let _ = writeln!(out, "Directus at {url}");
    }
    let width = lines.iter().map(|l| l.what.len()).max().unwrap_or(0);
    for line in lines {
        let mark = if line.ok { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "  {mark}  {:width$}  {}", line.what, line.detail);
    }
    let failed = lines.iter().filter(|l| !l.ok).count();
    if failed == 0 {
        let _ = writeln!(out, "all {} checks passed", lines.len());
    } else {
        let _ = writeln!(out, "{failed} of {} checks failed", lines.len());
    }
    out
}
