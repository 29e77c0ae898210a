#!/usr/bin/env bash
# Relay benchmark (not a test): Postfix's smtp-source -> smtp-sink, in one go on this
# machine, through HAProxy in TCP mode, through smtpgate inspecting (policy default),
# through smtpgate exempt (policy none), and direct. Paths alternate inside each round,
# in an order rotated every round, so drift on the machine hits all of them alike.
#
# Prints, per shape and path: msgs/s (median over rounds, min-max) and relay CPU
# (user+system of the relay process) per 1000 messages.
#
# Usage: benches/relay-compare.sh [ROUNDS] [MESSAGES]
# Needs: postfix (smtp-source, smtp-sink), haproxy, a release build of smtpgate.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-3}
messages=${2:-20000}
# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_need "apt-get install postfix haproxy python3" smtp-source smtp-sink haproxy python3
cargo build --release -q -p smtpgate
gate=${CARGO_TARGET_DIR:-target}/release/smtpgate

start_smtp_sink

start_plain_gate "$gate" default none
inspect_port=${plain_gate_ports[0]}; exempt_port=${plain_gate_ports[1]}; gate_pid=$plain_gate_pid
start_haproxy "$sink_port"
wait_port "$haproxy_port"

hz=$(getconf CLK_TCK)
# path name -> port and relay pid (direct has no relay)
declare -A port=([direct]=$sink_port [haproxy]=$haproxy_port [inspect]=$inspect_port [exempt]=$exempt_port)
declare -A relay=([direct]="" [haproxy]=$haproxy_pid [inspect]=$gate_pid [exempt]=$gate_pid)
paths=(direct haproxy inspect exempt)

printf '%-18s %-8s %12s %14s %22s\n' shape path "msgs/s" "(min-max)" "relay CPU ms/1000 msg"
for shape in "${bench_shapes[@]}"; do
  name=${shape%%|*}; args=${shape#*|}
  n=$messages; [[ $name == 100k* ]] && n=$((messages / 5))
  declare -A rates=() cpus=()
  for r in $(seq "$rounds"); do
    # Rotate the order every round so no path always runs right after another.
    shift_by=$(( (r - 1) % ${#paths[@]} ))
    order=("${paths[@]:$shift_by}" "${paths[@]:0:$shift_by}")
    for p in "${order[@]}"; do
      pid=${relay[$p]}
      before=0; [ -n "$pid" ] && before=$(cpu_ticks "$pid")
      start=$(date +%s.%N)
      # shellcheck disable=SC2086
      smtp-source $args -m "$n" "127.0.0.1:${port[$p]}"
      end=$(date +%s.%N)
      after=0; [ -n "$pid" ] && after=$(cpu_ticks "$pid")
      rates[$p]+="$(echo "$n / ($end - $start)" | bc -l) "
      cpus[$p]+="$(echo "($after - $before) * 1000 / $hz * 1000 / $n" | bc -l) "
    done
  done
  for p in "${paths[@]}"; do
    python3 - "$name" "$p" "${rates[$p]}" "${cpus[$p]}" <<'EOF'
import statistics, sys
name, path, rates, cpus = sys.argv[1], sys.argv[2], list(map(float, sys.argv[3].split())), list(map(float, sys.argv[4].split()))
cpu = "-" if path == "direct" else f"{statistics.median(cpus):.1f}"
print(f"{name:<18} {path:<8} {statistics.median(rates):12.0f} {f'({min(rates):.0f}-{max(rates):.0f})':>14} {cpu:>22}")
EOF
  done
  unset rates cpus
done
