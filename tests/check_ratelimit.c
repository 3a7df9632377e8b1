/*
 * Tests of the rate limiter: the bucket arithmetic at fixed times (burst,
 * refill, Retry-After rounding, the default burst, fractional rates, a
 * reload), the bounded table and what it evicts, forked processes
 * sharing one mapping as the workers do, the parsing of X-Forwarded-For
 * and of trusted_proxies, and which client a request stands for.
 */
#include <sys/mman.h>
#include <sys/wait.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "config.h"
#include "ratelimit.h"

#define S	UINT64_C(1000000000)
#define T0	(1000 * S)	/* an arbitrary monotonic time */

struct table {
	struct ratelimit	*rl;
	void			*base;
	size_t			 size;
	struct config		 cf;
};

static void
table_new(struct table *t, uint64_t max_clients, double rate, uint64_t burst)
{
	t->size = ratelimit_size(max_clients);
	ck_assert_uint_gt(t->size, 0);
	t->base = mmap(NULL, t->size, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(t->base, MAP_FAILED);
	t->rl = ratelimit_init(t->base, max_clients, 42);
	config_defaults(&t->cf);
	t->cf.rate = rate;
	t->cf.burst = burst;
	ratelimit_configure(t->rl, &t->cf);
}

static void
table_free(struct table *t)
{
	munmap(t->base, t->size);
}

static struct ratelimit_client
v4(const char *s)
{
	struct ratelimit_client c;

	ck_assert_int_eq(ratelimit_parse_addr(s, strlen(s), &c), 0);
	return c;
}

/* How many of n requests at one instant get through. */
static int
take_n(struct table *t, const struct ratelimit_client *c, int n,
    uint64_t now, uint64_t *retry)
{
	int ok = 0;

	for (int i = 0; i < n; i++)
		if (ratelimit_take(t->rl, c, now, retry) == 0)
			ok++;
	return ok;
}

/* --- the bucket --- */

START_TEST(test_burst_then_refill)
{
	struct table t;
	struct ratelimit_client c = v4("192.0.2.1");
	uint64_t retry = 0;

	table_new(&t, 1024, 5, 10);
	ck_assert(ratelimit_enabled(t.rl));
	ck_assert_int_eq(take_n(&t, &c, 40, T0, &retry), 10);
	/* One token every 200 ms: the next comes within a second. */
	ck_assert_uint_eq(retry, 1);
	ck_assert_int_eq(ratelimit_take(t.rl, &c, T0 + S / 5 - 1, &retry),
	    -1);
	ck_assert_int_eq(ratelimit_take(t.rl, &c, T0 + S / 5, &retry), 0);
	ck_assert_int_eq(ratelimit_take(t.rl, &c, T0 + S / 5, &retry), -1);
	/* After one second, five more. */
	ck_assert_int_eq(take_n(&t, &c, 40, T0 + S + S / 5, &retry), 5);
	/* Idle long enough to fill up: the whole burst again, no more. */
	ck_assert_int_eq(take_n(&t, &c, 40, T0 + 100 * S, &retry), 10);
	table_free(&t);
}
END_TEST

START_TEST(test_retry_after)
{
	struct table t;
	struct ratelimit_client c = v4("192.0.2.1");
	uint64_t retry = 0;

	/* 0.4/s: a token every 2.5 s; Retry-After rounds up to 3. */
	table_new(&t, 1024, 0.4, 2);
	ck_assert_int_eq(take_n(&t, &c, 5, T0, &retry), 2);
	ck_assert_uint_eq(retry, 3);
	/* 1 s later, 1.5 s to go: 2. */
	ck_assert_int_eq(ratelimit_take(t.rl, &c, T0 + S, &retry), -1);
	ck_assert_uint_eq(retry, 2);
	/* 1 ns before the token: still 1, never 0. */
	ck_assert_int_eq(ratelimit_take(t.rl, &c, T0 + 5 * S / 2 - 1, &retry),
	    -1);
	ck_assert_uint_eq(retry, 1);
	ck_assert_int_eq(ratelimit_take(t.rl, &c, T0 + 5 * S / 2, &retry), 0);
	table_free(&t);

	/* 0.01/s: the next token in 100 s. */
	table_new(&t, 1024, 0.01, 10);
	ck_assert_int_eq(take_n(&t, &c, 40, T0, &retry), 10);
	ck_assert_uint_eq(retry, 100);
	ck_assert_int_eq(ratelimit_take(t.rl, &c, T0 + 30 * S, &retry), -1);
	ck_assert_uint_eq(retry, 70);
	table_free(&t);
}
END_TEST

START_TEST(test_default_burst)
{
	struct table t;
	struct ratelimit_client c = v4("192.0.2.1");
	uint64_t retry;

	/* burst = 0: the rate rounded up, and at least 1. */
	table_new(&t, 1024, 2.5, 0);
	ck_assert_int_eq(take_n(&t, &c, 10, T0, &retry), 3);
	table_free(&t);
	table_new(&t, 1024, 0.5, 0);
	ck_assert_int_eq(take_n(&t, &c, 10, T0, &retry), 1);
	ck_assert_uint_eq(retry, 2);
	table_free(&t);
	table_new(&t, 1024, 7, 0);
	ck_assert_int_eq(take_n(&t, &c, 10, T0, &retry), 7);
	table_free(&t);
}
END_TEST

START_TEST(test_off)
{
	struct table t;
	struct ratelimit_client c = v4("192.0.2.1");
	uint64_t retry;

	table_new(&t, 1024, 0, 5);
	ck_assert(!ratelimit_enabled(t.rl));
	ck_assert_int_eq(take_n(&t, &c, 1000, T0, &retry), 1000);
	table_free(&t);
}
END_TEST

START_TEST(test_clients_apart)
{
	struct table t;
	struct ratelimit_client a = v4("192.0.2.1"), b = v4("192.0.2.2");
	struct ratelimit_client a6 = v4("::ffff:192.0.2.1"), c6 = v4("2001:db8::1");
	uint64_t retry;

	table_new(&t, 1024, 1, 3);
	ck_assert_int_eq(take_n(&t, &a, 10, T0, &retry), 3);
	ck_assert_int_eq(take_n(&t, &b, 10, T0, &retry), 3);
	/* IPv4 and its IPv4-mapped IPv6 form are one client. */
	ck_assert_int_eq(take_n(&t, &a6, 10, T0, &retry), 0);
	ck_assert_int_eq(take_n(&t, &c6, 10, T0, &retry), 3);
	table_free(&t);
}
END_TEST

/* Settings change under a bucket: its debt is kept, in time. */
START_TEST(test_reload)
{
	struct table t;
	struct ratelimit_client c = v4("192.0.2.1");
	uint64_t retry;

	table_new(&t, 1024, 0.01, 10);
	ck_assert_int_eq(take_n(&t, &c, 20, T0, &retry), 10);
	t.cf.burst = 12;
	ratelimit_configure(t.rl, &t.cf);
	ck_assert_int_eq(take_n(&t, &c, 20, T0 + S, &retry), 2);
	t.cf.rate = 0;
	ratelimit_configure(t.rl, &t.cf);
	ck_assert_int_eq(take_n(&t, &c, 20, T0 + S, &retry), 20);
	t.cf.rate = 0.01;
	ratelimit_configure(t.rl, &t.cf);
	ck_assert_int_eq(take_n(&t, &c, 20, T0 + S, &retry), 0);
	table_free(&t);
}
END_TEST

/* --- the bounded table --- */

START_TEST(test_capacity_evicts_full_first)
{
	struct table t;
	struct ratelimit_client c[16];
	char a[32];
	uint64_t retry;

	/* One set of 8 slots. */
	table_new(&t, 8, 1, 2);
	ck_assert_uint_eq(ratelimit_capacity(t.rl), 8);
	for (int i = 0; i < 16; i++) {
		snprintf(a, sizeof(a), "198.51.100.%d", i);
		c[i] = v4(a);
	}
	/* Client 0 empties its bucket; 1..7 take one token each. */
	ck_assert_int_eq(take_n(&t, &c[0], 5, T0, &retry), 2);
	for (int i = 1; i < 8; i++)
		ck_assert_int_eq(take_n(&t, &c[i], 1, T0, &retry), 1);
	/* Ten seconds on, 1..7 are full again and 0 is too: free. */
	for (int i = 8; i < 16; i++)
		ck_assert_int_eq(take_n(&t, &c[i], 1, T0 + 10 * S, &retry), 1);
	ck_assert_uint_eq(ratelimit_evicted(t.rl), 0);
	table_free(&t);

	table_new(&t, 8, 1, 2);
	/*
	 * 0 is empty and will be for 2 s; 1..7 are one token short for 1 s.
	 * A newcomer takes the slot of the bucket closest to full, never
	 * 0's: 0 stays limited.
	 */
	ck_assert_int_eq(take_n(&t, &c[0], 5, T0, &retry), 2);
	for (int i = 1; i < 8; i++)
		ck_assert_int_eq(take_n(&t, &c[i], 1, T0, &retry), 1);
	ck_assert_int_eq(take_n(&t, &c[8], 1, T0, &retry), 1);
	ck_assert_uint_eq(ratelimit_evicted(t.rl), 1);
	ck_assert_int_eq(take_n(&t, &c[0], 1, T0, &retry), 0);
	table_free(&t);
}
END_TEST

START_TEST(test_sizes)
{
	ck_assert_uint_eq(ratelimit_size(0), 0);
	ck_assert_uint_gt(ratelimit_size(1), 0);
	ck_assert_uint_lt(ratelimit_size(65536), 65536 * 17 + 4096);
	ck_assert_uint_eq(ratelimit_size(UINT64_MAX), 0);
}
END_TEST

/* --- processes sharing the table --- */

/*
 * nproc processes each try n requests for the same new client at the
 * same instant: together they get the burst, exactly, whoever adds the
 * client to the table.
 */
static void
shared_run(int nproc, int n, int nclients)
{
	struct table t;
	int *got, total;
	pid_t pids[16];

	table_new(&t, 4096, 1, 25);
	got = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(got, MAP_FAILED);
	for (int p = 0; p < nproc; p++) {
		if ((pids[p] = fork()) == 0) {
			char a[32];
			uint64_t retry;

			for (int i = 0; i < n; i++) {
				struct ratelimit_client c;

				snprintf(a, sizeof(a), "203.0.113.%d",
				    (i + p) % nclients);
				c = v4(a);
				if (ratelimit_take(t.rl, &c, T0, &retry) == 0)
					__atomic_fetch_add(&got[(i + p) %
					    nclients], 1, __ATOMIC_RELAXED);
			}
			_exit(0);
		}
		ck_assert_int_gt(pids[p], 0);
	}
	for (int p = 0; p < nproc; p++) {
		int st;

		ck_assert_int_eq(waitpid(pids[p], &st, 0), pids[p]);
		ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	total = 0;
	for (int i = 0; i < nclients; i++) {
		ck_assert_int_eq(got[i], 25);
		total += got[i];
	}
	ck_assert_int_eq(total, 25 * nclients);
	munmap(got, 4096);
	table_free(&t);
}

START_TEST(test_shared_one_client)
{
	for (int round = 0; round < 50; round++)
		shared_run(4, 200, 1);
}
END_TEST

START_TEST(test_shared_many_clients)
{
	for (int round = 0; round < 20; round++)
		shared_run(4, 2000, 40);
}
END_TEST

/* --- parsing --- */

START_TEST(test_parse_addr)
{
	static const struct {
		const char	*s;
		const char	*as;	/* the same client, or NULL: bad */
	} cases[] = {
		{ "192.0.2.1", "::ffff:192.0.2.1" },
		{ "192.0.2.1:8080", "::ffff:192.0.2.1" },
		{ "2001:db8::1", "2001:db8::1" },
		{ "[2001:db8::1]", "2001:db8::1" },
		{ "[2001:db8::1]:443", "2001:db8::1" },
		{ "::1", "::1" },
		{ "", NULL },
		{ "unknown", NULL },
		{ "192.0.2", NULL },
		{ "192.0.2.256", NULL },
		{ "192.0.2.1:", NULL },
		{ "192.0.2.1:65536", NULL },
		{ "192.0.2.1:http", NULL },
		{ "[2001:db8::1", NULL },
		{ "[2001:db8::1]x", NULL },
		{ "[192.0.2.1]", NULL },
		{ "2001:db8::1%eth0", NULL },
		{ "fe80::1::2", NULL },
		{ " 192.0.2.1", NULL },
		{ "_hidden", NULL },
		{ "01234567890123456789012345678901234567890123456789"
		    "0123456789012345", NULL },
	};
	struct ratelimit_client c, want;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc = ratelimit_parse_addr(cases[i].s, strlen(cases[i].s),
		    &c);

		if (cases[i].as == NULL) {
			ck_assert_msg(rc == -1, "'%s' accepted", cases[i].s);
			continue;
		}
		ck_assert_msg(rc == 0, "'%s' refused", cases[i].s);
		ck_assert_int_eq(inet_pton(AF_INET6, cases[i].as, want.addr), 1);
		ck_assert_msg(memcmp(c.addr, want.addr, 16) == 0, "'%s'",
		    cases[i].s);
	}
	/* Not NUL-terminated, and a NUL inside. */
	ck_assert_int_eq(ratelimit_parse_addr("192.0.2.1,x", 9, &c), 0);
	ck_assert_int_eq(ratelimit_parse_addr("192.0.2.1\0", 10, &c), -1);
}
END_TEST

START_TEST(test_parse_cidr)
{
	static const struct {
		const char	*s;
		const char	*addr;	/* NULL: bad */
		int		 bits;
	} cases[] = {
		{ "10.0.0.0/8", "::ffff:10.0.0.0", 104 },
		{ "10.1.2.3", "::ffff:10.1.2.3", 128 },
		{ "10.1.2.3/32", "::ffff:10.1.2.3", 128 },
		{ "0.0.0.0/0", "::ffff:0.0.0.0", 96 },
		{ "2001:db8::/32", "2001:db8::", 32 },
		{ "::1", "::1", 128 },
		{ "::/0", "::", 0 },
		{ "10.0.0.1/8", NULL, 0 },
		{ "10.0.0.0/33", NULL, 0 },
		{ "10.0.0.0/", NULL, 0 },
		{ "10.0.0.0/-1", NULL, 0 },
		{ "10.0.0.0/0008", NULL, 0 },
		{ "/8", NULL, 0 },
		{ "2001:db8::/129", NULL, 0 },
		{ "2001:db8::1/32", NULL, 0 },
		{ "localhost", NULL, 0 },
		{ "[::1]", NULL, 0 },
		{ "10.0.0.0/8x", NULL, 0 },
	};
	struct config_cidr b;
	uint8_t want[16];
	const char *why;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc = config_parse_cidr(cases[i].s, &b, &why);

		if (cases[i].addr == NULL) {
			ck_assert_msg(rc == -1, "'%s' accepted", cases[i].s);
			ck_assert_ptr_nonnull(why);
			continue;
		}
		ck_assert_msg(rc == 0, "'%s' refused: %s", cases[i].s, why);
		ck_assert_int_eq(inet_pton(AF_INET6, cases[i].addr, want), 1);
		ck_assert_msg(memcmp(b.addr, want, 16) == 0, "%s", cases[i].s);
		ck_assert_int_eq(b.bits, cases[i].bits);
	}
}
END_TEST

/* --- which client --- */

static struct table ct;

static void
proxies(const char *list)
{
	struct config_errors errs;
	char ov[512];
	char *o[] = { ov };

	snprintf(ov, sizeof(ov), "ratelimit.trusted_proxies=%s", list);
	ck_assert_int_eq(config_load(&ct.cf, NULL, o, 1, &errs), 0);
	config_errors_free(&errs);
	ct.cf.rate = 1;
	ratelimit_configure(ct.rl, &ct.cf);
}

static void
client_setup(void)
{
	table_new(&ct, 64, 1, 1);
}

static void
client_teardown(void)
{
	table_free(&ct);
}

/*
 * The client for a request from peer (an address, or "unix") with the
 * X-Forwarded-For lines h1, h2 (NULL: absent): its address as text, or
 * "exempt".
 */
static const char *
who(const char *peer, const char *h1, const char *h2)
{
	static char out[INET6_ADDRSTRLEN];
	struct sockaddr_storage ss;
	struct sockaddr_in *sin = (void *)&ss;
	struct sockaddr_in6 *sin6 = (void *)&ss;
	struct sockaddr_un *su = (void *)&ss;
	struct ratelimit_str xff[2];
	struct ratelimit_client c;
	socklen_t len;
	int n = 0;

	memset(&ss, 0, sizeof(ss));
	if (strcmp(peer, "unix") == 0) {
		su->sun_family = AF_UNIX;
		len = sizeof(*su);
	} else if (strchr(peer, ':') == NULL) {
		sin->sin_family = AF_INET;
		ck_assert_int_eq(inet_pton(AF_INET, peer, &sin->sin_addr), 1);
		len = sizeof(*sin);
	} else {
		sin6->sin6_family = AF_INET6;
		ck_assert_int_eq(inet_pton(AF_INET6, peer, &sin6->sin6_addr), 1);
		len = sizeof(*sin6);
	}
	if (h1) {
		xff[n].p = h1;
		xff[n++].len = strlen(h1);
	}
	if (h2) {
		xff[n].p = h2;
		xff[n++].len = strlen(h2);
	}
	if (ratelimit_client(ct.rl, (void *)&ss, len, xff, n, &c) == 1)
		return "exempt";
	if (memcmp(c.addr, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0)
		inet_ntop(AF_INET, c.addr + 12, out, sizeof(out));
	else
		inet_ntop(AF_INET6, c.addr, out, sizeof(out));
	return out;
}

START_TEST(test_client_untrusted)
{
	proxies("");
	ck_assert_str_eq(who("192.0.2.7", NULL, NULL), "192.0.2.7");
	ck_assert_str_eq(who("192.0.2.7", "203.0.113.1", NULL), "192.0.2.7");
	ck_assert_str_eq(who("2001:db8::7", "203.0.113.1", NULL),
	    "2001:db8::7");
	/* A dual-stack socket's IPv4 peer is the IPv4 client. */
	ck_assert_str_eq(who("::ffff:192.0.2.7", NULL, NULL), "192.0.2.7");
	proxies("10.0.0.0/8");
	ck_assert_str_eq(who("192.0.2.7", "203.0.113.1", NULL), "192.0.2.7");
	ck_assert_str_eq(who("11.0.0.1", "203.0.113.1", NULL), "11.0.0.1");
}
END_TEST

START_TEST(test_client_trusted)
{
	proxies("10.0.0.0/8, 2001:db8:1::/48 192.0.2.1");
	ck_assert_str_eq(who("10.1.1.1", NULL, NULL), "10.1.1.1");
	ck_assert_str_eq(who("10.1.1.1", "203.0.113.1", NULL), "203.0.113.1");
	ck_assert_str_eq(who("192.0.2.1", "203.0.113.1", NULL),
	    "203.0.113.1");
	ck_assert_str_eq(who("192.0.2.2", "203.0.113.1", NULL), "192.0.2.2");
	ck_assert_str_eq(who("2001:db8:1::5", "2001:db8:2::5", NULL),
	    "2001:db8:2::5");
	/* The last untrusted one: what the client wrote is to its left. */
	ck_assert_str_eq(who("10.1.1.1", "1.1.1.1, 203.0.113.1", NULL),
	    "203.0.113.1");
	ck_assert_str_eq(who("10.1.1.1", "1.1.1.1, 203.0.113.1, 10.2.2.2",
	    NULL), "203.0.113.1");
	ck_assert_str_eq(who("10.1.1.1", "203.0.113.1,10.2.2.2,192.0.2.1",
	    NULL), "203.0.113.1");
	ck_assert_str_eq(who("10.1.1.1", " 203.0.113.1 ,\t10.2.2.2 ", NULL),
	    "203.0.113.1");
	ck_assert_str_eq(who("10.1.1.1", "[2001:db8:2::5]:1234", NULL),
	    "2001:db8:2::5");
	ck_assert_str_eq(who("10.1.1.1", "203.0.113.1:5555", NULL),
	    "203.0.113.1");
	/* Every one trusted: the leftmost. */
	ck_assert_str_eq(who("10.1.1.1", "10.3.3.3, 10.2.2.2", NULL),
	    "10.3.3.3");
	/* Several header lines read as one list, in order. */
	ck_assert_str_eq(who("10.1.1.1", "203.0.113.1", "10.2.2.2"),
	    "203.0.113.1");
	ck_assert_str_eq(who("10.1.1.1", "203.0.113.1", "203.0.113.2"),
	    "203.0.113.2");
	/* Junk left of the client is never looked at. */
	ck_assert_str_eq(who("10.1.1.1", "junk, 203.0.113.1", NULL),
	    "203.0.113.1");
}
END_TEST

START_TEST(test_client_malformed)
{
	static const char *const bad[] = {
		"", " ", ",", "203.0.113.1,", "unknown", "203.0.113.1, junk",
		"203.0.113.1 203.0.113.2", "10.2.2.2, nonsense, 10.3.3.3",
		"203.0.113.999", "\"203.0.113.1\"", "for=203.0.113.1",
	};

	proxies("10.0.0.0/8");
	/* The header cannot be believed: the proxy is the client. */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(strcmp(who("10.1.1.1", bad[i], NULL),
		    "10.1.1.1") == 0, "'%s'", bad[i]);
	ck_assert_str_eq(who("10.1.1.1", "203.0.113.1", "junk"), "10.1.1.1");
}
END_TEST

START_TEST(test_client_too_many_lines)
{
	struct ratelimit_str xff[RATELIMIT_MAX_XFF + 1];
	struct sockaddr_in sin;
	struct ratelimit_client c, want = v4("10.1.1.1");

	proxies("10.0.0.0/8");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	inet_pton(AF_INET, "10.1.1.1", &sin.sin_addr);
	for (int i = 0; i <= RATELIMIT_MAX_XFF; i++) {
		xff[i].p = "203.0.113.1";
		xff[i].len = 11;
	}
	ck_assert_int_eq(ratelimit_client(ct.rl, (void *)&sin, sizeof(sin),
	    xff, RATELIMIT_MAX_XFF, &c), 0);
	ck_assert_int_eq(c.addr[15], 1);
	ck_assert_int_eq(ratelimit_client(ct.rl, (void *)&sin, sizeof(sin),
	    xff, RATELIMIT_MAX_XFF + 1, &c), 0);
	ck_assert_mem_eq(c.addr, want.addr, 16);
}
END_TEST

START_TEST(test_client_unix)
{
	proxies("10.0.0.0/8");
	ck_assert_str_eq(who("unix", NULL, NULL), "exempt");
	ck_assert_str_eq(who("unix", "203.0.113.1", NULL), "exempt");
	proxies("unix");
	ck_assert_str_eq(who("unix", NULL, NULL), "exempt");
	ck_assert_str_eq(who("unix", "203.0.113.1", NULL), "203.0.113.1");
	ck_assert_str_eq(who("unix", "junk", NULL), "exempt");
	/* "unix" trusts no address. */
	ck_assert_str_eq(who("10.1.1.1", "203.0.113.1", NULL), "10.1.1.1");
}
END_TEST

static Suite *
ratelimit_suite(void)
{
	Suite *s = suite_create("ratelimit");
	TCase *tc;

	tc = tcase_create("bucket");
	tcase_add_test(tc, test_burst_then_refill);
	tcase_add_test(tc, test_retry_after);
	tcase_add_test(tc, test_default_burst);
	tcase_add_test(tc, test_off);
	tcase_add_test(tc, test_clients_apart);
	tcase_add_test(tc, test_reload);
	suite_add_tcase(s, tc);

	tc = tcase_create("table");
	tcase_add_test(tc, test_capacity_evicts_full_first);
	tcase_add_test(tc, test_sizes);
	suite_add_tcase(s, tc);

	tc = tcase_create("shared");
	tcase_add_test(tc, test_shared_one_client);
	tcase_add_test(tc, test_shared_many_clients);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);

	tc = tcase_create("parse");
	tcase_add_test(tc, test_parse_addr);
	tcase_add_test(tc, test_parse_cidr);
	suite_add_tcase(s, tc);

	tc = tcase_create("client");
	tcase_add_checked_fixture(tc, client_setup, client_teardown);
	tcase_add_test(tc, test_client_untrusted);
	tcase_add_test(tc, test_client_trusted);
	tcase_add_test(tc, test_client_malformed);
	tcase_add_test(tc, test_client_too_many_lines);
	tcase_add_test(tc, test_client_unix);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(ratelimit_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
