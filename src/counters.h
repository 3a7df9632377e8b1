/*
 * The shared counter table: a fixed-capacity open-addressing hash table in
 * the shared region.  Workers find or insert keys and add durable deltas
 * with atomic operations; no lock is taken on the hot path.  The flusher
 * alone moves deltas into the committed value, under a per-entry sequence
 * counter so that readers never see a flushed delta twice or not at all.
 *
 * The table is a cache rebuilt at start from PostgreSQL and the journal.
 */
#ifndef TALLY_COUNTERS_H
#define TALLY_COUNTERS_H

#include <stddef.h>
#include <stdint.h>

struct counter_entry {
	uint32_t	state;		/* COUNTER_EMPTY/CLAIMED/READY */
	uint32_t	seq;		/* odd while the flusher updates */
	uint64_t	hash;
	int64_t		committed;	/* as PostgreSQL last returned it */
	int64_t		unflushed;	/* durable, not yet in PostgreSQL */
	int64_t		pending;	/* accepted, not yet durable */
	uint16_t	key_len;
	uint8_t		committed_known; /* committed came from PostgreSQL */
	uint8_t		pad[5];
	char		key[];		/* max_key_bytes */
};

enum { COUNTER_EMPTY = 0, COUNTER_CLAIMED = 1, COUNTER_READY = 2 };

struct counters {
	uint64_t	capacity;	/* max_keys: entries that may be held */
	uint64_t	nslots;		/* power of two > capacity */
	uint64_t	stride;		/* bytes per slot */
	uint64_t	max_key_bytes;
	uint64_t	used;		/* atomic: READY or CLAIMED slots */
	uint8_t		slots[] __attribute__((aligned(64)));
};

/* Bytes needed for a table of max_keys keys of up to max_key_bytes. */
size_t	counters_size(uint64_t max_keys, size_t max_key_bytes);
/* Initialise a zeroed area of counters_size() bytes. */
struct counters *counters_init(void *mem, uint64_t max_keys,
	    size_t max_key_bytes);

uint64_t counters_hash(const char *key, size_t len);
/* The entry for key, or NULL when the table does not hold it. */
struct counter_entry *counters_lookup(struct counters *c, const char *key,
	    size_t len);
/* The entry for key, inserted (zero) if absent; NULL when full. */
struct counter_entry *counters_get(struct counters *c, const char *key,
	    size_t len);

/* A durable delta for this key (atomic add). */
void	counters_add(struct counter_entry *e, int64_t delta);
/*
 * Worker, before journaling: count delta as pending, so that concurrent
 * requests cannot together push the total out of int64.  -1 (nothing
 * changed) when committed + unflushed + pending + delta would overflow.
 */
int	counters_reserve(struct counter_entry *e, int64_t delta);
/* Undo counters_reserve: the delta became durable, or was refused. */
void	counters_unreserve(struct counter_entry *e, int64_t delta);
/* A consistent (committed, unflushed) pair. */
void	counters_read(const struct counter_entry *e, int64_t *committed,
	    int64_t *unflushed);
/* committed + unflushed; sets *overflow when the sum leaves int64. */
int64_t	counters_total(const struct counter_entry *e, int *overflow);
/*
 * Flusher: PostgreSQL now holds 'committed' for this key, which includes
 * 'flushed' of the unflushed delta.  One atomic step for readers.
 */
void	counters_commit(struct counter_entry *e, int64_t committed,
	    int64_t flushed);
/* Recovery: this entry's committed value must come from PostgreSQL. */
void	counters_forget_committed(struct counter_entry *e);
/* Flusher, at (re)connect: committed value learnt from PostgreSQL. */
void	counters_set_committed(struct counter_entry *e, int64_t committed);

uint64_t counters_count(const struct counters *c);
/* Slot i (0..nslots), or NULL when empty; for iteration. */
struct counter_entry *counters_slot(struct counters *c, uint64_t i);

#endif
