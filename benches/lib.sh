# Shared by the benchmark scripts (sourced, not run): a scratch directory and the
# processes to stop on exit, tool checks, loopback ports, relay CPU, the load shapes,
# the two reference peers (Postfix's smtp-sink, HAProxy in TCP mode) and smtpgate in
# front of the sink.
# shellcheck shell=bash

# Every command in TOOLS on PATH (plus /usr/sbin, where Postfix puts its tools), or
# exit naming HINT (the apt-get line that installs them).
bench_need() {
  local hint=$1; shift
  export PATH="$PATH:/usr/sbin"
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "missing $t ($hint)" >&2; exit 1; }
  done
}

# $work: a scratch directory; pids+=(PID) for every process started, all stopped
# and the directory removed on exit.
work=$(mktemp -d)
pids=()
bench_cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap bench_cleanup EXIT

# A loopback port free a moment ago (the peers here cannot report a port they bound).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 10 s for something to accept on 127.0.0.1:PORT.
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# User plus system CPU ticks of the processes PID..., summed.
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }

# Starts Postfix's smtp-sink (backlog 1024) on a free port; sets $sink_port.
start_smtp_sink() {
  sink_port=$(free_port)
  local user=(); [ "$(id -u)" = 0 ] && user=(-u nobody)
  smtp-sink "${user[@]}" "127.0.0.1:$sink_port" 1024 >/dev/null 2>&1 & pids+=($!)
  wait_port "$sink_port"
}

# The relay benchmarks' load shapes, NAME|smtp-source arguments: 1 KiB messages on
# reused connections, one 1 KiB message per connection, 100 KiB messages reused.
bench_shapes=("1k-reused|-s 20 -l 1024 -d" "1k-per-connection|-s 20 -l 1024" "100k-reused|-s 20 -l 102400 -d")

# start_plain_gate BINARY POLICY...: one smtpgate with a plaintext listener per POLICY,
# each relaying to the sink ($sink_port); sets plain_gate_pid and plain_gate_ports (in
# POLICY order) once every listener accepts.
start_plain_gate() {
  local binary=$1 policy port; shift
  plain_gate_ports=()
  {
    printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$(free_port)"
    for policy in "$@"; do
      port=$(free_port); plain_gate_ports+=("$port")
      printf '[[listener]]\nlisten = "127.0.0.1:%s"\nupstream = "127.0.0.1:%s"\npolicy = "%s"\n' \
        "$port" "$sink_port" "$policy"
    done
  } >"$work/smtpgate.toml"
  "$binary" run -c "$work/smtpgate.toml" >"$work/smtpgate.log" 2>&1 & plain_gate_pid=$!; pids+=($!)
  for port in "${plain_gate_ports[@]}"; do wait_port "$port"; done
}

# Starts HAProxy in TCP mode from a free port to 127.0.0.1:BACKEND; sets
# $haproxy_port and $haproxy_pid.
start_haproxy() {
  haproxy_port=$(free_port)
  cat >"$work/haproxy.cfg" <<CFG
global
  maxconn 4000   # haproxy needs 2 fds per connection under the default 20000 fd limit
defaults
  mode tcp
  timeout connect 10s
  timeout client 5m
  timeout server 5m
frontend smtp
  bind 127.0.0.1:$haproxy_port
  default_backend sink
backend sink
  server sink 127.0.0.1:$1
CFG
  haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 & haproxy_pid=$!; pids+=($haproxy_pid)
}

# For the STARTTLS benchmarks: a self-signed ECDSA P-256 certificate ($work/mx.pem and
# $work/mx.key) and two smtpgate-loadgen sinks from BIN_DIR, one plaintext and one
# offering STARTTLS; sets $plain_sink and $tls_sink.
start_starttls_peers() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$work/mx.key" -out "$work/mx.pem" -subj /CN=mx.bench.test 2>/dev/null
  plain_sink=$(free_port); tls_sink=$(free_port)
  "$1/smtpgate-loadgen" sink --listen "127.0.0.1:$plain_sink" --cores 1 >/dev/null 2>&1 & pids+=($!)
  "$1/smtpgate-loadgen" sink --listen "127.0.0.1:$tls_sink" --cores 1 --starttls >/dev/null 2>&1 & pids+=($!)
  wait_port "$plain_sink"; wait_port "$tls_sink"
}

# start_tls_gate NAME BINARY TLS_LINES LISTENER_LINES: one smtpgate (--cores 1) serving
# $work/mx.pem, TLS_LINES added to its [tls], with one listener (LISTENER_LINES besides
# `listen`); sets gate_port[NAME] and gate_pid[NAME].
declare -A gate_port=() gate_pid=()
start_tls_gate() {
  gate_port[$1]=$(free_port)
  cat >"$work/$1.toml" <<EOF
[admin]
listen = "127.0.0.1:$(free_port)"
[tls]
cert = "$work/mx.pem"
key = "$work/mx.key"
$3
[[listener]]
listen = "127.0.0.1:${gate_port[$1]}"
$4
EOF
  "$2" run -c "$work/$1.toml" --cores 1 >/dev/null 2>"$work/$1.err" & gate_pid[$1]=$!; pids+=($!)
  wait_port "${gate_port[$1]}"
}
