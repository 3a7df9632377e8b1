#!/bin/bash
# Set up a Debian 12 machine for tallyd and either run it or test it.
#
#   contrib/dev.sh run [TALLYD_ARG]...   build, start a private PostgreSQL
#                                        (unless a DSN is given), run tallyd
#                                        in the foreground on 0.0.0.0:3333
#   contrib/dev.sh test                  build and run the whole test suite
#
# Run as root or with sudo: missing packages are installed with apt-get.
# A DSN given as TALLYD_DSN or as "-o postgres.dsn=..." skips the private
# PostgreSQL.  TALLYD_DEV_DIR (default /var/tmp/tallyd-dev) holds the
# private PostgreSQL, the generated tallyd.conf and tallyd's state; it is
# reused by the next run.  It is not under the source tree or /root because
# PostgreSQL runs as the postgres user and must reach it.
set -euo pipefail

cd "$(dirname "$0")/.."
SRC=$(pwd)

BUILD_PACKAGES=(build-essential autoconf automake libtool pkg-config
	libh2o-evloop-dev libyajl-dev liblz4-dev libpq-dev libinih-dev
	zlib1g-dev libssl-dev check)
RUN_PACKAGES=(postgresql curl util-linux)
TEST_PACKAGES=(nghttp2-client iproute2 procps mandoc prometheus
	python3-prometheus-client python3 valgrind gdb)

say() { printf 'dev.sh: %s\n' "$*" >&2; }

as_root() {
	if [ "$(id -u)" = 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		say "need root (or sudo) to run: $*"
		exit 1
	fi
}

install_missing() {
	local p missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
		    grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} = 0 ] && return 0
	say "installing ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    --no-install-recommends "${missing[@]}"
}

build() {
	[ -x configure ] || autoreconf -fi
	[ -f Makefile ] || ./configure
	make -j"$(nproc)"
}

pg_bindir() {
	local d
	d=$(pg_config --bindir 2>/dev/null || true)
	if [ -n "$d" ] && [ -x "$d/initdb" ]; then
		echo "$d"
		return
	fi
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [ -x "$d/initdb" ]; then
			echo "$d"
			return
		fi
	done
	say "no PostgreSQL server found (initdb)"
	exit 1
}

# PostgreSQL's server programs refuse to run as root.
as_pg() {
	if [ "$(id -u)" = 0 ]; then
		(cd "$DEV" && runuser -u postgres -- "$@")
	else
		(cd "$DEV" && "$@")
	fi
}

cmd_run() {
	local dsn=${TALLYD_DSN:-} a
	pg_started=0
	for a in "$@"; do
		case "$a" in
		postgres.dsn=*|-opostgres.dsn=*) dsn=given ;;
		esac
	done
	install_missing "${BUILD_PACKAGES[@]}" "${RUN_PACKAGES[@]}"
	build

	DEV=${TALLYD_DEV_DIR:-/var/tmp/tallyd-dev}
	mkdir -p "$DEV/state"
	chmod 755 "$DEV"
	PGBIN=$(pg_bindir)
	PGDATA=$DEV/pgdata
	PGSOCK=$DEV/pgsock
	# No TCP listener: the port only names the socket in $PGSOCK.
	PGPORT=${TALLYD_DEV_PGPORT:-5433}

	if [ -z "$dsn" ]; then
		mkdir -p "$PGSOCK" "$PGDATA"
		if [ "$(id -u)" = 0 ]; then
			chown postgres: "$PGSOCK" "$PGDATA"
		fi
		if [ ! -f "$PGDATA/PG_VERSION" ]; then
			say "creating a private PostgreSQL in $PGDATA"
			as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres \
			    -E UTF8 --locale=C >"$DEV/initdb.log"
		fi
		if as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
			say "PostgreSQL already running in $PGDATA"
		else
			touch "$DEV/postgresql.log"
			if [ "$(id -u)" = 0 ]; then
				chown postgres: "$DEV/postgresql.log"
			fi
			as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$DEV/postgresql.log" \
			    -w -t 60 -o "-k $PGSOCK -p $PGPORT -c listen_addresses=''" \
			    start >/dev/null
			pg_started=1
		fi
		TALLYD_DSN="host=$PGSOCK port=$PGPORT user=postgres dbname=postgres"
		say "PostgreSQL: psql \"$TALLYD_DSN\""
	fi

	cat >"$DEV/tallyd.conf" <<-EOF
	# Written by contrib/dev.sh on every run.
	[server]
	listen = 0.0.0.0:3333
	state_dir = $DEV/state
	pid_file = $DEV/tallyd.pid
	control_socket = $DEV/tallyd.sock
	[postgres]
	dsn = ${TALLYD_DSN:-}
	EOF

	stop_pg() {
		if [ "$pg_started" = 1 ]; then
			say "stopping the private PostgreSQL"
			as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null ||
			    true
		fi
	}
	trap stop_pg EXIT
	say "tallyd on 0.0.0.0:3333 (config $DEV/tallyd.conf); Ctrl-C stops it"
	say "try: curl -s -X POST localhost:3333/increment -H 'Content-Type: application/json' -d '{\"key\":\"k\",\"value\":20}'"
	"$SRC/src/tallyd" -f -c "$DEV/tallyd.conf" "$@" &
	pid=$!
	# A background job ignores SIGINT here: hand Ctrl-C and SIGTERM on.
	trap 'kill -TERM $pid 2>/dev/null || true' INT TERM
	status=0
	while :; do
		wait "$pid" && status=0 || status=$?
		kill -0 "$pid" 2>/dev/null || break
	done
	say "tallyd exited with status $status"
	exit "$status"
}

print_failed_logs() {
	local trs log
	for trs in tests/*.trs tests/integration/*.trs; do
		[ -f "$trs" ] || continue
		grep -Eq '^:test-result: (FAIL|ERROR|XPASS)' "$trs" || continue
		log=${trs%.trs}.log
		echo "==================== $log"
		cat "$log"
	done
}

cmd_test() {
	local status=0
	install_missing "${BUILD_PACKAGES[@]}" "${RUN_PACKAGES[@]}" \
	    "${TEST_PACKAGES[@]}"
	build
	# Build the test programs in parallel, then run the tests one after
	# another: the integration tests time their PostgreSQL flushes.
	make -j"$(nproc)" check TESTS=
	make check || status=$?
	if [ "$status" != 0 ]; then
		print_failed_logs
	fi
	exit "$status"
}

case "${1:-}" in
run)
	shift
	cmd_run "$@"
	;;
test)
	shift
	[ $# = 0 ] || { say "usage: contrib/dev.sh test"; exit 2; }
	cmd_test
	;;
*)
	echo "usage: contrib/dev.sh run [tallyd argument]... | test" >&2
	exit 2
	;;
esac
