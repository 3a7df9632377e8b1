#!/bin/sh
# Replay every fuzzing corpus through its target, built without libFuzzer:
# each input that once found a bug, or reached new code, stays a test.
: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${top_builddir:=$top_srcdir}"

status=0
for h in request path idem journal recovery config control; do
	prog="$top_builddir/tests/fuzz/replay_$h"
	corpus="$top_srcdir/tests/fuzz/corpus/$h"
	if [ ! -x "$prog" ]; then
		echo "replay.sh: $prog missing" >&2
		status=1
		continue
	fi
	if ! "$prog" "$corpus"; then
		echo "FAIL: $h" >&2
		status=1
	fi
done
exit $status
