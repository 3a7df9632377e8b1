/*
 * Telling a service manager how the master stands, in systemd's
 * notification protocol (sd_notify(3)): one datagram of "VAR=value"
 * lines to the AF_UNIX socket that NOTIFY_SOCKET names.  The protocol is
 * a sendto(2), so it is written out here rather than linked from
 * libsystemd, and tallyd has no dependency on systemd.
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "notify.h"

static struct sockaddr_un	notify_sa;
static socklen_t		notify_len;	/* 0: no service manager */
static char			notify_name[sizeof(notify_sa.sun_path) + 1];
/*
 * The environment's "NOTIFY_SOCKET=..." string: unsetenv() drops it from
 * environ, and proctitle_init() made it a heap copy, which must stay
 * reachable rather than read as a leak.
 */
static const char *volatile	notify_env;

extern char **environ;

int
notify_init(void)
{
	const char *s = getenv("NOTIFY_SOCKET");
	size_t n;

	if (s == NULL || s[0] == '\0')
		return 0;
	snprintf(notify_name, sizeof(notify_name), "%s", s);
	for (char **e = environ; *e != NULL; e++)
		if (strncmp(*e, "NOTIFY_SOCKET=", 14) == 0)
			notify_env = *e;
	/* Ours alone: a child must not speak for the service. */
	unsetenv("NOTIFY_SOCKET");
	n = strlen(notify_name);
	if ((notify_name[0] != '/' && notify_name[0] != '@') ||
	    n >= sizeof(notify_sa.sun_path)) {
		log_warnx("NOTIFY_SOCKET '%s' is not a socket path or an "
		    "abstract name; not notifying the service manager",
		    notify_name);
		return -1;
	}
	memset(&notify_sa, 0, sizeof(notify_sa));
	notify_sa.sun_family = AF_UNIX;
	memcpy(notify_sa.sun_path, notify_name, n);
	/* "@name" is a name in the abstract namespace, which starts with NUL. */
	if (notify_name[0] == '@')
		notify_sa.sun_path[0] = '\0';
	notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	return 0;
}

void
notify_send(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	int fd, n;

	if (notify_len == 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(msg))
		n = (int)strlen(msg);
	if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) == -1 ||
	    sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)
	    &notify_sa, notify_len) == -1)
		log_warn("cannot notify the service manager at %s",
		    notify_name);
	if (fd != -1)
		close(fd);
}
