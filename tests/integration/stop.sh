#!/bin/bash
# A graceful stop leaves PostgreSQL holding every acknowledged increment,
# with the checkpoint at the journal's end, even when the stop reaches a
# process in the middle of work that began before the last increments
# were acknowledged:
#  1. the flusher, in a flush that a second session's lock on the counters
#     keeps waiting until the stop has reached it;
#  2. the syncer (sync = interval), held by gdb in the fdatasync of a pass
#     whose scan ended before the last frame was written;
#  3. every process at once, as ^C in a terminal reaches the whole process
#     group: only the master acts on SIGINT (and SIGHUP, which "pkill -HUP"
#     sends to every process), so the stop still goes in order;
#  4. the startup process, in a recovery the test holds: the master ends
#     it at once and exits, starting nothing.
. "$(dirname "$0")/lib.sh"
need psql gdb

# stopped NODE: tallyd has exited, cleanly, and PostgreSQL's checkpoint
# for NODE and the flusher's last word are the journal's end.
stopped() {
	tallyd_stopped "$1"
	checkpoint_at_journal_end "$1" "$1"
	assert_match "$1: the log's final flush is at the journal's end" \
	    "final flush done at LSN $JOURNAL_END\$" \
	    "$(grep 'final flush done' "$TALLYD_LOG")"
}

pg_start

# ================================================================ 1
note "1: the stop reaches the flusher in the middle of a flush"
tallyd_conf "[server]" "node = stop1"
tallyd_start
[ "$(post stop-a 1)" = 202 ] || notok "POST stop-a: $(last_status)"
pg_wait_value stop-a 1

# The lock holder reads its SQL from a fifo, so that it commits when told.
mkfifo "$T/locker.in"
psql "$DSN" -XAtq <"$T/locker.in" >"$T/locker.out" 2>&1 &
LOCKER=$!
BGPIDS+=("$LOCKER")
exec 7>"$T/locker.in"
# EXCLUSIVE blocks the flusher's writes, not its reads.
echo "begin; lock table tally_counters in exclusive mode; select 'locked';" >&7
wait_grep 5 "$T/locker.out" '^locked$'
assert_eq "a second session locks tally_counters" locked \
    "$(grep -x locked "$T/locker.out")"

# lock_waiters: backends waiting for a lock on a relation.
lock_waiters() {
	pg_sql "select count(*) from pg_stat_activity
	    where wait_event_type = 'Lock' and wait_event = 'relation'"
}
[ "$(post stop-a 1)" = 202 ] || notok "POST stop-a again: $(last_status)"
for i in $(seq 100); do
	[ "$(lock_waiters)" = 1 ] && break
	sleep 0.1
done
assert_eq "the flusher's next flush waits for the lock" 1 "$(lock_waiters)"

# Acknowledged while that flush waits: beyond the durable position it read.
[ "$(post stop-b 1)" = 202 ] || notok "POST stop-b: $(last_status)"

others="$(role_pids worker) $(role_pids syncer)"
assert_eq "tallyctl status lists two workers and the syncer" 3 \
    "$(echo $others | wc -w)"
kill -TERM "$TALLYD_PID"
# shellcheck disable=SC2086
wait_gone 10 $others || notok "the workers and the syncer did not stop"
# The master signals the flusher as soon as it has reaped the syncer.
sleep 0.5
assert_eq "the flush still waits when the stop reaches the flusher" 1 \
    "$(lock_waiters)"
echo "commit;" >&7
exec 7>&-
wait "$LOCKER"
stopped stop1
assert_eq "PostgreSQL has stop-a's two increments" 2 "$(pg_value stop-a)"
assert_eq "PostgreSQL has stop-b, acknowledged during the waiting flush" 1 \
    "$(pg_value stop-b)"

# ================================================================ 2
note "2: the stop reaches the syncer in the middle of a pass"
rm -rf "$T/state"
tallyd_conf "[server]" "node = stop2" "[journal]" "sync = interval" \
    "sync_interval = 10ms"
tallyd_start
[ "$(post stop-c 1)" = 202 ] || notok "POST stop-c: $(last_status)"
pg_wait_value stop-c 1
syncer=$(role_pids syncer)
workers=$(role_pids worker)
assert_match "the syncer's pid" '^[0-9]+$' "$syncer"
# gdb holds the syncer at its next journal_sync, which comes only with a
# frame to sync, until told to let it go.
gdb_attach "$syncer" "$T/gdb.out" -ex 'break journal_sync' -ex continue \
    -ex "shell for i in \$(seq 300); do [ -e '$T/go' ] && break; sleep 0.1; done" \
    -ex detach
[ "$(post stop-c 1)" = 202 ] || notok "POST stop-c again: $(last_status)"
wait_grep 10 "$T/gdb.out" '^Breakpoint 1, .*journal_sync'
assert_match "gdb holds the syncer in journal_sync" \
    'Breakpoint 1, .*journal_sync' "$(cat "$T/gdb.out")"
# Acknowledged (sync = interval) after the held pass's scan.
[ "$(post stop-d 1)" = 202 ] || notok "POST stop-d: $(last_status)"
kill -TERM "$TALLYD_PID"
# shellcheck disable=SC2086
wait_gone 10 $workers || notok "the workers did not stop"
# The master signals the syncer as soon as it has reaped the workers; the
# signal waits in the held syncer until gdb lets it go.
sleep 0.5
assert_eq "gdb still holds the syncer when the stop reaches it" 1 \
    "$(grep -c '^Breakpoint 1, ' "$T/gdb.out")"
touch "$T/go"
wait "$GDB_PID"
stopped stop2
assert_eq "PostgreSQL has stop-c's two increments" 2 "$(pg_value stop-c)"
assert_eq "PostgreSQL has stop-d, written after the held pass's scan" 1 \
    "$(pg_value stop-d)"

# ================================================================ 3
note "3: SIGHUP, then SIGINT, to every process"
rm -rf "$T/state"
# An increment waits out commit_delay in its worker when SIGINT comes.
tallyd_conf "[server]" "node = stop3" "[journal]" "sync = interval" \
    "commit_delay = 800ms" "[postgres]" "flush_interval = 1h"
tallyd_start
all="$TALLYD_PID $(descendants "$TALLYD_PID")"
# shellcheck disable=SC2086
kill -HUP $all
wait_grep 10 "$TALLYD_LOG" 'reload: configuration applied'
# Time for a child that died of the signal to be reaped and logged.
sleep 0.5
assert_eq "after SIGHUP to every process: POST" 202 "$(post stop-e 1)"
assert_eq "after SIGHUP to every process: the same processes" "$all" \
    "$TALLYD_PID $(descendants "$TALLYD_PID")"
no_crashes
http POST /increment -H 'Content-Type: application/json' \
    --data-binary '{"key":"stop-f","value":5}' >"$T/f.status" &
fpid=$!
BGPIDS+=("$fpid")
sleep 0.3
# shellcheck disable=SC2086
kill -INT $all
wait "$fpid"
assert_eq "the POST in flight at SIGINT is answered" 202 "$(cat "$T/f.status")"
stopped stop3
assert_eq "PostgreSQL has stop-e" 1 "$(pg_value stop-e)"
assert_eq "PostgreSQL has stop-f, in flight at SIGINT" 5 "$(pg_value stop-f)"

# ================================================================ 4
note "4: a stop while recovery runs"
# gdb starts tallyd, follows the startup process and holds it at
# recovery_run, a recovery that takes as long as the test likes, until
# $T/go4 exists; then it goes on, and reaps the process if it was killed.
TALLYD_RUN=$((TALLYD_RUN + 1))
TALLYD_LOG=$T/tallyd.$TALLYD_RUN.log
gdb -q -nx -batch -ex 'set follow-fork-mode child' \
    -ex 'break recovery_run' -ex run \
    -ex "shell for i in \$(seq 300); do [ -e '$T/go4' ] && break; sleep 0.1; done" \
    -ex continue --args "$TALLYD" -f -c "$CONF" \
    </dev/null >"$T/gdb4.out" 2>"$TALLYD_LOG" &
GDB_PID=$!
BGPIDS+=("$GDB_PID")
wait_grep 30 "$T/gdb4.out" 'Breakpoint 1, '
assert_match "gdb holds the startup process in recovery_run" \
    'Breakpoint 1, .*recovery_run' "$(cat "$T/gdb4.out")"
master=$(ps -o pid= --ppid "$GDB_PID" | tr -d ' ' | head -n 1)
assert_match "the master's pid" '^[0-9]+$' "$master"
kill -TERM "$master"
wait_grep 10 "$TALLYD_LOG" 'stop during recovery'
assert_match "SIGTERM during recovery: the master ends it at once" \
    'stop during recovery: ending the startup process' "$(cat "$TALLYD_LOG")"
touch "$T/go4"
if wait_gone 10 "$master"; then
	ok "SIGTERM during recovery: the master exits"
else
	notok "SIGTERM during recovery: the master still runs"
	kill -9 "$master"
fi
assert_eq "SIGTERM during recovery: no child was started" 0 \
    "$(grep -c 'serving on' "$TALLYD_LOG")"
wait "$GDB_PID"
tallyd_start
assert_eq "the next start serves" 202 "$(post stop-g 1)"
tallyd_stop TERM
assert_eq "the next start: SIGTERM exit status" 0 "$TALLYD_STATUS"
