#!/bin/bash
# kill -9 of the master and every child, mid-load, three times over: no
# acknowledged increment is lost and none reaches PostgreSQL twice.  Each
# client loop has one request in flight, so each kill may add at most one
# increment per key that its client never saw acknowledged.
. "$(dirname "$0")/lib.sh"
need psql

pg_start
tallyd_conf
tallyd_start

KEYS=(crash-a crash-b crash-c crash-d)
VALS=(1 2 5 11)
ROUNDS=3
LOAD_SECONDS=3
EXTRA=()

# client KEY VALUE ACKFILE: one request at a time until $T/stop exists
# (bounded: at most 60 s); one line per 202 in ACKFILE.
client() {
	local key=$1 value=$2 acks=$3 end=$((SECONDS + 60)) st
	while [ ! -e "$T/stop" ] && [ $SECONDS -lt $end ]; do
		st=$(curl -s -m 5 -o /dev/null -w '%{http_code}' \
		    -H 'Content-Type: application/json' \
		    --data-binary "{\"key\":\"$key\",\"value\":$value}" \
		    "$BASE/increment")
		if [ "$st" = 202 ]; then
			echo 202 >>"$acks"
		else
			sleep 0.02
		fi
	done
}

acked() { cat "$T/$1.acks" 2>/dev/null | wc -l; }

for k in "${KEYS[@]}"; do
	: >"$T/$k.acks"
done

for round in $(seq $ROUNDS); do
	rm -f "$T/stop"
	for i in "${!KEYS[@]}"; do
		client "${KEYS[$i]}" "${VALS[$i]}" "$T/${KEYS[$i]}.acks" &
		BGPIDS+=($!)
	done
	sleep $LOAD_SECONDS
	before=0
	for k in "${KEYS[@]}"; do
		before=$((before + $(acked "$k")))
	done
	assert_between "round $round: load was acknowledged before the kill" 1 999999999 "$before"

	no_crashes
	tallyd_kill9_all
	# The clients' last requests fail now; then stop them.
	sleep 0.5
	touch "$T/stop"
	for p in "${BGPIDS[@]}"; do
		wait "$p"
	done
	BGPIDS=()

	st=0
	tallyctl journal verify >"$T/verify.$round.out" 2>&1 || st=$?
	assert_eq "round $round: journal verify after kill -9" 0 "$st"
	[ "$st" = 0 ] || sed 's/^/#   /' "$T/verify.$round.out"

	tallyd_start
	for i in "${!KEYS[@]}"; do
		k=${KEYS[$i]}
		v=${VALS[$i]}
		a=$(acked "$k")
		got=$(total "$k")
		if [[ "$got" =~ ^[0-9]+$ ]] && [ $((got % v)) = 0 ]; then
			extra=$((got / v - a))
		else
			extra="total $got"
		fi
		prev=${EXTRA[$i]:-0}
		assert_between "round $round: $k total after restart is the $a acknowledged (x$v), plus at most one in flight at this kill (total $got)" \
		    "$prev" $((prev + 1)) "$extra"
		[[ "$extra" =~ ^[0-9]+$ ]] && EXTRA[$i]=$extra
		# What the node counts is what PostgreSQL gets, exactly.
		pg_wait_value "$k" "$got"
		echo "$got" >"$T/$k.total"
	done
done

# A graceful stop at the end: PostgreSQL keeps exactly the totals.
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
st=0
tallyctl journal verify >"$T/verify.end.out" 2>&1 || st=$?
assert_eq "journal verify after the last stop" 0 "$st"
for k in "${KEYS[@]}"; do
	assert_eq "$k: PostgreSQL after the last stop" "$(cat "$T/$k.total")" "$(pg_value "$k")"
done
assert_eq "one checkpoint row for this node" 1 \
    "$(pg_sql "select count(*) from tally_checkpoints")"
