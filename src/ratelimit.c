/*
 * Per-client rate limiting in the shared region.
 *
 * A bucket is one 64-bit word, the "theoretical arrival time" of the
 * generic cell rate algorithm (ITU-T I.371), which is a token bucket
 * written down differently: with one token every T nanoseconds and room
 * for B tokens, a bucket whose word is tat holds (B*T - max(0, tat - now))
 * / T tokens at now.  Taking a token moves tat to max(tat, now) + T, which
 * is allowed while that stays within B*T of now.  So the tokens and the
 * time of the last refill live in one word, updated with a single
 * compare-and-swap, and a bucket whose tat has passed is full: it carries
 * no state, and dropping it costs the client nothing.
 *
 * The table is set-associative: a client's hash picks a set of RL_WAYS
 * slots {key, tat}, where key is a 64-bit keyed hash of the address (two
 * addresses sharing one would share a bucket; with 64 bits and a random
 * seed that does not happen in practice).  Finding a client takes no lock.
 * Adding one takes a lock (one of RL_LOCKS, chosen by the set), a word
 * holding the pid of the process adding, so that two workers seeing a new
 * client at once do not give it two buckets; the lock of a worker that
 * died holding it is taken over by the next process that needs it once
 * the dead one is gone, or released by the master when it reaps it.  A full set gives the new client the slot of the bucket
 * closest to full: a full one if there is one, for free, otherwise the
 * client furthest from its limit loses its debt.
 *
 * The settings are published by the master under a sequence lock: odd
 * while being written, readers retry until they read a stable copy.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "ratelimit.h"

#define RL_WAYS		8
#define RL_LOCKS	256		/* lock stripes, shared by the sets */
#define RL_SPINS	1024		/* tries for a lock before yielding */
#define RL_YIELDS	100000		/* yields before letting the request by */
#define RL_MAX_T	(UINT64_C(1) << 60)	/* ns per token: 36 years */
#define RL_MAX_TAU	(UINT64_C(1) << 62)
#define NS_S		UINT64_C(1000000000)
#define RL_MAX_ELEM	64		/* longest X-Forwarded-For element */

struct rl_settings {
	uint64_t		interval_ns;	/* T; 0: limiting is off */
	uint64_t		tau_ns;		/* B * T */
	int			nproxies;
	int			proxy_unix;
	struct config_cidr	proxies[CONFIG_MAX_PROXIES];
};

struct rl_slot {
	uint64_t	key;		/* 0: free */
	uint64_t	tat;		/* ns, CLOCK_MONOTONIC */
};

struct rl_set {
	struct rl_slot	slot[RL_WAYS];
};

struct ratelimit {
	uint64_t		seq;	/* settings: odd while written */
	struct rl_settings	set;
	uint64_t		seed[2];
	uint64_t		nsets;
	uint64_t		evicted;	/* buckets dropped while in use */
	uint32_t		lock[RL_LOCKS];	/* pid adding a client, 0: none */
	struct rl_set		sets[];
};

size_t
ratelimit_size(uint64_t max_clients)
{
	uint64_t nsets = (max_clients + RL_WAYS - 1) / RL_WAYS;

	if (nsets == 0 || nsets > UINT32_MAX ||
	    nsets > (SIZE_MAX - sizeof(struct ratelimit)) /
	    sizeof(struct rl_set))
		return 0;
	return sizeof(struct ratelimit) + nsets * sizeof(struct rl_set);
}

struct ratelimit *
ratelimit_init(void *mem, uint64_t max_clients, uint64_t seed)
{
	struct ratelimit *rl = mem;

	rl->nsets = (max_clients + RL_WAYS - 1) / RL_WAYS;
	rl->seed[0] = seed ^ UINT64_C(0x6a09e667f3bcc908);
	rl->seed[1] = (seed << 1 | seed >> 63) ^ UINT64_C(0xbb67ae8584caa73b);
	return rl;
}

uint64_t
ratelimit_capacity(const struct ratelimit *rl)
{
	return rl->nsets * RL_WAYS;
}

/* --- settings --- */

void
ratelimit_configure(struct ratelimit *rl, const struct config *cf)
{
	struct rl_settings s;
	uint64_t burst, seq;
	double t;

	memset(&s, 0, sizeof(s));
	if (cf->rate > 0) {
		t = 1e9 / cf->rate + 0.5;
		s.interval_ns = t >= (double)RL_MAX_T ? RL_MAX_T :
		    t < 1 ? 1 : (uint64_t)t;
		burst = cf->burst;
		if (burst == 0) {
			/* The rate rounded up, and at least 1. */
			burst = (uint64_t)cf->rate;
			if ((double)burst < cf->rate || burst == 0)
				burst++;
		}
		s.tau_ns = s.interval_ns > RL_MAX_TAU / burst ? RL_MAX_TAU :
		    burst * s.interval_ns;
	}
	s.nproxies = cf->nproxies;
	s.proxy_unix = cf->proxy_unix;
	memcpy(s.proxies, cf->proxies, sizeof(s.proxies));

	seq = __atomic_load_n(&rl->seq, __ATOMIC_RELAXED);
	__atomic_store_n(&rl->seq, seq + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	memcpy(&rl->set, &s, sizeof(s));
	__atomic_store_n(&rl->seq, seq + 2, __ATOMIC_RELEASE);
}

/*
 * A stable copy of the settings.  Only the master writes them, and only
 * for an instant; should it die in the middle, limiting is off rather
 * than the worker spinning.
 */
static void
settings_read(const struct ratelimit *rl, struct rl_settings *out)
{
	uint64_t s1, s2;

	for (int i = 0; i < 1000; i++) {
		s1 = __atomic_load_n(&rl->seq, __ATOMIC_ACQUIRE);
		if (s1 & 1)
			continue;
		memcpy(out, &rl->set, sizeof(*out));
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		s2 = __atomic_load_n(&rl->seq, __ATOMIC_RELAXED);
		if (s1 == s2)
			return;
	}
	memset(out, 0, sizeof(*out));
}

int
ratelimit_enabled(const struct ratelimit *rl)
{
	return __atomic_load_n(&rl->set.interval_ns, __ATOMIC_RELAXED) != 0;
}

/* --- who the client is --- */

int
ratelimit_parse_addr(const char *s, size_t len, struct ratelimit_client *c)
{
	char buf[RL_MAX_ELEM + 1];
	const char *host = buf, *port = NULL, *colon;
	struct in_addr a4;
	size_t n;

	if (len == 0 || len > RL_MAX_ELEM)
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	if (memchr(buf, '\0', len) != NULL)
		return -1;
	if (buf[0] == '[') {
		char *close = strchr(buf, ']');

		if (close == NULL)
			return -1;
		*close = '\0';
		host = buf + 1;
		if (close[1] == ':')
			port = close + 2;
		else if (close[1] != '\0')
			return -1;
		if (inet_pton(AF_INET6, host, c->addr) != 1)
			return -1;
	} else if ((colon = strchr(buf, ':')) != NULL &&
	    strchr(colon + 1, ':') == NULL) {
		/* One colon: a.b.c.d:port. */
		buf[colon - buf] = '\0';
		port = colon + 1;
		if (inet_pton(AF_INET, buf, &a4) != 1)
			return -1;
		memset(c->addr, 0, 10);
		c->addr[10] = c->addr[11] = 0xff;
		memcpy(c->addr + 12, &a4, 4);
	} else if (colon != NULL) {
		if (inet_pton(AF_INET6, buf, c->addr) != 1)
			return -1;
	} else {
		if (inet_pton(AF_INET, buf, &a4) != 1)
			return -1;
		memset(c->addr, 0, 10);
		c->addr[10] = c->addr[11] = 0xff;
		memcpy(c->addr + 12, &a4, 4);
	}
	if (port != NULL) {
		unsigned long v = 0;

		n = strlen(port);
		if (n == 0 || n > 5 || strspn(port, "0123456789") != n)
			return -1;
		for (size_t i = 0; i < n; i++)
			v = v * 10 + (port[i] - '0');
		if (v > 65535)
			return -1;
	}
	return 0;
}

static int
cidr_has(const struct config_cidr *b, const uint8_t a[16])
{
	unsigned full = b->bits / 8, rest = b->bits % 8;

	if (memcmp(a, b->addr, full) != 0)
		return 0;
	if (rest == 0)
		return 1;
	return ((a[full] ^ b->addr[full]) & (0xff00 >> rest)) == 0;
}

static int
trusted(const struct rl_settings *s, const uint8_t a[16])
{
	for (int i = 0; i < s->nproxies && i < CONFIG_MAX_PROXIES; i++)
		if (cidr_has(&s->proxies[i], a))
			return 1;
	return 0;
}

static int
is_ows(char ch)
{
	return ch == ' ' || ch == '\t';
}

/*
 * The client X-Forwarded-For names: walking from the right, past the
 * proxies we trust, the first address we do not; if every one is
 * trusted, the leftmost.  -1 when an element on that walk is not an
 * address, or there is none: the header cannot be believed.
 */
static int
xff_client(const struct rl_settings *s, const struct ratelimit_str *xff,
    int nxff, struct ratelimit_client *out)
{
	struct ratelimit_client c, leftmost;
	int seen = 0;

	if (nxff > RATELIMIT_MAX_XFF)
		return -1;
	for (int h = nxff - 1; h >= 0; h--) {
		const char *p = xff[h].p;
		size_t end = xff[h].len;

		/* Elements right to left: [start, end) between commas. */
		for (;;) {
			size_t start = end, a, b;

			while (start > 0 && p[start - 1] != ',')
				start--;
			for (a = start; a < end && is_ows(p[a]); a++)
				;
			for (b = end; b > a && is_ows(p[b - 1]); b--)
				;
			if (ratelimit_parse_addr(p + a, b - a, &c) == -1)
				return -1;
			if (!trusted(s, c.addr)) {
				*out = c;
				return 0;
			}
			leftmost = c;
			seen = 1;
			if (start == 0)
				break;
			end = start - 1;
		}
	}
	if (!seen)
		return -1;
	*out = leftmost;
	return 0;
}

int
ratelimit_client(struct ratelimit *rl, const struct sockaddr *peer,
    socklen_t peer_len, const struct ratelimit_str *xff, int nxff,
    struct ratelimit_client *c)
{
	struct rl_settings s;
	int from_unix = 0, trust;

	settings_read(rl, &s);
	memset(c, 0, sizeof(*c));
	if (peer != NULL && peer->sa_family == AF_INET &&
	    peer_len >= (socklen_t)sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *sin = (const void *)peer;

		c->addr[10] = c->addr[11] = 0xff;
		memcpy(c->addr + 12, &sin->sin_addr, 4);
	} else if (peer != NULL && peer->sa_family == AF_INET6 &&
	    peer_len >= (socklen_t)sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *sin6 = (const void *)peer;

		memcpy(c->addr, &sin6->sin6_addr, 16);
	} else
		/* A Unix socket, or a peer we cannot name. */
		from_unix = 1;

	trust = from_unix ? s.proxy_unix : trusted(&s, c->addr);
	if (trust && nxff > 0 && xff_client(&s, xff, nxff, c) == 0)
		return 0;
	return from_unix ? 1 : 0;
}

/* --- the buckets --- */

static uint64_t
mix(uint64_t x)
{
	x ^= x >> 31;
	x *= UINT64_C(0x9e3779b97f4a7c15);
	x ^= x >> 29;
	x *= UINT64_C(0xd6e8feb86659fd93);
	x ^= x >> 32;
	return x;
}

static uint64_t
client_key(const struct ratelimit *rl, const struct ratelimit_client *c)
{
	uint64_t a, b, k;

	memcpy(&a, c->addr, 8);
	memcpy(&b, c->addr + 8, 8);
	k = mix(mix(a ^ rl->seed[0]) ^ b ^ rl->seed[1]);
	return k ? k : 1;
}

static struct rl_slot *
slot_find(struct rl_set *set, uint64_t key)
{
	for (int i = 0; i < RL_WAYS; i++)
		if (__atomic_load_n(&set->slot[i].key, __ATOMIC_ACQUIRE) == key)
			return &set->slot[i];
	return NULL;
}

/*
 * The holder of a lock only ever holds it for a few stores, but it may
 * be preempted there, or die there: then spin, yield, and take over the
 * lock of a process that is gone.  -1 only if that takes very long.
 */
static int
lock_take(uint32_t *lock, uint32_t me)
{
	uint32_t cur;

	for (unsigned i = 0; i < RL_SPINS + RL_YIELDS; i++) {
		cur = 0;
		if (__atomic_compare_exchange_n(lock, &cur, me, 0,
		    __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return 0;
		if (i < RL_SPINS) {
			__builtin_ia32_pause();
			continue;
		}
		if (kill((pid_t)cur, 0) == -1 && errno == ESRCH &&
		    __atomic_compare_exchange_n(lock, &cur, me, 0,
		    __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return 0;
		sched_yield();
	}
	return -1;
}

/*
 * Give key a slot in set: a free one, else the one whose bucket is
 * closest to full.  NULL when the set's lock cannot be had.
 */
static struct rl_slot *
slot_claim(struct ratelimit *rl, uint64_t idx, uint64_t key, uint64_t now_ns)
{
	struct rl_set *set = &rl->sets[idx];
	uint32_t *lock = &rl->lock[idx % RL_LOCKS];
	uint32_t me = (uint32_t)getpid();
	struct rl_slot *s, *victim = NULL;
	uint64_t k, t, best = UINT64_MAX;

	if (lock_take(lock, me) == -1)
		return NULL;
	/* Another process may have added it meanwhile. */
	if ((s = slot_find(set, key)) == NULL) {
		for (int i = 0; i < RL_WAYS; i++) {
			k = __atomic_load_n(&set->slot[i].key,
			    __ATOMIC_RELAXED);
			t = __atomic_load_n(&set->slot[i].tat,
			    __ATOMIC_RELAXED);
			if (k == 0) {
				victim = &set->slot[i];
				break;
			}
			if (t < best) {
				best = t;
				victim = &set->slot[i];
			}
		}
		s = victim;
		if (k != 0 && best > now_ns)
			__atomic_fetch_add(&rl->evicted, 1, __ATOMIC_RELAXED);
		/*
		 * Unpublish, reset, publish.  A process that found the old
		 * client just before may still take a token here: only when
		 * a busy set drops a bucket, and only once.
		 */
		__atomic_store_n(&s->key, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&s->tat, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&s->key, key, __ATOMIC_RELEASE);
	}
	__atomic_store_n(lock, 0, __ATOMIC_RELEASE);
	return s;
}

int
ratelimit_take(struct ratelimit *rl, const struct ratelimit_client *c,
    uint64_t now_ns, uint64_t *retry_s)
{
	struct rl_settings s;
	struct rl_slot *slot;
	struct rl_set *set;
	uint64_t key, idx, old, next, wait;

	if (!ratelimit_enabled(rl))
		return 0;
	settings_read(rl, &s);
	if (s.interval_ns == 0)
		return 0;
	key = client_key(rl, c);
	idx = ((key >> 32) * rl->nsets) >> 32;
	set = &rl->sets[idx];
	/* No slot (a lock held far too long): let the request by. */
	if ((slot = slot_find(set, key)) == NULL &&
	    (slot = slot_claim(rl, idx, key, now_ns)) == NULL)
		return 0;
	old = __atomic_load_n(&slot->tat, __ATOMIC_RELAXED);
	for (;;) {
		next = (old > now_ns ? old : now_ns) + s.interval_ns;
		if (next - now_ns > s.tau_ns) {
			wait = next - s.tau_ns - now_ns;
			*retry_s = wait / NS_S + (wait % NS_S != 0);
			if (*retry_s == 0)
				*retry_s = 1;
			return -1;
		}
		if (__atomic_compare_exchange_n(&slot->tat, &old, next, 1,
		    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
			return 0;
	}
}

int
ratelimit_release_owner(struct ratelimit *rl, pid_t pid)
{
	uint32_t held;
	int n = 0;

	for (int i = 0; i < RL_LOCKS; i++) {
		held = (uint32_t)pid;
		if (__atomic_compare_exchange_n(&rl->lock[i], &held, 0, 0,
		    __ATOMIC_RELEASE, __ATOMIC_RELAXED))
			n++;
	}
	return n;
}

uint64_t
ratelimit_evicted(const struct ratelimit *rl)
{
	return __atomic_load_n(&rl->evicted, __ATOMIC_RELAXED);
}
