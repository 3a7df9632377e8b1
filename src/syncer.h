/*
 * The syncer process: finds the end of the contiguous complete frames,
 * fdatasync's the journal up to it, publishes the durable position and
 * wakes the workers.  One fsync covers every frame written before it.
 */
#ifndef TALLY_SYNCER_H
#define TALLY_SYNCER_H

#include "config.h"
#include "shm.h"

/* SIGTERM: final sync, returns 0.  SIGQUIT: returns 0 at once. */
int	syncer_main(const struct config *cf, struct shm *shm);
/* Wake the syncer (or any eventfd sleeper). */
void	syncer_kick(int efd);

#endif
