#!/bin/bash
# A worker killed after it won its journal reservation and before it noted
# the range in its slot: nothing will ever write that range, and every
# frame after it waits on it.  The syncer must pad it, from the range the
# worker noted before it tried, so that the journal does not stall (the
# increments after it acknowledged, and in PostgreSQL once).  Then twice
# in the same worker slot while the syncer is stopped: the second range
# must not be lost for want of room.  gdb stops the worker as
# journal_reserve returns; the kill is a real SIGKILL.  Last, two workers
# that died trying for the same range, one having won it: the syncer must
# pad the winner's range, neither more nor less.
. "$(dirname "$0")/lib.sh"
need psql gdb

pg_start
tallyd_conf
sed -i 's/^workers = .*/workers = 1/' "$CONF"
tallyd_start

# worker_pid [N]: the pid of the Nth worker tallyctl status lists.
worker_pid() {
	tallyctl status | sed -n 's/.*worker *pid \([0-9]*\).*/\1/p' |
	    sed -n "${1:-1}p"
}

# died WHO PID: the master logs (10 s) that worker PID died of SIGKILL.
died() {
	local i
	for i in $(seq 100); do
		grep -q "worker (pid $2) killed by signal 9" "$TALLYD_LOG" && break
		sleep 0.1
	done
	assert_match "$1 died of SIGKILL" \
	    "worker \\(pid $2\\) killed by signal 9" "$(cat "$TALLYD_LOG")"
}

# kill_in_reserve WHAT VALUE [KEY]: the worker is killed as journal_reserve
# returns the range for a POST of KEY (a) by VALUE (which is never
# answered).
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
	    -ex finish -ex 'print/x W.slot->res_try' -ex kill
	g=$GDB_PID
	curl -s -m 20 -o /dev/null -H 'Content-Type: application/json' \
	    --data-binary "{\"key\":\"${3:-a}\",\"value\":$2}" "$BASE/increment" &
	BGPIDS+=($!)
	for i in $(seq 200); do
		pid_alive "$g" || break
		sleep 0.1
	done
	g=$(tr '\n' ' ' <"$out")
	assert_match "$1: gdb stopped the worker as journal_reserve returned its LSN" \
	    'in worker_write .*Value returned is [$][0-9]+ = [0-9]+' "$g"
	[[ "$g" == *"Value returned"* ]] || sed 's/^/#   gdb: /' "$out"
	died "$1: the worker" "$w"
	KILLED="$KILLED $w"
}

# finish PREFIX PID...: no tallyd process died but PIDs (killed here);
# a graceful stop; the journal verifies.
finish() {
	local pre=$1 st
	shift
	assert_eq "${pre}no other process died" \
	    "$(printf '%s\n' "$@" | sort | tr '\n' ' ')" \
	    "$(grep -E 'killed by signal|exited with code|fatal code' \
	    "$TALLYD_LOG" | sed -n 's/.*(pid \([0-9]*\)).*/\1/p' |
	    sort -u | tr '\n' ' ')"
	kill -TERM "$TALLYD_PID"
	wait_gone 30 "$TALLYD_PID" ||
	    die "tallyd did not stop within 30 s of SIGTERM"
	st=0
	wait "$TALLYD_PID" || st=$?
	assert_eq "${pre}SIGTERM: exit status" 0 "$st"
	TALLYD_PID=
	st=0
	tallyctl journal verify >"$T/verify" 2>&1 || st=$?
	assert_eq "${pre}journal verify" 0 "$st"
	[ "$st" = 0 ] || sed 's/^/#   /' "$T/verify"
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
finish "" $KILLED

# ================================================================
note "two workers die trying for the same range"
# Both read the same insert position and noted their tries; A's exchange
# won, B's lost, and B died before its next try.  A is stopped by gdb as
# journal_reserve returns, as above.  B's note is what its lost try
# left: the same start, its own end, here past A's.  gdb writes it into
# B's slot, then kills B.  Neither noted which won, so the syncer,
# stopped meanwhile, finds two unsure ranges at the hole.
sed -i 's/^workers = .*/workers = 2/' "$CONF"
KILLED=
tallyd_start
assert_eq "two workers: an increment before" 202 "$(post b 1)"
pg_wait_value b 1
syncer=$(tallyctl status | sed -n 's/.*syncer *pid \([0-9]*\).*/\1/p' | head -n 1)
wa=$(worker_pid 1)
wb=$(worker_pid 2)
assert_match "two workers: their pids" '^[0-9]+ [0-9]+$' "$wa $wb"
kill -STOP "$syncer"
# Stopped, B accepts nothing: the next POST goes to A.
kill -STOP "$wb"
kill_in_reserve "two workers, A" 2 c
kill -CONT "$wb"
# A's note: { start, end } of the range it won.
try=$(sed -n 's/.*= {\(0x[0-9a-f]*\), \(0x[0-9a-f]*\)}.*/\1 \2/p' "$T/gdb.$wa")
read -r s e <<<"$try"
assert_match "two workers: A's noted range" '^0x[0-9a-f]+ 0x[0-9a-f]+$' "$try"
gdb -q -nx -batch -p "$wb" -ex "set var W.slot->res_try[1] = $((e + 1000))" \
    -ex "set var W.slot->res_try[0] = $((s))" -ex 'print/x W.slot->res_try' \
    -ex kill >"$T/gdb.$wb" 2>&1 </dev/null
assert_match "two workers: B's note is A's start, B's end" \
    "= \\{$(printf '0x%x' $((s))), $(printf '0x%x' $((e + 1000)))\\}" \
    "$(cat "$T/gdb.$wb")"
died "two workers: B" "$wb"
kill -CONT "$syncer"
assert_eq "two workers: an increment after, acknowledged" 202 "$(post b 4)"
assert_match "two workers: the syncer padded A's range, not B's" \
    "padded journal range $((s + 0))\\.\\.$((e + 0)) left unwritten by a worker" \
    "$(cat "$TALLYD_LOG")"
pg_wait_value b 5
assert_eq "two workers: GET b" '{"b":5}' "$(get b)"
# The table took c in for the killed POST, which nothing acknowledged.
assert_eq "two workers: GET c, never acknowledged: 404" 404 \
    "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/increment/c")"
assert_eq "two workers: PostgreSQL has no row for c" 0 \
    "$(pg_sql "select count(*) from tally_counters where key = 'c'")"
out=$(tallyctl get c 2>&1)
assert_eq "two workers: tallyctl get c: exit 1" 1 "$?"
assert_match "two workers: tallyctl get c: nothing acknowledged" \
    'no increment of the key acknowledged' "$out"
finish "two workers: " "$wa" "$wb"
