/*
 * The master's control socket: tallyctl's requests (status, get, flush,
 * reload, stop) answered from the master's poll() loop.  The messages'
 * framing is control.c's; what they do is here.  A client is served
 * between two polls and never waited on: a flush is answered in a later
 * pass, once the flusher reports it done.
 */
#include <sys/socket.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "idem.h"
#include "log.h"
#include "master_int.h"
#include "ratelimit.h"
#include "syncer.h"

#define CTL_FLUSH_MS	60000	/* tallyctl flush gives up after this */
#define CTL_IDLE_MS	10000	/* a control client silent this long goes */

void
master_ctl_close(int i)
{
	close(M.clients[i]->fd);
	free(M.clients[i]);
	M.clients[i] = NULL;
}

static void
ctl_status(struct control_client *c)
{
	struct shm_hdr *h = M.shm.hdr;
	char buf[CONTROL_MAX_PAYLOAD], epoch[33];
	char esc[sizeof(M.cf->listen[0]) * 6], dir[sizeof(M.cf->journal_dir)];
	uint64_t ins = shm_load(&h->insert_lsn);
	uint64_t ck = shm_load(&h->checkpoint_lsn);
	uint64_t bad = shm_load(&h->corrupt_lsn);
	char seg[32];
	size_t o = 0;

	journal_epoch_hex(h->epoch, epoch);
	journal_seg_name(seg, sizeof(seg), journal_seg_base(h->seg_size, bad));
	/* Paths are the operator's: any byte but NUL, quotes too. */
	control_json_escape(dir, sizeof(dir), M.cf->journal_dir,
	    strlen(M.cf->journal_dir));
	o += snprintf(buf + o, sizeof(buf) - o, "{\"version\":\"%s\","
	    "\"pid\":%d,\"uptime_s\":%lld,\"node\":\"%s\",\"state\":\"%s\","
	    "\"flush_interval_ms\":%llu,\"log_level\":\"%s\",\"listen\":[",
	    PACKAGE_VERSION, (int)getpid(),
	    (long long)(time(NULL) - M.started), M.cf->node,
	    M.state == RUNNING ? "running" : "stopping",
	    (unsigned long long)(M.cf->flush_interval_us / 1000),
	    M.cf->log_level);
	for (int i = 0; i < M.cf->nlisten && o < sizeof(buf) - 64; i++) {
		control_json_escape(esc, sizeof(esc), M.cf->listen[i],
		    strlen(M.cf->listen[i]));
		o += snprintf(buf + o, sizeof(buf) - o, "%s\"%s\"", i ? "," :
		    "", esc);
	}
	if (o < sizeof(buf))
		o += snprintf(buf + o, sizeof(buf) - o, "],\"processes\":[");
	for (int i = 0; i < M.nchildren && o < sizeof(buf) - 64; i++)
		o += snprintf(buf + o, sizeof(buf) - o,
		    "%s{\"role\":\"%s\",\"pid\":%d}", i ? "," : "",
		    proc_name(M.children[i].role), (int)M.children[i].pid);
	if (o < sizeof(buf))
		o += snprintf(buf + o, sizeof(buf) - o, "],\"journal\":{"
		    "\"dir\":\"%s\",\"epoch\":\"%s\",\"sync\":\"%s\","
		    "\"insert_lsn\":%" PRIu64 ",\"written_lsn\":%" PRIu64 ","
		    "\"durable_lsn\":%" PRIu64 ",\"checkpoint_lsn\":%" PRIu64 ","
		    "\"backlog_bytes\":%" PRIu64 ",\"error\":%d,"
		    "\"corrupt_lsn\":%" PRIu64 ",\"corrupt_segment\":\"%s\","
		    "\"corrupt_offset\":%" PRIu64 ",\"corrupt_reason\":\"%s\"},"
		    "\"counters\":{\"keys\":%" PRIu64 ",\"capacity\":%" PRIu64
		    "},\"idempotency\":{\"keys\":%" PRIu64 ",\"capacity\":%"
		    PRIu64 "},\"ratelimit\":{\"rate\":%g,\"limited\":%" PRIu64
		    ",\"evicted\":%" PRIu64 ",\"capacity\":%" PRIu64 "},"
		    "\"postgres\":{\"up\":%s},"
		    "\"rejected_records\":%" PRIu64 "}",
		    dir, epoch,
		    M.cf->sync == SYNC_GROUP ? "group" : "interval", ins,
		    shm_load(&h->written_lsn), shm_load(&h->durable_lsn), ck,
		    ins > ck ? ins - ck : 0, h->journal_errno, bad,
		    bad ? seg : "", bad ? bad % h->seg_size : 0,
		    bad ? h->corrupt_why : "",
		    counters_count(M.shm.counters), M.shm.counters->capacity,
		    idem_count(M.shm.idem), idem_capacity(M.shm.idem),
		    M.cf->rate, shm_load(&h->stats.ratelimited),
		    ratelimit_evicted(M.shm.rl), ratelimit_capacity(M.shm.rl),
		    h->pg_up ? "true" : "false",
		    shm_load(&h->stats.rejected));
	if (o >= sizeof(buf))
		o = sizeof(buf) - 1;
	control_reply(c->fd, CTL_OK, buf, o);
}

static void
ctl_get(struct control_client *c, const char *key, size_t len)
{
	char buf[CONTROL_MAX_PAYLOAD], k[CONTROL_MAX_PAYLOAD];
	int64_t committed, unflushed;
	int n, known, rc;

	/* A dead worker may hold the entry until we reap it: do not wait. */
	if ((rc = counters_peek_try(M.shm.counters, key, len, &committed,
	    &unflushed, &known, 1000)) == -1) {
		n = snprintf(buf, sizeof(buf), "{\"error\":\"the key is "
		    "being changed; try again\"}");
		control_reply(c->fd, CTL_FAILED, buf, n);
		return;
	}
	if (rc == COUNTERS_PEEK_NONE) {
		n = snprintf(buf, sizeof(buf), "{\"error\":\"key not held in "
		    "memory (GET /increment/KEY asks PostgreSQL)\"}");
		control_reply(c->fd, CTL_FAILED, buf, n);
		return;
	}
	/*
	 * Taken in for increments still pending, refused or lost with their
	 * worker: memory holds nothing acknowledged for it, and a total of 0
	 * would say otherwise.
	 */
	if (rc == COUNTERS_PEEK_BARE) {
		n = snprintf(buf, sizeof(buf), "{\"error\":\"no increment "
		    "of the key acknowledged in memory (GET /increment/KEY "
		    "asks PostgreSQL)\"}");
		control_reply(c->fd, CTL_FAILED, buf, n);
		return;
	}
	control_json_escape(k, sizeof(k), key, len);
	n = snprintf(buf, sizeof(buf), "{\"key\":\"%s\",\"value\":%" PRId64
	    ",\"committed\":%" PRId64 ",\"unflushed\":%" PRId64 ","
	    "\"committed_known\":%s}", k, committed + unflushed, committed,
	    unflushed, known ? "true" : "false");
	control_reply(c->fd, CTL_OK, buf, n < (int)sizeof(buf) ? n :
	    (int)sizeof(buf) - 1);
}

/* A whole request is in c->buf: act on it.  0 keeps the client. */
static int
ctl_dispatch(struct control_client *c)
{
	struct shm_hdr *h = M.shm.hdr;
	uint16_t type, len;
	char *p = (char *)c->buf + CONTROL_HDR;

	control_parse_header(c->buf, &type, &len);
	c->have = 0;
	switch (type) {
	case CTL_STATUS:
		ctl_status(c);
		return 0;
	case CTL_GET:
		if (len == 0)
			return -1;
		ctl_get(c, p, len);
		return 0;
	case CTL_FLUSH:
		c->flush_seq = __atomic_add_fetch(&h->flush_seq, 1,
		    __ATOMIC_ACQ_REL);
		c->deadline_ms = master_now_ms() + CTL_FLUSH_MS;
		/* Its frames are made durable first; the syncer then wakes
		 * the flusher (flush_synced). */
		syncer_kick(h->syncer_efd);
		return 0;
	case CTL_RELOAD:
		if (master_reload() == 0)
			control_reply_str(c->fd, CTL_OK, "{\"reloaded\":true}");
		else
			control_reply_str(c->fd, CTL_FAILED, "{\"error\":\"the "
			    "configuration has errors; see the log\"}");
		return 0;
	case CTL_STOP:
		control_reply_str(c->fd, CTL_OK, "{\"stopping\":\"graceful\"}");
		master_graceful();
		return 0;
	case CTL_STOP_FAST:
		control_reply_str(c->fd, CTL_OK, "{\"stopping\":\"fast\"}");
		log_info("fast stop requested by tallyctl");
		master_fast_stop(0);
		return 0;
	default:
		return -1;
	}
}

/*
 * Answer the flushes that are done, or that waited too long.  One that
 * stopped at a damaged frame is done but did not bring PostgreSQL the
 * increments past it: a failure, not "flushed".
 */
static void
ctl_flush_waiters(void)
{
	struct shm_hdr *h = M.shm.hdr;
	uint64_t done = shm_load(&h->flush_done), t = master_now_ms(), bad;
	char buf[160];
	int n;

	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++) {
		struct control_client *c = M.clients[i];

		if (c == NULL || c->flush_seq == 0)
			continue;
		if (done >= c->flush_seq && (bad = shm_load(
		    &h->corrupt_lsn)) != 0 && journal_lsn_normalize(
		    h->seg_size, shm_load(&h->checkpoint_lsn)) <= bad) {
			n = snprintf(buf, sizeof(buf), "{\"error\":\"journal "
			    "corrupt at LSN %" PRIu64 ": flushing stopped "
			    "there (see 'tallyctl journal verify')\"}", bad);
			control_reply(c->fd, CTL_FAILED, buf, n);
			c->flush_seq = 0;
		} else if (done >= c->flush_seq) {
			n = snprintf(buf, sizeof(buf), "{\"flushed\":true,"
			    "\"checkpoint_lsn\":%" PRIu64 "}",
			    shm_load(&M.shm.hdr->checkpoint_lsn));
			control_reply(c->fd, CTL_OK, buf, n);
			c->flush_seq = 0;
		} else if (t > c->deadline_ms || M.state == FAST_STOP) {
			n = snprintf(buf, sizeof(buf), "{\"error\":\"flush did "
			    "not complete (is PostgreSQL reachable?)\"}");
			control_reply(c->fd, CTL_FAILED, buf, n);
			c->flush_seq = 0;
		}
	}
}

static void
ctl_accept(void)
{
	int fd, i;

	while ((fd = accept4(M.ctl_fd, NULL, NULL, SOCK_NONBLOCK |
	    SOCK_CLOEXEC)) != -1) {
		for (i = 0; i < CONTROL_MAX_CLIENTS && M.clients[i]; i++)
			;
		if (i == CONTROL_MAX_CLIENTS ||
		    (M.clients[i] = calloc(1, sizeof(**M.clients))) == NULL) {
			/* An answer, so that tallyctl can say why. */
			control_reply_str(fd, CTL_FAILED, "{\"error\":\"too "
			    "many control connections\"}");
			close(fd);
			continue;
		}
		M.clients[i]->fd = fd;
		M.clients[i]->last_ms = master_now_ms();
	}
}

/*
 * tallyctl sends its request at once and leaves with the answer: a
 * client that sits idle would only hold one of the few slots, and a
 * local user could take them all.
 */
static void
ctl_close_idle(void)
{
	uint64_t t = master_now_ms();

	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (M.clients[i] != NULL && M.clients[i]->flush_seq == 0 &&
		    t - M.clients[i]->last_ms > CTL_IDLE_MS) {
			log_debug("control connection idle for %d ms: "
			    "closing it", CTL_IDLE_MS);
			master_ctl_close(i);
		}
}

/* One pass of the control socket: new clients, requests, answers. */
void
master_ctl_serve(struct pollfd *pfd, const int *slot, int npfd)
{
	for (int k = 2; k < npfd; k++) {
		int i = slot[k], rc;

		if (M.clients[i] == NULL || !(pfd[k].revents &
		    (POLLIN | POLLHUP | POLLERR)))
			continue;
		rc = control_read(M.clients[i]);
		if (rc == 1) {
			M.clients[i]->last_ms = master_now_ms();
			rc = ctl_dispatch(M.clients[i]);
		}
		if (rc == -1)
			master_ctl_close(i);
	}
	if (npfd > 1 && (pfd[1].revents & POLLIN))
		ctl_accept();
	ctl_flush_waiters();
	ctl_close_idle();
}

int
master_pollfds(struct pollfd *pfd, int *slot, int sigfd)
{
	int n = 0;

	pfd[n].fd = sigfd;
	pfd[n++].events = POLLIN;
	pfd[n].fd = M.ctl_fd;
	pfd[n++].events = M.ctl_fd != -1 ? POLLIN : 0;
	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++) {
		if (M.clients[i] == NULL)
			continue;
		slot[n] = i;
		pfd[n].fd = M.clients[i]->fd;
		pfd[n++].events = POLLIN;
	}
	return n;
}
