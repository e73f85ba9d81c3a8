#!/usr/bin/env bash
# Fetches the socket.io-client browser bundle the relay serves at /socket.io/socket.io.min.js
# (built into the binary by src/http/client_js.rs) from the npm registry, and checks it.
#
#   bash client/vendor/fetch-socket.io-client.sh          # fetch, check, write the files
#   bash client/vendor/fetch-socket.io-client.sh --check  # fetch, check, compare with the files
#
# The version is the one the end-to-end suite tests the relay with (e2e/package.json), so the
# served client is the one the relay is known to speak with. The tarball's sha512 must equal
# both the integrity recorded in e2e/package-lock.json and the one the registry publishes
# (`npm pack --json`), computed here again from the tarball's bytes. Then dist/socket.io.min.js and the
# package's LICENSE are taken from it, unchanged.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
MODE="${1:-write}"

version=$(node -e 'console.log(require(process.argv[1]).dependencies["socket.io-client"])' "$REPO_ROOT/e2e/package.json")
[[ "$version" =~ ^4\.[0-9]+\.[0-9]+$ ]] || { echo "e2e/package.json pins socket.io-client $version: expected an exact 4.x.y" >&2; exit 1; }
locked=$(node -e '
  const lock = require(process.argv[1]);
  const entry = lock.packages["node_modules/socket.io-client"];
  if (entry.version !== process.argv[2]) { console.error(`package-lock has ${entry.version}, package.json ${process.argv[2]}`); process.exit(1); }
  console.log(entry.integrity);' "$REPO_ROOT/e2e/package-lock.json" "$version")

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack "socket.io-client@$version" --json --silent >pack.json)
published=$(node -e 'console.log(require(process.argv[1])[0].integrity)' "$work/pack.json")
tarball="$work/socket.io-client-$version.tgz"
computed=$(node -e '
  const { createHash } = require("node:crypto");
  const bytes = require("node:fs").readFileSync(process.argv[1]);
  console.log("sha512-" + createHash("sha512").update(bytes).digest("base64"));' "$tarball")

echo "socket.io-client $version"
echo "  package-lock.json  $locked"
echo "  npm registry       $published"
echo "  computed           $computed"
if [[ "$computed" != "$locked" || "$computed" != "$published" ]]; then
  echo "integrity mismatch: not using this tarball" >&2
  exit 1
fi

mkdir -p "$work/x"
tar -xzf "$tarball" -C "$work/x" package/dist/socket.io.min.js package/LICENSE
head -c 200 "$work/x/package/dist/socket.io.min.js" | grep -q "Socket.IO v$version" ||
  { echo "dist/socket.io.min.js does not announce v$version" >&2; exit 1; }

if [[ "$MODE" == "--check" ]]; then
  cmp "$work/x/package/dist/socket.io.min.js" "$HERE/socket.io.min.js"
  cmp "$work/x/package/LICENSE" "$HERE/socket.io-client.LICENSE"
  grep -qx "version: $version" "$HERE/socket.io-client.version"
  grep -qx "integrity: $computed" "$HERE/socket.io-client.version"
  echo "client/vendor holds exactly socket.io-client $version's dist/socket.io.min.js and LICENSE"
else
  cp "$work/x/package/dist/socket.io.min.js" "$HERE/socket.io.min.js"
  cp "$work/x/package/LICENSE" "$HERE/socket.io-client.LICENSE"
  printf 'version: %s\nintegrity: %s\nsha256 of socket.io.min.js: %s\n' "$version" "$computed" \
    "$(sha256sum "$HERE/socket.io.min.js" | cut -d' ' -f1)" >"$HERE/socket.io-client.version"
  echo "wrote client/vendor/socket.io.min.js, socket.io-client.LICENSE, socket.io-client.version"
fi
