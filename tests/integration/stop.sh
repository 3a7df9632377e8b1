#!/bin/bash
# A graceful stop leaves PostgreSQL holding every acknowledged increment,
# with the checkpoint at the journal's end, even when the stop reaches the
# flusher in the middle of a flush that began before the last increments
# were acknowledged.  A second session holds a lock on the counters that
# keeps that flush waiting until the stop has reached the flusher.
. "$(dirname "$0")/lib.sh"
need psql

pg_start
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
for i in $(seq 50); do
	grep -q '^locked$' "$T/locker.out" && break
	sleep 0.1
done
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

status=$(tallyctl status)
others=$(echo "$status" | sed -n 's/^ *\(worker\|syncer\) *pid \([0-9]*\).*/\2/p')
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

if wait_gone 30 "$TALLYD_PID"; then
	wait "$TALLYD_PID" 2>/dev/null
	TALLYD_STATUS=$?
	TALLYD_PID=
	assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
	no_crashes
else
	notok "tallyd did not stop within 30 s of SIGTERM"
	tallyd_kill9_all
fi

assert_eq "PostgreSQL has stop-a's two increments" 2 "$(pg_value stop-a)"
assert_eq "PostgreSQL has stop-b, acknowledged during the waiting flush" 1 \
    "$(pg_value stop-b)"
st=0
tallyctl journal verify "$T/state/journal" >"$T/verify" 2>&1 || st=$?
assert_eq "journal verify after the stop" 0 "$st"
end=$(sed -n 's/.*LSN [0-9]* to \([0-9]*\)$/\1/p' "$T/verify")
assert_match "journal verify gives the journal's end" '^[0-9]+$' "$end"
assert_eq "PostgreSQL's checkpoint is the journal's end" "$end" \
    "$(pg_sql "select lsn from tally_checkpoints where node = 'stop1'")"
assert_match "the log's final flush is at the journal's end" \
    "final flush done at LSN $end\$" \
    "$(grep 'final flush done' "$TALLYD_LOG")"
