#!/bin/bash
# The Idempotency-Key header: its syntax, replays of the kept answer, 422
# for a key reused for another request, 409 while the first use is in
# flight, retry storms across workers, kill -9 before and after the flush
# and in the middle of keyed load, replays after a restart answering the
# total first answered, a worker killed between its frame and its answer,
# two nodes on one PostgreSQL, expiry, a full key table (kept keys given
# up once flushed, then looked up in PostgreSQL), a restart with fewer
# keys allowed than the journal holds, keyed requests refused until the
# keys are read back from PostgreSQL, and a key reused for another
# request on a node that did not know it, parked at flush.  Whatever the
# retries, PostgreSQL counts each keyed increment once, and no
# acknowledged increment vanishes unseen.
. "$(dirname "$0")/lib.sh"
need h2load psql xargs gdb

# ---------------------------------------------------------------- nodes

# Several instances, each with its own node name, port, state directory
# and log; lib.sh's TALLYD_PID and TALLYD_LOG follow the selected one.
declare -A NPORT NPID NLOG
CUR=

# node_port: a port for a node, outside the ephemeral range (where other
# programs' outgoing connections could take it before tallyd binds it),
# with no socket in any state on it, and not another node's.
node_port() {
	local p i lo hi
	read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
	for i in $(seq 200); do
		p=$(free_port) || return 1
		[ "$p" -ge "$lo" ] && [ "$p" -le "$hi" ] && continue
		case " ${NPORT[*]} " in *" $p "*) continue ;; esac
		[ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ] || continue
		echo "$p"
		return 0
	done
	return 1
}

# node_conf NAME [LINE]...: $T/NAME.conf for node NAME (extra lines with
# their own [section] headers).
node_conf() {
	local name=$1 port l
	shift
	port=$(node_port) || die "no free port for node $name"
	NPORT[$name]=$port
	mkdir -p "$T/$name"
	{
		echo "[server]"
		echo "listen = 127.0.0.1:$port"
		echo "workers = 2"
		echo "node = $name"
		echo "state_dir = $T/$name"
		echo "pid_file = $T/$name/tallyd.pid"
		echo "control_socket = $T/$name/tallyd.sock"
		echo "[journal]"
		echo "segment_size = 1M"
		echo "[postgres]"
		echo "dsn = $DSN"
		echo "flush_interval = 100ms"
		for l in "$@"; do
			echo "$l"
		done
	} >"$T/$name.conf"
}

# use_node NAME: later requests, tallyctl, tallyd_start/stop act on it.
use_node() {
	if [ -n "$CUR" ]; then
		NPID[$CUR]=$TALLYD_PID
		NLOG[$CUR]=$TALLYD_LOG
	fi
	CUR=$1
	CONF=$T/$1.conf
	TPORT=${NPORT[$1]}
	BASE=http://127.0.0.1:$TPORT
	TALLYD_PID=${NPID[$1]:-}
	TALLYD_LOG=${NLOG[$1]:-}
}

# Every node still running is killed, not only the selected one.
kill_nodes() {
	local n
	[ -n "$CUR" ] && NPID[$CUR]=$TALLYD_PID
	for n in "${!NPID[@]}"; do
		[ "$n" = "$CUR" ] && continue
		TALLYD_PID=${NPID[$n]}
		if [ -n "$TALLYD_PID" ] && pid_alive "$TALLYD_PID"; then
			tallyd_kill9_all >/dev/null 2>&1
		fi
	done
	TALLYD_PID=${NPID[$CUR]:-}
}
trap 'rc=$?; kill_nodes; (exit $rc); cleanup' EXIT

# ---------------------------------------------------------------- requests

CT=(-H 'Content-Type: application/json')

# ipost IK KEY VALUE: a keyed POST /increment; prints the status.
ipost() {
	post_body "{\"key\":$(json_str "$2"),\"value\":$3}" \
	    -H "Idempotency-Key: $1"
}

replayed() { last_header idempotent-replayed; }

# fresh DESCRIPTION IK KEY VALUE TOTAL: a first use, applied.
fresh() {
	assert_eq "$1: status" 202 "$(ipost "$2" "$3" "$4")"
	assert_eq "$1: body" "{\"key\":$(json_str "$3"),\"value\":$5}" "$(last_body)"
	assert_eq "$1: not a replay" "" "$(replayed)"
}

# replay DESCRIPTION IK KEY VALUE KEPT_TOTAL: answered from the kept response.
replay() {
	assert_eq "$1: status" 202 "$(ipost "$2" "$3" "$4")"
	assert_eq "$1: kept body" "{\"key\":$(json_str "$3"),\"value\":$5}" "$(last_body)"
	assert_eq "$1: Idempotent-Replayed" true "$(replayed)"
}

json_error() {
	assert_match "$1: JSON error" '^\{.*"error":"[^"]+"' "$(last_body)"
}

pg_idem_count() {
	pg_sql "select count(*) from tally_idempotency where idem_key = $(sql_quote "$1")"
}

# pg_wait_idem IK EXPECTED_COUNT [TIMEOUT_S]
pg_wait_idem() {
	local got i
	for i in $(seq 0 $((${3:-15} * 5))); do
		got=$(pg_idem_count "$1")
		[ "$got" = "$2" ] && break
		sleep 0.2
	done
	assert_eq "tally_idempotency holds $1 $2 time(s)" "$2" "$got"
}

# wait_flushed [TIMEOUT_S]: the node's journal is all in PostgreSQL.
wait_flushed() {
	local i body
	for i in $(seq 0 $((${1:-15} * 10))); do
		body=$(curl -s -m 2 "$BASE/readyz" | json_min)
		case "$body" in *'"backlog_bytes":0,'*) return 0 ;; esac
		sleep 0.1
	done
	notok "node $CUR did not flush its journal in time: $body"
	return 1
}

# storm OUT N PARALLEL IK KEY VALUE: N curl processes (one connection
# each), PARALLEL at a time; one "status replayed" line per answer in OUT.
storm() {
	local out=$1 n=$2 par=$3 ik=$4 key=$5 value=$6
	printf '{"key":"%s","value":%s}' "$key" "$value" >"$out.json"
	seq "$n" | xargs -P "$par" -I{} curl -s -m 20 -o /dev/null \
	    -w '%{http_code} %header{idempotent-replayed}\n' \
	    -H 'Content-Type: application/json' -H "Idempotency-Key: $ik" \
	    --data-binary "@$out.json" "$BASE/increment" >"$out"
}

# storm_check DESCRIPTION OUT N: one fresh 202, the rest replays or 409.
storm_check() {
	local fresh_n replays conflicts other
	fresh_n=$(grep -c '^202 $' "$2")
	replays=$(grep -c '^202 true$' "$2")
	conflicts=$(grep -c '^409 $' "$2")
	other=$(grep -Evc '^(202 |202 true|409 )$' "$2")
	note "$1: $fresh_n applied, $replays replayed, $conflicts 409"
	assert_eq "$1: every request answered" "$3" "$(wc -l <"$2")"
	assert_eq "$1: exactly one answer applied it" 1 "$fresh_n"
	assert_eq "$1: no answer but 202 replayed or 409" 0 "$other"
	[ "$other" = 0 ] || grep -Ev '^(202 |202 true|409 )$' "$2" |
	    sort | uniq -c | sed 's/^/#   /'
}

# phase WHAT: where the time goes, in the log.
phase() { note "$* (at ${SECONDS} s)"; }

pg_start

# ================================================================ node main
node_conf main
use_node main
tallyd_start

# --- the header's syntax
phase "header syntax"
RECS=$(journal_records)
fresh "bare key, first use" bare1 sf 3 3
replay "the same key as a Structured Field string" '"bare1"' sf 3 3
fresh "quoted key, first use" '"quoted1"' sf 4 7
replay "the same key bare" quoted1 sf 4 7
fresh "quoted key with escapes" '"a\\b\"c"' esc 1 1
fresh "bare a\\b is another key" 'a\b' esc 1 2
replay "the escaped key again" '"a\\b\"c"' esc 1 1
fresh "key with surrounding spaces" ' sp1 ' sp 1 1
fresh "key with an inner space (printable)" 'sp 1' sp 1 2
replay "the same key without them" sp1 sp 1 1
replay "the inner space quoted" '"sp 1"' sp 1 2
LONGIK=$(printf 'k%.0s' $(seq 255))
fresh "key of 255 characters" "$LONGIK" long 2 2
replay "key of 255 characters again" "$LONGIK" long 2 2
fresh "key of printable punctuation" '!#$%&()*+,-./:;<=>?@[]^_`{|}~' punct 1 1
assert_eq "journal: one record per applied request" $((RECS + 8)) "$(journal_records)"

# --- malformed keys: 400, nothing stored, nothing journaled
phase "malformed keys"
RECS=$(journal_records)
# bad DESCRIPTION CURL_HEADER_ARG...: 400 with a JSON error.
bad() {
	local what=$1
	shift
	assert_eq "$what: 400" 400 \
	    "$(post_body '{"key":"mal","value":1}' "$@")"
	json_error "$what"
}
bad "empty Idempotency-Key" -H 'Idempotency-Key;'
bad "empty sf-string" -H 'Idempotency-Key: ""'
bad "key of 256 characters" -H "Idempotency-Key: ${LONGIK}k"
bad "quoted key of 256 characters" -H "Idempotency-Key: \"${LONGIK}k\""
bad "key with a tab inside" -H $'Idempotency-Key: a\tb'
bad "key not ASCII" -H 'Idempotency-Key: café'
bad "unbalanced quote at the start" -H 'Idempotency-Key: "mal1'
bad "unbalanced quote at the end" -H 'Idempotency-Key: mal1"'
bad "quote inside a bare key" -H 'Idempotency-Key: ma"l1'
bad "sf-string with an unknown escape" -H 'Idempotency-Key: "ma\l1"'
bad "sf-string ending in a backslash" -H 'Idempotency-Key: "mal1\"'
bad "two Idempotency-Key headers" -H 'Idempotency-Key: dup-a' \
    -H 'Idempotency-Key: dup-b'
bad "the same Idempotency-Key twice" -H 'Idempotency-Key: dup-a' \
    -H 'Idempotency-Key: dup-a'
# The HTTP parser may refuse these itself, without a JSON body.
assert_eq "key with a control character: 400" 400 \
    "$(post_body '{"key":"mal","value":1}' -H $'Idempotency-Key: a\001b')"
assert_eq "key with DEL: 400" 400 \
    "$(post_body '{"key":"mal","value":1}' -H $'Idempotency-Key: a\177b')"
assert_eq "after malformed keys: nothing counted" none "$(total mal)"
assert_eq "after malformed keys: nothing journaled" "$RECS" "$(journal_records)"
fresh "a valid key after malformed ones" dup-a mal 5 5
fresh "the other key of the pair" dup-b mal 1 6

# --- replays: the kept answer, nothing applied again
phase "replays"
fresh "kept: first use" kept1 kc 5 5
assert_eq "kept: an unkeyed increment" 202 "$(post kc 1)"
assert_eq "kept: unkeyed total" '{"key":"kc","value":6}' "$(last_body)"
RECS=$(journal_records)
replay "kept: the retry gets the first answer" kept1 kc 5 5
replay "kept: and again" '"kept1"' kc 5 5
assert_match "kept: replay Content-Type" '^application/json' "$(last_header Content-Type)"
assert_eq "kept: total unchanged by replays" '{"kc":6}' "$(get kc)"
assert_eq "kept: replays journal nothing" "$RECS" "$(journal_records)"

# --- same key, another request: 422
assert_eq "same key, other value: 422" 422 "$(ipost kept1 kc 6)"
json_error "same key, other value"
assert_eq "same key, other counter key: 422" 422 "$(ipost kept1 kc2 5)"
json_error "same key, other counter key"
assert_eq "same key, other value and counter key: 422" 422 "$(ipost kept1 kc2 6)"
assert_eq "after 422: total unchanged" '{"kc":6}' "$(get kc)"
# A refused request must not leave the other counter key behind either.
assert_eq "after 422: the other counter key was never incremented (404)" none "$(total kc2)"
assert_eq "after 422: nothing journaled" "$RECS" "$(journal_records)"
replay "after 422: the first request still replays" kept1 kc 5 5

# --- a refused request stores nothing
assert_eq "keyed request with a bad body: 400" 400 \
    "$(post_body '{"key":"ref","value":"1"}' -H 'Idempotency-Key: ref1')"
fresh "the same key, valid body: applied" ref1 ref 2 2
assert_eq "keyed request with the wrong content type: 415" 415 \
    "$(http POST /increment -H 'Content-Type: text/plain' \
    -H 'Idempotency-Key: ref2' --data-binary '{"key":"ref","value":1}')"
fresh "the same key after 415: applied" ref2 ref 1 3
MAX=9223372036854775807
assert_eq "int64 max" 202 "$(post refbig $MAX)"
assert_eq "keyed request past int64: 422" 422 "$(ipost ref3 refbig 1)"
fresh "the same key, another request: applied" ref3 ref 4 7
assert_eq "refbig unchanged" "{\"refbig\":$MAX}" "$(get refbig)"

# --- all of it reaches PostgreSQL once
pg_wait_value sf 7
pg_wait_value kc 6
pg_wait_value mal 6
pg_wait_value ref 7
pg_wait_value esc 2
pg_wait_idem kept1 1
pg_wait_idem bare1 1
pg_wait_idem quoted1 1
pg_wait_idem ref3 1
assert_eq "after 422: PostgreSQL has no row for the other counter key" none \
    "$(pg_value kc2)"
assert_eq "refused keys are not in tally_idempotency" 0 \
    "$(pg_sql "select count(*) from tally_idempotency where idem_key in ('mal1', 'ma\"l1', '')")"
replay "after the flush: still a replay" kept1 kc 5 5
sleep 0.5	# five flush intervals
assert_eq "after the flush: replay applied nothing" 6 "$(pg_value kc)"

# --- a burst of one keyed request: applied once, the others 409 or replays
phase "burst"
storm "$T/burst" 64 32 burst1 burst 7
storm_check "burst of 64, 32 at a time" "$T/burst" 64
assert_eq "burst: total is the value once" 7 "$(total burst)"
pg_wait_value burst 7

# --- a retry storm across both workers, short and keep-alive connections
storm "$T/storm" 100 50 storm1 storm 11
storm_check "storm of 100, 50 connections at a time" "$T/storm" 100
printf '{"key":"storm","value":13}' >"$T/h2.json"
h2load -n 2000 -c 50 -m 4 -d "$T/h2.json" -H 'Content-Type: application/json' \
    -H 'idempotency-key: storm2' "$BASE/increment" >"$T/h2load.out" 2>&1
codes=$(sed -n 's/^status codes: //p' "$T/h2load.out")
note "h2load storm: $codes"
assert_match "h2load storm: every request answered" \
    '2000 done, [0-9]+ succeeded, [0-9]+ failed, 0 errored, 0 timeout' \
    "$(cat "$T/h2load.out")"
assert_match "h2load storm: only 2xx (202) and 4xx (409) answers" \
    '^[0-9]+ 2xx, 0 3xx, [0-9]+ 4xx, 0 5xx$' "$codes"
n2=$(echo "$codes" | sed 's/ 2xx.*//')
n4=$(echo "$codes" | sed 's/.* 3xx, \([0-9]*\) 4xx.*/\1/')
assert_eq "h2load storm: 2xx and 4xx make all" 2000 $((${n2:-0} + ${n4:-0}))
h2load --h1 -n 1000 -c 20 -d "$T/h2.json" -H 'Content-Type: application/json' \
    -H 'idempotency-key: storm2' "$BASE/increment" >"$T/h2load1.out" 2>&1
codes=$(sed -n 's/^status codes: //p' "$T/h2load1.out")
assert_match "h2load HTTP/1.1 storm: every request answered" \
    '1000 succeeded, 0 failed, 0 errored' "$(cat "$T/h2load1.out")"
assert_match "h2load HTTP/1.1 storm: only 202 replays" \
    '^1000 2xx, 0 3xx, 0 4xx, 0 5xx$' "$codes"
replay "after the storms" storm2 storm 13 24
assert_eq "storms: total is each value once" 24 "$(total storm)"
pg_wait_value storm 24
pg_wait_idem storm1 1
pg_wait_idem storm2 1

# --- kill -9 after the flush: the key comes back from PostgreSQL
phase "kill -9 after the flush"
fresh "before kill -9, flushed" after1 kaf 9 9
pg_wait_value kaf 9
pg_wait_idem after1 1
no_crashes
tallyd_kill9_all
tallyd_start
RECS=$(journal_records)
replay "after kill -9: the retry replays" after1 kaf 9 9
assert_eq "after kill -9: 422 for another request" 422 "$(ipost after1 kaf 1)"
assert_eq "after kill -9: a key flushed long before: status" 202 "$(ipost kept1 kc 5)"
assert_eq "after kill -9: a key flushed long before: replayed" true "$(replayed)"
assert_eq "after kill -9: total" '{"kaf":9}' "$(get kaf)"
assert_eq "after kill -9: replays journal nothing" "$RECS" "$(journal_records)"
sleep 0.5
assert_eq "after kill -9: PostgreSQL unchanged" 9 "$(pg_value kaf)"
pg_wait_idem after1 1

# --- the flusher dies while it takes the keys back from PostgreSQL: the
# next one takes them again, and none is left in flight (409 for good).
phase "the flusher killed while it takes the keys back"
tallyd_stop TERM
pg_stop
tallyd_start
flusher=$(role_pids flusher)
gdb_attach "$flusher" "$T/gdb-load.out" -ex 'break idem_complete' \
    -ex continue -ex 'shell sleep 600'
pg_start
wait_grep 30 "$T/gdb-load.out" '^Breakpoint 1, '
assert_match "gdb holds the flusher as it takes a key back" \
    'Breakpoint 1, .*idem_complete' "$(cat "$T/gdb-load.out")"
kill -9 "$flusher" "$GDB_PID" $(ps -o pid= --ppid "$GDB_PID")
# Loaded newest first: the key it held is the newest.
read -r ik fp <<<"$(pg_sql "select idem_key || ' ' || fingerprint
    from tally_idempotency where node = 'main' order by created_at desc
    limit 1")"
wait_status /readyz 200 >/dev/null
assert_eq "the key the dead flusher held: a retry is answered" 202 \
    "$(ipost "$ik" "${fp#*:}" "${fp%%:*}")"
assert_eq "the key the dead flusher held: as a replay" true "$(replayed)"
# The log names the flusher this test killed: the next sections start a
# log of their own.
tallyd_kill9_all
tallyd_start

# --- kill -9 in the middle of keyed load; unanswered requests are retried
# with their key after the restart.
# load_client ID: unique keys, in runs of BATCH keep-alive requests on one
# connection (one curl), so that a kill finds requests inside the daemon;
# every key not answered 202 is sent again with the same key, until it is.
# After $T/stop, only those still pending (bounded: 60 s).
BATCH=20
load_client() {
	local id=$1 out=$T/load.$1 n=0 end=$((SECONDS + 60)) ik st i
	local pending=() args=() codes=() left=()
	: >"$out.acks"
	: >"$out.codes"
	while [ $SECONDS -lt $end ]; do
		if [ ${#pending[@]} = 0 ]; then
			[ -e "$T/stop" ] && break
			for i in $(seq $BATCH); do
				n=$((n + 1))
				pending+=("load-$id-$n")
			done
		fi
		args=()
		for ik in "${pending[@]}"; do
			[ ${#args[@]} = 0 ] || args+=(--next)
			args+=(-s -m 5 -o /dev/null
			    -w '%{http_code} %header{idempotent-replayed}\n'
			    -H 'Content-Type: application/json'
			    -H "Idempotency-Key: $ik"
			    --data-binary '{"key":"load","value":1}'
			    "$BASE/increment")
		done
		mapfile -t codes < <(curl "${args[@]}")
		left=()
		for i in "${!pending[@]}"; do
			ik=${pending[$i]}
			st=${codes[$i]:-none}
			echo "$ik $st" >>"$out.codes"
			case "$st" in
			"202 "*) echo "$ik $st" >>"$out.acks" ;;
			*) left+=("$ik") ;;
			esac
		done
		pending=("${left[@]}")
		[ ${#pending[@]} = 0 ] || sleep 0.05
	done
	[ ${#pending[@]} = 0 ] || echo "${pending[*]}" >"$out.pending"
}

phase "keyed load with kill -9"
rm -f "$T/stop"
NCLIENTS=4
for c in $(seq $NCLIENTS); do
	load_client "$c" &
	BGPIDS+=($!)
done
# Each kill comes once the clients have had 100 more acknowledgements
# (bounded: 20 s), so that it falls in the middle of load.
acks() { cat "$T"/load.*.acks 2>/dev/null | wc -l; }
for round in 1 2; do
	want=$(($(acks) + 100))
	for i in $(seq 200); do
		[ "$(acks)" -ge "$want" ] && break
		sleep 0.1
	done
	no_crashes
	tallyd_kill9_all
	tallyd_start
done
sleep 0.5
touch "$T/stop"
for p in "${BGPIDS[@]}"; do
	wait "$p"
done
BGPIDS=()
cat "$T"/load.*.acks >"$T/load.acks"
cat "$T"/load.*.codes >"$T/load.codes"
N=$(wc -l <"$T/load.acks")
assert_between "keyed load: requests acknowledged" 10 999999 "$N"
assert_eq "keyed load: each key acknowledged once" "$N" \
    "$(cut -d' ' -f1 "$T/load.acks" | sort -u | wc -l)"
assert_eq "keyed load: no request left unanswered" "" \
    "$(cat "$T"/load.*.pending 2>/dev/null)"
other=$(cut -d' ' -f2- "$T/load.codes" | grep -Ev '^(202 |202 true|409 |000 )$')
assert_eq "keyed load: only 202, 409 or no answer (kill)" "" "$other"
retried=$(cut -d' ' -f1 "$T/load.codes" | sort | uniq -d | wc -l)
note "keyed load: $N keys, $retried retried," \
    "$(grep -c ' 202 true$' "$T/load.acks") resolved as replays"
assert_between "keyed load: some requests were retried across a kill" 1 999999 "$retried"
assert_eq "keyed load: total is one per key" "$N" "$(total load)"
pg_wait_value load "$N"
assert_eq "keyed load: tally_idempotency has each key once" "$N" \
    "$(pg_sql "select count(*) from tally_idempotency where idem_key like 'load-%'")"

tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"

# --- kill -9 before the flush: the key comes back from the journal
phase "kill -9 before the flush"
tallyd_start -o postgres.flush_interval=60s
# The flusher's first flush runs while the workers start: have it done
# (tallyctl flush waits), so that the next is 60 s away.
flush
fresh "before kill -9, not flushed" before1 kbf 4 4
RECS=$(journal_records)
assert_eq "not flushed yet: PostgreSQL lacks it" none "$(pg_value kbf)"
assert_eq "not flushed yet: tally_idempotency lacks it" 0 "$(pg_idem_count before1)"
no_crashes
tallyd_kill9_all
tallyd_start -o postgres.flush_interval=60s
replay "after kill -9 from the journal: the retry replays" before1 kbf 4 4
replay "after kill -9 from the journal: quoted" '"before1"' kbf 4 4
assert_eq "after kill -9 from the journal: 422 for another request" 422 \
    "$(ipost before1 kbf 5)"
assert_eq "after kill -9 from the journal: total" '{"kbf":4}' "$(get kbf)"
assert_eq "after kill -9 from the journal: nothing journaled" "$RECS" "$(journal_records)"
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
assert_eq "flushed at stop: PostgreSQL has it once" 4 "$(pg_value kbf)"
assert_eq "flushed at stop: tally_idempotency has it once" 1 "$(pg_idem_count before1)"
st=0
tallyctl journal verify >"$T/verify.out" 2>&1 || st=$?
assert_eq "journal verify" 0 "$st"

# ================================================================ two nodes
phase "two nodes"
node_conf na
node_conf nb
use_node na
tallyd_start
use_node nb
tallyd_start

use_node na
fresh "node A: first use" two1 two 5 5
pg_wait_value two 5
pg_wait_idem two1 1
use_node nb
assert_eq "node B: the retry (B does not know the key)" 202 "$(ipost two1 two 5)"
note "node B's answer: $(last_body), replayed: '$(replayed)'"
wait_flushed
pg_wait_value two 5
pg_wait_idem two1 1
assert_eq "node B: its increment left out at flush, counted" 1 \
    "$(metric idempotency_duplicates_total)"
use_node na
assert_eq "node A: nothing left out" 0 "$(metric idempotency_duplicates_total)"
# Both nodes take the key before either flushes.
assert_eq "node A: second key" 202 "$(ipost two2 two 2)"
use_node nb
assert_eq "node B: its retry at once" 202 "$(ipost two2 two 2)"
wait_flushed
DUPS_B=$(metric idempotency_duplicates_total)
use_node na
wait_flushed
pg_wait_value two 7
pg_wait_idem two2 1
assert_eq "both nodes: two1's retry and one of two2's two left out" 2 \
    "$((DUPS_B + $(metric idempotency_duplicates_total)))"
assert_eq "tally_idempotency: the nodes' keys, once each" 2 \
    "$(pg_sql "select count(*) from tally_idempotency where idem_key like 'two%'")"

# Another node's increments show on this node once flushed: A's flusher
# sees B's checkpoint move and reads the keys it holds again.  Likewise
# a change made to tally_counters by hand, with no checkpoint moving.
use_node nb
assert_eq "node B: a plain increment" 202 "$(post two 10)"
wait_flushed
use_node na
wait_total two 17 "node A shows node B's flushed increment"
pg_sql "update tally_counters set value = value + 100 where key = 'two'" \
    >/dev/null
wait_total two 117 "node A shows a change made by hand"
use_node nb
wait_total two 117 "node B shows it too"
pg_sql "update tally_counters set value = value - 100 where key = 'two'" \
    >/dev/null
tallyd_stop TERM
assert_eq "node B: SIGTERM exit status" 0 "$TALLYD_STATUS"
use_node na
tallyd_stop TERM
assert_eq "node A: SIGTERM exit status" 0 "$TALLYD_STATUS"
assert_eq "after both stopped: PostgreSQL counted each once" 17 "$(pg_value two)"

# ================================================================ expiry
phase "expiry"
# The ttl outlasts the first requests even in a sanitizer build on a busy
# machine.
TTL=6
node_conf nttl "[idempotency]" "ttl = ${TTL}s"
use_node nttl
tallyd_start
fresh "expiry: first use" exp1 exp 3 3
t0=$(date +%s%N)
assert_eq "expiry: another request before expiry: 422" 422 "$(ipost exp1 exp 4)"
replay "expiry: a retry before expiry" exp1 exp 3 3
# Poll with the other request: 422 until the key expires, then applied.
for i in $(seq 300); do
	st=$(ipost exp1 exp 4)
	[ "$st" = 422 ] || break
	sleep 0.1
done
el=$((($(date +%s%N) - t0) / 1000000))
assert_eq "expiry: another request after expiry: 202" 202 "$st"
assert_eq "expiry: applied" '{"key":"exp","value":7}' "$(last_body)"
assert_eq "expiry: not a replay" "" "$(replayed)"
assert_between "expiry: not before the ttl (ms since first use)" 5000 60000 "$el"
replay "expiry: the new use replays" exp1 exp 4 7
pg_wait_value exp 7
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"

# --- PostgreSQL draws the line where the node does: a use ttl or more
# after the one it holds is a new use; less is the same use, counted
# once.  The node does not know these keys; the use PostgreSQL holds
# (another node's) is put in by hand, timed from the journal's record.
phase "expiry in PostgreSQL, at the line"
tallyd_start -o postgres.flush_interval=60s
flush

# --- a key used again once it expired, both uses in one batch: PostgreSQL
# counts both, as the node did.
fresh "one batch: first use" exb1 exb 5 5
for i in $(seq 300); do
	st=$(ipost exb1 exb 5)
	[ "$st" = 202 ] && [ -z "$(replayed)" ] && break
	sleep 0.1
done
assert_eq "one batch: the use after expiry applied" \
    '{"key":"exb","value":10}' "$(last_body)"
assert_eq "one batch: not a replay" "" "$(replayed)"
assert_eq "one batch: nothing flushed between the uses" none "$(pg_value exb)"
flush
assert_eq "one batch: PostgreSQL counts both uses" 10 "$(pg_value exb)"
t=$(tallyctl journal dump | awk -F'\t' '$5 == "\"exb1\"" { t = $4 } END { print t }')
assert_eq "one batch: PostgreSQL holds the second use ($t)" t \
    "$(pg_sql "select created_at = '$t'::timestamptz from tally_idempotency where idem_key = 'exb1'")"

# edge IK D EXPECTED_PG_VALUE EXPECTED_OWNER: PostgreSQL holds a use of
# IK made ttl + D µs before this node's.
edge() {
	local t
	fresh "ttl + $2 µs: the node applies it" "$1" "$1" 1 1
	t=$(tallyctl journal dump | awk -F'\t' -v ik="\"$1\"" \
	    '$5 == ik { print $4 }')
	assert_match "ttl + $2 µs: journal record time" '^[0-9T:.-]+Z$' "$t"
	pg_sql "insert into tally_idempotency (idem_key, fingerprint, node, created_at)
	    values ('$1', '1:$1', 'elsewhere', '$t'::timestamptz
	    - interval '$TTL s' - interval '$2 microseconds')" >/dev/null
	flush
	assert_eq "ttl + $2 µs: PostgreSQL's count" "$3" "$(pg_value "$1")"
	assert_eq "ttl + $2 µs: the use PostgreSQL keeps" "$4" \
	    "$(pg_sql "select node from tally_idempotency where idem_key = '$1'")"
}
edge edge0 0 1 nttl
edge edge1 -1 0 elsewhere
edge edge2 1 1 nttl
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"

# ================================================================ table full
# Room is made only from keys PostgreSQL holds: with every kept key still
# to flush, a new key waits (503).  Once flushed, the oldest are given up
# for new ones, and a key the table no longer holds is looked up in
# PostgreSQL: a retry is still a replay, another request still a 422.
phase "table full"
node_conf nfull "[idempotency]" "max_keys = 3" "[postgres]" \
    "flush_interval = 1h"
use_node nfull
tallyd_start
fresh "full: key 1" full1 full 1 1
fresh "full: key 2" full2 full 1 2
fresh "full: key 3" full3 full 1 3
RECS=$(journal_records)
assert_eq "full, nothing flushed: a 4th key: 503" 503 "$(ipost full4 full 1)"
json_error "full: 503"
assert_match "full: the error says why" '"error":"Idempotency-Key table full"' \
    "$(last_body)"
assert_match "full: Retry-After" '^[0-9]+$' "$(last_header Retry-After)"
assert_eq "full: an unkeyed request still 202" 202 "$(post full 10)"
assert_eq "full: unkeyed total" '{"key":"full","value":13}' "$(last_body)"
replay "full: a known key still replays" full2 full 1 2
assert_eq "full: a known key, another request: 422" 422 "$(ipost full3 full 2)"
assert_eq "full: the 4th key again: 503" 503 "$(ipost full4 other 1)"
assert_eq "full: the refused request's counter key was never incremented (404)" none "$(total other)"
assert_eq "full: only the unkeyed request journaled" $((RECS + 1)) \
    "$(journal_records)"
assert_eq "full: no key given up" 0 "$(metric idempotency_keys_forgotten_total)"
assert_eq "full: no look-up in PostgreSQL" 0 "$(metric idempotency_lookups_total)"

flush
# The three kept keys are in PostgreSQL now: three new keys take their room.
fresh "flushed: key 4" full4 full 1 14
fresh "flushed: key 5" full5 full 1 15
fresh "flushed: key 6" full6 full 1 16
assert_eq "flushed: the three kept keys given up" 3 \
    "$(metric idempotency_keys_forgotten_total)"
assert_eq "flushed: the table still holds 3" 3 "$(metric idempotency_keys)"
LOOKUPS=$(metric idempotency_lookups_total)
assert_eq "flushed: each new key looked up in PostgreSQL" 3 "$LOOKUPS"
assert_eq "keys 4-6 not flushed: a 7th key: 503" 503 "$(ipost full7 full 1)"
assert_eq "keys 4-6 not flushed: a given-up key's retry: 503, no room" \
    503 "$(ipost full1 full 1)"
flush
RECS=$(journal_records)
replay "given up: a retry, from PostgreSQL, its first total" full1 full 1 1
replay "given up: a retry again, from the table" full1 full 1 1
assert_eq "given up: another request: 422" 422 "$(ipost full2 full 5)"
json_error "given up: 422"
assert_eq "given up: nothing journaled" "$RECS" "$(journal_records)"
assert_eq "given up: PostgreSQL asked twice more" $((LOOKUPS + 2)) \
    "$(metric idempotency_lookups_total)"
pg_stop
assert_eq "PostgreSQL down: a given-up key cannot be checked: 503" 503 \
    "$(ipost full3 full 1)"
assert_match "PostgreSQL down: the error says why" \
    '"error":"PostgreSQL unavailable to check the Idempotency-Key"' \
    "$(last_body)"
assert_eq "PostgreSQL down: nothing journaled" "$RECS" "$(journal_records)"
pg_start
for i in $(seq 50); do
	[ "$(ipost full3 full 1)" = 202 ] && break
	sleep 0.2
done
assert_eq "PostgreSQL back: the retry replayed" true "$(replayed)"
assert_eq "PostgreSQL back: its first total" '{"key":"full","value":3}' "$(last_body)"
flush
assert_eq "PostgreSQL counts each keyed increment once" 16 "$(pg_value full)"
for i in 1 2 3 4 5 6; do
	assert_eq "tally_idempotency holds full$i once" 1 "$(pg_idem_count full$i)"
done
assert_eq "full7 never applied" 0 "$(pg_idem_count full7)"
assert_eq "full: nothing parked" 0 \
    "$(pg_sql "select count(*) from tally_rejected where idem_key like 'full%'")"
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"

# More keys in PostgreSQL than the table takes: the newest are read back,
# and the others are looked up when used.
phase "more keys in PostgreSQL than the table takes"
tallyd_start
assert_eq "restart: /readyz" 200 "$(wait_status /readyz 200)"
assert_match "restart: the log says keys are looked up" \
    'more Idempotency-Keys in PostgreSQL than idempotency.max_keys' \
    "$(cat "$TALLYD_LOG")"
RECS=$(journal_records)
replay "restart: an old key's retry, its first total" full1 full 1 1
assert_eq "restart: an old key, another request: 422" 422 "$(ipost full2 full 9)"
fresh "restart: a new key" full8 full 1 17
assert_eq "restart: only the new key journaled" $((RECS + 1)) \
    "$(journal_records)"
flush
assert_eq "restart: PostgreSQL's total" 17 "$(pg_value full)"
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"

# More unflushed keys in the journal than a lowered idempotency.max_keys
# takes: tallyd still starts and replays every increment, and says once,
# not once a key, which keys it did not restore.  A retry of one of
# those, once flushed, is looked up in PostgreSQL: a replay, not counted
# again.
phase "more unflushed keys in the journal than the table takes"
node_conf nshrink "[postgres]" "flush_interval = 1h"
use_node nshrink
tallyd_start
flush
for i in 1 2 3 4 5 6 7 8; do
	fresh "shrink: key $i" shrink$i shrink 1 "$i"
done
assert_eq "shrink: not flushed yet" 0 "$(pg_idem_count shrink1)"
RECS=$(journal_records)
tallyd_kill9_all
tallyd_start -o idempotency.max_keys=3
assert_eq "shrink: /readyz" 200 "$(wait_status /readyz 200)"
assert_eq "shrink: every increment replayed" '{"shrink":8}' "$(get shrink)"
assert_eq "shrink: the log says once which keys were not restored" 1 \
    "$(grep -c 'the keys from there on are not restored' "$TALLYD_LOG")"
assert_eq "shrink: no line for each key not restored" 0 \
    "$(grep -c 'idempotency key shrink' "$TALLYD_LOG")"
# Nothing was flushed before the kill: the first answer, rebuilt.
replay "shrink: a restored key's retry" shrink1 shrink 1 1
flush
assert_eq "shrink: PostgreSQL counts each keyed increment once" 8 \
    "$(pg_value shrink)"
# Its first total was in no table when the flush kept the key: the
# key's total now.
assert_eq "shrink: an unkeyed increment" 202 "$(post shrink 10)"
RECS=$(journal_records)
replay "shrink: a key not restored, from PostgreSQL" shrink8 shrink 1 18
assert_eq "shrink: a key not restored, another request: 422" 422 \
    "$(ipost shrink7 shrink 2)"
assert_eq "shrink: nothing journaled" "$RECS" "$(journal_records)"
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
assert_eq "shrink: PostgreSQL's total at stop" 18 "$(pg_value shrink)"
for i in 1 2 3 4 5 6 7 8; do
	assert_eq "shrink: tally_idempotency holds shrink$i once" 1 \
	    "$(pg_idem_count shrink$i)"
done

# A retry after a restart gets the total first answered, though the
# journal holds only the increments since the checkpoint and PostgreSQL
# only its total at the checkpoint: so too when a kill -9 came between a
# flush's COMMIT and the local checkpoint file (gdb holds the flusher
# there), and PostgreSQL holds more of the journal than the file says.
phase "replays after a restart answer the first total"
node_conf nreb "[postgres]" "flush_interval = 1h"
use_node nreb
tallyd_start
flush
assert_eq "first total: unkeyed 100" 202 "$(post reb 100)"
flush
fresh "first total: a keyed increment after a flush" reb1 reb 1 101
assert_eq "first total: unkeyed 10" 202 "$(post reb 10)"
fresh "first total: another" reb2 reb 2 113
fresh "first total: another key" rebo1 rebo 7 7
tallyd_kill9_all
tallyd_start
replay "first total: after kill -9" reb1 reb 1 101
replay "first total: after kill -9, the next" reb2 reb 2 113
replay "first total: after kill -9, the other key" rebo1 rebo 7 7
assert_eq "first total: the key's total" '{"reb":113}' "$(get reb)"
# The start flushed all that: what follows is in the journal alone.
gdb_attach "$(role_pids flusher)" "$T/gdb-reb.out" \
    -ex 'break checkpoint_write' -ex continue -ex 'shell sleep 600'
fresh "first total: a keyed increment to flush" reb3 reb 3 116
timeout 60 "$TALLYCTL" -c "$CONF" flush >/dev/null 2>&1 &
BGPIDS+=($!)
wait_grep 30 "$T/gdb-reb.out" '^Breakpoint 1, '
assert_match "first total: gdb holds the flusher as it writes the local checkpoint" \
    'Breakpoint 1, .*checkpoint_write' "$(cat "$T/gdb-reb.out")"
assert_eq "first total: PostgreSQL has the batch" 116 "$(pg_value reb)"
fresh "first total: one while the flusher is held" reb4 reb 4 120
tallyd_kill9_all
kill -9 "$GDB_PID" $(ps -o pid= --ppid "$GDB_PID") 2>/dev/null
tallyd_start
assert_match "first total: PostgreSQL's checkpoint was ahead of the file" \
    'PostgreSQL already holds journal LSN' "$(cat "$TALLYD_LOG")"
replay "first total: checkpoint ahead, flushed" reb3 reb 3 116
replay "first total: checkpoint ahead, not flushed" reb4 reb 4 120
assert_eq "first total: the key's total, checkpoint ahead" '{"reb":120}' \
    "$(get reb)"
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
assert_eq "first total: PostgreSQL counts each increment once" 120 \
    "$(pg_value reb)"
assert_eq "first total: tally_idempotency keeps it" "101 113 116 120" \
    "$(pg_sql "select string_agg(total::text, ' ' order by idem_key) from tally_idempotency where idem_key like 'reb_'")"
# Flushed at the stop: the keys come back from PostgreSQL, totals too.
tallyd_start
replay "first total: after a graceful restart" reb1 reb 1 101
replay "first total: after a graceful restart, the last" reb4 reb 4 120
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
# A table made before the total was kept gets the column at start; its
# rows answer the key's total now.
pg_sql "alter table tally_idempotency drop column total" >/dev/null
tallyd_start
assert_eq "first total: the column added to an earlier table" 1 \
    "$(pg_sql "select count(*) from information_schema.columns where table_name = 'tally_idempotency' and column_name = 'total'")"
replay "first total: a row without it, the total now" reb1 reb 1 120
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"

# A worker that dies after its frame is in the journal, before it
# answers: the increment counts (its successor settles it), so a retry is
# a replay of it, with the total it made, not a second increment that the
# node would count until the flush left it out.  gdb holds the worker as
# it answers.
phase "a worker killed between its frame and its answer"
node_conf nwk "[postgres]" "flush_interval = 1h"
sed -i 's/^workers = 2$/workers = 1/' "$T/nwk.conf"
use_node nwk
tallyd_start
assert_eq "dead worker: unkeyed 100" 202 "$(post wk 100)"
worker=$(role_pids worker)
gdb_attach "$worker" "$T/gdb-wk.out" -ex 'break idem_complete' \
    -ex continue -ex 'shell sleep 600'
curl -s -o /dev/null -m 30 -H 'Content-Type: application/json' \
    -H 'Idempotency-Key: wk1' --data-binary '{"key":"wk","value":5}' \
    "$BASE/increment" &
first=$!
BGPIDS+=("$first")
wait_grep 30 "$T/gdb-wk.out" '^Breakpoint 1, '
assert_match "dead worker: gdb holds the worker as it answers" \
    'Breakpoint 1, .*idem_complete' "$(cat "$T/gdb-wk.out")"
kill -9 "$worker" "$GDB_PID" $(ps -o pid= --ppid "$GDB_PID")
wait "$first"
# 409 until the next worker has settled it.
for i in $(seq 100); do
	[ "$(ipost wk1 wk 5)" = 202 ] && break
	sleep 0.1
done
replay "dead worker: the retry" wk1 wk 5 105
assert_match "dead worker: its successor kept the key" \
    'settled the Idempotency-Keys worker [0-9]+ left in flight: 1 in the journal' \
    "$(cat "$TALLYD_LOG")"
assert_eq "dead worker: the key's total" '{"wk":105}' "$(get wk)"
flush
assert_eq "dead worker: PostgreSQL counts it once" 105 "$(pg_value wk)"
assert_eq "dead worker: tally_idempotency keeps the total answered" 105 \
    "$(pg_sql "select total from tally_idempotency where idem_key = 'wk1'")"
# The log names the worker this test killed.
tallyd_kill9_all

# ================================================================ keys not loaded
# The keys this node flushed are no longer in its journal after a restart;
# until the flusher has read them back from PostgreSQL, a reuse for another
# request would look new, so every keyed request waits (503).
phase "PostgreSQL down at start"
node_conf nkl
use_node nkl
tallyd_start
fresh "before the restart: first use" kl1 kl 5 5
pg_wait_value kl 5
pg_wait_idem kl1 1
tallyd_stop TERM
pg_stop
tallyd_start
RECS=$(journal_records)
assert_eq "keys not loaded: a key flushed before, another request: 503" 503 \
    "$(ipost kl1 kl 9)"
json_error "keys not loaded"
assert_match "keys not loaded: the error says why" \
    '"error":"Idempotency-Keys not loaded from PostgreSQL yet"' "$(last_body)"
assert_match "keys not loaded: Retry-After" '^[0-9]+$' "$(last_header Retry-After)"
assert_eq "keys not loaded: a new key: 503" 503 "$(ipost kl2 kl 1)"
assert_eq "keys not loaded: an unkeyed request still 202" 202 "$(post kl 2)"
assert_eq "keys not loaded: only the unkeyed request journaled" \
    $((RECS + 1)) "$(journal_records)"
pg_start
# The flusher says PostgreSQL is up once it has read the keys back.
assert_eq "PostgreSQL back: /readyz" 200 "$(wait_status /readyz 200)"
assert_eq "keys loaded: the other request: 422" 422 "$(ipost kl1 kl 9)"
assert_eq "keys loaded: the same request: status" 202 "$(ipost kl1 kl 5)"
assert_eq "keys loaded: the same request: replayed" true "$(replayed)"
assert_eq "keys loaded: a new key: applied" 202 "$(ipost kl2 kl 1)"
assert_eq "keys loaded: a new key: not a replay" "" "$(replayed)"
pg_wait_value kl 8
pg_wait_idem kl2 1
assert_eq "keys loaded: nothing parked" 0 \
    "$(pg_sql "select count(*) from tally_rejected where idem_key like 'kl%'")"
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"

# ================================================================ reuse elsewhere
# A key used on one node and reused on another, which cannot know it at
# request time: a retry of the same request is counted once; another
# request was answered 202, so at flush it is parked in tally_rejected,
# never silently dropped.
phase "a key reused for another request on another node"
node_conf nx
node_conf ny
use_node nx
tallyd_start
use_node ny
tallyd_start
use_node nx
fresh "node X: first use" xy1 xy 5 5
fresh "node X: another key" xy2 xy 3 8
pg_wait_value xy 8
pg_wait_idem xy1 1
pg_wait_idem xy2 1
use_node ny
assert_eq "node Y: key of X, another request (Y cannot know)" 202 \
    "$(ipost xy1 xy 7)"
assert_eq "node Y: key of X, the same request (a retry)" 202 \
    "$(ipost xy2 xy 3)"
flush
rej() {
	pg_sql "select node || ' ' || key || ' ' || value || ' ' || reason
	    from tally_rejected where idem_key = '$1'"
}
assert_eq "node Y: the other request is parked" \
    "ny xy 7 Idempotency-Key already used for another request" "$(rej xy1)"
assert_eq "node Y: the retry is not parked" "" "$(rej xy2)"
assert_eq "node Y: PostgreSQL counts neither" 8 "$(pg_value xy)"
assert_eq "node Y: the key's first use stays recorded" "nx 5:xy" \
    "$(pg_sql "select node || ' ' || fingerprint from tally_idempotency where idem_key = 'xy1'")"
assert_eq "node Y: the parking is logged once" 1 \
    "$(grep -c 'Idempotency-Key xy1) in tally_rejected: Idempotency-Key already used for another request' "$TALLYD_LOG")"
http GET /metrics >/dev/null
assert_match "node Y: /metrics counts the parking" \
    '^tallyd_rejected_records_total 1$' \
    "$(grep '^tallyd_rejected_records_total ' "$T/last.body")"
wait_total xy 8 "node Y: the parked increment leaves its total"
tallyd_stop TERM
assert_eq "node Y: SIGTERM exit status" 0 "$TALLYD_STATUS"
use_node nx
tallyd_stop TERM
assert_eq "node X: SIGTERM exit status" 0 "$TALLYD_STATUS"
assert_eq "after both stopped: one row parked" 1 \
    "$(pg_sql "select count(*) from tally_rejected where idem_key like 'xy%'")"
assert_eq "after both stopped: PostgreSQL unchanged" 8 "$(pg_value xy)"
# --- PostgreSQL's rows go twice the ttl after their use, not once: a
# node whose flush of a retry comes late (flush_interval, PostgreSQL out
# of its reach) must still find the first use, or count the retry again.
phase "pruning"
node_conf nprune "[idempotency]" "ttl = 60s"
use_node nprune
pg_sql "insert into tally_idempotency (idem_key, fingerprint, node, created_at)
    values ('prune-live', '1:k', 'elsewhere', now() - interval '90 s'),
    ('prune-old', '1:k', 'elsewhere', now() - interval '121 s')" >/dev/null
tallyd_start
# The flusher prunes once it is connected, then every minute.
pg_wait_idem prune-old 0
assert_eq "pruning: a use 1.5 ttl old is kept" 1 "$(pg_idem_count prune-live)"
tallyd_stop TERM
assert_eq "pruning: SIGTERM exit status" 0 "$TALLYD_STATUS"
phase "done"
