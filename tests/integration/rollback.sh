#!/bin/bash
# A state directory that went back in time (a snapshot or a backup
# restored), so that PostgreSQL's checkpoint for the node is past the end
# of the journal found at start.  What that journal holds is in
# PostgreSQL already and must not be flushed again; what is journaled
# after the start reuses positions PostgreSQL's checkpoint covers, and
# must be flushed all the same: with PostgreSQL up at the start, and with
# PostgreSQL down until after new increments were acknowledged.  And a
# flusher that finds PostgreSQL's checkpoint past its own (it died after
# a COMMIT) but cannot read the frames in between to take them out of the
# table waits, rather than flush them a second time.
. "$(dirname "$0")/lib.sh"
need psql gdb

# flush_until_up: tallyctl flush, once the flusher has PostgreSQL back.
flush_until_up() {
	local i
	for i in $(seq 60); do
		tallyctl flush >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	notok "tallyctl flush failed for 30 s"
}

# snapshot, restore: the state directory is put back as it was after a
# fast stop, once the node has flushed that and more since.
snapshot() { rm -rf "$T/state.snap"; cp -a "$T/state" "$T/state.snap"; }
restore() { rm -rf "$T/state"; mv "$T/state.snap" "$T/state"; }

pg_start
tallyd_conf "[server]" "node = rb" "[postgres]" "flush_interval = 1h"

note "1: PostgreSQL up when the node starts again"
tallyd_start
assert_eq "POST rb-a" 202 "$(post rb-a 1)"
flush
assert_eq "POST rb-b, not flushed" 202 "$(post rb-b 1)"
tallyd_stop QUIT
snapshot
tallyd_start
flush
assert_eq "rb-b flushed after the replay" 1 "$(pg_value rb-b)"
assert_eq "POST rb-c" 202 "$(post rb-c 1)"
flush
tallyd_stop TERM
restore
tallyd_start
flush
assert_match "the log says the journal went back" \
    "checkpoint for node 'rb' \(LSN [0-9]+\) is past the end of the journal \(LSN [0-9]+\): the state directory went back" \
    "$(cat "$TALLYD_LOG")"
assert_eq "rb-a once in PostgreSQL" 1 "$(pg_value rb-a)"
assert_eq "rb-b once in PostgreSQL, though the restored journal holds it" 1 \
    "$(pg_value rb-b)"
assert_eq "rb-c once in PostgreSQL" 1 "$(pg_value rb-c)"
assert_eq "POST rb-d, at positions PostgreSQL's checkpoint covered" 202 \
    "$(post rb-d 1)"
flush
assert_eq "rb-d reaches PostgreSQL" 1 "$(pg_value rb-d)"
tallyd_stop TERM
assert_eq "SIGTERM: exit 0" 0 "$TALLYD_STATUS"
checkpoint_at_journal_end "1" rb

note "2: PostgreSQL down until after new increments were acknowledged"
tallyd_start
assert_eq "POST rb-e, not flushed" 202 "$(post rb-e 1)"
tallyd_stop QUIT
snapshot
tallyd_start
flush
assert_eq "POST rb-f" 202 "$(post rb-f 1)"
flush
tallyd_stop TERM
restore
pg_stop
tallyd_start
assert_eq "POST rb-g, PostgreSQL down" 202 "$(post rb-g 1)"
assert_eq "POST rb-h, PostgreSQL down" 202 "$(post rb-h 1)"
pg_start
flush_until_up
assert_eq "rb-e once in PostgreSQL" 1 "$(pg_value rb-e)"
assert_eq "rb-f once in PostgreSQL" 1 "$(pg_value rb-f)"
assert_eq "rb-g, acknowledged before PostgreSQL came back, reaches it" 1 \
    "$(pg_value rb-g)"
assert_eq "rb-h reaches PostgreSQL" 1 "$(pg_value rb-h)"
tallyd_stop TERM
assert_eq "SIGTERM: exit 0" 0 "$TALLYD_STATUS"
checkpoint_at_journal_end "2" rb

note "3: PostgreSQL's checkpoint ahead of the flusher's, the frames between unreadable"
rm -rf "$T/state"
tallyd_conf "[server]" "node = rb3" "[postgres]" "flush_interval = 1h"
tallyd_start
assert_eq "POST rb-i" 202 "$(post rb-i 1)"
flush
for v in 1 10 100; do
	assert_eq "POST rb-j $v" 202 "$(post rb-j $v)"
done
lsn=$(tallyctl journal dump | awk -F'\t' '$2 == "\"rb-j\"" && $3 == 100 { print $1 }')
assert_match "the frame of rb-j's 100" '^[0-9]+$' "$lsn"
flusher=$(role_pids flusher)
# Held after its COMMIT, before the checkpoint is published.
gdb_attach "$flusher" "$T/gdb.out" -ex 'break counters_commit_key' \
    -ex continue -ex 'shell sleep 600'
tallyctl flush >/dev/null 2>&1 &
BGPIDS+=("$!")
wait_grep 10 "$T/gdb.out" '^Breakpoint 1, '
assert_eq "PostgreSQL committed rb-j" 111 "$(pg_value rb-j)"
# One byte of that frame's payload, then the flusher dies.
segsize=$((1024 * 1024))	# lib.sh's segment_size
seg=$(printf '%016X.seg' $((lsn - lsn % segsize)))
printf '\377' | dd of="$T/state/journal/$seg" bs=1 seek=$((lsn % segsize + 44)) \
    conv=notrunc 2>/dev/null
kill -9 "$flusher" "$GDB_PID" $(ps -o pid= --ppid "$GDB_PID")
wait_grep 10 "$TALLYD_LOG" \
    'cannot read journal LSN [0-9]*\.\.[0-9]*, which PostgreSQL already holds'
assert_match "the new flusher says why it does not flush" \
    'cannot read journal LSN [0-9]+\.\.[0-9]+, which PostgreSQL already holds' \
    "$(cat "$TALLYD_LOG")"
# A flush asked for meanwhile (it fails) finds the flusher still waiting.
timeout 10 "$TALLYCTL" -c "$CONF" flush >/dev/null 2>&1
assert_eq "rb-j still once in PostgreSQL" 111 "$(pg_value rb-j)"
assert_eq "the warning is logged once" 1 \
    "$(grep -c 'which PostgreSQL already holds' "$TALLYD_LOG")"
tallyd_kill9_all
