#!/bin/bash
# A counter table far smaller than the keys: with PostgreSQL up, flushed
# entries are evicted to make room, so every increment is acknowledged in
# the end; a 503 (with Retry-After) only while nothing can be evicted.
# PostgreSQL and GET on the node then agree on every total, evicted or
# held, including keys evicted and incremented again.
. "$(dirname "$0")/lib.sh"
need psql

pg_start
tallyd_conf "[counters]" "max_keys = 64"
tallyd_start

NKEYS=500
declare -A WANT
N503=0
NRETRY_AFTER=0

# incr KEY VALUE: POST until 202 (503 is retried; anything else fails).
incr() {
	local i st
	for i in $(seq 300); do
		st=$(post "$1" "$2")
		case "$st" in
		202)
			WANT[$1]=$((${WANT[$1]:-0} + $2))
			return 0
			;;
		503)
			N503=$((N503 + 1))
			if [ -n "$(last_header Retry-After)" ] &&
			    last_body | grep -q 'counter table full'; then
				NRETRY_AFTER=$((NRETRY_AFTER + 1))
			fi
			sleep 0.05
			;;
		*)
			notok "POST $1: status $st: $(last_body)"
			return 1
			;;
		esac
	done
	notok "POST $1: still 503 after 300 tries"
	return 1
}

for k in $(seq $NKEYS); do
	incr "ev-$k" $((k % 7 + 1)) || break
done
# Keys long evicted come back, and some held ones go on.
for k in $(seq 1 5 $NKEYS); do
	incr "ev-$k" 10 || break
done
note "$N503 answers 503 while the table had nothing to evict"
assert_eq "every 503 had Retry-After and said the table is full" "$N503" "$NRETRY_AFTER"

ready=
for i in $(seq 150); do
	http GET /readyz >/dev/null
	last_body | grep -q '"backlog_bytes":0,' && { ready=yes; break; }
	sleep 0.2
done
assert_eq "the flusher caught up" yes "$ready"
assert_match "/readyz: at most 64 keys held" '"counters":\{"keys":([0-9]|[1-5][0-9]|6[0-4]),"capacity":64\}' "$(last_body)"

pg_sql "select key, value from tally_counters where key like 'ev-%'" |
    sort >"$T/pg.txt"
for k in "${!WANT[@]}"; do
	printf '%s|%s\n' "$k" "${WANT[$k]}"
done | sort >"$T/want.txt"
assert_eq "PostgreSQL holds every key's exact total" "" \
    "$(diff "$T/want.txt" "$T/pg.txt" | head -5)"

bad=0
for k in "${!WANT[@]}"; do
	got=$(total "$k")
	if [ "$got" != "${WANT[$k]}" ]; then
		bad=$((bad + 1))
		[ $bad -le 5 ] && note "GET $k: $got, want ${WANT[$k]} (status $(last_status))"
	fi
done
assert_eq "GET answers every key's exact total" 0 "$bad"
assert_eq "all $NKEYS keys went through the table of 64" $NKEYS \
    "$(wc -l <"$T/want.txt")"

tallyd_stop
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"

# With a flush_interval of an hour, a full table does not wait for it: the
# first 503 asks the flusher for a flush, which makes its keys evictable.
tallyd_conf "[counters]" "max_keys = 50" "[postgres]" "flush_interval = 1h"
tallyd_start
N503=0
n=0
for k in $(seq 60); do
	incr "full-$k" 1 && n=$((n + 1))
done
assert_between "a table of 50, 60 keys: some 503s" 1 1000 "$N503"
assert_eq "... and every key acknowledged in the end (no hour's wait)" \
    60 "$n"

# A reload that shortens flush_interval takes effect now, not at the end
# of the hour the flusher was sleeping.
tallyctl flush >/dev/null
assert_eq "all 60 in PostgreSQL" 60 \
    "$(pg_sql "select count(*) from tally_counters where key like 'full-%'")"
sed -i 's/^flush_interval = 1h$/flush_interval = 200ms/' "$CONF"
assert_eq "reload to 200ms: exit 0" 0 "$(tallyctl reload >/dev/null; echo $?)"
assert_eq "after the reload: POST" 202 "$(post after-reload 4)"
pg_wait_value after-reload 4 5
tallyd_stop
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
