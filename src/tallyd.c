/*
 * tallyd: parse the command line and the configuration, then hand over to
 * the master.  Everything else lives in the library.
 */
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "config.h"
#include "master.h"
#include "proctitle.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif

static void
usage(void)
{
	fprintf(stderr, "usage: tallyd [-ftv] [-c file] [-o section.key=value]..."
	    "\n");
	exit(1);
}

/*
 * What the configuration names outside itself: the accounts exist and the
 * connection string parses.  Checked by -t too, and before a start, so
 * that a typo fails at once rather than in a child or in every retry.
 */
static int
tallyd_check_names(const struct config *cf, const char *path)
{
	PQconninfoOption *opts;
	const char *f = path ? path : "defaults";
	char *err = NULL;
	size_t n;
	int bad = 0;

	if (cf->user[0] && getpwnam(cf->user) == NULL) {
		fprintf(stderr, "%s: server.user: no such user '%s'\n", f,
		    cf->user);
		bad = 1;
	}
	if (cf->group[0] && cf->user[0] == '\0') {
		fprintf(stderr, "%s: server.group needs server.user: tallyd "
		    "changes its group only as it changes its user\n", f);
		bad = 1;
	} else if (cf->group[0] && getgrnam(cf->group) == NULL) {
		fprintf(stderr, "%s: server.group: no such group '%s'\n", f,
		    cf->group);
		bad = 1;
	}
	if ((opts = PQconninfoParse(cf->dsn, &err)) == NULL) {
		/* libpq's message ends in a newline. */
		n = err ? strcspn(err, "\n") : 0;
		fprintf(stderr, "%s: postgres.dsn: %.*s\n", f, (int)n,
		    err ? err : "out of memory");
		PQfreemem(err);
		bad = 1;
	} else
		PQconninfoFree(opts);
	return bad ? -1 : 0;
}

/*
 * Started with standard descriptors closed (tallyd <&- >&- 2>&-), the
 * lock file, a listening socket or the log file would take one of them
 * and be replaced by /dev/null when the daemon detaches: the lock would
 * go, and the port.  Hold them with /dev/null first.
 */
static void
tallyd_std_fds(void)
{
	int fd;

	while ((fd = open("/dev/null", O_RDWR)) != -1 && fd <= STDERR_FILENO)
		;
	if (fd > STDERR_FILENO)
		close(fd);
}

/*
 * Descriptors left open by whatever started us (a shell's $(...), an init
 * system's log pipe) would stay open in the daemon and every child, and
 * whoever waits for their end would wait until tallyd stops.  Closed
 * before anything of ours is opened, and before a name service module
 * (sssd's, for server.user) keeps a socket whose number we would reuse.
 */
static void
tallyd_close_inherited(void)
{
#ifdef HAVE_CLOSEFROM
	closefrom(STDERR_FILENO + 1);
#else
	long max = sysconf(_SC_OPEN_MAX);

	for (long fd = STDERR_FILENO + 1; fd < (max > 0 && max < 65536 ?
	    max : 65536); fd++)
		close((int)fd);
#endif
}

int
main(int argc, char *argv[])
{
	static struct config cf;
	struct config_errors errs = { NULL, 0 };
	const char *path = SYSCONFDIR "/tallyd.conf";
	char *abs;
	char **overrides;
	int ch, foreground = 0, test = 0, nover = 0, bad;

	tallyd_std_fds();
	tallyd_close_inherited();
	argv = proctitle_init(argc, argv);
	if ((overrides = calloc(argc, sizeof(*overrides))) == NULL)
		return 1;
	while ((ch = getopt(argc, argv, "c:fho:tv")) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 'f':
			foreground = 1;
			break;
		case 'o':
			overrides[nover++] = optarg;
			break;
		case 't':
			test = 1;
			break;
		case 'v':
			printf("tallyd %s\n", PACKAGE_VERSION);
			free(overrides);
			return 0;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	bad = config_load(&cf, path, overrides, nover, &errs) != 0;
	for (int i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.msgs[i]);
	config_errors_free(&errs);
	/*
	 * Names the file itself accepts (user, group, DSN) are checked even
	 * when other keys are wrong: one run lists every error.  Keys that
	 * did not parse have their defaults here.
	 */
	if (tallyd_check_names(&cf, path) == -1)
		bad = 1;
	if (bad) {
		if (!test)
			fprintf(stderr, "tallyd: bad configuration, not "
			    "starting\n");
		free(overrides);
		return test ? 1 : 2;
	}
	if (test) {
		printf("configuration OK\n");
		free(overrides);
		return 0;
	}
	/* A daemon works from /: its reloads must find the file from there. */
	if (path != NULL && path[0] != '/' && (abs = realpath(path, NULL)) !=
	    NULL)
		path = abs;
	return master_main(&cf, path, overrides, nover, foreground);
}
