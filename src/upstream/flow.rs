//! `directus-relay setup-flow`: creates, or updates in place, the Directus Flow that POSTs
//! every item change of the relayed collections to the relay's webhook.

use serde_json::{Value, json};

use crate::config::Config;
use crate::upstream::directus::{Auth, Directus, DirectusError, Method};

/// The name the relay's Flow is found by.
pub const FLOW_NAME: &str = "directus-relay";

/// What `setup-flow` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created(String),
    Updated(String),
}

/// Creates `directus.heartbeat_collection` with `admin_token` unless it exists; says what it
/// did, or `None` when no heartbeat collection is configured.
pub async fn setup_heartbeat(
    config: &Config,
    admin_token: crate::config::Secret,
) -> Result<Option<String>, String> {
    let Some(directus) = &config.directus else {
        return Ok(None);
    };
    let Some(collection) = &directus.heartbeat_collection else {
        return Ok(None);
    };
    let mut client = Directus::new(directus)?.with_auth(Auth::Token(admin_token));
    let created = crate::upstream::heartbeat::ensure_collection(&mut client, collection)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(if created {
        format!(
            "created the collection {collection:?} for the site's heartbeat row; give the relay's user create and update on it"
        )
    } else {
        format!("the heartbeat collection {collection:?} exists; left as it is")
    }))
}

/// Creates or updates the Flow with `admin_token`, pointing it at `relay_url`.
pub async fn setup(
    config: &Config,
    admin_token: crate::config::Secret,
    relay_url: &url::Url,
) -> Result<Outcome, String> {
    let directus = config
        .directus
        .as_ref()
        .ok_or("setup-flow needs a [directus] section with the Directus URL")?;
    let secret = config
        .webhook
        .secret
        .as_ref()
        .ok_or("setup-flow needs webhook.secret: the Flow sends it to the relay")?;
    let mut client = Directus::new(directus)?.with_auth(Auth::Token(admin_token));
    let collections: Vec<&str> = config.collections.iter().map(|c| c.name.as_str()).collect();
    let flow_body = json!({
        "name": FLOW_NAME,
        "icon": "webhook",
        "description": "POSTs every item create/update/delete to directus-relay",
        "status": "active",
        "trigger": "event",
        "accountability": null,
        "options": {"type": "action", "scope": ["items.create", "items.update", "items.delete"], "collections": collections},
    });
    let operation_options = json!({
        "method": "POST",
        "url": relay_url.as_str(),
        "headers": [{"header": "X-Relay-Secret", "value": secret.expose()}],
        "body": "{{$trigger}}",
    });
    let explain = |e: DirectusError| {
        let mut text = e.to_string();
        if e.is_forbidden() || e.is_auth() {
            text.push_str(
                " setup-flow needs an admin token (--admin-token or DIRECTUS_ADMIN_TOKEN).",
            );
        }
        text
    };
    let filter = url::form_urlencoded::byte_serialize(
        json!({"name": {"_eq": FLOW_NAME}}).to_string().as_bytes(),
    )
    .collect::<String>();
    let found = client
        .get(
            &format!("/flows?filter={filter}&fields=id,operation,operations.id,operations.key"),
            "",
        )
        .await
        .map_err(explain)?;
    let existing = found["data"][0].clone();
    if let Some(id) = existing["id"].as_str() {
        client
            .send(Method::PATCH, &format!("/flows/{id}"), &flow_body)
            .await
            .map_err(explain)?;
        let operation = existing["operations"]
            .as_array()
            .and_then(|ops| ops.iter().find(|o| o["key"] == "post_to_relay"))
            .and_then(|o| o["id"].as_str().map(str::to_owned));
        match operation {
            Some(op) => {
                client
                    .send(
                        Method::PATCH,
                        &format!("/operations/{op}"),
                        &json!({"options": operation_options}),
                    )
                    .await
                    .map_err(explain)?;
            }
            None => add_operation(&mut client, id, &operation_options)
                .await
                .map_err(explain)?,
        }
        return Ok(Outcome::Updated(id.to_owned()));
    }
    let created = client
        .send(Method::POST, "/flows", &flow_body)
        .await
        .map_err(explain)?;
    let id = created["data"]["id"]
        .as_str()
        .ok_or("Directus did not return the new Flow's id")?
        .to_owned();
    add_operation(&mut client, &id, &operation_options)
        .await
        .map_err(explain)?;
    Ok(Outcome::Created(id))
}

/// Creates the `request` operation and makes it the Flow's first step.
async fn add_operation(
    client: &mut Directus,
    flow: &str,
    options: &Value,
) -> Result<(), DirectusError> {
    let created = client
        .send(
            Method::POST,
            "/operations",
            &json!({
                "flow": flow, "name": "POST to relay", "key": "post_to_relay", "type": "request",
                "position_x": 19, "position_y": 1, "options": options,
                "resolve": null, "reject": null,
            }),
        )
        .await?;
    let operation = created["data"]["id"].clone();
    client
        .send(
            Method::PATCH,
            &format!("/flows/{flow}"),
            &json!({ "operation": operation }),
        )
        .await?;
    Ok(())
}

/// Why Directus may refuse to call `relay_url`, for the operator.
pub fn deny_list_warning(relay_url: &url::Url) -> Option<String> {
    let local = match relay_url.host() {
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(url::Host::Domain(d)) => {
            d == "localhost" || d.ends_with(".local") || d.ends_with(".lan")
        }
        None => false,
    };
    local.then(|| format!(
        "{relay_url} is a local address. Directus refuses Flow requests to its own network interfaces and loopback by default (IMPORT_IP_DENY_LIST contains 0.0.0.0): if Directus runs on this host or network, set IMPORT_IP_DENY_LIST=169.254.169.254 in Directus's environment and restart it, or the Flow fails silently (only its run log says \"resolves to a denied IP address\")."
    ))
}
