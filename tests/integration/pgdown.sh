#!/bin/bash
# PostgreSQL down: tallyd keeps acknowledging (the journal buffers), says
# so in /readyz, survives a restart while PostgreSQL is still down, and
# once PostgreSQL is back every acknowledged increment reaches it exactly
# once.
. "$(dirname "$0")/lib.sh"
need psql

pg_start
tallyd_conf
tallyd_start

# post_n KEY VALUE N: N increments; prints how many were acknowledged.
post_n() {
	local i n=0
	for i in $(seq "$3"); do
		[ "$(post "$1" "$2")" = 202 ] && n=$((n + 1))
	done
	echo $n
}

assert_eq "up: 10 increments acknowledged" 10 "$(post_n a 3 10)"
pg_wait_value a 30
assert_eq "up: /readyz" 200 "$(http GET /readyz)"

pg_stop
assert_eq "down: 20 increments acknowledged" 20 "$(post_n a 3 20)"
assert_eq "down: 5 on a new key acknowledged" 5 "$(post_n b 7 5)"
assert_eq "down: GET a" '{"a":90}' "$(get a)"
# b is new: alone, the node read every key PostgreSQL held at start.
assert_eq "down: GET b" '{"b":35}' "$(get b)"
assert_eq "down: /readyz says 503" 503 "$(wait_status /readyz 503)"
assert_match "down: /readyz is JSON naming postgres" '^\{.*"postgres' "$(last_body)"
assert_eq "down: /healthz still 200" 200 "$(http GET /healthz)"

# Restart tallyd while PostgreSQL is down: the journal carries everything.
tallyd_stop TERM
note "tallyd stopped with PostgreSQL down: exit status $TALLYD_STATUS"
tallyd_start
assert_eq "down, after restart: 10 more acknowledged" 10 "$(post_n a 3 10)"
assert_eq "down, after restart: 5 more on b acknowledged" 5 "$(post_n b 7 5)"
assert_eq "down, after restart: 1 on a new key acknowledged" 1 "$(post_n c 1 1)"
assert_eq "down, after restart: /readyz says 503" 503 "$(wait_status /readyz 503)"
# a's total was rebuilt from the journal alone: tallyd will not guess it.
assert_eq "down, after restart: GET a is 503" 503 "$(http GET /increment/a)"
assert_match "down, after restart: with Retry-After" '^[0-9]+$' \
    "$(last_header retry-after)"
# c is new since a start that could not read PostgreSQL's keys: its
# total is not guessed either.
assert_eq "down, after restart: GET c is 503" 503 "$(http GET /increment/c)"
sleep 1	# the flusher meets PostgreSQL down again, and retries

pg_start
pg_wait_value a 120 20
pg_wait_value b 70
pg_wait_value c 1
assert_eq "up again: /readyz" 200 "$(wait_status /readyz 200)"
assert_eq "up again: GET a" '{"a":120}' "$(get a)"
assert_eq "up again: GET b" '{"b":70}' "$(get b)"
assert_eq "up again: 1 more acknowledged" 1 "$(post_n a 3 1)"
pg_wait_value a 123

tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
assert_eq "after stop: PostgreSQL a" 123 "$(pg_value a)"
assert_eq "after stop: PostgreSQL b" 70 "$(pg_value b)"

# --- PostgreSQL up but every flush failing: a server turned read-only (as
# after a failover) keeps the connection while each flush fails.  /readyz
# and postgres_up say so; once writable again, the flush goes through.
flusher_backend() {
	pg_sql "select pid from pg_stat_activity
	    where application_name = 'tallyd-flusher'"
}
tallyd_start
assert_eq "read-only: warm-up" 202 "$(post ro 1)"
pg_wait_value ro 1
pg_sql "alter database postgres set default_transaction_read_only = on" \
    >/dev/null
pg_sql "select pg_terminate_backend($(flusher_backend))" >/dev/null
assert_eq "read-only: POST still acknowledged" 202 "$(post ro 1)"
tallyctl flush >/dev/null 2>&1
assert_eq "read-only: /readyz 503" 503 "$(wait_status /readyz 503)"
assert_match "read-only: /readyz says PostgreSQL is not up" \
    '"postgres":\{"up":false\}' "$(last_body)"
http GET /metrics >/dev/null
assert_match "read-only: postgres_up 0" '^tallyd_postgres_up 0$' \
    "$(grep '^tallyd_postgres_up ' "$T/last.body")"
assert_match "read-only: the log names the error" \
    'read-only transaction \(SQLSTATE 25006\)' "$(cat "$TALLYD_LOG")"
PGOPTIONS="-c default_transaction_read_only=off" pg_sql \
    "alter database postgres reset default_transaction_read_only" >/dev/null
pg_sql "select pg_terminate_backend($(flusher_backend))" >/dev/null
pg_wait_value ro 2
assert_eq "writable again: /readyz 200" 200 "$(wait_status /readyz 200)"

# --- A flush that breaks its connection each time: the reconnects keep
# their back-off (100 ms doubling) rather than come at once, each reading
# every key the node holds.
pg_sql "create function tally_kill() returns trigger language plpgsql as
    \$\$ begin perform pg_terminate_backend(pg_backend_pid()); return new;
    end \$\$;
    create trigger tally_kill before insert or update on tally_checkpoints
    for each row execute function tally_kill()" >/dev/null
before=$(grep -c 'connected to PostgreSQL' "$TALLYD_LOG")
assert_eq "connection killed by each flush: POST" 202 "$(post ro 1)"
tallyctl flush >/dev/null 2>&1 &
BGPIDS+=("$!")
sleep 6
n=$(($(grep -c 'connected to PostgreSQL' "$TALLYD_LOG") - before))
assert_between "reconnects in 6 s, with back-off" 1 10 "$n"
pg_sql "drop trigger tally_kill on tally_checkpoints;
    drop function tally_kill()" >/dev/null
pg_wait_value ro 3 30
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"

# --- A database whose encoding cannot hold every key: refused at connect,
# with the reason, rather than a key that fails every flush.
pg_sql "create database latin1 encoding 'LATIN1' lc_collate 'C'
    lc_ctype 'C' template template0" >/dev/null
DSN_UTF8=$DSN
DSN="$DSN_UTF8 dbname=latin1"
tallyd_conf
DSN=$DSN_UTF8
tallyd_start
wait_grep 10 "$TALLYD_LOG" 'has encoding LATIN1'
assert_match "LATIN1 database: the log says why" \
    "database latin1 has encoding LATIN1; tallyd's keys are UTF-8 and need a UTF8 database" \
    "$(cat "$TALLYD_LOG")"
assert_eq "LATIN1 database: /readyz 503" 503 "$(http GET /readyz)"
tallyd_stop TERM
assert_eq "LATIN1 database: SIGTERM exit status" 0 "$TALLYD_STATUS"
