#!/bin/bash
# The flusher's statements against a real PostgreSQL.  A node alone: a
# batch mixing keys PostgreSQL holds (taken by UPDATE), keys it never saw
# and keys whose row was deleted by hand (both then taken by INSERT ...
# ON CONFLICT) lands exactly, and the node learns each key's total as
# PostgreSQL returns it.  Once another node flushes: one INSERT ... ON
# CONFLICT for every key, with the same results.  A statement trigger
# notes which statements ran.
#
# The node holds more keys than the flusher re-reads after a flush (1000
# a cycle while no other node flushes), and flush_interval is long, so
# most totals the node shows right after a flush come from what the flush
# itself returned: a key given another key's total, or none, shows here.
#
# Last, a backlog of keyed increments from an outage goes up in batches of
# bounded size; and tally_counters dropped under the flusher is created
# again, as a restart would.
. "$(dirname "$0")/lib.sh"

NOLD=2000	# keys flushed once, then edited by hand
NDEL=40		# of those, rows deleted by hand (k0 .. k39)
NNEW=200	# keys first seen in the second batch

# curl_config FILE METHOD: a curl config of one request per line of stdin
# (a key; for POST, "key value"), each printing its status (GET: after
# its body).
curl_config() {
	local out=$1 method=$2 key value first=1
	: >"$out"
	while read -r key value; do
		[ $first = 1 ] || echo next >>"$out"
		first=0
		if [ "$method" = POST ]; then
			printf 'url = "%s/increment"\nheader = "Content-Type: application/json"\ndata = "{\\"key\\":\\"%s\\",\\"value\\":%s}"\noutput = /dev/null\n' \
			    "$BASE" "$key" "$value" >>"$out"
		else
			printf 'url = "%s/increment/%s"\n' "$BASE" "$key" >>"$out"
		fi
		printf 'silent\nwrite-out = " %%{http_code}\\n"\n' >>"$out"
	done
}

# run_config FILE [CURL_ARG]...: the requests, on one keep-alive
# connection in order unless the arguments say otherwise.
run_config() { curl -K "$@" 2>/dev/null; }

pg_start
tallyd_conf
tallyd_start -o postgres.flush_interval=60s
# The flush of the start-up cycle is done before ours are sent.
flush
pg_sql "create table stmt_log (op text);
    create function note_stmt() returns trigger language plpgsql as
	\$\$ begin insert into stmt_log values (split_part(
	    ltrim(current_query()), ' ', 1)); return null; end \$\$;
    create trigger note_stmt after insert or update on tally_counters
	for each statement execute function note_stmt();" >/dev/null ||
    die "cannot create the statement trigger"
# stmts: the statements on tally_counters since the last call.
stmts() {
	pg_sql "select coalesce(string_agg(distinct op, ' ' order by op), '')
	    from stmt_log; truncate stmt_log"
}
assert_eq "keys compared byte by byte (COLLATE \"C\")" "C C" \
    "$(pg_sql "select string_agg(collation_name, ' ' order by table_name)
	from information_schema.columns where (table_name, column_name) in
	(('tally_counters', 'key'), ('tally_idempotency', 'idem_key'))")"

seq 0 $((NOLD - 1)) | sed 's/.*/k& 1/' | curl_config "$T/post1.cfg" POST
n=$(run_config "$T/post1.cfg" --parallel --parallel-max 32 | grep -c '^ 202$')
assert_eq "first batch: all $NOLD increments accepted" "$NOLD" "$n"
stmts >/dev/null
flush
assert_eq "first batch: every key inserted once" "$NOLD $NOLD" \
    "$(pg_sql "select count(*) || ' ' || sum(value) from tally_counters")"

# Totals the node does not know of: each key moved by its own amount.
pg_sql "update tally_counters set value = value +
    1000 * (substr(key, 2)::int % 7 + 1)" >/dev/null
pg_sql "delete from tally_counters where substr(key, 2)::int < $NDEL" \
    >/dev/null

{
	seq 0 $((NOLD - 1)) | sed 's/.*/k& 1/'
	seq 0 $((NNEW - 1)) | sed 's/.*/n& 5/'
} | curl_config "$T/post2.cfg" POST
n=$(run_config "$T/post2.cfg" --parallel --parallel-max 32 | grep -c '^ 202$')
assert_eq "second batch: all $((NOLD + NNEW)) increments accepted" \
    "$((NOLD + NNEW))" "$n"
stmts >/dev/null
flush
assert_eq "alone: an UPDATE for held keys, an INSERT for the others" \
    "INSERT UPDATE" "$(stmts)"

assert_eq "held keys: the hand edit plus two increments" 0 \
    "$(pg_sql "select count(*) from tally_counters where key like 'k%'
	and substr(key, 2)::int >= $NDEL
	and value <> 2 + 1000 * (substr(key, 2)::int % 7 + 1)")"
assert_eq "deleted rows: inserted again with the new increment alone" \
    "$NDEL 1 1" "$(pg_sql "select count(*) || ' ' || min(value) || ' ' ||
	max(value) from tally_counters where key like 'k%'
	and substr(key, 2)::int < $NDEL")"
assert_eq "new keys: inserted" "$NNEW 5 5" \
    "$(pg_sql "select count(*) || ' ' || min(value) || ' ' || max(value)
	from tally_counters where key like 'n%'")"
assert_eq "no other rows" "$((NOLD + NNEW))" \
    "$(pg_sql "select count(*) from tally_counters")"

# same_totals WHAT: the node's totals, right after a flush, against
# PostgreSQL's rows, key by key.
same_totals() {
	local bad
	pg_sql "select key || ' ' || value from tally_counters order by key" |
	    sort >"$T/pg.txt"
	cut -d' ' -f1 "$T/pg.txt" | curl_config "$T/get.cfg" GET
	run_config "$T/get.cfg" |
	    sed -n 's/^{"\([^"]*\)":\(-\{0,1\}[0-9]*\)} 200$/\1 \2/p' |
	    sort >"$T/node.txt"
	assert_eq "$1: every key answered" "$(wc -l <"$T/pg.txt")" \
	    "$(wc -l <"$T/node.txt")"
	bad=$(diff "$T/pg.txt" "$T/node.txt" | grep -c '^[<>]')
	assert_eq "$1: the node's totals are PostgreSQL's, key by key" 0 "$bad"
	[ "$bad" = 0 ] || diff "$T/pg.txt" "$T/node.txt" | head -n 10 |
	    sed 's/^/#   /'
}
same_totals "alone"

# Another node flushes: its checkpoint row is fresh.  The flusher looks
# after each flush, so the next one goes up as one upsert.
pg_sql "insert into tally_checkpoints values ('other-node', 'e', 1, now())" \
    >/dev/null
flush
# Edits to keys of the batch: the node learns them from the flush.
pg_sql "update tally_counters set value = value + 100000
    where key like 'k%' and substr(key, 2)::int % 6 = 0" >/dev/null
{
	seq 0 2 $((NOLD - 1)) | sed 's/.*/k& 3/'
	seq 0 $((NNEW - 1)) | sed 's/.*/m& 7/'
} | curl_config "$T/post3.cfg" POST
n=$(run_config "$T/post3.cfg" --parallel --parallel-max 32 | grep -c '^ 202$')
assert_eq "third batch: all $((NOLD / 2 + NNEW)) increments accepted" \
    "$((NOLD / 2 + NNEW))" "$n"
stmts >/dev/null
flush
assert_eq "shared: one INSERT ... ON CONFLICT for every key" "INSERT" \
    "$(stmts)"
assert_eq "shared: held keys have the hand edits and the increments" 0 \
    "$(pg_sql "select count(*) from tally_counters where key like 'k%'
	and substr(key, 2)::int >= $NDEL and value <> 2 +
	1000 * (substr(key, 2)::int % 7 + 1) +
	case when substr(key, 2)::int % 6 = 0 then 100000 else 0 end +
	case when substr(key, 2)::int % 2 = 0 then 3 else 0 end")"
assert_eq "shared: new keys inserted" "$NNEW 7 7" \
    "$(pg_sql "select count(*) || ' ' || min(value) || ' ' || max(value)
	from tally_counters where key like 'm%'")"
same_totals "shared"

tallyd_stop
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"

# A long outage with many Idempotency-Keys on few keys: each keyed record
# is its own row in the flush's idempotency statements, so a batch also
# ends once it holds FL_BATCH_KEYED (50000) of them.  Without that cap,
# one batch and one statement took the whole backlog, however large
# (past PostgreSQL's 1 GB message limit the connection drops and the same
# batch is tried again forever).
NKEYED=60000
NK=3
flushes() {
	curl -s "$BASE/metrics" | sed -n 's/^tallyd_flushes_total \([0-9]*\)$/\1/p'
}
tallyd_start -o postgres.flush_interval=100ms
# The node's keys are read back from PostgreSQL before keyed requests
# are taken; then PostgreSQL goes away.
for i in $(seq 75); do
	st=$(http POST /increment -H 'Content-Type: application/json' \
	    -H 'Idempotency-Key: first' -d '{"key":"q0","value":1}')
	[ "$st" = 202 ] && break
	sleep 0.2
done
assert_eq "a keyed increment once the keys are read back" 202 "$st"
flush
pg_stop
seq 1 $NKEYED | awk -v b="$BASE" -v nk=$NK '{
	if (NR > 1) print "next"
	printf "url = \"%s/increment\"\nheader = \"Content-Type: application/json\"\n", b
	printf "header = \"Idempotency-Key: ik-%d\"\n", $1
	printf "data = \"{\\\"key\\\":\\\"q%d\\\",\\\"value\\\":1}\"\n", $1 % nk
	printf "output = /dev/null\nsilent\nwrite-out = \" %%{http_code}\\n\"\n"
}' >"$T/keyed.cfg"
n=$(run_config "$T/keyed.cfg" --parallel --parallel-max 16 | grep -c '^ 202$')
assert_eq "outage: all $NKEYED keyed increments accepted" "$NKEYED" "$n"
f0=$(flushes)
pg_start
flush
assert_between "the backlog went up in more than one batch" 2 10 \
    $(($(flushes) - f0))
assert_eq "every keyed increment applied once" \
    "$((NKEYED / NK + 1)) $((NKEYED / NK)) $((NKEYED / NK))" \
    "$(pg_value q0) $(pg_value q1) $(pg_value q2)"
assert_eq "every Idempotency-Key recorded" "$((NKEYED + 1))" \
    "$(pg_sql "select count(*) from tally_idempotency")"

note "tally_counters dropped under the flusher: created again"
pg_sql "DROP TABLE tally_counters"
assert_eq "an increment after the drop" 202 "$(post dropped 5)"
tallyctl flush >/dev/null 2>&1
pg_wait_value dropped 5 20
assert_match "the log names the missing table" 'tally_counters.*does not exist' \
    "$(grep 'SQLSTATE 42P01' "$TALLYD_LOG" | head -n 1)"
tallyd_stop
assert_eq "SIGTERM after the backlog: exit status" 0 "$TALLYD_STATUS"
