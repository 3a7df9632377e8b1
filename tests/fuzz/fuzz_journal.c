/*
 * Fuzz target for the journal's frame and record codecs.  The first byte
 * of the input picks the mode:
 *
 *	even: the rest is a region of a segment.  Every 8-byte boundary is
 *	      checked as a frame (LSN = offset, avail = bytes to the end), and
 *	      the records of every frame that checks OK are decoded and
 *	      walked: whatever the bytes, nothing may read outside the region
 *	      or the decode buffer.
 *	odd:  the rest describes records; they are packed into a frame with
 *	      journal_record_put() and journal_frame_build(), which must then
 *	      check OK and decode back to the same records, also after a
 *	      relocation, and never check OK at another LSN.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "journal.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define MAXREC	512

static const uint8_t epoch[JOURNAL_EPOCH_LEN] = {
	'f', 'u', 'z', 'z', 'e', 'p', 'o', 'c', 'h', '0', '1', '2', '3',
	'4', '5', '6'
};

static uint8_t	raw[JOURNAL_MAX_RAW];

/* Walk decoded records; each must lie inside [raw, end). */
static uint32_t
walk_records(const uint8_t *end)
{
	const uint8_t *p = raw;
	struct journal_record r;
	uint32_t n = 0;
	int rc;

	while ((rc = journal_record_next(&p, end, &r)) == 1) {
		if (r.key_len == 0 || (const uint8_t *)r.key < raw ||
		    (const uint8_t *)r.key + r.key_len > end)
			abort();
		if (r.idem != NULL && ((const uint8_t *)r.idem < raw ||
		    (const uint8_t *)r.idem + r.idem_len > end))
			abort();
		if (p > end)
			abort();
		n++;
	}
	return n;
}

static void
scan(const uint8_t *data, size_t size)
{
	struct frame_info fi;
	enum frame_status st;
	uint8_t *buf;

	/* Exactly size bytes, 8-aligned as a mapping is. */
	if ((buf = malloc(size ? size : 1)) == NULL)
		return;
	memcpy(buf, data, size);
	for (size_t off = 0; off + 8 <= size; off += JOURNAL_ALIGN) {
		st = journal_frame_check(buf + off, size - off, off, epoch, &fi);
		if (st == FRAME_BAD && fi.why == NULL)
			abort();
		if (st != FRAME_OK && st != FRAME_PADDING)
			continue;
		if (fi.len < JOURNAL_FRAME_HDR || fi.len > size - off ||
		    fi.len % JOURNAL_ALIGN)
			abort();
		if (st == FRAME_PADDING)
			continue;
		if (journal_frame_decode(buf + off, &fi, raw) == 0 &&
		    walk_records(raw + fi.raw_len) != fi.nrecords)
			abort();
	}
	free(buf);
}

struct rec {
	int64_t		value;
	uint64_t	time_us;
	const uint8_t	*key;
	uint16_t	key_len;
	const uint8_t	*idem;
	uint8_t		idem_len;
};

/*
 * Record descriptions: 8 bytes value, 2 bytes key length (taken modulo
 * 4096, plus 1), 1 byte idempotency key length, then the bytes, cut short
 * by the end of the input.
 */
static void
build(const uint8_t *data, size_t size)
{
	static struct rec recs[MAXREC];
	static uint8_t in[JOURNAL_MAX_RAW];
	struct journal_record r;
	struct frame_info fi;
	const uint8_t *p, *end;
	uint8_t *frame;
	size_t n = 0, raw_len = 0, cap, len, klen, ilen;
	uint64_t lsn;

	if (size < 2)
		return;
	/* An aligned LSN after a segment header; the byte varies it. */
	lsn = JOURNAL_SEG_HDR + (uint64_t)data[0] * 4096 * JOURNAL_ALIGN;
	data++;
	size--;
	while (size >= 11 && n < MAXREC) {
		struct rec *x = &recs[n];

		memcpy(&x->value, data, 8);
		klen = (data[8] | (size_t)data[9] << 8) % 4096 + 1;
		ilen = data[10];
		data += 11;
		size -= 11;
		if (klen > size)
			klen = size;
		if (klen == 0)
			break;
		if (ilen > size - klen)
			ilen = size - klen;
		if (raw_len + journal_record_size(klen, ilen) > JOURNAL_MAX_RAW)
			break;
		x->time_us = (uint64_t)n * 1000003;
		x->key = data;
		x->key_len = klen;
		x->idem = ilen ? data + klen : NULL;
		x->idem_len = ilen;
		data += klen + ilen;
		size -= klen + ilen;

		r.value = x->value;
		r.time_us = x->time_us;
		r.key = (const char *)x->key;
		r.key_len = x->key_len;
		r.idem = (const char *)x->idem;
		r.idem_len = x->idem_len;
		len = journal_record_put(in + raw_len, &r);
		if (len != journal_record_size(klen, ilen))
			abort();
		raw_len += len;
		n++;
	}
	if (n == 0)
		return;

	cap = journal_frame_bound(raw_len);
	if ((frame = malloc(cap)) == NULL)
		return;
	len = journal_frame_build(frame, cap, lsn, epoch, in, raw_len, n);
	if (len == 0 || len > cap || len % JOURNAL_ALIGN)
		abort();
	if (journal_frame_check(frame, len, lsn, epoch, &fi) != FRAME_OK ||
	    fi.len != len || fi.raw_len != raw_len || fi.nrecords != n)
		abort();
	/* A frame read at another position is stale. */
	if (journal_frame_check(frame, len, lsn + JOURNAL_ALIGN, epoch,
	    &fi) != FRAME_BAD)
		abort();
	journal_frame_relocate(frame, lsn + 2 * JOURNAL_ALIGN);
	if (journal_frame_check(frame, len, lsn, epoch, &fi) != FRAME_BAD)
		abort();
	if (journal_frame_check(frame, len, lsn + 2 * JOURNAL_ALIGN, epoch,
	    &fi) != FRAME_OK)
		abort();
	/* Not enough room for the whole frame: never OK. */
	if (journal_frame_check(frame, len - JOURNAL_ALIGN,
	    lsn + 2 * JOURNAL_ALIGN, epoch, &fi) == FRAME_OK)
		abort();
	journal_frame_check(frame, len, lsn + 2 * JOURNAL_ALIGN, epoch, &fi);
	if (journal_frame_decode(frame, &fi, raw) != 0)
		abort();
	if (memcmp(raw, in, raw_len) != 0)
		abort();
	p = raw;
	end = raw + raw_len;
	for (size_t i = 0; i < n; i++) {
		if (journal_record_next(&p, end, &r) != 1)
			abort();
		if (r.value != recs[i].value || r.time_us != recs[i].time_us ||
		    r.key_len != recs[i].key_len ||
		    memcmp(r.key, recs[i].key, r.key_len) != 0 ||
		    r.idem_len != recs[i].idem_len ||
		    (r.idem == NULL) != (recs[i].idem == NULL) ||
		    (r.idem && memcmp(r.idem, recs[i].idem, r.idem_len) != 0))
			abort();
	}
	if (journal_record_next(&p, end, &r) != 0)
		abort();

	/* The padding of the same length checks as padding. */
	journal_frame_build_padding(frame, lsn, len, epoch);
	if (journal_frame_check(frame, len, lsn, epoch, &fi) != FRAME_PADDING ||
	    fi.len != len)
		abort();
	free(frame);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	if (data[0] & 1)
		build(data + 1, size - 1);
	else
		scan(data + 1, size - 1);
	return 0;
}
