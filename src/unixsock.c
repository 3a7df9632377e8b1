/*
 * Listening Unix stream sockets: the control socket, and HTTP listen
 * addresses of the form unix:/path.  A socket file left by a server that
 * died is replaced; one a server still answers on is not.
 */
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "unixsock.h"

/*
 * 1 when a server answers on the socket at sun: another tallyd, maybe on
 * another state directory, which unlinking the path would cut off from
 * its clients.  A socket nothing answers on was left by a server that
 * died: it goes.  Anything else there is left for bind() to refuse.
 */
static int
unixsock_in_use(const struct sockaddr_un *sun)
{
	struct stat st;
	int fd, rc;

	if (lstat(sun->sun_path, &st) == -1 || !S_ISSOCK(st.st_mode))
		return 0;
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1)
		return 0;
	rc = connect(fd, (const struct sockaddr *)sun, sizeof(*sun));
	/* EAGAIN: its backlog is full, but it listens. */
	if (rc == 0 || errno == EAGAIN) {
		close(fd);
		return 1;
	}
	if (errno == ECONNREFUSED)
		unlink(sun->sun_path);
	close(fd);
	return 0;
}

int
unixsock_listen(const char *path, mode_t mode, int backlog, uid_t uid,
    gid_t gid)
{
	struct sockaddr_un sun;
	mode_t old;
	int fd, e;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sun.sun_path, path);
	if (unixsock_in_use(&sun))
		return -2;
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1)
		return -1;
	/* Never wider than mode, not even between bind() and chmod(). */
	old = umask(~mode & 0777);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1 ||
	    listen(fd, backlog) == -1) {
		e = errno;
		umask(old);
		close(fd);
		errno = e;
		return -1;
	}
	umask(old);
	if (chmod(path, mode) == -1 ||
	    (uid != (uid_t)-1 && chown(path, uid, gid) == -1)) {
		e = errno;
		close(fd);
		unlink(path);
		errno = e;
		return -1;
	}
	return fd;
}
