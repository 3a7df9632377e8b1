#!/bin/bash
# The totals a node answers with for a key it does not hold: one that
# PostgreSQL holds (another node's, or this node's before a restart).  The
# first increment asks PostgreSQL, so the 202's total, the GET after it
# and the int64 guard all count PostgreSQL's value; many new keys at once
# are asked together.  With PostgreSQL down the increment is accepted all
# the same, and its total is known again after the next flush.
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

# The schema exists once the flusher has connected.
post_answer schema 1 >/dev/null
pg_wait_value schema 1

note "a key another node counted"
pg_sql "insert into tally_counters (key, value) values ('r1', 100)"
assert_eq "202 counts PostgreSQL's total" '{"key":"r1","value":101}' \
    "$(post_answer r1 1)"
assert_eq "GET right after it" '{"r1":101}' "$(get r1)"
flush
assert_eq "PostgreSQL after the flush" 101 "$(pg_value r1)"

note "the int64 guard counts PostgreSQL's total"
pg_sql "insert into tally_counters (key, value) values ('big', 9223372036854775807)"
st=$(post big 1)
assert_eq "+1 on INT64_MAX held by PostgreSQL" 422 "$st"
assert_match "422 says why" 'int64' "$(last_body)"
assert_eq "-1 on it" '{"key":"big","value":9223372036854775806}' \
    "$(post_answer big -1)"
flush
assert_eq "PostgreSQL after the flush" 9223372036854775806 "$(pg_value big)"
assert_eq "nothing parked in tally_rejected" 0 \
    "$(pg_sql 'select count(*) from tally_rejected')"

note "keys that need quoting in an array literal"
pg_sql "insert into tally_counters (key, value) values ('q\"\\x', 7), ('ключ', 9)"
assert_eq "a key with a quote and a backslash" 8 \
    "$(post_answer 'q"\x' 1 | sed 's/.*"value"://; s/}//')"
assert_eq "a key in Cyrillic" '{"key":"ключ","value":10}' \
    "$(post_answer 'ключ' 1)"

note "a thousand new keys at once, asked together"
pg_sql "insert into tally_counters (key, value)
    select 'b' || i, i * 10 from generate_series(0, 999) i"
l0=$(curl -s "$BASE/metrics" | awk '$1 == "tallyd_key_lookups_total" { print $2 }')
mkdir "$T/a"
seq 0 1199 | xargs -P 32 -I{} curl -s -m 20 -X POST \
    -H 'Content-Type: application/json' \
    --data-binary '{"key":"b{}","value":1}' "$BASE/increment" -o "$T/a/{}"
for i in $(seq 0 1199); do
	cat "$T/a/$i" 2>/dev/null
	echo
done >"$T/answers"
# b0..b999 held i*10 in PostgreSQL; b1000.. none.
awk -F'"' '{ k = substr($4, 2) + 0; v = $7; gsub(/[^0-9-]/, "", v)
	if (v + 0 != ((k < 1000) ? k * 10 + 1 : 1)) print }' "$T/answers" \
    >"$T/wrong"
bad=$(wc -l <"$T/wrong")
head -n 5 "$T/wrong" | sed 's/^/#   wrong: /'
assert_eq "answers of 1200 first increments" "1200 0" \
    "$(wc -l <"$T/answers") $bad"
l1=$(curl -s "$BASE/metrics" | awk '$1 == "tallyd_key_lookups_total" { print $2 }')
assert_between "look-ups counted" 1200 1300 "$((l1 - l0))"
assert_eq "GET of one of them" '{"b777":7771}' "$(get b777)"

note "a restart: the table holds what the journal had, PostgreSQL the rest"
assert_eq "rs +5" '{"key":"rs","value":5}' "$(post_answer rs 5)"
flush
tallyd_stop
tallyd_start
assert_eq "rs +1 after the restart" '{"key":"rs","value":6}' \
    "$(post_answer rs 1)"

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

