/*
 * The increment routes: POST /increment and GET /increment/{key}.
 *
 * A POST is checked (body, Idempotency-Key, room in the journal) before
 * anything is reserved, so that a refusal changes nothing; then
 * worker_batch_add() takes it on.  Two answers may have to come from
 * PostgreSQL first, asked through pgread without holding up the loop:
 * the total of a key the table does not hold (counters_acquire() and
 * its seed, counters.h), and whether an Idempotency-Key the table has
 * given up was used (idem.h, "Forgetting").  A GET answers from the
 * table, or from PostgreSQL for a key the table does not hold whole.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "request.h"
#include "worker_int.h"

#define POST_MAX_ASKS	3	/* look-ups of a new key's total */

/*
 * A request waiting for PostgreSQL: a GET of a key the table does not
 * hold, the first increment of one (is_post), or an increment whose
 * Idempotency-Key the table may have forgotten (post_idem_checked).
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
 * The Idempotency-Key, if any: -1 for a malformed one (answered), 0 when
 * absent, else its length in ik.
 */
static ssize_t
post_idem_header(h2o_req_t *req, char *ik)
{
	ssize_t i, n;

	i = h2o_find_header_by_str(&req->headers,
	    H2O_STRLIT("idempotency-key"), -1);
	if (i == -1)
		return 0;
	if (h2o_find_header_by_str(&req->headers,
	    H2O_STRLIT("idempotency-key"), i) != -1) {
		worker_respond_error(req, 400, "more than one Idempotency-Key");
		return -1;
	}
	n = request_parse_idem_key(req->headers.entries[i].value.base,
	    req->headers.entries[i].value.len, ik, REQUEST_MAX_IDEM_BYTES);
	if (n <= 0) {
		worker_respond_error(req, 400, "Idempotency-Key must be 1 to "
		    "255 printable ASCII characters, bare or quoted");
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
post_idem_settle(h2o_req_t *req, const struct increment_req *in, const char *ik,
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
		worker_respond_total(req, status, in->key, in->key_len, total,
		    0);
		return 1;
	case IDEM_MISMATCH:
		worker_respond_error(req, 422, "Idempotency-Key already used "
		    "for another request");
		return 1;
	case IDEM_INFLIGHT:
		worker_respond_error(req, 409, "a request with this "
		    "Idempotency-Key is still in progress");
		return 1;
	case IDEM_FULL:
	default:
		worker_respond_retry(req, "Idempotency-Key table full");
		return 1;
	}
}

static int	post_check_idem(h2o_req_t *, const struct post *);
static void	lookup_token_dispose(void *);
static void	lookup_done(void *, int, int64_t);
static void	post_idem_checked(void *, int, int64_t, uint64_t);

int
worker_post(h2o_req_t *req)
{
	struct increment_req in;
	struct idem_entry *ie;
	struct post p;
	char err[128], ik[REQUEST_MAX_IDEM_BYTES];
	ssize_t ik_len;

	if (req->entity.base == NULL)
		return worker_respond_error(req, 400, "body is not valid JSON");
	if (!content_type_ok(req))
		return worker_respond_error(req, 415, "content type must be "
		    "application/json");
	if (req->entity.len > W.cf->max_body)
		return worker_respond_error(req, 413, "body too large");
	if (request_parse_increment(req->entity.base, req->entity.len,
	    W.cf->max_key_bytes, &in, err, sizeof(err)) == -1)
		return worker_respond_error(req, 400, err);
	counters_prefetch(W.shm->counters, in.key, in.key_len);
	if ((ik_len = post_idem_header(req, ik)) == -1)
		return 0;
	if (W.h->journal_errno || W.h->sync_failed)
		return worker_respond_retry(req, "journal unavailable");
	if (worker_backlog_full())
		return worker_respond_retry(req,
		    "journal full: PostgreSQL is behind");
	/*
	 * Before the flusher has read this node's earlier keys back from
	 * PostgreSQL, a key's reuse for another request would look new and
	 * be acknowledged, then dropped at flush.  Unkeyed requests go on.
	 */
	if (ik_len && !__atomic_load_n(&W.h->keys_loaded, __ATOMIC_ACQUIRE))
		return worker_respond_retry(req, "Idempotency-Keys not loaded "
		    "from PostgreSQL yet");
	/* Settled first: a refusal must not leave a key behind. */
	if (post_idem_settle(req, &in, ik, ik_len, &ie))
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
	return worker_batch_add(req, &p, NULL);
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
 * A look-up that parks increment p, its key and Idempotency-Key copied
 * in; NULL when out of memory, the request answered and its claim let go.
 */
static struct lookup *
lookup_park(h2o_req_t *req, const struct post *p)
{
	struct lookup *l;

	if ((l = lookup_new(req, p->key, p->key_len, p->ik_len)) == NULL) {
		if (p->ie)
			idem_abort(W.shm->idem, p->ie);
		worker_respond_retry(req, "out of memory");
		return NULL;
	}
	memcpy(l->key + p->key_len, p->ik, p->ik_len);
	l->post = *p;
	l->post.key = l->key;
	l->post.ik = l->key + p->key_len;
	return l;
}

/*
 * The first increment of a key the table does not hold: PostgreSQL may
 * hold a total for it (this node's before a restart or an eviction,
 * other nodes').  Ask, and go on in post_asked().  When PostgreSQL is
 * down, or keeps being outrun by this node's own flushes, the increment
 * goes on without: its total counts from 0 until the flusher reads it.
 */
int
worker_post_ask(h2o_req_t *req, const struct post *p)
{
	struct counters_seed seed;
	struct lookup *l;

	if (p->asked >= POST_MAX_ASKS || !__atomic_load_n(&W.h->pg_up,
	    __ATOMIC_RELAXED)) {
		memset(&seed, 0, sizeof(seed));
		seed.gen = counters_seed_gen(W.shm->counters, p->key,
		    p->key_len);
		return worker_batch_add(req, p, &seed);
	}
	if ((l = lookup_park(req, p)) == NULL)
		return 0;
	l->is_post = 1;
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
	worker_batch_add(l->req, &l->post, &seed);
}

/*
 * The table has given up keys whose requests PostgreSQL holds (idem.h,
 * "Forgetting"), and this one it does not know: our claim keeps its
 * retries out (409) while PostgreSQL says whether it was used, and the
 * request goes on in post_idem_checked().
 */
static int
post_check_idem(h2o_req_t *req, const struct post *p)
{
	struct lookup *l;

	if (!__atomic_load_n(&W.h->pg_up, __ATOMIC_RELAXED)) {
		idem_abort(W.shm->idem, p->ie);
		return worker_respond_retry(req, "PostgreSQL unavailable to "
		    "check the Idempotency-Key");
	}
	if ((l = lookup_park(req, p)) == NULL)
		return 0;
	shm_count(&W.h->stats.idem_lookups, 1);
	l->pr = pgread_lookup_idem(W.pg, l->post.ik, p->ik_len, l->key,
	    l->key_len, p->value, post_idem_checked, l);
	return 0;
}

static void
post_idem_checked(void *arg, int status, int64_t pg_total, uint64_t used_us)
{
	struct lookup *l = arg;
	struct post *p = &l->post;
	h2o_req_t *req = l->req;
	int64_t total;

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
		worker_batch_add(req, p, NULL);
		break;
	case 1:
	case 3:
		/*
		 * Answered before: with the total PostgreSQL kept, or for a
		 * row an earlier version wrote, the total known now.
		 */
		if (status == 3 || counters_peek_total(W.shm->counters,
		    p->key, p->key_len, &total) != COUNTERS_PEEK_HELD)
			total = pg_total;
		idem_complete(W.shm->idem, p->ie, 202, total,
		    used_us + W.cf->idem_ttl_us, 0);
		shm_count(&W.h->stats.replays, 1);
		h2o_add_header_by_str(&req->pool, &req->res.headers,
		    H2O_STRLIT("idempotent-replayed"), 0, NULL,
		    H2O_STRLIT("true"));
		worker_respond_total(req, 202, p->key, p->key_len, total, 0);
		break;
	case 2:
		idem_abort(W.shm->idem, p->ie);
		worker_respond_error(req, 422, "Idempotency-Key already used "
		    "for another request");
		break;
	default:
		idem_abort(W.shm->idem, p->ie);
		worker_respond_retry(req, "PostgreSQL unavailable to check the "
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
			worker_respond_total(req, 200, l->key, l->key_len,
			    value, 1);
		else if (status == 0)
			worker_respond_error(req, 404, "no such key");
		else
			worker_respond_retry(req, "PostgreSQL unavailable");
	}
	free(l);
}

int
worker_get(h2o_req_t *req, const char *raw, size_t raw_len)
{
	char key[REQUEST_MAX_KEY_BYTES];
	struct lookup *l;
	ssize_t n;
	int64_t committed, unflushed, total;
	int known;

	n = request_decode_key(raw, raw_len, key, W.cf->max_key_bytes);
	if (n <= 0)
		return worker_respond_error(req, 400, "bad key in path");
	if (counters_peek(W.shm->counters, key, n, &committed, &unflushed,
	    &known) == COUNTERS_PEEK_HELD) {
		/*
		 * Rebuilt from the journal at start, or made again after
		 * an eviction, and PostgreSQL's value not read since: only
		 * part of the total is known here.
		 */
		if (!known)
			return worker_respond_retry(req, "total not known "
			    "until PostgreSQL is reachable");
		if (!__builtin_add_overflow(committed, unflushed, &total)) {
			worker_respond_total(req, 200, key, n, total, 1);
			return 0;
		}
	}
	/*
	 * Not held, or held bare: its increments here may all be pending
	 * or refused, and PostgreSQL says whether any was acknowledged.
	 */
	if ((l = lookup_new(req, key, n, 0)) == NULL)
		return worker_respond_retry(req, "out of memory");
	l->pr = pgread_lookup(W.pg, key, n, lookup_done, l);
	return 0;
}
