/*
 * Tests of the local checkpoint file: it must round-trip, and every kind
 * of damage (a cut at any length, any flipped bit, a version from the
 * future) must be refused rather than misread.
 */
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <zlib.h>

#include "checkpoint.h"

static char dir[64];
static char path[128];

static void
setup(void)
{
	strcpy(dir, "/tmp/check_checkpoint.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/checkpoint", dir);
}

static void
teardown(void)
{
	char tmp[160];

	unlink(path);
	snprintf(tmp, sizeof(tmp), "%s/checkpoint.tmp", dir);
	unlink(tmp);
	rmdir(dir);
}

static void
sample(struct checkpoint *cp)
{
	for (int i = 0; i < JOURNAL_EPOCH_LEN; i++)
		cp->epoch[i] = 0xa0 + i;
	cp->lsn = 0x0123456789abcdefULL;
}

static size_t
load(uint8_t *buf, size_t cap)
{
	FILE *f = fopen(path, "rb");
	size_t n;

	ck_assert_ptr_nonnull(f);
	n = fread(buf, 1, cap, f);
	fclose(f);
	return n;
}

static void
store(const uint8_t *buf, size_t len)
{
	FILE *f = fopen(path, "wb");

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
	fclose(f);
}

START_TEST(test_round_trip)
{
	struct checkpoint in, out;

	sample(&in);
	ck_assert_int_eq(checkpoint_write(dir, &in), 0);
	memset(&out, 0, sizeof(out));
	ck_assert_int_eq(checkpoint_read(dir, &out), 1);
	ck_assert_mem_eq(out.epoch, in.epoch, JOURNAL_EPOCH_LEN);
	ck_assert_uint_eq(out.lsn, in.lsn);

	/* A rewrite replaces the old contents and leaves no temp file. */
	in.lsn = 256;
	in.epoch[0] = 1;
	ck_assert_int_eq(checkpoint_write(dir, &in), 0);
	ck_assert_int_eq(checkpoint_read(dir, &out), 1);
	ck_assert_uint_eq(out.lsn, 256);
	ck_assert_uint_eq(out.epoch[0], 1);
	{
		char tmp[160];

		snprintf(tmp, sizeof(tmp), "%s/checkpoint.tmp", dir);
		ck_assert_int_eq(access(tmp, F_OK), -1);
	}
}
END_TEST

START_TEST(test_layout)
{
	struct checkpoint in;
	uint8_t b[128];

	sample(&in);
	ck_assert_int_eq(checkpoint_write(dir, &in), 0);
	ck_assert_uint_eq(load(b, sizeof(b)), 40);
	ck_assert_mem_eq(b, "TALLYCKP", 8);
	ck_assert_uint_eq(b[8], 1);
	ck_assert_mem_eq(b + 12, in.epoch, JOURNAL_EPOCH_LEN);
	ck_assert_uint_eq(b[28], 0xef);		/* little-endian */
	ck_assert_uint_eq(b[35], 0x01);
	ck_assert_uint_eq(b[36] | b[37] << 8 | b[38] << 16 |
	    (uint32_t)b[39] << 24, crc32(0, b, 36));
}
END_TEST

START_TEST(test_missing)
{
	struct checkpoint out;

	ck_assert_int_eq(checkpoint_read(dir, &out), 0);
}
END_TEST

START_TEST(test_missing_dir)
{
	struct checkpoint in;

	sample(&in);
	ck_assert_int_eq(checkpoint_write("/nonexistent/tallyd", &in), -1);
	ck_assert_int_eq(errno, ENOENT);
}
END_TEST

START_TEST(test_truncated)
{
	struct checkpoint in, out;
	uint8_t b[128];
	size_t n;

	sample(&in);
	ck_assert_int_eq(checkpoint_write(dir, &in), 0);
	n = load(b, sizeof(b));
	for (size_t len = 0; len < n; len++) {
		store(b, len);
		errno = 0;
		ck_assert_msg(checkpoint_read(dir, &out) == -1,
		    "accepted a file cut at %zu bytes", len);
		ck_assert_int_eq(errno, EINVAL);
	}
	/* Trailing garbage is damage too. */
	b[n] = 0;
	store(b, n + 1);
	ck_assert_int_eq(checkpoint_read(dir, &out), -1);
	ck_assert_int_eq(errno, EINVAL);
}
END_TEST

START_TEST(test_bit_flips)
{
	struct checkpoint in, out;
	uint8_t b[128];
	size_t n;

	sample(&in);
	ck_assert_int_eq(checkpoint_write(dir, &in), 0);
	n = load(b, sizeof(b));
	for (size_t i = 0; i < n * 8; i++) {
		b[i / 8] ^= 1 << (i % 8);
		store(b, n);
		errno = 0;
		ck_assert_msg(checkpoint_read(dir, &out) == -1,
		    "accepted a flipped bit %zu", i);
		ck_assert_int_eq(errno, EINVAL);
		b[i / 8] ^= 1 << (i % 8);
	}
	store(b, n);
	ck_assert_int_eq(checkpoint_read(dir, &out), 1);
}
END_TEST

START_TEST(test_unknown_version)
{
	struct checkpoint in, out;
	uint8_t b[128];
	size_t n;
	uint32_t crc;

	sample(&in);
	ck_assert_int_eq(checkpoint_write(dir, &in), 0);
	n = load(b, sizeof(b));
	b[8] = 2;
	crc = crc32(0, b, 36);
	for (int i = 0; i < 4; i++)
		b[36 + i] = crc >> (8 * i);
	store(b, n);
	errno = 0;
	ck_assert_int_eq(checkpoint_read(dir, &out), -1);
	ck_assert_int_eq(errno, ENOTSUP);
}
END_TEST

static Suite *
checkpoint_suite(void)
{
	Suite *s = suite_create("checkpoint");
	TCase *tc;

	tc = tcase_create("format");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_round_trip);
	tcase_add_test(tc, test_layout);
	tcase_add_test(tc, test_missing);
	tcase_add_test(tc, test_missing_dir);
	suite_add_tcase(s, tc);

	tc = tcase_create("damage");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_truncated);
	tcase_add_test(tc, test_bit_flips);
	tcase_add_test(tc, test_unknown_version);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(checkpoint_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
