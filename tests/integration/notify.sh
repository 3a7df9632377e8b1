#!/bin/bash
# The service manager's notification socket (NOTIFY_SOCKET, as systemd's
# Type=notify sets it): READY=1 with MAINPID once tallyd serves,
# RELOADING=1 and READY=1 around a reload, STOPPING=1 at a stop; every
# message from the master, none from a child, in the foreground and as a
# daemon, at a socket path or an abstract name.  A bad NOTIFY_SOCKET is
# said in the log and changes nothing else.
. "$(dirname "$0")/lib.sh"
need psql python3

pg_start
tallyd_conf

# listen NAME: a service manager's socket at NAME; messages in $OUT.
listen() {
	OUT=$T/notify.$((++NLISTEN)).out
	python3 "$top_srcdir/tests/integration/notify.py" "$1" "$OUT" \
	    "$BASE/healthz" &
	BGPIDS+=($!)
	LISTENER=$!
	for i in $(seq 100); do
		[ -e "$OUT.up" ] && return 0
		sleep 0.1
	done
	die "notify.py did not bind $1"
}
NLISTEN=0

# msg N: the Nth message, once it has come (10 s at most).
msg() {
	local i
	for i in $(seq 100); do
		[ "$(wc -l 2>/dev/null <"$OUT" || echo 0)" -ge "$1" ] && break
		sleep 0.1
	done
	sed -n "${1}p" "$OUT" 2>/dev/null
}

# ---- in the foreground, at a socket path

listen "$T/notify.sock"
NOTIFY_SOCKET=$T/notify.sock tallyd_start
m=$(msg 1)
assert_match "READY=1 from the master, with MAINPID" \
    "^$TALLYD_PID READY=1\\|MAINPID=$TALLYD_PID\\|STATUS=serving on 127.0.0.1:$TPORT with 2 workers" \
    "$m"
assert_match "READY=1 came once tallyd served" 'healthz=200$' "$m"
assert_eq "POST" 202 "$(post k 1)"

tallyctl reload >/dev/null
assert_match "reload: RELOADING=1 with MONOTONIC_USEC" \
    "^$TALLYD_PID RELOADING=1\\|MONOTONIC_USEC=[0-9]+\\|STATUS=reloading\$" \
    "$(msg 2)"
assert_match "reload: READY=1 again" "^$TALLYD_PID READY=1\\|STATUS=serving " \
    "$(msg 3)"
echo "[nosuchsection]" >>"$CONF"
kill -HUP "$TALLYD_PID"
msg 5 >/dev/null
assert_match "reload of a bad file: READY=1, saying it was not applied" \
    "^$TALLYD_PID READY=1\\|STATUS=serving; the reloaded configuration had errors" \
    "$(msg 5)"
tallyd_conf

# A child killed and started again, as the master does: still no message
# from any child, and none at all from the respawn.
kill -9 "$(role_pids worker | head -n 1)"
wait_grep 10 "$TALLYD_LOG" 'worker .* killed by signal 9' ||
    die "the master did not see the worker die"
assert_eq "POST after a worker's respawn" 202 "$(post k 1)"
master=$TALLYD_PID
kill -TERM "$TALLYD_PID"
wait_gone 30 "$TALLYD_PID" || die "tallyd did not stop"
wait "$TALLYD_PID" 2>/dev/null
TALLYD_PID=
assert_match "SIGTERM: STOPPING=1" "^$master STOPPING=1\\|STATUS=graceful stop\$" \
    "$(msg 6)"
assert_eq "every message from the master" "$master" \
    "$(cut -d' ' -f1 "$OUT" | sort -u)"
assert_eq "six messages in all" 6 "$(wc -l <"$OUT")"
kill "$LISTENER"

# ---- as a daemon, at an abstract name

listen "@tallyd-notify-$$-$TPORT"
NOTIFY_SOCKET=@tallyd-notify-$$-$TPORT "$TALLYD" -c "$CONF" \
    >"$T/daemon.out" 2>&1 </dev/null
assert_eq "daemon: started" 0 "$?"
TALLYD_PID=$(cat "$T/tallyd.pid" 2>/dev/null)
assert_match "daemon: READY=1, its MAINPID the daemon's" \
    "^$TALLYD_PID READY=1\\|MAINPID=$TALLYD_PID\\|.* healthz=200\$" "$(msg 1)"
kill -QUIT "$TALLYD_PID"
assert_match "SIGQUIT: STOPPING=1" "^$TALLYD_PID STOPPING=1\\|STATUS=fast stop\$" \
    "$(msg 2)"
wait_gone 30 "$TALLYD_PID" || die "the daemon did not stop"
TALLYD_PID=
kill "$LISTENER"

# ---- a NOTIFY_SOCKET that names no socket

NOTIFY_SOCKET=relative/path tallyd_start
assert_match "bad NOTIFY_SOCKET: said in the log" \
    "NOTIFY_SOCKET 'relative/path' is not a socket path" "$(cat "$TALLYD_LOG")"
assert_eq "bad NOTIFY_SOCKET: serves all the same" 202 "$(post k 1)"
tallyd_stop TERM
assert_eq "bad NOTIFY_SOCKET: stops cleanly" 0 "$TALLYD_STATUS"
pg_wait_value k 3
