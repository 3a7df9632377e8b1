#!/bin/bash
# Security: keys and Idempotency-Keys that would break a hand-quoted SQL
# statement or array literal are stored and read back verbatim; the DSN's
# password never reaches the log or tallyctl status; files keep private
# modes even under umask 000; bad paths are refused at start with a clear
# error and the fatal exit code.  (privileges.sh covers the privilege drop.)
. "$(dirname "$0")/lib.sh"
need psql python3

pg_start
SECRET=Sup3rS3cretPW9
DSN_PLAIN=$DSN
DSN="$DSN_PLAIN password=$SECRET"
tallyd_conf
DSN=$DSN_PLAIN
tallyd_start

# ---------------------------------------------------------------- keys
# Every key POSTed once with its own value, then read back over GET; the
# python lines are TAP, the last one lists "hex(key) value" for PostgreSQL.
python3 -B - "$TPORT" >"$T/keys.out" 2>&1 <<'EOF'
import http.client, json, sys, urllib.parse
port = int(sys.argv[1])
keys = ["it's", "two''quotes", 'say "hi"', "back\\slash", "\\", '"', "'",
        "{}", "{a,b}", "{\"a\",\"b\"}", '{}"\\', '\\"{,}\\"', "a,b", ",",
        "NULL", "null", "{NULL}", "\\N", " ", "  lead", "trail  ",
        "in side", "\t", "x\x01\x02\x1fy", "\x7f", "\r\n", "$1", "%s%n",
        "'); DROP TABLE tally_counters; --", "\u20ac" * 85, "\U0001F600" * 64,
        "\u00e9t\u00e9 \u65e5\u672c", "a\u2028b", "[1,2]", "(x)", ";", "--",
        "/*", "E'\\x41'"]
ok = True
res = []
for i, k in enumerate(keys, 1):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"key": k, "value": i})
    c.request("POST", "/increment", body,
              {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    p = r.status == 202
    c.request("GET", "/increment/" + urllib.parse.quote(k, safe=""))
    r = c.getresponse(); b = r.read()
    g = r.status == 200 and json.loads(b) == {k: i}
    print("%s - key %r: POST %d, GET gives it back verbatim%s" % (
        "ok" if p and g else "not ok", k, r.status, "" if g else " (%r)" % b))
    res.append("%s %d" % (k.encode().hex(), i))
print("EXPECT " + ";".join(sorted(res)))
EOF
while IFS= read -r l; do
	case "$l" in
	"ok - "*) ok "${l#ok - }" ;;
	"not ok - "*) notok "${l#not ok - }" ;;
	"EXPECT "*) EXPECT=${l#EXPECT } ;;
	*) printf '# %s\n' "$l" ;;
	esac
done <"$T/keys.out"
[ -n "${EXPECT:-}" ] || die "the key client did not finish"

# Idempotency-Keys are printable ASCII: quotes, backslashes, braces.
n=0
for ik in "it's" '"a\"b"' 'back\slash' '{x,y}' 'NULL' '\N' "';--"; do
	n=$((n + 1))
	assert_eq "Idempotency-Key $ik: 202" 202 "$(post_body \
	    "{\"key\":\"idem-sec\",\"value\":1}" -H "Idempotency-Key: $ik")"
	assert_eq "Idempotency-Key $ik again: replayed" 202 "$(post_body \
	    "{\"key\":\"idem-sec\",\"value\":1}" -H "Idempotency-Key: $ik")"
	assert_eq "Idempotency-Key $ik again: Idempotent-Replayed" true \
	    "$(last_header Idempotent-Replayed)"
done
assert_eq "idem-sec counted once per Idempotency-Key" "$n" "$(total idem-sec)"

assert_eq "flush" 0 "$(tallyctl flush >/dev/null 2>&1; echo $?)"
got=$(pg_sql "select string_agg(encode(convert_to(key, 'UTF8'), 'hex') || ' ' ||
    value, ';' order by encode(convert_to(key, 'UTF8'), 'hex') collate \"C\")
    from tally_counters where key <> 'idem-sec'")
want=$(printf '%s\n' "${EXPECT//;/$'\n'}" | LC_ALL=C sort | paste -sd';')
assert_eq "PostgreSQL holds every key verbatim (hex) with its value" \
    "$want" "$got"
assert_eq "PostgreSQL holds the Idempotency-Keys verbatim" \
    "';--,NULL,\\N,a\"b,back\\slash,it's,{x,y}" \
    "$(pg_sql "select string_agg(idem_key, ',' order by idem_key collate \"C\")
    from tally_idempotency")"
assert_eq "tally_counters still has its rows" 1 \
    "$(pg_sql "select count(*) > 0 from tally_counters" | sed 's/t/1/')"

# ---------------------------------------------------------------- password
status_txt=$(tallyctl status 2>&1)
status_json=$(tallyctl status --json 2>&1)
assert_match "tallyctl status answers" . "$status_txt"
assert_eq "tallyctl status does not show the password" 0 \
    "$(printf '%s' "$status_txt" | grep -c "$SECRET")"
assert_eq "tallyctl status --json does not show the password" 0 \
    "$(printf '%s' "$status_json" | grep -c "$SECRET")"
# PostgreSQL down: connection errors are logged, the password is not.
pg_stop
assert_eq "POST with PostgreSQL down" 202 "$(post down 1)"
http GET /increment/never-seen >/dev/null
for i in $(seq 50); do
	grep -qi "postgres" "$TALLYD_LOG" && grep -qiE "cannot|lost|fail" \
	    "$TALLYD_LOG" && break
	sleep 0.2
done
assert_match "PostgreSQL errors are logged" "cannot|lost|fail" \
    "$(cat "$TALLYD_LOG")"
assert_eq "tallyctl status with PostgreSQL down: no password" 0 \
    "$(tallyctl status 2>&1 | grep -c "$SECRET")"
assert_eq "tallyctl status --json with PostgreSQL down: no password" 0 \
    "$(tallyctl status --json 2>&1 | grep -c "$SECRET")"
tallyd_stop TERM
assert_eq "the log never shows the password" 0 \
    "$(cat "$T"/tallyd.*.log | grep -c "$SECRET")"
pg_start

# The URI form of a DSN, with PostgreSQL down at start.
pg_stop
sed -i "s|^dsn = .*|dsn = postgresql://postgres:$SECRET@/postgres?host=$PGSOCK\&port=$PGPORT|" "$CONF"
tallyd_start
assert_eq "URI DSN, PostgreSQL down: POST" 202 "$(post uri 1)"
http GET /increment/never-seen >/dev/null
sleep 1
assert_eq "URI DSN: tallyctl status --json: no password" 0 \
    "$(tallyctl status --json 2>&1 | grep -c "$SECRET")"
pg_start
pg_wait_value uri 1
tallyd_stop TERM
assert_eq "URI DSN: the log never shows the password" 0 \
    "$(cat "$T"/tallyd.*.log | grep -c "$SECRET")"

# ---------------------------------------------------------------- modes
# A daemon started under umask 000 still keeps its files private.
rm -rf "$T/state"
mkdir -m 755 "$T/state"
tallyd_conf "[server]" "pid_file = $T/run/tallyd.pid"
(umask 000; "$TALLYD" -c "$CONF" >"$T/tallyd.daemon.log" 2>&1)
assert_eq "daemon started under umask 000" 0 $?
TALLYD_PID=$(cat "$T/run/tallyd.pid" 2>/dev/null)
[ -n "$TALLYD_PID" ] || die "no pid file"
assert_eq "daemon answers" 200 "$(wait_status /healthz 200)"
assert_eq "daemon: POST" 202 "$(post modes 1)"
assert_eq "state directory is 0700" 700 "$(stat -c %a "$T/state")"
assert_eq "journal directory is 0700" 700 "$(stat -c %a "$T/state/journal")"
for f in "$T"/state/journal/* "$T/state/tallyd.lock"; do
	assert_eq "$(basename "$f") is 0600" 600 "$(stat -c %a "$f")"
done
assert_eq "control socket is 0660" 660 "$(stat -c %a "$T/tallyd.sock")"
assert_eq "pid file is not writable by others" 0 \
    "$(( 0$(stat -c %a "$T/run/tallyd.pid") & 022 ))"
kill -TERM "$TALLYD_PID"
wait_gone 30 "$TALLYD_PID" || notok "daemon did not stop"
TALLYD_PID=
assert_eq "checkpoint is 0600" 600 "$(stat -c %a "$T/state/checkpoint")"

# ---------------------------------------------------------------- paths
# start_refused WHAT ERE [tallyd.conf lines]: tallyd -f exits 2 with a
# message matching ERE.
start_refused() {
	local what=$1 ere=$2 rc
	shift 2
	tallyd_conf "$@"
	timeout 30 "$TALLYD" -f -c "$CONF" >"$T/refused.log" 2>&1
	rc=$?
	assert_eq "$what: exit 2" 2 "$rc"
	assert_match "$what: says why" "$ere" "$(cat "$T/refused.log")"
}
touch "$T/afile"
start_refused "relative state_dir" "state_dir.*absolute" \
    "[server]" "state_dir = relative/state"
start_refused "relative journal.dir" "journal.dir.*absolute" \
    "[journal]" "dir = journal"
start_refused "relative control_socket" "control_socket.*absolute" \
    "[server]" "control_socket = tallyd.sock"
start_refused "relative pid_file" "pid_file.*absolute" \
    "[server]" "pid_file = tallyd.pid"
start_refused "state_dir under a missing directory" \
    "$T/nosuch/state.*No such file" "[server]" "state_dir = $T/nosuch/state"
start_refused "state_dir is a file" "$T/afile.*[Nn]ot a directory" \
    "[server]" "state_dir = $T/afile"
start_refused "journal.dir is a file" "$T/afile.*[Nn]ot a directory" \
    "[journal]" "dir = $T/afile"
start_refused "journal.dir under a missing directory" \
    "$T/nosuch/j.*No such file" "[journal]" "dir = $T/nosuch/j"
tallyd_conf
timeout 30 "$TALLYD" -f -c "$T/nosuch.conf" >"$T/refused.log" 2>&1
assert_eq "missing config file: exit 2" 2 $?
assert_match "missing config file: named" "$T/nosuch.conf.*No such file" \
    "$(cat "$T/refused.log")"
timeout 30 "$TALLYD" -f -c "$T" >"$T/refused.log" 2>&1
assert_eq "config path is a directory: exit 2" 2 $?
assert_match "config path is a directory: said" "$T.*[Ii]s a directory" \
    "$(cat "$T/refused.log")"

# ---------------------------------------------------------------- fds
# The children keep none of the master's own descriptors: a worker that
# held the control socket could accept tallyctl's connections.
tallyd_start
holders=$(ss -xlpn 2>/dev/null | grep -F "$T/tallyd.sock" |
    grep -o 'pid=[0-9]*' | sort -u | tr '\n' ' ')
assert_eq "only the master holds the control socket" "pid=$TALLYD_PID " \
    "$holders"
for p in $(descendants "$TALLYD_PID"); do
	n=$(find "/proc/$p/fd" -lname 'anon_inode:\[signalfd\]' 2>/dev/null |
	    wc -l)
	assert_eq "child $p holds no signalfd" 0 "$n"
done
tallyd_stop TERM
