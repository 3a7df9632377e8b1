/*
 * The shared region.  The master maps it (anonymous, MAP_SHARED) before
 * forking, so every child inherits the same pages; the master itself only
 * reads it.  It is a cache and a notice board, never the source of truth:
 * a restart rebuilds it from PostgreSQL and the journal.
 */
#ifndef TALLY_SHM_H
#define TALLY_SHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "counters.h"
#include "idem.h"
#include "journal.h"
#include "metrics.h"
#include "ratelimit.h"

#define SHM_MAGIC	0x54414c4c59534d31ULL	/* "TALLYSM1" */
#define SHM_THP_POLICY	"/sys/kernel/mm/transparent_hugepage/shmem_enabled"

/* Per worker slot: its pid, its eventfd, its in-flight journal write. */
struct shm_slot {
	pid_t		pid;		/* 0: free */
	int		efd;		/* eventfd the syncer writes to wake it */
	uint64_t	res_start;	/* reservation being written, 0: none */
	uint64_t	res_end;
	/*
	 * The range being reserved, noted before each try and cleared once
	 * res_start holds it: a worker that dies with this set and res_start
	 * not may have won the range (journal_reserve).
	 */
	uint64_t	res_try[2];
	/*
	 * sync = group: the durable position this worker sleeps until, 0
	 * when it waits for nothing; whoever moves durable_lsn past it
	 * writes its eventfd.
	 */
	uint64_t	wait_lsn;
	/*
	 * A dead worker whose keyed requests in written frames are still
	 * in flight, for its successor to settle (idem_adopt_owner); 0:
	 * none.
	 */
	pid_t		orphan_pid;
};

/* Counters summed over all processes; each is only ever added to. */
struct shm_stats {
	uint64_t	requests;
	uint64_t	increments;
	uint64_t	replays;
	uint64_t	frames;
	uint64_t	journal_bytes;
	uint64_t	fsyncs;
	uint64_t	flushes;
	uint64_t	rows_upserted;
	uint64_t	pg_errors;
	uint64_t	restarts;
	uint64_t	pg_reconnects;
	uint64_t	ratelimited;	/* requests refused by the rate limit */
	uint64_t	rejected;	/* records set aside as undeliverable */
	uint64_t	key_lookups;	/* new keys' totals asked of PostgreSQL */
	uint64_t	idem_lookups;	/* Idempotency-Keys asked of PostgreSQL */
	uint64_t	idem_duplicates; /* keyed records PostgreSQL had: left out */
};

struct shm_hdr {
	uint64_t	magic;
	/* Journal positions; each only moves forward. */
	uint64_t	insert_lsn;	/* next free byte (reservations) */
	uint64_t	written_lsn;	/* end of the contiguous complete frames */
	uint64_t	durable_lsn;	/* fdatasync'ed up to here */
	uint64_t	checkpoint_lsn;	/* PostgreSQL holds everything below */
	uint64_t	recovered_lsn;	/* the journal's end found at start */
	int		pg_cp_current;	/* PostgreSQL's checkpoint is of this run */
	uint64_t	start_lsn;	/* oldest byte still in the journal */
	uint64_t	seg_size;
	uint8_t		epoch[JOURNAL_EPOCH_LEN];
	int		journal_errno;	/* sticky I/O error: refuse increments */
	int		pg_up;		/* flusher's last word on PostgreSQL */
	int		flusher_tried;	/* its first connection attempt ended */
	/*
	 * The flusher has taken back this node's Idempotency-Keys from
	 * PostgreSQL (flusher_load_keys); until then a worker cannot tell
	 * a key's reuse from its first use.  Never cleared: a respawned
	 * flusher finds them in the shared table still.
	 */
	int		keys_loaded;
	uint64_t	flush_seq;	/* bumped to ask the flusher to run now */
	/*
	 * The flush_seq value whose frames the syncer has made durable:
	 * everything written when that request was made (sync = interval
	 * would otherwise leave it in the page cache for sync_interval,
	 * and so out of the flusher's reach).  The syncer serves a request
	 * at once, then wakes the flusher.
	 */
	uint64_t	flush_synced;
	uint64_t	flush_done;	/* flush_synced value last served */
	int		syncer_efd;	/* eventfd: a frame was published */
	int		flusher_efd;	/* eventfd: flush requested */
	uint32_t	nslots;
	struct shm_stats stats;
	struct shm_slot	slots[CONFIG_MAX_WORKERS];
	/*
	 * Reservations of workers that died before publishing them, copied
	 * here by the master when it reaps the worker (shm_orphan_add: the
	 * worker's own entry first, any free one else); the syncer covers
	 * them with padding so the journal does not stall, and frees the
	 * entry.  0: free.
	 */
	uint64_t	orphan_start[CONFIG_MAX_WORKERS];
	uint64_t	orphan_end[CONFIG_MAX_WORKERS];
	/* The range was only being tried for (res_try): it may be another's. */
	int		orphan_unsure[CONFIG_MAX_WORKERS];
	int		sync_failed;	/* an fdatasync failed: never ack again */
	/*
	 * Settings SIGHUP may change: the master writes them, then bumps
	 * reload_gen; each child applies them when it sees a new value.
	 */
	uint64_t	reload_gen;
	/* Bumped after the master reopened server.log_file: reopen it too. */
	uint64_t	log_gen;
	uint64_t	flush_interval_us;
	int		log_level;
	struct metrics_shm metrics;
	/*
	 * A damaged frame found at run time (0: none): flushing stops there
	 * and /readyz says so.  corrupt_why is written before corrupt_lsn.
	 */
	uint64_t	corrupt_lsn;
	char		corrupt_why[96];
};

struct shm {
	struct shm_hdr	*hdr;
	struct counters	*counters;
	struct idem_table *idem;
	struct ratelimit *rl;
	/* Counter table owners: worker slot i, then the flusher (SHM_FLUSHER). */
	struct counter_owner *owners[CONFIG_MAX_WORKERS + 1];
	void		*base;
	size_t		 size;
};

#define SHM_FLUSHER	CONFIG_MAX_WORKERS

/* Map and initialise the region for cf.  -1 with errno on failure. */
int	shm_create(struct shm *s, const struct config *cf);
int	shm_huge_pages(char *policy, size_t len);
void	shm_destroy(struct shm *s);

/* An orphan entry being filled in: the syncer leaves it alone. */
#define SHM_ORPHAN_BUSY	UINT64_MAX
/*
 * Hand the syncer a dead writer's range [start, end), unsure when the
 * writer only tried for it.  Entry 'prefer' first, else any free one.
 * -1: every entry is taken.
 */
int	shm_orphan_add(struct shm_hdr *h, int prefer, uint64_t start,
	    uint64_t end, int unsure);

/* Relaxed-enough helpers for the shared positions. */
static inline uint64_t
shm_load(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void
shm_store(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* Move *p forward to v unless it is already there. */
static inline void
shm_advance(uint64_t *p, uint64_t v)
{
	uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);

	while (cur < v && !__atomic_compare_exchange_n(p, &cur, v, 0,
	    __ATOMIC_RELEASE, __ATOMIC_RELAXED))
		;
}

static inline void
shm_count(uint64_t *p, uint64_t n)
{
	__atomic_fetch_add(p, n, __ATOMIC_RELAXED);
}

#endif
