#!/usr/bin/env bash
# Side by side against one Postfix smtp-sink: Postfix's smtp-source and
# `smtpgate-loadgen send` at the same shape (20 connections reused, 1 KiB,
# 20000 messages), lock-step and pipelined. Prints wall time and CPU
# (user+sys, from /usr/bin/time) per run and CPU per message.
#
#   loadgen/scripts/vs-smtp-source.sh [path/to/smtpgate-loadgen] [rounds]
set -euo pipefail
loadgen=${1:-target/release/smtpgate-loadgen}
rounds=${2:-3}
export PATH="$PATH:/usr/sbin:/usr/lib/postfix/sbin"
for tool in smtp-sink smtp-source /usr/bin/time python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
messages=20000
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sink_user=()
[ "$(id -u)" = 0 ] && sink_user=(-u nobody)
smtp-sink "${sink_user[@]}" "127.0.0.1:$port" 1000 &
sink_pid=$!
trap 'kill $sink_pid 2>/dev/null || true' EXIT
sleep 0.5

measure() { # label command...
  local label=$1; shift
  local times
  times=$(mktemp)
  /usr/bin/time -o "$times" -f "%e %U %S" "$@" >/dev/null 2>&1 || true
  read -r wall user sys <"$times"
  rm -f "$times"
  awk -v l="$label" -v w="$wall" -v u="$user" -v s="$sys" -v m=$messages \
    'BEGIN { printf "%-34s %8.0f msgs/s  cpu %5.2fs  %5.1f us/msg\n", l, m/w, u+s, (u+s)*1e6/m }'
}

for _ in $(seq "$rounds"); do
  measure "smtp-source -s 20 -l 1024 -d" smtp-source -s 20 -l 1024 -m $messages -d "127.0.0.1:$port"
  measure "loadgen send (lock-step)" "$loadgen" send --quiet --target "127.0.0.1:$port" \
    --connections 20 --size 1024 --messages $messages
  measure "loadgen send --pipelining" "$loadgen" send --quiet --target "127.0.0.1:$port" \
    --connections 20 --size 1024 --messages $messages --pipelining
done
