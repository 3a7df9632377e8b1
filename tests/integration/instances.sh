#!/bin/bash
# What one instance owns no second instance takes, whatever else differs
# in their configurations: its journal directory and its control socket;
# and a daemon whose start fails leaves neither pid file nor socket.
. "$(dirname "$0")/lib.sh"
need psql

OUT=$T/second.out
out() { cat "$OUT"; }

# second [ARG]...: start another tallyd -f on the test configuration with
# its own state directory, node, port, pid file and control socket, then
# the ARGs (overrides that put it on the first's files).  A refusal is
# awaited; a second instance that serves instead is stopped by pid.  The
# exit status lands in ST (or "started"), the output in $OUT.
second() {
	local port pid pids i
	port=$(free_port) || die "no free port"
	"$TALLYD" -f -c "$CONF" -o server.listen="127.0.0.1:$port" \
	    -o server.state_dir="$T/state2" -o server.node=second \
	    -o server.pid_file="$T/tallyd2.pid" \
	    -o server.control_socket="$T/tallyd2.sock" "$@" \
	    </dev/null >"$OUT" 2>&1 &
	pid=$!
	for i in $(seq 150); do
		pid_alive "$pid" || break
		[ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' \
		    "http://127.0.0.1:$port/healthz")" = 200 ] && break
		sleep 0.1
	done
	if pid_alive "$pid"; then
		ST=started
		pids="$pid $(descendants "$pid")"
		kill -TERM "$pid"
		# shellcheck disable=SC2086
		wait_gone 30 "$pid" || kill -9 $pids 2>/dev/null
		# shellcheck disable=SC2086
		wait_gone 10 $pids || kill -9 $pids 2>/dev/null
		wait "$pid" 2>/dev/null
		return
	fi
	wait "$pid"
	ST=$?
}

pg_start
tallyd_conf
tallyd_start
assert_eq "the first instance serves" 202 "$(post k 1)"

# ---- the journal directory
# Two instances on one journal would overwrite each other's acknowledged
# frames: the second is refused before it writes anything.
second -o journal.dir="$T/state/journal"
assert_eq "a second tallyd on the same journal.dir: exit 2" 2 "$ST"
assert_match "... saying who holds it" \
    "another tallyd \\(pid $TALLYD_PID\\) is running on journal directory $T/state/journal" \
    "$(out)"
assert_eq "... and the first still serves" 202 "$(post k 2)"
assert_eq "... with every increment" "k 3" "$(tallyctl get k)"
others=
for f in "$T"/state/journal/*; do
	case "$f" in *.seg) ;; *) others="$others $(basename "$f")" ;; esac
done
assert_eq "the default journal.dir holds segments and the lock only" \
    " tallyd.lock" "$others"
out=$(tallyctl journal verify 2>&1); st=$?
assert_eq "journal verify beside the lock file: exit 0" 0 "$st"

# ---- the control socket
# Taking it over would leave the first instance out of tallyctl's reach.
second -o server.control_socket="$T/tallyd.sock"
assert_eq "a second tallyd on the same control_socket: exit 2" 2 "$ST"
assert_match "... saying why" \
    "another tallyd is listening on control socket $T/tallyd.sock" "$(out)"
assert_eq "... and tallyctl still reaches the first" 0 \
    "$(tallyctl status >/dev/null; echo $?)"
# A socket that nothing answers on, left by a master killed -9, is not
# another instance's: the next start replaces it.
tallyd_kill9_all
assert_eq "kill -9 leaves the control socket" yes \
    "$([ -S "$T/tallyd.sock" ] && echo yes || echo no)"
tallyd_start
assert_eq "a restart replaces it: tallyctl status" 0 \
    "$(tallyctl status >/dev/null; echo $?)"

tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"

# ---- a daemon start that fails after writing its pid file
# Recovery refuses a journal segment that is not one; by then the pid
# file and the control socket exist, and an init script would later kill
# whatever process has that pid.
mkdir -p "$T/state3/journal"
head -c 4096 /dev/zero | tr '\0' x >"$T/state3/journal/0000000000000000.seg"
st=0
timeout 60 "$TALLYD" -c "$CONF" -o server.state_dir="$T/state3" \
    </dev/null >"$OUT" 2>&1 || st=$?
assert_eq "a daemon whose recovery fails exits with recovery's fatal code" 2 "$st"
assert_match "... and says so on the terminal" "start failed .*see the log" "$(out)"
assert_eq "... leaving no pid file" no \
    "$([ -e "$T/tallyd.pid" ] && echo yes || echo no)"
assert_eq "... and no control socket" no \
    "$([ -e "$T/tallyd.sock" ] && echo yes || echo no)"
if port_free "$TPORT"; then
	ok "... and nothing listens"
else
	notok "something listens on $TPORT after the failed start"
fi
