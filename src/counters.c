/*
 * The shared counter table.
 *
 * Open addressing with linear probing over a power-of-two index of 8-byte
 * words, at most three quarters of them held so probe runs stay short.
 * A word is 0 or the number (plus one) of the entry, or slot, bound to
 * that position until the index is rebuilt; entries are handed out in
 * order from a dense array.  Keys hashed all over the index thus sit
 * together: 100k keys touch a few thousand pages rather than one page
 * each, and every process of the shared mapping takes a page fault on
 * the first touch of a page.  A position is bound under ins_lock: count
 * the entry out (nentries, or free_hand past it), then write the word;
 * the entry is still EMPTY then, so a death in between leaves a word
 * that reads as the end of a probe run (and is reused as such), or at
 * worst one entry never bound, which the search for EMPTY entries finds
 * again.
 *
 * Rebuilds.  An evicted entry keeps its position, and a new key binds
 * one only when its run has no EVICTED entry to take over, so bound words
 * only grow: once a long-lived process has seen more distinct keys than
 * positions, every word is bound and each miss, and each insert under
 * ins_lock, walks the whole index (milliseconds at a million keys, every
 * worker queued behind ins_lock).  So the insert that finds seven eighths
 * of the words bound first rebuilds the index: every READY entry bound
 * again at the first free word of its run, EVICTED ones too while the
 * index stays five eighths full, the rest dropped to EMPTY (their
 * committed values forgotten, as on a takeover) for the search from
 * free_hand to hand out once no entry is left that was never used.
 * Entries do not move, since ledgers and workers hold slot numbers and
 * pointers; only the words do.  Readers still do not lock: the rebuild
 * keeps index_seq odd while it runs, and a reader's miss counts only if
 * index_seq was even and unchanged around its walk; a hit stands on the
 * entry's own seqlock.  The index is a function of the entries' states
 * and hashes, so a rebuild left half done by a killed process (index_seq
 * odd, ins_lock still its) is redone whole by the repair, once the drop
 * it was in the middle of is undone.  A drop only tries an entry's lock,
 * and keeps the entry bound when it is taken: the master, redoing a
 * rebuild, must not wait on another dead owner's lock.
 *
 * Locks.  Each entry has a lock word: a sequence number in its low half,
 * odd while the entry is locked, and the owner's id in its high half.
 * Every change to an entry happens between entry_lock() and
 * entry_unlock(), so readers use it as a seqlock: they read without
 * locking and start again when the word moved.  Inserting a key,
 * evicting one and rebuilding the index also take the table's ins_lock,
 * so that the keys and
 * states of slots change one at a time: two inserts of one key can then
 * never pick two slots, and a slot is never taken over while another
 * insert walks past it.  Deltas, reservations and commits of a held key
 * take only the entry's lock.
 *
 * Death.  A process can be killed between any two instructions, and so
 * while it holds a lock.  Before it locks, an owner writes in its undo
 * record which entry it is about to lock; once locked, it copies the
 * entry's values (and its own ledger positions, and 'used' under
 * ins_lock) there and only then sets 'valid'.  When the master reaps a
 * dead owner (counters_owner_repair), no other process can have changed
 * the entry since, because the lock word still names the dead owner:
 *
 *	undo.entry unset, or the entry not locked by the dead id
 *		it died before locking or after unlocking: nothing to do;
 *	locked by it, valid unset
 *		it died before changing anything: unlock;
 *	locked by it, valid set
 *		put every value back (a half-done change is undone whole),
 *		then unlock.
 *
 * Readers never trust what they read under an odd or moved sequence, so
 * what the dead owner wrote before the repair was never seen.  The
 * unlock comes before 'valid' is cleared; in between, the entry is no
 * longer locked by the owner and the repair leaves it alone.  ins_lock
 * held by a dead owner is released by the same repair; 'used' changes
 * only under it, inside an entry's change, so it is put back with that.
 *
 * The ledger.  A worker records each increment it reserves as one ledger
 * entry, which holds a reference on the counter entry (refs) so that it
 * can be neither evicted nor taken over.  The reservation, the addition
 * of the durable delta (LED_APPLIED) and the release each change the
 * entry and the ledger together, under the entry's lock, so each is all
 * or nothing across a crash.  Around the publication of its frame the
 * worker notes the frame's position (wr_lsn) and, after, how far the
 * ledger is published (pub).  A worker that died leaves: applied entries
 * (released only), entries below pub (in a published frame: applied now),
 * entries of the frame at wr_lsn (applied if that frame was published,
 * which only the journal can say), and the rest (never journaled:
 * released).  counters_owner_adopt does exactly this, each step again an
 * entry change, so a second death during it is repaired the same way.
 *
 * Eviction.  An entry may go when nothing refers to it (refs), nothing
 * is pending or unflushed, and PostgreSQL saw every frame whose delta it
 * added (applied_lsn <= flushed_upto).  The last condition matters: with
 * +5 and -5 both added but not flushed, unflushed is 0, but should the
 * key come back before the flush of the +5, that flush would be taken
 * out of the new entry.  An evicted slot keeps its key and committed
 * value (EVICTED); the key coming back revives it in place.  Another key
 * may take the slot over, and from then on the table cannot tell a new
 * key from a forgotten one.  Nor can it after a restart, or for another
 * node's keys: so a worker inserts a key only with PostgreSQL's total for
 * it (counters_seed), read before the insert, or knowing it has none.
 * The flusher reads every key PostgreSQL holds at start, as EVICTED
 * entries (counters_preload); once all are in, and while no other node
 * writes, a key of a hash no takeover touched is known to have no row.
 * A takeover is counted, by the hash of the key taken over, and so is a
 * rebuild's drop of a keyed entry: an answer read before either may
 * predate this node's last flush of the key, and is asked again.
 * Between rebuilds, slots never return to EMPTY, so a probe run never
 * loses a key it passed; EVICTED slots are reused by inserts.
 *
 * Bounds.  A delta is reserved only if the total stays within int64
 * however the reservations then in flight end: each may be applied or
 * released (its batch refused, its worker killed before the frame was
 * published).  The net of them is not enough: near INT64_MAX a pending
 * -1000 would let a +1000 in, and should the -1000 then be released,
 * the +1000, already accepted, would push the total out of int64 and
 * PostgreSQL would refuse it.  So an entry keeps, beside pending, the
 * sum of its negative pending deltas (pend_neg); pending - pend_neg is
 * the sum of the positive ones.  The worst cases are all positive ones
 * landing and none of the negative, or the reverse.
 */
#include <sys/mman.h>

#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "counters.h"

#define ST(p, v)	__atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define LD(p)		__atomic_load_n((p), __ATOMIC_RELAXED)

static uint64_t
slots_for(uint64_t max_keys)
{
	uint64_t n = 16;

	while (n < max_keys + max_keys / 3 + 1)
		n <<= 1;
	return n;
}

static uint64_t
stride_for(size_t max_key_bytes)
{
	return (sizeof(struct counter_entry) + max_key_bytes + 63) & ~63ULL;
}

static uint64_t
index_bytes(uint64_t nslots)
{
	return (nslots * sizeof(uint64_t) + 63) & ~63ULL;
}

size_t
counters_size(uint64_t max_keys, size_t max_key_bytes)
{
	uint64_t n = slots_for(max_keys);

	return sizeof(struct counters) + index_bytes(n) +
	    n * stride_for(max_key_bytes);
}

struct counters *
counters_init(void *mem, uint64_t max_keys, size_t max_key_bytes)
{
	struct counters *c = mem;

	c->capacity = max_keys;
	c->nslots = slots_for(max_keys);
	c->stride = stride_for(max_key_bytes);
	c->max_key_bytes = max_key_bytes;
	c->entries_off = index_bytes(c->nslots);
	c->nentries = 0;
	c->used = 0;
	c->scanned_gen = UINT64_MAX;
	return c;
}

size_t
counters_owner_size(uint32_t ledger)
{
	return (sizeof(struct counter_owner) +
	    (size_t)ledger * sizeof(struct counter_led) + 63) & ~(size_t)63;
}

void
counters_owner_init(struct counter_owner *o, uint32_t id, uint32_t ledger)
{
	o->id = id;
	o->ledger = ledger;
}

uint64_t
counters_hash(const char *key, size_t len)
{
	/* FNV-1a, then a final mix so that low bits depend on every byte. */
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)key[i];
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

/*
 * Under random keys a look-up misses the cache twice, on the index word
 * and then on the entry it names: the two loads were nine tenths of a
 * probe, and the probe 7% of a worker's time.  A worker asks for the
 * first as soon as it has parsed the key, so the checks that follow
 * overlap it.
 */
void
counters_prefetch(const struct counters *c, const char *key, size_t len)
{
	uint64_t pos = counters_hash(key, len) & (c->nslots - 1);

	__builtin_prefetch((const uint64_t *)(const void *)c->slots + pos);
}

static const struct counter_entry *
entry_at_const(const struct counters *c, uint64_t i)
{
	return (const struct counter_entry *)(const void *)(c->slots +
	    c->entries_off + i * c->stride);
}

void
counters_populate(struct counters *c, uint64_t *done, uint64_t more)
{
	uint64_t want = c->nentries + more;
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
	uintptr_t from, to;

	if (want <= *done)
		return;
	if (want < *done + 1024)
		want = *done + 1024;
	if (want > c->nslots)
		want = c->nslots;
	from = (uintptr_t)entry_at_const(c, *done) & ~(uintptr_t)(page - 1);
	to = ((uintptr_t)entry_at_const(c, want) + page - 1) &
	    ~(uintptr_t)(page - 1);
	/* A hint: without it, each page faults in on its first touch. */
	(void)madvise((void *)from, to - from, MADV_POPULATE_WRITE);
	*done = want;
}

void
counters_prefetch_hash(const struct counters *c, uint64_t hash, int step)
{
	const uint64_t *w = (const uint64_t *)(const void *)c->slots +
	    (hash & (c->nslots - 1));
	const char *e;
	uint64_t i;

	if (step == 0) {
		__builtin_prefetch(w);
		return;
	}
	/* A hint: a word that moved since only wastes the prefetch. */
	i = __atomic_load_n(w, __ATOMIC_RELAXED);
	if (i == 0 || i > c->nslots)
		return;
	e = (const char *)entry_at_const(c, i - 1);
	/* The lock word, and the key just past the first line. */
	__builtin_prefetch(e);
	__builtin_prefetch(e + 64);
}

static struct counter_entry *
entry_at(struct counters *c, uint64_t i)
{
	return (struct counter_entry *)(void *)(c->slots + c->entries_off +
	    i * c->stride);
}

static uint64_t
slot_of(const struct counters *c, const struct counter_entry *e)
{
	return ((const uint8_t *)e - c->slots - c->entries_off) / c->stride;
}

static uint64_t *
index_at(struct counters *c, uint64_t pos)
{
	return (uint64_t *)(void *)c->slots + pos;
}

/* The entry bound to index position pos, NULL when none. */
static struct counter_entry *
bound_at(struct counters *c, uint64_t pos, uint64_t *slot)
{
	uint64_t w = __atomic_load_n(index_at(c, pos), __ATOMIC_ACQUIRE);

	if (w == 0 || w > c->nslots)
		return NULL;
	*slot = w - 1;
	return entry_at(c, w - 1);
}

uint64_t
counters_slots(const struct counters *c)
{
	uint64_t n = __atomic_load_n(&c->nentries, __ATOMIC_ACQUIRE);

	return n < c->nslots ? n : c->nslots;
}

/* --- locks --- */

static void
entry_lock(struct counter_entry *e, uint32_t id)
{
	uint64_t w, nw;

	for (;;) {
		w = __atomic_load_n(&e->lock, __ATOMIC_ACQUIRE);
		if (w & 1) {
			sched_yield();
			continue;
		}
		nw = (uint64_t)(uint32_t)(w + 1) | (uint64_t)id << 32;
		if (__atomic_compare_exchange_n(&e->lock, &w, nw, 0,
		    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
			return;
	}
}

/* entry_lock() if it is free now; 0 when it is not. */
static int
entry_trylock(struct counter_entry *e, uint32_t id)
{
	uint64_t w = __atomic_load_n(&e->lock, __ATOMIC_ACQUIRE), nw;

	if (w & 1)
		return 0;
	nw = (uint64_t)(uint32_t)(w + 1) | (uint64_t)id << 32;
	return __atomic_compare_exchange_n(&e->lock, &w, nw, 0,
	    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

static void
entry_unlock(struct counter_entry *e)
{
	uint64_t w = LD(&e->lock);

	__atomic_store_n(&e->lock, (uint64_t)(uint32_t)(w + 1),
	    __ATOMIC_RELEASE);
}

static int
locked_by(const struct counter_entry *e, uint32_t id)
{
	uint64_t w = __atomic_load_n(&e->lock, __ATOMIC_ACQUIRE);

	return (w & 1) && (uint32_t)(w >> 32) == id;
}

static void
ins_lock(struct counters *c, uint32_t id)
{
	uint32_t z;

	for (;;) {
		z = 0;
		if (__atomic_compare_exchange_n(&c->ins_lock, &z, id, 0,
		    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
			return;
		sched_yield();
	}
}

static void
ins_unlock(struct counters *c)
{
	__atomic_store_n(&c->ins_lock, 0, __ATOMIC_RELEASE);
}

static uint32_t
owner_id(const struct counter_owner *o)
{
	return o ? o->id : COUNTERS_ANON;
}

/* With e locked by o: take the undo. */
static void
op_take(struct counters *c, struct counter_owner *o, struct counter_entry *e,
    int ins)
{
	struct counter_undo *u = &o->undo;

	u->state = e->state;
	u->refs = e->refs;
	u->key_len = e->key_len;
	u->committed_known = e->committed_known;
	u->hash = e->hash;
	u->committed = e->committed;
	u->unflushed = e->unflushed;
	u->pending = e->pending;
	u->pend_neg = e->pend_neg;
	u->flushed_upto = e->flushed_upto;
	u->applied_lsn = e->applied_lsn;
	u->ins = ins;
	u->used = c->used;
	u->head = o->head;
	u->tail = o->tail;
	u->led_idx = 0;
	__atomic_store_n(&u->valid, 1, __ATOMIC_RELEASE);
}

/* Lock e for a change by o (NULL: a lone process), taking the undo. */
static void
op_begin(struct counters *c, struct counter_owner *o, struct counter_entry *e,
    int ins)
{
	if (o == NULL) {
		entry_lock(e, COUNTERS_ANON);
		return;
	}
	__atomic_store_n(&o->undo.entry, slot_of(c, e) + 1, __ATOMIC_RELEASE);
	entry_lock(e, o->id);
	op_take(c, o, e, ins);
}

/* op_begin() if e is free now; 0 (nothing locked) when it is not. */
static int
op_try_begin(struct counters *c, struct counter_owner *o,
    struct counter_entry *e, int ins)
{
	if (o == NULL)
		return entry_trylock(e, COUNTERS_ANON);
	__atomic_store_n(&o->undo.entry, slot_of(c, e) + 1, __ATOMIC_RELEASE);
	if (!entry_trylock(e, o->id)) {
		__atomic_store_n(&o->undo.entry, 0, __ATOMIC_RELEASE);
		return 0;
	}
	op_take(c, o, e, ins);
	return 1;
}

static void
op_end(struct counter_owner *o, struct counter_entry *e)
{
	entry_unlock(e);
	if (o == NULL)
		return;
	__atomic_store_n(&o->undo.valid, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&o->undo.entry, 0, __ATOMIC_RELEASE);
}

/* Note, within a change, the ledger entry it is about to alter. */
static struct counter_led *
op_led(struct counter_owner *o, uint64_t idx)
{
	struct counter_led *l = &o->led[idx % o->ledger];

	o->undo.led_word = l->word;
	__atomic_store_n(&o->undo.led_idx, idx + 1, __ATOMIC_RELEASE);
	return l;
}

/* --- the index --- */

/* Bound words past which the index is rebuilt, so probe runs stay short. */
static uint64_t
index_limit(const struct counters *c)
{
	return c->nslots - c->nslots / 8;
}

/* Bind entry i to the first unbound word of the run hash h starts. */
static void
index_place(struct counters *c, uint64_t i, uint64_t h)
{
	uint64_t mask = c->nslots - 1, pos = h & mask;

	while (LD(index_at(c, pos)) != 0)
		pos = (pos + 1) & mask;
	ST(index_at(c, pos), i + 1);
}

/* The takeovers of keys of hash h: see counters_seed. */
static uint32_t *
seed_gen_at(struct counters *c, uint64_t h)
{
	return &c->takeovers[h % COUNTERS_SEED_GENS];
}

/*
 * Within a change: e's key, if it still has one, is about to go with its
 * committed value (another key takes its slot, or a rebuild drops it).
 */
static void
entry_forget(struct counters *c, const struct counter_entry *e)
{
	if (e->key_len == 0)
		return;
	ST(&c->forgot, 1);
	ST(seed_gen_at(c, e->hash), *seed_gen_at(c, e->hash) + 1);
}

/*
 * Within a rebuild: EVICTED e becomes EMPTY, for a new key to take.  0
 * when it is locked (a probe's stale slot, a dead owner): it stays.
 */
static int
entry_drop(struct counters *c, struct counter_owner *o, struct counter_entry *e)
{
	if (!op_try_begin(c, o, e, 1))
		return 0;
	entry_forget(c, e);
	ST(&e->state, COUNTER_EMPTY);
	e->key_len = 0;
	op_end(o, e);
	return 1;
}

/*
 * Bind every READY entry again, and EVICTED ones while the index stays
 * at most five eighths full; drop the others.  Under ins_lock, by o (or
 * by the repair, for the dead o that left it half done).
 */
static void
index_rebuild(struct counters *c, struct counter_owner *o)
{
	uint64_t n = counters_slots(c), ready = LD(&c->used), bound = 0;
	uint64_t target = c->nslots / 2 + c->nslots / 8;
	uint64_t keep = ready < target ? target - ready : 0;
	struct counter_entry *e;
	uint32_t st;

	__atomic_store_n(&c->index_seq, LD(&c->index_seq) | 1,
	    __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	for (uint64_t pos = 0; pos < c->nslots; pos++)
		ST(index_at(c, pos), 0);
	for (uint64_t i = 0; i < n; i++) {
		e = entry_at(c, i);
		if ((st = LD(&e->state)) == COUNTER_EMPTY)
			continue;
		if (st == COUNTER_EVICTED) {
			if (keep == 0 && entry_drop(c, o, e))
				continue;
			if (keep > 0)
				keep--;
		}
		index_place(c, i, e->hash);
		bound++;
	}
	c->bound = bound;
	c->free_hand = 0;
	c->rebuilds++;
	__atomic_store_n(&c->index_seq, LD(&c->index_seq) + 1,
	    __ATOMIC_RELEASE);
}

/*
 * An entry for a new key to bind: the next never handed out, else the
 * next EMPTY one from free_hand on (dropped by a rebuild, or left by an
 * insert that died).  Under ins_lock.  -1 when there is none.
 */
static int64_t
entry_free(struct counters *c)
{
	uint64_t i = c->nentries;

	if (i < c->nslots) {
		__atomic_store_n(&c->nentries, i + 1, __ATOMIC_RELEASE);
		return i;
	}
	for (uint64_t k = 0; k < c->nslots; k++) {
		if (c->free_hand >= c->nslots)
			c->free_hand = 0;
		i = c->free_hand++;
		if (LD(&entry_at(c, i)->state) == COUNTER_EMPTY)
			return i;
	}
	return -1;
}

void
counters_owner_repair(struct counters *c, struct counter_owner *o)
{
	struct counter_undo *u = &o->undo;
	struct counter_entry *e;

	if (u->entry != 0 && u->entry <= c->nslots &&
	    locked_by(e = entry_at(c, u->entry - 1), o->id)) {
		if (u->valid) {
			/* A half-written key must not match anything. */
			if (u->ins && u->state == COUNTER_EVICTED &&
			    (e->hash != u->hash || e->key_len != u->key_len))
				u->key_len = 0;
			ST(&e->state, u->state);
			ST(&e->refs, u->refs);
			e->key_len = u->key_len;
			e->committed_known = u->committed_known;
			e->hash = u->hash;
			ST(&e->committed, u->committed);
			ST(&e->unflushed, u->unflushed);
			ST(&e->pending, u->pending);
			ST(&e->pend_neg, u->pend_neg);
			e->flushed_upto = u->flushed_upto;
			e->applied_lsn = u->applied_lsn;
			if (u->ins)
				ST(&c->used, u->used);
			if (u->led_idx != 0 && o->ledger)
				o->led[(u->led_idx - 1) % o->ledger].word =
				    u->led_word;
			o->head = u->head;
			o->tail = u->tail;
		}
		entry_unlock(e);
	}
	u->valid = 0;
	u->entry = 0;
	if (__atomic_load_n(&c->ins_lock, __ATOMIC_ACQUIRE) == o->id) {
		/* A rebuild left half done: the entries say what it was to be. */
		if (LD(&c->index_seq) & 1)
			index_rebuild(c, o);
		ins_unlock(c);
	}
}

/* --- reading --- */

struct peek {
	int64_t	committed, unflushed;
	int	known;
	int	applied;	/* a durable delta was added since its fill */
};

static int
entry_is(const struct counter_entry *e, uint64_t h, const char *key,
    size_t len)
{
	return LD(&e->hash) == h && LD(&e->key_len) == len &&
	    memcmp(e->key, key, len) == 0;
}

/*
 * One walk of key's probe run: the slot holding it READY, -1 when none,
 * -2 when a slot stayed locked past 'tries' waits (-1: wait as long as
 * it takes).  Lock-free: each slot is read as a seqlock, its state and
 * key (and with pk, its values) taken only from a read the lock word did
 * not move under.
 */
static int64_t
probe_run(struct counters *c, uint64_t h, const char *key, size_t len,
    struct peek *pk, int tries, int *waitsp)
{
	uint64_t mask = c->nslots - 1, w1, w2, i;
	struct counter_entry *e;
	uint32_t st;
	int match;

	for (uint64_t n = 0, pos = h & mask; n < c->nslots;
	    n++, pos = (pos + 1) & mask) {
		if ((e = bound_at(c, pos, &i)) == NULL)
			return -1;
		for (;;) {
			w1 = __atomic_load_n(&e->lock, __ATOMIC_ACQUIRE);
			if (w1 & 1) {
				if (tries >= 0 && (*waitsp)++ >= tries)
					return -2;
				sched_yield();
				continue;
			}
			st = LD(&e->state);
			match = st != COUNTER_EMPTY && entry_is(e, h, key, len);
			if (match && pk) {
				pk->committed = LD(&e->committed);
				pk->unflushed = LD(&e->unflushed);
				pk->known = LD(&e->committed_known);
				pk->applied = LD(&e->applied_lsn) != 0;
			}
			__atomic_thread_fence(__ATOMIC_ACQUIRE);
			w2 = __atomic_load_n(&e->lock, __ATOMIC_RELAXED);
			if (w1 == w2)
				break;
		}
		if (st == COUNTER_EMPTY)
			return -1;
		if (match)
			return st == COUNTER_READY ? (int64_t)i : -1;
	}
	return -1;
}

/*
 * probe_run(), again whenever a rebuild of the index may have hidden the
 * key from it: a hit stands on the entry's own seqlock, a miss only on
 * an index that did not change under the walk.
 */
static int64_t
probe_try(struct counters *c, uint64_t h, const char *key, size_t len,
    struct peek *pk, int tries)
{
	uint64_t s1, s2;
	int64_t i;
	int waits = 0;

	for (;;) {
		s1 = __atomic_load_n(&c->index_seq, __ATOMIC_ACQUIRE);
		if ((i = probe_run(c, h, key, len, pk, tries, &waits)) != -1)
			return i;
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		s2 = __atomic_load_n(&c->index_seq, __ATOMIC_RELAXED);
		if (s1 == s2 && !(s1 & 1))
			return -1;
		if (!(s2 & 1))
			continue;
		/* Rebuilding, perhaps by a dead owner the caller must repair. */
		if (tries >= 0 && waits++ >= tries)
			return -2;
		sched_yield();
	}
}

/* probe_try() waiting as long as it takes. */
static int64_t
probe(struct counters *c, uint64_t h, const char *key, size_t len,
    struct peek *pk)
{
	return probe_try(c, h, key, len, pk, -1);
}

int
counters_peek(struct counters *c, const char *key, size_t len,
    int64_t *committed, int64_t *unflushed, int *known)
{
	return counters_peek_try(c, key, len, committed, unflushed, known, -1);
}

int
counters_peek_try(struct counters *c, const char *key, size_t len,
    int64_t *committed, int64_t *unflushed, int *known, int tries)
{
	struct peek pk;
	int64_t i;

	if (len == 0 || len > c->max_key_bytes)
		return COUNTERS_PEEK_NONE;
	if ((i = probe_try(c, counters_hash(key, len), key, len, &pk,
	    tries)) < 0)
		return i == -2 ? -1 : COUNTERS_PEEK_NONE;
	*committed = pk.committed;
	*unflushed = pk.unflushed;
	*known = pk.known;
	if (!pk.applied && pk.committed == 0 && pk.unflushed == 0)
		return COUNTERS_PEEK_BARE;
	return COUNTERS_PEEK_HELD;
}

int
counters_peek_total(struct counters *c, const char *key, size_t len,
    int64_t *total)
{
	int64_t committed = 0, unflushed = 0;
	int known = 0, rc;

	rc = counters_peek(c, key, len, &committed, &unflushed, &known);
	if (rc == COUNTERS_PEEK_NONE || !known ||
	    __builtin_add_overflow(committed, unflushed, total))
		return -1;
	return rc;
}

size_t
counters_slot_key(struct counters *c, uint64_t i, char *buf)
{
	struct counter_entry *e = entry_at(c, i);
	uint64_t w1, w2;
	uint32_t st;
	size_t len;

	for (;;) {
		w1 = __atomic_load_n(&e->lock, __ATOMIC_ACQUIRE);
		if (w1 & 1) {
			sched_yield();
			continue;
		}
		st = LD(&e->state);
		len = LD(&e->key_len);
		if (len > c->max_key_bytes)
			len = 0;
		if (st == COUNTER_READY)
			memcpy(buf, e->key, len);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		w2 = __atomic_load_n(&e->lock, __ATOMIC_RELAXED);
		if (w1 == w2)
			return st == COUNTER_READY ? len : 0;
	}
}

struct counter_entry *
counters_slot(struct counters *c, uint64_t i)
{
	struct counter_entry *e = entry_at(c, i);

	if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) != COUNTER_READY)
		return NULL;
	return e;
}

void
counters_read(const struct counter_entry *e, int64_t *committed,
    int64_t *unflushed)
{
	uint64_t w1, w2;

	for (;;) {
		w1 = __atomic_load_n(&e->lock, __ATOMIC_ACQUIRE);
		if (w1 & 1) {
			sched_yield();
			continue;
		}
		*committed = LD(&e->committed);
		*unflushed = LD(&e->unflushed);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		w2 = __atomic_load_n(&e->lock, __ATOMIC_RELAXED);
		if (w1 == w2)
			return;
	}
}

int64_t
counters_total(const struct counter_entry *e, int *overflow)
{
	int64_t c, u, t;

	counters_read(e, &c, &u);
	*overflow = __builtin_add_overflow(c, u, &t);
	return t;
}

uint64_t
counters_count(const struct counters *c)
{
	uint64_t n = __atomic_load_n(&c->used, __ATOMIC_ACQUIRE);

	return n > c->capacity ? c->capacity : n;
}

/* --- changes (under the entry's lock) --- */

/*
 * Whether delta, reserved with the entry's pending deltas, could take the
 * total out of int64: with every positive one landing and no negative
 * one, or the reverse (see Bounds above).  Each sum is checked, so that
 * neither pending part can overflow either.
 */
static int
would_overflow(const struct counter_entry *e, int64_t delta)
{
	int64_t t, pos, hi, lo;

	return __builtin_add_overflow(e->committed, e->unflushed, &t) ||
	    __builtin_sub_overflow(e->pending, e->pend_neg, &pos) ||
	    __builtin_add_overflow(pos, delta > 0 ? delta : 0, &hi) ||
	    __builtin_add_overflow(t, hi, &hi) ||
	    __builtin_add_overflow(e->pend_neg, delta < 0 ? delta : 0, &lo) ||
	    __builtin_add_overflow(t, lo, &lo);
}

/*
 * Within a change: count delta in the pending sums.  would_overflow()
 * let it in, so neither overflows: pending is then a sum of positive
 * deltas that fits and negative ones that fit.
 */
static void
pend_add(struct counter_entry *e, int64_t delta)
{
	ST(&e->pending, e->pending + delta);
	if (delta < 0)
		ST(&e->pend_neg, e->pend_neg + delta);
}

/* ... and out of them, leaving the sums of the others, which fit. */
static void
pend_sub(struct counter_entry *e, int64_t delta)
{
	ST(&e->pending, e->pending - delta);
	if (delta < 0)
		ST(&e->pend_neg, e->pend_neg - delta);
}

static int
pend_none(const struct counter_entry *e)
{
	/* The net alone may be 0 with deltas of both signs in flight. */
	return LD(&e->pending) == 0 && LD(&e->pend_neg) == 0;
}

static void
maybe_evictable(struct counters *c, const struct counter_entry *e)
{
	if (e->refs == 0 && pend_none(e) && e->unflushed == 0)
		__atomic_add_fetch(&c->evictable_gen, 1, __ATOMIC_RELAXED);
}

/* Within a change: record delta as o's newest ledger entry. */
static void
led_push(struct counters *c, struct counter_owner *o, struct counter_entry *e,
    int64_t delta, uint64_t *idx)
{
	struct counter_led *l = &o->led[o->head % o->ledger];

	ST(&e->refs, e->refs + 1);
	l->word = slot_of(c, e);
	l->value = delta;
	*idx = o->head;
	__atomic_store_n(&o->head, o->head + 1, __ATOMIC_RELEASE);
}

/*
 * Evict up to a sixteenth of the capacity, from the clock hand on; at
 * most one full turn.  Under ins_lock.  A turn that found nothing is not
 * repeated until some entry may have become evictable.
 */
static uint64_t
evict_some(struct counters *c, struct counter_owner *o)
{
	uint64_t gen = __atomic_load_n(&c->evictable_gen, __ATOMIC_RELAXED);
	uint64_t want = c->capacity / 16 ? c->capacity / 16 : 1, n = 0;
	uint64_t slots = counters_slots(c);
	struct counter_entry *e;

	if (gen == c->scanned_gen)
		return 0;
	for (uint64_t k = 0; k < slots && n < want; k++) {
		if (c->hand >= slots)
			c->hand = 0;
		e = entry_at(c, c->hand++);
		if (LD(&e->state) != COUNTER_READY || LD(&e->refs) ||
		    !pend_none(e) || LD(&e->unflushed))
			continue;
		op_begin(c, o, e, 1);
		if (e->refs == 0 && pend_none(e) && e->unflushed == 0 &&
		    e->applied_lsn <= e->flushed_upto) {
			ST(&e->state, COUNTER_EVICTED);
			ST(&c->used, c->used - 1);
			n++;
		}
		op_end(o, e);
	}
	if (n == 0)
		c->scanned_gen = gen;
	__atomic_add_fetch(&c->evictions, n, __ATOMIC_RELAXED);
	return n;
}

/*
 * Reserve delta on the held entry at slot i for o.  1 when the slot no
 * longer holds key (evicted or taken over since the probe): probe again.
 */
static int
acquire_at(struct counters *c, struct counter_owner *o, uint64_t i,
    uint64_t h, const char *key, size_t len, int64_t delta,
    enum counters_rc *rc, uint64_t *idx)
{
	struct counter_entry *e = entry_at(c, i);

	op_begin(c, o, e, 0);
	if (e->state != COUNTER_READY || !entry_is(e, h, key, len)) {
		op_end(o, e);
		return 1;
	}
	if (would_overflow(e, delta)) {
		*rc = COUNTERS_OVERFLOW;
		op_end(o, e);
		return 0;
	}
	pend_add(e, delta);
	led_push(c, o, e, delta, idx);
	*rc = COUNTERS_OK;
	op_end(o, e);
	return 0;
}

/* What key's probe run holds, as insert() and preload() need it. */
struct run {
	int64_t	found;		/* slot holding it READY */
	int64_t	revive;		/* ... or EVICTED, with its values */
	int64_t	free_slot;	/* the first EMPTY or EVICTED slot */
	int64_t	empty;		/* ... of them, the EMPTY one */
	int64_t	free_pos;	/* the unbound word that ends the run */
};

/*
 * Walk key's probe run under ins_lock, rebuilding the index first when
 * it has filled up.  Keys, states and the index change only under it.
 */
static void
run_walk(struct counters *c, struct counter_owner *o, uint64_t h,
    const char *key, size_t len, struct run *r)
{
	uint64_t mask = c->nslots - 1, i, n, pos;
	struct counter_entry *e;
	uint32_t st;

	r->found = r->revive = r->free_slot = r->empty = r->free_pos = -1;
	if (c->bound >= index_limit(c))
		index_rebuild(c, o);
	for (n = 0, pos = h & mask; n < c->nslots;
	    n++, pos = (pos + 1) & mask) {
		if ((e = bound_at(c, pos, &i)) == NULL) {
			r->free_pos = pos;
			break;
		}
		st = LD(&e->state);
		if (st == COUNTER_EMPTY) {
			if (r->free_slot < 0)
				r->free_slot = i;
			r->empty = i;
			break;
		}
		if (entry_is(e, h, key, len)) {
			if (st == COUNTER_READY)
				r->found = i;
			else
				r->revive = i;
			break;
		}
		if (st == COUNTER_EVICTED && r->free_slot < 0)
			r->free_slot = i;
	}
}

/* Bind an EMPTY entry to the unbound word r ends at.  -1: none left. */
static int64_t
run_bind(struct counters *c, const struct run *r)
{
	int64_t i;

	if (r->free_pos < 0 || (i = entry_free(c)) < 0)
		return -1;
	c->bound++;
	__atomic_store_n(index_at(c, r->free_pos), i + 1, __ATOMIC_RELEASE);
	return i;
}

/* Within a change: e becomes key's, with nothing held, pending or added. */
static void
entry_fill(struct counter_entry *e, uint64_t h, const char *key, size_t len,
    int64_t committed, int known)
{
	e->hash = h;
	e->key_len = len;
	memcpy(e->key, key, len);
	ST(&e->committed, committed);
	e->committed_known = known;
	e->flushed_upto = 0;
	e->applied_lsn = 0;
	ST(&e->unflushed, 0);
	ST(&e->pending, 0);
	ST(&e->pend_neg, 0);
	ST(&e->refs, 0);
}

/*
 * A key the table does not hold had no row in PostgreSQL when the
 * flusher read them all, and its slot cannot have been given up since.
 */
static int
known_absent(struct counters *c, uint64_t h)
{
	return LD(&c->preloaded) && LD(seed_gen_at(c, h)) == 0;
}

/*
 * Insert key (or find it, or revive it) under ins_lock; with o, reserve
 * delta as acquire_at does.  The slot in *slot.
 */
static enum counters_rc
insert(struct counters *c, struct counter_owner *o, uint64_t h,
    const char *key, size_t len, int64_t delta,
    const struct counters_seed *seed, uint64_t *slot, uint64_t *idx)
{
	struct counter_entry *e;
	enum counters_rc rc = COUNTERS_OK;
	struct run r;
	int64_t i;

	ins_lock(c, owner_id(o));
	run_walk(c, o, h, key, len, &r);
	if (r.found >= 0) {
		*slot = r.found;
		if (o && acquire_at(c, o, r.found, h, key, len, delta, &rc,
		    idx))
			rc = COUNTERS_FULL;	/* cannot be: it is READY */
		ins_unlock(c);
		return rc;
	}
	/* An owner's new key: its total must come from PostgreSQL. */
	if (o && r.revive < 0 && !known_absent(c, h) && (seed == NULL ||
	    (seed->known && seed->gen != LD(seed_gen_at(c, h))))) {
		ins_unlock(c);
		return COUNTERS_UNKNOWN;
	}
	if (c->used >= c->capacity)
		evict_some(c, o);
	i = r.revive >= 0 ? r.revive : r.free_slot;
	if (c->used >= c->capacity || (i < 0 && (i = run_bind(c, &r)) < 0)) {
		ins_unlock(c);
		return COUNTERS_FULL;
	}
	e = entry_at(c, i);
	op_begin(c, o, e, 1);
	if (r.revive < 0) {
		if (e->state == COUNTER_EVICTED)
			entry_forget(c, e);
		if (seed)
			entry_fill(e, h, key, len, seed->committed,
			    seed->known);
		else	/* Known absent; recovery: the flusher reads it. */
			entry_fill(e, h, key, len, 0, o ? 1 :
			    !LD(&c->forgot));
	}
	if (o && would_overflow(e, delta))
		rc = COUNTERS_OVERFLOW;	/* revived: stays evicted */
	else {
		ST(&e->state, COUNTER_READY);
		ST(&c->used, c->used + 1);
		if (o) {
			pend_add(e, delta);
			led_push(c, o, e, delta, idx);
		}
	}
	op_end(o, e);
	ins_unlock(c);
	*slot = i;
	return rc;
}

int
counters_preload(struct counters *c, struct counter_owner *o,
    const char *key, size_t len, int64_t committed)
{
	uint64_t h = counters_hash(key, len);
	struct counter_entry *e;
	struct run r;
	int64_t i;

	if (len == 0 || len > c->max_key_bytes)
		return 0;
	ins_lock(c, owner_id(o));
	run_walk(c, o, h, key, len, &r);
	if (r.found >= 0 || r.revive >= 0) {
		ins_unlock(c);
		return 0;
	}
	/*
	 * Half the words at most, so that new keys still find unbound ones
	 * and the next rebuild keeps these; never another key's slot, which
	 * would forget that key.
	 */
	if (c->bound >= c->nslots / 2 || ((i = r.empty) < 0 &&
	    (i = run_bind(c, &r)) < 0)) {
		ins_unlock(c);
		return -1;
	}
	e = entry_at(c, i);
	op_begin(c, o, e, 1);
	entry_fill(e, h, key, len, committed, 1);
	ST(&e->state, COUNTER_EVICTED);
	op_end(o, e);
	ins_unlock(c);
	return 1;
}

void
counters_preload_done(struct counters *c)
{
	__atomic_store_n(&c->preloaded, 1, __ATOMIC_RELEASE);
}

int
counters_preload_void(struct counters *c)
{
	return __atomic_exchange_n(&c->preloaded, 0, __ATOMIC_ACQ_REL);
}

uint32_t
counters_seed_gen(struct counters *c, const char *key, size_t len)
{
	return LD(seed_gen_at(c, counters_hash(key, len)));
}

enum counters_rc
counters_acquire(struct counters *c, struct counter_owner *o, const char *key,
    size_t len, int64_t delta, const struct counters_seed *seed,
    struct counter_entry **ep, uint64_t *idx)
{
	uint64_t h, slot;
	enum counters_rc rc;
	int64_t i;

	if (len == 0 || len > c->max_key_bytes)
		return COUNTERS_FULL;
	if (o->head - o->tail >= o->ledger)
		return COUNTERS_BUSY;
	h = counters_hash(key, len);
	for (;;) {
		if ((i = probe(c, h, key, len, NULL)) >= 0) {
			if (acquire_at(c, o, i, h, key, len, delta, &rc, idx))
				continue;
			slot = i;
		} else
			rc = insert(c, o, h, key, len, delta, seed, &slot,
			    idx);
		if (rc == COUNTERS_OK)
			*ep = entry_at(c, slot);
		return rc;
	}
}

void
counters_publishing(struct counter_owner *o, uint64_t end, uint64_t lsn)
{
	o->wr_end = end;
	__atomic_store_n(&o->wr_lsn, lsn, __ATOMIC_RELEASE);
}

void
counters_published(struct counter_owner *o, uint64_t end_lsn)
{
	o->pub_lsn = end_lsn;
	__atomic_store_n(&o->pub, o->wr_end, __ATOMIC_RELEASE);
	__atomic_store_n(&o->wr_lsn, 0, __ATOMIC_RELEASE);
}

uint64_t
counters_owner_wr_lsn(const struct counter_owner *o)
{
	return __atomic_load_n(&o->wr_lsn, __ATOMIC_ACQUIRE);
}

uint64_t
counters_ledger_head(const struct counter_owner *o)
{
	return o->head;
}

void
counters_apply(struct counters *c, struct counter_owner *o, uint64_t idx,
    uint64_t frame_end, int64_t *total, int *overflow)
{
	struct counter_led *l = &o->led[idx % o->ledger];
	struct counter_entry *e = entry_at(c, LED_SLOT(l->word));

	op_begin(c, o, e, 0);
	l = op_led(o, idx);
	if (!(l->word & LED_APPLIED)) {
		ST(&e->unflushed, (int64_t)((uint64_t)e->unflushed +
		    (uint64_t)l->value));
		pend_sub(e, l->value);
		if (frame_end > e->applied_lsn)
			e->applied_lsn = frame_end;
		__atomic_store_n(&l->word, l->word | LED_APPLIED,
		    __ATOMIC_RELEASE);
	}
	*overflow = __builtin_add_overflow(e->committed, e->unflushed, total);
	op_end(o, e);
}

static void
release_at(struct counters *c, struct counter_owner *o, uint64_t idx, int tail)
{
	struct counter_led *l = &o->led[idx % o->ledger];
	struct counter_entry *e = entry_at(c, LED_SLOT(l->word));

	op_begin(c, o, e, 0);
	if (!(l->word & LED_APPLIED))
		pend_sub(e, l->value);
	ST(&e->refs, e->refs - 1);
	if (tail)
		__atomic_store_n(&o->tail, o->tail + 1, __ATOMIC_RELEASE);
	else
		__atomic_store_n(&o->head, o->head - 1, __ATOMIC_RELEASE);
	maybe_evictable(c, e);
	op_end(o, e);
}

void
counters_release_tail(struct counters *c, struct counter_owner *o)
{
	if (o->tail != o->head)
		release_at(c, o, o->tail, 1);
}

void
counters_release_head(struct counters *c, struct counter_owner *o)
{
	if (o->tail != o->head)
		release_at(c, o, o->head - 1, 0);
}

uint64_t
counters_owner_adopt(struct counters *c, struct counter_owner *o,
    int (*published)(void *, uint64_t), void *arg)
{
	uint64_t n = 0, wr = o->wr_lsn, idx;
	int wr_pub = -1, pub, ovf;
	int64_t t;

	while (o->tail != o->head) {
		idx = o->tail;
		pub = idx < o->pub;
		if (!pub && wr != 0 && idx < o->wr_end) {
			if (wr_pub < 0)
				wr_pub = published(arg, wr) == 1;
			pub = wr_pub;
		}
		if (pub && !(o->led[idx % o->ledger].word & LED_APPLIED)) {
			/* Not known where in the frames: the latest end. */
			counters_apply(c, o, idx, o->pub_lsn > wr ?
			    o->pub_lsn : wr + 1, &t, &ovf);
			n++;
		}
		counters_release_tail(c, o);
	}
	o->pub = o->wr_end = o->head;
	__atomic_store_n(&o->wr_lsn, 0, __ATOMIC_RELEASE);
	return n;
}

/* --- the flusher --- */

void
counters_commit_key(struct counters *c, struct counter_owner *o,
    const char *key, size_t len, int have_total, int64_t total,
    int64_t applied, int64_t flushed, uint64_t upto)
{
	uint64_t h = counters_hash(key, len);
	struct counter_entry *e;
	int64_t i;

	if (len == 0 || len > c->max_key_bytes ||
	    (i = probe(c, h, key, len, NULL)) < 0)
		return;		/* evicted: PostgreSQL has it all */
	e = entry_at(c, i);
	op_begin(c, o, e, 0);
	if (e->state == COUNTER_READY && entry_is(e, h, key, len) &&
	    e->flushed_upto < upto) {
		ST(&e->committed, have_total ? total : (int64_t)(
		    (uint64_t)e->committed + (uint64_t)applied));
		ST(&e->unflushed, (int64_t)((uint64_t)e->unflushed -
		    (uint64_t)flushed));
		if (have_total)
			e->committed_known = 1;
		e->flushed_upto = upto;
		maybe_evictable(c, e);
	}
	op_end(o, e);
}

void
counters_set_committed_key(struct counters *c, struct counter_owner *o,
    const char *key, size_t len, int64_t committed)
{
	uint64_t h = counters_hash(key, len);
	struct counter_entry *e;
	int64_t i;

	if (len == 0 || len > c->max_key_bytes ||
	    (i = probe(c, h, key, len, NULL)) < 0)
		return;
	e = entry_at(c, i);
	op_begin(c, o, e, 0);
	if (e->state == COUNTER_READY && entry_is(e, h, key, len)) {
		ST(&e->committed, committed);
		e->committed_known = 1;
	}
	op_end(o, e);
}

/* --- a lone process --- */

struct counter_entry *
counters_lookup(struct counters *c, const char *key, size_t len)
{
	int64_t i;

	if (len == 0 || len > c->max_key_bytes)
		return NULL;
	i = probe(c, counters_hash(key, len), key, len, NULL);
	return i < 0 ? NULL : entry_at(c, i);
}

struct counter_entry *
counters_get(struct counters *c, const char *key, size_t len)
{
	uint64_t h, slot, idx;
	int64_t i;

	if (len == 0 || len > c->max_key_bytes)
		return NULL;
	h = counters_hash(key, len);
	if ((i = probe(c, h, key, len, NULL)) >= 0)
		return entry_at(c, i);
	if (insert(c, NULL, h, key, len, 0, NULL, &slot, &idx) !=
	    COUNTERS_OK)
		return NULL;
	return entry_at(c, slot);
}

void
counters_add(struct counters *c, struct counter_entry *e, int64_t delta,
    uint64_t frame_end)
{
	op_begin(c, NULL, e, 0);
	ST(&e->unflushed, (int64_t)((uint64_t)e->unflushed + (uint64_t)delta));
	if (frame_end > e->applied_lsn)
		e->applied_lsn = frame_end;
	op_end(NULL, e);
}

int
counters_reserve(struct counters *c, struct counter_entry *e, int64_t delta)
{
	int rc = 0;

	op_begin(c, NULL, e, 0);
	if (would_overflow(e, delta))
		rc = -1;
	else
		pend_add(e, delta);
	op_end(NULL, e);
	return rc;
}

void
counters_unreserve(struct counters *c, struct counter_entry *e, int64_t delta)
{
	op_begin(c, NULL, e, 0);
	pend_sub(e, delta);
	op_end(NULL, e);
}

void
counters_commit(struct counters *c, struct counter_entry *e, int64_t committed,
    int64_t flushed)
{
	op_begin(c, NULL, e, 0);
	ST(&e->committed, committed);
	ST(&e->unflushed, (int64_t)((uint64_t)e->unflushed -
	    (uint64_t)flushed));
	e->committed_known = 1;
	op_end(NULL, e);
}

void
counters_forget_committed(struct counters *c, struct counter_entry *e)
{
	op_begin(c, NULL, e, 0);
	e->committed_known = 0;
	op_end(NULL, e);
}

void
counters_set_committed(struct counters *c, struct counter_entry *e,
    int64_t committed)
{
	op_begin(c, NULL, e, 0);
	ST(&e->committed, committed);
	e->committed_known = 1;
	op_end(NULL, e);
}
