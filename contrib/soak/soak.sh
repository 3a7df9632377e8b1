#!/bin/bash
# A randomized crash campaign against the durability promise: clients post
# increments (half of them with an Idempotency-Key) over keep-alive
# connections while, every few seconds, one fault strikes: kill -9 of a
# worker, the syncer, the flusher, the master or everything, a fast or
# graceful stop, PostgreSQL stopped at once (alone, or across a crash and
# a start of tallyd), a restart with another number of workers.  At the
# end every key's total, in PostgreSQL and from a restarted tallyd, must
# hold every acknowledged increment once, plus at most what was lost in
# flight without an answer; keyed requests exactly once, and a keyed
# request sent again answered as the first time.  Not part of make check:
# run from a built tree,
#
#	contrib/soak/soak.sh [SECONDS]		(default 600)
#
# CONNS (default 12) sets the client connections, KEYS (default 50) the
# keys, NODES (default 1) the tallyd nodes sharing the PostgreSQL
# database (each request, a retry too, goes to one at random; each fault
# strikes one), TALLYD_ARGS more arguments to tallyd
# (-o counters.max_keys=64 for eviction and PostgreSQL look-ups), KEEP=1
# keeps the temporary directory (kept anyway on a violation).  Prints one
# line:
# nodes, faults done, requests acknowledged, keyed requests sent again
# and answered as the first time (soak.py; some across a crash, as
# tallyd(8) allows), keys checked, violations, anomalies (answers no
# request should get, keyed requests never settled) and the keyed
# increments the nodes left out at flush (count_dups).
top_builddir=$(cd "$(dirname "$0")/../.." && pwd)
SELF_DIR=$(cd "$(dirname "$0")" && pwd)
. "$top_builddir/tests/integration/lib.sh"
need psql python3

DURATION=${1:-600}
CONNS=${CONNS:-12}
export KEYS=${KEYS:-50}
NODES=${NODES:-1}
TALLYD_ARGS=${TALLYD_ARGS:-}
VIOLATIONS=0
FAULTS=0
PIDS_SEEN=" "

# Each node's port, workers, master's pid and log; the node in use has
# its own in lib.sh's CONF, TPORT, BASE, TALLYD_PID and TALLYD_LOG.
declare -a NPORT NWORKERS NPID NLOG
CUR=

# node_conf N: node N's configuration, on a port of its own.
node_conf() {
	local n=$1 p i
	for i in $(seq 100); do
		p=$(free_port) || die "no free port for node $n"
		case " ${NPORT[*]} " in *" $p "*) continue ;; esac
		break
	done
	NPORT[$n]=$p
	NWORKERS[$n]=2
	mkdir -p "$T/node$n"
	cat >"$T/node$n.conf" <<-EOF
	[server]
	listen = 127.0.0.1:$p
	workers = 2
	node = soak$n
	state_dir = $T/node$n
	pid_file = $T/node$n/tallyd.pid
	control_socket = $T/node$n/tallyd.sock
	[journal]
	segment_size = 1M
	[postgres]
	dsn = $DSN
	flush_interval = 100ms
	[idempotency]
	# Keys are kept 24 h: room for every keyed request of a long run,
	# which would otherwise fill the table and get 503 from then on.
	max_keys = $((DURATION * 2000 + 100000))
	EOF
}

# use_node N: what follows acts on node N.
use_node() {
	if [ -n "$CUR" ]; then
		NPID[$CUR]=$TALLYD_PID
		NLOG[$CUR]=$TALLYD_LOG
	fi
	CUR=$1
	CONF=$T/node$1.conf
	TPORT=${NPORT[$1]}
	BASE=http://127.0.0.1:$TPORT
	TALLYD_PID=${NPID[$1]:-}
	TALLYD_LOG=${NLOG[$1]:-}
}

# lib.sh's cleanup stops the node in use; the others first.
soak_cleanup() {
	local rc=$? n
	for n in $(seq 0 $((NODES - 1))); do
		[ "$n" = "$CUR" ] && continue
		use_node "$n"
		if [ -n "$TALLYD_PID" ] && pid_alive "$TALLYD_PID"; then
			tallyd_kill9_all >/dev/null 2>&1
		fi
	done
	(exit "$rc")
	cleanup
}
trap soak_cleanup EXIT

# A violation keeps the temporary directory for a look.
die() {
	notok "$*"
	KEEP=1
	exit 1
}

case $NODES in
[1-9]) ;;
*) die "NODES must be 1 to 9, not '$NODES'" ;;
esac

violation() {
	VIOLATIONS=$((VIOLATIONS + 1))
	KEEP=1
	notok "$*"
}

# shellcheck disable=SC2086
start() { tallyd_start -o "server.workers=${NWORKERS[$CUR]}" $TALLYD_ARGS; }

# A process's start time: with its pid, it names the process, as pids
# come round again in a long run.
started() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

# Every process tallyd had (pid:start time), so that none can be left
# behind unseen.
remember_pids() {
	local p id
	[ -n "$TALLYD_PID" ] || return 0
	for p in $TALLYD_PID $(descendants "$TALLYD_PID"); do
		id=$p:$(started "$p")
		case "$PIDS_SEEN" in *" $id "*) ;; *) PIDS_SEEN="$PIDS_SEEN$id " ;; esac
	done
}

remember_all_pids() {
	local n keep=$CUR
	for n in $(seq 0 $((NODES - 1))); do
		use_node "$n"
		remember_pids
	done
	use_node "$keep"
}

# stop_wait LABEL SIGNAL: stop by signal; the master and its children gone
# in 30 s.
stop_wait() {
	local pids
	pids="$TALLYD_PID $(descendants "$TALLYD_PID")"
	kill "-$2" "$TALLYD_PID"
	# shellcheck disable=SC2086
	if ! wait_gone 30 $pids; then
		violation "$1: tallyd did not stop within 30 s of SIG$2"
		tallyd_kill9_all
		return
	fi
	wait "$TALLYD_PID" 2>/dev/null
	TALLYD_STATUS=$?
	[ "$TALLYD_STATUS" = 0 ] ||
	    violation "$1: SIG$2 exit status $TALLYD_STATUS"
	TALLYD_PID=
}

kill_role() {
	local pids n
	pids=($(role_pids "$1"))
	n=${#pids[@]}
	if [ "$n" = 0 ]; then
		note "fault $FAULTS: no $1 to kill"
		return
	fi
	kill -9 "${pids[RANDOM % n]}"
}

# count_dups: add what node CUR's count of keyed increments left out at
# flush (PostgreSQL held their key) gained since the last look; a new
# master starts it from 0.  What a node counted after the last look
# before a crash is missed: a lower bound, to show the path ran.
declare -a NDUPS NDUPS_PID
DUPS=0
count_dups() {
	local v last=${NDUPS[$CUR]:-0}
	[ "${NDUPS_PID[$CUR]:-}" = "$TALLYD_PID" ] || last=0
	v=$(metric idempotency_duplicates_total)
	case $v in ''|*[!0-9]*) return 0 ;; esac
	[ "$v" -ge "$last" ] && DUPS=$((DUPS + v - last))
	NDUPS[$CUR]=$v
	NDUPS_PID[$CUR]=$TALLYD_PID
}

# crashing: node CUR is about to lose its shared memory; crashed: it
# has, and is up again.  For soak.py, in node*/crashes, the crashes begun
# and those ended: a keyed request answered before a crash and sent
# again after it may be answered with a total the journal gave back
# (tallyd(8)), which the clients check more loosely.  A client reads the
# crashes ended before it sends, and those begun once it has the second
# answer: if these are more, a crash may lie between the two answers.
declare -a NCRASH_BEGUN NCRASH_ENDED
crash_count() {
	echo "${NCRASH_BEGUN[$CUR]:-0} ${NCRASH_ENDED[$CUR]:-0}" \
	    >"$T/node$CUR/crashes.tmp"
	mv "$T/node$CUR/crashes.tmp" "$T/node$CUR/crashes"
}
crashing() {
	NCRASH_BEGUN[$CUR]=$((${NCRASH_BEGUN[$CUR]:-0} + 1))
	crash_count
}
crashed() {
	[ "${NCRASH_ENDED[$CUR]:-0}" = "${NCRASH_BEGUN[$CUR]:-0}" ] && return
	NCRASH_ENDED[$CUR]=${NCRASH_BEGUN[$CUR]}
	crash_count
}

# One fault, on a node chosen at random (PostgreSQL's, on them all).
fault() {
	local f=$((RANDOM % 11)) pids
	FAULTS=$((FAULTS + 1))
	remember_all_pids
	use_node $((RANDOM % NODES))
	count_dups
	[ "$NODES" = 1 ] || note "fault $FAULTS on node soak$CUR"
	case $f in
	0|1)	note "fault $FAULTS: kill -9 a worker"; kill_role worker ;;
	2)	note "fault $FAULTS: kill -9 the syncer"; kill_role syncer ;;
	3)	note "fault $FAULTS: kill -9 the flusher"; kill_role flusher ;;
	4)	note "fault $FAULTS: kill -9 the master"
		crashing
		pids=$(descendants "$TALLYD_PID")
		kill -9 "$TALLYD_PID"
		wait "$TALLYD_PID" 2>/dev/null
		# Its children follow it (PR_SET_PDEATHSIG).
		# shellcheck disable=SC2086
		if ! wait_gone 30 $pids; then
			violation "children outlived a killed master: $pids"
			# shellcheck disable=SC2086
			kill -9 $pids 2>/dev/null
		fi
		TALLYD_PID=
		start ;;
	5)	note "fault $FAULTS: kill -9 everything"
		crashing
		tallyd_kill9_all >/dev/null
		start ;;
	6)	note "fault $FAULTS: SIGQUIT"
		crashing
		stop_wait SIGQUIT QUIT
		start ;;
	7)	note "fault $FAULTS: SIGTERM"
		stop_wait SIGTERM TERM
		start ;;
	8)	note "fault $FAULTS: PostgreSQL stopped at once"
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop \
		    >/dev/null || die "PostgreSQL did not stop"
		PG_STARTED=0
		sleep $((1 + RANDOM % 6))
		pg_start >/dev/null ;;
	9)	NWORKERS[$CUR]=$((1 + (NWORKERS[CUR] + RANDOM % 2) % 3))
		note "fault $FAULTS: restart with ${NWORKERS[$CUR]} workers"
		if [ $((RANDOM % 2)) = 0 ]; then
			stop_wait "SIGTERM for ${NWORKERS[$CUR]} workers" TERM
		else
			crashing
			tallyd_kill9_all >/dev/null
		fi
		start ;;
	10)	note "fault $FAULTS: PostgreSQL down across a kill -9 of everything"
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop \
		    >/dev/null || die "PostgreSQL did not stop"
		PG_STARTED=0
		sleep $((RANDOM % 3))
		crashing
		tallyd_kill9_all >/dev/null
		start
		# Keyed requests get 503 until the keys are read back.
		sleep $((1 + RANDOM % 5))
		pg_start >/dev/null ;;
	esac
	crashed
}

stats() { cat "$T/stats" 2>/dev/null; }

# each_node COMMAND...: run COMMAND with each node in use in turn.
each_node() {
	local n
	for n in $(seq 0 $((NODES - 1))); do
		use_node "$n"
		"$@"
	done
}

pg_start
ports=
for n in $(seq 0 $((NODES - 1))); do
	node_conf "$n"
	ports=$ports${ports:+,}${NPORT[$n]}
done
each_node start

python3 "$SELF_DIR/soak.py" load "$ports" "$T" "$CONNS" &
LOADPID=$!
BGPIDS+=("$LOADPID")
END=$((SECONDS + DURATION))
while [ $SECONDS -lt "$END" ]; do
	# Now and then two faults close together, the second on a tallyd
	# just started.
	sleep "$((RANDOM % 7)).$((RANDOM % 10))"
	pid_alive "$LOADPID" || die "the clients died"
	fault
	[ $((FAULTS % 20)) = 0 ] && note "$FAULTS faults; $(stats)"
done
sleep 2
remember_all_pids

touch "$T/stop"
wait "$LOADPID" || die "the clients failed"
BGPIDS=()
note "clients done: $(stats)"

final_stop() {
	local st=0
	tallyctl flush >/dev/null ||
	    violation "node soak$CUR: tallyctl flush failed"
	count_dups
	stop_wait "node soak$CUR: final stop" TERM
	tallyctl journal verify >"$T/verify.out" 2>&1 || st=$?
	if [ "$st" != 0 ]; then
		violation "node soak$CUR: journal verify: exit $st"
		sed 's/^/#   /' "$T/verify.out"
	fi
}
each_node final_stop

left=
for id in $PIDS_SEEN; do
	p=${id%%:*}
	pid_alive "$p" && [ "$(started "$p")" = "${id#*:}" ] && left="$left $p"
done
[ -z "$left" ] || violation "tallyd processes left:$left"

# Totals from each node restarted, every node's increments in
# PostgreSQL by then; then stopped again.
gets=()
node_totals() {
	local i k
	start
	: >"$T/get.soak$CUR.tab"
	for i in $(seq 0 $((KEYS / 2 - 1))); do
		for k in "i-$i" "n-$i"; do
			printf '%s\t%s\n' "$k" "$(total "$k")" \
			    >>"$T/get.soak$CUR.tab"
		done
	done
	gets+=("$T/get.soak$CUR.tab")
	remember_pids
	stop_wait "node soak$CUR: stop after the GETs" TERM
}
each_node node_totals

psql "$DSN" -XAtq -F "$(printf '\t')" \
    -c "select key, value from tally_counters" >"$T/pg.tab" ||
    die "cannot read tally_counters"
rejected=$(pg_sql "select count(*) from tally_rejected")
[ "$rejected" = 0 ] || violation "tally_rejected has $rejected rows"
idemrows=$(pg_sql "select count(*) from tally_idempotency")
# The total each key was first answered with, unless a start could not
# take back every key of the journal (logged), or its worker died before
# answering it and a flush came before the next worker settled it (the
# logs count those keys): at most that many.
nototal=$(pg_sql "select count(*) from tally_idempotency where total is null")
orphans=$(cat "$T"/tallyd.*.log | sed -n \
    's/.*settled the Idempotency-Keys worker [0-9]* left in flight: \([0-9]*\) in the journal.*/\1/p' |
    awk '{ n += $1 } END { print n + 0 }')
if [ "$nototal" -gt "$orphans" ] &&
    ! grep -q "keys from there on are not restored" "$T"/tallyd.*.log; then
	violation "tally_idempotency has $nototal rows without their total" \
	    "(at most $orphans keys of dead workers may be)"
fi

python3 "$SELF_DIR/soak.py" check "$T/ledger.json" "$T/pg.tab" \
    "$idemrows" "${gets[@]}" >"$T/check.out"
sed 's/^/# /' "$T/check.out"
n=$(sed -n 's/^keys [0-9]* violations \([0-9]*\) .*/\1/p' "$T/check.out")
anomalies=$(sed -n 's/.* anomalies \([0-9]*\)$/\1/p' "$T/check.out")
[ -n "$n" ] || die "the check did not finish"
if [ "$n" != 0 ]; then
	violation "$n violations in the totals (above)"
	VIOLATIONS=$((VIOLATIONS + n - 1))
fi
keys=$(sed -n 's/^keys \([0-9]*\) .*/\1/p' "$T/check.out")

# Deaths the faults did not cause: the master logs every child's death;
# SIGKILL is ours, anything else is a crash.
crashes=$(cat "$T"/tallyd.*.log |
    grep -E 'killed by signal|exited with code|fatal|AddressSanitizer|runtime error' |
    grep -v 'killed by signal 9 ')
if [ -n "$crashes" ]; then
	violation "crashes in the logs"
	printf '%s\n' "$crashes" | sed 's/^/#   /'
fi
san_reports || VIOLATIONS=$((VIOLATIONS + 1))

read -r acked replays rebased < <(python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))["stats"]
print(s["acked"], s["replays_checked"], s["replays_rebased"])' \
    "$T/ledger.json")
echo "soak: $NODES node(s), $FAULTS faults, $acked requests acknowledged, $replays replays checked ($rebased of them across a crash, within its give or take), $keys keys checked, $VIOLATIONS violations, $anomalies anomalies, $DUPS or more keyed increments left out at flush"
[ "$VIOLATIONS" = 0 ]
