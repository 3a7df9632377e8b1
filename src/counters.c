/*
 * The shared counter table.
 *
 * Open addressing with linear probing over a power-of-two number of slots,
 * at most three quarters of them used so probe runs stay short.  A slot
 * goes EMPTY -> CLAIMED (one inserter won the compare-and-swap and is
 * copying the key) -> READY, and never back, so a reader holding a READY
 * entry may keep it.  Deltas are plain atomic adds.  The pair (committed,
 * unflushed) is changed together only by the flusher, under the entry's
 * sequence counter (a seqlock): a reader retries while it is odd or moved.
 */
#include <sched.h>
#include <string.h>

#include "counters.h"

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

size_t
counters_size(uint64_t max_keys, size_t max_key_bytes)
{
	return sizeof(struct counters) +
	    slots_for(max_keys) * stride_for(max_key_bytes);
}

struct counters *
counters_init(void *mem, uint64_t max_keys, size_t max_key_bytes)
{
	struct counters *c = mem;

	c->capacity = max_keys;
	c->nslots = slots_for(max_keys);
	c->stride = stride_for(max_key_bytes);
	c->max_key_bytes = max_key_bytes;
	c->used = 0;
	return c;
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

struct counter_entry *
counters_slot(struct counters *c, uint64_t i)
{
	struct counter_entry *e;

	e = (struct counter_entry *)(void *)(c->slots + i * c->stride);
	if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) != COUNTER_READY)
		return NULL;
	return e;
}

static struct counter_entry *
entry_at(struct counters *c, uint64_t i)
{
	return (struct counter_entry *)(void *)(c->slots + i * c->stride);
}

/* Wait out an inserter that is copying its key: a few stores at most. */
static uint32_t
state_settled(struct counter_entry *e)
{
	uint32_t st;

	while ((st = __atomic_load_n(&e->state, __ATOMIC_ACQUIRE)) ==
	    COUNTER_CLAIMED)
		sched_yield();
	return st;
}

static int
entry_is(const struct counter_entry *e, uint64_t h, const char *key,
    size_t len)
{
	return e->hash == h && e->key_len == len &&
	    memcmp(e->key, key, len) == 0;
}

static struct counter_entry *
find(struct counters *c, const char *key, size_t len, int insert)
{
	uint64_t h, mask = c->nslots - 1;
	struct counter_entry *e;

	if (len == 0 || len > c->max_key_bytes)
		return NULL;
	h = counters_hash(key, len);
	for (uint64_t n = 0, i = h & mask; n < c->nslots;
	    n++, i = (i + 1) & mask) {
		uint32_t st;

		e = entry_at(c, i);
		st = state_settled(e);
		if (st == COUNTER_READY) {
			if (entry_is(e, h, key, len))
				return e;
			continue;
		}
		/* EMPTY: the key is not in the table. */
		if (!insert)
			return NULL;
		if (__atomic_add_fetch(&c->used, 1, __ATOMIC_ACQ_REL) >
		    c->capacity) {
			__atomic_sub_fetch(&c->used, 1, __ATOMIC_ACQ_REL);
			return NULL;
		}
		st = COUNTER_EMPTY;
		if (__atomic_compare_exchange_n(&e->state, &st,
		    COUNTER_CLAIMED, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
			e->hash = h;
			e->key_len = len;
			memcpy(e->key, key, len);
			e->committed = 0;
			e->unflushed = 0;
			e->pending = 0;
			/* A new key starts from 0 until a flush says more. */
			e->committed_known = 1;
			__atomic_store_n(&e->state, COUNTER_READY,
			    __ATOMIC_RELEASE);
			return e;
		}
		/* Lost the race for this slot: it may now hold our key. */
		__atomic_sub_fetch(&c->used, 1, __ATOMIC_ACQ_REL);
		if (state_settled(e) == COUNTER_READY && entry_is(e, h, key, len))
			return e;
	}
	return NULL;
}

struct counter_entry *
counters_lookup(struct counters *c, const char *key, size_t len)
{
	return find(c, key, len, 0);
}

struct counter_entry *
counters_get(struct counters *c, const char *key, size_t len)
{
	return find(c, key, len, 1);
}

void
counters_add(struct counter_entry *e, int64_t delta)
{
	__atomic_fetch_add(&e->unflushed, delta, __ATOMIC_RELAXED);
}

int
counters_reserve(struct counter_entry *e, int64_t delta)
{
	int64_t c, u, p, t;

	p = __atomic_add_fetch(&e->pending, delta, __ATOMIC_ACQ_REL);
	counters_read(e, &c, &u);
	if (__builtin_add_overflow(c, u, &t) ||
	    __builtin_add_overflow(t, p, &t)) {
		__atomic_sub_fetch(&e->pending, delta, __ATOMIC_ACQ_REL);
		return -1;
	}
	return 0;
}

void
counters_unreserve(struct counter_entry *e, int64_t delta)
{
	__atomic_sub_fetch(&e->pending, delta, __ATOMIC_ACQ_REL);
}

void
counters_read(const struct counter_entry *e, int64_t *committed,
    int64_t *unflushed)
{
	uint32_t s1, s2;

	for (;;) {
		s1 = __atomic_load_n(&e->seq, __ATOMIC_ACQUIRE);
		if (s1 & 1) {
			sched_yield();
			continue;
		}
		*committed = __atomic_load_n(&e->committed, __ATOMIC_RELAXED);
		*unflushed = __atomic_load_n(&e->unflushed, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		s2 = __atomic_load_n(&e->seq, __ATOMIC_RELAXED);
		if (s1 == s2)
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

static void
seq_begin(struct counter_entry *e)
{
	__atomic_fetch_add(&e->seq, 1, __ATOMIC_ACQ_REL);
	__atomic_thread_fence(__ATOMIC_RELEASE);
}

static void
seq_end(struct counter_entry *e)
{
	__atomic_fetch_add(&e->seq, 1, __ATOMIC_RELEASE);
}

void
counters_commit(struct counter_entry *e, int64_t committed, int64_t flushed)
{
	seq_begin(e);
	__atomic_store_n(&e->committed, committed, __ATOMIC_RELAXED);
	__atomic_fetch_sub(&e->unflushed, flushed, __ATOMIC_RELAXED);
	e->committed_known = 1;
	seq_end(e);
}

void
counters_forget_committed(struct counter_entry *e)
{
	seq_begin(e);
	e->committed_known = 0;
	seq_end(e);
}

void
counters_set_committed(struct counter_entry *e, int64_t committed)
{
	seq_begin(e);
	__atomic_store_n(&e->committed, committed, __ATOMIC_RELAXED);
	e->committed_known = 1;
	seq_end(e);
}

uint64_t
counters_count(const struct counters *c)
{
	uint64_t n = __atomic_load_n(&c->used, __ATOMIC_ACQUIRE);

	return n > c->capacity ? c->capacity : n;
}
