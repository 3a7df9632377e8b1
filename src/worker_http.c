/*
 * The worker's HTTP side: routing a request, answering it in JSON, and
 * the routes that are not increments (/healthz, /readyz, /metrics).
 *
 * Every answer records its request in the metrics (worker_account): its
 * route, its status and its latency from arrival.  A request answered in
 * a later event (a durable frame, PostgreSQL's reply) carries a token in
 * its pool with its arrival time, and first becomes the current request
 * again (worker_resume_at).
 */
#include <sys/socket.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "ratelimit.h"
#include "request.h"
#include "worker_int.h"

#define RESP_MAX	(REQUEST_MAX_KEY_BYTES * 6 + 128)

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
void
worker_resume_at(h2o_req_t *req, uint64_t t0, enum metrics_route route)
{
	W.outer = W.cur;
	W.cur.req = req;
	W.cur.t0 = t0;
	W.cur.route = route;
}

void
worker_resume(struct req_token *t, h2o_req_t *req)
{
	t->ref = NULL;
	worker_resume_at(req, t->t0, t->route);
}

static void
req_token_dispose(void *p)
{
	struct req_token *t = p;

	if (t->ref)
		*t->ref = NULL;
}

struct req_token *
worker_token_new(h2o_req_t *req, h2o_req_t **ref)
{
	struct req_token *t;

	t = h2o_mem_alloc_shared(&req->pool, sizeof(*t), req_token_dispose);
	t->ref = ref;
	t->t0 = W.cur.t0;
	t->route = W.cur.route;
	return t;
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

void
worker_respond(h2o_req_t *req, int status, const char *body, size_t len)
{
	worker_account(req, status);
	req->res.status = status;
	req->res.reason = status_reason(status);
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE,
	    NULL, H2O_STRLIT("application/json"));
	req->res.content_length = len;
	h2o_send_inline(req, body, len);
}

int
worker_respond_error(h2o_req_t *req, int status, const char *msg)
{
	char buf[512];
	size_t off = 0;

	if (json_format_error(buf, sizeof(buf), &off, msg) == -1)
		off = 0;
	worker_respond(req, status, buf, off);
	return 0;
}

int
worker_respond_retry(h2o_req_t *req, const char *msg)
{
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER,
	    NULL, H2O_STRLIT("1"));
	return worker_respond_error(req, 503, msg);
}

static int
respond_method(h2o_req_t *req, const char *allow)
{
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL,
	    allow, strlen(allow));
	return worker_respond_error(req, 405, "method not allowed");
}

void
worker_respond_total(h2o_req_t *req, int status, const char *key,
    size_t key_len, int64_t total, int get)
{
	char buf[RESP_MAX];
	size_t off = 0;
	int rc;

	rc = get ? json_format_get(buf, sizeof(buf), &off, key, key_len, total)
	    : json_format_total(buf, sizeof(buf), &off, key, key_len, total);
	if (rc == -1) {
		worker_respond_error(req, 500, "response too large");
		return;
	}
	worker_respond(req, status, buf, off);
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
	worker_respond_error(req, 429, "rate limit exceeded");
	return 1;
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
	uint64_t ins = shm_load(&h->insert_lsn);
	uint64_t ck = shm_load(&h->checkpoint_lsn);
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
	worker_respond(req, ready ? 200 : 503, buf, n);
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
		return worker_respond_error(req, 500, "metrics too large");
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

int
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
		return worker_post(req);
	}
	if (p.len > 11 && memcmp(p.base, "/increment/", 11) == 0) {
		if (!method_is(req, "GET") && !method_is(req, "HEAD"))
			return respond_method(req, "GET, HEAD");
		return worker_get(req, p.base + 11, p.len - 11);
	}
	if (path_is(p, "/healthz")) {
		if (!method_is(req, "GET") && !method_is(req, "HEAD"))
			return respond_method(req, "GET, HEAD");
		worker_respond(req, 200, "{\"status\":\"ok\"}", 15);
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
	return worker_respond_error(req, 404, "no such path");
}
