/*
 * Recovery, run by the startup child before any worker exists: opens or
 * creates the journal, cuts a torn tail, refuses corruption, and rebuilds
 * the shared counter table from the local checkpoint onwards.
 */
#ifndef TALLY_RECOVERY_H
#define TALLY_RECOVERY_H

#include "config.h"
#include "shm.h"

/* Exit status for the startup child: 0 ok, 1 retry, 2 fatal. */
int	recovery_run(const struct config *cf, struct shm *shm);

#endif
