#include <sys/file.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lockfile.h"

int
lockfile_take(const char *dir, int create, char *holder, size_t len)
{
	char path[1100];
	ssize_t n;
	int fd, e;

	if ((size_t)snprintf(path, sizeof(path), "%s/tallyd.lock", dir) >=
	    sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if ((fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0),
	    0600)) == -1)
		return -1;
	if (flock(fd, LOCK_EX | LOCK_NB) == 0)
		return fd;
	e = errno;
	if (len > 0) {
		n = pread(fd, holder, len - 1, 0);
		holder[n > 0 ? n : 0] = '\0';
		holder[strcspn(holder, "\n")] = '\0';
		if (holder[0] == '\0')
			snprintf(holder, len, "?");
	}
	close(fd);
	errno = e;
	return -1;
}

int
lockfile_write_pid(int fd, pid_t pid)
{
	char buf[32];
	int n;

	n = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
	if (ftruncate(fd, 0) == -1 || pwrite(fd, buf, n, 0) != n)
		return -1;
	return 0;
}
