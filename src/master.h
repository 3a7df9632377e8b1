/*
 * The master process: supervision, sockets, shared memory, signals.
 */
#ifndef TALLY_MASTER_H
#define TALLY_MASTER_H

#include "config.h"

/* Runs tallyd until it stops; returns the process exit code. */
int	master_main(struct config *cf, int foreground);

#endif
