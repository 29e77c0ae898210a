#!/usr/bin/env bash
# Side by side against one Postfix smtp-sink: Postfix's smtp-source and
# `smtpgate-loadgen send` at the same shape (20 connections reused, 1 KiB),
# lock-step and pipelined.
#
#   loadgen/scripts/vs-smtp-source.sh [path/to/smtpgate-loadgen] [rounds]
#
# Environment: MESSAGES per run (default 100000: runs of several seconds, so
# start-up is noise), BASELINE=path/to/another/smtpgate-loadgen to add its
# lock-step run to every round (old binary against new in one run).
#
# CPU is each process's user+system time from wait4(2) (the kernel's exact
# runtime, not /usr/bin/time's 10 ms ticks), children included. Each round
# runs its list forward then backward (A B ... B A), so drift on a shared
# machine hits every contender alike; a contender's figure for the round is
# the sum of its two runs. Printed per round: each run, then each loadgen
# run's CPU per message divided by smtp-source's in the same round (the paired
# ratio); at the end the median of those ratios and their min..max.
set -euo pipefail
loadgen=${1:-target/release/smtpgate-loadgen}
rounds=${2:-5}
messages=${MESSAGES:-100000}
baseline=${BASELINE:-}
export PATH="$PATH:/usr/sbin:/usr/lib/postfix/sbin"
for tool in smtp-sink smtp-source python3 "$loadgen" ${baseline:+"$baseline"}; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sink_user=()
[ "$(id -u)" = 0 ] && sink_user=(-u nobody)
smtp-sink "${sink_user[@]}" "127.0.0.1:$port" 1000 &
sink_pid=$!
trap 'kill $sink_pid 2>/dev/null || true' EXIT
sleep 0.5

target="127.0.0.1:$port"
labels=("smtp-source -s 20 -l 1024 -d")
commands=("smtp-source -s 20 -l 1024 -m $messages -d $target")
if [ -n "$baseline" ]; then
  labels+=("baseline send (lock-step)")
  commands+=("$baseline send --quiet --target $target --connections 20 --size 1024 --messages $messages")
fi
labels+=("loadgen send (lock-step)" "loadgen send --pipelining")
commands+=("$loadgen send --quiet --target $target --connections 20 --size 1024 --messages $messages"
  "$loadgen send --quiet --target $target --connections 20 --size 1024 --messages $messages --pipelining")

# Runs each command line given as one argument (split on spaces) with its
# output discarded; prints "wall_s cpu_s voluntary_switches involuntary_switches".
measure() {
  python3 - "$@" <<'EOF'
import os, subprocess, sys, time
argv = sys.argv[1].split()
start = time.monotonic()
child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
wall = time.monotonic() - start
if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(f"{argv[0]} exited with status {os.waitstatus_to_exitcode(status)}")
print(f"{wall:.6f} {usage.ru_utime + usage.ru_stime:.6f} {usage.ru_nvcsw} {usage.ru_nivcsw}")
EOF
}

ratios=$(mktemp)
trap 'kill $sink_pid 2>/dev/null || true; rm -f "$ratios"' EXIT
count=${#labels[@]}
for round in $(seq "$rounds"); do
  declare -a wall=() cpu=() switches=()
  for i in $(seq 0 $((count - 1))); do wall[i]=0; cpu[i]=0; switches[i]=0; done
  order=$(seq 0 $((count - 1)); seq $((count - 1)) -1 0)
  for i in $order; do
    read -r w c vol invol <<<"$(measure "${commands[i]}")"
    wall[i]=$(awk -v a="${wall[i]}" -v b="$w" 'BEGIN { print a + b }')
    cpu[i]=$(awk -v a="${cpu[i]}" -v b="$c" 'BEGIN { print a + b }')
    switches[i]=$((switches[i] + vol + invol))
  done
  echo "round $round"
  for i in $(seq 0 $((count - 1))); do
    awk -v l="${labels[i]}" -v w="${wall[i]}" -v c="${cpu[i]}" -v s="${switches[i]}" \
      -v m=$((2 * messages)) -v base="${cpu[0]}" \
      'BEGIN { printf "  %-30s %7.0f msgs/s  cpu %6.3fs  %6.2f us/msg  %5.2f switches/msg  x%.3f\n",
               l, m / w, c, c * 1e6 / m, s / m, c / base }'
    [ "$i" -gt 0 ] && awk -v l="${labels[i]}" -v c="${cpu[i]}" -v base="${cpu[0]}" \
      'BEGIN { printf "%s\t%.4f\n", l, c / base }' >>"$ratios"
  done
done
echo "CPU per message over smtp-source's, paired per round: median (min..max) over $rounds rounds"
for i in $(seq 1 $((count - 1))); do
  awk -F'\t' -v l="${labels[i]}" '$1 == l { print $2 }' "$ratios" | sort -n |
    awk -v l="${labels[i]}" '{ v[NR] = $1 } END {
      m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "  %-30s x%.3f (%.3f..%.3f)\n", l, m, v[1], v[NR] }'
done
