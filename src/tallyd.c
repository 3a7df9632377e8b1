/*
 * tallyd: parse the command line and the configuration, then hand over to
 * the master.  Everything else lives in the library.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"
#include "master.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif

static void
usage(void)
{
	fprintf(stderr, "usage: tallyd [-ft] [-c file] [-o section.key=value]...\n");
	exit(1);
}

int
main(int argc, char *argv[])
{
	static struct config cf;
	struct config_errors errs = { NULL, 0 };
	const char *path = SYSCONFDIR "/tallyd.conf";
	char *abs;
	char **overrides;
	int ch, foreground = 0, test = 0, nover = 0;

	if ((overrides = calloc(argc, sizeof(*overrides))) == NULL)
		return 1;
	while ((ch = getopt(argc, argv, "c:fho:t")) != -1) {
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
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	if (config_load(&cf, path, overrides, nover, &errs) != 0) {
		for (int i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.msgs[i]);
		if (!test)
			fprintf(stderr, "tallyd: bad configuration, not "
			    "starting\n");
		config_errors_free(&errs);
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
