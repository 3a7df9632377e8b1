/*
 * Per-client rate limiting: one token bucket per client address, in a
 * bounded table in the shared region, so that every worker draws on the
 * same buckets.  The master publishes the settings (rate, burst, trusted
 * proxies) there, at start and on SIGHUP; workers read them on each
 * request.  Like the rest of the region it is a cache: a restart gives
 * every client a full bucket.
 */
#ifndef TALLY_RATELIMIT_H
#define TALLY_RATELIMIT_H

#include <sys/types.h>
#include <sys/socket.h>

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* X-Forwarded-For header lines looked at; more is treated as malformed. */
#define RATELIMIT_MAX_XFF	8

struct ratelimit;		/* settings and buckets, in the shared region */

/* A client as the table keys it: IPv6, with IPv4 as ::ffff:a.b.c.d. */
struct ratelimit_client {
	uint8_t	addr[16];
};

/* One header value, not NUL-terminated. */
struct ratelimit_str {
	const char	*p;
	size_t		 len;
};

/* Bytes needed for max_clients buckets; 0 when that is too many. */
size_t	ratelimit_size(uint64_t max_clients);
/* Initialise a zero-filled area of ratelimit_size() bytes. */
struct ratelimit *ratelimit_init(void *mem, uint64_t max_clients,
	    uint64_t seed);
/* The master, at start and on reload: rate, burst and trusted_proxies. */
void	ratelimit_configure(struct ratelimit *rl, const struct config *cf);
int	ratelimit_enabled(const struct ratelimit *rl);

/*
 * Which client a request stands for: the peer, or, when the peer is a
 * trusted proxy, the last address in X-Forwarded-For (xff: the header
 * lines in the order received) that is not a trusted proxy.  Returns 0
 * with *c set, or 1 when the request is exempt (a Unix-socket peer that
 * names no client).
 */
int	ratelimit_client(struct ratelimit *rl, const struct sockaddr *peer,
	    socklen_t peer_len, const struct ratelimit_str *xff, int nxff,
	    struct ratelimit_client *c);

/*
 * Take one token from c's bucket at now_ns (CLOCK_MONOTONIC).  Returns 0
 * when the request may go on (also when limiting is off), -1 when it is
 * over the limit, with *retry_s the whole seconds until a token is back
 * (at least 1).
 */
int	ratelimit_take(struct ratelimit *rl, const struct ratelimit_client *c,
	    uint64_t now_ns, uint64_t *retry_s);

/*
 * Master, after reaping a worker: release the table locks the dead
 * process held.  Returns how many.
 */
int	ratelimit_release_owner(struct ratelimit *rl, pid_t pid);

/*
 * Buckets dropped from a full set while their client was still drawing on
 * them (each such client was forgiven its debt): max_clients is too small
 * when this grows.  And the table's capacity.
 */
uint64_t ratelimit_evicted(const struct ratelimit *rl);
uint64_t ratelimit_capacity(const struct ratelimit *rl);

/* Parse one address of X-Forwarded-For: a.b.c.d[:port], v6, [v6][:port]. */
int	ratelimit_parse_addr(const char *s, size_t len,
	    struct ratelimit_client *c);

#endif
