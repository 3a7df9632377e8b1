/*
 * The syncer.
 *
 * Workers publish frames in any order (each reserved its range up front),
 * so the syncer walks forward from the last position it knows to be
 * complete and stops at the first frame not yet published: everything
 * before that point is contiguous, and with sync = group one fdatasync of
 * it makes every waiting request durable at once (group commit).  Frames
 * that arrive during the fdatasync simply wait for the next pass.
 *
 * Under sync = group a worker runs the same scan and fdatasync itself at
 * the end of its loop pass (syncer_commit), which spares the round trip
 * through this process: two context switches and the workers' epoll
 * changes for requests held across loop passes.  This process still pads
 * dead workers' ranges, prepares segments, and syncs whatever a worker
 * left behind, every pass of its poll.
 *
 * The durable position only moves forward and only after a successful
 * fdatasync.  Once an fdatasync fails the journal's state on disk is
 * unknown (the kernel may have dropped the dirty pages), so, as PostgreSQL
 * does, nothing is ever acknowledged as durable again by this process
 * lifetime: sync_failed is set and workers refuse.
 *
 * A complete frame that fails its check before it is durable was damaged
 * after its writer published it (memory, or the file under the mapping).
 * Nothing past it can be made durable, so seen twice it is reported as
 * corruption (corrupt_lsn, for /readyz) and increments are refused from
 * then on, like a journal that cannot be written.
 *
 * A flush request (tallyctl flush bumps flush_seq) is served at once,
 * whatever sync_interval: the syncer notes where the reservations end,
 * waits for the frames up to there to be published (a writer's copy takes
 * microseconds), syncs them and says so in flush_synced; the flusher then
 * takes everything that was acknowledged before the request.
 */
#include <sys/eventfd.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "proc.h"
#include "syncer.h"

/*
 * Waits before the journal is declared writable again after a worker
 * failed to write it: doubled each time, reset once it stayed writable.
 */
#define SYNCER_RETRY_MIN_US	100000
#define SYNCER_RETRY_MAX_US	10000000

static volatile sig_atomic_t syncer_stop;	/* 1 graceful, 2 fast */
static uint64_t syncer_bad_lsn;		/* a bad frame seen once, 0: none */
static int syncer_stuck;		/* ... and again: given up there */

static int	syncer_sync(struct journal *, struct shm_hdr *, uint64_t);

static void
syncer_signal(int sig)
{
	syncer_stop = sig == SIGQUIT ? 2 : 1;
}

void
syncer_kick(int efd)
{
	uint64_t one = 1;

	/* A full counter still wakes the reader: ignoring EAGAIN is fine. */
	(void)write(efd, &one, sizeof(one));
}

static uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * Whether a worker, living, notes at s what it reserves or tries for.
 * Read before the orphans: the master hands a dead worker's notes to an
 * orphan entry before it clears them, so a note that moves meanwhile is
 * seen in one place or the other.
 */
static int
syncer_noted(struct shm_hdr *h, uint64_t s)
{
	for (int k = 0; k < CONFIG_MAX_WORKERS; k++)
		if (shm_load(&h->slots[k].res_start) == s ||
		    shm_load(&h->slots[k].res_try[0]) == s)
			return 1;
	return 0;
}

/*
 * Whether some writer took the journal on from e: the insert position is
 * there, a living worker or a dead one noted e as where it reserved or
 * tried to, or a frame starts there.  Each of those means the insert
 * position once stood at e.  A writer notes before it moves the insert
 * position and publishes its frame before it clears its notes, so reading
 * in the same order misses none of them.
 */
static int
syncer_taken_on(struct journal *j, struct shm_hdr *h, uint64_t e)
{
	const uint64_t *f;

	if (shm_load(&h->insert_lsn) == e || syncer_noted(h, e))
		return 1;
	for (int k = 0; k < CONFIG_MAX_WORKERS; k++)
		if (shm_load(&h->orphan_start[k]) == e)
			return 1;
	f = (const uint64_t *)(const void *)journal_at(j,
	    journal_lsn_normalize(j->seg_size, e), 0);
	return f != NULL && __atomic_load_n(f, __ATOMIC_ACQUIRE) != 0;
}

/*
 * A worker died while it tried for the range from s (orphan i), before it
 * noted whether it won: it did if the hole at p is where that range starts
 * and nobody else may own it.  A living winner notes s before its try and
 * keeps it noted until its frame is published; the frame is looked at
 * again after the notes, so that one published meanwhile is seen.
 *
 * Two or more workers may have died trying from the same s, all unsure
 * (they read the same insert position, one exchange won, and the losers
 * died before their next try).  The winner's end is where the insert
 * position went next, so the journal was taken on from there; a loser's
 * end either lies inside the winner's hole, where nobody ever stood, or
 * past it, where the winner's end comes first.  The winner is the first
 * end taken on.
 */
static int
syncer_orphan_won(struct journal *j, struct shm_hdr *h, int i, uint64_t s,
    uint64_t p)
{
	const uint64_t *f;
	uint64_t best = 0;
	int rivals = 0, won = -1;

	if (p != journal_lsn_normalize(j->seg_size, s) || syncer_noted(h, s))
		return 0;
	for (int k = 0; k < CONFIG_MAX_WORKERS; k++) {
		uint64_t o = shm_load(&h->orphan_start[k]);

		if (o == SHM_ORPHAN_BUSY)
			return 0;	/* being added: look again later */
		if (k != i && o == s) {
			if (!h->orphan_unsure[k])
				return 0;	/* it noted that it won */
			rivals++;
		}
	}
	f = (const uint64_t *)(const void *)journal_at(j, p, 0);
	if (f == NULL || __atomic_load_n(f, __ATOMIC_ACQUIRE) != 0)
		return 0;
	if (rivals == 0)
		return 1;
	for (int k = 0; k < CONFIG_MAX_WORKERS; k++) {
		uint64_t e;

		/* The end is written before the start is released. */
		if (shm_load(&h->orphan_start[k]) != s)
			continue;
		e = shm_load(&h->orphan_end[k]);
		if ((won == -1 || e < best) && syncer_taken_on(j, h, e)) {
			won = k;
			best = e;
		}
	}
	return won == i;
}

/* If a dead worker's reservation holds up position p, pad it out. */
static int
syncer_fill_orphan(struct journal *j, struct shm_hdr *h, uint64_t p)
{
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++) {
		uint64_t s = shm_load(&h->orphan_start[i]);
		uint64_t e = shm_load(&h->orphan_end[i]);

		if (s == 0 || s == SHM_ORPHAN_BUSY)
			continue;
		if (e <= p) {
			/* Its owner got further than we feared: nothing to do. */
			shm_store(&h->orphan_start[i], 0);
			continue;
		}
		if (p < journal_lsn_normalize(j->seg_size, s))
			continue;
		if (h->orphan_unsure[i] && !syncer_orphan_won(j, h, i, s, p))
			continue;
		if (journal_pad(j, p, e) == -1) {
			log_warn("cannot pad dead worker's journal "
			    "range %llu..%llu", (unsigned long long)p,
			    (unsigned long long)e);
			return 0;
		}
		log_info("padded journal range %llu..%llu left unwritten "
		    "by a worker", (unsigned long long)p, (unsigned long long)e);
		shm_store(&h->orphan_start[i], 0);
		return 1;
	}
	return 0;
}

/*
 * A published frame at lsn fails its check.  The first sight could only
 * be a writer's race; the same frame bad on the next pass is damage.
 */
static void
syncer_bad_frame(struct journal *j, struct shm_hdr *h, uint64_t lsn,
    const char *why)
{
	char name[32];

	if (syncer_stuck || syncer_bad_lsn != lsn) {
		syncer_bad_lsn = lsn;
		return;
	}
	syncer_stuck = 1;
	journal_seg_name(name, sizeof(name), journal_seg_base(j->seg_size,
	    lsn));
	log_warnx("journal corrupt in %s/%s at offset %llu (LSN %llu), "
	    "before it was made durable: %s; nothing past it can be "
	    "acknowledged: refusing increments (inspect with 'tallyctl "
	    "journal verify')", j->dir, name,
	    (unsigned long long)(lsn % j->seg_size), (unsigned long long)lsn,
	    why);
	if (shm_load(&h->corrupt_lsn) == 0) {
		snprintf(h->corrupt_why, sizeof(h->corrupt_why), "%s", why);
		shm_store(&h->corrupt_lsn, lsn);
	}
	h->journal_errno = EIO;
}

/*
 * Walk the complete frames from 'from'; returns the end of the run.  Only
 * the syncer pads dead workers' ranges (fill).
 */
static uint64_t
syncer_scan(struct journal *j, struct shm_hdr *h, uint64_t from, int fill)
{
	uint64_t p = from, limit = shm_load(&h->insert_lsn);
	struct frame_info fi;
	enum frame_status st;
	const uint8_t *f;

	for (;;) {
		uint64_t q = journal_lsn_normalize(j->seg_size, p);

		if (q >= limit)
			break;
		if ((f = journal_at(j, q, 0)) == NULL)
			break;	/* its writer has not created the segment yet */
		st = journal_frame_check(f, j->seg_size - q % j->seg_size, q,
		    h->epoch, &fi);
		if (st == FRAME_OK || st == FRAME_PADDING) {
			p = q + fi.len;
			continue;
		}
		if (st == FRAME_EMPTY && fill && syncer_fill_orphan(j, h, q))
			continue;
		/* Judged by the syncer alone: it sees every frame twice. */
		if (st == FRAME_BAD && fill)
			syncer_bad_frame(j, h, q, fi.why);
		break;
	}
	return p;
}

/*
 * Wake the workers that sleep until a position now durable.  A worker
 * sets wait_lsn, then reads durable_lsn again; we moved durable_lsn, then
 * read wait_lsn: one of the two sees the other (both sequentially
 * consistent), so no wake-up is lost.
 */
static void
syncer_wake_workers(struct shm_hdr *h)
{
	uint64_t durable;

	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	durable = shm_load(&h->durable_lsn);
	for (uint32_t i = 0; i < h->nslots; i++) {
		struct shm_slot *s = &h->slots[i];
		uint64_t w = __atomic_load_n(&s->wait_lsn, __ATOMIC_SEQ_CST);

		if (s->pid != 0 && s->efd != -1 && w != 0 && w <= durable)
			syncer_kick(s->efd);
	}
}

/*
 * Create the segments writers are about to need, so that preallocation
 * never runs on a worker's event loop; and, after a full disk, notice when
 * the journal can be written again: then the workers accept increments
 * once more (an fdatasync failure, by contrast, is never forgiven).
 *
 * What this process can write, a worker may still not: a segment file
 * removed under us that this process has mapped and the worker has not,
 * a worker out of descriptors.  Each time the journal fails again soon
 * after, the next "written again" waits twice as long, up to 10 s, so
 * that the workers and this process do not take turns in a loop, with a
 * log line each turn.
 */
static void
syncer_prepare(struct journal *j, struct shm_hdr *h)
{
	static int warned;
	static uint64_t retry_at, retry_us = SYNCER_RETRY_MIN_US;
	uint64_t ins = shm_load(&h->insert_lsn);
	uint64_t cur = journal_seg_base(j->seg_size, ins);
	int err = h->journal_errno;
	uint64_t now;

	if (err == 0 && retry_at != 0 &&
	    now_us() >= retry_at + SYNCER_RETRY_MAX_US) {
		retry_at = 0;
		retry_us = SYNCER_RETRY_MIN_US;
	}
	if (err == 0 && ins % j->seg_size <= j->seg_size / 2)
		return;
	/* The segment being written: without it nothing can be. */
	if (journal_at(j, cur + JOURNAL_SEG_HDR, 1) == NULL) {
		if (err == 0) {
			log_warn("cannot create journal segment at LSN "
			    "%llu in %s; refusing increments until it can",
			    (unsigned long long)cur, j->dir);
			h->journal_errno = errno ? errno : EIO;
		}
		return;
	}
	if (err != 0 && !h->sync_failed && !syncer_stuck &&
	    (now = now_us()) >= retry_at) {
		h->journal_errno = 0;
		log_warnx("journal %s can be written again; accepting "
		    "increments", j->dir);
		retry_at = now + retry_us;
		retry_us = retry_us * 2 < SYNCER_RETRY_MAX_US ? retry_us * 2 :
		    SYNCER_RETRY_MAX_US;
	}
	/* The next one: its lack is a warning until it is needed. */
	if (journal_at(j, cur + j->seg_size + JOURNAL_SEG_HDR, 1) == NULL) {
		if (!warned)
			log_warn("cannot prepare the next journal "
			    "segment at LSN %llu in %s; increments will be "
			    "refused when this one is full",
			    (unsigned long long)(cur + j->seg_size), j->dir);
		warned = 1;
	} else
		warned = 0;
}

int
syncer_commit(struct journal *j, struct shm_hdr *h, uint64_t want)
{
	uint64_t written;

	if (__atomic_load_n(&h->sync_failed, __ATOMIC_ACQUIRE))
		return -1;
	if (shm_load(&h->durable_lsn) >= want)
		return 1;
	written = syncer_scan(j, h, shm_load(&h->written_lsn), 0);
	shm_advance(&h->written_lsn, written);
	if (written < want)
		return 0;
	if (syncer_sync(j, h, written) == -1)
		return -1;
	syncer_wake_workers(h);
	return 1;
}

static int
syncer_sync(struct journal *j, struct shm_hdr *h, uint64_t to)
{
	uint64_t from = shm_load(&h->durable_lsn);
	uint64_t t0 = metrics_now();

	if (to <= from)
		return 0;
	while (journal_sync(j, from, to) == -1) {
		uint64_t now = shm_load(&h->durable_lsn);

		/*
		 * Another process synced past 'from' meanwhile, and the
		 * flusher may have recycled the segment this one was about
		 * to open: go on from where the journal is durable now.
		 */
		if (now > from) {
			from = now;
			if (to <= from)
				return 0;
			continue;
		}
		log_warn("fdatasync of journal %s LSN %llu..%llu "
		    "failed; refusing all further acknowledgements", j->dir,
		    (unsigned long long)from, (unsigned long long)to);
		h->journal_errno = errno ? errno : EIO;
		__atomic_store_n(&h->sync_failed, 1, __ATOMIC_RELEASE);
		return -1;
	}
	shm_advance(&h->durable_lsn, to);
	shm_count(&h->stats.fsyncs, 1);
	metrics_hist_add(&h->metrics.fsync, t0);
	return 0;
}

int
syncer_main(const struct config *cf, struct shm *shm)
{
	struct shm_hdr *h = shm->hdr;
	struct journal j;
	struct sigaction sa;
	struct pollfd pfd;
	uint64_t last_sync = now_us(), buf, written, seq;
	uint64_t req_seq = 0, req_lsn = 0;	/* flush request being served */
	int group = cf->sync == SYNC_GROUP, stop, serve;

	log_set_role("syncer");
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = syncer_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGQUIT, &sa, NULL);
	if (journal_open(&j, cf->journal_dir, h->seg_size, h->epoch,
	    cf->node) == -1)
		fatal(1, "cannot open journal directory %s",
		    cf->journal_dir);
	pfd.fd = h->syncer_efd;
	pfd.events = POLLIN;
	for (;;) {
		int timeout = 50;

		if (!group) {
			uint64_t due = last_sync + cf->sync_interval_us, t = now_us();

			timeout = due > t ? (int)((due - t + 999) / 1000) : 0;
			if (timeout > 50)
				timeout = 50;
		}
		if (syncer_stop == 2)
			break;
		if (poll(&pfd, 1, syncer_stop ? 0 : timeout) > 0)
			(void)read(h->syncer_efd, &buf, sizeof(buf));
		/*
		 * The master signals a graceful stop once the workers are
		 * gone: only a scan begun after the signal has seen their last
		 * frames, so only that pass may be the last.
		 */
		stop = syncer_stop;
		/*
		 * Every frame acknowledged before the request lies below the
		 * insert position read after it.
		 */
		if (req_seq == 0 && (seq = shm_load(&h->flush_seq)) >
		    shm_load(&h->flush_synced)) {
			req_seq = seq;
			req_lsn = journal_lsn_normalize(j.seg_size,
			    shm_load(&h->insert_lsn));
		}
		written = syncer_scan(&j, h, shm_load(&h->written_lsn), 1);
		if (written > shm_load(&h->written_lsn))
			shm_advance(&h->written_lsn, written);
		/*
		 * Past a damaged frame or a failed fdatasync nothing more
		 * becomes durable: the request is answered with what is.
		 */
		serve = req_seq != 0 && (journal_lsn_normalize(j.seg_size,
		    written) >= req_lsn || syncer_stuck || h->sync_failed ||
		    stop);
		if (!h->sync_failed && (group || syncer_stop || serve ||
		    now_us() - last_sync >= cf->sync_interval_us)) {
			if (syncer_sync(&j, h, written) == 0 && group)
				syncer_wake_workers(h);
			last_sync = now_us();
		}
		if (serve) {
			shm_store(&h->flush_synced, req_seq);
			req_seq = 0;
			syncer_kick(h->flusher_efd);
		}
		if (stop == 1)
			break;
		proc_reloaded(h);
		journal_forget(&j, shm_load(&h->start_lsn));
		syncer_prepare(&j, h);
	}
	journal_close(&j);
	return 0;
}
