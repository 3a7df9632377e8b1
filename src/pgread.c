/*
 * Asynchronous PostgreSQL look-ups for a worker's event loop.
 *
 * A GET for a key the shared table does not hold asks PostgreSQL, and so
 * does the first increment of one (its total counts in the answer).  The
 * worker's loop must never wait, so the one connection a worker keeps is
 * driven entirely by readiness events: PQconnectStart/PQconnectPoll while
 * connecting, PQsendQueryParams/PQflush/PQconsumeInput afterwards.  The
 * connection is opened on the first look-up, not at start, so workers of
 * a node whose data is all in shared memory never connect at all.
 *
 * libpq owns its socket and reads from it itself.  The loop only has to
 * say when the socket is ready, so h2o watches a dup() of it, created with
 * H2O_SOCKET_FLAG_DONT_READ (h2o then calls us without reading a byte).
 * The dup also means that closing the h2o socket never closes libpq's fd,
 * and that libpq closing its fd never leaves epoll watching a dead one.
 * libpq may replace its socket while connecting (another host of a
 * multi-host DSN, a retry without SSL or GSS encryption), possibly under
 * the same fd number, so the socket is compared by inode after every poll.
 *
 * Look-ups wait in a FIFO and one query is in flight at a time, for the
 * first PGREAD_BATCH look-ups of the queue at once (key = ANY($1)): a
 * primary key look-up costs PostgreSQL far less than the round trip, and
 * the first increments of many new keys (a restart, a new key space) ask
 * for thousands of keys a second.  The rows name their keys; a key with
 * no row has none.  Idempotency-Keys the shared table may have forgotten
 * are looked up the same way, in queries of their own: a query carries
 * the look-ups of one kind at the queue's head.
 *
 * Failure policy: any connection failure fails every queued look-up with
 * -1 (the worker answers 503 with Retry-After), the connection is dropped
 * and the next look-up reconnects, but not within PGREAD_RETRY_MS of the
 * last attempt or failure.  Within that back-off, and when the queue is
 * full, look-ups fail at once.
 * A look-up older than PGREAD_DEADLINE_MS means PostgreSQL or the network
 * hangs: it and all queued behind it fail and the connection is reset.
 *
 * A look-up whose client went away is cancelled: it still gets its
 * callback (with -1), but its query is not sent if it was not already.
 *
 * Every callback runs from the loop and exactly once; a look-up that fails
 * at once is put on a list delivered by a zero timeout, so pgread_lookup()
 * never calls back into its caller.
 *
 * Host names in the DSN are resolved by libpq with a blocking
 * getaddrinfo(); use an address or a Unix socket directory.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "log.h"
#include "pgread.h"

#define PGREAD_DEADLINE_MS	2000
#define PGREAD_RETRY_MS		1000
#define PGREAD_MAX_QUEUE	10000
#define PGREAD_BATCH		256
#define PGREAD_STMT		"tally_lookup"

enum pgread_kind {
	PGREAD_KEY,		/* a counter key's total */
	PGREAD_IDEM		/* an Idempotency-Key's use */
};

enum pgread_state {
	PGREAD_IDLE,		/* no connection */
	PGREAD_CONNECTING,	/* PQconnectPoll in progress */
	PGREAD_READY,		/* connected, nothing in flight */
	PGREAD_BUSY		/* the queue head's query is in flight */
};

struct pgread_req {
	struct pgread_req	*next;
	struct pgread		*p;
	h2o_timeout_entry_t	 deadline;
	enum pgread_kind	 kind;
	pgread_cb		 cb;		/* PGREAD_KEY */
	pgread_idem_cb		 idem_cb;	/* PGREAD_IDEM */
	void			*arg;
	int			 status;
	int64_t			 value;
	uint64_t		 used_us;	/* PGREAD_IDEM */
	int			 cancelled;	/* its client went away */
	size_t			 len;		/* the key, or the ik */
	size_t			 val_len;	/* PGREAD_IDEM: the value, decimal */
	size_t			 key_len;	/* PGREAD_IDEM: the counter key */
	char			 key[];		/* then the value, the key */
};

struct pgread_list {
	struct pgread_req	*head;
	struct pgread_req	**tail;
	size_t			 n;
};

struct pgread {
	h2o_loop_t		*loop;
	char			*dsn;
	char			*schema;
	uint64_t		 idem_ttl_us;

	enum pgread_state	 state;
	PGconn			*conn;
	PostgresPollingStatusType want;	/* while connecting */
	char			*query;		/* with the quoted schema */
	char			*query_idem;
	h2o_socket_t		*sock;		/* watches a dup of libpq's fd */
	dev_t			 sock_dev;
	ino_t			 sock_ino;
	uint64_t		 last_attempt;	/* loop ms: last connect or failure */
	int			 down;		/* failure logged, not yet ok */
	uint64_t		 last_err_log;	/* query errors, rate-limited */

	struct pgread_list	 queue;		/* head: in flight when BUSY */
	size_t			 nsent;		/* of the queue, in flight */
	int			 preparing;	/* the statement is in flight */
	int			 prepared;	/* ... and PostgreSQL has it */
	int			 delivering;	/* answers being called back */
	char			*arr;		/* the array parameter */
	size_t			 arr_cap;
	struct pgread_list	 done;		/* answered, to be delivered */

	h2o_timeout_t		 deadline_to;
	h2o_timeout_t		 zero_to;
	h2o_timeout_entry_t	 deliver;
};

static void	pgread_on_read(h2o_socket_t *, const char *);
static void	pgread_on_write(h2o_socket_t *, const char *);
static void	pgread_send_next(struct pgread *);
static void	pgread_flush(struct pgread *);

static void
pgread_list_init(struct pgread_list *l)
{
	l->head = NULL;
	l->tail = &l->head;
	l->n = 0;
}

static void
pgread_list_push(struct pgread_list *l, struct pgread_req *r)
{
	r->next = NULL;
	*l->tail = r;
	l->tail = &r->next;
	l->n++;
}

static struct pgread_req *
pgread_list_shift(struct pgread_list *l)
{
	struct pgread_req *r;

	if ((r = l->head) == NULL)
		return NULL;
	if ((l->head = r->next) == NULL)
		l->tail = &l->head;
	l->n--;
	r->next = NULL;
	return r;
}

/* libpq's messages span lines; a log entry is one line. */
static void
pgread_oneline(char *dst, size_t size, const char *msg)
{
	size_t o = 0;

	if (msg == NULL || *msg == '\0')
		msg = "unknown error";
	for (; *msg != '\0' && o < size - 1; msg++) {
		char ch = *msg;

		if (ch == '\n' || ch == '\r' || ch == '\t')
			ch = ' ';
		if (ch == ' ' && (o == 0 || dst[o - 1] == ' '))
			continue;
		dst[o++] = ch;
	}
	while (o > 0 && dst[o - 1] == ' ')
		o--;
	dst[o] = '\0';
}

/* Queue an answer for delivery from the zero timeout. */
static void
pgread_finish_later(struct pgread *p, struct pgread_req *r, int status,
    int64_t value)
{
	h2o_timeout_unlink(&r->deadline);
	r->status = status;
	r->value = value;
	pgread_list_push(&p->done, r);
	if (!h2o_timeout_is_linked(&p->deliver))
		h2o_timeout_link(p->loop, &p->zero_to, &p->deliver);
}

/* Answer r, then free it. */
static void
pgread_call(struct pgread_req *r)
{
	if (r->kind == PGREAD_IDEM)
		r->idem_cb(r->arg, r->status, r->value, r->used_us);
	else
		r->cb(r->arg, r->status, r->value);
	free(r);
}

static void
pgread_on_deliver(h2o_timeout_entry_t *ent)
{
	struct pgread *p = H2O_STRUCT_FROM_MEMBER(struct pgread, deliver, ent);
	struct pgread_list batch = p->done;
	struct pgread_req *r;

	/* Callbacks may fail new look-ups at once: those go to a new list. */
	if (batch.head == NULL)
		return;
	pgread_list_init(&p->done);
	while ((r = pgread_list_shift(&batch)) != NULL)
		pgread_call(r);
}

static void
pgread_unwatch(struct pgread *p)
{
	if (p->sock != NULL) {
		/* Closes our dup only; libpq's fd stays libpq's. */
		h2o_socket_close(p->sock);
		p->sock = NULL;
	}
}

/*
 * Drop the connection and fail everything queued.  The answers are
 * delivered later, so this is safe from any context.
 */
static void
pgread_reset(struct pgread *p)
{
	struct pgread_req *r;

	pgread_unwatch(p);
	if (p->conn != NULL) {
		PQfinish(p->conn);
		p->conn = NULL;
	}
	free(p->query);
	free(p->query_idem);
	p->query = p->query_idem = NULL;
	p->state = PGREAD_IDLE;
	p->nsent = 0;
	p->preparing = 0;
	/* The back-off runs from the failure, not from the last connect. */
	p->last_attempt = h2o_now(p->loop);
	while ((r = pgread_list_shift(&p->queue)) != NULL)
		pgread_finish_later(p, r, -1, 0);
}

static void
pgread_fail(struct pgread *p, const char *what, const char *msg)
{
	char line[512];

	pgread_oneline(line, sizeof(line), msg);
	if (!p->down) {
		if (p->queue.n > 0)
			log_warnx("pgread: %s: %s; %zu look-up(s) failed, "
			    "will reconnect on demand", what, line,
			    p->queue.n);
		else
			log_warnx("pgread: %s: %s; will reconnect on demand",
			    what, line);
		p->down = 1;
	} else
		log_debug("pgread: %s: %s", what, line);
	pgread_reset(p);
}

/*
 * Make sure h2o watches libpq's current socket.  Returns -1 when it
 * cannot (the caller resets).
 */
static int
pgread_watch(struct pgread *p)
{
	struct stat st;
	int fd, dfd;

	if ((fd = PQsocket(p->conn)) == -1)
		return -1;
	if (fstat(fd, &st) == -1) {
		log_warn("pgread: fstat of the PostgreSQL socket");
		return -1;
	}
	if (p->sock != NULL && st.st_dev == p->sock_dev &&
	    st.st_ino == p->sock_ino)
		return 0;
	pgread_unwatch(p);
	if ((dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) == -1) {
		log_warn("pgread: dup of the PostgreSQL socket");
		return -1;
	}
	p->sock = h2o_evloop_socket_create(p->loop, dfd,
	    H2O_SOCKET_FLAG_DONT_READ);
	p->sock->data = p;
	p->sock_dev = st.st_dev;
	p->sock_ino = st.st_ino;
	return 0;
}

/* Ask for the readiness libpq wants next. */
static void
pgread_want(struct pgread *p, int rd, int wr)
{
	if (rd && !h2o_socket_is_reading(p->sock))
		h2o_socket_read_start(p->sock, pgread_on_read);
	else if (!rd && h2o_socket_is_reading(p->sock))
		h2o_socket_read_stop(p->sock);
	/* A write notification, once asked for, cannot be withdrawn. */
	if (wr && !h2o_socket_is_writing(p->sock))
		h2o_socket_notify_write(p->sock, pgread_on_write);
}

static void
pgread_connected(struct pgread *p)
{
	char *ident;
	size_t sz;

	if (PQsetnonblocking(p->conn, 1) != 0) {
		pgread_fail(p, "cannot set the connection non-blocking",
		    PQerrorMessage(p->conn));
		return;
	}
	if ((ident = PQescapeIdentifier(p->conn, p->schema,
	    strlen(p->schema))) == NULL) {
		pgread_fail(p, "cannot quote the schema name",
		    PQerrorMessage(p->conn));
		return;
	}
	sz = 2 * strlen(ident) + 512;
	p->query = malloc(sz);
	p->query_idem = malloc(sz);
	if (p->query == NULL || p->query_idem == NULL) {
		PQfreemem(ident);
		pgread_fail(p, "cannot build the look-up query", "out of memory");
		return;
	}
	snprintf(p->query, sz, "SELECT key, value FROM %s.tally_counters "
	    "WHERE key = ANY($1::text[])", ident);
	/*
	 * A use older than ttl is over, as in the shared table; the
	 * fingerprint is compared as pg_idem_mismatched compares it.
	 */
	snprintf(p->query_idem, sz, "SELECT u.i, "
	    "t.fingerprint = (u.v::text || ':' || u.k), "
	    "(extract(epoch FROM t.created_at) * 1000000)::bigint, "
	    "COALESCE(t.total, c.value), t.total IS NOT NULL "
	    "FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(i, v, k) "
	    "JOIN %s.tally_idempotency t ON t.idem_key = u.i "
	    "LEFT JOIN %s.tally_counters c ON c.key = u.k "
	    "WHERE t.created_at > now() - %llu * interval '1 microsecond'",
	    ident, ident, (unsigned long long)p->idem_ttl_us);
	PQfreemem(ident);
	if (p->down)
		log_info("pgread: connected to PostgreSQL again");
	p->down = 0;
	pgread_want(p, 1, 0);
	/*
	 * Prepared once: a look-up of a few keys costs PostgreSQL less than
	 * parsing and planning its query, and thousands go out a second
	 * after a restart.  Should it fail, look-ups go unprepared.
	 */
	if (!PQsendPrepare(p->conn, PGREAD_STMT, p->query, 1, NULL)) {
		pgread_fail(p, "cannot prepare the look-up",
		    PQerrorMessage(p->conn));
		return;
	}
	p->preparing = 1;
	p->prepared = 0;
	p->state = PGREAD_BUSY;
	pgread_flush(p);
}

static void
pgread_connect_poll(struct pgread *p)
{
	p->want = PQconnectPoll(p->conn);
	switch (p->want) {
	case PGRES_POLLING_FAILED:
		pgread_fail(p, "cannot connect to PostgreSQL",
		    PQerrorMessage(p->conn));
		return;
	case PGRES_POLLING_OK:
		if (pgread_watch(p) == -1) {
			pgread_fail(p, "cannot watch the connection",
			    "no socket");
			return;
		}
		pgread_connected(p);
		return;
	default:
		break;
	}
	if (pgread_watch(p) == -1) {
		pgread_fail(p, "cannot watch the connection", "no socket");
		return;
	}
	if (p->want == PGRES_POLLING_WRITING)
		pgread_want(p, 0, 1);
	else
		pgread_want(p, 1, 0);
}

/* Notices (a server shutting down, say) go to the log, not to stderr. */
static void
pgread_on_notice(void *arg, const char *msg)
{
	char line[512];

	pgread_oneline(line, sizeof(line), msg);
	log_debug("pgread: PostgreSQL: %s", line);
}

static void
pgread_connect(struct pgread *p)
{
	const char *kw[4], *val[4];
	int n = 0;

	p->last_attempt = h2o_now(p->loop);
	/* Ours first: a setting in the DSN comes later and wins. */
	kw[n] = "application_name";
	val[n++] = "tallyd-worker";
	kw[n] = "client_encoding";
	val[n++] = "UTF8";
	if (*p->dsn != '\0') {
		kw[n] = "dbname";
		val[n++] = p->dsn;
	}
	kw[n] = NULL;
	val[n] = NULL;

	if ((p->conn = PQconnectStartParams(kw, val, 1)) == NULL) {
		pgread_fail(p, "cannot connect to PostgreSQL", "out of memory");
		return;
	}
	if (PQstatus(p->conn) == CONNECTION_BAD) {
		pgread_fail(p, "cannot connect to PostgreSQL",
		    PQerrorMessage(p->conn));
		return;
	}
	PQsetNoticeProcessor(p->conn, pgread_on_notice, p);
	p->state = PGREAD_CONNECTING;
	/* libpq's first poll after the start is for writing. */
	p->want = PGRES_POLLING_WRITING;
	if (pgread_watch(p) == -1) {
		pgread_fail(p, "cannot watch the connection", "no socket");
		return;
	}
	pgread_want(p, 0, 1);
}

static void
pgread_flush(struct pgread *p)
{
	switch (PQflush(p->conn)) {
	case 0:
		break;
	case 1:
		pgread_want(p, 1, 1);
		break;
	default:
		pgread_fail(p, "cannot send a look-up",
		    PQerrorMessage(p->conn));
		break;
	}
}

/*
 * Field f of look-up r: 0 the key (or ik), 1 the value, 2 the counter
 * key.
 */
static const char *
pgread_field(const struct pgread_req *r, int f, size_t *len)
{
	switch (f) {
	case 1:
		*len = r->val_len;
		return r->key + r->len;
	case 2:
		*len = r->key_len;
		return r->key + r->len + r->val_len;
	default:
		*len = r->len;
		return r->key;
	}
}

/*
 * The array literals of fields 0 to nf - 1 of the first n look-ups, one
 * after the other in p->arr (field f's at at[f]): each element quoted,
 * with its quotes and backslashes escaped.  -1 when out of memory.
 */
static int
pgread_build_arrays(struct pgread *p, size_t n, int nf, size_t *at)
{
	struct pgread_req *r;
	const char *v;
	size_t need = 0, o = 0, len, i;

	for (int f = 0; f < nf; f++) {
		need += 3;
		for (r = p->queue.head, i = 0; i < n; r = r->next, i++) {
			(void)pgread_field(r, f, &len);
			need += 2 * len + 3;
		}
	}
	if (need > p->arr_cap) {
		char *a = realloc(p->arr, need);

		if (a == NULL)
			return -1;
		p->arr = a;
		p->arr_cap = need;
	}
	for (int f = 0; f < nf; f++) {
		at[f] = o;
		p->arr[o++] = '{';
		for (r = p->queue.head, i = 0; i < n; r = r->next, i++) {
			v = pgread_field(r, f, &len);
			if (i > 0)
				p->arr[o++] = ',';
			p->arr[o++] = '"';
			for (size_t k = 0; k < len; k++) {
				if (v[k] == '"' || v[k] == '\\')
					p->arr[o++] = '\\';
				p->arr[o++] = v[k];
			}
			p->arr[o++] = '"';
			r->status = 0;
		}
		p->arr[o++] = '}';
		p->arr[o++] = '\0';
	}
	return 0;
}

static void
pgread_send_next(struct pgread *p)
{
	struct pgread_req *r;
	const char *values[3];
	size_t n, at[3] = { 0, 0, 0 };
	int ok;

	if (p->state != PGREAD_READY || p->delivering)
		return;
	/*
	 * Nobody waits for these: a client that opens HTTP/2 streams and
	 * resets them at once must not get a query sent for each.
	 */
	while ((r = p->queue.head) != NULL && r->cancelled) {
		pgread_list_shift(&p->queue);
		pgread_finish_later(p, r, -1, 0);
	}
	if (r == NULL)
		return;
	/* The look-ups of the head's kind that follow it. */
	for (n = 1; n < PGREAD_BATCH && (r = r->next) != NULL &&
	    r->kind == p->queue.head->kind; n++)
		;
	r = p->queue.head;
	if (pgread_build_arrays(p, n, r->kind == PGREAD_IDEM ? 3 : 1,
	    at) == -1) {
		pgread_fail(p, "cannot build a look-up", "out of memory");
		return;
	}
	for (int f = 0; f < 3; f++)
		values[f] = p->arr + at[f];
	if (r->kind == PGREAD_IDEM)
		ok = PQsendQueryParams(p->conn, p->query_idem, 3, NULL,
		    values, NULL, NULL, 0);
	else
		ok = p->prepared ? PQsendQueryPrepared(p->conn, PGREAD_STMT,
		    1, values, NULL, NULL, 0) : PQsendQueryParams(p->conn,
		    p->query, 1, NULL, values, NULL, NULL, 0);
	if (!ok) {
		pgread_fail(p, "cannot send a look-up",
		    PQerrorMessage(p->conn));
		return;
	}
	p->nsent = n;
	p->state = PGREAD_BUSY;
	pgread_flush(p);
}

/*
 * Column col of a row, an integer; -1 (logged, with the row's first
 * column, what it names) when it is not one.
 */
static int
pgread_int(PGresult *res, int row, int col, const char *what, int64_t *out)
{
	const char *v = PQgetvalue(res, row, col);
	int len = PQgetlength(res, row, 0);
	char *end;

	*out = strtoll(v, &end, 10);
	if (end == v || *end != '\0') {
		log_warnx("pgread: %s '%.*s': value '%s' is not an integer",
		    what, len > 64 ? 64 : len, PQgetvalue(res, row, 0), v);
		return -1;
	}
	return 0;
}

/* The answer for the look-ups in flight that asked for k. */
static void
pgread_answer(struct pgread *p, const char *k, size_t klen, int status,
    int64_t value, uint64_t used_us)
{
	struct pgread_req *r;
	size_t i;

	for (r = p->queue.head, i = 0; i < p->nsent; r = r->next, i++)
		if (r->len == klen && memcmp(r->key, k, klen) == 0) {
			r->status = status;
			r->value = value;
			r->used_us = used_us;
		}
}

/*
 * A row of an Idempotency-Key look-up: the ik, whether the fingerprint
 * is the request's, when it was used, the total it was answered with or
 * else the counter key's total (NULL: none), and which of the two.
 */
static void
pgread_take_idem_row(struct pgread *p, PGresult *res, int row)
{
	int64_t used = 0, total = 0;
	int status;

	status = strcmp(PQgetvalue(res, row, 1), "t") != 0 ? 2 :
	    strcmp(PQgetvalue(res, row, 4), "t") == 0 ? 3 : 1;
	if (pgread_int(res, row, 2, "Idempotency-Key", &used) == -1 ||
	    (!PQgetisnull(res, row, 3) && pgread_int(res, row, 3,
	    "Idempotency-Key", &total) == -1))
		status = -1;
	pgread_answer(p, PQgetvalue(res, row, 0), PQgetlength(res, row, 0),
	    status, total, used > 0 ? (uint64_t)used : 0);
}

/* The value of a row for the look-ups in flight that asked for its key. */
static void
pgread_take_row(struct pgread *p, PGresult *res, int row)
{
	int64_t value = 0;
	int status = 1;

	if (PQgetisnull(res, row, 1))
		status = 0;
	else if (pgread_int(res, row, 1, "key", &value) == -1)
		status = -1;
	pgread_answer(p, PQgetvalue(res, row, 0), PQgetlength(res, row, 0),
	    status, value, 0);
}

/*
 * Record what a result says about the keys in flight.  A query error
 * that leaves the connection usable fails those look-ups only: resetting
 * would not cure it and would fail every other look-up with it.
 */
static void
pgread_take_result(struct pgread *p, PGresult *res)
{
	const char *state;
	struct pgread_req *r;
	char line[512];
	int st = -1;
	size_t i;

	if (p->preparing) {
		if ((p->prepared = PQresultStatus(res) == PGRES_COMMAND_OK))
			return;
		pgread_oneline(line, sizeof(line), PQresultErrorMessage(res));
		log_warnx("pgread: cannot prepare the look-up, going on "
		    "without: %s", line);
		return;
	}
	switch (PQresultStatus(res)) {
	case PGRES_TUPLES_OK:
		for (int row = 0; row < PQntuples(res); row++)
			if (p->queue.head->kind == PGREAD_IDEM)
				pgread_take_idem_row(p, res, row);
			else
				pgread_take_row(p, res, row);
		return;
	case PGRES_FATAL_ERROR:
		state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		/* No table yet: nothing was ever flushed, so no such key. */
		if (state != NULL && strcmp(state, "42P01") == 0)
			st = 0;
		break;
	default:
		break;
	}
	for (r = p->queue.head, i = 0; i < p->nsent; r = r->next, i++)
		r->status = st;
	if (st == 0)
		return;
	if (h2o_now(p->loop) - p->last_err_log >= 10000 ||
	    p->last_err_log == 0) {
		p->last_err_log = h2o_now(p->loop);
		r = p->queue.head;
		pgread_oneline(line, sizeof(line), PQresultErrorMessage(res));
		log_warnx("pgread: look-up of %zu key(s) ('%.*s'...) failed: "
		    "%s", p->nsent, (int)(r->len > 64 ? 64 : r->len), r->key,
		    line);
	}
}

/* The query in flight is complete: answer its look-ups. */
static void
pgread_complete(struct pgread *p)
{
	struct pgread_list done;
	struct pgread_req *r;

	pgread_list_init(&done);
	while (p->nsent > 0) {
		r = pgread_list_shift(&p->queue);
		h2o_timeout_unlink(&r->deadline);
		pgread_list_push(&done, r);
		p->nsent--;
	}
	if (PQstatus(p->conn) == CONNECTION_BAD) {
		while ((r = pgread_list_shift(&done)) != NULL)
			pgread_finish_later(p, r, r->status, r->value);
		pgread_fail(p, "connection to PostgreSQL lost",
		    PQerrorMessage(p->conn));
		return;
	}
	p->state = PGREAD_READY;
	p->preparing = 0;
	/* Look-ups the callbacks make go out together, after them. */
	p->delivering = 1;
	while ((r = pgread_list_shift(&done)) != NULL)
		pgread_call(r);
	p->delivering = 0;
	pgread_send_next(p);
}

static void
pgread_on_read(h2o_socket_t *sock, const char *err)
{
	struct pgread *p = sock->data;
	PGresult *res;

	if (p->state == PGREAD_CONNECTING) {
		pgread_connect_poll(p);
		return;
	}
	if (!PQconsumeInput(p->conn)) {
		pgread_fail(p, "connection to PostgreSQL lost",
		    PQerrorMessage(p->conn));
		return;
	}
	if (p->state != PGREAD_BUSY) {
		/* Idle: a notice, or the server going away. */
		if (PQstatus(p->conn) == CONNECTION_BAD)
			pgread_fail(p, "connection to PostgreSQL lost",
			    PQerrorMessage(p->conn));
		return;
	}
	while (!PQisBusy(p->conn)) {
		if ((res = PQgetResult(p->conn)) == NULL) {
			pgread_complete(p);
			return;
		}
		pgread_take_result(p, res);
		PQclear(res);
	}
}

static void
pgread_on_write(h2o_socket_t *sock, const char *err)
{
	struct pgread *p = sock->data;

	switch (p->state) {
	case PGREAD_CONNECTING:
		if (p->want == PGRES_POLLING_WRITING)
			pgread_connect_poll(p);
		break;
	case PGREAD_BUSY:
		pgread_flush(p);
		break;
	default:
		break;
	}
}

static void
pgread_on_deadline(h2o_timeout_entry_t *ent)
{
	struct pgread_req *r = H2O_STRUCT_FROM_MEMBER(struct pgread_req,
	    deadline, ent);
	struct pgread *p = r->p;

	/*
	 * Same timeout for all and a FIFO queue: the expired one is the
	 * head, and everything behind it waits on the same stuck server.
	 */
	log_warnx("pgread: no answer from PostgreSQL within %d ms; "
	    "resetting the connection (%zu look-up(s) failed)",
	    PGREAD_DEADLINE_MS, p->queue.n);
	p->down = 1;
	pgread_reset(p);
}

struct pgread *
pgread_new(h2o_loop_t *loop, const struct config *cf)
{
	struct pgread *p;

	if ((p = calloc(1, sizeof(*p))) == NULL) {
		log_warn("pgread: calloc");
		return NULL;
	}
	p->loop = loop;
	p->idem_ttl_us = cf->idem_ttl_us;
	p->dsn = strdup(cf->dsn);
	p->schema = strdup(cf->schema[0] != '\0' ? cf->schema : "public");
	if (p->dsn == NULL || p->schema == NULL) {
		log_warn("pgread: strdup");
		free(p->dsn);
		free(p->schema);
		free(p);
		return NULL;
	}
	p->state = PGREAD_IDLE;
	pgread_list_init(&p->queue);
	pgread_list_init(&p->done);
	h2o_timeout_init(loop, &p->deadline_to, PGREAD_DEADLINE_MS);
	h2o_timeout_init(loop, &p->zero_to, 0);
	p->deliver.cb = pgread_on_deliver;
	return p;
}

static struct pgread_req *
pgread_req_new(struct pgread *p, enum pgread_kind kind, size_t len,
    size_t val_len, size_t key_len, void *arg)
{
	struct pgread_req *r;

	r = h2o_mem_alloc(sizeof(*r) + len + val_len + key_len);
	memset(r, 0, sizeof(*r));
	r->p = p;
	r->kind = kind;
	r->arg = arg;
	r->len = len;
	r->val_len = val_len;
	r->key_len = key_len;
	r->deadline.cb = pgread_on_deadline;
	return r;
}

/* Queue r, or fail it at once. */
static struct pgread_req *
pgread_enqueue(struct pgread *p, struct pgread_req *r)
{
	uint64_t now = h2o_now(p->loop);

	if (p->queue.n >= PGREAD_MAX_QUEUE) {
		pgread_finish_later(p, r, -1, 0);
		return r;
	}
	if (p->state == PGREAD_IDLE && p->last_attempt != 0 &&
	    now - p->last_attempt < PGREAD_RETRY_MS) {
		pgread_finish_later(p, r, -1, 0);
		return r;
	}
	pgread_list_push(&p->queue, r);
	h2o_timeout_link(p->loop, &p->deadline_to, &r->deadline);
	if (p->state == PGREAD_IDLE)
		pgread_connect(p);
	else
		pgread_send_next(p);
	return r;
}

struct pgread_req *
pgread_lookup(struct pgread *p, const char *key, size_t len,
    pgread_cb cb, void *arg)
{
	struct pgread_req *r = pgread_req_new(p, PGREAD_KEY, len, 0, 0, arg);

	r->cb = cb;
	memcpy(r->key, key, len);
	/* A text value cannot hold NUL: no such key can exist. */
	if (memchr(key, '\0', len) != NULL) {
		pgread_finish_later(p, r, 0, 0);
		return r;
	}
	return pgread_enqueue(p, r);
}

struct pgread_req *
pgread_lookup_idem(struct pgread *p, const char *ik, size_t ik_len,
    const char *key, size_t key_len, int64_t value, pgread_idem_cb cb,
    void *arg)
{
	char v[24];
	int n = snprintf(v, sizeof(v), "%lld", (long long)value);
	struct pgread_req *r = pgread_req_new(p, PGREAD_IDEM, ik_len, n,
	    key_len, arg);

	r->idem_cb = cb;
	memcpy(r->key, ik, ik_len);
	memcpy(r->key + ik_len, v, n);
	memcpy(r->key + ik_len + n, key, key_len);
	/* Neither can hold NUL (request.c): no row can match. */
	if (memchr(ik, '\0', ik_len) != NULL || memchr(key, '\0',
	    key_len) != NULL) {
		pgread_finish_later(p, r, 0, 0);
		return r;
	}
	return pgread_enqueue(p, r);
}

void
pgread_cancel(struct pgread_req *r)
{
	r->cancelled = 1;
}

void
pgread_free(struct pgread *p)
{
	struct pgread_req *r;

	if (p == NULL)
		return;
	pgread_reset(p);
	/* Exactly once, even now: whatever is left hears -1. */
	h2o_timeout_unlink(&p->deliver);
	while ((r = pgread_list_shift(&p->done)) != NULL)
		pgread_call(r);
	h2o_timeout_dispose(p->loop, &p->deadline_to);
	h2o_timeout_dispose(p->loop, &p->zero_to);
	free(p->dsn);
	free(p->schema);
	free(p->arr);
	free(p);
}
