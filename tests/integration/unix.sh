#!/bin/bash
# HTTP over a Unix socket (listen = unix:/path), beside a TCP address:
# the same API over HTTP/1.1 and HTTP/2 with the same totals, mode 0666,
# both addresses in tallyctl status (its JSON intact by a quote in the path),
# rate limits as tallyd.conf(5) says for Unix-socket peers, the socket
# file removed at a stop and replaced when a killed tallyd left it; a
# path another server answers on, or a file that is not a socket, is
# left alone and the start refused; bad paths are refused by -t.
. "$(dirname "$0")/lib.sh"
need psql python3

pg_start
# A quote in the path: tallyctl status must still be JSON.
SOCK=$T/'ht"tp.sock'

# ---- bad paths

out=$("$TALLYD" -t -c /dev/null -o server.listen=unix:http.sock 2>&1)
assert_eq "-t: relative path refused" 1 "$?"
assert_match "-t: says why" \
    "bad value 'unix:http.sock' for server.listen: expected an absolute path after unix:" \
    "$out"
long=/tmp/$(printf 'x%.0s' $(seq 110))
out=$("$TALLYD" -t -c /dev/null -o "server.listen=unix:$long" 2>&1)
assert_eq "-t: path over 107 characters refused" 1 "$?"
assert_match "-t: says so" 'a Unix socket path longer than 107 characters' "$out"

# ---- the API over the socket

tallyd_conf "[ratelimit]" "rate = 0.01" "burst = 2" "trusted_proxies = unix" \
    "[journal]" "dir = $T/jo\"urnal"
sed -i "s|^listen = .*|& unix:$SOCK|" "$CONF"
tallyd_start
assert_eq "socket file is a socket" socket "$(stat -c %F "$SOCK")"
assert_eq "socket mode 0666" 666 "$(stat -c %a "$SOCK")"
assert_eq "tallyctl status lists the addresses" \
    "listening on 127.0.0.1:$TPORT unix:$SOCK" \
    "$(tallyctl status | grep '^listening on')"
assert_eq "tallyctl --json status: JSON, with the paths" "unix:$SOCK $T/jo\"urnal" \
    "$(tallyctl --json status | python3 -c 'import json, sys
j = json.load(sys.stdin)
print(j["listen"][1], j["journal"]["dir"])')"
U=(--unix-socket "$SOCK")
assert_eq "POST over the socket" 202 "$(post_body '{"key":"u","value":2}' "${U[@]}")"
assert_eq "POST over the socket: the total" '{"key":"u","value":2}' "$(last_body)"
assert_eq "POST over HTTP/2 on the socket" 202 \
    "$(post_body '{"key":"u","value":3}' --http2-prior-knowledge "${U[@]}")"
assert_match "... answered in HTTP/2" '^HTTP/2 202' "$(head -n 1 "$T/last.headers")"
assert_eq "GET over TCP sees both" '{"u":5}' "$(get u)"
http GET /increment/u "${U[@]}" >/dev/null
assert_eq "GET over the socket" '{"u":5}' "$(last_body)"

# Rate limits: TCP clients have a burst of 2; a Unix-socket peer is not
# limited, unless (trusted_proxies = unix) X-Forwarded-For names a client.
assert_eq "TCP client: its burst of 2 spent by a GET and a POST, the next refused" \
    202429 "$(post tcp 1)$(post tcp 1)"
codes=
for i in 1 2 3 4 5; do codes+=$(post_body '{"key":"s","value":1}' "${U[@]}"); done
assert_eq "Unix-socket peer: not limited" 202202202202202 "$codes"
codes=
for i in 1 2 3; do
	codes+=$(post_body '{"key":"s","value":1}' "${U[@]}" \
	    -H 'X-Forwarded-For: 198.51.100.7')
done
assert_eq "Unix-socket proxy naming a client: that client is limited" \
    202202429 "$codes"

# ---- the socket file at a stop, and after a kill

tallyd_stop TERM
assert_eq "graceful stop: exit 0" 0 "$TALLYD_STATUS"
assert_eq "graceful stop: socket file removed" no \
    "$([ -e "$SOCK" ] && echo yes || echo no)"
tallyd_start
tallyd_kill9_all
assert_eq "kill -9: the socket file is left" socket "$(stat -c %F "$SOCK")"
tallyd_start
assert_eq "next start: the left socket replaced, and served" 202 \
    "$(post_body '{"key":"u","value":1}' "${U[@]}")"
tallyd_stop TERM

# ---- a path that is not ours

python3 - "$SOCK" <<'EOF' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(1)
open(sys.argv[1] + ".up", "w").close()
time.sleep(60)
EOF
other=$!
BGPIDS+=("$other")
for i in $(seq 100); do [ -e "$SOCK.up" ] && break; sleep 0.1; done
"$TALLYD" -f -c "$CONF" >"$T/refused.out" 2>&1 </dev/null
assert_eq "another server on the path: exit 2" 2 "$?"
assert_match "another server on the path: says so" \
    "another server is listening on unix:$SOCK" "$(cat "$T/refused.out")"
assert_eq "another server on the path: its socket is left" socket \
    "$(stat -c %F "$SOCK")"
kill "$other"
wait "$other" 2>/dev/null
rm -f "$SOCK" "$SOCK.up"

echo data >"$SOCK"
"$TALLYD" -f -c "$CONF" >"$T/refused.out" 2>&1 </dev/null
assert_eq "a file that is not a socket: exit 2" 2 "$?"
assert_match "a file that is not a socket: says why" \
    "cannot listen on unix:$SOCK: Address already in use" \
    "$(cat "$T/refused.out")"
assert_eq "a file that is not a socket: left as it was" data "$(cat "$SOCK")"
pg_wait_value u 6
pg_wait_value s 7
pg_wait_value tcp 1
