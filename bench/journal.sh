#!/usr/bin/env bash
# What `webhook.durable = true` costs: webhooks per second and delivery latency with and without
# the journal, with 1, 4 and 16 webhook connections posting as fast as the relay answers, and the
# disk's own fsync latency for comparison.
#
#   bash bench/journal.sh
#
#   per cell: a fresh relay (webhooks alone, one kiosk reading), loadgen posting 1 KiB updates of
#   1,000 keys at a target far above what the relay takes, for SECS seconds; then from /metrics
#   the journal's fsyncs, the mean write+fsync time and the webhooks per fsync (the batch that
#   group commit shares one fsync among).
#   output: $OUT/results.jsonl and a table on stdout (BENCHMARKS.md "The webhook journal").
#
# Environment (all optional):
#   SECS=5  POSTERS="1 4 16"  RATE=20000
#   STATE_PARENT=/var/tmp     where the state directories go: put it on the disk to measure
#                             (on a Pi, the SD card: /var/lib/directus-relay's file system)
#   NO_BUILD=1                use target/release as it is
#   OUT=dir                   default bench/out/journal-<UTC time> (ignored by git)
# Needs: cargo, python3, curl. A benchmark, not a test: it fails on nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-5}
POSTERS=${POSTERS:-1 4 16}
RATE=${RATE:-20000}
STATE_PARENT=${STATE_PARENT:-/var/tmp}
OUT=${OUT:-bench/out/journal-$(date -u +%Y%m%dT%H%M%SZ)}
RELAY=target/release/directus-relay
LOADGEN=target/release/loadgen
SECRET="bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
mkdir -p "$OUT"
: >"$OUT/results.jsonl"

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -p directus-relay -p loadgen >&2
fi

# The disk's own latency: 1,000 appends of 200 bytes, each followed by fdatasync.
FSYNC_US=$(STATE_PARENT="$STATE_PARENT" python3 - <<'EOF'
import os, tempfile, time
fd, path = tempfile.mkstemp(dir=os.environ["STATE_PARENT"])
times = []
for _ in range(1000):
    t = time.perf_counter()
    os.write(fd, b"x" * 200)
    os.fdatasync(fd)
    times.append(time.perf_counter() - t)
os.close(fd); os.unlink(path)
times.sort()
print(f"{times[len(times)//2]*1e6:.0f} {times[int(len(times)*0.99)]*1e6:.0f}")
EOF
)
echo "disk: fdatasync of a 200-byte append in $STATE_PARENT: p50 ${FSYNC_US% *} µs, p99 ${FSYNC_US#* } µs" >&2

metric() { # metric TEXT NAME
  awk -v n="$2" '$1 == n { print $2 }' <<<"$1"
}

for durable in false true; do
  for posters in $POSTERS; do
    state=$(mktemp -d "$STATE_PARENT/relay-journal-bench.XXXXXX")
    cat >"$state/relay.toml" <<EOF
listen = "127.0.0.1:0"
state_dir = "$state"
[webhook]
secret = "$SECRET"
durable = $durable
[clients]
allow_anonymous = true
[limits]
hub_inbox = 4096
kiosk_queue = 65536
[[collections]]
name = "screens"
EOF
    RUST_LOG=warn,directus_relay=info "$RELAY" --config "$state/relay.toml" 2>"$state/relay.log" &
    pid=$!
    addr=""
    for _ in $(seq 100); do
      addr=$(grep -so 'addr=[0-9.:]*' "$state/relay.log" | head -1 | cut -d= -f2 || true)
      [ -n "$addr" ] && break
      sleep 0.1
    done
    [ -n "$addr" ] || { cat "$state/relay.log" >&2; kill "$pid"; exit 1; }
    line=$(LOADGEN_SECRET=$SECRET "$LOADGEN" --url "http://$addr" --kiosks 1 --rate "$RATE" \
      --duration "${SECS}s" --post-for "${SECS}s" --posters "$posters" --keys 1000 \
      --event-bytes 1KiB --settle 200ms 2>/dev/null)
    metrics=$(curl -s "http://$addr/metrics")
    kill -TERM "$pid"; wait "$pid" || true
    syncs=$(metric "$metrics" relay_journal_syncs_total)
    sync_secs=$(metric "$metrics" relay_journal_sync_seconds_total)
    python3 - "$durable" "$posters" "$syncs" "$sync_secs" "$line" >>"$OUT/results.jsonl" <<'EOF'
import json, sys
durable, posters, syncs, sync_secs, line = sys.argv[1:]
r = json.loads(line)["load"]
syncs = int(float(syncs or 0)); sync_secs = float(sync_secs or 0)
print(json.dumps({
    "durable": durable == "true", "posters": int(posters),
    "accepted": r["accepted"], "refused": r["refused"], "post_secs": r["post_secs"],
    "webhooks_per_sec": round(r["accepted"] / r["post_secs"]),
    "latency_ms": r["latency_ms"], "lost": r["lost"],
    "fsyncs": syncs,
    "fsync_ms_mean": round(sync_secs / syncs * 1000, 3) if syncs else None,
    "webhooks_per_fsync": round(r["accepted"] / syncs, 1) if syncs else None,
}))
EOF
    rm -rf "$state"
  done
done

python3 - "$OUT/results.jsonl" "$FSYNC_US" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
p50, p99 = sys.argv[2].split()
print(f"disk fdatasync (200 B append): p50 {p50} µs, p99 {p99} µs\n")
print("| durable | connections | webhooks/s | delivery p50 / p99 ms | fsyncs | write+fsync mean ms | webhooks per fsync | lost |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    lat = r["latency_ms"]
    print(f"| {'yes' if r['durable'] else 'no'} | {r['posters']} | {r['webhooks_per_sec']:,} | "
          f"{lat.get('p50')} / {lat.get('p99')} | {r['fsyncs'] or '—'} | {r['fsync_ms_mean'] or '—'} | "
          f"{r['webhooks_per_fsync'] or '—'} | {r['lost']} |")
EOF
