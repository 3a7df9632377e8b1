#!/bin/bash
# A worker killed after it won its journal reservation and before it noted
# the range in its slot: nothing will ever write that range, and every
# frame after it waits on it.  The syncer must pad it, from the range the
# worker noted before it tried, so that the journal does not stall (the
# increments after it acknowledged, and in PostgreSQL once).  Then twice
# in the same worker slot while the syncer is stopped: the second range
# must not be lost for want of room.  gdb stops the worker as
# journal_reserve returns; the kill is a real SIGKILL.
. "$(dirname "$0")/lib.sh"
need psql gdb

pg_start
tallyd_conf
sed -i 's/^workers = .*/workers = 1/' "$CONF"
tallyd_start

worker_pid() {
	tallyctl status | sed -n 's/.*worker *pid \([0-9]*\).*/\1/p' | head -n 1
}

# kill_in_reserve WHAT VALUE: the worker is killed as journal_reserve
# returns the range for a POST of a by VALUE (which is never answered).
KILLED=
kill_in_reserve() {
	local w g i out
	for i in $(seq 100); do
		w=$(worker_pid)
		[ -n "$w" ] && pid_alive "$w" && break
		sleep 0.1
	done
	assert_match "$1: the worker's pid" '^[0-9]+$' "$w"
	out=$T/gdb.$w
	gdb_attach "$w" "$out" -ex 'break journal_reserve' -ex continue \
	    -ex finish -ex kill
	g=$GDB_PID
	curl -s -m 20 -o /dev/null -H 'Content-Type: application/json' \
	    --data-binary "{\"key\":\"a\",\"value\":$2}" "$BASE/increment" &
	BGPIDS+=($!)
	for i in $(seq 200); do
		pid_alive "$g" || break
		sleep 0.1
	done
	g=$(tr '\n' ' ' <"$out")
	assert_match "$1: gdb stopped the worker as journal_reserve returned its LSN" \
	    'in worker_write .*Value returned is [$][0-9]+ = [0-9]+' "$g"
	[[ "$g" == *"Value returned"* ]] || sed 's/^/#   gdb: /' "$out"
	for i in $(seq 100); do
		grep -q "worker (pid $w) killed by signal 9" "$TALLYD_LOG" && break
		sleep 0.1
	done
	assert_match "$1: the worker died of SIGKILL" \
	    "worker \\(pid $w\\) killed by signal 9" "$(cat "$TALLYD_LOG")"
	KILLED="$KILLED $w"
}

assert_eq "an increment before" 202 "$(post a 1)"
kill_in_reserve "once" 2
# Its range is a hole: the next worker's frames come after it.
assert_eq "once: an increment after, acknowledged" 202 "$(post a 4)"
assert_match "once: the syncer padded the range the dead worker won" \
    'padded journal range [0-9]+\.\.[0-9]+ left unwritten by a worker' \
    "$(cat "$TALLYD_LOG")"
pg_wait_value a 5

# Twice in slot 0 before the syncer can pad the first.
syncer=$(tallyctl status | sed -n 's/.*syncer *pid \([0-9]*\).*/\1/p' | head -n 1)
assert_match "the syncer's pid" '^[0-9]+$' "$syncer"
kill -STOP "$syncer"
kill_in_reserve "twice, first" 8
kill_in_reserve "twice, second" 16
kill -CONT "$syncer"
assert_eq "twice: an increment after, acknowledged" 202 "$(post a 32)"
assert_eq "twice: both ranges padded" 3 \
    "$(grep -c 'padded journal range .* left unwritten by a worker' "$TALLYD_LOG")"
pg_wait_value a 37
assert_eq "GET a: the increments acknowledged, once" '{"a":37}' "$(get a)"

# No process died but the three killed here.
assert_eq "no other process died" "$(echo $KILLED | tr ' ' '\n' | sort | tr '\n' ' ')" \
    "$(grep -E 'killed by signal|exited with code|fatal code' "$TALLYD_LOG" |
    sed -n 's/.*(pid \([0-9]*\)).*/\1/p' | sort -u | tr '\n' ' ')"
kill -TERM "$TALLYD_PID"
wait_gone 30 "$TALLYD_PID" || die "tallyd did not stop within 30 s of SIGTERM"
wait "$TALLYD_PID"
assert_eq "SIGTERM: exit status" 0 "$?"
TALLYD_PID=
st=0
tallyctl journal verify >"$T/verify" 2>&1 || st=$?
assert_eq "journal verify" 0 "$st"
[ "$st" = 0 ] || sed 's/^/#   /' "$T/verify"
