#!/bin/bash
# A counter table far smaller than the keys: with PostgreSQL up, flushed
# entries are evicted to make room, so every increment is acknowledged in
# the end; a 503 (with Retry-After) only while nothing can be evicted.
# PostgreSQL and GET on the node then agree on every total, evicted or
# held, including keys evicted and incremented again.
. "$(dirname "$0")/lib.sh"
need psql gdb

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

# --- kill -9 between a flush's COMMIT and the local checkpoint file.
# Recovery replays from that file into a table of the same size, so the
# keys of the batch PostgreSQL took must keep their places until the file
# has moved past them: were they evicted first, for new keys, recovery
# would find them and the new ones, more than the table holds, and refuse
# to start.  gdb holds the flusher as it writes the file.
tallyd_conf "[counters]" "max_keys = 50" "[postgres]" "flush_interval = 1h"
tallyd_start
n=0
for k in $(seq 40); do
	[ "$(post "ck-$k" 1)" = 202 ] && n=$((n + 1))
done
assert_eq "40 keys acknowledged before the flush" 40 "$n"
flusher=$(role_pids flusher)
gdb_attach "$flusher" "$T/gdb-ck.out" -ex 'break checkpoint_write' \
    -ex continue -ex 'shell sleep 600'
timeout 60 "$TALLYCTL" -c "$CONF" flush >/dev/null 2>&1 &
BGPIDS+=($!)
wait_grep 30 "$T/gdb-ck.out" '^Breakpoint 1, '
assert_match "gdb holds the flusher as it writes the local checkpoint" \
    'Breakpoint 1, .*checkpoint_write' "$(cat "$T/gdb-ck.out")"
assert_eq "PostgreSQL has the batch" 40 \
    "$(pg_sql "select count(*) from tally_counters where key like 'ck-%'")"
# New keys: 202 while the table has room, 503 once it is full.
declare -A NEW
for k in $(seq 40); do
	st=$(post "ck-new-$k" 3)
	case "$st" in
	202) NEW[ck-new-$k]=3 ;;
	503) ;;
	*) notok "POST ck-new-$k: status $st: $(last_body)" ;;
	esac
done
note "${#NEW[@]} new keys acknowledged while the flusher was held"
tallyd_kill9_all
kill -9 "$GDB_PID" $(ps -o pid= --ppid "$GDB_PID") 2>/dev/null
tallyd_start
ok "tallyd starts again: recovery found no more keys than the table holds"
flush
bad=0
for k in $(seq 40); do
	[ "$(pg_value "ck-$k")" = 1 ] || bad=$((bad + 1))
	[ "$(pg_value "ck-new-$k")" = "${NEW[ck-new-$k]:-none}" ] ||
	    bad=$((bad + 1))
done
assert_eq "after the restart: PostgreSQL has the flushed keys once, and the new keys acknowledged, only those" 0 "$bad"
tallyd_stop
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
