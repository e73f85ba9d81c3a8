#!/usr/bin/env bash
# Stops the Directus started by start.sh DIR: SIGTERM, wait up to 10 s, then SIGKILL.
#
#   e2e/directus/stop.sh DIR
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2; exit 2
fi
DIR=$1
PIDFILE="$DIR/directus.pid"
log() { printf '[directus-stop] %s\n' "$*" >&2; }

if [ ! -f "$PIDFILE" ]; then
  log "no $PIDFILE: not running"; exit 0
fi
PID=$(cat "$PIDFILE")
case $PID in (''|*[!0-9]*) log "bad pid file $PIDFILE"; rm -f "$PIDFILE"; exit 1;; esac

# Only signal the pid if it still is our Directus (pids get reused).
if ! kill -0 "$PID" 2>/dev/null || ! tr '\0' ' ' <"/proc/$PID/cmdline" 2>/dev/null | grep -q 'cli/run.js start'; then
  log "pid $PID is not running (or is no Directus)"; rm -f "$PIDFILE"; exit 0
fi

# start.sh runs it with setsid, so the pid is also its process group id.
signal() { kill "-$1" -- "-$PID" 2>/dev/null || kill "-$1" "$PID" 2>/dev/null || true; }

t0=$SECONDS
signal TERM
for _ in $(seq 1 100); do
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$PID" 2>/dev/null; then
  log "pid $PID still alive after 10 s: SIGKILL"
  signal KILL
  for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
fi
if kill -0 "$PID" 2>/dev/null; then
  log "pid $PID survived SIGKILL"; exit 1
fi
rm -f "$PIDFILE"
log "stopped pid $PID in $((SECONDS - t0)) s"
