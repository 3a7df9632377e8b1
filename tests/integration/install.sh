#!/bin/bash
# What a user installs: make install into a staging root puts every file in
# place and keeps an edited tallyd.conf; the man pages pass mandoc's lint
# and document every configuration key; the init script starts tallyd as a
# daemon, reports its status, reloads it and stops it, with LSB exit codes.
. "$(dirname "$0")/lib.sh"
need psql mandoc make

ROOT=$T/root
make -s -C "$top_builddir" install DESTDIR="$ROOT" >"$T/install.log" 2>&1 ||
    { cat "$T/install.log"; die "make install DESTDIR=... failed"; }
ok "make install DESTDIR=..."

# installed PATH_SUFFIX: the one installed file whose path ends so.
installed() {
	local f
	f=$(find "$ROOT" -path "*$1" | head -n 1)
	[ -n "$f" ] && printf '%s\n' "$f"
}
for f in /sbin/tallyd /sbin/tallyctl /etc/tallyd.conf /etc/init.d/tallyd \
    /man5/tallyd.conf.5 /man8/tallyd.8 /man8/tallyctl.8; do
	[ -n "$(installed "$f")" ] && ok "installed: $f" || notok "installed: $f"
done
[ -x "$(installed /sbin/tallyd)" ] && [ -x "$(installed /etc/init.d/tallyd)" ]
assert_eq "programs and init script are executable" 0 "$?"

conf=$(installed /etc/tallyd.conf)
echo "# edited by the administrator" >>"$conf"
make -s -C "$top_builddir" install DESTDIR="$ROOT" >"$T/install2.log" 2>&1 ||
    die "second make install failed"
assert_eq "a second install keeps the edited tallyd.conf" 1 \
    "$(grep -c 'edited by the administrator' "$conf")"

for m in man5/tallyd.conf.5 man8/tallyd.8 man8/tallyctl.8; do
	out=$(mandoc -T lint -W warning "$(installed "/$m")" 2>&1)
	assert_eq "mandoc -T lint: $m" "" "$out"
done
# Every key of etc/tallyd.conf, as "# key = default" lines.
keys=$(sed -n 's/^#\{0,1\}[[:space:]]*\([a-z_]\{1,\}\)[[:space:]]*=.*/\1/p' \
    "$top_srcdir/etc/tallyd.conf" | sort -u)
[ -n "$keys" ] || die "no keys found in etc/tallyd.conf"
missing=
for k in $keys; do
	grep -q "^\.It Ic $k\b" "$top_srcdir/man/tallyd.conf.5" ||
	    missing="$missing $k"
done
assert_eq "every key of etc/tallyd.conf is in tallyd.conf(5) ($(echo $keys | wc -w) keys)" \
    "" "$missing"
"$top_builddir/src/tallyd" -t -c "$top_srcdir/etc/tallyd.conf" >/dev/null 2>&1
assert_eq "the shipped tallyd.conf passes tallyd -t" 0 "$?"

# ---- the init script, with a daemon of this build
pg_start
tallyd_conf
DEFAULTS=$T/default-tallyd
cat >"$DEFAULTS" <<EOT
DAEMON=$TALLYD
CONFIG=$CONF
STOP_TIMEOUT=30
EOT
INIT=$(installed /etc/init.d/tallyd)
initd() { TALLYD_DEFAULTS=$DEFAULTS sh "$INIT" "$@" >>"$T/initd.log" 2>&1; }

initd status
assert_eq "init status before start: 3 (not running)" 3 "$?"
initd start
assert_eq "init start" 0 "$?"
[ -s "$T/tallyd.pid" ] && TALLYD_PID=$(cat "$T/tallyd.pid")
assert_match "the daemon wrote its pid file" '^[0-9]+$' "${TALLYD_PID:-}"
# The master is a daemon now: not our child, but stopped by pid all the same.
TALLYD_LOG=$T/initd.log
initd status
assert_eq "init status while running: 0" 0 "$?"
for i in $(seq 100); do
	[ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/healthz")" = 200 ] && break
	sleep 0.1
done
assert_eq "the daemon serves" 202 "$(post k 4)"
"$TALLYD" -c "$CONF" >"$T/second.log" 2>&1
assert_eq "a second tallyd on the same state directory is refused" 2 "$?"
assert_match "and says why" 'another tallyd .* is running' "$(cat "$T/second.log")"

sed -i 's/^flush_interval = .*/flush_interval = 7s/' "$CONF"
initd reload
assert_eq "init reload" 0 "$?"
for i in $(seq 50); do
	ms=$(tallyctl --json status | sed -n 's/.*"flush_interval_ms":\([0-9]*\).*/\1/p')
	[ "$ms" = 7000 ] && break
	sleep 0.1
done
assert_eq "reload applied the changed flush interval" 7000 "$ms"

initd stop
assert_eq "init stop" 0 "$?"
wait_gone 30 "$TALLYD_PID"
assert_eq "the daemon is gone" 0 "$?"
TALLYD_PID=
initd status
assert_eq "init status after stop: 3" 3 "$?"
assert_eq "pid file removed" no "$([ -e "$T/tallyd.pid" ] && echo yes || echo no)"
assert_eq "the graceful stop flushed to PostgreSQL" 4 "$(pg_value k)"

# A daemon whose pid file cannot be written is one an init script could
# not stop: the start fails.
: >"$T/notadir"
"$TALLYD" -c "$CONF" -o server.pid_file="$T/notadir/tallyd.pid" \
    >"$T/nopid.log" 2>&1
st=$?
[ "$st" = 0 ] && tallyctl stop >/dev/null 2>&1
assert_between "a pid file that cannot be written: the start fails" 1 123 "$st"
port_free "$TPORT" && ok "... and nothing listens" ||
    notok "something listens on $TPORT after the failed start"
