#!/usr/bin/env bash
# Same-binary A/B benchmark of glommio reactor switches (not a test). Starts one
# smtpgate per variant, all from one release build, each with its own environment
# (the reactor reads its switches once per executor), plus HAProxy in TCP mode as the
# reference, all relaying Postfix smtp-source -> smtp-sink on this machine. Each round
# runs the variants in the order A B .. B A (the reverse order in odd rounds), so load
# from anything else on the machine lands on every variant alike.
#
# Prints per shape and path: msgs/s (median, min-max over runs), relay CPU per 1000
# messages (user+system of the relay process, median), the relay's share of all the CPU
# the machine used meanwhile (source, sink and relay share these cores, so on a busy
# machine msgs/s can rise by at most 1 / (1 - share) however cheap the relay gets:
# the ceiling printed beside it) and, for smtpgate, the reactor
# counters per message from /metrics (deterministic, unlike the wall-clock numbers),
# then each path's relay CPU per message as paired ratios to the first variant and to
# HAProxy.
# With -y, one more run per shape and path under `perf stat` counts each relay's
# socket system calls per message (reads and sends, for HAProxy too); those runs are
# not timed.
#
# Usage: benches/glommio-ab.sh [-r ROUNDS] [-m MESSAGES] [-s SHAPE[,SHAPE]] [-p POLICY] [-y]
#          VARIANT...
#   VARIANT  NAME or NAME:VAR=VALUE[,VAR=VALUE...], e.g. fast upstream:GLOMMIO_FAST_PARK=0;
#            SMTPGATE=PATH runs that binary instead of this tree's release build (e.g. a
#            baseline built from another commit into its own target directory)
#   SHAPE    1k-reused (default), 1k-per-connection, 100k-reused, or all
#   POLICY   default (inspecting, the default) or none (exempt)
# Needs: postfix (smtp-source, smtp-sink), haproxy, python3, cargo; perf for -y.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 messages=20000 shape_filter=1k-reused policy=default syscalls=""
while getopts "r:m:s:p:y" opt; do
  case $opt in
    r) rounds=$OPTARG ;; m) messages=$OPTARG ;; s) shape_filter=$OPTARG ;; p) policy=$OPTARG ;;
    y) syscalls=1 ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "name at least one variant, e.g. fast upstream:GLOMMIO_FAST_PARK=0" >&2; exit 2; }
# shellcheck source=benches/lib.sh
source benches/lib.sh
# A failed run keeps its work directory (each relay's log) for a look.
ab_exit() {
  local status=$?
  kill "${pids[@]}" 2>/dev/null || true
  if [ "$status" -eq 0 ]; then rm -rf "$work"; else echo "failed (exit $status); logs kept in $work" >&2; fi
}
trap ab_exit EXIT
# Stops the benchmark when the relay NAME has exited, with its status and log.
relay_alive() {
  kill -0 "${relay[$1]}" 2>/dev/null && return 0
  local status=0
  wait "${relay[$1]}" || status=$?
  echo "relay $1 exited (status $status) during the $sname runs; its log ends:" >&2
  tail -20 "$work/$1.log" >&2
  exit 1
}
bench_need "apt-get install postfix haproxy python3" smtp-source smtp-sink haproxy python3
[ -z "$syscalls" ] || bench_need "apt-get install linux-perf" perf
cargo build --release -q -p smtpgate
gate=${CARGO_TARGET_DIR:-target}/release/smtpgate

# The reactor counters as "name=value" words, e.g. enters=123 sqes_poll_add=45.
counters() {
  python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
out = []
for line in text.splitlines():
    if line.startswith("smtpgate_reactor_"):
        name, value = line.rsplit(" ", 1)
        name = name.removeprefix("smtpgate_reactor_").replace("_total", "")
        name = name.replace('{op="', "_").replace('"}', "")
        out.append(f"{name}={value}")
print(" ".join(out))
PY
}

start_smtp_sink

declare -A port=() relay=() admin=()
names=()
for spec in "$@"; do
  name=${spec%%:*}; envs=""; [[ $spec == *:* ]] && envs=${spec#*:}
  names+=("$name")
  port[$name]=$(free_port); admin[$name]="127.0.0.1:$(free_port)"
  cat >"$work/$name.toml" <<TOML
[admin]
listen = "${admin[$name]}"
[[listener]]
listen = "127.0.0.1:${port[$name]}"
upstream = "127.0.0.1:$sink_port"
policy = "$policy"
TOML
  bin=$gate
  for setting in ${envs//,/ }; do [[ $setting == SMTPGATE=* ]] && bin=${setting#SMTPGATE=}; done
  # shellcheck disable=SC2086
  env ${envs//,/ } "$bin" run -c "$work/$name.toml" >"$work/$name.log" 2>&1 & relay[$name]=$!; pids+=($!)
done
start_haproxy "$sink_port"; relay[haproxy]=$haproxy_pid
port[haproxy]=$haproxy_port
for name in "${names[@]}" haproxy; do wait_port "${port[$name]}"; done

hz=$(getconf CLK_TCK)
# Busy CPU time of the whole machine, in clock ticks (user, nice, system, irq, softirq, steal).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
traced=(syscalls:sys_enter_recvfrom syscalls:sys_enter_read syscalls:sys_enter_sendto
  syscalls:sys_enter_sendmsg syscalls:sys_enter_write syscalls:sys_enter_epoll_wait
  syscalls:sys_enter_io_uring_enter)
results="$work/results"
: >"$results"
for shape in "${bench_shapes[@]}"; do
  sname=${shape%%|*}; args=${shape#*|}
  [ "$shape_filter" = all ] || [[ ",$shape_filter," == *",$sname,"* ]] || continue
  n=$messages; [[ $sname == 100k* ]] && n=$((messages / 5))
  forward=("${names[@]}" haproxy)
  backward=(); for ((i = ${#forward[@]} - 1; i >= 0; i--)); do backward+=("${forward[$i]}"); done
  for r in $(seq "$rounds"); do
    # A B .. then .. B A: each variant runs early and late in every pair of rounds.
    if (( r % 2 )); then order=("${forward[@]}" "${backward[@]}"); else order=("${backward[@]}" "${forward[@]}"); fi
    for p in "${order[@]}"; do
      pid=${relay[$p]}
      relay_alive "$p"
      before_cpu=$(cpu_ticks "$pid"); before=""; [ "$p" != haproxy ] && before=$(counters "${admin[$p]}")
      before_machine=$(machine_ticks)
      start=$(date +%s.%N)
      # shellcheck disable=SC2086
      smtp-source $args -m "$n" "127.0.0.1:${port[$p]}"
      end=$(date +%s.%N)
      relay_alive "$p"
      after_machine=$(machine_ticks)
      after_cpu=$(cpu_ticks "$pid"); after=""; [ "$p" != haproxy ] && after=$(counters "${admin[$p]}")
      echo "$sname|$p|$n|$start|$end|$before_cpu|$after_cpu|$hz|$before|$after|$before_machine|$after_machine" >>"$results"
    done
  done
  [ -n "$syscalls" ] || continue
  for p in "${forward[@]}"; do
    perf stat -x, -o "$work/perf.$p" -p "${relay[$p]}" -e "$(IFS=,; echo "${traced[*]}")" & perf_pid=$!
    sleep 0.5
    # shellcheck disable=SC2086
    smtp-source $args -m "$n" "127.0.0.1:${port[$p]}"
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    relay_alive "$p"
    echo "$sname|$p|$n|$(awk -F, '$1 ~ /^[0-9]+$/ {sub("syscalls:sys_enter_", "", $3); printf "%s=%s ", $3, $1}' "$work/perf.$p")" >>"$work/syscalls"
  done
done

python3 - "$results" "${names[@]}" haproxy <<'PY'
import statistics, sys
from collections import defaultdict
path, order = sys.argv[1], sys.argv[2:]
runs = defaultdict(list)
for line in open(path):
    shape, name, n, start, end, cb, ca, hz, before, after, mb, ma = line.rstrip("\n").split("|")
    n = int(n)
    rate = n / (float(end) - float(start))
    cpu = (int(ca) - int(cb)) / int(hz) * 1e6 / n  # ms per 1000 messages
    b = dict(w.split("=") for w in before.split())
    a = dict(w.split("=") for w in after.split())
    per = {k: (int(a[k]) - int(b[k])) / n for k in a}
    share = (int(ca) - int(cb)) / max(1, int(ma) - int(mb))
    runs[(shape, name)].append((rate, cpu, per, share))
shown = ["io_uring_enters", "parks", "membarriers", "cqes", "sqes_poll_add", "sqes_timeout",
         "sqes_cancel", "sqes_recv", "sqes_send", "sqes_write", "sqes_read"]
short = {"io_uring_enters": "enters", "sqes_poll_add": "poll_add", "sqes_timeout": "timeout",
         "sqes_cancel": "cancel", "sqes_recv": "recv", "sqes_send": "send", "sqes_write": "write",
         "sqes_read": "read"}
head = (f"{'shape':<18} {'path':<10} {'msgs/s':>7} {'(min-max)':>13} {'CPU ms/1k':>9} {'(min-max)':>11}"
        f" {'share':>6} {'ceiling':>7}")
print(head + "".join(f" {short.get(k, k):>8}" for k in shown) + "   (reactor counters per message)")
for shape in dict.fromkeys(s for s, _ in runs):
    for name in order:
        rs = runs.get((shape, name))
        if not rs:
            continue
        rates = [r for r, _, _, _ in rs]; cpus = [c for _, c, _, _ in rs]
        share = statistics.median(s for _, _, _, s in rs)
        line = (f"{shape:<18} {name:<10} {statistics.median(rates):7.0f} "
                f"{f'({min(rates):.0f}-{max(rates):.0f})':>13} {statistics.median(cpus):9.1f} "
                f"{f'({min(cpus):.0f}-{max(cpus):.0f})':>11} {share:6.0%} {1 / (1 - min(share, 0.99)):6.2f}x")
        if rs[0][2]:
            line += "".join(f" {statistics.median(p.get(k, 0) for _, _, p, _ in rs):8.2f}" for k in shown)
        print(line)
# Paired ratios: the k-th run of a path against the k-th run of the reference, which
# ran next to it in the same round (A B .. B A), so load that drifts over the whole
# run cancels out of each pair. Median (min-max) of the pairs' CPU ratios.
for shape in dict.fromkeys(s for s, _ in runs):
    for reference in (order[0], "haproxy"):
        base = runs.get((shape, reference), [])
        for name in order:
            rs = runs.get((shape, name), [])
            if name == reference or not rs or len(rs) != len(base):
                continue
            ratios = [c / b for (_, c, _, _), (_, b, _, _) in zip(rs, base)]
            print(f"{shape:<18} CPU per message {name} / {reference}: "
                  f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) "
                  f"over {len(ratios)} pairs, {sum(r < 1 for r in ratios)} below 1")
PY
[ -n "$syscalls" ] || exit 0
echo
echo "relay system calls per message (one untimed run per shape and path under perf stat)"
python3 - "$work/syscalls" <<'PY'
import sys
for line in open(sys.argv[1]):
    shape, name, n, counts = line.rstrip("\n").split("|")
    per = {k: int(v) / int(n) for k, v in (w.split("=") for w in counts.split())}
    print(f"{shape:<18} {name:<10} " + " ".join(f"{k}={v:.2f}" for k, v in per.items()))
PY
