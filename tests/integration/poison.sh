#!/bin/bash
# Records PostgreSQL refuses for their data, and a journal damaged while
# tallyd runs.  A refused record is parked in tally_rejected in the same
# transaction as the checkpoint, the rest of its batch is applied exactly
# once, and flushing goes on; a kill -9 of the flusher in the middle
# changes none of that.  A frame damaged on disk stops flushing exactly
# there, and /readyz and tallyctl status say where.
. "$(dirname "$0")/lib.sh"
need psql od dd

BIG=9223372036854775000		# near the top of bigint

pg_start
tallyd_conf "[journal]" "commit_delay = 0"
sed -i 's/^flush_interval = .*/flush_interval = 1h/' "$CONF"
tallyd_start

status_json() { tallyctl --json status; }
checkpoint() { pg_sql "select lsn from tally_checkpoints where node = '$(sed -n 's/.*"node":"\([^"]*\)".*/\1/p' <<<"$(status_json)")'"; }
rejected_rows() { pg_sql "select count(*) from tally_rejected"; }

# ================================================================ 1
note "1: a total beyond bigint in a batch with other keys"
for k in p-poison p-a p-b; do
	assert_eq "1: first increment of $k" 202 "$(post "$k" 1)"
done
flush
pg_wait_value p-poison 1 5
# Another writer takes the row to the edge of bigint behind the node's back.
pg_sql "update tally_counters set value = $BIG where key = 'p-poison'" >/dev/null
assert_eq "1: node still believes p-poison is small" 202 "$(post p-poison 1000)"
assert_eq "1: keyed increment of p-poison" 202 \
    "$(post_body '{"key":"p-poison","value":2000}' -H 'Idempotency-Key: "poison-1"')"
assert_eq "1: p-a" 202 "$(post p-a 5)"
assert_eq "1: p-b" 202 "$(post p-b 7)"
flush
pg_wait_value p-a 6 5
pg_wait_value p-b 8 5
assert_eq "1: p-poison untouched in PostgreSQL" "$BIG" "$(pg_value p-poison)"
rows=$(pg_sql "select key, value, coalesce(idem_key, '-'), sqlstate from tally_rejected order by value")
assert_eq "1: both p-poison records parked with SQLSTATE 22003" \
    "p-poison|1000|-|22003 p-poison|2000|poison-1|22003" "$(echo $rows)"
reason=$(pg_sql "select reason from tally_rejected where value = 1000")
assert_match "1: the reason is PostgreSQL's message" 'out of range' "$reason"
lsns=$(pg_sql "select count(*) from tally_rejected where lsn > 0 and epoch is not null and node is not null")
assert_eq "1: rows carry node, epoch and LSN" 2 "$lsns"
st=$(status_json)
dur=$(sed -n 's/.*"durable_lsn":\([0-9]*\).*/\1/p' <<<"$st")
assert_eq "1: checkpoint advanced over the parked records" "$dur" "$(checkpoint)"
assert_match "1: tallyctl status counts them" '"rejected_records":2' "$st"
assert_match "1: tallyctl status prints them" 'records parked in tally_rejected: 2' \
    "$(tallyctl status)"
http GET /metrics >/dev/null
assert_match "1: /metrics counts them" 'tallyd_rejected_records_total 2' "$(cat "$T/last.body")"
n=$(grep -c "parked increment of key 'p-poison'" "$TALLYD_LOG")
assert_eq "1: each parked record logged once" 2 "$n"
assert_match "1: the log line names node, LSN and SQLSTATE" \
    "parked increment of key 'p-poison' by 1000 \(node [^,]*, journal LSN [0-9]+\) in tally_rejected: .*SQLSTATE 22003" \
    "$(cat "$TALLYD_LOG")"
assert_eq "1: the Idempotency-Key stays claimed" 1 \
    "$(pg_sql "select count(*) from tally_idempotency where idem_key = 'poison-1'")"
# Parked deltas left the node's unflushed part: it shows PostgreSQL's total.
wait_total p-poison "$BIG"
wait_total p-a 6
assert_eq "1: an increment that would leave int64 is now refused" 422 \
    "$(post p-poison 1000)"

# ================================================================ 2
note "2: flushing goes on"
assert_eq "2: p-a again" 202 "$(post p-a 10)"
flush
pg_wait_value p-a 16 5
assert_eq "2: nothing more parked" 2 "$(rejected_rows)"

# ================================================================ 3
note "3: a batch whose key sums beyond int64 goes record by record"
pg_sql "update tally_counters set value = -$BIG where key = 'p-b'" >/dev/null
flush
wait_total p-b "-$BIG"
assert_eq "3: +BIG" 202 "$(post p-b "$BIG")"
assert_eq "3: +BIG again" 202 "$(post p-b "$BIG")"
flush
pg_wait_value p-b "$BIG" 5
assert_eq "3: nothing parked" 2 "$(rejected_rows)"

# ================================================================ 4
note "4: kill -9 of the flusher while it parks"
flusher=
for p in $(grep -o 'tallyd\[[0-9]*\] flusher' "$TALLYD_LOG" | tr -dc '0-9\n' | tac); do
	if [ "$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')" = "$TALLYD_PID" ]; then
		flusher=$p
		break
	fi
done
assert_match "4: found the flusher's pid" '^[0-9]+$' "$flusher"
pg_sql "update tally_counters set value = $BIG where key = 'p-a'" >/dev/null
assert_eq "4: p-a by 1000" 202 "$(post p-a 1000)"
assert_eq "4: p-c by 3" 202 "$(post p-c 3)"
# The parking waits on this lock, inside the flusher's transaction; the
# holder sleeps until it is cancelled.
PGCONNECT_TIMEOUT=5 PGAPPNAME=poison-lock psql "$DSN" -Xq -c 'BEGIN' \
    -c 'LOCK TABLE tally_rejected IN ACCESS EXCLUSIVE MODE' \
    -c 'SELECT pg_sleep(120)' -c 'COMMIT' >"$T/lock.out" 2>&1 &
lockpid=$!
BGPIDS+=($lockpid)
locked=no
for i in $(seq 100); do
	n=$(pg_sql "select count(*) from pg_locks l join pg_class c on c.oid = l.relation where c.relname = 'tally_rejected' and l.mode = 'AccessExclusiveLock' and l.granted")
	[ "$n" = 1 ] && { locked=yes; break; }
	sleep 0.2
done
assert_eq "4: tally_rejected is locked" yes "$locked"
tallyctl flush >/dev/null 2>&1 &
BGPIDS+=($!)
blocked=no
for i in $(seq 100); do
	n=$(pg_sql "select count(*) from pg_stat_activity where application_name = 'tallyd-flusher' and wait_event_type = 'Lock'")
	[ "$n" = 1 ] && { blocked=yes; break; }
	sleep 0.2
done
assert_eq "4: the flusher waits inside its transaction" yes "$blocked"
[ -n "$flusher" ] && kill -9 "$flusher"
pg_sql "select pg_cancel_backend(pid) from pg_stat_activity where application_name = 'poison-lock'" >/dev/null
wait "$lockpid"
flush
pg_wait_value p-c 3 10
assert_eq "4: p-a untouched" "$BIG" "$(pg_value p-a)"
assert_eq "4: parked exactly once" 1 \
    "$(pg_sql "select count(*) from tally_rejected where key = 'p-a' and value = 1000")"
assert_eq "4: three rows in all" 3 "$(rejected_rows)"
st=$(status_json)
dur=$(sed -n 's/.*"durable_lsn":\([0-9]*\).*/\1/p' <<<"$st")
assert_eq "4: checkpoint at the end of the journal" "$dur" "$(checkpoint)"

# ================================================================ 5
note "5: kill -9 of everything, restart: nothing parked or applied twice"
assert_eq "5: p-c by 4" 202 "$(post p-c 4)"
tallyd_kill9_all
tallyd_start
flush
pg_wait_value p-c 7 10
assert_eq "5: still three parked rows" 3 "$(rejected_rows)"
wait_total p-a "$BIG"
tallyd_stop
assert_eq "5: SIGTERM: exit status" 0 "$TALLYD_STATUS"

# ================================================================ 5b
note "5b: a deferred constraint trigger that refuses a key"
pg_sql "CREATE FUNCTION p_refuse() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
	IF NEW.key = 'p-deferred' THEN
		RAISE EXCEPTION 'key p-deferred refused' USING ERRCODE = 'check_violation';
	END IF;
	RETURN NULL;
END \$\$;
CREATE CONSTRAINT TRIGGER p_refuse AFTER INSERT OR UPDATE ON tally_counters
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION p_refuse();" >/dev/null
tallyd_start
assert_eq "5b: p-deferred" 202 "$(post p-deferred 3)"
assert_eq "5b: p-d" 202 "$(post p-d 4)"
flush
pg_wait_value p-d 4 10
assert_eq "5b: p-deferred not applied" none "$(pg_value p-deferred)"
assert_eq "5b: p-deferred parked with SQLSTATE 23514" "p-deferred|3|23514" \
    "$(pg_sql "select key, value, sqlstate from tally_rejected where key = 'p-deferred'")"
assert_eq "5b: no COMMIT failed" 0 "$(grep -c 'COMMIT failed' "$TALLYD_LOG")"
tallyd_stop
assert_eq "5b: SIGTERM: exit status" 0 "$TALLYD_STATUS"
pg_sql "DROP TRIGGER p_refuse ON tally_counters; DROP FUNCTION p_refuse()" >/dev/null

# ================================================================ 6
note "6: a frame damaged on disk while tallyd runs"
tallyd_start
for i in $(seq 6); do
	assert_eq "6: increment $i" 202 "$(post c-k "$i")"
done
JDIR=$T/state/journal
ck=$(checkpoint)
tallyctl journal dump "$JDIR" 2>/dev/null | awk -F'\t' -v ck="${ck:-0}" \
    '$1 >= ck { print $1 }' | sort -un >"$T/frames"
assert_eq "6: six unflushed frames" 6 "$(wc -l <"$T/frames")"
bad=$(sed -n 4p "$T/frames")
seg=
for s in $(ls "$JDIR" | grep '\.seg$' | sort); do
	[ $((16#${s%.seg})) -le "$bad" ] && seg=$s
done
base=$((16#${seg%.seg}))
off=$((bad - base))
byte=$(od -An -tu1 -j $((off + 44)) -N1 "$JDIR/$seg" | tr -d ' ')
printf "$(printf '\\%03o' $((byte ^ 16)))" |
    dd of="$JDIR/$seg" bs=1 seek=$((off + 44)) conv=notrunc status=none
note "6: flipped a bit in $seg at offset $((off + 44)) (frame at offset $off)"
before=$(pg_value c-k)
[ "$before" = none ] && before=0
# flush_damaged LABEL: tallyctl flush fails, naming the damaged frame.
flush_damaged() {
	local out st=0
	out=$(tallyctl flush 2>&1) || st=$?
	assert_eq "$1: tallyctl flush fails" 1 "$st"
	assert_match "$1: ... naming the damaged frame" \
	    "journal corrupt at LSN $bad: flushing stopped there" "$out"
}
flush_damaged "6"
pg_wait_value c-k $((before + 1 + 2 + 3)) 5
assert_eq "6: checkpoint stops at the damaged frame" "$bad" "$(checkpoint)"
assert_match "6: the log names segment and offset" \
    "journal corrupt in $JDIR/$seg at offset $off \(LSN $bad\): frame CRC mismatch" \
    "$(cat "$TALLYD_LOG")"
assert_eq "6: logged once" 1 "$(grep -c 'journal corrupt in' "$TALLYD_LOG")"
assert_eq "6: /readyz answers 503" 503 "$(http GET /readyz)"
assert_match "6: /readyz names segment and offset" \
    "\"corrupt\":\{\"segment\":\"$seg\",\"offset\":$off,\"lsn\":$bad,\"reason\":\"journal corrupt in $seg at offset $off: frame CRC mismatch" \
    "$(last_body)"
assert_match "6: tallyctl status says so" \
    "journal corrupt in $seg at offset $off \(LSN $bad\): frame CRC mismatch" \
    "$(tallyctl status)"
assert_eq "6: increments are still acknowledged" 202 "$(post c-k 100)"
assert_eq "6: and seen by GET" $((before + 21 + 100)) "$(total c-k)"
flush_damaged "6, again"
assert_eq "6: still stopped there" "$bad" "$(checkpoint)"
assert_eq "6: still logged once" 1 "$(grep -c 'journal corrupt in' "$TALLYD_LOG")"
tallyd_stop QUIT
TALLYD_RUN=$((TALLYD_RUN + 1))
TALLYD_LOG=$T/tallyd.$TALLYD_RUN.log
st=0
timeout 30 "$TALLYD" -f -c "$CONF" </dev/null >"$TALLYD_LOG" 2>&1 || st=$?
assert_eq "6: a restart refuses the damaged journal (exit 2)" 2 "$st"
