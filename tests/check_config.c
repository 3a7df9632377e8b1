/*
 * Unit tests for config.c: defaults, every key's values, the size and
 * duration syntax, errors with their exact lines, -o overrides and the
 * derived defaults.  Files are written into a private temporary directory.
 */
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * By path: a bare "config.h" would find autoconf's generated config.h in
 * the build directory first (-I. precedes -I$(top_srcdir)/src).
 */
#include "../src/config.h"

#ifndef LOCALSTATEDIR
#define LOCALSTATEDIR	"/var"
#endif
#ifndef RUNSTATEDIR
#define RUNSTATEDIR	"/run"
#endif

#define KIB	(UINT64_C(1) << 10)
#define MIB	(UINT64_C(1) << 20)
#define GIB	(UINT64_C(1) << 30)

static char		 tmpdir[PATH_MAX];
static int		 nfiles;
static struct config	 cf;
static struct config_errors errs;

static void
setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "%s/check_config.XXXXXX",
	    getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	nfiles = 0;
	errs.msgs = NULL;
	errs.n = 0;
}

static void
teardown(void)
{
	char path[PATH_MAX + 32];

	config_errors_free(&errs);
	for (int i = 0; i < nfiles; i++) {
		snprintf(path, sizeof(path), "%s/%d.conf", tmpdir, i);
		unlink(path);
	}
	rmdir(tmpdir);
}

/* Writes 'text' into a new file of the temporary directory. */
static const char *
conf_write(const char *text)
{
	static char path[PATH_MAX + 32];
	FILE *fp;

	snprintf(path, sizeof(path), "%s/%d.conf", tmpdir, nfiles++);
	ck_assert_ptr_nonnull(fp = fopen(path, "w"));
	ck_assert_int_eq(fputs(text, fp) >= 0, 1);
	ck_assert_int_eq(fclose(fp), 0);
	return path;
}

/* Loads 'text' with the NULL-terminated overrides that follow. */
static int
load(const char *text, ...)
{
	char *ov[16];
	const char *path = text ? conf_write(text) : NULL;
	va_list ap;
	int n = 0;

	va_start(ap, text);
	while (n < 16 && (ov[n] = va_arg(ap, char *)) != NULL)
		n++;
	va_end(ap);
	config_errors_free(&errs);
	return config_load(&cf, path, ov, n, &errs);
}

/* Asserts that error 'i' is 'want' with "FILE" replaced by the last file. */
static void
assert_err(int i, const char *want)
{
	char exp[PATH_MAX + 512];
	const char *f = strstr(want, "FILE");

	ck_assert_int_lt(i, errs.n);
	if (f != NULL)
		snprintf(exp, sizeof(exp), "%.*s%s/%d.conf%s", (int)(f - want),
		    want, tmpdir, nfiles - 1, f + 4);
	else
		snprintf(exp, sizeof(exp), "%s", want);
	ck_assert_str_eq(errs.msgs[i], exp);
}

static int
hostname_node(char *buf, size_t len)
{
	if (gethostname(buf, len) == -1)
		return -1;
	buf[len - 1] = '\0';
	return 0;
}

static int
online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > CONFIG_MAX_WORKERS ? CONFIG_MAX_WORKERS :
	    (int)n;
}

/*
 * Defaults.
 */
static void
assert_defaults(const struct config *c)
{
	char host[256];

	ck_assert_int_eq(c->nlisten, 1);
	ck_assert_str_eq(c->listen[0], "0.0.0.0:3333");
	ck_assert_int_eq(c->workers, online_cpus());
	ck_assert_int_eq(hostname_node(host, sizeof(host)), 0);
	ck_assert_str_eq(c->node, host);
	ck_assert_str_eq(c->state_dir, LOCALSTATEDIR "/lib/tallyd");
	ck_assert_str_eq(c->pid_file, RUNSTATEDIR "/tallyd/tallyd.pid");
	ck_assert_str_eq(c->log_file, "");
	ck_assert_str_eq(c->control_socket, RUNSTATEDIR "/tallyd/tallyd.sock");
	ck_assert_uint_eq(c->max_body, 4096);
	ck_assert_uint_eq(c->request_timeout_us, 10000000);
	ck_assert_uint_eq(c->idle_timeout_us, 10000000);
	ck_assert_uint_eq(c->max_connections, 4096);
	ck_assert_int_eq(c->http2, 1);
	ck_assert_str_eq(c->user, "");
	ck_assert_str_eq(c->group, "");
	ck_assert_str_eq(c->log_level, "info");
	ck_assert_str_eq(c->syslog_facility, "daemon");
	ck_assert_str_eq(c->journal_dir, LOCALSTATEDIR "/lib/tallyd/journal");
	ck_assert_uint_eq(c->segment_size, 64 * MIB);
	ck_assert_uint_eq(c->max_size, 4 * GIB);
	ck_assert_int_eq(c->sync, SYNC_GROUP);
	ck_assert_uint_eq(c->commit_delay_us, 0);
	ck_assert_uint_eq(c->sync_interval_us, 1000000);
	ck_assert_str_eq(c->dsn, "");
	ck_assert_str_eq(c->schema, "public");
	ck_assert_uint_eq(c->flush_interval_us, 1000000);
	ck_assert_uint_eq(c->max_keys, 1000000);
	ck_assert_uint_eq(c->max_key_bytes, 256);
	ck_assert_uint_eq(c->idem_ttl_us, UINT64_C(24) * 3600 * 1000000);
	ck_assert_uint_eq(c->idem_max_keys, 1000000);
	ck_assert(c->rate == 0.0);
	ck_assert_uint_eq(c->burst, 0);
	ck_assert_uint_eq(c->rl_max_clients, 65536);
	ck_assert_int_eq(c->nproxies, 0);
	ck_assert_int_eq(c->proxy_unix, 0);
	ck_assert_str_eq(c->statsd, "");
	ck_assert_str_eq(c->metrics_prefix, "tallyd");
}

START_TEST(defaults_function)
{
	config_defaults(&cf);
	assert_defaults(&cf);
}
END_TEST

START_TEST(defaults_null_path)
{
	struct config d;

	ck_assert_int_eq(config_load(&cf, NULL, NULL, 0, &errs), 0);
	ck_assert_int_eq(errs.n, 0);
	assert_defaults(&cf);
	config_defaults(&d);
	ck_assert_mem_eq(&cf, &d, sizeof(d));
}
END_TEST

START_TEST(defaults_empty_file)
{
	struct config d;

	ck_assert_int_eq(load("", NULL), 0);
	assert_defaults(&cf);
	ck_assert_int_eq(load("# only a comment\n\n; another\n[server]\n"
	    "[journal]\n", NULL), 0);
	config_defaults(&d);
	ck_assert_mem_eq(&cf, &d, sizeof(d));
}
END_TEST

/* The shipped etc/tallyd.conf must describe the defaults exactly. */
START_TEST(defaults_shipped_file)
{
	static const char *const tops[] = { NULL, "..", "." };
	char path[PATH_MAX];
	struct config d;
	int found = 0;

	for (size_t i = 0; i < 3 && !found; i++) {
		const char *top = i == 0 ? getenv("top_srcdir") : tops[i];

		if (top == NULL)
			continue;
		snprintf(path, sizeof(path), "%s/etc/tallyd.conf", top);
		found = access(path, R_OK) == 0;
	}
	ck_assert_msg(found, "etc/tallyd.conf not found (set top_srcdir)");
	ck_assert_int_eq(config_load(&cf, path, NULL, 0, &errs), 0);
	ck_assert_int_eq(errs.n, 0);
	config_defaults(&d);
	assert_defaults(&cf);
	ck_assert_mem_eq(&cf, &d, sizeof(d));
}
END_TEST

/*
 * Values of every key.
 */
START_TEST(values_every_key)
{
	ck_assert_int_eq(load(
	    "[server]\n"
	    "listen = 127.0.0.1:8080\n"
	    "workers = 3\n"
	    "node = node-1.example_a\n"
	    "state_dir = /srv/tally\n"
	    "pid_file = /tmp/t.pid\n"
	    "control_socket = /tmp/t.sock\n"
	    "max_body = 8K\n"
	    "user = _tallyd\n"
	    "group = tally\n"
	    "log_level = debug\n"
	    "syslog_facility = local3\n"
	    "log_file = /var/log/t.log\n"
	    "[journal]\n"
	    "dir = /j\n"
	    "segment_size = 1M\n"
	    "max_size = 2M\n"
	    "sync = interval\n"
	    "commit_delay = 200us\n"
	    "sync_interval = 5ms\n"
	    "[postgres]\n"
	    "dsn = host=/tmp port=5433 dbname=tally\n"
	    "schema = _tally2\n"
	    "flush_interval = 2m\n"
	    "[counters]\n"
	    "max_keys = 5\n"
	    "max_key_bytes = 2048\n"
	    "[idempotency]\n"
	    "ttl = 1h\n"
	    "max_keys = 7\n"
	    "[ratelimit]\n"
	    "rate = 2.5\n"
	    "burst = 10\n"
	    "max_clients = 100\n"
	    "trusted_proxies = 10.0.0.0/8 unix, 2001:db8::1\n"
	    "[metrics]\n"
	    "statsd = stats.example:8125\n"
	    "prefix = tally.prod\n", NULL), 0);
	ck_assert_int_eq(errs.n, 0);
	ck_assert_int_eq(cf.nlisten, 1);
	ck_assert_str_eq(cf.listen[0], "127.0.0.1:8080");
	ck_assert_int_eq(cf.workers, 3);
	ck_assert_str_eq(cf.node, "node-1.example_a");
	ck_assert_str_eq(cf.state_dir, "/srv/tally");
	ck_assert_str_eq(cf.pid_file, "/tmp/t.pid");
	ck_assert_str_eq(cf.log_file, "/var/log/t.log");
	ck_assert_str_eq(cf.control_socket, "/tmp/t.sock");
	ck_assert_uint_eq(cf.max_body, 8192);
	ck_assert_str_eq(cf.user, "_tallyd");
	ck_assert_str_eq(cf.group, "tally");
	ck_assert_str_eq(cf.log_level, "debug");
	ck_assert_str_eq(cf.syslog_facility, "local3");
	ck_assert_str_eq(cf.journal_dir, "/j");
	ck_assert_uint_eq(cf.segment_size, MIB);
	ck_assert_uint_eq(cf.max_size, 2 * MIB);
	ck_assert_int_eq(cf.sync, SYNC_INTERVAL);
	ck_assert_uint_eq(cf.commit_delay_us, 200);
	ck_assert_uint_eq(cf.sync_interval_us, 5000);
	ck_assert_str_eq(cf.dsn, "host=/tmp port=5433 dbname=tally");
	ck_assert_str_eq(cf.schema, "_tally2");
	ck_assert_uint_eq(cf.flush_interval_us, UINT64_C(120000000));
	ck_assert_uint_eq(cf.max_keys, 5);
	ck_assert_uint_eq(cf.max_key_bytes, 2048);
	ck_assert_uint_eq(cf.idem_ttl_us, UINT64_C(3600000000));
	ck_assert_uint_eq(cf.idem_max_keys, 7);
	ck_assert(cf.rate == 2.5);
	ck_assert_uint_eq(cf.burst, 10);
	ck_assert_uint_eq(cf.rl_max_clients, 100);
	ck_assert_int_eq(cf.nproxies, 2);
	ck_assert_int_eq(cf.proxy_unix, 1);
	ck_assert_int_eq(cf.proxies[0].bits, 104);
	ck_assert_int_eq(cf.proxies[0].addr[12], 10);
	ck_assert_int_eq(cf.proxies[1].bits, 128);
	ck_assert_int_eq(cf.proxies[1].addr[15], 1);
	ck_assert_str_eq(cf.statsd, "stats.example:8125");
	ck_assert_str_eq(cf.metrics_prefix, "tally.prod");
}
END_TEST

START_TEST(values_listen_forms)
{
	ck_assert_int_eq(load("[server]\nlisten = 8080, [::1]:81 *:82,"
	    "localhost:83\t10.0.0.1:084\n", NULL), 0);
	ck_assert_int_eq(cf.nlisten, 5);
	ck_assert_str_eq(cf.listen[0], "0.0.0.0:8080");
	ck_assert_str_eq(cf.listen[1], "[::1]:81");
	ck_assert_str_eq(cf.listen[2], "*:82");
	ck_assert_str_eq(cf.listen[3], "localhost:83");
	ck_assert_str_eq(cf.listen[4], "10.0.0.1:84");

	ck_assert_int_eq(load("[server]\nlisten = 1 2 3 4 5 6 7 8\n", NULL), 0);
	ck_assert_int_eq(cf.nlisten, CONFIG_MAX_LISTEN);
	ck_assert_str_eq(cf.listen[7], "0.0.0.0:8");

	ck_assert_int_eq(load("[server]\nlisten = 1 2 3 4 5 6 7 8 9\n", NULL),
	    -1);
	assert_err(0, "FILE:2: bad value '1 2 3 4 5 6 7 8 9' for "
	    "server.listen: at most 8 addresses");
	/* A rejected value leaves the previous one in place. */
	ck_assert_int_eq(cf.nlisten, 1);
	ck_assert_str_eq(cf.listen[0], "0.0.0.0:3333");
}
END_TEST

START_TEST(values_listen_bad)
{
	static const struct {
		const char	*value;
		const char	*why;
	} bad[] = {
		{ "", "expected at least one address" },
		{ "0", "port must be 1..65535" },
		{ "65536", "port must be 1..65535" },
		{ "host:", "port must be 1..65535" },
		{ "host:x", "port must be 1..65535" },
		{ ":80", "missing host before ':'" },
		{ "::1:80", "an IPv6 address needs brackets: [v6addr]:port" },
		{ "[::1]80", "expected [v6addr]:port" },
		{ "[nope]:80", "not an IPv6 address between the brackets" },
		{ "ho$t:80", "bad host name" },
		{ "localhost", "expected host:port, [v6addr]:port, *:port or "
		    "a port" },
	};
	char text[256], want[512];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(text, sizeof(text), "[server]\n\nlisten = %s\n",
		    bad[i].value);
		ck_assert_int_eq(load(text, NULL), -1);
		ck_assert_int_eq(errs.n, 1);
		snprintf(want, sizeof(want), "FILE:3: bad value '%s' for "
		    "server.listen: %s", bad[i].value, bad[i].why);
		assert_err(0, want);
	}
}
END_TEST

START_TEST(values_quotes_and_comments)
{
	ck_assert_int_eq(load(
	    "[postgres]  # the database\n"
	    "dsn = \"host=db password=a#b;c # d\"  # quoted\n"
	    "schema = s1 ; trailing comment\n"
	    "  [ metrics ]\n"
	    "   prefix=\"\"\n"
	    "statsd = \"\"\n"
	    "[server]\n"
	    "node = n#1\n"
	    "log_level = warning# not a comment without a blank\n", NULL), -1);
	ck_assert_str_eq(cf.dsn, "host=db password=a#b;c # d");
	ck_assert_str_eq(cf.schema, "s1");
	ck_assert_str_eq(cf.metrics_prefix, "");
	ck_assert_str_eq(cf.statsd, "");
	ck_assert_int_eq(errs.n, 2);
	assert_err(0, "FILE:8: bad value 'n#1' for server.node: expected "
	    "1..127 characters of A-Z a-z 0-9 . _ -");
	assert_err(1, "FILE:9: bad value 'warning# not a comment without a "
	    "blank' for server.log_level: expected error, warning, info or "
	    "debug");
}
END_TEST

START_TEST(values_long_line)
{
	char text[2048], dsn[900];

	/* Longer than inih's own line buffer. */
	memset(dsn, 'x', sizeof(dsn) - 1);
	dsn[sizeof(dsn) - 1] = '\0';
	memcpy(dsn, "host=", 5);
	snprintf(text, sizeof(text), "[postgres]\ndsn = %s\nschema = a\n", dsn);
	ck_assert_int_eq(load(text, NULL), 0);
	ck_assert_str_eq(cf.dsn, dsn);
	ck_assert_str_eq(cf.schema, "a");
}
END_TEST

START_TEST(values_crlf_bom_and_last_wins)
{
	ck_assert_int_eq(load("\xef\xbb\xbf[server]\r\nworkers = 2\r\n"
	    "workers = 5\r\nworkers = auto\r\n[counters]\r\n"
	    "max_keys = 9", NULL), 0);
	ck_assert_int_eq(cf.workers, online_cpus());
	ck_assert_uint_eq(cf.max_keys, 9);
	ck_assert_int_eq(load("[server]\nworkers = auto\nworkers = 64\n",
	    NULL), 0);
	ck_assert_int_eq(cf.workers, 64);
}
END_TEST

START_TEST(values_enums)
{
	static const char *const levels[] = { "error", "warning", "info",
	    "debug" };
	char text[128];

	for (int i = 0; i < 4; i++) {
		snprintf(text, sizeof(text), "[server]\nlog_level=%s\n",
		    levels[i]);
		ck_assert_int_eq(load(text, NULL), 0);
		ck_assert_str_eq(cf.log_level, levels[i]);
	}
	for (int i = 0; i <= 7; i++) {
		snprintf(text, sizeof(text), "[server]\nsyslog_facility=local%d\n",
		    i);
		ck_assert_int_eq(load(text, NULL), 0);
		ck_assert_int_eq(cf.syslog_facility[5], '0' + i);
	}
	ck_assert_int_eq(load("[server]\nsyslog_facility=local8\n"
	    "syslog_facility=user\nlog_level=Info\n[journal]\nsync=always\n"
	    "sync=group\n", NULL), -1);
	ck_assert_int_eq(errs.n, 4);
	assert_err(0, "FILE:2: bad value 'local8' for server.syslog_facility: "
	    "expected daemon or local0..local7");
	assert_err(1, "FILE:3: bad value 'user' for server.syslog_facility: "
	    "expected daemon or local0..local7");
	assert_err(2, "FILE:4: bad value 'Info' for server.log_level: "
	    "expected error, warning, info or debug");
	assert_err(3, "FILE:6: bad value 'always' for journal.sync: "
	    "expected group or interval");
	ck_assert_int_eq(cf.sync, SYNC_GROUP);
}
END_TEST

START_TEST(values_bounds)
{
	static const struct {
		const char	*line;
		const char	*err;	/* NULL: accepted */
	} cases[] = {
		{ "[server]\nworkers = 0", "bad value '0' for server.workers: "
		    "expected auto or 1..64" },
		{ "[server]\nworkers = 65", "bad value '65' for "
		    "server.workers: expected auto or 1..64" },
		{ "[server]\nworkers = 1", NULL },
		{ "[server]\nworkers = -1", "bad value '-1' for "
		    "server.workers: expected auto or 1..64" },
		{ "[server]\nmax_body = 63", "bad value '63' for "
		    "server.max_body: expected a size from 64 to 1M "
		    "(K, M, G suffixes)" },
		{ "[server]\nmax_body = 64", NULL },
		{ "[server]\nmax_body = 1M", NULL },
		{ "[server]\nmax_body = 1025K", "bad value '1025K' for "
		    "server.max_body: expected a size from 64 to 1M "
		    "(K, M, G suffixes)" },
		{ "[server]\nrequest_timeout = 99ms", "bad value '99ms' for "
		    "server.request_timeout: expected a duration from 100ms "
		    "to 1h (us, ms, s, m, h, d)" },
		{ "[server]\nrequest_timeout = 100ms", NULL },
		{ "[server]\nrequest_timeout = 2h", "bad value '2h' for "
		    "server.request_timeout: expected a duration from 100ms "
		    "to 1h (us, ms, s, m, h, d)" },
		{ "[server]\nrequest_timeout = 1h", NULL },
		{ "[server]\nidle_timeout = 0", "bad value '0' for "
		    "server.idle_timeout: expected a duration from 100ms "
		    "to 1h (us, ms, s, m, h, d)" },
		{ "[server]\nidle_timeout = 5", NULL },
		{ "[server]\nidle_timeout = -1s", "bad value '-1s' for "
		    "server.idle_timeout: expected a duration from 100ms "
		    "to 1h (us, ms, s, m, h, d)" },
		{ "[server]\nmax_connections = 0", "bad value '0' for "
		    "server.max_connections: expected an integer from 1 to "
		    "1000000" },
		{ "[server]\nmax_connections = 1", NULL },
		{ "[server]\nmax_connections = 1000001", "bad value '1000001' "
		    "for server.max_connections: expected an integer from 1 "
		    "to 1000000" },
		{ "[server]\nmax_connections = 4k", "bad value '4k' for "
		    "server.max_connections: expected an integer from 1 to "
		    "1000000" },
		{ "[server]\nhttp2 = off", NULL },
		{ "[server]\nhttp2 = yes", NULL },
		{ "[server]\nhttp2 = h2c", "bad value 'h2c' for server.http2: "
		    "expected on or off" },
		{ "[server]\nhttp2 =", "bad value '' for server.http2: "
		    "expected on or off" },
		{ "[journal]\nsegment_size = 1023K", "bad value '1023K' for "
		    "journal.segment_size: expected a size from 1M to 1G "
		    "(K, M, G suffixes)" },
		{ "[journal]\nsegment_size = 1G\nmax_size=2G", NULL },
		{ "[journal]\nmax_size = 1024G", NULL },
		{ "[journal]\nmax_size = 1025G", "bad value '1025G' for "
		    "journal.max_size: expected a size from 2M to 1024G "
		    "(K, M, G suffixes)" },
		{ "[journal]\nsegment_size = 2G", "bad value '2G' for "
		    "journal.segment_size: expected a size from 1M to 1G "
		    "(K, M, G suffixes)" },
		{ "[journal]\ncommit_delay = 1s", NULL },
		{ "[journal]\ncommit_delay = 1001ms", "bad value '1001ms' for "
		    "journal.commit_delay: expected a duration from 0 to 1s "
		    "(us, ms, s, m, h, d)" },
		{ "[journal]\nsync_interval = 999us", "bad value '999us' for "
		    "journal.sync_interval: expected a duration from 1ms to "
		    "1h (us, ms, s, m, h, d)" },
		{ "[journal]\nsync_interval = 61m", "bad value '61m' for "
		    "journal.sync_interval: expected a duration from 1ms to "
		    "1h (us, ms, s, m, h, d)" },
		{ "[postgres]\nflush_interval = 0", "bad value '0' for "
		    "postgres.flush_interval: expected a duration from 1ms "
		    "to 1h (us, ms, s, m, h, d)" },
		{ "[postgres]\nschema = 1abc", "bad value '1abc' for "
		    "postgres.schema: expected an identifier: a letter or _, "
		    "then up to 62 letters, digits or _" },
		{ "[postgres]\nschema = a-b", "bad value 'a-b' for "
		    "postgres.schema: expected an identifier: a letter or _, "
		    "then up to 62 letters, digits or _" },
		{ "[postgres]\nschema = "
		    "a23456789012345678901234567890123456789012345678901234567890123",
		    NULL },
		{ "[postgres]\nschema = "
		    "a234567890123456789012345678901234567890123456789012345678901234",
		    "bad value 'a234567890123456789012345678901234567890123456789"
		    "012345678901234' for postgres.schema: expected an "
		    "identifier: a letter or _, then up to 62 letters, digits "
		    "or _" },
		{ "[counters]\nmax_keys = 0", "bad value '0' for "
		    "counters.max_keys: expected an integer from 1 to "
		    "1000000000" },
		{ "[counters]\nmax_keys = 1000000000", NULL },
		{ "[counters]\nmax_keys = 1K", "bad value '1K' for "
		    "counters.max_keys: expected an integer from 1 to "
		    "1000000000" },
		{ "[counters]\nmax_key_bytes = 2049", "bad value '2049' for "
		    "counters.max_key_bytes: expected an integer from 1 to "
		    "2048" },
		{ "[idempotency]\nttl = 0", "bad value '0' for "
		    "idempotency.ttl: expected a duration from 1s to 365d "
		    "(us, ms, s, m, h, d)" },
		{ "[idempotency]\nttl = 7d", NULL },
		{ "[ratelimit]\nrate = 0.5", NULL },
		{ "[ratelimit]\nrate = .5", NULL },
		{ "[ratelimit]\nrate = -1", "bad value '-1' for "
		    "ratelimit.rate: expected a number from 0 to 1000000000" },
		{ "[ratelimit]\nrate = inf", "bad value 'inf' for "
		    "ratelimit.rate: expected a number from 0 to 1000000000" },
		{ "[ratelimit]\nrate = 1e3", "bad value '1e3' for "
		    "ratelimit.rate: expected a number from 0 to 1000000000" },
		{ "[ratelimit]\nrate = 1.", NULL },
		{ "[ratelimit]\nrate = .", "bad value '.' for "
		    "ratelimit.rate: expected a number from 0 to 1000000000" },
		{ "[ratelimit]\nburst = x", "bad value 'x' for "
		    "ratelimit.burst: expected an integer from 0 to "
		    "1000000000" },
		{ "[ratelimit]\nmax_clients = 0", "bad value '0' for "
		    "ratelimit.max_clients: expected an integer from 1 to "
		    "10000000" },
		{ "[ratelimit]\nmax_clients = 10000000", NULL },
		{ "[ratelimit]\ntrusted_proxies =", NULL },
		{ "[ratelimit]\ntrusted_proxies = 10.0.0.0/8, ::1 unix "
		    "2001:db8::/32,192.0.2.1", NULL },
		{ "[ratelimit]\ntrusted_proxies = 10.0.0.1/8", "bad value "
		    "'10.0.0.1/8' for ratelimit.trusted_proxies: '10.0.0.1/8': "
		    "bits are set past the prefix length" },
		{ "[ratelimit]\ntrusted_proxies = 10.0.0.0/8, 10.0.0.0/33",
		    "bad value '10.0.0.0/8, 10.0.0.0/33' for "
		    "ratelimit.trusted_proxies: '10.0.0.0/33': the prefix "
		    "length of an IPv4 block must be 0..32" },
		{ "[ratelimit]\ntrusted_proxies = ::/129", "bad value "
		    "'::/129' for ratelimit.trusted_proxies: '::/129': the "
		    "prefix length of an IPv6 block must be 0..128" },
		{ "[ratelimit]\ntrusted_proxies = proxy.example", "bad value "
		    "'proxy.example' for ratelimit.trusted_proxies: "
		    "'proxy.example': not an IPv4 or IPv6 address or block "
		    "(a.b.c.d[/n], v6addr[/n] or unix)" },
		{ "[ratelimit]\ntrusted_proxies = 1.0.0.0 2.0.0.0 3.0.0.0 "
		    "4.0.0.0 5.0.0.0 6.0.0.0 7.0.0.0 8.0.0.0 9.0.0.0 10.0.0.0 "
		    "11.0.0.0 12.0.0.0 13.0.0.0 14.0.0.0 15.0.0.0 16.0.0.0 "
		    "17.0.0.0 18.0.0.0 19.0.0.0 20.0.0.0 21.0.0.0 22.0.0.0 "
		    "23.0.0.0 24.0.0.0 25.0.0.0 26.0.0.0 27.0.0.0 28.0.0.0 "
		    "29.0.0.0 30.0.0.0 31.0.0.0 32.0.0.0 33.0.0.0",
		    "bad value '1.0.0.0 2.0.0.0 3.0.0.0 4.0.0.0 5.0.0.0 "
		    "6.0.0.0 7.0.0.0 8.0.0.0 9.0.0.0 10.0.0.0 11.0.0.0 "
		    "12.0.0.0 13.0.0.0 14.0.0.0 15.0.0.0 16.0.0.0 17.0.0.0 "
		    "18.0.0.0 19.0.0.0 20.0.0.0 21.0.0.0 22.0.0.0 23.0.0.0 "
		    "24.0.0.0 25.0.0.0 26.0.0.0 27.0.0.0 28.0.0.0 29.0.0.0 "
		    "30.0.0.0 31.0.0.0 32.0.0.0 33.0.0.0' for "
		    "ratelimit.trusted_proxies: at most 32 addresses or blocks" },
		{ "[metrics]\nstatsd = localhost", "bad value 'localhost' for "
		    "metrics.statsd: expected host:port" },
		{ "[metrics]\nstatsd = *:8125", "bad value '*:8125' for "
		    "metrics.statsd: expected host:port" },
		{ "[metrics]\nstatsd = [::1]:8125", NULL },
		{ "[metrics]\nprefix = a/b", "bad value 'a/b' for "
		    "metrics.prefix: expected up to 63 characters of A-Z a-z "
		    "0-9 . _ -" },
		{ "[server]\nnode = ", "bad value '' for server.node: "
		    "expected 1..127 characters of A-Z a-z 0-9 . _ -" },
		{ "[server]\nuser = -x", "bad value '-x' for server.user: "
		    "expected a user name of up to 63 characters of A-Z a-z "
		    "0-9 . _ -, or nothing" },
		{ "[server]\nstate_dir =", "bad value '' for "
		    "server.state_dir: expected a path" },
		{ "[server]\nstate_dir = var/tally", "bad value 'var/tally' "
		    "for server.state_dir: expected an absolute path" },
		{ "[server]\npid_file = ./t.pid", "bad value './t.pid' for "
		    "server.pid_file: expected an absolute path" },
		{ "[server]\nlog_file = t.log", "bad value 't.log' for "
		    "server.log_file: expected an absolute path" },
		{ "[journal]\ndir = j", "bad value 'j' for journal.dir: "
		    "expected an absolute path" },
		{ "[server]\ncontrol_socket = /tmp/"
		    "45678901234567890123456789012345678901234567890123456789"
		    "01234567890123456789012345678901234567890123456789",
		    "bad value '/tmp/4567890123456789012345678901234567890123"
		    "4567890123456789012345678901234567890123456789012345678"
		    "90123456789' for server.control_socket: longer than 107 "
		    "characters" },
	};
	char want[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc = load(cases[i].line, NULL);

		if (cases[i].err == NULL) {
			ck_assert_msg(rc == 0 && errs.n == 0, "%s: %s",
			    cases[i].line, errs.n ? errs.msgs[0] : "rc");
			continue;
		}
		ck_assert_msg(rc == -1, "%s accepted", cases[i].line);
		ck_assert_int_eq(errs.n, 1);
		snprintf(want, sizeof(want), "FILE:2: %s", cases[i].err);
		assert_err(0, want);
	}
}
END_TEST

/*
 * Sizes, durations, booleans.
 */
START_TEST(sizes)
{
	static const struct {
		const char	*s;
		uint64_t	 v;
	} ok[] = {
		{ "0", 0 }, { "1", 1 }, { "4096", 4096 }, { "4K", 4 * KIB },
		{ "4k", 4 * KIB }, { "4KB", 4 * KIB }, { "4kb", 4 * KIB },
		{ "64M", 64 * MIB }, { "64mb", 64 * MIB }, { "4G", 4 * GIB },
		{ "4gB", 4 * GIB }, { "10b", 10 }, { "2KiB", 2 * KIB },
		{ "17179869183G", UINT64_C(17179869183) * GIB },
		{ "18446744073709551615", UINT64_MAX },
	};
	static const char *const bad[] = {
		"", "K", "-1", "+1", " 1", "1 ", "1 K", "1KK", "1T", "1.5M",
		"0x10", "1e3", "abc", "17179869185G", "18446744073709551616",
		"99999999999999999999999",
	};
	uint64_t v;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		v = 12345;
		ck_assert_msg(config_parse_size(ok[i].s, &v) == 0, "%s",
		    ok[i].s);
		ck_assert_uint_eq(v, ok[i].v);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = 12345;
		ck_assert_msg(config_parse_size(bad[i], &v) == -1,
		    "'%s' accepted", bad[i]);
		ck_assert_uint_eq(v, 12345);
	}
	ck_assert_int_eq(config_parse_size(NULL, &v), -1);
}
END_TEST

START_TEST(durations)
{
	static const struct {
		const char	*s;
		uint64_t	 us;
	} ok[] = {
		{ "0", 0 }, { "1", 1000000 }, { "7us", 7 }, { "10ms", 10000 },
		{ "1s", 1000000 }, { "5m", 300000000 },
		{ "24h", UINT64_C(86400000000) },
		{ "2d", UINT64_C(172800000000) },
		{ "18446744073709551615us", UINT64_MAX },
	};
	static const char *const bad[] = {
		"", "s", "-1s", "1 s", "1sec", "1.5s", "1S", "1ms ",
		"18446744073709551615s", "1y", "ms10",
	};
	uint64_t v;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		ck_assert_msg(config_parse_duration(ok[i].s, &v) == 0, "%s",
		    ok[i].s);
		ck_assert_uint_eq(v, ok[i].us);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = 42;
		ck_assert_msg(config_parse_duration(bad[i], &v) == -1,
		    "'%s' accepted", bad[i]);
		ck_assert_uint_eq(v, 42);
	}
}
END_TEST

START_TEST(booleans)
{
	static const char *const yes[] = { "yes", "true", "on", "1", "YES" };
	static const char *const no[] = { "no", "false", "off", "0", "Off" };
	int b;

	for (size_t i = 0; i < 5; i++) {
		b = -1;
		ck_assert_int_eq(config_parse_bool(yes[i], &b), 0);
		ck_assert_int_eq(b, 1);
		ck_assert_int_eq(config_parse_bool(no[i], &b), 0);
		ck_assert_int_eq(b, 0);
	}
	ck_assert_int_eq(config_parse_bool("2", &b), -1);
	ck_assert_int_eq(config_parse_bool("", &b), -1);
	ck_assert_int_eq(config_parse_bool("yess", &b), -1);
}
END_TEST

/*
 * Errors: every one is reported, each with its line.
 */
START_TEST(errors_all_collected)
{
	ck_assert_int_eq(load(
	    "# line 1\n"
	    "workers = 2\n"				/* 2 */
	    "[server]\n"
	    "workers = x\n"				/* 4 */
	    "bar = 1\n"					/* 5 */
	    "\n"
	    "[foo]\n"					/* 7 */
	    "anything = goes\n"
	    "[journal]\n"
	    "segment_size = 64Q\n"			/* 10 */
	    "just some words\n"				/* 11 */
	    "= 5\n"					/* 12 */
	    "[postgres\n"				/* 13 */
	    "dsn = ignored\n"
	    "[metrics] junk\n"				/* 15 */
	    "prefix = x\n"
	    "[server]\n"
	    "node = \"unterminated\n"			/* 18 */
	    "node = \"a\" b\n"				/* 19 */
	    "max body = 1\n"				/* 20 */
	    "workers = 4\n", NULL), -1);
	ck_assert_int_eq(errs.n, 12);
	assert_err(0, "FILE:2: key 'workers' outside any section");
	assert_err(1, "FILE:4: bad value 'x' for server.workers: expected "
	    "auto or 1..64");
	assert_err(2, "FILE:5: unknown key 'bar' in [server]");
	assert_err(3, "FILE:7: unknown section [foo]");
	assert_err(4, "FILE:10: bad value '64Q' for journal.segment_size: "
	    "expected a size from 1M to 1G (K, M, G suffixes)");
	assert_err(5, "FILE:11: expected 'key = value', '[section]' or a "
	    "comment");
	assert_err(6, "FILE:12: missing key before '='");
	assert_err(7, "FILE:13: missing ']' after section name");
	assert_err(8, "FILE:15: text after [metrics]");
	assert_err(9, "FILE:18: bad value '\"unterminated' for server.node: "
	    "unterminated quote");
	assert_err(10, "FILE:19: bad value '\"a\" b' for server.node: text "
	    "after the closing quote");
	assert_err(11, "FILE:20: unknown key 'max body' in [server]");
	ck_assert_int_eq(cf.workers, 4);
	ck_assert_str_eq(cf.dsn, "");
	ck_assert_str_eq(cf.metrics_prefix, "tallyd");
}
END_TEST

START_TEST(errors_key_names)
{
	ck_assert_int_eq(load("[server]\nmax body = 1\nWorkers = 2\n", NULL),
	    -1);
	ck_assert_int_eq(errs.n, 2);
	assert_err(0, "FILE:2: unknown key 'max body' in [server]");
	assert_err(1, "FILE:3: unknown key 'Workers' in [server]");
}
END_TEST

START_TEST(errors_missing_file)
{
	char path[PATH_MAX + 32], want[PATH_MAX + 64];
	char *ov[] = { "server.workers=zz" };

	snprintf(path, sizeof(path), "%s/absent.conf", tmpdir);
	ck_assert_int_eq(config_load(&cf, path, ov, 1, &errs), -1);
	ck_assert_int_eq(errs.n, 2);
	snprintf(want, sizeof(want), "%s: %s", path, strerror(ENOENT));
	ck_assert_str_eq(errs.msgs[0], want);
	ck_assert_str_eq(errs.msgs[1], "-o server.workers=zz: bad value 'zz' "
	    "for server.workers: expected auto or 1..64");
}
END_TEST

START_TEST(errors_journal_sizes)
{
	ck_assert_int_eq(load("[journal]\n"
	    "max_size = 100M\n"
	    "segment_size = 64M\n", NULL), -1);
	ck_assert_int_eq(errs.n, 1);
	assert_err(0, "FILE:2: journal.max_size (100M) must be at least "
	    "twice journal.segment_size (64M)");

	ck_assert_int_eq(load("[journal]\nsegment_size = 1G\n\n"
	    "max_size = 2047M\n", NULL), -1);
	ck_assert_int_eq(errs.n, 1);
	assert_err(0, "FILE:4: journal.max_size (2047M) must be at least "
	    "twice journal.segment_size (1G)");

	ck_assert_int_eq(load("[journal]\nmax_size = 128M\n", NULL), 0);
	ck_assert_int_eq(load("[journal]\nmax_size = 127M\n", NULL), -1);
	ck_assert_int_eq(load("[journal]\nmax_size = 127M\n",
	    "journal.segment_size=1M", NULL), 0);
	ck_assert_int_eq(load(NULL, "journal.max_size=127M", NULL), -1);
	ck_assert_int_eq(errs.n, 1);
	ck_assert_str_eq(errs.msgs[0], "-o journal.max_size=127M: "
	    "journal.max_size (127M) must be at least twice "
	    "journal.segment_size (64M)");

	/* Segments start on the grid recovery searches for frames. */
	ck_assert_int_eq(load("[journal]\nsegment_size = 1048577\n", NULL),
	    -1);
	ck_assert_int_eq(errs.n, 1);
	assert_err(0, "FILE:2: journal.segment_size (1048577) must be a "
	    "multiple of 4K");
	ck_assert_int_eq(load("[journal]\nsegment_size = 1052K\n", NULL), 0);
}
END_TEST

START_TEST(errors_null_errs)
{
	const char *path = conf_write("[x]\n");

	ck_assert_int_eq(config_load(&cf, path, NULL, 0, NULL), -1);
	ck_assert_int_eq(config_load(&cf, NULL, NULL, 0, NULL), 0);
}
END_TEST

/*
 * Overrides.
 */
START_TEST(overrides_apply_after_file)
{
	ck_assert_int_eq(load("[server]\nworkers = 2\nnode = a\n",
	    "server.workers=3", " server . node = \"b c\" ",
	    "ratelimit.rate=1.25", "postgres.dsn=password=a #b", NULL), -1);
	ck_assert_int_eq(errs.n, 1);
	ck_assert_str_eq(errs.msgs[0], "-o  server . node = \"b c\" : bad "
	    "value 'b c' for server.node: expected 1..127 characters of "
	    "A-Z a-z 0-9 . _ -");
	ck_assert_int_eq(cf.workers, 3);
	ck_assert_str_eq(cf.node, "a");
	ck_assert(cf.rate == 1.25);
	ck_assert_str_eq(cf.dsn, "password=a #b");

	ck_assert_int_eq(load("[server]\nworkers = 2\n", "server.node= n2 ",
	    "server.workers=auto", NULL), 0);
	ck_assert_str_eq(cf.node, "n2");
	ck_assert_int_eq(cf.workers, online_cpus());
}
END_TEST

START_TEST(overrides_errors)
{
	ck_assert_int_eq(load(NULL, "server.workers=x", "foo.bar=1",
	    "server.bar=1", "workers=2", "server.workers", ".workers=2",
	    "server.=2", "server.node=\"x", "server.listen=[::1]:99",
	    NULL), -1);
	ck_assert_int_eq(errs.n, 8);
	ck_assert_str_eq(errs.msgs[0], "-o server.workers=x: bad value 'x' "
	    "for server.workers: expected auto or 1..64");
	ck_assert_str_eq(errs.msgs[1], "-o foo.bar=1: unknown section [foo]");
	ck_assert_str_eq(errs.msgs[2], "-o server.bar=1: unknown key 'bar' "
	    "in [server]");
	ck_assert_str_eq(errs.msgs[3], "-o workers=2: expected "
	    "section.key=value");
	ck_assert_str_eq(errs.msgs[4], "-o server.workers: expected "
	    "section.key=value");
	ck_assert_str_eq(errs.msgs[5], "-o .workers=2: key 'workers' outside "
	    "any section");
	ck_assert_str_eq(errs.msgs[6], "-o server.=2: unknown key '' in "
	    "[server]");
	ck_assert_str_eq(errs.msgs[7], "-o server.node=\"x: bad value '\"x' "
	    "for server.node: unterminated quote");
	ck_assert_int_eq(cf.nlisten, 1);
	ck_assert_str_eq(cf.listen[0], "[::1]:99");
}
END_TEST

/*
 * Derived defaults.
 */
START_TEST(derived_journal_dir)
{
	ck_assert_int_eq(load("[journal]\nsync = group\n[server]\n"
	    "state_dir = /data/t\n", NULL), 0);
	ck_assert_str_eq(cf.journal_dir, "/data/t/journal");

	ck_assert_int_eq(load("[journal]\ndir = /fast/j\n[server]\n"
	    "state_dir = /data/t\n", NULL), 0);
	ck_assert_str_eq(cf.journal_dir, "/fast/j");

	ck_assert_int_eq(load("[server]\nstate_dir = /a\n",
	    "server.state_dir=/b", NULL), 0);
	ck_assert_str_eq(cf.journal_dir, "/b/journal");

	ck_assert_int_eq(load(NULL, "journal.dir=/c",
	    "server.state_dir=/b", NULL), 0);
	ck_assert_str_eq(cf.journal_dir, "/c");
}
END_TEST

START_TEST(derived_journal_dir_too_long)
{
	char text[1200];

	memset(text, 0, sizeof(text));
	strcpy(text, "[server]\nstate_dir = /");
	memset(text + strlen(text), 'd', 1015);
	strcat(text, "\n");
	ck_assert_int_eq(load(text, NULL), -1);
	ck_assert_int_eq(errs.n, 1);
	ck_assert_str_eq(errs.msgs[0], "journal.dir: server.state_dir is too "
	    "long to hold journal/");
}
END_TEST

START_TEST(derived_node_and_workers)
{
	char host[256];

	ck_assert_int_eq(load("[server]\nworkers = auto\n", NULL), 0);
	ck_assert_int_eq(cf.workers, online_cpus());
	ck_assert_int_ge(cf.workers, 1);
	ck_assert_int_le(cf.workers, CONFIG_MAX_WORKERS);
	ck_assert_int_eq(hostname_node(host, sizeof(host)), 0);
	ck_assert_str_eq(cf.node, host);

	ck_assert_int_eq(load("[server]\nnode = fixed\n", NULL), 0);
	ck_assert_str_eq(cf.node, "fixed");
}
END_TEST

/* A second load starts from the defaults again, not from the first. */
START_TEST(derived_reload_starts_fresh)
{
	ck_assert_int_eq(load("[server]\nworkers = 2\nnode = one\n"
	    "[journal]\ndir = /j\n", NULL), 0);
	ck_assert_int_eq(load("", NULL), 0);
	assert_defaults(&cf);
}
END_TEST

/* config_restart_keys' callback: the names, blank-separated. */
static void
restart_key_cb(void *arg, const char *key)
{
	char *out = arg;

	if (out[0] != '\0')
		strcat(out, " ");
	strcat(out, key);
}

/*
 * A reload names every changed key it does not apply, and only those:
 * the keys tallyd.conf(5) marks "Reload." are not named.  The same
 * values set by other routes (a longer value first, fewer addresses)
 * are no change.
 */
START_TEST(reload_names_restart_keys)
{
	static struct config before;
	char names[1024] = "";

	ck_assert_int_eq(load("[server]\nlisten = 127.0.0.1:1, 127.0.0.1:2\n"
	    "node = n\n[postgres]\ndsn = host=/tmp\n", NULL), 0);
	before = cf;
	ck_assert_int_eq(load("[server]\nlisten = 127.0.0.1:3\n"
	    "listen = 127.0.0.1:1 127.0.0.1:2\nnode = a-longer-name\n"
	    "node = n\n[postgres]\ndsn = host=/tmp/longer\n"
	    "dsn = host=/tmp\nflush_interval = 5s\n[server]\n"
	    "log_level = debug\n[ratelimit]\nrate = 5\nburst = 9\n"
	    "trusted_proxies = 10.0.0.0/8\n[metrics]\nstatsd = 127.0.0.1:9\n"
	    "prefix = p\n", NULL), 0);
	ck_assert_int_eq(config_restart_keys(&before, &cf, restart_key_cb,
	    names), 0);
	ck_assert_str_eq(names, "");

	ck_assert_int_eq(load("[server]\nlisten = 127.0.0.1:1\nnode = n\n"
	    "http2 = off\nmax_connections = 7\nrequest_timeout = 2s\n"
	    "idle_timeout = 3s\nsyslog_facility = local3\n"
	    "[postgres]\ndsn = host=/tmp\n[journal]\nsync = interval\n"
	    "[counters]\nmax_keys = 5\n", NULL), 0);
	ck_assert_int_eq(config_restart_keys(&before, &cf, restart_key_cb,
	    names), 8);
	ck_assert_str_eq(names, "server.listen server.request_timeout "
	    "server.idle_timeout server.max_connections server.http2 "
	    "server.syslog_facility journal.sync counters.max_keys");
}
END_TEST

static Suite *
config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc;

	tc = tcase_create("defaults");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, defaults_function);
	tcase_add_test(tc, defaults_null_path);
	tcase_add_test(tc, defaults_empty_file);
	tcase_add_test(tc, defaults_shipped_file);
	suite_add_tcase(s, tc);

	tc = tcase_create("values");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, values_every_key);
	tcase_add_test(tc, values_listen_forms);
	tcase_add_test(tc, values_listen_bad);
	tcase_add_test(tc, values_quotes_and_comments);
	tcase_add_test(tc, values_long_line);
	tcase_add_test(tc, values_crlf_bom_and_last_wins);
	tcase_add_test(tc, values_enums);
	tcase_add_test(tc, values_bounds);
	suite_add_tcase(s, tc);

	tc = tcase_create("sizes and durations");
	tcase_add_test(tc, sizes);
	tcase_add_test(tc, durations);
	tcase_add_test(tc, booleans);
	suite_add_tcase(s, tc);

	tc = tcase_create("errors");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, errors_all_collected);
	tcase_add_test(tc, errors_key_names);
	tcase_add_test(tc, errors_missing_file);
	tcase_add_test(tc, errors_journal_sizes);
	tcase_add_test(tc, errors_null_errs);
	suite_add_tcase(s, tc);

	tc = tcase_create("overrides");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, overrides_apply_after_file);
	tcase_add_test(tc, overrides_errors);
	suite_add_tcase(s, tc);

	tc = tcase_create("derived defaults");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, derived_journal_dir);
	tcase_add_test(tc, derived_journal_dir_too_long);
	tcase_add_test(tc, derived_node_and_workers);
	tcase_add_test(tc, derived_reload_starts_fresh);
	tcase_add_test(tc, reload_names_restart_keys);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(config_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
