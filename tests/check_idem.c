/*
 * Tests of the Idempotency-Key table: the answers for new, repeated,
 * conflicting and in-flight keys; release by abort, expiry, sweep and
 * dead owner; the capacity bound; recovery; the length limits; a random
 * run checked against a model; and, with forked processes sharing one
 * mapping as the workers do, that one key is never claimed twice.
 */
#include <sys/mman.h>
#include <sys/wait.h>

#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "idem.h"

#define FAR	(UINT64_C(1) << 50)	/* an expiry that never comes */

struct mapping {
	void	*base;
	size_t	 size;
};

static void *
shared_zero(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

static struct idem_table *
table_new(struct mapping *m, uint64_t max_keys, size_t max_key_bytes)
{
	m->size = idem_size(max_keys, max_key_bytes);
	ck_assert_uint_gt(m->size, 0);
	m->base = shared_zero(m->size);
	return idem_init(m->base, max_keys, max_key_bytes);
}

static void
table_free(struct mapping *m)
{
	munmap(m->base, m->size);
}

/* idem_begin with C strings. */
static enum idem_result
begin(struct idem_table *t, const char *ik, const char *key, int64_t value,
    uint64_t now, pid_t owner, struct idem_entry **e, int *status,
    int64_t *total)
{
	return idem_begin(t, ik, strlen(ik), key, strlen(key), value, now,
	    owner, e, status, total);
}

/* Claim and complete with the frame end lsn; the key must be new. */
static void
put_lsn(struct idem_table *t, const char *ik, const char *key, int64_t value,
    uint64_t now, int64_t total, uint64_t expires, uint64_t lsn)
{
	struct idem_entry *e;
	int st;
	int64_t tot;

	ck_assert_int_eq(begin(t, ik, key, value, now, getpid(), &e, &st,
	    &tot), IDEM_NEW);
	ck_assert_ptr_nonnull(e);
	idem_complete(t, e, 202, total, expires, lsn);
}

/* The same, not known to be flushed. */
static void
put(struct idem_table *t, const char *ik, const char *key, int64_t value,
    uint64_t now, int64_t total, uint64_t expires)
{
	put_lsn(t, ik, key, value, now, total, expires, IDEM_LSN_NONE);
}

/* idem_restore with C strings, status 202, not known to be flushed. */
static int
restore(struct idem_table *t, const char *ik, const char *key, int64_t value,
    int64_t total, uint64_t expires)
{
	return idem_restore(t, ik, strlen(ik), key, strlen(key), value, 202,
	    total, expires, IDEM_LSN_NONE);
}

static void
expect_replay(struct idem_table *t, const char *ik, const char *key,
    int64_t value, uint64_t now, int64_t total)
{
	struct idem_entry *e;
	int st = 0;
	int64_t tot = 0;

	ck_assert_int_eq(begin(t, ik, key, value, now, getpid(), &e, &st,
	    &tot), IDEM_REPLAY);
	ck_assert_ptr_null(e);
	ck_assert_int_eq(st, 202);
	ck_assert_int_eq(tot, total);
}

static enum idem_result
try(struct idem_table *t, const char *ik, const char *key, int64_t value,
    uint64_t now)
{
	struct idem_entry *e;
	int st;
	int64_t tot;
	enum idem_result r;

	r = begin(t, ik, key, value, now, getpid(), &e, &st, &tot);
	if (r != IDEM_NEW)
		ck_assert_ptr_null(e);
	return r;
}

/* ---- answers ---- */

START_TEST(test_new_replay_mismatch)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 100, 64);
	struct idem_entry *e;
	int st;
	int64_t tot;

	ck_assert_uint_eq(idem_capacity(t), 100);
	ck_assert_uint_eq(idem_count(t), 0);
	ck_assert_int_eq(begin(t, "ik1", "k", 5, 1000, getpid(), &e, &st,
	    &tot), IDEM_NEW);
	ck_assert_ptr_nonnull(e);
	ck_assert_uint_eq(idem_count(t), 1);

	/* In flight: 409 for the same request and for any other. */
	ck_assert_int_eq(try(t, "ik1", "k", 5, 1000), IDEM_INFLIGHT);
	ck_assert_int_eq(try(t, "ik1", "k", 6, 1000), IDEM_INFLIGHT);
	ck_assert_int_eq(try(t, "ik1", "other", 5, 1000), IDEM_INFLIGHT);

	idem_complete(t, e, 202, 42, 2000, IDEM_LSN_NONE);
	expect_replay(t, "ik1", "k", 5, 1500, 42);
	expect_replay(t, "ik1", "k", 5, 1999, 42);

	/* Another request under the same key, however close. */
	ck_assert_int_eq(try(t, "ik1", "k", 6, 1500), IDEM_MISMATCH);
	ck_assert_int_eq(try(t, "ik1", "k", -5, 1500), IDEM_MISMATCH);
	ck_assert_int_eq(try(t, "ik1", "K", 5, 1500), IDEM_MISMATCH);
	ck_assert_int_eq(try(t, "ik1", "kk", 5, 1500), IDEM_MISMATCH);
	ck_assert_int_eq(try(t, "ik1", "", 5, 1500), IDEM_MISMATCH);

	/* Other idempotency keys, prefixes included, are other keys. */
	ck_assert_int_eq(try(t, "ik", "k", 5, 1500), IDEM_NEW);
	ck_assert_int_eq(try(t, "ik12", "k", 5, 1500), IDEM_NEW);
	ck_assert_int_eq(try(t, "IK1", "k", 5, 1500), IDEM_NEW);
	ck_assert_uint_eq(idem_count(t), 4);
	expect_replay(t, "ik1", "k", 5, 1500, 42);
	table_free(&m);
}
END_TEST

START_TEST(test_replay_keeps_status)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 10, 16);
	struct idem_entry *e;
	int st;
	int64_t tot;

	ck_assert_int_eq(begin(t, "neg", "k", INT64_MIN, 0, getpid(), &e,
	    &st, &tot), IDEM_NEW);
	idem_complete(t, e, 299, INT64_MIN, FAR, IDEM_LSN_NONE);
	ck_assert_int_eq(begin(t, "neg", "k", INT64_MIN, 0, getpid(), &e,
	    &st, &tot), IDEM_REPLAY);
	ck_assert_int_eq(st, 299);
	ck_assert_int_eq(tot, INT64_MIN);
	ck_assert_int_eq(try(t, "neg", "k", INT64_MAX, 0), IDEM_MISMATCH);
	table_free(&m);
}
END_TEST

/* ---- release: abort, expiry, sweep, dead owner ---- */

START_TEST(test_abort_releases)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 10, 16);
	struct idem_entry *e;
	int st;
	int64_t tot;

	ck_assert_int_eq(begin(t, "a", "k", 1, 0, getpid(), &e, &st, &tot),
	    IDEM_NEW);
	idem_abort(t, e);
	ck_assert_uint_eq(idem_count(t), 0);
	/* Nothing was kept: any request may now use the key. */
	ck_assert_int_eq(begin(t, "a", "j", 2, 0, getpid(), &e, &st, &tot),
	    IDEM_NEW);
	ck_assert_uint_eq(idem_count(t), 1);
	idem_complete(t, e, 202, 2, FAR, IDEM_LSN_NONE);
	expect_replay(t, "a", "j", 2, 0, 2);
	ck_assert_int_eq(try(t, "a", "k", 1, 0), IDEM_MISMATCH);

	/* Repeated claim and abort reuses the slot, the count stays right. */
	for (int i = 0; i < 1000; i++) {
		ck_assert_int_eq(begin(t, "b", "k", i, 0, getpid(), &e, &st,
		    &tot), IDEM_NEW);
		ck_assert_uint_eq(idem_count(t), 2);
		idem_abort(t, e);
	}
	ck_assert_uint_eq(idem_count(t), 1);
	table_free(&m);
}
END_TEST

START_TEST(test_expiry)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 10, 16);

	put(t, "x", "k", 1, 1000, 11, 5000);
	expect_replay(t, "x", "k", 1, 4999, 11);
	ck_assert_int_eq(try(t, "x", "k", 2, 4999), IDEM_MISMATCH);

	/* At its expiry the entry is as good as absent, for any request. */
	ck_assert_int_eq(try(t, "x", "k", 2, 5000), IDEM_NEW);
	/* The expired entry's slot was the one reused. */
	ck_assert_uint_eq(idem_count(t), 1);
	ck_assert_int_eq(try(t, "x", "k", 1, 5000), IDEM_INFLIGHT);
	table_free(&m);

	t = table_new(&m, 10, 16);
	put(t, "y", "k", 1, 0, 7, 100);
	ck_assert_int_eq(try(t, "y", "k", 1, 100), IDEM_NEW);
	table_free(&m);

	/* In-flight claims do not expire by time. */
	t = table_new(&m, 10, 16);
	ck_assert_int_eq(try(t, "z", "k", 1, 0), IDEM_NEW);
	ck_assert_int_eq(try(t, "z", "k", 1, UINT64_MAX), IDEM_INFLIGHT);
	ck_assert_uint_eq(idem_sweep(t, UINT64_MAX), 0);
	ck_assert_int_eq(try(t, "z", "k", 1, UINT64_MAX), IDEM_INFLIGHT);
	table_free(&m);
}
END_TEST

START_TEST(test_sweep)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 100, 16);
	char ik[32];

	for (int i = 1; i <= 10; i++) {
		snprintf(ik, sizeof(ik), "done-%d", i);
		put(t, ik, "k", i, 0, i, 100 * i);
	}
	ck_assert_int_eq(try(t, "flight-1", "k", 1, 0), IDEM_NEW);
	ck_assert_int_eq(try(t, "flight-2", "k", 1, 0), IDEM_NEW);
	ck_assert_uint_eq(idem_count(t), 12);

	ck_assert_uint_eq(idem_sweep(t, 0), 0);
	ck_assert_uint_eq(idem_sweep(t, 99), 0);
	ck_assert_uint_eq(idem_sweep(t, 500), 5);
	ck_assert_uint_eq(idem_count(t), 7);
	ck_assert_uint_eq(idem_sweep(t, 500), 0);
	/* Swept keys are free; the others are still kept. */
	ck_assert_int_eq(try(t, "done-3", "k", 9, 0), IDEM_NEW);
	expect_replay(t, "done-6", "k", 6, 0, 6);
	ck_assert_uint_eq(idem_count(t), 8);

	ck_assert_uint_eq(idem_sweep(t, UINT64_MAX), 5);
	ck_assert_uint_eq(idem_count(t), 3);
	ck_assert_int_eq(try(t, "flight-1", "k", 1, 0), IDEM_INFLIGHT);
	ck_assert_int_eq(try(t, "done-3", "k", 9, 0), IDEM_INFLIGHT);
	table_free(&m);
}
END_TEST

START_TEST(test_release_owner)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 100, 16);
	struct idem_entry *e;
	char ik[32];
	int st;
	int64_t tot;

	for (int i = 0; i < 5; i++) {
		snprintf(ik, sizeof(ik), "dead-%d", i);
		ck_assert_int_eq(begin(t, ik, "k", 1, 0, 1111, &e, &st, &tot),
		    IDEM_NEW);
	}
	ck_assert_int_eq(begin(t, "dead-done", "k", 1, 0, 1111, &e, &st,
	    &tot), IDEM_NEW);
	idem_complete(t, e, 202, 1, FAR, IDEM_LSN_NONE);
	for (int i = 0; i < 3; i++) {
		snprintf(ik, sizeof(ik), "live-%d", i);
		ck_assert_int_eq(begin(t, ik, "k", 1, 0, 2222, &e, &st, &tot),
		    IDEM_NEW);
	}
	ck_assert_uint_eq(idem_count(t), 9);

	ck_assert_uint_eq(idem_release_owner(t, 1111, 0, NULL), 5);
	ck_assert_uint_eq(idem_count(t), 4);
	ck_assert_uint_eq(idem_release_owner(t, 1111, 0, NULL), 0);
	for (int i = 0; i < 5; i++) {
		snprintf(ik, sizeof(ik), "dead-%d", i);
		ck_assert_int_eq(begin(t, ik, "k", 1, 0, 3333, &e, &st, &tot),
		    IDEM_NEW);
	}
	/* A completed entry does not belong to its worker any more. */
	expect_replay(t, "dead-done", "k", 1, 0, 1);
	ck_assert_int_eq(try(t, "live-0", "k", 1, 0), IDEM_INFLIGHT);
	ck_assert_uint_eq(idem_release_owner(t, 2222, 0, NULL), 3);
	ck_assert_uint_eq(idem_release_owner(t, 3333, 0, NULL), 5);
	ck_assert_uint_eq(idem_count(t), 1);
	table_free(&m);
}
END_TEST

/* Frames for test_adopt_owner: the one at 4096 made it, ending at 4160. */
static int
adopt_published(void *arg, uint64_t lsn, uint64_t *end)
{
	(void)arg;
	if (lsn != 4096)
		return 0;
	*end = 4160;
	return 1;
}

/* Key "k" totals 42; "gone" is not held. */
static int
adopt_total(void *arg, const char *key, size_t len, int64_t *total)
{
	(void)arg;
	if (len != 1 || key[0] != 'k')
		return -1;
	*total = 42;
	return 0;
}

START_TEST(test_adopt_owner)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 100, 16);
	struct idem_entry *e;
	uint64_t kept = 99;
	int st;
	int64_t tot;

	/* Journaled in a frame that made it, in one that did not, not yet
	 * journaled, journaled but its key no longer held; another's. */
	ck_assert_int_eq(begin(t, "made", "k", 1, 0, 1111, &e, &st, &tot),
	    IDEM_NEW);
	idem_journaled(t, e, 4096);
	ck_assert_int_eq(begin(t, "lost", "k", 2, 0, 1111, &e, &st, &tot),
	    IDEM_NEW);
	idem_journaled(t, e, 8192);
	ck_assert_int_eq(begin(t, "unwritten", "k", 3, 0, 1111, &e, &st,
	    &tot), IDEM_NEW);
	ck_assert_int_eq(begin(t, "gone", "gone", 4, 0, 1111, &e, &st, &tot),
	    IDEM_NEW);
	idem_journaled(t, e, 4096);
	ck_assert_int_eq(begin(t, "live", "k", 5, 0, 2222, &e, &st, &tot),
	    IDEM_NEW);
	idem_journaled(t, e, 4096);

	/* The master keeps the journaled ones in flight. */
	ck_assert_uint_eq(idem_release_owner(t, 1111, 1, &kept), 1);
	ck_assert_uint_eq(kept, 3);
	ck_assert_int_eq(try(t, "unwritten", "k", 3, 0), IDEM_NEW);
	ck_assert_int_eq(try(t, "made", "k", 1, 0), IDEM_INFLIGHT);

	/* Its successor: what made it is answered, the rest released. */
	ck_assert_uint_eq(idem_adopt_owner(t, 1111, adopt_published,
	    adopt_total, NULL, FAR), 1);
	expect_replay(t, "made", "k", 1, 0, 42);
	ck_assert_int_eq(idem_answered(t, "made", 4, "k", 1, 1, 4160, &tot),
	    1);
	ck_assert_int_eq(tot, 42);
	ck_assert_int_eq(try(t, "lost", "k", 2, 0), IDEM_NEW);
	ck_assert_int_eq(try(t, "gone", "gone", 4, 0), IDEM_NEW);
	/* Another worker's claim is not touched, and nothing is left. */
	ck_assert_int_eq(try(t, "live", "k", 5, 0), IDEM_INFLIGHT);
	ck_assert_uint_eq(idem_adopt_owner(t, 1111, adopt_published,
	    adopt_total, NULL, FAR), 0);
	ck_assert_uint_eq(idem_release_owner(t, 1111, 1, &kept), 0);
	ck_assert_uint_eq(kept, 0);
	table_free(&m);
}
END_TEST

/* ---- capacity ---- */

START_TEST(test_capacity)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 100, 16);
	struct idem_entry *held[100], *e;
	char ik[32];
	int st;
	int64_t tot;

	for (int i = 0; i < 100; i++) {
		snprintf(ik, sizeof(ik), "cap-%d", i);
		put(t, ik, "k", i, 0, i, 1000);
	}
	ck_assert_uint_eq(idem_count(t), 100);
	ck_assert_int_eq(try(t, "one-more", "k", 1, 0), IDEM_FULL);
	ck_assert_int_eq(try(t, "one-more", "k", 1, 999), IDEM_FULL);
	/* Full or not, kept keys still answer. */
	expect_replay(t, "cap-42", "k", 42, 999, 42);
	ck_assert_int_eq(try(t, "cap-43", "k", 0, 999), IDEM_MISMATCH);

	ck_assert_uint_eq(idem_sweep(t, 1000), 100);
	ck_assert_uint_eq(idem_count(t), 0);
	for (int i = 0; i < 100; i++) {
		snprintf(ik, sizeof(ik), "again-%d", i);
		ck_assert_int_eq(begin(t, ik, "k", i, 2000, getpid(), &held[i],
		    &st, &tot), IDEM_NEW);
	}
	/* In-flight claims count as much as kept responses. */
	ck_assert_uint_eq(idem_count(t), 100);
	ck_assert_int_eq(try(t, "one-more", "k", 1, 2000), IDEM_FULL);
	idem_abort(t, held[7]);
	ck_assert_int_eq(begin(t, "one-more", "k", 1, 2000, getpid(), &e, &st,
	    &tot), IDEM_NEW);
	ck_assert_int_eq(try(t, "two-more", "k", 1, 2000), IDEM_FULL);
	table_free(&m);

	/* max_keys 0: idempotency keys are refused, nothing breaks. */
	t = table_new(&m, 0, 16);
	ck_assert_int_eq(try(t, "a", "k", 1, 0), IDEM_FULL);
	ck_assert_uint_eq(idem_count(t), 0);
	table_free(&m);
}
END_TEST

static size_t
resident_pages(const struct mapping *m)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t npages = (m->size + pg - 1) / pg, resident = 0;
	unsigned char *vec = malloc(npages);

	ck_assert_ptr_nonnull(vec);
	ck_assert_int_eq(mincore(m->base, npages * pg, vec), 0);
	for (size_t i = 0; i < npages; i++)
		resident += vec[i] & 1;
	free(vec);
	return resident;
}

/*
 * New keys land on random slots; their bodies must still share pages, or
 * every request touches (faults in, and keeps) a page of its own.
 */
START_TEST(test_dense_bodies)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 2000000, 256);
	char ik[32];

	for (int i = 0; i < 40000; i++) {
		snprintf(ik, sizeof(ik), "dense-%d", i);
		put(t, ik, "k", 1, 1, 1, FAR);
	}
	/* About 20k index pages and 5k body pages; 60k with a body per slot. */
	ck_assert_uint_lt(resident_pages(&m), 35000);
	for (int i = 0; i < 40000; i += 97) {
		snprintf(ik, sizeof(ik), "dense-%d", i);
		expect_replay(t, ik, "k", 1, 2, 1);
	}
	table_free(&m);
}
END_TEST

/*
 * The flusher sweeps every minute: a sweep must read the slots in use,
 * not the whole index, which would make all of it resident.
 */
START_TEST(test_sweep_reads_slots_in_use)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 2000000, 256);
	size_t before;
	char ik[32];

	for (int i = 0; i < 100; i++) {
		snprintf(ik, sizeof(ik), "sw-%d", i);
		put(t, ik, "k", 1, 1, 1, i < 50 ? 10 : FAR);
	}
	before = resident_pages(&m);
	/* 100 keys: a few hundred pages at most; the index is 23k. */
	ck_assert_uint_lt(before, 400);
	ck_assert_uint_eq(idem_sweep(t, 10), 50);
	ck_assert_uint_eq(idem_sweep(t, 10), 0);
	ck_assert_uint_le(resident_pages(&m), before);
	ck_assert_uint_eq(idem_count(t), 50);
	expect_replay(t, "sw-99", "k", 1, 10, 1);
	ck_assert_int_eq(try(t, "sw-0", "k", 2, 10), IDEM_NEW);
	table_free(&m);
}
END_TEST

/*
 * The master releases a dead worker's claims: that too must read the
 * slots in use, not make the whole index resident after every crash.
 */
START_TEST(test_release_reads_slots_in_use)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 2000000, 256);
	struct idem_entry *e;
	size_t before;
	char ik[32];
	int st;
	int64_t tot;

	for (int i = 0; i < 100; i++) {
		snprintf(ik, sizeof(ik), "rel-%d", i);
		ck_assert_int_eq(begin(t, ik, "k", 1, 1, i < 60 ? 1111 : 2222,
		    &e, &st, &tot), IDEM_NEW);
		if (i % 10 == 0)
			idem_complete(t, e, 202, 1, FAR, IDEM_LSN_NONE);
	}
	before = resident_pages(&m);
	ck_assert_uint_lt(before, 400);
	/* Six of its sixty were completed: they are nobody's now. */
	ck_assert_uint_eq(idem_release_owner(t, 1111, 0, NULL), 54);
	ck_assert_uint_eq(idem_release_owner(t, 1111, 0, NULL), 0);
	ck_assert_uint_le(resident_pages(&m), before);
	ck_assert_uint_eq(idem_count(t), 46);
	ck_assert_int_eq(try(t, "rel-1", "k", 1, 1), IDEM_NEW);
	ck_assert_int_eq(try(t, "rel-61", "k", 1, 1), IDEM_INFLIGHT);
	expect_replay(t, "rel-10", "k", 1, 1, 1);
	table_free(&m);
}
END_TEST

START_TEST(test_expired_slots_reused_when_full)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 1, 16);

	/*
	 * One key of room, held by an entry that expires: the same ik
	 * probes its slot and takes it over without waiting for a sweep.
	 */
	put(t, "old", "k", 1, 0, 1, 10);
	ck_assert_int_eq(try(t, "new", "k", 1, 5), IDEM_FULL);
	ck_assert_int_eq(try(t, "old", "j", 2, 10), IDEM_NEW);
	ck_assert_uint_eq(idem_count(t), 1);
	ck_assert_int_eq(try(t, "new", "k", 1, 10), IDEM_FULL);
	ck_assert_int_eq(try(t, "old", "j", 2, 10), IDEM_INFLIGHT);
	table_free(&m);
}
END_TEST

START_TEST(test_forget_when_full)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 3, 16);
	struct idem_entry *ed, *ee, *ef;
	int st;
	int64_t tot;

	put_lsn(t, "a", "k", 1, 0, 1, 100, 10);
	put_lsn(t, "b", "k", 2, 0, 2, 200, 20);
	put_lsn(t, "c", "k", 3, 0, 3, 300, 30);
	ck_assert_int_eq(idem_forgetting(t, 0), 0);
	/* Nothing is in PostgreSQL yet: no room is made. */
	ck_assert_int_eq(try(t, "d", "k", 4, 50), IDEM_FULL);
	ck_assert_uint_eq(idem_forgotten(t), 0);
	ck_assert_int_eq(idem_forgetting(t, 50), 0);

	/* a and b are flushed: the one nearest expiry, a, goes. */
	idem_flushed(t, 20);
	ck_assert_int_eq(begin(t, "d", "k", 4, 50, getpid(), &ed, &st, &tot),
	    IDEM_NEW);
	ck_assert_uint_eq(idem_forgotten(t), 1);
	ck_assert_uint_eq(idem_count(t), 3);
	expect_replay(t, "b", "k", 2, 50, 2);
	expect_replay(t, "c", "k", 3, 50, 3);
	/* Until a would have expired, a key not held may have been used. */
	ck_assert_int_eq(idem_forgetting(t, 50), 1);
	ck_assert_int_eq(idem_forgetting(t, 99), 1);
	ck_assert_int_eq(idem_forgetting(t, 100), 0);
	idem_complete(t, ed, 202, 4, 400, 40);

	/* Then b; c and d are not flushed. */
	ck_assert_int_eq(begin(t, "e", "k", 5, 50, getpid(), &ee, &st, &tot),
	    IDEM_NEW);
	ck_assert_int_eq(idem_forgetting(t, 199), 1);
	ck_assert_int_eq(try(t, "f", "k", 6, 50), IDEM_FULL);
	/* The flushed position never goes back. */
	idem_flushed(t, 30);
	idem_flushed(t, 10);
	ck_assert_int_eq(begin(t, "f", "k", 6, 50, getpid(), &ef, &st, &tot),
	    IDEM_NEW);
	ck_assert_uint_eq(idem_forgotten(t), 3);
	expect_replay(t, "d", "k", 4, 50, 4);

	/* The nearest expiry goes first, whatever the LSNs. */
	idem_complete(t, ee, 202, 5, 600, 70);
	idem_complete(t, ef, 202, 6, 700, 60);
	idem_flushed(t, 100);
	ck_assert_int_eq(try(t, "g", "k", 7, 50), IDEM_NEW);	/* d goes */
	ck_assert_int_eq(try(t, "d", "k", 4, 50), IDEM_NEW);	/* e goes */
	ck_assert_int_eq(idem_forgetting(t, 599), 1);
	ck_assert_int_eq(idem_forgetting(t, 600), 0);
	expect_replay(t, "f", "k", 6, 50, 6);
	ck_assert_int_eq(try(t, "h", "k", 8, 50), IDEM_NEW);	/* f goes */
	/* In flight, g, d and h are never given up. */
	ck_assert_int_eq(try(t, "i", "k", 9, 50), IDEM_FULL);
	ck_assert_int_eq(try(t, "g", "k", 7, 50), IDEM_INFLIGHT);
	ck_assert_uint_eq(idem_forgotten(t), 6);
	table_free(&m);

	/* LSN 0: PostgreSQL held it already (read back at start). */
	t = table_new(&m, 2, 16);
	put_lsn(t, "old", "k", 1, 0, 1, 10, 0);
	put_lsn(t, "keep", "k", 2, 0, 2, 1000, 0);
	/* An expired entry is reused first: nothing is forgotten. */
	ck_assert_int_eq(try(t, "new", "k", 3, 20), IDEM_NEW);
	ck_assert_uint_eq(idem_forgotten(t), 0);
	ck_assert_int_eq(idem_forgetting(t, 20), 0);
	expect_replay(t, "keep", "k", 2, 20, 2);
	ck_assert_int_eq(try(t, "newer", "k", 4, 20), IDEM_NEW);
	ck_assert_uint_eq(idem_forgotten(t), 1);
	ck_assert_int_eq(try(t, "newest", "k", 5, 20), IDEM_FULL);
	table_free(&m);

	t = table_new(&m, 1, 16);
	put_lsn(t, "x", "k", 1, 0, 1, 1000, 0);
	ck_assert_int_eq(try(t, "y", "k", 2, 0), IDEM_NEW);
	ck_assert_uint_eq(idem_forgotten(t), 1);
	ck_assert_int_eq(idem_forgetting(t, 999), 1);
	/* Keys never taken in: the flusher says so. */
	idem_forget_until(t, 5000);
	idem_forget_until(t, 3000);
	ck_assert_int_eq(idem_forgetting(t, 4999), 1);
	ck_assert_int_eq(idem_forgetting(t, 5000), 0);
	table_free(&m);
}
END_TEST

START_TEST(test_forget_looks_further)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 200, 16);
	char ik[32];

	/*
	 * Bodies are handed out in claim order: the first 150 hold keys
	 * not yet flushed, more than the hand's first two stretches.
	 */
	for (int i = 0; i < 150; i++) {
		snprintf(ik, sizeof(ik), "unflushed-%d", i);
		put_lsn(t, ik, "k", i, 0, i, FAR, 1000 + i);
	}
	for (int i = 0; i < 50; i++) {
		snprintf(ik, sizeof(ik), "flushed-%d", i);
		put_lsn(t, ik, "k", i, 0, i, FAR, 10);
	}
	idem_flushed(t, 100);
	ck_assert_int_eq(try(t, "new", "k", 1, 0), IDEM_NEW);
	ck_assert_uint_eq(idem_forgotten(t), 1);
	expect_replay(t, "unflushed-0", "k", 0, 0, 0);
	expect_replay(t, "unflushed-149", "k", 149, 0, 149);
	table_free(&m);
}
END_TEST

/* ---- recovery ---- */

START_TEST(test_restore)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 4, 16);

	ck_assert_int_eq(restore(t, "r1", "k", 5, 77, 10000), 0);
	ck_assert_uint_eq(idem_count(t), 1);
	expect_replay(t, "r1", "k", 5, 100, 77);
	ck_assert_int_eq(try(t, "r1", "k", 6, 100), IDEM_MISMATCH);
	ck_assert_int_eq(try(t, "r1", "j", 5, 100), IDEM_MISMATCH);

	/* A later record for the same ik replaces the entry. */
	ck_assert_int_eq(restore(t, "r1", "k", 5, 88, 20000), 0);
	ck_assert_uint_eq(idem_count(t), 1);
	expect_replay(t, "r1", "k", 5, 15000, 88);
	ck_assert_int_eq(restore(t, "r1", "j", 9, 99, 20000), 0);
	ck_assert_uint_eq(idem_count(t), 1);
	expect_replay(t, "r1", "j", 9, 100, 99);
	ck_assert_int_eq(try(t, "r1", "k", 5, 100), IDEM_MISMATCH);
	/* Restored entries expire like the others. */
	ck_assert_int_eq(try(t, "r1", "k", 5, 20000), IDEM_NEW);

	ck_assert_int_eq(restore(t, "r2", "k", 1, 1, 100), 0);
	ck_assert_int_eq(restore(t, "r3", "k", 1, 1, 100), 0);
	ck_assert_int_eq(restore(t, "r4", "k", 1, 1, 100), 0);
	ck_assert_uint_eq(idem_count(t), 4);
	ck_assert_int_eq(restore(t, "r5", "k", 1, 1, 100), -1);
	ck_assert_int_eq(restore(t, "", "k", 1, 1, 100), -1);
	ck_assert_uint_eq(idem_count(t), 4);
	table_free(&m);
}
END_TEST

/* A key's sum as a table of keys and sums; absent: cannot tell. */
struct sums {
	const char	*key[4];
	int64_t		 sum[4];
	int		 calls;
};

static int
sums_get(void *arg, const char *key, size_t len, int64_t *sum)
{
	struct sums *s = arg;

	s->calls++;
	for (int i = 0; i < 4 && s->key[i]; i++)
		if (strlen(s->key[i]) == len && memcmp(s->key[i], key,
		    len) == 0) {
			*sum = s->sum[i];
			return 0;
		}
	return -1;
}

/*
 * The journal since the checkpoint: a +1 (r1), a +10, a +2 (r2), b +7
 * (r3), a +5, d +4 (r4); PostgreSQL held a at 100, b and d nowhere.
 * Each restored entry answers the total it first did.
 */
START_TEST(test_restore_rebase)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 8, 16);
	struct sums end = { { "a", "b", "d", NULL }, { 18, 7, 4 }, 0 };
	struct sums now = { { "a", "b", NULL }, { 118, 7 }, 0 };
	struct sums again = { { "a", "b", "d", NULL }, { 1000, 1000, 1000 },
	    0 };

	ck_assert_int_eq(restore(t, "r1", "a", 1, 1, 10000), 0);
	ck_assert_int_eq(restore(t, "r2", "a", 2, 13, 10000), 0);
	ck_assert_int_eq(restore(t, "r3", "b", 7, 7, 10000), 0);
	ck_assert_int_eq(restore(t, "r4", "d", 4, 4, 10000), 0);
	/* Not from the journal: never rebased. */
	put(t, "n1", "a", 9, 0, 55, 10000);
	idem_restore_end(t, sums_get, &end);
	ck_assert_int_eq(end.calls, 4);
	/* Until the rebase, the journal's sums. */
	expect_replay(t, "r1", "a", 1, 0, 1);
	expect_replay(t, "r2", "a", 2, 0, 13);
	idem_rebase(t, sums_get, &now);
	ck_assert_int_eq(now.calls, 4);
	expect_replay(t, "r1", "a", 1, 0, 101);
	expect_replay(t, "r2", "a", 2, 0, 113);
	expect_replay(t, "r3", "b", 7, 0, 7);
	/* d's total could not be told: left as it was. */
	expect_replay(t, "r4", "d", 4, 0, 4);
	expect_replay(t, "n1", "a", 9, 0, 55);
	/* Done once: a second rebase finds only d's entry left to do. */
	idem_rebase(t, sums_get, &again);
	ck_assert_int_eq(again.calls, 1);
	expect_replay(t, "r1", "a", 1, 0, 101);
	expect_replay(t, "r4", "d", 4, 0, 1000);
	/* A restored entry expired and taken for a new use is not rebased. */
	ck_assert_int_eq(restore(t, "r5", "a", 3, 3, 10000), 0);
	put(t, "r5", "a", 3, 20000, 77, 30000);
	again.calls = 0;
	idem_rebase(t, sums_get, &again);
	ck_assert_int_eq(again.calls, 0);
	expect_replay(t, "r5", "a", 3, 20000, 77);
	table_free(&m);
}
END_TEST

/* What the flusher keeps in PostgreSQL: the total a journaled use got. */
START_TEST(test_answered)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 8, 16);
	struct idem_entry *e;
	int64_t tot = 0;
	int st;

	put_lsn(t, "a1", "k", 5, 0, 105, 1000, 4096);
	ck_assert_int_eq(idem_answered(t, "a1", 2, "k", 1, 5, 4096, &tot), 1);
	ck_assert_int_eq(tot, 105);
	/* Another frame, another request, another key: not this use. */
	ck_assert_int_eq(idem_answered(t, "a1", 2, "k", 1, 5, 8192, &tot), 0);
	ck_assert_int_eq(idem_answered(t, "a1", 2, "k", 1, 6, 4096, &tot), 0);
	ck_assert_int_eq(idem_answered(t, "a1", 2, "j", 1, 5, 4096, &tot), 0);
	ck_assert_int_eq(idem_answered(t, "a2", 2, "k", 1, 5, 4096, &tot), 0);
	/* In flight: not answered yet, but to be (another request: no). */
	ck_assert_int_eq(begin(t, "a3", "k", 1, 0, getpid(), &e, &st, &tot),
	    IDEM_NEW);
	ck_assert_int_eq(idem_answered(t, "a3", 2, "k", 1, 1, 4096, &tot), -1);
	ck_assert_int_eq(idem_answered(t, "a3", 2, "k", 1, 2, 4096, &tot), 0);
	idem_complete(t, e, 202, 7, 1000, 4160);
	ck_assert_int_eq(idem_answered(t, "a3", 2, "k", 1, 1, 4160, &tot), 1);
	ck_assert_int_eq(tot, 7);
	/* Expired but still there: the flusher may come late. */
	ck_assert_int_eq(idem_sweep(t, 500), 0);
	ck_assert_int_eq(idem_answered(t, "a1", 2, "k", 1, 5, 4096, &tot), 1);
	ck_assert_int_eq(idem_sweep(t, 2000), 2);
	ck_assert_int_eq(idem_answered(t, "a1", 2, "k", 1, 5, 4096, &tot), 0);
	table_free(&m);
}
END_TEST

/* ---- lengths ---- */

START_TEST(test_limits)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 100, 300);
	struct idem_entry *e;
	char ik[300], key[400];
	int st;
	int64_t tot;

	/* Printable ASCII, quote and backslash included. */
	ck_assert_int_eq(idem_begin(t, "\"", 1, "k", 1, 1, 0, getpid(), &e,
	    &st, &tot), IDEM_NEW);
	idem_complete(t, e, 202, 1, FAR, IDEM_LSN_NONE);
	ck_assert_int_eq(idem_begin(t, "\\", 1, "k", 1, 1, 0, getpid(), &e,
	    &st, &tot), IDEM_NEW);
	ck_assert_int_eq(idem_begin(t, "\"", 1, "k", 1, 1, 0, getpid(), &e,
	    &st, &tot), IDEM_REPLAY);

	/* 255 bytes; keys differing in their last byte only. */
	memset(ik, '~', sizeof(ik));
	ik[254] = 'a';
	ck_assert_int_eq(idem_begin(t, ik, 255, "k", 1, 1, 0, getpid(), &e,
	    &st, &tot), IDEM_NEW);
	idem_complete(t, e, 202, 2, FAR, IDEM_LSN_NONE);
	ik[254] = 'b';
	ck_assert_int_eq(idem_begin(t, ik, 255, "k", 1, 1, 0, getpid(), &e,
	    &st, &tot), IDEM_NEW);
	idem_complete(t, e, 202, 3, FAR, IDEM_LSN_NONE);
	ck_assert_int_eq(idem_begin(t, ik, 254, "k", 1, 1, 0, getpid(), &e,
	    &st, &tot), IDEM_NEW);
	ik[254] = 'a';
	ck_assert_int_eq(idem_begin(t, ik, 255, "k", 1, 1, 0, getpid(), &e,
	    &st, &tot), IDEM_REPLAY);
	ck_assert_int_eq(tot, 2);
	ck_assert_int_eq(idem_begin(t, ik, 256, "k", 1, 1, 0, getpid(), &e,
	    &st, &tot), IDEM_FULL);
	ck_assert_ptr_null(e);
	ck_assert_int_eq(idem_begin(t, ik, 0, "k", 1, 1, 0, getpid(), &e,
	    &st, &tot), IDEM_FULL);

	/* Counter keys of max_key_bytes are compared to the last byte. */
	memset(key, 'K', sizeof(key));
	ck_assert_int_eq(idem_begin(t, ik, 255, key, 300, 1, 0, getpid(), &e,
	    &st, &tot), IDEM_MISMATCH);
	ck_assert_int_eq(idem_begin(t, "long", 4, key, 300, 1, 0, getpid(),
	    &e, &st, &tot), IDEM_NEW);
	idem_complete(t, e, 202, 300, FAR, IDEM_LSN_NONE);
	ck_assert_int_eq(idem_begin(t, "long", 4, key, 300, 1, 0, getpid(),
	    &e, &st, &tot), IDEM_REPLAY);
	ck_assert_int_eq(tot, 300);
	key[299] = 'L';
	ck_assert_int_eq(idem_begin(t, "long", 4, key, 300, 1, 0, getpid(),
	    &e, &st, &tot), IDEM_MISMATCH);
	ck_assert_int_eq(idem_begin(t, "long", 4, key, 299, 1, 0, getpid(),
	    &e, &st, &tot), IDEM_MISMATCH);
	ck_assert_int_eq(idem_begin(t, "longer", 6, key, 301, 1, 0, getpid(),
	    &e, &st, &tot), IDEM_FULL);

	/* Both at their limits in one entry. */
	ik[254] = 'z';
	ck_assert_int_eq(idem_begin(t, ik, 255, key, 300, -1, 0, getpid(), &e,
	    &st, &tot), IDEM_NEW);
	idem_complete(t, e, 202, -1, FAR, IDEM_LSN_NONE);
	ck_assert_int_eq(idem_begin(t, ik, 255, key, 300, -1, 0, getpid(), &e,
	    &st, &tot), IDEM_REPLAY);
	ck_assert_int_eq(tot, -1);
	table_free(&m);
}
END_TEST

/* ---- a random run against a model ---- */

#define MODEL_IKS	24

struct model_key {
	int		state;		/* 0 absent, 1 in flight, 2 done */
	int64_t		value;
	int64_t		total;
	uint64_t	expires;
	struct idem_entry *e;
};

START_TEST(test_model)
{
	struct mapping m;
	/* Little room, so that probes wrap and slots are reused a lot. */
	struct idem_table *t = table_new(&m, 2 * MODEL_IKS, 8);
	struct model_key mk[MODEL_IKS];
	unsigned seed = 12345;
	uint64_t now = 1;
	char ik[32];

	memset(mk, 0, sizeof(mk));
	for (int step = 0; step < 200000; step++) {
		int k = rand_r(&seed) % MODEL_IKS, st = 0, op;
		int64_t value = rand_r(&seed) % 3, tot = 0;
		struct model_key *x = &mk[k];
		struct idem_entry *e;
		enum idem_result want, got;

		now += rand_r(&seed) % 4;
		snprintf(ik, sizeof(ik), "m%d", k);
		if (x->state == 1) {
			op = rand_r(&seed) % 3;
			if (op == 0) {
				idem_abort(t, x->e);
				x->state = 0;
				continue;
			}
			if (op == 1) {
				x->total = rand_r(&seed);
				x->expires = now + rand_r(&seed) % 60;
				idem_complete(t, x->e, 202, x->total,
				    x->expires, IDEM_LSN_NONE);
				x->state = 2;
				continue;
			}
		}
		if (rand_r(&seed) % 50 == 0) {
			idem_sweep(t, now);
			/* Only live entries are left to count. */
			uint64_t live = 0;
			for (int i = 0; i < MODEL_IKS; i++)
				live += mk[i].state == 1 ||
				    (mk[i].state == 2 && mk[i].expires > now);
			ck_assert_uint_eq(idem_count(t), live);
		}

		if (x->state == 1)
			want = IDEM_INFLIGHT;
		else if (x->state == 2 && x->expires > now)
			want = x->value == value ? IDEM_REPLAY : IDEM_MISMATCH;
		else
			want = IDEM_NEW;
		got = begin(t, ik, "key", value, now, getpid(), &e, &st, &tot);
		if (got == IDEM_FULL && want == IDEM_NEW) {
			/* Expired entries held the room; a sweep frees it. */
			idem_sweep(t, now);
			got = begin(t, ik, "key", value, now, getpid(), &e,
			    &st, &tot);
		}
		ck_assert_msg(got == want, "step %d key %d: got %d want %d",
		    step, k, got, want);
		if (got == IDEM_REPLAY)
			ck_assert_int_eq(tot, x->total);
		if (got == IDEM_NEW) {
			x->state = 1;
			x->value = value;
			x->e = e;
		}
	}
	table_free(&m);
}
END_TEST

/* ---- processes sharing one table ---- */

#define NPROC		4
#define NIDS		1000

struct race {
	int		ready;			/* start barrier */
	int		result[NPROC][NIDS];
	int64_t		total[NPROC][NIDS];
};

static void
barrier(int *ready, int n)
{
	__atomic_add_fetch(ready, 1, __ATOMIC_ACQ_REL);
	while (__atomic_load_n(ready, __ATOMIC_ACQUIRE) < n)
		sched_yield();
}

static void
wait_children(pid_t *pids, int n)
{
	for (int p = 0; p < n; p++) {
		int status;

		ck_assert_int_eq(waitpid(pids[p], &status, 0), pids[p]);
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		    "child %d: status %#x", p, status);
	}
}

static void
race_child(struct idem_table *t, struct race *r, int p)
{
	char ik[32], key[32];

	barrier(&r->ready, NPROC);
	for (int id = 0; id < NIDS; id++) {
		struct idem_entry *e;
		int st = 0;
		int64_t tot = 0;
		enum idem_result res;

		snprintf(ik, sizeof(ik), "race-%d", id);
		snprintf(key, sizeof(key), "counter-%d", id);
		res = idem_begin(t, ik, strlen(ik), key, strlen(key), id, 1,
		    getpid(), &e, &st, &tot);
		if (res == IDEM_NEW) {
			tot = (int64_t)p * 100000 + id;
			idem_complete(t, e, 202, tot, FAR, IDEM_LSN_NONE);
		}
		r->result[p][id] = res;
		r->total[p][id] = tot;
	}
	_exit(0);
}

START_TEST(test_concurrent_first_use)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 2 * NIDS, 32);
	struct race *r = shared_zero(sizeof(*r));
	pid_t pids[NPROC];
	char ik[32], key[32];

	for (int p = 0; p < NPROC; p++) {
		pids[p] = fork();
		ck_assert_int_ne(pids[p], -1);
		if (pids[p] == 0)
			race_child(t, r, p);
	}
	wait_children(pids, NPROC);

	for (int id = 0; id < NIDS; id++) {
		int news = 0, winner = -1;

		for (int p = 0; p < NPROC; p++)
			if (r->result[p][id] == IDEM_NEW) {
				news++;
				winner = p;
			}
		ck_assert_msg(news == 1, "id %d: %d processes got IDEM_NEW",
		    id, news);
		for (int p = 0; p < NPROC; p++) {
			int res = r->result[p][id];

			ck_assert_msg(res == IDEM_NEW || res == IDEM_INFLIGHT ||
			    res == IDEM_REPLAY, "id %d process %d: %d", id, p,
			    res);
			if (res == IDEM_REPLAY)
				ck_assert_int_eq(r->total[p][id],
				    (int64_t)winner * 100000 + id);
		}
		snprintf(ik, sizeof(ik), "race-%d", id);
		snprintf(key, sizeof(key), "counter-%d", id);
		expect_replay(t, ik, key, id, 2,
		    (int64_t)winner * 100000 + id);
	}
	ck_assert_uint_eq(idem_count(t), NIDS);
	munmap(r, sizeof(*r));
	table_free(&m);
}
END_TEST

/*
 * Many processes claim and abort a few keys in a small table, so that
 * slots are freed and retaken all the time: a claimant notes itself as
 * the key's holder while it holds the claim, and must find nobody else.
 * Few keys make claimants of one key meet often (rivals are removed);
 * more keys make slots pass from one key to another.
 */
#define CHURN_MAX_IKS	64
#define CHURN_MAX_NPROC	8

struct churn {
	int		ready;
	int		nkeys;
	int		nproc;
	int		steps;
	int		holders[CHURN_MAX_IKS];
	uint64_t	news;
	uint64_t	violations;
	uint64_t	unexpected;
};

static void
churn_child(struct idem_table *t, struct churn *c, int p)
{
	unsigned seed = 777 + p;
	char ik[32];

	barrier(&c->ready, c->nproc);
	for (int step = 0; step < c->steps; step++) {
		int k = rand_r(&seed) % c->nkeys, st;
		struct idem_entry *e;
		enum idem_result res;
		int64_t tot;

		snprintf(ik, sizeof(ik), "c%d", k);
		res = begin(t, ik, "k", 1, 1, getpid(), &e, &st, &tot);
		if (res == IDEM_NEW) {
			__atomic_add_fetch(&c->news, 1, __ATOMIC_RELAXED);
			if (__atomic_fetch_add(&c->holders[k], 1,
			    __ATOMIC_ACQ_REL) != 0)
				__atomic_add_fetch(&c->violations, 1,
				    __ATOMIC_RELAXED);
			if (step % 4 == 0)
				sched_yield();
			__atomic_sub_fetch(&c->holders[k], 1,
			    __ATOMIC_ACQ_REL);
			idem_abort(t, e);
		} else if (res != IDEM_INFLIGHT)
			__atomic_add_fetch(&c->unexpected, 1,
			    __ATOMIC_RELAXED);
	}
	_exit(0);
}

static void
churn_run(int nkeys, int nproc, int steps)
{
	struct mapping m;
	struct idem_table *t = table_new(&m, 64, 8);
	struct churn *c = shared_zero(sizeof(*c));
	pid_t pids[CHURN_MAX_NPROC];
	char ik[32];

	c->nkeys = nkeys;
	c->nproc = nproc;
	c->steps = steps;
	/*
	 * Leave TOMBSTONEs in every slot first: with no EMPTY to stop them,
	 * probes and rival scans cover the whole window, which widens the
	 * time between a claimant's publishing and confirming its slot.
	 */
	for (int i = 0; i < 4000; i++) {
		struct idem_entry *e;
		int st;
		int64_t tot;

		snprintf(ik, sizeof(ik), "fill-%d", i);
		ck_assert_int_eq(begin(t, ik, "k", 1, 1, getpid(), &e, &st,
		    &tot), IDEM_NEW);
		idem_abort(t, e);
	}

	for (int p = 0; p < nproc; p++) {
		pids[p] = fork();
		ck_assert_int_ne(pids[p], -1);
		if (pids[p] == 0)
			churn_child(t, c, p);
	}
	wait_children(pids, nproc);
	ck_assert_uint_eq(c->violations, 0);
	ck_assert_uint_eq(c->unexpected, 0);
	ck_assert_uint_gt(c->news, (uint64_t)steps / 10);
	ck_assert_uint_eq(idem_count(t), 0);
	/* Every key is free again. */
	for (int k = 0; k < nkeys; k++) {
		snprintf(ik, sizeof(ik), "c%d", k);
		ck_assert_int_eq(try(t, ik, "k", 1, 1), IDEM_NEW);
	}
	munmap(c, sizeof(*c));
	table_free(&m);
}

START_TEST(test_concurrent_churn_hot)
{
	churn_run(4, 4, 100000);
}
END_TEST

START_TEST(test_concurrent_churn_wide)
{
	churn_run(48, 8, 20000);
}
END_TEST

static Suite *
idem_suite(void)
{
	Suite *s = suite_create("idem");
	TCase *tc;

	tc = tcase_create("answers");
	tcase_add_test(tc, test_new_replay_mismatch);
	tcase_add_test(tc, test_replay_keeps_status);
	suite_add_tcase(s, tc);

	tc = tcase_create("release");
	tcase_add_test(tc, test_abort_releases);
	tcase_add_test(tc, test_expiry);
	tcase_add_test(tc, test_sweep);
	tcase_add_test(tc, test_release_owner);
	tcase_add_test(tc, test_adopt_owner);
	tcase_add_test(tc, test_release_reads_slots_in_use);
	suite_add_tcase(s, tc);

	tc = tcase_create("capacity");
	tcase_add_test(tc, test_capacity);
	tcase_add_test(tc, test_expired_slots_reused_when_full);
	tcase_add_test(tc, test_forget_when_full);
	tcase_add_test(tc, test_forget_looks_further);
	tcase_add_test(tc, test_dense_bodies);
	tcase_add_test(tc, test_sweep_reads_slots_in_use);
	suite_add_tcase(s, tc);

	tc = tcase_create("recovery");
	tcase_add_test(tc, test_restore);
	tcase_add_test(tc, test_restore_rebase);
	tcase_add_test(tc, test_answered);
	suite_add_tcase(s, tc);

	tc = tcase_create("limits");
	tcase_add_test(tc, test_limits);
	suite_add_tcase(s, tc);

	tc = tcase_create("model");
	tcase_add_test(tc, test_model);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);

	tc = tcase_create("concurrency");
	tcase_add_test(tc, test_concurrent_first_use);
	tcase_add_test(tc, test_concurrent_churn_hot);
	tcase_add_test(tc, test_concurrent_churn_wide);
	tcase_set_timeout(tc, 300);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(idem_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
