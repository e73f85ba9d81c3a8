# Shared by bench/run.sh, bench/profile-cell.sh and tools/measure-memory.sh (source this file).

# The relay's config for a benchmark: webhook mode (no [directus]), loopback, a port
# the kernel picks, its own state dir, room for every kiosk (max_clients, and as many known
# screens, which the relay requires); every other limit at its default (kiosk_queue 256: a
# kiosk that falls further behind is cut off).
#
#   bench_relay_config STATE_DIR MAX_CLIENTS WEBHOOK_SECRET > relay.toml
bench_relay_config() {
  cat <<EOF
listen = "127.0.0.1:0"
state_dir = "$1"
shutdown_grace = "2s"

[webhook]
path = "/hooks/directus"
secret = "$3"

[[collections]]
name = "screens"

[clients]
allowed_origins = ["*"]
allow_anonymous = true
# The fleet list must hold every connected screen (config validation).
max_screens = $2

[limits]
max_clients = $2
EOF
}

# Stops the server process PID: SIGTERM, up to 5 s to exit, then SIGKILL; reaps it. Nothing
# when PID is empty.
#
#   stop_pid PID
stop_pid() {
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
