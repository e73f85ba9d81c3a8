#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs in single quotes
# Smoke test of the e2e Directus scripts against a real Directus: install (cached after the first
# run), start on a free port in a temporary directory, check the relay user is read-only and sees
# the activity log and the WebSocket settings, create the webhook Flow against a local receiver
# and check one create gives one POST with the secret, restart keeping the data, stop, clean up.
#
#   bash e2e/directus/smoke.sh        (KEEP=1 keeps the temporary directory)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
passed=0 failed=0
log() { printf '[smoke] %s\n' "$*" >&2; }
exec 3>&1 # results go to the original stdout even from checks whose output is discarded
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*" >&3; }
bad() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*" >&3; }
# check NAME CMD...: runs CMD, counts the result; never aborts the script.
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }

command -v jq >/dev/null || {
  log "installing jq"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }

WORK=$(mktemp -d /tmp/directus-smoke.XXXXXX)
DIR=$WORK/directus
RECEIVER_PID=""
finished=0
cleanup() {
  local rc=$?
  set +e
  [ -n "$RECEIVER_PID" ] && kill "$RECEIVER_PID" 2>/dev/null && wait "$RECEIVER_PID" 2>/dev/null
  if [ -f "$DIR/directus.pid" ]; then
    bash "$HERE/stop.sh" "$DIR" || true
  fi
  if ((failed > 0 || rc != 0)) && [ -f "$DIR/directus.log" ]; then
    log "last lines of $DIR/directus.log:"; tail -n 15 "$DIR/directus.log" | cut -c1-400 >&2
  fi
  if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  if ((!finished)); then
    failed=$((failed + 1))
    echo "aborted (exit $rc)"
    echo "$passed passed, $failed failed"
    exit 1
  fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- install -----------------------------------------------------------------------------------
t=$SECONDS
bash "$HERE/install.sh" >/dev/null
INSTALL_S=$((SECONDS - t))
ok "install.sh (${INSTALL_S} s)"

# --- start -------------------------------------------------------------------------------------
PORT=$(free_port)
t=$SECONDS
bash "$HERE/start.sh" "$DIR" "$PORT"
START_S=$((SECONDS - t))
# shellcheck disable=SC1091
. "$DIR/env"
check "start.sh fresh project on port $PORT (${START_S} s)" \
  test "$(curl -s --max-time 5 "$DIRECTUS_URL/server/ping")" = pong
for v in DIRECTUS_URL DIRECTUS_PORT DIRECTUS_ADMIN_TOKEN DIRECTUS_RELAY_TOKEN DIRECTUS_PID; do
  [ -n "${!v:-}" ] || bad "DIR/env lacks $v"
done

# req TOKEN METHOD PATH [JSON]: prints "STATUS BODY"
req() {
  local out status
  out=$(mktemp)
  status=$(curl -s --max-time 20 -o "$out" -w '%{http_code}' -X "$2" "$DIRECTUS_URL$3" \
    -H "Authorization: Bearer $1" -H 'Content-Type: application/json' ${4:+--data-binary "$4"}) || status=000
  printf '%s %s' "$status" "$(cat "$out")"; rm -f "$out"
}
status_of() { printf '%s' "${1%% *}"; }
body_of() { printf '%s' "${1#* }"; }

# --- the relay token is read-only ----------------------------------------------------------------
r=$(req "$DIRECTUS_RELAY_TOKEN" POST /items/screens '{"name":"by relay"}')
check "relay token cannot create a screen (HTTP $(status_of "$r"), want 403)" test "$(status_of "$r")" = 403

r=$(req "$DIRECTUS_ADMIN_TOKEN" POST /items/screens '{"name":"Lobby"}')
check "admin token creates a screen (HTTP $(status_of "$r"), want 200)" test "$(status_of "$r")" = 200
SCREEN_ID=$(body_of "$r" | jq -r '.data.id // empty' 2>/dev/null || true)

r=$(req "$DIRECTUS_RELAY_TOKEN" GET '/activity?filter%5Bcollection%5D%5B_eq%5D=screens&sort=-id&limit=1')
check "relay token sees the create in /activity (HTTP $(status_of "$r"))" \
  jq -e --arg id "$SCREEN_ID" '.data[0].action == "create" and .data[0].item == $id' <<<"$(body_of "$r")" >/dev/null

r=$(req "$DIRECTUS_RELAY_TOKEN" GET /server/info)
check "relay token: /server/info has websocket enabled and version 12.4.0" \
  jq -e '.data.websocket != false and .data.websocket.rest.path == "/websocket" and .data.version == "12.4.0"' \
  <<<"$(body_of "$r")" >/dev/null

r=$(req "$DIRECTUS_RELAY_TOKEN" GET '/items/channels?limit=1')
check "relay token reads channels (HTTP $(status_of "$r"))" test "$(status_of "$r")" = 200
r=$(req "$DIRECTUS_RELAY_TOKEN" GET '/revisions?limit=1')
check "relay token reads revisions (HTTP $(status_of "$r"))" test "$(status_of "$r")" = 200
r=$(req "$DIRECTUS_RELAY_TOKEN" GET '/relations/announcements')
check "announcements.screen -> screens ON DELETE SET NULL" \
  jq -e '[.data[] | select(.field == "screen" and .related_collection == "screens" and .schema.on_delete == "SET NULL")] | length == 1' \
  <<<"$(body_of "$(req "$DIRECTUS_ADMIN_TOKEN" GET /relations/announcements)")" >/dev/null

# --- webhook flow ------------------------------------------------------------------------------
python3 "$HERE/webhook_receiver.py" "$WORK/receiver.port" "$WORK/hooks.jsonl" &
RECEIVER_PID=$!
for _ in $(seq 1 50); do [ -s "$WORK/receiver.port" ] && break; sleep 0.1; done
HOOK_URL="http://127.0.0.1:$(cat "$WORK/receiver.port")/hooks/directus"
SECRET=smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')

# First pointed elsewhere, then re-run: the second run must patch the same flow, not add one.
flow1=$(bash "$HERE/flow.sh" "$DIR" "http://127.0.0.1:9/nowhere" "wrong")
flow2=$(bash "$HERE/flow.sh" "$DIR" "$HOOK_URL" "$SECRET")
nflows=$(body_of "$(req "$DIRECTUS_ADMIN_TOKEN" GET '/flows?fields=id')" | jq '.data | length')
check "flow.sh is idempotent (same id, $nflows flow)" test "$flow1" = "$flow2" -a "$nflows" = 1

r=$(req "$DIRECTUS_ADMIN_TOKEN" POST /items/screens '{"name":"Hooked"}')
HOOKED_ID=$(body_of "$r" | jq -r '.data.id // empty' 2>/dev/null || true)
for _ in $(seq 1 100); do [ -s "$WORK/hooks.jsonl" ] && break; sleep 0.1; done
sleep 1 # a second POST for the same create would show up here
nhooks=$(grep -c . "$WORK/hooks.jsonl" || true)
check "one create gave one webhook POST ($nhooks)" test "$nhooks" = 1
check "webhook: POST to the path, X-Relay-Secret, screens.items.create with the new key" \
  jq -e --arg s "$SECRET" --arg id "$HOOKED_ID" '
    .method == "POST" and .path == "/hooks/directus"
    and ([.headers | to_entries[] | select(.key | ascii_downcase == "x-relay-secret") | .value] == [$s])
    and (.body | fromjson | .event == "screens.items.create" and .collection == "screens"
         and (.key | tostring) == $id and .payload.name == "Hooked")' \
  <(head -n1 "$WORK/hooks.jsonl") >/dev/null

# --- restart keeps the data --------------------------------------------------------------------
RSS_MB=$(( $(awk '/^VmRSS:/ {print $2}' "/proc/$DIRECTUS_PID/status" 2>/dev/null || echo 0) / 1024 ))
bash "$HERE/stop.sh" "$DIR"
check "stop.sh stops Directus" bash -c "! kill -0 $DIRECTUS_PID 2>/dev/null && ! curl -s --max-time 2 $DIRECTUS_URL/server/ping >/dev/null"
t=$SECONDS
bash "$HERE/start.sh" "$DIR" "$PORT"
RESTART_S=$((SECONDS - t))
# shellcheck disable=SC1091
. "$DIR/env"
r=$(req "$DIRECTUS_RELAY_TOKEN" GET '/items/screens?fields=name&sort=id')
check "restart (${RESTART_S} s) keeps the data and the tokens" \
  jq -e '[.data[].name] == ["Lobby", "Hooked"]' <<<"$(body_of "$r")" >/dev/null
: >"$WORK/hooks.jsonl"
req "$DIRECTUS_ADMIN_TOKEN" PATCH "/items/screens/$HOOKED_ID" '{"name":"Hooked again"}' >/dev/null
for _ in $(seq 1 100); do [ -s "$WORK/hooks.jsonl" ] && break; sleep 0.1; done
check "the flow still fires after the restart" \
  jq -e '.body | fromjson | .event == "screens.items.update"' <(head -n1 "$WORK/hooks.jsonl") >/dev/null

log "install ${INSTALL_S} s, fresh start+setup ${START_S} s, restart ${RESTART_S} s, Directus RSS ${RSS_MB} MB"
finished=1
echo "$passed passed, $failed failed"
((failed == 0))
