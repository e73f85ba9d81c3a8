#!/usr/bin/env bash
# Runs the binary and config from each .deb — under qemu-user for the ARM ones — the way the
# unit would: `--version`, `check-config` on the shipped /etc/directus-relay/relay.toml with the
# secrets from a stand-in $CREDENTIALS_DIRECTORY, then the relay itself on a loopback port until
# /healthz and /readyz answer; then a real socket.io-client kiosk per transport (WebSocket and
# long-polling; e2e/smoke-kiosk.mjs) connects with the kiosk token (credential
# kiosk_token_screens), subscribes to the first collection of the shipped relay.toml, a Directus
# Flow webhook (X-Relay-Secret from the credential webhook_secret) creates an item there and
# each kiosk must get the matching data.create; last, a SIGTERM must end the relay with status 0
# and its log must hold no ERROR or panic.
# ARMv6 runs on an arm1176 (Pi Zero/1) and ARMv7 on a Cortex-A7 (Pi 2), so an instruction
# those boards lack fails here. Installs qemu-user-static (for ARM packages), curl and node/npm
# when missing, and socket.io-client from e2e/package-lock.json (npm ci in e2e/).
#
#   bash release/smoke.sh [file.deb...]   # default: every .deb in target/release-artifacts
set -euo pipefail
cd "$(dirname "$0")/.."

debs=("$@")
if [ ${#debs[@]} -eq 0 ]; then
  shopt -s nullglob
  debs=(target/release-artifacts/*.deb)
fi
[ ${#debs[@]} -gt 0 ] || { echo "no .deb files: run release/build.sh first" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
need_qemu=0
for deb in "${debs[@]}"; do
  case "$(dpkg-deb --field "$deb" Architecture)" in arm64 | armhf) need_qemu=1 ;; esac
done
if [ $need_qemu = 1 ] && ! command -v qemu-aarch64-static >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null
fi
need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The kiosk: the real socket.io-client, the version e2e/ pins (no browser download).
(cd e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) \
  || { echo "FAIL npm ci in e2e/ (socket.io-client for the smoke kiosk)" >&2; exit 1; }

relay_pid=
work=
cleanup() {
  [ -z "$relay_pid" ] || kill "$relay_pid" 2>/dev/null || true
  [ -z "$work" ] || rm -rf "$work"
}
trap cleanup EXIT

for deb in "${debs[@]}"; do
  echo "=== $deb"
  work=$(mktemp -d)
  dpkg-deb -x "$deb" "$work/root"
  case "$(dpkg-deb --field "$deb" Architecture):$deb" in
    arm64:*) emu=(qemu-aarch64-static -cpu cortex-a53) ;;
    armhf:*armv7*) emu=(qemu-arm-static -cpu cortex-a7) ;;
    armhf:*) emu=(qemu-arm-static -cpu arm1176) ;;
    *) emu=() ;;
  esac
  relay=("${emu[@]}" "$work/root/usr/bin/directus-relay")
  config="$work/root/etc/directus-relay/relay.toml"
  # The unit's LoadCredential= names.
  mkdir -m 0700 "$work/credentials"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/credentials/webhook_secret"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/credentials/kiosk_token_screens"
  export CREDENTIALS_DIRECTORY="$work/credentials"

  got=$("${relay[@]}" --version)
  [ "$got" = "directus-relay $version" ] || { echo "FAIL --version said: $got"; exit 1; }
  echo "  ok    --version: $got"
  "${relay[@]}" check-config --config "$config" > "$work/check-config.out" \
    || { cat "$work/check-config.out"; echo "FAIL check-config on the shipped relay.toml"; exit 1; }
  grep -q '^secret = "\*\*\*\*\*\*\*\*"$' "$work/check-config.out" \
    || { echo "FAIL check-config: no webhook secret from the credential"; exit 1; }
  echo "  ok    check-config on the shipped /etc/directus-relay/relay.toml"

  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir "$work/state"
  RELAY_LISTEN="127.0.0.1:$port" RELAY_STATE_DIR="$work/state" \
    "${relay[@]}" --config "$config" > "$work/relay.log" 2>&1 &
  relay_pid=$!
  # Waits by the clock, not by a count of tries: under qemu-user on a busy machine the relay
  # (and each curl) can take far longer to start than natively.
  ready=
  deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    if curl -fsS "http://127.0.0.1:$port/readyz" > /dev/null 2>&1; then ready=1; break; fi
    kill -0 "$relay_pid" 2>/dev/null || break
    sleep 0.2
  done
  [ -n "$ready" ] || { cat "$work/relay.log"; echo "FAIL the relay did not become ready within 60 s"; exit 1; }
  echo "  ok    serving: /healthz $(curl -fsS "http://127.0.0.1:$port/healthz"), /readyz $(curl -fsS "http://127.0.0.1:$port/readyz")"

  # A collection the shipped config relays: the first [[collections]] name.
  collection=$(awk '/^\[\[collections\]\]/ { c = 1; next } c && /^name *=/ { gsub(/^name *= *"|" *$/, ""); print; exit }' "$config")
  [ -n "$collection" ] || { echo "FAIL no [[collections]] name in the shipped $config"; exit 1; }
  node e2e/smoke-kiosk.mjs --url "http://127.0.0.1:$port" --collection "$collection" \
    --token "$(cat "$work/credentials/kiosk_token_screens")" \
    --secret "$(cat "$work/credentials/webhook_secret")" --timeout "${SMOKE_KIOSK_TIMEOUT:-60}" \
    || { echo "---- relay log"; cat "$work/relay.log"; echo "FAIL the kiosk check against $deb"; exit 1; }

  kill -TERM "$relay_pid"
  status=0
  wait "$relay_pid" || status=$?
  relay_pid=
  [ $status = 0 ] || { cat "$work/relay.log"; echo "FAIL exit status $status after SIGTERM"; exit 1; }
  echo "  ok    SIGTERM: exit 0"
  if grep -E 'panicked|ERROR' "$work/relay.log"; then
    echo "FAIL the relay logged errors (above)"; exit 1
  fi
  echo "  ok    no ERROR or panic in the relay's log"
  rm -rf "$work"
  work=
done
echo "smoke ok"
