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
# c is new since the restart: its total is all here.
assert_eq "down, after restart: GET c" '{"c":1}' "$(get c)"
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
