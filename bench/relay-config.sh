# The relay's config for a benchmark, shared by bench/run.sh, bench/profile-cell.sh and
# tools/measure-memory.sh (source this file): webhook mode (no [directus]), loopback, a port
# the kernel picks, its own state dir, room for every kiosk; every other limit at its default
# (kiosk_queue 256: a kiosk that falls further behind is cut off).
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

[limits]
max_clients = $2
EOF
}
