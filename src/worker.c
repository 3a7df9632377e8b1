/*
 * The worker: HTTP in, journal frames out, 202 once durable.
 *
 * One process with one libh2o event loop, serving HTTP/1.1 and h2c on the
 * listening sockets the master bound.  This file holds the process: its
 * signals, its sockets, its loop and how it stops.  What a request goes
 * through is in worker_http.c (routing and answers), worker_increment.c
 * (the increment routes) and worker_batch.c (the journal and group
 * commit); worker_int.h holds what they share.
 */
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "proc.h"
#include "worker.h"
#include "worker_int.h"

#define STOP_GRACE_MS	10000
#define HEAP_KEEP	(64 << 20)	/* free heap kept, not returned */

struct worker W;

static volatile sig_atomic_t worker_stop;	/* 1 graceful, 2 fast */

static void
worker_signal(int sig)
{
	worker_stop = sig == SIGQUIT ? 2 : 1;
}

/*
 * Whether the frame a dead predecessor was publishing at lsn made it;
 * *end: where it ends.
 */
static int
worker_frame_end(uint64_t lsn, uint64_t *end)
{
	struct frame_info fi;
	const uint8_t *f;

	if ((f = journal_at(&W.j, lsn, 0)) == NULL) {
		log_warn("cannot read journal LSN %llu to settle the previous "
		    "worker's last frame; taking it as unwritten",
		    (unsigned long long)lsn);
		return 0;
	}
	if (journal_frame_check(f, W.h->seg_size - lsn % W.h->seg_size,
	    lsn, W.h->epoch, &fi) != FRAME_OK)
		return 0;
	*end = lsn + fi.len;
	return 1;
}

static int
worker_frame_published(void *arg, uint64_t lsn)
{
	uint64_t end;

	(void)arg;
	return worker_frame_end(lsn, &end);
}

/*
 * The same, for answering its requests now: as for any answer, the frame
 * must be as durable as journal.sync promises.
 */
static int
worker_frame_answerable(void *arg, uint64_t lsn, uint64_t *end)
{
	(void)arg;
	return !__atomic_load_n(&W.h->sync_failed, __ATOMIC_ACQUIRE) &&
	    worker_frame_end(lsn, end) && *end <= shm_load(W.group ?
	    &W.h->durable_lsn : &W.h->written_lsn);
}

/* A key's total as a worker answers it; -1 when it is not known. */
static int
worker_key_total(void *arg, const char *key, size_t len, int64_t *total)
{
	(void)arg;
	return counters_peek_total(W.shm->counters, key, len, total) ==
	    COUNTERS_PEEK_HELD ? 0 : -1;
}

/*
 * The keyed requests the previous worker in this slot journaled but did
 * not answer, once its increments are settled: those that made it count,
 * so a retry must be a replay of them, not a second increment.
 */
static void
worker_adopt_keys(void)
{
	pid_t pid = W.slot->orphan_pid;
	uint64_t n;

	if (pid == 0)
		return;
	n = idem_adopt_owner(W.shm->idem, pid, worker_frame_answerable,
	    worker_key_total, NULL, idem_now_us() + W.cf->idem_ttl_us);
	W.slot->orphan_pid = 0;
	log_info("settled the Idempotency-Keys worker %d left in flight: "
	    "%llu in the journal, kept for their retries; the rest "
	    "released", (int)pid, (unsigned long long)n);
}

/* --- sockets and the loop --- */

/*
 * At max_connections (or out of descriptors) the worker takes its
 * listeners out of the loop instead of accepting and closing: the kernel
 * keeps new connections in the backlog, and the other workers, which
 * share the listening sockets, take them meanwhile.
 */
static void
worker_on_accept(h2o_socket_t *, const char *);

static void
worker_pause_accept(void)
{
	if (W.paused)
		return;
	W.paused = 1;
	for (int i = 0; i < W.nlisten; i++)
		if (W.listeners[i])
			h2o_socket_read_stop(W.listeners[i]);
}

static void
worker_resume_accept(void)
{
	if (!W.paused || worker_stop)
		return;
	W.paused = 0;
	if (h2o_timeout_is_linked(&W.resume_entry))
		h2o_timeout_unlink(&W.resume_entry);
	for (int i = 0; i < W.nlisten; i++)
		if (W.listeners[i])
			h2o_socket_read_start(W.listeners[i],
			    worker_on_accept);
}

static void
worker_on_resume_timeout(h2o_timeout_entry_t *entry)
{
	if (W.nconns < W.max_conns)
		worker_resume_accept();
}

static void
worker_on_conn_close(void *data)
{
	W.nconns--;
	if (W.nconns < W.max_conns && !h2o_timeout_is_linked(&W.resume_entry))
		worker_resume_accept();
}

static void
worker_on_accept(h2o_socket_t *listener, const char *err)
{
	h2o_socket_t *sock;

	if (err != NULL)
		return;
	/* Drain the backlog: one readiness event may stand for many. */
	while (W.nconns < W.max_conns) {
		errno = 0;
		if ((sock = h2o_evloop_socket_accept(listener)) == NULL) {
			/*
			 * Out of descriptors: the connection stays in the
			 * backlog and the listener stays readable, so wait
			 * rather than spin until one is freed.
			 */
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				log_warn("accept: pausing for a second with "
				    "%llu connections open",
				    (unsigned long long)W.nconns);
				worker_pause_accept();
				h2o_timeout_link(W.loop, &W.resume_timeout,
				    &W.resume_entry);
			}
			return;
		}
		W.nconns++;
		sock->on_close.cb = worker_on_conn_close;
		sock->on_close.data = NULL;
		h2o_accept(&W.accept, sock);
	}
	worker_pause_accept();
}

/*
 * Room for max_connections descriptors and a few more (journal segments,
 * PostgreSQL, the wake-up eventfd): raise the soft limit up to the hard
 * one, and accept fewer connections if even that is too low.
 */
static void
worker_fd_limit(void)
{
	struct rlimit rl;
	uint64_t want = W.cf->max_connections + 64;

	W.max_conns = W.cf->max_connections;
	if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
		return;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ||
		    rl.rlim_max > want ? want : rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		W.max_conns = rl.rlim_cur > 128 ? rl.rlim_cur - 64 : 64;
		log_warnx("open file limit is %llu: accepting at most %llu "
		    "connections per worker, not server.max_connections = %llu",
		    (unsigned long long)rl.rlim_cur,
		    (unsigned long long)W.max_conns,
		    (unsigned long long)W.cf->max_connections);
	}
}

static void
worker_setup_h2o(void)
{
	h2o_hostconf_t *host;
	h2o_pathconf_t *path;
	h2o_handler_t *handler;

	h2o_config_init(&W.h2o);
	/* Bodies over max_body get our JSON 413; h2o cuts off far beyond. */
	W.h2o.max_request_entity_size = W.cf->max_body * 4 + 65536;
	/*
	 * h2o 2.2 has one HTTP/1.1 timer, armed when a request is awaited
	 * and never pushed back by reads: it bounds the idle keep-alive
	 * wait, the header and the body together, so a client trickling
	 * bytes cannot hold a connection.  HTTP/2's idle timer runs while
	 * no request is being answered.
	 */
	W.h2o.http1.req_timeout = W.cf->request_timeout_us / 1000;
	W.h2o.http2.idle_timeout = W.cf->idle_timeout_us / 1000;
	W.h2o.http1.upgrade_to_http2 = W.cf->http2;
	host = h2o_config_register_host(&W.h2o,
	    h2o_iovec_init(H2O_STRLIT("default")), 65535);
	path = h2o_config_register_path(host, "/", 0);
	handler = h2o_create_handler(path, sizeof(*handler));
	handler->on_req = worker_on_req;
	W.loop = h2o_evloop_create();
	h2o_context_init(&W.ctx, W.loop, &W.h2o);
	W.accept.ctx = &W.ctx;
	W.accept.hosts = W.h2o.hosts;
	/* h2o's timers count whole milliseconds: 200us must not become 0. */
	h2o_timeout_init(W.loop, &W.close_timeout,
	    (W.cf->commit_delay_us + 999) / 1000);
	W.close_entry.cb = worker_close_batch;
	h2o_timeout_init(W.loop, &W.resume_timeout, 1000);
	W.resume_entry.cb = worker_on_resume_timeout;
}

static void
worker_stop_accepting(void)
{
	for (int i = 0; i < W.nlisten; i++) {
		if (W.listeners[i]) {
			h2o_socket_read_stop(W.listeners[i]);
			h2o_socket_close(W.listeners[i]);
			W.listeners[i] = NULL;
		}
	}
}

/* What a graceful stop found, for its log line. */
struct drain {
	unsigned	busy;	/* a request begun: answered, then closed */
	unsigned	idle;	/* closed at once */
};

/*
 * A connection is busy while h2o's input holds bytes of a request (it
 * keeps the request until the response is sent, and a partly received
 * body until the body is complete) or the kernel holds bytes h2o has not
 * read yet.  h2o makes every request whose headers it parses from now on
 * close its connection (shutdown_requested); one parsed before the stop
 * is told here, so that its answer says Connection: close as well.
 *
 * An idle connection ends now.  Its socket belongs to h2o's connection,
 * which a close here would leave with a freed socket: shutting down the
 * read side makes h2o's next read see end-of-file instead, and h2o closes
 * the connection on its own path.  A request that arrives in between
 * is still read before that end-of-file, and answered if it came whole.
 */
static int
worker_drain_conn(h2o_req_t *req, void *arg)
{
	struct drain *d = arg;
	h2o_socket_t *sock;
	int fd, unread = 0;

	if ((sock = req->conn->callbacks->get_socket(req->conn)) == NULL)
		return 0;
	fd = h2o_socket_get_fd(sock);
	if (sock->input->size == 0 && ioctl(fd, FIONREAD, &unread) == -1)
		unread = 1;	/* cannot tell: let it finish */
	if (sock->input->size != 0 || unread != 0) {
		req->http1_is_persistent = 0;
		d->busy++;
		return 0;
	}
	/* ENOTCONN: the peer is gone already, as h2o will see. */
	if (shutdown(fd, SHUT_RD) == -1 && errno != ENOTCONN)
		log_warn("stopping: shutdown of an idle connection");
	d->idle++;
	return 0;
}

/*
 * The beginning of a graceful stop, as nginx does it: no new connections,
 * idle ones closed, and each of the others closed once it has answered
 * the request it began.  HTTP/2 connections get h2o's GOAWAY, which
 * ends them once their streams are answered.
 */
static void
worker_drain(void)
{
	struct drain d = { 0, 0 };

	worker_stop_accepting();
	h2o_context_request_shutdown(&W.ctx);
	W.h2o.http1.callbacks.foreach_request(&W.ctx, worker_drain_conn, &d);
	if (d.busy)
		log_info("stopping: %u connection%s with a request in "
		    "progress, %u idle closed", d.busy, d.busy == 1 ? "" : "s",
		    d.idle);
	else
		log_debug("stopping: closing %u idle connections", d.idle);
}

int
worker_main(const struct config *cf, struct shm *shm, int slot,
    const int *listen_fds, int nlisten)
{
	struct sigaction sa;
	struct timespec t0 = { 0, 0 }, t;
	int stopping = 0;

	log_set_role("worker");
	memset(&W, 0, sizeof(W));
	W.cf = cf;
	W.shm = shm;
	W.h = shm->hdr;
	W.slotno = slot;
	W.pid = getpid();
	W.slot = &shm->hdr->slots[slot];
	W.mslot = &shm->hdr->metrics.slots[slot];
	W.own = shm->owners[slot];
	W.group = cf->sync == SYNC_GROUP;
	/*
	 * Requests held until their frame is durable keep their pools, so
	 * the heap's top grows and shrinks with every batch; glibc would
	 * hand it back with brk() each time (a TLB flush) and fault it in
	 * again.  Keep it instead.
	 */
	mallopt(M_TRIM_THRESHOLD, HEAP_KEEP);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = worker_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGQUIT, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	if (journal_open(&W.j, cf->journal_dir, W.h->seg_size, W.h->epoch,
	    cf->node) == -1)
		fatal(1, "cannot open journal directory %s",
		    cf->journal_dir);
	/* No fdatasync waits on a client here: journal.c says why. */
	W.j.store = !W.group;
	if (counters_ledger_head(W.own) != W.own->tail) {
		uint64_t held = counters_ledger_head(W.own) - W.own->tail;
		uint64_t n = counters_owner_adopt(W.shm->counters, W.own,
		    worker_frame_published, NULL);

		log_info("settled %llu increments left by the previous worker "
		    "in slot %d: %llu added to the table, the rest released",
		    (unsigned long long)held, slot, (unsigned long long)n);
	}
	worker_adopt_keys();
	W.frame_cap = journal_frame_bound(JOURNAL_MAX_RAW);
	if ((W.frame = malloc(W.frame_cap)) == NULL)
		fatal(1, "out of memory");
	worker_fd_limit();
	worker_setup_h2o();
	if ((W.pg = pgread_new(W.loop, cf)) == NULL)
		fatalx(1, "cannot set up PostgreSQL look-ups");
	W.wake = h2o_evloop_socket_create(W.loop, W.slot->efd,
	    H2O_SOCKET_FLAG_DONT_READ);
	h2o_socket_read_start(W.wake, worker_on_wake);
	W.nlisten = nlisten;
	for (int i = 0; i < nlisten; i++) {
		W.listeners[i] = h2o_evloop_socket_create(W.loop,
		    listen_fds[i], H2O_SOCKET_FLAG_DONT_READ);
		h2o_socket_read_start(W.listeners[i], worker_on_accept);
	}

	while (worker_stop != 2) {
		if (worker_stop == 1) {
			if (!stopping) {
				worker_drain();
				clock_gettime(CLOCK_MONOTONIC, &t0);
				stopping = 1;
			}
			/* Answer what is in flight, then go. */
			if (W.open == NULL && W.wait_head == NULL &&
			    W.lookups == 0 && W.nconns == 0)
				break;
			clock_gettime(CLOCK_MONOTONIC, &t);
			if ((t.tv_sec - t0.tv_sec) * 1000 +
			    (t.tv_nsec - t0.tv_nsec) / 1000000 > STOP_GRACE_MS) {
				log_warnx("stopping after %d s with %llu "
				    "connections still in progress%s",
				    STOP_GRACE_MS / 1000,
				    (unsigned long long)W.nconns,
				    W.open || W.wait_head || W.lookups ?
				    " and requests unanswered" : "");
				break;
			}
		}
		if (h2o_evloop_run(W.loop, 100) != 0 && errno != EINTR)
			log_warn("event loop");
		/* In case a wake-up raced with our last check. */
		worker_ack();
		proc_reloaded(W.h);
		/* Segments the flusher removed: let their space go. */
		journal_forget(&W.j, shm_load(&W.h->start_lsn));
	}
	return 0;
}
