#!/usr/bin/env bash
# Static release binaries of the directus-relay package (not the workspace's test and tool
# members) for the Raspberry Pis and x86_64, then a .deb for each (release/deb.sh).
#
#   bash release/build.sh                       # all four targets
#   bash release/build.sh aarch64-unknown-linux-musl
#   NO_DEB=1 bash release/build.sh ...          # binaries only
#
# Output: target/release-artifacts/directus-relay-<version>-<target> (stripped, static) and the
# .deb files next to them. Installs what it needs when missing: the rustup targets, rust-src
# (std is built from source for the 32-bit ARM targets and x86_64, see below) and zig +
# cargo-zigbuild in a venv under ~/.cache, so a second run only builds.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(
  aarch64-unknown-linux-musl      # Pi 3/4/5, Zero 2 W with a 64-bit OS
  armv7-unknown-linux-musleabihf  # Pi 2 and later with a 32-bit OS
  arm-unknown-linux-musleabihf    # every Pi with a 32-bit OS, including Zero/Zero W/1 (ARMv6)
  x86_64-unknown-linux-musl       # PCs, CI
)
# Built with -Zbuild-std (std compiled from source with the release profile, so at opt-level z,
# the level of Cargo.toml's "*"):
# the 32-bit ARM ones because rustup has no std for them; x86_64 because its prebuilt std
# (opt-level 3) plus ring's x86 assembly came to 4,442,864 bytes; with std from source, 4,336,152;
# without std's backtrace symbolizer 4,281,824; without unwind tables (below) 3,677,280.
BUILD_STD_TARGETS=" armv7-unknown-linux-musleabihf arm-unknown-linux-musleabihf x86_64-unknown-linux-musl "
# std's features for those: cargo's default is "panic-unwind backtrace default"; without
# "backtrace" std leaves out its backtrace symbolizer (addr2line, gimli, object, miniz_oxide,
# rustc-demangle), which finds nothing in a stripped binary anyway. BUILD_STD_FEATURES overrides.
BUILD_STD_FEATURES=${BUILD_STD_FEATURES:-panic-unwind}
# Of those, the ones without rustup's std also lack its self-contained crt objects.
NO_RUSTUP_STD=" armv7-unknown-linux-musleabihf arm-unknown-linux-musleabihf "
# rustc flags for every target. No unwind tables: with panic = "abort" nothing unwinds and,
# without std's "backtrace", nothing walks the stack; they were .eh_frame + .eh_frame_hdr, 645 KB
# of the x86_64 binary (C and assembly objects keep theirs). Debuggers and profilers still
# unwind by frame pointers (aarch64) or heuristics. No effect on aarch64 (byte-identical binary:
# its backend emits the CFI anyway, and rustup's prebuilt std brings its own). RELEASE_RUSTFLAGS
# overrides.
RELEASE_RUSTFLAGS=${RELEASE_RUSTFLAGS--C force-unwind-tables=no}
# RELEASE_CARGO_CONFIG: a TOML file handed to cargo as --config, to try another release profile
# (per-package opt-levels, lto) without editing Cargo.toml (tools/opt-level-sweep.sh).
RELEASE_CARGO_CONFIG=${RELEASE_CARGO_CONFIG:-}
# opt-level: Cargo.toml's release profile ("s" for the relay and the LTO pass, 3 for the crates
# on the delivery path, "z" for the rest, chosen by measurement: BENCHMARKS.md, "Choosing
# opt-level"); CARGO_PROFILE_RELEASE_OPT_LEVEL overrides the profile's own level for every
# target, not the per-package ones (tools/opt-level-sweep.sh sets those too).
opt_level=${CARGO_PROFILE_RELEASE_OPT_LEVEL:-$(sed -n '/^\[profile.release\]/,/^\[/s/^opt-level = "\(.*\)"$/\1/p' Cargo.toml)}
[ -z "$RELEASE_CARGO_CONFIG" ] || opt_level=$(basename "$RELEASE_CARGO_CONFIG" .toml)
# Every stripped binary must stay under this: the relay goes onto SD cards, which do not miss
# a few MB, while a Pi Zero's CPU misses every cycle (6 MiB since the files cache, the kiosk app
# and the fleet; it was 4 MiB).
MAX_BYTES=$((6 * 1024 * 1024))
JOBS=${JOBS:-2}   # two cores, shared
OUT=target/release-artifacts
TOOLS=${XDG_CACHE_HOME:-$HOME/.cache}/directus-relay-release
ZIGBUILD_PIP=(ziglang==0.17.1 cargo-zigbuild==0.24.1)

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  case " ${ALL_TARGETS[*]} " in *" $t "*) ;; *) echo "unknown target $t (known: ${ALL_TARGETS[*]})" >&2; exit 2 ;; esac
done

# --- tools ------------------------------------------------------------------------------------
need_build_std=0
for t in "${targets[@]}"; do
  case "$BUILD_STD_TARGETS" in *" $t "*) need_build_std=1 ;; esac
  case "$NO_RUSTUP_STD" in
    *" $t "*) ;;
    *) rustup target list --installed | grep -qx "$t" || rustup target add "$t" ;;
  esac
done
if [ $need_build_std = 1 ] && ! rustup component list --installed | grep -q '^rust-src'; then
  rustup component add rust-src
fi
apt_install() { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
# cargo-zigbuild finds zig through `python3 -m ziglang` when the venv's bin is first on PATH.
if [ ! -x "$TOOLS/venv/bin/cargo-zigbuild" ]; then
  mkdir -p "$TOOLS"
  command -v python3 >/dev/null || apt_install python3 python3-venv
  # Debian's python3 makes venvs only with python3-venv.
  python3 -m venv "$TOOLS/venv" 2>/dev/null || { apt_install python3-venv && rm -rf "$TOOLS/venv" && python3 -m venv "$TOOLS/venv"; }
  "$TOOLS/venv/bin/pip" install -q "${ZIGBUILD_PIP[@]}"
fi
export PATH="$TOOLS/venv/bin:$PATH"
command -v file >/dev/null || apt_install file

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || { echo "no version in Cargo.toml" >&2; exit 1; }
mkdir -p "$OUT"

# --- build ------------------------------------------------------------------------------------
rows=()
failed=0
for t in "${targets[@]}"; do
  echo "=== $t"
  start=$SECONDS
  # -Zbuild-std builds run with RUSTC_BOOTSTRAP=1, which changes the fingerprint of the host's
  # proc-macros: in a target dir of their own, they do not rebuild the others' (68 crates).
  # RELEASE_TARGET_DIR: a cargo target dir kept between runs (CI keeps one under /var/cache).
  target_dir=${RELEASE_TARGET_DIR:-target}
  case "$BUILD_STD_TARGETS" in *" $t "*) target_dir=$target_dir/build-std ;; esac
  args=(zigbuild --locked --release -j "$JOBS" -p directus-relay --bin directus-relay
    --target "$t" --target-dir "$target_dir")
  [ -z "$RELEASE_CARGO_CONFIG" ] || args+=(--config "$RELEASE_CARGO_CONFIG")
  rustflags=$RELEASE_RUSTFLAGS
  case "$NO_RUSTUP_STD" in
    # rustc's self-contained crt objects come with rustup's std; zig provides musl's.
    *" $t "*) rustflags="$rustflags -C link-self-contained=no" ;;
  esac
  # For the target's crates only (and std when built from source), not the host's build scripts.
  rustflags_var="CARGO_TARGET_$(echo "$t" | tr 'a-z-' 'A-Z_')_RUSTFLAGS=$rustflags"
  case "$BUILD_STD_TARGETS" in
    *" $t "*)
      # RUSTC_BOOTSTRAP: -Zbuild-std on stable, as BUILD-NOTES.md describes.
      env "$rustflags_var" RUSTC_BOOTSTRAP=1 cargo "${args[@]}" -Zbuild-std=std,panic_abort \
        "-Zbuild-std-features=$BUILD_STD_FEATURES"
      ;;
    *) env "$rustflags_var" cargo "${args[@]}" ;;
  esac
  secs=$((SECONDS - start))
  artifact="$OUT/directus-relay-$version-$t"
  cp "$target_dir/$t/release/directus-relay" "$artifact"
  description=$(file -b "$artifact")
  echo "$description"
  case "$description" in
    *"statically linked"*) ;;
    *) echo "FAIL: $artifact is not statically linked" >&2; failed=1 ;;
  esac
  case "$description" in
    *", stripped"*) ;;
    *) echo "FAIL: $artifact is not stripped" >&2; failed=1 ;;
  esac
  bytes=$(stat -c %s "$artifact")
  if [ "$bytes" -ge "$MAX_BYTES" ]; then
    echo "FAIL: $artifact is $bytes bytes, the limit is $MAX_BYTES (6 MiB)" >&2; failed=1
  fi
  rows+=("$(awk -v t="$t" -v o="$opt_level" -v b="$bytes" -v s="$secs" 'BEGIN { printf "%-32s %3s %9d %6.2f MiB %5ds", t, o, b, b / 1048576, s }')")
done

printf '\n%-32s %3s %9s %10s %6s\n' target opt bytes size build
printf '%s\n' "${rows[@]}"
[ $failed = 0 ] || exit 1

if [ -z "${NO_DEB:-}" ]; then
  bash release/deb.sh "${targets[@]}"
fi
