#!/usr/bin/env bash
# TLS handshake stall benchmark (not a test): how long handshakes on a shard hold up
# the other sessions on it, and why.
#
# 1. What one handshake step costs (in memory, no sockets): the server's work for the
#    client's first flight (key exchange and the certificate signature) and for its
#    Finished (session tickets), full and resumed, for an RSA-2048 and an ECDSA P-256
#    certificate, with aws-lc-rs (smtpgate's provider) and ring in alternating rounds
#    (benches/examples/tls_stall.rs `steps`).
# 2. On a running smtpgate --cores 1 (starttls = "inspect", upstream_tls = "off", so
#    only the edge's own handshakes run on the shard), one probe session sends NOOP
#    after NOOP and records each reply's latency, while nothing else runs (idle), while
#    CLIENTS clients make new STARTTLS sessions as fast as they can with full
#    handshakes (full), and with session tickets (resumed). One smtpgate per
#    certificate type, both up, loaded in turn inside every round.
#
# The probe's latency includes the client machine's own scheduling: every process
# here shares the same cores, so compare the rows of one run, not across machines.
#
# Usage: benches/tls-stall.sh [CLIENTS] [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."

clients=${1:-4}
seconds=${2:-5}
rounds=${3:-2}
# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_need "apt-get install openssl python3" openssl python3
cargo build --release -q -p smtpgate -p smtpgate-loadgen
cargo build --release -q -p smtpgate-benches --example tls_stall
bin=${CARGO_TARGET_DIR:-target}/release
stall=$bin/examples/tls_stall

openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
  -keyout "$work/rsa.key" -out "$work/rsa.pem" -subj /CN=mx.bench.test 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout "$work/ecdsa.key" -out "$work/ecdsa.pem" -subj /CN=mx.bench.test 2>/dev/null

for key in rsa ecdsa; do
  echo "== one handshake step on the server, $key certificate (microseconds, 1000 handshakes)"
  "$stall" steps "$work/$key.pem" "$work/$key.key" 1000
done

sink=$(free_port)
"$bin/smtpgate-loadgen" sink --listen "127.0.0.1:$sink" --cores 1 >/dev/null 2>&1 & pids+=($!)
wait_port "$sink"

declare -A port
for key in rsa ecdsa; do
  port[$key]=$(free_port)
  cat >"$work/$key.toml" <<EOF
[admin]
listen = "127.0.0.1:$(free_port)"
[tls]
cert = "$work/$key.pem"
key = "$work/$key.key"
[[listener]]
listen = "127.0.0.1:${port[$key]}"
upstream = "127.0.0.1:$sink"
starttls = "inspect"
upstream_tls = "off"
EOF
  "$bin/smtpgate" run -c "$work/$key.toml" --cores 1 >/dev/null 2>"$work/$key.err" & pids+=($!)
  wait_port "${port[$key]}"
done

echo "== probe NOOP reply latency (microseconds) on smtpgate --cores 1, $clients STARTTLS clients, ${seconds}s phases"
for round in $(seq "$rounds"); do
  for key in rsa ecdsa; do
    "$stall" probe "127.0.0.1:${port[$key]}" "$clients" "$seconds" 1 |
      awk -v key="$key" -v round="$round" '$1 != "load" { $2 = round } { print key, $0 }'
  done
done | awk 'NR == 1 || $2 != "load" { printf "%-6s %-8s %5s %8s %8s %9s %8s %8s %8s %8s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' | sed '1s/^rsa   /cert  /'
