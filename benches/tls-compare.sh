#!/usr/bin/env bash
# STARTTLS benchmark (not a test): the same STARTTLS client load (smtpgate-loadgen send
# --starttls) into smtpgate-loadgen sink, through
#   nginx      nginx's mail proxy, STARTTLS terminated, plaintext to the sink (nginx
#              cannot encrypt towards an SMTP backend); a tiny auth_http responder in
#              the same nginx names the upstream. Its default protocols (nginx 1.22:
#              up to TLS 1.2), so a resumed session is a TLS 1.2 ticket resumption,
#              with no key exchange at all,
#   nginx13    the same with TLS 1.3 allowed: the protocol smtpgate negotiates, where a
#              resumption still does an X25519 key exchange,
#   inspect    smtpgate starttls = "inspect", upstream_tls = "off": the same legs as
#              nginx (TLS to the client, plaintext to the sink); the row to hold
#              against nginx's,
#   inspect12  the same as inspect, with [tls] protocols = ["TLSv1.2"]: nginx's protocol,
#              a resumption as cheap as nginx's,
#   inspect2   smtpgate starttls = "inspect", upstream_tls = "opportunistic": TLS on
#              both legs, a second handshake per session that nginx never makes,
#   opaque     smtpgate starttls = "passthrough" to a STARTTLS sink (TLS end to end,
#              smtpgate blind after the 220: the cost of inspecting encrypted mail is
#              inspect2 against this).
# Same certificate (ECDSA P-256) and the same cipher suites in the same server order
# (AES-128-GCM first) for nginx and smtpgate; both resume sessions from tickets (the
# client keeps them between connections). smtpgate's event lines (two or three per
# session) are formatted and written to /dev/null, their CPU counted; nginx logs
# warnings only. What each path negotiated is printed first.
# Paths alternate inside each round, order rotated every round. One core each for
# nginx (worker_processes 1) and smtpgate (--cores 1, one process per path, the others
# idle while a path runs).
#
# Prints per path: msgs/s (median over rounds, min-max) and proxy CPU (user+system of
# the proxy processes) per 1000 messages; then, one message per connection, proxy CPU
# per connection (handshake included). Then each path against nginx, paired within
# rounds: the median of the per-round ratios and how many rounds had less CPU.
#
# With BASELINE=/path/to/an/older/smtpgate, a path `base` runs that binary as
# `inspect` (same config), alternating with the others: an A/B in the same run.
#
# PATHS="nginx inspect inspect12" runs only those paths.
#
# Usage: [BASELINE=BINARY] [PATHS=...] benches/tls-compare.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-3}
seconds=${2:-8}
# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_need "apt-get install nginx libnginx-mod-mail openssl python3" nginx openssl python3
mail_module=/usr/lib/nginx/modules/ngx_mail_module.so
[ -f "$mail_module" ] || { echo "missing $mail_module (apt-get install libnginx-mod-mail)" >&2; exit 1; }
cargo build --release -q -p smtpgate -p smtpgate-loadgen
bin=${CARGO_TARGET_DIR:-target}/release

start_starttls_peers "$bin"

# One smtpgate per path (--cores 1 each), so that each path's CPU is its own process's;
# `base`, with BASELINE, is the older binary as `inspect`.
inspect="upstream = \"127.0.0.1:$plain_sink\"
starttls = \"inspect\"
upstream_tls = \"off\""
start_tls_gate inspect "$bin/smtpgate" "" "$inspect"
start_tls_gate inspect12 "$bin/smtpgate" 'protocols = ["TLSv1.2"]' "$inspect"
start_tls_gate inspect2 "$bin/smtpgate" "" "upstream = \"127.0.0.1:$tls_sink\"
starttls = \"inspect\"
upstream_tls = \"opportunistic\""
start_tls_gate opaque "$bin/smtpgate" "" "upstream = \"127.0.0.1:$tls_sink\"
starttls = \"passthrough\""
baseline=${BASELINE:-}
[ -z "$baseline" ] || start_tls_gate base "$baseline" "" "$inspect"

nginx_port=$(free_port); nginx13_port=$(free_port); auth_port=$(free_port)
cat >"$work/nginx.conf" <<EOF
load_module $mail_module;
daemon off;
master_process on;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$auth_port;
    location = /auth {
      add_header Auth-Status OK;
      add_header Auth-Server 127.0.0.1;
      add_header Auth-Port $plain_sink;
      return 204;
    }
  }
}
mail {
  server_name mx.bench.test;
  auth_http 127.0.0.1:$auth_port/auth;
  proxy_pass_error_message on;
  xclient off;
  ssl_certificate $work/mx.pem;
  ssl_certificate_key $work/mx.key;
  ssl_session_cache shared:MAIL:10m;
  ssl_prefer_server_ciphers on;
  ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305;
  ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
  server {
    listen 127.0.0.1:$nginx_port;
    protocol smtp;
    smtp_auth none;
    starttls on;
  }
  server {
    listen 127.0.0.1:$nginx13_port;
    protocol smtp;
    smtp_auth none;
    starttls on;
    ssl_protocols TLSv1.2 TLSv1.3;
  }
}
EOF
nginx -c "$work/nginx.conf" -e "$work/nginx.err" 2>>"$work/nginx.err" & pids+=($!)
wait_port "$nginx_port"; wait_port "$nginx13_port"
nginx_pids() { pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' '; cat "$work/nginx.pid"; }

hz=$(getconf CLK_TCK)
declare -A port=([nginx]=$nginx_port [nginx13]=$nginx13_port [inspect]=${gate_port[inspect]} [inspect12]=${gate_port[inspect12]} [inspect2]=${gate_port[inspect2]} [opaque]=${gate_port[opaque]})
paths=(${PATHS:-nginx nginx13 inspect inspect12 inspect2 opaque})
if [ -n "$baseline" ]; then
  port[base]=${gate_port[base]}
  [[ " ${paths[*]} " == *" base "* ]] || paths+=(base)
fi

# What each path negotiates with a client (openssl s_client), and whether a second
# connection resumes the first one's session.
echo "== negotiated (client side: first connection; second connection with its session)"
for path in "${paths[@]}"; do
  first=$( (printf 'EHLO x\r\n'; sleep 0.5) | timeout 5 openssl s_client -starttls smtp \
    -connect "127.0.0.1:${port[$path]}" -sess_out "$work/session" 2>/dev/null | grep -m1 -E '^(New|Reused),' || true)
  second=$( (printf 'EHLO x\r\n'; sleep 0.5) | timeout 5 openssl s_client -starttls smtp \
    -connect "127.0.0.1:${port[$path]}" -sess_in "$work/session" 2>/dev/null | grep -m1 -E '^(New|Reused),' || true)
  printf '%-10s %s | %s\n' "$path" "${first:-?}" "${second%%, Cipher*}"
done

# One run: prints "msgs/s cpu_ms_per_1000_msgs messages".
run() {
  local path=$1; shift
  local procs; case $path in nginx*) procs=$(nginx_pids) ;; *) procs=${gate_pid[$path]} ;; esac
  local before; before=$(cpu_ticks $procs)
  "$bin/smtpgate-loadgen" send --target "127.0.0.1:${port[$path]}" --starttls --quiet \
    --cores 1 --json "$work/run.json" "$@" >/dev/null 2>"$work/send.err" || true
  local after; after=$(cpu_ticks $procs)
  python3 - "$work/run.json" "$((after - before))" "$hz" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); ticks, hz = int(sys.argv[2]), int(sys.argv[3])
ok = r["messages_ok"]; secs = r["elapsed_s"] if "elapsed_s" in r else r["duration_s"]
print(f'{ok / secs:.0f} {ticks / hz * 1000 / max(ok, 1) * 1000:.1f} {ok} {r.get("messages_failed", 0)}')
PY
}

summary() {  # label, then lines "rate cpu ok failed"
  python3 -c '
import sys, statistics
label = sys.argv[1]; rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
rates = [r[0] for r in rows]; cpus = [r[1] for r in rows]
print(f"{label:<10} {statistics.median(rates):>9.0f} ({min(rates):.0f}-{max(rates):.0f}) {statistics.median(cpus):>10.1f} ({min(cpus):.1f}-{max(cpus):.1f})  failed {sum(r[3] for r in rows):.0f}")
' "$1"
}

paired() {  # label, then lines "rate cpu ok failed" of a path and of nginx in the same round
  python3 -c '
import sys, statistics
label = sys.argv[1] + " / nginx"
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
rates = [r[0] / r[4] for r in rows]; cpus = [r[1] / r[5] for r in rows]
print(f"{label:<18} msgs/s x{statistics.median(rates):.3f} ({min(rates):.3f}-{max(rates):.3f}), "
      f"CPU x{statistics.median(cpus):.3f} ({min(cpus):.3f}-{max(cpus):.3f}, {sum(c < 1 for c in cpus)} of {len(cpus)} rounds below 1)")
' "$1"
}

for shape in "reused|--connections 20 --size 1k --duration ${seconds}s" \
             "per-connection|--connections 10 --size 1k --per-connection --duration ${seconds}s"; do
  name=${shape%%|*}; args=${shape#*|}
  echo "== $name: $args (proxy CPU in ms per 1000 messages; per-connection: = per 1000 connections)"
  printf '%-10s %9s %11s %10s %12s\n' path "msgs/s" "(min-max)" "CPU" "(min-max)"
  declare -A results=()
  for r in $(seq 0 $((rounds - 1))); do
    n=${#paths[@]}
    for i in $(seq 0 $((n - 1))); do
      path=${paths[$(((i + r) % n))]}
      results[$path]+="$(run "$path" $args)"$'\n'
    done
  done
  for path in "${paths[@]}"; do printf '%s' "${results[$path]}" | summary "$path"; done
  if [ -n "${results[nginx]:-}" ]; then
    for path in "${paths[@]}"; do
      [ "$path" = nginx ] && continue
      paste <(printf '%s' "${results[$path]}") <(printf '%s' "${results[nginx]}") | paired "$path"
    done
  fi
  unset results
done
