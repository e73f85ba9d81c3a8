//! The screens API, for the status page and an operator's scripts:
//!
//! * `GET /api/screens`: every known screen (as the status page shows them);
//! * `POST /api/screens/<device>/commands` `{"command", "args"}`: a command to one screen;
//! * `POST /api/commands` `{"command", "args", "token" | "room" | "all"}`: to many;
//! * `DELETE /api/screens/<device>`: forget a screen.
//!
//! Reading needs what the status page needs; every request that acts needs `[admin] token`,
//! which must be set: without one nothing here acts. Kiosk tokens are never accepted.

use futures_util::future::join_all;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::{Body, Shared, admin_allowed, json_response, unauthorized};
use crate::fleet::commands::{self, Request as Command};

/// The largest request body the API reads.
const MAX_BODY_BYTES: usize = 16 * 1024;

pub async fn route(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["screens"]) => {
            if !admin_allowed(&req, shared) {
                return unauthorized(error(
                    StatusCode::UNAUTHORIZED,
                    "the screens need this relay's admin token ([admin] token)",
                ));
            }
            json_response(StatusCode::OK, &shared.fleet.view())
        }
        (Method::DELETE, ["screens", device]) => {
            if let Some(refused) = may_act(&req, shared) {
                return refused;
            }
            if shared.fleet.forget(device) {
                json_response(StatusCode::OK, &json!({ "ok": true, "forgotten": device }))
            } else {
                unknown_screen()
            }
        }
        (Method::POST, ["screens", device, "commands"]) => {
            if let Some(refused) = may_act(&req, shared) {
                return refused;
            }
            let device = (*device).to_owned();
            let command = match read_command(req).await {
                Ok(command) => command,
                Err(refused) => return refused,
            };
            let Some(connections) = shared.fleet.connections(&device) else {
                return unknown_screen();
            };
            let Some(socket) = connections.first() else {
                return error(
                    StatusCode::CONFLICT,
                    "the screen is not connected; it gets no command until it is",
                );
            };
            match commands::send(socket, &command, &shared.metrics).await {
                Some(answer) => {
                    let mut body = answer.to_json();
                    body["ok"] = json!(true);
                    body["device"] = json!(device);
                    json_response(StatusCode::ACCEPTED, &body)
                }
                None => error(
                    StatusCode::CONFLICT,
                    "the screen's connection closed, or it is not reading, before the command could be sent",
                ),
            }
        }
        (Method::POST, ["commands"]) => {
            if let Some(refused) = may_act(&req, shared) {
                return refused;
            }
            let command = match read_command(req).await {
                Ok(command) => command,
                Err(refused) => return refused,
            };
            let chosen = match (&command.token, &command.room, command.all) {
                (Some(token), None, false) => shared.fleet.online_where(|t, _| t == token),
                (None, Some(room), false) => {
                    shared.fleet.online_where(|_, rooms| rooms.contains(room))
                }
                (None, None, true) => shared.fleet.online_where(|_, _| true),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "name which screens: exactly one of \"token\" (a kiosk token's name), \"room\" or \"all\": true",
                    );
                }
            };
            let command = &command;
            let sent = join_all(chosen.iter().map(|(device, socket)| async move {
                let answer = commands::send(socket, command, &shared.metrics).await;
                let mut result = answer
                    .as_ref()
                    .map_or_else(|| json!({ "acked": false }), commands::Answer::to_json);
                result["device"] = json!(device);
                result["sent"] = json!(answer.is_some());
                result
            }))
            .await;
            let acked = sent.iter().filter(|s| s["acked"] == true).count();
            json_response(
                StatusCode::ACCEPTED,
                &json!({ "ok": true, "screens": sent.len(), "acked": acked, "results": sent }),
            )
        }
        _ => error(StatusCode::NOT_FOUND, "no such API path"),
    }
}

/// `None` when the request may act; else the refusal. Acting needs `[admin] token` to be set
/// and sent as `Authorization: Bearer`.
fn may_act(req: &Request<Incoming>, shared: &Shared) -> Option<Response<Body>> {
    if shared.config.admin.token.is_none() {
        return Some(error(
            StatusCode::FORBIDDEN,
            "acting on screens needs an admin token: set [admin] token (or token_file) in the relay's config",
        ));
    }
    (!admin_allowed(req, shared)).then(|| {
        unauthorized(error(
            StatusCode::UNAUTHORIZED,
            "acting on screens needs this relay's admin token: send Authorization: Bearer <admin.token>",
        ))
    })
}

async fn read_command(req: Request<Incoming>) -> Result<Command, Response<Body>> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
    };
    let command: Command = serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("expected {{\"command\": \"reload\", \"args\": {{…}}}}: {e}"),
        )
    })?;
    command
        .check()
        .map_err(|message| error(StatusCode::BAD_REQUEST, &message))?;
    Ok(command)
}

fn unknown_screen() -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "no screen with this device id is known",
    )
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({ "ok": false, "error": message }))
}
