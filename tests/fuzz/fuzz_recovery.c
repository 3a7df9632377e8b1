/*
 * Fuzz target for the journal walk of recovery and of tallyctl: the input
 * becomes the frame area of a real segment file (made once with
 * journal_at() in a private temporary directory, mapped as the daemon
 * maps it), which is then walked frame by frame, skipping damage with
 * journal_find_valid().  Nothing may crash, the walk must end, and every
 * position journal_find_valid() returns must hold a frame that checks as
 * a frame or as padding.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "journal.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define SEG_SIZE	(16 * 1024)

static const uint8_t epoch[JOURNAL_EPOCH_LEN] = {
	'f', 'u', 'z', 'z', 'e', 'p', 'o', 'c', 'h', '0', '1', '2', '3',
	'4', '5', '6'
};

static struct journal	 j;
static uint8_t		*seg;
static char		 dir[64];
static uint8_t		 raw[JOURNAL_MAX_RAW];

static void
cleanup(void)
{
	char name[32], path[128];

	journal_close(&j);
	journal_seg_name(name, sizeof(name), 0);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	unlink(path);
	rmdir(dir);
}

static int
setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/fuzz_recovery.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	if (journal_open(&j, dir, SEG_SIZE, epoch, "fuzz") == -1)
		return -1;
	if ((seg = journal_at(&j, 0, 1)) == NULL)
		return -1;
	atexit(cleanup);
	return 0;
}

/* A position journal_find_valid() returned must hold a frame. */
static void
check_found(uint64_t from, uint64_t end, uint64_t found)
{
	struct frame_info fi;
	enum frame_status st;
	const uint8_t *f;

	if (found < from || found >= end || found % JOURNAL_ALIGN)
		abort();
	if ((f = journal_at(&j, found, 0)) == NULL)
		abort();
	st = journal_frame_check(f, SEG_SIZE - found % SEG_SIZE, found, epoch,
	    &fi);
	if (st != FRAME_OK && st != FRAME_PADDING)
		abort();
}

/* The walk of tallyctl's "journal check", without the printing. */
static void
walk(uint64_t start, uint64_t end)
{
	uint64_t p = journal_lsn_normalize(SEG_SIZE, start), found;
	struct frame_info fi;
	enum frame_status st;
	const uint8_t *f;

	while (p < end) {
		p = journal_lsn_normalize(SEG_SIZE, p);
		if (p >= end)
			break;
		if ((f = journal_at(&j, p, 0)) == NULL)
			abort();
		st = journal_frame_check(f, SEG_SIZE - p % SEG_SIZE, p, epoch,
		    &fi);
		if (st == FRAME_OK && journal_frame_decode(f, &fi, raw))
			st = FRAME_BAD;
		if (st == FRAME_OK || st == FRAME_PADDING) {
			if (fi.len < JOURNAL_FRAME_HDR ||
			    fi.len > SEG_SIZE - p % SEG_SIZE)
				abort();
			p += fi.len;
			continue;
		}
		if (!journal_find_valid(&j, p + JOURNAL_ALIGN, end, &found))
			break;
		check_found(p + JOURNAL_ALIGN, end, found);
		p = found;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	static size_t dirty;
	size_t room = SEG_SIZE - JOURNAL_SEG_HDR;

	if (!ready) {
		if (setup() == -1) {
			perror("fuzz_recovery: setup");
			abort();
		}
		ready = 1;
	}
	if (size > room)
		size = room;
	memcpy(seg + JOURNAL_SEG_HDR, data, size);
	/* The file is all zero beyond what the last input wrote. */
	if (dirty > size)
		memset(seg + JOURNAL_SEG_HDR + size, 0, dirty - size);
	dirty = size;
	walk(JOURNAL_SEG_HDR, SEG_SIZE);
	return 0;
}
