#!/bin/bash
# Fault injection: kill -9 of single children and of everything, a flusher
# killed inside its PostgreSQL transaction, PostgreSQL down, a journal over
# max_size, a damaged journal, a full file system, a graceful stop, the
# journal's files removed, all under load.  After each fault PostgreSQL
# must hold exactly the increments that were acknowledged with 202, plus
# at most the requests whose answer the fault swallowed (each of those
# may or may not count, never twice).
. "$(dirname "$0")/lib.sh"
need psql h2load

NINCR=0		# acknowledged increments the suite drove
NFAULTS=0	# faults it injected
KILLED=" "	# pids this test killed itself, for the crash checks

# The tmpfs of scenario 7 goes before lib.sh's cleanup removes $T: tallyd
# must be gone first, or the mount is busy.
MNT=
fault_cleanup() {
	local rc=$?
	if [ -n "$MNT" ]; then
		if [ -n "$TALLYD_PID" ] && pid_alive "$TALLYD_PID"; then
			tallyd_kill9_all >/dev/null 2>&1
		fi
		umount "$MNT" 2>/dev/null || umount -l "$MNT"
	fi
	(exit "$rc")
	cleanup
}
trap fault_cleanup EXIT

pg_start

# sc_conf NAME [LINE]...: a fresh configuration with its own node name and
# state directory (so its own journal and checkpoint row) on the shared
# PostgreSQL; extra lines as for tallyd_conf.
sc_conf() {
	local name=$1
	shift
	tallyd_conf "$@"
	SC=$name
	SC_RUN0=$((TALLYD_RUN + 1))
	SCDIR=$T/st-$name
	JDIR=$SCDIR/journal
	mkdir -p "$SCDIR"
	sed -i "s|^state_dir = .*|state_dir = $SCDIR\nnode = $name|" "$CONF"
	grep -q '^dir = ' "$CONF" || sed -i "s|^\[journal\]|[journal]\ndir = $JDIR|" "$CONF"
	JDIR=$(sed -n 's/^dir = //p' "$CONF")
}

# set_conf KEY VALUE: change one existing "KEY = ..." line.
set_conf() { sed -i "s|^$1 = .*|$1 = $2|" "$CONF"; }

# fstop SIGNAL: tallyd_stop without its crash check (this test kills
# processes on purpose; crashes_ok checks the rest).
fstop() {
	local sig=$1 pids
	pids="$TALLYD_PID $(descendants "$TALLYD_PID")"
	kill "-$sig" "$TALLYD_PID" 2>/dev/null
	if ! wait_gone 30 "$TALLYD_PID"; then
		notok "tallyd did not stop within 30 s of SIG$sig"
		tallyd_kill9_all
		TALLYD_STATUS=timeout
		return 1
	fi
	wait "$TALLYD_PID" 2>/dev/null
	TALLYD_STATUS=$?
	# shellcheck disable=SC2086
	wait_gone 10 $pids || notok "tallyd's children outlived the master"
	TALLYD_PID=
	return 0
}

# kill9_all: tallyd_kill9_all, remembering the pids.
kill9_all() {
	local p
	for p in $TALLYD_PID $(descendants "$TALLYD_PID"); do
		KILLED="$KILLED$p "
	done
	tallyd_kill9_all
	NFAULTS=$((NFAULTS + 1))
}

# crashes_ok WHAT: every death the master logged is one this test caused.
crashes_ok() {
	local bad l p r logs=
	for r in $(seq "$SC_RUN0" "$TALLYD_RUN"); do
		logs="$logs $T/tallyd.$r.log"
	done
	# shellcheck disable=SC2086
	bad=$(cat $logs | grep -E 'killed by signal|exited with code|fatal code' |
	    while IFS= read -r l; do
		p=$(printf '%s' "$l" | sed -n 's/.*(pid \([0-9]*\)) killed by signal 9 .*/\1/p')
		case "$KILLED" in *" $p "*) [ -n "$p" ] && continue ;; esac
		printf '%s\n' "$l"
	done)
	if [ -z "$bad" ]; then
		ok "$1: no tallyd process died but those the test killed"
	else
		notok "$1: tallyd processes died unasked"
		printf '%s\n' "$bad" | sed 's/^/#   /'
	fi
}

# ---------------------------------------------------------------- load

# client KEY VALUE: one request at a time until $T/stop exists (bounded:
# 90 s); one line per answer in $T/KEY.st: the status and curl's exit code.
client() {
	local key=$1 value=$2 end=$((SECONDS + 90)) st rc
	while [ ! -e "$T/stop" ] && [ $SECONDS -lt $end ]; do
		rc=0
		st=$(curl -s -m 5 -o /dev/null -w '%{http_code}' \
		    -H 'Content-Type: application/json' \
		    --data-binary "{\"key\":\"$key\",\"value\":$value}" \
		    "$BASE/increment") || rc=$?
		echo "$st $rc" >>"$T/$key.st"
		[ "$st" = 202 ] || sleep 0.02
	done
}

VALS=(1 2 5 11 3 7)
LKEYS=()
LVALS=()

# load_start PREFIX N: N client loops on keys PREFIX-1..N.
load_start() {
	local i k
	rm -f "$T/stop"
	LKEYS=()
	LVALS=()
	for i in $(seq "$2"); do
		k=$1-$i
		LKEYS+=("$k")
		LVALS+=("${VALS[$((i - 1))]}")
		touch "$T/$k.st"
		client "$k" "${VALS[$((i - 1))]}" &
		BGPIDS+=($!)
	done
}

load_stop() {
	local p
	touch "$T/stop"
	for p in "${BGPIDS[@]}"; do
		wait "$p" 2>/dev/null
	done
	BGPIDS=()
}

acked() { grep -c '^202 ' "$T/$1.st"; }
# Answers that say nothing of the increment: no status, but a connection
# was made (connection refused, curl exit 7, never reached a worker).
uncertain() { grep -Evc '^(202|503|4[0-9][0-9]) |^000 7$' "$T/$1.st"; }
acked_all() {
	local k n=0
	for k in "${LKEYS[@]}"; do
		n=$((n + $(acked "$k")))
	done
	echo $n
}

# drained [TIMEOUT_S]: wait until /readyz shows no unflushed journal (the
# flusher caught up with everything written).
drained() {
	local i
	for i in $(seq $((${1:-30} * 5))); do
		http GET /readyz >/dev/null
		last_body | grep -q '"backlog_bytes":0,' && return 0
		sleep 0.2
	done
	return 1
}

# check_totals WHAT: for each key of the last load, PostgreSQL holds the
# acknowledged increments, plus at most one per swallowed answer; and the
# node's own total agrees with PostgreSQL once the flusher caught up.
check_totals() {
	local i k v a u got extra node
	drained 30 || notok "$1: the flusher did not catch up within 30 s"
	for i in "${!LKEYS[@]}"; do
		k=${LKEYS[$i]}
		v=${LVALS[$i]}
		a=$(acked "$k")
		u=$(uncertain "$k")
		NINCR=$((NINCR + a))
		got=$(pg_value "$k")
		if [[ "$got" =~ ^[0-9]+$ ]] && [ $((got % v)) = 0 ]; then
			extra=$((got / v - a))
		else
			extra="total $got"
		fi
		assert_between "$1: $k in PostgreSQL is its $a acknowledged increments (x$v) plus at most $u unanswered (total $got)" \
		    0 "$u" "$extra"
		node=$(total "$k")
		assert_eq "$1: the node's total for $k agrees with PostgreSQL" "$got" "$node"
	done
}

# wait_children N: until the master has N children (10 s); prints them.
wait_children() {
	local i n
	for i in $(seq 100); do
		n=$(pgrep -P "$TALLYD_PID" | wc -l)
		[ "$n" = "$1" ] && break
		sleep 0.1
	done
	echo "$n"
}

# post_status KEY VALUE: one POST; prints its status.
post_status() { post "$1" "$2"; }

# wait_post KEY VALUE STATUS TIMEOUT_S: POST until the answer is STATUS.
wait_post() {
	local i st
	for i in $(seq $(($4 * 5))); do
		st=$(post "$1" "$2")
		[ "$st" = "$3" ] && break
		sleep 0.2
	done
	echo "$st"
}

# h2fill NAME BODY: POST BODY with h2load in rounds of 4000 (one request
# at a time, so each is its own journal frame and a long key fills the
# journal fast) until some answers are 5xx (at most 8 rounds); sums the
# answers in H2_2XX, H2_5XX, H2_OTHER (4xx, 3xx) and H2_ERR (no answer).
h2fill() {
	local r out
	printf '%s' "$2" >"$T/$1.body"
	H2_2XX=0 H2_5XX=0 H2_OTHER=0 H2_ERR=0
	for r in $(seq 8); do
		h2load -n 4000 -c 1 -t 1 -m 1 -d "$T/$1.body" \
		    -H 'Content-Type: application/json' "$BASE/increment" \
		    >"$T/$1.h2.$r" 2>&1
		out=$(awk '/^requests:/ { e = $(NF - 3) + $(NF - 1) }
		    /^status codes:/ { s2 = $3; s3 = $5; s4 = $7; s5 = $9 }
		    END { print s2 + 0, s5 + 0, s3 + s4, e + 0 }' "$T/$1.h2.$r")
		set -- "$1" "$2" $out
		H2_2XX=$((H2_2XX + $3)) H2_5XX=$((H2_5XX + $4))
		H2_OTHER=$((H2_OTHER + $5)) H2_ERR=$((H2_ERR + $6))
		[ "$4" -gt 0 ] && break
	done
	note "$1: h2load: $H2_2XX 2xx, $H2_5XX 5xx, $H2_OTHER other, $H2_ERR without an answer"
}

# A 250-byte key: lz4 finds nothing to squeeze in a frame of one record.
LONGKEY=$(head -c 600 /dev/urandom | tr -dc 'a-zA-Z0-9' | head -c 240)

# ================================================================ 1
note "1: kill -9 of single children under load"
sc_conf kill1
tallyd_start
assert_eq "1: master has 4 children" 4 "$(wait_children 4)"
load_start s1 3
sleep 1
VICTIMS=
for round in 1 2 3 4; do
	kids=($(pgrep -P "$TALLYD_PID"))
	v=${kids[$((RANDOM % ${#kids[@]}))]}
	kill -9 "$v"
	KILLED="$KILLED$v "
	VICTIMS="$VICTIMS $v"
	NFAULTS=$((NFAULTS + 1))
	sleep 1.5
done
assert_eq "1: the master respawned every child" 4 "$(wait_children 4)"
before=$(acked_all)
sleep 1
assert_between "1: increments acknowledged after the last kill" $((before + 1)) 999999999 "$(acked_all)"
load_stop
for v in $VICTIMS; do
	r=$(sed -n "s/.* \([a-z]*\) (pid $v) killed by signal 9 .*/\1/p" "$TALLYD_LOG")
	assert_match "1: master logged the death of pid $v ($r)" '^(worker|syncer|flusher)$' "$r"
done
assert_between "1: master logged the restarts" 4 99 \
    "$(grep -c 'restarting ' "$TALLYD_LOG")"
check_totals "1"
fstop TERM
assert_eq "1: SIGTERM: exit status" 0 "$TALLYD_STATUS"
crashes_ok 1

# ================================================================ 2
note "2: kill -9 of the flusher blocked inside its transaction"
sc_conf kill2
tallyd_start
load_start s2 2
sleep 1
# The flusher is the child whose log lines carry the role "flusher": it
# logs as it connects to PostgreSQL.  (pg_stat_activity names its backend,
# not its pid: over a Unix socket there is no client port to trace.)
flusher=
for p in $(grep -o 'tallyd\[[0-9]*\] flusher' "$TALLYD_LOG" | tr -dc '0-9\n' | tac); do
	if [ "$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')" = "$TALLYD_PID" ]; then
		flusher=$p
		break
	fi
done
assert_match "2: found the flusher's pid" '^[0-9]+$' "$flusher"
PGCONNECT_TIMEOUT=5 psql "$DSN" -Xq -c 'BEGIN' \
    -c 'LOCK TABLE tally_counters IN ACCESS EXCLUSIVE MODE' \
    -c 'SELECT pg_sleep(4)' -c 'COMMIT' >"$T/lock.out" 2>&1 &
lockpid=$!
BGPIDS+=($lockpid)
blocked=no
for i in $(seq 40); do
	n=$(pg_sql "select count(*) from pg_stat_activity where application_name = 'tallyd-flusher' and wait_event_type = 'Lock'")
	[ "$n" = 1 ] && { blocked=yes; break; }
	sleep 0.1
done
assert_eq "2: the flusher waits on the lock inside its transaction" yes "$blocked"
if [ -n "$flusher" ]; then
	kill -9 "$flusher"
	KILLED="$KILLED$flusher "
	NFAULTS=$((NFAULTS + 1))
fi
wait "$lockpid"
assert_eq "2: the lock holder committed" 0 "$?"
sleep 1
load_stop
assert_match "2: master logged the flusher's death" "flusher \(pid $flusher\) killed by signal 9" "$(cat "$TALLYD_LOG")"
assert_eq "2: the master respawned the flusher" 4 "$(wait_children 4)"
check_totals "2"
fstop TERM
assert_eq "2: SIGTERM: exit status" 0 "$TALLYD_STATUS"
crashes_ok 2

# ================================================================ 3
note "3: kill -9 of everything, restart, three times under load"
sc_conf kill3
tallyd_start
load_start s3 3
for round in 1 2 3; do
	sleep $((1 + RANDOM % 2)).$((RANDOM % 10))
	kill9_all
	sleep 0.$((RANDOM % 5))
	st=0
	tallyctl journal verify "$JDIR" >"$T/verify3.$round" 2>&1 || st=$?
	assert_eq "3: round $round: journal verify after kill -9" 0 "$st"
	tallyd_start
done
sleep 1
load_stop
check_totals "3"
fstop TERM
assert_eq "3: SIGTERM: exit status" 0 "$TALLYD_STATUS"
crashes_ok 3

# ================================================================ 4
note "4: PostgreSQL stopped for several seconds under load"
sc_conf pgdown4
tallyd_start
load_start s4 3
sleep 1
pg_stop
NFAULTS=$((NFAULTS + 1))
sleep 1.5
a0=$(acked_all)
ready=
for i in $(seq 25); do
	ready=$(http GET /readyz)
	[ "$ready" = 503 ] && break
	sleep 0.2
done
assert_eq "4: /readyz is 503 with PostgreSQL down" 503 "$ready"
assert_match "4: /readyz says postgres is down" '"postgres":\{"up":false' "$(last_body)"
sleep 3
assert_between "4: increments acknowledged while PostgreSQL is down" $((a0 + 1)) 999999999 "$(acked_all)"
pg_start
sleep 1.5
load_stop
n503=0
for k in "${LKEYS[@]}"; do
	n503=$((n503 + $(grep -c '^503 ' "$T/$k.st")))
done
assert_eq "4: no 503 while the journal had room" 0 "$n503"
check_totals "4"
fstop TERM
assert_eq "4: SIGTERM: exit status" 0 "$TALLYD_STATUS"
crashes_ok 4

# ================================================================ 5
note "5: journal.max_size reached while PostgreSQL is down"
sc_conf backlog5 "[journal]" "max_size = 2M"
set_conf segment_size 1M
tallyd_start
assert_eq "5: one increment before the outage" 202 "$(post s5 1)"
pg_wait_value s5 1
pg_stop
NFAULTS=$((NFAULTS + 1))
h2fill s5 "{\"key\":\"s5-$LONGKEY\",\"value\":1}"
assert_between "5: load was acknowledged until the backlog filled" 1 999999999 "$H2_2XX"
assert_between "5: then answered 503" 1 999999999 "$H2_5XX"
assert_eq "5: no other answers" 0 "$H2_OTHER"
assert_eq "5: no request went without an answer" 0 "$H2_ERR"
st=$(post "s5-$LONGKEY" 1)
assert_eq "5: one more POST is 503" 503 "$st"
more=0
[ "$st" = 202 ] && more=1
assert_match "5: with Retry-After" '^[0-9]+$' "$(last_header Retry-After)"
assert_match "5: saying the journal is full" 'journal' "$(last_body)"
pg_start
assert_eq "5: 202 again once PostgreSQL drained the backlog" 202 \
    "$(wait_post "s5-$LONGKEY" 1 202 60)"
[ "$(last_status)" = 202 ] && more=$((more + 1))
NINCR=$((NINCR + H2_2XX + more))
pg_wait_value "s5-$LONGKEY" $((H2_2XX + more)) 60
fstop TERM
assert_eq "5: SIGTERM: exit status" 0 "$TALLYD_STATUS"
crashes_ok 5

# ================================================================ 6
note "6: a damaged journal"
sc_conf damage6
set_conf flush_interval 1h
tallyd_start
for i in $(seq 60); do
	[ "$(post "s6-$((i % 4))" "$i")" = 202 ] && NINCR=$((NINCR + 1))
done
fstop QUIT
NFAULTS=$((NFAULTS + 1))
cp -a "$JDIR" "$T/journal6.orig"
tallyctl journal verify "$JDIR" >"$T/v6.0" 2>&1
end=$(sed -n 's/.*LSN [0-9]* to \([0-9]*\)$/\1/p' "$T/v6.0")
seg=$(ls "$JDIR" | grep '\.seg$' | sort | tail -n 1)
ck=$(pg_sql "select lsn from tally_checkpoints where node = 'damage6'")
ck=${ck:-0}
# Frame start LSNs (from the dump) that PostgreSQL has not seen.
tallyctl journal dump "$JDIR" 2>/dev/null | awk -F'\t' -v ck="$ck" \
    '$1 >= ck { print $1 }' | sort -un >"$T/frames6"
nframes=$(wc -l <"$T/frames6")
assert_between "6: unflushed frames after SIGQUIT with a long flush interval" 8 999999 "$nframes"
segsize=$((1024 * 1024))
base=$((16#${seg%.seg}))
# (a) zero everything from a random point in the last few frames on: a
# byte of one of the last five frames, past its first, that is not zero
# already.  Zeroing from a frame's start, or from the zeros that pad a
# frame to its length, leaves valid frames and then a clean end, with
# nothing torn.
fi6=$((nframes - RANDOM % 5))
fs=$(sed -n "${fi6}p" "$T/frames6")
fe=$(sed -n "$((fi6 + 1))p" "$T/frames6")
fe=${fe:-$end}
mapfile -t nz < <(od -An -v -tu1 -j $((fs - base + 1)) -N $((fe - fs - 1)) \
    "$JDIR/$seg" | tr -s ' ' '\n' | awk 'NF { i++; if ($1 != 0) print i }')
assert_between "6a: non-zero bytes in the frame at LSN $fs" 1 99999 "${#nz[@]}"
cut=$((fs + 1))
[ ${#nz[@]} = 0 ] || cut=$((fs + nz[RANDOM % ${#nz[@]}]))
off=$((cut - base))
note "6a: zeroing $seg from offset $off (LSN $cut; journal end $end)"
dd if=/dev/zero of="$JDIR/$seg" bs=1 seek="$off" count=$((segsize - off)) \
    conv=notrunc status=none
NFAULTS=$((NFAULTS + 1))
tallyctl journal dump "$JDIR" 2>/dev/null >"$T/dump6a"
declare -A EXP6
for k in 0 1 2 3; do
	pv=$(pg_value "s6-$k")
	[ "$pv" = none ] && pv=0
	EXP6[$k]=$(awk -F'\t' -v ck="$ck" -v k="s6-$k" -v pv="$pv" \
	    'BEGIN { s = pv } { gsub(/"/, "", $2) } $1 >= ck && $2 == k { s += $3 } END { print s }' \
	    "$T/dump6a")
done
set_conf flush_interval 100ms
tallyd_start
assert_match "6a: recovery cut the torn tail" 'startup info: (cut [0-9]+ bytes of unfinished journal tail|padded unfinished frame)' \
    "$(cat "$TALLYD_LOG")"
for k in 0 1 2 3; do
	pg_wait_value "s6-$k" "${EXP6[$k]}"
done
fstop TERM
assert_eq "6a: SIGTERM: exit status" 0 "$TALLYD_STATUS"
st=0
tallyctl journal verify "$JDIR" >"$T/v6.a" 2>&1 || st=$?
assert_eq "6a: journal verify after recovery" 0 "$st"
[ "$st" = 0 ] || sed 's/^/#   /' "$T/v6.a"
crashes_ok 6a

# (b) a flipped bit in an early unflushed frame, valid frames after it;
# tallyctl journal skip then gives up that frame alone.
set_conf flush_interval 1h
tallyd_start
n6b=0
for i in $(seq 30); do
	[ "$(post "s6b" 1)" = 202 ] && n6b=$((n6b + 1))
done
NINCR=$((NINCR + n6b))
fstop QUIT
ck=$(pg_sql "select lsn from tally_checkpoints where node = 'damage6'")
tallyctl journal dump "$JDIR" 2>/dev/null >"$T/dump6b"
awk -F'\t' -v ck="${ck:-0}" '$1 >= ck { print $1 }' "$T/dump6b" |
    sort -un >"$T/frames6b"
flip=$(sed -n 3p "$T/frames6b")
seg=$(ls "$JDIR" | grep '\.seg$' | sort | tail -n 1)
base=$((16#${seg%.seg}))
if [ "$flip" -lt "$base" ]; then
	seg=$(ls "$JDIR" | grep '\.seg$' | sort | tail -n 2 | head -n 1)
	base=$((16#${seg%.seg}))
fi
off=$((flip - base + 44))
byte=$(od -An -tu1 -j "$off" -N1 "$JDIR/$seg" | tr -d ' ')
printf "$(printf '\\%03o' $((byte ^ 16)))" |
    dd of="$JDIR/$seg" bs=1 seek="$off" conv=notrunc status=none
NFAULTS=$((NFAULTS + 1))
note "6b: flipped bit 4 of $seg offset $off (frame at LSN $flip)"
TALLYD_RUN=$((TALLYD_RUN + 1))
TALLYD_LOG=$T/tallyd.$TALLYD_RUN.log
st=0
timeout 30 "$TALLYD" -f -c "$CONF" </dev/null >"$TALLYD_LOG" 2>&1 || st=$?
assert_between "6b: tallyd refuses to start (exit $st)" 1 123 "$st"
frame_off=$((flip - base))
assert_match "6b: the log names the segment and offset" \
    "$seg at offset $frame_off" "$(cat "$TALLYD_LOG")"
st=0
tallyctl journal verify "$JDIR" >"$T/v6.b" 2>&1 || st=$?
assert_eq "6b: journal verify exits 1" 1 "$st"
assert_match "6b: journal verify names the segment and offset" \
    "$seg offset $frame_off" "$(cat "$T/v6.b")"

# The way out: the damaged frame becomes padding, the frames after it stay.
lost=$(awk -F'\t' -v f="$flip" '$1 == f' "$T/dump6b" | wc -l)
st=0
tallyctl journal skip abc "$JDIR" >"$T/skip6b" 2>&1 || st=$?
assert_eq "6b: journal skip of a bad LSN: usage error" 2 "$st"
st=0
tallyctl journal skip $((flip + 8)) "$JDIR" >"$T/skip6b" 2>&1 || st=$?
assert_eq "6b: journal skip inside a frame: exit 1" 1 "$st"
assert_match "6b: ... saying so" 'no frame starts there' "$(cat "$T/skip6b")"
st=0
tallyctl journal skip "$flip" "$JDIR" >"$T/skip6b" 2>&1 || st=$?
assert_eq "6b: journal skip of the damaged frame" 0 "$st"
assert_match "6b: ... saying what is lost" \
    "LSN $flip\\).*padding.*increments are lost" "$(cat "$T/skip6b")"
st=0
tallyctl journal verify "$JDIR" >"$T/v6.b2" 2>&1 || st=$?
assert_eq "6b: journal verify after the skip" 0 "$st"
st=0
tallyctl journal skip "$flip" "$JDIR" >"$T/skip6b" 2>&1 || st=$?
assert_eq "6b: a second skip finds nothing to skip" 1 "$st"
assert_match "6b: ... saying so" 'nothing to skip' "$(cat "$T/skip6b")"
tallyd_start
st=0
tallyctl journal skip "$flip" "$JDIR" >"$T/skip6b" 2>&1 || st=$?
assert_eq "6b: journal skip while tallyd runs: exit 1" 1 "$st"
assert_match "6b: ... naming it" "pid $TALLYD_PID\\) is running" \
    "$(cat "$T/skip6b")"
flush
assert_between "6b: the damaged frame held some of them" 1 "$n6b" "$lost"
assert_eq "6b: PostgreSQL has every increment but the damaged frame's" \
    "$((n6b - lost))" "$(pg_value s6b)"
fstop TERM
crashes_ok 6b

# ================================================================ 7
note "7: a full file system under the journal"
sc_conf full7
MNT=$T/tmpfs7
mkdir -p "$MNT"
if ! mount -t tmpfs -o size=3M tmpfs "$MNT" 2>"$T/mount.err"; then
	MNT=
	skip7=1
else
	skip7=0
fi
if [ $skip7 = 1 ]; then
	if [ -n "${CI:-}" ]; then
		notok "7: cannot mount a tmpfs (required in CI): $(cat "$T/mount.err")"
	else
		note "SKIP 7: cannot mount a tmpfs: $(cat "$T/mount.err")"
	fi
else
	set_conf dir "$MNT/journal"
	JDIR=$MNT/journal
	tallyd_start
	assert_eq "7: one increment before the outage" 202 "$(post s7 1)"
	pg_wait_value s7 1
	pg_stop
	NFAULTS=$((NFAULTS + 1))
	h2fill s7 "{\"key\":\"s7-$LONGKEY\",\"value\":1}"
	assert_between "7: load was acknowledged until the disk filled" 1 999999999 "$H2_2XX"
	assert_between "7: then answered 503" 1 999999999 "$H2_5XX"
	assert_eq "7: no other answers" 0 "$H2_OTHER"
	assert_eq "7: no request went without an answer" 0 "$H2_ERR"
	st=$(post "s7-$LONGKEY" 1)
	assert_eq "7: one more POST is 503" 503 "$st"
	more=0
	[ "$st" = 202 ] && more=1
	assert_match "7: with Retry-After" '^[0-9]+$' "$(last_header Retry-After)"
	assert_match "7: the log says the disk is full" 'No space left on device' \
	    "$(cat "$TALLYD_LOG")"
	pg_start
	assert_eq "7: 202 again once the backlog drained" 202 \
	    "$(wait_post "s7-$LONGKEY" 1 202 20)"
	[ "$(last_status)" = 202 ] && more=$((more + 1))
	NINCR=$((NINCR + H2_2XX + more))
	pg_wait_value "s7-$LONGKEY" $((H2_2XX + more)) 30
	assert_between "7: segments recycled (files in the journal)" 1 2 \
	    "$(ls "$MNT/journal" | grep -c '\.seg$')"
	fstop TERM
	assert_eq "7: SIGTERM: exit status" 0 "$TALLYD_STATUS"
	crashes_ok 7
fi

# ================================================================ 8
note "8: SIGTERM under load, then restart"
sc_conf term8
tallyd_start
load_start s8 4
sleep 2
fstop TERM
NFAULTS=$((NFAULTS + 1))
assert_eq "8: SIGTERM under load: exit status" 0 "$TALLYD_STATUS"
load_stop
checkpoint_at_journal_end 8 term8 "$JDIR"
for i in "${!LKEYS[@]}"; do
	k=${LKEYS[$i]}
	a=$(acked "$k")
	u=$(uncertain "$k")
	v=${LVALS[$i]}
	got=$(pg_value "$k")
	NINCR=$((NINCR + a))
	if [[ "$got" =~ ^[0-9]+$ ]] && [ $((got % v)) = 0 ]; then
		extra=$((got / v - a))
	else
		extra="total $got"
	fi
	assert_between "8: $k in PostgreSQL after the stop is its $a acknowledged (x$v) plus at most $u unanswered" \
	    0 "$u" "$extra"
	echo "$got" >"$T/$k.pg8"
done
tallyd_start
for k in "${LKEYS[@]}"; do
	assert_eq "8: after restart the node shows $k" "$(cat "$T/$k.pg8")" "$(total "$k")"
done
fstop TERM
assert_eq "8: SIGTERM: exit status" 0 "$TALLYD_STATUS"
crashes_ok 8

# ================================================================ 9
# The journal's files gone under a running tallyd: the syncer still has
# its segment mapped, the workers cannot open it.  Increments are
# refused; the syncer's "written again" is tried at growing intervals
# (0.1 s, then 0.2, 0.4 ... up to 10 s), not at once after each failure:
# dozens of times in these 4 s, two log lines each.
note "9: the journal's directory removed under a running tallyd"
sc_conf gone9
tallyd_start
# Load first, until each worker has the segment in use open and the
# syncer has made the next one (past half the segment in use): the files
# go while they are in use, and the workers find the next one gone.
printf '{"key":"s9-%s","value":1}' "$LONGKEY" >"$T/s9.body"
S9ACKED=0
s9load() {
	local n
	h2load "$@" -c 4 -t 1 -m 1 -d "$T/s9.body" \
	    -H 'Content-Type: application/json' "$BASE/increment" >"$T/s9.h2" 2>&1
	n=$(awk '/^status codes:/ { print $3 + 0 }' "$T/s9.h2")
	S9ACKED=$((S9ACKED + ${n:-0}))
}
s9next() {
	local ins
	ins=$(metric journal_insert_lsn)
	[ -f "$JDIR/$(printf '%016x' $(((ins / 1048576 + 1) * 1048576))).seg" ]
}
for i in $(seq 40); do
	s9load -n 500
	s9next && break
done
assert_eq "9: the next segment made ahead" 0 "$(s9next; echo $?)"
rm -rf "$JDIR"
s9load -D 4
NFAULTS=$((NFAULTS + 1))
note "9: $S9ACKED increments acknowledged; after the files went: $(grep '^status codes:' "$T/s9.h2")"
NINCR=$((NINCR + S9ACKED))
assert_eq "9: one more POST is 503" 503 "$(post s9 1)"
assert_match "9: the log says why" 'cannot write journal .*No such file' \
    "$(cat "$TALLYD_LOG")"
assert_between "9: the journal tried again now and then, not in a loop" \
    1 12 "$(grep -c 'can be written again' "$TALLYD_LOG")"
# The removed files stay open and mapped: what was acknowledged is there.
pg_wait_value "s9-$LONGKEY" "$S9ACKED"
fstop TERM
assert_eq "9: SIGTERM: exit status" 0 "$TALLYD_STATUS"
crashes_ok 9

note "the suite drove $NINCR acknowledged increments and $NFAULTS faults"
