/*
 * h2o-null: the ceiling of tallyd's HTTP stack, for contrib/bench.
 *
 * A prefork libh2o evloop server shaped like tallyd's workers (one
 * listening socket bound before fork() and shared by every worker, the
 * event loop and h2o context created after it, accept drained per
 * readiness event) that answers every request at once with 202 and a
 * small JSON body.  It parses nothing and keeps nothing, so the gap
 * between it and tallyd is what tallyd's own work costs.
 *
 *	h2o-null [-a ADDR] [-p PORT] [-w WORKERS]
 *
 * HTTP/1.1 keep-alive and cleartext HTTP/2 (prior knowledge or Upgrade)
 * are both served.  SIGTERM or SIGINT stops the workers and exits 0.
 */
#define H2O_USE_LIBUV 0

#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <h2o.h>

#define NULL_MAX_WORKERS	256
#define NULL_BODY		"{\"key\":\"k\",\"value\":1}"

static volatile sig_atomic_t	null_stop;

static void
null_on_signal(int sig)
{
	null_stop = sig;
}

static int
null_on_req(h2o_handler_t *self, h2o_req_t *req)
{
	(void)self;
	req->res.status = 202;
	req->res.reason = "Accepted";
	req->res.content_length = sizeof(NULL_BODY) - 1;
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE,
	    NULL, H2O_STRLIT("application/json"));
	h2o_send_inline(req, NULL_BODY, sizeof(NULL_BODY) - 1);
	return 0;
}

static h2o_accept_ctx_t	null_accept;

static void
null_on_accept(h2o_socket_t *listener, const char *err)
{
	h2o_socket_t *sock;

	if (err != NULL)
		return;
	/* One readiness event may stand for many connections. */
	while ((sock = h2o_evloop_socket_accept(listener)) != NULL)
		h2o_accept(&null_accept, sock);
}

static void __attribute__((noreturn))
null_worker(int lfd)
{
	static h2o_globalconf_t conf;
	static h2o_context_t ctx;
	h2o_hostconf_t *host;
	h2o_pathconf_t *path;
	h2o_handler_t *handler;
	h2o_evloop_t *loop;
	h2o_socket_t *listener;
	struct sigaction sa;

	/* Go with the parent, even if it is killed with SIGKILL. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() == 1)
		_exit(0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	h2o_config_init(&conf);
	host = h2o_config_register_host(&conf,
	    h2o_iovec_init(H2O_STRLIT("default")), 65535);
	path = h2o_config_register_path(host, "/", 0);
	handler = h2o_create_handler(path, sizeof(*handler));
	handler->on_req = null_on_req;

	/* After fork(): an epoll fd belongs to one process. */
	loop = h2o_evloop_create();
	h2o_context_init(&ctx, loop, &conf);
	null_accept.ctx = &ctx;
	null_accept.hosts = conf.hosts;
	listener = h2o_evloop_socket_create(loop, lfd,
	    H2O_SOCKET_FLAG_DONT_READ);
	h2o_socket_read_start(listener, null_on_accept);

	for (;;) {
		if (h2o_evloop_run(loop, INT32_MAX) != 0 && errno != EINTR) {
			perror("h2o-null: event loop");
			_exit(1);
		}
	}
}

static int
null_listen(const char *addr, const char *port)
{
	struct addrinfo hints, *res, *ai;
	int fd = -1, on = 1, rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
	if ((rc = getaddrinfo(addr, port, &hints, &res)) != 0) {
		fprintf(stderr, "h2o-null: %s port %s: %s\n", addr, port,
		    gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
		    ai->ai_protocol);
		if (fd == -1)
			continue;
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on,
		    sizeof(on)) == 0 &&
		    bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
		    listen(fd, SOMAXCONN) == 0)
			break;
		close(fd);
		fd = -1;
	}
	if (fd == -1)
		fprintf(stderr, "h2o-null: cannot listen on %s port %s: %s\n",
		    addr, port, strerror(errno));
	freeaddrinfo(res);
	return fd;
}

static void
null_usage(void)
{
	fprintf(stderr,
	    "usage: h2o-null [-a ADDR] [-p PORT] [-w WORKERS]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char *addr = "127.0.0.1", *port = "3333";
	pid_t pids[NULL_MAX_WORKERS], pid;
	struct sigaction sa;
	sigset_t mask, old;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int nworkers = ncpu > 0 ? (int)ncpu : 1;
	int ch, lfd, i, alive, status, rc = 0;
	char *end;

	while ((ch = getopt(argc, argv, "a:p:w:h")) != -1) {
		switch (ch) {
		case 'a':
			addr = optarg;
			break;
		case 'p':
			port = optarg;
			break;
		case 'w':
			nworkers = (int)strtol(optarg, &end, 10);
			if (*optarg == '\0' || *end != '\0' || nworkers < 1 ||
			    nworkers > NULL_MAX_WORKERS)
				null_usage();
			break;
		default:
			null_usage();
		}
	}
	if (optind != argc)
		null_usage();

	signal(SIGPIPE, SIG_IGN);
	if ((lfd = null_listen(addr, port)) == -1)
		return 1;

	/* Block the stop signals until we wait for them. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = null_on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGCHLD, &sa, NULL);
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, &old);

	for (i = 0; i < nworkers; i++) {
		if ((pid = fork()) == -1) {
			perror("h2o-null: fork");
			nworkers = i;
			rc = 1;
			break;
		}
		if (pid == 0) {
			sigprocmask(SIG_SETMASK, &old, NULL);
			null_worker(lfd);
		}
		pids[i] = pid;
	}
	if (rc == 0)
		fprintf(stderr, "h2o-null: %d worker(s) on %s port %s\n",
		    nworkers, addr, port);

	/* Any worker dying ends the run: a benchmark must not limp on. */
	while (rc == 0 && null_stop != SIGTERM && null_stop != SIGINT) {
		sigsuspend(&old);
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
			for (i = 0; i < nworkers; i++)
				if (pids[i] == pid)
					pids[i] = 0;
			fprintf(stderr, "h2o-null: worker %d died (%s %d)\n",
			    (int)pid, WIFSIGNALED(status) ? "signal" : "exit",
			    WIFSIGNALED(status) ? WTERMSIG(status) :
			    WEXITSTATUS(status));
			rc = 1;
		}
	}

	for (i = 0; i < nworkers; i++)
		if (pids[i] > 0)
			kill(pids[i], SIGTERM);
	do {
		alive = 0;
		for (i = 0; i < nworkers; i++) {
			if (pids[i] <= 0)
				continue;
			if (waitpid(pids[i], &status, 0) == pids[i] ||
			    errno == ECHILD)
				pids[i] = 0;
			else
				alive = 1;
		}
	} while (alive);
	close(lfd);
	return rc;
}
