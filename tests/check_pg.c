/*
 * Tests of what pg.c computes without a server: the order the flusher
 * upserts a batch in.  Every node must sort alike, or two of them could
 * lock shared keys in opposite orders; the radix sort must therefore
 * agree exactly with a plain qsort() by memcmp() and length, whatever
 * the keys share, however short, whatever bytes they hold.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "pg.h"

/* The order pg.c's comparison means, written again: the oracle. */
static int
ref_cmp(const void *a, const void *b)
{
	const struct pg_kv *x = a, *y = b;
	size_t n = x->len < y->len ? x->len : y->len;
	int c = memcmp(x->key, y->key, n);

	if (c != 0)
		return c;
	return x->len < y->len ? -1 : x->len > y->len;
}

static uint64_t rng = 88172645463325252ULL;

static uint64_t
next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/*
 * n distinct keys into buf (each 16 bytes apart, up to 16 long): a
 * prefix of 'prefix' bytes common to all, then random bytes out of
 * 'alphabet' (NUL and 0xff among them when asked), random lengths.
 */
static void
make_keys(struct pg_kv *kv, char *buf, size_t n, size_t prefix,
    const char *alphabet, size_t nalpha)
{
	for (size_t i = 0; i < n; i++) {
		char *k = buf + 16 * i;
		size_t len;

		do {
			len = prefix + next_rand() % (17 - prefix);
			for (size_t j = 0; j < len; j++)
				k[j] = j < prefix ? 'p' :
				    alphabet[next_rand() % nalpha];
			kv[i].key = k;
			kv[i].len = len;
			kv[i].value = (int64_t)i;
		} while (len == 0);
	}
}

/* Drop duplicates (the flusher's keys are distinct) keeping the first. */
static size_t
dedup(struct pg_kv *kv, size_t n)
{
	struct pg_kv *s = malloc(n * sizeof(*s));
	size_t m = 0;

	ck_assert_ptr_nonnull(s);
	memcpy(s, kv, n * sizeof(*s));
	qsort(s, n, sizeof(*s), ref_cmp);
	for (size_t i = 0; i < n; i++)
		if (i == 0 || ref_cmp(&s[i - 1], &s[i]) != 0)
			s[m++] = s[i];
	/* Back to an unsorted order: shuffle. */
	for (size_t i = m; i > 1; i--) {
		size_t j = next_rand() % i;
		struct pg_kv t = s[i - 1];

		s[i - 1] = s[j];
		s[j] = t;
	}
	memcpy(kv, s, m * sizeof(*s));
	free(s);
	return m;
}

static void
check_sorted_like_qsort(struct pg_kv *kv, size_t n)
{
	struct pg_kv *ref = malloc((n ? n : 1) * sizeof(*ref));

	ck_assert_ptr_nonnull(ref);
	memcpy(ref, kv, n * sizeof(*ref));
	qsort(ref, n, sizeof(*ref), ref_cmp);
	ck_assert_int_eq(pg_kv_sort(kv, n), 0);
	for (size_t i = 0; i < n; i++) {
		ck_assert_msg(kv[i].key == ref[i].key && kv[i].len == ref[i].len &&
		    kv[i].value == ref[i].value,
		    "position %zu of %zu: '%.*s' where qsort has '%.*s'", i, n,
		    (int)kv[i].len, kv[i].key, (int)ref[i].len, ref[i].key);
	}
	free(ref);
}

static void
run(size_t n, size_t prefix, const char *alphabet, size_t nalpha)
{
	struct pg_kv *kv = malloc((n ? n : 1) * sizeof(*kv));
	char *buf = malloc((n ? n : 1) * 16);

	ck_assert_ptr_nonnull(kv);
	ck_assert_ptr_nonnull(buf);
	make_keys(kv, buf, n, prefix, alphabet, nalpha);
	n = dedup(kv, n);
	check_sorted_like_qsort(kv, n);
	free(kv);
	free(buf);
}

START_TEST(test_sort_small)
{
	struct pg_kv kv[3] = {
		{ "b", 1, 1, 0 }, { "ab", 2, 2, 1 }, { "a", 1, 3, 2 }
	};

	ck_assert_int_eq(pg_kv_sort(kv, 0), 0);
	ck_assert_int_eq(pg_kv_sort(kv, 1), 0);
	ck_assert_int_eq(kv[0].value, 1);
	check_sorted_like_qsort(kv, 3);
	ck_assert_int_eq(kv[0].value, 3);	/* "a" before "ab" before "b" */
	ck_assert_int_eq(kv[1].value, 2);
	ck_assert_int_eq(kv[2].value, 1);
}
END_TEST

/* Short keys against 8-byte ones: "ab" must precede "ab\x01". */
START_TEST(test_sort_lengths)
{
	static const char *keys[] = {
		"ab", "ab\x01", "abcdefgh", "abcdefg", "abcdefghi", "a",
		"abcdefgh\x01", "\xff", "\xff\xff\xff\xff\xff\xff\xff\xff",
		"\xff\xff\xff\xff\xff\xff\xff\xff\xff", "b"
	};
	struct pg_kv kv[sizeof(keys) / sizeof(keys[0])];

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		kv[i].key = keys[i];
		kv[i].len = strlen(keys[i]);
		kv[i].value = (int64_t)i;
	}
	check_sorted_like_qsort(kv, sizeof(keys) / sizeof(keys[0]));
}
END_TEST

/* A key and the same key with NUL bytes after it share a prefix. */
START_TEST(test_sort_nul_bytes)
{
	struct pg_kv kv[] = {
		{ "ab\0\0", 4, 0, 0 }, { "ab", 2, 1, 1 }, { "ab\0", 3, 2, 2 },
		{ "ab\0\0\0\0\0\0\0", 9, 3, 3 }, { "ab\0\0\0\0\0\0", 8, 4, 4 },
		{ "\0", 1, 5, 5 }, { "\0\0\0\0\0\0\0\0\x01", 9, 6, 6 },
	};

	check_sorted_like_qsort(kv, sizeof(kv) / sizeof(kv[0]));
}
END_TEST

/* Random batches: no shared prefix, and prefixes up to past 8 bytes. */
START_TEST(test_sort_random)
{
	static const char digits[] = "0123456789";
	static const char bytes[] = { 0, 1, 'a', 'k', 0x7f, (char)0x80,
	    (char)0xc3, (char)0xfe, (char)0xff };

	for (size_t prefix = 0; prefix <= 12; prefix++) {
		run(1000, prefix, digits, sizeof(digits) - 1);
		run(1000, prefix, bytes, sizeof(bytes));
	}
	run(2, 0, digits, 10);
	run(100000, 1, digits, 10);
	run(100000, 0, bytes, sizeof(bytes));
}
END_TEST

static Suite *
pg_suite(void)
{
	Suite *s = suite_create("pg");
	TCase *tc;

	tc = tcase_create("kv_sort");
	tcase_add_test(tc, test_sort_small);
	tcase_add_test(tc, test_sort_lengths);
	tcase_add_test(tc, test_sort_nul_bytes);
	tcase_add_test(tc, test_sort_random);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(pg_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
