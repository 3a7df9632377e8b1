/*
 * The local copy of the flusher's checkpoint, state_dir/checkpoint.  It is
 * written after every commit, so it never runs ahead of PostgreSQL's copy;
 * recovery uses it to rebuild the shared table when PostgreSQL is
 * unreachable, and the flusher corrects it from PostgreSQL on connect.
 */
#ifndef TALLY_CHECKPOINT_H
#define TALLY_CHECKPOINT_H

#include <stdint.h>

#include "journal.h"

struct checkpoint {
	uint8_t		epoch[JOURNAL_EPOCH_LEN];
	uint64_t	lsn;
};

/* Atomically replace the file (temp file, fsync, rename).  -1 with errno. */
int	checkpoint_write(const char *state_dir, const struct checkpoint *cp);
/* 1 read, 0 no file, -1 unreadable or bad magic/version/CRC (errno set). */
int	checkpoint_read(const char *state_dir, struct checkpoint *cp);

#endif
