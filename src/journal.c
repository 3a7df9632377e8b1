/*
 * The write-ahead journal.
 *
 * Workers of several processes append to one journal at once: each
 * reserves a byte range with an atomic compare-and-swap on the shared
 * insert position, builds its frame in private memory, and copies it into
 * the shared mapping of the segment file, the first eight bytes last.  A
 * reader that sees a valid first word therefore sees the whole frame; a
 * zero first word means "not written (yet)".  The syncer makes frames
 * durable with fdatasync and the flusher replays them into PostgreSQL.
 *
 * All integers are little-endian.  LSNs are byte positions in one endless
 * logical stream; segment file k holds LSNs [k * S, (k + 1) * S) where S is
 * the segment size, and is named after its first LSN as 16 upper-case hex
 * digits followed by ".seg".
 *
 * Segment header (JOURNAL_SEG_HDR = 256 bytes, at offset 0 of each file):
 *
 *	  0   8	magic "TALLYJNL"
 *	  8   4	version (JOURNAL_VERSION)
 *	 12   4	header length (256)
 *	 16   8	first LSN of the segment (its base)
 *	 24   8	segment size S
 *	 32  16	epoch: random bytes made when the journal was created
 *	 48 128	node name, NUL-padded
 *	176  76	zero
 *	252   4	CRC-32 (zlib) of bytes 0..251
 *
 * Frame (starts at an 8-byte aligned LSN after the segment header; its
 * length is a multiple of 8; a frame never crosses a segment boundary):
 *
 *	  0   4	magic 0x46594c54 ("TLYF")
 *	  4   2	version (JOURNAL_VERSION)
 *	  6   2	flags: 0x0001 padding (no records; skip the frame)
 *	  8   4	frame length, header and padding included
 *	 12   4	payload length (lz4 block bytes)
 *	 16   8	LSN of this frame: a stale frame read at another position,
 *		or after the journal was recreated, never validates
 *	 24   4	uncompressed payload length
 *	 28   4	number of records
 *	 32   4	first four bytes of the epoch, for the same reason
 *	 36   4	CRC-32 of bytes 0..35 and of the payload
 *	 40   .	payload: one lz4 block of the records, then zeros up to the
 *		frame length
 *
 * Record (uncompressed, packed back to back inside the payload):
 *
 *	  0   8	value, signed
 *	  8   8	time, microseconds since 1970 (UTC)
 *	 16   2	key length (1..4096)
 *	 18   1	idempotency key length (0: none)
 *	 19   1	flags (zero)
 *	 20   .	key bytes, then idempotency key bytes
 *
 * A torn frame (power loss) fails its CRC.  A frame whose first word was
 * never published is all zero.  The distinction between a torn tail and
 * corruption further back is made by recovery (recovery.c).
 */
#include <sys/types.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lz4.h>
#include <zlib.h>

#include "journal.h"
#include "le.h"
#include "log.h"

#define SEG_MAGIC	"TALLYJNL"
#define FRAME_MAGIC	0x46594c54U

static LZ4_stream_t	frame_lz4;	/* journal_frame_build's compressor */
static int		frame_lz4_ready;

uint32_t
journal_crc(uint32_t crc, const void *p, size_t len)
{
	return crc32_z(crc, p, len);
}

/* --- records --- */

size_t
journal_record_size(size_t key_len, size_t idem_len)
{
	return JOURNAL_REC_HDR + key_len + idem_len;
}

size_t
journal_record_put(uint8_t *dst, const struct journal_record *r)
{
	le_put64(dst, (uint64_t)r->value);
	le_put64(dst + 8, r->time_us);
	le_put16(dst + 16, r->key_len);
	dst[18] = r->idem ? r->idem_len : 0;
	dst[19] = 0;
	memcpy(dst + JOURNAL_REC_HDR, r->key, r->key_len);
	if (r->idem && r->idem_len)
		memcpy(dst + JOURNAL_REC_HDR + r->key_len, r->idem,
		    r->idem_len);
	return journal_record_size(r->key_len, r->idem ? r->idem_len : 0);
}

int
journal_record_next(const uint8_t **pp, const uint8_t *end,
    struct journal_record *r)
{
	const uint8_t *p = *pp;
	size_t klen, ilen;

	if (p == end)
		return 0;
	if (end - p < JOURNAL_REC_HDR)
		return -1;
	klen = le_get16(p + 16);
	ilen = p[18];
	if (klen == 0 || p[19] != 0 ||
	    (size_t)(end - p) < journal_record_size(klen, ilen))
		return -1;
	r->value = (int64_t)le_get64(p);
	r->time_us = le_get64(p + 8);
	r->key = (const char *)p + JOURNAL_REC_HDR;
	r->key_len = klen;
	r->idem = ilen ? r->key + klen : NULL;
	r->idem_len = ilen;
	*pp = p + journal_record_size(klen, ilen);
	return 1;
}

/* --- frames --- */

static size_t
align8(size_t n)
{
	return (n + JOURNAL_ALIGN - 1) & ~(size_t)(JOURNAL_ALIGN - 1);
}

size_t
journal_frame_bound(size_t raw_len)
{
	return align8(JOURNAL_FRAME_HDR + LZ4_compressBound(raw_len));
}

static uint32_t
frame_crc(const uint8_t *hdr, const uint8_t *payload, size_t len)
{
	uint32_t crc = journal_crc(0, hdr, 36);

	return journal_crc(crc, payload, len);
}

/*
 * A frame's header: the LSN and the CRC are left for
 * journal_frame_relocate(), which journal_frame_build() calls at once but
 * a worker only once it has reserved the frame's place.
 */
static void
frame_header(uint8_t *dst, uint16_t flags, uint32_t len, uint32_t plen,
    uint32_t raw_len, uint32_t nrec, const uint8_t *epoch)
{
	le_put32(dst, FRAME_MAGIC);
	le_put16(dst + 4, JOURNAL_VERSION);
	le_put16(dst + 6, flags);
	le_put32(dst + 8, len);
	le_put32(dst + 12, plen);
	le_put32(dst + 24, raw_len);
	le_put32(dst + 28, nrec);
	memcpy(dst + 32, epoch, 4);
}

size_t
journal_frame_compress(uint8_t *dst, size_t dstcap,
    const uint8_t epoch[JOURNAL_EPOCH_LEN], const uint8_t *raw,
    size_t raw_len, uint32_t nrecords)
{
	int plen;
	size_t len;

	if (raw_len > JOURNAL_MAX_RAW || dstcap < journal_frame_bound(raw_len))
		return 0;
	/*
	 * LZ4_compress_default() clears a 16 KB hash table for every call:
	 * more work than compressing a frame of a few increments, and 16 KB
	 * of L1 evicted each time.  A stream reset the fast way invalidates
	 * the table by offset instead; with no dictionary the block is
	 * independent, as LZ4_decompress_safe() reads it.  Each process
	 * builds frames from one thread, so one state per process serves.
	 */
	if (!frame_lz4_ready) {
		LZ4_initStream(&frame_lz4, sizeof(frame_lz4));
		frame_lz4_ready = 1;
	} else
		LZ4_resetStream_fast(&frame_lz4);
	plen = LZ4_compress_fast_continue(&frame_lz4, (const char *)raw,
	    (char *)dst + JOURNAL_FRAME_HDR, raw_len,
	    dstcap - JOURNAL_FRAME_HDR, 1);
	if (plen <= 0)
		return 0;
	len = align8(JOURNAL_FRAME_HDR + plen);
	memset(dst + JOURNAL_FRAME_HDR + plen, 0,
	    len - JOURNAL_FRAME_HDR - plen);
	frame_header(dst, 0, len, plen, raw_len, nrecords, epoch);
	return len;
}

size_t
journal_frame_build(uint8_t *dst, size_t dstcap, uint64_t lsn,
    const uint8_t epoch[JOURNAL_EPOCH_LEN], const uint8_t *raw,
    size_t raw_len, uint32_t nrecords)
{
	size_t len;

	if ((len = journal_frame_compress(dst, dstcap, epoch, raw, raw_len,
	    nrecords)) != 0)
		journal_frame_relocate(dst, lsn);
	return len;
}

void
journal_frame_relocate(uint8_t *frame, uint64_t lsn)
{
	le_put64(frame + 16, lsn);
	le_put32(frame + 36, frame_crc(frame, frame + JOURNAL_FRAME_HDR,
	    le_get32(frame + 12)));
}

void
journal_frame_build_padding(uint8_t *dst, uint64_t lsn, uint32_t len,
    const uint8_t epoch[JOURNAL_EPOCH_LEN])
{
	frame_header(dst, JOURNAL_FLAG_PADDING, len, 0, 0, 0, epoch);
	journal_frame_relocate(dst, lsn);
}

/* A frame's first word into the mapping at, after the rest of it. */
static void
frame_store_head(uint8_t *at, const uint8_t *frame)
{
	uint64_t first;

	memcpy(&first, frame, 8);
	/* Readers load this word with acquire: it makes the rest visible. */
	__atomic_store_n((uint64_t *)(void *)at, first, __ATOMIC_RELEASE);
}

void
journal_frame_publish(uint8_t *at, const uint8_t *frame, size_t len)
{
	memcpy(at + 8, frame + 8, len - 8);
	frame_store_head(at, frame);
}

enum frame_status
journal_frame_check(const uint8_t *p, size_t avail, uint64_t lsn,
    const uint8_t epoch[JOURNAL_EPOCH_LEN], struct frame_info *fi)
{
	uint64_t first;
	uint8_t w[8];

	memset(fi, 0, sizeof(*fi));
	fi->lsn = lsn;
	if (avail < JOURNAL_FRAME_HDR) {
		fi->why = "no room for a frame header";
		return FRAME_BAD;
	}
	first = __atomic_load_n((const uint64_t *)(const void *)p,
	    __ATOMIC_ACQUIRE);
	if (first == 0) {
		fi->why = "empty";
		return FRAME_EMPTY;
	}
	memcpy(w, &first, 8);
	if (le_get32(w) != FRAME_MAGIC) {
		fi->why = "bad frame magic";
		return FRAME_BAD;
	}
	if (le_get16(w + 4) != JOURNAL_VERSION) {
		fi->why = "unknown frame version";
		return FRAME_BAD;
	}
	fi->flags = le_get16(w + 6);
	fi->len = le_get32(p + 8);
	fi->payload_len = le_get32(p + 12);
	fi->raw_len = le_get32(p + 24);
	fi->nrecords = le_get32(p + 28);
	if (fi->len < JOURNAL_FRAME_HDR || fi->len % JOURNAL_ALIGN ||
	    fi->len > avail || fi->payload_len > fi->len - JOURNAL_FRAME_HDR) {
		fi->why = "bad frame length";
		return FRAME_BAD;
	}
	if (le_get64(p + 16) != lsn) {
		fi->why = "frame LSN does not match its position";
		return FRAME_BAD;
	}
	if (memcmp(p + 32, epoch, 4) != 0) {
		fi->why = "frame from another journal epoch";
		return FRAME_BAD;
	}
	if (fi->flags & ~JOURNAL_FLAG_PADDING) {
		fi->why = "unknown frame flags";
		return FRAME_BAD;
	}
	{
		uint8_t hdr[36];

		memcpy(hdr, w, 8);
		memcpy(hdr + 8, p + 8, 28);
		if (frame_crc(hdr, p + JOURNAL_FRAME_HDR, fi->payload_len) !=
		    le_get32(p + 36)) {
			fi->why = "frame CRC mismatch";
			return FRAME_BAD;
		}
	}
	if (fi->flags & JOURNAL_FLAG_PADDING) {
		if (fi->payload_len != 0 || fi->nrecords != 0) {
			fi->why = "padding frame with payload";
			return FRAME_BAD;
		}
		return FRAME_PADDING;
	}
	/*
	 * The CRC stops at the payload: the alignment bytes after it must be
	 * checked here, or a damaged one would pass unnoticed.
	 */
	if (fi->len != align8(JOURNAL_FRAME_HDR + fi->payload_len)) {
		fi->why = "bad frame length";
		return FRAME_BAD;
	}
	for (uint32_t i = JOURNAL_FRAME_HDR + fi->payload_len; i < fi->len; i++)
		if (p[i] != 0) {
			fi->why = "nonzero bytes after the payload";
			return FRAME_BAD;
		}
	if (fi->raw_len > JOURNAL_MAX_RAW || fi->nrecords == 0) {
		fi->why = "bad uncompressed length or record count";
		return FRAME_BAD;
	}
	return FRAME_OK;
}

int
journal_frame_decode(const uint8_t *p, const struct frame_info *fi,
    uint8_t *raw)
{
	const uint8_t *q, *end;
	struct journal_record r;
	uint32_t n = 0;
	int got;

	got = LZ4_decompress_safe((const char *)p + JOURNAL_FRAME_HDR,
	    (char *)raw, fi->payload_len, JOURNAL_MAX_RAW);
	if (got < 0 || (uint32_t)got != fi->raw_len)
		return -1;
	/* The CRC proves what was written; this proves it parses. */
	q = raw;
	end = raw + got;
	while ((got = journal_record_next(&q, end, &r)) == 1)
		n++;
	if (got < 0 || n != fi->nrecords)
		return -1;
	return 0;
}

/* --- LSN arithmetic --- */

uint64_t
journal_lsn_normalize(uint64_t seg_size, uint64_t lsn)
{
	uint64_t off = lsn % seg_size;

	if (off < JOURNAL_SEG_HDR)
		return lsn - off + JOURNAL_SEG_HDR;
	if (seg_size - off < JOURNAL_FRAME_HDR)
		return lsn - off + seg_size + JOURNAL_SEG_HDR;
	return lsn;
}

uint64_t
journal_reserve(uint64_t *insert, uint64_t seg_size, uint32_t len,
    uint64_t *pad_lsn, uint32_t *pad_len, uint64_t intent[2])
{
	uint64_t pos, start, seg_end, next;

	pos = __atomic_load_n(insert, __ATOMIC_RELAXED);
	for (;;) {
		start = journal_lsn_normalize(seg_size, pos);
		seg_end = journal_seg_base(seg_size, start) + seg_size;
		*pad_lsn = pos;
		*pad_len = 0;
		if (start + len > seg_end) {
			/* Does not fit: pad out this segment, use the next. */
			start = seg_end + JOURNAL_SEG_HDR;
			if (seg_end - pos >= JOURNAL_FRAME_HDR)
				*pad_len = seg_end - pos;
		}
		next = start + len;
		/* Ordered before the exchange by its release. */
		if (intent) {
			__atomic_store_n(&intent[1], next, __ATOMIC_RELAXED);
			__atomic_store_n(&intent[0], pos, __ATOMIC_RELAXED);
		}
		if (__atomic_compare_exchange_n(insert, &pos, next, 0,
		    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
			return start;
	}
}

/* --- segment files --- */

void
journal_seg_name(char *buf, size_t len, uint64_t base)
{
	snprintf(buf, len, "%016" PRIX64 ".seg", base);
}

int
journal_open(struct journal *j, const char *dir, uint64_t seg_size,
    const uint8_t epoch[JOURNAL_EPOCH_LEN], const char *node)
{
	memset(j, 0, sizeof(*j));
	if (strlen(dir) >= sizeof(j->dir)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(j->dir, dir);
	j->seg_size = seg_size;
	memcpy(j->epoch, epoch, JOURNAL_EPOCH_LEN);
	snprintf(j->node, sizeof(j->node), "%s", node ? node : "");
	for (int i = 0; i < JOURNAL_MAP_CACHE; i++) {
		j->maps[i].index = UINT64_MAX;
		j->maps[i].fd = -1;
	}
	if ((j->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	return 0;
}

int
journal_open_readonly(struct journal *j, const char *dir, uint64_t seg_size,
    const uint8_t epoch[JOURNAL_EPOCH_LEN], const char *node)
{
	if (journal_open(j, dir, seg_size, epoch, node) == -1)
		return -1;
	j->readonly = 1;
	return 0;
}

static void
map_drop(struct journal *j, struct journal_seg_map *m)
{
	if (m->base)
		munmap(m->base, j->seg_size);
	if (m->fd != -1)
		close(m->fd);
	m->base = NULL;
	m->fd = -1;
	m->index = UINT64_MAX;
}

void
journal_close(struct journal *j)
{
	for (int i = 0; i < JOURNAL_MAP_CACHE; i++)
		map_drop(j, &j->maps[i]);
	if (j->dirfd != -1)
		close(j->dirfd);
	j->dirfd = -1;
}

static void
seg_header(const struct journal *j, uint64_t base, uint8_t *h)
{
	memset(h, 0, JOURNAL_SEG_HDR);
	memcpy(h, SEG_MAGIC, 8);
	le_put32(h + 8, JOURNAL_VERSION);
	le_put32(h + 12, JOURNAL_SEG_HDR);
	le_put64(h + 16, base);
	le_put64(h + 24, j->seg_size);
	memcpy(h + 32, j->epoch, JOURNAL_EPOCH_LEN);
	memcpy(h + 48, j->node, strnlen(j->node, JOURNAL_NODE_LEN - 1));
	le_put32(h + 252, journal_crc(0, h, 252));
}

static int
seg_zero(int fd, uint64_t size)
{
	static const uint8_t zeros[65536];
	uint64_t off = 0;
	ssize_t n;

	while (off < size) {
		n = pwrite(fd, zeros, size - off < sizeof(zeros) ?
		    size - off : sizeof(zeros), off);
		if (n <= 0)
			return -1;
		off += n;
	}
	return 0;
}

/*
 * Create the segment file.  It is made whole under a name of this
 * process's own and only then linked into place, so that nobody opens it
 * short (a SIGBUS later) and no second creator zeroes frames that the
 * first one's users already wrote; the loser of the link race uses the
 * winner's file.  Preallocation makes a full disk fail now, with ENOSPC,
 * rather than as SIGBUS on a later store.
 */
static int
seg_create(struct journal *j, uint64_t base, const char *name)
{
	uint8_t h[JOURNAL_SEG_HDR];
	char tmp[64];
	int fd, rc, e;

	snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", name, (long)getpid());
	fd = openat(j->dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0600);
	if (fd == -1)
		return -1;
	if ((rc = posix_fallocate(fd, 0, j->seg_size)) != 0) {
		errno = rc;
		goto fail;
	}
	/*
	 * Write the zeros out: an allocated but unwritten extent would make
	 * every first write to it a metadata change, and every fdatasync a
	 * file system journal commit.  PostgreSQL fills its WAL segments the
	 * same way.
	 */
	if (seg_zero(fd, j->seg_size) == -1)
		goto fail;
	seg_header(j, base, h);
	if (pwrite(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
	    fdatasync(fd) == -1)
		goto fail;
	if (linkat(j->dirfd, tmp, j->dirfd, name, 0) == -1 && errno != EEXIST)
		goto fail;
	close(fd);
	unlinkat(j->dirfd, tmp, 0);
	if (fsync(j->dirfd) == -1)
		return -1;
	return openat(j->dirfd, name, O_RDWR | O_CLOEXEC);
fail:
	e = errno;
	close(fd);
	/* Leave no partial file behind. */
	unlinkat(j->dirfd, tmp, 0);
	errno = e;
	return -1;
}

uint8_t *
journal_at(struct journal *j, uint64_t lsn, int create)
{
	uint64_t index = lsn / j->seg_size;
	struct journal_seg_map *m, *victim = &j->maps[0];
	char name[32];
	struct stat st;
	int fd;

	/* With create the caller means to write: not through PROT_READ. */
	if (create && j->readonly) {
		errno = EROFS;
		return NULL;
	}
	for (int i = 0; i < JOURNAL_MAP_CACHE; i++) {
		m = &j->maps[i];
		if (m->index == index) {
			m->used = ++j->tick;
			return m->base + lsn % j->seg_size;
		}
		if (m->used < victim->used)
			victim = m;
	}
	journal_seg_name(name, sizeof(name), index * j->seg_size);
	fd = openat(j->dirfd, name, (j->readonly ? O_RDONLY : O_RDWR) |
	    O_CLOEXEC);
	if (fd == -1 && errno == ENOENT && create)
		fd = seg_create(j, index * j->seg_size, name);
	if (fd == -1)
		return NULL;
	/* A short file would turn stores into SIGBUS: refuse it. */
	if (fstat(fd, &st) == -1 || (uint64_t)st.st_size < j->seg_size) {
		close(fd);
		errno = EINVAL;
		return NULL;
	}
	map_drop(j, victim);
	victim->base = mmap(NULL, j->seg_size, j->readonly ? PROT_READ :
	    PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (victim->base == MAP_FAILED) {
		int e = errno;

		victim->base = NULL;
		close(fd);
		errno = e;
		return NULL;
	}
	victim->fd = fd;
	victim->index = index;
	victim->used = ++j->tick;
	return victim->base + lsn % j->seg_size;
}

/* The descriptor of the segment holding lsn, creating it.  -1: errno. */
static int
seg_fd(struct journal *j, uint64_t lsn)
{
	uint64_t index = lsn / j->seg_size;

	if (journal_at(j, lsn, 1) == NULL)
		return -1;
	for (int i = 0; i < JOURNAL_MAP_CACHE; i++)
		if (j->maps[i].index == index)
			return j->maps[i].fd;
	errno = EINVAL;
	return -1;
}

static int
pwrite_all(int fd, const uint8_t *p, size_t n, off_t off)
{
	ssize_t w;

	while (n > 0) {
		if ((w = pwrite(fd, p, n, off)) == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
		off += w;
	}
	return 0;
}

/*
 * Frames are written with pwrite(2) rather than stored through the
 * mapping.  On ext4 the first store to a page of a shared file mapping
 * after the page was written back opens a journal transaction
 * (page_mkwrite), and the next fdatasync must then commit it as well: a
 * second device cache flush on every group commit, about 1.9 ms instead
 * of 0.6 ms per fdatasync on a virtio disk.  pwrite lands in the same
 * page cache that every reader maps, so readers see no difference.  The
 * first word still comes last, in a write of its own: a reader that
 * catches those 8 bytes half copied sees a bad magic for a moment, which
 * a scan treats as the end of the run (the syncer judges a frame bad only
 * when it finds it so twice).
 *
 * Under sync = interval no client waits on an fdatasync, which comes once
 * a second; the page_mkwrite it leads to is one fault per page and second.
 * There the two system calls a frame cost more (about a microsecond each,
 * with frames of a handful of increments), and frames are stored through
 * the mapping (j->store).  The preallocated segment cannot run out of
 * space under a store, and a store cannot tear the first word.
 */
int
journal_frame_write_body(struct journal *j, uint64_t lsn,
    const uint8_t *frame, size_t len)
{
	uint8_t *at;
	int fd;

	if (j->store) {
		if ((at = journal_at(j, lsn, 1)) == NULL)
			return -1;
		memcpy(at + 8, frame + 8, len - 8);
		return 0;
	}
	if ((fd = seg_fd(j, lsn)) == -1)
		return -1;
	return pwrite_all(fd, frame + 8, len - 8,
	    (off_t)(lsn % j->seg_size) + 8);
}

int
journal_frame_write_head(struct journal *j, uint64_t lsn,
    const uint8_t *frame)
{
	uint8_t *at;
	int fd;

	if (j->store) {
		if ((at = journal_at(j, lsn, 1)) == NULL)
			return -1;
		frame_store_head(at, frame);
		return 0;
	}
	if ((fd = seg_fd(j, lsn)) == -1)
		return -1;
	/* The body's bytes reach the page cache before the first word. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return pwrite_all(fd, frame, 8, (off_t)(lsn % j->seg_size));
}

int
journal_sync(struct journal *j, uint64_t from, uint64_t to)
{
	uint64_t first = from / j->seg_size, last;

	if (to <= from)
		return 0;
	last = (to - 1) / j->seg_size;
	for (uint64_t k = first; k <= last; k++) {
		struct journal_seg_map *m = NULL;

		if (journal_at(j, k * j->seg_size, 0) == NULL)
			return -1;
		for (int i = 0; i < JOURNAL_MAP_CACHE; i++)
			if (j->maps[i].index == k)
				m = &j->maps[i];
		if (m == NULL || fdatasync(m->fd) == -1)
			return -1;
	}
	return 0;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

int
journal_list_segments(const char *dir, uint64_t **out)
{
	DIR *d;
	struct dirent *de;
	uint64_t *v = NULL, base;
	int n = 0, cap = 0;
	char *end;

	*out = NULL;
	if ((d = opendir(dir)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL) {
		if (strlen(de->d_name) != 20 ||
		    strcmp(de->d_name + 16, ".seg") != 0)
			continue;
		errno = 0;
		base = strtoull(de->d_name, &end, 16);
		if (errno || end != de->d_name + 16)
			continue;
		if (n == cap) {
			uint64_t *nv;

			cap = cap ? cap * 2 : 16;
			if ((nv = realloc(v, cap * sizeof(*v))) == NULL) {
				free(v);
				closedir(d);
				return -1;
			}
			v = nv;
		}
		v[n++] = base;
	}
	closedir(d);
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_u64);
	*out = v;
	return n;
}

/*
 * A process that dies while it makes a segment (seg_create) leaves its
 * NAME.seg.PID.tmp behind, a whole segment's size that no listing counts
 * and nothing else removes.  Only safe while no other process can be
 * making one: recovery, under the state lock, before any child starts.
 */
int
journal_remove_tmp(const char *dir)
{
	DIR *d;
	struct dirent *de;
	const char *p;
	size_t len;
	int removed = 0;

	if ((d = opendir(dir)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL) {
		len = strlen(de->d_name);
		if (len <= 25 || strncmp(de->d_name + 16, ".seg.", 5) != 0 ||
		    strcmp(de->d_name + len - 4, ".tmp") != 0 ||
		    strspn(de->d_name, "0123456789ABCDEF") != 16)
			continue;
		for (p = de->d_name + 21; p < de->d_name + len - 4; p++)
			if (*p < '0' || *p > '9')
				break;
		if (p != de->d_name + len - 4)
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) == -1) {
			log_warn("journal: cannot remove %s/%s", dir,
			    de->d_name);
			continue;
		}
		log_info("journal: removed %s/%s, left by a process that died "
		    "while making that segment", dir, de->d_name);
		removed++;
	}
	closedir(d);
	return removed;
}

void
journal_forget(struct journal *j, uint64_t below_lsn)
{
	for (int i = 0; i < JOURNAL_MAP_CACHE; i++)
		if (j->maps[i].index != UINT64_MAX &&
		    (j->maps[i].index + 1) * j->seg_size <= below_lsn)
			map_drop(j, &j->maps[i]);
}

int
journal_recycle(struct journal *j, uint64_t below_lsn)
{
	uint64_t *bases;
	char name[32];
	int n, removed = 0;

	if (j->readonly) {
		errno = EROFS;
		return -1;
	}
	if ((n = journal_list_segments(j->dir, &bases)) == -1)
		return -1;
	for (int i = 0; i < n; i++) {
		if (bases[i] + j->seg_size > below_lsn)
			break;
		/* Never remove the last segment: it carries the epoch. */
		if (i == n - 1)
			break;
		for (int k = 0; k < JOURNAL_MAP_CACHE; k++)
			if (j->maps[k].index == bases[i] / j->seg_size)
				map_drop(j, &j->maps[k]);
		journal_seg_name(name, sizeof(name), bases[i]);
		if (unlinkat(j->dirfd, name, 0) == -1) {
			log_warn("journal: cannot remove segment %s/%s",
			    j->dir, name);
			break;
		}
		removed++;
	}
	free(bases);
	return removed;
}

int
journal_scan_dir(const char *dir, uint64_t **bases,
    uint8_t epoch[JOURNAL_EPOCH_LEN], char node[JOURNAL_NODE_LEN],
    uint64_t *seg_size, char *err, size_t errlen)
{
	uint8_t h[JOURNAL_SEG_HDR];
	char name[32], path[1100];
	int n, fd;
	ssize_t got;

	if ((n = journal_list_segments(dir, bases)) == -1) {
		snprintf(err, errlen, "cannot list journal directory %s: %s",
		    dir, strerror(errno));
		return -1;
	}
	if (n == 0)
		return 0;
	journal_seg_name(name, sizeof(name), (*bases)[0]);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		snprintf(err, errlen, "cannot open %s: %s", path,
		    strerror(errno));
		goto fail;
	}
	got = pread(fd, h, sizeof(h), 0);
	close(fd);
	if (got != (ssize_t)sizeof(h) || memcmp(h, SEG_MAGIC, 8) != 0) {
		snprintf(err, errlen, "%s: not a tallyd journal segment "
		    "(bad magic)", path);
		goto fail;
	}
	if (le_get32(h + 8) != JOURNAL_VERSION) {
		snprintf(err, errlen, "%s: journal version %u, this tallyd "
		    "reads version %u", path, le_get32(h + 8), JOURNAL_VERSION);
		free(*bases);
		*bases = NULL;
		return -2;
	}
	if (le_get32(h + 252) != journal_crc(0, h, 252) ||
	    le_get32(h + 12) != JOURNAL_SEG_HDR || le_get64(h + 16) != (*bases)[0]) {
		snprintf(err, errlen, "%s: segment header is corrupt", path);
		goto fail;
	}
	*seg_size = le_get64(h + 24);
	if (*seg_size < 2 * JOURNAL_SEG_HDR || (*bases)[0] % *seg_size) {
		snprintf(err, errlen, "%s: bad segment size", path);
		goto fail;
	}
	memcpy(epoch, h + 32, JOURNAL_EPOCH_LEN);
	memcpy(node, h + 48, JOURNAL_NODE_LEN);
	node[JOURNAL_NODE_LEN - 1] = '\0';
	return n;
fail:
	free(*bases);
	*bases = NULL;
	return -1;
}

int
journal_find_valid(struct journal *j, uint64_t from, uint64_t end,
    uint64_t *found)
{
	struct frame_info fi;
	const uint8_t *f;
	uint64_t p = (from + JOURNAL_ALIGN - 1) & ~(uint64_t)(JOURNAL_ALIGN - 1);
	uint64_t seg_end;

	while (p < end) {
		uint64_t q = journal_lsn_normalize(j->seg_size, p);

		if (q != p) {
			p = q;
			continue;
		}
		if ((f = journal_at(j, p, 0)) == NULL) {
			/* A missing segment: go on with the next one. */
			p = journal_seg_base(j->seg_size, p) + j->seg_size;
			continue;
		}
		/*
		 * A frame's first word is never zero: step over zeros in
		 * place (a torn tail is followed by megabytes of them).
		 */
		seg_end = journal_seg_base(j->seg_size, p) + j->seg_size;
		if (seg_end > end)
			seg_end = end;
		while (p < seg_end && *(const uint64_t *)(const void *)f == 0) {
			p += JOURNAL_ALIGN;
			f += JOURNAL_ALIGN;
		}
		if (p >= seg_end || journal_lsn_normalize(j->seg_size, p) != p)
			continue;
		if (journal_frame_check(f, j->seg_size - p % j->seg_size, p,
		    j->epoch, &fi) <= FRAME_PADDING) {
			*found = p;
			return 1;
		}
		p += JOURNAL_ALIGN;
	}
	return 0;
}

int
journal_pad(struct journal *j, uint64_t from, uint64_t to)
{
	uint8_t frame[JOURNAL_FRAME_HDR], *at;
	uint64_t p = journal_lsn_normalize(j->seg_size, from), end;

	while (p < to) {
		end = journal_seg_base(j->seg_size, p) + j->seg_size;
		if (end > to)
			end = to;
		if (end - p >= JOURNAL_FRAME_HDR) {
			if ((at = journal_at(j, p, 1)) == NULL)
				return -1;
			journal_frame_build_padding(frame, p, end - p, j->epoch);
			journal_frame_publish(at, frame, sizeof(frame));
		}
		p = journal_lsn_normalize(j->seg_size, end);
	}
	return 0;
}

int
journal_new_epoch(uint8_t epoch[JOURNAL_EPOCH_LEN])
{
	if (getrandom(epoch, JOURNAL_EPOCH_LEN, 0) != JOURNAL_EPOCH_LEN)
		return -1;
	/* An all-zero first word would read as "nothing written". */
	epoch[0] |= 1;
	return 0;
}

void
journal_epoch_hex(const uint8_t epoch[JOURNAL_EPOCH_LEN], char out[33])
{
	for (int i = 0; i < JOURNAL_EPOCH_LEN; i++)
		snprintf(out + 2 * i, 3, "%02x", epoch[i]);
}
