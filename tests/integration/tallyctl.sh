#!/bin/bash
# tallyctl against a running tallyd: every command, its exit code, its
# --json form, the control socket's refusal of malformed messages, and
# journal verify on the live journal while segments are recycled; then the
# journal commands on a read-only copy of the stopped journal; flush under
# sync = interval and at a damaged frame; and the exit codes with no
# daemon at all.
. "$(dirname "$0")/lib.sh"
need psql perl python3 gdb

pg_start
tallyd_conf
tallyd_start
SOCK=$T/tallyd.sock

# raw BYTES: send bytes (perl string syntax) to the control socket and
# print what comes back (nothing when the master closes the connection).
raw() {
	perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 3;
		print $s eval qq("$ARGV[1]");
		shutdown($s, 1);
		my $buf = ""; 1 while sysread($s, $buf, 65536, length $buf);
		print length($buf), "\n";' "$SOCK" "$1"
}

assert_eq "socket mode is 0660" 660 "$(stat -c %a "$SOCK")"

out=$(tallyctl status); st=$?
assert_eq "status: exit 0" 0 "$st"
assert_match "status names the processes" 'worker +pid [0-9]+' "$out"
assert_match "status says PostgreSQL is up" 'PostgreSQL: up' "$out"
out=$(tallyctl --json status); st=$?
assert_eq "status --json: exit 0" 0 "$st"
assert_match "status --json: journal positions" '"durable_lsn":[0-9]+' "$out"
assert_match "status --json: PostgreSQL" '"postgres":\{"up":true\}' "$out"

# ps(1) tells the processes apart: each one's title names the role that
# status gives its pid, the master's keeps the command line; the name
# that pgrep and pidof match stays tallyd's.
title() { tr '\0' ' ' <"/proc/$1/cmdline" | sed 's/ *$//'; }
assert_eq "the master's title" \
    "tallyd: master process $TALLYD -f -c $CONF" "$(title "$TALLYD_PID")"
roles=$(printf '%s\n' "$out" | grep -o '"role":"[a-z]*","pid":[0-9]*' |
    sed 's/"role":"\([a-z]*\)","pid":\([0-9]*\)/\1 \2/')
assert_eq "status --json names four children" 4 "$(printf '%s\n' "$roles" |
    grep -c .)"
w=0
while read -r role p; do
	want="tallyd: $role process"
	if [ "$role" = worker ]; then
		want="$want $w"
		w=$((w + 1))
	fi
	assert_eq "the $role's title (pid $p)" "$want" "$(title "$p")"
	assert_eq "the $role's name stays tallyd's" "$(cat "/proc/$TALLYD_PID/comm")" \
	    "$(cat "/proc/$p/comm")"
done <<<"$roles"

assert_eq "POST k" 202 "$(post k 5)"
assert_eq "get k" "k 5" "$(tallyctl get k)"
assert_eq "get --json k" '{"key":"k","value":5,' \
    "$(tallyctl --json get k | cut -c1-21)"
tallyctl get never-seen >/dev/null 2>&1
assert_eq "get of a key not held: exit 1" 1 "$?"
# Options after the command, and a key that looks like one after "--".
assert_match "status --json, the option after the command" \
    '"durable_lsn":[0-9]+' "$(tallyctl status --json)"
assert_eq "POST -k" 202 "$(post -k 7)"
assert_eq "get --json -- -k" '{"key":"-k","value":7,' \
    "$(tallyctl get --json -- -k | cut -c1-22)"
tallyctl get -k >/dev/null 2>&1
assert_eq "get -k, without --: a usage error" 2 "$?"
tallyctl status --fast >/dev/null 2>&1
assert_eq "--fast with another command than stop: a usage error" 2 "$?"

# A long flush interval: only the explicit flush moves data now.
sed -i 's/^flush_interval = .*/flush_interval = 1h/' "$CONF"
out=$(tallyctl reload); st=$?
assert_eq "reload: exit 0" 0 "$st"
grep -q 'take effect only at the next restart' "$TALLYD_LOG"
assert_eq "a reloadable change is not called a restart" 1 "$?"
grep -q 'reload: configuration applied (flush_interval 3600000 ms' "$TALLYD_LOG"
assert_eq "reload applied the new flush interval" 0 "$?"
# A key only a restart applies is named, and left as it was.
sed -i '/^\[server\]/a max_connections = 77' "$CONF"
out=$(tallyctl reload); st=$?
assert_eq "reload of a restart key: exit 0" 0 "$st"
grep -q 'reload: server.max_connections changed; it takes effect only at the next restart' "$TALLYD_LOG"
assert_eq "reload names the key that needs a restart" 0 "$?"
assert_eq "and only that key" 1 "$(grep -c 'takes effect only at the next restart' "$TALLYD_LOG")"
sed -i '/^max_connections = 77$/d' "$CONF"
# The flusher may be in a cycle it began under the old interval.  The
# cycle of the second flush surely began after the reload: from its end,
# the next flush is an hour away.
flush
flush
assert_eq "POST k again" 202 "$(post k 7)"
assert_eq "PostgreSQL before flush" 5 "$(pg_value k)"
tallyctl flush >/dev/null; st=$?
assert_eq "flush: exit 0" 0 "$st"
assert_eq "PostgreSQL right after flush" 12 "$(pg_value k)"

echo "[bogus]" >>"$CONF"
# -s: tallyctl itself would refuse the broken file it reads the socket from.
"$TALLYCTL" -s "$SOCK" reload >/dev/null 2>&1
assert_eq "reload of a bad file: exit 1" 1 "$?"
grep -q 'keeping the running one' "$TALLYD_LOG"
assert_eq "bad reload logged and ignored" 0 "$?"
sed -i '$d' "$CONF"
applied=$(grep -c 'reload: configuration applied' "$TALLYD_LOG")
kill -HUP "$TALLYD_PID"
for i in $(seq 50); do
	[ "$(grep -c 'reload: configuration applied' "$TALLYD_LOG")" -gt "$applied" ] && break
	sleep 0.1
done
assert_eq "SIGHUP reloads too" $((applied + 1)) "$(grep -c 'reload: configuration applied' "$TALLYD_LOG")"

# Malformed messages close the connection; the master carries on.
assert_eq "bad magic: closed without an answer" 0 "$(raw 'GARBAGE!GARBAGE')"
assert_eq "oversized length: closed" 0 "$(raw 'TLYC\x01\x00\xff\xff')"
assert_eq "unknown type: closed" 0 "$(raw 'TLYC\x63\x00\x00\x00')"
assert_eq "truncated header: closed" 0 "$(raw 'TLY')"
assert_eq "status with a payload: closed" 0 "$(raw 'TLYC\x01\x00\x03\x00abc')"
assert_eq "get without a key: closed" 0 "$(raw 'TLYC\x03\x00\x00\x00')"
curl -s -m 5 --unix-socket "$SOCK" http://localhost/ >/dev/null 2>&1
assert_eq "well-formed status still answered" 1 \
    "$(raw 'TLYC\x01\x00\x00\x00' | awk '$1 > 8 {print 1}')"
assert_eq "status after the garbage: exit 0" 0 "$(tallyctl status >/dev/null; echo $?)"

# Every control slot taken: the next tallyctl is told so (exit 1), and is
# not killed by SIGPIPE when the master hangs up on it.
python3 -c '
import socket, sys, time
held = []
for _ in range(16):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    held.append(s)
print("held", flush=True)
time.sleep(120)' "$SOCK" >"$T/held.out" 2>&1 &
HOLDER=$!
BGPIDS+=("$HOLDER")
for i in $(seq 100); do
	grep -q held "$T/held.out" && break
	sleep 0.1
done
grep -q held "$T/held.out" || die "could not hold 16 control connections"
held_at=$SECONDS
# The master accepts them in its next pass, at most a poll timeout away.
for i in $(seq 50); do
	tallyctl status >"$T/full.out" 2>"$T/full.err"
	st=$?
	[ "$st" = 0 ] || break
	sleep 0.1
done
assert_eq "16 control connections held: status exits 1" 1 "$st"
assert_match "... saying why on stderr" \
    '^tallyctl: too many control connections$' "$(cat "$T/full.err")"
# The holder stays, silent: the master closes idle clients after 10 s.
for i in $(seq 100); do
	tallyctl status >/dev/null 2>&1 && break
	sleep 0.2
done
assert_eq "idle control connections closed by the master" 0 \
    "$(tallyctl status >/dev/null; echo $?)"
assert_between "... not before 10 s" 8 60 "$((SECONDS - held_at))"
kill "$HOLDER"
wait "$HOLDER" 2>/dev/null

# journal verify on the live journal while the flusher recycles the
# segments it has listed: gdb holds it after the listing, at its first
# journal_at(), while a flush recycles the first ones.  They are named and
# skipped, not counted bad.  About 3 MB of increments first, with long
# random keys that lz4 cannot shrink: three full 1 MB segments.
python3 - "$TPORT" >"$T/fill.out" 2>&1 <<'PY'
import http.client, json, os, sys, threading
bad = []
def run():
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
    for _ in range(1400):
        body = json.dumps({"key": os.urandom(120).hex(), "value": 1})
        c.request("POST", "/increment", body,
                  {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        if r.status != 202:
            bad.append(r.status)
ts = [threading.Thread(target=run) for _ in range(8)]
for t in ts: t.start()
for t in ts: t.join()
print("not 202:", len(bad))
PY
assert_eq "11200 long keys posted" "not 202: 0" "$(cat "$T/fill.out")"
segs=("$T/state/journal"/*.seg)
first=$(basename "${segs[0]}")
assert_between "segments to recycle" 4 100 "${#segs[@]}"

# LeakSanitizer cannot run under ptrace: in a sanitizer build, the
# programs gdb runs here leave leak checking out.
GDB_ENV=(env "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0")

# gdb_exit OUT: the exit status of the program gdb ran, from its output
# (which gives it in octal).
gdb_exit() {
	local st
	st=$(sed -n 's/^\[Inferior 1 (process [0-9]*) exited normally\]$/0/p
	    s/^\[Inferior 1 (process [0-9]*) exited with code \([0-7]*\)\]$/\1/p' \
	    "$1")
	if [ -n "$st" ]; then
		echo $((8#$st))
	else
		echo "none (see $1)"
	fi
}

# A segment gone from the middle, with one below it still there, was not
# recycled: that stays an error.  gdb holds verify of a copy while the
# copy's second segment is removed.
mkdir "$T/mid"
cp -p "$T/state/journal"/*.seg "$T/mid/" || die "cannot copy the journal"
segs=("$T/mid"/*.seg)
second=$(basename "${segs[1]}")
"${GDB_ENV[@]}" gdb -q -nx -batch -ex 'break journal_at' \
    -ex "run -c $CONF journal verify $T/mid >$T/mid.out 2>$T/mid.err" \
    -ex delete -ex "shell rm $T/mid/$second" -ex continue \
    "$TALLYCTL" >"$T/gdb.mid" 2>&1 </dev/null
assert_eq "journal verify, a segment gone from the middle: exit 1" 1 \
    "$(gdb_exit "$T/gdb.mid")"
assert_eq "... reported missing, not recycled" \
    "$second offset 256 (LSN $((16#${second%.seg} + 256))): segment missing or unreadable: No such file or directory" \
    "$(cat "$T/mid.err")"

cat >"$T/recycle.sh" <<EOF
"$TALLYCTL" -c "$CONF" flush >/dev/null || exit 1
for i in \$(seq 100); do
	[ -e "$T/state/journal/$first" ] || { touch "$T/recycled"; exit 0; }
	sleep 0.1
done
EOF
"${GDB_ENV[@]}" gdb -q -nx -batch -ex 'break journal_at' \
    -ex "run -c $CONF journal verify >$T/live.out 2>$T/live.err" \
    -ex delete -ex "shell sh $T/recycle.sh" -ex continue \
    "$TALLYCTL" >"$T/gdb.out" 2>&1 </dev/null
assert_eq "the flush recycled $first while verify was held" yes \
    "$([ -e "$T/recycled" ] && echo yes || echo no)"
assert_eq "journal verify across the recycling: exit 0" 0 \
    "$(gdb_exit "$T/gdb.out")"
assert_match "... naming what was recycled" \
    "^$T/state/journal: segments? $first( to [0-9A-F]{16}\.seg)? recycled while reading \(below the checkpoint\)\$" \
    "$(cat "$T/live.err")"
assert_match "... and reading the rest" ' 0 bad; LSN ' "$(cat "$T/live.out")"

out=$(tallyctl stop); st=$?
assert_eq "stop: exit 0" 0 "$st"
wait_gone 30 "$TALLYD_PID"
assert_eq "stop: the daemon is gone" 0 "$?"
wait "$TALLYD_PID" 2>/dev/null
assert_eq "stop: the daemon exited 0" 0 "$?"
TALLYD_PID=
no_crashes
assert_eq "stop flushed the rest" 12 "$(pg_value k)"
assert_eq "control socket removed" no "$([ -e "$SOCK" ] && echo yes || echo no)"

# The journal commands on a copy that nobody may write, root included (a
# backup on read-only media): they read it as they read the original.
tallyctl journal verify >"$T/verify.orig" 2>&1
assert_eq "journal verify of the stopped journal: exit 0" 0 "$?"
tallyctl journal dump >"$T/dump.orig" 2>"$T/dump.orig.err"
assert_eq "journal dump of the stopped journal: exit 0" 0 "$?"
assert_eq "journal dump: a line for each record verify counted" \
    "$(sed -n 's/^[0-9]* frames, \([0-9]*\) records.*/\1/p' "$T/verify.orig")" \
    "$(grep -c . "$T/dump.orig")"
mkdir "$T/ro"
cp -p "$T/state/journal"/*.seg "$T/ro/" || die "cannot copy the journal"
read_only "$T/ro"
touch "$T/ro/probe" 2>/dev/null
assert_eq "the copy is read-only" 1 "$?"
tallyctl journal verify "$T/ro" >"$T/verify.ro" 2>"$T/verify.ro.err"; st=$?
assert_eq "journal verify of a read-only copy: exit 0" 0 "$st"
assert_eq "... with the original's counts" \
    "$(sed -n 2p "$T/verify.orig")" "$(sed -n 2p "$T/verify.ro")"
assert_eq "... and no complaint" "" "$(cat "$T/verify.ro.err")"
tallyctl journal dump "$T/ro" >"$T/dump.ro" 2>"$T/dump.ro.err"; st=$?
assert_eq "journal dump of a read-only copy: exit 0" 0 "$st"
assert_eq "... every record of the original" "$(cat "$T/dump.orig")" \
    "$(cat "$T/dump.ro")"
assert_eq "... and no complaint" "" "$(cat "$T/dump.ro.err")"

# flush waits until PostgreSQL holds every increment acknowledged before
# it, as tallyctl(8) says, whatever the sync policy: under sync = interval
# the frames acknowledged but not yet synced are synced for it (the
# flusher only takes durable ones), not left for sync_interval.
tallyd_conf "[journal]" "sync = interval" "sync_interval = 30s"
sed -i 's/^flush_interval = .*/flush_interval = 1h/' "$CONF"
mkdir -p "$T/interval"
tallyd_start -o "server.state_dir=$T/interval"
flush
assert_eq "sync = interval: increment accepted" 202 "$(post si 5)"
tallyctl flush >/dev/null; st=$?
assert_eq "sync = interval: flush exit 0" 0 "$st"
assert_eq "sync = interval: PostgreSQL has it right after flush" 5 \
    "$(pg_value si)"

# A flush that stops at a damaged frame has not brought PostgreSQL what
# was acknowledged past it: it fails, and says where.
assert_eq "increment before the damage" 202 "$(post sc1 1)"
sleep 0.5
lsn=$(tallyctl journal dump "$T/interval/journal" 2>/dev/null |
    awk -F'\t' '$2 == "\"sc1\"" { print $1 }' | tail -n 1)
assert_match "the increment's frame found" '^[0-9]+$' "$lsn"
seg=$T/interval/journal/$(printf '%016X.seg' $((lsn - lsn % 1048576)))
printf '\xff\xff\xff\xff' | dd of="$seg" bs=1 seek=$((lsn % 1048576 + 44)) \
    conv=notrunc status=none
assert_eq "increment after the damage" 202 "$(post sc2 1)"
tallyctl flush >"$T/flush.out" 2>"$T/flush.err"; st=$?
assert_eq "flush stopped at a damaged frame: exit 1" 1 "$st"
assert_match "... saying where" \
    "journal corrupt at LSN $lsn: flushing stopped there" "$(cat "$T/flush.err")"
assert_eq "... and nothing on stdout" "" "$(cat "$T/flush.out")"
assert_eq "... nothing from the damaged frame on in PostgreSQL" "none none" \
    "$(pg_value sc1) $(pg_value sc2)"
tallyd_kill9_all

# No daemon: every daemon command fails with 1, usage errors with 2.
for c in status flush reload stop "get k"; do
	# shellcheck disable=SC2086
	tallyctl $c >/dev/null 2>&1
	assert_eq "no daemon: $c exits 1" 1 "$?"
done
tallyctl frobnicate >/dev/null 2>&1
assert_eq "unknown command exits 2" 2 "$?"
"$TALLYCTL" -c "$T/no-such.conf" frobnicate >/dev/null 2>&1
assert_eq "unknown command exits 2, whatever the configuration file" 2 "$?"
"$TALLYCTL" -c "$T/no-such.conf" status >/dev/null 2>&1
assert_eq "a configuration file that is not there: exit 1" 1 "$?"
tallyctl stop --later >/dev/null 2>&1
assert_eq "bad argument exits 2" 2 "$?"
help=$("$TALLYCTL" --help); st=$?
assert_eq "--help exits 0" 0 "$st"
for c in status flush get reload stop "journal verify" "journal dump"; do
	printf '%s\n' "$help" | grep -q "^  $c" ||
	    notok "--help lists $c"
	grep -q "^\.It Cm ${c% *}" "$top_srcdir/man/tallyctl.8" ||
	    notok "tallyctl(8) documents $c"
done
ok "every command in --help is in tallyctl(8)"
for v in -v --version; do
	out=$("$TALLYCTL" "$v"); st=$?
	assert_eq "$v exits 0" 0 "$st"
	assert_match "$v prints the version" '^tallyctl [0-9]+\.[0-9]+\.[0-9]+$' "$out"
done
