/*
 * Tests of the shared counter table: insertion and lookup, the key length
 * and capacity limits, deltas, totals and the int64 bounds of
 * reservations (whichever of those in flight land), the flusher's
 * commit, iteration; and, with forked
 * processes sharing one mapping as the workers do, that concurrent
 * inserts and increments lose nothing, that a reader never sees a
 * commit half done, and that a process killed at any moment leaves, once
 * repaired and adopted, each total exactly its published deltas.  And
 * eviction: what may go, what may not, and totals through a table far
 * smaller than the keys.
 */
#include <sys/mman.h>
#include <sys/wait.h>

#include <sched.h>
#include <signal.h>
#include <time.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "counters.h"

struct mapping {
	void	*base;
	size_t	 size;
};

static struct counters *
table_new(struct mapping *m, uint64_t max_keys, size_t max_key_bytes)
{
	struct counters *c;

	m->size = counters_size(max_keys, max_key_bytes);
	ck_assert_uint_gt(m->size, max_keys * max_key_bytes);
	m->base = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_SHARED |
	    MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(m->base, MAP_FAILED);
	c = counters_init(m->base, max_keys, max_key_bytes);
	ck_assert_ptr_eq(c, m->base);
	ck_assert_uint_eq(c->capacity, max_keys);
	ck_assert_uint_gt(c->nslots, max_keys);
	/* nslots is a power of two. */
	ck_assert_uint_eq(c->nslots & (c->nslots - 1), 0);
	ck_assert_uint_eq(counters_count(c), 0);
	return c;
}

static void
table_free(struct mapping *m)
{
	munmap(m->base, m->size);
}

static struct counter_entry *
get(struct counters *c, const char *key)
{
	return counters_get(c, key, strlen(key));
}

static struct counter_entry *
lookup(struct counters *c, const char *key)
{
	return counters_lookup(c, key, strlen(key));
}

static int64_t
total(const struct counter_entry *e)
{
	int overflow = -1;
	int64_t t = counters_total(e, &overflow);

	ck_assert_int_eq(overflow, 0);
	return t;
}

/* --- the table --- */

#define MANY	5000

START_TEST(test_insert_lookup)
{
	struct mapping m;
	struct counters *c = table_new(&m, MANY, 48);
	static struct counter_entry *ents[MANY];
	char key[64];

	for (int i = 0; i < MANY; i++) {
		snprintf(key, sizeof(key), "user:%d:clicks", i);
		ck_assert_ptr_null(lookup(c, key));
		ck_assert_ptr_nonnull(ents[i] = get(c, key));
		ck_assert_uint_eq(ents[i]->key_len, strlen(key));
		ck_assert_mem_eq(ents[i]->key, key, strlen(key));
		ck_assert_uint_eq(ents[i]->hash, counters_hash(key,
		    strlen(key)));
		ck_assert_int_eq(ents[i]->committed, 0);
		ck_assert_int_eq(ents[i]->unflushed, 0);
		ck_assert_int_eq(ents[i]->pending, 0);
		/* A new key starts from 0 until a flush says more. */
		ck_assert_uint_eq(ents[i]->committed_known, 1);
		ck_assert_uint_eq(counters_count(c), i + 1);
		counters_add(c, ents[i], i + 1, 0);
	}
	/*
	 * The table is full and every key has something unflushed: a new
	 * key is refused, the old ones remain.
	 */
	ck_assert_ptr_null(get(c, "one-too-many"));
	ck_assert_ptr_null(lookup(c, "one-too-many"));
	ck_assert_uint_eq(counters_count(c), MANY);
	ck_assert_uint_eq(c->used, MANY);
	for (int i = 0; i < MANY; i++) {
		snprintf(key, sizeof(key), "user:%d:clicks", i);
		ck_assert_ptr_eq(lookup(c, key), ents[i]);
		ck_assert_ptr_eq(get(c, key), ents[i]);
		ck_assert_int_eq(total(ents[i]), i + 1);
	}
	ck_assert_uint_eq(counters_count(c), MANY);
	ck_assert_ptr_null(get(c, "still-too-many"));
	/* Keys differing in one byte, or a prefix, are different keys. */
	ck_assert_ptr_null(lookup(c, "user:1:click"));
	ck_assert_ptr_null(lookup(c, "user:1:clicks "));
	table_free(&m);
}
END_TEST

START_TEST(test_key_length)
{
	struct mapping m;
	struct counters *c = table_new(&m, 100, 32);
	char key[64];
	struct counter_entry *e, *f;

	memset(key, 'k', sizeof(key));
	ck_assert_ptr_nonnull(e = counters_get(c, key, 32));
	ck_assert_uint_eq(e->key_len, 32);
	ck_assert_ptr_eq(counters_lookup(c, key, 32), e);
	ck_assert_ptr_null(counters_get(c, key, 33));
	ck_assert_ptr_null(counters_lookup(c, key, 33));
	ck_assert_ptr_null(counters_get(c, key, 64));
	ck_assert_ptr_null(counters_get(c, key, 0));
	ck_assert_ptr_null(counters_lookup(c, key, 0));
	ck_assert_uint_eq(counters_count(c), 1);
	/* The last byte counts. */
	key[31] = 'x';
	ck_assert_ptr_null(counters_lookup(c, key, 32));
	ck_assert_ptr_nonnull(f = counters_get(c, key, 32));
	ck_assert_ptr_ne(f, e);
	ck_assert_ptr_nonnull(f = counters_get(c, key, 1));
	ck_assert_ptr_ne(f, e);
	ck_assert_uint_eq(counters_count(c), 3);
	/* Binary keys. */
	ck_assert_ptr_nonnull(e = counters_get(c, "a\0b", 3));
	ck_assert_ptr_ne(e, counters_get(c, "a\0c", 3));
	ck_assert_ptr_eq(counters_lookup(c, "a\0b", 3), e);
	ck_assert_uint_eq(counters_count(c), 5);
	table_free(&m);
}
END_TEST

START_TEST(test_small_capacity)
{
	struct mapping m;
	struct counters *c;
	char key[32];

	for (uint64_t cap = 1; cap <= 40; cap++) {
		c = table_new(&m, cap, 8);
		for (uint64_t i = 0; i < cap; i++) {
			snprintf(key, sizeof(key), "%llu",
			    (unsigned long long)i);
			counters_add(c, get(c, key), 1, 0);
		}
		ck_assert_ptr_null(get(c, "x"));
		ck_assert_uint_eq(counters_count(c), cap);
		ck_assert_ptr_nonnull(get(c, "0"));
		table_free(&m);
	}
}
END_TEST

START_TEST(test_deltas)
{
	struct mapping m;
	struct counters *c = table_new(&m, 10, 16);
	struct counter_entry *e = get(c, "k");
	int64_t cm, un;
	int overflow;

	counters_add(c, e, 5, 0);
	counters_add(c, e, -3, 0);
	counters_read(e, &cm, &un);
	ck_assert_int_eq(cm, 0);
	ck_assert_int_eq(un, 2);
	counters_set_committed(c, e, 10);
	ck_assert_uint_eq(e->committed_known, 1);
	ck_assert_int_eq(total(e), 12);
	counters_read(e, &cm, &un);
	ck_assert_int_eq(cm, 10);
	ck_assert_int_eq(un, 2);

	/* Totals leaving int64 are flagged, both ways. */
	counters_set_committed(c, e, INT64_MAX);
	counters_add(c, e, -2, 0);
	ck_assert_int_eq(counters_total(e, &overflow), INT64_MAX);
	ck_assert_int_eq(overflow, 0);
	counters_add(c, e, 1, 0);
	(void)counters_total(e, &overflow);
	ck_assert_int_eq(overflow, 1);
	counters_add(c, e, -1, 0);
	ck_assert_int_eq(counters_total(e, &overflow), INT64_MAX);
	ck_assert_int_eq(overflow, 0);
	counters_add(c, e, 0, 0);
	ck_assert_int_eq(total(e), INT64_MAX);

	counters_set_committed(c, e, INT64_MIN);
	counters_add(c, e, 0, 0);
	ck_assert_int_eq(counters_total(e, &overflow), INT64_MIN);
	ck_assert_int_eq(overflow, 0);
	counters_add(c, e, -1, 0);
	(void)counters_total(e, &overflow);
	ck_assert_int_eq(overflow, 1);
	table_free(&m);
}
END_TEST

START_TEST(test_reserve)
{
	struct mapping m;
	struct counters *c = table_new(&m, 10, 16);
	struct counter_entry *e = get(c, "k");
	int64_t cm, un;

	counters_set_committed(c, e, INT64_MAX - 20);
	counters_add(c, e, 10, 0);
	/* Total MAX - 10: 11 more would leave int64. */
	ck_assert_int_eq(counters_reserve(c, e, 11), -1);
	ck_assert_int_eq(e->pending, 0);
	ck_assert_int_eq(counters_reserve(c, e, INT64_MAX), -1);
	ck_assert_int_eq(e->pending, 0);
	counters_read(e, &cm, &un);
	ck_assert_int_eq(cm, INT64_MAX - 20);
	ck_assert_int_eq(un, 10);
	ck_assert_int_eq(counters_reserve(c, e, 4), 0);
	ck_assert_int_eq(e->pending, 4);
	/* Pending deltas count: 6 fit, 7 do not. */
	ck_assert_int_eq(counters_reserve(c, e, 7), -1);
	ck_assert_int_eq(e->pending, 4);
	ck_assert_int_eq(counters_reserve(c, e, 6), 0);
	ck_assert_int_eq(e->pending, 10);
	ck_assert_int_eq(counters_reserve(c, e, 1), -1);
	ck_assert_int_eq(e->pending, 10);
	/* Going down is always fine here. */
	ck_assert_int_eq(counters_reserve(c, e, -1000), 0);
	ck_assert_int_eq(e->pending, -990);
	/* But makes no room going up: the -1000 may never land. */
	ck_assert_int_eq(counters_reserve(c, e, 1), -1);
	ck_assert_int_eq(e->pending, -990);
	ck_assert_int_eq(e->pend_neg, -1000);
	counters_unreserve(c, e, -1000);
	ck_assert_int_eq(e->pend_neg, 0);
	/* The durable step: add, then unreserve. */
	counters_add(c, e, 4, 0);
	counters_unreserve(c, e, 4);
	counters_add(c, e, 6, 0);
	counters_unreserve(c, e, 6);
	ck_assert_int_eq(e->pending, 0);
	ck_assert_int_eq(total(e), INT64_MAX);
	ck_assert_int_eq(counters_reserve(c, e, 1), -1);
	ck_assert_int_eq(counters_reserve(c, e, 0), 0);
	ck_assert_int_eq(e->pending, 0);

	/* The other end. */
	counters_read(e, &cm, &un);
	counters_commit(c, e, INT64_MIN + 5, un);
	counters_read(e, &cm, &un);
	ck_assert_int_eq(cm, INT64_MIN + 5);
	ck_assert_int_eq(un, 0);
	ck_assert_int_eq(counters_reserve(c, e, -6), -1);
	ck_assert_int_eq(counters_reserve(c, e, INT64_MIN), -1);
	ck_assert_int_eq(e->pending, 0);
	ck_assert_int_eq(total(e), INT64_MIN + 5);
	ck_assert_int_eq(counters_reserve(c, e, -5), 0);
	ck_assert_int_eq(counters_reserve(c, e, -1), -1);
	ck_assert_int_eq(e->pending, -5);
	/* Going up makes no room going down. */
	ck_assert_int_eq(counters_reserve(c, e, 1000), 0);
	ck_assert_int_eq(counters_reserve(c, e, -1), -1);
	ck_assert_int_eq(e->pending, 995);
	ck_assert_int_eq(e->pend_neg, -5);
	counters_unreserve(c, e, 1000);
	counters_unreserve(c, e, -5);
	ck_assert_int_eq(e->pending, 0);
	ck_assert_int_eq(e->pend_neg, 0);
	ck_assert_int_eq(total(e), INT64_MIN + 5);
	table_free(&m);
}
END_TEST

START_TEST(test_commit)
{
	struct mapping m;
	struct counters *c = table_new(&m, 10, 16);
	struct counter_entry *e = get(c, "k");
	int64_t cm, un;

	counters_add(c, e, 100, 0);
	ck_assert_uint_eq(e->committed_known, 1);
	/* Rebuilt from the journal: unknown until PostgreSQL answers. */
	counters_forget_committed(c, e);
	ck_assert_uint_eq(e->committed_known, 0);
	/* PostgreSQL took 70 of the 100 and now holds 70. */
	counters_commit(c, e, 70, 70);
	counters_read(e, &cm, &un);
	ck_assert_int_eq(cm, 70);
	ck_assert_int_eq(un, 30);
	ck_assert_int_eq(total(e), 100);
	ck_assert_uint_eq(e->committed_known, 1);
	ck_assert_uint_eq(e->lock % 2, 0);
	/* Meanwhile more came in. */
	counters_add(c, e, -50, 0);
	counters_commit(c, e, 100, 30);
	counters_read(e, &cm, &un);
	ck_assert_int_eq(cm, 100);
	ck_assert_int_eq(un, -50);
	ck_assert_int_eq(total(e), 50);
	counters_commit(c, e, 50, -50);
	counters_read(e, &cm, &un);
	ck_assert_int_eq(cm, 50);
	ck_assert_int_eq(un, 0);
	ck_assert_uint_eq(e->lock % 2, 0);
	table_free(&m);
}
END_TEST

START_TEST(test_iterate)
{
	struct mapping m;
	struct counters *c = table_new(&m, 1000, 16);
	static int seen[700];
	char key[16];
	uint64_t n = 0;

	memset(seen, 0, sizeof(seen));
	for (int i = 0; i < 700; i++) {
		snprintf(key, sizeof(key), "it%d", i);
		counters_add(c, get(c, key), i + 1, 0);
	}
	for (uint64_t i = 0; i < counters_slots(c); i++) {
		struct counter_entry *e = counters_slot(c, i);
		int k;

		if (e == NULL)
			continue;
		n++;
		ck_assert_uint_lt(e->key_len, sizeof(key));
		memcpy(key, e->key, e->key_len);
		key[e->key_len] = '\0';
		ck_assert_int_eq(sscanf(key, "it%d", &k), 1);
		ck_assert(k >= 0 && k < 700);
		ck_assert_int_eq(seen[k], 0);
		seen[k] = 1;
		ck_assert_int_eq(total(e), k + 1);
	}
	ck_assert_uint_eq(n, 700);
	/* Entries are handed out in order, none skipped. */
	ck_assert_uint_eq(counters_slots(c), 700);
	for (int i = 0; i < 700; i++)
		ck_assert_int_eq(seen[i], 1);
	table_free(&m);
}
END_TEST

/*
 * Keys hashed all over a large table share pages: each page first
 * touched costs every process a fault, so the table must not spread
 * 10000 keys over 10000 pages.
 */
START_TEST(test_dense)
{
	struct mapping m;
	struct counters *c = table_new(&m, 1000000, 256);
	long pg = sysconf(_SC_PAGESIZE);
	size_t npages = (m.size + pg - 1) / pg, resident = 0;
	unsigned char *vec = malloc(npages);
	char key[32];

	ck_assert_ptr_nonnull(vec);
	for (int i = 0; i < 10000; i++) {
		snprintf(key, sizeof(key), "dense-%d", i);
		ck_assert_ptr_nonnull(get(c, key));
	}
	ck_assert_int_eq(mincore(m.base, npages * pg, vec), 0);
	for (size_t i = 0; i < npages; i++)
		resident += vec[i] & 1;
	/* About 4k index pages and 1k entry pages; one per key before. */
	ck_assert_uint_lt(resident, 6000);
	for (int i = 0; i < 10000; i++) {
		snprintf(key, sizeof(key), "dense-%d", i);
		ck_assert_ptr_nonnull(lookup(c, key));
	}
	free(vec);
	table_free(&m);
}
END_TEST

/* --- several processes --- */

#define CHILDREN	4
#define KEYS		1000
#define SHARED_KEYS	600
#define OWN_KEYS	((KEYS - SHARED_KEYS) / CHILDREN)
#define OPS		200000

static uint64_t
rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Key k of child c's view: shared keys first, then its own. */
static int
key_name(char *buf, size_t len, int child, int k)
{
	if (k < SHARED_KEYS)
		return snprintf(buf, len, "shared/%d", k);
	return snprintf(buf, len, "own/%d/%d", child, k - SHARED_KEYS);
}

static int
child_increments(struct counters *c, int child, int64_t *expect)
{
	uint64_t s = 0x2545f4914f6cdd1dULL * (child + 1);
	const int nk = SHARED_KEYS + OWN_KEYS;
	char key[64];
	int len;

	/* Touch every key once, each child in its own order. */
	for (int i = 0; i < nk; i++) {
		int k = (i * 7 + child * 131) % nk;
		struct counter_entry *e;

		len = key_name(key, sizeof(key), child, k);
		if ((e = counters_get(c, key, len)) == NULL)
			return 1;
		counters_add(c, e, 1, 0);
		expect[k]++;
	}
	for (int i = 0; i < OPS; i++) {
		int k = rnd(&s) % nk;
		int64_t d = (int64_t)(rnd(&s) % 2001) - 1000;
		struct counter_entry *e;

		len = key_name(key, sizeof(key), child, k);
		if ((e = counters_get(c, key, len)) == NULL)
			return 1;
		counters_add(c, e, d, 0);
		expect[k] += d;
	}
	return 0;
}

START_TEST(test_concurrent_increments)
{
	struct mapping m, em;
	struct counters *c = table_new(&m, 2 * KEYS, 32);
	int64_t *expect;
	pid_t pids[CHILDREN];
	char key[64];

	em.size = sizeof(int64_t) * CHILDREN * KEYS;
	em.base = mmap(NULL, em.size, PROT_READ | PROT_WRITE, MAP_SHARED |
	    MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(em.base, MAP_FAILED);
	expect = em.base;
	for (int i = 0; i < CHILDREN; i++) {
		/* No ck_ call in the child: it shares the test's channel. */
		if ((pids[i] = fork()) == -1)
			ck_abort_msg("fork: %s", strerror(errno));
		if (pids[i] == 0)
			_exit(child_increments(c, i, expect +
			    (size_t)i * KEYS));
	}
	for (int i = 0; i < CHILDREN; i++) {
		int status;

		ck_assert_int_eq(waitpid(pids[i], &status, 0), pids[i]);
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		    "child %d: status %#x", i, status);
	}
	ck_assert_uint_eq(counters_count(c), KEYS);
	ck_assert_uint_eq(c->used, KEYS);
	for (int k = 0; k < SHARED_KEYS; k++) {
		int64_t want = 0;
		int len = key_name(key, sizeof(key), 0, k);
		struct counter_entry *e = counters_lookup(c, key, len);

		for (int i = 0; i < CHILDREN; i++)
			want += expect[(size_t)i * KEYS + k];
		ck_assert_ptr_nonnull(e);
		ck_assert_int_eq(total(e), want);
	}
	for (int i = 0; i < CHILDREN; i++)
		for (int k = SHARED_KEYS; k < SHARED_KEYS + OWN_KEYS; k++) {
			int len = key_name(key, sizeof(key), i, k);
			struct counter_entry *e = counters_lookup(c, key, len);

			ck_assert_ptr_nonnull(e);
			ck_assert_int_eq(total(e), expect[(size_t)i * KEYS +
			    k]);
		}
	/* Every key sits in exactly one slot. */
	{
		uint64_t n = 0;

		for (uint64_t i = 0; i < counters_slots(c); i++)
			if (counters_slot(c, i) != NULL)
				n++;
		ck_assert_uint_eq(n, KEYS);
	}
	munmap(em.base, em.size);
	table_free(&m);
}
END_TEST

#define UNFLUSHED	4000000
#define ROUNDS		12

/*
 * The writer plays the flusher: it moves the unflushed delta into the
 * committed value bit by bit, so committed + unflushed stays UNFLUSHED
 * throughout; the reader must never see a pair that says otherwise, nor
 * committed going back.
 */
START_TEST(test_commit_readers)
{
	struct mapping m;
	struct counters *c = table_new(&m, 100, 16);

	/* A torn read is a matter of timing: give it several chances. */
	for (int round = 0; round < ROUNDS; round++) {
		struct counter_entry *e;
		pid_t reader, writer;
		int64_t cm, un;
		char key[16];
		int status;

		snprintf(key, sizeof(key), "hot%d", round);
		ck_assert_ptr_nonnull(e = get(c, key));
		counters_add(c, e, UNFLUSHED, 0);
		if ((reader = fork()) == -1)
			ck_abort_msg("fork: %s", strerror(errno));
		if (reader == 0) {
			int64_t last = 0;
			uint64_t reads = 0;

			do {
				counters_read(e, &cm, &un);
				reads++;
				if (cm + un != UNFLUSHED || cm < last)
					_exit(1);
				last = cm;
			} while (cm != UNFLUSHED);
			/* The reader did overlap the writer. */
			_exit(reads > 100 ? 0 : 2);
		}
		if ((writer = fork()) == -1)
			ck_abort_msg("fork: %s", strerror(errno));
		if (writer == 0) {
			uint64_t s = 99 + round;
			int64_t d;

			cm = 0;
			while (cm < UNFLUSHED) {
				d = 1 + rnd(&s) % 3;
				if (cm + d > UNFLUSHED)
					d = UNFLUSHED - cm;
				cm += d;
				counters_commit(c, e, cm, d);
				/* On a busy machine, let the reader run too. */
				if ((cm & 4095) < 3)
					sched_yield();
			}
			_exit(0);
		}
		ck_assert_int_eq(waitpid(writer, &status, 0), writer);
		ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		ck_assert_int_eq(waitpid(reader, &status, 0), reader);
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		    "round %d: reader: status %#x", round, status);
		counters_read(e, &cm, &un);
		ck_assert_int_eq(cm, UNFLUSHED);
		ck_assert_int_eq(un, 0);
	}
	table_free(&m);
}
END_TEST

/* --- owners: eviction, and crashes in the middle of a change --- */

static struct counter_owner *
owner_new(struct mapping *m, uint32_t id, uint32_t ledger)
{
	struct counter_owner *o;

	m->size = counters_owner_size(ledger);
	m->base = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_SHARED |
	    MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(m->base, MAP_FAILED);
	o = m->base;
	counters_owner_init(o, id, ledger);
	return o;
}

/*
 * counters_acquire as a worker calls it: a key the table does not hold
 * takes its total from PostgreSQL, which holds in_pg for it.
 */
static enum counters_rc
acquire_pg(struct counters *c, struct counter_owner *o, const char *key,
    size_t len, int64_t v, int64_t in_pg, struct counter_entry **e,
    uint64_t *idx)
{
	struct counters_seed seed;
	enum counters_rc rc;

	/*
	 * No ck_assert here: the forked tests call this, and a child killed
	 * while it reports a check to the parent garbles the report.
	 */
	seed.known = 1;
	seed.committed = in_pg;
	for (int asked = 0; asked < 100; asked++) {
		/* An answer is stale once the key's slot went meanwhile. */
		seed.gen = counters_seed_gen(c, key, len);
		if ((rc = counters_acquire(c, o, key, len, v, asked ? &seed :
		    NULL, e, idx)) != COUNTERS_UNKNOWN)
			return rc;
	}
	return COUNTERS_UNKNOWN;
}

static enum counters_rc
acquire(struct counters *c, struct counter_owner *o, const char *key,
    size_t len, int64_t v, struct counter_entry **e, uint64_t *idx)
{
	return acquire_pg(c, o, key, len, v, 0, e, idx);
}

/* Publish ledger entry idx in a frame at lsn and apply it: the total. */
static int64_t
durable(struct counters *c, struct counter_owner *o, uint64_t idx,
    uint64_t lsn)
{
	int64_t t;
	int ovf;

	counters_publishing(o, idx + 1, lsn);
	counters_published(o, lsn + 1);
	counters_apply(c, o, idx, lsn + 1, &t, &ovf);
	ck_assert_int_eq(ovf, 0);
	return t;
}

/* Reserve, publish at lsn, apply with frame end lsn + 1, release. */
static struct counter_entry *
incr(struct counters *c, struct counter_owner *o, const char *key,
    int64_t v, uint64_t lsn)
{
	struct counter_entry *e;
	uint64_t idx;

	ck_assert_int_eq(acquire(c, o, key, strlen(key), v, &e,
	    &idx), COUNTERS_OK);
	ck_assert_int_eq(e->refs, 1);
	durable(c, o, idx, lsn);
	counters_release_tail(c, o);
	ck_assert_int_eq(e->refs, 0);
	ck_assert_int_eq(e->pending, 0);
	return e;
}

static int
held(struct counters *c, const char *key, int64_t *cm, int64_t *un,
    int *known)
{
	return counters_peek(c, key, strlen(key), cm, un, known);
}

/*
 * Near one end of int64 (s = 1: INT64_MAX, -1: INT64_MIN), a delta
 * reserved towards the other end does not make room: it may be refused
 * or die with its worker, and be released, while what it let in was
 * answered 202.
 */
static void
in_flight_bound(int s)
{
	struct mapping m, om;
	struct counters *c = table_new(&m, 10, 16);
	struct counter_owner *o = owner_new(&om, 1, 64);
	struct counter_entry *e = get(c, "k"), *e2;
	int64_t bound = s > 0 ? INT64_MAX : INT64_MIN;
	uint64_t idx, back;

	counters_set_committed(c, e, bound - s * 10);
	/* Back off by 1000, then try to use the room. */
	ck_assert_int_eq(acquire(c, o, "k", 1, -s * 1000, &e2,
	    &back), COUNTERS_OK);
	ck_assert_ptr_eq(e2, e);
	ck_assert_int_eq(acquire(c, o, "k", 1, s * 1000, &e2,
	    &idx), COUNTERS_OVERFLOW);
	ck_assert_int_eq(acquire(c, o, "k", 1, s * 11, &e2,
	    &idx), COUNTERS_OVERFLOW);
	ck_assert_int_eq(e->pending, -s * 1000);
	ck_assert_int_eq(e->pend_neg, s > 0 ? -1000 : 0);
	ck_assert_uint_eq(o->head - o->tail, 1);
	/* What fits without the back-off still does. */
	ck_assert_int_eq(acquire(c, o, "k", 1, s * 10, &e2,
	    &idx), COUNTERS_OK);
	ck_assert_int_eq(e->pending, -s * 990);
	ck_assert_int_eq(e->pend_neg, s > 0 ? -1000 : -10);
	ck_assert_int_eq(acquire(c, o, "k", 1, s, &e2, &idx),
	    COUNTERS_OVERFLOW);
	counters_release_head(c, o);

	/* The back-off is released: the room it seemed to make is gone. */
	counters_release_head(c, o);
	ck_assert_uint_eq(o->head, o->tail);
	ck_assert_int_eq(e->pending, 0);
	ck_assert_int_eq(e->pend_neg, 0);
	ck_assert_int_eq(total(e), bound - s * 10);
	ck_assert_int_eq(acquire(c, o, "k", 1, s * 1000, &e2,
	    &idx), COUNTERS_OVERFLOW);
	ck_assert_int_eq(acquire(c, o, "k", 1, s * 11, &e2,
	    &idx), COUNTERS_OVERFLOW);

	/* Again, and this time it is durable: the room is real. */
	ck_assert_int_eq(acquire(c, o, "k", 1, -s * 1000, &e2,
	    &back), COUNTERS_OK);
	ck_assert_int_eq(acquire(c, o, "k", 1, s * 1000, &e2,
	    &idx), COUNTERS_OVERFLOW);
	ck_assert_int_eq(durable(c, o, back, 100), bound - s * 1010);
	ck_assert_int_eq(e->pending, 0);
	ck_assert_int_eq(e->pend_neg, 0);
	counters_release_tail(c, o);
	ck_assert_int_eq(acquire(c, o, "k", 1, s * 1000, &e2,
	    &idx), COUNTERS_OK);
	ck_assert_int_eq(e->pending, s * 1000);
	ck_assert_int_eq(e->pend_neg, s > 0 ? 0 : -1000);
	ck_assert_int_eq(acquire(c, o, "k", 1, s * 11, &e2,
	    &idx), COUNTERS_OVERFLOW);
	ck_assert_int_eq(durable(c, o, idx, 200), bound - s * 10);
	counters_release_tail(c, o);
	ck_assert_int_eq(e->pending, 0);
	ck_assert_int_eq(e->pend_neg, 0);
	ck_assert_int_eq(e->refs, 0);
	table_free(&om);
	table_free(&m);
}

START_TEST(test_in_flight_max)
{
	in_flight_bound(1);
}
END_TEST

START_TEST(test_in_flight_min)
{
	in_flight_bound(-1);
}
END_TEST

START_TEST(test_evict)
{
	struct mapping m, om;
	struct counters *c = table_new(&m, 4, 16);
	struct counter_owner *o = owner_new(&om, 1, 64);
	struct counter_entry *e, *k0;
	int64_t cm, un;
	uint64_t idx;
	int known;
	char key[8];

	/* k0: +5 and -5 added, neither flushed: unflushed 0, not evictable. */
	k0 = incr(c, o, "k0", 5, 100);
	incr(c, o, "k0", -5, 200);
	ck_assert_int_eq(k0->unflushed, 0);
	for (int i = 1; i < 4; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		incr(c, o, key, 5, 300 + i);
	}
	ck_assert_uint_eq(counters_count(c), 4);
	ck_assert_int_eq(acquire(c, o, "k4", 2, 1, &e, &idx),
	    COUNTERS_FULL);
	ck_assert_uint_eq(c->evictions, 0);
	/* The +5 flushed alone: still not. */
	counters_commit_key(c, NULL, "k0", 2, 1, 5, 5, 5, 101);
	ck_assert_int_eq(k0->unflushed, -5);
	ck_assert_int_eq(acquire(c, o, "k4", 2, 1, &e, &idx),
	    COUNTERS_FULL);
	/* The same batch again (a flusher that died) changes nothing. */
	counters_commit_key(c, NULL, "k0", 2, 1, 5, 5, 5, 101);
	ck_assert_int_eq(k0->unflushed, -5);
	ck_assert_int_eq(k0->committed, 5);
	/* Then the -5: everything k0 added is in PostgreSQL. */
	counters_commit_key(c, NULL, "k0", 2, 1, 0, -5, -5, 201);
	ck_assert_int_eq(k0->unflushed, 0);
	ck_assert_int_eq(acquire(c, o, "k4", 2, 7, &e, &idx),
	    COUNTERS_OK);
	ck_assert_uint_eq(c->evictions, 1);
	ck_assert_uint_eq(counters_count(c), 4);
	ck_assert(!held(c, "k0", &cm, &un, &known));
	ck_assert_ptr_null(lookup(c, "k0"));
	/* k4 is held by its reservation: nothing to evict for k0. */
	ck_assert_int_eq(acquire(c, o, "k0", 2, 1, &e, &idx),
	    COUNTERS_FULL);
	ck_assert_uint_eq(o->head - o->tail, 1);
	counters_release_head(c, o);
	ck_assert_uint_eq(o->head, o->tail);
	/* k4 now holds nothing at all, and goes for k0. */
	ck_assert_int_eq(acquire(c, o, "k0", 2, 3, &e, &idx),
	    COUNTERS_OK);
	ck_assert_uint_eq(c->evictions, 2);
	ck_assert_ptr_null(lookup(c, "k4"));
	ck_assert(held(c, "k0", &cm, &un, &known));
	/* Back in its slot with its value, or from PostgreSQL later. */
	if (known)
		ck_assert_int_eq(cm, 0);
	ck_assert_int_eq(e->pending, 3);
	counters_release_head(c, o);
	for (int i = 1; i < 4; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		ck_assert(held(c, key, &cm, &un, &known));
		ck_assert_int_eq(cm + un, 5);
	}
	table_free(&om);
	table_free(&m);
}
END_TEST

/*
 * A key the table does not hold is not taken as new: its first increment
 * waits for PostgreSQL's total, which then counts in the answer and in
 * the int64 guard.  An answer older than a takeover of the key's slot is
 * refused, since a flush of the key may have come after it.
 */
START_TEST(test_seed)
{
	struct mapping m, om;
	struct counters *c = table_new(&m, 4, 16);
	struct counter_owner *o = owner_new(&om, 1, 64);
	struct counter_entry *e, *a;
	struct counters_seed seed;
	int64_t cm, un;
	uint64_t idx, lsn = 100, gen0;
	int known;
	char key[16];

	ck_assert_int_eq(counters_acquire(c, o, "r1", 2, 1, NULL, &e, &idx),
	    COUNTERS_UNKNOWN);
	ck_assert_uint_eq(counters_count(c), 0);
	ck_assert_ptr_null(lookup(c, "r1"));
	ck_assert_uint_eq(o->head, o->tail);
	/* PostgreSQL holds 100: the answer to +1 is 101. */
	ck_assert_int_eq(acquire_pg(c, o, "r1", 2, 1, 100, &e, &idx),
	    COUNTERS_OK);
	ck_assert_int_eq(durable(c, o, idx, lsn), 101);
	counters_release_tail(c, o);
	ck_assert(held(c, "r1", &cm, &un, &known));
	ck_assert(known);
	ck_assert_int_eq(cm + un, 101);
	/* Held now: no seed needed. */
	ck_assert_int_eq(counters_acquire(c, o, "r1", 2, 1, NULL, &e, &idx),
	    COUNTERS_OK);
	counters_release_head(c, o);

	/* PostgreSQL at INT64_MAX: +1 is refused, and nothing is held. */
	ck_assert_int_eq(acquire_pg(c, o, "big", 3, 1, INT64_MAX, &e, &idx),
	    COUNTERS_OVERFLOW);
	ck_assert(!held(c, "big", &cm, &un, &known));
	ck_assert_int_eq(acquire_pg(c, o, "big", 3, -1, INT64_MAX, &e, &idx),
	    COUNTERS_OK);
	ck_assert_int_eq(e->committed, INT64_MAX);
	counters_release_head(c, o);

	/* a: +5, flushed, evictable; its seed is taken now. */
	ck_assert_int_eq(acquire(c, o, "a", 1, 5, &a, &idx), COUNTERS_OK);
	durable(c, o, idx, lsn);
	counters_release_tail(c, o);
	counters_commit_key(c, NULL, "a", 1, 1, 5, 5, 5, lsn + 1);
	gen0 = counters_seed_gen(c, "a", 1);
	/* Other keys through the table until a's slot holds another. */
	for (int i = 0; a->key_len == 1 && a->key[0] == 'a'; i++) {
		ck_assert_int_lt(i, 10000);
		snprintf(key, sizeof(key), "x%d", i);
		lsn += 10;
		ck_assert_int_eq(acquire(c, o, key, strlen(key), 1, &e, &idx),
		    COUNTERS_OK);
		durable(c, o, idx, lsn);
		counters_release_tail(c, o);
		counters_commit_key(c, NULL, key, strlen(key), 1, 1, 1, 1,
		    lsn + 1);
	}
	ck_assert_uint_ne(counters_seed_gen(c, "a", 1), gen0);
	/* An answer asked before the takeover may miss the flush of 5. */
	seed.gen = gen0;
	seed.known = 1;
	seed.committed = 0;
	ck_assert_int_eq(counters_acquire(c, o, "a", 1, 1, &seed, &e, &idx),
	    COUNTERS_UNKNOWN);
	ck_assert(!held(c, "a", &cm, &un, &known));
	ck_assert_int_eq(acquire_pg(c, o, "a", 1, 1, 5, &e, &idx),
	    COUNTERS_OK);
	ck_assert_int_eq(e->committed, 5);
	counters_release_head(c, o);

	/* PostgreSQL not reachable: counted from 0, the total unknown. */
	seed.gen = counters_seed_gen(c, "down", 4);
	seed.known = 0;
	ck_assert_int_eq(counters_acquire(c, o, "down", 4, 1, &seed, &e,
	    &idx), COUNTERS_OK);
	ck_assert(held(c, "down", &cm, &un, &known));
	ck_assert(!known);
	counters_release_head(c, o);
	table_free(&om);
	table_free(&m);
}
END_TEST

/*
 * A key taken in for increments none of which is durable yet is held
 * bare: whether any was acknowledged is for PostgreSQL to say.
 */
START_TEST(test_peek_bare)
{
	struct mapping m, om;
	struct counters *c = table_new(&m, 4, 16);
	struct counter_owner *o = owner_new(&om, 1, 64);
	struct counter_entry *e;
	int64_t cm, un, tot;
	uint64_t idx;
	int known;

	ck_assert_int_eq(held(c, "n", &cm, &un, &known), COUNTERS_PEEK_NONE);
	/* Pending, then refused. */
	ck_assert_int_eq(acquire(c, o, "n", 1, 3, &e, &idx), COUNTERS_OK);
	ck_assert_int_eq(held(c, "n", &cm, &un, &known), COUNTERS_PEEK_BARE);
	counters_release_head(c, o);
	ck_assert_int_eq(held(c, "n", &cm, &un, &known), COUNTERS_PEEK_BARE);
	/* Durable: held, even at a total of 0. */
	ck_assert_int_eq(acquire(c, o, "n", 1, 3, &e, &idx), COUNTERS_OK);
	durable(c, o, idx, 100);
	counters_release_tail(c, o);
	incr(c, o, "n", -3, 200);
	ck_assert_int_eq(held(c, "n", &cm, &un, &known), COUNTERS_PEEK_HELD);
	ck_assert_int_eq(cm + un, 0);
	/* A total from PostgreSQL is there, pending or not. */
	ck_assert_int_eq(acquire_pg(c, o, "p", 1, 1, 7, &e, &idx),
	    COUNTERS_OK);
	ck_assert_int_eq(held(c, "p", &cm, &un, &known), COUNTERS_PEEK_HELD);
	ck_assert_int_eq(cm, 7);
	/* The total as answered: only for a held key whose total is known. */
	ck_assert_int_eq(counters_peek_total(c, "p", 1, &tot),
	    COUNTERS_PEEK_HELD);
	ck_assert_int_eq(tot, 7);
	ck_assert_int_eq(counters_peek_total(c, "x", 1, &tot), -1);
	ck_assert_int_eq(held(c, "n", &cm, &un, &known), COUNTERS_PEEK_HELD);
	ck_assert_int_eq(counters_peek_total(c, "n", 1, &tot),
	    known ? COUNTERS_PEEK_HELD : -1);
	counters_release_head(c, o);
	table_free(&om);
	table_free(&m);
}
END_TEST

/*
 * Keys read ahead from PostgreSQL come back with their totals and no
 * look-up; once all are in, a key that is not is new, until a key of its
 * hash is forgotten; another node writing voids that.  Read-ahead keys
 * take no room from max_keys and at most half the index.
 */
START_TEST(test_preload)
{
	struct mapping m, om;
	struct counters *c = table_new(&m, 64, 16);
	struct counter_owner *o = owner_new(&om, 1, 64);
	struct counter_entry *e;
	uint64_t idx;
	int64_t cm, un;
	int known, n = 0, rc;
	char key[16];

	ck_assert_int_eq(counters_preload(c, o, "p1", 2, 100), 1);
	ck_assert_int_eq(counters_preload(c, o, "p1", 2, 100), 0);
	ck_assert_uint_eq(counters_count(c), 0);
	ck_assert(!held(c, "p1", &cm, &un, &known));
	/* Not all in yet: a key not read ahead is asked for. */
	ck_assert_int_eq(counters_acquire(c, o, "n1", 2, 1, NULL, &e, &idx),
	    COUNTERS_UNKNOWN);
	counters_preload_done(c);
	ck_assert_int_eq(counters_acquire(c, o, "p1", 2, 1, NULL, &e, &idx),
	    COUNTERS_OK);
	ck_assert_int_eq(e->committed, 100);
	ck_assert_int_eq(e->committed_known, 1);
	counters_release_head(c, o);
	ck_assert_int_eq(counters_acquire(c, o, "n1", 2, 1, NULL, &e, &idx),
	    COUNTERS_OK);
	ck_assert_int_eq(e->committed, 0);
	ck_assert_int_eq(e->committed_known, 1);
	counters_release_head(c, o);
	/* A forgotten key in a bucket: its keys are asked for again. */
	c->takeovers[counters_hash("n2", 2) % COUNTERS_SEED_GENS]++;
	ck_assert_int_eq(counters_acquire(c, o, "n2", 2, 1, NULL, &e, &idx),
	    COUNTERS_UNKNOWN);
	ck_assert_int_eq(counters_preload_void(c), 1);
	ck_assert_int_eq(counters_preload_void(c), 0);
	for (int i = 3; i < 100; i++) {
		snprintf(key, sizeof(key), "n%d", i);
		if (c->takeovers[counters_hash(key, strlen(key)) %
		    COUNTERS_SEED_GENS] == 0)
			break;
	}
	ck_assert_int_eq(counters_acquire(c, o, key, strlen(key), 1, NULL,
	    &e, &idx), COUNTERS_UNKNOWN);
	/* Room: half the index at most, never another key's slot. */
	for (int i = 0; i < 1000; i++) {
		snprintf(key, sizeof(key), "q%d", i);
		if ((rc = counters_preload(c, o, key, strlen(key), i)) == -1)
			break;
		n += rc;
	}
	ck_assert_int_gt(n, 0);
	ck_assert_uint_le(c->bound, c->nslots / 2);
	ck_assert_int_eq(counters_acquire(c, o, "p1", 2, 1, NULL, &e, &idx),
	    COUNTERS_OK);
	ck_assert_int_eq(e->committed, 100);
	counters_release_head(c, o);
	table_free(&om);
	table_free(&m);
}
END_TEST

/*
 * 500 keys through a table of 64, six increments each, flushing whenever
 * it is full: PostgreSQL's value plus the table's is each key's total.
 */
START_TEST(test_evict_churn)
{
	struct mapping m, om;
	struct counters *c = table_new(&m, 64, 16);
	struct counter_owner *o = owner_new(&om, 1, 64);
	static int64_t pg[500];
	uint64_t lsn = 1000, idx;
	struct counter_entry *e;
	int64_t cm, un;
	int known, full = 0;
	char key[16];

	memset(pg, 0, sizeof(pg));
	for (int round = 0; round < 6; round++)
		for (int k = 0; k < 500; k++) {
			snprintf(key, sizeof(key), "key%d", k);
			if (acquire_pg(c, o, key, strlen(key), 1, pg[k], &e,
			    &idx) == COUNTERS_FULL) {
				full++;
				ck_assert_int_lt(full, 10000);
				/* Flush everything held, as the flusher. */
				lsn += 10;
				for (uint64_t i = 0; i < counters_slots(c); i++) {
					char kb[16];
					size_t n = counters_slot_key(c, i, kb);
					int x;

					if (n == 0)
						continue;
					kb[n] = '\0';
					x = atoi(kb + 3);
					ck_assert(held(c, kb, &cm, &un, &known));
					pg[x] += un;
					counters_commit_key(c, NULL, kb, n, 1,
					    pg[x], un, un, lsn);
				}
				k--;
				continue;
			}
			lsn += 10;
			counters_publishing(o, idx + 1, lsn);
			counters_published(o, lsn + 1);
			counters_apply(c, o, idx, lsn + 1, &cm, &known);
			counters_release_tail(c, o);
		}
	ck_assert_int_gt(full, 0);
	ck_assert_uint_gt(c->evictions, 400);
	ck_assert_uint_le(counters_count(c), 64);
	for (int k = 0; k < 500; k++) {
		snprintf(key, sizeof(key), "key%d", k);
		if (!held(c, key, &cm, &un, &known))
			ck_assert_int_eq(pg[k], 6);
		else {
			/* Taken over or not, a key came back with its total. */
			ck_assert(known);
			ck_assert_int_eq(cm + un, 6);
		}
	}
	table_free(&om);
	table_free(&m);
}
END_TEST

#define CRASH_KEYS	12
#define CRASH_FRAMES	2000000
#define CRASH_ROUNDS	200

/* What the killed process journaled, in shared memory. */
struct crash_journal {
	uint64_t	next;			/* frames started */
	uint8_t		pub[CRASH_FRAMES];	/* frame published */
	uint8_t		n[CRASH_FRAMES];
	uint8_t		key[CRASH_FRAMES][4];
	int8_t		val[CRASH_FRAMES][4];
};

static int
crash_published(void *arg, uint64_t lsn)
{
	struct crash_journal *j = arg;

	return j->pub[lsn - 1];
}

/*
 * A worker's life, until killed: frames of up to four increments are
 * reserved, published (pub[f] stands for the journal write), applied one
 * frame late as the disk catches up, and released; some are refused
 * before they are published.
 */
static void
crash_child(struct counters *c, struct counter_owner *o,
    struct crash_journal *j, uint64_t seed)
{
	uint64_t s = seed, first[2] = { 0, 0 }, cnt[2] = { 0, 0 };
	struct counter_entry *e;
	char key[16];
	int waiting = 0;

	for (;;) {
		uint64_t f = j->next, idx, i0 = 0;
		int n = 1 + rnd(&s) % 4, ovf;
		int64_t t;

		if (f + 1 >= CRASH_FRAMES)
			_exit(0);
		j->next = f + 1;
		for (int i = 0; i < n; i++) {
			int k = rnd(&s) % CRASH_KEYS;
			int v = (int)(rnd(&s) % 100) - 50;

			snprintf(key, sizeof(key), "crash%d", k);
			if (acquire(c, o, key, strlen(key), v, &e,
			    &idx) != COUNTERS_OK)
				_exit(3);
			if (i == 0)
				i0 = idx;
			j->key[f][i] = k;
			j->val[f][i] = v;
		}
		j->n[f] = n;
		if (rnd(&s) % 8 == 0) {
			for (int i = 0; i < n; i++)
				counters_release_head(c, o);
			continue;
		}
		counters_publishing(o, i0 + n, f + 1);
		__atomic_store_n(&j->pub[f], 1, __ATOMIC_RELEASE);
		counters_published(o, f + 2);
		first[waiting] = i0;
		cnt[waiting] = n;
		if (++waiting < 2)
			continue;
		/* The older frame is durable now. */
		for (uint64_t i = 0; i < cnt[0]; i++)
			counters_apply(c, o, first[0] + i, f + 1, &t, &ovf);
		for (uint64_t i = 0; i < cnt[0]; i++)
			counters_release_tail(c, o);
		first[0] = first[1];
		cnt[0] = cnt[1];
		waiting = 1;
	}
}

/*
 * kill -9 the child ts after its third frame (its frame counter *next
 * started at f0), when it has published some: counted from its start, a
 * slow start (valgrind, a busy machine) would eat the delay.
 */
static void
kill_child(pid_t pid, const uint64_t *next, uint64_t f0,
    const struct timespec *ts, int round)
{
	int status;

	for (int spin = 0; spin < 100000 &&
	    __atomic_load_n(next, __ATOMIC_RELAXED) < f0 + 3; spin++)
		sched_yield();
	nanosleep(ts, NULL);
	kill(pid, SIGKILL);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFSIGNALED(status), "round %d: child status %#x",
	    round, status);
}

/*
 * Kill -9 a process changing the table at random moments; after the
 * master's repair and the next owner's adoption, each key's unflushed
 * value is exactly the sum of its published deltas, and nothing is left
 * pending, referenced or locked.
 */
START_TEST(test_crash_exact)
{
	struct mapping m, om, jm;
	struct counters *c = table_new(&m, 64, 16);
	struct counter_owner *o = owner_new(&om, 3, 256);
	struct crash_journal *j;
	uint64_t seed = 12345, adopted = 0, repaired = 0;

	jm.size = sizeof(*j);
	jm.base = mmap(NULL, jm.size, PROT_READ | PROT_WRITE, MAP_SHARED |
	    MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(jm.base, MAP_FAILED);
	j = jm.base;
	/*
	 * A kill inside a change of the table is rare (the child spends most
	 * of its time between changes): go on past CRASH_ROUNDS until one
	 * has landed there, while the journal lasts.
	 */
	for (int round = 0; round < CRASH_ROUNDS || ((repaired == 0 ||
	    adopted == 0) && round < 20 * CRASH_ROUNDS); round++) {
		int64_t want[CRASH_KEYS], cm, un;
		struct timespec ts = { 0, 1000 * (rnd(&seed) % 500) };
		int known;
		char key[16];
		pid_t pid;

		uint64_t f0 = __atomic_load_n(&j->next, __ATOMIC_RELAXED);

		if (f0 + CRASH_FRAMES / 4 > CRASH_FRAMES)
			break;
		if ((pid = fork()) == -1)
			ck_abort_msg("fork: %s", strerror(errno));
		if (pid == 0)
			crash_child(c, o, j, rnd(&seed));
		kill_child(pid, &j->next, f0, &ts, round);
		/* The master's part, then the next worker's. */
		repaired += o->undo.valid;
		counters_owner_repair(c, o);
		adopted += counters_owner_adopt(c, o, crash_published, j);
		ck_assert_uint_eq(o->head, o->tail);
		ck_assert_uint_eq(c->ins_lock, 0);
		memset(want, 0, sizeof(want));
		for (uint64_t f = 0; f < j->next; f++)
			for (int i = 0; j->pub[f] && i < j->n[f]; i++)
				want[j->key[f][i]] += j->val[f][i];
		for (int k = 0; k < CRASH_KEYS; k++) {
			struct counter_entry *e;

			snprintf(key, sizeof(key), "crash%d", k);
			if (!held(c, key, &cm, &un, &known)) {
				ck_assert_int_eq(want[k], 0);
				continue;
			}
			ck_assert_msg(un == want[k], "round %d: %s: table %lld,"
			    " journal %lld", round, key, (long long)un,
			    (long long)want[k]);
			e = lookup(c, key);
			ck_assert_int_eq(e->pending, 0);
			ck_assert_int_eq(e->pend_neg, 0);
			ck_assert_int_eq(e->refs, 0);
			ck_assert_uint_eq(e->lock & 1, 0);
		}
	}
	/* The kills did land in the middle of things. */
	ck_assert_uint_gt(adopted, 0);
	ck_assert_uint_gt(repaired, 0);
	munmap(jm.base, jm.size);
	table_free(&om);
	table_free(&m);
}
END_TEST

/* --- the index under churn --- */

/* Words bound from key's hash on: a miss of key walks at least these. */
static uint64_t
run_len(struct counters *c, const char *key)
{
	const uint64_t *w = (const uint64_t *)(const void *)c->slots;
	uint64_t mask = c->nslots - 1, n = 0;
	uint64_t pos = counters_hash(key, strlen(key)) & mask;

	while (n < c->nslots && __atomic_load_n(&w[pos], __ATOMIC_RELAXED)) {
		n++;
		pos = (pos + 1) & mask;
	}
	return n;
}

static uint64_t
bound_words(struct counters *c)
{
	const uint64_t *w = (const uint64_t *)(const void *)c->slots;
	uint64_t n = 0;

	for (uint64_t pos = 0; pos < c->nslots; pos++)
		n += w[pos] != 0;
	return n;
}

/*
 * Every READY entry is what a look-up of its key finds, so no key is in
 * two entries nor out of reach; returns how many there are.
 */
static uint64_t
ready_reachable(struct counters *c)
{
	char key[64];
	uint64_t n = 0;

	for (uint64_t i = 0; i < counters_slots(c); i++) {
		struct counter_entry *e = counters_slot(c, i);

		if (e == NULL)
			continue;
		ck_assert_uint_lt(e->key_len, sizeof(key));
		memcpy(key, e->key, e->key_len);
		key[e->key_len] = '\0';
		ck_assert_msg(lookup(c, key) == e, "%s: slot %llu not found",
		    key, (unsigned long long)i);
		n++;
	}
	return n;
}

#define CHURN_HOT	8

/*
 * Fifty times as many distinct keys as the index has words, through a
 * table of 64: a miss still walks a short run, and the keys held are
 * each found, in one entry, with their values.
 */
START_TEST(test_churn_runs)
{
	struct mapping m, om;
	struct counters *c = table_new(&m, 64, 16);
	struct counter_owner *o = owner_new(&om, 1, 64);
	uint64_t lsn = 1000, runs = 0, longest = 0, r, nk = 50 * c->nslots;
	int64_t cm, un;
	int known;
	char key[32];

	/* Held unflushed, so never evicted. */
	for (int h = 0; h < CHURN_HOT; h++) {
		snprintf(key, sizeof(key), "hot%d", h);
		incr(c, o, key, h + 1, lsn += 10);
	}
	for (uint64_t k = 0; k < nk; k++) {
		snprintf(key, sizeof(key), "churn%llu", (unsigned long long)k);
		ck_assert_ptr_null(lookup(c, key));
		incr(c, o, key, 1, lsn += 10);
		/* Flushed at once: evictable when room is needed. */
		counters_commit_key(c, NULL, key, strlen(key), 1, 1, 1, 1,
		    lsn + 1);
		ck_assert_uint_le(bound_words(c), c->nslots - c->nslots / 8);
	}
	ck_assert_uint_gt(c->evictions, nk - 64);
	ck_assert_uint_gt(c->rebuilds, 0);
	for (int k = 0; k < 1000; k++) {
		snprintf(key, sizeof(key), "miss%d", k);
		ck_assert_ptr_null(lookup(c, key));
		r = run_len(c, key);
		runs += r;
		if (r > longest)
			longest = r;
	}
	/* Before, every word was bound: each miss walked all 128. */
	ck_assert_uint_lt(longest, c->nslots / 2);
	ck_assert_uint_lt(runs / 1000, 16);
	ck_assert_uint_eq(ready_reachable(c), counters_count(c));
	for (int h = 0; h < CHURN_HOT; h++) {
		snprintf(key, sizeof(key), "hot%d", h);
		ck_assert(held(c, key, &cm, &un, &known));
		ck_assert_int_eq(cm, 0);
		ck_assert_int_eq(un, h + 1);
	}
	for (uint64_t k = nk - 8; k < nk; k++) {
		snprintf(key, sizeof(key), "churn%llu", (unsigned long long)k);
		ck_assert(held(c, key, &cm, &un, &known));
		ck_assert_int_eq(cm, 1);
		ck_assert_int_eq(un, 0);
	}
	table_free(&om);
	table_free(&m);
}
END_TEST

#define RB_FRAMES	(1 << 23)

/* The churning process's journal of hot-key increments, and its keys. */
struct rb_journal {
	uint64_t	next;			/* frames started */
	uint64_t	churn;			/* churn keys started */
	uint32_t	stop;			/* the reader may go */
	uint8_t		pub[RB_FRAMES];
	uint8_t		key[RB_FRAMES];
	int8_t		val[RB_FRAMES];
};

static int
rb_published(void *arg, uint64_t lsn)
{
	struct rb_journal *j = arg;

	return j->pub[lsn - 1];
}

/* One frame: v on hot key k, published and applied. */
static int
rb_frame(struct counters *c, struct counter_owner *o, struct rb_journal *j,
    int k, int v)
{
	uint64_t f = j->next, idx;
	struct counter_entry *e;
	char key[16];
	int64_t t;
	int ovf;

	j->next = f + 1;
	snprintf(key, sizeof(key), "hot%d", k);
	if (acquire(c, o, key, strlen(key), v, &e, &idx) !=
	    COUNTERS_OK)
		return -1;
	j->key[f] = k;
	j->val[f] = v;
	counters_publishing(o, idx + 1, f + 1);
	__atomic_store_n(&j->pub[f], 1, __ATOMIC_RELEASE);
	counters_published(o, f + 2);
	counters_apply(c, o, idx, f + 1, &t, &ovf);
	counters_release_tail(c, o);
	return 0;
}

/*
 * Until killed: a hot-key frame, then a new key, held for a moment and
 * let go with nothing added (evictable at once).
 */
static void
rb_churner(struct counters *c, struct counter_owner *o, struct rb_journal *j,
    uint64_t seed)
{
	uint64_t s = seed, idx;
	struct counter_entry *e;
	char key[32];

	for (;;) {
		if (j->next + 1 >= RB_FRAMES)
			_exit(0);
		if (rb_frame(c, o, j, rnd(&s) % CHURN_HOT,
		    (int)(rnd(&s) % 100) - 50) == -1)
			_exit(3);
		snprintf(key, sizeof(key), "churn%llu",
		    (unsigned long long)j->churn++);
		if (acquire(c, o, key, strlen(key), 1, &e, &idx) !=
		    COUNTERS_OK)
			_exit(4);
		counters_release_head(c, o);
	}
}

/* Until told to stop: every hot key is always held. */
static void
rb_reader(struct counters *c, struct rb_journal *j)
{
	int64_t cm, un;
	int known;
	char key[16];

	while (!__atomic_load_n(&j->stop, __ATOMIC_ACQUIRE))
		for (int h = 0; h < CHURN_HOT; h++) {
			snprintf(key, sizeof(key), "hot%d", h);
			if (!held(c, key, &cm, &un, &known))
				_exit(5);
		}
	_exit(0);
}

/*
 * A process churning keys through the table, its index rebuilt again
 * and again, is killed at random moments, some of them inside a rebuild,
 * while another reads: the reader never misses a held key, and after the
 * repair and adoption every READY key is found, in one entry, the hot
 * keys with exactly their published deltas.
 */
START_TEST(test_rebuild_crash)
{
	struct mapping m, om, jm;
	struct counters *c = table_new(&m, 12000, 16);
	struct counter_owner *o = owner_new(&om, 3, 64);
	struct rb_journal *j;
	uint64_t seed = 777, repaired = 0, midway = 0, done = 0;
	int64_t want[CHURN_HOT], cm, un;
	int status, known, round, inside;
	pid_t reader, pid;
	char key[16];

	jm.size = sizeof(*j);
	jm.base = mmap(NULL, jm.size, PROT_READ | PROT_WRITE, MAP_SHARED |
	    MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(jm.base, MAP_FAILED);
	j = jm.base;
	memset(want, 0, sizeof(want));
	for (int h = 0; h < CHURN_HOT; h++)
		ck_assert_int_eq(rb_frame(c, o, j, h, h + 1), 0);
	if ((reader = fork()) == -1)
		ck_abort_msg("fork: %s", strerror(errno));
	if (reader == 0)
		rb_reader(c, j);
	/*
	 * Go on until kills have landed inside a rebuild a few times, and
	 * inside a change of an entry at least once (a few in a hundred
	 * rounds do; on a busy machine, none may).
	 */
	for (round = 0; round < 100 || ((midway < 2 || repaired == 0) &&
	    round < 1000); round++) {
		struct timespec ts = { 0, 1000 * (rnd(&seed) % 3000) };
		uint64_t f0 = __atomic_load_n(&j->next, __ATOMIC_RELAXED);

		if (f0 + RB_FRAMES / 8 > RB_FRAMES)
			break;
		if ((pid = fork()) == -1)
			ck_abort_msg("fork: %s", strerror(errno));
		if (pid == 0)
			rb_churner(c, o, j, rnd(&seed));
		kill_child(pid, &j->next, f0, &ts, round);
		inside = c->index_seq & 1;
		midway += inside;
		repaired += o->undo.valid;
		counters_owner_repair(c, o);
		counters_owner_adopt(c, o, rb_published, j);
		ck_assert_uint_eq(o->head, o->tail);
		ck_assert_uint_eq(c->ins_lock, 0);
		ck_assert_uint_eq(c->index_seq & 1, 0);
		ck_assert_uint_le(bound_words(c), c->nslots - c->nslots / 8);
		/* Each key once: the rounds that matter, and some others. */
		if (inside || round % 8 == 0)
			ck_assert_uint_eq(ready_reachable(c),
			    counters_count(c));
		for (; done < j->next; done++)
			if (j->pub[done])
				want[j->key[done]] += j->val[done];
		for (int h = 0; h < CHURN_HOT; h++) {
			struct counter_entry *e;

			snprintf(key, sizeof(key), "hot%d", h);
			ck_assert(held(c, key, &cm, &un, &known));
			ck_assert_msg(un == want[h], "round %d: %s: table %lld,"
			    " journal %lld", round, key, (long long)un,
			    (long long)want[h]);
			e = lookup(c, key);
			ck_assert_int_eq(e->pending, 0);
			ck_assert_int_eq(e->refs, 0);
			ck_assert_uint_eq(e->lock & 1, 0);
		}
	}
	__atomic_store_n(&j->stop, 1, __ATOMIC_RELEASE);
	ck_assert_int_eq(waitpid(reader, &status, 0), reader);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "reader status %#x", status);
	ck_assert_uint_gt(c->rebuilds, 0);
	ck_assert_msg(repaired > 0, "no kill inside a change in %d rounds",
	    round);
	ck_assert_msg(midway > 0, "no kill inside a rebuild in %d rounds",
	    round);
	munmap(jm.base, jm.size);
	table_free(&om);
	table_free(&m);
}
END_TEST

static Suite *
counters_suite(void)
{
	Suite *s = suite_create("counters");
	TCase *tc;

	tc = tcase_create("table");
	tcase_add_test(tc, test_insert_lookup);
	tcase_add_test(tc, test_key_length);
	tcase_add_test(tc, test_small_capacity);
	tcase_add_test(tc, test_iterate);
	tcase_add_test(tc, test_dense);
	suite_add_tcase(s, tc);

	tc = tcase_create("values");
	tcase_add_test(tc, test_deltas);
	tcase_add_test(tc, test_reserve);
	tcase_add_test(tc, test_in_flight_max);
	tcase_add_test(tc, test_in_flight_min);
	tcase_add_test(tc, test_commit);
	suite_add_tcase(s, tc);

	tc = tcase_create("processes");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_concurrent_increments);
	tcase_add_test(tc, test_commit_readers);
	tcase_add_test(tc, test_crash_exact);
	suite_add_tcase(s, tc);

	tc = tcase_create("eviction");
	tcase_add_test(tc, test_evict);
	tcase_add_test(tc, test_evict_churn);
	tcase_add_test(tc, test_seed);
	tcase_add_test(tc, test_peek_bare);
	tcase_add_test(tc, test_preload);
	suite_add_tcase(s, tc);

	tc = tcase_create("churn");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_churn_runs);
	tcase_add_test(tc, test_rebuild_crash);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(counters_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
