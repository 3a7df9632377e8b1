/*
 * Metrics: what the processes count in the shared region and how it is
 * read back out, as the Prometheus text format (GET /metrics) or as
 * StatsD lines (statsd.c).
 *
 * Plain counters live in struct shm_stats.  What a worker records on
 * every request (requests by route and status, the latency histogram)
 * lives in its own slot, a cache line apart from the others, so workers
 * never contend for a line; a scrape sums the slots.  Histograms have
 * fixed buckets and are only ever added to.
 */
#ifndef TALLY_METRICS_H
#define TALLY_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "config.h"

/* Upper bounds of the histogram buckets, in ns; one more bucket: +Inf. */
#define METRICS_NBOUNDS	17
#define METRICS_NBUCKETS (METRICS_NBOUNDS + 1)
extern const uint64_t metrics_bounds_ns[METRICS_NBOUNDS];

struct metrics_hist {
	uint64_t	bucket[METRICS_NBUCKETS];	/* not cumulative */
	uint64_t	sum_ns;
};

/* Routes as requests are labelled; the order of metrics_route_names. */
enum metrics_route {
	METRICS_ROUTE_INCREMENT,	/* POST /increment */
	METRICS_ROUTE_GET,		/* GET /increment/{key} */
	METRICS_ROUTE_HEALTHZ,
	METRICS_ROUTE_READYZ,
	METRICS_ROUTE_METRICS,
	METRICS_ROUTE_OTHER,
	METRICS_NROUTES
};

/* Status codes tallyd answers, plus one for any other. */
#define METRICS_NCODES	16

/* Processes the master restarts, as restarts are labelled. */
enum metrics_role {
	METRICS_ROLE_WORKER,
	METRICS_ROLE_SYNCER,
	METRICS_ROLE_FLUSHER,
	METRICS_NROLES
};

/* One worker's own counts: only that worker writes here. */
struct metrics_slot {
	uint64_t		requests[METRICS_NROUTES][METRICS_NCODES];
	struct metrics_hist	latency;
} __attribute__((aligned(64)));

/* The part of the shared region that is metrics only. */
struct metrics_shm {
	struct metrics_slot	slots[CONFIG_MAX_WORKERS];
	struct metrics_hist	fsync __attribute__((aligned(64)));
	struct metrics_hist	flush __attribute__((aligned(64)));
	uint64_t		restarts[METRICS_NROLES];
	int			pg_connected;	/* ever, since start */
};

struct shm;

/*
 * Everything a scrape or a push reports, summed over the slots; the
 * table in metrics.c names each field.
 */
struct metrics_snap {
	uint64_t	requests[METRICS_NROUTES][METRICS_NCODES];
	uint64_t	restarts[METRICS_NROLES];
	uint64_t	increments, replays, ratelimited, key_lookups;
	uint64_t	idem_lookups, idem_forgotten, idem_duplicates;
	uint64_t	journal_bytes, frames, fsyncs;
	uint64_t	flushes, rows_upserted, pg_errors, pg_reconnects;
	uint64_t	rejected;
	uint64_t	insert_lsn, written_lsn, durable_lsn, checkpoint_lsn;
	uint64_t	backlog, pg_up;
	uint64_t	keys, keys_capacity, idem_keys, idem_capacity;
	struct metrics_hist latency, fsync, flush;
};

/* Monotonic time in ns: the start of what a histogram measures. */
static inline uint64_t
metrics_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

/* Count one duration of d ns. */
static inline void
metrics_hist_record(struct metrics_hist *h, uint64_t d)
{
	int i = 0;

	/* Most samples are short: a scan from the bottom ends early. */
	while (i < METRICS_NBOUNDS && d > metrics_bounds_ns[i])
		i++;
	__atomic_fetch_add(&h->bucket[i], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&h->sum_ns, d, __ATOMIC_RELAXED);
}

/* Count one duration that started at t0 (metrics_now()). */
static inline void
metrics_hist_add(struct metrics_hist *h, uint64_t t0)
{
	metrics_hist_record(h, metrics_now() - t0);
}

/* The route label of a request path (query and /api/v1 allowed). */
enum metrics_route metrics_route(const char *path, size_t len);
/*
 * One answered request: its route, status and, when t0 is not 0, its
 * latency from t0 (metrics_now() at arrival) to now (metrics_now(), or
 * 0 to read the clock here).
 */
void	metrics_request(struct metrics_slot *s, enum metrics_route route,
	    int status, uint64_t t0, uint64_t now);
/* A child of the master restarted (proc_role: see proc.h). */
void	metrics_restart(struct metrics_shm *m, int proc_role);

void	metrics_snapshot(const struct shm *shm, struct metrics_snap *snap);
/*
 * The Prometheus text format of snap into buf.  Returns the length, or
 * the length needed when that is cap or more (snprintf's contract).
 */
size_t	metrics_render(const struct metrics_snap *snap, char *buf, size_t cap);
/*
 * StatsD lines of cur, prefixed by prefix and a dot: counters as their
 * increase since prev (|c, omitted when 0), gauges as they are (|g),
 * histograms as the mean duration of the samples since prev (|ms, in
 * milliseconds, omitted when there were none).  emit gets each line
 * without its newline.
 */
void	metrics_statsd(const struct metrics_snap *cur,
	    const struct metrics_snap *prev, const char *prefix,
	    void (*emit)(void *, const char *, size_t), void *arg);

#endif
