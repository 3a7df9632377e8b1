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
/*
 * sync = group, in a worker: make the journal durable up to at least want
 * with this process's own fdatasync (group commit without a round trip to
 * the syncer), and wake the other workers it covered.  1: durable_lsn >=
 * want; 0: a frame before want is not yet complete, so whoever completes
 * it (its writer, or the syncer for a dead one) will; -1: the fdatasync
 * failed (sync_failed is set).
 */
int	syncer_commit(struct journal *j, struct shm_hdr *h, uint64_t want);

#endif
