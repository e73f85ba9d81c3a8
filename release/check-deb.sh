#!/usr/bin/env bash
# Checks each .deb from release/deb.sh against the systemd unit and the relay's defaults, with
# `dpkg-deb --info` and `dpkg-deb -c` (nothing is installed):
#   * Architecture matches the binary inside (arm64 = aarch64, armhf = 32-bit ARM hard-float
#     EABI5, amd64 = x86-64), and the binary is static; the armhf package's is ARMv6 unless it
#     is the -armv7 one;
#   * the unit's ExecStart binary and --config file are in the package, the config where the
#     unit's ConfigurationDirectory= and the relay's DEFAULT_CONFIG_PATH put it, and listed in
#     conffiles; the LoadCredential= folder exists;
#   * the maintainer scripts never start or enable the service.
#
#   bash release/check-deb.sh [file.deb...]   # default: every .deb in target/release-artifacts
set -euo pipefail
cd "$(dirname "$0")/.."

debs=("$@")
if [ ${#debs[@]} -eq 0 ]; then
  shopt -s nullglob
  debs=(target/release-artifacts/*.deb)
fi
[ ${#debs[@]} -gt 0 ] || { echo "no .deb files: run release/build.sh first" >&2; exit 1; }

command -v readelf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null; }
default_config=$(sed -n 's/^pub const DEFAULT_CONFIG_PATH: &str = "\(.*\)";$/\1/p' src/config/load.rs)
[ -n "$default_config" ] || { echo "DEFAULT_CONFIG_PATH not found in src/config/load.rs" >&2; exit 1; }

failures=0
for deb in "${debs[@]}"; do
  echo "=== $deb"
  bad() { echo "  FAIL  $*"; failures=$((failures + 1)); }
  ok() { echo "  ok    $*"; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  dpkg-deb -c "$deb" | awk '{ print $1, $6 }' | sed 's#  *\./# /#; s# /$# /#' > "$work/list"
  has() { grep -q " ${1}$" "$work/list"; }       # path as "/usr/bin/x" or "/etc/dir/"
  mode_of() { awk -v p="$1" '$2 == p { print $1 }' "$work/list"; }
  field() { dpkg-deb --field "$deb" "$1"; }

  # What the unit expects.
  dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./lib/systemd/system/directus-relay.service \
    > "$work/unit" 2>/dev/null || { bad "no /lib/systemd/system/directus-relay.service"; rm -rf "$work"; continue; }
  ok "unit /lib/systemd/system/directus-relay.service"
  exec_start=$(sed -n 's/^ExecStart=//p' "$work/unit")
  exec_bin=${exec_start%% *}
  exec_config=$(sed -n 's/.*--config \([^ ]*\).*/\1/p' <<<"$exec_start")
  config_dir=/etc/$(sed -n 's/^ConfigurationDirectory=//p' "$work/unit")

  if has "$exec_bin" && [[ $(mode_of "$exec_bin") == -rwxr-xr-x ]]; then
    ok "ExecStart binary $exec_bin (0755)"
  else
    bad "ExecStart binary $exec_bin missing or not 0755"
  fi
  if [ "$exec_config" = "$default_config" ] && [ "${exec_config%/*}" = "$config_dir" ]; then
    ok "config $exec_config = relay default = ConfigurationDirectory $config_dir"
  else
    bad "config paths disagree: ExecStart --config $exec_config, relay default $default_config, ConfigurationDirectory $config_dir"
  fi
  if has "$exec_config"; then ok "config $exec_config shipped"; else bad "config $exec_config not shipped"; fi
  if dpkg-deb --info "$deb" conffiles 2>/dev/null | grep -qx "$exec_config"; then
    ok "conffiles lists $exec_config"
  else
    bad "conffiles does not list $exec_config"
  fi
  for cred in $(sed -n 's/^LoadCredential=[^:]*:\(.*\)$/\1/p' "$work/unit"); do
    dir=${cred%/*}
    if has "$dir/" && [[ $(mode_of "$dir/") == drwx------ ]]; then
      ok "credential folder $dir/ (0700) for $cred"
    else
      bad "credential folder $dir/ missing or not 0700"
    fi
  done
  # The SD-card import unit the relay's unit wants, with the same binary.
  import_unit=/lib/systemd/system/directus-relay-import.service
  if has "$import_unit" && grep -q "^Wants=.*directus-relay-import.service" "$work/unit" &&
    dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ".$import_unit" | grep -qx "ExecStart=$exec_bin import-boot-config"; then
    ok "unit $import_unit, wanted by the relay's, runs $exec_bin import-boot-config"
  else
    bad "$import_unit missing, not wanted by the relay's unit, or not running $exec_bin import-boot-config"
  fi
  for doc in README.md copyright examples/; do
    if has "/usr/share/doc/directus-relay/$doc"; then ok "doc $doc"; else bad "no /usr/share/doc/directus-relay/$doc"; fi
  done

  # Architecture against the binary inside.
  dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ".$exec_bin" > "$work/bin"
  elf=$(file -b "$work/bin")
  arch=$(field Architecture)
  case "$elf" in
    *"ARM aarch64"*) want=arm64 ;;
    *"32-bit LSB"*" ARM, EABI5"*) want=armhf ;;
    *x86-64*) want=amd64 ;;
    *) want="unknown ($elf)" ;;
  esac
  if [ "$arch" = "$want" ]; then ok "Architecture: $arch matches the binary"; else bad "Architecture: $arch, binary wants $want"; fi
  case "$elf" in
    *"statically linked"*) ok "binary is statically linked" ;;
    *) bad "binary is not static: $elf" ;;
  esac
  if [ "$want" = armhf ]; then
    cpu=$(readelf -A "$work/bin" | sed -n 's/^ *Tag_CPU_arch: //p')
    fp=$(readelf -A "$work/bin" | sed -n 's/^ *Tag_ABI_VFP_args: //p')
    case "$deb" in *armv7*) want_cpu=v7 ;; *) want_cpu=v6 ;; esac
    # Raspberry Pi OS armhf is ARMv6 + VFPv2, hard-float calls.
    if [ "$cpu" = "$want_cpu" ] || { [ "$want_cpu" = v6 ] && [ "$cpu" = v6KZ ]; }; then
      ok "CPU $cpu, float args: ${fp:-?}"
    else
      bad "CPU arch $cpu, expected $want_cpu"
    fi
  fi

  # Never start or enable on install.
  for script in preinst postinst prerm postrm; do
    dpkg-deb --info "$deb" "$script" > "$work/$script" 2>/dev/null || continue
    if grep -Eq 'deb-systemd-invoke +start|systemctl +(start|restart|enable)|deb-systemd-helper +enable' "$work/$script"; then
      bad "$script starts or enables the service"
    fi
  done
  ok "maintainer scripts neither start nor enable the service"

  rm -rf "$work"
  trap - EXIT
done

if [ $failures -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all packages ok"
