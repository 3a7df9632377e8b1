#!/bin/bash
# The flusher's statements against a real PostgreSQL: a batch mixing keys
# PostgreSQL holds (taken by UPDATE), keys it never saw and keys whose row
# was deleted by hand (both then taken by INSERT ... ON CONFLICT) lands
# exactly, and the node learns each key's total as PostgreSQL returns it.
#
# The node holds more keys than the flusher re-reads after a flush (1000
# a cycle while no other node flushes), and flush_interval is long, so
# most totals the node shows right after a flush come from what the flush
# itself returned: a key given another key's total, or none, shows here.
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
assert_eq "keys compared byte by byte (COLLATE \"C\")" "C C" \
    "$(pg_sql "select string_agg(collation_name, ' ' order by table_name)
	from information_schema.columns where (table_name, column_name) in
	(('tally_counters', 'key'), ('tally_idempotency', 'idem_key'))")"

seq 0 $((NOLD - 1)) | sed 's/.*/k& 1/' | curl_config "$T/post1.cfg" POST
n=$(run_config "$T/post1.cfg" --parallel --parallel-max 32 | grep -c '^ 202$')
assert_eq "first batch: all $NOLD increments accepted" "$NOLD" "$n"
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
flush

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

# The node's totals, right after the flush, against PostgreSQL's rows.
pg_sql "select key || ' ' || value from tally_counters order by key" \
    >"$T/pg.txt"
cut -d' ' -f1 "$T/pg.txt" | curl_config "$T/get.cfg" GET
run_config "$T/get.cfg" |
    sed -n 's/^{"\([^"]*\)":\(-\{0,1\}[0-9]*\)} 200$/\1 \2/p' |
    sort >"$T/node.txt"
assert_eq "every key answered" "$((NOLD + NNEW))" "$(wc -l <"$T/node.txt")"
bad=$(sort "$T/pg.txt" | diff - "$T/node.txt" | grep -c '^[<>]')
assert_eq "the node's totals are PostgreSQL's, key by key" 0 "$bad"
[ "$bad" = 0 ] || sort "$T/pg.txt" | diff - "$T/node.txt" | head -n 10 |
    sed 's/^/#   /'

tallyd_stop
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
