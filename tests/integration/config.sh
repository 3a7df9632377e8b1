#!/bin/bash
# The configuration: tallyd -t on good and bad files (every error printed
# with its line), -o overrides, and a tallyd that refuses to start on a bad
# configuration.
. "$(dirname "$0")/lib.sh"
need psql

[ -x "$TALLYD" ] || die "$TALLYD not built"

# check_conf FILE [ARG]...: runs tallyd -t; leaves the output in $OUT and
# prints the exit status.
OUT=$T/check.out
check_conf() {
	local f=$1 st=0
	shift
	"$TALLYD" -t -c "$f" "$@" >"$OUT" 2>&1 </dev/null || st=$?
	echo $st
}
out() { cat "$OUT"; }

pg_start
tallyd_conf
GOOD=$CONF

# --- good configurations
assert_eq "-t on the test configuration: exit 0" 0 "$(check_conf "$GOOD")"
assert_eq "-t prints configuration OK" "configuration OK" "$(out)"
out=$("$TALLYD" -v); st=$?
assert_eq "-v exits 0" 0 "$st"
assert_match "-v prints the version" '^tallyd [0-9]+\.[0-9]+\.[0-9]+$' "$out"
: >"$T/empty.conf"
assert_eq "-t on an empty file (every key has a default)" 0 "$(check_conf "$T/empty.conf")"
printf '# only a comment\n\n[server]\n# and another\n' >"$T/comments.conf"
assert_eq "-t on comments and an empty section" 0 "$(check_conf "$T/comments.conf")"
cat >"$T/units.conf" <<EOF
[server]
max_body = 8K
workers = auto
[journal]
segment_size = 64M
max_size = 4G
sync = interval
commit_delay = 2ms
sync_interval = 1s
[postgres]
flush_interval = 250ms
[idempotency]
ttl = 24h
[counters]
max_keys = 1000
EOF
assert_eq "-t on sizes K/M/G and durations ms/s/h" 0 "$(check_conf "$T/units.conf")"
[ "$(cat "$OUT")" = "configuration OK" ] || sed 's/^/#   /' "$OUT"
printf '[postgres]\nflush_interval = 5m\n[journal]\nsync = group\n' >"$T/minutes.conf"
assert_eq "-t on a duration in minutes" 0 "$(check_conf "$T/minutes.conf")"

# --- a file with many errors: all reported, each with its line
BAD=$T/bad.conf
cat >"$BAD" <<EOF
[server]
workers = lots
nosuchkey = 1
[journal]
segment_size = 12Q
sync = sometimes
[postgres]
flush_interval = 5 parsecs
[nosuchsection]
foo = 1
[counters]
max_key_bytes = -1
this line is not ini
[journal]
commit_delay = -1s
EOF
assert_eq "-t on a bad file: exit 1" 1 "$(check_conf "$BAD")"
sed 's/^/#   | /' "$OUT"
for line in 2 3 5 6 8 9 12 13 15; do
	assert_match "error reported for $BAD line $line" "$BAD:$line[^0-9]" "$(out)"
done
assert_match "the unknown key is named" "nosuchkey" "$(out)"
assert_match "the unknown section is named" "nosuchsection" "$(out)"
assert_between "one error line per bad line (9)" 9 20 "$(grep -c "$BAD:" "$OUT")"
if grep -q "configuration OK" "$OUT"; then
	notok "a bad file must not print configuration OK"
else
	ok "a bad file does not print configuration OK"
fi

printf '[server]\nworkers = 2\n[server\n' >"$T/syntax.conf"
assert_eq "-t on a broken section header: exit 1" 1 "$(check_conf "$T/syntax.conf")"
assert_match "the broken line is named" "$T/syntax.conf:3[^0-9]" "$(out)"

for bad in "server.max_body=4X" "server.max_body=-4K" \
    "journal.segment_size=1T" "postgres.flush_interval=1x" \
    "postgres.flush_interval=-5s" "postgres.flush_interval=fast" \
    "server.listen=nowhere" "server.listen=127.0.0.1:99999" \
    "journal.sync=always" "server.workers=-1" \
    "server.request_timeout=0" "server.idle_timeout=2h" \
    "server.max_connections=0" "server.max_connections=many" \
    "server.http2=maybe"; do
	assert_eq "-o $bad: exit 1" 1 "$(check_conf "$GOOD" -o "$bad")"
	assert_match "-o $bad: the error names the override" "-o $bad" "$(out)"
done

# --- what the file names outside itself
NOUSER=tallyd-no-such-user-$$
assert_eq "-o server.user=$NOUSER: exit 1" 1 \
    "$(check_conf "$GOOD" -o server.user=$NOUSER)"
assert_match "... naming the user" "server.user: no such user '$NOUSER'" "$(out)"
assert_eq "an unknown user beside a bad value: exit 1" 1 \
    "$(check_conf "$GOOD" -o server.user=$NOUSER -o server.workers=0)"
assert_match "... the bad value is named" "bad value '0' for server.workers" \
    "$(out)"
assert_match "... and so is the user" "server.user: no such user '$NOUSER'" \
    "$(out)"
assert_eq "-o server.group, no such group: exit 1" 1 \
    "$(check_conf "$GOOD" -o server.user=root -o server.group=$NOUSER)"
assert_match "... naming the group" "server.group: no such group '$NOUSER'" \
    "$(out)"
assert_eq "server.group without server.user: exit 1" 1 \
    "$(check_conf "$GOOD" -o server.group=root)"
assert_match "... saying it needs server.user" "server.group needs server.user" \
    "$(out)"
assert_eq "server.user and server.group that exist: exit 0" 0 \
    "$(check_conf "$GOOD" -o server.user=root -o server.group=root)"
assert_eq "a postgres.dsn that does not parse: exit 1" 1 \
    "$(check_conf "$GOOD" -o "postgres.dsn=host=/tmp port")"
assert_match "... with libpq's reason" 'postgres.dsn: missing "=" after "port"' \
    "$(out)"
st=0
timeout 20 "$TALLYD" -f -c "$GOOD" -o "postgres.dsn=host=/tmp port" \
    >"$OUT" 2>&1 </dev/null || st=$?
assert_eq "tallyd -f with a DSN that does not parse exits 2" 2 "$st"
assert_match "... saying why" 'postgres.dsn: missing "="' "$(out)"

assert_eq "missing file: exit 1" 1 "$(check_conf "$T/nosuch.conf")"
assert_match "missing file: named" "$T/nosuch.conf" "$(out)"

# --- overrides
assert_eq "-o server.workers=4: exit 0" 0 "$(check_conf "$GOOD" -o server.workers=4)"
assert_eq "-o server.workers=4: configuration OK" "configuration OK" "$(out)"
assert_eq "several valid -o" 0 "$(check_conf "$GOOD" -o server.workers=1 \
    -o postgres.flush_interval=1s -o journal.segment_size=2M)"
assert_eq "-o unknown section" 1 "$(check_conf "$GOOD" -o nosuch.key=1)"
assert_match "-o unknown section: named" "nosuch" "$(out)"
assert_eq "-o unknown key" 1 "$(check_conf "$GOOD" -o server.nosuch=1)"
assert_match "-o unknown key: named" "nosuch" "$(out)"
assert_eq "-o without section.key=value" 1 "$(check_conf "$GOOD" -o garbage)"
assert_eq "two bad -o: exit 1" 1 "$(check_conf "$GOOD" -o server.workers=x -o postgres.flush_interval=soon)"
assert_match "two bad -o: the first named" "-o server.workers=x" "$(out)"
assert_match "two bad -o: the second named" "-o postgres.flush_interval=soon" "$(out)"
assert_eq "errors in the file and in -o: exit 1" 1 "$(check_conf "$BAD" -o server.workers=x)"
assert_match "errors in the file and in -o: the file's" "$BAD:2[^0-9]" "$(out)"
assert_match "errors in the file and in -o: the override's" "-o server.workers=x" "$(out)"

# --- tallyd refuses to start on a bad configuration
st=0
timeout 20 "$TALLYD" -f -c "$BAD" >"$OUT" 2>&1 </dev/null || st=$?
assert_between "tallyd -f on a bad file exits non-zero (not by timeout)" 1 123 "$st"
assert_match "tallyd -f on a bad file says why" "$BAD:2[^0-9]" "$(out)"
st=0
timeout 20 "$TALLYD" -f -c "$GOOD" -o server.workers=x >"$OUT" 2>&1 </dev/null || st=$?
assert_between "tallyd -f with a bad -o exits non-zero (not by timeout)" 1 123 "$st"
assert_match "tallyd -f with a bad -o says why" "-o server.workers=x" "$(out)"
if port_free "$TPORT"; then
	ok "nothing listens after a refused start"
else
	notok "something listens on $TPORT after a refused start"
fi

# --- overrides take effect: another port, a smaller key and body limit
OTHER=$(free_port) || die "no free port"
SAVED=$BASE
BASE=http://127.0.0.1:$OTHER
tallyd_start -o server.listen=127.0.0.1:$OTHER -o counters.max_key_bytes=8 \
    -o server.max_body=100
assert_eq "-o server.listen: tallyd answers on the other port" 200 "$(http GET /healthz)"
if port_free "$TPORT"; then
	ok "-o server.listen replaces the file's listen"
else
	notok "the file's port $TPORT is listening too"
fi
# A second tallyd (its own state) on a port in use: refused, with why.
st=0
timeout 20 "$TALLYD" -f -c "$CONF" -o server.listen=127.0.0.1:$OTHER \
    -o server.state_dir="$T/state2" -o server.pid_file="$T/tallyd2.pid" \
    -o server.control_socket="$T/tallyd2.sock" >"$OUT" 2>&1 </dev/null || st=$?
assert_between "a second tallyd on the same port exits non-zero (not by timeout)" \
    1 123 "$st"
assert_match "... saying it cannot listen there" \
    "cannot listen on 127.0.0.1:$OTHER: Address already in use" "$(out)"
assert_eq "... and the first still answers" 200 "$(http GET /healthz)"
assert_eq "-o counters.max_key_bytes=8: an 8-byte key" 202 "$(post 12345678 1)"
assert_eq "-o counters.max_key_bytes=8: a 9-byte key" 400 "$(post 123456789 1)"
assert_eq "-o server.max_body=100: a 101-byte body" 413 \
    "$(post_body "{\"key\":\"k\",\"value\":1}$(printf ' %.0s' $(seq 80))")"
assert_eq "-o server.max_body=100: a small body" 202 "$(post k 1)"
# A reload reads the file again under the same overrides, which the
# daemon keeps apart from the memory its process title is written over.
marks=$(grep -c . "$TALLYD_LOG")
assert_eq "reload under overrides: exit 0" 0 "$(tallyctl reload >/dev/null; echo $?)"
assert_eq "... changes no restart key" "" \
    "$(tail -n +$((marks + 1)) "$TALLYD_LOG" | grep 'takes effect only at the next restart')"
assert_eq "... and the overrides still hold: a 9-byte key" 400 "$(post 123456789 1)"
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
BASE=$SAVED
