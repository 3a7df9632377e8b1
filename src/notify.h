/*
 * The service manager's notification socket (systemd's sd_notify(3)
 * protocol): readiness, reloads and stops, from the master only.
 */
#ifndef TALLY_NOTIFY_H
#define TALLY_NOTIFY_H

/*
 * Take NOTIFY_SOCKET from the environment, and out of it, so that no
 * child inherits it.  0 also without one; -1 for a value that names no
 * socket (logged).
 */
int	notify_init(void);
/* One message of "VAR=value" lines; nothing without a socket. */
void	notify_send(const char *fmt, ...)
	    __attribute__((format(printf, 1, 2)));

#endif
