#!/usr/bin/env bash
# Measures the release profile at several opt-levels (lto, codegen-units=1, panic=abort and
# strip as in Cargo.toml): the stripped size and clean build time of each release target via
# release/build.sh, then the throughput of the x86_64 musl binary of each level with
# tools/loadgen through bench/run.sh (1,000 kiosks: a steady cell and a burst cell), ROUNDS
# times, the levels interleaved (the order turns each round) because the machine is shared.
# The numbers for BENCHMARKS.md, "Choosing opt-level".
#
#   bash tools/opt-level-sweep.sh                 # build, then bench
#   PHASES=build bash tools/opt-level-sweep.sh    # or PHASES=bench (reuses $OUT/bin)
#   LEVELS="z hots hot" bash tools/opt-level-sweep.sh  # release profiles from tools/opt-profiles
#
# A level is an opt-level for every crate (z s 2 3) or the name of a file in tools/opt-profiles,
# a release profile with per-package opt-levels handed to cargo as --config.
#
# Environment (all optional):
#   LEVELS="z s 2 3"  TARGETS="x86_64-unknown-linux-musl aarch64-unknown-linux-musl"
#   ROUNDS=2  KIOSKS=1000  STEADY_SECS=10  BURST_RATE=100  BURST_SECS=5
#   CACHE=~/.cache/directus-relay-opt   one cargo target dir per level, kept (a rerun is warm)
#   OUT=bench/out/opt-<UTC time>         sizes.tsv, bin/, bench runs, summary.md
set -euo pipefail
cd "$(dirname "$0")/.."

LEVELS=${LEVELS:-z s 2 3}
TARGETS=${TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl}
ROUNDS=${ROUNDS:-2}
KIOSKS=${KIOSKS:-1000}
PHASES=${PHASES:-build bench}
CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/directus-relay-opt}
OUT=${OUT:-bench/out/opt-$(date -u +%Y%m%dT%H%M%SZ)}
BENCH_TARGET=x86_64-unknown-linux-musl
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
mkdir -p "$OUT/bin"
log() { printf '[opt-sweep %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

case " $PHASES " in *" build "*)
  [ -f "$OUT/sizes.tsv" ] || printf 'level\ttarget\tbytes\tclean_build_s\n' >"$OUT/sizes.tsv"
  for level in $LEVELS; do
    for t in $TARGETS; do
      log "opt-level $level, $t"
      start=$SECONDS
      # A level with a file tools/opt-profiles/<level>.toml is that release profile (cargo
      # --config: per-package opt-levels, lto); any other is an opt-level for every crate, also
      # those Cargo.toml gives a level of their own ([profile.release.package.*]).
      profile=tools/opt-profiles/$level.toml
      if [ ! -f "$profile" ]; then
        profile=$OUT/$level.toml
        v=$level; case $v in [0-9]) ;; *) v="\"$v\"" ;; esac
        { printf '[profile.release]\nopt-level = %s\n' "$v"
          sed -n 's/^\[profile\.release\.package\.\(.*\)\]$/\1/p' Cargo.toml |
            while read -r pkg; do printf '[profile.release.package.%s]\nopt-level = %s\n' "$pkg" "$v"; done
        } >"$profile"
      fi
      RELEASE_CARGO_CONFIG=$profile RELEASE_TARGET_DIR=$CACHE/opt-$level NO_DEB=1 \
        bash release/build.sh "$t" || log "build.sh failed for $level $t (over the size limit?)"
      secs=$((SECONDS - start))
      bin="target/release-artifacts/directus-relay-$version-$t"
      cp "$bin" "$OUT/bin/directus-relay-$level-$t"
      printf '%s\t%s\t%s\t%s\n' "$level" "$t" "$(stat -c %s "$bin")" "$secs" >>"$OUT/sizes.tsv"
    done
  done
  column -t "$OUT/sizes.tsv" >&2
  ;;
esac

case " $PHASES " in *" bench "*)
  log "cargo build --release -p loadgen"
  cargo build --release --quiet -j 2 -p loadgen
  levels=($LEVELS)
  for round in $(seq "$ROUNDS"); do
    # Round 1 in the given order, round 2 reversed, and so on.
    order=("${levels[@]}")
    if [ $((round % 2)) = 0 ]; then
      order=()
      for ((i = ${#levels[@]} - 1; i >= 0; i--)); do order+=("${levels[i]}"); done
    fi
    for level in "${order[@]}"; do
      bin="$OUT/bin/directus-relay-$level-$BENCH_TARGET"
      [ -x "$bin" ] || { echo "$bin is missing: run with PHASES=build first" >&2; exit 1; }
      log "round $round, opt-level $level"
      BENCH_RELAY=$bin NO_BUILD=1 SERVERS=relay SIZES=$KIOSKS STEADY_SECS=${STEADY_SECS:-10} \
        OUT="$OUT/bench/$level-$round" bash bench/run.sh >/dev/null
    done
  done
  python3 - "$OUT" $LEVELS >"$OUT/summary.md" <<'EOF'
import json, pathlib, statistics, sys
out, levels = pathlib.Path(sys.argv[1]), sys.argv[2:]
cells = {}
for f in sorted(out.glob("bench/*/results.jsonl")):
    level = f.parent.name.rsplit("-", 1)[0]
    for line in f.read_text().splitlines():
        r = json.loads(line)
        load, relay = r.get("load") or {}, r.get("relay") or {}
        if r.get("phase") not in ("steady", "burst") or not load.get("delivered"):
            continue
        cells.setdefault((level, r["phase"]), []).append((
            1e6 * relay["cpu_load_s"] / load["delivered"],
            1e6 * (relay.get("cpu_load_user_s") or float("nan")) / load["delivered"],
            load["latency_ms"]["p99"],
            load["delivered"] / max(load.get("expected") or 1, 1),
            (r.get("loadavg_1m") or {}).get("end"),
        ))
def span(xs, digits):
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"
print("| opt-level | cell | runs | CPU µs/delivery, median (min–max) | of which user | p99 ms, median (min–max) | delivered | load avg |")
print("|---|---|---|---|---|---|---|---|")
for level in levels:
    for phase in ("steady", "burst"):
        rows = cells.get((level, phase), [])
        if not rows:
            print(f"| {level} | {phase} | 0 | – | – | – | – | – |")
            continue
        cpu, user, p99, share, load = zip(*rows)
        print(f"| {level} | {phase} | {len(rows)} | {span(cpu, 1)} | {span(user, 1)} | {span(p99, 1)} | "
              f"{100 * min(share):.1f}% min | {', '.join(str(l) for l in load)} |")
EOF
  cat "$OUT/summary.md"
  ;;
esac
log "done: $OUT"
