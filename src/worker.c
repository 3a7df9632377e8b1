/*
 * The worker: HTTP in, journal frames out, 202 once durable.
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
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include "idem.h"
#include "journal.h"
#include "log.h"
#include "metrics.h"
#include "pgread.h"
#include "proc.h"
#include "ratelimit.h"
#include "request.h"
#include "syncer.h"
#include "worker.h"

#define BATCH_MAX_REQS	4096
#define RESP_MAX	(REQUEST_MAX_KEY_BYTES * 6 + 128)
#define STOP_GRACE_MS	10000
#define POST_MAX_ASKS	3	/* look-ups of a new key's total */
#define HEAP_KEEP	(64 << 20)	/* free heap kept, not returned */

/*
 * Lives in a request's pool and points at our pointer to the request:
 * when h2o frees the request (the client went away, an HTTP/2 stream was
 * reset) the pointer is cleared, so we never answer a freed request.
 */
struct req_token {
	h2o_req_t	**ref;	/* NULL once we answered and let go */
	uint64_t	 t0;	/* arrival, for the latency histogram */
	enum metrics_route route;
};

/* The request being answered, for its metrics. */
struct req_ctx {
	h2o_req_t		*req;
	uint64_t		 t0;
	enum metrics_route	 route;
};

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
	uint64_t	 end_lsn;	/* acknowledged once durable up to here */
	size_t		 raw_len;
	uint32_t	 nw;
	struct waiter	 w[BATCH_MAX_REQS];
	uint8_t		 raw[JOURNAL_MAX_RAW];
};

/*
 * An increment past its checks, on its way to the journal.  Its key and
 * Idempotency-Key live in the request being handled, or in the look-up
 * that parked it.
 */
struct post {
	const char	*key;
	size_t		 key_len;
	int64_t		 value;
	const char	*ik;
	size_t		 ik_len;
	struct idem_entry *ie;
	int		 asked;		/* look-ups of its total so far */
};

/*
 * A request waiting for PostgreSQL: a GET of a key the table does not
 * hold, the first increment of one (is_post), or an increment whose
 * Idempotency-Key the table may have forgotten (idem_checked).
 */
struct lookup {
	h2o_req_t	*req;
	struct lookup_token *tok;
	struct pgread_req *pr;
	struct post	 post;		/* its key and ik point below */
	int		 is_post;
	uint32_t	 gen;		/* counters_seed_gen() when asked */
	size_t		 key_len;
	char		 key[];		/* key_len bytes, then the ik's */
};

/*
 * A look-up's token: when h2o frees the request first, the look-up is
 * cancelled too, so that streams reset at once (CVE-2023-44487) send no
 * queries to PostgreSQL.
 */
struct lookup_token {
	struct lookup	*l;	/* NULL once answered */
	uint64_t	 t0;	/* arrival, for the latency histogram */
	enum metrics_route route;
};


static struct worker {
	const struct config	*cf;
	struct shm		*shm;
	struct shm_hdr		*h;
	struct shm_slot		*slot;
	struct counter_owner	*own;	/* our ledger of held increments */
	int			 slotno;
	struct journal		 j;
	h2o_globalconf_t	 h2o;
	h2o_context_t		 ctx;
	h2o_accept_ctx_t	 accept;
	h2o_evloop_t		*loop;
	h2o_socket_t		*listeners[CONFIG_MAX_LISTEN];
	int			 nlisten;
	uint64_t		 nconns;	/* open client connections */
	uint64_t		 max_conns;
	int			 paused;	/* listeners out of the loop */
	h2o_timeout_t		 resume_timeout;
	h2o_timeout_entry_t	 resume_entry;
	h2o_socket_t		*wake;
	h2o_timeout_t		 close_timeout;
	h2o_timeout_entry_t	 close_entry;
	struct batch		*open;		/* collecting requests */
	struct batch		*wait_head;	/* written, awaiting sync */
	struct batch		*wait_tail;
	struct batch		*free;
	uint8_t			*frame;		/* scratch for one frame */
	size_t			 frame_cap;
	struct pgread		*pg;
	int			 lookups;	/* requests waiting on PostgreSQL */
	int			 group;
	struct metrics_slot	*mslot;
	struct req_ctx		 cur;	/* the request being answered */
	struct req_ctx		 outer;	/* the one cur interrupted */
	uint64_t		 now;	/* answer time of a batch, or 0 */
	uint64_t		 flush_asked;	/* worker_ask_flush, ns */
	pid_t			 pid;	/* glibc asks the kernel each time */
} W;

static volatile sig_atomic_t worker_stop;	/* 1 graceful, 2 fast */

static void
worker_signal(int sig)
{
	worker_stop = sig == SIGQUIT ? 2 : 1;
}

/* --- responses --- */

static const char *
status_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 202: return "Accepted";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 415: return "Unsupported Media Type";
	case 422: return "Unprocessable Content";
	case 429: return "Too Many Requests";
	case 503: return "Service Unavailable";
	default: return "Internal Server Error";
	}
}

/* A request arrived: time it from here. */
static void
worker_begin(h2o_req_t *req)
{
	W.cur.req = req;
	W.cur.t0 = metrics_now();
	W.cur.route = metrics_route(req->path.base, req->path.len);
}

/* A request answered later than its arrival becomes the current one. */
static void
worker_resume_at(h2o_req_t *req, uint64_t t0, enum metrics_route route)
{
	W.outer = W.cur;
	W.cur.req = req;
	W.cur.t0 = t0;
	W.cur.route = route;
}

static void
worker_resume(struct req_token *t, h2o_req_t *req)
{
	t->ref = NULL;
	worker_resume_at(req, t->t0, t->route);
}

static void
worker_account(h2o_req_t *req, int status)
{
	if (req != W.cur.req) {
		metrics_request(W.mslot, METRICS_ROUTE_OTHER, status, 0, 0);
		return;
	}
	metrics_request(W.mslot, W.cur.route, status, W.cur.t0, W.now);
	W.cur = W.outer;
	W.outer.req = NULL;
}

static void
respond(h2o_req_t *req, int status, const char *body, size_t len)
{
	worker_account(req, status);
	req->res.status = status;
	req->res.reason = status_reason(status);
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE,
	    NULL, H2O_STRLIT("application/json"));
	req->res.content_length = len;
	h2o_send_inline(req, body, len);
}

static int
respond_error(h2o_req_t *req, int status, const char *msg)
{
	char buf[512];
	size_t off = 0;

	if (json_format_error(buf, sizeof(buf), &off, msg) == -1)
		off = 0;
	respond(req, status, buf, off);
	return 0;
}

static int
respond_retry(h2o_req_t *req, const char *msg)
{
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER,
	    NULL, H2O_STRLIT("1"));
	return respond_error(req, 503, msg);
}

static int
respond_method(h2o_req_t *req, const char *allow)
{
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL,
	    allow, strlen(allow));
	return respond_error(req, 405, "method not allowed");
}

static void
respond_total(h2o_req_t *req, int status, const char *key, size_t key_len,
    int64_t total, int get)
{
	char buf[RESP_MAX];
	size_t off = 0;
	int rc;

	rc = get ? json_format_get(buf, sizeof(buf), &off, key, key_len, total)
	    : json_format_total(buf, sizeof(buf), &off, key, key_len, total);
	if (rc == -1) {
		respond_error(req, 500, "response too large");
		return;
	}
	respond(req, status, buf, off);
}

/*
 * The client is over its rate: answer 429 here, before anything is
 * parsed, journaled or counted.  Returns 1 when it answered.
 */
static int
worker_ratelimited(h2o_req_t *req)
{
	struct ratelimit_str xff[RATELIMIT_MAX_XFF + 1];
	struct ratelimit_client c;
	struct sockaddr_storage ss;
	struct timespec now;
	socklen_t len;
	uint64_t retry;
	ssize_t i = -1;
	char ra[24];
	int n = 0;

	if (!ratelimit_enabled(W.shm->rl))
		return 0;
	memset(&ss, 0, sizeof(ss));
	len = req->conn->callbacks->get_peername(req->conn, (void *)&ss);
	while (n <= RATELIMIT_MAX_XFF && (i = h2o_find_header(&req->headers,
	    H2O_TOKEN_X_FORWARDED_FOR, i)) != -1) {
		xff[n].p = req->headers.entries[i].value.base;
		xff[n++].len = req->headers.entries[i].value.len;
	}
	if (ratelimit_client(W.shm->rl, (void *)&ss, len, xff, n, &c) != 0)
		return 0;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (ratelimit_take(W.shm->rl, &c, (uint64_t)now.tv_sec * 1000000000 +
	    now.tv_nsec, &retry) == 0)
		return 0;
	shm_count(&W.h->stats.ratelimited, 1);
	n = snprintf(ra, sizeof(ra), "%llu", (unsigned long long)retry);
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER,
	    NULL, h2o_strdup(&req->pool, ra, n).base, n);
	respond_error(req, 429, "rate limit exceeded");
	return 1;
}

/* --- batches and the journal --- */

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

static void
req_token_dispose(void *p)
{
	struct req_token *t = p;

	if (t->ref)
		*t->ref = NULL;
}

static struct req_token *
req_token_new(h2o_req_t *req, h2o_req_t **ref)
{
	struct req_token *t;

	t = h2o_mem_alloc_shared(&req->pool, sizeof(*t), req_token_dispose);
	t->ref = ref;
	t->t0 = W.cur.t0;
	t->route = W.cur.route;
	return t;
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
			respond_retry(w->req, msg);
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
			respond_total(w->req, 202, w->e->key, w->e->key_len,
			    total, 0);
		}
		counters_release_tail(W.shm->counters, W.own);
	}
	W.now = 0;
}

static void
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
			__atomic_store_n(&W.slot->wait_lsn, 0, __ATOMIC_RELAXED);
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

static void
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
	 * applies its deltas if so (counters_owner_adopt).
	 */
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

static void
worker_close_batch(h2o_timeout_entry_t *entry)
{
	struct batch *b = W.open;

	W.open = NULL;
	if (b && b->nw)
		worker_write(b);
	else if (b)
		batch_free(b);
}

/* --- routes --- */

static int
content_type_ok(h2o_req_t *req)
{
	ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
	const char *v;
	size_t n;

	if (i == -1)
		return 1;
	v = req->headers.entries[i].value.base;
	n = req->headers.entries[i].value.len;
	if (n < 16 || strncasecmp(v, "application/json", 16) != 0)
		return 0;
	return n == 16 || v[16] == ';' || v[16] == ' ' || v[16] == '\t';
}

/*
 * Room runs short, and only a flush gives it back: ask the flusher not to
 * wait out flush_interval.  Not while PostgreSQL is down, where a wake-up
 * would cut its back-off short; at most every 100 ms from each worker.
 */
static void
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
static int
backlog_full(void)
{
	uint64_t ins = shm_load(&W.h->insert_lsn);
	uint64_t ck = shm_load(&W.h->checkpoint_lsn);

	if (ins <= ck || ins - ck <= W.cf->max_size / 2)
		return 0;
	worker_ask_flush();
	return ins - ck > W.cf->max_size;
}

/*
 * The Idempotency-Key, if any: -1 for a malformed one (answered), 0 when
 * absent, else its length in ik.
 */
static ssize_t
idem_header(h2o_req_t *req, char *ik)
{
	ssize_t i, n;

	i = h2o_find_header_by_str(&req->headers,
	    H2O_STRLIT("idempotency-key"), -1);
	if (i == -1)
		return 0;
	if (h2o_find_header_by_str(&req->headers,
	    H2O_STRLIT("idempotency-key"), i) != -1) {
		respond_error(req, 400, "more than one Idempotency-Key");
		return -1;
	}
	n = request_parse_idem_key(req->headers.entries[i].value.base,
	    req->headers.entries[i].value.len, ik, REQUEST_MAX_IDEM_BYTES);
	if (n <= 0) {
		respond_error(req, 400, "Idempotency-Key must be 1 to 255 "
		    "printable ASCII characters, bare or quoted");
		return -1;
	}
	return n;
}

/*
 * Settle the request's Idempotency-Key before anything is journaled.
 * Returns 1 when the request was answered here, 0 to go on (with *ie
 * claimed when there is a key).
 */
static int
idem_settle(h2o_req_t *req, const struct increment_req *in, const char *ik,
    size_t ik_len, struct idem_entry **ie)
{
	int status;
	int64_t total;

	*ie = NULL;
	if (ik_len == 0)
		return 0;
	switch (idem_begin(W.shm->idem, ik, ik_len, in->key, in->key_len,
	    in->value, idem_now_us(), W.pid, ie, &status, &total)) {
	case IDEM_NEW:
		return 0;
	case IDEM_REPLAY:
		shm_count(&W.h->stats.replays, 1);
		h2o_add_header_by_str(&req->pool, &req->res.headers,
		    H2O_STRLIT("idempotent-replayed"), 0, NULL,
		    H2O_STRLIT("true"));
		respond_total(req, status, in->key, in->key_len, total, 0);
		return 1;
	case IDEM_MISMATCH:
		respond_error(req, 422, "Idempotency-Key already used for "
		    "another request");
		return 1;
	case IDEM_INFLIGHT:
		respond_error(req, 409, "a request with this Idempotency-Key "
		    "is still in progress");
		return 1;
	case IDEM_FULL:
	default:
		respond_retry(req, "Idempotency-Key table full");
		return 1;
	}
}

static int	post_accept(h2o_req_t *, const struct post *,
		    const struct counters_seed *);
static int	post_ask(h2o_req_t *, const struct post *);
static int	post_check_idem(h2o_req_t *, const struct post *);
static void	lookup_token_dispose(void *);
static void	lookup_done(void *, int, int64_t);
static void	idem_checked(void *, int, int64_t, uint64_t);

static int
handle_post(h2o_req_t *req)
{
	struct increment_req in;
	struct idem_entry *ie;
	struct post p;
	char err[128], ik[REQUEST_MAX_IDEM_BYTES];
	ssize_t ik_len;

	if (req->entity.base == NULL)
		return respond_error(req, 400, "body is not valid JSON");
	if (!content_type_ok(req))
		return respond_error(req, 415, "content type must be "
		    "application/json");
	if (req->entity.len > W.cf->max_body)
		return respond_error(req, 413, "body too large");
	if (request_parse_increment(req->entity.base, req->entity.len,
	    W.cf->max_key_bytes, &in, err, sizeof(err)) == -1)
		return respond_error(req, 400, err);
	counters_prefetch(W.shm->counters, in.key, in.key_len);
	if ((ik_len = idem_header(req, ik)) == -1)
		return 0;
	if (W.h->journal_errno || W.h->sync_failed)
		return respond_retry(req, "journal unavailable");
	if (backlog_full())
		return respond_retry(req, "journal full: PostgreSQL is behind");
	/*
	 * Before the flusher has read this node's earlier keys back from
	 * PostgreSQL, a key's reuse for another request would look new and
	 * be acknowledged, then dropped at flush.  Unkeyed requests go on.
	 */
	if (ik_len && !__atomic_load_n(&W.h->keys_loaded, __ATOMIC_ACQUIRE))
		return respond_retry(req, "Idempotency-Keys not loaded from "
		    "PostgreSQL yet");
	/* Settled first: a refusal must not leave a key behind. */
	if (idem_settle(req, &in, ik, ik_len, &ie))
		return 0;
	p.key = in.key;
	p.key_len = in.key_len;
	p.value = in.value;
	p.ik = ik;
	p.ik_len = ik_len;
	p.ie = ie;
	p.asked = 0;
	if (ie != NULL && idem_forgetting(W.shm->idem, idem_now_us()))
		return post_check_idem(req, &p);
	return post_accept(req, &p, NULL);
}

/*
 * Reserve the increment and add it to the open batch.  A key the table
 * does not hold needs seed, PostgreSQL's total for it: without one, the
 * request waits for it (post_ask).
 */
static int
post_accept(h2o_req_t *req, const struct post *p,
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
		return post_ask(req, p);
	case COUNTERS_OVERFLOW:
		if (p->ie)
			idem_abort(W.shm->idem, p->ie);
		return respond_error(req, 422, "total would leave int64");
	case COUNTERS_BUSY:
		if (p->ie)
			idem_abort(W.shm->idem, p->ie);
		return respond_retry(req, "too many increments in flight");
	case COUNTERS_FULL:
	default:
		if (p->ie)
			idem_abort(W.shm->idem, p->ie);
		/* Keys with nothing left to flush can be evicted. */
		worker_ask_flush();
		return respond_retry(req, "counter table full");
	}

	if (W.open == NULL) {
		if ((W.open = batch_new()) == NULL) {
			counters_release_head(W.shm->counters, W.own);
			if (p->ie)
				idem_abort(W.shm->idem, p->ie);
			return respond_retry(req, "out of memory");
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
	w->tok = req_token_new(req, &w->req);
	return 0;
}

static struct lookup *
lookup_new(h2o_req_t *req, const char *key, size_t len, size_t extra)
{
	struct lookup *l;

	if ((l = malloc(sizeof(*l) + len + extra)) == NULL)
		return NULL;
	memcpy(l->key, key, len);
	l->key_len = len;
	l->req = req;
	l->is_post = 0;
	l->tok = h2o_mem_alloc_shared(&req->pool, sizeof(*l->tok),
	    lookup_token_dispose);
	l->tok->l = l;
	l->tok->t0 = W.cur.t0;
	l->tok->route = W.cur.route;
	W.lookups++;
	return l;
}

/*
 * The first increment of a key the table does not hold: PostgreSQL may
 * hold a total for it (this node's before a restart or an eviction,
 * other nodes').  Ask, and go on in post_asked().  When PostgreSQL is
 * down, or keeps being outrun by this node's own flushes, the increment
 * goes on without: its total counts from 0 until the flusher reads it.
 */
static int
post_ask(h2o_req_t *req, const struct post *p)
{
	struct counters_seed seed;
	struct lookup *l;

	if (p->asked >= POST_MAX_ASKS || !__atomic_load_n(&W.h->pg_up,
	    __ATOMIC_RELAXED)) {
		memset(&seed, 0, sizeof(seed));
		seed.gen = counters_seed_gen(W.shm->counters, p->key,
		    p->key_len);
		return post_accept(req, p, &seed);
	}
	if ((l = lookup_new(req, p->key, p->key_len, p->ik_len)) == NULL) {
		if (p->ie)
			idem_abort(W.shm->idem, p->ie);
		return respond_retry(req, "out of memory");
	}
	memcpy(l->key + p->key_len, p->ik, p->ik_len);
	l->is_post = 1;
	l->post = *p;
	l->post.key = l->key;
	l->post.ik = l->key + p->key_len;
	l->post.asked++;
	/* Before the question: a takeover after it makes the answer old. */
	l->gen = counters_seed_gen(W.shm->counters, p->key, p->key_len);
	shm_count(&W.h->stats.key_lookups, 1);
	l->pr = pgread_lookup(W.pg, l->key, l->key_len, lookup_done, l);
	return 0;
}

static void
post_asked(struct lookup *l, int status, int64_t value)
{
	struct counters_seed seed;

	seed.gen = l->gen;
	seed.known = status >= 0;
	seed.committed = status == 1 ? value : 0;
	if (status < 0)
		log_debug("no total from PostgreSQL for key '%.*s': "
		    "counting from 0", (int)(l->key_len > 64 ? 64 :
		    l->key_len), l->key);
	post_accept(l->req, &l->post, &seed);
}

/*
 * The table has given up keys whose requests PostgreSQL holds (idem.h,
 * "Forgetting"), and this one it does not know: our claim keeps its
 * retries out (409) while PostgreSQL says whether it was used, and the
 * request goes on in idem_checked().
 */
static int
post_check_idem(h2o_req_t *req, const struct post *p)
{
	struct lookup *l;

	if (!__atomic_load_n(&W.h->pg_up, __ATOMIC_RELAXED)) {
		idem_abort(W.shm->idem, p->ie);
		return respond_retry(req, "PostgreSQL unavailable to check "
		    "the Idempotency-Key");
	}
	if ((l = lookup_new(req, p->key, p->key_len, p->ik_len)) == NULL) {
		idem_abort(W.shm->idem, p->ie);
		return respond_retry(req, "out of memory");
	}
	memcpy(l->key + p->key_len, p->ik, p->ik_len);
	l->post = *p;
	l->post.key = l->key;
	l->post.ik = l->key + p->key_len;
	shm_count(&W.h->stats.idem_lookups, 1);
	l->pr = pgread_lookup_idem(W.pg, l->post.ik, p->ik_len, l->key,
	    l->key_len, p->value, idem_checked, l);
	return 0;
}

static void
idem_checked(void *arg, int status, int64_t pg_total, uint64_t used_us)
{
	struct lookup *l = arg;
	struct post *p = &l->post;
	h2o_req_t *req = l->req;
	int64_t committed, unflushed, total;
	int known;

	W.lookups--;
	if (req == NULL) {
		/* Its client went away before anything was journaled. */
		idem_abort(W.shm->idem, p->ie);
		free(l);
		return;
	}
	l->req = NULL;
	l->tok->l = NULL;
	worker_resume_at(req, l->tok->t0, l->tok->route);
	switch (status) {
	case 0:
		post_accept(req, p, NULL);
		break;
	case 1:
		/*
		 * Answered before, as after a restart: the kept response
		 * is gone, so the replay reports the total known now.
		 */
		if (counters_peek(W.shm->counters, p->key, p->key_len,
		    &committed, &unflushed, &known) != COUNTERS_PEEK_HELD ||
		    !known || __builtin_add_overflow(committed, unflushed,
		    &total))
			total = pg_total;
		idem_complete(W.shm->idem, p->ie, 202, total,
		    used_us + W.cf->idem_ttl_us, 0);
		shm_count(&W.h->stats.replays, 1);
		h2o_add_header_by_str(&req->pool, &req->res.headers,
		    H2O_STRLIT("idempotent-replayed"), 0, NULL,
		    H2O_STRLIT("true"));
		respond_total(req, 202, p->key, p->key_len, total, 0);
		break;
	case 2:
		idem_abort(W.shm->idem, p->ie);
		respond_error(req, 422, "Idempotency-Key already used for "
		    "another request");
		break;
	default:
		idem_abort(W.shm->idem, p->ie);
		respond_retry(req, "PostgreSQL unavailable to check the "
		    "Idempotency-Key");
		break;
	}
	free(l);
}

static void
lookup_token_dispose(void *p)
{
	struct lookup_token *t = p;

	if (t->l) {
		t->l->req = NULL;
		pgread_cancel(t->l->pr);
	}
}

static void
lookup_done(void *arg, int status, int64_t value)
{
	struct lookup *l = arg;

	W.lookups--;
	if (l->req && l->is_post) {
		l->tok->l = NULL;
		worker_resume_at(l->req, l->tok->t0, l->tok->route);
		post_asked(l, status, value);
	} else if (l->is_post) {
		/* Its client went away before anything was journaled. */
		if (l->post.ie)
			idem_abort(W.shm->idem, l->post.ie);
	} else if (l->req) {
		h2o_req_t *req = l->req;

		/* l is freed below; the pool's token must not point at it. */
		l->req = NULL;
		l->tok->l = NULL;
		worker_resume_at(req, l->tok->t0, l->tok->route);
		if (status == 1)
			respond_total(req, 200, l->key, l->key_len, value, 1);
		else if (status == 0)
			respond_error(req, 404, "no such key");
		else
			respond_retry(req, "PostgreSQL unavailable");
	}
	free(l);
}

static int
handle_get(h2o_req_t *req, const char *raw, size_t raw_len)
{
	char key[REQUEST_MAX_KEY_BYTES];
	struct lookup *l;
	ssize_t n;
	int64_t committed, unflushed, total;
	int known;

	n = request_decode_key(raw, raw_len, key, W.cf->max_key_bytes);
	if (n <= 0)
		return respond_error(req, 400, "bad key in path");
	if (counters_peek(W.shm->counters, key, n, &committed, &unflushed,
	    &known) == COUNTERS_PEEK_HELD) {
		/*
		 * Rebuilt from the journal at start, or made again after
		 * an eviction, and PostgreSQL's value not read since: only
		 * part of the total is known here.
		 */
		if (!known)
			return respond_retry(req, "total not known until "
			    "PostgreSQL is reachable");
		if (!__builtin_add_overflow(committed, unflushed, &total)) {
			respond_total(req, 200, key, n, total, 1);
			return 0;
		}
	}
	/*
	 * Not held, or held bare: its increments here may all be pending
	 * or refused, and PostgreSQL says whether any was acknowledged.
	 */
	if ((l = lookup_new(req, key, n, 0)) == NULL)
		return respond_retry(req, "out of memory");
	l->pr = pgread_lookup(W.pg, key, n, lookup_done, l);
	return 0;
}

/*
 * The damaged frame found at run time, as a JSON value for /readyz: null,
 * or where it is and why (the texts hold no quotes).
 */
static void
readyz_corrupt(char *out, size_t cap, uint64_t lsn)
{
	char seg[32];

	if (lsn == 0) {
		snprintf(out, cap, "null");
		return;
	}
	journal_seg_name(seg, sizeof(seg), journal_seg_base(W.h->seg_size,
	    lsn));
	snprintf(out, cap, "{\"segment\":\"%s\",\"offset\":%llu,\"lsn\":%llu,"
	    "\"reason\":\"journal corrupt in %s at offset %llu: %s; "
	    "flushing stopped there\"}", seg,
	    (unsigned long long)(lsn % W.h->seg_size), (unsigned long long)lsn,
	    seg, (unsigned long long)(lsn % W.h->seg_size), W.h->corrupt_why);
}

static int
handle_readyz(h2o_req_t *req)
{
	struct shm_hdr *h = W.h;
	char buf[1536], corrupt[400];
	uint64_t ins = shm_load(&h->insert_lsn), ck = shm_load(&h->checkpoint_lsn);
	uint64_t bad = shm_load(&h->corrupt_lsn);
	int ready = h->pg_up && !h->journal_errno && !h->sync_failed && !bad;
	int n;

	readyz_corrupt(corrupt, sizeof(corrupt), bad);
	n = snprintf(buf, sizeof(buf),
	    "{\"ready\":%s,\"journal\":{\"insert_lsn\":%llu,"
	    "\"written_lsn\":%llu,\"durable_lsn\":%llu,\"checkpoint_lsn\":%llu,"
	    "\"backlog_bytes\":%llu,\"max_size\":%llu,\"error\":%s%s%s,"
	    "\"sync_failed\":%s,\"corrupt\":%s},\"postgres\":{\"up\":%s},"
	    "\"counters\":{\"keys\":%llu,\"capacity\":%llu}}",
	    ready ? "true" : "false", (unsigned long long)ins,
	    (unsigned long long)shm_load(&h->written_lsn),
	    (unsigned long long)shm_load(&h->durable_lsn),
	    (unsigned long long)ck,
	    (unsigned long long)(ins > ck ? ins - ck : 0),
	    (unsigned long long)W.cf->max_size,
	    h->journal_errno ? "\"" : "",
	    h->journal_errno ? strerror(h->journal_errno) : "null",
	    h->journal_errno ? "\"" : "",
	    h->sync_failed ? "true" : "false", corrupt,
	    h->pg_up ? "true" : "false",
	    (unsigned long long)counters_count(W.shm->counters),
	    (unsigned long long)W.shm->counters->capacity);
	respond(req, ready ? 200 : 503, buf, n);
	return 0;
}

/* The Prometheus text format, summed over all processes by the region. */
static int
handle_metrics(h2o_req_t *req)
{
	struct metrics_snap snap;
	size_t cap = 65536, n;
	char *buf;

	metrics_snapshot(W.shm, &snap);
	buf = h2o_mem_alloc_pool(&req->pool, cap);
	if ((n = metrics_render(&snap, buf, cap)) >= cap) {
		log_warnx("metrics need %zu bytes, more than %zu", n, cap);
		return respond_error(req, 500, "metrics too large");
	}
	worker_account(req, 200);
	req->res.status = 200;
	req->res.reason = "OK";
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE,
	    NULL, H2O_STRLIT("text/plain; version=0.0.4"));
	req->res.content_length = n;
	h2o_send_inline(req, buf, n);
	return 0;
}

static int
path_is(h2o_iovec_t p, const char *s)
{
	size_t n = strlen(s);

	return p.len == n && memcmp(p.base, s, n) == 0;
}

static int
method_is(h2o_req_t *req, const char *m)
{
	return h2o_memis(req->method.base, req->method.len, m, strlen(m));
}

static int
worker_on_req(h2o_handler_t *self, h2o_req_t *req)
{
	h2o_iovec_t p = req->path;
	size_t q;

	worker_begin(req);
	/* Route on the raw path: keys are percent-decoded exactly once. */
	for (q = 0; q < p.len && p.base[q] != '?'; q++)
		;
	p.len = q;
	if (p.len >= 7 && memcmp(p.base, "/api/v1", 7) == 0 &&
	    (p.len == 7 || p.base[7] == '/')) {
		p.base += 7;
		p.len -= 7;
	}
	/* Probes and metrics are exempt: a limit must not fail them. */
	if (!path_is(p, "/healthz") && !path_is(p, "/readyz") &&
	    !path_is(p, "/metrics") && worker_ratelimited(req))
		return 0;
	if (path_is(p, "/increment")) {
		if (!method_is(req, "POST"))
			return respond_method(req, "POST");
		return handle_post(req);
	}
	if (p.len > 11 && memcmp(p.base, "/increment/", 11) == 0) {
		if (!method_is(req, "GET") && !method_is(req, "HEAD"))
			return respond_method(req, "GET, HEAD");
		return handle_get(req, p.base + 11, p.len - 11);
	}
	if (path_is(p, "/healthz")) {
		if (!method_is(req, "GET") && !method_is(req, "HEAD"))
			return respond_method(req, "GET, HEAD");
		respond(req, 200, "{\"status\":\"ok\"}", 15);
		return 0;
	}
	if (path_is(p, "/metrics")) {
		if (!method_is(req, "GET") && !method_is(req, "HEAD"))
			return respond_method(req, "GET, HEAD");
		return handle_metrics(req);
	}
	if (path_is(p, "/readyz")) {
		if (!method_is(req, "GET") && !method_is(req, "HEAD"))
			return respond_method(req, "GET, HEAD");
		return handle_readyz(req);
	}
	return respond_error(req, 404, "no such path");
}

/* Whether the frame a dead predecessor was publishing at lsn made it. */
static int
worker_frame_published(void *arg, uint64_t lsn)
{
	struct frame_info fi;
	const uint8_t *f;

	if ((f = journal_at(&W.j, lsn, 0)) == NULL) {
		log_warn("cannot read journal LSN %llu to settle the previous "
		    "worker's last frame; taking it as unwritten",
		    (unsigned long long)lsn);
		return 0;
	}
	return journal_frame_check(f, W.h->seg_size - lsn % W.h->seg_size,
	    lsn, W.h->epoch, &fi) == FRAME_OK;
}

/* --- sockets and the loop --- */

/*
 * At max_connections (or out of descriptors) the worker takes its
 * listeners out of the loop instead of accepting and closing: the kernel
 * keeps new connections in the backlog, and the other workers, which
 * share the listening sockets, take them meanwhile.
 */
static void
worker_on_accept(h2o_socket_t *, const char *);

static void
worker_pause_accept(void)
{
	if (W.paused)
		return;
	W.paused = 1;
	for (int i = 0; i < W.nlisten; i++)
		if (W.listeners[i])
			h2o_socket_read_stop(W.listeners[i]);
}

static void
worker_resume_accept(void)
{
	if (!W.paused || worker_stop)
		return;
	W.paused = 0;
	if (h2o_timeout_is_linked(&W.resume_entry))
		h2o_timeout_unlink(&W.resume_entry);
	for (int i = 0; i < W.nlisten; i++)
		if (W.listeners[i])
			h2o_socket_read_start(W.listeners[i],
			    worker_on_accept);
}

static void
worker_on_resume_timeout(h2o_timeout_entry_t *entry)
{
	if (W.nconns < W.max_conns)
		worker_resume_accept();
}

static void
worker_on_conn_close(void *data)
{
	W.nconns--;
	if (W.nconns < W.max_conns && !h2o_timeout_is_linked(&W.resume_entry))
		worker_resume_accept();
}

static void
worker_on_accept(h2o_socket_t *listener, const char *err)
{
	h2o_socket_t *sock;

	if (err != NULL)
		return;
	/* Drain the backlog: one readiness event may stand for many. */
	while (W.nconns < W.max_conns) {
		errno = 0;
		if ((sock = h2o_evloop_socket_accept(listener)) == NULL) {
			/*
			 * Out of descriptors: the connection stays in the
			 * backlog and the listener stays readable, so wait
			 * rather than spin until one is freed.
			 */
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				log_warn("accept: pausing for a second with "
				    "%llu connections open",
				    (unsigned long long)W.nconns);
				worker_pause_accept();
				h2o_timeout_link(W.loop, &W.resume_timeout,
				    &W.resume_entry);
			}
			return;
		}
		W.nconns++;
		sock->on_close.cb = worker_on_conn_close;
		sock->on_close.data = NULL;
		h2o_accept(&W.accept, sock);
	}
	worker_pause_accept();
}

/*
 * Room for max_connections descriptors and a few more (journal segments,
 * PostgreSQL, the wake-up eventfd): raise the soft limit up to the hard
 * one, and accept fewer connections if even that is too low.
 */
static void
worker_fd_limit(void)
{
	struct rlimit rl;
	uint64_t want = W.cf->max_connections + 64;

	W.max_conns = W.cf->max_connections;
	if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
		return;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ||
		    rl.rlim_max > want ? want : rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		W.max_conns = rl.rlim_cur > 128 ? rl.rlim_cur - 64 : 64;
		log_warnx("open file limit is %llu: accepting at most %llu "
		    "connections per worker, not server.max_connections = %llu",
		    (unsigned long long)rl.rlim_cur,
		    (unsigned long long)W.max_conns,
		    (unsigned long long)W.cf->max_connections);
	}
}

static void
worker_setup_h2o(void)
{
	h2o_hostconf_t *host;
	h2o_pathconf_t *path;
	h2o_handler_t *handler;

	h2o_config_init(&W.h2o);
	/* Bodies over max_body get our JSON 413; h2o cuts off far beyond. */
	W.h2o.max_request_entity_size = W.cf->max_body * 4 + 65536;
	/*
	 * h2o 2.2 has one HTTP/1.1 timer, armed when a request is awaited
	 * and never pushed back by reads: it bounds the idle keep-alive
	 * wait, the header and the body together, so a client trickling
	 * bytes cannot hold a connection.  HTTP/2's idle timer runs while
	 * no request is being answered.
	 */
	W.h2o.http1.req_timeout = W.cf->request_timeout_us / 1000;
	W.h2o.http2.idle_timeout = W.cf->idle_timeout_us / 1000;
	W.h2o.http1.upgrade_to_http2 = W.cf->http2;
	host = h2o_config_register_host(&W.h2o,
	    h2o_iovec_init(H2O_STRLIT("default")), 65535);
	path = h2o_config_register_path(host, "/", 0);
	handler = h2o_create_handler(path, sizeof(*handler));
	handler->on_req = worker_on_req;
	W.loop = h2o_evloop_create();
	h2o_context_init(&W.ctx, W.loop, &W.h2o);
	W.accept.ctx = &W.ctx;
	W.accept.hosts = W.h2o.hosts;
	/* h2o's timers count whole milliseconds: 200us must not become 0. */
	h2o_timeout_init(W.loop, &W.close_timeout,
	    (W.cf->commit_delay_us + 999) / 1000);
	W.close_entry.cb = worker_close_batch;
	h2o_timeout_init(W.loop, &W.resume_timeout, 1000);
	W.resume_entry.cb = worker_on_resume_timeout;
}

static void
worker_stop_accepting(void)
{
	for (int i = 0; i < W.nlisten; i++) {
		if (W.listeners[i]) {
			h2o_socket_read_stop(W.listeners[i]);
			h2o_socket_close(W.listeners[i]);
			W.listeners[i] = NULL;
		}
	}
}

/* What a graceful stop found, for its log line. */
struct drain {
	unsigned	busy;	/* a request begun: answered, then closed */
	unsigned	idle;	/* closed at once */
};

/*
 * A connection is busy while h2o's input holds bytes of a request (it
 * keeps the request until the response is sent, and a partly received
 * body until the body is complete) or the kernel holds bytes h2o has not
 * read yet.  h2o makes every request whose headers it parses from now on
 * close its connection (shutdown_requested); one parsed before the stop
 * is told here, so that its answer says Connection: close as well.
 *
 * An idle connection ends now.  Its socket belongs to h2o's connection,
 * which a close here would leave with a freed socket: shutting down the
 * read side makes h2o's next read see end-of-file instead, and h2o closes
 * the connection on its own path.  A request that arrives in between
 * is still read before that end-of-file, and answered if it came whole.
 */
static int
worker_drain_conn(h2o_req_t *req, void *arg)
{
	struct drain *d = arg;
	h2o_socket_t *sock;
	int fd, unread = 0;

	if ((sock = req->conn->callbacks->get_socket(req->conn)) == NULL)
		return 0;
	fd = h2o_socket_get_fd(sock);
	if (sock->input->size == 0 && ioctl(fd, FIONREAD, &unread) == -1)
		unread = 1;	/* cannot tell: let it finish */
	if (sock->input->size != 0 || unread != 0) {
		req->http1_is_persistent = 0;
		d->busy++;
		return 0;
	}
	/* ENOTCONN: the peer is gone already, as h2o will see. */
	if (shutdown(fd, SHUT_RD) == -1 && errno != ENOTCONN)
		log_warn("stopping: shutdown of an idle connection");
	d->idle++;
	return 0;
}

/*
 * The beginning of a graceful stop, as nginx does it: no new connections,
 * idle ones closed, and each of the others closed once it has answered
 * the request it began.  HTTP/2 connections get h2o's GOAWAY, which
 * ends them once their streams are answered.
 */
static void
worker_drain(void)
{
	struct drain d = { 0, 0 };

	worker_stop_accepting();
	h2o_context_request_shutdown(&W.ctx);
	W.h2o.http1.callbacks.foreach_request(&W.ctx, worker_drain_conn, &d);
	if (d.busy)
		log_info("stopping: %u connection%s with a request in "
		    "progress, %u idle closed", d.busy, d.busy == 1 ? "" : "s",
		    d.idle);
	else
		log_debug("stopping: closing %u idle connections", d.idle);
}

int
worker_main(const struct config *cf, struct shm *shm, int slot,
    const int *listen_fds, int nlisten)
{
	struct sigaction sa;
	struct timespec t0 = { 0, 0 }, t;
	int stopping = 0;

	log_set_role("worker");
	memset(&W, 0, sizeof(W));
	W.cf = cf;
	W.shm = shm;
	W.h = shm->hdr;
	W.slotno = slot;
	W.pid = getpid();
	W.slot = &shm->hdr->slots[slot];
	W.mslot = &shm->hdr->metrics.slots[slot];
	W.own = shm->owners[slot];
	W.group = cf->sync == SYNC_GROUP;
	/*
	 * Requests held until their frame is durable keep their pools, so
	 * the heap's top grows and shrinks with every batch; glibc would
	 * hand it back with brk() each time (a TLB flush) and fault it in
	 * again.  Keep it instead.
	 */
	mallopt(M_TRIM_THRESHOLD, HEAP_KEEP);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = worker_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGQUIT, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	if (journal_open(&W.j, cf->journal_dir, W.h->seg_size, W.h->epoch,
	    cf->node) == -1)
		fatal(1, "cannot open journal directory %s",
		    cf->journal_dir);
	/* No fdatasync waits on a client here: journal.c says why. */
	W.j.store = !W.group;
	if (counters_ledger_head(W.own) != W.own->tail) {
		uint64_t held = counters_ledger_head(W.own) - W.own->tail;
		uint64_t n = counters_owner_adopt(W.shm->counters, W.own,
		    worker_frame_published, NULL);

		log_info("settled %llu increments left by the previous worker "
		    "in slot %d: %llu added to the table, the rest released",
		    (unsigned long long)held, slot, (unsigned long long)n);
	}
	W.frame_cap = journal_frame_bound(JOURNAL_MAX_RAW);
	if ((W.frame = malloc(W.frame_cap)) == NULL)
		fatal(1, "out of memory");
	worker_fd_limit();
	worker_setup_h2o();
	if ((W.pg = pgread_new(W.loop, cf)) == NULL)
		fatalx(1, "cannot set up PostgreSQL look-ups");
	W.wake = h2o_evloop_socket_create(W.loop, W.slot->efd,
	    H2O_SOCKET_FLAG_DONT_READ);
	h2o_socket_read_start(W.wake, worker_on_wake);
	W.nlisten = nlisten;
	for (int i = 0; i < nlisten; i++) {
		W.listeners[i] = h2o_evloop_socket_create(W.loop,
		    listen_fds[i], H2O_SOCKET_FLAG_DONT_READ);
		h2o_socket_read_start(W.listeners[i], worker_on_accept);
	}

	while (worker_stop != 2) {
		if (worker_stop == 1) {
			if (!stopping) {
				worker_drain();
				clock_gettime(CLOCK_MONOTONIC, &t0);
				stopping = 1;
			}
			/* Answer what is in flight, then go. */
			if (W.open == NULL && W.wait_head == NULL &&
			    W.lookups == 0 && W.nconns == 0)
				break;
			clock_gettime(CLOCK_MONOTONIC, &t);
			if ((t.tv_sec - t0.tv_sec) * 1000 +
			    (t.tv_nsec - t0.tv_nsec) / 1000000 > STOP_GRACE_MS) {
				log_warnx("stopping after %d s with %llu "
				    "connections still in progress%s",
				    STOP_GRACE_MS / 1000,
				    (unsigned long long)W.nconns,
				    W.open || W.wait_head || W.lookups ?
				    " and requests unanswered" : "");
				break;
			}
		}
		if (h2o_evloop_run(W.loop, 100) != 0 && errno != EINTR)
			log_warn("event loop");
		/* In case a wake-up raced with our last check. */
		worker_ack();
		proc_reloaded(W.h);
		/* Segments the flusher removed: let their space go. */
		journal_forget(&W.j, shm_load(&W.h->start_lsn));
	}
	return 0;
}
