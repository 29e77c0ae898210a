#!/usr/bin/env bash
# Where each relay's CPU goes (a profile, not a test): Postfix smtp-source -> relay ->
# smtp-sink through HAProxy (TCP mode) and through smtpgate, each relay under
# `perf record -e cpu-clock -g` while it carries the same load, in the order HAProxy,
# smtpgate, then smtpgate, HAProxy in the next round, so drift on the machine lands on
# both alike. Prints per round the relays' CPU per message (or per connection, in the
# one-message-per-connection shape) split by the system call each sample was in (its
# kernel work counted with it: a send's loopback delivery, io_uring's completions)
# and, for user space, by component; `benches/perf-buckets.py` does the splitting.
#
# Usage: benches/profile-compare.sh [-r ROUNDS] [-m MESSAGES] [-s SHAPE] [-p POLICY]
#   SHAPE    1k-per-connection (default), 1k-reused or 100k-reused
#   POLICY   default (inspecting, the default) or none (exempt)
# Needs: postfix (smtp-source, smtp-sink), haproxy, perf, python3, cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=2 messages=10000 shape=1k-per-connection policy=default
while getopts "r:m:s:p:" opt; do
  case $opt in
    r) rounds=$OPTARG ;; m) messages=$OPTARG ;; s) shape=$OPTARG ;; p) policy=$OPTARG ;;
    *) exit 2 ;;
  esac
done
# shellcheck source=benches/lib.sh
source benches/lib.sh
args=""
for entry in "${bench_shapes[@]}"; do [ "${entry%%|*}" = "$shape" ] && args=${entry#*|}; done
[ -n "$args" ] || { echo "unknown shape $shape" >&2; exit 2; }
bench_need "apt-get install postfix haproxy linux-perf python3" smtp-source smtp-sink haproxy perf python3
cargo build --release -q -p smtpgate
gate=${CARGO_TARGET_DIR:-target}/release/smtpgate

start_smtp_sink
start_plain_gate "$gate" "$policy"
start_haproxy "$sink_port"
wait_port "$haproxy_port"

declare -A port=([haproxy]=$haproxy_port [smtpgate]=${plain_gate_ports[0]})
declare -A relay=([haproxy]=$haproxy_pid [smtpgate]=$plain_gate_pid)
echo "shape $shape, policy $policy, $messages messages per profile; µs of relay CPU per message"
for r in $(seq "$rounds"); do
  order=(haproxy smtpgate); [ $((r % 2)) = 0 ] && order=(smtpgate haproxy)
  for p in "${order[@]}"; do
    perf record -q -e cpu-clock -g -o "$work/$p.data" -p "${relay[$p]}" 2>/dev/null & recorder=$!
    sleep 0.5   # perf attaches before the load starts
    # shellcheck disable=SC2086
    smtp-source $args -m "$messages" "127.0.0.1:${port[$p]}"
    kill -INT "$recorder"; wait "$recorder" || true
    perf script -F comm,tid,period,ip,sym,dso -i "$work/$p.data" >"$work/$p.txt" 2>/dev/null
  done
  echo "round $r (order: ${order[*]})"
  python3 benches/perf-buckets.py "$messages" "$work/smtpgate.txt" "$work/haproxy.txt"
done
