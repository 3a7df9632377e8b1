/*
 * The shared counter table: a fixed-capacity open-addressing hash table in
 * the shared region.  Readers never lock; every change to an entry is made
 * under that entry's lock word, by a named owner (a worker slot, the
 * flusher) that first notes what it is about to change in its own undo
 * record.  A process killed in the middle of a change therefore leaves
 * the entry locked by its id with the old values at hand, and the master
 * puts them back when it reaps it (counters_owner_repair).
 *
 * A worker also keeps, in its owner record, a ledger of the increments it
 * holds: reserved (pending), in a published journal frame, applied.  A
 * worker that dies leaves its ledger behind, and the next worker in its
 * slot settles it (counters_owner_adopt): exactly the published deltas
 * that were not applied are applied, the rest released.
 *
 * When the table is full, entries with nothing unflushed, pending or held
 * are evicted: their value is in PostgreSQL.
 *
 * The table is a cache rebuilt at start from PostgreSQL and the journal.
 */
#ifndef TALLY_COUNTERS_H
#define TALLY_COUNTERS_H

#include <stddef.h>
#include <stdint.h>

struct counter_entry {
	uint64_t	lock;		/* seq (low half, odd: locked) | owner */
	uint32_t	state;		/* COUNTER_EMPTY/READY/EVICTED */
	uint32_t	refs;		/* ledger entries holding it */
	uint64_t	hash;
	int64_t		committed;	/* as PostgreSQL last returned it */
	int64_t		unflushed;	/* durable, not yet in PostgreSQL */
	int64_t		pending;	/* accepted, not yet durable */
	int64_t		pend_neg;	/* the negative deltas of pending */
	uint64_t	flushed_upto;	/* journal end of the last flush seen */
	uint64_t	applied_lsn;	/* journal end of the last delta added */
	uint16_t	key_len;
	uint8_t		committed_known; /* committed came from PostgreSQL */
	uint8_t		pad[5];
	char		key[];		/* max_key_bytes */
};

/*
 * EVICTED keeps its key (key_len 0: none) and committed value, so the
 * same key coming back finds them; another key may take the slot over,
 * or a rebuild of the index drop it (EMPTY again).
 */
enum { COUNTER_EMPTY = 0, COUNTER_READY = 2, COUNTER_EVICTED = 3 };

#define COUNTERS_SEED_GENS	256

struct counters {
	uint64_t	capacity;	/* max_keys: entries that may be held */
	uint64_t	nslots;		/* power of two > capacity */
	uint64_t	stride;		/* bytes per slot */
	uint64_t	max_key_bytes;
	uint64_t	used;		/* READY slots; changed under ins_lock */
	uint32_t	ins_lock;	/* owner id inserting or evicting; 0: none */
	uint32_t	forgot;		/* a kept committed value was dropped */
	uint64_t	hand;		/* where the next eviction scan starts */
	uint64_t	evictable_gen;	/* bumped when an entry may have freed */
	uint64_t	scanned_gen;	/* evictable_gen of the last vain scan */
	uint64_t	evictions;
	uint64_t	nentries;	/* entries handed out, in order */
	uint64_t	entries_off;	/* of the entry array, in slots[] */
	uint64_t	index_seq;	/* odd while the index is rebuilt */
	uint64_t	bound;		/* index words bound; under ins_lock */
	uint64_t	free_hand;	/* where the search for a free entry resumes */
	uint64_t	rebuilds;
	uint32_t	preloaded;	/* every key PostgreSQL had is here */
	/* Keys whose slot was taken over, by hash: see counters_seed. */
	uint32_t	takeovers[COUNTERS_SEED_GENS];
	/* The index (nslots words), then the entries (nslots of them). */
	uint8_t		slots[] __attribute__((aligned(64)));
};

/* --- owners --- */

#define COUNTERS_LEDGER		32768	/* increments a worker may hold */
#define COUNTERS_ANON		0xffffu	/* id of a lone process (recovery) */

/* One held increment: the entry's slot, flags in the top bits. */
struct counter_led {
	uint64_t	word;
	int64_t		value;
};
#define LED_APPLIED	(1ULL << 63)
#define LED_SLOT(w)	((w) & ~LED_APPLIED)

/* What an owner is changing: the entry's and its own values before. */
struct counter_undo {
	uint64_t	entry;		/* slot + 1 locked or being locked */
	uint32_t	valid;		/* the values below are taken */
	uint32_t	state;
	uint32_t	refs;
	uint16_t	key_len;
	uint8_t		committed_known;
	uint8_t		ins;		/* ins_lock held: used below counts */
	uint64_t	hash;
	int64_t		committed;
	int64_t		unflushed;
	int64_t		pending;
	int64_t		pend_neg;
	uint64_t	flushed_upto;
	uint64_t	applied_lsn;
	uint64_t	used;
	uint64_t	head;
	uint64_t	tail;
	uint64_t	led_idx;	/* ledger entry changed, + 1 */
	uint64_t	led_word;
};

struct counter_owner {
	uint32_t	id;		/* 1..: lock owner id */
	uint32_t	ledger;		/* ledger capacity (0: none) */
	struct counter_undo undo;
	/*
	 * The ledger: [tail, head) held; of those, [tail, pub) are in
	 * published journal frames.  While a frame is being published,
	 * wr_lsn is its position and [pub, wr_end) its increments.
	 */
	uint64_t	head;
	uint64_t	tail;
	uint64_t	pub;
	uint64_t	pub_lsn;	/* end of the last frame published */
	uint64_t	wr_end;
	uint64_t	wr_lsn;
	struct counter_led led[] __attribute__((aligned(16)));
};

size_t	counters_owner_size(uint32_t ledger);
void	counters_owner_init(struct counter_owner *o, uint32_t id,
	    uint32_t ledger);

/* Bytes needed for a table of max_keys keys of up to max_key_bytes. */
size_t	counters_size(uint64_t max_keys, size_t max_key_bytes);
/* Initialise a zeroed area of counters_size() bytes. */
struct counters *counters_init(void *mem, uint64_t max_keys,
	    size_t max_key_bytes);

uint64_t counters_hash(const char *key, size_t len);
/*
 * Start loading the index word key hashes to, so that a look-up of key
 * a little later finds it in cache; a hint only.
 */
void	counters_prefetch(const struct counters *c, const char *key,
	    size_t len);
/*
 * The same for a key whose counters_hash() is hash, in two steps for a
 * loop over many keys: step 0 the index word; step 1, some keys later,
 * the entry that word names (if the word has arrived by then).
 */
void	counters_prefetch_hash(const struct counters *c, uint64_t hash,
	    int step);

/*
 * A lone process about to insert up to 'more' keys: map the entries they
 * may take in one call rather than a page fault each.  *done (0 at first)
 * is how far this process has mapped.
 */
void	counters_populate(struct counters *c, uint64_t *done, uint64_t more);

/* --- a worker's increments --- */

enum counters_rc {
	COUNTERS_OK = 0,
	COUNTERS_FULL,		/* no room, nothing evictable */
	COUNTERS_OVERFLOW,	/* the total could leave int64 */
	COUNTERS_BUSY,		/* the owner's ledger is full */
	COUNTERS_UNKNOWN	/* a new key: ask PostgreSQL for its total */
};

/*
 * What PostgreSQL holds for a key the table does not, read before its
 * first increment: without it the table would take the key as new, its
 * total as 0, and both the 202's total and the int64 guard would be
 * wrong.  gen is counters_seed_gen() from before the question was sent:
 * should this node flush the key, evict it and give its slot to another
 * key meanwhile, the answer may be older than that flush, and is asked
 * again.
 */
struct counters_seed {
	uint32_t	gen;
	int		known;		/* 0: PostgreSQL could not be asked */
	int64_t		committed;	/* its value, 0 when it has no row */
};

/*
 * The flusher, at start: remember a key PostgreSQL holds, as an evicted
 * entry (no room taken from max_keys), so that its first increment needs
 * no look-up.  1 remembered, 0 held already, -1 no room for more.  Once
 * every key PostgreSQL held is in (counters_preload_done), a key that is
 * not is known to have no row, until a key of its hash is forgotten.
 */
int	counters_preload(struct counters *c, struct counter_owner *o,
	    const char *key, size_t len, int64_t committed);
void	counters_preload_done(struct counters *c);
/* Another node writes too: keys not held need asking again.  1 if set. */
int	counters_preload_void(struct counters *c);

uint32_t counters_seed_gen(struct counters *c, const char *key,
	    size_t len);

/*
 * Reserve delta for key (inserting it, evicting if the table is full) as
 * ledger entry *idx of o, holding the entry until released.  A key the
 * table does not hold is inserted only with a seed that is still
 * current; else COUNTERS_UNKNOWN, and nothing changed.
 */
enum counters_rc counters_acquire(struct counters *c, struct counter_owner *o,
	    const char *key, size_t len, int64_t delta,
	    const struct counters_seed *seed, struct counter_entry **ep,
	    uint64_t *idx);
/* Ledger entries up to end are in a frame being published at lsn. */
void	counters_publishing(struct counter_owner *o, uint64_t end, uint64_t lsn);
/* ... and that frame, ending at end_lsn, is published. */
void	counters_published(struct counter_owner *o, uint64_t end_lsn);
/* Ledger entry idx is durable: add it; *total is the total after. */
void	counters_apply(struct counters *c, struct counter_owner *o,
	    uint64_t idx, uint64_t frame_end, int64_t *total, int *overflow);
/* Let go of the oldest (tail) or newest (head) ledger entry. */
void	counters_release_tail(struct counters *c, struct counter_owner *o);
void	counters_release_head(struct counters *c, struct counter_owner *o);
uint64_t counters_ledger_head(const struct counter_owner *o);

/*
 * The master, once o's process is dead: undo its change in progress and
 * let go of the locks it held.
 */
void	counters_owner_repair(struct counters *c, struct counter_owner *o);
/*
 * The next process in o's place, before anything else: settle the ledger
 * of its dead predecessor.  published(arg, lsn) says whether the frame at
 * lsn was published.  Returns how many deltas it applied.
 */
uint64_t counters_owner_adopt(struct counters *c, struct counter_owner *o,
	    int (*published)(void *, uint64_t), void *arg);
/* The oldest frame position any owner is still publishing, or 0. */
uint64_t counters_owner_wr_lsn(const struct counter_owner *o);

/* --- the flusher --- */

/*
 * The batch ending at upto took flushed of key's unflushed delta out of
 * the journal's hands: applied of it reached PostgreSQL, the rest was
 * there already or was parked in tally_rejected.  PostgreSQL's total is
 * then total (have_total), else committed grows by applied.  An entry
 * that already saw upto is left alone, so a flusher that died half-way
 * may do its batch again.
 */
void	counters_commit_key(struct counters *c, struct counter_owner *o,
	    const char *key, size_t len, int have_total, int64_t total,
	    int64_t applied, int64_t flushed, uint64_t upto);
/* Committed value learnt from PostgreSQL (0 when it has no row). */
void	counters_set_committed_key(struct counters *c, struct counter_owner *o,
	    const char *key, size_t len, int64_t committed);
/* Copy slot i's key if it holds one.  Returns its length, or 0. */
size_t	counters_slot_key(struct counters *c, uint64_t i, char *buf);

/* --- readers --- */

/*
 * key's values in one consistent read.  COUNTERS_PEEK_HELD when held,
 * COUNTERS_PEEK_NONE when not (its total is then PostgreSQL's).
 * COUNTERS_PEEK_BARE when held with nothing in it: no durable increment
 * since the key was taken in, and a committed value of 0, so whether any
 * increment of it was ever acknowledged is PostgreSQL's to say (its
 * increments so far may all be pending, or refused).
 */
enum { COUNTERS_PEEK_NONE = 0, COUNTERS_PEEK_HELD = 1,
	COUNTERS_PEEK_BARE = 2 };
int	counters_peek(struct counters *c, const char *key, size_t len,
	    int64_t *committed, int64_t *unflushed, int *known);
/*
 * The same, giving up (-1) after 'tries' waits for a locked entry: for
 * the master, which must never wait on a dead owner it has to repair.
 */
int	counters_peek_try(struct counters *c, const char *key, size_t len,
	    int64_t *committed, int64_t *unflushed, int *known, int tries);
/*
 * key's total as a node answers it (committed + unflushed), when held
 * and PostgreSQL's part is known: counters_peek's COUNTERS_PEEK_HELD or
 * COUNTERS_PEEK_BARE, with *total set.  -1 when not held, not known, or
 * beyond 64 bits.
 */
int	counters_peek_total(struct counters *c, const char *key, size_t len,
	    int64_t *total);

uint64_t counters_count(const struct counters *c);

/* --- a lone process (recovery) and tests: no owner, no ledger --- */

/* The entry for key, or NULL when the table does not hold it. */
struct counter_entry *counters_lookup(struct counters *c, const char *key,
	    size_t len);
/* The entry for key, inserted (zero) if absent; NULL when full. */
struct counter_entry *counters_get(struct counters *c, const char *key,
	    size_t len);
/* A durable delta for this key, from the frame ending at frame_end. */
void	counters_add(struct counters *c, struct counter_entry *e,
	    int64_t delta, uint64_t frame_end);
/*
 * Count delta as pending; -1 (nothing changed) when the total could leave
 * int64, whichever of the pending deltas land.
 */
int	counters_reserve(struct counters *c, struct counter_entry *e,
	    int64_t delta);
void	counters_unreserve(struct counters *c, struct counter_entry *e,
	    int64_t delta);
/* A consistent (committed, unflushed) pair. */
void	counters_read(const struct counter_entry *e, int64_t *committed,
	    int64_t *unflushed);
/* committed + unflushed; sets *overflow when the sum leaves int64. */
int64_t	counters_total(const struct counter_entry *e, int *overflow);
void	counters_commit(struct counters *c, struct counter_entry *e,
	    int64_t committed, int64_t flushed);
/* Recovery: this entry's committed value must come from PostgreSQL. */
void	counters_forget_committed(struct counters *c, struct counter_entry *e);
void	counters_set_committed(struct counters *c, struct counter_entry *e,
	    int64_t committed);

/* Slot i (0..counters_slots()), or NULL when it holds no key. */
struct counter_entry *counters_slot(struct counters *c, uint64_t i);
/* How many slots were ever handed out: iterations stop there. */
uint64_t counters_slots(const struct counters *c);

#endif
