#!/usr/bin/env bash
# The release .deb under a real systemd: a Debian 12 (bookworm, the base of Raspberry Pi OS)
# virtual machine built from Debian's packages, booted with qemu-system, driven over ssh on a
# forwarded port of 127.0.0.1. Each check prints `ok N - name` or `not ok N - name` (with its
# output and, for a boot that did not finish, the serial console's tail), then a closing
# `N passed, M failed` line; the exit status is 1 when a check failed.
#
#   bash release/vm-test.sh amd64     # KVM when /dev/kvm is usable and the CPU has vmx/svm, else TCG
#   bash release/vm-test.sh arm64     # the `virt` machine under TCG (a Cortex-A72, as a Pi 4)
#
# Installs what it lacks (mmdebstrap, qemu-system-*, qemu-utils, node's socket.io-client in e2e/),
# builds the release .deb of the architecture (release/build.sh, cargo target dir
# $RELEASE_TARGET_DIR, default /var/cache/directus-relay-ci/release-target; VM_DEB=file.deb uses
# that file instead), and keeps the VM image (root filesystem, kernel, initrd, a throwaway ssh
# key) under /var/cache/directus-relay-vm/<arch>-<recipe hash>: built once (a few minutes), then
# every run boots a copy-on-write overlay of it in /tmp, so the image is never changed. A change
# to the recipe (the functions and package list below) builds a new image.
#
# Variables: VM_CPUS (2), VM_MEMORY (MiB, 1024), VM_BOOT_TIMEOUT (seconds, 90 with KVM, 900
# under TCG), VM_ACCEL (kvm or tcg; default kvm when usable), VM_TCG=0 (no KVM: skip, exit 77,
# instead of running under TCG), VM_KEEP=1 (keep the work dir).
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${1:-amd64}
case "$ARCH" in
  amd64)
    TARGET=x86_64-unknown-linux-musl QEMU=qemu-system-x86_64 QEMU_PKG=qemu-system-x86
    CONSOLE=ttyS0 KERNEL_PKG=linux-image-amd64
    ;;
  arm64)
    TARGET=aarch64-unknown-linux-musl QEMU=qemu-system-aarch64 QEMU_PKG=qemu-system-arm
    CONSOLE=ttyAMA0 KERNEL_PKG=linux-image-arm64
    ;;
  *) echo "usage: $0 amd64|arm64" >&2; exit 2 ;;
esac
SUITE=bookworm
MIRROR=${VM_MIRROR:-http://deb.debian.org/debian}
CACHE=/var/cache/directus-relay-vm
CPUS=${VM_CPUS:-2}
MEMORY=${VM_MEMORY:-1024}
# What the image holds besides the essential packages and apt: systemd as init, a kernel, sshd,
# networkd for the forwarded ports, and what the checks use inside (curl, openssl, procps).
PACKAGES=(systemd-sysv udev dbus "$KERNEL_PKG" initramfs-tools zstd openssh-server iproute2
  curl openssl procps ca-certificates)

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
WORK=$(mktemp -d /tmp/directus-relay-vm.XXXXXX)
QEMU_PID=
ACCEL_WHY=

# --- host tools -------------------------------------------------------------------------------

apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o Dpkg::Use-Pty=0 "$@"; }

# Installs Debian packages when missing. A host with qemu-utils from bookworm-backports (qemu-utils
# 10 breaks bookworm's qemu-system-common 7.2) gets qemu from backports too, through an apt
# source list of this script's own under $CACHE (/etc/apt is left alone).
install_packages() {
  apt-get update -qq
  apt_get install --no-install-recommends "$@" >/dev/null 2>"$WORK/apt.err" && return 0
  case "$(dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null)" in
    *bpo12*)
      local d=$CACHE/apt-backports
      mkdir -p "$d/lists/partial"
      printf 'deb %s %s main\n' "$MIRROR" bookworm "$MIRROR" bookworm-updates \
        "$MIRROR" bookworm-backports > "$d/sources.list"
      echo "deb http://deb.debian.org/debian-security bookworm-security main" >> "$d/sources.list"
      local o=(-o "Dir::Etc::sourcelist=$d/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::lists=$d/lists")
      apt-get "${o[@]}" update -qq
      apt_get "${o[@]}" install --no-install-recommends -t bookworm-backports "$@" >/dev/null
      ;;
    *) cat "$WORK/apt.err" >&2; return 1 ;;
  esac
}

install_tools() {
  local need=()
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  command -v "$QEMU" >/dev/null || need+=("$QEMU_PKG")
  command -v qemu-img >/dev/null || need+=(qemu-utils)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  command -v ssh >/dev/null || need+=(openssh-client)
  command -v curl >/dev/null || need+=(curl)
  command -v openssl >/dev/null || need+=(openssl)
  command -v python3 >/dev/null || need+=(python3)
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
  if [ "$ARCH" = arm64 ]; then
    # mmdebstrap runs the arm64 maintainer scripts under qemu-user, through binfmt_misc.
    command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
    command -v arch-test >/dev/null || need+=(arch-test)
  fi
  [ ${#need[@]} = 0 ] || install_packages "${need[@]}"
  if [ "$ARCH" = arm64 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64
  fi
  # The host's kiosk: the socket.io-client e2e/ pins.
  if [ ! -d e2e/node_modules/socket.io-client ]; then
    (cd e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# --- the image --------------------------------------------------------------------------------

# Everything below that decides what the image holds: its hash names the cached image.
recipe() {
  declare -f build_image customize_rootfs
  echo "$ARCH $SUITE ${PACKAGES[*]}"
}

customize_rootfs() {
  local root=$1 key=$2
  echo relay-vm > "$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 relay-vm\n' > "$root/etc/hosts"
  echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$root/etc/fstab"
  # The forwarded ports reach the guest through qemu's user network (DHCP on 10.0.2.0/24).
  cat > "$root/etc/systemd/network/10-vm.network" <<'EOF'
[Match]
Name=e*

[Network]
DHCP=ipv4
EOF
  systemctl --root="$root" enable systemd-networkd.service >/dev/null 2>&1
  # Nothing that runs by the clock during a check.
  systemctl --root="$root" mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer >/dev/null 2>&1
  install -d -m 0700 "$root/root/.ssh"
  install -m 0600 "$key.pub" "$root/root/.ssh/authorized_keys"
  # A journal kept across the reboot check.
  mkdir -p "$root/var/log/journal"
}

build_image() {
  local out=$1 root=$1/root
  mkdir -p "$root"
  ssh-keygen -q -t ed25519 -N '' -C directus-relay-vm -f "$out/id_ed25519"
  # A small initramfs with the VM's disk drivers only, set up before the kernel is installed:
  # MODULES=most copies every storage driver, which takes over half an hour under qemu-user.
  mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/hooks"
  echo MODULES=list > "$root/etc/initramfs-tools/conf.d/vm.conf"
  printf '%s\n' '#!/bin/sh' '[ "$1" = prereqs ] && exit 0' '. /usr/share/initramfs-tools/hook-functions' \
    'for m in virtio_pci virtio_blk ext4; do force_load "$m"; done' > "$root/etc/initramfs-tools/hooks/vm-disk"
  chmod 0755 "$root/etc/initramfs-tools/hooks/vm-disk"
  mmdebstrap --quiet --variant=apt --architectures="$ARCH" --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --skip=check/empty "$SUITE" "$root" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb http://deb.debian.org/debian-security $SUITE-security main"
  customize_rootfs "$root" "$out/id_ed25519"
  cp "$root"/boot/vmlinuz-* "$out/vmlinuz"
  cp "$root"/boot/initrd.img-* "$out/initrd.img"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages
  mkfs.ext4 -q -L root -d "$root" "$out/rootfs.img" 3G
  rm -rf "$root"
}

# Sets IMAGE to the cached image of this recipe, building it first when missing.
ensure_image() {
  local hash
  hash=$(recipe | sha256sum | cut -c1-12)
  IMAGE=$CACHE/$ARCH-$hash
  if [ -f "$IMAGE/ready" ]; then
    echo "image: $IMAGE (cached)"
    return
  fi
  echo "image: building $IMAGE (mmdebstrap $SUITE, ${PACKAGES[*]})"
  local start=$SECONDS tmp=$IMAGE.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp"
  # In a subshell of its own so that `set -e` holds inside (it does not in a `||` list).
  local rc=0
  set +e
  (set -e; build_image "$tmp") > "$WORK/build-image.log" 2>&1
  rc=$?
  set -e
  if [ $rc != 0 ]; then
    tail -n 40 "$WORK/build-image.log"
    echo "image build failed" >&2
    exit 1
  fi
  recipe > "$tmp/recipe"
  touch "$tmp/ready"
  # Older images of this architecture are of another recipe.
  local old
  for old in "$CACHE/$ARCH"-*; do [ "$old" = "$tmp" ] || rm -rf "$old"; done
  mv "$tmp" "$IMAGE"
  echo "image: built in $((SECONDS - start)) s"
}

# --- the VM: qemu, ssh ------------------------------------------------------------------------

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

choose_accel() {
  ACCEL=${VM_ACCEL:-}
  if [ -z "$ACCEL" ]; then
    ACCEL=tcg
    if [ "$ARCH" != amd64 ] || [ "$(uname -m)" != x86_64 ]; then
      ACCEL_WHY="no KVM for $ARCH on $(uname -m)"
    elif ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then
      ACCEL_WHY="no usable /dev/kvm"
    elif ! grep -qw -e vmx -e svm /proc/cpuinfo; then
      # A /dev/kvm without hardware virtualisation (a nested host's kvm-pvm, for one) runs only
      # guests built for it: a Debian kernel hangs before its first line.
      ACCEL_WHY="/dev/kvm is there, but the CPU has no vmx/svm (paravirtual KVM such as kvm-pvm boots no stock kernel)"
    else
      ACCEL=kvm
    fi
  fi
  if [ "$ACCEL" = kvm ]; then BOOT_TIMEOUT=${VM_BOOT_TIMEOUT:-90}; else BOOT_TIMEOUT=${VM_BOOT_TIMEOUT:-900}; fi
  # How long the relay may take to start again, on top of the unit's timers.
  case "$ARCH:$ACCEL" in arm64:tcg) START_MARGIN=30 ;; *) START_MARGIN=10 ;; esac
}

vm_start() {
  SSH_PORT=$(free_port)
  HTTP_PORT=$(free_port)
  qemu-img create -q -f qcow2 -b "$IMAGE/rootfs.img" -F raw "$WORK/disk.qcow2"
  local machine
  case "$ARCH:$ACCEL" in
    amd64:kvm) machine=(-machine q35,accel=kvm -cpu host) ;;
    amd64:tcg) machine=(-machine q35,accel=tcg -cpu max) ;;
    arm64:*) machine=(-machine virt,accel="$ACCEL" -cpu cortex-a72) ;;
  esac
  "$QEMU" "${machine[@]}" -smp "$CPUS" -m "$MEMORY" -nodefaults -display none \
    -kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initrd.img" \
    -append "root=/dev/vda rw console=$CONSOLE net.ifnames=0 systemd.show_status=1" \
    -drive file="$WORK/disk.qcow2",if=virtio,format=qcow2,cache=unsafe \
    -netdev user,id=net0,hostfwd=tcp:127.0.0.1:"$SSH_PORT"-:22,hostfwd=tcp:127.0.0.1:"$HTTP_PORT"-:8080 \
    -device virtio-net-pci,netdev=net0 -device virtio-rng-pci \
    -serial file:"$WORK/serial.log" > "$WORK/qemu.log" 2>&1 &
  QEMU_PID=$!
  echo "vm: $QEMU ($ACCEL${ACCEL_WHY:+: $ACCEL_WHY}, $CPUS vCPU, $MEMORY MiB), ssh on 127.0.0.1:$SSH_PORT, relay on 127.0.0.1:$HTTP_PORT"
}

# One ssh connection, shared by every command (ControlMaster): a new one per command costs a
# key exchange, seconds under emulation. It ends with the VM.
SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o ConnectTimeout=5 -o BatchMode=yes -o ServerAliveInterval=5 -o ServerAliveCountMax=6
  -o ControlMaster=auto -o ControlPath="$WORK/ssh-%p" -o ControlPersist=60)
vm() { ssh "${SSH_OPTS[@]}" -i "$IMAGE/id_ed25519" -p "$SSH_PORT" root@127.0.0.1 "$@"; }
vm_put() { scp -q "${SSH_OPTS[@]}" -i "$IMAGE/id_ed25519" -P "$SSH_PORT" "$1" root@127.0.0.1:"$2"; }

# How far a boot got, from the serial console.
boot_stage() {
  local log=$WORK/serial.log stage="nothing on the serial console (qemu or the firmware)"
  grep -q 'Linux version' "$log" 2>/dev/null && stage="the kernel started"
  grep -q 'Run /init\|Loading, please wait' "$log" 2>/dev/null && stage="the initramfs"
  grep -q 'Kernel panic' "$log" 2>/dev/null && { echo "a kernel panic"; return; }
  grep -q 'systemd\[1\]\|Welcome to' "$log" 2>/dev/null && stage="systemd started"
  grep -q 'Reached target.*Basic System' "$log" 2>/dev/null && stage="basic system"
  grep -q 'Started.*OpenBSD Secure Shell' "$log" 2>/dev/null && stage="sshd started"
  grep -q 'Reached target.*Multi-User' "$log" 2>/dev/null && stage="multi-user target"
  echo "$stage"
}

# Waits for sshd; on timeout says where the boot stopped and prints the console's tail.
vm_wait_ssh() {
  local deadline=$((SECONDS + BOOT_TIMEOUT)) start=$SECONDS
  while ((SECONDS < deadline)); do
    if ! kill -0 "$QEMU_PID" 2>/dev/null; then
      echo "vm: qemu exited during the boot:"; tail -n 20 "$WORK/qemu.log"; tail -n 40 "$WORK/serial.log"
      return 1
    fi
    if vm true 2>/dev/null; then
      echo "vm: ssh up after $((SECONDS - start)) s"
      return 0
    fi
    sleep 1
  done
  echo "vm: no ssh within $BOOT_TIMEOUT s; the boot stopped after: $(boot_stage). Serial console's tail:"
  tail -n 40 "$WORK/serial.log" | sed 's/^/  | /'
  return 1
}

# Powers the VM off; kills qemu when it does not end within a minute.
vm_stop() {
  [ -n "$QEMU_PID" ] || return 0
  vm true 2>/dev/null && vm systemctl poweroff >/dev/null 2>&1 || true
  local deadline=$((SECONDS + 60))
  while kill -0 "$QEMU_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
  if kill -0 "$QEMU_PID" 2>/dev/null; then
    echo "vm: no power-off within 60 s, killing qemu"
    kill "$QEMU_PID" 2>/dev/null || true
  fi
  wait "$QEMU_PID" 2>/dev/null || true
  QEMU_PID=
}

cleanup() {
  if [ -n "$QEMU_PID" ]; then kill "$QEMU_PID" 2>/dev/null || true; wait "$QEMU_PID" 2>/dev/null || true; fi
  if [ -n "${VM_KEEP:-}" ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# --- checks -----------------------------------------------------------------------------------

n=0 passed=0 failed=0
# check NAME FUNCTION: runs the function in a subshell with `set -e` (the first failing command
# fails the check and is named); its output is shown when it fails, its `note` lines always.
check() {
  local name=$1 out start=$SECONDS rc
  shift
  n=$((n + 1))
  out=$WORK/check-$n.log
  set +e
  (
    set -eE
    trap 'echo "failed: line $LINENO: $BASH_COMMAND"' ERR
    "$@"
  ) > "$out" 2>&1
  rc=$?
  set -e
  if [ $rc = 0 ]; then
    passed=$((passed + 1))
    echo "ok $n - $name ($((SECONDS - start)) s)"
    sed -n 's/^note: /#   /p' "$out"
  else
    failed=$((failed + 1))
    echo "not ok $n - $name ($((SECONDS - start)) s)"
    sed 's/^note: //; s/^/#   /' "$out"
  fi
}
note() { echo "note: $*"; }
fail() { echo "$*"; return 1; }

# Waits up to $1 seconds for `$2...` (a command) to succeed.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}
unit_is() { [ "$(vm systemctl show -P "$1" directus-relay)" = "$2" ]; }
main_pid() { vm systemctl show -P MainPID directus-relay; }
pid_changed() { local pid; pid=$(main_pid) && [ "$pid" != "$1" ] && [ "$pid" != 0 ]; }
not_boot() { [ "$(vm cat /proc/sys/kernel/random/boot_id 2>/dev/null)" != "$1" ]; }
relay_up() { unit_is ActiveState active && unit_is SubState running; }
# A kiosk on the host, through the forwarded port: the relay's epoch, seq and the keys it holds.
kiosk_view() {
  node e2e/vm-kiosk.mjs --url "${RELAY_URL:-http://127.0.0.1:$HTTP_PORT}" \
    --token "$(vm cat /etc/directus-relay/credentials/kiosk_token_screens)" --collection screens
}
webhook() {
  curl -fsS -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -H "X-Relay-Secret: $(vm cat /etc/directus-relay/credentials/webhook_secret)" \
    --data "$1" "http://127.0.0.1:$HTTP_PORT/hooks/directus"
}
journal_since() { vm journalctl -u directus-relay --no-pager -o cat --since "@$1"; }
vm_now() { vm date +%s; }

check_install() {
  vm_put "$DEB" /root/
  vm "apt-get install -y -qq /root/$(basename "$DEB") </dev/null" > "$WORK/apt-install.log" 2>&1 \
    || { cat "$WORK/apt-install.log"; return 1; }
  vm test -x /usr/bin/directus-relay
  [ "$(vm systemctl is-enabled directus-relay || true)" = disabled ] || fail "enabled on install"
  [ "$(vm systemctl is-active directus-relay || true)" = inactive ] || fail "started on install"
  note "$(vm dpkg-query -W directus-relay): installed, disabled, inactive"
}

check_enable_now() {
  # The README's credentials step, verbatim.
  vm "sh -c 'umask 077; cd /etc/directus-relay/credentials &&
    openssl rand -hex 24 > webhook_secret && openssl rand -hex 24 > kiosk_token_screens'"
  vm env CREDENTIALS_DIRECTORY=/etc/directus-relay/credentials directus-relay check-config > /dev/null
  # Type=notify: `systemctl start` returns once the relay sent READY=1.
  vm systemctl enable --now directus-relay
  relay_up
  local status
  status=$(vm systemctl status --no-pager directus-relay)
  echo "$status"
  grep -q 'Active: active (running)' <<<"$status"
  grep -q 'Status: "' <<<"$status"
  [ "$(vm systemctl is-enabled directus-relay)" = enabled ]
  note "$(grep -o 'Status: ".*"' <<<"$status")"
  curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" > /dev/null
}

check_kiosk() {
  node e2e/smoke-kiosk.mjs --url "http://127.0.0.1:$HTTP_PORT" --collection screens \
    --token "$(vm cat /etc/directus-relay/credentials/kiosk_token_screens)" \
    --secret "$(vm cat /etc/directus-relay/credentials/webhook_secret)" --timeout 60
}

# An item the later checks expect the relay to keep, saved (persist_interval is 5 s).
seed_content() {
  [ "$(webhook '{"event":"screens.items.create","collection":"screens","key":"lobby","payload":{"id":"lobby","name":"Lobby"}}')" = 202 ]
  wait_for 20 vm grep -q '"lobby"' /var/lib/directus-relay/state.json
}

check_watchdog() {
  seed_content
  local before pid t0 t1 after watchdog
  before=$(kiosk_view)
  pid=$(main_pid)
  t0=$(vm_now)
  vm kill -STOP "$pid"
  watchdog=$(vm systemctl show -P WatchdogUSec directus-relay)
  # WatchdogSec, then RestartSec=2s, then READY=1.
  wait_for 60 pid_changed "$pid"
  wait_for 30 relay_up
  t1=$(vm_now)
  journal_since "$t0" | grep -i 'watchdog timeout'
  after=$(kiosk_view)
  note "killed by the watchdog ($watchdog) and running again $((t1 - t0)) s after SIGSTOP; before: $before; after: $after"
  # WatchdogSec=30s, RestartSec=2s, and the start (slower emulated).
  ((t1 - t0 <= 30 + 2 + START_MARGIN)) || fail "took $((t1 - t0)) s"
  # The content comes back from the state file. A killed relay did not stop cleanly, so it
  # starts a new epoch (README, "The state file": screens take a snapshot, never a replay).
  grep -q '"lobby"' <<<"$after"
  journal_since "$t0" | grep -q 'did not stop cleanly'
}

check_kill9() {
  local pid t0 restarts
  pid=$(main_pid)
  restarts=$(vm systemctl show -P NRestarts directus-relay)
  t0=$(vm_now)
  vm kill -9 "$pid"
  wait_for 30 pid_changed "$pid"
  wait_for 30 relay_up
  [ "$(vm systemctl show -P NRestarts directus-relay)" -gt "$restarts" ]
  note "back after $(($(vm_now) - t0)) s, NRestarts $restarts -> $(vm systemctl show -P NRestarts directus-relay)"
  kiosk_view | grep -q '"lobby"'
}

check_config_error() {
  local t0 restarts status
  vm cp /etc/directus-relay/relay.toml /root/relay.toml.good
  vm "sed -i 's/^listen = /listne = /' /etc/directus-relay/relay.toml"
  t0=$(vm_now)
  vm systemctl restart directus-relay && fail "restart succeeded with a broken config"
  restarts=$(vm systemctl show -P NRestarts directus-relay)
  # Past RestartSec=2s: no restart.
  sleep 5
  status=$(vm systemctl show -P ExecMainStatus directus-relay)
  [ "$status" = 78 ] || fail "exit status $status, expected 78"
  [ "$(vm systemctl show -P ActiveState directus-relay)" = failed ]
  [ "$(vm systemctl show -P NRestarts directus-relay)" = "$restarts" ] || fail "restarted"
  journal_since "$t0" | grep 'listne'
  note "exit 78, not restarted: $(journal_since "$t0" | grep -m1 'listne')"
  vm cp /root/relay.toml.good /etc/directus-relay/relay.toml
  vm systemctl reset-failed directus-relay
  vm systemctl start directus-relay
  relay_up
}

served_cert() {
  openssl s_client -connect "127.0.0.1:$HTTP_PORT" -servername relay-vm </dev/null 2>/dev/null \
    | openssl x509 -noout -fingerprint -sha256 | cut -d= -f2
}
serves_cert() { [ "$(served_cert)" = "$1" ]; }

check_tls_reload() {
  local t0 pid first second expected
  # The relay reads the files as its dynamic user: copies it may read (README, "HTTPS").
  vm "set -e; mkdir -p /etc/directus-relay/tls; cd /etc/directus-relay/tls
    for n in 1 2; do openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj /CN=relay-vm-\$n -keyout key\$n.pem -out cert\$n.pem 2>/dev/null; done
    cp cert1.pem fullchain.pem; cp key1.pem privkey.pem; chmod 0644 *.pem
    printf '\n[tls]\ncert_file = \"/etc/directus-relay/tls/fullchain.pem\"\nkey_file = \"/etc/directus-relay/tls/privkey.pem\"\n' >> /etc/directus-relay/relay.toml"
  vm systemctl restart directus-relay
  relay_up
  pid=$(main_pid)
  first=$(served_cert)
  [ "$first" = "$(vm openssl x509 -in /etc/directus-relay/tls/cert1.pem -noout -fingerprint -sha256 | cut -d= -f2)" ]
  t0=$(vm_now)
  vm "cd /etc/directus-relay/tls && cp cert2.pem fullchain.pem && cp key2.pem privkey.pem"
  vm systemctl reload directus-relay
  expected=$(vm openssl x509 -in /etc/directus-relay/tls/cert2.pem -noout -fingerprint -sha256 | cut -d= -f2)
  wait_for 10 serves_cert "$expected"
  [ "$(main_pid)" = "$pid" ] || fail "the reload restarted the relay"
  note "served certificate ${first:0:14}… -> ${expected:0:14}…, same pid; $(journal_since "$t0" | grep -im1 certificate)"
  # Back to plain HTTP for the next checks.
  vm "sed -i '/^\[tls\]/,\$d' /etc/directus-relay/relay.toml; sed -i -e :a -e '/^\n*\$/{\$d;N;ba' -e '}' /etc/directus-relay/relay.toml"
  vm systemctl restart directus-relay
  relay_up
}

check_state_dir() {
  local uid owner
  # By number: the image has no libnss-systemd, so the dynamic user has no name for ps or stat.
  uid=$(vm stat -c %u "/proc/$(main_pid)")
  ((uid >= 61184 && uid <= 65519)) || fail "runs as uid $uid, not a dynamic user's"
  [ "$(vm readlink /var/lib/directus-relay)" = private/directus-relay ]
  owner=$(vm stat -c %u /var/lib/private/directus-relay /var/lib/private/directus-relay/state.json | sort -u)
  [ "$owner" = "$uid" ] || fail "owned by $owner"
  [ "$(vm stat -c %a /var/lib/private)" = 700 ]
  note "/var/lib/directus-relay -> private/directus-relay (/var/lib/private 0700), owned by the relay's dynamic uid $uid"
}

check_reboot() {
  local boot epoch_before after
  boot=$(vm cat /proc/sys/kernel/random/boot_id)
  epoch_before=$(kiosk_view)
  vm systemctl reboot || true
  # Until the old system is gone, ssh may still answer.
  wait_for 60 not_boot "$boot" || true
  vm_wait_ssh
  [ "$(vm cat /proc/sys/kernel/random/boot_id)" != "$boot" ] || fail "no reboot"
  wait_for 60 relay_up
  after=$(kiosk_view)
  grep -q '"lobby"' <<<"$after"
  # A reboot stops the relay cleanly: the epoch continues.
  [ "$(epoch_of "$after")" = "$(epoch_of "$epoch_before")" ] || fail "epoch changed: $epoch_before -> $after"
  note "after the reboot: $after"
}
epoch_of() { sed -n 's/.*"epoch":"\([^"]*\)".*/\1/p' <<<"$1"; }

check_limits() {
  local pid cg
  pid=$(main_pid)
  vm cat "/proc/$pid/limits" | grep -E 'Max open files +4096 +4096'
  cg=$(vm systemctl show -P ControlGroup directus-relay)
  [ "$(vm cat "/sys/fs/cgroup$cg/memory.max")" = $((384 * 1024 * 1024)) ]
  note "Max open files 4096/4096, memory.max $(vm cat "/sys/fs/cgroup$cg/memory.max") ($cg)"
}

check_storm() {
  local pid restarts cg t0
  pid=$(main_pid)
  restarts=$(vm systemctl show -P NRestarts directus-relay)
  cg=$(vm systemctl show -P ControlGroup directus-relay)
  t0=$(vm_now)
  python3 release/vm-storm.py --url "http://127.0.0.1:$HTTP_PORT" \
    --token "$(vm cat /etc/directus-relay/credentials/kiosk_token_screens)" \
    --secret "$(vm cat /etc/directus-relay/credentials/webhook_secret)" > "$WORK/storm.out" \
    || { cat "$WORK/storm.out"; journal_since "$t0" | tail -n 20; return 1; }
  cat "$WORK/storm.out"
  [ "$(main_pid)" = "$pid" ] || fail "the relay was restarted"
  [ "$(vm systemctl show -P NRestarts directus-relay)" = "$restarts" ]
  # And it still serves: ready, and a kiosk gets the stormed collection.
  curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" > /dev/null
  [ "$(kiosk_view | grep -o '"[0-9]*"' | wc -l)" -ge 1000 ]
  vm "grep -x 'oom_kill 0' /sys/fs/cgroup$cg/memory.events"
  ! vm journalctl -k --no-pager --since "@$t0" | grep -i 'out of memory\|oom-kill'
  ! journal_since "$t0" | grep -E 'Main process exited|Scheduled restart'
  note "$(tail -n 1 "$WORK/storm.out" 2>/dev/null)"
  note "peak memory of the unit: $(($(vm cat "/sys/fs/cgroup$cg/memory.peak") / 1048576)) MiB of $(($(vm cat "/sys/fs/cgroup$cg/memory.max") / 1048576)) MiB"
}

check_seccomp() {
  local log
  log=$(vm journalctl -u directus-relay --no-pager -o cat)
  ! grep -iE 'EPERM|Operation not permitted|os error 1\b|seccomp|SIGSYS' <<<"$log"
  ! vm journalctl -k --no-pager | grep -iE 'audit.*SECCOMP.*directus|comm="directus-relay".*syscall'
  note "$(wc -l <<<"$log") journal lines of the relay, none with EPERM"
}

check_security() {
  local score readme
  score=$(vm systemd-analyze security --no-pager directus-relay | sed -n 's/.*Overall exposure level for directus-relay.service: \([0-9.]*\).*/\1/p')
  readme=$(sed -n 's/.*(`systemd-analyze security` scores it \([0-9.]*\) .*/\1/p' README.md)
  note "systemd-analyze security on systemd $(vm systemctl --version | head -n1 | cut -d' ' -f2): $score; the README says $readme"
  [ -n "$score" ] && [ "$score" = "$readme" ]
}

# The SD card's boot partition (/boot/firmware on Raspberry Pi OS; here a folder at that path):
# a good set is imported before the relay starts, a broken one is left in place with a note.
check_sd_import() {
  local old_secret new_secret t0 card=/boot/firmware/directus-relay body
  body='{"event":"screens.items.create","collection":"screens","key":"sd","payload":{"id":"sd"}}'
  old_secret=$(vm cat /etc/directus-relay/credentials/webhook_secret)
  new_secret=$(openssl rand -hex 24)
  vm mkdir -p "$card"
  vm "{ echo 'site_name = \"sd-card-site\"'; cat /etc/directus-relay/relay.toml; } > $card/relay.toml"
  vm "printf '%s\n' $new_secret > $card/webhook_secret"
  t0=$(vm_now)
  vm systemctl restart directus-relay
  wait_for 30 relay_up
  vm journalctl -u directus-relay-import --no-pager -o cat --since "@$t0" > "$WORK/import.log"
  cat "$WORK/import.log"
  grep -q "imported /etc/directus-relay/credentials/webhook_secret" "$WORK/import.log"
  vm test ! -e "$card/webhook_secret"
  vm test ! -e "$card/relay.toml"
  vm grep -q webhook_secret "$card/IMPORTED.txt"
  [ "$(vm stat -c %a /etc/directus-relay/credentials/webhook_secret)" = 600 ]
  vm grep -q sd-card-site /etc/directus-relay/relay.toml
  vm test -f /etc/directus-relay/relay.toml.before-import
  [ "$(webhook "$body")" = 202 ] || fail "the new secret is not in use"
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -H "X-Relay-Secret: $old_secret" \
    --data "$body" "http://127.0.0.1:$HTTP_PORT/hooks/directus")" = 401 ] || fail "the old secret still works"
  note "imported relay.toml and webhook_secret from $card; the card holds only IMPORTED.txt"

  vm "printf '[webhook]\nsecrett = 1\n' > $card/relay.toml"
  t0=$(vm_now)
  vm systemctl restart directus-relay
  wait_for 30 relay_up
  [ "$(vm systemctl is-failed directus-relay-import || true)" = failed ] || fail "a broken set did not fail the import unit"
  vm test -f "$card/relay.toml"
  vm grep -q secrett "$card/NOT-IMPORTED.txt"
  vm journalctl -u directus-relay-import --no-pager -o cat --since "@$t0" | grep -q secrett
  vm grep -q sd-card-site /etc/directus-relay/relay.toml
  [ "$(webhook "$body")" = 202 ] || fail "the relay does not run with the configuration it had"
  note "a broken relay.toml is left on the card with NOT-IMPORTED.txt naming the key; the relay runs as before"
  vm rm -rf "$card"
  vm systemctl reset-failed directus-relay-import
}

check_upgrade() {
  local pid inode newer
  # The same package with a newer version: repacked, so the file on disk is a new one.
  newer=$WORK/directus-relay_${version}+vm1_$ARCH.deb
  rm -rf "$WORK/repack"
  dpkg-deb -R "$DEB" "$WORK/repack"
  sed -i "s/^Version: .*/Version: ${version}+vm1/" "$WORK/repack/DEBIAN/control"
  dpkg-deb --root-owner-group -Zxz -b "$WORK/repack" "$newer" > /dev/null
  vm "echo '# kept across upgrades' >> /etc/directus-relay/relay.toml"
  pid=$(main_pid)
  vm_put "$newer" /root/
  vm "apt-get install -y -qq /root/$(basename "$newer") </dev/null" > "$WORK/apt-upgrade.log" 2>&1 \
    || { cat "$WORK/apt-upgrade.log"; return 1; }
  [ "$(vm "dpkg-query -W -f '\${Version}' directus-relay")" = "${version}+vm1" ]
  wait_for 30 relay_up
  [ "$(main_pid)" != "$pid" ] || fail "not restarted"
  # The running binary is the installed file, not the replaced one.
  inode=$(vm stat -L -c %i /usr/bin/directus-relay)
  [ "$(vm stat -L -c %i "/proc/$(main_pid)/exe")" = "$inode" ]
  ! vm readlink "/proc/$(main_pid)/exe" | grep -q deleted
  vm grep -q '^# kept across upgrades$' /etc/directus-relay/relay.toml
  note "$(vm dpkg-query -W directus-relay): restarted (pid $pid -> $(main_pid)) onto the new file, relay.toml kept"
}

check_remove() {
  vm "apt-get remove -y -qq directus-relay </dev/null" > /dev/null 2>&1
  [ "$(vm systemctl is-active directus-relay || true)" = inactive ]
  ! vm pgrep -x directus-relay
  vm test ! -e /usr/bin/directus-relay
  vm test -f /etc/directus-relay/relay.toml
  vm test -d /var/lib/private/directus-relay
  note "stopped; binary gone; /etc/directus-relay and the state kept"
}

check_purge() {
  vm "apt-get purge -y -qq directus-relay </dev/null" > /dev/null 2>&1
  vm test ! -e /var/lib/private/directus-relay
  vm test ! -e /var/lib/directus-relay
  vm test ! -e /etc/systemd/system/multi-user.target.wants/directus-relay.service
  vm test ! -e /etc/directus-relay/relay.toml
  vm test -f /etc/directus-relay/credentials/webhook_secret
  note "state, relay.toml and the enable link gone; the credentials stay"
}

# --- main -------------------------------------------------------------------------------------

total_start=$SECONDS
choose_accel
if [ "$ACCEL" = tcg ] && [ "${VM_TCG:-1}" = 0 ]; then
  echo "SKIP: no KVM ($ACCEL_WHY) and VM_TCG=0 (no time for TCG): nothing checked"
  exit 77
fi
mkdir -p "$CACHE"
install_tools
if [ -n "${VM_DEB:-}" ]; then
  DEB=$VM_DEB
else
  RELEASE_TARGET_DIR=${RELEASE_TARGET_DIR:-/var/cache/directus-relay-ci/release-target} \
    bash release/build.sh "$TARGET" > "$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; exit 1; }
  DEB=target/release-artifacts/directus-relay_${version}_$ARCH.deb
fi
[ -f "$DEB" ] || { echo "no $DEB" >&2; exit 1; }
echo "package: $DEB"
ensure_image
boot_start=$SECONDS
vm_start
check "boot: Debian $SUITE $ARCH reaches sshd ($ACCEL)" vm_wait_ssh
echo "# booted in $((SECONDS - boot_start)) s"
if [ $failed = 0 ]; then
  check "apt install of the .deb neither starts nor enables the relay" check_install
  check "credentials as the README says, enable --now: active (running) by READY=1, status line" check_enable_now
  check "a socket.io-client kiosk on the host gets a webhook's change through the forwarded port" check_kiosk
  check "watchdog: SIGSTOP is killed and restarted within WatchdogSec, with its saved content" check_watchdog
  check "kill -9: Restart=on-failure brings it back" check_kill9
  check "a config error exits 78, is not restarted, and the journal names the key" check_config_error
  check "systemctl reload re-reads the TLS certificate" check_tls_reload
  check "state in /var/lib/directus-relay (private/) owned by the dynamic user" check_state_dir
  check "the state survives a reboot of the VM (clean stop: same epoch)" check_reboot
  check "MemoryMax and LimitNOFILE in force" check_limits
  check "a kiosk storm from the host: no restart, no OOM kill" check_storm
  check "seccomp: no EPERM in the relay's journal" check_seccomp
  check "systemd-analyze security scores what the README says" check_security
  check "configured from the SD card: a good set is imported before the relay, a broken one left with a note" check_sd_import
  check "upgrade to a newer .deb restarts onto the new binary and keeps relay.toml" check_upgrade
  check "apt remove stops it" check_remove
  check "apt purge removes its state" check_purge
fi
vm_stop
echo "$passed passed, $failed failed ($ARCH, $ACCEL, $((SECONDS - total_start)) s)"
[ $failed = 0 ]
