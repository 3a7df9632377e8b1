/*
 * A batch PostgreSQL refused for its data, taken again at once: keys in
 * halves under savepoints, a key that fails alone record by record (again
 * in halves), and each record that fails alone noted to be parked in
 * tally_rejected, in the same transaction as what was applied and the
 * checkpoint.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flusher_int.h"
#include "log.h"

void
flusher_row_cb(void *arg, const struct pg_kv *row, int64_t value)
{
	struct fl_batch *b = arg;

	b->ents[row->ref].total = value;
	b->ents[row->ref].returned = 1;
}

/* Note a record to park, with why (sqlstate "" when not PostgreSQL's). */
int
flusher_reject_as(struct flusher *fl, size_t ent, int64_t value,
    uint64_t lsn, long keyed, const char *sqlstate, const char *why)
{
	struct fl_batch *b = &fl->b;
	struct fl_rej *r;

	if (b->nrej == b->rejcap) {
		size_t ncap = b->rejcap ? b->rejcap * 2 : 16;
		struct fl_rej *nr = realloc(b->rej, ncap * sizeof(*nr));
		struct pg_reject *np = realloc(b->prej, ncap * sizeof(*np));

		if (nr)
			b->rej = nr;
		if (np)
			b->prej = np;
		if (nr == NULL || np == NULL) {
			log_warnx("out of memory for rejected records");
			return -1;
		}
		b->rejcap = ncap;
	}
	r = &b->rej[b->nrej++];
	r->ent = ent;
	r->value = value;
	r->lsn = lsn;
	r->keyed = keyed;
	snprintf(r->sqlstate, sizeof(r->sqlstate), "%s", sqlstate);
	snprintf(r->reason, sizeof(r->reason), "%s", why);
	b->ents[ent].rejected = wrap_add(b->ents[ent].rejected, value);
	return 0;
}

/* Note a record PostgreSQL refused; pg->err says why. */
int
flusher_reject(struct flusher *fl, size_t ent, int64_t value, uint64_t lsn,
    long keyed)
{
	return flusher_reject_as(fl, ent, value, lsn, keyed, fl->pg.sqlstate,
	    fl->pg.err);
}

/*
 * The records of one key in the batch, in journal order, as they would
 * have joined its sum: keyed ones only when claimed.  -1: the journal
 * cannot be read again, or no memory.
 */
static int
flusher_key_records(struct flusher *fl, struct fl_ent *e)
{
	struct fl_batch *b = &fl->b;
	uint64_t seg = fl->h->seg_size, p;
	struct journal_record r;
	struct frame_info fi;
	enum frame_status st;
	const uint8_t *f, *q, *end;
	size_t ki = 0;
	struct fl_rec *rec;

	b->nrecs = 0;
	for (p = journal_lsn_normalize(seg, b->from); p < journal_lsn_normalize(
	    seg, b->upto); p = journal_lsn_normalize(seg, p + fi.len)) {
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
			long keyed = r.idem ? (long)ki++ : -1;

			if (r.key_len != e->len ||
			    memcmp(r.key, b->arena + e->off, e->len) != 0)
				continue;
			if (keyed >= 0 && ((size_t)keyed >= b->nkeyed ||
			    !b->keyed[keyed].applied))
				continue;
			if (b->nrecs == b->reccap) {
				size_t ncap = b->reccap ? b->reccap * 2 : 256;

				if ((rec = realloc(b->recs, ncap *
				    sizeof(*rec))) == NULL)
					return -1;
				b->recs = rec;
				b->reccap = ncap;
			}
			rec = &b->recs[b->nrecs++];
			rec->value = r.value;
			rec->lsn = p;
			rec->keyed = keyed;
		}
	}
	return 0;
}

/*
 * Apply records lo..hi of the key being isolated: all at once under a
 * savepoint, or, refused for their data, in halves; a record refused
 * alone is parked.
 */
static int
flusher_apply_records(struct flusher *fl, struct fl_ent *e, size_t lo,
    size_t hi)
{
	struct fl_batch *b = &fl->b;
	struct pg_kv kv;
	int64_t sum = 0;
	int overflow = 0;
	size_t mid;

	if (lo == hi)
		return 0;
	for (size_t i = lo; i < hi; i++)
		if (__builtin_add_overflow(sum, b->recs[i].value, &sum))
			overflow = 1;
	if (!overflow) {
		kv.key = b->arena + e->off;
		kv.len = e->len;
		kv.value = sum;
		kv.ref = e - b->ents;
		if (pg_savepoint(&fl->pg) == -1)
			return -1;
		if (pg_upsert(&fl->pg, &kv, 1, fl->shared, flusher_row_cb,
		    b) == 0) {
			e->sum = wrap_add(e->sum, sum);
			return pg_savepoint_release(&fl->pg);
		}
		if (!pg_is_data_error(&fl->pg) ||
		    pg_savepoint_undo(&fl->pg) == -1)
			return -1;
		if (hi - lo == 1)
			return flusher_reject(fl, e - b->ents, sum,
			    b->recs[lo].lsn, b->recs[lo].keyed);
	}
	mid = lo + (hi - lo) / 2;
	if (flusher_apply_records(fl, e, lo, mid) == -1)
		return -1;
	return flusher_apply_records(fl, e, mid, hi);
}

/* One key, record by record: its sum was refused, or left int64. */
int
flusher_isolate_key(struct flusher *fl, struct fl_ent *e)
{
	if (flusher_key_records(fl, e) == -1) {
		log_warnx("cannot read journal LSN %llu..%llu again to apply "
		    "a key record by record", (unsigned long long)fl->b.from,
		    (unsigned long long)fl->b.upto);
		fl->pg.sqlstate[0] = '\0';
		snprintf(fl->pg.err, sizeof(fl->pg.err), "journal read failed");
		return -1;
	}
	e->sum = 0;		/* what is applied, from here on */
	return flusher_apply_records(fl, e, 0, fl->b.nrecs);
}

/* Isolating: keys in halves under savepoints; a key alone, per record. */
int
flusher_upsert_split(struct flusher *fl, struct pg_kv *kv, size_t n)
{
	if (n == 0)
		return 0;
	if (pg_savepoint(&fl->pg) == -1)
		return -1;
	if (pg_upsert(&fl->pg, kv, n, fl->shared, flusher_row_cb, &fl->b) == 0)
		return pg_savepoint_release(&fl->pg);
	if (!pg_is_data_error(&fl->pg) || pg_savepoint_undo(&fl->pg) == -1)
		return -1;
	if (n == 1)
		return flusher_isolate_key(fl, &fl->b.ents[kv->ref]);
	if (flusher_upsert_split(fl, kv, n / 2) == -1)
		return -1;
	return flusher_upsert_split(fl, kv + n / 2, n - n / 2);
}

/* The batch was refused for its data: take it again, isolating. */
int
flusher_refused(struct flusher *fl, const char *what)
{
	shm_count(&fl->h->stats.pg_errors, 1);
	log_warnx("PostgreSQL refused the batch of journal LSN %llu..%llu "
	    "while %s: %s (SQLSTATE %s); applying it record by record to "
	    "park what it refuses", (unsigned long long)fl->b.from,
	    (unsigned long long)fl->b.upto, what, fl->pg.err, fl->pg.sqlstate);
	pg_rollback(&fl->pg);
	fl->isolate = 1;
	return 1;
}

/* Copy a key for a log line: at most 200 bytes, control bytes as '?'. */
static void
flusher_log_key(char *out, size_t cap, const char *key, size_t len)
{
	size_t o = 0;

	for (size_t i = 0; i < len && o + 4 < cap && o < 200; i++)
		out[o++] = (unsigned char)key[i] < 0x20 || key[i] == 0x7f ?
		    '?' : key[i];
	if (o < len && o + 4 < cap) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
}

/* Park the refused records: within the transaction. */
int
flusher_park(struct flusher *fl)
{
	struct fl_batch *b = &fl->b;

	for (size_t i = 0; i < b->nrej; i++) {
		struct fl_rej *r = &b->rej[i];
		struct pg_reject *p = &b->prej[i];
		struct fl_ent *e = &b->ents[r->ent];

		p->key = b->arena + e->off;
		p->key_len = e->len;
		p->value = r->value;
		p->ik = r->keyed >= 0 ? b->arena + b->keyed[r->keyed].ik_off :
		    NULL;
		p->ik_len = r->keyed >= 0 ? b->keyed[r->keyed].ik_len : 0;
		p->lsn = r->lsn;
		memcpy(p->sqlstate, r->sqlstate, sizeof(p->sqlstate));
		p->reason = r->reason;
	}
	return pg_reject(&fl->pg, fl->epoch_hex, b->prej, b->nrej);
}

/* After COMMIT: one log line per parked record. */
void
flusher_log_parked(struct flusher *fl)
{
	struct fl_batch *b = &fl->b;
	char key[256], ik[300];

	for (size_t i = 0; i < b->nrej; i++) {
		struct fl_rej *r = &b->rej[i];
		struct fl_ent *e = &b->ents[r->ent];

		flusher_log_key(key, sizeof(key), b->arena + e->off, e->len);
		ik[0] = '\0';
		if (r->keyed >= 0)
			snprintf(ik, sizeof(ik), ", Idempotency-Key %.*s",
			    (int)b->keyed[r->keyed].ik_len,
			    b->arena + b->keyed[r->keyed].ik_off);
		if (r->sqlstate[0] == '\0')
			log_warnx("parked increment of key '%s' by %lld (node "
			    "%s, journal LSN %llu%s) in tally_rejected: %s",
			    key, (long long)r->value, fl->cf->node,
			    (unsigned long long)r->lsn, ik, r->reason);
		else
			log_warnx("parked increment of key '%s' by %lld (node "
			    "%s, journal LSN %llu%s) in tally_rejected: "
			    "PostgreSQL refused it: %s (SQLSTATE %s)", key,
			    (long long)r->value, fl->cf->node,
			    (unsigned long long)r->lsn, ik, r->reason,
			    r->sqlstate);
	}
}
