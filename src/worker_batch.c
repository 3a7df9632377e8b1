/*
 * Batches: the increments of one worker on their way to the journal.
 *
 * Requests that arrive in one pass of the event loop share one batch; at
 * the end of the pass (or after commit_delay) the batch becomes one frame,
 * reserved in the shared journal with a compare-and-swap and written into
 * its segment: with pwrite under sync = group, through the mapping every
 * reader uses under sync = interval (journal.c says why).  With sync =
 * group the worker then fdatasyncs the journal itself, up to the end of
 * the complete frames of every worker (syncer_commit), and answers in
 * the same loop pass: one fdatasync covers the frames of every worker at
 * once, and the requests answered before the loop polls again cost no
 * epoll changes.  While the frame of another worker before ours is still
 * being copied, we sleep instead; whoever makes ours durable (that
 * worker, or the syncer) writes our eventfd, and we answer every request
 * whose frame is now durable, in journal order.
 *
 * With sync = interval the wait ends as soon as the frame is in the
 * mapped file (the page cache survives a process crash).
 *
 * A request is counted in the shared table only once durable, and it is
 * answered after that, so a GET on this node that follows a 202 sees it.
 * Until then its value is "pending" in the table, which lets concurrent
 * requests be refused before together they push a total out of int64.
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "log.h"
#include "syncer.h"
#include "worker_int.h"

#define BATCH_MAX_REQS	4096

/* A request of the batch, answered once its frame is durable. */
struct waiter {
	h2o_req_t		*req;	/* NULL once the client went away */
	struct req_token	*tok;
	struct counter_entry	*e;
	struct idem_entry	*ie;	/* its Idempotency-Key claim, or NULL */
	int64_t			 value;
	uint64_t		 idx;	/* its entry in our ledger */
};

struct batch {
	struct batch	*next;
	uint64_t	 end_lsn;	/* answered once durable up to here */
	size_t		 raw_len;
	uint32_t	 nw;
	struct waiter	 w[BATCH_MAX_REQS];
	uint8_t		 raw[JOURNAL_MAX_RAW];
};

static struct batch *
batch_new(void)
{
	struct batch *b = W.free;

	if (b)
		W.free = b->next;
	else if ((b = malloc(sizeof(*b))) == NULL)
		return NULL;
	b->next = NULL;
	b->raw_len = 0;
	b->nw = 0;
	b->end_lsn = 0;
	return b;
}

static void
batch_free(struct batch *b)
{
	b->next = W.free;
	W.free = b;
}

/*
 * Answer every request of a batch the same way (refusals).  Its ledger
 * entries are the newest ones (a batch being written) or the oldest (a
 * batch waiting for the disk).
 */
static void
batch_refuse(struct batch *b, const char *msg, int newest)
{
	for (uint32_t n = 0; n < b->nw; n++) {
		struct waiter *w = &b->w[newest ? b->nw - 1 - n : n];

		if (newest)
			counters_release_head(W.shm->counters, W.own);
		else
			counters_release_tail(W.shm->counters, W.own);
		if (w->ie)
			idem_abort(W.shm->idem, w->ie);
		if (w->req) {
			worker_resume(w->tok, w->req);
			worker_respond_retry(w->req, msg);
		}
	}
}

/* The batch's frame is durable: count it, then answer. */
static void
batch_ack(struct batch *b)
{
	uint64_t expires = idem_now_us() + W.cf->idem_ttl_us;
	int64_t total;
	int overflow;

	for (uint32_t i = 0; i < b->nw; i++)
		counters_apply(W.shm->counters, W.own, b->w[i].idx, b->end_lsn,
		    &total, &overflow);
	shm_count(&W.h->stats.increments, b->nw);
	/* One clock read for the batch: its answers leave together. */
	W.now = metrics_now();
	for (uint32_t i = 0; i < b->nw; i++) {
		struct waiter *w = &b->w[i];

		/* Our ledger entry holds w->e until released, below. */
		total = counters_total(w->e, &overflow);
		/* Kept even if the client went away: its retry replays it. */
		if (w->ie)
			idem_complete(W.shm->idem, w->ie, 202, total, expires,
			    b->end_lsn);
		if (w->req != NULL) {
			worker_resume(w->tok, w->req);
			worker_respond_total(w->req, 202, w->e->key,
			    w->e->key_len, total, 0);
		}
		counters_release_tail(W.shm->counters, W.own);
	}
	W.now = 0;
}

void
worker_ack(void)
{
	uint64_t target;
	struct batch *b;

	if (__atomic_load_n(&W.h->sync_failed, __ATOMIC_ACQUIRE)) {
		/* Durability is unknown: never claim it. */
		while ((b = W.wait_head) != NULL) {
			W.wait_head = b->next;
			batch_refuse(b, "journal sync failed", 0);
			batch_free(b);
		}
		W.wait_tail = NULL;
		return;
	}
	target = shm_load(W.group ? &W.h->durable_lsn : &W.h->written_lsn);
	for (;;) {
		while ((b = W.wait_head) != NULL && b->end_lsn <= target) {
			W.wait_head = b->next;
			if (W.wait_head == NULL)
				W.wait_tail = NULL;
			batch_ack(b);
			batch_free(b);
		}
		if (b == NULL) {
			__atomic_store_n(&W.slot->wait_lsn, 0,
			    __ATOMIC_RELAXED);
			return;
		}
		/*
		 * Ask to be woken, then look again: see
		 * syncer_wake_workers() for why no wake-up is lost.
		 */
		__atomic_store_n(&W.slot->wait_lsn, b->end_lsn,
		    __ATOMIC_SEQ_CST);
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		target = shm_load(W.group ? &W.h->durable_lsn :
		    &W.h->written_lsn);
		if (b->end_lsn > target)
			return;
	}
}

void
worker_on_wake(h2o_socket_t *sock, const char *err)
{
	uint64_t n;

	(void)read(W.h->slots[W.slotno].efd, &n, sizeof(n));
	worker_ack();
}

/*
 * Turn the open batch into a frame in the journal.  The reservation is
 * recorded in our shm slot while we copy, so that if we die here the
 * master can hand the range to the syncer to pad.
 */
static void
worker_write(struct batch *b)
{
	uint64_t lsn, pad_lsn;
	uint32_t pad_len;
	uint8_t pad[JOURNAL_FRAME_HDR];
	size_t len;

	/* The journal failed since these requests were accepted. */
	if (W.h->journal_errno || W.h->sync_failed) {
		batch_refuse(b, "journal unavailable", 1);
		batch_free(b);
		return;
	}
	len = journal_frame_compress(W.frame, W.frame_cap, W.h->epoch, b->raw,
	    b->raw_len, b->nw);
	if (len == 0) {
		log_warnx("cannot build a journal frame of %zu bytes",
		    b->raw_len);
		batch_refuse(b, "journal error", 1);
		batch_free(b);
		return;
	}
	lsn = journal_reserve(&W.h->insert_lsn, W.h->seg_size, len, &pad_lsn,
	    &pad_len, W.slot->res_try);
	W.slot->res_end = lsn + len;
	__atomic_store_n(&W.slot->res_start, pad_lsn, __ATOMIC_RELEASE);
	__atomic_store_n(&W.slot->res_try[0], 0, __ATOMIC_RELEASE);
	journal_frame_relocate(W.frame, lsn);
	if (pad_len)
		journal_frame_build_padding(pad, pad_lsn, pad_len, W.h->epoch);
	/* Nothing is published before the frame's own first word. */
	if ((pad_len && (journal_frame_write_body(&W.j, pad_lsn, pad,
	    sizeof(pad)) == -1 || journal_frame_write_head(&W.j, pad_lsn,
	    pad) == -1)) ||
	    journal_frame_write_body(&W.j, lsn, W.frame, len) == -1) {
		int e = errno;

		log_warn("cannot write journal %s at LSN %llu; "
		    "refusing increments until it can be written",
		    W.j.dir, (unsigned long long)lsn);
		W.h->journal_errno = e ? e : EIO;
		/* Leave the range to the syncer, as if we had died. */
		(void)shm_orphan_add(W.h, W.slotno, pad_lsn, lsn + len, 0);
		__atomic_store_n(&W.slot->res_start, 0, __ATOMIC_RELEASE);
		batch_refuse(b, "journal unavailable", 1);
		batch_free(b);
		return;
	}
	/*
	 * Should we die between these two notes, the next worker in this
	 * slot asks the journal whether the frame at lsn made it, and
	 * applies its deltas if so (counters_owner_adopt), and settles
	 * our keyed requests in it (idem_adopt_owner).
	 */
	for (uint32_t i = 0; i < b->nw; i++)
		if (b->w[i].ie)
			idem_journaled(W.shm->idem, b->w[i].ie, lsn);
	counters_publishing(W.own, b->w[b->nw - 1].idx + 1, lsn);
	if (journal_frame_write_head(&W.j, lsn, W.frame) == -1)
		/*
		 * 8 bytes into a page the body write just filled: this
		 * cannot fail short of a broken kernel.  Dying leaves the
		 * frame to the master and the next worker, as above.
		 */
		fatal(1, "cannot publish the journal frame at LSN %llu in %s",
		    (unsigned long long)lsn, W.j.dir);
	counters_published(W.own, lsn + len);
	b->end_lsn = lsn + len;
	__atomic_store_n(&W.slot->res_start, 0, __ATOMIC_RELEASE);
	shm_count(&W.h->stats.frames, 1);
	shm_count(&W.h->stats.journal_bytes, len);

	if (!W.group) {
		/*
		 * sync = interval: the frame is in the page cache, which
		 * outlives any process crash, and recovery steps over the
		 * holes of writers that died mid-frame: acknowledge now.
		 */
		batch_ack(b);
		batch_free(b);
		return;
	}
	if (W.wait_tail)
		W.wait_tail->next = b;
	else
		W.wait_head = b;
	W.wait_tail = b;
	/* 0: a frame before ours is still being written; -1: refused below. */
	(void)syncer_commit(&W.j, W.h, b->end_lsn);
	worker_ack();
}

void
worker_close_batch(h2o_timeout_entry_t *entry)
{
	struct batch *b = W.open;

	W.open = NULL;
	if (b && b->nw)
		worker_write(b);
	else if (b)
		batch_free(b);
}

/*
 * Room runs short, and only a flush gives it back: ask the flusher not to
 * wait out flush_interval.  Not while PostgreSQL is down, where a wake-up
 * would cut its back-off short; at most every 100 ms from each worker.
 */
void
worker_ask_flush(void)
{
	uint64_t now;

	if (!__atomic_load_n(&W.h->pg_up, __ATOMIC_RELAXED))
		return;
	now = metrics_now();
	if (now - W.flush_asked < 100000000)
		return;
	W.flush_asked = now;
	syncer_kick(W.h->flusher_efd);
}

/* Past max_size: refuse.  Past half of it: ask for a flush now. */
int
worker_backlog_full(void)
{
	uint64_t ins = shm_load(&W.h->insert_lsn);
	uint64_t ck = shm_load(&W.h->checkpoint_lsn);

	if (ins <= ck || ins - ck <= W.cf->max_size / 2)
		return 0;
	worker_ask_flush();
	return ins - ck > W.cf->max_size;
}

/*
 * Reserve the increment and add it to the open batch.  A key the table
 * does not hold needs seed, PostgreSQL's total for it: without one, the
 * request waits for it (worker_post_ask).
 */
int
worker_batch_add(h2o_req_t *req, const struct post *p,
    const struct counters_seed *seed)
{
	struct journal_record r;
	struct counter_entry *e;
	struct waiter *w;
	size_t need;
	uint64_t idx;

	/* Before ours joins the ledger: a refused batch leaves its top. */
	need = journal_record_size(p->key_len, p->ik_len);
	if (W.open && (W.open->nw == BATCH_MAX_REQS ||
	    W.open->raw_len + need > JOURNAL_MAX_RAW)) {
		worker_close_batch(NULL);
		h2o_timeout_unlink(&W.close_entry);
	}
	switch (counters_acquire(W.shm->counters, W.own, p->key, p->key_len,
	    p->value, seed, &e, &idx)) {
	case COUNTERS_OK:
		break;
	case COUNTERS_UNKNOWN:
		return worker_post_ask(req, p);
	case COUNTERS_OVERFLOW:
		if (p->ie)
			idem_abort(W.shm->idem, p->ie);
		return worker_respond_error(req, 422,
		    "total would leave int64");
	case COUNTERS_BUSY:
		if (p->ie)
			idem_abort(W.shm->idem, p->ie);
		return worker_respond_retry(req,
		    "too many increments in flight");
	case COUNTERS_FULL:
	default:
		if (p->ie)
			idem_abort(W.shm->idem, p->ie);
		/* Keys with nothing left to flush can be evicted. */
		worker_ask_flush();
		return worker_respond_retry(req, "counter table full");
	}

	if (W.open == NULL) {
		if ((W.open = batch_new()) == NULL) {
			counters_release_head(W.shm->counters, W.own);
			if (p->ie)
				idem_abort(W.shm->idem, p->ie);
			return worker_respond_retry(req, "out of memory");
		}
		h2o_timeout_link(W.loop, &W.close_timeout, &W.close_entry);
	}
	r.value = p->value;
	r.time_us = idem_now_us();
	r.key = p->key;
	r.key_len = p->key_len;
	r.idem = p->ik_len ? p->ik : NULL;
	r.idem_len = p->ik_len;
	W.open->raw_len += journal_record_put(W.open->raw + W.open->raw_len,
	    &r);
	w = &W.open->w[W.open->nw++];
	w->req = req;
	w->e = e;
	w->ie = p->ie;
	w->value = p->value;
	w->idx = idx;
	w->tok = worker_token_new(req, &w->req);
	return 0;
}
