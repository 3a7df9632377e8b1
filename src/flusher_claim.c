/*
 * A batch's Idempotency-Keys, claimed in PostgreSQL within the batch's
 * transaction.  A record with an Idempotency-Key joins its key's sum only
 * when PostgreSQL did not hold the key already (another node, or this one
 * before a crash, applied it): the claim and the upsert commit together,
 * so a key is applied once across nodes and crashes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flusher_int.h"

/* Where ik sits in the keyed records' index, or the free slot for it. */
static size_t
batch_keyed_slot(const struct fl_batch *b, const char *ik, size_t ik_len)
{
	const struct fl_keyed *f;
	size_t s;

	for (s = counters_hash(ik, ik_len) & (b->kicap - 1);
	    b->kindex[s] != 0; s = (s + 1) & (b->kicap - 1)) {
		f = &b->keyed[b->kindex[s] - 1];
		if (f->ik_len == ik_len &&
		    memcmp(b->arena + f->ik_off, ik, ik_len) == 0)
			break;
	}
	return s;
}

/*
 * Index the keyed records by Idempotency-Key.  A batch under load holds
 * tens of thousands of them, each looked up once when PostgreSQL answers
 * its claim: a scan per look-up would cost seconds.  -1: no memory.
 */
static int
batch_index_keyed(struct fl_batch *b)
{
	size_t cap = b->kicap ? b->kicap : 1024, s;

	while (cap < b->nkeyed * 2)
		cap *= 2;
	if (cap != b->kicap) {
		uint32_t *ni = realloc(b->kindex, cap * sizeof(*ni));

		if (ni == NULL)
			return -1;
		b->kindex = ni;
		b->kicap = cap;
	}
	if (b->kncap < b->nkeyed) {
		uint32_t *nn = realloc(b->knext, b->keyedcap * sizeof(*nn));

		if (nn == NULL)
			return -1;
		b->knext = nn;
		b->kncap = b->keyedcap;
	}
	memset(b->kindex, 0, cap * sizeof(*b->kindex));
	/* Backwards, each pushed in front: chains run in journal order. */
	for (size_t i = b->nkeyed; i-- > 0;) {
		const struct fl_keyed *k = &b->keyed[i];

		s = batch_keyed_slot(b, b->arena + k->ik_off, k->ik_len);
		b->knext[i] = b->kindex[s];
		b->kindex[s] = i + 1;
	}
	return 0;
}

/* The first keyed record with this Idempotency-Key + 1; 0: none. */
static uint32_t
batch_keyed_first(const struct fl_batch *b, const char *ik, size_t ik_len)
{
	return b->kindex[batch_keyed_slot(b, ik, ik_len)];
}

/*
 * Number each keyed record's use of its Idempotency-Key in the batch, in
 * journal order.  Returns how many uses the most used key has.
 */
static uint32_t
batch_number_uses(struct fl_batch *b)
{
	uint32_t most = 0, use;

	for (size_t i = 0; i < b->nkeyed; i++) {
		struct fl_keyed *k = &b->keyed[i];

		if (batch_keyed_first(b, b->arena + k->ik_off, k->ik_len) !=
		    i + 1)
			continue;
		use = 0;
		for (uint32_t j = i + 1; j != 0; j = b->knext[j - 1]) {
			b->keyed[j - 1].use = use++;
			b->keyed[j - 1].first = i;
		}
		if (use > most)
			most = use;
	}
	return most;
}

/* The record of this Idempotency-Key being claimed, unless settled. */
static struct fl_keyed *
flusher_keyed_find(struct fl_batch *b, const char *ik, size_t ik_len)
{
	uint32_t f = batch_keyed_first(b, ik, ik_len);
	struct fl_keyed *k;

	if (f == 0)
		return NULL;
	k = &b->keyed[b->keyed[f - 1].cur];
	return k->applied || k->rejected ? NULL : k;
}

static void
flusher_claimed_cb(void *arg, const char *ik, size_t ik_len, const char *key,
    size_t key_len, int64_t value, uint64_t time_us, int64_t total)
{
	struct fl_batch *b = arg;
	struct fl_keyed *k;
	struct fl_ent *e;

	if ((k = flusher_keyed_find(b, ik, ik_len)) == NULL)
		return;
	e = &b->ents[k->ent];
	k->applied = 1;
	if (__builtin_add_overflow(e->sum, k->value, &e->sum))
		e->overflow = 1;
	e->dropped = wrap_add(e->dropped, -(uint64_t)k->value);
}

/*
 * Isolating: claim the keys one by one under savepoints, parking the
 * records whose claim PostgreSQL refuses for its data.
 */
static int
flusher_claim_each(struct flusher *fl, size_t n)
{
	struct fl_batch *b = &fl->b;
	struct fl_keyed *k;

	for (size_t i = 0; i < n; i++) {
		if (pg_savepoint(&fl->pg) == -1)
			return -1;
		if (pg_idem_claim(&fl->pg, &b->idem[i], 1, fl->cf->idem_ttl_us,
		    flusher_claimed_cb, b) == 0) {
			if (pg_savepoint_release(&fl->pg) == -1)
				return -1;
			continue;
		}
		if (!pg_is_data_error(&fl->pg) ||
		    pg_savepoint_undo(&fl->pg) == -1)
			return -1;
		if ((k = flusher_keyed_find(b, b->idem[i].ik,
		    b->idem[i].ik_len)) == NULL)
			continue;
		if (flusher_reject(fl, k->ent, k->value, k->lsn,
		    k - b->keyed) == -1)
			return -1;
		/* Its delta leaves 'dropped' for 'rejected'. */
		k->rejected = 1;
		b->ents[k->ent].dropped = wrap_add(b->ents[k->ent].dropped,
		    -(uint64_t)k->value);
	}
	return 0;
}

/* The record k as row i of the batch's idempotency statements. */
static void
batch_idem_put(struct fl_batch *b, size_t i, const struct fl_keyed *k)
{
	b->idem[i].ik = b->arena + k->ik_off;
	b->idem[i].ik_len = k->ik_len;
	b->idem[i].key = b->arena + b->ents[k->ent].off;
	b->idem[i].key_len = b->ents[k->ent].len;
	b->idem[i].value = k->value;
	b->idem[i].time_us = k->time_us;
	b->idem[i].total = k->total;
	b->idem[i].has_total = k->has_total;
}

/* Claim the batch's records that are their key's use number 'use'. */
static int
flusher_claim_round(struct flusher *fl, uint32_t use)
{
	struct fl_batch *b = &fl->b;
	size_t n = 0;

	for (size_t i = 0; i < b->nkeyed; i++) {
		struct fl_keyed *k = &b->keyed[i];

		if (k->use != use)
			continue;
		b->keyed[k->first].cur = i;
		batch_idem_put(b, n++, k);
	}
	if (!fl->isolate)
		return pg_idem_claim(&fl->pg, b->idem, n, fl->cf->idem_ttl_us,
		    flusher_claimed_cb, b);
	if (n == 0)
		return 0;
	if (pg_savepoint(&fl->pg) == -1)
		return -1;
	if (pg_idem_claim(&fl->pg, b->idem, n, fl->cf->idem_ttl_us,
	    flusher_claimed_cb, b) == 0)
		return pg_savepoint_release(&fl->pg);
	if (!pg_is_data_error(&fl->pg) || pg_savepoint_undo(&fl->pg) == -1)
		return -1;
	/* The failed statement's callbacks never ran: nothing to undo. */
	return flusher_claim_each(fl, n);
}

static void
flusher_mismatch_cb(void *arg, const char *ik, size_t ik_len, const char *key,
    size_t key_len, int64_t value, uint64_t time_us, int64_t total)
{
	struct fl_keyed *k;

	if ((k = flusher_keyed_find(arg, ik, ik_len)) != NULL)
		k->mismatch = 1;
}

/*
 * After round 'use': a record whose claim did not take is a replay of
 * the use PostgreSQL holds only if its request is the same.  Another
 * request with the key (sent to another node, or to this one once it had
 * forgotten the key) was answered 202 and must not vanish: it is parked.
 */
static int
flusher_claim_conflicts(struct flusher *fl, uint32_t use)
{
	struct fl_batch *b = &fl->b;
	size_t n = 0;

	for (size_t i = 0; i < b->nkeyed; i++) {
		struct fl_keyed *k = &b->keyed[i];

		if (k->use != use || k->applied || k->rejected)
			continue;
		batch_idem_put(b, n++, k);
	}
	if (pg_idem_mismatched(&fl->pg, b->idem, n, flusher_mismatch_cb,
	    b) == -1)
		return -1;
	for (size_t i = 0; i < b->nkeyed; i++) {
		struct fl_keyed *k = &b->keyed[i];

		if (k->use != use || !k->mismatch)
			continue;
		if (flusher_reject_as(fl, k->ent, k->value, k->lsn, (long)i,
		    "", "Idempotency-Key already used for another request") ==
		    -1)
			return -1;
		/* Its delta leaves 'dropped' for 'rejected'. */
		k->rejected = 1;
		b->ents[k->ent].dropped = wrap_add(b->ents[k->ent].dropped,
		    -(uint64_t)k->value);
	}
	return 0;
}

/*
 * Within the transaction: claim the batch's Idempotency-Keys in
 * PostgreSQL; the deltas of the keys it returns join their sums.  A key
 * used more than once in the batch is claimed use by use, in journal
 * order, as PostgreSQL would see them batch by batch: one statement per
 * round, since ON CONFLICT changes a row once per statement.  A use ttl
 * after the one PostgreSQL holds then counts again, as it did on the
 * node; a nearer one (a retry that outlived the node's memory of the
 * key) counts once.  The node answers a use within ttl from its memory,
 * so a key seldom has a second use in one batch.
 */
int
flusher_claim(struct flusher *fl)
{
	struct fl_batch *b = &fl->b;
	uint32_t uses;

	if (b->nkeyed == 0)
		return 0;
	if (batch_index_keyed(b) == -1) {
		/* The caller logs it, as it logs PostgreSQL's errors. */
		snprintf(fl->pg.err, sizeof(fl->pg.err), "out of memory "
		    "for %zu Idempotency-Keys", b->nkeyed);
		fl->pg.sqlstate[0] = '\0';
		return -1;
	}
	uses = batch_number_uses(b);
	for (uint32_t use = 0; use < uses; use++)
		if (flusher_claim_round(fl, use) == -1 ||
		    flusher_claim_conflicts(fl, use) == -1)
			return -1;
	/* Applied by another node, or by this one before a crash. */
	for (size_t i = 0; i < b->nkeyed; i++)
		if (!b->keyed[i].applied && !b->keyed[i].rejected)
			b->ndup++;
	return 0;
}
