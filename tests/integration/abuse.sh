#!/bin/bash
# Hostile clients: slow headers and bodies, thousands of idle connections,
# the per-worker connection cap, malformed HTTP/1.1 (oversized headers,
# garbage after a valid request, bad Content-Length, chunked abuse) and
# HTTP/2 floods (rapid reset, CVE-2023-44487, and the 2019 family).  After
# each: the same master and workers still run, other clients were served
# during the attack, and nothing refused was counted (exact totals over
# GET and in PostgreSQL).  The clients are in abuse.py.
. "$(dirname "$0")/lib.sh"
need psql python3
ABUSE=$top_srcdir/tests/integration/abuse.py

# 3000 idle connections, for the test and for tallyd's workers.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 8000 ] ||
    skip_or_fail "open file limit $(ulimit -n) is below 8000"

# run_abuse ARG...: run abuse.py, counting its TAP lines as ours; its
# "name=value" lines become AB_name.
run_abuse() {
	local l
	while IFS= read -r l; do
		case "$l" in
		"ok - "*) ok "${l#ok - }" ;;
		"not ok - "*) notok "${l#not ok - }" ;;
		[a-z]*=*) printf -v "AB_${l%%=*}" '%s' "${l#*=}" ;;
		*) printf '%s\n' "$l" ;;
		esac
	done < <(python3 -B "$ABUSE" "$@" 2>&1; echo "rc=$?")
	assert_eq "abuse.py $* ran to the end" 0 "${AB_rc:-none}"
	AB_rc=
}

procs() { echo "$TALLYD_PID $(descendants "$TALLYD_PID" | sort -n)" | xargs; }

# still_up WHAT: same processes, no crash in the log, /healthz answers.
still_up() {
	assert_eq "$1: master and children are the same processes" "$PROCS" \
	    "$(procs)"
	assert_eq "$1: /healthz" 200 "$(http GET /healthz)"
}

# The resident memory of tallyd's children, in KiB.
children_rss() {
	local p s=0
	for p in $(descendants "$TALLYD_PID"); do
		s=$((s + $(ps -o rss= -p "$p")))
	done
	echo "$s"
}

PROBE=0
probe_add() { PROBE=$((PROBE + ${AB_probe_posts:-0})); AB_probe_posts=0; }

pg_start
tallyd_conf "[server]" "request_timeout = 2s" "idle_timeout = 2s"
tallyd_start
PROCS=$(procs)
note "processes: $PROCS"
assert_eq "a first increment" 202 "$(post before 5)"

# ---------------------------------------------------------------- slow
run_abuse slow "$TPORT" headers --clients 50 --key slow-h --probe-key probe
probe_add
still_up "slow headers"
run_abuse slow "$TPORT" body --clients 50 --key slow-b --probe-key probe
probe_add
still_up "slow body"

# ---------------------------------------------------------------- idle
run_abuse idle "$TPORT" 3000 --key idle
still_up "3000 idle connections"

# ---------------------------------------------------------------- raw
run_abuse raw "$TPORT" --key raw
still_up "malformed HTTP/1.1"

# ---------------------------------------------------------------- HTTP/2
run_abuse h2 "$TPORT" check
assert_eq "HTTP/2 with prior knowledge is spoken" 1 "${AB_h2_headers:-0}"
rss0=$(children_rss)
for kind in rapid-reset rapid-reset-post ping settings empty-data priority \
    window-update continuation; do
	run_abuse h2 "$TPORT" "$kind" --count 100000 --probe-key probe
	probe_add
	still_up "HTTP/2 $kind flood"
done
# Rapid reset of look-ups that go to PostgreSQL (keys not in memory).
run_abuse h2 "$TPORT" rapid-reset --count 100000 \
    --path /increment/no-such-key --probe-key probe
probe_add
still_up "HTTP/2 rapid reset of PostgreSQL look-ups"
rss1=$(children_rss)
note "children's resident memory: $rss0 KiB before the HTTP/2 floods, $rss1 after"
# AddressSanitizer's quarantine holds freed memory back on purpose, so
# resident memory says nothing about leaks in that build (LeakSanitizer
# checks them there instead).
if nm "$TALLYD" 2>/dev/null | grep -q __asan_init; then
	note "resident memory bound not checked: AddressSanitizer build"
else
	assert_between "the floods grew the children by less than 64 MiB" \
	    0 65536 $((rss1 - rss0 < 0 ? 0 : rss1 - rss0))
fi

# ---------------------------------------------------------------- totals
assert_eq "GET before" 5 "$(total before)"
assert_eq "GET probe: every 202 a bystander had" "$PROBE" "$(total probe)"
assert_eq "GET raw-g: the valid request before the garbage" 1 "$(total raw-g)"
assert_eq "GET raw-p: three pipelined requests" 3 "$(total raw-p)"
assert_eq "GET idle: the other client's POST" 1 "$(total idle)"
for k in slow-h slow-b raw-x; do
	assert_eq "GET $k: refused, so never counted" none "$(total "$k")"
done
assert_eq "GET raw-x: 404" 404 "$(last_status)"
assert_eq "flush" 0 "$(tallyctl flush >/dev/null 2>&1; echo $?)"
pg_wait_value before 5
pg_wait_value probe "$PROBE"
pg_wait_value raw-g 1
pg_wait_value raw-p 3
pg_wait_value idle 1
assert_eq "PostgreSQL holds exactly these keys" \
    "before idle probe raw-g raw-p" \
    "$(pg_sql "select string_agg(key, ' ' order by key) from tally_counters")"
tallyd_stop TERM
assert_eq "SIGTERM: exit 0" 0 "$TALLYD_STATUS"

# ---------------------------------------------------------------- cap
# Two workers of 40 connections each: 80 accepted, the rest wait in the
# kernel's backlog (never accepted and closed) and are served once
# accepted connections go.
tallyd_conf "[server]" "request_timeout = 60s" "max_connections = 40"
tallyd_start
PROCS=$(procs)
run_abuse cap "$TPORT" 80 7
still_up "connection cap"
tallyd_stop TERM

# ---------------------------------------------------------------- http2 off
tallyd_conf "[server]" "http2 = off"
tallyd_start
run_abuse h2 "$TPORT" check
assert_eq "http2 = off: no HTTP/2 answer" 0 "${AB_h2_headers:-0}"
assert_eq "http2 = off: HTTP/1.1 still served" 202 "$(post after 1)"
tallyd_stop TERM
