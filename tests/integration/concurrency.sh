#!/bin/bash
# Many concurrent increments over HTTP/2 and HTTP/1.1: each key's total,
# on this node and in PostgreSQL, is exactly the sum of what was
# acknowledged.
. "$(dirname "$0")/lib.sh"
need h2load psql

pg_start
tallyd_conf
tallyd_start

# h2load_run OUT KEY VALUE H2LOAD_ARG...
h2load_run() {
	local out=$1 key=$2 value=$3
	shift 3
	printf '{"key":"%s","value":%s}' "$key" "$value" >"$out.json"
	h2load "$@" -d "$out.json" -H 'Content-Type: application/json' \
	    "$BASE/increment" >"$out" 2>&1
}

# curl_loop OUT KEY VALUE ROUNDS: ROUNDS curl runs of 50 keep-alive POSTs;
# one line per 202 in OUT.
curl_loop() {
	local out=$1 key=$2 value=$3 rounds=$4 i urls=()
	for i in $(seq 50); do
		urls+=(-o /dev/null "$BASE/increment")
	done
	: >"$out"
	for i in $(seq "$rounds"); do
		curl -s -m 60 -w '%{http_code}\n' \
		    -H 'Content-Type: application/json' \
		    --data-binary "{\"key\":\"$key\",\"value\":$value}" \
		    "${urls[@]}" | grep '^202$' >>"$out"
	done
}

START=$(date +%s)
h2load_run "$T/hot" hot 3 -n 20000 -c 32 -m 8 &
BGPIDS+=($!)
h2load_run "$T/hot1" hot1 2 --h1 -n 5000 -c 16 &
BGPIDS+=($!)
CKEYS=(c1 c2 c3 c4)
CVALS=(1 7 -2 1000000007)
for i in 0 1 2 3; do
	curl_loop "$T/${CKEYS[$i]}.acks" "${CKEYS[$i]}" "${CVALS[$i]}" 8 &
	BGPIDS+=($!)
done
for p in "${BGPIDS[@]}"; do
	wait "$p"
done
BGPIDS=()
note "load took $(( $(date +%s) - START )) s"

acked() { sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$1"; }
HOT=$(acked "$T/hot")
HOT1=$(acked "$T/hot1")
assert_eq "h2load h2c: every request acknowledged" 20000 "${HOT:-none}"
assert_eq "h2load HTTP/1.1: every request acknowledged" 5000 "${HOT1:-none}"
grep -E 'requests:|status codes:|finished in' "$T/hot" "$T/hot1" | sed 's/^/# /'

assert_eq "hot: total is what was acknowledged" $(( ${HOT:-0} * 3 )) "$(total hot)"
assert_eq "hot1: total is what was acknowledged" $(( ${HOT1:-0} * 2 )) "$(total hot1)"
for i in 0 1 2 3; do
	n=$(wc -l <"$T/${CKEYS[$i]}.acks")
	assert_eq "${CKEYS[$i]}: all 400 curl requests acknowledged" 400 "$n"
	CWANT[$i]=$(( n * ${CVALS[$i]} ))
	assert_eq "${CKEYS[$i]}: total is what was acknowledged" "${CWANT[$i]}" \
	    "$(total "${CKEYS[$i]}")"
done

pg_wait_value hot $(( ${HOT:-0} * 3 ))
pg_wait_value hot1 $(( ${HOT1:-0} * 2 ))
for i in 0 1 2 3; do
	pg_wait_value "${CKEYS[$i]}" "${CWANT[$i]}"
done
assert_eq "PostgreSQL has exactly these keys" 6 \
    "$(pg_sql "select count(*) from tally_counters")"

# A graceful stop and a restart on the same state: nothing applied twice.
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
tallyd_start
assert_eq "after restart: hot" $(( ${HOT:-0} * 3 )) "$(total hot)"
assert_eq "after restart: c4" "${CWANT[3]}" "$(total c4)"
sleep 1
pg_wait_value hot $(( ${HOT:-0} * 3 ))
pg_wait_value c4 "${CWANT[3]}"
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
