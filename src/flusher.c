/*
 * The flusher process.
 *
 * It replays durable journal frames into PostgreSQL.  A batch is the run
 * of frames from the checkpoint up to (at most) the durable position,
 * summed per key in a private hash map, and goes to PostgreSQL as ONE
 * transaction: its keys in one or two statements whatever their number
 * (pg_upsert), and this node's checkpoint row set to the end of the
 * batch.  The data and the position
 * therefore commit together or not at all, which is what makes the
 * replay exactly-once: after any crash the checkpoint in PostgreSQL says
 * precisely which frames it already holds.
 *
 * Only after COMMIT does the shared table learn the new committed values
 * (and lose the flushed deltas), then the checkpoint is published in
 * shared memory, written to the local file, and the journal segments
 * wholly below it are removed.  A crash between COMMIT and the local file
 * leaves the local checkpoint behind PostgreSQL's; on connect the flusher
 * compares the two and takes the frames in between out of the table.
 *
 * PostgreSQL down or failing is an ordinary state: the journal holds
 * everything, the checkpoint does not move, and the same frames are tried
 * again after a capped exponential back-off.
 *
 * A batch PostgreSQL refuses for its data (a total beyond bigint, a
 * CHECK an operator added) would fail the same way forever, so it is
 * taken again at once in "isolating" mode: the keys go up in halves under
 * savepoints, a key that fails alone goes up record by record (again in
 * halves), and each record that fails alone is parked in tally_rejected.
 * The parked rows, the applied ones and the checkpoint still commit in
 * ONE transaction: a crash can neither apply and park the same record
 * nor lose a parking.  A key whose deltas within one batch sum beyond
 * int64 goes record by record from the start.
 */

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "flusher.h"
#include "flusher_int.h"
#include "idem.h"
#include "log.h"
#include "metrics.h"
#include "pg.h"
#include "proc.h"
#include "request.h"

#define FL_BATCH_KEYS		50000	/* end a batch after this many keys */
/*
 * ... or after this many records with an Idempotency-Key: each is its own
 * row in the batch's idempotency statements (pg_idem_claim), so a long
 * outage's keyed increments on a few keys would otherwise make one batch
 * and one statement of the whole backlog, past PostgreSQL's 1 GB message
 * limit: the connection drops and the same batch is tried forever.
 * Both caps are checked between frames; with keys and Idempotency-Keys
 * bounded (REQUEST_MAX_KEY_BYTES, 255) they bound a batch's memory and
 * statements to some 120 MB at worst.
 */
#define FL_BATCH_KEYED		50000
#define FL_LOOKUP_CHUNK		5000	/* keys per committed-value query */
#define FL_REFRESH_KEYS		20000	/* held keys refreshed per cycle */
#define FL_REFRESH_ALONE_KEYS	1000	/* the same, no other node flushing */
#define FL_REFRESH_SLOTS	(1 << 22) /* slots scanned per cycle, at most */
#define FL_BACKOFF_MIN_MS	100
#define FL_BACKOFF_MAX_MS	5000
/* Waiting for workers to answer what the batch holds: at most, a batch. */
#define FL_ANSWER_WAIT_US	20000
#define FL_ANSWER_POLL_US	100
#define FL_STOP_GRACE_US	5000000	/* PostgreSQL failing at stop: wait */
#define FL_WAIT_SLICE_MS	1000
#define FL_MIN_INTERVAL_US	10000
#define FL_PRUNE_US		60000000 /* expired Idempotency-Keys, PostgreSQL */
#define FL_PREFETCH		8	/* keys ahead a shared entry is asked for */

/* 1: graceful stop (SIGTERM), 2: fast stop (SIGQUIT). */
static volatile sig_atomic_t flusher_signal;

static void
flusher_on_signal(int sig)
{
	if (sig == SIGQUIT)
		flusher_signal = 2;
	else if (flusher_signal == 0)
		flusher_signal = 1;
}

static uint64_t
flusher_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* 0: run, 1: graceful stop requested, 2: stop now. */
static int
flusher_stopping(struct flusher *fl)
{
	if (flusher_signal == 1 && fl->stop_deadline_us == 0)
		fl->stop_deadline_us = flusher_now_us() + FL_STOP_GRACE_US;
	return flusher_signal;
}

/* A graceful stop that has waited long enough for PostgreSQL. */
static int
flusher_stop_expired(struct flusher *fl)
{
	return flusher_stopping(fl) == 2 || (flusher_stopping(fl) == 1 &&
	    flusher_now_us() >= fl->stop_deadline_us);
}

/*
 * Asked by pg.c while it waits.  A fast stop gives up at once; a graceful
 * one lets a healthy statement finish, but not one stuck past the grace.
 */
static int
flusher_pg_abort(void *arg, uint64_t waited_us)
{
	struct flusher *fl = arg;

	if (flusher_stopping(fl) == 2)
		return 1;
	return flusher_stopping(fl) == 1 && flusher_stop_expired(fl) &&
	    waited_us >= FL_STOP_GRACE_US;
}

/* --- the batch map --- */

static void
batch_reset(struct fl_batch *b)
{
	b->n = 0;
	b->nkeyed = 0;
	b->nrej = 0;
	b->alen = 0;
	b->answer_wait_us = 0;
	if (b->index)
		memset(b->index, 0, b->icap * sizeof(*b->index));
}

static void
batch_free(struct fl_batch *b)
{
	free(b->ents);
	free(b->index);
	free(b->arena);
	free(b->kv);
	free(b->keyed);
	free(b->kindex);
	free(b->knext);
	free(b->idem);
	free(b->recs);
	free(b->rej);
	free(b->prej);
	memset(b, 0, sizeof(*b));
}

static int
batch_grow_index(struct fl_batch *b)
{
	size_t ncap = b->icap ? b->icap * 2 : 4096;
	uint32_t *ni;

	if ((ni = calloc(ncap, sizeof(*ni))) == NULL)
		return -1;
	for (size_t i = 0; i < b->n; i++) {
		size_t s = b->ents[i].hash & (ncap - 1);

		while (ni[s] != 0)
			s = (s + 1) & (ncap - 1);
		ni[s] = i + 1;
	}
	free(b->index);
	b->index = ni;
	b->icap = ncap;
	return 0;
}

/* Copy bytes to the end of the arena.  -1: no memory. */
static int
batch_store(struct fl_batch *b, const char *p, size_t len)
{
	if (b->alen + len > b->acap) {
		size_t ncap = b->acap ? b->acap : 65536;
		char *na;

		while (ncap < b->alen + len)
			ncap *= 2;
		if ((na = realloc(b->arena, ncap)) == NULL)
			return -1;
		b->arena = na;
		b->acap = ncap;
	}
	memcpy(b->arena + b->alen, p, len);
	b->alen += len;
	return 0;
}

/*
 * The total r (in the frame ending at end) was answered with, as
 * idem_answered.  A frame is durable a moment before its worker answers
 * its requests: a record read in between would go to PostgreSQL without
 * its first answer, and a retry that finds it there would get the total
 * of its counter key at the time.  So wait for the answer, a little: a
 * worker that is stopped or dies must not hold up a flush, nor a stop.
 */
static int
flusher_answered(struct flusher *fl, const struct journal_record *r,
    uint64_t end, int64_t *total)
{
	int rc;

	while ((rc = idem_answered(fl->shm->idem, r->idem, r->idem_len,
	    r->key, r->key_len, r->value, end, total)) == -1 &&
	    fl->b.answer_wait_us < FL_ANSWER_WAIT_US &&
	    !flusher_stopping(fl)) {
		usleep(FL_ANSWER_POLL_US);
		fl->b.answer_wait_us += FL_ANSWER_POLL_US;
	}
	return rc == 1;
}

/*
 * Remember a keyed record of the frame at lsn ending at end, and the
 * total it was answered with; its delta waits in 'dropped' until claimed.
 */
static int
batch_keyed(struct flusher *fl, struct fl_ent *e,
    const struct journal_record *r, uint64_t lsn, uint64_t end)
{
	struct fl_batch *b = &fl->b;
	struct fl_keyed *k;

	if (b->nkeyed == b->keyedcap) {
		size_t ncap = b->keyedcap ? b->keyedcap * 2 : 256;
		struct fl_keyed *nk = realloc(b->keyed, ncap * sizeof(*nk));
		struct pg_idem *ni = realloc(b->idem, ncap * sizeof(*ni));

		if (nk)
			b->keyed = nk;
		if (ni)
			b->idem = ni;
		if (nk == NULL || ni == NULL)
			return -1;
		b->keyedcap = ncap;
	}
	if (batch_store(b, r->idem, r->idem_len) == -1)
		return -1;
	k = &b->keyed[b->nkeyed++];
	k->ent = e - b->ents;
	k->ik_off = b->alen - r->idem_len;
	k->ik_len = r->idem_len;
	k->value = r->value;
	k->time_us = r->time_us;
	k->lsn = lsn;
	k->has_total = flusher_answered(fl, r, end, &k->total);
	k->applied = 0;
	k->rejected = 0;
	k->mismatch = 0;
	e->dropped = wrap_add(e->dropped, r->value);
	return 0;
}

/* The entry for key; with create, added with a zero sum.  NULL: no memory. */
static struct fl_ent *
batch_find(struct fl_batch *b, const char *key, size_t len, int create)
{
	uint64_t hash = counters_hash(key, len);
	struct fl_ent *e;
	size_t s;

	if (b->icap == 0 || (create && (b->n + 1) * 2 > b->icap)) {
		if (!create)
			return NULL;
		if (batch_grow_index(b) == -1)
			return NULL;
	}
	for (s = hash & (b->icap - 1); b->index[s] != 0;
	    s = (s + 1) & (b->icap - 1)) {
		e = &b->ents[b->index[s] - 1];
		if (e->hash == hash && e->len == len &&
		    memcmp(b->arena + e->off, key, len) == 0)
			return e;
	}
	if (!create)
		return NULL;
	if (b->n == b->cap) {
		size_t ncap = b->cap ? b->cap * 2 : 1024;
		struct fl_ent *ne = realloc(b->ents, ncap * sizeof(*ne));

		if (ne == NULL)
			return NULL;
		b->ents = ne;
		b->cap = ncap;
	}
	if (batch_store(b, key, len) == -1)
		return NULL;
	e = &b->ents[b->n];
	memset(e, 0, sizeof(*e));
	e->hash = hash;
	e->off = b->alen - len;
	e->len = len;
	b->index[s] = ++b->n;
	return e;
}

/*
 * The batch as an array for pg_upsert, sorted by key (pg_kv_sort says
 * why).  Keys whose sum left int64 are not in it; *n gets the count.
 */
static struct pg_kv *
batch_kv(struct fl_batch *b, size_t *n)
{
	*n = 0;
	if (b->n > b->kvcap) {
		struct pg_kv *nk = realloc(b->kv, b->n * sizeof(*nk));

		if (nk == NULL)
			return NULL;
		b->kv = nk;
		b->kvcap = b->n;
	}
	for (size_t i = 0; i < b->n; i++) {
		if (b->ents[i].overflow)
			continue;
		b->kv[*n].key = b->arena + b->ents[i].off;
		b->kv[*n].len = b->ents[i].len;
		b->kv[*n].value = b->ents[i].sum;
		b->kv[*n].ref = i;
		(*n)++;
	}
	(void)pg_kv_sort(b->kv, *n);
	return b->kv;
}

/* --- reading the journal --- */

enum fl_read {
	FL_READ_OK,		/* reached the limit or a full batch */
	FL_READ_STUCK,		/* corrupt frame: cannot go on */
	FL_READ_NOMEM
};

/* Name the place of a bad frame once, loudly; flushing stops there. */
static void
flusher_corrupt(struct flusher *fl, uint64_t lsn, const char *why, int err)
{
	char name[32];

	if (fl->bad_lsn == lsn)
		return;
	fl->bad_lsn = lsn;
	journal_seg_name(name, sizeof(name),
	    journal_seg_base(fl->h->seg_size, lsn));
	/* For /readyz and tallyctl status; the syncer may have said it. */
	if (shm_load(&fl->h->corrupt_lsn) == 0) {
		snprintf(fl->h->corrupt_why, sizeof(fl->h->corrupt_why),
		    "%s%s%s", why, err ? ": " : "", err ? strerror(err) : "");
		shm_store(&fl->h->corrupt_lsn, lsn);
	}
	log_warnx("journal corrupt in %s/%s at offset %llu (LSN %llu): %s%s%s;"
	    " flushing to PostgreSQL stops here until this is repaired "
	    "(inspect with 'tallyctl journal verify')", fl->cf->journal_dir,
	    name, (unsigned long long)(lsn % fl->h->seg_size),
	    (unsigned long long)lsn, why, err ? ": " : "",
	    err ? strerror(err) : "");
}

/*
 * Sum the frames from 'from' (a checkpoint, not normalised) towards
 * 'limit' into the batch.  *upto is the end of the last frame taken: the
 * batch's checkpoint.  A key whose batch sum leaves int64 is marked to go
 * record by record.
 */
static enum fl_read
flusher_read(struct flusher *fl, uint64_t from, uint64_t limit, uint64_t *upto)
{
	uint64_t seg = fl->h->seg_size, p;
	struct journal_record r;
	struct frame_info fi;
	enum frame_status st;
	const uint8_t *f, *q, *end;
	struct fl_ent *e;

	batch_reset(&fl->b);
	fl->b.from = from;
	*upto = from;
	for (p = journal_lsn_normalize(seg, from); p < limit;
	    p = journal_lsn_normalize(seg, *upto)) {
		if (fl->b.n >= FL_BATCH_KEYS || fl->b.nkeyed >= FL_BATCH_KEYED)
			break;
		if ((f = journal_at(&fl->j, p, 0)) == NULL) {
			flusher_corrupt(fl, p, "cannot map the segment", errno);
			return FL_READ_STUCK;
		}
		st = journal_frame_check(f, seg - p % seg, p, fl->h->epoch,
		    &fi);
		if (st == FRAME_PADDING) {
			*upto = p + fi.len;
			continue;
		}
		if (st == FRAME_OK && journal_frame_decode(f, &fi, fl->raw)) {
			st = FRAME_BAD;
			fi.why = "records do not decode";
		}
		if (st != FRAME_OK) {
			/* Below the durable position nothing may be missing. */
			flusher_corrupt(fl, p, st == FRAME_EMPTY ? "no frame "
			    "(all zero) below the durable position" : fi.why,
			    0);
			return FL_READ_STUCK;
		}
		q = fl->raw;
		end = fl->raw + fi.raw_len;
		while (journal_record_next(&q, end, &r) == 1) {
			if ((e = batch_find(&fl->b, r.key, r.key_len, 1)) ==
			    NULL)
				return FL_READ_NOMEM;
			if (r.idem) {
				if (batch_keyed(fl, e, &r, p, p + fi.len) ==
				    -1)
					return FL_READ_NOMEM;
				continue;
			}
			/* The wrapped sum still nets the deltas out. */
			if (__builtin_add_overflow(e->sum, r.value, &e->sum))
				e->overflow = 1;
		}
		*upto = p + fi.len;
	}
	return FL_READ_OK;
}

/* --- PostgreSQL --- */

static void
flusher_pg_failed(struct flusher *fl, const char *what)
{
	char msg[600];

	shm_count(&fl->h->stats.pg_errors, 1);
	/*
	 * Down for /readyz and postgres_up until a flush goes through: a
	 * connection that stays up while every flush fails (a read-only
	 * server after a failover, a revoked grant, a lock) is no better.
	 */
	fl->h->pg_up = 0;
	/*
	 * A table of ours dropped under us (undefined_table): the next
	 * connection creates the schema again, as a restart would; retrying
	 * on this one would fail for ever.
	 */
	if (fl->pg.conn != NULL && strcmp(fl->pg.sqlstate, "42P01") == 0)
		pg_close(&fl->pg);
	if (fl->pg.conn == NULL)
		fl->connected = 0;
	if (flusher_stopping(fl) == 2)
		return;
	snprintf(msg, sizeof(msg), "%s|%s", fl->pg.sqlstate, fl->pg.err);
	/* Once per distinct error, not once per retry. */
	if (strcmp(msg, fl->last_err) == 0)
		return;
	snprintf(fl->last_err, sizeof(fl->last_err), "%s", msg);
	if (fl->pg.sqlstate[0])
		log_warnx("PostgreSQL: %s failed: %s (SQLSTATE %s); retrying",
		    what, fl->pg.err, fl->pg.sqlstate);
	else
		log_warnx("PostgreSQL: %s failed: %s; retrying", what,
		    fl->pg.err);
	if (fl->pg.conn == NULL)
		fl->outage_logged = 1;
}

static void
flusher_backoff(struct flusher *fl)
{
	fl->backoff_ms = fl->backoff_ms ? fl->backoff_ms * 2 :
	    FL_BACKOFF_MIN_MS;
	if (fl->backoff_ms > FL_BACKOFF_MAX_MS)
		fl->backoff_ms = FL_BACKOFF_MAX_MS;
	fl->retry_at_us = flusher_now_us() + fl->backoff_ms * 1000;
}

static void
flusher_lookup_cb(void *arg, size_t i, int found, int64_t value)
{
	struct flusher *fl = arg;

	/* By key: the entry may have been evicted meanwhile. */
	counters_set_committed_key(fl->shm->counters, fl->own,
	    fl->lk_kv[i].key, fl->lk_kv[i].len, found ? value : 0);
}

/* Learn PostgreSQL's value of n held keys.  -1 on a PostgreSQL error. */
static int
flusher_lookup(struct flusher *fl, size_t n)
{
	if (pg_lookup(&fl->pg, fl->lk_kv, n, flusher_lookup_cb, fl) == -1) {
		flusher_pg_failed(fl, "reading committed values");
		return -1;
	}
	return 0;
}

/*
 * Refresh the committed value of held keys from slot *cursor on, at most
 * maxkeys keys and maxslots slots; advances *cursor (wrapping).  Only the
 * entries handed out so far are read, which are dense: the scan does not
 * commit the untouched rest of the shared table.
 */
static int
flusher_refresh(struct flusher *fl, uint64_t *cursor, uint64_t maxkeys,
    uint64_t maxslots)
{
	struct counters *c = fl->shm->counters;
	uint64_t keys = 0, slots = 0, i, nslots = counters_slots(c);
	size_t n = 0, len;
	char *kb;

	while (keys < maxkeys && slots < maxslots && slots < nslots) {
		if (*cursor >= nslots)
			*cursor = 0;
		i = (*cursor)++;
		slots++;
		kb = fl->lk_keys + n * c->max_key_bytes;
		if ((len = counters_slot_key(c, i, kb)) == 0)
			continue;
		fl->lk_kv[n].key = kb;
		fl->lk_kv[n].len = len;
		fl->lk_kv[n].value = 0;
		keys++;
		if (++n == FL_LOOKUP_CHUNK) {
			if (flusher_lookup(fl, n) == -1)
				return -1;
			n = 0;
		}
	}
	return n ? flusher_lookup(fl, n) : 0;
}

/*
 * How many held keys to re-read from PostgreSQL this cycle, 0 on error.
 * Only another node's flush (or a change by hand) makes a held key's
 * committed value stale, and re-reading costs PostgreSQL a lookup per
 * key: the full rate while other nodes flush, a trickle for hand edits
 * when this node is alone.
 */
static uint64_t
flusher_refresh_keys(struct flusher *fl)
{
	char sig[sizeof(fl->others)];

	if (pg_others_mark(&fl->pg, sig, sizeof(sig), &fl->shared) == -1) {
		flusher_pg_failed(fl, "reading other nodes' checkpoints");
		return 0;
	}
	if (strcmp(sig, fl->others) == 0)
		return FL_REFRESH_ALONE_KEYS;
	memcpy(fl->others, sig, sizeof(sig));
	/* Another node may make keys this one takes for new. */
	if (counters_preload_void(fl->shm->counters))
		log_info("another node flushes: a key's first increment here "
		    "asks PostgreSQL for its total again");
	return FL_REFRESH_KEYS;
}

static void
flusher_write_checkpoint(struct flusher *fl, uint64_t lsn)
{
	struct checkpoint cp;

	memcpy(cp.epoch, fl->h->epoch, JOURNAL_EPOCH_LEN);
	cp.lsn = lsn;
	if (checkpoint_write(fl->cf->state_dir, &cp) == -1) {
		/*
		 * PostgreSQL has the checkpoint; this copy saves recovery
		 * work and bounds the keys it replays (flusher_commit).
		 */
		if (!fl->ckp_warned)
			log_warn("cannot write %s/checkpoint (LSN %llu)",
			    fl->cf->state_dir, (unsigned long long)lsn);
		fl->ckp_warned = 1;
	} else
		fl->ckp_warned = 0;
}

/*
 * PostgreSQL's checkpoint is ahead of ours: a crash came between its
 * COMMIT and the local file.  The frames in between are in PostgreSQL
 * already, so their deltas leave the table's unflushed part.
 */
static int
flusher_skip_flushed(struct flusher *fl, uint64_t from, uint64_t to)
{
	uint64_t seg = fl->h->seg_size, p;
	struct journal_record r;
	struct frame_info fi;
	enum frame_status st;
	const uint8_t *f, *q, *end;
	struct fl_ent *e;

	batch_reset(&fl->b);
	for (p = journal_lsn_normalize(seg, from); p < journal_lsn_normalize(
	    seg, to); p = journal_lsn_normalize(seg, p + fi.len)) {
		if ((f = journal_at(&fl->j, p, 0)) == NULL)
			return -1;
		st = journal_frame_check(f, seg - p % seg, p, fl->h->epoch,
		    &fi);
		if (st == FRAME_PADDING)
			continue;
		if (st != FRAME_OK || journal_frame_decode(f, &fi, fl->raw))
			return -1;
		q = fl->raw;
		end = fl->raw + fi.raw_len;
		while (journal_record_next(&q, end, &r) == 1) {
			if ((e = batch_find(&fl->b, r.key, r.key_len, 1)) ==
			    NULL)
				return -1;
			e->sum = (int64_t)((uint64_t)e->sum + (uint64_t)r.value);
		}
	}
	/* First, as in flusher_commit: recovery must not start before it. */
	flusher_write_checkpoint(fl, to);
	/*
	 * Keep each total as it was; the committed values are read from
	 * PostgreSQL right after this.  Entries that took this batch in
	 * already, before a flusher died, are stamped with 'to' and left.
	 */
	for (size_t i = 0; i < fl->b.n; i++)
		counters_commit_key(fl->shm->counters, fl->own,
		    fl->b.arena + fl->b.ents[i].off, fl->b.ents[i].len, 0, 0,
		    fl->b.ents[i].sum, fl->b.ents[i].sum, to);
	batch_reset(&fl->b);
	return 0;
}

/*
 * PostgreSQL holds the journal up to lsn: say so to the other processes,
 * and to the Idempotency-Key table, whose entries up to there may be
 * given up when it is full.
 */
static void
flusher_publish(struct flusher *fl, uint64_t lsn)
{
	shm_store(&fl->h->checkpoint_lsn, lsn);
	idem_flushed(fl->shm->idem, lsn);
}

/*
 * Compare PostgreSQL's checkpoint for this node with ours.
 *
 * Until a flush of this run has written it, PostgreSQL's checkpoint can
 * be past the end of the journal that recovery found: the state
 * directory went back in time (a snapshot or a backup was restored), or
 * the disk lost writes it had said were synced.  What we found at start
 * is then in PostgreSQL already, but the frames journaled since reuse
 * positions its checkpoint covers, and they are new: the checkpoint
 * moves to the end found at start, never past it.  Measured against
 * durable_lsn instead, the first case would flush the found frames
 * twice, and the second (PostgreSQL back after frames were journaled)
 * would skip new ones.  Once this run's flushes move it, PostgreSQL's
 * checkpoint may be anywhere up to durable_lsn (a flusher died between
 * its COMMIT and the local file).
 */
static int
flusher_reconcile(struct flusher *fl)
{
	struct shm_hdr *h = fl->h;
	uint64_t seg = h->seg_size, cur, end, pgl, to;
	char epoch[33];
	int rc;

	if ((rc = pg_checkpoint_get(&fl->pg, epoch, &pgl)) == -1) {
		flusher_pg_failed(fl, "reading the checkpoint");
		return -1;
	}
	fl->pg_cp_known = rc == 1 && strcmp(epoch, fl->epoch_hex) == 0;
	fl->pg_cp_lsn = pgl;
	if (!fl->pg_cp_known)
		return 0;	/* nothing flushed from this journal yet */
	cur = journal_lsn_normalize(seg, shm_load(&h->checkpoint_lsn));
	end = journal_lsn_normalize(seg, shm_load(
	    __atomic_load_n(&h->pg_cp_current, __ATOMIC_RELAXED) ?
	    &h->durable_lsn : &h->recovered_lsn));
	to = journal_lsn_normalize(seg, pgl);
	if (to <= end)
		__atomic_store_n(&h->pg_cp_current, 1, __ATOMIC_RELAXED);
	if (to == cur)
		return 0;
	if (to < cur) {
		log_warnx("PostgreSQL's checkpoint for node '%s' (LSN %llu) is "
		    "behind the local one (LSN %llu): was PostgreSQL restored "
		    "from a backup? Increments between the two are not "
		    "replayed; continuing from the local checkpoint",
		    fl->cf->node, (unsigned long long)pgl,
		    (unsigned long long)cur);
		return 0;
	}
	if (to > end) {
		log_warnx("PostgreSQL's checkpoint for node '%s' (LSN %llu) is "
		    "past the end of the journal (LSN %llu): "
		    "the state directory went back in time (restored from a "
		    "snapshot or a backup?) or the disk lost synced writes; "
		    "PostgreSQL holds the journal up to LSN %llu, and what "
		    "was journaled since the start is flushed from there",
		    fl->cf->node, (unsigned long long)pgl,
		    (unsigned long long)end, (unsigned long long)end);
		to = end;
		if (to == cur)
			return 0;
	}
	if (flusher_skip_flushed(fl, cur, to) == -1) {
		/*
		 * Flushing from the local checkpoint would apply what
		 * PostgreSQL holds again: wait, the journal keeps it all.
		 */
		if (!fl->skip_warned)
			log_warnx("cannot read journal LSN %llu..%llu, which "
			    "PostgreSQL already holds, to take it out of the "
			    "table; not flushing until it can be read "
			    "(tallyctl journal verify shows where)",
			    (unsigned long long)cur, (unsigned long long)to);
		fl->skip_warned = 1;
		return -1;
	}
	fl->skip_warned = 0;
	log_info("PostgreSQL already holds journal LSN %llu..%llu; "
	    "checkpoint moved to %llu", (unsigned long long)cur,
	    (unsigned long long)to, (unsigned long long)to);
	flusher_publish(fl, to);
	return 0;
}

/* A key PostgreSQL holds, with the total it was answered with. */
static void
flusher_load_cb(void *arg, const char *ik, size_t ik_len, const char *key,
    size_t key_len, int64_t value, uint64_t time_us, int64_t total)
{
	struct flusher *fl = arg;
	struct idem_entry *ie;
	int status;

	/*
	 * Newest first: once the table is full, the older keys stay in
	 * PostgreSQL rather than take the room of newer ones.
	 */
	if (idem_count(fl->shm->idem) >= idem_capacity(fl->shm->idem)) {
		fl->keys_left = 1;
		return;
	}
	/*
	 * Claimed and completed like a worker would, so that a key a worker
	 * holds already (in flight or kept) is left alone.
	 */
	switch (idem_begin(fl->shm->idem, ik, ik_len, key, key_len, value,
	    idem_now_us(), getpid(), &ie, &status, &total)) {
	case IDEM_NEW:
		/* PostgreSQL holds it: it may be forgotten again. */
		idem_complete(fl->shm->idem, ie, 202, total,
		    time_us + fl->cf->idem_ttl_us, 0);
		break;
	case IDEM_FULL:
		fl->keys_left = 1;
		break;
	default:
		break;
	}
}

/* A held key's total, for idem_rebase: PostgreSQL's is known by now. */
static int
flusher_sum(void *arg, const char *key, size_t len, int64_t *sum)
{
	return counters_peek_total(arg, key, len, sum) == -1 ? -1 : 0;
}

/*
 * Idempotency-Keys this node flushed before a restart are no longer in
 * the journal: take them back from PostgreSQL, so a late retry is still
 * answered as a replay.  Those the journal gave back answer the total
 * they first did, now that the held keys' totals are read (see
 * idem_restore).
 */
static int
flusher_load_keys(struct flusher *fl)
{
	uint64_t cap = idem_capacity(fl->shm->idem);

	if (fl->keys_loaded)
		return 0;
	idem_rebase(fl->shm->idem, flusher_sum, fl->shm->counters);
	fl->keys_left = 0;
	/* One more than fits, to know whether any is left out. */
	if (pg_idem_load(&fl->pg, fl->cf->idem_ttl_us, cap + 1,
	    flusher_load_cb, fl) == -1) {
		flusher_pg_failed(fl, "loading Idempotency-Keys");
		return -1;
	}
	/*
	 * PostgreSQL holds more of this node's keys than the table took:
	 * the workers ask it about keys they do not know.
	 */
	if (fl->keys_left && cap > 0) {
		log_info("more Idempotency-Keys in PostgreSQL than "
		    "idempotency.max_keys (%llu) takes: keys not held are "
		    "looked up there", (unsigned long long)cap);
		idem_forget_until(fl->shm->idem, idem_now_us() +
		    fl->cf->idem_ttl_us);
	}
	fl->keys_loaded = 1;
	/* Workers take keyed requests from here on (worker_post). */
	__atomic_store_n(&fl->h->keys_loaded, 1, __ATOMIC_RELEASE);
	return 0;
}

static int flusher_connect_once(struct flusher *, uint64_t *);

/* Forget expired Idempotency-Keys, in shared memory and PostgreSQL. */
static void
flusher_expire_keys(struct flusher *fl)
{
	uint64_t now = flusher_now_us();

	if (now < fl->next_prune_us)
		return;
	fl->next_prune_us = now + FL_PRUNE_US;
	idem_sweep(fl->shm->idem, idem_now_us());
	if (pg_idem_prune(&fl->pg, fl->cf->idem_ttl_us) == -1)
		flusher_pg_failed(fl, "pruning expired Idempotency-Keys");
}

static int
flusher_connect(struct flusher *fl)
{
	uint64_t cursor = 0;
	int rc = flusher_connect_once(fl, &cursor);

	/* The master starts the workers once this is known either way. */
	__atomic_store_n(&fl->h->flusher_tried, 1, __ATOMIC_RELEASE);
	return rc;
}

static void
flusher_preload_cb(void *arg, const char *key, size_t len, int64_t value)
{
	struct flusher *fl = arg;

	/* A key no request can name (written by hand): stop there. */
	if (len > sizeof(fl->pre_key)) {
		fl->pre_full = 1;
		return;
	}
	memcpy(fl->pre_key, key, len);
	fl->pre_len = len;
	if (!fl->pre_full && counters_preload(fl->shm->counters, fl->own,
	    key, len, value) == -1)
		fl->pre_full = 1;
}

/*
 * Once, after the first connection: read every key PostgreSQL holds into
 * the table (as evicted entries), when they fit in half of it.  Then a
 * key's first increment after a restart needs no look-up, and one that
 * is not there is known to have no row.  Errors leave the look-ups on.
 */
static int
flusher_preload(struct flusher *fl)
{
	struct counters *c = fl->shm->counters;
	uint64_t t0 = flusher_now_us(), n = 0;
	int64_t est;
	int got;

	if (fl->preload_tried)
		return 0;
	fl->preload_tried = 1;
	if ((est = pg_counters_estimate(&fl->pg)) == -1) {
		flusher_pg_failed(fl, "reading the number of keys");
		return -1;
	}
	if (est > (int64_t)(c->capacity / 2)) {
		log_info("not reading PostgreSQL's %lld keys ahead: more than "
		    "half of counters.max_keys (%llu); a key's first increment "
		    "here asks PostgreSQL for its total", (long long)est,
		    (unsigned long long)c->capacity);
		return 0;
	}
	fl->pre_len = 0;
	fl->pre_full = 0;
	do {
		if ((got = pg_counters_page(&fl->pg, fl->pre_key, fl->pre_len,
		    FL_PRELOAD_PAGE, flusher_preload_cb, fl)) == -1) {
			flusher_pg_failed(fl, "reading keys ahead");
			return -1;
		}
		n += got;
	} while (got == FL_PRELOAD_PAGE && !fl->pre_full &&
	    flusher_stopping(fl) == 0);
	if (fl->pre_full || got == FL_PRELOAD_PAGE) {
		log_info("read %llu of PostgreSQL's keys ahead, then ran out of "
		    "room; the first increment of the others here asks "
		    "PostgreSQL for its total", (unsigned long long)n);
		return 0;
	}
	log_info("read PostgreSQL's %llu keys ahead in %.2f s",
	    (unsigned long long)n, (double)(flusher_now_us() - t0) / 1e6);
	/*
	 * Alone, a key not read is one PostgreSQL has no row for; while
	 * other nodes flush, it may be theirs, made since.
	 */
	if (!fl->shared)
		counters_preload_done(c);
	return 0;
}

static int
flusher_connect_once(struct flusher *fl, uint64_t *cursorp)
{
	uint64_t cursor = *cursorp;

	if (pg_connect(&fl->pg, fl->cf->dsn, "tallyd-flusher",
	    fl->cf->schema) == -1) {
		shm_count(&fl->h->stats.pg_errors, 1);
		fl->h->pg_up = 0;
		if (!fl->outage_logged && flusher_stopping(fl) != 2)
			log_warnx("cannot connect to PostgreSQL: %s; retrying "
			    "with back-off", fl->pg.err);
		fl->outage_logged = 1;
		return -1;
	}
	if (pg_ensure_schema(&fl->pg) == -1) {
		flusher_pg_failed(fl, "creating the schema");
		pg_close(&fl->pg);
		return -1;
	}
	/*
	 * Every held key is read again just below: the other nodes'
	 * flushes seen so far are in, and whether they still flush decides
	 * how this node's first batches go up (pg_upsert).
	 */
	if (pg_others_mark(&fl->pg, fl->others, sizeof(fl->others),
	    &fl->shared) == -1) {
		flusher_pg_failed(fl, "reading other nodes' checkpoints");
		pg_close(&fl->pg);
		return -1;
	}
	if (flusher_reconcile(fl) == -1 ||
	    flusher_refresh(fl, &cursor, UINT64_MAX, UINT64_MAX) == -1 ||
	    flusher_load_keys(fl) == -1 || flusher_preload(fl) == -1) {
		pg_close(&fl->pg);
		return -1;
	}
	fl->connected = 1;
	fl->h->pg_up = 1;
	if (__atomic_exchange_n(&fl->h->metrics.pg_connected, 1,
	    __ATOMIC_RELAXED))
		shm_count(&fl->h->stats.pg_reconnects, 1);
	fl->outage_logged = 0;
	fl->last_err[0] = '\0';
	/*
	 * The back-off goes back to its start after a flush, not here: a
	 * flush that breaks the connection each time would reconnect (and
	 * read every held key) without pause.
	 */
	log_info("connected to PostgreSQL (database %s on %s, port %s)",
	    PQdb(fl->pg.conn), PQhost(fl->pg.conn), PQport(fl->pg.conn));
	return 0;
}

/*
 * The batch in the table: ONE transaction with the checkpoint.  1: it was
 * refused for its data, take it again at once (isolating).
 */
static int
flusher_commit(struct flusher *fl, uint64_t upto)
{
	struct fl_batch *b = &fl->b;
	struct shm_hdr *h = fl->h;
	struct pg_kv *kv;
	size_t n;
	uint64_t t0 = metrics_now();
	uint64_t keep;

	b->upto = upto;
	b->nrej = 0;
	b->ndup = 0;
	if (pg_begin(&fl->pg) == -1) {
		flusher_pg_failed(fl, "BEGIN");
		return -1;
	}
	if (flusher_claim(fl) == -1) {
		if (!fl->isolate && pg_is_data_error(&fl->pg))
			return flusher_refused(fl, "recording Idempotency-Keys");
		flusher_pg_failed(fl, "recording Idempotency-Keys");
		pg_rollback(&fl->pg);
		return -1;
	}
	if ((kv = batch_kv(b, &n)) == NULL && b->n > 0) {
		log_warnx("out of memory for a batch of %zu keys", b->n);
		pg_rollback(&fl->pg);
		return -1;
	}
	/* The whole batch at once, unless it was refused. */
	if ((fl->isolate ? flusher_upsert_split(fl, kv, n) :
	    pg_upsert(&fl->pg, kv, n, fl->shared, flusher_row_cb, b)) == -1) {
		if (!fl->isolate && pg_is_data_error(&fl->pg))
			return flusher_refused(fl, "upserting counters");
		flusher_pg_failed(fl, "upserting counters");
		pg_rollback(&fl->pg);
		return -1;
	}
	for (size_t i = 0; i < b->n; i++) {
		if (!b->ents[i].overflow)
			continue;
		if (flusher_isolate_key(fl, &b->ents[i]) == -1) {
			flusher_pg_failed(fl, "upserting counters");
			pg_rollback(&fl->pg);
			return -1;
		}
	}
	if (flusher_park(fl) == -1) {
		flusher_pg_failed(fl, "parking refused records in "
		    "tally_rejected");
		pg_rollback(&fl->pg);
		return -1;
	}
	switch (pg_checkpoint_put(&fl->pg, fl->epoch_hex, upto,
	    fl->pg_cp_known ? &fl->pg_cp_lsn : NULL)) {
	case -1:
		flusher_pg_failed(fl, "writing the checkpoint");
		pg_rollback(&fl->pg);
		return -1;
	case 0:
		/*
		 * A transaction of ours whose COMMIT went unanswered was
		 * still open when we reconnected, and has committed since:
		 * this batch would count twice.  The next connection reads
		 * the checkpoint again and skips what is in.
		 */
		log_warnx("PostgreSQL's checkpoint for node '%s' moved under "
		    "the batch of journal LSN %llu..%llu (an earlier COMMIT "
		    "whose answer was lost landed late?): rolling back and "
		    "reconnecting", fl->cf->node,
		    (unsigned long long)b->from, (unsigned long long)upto);
		pg_rollback(&fl->pg);
		pg_close(&fl->pg);
		shm_count(&h->stats.pg_errors, 1);
		fl->connected = 0;
		h->pg_up = 0;
		return -1;
	}
	if (pg_commit(&fl->pg) == -1) {
		/*
		 * If the connection broke during COMMIT its outcome is
		 * unknown; the checkpoint comparison on reconnect settles it.
		 */
		flusher_pg_failed(fl, "COMMIT");
		pg_rollback(&fl->pg);
		return -1;
	}
	/*
	 * The local checkpoint moves before the batch's entries are
	 * settled, which is what lets them be evicted: recovery after a
	 * crash replays from this file, into a table of the same size, so
	 * it must find no more keys than the table held.  Written after the
	 * entries, a crash in between left it a batch behind while their
	 * places went to new keys, and recovery, finding both, stopped on a
	 * full table.
	 */
	flusher_write_checkpoint(fl, upto);
	/*
	 * Should this process die inside this loop, the respawned flusher
	 * finds PostgreSQL's checkpoint ahead of the shared one and takes
	 * the batch out of the table again (flusher_skip_flushed); entries
	 * that took it in already carry upto and are left alone, so each
	 * key loses the batch exactly once.  Deltas PostgreSQL already had
	 * leave the table too.
	 */
	for (size_t i = 0; i < b->n; i++) {
		struct fl_ent *e = &b->ents[i];
		/* Deltas PostgreSQL already had, or parked, leave too. */
		int64_t gone = wrap_add(wrap_add(e->sum, e->dropped),
		    e->rejected);

		/*
		 * Every key misses the cache on its index word and then on
		 * its entry: ask for both ahead, as two stages, so that the
		 * misses of keys to come overlap this key's work.
		 */
		if (i + 2 * FL_PREFETCH < b->n)
			counters_prefetch_hash(fl->shm->counters,
			    b->ents[i + 2 * FL_PREFETCH].hash, 0);
		if (i + FL_PREFETCH < b->n)
			counters_prefetch_hash(fl->shm->counters,
			    b->ents[i + FL_PREFETCH].hash, 1);
		counters_commit_key(fl->shm->counters, fl->own,
		    b->arena + e->off, e->len, e->returned, e->total,
		    e->sum, gone, upto);
	}
	flusher_log_parked(fl);
	shm_count(&h->stats.rejected, b->nrej);
	shm_count(&h->stats.idem_duplicates, b->ndup);
	fl->isolate = 0;
	fl->pg_cp_known = 1;
	fl->pg_cp_lsn = upto;
	__atomic_store_n(&fl->h->pg_cp_current, 1, __ATOMIC_RELAXED);
	flusher_publish(fl, upto);
	/* Past a frame once unreadable (a mapping that failed): clear. */
	if (shm_load(&h->corrupt_lsn) != 0 && upto > shm_load(
	    &h->corrupt_lsn)) {
		shm_store(&h->corrupt_lsn, 0);
		fl->bad_lsn = 0;
	}
	/* Not the segment of a frame a dead worker left unsettled. */
	keep = upto;
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++) {
		uint64_t wr = counters_owner_wr_lsn(fl->shm->owners[i]);

		if (wr != 0 && wr < keep)
			keep = wr;
	}
	if (journal_recycle(&fl->j, keep) >= 0)
		shm_advance(&h->start_lsn, journal_lsn_normalize(h->seg_size,
		    journal_seg_base(h->seg_size, keep)));
	shm_count(&h->stats.flushes, 1);
	shm_count(&h->stats.rows_upserted, b->n);
	metrics_hist_add(&h->metrics.flush, t0);
	fl->last_err[0] = '\0';
	return 0;
}

/*
 * Flush everything durable now.  0 when caught up (or stuck at a bad
 * frame, which is logged), -1 on a PostgreSQL error.
 *
 * A flush request is served once the syncer has made its frames durable
 * (flush_synced), read before the durable position that then covers
 * them.  In a graceful stop the syncer is gone and the durable position
 * is the journal's last: it covers every request.
 */
static int
flusher_flush(struct flusher *fl)
{
	struct shm_hdr *h = fl->h;
	uint64_t seq = shm_load(flusher_stopping(fl) == 1 ? &h->flush_seq :
	    &h->flush_synced);
	uint64_t end = shm_load(&h->durable_lsn);
	uint64_t from, upto;
	enum fl_read rd;
	int rc;

	for (;;) {
		if (flusher_stopping(fl) == 2)
			return -1;
		from = shm_load(&h->checkpoint_lsn);
		if (journal_lsn_normalize(h->seg_size, from) >= end)
			break;
		rd = flusher_read(fl, from, end, &upto);
		if (rd == FL_READ_NOMEM) {
			log_warnx("out of memory summing journal LSN "
			    "%llu..%llu", (unsigned long long)from,
			    (unsigned long long)end);
			return -1;
		}
		if (upto == from)
			break;		/* stuck at a bad frame */
		if ((rc = flusher_commit(fl, upto)) == -1)
			return -1;
		if (rc == 1)
			continue;	/* the same batch, isolating */
		if (rd == FL_READ_STUCK)
			break;
	}
	shm_advance(&h->flush_done, seq);
	return 0;
}

/*
 * Sleep until due (monotonic microseconds), a flush request, or a new stop
 * signal.  A graceful stop already under way shortens a back-off to its
 * deadline but does not end it: retries stay paced.
 */
static void
flusher_wait(struct flusher *fl, uint64_t due)
{
	struct pollfd pfd;
	uint64_t now, buf;
	int was = flusher_stopping(fl), ms;

	if (was == 1 && due > fl->stop_deadline_us)
		due = fl->stop_deadline_us;
	pfd.fd = fl->h->flusher_efd;
	pfd.events = POLLIN;
	while (flusher_stopping(fl) == was && (now = flusher_now_us()) < due) {
		ms = (due - now + 999) / 1000;
		if (ms > FL_WAIT_SLICE_MS)
			ms = FL_WAIT_SLICE_MS;
		pfd.revents = 0;
		if (poll(&pfd, 1, ms) > 0 && (pfd.revents & POLLIN)) {
			/* An eventfd read clears it. */
			if (read(pfd.fd, &buf, sizeof(buf)) == -1 &&
			    errno != EAGAIN && errno != EINTR)
				log_warn("reading the flush eventfd");
			return;
		}
	}
}

static int
flusher_setup(struct flusher *fl, const struct config *cf, struct shm *shm)
{
	memset(fl, 0, sizeof(*fl));
	fl->cf = cf;
	fl->shm = shm;
	fl->h = shm->hdr;
	fl->j.dirfd = -1;
	journal_epoch_hex(fl->h->epoch, fl->epoch_hex);
	if (journal_open(&fl->j, cf->journal_dir, fl->h->seg_size,
	    fl->h->epoch, cf->node) == -1) {
		log_warn("cannot open journal directory %s", cf->journal_dir);
		return -1;
	}
	fl->raw = malloc(JOURNAL_MAX_RAW);
	fl->own = shm->owners[SHM_FLUSHER];
	fl->lk_keys = malloc((size_t)FL_LOOKUP_CHUNK * cf->max_key_bytes);
	fl->lk_kv = calloc(FL_LOOKUP_CHUNK, sizeof(*fl->lk_kv));
	if (fl->raw == NULL || fl->lk_keys == NULL || fl->lk_kv == NULL) {
		log_warnx("out of memory");
		return -1;
	}
	pg_init(&fl->pg, cf->node, flusher_pg_abort, fl);
	return 0;
}

static void
flusher_teardown(struct flusher *fl)
{
	pg_free(&fl->pg);
	batch_free(&fl->b);
	free(fl->raw);
	free(fl->lk_keys);
	free(fl->lk_kv);
	if (fl->j.dirfd != -1)
		journal_close(&fl->j);
	fl->h->pg_up = 0;
}

int
flusher_main(const struct config *cf, struct shm *shm)
{
	struct flusher fl;
	struct sigaction sa;
	uint64_t next_flush, interval, refresh;
	int stop;

	log_set_role("flusher");
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: a stop signal must cut a poll() short. */
	sa.sa_handler = flusher_on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGQUIT, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	if (flusher_setup(&fl, cf, shm) == -1) {
		flusher_teardown(&fl);
		return 1;
	}
	next_flush = flusher_now_us();
	for (;;) {
		if (flusher_stopping(&fl) == 2)
			break;
		if (!fl.connected) {
			if (flusher_stop_expired(&fl)) {
				log_warnx("stopping without a final flush: "
				    "PostgreSQL is unavailable; the journal "
				    "keeps the increments");
				break;
			}
			if (flusher_now_us() < fl.retry_at_us) {
				int was = flusher_stopping(&fl);

				flusher_wait(&fl, fl.retry_at_us);
				/* A stop is worth one more try at once. */
				if (flusher_stopping(&fl) != was)
					fl.retry_at_us = 0;
				continue;
			}
			if (flusher_connect(&fl) == -1) {
				flusher_backoff(&fl);
				continue;
			}
		}
		/* flush_interval comes from the region: SIGHUP may change it. */
		proc_reloaded(fl.h);
		interval = shm_load(&fl.h->flush_interval_us);
		next_flush = flusher_now_us() + (interval > FL_MIN_INTERVAL_US ?
		    interval : FL_MIN_INTERVAL_US);
		stop = flusher_stopping(&fl);
		if (flusher_flush(&fl) == -1) {
			if (flusher_stopping(&fl) == 2)
				break;
			if (flusher_stop_expired(&fl)) {
				log_warnx("stopping without a complete final "
				    "flush; the journal keeps the increments");
				break;
			}
			flusher_backoff(&fl);
			if (fl.connected)
				flusher_wait(&fl, fl.retry_at_us);
			continue;
		}
		fl.backoff_ms = 0;
		fl.h->pg_up = 1;
		/*
		 * The master signals the stop once the syncer is gone, so the
		 * durable position a flush reads after the signal is the
		 * journal's last.  One begun before it read an earlier one:
		 * the frames acknowledged since must not wait for the next
		 * start's replay.
		 */
		if (stop == 1) {
			log_info("final flush done at LSN %llu",
			    (unsigned long long)shm_load(
			    &fl.h->checkpoint_lsn));
			break;
		}
		if (flusher_stopping(&fl) != 0)
			continue;
		flusher_expire_keys(&fl);
		if ((refresh = flusher_refresh_keys(&fl)) == 0 ||
		    flusher_refresh(&fl, &fl.refresh_slot, refresh,
		    FL_REFRESH_SLOTS) == -1) {
			flusher_backoff(&fl);
			if (fl.connected)
				flusher_wait(&fl, fl.retry_at_us);
			continue;
		}
		/* A stop signalled meanwhile is flushed for at once. */
		if (flusher_stopping(&fl) == 0)
			flusher_wait(&fl, next_flush);
	}
	flusher_teardown(&fl);
	return 0;
}
