/*
 * The Idempotency-Key table.
 *
 * What it is for: a client that did not get an answer to POST /increment
 * may send the request again with the same Idempotency-Key.  The table
 * tells a worker whether that key is new (process the request), still in
 * flight (409), already answered for the same request (replay the kept
 * 202 and total) or used for another request (422).  Every worker process
 * sees the same table: it lives in the shared region, and memory is
 * bounded by [idempotency] max_keys, never by traffic.
 *
 * Layout: a header, an index of nslots (a power of two, at least twice
 * max_keys) triples {state word, hash, body}, and nslots bodies of a fixed
 * stride holding the request (ik, counter key, value) and the response
 * (status, total, expiry).  The index is dense so that probing reads few
 * cache lines; a body is read only when the hash matches.  Open
 * addressing with linear probing, at most IDEM_PROBE slots from a key's
 * home slot.  Bodies are handed out in order, the first time a slot is
 * claimed, and stay bound to it: every new key lands on a random slot,
 * and with a body at each slot's own place every request would touch a
 * page of its own (a page fault, and memory) until the whole table was
 * resident.  The claimant binds the body while the slot is CLAIMED, which
 * only it reads, so the binding is published with the slot; a claimant
 * that dies between counting a body out and binding it loses that body
 * (and a slot never bound before, its slot) until the region is rebuilt.
 * The sweep and the release of a dead owner's claims walk the bodies
 * handed out, not the index, which would make the whole index resident.
 *
 * The state word: bits 0-2 the state, bits 3-31 a generation bumped by
 * every change of the word, bits 32-63 the owner's pid while the slot is
 * claimed.  A reader reads the word, then the fields it needs, then the
 * word again; if the two differ the slot changed under it and it reads
 * again.  The generation wraps only after 2^29 changes of one slot, far
 * more than can happen while a reader compares 255 bytes.
 *
 * The states, and who moves a slot from one to the next (always by
 * compare-and-swap on the word, except the claimant's publishing):
 *
 *	EMPTY, TOMBSTONE,
 *	 or expired DONE  -> CLAIMED	a claimant; it then writes the fields
 *	CLAIMED		  -> TENTATIVE	the claimant publishes them
 *	TENTATIVE	  -> INFLIGHT	the claimant, having no rival: IDEM_NEW
 *	TENTATIVE	  -> TOMBSTONE	the claimant backing off, or a rival
 *	INFLIGHT	  -> DONE	idem_complete (fields written first);
 *				idem_adopt_owner, for a dead owner
 *	INFLIGHT	  -> TOMBSTONE	idem_abort
 *	DONE		  -> TOMBSTONE	idem_sweep once expired; idem_restore;
 *				a claimant finding no unit of the count
 *				left (idem_forget_one)
 *	CLAIMED, TENTATIVE,
 *	 INFLIGHT	  -> TOMBSTONE	idem_release_owner: the owner died
 *				(but for requests it journaled, which
 *				idem_adopt_owner settles)
 *
 * Only the claimant reads or writes a CLAIMED slot's fields; lookups
 * skip it.  TENTATIVE entries are published but not yet known to be the
 * only entry for their ik; lookups answer IN FLIGHT for them, as for
 * INFLIGHT.  DONE entries are kept until expires_us, then are as good as
 * absent.  A slot never becomes EMPTY again, so a probe stops at EMPTY:
 * nothing for the key can lie beyond.  TOMBSTONEs and expired entries do
 * not stop a probe, and are reused.  In-flight entries never expire:
 * their owner completes or aborts them, or the master releases them.
 *
 * Why one ik never gets two live entries.  Two claimants of one ik may
 * take different slots: the probe path changes while they look (a slot
 * before them turns into a TOMBSTONE).  So a claimant, after publishing
 * its slot TENTATIVE, scans the whole path again (to the EMPTY or the
 * probe limit, which it shares with every claimant of the ik) for live
 * rivals, then confirms itself by a CAS TENTATIVE -> INFLIGHT:
 *  - a confirmed rival (INFLIGHT or DONE) wins: it backs off;
 *  - a TENTATIVE rival nearer the home slot wins: it backs off;
 *  - a TENTATIVE rival farther away loses: it turns that slot into a
 *    TOMBSTONE by CAS; that rival's confirming CAS then fails and it
 *    starts over (and finds the winner).  If the CAS fails because the
 *    rival confirmed first, the rival is confirmed: it backs off.
 * A scan reaches every rival: a claimant takes a slot no farther than
 * the first EMPTY on the path, and slots never become EMPTY again.
 * Publishing and scanning use sequentially consistent operations, so of
 * two claimants A and B, either A's scan reads B's slot after B published
 * it, or B's scan reads A's slot after A published it (if A's read came
 * before B's publish, B's publish precedes B's scan, which comes after
 * A's publish).  The one who sees the other settles it by the rules
 * above, whose outcomes never leave both confirmed.  Nothing waits: a
 * CLAIMED slot is invisible (its claimant has yet to scan), and the
 * TENTATIVE entry nearest the home slot is never removed by a rival, so
 * someone always makes progress.  Still, a claimant that keeps losing
 * races answers IN FLIGHT after IDEM_RETRIES tries (the client retries),
 * and one that finds no free slot within IDEM_PROBE answers FULL: no
 * call loops without bound.
 *
 * The count of held slots (CLAIMED to DONE, expired or not) is reserved
 * before taking an EMPTY or TOMBSTONE slot and released by whoever turns
 * a slot into a TOMBSTONE; reusing an expired DONE slot takes over its
 * unit.  So at most max_keys entries are held.  A process killed between
 * two such steps may leave the count one too high; the region is rebuilt
 * at restart.
 */
#include <sys/types.h>

#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "idem.h"
#include "log.h"

#define IDEM_PROBE	128	/* slots probed from the home slot */
#define IDEM_RETRIES	16	/* lost races before answering IN FLIGHT */
#define IDEM_FORGET_SCAN 64	/* bodies looked at to free a unit */
#define IDEM_FORGET_WINDOWS 16	/* ... and times as many at most */
#define IDEM_NONE	UINT64_MAX

enum {
	ST_EMPTY = 0,
	ST_CLAIMED,
	ST_TENTATIVE,
	ST_INFLIGHT,
	ST_DONE,
	ST_TOMBSTONE
};

#define W_STATE(w)	((unsigned)((w) & 7))
#define W_GEN(w)	(((w) >> 3) & 0x1fffffffULL)
#define W_PID(w)	((pid_t)(uint32_t)((w) >> 32))

struct idem_index {
	uint64_t	word;
	uint64_t	hash;
	uint64_t	body;		/* bound body + 1; 0: none yet */
};

struct idem_entry {
	uint64_t	slot;		/* the slot it is bound to */
	int64_t		value;
	int64_t		total;
	uint64_t	expires_us;
	uint64_t	lsn;		/* its frame's end; see idem_flushed */
	int64_t		after;		/* restored: the key's sum after it */
	int32_t		status;
	uint16_t	key_len;
	uint8_t		ik_len;
	uint8_t		rebase;		/* restored: total is to be rebased */
	char		data[];		/* ik, then the counter key */
};

struct idem_table {
	uint64_t	capacity;	/* max_keys */
	uint64_t	nslots;		/* power of two >= 2 * capacity */
	uint64_t	probe;		/* min(IDEM_PROBE, nslots) */
	uint64_t	stride;		/* bytes per body */
	uint64_t	max_key_bytes;
	uint64_t	count;		/* atomic: held slots */
	uint64_t	nbodies;	/* atomic: bodies handed out */
	uint64_t	flushed_lsn;	/* atomic: PostgreSQL holds up to it */
	uint64_t	forgot_until;	/* atomic: a key forgotten expires */
	uint64_t	forgotten;	/* atomic: keys forgotten so far */
	uint64_t	hand;		/* atomic: next body to look at */
	uint8_t		area[] __attribute__((aligned(64)));
};

/* One request, as idem_begin and idem_restore were given it. */
struct idem_req {
	const char	*ik;
	size_t		 ik_len;
	const char	*key;
	size_t		 key_len;
	int64_t		 value;
	uint64_t	 hash;
};

/* A consistent reading of one slot, against a request. */
struct idem_view {
	uint64_t	word;
	int		same_ik;	/* published, and holds the ik */
	int		same_req;	/* ... with the same key and value */
	int		status;
	int64_t		total;
	uint64_t	expires_us;	/* DONE only */
	uint64_t	lsn;
};

static uint64_t
slots_for(uint64_t max_keys)
{
	uint64_t n = 16;

	while (n < 2 * max_keys)
		n <<= 1;
	return n;
}

static uint64_t
stride_for(size_t max_key_bytes)
{
	return (sizeof(struct idem_entry) + IDEM_MAX_IK_BYTES +
	    max_key_bytes + 7) & ~(uint64_t)7;
}

size_t
idem_size(uint64_t max_keys, size_t max_key_bytes)
{
	uint64_t n, per, total;

	/* Configuration bounds these; refuse sizes that do not fit. */
	if (max_keys > (UINT64_C(1) << 40) || max_key_bytes > UINT16_MAX)
		return 0;
	n = slots_for(max_keys);
	per = sizeof(struct idem_index) + stride_for(max_key_bytes);
	if (__builtin_mul_overflow(n, per, &total) ||
	    __builtin_add_overflow(total, sizeof(struct idem_table), &total) ||
	    total > SIZE_MAX)
		return 0;
	return total;
}

struct idem_table *
idem_init(void *mem, uint64_t max_keys, size_t max_key_bytes)
{
	struct idem_table *t = mem;

	t->capacity = max_keys;
	t->nslots = slots_for(max_keys);
	t->probe = t->nslots < IDEM_PROBE ? t->nslots : IDEM_PROBE;
	t->stride = stride_for(max_key_bytes);
	t->max_key_bytes = max_key_bytes;
	t->count = 0;
	t->nbodies = 0;
	t->flushed_lsn = 0;
	t->forgot_until = 0;
	t->forgotten = 0;
	t->hand = 0;
	return t;
}

static struct idem_index *
index_at(struct idem_table *t, uint64_t i)
{
	return (struct idem_index *)(void *)t->area + i;
}

static struct idem_entry *
body_at(struct idem_table *t, uint64_t b)
{
	return (struct idem_entry *)(void *)(t->area +
	    t->nslots * sizeof(struct idem_index) + b * t->stride);
}

/* The body of slot i, which is CLAIMED or was published. */
static struct idem_entry *
entry_at(struct idem_table *t, uint64_t i)
{
	return body_at(t, __atomic_load_n(&index_at(t, i)->body,
	    __ATOMIC_RELAXED) - 1);
}

/* Give CLAIMED slot i a body for good, if it has none.  0: none left. */
static int
slot_bind(struct idem_table *t, uint64_t i)
{
	struct idem_index *x = index_at(t, i);
	uint64_t b;

	if (x->body != 0)
		return 1;
	b = __atomic_fetch_add(&t->nbodies, 1, __ATOMIC_RELAXED);
	if (b >= t->nslots)
		return 0;
	/* Walks read it without a claim: see body_slot. */
	__atomic_store_n(&body_at(t, b)->slot, i, __ATOMIC_RELAXED);
	__atomic_store_n(&x->body, b + 1, __ATOMIC_RELEASE);
	return 1;
}

static uint64_t
word_next(uint64_t w, unsigned state, pid_t pid)
{
	uint64_t gen = (W_GEN(w) + 1) & 0x1fffffffULL;

	return state | gen << 3 | (uint64_t)(uint32_t)pid << 32;
}

static int
word_cas(struct idem_index *x, uint64_t *expect, uint64_t desired)
{
	return __atomic_compare_exchange_n(&x->word, expect, desired, 0,
	    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

static uint64_t
idem_hash(const char *s, size_t len)
{
	/* FNV-1a, then a final mix so that the low bits use every byte. */
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 29;
	return h;
}

/*
 * Bodies are read while another process may be rewriting them (the reader
 * then sees the word change and reads again): every access is atomic, so
 * that a torn read is merely wrong, never undefined.
 */
static void
bytes_put(char *dst, const char *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		__atomic_store_n(&dst[i], src[i], __ATOMIC_RELAXED);
}

static int
bytes_eq(const char *shared, const char *mine, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (__atomic_load_n(&shared[i], __ATOMIC_RELAXED) != mine[i])
			return 0;
	return 1;
}

static void
slot_view(struct idem_table *t, uint64_t i, const struct idem_req *q,
    struct idem_view *v)
{
	struct idem_index *x = index_at(t, i);
	struct idem_entry *e;
	unsigned st;

	for (;;) {
		memset(v, 0, sizeof(*v));
		v->word = __atomic_load_n(&x->word, __ATOMIC_SEQ_CST);
		st = W_STATE(v->word);
		if (st != ST_TENTATIVE && st != ST_INFLIGHT && st != ST_DONE)
			return;
		/* Published: its body was bound before. */
		e = entry_at(t, i);
		if (st == ST_DONE)
			v->expires_us = __atomic_load_n(&e->expires_us,
			    __ATOMIC_RELAXED);
		if (__atomic_load_n(&x->hash, __ATOMIC_RELAXED) == q->hash &&
		    __atomic_load_n(&e->ik_len, __ATOMIC_RELAXED) ==
		    q->ik_len && bytes_eq(e->data, q->ik, q->ik_len)) {
			v->same_ik = 1;
			v->same_req = __atomic_load_n(&e->key_len,
			    __ATOMIC_RELAXED) == q->key_len &&
			    __atomic_load_n(&e->value, __ATOMIC_RELAXED) ==
			    q->value &&
			    bytes_eq(e->data + q->ik_len, q->key, q->key_len);
			v->status = __atomic_load_n(&e->status,
			    __ATOMIC_RELAXED);
			v->total = __atomic_load_n(&e->total, __ATOMIC_RELAXED);
			v->lsn = __atomic_load_n(&e->lsn, __ATOMIC_RELAXED);
		}
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&x->word, __ATOMIC_RELAXED) == v->word)
			return;
	}
}

/* Published for the ik and not expired: the ik is taken. */
static int
view_live(const struct idem_view *v, uint64_t now_us)
{
	if (!v->same_ik)
		return 0;
	return W_STATE(v->word) != ST_DONE || v->expires_us > now_us;
}

static int
view_free(const struct idem_view *v, uint64_t now_us)
{
	unsigned st = W_STATE(v->word);

	return st == ST_EMPTY || st == ST_TOMBSTONE ||
	    (st == ST_DONE && v->expires_us <= now_us);
}

/* Raise *at to v if it is lower. */
static void
atomic_max(uint64_t *at, uint64_t v)
{
	uint64_t cur = __atomic_load_n(at, __ATOMIC_SEQ_CST);

	while (cur < v && !__atomic_compare_exchange_n(at, &cur, v, 0,
	    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
		;
}

/* The answer a live entry for the ik gives. */
static enum idem_result
view_result(const struct idem_view *v, int *status, int64_t *total)
{
	if (W_STATE(v->word) != ST_DONE)
		return IDEM_INFLIGHT;
	if (!v->same_req)
		return IDEM_MISMATCH;
	*status = v->status;
	*total = v->total;
	return IDEM_REPLAY;
}

static int
count_reserve(struct idem_table *t)
{
	if (__atomic_add_fetch(&t->count, 1, __ATOMIC_ACQ_REL) > t->capacity) {
		__atomic_sub_fetch(&t->count, 1, __ATOMIC_ACQ_REL);
		return 0;
	}
	return 1;
}

static void
count_release(struct idem_table *t)
{
	__atomic_sub_fetch(&t->count, 1, __ATOMIC_ACQ_REL);
}

/* Turn a slot last read as 'w' into a TOMBSTONE; 0 if it changed. */
static int
slot_bury(struct idem_table *t, uint64_t i, uint64_t w)
{
	if (!word_cas(index_at(t, i), &w, word_next(w, ST_TOMBSTONE, 0)))
		return 0;
	count_release(t);
	return 1;
}

static uint64_t	bodies_out(struct idem_table *);
static uint64_t	body_slot(struct idem_table *, uint64_t);

/*
 * Look at n bodies from start (modulo nb) for idem_forget_one: the first
 * expired entry (1), else the flushed one nearest expiry so far in *best.
 */
static int
idem_forget_scan(struct idem_table *t, uint64_t start, uint64_t n,
    uint64_t nb, uint64_t now_us, uint64_t flushed, uint64_t *best,
    uint64_t *bw, uint64_t *bx)
{
	for (uint64_t k = 0; k < n; k++) {
		uint64_t b = (start + k) % nb, i = body_slot(t, b), w, x, lsn;
		struct idem_entry *e = body_at(t, b);

		if (i == IDEM_NONE)
			continue;
		w = __atomic_load_n(&index_at(t, i)->word, __ATOMIC_ACQUIRE);
		if (W_STATE(w) != ST_DONE)
			continue;
		x = __atomic_load_n(&e->expires_us, __ATOMIC_RELAXED);
		lsn = __atomic_load_n(&e->lsn, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&index_at(t, i)->word,
		    __ATOMIC_RELAXED) != w)
			continue;
		if (x <= now_us || (lsn <= flushed &&
		    (*best == IDEM_NONE || x < *bx))) {
			*best = i;
			*bw = w;
			*bx = x;
			if (x <= now_us)
				return 1;
		}
	}
	return 0;
}

/*
 * No unit of the count is left: free one.  Of the next IDEM_FORGET_SCAN
 * bodies from the hand, an expired entry goes at once; else the kept
 * entry nearest expiry whose request PostgreSQL holds (flushed up to its
 * frame's end) is given up, since a retry of it can still be told apart
 * there (idem_forgetting).  The hand moves on for the next claimant, so
 * that the bodies are visited in turn.  Under load the hand laps the
 * table several times a flush and takes the flushed entries of the
 * stretch it passes, so a stretch without one is not rare: the next ones
 * are looked at too, up to IDEM_FORGET_WINDOWS.  1 when a unit was freed.
 */
static int
idem_forget_one(struct idem_table *t, uint64_t now_us)
{
	uint64_t nb = bodies_out(t), n, start, flushed;
	uint64_t best = IDEM_NONE, bw = 0, bx = 0;

	if (nb == 0)
		return 0;
	n = nb < IDEM_FORGET_SCAN ? nb : IDEM_FORGET_SCAN;
	flushed = __atomic_load_n(&t->flushed_lsn, __ATOMIC_ACQUIRE);
	for (int win = 0; win < IDEM_FORGET_WINDOWS && best == IDEM_NONE &&
	    (uint64_t)win * n < nb; win++) {
		start = __atomic_fetch_add(&t->hand, n, __ATOMIC_RELAXED);
		if (idem_forget_scan(t, start, n, nb, now_us, flushed, &best,
		    &bw, &bx))
			break;
	}
	if (best == IDEM_NONE)
		return 0;
	if (bx > now_us)
		/*
		 * Before the entry goes: a claimant that misses it from
		 * then on must find that keys are forgotten.
		 */
		atomic_max(&t->forgot_until, bx);
	if (!slot_bury(t, best, bw))
		return 0;
	if (bx > now_us)
		__atomic_add_fetch(&t->forgotten, 1, __ATOMIC_RELAXED);
	return 1;
}

static void
slot_write(struct idem_table *t, uint64_t i, const struct idem_req *q)
{
	struct idem_entry *e = entry_at(t, i);

	/* Pairs with the reader's acquire fence before it re-reads the word. */
	__atomic_thread_fence(__ATOMIC_RELEASE);
	__atomic_store_n(&index_at(t, i)->hash, q->hash, __ATOMIC_RELAXED);
	__atomic_store_n(&e->ik_len, (uint8_t)q->ik_len, __ATOMIC_RELAXED);
	__atomic_store_n(&e->key_len, (uint16_t)q->key_len, __ATOMIC_RELAXED);
	__atomic_store_n(&e->value, q->value, __ATOMIC_RELAXED);
	__atomic_store_n(&e->status, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&e->total, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&e->expires_us, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&e->lsn, IDEM_LSN_NONE, __ATOMIC_RELAXED);
	__atomic_store_n(&e->after, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&e->rebase, 0, __ATOMIC_RELAXED);
	bytes_put(e->data, q->ik, q->ik_len);
	bytes_put(e->data + q->ik_len, q->key, q->key_len);
}

/*
 * Our slot 'mine' (at 'dist' from home) is published TENTATIVE as *word.
 * Settle with every live rival on the path.  1: we may confirm; 0: we
 * backed off (or were removed) and *res holds the answer a rival gives.
 */
static int
rivals_settle(struct idem_table *t, const struct idem_req *q, uint64_t dist,
    uint64_t mine, uint64_t word, uint64_t now_us, enum idem_result *res,
    int *status, int64_t *total)
{
	uint64_t mask = t->nslots - 1, home = q->hash & mask;
	struct idem_view v;

	for (uint64_t d = 0; d < t->probe; d++) {
		uint64_t i = (home + d) & mask;

		if (d == dist)
			continue;
		for (;;) {
			slot_view(t, i, q, &v);
			if (!view_live(&v, now_us))
				break;
			if (W_STATE(v.word) == ST_TENTATIVE && d > dist) {
				if (slot_bury(t, i, v.word))
					break;
				continue;	/* it moved: look again */
			}
			/* Confirmed, or nearer home: that rival wins. */
			slot_bury(t, mine, word);
			*res = view_result(&v, status, total);
			return 0;
		}
		if (W_STATE(v.word) == ST_EMPTY)
			break;
	}
	return 1;
}

/*
 * The claim protocol shared by idem_begin and idem_restore.  On IDEM_NEW
 * *slot is ours, INFLIGHT; on IDEM_REPLAY or IDEM_MISMATCH *slot and
 * *word name the kept entry found (IDEM_NONE when a rival answered).
 */
static enum idem_result
idem_claim(struct idem_table *t, const struct idem_req *q, uint64_t now_us,
    pid_t owner, uint64_t *slot, uint64_t *word, int *status, int64_t *total)
{
	uint64_t mask = t->nslots - 1, home = q->hash & mask;
	struct idem_view v;
	enum idem_result res;

	*slot = IDEM_NONE;
	for (int tries = 0; tries < IDEM_RETRIES; tries++) {
		uint64_t fd = IDEM_NONE, fw = 0;	/* first free slot */
		uint64_t xd = IDEM_NONE, xw = 0;	/* first expired one */
		uint64_t d, w, mine;
		int reserved;

		for (d = 0; d < t->probe; d++) {
			slot_view(t, (home + d) & mask, q, &v);
			if (view_live(&v, now_us)) {
				res = view_result(&v, status, total);
				if (res != IDEM_INFLIGHT) {
					*slot = (home + d) & mask;
					*word = v.word;
				}
				return res;
			}
			if (view_free(&v, now_us)) {
				if (fd == IDEM_NONE) {
					fd = d;
					fw = v.word;
				}
				if (xd == IDEM_NONE &&
				    W_STATE(v.word) == ST_DONE) {
					xd = d;
					xw = v.word;
				}
			}
			if (W_STATE(v.word) == ST_EMPTY)
				break;
		}
		if (fd == IDEM_NONE)
			return IDEM_FULL;
		/* An expired entry's slot comes with its unit of the count. */
		reserved = 0;
		if (W_STATE(fw) != ST_DONE) {
			if (count_reserve(t))
				reserved = 1;
			else if (xd != IDEM_NONE) {
				fd = xd;
				fw = xw;
			} else if (idem_forget_one(t, now_us))
				continue;	/* a unit is free: again */
			else
				return IDEM_FULL;
		}
		mine = (home + fd) & mask;
		w = fw;
		if (!word_cas(index_at(t, mine), &w,
		    word_next(fw, ST_CLAIMED, owner))) {
			if (reserved)
				count_release(t);
			continue;
		}
		if (!slot_bind(t, mine)) {
			/* Releases the unit reserved (a bound slot never
			 * gets here). */
			slot_bury(t, mine, word_next(fw, ST_CLAIMED, owner));
			return IDEM_FULL;
		}
		slot_write(t, mine, q);
		w = word_next(w, ST_TENTATIVE, owner);
		__atomic_store_n(&index_at(t, mine)->word, w, __ATOMIC_SEQ_CST);

		if (!rivals_settle(t, q, fd, mine, w, now_us, &res, status,
		    total))
			return res;
		if (word_cas(index_at(t, mine), &w,
		    word_next(w, ST_INFLIGHT, owner))) {
			*slot = mine;
			return IDEM_NEW;
		}
		/* A rival nearer home removed ours: look again. */
	}
	return IDEM_INFLIGHT;
}

static int
req_make(struct idem_table *t, struct idem_req *q, const char *ik,
    size_t ik_len, const char *key, size_t key_len, int64_t value)
{
	if (ik_len == 0 || ik_len > IDEM_MAX_IK_BYTES ||
	    key_len > t->max_key_bytes) {
		log_warnx("idempotency key: %zu bytes with a counter key of "
		    "%zu bytes: out of range", ik_len, key_len);
		return -1;
	}
	q->ik = ik;
	q->ik_len = ik_len;
	q->key = key;
	q->key_len = key_len;
	q->value = value;
	q->hash = idem_hash(ik, ik_len);
	return 0;
}

enum idem_result
idem_begin(struct idem_table *t, const char *ik, size_t ik_len,
    const char *key, size_t key_len, int64_t value, uint64_t now_us,
    pid_t owner, struct idem_entry **out, int *status, int64_t *total)
{
	struct idem_req q;
	enum idem_result res;
	uint64_t slot, word;

	*out = NULL;
	if (req_make(t, &q, ik, ik_len, key, key_len, value) == -1)
		return IDEM_FULL;
	res = idem_claim(t, &q, now_us, owner, &slot, &word, status, total);
	if (res == IDEM_NEW)
		*out = entry_at(t, slot);
	return res;
}

/* The owner's INFLIGHT word for its entry, or 0 if it is not one. */
static uint64_t
inflight_word(struct idem_table *t, uint64_t i)
{
	uint64_t w = __atomic_load_n(&index_at(t, i)->word, __ATOMIC_ACQUIRE);

	if (W_STATE(w) != ST_INFLIGHT) {
		log_warnx("idempotency slot %llu: state %u, not in flight",
		    (unsigned long long)i, W_STATE(w));
		return 0;
	}
	return w;
}

void
idem_complete(struct idem_table *t, struct idem_entry *e, int status,
    int64_t total, uint64_t expires_us, uint64_t lsn)
{
	uint64_t i = e->slot, w;

	if ((w = inflight_word(t, i)) == 0)
		return;
	/* Nobody reads these while the entry is in flight. */
	__atomic_store_n(&e->status, status, __ATOMIC_RELAXED);
	__atomic_store_n(&e->total, total, __ATOMIC_RELAXED);
	__atomic_store_n(&e->expires_us, expires_us, __ATOMIC_RELAXED);
	__atomic_store_n(&e->lsn, lsn, __ATOMIC_RELAXED);
	if (!word_cas(index_at(t, i), &w, word_next(w, ST_DONE, 0)))
		log_warnx("idempotency slot %llu: released while in flight",
		    (unsigned long long)i);
}

void
idem_abort(struct idem_table *t, struct idem_entry *e)
{
	uint64_t i = e->slot, w;

	if ((w = inflight_word(t, i)) == 0)
		return;
	if (!slot_bury(t, i, w))
		log_warnx("idempotency slot %llu: released while in flight",
		    (unsigned long long)i);
}

int
idem_restore(struct idem_table *t, const char *ik, size_t ik_len,
    const char *key, size_t key_len, int64_t value, int status,
    int64_t sum, uint64_t expires_us, uint64_t lsn)
{
	struct idem_entry *e;
	struct idem_req q;
	enum idem_result res;
	uint64_t slot, word;
	int st;
	int64_t tot;

	if (req_make(t, &q, ik, ik_len, key, key_len, value) == -1)
		return -1;
	for (int tries = 0; tries < IDEM_RETRIES; tries++) {
		/* now 0: nothing has expired; an older use gets replaced. */
		res = idem_claim(t, &q, 0, getpid(), &slot, &word, &st, &tot);
		switch (res) {
		case IDEM_NEW:
			e = entry_at(t, slot);
			__atomic_store_n(&e->rebase, 1, __ATOMIC_RELAXED);
			idem_complete(t, e, status, sum, expires_us, lsn);
			return 0;
		case IDEM_REPLAY:
		case IDEM_MISMATCH:
			/* An older use of the ik: the journal's newer wins. */
			if (slot != IDEM_NONE)
				slot_bury(t, slot, word);
			continue;
		case IDEM_INFLIGHT:
			log_warnx("idempotency key %.*s: in flight during "
			    "recovery", (int)ik_len, ik);
			return -1;
		case IDEM_FULL:
			/* The caller says so once, not once for each key. */
			return -1;
		}
	}
	return -1;
}

/*
 * The slot body b is bound to, IDEM_NONE when b was counted out but its
 * claimant died before binding it.  Walks over the bodies handed out read
 * the pages in use and no others.  A walk of every slot would read the
 * whole index, and so make all of it resident (the shared region's pages
 * are allocated on first touch, reads included): tens of megabytes on a
 * node that never saw an Idempotency-Key.
 */
static uint64_t
body_slot(struct idem_table *t, uint64_t b)
{
	uint64_t i = __atomic_load_n(&body_at(t, b)->slot, __ATOMIC_RELAXED);

	if (i >= t->nslots || __atomic_load_n(&index_at(t, i)->body,
	    __ATOMIC_ACQUIRE) != b + 1)
		return IDEM_NONE;
	return i;
}

static uint64_t
bodies_out(struct idem_table *t)
{
	uint64_t nb = __atomic_load_n(&t->nbodies, __ATOMIC_ACQUIRE);

	return nb > t->nslots ? t->nslots : nb;
}

int
idem_answered(struct idem_table *t, const char *ik, size_t ik_len,
    const char *key, size_t key_len, int64_t value, uint64_t lsn,
    int64_t *total)
{
	struct idem_req q;
	struct idem_view v;
	uint64_t mask = t->nslots - 1, home;
	int pending = 0;

	if (req_make(t, &q, ik, ik_len, key, key_len, value) == -1)
		return 0;
	home = q.hash & mask;
	for (uint64_t d = 0; d < t->probe; d++) {
		slot_view(t, (home + d) & mask, &q, &v);
		if (W_STATE(v.word) == ST_EMPTY)
			break;
		if (!v.same_ik || !v.same_req)
			continue;
		/* Expired or not: the flusher may come late. */
		if (W_STATE(v.word) == ST_DONE && v.lsn == lsn) {
			*total = v.total;
			return 1;
		}
		if (W_STATE(v.word) == ST_TENTATIVE ||
		    W_STATE(v.word) == ST_INFLIGHT)
			pending = -1;
	}
	return pending;
}

/*
 * fn(t, e, s) for each restored entry still to rebase, s being sum() of
 * its counter key; from one process while no worker takes keyed
 * requests.
 */
static void
rebase_each(struct idem_table *t, void (*fn)(struct idem_table *,
    struct idem_entry *, int64_t), idem_sum_fn sum, void *arg)
{
	uint64_t nb = bodies_out(t);
	int64_t s;

	for (uint64_t b = 0; b < nb; b++) {
		struct idem_entry *e = body_at(t, b);
		uint64_t i = body_slot(t, b);

		if (i == IDEM_NONE || W_STATE(__atomic_load_n(
		    &index_at(t, i)->word, __ATOMIC_ACQUIRE)) != ST_DONE ||
		    !__atomic_load_n(&e->rebase, __ATOMIC_ACQUIRE))
			continue;
		if (sum(arg, e->data + e->ik_len, e->key_len, &s) == 0)
			fn(t, e, s);
	}
}

/* s: the key's journaled sum at the end of the replay. */
static void
rebase_mark(struct idem_table *t, struct idem_entry *e, int64_t s)
{
	int64_t after;

	(void)t;
	if (__builtin_sub_overflow(s, e->total, &after))
		after = 0;
	__atomic_store_n(&e->after, after, __ATOMIC_RELAXED);
}

/*
 * s: the key's total now.  Done again if the process dies before it
 * clears the mark, this gives the same total (after is not changed).
 */
static void
rebase_apply(struct idem_table *t, struct idem_entry *e, int64_t s)
{
	int64_t total;

	(void)t;
	if (__builtin_sub_overflow(s, e->after, &total))
		total = s;
	__atomic_store_n(&e->total, total, __ATOMIC_RELAXED);
	__atomic_store_n(&e->rebase, 0, __ATOMIC_RELEASE);
}

void
idem_restore_end(struct idem_table *t, idem_sum_fn sum, void *arg)
{
	rebase_each(t, rebase_mark, sum, arg);
}

void
idem_rebase(struct idem_table *t, idem_sum_fn sum, void *arg)
{
	rebase_each(t, rebase_apply, sum, arg);
}

/* Only a slot with a body can be DONE. */
uint64_t
idem_sweep(struct idem_table *t, uint64_t now_us)
{
	uint64_t n = 0, nb = bodies_out(t);

	for (uint64_t b = 0; b < nb; b++) {
		uint64_t i = body_slot(t, b), w;

		if (i == IDEM_NONE)
			continue;
		w = __atomic_load_n(&index_at(t, i)->word, __ATOMIC_ACQUIRE);
		/* A stale expiry is harmless: the CAS fails if w moved. */
		if (W_STATE(w) == ST_DONE && __atomic_load_n(
		    &body_at(t, b)->expires_us, __ATOMIC_RELAXED) <= now_us &&
		    slot_bury(t, i, w))
			n++;
	}
	return n;
}

/*
 * A claim has a body from the moment it leaves CLAIMED, so only a slot
 * claimed for the first time by an owner that died before binding it is
 * missed: one slot, and its unit of the count, lost until the region is
 * rebuilt, as for the body itself.
 */
uint64_t
idem_release_owner(struct idem_table *t, pid_t pid, int keep_journaled,
    uint64_t *kept)
{
	uint64_t n = 0, k = 0, nb = bodies_out(t);

	for (uint64_t b = 0; b < nb; b++) {
		uint64_t i = body_slot(t, b), w;

		if (i == IDEM_NONE)
			continue;
		w = __atomic_load_n(&index_at(t, i)->word, __ATOMIC_ACQUIRE);
		if (keep_journaled && W_STATE(w) == ST_INFLIGHT &&
		    W_PID(w) == pid && __atomic_load_n(&body_at(t, b)->lsn,
		    __ATOMIC_ACQUIRE) != IDEM_LSN_NONE) {
			k++;
			continue;
		}
		/* Others may still remove its TENTATIVE slots: re-read. */
		while ((W_STATE(w) == ST_CLAIMED ||
		    W_STATE(w) == ST_TENTATIVE ||
		    W_STATE(w) == ST_INFLIGHT) && W_PID(w) == pid) {
			if (slot_bury(t, i, w)) {
				n++;
				break;
			}
			w = __atomic_load_n(&index_at(t, i)->word,
			    __ATOMIC_ACQUIRE);
		}
	}
	if (kept)
		*kept = k;
	return n;
}

void
idem_journaled(struct idem_table *t, struct idem_entry *e, uint64_t lsn)
{
	(void)t;
	/* Read only once its owner is dead: nobody else reads it in flight. */
	__atomic_store_n(&e->lsn, lsn, __ATOMIC_RELEASE);
}

uint64_t
idem_adopt_owner(struct idem_table *t, pid_t pid,
    int (*published)(void *, uint64_t, uint64_t *),
    int (*total)(void *, const char *, size_t, int64_t *), void *arg,
    uint64_t expires_us)
{
	uint64_t n = 0, nb = bodies_out(t);

	for (uint64_t b = 0; b < nb; b++) {
		struct idem_entry *e = body_at(t, b);
		uint64_t i = body_slot(t, b), w, lsn, end;
		int64_t tot;

		if (i == IDEM_NONE)
			continue;
		w = __atomic_load_n(&index_at(t, i)->word, __ATOMIC_ACQUIRE);
		if (W_STATE(w) != ST_INFLIGHT || W_PID(w) != pid)
			continue;
		lsn = __atomic_load_n(&e->lsn, __ATOMIC_ACQUIRE);
		if (lsn != IDEM_LSN_NONE && published(arg, lsn, &end) &&
		    total(arg, e->data + e->ik_len, e->key_len, &tot) == 0) {
			idem_complete(t, e, 202, tot, expires_us, end);
			n++;
		} else if (!slot_bury(t, i, w))
			log_warnx("idempotency slot %llu: changed while its "
			    "dead owner's claim was dropped",
			    (unsigned long long)i);
	}
	return n;
}

void
idem_flushed(struct idem_table *t, uint64_t lsn)
{
	atomic_max(&t->flushed_lsn, lsn);
}

void
idem_forget_until(struct idem_table *t, uint64_t until_us)
{
	atomic_max(&t->forgot_until, until_us);
}

int
idem_forgetting(struct idem_table *t, uint64_t now_us)
{
	return now_us < __atomic_load_n(&t->forgot_until, __ATOMIC_SEQ_CST);
}

uint64_t
idem_forgotten(const struct idem_table *t)
{
	return __atomic_load_n(&t->forgotten, __ATOMIC_RELAXED);
}

uint64_t
idem_count(const struct idem_table *t)
{
	uint64_t n = __atomic_load_n(&t->count, __ATOMIC_ACQUIRE);

	return n > t->capacity ? t->capacity : n;
}

uint64_t
idem_capacity(const struct idem_table *t)
{
	return t->capacity;
}

uint64_t
idem_now_us(void)
{
	struct timespec ts;

	/* Coarse: read for every request, and a tick is fine for a ttl. */
	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}
