/*
 * The flusher's PostgreSQL statements.
 *
 * The flusher serves no clients, so it could use libpq's blocking calls;
 * it runs the connection in non-blocking mode only so that every wait is
 * a poll() of at most PG_WAIT_SLICE_MS: a SIGTERM or SIGQUIT (which also
 * interrupts the poll) is seen within a fraction of a second even while
 * PostgreSQL hangs, and the caller decides (abort_fn) whether to give up.
 *
 * Batches travel as two array parameters (text[] keys, bigint[] deltas)
 * expanded with unnest(), so one statement carries any number of keys and
 * PostgreSQL's work grows with distinct keys, not with requests.  The
 * upsert's arrays go in PostgreSQL's binary format, which it takes
 * without parsing; the others' as literals, built here: every element is
 * double-quoted, with '"' and '\' backslash-escaped, which is all
 * array_in() needs to take any byte string (braces, commas, blanks,
 * control characters) verbatim.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "pg.h"

#define PG_WAIT_SLICE_MS	250
#define PG_CONNECT_TIMEOUT	5	/* seconds, unless the DSN says */

/* Element types of the binary arrays: pg_type's fixed OIDs. */
#define PG_TEXTOID		25
#define PG_INT8OID		20
#define PG_ARRAY_HDR		20	/* ndim, flags, type, size, lower bound */

static uint64_t
pg_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Keep one line of libpq's (possibly multi-line) error text. */
static void
pg_set_err(struct pg *pg, const char *sqlstate, const char *msg)
{
	size_t o = 0;

	snprintf(pg->sqlstate, sizeof(pg->sqlstate), "%s",
	    sqlstate ? sqlstate : "");
	if (msg == NULL || *msg == '\0')
		msg = "unknown error";
	/* Line breaks and tabs become single blanks: one log line. */
	for (; *msg && o < sizeof(pg->err) - 1; msg++) {
		char ch = *msg;

		if (ch == '\n' || ch == '\r' || ch == '\t')
			ch = ' ';
		if (ch == ' ' && (o == 0 || pg->err[o - 1] == ' '))
			continue;
		pg->err[o++] = ch;
	}
	while (o > 0 && pg->err[o - 1] == ' ')
		o--;
	pg->err[o] = '\0';
}

void
pg_init(struct pg *pg, const char *node, pg_abort_fn abort_fn,
    void *abort_arg)
{
	memset(pg, 0, sizeof(*pg));
	snprintf(pg->node, sizeof(pg->node), "%s", node);
	pg->abort_fn = abort_fn;
	pg->abort_arg = abort_arg;
}

void
pg_close(struct pg *pg)
{
	if (pg->conn)
		PQfinish(pg->conn);
	pg->conn = NULL;
}

void
pg_free(struct pg *pg)
{
	pg_close(pg);
	free(pg->buf);
	pg->buf = NULL;
	pg->bufcap = 0;
	free(pg->seen);
	pg->seen = NULL;
	pg->seencap = 0;
}

/*
 * Wait until the socket is readable (or writable), a signal arrives, or a
 * slice passes; then ask abort_fn.  0: go on, -1: give up (err set).
 */
static int
pg_wait(struct pg *pg, int for_write, uint64_t started, uint64_t deadline)
{
	struct pollfd pfd;
	uint64_t now;
	int fd = PQsocket(pg->conn);

	if (fd < 0) {
		pg_set_err(pg, NULL, "connection has no socket");
		return -1;
	}
	pfd.fd = fd;
	pfd.events = for_write ? POLLOUT : POLLIN;
	pfd.revents = 0;
	if (poll(&pfd, 1, PG_WAIT_SLICE_MS) == -1 && errno != EINTR) {
		pg_set_err(pg, NULL, strerror(errno));
		return -1;
	}
	now = pg_now_us();
	if (pg->abort_fn && pg->abort_fn(pg->abort_arg, now - started)) {
		pg_set_err(pg, NULL, "abandoned (stopping)");
		return -1;
	}
	if (deadline && now >= deadline) {
		pg_set_err(pg, NULL, "timeout expired");
		return -1;
	}
	return 0;
}

/*
 * Notices ("relation already exists, skipping") are expected and would
 * otherwise go to stderr unasked.
 */
static void
pg_notice(void *arg, const char *msg)
{
	size_t len = strlen(msg);

	if (len > 0 && msg[len - 1] == '\n')
		len--;
	log_debug("PostgreSQL notice: %.*s", (int)len, msg);
}

/* Mark the connection unusable and drop it: the server rolls back. */
static void
pg_drop(struct pg *pg)
{
	pg->broken = 1;
	pg_close(pg);
}

/* The value of keyword in a DSN, or NULL; *opts must be freed. */
static const char *
pg_dsn_value(const char *dsn, const char *keyword, PQconninfoOption **opts)
{
	PQconninfoOption *o;

	*opts = NULL;
	if (*dsn == '\0' || (*opts = PQconninfoParse(dsn, NULL)) == NULL)
		return NULL;
	for (o = *opts; o->keyword; o++)
		if (strcmp(o->keyword, keyword) == 0 && o->val && *o->val)
			return o->val;
	return NULL;
}

int
pg_connect(struct pg *pg, const char *dsn, const char *appname,
    const char *schema)
{
	const char *kw[12], *val[12], *v, *enc;
	PQconninfoOption *opts;
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	uint64_t started, deadline;
	char *q;
	int n = 0, timeout = PG_CONNECT_TIMEOUT;

	pg_close(pg);
	pg->broken = 0;
	pg->sqlstate[0] = pg->err[0] = '\0';
	/*
	 * Ours first, the DSN after: libpq lets the later one win, so a
	 * setting in the DSN overrides these defaults.
	 */
	kw[n] = "application_name";
	val[n++] = appname;
	kw[n] = "client_encoding";
	val[n++] = "UTF8";
	/*
	 * A peer that vanished (a failover, a cut network) is found in about
	 * 90 s rather than the system's two hours; and a row lock held by a
	 * forgotten session fails the flush (retried, and /readyz says so)
	 * rather than hold it for ever.
	 */
	kw[n] = "keepalives_idle";
	val[n++] = "60";
	kw[n] = "keepalives_interval";
	val[n++] = "10";
	kw[n] = "keepalives_count";
	val[n++] = "3";
	kw[n] = "options";
	val[n++] = "-c lock_timeout=30s";
	if (getenv("PGCONNECT_TIMEOUT") == NULL) {
		kw[n] = "connect_timeout";
		val[n++] = "5";
	}
	if (*dsn) {
		kw[n] = "dbname";
		val[n++] = dsn;
	}
	kw[n] = NULL;
	val[n] = NULL;

	/* Async connects ignore connect_timeout: enforce it here. */
	if ((v = pg_dsn_value(dsn, "connect_timeout", &opts)) != NULL)
		timeout = atoi(v);
	else if ((v = getenv("PGCONNECT_TIMEOUT")) != NULL)
		timeout = atoi(v);
	PQconninfoFree(opts);
	if (timeout < 2)
		timeout = timeout <= 0 ? 3600 : 2;

	started = pg_now_us();
	deadline = started + (uint64_t)timeout * 1000000;
	if ((pg->conn = PQconnectStartParams(kw, val, 1)) == NULL) {
		pg_set_err(pg, NULL, "out of memory");
		return -1;
	}
	if (PQstatus(pg->conn) == CONNECTION_BAD) {
		pg_set_err(pg, NULL, PQerrorMessage(pg->conn));
		pg_drop(pg);
		return -1;
	}
	for (;;) {
		if ((st == PGRES_POLLING_READING ||
		    st == PGRES_POLLING_WRITING) && pg_wait(pg,
		    st == PGRES_POLLING_WRITING, started, deadline) == -1) {
			pg_drop(pg);
			return -1;
		}
		st = PQconnectPoll(pg->conn);
		if (st == PGRES_POLLING_OK)
			break;
		if (st == PGRES_POLLING_FAILED) {
			pg_set_err(pg, NULL, PQerrorMessage(pg->conn));
			pg_drop(pg);
			return -1;
		}
	}
	PQsetNoticeProcessor(pg->conn, pg_notice, NULL);
	/*
	 * Keys are UTF-8.  In a database of another encoding, one that has
	 * no character for a key's would fail each statement naming it,
	 * the dead-letter row included, and wedge every flush.
	 */
	enc = PQparameterStatus(pg->conn, "server_encoding");
	if (enc == NULL || (strcmp(enc, "UTF8") != 0 &&
	    strcmp(enc, "SQL_ASCII") != 0)) {
		snprintf(pg->err, sizeof(pg->err), "database %s has encoding "
		    "%s; tallyd's keys are UTF-8 and need a UTF8 database",
		    PQdb(pg->conn), enc ? enc : "unknown");
		pg->sqlstate[0] = '\0';
		pg_drop(pg);
		return -1;
	}
	if (PQsetnonblocking(pg->conn, 1) == -1) {
		pg_set_err(pg, NULL, PQerrorMessage(pg->conn));
		pg_drop(pg);
		return -1;
	}
	if ((q = PQescapeIdentifier(pg->conn, schema, strlen(schema))) ==
	    NULL || strlen(q) >= sizeof(pg->schema)) {
		pg_set_err(pg, NULL, "bad schema name");
		PQfreemem(q);
		pg_drop(pg);
		return -1;
	}
	strcpy(pg->schema, q);
	PQfreemem(q);
	snprintf(pg->schema_name, sizeof(pg->schema_name), "%s", schema);
	return 0;
}

/*
 * Run one statement (or, with nparams < 0, a multi-statement simple query)
 * and return its result, or NULL with pg->err set.  A result with an
 * error status is turned into NULL here, so callers see one kind of
 * failure.  lens and formats as for PQsendQueryParams (NULL: text
 * parameters); binary asks for the result in binary.
 */
static PGresult *
pg_exec_params(struct pg *pg, const char *sql, int nparams,
    const char *const *params, const int *lens, const int *formats,
    int binary)
{
	PGresult *res, *keep = NULL;
	uint64_t started = pg_now_us();
	int rc, ok;

	if (pg->conn == NULL || PQstatus(pg->conn) != CONNECTION_OK) {
		pg_set_err(pg, NULL, "not connected");
		pg_drop(pg);
		return NULL;
	}
	pg->sqlstate[0] = pg->err[0] = '\0';
	if (nparams < 0)
		ok = PQsendQuery(pg->conn, sql);
	else
		ok = PQsendQueryParams(pg->conn, sql, nparams, NULL, params,
		    lens, formats, binary);
	if (!ok)
		goto broken;
	/* Push the whole query out, reading meanwhile as libpq asks. */
	while ((rc = PQflush(pg->conn)) == 1) {
		if (pg_wait(pg, 1, started, 0) == -1)
			goto abandon;
		if (!PQconsumeInput(pg->conn))
			goto broken;
	}
	if (rc == -1)
		goto broken;
	for (;;) {
		while (PQisBusy(pg->conn)) {
			if (pg_wait(pg, 0, started, 0) == -1)
				goto abandon;
			if (!PQconsumeInput(pg->conn))
				goto broken;
		}
		if ((res = PQgetResult(pg->conn)) == NULL)
			break;
		switch (PQresultStatus(res)) {
		case PGRES_TUPLES_OK:
		case PGRES_COMMAND_OK:
			/* Keep the first error, else the last result. */
			if (keep && PQresultStatus(keep) == PGRES_FATAL_ERROR) {
				PQclear(res);
				break;
			}
			PQclear(keep);
			keep = res;
			break;
		default:
			if (keep == NULL ||
			    PQresultStatus(keep) != PGRES_FATAL_ERROR) {
				PQclear(keep);
				keep = res;
			} else
				PQclear(res);
			break;
		}
	}
	if (keep == NULL) {
		pg_set_err(pg, NULL, "no result");
		return NULL;
	}
	if (PQresultStatus(keep) != PGRES_TUPLES_OK &&
	    PQresultStatus(keep) != PGRES_COMMAND_OK) {
		const char *state = PQresultErrorField(keep, PG_DIAG_SQLSTATE);
		const char *msg = PQresultErrorField(keep,
		    PG_DIAG_MESSAGE_PRIMARY);

		pg_set_err(pg, state, msg ? msg : PQresultErrorMessage(keep));
		PQclear(keep);
		if (PQstatus(pg->conn) != CONNECTION_OK)
			pg_drop(pg);
		return NULL;
	}
	return keep;

broken:
	pg_set_err(pg, NULL, PQerrorMessage(pg->conn));
	PQclear(keep);
	pg_drop(pg);
	return NULL;
abandon:
	PQclear(keep);
	pg_drop(pg);
	return NULL;
}

static PGresult *
pg_exec(struct pg *pg, const char *sql, int nparams,
    const char *const *params)
{
	return pg_exec_params(pg, sql, nparams, params, NULL, NULL, 0);
}

static int
pg_command(struct pg *pg, const char *sql, int nparams,
    const char *const *params)
{
	PGresult *res = pg_exec(pg, sql, nparams, params);

	if (res == NULL)
		return -1;
	PQclear(res);
	return 0;
}

/*
 * Deferred constraints and constraint triggers (a user's, on our tables)
 * would check at COMMIT, past the savepoints that find and park the
 * record PostgreSQL refuses: the same batch would fail its COMMIT for
 * ever.  Checked at each statement, they fail where a record can be
 * parked.
 */
int
pg_begin(struct pg *pg)
{
	return pg_command(pg, "BEGIN; SET CONSTRAINTS ALL IMMEDIATE; "
	    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
	    -1, NULL);
}

int
pg_commit(struct pg *pg)
{
	return pg_command(pg, "COMMIT", 0, NULL);
}

void
pg_rollback(struct pg *pg)
{
	char sqlstate[6], err[512];

	if (pg->conn == NULL)
		return;
	/* Keep the error that made us roll back, not ROLLBACK's own. */
	memcpy(sqlstate, pg->sqlstate, sizeof(sqlstate));
	memcpy(err, pg->err, sizeof(err));
	if (pg_command(pg, "ROLLBACK", 0, NULL) == -1)
		pg_drop(pg);
	memcpy(pg->sqlstate, sqlstate, sizeof(sqlstate));
	memcpy(pg->err, err, sizeof(err));
}

static int
pg_savepoint_cmd(struct pg *pg, const char *sql)
{
	char sqlstate[6], err[512];
	int rc;

	/* Keep the error that made us roll back, not this command's. */
	memcpy(sqlstate, pg->sqlstate, sizeof(sqlstate));
	memcpy(err, pg->err, sizeof(err));
	if ((rc = pg_command(pg, sql, 0, NULL)) == 0) {
		memcpy(pg->sqlstate, sqlstate, sizeof(sqlstate));
		memcpy(pg->err, err, sizeof(err));
	}
	return rc;
}

int
pg_savepoint(struct pg *pg)
{
	return pg_command(pg, "SAVEPOINT tally_try", 0, NULL);
}

int
pg_savepoint_release(struct pg *pg)
{
	return pg_command(pg, "RELEASE SAVEPOINT tally_try", 0, NULL);
}

int
pg_savepoint_undo(struct pg *pg)
{
	if (pg_savepoint_cmd(pg, "ROLLBACK TO SAVEPOINT tally_try") == -1)
		return -1;
	return pg_savepoint_cmd(pg, "RELEASE SAVEPOINT tally_try");
}

/*
 * Class 22 (data exception: a total beyond bigint, a bad value) and class
 * 23 (integrity constraint violation: a CHECK an operator added) are about
 * the rows, not the server: sending the same rows again fails again.
 */
int
pg_is_data_error(const struct pg *pg)
{
	return pg->conn != NULL && (strncmp(pg->sqlstate, "22", 2) == 0 ||
	    strncmp(pg->sqlstate, "23", 2) == 0);
}

/* Duplicate-object errors that a concurrent CREATE ... IF NOT EXISTS raises. */
static int
pg_is_duplicate(const struct pg *pg)
{
	return strcmp(pg->sqlstate, "23505") == 0 ||	/* unique_violation */
	    strcmp(pg->sqlstate, "42P06") == 0 ||	/* duplicate_schema */
	    strcmp(pg->sqlstate, "42P07") == 0 ||	/* duplicate_table */
	    strcmp(pg->sqlstate, "42710") == 0;		/* duplicate_object */
}

int
pg_ensure_schema(struct pg *pg)
{
	const char *params[1] = { NULL };
	char sql[4096];
	PGresult *res;
	int have, attempt;

	/*
	 * Look before creating: CREATE ... IF NOT EXISTS still demands the
	 * CREATE privilege, which a least-privilege role given ready-made
	 * tables does not have.
	 */
	params[0] = pg->schema_name;
	res = pg_exec(pg,
	    "SELECT (SELECT count(*) FROM pg_catalog.pg_namespace "
	    "WHERE nspname = $1) + (SELECT count(*) FROM pg_catalog.pg_tables "
	    "WHERE schemaname = $1 AND tablename IN ('tally_counters', "
	    "'tally_checkpoints', 'tally_idempotency', 'tally_rejected')) + "
	    "(SELECT count(*) FROM information_schema.columns WHERE "
	    "table_schema = $1 AND ((table_name = 'tally_rejected' AND "
	    "column_name IN ('epoch', 'sqlstate')) OR "
	    "(table_name = 'tally_idempotency' AND column_name = 'total')))",
	    1, params);
	if (res == NULL)
		return -1;
	have = atoi(PQgetvalue(res, 0, 0));
	PQclear(res);
	/* The schema, four tables, three columns added since. */
	if (have == 8)
		return 0;

	snprintf(sql, sizeof(sql),
	    "CREATE SCHEMA IF NOT EXISTS %1$s;"
	    /*
	     * Keys are compared byte by byte: under a collation other
	     * than "C" each comparison in the primary key's index goes
	     * through the locale, a tenth of PostgreSQL's work per flush.
	     */
	    "CREATE TABLE IF NOT EXISTS %1$s.tally_counters ("
	    " key text COLLATE \"C\" PRIMARY KEY,"
	    " value bigint NOT NULL,"
	    " updated_at timestamptz NOT NULL DEFAULT now())"
	    /*
	     * Every flush rewrites each key it touched: room left in each
	     * page lets the new row version stay there (a HOT update), so
	     * the primary key's index is not touched again.
	     */
	    " WITH (fillfactor = 70);"
	    "CREATE TABLE IF NOT EXISTS %1$s.tally_checkpoints ("
	    " node text PRIMARY KEY,"
	    " epoch text NOT NULL,"
	    " lsn bigint NOT NULL,"
	    " updated_at timestamptz NOT NULL DEFAULT now());"
	    "CREATE TABLE IF NOT EXISTS %1$s.tally_idempotency ("
	    " idem_key text COLLATE \"C\" PRIMARY KEY,"
	    " fingerprint text NOT NULL,"
	    " node text NOT NULL,"
	    " created_at timestamptz NOT NULL DEFAULT now(),"
	    " total bigint);"
	    "CREATE TABLE IF NOT EXISTS %1$s.tally_rejected ("
	    " id bigserial PRIMARY KEY,"
	    " node text NOT NULL,"
	    " key text,"
	    " value bigint,"
	    " idem_key text,"
	    " lsn bigint,"
	    " reason text NOT NULL,"
	    " created_at timestamptz NOT NULL DEFAULT now());"
	    /* Columns a table made by an earlier version lacks. */
	    "ALTER TABLE %1$s.tally_rejected"
	    " ADD COLUMN IF NOT EXISTS epoch text,"
	    " ADD COLUMN IF NOT EXISTS sqlstate text;"
	    "ALTER TABLE %1$s.tally_idempotency"
	    " ADD COLUMN IF NOT EXISTS total bigint;",
	    pg->schema);
	/*
	 * Two nodes creating at once: IF NOT EXISTS checks the catalog before
	 * inserting, so the loser can still hit a unique index.  The winner
	 * has committed by then, and a second try finds everything there.
	 */
	for (attempt = 0; attempt < 3; attempt++) {
		if (pg_command(pg, sql, -1, NULL) == 0)
			return 0;
		if (pg->conn == NULL || !pg_is_duplicate(pg))
			return -1;
	}
	return -1;
}

int64_t
pg_counters_estimate(struct pg *pg)
{
	const char *params[1] = { pg->schema_name };
	PGresult *res;
	int64_t n = 0;

	if ((res = pg_exec(pg, "SELECT c.reltuples::bigint FROM pg_class c "
	    "JOIN pg_namespace s ON s.oid = c.relnamespace "
	    "WHERE s.nspname = $1 AND c.relname = 'tally_counters'", 1,
	    params)) == NULL)
		return -1;
	if (PQntuples(res) > 0)
		n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	/* Never analyzed, -1 from PostgreSQL 14 on: no estimate, so 0. */
	return n < 0 ? 0 : n;
}

int
pg_counters_page(struct pg *pg, const char *after, size_t len, int limit,
    pg_counter_fn cb, void *arg)
{
	const char *params[2];
	int lens[2] = { (int)len, 0 }, formats[2] = { 1, 0 }, n;
	char sql[512], lim[16];
	PGresult *res;

	snprintf(lim, sizeof(lim), "%d", limit);
	params[0] = after;
	params[1] = lim;
	/* The primary key's order ("C"): each page is one index range. */
	snprintf(sql, sizeof(sql), "SELECT key, value FROM %s.tally_counters "
	    "WHERE key > $1::text ORDER BY key LIMIT $2::int", pg->schema);
	if ((res = pg_exec_params(pg, sql, 2, params, lens, formats,
	    0)) == NULL)
		return -1;
	n = PQntuples(res);
	for (int i = 0; i < n; i++)
		cb(arg, PQgetvalue(res, i, 0), PQgetlength(res, i, 0),
		    strtoll(PQgetvalue(res, i, 1), NULL, 10));
	PQclear(res);
	return n;
}

int
pg_checkpoint_get(struct pg *pg, char epoch_hex[33], uint64_t *lsn)
{
	const char *params[1] = { pg->node };
	char sql[512];
	PGresult *res;
	int found;

	snprintf(sql, sizeof(sql), "SELECT epoch, lsn FROM "
	    "%s.tally_checkpoints WHERE node = $1", pg->schema);
	if ((res = pg_exec(pg, sql, 1, params)) == NULL)
		return -1;
	found = PQntuples(res) > 0;
	if (found) {
		snprintf(epoch_hex, 33, "%s", PQgetvalue(res, 0, 0));
		*lsn = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
	}
	PQclear(res);
	return found;
}

int
pg_checkpoint_put(struct pg *pg, const char *epoch_hex, uint64_t lsn,
    const uint64_t *expect)
{
	char sql[512], num[24], was[24];
	const char *params[4] = { pg->node, epoch_hex, num, NULL };
	PGresult *res;
	int written;

	snprintf(num, sizeof(num), "%" PRIu64, lsn);
	if (expect) {
		snprintf(was, sizeof(was), "%" PRIu64, *expect);
		params[3] = was;
	}
	/*
	 * The row is locked from here to COMMIT, and READ COMMITTED checks
	 * the WHERE against its newest version: a transaction that wrote
	 * it meanwhile, and committed, leaves nothing to update.
	 */
	snprintf(sql, sizeof(sql), "INSERT INTO %s.tally_checkpoints AS c "
	    "(node, epoch, lsn, updated_at) VALUES ($1, $2, $3, now()) "
	    "ON CONFLICT (node) DO UPDATE SET epoch = EXCLUDED.epoch, "
	    "lsn = EXCLUDED.lsn, updated_at = now() "
	    "WHERE c.epoch <> EXCLUDED.epoch OR c.lsn = $4::bigint",
	    pg->schema);
	if ((res = pg_exec(pg, sql, 4, params)) == NULL)
		return -1;
	written = strcmp(PQcmdTuples(res), "1") == 0;
	PQclear(res);
	return written;
}

/*
 * Other nodes' checkpoint rows, reduced to one string: a flush by any of
 * them moves its LSN and updated_at, so an unchanged string means no
 * other node changed tally_counters since the last look.
 */
int
pg_others_mark(struct pg *pg, char *sig, size_t len, int *shared)
{
	const char *params[1] = { pg->node };
	char sql[512];
	PGresult *res;

	snprintf(sql, sizeof(sql), "SELECT count(*) || ':' || "
	    "coalesce(sum(lsn), 0) || ':' || coalesce(max(updated_at)::text, "
	    "''), coalesce(max(updated_at) > now() - interval '2 hours', "
	    "false) FROM %s.tally_checkpoints WHERE node <> $1", pg->schema);
	if ((res = pg_exec(pg, sql, 1, params)) == NULL)
		return -1;
	snprintf(sig, len, "%s", PQntuples(res) > 0 ?
	    PQgetvalue(res, 0, 0) : "");
	*shared = PQntuples(res) > 0 && strcmp(PQgetvalue(res, 0, 1), "t") ==
	    0;
	PQclear(res);
	return 0;
}

static int
pg_reserve(struct pg *pg, size_t need)
{
	char *nb;
	size_t cap = pg->bufcap ? pg->bufcap : 65536;

	if (need <= pg->bufcap)
		return 0;
	while (cap < need)
		cap *= 2;
	if ((nb = realloc(pg->buf, cap)) == NULL) {
		pg_set_err(pg, NULL, "out of memory for a batch");
		return -1;
	}
	pg->buf = nb;
	pg->bufcap = cap;
	return 0;
}

/* Append a quoted element of a text[] literal at pg->buf + *o. */
static void
pg_put_elem(struct pg *pg, size_t *o, const char *s, size_t len, int first)
{
	char *b = pg->buf;

	if (!first)
		b[(*o)++] = ',';
	b[(*o)++] = '"';
	for (size_t k = 0; k < len; k++) {
		if (s[k] == '"' || s[k] == '\\')
			b[(*o)++] = '\\';
		b[(*o)++] = s[k];
	}
	b[(*o)++] = '"';
}

static int
pg_kv_cmp(const void *a, const void *b)
{
	const struct pg_kv *x = a, *y = b;
	size_t n = x->len < y->len ? x->len : y->len;
	int c = memcmp(x->key, y->key, n);

	if (c != 0)
		return c;
	return x->len < y->len ? -1 : x->len > y->len;
}

struct pg_sortkey {
	uint64_t	prefix;	/* the key's first 8 bytes, big-endian */
	uint64_t	i;	/* its place in the input */
};

/* Zero-padded, so a shorter key sorts before its extensions, or ties. */
static uint64_t
pg_key_prefix(const char *k, size_t len)
{
	uint64_t p = 0;

	for (size_t i = 0; i < 8; i++)
		p = p << 8 | (i < len ? (unsigned char)k[i] : 0);
	return p;
}

/*
 * qsort() with memcmp() took a quarter of the flusher's instructions at
 * 50k keys a batch.  Instead: a stable radix sort (eight passes of a byte,
 * least significant first, a pass skipped when every key has the same
 * byte there) of the keys' first eight bytes, then qsort() only within
 * each run of keys that share them.
 */
int
pg_kv_sort(struct pg_kv *kv, size_t n)
{
	struct pg_sortkey *a, *t, *src, *dst, *sw;
	struct pg_kv *out;
	size_t count[256], s, e;

	if (n < 2)
		return 0;
	if (n > SIZE_MAX / (2 * sizeof(*a) + sizeof(*out)) ||
	    (a = malloc(n * (2 * sizeof(*a) + sizeof(*out)))) == NULL) {
		qsort(kv, n, sizeof(*kv), pg_kv_cmp);
		return -1;
	}
	t = a + n;
	out = (struct pg_kv *)(void *)(t + n);
	for (size_t i = 0; i < n; i++) {
		a[i].prefix = pg_key_prefix(kv[i].key, kv[i].len);
		a[i].i = i;
	}
	src = a;
	dst = t;
	for (unsigned shift = 0; shift < 64; shift += 8) {
		size_t at = 0, c;

		memset(count, 0, sizeof(count));
		for (size_t i = 0; i < n; i++)
			count[(src[i].prefix >> shift) & 0xff]++;
		if (count[(src[0].prefix >> shift) & 0xff] == n)
			continue;
		for (size_t d = 0; d < 256; d++) {
			c = count[d];
			count[d] = at;
			at += c;
		}
		for (size_t i = 0; i < n; i++)
			dst[count[(src[i].prefix >> shift) & 0xff]++] = src[i];
		sw = src;
		src = dst;
		dst = sw;
	}
	for (size_t i = 0; i < n; i++)
		out[i] = kv[src[i].i];
	for (s = 0; s < n; s = e) {
		for (e = s + 1; e < n && src[e].prefix == src[s].prefix; e++)
			;
		if (e - s > 1)
			qsort(out + s, e - s, sizeof(*out), pg_kv_cmp);
	}
	memcpy(kv, out, n * sizeof(*kv));
	free(a);
	return 0;
}

/*
 * Append a decimal element of a bigint[] literal at pg->buf + *o: the
 * digits by hand, for sprintf() was a fifth of the flusher's
 * instructions with tens of thousands of keys a batch.
 */
static void
pg_put_num(struct pg *pg, size_t *o, uint64_t mag, int neg, int first)
{
	char tmp[20], *b = pg->buf;
	size_t n = 0;

	if (!first)
		b[(*o)++] = ',';
	if (neg)
		b[(*o)++] = '-';
	do {
		tmp[n++] = (char)('0' + mag % 10);
		mag /= 10;
	} while (mag != 0);
	while (n > 0)
		b[(*o)++] = tmp[--n];
}

/* Through uint64_t, so that INT64_MIN needs no special case. */
static void
pg_put_i64(struct pg *pg, size_t *o, int64_t v, int first)
{
	pg_put_num(pg, o, v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v,
	    v < 0, first);
}

/*
 * Write the text[] literal of the keys, then (with values) the bigint[]
 * literal, NUL-terminated, into pg->buf.  *second gets the offset of the
 * second literal.
 */
static int
pg_arrays(struct pg *pg, const struct pg_kv *kv, size_t n, int values,
    size_t *second)
{
	size_t need = 4, o = 0;
	char *b;

	for (size_t i = 0; i < n; i++)
		need += 2 * kv[i].len + 3 + (values ? 21 : 0);
	need += 4;
	if (pg_reserve(pg, need) == -1)
		return -1;
	b = pg->buf;
	b[o++] = '{';
	for (size_t i = 0; i < n; i++)
		pg_put_elem(pg, &o, kv[i].key, kv[i].len, i == 0);
	b[o++] = '}';
	b[o++] = '\0';
	*second = o;
	if (!values)
		return 0;
	b[o++] = '{';
	for (size_t i = 0; i < n; i++)
		pg_put_i64(pg, &o, kv[i].value, i == 0);
	b[o++] = '}';
	b[o++] = '\0';
	return 0;
}

static int
pg_parse_i64(const char *s, int64_t *v)
{
	char *end;

	errno = 0;
	*v = strtoll(s, &end, 10);
	return errno || end == s || *end != '\0' ? -1 : 0;
}

/* PostgreSQL's binary formats are big-endian. */
static char *
pg_put_be32(char *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, sizeof(v));
	return p + sizeof(v);
}

static char *
pg_put_be64(char *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, sizeof(v));
	return p + sizeof(v);
}

static int64_t
pg_get_be64(const char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return (int64_t)be64toh(v);
}

/* The header of a one-dimensional binary array of n elements. */
static char *
pg_put_array_hdr(char *p, uint32_t elemtype, size_t n)
{
	p = pg_put_be32(p, 1);		/* dimensions */
	p = pg_put_be32(p, 0);		/* no NULLs */
	p = pg_put_be32(p, elemtype);
	p = pg_put_be32(p, (uint32_t)n);
	return pg_put_be32(p, 1);	/* lower bound */
}

/*
 * The keys (text[]) and deltas (bigint[]) of the kv[i] not marked in
 * skip (NULL: all), as two binary parameters in pg->buf.  Returns how
 * many keys they hold, or -1 (no memory).
 */
static ssize_t
pg_bin_arrays(struct pg *pg, const struct pg_kv *kv, size_t n,
    const uint8_t *skip, const char *params[2], int lens[2])
{
	size_t need = 2 * PG_ARRAY_HDR, m = 0;
	char *p, *v;

	for (size_t i = 0; i < n; i++) {
		if (skip && skip[i])
			continue;
		need += 4 + kv[i].len + 4 + 8;
		m++;
	}
	if (pg_reserve(pg, need) == -1)
		return -1;
	p = pg_put_array_hdr(pg->buf, PG_TEXTOID, m);
	for (size_t i = 0; i < n; i++) {
		if (skip && skip[i])
			continue;
		p = pg_put_be32(p, (uint32_t)kv[i].len);
		memcpy(p, kv[i].key, kv[i].len);
		p += kv[i].len;
	}
	v = p;
	p = pg_put_array_hdr(p, PG_INT8OID, m);
	for (size_t i = 0; i < n; i++) {
		if (skip && skip[i])
			continue;
		p = pg_put_be32(p, 8);
		p = pg_put_be64(p, (uint64_t)kv[i].value);
	}
	params[0] = pg->buf;
	lens[0] = (int)(v - pg->buf);
	params[1] = v;
	lens[1] = (int)(p - v);
	return (ssize_t)m;
}

/*
 * The upsert of the kv[i] not marked in pg->seen (NULL: all of them):
 * INSERT ... ON CONFLICT DO UPDATE in kv's order.  No ordinals come out
 * of an INSERT: its keys are found in kv again.
 */
static int
pg_upsert_insert(struct pg *pg, const struct pg_kv *kv, size_t n,
    const uint8_t *skip, pg_row_fn row_fn, void *arg)
{
	const char *params[2];
	int lens[2], formats[2] = { 1, 1 };
	char sql[1024];
	PGresult *res;
	struct pg_kv probe;
	const struct pg_kv *row;

	if (pg_bin_arrays(pg, kv, n, skip, params, lens) == -1)
		return -1;
	snprintf(sql, sizeof(sql), "INSERT INTO %s.tally_counters AS c "
	    "(key, value, updated_at) SELECT k, v, now() FROM "
	    "unnest($1::text[], $2::bigint[]) AS u(k, v) "
	    "ON CONFLICT (key) DO UPDATE SET value = c.value + EXCLUDED.value, "
	    "updated_at = now() RETURNING key, value", pg->schema);
	if ((res = pg_exec_params(pg, sql, 2, params, lens, formats, 1)) ==
	    NULL)
		return -1;
	for (int r = 0; r < PQntuples(res); r++) {
		if (PQgetlength(res, r, 1) != 8)
			continue;
		probe.key = PQgetvalue(res, r, 0);
		probe.len = (size_t)PQgetlength(res, r, 0);
		if ((row = bsearch(&probe, kv, n, sizeof(*kv),
		    pg_kv_cmp)) == NULL || (skip && skip[row - kv]))
			continue;
		row_fn(arg, row, pg_get_be64(PQgetvalue(res, r, 1)));
	}
	PQclear(res);
	return 0;
}

/*
 * With other nodes flushing into the table, one INSERT ... ON CONFLICT DO
 * UPDATE takes every key, and so locks the rows in kv's order, the same
 * on every node (pg_kv_sort): two nodes' flushes cannot deadlock.
 *
 * A node alone takes its keys in two statements.  Those PostgreSQL holds
 * (nearly all of them once the node has run a while) go up by a plain
 * UPDATE, which finds each row through the primary key and writes one
 * new version of it; the upsert first tries the insertion, then locks
 * the row, a second WAL record per key.  With the binary arrays and
 * byte-order keys, that takes a fifth off PostgreSQL's time for a batch
 * of 50000 keys it holds.  The keys the UPDATE did not find then go to
 * the upsert.  The two statements together lock existing rows before
 * new ones, not in kv's order: a second node's flush could then wait on
 * this one for a key while this one waits on it for another, which
 * PostgreSQL breaks as a deadlock (the flush is retried).  Hence two
 * statements only while no other node has flushed for two hours, which
 * pg_others_mark tells; a second node that starts meanwhile can meet
 * that once.
 *
 * The UPDATE's nested loop (pg_begin leaves the planner no other join)
 * also locks in kv's order, and it returns each key's place in the
 * arrays (WITH ORDINALITY) and its total, in binary: nothing to match
 * or parse.
 */
int
pg_upsert(struct pg *pg, const struct pg_kv *kv, size_t n, int shared,
    pg_row_fn row_fn, void *arg)
{
	const char *params[2];
	int lens[2], formats[2] = { 1, 1 };
	char sql[1024];
	PGresult *res;
	size_t left = n;
	int64_t i;

	if (n == 0)
		return 0;
	if (shared)
		return pg_upsert_insert(pg, kv, n, NULL, row_fn, arg);
	if (n > pg->seencap) {
		uint8_t *ns = realloc(pg->seen, n);

		if (ns == NULL) {
			pg_set_err(pg, NULL, "out of memory for a batch");
			return -1;
		}
		pg->seen = ns;
		pg->seencap = n;
	}
	memset(pg->seen, 0, n);
	if (pg_bin_arrays(pg, kv, n, NULL, params, lens) == -1)
		return -1;
	snprintf(sql, sizeof(sql), "UPDATE %s.tally_counters AS c "
	    "SET value = c.value + u.v, updated_at = now() FROM "
	    "unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS u(k, v, i) "
	    "WHERE c.key = u.k RETURNING u.i, c.value", pg->schema);
	if ((res = pg_exec_params(pg, sql, 2, params, lens, formats, 1)) ==
	    NULL)
		return -1;
	for (int r = 0; r < PQntuples(res); r++) {
		if (PQgetlength(res, r, 0) != 8 || PQgetlength(res, r, 1) != 8)
			continue;
		i = pg_get_be64(PQgetvalue(res, r, 0));
		if (i < 1 || (uint64_t)i > n || pg->seen[i - 1])
			continue;
		pg->seen[i - 1] = 1;
		left--;
		row_fn(arg, &kv[i - 1], pg_get_be64(PQgetvalue(res, r, 1)));
	}
	PQclear(res);
	if (left == 0)
		return 0;
	return pg_upsert_insert(pg, kv, n, pg->seen, row_fn, arg);
}

/*
 * The Idempotency-Keys, counter keys, values, times and totals (NULL when
 * not known) of v[0..n) as five array literals at pg->buf; at[] gets
 * where the last four begin.
 */
static int
pg_idem_arrays(struct pg *pg, const struct pg_idem *v, size_t n,
    size_t at[4])
{
	size_t need = 20, o = 0;

	for (size_t i = 0; i < n; i++)
		need += 2 * (v[i].ik_len + v[i].key_len) + 8 + 3 * 21 + 8;
	if (pg_reserve(pg, need) == -1)
		return -1;
	pg->buf[o++] = '{';
	for (size_t i = 0; i < n; i++)
		pg_put_elem(pg, &o, v[i].ik, v[i].ik_len, i == 0);
	pg->buf[o++] = '}';
	pg->buf[o++] = '\0';
	at[0] = o;
	pg->buf[o++] = '{';
	for (size_t i = 0; i < n; i++)
		pg_put_elem(pg, &o, v[i].key, v[i].key_len, i == 0);
	pg->buf[o++] = '}';
	pg->buf[o++] = '\0';
	at[1] = o;
	pg->buf[o++] = '{';
	for (size_t i = 0; i < n; i++)
		pg_put_i64(pg, &o, v[i].value, i == 0);
	pg->buf[o++] = '}';
	pg->buf[o++] = '\0';
	at[2] = o;
	pg->buf[o++] = '{';
	for (size_t i = 0; i < n; i++)
		pg_put_num(pg, &o, v[i].time_us, 0, i == 0);
	pg->buf[o++] = '}';
	pg->buf[o++] = '\0';
	at[3] = o;
	pg->buf[o++] = '{';
	for (size_t i = 0; i < n; i++) {
		if (v[i].has_total)
			pg_put_i64(pg, &o, v[i].total, i == 0);
		else {
			if (i > 0)
				pg->buf[o++] = ',';
			memcpy(pg->buf + o, "NULL", 4);
			o += 4;
		}
	}
	pg->buf[o++] = '}';
	pg->buf[o++] = '\0';
	return 0;
}

/* Run sql and hand fn the Idempotency-Key in column 0 of each row. */
static int
pg_idem_keys(struct pg *pg, const char *sql, int nparams,
    const char *const *params, pg_idem_fn fn, void *arg)
{
	PGresult *res;

	if ((res = pg_exec(pg, sql, nparams, params)) == NULL)
		return -1;
	for (int r = 0; r < PQntuples(res); r++)
		fn(arg, PQgetvalue(res, r, 0), PQgetlength(res, r, 0), NULL, 0,
		    0, 0, 0);
	PQclear(res);
	return 0;
}

/*
 * The fingerprint of a keyed request is exact, not a hash: "value:key".
 * It is what pg_idem_load hands back to rebuild the shared table.  An
 * earlier use exactly ttl older is expired, as in the shared table (a
 * node takes a key again once now >= its use + ttl): were PostgreSQL
 * stricter, a new use the node answered could be dropped as a replay.
 */
int
pg_idem_claim(struct pg *pg, const struct pg_idem *v, size_t n,
    uint64_t ttl_us, pg_idem_fn fn, void *arg)
{
	const char *params[7];
	char sql[1024], ttl[32];
	size_t at[4];

	if (n == 0)
		return 0;
	if (pg_idem_arrays(pg, v, n, at) == -1)
		return -1;
	snprintf(ttl, sizeof(ttl), "%" PRIu64, ttl_us);
	params[0] = pg->buf;
	params[1] = pg->buf + at[0];
	params[2] = pg->buf + at[1];
	params[3] = pg->buf + at[2];
	params[4] = ttl;
	params[5] = pg->node;
	params[6] = pg->buf + at[3];
	snprintf(sql, sizeof(sql), "INSERT INTO %s.tally_idempotency AS t "
	    "(idem_key, fingerprint, node, created_at, total) "
	    "SELECT i, v::text || ':' || k, $6, "
	    "'epoch'::timestamptz + c * interval '1 microsecond', a "
	    "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], "
	    "$7::bigint[]) AS u(i, k, v, c, a) "
	    "ON CONFLICT (idem_key) DO UPDATE SET "
	    "fingerprint = EXCLUDED.fingerprint, node = EXCLUDED.node, "
	    "created_at = EXCLUDED.created_at, total = EXCLUDED.total "
	    "WHERE t.created_at <= "
	    "EXCLUDED.created_at - $5::bigint * interval '1 microsecond' "
	    "RETURNING idem_key", pg->schema);
	return pg_idem_keys(pg, sql, 7, params, fn, arg);
}

/*
 * Run after pg_idem_claim on the records it did not claim, in the same
 * transaction: their rows are live, and locked by that statement even
 * where it left them unchanged, so this statement sees what it saw.
 */
int
pg_idem_mismatched(struct pg *pg, const struct pg_idem *v, size_t n,
    pg_idem_fn fn, void *arg)
{
	const char *params[3];
	char sql[1024];
	size_t at[4];

	if (n == 0)
		return 0;
	if (pg_idem_arrays(pg, v, n, at) == -1)
		return -1;
	params[0] = pg->buf;
	params[1] = pg->buf + at[0];
	params[2] = pg->buf + at[1];
	snprintf(sql, sizeof(sql), "SELECT u.i FROM unnest($1::text[], "
	    "$2::text[], $3::bigint[]) AS u(i, k, v) "
	    "JOIN %s.tally_idempotency t ON t.idem_key = u.i "
	    "WHERE t.fingerprint <> (u.v::text || ':' || u.k)", pg->schema);
	return pg_idem_keys(pg, sql, 3, params, fn, arg);
}

int
pg_idem_load(struct pg *pg, uint64_t ttl_us, uint64_t limit, pg_idem_fn fn,
    void *arg)
{
	char sql[1024], ttl[32], lim[32];
	const char *params[3] = { pg->node, ttl, lim };
	PGresult *res;

	snprintf(ttl, sizeof(ttl), "%" PRIu64, ttl_us);
	snprintf(lim, sizeof(lim), "%" PRIu64, limit);
	/*
	 * A row written before the total was kept answers the key's total
	 * now, as a look-up does (pgread.c).
	 */
	snprintf(sql, sizeof(sql), "SELECT t.idem_key, t.fingerprint, "
	    "(extract(epoch FROM t.created_at) * 1000000)::bigint, "
	    "COALESCE(t.total, (SELECT c.value FROM %1$s.tally_counters c "
	    "WHERE c.key = substr(t.fingerprint, "
	    "strpos(t.fingerprint, ':') + 1)), 0) "
	    "FROM %1$s.tally_idempotency t WHERE t.node = $1 AND "
	    "t.created_at > now() - $2::bigint * interval '1 microsecond' "
	    "ORDER BY t.created_at DESC LIMIT $3::bigint", pg->schema);
	if ((res = pg_exec(pg, sql, 3, params)) == NULL)
		return -1;
	for (int r = 0; r < PQntuples(res); r++) {
		const char *fp = PQgetvalue(res, r, 1), *colon;
		int64_t value, when, total;
		char num[24];

		/* "value:key"; anything else was not written by tallyd. */
		if ((colon = strchr(fp, ':')) == NULL ||
		    (size_t)(colon - fp) >= sizeof(num))
			continue;
		memcpy(num, fp, colon - fp);
		num[colon - fp] = '\0';
		if (pg_parse_i64(num, &value) == -1 ||
		    pg_parse_i64(PQgetvalue(res, r, 2), &when) == -1 ||
		    pg_parse_i64(PQgetvalue(res, r, 3), &total) == -1)
			continue;
		fn(arg, PQgetvalue(res, r, 0), PQgetlength(res, r, 0),
		    colon + 1, PQgetlength(res, r, 1) - (colon + 1 - fp), value,
		    (uint64_t)when, total);
	}
	PQclear(res);
	return 0;
}

/*
 * Rows are kept for twice the ttl, not once: another node may flush a
 * retry it answered within the ttl of this row's use only later (its
 * flush_interval, or PostgreSQL out of its reach for a while), and
 * without the row its claim would take the key as new and count the
 * retry a second time.  Its claim compares created_at itself, so a row
 * kept longer changes no answer.
 */
int64_t
pg_idem_prune(struct pg *pg, uint64_t ttl_us)
{
	char sql[512], ttl[32];
	const char *params[1] = { ttl };
	PGresult *res;
	int64_t n = 0;

	snprintf(ttl, sizeof(ttl), "%" PRIu64, ttl_us);
	snprintf(sql, sizeof(sql), "DELETE FROM %s.tally_idempotency WHERE "
	    "created_at < now() - 2 * $1::bigint * interval '1 microsecond'",
	    pg->schema);
	if ((res = pg_exec(pg, sql, 1, params)) == NULL)
		return -1;
	pg_parse_i64(PQcmdTuples(res), &n);
	PQclear(res);
	return n;
}

int
pg_lookup(struct pg *pg, const struct pg_kv *kv, size_t n,
    pg_value_fn value_fn, void *arg)
{
	const char *params[1];
	char sql[1024];
	PGresult *res;
	size_t second;
	int64_t idx, v;

	if (n == 0)
		return 0;
	if (pg_arrays(pg, kv, n, 0, &second) == -1)
		return -1;
	params[0] = pg->buf;
	/*
	 * One answer per input, found or not (value is NOT NULL), in input
	 * order numbers.  The subquery is an index look-up per key: as a
	 * join, the planner would read the whole table for a thousand keys.
	 */
	snprintf(sql, sizeof(sql), "SELECT u.i, (SELECT c.value FROM "
	    "%s.tally_counters c WHERE c.key = u.k) FROM "
	    "unnest($1::text[]) WITH ORDINALITY AS u(k, i)", pg->schema);
	if ((res = pg_exec(pg, sql, 1, params)) == NULL)
		return -1;
	for (int i = 0; i < PQntuples(res); i++) {
		if (pg_parse_i64(PQgetvalue(res, i, 0), &idx) == -1 ||
		    idx < 1 || (size_t)idx > n)
			continue;
		if (PQgetisnull(res, i, 1))
			value_fn(arg, idx - 1, 0, 0);
		else if (pg_parse_i64(PQgetvalue(res, i, 1), &v) == 0)
			value_fn(arg, idx - 1, 1, v);
	}
	PQclear(res);
	return 0;
}

/*
 * Append a bigint[] or text[] literal of n elements, NULL for a missing
 * text, at pg->buf + *o.  The caller reserved the room.
 */
static void
pg_put_list(struct pg *pg, size_t *o, const struct pg_reject *v, size_t n,
    int which)
{
	pg->buf[(*o)++] = '{';
	for (size_t i = 0; i < n; i++) {
		switch (which) {
		case 0:
			pg_put_elem(pg, o, v[i].key, v[i].key_len, i == 0);
			break;
		case 1:
			pg_put_i64(pg, o, v[i].value, i == 0);
			break;
		case 2:
			if (v[i].ik == NULL) {
				*o += sprintf(pg->buf + *o, "%sNULL",
				    i ? "," : "");
				break;
			}
			pg_put_elem(pg, o, v[i].ik, v[i].ik_len, i == 0);
			break;
		case 3:
			pg_put_num(pg, o, v[i].lsn, 0, i == 0);
			break;
		case 4:
			pg_put_elem(pg, o, v[i].sqlstate, strlen(v[i].sqlstate),
			    i == 0);
			break;
		case 5:
			pg_put_elem(pg, o, v[i].reason, strlen(v[i].reason),
			    i == 0);
			break;
		}
	}
	pg->buf[(*o)++] = '}';
	pg->buf[(*o)++] = '\0';
}

int
pg_reject(struct pg *pg, const char *epoch_hex, const struct pg_reject *v,
    size_t n)
{
	const char *params[8];
	char sql[1024];
	size_t need = 16, o = 0, at[6];

	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		need += 2 * (v[i].key_len + v[i].ik_len + strlen(v[i].reason)) +
		    2 * 21 + 2 * sizeof(v[i].sqlstate) + 16 + 6 * 4;
	if (pg_reserve(pg, need) == -1)
		return -1;
	for (int w = 0; w < 6; w++) {
		at[w] = o;
		pg_put_list(pg, &o, v, n, w);
	}
	for (int w = 0; w < 6; w++)
		params[w] = pg->buf + at[w];
	params[6] = pg->node;
	params[7] = epoch_hex;
	snprintf(sql, sizeof(sql), "INSERT INTO %s.tally_rejected "
	    "(node, epoch, key, value, idem_key, lsn, sqlstate, reason) "
	    "SELECT $7, $8, k, v, i, l, s, r FROM unnest($1::text[], "
	    "$2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[]) "
	    "AS u(k, v, i, l, s, r)", pg->schema);
	return pg_command(pg, sql, 8, params);
}
