/*
 * A worker process: one libh2o event loop serving HTTP/1.1 and h2c on the
 * listening sockets the master bound.
 */
#ifndef TALLY_WORKER_H
#define TALLY_WORKER_H

#include "config.h"
#include "shm.h"

/*
 * Serve until SIGTERM (stop accepting, answer what is in flight, return 0)
 * or SIGQUIT (return 0 at once).  'slot' is this worker's shm slot.
 */
int	worker_main(const struct config *cf, struct shm *shm, int slot,
	    const int *listen_fds, int nlisten);

#endif
