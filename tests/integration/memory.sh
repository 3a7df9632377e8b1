#!/bin/bash
# The shared region: the master maps it once, before it forks, so every
# child holds the same object; its size follows counters.max_keys; it asks
# the kernel for huge pages (madvise: "hg" in the mapping's VmFlags), and
# the master's log gives its size and the kernel's policy for huge pages
# in shared memory.  The policy is read, never changed: it belongs to the
# machine, so only the branch this machine's policy takes is checked.
. "$(dirname "$0")/lib.sh"

# shared PID FIELD: FIELD of PID's shared anonymous mapping, from smaps:
# "inode" (of the shared memory object), "Size" and "ShmemPmdMapped" (kB),
# "VmFlags" (the flags, space-separated).
shared() {
	awk -v f="$2" '
	/^[0-9a-f]+-[0-9a-f]+ / {
		m = / \/dev\/zero \(deleted\)$/
		if (m && f == "inode") { print $5; exit }
		next
	}
	m && $1 == f ":" {
		if (f == "VmFlags") { sub(/^[^:]*: */, ""); print } else print $2
		exit
	}
	' "/proc/$1/smaps"
}

# The policy in force is the bracketed word; a kernel without the file
# has none, which tallyd reports as "never".
POLICY_FILE=/sys/kernel/mm/transparent_hugepage/shmem_enabled
policy=never
if [ -r "$POLICY_FILE" ]; then
	policy=$(sed -n 's/.*\[\([a-z_]*\)\].*/\1/p' "$POLICY_FILE")
fi
note "huge pages for shared memory on this machine: $policy"

tallyd_conf
tallyd_start
pids="$TALLYD_PID $(descendants "$TALLYD_PID")"
assert_between "the master and its children (syncer, flusher, 2 workers)" \
    5 5 "$(echo $pids | wc -w)"

line=$(grep 'master info: shared memory: ' "$TALLYD_LOG")
assert_match "the master logs the shared memory and the policy" \
    "shared memory: [0-9]+ MiB reserved, in .* pages .*$POLICY_FILE: $policy[;)]" \
    "$line"
case "$policy" in
never|deny)
	assert_match "policy $policy: 4 KiB pages, and the setting to change" \
	    'in 4 KiB pages .*"advise" gives its tables 2 MiB pages' "$line"
	;;
*)
	assert_match "policy $policy: 2 MiB pages" 'in 2 MiB pages' "$line"
	;;
esac
mib=$(echo "$line" | sed -n 's/.*shared memory: \([0-9]*\) MiB.*/\1/p')
kb=$(shared "$TALLYD_PID" Size)
assert_match "the master has the mapping" '^[0-9]+$' "$kb"
# The log rounds down to MiB, /proc up to pages.
assert_between "the size logged is the size mapped ($kb kB)" \
    $((mib * 1024)) $((mib * 1024 + 1024)) "$kb"

inode=$(shared "$TALLYD_PID" inode)
for p in $pids; do
	assert_eq "pid $p maps the master's shared object" "$inode" \
	    "$(shared "$p" inode)"
	assert_match "pid $p: the mapping is advised for huge pages" \
	    '(^| )hg( |$)' "$(shared "$p" VmFlags)"
done

# Keys touch the counter table's index and entries all over it.
for k in $(seq 200); do
	[ "$(post "mem-$k" 1)" = 202 ] || notok "POST mem-$k: $(last_status)"
done
w=$(tallyctl status | sed -n 's/.*worker *pid \([0-9]*\).*/\1/p' | head -n 1)
pmd=$(shared "$w" ShmemPmdMapped)
case "$policy" in
never|deny)
	assert_eq "policy $policy: the kernel mapped no 2 MiB page" 0 "$pmd"
	;;
*)
	assert_between "policy $policy: the kernel mapped 2 MiB pages" \
	    2048 $((kb + 2048)) "$pmd"
	;;
esac
# No PostgreSQL here: a fast stop, which the journal makes safe.
tallyd_stop QUIT

# Twice the keys, a larger table.
tallyd_conf "[counters]" "max_keys = 2000000"
tallyd_start
kb2=$(shared "$TALLYD_PID" Size)
assert_between "max_keys 2000000 maps more than 1000000 ($kb2 kB, $kb kB)" \
    $((kb + 1)) $((kb * 4)) "$kb2"
tallyd_stop QUIT
