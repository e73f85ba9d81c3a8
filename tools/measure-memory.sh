#!/usr/bin/env bash
# Measures the relay's memory with tools/loadgen, one fresh relay process per scenario:
#   (a) idle, no kiosks
#   (b) 1,000 kiosks connected, idle
#   (c) 1,000 kiosks of which 200 never read, 10,000 updates of ~1 KiB at 500/s
#   (d) one kiosk sends a 10 MiB message (one frame; then (d2) in 16 KiB fragments): it must
#       be cut off without RSS jumping
# Prints a table; the raw JSON lines of loadgen are kept in $OUT/results.jsonl.
#
# Environment (all optional):
#   TOKEN=...        kiosk access token, passed as loadgen --token (the relay below also serves
#                    kiosks without one)
#   KIOSKS=1000 STALLED=200 EVENTS=10000 RATE=100 EVENT_BYTES=1KiB OVERSIZE=10MiB KEYS=0
#                    (RATE: 1,000 kiosks x 2 KB frames x 100/s is what 2 shared cores sustain;
#                    500/s overloads the relay there: 503s from the webhook and cut-off kiosks)
#   SCENARIOS="a b c d d2"  which scenarios to run
#   OUT=dir          where configs, logs and results go (default: a new temp dir)
#   NO_BUILD=1       use the binaries already in target/release
set -euo pipefail
cd "$(dirname "$0")/.."

KIOSKS=${KIOSKS:-1000}
STALLED=${STALLED:-200}
EVENTS=${EVENTS:-10000}
RATE=${RATE:-100}
SCENARIOS=" ${SCENARIOS:-a b c d d2} "
EVENT_BYTES=${EVENT_BYTES:-1KiB}
OVERSIZE=${OVERSIZE:-10MiB}
KEYS=${KEYS:-0}
TOKEN=${TOKEN:-}
OUT=${OUT:-$(mktemp -d -t relay-memory.XXXXXX)}
SECRET="loadgen-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
RELAY=target/release/directus-relay
LOADGEN=target/release/loadgen
mkdir -p "$OUT"
: >"$OUT/results.jsonl"

if [ -z "${NO_BUILD:-}" ]; then
  # Two builds, so that the loadgen's features never change how the relay itself is built.
  cargo build --release --quiet
  cargo build --release --quiet -p loadgen
fi

ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((KIOSKS + STALLED + 100)) ] ||
  echo "warning: ulimit -n is $(ulimit -n), fewer than the kiosks need" >&2

# shellcheck source=bench/lib.sh
source bench/lib.sh
RELAY_PID=""
ADDR=""
stop_relay() {
  stop_pid "$RELAY_PID"
  RELAY_PID=""
}
trap stop_relay EXIT

start_relay() { # name
  local dir="$OUT/$1"
  mkdir -p "$dir/state"
  bench_relay_config "$dir/state" $((KIOSKS + STALLED + 100)) "$SECRET" >"$dir/relay.toml"
  RUST_LOG=${RUST_LOG:-warn,directus_relay=info} "$RELAY" --config "$dir/relay.toml" >"$dir/relay.log" 2>&1 &
  RELAY_PID=$!
  ADDR=""
  for _ in $(seq 100); do
    ADDR=$(sed -n 's/.*relay listening addr=\([0-9.:]*\).*/\1/p' "$dir/relay.log" | head -1)
    [ -n "$ADDR" ] && break
    kill -0 "$RELAY_PID" 2>/dev/null || { cat "$dir/relay.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$ADDR" ] || { echo "relay did not say where it listens" >&2; exit 1; }
  sleep 1 # let it finish starting before the first sample
}

scenario() { # name, loadgen options...
  local name=$1
  shift
  [[ $SCENARIOS == *" $name "* ]] || return 0
  start_relay "$name"
  echo "--- ($name) loadgen $*" >&2
  local token=()
  [ -z "$TOKEN" ] || token=(--token "$TOKEN")
  LOADGEN_SECRET="$SECRET" "$LOADGEN" --url "http://$ADDR" --pid "$RELAY_PID" "${token[@]}" "$@" \
    2>"$OUT/$name/loadgen.txt" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); r["scenario"]=sys.argv[1]; print(json.dumps(r))' "$name" \
      >>"$OUT/results.jsonl"
  stop_relay
}

scenario a --kiosks 0 --settle 3s
scenario b --kiosks "$KIOSKS" --settle 5s
scenario c --kiosks $((KIOSKS - STALLED)) --stalled "$STALLED" --events "$EVENTS" --rate "$RATE" \
  --event-bytes "$EVENT_BYTES" --keys "$KEYS" --settle 3s
scenario d --kiosks 10 --oversize "$OVERSIZE" --settle 2s
scenario d2 --kiosks 10 --oversize "$OVERSIZE" --oversize-fragment 16KiB --settle 2s

python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def mib(kib): return "-" if kib is None else f"{kib / 1024:.1f}"
def g(d, *path):
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d
print()
print(f"{'':3} {'kiosks':>12} {'RSS MiB: start':>14} {'idle':>6} {'peak':>6} {'after':>6} {'HWM':>6}"
      f" {'relay CPU s':>11} {'loadgen CPU s':>13} {'delivered/expected':>19} {'lost':>5} {'dup':>4}"
      f" {'p50/p99/max ms':>18} {'closed by relay':>16}")
for r in rows:
    rel, load = r["relay"], r.get("load") or {}
    kiosks = f"{r['kiosks']}+{r['stalled']}s" if r["stalled"] else str(r["kiosks"])
    lat = load.get("latency_ms")
    lat = f"{lat['p50']:.1f}/{lat['p99']:.1f}/{lat['max']:.0f}" if lat else "-"
    dexp = f"{load['delivered']}/{load['expected']}" if load else "-"
    cpu = rel.get("cpu_load_s") if load else rel.get("cpu_connect_s")
    own = r["loadgen_cpu_s"].get("load") if load else r["loadgen_cpu_s"].get("total")
    closed = f"{r['closed_by_relay']['readers']}r {r['closed_by_relay']['stalled']}s"
    over = g(rel, "metrics", "kiosk_overflows_total")
    if over: closed += f" ({over:.0f} ovfl)"
    print(f"{r['scenario']:3} {kiosks:>12} {mib(rel['rss_start_kib']):>14} {mib(rel['rss_idle_kib']):>6}"
          f" {mib(rel.get('rss_peak_load_kib')):>6} {mib(rel['rss_after_kib']):>6} {mib(rel['hwm_kib']):>6}"
          f" {cpu if cpu is not None else '-':>11} {own if own is not None else '-':>13} {dexp:>19}"
          f" {load.get('lost', '-'):>5} {load.get('duplicates', '-'):>4} {lat:>18} {closed:>16}")
    print(f"    load average {r['loadavg_1m']['start']} -> {r['loadavg_1m']['end']}")
    if load:
        print(f"    readers still connected at the end: {load['readers_open_at_end']}/{load['readers']},"
              f" events they lost: {load['lost_by_open_readers']}")
        print(f"    posted {load['accepted']}/{load['events_planned']} at {load['rate_achieved']}/s"
              f" (503: {load['busy_503']}, errors: {load['post_errors']}), frames of {load['frame_bytes_avg']} B;"
              f" stalled kiosks' backlog: {r['stalled_backlog']['events']} events")
        rows, prev = load.get("timeline") or [], None
        print("    timeline: secs, relay RSS MiB, relay CPU % since last row, webhook 2xx/503, deliveries/s")
        for row in rows[4::5] if len(rows) > 5 else rows:
            t, rss, cpu_s, ok, busy, dl = row
            if prev:
                dt = t - prev[0] or 1
                cpu = f"{100 * ((cpu_s or 0) - (prev[2] or 0)) / dt:4.0f}%"
                rate = f"{(dl - prev[5]) / dt:8.0f}"
            else:
                cpu, rate = "    -", "       -"
            print(f"      {t:4}s {mib(rss):>6} {cpu} {ok:6}/{busy:<5} {rate}")
            prev = row
    o = r.get("oversize")
    if o:
        print(f"    oversize {o['bytes']} B" + (f" in {o['fragment_bytes']} B fragments" if o.get('fragment_bytes') else " in one frame")
              + f": cut off {o.get('cut_off')} ({o.get('how')}, {o.get('ms_to_cut_off')} ms);"
              f" RSS {mib(o.get('rss_before_kib'))} -> {mib(o.get('rss_after_kib'))} MiB,"
              f" HWM {mib(o.get('hwm_before_kib'))} -> {mib(o.get('hwm_after_kib'))} MiB")
    for note in r.get("notes", []):
        print(f"    note: {note}")
PY
echo "raw results: $OUT/results.jsonl" >&2
