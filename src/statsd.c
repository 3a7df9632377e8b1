/*
 * The StatsD client: one connected, non-blocking UDP socket, resolved
 * when the configuration is read.  Each push sends the lines of
 * metrics_statsd() in datagrams that fit a common MTU; a datagram the
 * kernel will not take now is dropped, as UDP would anyway.  Failures
 * are counted and logged at most once a minute.
 */
#include <sys/socket.h>

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "statsd.h"

#define STATSD_DATAGRAM	1432	/* fits a 1500-byte MTU with headers */
#define STATSD_WARN_MS	60000

struct packet {
	struct statsd	*sd;
	size_t		 len;
	char		 buf[STATSD_DATAGRAM];
};

static uint64_t
statsd_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Log a failure unless one was logged within the last minute. */
static void
statsd_failed(struct statsd *sd, int err, const char *what)
{
	uint64_t t = statsd_now_ms();

	if (sd->warned_ms != 0 && t - sd->warned_ms < STATSD_WARN_MS) {
		sd->failed++;
		return;
	}
	if (sd->failed)
		log_warnx("StatsD %s: %s: %s (and %llu more failures since "
		    "the last such message)", sd->target, what, strerror(err),
		    (unsigned long long)sd->failed);
	else
		log_warnx("StatsD %s: %s: %s", sd->target, what,
		    strerror(err));
	sd->warned_ms = t;
	sd->failed = 0;
}

void
statsd_init(struct statsd *sd)
{
	memset(sd, 0, sizeof(*sd));
	sd->fd = -1;
}

void
statsd_configure(struct statsd *sd, const struct config *cf)
{
	char host[256], *port;
	struct addrinfo hints, *res, *ai;
	int fd = -1, rc;

	if (sd->fd != -1) {
		close(sd->fd);
		sd->fd = -1;
	}
	snprintf(sd->target, sizeof(sd->target), "%s", cf->statsd);
	snprintf(sd->prefix, sizeof(sd->prefix), "%s", cf->metrics_prefix);
	sd->warned_ms = 0;
	sd->failed = 0;
	if (cf->statsd[0] == '\0')
		return;
	snprintf(host, sizeof(host), "%s", cf->statsd);
	if ((port = strrchr(host, ':')) == NULL) {
		log_warnx("StatsD address '%s' has no port; not pushing",
		    cf->statsd);
		return;
	}
	*port++ = '\0';
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_DGRAM;
	hints.ai_flags = AI_NUMERICSERV;
	if ((rc = getaddrinfo(host, port, &hints, &res)) != 0) {
		log_warnx("cannot resolve StatsD address '%s': %s; not "
		    "pushing until a reload", cf->statsd, gai_strerror(rc));
		return;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK |
		    SOCK_CLOEXEC, 0);
		if (fd == -1)
			continue;
		/* Connected: send() needs no address, and sees ICMP errors. */
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd == -1) {
		log_warn("cannot open a socket to StatsD at %s; not pushing "
		    "until a reload", cf->statsd);
		return;
	}
	sd->fd = fd;
	sd->next_ms = 0;
	log_info("pushing metrics to StatsD at %s, prefix '%s'", sd->target,
	    sd->prefix);
}

static void
packet_send(struct packet *p)
{
	if (p->len == 0)
		return;
	if (send(p->sd->fd, p->buf, p->len, MSG_DONTWAIT) == -1)
		statsd_failed(p->sd, errno, "cannot send");
	p->len = 0;
}

static void
packet_add(void *arg, const char *line, size_t len)
{
	struct packet *p = arg;

	if (p->len + 1 + len > sizeof(p->buf))
		packet_send(p);
	if (len > sizeof(p->buf))
		return;
	if (p->len)
		p->buf[p->len++] = '\n';
	memcpy(p->buf + p->len, line, len);
	p->len += len;
}

static void
statsd_push(struct statsd *sd, const struct shm *shm)
{
	static struct packet p;
	struct metrics_snap cur;

	metrics_snapshot(shm, &cur);
	p.sd = sd;
	p.len = 0;
	metrics_statsd(&cur, &sd->prev, sd->prefix, packet_add, &p);
	packet_send(&p);
	sd->prev = cur;
}

int
statsd_tick(struct statsd *sd, const struct shm *shm, uint64_t interval_us)
{
	uint64_t t = statsd_now_ms(), every = interval_us / 1000;

	if (sd->fd == -1)
		return -1;
	if (every == 0)
		every = 1;
	if (t >= sd->next_ms) {
		statsd_push(sd, shm);
		sd->next_ms = t + every;
	}
	return (int)(sd->next_ms - t);
}

void
statsd_close(struct statsd *sd, const struct shm *shm)
{
	if (sd->fd == -1)
		return;
	statsd_push(sd, shm);
	close(sd->fd);
	sd->fd = -1;
}
