#!/bin/bash
# Recovery from journal segments a crash or a disk left odd.  A segment
# missing among later ones (its first writer died before making it) held
# nothing published: recovery pads over it and keeps what the later
# segments hold.  A segment that is there but cannot be mapped (here: cut
# short) is damage: tallyd refuses to start and removes nothing, and
# starts once the segment is whole again.  And frames larger than
# recovery's staging batch, with keys of the longest length allowed.
. "$(dirname "$0")/lib.sh"
need psql h2load

pg_start
tallyd_conf
JDIR=$T/state/journal
SEGSIZE=$((1024 * 1024))
# A 240-byte key: lz4 finds little to squeeze in a frame of one record.
LONGKEY=$(head -c 600 /dev/urandom | tr -dc 'a-zA-Z0-9' | head -c 240)

# fill KEY N: N increments of KEY by 1, one request per journal frame;
# prints how many were acknowledged.
fill() {
	printf '{"key":"%s","value":1}' "$1" >"$T/fill.body"
	h2load -n "$2" -c 1 -t 1 -m 1 -d "$T/fill.body" \
	    -H 'Content-Type: application/json' "$BASE/increment" \
	    >"$T/fill.out" 2>&1
	awk '/^status codes:/ { print $3 + 0 }' "$T/fill.out"
}

segments() { ls "$JDIR" | grep '\.seg$' | sort; }

# records_outside KEY SEGMENT: the sum of KEY's journal records in frames
# from the checkpoint on, outside SEGMENT (from a dump in $T/dump).
records_outside() {
	local base=$((16#${2%.seg}))
	awk -F'\t' -v k="\"$1\"" -v b="$base" -v s="$SEGSIZE" -v ck="$CK" \
	    '$2 == k && $1 >= ck && ($1 < b || $1 >= b + s) { n += $3 }
	    END { print n + 0 }' "$T/dump"
}

# A journal of three segments or more that PostgreSQL has not seen, left
# by kill -9: the flush interval outlasts the test.
# crash_with_segments LABEL KEY: sets ACKED.
crash_with_segments() {
	tallyd_start -o postgres.flush_interval=1h
	flush
	ACKED=$(fill "$2" 9000)
	assert_match "$1: three segments or more" '^([3-9]|[1-9][0-9])$' \
	    "$(segments | wc -l)"
	tallyd_kill9_all
	CK=$(pg_sql "select lsn from tally_checkpoints")
	CK=${CK:-0}
}

# try_start: run tallyd in the foreground as its own run; sets ST.
try_start() {
	TALLYD_RUN=$((TALLYD_RUN + 1))
	TALLYD_LOG=$T/tallyd.$TALLYD_RUN.log
	ST=0
	timeout 60 "$TALLYD" -f -c "$CONF" </dev/null >"$TALLYD_LOG" 2>&1 ||
	    ST=$?
}

# --- a segment cut short in the middle
K1=short-$LONGKEY
crash_with_segments "short segment" "$K1"
mid=$(segments | sed -n 2p)
last=$(segments | tail -n 1)
cp "$JDIR/$mid" "$T/mid.seg"
truncate -s 4096 "$JDIR/$mid"
try_start
assert_eq "short segment: tallyd refuses to start, as for damage" 2 "$ST"
assert_match "short segment: the log names it" \
    "cannot map journal segment $JDIR/$mid" "$(cat "$TALLYD_LOG")"
[ -e "$JDIR/$last" ] && ok "short segment: the later segment is left alone" ||
    notok "short segment: the later segment $last was removed"
cp "$T/mid.seg" "$JDIR/$mid"
tallyd_start
pg_wait_value "$K1" "$ACKED" 60
tallyd_stop TERM
assert_eq "short segment, then whole again: SIGTERM exit status" 0 \
    "$TALLYD_STATUS"

# --- a segment missing in the middle
K2=missing-$LONGKEY
crash_with_segments "missing segment" "$K2"
mid=$(segments | sed -n 2p)
tallyctl journal dump "$JDIR" >"$T/dump" 2>/dev/null
want=$(records_outside "$K2" "$mid")
assert_between "missing segment: later segments hold increments" 1 \
    999999 "$(awk -F'\t' -v b=$((16#${mid%.seg} + SEGSIZE)) -v k="\"$K2\"" \
    '$2 == k && $1 >= b { n++ } END { print n + 0 }' "$T/dump")"
rm "$JDIR/$mid"
tallyd_start
assert_match "missing segment: recovery says so" \
    "journal segment $JDIR/$mid .* is missing" "$(cat "$TALLYD_LOG")"
assert_match "missing segment: and pads over it" "padded unfinished frame" \
    "$(cat "$TALLYD_LOG")"
pg_wait_value "$K2" "$want" 60
tallyd_stop TERM
assert_eq "missing segment: SIGTERM exit status" 0 "$TALLYD_STATUS"
st=0
tallyctl journal verify "$JDIR" >"$T/verify" 2>&1 || st=$?
assert_eq "missing segment: journal verify after recovery" 0 "$st"
[ "$st" = 0 ] || sed 's/^/#   /' "$T/verify"

# --- large frames
# Recovery stages decoded records and adds them to the table in batches:
# a frame with more records than a batch holds is split across two, and
# keys of max_key_bytes fill the staging arena before the batch does.
# The node's total after kill -9 and a restart, before any flush, is
# PostgreSQL's value plus what recovery added: both must be exact.
KA=many-records
KB=$(head -c 6000 /dev/urandom | tr -dc 'a-zA-Z0-9' | head -c 2048)
tallyd_start -o server.workers=1 -o journal.commit_delay=50ms \
    -o counters.max_key_bytes=2048 -o postgres.flush_interval=1h
post "$KA" 5 >/dev/null
post "$KB" 7 >/dev/null
flush
printf '{"key":"%s","value":1}' "$KA" >"$T/a.body"
printf '{"key":"%s","value":1}' "$KB" >"$T/b.body"
h2load -n 3000 -c 300 -t 1 -m 1 -d "$T/a.body" \
    -H 'Content-Type: application/json' "$BASE/increment" >"$T/a.out" 2>&1 &
hpid=$!
h2load -n 600 -c 60 -t 1 -m 1 -d "$T/b.body" \
    -H 'Content-Type: application/json' "$BASE/increment" >"$T/b.out" 2>&1
wait "$hpid"
A_ACK=$(awk '/^status codes:/ { print $3 + 0 }' "$T/a.out")
B_ACK=$(awk '/^status codes:/ { print $3 + 0 }' "$T/b.out")
assert_eq "large frames: every short-key request acknowledged" 3000 "$A_ACK"
assert_eq "large frames: every long-key request acknowledged" 600 "$B_ACK"
tallyd_kill9_all
CK=$(pg_sql "select lsn from tally_checkpoints")
tallyctl journal dump "$JDIR" >"$T/dump" 2>/dev/null
assert_between "large frames: a frame holds more records than a batch" \
    257 4096 "$(awk -F'\t' -v ck="$CK" '$1 >= ck { n[$1]++ }
    END { m = 0; for (l in n) if (n[l] > m) m = n[l]; print m }' "$T/dump")"
assert_eq "large frames: PostgreSQL has only the first increments" \
    "5 7" "$(pg_value "$KA") $(pg_value "$KB")"
tallyd_start -o server.workers=1 -o counters.max_key_bytes=2048 \
    -o postgres.flush_interval=1h
assert_eq "large frames: node total of the short key after recovery" \
    $((5 + A_ACK)) "$(total "$KA")"
assert_eq "large frames: node total of the long key after recovery" \
    $((7 + B_ACK)) "$(total "$KB")"
flush
pg_wait_value "$KA" $((5 + A_ACK)) 60
for i in $(seq 300); do
	[ "$(pg_value "$KB")" = $((7 + B_ACK)) ] && break
	sleep 0.2
done
assert_eq "large frames: PostgreSQL has the long key's total" \
    $((7 + B_ACK)) "$(pg_value "$KB")"
assert_eq "large frames: node totals once flushed" \
    "$((5 + A_ACK)) $((7 + B_ACK))" "$(total "$KA") $(total "$KB")"
tallyd_stop TERM
assert_eq "large frames: SIGTERM exit status" 0 "$TALLYD_STATUS"

# --- a restart under a lower counters.max_key_bytes
# The journal holds a key longer than the new limit: recovery refuses to
# start and says which setting and what length, rather than blaming
# max_keys; the journal is left as it was, and the old limit replays it.
KC=$(printf 'c%.0s' $(seq 100))
tallyd_start -o postgres.flush_interval=1h
assert_eq "lower key limit: a 100-byte key" 202 "$(post "$KC" 3)"
tallyd_kill9_all
st=0
timeout 60 "$TALLYD" -f -c "$CONF" -o counters.max_key_bytes=64 \
    >"$T/short.out" 2>&1 </dev/null || st=$?
assert_eq "lower key limit: tallyd exits 2" 2 "$st"
assert_match "lower key limit: the error names the record and the setting" \
    'journal record at LSN [0-9]+ has a key of 100 bytes, more than counters\.max_key_bytes \(64\); set it to at least 100 to replay the journal' \
    "$(cat "$T/short.out")"
assert_eq "lower key limit: the error does not blame max_keys" 0 \
    "$(grep -c 'table full' "$T/short.out")"
tallyd_start -o postgres.flush_interval=1h
assert_eq "lower key limit: the old limit replays the journal" 3 \
    "$(total "$KC")"
flush
pg_wait_value "$KC" 3 60
tallyd_stop TERM
assert_eq "lower key limit: SIGTERM exit status" 0 "$TALLYD_STATUS"

# A segment's temporary file, left by a process killed while it made the
# segment, goes at the next start; other files stay.
head -c 4096 /dev/zero >"$JDIR/0000000000300000.seg.4242.tmp"
echo keep >"$JDIR/0000000000300000.seg.notes.tmp"
tallyd_start
assert_eq "a dead maker's segment file: removed at start" no \
    "$([ -e "$JDIR/0000000000300000.seg.4242.tmp" ] && echo yes || echo no)"
assert_match "a dead maker's segment file: the log says so" \
    "removed $JDIR/0000000000300000\.seg\.4242\.tmp, left by a process that died" \
    "$(cat "$TALLYD_LOG")"
assert_eq "a file of another name: left alone" keep \
    "$(cat "$JDIR/0000000000300000.seg.notes.tmp")"
tallyd_stop TERM
assert_eq "SIGTERM exit status" 0 "$TALLYD_STATUS"
