/*
 * StatsD: the master pushes the metrics over UDP every flush interval.
 * It only reads the shared region and never waits on the network (the
 * socket is non-blocking), so a slow or absent StatsD server costs the
 * workers nothing.
 */
#ifndef TALLY_STATSD_H
#define TALLY_STATSD_H

#include <stdint.h>

#include "config.h"
#include "metrics.h"
#include "shm.h"

struct statsd {
	int			 fd;		/* -1: off */
	char			 target[256];	/* host:port, as configured */
	char			 prefix[64];
	uint64_t		 next_ms;	/* next push, monotonic */
	uint64_t		 warned_ms;	/* last failure logged */
	uint64_t		 failed;	/* failures not logged since */
	struct metrics_snap	 prev;		/* values of the last push */
};

void	statsd_init(struct statsd *sd);
/*
 * Take cf's metrics.statsd and metrics.prefix: resolve the host (once,
 * here) and open the socket.  A failure is logged and leaves pushes off;
 * it is never fatal.
 */
void	statsd_configure(struct statsd *sd, const struct config *cf);
/*
 * Push when due.  Returns the milliseconds until the next push, or -1
 * when StatsD is off.
 */
int	statsd_tick(struct statsd *sd, const struct shm *shm,
	    uint64_t interval_us);
/* The last push (what changed since the previous one), then close. */
void	statsd_close(struct statsd *sd, const struct shm *shm);

#endif
