/*
 * Configuration: tallyd.conf and -o overrides.
 *
 * inih splits the file into sections and keys; a reader callback in front
 * of it counts lines, strips comments with quotes in mind and checks the
 * syntax of each line, so that every message can name FILE:LINE and so that
 * inih's line buffer never cuts a long value (it only ever sees "[section]"
 * or "key=", the value is taken from the reader's own copy of the line).
 *
 * Every error is collected rather than returned at the first one: an
 * operator fixing a file wants the whole list at once, as "httpd -n" gives.
 * Keys are rows in one table (section, name, parser, bounds); adding a key
 * means adding a row and a field in config.h.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include <ini.h>

#include "config.h"
#include "request.h"

#ifndef LOCALSTATEDIR
#define LOCALSTATEDIR	"/var"
#endif
#ifndef RUNSTATEDIR
#define RUNSTATEDIR	"/run"
#endif

#define KIB	(UINT64_C(1) << 10)
#define MIB	(UINT64_C(1) << 20)
#define GIB	(UINT64_C(1) << 30)

#define US_MS	UINT64_C(1000)
#define US_S	UINT64_C(1000000)
#define US_M	(60 * US_S)
#define US_H	(60 * US_M)
#define US_D	(24 * US_H)

/* Where a value came from, for messages: "FILE:LINE" or "-o sec.key=v". */
#define WHERE_MAX	1200

struct cfkey;

/* State of one config_load() call; nothing here outlives it. */
struct cfparse {
	struct config		*cf;
	struct config_errors	*errs;
	int			 nerrs;
	const char		*file;

	/* The reader's view of the file. */
	FILE			*fp;
	int			 lineno;
	char			*line;
	size_t			 linecap;
	int			 in_section;	/* a [section] line was seen */
	int			 section_known;
	const char		*value;		/* value of the current key line */
	const char		*value_err;	/* why it could not be read */
	char			*raw_value;	/* as written, for messages */

	/* Keys whose defaults are derived, or that are checked together. */
	int			 have_journal_dir;
	int			 have_node;
	int			 workers_auto;
	char			 where_segment[WHERE_MAX];
	char			 where_max_size[WHERE_MAX];
	char			 section[64];	/* the reader's current one */
	char			 why[200];	/* a parser's made-up reason */
};

/*
 * A parser stores the value of 'k' into 'cf' or returns -1 and points
 * '*why' at the text after "bad value 'x' for section.key: ".
 */
typedef int	(*cfparser)(struct cfparse *, const struct cfkey *, const char *,
		    const char **);

struct cfkey {
	const char	*section;
	const char	*name;
	cfparser	 parse;
	size_t		 off;		/* offset in struct config */
	size_t		 len;		/* the field's size (strings: buffer) */
	uint64_t	 min, max;
	const char	*expect;	/* set by hand, or made from min/max */
	int		 reload;	/* a reload applies it (master_reload) */
};

static int	parse_listen(struct cfparse *, const struct cfkey *, const char *,
		    const char **);
static int	parse_workers(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_name(struct cfparse *, const struct cfkey *, const char *,
		    const char **);
static int	parse_path(struct cfparse *, const struct cfkey *, const char *,
		    const char **);
static int	parse_opt_path(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_account(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_log_level(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_facility(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_size_key(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_size_t_key(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_duration_key(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_bool_key(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_sync(struct cfparse *, const struct cfkey *, const char *,
		    const char **);
static int	parse_string(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_ident(struct cfparse *, const struct cfkey *, const char *,
		    const char **);
static int	parse_count(struct cfparse *, const struct cfkey *, const char *,
		    const char **);
static int	parse_count_size_t(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_rate(struct cfparse *, const struct cfkey *, const char *,
		    const char **);
static int	parse_proxies(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_statsd(struct cfparse *, const struct cfkey *,
		    const char *, const char **);
static int	parse_prefix(struct cfparse *, const struct cfkey *,
		    const char *, const char **);

/* What makes a change of the key take effect (tallyd.conf(5) says it too). */
#define RESTART		0
#define RELOAD		1

#define F(field)	offsetof(struct config, field), \
			sizeof(((struct config *)0)->field)

static const struct cfkey cfkeys[] = {
	{ "server", "listen", parse_listen, F(listen), 0, 0, NULL, RESTART },
	{ "server", "workers", parse_workers, F(workers), 1,
	    CONFIG_MAX_WORKERS, NULL, RESTART },
	{ "server", "node", parse_name, F(node), 1, 127,
	    "expected 1..127 characters of A-Z a-z 0-9 . _ -", RESTART },
	{ "server", "state_dir", parse_path, F(state_dir), 0, 0, NULL,
	    RESTART },
	{ "server", "pid_file", parse_path, F(pid_file), 0, 0, NULL,
	    RESTART },
	{ "server", "control_socket", parse_path, F(control_socket), 0,
	    sizeof(((struct sockaddr_un *)0)->sun_path) - 1, NULL, RESTART },
	{ "server", "max_body", parse_size_t_key, F(max_body), 64, MIB, NULL,
	    RESTART },
	{ "server", "request_timeout", parse_duration_key,
	    F(request_timeout_us), 100 * US_MS, US_H, NULL, RESTART },
	{ "server", "idle_timeout", parse_duration_key, F(idle_timeout_us),
	    100 * US_MS, US_H, NULL, RESTART },
	{ "server", "max_connections", parse_count, F(max_connections), 1,
	    1000000, NULL, RESTART },
	{ "server", "http2", parse_bool_key, F(http2), 0, 0,
	    "expected on or off", RESTART },
	{ "server", "user", parse_account, F(user), 0, 0, NULL, RESTART },
	{ "server", "group", parse_account, F(group), 0, 0, NULL, RESTART },
	{ "server", "log_level", parse_log_level, F(log_level), 0, 0,
	    "expected error, warning, info or debug", RELOAD },
	{ "server", "syslog_facility", parse_facility, F(syslog_facility), 0, 0,
	    "expected daemon or local0..local7", RESTART },
	{ "server", "log_file", parse_opt_path, F(log_file), 0, 0, NULL,
	    RESTART },

	{ "journal", "dir", parse_path, F(journal_dir), 0, 0, NULL, RESTART },
	{ "journal", "segment_size", parse_size_key, F(segment_size), MIB, GIB,
	    NULL, RESTART },
	{ "journal", "max_size", parse_size_key, F(max_size), 2 * MIB,
	    1024 * GIB, NULL, RESTART },
	{ "journal", "sync", parse_sync, F(sync), 0, 0,
	    "expected group or interval", RESTART },
	{ "journal", "commit_delay", parse_duration_key, F(commit_delay_us), 0,
	    US_S, NULL, RESTART },
	{ "journal", "sync_interval", parse_duration_key, F(sync_interval_us),
	    US_MS, US_H, NULL, RESTART },

	{ "postgres", "dsn", parse_string, F(dsn), 0, 0, NULL, RESTART },
	{ "postgres", "schema", parse_ident, F(schema), 0, 0,
	    "expected an identifier: a letter or _, then up to 62 letters, "
	    "digits or _", RESTART },
	{ "postgres", "flush_interval", parse_duration_key,
	    F(flush_interval_us), US_MS, US_H, NULL, RELOAD },

	{ "counters", "max_keys", parse_count, F(max_keys), 1, 1000000000,
	    NULL, RESTART },
	{ "counters", "max_key_bytes", parse_count_size_t, F(max_key_bytes), 1,
	    REQUEST_MAX_KEY_BYTES, NULL, RESTART },

	{ "idempotency", "ttl", parse_duration_key, F(idem_ttl_us), US_S,
	    365 * US_D, NULL, RESTART },
	{ "idempotency", "max_keys", parse_count, F(idem_max_keys), 1,
	    1000000000, NULL, RESTART },

	{ "ratelimit", "rate", parse_rate, F(rate), 0, 1000000000,
	    "expected a number from 0 to 1000000000", RELOAD },
	{ "ratelimit", "burst", parse_count, F(burst), 0, 1000000000, NULL,
	    RELOAD },
	{ "ratelimit", "max_clients", parse_count, F(rl_max_clients), 1,
	    10000000, NULL, RESTART },
	{ "ratelimit", "trusted_proxies", parse_proxies, F(proxies), 0, 0,
	    NULL, RELOAD },

	{ "metrics", "statsd", parse_statsd, F(statsd), 0, 0,
	    "expected host:port, or nothing to turn it off", RELOAD },
	{ "metrics", "prefix", parse_prefix, F(metrics_prefix), 0, 0,
	    "expected up to 63 characters of A-Z a-z 0-9 . _ -", RELOAD },
};

#undef F
#undef RESTART
#undef RELOAD

static const char *const cfsections[] = {
	"server", "journal", "postgres", "counters", "idempotency",
	"ratelimit", "metrics"
};

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

/*
 * Error collection.  Allocation failures while reporting are counted
 * (so the load still fails) but the text is lost.
 */
static void
errs_add(struct cfparse *st, const char *where, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
errs_add(struct cfparse *st, const char *where, const char *fmt, ...)
{
	struct config_errors *e = st->errs;
	char msg[2 * WHERE_MAX], *full, **v;
	size_t len;
	va_list ap;

	st->nerrs++;
	if (e == NULL)
		return;
	snprintf(msg, sizeof(msg), "%s: ", where);
	len = strlen(msg);
	va_start(ap, fmt);
	vsnprintf(msg + len, sizeof(msg) - len, fmt, ap);
	va_end(ap);
	if ((full = strdup(msg)) == NULL)
		return;
	if ((v = realloc(e->msgs, (e->n + 1) * sizeof(*v))) == NULL) {
		free(full);
		return;
	}
	v[e->n++] = full;
	e->msgs = v;
}

void
config_errors_free(struct config_errors *errs)
{
	if (errs == NULL)
		return;
	for (int i = 0; i < errs->n; i++)
		free(errs->msgs[i]);
	free(errs->msgs);
	errs->msgs = NULL;
	errs->n = 0;
}

/*
 * Value parsers.  They accept exactly the documented forms: no sign, no
 * leading or trailing blanks (values arrive trimmed), no junk after the
 * unit, and no result that does not fit.
 */
static int
parse_digits(const char *s, uint64_t *out, const char **end)
{
	uint64_t v = 0;

	if (!isdigit((unsigned char)*s))
		return -1;
	for (; isdigit((unsigned char)*s); s++) {
		unsigned d = *s - '0';

		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	*end = s;
	return 0;
}

int
config_parse_size(const char *s, uint64_t *out)
{
	static const struct {
		const char	*suffix;
		uint64_t	 mult;
	} units[] = {
		{ "", 1 }, { "b", 1 },
		{ "k", KIB }, { "kb", KIB }, { "kib", KIB },
		{ "m", MIB }, { "mb", MIB }, { "mib", MIB },
		{ "g", GIB }, { "gb", GIB }, { "gib", GIB },
	};
	const char *end;
	uint64_t v;

	if (s == NULL || parse_digits(s, &v, &end) == -1)
		return -1;
	for (size_t i = 0; i < NELEM(units); i++) {
		if (strcasecmp(end, units[i].suffix) != 0)
			continue;
		if (v > UINT64_MAX / units[i].mult)
			return -1;
		*out = v * units[i].mult;
		return 0;
	}
	return -1;
}

int
config_parse_duration(const char *s, uint64_t *out_us)
{
	static const struct {
		const char	*suffix;
		uint64_t	 mult;
	} units[] = {
		{ "", US_S }, { "us", 1 }, { "ms", US_MS }, { "s", US_S },
		{ "m", US_M }, { "h", US_H }, { "d", US_D },
	};
	const char *end;
	uint64_t v;

	if (s == NULL || parse_digits(s, &v, &end) == -1)
		return -1;
	for (size_t i = 0; i < NELEM(units); i++) {
		if (strcmp(end, units[i].suffix) != 0)
			continue;
		if (v > UINT64_MAX / units[i].mult)
			return -1;
		*out_us = v * units[i].mult;
		return 0;
	}
	return -1;
}

int
config_parse_bool(const char *s, int *out)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };

	if (s == NULL)
		return -1;
	for (size_t i = 0; i < NELEM(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	return -1;
}

/* "1048576" -> "1M": the largest unit that states the value exactly. */
static const char *
fmt_size(uint64_t v, char *buf, size_t len)
{
	if (v != 0 && v % GIB == 0)
		snprintf(buf, len, "%" PRIu64 "G", v / GIB);
	else if (v != 0 && v % MIB == 0)
		snprintf(buf, len, "%" PRIu64 "M", v / MIB);
	else if (v != 0 && v % KIB == 0)
		snprintf(buf, len, "%" PRIu64 "K", v / KIB);
	else
		snprintf(buf, len, "%" PRIu64, v);
	return buf;
}

static const char *
fmt_duration(uint64_t us, char *buf, size_t len)
{
	if (us == 0)
		snprintf(buf, len, "0");
	else if (us % US_D == 0)
		snprintf(buf, len, "%" PRIu64 "d", us / US_D);
	else if (us % US_H == 0)
		snprintf(buf, len, "%" PRIu64 "h", us / US_H);
	else if (us % US_M == 0)
		snprintf(buf, len, "%" PRIu64 "m", us / US_M);
	else if (us % US_S == 0)
		snprintf(buf, len, "%" PRIu64 "s", us / US_S);
	else if (us % US_MS == 0)
		snprintf(buf, len, "%" PRIu64 "ms", us / US_MS);
	else
		snprintf(buf, len, "%" PRIu64 "us", us);
	return buf;
}

#define FIELD(cf, k, type)	((type *)(void *)((char *)(cf) + (k)->off))

static int
charset_ok(const char *s, const char *extra)
{
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && strchr(extra, *s) == NULL)
			return 0;
	return 1;
}

static int
copy_string(const struct cfkey *k, struct config *cf, const char *v)
{
	if (strlen(v) >= k->len)
		return -1;
	/* Whole fields, so that config_restart_keys can compare bytes. */
	memset(FIELD(cf, k, char), 0, k->len);
	memcpy(FIELD(cf, k, char), v, strlen(v));
	return 0;
}

static int
parse_port(const char *s, char *out, size_t len)
{
	uint64_t port;
	const char *end;

	if (parse_digits(s, &port, &end) == -1 || *end != '\0' ||
	    port < 1 || port > 65535)
		return -1;
	snprintf(out, len, "%" PRIu64, port);
	return 0;
}

/*
 * One address: "host:port", "[v6addr]:port", "*:port" or "port"; written
 * out as "host:port" with brackets kept around an IPv6 address, the form
 * master_bind_one() reads.  'wildcard' allows "*" and a bare port.
 */
static int
parse_address(const char *tok, int wildcard, char *out, size_t len,
    const char **why)
{
	char host[128], port[8];
	const char *colon;
	uint64_t dummy;
	const char *end;

	if (wildcard && parse_digits(tok, &dummy, &end) == 0 && *end == '\0') {
		if (parse_port(tok, port, sizeof(port)) == -1)
			goto badport;
		snprintf(out, len, "0.0.0.0:%s", port);
		return 0;
	}
	if (tok[0] == '[') {
		struct in6_addr a6;
		const char *close = strchr(tok, ']');

		if (close == NULL || close[1] != ':' ||
		    (size_t)(close - tok - 1) >= sizeof(host)) {
			*why = "expected [v6addr]:port";
			return -1;
		}
		memcpy(host, tok + 1, close - tok - 1);
		host[close - tok - 1] = '\0';
		if (inet_pton(AF_INET6, host, &a6) != 1) {
			*why = "not an IPv6 address between the brackets";
			return -1;
		}
		if (parse_port(close + 2, port, sizeof(port)) == -1)
			goto badport;
		if ((size_t)snprintf(out, len, "[%s]:%s", host, port) >= len) {
			*why = "address too long";
			return -1;
		}
		return 0;
	}
	if ((colon = strrchr(tok, ':')) == NULL) {
		*why = wildcard ? "expected host:port, [v6addr]:port, *:port "
		    "or a port" : "expected host:port";
		return -1;
	}
	if (memchr(tok, ':', colon - tok) != NULL) {
		*why = "an IPv6 address needs brackets: [v6addr]:port";
		return -1;
	}
	if (colon == tok || (size_t)(colon - tok) >= sizeof(host) - 8) {
		*why = colon == tok ? "missing host before ':'" :
		    "host name too long";
		return -1;
	}
	memcpy(host, tok, colon - tok);
	host[colon - tok] = '\0';
	if (strcmp(host, "*") == 0) {
		if (!wildcard) {
			*why = "expected host:port";
			return -1;
		}
	} else if (!charset_ok(host, ".-") || host[0] == '-' ||
	    host[0] == '.') {
		*why = "bad host name";
		return -1;
	}
	if (parse_port(colon + 1, port, sizeof(port)) == -1)
		goto badport;
	if ((size_t)snprintf(out, len, "%s:%s", host, port) >= len) {
		*why = "address too long";
		return -1;
	}
	return 0;
badport:
	*why = "port must be 1..65535";
	return -1;
}

/* "unix:/path": a Unix socket, its path absolute and within sun_path. */
static int
parse_unix(struct cfparse *st, const char *tok, char *out, size_t len,
    const char **why)
{
	size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;

	if (tok[5] != '/') {
		*why = "expected an absolute path after unix:";
		return -1;
	}
	if (strlen(tok + 5) > max || strlen(tok) >= len) {
		snprintf(st->why, sizeof(st->why), "a Unix socket path longer "
		    "than %zu characters", max);
		*why = st->why;
		return -1;
	}
	snprintf(out, len, "%s", tok);
	return 0;
}

static int
parse_listen(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	char list[CONFIG_MAX_LISTEN][128] = { { 0 } };
	char *copy, *tok, *save = NULL;
	int n = 0, rc = 0;

	if ((copy = strdup(v)) == NULL) {
		*why = "out of memory";
		return -1;
	}
	for (tok = strtok_r(copy, ", \t", &save); tok != NULL;
	    tok = strtok_r(NULL, ", \t", &save)) {
		if (n == CONFIG_MAX_LISTEN) {
			snprintf(st->why, sizeof(st->why), "at most %d "
			    "addresses", CONFIG_MAX_LISTEN);
			*why = st->why;
			rc = -1;
			break;
		}
		if ((strncmp(tok, "unix:", 5) == 0 ? parse_unix(st, tok,
		    list[n], sizeof(list[n]), why) : parse_address(tok, 1,
		    list[n], sizeof(list[n]), why)) == -1) {
			rc = -1;
			break;
		}
		n++;
	}
	free(copy);
	if (rc == 0 && n == 0) {
		*why = "expected at least one address";
		rc = -1;
	}
	if (rc == 0) {
		memcpy(st->cf->listen, list, sizeof(list));
		st->cf->nlisten = n;
	}
	return rc;
}

static int
parse_workers(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	uint64_t n;
	const char *end;

	snprintf(st->why, sizeof(st->why), "expected auto or %" PRIu64 "..%"
	    PRIu64, k->min, k->max);
	*why = st->why;
	if (strcmp(v, "auto") == 0) {
		st->workers_auto = 1;
		return 0;
	}
	if (parse_digits(v, &n, &end) == -1 || *end != '\0' || n < k->min ||
	    n > k->max)
		return -1;
	st->cf->workers = (int)n;
	st->workers_auto = 0;
	return 0;
}

static int
parse_name(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	size_t len = strlen(v);

	if (len < k->min || len > k->max || !charset_ok(v, "._-"))
		return -1;
	if (copy_string(k, st->cf, v) == -1)
		return -1;
	if (strcmp(k->name, "node") == 0)
		st->have_node = 1;
	return 0;
}

static int
parse_path(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	size_t max = k->max ? k->max : k->len - 1;

	if (v[0] == '\0') {
		*why = "expected a path";
		return -1;
	}
	/* The daemon runs from /: a relative path would move. */
	if (v[0] != '/') {
		*why = "expected an absolute path";
		return -1;
	}
	if (strlen(v) > max) {
		snprintf(st->why, sizeof(st->why), "longer than %zu "
		    "characters", max);
		*why = st->why;
		return -1;
	}
	if (copy_string(k, st->cf, v) == -1)
		return -1;
	if (k->off == offsetof(struct config, journal_dir))
		st->have_journal_dir = 1;
	return 0;
}

/* A path, or nothing for none. */
static int
parse_opt_path(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	if (v[0] == '\0')
		return copy_string(k, st->cf, v);
	return parse_path(st, k, v, why);
}

static int
parse_account(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	snprintf(st->why, sizeof(st->why), "expected a %s name of up to %zu "
	    "characters of A-Z a-z 0-9 . _ -, or nothing", k->name,
	    k->len - 1);
	*why = st->why;
	if (v[0] == '-' || !charset_ok(v, "._-"))
		return -1;
	return copy_string(k, st->cf, v);
}

static int
parse_log_level(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	if (strcmp(v, "error") != 0 && strcmp(v, "warning") != 0 &&
	    strcmp(v, "info") != 0 && strcmp(v, "debug") != 0)
		return -1;
	return copy_string(k, st->cf, v);
}

static int
parse_facility(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	if (strcmp(v, "daemon") != 0 && (strncmp(v, "local", 5) != 0 ||
	    v[5] < '0' || v[5] > '7' || v[6] != '\0'))
		return -1;
	return copy_string(k, st->cf, v);
}

static int
parse_bounded_size(struct cfparse *st, const struct cfkey *k, const char *v, uint64_t *out,
    const char **why)
{
	char lo[32], hi[32];

	snprintf(st->why, sizeof(st->why), "expected a size from %s to %s "
	    "(K, M, G suffixes)", fmt_size(k->min, lo, sizeof(lo)),
	    fmt_size(k->max, hi, sizeof(hi)));
	*why = st->why;
	if (config_parse_size(v, out) == -1 || *out < k->min || *out > k->max)
		return -1;
	return 0;
}

static int
parse_size_key(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	uint64_t n;

	if (parse_bounded_size(st, k, v, &n, why) == -1)
		return -1;
	*FIELD(st->cf, k, uint64_t) = n;
	return 0;
}

static int
parse_size_t_key(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	uint64_t n;

	if (parse_bounded_size(st, k, v, &n, why) == -1)
		return -1;
	*FIELD(st->cf, k, size_t) = (size_t)n;
	return 0;
}

static int
parse_duration_key(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	char lo[32], hi[32];
	uint64_t us;

	snprintf(st->why, sizeof(st->why), "expected a duration from %s to %s "
	    "(us, ms, s, m, h, d)", fmt_duration(k->min, lo, sizeof(lo)),
	    fmt_duration(k->max, hi, sizeof(hi)));
	*why = st->why;
	if (config_parse_duration(v, &us) == -1 || us < k->min || us > k->max)
		return -1;
	*FIELD(st->cf, k, uint64_t) = us;
	return 0;
}

static int
parse_bool_key(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	return config_parse_bool(v, FIELD(st->cf, k, int));
}

static int
parse_sync(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	if (strcmp(v, "group") == 0)
		st->cf->sync = SYNC_GROUP;
	else if (strcmp(v, "interval") == 0)
		st->cf->sync = SYNC_INTERVAL;
	else
		return -1;
	return 0;
}

static int
parse_string(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	snprintf(st->why, sizeof(st->why), "longer than %zu characters",
	    k->len - 1);
	*why = st->why;
	return copy_string(k, st->cf, v);
}

static int
parse_ident(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	if (!isalpha((unsigned char)v[0]) && v[0] != '_')
		return -1;
	if (strlen(v) > 63 || !charset_ok(v, "_"))
		return -1;
	return copy_string(k, st->cf, v);
}

static int
parse_bounded_count(struct cfparse *st, const struct cfkey *k, const char *v, uint64_t *out,
    const char **why)
{
	const char *end;

	snprintf(st->why, sizeof(st->why), "expected an integer from %" PRIu64
	    " to %" PRIu64, k->min, k->max);
	*why = st->why;
	if (parse_digits(v, out, &end) == -1 || *end != '\0' ||
	    *out < k->min || *out > k->max)
		return -1;
	return 0;
}

static int
parse_count(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	uint64_t n;

	if (parse_bounded_count(st, k, v, &n, why) == -1)
		return -1;
	*FIELD(st->cf, k, uint64_t) = n;
	return 0;
}

static int
parse_count_size_t(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	uint64_t n;

	if (parse_bounded_count(st, k, v, &n, why) == -1)
		return -1;
	*FIELD(st->cf, k, size_t) = (size_t)n;
	return 0;
}

/* Digits with an optional fraction; strtod alone would take "inf", "0x1p3". */
static int
parse_rate(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	const char *p = v;
	char *end;
	double d;
	int digits = 0;

	while (isdigit((unsigned char)*p)) {
		p++;
		digits++;
	}
	if (*p == '.') {
		p++;
		while (isdigit((unsigned char)*p)) {
			p++;
			digits++;
		}
	}
	if (digits == 0 || *p != '\0')
		return -1;
	errno = 0;
	d = strtod(v, &end);
	if (errno != 0 || *end != '\0' || !isfinite(d) || d < (double)k->min ||
	    d > (double)k->max)
		return -1;
	st->cf->rate = d;
	return 0;
}

int
config_parse_cidr(const char *s, struct config_cidr *out, const char **why)
{
	char host[INET6_ADDRSTRLEN];
	const char *slash = strchr(s, '/'), *end;
	size_t len = slash ? (size_t)(slash - s) : strlen(s);
	uint64_t bits, max;
	struct in_addr a4;
	int v4;

	*why = "not an IPv4 or IPv6 address or block (a.b.c.d[/n], "
	    "v6addr[/n] or unix)";
	if (len == 0 || len >= sizeof(host))
		return -1;
	memcpy(host, s, len);
	host[len] = '\0';
	memset(out, 0, sizeof(*out));
	if ((v4 = inet_pton(AF_INET, host, &a4) == 1)) {
		out->addr[10] = out->addr[11] = 0xff;
		memcpy(out->addr + 12, &a4, 4);
	} else if (inet_pton(AF_INET6, host, out->addr) != 1)
		return -1;
	max = v4 ? 32 : 128;
	bits = max;
	if (slash && (parse_digits(slash + 1, &bits, &end) == -1 ||
	    *end != '\0' || bits > max || end - slash > 4)) {
		*why = v4 ? "the prefix length of an IPv4 block must be 0..32" :
		    "the prefix length of an IPv6 block must be 0..128";
		return -1;
	}
	out->bits = (uint8_t)(v4 ? bits + 96 : bits);
	for (unsigned i = out->bits; i < 128; i++)
		if (out->addr[i / 8] & (0x80 >> (i % 8))) {
			*why = "bits are set past the prefix length";
			return -1;
		}
	return 0;
}

/* Addresses and blocks, separated by commas or blanks; "unix" too. */
static int
parse_proxies(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	struct config_cidr list[CONFIG_MAX_PROXIES];
	char *copy, *tok, *save = NULL;
	const char *reason;
	int n = 0, has_unix = 0, rc = 0;

	if ((copy = strdup(v)) == NULL) {
		*why = "out of memory";
		return -1;
	}
	for (tok = strtok_r(copy, ", \t", &save); tok != NULL;
	    tok = strtok_r(NULL, ", \t", &save)) {
		if (strcmp(tok, "unix") == 0) {
			has_unix = 1;
			continue;
		}
		if (n == CONFIG_MAX_PROXIES) {
			snprintf(st->why, sizeof(st->why), "at most %d "
			    "addresses or blocks", CONFIG_MAX_PROXIES);
			rc = -1;
			break;
		}
		if (config_parse_cidr(tok, &list[n], &reason) == -1) {
			snprintf(st->why, sizeof(st->why), "'%.64s': %s", tok,
			    reason);
			rc = -1;
			break;
		}
		n++;
	}
	free(copy);
	if (rc == -1) {
		*why = st->why;
		return -1;
	}
	memcpy(st->cf->proxies, list, n * sizeof(list[0]));
	st->cf->nproxies = n;
	st->cf->proxy_unix = has_unix;
	return 0;
}

static int
parse_statsd(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	char addr[128];

	if (v[0] == '\0') {
		st->cf->statsd[0] = '\0';
		return 0;
	}
	if (parse_address(v, 0, addr, sizeof(addr), why) == -1)
		return -1;
	return copy_string(k, st->cf, addr);
}

static int
parse_prefix(struct cfparse *st, const struct cfkey *k, const char *v,
    const char **why)
{
	if (!charset_ok(v, "._-"))
		return -1;
	return copy_string(k, st->cf, v);
}

/*
 * Defaults.  The derived ones are resolved here too, so that a structure
 * filled by config_defaults() alone is complete.
 */
static void
defaults_static(struct config *cf)
{
	memset(cf, 0, sizeof(*cf));
	snprintf(cf->listen[0], sizeof(cf->listen[0]), "0.0.0.0:3333");
	cf->nlisten = 1;
	snprintf(cf->state_dir, sizeof(cf->state_dir), "%s",
	    LOCALSTATEDIR "/lib/tallyd");
	snprintf(cf->pid_file, sizeof(cf->pid_file), "%s",
	    RUNSTATEDIR "/tallyd/tallyd.pid");
	snprintf(cf->control_socket, sizeof(cf->control_socket), "%s",
	    RUNSTATEDIR "/tallyd/tallyd.sock");
	cf->max_body = 4 * KIB;
	cf->request_timeout_us = 10 * US_S;
	cf->idle_timeout_us = 10 * US_S;
	cf->max_connections = 4096;
	cf->http2 = 1;
	snprintf(cf->log_level, sizeof(cf->log_level), "info");
	snprintf(cf->syslog_facility, sizeof(cf->syslog_facility), "daemon");

	cf->segment_size = 64 * MIB;
	cf->max_size = 4 * GIB;
	cf->sync = SYNC_GROUP;
	cf->commit_delay_us = 0;
	cf->sync_interval_us = US_S;

	snprintf(cf->schema, sizeof(cf->schema), "public");
	cf->flush_interval_us = US_S;

	cf->max_keys = 1000000;
	cf->max_key_bytes = 256;

	cf->idem_ttl_us = 24 * US_H;
	cf->idem_max_keys = 1000000;

	cf->rate = 0;
	cf->burst = 0;
	cf->rl_max_clients = 65536;

	snprintf(cf->metrics_prefix, sizeof(cf->metrics_prefix), "tallyd");
}

static int
default_workers(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return 1;
	return n > CONFIG_MAX_WORKERS ? CONFIG_MAX_WORKERS : (int)n;
}

/* Returns -1 when the host name cannot serve as a node name. */
static int
default_node(struct config *cf)
{
	char host[256];
	size_t len;

	if (gethostname(host, sizeof(host)) == -1)
		return -1;
	host[sizeof(host) - 1] = '\0';
	len = strlen(host);
	if (len < 1 || len > 127 || !charset_ok(host, "._-"))
		return -1;
	memcpy(cf->node, host, len + 1);
	return 0;
}

static int
default_journal_dir(struct config *cf)
{
	static const char sub[] = "/journal";
	size_t len = strlen(cf->state_dir);

	if (len + sizeof(sub) > sizeof(cf->journal_dir))
		return -1;
	memcpy(cf->journal_dir, cf->state_dir, len);
	memcpy(cf->journal_dir + len, sub, sizeof(sub));
	return 0;
}

void
config_defaults(struct config *cf)
{
	defaults_static(cf);
	cf->workers = default_workers();
	if (default_node(cf) == -1)
		snprintf(cf->node, sizeof(cf->node), "localhost");
	default_journal_dir(cf);
}

/*
 * Setting one key, from the file or from -o.
 */
static const struct cfkey *
key_find(const char *section, const char *name)
{
	for (size_t i = 0; i < NELEM(cfkeys); i++)
		if (strcmp(cfkeys[i].section, section) == 0 &&
		    strcmp(cfkeys[i].name, name) == 0)
			return &cfkeys[i];
	return NULL;
}

static int
section_known(const char *section)
{
	for (size_t i = 0; i < NELEM(cfsections); i++)
		if (strcmp(cfsections[i], section) == 0)
			return 1;
	return 0;
}

static void
key_set(struct cfparse *st, const char *where, const char *section,
    const char *name, const char *value, const char *raw, const char *err)
{
	const struct cfkey *k;
	const char *why = NULL;

	if (section[0] == '\0') {
		errs_add(st, where, "key '%s' outside any section", name);
		return;
	}
	if (!section_known(section)) {
		errs_add(st, where, "unknown section [%s]", section);
		return;
	}
	if ((k = key_find(section, name)) == NULL) {
		errs_add(st, where, "unknown key '%s' in [%s]", name, section);
		return;
	}
	if (err != NULL) {
		errs_add(st, where, "bad value '%s' for %s.%s: %s", raw,
		    section, name, err);
		return;
	}
	if (k->parse(st, k, value, &why) == -1) {
		errs_add(st, where, "bad value '%s' for %s.%s: %s", value,
		    section, name, why ? why : k->expect ? k->expect :
		    "invalid");
		return;
	}
	if (k->off == offsetof(struct config, segment_size))
		snprintf(st->where_segment, sizeof(st->where_segment), "%s",
		    where);
	else if (k->off == offsetof(struct config, max_size))
		snprintf(st->where_max_size, sizeof(st->where_max_size), "%s",
		    where);
}

static char *
trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' ||
	    e[-1] == '\n'))
		*--e = '\0';
	return s;
}

/*
 * Reads a value in place: a quoted value is what lies between the quotes;
 * otherwise, in a file, '#' or ';' after a blank starts a comment.
 * Returns the value, or NULL with '*err' set.
 */
static char *
value_read(char *s, int comments, const char **err)
{
	char *p, *close;

	s = trim(s);
	if (*s == '"') {
		if ((close = strchr(s + 1, '"')) == NULL) {
			*err = "unterminated quote";
			return NULL;
		}
		*close = '\0';
		p = close + 1;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p != '\0' && !(comments && (*p == '#' || *p == ';'))) {
			*err = "text after the closing quote";
			return NULL;
		}
		return s + 1;
	}
	if (comments) {
		for (p = s; *p; p++)
			if ((*p == '#' || *p == ';') && p > s &&
			    (p[-1] == ' ' || p[-1] == '\t')) {
				*p = '\0';
				break;
			}
		s = trim(s);
	}
	return s;
}

/*
 * The reader in front of inih: hands it one canonical line per line of
 * the file, "[section]\n", "name=\n" or "\n", and keeps the value and the
 * line number for the handler.  Syntax errors are reported here, and the
 * line is replaced by an empty one so that inih reports nothing itself.
 */
static char *
config_reader(char *buf, int num, void *arg)
{
	struct cfparse *st = arg;
	char where[WHERE_MAX];
	char *s, *eq, *end, *rest;
	ssize_t n;

	if ((n = getline(&st->line, &st->linecap, st->fp)) == -1)
		return NULL;
	st->lineno++;
	st->value = st->value_err = NULL;
	free(st->raw_value);
	st->raw_value = NULL;
	snprintf(where, sizeof(where), "%s:%d", st->file, st->lineno);
	buf[0] = '\n';
	buf[1] = '\0';
	if (num < 3)
		return buf;

	s = st->line;
	if (st->lineno == 1 && strncmp(s, "\xef\xbb\xbf", 3) == 0)
		s += 3;
	if (strlen(s) != (size_t)n - (s - st->line)) {
		errs_add(st, where, "NUL byte in line");
		return buf;
	}
	s = trim(s);
	if (*s == '\0' || *s == '#' || *s == ';')
		return buf;

	if (*s == '[') {
		if ((end = strchr(s, ']')) == NULL) {
			errs_add(st, where, "missing ']' after section name");
			st->in_section = 1;
			st->section_known = 0;
			return buf;
		}
		*end = '\0';
		s = trim(s + 1);
		rest = trim(end + 1);
		st->in_section = 1;
		st->section_known = section_known(s);
		snprintf(st->section, sizeof(st->section), "%s", s);
		if (!st->section_known)
			errs_add(st, where, "unknown section [%s]", s);
		else if (*rest != '\0' && *rest != '#' && *rest != ';') {
			errs_add(st, where, "text after [%s]", s);
			st->section_known = 0;
		} else
			snprintf(buf, num, "[%s]\n", s);
		return buf;
	}

	if ((eq = strchr(s, '=')) == NULL) {
		errs_add(st, where, "expected 'key = value', '[section]' or a "
		    "comment");
		return buf;
	}
	*eq = '\0';
	s = trim(s);
	if (*s == '\0') {
		errs_add(st, where, "missing key before '='");
		return buf;
	}
	/* A key in an unknown section: the section was reported already. */
	if (st->in_section && !st->section_known)
		return buf;
	if (!charset_ok(s, "_-.") || strlen(s) + 3 > (size_t)num) {
		if (st->in_section)
			errs_add(st, where, "unknown key '%s' in [%s]", s,
			    st->section);
		else
			errs_add(st, where, "key '%s' outside any section", s);
		return buf;
	}
	if ((st->raw_value = strdup(trim(eq + 1))) == NULL) {
		errs_add(st, where, "out of memory");
		return buf;
	}
	st->value = value_read(eq + 1, 1, &st->value_err);
	snprintf(buf, num, "%s=\n", s);
	return buf;
}

static int
config_handler(void *arg, const char *section, const char *name,
    const char *value)
{
	struct cfparse *st = arg;
	char where[WHERE_MAX];

	snprintf(where, sizeof(where), "%s:%d", st->file, st->lineno);
	key_set(st, where, section, name, st->value, st->raw_value,
	    st->value_err);
	return 1;
}

static void
config_file(struct cfparse *st, const char *path)
{
	int rc;

	if ((st->fp = fopen(path, "re")) == NULL) {
		errs_add(st, path, "%s", strerror(errno));
		return;
	}
	st->file = path;
	rc = ini_parse_stream(config_reader, st, config_handler, st);
	if (ferror(st->fp))
		errs_add(st, path, "read error: %s", strerror(errno));
	else if (rc == -2)
		errs_add(st, path, "out of memory");
	else if (rc > 0 && st->nerrs == 0)
		/* Not expected: the reader hands inih only clean lines. */
		errs_add(st, path, "parse error at line %d", rc);
	fclose(st->fp);
	st->fp = NULL;
	free(st->line);
	free(st->raw_value);
	st->line = st->raw_value = NULL;
	st->linecap = 0;
}

static void
config_override(struct cfparse *st, const char *ov)
{
	char where[WHERE_MAX], *copy, *eq, *dot, *key, *raw, *value;
	const char *err = NULL;

	snprintf(where, sizeof(where), "-o %s", ov);
	if ((copy = strdup(ov)) == NULL) {
		errs_add(st, where, "out of memory");
		return;
	}
	if ((eq = strchr(copy, '=')) == NULL ||
	    (dot = memchr(copy, '.', eq - copy)) == NULL) {
		errs_add(st, where, "expected section.key=value");
		free(copy);
		return;
	}
	*eq = '\0';
	*dot = '\0';
	key = trim(dot + 1);
	/* A copy of the text as given: value_read() cuts the original. */
	if ((raw = strdup(trim(eq + 1))) == NULL) {
		errs_add(st, where, "out of memory");
		free(copy);
		return;
	}
	value = value_read(eq + 1, 0, &err);
	key_set(st, where, trim(copy), key, value, raw, err);
	free(raw);
	free(copy);
}

int
config_load(struct config *cf, const char *path, char *const *overrides,
    int noverrides, struct config_errors *errs)
{
	struct cfparse st;
	char a[32], b[32];

	memset(&st, 0, sizeof(st));
	st.cf = cf;
	st.errs = errs;
	st.workers_auto = 1;
	if (errs != NULL) {
		errs->msgs = NULL;
		errs->n = 0;
	}
	defaults_static(cf);

	if (path != NULL)
		config_file(&st, path);
	for (int i = 0; i < noverrides; i++)
		config_override(&st, overrides[i]);

	if (cf->max_size < 2 * cf->segment_size)
		errs_add(&st, st.where_max_size[0] ? st.where_max_size :
		    st.where_segment[0] ? st.where_segment :
		    path ? path : "defaults",
		    "journal.max_size (%s) must be at least twice "
		    "journal.segment_size (%s)",
		    fmt_size(cf->max_size, a, sizeof(a)),
		    fmt_size(cf->segment_size, b, sizeof(b)));

	/*
	 * Frames sit on an 8-byte grid from each segment's start, and
	 * recovery looks for them on the grid of LSNs: segments must start
	 * on it too.
	 */
	if (cf->segment_size % (4 * KIB) != 0)
		errs_add(&st, st.where_segment[0] ? st.where_segment :
		    path ? path : "defaults",
		    "journal.segment_size (%s) must be a multiple of 4K",
		    fmt_size(cf->segment_size, a, sizeof(a)));

	if (st.workers_auto)
		cf->workers = default_workers();
	if (!st.have_node && default_node(cf) == -1)
		errs_add(&st, "server.node", "the host name is not a valid "
		    "node name (1..127 characters of A-Z a-z 0-9 . _ -); "
		    "set server.node");
	if (!st.have_journal_dir && default_journal_dir(cf) == -1)
		errs_add(&st, "journal.dir", "server.state_dir is too long to "
		    "hold journal/");
	return st.nerrs == 0 ? 0 : -1;
}

int
config_restart_keys(const struct config *a, const struct config *b,
    void (*fn)(void *, const char *), void *arg)
{
	char name[64];
	int n = 0;

	for (size_t i = 0; i < NELEM(cfkeys); i++) {
		const struct cfkey *k = &cfkeys[i];

		if (k->reload || memcmp((const char *)a + k->off,
		    (const char *)b + k->off, k->len) == 0)
			continue;
		snprintf(name, sizeof(name), "%s.%s", k->section, k->name);
		fn(arg, name);
		n++;
	}
	return n;
}
