/*
 * The worker's own state, shared by its files: worker.c (the process, its
 * sockets and its event loop), worker_http.c (routing, responses and the
 * probes), worker_increment.c (POST and GET of /increment, with their
 * Idempotency-Keys and look-ups in PostgreSQL) and worker_batch.c
 * (batches of increments, written to the journal and acknowledged once
 * durable).  Nothing outside the worker includes this.
 *
 * A worker is one process with one event loop: its state is one
 * structure, W.
 */
#ifndef TALLY_WORKER_INT_H
#define TALLY_WORKER_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include "config.h"
#include "counters.h"
#include "idem.h"
#include "journal.h"
#include "metrics.h"
#include "pgread.h"
#include "shm.h"

/*
 * Lives in a request's pool and points at our pointer to the request:
 * when h2o frees the request (the client went away, an HTTP/2 stream was
 * reset) the pointer is cleared, so we never answer a freed request.
 */
struct req_token {
	h2o_req_t	**ref;	/* NULL once we answered and let go */
	uint64_t	 t0;	/* arrival, for the latency histogram */
	enum metrics_route route;
};

/* The request being answered, for its metrics. */
struct req_ctx {
	h2o_req_t		*req;
	uint64_t		 t0;
	enum metrics_route	 route;
};

/*
 * An increment past its checks, on its way to the journal.  Its key and
 * Idempotency-Key live in the request being handled, or in the look-up
 * that parked it.
 */
struct post {
	const char	*key;
	size_t		 key_len;
	int64_t		 value;
	const char	*ik;
	size_t		 ik_len;
	struct idem_entry *ie;
	int		 asked;		/* look-ups of its total so far */
};

struct batch;

extern struct worker {
	const struct config	*cf;
	struct shm		*shm;
	struct shm_hdr		*h;
	struct shm_slot		*slot;
	struct counter_owner	*own;	/* our ledger of held increments */
	int			 slotno;
	struct journal		 j;
	h2o_globalconf_t	 h2o;
	h2o_context_t		 ctx;
	h2o_accept_ctx_t	 accept;
	h2o_evloop_t		*loop;
	h2o_socket_t		*listeners[CONFIG_MAX_LISTEN];
	int			 nlisten;
	uint64_t		 nconns;	/* open client connections */
	uint64_t		 max_conns;
	int			 paused;	/* listeners out of the loop */
	h2o_timeout_t		 resume_timeout;
	h2o_timeout_entry_t	 resume_entry;
	h2o_socket_t		*wake;
	h2o_timeout_t		 close_timeout;
	h2o_timeout_entry_t	 close_entry;
	struct batch		*open;		/* collecting requests */
	struct batch		*wait_head;	/* written, awaiting sync */
	struct batch		*wait_tail;
	struct batch		*free;
	uint8_t			*frame;		/* scratch for one frame */
	size_t			 frame_cap;
	struct pgread		*pg;
	int			 lookups;	/* waiting on PostgreSQL */
	int			 group;
	struct metrics_slot	*mslot;
	struct req_ctx		 cur;	/* the request being answered */
	struct req_ctx		 outer;	/* the one cur interrupted */
	uint64_t		 now;	/* answer time of a batch, or 0 */
	uint64_t		 flush_asked;	/* worker_ask_flush, ns */
	pid_t			 pid;	/* glibc asks the kernel each time */
} W;

/* worker_http.c */
int	worker_on_req(h2o_handler_t *self, h2o_req_t *req);
struct req_token *worker_token_new(h2o_req_t *req, h2o_req_t **ref);
void	worker_resume(struct req_token *t, h2o_req_t *req);
void	worker_resume_at(h2o_req_t *req, uint64_t t0,
	    enum metrics_route route);
void	worker_respond(h2o_req_t *req, int status, const char *body,
	    size_t len);
int	worker_respond_error(h2o_req_t *req, int status, const char *msg);
int	worker_respond_retry(h2o_req_t *req, const char *msg);
void	worker_respond_total(h2o_req_t *req, int status, const char *key,
	    size_t key_len, int64_t total, int get);

/* worker_increment.c */
int	worker_post(h2o_req_t *req);
int	worker_post_ask(h2o_req_t *req, const struct post *p);
int	worker_get(h2o_req_t *req, const char *raw, size_t raw_len);

/* worker_batch.c */
int	worker_batch_add(h2o_req_t *req, const struct post *p,
	    const struct counters_seed *seed);
void	worker_close_batch(h2o_timeout_entry_t *entry);
void	worker_ack(void);
void	worker_on_wake(h2o_socket_t *sock, const char *err);
void	worker_ask_flush(void);
int	worker_backlog_full(void);

#endif
