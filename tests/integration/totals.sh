#!/bin/bash
# The totals a node answers with for a key it does not hold: one that
# PostgreSQL holds (another node's, or this node's before a restart).
#
# Alone, a node reads every key PostgreSQL holds at start: the 202's
# total, the GET after it and the int64 guard count PostgreSQL's value
# with no look-up, and a key it did not read is new.  Once another node
# flushes, the first increment of a key the node does not hold asks
# PostgreSQL, many keys in one query.  With PostgreSQL down the increment
# is accepted all the same, and its total is known again after the next
# flush.
. "$(dirname "$0")/lib.sh"
need psql xargs

pg_start
tallyd_conf
tallyd_start

# post_answer KEY VALUE: POST, assert 202, print the minified body.
post_answer() {
	local st
	st=$(post "$1" "$2")
	[ "$st" = 202 ] || notok "POST $1 $2: status $st: $(last_body)"
	last_body
}

lookups() {
	curl -s "$BASE/metrics" |
	    awk '$1 == "tallyd_key_lookups_total" { print $2 }'
}

# first_increments PREFIX: POST +1 to PREFIX0..PREFIX1199 from 32 clients
# at once; PREFIX0..999 hold i * 10 in PostgreSQL, the rest nothing.
first_increments() {
	local i
	rm -rf "$T/a"
	mkdir "$T/a"
	seq 0 1199 | xargs -P 32 -I{} curl -s -m 20 -X POST \
	    -H 'Content-Type: application/json' \
	    --data-binary "{\"key\":\"$1{}\",\"value\":1}" "$BASE/increment" \
	    -o "$T/a/{}"
	for i in $(seq 0 1199); do
		cat "$T/a/$i" 2>/dev/null
		echo
	done >"$T/answers"
	awk -F'"' '{ k = substr($4, 2) + 0; v = $7; gsub(/[^0-9-]/, "", v)
		if (v + 0 != ((k < 1000) ? k * 10 + 1 : 1)) print }' \
	    "$T/answers" >"$T/wrong"
	head -n 5 "$T/wrong" | sed 's/^/#   wrong: /'
	echo "$(wc -l <"$T/answers") $(wc -l <"$T/wrong")"
}

# The schema exists once the flusher has connected.
post_answer schema 1 >/dev/null
pg_wait_value schema 1
tallyd_stop

note "alone: the keys PostgreSQL holds are read at start"
pg_sql "insert into tally_counters (key, value) values ('r1', 100),
    ('big', 9223372036854775807), ('q\"\\x', 7), ('ключ', 9)"
pg_sql "insert into tally_counters (key, value)
    select 'b' || i, i * 10 from generate_series(0, 999) i"
tallyd_start
wait_grep 20 "$TALLYD_LOG" "keys ahead" ||
    notok "the flusher did not read the keys ahead"
assert_match "the log says how many" "read PostgreSQL's 1005 keys ahead" \
    "$(cat "$TALLYD_LOG")"
assert_eq "202 counts PostgreSQL's total" '{"key":"r1","value":101}' \
    "$(post_answer r1 1)"
assert_eq "GET right after it" '{"r1":101}' "$(get r1)"
flush
assert_eq "PostgreSQL after the flush" 101 "$(pg_value r1)"

note "the int64 guard counts PostgreSQL's total"
st=$(post big 1)
assert_eq "+1 on INT64_MAX held by PostgreSQL" 422 "$st"
assert_match "422 says why" 'int64' "$(last_body)"
assert_eq "-1 on it" '{"key":"big","value":9223372036854775806}' \
    "$(post_answer big -1)"
flush
assert_eq "PostgreSQL after the flush" 9223372036854775806 "$(pg_value big)"
assert_eq "nothing parked in tally_rejected" 0 \
    "$(pg_sql 'select count(*) from tally_rejected')"

note "keys read ahead that need quoting"
assert_eq "a key with a quote and a backslash" 8 \
    "$(post_answer 'q"\x' 1 | sed 's/.*"value"://; s/}//')"
assert_eq "a key in Cyrillic" '{"key":"ключ","value":10}' \
    "$(post_answer 'ключ' 1)"

note "1200 first increments at once, 1000 of keys read ahead"
assert_eq "answers of 1200 first increments" "1200 0" "$(first_increments b)"
assert_eq "GET of one of them" '{"b777":7771}' "$(get b777)"
assert_eq "no key needed a look-up" 0 "$(lookups)"

note "a restart: the keys flushed before it are read again"
assert_eq "rs +5" '{"key":"rs","value":5}' "$(post_answer rs 5)"
flush
tallyd_stop
tallyd_start
wait_grep 20 "$TALLYD_LOG" "keys ahead" ||
    notok "the flusher did not read the keys ahead"
assert_eq "rs +1 after the restart" '{"key":"rs","value":6}' \
    "$(post_answer rs 1)"

note "another node flushes: keys not held are asked for"
pg_sql "insert into tally_checkpoints (node, epoch, lsn)
    values ('other', 'x', 1)"
wait_grep 20 "$TALLYD_LOG" "another node flushes" ||
    notok "the node did not see the other node"
pg_sql "insert into tally_counters (key, value) values ('r2', 100)"
assert_eq "a key the other node made since the start" \
    '{"key":"r2","value":101}' "$(post_answer r2 1)"
assert_eq "... asked for" 1 "$(lookups)"

note "another node at start: many keys asked for together"
tallyd_stop
tallyd_start
pg_sql "insert into tally_counters (key, value)
    select 'c' || i, i * 10 from generate_series(0, 999) i"
l0=$(lookups)
assert_eq "answers of 1200 first increments" "1200 0" "$(first_increments c)"
assert_between "look-ups counted" 1200 1300 "$(($(lookups) - l0))"

note "PostgreSQL down: accepted all the same"
pg_sql "insert into tally_counters (key, value) values ('down', 50)"
pg_stop
st=$(wait_status /readyz 503)
assert_eq "/readyz says PostgreSQL is down" 503 "$st"
assert_eq "down +1 counts what this node holds" \
    '{"key":"down","value":1}' "$(post_answer down 1)"
get down >/dev/null
assert_eq "GET while its total is unknown" 503 "$(last_status)"
pg_start
pg_wait_value down 51
wait_total down 51 "GET once a flush returned the total"

tallyd_stop
