#!/usr/bin/env bash
# Soak: smtpgate-loadgen send -> smtpgate (policy default) -> smtpgate-loadgen sink for a
# long open-loop run, then every message the sender saw accepted must be in the sink's
# digest log, once, unaltered (SHA-256 of the body on both ends): nothing lost,
# nothing delivered twice. Prints the counts and smtpgate's RSS at the start and end.
#
# Usage: benches/soak.sh [DURATION] [RATE]     (defaults: 10min, 1000 msgs/s)
# Needs: cargo build --release --workspace (or SMTPGATE_BIN_DIR pointing at the binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10min} rate=${2:-1000}
bin=${SMTPGATE_BIN_DIR:-target/release}
# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_need "cargo build --release --workspace" "$bin/smtpgate" "$bin/smtpgate-loadgen"

"$bin/smtpgate-loadgen" sink --listen 127.0.0.1:0 --cores 1 --digest-log "$work/received" \
  >"$work/sink.out" 2>&1 & pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/sink.out" && break; sleep 0.1; done
sink=$(sed -n 's/^sink: listening on //p' "$work/sink.out")
[ -n "$sink" ] || { echo "the sink did not start: $(cat "$work/sink.out")" >&2; exit 1; }

cat >"$work/smtpgate.toml" <<TOML
[[listener]]
listen = "127.0.0.1:0"
upstream = "$sink"
policy = "default"
TOML
"$bin/smtpgate" run -c "$work/smtpgate.toml" --cores 1 >"$work/smtpgate.out" 2>"$work/smtpgate.err" &
gate_pid=$!; pids+=($gate_pid)
for _ in $(seq 100); do grep -q "listening on" "$work/smtpgate.err" "$work/smtpgate.out" && break; sleep 0.1; done
gate=$(grep -ho "listening on [0-9.:]*" "$work/smtpgate.err" "$work/smtpgate.out" | head -1 | cut -d' ' -f3)
[ -n "$gate" ] || { echo "smtpgate did not start: $(cat "$work/smtpgate.err")" >&2; exit 1; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$gate_pid/status"; }
rss_start=$(rss)

# A failed transaction is not a loss (the sender knows it failed); what must hold is
# that each accepted message arrived once. Failures are reported below.
send_status=0
"$bin/smtpgate-loadgen" send --target "$gate" --cores 1 --connections 20 --rate "$rate" \
  --duration "$duration" --size 1k:60,10k:30,100k:10 --digest-log "$work/sent" \
  --json "$work/send.json" >"$work/send.out" 2>&1 || send_status=$?
rss_end=$(rss)
# The sink writes its digest log in batches: wait (up to 15 s) until it caught up.
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
  "lost $lost, extra (duplicated or unknown) $extra; smtpgate RSS ${rss_start} -> ${rss_end} KiB"
if [ "$send_status" -ne 0 ]; then
  echo "the sender counted failed transactions (exit $send_status):"
  sed -n '/^errors:/,/^latency/p' "$work/send.out"
  echo "smtpgate's log of them:"
  grep -h "421\|result=" "$work/smtpgate.out" "$work/smtpgate.err" | grep -v "result=ok" | head -20
fi
[ "$sent" -gt 0 ] && [ "$lost" -eq 0 ] && [ "$extra" -eq 0 ] && [ "$send_status" -eq 0 ]
