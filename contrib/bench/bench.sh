#!/bin/bash
#
# bench.sh: tallyd against h2o-null, the do-nothing libh2o server that is
# the ceiling of tallyd's HTTP stack, under the same wrk load.
#
# For each workload (random keys, one hot key) it runs ROUNDS alternating
# rounds (tallyd, h2o-null, tallyd, h2o-null, ...), each against a freshly
# started server with WORKERS workers, and prints a Markdown table of the
# medians.  tallyd runs with a temporary configuration and state directory
# and a private PostgreSQL (initdb'ed here, Unix socket only); everything
# lives in one temporary directory that is removed at exit.  Nothing is
# built: point TALLYD and NULLSRV at binaries (make builds both).
#
# Usage: contrib/bench/bench.sh [-h]
# Environment (defaults):
#	TALLYD=./src/tallyd  NULLSRV=./contrib/bench/h2o-null
#	WORKERS=2  ROUNDS=3  DURATION=10s  CONNS=128  THREADS=1
#	WORKLOADS="random hot"  SYSTEMS="tallyd h2o-null"  SYNC=group
#	PG_BINDIR=(pg_config --bindir, else the newest /usr/lib/postgresql/*/bin)
# A system whose binary is missing is skipped and marked so in the table.
#
set -u

TALLYD=${TALLYD:-./src/tallyd}
NULLSRV=${NULLSRV:-./contrib/bench/h2o-null}
WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-128}
THREADS=${THREADS:-1}
WORKLOADS=${WORKLOADS:-random hot}
SYSTEMS=${SYSTEMS:-tallyd h2o-null}
SYNC=${SYNC:-group}	# tallyd's journal.sync: group or interval

here=$(cd "$(dirname "$0")" && pwd)

usage() {
	sed -n '3,21p' "$0" | sed 's/^# \{0,1\}//'
	exit "${1:-2}"
}

case "${1:-}" in
-h|--help) usage 0 ;;
"") ;;
*) usage 2 ;;
esac

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# ---- tools -----------------------------------------------------------------

if ! command -v wrk >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		say "installing wrk"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null ||
		    die "cannot install wrk"
	else
		die "wrk not found (apt-get install wrk)"
	fi
fi
command -v curl >/dev/null 2>&1 || die "curl not found"

# Resolve binaries to absolute paths; a missing one drops its system.
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
TALLYD=$(abspath "$TALLYD")
NULLSRV=$(abspath "$NULLSRV")
run_systems=
for s in $SYSTEMS; do
	case $s in
	tallyd) bin=$TALLYD ;;
	h2o-null) bin=$NULLSRV ;;
	*) die "unknown system '$s'" ;;
	esac
	if [ -x "$bin" ]; then
		run_systems="$run_systems $s"
	else
		say "$s: $bin is not an executable: skipped"
	fi
done
[ -n "$run_systems" ] || die "nothing to run"

# ---- temporary directory and cleanup ---------------------------------------

tmp=$(mktemp -d /tmp/tallyd-bench.XXXXXX) || die "mktemp failed"
chmod 755 "$tmp"
server_pid=
wrk_pid=
pg_started=

as_pg() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

stop_pid() {
	# SIGTERM, then SIGKILL after 30 s; waits so the port is free after.
	local pid=$1 i=0
	kill -TERM "$pid" 2>/dev/null || return 0
	while kill -0 "$pid" 2>/dev/null && [ $i -lt 300 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if kill -0 "$pid" 2>/dev/null; then
		say "pid $pid ignored SIGTERM for 30 s: SIGKILL"
		kill -KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null
}

cleanup() {
	trap - EXIT INT TERM
	[ -n "$wrk_pid" ] && kill -TERM "$wrk_pid" 2>/dev/null
	[ -n "$server_pid" ] && stop_pid "$server_pid"
	if [ -n "$pg_started" ]; then
		as_pg "$PG_BINDIR/pg_ctl" -D "$tmp/pg" -m fast -w stop \
		    >/dev/null 2>&1
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers ---------------------------------------------------------------

# A port nothing listens on.  Random, so that runs do not collide.
free_port() {
	local p i
	for i in $(seq 1 100); do
		p=$((20000 + RANDOM % 40000))
		if ! ss -Htln "sport = :$p" 2>/dev/null | grep -q .; then
			echo "$p"
			return 0
		fi
	done
	die "no free port found"
}

# Wait until URL answers EXPECT (a status code), while PID lives.
wait_http() {
	local url=$1 expect=$2 pid=$3 i=0 code
	while [ $i -lt 300 ]; do
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url")
		[ "$code" = "$expect" ] && return 0
		kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

start_postgres() {
	[ -n "$pg_started" ] && return 0
	if [ -z "${PG_BINDIR:-}" ]; then
		PG_BINDIR=$(pg_config --bindir 2>/dev/null)
		[ -x "$PG_BINDIR/initdb" ] ||
		    PG_BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null |
		    sort -V | tail -n 1)
	fi
	[ -x "$PG_BINDIR/initdb" ] || die "initdb not found (set PG_BINDIR)"
	mkdir -p "$tmp/pg" "$tmp/pgsock"
	[ "$(id -u)" = 0 ] && chown postgres "$tmp/pg" "$tmp/pgsock"
	as_pg "$PG_BINDIR/initdb" -D "$tmp/pg" -A trust -U postgres \
	    >"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; die "initdb failed"; }
	pg_port=$(free_port) || exit 1
	as_pg "$PG_BINDIR/pg_ctl" -D "$tmp/pg" -l "$tmp/pgsock/postgres.log" -w \
	    -o "-k $tmp/pgsock -p $pg_port -c listen_addresses=''" start \
	    >/dev/null 2>&1 || { cat "$tmp/pgsock/postgres.log" >&2; die "PostgreSQL did not start"; }
	pg_started=1
	say "PostgreSQL on $tmp/pgsock port $pg_port"
}

# Start SYSTEM on a fresh port; sets server_pid and server_port.
start_server() {
	local system=$1
	server_port=$(free_port) || exit 1
	case $system in
	tallyd)
		start_postgres
		rm -rf "$tmp/state"
		mkdir -p "$tmp/state"
		cat >"$tmp/tallyd.conf" <<-EOF
		[server]
		listen = 127.0.0.1:$server_port
		workers = $WORKERS
		state_dir = $tmp/state
		pid_file = $tmp/tallyd.pid
		control_socket = $tmp/tallyd.sock
		[journal]
		sync = $SYNC
		[postgres]
		dsn = host=$tmp/pgsock port=$pg_port user=postgres dbname=postgres
		EOF
		"$TALLYD" -f -c "$tmp/tallyd.conf" >"$tmp/server.log" 2>&1 &
		server_pid=$!
		wait_http "http://127.0.0.1:$server_port/healthz" 200 "$server_pid"
		;;
	h2o-null)
		"$NULLSRV" -a 127.0.0.1 -p "$server_port" -w "$WORKERS" \
		    >"$tmp/server.log" 2>&1 &
		server_pid=$!
		wait_http "http://127.0.0.1:$server_port/" 202 "$server_pid"
		;;
	esac || {
		tail -n 20 "$tmp/server.log" >&2
		die "$system did not come up"
	}
}

# wrk in the background, so that a signal to us is handled at once;
# its output is left in $tmp/wrk.out.
run_wrk() {
	wrk "$@" >"$tmp/wrk.out" 2>&1 </dev/null &
	wrk_pid=$!
	wait "$wrk_pid"
	wrk_pid=
}

stop_server() {
	stop_pid "$server_pid"
	server_pid=
}

# wrk's latency to milliseconds: 850.00us, 1.60ms, 1.02s, 2.00m.
to_ms() {
	awk -v v="$1" 'BEGIN {
		n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
		if (u == "us") n /= 1000; else if (u == "s") n *= 1000;
		else if (u == "m") n *= 60000;
		printf "%.2f", n }'
}

median() {
	tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 }
	    END { if (NR == 0) { print "-"; exit }
		  if (NR % 2) m = v[(NR + 1) / 2];
		  else m = (v[NR / 2] + v[NR / 2 + 1]) / 2;
		  printf "%.2f", m }'
}

# ---- the runs --------------------------------------------------------------

# The load average tells a reader how crowded the machine was.
loadavg() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown; }

declare -A RPS P50 P99 BAD
load_before=$(loadavg)
say "workers=$WORKERS rounds=$ROUNDS duration=$DURATION conns=$CONNS threads=$THREADS"
say "load average before: $load_before"
for w in $WORKLOADS; do
	script=$here/post-$w.lua
	[ -f "$script" ] || die "no wrk script $script"
	for r in $(seq 1 "$ROUNDS"); do
		for s in $run_systems; do
			start_server "$s"
			url=http://127.0.0.1:$server_port/increment
			# A short warm-up: connections, page faults, caches.
			run_wrk -t"$THREADS" -c"$CONNS" -d1s -s "$script" \
			    "$url"
			run_wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" \
			    --latency -s "$script" "$url"
			out=$(cat "$tmp/wrk.out")
			stop_server
			rps=$(echo "$out" | awk '/^Requests\/sec:/ { print $2 }')
			p50=$(echo "$out" | awk '$1 == "50%" { print $2 }')
			p99=$(echo "$out" | awk '$1 == "99%" { print $2 }')
			bad=$(echo "$out" | awk '/Non-2xx/ { n += $NF }
			    /Socket errors/ { gsub(/[^0-9 ]/, " "); for (i = 1; i <= NF; i++) n += $i }
			    END { print n + 0 }')
			if [ -z "$rps" ] || [ -z "$p50" ] || [ -z "$p99" ]; then
				echo "$out" >&2
				die "$s/$w round $r: cannot read wrk's output"
			fi
			p50=$(to_ms "$p50")
			p99=$(to_ms "$p99")
			say "$w round $r $s: $rps req/s, p50 ${p50}ms, p99 ${p99}ms, errors $bad"
			RPS[$s,$w]="${RPS[$s,$w]:-} $rps"
			P50[$s,$w]="${P50[$s,$w]:-} $p50"
			P99[$s,$w]="${P99[$s,$w]:-} $p99"
			BAD[$s,$w]=$(( ${BAD[$s,$w]:-0} + bad ))
		done
	done
done

# ---- the table -------------------------------------------------------------

echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION, $WORKERS workers, median of $ROUNDS rounds;"
echo "$(nproc 2>/dev/null || echo '?') CPUs, load average $load_before before, $(loadavg) after."
echo
echo "| system | workload | requests/s | p50 (ms) | p99 (ms) | vs h2o-null | non-2xx + socket errors |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for w in $WORKLOADS; do
	base=$(echo "${RPS[h2o-null,$w]:-}" | median)
	for s in $SYSTEMS; do
		if [ -z "${RPS[$s,$w]:-}" ]; then
			echo "| $s | $w | not run | | | | |"
			continue
		fi
		rps=$(echo "${RPS[$s,$w]}" | median)
		ratio=-
		[ "$base" != "-" ] && ratio=$(awk -v a="$rps" -v b="$base" \
		    'BEGIN { printf "%.2f", a / b }')
		printf '| %s | %s | %.0f | %s | %s | %s | %s |\n' "$s" "$w" \
		    "$rps" "$(echo "${P50[$s,$w]}" | median)" \
		    "$(echo "${P99[$s,$w]}" | median)" "$ratio" \
		    "${BAD[$s,$w]}"
	done
done
