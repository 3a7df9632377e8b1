#!/bin/bash
# Rate limiting per client: a burst from one client over connections held
# by both workers gets exactly the burst through and 429s with Retry-After
# and a JSON body for the rest, with nothing journaled or counted for
# them; other clients (by source address, over IPv6, or named by a
# trusted proxy's X-Forwarded-For) keep their own buckets; the header is
# ignored from anyone else and a malformed one leaves the proxy as the
# client; probes are exempt; SIGHUP applies a new rate and burst.
. "$(dirname "$0")/lib.sh"
need psql

# ---------------------------------------------------------------- raw HTTP

# Connections held open on file descriptors, so that the test knows which
# worker serves each request: CONN_FD[i], CONN_PID[i] (the worker's pid).
CONN_FD=()
CONN_PID=()

# A connection tallyd closed must fail the request, not kill the test.
trap '' PIPE

# CONN_PID from one look at the sockets: for each of our descriptors, its
# local port, then the process holding the server side of that port.
conns_owners() {
	local rq sq l p proc fd
	local -A port_of pid_of
	while read -r rq sq l p proc; do
		[[ "$proc" =~ pid=$$,fd=([0-9]+)\) ]] || continue
		port_of[${BASH_REMATCH[1]}]=${l##*:}
	done < <(ss -Htnp state established "( dport = :$TPORT )")
	while read -r rq sq l p proc; do
		[[ "$proc" =~ pid=([0-9]+), ]] || continue
		pid_of[${p##*:}]=${BASH_REMATCH[1]}
	done < <(ss -Htnp state established "( sport = :$TPORT )")
	CONN_PID=()
	for fd in "${CONN_FD[@]}"; do
		CONN_PID+=("${pid_of[${port_of[$fd]:-none}]:-none}")
	done
}

# raw FD METHOD PATH [BODY]: one HTTP/1.1 request on the connection; the
# answer in RSTATUS, RBODY, RRETRY and RCTYPE (Retry-After and
# Content-Type).  Only builtins: the bursts must be quick.
raw() {
	local fd=$1 m=$2 path=$3 body=${4:-} req line name len=0
	req="$m $path HTTP/1.1"$'\r\n'"Host: tally"$'\r\n'
	if [ -n "$body" ]; then
		req+="Content-Type: application/json"$'\r\n'
		req+="Content-Length: ${#body}"$'\r\n'
	fi
	req+=$'\r\n'"$body"
	printf '%s' "$req" >&"$fd" || return 1
	RSTATUS= RBODY= RRETRY= RCTYPE=
	IFS= read -r -t 10 -u "$fd" line || return 1
	line=${line%$'\r'}
	RSTATUS=${line#* }
	RSTATUS=${RSTATUS%% *}
	while IFS= read -r -t 10 -u "$fd" line; do
		line=${line%$'\r'}
		[ -z "$line" ] && break
		name=${line%%:*}
		name=${name,,}
		line=${line#*:}
		line=${line# }
		case "$name" in
		content-length) len=$line ;;
		retry-after) RRETRY=$line ;;
		content-type) RCTYPE=$line ;;
		esac
	done
	[ "$len" -gt 0 ] && IFS= read -r -t 10 -N "$len" -u "$fd" RBODY
	return 0
}

# conns_open: 8 connections, each used once, for an exempt request, so
# that it is surely accepted; then the sockets tell who serves which.
# Left to itself the kernel may give every one to the same worker (each
# is idle when the next arrives); at max_connections = 6 (CAP below) a
# worker that has 6 stops accepting and the other takes the rest.
conns_open() {
	local fd i
	for i in 1 2 3 4 5 6 7 8; do
		exec {fd}<>"/dev/tcp/127.0.0.1/$TPORT" || die "cannot connect"
		raw "$fd" GET /healthz || die "no answer on a new connection"
		CONN_FD+=("$fd")
	done
	conns_owners
	[ "$(printf '%s\n' "${CONN_PID[@]}" | sort -u | grep -c '^[0-9]')" -ge 2 ] ||
	    return 1
	conns_interleave
}

# Order the connections so that the workers take turns: a burst taking
# them in order then reaches every worker before the bucket is empty,
# however the kernel spread them.
conns_interleave() {
	local -a fds=() pids=() owners=()
	local -A used=()
	local p i more=1
	mapfile -t owners < <(printf '%s\n' "${CONN_PID[@]}" | sort -u)
	while [ "$more" = 1 ]; do
		more=0
		for p in "${owners[@]}"; do
			for i in "${!CONN_FD[@]}"; do
				[ -z "${used[$i]:-}" ] && [ "${CONN_PID[$i]}" = "$p" ] ||
				    continue
				used[$i]=1
				fds+=("${CONN_FD[$i]}")
				pids+=("$p")
				more=1
				break
			done
		done
	done
	CONN_FD=("${fds[@]}")
	CONN_PID=("${pids[@]}")
}

conns_close() {
	local fd
	for fd in "${CONN_FD[@]}"; do
		exec {fd}>&-
	done
	CONN_FD=()
	CONN_PID=()
}

now_ns() { date +%s%N; }

# burst N KEY: N POSTs of KEY=1, taking the connections in turn; sets
# ACC and LIM (how many 202 and 429), ACC_BY[pid], LIM_BY[pid], RA_MIN,
# RA_MAX (Retry-After seen), BAD (other answers, bad 429s) and ELAPSED_NS.
declare -A ACC_BY LIM_BY
burst() {
	local n=$1 key=$2 i k t0 ra line
	ACC=0 LIM=0 BAD= RA_MIN=999999 RA_MAX=0
	ACC_BY=() LIM_BY=()
	: >"$T/bodies"
	t0=$(now_ns)
	for ((i = 0; i < n; i++)); do
		k=$((i % ${#CONN_FD[@]}))
		raw "${CONN_FD[$k]}" POST /increment "{\"key\":\"$key\",\"value\":1}" ||
		    { BAD+="no answer; "; continue; }
		case "$RSTATUS" in
		202)
			ACC=$((ACC + 1))
			ACC_BY[${CONN_PID[$k]}]=$((${ACC_BY[${CONN_PID[$k]}]:-0} + 1))
			;;
		429)
			LIM=$((LIM + 1))
			LIM_BY[${CONN_PID[$k]}]=$((${LIM_BY[${CONN_PID[$k]}]:-0} + 1))
			ra=$RRETRY
			[[ "$ra" =~ ^[0-9]+$ ]] || { BAD+="Retry-After '$ra'; "; continue; }
			[ "$ra" -lt "$RA_MIN" ] && RA_MIN=$ra
			[ "$ra" -gt "$RA_MAX" ] && RA_MAX=$ra
			printf '%s\n' "$RBODY" >>"$T/bodies"
			[ "$RCTYPE" = application/json ] ||
			    BAD+="429 content type '$RCTYPE'; "
			;;
		*)
			BAD+="status $RSTATUS; "
			;;
		esac
	done
	ELAPSED_NS=$(($(now_ns) - t0))
	while IFS= read -r line; do
		[ "$(printf '%s' "$line" | json_min)" = '{"error":"rate limit exceeded"}' ] ||
		    BAD+="429 body '$line'; "
	done < <(sort -u "$T/bodies")
}

# from ADDR METHOD PATH [CURL_ARG]...: a request from source address ADDR.
from() {
	local addr=$1
	shift
	http "$@" --interface "$addr"
}

post_from() {
	local addr=$1 key=$2
	shift 2
	from "$addr" POST /increment -H 'Content-Type: application/json' \
	    --data-binary "{\"key\":\"$key\",\"value\":1}" "$@"
}

# count_from ADDR N KEY [CURL_ARG]...: N POSTs; prints "accepted limited".
count_from() {
	local addr=$1 n=$2 key=$3 a=0 l=0 i st
	shift 3
	for i in $(seq 1 "$n"); do
		st=$(post_from "$addr" "$key" "$@")
		case "$st" in
		202) a=$((a + 1)) ;;
		429) l=$((l + 1)) ;;
		esac
	done
	echo "$a $l"
}


# ---------------------------------------------------------------- the test

# A rate low enough that no token comes back during the test (one every
# 100 s), so that the counts are exact; each bound below still allows
# for the time the test measured.
pg_start
CAP=("[server]" "max_connections = 6")
PORT6=$(free_port) || die "no free port"
HAVE6=0
ip -6 addr show dev lo 2>/dev/null | grep -q 'inet6 ::1/' && HAVE6=1
tallyd_conf "${CAP[@]}" "[ratelimit]" "rate = 0.01" "burst = 10" \
    "trusted_proxies = 127.0.0.3, 10.0.0.0/8"
if [ "$HAVE6" = 1 ]; then
	printf '[server]\nlisten = 127.0.0.1:%s, [::1]:%s\n' "$TPORT" "$PORT6" \
	    >>"$CONF"
fi
tallyd_start

WORKERS=$(tallyctl -j status | grep -o '"role":"worker","pid":[0-9]*' |
    sed 's/.*://' | sort | tr '\n' ' ')
note "workers: $WORKERS"

# --- one client, 40 requests over connections held by both workers
conns_open || die "8 connections at max_connections = 6 and one worker serves them all"
note "connections served by: $(printf '%s ' "${CONN_PID[@]}")"
for p in "${CONN_PID[@]}"; do
	case " $WORKERS " in
	*" $p "*) ;;
	*) notok "connection served by $p, which is not a worker" ;;
	esac
done
RECS0=$(journal_records)
burst 40 rl-one
note "40 requests in $((ELAPSED_NS / 1000000)) ms"
REFILL=$((ELAPSED_NS / 100000000000))
assert_between "one client: exactly the burst accepted (10)" 10 $((10 + REFILL)) "$ACC"
assert_eq "one client: the rest 429" 40 $((ACC + LIM))
assert_eq "one client: every 429 with a JSON body and a numeric Retry-After" "" "$BAD"
assert_between "Retry-After: the seconds until one token (100)" \
    $((100 - ELAPSED_NS / 1000000000 - 1)) 100 "$RA_MAX"
assert_between "Retry-After is at least 1" 1 100 "$RA_MIN"
for p in $(printf '%s\n' "${CONN_PID[@]}" | sort -u); do
	assert_between "worker $p accepted some (one bucket for both)" 1 10 "${ACC_BY[$p]:-0}"
	assert_between "worker $p refused some" 1 40 "${LIM_BY[$p]:-0}"
done
assert_eq "the 429s were not journaled" "$ACC" $(($(journal_records) - RECS0))
# Probes and metrics are exempt.
for path in /healthz /readyz /metrics; do
	raw "${CONN_FD[0]}" GET "$path"
	assert_eq "GET $path from the limited client: 200" 200 "$RSTATUS"
done
LIMITED=$(metric ratelimited_requests_total)
assert_eq "/metrics counts the 429s" "$LIM" "$LIMITED"
assert_match "tallyctl status counts them" "\"limited\":$LIM," "$(tallyctl -j status)"
assert_match "tallyctl status says so" "rate limit: 0.01/s per client .*; $LIM requests refused" \
    "$(tallyctl status)"
# GETs are limited too.
raw "${CONN_FD[1]}" GET /increment/rl-one
assert_eq "GET /increment/KEY from the limited client: 429" 429 "$RSTATUS"
raw "${CONN_FD[1]}" GET /nowhere
assert_eq "GET of an unknown path from the limited client: 429" 429 "$RSTATUS"
pg_wait_value rl-one "$ACC"

# --- another source address has its own bucket
T_FIRST=$(now_ns)
assert_eq "127.0.0.2: 10 accepted, then limited" "10 2" "$(count_from 127.0.0.2 12 rl-two)"
ELAPSED=$(( ($(now_ns) - T_FIRST) / 1000000000 ))
assert_between "127.0.0.2: 429 has Retry-After (100 s less the time taken)" \
    $((100 - ELAPSED - 1)) 100 "$(last_header Retry-After)"
assert_eq "127.0.0.1 is still limited" 429 "$(post_from 127.0.0.1 rl-one)"
from 127.0.0.4 GET /increment/rl-one >/dev/null
assert_eq "GET of the total from a fresh client" "{\"rl-one\":$ACC}" "$(last_body)"
from 127.0.0.4 GET /increment/rl-two >/dev/null
assert_eq "GET of the other client's total" '{"rl-two":10}' "$(last_body)"
pg_wait_value rl-two 10

# --- X-Forwarded-For from an untrusted address is ignored
assert_eq "127.0.0.2 with X-Forwarded-For: still its own bucket" "0 3" \
    "$(count_from 127.0.0.2 3 rl-two -H 'X-Forwarded-For: 198.51.100.77')"
assert_eq "127.0.0.1 with X-Forwarded-For: still limited" 429 \
    "$(post_from 127.0.0.1 rl-one -H 'X-Forwarded-For: 198.51.100.78')"

# --- from a trusted proxy, X-Forwarded-For names the client
assert_eq "proxy for 198.51.100.1: 10 accepted, then limited" "10 2" \
    "$(count_from 127.0.0.3 12 rl-xff -H 'X-Forwarded-For: 198.51.100.1')"
assert_eq "proxy for 198.51.100.2: a bucket of its own" "10 1" \
    "$(count_from 127.0.0.3 11 rl-xff -H 'X-Forwarded-For: 198.51.100.2')"
assert_eq "the last untrusted address counts, not what the client wrote" 429 \
    "$(post_from 127.0.0.3 rl-xff -H 'X-Forwarded-For: 203.0.113.9, 198.51.100.1')"
assert_eq "trusted hops on the right are skipped" 429 \
    "$(post_from 127.0.0.3 rl-xff -H 'X-Forwarded-For: 198.51.100.1, 10.1.2.3')"
assert_eq "several header lines are one list" 429 \
    "$(post_from 127.0.0.3 rl-xff -H 'X-Forwarded-For: 198.51.100.2' \
        -H 'X-Forwarded-For: 10.1.2.3')"
assert_eq "IPv6 in X-Forwarded-For" "10 1" \
    "$(count_from 127.0.0.3 11 rl-xff -H 'X-Forwarded-For: [2001:db8::1]:4711')"
# Malformed: the proxy itself is the client, whose bucket is still full.
assert_eq "proxy, malformed X-Forwarded-For: the proxy's bucket" "10 1" \
    "$(count_from 127.0.0.3 11 rl-xff -H 'X-Forwarded-For: 198.51.100.1, not-an-address')"
assert_eq "proxy without X-Forwarded-For: the same bucket" 429 \
    "$(post_from 127.0.0.3 rl-xff)"
assert_eq "proxy, empty X-Forwarded-For: the same bucket" 429 \
    "$(post_from 127.0.0.3 rl-xff -H 'X-Forwarded-For;')"
assert_eq "proxy for a new client: accepted" 202 \
    "$(post_from 127.0.0.3 rl-xff -H 'X-Forwarded-For: 198.51.100.3')"
pg_wait_value rl-xff 41

# --- IPv6 clients
if [ "$HAVE6" = 1 ]; then
	for i in $(seq 1 11); do
		st=$(curl -s -g -o /dev/null -w '%{http_code}' -m 10 \
		    -H 'Content-Type: application/json' \
		    --data-binary '{"key":"rl-six","value":1}' \
		    "http://[::1]:$PORT6/increment")
		echo "$st"
	done >"$T/six"
	assert_eq "::1: 10 accepted, then limited" "10 1" \
	    "$(grep -c '^202$' "$T/six") $(grep -c '^429$' "$T/six")"
else
	note "no IPv6 loopback: IPv6 client not tested"
fi

# --- SIGHUP applies a new burst, then turns limiting off
tallyd_conf "${CAP[@]}" "[ratelimit]" "rate = 0.01" "burst = 12" \
    "trusted_proxies = 127.0.0.3, 10.0.0.0/8"
[ "$HAVE6" = 1 ] && printf '[server]\nlisten = 127.0.0.1:%s, [::1]:%s\n' \
    "$TPORT" "$PORT6" >>"$CONF"
tallyctl reload >/dev/null || notok "tallyctl reload failed"
# Two more tokens of room; a token back per 100 s since the first burst.
ELAPSED=$(( ($(now_ns) - T_FIRST) / 1000000000 ))
assert_between "reload burst = 12: two more for 127.0.0.2" 2 \
    $((2 + ELAPSED / 100)) "$(count_from 127.0.0.2 5 rl-two | cut -d' ' -f1)"
tallyd_conf "${CAP[@]}" "[ratelimit]" "rate = 0"
[ "$HAVE6" = 1 ] && printf '[server]\nlisten = 127.0.0.1:%s, [::1]:%s\n' \
    "$TPORT" "$PORT6" >>"$CONF"
tallyctl reload >/dev/null || notok "tallyctl reload failed"
assert_eq "reload rate = 0: no limit" "20 0" "$(count_from 127.0.0.1 20 rl-off)"
conns_close
tallyd_stop

# --- rate = 5, burst = 10: refill during the burst, bounded by the time
# it took
tallyd_conf "${CAP[@]}" "[ratelimit]" "rate = 5" "burst = 10"
tallyd_start
conns_open || die "8 connections at max_connections = 6 and one worker serves them all"
burst 40 rl-five
note "40 requests in $((ELAPSED_NS / 1000000)) ms"
MAXOK=$((10 + ELAPSED_NS * 5 / 1000000000))
[ "$MAXOK" -gt 40 ] && MAXOK=40
assert_between "rate 5, burst 10: 10 + 5/s of the elapsed time at most" 10 "$MAXOK" "$ACC"
assert_eq "rate 5: the rest 429" 40 $((ACC + LIM))
assert_eq "rate 5: every 429 well formed" "" "$BAD"
if [ "$LIM" -gt 0 ]; then
	assert_eq "rate 5: Retry-After 1 (a token every 200 ms)" "1 1" "$RA_MIN $RA_MAX"
fi
pg_wait_value rl-five "$ACC"
conns_close
tallyd_stop
