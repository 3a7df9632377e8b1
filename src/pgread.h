/*
 * Asynchronous PostgreSQL look-ups for a worker's event loop: the total
 * of a key the shared table does not hold, for a GET or before the key's
 * first increment, and the use of an Idempotency-Key the shared table
 * may have forgotten.  One non-blocking libpq connection per worker; the
 * look-ups queued meanwhile go out together in one query; the loop never
 * waits on PostgreSQL.
 */
#ifndef TALLY_PGREAD_H
#define TALLY_PGREAD_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <stdint.h>

#include "config.h"

struct pgread;
struct pgread_req;

/* status: 1 found (value set), 0 no such key, -1 PostgreSQL unavailable. */
typedef void (*pgread_cb)(void *arg, int status, int64_t value);

/*
 * An Idempotency-Key's use within ttl, as PostgreSQL holds it: status 3
 * for the same request (key and value) with total the total it was
 * answered with; 1 for the same request kept without it (by an earlier
 * version), total the counter key's total there (0 when it has none);
 * 2 for another request, 0 none (or over), -1 PostgreSQL unavailable.
 * used_us: when it was used.
 */
typedef void (*pgread_idem_cb)(void *arg, int status, int64_t total,
	    uint64_t used_us);

struct pgread *pgread_new(h2o_loop_t *loop, const struct config *cf);
/*
 * Queue a look-up; cb runs later on the loop, exactly once.  The handle
 * is valid until then.
 */
struct pgread_req *pgread_lookup(struct pgread *p, const char *key,
	    size_t len, pgread_cb cb, void *arg);
struct pgread_req *pgread_lookup_idem(struct pgread *p, const char *ik,
	    size_t ik_len, const char *key, size_t key_len, int64_t value,
	    pgread_idem_cb cb, void *arg);
/* The answer is no longer wanted: no query is sent if none was yet. */
void	pgread_cancel(struct pgread_req *r);
void	pgread_free(struct pgread *p);

#endif
