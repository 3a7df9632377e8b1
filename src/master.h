/*
 * The master process: supervision, sockets, shared memory, signals.
 */
#ifndef TALLY_MASTER_H
#define TALLY_MASTER_H

#include "config.h"

/* Runs tallyd until it stops; returns the process exit code. */
/*
 * Runs tallyd until it stops; returns the process exit code.  path and
 * overrides are kept to re-read the configuration on SIGHUP.
 */
int	master_main(struct config *cf, const char *path,
	    char *const *overrides, int noverrides, int foreground);

#endif
