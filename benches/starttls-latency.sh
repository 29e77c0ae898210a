#!/usr/bin/env bash
# STARTTLS latency with an OpenSSL client (not a test): Python's smtplib, whose socket
# keeps Nagle's algorithm on as most MTAs' do, runs whole sessions one after another
# (EHLO, STARTTLS, EHLO, MAIL, RCPT, DATA, QUIT) through
#   inspect     smtpgate starttls = "inspect" (TLS 1.3), plaintext to the sink,
#   inspect12   the same with [tls] protocols = ["TLSv1.2"],
#   passthrough smtpgate starttls = "passthrough" to a STARTTLS sink (the client's TLS
#               ends at the sink),
# and with BASELINE=/path/to/an/older/smtpgate, `base`: that binary as `inspect`.
# Prints per path the median, 90th percentile and maximum, in ms, of the STARTTLS
# handshake, of the EHLO that follows it, and of the whole session. The load
# generator (rustls) writes its EHLO together with its TLS Finished and cannot show a
# stall that waits for the Finished to be acknowledged; this client can.
#
# Usage: [BASELINE=BINARY] benches/starttls-latency.sh [SESSIONS]
set -euo pipefail
cd "$(dirname "$0")/.."

sessions=${1:-50}
# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_need "apt-get install openssl python3" openssl python3
cargo build --release -q -p smtpgate -p smtpgate-loadgen
bin=${CARGO_TARGET_DIR:-target}/release

start_starttls_peers "$bin"
inspect="upstream = \"127.0.0.1:$plain_sink\"
starttls = \"inspect\"
upstream_tls = \"off\""
start_tls_gate inspect "$bin/smtpgate" "" "$inspect"
start_tls_gate inspect12 "$bin/smtpgate" 'protocols = ["TLSv1.2"]' "$inspect"
start_tls_gate passthrough "$bin/smtpgate" "" "upstream = \"127.0.0.1:$tls_sink\"
starttls = \"passthrough\""
paths=(inspect inspect12 passthrough)
if [ -n "${BASELINE:-}" ]; then start_tls_gate base "$BASELINE" "" "$inspect"; paths+=(base); fi

printf '%-12s %24s %24s %24s\n' path "STARTTLS p50/p90/max" "EHLO after p50/p90/max" "session p50/p90/max"
for path in "${paths[@]}"; do
  python3 - "${gate_port[$path]}" "$sessions" "$path" <<'PY'
import smtplib, ssl, statistics, sys, time
port, sessions, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
context = ssl._create_unverified_context()
steps = {"starttls": [], "ehlo": [], "session": []}
for _ in range(sessions):
    start = time.monotonic()
    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
    s.ehlo("python.test")
    t = time.monotonic(); s.starttls(context=context); steps["starttls"].append(time.monotonic() - t)
    t = time.monotonic(); s.ehlo("python.test"); steps["ehlo"].append(time.monotonic() - t)
    s.sendmail("a@python.test", ["b@example.test"], b"Subject: latency\r\n\r\nhello\r\n")
    s.quit()
    steps["session"].append(time.monotonic() - start)
def cell(values):
    q = statistics.quantiles(values, n=10)
    return f"{statistics.median(values) * 1000:.2f} / {q[8] * 1000:.2f} / {max(values) * 1000:.1f}"
print(f"{path:<12} {cell(steps['starttls']):>24} {cell(steps['ehlo']):>24} {cell(steps['session']):>24}")
PY
done
