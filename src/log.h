/*
 * Logging: server.log_file when set; otherwise stderr in the foreground,
 * syslog as a daemon.  Every message
 * carries its context; log_warn() appends the errno text, log_warnx() does
 * not (OpenBSD's convention).  fatal()/fatalx() log and exit with the given
 * code so the master knows whether to respawn.
 */
#ifndef TALLY_LOG_H
#define TALLY_LOG_H

#include <sys/types.h>

#include <stdarg.h>

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

void	log_init(int foreground, const char *ident, int facility);
void	log_set_level(enum log_level level);
/* "daemon", "local0".."local7" as a syslog facility; LOG_DAEMON otherwise. */
int	log_facility_parse(const char *name);
/* "error", "warning", "info", "debug"; -1 for anything else. */
int	log_level_parse(const char *name);
void	log_set_role(const char *role);
/*
 * Log to this file from now on, in this process and the children it
 * forks; owned by uid:gid (unless (uid_t)-1), who must be able to open
 * it again.  -1 with errno.
 */
int	log_open_file(const char *path, uid_t uid, gid_t gid);
/* After a rotation: the log file's path again.  -1: kept the old one. */
int	log_reopen(void);

void	log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void	log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void	log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void	log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void	fatal(int code, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3), noreturn));
void	fatalx(int code, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3), noreturn));

#endif
