#!/usr/bin/env bash
# Soak: smtpgate-loadgen send -> smtpgate (policy default) -> smtpgate-loadgen sink for a
# long open-loop run, then every message the sender saw accepted must be in the sink's
# digest log, once, unaltered (SHA-256 of the body on both ends): nothing lost,
# nothing delivered twice. Prints the counts and smtpgate's RSS at the start and end.
#
# While it runs, progress.log in the work directory gets smtpgate's message and
# reactor counters every 5 s; when no message is relayed for 20 s while the sender
# runs, stall-N.txt gets each process's thread states, kernel stacks and io_uring /
# eventfd fdinfo. On failure the work directory (configs, logs, digests) is kept and
# its path printed.
#
# Usage: benches/soak.sh [DURATION] [RATE]     (defaults: 10min, 1000 msgs/s)
# Needs: cargo build --release --workspace (or SMTPGATE_BIN_DIR pointing at the binaries),
# curl.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10min} rate=${2:-1000}
bin=${SMTPGATE_BIN_DIR:-target/release}
# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_need "cargo build --release --workspace; apt-get install curl" \
  "$bin/smtpgate" "$bin/smtpgate-loadgen" curl

# Unlike the other benches, a failed soak keeps its evidence.
soak_exit() {
  local status=$?
  kill "${pids[@]}" 2>/dev/null || true
  if [ "$status" -eq 0 ]; then
    rm -rf "$work"
  else
    echo "soak failed (exit $status); logs, configs and digests kept in $work" >&2
  fi
}
trap soak_exit EXIT

"$bin/smtpgate-loadgen" sink --listen 127.0.0.1:0 --cores 1 --digest-log "$work/received" \
  >"$work/sink.out" 2>&1 & sink_pid=$!; pids+=($sink_pid)
for _ in $(seq 100); do grep -q "listening on" "$work/sink.out" && break; sleep 0.1; done
sink=$(sed -n 's/^sink: listening on //p' "$work/sink.out")
[ -n "$sink" ] || { echo "the sink did not start: $(cat "$work/sink.out")" >&2; exit 1; }

admin="127.0.0.1:$(free_port)"
cat >"$work/smtpgate.toml" <<TOML
[admin]
listen = "$admin"
[[listener]]
listen = "127.0.0.1:0"
upstream = "$sink"
policy = "default"
TOML
"$bin/smtpgate" run -c "$work/smtpgate.toml" --cores 1 >"$work/smtpgate.out" 2>"$work/smtpgate.err" &
gate_pid=$!; pids+=($gate_pid)
for _ in $(seq 100); do grep -qs "listening on" "$work/smtpgate.err" "$work/smtpgate.out" && break; sleep 0.1; done
gate=$( (grep -ho "listening on [0-9.:]*" "$work/smtpgate.err" "$work/smtpgate.out" || true) |
  sed -n '1s/listening on //p')
[ -n "$gate" ] || { echo "smtpgate did not start: $(cat "$work/smtpgate.err")" >&2; exit 1; }
# Empty when the process is gone (the report says so instead of stopping the script).
rss() { awk '/VmRSS/ {print $2}' "/proc/$gate_pid/status" 2>/dev/null || true; }
rss_start=$(rss)

# Sum of one metric's samples on smtpgate's /metrics, empty if it does not answer.
metric() {
  curl -s --max-time 5 "http://$admin/metrics" 2>/dev/null |
    awk -v name="$1" '$1 == name || index($1, name "{") == 1 { s += $2; n++ } END { if (n) print s }' ||
    true
}

# What a stalled process is doing: thread states, kernel stacks, io_uring and eventfd state.
snapshot() {
  local pid=$1 t fd
  echo "== $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
  for t in /proc/"$pid"/task/*; do
    echo "-- thread ${t##*/} $(awk '{print "state=" $3}' "$t/stat" 2>/dev/null) wchan=$(cat "$t/wchan" 2>/dev/null)"
    cat "$t/stack" 2>/dev/null || true
  done
  for fd in /proc/"$pid"/fd/*; do
    case $(readlink "$fd" 2>/dev/null) in
      *io_uring* | *eventfd*)
        echo "-- fd ${fd##*/} $(readlink "$fd")"
        cat "/proc/$pid/fdinfo/${fd##*/}" 2>/dev/null || true
        ;;
    esac
  done
}

# A failed transaction is not a loss (the sender knows it failed); what must hold is
# that each accepted message arrived once. Failures are reported below.
"$bin/smtpgate-loadgen" send --target "$gate" --cores 1 --connections 20 --rate "$rate" \
  --duration "$duration" --size 1k:60,10k:30,100k:10 --digest-log "$work/sent" \
  --json "$work/send.json" >"$work/send.out" 2>&1 & send_pid=$!; pids+=($send_pid)

stalls=0 last="" still=0
while kill -0 "$send_pid" 2>/dev/null; do
  sleep 5
  # An executor that hangs does not answer /metrics either: that counts as no progress.
  relayed=$(metric smtpgate_listener_messages_total)
  relayed=${relayed:-unanswered}
  echo "$(date -u +%T) messages=$relayed enters=$(metric smtpgate_reactor_io_uring_enters_total)" \
    "parks=$(metric smtpgate_reactor_parks_total) rss_kib=$(rss)" >>"$work/progress.log"
  if [ "$relayed" = "$last" ]; then still=$((still + 5)); else still=0; fi
  last=$relayed
  if [ "$still" -eq 20 ] && kill -0 "$send_pid" 2>/dev/null; then
    stalls=$((stalls + 1))
    echo "$(date -u +%T) no message relayed for 20 s: stall-$stalls.txt" >>"$work/progress.log"
    for p in "$send_pid" "$gate_pid" "$sink_pid"; do snapshot "$p"; done >"$work/stall-$stalls.txt" 2>&1
  fi
done
send_status=0
wait "$send_pid" || send_status=$?
rss_end=$(rss)
gate_status=running
kill -0 "$gate_pid" 2>/dev/null || { gate_status=0; wait "$gate_pid" || gate_status=$?; }

# The sink writes its digest log in batches: wait (up to 15 s) until it caught up.
touch "$work/sent" "$work/received"
for _ in $(seq 150); do
  [ "$(wc -l <"$work/received")" -ge "$(wc -l <"$work/sent")" ] && break
  sleep 0.1
done

sort "$work/sent" >"$work/sent.sorted"
sort "$work/received" >"$work/received.sorted"
sent=$(wc -l <"$work/sent.sorted") received=$(wc -l <"$work/received.sorted")
lost=$(comm -23 "$work/sent.sorted" "$work/received.sorted" | wc -l)
extra=$(comm -13 "$work/sent.sorted" "$work/received.sorted" | wc -l)
echo "soak $duration at $rate msgs/s: accepted by the sender $sent, received $received," \
  "lost $lost, extra (duplicated or unknown) $extra; smtpgate RSS ${rss_start:-?} -> ${rss_end:-gone} KiB"
if [ "$gate_status" != running ]; then
  echo "smtpgate exited before the sender finished (status $gate_status); its stderr ends:"
  tail -20 "$work/smtpgate.err"
  dmesg 2>/dev/null | tail -5 || true
fi
[ "$stalls" -eq 0 ] || echo "$stalls stall(s) with nothing relayed for 20 s: see stall-*.txt"
if [ "$send_status" -ne 0 ]; then
  echo "the sender failed or counted failed transactions (exit $send_status):"
  sed -n '/^errors:/,/^latency/p' "$work/send.out"
  tail -5 "$work/send.out"
  echo "smtpgate's log of them:"
  { grep -h "421\|result=" "$work/smtpgate.out" "$work/smtpgate.err" || true; } |
    { grep -v "result=ok" || true; } | head -20
fi
[ "$sent" -gt 0 ] && [ "$lost" -eq 0 ] && [ "$extra" -eq 0 ] && [ "$send_status" -eq 0 ] &&
  [ "$gate_status" = running ] && [ "$stalls" -eq 0 ]
