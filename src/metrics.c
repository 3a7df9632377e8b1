/*
 * Metrics: one table names every metric (its type, help text and where
 * its value sits in a snapshot); the Prometheus and StatsD renderers both
 * walk it, so the two never disagree on what exists.
 *
 * A snapshot is taken first, with relaxed loads summed over the worker
 * slots: rendering then works on plain memory, and a histogram's _count
 * is the sum of its own buckets, so it always equals its +Inf bucket.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "metrics.h"
#include "proc.h"
#include "shm.h"

#define PROM_PREFIX	"tallyd_"

const uint64_t metrics_bounds_ns[METRICS_NBOUNDS] = {
	50000, 100000, 250000, 500000,
	1000000, 2500000, 5000000, 10000000, 25000000, 50000000,
	100000000, 250000000, 500000000,
	1000000000, 2500000000ULL, 5000000000ULL, 10000000000ULL
};
/* The same bounds in seconds, as the le label shows them. */
static const char *const bounds_le[METRICS_NBOUNDS] = {
	"5e-05", "0.0001", "0.00025", "0.0005",
	"0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
	"0.1", "0.25", "0.5",
	"1", "2.5", "5", "10"
};

static const char *const route_names[METRICS_NROUTES] = {
	"increment", "get", "healthz", "readyz", "metrics", "other"
};

/* The last entry (0) stands for any other code. */
static const int codes[METRICS_NCODES] = {
	200, 202, 400, 404, 405, 408, 409, 413, 414, 415, 422, 429, 431,
	500, 503, 0
};

static const char *
code_label(int c, char *buf, size_t cap)
{
	if (codes[c] == 0)
		return "other";
	snprintf(buf, cap, "%d", codes[c]);
	return buf;
}

static const char *const role_names[METRICS_NROLES] = {
	"worker", "syncer", "flusher"
};

enum mtype {
	MT_COUNTER,
	MT_GAUGE,
	MT_HIST,
	MT_REQUESTS,	/* counter by route and code */
	MT_RESTARTS	/* counter by role */
};

struct mdef {
	const char	*name;		/* after "tallyd_" */
	const char	*statsd;	/* after the StatsD prefix */
	enum mtype	 type;
	size_t		 off;		/* in struct metrics_snap */
	const char	*help;
};

#define S(f)	offsetof(struct metrics_snap, f)
static const struct mdef mdefs[] = {
	{ "http_requests_total", "http_requests", MT_REQUESTS, S(requests),
	  "HTTP requests answered, by route and status code." },
	{ "request_duration_seconds", "request_duration", MT_HIST, S(latency),
	  "Time from a request's arrival to its answer." },
	{ "increments_total", "increments", MT_COUNTER, S(increments),
	  "Increments applied (durable and acknowledged)." },
	{ "idempotent_replays_total", "idempotent_replays", MT_COUNTER,
	  S(replays),
	  "Requests answered from a kept Idempotency-Key response." },
	{ "key_lookups_total", "key_lookups", MT_COUNTER, S(key_lookups),
	  "Increments of keys not held that asked PostgreSQL for the total." },
	{ "idempotency_lookups_total", "idempotency_lookups", MT_COUNTER,
	  S(idem_lookups), "Idempotency-Keys not held that were looked up "
	  "in PostgreSQL." },
	{ "idempotency_duplicates_total", "idempotency_duplicates",
	  MT_COUNTER, S(idem_duplicates), "Increments with an "
	  "Idempotency-Key the flusher left out: PostgreSQL held the key "
	  "already." },
	{ "ratelimited_requests_total", "ratelimited_requests", MT_COUNTER,
	  S(ratelimited), "Requests refused by the rate limit." },
	{ "journal_bytes_total", "journal_bytes", MT_COUNTER,
	  S(journal_bytes), "Journal bytes written." },
	{ "journal_frames_total", "journal_frames", MT_COUNTER, S(frames),
	  "Journal frames written." },
	{ "journal_fsyncs_total", "journal_fsyncs", MT_COUNTER, S(fsyncs),
	  "Journal fdatasync calls that succeeded." },
	{ "journal_fsync_duration_seconds", "journal_fsync_duration", MT_HIST,
	  S(fsync), "Duration of the journal's fdatasync calls." },
	{ "journal_insert_lsn", "journal_insert_lsn", MT_GAUGE, S(insert_lsn),
	  "End of the journal space reserved by workers." },
	{ "journal_written_lsn", "journal_written_lsn", MT_GAUGE,
	  S(written_lsn), "End of the contiguous written journal." },
	{ "journal_durable_lsn", "journal_durable_lsn", MT_GAUGE,
	  S(durable_lsn), "End of the journal on disk." },
	{ "journal_checkpoint_lsn", "journal_checkpoint_lsn", MT_GAUGE,
	  S(checkpoint_lsn), "End of the journal held by PostgreSQL." },
	{ "journal_backlog_bytes", "journal_backlog_bytes", MT_GAUGE,
	  S(backlog), "Journal bytes not yet in PostgreSQL." },
	{ "flushes_total", "flushes", MT_COUNTER, S(flushes),
	  "Transactions committed to PostgreSQL." },
	{ "flush_duration_seconds", "flush_duration", MT_HIST, S(flush),
	  "Duration of the flusher's committed transactions." },
	{ "rows_upserted_total", "rows_upserted", MT_COUNTER,
	  S(rows_upserted), "Counter rows upserted into PostgreSQL." },
	{ "postgres_errors_total", "postgres_errors", MT_COUNTER, S(pg_errors),
	  "PostgreSQL errors and failed connections." },
	{ "postgres_reconnects_total", "postgres_reconnects", MT_COUNTER,
	  S(pg_reconnects),
	  "Connections to PostgreSQL made after the first one." },
	{ "postgres_up", "postgres_up", MT_GAUGE, S(pg_up),
	  "1 when the flusher is connected to PostgreSQL." },
	{ "rejected_records_total", "rejected_records", MT_COUNTER,
	  S(rejected), "Journal records PostgreSQL refused, set aside." },
	{ "keys", "keys", MT_GAUGE, S(keys),
	  "Keys held in the shared counter table." },
	{ "keys_capacity", "keys_capacity", MT_GAUGE, S(keys_capacity),
	  "Capacity of the shared counter table." },
	{ "idempotency_keys", "idempotency_keys", MT_GAUGE, S(idem_keys),
	  "Idempotency-Keys held." },
	{ "idempotency_keys_capacity", "idempotency_keys_capacity", MT_GAUGE,
	  S(idem_capacity), "Capacity of the Idempotency-Key table." },
	{ "idempotency_keys_forgotten_total", "idempotency_keys_forgotten",
	  MT_COUNTER, S(idem_forgotten), "Idempotency-Keys held in PostgreSQL "
	  "that the full table gave up for new ones." },
	{ "process_restarts_total", "process_restarts", MT_RESTARTS,
	  S(restarts), "Child processes restarted after an unexpected exit." },
};
#undef S

enum metrics_route
metrics_route(const char *p, size_t len)
{
	size_t q;

	for (q = 0; q < len && p[q] != '?'; q++)
		;
	len = q;
	if (len >= 7 && memcmp(p, "/api/v1", 7) == 0 &&
	    (len == 7 || p[7] == '/')) {
		p += 7;
		len -= 7;
	}
#define IS(s) (len == sizeof(s) - 1 && memcmp(p, s, len) == 0)
	if (IS("/increment"))
		return METRICS_ROUTE_INCREMENT;
	if (len > 11 && memcmp(p, "/increment/", 11) == 0)
		return METRICS_ROUTE_GET;
	if (IS("/healthz"))
		return METRICS_ROUTE_HEALTHZ;
	if (IS("/readyz"))
		return METRICS_ROUTE_READYZ;
	if (IS("/metrics"))
		return METRICS_ROUTE_METRICS;
#undef IS
	return METRICS_ROUTE_OTHER;
}

void
metrics_request(struct metrics_slot *s, enum metrics_route route,
    int status, uint64_t t0, uint64_t now)
{
	int c;

	for (c = 0; c < METRICS_NCODES - 1 && codes[c] != status; c++)
		;
	if ((unsigned)route >= METRICS_NROUTES)
		route = METRICS_ROUTE_OTHER;
	__atomic_fetch_add(&s->requests[route][c], 1, __ATOMIC_RELAXED);
	if (t0 == 0)
		return;
	if (now == 0)
		now = metrics_now();
	metrics_hist_record(&s->latency, now > t0 ? now - t0 : 0);
}

void
metrics_restart(struct metrics_shm *m, int proc_role)
{
	int r;

	switch (proc_role) {
	case PROC_WORKER:
		r = METRICS_ROLE_WORKER;
		break;
	case PROC_SYNCER:
		r = METRICS_ROLE_SYNCER;
		break;
	case PROC_FLUSHER:
		r = METRICS_ROLE_FLUSHER;
		break;
	default:
		return;
	}
	__atomic_fetch_add(&m->restarts[r], 1, __ATOMIC_RELAXED);
}

#define LOAD(x)	__atomic_load_n(&(x), __ATOMIC_RELAXED)

static void
hist_sum(struct metrics_hist *to, const struct metrics_hist *from)
{
	for (int i = 0; i < METRICS_NBUCKETS; i++)
		to->bucket[i] += LOAD(from->bucket[i]);
	to->sum_ns += LOAD(from->sum_ns);
}

void
metrics_snapshot(const struct shm *shm, struct metrics_snap *sn)
{
	const struct shm_hdr *h = shm->hdr;
	const struct shm_stats *st = &h->stats;
	const struct metrics_shm *m = &h->metrics;

	memset(sn, 0, sizeof(*sn));
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++) {
		const struct metrics_slot *s = &m->slots[i];

		for (int r = 0; r < METRICS_NROUTES; r++)
			for (int c = 0; c < METRICS_NCODES; c++)
				sn->requests[r][c] += LOAD(s->requests[r][c]);
		hist_sum(&sn->latency, &s->latency);
	}
	hist_sum(&sn->fsync, &m->fsync);
	hist_sum(&sn->flush, &m->flush);
	for (int r = 0; r < METRICS_NROLES; r++)
		sn->restarts[r] = LOAD(m->restarts[r]);
	sn->increments = LOAD(st->increments);
	sn->replays = LOAD(st->replays);
	sn->key_lookups = LOAD(st->key_lookups);
	sn->idem_lookups = LOAD(st->idem_lookups);
	sn->idem_duplicates = LOAD(st->idem_duplicates);
	sn->ratelimited = LOAD(st->ratelimited);
	sn->journal_bytes = LOAD(st->journal_bytes);
	sn->frames = LOAD(st->frames);
	sn->fsyncs = LOAD(st->fsyncs);
	sn->flushes = LOAD(st->flushes);
	sn->rows_upserted = LOAD(st->rows_upserted);
	sn->pg_errors = LOAD(st->pg_errors);
	sn->pg_reconnects = LOAD(st->pg_reconnects);
	sn->rejected = LOAD(st->rejected);
	sn->insert_lsn = shm_load(&h->insert_lsn);
	sn->written_lsn = shm_load(&h->written_lsn);
	sn->durable_lsn = shm_load(&h->durable_lsn);
	sn->checkpoint_lsn = shm_load(&h->checkpoint_lsn);
	sn->backlog = sn->insert_lsn > sn->checkpoint_lsn ?
	    sn->insert_lsn - sn->checkpoint_lsn : 0;
	sn->pg_up = LOAD(h->pg_up) != 0;
	sn->keys = counters_count(shm->counters);
	sn->keys_capacity = shm->counters->capacity;
	sn->idem_keys = idem_count(shm->idem);
	sn->idem_capacity = idem_capacity(shm->idem);
	sn->idem_forgotten = idem_forgotten(shm->idem);
}

#undef LOAD

/* --- Prometheus --- */

struct out {
	char	*buf;
	size_t	 cap;
	size_t	 off;	/* may pass cap: the length needed */
};

static void __attribute__((format(printf, 2, 3)))
out_printf(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(o->off < o->cap ? o->buf + o->off : NULL,
	    o->off < o->cap ? o->cap - o->off : 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->off += (size_t)n;
}

static const uint64_t *
snap_u64(const struct metrics_snap *sn, const struct mdef *d)
{
	return (const uint64_t *)(const void *)((const char *)sn + d->off);
}

static uint64_t
hist_count(const struct metrics_hist *h)
{
	uint64_t n = 0;

	for (int i = 0; i < METRICS_NBUCKETS; i++)
		n += h->bucket[i];
	return n;
}

static void
render_hist(struct out *o, const char *name, const struct metrics_hist *h)
{
	uint64_t cum = 0;

	for (int i = 0; i < METRICS_NBOUNDS; i++) {
		cum += h->bucket[i];
		out_printf(o, PROM_PREFIX "%s_bucket{le=\"%s\"} %llu\n", name,
		    bounds_le[i], (unsigned long long)cum);
	}
	cum += h->bucket[METRICS_NBOUNDS];
	out_printf(o, PROM_PREFIX "%s_bucket{le=\"+Inf\"} %llu\n"
	    PROM_PREFIX "%s_sum %llu.%09llu\n" PROM_PREFIX "%s_count %llu\n",
	    name, (unsigned long long)cum, name,
	    (unsigned long long)(h->sum_ns / 1000000000),
	    (unsigned long long)(h->sum_ns % 1000000000), name,
	    (unsigned long long)cum);
}

static const char *
type_name(enum mtype t)
{
	switch (t) {
	case MT_GAUGE:
		return "gauge";
	case MT_HIST:
		return "histogram";
	default:
		return "counter";
	}
}

size_t
metrics_render(const struct metrics_snap *sn, char *buf, size_t cap)
{
	struct out o = { buf, cap, 0 };

	if (cap)
		buf[0] = '\0';
	for (size_t i = 0; i < sizeof(mdefs) / sizeof(mdefs[0]); i++) {
		const struct mdef *d = &mdefs[i];
		const uint64_t *v = snap_u64(sn, d);

		out_printf(&o, "# HELP " PROM_PREFIX "%s %s\n# TYPE "
		    PROM_PREFIX "%s %s\n", d->name, d->help, d->name,
		    type_name(d->type));
		switch (d->type) {
		case MT_COUNTER:
		case MT_GAUGE:
			out_printf(&o, PROM_PREFIX "%s %llu\n", d->name,
			    (unsigned long long)*v);
			break;
		case MT_HIST:
			render_hist(&o, d->name,
			    (const struct metrics_hist *)(const void *)v);
			break;
		case MT_REQUESTS:
			/* Only the pairs that occurred: most never do. */
			for (int r = 0; r < METRICS_NROUTES; r++)
				for (int c = 0; c < METRICS_NCODES; c++) {
					uint64_t n = v[r * METRICS_NCODES + c];
					char code[8];

					if (n == 0)
						continue;
					out_printf(&o, PROM_PREFIX "%s{route="
					    "\"%s\",code=\"%s\"} %llu\n",
					    d->name, route_names[r],
					    code_label(c, code, sizeof(code)),
					    (unsigned long long)n);
				}
			break;
		case MT_RESTARTS:
			for (int r = 0; r < METRICS_NROLES; r++)
				out_printf(&o, PROM_PREFIX "%s{role=\"%s\"} "
				    "%llu\n", d->name, role_names[r],
				    (unsigned long long)v[r]);
			break;
		}
	}
	return o.off;
}

/* --- StatsD --- */

static uint64_t
delta(uint64_t cur, uint64_t prev)
{
	/* Never less, as the region lives as long as the master. */
	return cur >= prev ? cur - prev : cur;
}

static void
statsd_line(void (*emit)(void *, const char *, size_t), void *arg,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
statsd_line(void (*emit)(void *, const char *, size_t), void *arg,
    const char *fmt, ...)
{
	char line[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0 && (size_t)n < sizeof(line))
		emit(arg, line, (size_t)n);
}

void
metrics_statsd(const struct metrics_snap *cur, const struct metrics_snap *prev,
    const char *prefix, void (*emit)(void *, const char *, size_t), void *arg)
{
	const char *dot = prefix[0] ? "." : "";

	for (size_t i = 0; i < sizeof(mdefs) / sizeof(mdefs[0]); i++) {
		const struct mdef *d = &mdefs[i];
		const uint64_t *v = snap_u64(cur, d), *p = snap_u64(prev, d);
		const struct metrics_hist *hc, *hp;
		uint64_t n, ns;

		switch (d->type) {
		case MT_COUNTER:
			if ((n = delta(*v, *p)) != 0)
				statsd_line(emit, arg, "%s%s%s:%llu|c", prefix,
				    dot, d->statsd, (unsigned long long)n);
			break;
		case MT_GAUGE:
			statsd_line(emit, arg, "%s%s%s:%llu|g", prefix, dot,
			    d->statsd, (unsigned long long)*v);
			break;
		case MT_HIST:
			hc = (const struct metrics_hist *)(const void *)v;
			hp = (const struct metrics_hist *)(const void *)p;
			n = delta(hist_count(hc), hist_count(hp));
			ns = delta(hc->sum_ns, hp->sum_ns);
			if (n != 0)
				statsd_line(emit, arg, "%s%s%s:%.3f|ms", prefix,
				    dot, d->statsd, (double)ns / n / 1e6);
			break;
		case MT_REQUESTS:
			for (int r = 0; r < METRICS_NROUTES; r++)
				for (int c = 0; c < METRICS_NCODES; c++) {
					int k = r * METRICS_NCODES + c;
					char code[8];

					if ((n = delta(v[k], p[k])) == 0)
						continue;
					statsd_line(emit, arg, "%s%s%s.%s.%s:"
					    "%llu|c", prefix, dot, d->statsd,
					    route_names[r],
					    code_label(c, code, sizeof(code)),
					    (unsigned long long)n);
				}
			break;
		case MT_RESTARTS:
			for (int r = 0; r < METRICS_NROLES; r++)
				if ((n = delta(v[r], p[r])) != 0)
					statsd_line(emit, arg, "%s%s%s.%s:"
					    "%llu|c", prefix, dot, d->statsd,
					    role_names[r],
					    (unsigned long long)n);
			break;
		}
	}
}
