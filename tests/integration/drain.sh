#!/bin/bash
# A graceful stop answers every request a client has begun, each with
# Connection: close, and closes idle connections at once:
#  1. requests whose headers, or whose body, are partly received when the
#     stop comes are answered once the client sends the rest, while new
#     connections are refused;
#  2. an idle keep-alive connection is closed, and does not hold the stop
#     until the end of its grace period;
#  3. requests in the kernel's socket buffer, not yet read by the worker
#     (held stopped while they arrive), are answered: one whole, one
#     begun, whose client sends the rest after the stop.
# The clients are in drain.py; one worker, so that it holds them all.
. "$(dirname "$0")/lib.sh"
need psql python3

DRAIN=$top_srcdir/tests/integration/drain.py
HOST='Host: 127.0.0.1\r\n'
JSON='Content-Type: application/json\r\n'
# A request on each connection first: once it is answered, the worker
# has accepted the connection, which the stop cannot then find waiting in
# the listen queue.
HEALTHZ="send=GET /healthz HTTP/1.1\\r\\n$HOST\\r\\n"
# The header of an increment whose body is 27 bytes long.
POST="POST /increment HTTP/1.1\\r\\n$HOST${JSON}Content-Length: 27\\r\\n\\r\\n"

# client NAME STEP...: drain.py in the background, its output in
# $T/NAME.out, its pid in CLIENT_PID.
client() {
	local name=$1
	shift
	python3 "$DRAIN" "$TPORT" "$@" >"$T/$name.out" 2>&1 &
	CLIENT_PID=$!
	BGPIDS+=("$CLIENT_PID")
}

# wait_file FILE: poll (10 s) until FILE exists.
wait_file() {
	local i
	for i in $(seq 100); do
		[ -e "$1" ] && return 0
		sleep 0.1
	done
	return 1
}

# answer NAME LABEL WORD: what client NAME printed of response LABEL.
answer() { sed -n "s/^$2 $3 //p" "$T/$1.out"; }

# answered LABEL NAME KEY VALUE: client NAME got a 202 for KEY's total
# VALUE, with Connection: close, and then the end of the connection.
answered() {
	assert_eq "$1: 202" 202 "$(answer "$2" post status)"
	assert_eq "$1: Connection: close" close "$(answer "$2" post connection)"
	assert_eq "$1: the total" "{\"key\":\"$3\",\"value\":$4}" \
	    "$(answer "$2" post body | json_min)"
	assert_eq "$1: then the server closes the connection" eof \
	    "$(tail -n 1 "$T/$2.out")"
}

# sigterm_pending PID: SIGTERM (bit 15) waits in the stopped process.
sigterm_pending() {
	local m
	m=$(sed -n 's/^ShdPnd:[[:space:]]*//p' "/proc/$1/status")
	[ $((0x${m:-0} & 0x4000)) != 0 ]
}

pg_start
tallyd_conf "[server]" "workers = 1"

# ================================================================ 1
note "1: requests partly received when the stop comes"
tallyd_start
client head1 "$HEALTHZ" response=healthz \
    "send=POST /increment HTTP/1.1\\r\\n$HOST${JSON}Content-Le" \
    "touch=$T/head1.sent" "await=$T/go1" \
    "send=ngth: 27\\r\\n\\r\\n{\"key\":\"drain-h\",\"value\":2}" \
    response=post eof
head1=$CLIENT_PID
client body1 "$HEALTHZ" response=healthz "send=$POST{\"key\":\"drain-b\"," \
    "touch=$T/body1.sent" "await=$T/go1" "send=\"value\":3}" response=post eof
body1=$CLIENT_PID
{ wait_file "$T/head1.sent" && wait_file "$T/body1.sent"; } ||
    die "the clients did not send their first parts"
kill -TERM "$TALLYD_PID"
wait_grep 5 "$TALLYD_LOG" 'stopping: 2 connections with a request'
assert_match "the worker waits for both connections" \
    'stopping: 2 connections with a request in progress' \
    "$(grep 'worker info: stopping' "$TALLYD_LOG")"
# Meanwhile a new connection is refused, not left in the listen queue.
st=0
curl -s -o /dev/null -m 5 "$BASE/healthz" || st=$?
assert_eq "a new connection during the stop: refused (curl exit 7)" 7 "$st"
touch "$T/go1"
wait "$head1" "$body1"
answered "headers partly received at the stop" head1 drain-h 2
answered "body partly received at the stop" body1 drain-b 3
tallyd_stopped "1"
assert_eq "PostgreSQL has drain-h" 2 "$(pg_value drain-h)"
assert_eq "PostgreSQL has drain-b" 3 "$(pg_value drain-b)"

# ================================================================ 2
note "2: an idle keep-alive connection"
tallyd_start
client idle2 "$HEALTHZ" response=healthz "touch=$T/idle2.ready" eof
idle2=$CLIENT_PID
wait_file "$T/idle2.ready" || die "the idle client did not get its answer"
assert_eq "the connection is kept alive" keep-alive \
    "$(answer idle2 healthz connection)"
kill -TERM "$TALLYD_PID"
# The grace for requests in progress is 10 s.
if wait_gone 5 "$TALLYD_PID"; then
	ok "the idle connection does not hold the stop"
else
	notok "tallyd still runs 5 s after SIGTERM with an idle connection"
fi
tallyd_stopped "2"
wait "$idle2"
assert_eq "the idle connection is closed" eof "$(tail -n 1 "$T/idle2.out")"

# ================================================================ 3
note "3: requests in the socket buffer, not yet read"
tallyd_start
client whole3 "$HEALTHZ" response=healthz "touch=$T/whole3.ready" \
    "await=$T/go3" "send=$POST{\"key\":\"drain-w\",\"value\":4}" \
    "touch=$T/whole3.sent" response=post eof
whole3=$CLIENT_PID
client part3 "$HEALTHZ" response=healthz "touch=$T/part3.ready" \
    "await=$T/go3" "send=$POST{\"key\":\"drain-k\"," "touch=$T/part3.sent" \
    "await=$T/go3b" "send=\"value\":5}" response=post eof
part3=$CLIENT_PID
{ wait_file "$T/whole3.ready" && wait_file "$T/part3.ready"; } ||
    die "the clients did not get their first answers"
worker=$(role_pids worker)
assert_match "the worker's pid" '^[0-9]+$' "$worker"
kill -STOP "$worker"
touch "$T/go3"
{ wait_file "$T/whole3.sent" && wait_file "$T/part3.sent"; } ||
    die "the clients did not send their requests"
# Recv-Q, the bytes the worker has not read, of each connection.
assert_eq "both requests wait in the kernel's socket buffers" 2 \
    "$(ss -Htn state established "( sport = :$TPORT )" |
    awk '$1 > 0 { n++ } END { print n + 0 }')"
kill -TERM "$TALLYD_PID"
for i in $(seq 100); do
	sigterm_pending "$worker" && break
	sleep 0.1
done
if sigterm_pending "$worker"; then
	ok "the master's SIGTERM waits in the stopped worker"
else
	notok "the master's SIGTERM did not reach the stopped worker"
fi
kill -CONT "$worker"
wait_grep 5 "$TALLYD_LOG" 'stopping: 2 connections with a request'
assert_match "the worker waits for both connections" \
    'stopping: 2 connections with a request in progress' \
    "$(grep 'worker info: stopping' "$TALLYD_LOG")"
touch "$T/go3b"
wait "$whole3" "$part3"
answered "a whole request in the socket buffer at the stop" whole3 drain-w 4
answered "a request begun in the socket buffer at the stop" part3 drain-k 5
tallyd_stopped "3"
assert_eq "PostgreSQL has drain-w" 4 "$(pg_value drain-w)"
assert_eq "PostgreSQL has drain-k" 5 "$(pg_value drain-k)"
