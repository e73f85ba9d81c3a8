#!/usr/bin/env bash
# One load cell against a relay binary, with a profiler attached once every kiosk is connected
# (BENCHMARKS.md, "CPU per delivery"):
#
#   bash bench/profile-cell.sh RELAY MODE KIOSKS RATE EVENTS OUTDIR
#
#   MODE  plain      loadgen only
#         strace     strace -c -f of write/writev/sendto/sendmsg (STRACE_ALL=1: every syscall)
#         pstat      perf stat of the sendto/write/writev/futex/epoll_wait tracepoints (no slowdown)
#         perf       perf record -g -F 999
#         callgrind  the relay runs under valgrind --tool=callgrind with instrumentation off;
#                    it is switched on (callgrind_control -i on) once all kiosks are connected
#                    and off when loadgen is done, so the profile holds the load only
#   RELAY a release build; for symbols: CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
#         CARGO_PROFILE_RELEASE_STRIP=false cargo build --release
#   OUTDIR gets loadgen.json/.txt, the relay's log, ticks.txt (utime stime at connect and at
#         the end, in clock ticks), metrics.txt and the profiler's output.
# Uses target/release/loadgen (cargo build --release -p loadgen).
set -u
RELAY=$1 MODE=$2 N=$3 RATE=$4 EVENTS=$5 D=$6
LOADGEN=$(cd "$(dirname "$0")/.." && pwd)/target/release/loadgen
rm -rf $D; mkdir -p $D/state
SECRET=benchsecret0123456789
ulimit -n $(ulimit -Hn)
source "$(dirname "$0")/lib.sh"
bench_relay_config "$D/state" $((N + 100)) "$SECRET" >"$D/relay.toml"
SETTLE=3s
case $MODE in
  callgrind) SETTLE=6s; valgrind --tool=callgrind --callgrind-out-file=$D/callgrind.out --instr-atstart=no $RELAY --config $D/relay.toml >$D/server.log 2>&1 & ;;
  *) RUST_LOG=warn,directus_relay=info $RELAY --config $D/relay.toml >$D/server.log 2>&1 & ;;
esac
PID=$!
for i in $(seq 300); do ADDR=$(sed -n 's/.*relay listening addr=\([0-9.:]*\).*/\1/p' $D/server.log | head -1); [ -n "$ADDR" ] && break; sleep 0.2; done
echo "pid $PID addr $ADDR" >&2
sleep 1
LOADGEN_SECRET=$SECRET timeout 600 $LOADGEN --url http://$ADDR --pid $PID --kiosks $N --settle $SETTLE --rate $RATE --events $EVENTS --event-bytes 1KiB --drain 20s >$D/loadgen.json 2>$D/loadgen.txt &
LG=$!
conn() { curl -s http://$ADDR/metrics | awk '/^relay_kiosks_connected /{print $2}'; }
for i in $(seq 600); do c=$(conn); [ "${c:-0}" = "$N" ] && break; sleep 0.5; done
S0=$(awk '{print $14, $15}' /proc/$PID/stat)
if [ $MODE != plain ]; then
  echo "connected $(conn)" >&2
  sleep 1
  case $MODE in
    strace) if [ -n "${STRACE_ALL:-}" ]; then F=""; else F="-e trace=write,writev,sendto,sendmsg"; fi; strace -c -f $F -p $PID -o $D/strace.txt & ST=$! ;;
    pstat) perf stat -e syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait -p $PID -o $D/pstat.txt & ST=$! ;;
    perf) perf record -g -F 999 -p $PID -o $D/perf.data >/dev/null 2>&1 & ST=$! ;;
    callgrind) callgrind_control -i on $PID >/dev/null ;;
  esac
fi
wait $LG
S1=$(awk '{print $14, $15}' /proc/$PID/stat); echo "$S0 $S1" > $D/ticks.txt
curl -s http://$ADDR/metrics | grep -E '^relay_(deliveries|kiosk_overflows)' > $D/metrics.txt
case $MODE in
  strace|perf|pstat) kill -INT $ST; wait $ST ;;
  callgrind) callgrind_control -i off $PID >/dev/null ;;
esac
kill -TERM $PID; wait $PID
cat $D/metrics.txt
