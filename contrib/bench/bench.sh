#!/bin/bash
#
# bench.sh: tallyd against the do-nothing libh2o server (its ceiling),
# nginx, Redis and PostgreSQL on one machine, with the load generators.
#
# Usage: contrib/bench/bench.sh [-h]
#
# Parts (PARTS, default all of them, in this order):
#   compare  every system on every workload it can run, CONNS connections
#   conns    random keys at each of CONN_SWEEP connections
#   workers  random keys with each of WORKER_SWEEP workers
#   backlog  recovery after kill -9 and the flusher's drain rate, with a
#            journal backlog built while PostgreSQL is stopped
#   memory   bytes per counter key and per Idempotency-Key
# Rounds alternate the systems (A B C A B C ...) so drift hits all alike.
# Results go to OUT: results.md (Markdown tables, targets first), bench.png
# and scaling.png (gnuplot), runs.tsv (every run), fsync.tsv (tallyd's
# fsync latency, every tallyd run); results.md is also printed.
#
# Environment (defaults; QUICK=1 changes those marked *):
#   QUICK=0           1: a smoke run of every part (3 to 7 minutes)
#   DURATION=10s*     length of each measured run (wrk -d; s or m)
#   ROUNDS=3*         rounds per system and setting
#   CONNS=128         connections of the compare and workers parts
#   CONN_SWEEP="1 16 64 128 256"*   WORKER_SWEEP="1 2"
#   WORKERS=2         workers of tallyd, h2o-null and nginx
#   FLUSH_INTERVAL=1s tallyd's [postgres] flush_interval: under random keys
#                     PostgreSQL's work grows with distinct keys per flush
#   THREADS=1         load generator threads (wrk -t, pgbench -j)
#   SYSTEMS="tallyd-group tallyd-interval h2o-null nginx redis-always
#            redis-everysec pg-upsert"
#   WORKLOADS="random hot idem mixed"
#   SCALE_SYSTEMS="tallyd-group tallyd-interval h2o-null redis-always
#            pg-upsert"           (conns part)
#   WORKER_SYSTEMS="tallyd-group tallyd-interval h2o-null nginx"
#   BACKLOG=500000*   BACKLOG_KEYS=100000*   increments and distinct keys
#   OUT=./bench-results   PARTS="compare conns workers backlog memory"
#   THP_SHMEM=advise  the kernel's huge page policy for shared memory
#                     during the run (restored at exit), as tallyd(8)
#                     advises; empty: leave the machine's as it is
#   TALLYD, TALLYCTL, NULLSRV (the tree's src/ and contrib/bench/),
#   PG_BINDIR (pg_config --bindir), INSTALL=1 (apt-get what is missing)
#
set -u

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
	q_duration=1s q_rounds=1 q_sweep="1 128" q_backlog=60000 q_bkeys=20000
else
	q_duration=10s q_rounds=3 q_sweep="1 16 64 128 256" q_backlog=500000
	q_bkeys=100000
fi
DURATION=${DURATION:-$q_duration}
ROUNDS=${ROUNDS:-$q_rounds}
CONNS=${CONNS:-128}
CONN_SWEEP=${CONN_SWEEP:-$q_sweep}
WORKER_SWEEP=${WORKER_SWEEP:-1 2}
WORKERS=${WORKERS:-2}
THREADS=${THREADS:-1}
SYSTEMS=${SYSTEMS:-tallyd-group tallyd-interval h2o-null nginx redis-always redis-everysec pg-upsert}
WORKLOADS=${WORKLOADS:-random hot idem mixed}
SCALE_SYSTEMS=${SCALE_SYSTEMS:-tallyd-group tallyd-interval h2o-null redis-always pg-upsert}
WORKER_SYSTEMS=${WORKER_SYSTEMS:-tallyd-group tallyd-interval h2o-null nginx}
BACKLOG=${BACKLOG:-$q_backlog}
BACKLOG_KEYS=${BACKLOG_KEYS:-$q_bkeys}
PARTS=${PARTS:-compare conns workers backlog memory}
OUT=${OUT:-./bench-results}
TALLYD=${TALLYD:-$top/src/tallyd}
TALLYCTL=${TALLYCTL:-$top/src/tallyctl}
NULLSRV=${NULLSRV:-$top/contrib/bench/h2o-null}
INSTALL=${INSTALL:-1}
# Enough Idempotency-Keys for a long idem run on a fast machine.
IDEM_MAX_KEYS=${IDEM_MAX_KEYS:-2000000}
FLUSH_INTERVAL=${FLUSH_INTERVAL:-1s}
THP_SHMEM=${THP_SHMEM-advise}
THP_FILE=/sys/kernel/mm/transparent_hugepage/shmem_enabled

usage() {
	sed -n '3,/^set -u$/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
	exit "${1:-2}"
}

case "${1:-}" in
-h|--help) usage 0 ;;
"") ;;
*) usage 2 ;;
esac

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---- checking the settings -------------------------------------------------

is_uint() { case $1 in ''|*[!0-9]*) return 1 ;; esac; [ "$1" -gt 0 ]; }

# DURATION in seconds: wrk takes "10s" or "2m"; pgbench and the Redis
# request count need a number.
duration_arg=$DURATION
case $DURATION in
*s) dur_s=${DURATION%s} ;;
*m) dur_s=$(( ${DURATION%m} * 60 )) 2>/dev/null ;;
*) dur_s=$DURATION; DURATION=${DURATION}s ;;
esac
is_uint "${dur_s:-}" || die "DURATION '$duration_arg' is not like 10s or 2m"
for v in ROUNDS CONNS WORKERS THREADS BACKLOG BACKLOG_KEYS IDEM_MAX_KEYS; do
	is_uint "${!v}" || die "$v '${!v}' is not a positive integer"
done
for c in $CONN_SWEEP; do is_uint "$c" || die "CONN_SWEEP: '$c'"; done
for w in $WORKER_SWEEP; do is_uint "$w" || die "WORKER_SWEEP: '$w'"; done
[ "$THREADS" -le "$CONNS" ] || die "THREADS ($THREADS) > CONNS ($CONNS)"
for c in $CONN_SWEEP; do
	[ "$THREADS" -le "$c" ] || die "THREADS ($THREADS) > $c in CONN_SWEEP"
done
[ "$BACKLOG" -ge "$BACKLOG_KEYS" ] || die "BACKLOG < BACKLOG_KEYS"

ALL_SYSTEMS="tallyd-group tallyd-interval h2o-null nginx redis-always redis-everysec pg-upsert"
ALL_WORKLOADS="random hot idem mixed"
in_list() { case " $2 " in *" $1 "*) return 0 ;; esac; return 1; }
for s in $SYSTEMS $SCALE_SYSTEMS $WORKER_SYSTEMS; do
	in_list "$s" "$ALL_SYSTEMS" || die "unknown system '$s' ($ALL_SYSTEMS)"
done
for w in $WORKLOADS; do
	in_list "$w" "$ALL_WORKLOADS" || die "unknown workload '$w' ($ALL_WORKLOADS)"
done
for p in $PARTS; do
	in_list "$p" "compare conns workers backlog memory" ||
	    die "unknown part '$p' (compare conns workers backlog memory)"
done
for s in $WORKER_SYSTEMS; do
	case $s in redis-*|pg-*) die "WORKER_SYSTEMS: $s has no workers" ;; esac
done

# Which workloads a system runs: Redis has no request headers and
# redis-benchmark sends one command, so no idem or mixed there.
supports() {
	case $1,$2 in
	redis-*,idem|redis-*,mixed) return 1 ;;
	esac
	return 0
}

# ---- tools -----------------------------------------------------------------

as_root() { [ "$(id -u)" = 0 ]; }

# Packages: wrk, nginx-light, redis-server, redis-tools, gnuplot-nox,
# postgresql (initdb, pgbench), curl, iproute2 (ss).  Installing a server
# package must not start its system service: a policy-rc.d forbids that
# for the install when none is in place.
policy_rc=
install_missing() {
	local missing='' cmd pkg
	for cmd in wrk:wrk nginx:nginx-light redis-server:redis-server \
	    redis-benchmark:redis-tools redis-cli:redis-tools \
	    gnuplot:gnuplot-nox curl:curl ss:iproute2 \
	    runuser:util-linux; do
		pkg=${cmd#*:}
		cmd=${cmd%%:*}
		[ -x "/usr/sbin/$cmd" ] || command -v "$cmd" >/dev/null 2>&1 ||
		    in_list "$pkg" "$missing" || missing="$missing $pkg"
	done
	if [ -z "${PG_BINDIR:-}" ] && ! ls /usr/lib/postgresql/*/bin/pgbench \
	    >/dev/null 2>&1; then
		missing="$missing postgresql"
	fi
	[ -n "$missing" ] || return 0
	[ "$INSTALL" = 1 ] || die "missing packages:$missing (INSTALL=0)"
	as_root && command -v apt-get >/dev/null 2>&1 ||
	    die "missing packages:$missing; install them or run as root"
	say "installing$missing"
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d &&
		    chmod 755 /usr/sbin/policy-rc.d && policy_rc=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    --no-install-recommends $missing >"${tmp:-/tmp}/apt.log" 2>&1 || {
		tail -n 20 "${tmp:-/tmp}/apt.log" >&2
		die "apt-get install$missing failed"
	}
	if [ -n "$policy_rc" ]; then
		rm -f /usr/sbin/policy-rc.d
		policy_rc=
	fi
}

# ---- temporary directory and cleanup ---------------------------------------

tmp=$(mktemp -d /tmp/tallyd-bench.XXXXXX) || die "mktemp failed"
chmod 755 "$tmp"
srv_pid=
srv_kind=
pg_port=
tallyd_dsn=
redis_rate=
pg_rate=
gen_pid=
pg_running=
extra_pids=
thp_saved=	# the huge page policy to put back at exit

as_pg() {
	if as_root; then
		(cd "$tmp" && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

# SIGTERM, then SIGKILL after 30 s; waits so the port is free after.
stop_pid() {
	local pid=$1 i=0
	kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
	while kill -0 "$pid" 2>/dev/null && [ $i -lt 300 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if kill -0 "$pid" 2>/dev/null; then
		say "pid $pid ignored SIGTERM for 30 s: SIGKILL"
		kill -KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null
	return 0
}

pg_stop() {
	[ -n "$pg_running" ] || return 0
	as_pg "$PG_BINDIR/pg_ctl" -D "$tmp/pg" -m fast -w -t 60 stop \
	    >>"$tmp/pg_ctl.log" 2>&1 || say "pg_ctl stop failed"
	pg_running=
}

cleanup() {
	local p
	trap - EXIT INT TERM
	[ -n "$gen_pid" ] && kill -TERM "$gen_pid" 2>/dev/null
	[ -n "$srv_pid" ] && stop_pid "$srv_pid"
	for p in $extra_pids; do
		kill -KILL "$p" 2>/dev/null
	done
	pg_stop
	[ -n "$policy_rc" ] && rm -f /usr/sbin/policy-rc.d
	[ -n "$thp_saved" ] && echo "$thp_saved" >"$THP_FILE"
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

install_missing
command -v gnuplot >/dev/null 2>&1 || die "gnuplot not found"
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
if [ -z "${PG_BINDIR:-}" ]; then
	PG_BINDIR=$(pg_config --bindir 2>/dev/null)
	[ -x "$PG_BINDIR/initdb" ] ||
	    PG_BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null |
	    sort -V | tail -n 1)
fi
for b in initdb pg_ctl pgbench psql; do
	[ -x "$PG_BINDIR/$b" ] || die "$PG_BINDIR/$b not found (set PG_BINDIR)"
done

# The tree's binaries are brought up to date when they are the defaults.
if [ -f "$top/Makefile" ] && [ "$TALLYD" = "$top/src/tallyd" ]; then
	say "make (tallyd, tallyctl, h2o-null)"
	make -C "$top" -s src/tallyd src/tallyctl contrib/bench/h2o-null \
	    >"$tmp/make.log" 2>&1 || { tail -n 30 "$tmp/make.log" >&2;
		die "make failed"; }
fi
for b in "$TALLYD" "$TALLYCTL" "$NULLSRV"; do
	[ -x "$b" ] || die "$b is not an executable (./configure && make first)"
done
# tallyd's tables in 2 MiB pages, as an operator following tallyd(8)
# would have them; under "advise" only memory that asks gets them, and
# no other system here asks.
thp_policy() { sed -n 's/.*\[\([a-z_]*\)\].*/\1/p' "$THP_FILE" 2>/dev/null; }
if [ -n "$THP_SHMEM" ] && [ "$(thp_policy)" != "$THP_SHMEM" ]; then
	thp_old=$(thp_policy)
	[ -n "$thp_old" ] || die "THP_SHMEM: $THP_FILE cannot be read"
	echo "$THP_SHMEM" >"$THP_FILE" 2>/dev/null ||
	    die "THP_SHMEM: cannot write '$THP_SHMEM' to $THP_FILE"
	thp_saved=$thp_old
	say "$THP_FILE: $THP_SHMEM (was $thp_old, restored at exit)"
fi
THP_USED=$(thp_policy)
# tallyd's own check, so that a bad value stops the bench before any run.
printf '[postgres]\nflush_interval = %s\n' "$FLUSH_INTERVAL" >"$tmp/check.conf"
"$TALLYD" -t -c "$tmp/check.conf" >/dev/null || die "FLUSH_INTERVAL '$FLUSH_INTERVAL'"

mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
runs=$OUT/runs.tsv
printf 'part\tsystem\tworkload\tconns\tworkers\tround\trps\tp50_ms\tp99_ms\terrors\tserver_us\tpg_us\tgen_us\tcpus\n' \
    >"$runs" || die "cannot write $runs"
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)
jbytes=$OUT/journal.tsv
printf 'system\tworkload\tround\tincrements\tjournal_bytes\tframes\tfsyncs\n' \
    >"$jbytes"
# Keyed as runs.tsv is, so that the fsync latency of a run can be set
# beside its request latency.
fsyncs=$OUT/fsync.tsv
printf 'part\tsystem\tworkload\tconns\tworkers\tround\tfsyncs\tp50_ms\tp99_ms\n' \
    >"$fsyncs"
: >"$OUT/backlog.txt"
: >"$OUT/memory.txt"

# ---- helpers ---------------------------------------------------------------

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# A port nothing listens on.  Random, so that runs do not collide.
free_port() {
	local p i
	for i in $(seq 1 100); do
		p=$((20000 + RANDOM % 40000))
		if ! ss -Htan "sport = :$p" 2>/dev/null | grep -q .; then
			echo "$p"
			return 0
		fi
	done
	return 1
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

# A number from a JSON text on stdin: jnum NAME.
jnum() { grep -o "\"$1\":[0-9]*" | head -n 1 | cut -d: -f2; }
# A sample of tallyd's /metrics: metric NAME (without tallyd_).
metric() {
	curl -s --max-time 5 "http://127.0.0.1:$srv_port/metrics" |
	    awk -v n="tallyd_$1" '$1 == n { print $2 }'
}
ctl_status() { "$TALLYCTL" -s "$tmp/tallyd.sock" --json status 2>/dev/null; }

# A histogram of tallyd's /metrics: hist_ms NAME (without tallyd_) prints
# its count and its p50 and p99 in ms, "-" for those with no observation.
# As Prometheus' histogram_quantile: the quantile's rank is found in the
# cumulative buckets and placed by linear interpolation inside the bucket
# that holds it (the first one from 0); in the +Inf bucket it is the
# highest finite bound.  The bounds are coarse (1, 2.5, 5, 10 ms ...),
# which the interpolation smooths, not refines.
hist_ms() {
	curl -s --max-time 5 "http://127.0.0.1:$srv_port/metrics" |
	    awk -v n="tallyd_$1" '
	index($1, n "_bucket{le=\"") == 1 {
		le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
		nb++; inf[nb] = (le == "+Inf"); ub[nb] = le + 0; cum[nb] = $2 + 0
	}
	function q(p,    r, i, lo, c0) {
		if (nb == 0 || cum[nb] == 0) return "-"
		r = p * cum[nb]
		lo = 0; c0 = 0
		for (i = 1; i <= nb; i++) {
			if (cum[i] >= r && inf[i])
				return sprintf("%.3f", 1000 * lo)
			if (cum[i] >= r) {
				lo += (ub[i] - lo) * (r - c0) / (cum[i] - c0)
				return sprintf("%.3f", 1000 * lo)
			}
			lo = ub[i]; c0 = cum[i]
		}
		return "-"
	}
	END { printf "%d\t%s\t%s\n", nb ? cum[nb] : 0, q(0.50), q(0.99) }'
}

psql_bench() {
	"$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$tmp/pgsock" \
	    -p "$pg_port" -U postgres "$@"
}

pg_start() {
	[ -n "$pg_running" ] && return 0
	if [ ! -d "$tmp/pg" ]; then
		mkdir -p "$tmp/pg" "$tmp/pgsock"
		as_root && chown postgres "$tmp/pg" "$tmp/pgsock"
		as_pg "$PG_BINDIR/initdb" -D "$tmp/pg" -A trust -U postgres \
		    >"$tmp/initdb.log" 2>&1 ||
		    { cat "$tmp/initdb.log" >&2; die "initdb failed"; }
		pg_port=$(free_port) || die "no free port"
		# Room for 256 pgbench clients; fsync and synchronous_commit
		# keep their defaults (on).
		cat >>"$tmp/pg/postgresql.conf" <<-EOF
		port = $pg_port
		listen_addresses = ''
		unix_socket_directories = '$tmp/pgsock'
		max_connections = 300
		EOF
		fresh=1
	else
		fresh=
	fi
	as_pg "$PG_BINDIR/pg_ctl" -D "$tmp/pg" -l "$tmp/pgsock/postgres.log" \
	    -w -t 120 start >>"$tmp/pg_ctl.log" 2>&1 ||
	    { tail -n 20 "$tmp/pgsock/postgres.log" >&2;
		die "PostgreSQL did not start"; }
	pg_running=1
	if [ -n "$fresh" ]; then
		psql_bench -d postgres -c 'CREATE DATABASE bench' ||
		    die "cannot create the database bench"
		psql_bench -d bench <<-EOF || die "cannot create bench tables"
		CREATE TABLE counters (key text PRIMARY KEY, value bigint NOT NULL);
		CREATE TABLE idem (key text PRIMARY KEY);
		CREATE TABLE drain (key text PRIMARY KEY, value bigint NOT NULL);
		EOF
		say "PostgreSQL on $tmp/pgsock port $pg_port"
	fi
}

# tallyd's configuration for a run: tallyd_conf SYNC WORKERS [COUNTER_KEYS
# IDEM_KEYS]; tallyd_dsn, when set, replaces the private PostgreSQL's.
tallyd_conf() {
	cat >"$tmp/tallyd.conf" <<-EOF
	[server]
	listen = 127.0.0.1:$srv_port
	workers = $2
	state_dir = $tmp/state
	pid_file = $tmp/tallyd.pid
	control_socket = $tmp/tallyd.sock
	[journal]
	sync = $1
	[postgres]
	dsn = ${tallyd_dsn:-host=$tmp/pgsock port=$pg_port user=postgres dbname=postgres}
	flush_interval = $FLUSH_INTERVAL
	[counters]
	max_keys = ${3:-1000000}
	[idempotency]
	max_keys = ${4:-$IDEM_MAX_KEYS}
	EOF
}

# tallyd's tables from earlier runs (thousands of dead rows, millions of
# Idempotency-Keys) would make PostgreSQL's work per flush grow run by run:
# each tallyd run starts from none, and tallyd creates them again.
tallyd_tables_drop() {
	psql_bench -d postgres -c 'SET client_min_messages = warning' \
	    -c 'DROP TABLE IF EXISTS tally_counters, tally_checkpoints,
	    tally_idempotency, tally_rejected' ||
	    die "cannot drop tallyd's tables"
}

start_tallyd() {
	"$TALLYD" -f -c "$tmp/tallyd.conf" >>"$tmp/server.log" 2>&1 &
	srv_pid=$!
	wait_http "http://127.0.0.1:$srv_port/healthz" 200 "$srv_pid"
}

# Start SYSTEM with WORKERS workers on a fresh port; sets srv_pid,
# srv_port and srv_kind (http, redis or pg).
start_system() {
	local system=$1 workers=$2 ok=0
	srv_port=$(free_port) || die "no free port"
	: >"$tmp/server.log"
	case $system in
	tallyd-*)
		pg_start
		tallyd_tables_drop
		srv_kind=http
		rm -rf "$tmp/state"
		tallyd_conf "${system#tallyd-}" "$workers"
		start_tallyd && ok=1
		;;
	h2o-null)
		srv_kind=http
		"$NULLSRV" -a 127.0.0.1 -p "$srv_port" -w "$workers" \
		    >"$tmp/server.log" 2>&1 &
		srv_pid=$!
		wait_http "http://127.0.0.1:$srv_port/" 202 "$srv_pid" && ok=1
		;;
	nginx)
		srv_kind=http
		rm -rf "$tmp/nginx"
		mkdir -p "$tmp/nginx/body" "$tmp/nginx/proxy"
		cat >"$tmp/nginx/nginx.conf" <<-EOF
		worker_processes $workers;
		daemon off;
		master_process on;
		pid $tmp/nginx/nginx.pid;
		error_log $tmp/nginx/error.log warn;
		events { worker_connections 4096; }
		http {
			access_log off;
			client_body_temp_path $tmp/nginx/body;
			proxy_temp_path $tmp/nginx/proxy;
			keepalive_requests 100000000;
			keepalive_timeout 300s;
			default_type application/json;
			server {
				listen 127.0.0.1:$srv_port;
				location / { return 202 '{"key":"k","value":1}'; }
			}
		}
		EOF
		"$NGINX" -p "$tmp/nginx" -e "$tmp/nginx/error.log" \
		    -c "$tmp/nginx/nginx.conf" >"$tmp/server.log" 2>&1 &
		srv_pid=$!
		wait_http "http://127.0.0.1:$srv_port/" 202 "$srv_pid" && ok=1
		;;
	redis-*)
		srv_kind=redis
		rm -rf "$tmp/redis"
		mkdir -p "$tmp/redis"
		redis-server --port "$srv_port" --bind 127.0.0.1 \
		    --dir "$tmp/redis" --save '' --appendonly yes \
		    --appendfsync "${system#redis-}" --daemonize no \
		    --logfile "$tmp/server.log" >/dev/null 2>&1 &
		srv_pid=$!
		local i=0
		while [ $i -lt 100 ] && kill -0 "$srv_pid" 2>/dev/null; do
			if [ "$(redis-cli -p "$srv_port" ping 2>/dev/null)" = PONG ]
			then
				ok=1
				break
			fi
			sleep 0.1
			i=$((i + 1))
		done
		;;
	pg-upsert)
		pg_start
		srv_kind=pg
		srv_pid=
		psql_bench -d bench -c 'TRUNCATE idem' && ok=1
		;;
	esac
	if [ $ok != 1 ]; then
		tail -n 20 "$tmp/server.log" >&2
		die "$system did not come up"
	fi
	return 0
}

stop_system() {
	[ -n "$srv_pid" ] && stop_pid "$srv_pid"
	srv_pid=
}

# A load generator in the background, so that a signal to us is handled
# at once; its output is left in $tmp/gen.out, the CPU time it took (clock
# ticks) in gen_ticks.  Fails as it does.
gen() {
	local rc t0
	reaped_ticks
	t0=$reaped
	"$@" >"$tmp/gen.out" 2>&1 </dev/null &
	gen_pid=$!
	wait "$gen_pid"
	rc=$?
	gen_pid=
	reaped_ticks
	gen_ticks=$((reaped - t0))
	return $rc
}

# The CPU time (clock ticks) of this shell's reaped children, in reaped:
# the load generator is the only one reaped between two readings around
# it.  Read by this shell itself, not a subshell, whose children differ.
reaped_ticks() {
	local stat
	read -r stat <"/proc/$BASHPID/stat"
	# shellcheck disable=SC2086
	set -- ${stat##*) }
	reaped=$(( ${14:-0} + ${15:-0} ))
}

# The CPU time (clock ticks) PID and its descendants have taken so far:
# its own and its reaped children's, and each live descendant's own.  A
# descendant gone between two readings is in its parent's reaped time by
# the second.  0 for no PID.
tree_ticks() {
	[ -n "$1" ] || { echo 0; return; }
	cat /proc/[0-9]*/stat 2>/dev/null | awk -v root="$1" '
	{ pid = $1; sub(/^.*\) /, ""); pp[pid] = $2; own[pid] = $12 + $13
	  reaped[pid] = $14 + $15 }
	END {
		if (!(root in pp)) { print 0; exit }
		in_tree[root] = 1; t = own[root] + reaped[root]
		do {
			more = 0
			for (p in pp)
				if (!(p in in_tree) && (pp[p] in in_tree)) {
					in_tree[p] = 1; t += own[p]; more = 1
				}
		} while (more)
		print t
	}'
}

pg_postmaster() {
	[ -n "$pg_running" ] && head -n 1 "$tmp/pg/postmaster.pid" 2>/dev/null
}

# wrk's latency to milliseconds: 850.00us, 1.60ms, 1.02s, 2.00m.
to_ms() {
	awk -v v="$1" 'BEGIN {
		n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
		if (u == "us") n /= 1000; else if (u == "s") n *= 1000;
		else if (u == "m") n *= 60000;
		printf "%.3f", n }'
}

# Percentiles 50 and 99 (ms) of pgbench's per-transaction logs.
pgbench_pcts() {
	cat "$tmp"/pgblog/log* 2>/dev/null | awk '{ print $3 / 1000 }' |
	    sort -g | awk '{ v[NR] = $1 }
	    END { if (NR == 0) exit 1
		  i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
		  i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
		  printf "%.3f %.3f\n", v[i50], v[i99] }'
}

# The pgbench scripts: the naive strategy, one upsert per increment in its
# own transaction, on a random key out of 100000 or one hot key; with a
# unique idempotency row inserted in the same statement; a 10% read mix.
write_pg_scripts() {
	cat >"$tmp/pg-random.sql" <<-'EOF'
	\set k random(0, 99999)
	INSERT INTO counters (key, value) VALUES ('k' || :k, 1) ON CONFLICT (key) DO UPDATE SET value = counters.value + EXCLUDED.value;
	EOF
	cat >"$tmp/pg-hot.sql" <<-'EOF'
	INSERT INTO counters (key, value) VALUES ('hot', 1) ON CONFLICT (key) DO UPDATE SET value = counters.value + EXCLUDED.value;
	EOF
	cat >"$tmp/pg-idem.sql" <<-'EOF'
	\set k random(0, 99999)
	\set id random(0, 9000000000000000000)
	WITH i AS (INSERT INTO idem (key) VALUES (:client_id || '-' || :id) ON CONFLICT DO NOTHING RETURNING 1) INSERT INTO counters (key, value) SELECT 'k' || :k, 1 FROM i ON CONFLICT (key) DO UPDATE SET value = counters.value + EXCLUDED.value;
	EOF
	cat >"$tmp/pg-get.sql" <<-'EOF'
	\set k random(0, 99999)
	SELECT value FROM counters WHERE key = 'k' || :k;
	EOF
}

# Run the load of WORKLOAD against the running system with CONNS
# connections for SECS seconds (0: a short warm-up); sets rps p50 p99 bad
# and nreq (the requests made).
load() {
	local system=$1 workload=$2 conns=$3 secs=$4 out cmd n
	rps='' p50='' p99='' bad=0 nreq=0
	case $srv_kind in
	http)
		local d=${secs}s
		[ "$secs" = 0 ] && d=1s
		gen wrk -t"$THREADS" -c"$conns" -d"$d" --latency \
		    -s "$here/post-$workload.lua" \
		    "http://127.0.0.1:$srv_port/increment" ||
		    { cat "$tmp/gen.out" >&2; die "wrk failed"; }
		out=$(cat "$tmp/gen.out")
		# wrk reports a script error and goes on without the script.
		if echo "$out" | grep -q '\.lua:'; then
			echo "$out" >&2
			die "wrk: error in post-$workload.lua"
		fi
		rps=$(echo "$out" | awk '/^Requests\/sec:/ { print $2 }')
		nreq=$(echo "$out" | awk '/ requests in / { print $1 }')
		p50=$(echo "$out" | awk '$1 == "50%" { print $2 }')
		p99=$(echo "$out" | awk '$1 == "99%" { print $2 }')
		bad=$(echo "$out" | awk '/Non-2xx/ { n += $NF }
		    /Socket errors/ { gsub(/[^0-9 ]/, " ")
			for (i = 1; i <= NF; i++) n += $i }
		    END { print n + 0 }')
		[ -n "$p50" ] && p50=$(to_ms "$p50")
		[ -n "$p99" ] && p99=$(to_ms "$p99")
		;;
	redis)
		case $workload in
		random) cmd="-r 100000 INCRBY key:__rand_int__ 1" ;;
		hot) cmd="INCRBY hot 1" ;;
		esac
		# redis-benchmark counts requests: the warm-up measures the
		# rate, the run sends what that rate makes in SECS seconds.
		if [ "$secs" = 0 ]; then
			n=20000
		else
			n=$(awk -v r="${redis_rate:-20000}" -v s="$secs" \
			    'BEGIN { n = int(r * s); print (n < 2000) ? 2000 : n }')
		fi
		# shellcheck disable=SC2086
		gen redis-benchmark -h 127.0.0.1 -p "$srv_port" -c "$conns" \
		    -n "$n" -P 1 --threads "$THREADS" --csv $cmd ||
		    { cat "$tmp/gen.out" >&2; die "redis-benchmark failed"; }
		out=$(tr -d '"\r' <"$tmp/gen.out" | grep -i '^INCRBY' | tail -n 1)
		rps=$(echo "$out" | awk -F, '{ print $2 }')
		p50=$(echo "$out" | awk -F, '{ print $5 }')
		p99=$(echo "$out" | awk -F, '{ print $7 }')
		bad=$(grep -ci 'error' "$tmp/gen.out")
		nreq=$n
		[ "$secs" = 0 ] && redis_rate=$rps
		;;
	pg)
		local files="-f $tmp/pg-$workload.sql" t
		[ "$workload" = mixed ] &&
		    files="-f $tmp/pg-random.sql@9 -f $tmp/pg-get.sql@1"
		# pgbench's -T clock runs while its clients connect, which takes
		# seconds for hundreds of them on a busy machine: count
		# transactions instead.  The warm-up measures the rate, the run
		# does what that rate makes in SECS seconds.
		if [ "$secs" = 0 ]; then
			t=20
			[ "$QUICK" = 1 ] && t=5
		else
			t=$(awk -v r="${pg_rate:-1000}" -v s="$secs" -v c="$conns" \
			    'BEGIN { n = int(r * s / c); print (n < 5) ? 5 : n }')
		fi
		rm -rf "$tmp/pgblog"
		mkdir -p "$tmp/pgblog"
		# shellcheck disable=SC2086
		gen "$PG_BINDIR/pgbench" -n -M prepared -h "$tmp/pgsock" \
		    -p "$pg_port" -U postgres -c "$conns" -j "$THREADS" \
		    -t "$t" -l --log-prefix="$tmp/pgblog/log" $files bench ||
		    { tail -n 20 "$tmp/gen.out" >&2; die "pgbench failed"; }
		rps=$(awk '/^tps = / { print $3 }' "$tmp/gen.out" | tail -n 1)
		nreq=$(awk '/^number of transactions actually processed:/ {
		    sub(/\/.*/, "", $NF); print $NF }' "$tmp/gen.out")
		bad=$(awk '/^number of failed transactions:/ { print $5; exit }' \
		    "$tmp/gen.out")
		bad=${bad:-0}
		# shellcheck disable=SC2046
		set -- $(pgbench_pcts) "" ""
		p50=$1 p99=$2
		[ "$secs" = 0 ] && pg_rate=$rps
		;;
	esac
	if [ -z "$rps" ] || [ -z "$p50" ] || [ -z "$p99" ]; then
		cat "$tmp/gen.out" >&2
		die "$system/$workload: cannot read the load generator's output"
	fi
	return 0
}

# One measured run: fresh server, warm-up, run, stop; appends to runs.tsv.
# measure PART SYSTEM WORKLOAD CONNS WORKERS ROUND
measure() {
	local part=$1 system=$2 workload=$3 conns=$4 workers=$5 round=$6
	local inc jb fr fs hist pgm s0 s1 p0 p1 t0 t1 cpu
	start_system "$system" "$workers"
	redis_rate=
	pg_rate=
	if [ "$QUICK" != 1 ] || [ "$srv_kind" != http ]; then
		load "$system" "$workload" "$conns" 0
	fi
	pgm=$(pg_postmaster)
	s0=$(tree_ticks "$srv_pid")
	p0=$(tree_ticks "$pgm")
	t0=$(now)
	load "$system" "$workload" "$conns" "$dur_s"
	t1=$(now)
	s1=$(tree_ticks "$srv_pid")
	p1=$(tree_ticks "$pgm")
	# CPU microseconds per request: the server (PostgreSQL itself for
	# pg-upsert), PostgreSQL (tallyd's flushes), the load generator; and
	# the CPUs all three kept busy over the run's wall-clock time.
	cpu=$(awk -v s="$((s1 - s0))" -v p="$((p1 - p0))" -v g="$gen_ticks" \
	    -v hz="$clk_tck" -v n="${nreq:-0}" -v k="$srv_kind" \
	    -v t="$(elapsed "$t0" "$t1")" '
	    BEGIN { if (n <= 0) n = 1; f = 1e6 / hz / n
		if (k == "pg") { s = p; p = 0 }
		printf "%.2f\t%.2f\t%.2f\t%.2f", s * f, p * f, g * f,
		    (t > 0) ? (s + p + g) / hz / t : 0 }')
	if [ "${system%%-*}" = tallyd ]; then
		inc=$(metric increments_total)
		jb=$(metric journal_bytes_total)
		fr=$(metric journal_frames_total)
		fs=$(metric journal_fsyncs_total)
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$system" "$workload" \
		    "$round" "${inc:-0}" "${jb:-0}" "${fr:-0}" "${fs:-0}" \
		    >>"$jbytes"
		hist=$(hist_ms journal_fsync_duration_seconds)
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$part" "$system" \
		    "$workload" "$conns" "$workers" "$round" "$hist" >>"$fsyncs"
		# Answers by route and status, for a run with errors.
		curl -s --max-time 5 "http://127.0.0.1:$srv_port/metrics" |
		    grep '^tallyd_http_requests_total' >"$tmp/answers.txt" || true
	else
		rm -f "$tmp/answers.txt"
	fi
	stop_system
	# Whatever PostgreSQL still has to write for this run, it writes now,
	# not during the next system's run.
	case $system in
	tallyd-*|pg-*) psql_bench -d postgres -c CHECKPOINT ||
		die "CHECKPOINT failed" ;;
	esac
	[ "$workers" = - ] || [ "$srv_kind" = http ] || workers=-
	# A run with errors keeps what says which: the load generator's
	# report (wrk splits non-2xx answers from socket errors and
	# timeouts), the server's log, and tallyd's answers by status
	# (warm-up included).
	if [ "${bad:-0}" != 0 ]; then
		local e="$OUT/errors/$part-$system-$workload-c$conns-w$workers-r$round"
		mkdir -p "$OUT/errors" &&
		    cp "$tmp/gen.out" "$e.gen.txt" &&
		    cp "$tmp/server.log" "$e.server.log" 2>/dev/null
		if [ -f "$tmp/answers.txt" ]; then
			cp "$tmp/answers.txt" "$e.answers.txt"
		fi
	fi
	say "$part $system $workload c=$conns w=$workers round $round:" \
	    "$rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors $bad"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$part" \
	    "$system" "$workload" "$conns" "$workers" "$round" "$rps" "$p50" \
	    "$p99" "$bad" "$cpu" >>"$runs"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown; }

# ---- part: compare ---------------------------------------------------------

part_compare() {
	local w r s
	for w in $WORKLOADS; do
		for r in $(seq 1 "$ROUNDS"); do
			for s in $SYSTEMS; do
				supports "$s" "$w" || continue
				measure compare "$s" "$w" "$CONNS" "$WORKERS" "$r"
			done
		done
	done
}

# ---- part: conns and workers -----------------------------------------------

part_conns() {
	local c r s
	for c in $CONN_SWEEP; do
		for r in $(seq 1 "$ROUNDS"); do
			for s in $SCALE_SYSTEMS; do
				measure conns "$s" random "$c" "$WORKERS" "$r"
			done
		done
	done
}

part_workers() {
	local n r s
	for n in $WORKER_SWEEP; do
		for r in $(seq 1 "$ROUNDS"); do
			for s in $WORKER_SYSTEMS; do
				measure workers "$s" random "$CONNS" "$n" "$r"
			done
		done
	done
}

# ---- part: backlog (recovery and drain) ------------------------------------

# Every pid of the running tallyd: the master and its children.
tallyd_pids() {
	echo "$srv_pid"
	ctl_status | grep -o '"pid":[0-9]*' | cut -d: -f2
}

# Wait until tallyd's flusher is connected to PostgreSQL.
tallyd_wait_pg() {
	local i=0
	until ctl_status | grep -q '"up":true'; do
		i=$((i + 1))
		[ $i -lt 300 ] || die "tallyd's flusher did not reach PostgreSQL"
		sleep 0.1
	done
}

part_backlog() {
	local st inc keys i t0 t1 t2 t_up ck0 target ck line rows0 rows
	local recs secs wall pids p empty_s
	pg_start
	tallyd_tables_drop
	srv_port=$(free_port) || die "no free port"
	rm -rf "$tmp/state"
	: >"$tmp/server.log"
	# interval: the backlog builds faster; the drain does not depend on it.
	tallyd_conf interval "$WORKERS"
	start_tallyd || { tail -n 20 "$tmp/server.log" >&2;
		die "tallyd did not come up"; }
	tallyd_wait_pg
	# What a restart costs with nothing to replay (finding the end of the
	# preallocated segment): stop, start again, read the log.
	stop_system
	: >"$tmp/server.log"
	start_tallyd || { tail -n 20 "$tmp/server.log" >&2;
		die "tallyd did not restart"; }
	empty_s=$(grep -o 'replayed 0 records in .* in [0-9.]* s;' \
	    "$tmp/server.log" | head -n 1 | awk '{ print $(NF - 1) }')
	tallyd_wait_pg
	say "backlog: PostgreSQL stopped; building $BACKLOG increments" \
	    "over $BACKLOG_KEYS keys"
	pg_stop
	i=0
	while :; do
		BENCH_KEYS=$BACKLOG_KEYS gen wrk -t1 -c64 -d2s \
		    -s "$here/post-seq.lua" \
		    "http://127.0.0.1:$srv_port/increment" ||
		    { cat "$tmp/gen.out" >&2; die "wrk failed"; }
		inc=$(metric increments_total)
		keys=$(ctl_status | sed 's/.*"counters":{//' | jnum keys)
		[ "${inc:-0}" -ge "$BACKLOG" ] &&
		    [ "${keys:-0}" -ge "$BACKLOG_KEYS" ] && break
		i=$((i + 1))
		[ $i -lt 300 ] || die "backlog: only ${inc:-0} increments," \
		    "${keys:-0} keys after 600 s"
	done
	st=$(ctl_status)
	say "backlog: $inc increments, $keys keys," \
	    "$(echo "$st" | jnum backlog_bytes) journal bytes unflushed"

	# Recovery: kill -9 every process, restart with PostgreSQL down.
	sleep 1.5	# sync_interval: the kill is not a power loss
	pids=$(tallyd_pids)
	for p in $pids; do
		kill -KILL "$p" 2>/dev/null
	done
	wait "$srv_pid" 2>/dev/null
	srv_pid=
	for p in $pids; do
		i=0
		while kill -0 "$p" 2>/dev/null && [ $i -lt 100 ]; do
			sleep 0.1
			i=$((i + 1))
		done
	done
	: >"$tmp/server.log"
	t0=$(now)
	start_tallyd || { tail -n 20 "$tmp/server.log" >&2;
		die "tallyd did not restart"; }
	t1=$(now)
	line=$(grep -o 'replayed [0-9]* records in [0-9]* frames .*' \
	    "$tmp/server.log" | head -n 1)
	[ -n "$line" ] || { cat "$tmp/server.log" >&2;
		die "no 'replayed' line in tallyd's log"; }
	recs=$(echo "$line" | awk '{ print $2 }')
	secs=$(echo "$line" | awk '{ for (i = 1; i < NF; i++)
	    if ($(i + 1) == "s;") print $i }')
	wall=$(elapsed "$t0" "$t1")
	say "recovery: $line (restart to healthz $wall s)"

	# Drain: start PostgreSQL, time the checkpoint up to the written LSN,
	# from PostgreSQL ready (the flusher may be in its back-off then) and
	# from the flusher's pg_up (set once it has checked the schema and
	# re-read the held keys' committed values).
	st=$(ctl_status)
	target=$(echo "$st" | jnum written_lsn)
	ck0=$(echo "$st" | jnum checkpoint_lsn)
	rows0=$(metric rows_upserted_total)
	pg_start
	t0=$(now)
	# Done when the checkpoint reaches the written LSN, or (a frame that
	# ended a segment: the checkpoint may stay short of the next segment's
	# start) when it has not moved for a second and tallyctl flush agrees.
	t_up='' ck_prev=$ck0 t_moved=$t0 still=0
	i=0
	while :; do
		st=$(ctl_status)
		ck=$(echo "$st" | jnum checkpoint_lsn)
		if [ -z "$t_up" ] && echo "$st" | grep -q '"up":true'; then
			t_up=$(now)
		fi
		[ "${ck:-0}" -ge "$target" ] && { t_moved=$(now); break; }
		if [ "${ck:-0}" != "$ck_prev" ]; then
			ck_prev=$ck t_moved=$(now) still=0
		elif [ "$ck" != "$ck0" ]; then
			still=$((still + 1))
			[ $still -ge 20 ] && "$TALLYCTL" -s "$tmp/tallyd.sock" \
			    flush >/dev/null 2>&1 && break
		fi
		i=$((i + 1))
		[ $i -lt 12000 ] || die "drain: checkpoint $ck < $target after 600 s"
		sleep 0.05
	done
	t2=$t_moved
	[ -n "$t_up" ] || t_up=$t0
	rows=$(( $(metric rows_upserted_total) - ${rows0:-0} ))
	stop_system

	# PostgreSQL's own batched upsert rate, batches of 1000 rows, each in
	# its own transaction, over the same number of keys: once into an
	# empty table, once more over the same keys.
	local b sql_t0 sql_t1 sql_t2
	: >"$tmp/drain.sql"
	for b in $(seq 0 1000 $((BACKLOG_KEYS - 1))); do
		echo "INSERT INTO drain (key, value) SELECT 'k' || g, 1 FROM generate_series($b, $((b + 999))) g ON CONFLICT (key) DO UPDATE SET value = drain.value + EXCLUDED.value;" >>"$tmp/drain.sql"
	done
	psql_bench -d bench -c 'TRUNCATE drain' || die "psql failed"
	sql_t0=$(now)
	psql_bench -d bench -f "$tmp/drain.sql" || die "psql failed"
	sql_t1=$(now)
	psql_bench -d bench -f "$tmp/drain.sql" || die "psql failed"
	sql_t2=$(now)
	local nrows=$(( ( (BACKLOG_KEYS + 999) / 1000 ) * 1000 ))

	{
		echo "inc=$inc"
		echo "keys=$keys"
		echo "journal_bytes=$((target - ck0))"
		echo "recovery_records=$recs"
		echo "recovery_s=$secs"
		echo "recovery_wall_s=$wall"
		echo "recovery_empty_s=${empty_s:--}"
		echo "drain_rows=$rows"
		echo "drain_from_pg_ready_s=$(elapsed "$t0" "$t2")"
		echo "drain_from_connect_s=$(elapsed "$t_up" "$t2")"
		echo "pg_batch_rows=$nrows"
		echo "pg_batch_insert_s=$(elapsed "$sql_t0" "$sql_t1")"
		echo "pg_batch_update_s=$(elapsed "$sql_t1" "$sql_t2")"
	} >"$OUT/backlog.txt"
	say "drain: $rows rows up to LSN $target in" \
	    "$(elapsed "$t_up" "$t2") s after the flusher connected"
}

# ---- part: memory ----------------------------------------------------------

# Size in bytes of the shared region of the running tallyd: its one shared
# anonymous mapping, which /proc shows as /dev/zero (deleted).
shm_bytes() {
	local range path n=0
	while read -r range _ _ _ _ path; do
		case $path in
		"/dev/zero (deleted)")
			n=$((n + 0x${range#*-} - 0x${range%-*})) ;;
		esac
	done <"/proc/$srv_pid/maps"
	echo "$n"
}

part_memory() {
	local base=1000000 c i m
	local -A size
	# PostgreSQL is not needed (tallyd starts and answers without it),
	# but without one tallyd waits for its flusher's first try.
	for c in "$base $base" "$((2 * base)) $base" "$base $((2 * base))"; do
		set -- $c
		srv_port=$(free_port) || die "no free port"
		rm -rf "$tmp/state"
		: >"$tmp/server.log"
		[ -n "$pg_running" ] ||
		    tallyd_dsn="host=$tmp/nopg port=1 user=postgres"
		tallyd_conf group 1 "$1" "$2"
		tallyd_dsn=
		start_tallyd || { tail -n 20 "$tmp/server.log" >&2;
			die "tallyd did not come up"; }
		m=$(shm_bytes)
		[ "$m" -gt 0 ] || die "no shared mapping in /proc/$srv_pid/maps"
		size[$1,$2]=$m
		# SIGQUIT: at once, without the final flush (nothing to flush).
		kill -QUIT "$srv_pid" 2>/dev/null
		stop_system
	done
	{
		echo "base=$base"
		echo "shm_base=${size[$base,$base]}"
		echo "per_counter=$(( (size[$((2 * base)),$base] - size[$base,$base]) / base ))"
		echo "per_idem=$(( (size[$base,$((2 * base))] - size[$base,$base]) / base ))"
	} >"$OUT/memory.txt"
	say "memory: $(tr '\n' ' ' <"$OUT/memory.txt")"
}

# ---- the runs --------------------------------------------------------------

write_pg_scripts
load_before=$(loadavg)
started=$(date -u '+%Y-%m-%d %H:%M UTC')
t_start=$(now)
commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$top" diff --quiet HEAD -- src 2>/dev/null || commit="$commit+changes"
say "parts: $PARTS; duration $DURATION, rounds $ROUNDS, conns $CONNS," \
    "workers $WORKERS, threads $THREADS, flush_interval $FLUSH_INTERVAL;" \
    "load average $load_before"
for p in $PARTS; do
	"part_$p"
done
pg_stop
load_after=$(loadavg)
took=$(awk -v a="$t_start" -v b="$(now)" 'BEGIN { printf "%d", b - a }')

# ---- the report ------------------------------------------------------------

# Medians per part, system, workload, conns, workers, with the ratio to
# h2o-null at the same settings (WORKERS workers for Redis and PostgreSQL);
# for tallyd, the medians of its fsync p50 and p99 too (columns 12 and 13,
# "-" elsewhere), over the runs that did fsync; then the medians of the CPU
# microseconds per request of the server, PostgreSQL and the load generator
# (columns 14 to 16) and of the CPUs they kept busy (column 17).
awk -F'\t' -v W="$WORKERS" -v F="$fsyncs" '
FNR == 1 { next }
FILENAME == F {
	k = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4 SUBSEP $5
	if ($8 != "-") { nf[k]++; f50[k, nf[k]] = $8; f99[k, nf[k]] = $9 }
	next
}
{
	k = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4 SUBSEP $5
	if (!(k in n)) order[++no] = k
	n[k]++; rps[k, n[k]] = $7; p50[k, n[k]] = $8; p99[k, n[k]] = $9
	err[k] += $10
	su[k, n[k]] = $11; pu[k, n[k]] = $12; gu[k, n[k]] = $13
	cb[k, n[k]] = $14
}
function med(a, k, m,    i, j, t, v) {
	for (i = 1; i <= m; i++) v[i] = a[k, i] + 0
	for (i = 2; i <= m; i++)
		for (j = i; j > 1 && v[j - 1] > v[j]; j--) {
			t = v[j]; v[j] = v[j - 1]; v[j - 1] = t
		}
	return (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
}
END {
	for (i = 1; i <= no; i++) {
		k = order[i]; split(k, f, SUBSEP)
		R[k] = med(rps, k, n[k])
	}
	for (i = 1; i <= no; i++) {
		k = order[i]; split(k, f, SUBSEP)
		w = (f[5] == "-") ? W : f[5]
		b = f[1] SUBSEP "h2o-null" SUBSEP f[3] SUBSEP f[4] SUBSEP w
		ratio = "-"
		if (b in R && R[b] > 0)
			ratio = sprintf(R[k] / R[b] < 0.1 ? "%.3f" : "%.2f",
			    R[k] / R[b])
		fs50 = fs99 = "-"
		if (k in nf) {
			fs50 = sprintf("%.3f", med(f50, k, nf[k]))
			fs99 = sprintf("%.3f", med(f99, k, nf[k]))
		}
		printf "%s\t%s\t%s\t%s\t%s\t%.0f\t%.3f\t%.3f\t%s\t%s\t%d\t%s\t%s\t%.2f\t%.2f\t%.2f\t%.2f\n",
		    f[1], f[2], f[3], f[4], f[5], R[k], med(p50, k, n[k]),
		    med(p99, k, n[k]), ratio, err[k], n[k], fs50, fs99,
		    med(su, k, n[k]), med(pu, k, n[k]), med(gu, k, n[k]),
		    med(cb, k, n[k])
	}
}' "$fsyncs" "$runs" >"$OUT/medians.tsv"

# Look up a median: med_of PART SYSTEM WORKLOAD CONNS WORKERS COLUMN
med_of() {
	awk -F'\t' -v p="$1" -v s="$2" -v w="$3" -v c="$4" -v n="$5" \
	    -v col="$6" '$1 == p && $2 == s && $3 == w && $4 == c &&
	    ($5 == n || $5 == "-") { print $col; exit }' "$OUT/medians.tsv"
}

# Charts: requests/s, p50 and p99 per system and workload; requests/s
# against connections and against workers.
chart_data() {
	local part=$1 col=$2 x s w
	printf 'workload'
	for s in $SYSTEMS; do printf ' %s' "$s"; done
	echo
	for w in $WORKLOADS; do
		printf '%s' "$w"
		for s in $SYSTEMS; do
			x=$(med_of "$part" "$s" "$w" "$CONNS" "$WORKERS" "$col")
			printf ' %s' "${x:--}"
		done
		echo
	done
}

# A value of backlog.txt or memory.txt: kv FILE NAME (nothing if absent).
kv() { awk -F= -v n="$2" '$1 == n { print $2; exit }' "$1"; }

# Rows of the Targets table: | target | measured | met, not met or not
# measured |.  The compare part's figures are the medians of medians.tsv at
# CONNS connections and WORKERS workers, as in the tables below; an empty
# figure means its part, system or workload did not run.
no_target() { printf '| %s | - | - | not measured |\n' "$1"; }

# ratio_target TARGET SYSTEM BASE WORKLOAD FACTOR [PART CONNS]: SYSTEM's
# requests/s at least FACTOR times BASE's, in the compare part at CONNS
# connections unless PART and CONNS say otherwise.  Against h2o-null,
# also the bound that PostgreSQL's share of the CPUs sets: requests/s can
# be at most the CPUs over the CPU a request takes, and were the server
# and the load generator no dearer than with h2o-null, a request would
# still take PostgreSQL's microseconds on top of h2o-null's total.
ratio_target() {
	local x y b=- part=${6:-compare} c=${7:-$CONNS}
	x=$(med_of "$part" "$2" "$4" "$c" "$WORKERS" 6)
	y=$(med_of "$part" "$3" "$4" "$c" "$WORKERS" 6)
	if [ -z "$x" ] || [ -z "$y" ]; then
		no_target "$1"
		return
	fi
	if [ "$3" = h2o-null ]; then
		b=$(awk -v ns="$(med_of "$part" h2o-null "$4" "$c" "$WORKERS" 14)" \
		    -v ng="$(med_of "$part" h2o-null "$4" "$c" "$WORKERS" 16)" \
		    -v p="$(med_of "$part" "$2" "$4" "$c" "$WORKERS" 15)" \
		    -v y="$y" -v c="$(nproc)" 'BEGIN { t = ns + ng + p
			if (t > 0 && y > 0 && p != "")
				printf "%.2f", c * 1e6 / t / y
			else print "-" }')
	fi
	awk -v t="$1" -v x="$x" -v y="$y" -v f="$5" -v b="$b" 'BEGIN {
		printf "| %s | %d / %d = %s | %s | %s |\n", t, x, y,
		    (y > 0) ? sprintf("%.2f", x / y) : "-", b,
		    (x >= f * y) ? "met" : "not met" }'
}

# p99_target TARGET WORKLOAD: tallyd-group's p99 at most h2o-null's plus
# twice tallyd-group's fsync p99.
p99_target() {
	local x y f
	x=$(med_of compare tallyd-group "$2" "$CONNS" "$WORKERS" 8)
	y=$(med_of compare h2o-null "$2" "$CONNS" "$WORKERS" 8)
	f=$(med_of compare tallyd-group "$2" "$CONNS" "$WORKERS" 13)
	if [ -z "$x" ] || [ -z "$y" ] || [ -z "$f" ] || [ "$f" = - ]; then
		no_target "$1"
		return
	fi
	awk -v t="$1" -v x="$x" -v y="$y" -v f="$f" 'BEGIN {
		printf "| %s | %.2f ms; %.2f + 2 x %.2f = %.2f ms | - | %s |\n",
		    t, x, y, f, y + 2 * f, (x <= y + 2 * f) ? "met" : "not met" }'
}

# rate_target TARGET COUNT SECONDS MIN UNIT: COUNT / SECONDS at least MIN,
# as the Recovery and drain table computes it.
rate_target() {
	if [ -z "$2" ] || [ -z "$3" ]; then
		no_target "$1"
		return
	fi
	awk -v t="$1" -v n="$2" -v s="$3" -v m="$4" -v u="$5" 'BEGIN {
		r = (s > 0) ? n / s : 0
		printf "| %s | %.0f %s | - | %s |\n", t, r, u,
		    (r >= m) ? "met" : "not met" }'
}

targets() {
	local w c bk=$OUT/backlog.txt mem=$OUT/memory.txt x
	echo
	echo "## Targets"
	echo
	echo "Request figures: the medians of the compare part below ($CONNS"
	echo "connections, $WORKERS workers), and of the conns part (random keys)"
	echo "at its other counts from 64 to 256; fsync p99: tallyd-group's, from its"
	echo "fsync histogram (see \"Journal and fsync\"). Drain and recovery: the"
	echo "backlog part; memory: the memory part. \"not measured\": the part, a"
	echo "system or the workload did not run. \"PostgreSQL's bound\": the"
	echo "highest ratio to h2o-null that PostgreSQL's CPU per request leaves,"
	echo "were tallyd's processes and the load generator no dearer a request"
	echo "than with h2o-null: $(nproc) CPUs' worth of requests at h2o-null's"
	echo "total (server and load generator) plus PostgreSQL's, over"
	echo "h2o-null's requests/s (see \"CPU per request\")."
	echo
	echo "| target | measured | PostgreSQL's bound | result |"
	echo "| --- | --- | --- | --- |"
	for w in random hot; do
		ratio_target "\`sync = group\`, $w: requests/s >= 0.80 x h2o-null" \
		    tallyd-group h2o-null "$w" 0.80
	done
	for w in random hot; do
		p99_target "\`sync = group\`, $w: p99 <= h2o-null p99 + 2 x fsync p99" "$w"
	done
	for w in random hot; do
		ratio_target "\`sync = interval\`, $w: requests/s >= 0.90 x h2o-null" \
		    tallyd-interval h2o-null "$w" 0.90
	done
	for w in random hot; do
		ratio_target "tallyd-group, $w: requests/s >= redis-always" \
		    tallyd-group redis-always "$w" 1
	done
	# The targets hold from 64 to 256 connections: the conns part's
	# other counts in that range (random keys).
	for c in $CONN_SWEEP; do
		if [ "$c" -lt 64 ] || [ "$c" -gt 256 ] || [ "$c" = "$CONNS" ]; then
			continue
		fi
		in_list conns "$PARTS" || continue
		ratio_target "\`sync = group\`, random, $c connections: requests/s >= 0.80 x h2o-null" \
		    tallyd-group h2o-null random 0.80 conns "$c"
		ratio_target "\`sync = interval\`, random, $c connections: requests/s >= 0.90 x h2o-null" \
		    tallyd-interval h2o-null random 0.90 conns "$c"
		ratio_target "tallyd-group, random, $c connections: requests/s >= redis-always" \
		    tallyd-group redis-always random 1 conns "$c"
	done
	rate_target "drain: keys/s flushed >= 100000" \
	    "$(kv "$bk" drain_rows)" "$(kv "$bk" drain_from_connect_s)" \
	    100000 keys/s
	rate_target "recovery: increments/s >= 1000000" \
	    "$(kv "$bk" recovery_records)" "$(kv "$bk" recovery_s)" \
	    1000000 increments/s
	x=$(kv "$mem" per_counter)
	if [ -n "$x" ]; then
		echo "| memory: bytes per counter key | $x | - | no threshold |"
	else
		no_target "memory: bytes per counter key"
	fi
	x=$(kv "$mem" per_idem)
	if [ -n "$x" ]; then
		echo "| memory: bytes per Idempotency-Key | $x | - | no threshold |"
	else
		no_target "memory: bytes per Idempotency-Key"
	fi
}

# compare_rows ROW_FN: ROW_FN SYSTEM WORKLOAD for each pair the compare
# part ran, in the order of the tables.
compare_rows() {
	local s w
	for w in $WORKLOADS; do
		for s in $SYSTEMS; do
			supports "$s" "$w" && "$1" "$s" "$w"
		done
	done
	return 0
}

# A row of the table of systems and workloads: row_requests SYSTEM WORKLOAD.
row_requests() {
	awk -F'\t' -v s="$1" -v w="$2" -v m="$OUT/medians.tsv" '
	BEGIN { while ((getline l < m) > 0) {
		split(l, f, "\t")
		if (f[1] != "compare") continue
		if (f[2] == s && f[3] == w) split(l, a, "\t")
		if (f[2] == "h2o-null" && f[3] == w) split(l, b, "\t")
	}
	if (!(1 in a)) exit
	r50 = (2 in b && b[7] > 0) ? sprintf("%.1f", a[7] / b[7]) : "-"
	r99 = (2 in b && b[8] > 0) ? sprintf("%.1f", a[8] / b[8]) : "-"
	printf "| %s | %s | %d | %s | %.2f | %.2f | %s | %s | %d |\n",
	    s, w, a[6], a[9], a[7], a[8], r50, r99, a[10] }'
}

# A row of the table of CPU per request: row_cpu SYSTEM WORKLOAD.
row_cpu() {
	awk -F'\t' -v s="$1" -v w="$2" -v c="$CONNS" -v wk="$WORKERS" '
	$1 == "compare" && $2 == s && $3 == w && $4 == c &&
	($5 == wk || $5 == "-") {
		printf "| %s | %s | %.1f | %.1f | %.1f | %.1f | %.2f |\n",
		    s, w, $14, $15, $16, $14 + $15 + $16, $17
		exit }' "$OUT/medians.tsv"
}

report() {
	local s w c n x r
	echo "# tallyd benchmark"
	echo
	echo "Commit $commit, $started; $(nproc) CPUs, $(uname -r);"
	echo "load average $load_before before, $load_after after; took ${took} s."
	echo "Each figure is the median of $ROUNDS rounds of $DURATION; the"
	echo "systems alternate run by run. Latency in milliseconds. \"vs null\" is"
	echo "the ratio of requests/s to the do-nothing libh2o server (h2o-null)"
	echo "under the same load (for Redis and PostgreSQL: with $WORKERS workers)."
	echo "Errors: non-2xx answers and socket errors (wrk), errors reported by"
	echo "redis-benchmark, failed transactions (pgbench), summed over rounds."
	targets
	if in_list compare "$PARTS"; then
		echo
		echo "## Systems and workloads"
		echo
		echo "$CONNS connections, $WORKERS workers, $THREADS load generator thread(s);"
		echo "tallyd's flush_interval $FLUSH_INTERVAL; huge pages for shared memory:"
		echo "${THP_USED:-unknown} ($THP_FILE)."
		echo
		echo "| system | workload | requests/s | vs null | p50 | p99 | p50 vs null | p99 vs null | errors |"
		echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
		compare_rows row_requests
		echo
		echo "![requests/s and latency](bench.png)"
	fi
	if in_list compare "$PARTS"; then
		echo
		echo "## CPU per request"
		echo
		echo "Microseconds of CPU per request, medians over the rounds, from"
		echo "/proc: the server's processes (tallyd's master, workers and"
		echo "flusher; for pg-upsert, PostgreSQL), PostgreSQL's for tallyd's"
		echo "flushes, and the load generator's. CPUs busy: the three"
		echo "together over the run, out of $(nproc); the rest is idle or other"
		echo "processes (the kernel's threads). On a machine whose CPUs are all"
		echo "busy, a system's requests/s goes with the inverse of its total."
		echo
		echo "| system | workload | server | PostgreSQL | load generator | total | CPUs busy |"
		echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
		compare_rows row_cpu
	fi
	if [ -s "$jbytes" ] && [ "$(wc -l <"$jbytes")" -gt 1 ]; then
		echo
		echo "## Journal and fsync"
		echo
		echo "Journal bytes per increment (after lz4): journal_bytes_total /"
		echo "increments_total from /metrics at the end of each tallyd run"
		echo "(warm-up included), summed over the runs of every part. fsync p50"
		echo "and p99 (ms): medians over the compare part's runs ($CONNS"
		echo "connections) of the estimates from each run's"
		echo "journal_fsync_duration_seconds histogram (warm-up included),"
		echo "interpolated inside the bucket as Prometheus' histogram_quantile"
		echo "does; \"-\" where no such run fsynced."
		echo
		echo "| system | workload | increments | bytes/increment | increments/frame | increments/fsync | fsync p50 | fsync p99 |"
		echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
		awk -F'\t' -v m="$OUT/medians.tsv" -v c="$CONNS" -v wk="$WORKERS" '
		BEGIN { while ((getline l < m) > 0) {
			split(l, a, "\t")
			if (a[1] == "compare" && a[4] == c && a[5] == wk) {
				f50[a[2] "\t" a[3]] = a[12]
				f99[a[2] "\t" a[3]] = a[13]
			}
		} }
		NR > 1 { k = $1 "\t" $2
			if (!(k in i)) o[++n] = k
			i[k] += $4; b[k] += $5; f[k] += $6; s[k] += $7 }
		function fs(v) {
			if (v == "" || v == "-") return "-"
			return sprintf("%.2f", v)
		}
		END { for (j = 1; j <= n; j++) { k = o[j]; split(k, x, "\t")
			printf "| %s | %s | %d | %.1f | %.1f | %.1f | %s | %s |\n",
			    x[1], x[2], i[k], i[k] ? b[k] / i[k] : 0,
			    f[k] ? i[k] / f[k] : 0, s[k] ? i[k] / s[k] : 0,
			    fs(f50[k]), fs(f99[k]) } }' "$jbytes"
	fi
	if in_list conns "$PARTS"; then
		echo
		echo "## Connections (random keys, $WORKERS workers)"
		echo
		echo "requests/s (vs null) and p99 in ms."
		echo
		printf '| system |'
		for c in $CONN_SWEEP; do printf ' %s conns |' "$c"; done
		printf '\n| --- |'
		for c in $CONN_SWEEP; do printf ' ---: |'; done
		echo
		for s in $SCALE_SYSTEMS; do
			printf '| %s |' "$s"
			for c in $CONN_SWEEP; do
				x=$(med_of conns "$s" random "$c" "$WORKERS" 6)
				r=$(med_of conns "$s" random "$c" "$WORKERS" 9)
				n=$(med_of conns "$s" random "$c" "$WORKERS" 8)
				printf ' %s (%s) p99 %s |' "${x:--}" "${r:--}" \
				    "$(printf '%.2f' "${n:-0}")"
			done
			echo
		done
	fi
	if in_list workers "$PARTS"; then
		echo
		echo "## Workers (random keys, $CONNS connections)"
		echo
		echo "requests/s (vs null with as many workers)."
		echo
		printf '| system |'
		for n in $WORKER_SWEEP; do printf ' %s workers |' "$n"; done
		printf '\n| --- |'
		for n in $WORKER_SWEEP; do printf ' ---: |'; done
		echo
		for s in $WORKER_SYSTEMS; do
			printf '| %s |' "$s"
			for n in $WORKER_SWEEP; do
				x=$(med_of workers "$s" random "$CONNS" "$n" 6)
				r=$(med_of workers "$s" random "$CONNS" "$n" 9)
				printf ' %s (%s) |' "${x:--}" "${r:--}"
			done
			echo
		done
	fi
	if in_list conns "$PARTS" || in_list workers "$PARTS"; then
		echo
		echo "![requests/s against connections and workers](scaling.png)"
	fi
	if [ -s "$OUT/backlog.txt" ]; then
		# shellcheck disable=SC1090
		. "$OUT/backlog.txt"
		echo
		echo "## Recovery and drain"
		echo
		echo "A backlog of $inc increments over $keys keys ($journal_bytes journal"
		echo "bytes, \`sync = interval\`) built while PostgreSQL was stopped; then"
		echo "\`kill -9\` of every tallyd process and a restart (PostgreSQL still"
		echo "down); then PostgreSQL started and the flusher timed until the"
		echo "checkpoint reached the written LSN."
		echo
		echo "| what | figure |"
		echo "| --- | ---: |"
		awk -v r="$recovery_records" -v s="$recovery_s" -v w="$recovery_wall_s" \
		    -v e="$recovery_empty_s" \
		    -v rows="$drain_rows" -v d1="$drain_from_connect_s" \
		    -v d0="$drain_from_pg_ready_s" -v inc="$inc" \
		    -v n="$pg_batch_rows" -v bi="$pg_batch_insert_s" \
		    -v bu="$pg_batch_update_s" 'BEGIN {
			printf "| recovery: records replayed | %d |\n", r
			printf "| recovery: replay time (log) | %.3f s |\n", s
			printf "| recovery: increments/s | %.0f |\n", (s > 0) ? r / s : 0
			printf "| recovery: restart to /healthz | %.2f s |\n", w
			printf "| recovery: replay time of an empty journal (log) | %s s |\n", e
			if (e != "-" && s > e + 0)
				printf "| recovery: increments/s beyond the empty-journal time | %.0f |\n", r / (s - e)
			printf "| drain: rows upserted (keys per batch, summed) | %d |\n", rows
			printf "| drain: time from the flusher connected (schema checked, held keys re-read) | %.2f s |\n", d1
			printf "| drain: time from PostgreSQL ready (with the flusher'"'"'s back-off, up to 5 s) | %.2f s |\n", d0
			printf "| drain: keys/s flushed | %.0f |\n", (d1 > 0) ? rows / d1 : 0
			printf "| drain: increments/s folded | %.0f |\n", (d1 > 0) ? inc / d1 : 0
			printf "| PostgreSQL batched upsert, 1000 rows a transaction, new keys | %.0f rows/s |\n", (bi > 0) ? n / bi : 0
			printf "| PostgreSQL batched upsert, 1000 rows a transaction, same keys again | %.0f rows/s |\n", (bu > 0) ? n / bu : 0
		}'
	fi
	if [ -s "$OUT/memory.txt" ]; then
		# shellcheck disable=SC1090
		. "$OUT/memory.txt"
		echo
		echo "## Memory"
		echo
		echo "Size of tallyd's shared mapping (counters and Idempotency-Keys)"
		echo "at max_keys = $base for both, then with each doubled; default"
		echo "\`counters.max_key_bytes\` (256). The mapping is reserved, not"
		echo "touched: resident memory grows with the keys held."
		echo
		echo "| what | bytes |"
		echo "| --- | ---: |"
		echo "| shared mapping, $base + $base keys | $shm_base |"
		echo "| per \`counters.max_keys\` | $per_counter |"
		echo "| per \`idempotency.max_keys\` | $per_idem |"
	fi
}

report >"$OUT/results.md"

# gnuplot: the compare part as three clustered histograms, the sweeps as
# lines and bars.
if in_list compare "$PARTS"; then
	chart_data compare 6 >"$tmp/rps.dat"
	chart_data compare 7 >"$tmp/p50.dat"
	chart_data compare 8 >"$tmp/p99.dat"
	nsys=$(set -- $SYSTEMS; echo $#)
	gnuplot >"$tmp/gnuplot.log" 2>&1 <<-EOF || { cat "$tmp/gnuplot.log" >&2; die "gnuplot failed"; }
	set terminal pngcairo size 1400,1200 font ",10"
	set output "$OUT/bench.png"
	set datafile missing "-"
	set style data histograms
	set style histogram cluster gap 1
	set style fill solid 0.85 border -1
	set boxwidth 0.9
	set key outside right top vertical
	set grid ytics
	set multiplot layout 3,1 title "tallyd benchmark ($commit, $started): $CONNS connections, $WORKERS workers"
	set logscale y
	set title "requests/s (log scale, higher is better)"
	plot for [i=2:$((nsys + 1))] "$tmp/rps.dat" using i:xtic(1) title columnheader(i)
	set title "p50 latency, ms (log scale, lower is better)"
	plot for [i=2:$((nsys + 1))] "$tmp/p50.dat" using i:xtic(1) title columnheader(i)
	set title "p99 latency, ms (log scale, lower is better)"
	plot for [i=2:$((nsys + 1))] "$tmp/p99.dat" using i:xtic(1) title columnheader(i)
	unset multiplot
	EOF
fi
if in_list conns "$PARTS" || in_list workers "$PARTS"; then
	{
		printf 'conns'
		for s in $SCALE_SYSTEMS; do printf ' %s' "$s"; done
		echo
		for c in $CONN_SWEEP; do
			printf '%s' "$c"
			for s in $SCALE_SYSTEMS; do
				x=$(med_of conns "$s" random "$c" "$WORKERS" 6)
				printf ' %s' "${x:--}"
			done
			echo
		done
	} >"$tmp/conns.dat"
	{
		printf 'workers'
		for s in $WORKER_SYSTEMS; do printf ' %s' "$s"; done
		echo
		for n in $WORKER_SWEEP; do
			printf '%s' "$n"
			for s in $WORKER_SYSTEMS; do
				x=$(med_of workers "$s" random "$CONNS" "$n" 6)
				printf ' %s' "${x:--}"
			done
			echo
		done
	} >"$tmp/workers.dat"
	ns=$(set -- $SCALE_SYSTEMS; echo $#)
	nw=$(set -- $WORKER_SYSTEMS; echo $#)
	# A panel for each of the two parts that ran: gnuplot refuses an
	# empty one.
	np=0
	in_list conns "$PARTS" && np=$((np + 1))
	in_list workers "$PARTS" && np=$((np + 1))
	{
		cat <<-EOF
		set terminal pngcairo size $((700 * np)),600 font ",10"
		set output "$OUT/scaling.png"
		set datafile missing "-"
		set key outside right top vertical
		set grid
		set multiplot layout 1,$np title "tallyd benchmark ($commit, $started): random keys"
		set yrange [0:*]
		EOF
		in_list conns "$PARTS" && cat <<-EOF
		set title "requests/s against connections ($WORKERS workers)"
		set logscale x 2
		set xlabel "connections"
		plot for [i=2:$((ns + 1))] "$tmp/conns.dat" using 1:i with linespoints lw 2 title columnheader(i)
		unset logscale x
		unset xlabel
		EOF
		in_list workers "$PARTS" && cat <<-EOF
		set title "requests/s against workers ($CONNS connections)"
		set style data histograms
		set style histogram cluster gap 1
		set style fill solid 0.85 border -1
		plot for [i=2:$((nw + 1))] "$tmp/workers.dat" using i:xtic(1) title columnheader(i)
		EOF
		echo "unset multiplot"
	} >"$tmp/scaling.gp"
	gnuplot "$tmp/scaling.gp" >"$tmp/gnuplot.log" 2>&1 ||
	    { cat "$tmp/gnuplot.log" >&2; die "gnuplot failed"; }
fi

cat "$OUT/results.md"
say "done in ${took} s: $OUT/results.md, runs.tsv$(in_list compare "$PARTS" &&
    echo ', bench.png')$( { in_list conns "$PARTS" || in_list workers "$PARTS"; } &&
    echo ', scaling.png')"
