/*
 * Logging.  One line per event, prefixed with the process role so that the
 * interleaved output of the master and its children stays readable.
 *
 * With server.log_file every process appends to the file, each line in
 * one write(2) on an O_APPEND descriptor, so that lines of different
 * processes never mix.  After a rotation each process opens the path
 * again itself (the children when they see the master's log_gen move):
 * the children run as server.user, so the master hands them the file,
 * as nginx does with its logs.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static int		 log_foreground = 1;
static enum log_level	 log_level = LOG_LEVEL_INFO;
static const char	*log_role = "master";
static int		 log_fd = -1;		/* server.log_file, open */
static char		 log_path[1024];
static uid_t		 log_uid = (uid_t)-1;
static gid_t		 log_gid = (gid_t)-1;

void
log_init(int foreground, const char *ident, int facility)
{
	log_foreground = foreground;
	if (!foreground)
		openlog(ident, LOG_PID | LOG_NDELAY, facility);
}

void
log_set_level(enum log_level level)
{
	log_level = level;
}

int
log_facility_parse(const char *name)
{
	static const int local[] = { LOG_LOCAL0, LOG_LOCAL1, LOG_LOCAL2,
	    LOG_LOCAL3, LOG_LOCAL4, LOG_LOCAL5, LOG_LOCAL6, LOG_LOCAL7 };

	if (strncmp(name, "local", 5) == 0 && name[5] >= '0' &&
	    name[5] <= '7' && name[6] == '\0')
		return local[name[5] - '0'];
	return LOG_DAEMON;
}

int
log_level_parse(const char *name)
{
	static const char *names[] = { "error", "warning", "info", "debug" };

	for (int i = 0; i < 4; i++)
		if (strcmp(name, names[i]) == 0)
			return i;
	return -1;
}

void
log_set_role(const char *role)
{
	log_role = role;
}

static int
log_file_open(void)
{
	int fd, e;

	if ((fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
	    0640)) == -1)
		return -1;
	if (log_uid != (uid_t)-1 && geteuid() == 0 &&
	    fchown(fd, log_uid, log_gid) == -1) {
		e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	if (log_fd != -1)
		close(log_fd);
	log_fd = fd;
	return 0;
}

int
log_open_file(const char *path, uid_t uid, gid_t gid)
{
	if (strlen(path) >= sizeof(log_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	snprintf(log_path, sizeof(log_path), "%s", path);
	log_uid = uid;
	log_gid = gid;
	return log_file_open();
}

int
log_reopen(void)
{
	/* syslog reconnects by itself; stderr needs nothing. */
	if (log_path[0] == '\0')
		return 0;
	if (log_file_open() == -1) {
		log_warn("cannot reopen log file %s; logging on to the file "
		    "open before", log_path);
		return -1;
	}
	return 0;
}

static void
log_emit(enum log_level level, const char *fmt, va_list ap, const char *err)
{
	static const char *names[] = { "error", "warning", "info", "debug" };
	static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
	char msg[2048];

	if (level > log_level)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (log_fd != -1 || log_foreground) {
		struct timespec ts;
		struct tm tm;
		char when[32], line[sizeof(msg) + 256];
		int n;

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
		n = snprintf(line, sizeof(line), "%s.%03ldZ tallyd[%d] %s %s: "
		    "%s%s%s\n", when, ts.tv_nsec / 1000000, (int)getpid(),
		    log_role, names[level], msg, err ? ": " : "",
		    err ? err : "");
		if (n < 0)
			return;
		if ((size_t)n >= sizeof(line)) {
			n = sizeof(line) - 1;
			line[n - 1] = '\n';
		}
		/* Nowhere to report a failed write to the log. */
		if (log_fd != -1) {
			if (write(log_fd, line, (size_t)n) == -1)
				return;
		} else
			fputs(line, stderr);
	} else
		syslog(prio[level], "%s %s: %s%s%s", log_role, names[level],
		    msg, err ? ": " : "", err ? err : "");
}

#define LOG_BODY(level, err) do {		\
	va_list ap;				\
	va_start(ap, fmt);			\
	log_emit(level, fmt, ap, err);		\
	va_end(ap);				\
} while (0)

void
log_warn(const char *fmt, ...)
{
	const char *err = strerror(errno);

	LOG_BODY(LOG_LEVEL_WARN, err);
}

void
log_warnx(const char *fmt, ...)
{
	LOG_BODY(LOG_LEVEL_WARN, NULL);
}

void
log_info(const char *fmt, ...)
{
	LOG_BODY(LOG_LEVEL_INFO, NULL);
}

void
log_debug(const char *fmt, ...)
{
	LOG_BODY(LOG_LEVEL_DEBUG, NULL);
}

void
fatal(int code, const char *fmt, ...)
{
	const char *err = strerror(errno);

	LOG_BODY(LOG_LEVEL_ERROR, err);
	exit(code);
}

void
fatalx(int code, const char *fmt, ...)
{
	LOG_BODY(LOG_LEVEL_ERROR, NULL);
	exit(code);
}
