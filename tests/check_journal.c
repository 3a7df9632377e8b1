/*
 * Tests of the journal codec and its segment files: records and frames
 * round trip; a frame cut at any byte or with any one bit flipped never
 * validates, nor does one read at another LSN or under another epoch; the
 * LSN arithmetic and reservations, also from several forked processes at
 * once; and segment creation, sharing, recycling and header checks in a
 * scratch directory.
 */
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <zlib.h>

#include "journal.h"
#include "le.h"

#define SEG	(UINT64_C(1) << 20)	/* segment size of most tests */

static const uint8_t EPOCH[JOURNAL_EPOCH_LEN] = {
	0x5b, 0x13, 0xa7, 0x42, 0x99, 0x01, 0xfe, 0x3c,
	0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80
};
static const uint8_t OTHER_EPOCH[JOURNAL_EPOCH_LEN] = {
	0x5b, 0x13, 0xa7, 0x43, 0x99, 0x01, 0xfe, 0x3c,
	0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80
};

/* A small deterministic generator, so that failures reproduce. */
static uint64_t
rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void
fill(char *p, size_t n, uint64_t *s)
{
	for (size_t i = 0; i < n; i++)
		p[i] = 'a' + rnd(s) % 26;
}

static uint8_t *
xmalloc(size_t n)
{
	uint8_t *p = calloc(1, n ? n : 1);

	ck_assert_ptr_nonnull(p);
	return p;
}

/*
 * Records of pseudo-random keys (and every third with an idempotency key)
 * into raw, up to cap bytes or n records.  Returns the bytes used and sets
 * *count.
 */
static size_t
make_records(uint8_t *raw, size_t cap, uint32_t n, size_t max_key,
    uint64_t seed, uint32_t *count)
{
	char key[4096], idem[255];
	struct journal_record r;
	uint64_t s = seed;
	size_t off = 0;
	uint32_t i;

	for (i = 0; i < n; i++) {
		memset(&r, 0, sizeof(r));
		r.key_len = 1 + rnd(&s) % max_key;
		fill(key, r.key_len, &s);
		r.key = key;
		if (i % 3 == 0) {
			r.idem_len = 1 + rnd(&s) % 255;
			fill(idem, r.idem_len, &s);
			r.idem = idem;
		}
		r.value = (int64_t)rnd(&s);
		r.time_us = rnd(&s);
		if (off + journal_record_size(r.key_len, r.idem_len) > cap)
			break;
		off += journal_record_put(raw + off, &r);
	}
	*count = i;
	return off;
}

/* Build a frame at lsn of n small records; returns its length. */
static size_t
small_frame(uint8_t **out, uint64_t lsn, uint32_t n, uint64_t seed)
{
	uint8_t raw[64 * 1024];
	uint32_t count;
	size_t raw_len, cap, len;

	raw_len = make_records(raw, sizeof(raw), n, 24, seed, &count);
	ck_assert_uint_eq(count, n);
	cap = journal_frame_bound(raw_len);
	*out = xmalloc(cap);
	len = journal_frame_build(*out, cap, lsn, EPOCH, raw, raw_len, n);
	ck_assert_uint_gt(len, JOURNAL_FRAME_HDR);
	ck_assert_uint_eq(len % JOURNAL_ALIGN, 0);
	return len;
}

/* --- records --- */

START_TEST(test_record_roundtrip)
{
	static const size_t klens[] = { 1, 2, 100, 4096 };
	static const size_t ilens[] = { 0, 1, 36, 255 };
	static const int64_t values[] = { 0, 1, -1, -123456789, INT64_MIN,
	    INT64_MAX, INT64_MIN + 1 };
	char key[4096], idem[255];
	uint8_t *buf = xmalloc(JOURNAL_REC_HDR + 4096 + 255 + 16);
	uint64_t s = 7;

	for (size_t a = 0; a < sizeof(klens) / sizeof(klens[0]); a++)
	for (size_t b = 0; b < sizeof(ilens) / sizeof(ilens[0]); b++)
	for (size_t v = 0; v < sizeof(values) / sizeof(values[0]); v++) {
		struct journal_record in, out;
		const uint8_t *p = buf;
		size_t n;

		fill(key, klens[a], &s);
		fill(idem, ilens[b], &s);
		memset(&in, 0, sizeof(in));
		in.value = values[v];
		in.time_us = UINT64_C(1700000000123456) + v;
		in.key = key;
		in.key_len = klens[a];
		in.idem = ilens[b] ? idem : NULL;
		in.idem_len = ilens[b];
		memset(buf, 0xee, JOURNAL_REC_HDR + 4096 + 255 + 16);
		n = journal_record_put(buf, &in);
		ck_assert_uint_eq(n, journal_record_size(klens[a], ilens[b]));
		ck_assert_uint_eq(n, JOURNAL_REC_HDR + klens[a] + ilens[b]);
		/* Nothing written past the record. */
		ck_assert_uint_eq(buf[n], 0xee);
		ck_assert_int_eq(journal_record_next(&p, buf + n, &out), 1);
		ck_assert_ptr_eq(p, buf + n);
		ck_assert_int_eq(out.value, values[v]);
		ck_assert_uint_eq(out.time_us, in.time_us);
		ck_assert_uint_eq(out.key_len, klens[a]);
		ck_assert_mem_eq(out.key, key, klens[a]);
		ck_assert_uint_eq(out.idem_len, ilens[b]);
		if (ilens[b] == 0)
			ck_assert_ptr_null(out.idem);
		else
			ck_assert_mem_eq(out.idem, idem, ilens[b]);
		ck_assert_int_eq(journal_record_next(&p, buf + n, &out), 0);
	}
	free(buf);
}
END_TEST

START_TEST(test_record_layout)
{
	struct journal_record r = { .value = -2, .time_us = 0x0102030405060708,
	    .key = "k", .key_len = 1, .idem = "ab", .idem_len = 2 };
	static const uint8_t want[] = {
	    0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	    0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
	    0x01, 0x00, 0x02, 0x00, 'k', 'a', 'b' };
	uint8_t buf[64];

	ck_assert_uint_eq(journal_record_put(buf, &r), sizeof(want));
	ck_assert_mem_eq(buf, want, sizeof(want));

	/* An idempotency length without a pointer is written as none. */
	r.idem = NULL;
	ck_assert_uint_eq(journal_record_put(buf, &r), JOURNAL_REC_HDR + 1);
	ck_assert_uint_eq(buf[18], 0);
}
END_TEST

START_TEST(test_record_truncated)
{
	uint8_t raw[4096];
	size_t bounds[8], nb = 0, total;
	struct journal_record r;
	uint32_t count;

	total = make_records(raw, sizeof(raw), 4, 40, 99, &count);
	ck_assert_uint_eq(count, 4);
	/* Record boundaries, found by parsing the whole buffer. */
	{
		const uint8_t *p = raw;

		bounds[nb++] = 0;
		while (journal_record_next(&p, raw + total, &r) == 1)
			bounds[nb++] = p - raw;
		ck_assert_uint_eq(nb, 5);
		ck_assert_uint_eq(bounds[4], total);
	}
	for (size_t len = 0; len <= total; len++) {
		const uint8_t *p = raw;
		int rc, n = 0, boundary = 0;

		while ((rc = journal_record_next(&p, raw + len, &r)) == 1)
			n++;
		for (size_t b = 0; b < nb; b++)
			if (bounds[b] == len)
				boundary = 1;
		if (boundary)
			ck_assert_msg(rc == 0, "len %zu: %d, want 0", len, rc);
		else
			ck_assert_msg(rc == -1, "len %zu: %d, want -1", len, rc);
		/* The records wholly inside were all returned. */
		for (size_t b = 1; b < nb; b++)
			if (bounds[b] <= len)
				n--;
		ck_assert_int_eq(n, 0);
		/* A failed call leaves the position at the bad record. */
		ck_assert_uint_le((size_t)(p - raw), len);
	}
}
END_TEST

START_TEST(test_record_bad_header)
{
	struct journal_record r = { .value = 5, .key = "abc", .key_len = 3 };
	struct journal_record out;
	uint8_t buf[64];
	const uint8_t *p;
	size_t n;

	n = journal_record_put(buf, &r);
	/* Key length 0 is refused. */
	buf[16] = buf[17] = 0;
	p = buf;
	ck_assert_int_eq(journal_record_next(&p, buf + n, &out), -1);
	ck_assert_ptr_eq(p, buf);
	/* So are nonzero flags. */
	n = journal_record_put(buf, &r);
	buf[19] = 1;
	p = buf;
	ck_assert_int_eq(journal_record_next(&p, buf + n, &out), -1);
	/* And a key length running past the end. */
	n = journal_record_put(buf, &r);
	buf[16] = 4;
	p = buf;
	ck_assert_int_eq(journal_record_next(&p, buf + n, &out), -1);
	/* An idempotency length running past the end. */
	n = journal_record_put(buf, &r);
	buf[18] = 1;
	p = buf;
	ck_assert_int_eq(journal_record_next(&p, buf + n, &out), -1);
}
END_TEST

/* --- frames --- */

static void
check_decodes_to(const uint8_t *frame, const struct frame_info *fi,
    const uint8_t *raw, size_t raw_len, uint32_t n)
{
	uint8_t *out = xmalloc(JOURNAL_MAX_RAW);

	ck_assert_uint_eq(fi->raw_len, raw_len);
	ck_assert_uint_eq(fi->nrecords, n);
	ck_assert_int_eq(journal_frame_decode(frame, fi, out), 0);
	ck_assert_mem_eq(out, raw, raw_len);
	free(out);
}

START_TEST(test_frame_one)
{
	struct journal_record r = { .value = INT64_MIN, .time_us = 12345,
	    .key = "orders:eu", .key_len = 9, .idem = "req-1", .idem_len = 5 };
	struct journal_record out;
	struct frame_info fi;
	uint8_t raw[256], frame[512], *dec = xmalloc(JOURNAL_MAX_RAW);
	const uint8_t *p;
	uint64_t lsn = 3 * SEG + JOURNAL_SEG_HDR;
	size_t raw_len, len;

	raw_len = journal_record_put(raw, &r);
	ck_assert_uint_eq(journal_frame_build(frame, 40, lsn, EPOCH, raw,
	    raw_len, 1), 0);
	len = journal_frame_build(frame, sizeof(frame), lsn, EPOCH, raw,
	    raw_len, 1);
	ck_assert_uint_gt(len, JOURNAL_FRAME_HDR);
	ck_assert_uint_le(len, journal_frame_bound(raw_len));
	ck_assert_uint_eq(len % JOURNAL_ALIGN, 0);
	ck_assert_int_eq(journal_frame_check(frame, len, lsn, EPOCH, &fi),
	    FRAME_OK);
	ck_assert_uint_eq(fi.lsn, lsn);
	ck_assert_uint_eq(fi.len, len);
	ck_assert_uint_eq(fi.flags, 0);
	ck_assert_uint_eq(fi.nrecords, 1);
	ck_assert_uint_eq(fi.raw_len, raw_len);
	ck_assert_uint_eq(len, (JOURNAL_FRAME_HDR + fi.payload_len + 7) & ~7u);
	/* The documented header fields. */
	ck_assert_uint_eq(frame[0] | frame[1] << 8 | frame[2] << 16 |
	    (uint32_t)frame[3] << 24, 0x46594c54);
	ck_assert_uint_eq(frame[4] | frame[5] << 8, JOURNAL_VERSION);
	ck_assert_mem_eq(frame + 32, EPOCH, 4);
	ck_assert_int_eq(journal_frame_decode(frame, &fi, dec), 0);
	p = dec;
	ck_assert_int_eq(journal_record_next(&p, dec + fi.raw_len, &out), 1);
	ck_assert_int_eq(out.value, INT64_MIN);
	ck_assert_uint_eq(out.time_us, 12345);
	ck_assert_mem_eq(out.key, "orders:eu", 9);
	ck_assert_mem_eq(out.idem, "req-1", 5);
	ck_assert_int_eq(journal_record_next(&p, dec + fi.raw_len, &out), 0);
	/* More room than the frame is fine. */
	ck_assert_int_eq(journal_frame_check(frame, SEG, lsn, EPOCH, &fi),
	    FRAME_OK);
	free(dec);
}
END_TEST

START_TEST(test_frame_many)
{
	uint8_t *raw = xmalloc(JOURNAL_MAX_RAW + 1);
	uint8_t *frame = xmalloc(journal_frame_bound(JOURNAL_MAX_RAW));
	struct frame_info fi;
	uint64_t lsn = SEG + JOURNAL_SEG_HDR + 8 * 1000;
	size_t raw_len, len;
	uint32_t n;

	/* Keys up to 2 KiB: a few hundred records fill the frame. */
	raw_len = make_records(raw, JOURNAL_MAX_RAW, 100000, 2048, 1234, &n);
	ck_assert_uint_ge(n, 200);
	ck_assert_uint_gt(raw_len, JOURNAL_MAX_RAW - 2048 - 300);
	len = journal_frame_build(frame, journal_frame_bound(JOURNAL_MAX_RAW),
	    lsn, EPOCH, raw, raw_len, n);
	ck_assert_uint_gt(len, JOURNAL_FRAME_HDR);
	ck_assert_int_eq(journal_frame_check(frame, len, lsn, EPOCH, &fi),
	    FRAME_OK);
	ck_assert_uint_eq(fi.len, len);
	check_decodes_to(frame, &fi, raw, raw_len, n);

	/* Exactly JOURNAL_MAX_RAW bytes of tiny records. */
	raw_len = make_records(raw, JOURNAL_MAX_RAW, 1000000, 1, 5, &n);
	ck_assert_uint_le(raw_len, JOURNAL_MAX_RAW);
	ck_assert_uint_gt(raw_len, JOURNAL_MAX_RAW - (JOURNAL_REC_HDR + 1 + 255));
	ck_assert_uint_gt(n, 3000);
	len = journal_frame_build(frame, journal_frame_bound(JOURNAL_MAX_RAW),
	    lsn, EPOCH, raw, raw_len, n);
	ck_assert_uint_gt(len, 0);
	ck_assert_int_eq(journal_frame_check(frame, len, lsn, EPOCH, &fi),
	    FRAME_OK);
	check_decodes_to(frame, &fi, raw, raw_len, n);

	/* A wrong record count is caught by decode. */
	len = journal_frame_build(frame, journal_frame_bound(JOURNAL_MAX_RAW),
	    lsn, EPOCH, raw, raw_len, n + 1);
	ck_assert_int_eq(journal_frame_check(frame, len, lsn, EPOCH, &fi),
	    FRAME_OK);
	ck_assert_int_eq(journal_frame_decode(frame, &fi, raw), -1);

	/* More than JOURNAL_MAX_RAW, or too little room: refused. */
	ck_assert_uint_eq(journal_frame_build(frame,
	    journal_frame_bound(JOURNAL_MAX_RAW + 1), lsn, EPOCH, raw,
	    JOURNAL_MAX_RAW + 1, 1), 0);
	ck_assert_uint_eq(journal_frame_build(frame,
	    journal_frame_bound(1000) - 1, lsn, EPOCH, raw, 1000, 1), 0);
	free(raw);
	free(frame);
}
END_TEST

START_TEST(test_frame_relocate)
{
	uint8_t *frame, raw[64 * 1024];
	struct frame_info fi;
	uint64_t a = SEG + JOURNAL_SEG_HDR, b = 7 * SEG + 4096;
	size_t len, raw_len;
	uint32_t n;

	raw_len = make_records(raw, sizeof(raw), 10, 24, 77, &n);
	len = small_frame(&frame, a, 10, 77);
	ck_assert_int_eq(journal_frame_check(frame, len, a, EPOCH, &fi),
	    FRAME_OK);
	journal_frame_relocate(frame, b);
	ck_assert_int_eq(journal_frame_check(frame, len, a, EPOCH, &fi),
	    FRAME_BAD);
	ck_assert_int_eq(journal_frame_check(frame, len, b, EPOCH, &fi),
	    FRAME_OK);
	ck_assert_uint_eq(fi.lsn, b);
	ck_assert_uint_eq(fi.len, len);
	check_decodes_to(frame, &fi, raw, raw_len, n);
	/* Back again: identical to a frame built there. */
	journal_frame_relocate(frame, a);
	ck_assert_int_eq(journal_frame_check(frame, len, a, EPOCH, &fi),
	    FRAME_OK);
	ck_assert_int_eq(journal_frame_check(frame, len, b, EPOCH, &fi),
	    FRAME_BAD);
	{
		uint8_t *again;

		ck_assert_uint_eq(small_frame(&again, a, 10, 77), len);
		ck_assert_mem_eq(again, frame, len);
		/*
		 * The worker's way: compressed before its place is known,
		 * not valid anywhere until placed, then the same bytes.
		 */
		memset(again, 0xa5, len);
		ck_assert_uint_eq(journal_frame_compress(again,
		    journal_frame_bound(raw_len), EPOCH, raw, raw_len, n), len);
		le_put64(again + 16, a);
		ck_assert_int_eq(journal_frame_check(again, len, a, EPOCH,
		    &fi), FRAME_BAD);
		journal_frame_relocate(again, a);
		ck_assert_mem_eq(again, frame, len);
		free(again);
	}
	free(frame);
}
END_TEST

START_TEST(test_frame_padding)
{
	uint8_t buf[8192];
	struct frame_info fi;
	uint64_t lsn = 2 * SEG - 4096;

	for (uint32_t len = JOURNAL_FRAME_HDR; len <= 4096; len += 8) {
		memset(buf, 0, sizeof(buf));
		journal_frame_build_padding(buf, lsn, len, EPOCH);
		ck_assert_int_eq(journal_frame_check(buf, 4096, lsn, EPOCH,
		    &fi), FRAME_PADDING);
		ck_assert_uint_eq(fi.len, len);
		ck_assert_uint_eq(fi.flags, JOURNAL_FLAG_PADDING);
		ck_assert_uint_eq(fi.payload_len, 0);
		ck_assert_uint_eq(fi.nrecords, 0);
		ck_assert_int_eq(journal_frame_check(buf, len, lsn, EPOCH, &fi),
		    FRAME_PADDING);
		ck_assert_int_eq(journal_frame_check(buf, len - 8, lsn, EPOCH,
		    &fi), FRAME_BAD);
		ck_assert_int_eq(journal_frame_check(buf, 4096, lsn + 8, EPOCH,
		    &fi), FRAME_BAD);
		ck_assert_int_eq(journal_frame_check(buf, 4096, lsn,
		    OTHER_EPOCH, &fi), FRAME_BAD);
	}
	/* A dead writer's bytes under the padding do not matter. */
	memset(buf, 0x5a, sizeof(buf));
	journal_frame_build_padding(buf, lsn, 4096, EPOCH);
	ck_assert_int_eq(journal_frame_check(buf, 4096, lsn, EPOCH, &fi),
	    FRAME_PADDING);
	ck_assert_uint_eq(fi.len, 4096);
}
END_TEST

START_TEST(test_frame_empty)
{
	uint8_t buf[256];
	struct frame_info fi;

	memset(buf, 0, sizeof(buf));
	ck_assert_int_eq(journal_frame_check(buf, sizeof(buf), SEG + 256, EPOCH,
	    &fi), FRAME_EMPTY);
	/* Fewer bytes than a header left in the segment: never a frame. */
	ck_assert_int_eq(journal_frame_check(buf, JOURNAL_FRAME_HDR - 8,
	    SEG + 256, EPOCH, &fi), FRAME_BAD);
	ck_assert_ptr_nonnull(fi.why);
}
END_TEST

/* The frames the cut and bit-flip tests run over. */
static size_t
test_frames(uint8_t **frames, size_t max, uint64_t lsn)
{
	size_t n = 0;
	int tail = 0;

	for (uint32_t recs = 1; n < max; recs += 3) {
		size_t len = small_frame(&frames[n], lsn, recs, 1000 + recs);
		struct frame_info fi;

		ck_assert_int_eq(journal_frame_check(frames[n], len, lsn, EPOCH,
		    &fi), FRAME_OK);
		/* Keep at least one with zero bytes after the payload. */
		if (len > JOURNAL_FRAME_HDR + fi.payload_len)
			tail = 1;
		n++;
		if (n == max && !tail) {
			free(frames[--n]);
		}
	}
	return n;
}

static size_t
frame_len(const uint8_t *f)
{
	return f[8] | f[9] << 8 | f[10] << 16 | (size_t)f[11] << 24;
}

START_TEST(test_frame_cut)
{
	uint8_t *frames[6], *buf;
	uint64_t lsn = 5 * SEG + 1024;
	struct frame_info fi;
	size_t nf = test_frames(frames, 6, lsn);

	for (size_t f = 0; f < nf; f++) {
		size_t len = frame_len(frames[f]);

		buf = xmalloc(len);
		for (size_t k = 0; k < len; k++) {
			enum frame_status st;

			memset(buf, 0, len);
			memcpy(buf, frames[f], k);
			st = journal_frame_check(buf, len, lsn, EPOCH, &fi);
			/*
			 * Only a cut in the zeros after the payload leaves the
			 * frame as it was.
			 */
			if (memcmp(buf, frames[f], len) != 0)
				ck_assert_msg(st != FRAME_OK && st !=
				    FRAME_PADDING, "frame %zu (len %zu) cut at "
				    "%zu: status %d", f, len, k, st);
			else
				ck_assert_uint_ge(k, JOURNAL_FRAME_HDR +
				    fi.payload_len);
			if (k == 0)
				ck_assert_int_eq(st, FRAME_EMPTY);
		}
		/* The first word published, nothing else. */
		memset(buf, 0, len);
		memcpy(buf, frames[f], 8);
		ck_assert_int_eq(journal_frame_check(buf, len, lsn, EPOCH, &fi),
		    FRAME_BAD);
		/* Everything but the first word. */
		memcpy(buf, frames[f], len);
		memset(buf, 0, 8);
		ck_assert_int_eq(journal_frame_check(buf, len, lsn, EPOCH, &fi),
		    FRAME_EMPTY);
		free(buf);
		free(frames[f]);
	}
	/* A padding frame cut short of its header. */
	buf = xmalloc(4096);
	for (size_t k = 0; k < JOURNAL_FRAME_HDR; k++) {
		uint8_t pad[JOURNAL_FRAME_HDR];

		journal_frame_build_padding(pad, lsn, 4096, EPOCH);
		memset(buf, 0, 4096);
		memcpy(buf, pad, k);
		ck_assert_int_ne(journal_frame_check(buf, 4096, lsn, EPOCH,
		    &fi), FRAME_PADDING);
		ck_assert_int_ne(journal_frame_check(buf, 4096, lsn, EPOCH,
		    &fi), FRAME_OK);
	}
	free(buf);
}
END_TEST

START_TEST(test_frame_bitflip)
{
	uint8_t *frames[4], *buf;
	uint64_t lsn = 9 * SEG + 2048;
	struct frame_info fi;
	size_t nf = test_frames(frames, 4, lsn);

	for (size_t f = 0; f < nf; f++) {
		size_t len = frame_len(frames[f]);

		/* Exactly len bytes: a length pointing beyond is caught. */
		buf = xmalloc(len);
		memcpy(buf, frames[f], len);
		for (size_t bit = 0; bit < len * 8; bit++) {
			enum frame_status st;

			buf[bit / 8] ^= 1 << (bit % 8);
			st = journal_frame_check(buf, len, lsn, EPOCH, &fi);
			ck_assert_msg(st == FRAME_BAD, "frame %zu (len %zu): bit %zu "
			    "flipped: status %d", f, len, bit, st);
			buf[bit / 8] ^= 1 << (bit % 8);
		}
		ck_assert_int_eq(journal_frame_check(buf, len, lsn, EPOCH, &fi),
		    FRAME_OK);
		free(buf);
		free(frames[f]);
	}
	/* Every bit of a padding frame's header, too. */
	{
		uint8_t pad[JOURNAL_FRAME_HDR];

		journal_frame_build_padding(pad, lsn, JOURNAL_FRAME_HDR, EPOCH);
		for (size_t bit = 0; bit < sizeof(pad) * 8; bit++) {
			enum frame_status st;

			pad[bit / 8] ^= 1 << (bit % 8);
			st = journal_frame_check(pad, sizeof(pad), lsn, EPOCH,
			    &fi);
			ck_assert_msg(st == FRAME_BAD, "padding: bit %zu "
			    "flipped: status %d", bit, st);
			pad[bit / 8] ^= 1 << (bit % 8);
		}
	}
}
END_TEST

START_TEST(test_frame_wrong_place)
{
	uint8_t *frame;
	struct frame_info fi;
	uint64_t lsn = 4 * SEG + 512;
	size_t len = small_frame(&frame, lsn, 5, 3);

	ck_assert_int_eq(journal_frame_check(frame, len, lsn, EPOCH, &fi),
	    FRAME_OK);
	ck_assert_int_eq(journal_frame_check(frame, len, lsn, OTHER_EPOCH,
	    &fi), FRAME_BAD);
	ck_assert_ptr_nonnull(fi.why);
	ck_assert_int_eq(journal_frame_check(frame, len, lsn + 8, EPOCH, &fi),
	    FRAME_BAD);
	ck_assert_int_eq(journal_frame_check(frame, len, lsn - 8, EPOCH, &fi),
	    FRAME_BAD);
	ck_assert_int_eq(journal_frame_check(frame, len, lsn + SEG, EPOCH,
	    &fi), FRAME_BAD);
	ck_assert_int_eq(journal_frame_check(frame, len, lsn ^ (UINT64_C(1) <<
	    40), EPOCH, &fi), FRAME_BAD);
	/* Less room than the frame. */
	for (size_t avail = 0; avail < len; avail++)
		ck_assert_int_eq(journal_frame_check(frame, avail, lsn, EPOCH,
		    &fi), FRAME_BAD);
	ck_assert_int_eq(journal_frame_check(frame, len, lsn, EPOCH, &fi),
	    FRAME_OK);
	free(frame);
}
END_TEST

/* --- LSN arithmetic --- */

START_TEST(test_lsn_normalize)
{
	const uint64_t S = SEG;

	ck_assert_uint_eq(journal_lsn_normalize(S, 0), JOURNAL_SEG_HDR);
	ck_assert_uint_eq(journal_lsn_normalize(S, 8), JOURNAL_SEG_HDR);
	ck_assert_uint_eq(journal_lsn_normalize(S, JOURNAL_SEG_HDR - 8),
	    JOURNAL_SEG_HDR);
	ck_assert_uint_eq(journal_lsn_normalize(S, JOURNAL_SEG_HDR),
	    JOURNAL_SEG_HDR);
	ck_assert_uint_eq(journal_lsn_normalize(S, 3 * S), 3 * S +
	    JOURNAL_SEG_HDR);
	ck_assert_uint_eq(journal_lsn_normalize(S, 3 * S + 100), 3 * S +
	    JOURNAL_SEG_HDR);
	ck_assert_uint_eq(journal_lsn_normalize(S, 3 * S + 4096), 3 * S + 4096);
	/* Room for exactly one header: stays. */
	ck_assert_uint_eq(journal_lsn_normalize(S, 4 * S - JOURNAL_FRAME_HDR),
	    4 * S - JOURNAL_FRAME_HDR);
	ck_assert_uint_eq(journal_lsn_normalize(S, 4 * S - JOURNAL_FRAME_HDR +
	    8), 4 * S + JOURNAL_SEG_HDR);
	ck_assert_uint_eq(journal_lsn_normalize(S, 4 * S - 8), 4 * S +
	    JOURNAL_SEG_HDR);
	ck_assert_uint_eq(journal_lsn_normalize(S, 4 * S - 1), 4 * S +
	    JOURNAL_SEG_HDR);
	/* Exactly at the end: the next segment's first frame. */
	ck_assert_uint_eq(journal_lsn_normalize(S, 4 * S), 4 * S +
	    JOURNAL_SEG_HDR);
	/* A segment size that is not a power of two. */
	ck_assert_uint_eq(journal_lsn_normalize(1000000, 2000000 - 16),
	    3000000 - 1000000 + JOURNAL_SEG_HDR);
	ck_assert_uint_eq(journal_lsn_normalize(1000000, 1999000), 1999000);
}
END_TEST

START_TEST(test_reserve_sequence)
{
	const uint64_t S = SEG;
	uint64_t insert = S + JOURNAL_SEG_HDR, lsn, pad_lsn, prev, intent[2];
	uint32_t pad_len;

	/* Contiguous and aligned. */
	prev = insert;
	for (uint32_t len = 40; len <= 4000; len += 8) {
		lsn = journal_reserve(&insert, S, len, &pad_lsn, &pad_len,
		    intent);
		ck_assert_uint_eq(intent[0], lsn);
		ck_assert_uint_eq(intent[1], lsn + len);
		ck_assert_uint_eq(lsn, prev);
		ck_assert_uint_eq(lsn % JOURNAL_ALIGN, 0);
		ck_assert_uint_eq(pad_len, 0);
		ck_assert_uint_eq(pad_lsn, lsn);
		ck_assert_uint_eq(insert, lsn + len);
		prev = insert;
	}

	/*
	 * Does not fit: the tail is padded, the frame moves on.  The span
	 * noted for whoever finds the caller dead is the whole of it.
	 */
	insert = 2 * S - 1000;
	lsn = journal_reserve(&insert, S, 2000, &pad_lsn, &pad_len, intent);
	ck_assert_uint_eq(intent[0], pad_lsn);
	ck_assert_uint_eq(intent[1], lsn + 2000);
	ck_assert_uint_eq(lsn, 2 * S + JOURNAL_SEG_HDR);
	ck_assert_uint_eq(pad_lsn, 2 * S - 1000);
	ck_assert_uint_eq(pad_len, 1000);
	ck_assert_uint_eq(insert, 2 * S + JOURNAL_SEG_HDR + 2000);

	/* A tail of exactly one frame header is padded. */
	insert = 2 * S - JOURNAL_FRAME_HDR;
	lsn = journal_reserve(&insert, S, 48, &pad_lsn, &pad_len, NULL);
	ck_assert_uint_eq(lsn, 2 * S + JOURNAL_SEG_HDR);
	ck_assert_uint_eq(pad_lsn, 2 * S - JOURNAL_FRAME_HDR);
	ck_assert_uint_eq(pad_len, JOURNAL_FRAME_HDR);
	/* But the header itself fits there. */
	insert = 2 * S - JOURNAL_FRAME_HDR;
	lsn = journal_reserve(&insert, S, JOURNAL_FRAME_HDR, &pad_lsn,
	    &pad_len, NULL);
	ck_assert_uint_eq(lsn, 2 * S - JOURNAL_FRAME_HDR);
	ck_assert_uint_eq(pad_len, 0);
	ck_assert_uint_eq(insert, 2 * S);

	/* A tail shorter than a frame header: nothing to pad. */
	insert = 2 * S - 32;
	lsn = journal_reserve(&insert, S, 64, &pad_lsn, &pad_len, NULL);
	ck_assert_uint_eq(lsn, 2 * S + JOURNAL_SEG_HDR);
	ck_assert_uint_eq(pad_lsn, 2 * S - 32);
	ck_assert_uint_eq(pad_len, 0);
	ck_assert_uint_eq(insert, 2 * S + JOURNAL_SEG_HDR + 64);

	/* An exact fit, then the next one starts the next segment. */
	insert = 3 * S - 64;
	lsn = journal_reserve(&insert, S, 64, &pad_lsn, &pad_len, NULL);
	ck_assert_uint_eq(lsn, 3 * S - 64);
	ck_assert_uint_eq(pad_len, 0);
	ck_assert_uint_eq(insert, 3 * S);
	lsn = journal_reserve(&insert, S, 64, &pad_lsn, &pad_len, NULL);
	ck_assert_uint_eq(lsn, 3 * S + JOURNAL_SEG_HDR);
	ck_assert_uint_eq(pad_len, 0);
	ck_assert_uint_eq(pad_lsn, 3 * S);

	/* A frame filling a whole segment. */
	insert = 5 * S + JOURNAL_SEG_HDR;
	lsn = journal_reserve(&insert, S, S - JOURNAL_SEG_HDR, &pad_lsn,
	    &pad_len, NULL);
	ck_assert_uint_eq(lsn, 5 * S + JOURNAL_SEG_HDR);
	ck_assert_uint_eq(insert, 6 * S);
}
END_TEST

#define RES_CHILDREN	4
#define RES_EACH	20000
#define RES_SEG		(64 * 1024)

struct res {
	uint64_t	pad_lsn;
	uint64_t	lsn;
	uint32_t	pad_len;
	uint32_t	len;
};

static int
cmp_res(const void *a, const void *b)
{
	const struct res *x = a, *y = b;

	return x->pad_lsn < y->pad_lsn ? -1 : x->pad_lsn > y->pad_lsn;
}

START_TEST(test_reserve_concurrent)
{
	const size_t n = RES_CHILDREN * RES_EACH;
	size_t size = sizeof(uint64_t) + n * sizeof(struct res);
	uint8_t *mem;
	uint64_t *insert, start = 3 * RES_SEG + JOURNAL_SEG_HDR, pos;
	struct res *r;
	pid_t pids[RES_CHILDREN];
	size_t pads = 0;

	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED |
	    MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(mem, MAP_FAILED);
	insert = (uint64_t *)(void *)mem;
	r = (struct res *)(void *)(mem + sizeof(uint64_t));
	*insert = start;
	for (int c = 0; c < RES_CHILDREN; c++) {
		/* No ck_ call in the child: it shares the test's channel. */
		if ((pids[c] = fork()) == -1)
			ck_abort_msg("fork: %s", strerror(errno));
		if (pids[c] == 0) {
			uint64_t s = 0x9e3779b97f4a7c15ULL * (c + 1);

			for (size_t i = 0; i < RES_EACH; i++) {
				struct res *x = &r[c * RES_EACH + i];

				x->len = 40 + 8 * (rnd(&s) % 500);
				x->lsn = journal_reserve(insert, RES_SEG,
				    x->len, &x->pad_lsn, &x->pad_len, NULL);
			}
			_exit(0);
		}
	}
	for (int c = 0; c < RES_CHILDREN; c++) {
		int status;

		ck_assert_int_eq(waitpid(pids[c], &status, 0), pids[c]);
		ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	qsort(r, n, sizeof(*r), cmp_res);
	pos = start;
	for (size_t i = 0; i < n; i++) {
		uint64_t base = journal_seg_base(RES_SEG, r[i].lsn);

		/* Each reservation starts where the one before ended. */
		ck_assert_uint_eq(r[i].pad_lsn, pos);
		ck_assert_uint_eq(r[i].lsn % JOURNAL_ALIGN, 0);
		ck_assert_uint_ge(r[i].lsn, base + JOURNAL_SEG_HDR);
		ck_assert_uint_le(r[i].lsn + r[i].len, base + RES_SEG);
		if (r[i].pad_len) {
			pads++;
			ck_assert_uint_ge(r[i].pad_len, JOURNAL_FRAME_HDR);
			ck_assert_uint_eq(r[i].pad_lsn + r[i].pad_len, base);
		} else if (r[i].lsn != r[i].pad_lsn) {
			/* Only a header area or a short tail is skipped. */
			ck_assert_uint_eq(r[i].lsn, base + JOURNAL_SEG_HDR);
			ck_assert_uint_le(r[i].pad_lsn, base);
			ck_assert_uint_lt(base - r[i].pad_lsn,
			    JOURNAL_FRAME_HDR);
		}
		pos = r[i].lsn + r[i].len;
	}
	ck_assert_uint_eq(*insert, pos);
	/* The run crossed many segments. */
	ck_assert_uint_gt(pads, 100);
	munmap(mem, size);
}
END_TEST

/* --- segment files --- */

/*
 * Each test works in its own directory under one per run; the parent
 * removes the lot at the end, even after a test that failed half way.
 */
static char basedir[64];
static char tmpdir[128];

static void
base_setup(void)
{
	snprintf(basedir, sizeof(basedir), "/tmp/check_journal.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(basedir));
}

static void
rm_tree(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	char sub[512];

	if (d != NULL) {
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 ||
			    strcmp(de->d_name, "..") == 0)
				continue;
			snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
			if (de->d_type == DT_DIR)
				rm_tree(sub);
			else
				unlink(sub);
		}
		closedir(d);
	}
	rmdir(path);
}

static void
base_teardown(void)
{
	rm_tree(basedir);
}

static void
dir_setup(void)
{
	static int n;

	snprintf(tmpdir, sizeof(tmpdir), "%s/%ld.%d", basedir, (long)getpid(),
	    n++);
	ck_assert_int_eq(mkdir(tmpdir, 0700), 0);
}

static void
dir_teardown(void)
{
	DIR *d = opendir(tmpdir);
	struct dirent *de;
	char path[512];

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", tmpdir, de->d_name);
		unlink(path);
	}
	closedir(d);
	rmdir(tmpdir);
}

static int
dir_count(void)
{
	DIR *d = opendir(tmpdir);
	struct dirent *de;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static int
seg_exists(uint64_t base)
{
	char name[32], path[512];
	struct stat st;

	journal_seg_name(name, sizeof(name), base);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	return stat(path, &st) == 0;
}

START_TEST(test_seg_create)
{
	struct journal j;
	char name[32], path[512], node[JOURNAL_NODE_LEN], err[256];
	uint8_t epoch[JOURNAL_EPOCH_LEN], *p;
	uint64_t *bases = NULL, seg_size = 0;
	struct stat st;

	journal_seg_name(name, sizeof(name), 0x1A2B3C00);
	ck_assert_str_eq(name, "000000001A2B3C00.seg");

	ck_assert_int_eq(journal_open(&j, tmpdir, SEG, EPOCH, "node-a"), 0);
	ck_assert_ptr_null(journal_at(&j, 3 * SEG + 300, 0));
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_int_eq(dir_count(), 0);
	p = journal_at(&j, 3 * SEG + 300, 1);
	ck_assert_ptr_nonnull(p);
	/* Idempotent: the same mapping, the same file. */
	ck_assert_ptr_eq(journal_at(&j, 3 * SEG + 300, 1), p);
	ck_assert_ptr_eq(journal_at(&j, 3 * SEG, 0), p - 300);
	ck_assert_mem_eq(p - 300, "TALLYJNL", 8);
	journal_seg_name(name, sizeof(name), 3 * SEG);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_size, SEG);
	ck_assert_int_eq(dir_count(), 1);
	/* The header's CRC is in its last four bytes. */
	{
		const uint8_t *h = p - 300;
		uint32_t crc = h[252] | h[253] << 8 | h[254] << 16 |
		    (uint32_t)h[255] << 24;

		ck_assert_uint_eq(crc, crc32(0, h, 252));
	}
	/* Frames start zeroed. */
	for (size_t i = JOURNAL_SEG_HDR; i < SEG; i += 4096)
		ck_assert_uint_eq(p[i - 300], 0);

	ck_assert_int_eq(journal_scan_dir(tmpdir, &bases, epoch, node,
	    &seg_size, err, sizeof(err)), 1);
	ck_assert_uint_eq(bases[0], 3 * SEG);
	ck_assert_mem_eq(epoch, EPOCH, JOURNAL_EPOCH_LEN);
	ck_assert_str_eq(node, "node-a");
	ck_assert_uint_eq(seg_size, SEG);
	free(bases);

	/* A second segment; the scan reads the first. */
	ck_assert_ptr_nonnull(journal_at(&j, 5 * SEG + JOURNAL_SEG_HDR, 1));
	ck_assert_int_eq(journal_scan_dir(tmpdir, &bases, epoch, node,
	    &seg_size, err, sizeof(err)), 2);
	ck_assert_uint_eq(bases[0], 3 * SEG);
	ck_assert_uint_eq(bases[1], 5 * SEG);
	free(bases);
	journal_close(&j);
}
END_TEST

START_TEST(test_seg_shared)
{
	struct journal a, b;
	struct frame_info fi;
	uint8_t *frame, *pa, *pb;
	uint64_t lsn = SEG + JOURNAL_SEG_HDR + 64;
	size_t len = small_frame(&frame, lsn, 12, 8);

	ck_assert_int_eq(journal_open(&a, tmpdir, SEG, EPOCH, "n"), 0);
	ck_assert_int_eq(journal_open(&b, tmpdir, SEG, EPOCH, "n"), 0);
	ck_assert_ptr_nonnull(pa = journal_at(&a, lsn, 1));
	ck_assert_ptr_nonnull(pb = journal_at(&b, lsn, 0));
	ck_assert_ptr_ne(pa, pb);
	ck_assert_int_eq(journal_frame_check(pb, SEG - lsn % SEG, lsn, EPOCH,
	    &fi), FRAME_EMPTY);
	journal_frame_publish(pa, frame, len);
	ck_assert_mem_eq(pa, frame, len);
	ck_assert_int_eq(journal_frame_check(pb, SEG - lsn % SEG, lsn, EPOCH,
	    &fi), FRAME_OK);
	ck_assert_uint_eq(fi.len, len);
	ck_assert_mem_eq(pb, frame, len);
	ck_assert_int_eq(journal_sync(&a, lsn, lsn + len), 0);
	ck_assert_int_eq(journal_sync(&b, SEG, 2 * SEG), 0);
	ck_assert_int_eq(journal_sync(&a, lsn, lsn), 0);
	/* A range reaching a segment that does not exist fails. */
	ck_assert_int_eq(journal_sync(&a, lsn, 2 * SEG + 1), -1);
	journal_close(&a);

	/* A fresh open sees it from the file. */
	ck_assert_int_eq(journal_open(&a, tmpdir, SEG, EPOCH, "n"), 0);
	ck_assert_ptr_nonnull(pa = journal_at(&a, lsn, 0));
	ck_assert_int_eq(journal_frame_check(pa, SEG - lsn % SEG, lsn, EPOCH,
	    &fi), FRAME_OK);
	journal_close(&a);
	journal_close(&b);
	free(frame);
}
END_TEST

/*
 * Written through the file (_i = 0, sync = group) or stored through the
 * mapping (_i = 1, sync = interval), a frame shows in every mapping and
 * in the file, first word last.
 */
START_TEST(test_frame_write)
{
	struct journal a, b;
	struct frame_info fi;
	uint8_t *frame, *pb, *back;
	uint64_t lsn = 2 * SEG + JOURNAL_SEG_HDR + 128;
	size_t len = small_frame(&frame, lsn, 12, 8);
	char name[32], path[512];
	int fd;

	ck_assert_int_eq(journal_open(&a, tmpdir, SEG, EPOCH, "n"), 0);
	ck_assert_int_eq(journal_open(&b, tmpdir, SEG, EPOCH, "n"), 0);
	a.store = _i;
	/* The segment is created on the way. */
	ck_assert_int_eq(journal_frame_write_body(&a, lsn, frame, len), 0);
	ck_assert_ptr_nonnull(pb = journal_at(&b, lsn, 0));
	ck_assert_int_eq(journal_frame_check(pb, SEG - lsn % SEG, lsn, EPOCH,
	    &fi), FRAME_EMPTY);
	ck_assert_mem_eq(pb + 8, frame + 8, len - 8);
	ck_assert_int_eq(journal_frame_write_head(&a, lsn, frame), 0);
	ck_assert_int_eq(journal_frame_check(pb, SEG - lsn % SEG, lsn, EPOCH,
	    &fi), FRAME_OK);
	ck_assert_uint_eq(fi.len, len);
	ck_assert_mem_eq(pb, frame, len);
	ck_assert_int_eq(journal_sync(&a, lsn, lsn + len), 0);
	/* What fdatasync makes durable is the file's: the frame is in it. */
	journal_seg_name(name, sizeof(name), lsn - lsn % SEG);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	ck_assert_int_ge(fd = open(path, O_RDONLY), 0);
	ck_assert_ptr_nonnull(back = malloc(len));
	ck_assert_int_eq(pread(fd, back, len, (off_t)(lsn % SEG)),
	    (ssize_t)len);
	ck_assert_mem_eq(back, frame, len);
	close(fd);
	free(back);
	journal_close(&a);
	journal_close(&b);
	free(frame);
}
END_TEST

START_TEST(test_seg_many_maps)
{
	struct journal j;
	uint8_t *p;

	/* More segments than the map cache: each keeps its own bytes. */
	ck_assert_int_eq(journal_open(&j, tmpdir, SEG, EPOCH, "n"), 0);
	for (uint64_t k = 0; k < 3 * JOURNAL_MAP_CACHE; k++) {
		ck_assert_ptr_nonnull(p = journal_at(&j, k * SEG + 1024, 1));
		p[0] = 0x40 + k;
	}
	for (uint64_t k = 0; k < 3 * JOURNAL_MAP_CACHE; k++) {
		ck_assert_ptr_nonnull(p = journal_at(&j, k * SEG + 1024, 0));
		ck_assert_uint_eq(p[0], 0x40 + k);
	}
	ck_assert_int_eq(journal_sync(&j, 0, 3 * JOURNAL_MAP_CACHE * SEG), 0);
	journal_close(&j);
}
END_TEST

START_TEST(test_seg_recycle)
{
	struct journal j;

	ck_assert_int_eq(journal_open(&j, tmpdir, SEG, EPOCH, "n"), 0);
	for (uint64_t k = 2; k < 7; k++)
		ck_assert_ptr_nonnull(journal_at(&j, k * SEG + 512, 1));
	ck_assert_int_eq(dir_count(), 5);
	/* Nothing wholly below. */
	ck_assert_int_eq(journal_recycle(&j, 3 * SEG - 1), 0);
	ck_assert_int_eq(dir_count(), 5);
	/* Segment 2 ends exactly at 3S; segment 3 not yet. */
	ck_assert_int_eq(journal_recycle(&j, 3 * SEG), 1);
	ck_assert(!seg_exists(2 * SEG));
	ck_assert(seg_exists(3 * SEG));
	ck_assert_int_eq(journal_recycle(&j, 5 * SEG + 100), 2);
	ck_assert(!seg_exists(3 * SEG));
	ck_assert(!seg_exists(4 * SEG));
	ck_assert(seg_exists(5 * SEG));
	ck_assert(seg_exists(6 * SEG));
	/* Removed segments are no longer reachable through the cache. */
	ck_assert_ptr_null(journal_at(&j, 3 * SEG + 512, 0));
	/* Never the last one, however far the LSN. */
	ck_assert_int_eq(journal_recycle(&j, UINT64_MAX), 1);
	ck_assert(!seg_exists(5 * SEG));
	ck_assert(seg_exists(6 * SEG));
	ck_assert_int_eq(journal_recycle(&j, UINT64_MAX), 0);
	ck_assert_int_eq(dir_count(), 1);
	/* What remains still works. */
	ck_assert_ptr_nonnull(journal_at(&j, 6 * SEG + 512, 0));
	journal_close(&j);
}
END_TEST

/* The permissions /proc/self/maps gives the mapping at p: "rw-s". */
static void
map_perms(const void *p, char perms[5])
{
	FILE *f;
	char line[512];
	unsigned long lo, hi, a = (unsigned long)p;

	strcpy(perms, "?");
	ck_assert_ptr_nonnull(f = fopen("/proc/self/maps", "r"));
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) == 3 &&
		    a >= lo && a < hi)
			break;
	fclose(f);
}

START_TEST(test_seg_readonly)
{
	struct journal w, r;
	uint8_t *p;
	const uint8_t *q;
	char perms[5];

	ck_assert_int_eq(journal_open(&w, tmpdir, SEG, EPOCH, "n"), 0);
	for (uint64_t k = 2; k < 4; k++) {
		ck_assert_ptr_nonnull(p = journal_at(&w, k * SEG + 512, 1));
		p[0] = 0x40 + k;
	}
	ck_assert_int_eq(w.readonly, 0);
	map_perms(p, perms);
	ck_assert_str_eq(perms, "rw-s");
	journal_close(&w);

	ck_assert_int_eq(journal_open_readonly(&r, tmpdir, SEG, EPOCH, "n"), 0);
	for (uint64_t k = 2; k < 4; k++) {
		ck_assert_ptr_nonnull(q = journal_at(&r, k * SEG + 512, 0));
		ck_assert_uint_eq(q[0], 0x40 + k);
		ck_assert_mem_eq(q - 512, "TALLYJNL", 8);
	}
	/* Opened and mapped for reading only, whoever runs this. */
	map_perms(q, perms);
	ck_assert_str_eq(perms, "r--s");
	for (int i = 0; i < JOURNAL_MAP_CACHE; i++)
		if (r.maps[i].fd != -1)
			ck_assert_int_eq(fcntl(r.maps[i].fd, F_GETFL) &
			    O_ACCMODE, O_RDONLY);
	/* Nothing is made, written or removed, even where it exists. */
	ck_assert_ptr_null(journal_at(&r, 5 * SEG + 512, 1));
	ck_assert_int_eq(errno, EROFS);
	ck_assert_ptr_null(journal_at(&r, 2 * SEG + 512, 1));
	ck_assert_int_eq(errno, EROFS);
	ck_assert_int_eq(journal_pad(&r, 3 * SEG + 512, 3 * SEG + 1024), -1);
	ck_assert_int_eq(errno, EROFS);
	ck_assert_int_eq(journal_recycle(&r, UINT64_MAX), -1);
	ck_assert_int_eq(errno, EROFS);
	ck_assert_int_eq(dir_count(), 2);
	journal_close(&r);
}
END_TEST

static void
rewrite_header(uint64_t base, size_t off, const void *bytes, size_t n,
    int fix_crc)
{
	char name[32], path[512];
	uint8_t h[JOURNAL_SEG_HDR];
	int fd;

	journal_seg_name(name, sizeof(name), base);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	ck_assert_int_ne(fd = open(path, O_RDWR), -1);
	ck_assert_int_eq(pread(fd, h, sizeof(h), 0), sizeof(h));
	memcpy(h + off, bytes, n);
	if (fix_crc) {
		uint32_t crc = crc32(0, h, 252);

		for (int i = 0; i < 4; i++)
			h[252 + i] = crc >> (8 * i);
	}
	ck_assert_int_eq(pwrite(fd, h, sizeof(h), 0), sizeof(h));
	close(fd);
}

static int
scan(char *err, size_t errlen)
{
	uint8_t epoch[JOURNAL_EPOCH_LEN];
	char node[JOURNAL_NODE_LEN];
	uint64_t *bases = (uint64_t *)1, seg_size = 0;
	int n;

	err[0] = '\0';
	n = journal_scan_dir(tmpdir, &bases, epoch, node, &seg_size, err,
	    errlen);
	if (n > 0)
		free(bases);
	return n;
}

START_TEST(test_seg_scan)
{
	struct journal j;
	char err[512], path[512];
	uint8_t v2[4] = { 2, 0, 0, 0 }, x = 'X';
	int fd;

	/* Empty, or only other files: no journal. */
	ck_assert_int_eq(scan(err, sizeof(err)), 0);
	snprintf(path, sizeof(path), "%s/notes.txt", tmpdir);
	ck_assert_int_ne(fd = open(path, O_CREAT | O_WRONLY, 0600), -1);
	close(fd);
	snprintf(path, sizeof(path), "%s/00000000000000zz.seg", tmpdir);
	ck_assert_int_ne(fd = open(path, O_CREAT | O_WRONLY, 0600), -1);
	close(fd);
	ck_assert_int_eq(scan(err, sizeof(err)), 0);

	ck_assert_int_eq(journal_open(&j, tmpdir, SEG, EPOCH, "n"), 0);
	ck_assert_ptr_nonnull(journal_at(&j, SEG + 300, 1));
	journal_close(&j);
	ck_assert_int_eq(scan(err, sizeof(err)), 1);

	/* A byte of the node name changed: the CRC catches it. */
	rewrite_header(SEG, 50, &x, 1, 0);
	ck_assert_int_eq(scan(err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "corrupt"));
	/* With its CRC fixed up, it is a valid header again. */
	rewrite_header(SEG, 50, &x, 1, 1);
	ck_assert_int_eq(scan(err, sizeof(err)), 1);
	/* A base that does not match the file name. */
	{
		uint8_t b[8] = { 0, 0, 0x20, 0, 0, 0, 0, 0 };

		rewrite_header(SEG, 16, b, 8, 1);
		ck_assert_int_eq(scan(err, sizeof(err)), -1);
		b[2] = 0x10;
		rewrite_header(SEG, 16, b, 8, 1);
		ck_assert_int_eq(scan(err, sizeof(err)), 1);
	}
	/* Bad magic. */
	rewrite_header(SEG, 0, "TALLYJNX", 8, 1);
	ck_assert_int_eq(scan(err, sizeof(err)), -1);
	ck_assert_str_ne(err, "");
	rewrite_header(SEG, 0, "TALLYJNL", 8, 1);
	ck_assert_int_eq(scan(err, sizeof(err)), 1);
	/* Another version, with a good CRC: refuse to run. */
	rewrite_header(SEG, 8, v2, 4, 1);
	ck_assert_int_eq(scan(err, sizeof(err)), -2);
	ck_assert_ptr_nonnull(strstr(err, "version"));

	/* An unreadable directory. */
	{
		uint8_t epoch[JOURNAL_EPOCH_LEN];
		char node[JOURNAL_NODE_LEN];
		uint64_t *bases, seg_size;

		err[0] = '\0';
		ck_assert_int_eq(journal_scan_dir("/nonexistent/journal",
		    &bases, epoch, node, &seg_size, err, sizeof(err)), -1);
		ck_assert_str_ne(err, "");
	}
}
END_TEST

START_TEST(test_seg_short)
{
	struct journal j;
	char name[32], path[512];
	int fd;

	journal_seg_name(name, sizeof(name), 2 * SEG);
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	ck_assert_int_ne(fd = open(path, O_CREAT | O_RDWR, 0600), -1);
	ck_assert_int_eq(ftruncate(fd, SEG / 2), 0);
	close(fd);
	ck_assert_int_eq(journal_open(&j, tmpdir, SEG, EPOCH, "n"), 0);
	errno = 0;
	ck_assert_ptr_null(journal_at(&j, 2 * SEG + 512, 0));
	ck_assert_int_ne(errno, 0);
	ck_assert_ptr_null(journal_at(&j, 2 * SEG + 512, 1));
	/* Left as it was, not grown behind our back. */
	{
		struct stat st;

		ck_assert_int_eq(stat(path, &st), 0);
		ck_assert_int_eq(st.st_size, SEG / 2);
	}
	/* Empty, too. */
	ck_assert_int_ne(fd = open(path, O_TRUNC | O_RDWR), -1);
	close(fd);
	ck_assert_ptr_null(journal_at(&j, 2 * SEG + 512, 1));
	/* Other segments are unaffected. */
	ck_assert_ptr_nonnull(journal_at(&j, 3 * SEG + 512, 1));
	journal_close(&j);
}
END_TEST

#define CR_CHILDREN	4
#define CR_SEGS		12
#define CR_SEG		(UINT64_C(4) << 20)

/*
 * Several processes reach each new segment at the same moment, as workers
 * and the syncer do: every one must get the segment, and no frame written
 * into it by the first may be wiped out by a later creator.
 */
START_TEST(test_seg_create_race)
{
	struct journal j;
	struct frame_info fi;
	pid_t pids[CR_CHILDREN];
	uint32_t *go;

	go = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED |
	    MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(go, MAP_FAILED);
	for (int c = 0; c < CR_CHILDREN; c++) {
		if ((pids[c] = fork()) == -1)
			ck_abort_msg("fork: %s", strerror(errno));
		if (pids[c] == 0) {
			struct journal cj;
			int bad = 0;

			if (journal_open(&cj, tmpdir, CR_SEG, EPOCH, "n") == -1)
				_exit(2);
			for (uint64_t k = 0; k < CR_SEGS; k++) {
				uint64_t lsn = (k + 1) * CR_SEG - 4096 -
				    c * 4096;
				uint8_t *frame, *at;
				size_t len;

				/* Start together. */
				__atomic_add_fetch(go, 1, __ATOMIC_ACQ_REL);
				while (__atomic_load_n(go, __ATOMIC_ACQUIRE) <
				    (k + 1) * CR_CHILDREN)
					;
				/* Arrive one after another, while it is made. */
				usleep(c * (300 + 200 * (k % 4)));
				if ((at = journal_at(&cj, lsn, 1)) == NULL) {
					bad = 3;
					continue;
				}
				len = small_frame(&frame, lsn, 1 + c, k);
				journal_frame_publish(at, frame, len);
				free(frame);
			}
			journal_close(&cj);
			_exit(bad);
		}
	}
	for (int c = 0; c < CR_CHILDREN; c++) {
		int status;

		ck_assert_int_eq(waitpid(pids[c], &status, 0), pids[c]);
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		    "child %d: status %#x", c, status);
	}
	ck_assert_int_eq(dir_count(), CR_SEGS);
	ck_assert_int_eq(journal_open(&j, tmpdir, CR_SEG, EPOCH, "n"), 0);
	for (uint64_t k = 0; k < CR_SEGS; k++)
		for (int c = 0; c < CR_CHILDREN; c++) {
			uint64_t lsn = (k + 1) * CR_SEG - 4096 - c * 4096;
			uint8_t *at = journal_at(&j, lsn, 0);

			ck_assert_ptr_nonnull(at);
			ck_assert_msg(journal_frame_check(at, CR_SEG - lsn %
			    CR_SEG, lsn, EPOCH, &fi) == FRAME_OK,
			    "segment %llu: frame of child %d lost",
			    (unsigned long long)k, c);
			ck_assert_uint_eq(fi.nrecords, 1 + c);
		}
	journal_close(&j);
	munmap(go, 4096);
}
END_TEST

static Suite *
journal_suite(void)
{
	Suite *s = suite_create("journal");
	TCase *tc;

	tc = tcase_create("records");
	tcase_add_test(tc, test_record_roundtrip);
	tcase_add_test(tc, test_record_layout);
	tcase_add_test(tc, test_record_truncated);
	tcase_add_test(tc, test_record_bad_header);
	suite_add_tcase(s, tc);

	tc = tcase_create("frames");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_frame_one);
	tcase_add_test(tc, test_frame_many);
	tcase_add_test(tc, test_frame_relocate);
	tcase_add_test(tc, test_frame_padding);
	tcase_add_test(tc, test_frame_empty);
	tcase_add_test(tc, test_frame_cut);
	tcase_add_test(tc, test_frame_bitflip);
	tcase_add_test(tc, test_frame_wrong_place);
	suite_add_tcase(s, tc);

	tc = tcase_create("lsn");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_lsn_normalize);
	tcase_add_test(tc, test_reserve_sequence);
	tcase_add_test(tc, test_reserve_concurrent);
	suite_add_tcase(s, tc);

	tc = tcase_create("segments");
	tcase_set_timeout(tc, 60);
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
	tcase_add_test(tc, test_seg_create);
	tcase_add_test(tc, test_seg_shared);
	tcase_add_loop_test(tc, test_frame_write, 0, 2);
	tcase_add_test(tc, test_seg_many_maps);
	tcase_add_test(tc, test_seg_recycle);
	tcase_add_test(tc, test_seg_readonly);
	tcase_add_test(tc, test_seg_scan);
	tcase_add_test(tc, test_seg_short);
	tcase_add_test(tc, test_seg_create_race);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(journal_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
