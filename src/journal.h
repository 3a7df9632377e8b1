/*
 * The write-ahead journal: segment files of lz4-compressed frames.  The
 * byte-by-byte format is documented at the top of journal.c.
 *
 * LSNs are byte positions in one endless logical file; segment k holds
 * [k * segment_size, (k + 1) * segment_size) and is named after its first
 * LSN.  Its first JOURNAL_SEG_HDR bytes are the segment header, so the first
 * frame of a segment sits at base + JOURNAL_SEG_HDR.
 */
#ifndef TALLY_JOURNAL_H
#define TALLY_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#define JOURNAL_VERSION		1
#define JOURNAL_SEG_HDR		256	/* segment header bytes */
#define JOURNAL_FRAME_HDR	40	/* frame header bytes */
#define JOURNAL_ALIGN		8
#define JOURNAL_EPOCH_LEN	16
#define JOURNAL_NODE_LEN	128
#define JOURNAL_MAX_RAW		(256 * 1024)	/* records per frame, uncompressed */
#define JOURNAL_MAP_CACHE	4
#define JOURNAL_REC_HDR		20	/* record header bytes */

#define JOURNAL_FLAG_PADDING	0x0001

struct journal_record {
	int64_t		 value;
	uint64_t	 time_us;	/* wall clock, microseconds */
	const char	*key;
	uint16_t	 key_len;
	const char	*idem;		/* NULL when absent */
	uint8_t		 idem_len;
};

enum frame_status {
	FRAME_OK,	/* complete, CRC good: records follow */
	FRAME_PADDING,	/* complete padding: skip info.len bytes */
	FRAME_EMPTY,	/* header all zero: not (yet) written */
	FRAME_BAD	/* anything else: torn, corrupt, stale, foreign */
};

struct frame_info {
	uint64_t	lsn;
	uint32_t	len;		/* whole frame, aligned */
	uint32_t	payload_len;	/* compressed bytes */
	uint32_t	raw_len;	/* uncompressed bytes */
	uint32_t	nrecords;
	uint16_t	flags;
	const char     *why;		/* for FRAME_BAD: what was wrong */
};

struct journal_seg_map {
	uint64_t	 index;		/* segment number; UINT64_MAX = unused */
	int		 fd;
	uint8_t		*base;
	uint64_t	 used;		/* LRU tick */
};

/* One per process: the open and mapped segments of one journal. */
struct journal {
	char			dir[1024];
	int			dirfd;
	uint64_t		seg_size;
	uint8_t			epoch[JOURNAL_EPOCH_LEN];
	char			node[JOURNAL_NODE_LEN];
	uint64_t		tick;
	int			store;	/* frames stored through the mapping */
	int			readonly; /* journal_open_readonly() */
	struct journal_seg_map	maps[JOURNAL_MAP_CACHE];
};

/* --- records (the uncompressed payload of a frame) --- */
size_t	journal_record_size(size_t key_len, size_t idem_len);
/* Appends r at dst, returns bytes written (journal_record_size). */
size_t	journal_record_put(uint8_t *dst, const struct journal_record *r);
/* Returns 1 and fills r (pointing into *p), 0 at end, -1 on a bad record. */
int	journal_record_next(const uint8_t **p, const uint8_t *end,
	    struct journal_record *r);

/* --- frames --- */
/* Worst-case frame size for raw_len payload bytes, aligned. */
size_t	journal_frame_bound(size_t raw_len);
/*
 * Build a complete frame for position lsn in dst (capacity dstcap):
 * compresses raw, fills the header, computes the CRC.  Returns the frame
 * length (aligned), or 0 if dst is too small.  The frame is not yet
 * visible: journal_frame_publish() copies it so that readers see the
 * header's first word last.
 */
size_t	journal_frame_build(uint8_t *dst, size_t dstcap, uint64_t lsn,
	    const uint8_t epoch[JOURNAL_EPOCH_LEN], const uint8_t *raw,
	    size_t raw_len, uint32_t nrecords);
/*
 * journal_frame_build() without the LSN and the CRC, for a writer that
 * learns the frame's place only from its length: journal_frame_relocate()
 * then completes it, and the payload is checksummed once.
 */
size_t	journal_frame_compress(uint8_t *dst, size_t dstcap,
	    const uint8_t epoch[JOURNAL_EPOCH_LEN], const uint8_t *raw,
	    size_t raw_len, uint32_t nrecords);
/* Put a frame at lsn, or move a built one there: the LSN and the CRC. */
void	journal_frame_relocate(uint8_t *frame, uint64_t lsn);
/* A padding frame covering len bytes at lsn (len >= JOURNAL_FRAME_HDR). */
void	journal_frame_build_padding(uint8_t *dst, uint64_t lsn, uint32_t len,
	    const uint8_t epoch[JOURNAL_EPOCH_LEN]);
/* Copy a built frame into the mapped journal, header word last (release). */
void	journal_frame_publish(uint8_t *at, const uint8_t *frame, size_t len);
/*
 * The same in two steps, all but the first word, then the first word,
 * through the segment's file; or with j->store set, through the mapping
 * (journal.c says when each).  -1 with errno.
 */
int	journal_frame_write_body(struct journal *j, uint64_t lsn,
	    const uint8_t *frame, size_t len);
int	journal_frame_write_head(struct journal *j, uint64_t lsn,
	    const uint8_t *frame);
/*
 * Validate the frame at p for position lsn; avail is the number of bytes
 * up to the end of its segment.  Loads the first word with acquire
 * semantics, so it is safe on a live journal.
 */
enum frame_status journal_frame_check(const uint8_t *p, size_t avail,
	    uint64_t lsn, const uint8_t epoch[JOURNAL_EPOCH_LEN],
	    struct frame_info *fi);
/* Decompress a checked FRAME_OK frame into raw (capacity JOURNAL_MAX_RAW). */
int	journal_frame_decode(const uint8_t *p, const struct frame_info *fi,
	    uint8_t *raw);

/* --- LSN arithmetic --- */
static inline uint64_t
journal_seg_base(uint64_t seg_size, uint64_t lsn)
{
	return lsn - lsn % seg_size;
}
/*
 * Normalise a position: a position too close to its segment's end to hold
 * a frame header, or at a segment's very start, moves to the first frame
 * position of the next (or that) segment.
 */
uint64_t journal_lsn_normalize(uint64_t seg_size, uint64_t lsn);
/*
 * Reserve len bytes in the shared insert position *insert (atomic CAS).
 * Returns the frame's LSN.  When the frame does not fit in the current
 * segment, *pad_lsn and *pad_len describe the tail of the segment that the
 * caller must cover with a padding frame (pad_len 0: nothing to pad, the
 * tail is shorter than a frame header).  The caller's reservation thus
 * spans [*pad_lsn, frame LSN + len).  Unless NULL, intent[0] and intent[1]
 * hold that span before each try, and after the one that wins: whoever
 * finds a dead caller's hole can tell the range may be its, though the
 * caller died before it could say so.
 */
uint64_t journal_reserve(uint64_t *insert, uint64_t seg_size, uint32_t len,
	    uint64_t *pad_lsn, uint32_t *pad_len, uint64_t intent[2]);

/* --- segment files --- */
/* 0 on success.  Does not create or read anything yet. */
int	journal_open(struct journal *j, const char *dir, uint64_t seg_size,
	    const uint8_t epoch[JOURNAL_EPOCH_LEN], const char *node);
/*
 * The same for a reader that must not write: a copy of a journal on
 * read-only media, say.  Segments are opened O_RDONLY and mapped
 * PROT_READ; journal_at() with create and journal_recycle() fail with
 * EROFS, and so does everything that writes through them.
 */
int	journal_open_readonly(struct journal *j, const char *dir,
	    uint64_t seg_size, const uint8_t epoch[JOURNAL_EPOCH_LEN],
	    const char *node);
void	journal_close(struct journal *j);
/* "%016llX.seg" of the segment's first LSN. */
void	journal_seg_name(char *buf, size_t len, uint64_t base);
/*
 * Pointer to the mapped byte at lsn.  With create, a missing segment is
 * created, preallocated (so a full disk fails here, not as SIGBUS later),
 * given its header and fsync'ed with its directory; creation is idempotent
 * and safe from several processes at once.  NULL with errno on failure.
 */
uint8_t *journal_at(struct journal *j, uint64_t lsn, int create);
/* fdatasync every segment that holds bytes of [from, to).  -1 with errno. */
int	journal_sync(struct journal *j, uint64_t from, uint64_t to);
/*
 * Unmap cached segments that end at or below lsn.  A removed segment's
 * space is only given back once no process maps it any more.
 */
void	journal_forget(struct journal *j, uint64_t below_lsn);
/* Remove segments that end at or below lsn.  Returns how many. */
int	journal_recycle(struct journal *j, uint64_t below_lsn);
/*
 * Remove the temporary files of segments whose maker died; only while no
 * other process can be making one.  Returns how many, -1 with errno.
 */
int	journal_remove_tmp(const char *dir);

/*
 * The sorted bases of the segment files in dir, in *bases (to free).
 * Returns how many, -1 with errno.
 */
int	journal_list_segments(const char *dir, uint64_t **bases);
/*
 * List the segments of a directory (sorted bases), read and check the
 * header of the first: fills epoch, node and seg_size.  Returns the number
 * of segments (0: no journal), -1 on error (message in err), -2 when a
 * header carries a version this build does not know (refuse to run).
 */
int	journal_scan_dir(const char *dir, uint64_t **bases, uint8_t
	    epoch[JOURNAL_EPOCH_LEN], char node[JOURNAL_NODE_LEN],
	    uint64_t *seg_size, char *err, size_t errlen);

/*
 * The first valid frame (or padding) at or after from, below end, found
 * by trying every 8-byte boundary: frames carry their own LSN, so this
 * finds them without knowing how long a damaged frame before them was.
 * Returns 1 and sets *found, or 0.
 */
int	journal_find_valid(struct journal *j, uint64_t from, uint64_t end,
	    uint64_t *found);

/*
 * Cover [from, to) with padding frames, one per segment piece: the range
 * of a writer that died before publishing it.  -1 with errno.
 */
int	journal_pad(struct journal *j, uint64_t from, uint64_t to);

/* Create a fresh random epoch. */
int	journal_new_epoch(uint8_t epoch[JOURNAL_EPOCH_LEN]);
void	journal_epoch_hex(const uint8_t epoch[JOURNAL_EPOCH_LEN], char out[33]);
uint32_t journal_crc(uint32_t crc, const void *p, size_t len);

#endif
