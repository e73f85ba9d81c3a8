#!/usr/bin/env bash
# The relay against the Node.js baseline (bench/node: socket.io 4.8 doing io.emit per change, as
# the classic Directus hook extension does), side by side in one run, a fresh server process per
# cell, driven by the same tools/loadgen:
#
#   bash bench/run.sh
#
#   cells: no kiosks (idle RSS), then N = 1,000 / 5,000 / 10,000 connected kiosks
#          x  steady (1 event/s for STEADY_SECS)  and  burst (100 events/s for 5 s),
#          events of 1 KiB (webhook body; the frame a kiosk receives is ~2.2 KB: payload and
#          record both carry it), each cell against the relay and then the Node server;
#          then for N in LAG_SIZES, lag: N kiosks, of which LAG_KIOSKS (default N/10) fall
#          behind and catch up. LAG_WARMUP events at LAG_RATE reach every kiosk first (the warm
#          sample); then LAG_RATE events/s for LAG_SECS while the lagging kiosks read nothing
#          (loadgen --stall-for LAG_SECS), then they read again and catch up (200 events behind
#          with the defaults, below the relay's kiosk_queue of 256, so nobody is cut off). Once
#          every kiosk has every event and 3 s passed: kept per lagging kiosk = (RSS after −
#          warm RSS) ÷ LAG_KIOSKS, and the same for the peak while they lagged. Updates cycle
#          over LAG_WARMUP keys, so the mirror does not grow after the warm sample.
#   per cell: RSS with N kiosks connected and idle, peak RSS (VmHWM of the fresh process),
#          p50/p99/max latency (webhook sent -> kiosk read, and from the time the schedule said
#          to send it, which counts a slow webhook answer too), delivered/lost/dup, server CPU
#          seconds during the load, server CPU microseconds per delivery, loadgen CPU (cores),
#          posting rate achieved; for lag cells also the warm RSS and the kept and peak memory
#          per lagging kiosk.
#   output: $OUT/results.jsonl (loadgen's JSON line per cell, plus "server", "cell", "phase")
#           and $OUT/table.md (the matrix, relay/Node ratios and the issue's targets), also
#           printed at the end.
#
# Environment (all optional):
#   SIZES="1000 5000 10000"  kiosk counts
#   LAG_SIZES="1000 5000"    kiosk counts of the lag cells ("" for none)
#   LAG_KIOSKS=N/10  LAG_RATE=20  LAG_SECS=10  LAG_WARMUP=20
#   STEADY_SECS=20  BURST_RATE=100  BURST_SECS=5  EVENT_BYTES=1KiB
#   POST_FOR=30              seconds after which loadgen stops posting (loadgen --post-for): a
#                            server that answers the webhook slowly holds the posters back (the
#                            Node server does, at 100/s); the rest shows as not posted
#   SERVERS="relay node"     which servers
#   OUT=dir                  default bench/out/<UTC time> (ignored by git)
#   NO_BUILD=1               use target/release and bench/node/node_modules as they are
#   BENCH_RELAY=path         another relay binary (tools/opt-level-sweep.sh), with NO_BUILD=1
#   BENCH_LOADGEN=path       another loadgen binary
#
# Needs: cargo, node >= 20 and npm (the baseline's socket.io comes from bench/node's lockfile
# with `npm ci`, as e2e/run.sh does), python3, a hard open-files limit above the largest N + 100.
# A benchmark, not a test: it does not fail on a missed target, and it is not part of .ci/run.
# The machine's other load skews it; each row keeps the load average, and the loadgen shares
# the cores with the server it measures (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-1000 5000 10000}
LAG_SIZES=${LAG_SIZES-1000 5000}
LAG_RATE=${LAG_RATE:-20}
LAG_SECS=${LAG_SECS:-10}
LAG_WARMUP=${LAG_WARMUP:-20}
STEADY_SECS=${STEADY_SECS:-20}
BURST_RATE=${BURST_RATE:-100}
BURST_SECS=${BURST_SECS:-5}
EVENT_BYTES=${EVENT_BYTES:-1KiB}
POST_FOR=${POST_FOR:-30}
SERVERS=${SERVERS:-relay node}
OUT=${OUT:-bench/out/$(date -u +%Y%m%dT%H%M%SZ)}
SECRET="bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
BENCH_RELAY=${BENCH_RELAY:-target/release/directus-relay}
LOADGEN=${BENCH_LOADGEN:-target/release/loadgen}
STARTED_AT=$(date +%s)
log() { printf '[bench %4ss] %s\n' "$(($(date +%s) - STARTED_AT))" "$*" >&2; }

mkdir -p "$OUT"
: >"$OUT/results.jsonl"

# --- what it needs ---------------------------------------------------------------------------
command -v node >/dev/null || { echo "node (>= 20) is missing: apt-get install nodejs" >&2; exit 1; }
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[ "$NODE_MAJOR" -ge 20 ] || { echo "node $(node --version) is too old; socket.io 4.8 here wants >= 20" >&2; exit 1; }
if [ -z "${NO_BUILD:-}" ]; then
  log "npm ci in bench/node (socket.io from the lockfile)"
  (cd bench/node && npm ci --no-audit --no-fund --loglevel=error)
  log "cargo build --release (relay, then loadgen: two builds so the loadgen's features never change the relay's)"
  cargo build --release --quiet -j 2
  cargo build --release --quiet -j 2 -p loadgen
fi
ulimit -n "$(ulimit -Hn)"
MAX_N=0
for n in $SIZES $LAG_SIZES; do [ "$n" -gt "$MAX_N" ] && MAX_N=$n; done
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((MAX_N + 100)) ] ||
  { echo "ulimit -n is $(ulimit -n), fewer than $((MAX_N + 100)) kiosks need" >&2; exit 1; }

{
  echo "nproc: $(nproc)"
  echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "kernel: $(uname -sr)"
  echo "memory: $(free -m | awk '/^Mem:/ {print $2 " MiB"}')"
  echo "rustc: $(rustc --version)"
  echo "node: $(node --version), socket.io $(node -p 'require("./bench/node/node_modules/socket.io/package.json").version' 2>/dev/null || echo "not installed")"
  echo "relay commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (modified)')"
  echo "relay binary: $(stat -c %s "$BENCH_RELAY" 2>/dev/null || echo '?') bytes"
  echo "ulimit -n: $(ulimit -n)"
} >"$OUT/machine.txt"
log "$(tr '\n' ';' <"$OUT/machine.txt")"

# --- servers ---------------------------------------------------------------------------------
# shellcheck source=bench/lib.sh
source bench/lib.sh
SERVER_PID=""
ADDR=""
stop_server() {
  stop_pid "$SERVER_PID"
  SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


start_server() { # server, dir, kiosks
  local server=$1 dir=$2 pattern
  mkdir -p "$dir"
  if [ "$server" = relay ]; then
    mkdir -p "$dir/state"
    bench_relay_config "$dir/state" $(($3 + 100)) "$SECRET" >"$dir/relay.toml"
    RUST_LOG=${RUST_LOG:-warn,directus_relay=info} "$BENCH_RELAY" --config "$dir/relay.toml" >"$dir/server.log" 2>&1 &
    pattern='s/.*relay listening addr=\([0-9.:]*\).*/\1/p'
  else
    RELAY_SECRET="$SECRET" node bench/node/server.mjs --port 0 >"$dir/server.log" 2>&1 &
    pattern='s/.*node-baseline listening addr=\([0-9.:]*\).*/\1/p'
  fi
  SERVER_PID=$!
  ADDR=""
  for _ in $(seq 100); do
    ADDR=$(sed -n "$pattern" "$dir/server.log" | head -1)
    [ -n "$ADDR" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$ADDR" ] || { echo "$server did not say where it listens" >&2; exit 1; }
  sleep 1 # let it finish starting before the first sample
}

cell() { # server, cell name, phase, loadgen options...
  local server=$1 name=$2 phase=$3
  shift 3
  local dir="$OUT/$name-$server"
  start_server "$server" "$dir" "${KIOSKS:-0}"
  log "$name $server (pid $SERVER_PID): loadgen $*"
  local line
  line=$(LOADGEN_SECRET="$SECRET" timeout 300 "$LOADGEN" --url "http://$ADDR" --pid "$SERVER_PID" "$@" \
    2>"$dir/loadgen.txt") || log "loadgen failed (exit $?), see $dir/loadgen.txt"
  stop_server
  [ -n "$line" ] || line='{"error":"loadgen failed"}'
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(server=sys.argv[2], cell=sys.argv[3], phase=sys.argv[4]); print(json.dumps(r))' \
    "$line" "$server" "$name" "$phase" >>"$OUT/results.jsonl"
}

# --- the matrix --------------------------------------------------------------------------------
KIOSKS=0
for server in $SERVERS; do cell "$server" idle idle --kiosks 0 --settle 3s; done
for n in $SIZES; do
  KIOSKS=$n
  for server in $SERVERS; do
    cell "$server" "steady-$n" steady --kiosks "$n" --settle 3s --rate 1 --duration "${STEADY_SECS}s" \
      --event-bytes "$EVENT_BYTES" --post-for "$((STEADY_SECS + POST_FOR))s" --drain 15s
  done
  for server in $SERVERS; do
    cell "$server" "burst-$n" burst --kiosks "$n" --settle 3s --rate "$BURST_RATE" --duration "${BURST_SECS}s" \
      --event-bytes "$EVENT_BYTES" --post-for "${POST_FOR}s" --drain 20s
  done
done
for n in $LAG_SIZES; do
  lagging=${LAG_KIOSKS:-$((n / 10))}
  KIOSKS=$n
  for server in $SERVERS; do
    cell "$server" "lag-$n" lag --kiosks "$((n - lagging))" --stalled "$lagging" --stall-for "${LAG_SECS}s" \
      --settle 3s --warmup "$LAG_WARMUP" --keys "$LAG_WARMUP" --rate "$LAG_RATE" --duration "${LAG_SECS}s" \
      --event-bytes "$EVENT_BYTES" --post-for "$((LAG_SECS + POST_FOR))s" --drain 30s
  done
done

python3 bench/report.py "$OUT/results.jsonl" "$OUT/machine.txt" >"$OUT/table.md"
cat "$OUT/table.md"
log "done: $OUT/results.jsonl, $OUT/table.md"
