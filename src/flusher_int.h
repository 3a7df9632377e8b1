/*
 * The flusher's own state, shared by its files: flusher.c (the process,
 * reading the journal and committing batches), flusher_claim.c (a
 * batch's Idempotency-Keys, claimed in PostgreSQL) and flusher_park.c (a
 * batch PostgreSQL refuses for its data, applied record by record, with
 * what it still refuses parked in tally_rejected).  Nothing outside the
 * flusher includes this.
 */
#ifndef TALLY_FLUSHER_INT_H
#define TALLY_FLUSHER_INT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "counters.h"
#include "journal.h"
#include "pg.h"
#include "request.h"
#include "shm.h"

/* One key of the batch being built. */
struct fl_ent {
	uint64_t	hash;
	size_t		off;		/* key bytes in the arena */
	uint32_t	len;
	int64_t		sum;		/* delta of this batch, to apply */
	int64_t		dropped;	/* keyed deltas PostgreSQL had already */
	int64_t		total;		/* PostgreSQL's answer */
	int64_t		rejected;	/* deltas parked in tally_rejected */
	int		returned;
	int		overflow;	/* sum left int64: record by record */
};

struct fl_keyed {
	size_t		ent;		/* its key's entry */
	size_t		ik_off;		/* Idempotency-Key bytes in the arena */
	uint8_t		ik_len;
	int64_t		value;
	uint64_t	time_us;
	uint64_t	lsn;		/* of its frame */
	int64_t		total;		/* answered with, if has_total */
	int		has_total;
	uint32_t	use;		/* of its Idempotency-Key here, from 0 */
	uint32_t	first;		/* that key's first record here */
	uint32_t	cur;		/* on a first: the record being claimed */
	int		applied;
	int		rejected;
	int		mismatch;	/* PostgreSQL holds its key for another */
};

/* A record of one key, as the per-record path sends it. */
struct fl_rec {
	int64_t		value;
	uint64_t	lsn;
	long		keyed;		/* its fl_keyed, or -1 */
};

/* A record PostgreSQL refused, to park. */
struct fl_rej {
	size_t		ent;
	int64_t		value;
	uint64_t	lsn;
	long		keyed;		/* its fl_keyed, or -1 */
	char		sqlstate[6];	/* "": set aside by tallyd itself */
	char		reason[512];
};

/* Keys summed per batch: insertion-ordered entries and an index. */
struct fl_batch {
	struct fl_ent	*ents;
	size_t		 n, cap;
	uint32_t	*index;		/* entry number + 1; 0: free */
	size_t		 icap;		/* power of two */
	char		*arena;
	size_t		 alen, acap;
	struct pg_kv	*kv;
	size_t		 kvcap;
	/* Records with an Idempotency-Key: applied only if PostgreSQL
	 * has not seen the key (it may have, from another node). */
	struct fl_keyed	*keyed;
	size_t		 nkeyed, keyedcap;
	/* By Idempotency-Key: the first keyed record + 1 (0: free), and
	 * for each record the next with the same key + 1 (0: none). */
	uint32_t	*kindex;
	size_t		 kicap;		/* power of two */
	uint32_t	*knext;
	size_t		 kncap;
	struct pg_idem	*idem;
	uint64_t	 from, upto;	/* the journal range summed */
	struct fl_rec	*recs;		/* the key being isolated */
	size_t		 nrecs, reccap;
	struct fl_rej	*rej;
	size_t		 nrej, rejcap;
	size_t		 ndup;		/* keyed records PostgreSQL had */
	struct pg_reject *prej;
	uint64_t	 answer_wait_us; /* spent waiting for answers */
};

#define FL_PRELOAD_PAGE	10000	/* keys read ahead per statement */
#define FL_PRELOAD_KEY	REQUEST_MAX_KEY_BYTES

struct flusher {
	const struct config	*cf;
	struct shm		*shm;
	struct shm_hdr		*h;
	struct journal		 j;
	struct pg		 pg;
	struct fl_batch		 b;
	uint8_t			*raw;
	char			 epoch_hex[33];
	int			 connected;
	/*
	 * This node's checkpoint row as PostgreSQL holds it for this epoch,
	 * as last read or written: a batch goes in only on top of it.
	 */
	int			 pg_cp_known;
	uint64_t		 pg_cp_lsn;
	int			 outage_logged;
	char			 last_err[600];	/* last error logged */
	uint64_t		 bad_lsn;	/* flushing stops here */
	int			 isolate;	/* the batch was refused */
	uint64_t		 refresh_slot;	/* round-robin cursor */
	char			 others[128];	/* pg_others_mark() last seen */
	int			 shared;	/* other nodes flush too */
	uint64_t		 backoff_ms;
	uint64_t		 retry_at_us;
	uint64_t		 stop_deadline_us;
	int			 ckp_warned;
	int			 skip_warned;	/* flusher_reconcile cannot skip */
	int			 preload_tried;	/* flusher_preload, once */
	char			 pre_key[FL_PRELOAD_KEY]; /* its last key */
	size_t			 pre_len;
	int			 pre_full;
	int			 keys_loaded;	/* from PostgreSQL, once */
	int			 keys_left;	/* ... not all: no room */
	uint64_t		 next_prune_us;
	/* For the committed-value lookups: keys copied out of the table. */
	char			*lk_keys;
	struct pg_kv		*lk_kv;
	struct counter_owner	*own;	/* for changes to the table */
};

/* Two's complement sum: deltas that leave int64 on the way still net out. */
static inline int64_t
wrap_add(int64_t a, int64_t b)
{
	return (int64_t)((uint64_t)a + (uint64_t)b);
}

/* flusher_claim.c: within the transaction, before the upserts. */
int	flusher_claim(struct flusher *fl);

/* flusher_park.c */
void	flusher_row_cb(void *arg, const struct pg_kv *row, int64_t value);
int	flusher_reject_as(struct flusher *fl, size_t ent, int64_t value,
	    uint64_t lsn, long keyed, const char *sqlstate, const char *why);
int	flusher_reject(struct flusher *fl, size_t ent, int64_t value,
	    uint64_t lsn, long keyed);
int	flusher_isolate_key(struct flusher *fl, struct fl_ent *e);
int	flusher_upsert_split(struct flusher *fl, struct pg_kv *kv, size_t n);
int	flusher_refused(struct flusher *fl, const char *what);
int	flusher_park(struct flusher *fl);
void	flusher_log_parked(struct flusher *fl);

#endif
