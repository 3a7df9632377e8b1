#!/bin/bash
# Metrics: GET /metrics passes promtool's lint and Prometheus' own parser
# (the Python client's), its counters move by exactly what the test sends,
# histograms count every request, fsync and flush; StatsD pushes the same
# counters as deltas to a UDP listener, with the configured prefix, and a
# reload changes the prefix.
. "$(dirname "$0")/lib.sh"
need psql promtool
PY=/usr/bin/python3
[ -x "$PY" ] && "$PY" -c 'import prometheus_client.parser' 2>/dev/null ||
    skip_or_fail "python3-prometheus-client not installed"

# parse FILE: every sample as 'name{label="v",...} value', labels sorted,
# by prometheus_client's parser (which refuses what is not the format).
cat >"$T/parse.py" <<'EOF'
import sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1]).read()
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        labels = ",".join('%s="%s"' % (k, s.labels[k]) for k in sorted(s.labels))
        v = s.value
        v = int(v) if v == int(v) else v
        print("%s%s %s" % (s.name, "{%s}" % labels if labels else "", v))
EOF

# A StatsD server: each datagram's lines appended to a file.
cat >"$T/statsd.py" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
open(sys.argv[1] + ".port", "w").write(str(s.getsockname()[1]))
with open(sys.argv[1], "a") as f:
    while True:
        d = s.recv(65536).decode()
        f.write(d + "\n")
        f.flush()
EOF

UDP=$T/statsd.lines
"$PY" "$T/statsd.py" "$UDP" &
BGPIDS+=($!)
for i in $(seq 50); do
	[ -s "$UDP.port" ] && break
	sleep 0.1
done
[ -s "$UDP.port" ] || die "the StatsD listener did not start"
UPORT=$(cat "$UDP.port")

SCRAPES=0
# scrape: GET /metrics into $T/m.N, checked by promtool and parsed into
# $T/m.N.v; N in $S (not in a subshell: the count must survive).
scrape() {
	local f
	SCRAPES=$((SCRAPES + 1))
	f=$T/m.$SCRAPES
	curl -s -m 10 -o "$f" -D "$f.headers" "$BASE/metrics"
	promtool check metrics <"$f" >"$f.lint" 2>&1 ||
	    notok "promtool check metrics: scrape $SCRAPES: $(tr '\n' ' ' <"$f.lint")"
	"$PY" "$T/parse.py" "$f" >"$f.v" 2>"$f.err" ||
	    notok "Prometheus parser refused scrape $SCRAPES: $(cat "$f.err")"
	S=$SCRAPES
}

# val N SAMPLE: the value of SAMPLE in scrape N, 0 when absent.
val() {
	awk -v k="$2" '$1 == k { v = $2 } END { print v == "" ? 0 : v }' \
	    "$T/m.$1.v"
}

# sum N NAME: the sum of NAME over all its labels in scrape N.
sum() {
	awk -v k="$2" 'index($1, k "{") == 1 || $1 == k { s += $2 }
	    END { print s + 0 }' "$T/m.$1.v"
}

# statsd_sum NAME TYPE: the sum of NAME's values of that type received.
statsd_sum() {
	awk -F'[:|]' -v k="$1" -v t="$2" '$1 == k && $3 == t { s += $2 }
	    END { print s + 0 }' "$UDP"
}

# statsd_wait NAME TYPE WANT: poll (15 s) until the sum is WANT; prints it.
statsd_wait() {
	local i got
	for i in $(seq 75); do
		got=$(statsd_sum "$1" "$2")
		[ "$got" = "$3" ] && break
		sleep 0.2
	done
	echo "$got"
}

# settled: wait until PostgreSQL holds the whole journal, so the syncer
# and flusher are idle and their counters still.
settled() {
	local i n
	for i in $(seq 75); do
		scrape; n=$S
		[ "$(val "$n" tallyd_journal_backlog_bytes)" = 0 ] &&
		    [ "$(val "$n" tallyd_journal_durable_lsn)" = \
		      "$(val "$n" tallyd_journal_insert_lsn)" ] && break
		sleep 0.2
	done
}

pg_start
tallyd_conf "[counters]" "max_keys = 5000" \
    "[metrics]" "statsd = 127.0.0.1:$UPORT" "prefix = tt.one"
tallyd_start

# ---------------------------------------------------------------- format
scrape; a=$S
assert_eq "content type is the text format" "text/plain; version=0.0.4" \
    "$(grep -i '^content-type:' "$T/m.$a.headers" | sed 's/^[^:]*: *//' | tr -d '\r')"
assert_eq "promtool lint is clean" "" "$(cat "$T/m.$a.lint")"
for m in tallyd_increments_total tallyd_idempotent_replays_total \
    tallyd_ratelimited_requests_total tallyd_rejected_records_total \
    tallyd_journal_bytes_total tallyd_journal_frames_total \
    tallyd_journal_fsyncs_total tallyd_flushes_total \
    tallyd_rows_upserted_total tallyd_postgres_errors_total \
    tallyd_postgres_reconnects_total tallyd_idempotency_duplicates_total; do
	assert_eq "$m is a counter" 1 \
	    "$(grep -c "^# TYPE $m counter\$" "$T/m.$a")"
done
for m in tallyd_journal_written_lsn tallyd_journal_durable_lsn \
    tallyd_journal_checkpoint_lsn tallyd_journal_backlog_bytes \
    tallyd_keys tallyd_keys_capacity tallyd_idempotency_keys \
    tallyd_idempotency_keys_capacity tallyd_postgres_up; do
	assert_eq "$m is a gauge" 1 "$(grep -c "^# TYPE $m gauge\$" "$T/m.$a")"
done
for m in tallyd_request_duration_seconds tallyd_journal_fsync_duration_seconds \
    tallyd_flush_duration_seconds; do
	assert_eq "$m is a histogram" 1 \
	    "$(grep -c "^# TYPE $m histogram\$" "$T/m.$a")"
	assert_eq "$m has a +Inf bucket" 1 \
	    "$(grep -c "^${m}_bucket{le=\"+Inf\"} " "$T/m.$a")"
done
assert_eq "keys_capacity is max_keys" 5000 "$(val "$a" tallyd_keys_capacity)"
assert_eq "postgres_up" 1 "$(val "$a" tallyd_postgres_up)"

# ---------------------------------------------------------------- counters
N=25 M=4
for i in $(seq $N); do
	[ "$(post a 2)" = 202 ] || notok "increment $i not acknowledged"
done
[ "$(post_body '{"key":"k","value":5}' -H 'Idempotency-Key: abc')" = 202 ] ||
    notok "keyed increment not acknowledged"
for i in $(seq $M); do
	[ "$(post_body '{"key":"k","value":5}' -H 'Idempotency-Key: abc')" = 202 ] ||
	    notok "replay $i not answered 202"
done
# Refusals: 3 bad JSON, 2 wrong content type, 1 wrong method, 2 unknown
# paths, 1 GET of a key never seen.
for i in 1 2 3; do post_body '{"key":' >/dev/null; done
for i in 1 2; do
	http POST /increment -H 'Content-Type: text/plain' \
	    --data-binary '{"key":"a","value":1}' >/dev/null
done
http DELETE /increment >/dev/null
http GET /nowhere >/dev/null
http GET /api/v1/nowhere/else >/dev/null
http GET /increment/never >/dev/null
assert_eq "the last answer was 404" 404 "$(last_status)"
scrape; b=$S

d() { echo $(( $(val "$b" "$1") - $(val "$a" "$1") )); }
assert_eq "increments_total moved by N+1" $((N + 1)) "$(d tallyd_increments_total)"
assert_eq "idempotent_replays_total moved by M" $M \
    "$(d tallyd_idempotent_replays_total)"
R='tallyd_http_requests_total'
assert_eq "requests: increment 202" $((N + 1 + M)) \
    "$(d "$R{code=\"202\",route=\"increment\"}")"
assert_eq "requests: increment 400" 3 "$(d "$R{code=\"400\",route=\"increment\"}")"
assert_eq "requests: increment 415" 2 "$(d "$R{code=\"415\",route=\"increment\"}")"
assert_eq "requests: increment 405" 1 "$(d "$R{code=\"405\",route=\"increment\"}")"
assert_eq "requests: other 404" 2 "$(d "$R{code=\"404\",route=\"other\"}")"
assert_eq "requests: get 404" 1 "$(d "$R{code=\"404\",route=\"get\"}")"
assert_eq "requests: the previous scrape" 1 \
    "$(d "$R{code=\"200\",route=\"metrics\"}")"
assert_eq "requests: all of them" $((N + 1 + M + 9 + 1)) \
    $(( $(sum "$b" $R) - $(sum "$a" $R) ))
assert_eq "request histogram counts every request" "$(sum "$b" $R)" \
    "$(val "$b" tallyd_request_duration_seconds_count)"
assert_eq "request histogram: +Inf bucket is the count" \
    "$(val "$b" tallyd_request_duration_seconds_count)" \
    "$(val "$b" 'tallyd_request_duration_seconds_bucket{le="+Inf"}')"
assert_eq "request histogram: buckets never decrease" "" \
    "$(awk 'index($1, "tallyd_request_duration_seconds_bucket") == 1 {
	    if ($2 < last) print $0; last = $2 }' "$T/m.$b.v")"
assert_match "request histogram: a sum in seconds" '^[0-9.e-]+$' \
    "$(val "$b" tallyd_request_duration_seconds_sum)"
assert_eq "keys held" 2 "$(val "$b" tallyd_keys)"

settled
c=$S
assert_between "journal frames written" 1 $((N + 1)) \
    "$(val "$c" tallyd_journal_frames_total)"
assert_between "journal bytes written" 100 99999999 \
    "$(val "$c" tallyd_journal_bytes_total)"
assert_between "fsyncs" 1 99999999 "$(val "$c" tallyd_journal_fsyncs_total)"
assert_eq "fsync histogram counts every fsync" \
    "$(val "$c" tallyd_journal_fsyncs_total)" \
    "$(val "$c" tallyd_journal_fsync_duration_seconds_count)"
assert_between "flushes" 1 99999999 "$(val "$c" tallyd_flushes_total)"
assert_eq "flush histogram counts every flush" \
    "$(val "$c" tallyd_flushes_total)" \
    "$(val "$c" tallyd_flush_duration_seconds_count)"
assert_between "rows upserted" 2 99999999 "$(val "$c" tallyd_rows_upserted_total)"
assert_eq "checkpoint LSN caught up with the durable one" \
    "$(val "$c" tallyd_journal_durable_lsn)" \
    "$(val "$c" tallyd_journal_checkpoint_lsn)"
assert_eq "no rejected records" 0 "$(val "$c" tallyd_rejected_records_total)"
assert_eq "no rate-limited requests" 0 "$(val "$c" tallyd_ratelimited_requests_total)"
assert_eq "no restarts yet" 0 "$(sum "$c" tallyd_process_restarts_total)"

# ---------------------------------------------------------------- StatsD
assert_eq "StatsD: increments" $((N + 1)) "$(statsd_wait tt.one.increments c $((N + 1)))"
assert_eq "StatsD: replays" $M "$(statsd_wait tt.one.idempotent_replays c $M)"
assert_eq "StatsD: increment 202" $((N + 1 + M)) \
    "$(statsd_wait tt.one.http_requests.increment.202 c $((N + 1 + M)))"
assert_eq "StatsD: increment 400" 3 "$(statsd_wait tt.one.http_requests.increment.400 c 3)"
assert_eq "StatsD: other 404" 2 "$(statsd_wait tt.one.http_requests.other.404 c 2)"
assert_eq "StatsD: keys gauge" "tt.one.keys:2|g" \
    "$(grep '^tt\.one\.keys:' "$UDP" | tail -n 1)"
assert_eq "StatsD: keys_capacity gauge" "tt.one.keys_capacity:5000|g" \
    "$(grep '^tt\.one\.keys_capacity:' "$UDP" | tail -n 1)"
assert_match "StatsD: request latency timer" '^tt\.one\.request_duration:[0-9]+\.[0-9]{3}\|ms$' \
    "$(grep '^tt\.one\.request_duration:' "$UDP" | tail -n 1)"
assert_eq "StatsD: every line is name:value|type" "" \
    "$(grep -Ev '^$|^tt\.one\.[a-z0-9_.]+:[0-9.]+\|(c|g|ms)$' "$UDP")"

# A reload changes the prefix.
sed -i 's/^prefix = tt.one$/prefix = tt.two/' "$CONF"
kill -HUP "$TALLYD_PID"
for i in $(seq 50); do
	grep -q "prefix 'tt.two'" "$TALLYD_LOG" && break
	sleep 0.1
done
assert_eq "reload: increment" 202 "$(post a 1)"
assert_eq "StatsD after reload: the new prefix" 1 "$(statsd_wait tt.two.increments c 1)"

# ---------------------------------------------------------------- restarts
kids=($(pgrep -P "$TALLYD_PID"))
v=${kids[$((RANDOM % ${#kids[@]}))]}
kill -9 "$v"
for i in $(seq 100); do
	role=$(sed -n "s/.* \([a-z]*\) (pid $v) killed by signal 9 .*/\1/p" "$TALLYD_LOG")
	[ -n "$role" ] && break
	sleep 0.1
done
assert_match "the master logged the death of pid $v" '^(worker|syncer|flusher)$' "$role"
for i in $(seq 100); do
	scrape; n=$S
	[ "$(val "$n" "tallyd_process_restarts_total{role=\"$role\"}")" = 1 ] && break
	sleep 0.1
done
assert_eq "restarts: $role" 1 "$(val "$n" "tallyd_process_restarts_total{role=\"$role\"}")"
assert_eq "restarts: one in all" 1 "$(sum "$n" tallyd_process_restarts_total)"
assert_eq "StatsD: the restart" 1 "$(statsd_wait "tt.two.process_restarts.$role" c 1)"
# A new flusher connecting again is a reconnect.
want=0
[ "$role" = flusher ] && want=1
for i in $(seq 100); do
	scrape; n=$S
	[ "$(val "$n" tallyd_postgres_reconnects_total)" = $want ] &&
	    [ "$(val "$n" tallyd_postgres_up)" = 1 ] && break
	sleep 0.1
done
assert_eq "reconnects after the $role restarted" $want \
    "$(val "$n" tallyd_postgres_reconnects_total)"

# ---------------------------------------------------------------- PostgreSQL
scrape; e=$S
pg_stop
for i in $(seq 75); do
	scrape; n=$S
	[ "$(val "$n" tallyd_postgres_up)" = 0 ] && break
	post a 1 >/dev/null
	sleep 0.2
done
assert_eq "PostgreSQL down: postgres_up" 0 "$(val "$n" tallyd_postgres_up)"
assert_between "PostgreSQL down: errors counted" $(( $(val "$e" tallyd_postgres_errors_total) + 1 )) \
    999999 "$(val "$n" tallyd_postgres_errors_total)"
pg_start
for i in $(seq 150); do
	scrape; n=$S
	[ "$(val "$n" tallyd_postgres_up)" = 1 ] && break
	sleep 0.2
done
assert_eq "PostgreSQL back: postgres_up" 1 "$(val "$n" tallyd_postgres_up)"
assert_eq "PostgreSQL back: one reconnect" \
    $(( $(val "$e" tallyd_postgres_reconnects_total) + 1 )) \
    "$(val "$n" tallyd_postgres_reconnects_total)"

# ---------------------------------------------------------------- StatsD gone
# Nobody listens any more: sends fail (ICMP port unreachable on the
# connected socket), are logged once a minute at most, and change nothing.
kill "${BGPIDS[0]}"
wait "${BGPIDS[0]}" 2>/dev/null
for i in $(seq 100); do
	grep -q "StatsD 127.0.0.1:$UPORT: cannot send" "$TALLYD_LOG" && break
	post a 1 >/dev/null
	sleep 0.1
done
for i in $(seq 10); do post a 1 >/dev/null; sleep 0.1; done
assert_eq "StatsD gone: the failure is logged once" 1 \
    "$(grep -c "StatsD 127.0.0.1:$UPORT: cannot send" "$TALLYD_LOG")"
assert_eq "StatsD gone: increments acknowledged" 202 "$(post a 1)"

# Stopped by hand: tallyd_stop would count the child killed above.
pids="$TALLYD_PID $(descendants "$TALLYD_PID")"
kill -TERM "$TALLYD_PID"
wait_gone 30 $pids || die "tallyd did not stop within 30 s of SIGTERM"
wait "$TALLYD_PID"
assert_eq "graceful stop: exit status" 0 "$?"
TALLYD_PID=
assert_eq "no process died but the one killed" "" \
    "$(grep -E 'killed by signal|exited with code|fatal code' "$TALLYD_LOG" |
    grep -v "(pid $v) killed by signal 9 ")"
