/*
 * Listening Unix stream sockets (the control socket, unix:/path listen
 * addresses).
 */
#ifndef TALLY_UNIXSOCK_H
#define TALLY_UNIXSOCK_H

#include <sys/types.h>

/*
 * Listen at path with mode, owned by uid:gid ((uid_t)-1: keep).  -1 and
 * errno on failure (a path too long: ENAMETOOLONG; a file that is not a
 * socket: bind's EADDRINUSE); -2 when a server already answers on path,
 * whose socket is left alone.
 */
int	unixsock_listen(const char *path, mode_t mode, int backlog, uid_t uid,
	    gid_t gid);

#endif
