/*
 * Tests of the shared counter table: insertion and lookup, the key length
 * and capacity limits, deltas, totals and the int64 bounds of
 * reservations, the flusher's commit, iteration; and, with forked
 * processes sharing one mapping as the workers do, that concurrent
 * inserts and increments lose nothing and that a reader never sees a
 * commit half done.
 */
#include <sys/mman.h>
#include <sys/wait.h>

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
	counters_unreserve(c, e, -1000);
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
	counters_unreserve(c, e, -5);
	ck_assert_int_eq(e->pending, 0);
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
	for (uint64_t i = 0; i < c->nslots; i++) {
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
	for (int i = 0; i < 700; i++)
		ck_assert_int_eq(seen[i], 1);
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
		ck_assert_int_ne(pids[i] = fork(), -1);
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

		for (uint64_t i = 0; i < c->nslots; i++)
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
		ck_assert_int_ne(reader = fork(), -1);
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
		ck_assert_int_ne(writer = fork(), -1);
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
	suite_add_tcase(s, tc);

	tc = tcase_create("values");
	tcase_add_test(tc, test_deltas);
	tcase_add_test(tc, test_reserve);
	tcase_add_test(tc, test_commit);
	suite_add_tcase(s, tc);

	tc = tcase_create("processes");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_concurrent_increments);
	tcase_add_test(tc, test_commit_readers);
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
