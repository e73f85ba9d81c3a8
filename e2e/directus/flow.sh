#!/usr/bin/env bash
# Creates or updates the relay's webhook Flow in the Directus started by start.sh DIR
# (PROTOCOL.md 4.2, capture_06_flow_create.json): event trigger of type "action" on
# items.create/update/delete of screens, announcements and channels, accountability null, one
# "request" operation that POSTs {{$trigger}} to RELAY_URL with the header X-Relay-Secret.
#
#   e2e/directus/flow.sh DIR RELAY_URL SECRET
#
# Idempotent: the flow is looked up by name (FLOW_NAME, default "directus-relay") and patched when
# it exists. Prints the flow id on stdout. The flow is live as soon as this returns.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 DIR RELAY_URL SECRET" >&2; exit 2
fi
DIR=$1 RELAY_URL=$2 SECRET=$3
FLOW_NAME=${FLOW_NAME:-directus-relay}
log() { printf '[directus-flow] %s\n' "$*" >&2; }

[ -f "$DIR/env" ] || { log "no $DIR/env: run start.sh $DIR PORT first"; exit 1; }
# shellcheck disable=SC1091
. "$DIR/env"

api() { # api METHOD PATH [JSON]: admin request; prints the body, fails on a non-2xx status
  local out status
  out=$(mktemp)
  status=$(curl -s --max-time 30 -o "$out" -w '%{http_code}' -X "$1" "$DIRECTUS_URL$2" \
    -H "Authorization: Bearer $DIRECTUS_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    ${3:+--data-binary "$3"}) || status=000
  if [[ $status != 2?? ]]; then
    log "$1 $2 -> HTTP $status: $(head -c 2000 "$out")"; rm -f "$out"; return 1
  fi
  cat "$out"; rm -f "$out"
}

flow_body=$(jq -cn --arg name "$FLOW_NAME" '{
  name: $name, icon: "webhook", color: null,
  description: "POSTs every item create/update/delete to the relay",
  status: "active", trigger: "event", accountability: null,
  options: {type: "action", scope: ["items.create", "items.update", "items.delete"],
            collections: ["screens", "announcements", "channels"]}}')
op_options=$(jq -cn --arg url "$RELAY_URL" --arg secret "$SECRET" '{
  method: "POST", url: $url,
  headers: [{header: "X-Relay-Secret", value: $secret}],
  body: "{{$trigger}}"}')

name_q=$(jq -rn --arg n "$FLOW_NAME" '$n | @uri')
existing=$(api GET "/flows?filter%5Bname%5D%5B_eq%5D=$name_q&fields=id,operation,operations.id,operations.key")
count=$(jq '.data | length' <<<"$existing")
((count <= 1)) || log "warning: $count flows named \"$FLOW_NAME\"; updating the first"

if ((count == 0)); then
  flow=$(api POST /flows "$flow_body" | jq -er .data.id)
  op_id=""
  log "created flow $flow"
else
  flow=$(jq -er '.data[0].id' <<<"$existing")
  api PATCH "/flows/$flow" "$flow_body" >/dev/null
  op_id=$(jq -r '[.data[0].operations[]? | select(.key == "post_to_relay") | .id][0] // empty' <<<"$existing")
  log "updated flow $flow"
fi

if [ -n "$op_id" ]; then
  api PATCH "/operations/$op_id" "$(jq -cn --argjson o "$op_options" \
    '{name: "POST to relay", type: "request", options: $o, resolve: null, reject: null}')" >/dev/null
else
  op_id=$(api POST /operations "$(jq -cn --arg f "$flow" --argjson o "$op_options" \
    '{flow: $f, name: "POST to relay", key: "post_to_relay", type: "request",
      position_x: 19, position_y: 1, options: $o, resolve: null, reject: null}')" | jq -er .data.id)
fi
api PATCH "/flows/$flow" "$(jq -cn --arg op "$op_id" '{operation: $op}')" >/dev/null

# Read back: the flow must be active with the operation as its first step.
check=$(api GET "/flows/$flow?fields=status,operation,options,operations.options")
jq -e --arg op "$op_id" --arg url "$RELAY_URL" \
  '.data.status == "active" and .data.operation == $op
   and ([.data.operations[] | select(.options.url == $url)] | length) == 1' <<<"$check" >/dev/null \
  || { log "flow $flow did not read back as expected: $check"; exit 1; }
log "flow $flow -> POST $RELAY_URL (operation $op_id)"
echo "$flow"
