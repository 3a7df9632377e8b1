/*
 * The flusher's PostgreSQL statements.  One connection, used by one
 * process; libpq runs in non-blocking mode underneath so that every wait
 * is a short poll() and the caller can give up (a stop signal), but to
 * the caller each function simply returns when the statement is done.
 */
#ifndef TALLY_PG_H
#define TALLY_PG_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

/*
 * One key of a batch; value is the delta (upsert) or unused (lookup), ref
 * the caller's own number for the key, handed back with its row.
 */
struct pg_kv {
	const char	*key;
	size_t		 len;
	int64_t		 value;
	size_t		 ref;
};

/*
 * Asked while waiting on PostgreSQL, at least every 250 ms: nonzero
 * abandons the statement (the connection is dropped, so whatever was in
 * progress rolls back, or its outcome is unknown for a COMMIT).
 */
typedef int (*pg_abort_fn)(void *arg, uint64_t waited_us);

/* A keyed (Idempotency-Key) record of a batch. */
struct pg_idem {
	const char	*ik;
	size_t		 ik_len;
	const char	*key;
	size_t		 key_len;
	int64_t		 value;
	uint64_t	 time_us;	/* when it was accepted (wall clock) */
	int64_t		 total;		/* answered with, if has_total */
	int		 has_total;
};

/*
 * An Idempotency-Key: claimed by this batch, or found by pg_idem_load
 * (with its request and the total it was answered with).
 */
typedef void (*pg_idem_fn)(void *arg, const char *ik, size_t ik_len,
	    const char *key, size_t key_len, int64_t value, uint64_t time_us,
	    int64_t total);

/* A row of an upsert: PostgreSQL's new total for the key of row. */
typedef void (*pg_row_fn)(void *arg, const struct pg_kv *row, int64_t value);
/* A lookup answer for input i: found, and the value if found. */
typedef void (*pg_value_fn)(void *arg, size_t i, int found, int64_t value);

struct pg {
	PGconn		*conn;
	char		 schema[256];	/* quoted identifier */
	char		 schema_name[128]; /* as configured */
	char		 node[128];
	pg_abort_fn	 abort_fn;
	void		*abort_arg;
	/* The last error. */
	int		 broken;	/* the connection is gone: reconnect */
	char		 sqlstate[6];	/* "" when not from the server */
	char		 err[512];
	/* Scratch for array literals, grown as needed. */
	char		*buf;
	size_t		 bufcap;
	/* Scratch for pg_upsert: which keys had a row. */
	uint8_t		*seen;
	size_t		 seencap;
};

void	pg_init(struct pg *pg, const char *node, pg_abort_fn abort_fn,
	    void *abort_arg);
/*
 * Connect with dsn (empty: the PG* environment), adding a connect timeout
 * and application_name unless they are given.  -1 with pg->err set; the
 * DSN itself (and so any password) never appears in pg->err.
 */
int	pg_connect(struct pg *pg, const char *dsn, const char *appname,
	    const char *schema);
void	pg_close(struct pg *pg);
void	pg_free(struct pg *pg);

/* Create schema and tables if missing; tolerates a concurrent creator. */
int	pg_ensure_schema(struct pg *pg);
/*
 * About how many rows tally_counters holds (the planner's estimate: no
 * scan; 0 when it has none).  -1 on error.
 */
int64_t	pg_counters_estimate(struct pg *pg);
/*
 * Up to limit rows of tally_counters whose key sorts after the len bytes
 * of after (len 0: from the first), in key order, each handed to cb.
 * Returns how many, -1 on error.
 */
typedef void (*pg_counter_fn)(void *arg, const char *key, size_t len,
	    int64_t value);
int	pg_counters_page(struct pg *pg, const char *after, size_t len,
	    int limit, pg_counter_fn cb, void *arg);
/* This node's checkpoint row: 1 found, 0 none, -1 error. */
int	pg_checkpoint_get(struct pg *pg, char epoch_hex[33], uint64_t *lsn);
/*
 * Within a transaction: write this node's checkpoint row, if it still
 * holds *expect for this epoch (NULL: if it holds another epoch, or is
 * missing).  1 written, 0 the row moved, -1 error.
 */
int	pg_checkpoint_put(struct pg *pg, const char *epoch_hex, uint64_t lsn,
	    const uint64_t *expect);
/*
 * What changes whenever another node flushes: sig, at most len bytes.
 * *shared is set when another node flushed within the last two hours
 * (longer than any flush_interval): see pg_upsert.
 */
int	pg_others_mark(struct pg *pg, char *sig, size_t len, int *shared);

/*
 * BEGIN, with the planner held to nested loops for the transaction: see
 * pg_upsert.
 */
int	pg_begin(struct pg *pg);
int	pg_commit(struct pg *pg);
/* Best effort; drops the connection when even that fails. */
void	pg_rollback(struct pg *pg);

/*
 * Sort kv by key, in memcmp() order with a key before its extensions:
 * the order every node upserts in, so that two nodes' batches lock the
 * keys they share in the same order and cannot deadlock; PostgreSQL's
 * index pages are then also visited in turn.  -1: out of memory (kv is
 * then sorted all the same, only more slowly).
 */
int	pg_kv_sort(struct pg_kv *kv, size_t n);

/*
 * Within a transaction begun by pg_begin: add kv[i].value to each key;
 * row_fn gets the new totals.  The keys must be distinct and sorted by
 * pg_kv_sort.  shared: other nodes flush into the table too.  -1 on
 * error.
 */
int	pg_upsert(struct pg *pg, const struct pg_kv *kv, size_t n, int shared,
	    pg_row_fn row_fn, void *arg);
/*
 * Within a transaction: record the Idempotency-Keys of a batch (their
 * ik must be distinct).  fn is called for each key that was new, or whose
 * earlier use is ttl_us or more older than this one (the node's own
 * rule for an expired key): only those records may be applied; the
 * others were already counted, possibly by another node.  -1 on error.
 */
int	pg_idem_claim(struct pg *pg, const struct pg_idem *v, size_t n,
	    uint64_t ttl_us, pg_idem_fn fn, void *arg);
/*
 * Within the same transaction, for records pg_idem_claim did not claim:
 * fn is called for each whose key PostgreSQL holds with another
 * fingerprint, i.e. a use for a different request, not a replay.
 */
int	pg_idem_mismatched(struct pg *pg, const struct pg_idem *v, size_t n,
	    pg_idem_fn fn, void *arg);
/* This node's keys used within ttl_us, newest first, at most limit. */
int	pg_idem_load(struct pg *pg, uint64_t ttl_us, uint64_t limit,
	    pg_idem_fn fn, void *arg);
/* Delete keys older than ttl_us.  Returns how many, -1 on error. */
int64_t	pg_idem_prune(struct pg *pg, uint64_t ttl_us);

/* A journal record PostgreSQL refused for its data. */
struct pg_reject {
	const char	*key;
	size_t		 key_len;
	int64_t		 value;
	const char	*ik;		/* its Idempotency-Key, or NULL */
	size_t		 ik_len;
	uint64_t	 lsn;		/* of its journal frame */
	char		 sqlstate[6];
	const char	*reason;	/* PostgreSQL's message */
};

/*
 * Within a transaction: nested attempts.  pg_savepoint_undo rolls back to
 * the savepoint and drops it, keeping pg->err of the failure that led to
 * it; pg_savepoint_release keeps what was done since.
 */
int	pg_savepoint(struct pg *pg);
int	pg_savepoint_release(struct pg *pg);
int	pg_savepoint_undo(struct pg *pg);
/* The last error was about the data sent (SQLSTATE class 22 or 23). */
int	pg_is_data_error(const struct pg *pg);
/* Within a transaction: park records in tally_rejected.  -1 on error. */
int	pg_reject(struct pg *pg, const char *epoch_hex,
	    const struct pg_reject *v, size_t n);

/* Current values of kv[0..n) keys; value_fn is called once per key. */
int	pg_lookup(struct pg *pg, const struct pg_kv *kv, size_t n,
	    pg_value_fn value_fn, void *arg);

#endif
