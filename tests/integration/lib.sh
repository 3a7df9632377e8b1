# Shared by the integration tests: a private PostgreSQL and a private tallyd
# in a temporary directory, helpers to talk to them, and assertions that
# print one line per check.  Everything a test starts is stopped by pid when
# the test exits, and the temporary directory goes with it (KEEP=1 keeps it).
#
# Exit status, as automake's test driver reads it: 0 pass, 1 fail, 77 skip
# (only outside CI, for a tool that is missing).

set -u
# A tallyd of the tests must not speak to whatever manages the test run.
unset NOTIFY_SOCKET

: "${top_builddir:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${top_srcdir:=$top_builddir}"
TALLYD=$top_builddir/src/tallyd
TALLYCTL=$top_builddir/src/tallyctl

NCHECKS=0
NFAILED=0
TALLYD_PID=
PG_STARTED=0
BGPIDS=()
MOUNTS=()
SELF=$(basename "$0" .sh)

# ---------------------------------------------------------------- output

note() { printf '# %s\n' "$*"; }

ok() { NCHECKS=$((NCHECKS + 1)); printf 'ok - %s\n' "$*"; }

notok() {
	NCHECKS=$((NCHECKS + 1)); NFAILED=$((NFAILED + 1))
	printf 'not ok - %s\n' "$*"
}

# Stop the test here: something it depends on did not work.
die() {
	notok "$*"
	exit 1
}

skip_or_fail() {
	if [ -n "${CI:-}" ]; then
		die "$* (required in CI)"
	fi
	printf 'SKIP: %s\n' "$*"
	SKIPPING=1
	exit 77
}

need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || skip_or_fail "$c not installed"
	done
}

# ---------------------------------------------------------------- assertions

# assert_eq DESCRIPTION EXPECTED GOT
assert_eq() {
	if [ "$2" = "$3" ]; then
		ok "$1"
	else
		notok "$1"
		printf '#   expected: %s\n#   got:      %s\n' "$2" "$3"
	fi
}

# assert_match DESCRIPTION ERE STRING
assert_match() {
	if printf '%s' "$3" | grep -Eq -- "$2"; then
		ok "$1"
	else
		notok "$1"
		printf '#   expected to match: %s\n#   got: %s\n' "$2" "$3"
	fi
}

# assert_between DESCRIPTION LOW HIGH GOT (integers, inclusive)
assert_between() {
	if [[ "$4" =~ ^-?[0-9]+$ ]] && [ "$4" -ge "$2" ] && [ "$4" -le "$3" ]; then
		ok "$1"
	else
		notok "$1"
		printf '#   expected: %s..%s\n#   got:      %s\n' "$2" "$3" "$4"
	fi
}

# Minify JSON: drop whitespace outside strings, so that answers compare
# exactly whatever spacing the server uses.
json_min() {
	LC_ALL=C awk 'BEGIN { RS = "\001"; ORS = "" } {
		n = length($0); s = 0; e = 0; out = ""
		for (i = 1; i <= n; i++) {
			c = substr($0, i, 1)
			if (s) {
				out = out c
				if (e) e = 0
				else if (c == "\\") e = 1
				else if (c == "\"") s = 0
			} else if (c == "\"") {
				s = 1; out = out c
			} else if (c != " " && c != "\t" && c != "\n" && c != "\r") {
				out = out c
			}
		}
		print out
	}'
}

# ---------------------------------------------------------------- ports

port_free() {
	[ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
}

# A random port nobody listens on (and that we did not hand out already).
USED_PORTS=" "
free_port() {
	local p i
	for i in $(seq 1 100); do
		# Below Linux's ephemeral range (32768-60999), where another
		# program's outgoing connection could take the port first.
		p=$((10000 + RANDOM % 22000))
		case "$USED_PORTS" in *" $p "*) continue ;; esac
		if port_free "$p"; then
			USED_PORTS="$USED_PORTS$p "
			echo "$p"
			return 0
		fi
	done
	echo "no free port found" >&2
	return 1
}

# ---------------------------------------------------------------- processes

# 1 when the pid runs (a zombie does not count: nothing may reap it here).
pid_alive() {
	local st
	st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
	[ -n "$st" ] && [ "$st" != Z ]
}

descendants() {
	local c
	for c in $(pgrep -P "$1" 2>/dev/null); do
		echo "$c"
		descendants "$c"
	done
}

# wait_gone TIMEOUT_S PID...: 0 when every pid is gone in time.
wait_gone() {
	local t=$1 p left i
	shift
	for i in $(seq 1 $((t * 10))); do
		left=0
		for p in "$@"; do
			pid_alive "$p" && left=1
		done
		[ $left = 0 ] && return 0
		sleep 0.1
	done
	return 1
}

# ---------------------------------------------------------------- temp dir

T=$(mktemp -d "${TMPDIR:-/tmp}/tallyd-$SELF.XXXXXX") || exit 99
# PostgreSQL runs as its own user when we are root: it must reach $T.
chmod 755 "$T"
SKIPPING=0

# A sanitizer build reports into files under $T/san (open to the user
# tallyd drops to); a test that leaves a report fails and prints it.
SANDIR=$T/san
mkdir -p "$SANDIR" && chmod 1777 "$SANDIR"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$SANDIR/asan"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}log_path=$SANDIR/ubsan"

# san_reports: 1 (and the reports printed) when a sanitizer reported.
san_reports() {
	local f found=0
	for f in "$SANDIR"/*; do
		[ -s "$f" ] || continue
		[ $found = 1 ] || notok "sanitizer reports in $SANDIR"
		found=1
		echo "# ---- $(basename "$f")"
		sed 's/^/#   /' "$f"
	done
	[ $found = 0 ]
}

cleanup() {
	local rc=$? p
	trap - EXIT INT TERM
	for p in "${BGPIDS[@]}"; do
		kill -9 "$p" 2>/dev/null
	done
	if [ -n "$TALLYD_PID" ] && pid_alive "$TALLYD_PID"; then
		tallyd_kill9_all >/dev/null 2>&1
	fi
	if [ "$PG_STARTED" = 1 ]; then
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop \
		    >/dev/null 2>&1
	fi
	# Before rm -rf, which would leave a mount in $T behind.
	for p in "${MOUNTS[@]}"; do
		umount "$p" 2>/dev/null || umount -l "$p" ||
		    notok "cannot unmount $p"
	done
	if [ "$SKIPPING" = 0 ]; then
		san_reports
		if [ "$NFAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
			show_logs
			[ "$rc" -eq 0 ] && rc=1
		fi
		printf '# %s: %d checks, %d not ok\n' "$SELF" "$NCHECKS" "$NFAILED"
	fi
	if [ -n "${KEEP:-}" ]; then
		note "kept $T"
	else
		rm -rf "$T"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

show_logs() {
	local f
	for f in "$T"/tallyd*.log "$T"/pg/pg.log; do
		[ -s "$f" ] || continue
		echo "# ---- last lines of $(basename "$f")"
		tail -n 60 "$f" | sed 's/^/#   /'
	done
}

# ---------------------------------------------------------------- PostgreSQL

PGBIN=
find_pgbin() {
	local d
	if command -v pg_config >/dev/null 2>&1; then
		d=$(pg_config --bindir 2>/dev/null)
		[ -x "$d/initdb" ] && { PGBIN=$d; return 0; }
	fi
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		[ -x "$d/initdb" ] && { PGBIN=$d; return 0; }
	done
	d=$(dirname "$(command -v initdb 2>/dev/null)" 2>/dev/null)
	[ -n "$d" ] && [ -x "$d/initdb" ] && { PGBIN=$d; return 0; }
	return 1
}

# Run a PostgreSQL server command: as the postgres user when we are root
# (initdb and postgres refuse root), as ourselves otherwise.
as_pg() {
	if [ "$(id -u)" = 0 ]; then
		(cd "$T" && runuser -u postgres -- "$@")
	else
		(cd "$T" && "$@")
	fi
}

# pg_start: a private cluster on a Unix socket in $T and a free port.  A
# second call (after pg_stop) starts the same cluster on the same port.
pg_start() {
	if [ -z "$PGBIN" ]; then
		find_pgbin || skip_or_fail "PostgreSQL server (initdb) not installed"
		need psql
		PGDIR=$T/pg
		PGDATA=$PGDIR/data
		PGSOCK=$PGDIR/sock
		PGPORT=$(free_port) || die "no free port for PostgreSQL"
		mkdir -p "$PGSOCK"
		[ "$(id -u)" = 0 ] && chown -R postgres: "$PGDIR"
		as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres -N \
		    -E UTF8 --locale=C >"$T/initdb.log" 2>&1 ||
		    { cat "$T/initdb.log"; die "initdb failed"; }
		DSN="host=$PGSOCK port=$PGPORT user=postgres dbname=postgres"
		export DSN
	fi
	as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDIR/pg.log" -w -t 60 \
	    -o "-k $PGSOCK -p $PGPORT -c listen_addresses=''" start \
	    >/dev/null || die "PostgreSQL did not start"
	PG_STARTED=1
	note "PostgreSQL up: $DSN"
}

pg_stop() {
	as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null ||
	    die "PostgreSQL did not stop"
	PG_STARTED=0
	note "PostgreSQL stopped"
}

# pg_sql "SQL": rows unaligned, no header.
pg_sql() {
	PGCONNECT_TIMEOUT=5 psql "$DSN" -XAtqc "$1"
}

sql_quote() { local s=${1//\'/\'\'}; printf "'%s'" "$s"; }

# The key's value in PostgreSQL, or "none".
pg_value() {
	local v
	v=$(pg_sql "select value from tally_counters where key = $(sql_quote "$1")" \
	    2>/dev/null)
	echo "${v:-none}"
}

# pg_wait_value KEY EXPECTED [TIMEOUT_S]: poll until a flush shows it, then
# assert exactly.
pg_wait_value() {
	local key=$1 want=$2 t=${3:-15} got i
	# Nothing to wait for when the expected total is unknown.
	[ "$want" = none ] && t=0
	for i in $(seq 0 $((t * 5))); do
		got=$(pg_value "$key")
		[ "$got" = "$want" ] && break
		sleep 0.2
	done
	assert_eq "PostgreSQL has $key = $want" "$want" "$got"
}

# ---------------------------------------------------------------- tallyd

# tallyd_conf [LINE]...: write $CONF for a private instance; extra lines
# (with their own [section] headers) are appended.
tallyd_conf() {
	local l
	[ -n "${TPORT:-}" ] || TPORT=$(free_port) || die "no free port for tallyd"
	CONF=$T/tallyd.conf
	BASE=http://127.0.0.1:$TPORT
	mkdir -p "$T/state"
	{
		echo "[server]"
		echo "listen = 127.0.0.1:$TPORT"
		echo "workers = 2"
		echo "state_dir = $T/state"
		echo "pid_file = $T/tallyd.pid"
		echo "control_socket = $T/tallyd.sock"
		echo "[journal]"
		echo "segment_size = 1M"
		echo "[postgres]"
		echo "dsn = ${DSN:-}"
		echo "flush_interval = 100ms"
		for l in "$@"; do
			echo "$l"
		done
	} >"$CONF"
}

TALLYD_LOG=
TALLYD_RUN=0

# tallyd_start [ARG]...: start in the background (extra args to tallyd),
# wait until /healthz answers 200.
tallyd_start() {
	local i code
	[ -x "$TALLYD" ] || die "$TALLYD not built"
	TALLYD_RUN=$((TALLYD_RUN + 1))
	TALLYD_LOG=$T/tallyd.$TALLYD_RUN.log
	"$TALLYD" -f -c "$CONF" "$@" </dev/null >>"$TALLYD_LOG" 2>&1 &
	TALLYD_PID=$!
	for i in $(seq 1 300); do
		code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$BASE/healthz")
		[ "$code" = 200 ] && { note "tallyd up, pid $TALLYD_PID"; return 0; }
		if ! pid_alive "$TALLYD_PID"; then
			wait "$TALLYD_PID" 2>/dev/null
			code=$?
			cat "$TALLYD_LOG"
			die "tallyd exited at start (status $code)"
		fi
		sleep 0.1
	done
	cat "$TALLYD_LOG"
	die "tallyd did not answer /healthz within 30 s"
}

# tallyd_stop [SIGNAL]: graceful stop by pid; SIGKILL after 30 s.  Sets
# TALLYD_STATUS to the exit status.
tallyd_stop() {
	local sig=${1:-TERM} pids
	pids="$TALLYD_PID $(descendants "$TALLYD_PID")"
	kill "-$sig" "$TALLYD_PID" 2>/dev/null
	if ! wait_gone 30 "$TALLYD_PID"; then
		notok "tallyd did not stop within 30 s of SIG$sig"
		tallyd_kill9_all
		return 1
	fi
	wait "$TALLYD_PID" 2>/dev/null
	TALLYD_STATUS=$?
	# shellcheck disable=SC2086
	wait_gone 10 $pids || notok "tallyd's children outlived the master"
	TALLYD_PID=
	no_crashes
	return 0
}

# no_crashes: no child of this run of tallyd died of a signal or an error
# (the master logs each death it did not ask for).
no_crashes() {
	local bad
	bad=$(grep -E 'killed by signal|exited with code|fatal code' "$TALLYD_LOG")
	if [ -z "$bad" ]; then
		ok "no tallyd process crashed ($(basename "$TALLYD_LOG"))"
	else
		notok "tallyd processes crashed ($(basename "$TALLYD_LOG"))"
		printf '%s\n' "$bad" | sed 's/^/#   /'
	fi
}

# tallyd_stopped LABEL: tallyd, sent a stop signal, exits within 30 s with
# status 0 (in TALLYD_STATUS) and no process crashed; else every process
# is killed and the check fails.
tallyd_stopped() {
	if wait_gone 30 "$TALLYD_PID"; then
		wait "$TALLYD_PID" 2>/dev/null
		TALLYD_STATUS=$?
		TALLYD_PID=
		assert_eq "$1: exit status" 0 "$TALLYD_STATUS"
		no_crashes
	else
		notok "$1: tallyd did not stop within 30 s"
		tallyd_kill9_all
	fi
}

# tallyd_kill9_all: SIGKILL the master and every descendant, by pid.  The
# master is stopped first so that it cannot fork a replacement meanwhile,
# then every other process, so that none dies while another still runs,
# as in a power cut: a child that saw the master die (its SIGQUIT) would
# begin a normal exit, which a sanitizer build reports as cut short.
tallyd_kill9_all() {
	local pids
	kill -STOP "$TALLYD_PID" 2>/dev/null
	pids="$TALLYD_PID $(descendants "$TALLYD_PID")"
	# shellcheck disable=SC2086
	kill -STOP $pids 2>/dev/null
	# shellcheck disable=SC2086
	kill -9 $pids 2>/dev/null
	# shellcheck disable=SC2086
	wait_gone 10 $pids || notok "processes survived kill -9: $pids"
	wait "$TALLYD_PID" 2>/dev/null
	note "killed -9: $(echo $pids)"
	TALLYD_PID=
}

tallyctl() { "$TALLYCTL" -c "$CONF" "$@"; }

# role_pids ROLE: the pids tallyctl status lists for ROLE (worker, syncer,
# flusher).
role_pids() {
	tallyctl status | sed -n "s/^ *$1 *pid \([0-9]*\).*/\1/p"
}

# flush: ask for a flush and wait for it (tallyctl flush waits).
flush() { tallyctl flush >/dev/null || notok "tallyctl flush failed"; }

# checkpoint_at_journal_end LABEL NODE [JDIR]: after a stop that flushed,
# the journal verifies and PostgreSQL's checkpoint for NODE is its end,
# which is left in JOURNAL_END.
checkpoint_at_journal_end() {
	local label=$1 node=$2 st=0
	shift 2
	tallyctl journal verify "$@" >"$T/verify.out" 2>&1 || st=$?
	assert_eq "$label: journal verify after the stop" 0 "$st"
	JOURNAL_END=$(sed -n 's/.*LSN [0-9]* to \([0-9]*\)$/\1/p' "$T/verify.out")
	assert_match "$label: journal verify gives the journal's end" '^[0-9]+$' \
	    "$JOURNAL_END"
	assert_eq "$label: PostgreSQL's checkpoint is the end of the journal" \
	    "$JOURNAL_END" \
	    "$(pg_sql "select lsn from tally_checkpoints where node = '$node'")"
}

# wait_grep SECONDS FILE PATTERN: poll until FILE has a line matching
# PATTERN (grep's basic regex) or SECONDS pass; the assertion is the
# caller's.
wait_grep() {
	local i
	for i in $(seq $(($1 * 10))); do
		grep -q -- "$3" "$2" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# gdb_attach PID OUT GDB_ARG...: gdb in batch mode on PID in the background
# (its pid in GDB_PID, its output in OUT), returning once its first
# breakpoint is set.
gdb_attach() {
	local pid=$1 out=$2 i
	shift 2
	gdb -q -nx -batch -p "$pid" "$@" >"$out" 2>&1 </dev/null &
	GDB_PID=$!
	BGPIDS+=("$GDB_PID")
	for i in $(seq 200); do
		grep -q '^Breakpoint 1 at' "$out" && return 0
		sleep 0.1
	done
	cat "$out"
	die "gdb did not attach to pid $pid"
}

# read_only DIR: make DIR read-only for everyone, root too, whose writes
# file modes do not stop: a read-only bind mount of DIR on itself, which
# the cleanup unmounts.  Without root, the files' modes do (the directory
# stays writable, for the cleanup's rm -rf).
read_only() {
	if [ "$(id -u)" != 0 ]; then
		find "$1" -type f -exec chmod a-w {} + || die "chmod a-w in $1"
		return
	fi
	mount --bind "$1" "$1" || die "mount --bind $1"
	MOUNTS+=("$1")
	mount -o remount,ro,bind "$1" || die "remount $1 read-only"
}

journal_records() { tallyctl journal dump | wc -l; }

# ---------------------------------------------------------------- HTTP

# Every request leaves its answer in $T/last.{status,body,headers}.
# http METHOD PATH [CURL_ARG]...: prints the status.
http() {
	local m=$1 path=$2
	shift 2
	curl -s -m 10 -X "$m" -o "$T/last.body" -D "$T/last.headers" \
	    -w '%{http_code}' "$@" "$BASE$path" >"$T/last.status"
	cat "$T/last.status"
}

# wait_status PATH STATUS: poll (15 s) until GET PATH answers STATUS;
# prints the last status.
wait_status() {
	local i st
	for i in $(seq 75); do
		st=$(http GET "$1")
		[ "$st" = "$2" ] && break
		sleep 0.2
	done
	echo "$st"
}

last_body() { json_min <"$T/last.body"; }
last_status() { cat "$T/last.status"; }
# last_header NAME: its value, without CR.
last_header() {
	grep -i "^$1:" "$T/last.headers" | head -n 1 | sed 's/^[^:]*:[[:space:]]*//' |
	    tr -d '\r'
}

# JSON string literal for a key with only ordinary characters, " and \.
json_str() {
	local s=${1//\\/\\\\}
	s=${s//\"/\\\"}
	printf '"%s"' "$s"
}

# post_body BODY [CURL_ARG]...: POST /increment with the JSON content type.
post_body() {
	local body=$1
	shift
	http POST /increment -H 'Content-Type: application/json' \
	    --data-binary "$body" "$@"
}

# post KEY VALUE: prints the status.
post() { post_body "{\"key\":$(json_str "$1"),\"value\":$2}"; }

urlencode() {
	local LC_ALL=C s=$1 i c out=
	for ((i = 0; i < ${#s}; i++)); do
		c=${s:i:1}
		case "$c" in
		[A-Za-z0-9._~-]) out+=$c ;;
		*) out+=$(printf '%%%02X' "'$c") ;;
		esac
	done
	printf '%s' "$out"
}

# metric NAME: the value of tallyd_NAME in the node's /metrics.
metric() {
	curl -s -m 5 "$BASE/metrics" | awk -v n="tallyd_$1" '$1 == n { print $2 }'
}

# get KEY: prints the minified body of GET /increment/{key}.
get() {
	http GET "/increment/$(urlencode "$1")" >/dev/null
	last_body
}

# total KEY: the node's total, or "none" when the GET does not answer 200.
total() {
	local body
	body=$(get "$1")
	if [ "$(last_status)" != 200 ]; then
		echo none
		return
	fi
	echo "$body" | sed 's/.*:\(-\{0,1\}[0-9][0-9]*\)}$/\1/'
}

# wait_total KEY VALUE [DESCRIPTION]: poll the node's total (15 s; it
# learns PostgreSQL's values after its flushes), then assert it.
wait_total() {
	local got i
	for i in $(seq 75); do
		got=$(total "$1")
		[ "$got" = "$2" ] && break
		sleep 0.2
	done
	assert_eq "${3:-node total of $1}" "$2" "$got"
}

need curl ss pgrep
