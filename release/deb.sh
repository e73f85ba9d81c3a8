#!/usr/bin/env bash
# A .deb per target from the static binaries release/build.sh left in target/release-artifacts/,
# staged by hand and built with `dpkg-deb --build` (the binary is static, so there is nothing
# for cargo-deb or debhelper to work out: no shared-library dependencies, no maintainer-script
# snippets we want — the service is never started or enabled on install).
#
#   bash release/deb.sh [target...]    # default: every binary present
#
# Architecture per target. Raspberry Pi OS (32-bit) calls its ARMv6 hard-float port "armhf",
# and it runs on every Pi from the Zero/1 (ARMv6, arm1176) up; Debian's own armhf is ARMv7.
# A static binary does not care about the system's float ABI, only the CPU, so:
#   aarch64-unknown-linux-musl      arm64   directus-relay_<v>_arm64.deb
#   arm-unknown-linux-musleabihf    armhf   directus-relay_<v>_armhf.deb        (ARMv6: any Pi)
#   armv7-unknown-linux-musleabihf  armhf   directus-relay_<v>_armhf-armv7.deb  (ARMv7: Pi 2+,
#                                           and Debian/Ubuntu armhf on other boards)
#   x86_64-unknown-linux-musl       amd64   directus-relay_<v>_amd64.deb
# armel (Debian's ARMv5 soft-float port) is not built: no Pi OS uses it.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/release-artifacts
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
maintainer=${DEB_MAINTAINER:-$(git log -1 --format='%an <%ae>' 2>/dev/null || echo 'directus-relay maintainers <root@localhost>')}

deb_arch() {
  case "$1" in
    aarch64-unknown-linux-musl) echo arm64 ;;
    arm-unknown-linux-musleabihf | armv7-unknown-linux-musleabihf) echo armhf ;;
    x86_64-unknown-linux-musl) echo amd64 ;;
    *) echo "no Debian architecture for $1" >&2; return 1 ;;
  esac
}
deb_name() {
  case "$1" in
    armv7-unknown-linux-musleabihf) echo "directus-relay_${version}_armhf-armv7.deb" ;;
    *) echo "directus-relay_${version}_$(deb_arch "$1").deb" ;;
  esac
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in "$OUT"/directus-relay-"$version"-*; do
    [ -f "$f" ] && case "$f" in *.deb) ;; *) targets+=("${f##*/directus-relay-"$version"-}") ;; esac
  done
fi
[ ${#targets[@]} -gt 0 ] || { echo "no binaries in $OUT: run release/build.sh first" >&2; exit 1; }

for t in "${targets[@]}"; do
  bin="$OUT/directus-relay-$version-$t"
  [ -f "$bin" ] || { echo "$bin is missing: run release/build.sh $t" >&2; exit 1; }
  arch=$(deb_arch "$t")
  deb="$OUT/$(deb_name "$t")"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  root="$stage/root"

  install -D -m 0755 "$bin" "$root/usr/bin/directus-relay"
  install -D -m 0644 systemd/directus-relay.service "$root/lib/systemd/system/directus-relay.service"
  install -D -m 0644 systemd/directus-relay-import.service "$root/lib/systemd/system/directus-relay-import.service"
  # The example config, readable by the unit's DynamicUser; a conffile, so edits survive upgrades.
  install -D -m 0644 systemd/relay.toml "$root/etc/directus-relay/relay.toml"
  # The unit's LoadCredential= files go here; systemd reads them as root, so 0700.
  install -d -m 0700 "$root/etc/directus-relay/credentials"
  doc="$root/usr/share/doc/directus-relay"
  install -D -m 0644 README.md "$doc/README.md"
  install -d -m 0755 "$doc/examples"
  install -m 0644 examples/*.toml "$doc/examples/"
  install -m 0644 systemd/relay.toml "$doc/examples/systemd-relay.toml"
  cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: directus-relay

Files: *
License: MIT
EOF
  chmod 0644 "$doc/copyright"

  install -d -m 0755 "$root/DEBIAN"
  echo /etc/directus-relay/relay.toml > "$root/DEBIAN/conffiles"
  installed_kib=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  cat > "$root/DEBIAN/control" <<EOF
Package: directus-relay
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_kib
Section: net
Priority: optional
Description: relays Directus CMS changes to kiosk screens over Socket.IO
 One static binary that follows Directus (WebSocket, activity-log polling or
 Flow webhooks) and pushes each change to on-site screens over Socket.IO, with
 resume, snapshots, offline content and hard memory bounds.
 Built for $t.
 .
 The service is installed but neither enabled nor started: put the secrets in
 /etc/directus-relay/credentials/, edit /etc/directus-relay/relay.toml, then
 run "systemctl enable --now directus-relay".
EOF

  # Never starts or enables the service. On upgrade, a running relay is restarted onto the new
  # binary (try-restart leaves a stopped one stopped).
  cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  if [ -n "$2" ]; then
    systemctl try-restart directus-relay.service \
      || echo "directus-relay: restart failed, see: journalctl -u directus-relay" >&2
  fi
fi
exit 0
EOF
  # A removed package's binary is gone: stop the service first (not on upgrade).
  cat > "$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop directus-relay.service || true
fi
exit 0
EOF
  # Purge drops what systemd made for the unit: the enable link and the state (the saved mirror,
  # which the relay rebuilds from Directus). The credentials are the admin's and stay.
  cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -f /etc/systemd/system/multi-user.target.wants/directus-relay.service
  rm -rf /var/lib/private/directus-relay /var/lib/directus-relay
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
EOF
  chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

  dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
  echo "$deb ($(stat -c %s "$deb") bytes, Architecture: $arch)"
  rm -rf "$stage"
  trap - EXIT
done
