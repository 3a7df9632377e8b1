/*
 * The local checkpoint file, state_dir/checkpoint.
 *
 * The flusher writes it after every commit to PostgreSQL, so it never runs
 * ahead of the checkpoint row there, and before the batch's keys may be
 * evicted, so that recovery never finds more keys past it than the
 * counter table held.  Recovery uses it to know where the
 * unflushed part of the journal starts when PostgreSQL cannot be asked;
 * the flusher corrects it from PostgreSQL once connected.
 *
 * Layout (40 bytes, integers little-endian):
 *
 *	  0   8	magic "TALLYCKP"
 *	  8   4	version (CHECKPOINT_VERSION)
 *	 12  16	journal epoch
 *	 28   8	LSN: PostgreSQL holds every frame below it
 *	 36   4	CRC-32 (zlib) of bytes 0..35
 *
 * A file of any other length, or with another magic or CRC, is damaged;
 * one with an unknown version was written by a newer tallyd.
 *
 * Replacement is atomic: the new contents go to a temporary file in the
 * same directory, which is fsync'ed, renamed over the old file, and the
 * directory is fsync'ed, so a crash leaves either the old or the new file,
 * never a mix.
 */
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include "checkpoint.h"
#include "le.h"

#define CHECKPOINT_MAGIC	"TALLYCKP"
#define CHECKPOINT_VERSION	1
#define CHECKPOINT_SIZE		40
#define CHECKPOINT_CRC_AT	36

static int
checkpoint_path(char *buf, size_t len, const char *dir, const char *name)
{
	if ((size_t)snprintf(buf, len, "%s/%s", dir, name) >= len) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

static int
write_all(int fd, const uint8_t *p, size_t len)
{
	ssize_t n;

	while (len > 0) {
		if ((n = write(fd, p, len)) == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= n;
	}
	return 0;
}

int
checkpoint_write(const char *state_dir, const struct checkpoint *cp)
{
	uint8_t b[CHECKPOINT_SIZE];
	char path[PATH_MAX], tmp[PATH_MAX];
	int fd, dfd, e;

	memset(b, 0, sizeof(b));
	memcpy(b, CHECKPOINT_MAGIC, 8);
	le_put32(b + 8, CHECKPOINT_VERSION);
	memcpy(b + 12, cp->epoch, JOURNAL_EPOCH_LEN);
	le_put64(b + 28, cp->lsn);
	le_put32(b + CHECKPOINT_CRC_AT, crc32(0, b, CHECKPOINT_CRC_AT));

	if (checkpoint_path(path, sizeof(path), state_dir, "checkpoint") ||
	    checkpoint_path(tmp, sizeof(tmp), state_dir, "checkpoint.tmp"))
		return -1;
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0600)) == -1)
		return -1;
	if (write_all(fd, b, sizeof(b)) == -1 || fsync(fd) == -1) {
		e = errno;
		close(fd);
		unlink(tmp);
		errno = e;
		return -1;
	}
	if (close(fd) == -1 || rename(tmp, path) == -1) {
		e = errno;
		unlink(tmp);
		errno = e;
		return -1;
	}
	/* The rename is durable only once the directory is. */
	if ((dfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	if (fsync(dfd) == -1) {
		e = errno;
		close(dfd);
		errno = e;
		return -1;
	}
	close(dfd);
	return 0;
}

/*
 * Errors: EINVAL for a file that is not a valid checkpoint (wrong size,
 * magic or CRC); ENOTSUP for a valid-looking file of a version this build
 * does not know, so the caller can tell "damaged" from "too new".
 */
int
checkpoint_read(const char *state_dir, struct checkpoint *cp)
{
	uint8_t b[CHECKPOINT_SIZE + 1];
	char path[PATH_MAX];
	size_t got = 0;
	ssize_t n;
	int fd, e;

	if (checkpoint_path(path, sizeof(path), state_dir, "checkpoint"))
		return -1;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return errno == ENOENT ? 0 : -1;
	/* Read one byte more than expected, so a long file is caught too. */
	while (got < sizeof(b)) {
		if ((n = read(fd, b + got, sizeof(b) - got)) == -1) {
			if (errno == EINTR)
				continue;
			e = errno;
			close(fd);
			errno = e;
			return -1;
		}
		if (n == 0)
			break;
		got += n;
	}
	close(fd);
	if (got != CHECKPOINT_SIZE || memcmp(b, CHECKPOINT_MAGIC, 8) != 0 ||
	    le_get32(b + CHECKPOINT_CRC_AT) != crc32(0, b, CHECKPOINT_CRC_AT)) {
		errno = EINVAL;
		return -1;
	}
	if (le_get32(b + 8) != CHECKPOINT_VERSION) {
		errno = ENOTSUP;
		return -1;
	}
	memcpy(cp->epoch, b + 12, JOURNAL_EPOCH_LEN);
	cp->lsn = le_get64(b + 28);
	return 1;
}
