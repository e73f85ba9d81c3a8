#!/usr/bin/env bash
# End-to-end tests of directus-relay against a REAL Directus 12.4.0, in each upstream mode
# (websocket, poll, webhook — webhook last, as it leaves a Flow behind):
#
#   bash e2e/directus/run.sh            (from the repo root)
#
# Environment:
#   RELAY_BIN=path   test this binary instead of building with `cargo build --release`
#   KEEP=1           keep the work directory (Directus data and logs, relay logs)
#   E2E_MODES="websocket poll"   run only these modes (default: all three, in order)
#   E2E_ASSETS_TEST=             skip assets.test.mjs (the files cache: image field, files list,
#                                real uploads, Directus stopped, eviction)
#
# Installs what it needs (install.sh: Node 22 + Directus, cached; npm ci in e2e/ when
# socket.io-client is missing; the relay via cargo), starts one Directus on a free port in a
# temporary directory under e2e/.work/, runs e2e/directus/relay.test.mjs (which starts and
# stops the relays itself, and stops/starts Directus for the outage test), stops everything
# by PID on exit. The last line is "N passed, M failed"; the exit status is non-zero when
# anything failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
E2E_DIR="$(cd "$HERE/.." && pwd)"
REPO_ROOT="$(cd "$E2E_DIR/.." && pwd)"
STARTED_AT=$(date +%s)

log() { printf '[directus-e2e %3ss] %s\n' "$(($(date +%s) - STARTED_AT))" "$*"; }

mkdir -p "$E2E_DIR/.work"
WORK="$(mktemp -d "$E2E_DIR/.work/directus.XXXXXX")"
DDIR="$WORK/directus"
SUMMARY_PRINTED=""
TEST_PID=""

# Stops a relay the tests left running: the pid files the test writes, by PID, only if that
# pid still is a directus-relay.
stop_relays() {
  local f pid
  for f in "$WORK"/relay-*.pid; do
    [[ -f "$f" ]] || continue
    pid=$(cat "$f" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'directus-relay'; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

cleanup() {
  local rc=$?
  set +e
  if [[ -n "$TEST_PID" ]] && kill -0 "$TEST_PID" 2>/dev/null; then
    kill -TERM "$TEST_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$TEST_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$TEST_PID" 2>/dev/null
  fi
  stop_relays
  if [[ -f "$DDIR/directus.pid" ]]; then
    bash "$HERE/stop.sh" "$DDIR" >/dev/null 2>&1 || true
  fi
  if [[ $rc -ne 0 && -z "$SUMMARY_PRINTED" ]]; then
    for f in "$WORK"/relay-*.log; do
      [[ -f "$f" ]] || continue
      echo "---- $(basename "$f") (last 30 lines) ----"
      tail -n 30 "$f"
    done
    if [[ -f "$DDIR/directus.log" ]]; then
      echo "---- directus.log (last 20 lines) ----"
      tail -n 20 "$DDIR/directus.log" | cut -c1-400
    fi
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then
    echo "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  if [[ $rc -ne 0 && -z "$SUMMARY_PRINTED" ]]; then
    echo "directus e2e stopped before the tests finished (exit $rc)"
    echo "0 passed, 1 failed"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Directus (Node 22 + directus@12.4.0, cached) -------------------------------------------
log "install.sh (cached after the first run; the first install takes 5-8 minutes)"
bash "$HERE/install.sh" >/dev/null

# --- socket.io-client ------------------------------------------------------------------------
if ! (cd "$E2E_DIR" && node -e 'import("socket.io-client").then(() => process.exit(0), () => process.exit(1))') 2>/dev/null; then
  log "installing npm dependencies in e2e/ (npm ci)"
  (cd "$E2E_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

# --- Chromium from Debian, for the files test's kiosk page, only when missing ----------------
if [[ ! -x /usr/bin/chromium ]]; then
  log "installing Debian chromium (apt-get)"
  [[ $(id -u) -eq 0 ]] || { echo "/usr/bin/chromium is missing and installing it needs root: apt-get install chromium" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
fi

# --- the relay -------------------------------------------------------------------------------
if [[ -z "${RELAY_BIN:-}" ]]; then
  log "building the relay (cargo build --release)"
  (cd "$REPO_ROOT" && cargo build --release --quiet)
  RELAY_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/directus-relay"
fi
[[ -x "$RELAY_BIN" ]] || { echo "relay binary not found or not executable: $RELAY_BIN" >&2; exit 1; }
RELAY_BIN="$(cd "$(dirname "$RELAY_BIN")" && pwd)/$(basename "$RELAY_BIN")"

# --- one Directus on a free port -------------------------------------------------------------
DPORT="$(node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')"
log "starting Directus in $DDIR on port $DPORT"
bash "$HERE/start.sh" "$DDIR" "$DPORT"
log "Directus is up"

# --- the operator commands against the real Directus ------------------------------------------
# shellcheck disable=SC1091
. "$DDIR/env"
relay_cmd() { env -u RELAY_BIN "$RELAY_BIN" "$@"; }
ops_config() { # $1 = file, $2 = token
  cat >"$1" <<CONFIG
state_dir = "$WORK/ops-state"
clients.allow_anonymous = true
[webhook]
secret = "ops-check-secret-0123456789"
[directus]
url = "$DIRECTUS_URL"
token = "$2"
mode = "websocket"
[[collections]]
name = "screens"
[[collections]]
name = "announcements"
[[collections]]
name = "channels"
key_field = "slug"
CONFIG
}
ops_config "$WORK/ops.toml" "$DIRECTUS_RELAY_TOKEN"
ops_config "$WORK/ops-bad.toml" "not-the-token"
ops_passed=0
ops_failed=0
ops() { # $1 = what, then a command that must succeed
  local what=$1
  shift
  if "$@" >"$WORK/ops.out" 2>&1; then
    log "ok - $what"
    ops_passed=$((ops_passed + 1))
  else
    log "not ok - $what"
    sed 's/^/    /' "$WORK/ops.out"
    ops_failed=$((ops_failed + 1))
  fi
}
flows_named_relay() {
  curl -s -H "Authorization: Bearer $DIRECTUS_ADMIN_TOKEN" \
    "$DIRECTUS_URL/flows?filter%5Bname%5D%5B_eq%5D=directus-relay&fields=id" | jq '.data | length'
}
setup_flow() { # $1 = admin token
  DIRECTUS_ADMIN_TOKEN="$1" relay_cmd setup-flow --config "$WORK/ops.toml" \
    --relay-url http://192.0.2.10:8080/hooks/directus
}
refused_check() {
  ! relay_cmd check --config "$WORK/ops-bad.toml" >"$WORK/ops-bad.out" 2>&1 &&
    grep -q "directus.token" "$WORK/ops-bad.out"
}
ops "check: every line ok against Directus 12.4.0" relay_cmd check --config "$WORK/ops.toml"
sed 's/^/    /' "$WORK/ops.out"
ops "check: a wrong token fails, naming directus.token" refused_check
flow_says() { # $1 = token, $2 = the word the answer starts with
  local out
  out=$(setup_flow "$1") && grep -q "^$2" <<<"$out"
}
flow_refused() { ! setup_flow "$DIRECTUS_RELAY_TOKEN"; }
ops "setup-flow creates the Flow" flow_says "$DIRECTUS_ADMIN_TOKEN" created
ops "setup-flow again updates it in place" flow_says "$DIRECTUS_ADMIN_TOKEN" updated
ops "exactly one Flow named directus-relay" test "$(flows_named_relay)" = 1
ops "setup-flow refuses the relay's read-only token" flow_refused

# --- the tests -------------------------------------------------------------------------------
export E2E_DIRECTUS_DIR="$DDIR" E2E_DIRECTUS_PORT="$DPORT" E2E_WORK="$WORK" E2E_RELAY_BIN="$RELAY_BIN"
export E2E_DIRECTUS_SCRIPTS="$HERE" E2E_REPORT="$WORK/report.txt"
: >"$E2E_REPORT"
log "running the tests (modes: ${E2E_MODES:-websocket poll webhook})"
tests_rc=0
# In the background and waited for, so that the TERM/INT traps run at once.
(cd "$E2E_DIR" && exec timeout 900 node --test --test-concurrency=1 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$WORK/results.tap" \
  directus/relay.test.mjs ${E2E_ASSETS_TEST-directus/assets.test.mjs} directus/heartbeat.test.mjs) &
TEST_PID=$!
wait "$TEST_PID" || tests_rc=$?
TEST_PID=""

count() { # the number after "# <word>" in the TAP summary, 0 when absent
  local n
  n=$(sed -n "s/^# $1 \([0-9][0-9]*\)$/\1/p" "$WORK/results.tap" | tail -n 1)
  echo "${n:-0}"
}
passed=$(( $(count pass) + ops_passed ))
failed=$(( $(count fail) + $(count cancelled) + ops_failed ))
if [[ $tests_rc -ne 0 && $failed -eq 0 ]]; then
  echo "the test runner exited $tests_rc without reporting a failed test" >&2
  failed=$((failed + 1))
fi

# Nothing may be left running by the tests.
for f in "$WORK"/relay-*.pid; do
  [[ -f "$f" ]] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    log "not ok - a relay (pid $pid) was still running after the tests"
    failed=$((failed + 1))
  fi
done
stop_relays

panics=$(grep -hE 'panicked' "$WORK"/relay-*.log 2>/dev/null || true)
if [[ -n "$panics" ]]; then
  log "not ok - a relay panicked:"
  head -n 20 <<<"$panics"
  failed=$((failed + 1))
else
  log "ok - no relay panicked"
  passed=$((passed + 1))
fi

bash "$HERE/stop.sh" "$DDIR" >/dev/null 2>&1 || true

echo
echo "==== summary ===="
cat "$E2E_REPORT"
echo "directus e2e took $(($(date +%s) - STARTED_AT)) s"
SUMMARY_PRINTED=1
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
