/*
 * Logging: stderr in the foreground, syslog as a daemon.  Every message
 * carries its context; log_warn() appends the errno text, log_warnx() does
 * not (OpenBSD's convention).  fatal()/fatalx() log and exit with the given
 * code so the master knows whether to respawn.
 */
#ifndef TALLY_LOG_H
#define TALLY_LOG_H

#include <stdarg.h>

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

void	log_init(int foreground, const char *ident, int facility);
void	log_set_level(enum log_level level);
/* "daemon", "local0".."local7" as a syslog facility; LOG_DAEMON otherwise. */
int	log_facility_parse(const char *name);
/* "error", "warning", "info", "debug"; -1 for anything else. */
int	log_level_parse(const char *name);
void	log_set_role(const char *role);
void	log_reopen(void);

void	log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void	log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void	log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void	log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void	fatal(int code, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3), noreturn));
void	fatalx(int code, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3), noreturn));

#endif
