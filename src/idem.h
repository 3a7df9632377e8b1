/*
 * The Idempotency-Key table: a fixed-capacity hash table in the shared
 * region that remembers, per Idempotency-Key, the request it was first
 * used with and, once that request is durable, its response, until the
 * key expires (or, the table full, its room is needed and PostgreSQL
 * holds it).  Workers use it concurrently without a lock; the master
 * releases the claims of a worker that died.  Like the counter table it
 * is a cache, rebuilt at start from the journal (idem_restore).
 */
#ifndef TALLY_IDEM_H
#define TALLY_IDEM_H

#include <sys/types.h>

#include <stddef.h>
#include <stdint.h>

#define IDEM_MAX_IK_BYTES	255
/* An entry's LSN when its request is not known to be in PostgreSQL. */
#define IDEM_LSN_NONE		UINT64_MAX

struct idem_table;		/* header and slots, in the shared region */
struct idem_entry;		/* a claim, handed back by idem_begin */

enum idem_result {
	IDEM_NEW,		/* claimed: process, then complete or abort */
	IDEM_INFLIGHT,		/* the first use is not answered yet: 409 */
	IDEM_REPLAY,		/* same request answered: *status, *total */
	IDEM_MISMATCH,		/* the key was used for another request: 422 */
	IDEM_FULL		/* no room (or lengths out of range): 503 */
};

/* Bytes needed for max_keys keys with counter keys of max_key_bytes. */
size_t	idem_size(uint64_t max_keys, size_t max_key_bytes);
/* Initialise a zero-filled area of idem_size() bytes. */
struct idem_table *idem_init(void *mem, uint64_t max_keys,
	    size_t max_key_bytes);

/*
 * Look up the Idempotency-Key ik (1..255 bytes).  When it is absent or
 * expired at now_us, claim it IN FLIGHT for owner (a pid) and the request
 * (key, value), set *out and return IDEM_NEW; the owner must then call
 * idem_complete or idem_abort.  IDEM_REPLAY fills *status and *total from
 * the kept response.  Otherwise *out is NULL.
 */
enum idem_result idem_begin(struct idem_table *t, const char *ik,
	    size_t ik_len, const char *key, size_t key_len, int64_t value,
	    uint64_t now_us, pid_t owner, struct idem_entry **out,
	    int *status, int64_t *total);
/*
 * The claimed request is durable and answered: keep it until expires_us.
 * lsn is the end of the journal frame that holds it (0: PostgreSQL holds
 * it already; IDEM_LSN_NONE: not known).
 */
void	idem_complete(struct idem_table *t, struct idem_entry *e, int status,
	    int64_t total, uint64_t expires_us, uint64_t lsn);
/*
 * The total the request (ik, key, value), journaled in the frame ending
 * at lsn, was answered with: 1 and *total while the table keeps it, -1
 * while a request (ik, key, value) is still in flight (its frame may be
 * durable before its worker answers), else 0.  The flusher keeps it in
 * PostgreSQL with the key, so that a retry after a restart, or one a node
 * looks up there, gets it too.
 */
int	idem_answered(struct idem_table *t, const char *ik, size_t ik_len,
	    const char *key, size_t key_len, int64_t value, uint64_t lsn,
	    int64_t *total);
/* The claimed request was refused: forget the claim. */
void	idem_abort(struct idem_table *t, struct idem_entry *e);

/*
 * Recovery, before the workers run: a durable keyed request found in the
 * journal, with the status to replay and sum, its counter key's journaled
 * sum from the checkpoint to it.  Replaces a kept entry for the same ik.
 * -1 when there is no room.
 *
 * The total first answered was that sum plus the key's total at the
 * checkpoint, which only PostgreSQL knows.  So at the end of the replay
 * idem_restore_end takes, for each restored entry, sum() of its key, the
 * journaled sum of all the replay, and keeps how much came after the
 * entry; once PostgreSQL's totals are in the counter table,
 * idem_rebase takes sum() again, the key's total now, and the entry
 * answers that total less what came after it: the first answer again,
 * but for increments of the key that were in flight with it (and, when
 * PostgreSQL was down at start, unkeyed ones taken since; with other
 * nodes, what they flushed since).  Both run in one process while no
 * worker takes keyed requests.  sum returns -1 for a key it cannot tell;
 * the entry is left as it is.
 */
typedef int (*idem_sum_fn)(void *arg, const char *key, size_t key_len,
	    int64_t *sum);
int	idem_restore(struct idem_table *t, const char *ik, size_t ik_len,
	    const char *key, size_t key_len, int64_t value, int status,
	    int64_t sum, uint64_t expires_us, uint64_t lsn);
void	idem_restore_end(struct idem_table *t, idem_sum_fn sum, void *arg);
void	idem_rebase(struct idem_table *t, idem_sum_fn sum, void *arg);

/*
 * Forgetting.  When the table holds max_keys entries, a claim gives up
 * the kept entry nearest expiry, of the few it looks at, whose request
 * PostgreSQL holds: the flusher says how far that is with idem_flushed.
 * From then until that entry would have expired, idem_forgetting is
 * true: a key the table does not know may have been used, and only
 * PostgreSQL can tell (the worker asks it before going on).
 * idem_forget_until says the same of keys never taken in (more in
 * PostgreSQL than the table holds).  Entries whose requests are not in
 * PostgreSQL are never forgotten: with none other left, a claim still
 * answers IDEM_FULL.
 */
void	idem_flushed(struct idem_table *t, uint64_t lsn);
void	idem_forget_until(struct idem_table *t, uint64_t until_us);
int	idem_forgetting(struct idem_table *t, uint64_t now_us);
uint64_t idem_forgotten(const struct idem_table *t);	/* so far */

/*
 * The wall clock of journal record times and Idempotency-Key expiries, in
 * microseconds, the same in every process.  A new use of an expired key is
 * then stamped no earlier than the expiry that let it in, and PostgreSQL,
 * which compares the stamps, agrees that it is a new use.  (The fine
 * clock runs up to a tick ahead of the coarse one: mixing them would
 * break that.)
 */
uint64_t idem_now_us(void);

/* Free the entries expired at now_us (one process, periodically). */
uint64_t idem_sweep(struct idem_table *t, uint64_t now_us);
/*
 * Master, after reaping a worker and before forking its successor: drop
 * the claims the dead process still held, so that its keys can be used
 * again (all but one it died taking, see idem.c).  With keep_journaled,
 * those whose request is in a frame it wrote (idem_journaled) stay in
 * flight, for idem_adopt_owner.  Returns how many were dropped; *kept
 * (when not NULL) gets how many stayed.
 */
uint64_t idem_release_owner(struct idem_table *t, pid_t pid,
	    int keep_journaled, uint64_t *kept);
/*
 * The request of the in-flight entry e is in the frame starting at lsn,
 * written but not yet answered.
 */
void	idem_journaled(struct idem_table *t, struct idem_entry *e,
	    uint64_t lsn);
/*
 * The dead worker pid's successor, once it has settled its increments: a
 * request in a frame that made it (published(arg, lsn, &end) returns 1
 * with the frame's end) is applied, so its entry is completed with the
 * key's total now (total(arg, key, len, &total) returns 0), as its
 * worker would have answered; its retry is then a replay, not a second
 * increment.  Other entries of pid are dropped.  Returns how many were
 * completed.
 */
uint64_t idem_adopt_owner(struct idem_table *t, pid_t pid,
	    int (*published)(void *, uint64_t, uint64_t *),
	    int (*total)(void *, const char *, size_t, int64_t *), void *arg,
	    uint64_t expires_us);

uint64_t idem_count(const struct idem_table *t);	/* in flight or kept */
uint64_t idem_capacity(const struct idem_table *t);

#endif
