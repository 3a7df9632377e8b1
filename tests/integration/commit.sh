#!/bin/bash
# A COMMIT whose answer never reaches the flusher, and which lands late:
# the flusher cannot know whether its batch went in, reconnects, finds
# PostgreSQL's checkpoint unchanged (the batch's transaction is still
# open there) and sends the batch again, which waits on the first
# transaction's row locks.  Then the first COMMIT lands.  The second try
# must see that PostgreSQL's checkpoint moved under it and roll back, or
# the batch counts twice.  pgproxy.py sits between tallyd and PostgreSQL
# and holds the COMMIT back.
. "$(dirname "$0")/lib.sh"
need psql python3

pg_start
PX=$T/proxy
mkdir -p "$PX/sock"
python3 "$top_srcdir/tests/integration/pgproxy.py" \
    "$PX/sock/.s.PGSQL.$PGPORT" "$PGSOCK/.s.PGSQL.$PGPORT" "$PX" \
    2>"$T/proxy.log" &
BGPIDS+=($!)
for i in $(seq 50); do
	[ -e "$PX/ready" ] && break
	sleep 0.1
done
[ -e "$PX/ready" ] || { cat "$T/proxy.log"; die "pgproxy.py did not start"; }

# tallyd talks to PostgreSQL through the proxy; the checks do not.
DIRECT=$DSN
DSN="host=$PX/sock port=$PGPORT user=postgres dbname=postgres"
tallyd_conf
DSN=$DIRECT
tallyd_start

# wait_file NAME TIMEOUT_S: 0 when the proxy made $PX/NAME in time.
wait_file() {
	local i
	for i in $(seq $(($2 * 10))); do
		[ -e "$PX/$1" ] && return 0
		sleep 0.1
	done
	return 1
}

assert_eq "first increment acknowledged" 202 "$(post a 5)"
pg_wait_value a 5

touch "$PX/arm"
assert_eq "increment acknowledged" 202 "$(post a 7)"
wait_file held 15 && ok "the batch's COMMIT was held back, its answer lost" ||
    notok "the proxy saw no COMMIT"
wait_file released 40 && ok "the held COMMIT landed under the retry" ||
    notok "the retry never came (the held COMMIT was not sent)"

# A later batch through: the retry of the held one is settled.
assert_eq "a later increment acknowledged" 202 "$(post b 1)"
pg_wait_value b 1 30
assert_eq "PostgreSQL has the batch once" 12 "$(pg_value a)"
wait_total a 12 "node total of a: the batch once"
assert_match "the flusher saw the checkpoint move under its batch" \
    'checkpoint .* moved' "$(cat "$TALLYD_LOG")"

tallyd_stop TERM
assert_eq "after stop: PostgreSQL a" 12 "$(pg_value a)"
assert_eq "after stop: PostgreSQL b" 1 "$(pg_value b)"
