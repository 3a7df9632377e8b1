/*
 * tallyd.lock, the lock file of a state or journal directory: the master
 * holds an flock(2) on it while it runs and writes its pid into it, so
 * that whoever else finds it locked (a second tallyd, tallyctl's journal
 * repairs) can say which process holds it.
 */
#ifndef TALLY_LOCKFILE_H
#define TALLY_LOCKFILE_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Open dir's lock file (created when 'create') and lock it.  The
 * descriptor, or -1 with errno: EWOULDBLOCK when another process holds
 * it, whose pid is then in holder ("?" if it wrote none).
 */
int	lockfile_take(const char *dir, int create, char *holder, size_t len);
/* Name pid as the holder of the lock on fd.  -1 with errno on failure. */
int	lockfile_write_pid(int fd, pid_t pid);

#endif
