#!/bin/bash
# server.log_file: every process logs to the file (as root with
# server.user, one the children may open again), and after a rotation
# SIGHUP or tallyctl reload has each of them open the path anew; a path
# that cannot be opened stops the start, or at a reopen keeps the old
# file, saying why.  A daemon started with descriptors 0-2 closed keeps
# its lock, its port and its log, and one started with descriptors above
# 2 open keeps none of them.
. "$(dirname "$0")/lib.sh"
need psql

pg_start
mkdir -p "$T/log"
LOG=$T/log/tallyd.log
owner=root
who=()
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
	owner=nobody
	who=("user = nobody" "group = nogroup")
fi
[ "$(id -u)" = 0 ] || owner=$(id -un)

# ---- bad values, and a file that cannot be opened

out=$("$TALLYD" -t -c /dev/null -o server.log_file=log/tallyd.log 2>&1)
assert_eq "-t: relative log_file refused" 1 "$?"
assert_match "-t: says why" 'log_file.*expected an absolute path' "$out"
out=$("$TALLYD" -t -c /dev/null -o server.log_file= 2>&1)
assert_eq "-t: empty log_file is none" "configuration OK" "$out"

tallyd_conf "[server]" "log_file = $T/nodir/tallyd.log" "${who[@]}"
"$TALLYD" -f -c "$CONF" </dev/null >"$T/bad.out" 2>&1
assert_eq "log_file in a missing directory: exit 2 (fatal)" 2 "$?"
assert_match "log_file in a missing directory: says which and why" \
    "cannot open log file $T/nodir/tallyd.log: No such file or directory" \
    "$(cat "$T/bad.out")"
assert_eq "log_file in a missing directory: no control socket left" "" \
    "$(ls "$T/tallyd.sock" 2>/dev/null)"

# ---- every process logs to the file

tallyd_conf "[server]" "log_file = $LOG" "${who[@]}"
tallyd_start
assert_eq "POST" 202 "$(post k 3)"
assert_eq "log file's owner" "$owner" "$(stat -c %U "$LOG")"
assert_eq "log file's mode" 640 "$(stat -c %a "$LOG")"
wait_grep 10 "$LOG" 'flusher info: connected to PostgreSQL'
assert_match "the master's lines are in the file" \
    'master info: serving on' "$(cat "$LOG")"
assert_match "a child's lines are in the file" \
    'flusher info: connected to PostgreSQL' "$(cat "$LOG")"
assert_eq "nothing of it on stderr" "" \
    "$(grep -E 'serving on|connected to' "$TALLYD_LOG")"

# all_on FILE: every tallyd process has FILE open, and no other log file
# of $T/log, within 10 s.
all_on() {
	local i p f good
	for i in $(seq 100); do
		good=1
		for p in "$TALLYD_PID" $(descendants "$TALLYD_PID"); do
			f=$(for fd in /proc/"$p"/fd/*; do readlink "$fd"
			    done 2>/dev/null | grep "^$T/log/")
			[ "$f" = "$1" ] || { good=0; break; }
		done
		[ $good = 1 ] && return 0
		sleep 0.1
	done
	note "pid $p has: ${f:-no log file}"
	return 1
}

# ---- rotation: SIGHUP, then tallyctl reload

mv "$LOG" "$LOG.1"
kill -HUP "$TALLYD_PID"
all_on "$LOG"
assert_eq "after SIGHUP every process writes the new file" 0 "$?"
assert_eq "the new file is the children's too" "$owner" "$(stat -c %U "$LOG")"
mv "$LOG" "$LOG.2"
tallyctl reload >/dev/null
assert_eq "tallyctl reload" 0 "$?"
all_on "$LOG"
assert_eq "after tallyctl reload every process writes the new file" 0 "$?"
assert_match "the reload is logged in the new file" \
    'master info: reload: configuration applied' "$(cat "$LOG")"

# ---- a reopen that fails keeps the old file

mv "$LOG" "$LOG.3"
mkdir "$LOG"
kill -HUP "$TALLYD_PID"
for role in master syncer flusher worker; do
	wait_grep 10 "$LOG.3" "$role warning: cannot reopen log file $LOG; logging on to the file open before: Is a directory"
	assert_eq "reopen into a directory: the $role says why, in the old file" \
	    0 "$?"
done
all_on "$LOG.3"
assert_eq "reopen into a directory: every process keeps the old file" 0 "$?"
assert_eq "still serving" 202 "$(post k 4)"
rmdir "$LOG"
kill -HUP "$TALLYD_PID"
all_on "$LOG"
assert_eq "next reopen: every process writes the new file" 0 "$?"

# ---- the stop is logged in the file, and nothing crashed

kill -TERM "$TALLYD_PID"
tallyd_stopped "stop"
assert_match "the flusher's final flush is in the current file" \
    'flusher info: final flush done' "$(cat "$LOG")"
assert_match "the master's last line is in the current file" \
    'master info: stopped$' "$(tail -n 1 "$LOG")"
assert_eq "no process crashed, by the log files" "" \
    "$(cat "$LOG"* | grep -E 'killed by signal|exited with code|fatal code')"
pg_wait_value k 7

# ---- a daemon started with its standard descriptors closed

# Its lock file, sockets and log file must not take descriptors 0-2, which
# the daemon points at /dev/null as it detaches.
: >"$LOG"
"$TALLYD" -c "$CONF" <&- >&- 2>&-
assert_eq "daemon with 0-2 closed: started" 0 "$?"
TALLYD_PID=$(cat "$T/tallyd.pid" 2>/dev/null)
assert_match "daemon with 0-2 closed: pid file" '^[0-9]+$' "$TALLYD_PID"
assert_eq "daemon with 0-2 closed: serves" 202 "$(post k 1)"
assert_match "daemon with 0-2 closed: logs to the file" \
    'master info: serving on' "$(cat "$LOG")"
"$TALLYD" -f -c "$CONF" >"$T/second.out" 2>&1 </dev/null
assert_eq "daemon with 0-2 closed: a second tallyd is refused" 2 "$?"
assert_match "daemon with 0-2 closed: for the lock on the state directory" \
    'another tallyd .* is running on state directory' "$(cat "$T/second.out")"
kill -TERM "$TALLYD_PID"
wait_gone 30 "$TALLYD_PID"
assert_eq "daemon with 0-2 closed: stopped" 0 "$?"
TALLYD_PID=
assert_match "daemon with 0-2 closed: its stop is logged" \
    'master info: stopped$' "$(tail -n 1 "$LOG")"
pg_wait_value k 8

# ---- a daemon started with more descriptors open

# Whatever starts tallyd may leave more than 0-2 open: here fd 7 is the
# pipe of a reader that waits for its end, as a shell's $(...) or an init
# system's log pipe does.  Neither the daemon nor its children may keep
# it, or the reader waits until tallyd stops.
: >"$LOG"
(
	exec 7>&1
	readlink "/proc/$BASHPID/fd/7" >"$T/pipe.id"
	"$TALLYD" -c "$CONF" >/dev/null 2>&1 </dev/null
	echo "rc=$?"
) | timeout 30 cat >"$T/inherited.out"
st=${PIPESTATUS[1]}
TALLYD_PID=$(cat "$T/tallyd.pid" 2>/dev/null)
assert_match "daemon with fd 7 open: pid file" '^[0-9]+$' "$TALLYD_PID"
assert_eq "daemon with fd 7 open: started" "rc=0" "$(cat "$T/inherited.out")"
assert_eq "daemon with fd 7 open: the reader saw the pipe end at once" 0 "$st"
pipe=$(cat "$T/pipe.id")
assert_match "daemon with fd 7 open: the pipe's name was read" '^pipe:' "$pipe"
held=
for p in $TALLYD_PID $(descendants "$TALLYD_PID"); do
	for fd in /proc/"$p"/fd/*; do
		[ "$(readlink "$fd" 2>/dev/null)" = "$pipe" ] && held="$held $p"
	done
done
assert_eq "daemon with fd 7 open: no process holds the pipe" "" "$held"
assert_eq "daemon with fd 7 open: serves" 202 "$(post k 1)"
kill -TERM "$TALLYD_PID"
wait_gone 30 "$TALLYD_PID"
assert_eq "daemon with fd 7 open: stopped" 0 "$?"
TALLYD_PID=
pg_wait_value k 9
