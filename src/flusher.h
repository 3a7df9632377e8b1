/*
 * The flusher process: replays durable journal frames into PostgreSQL,
 * one transaction per batch, with the checkpoint in the same transaction.
 */
#ifndef TALLY_FLUSHER_H
#define TALLY_FLUSHER_H

#include "config.h"
#include "shm.h"

/* Runs until SIGTERM (final flush, returns 0) or SIGQUIT (returns 0 at once). */
int	flusher_main(const struct config *cf, struct shm *shm);

#endif
