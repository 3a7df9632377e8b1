#!/bin/bash
# Privilege drop and file modes: as root with server.user set, the master
# keeps root (it binds and supervises) while every child runs as that
# user; journal and state files are 0600 in 0700 directories.
. "$(dirname "$0")/lib.sh"
need psql
[ "$(id -u)" = 0 ] || skip_or_fail "privilege drop needs root"
id nobody >/dev/null 2>&1 || skip_or_fail "no user 'nobody'"

pg_start
tallyd_conf "[server]" "user = nobody" "group = nogroup"
# tallyd_conf's [server] comes first; ours is a second section of the same
# name, which the parser merges.
tallyd_start
assert_eq "POST as the dropped user" 202 "$(post k 3)"
pg_wait_value k 3

assert_eq "master runs as root" root "$(ps -o user= -p "$TALLYD_PID" | tr -d ' ')"
kids=$(descendants "$TALLYD_PID")
[ -n "$kids" ] || die "no children"
for p in $kids; do
	assert_eq "child $p runs as nobody" nobody "$(ps -o user= -p "$p" | tr -d ' ')"
done

assert_eq "state directory is 0700" 700 "$(stat -c %a "$T/state")"
assert_eq "journal directory is 0700" 700 "$(stat -c %a "$T/state/journal")"
for f in "$T"/state/journal/*.seg "$T/state/checkpoint" "$T/state/tallyd.lock"; do
	assert_eq "$(basename "$f") is 0600" 600 "$(stat -c %a "$f")"
done
assert_eq "control socket is 0660" 660 "$(stat -c %a "$T/tallyd.sock")"
tallyd_stop TERM
assert_eq "SIGTERM: exit 0" 0 "$TALLYD_STATUS"

# The children die with the master even though they changed uid, which
# clears a parent-death signal set before it: no orphan keeps the port,
# the lock and the journal from the next start.
tallyd_start
kids=$(descendants "$TALLYD_PID")
kill -9 "$TALLYD_PID"
wait "$TALLYD_PID" 2>/dev/null
TALLYD_PID=
# shellcheck disable=SC2086
if wait_gone 10 $kids; then
	ok "kill -9 of the master: its children exit too"
else
	notok "kill -9 of the master: children left: $kids"
	# shellcheck disable=SC2086
	kill -9 $kids 2>/dev/null
fi
tallyd_start
assert_eq "a new start after the master's kill -9: POST" 202 "$(post k 1)"
tallyd_stop TERM
assert_eq "a new start after the master's kill -9: SIGTERM: exit 0" 0 \
    "$TALLYD_STATUS"
