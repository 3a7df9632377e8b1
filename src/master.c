/*
 * The master process.
 *
 * It owns what must outlive any child: the lock on the state directory,
 * the listening sockets, the shared region and the eventfds.  It never
 * reads a request and never touches the journal, so no client and no
 * journal damage can crash it.  Its life is a small state machine:
 *
 *	STARTING	the startup child runs recovery; nothing listens yet
 *	RUNNING		children serve; a dead child is respawned into its
 *			slot with back-off, unless it exited PROC_EXIT_FATAL
 *	STOP_WORKERS	(SIGTERM/SIGINT) workers stop accepting, answer what
 *			is in flight and exit
 *	STOP_SYNCER	the syncer makes the last frames durable and exits
 *	STOP_FLUSHER	the flusher flushes everything to PostgreSQL and exits
 *	FAST_STOP	(SIGQUIT) every child is told to go now; the journal
 *			makes that safe
 *
 * Signals are blocked and read from a signalfd in the same poll() as the
 * control socket (master_control.c), so there are no handlers at all: the
 * loop does the work.
 */
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "control.h"
#include "lockfile.h"
#include "log.h"
#include "master.h"
#include "master_int.h"
#include "metrics.h"
#include "notify.h"
#include "proc.h"
#include "proctitle.h"
#include "shm.h"
#include "statsd.h"
#include "syncer.h"
#include "unixsock.h"

#define STOP_PHASE_MS	30000	/* then SIGKILL the phase's children */
#define FAST_STOP_MS	5000
#define BACKOFF_MIN_MS	100
#define BACKOFF_MAX_MS	5000
#define STABLE_MS	10000	/* a child that lived this long was healthy */
#define FLUSHER_WAIT_MS	3000	/* for its first PostgreSQL connection */

struct master M;

uint64_t
master_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
master_bind_one(const char *spec)
{
	char host[128], *port;
	struct addrinfo hints, *res, *ai;
	int fd = -1, on = 1, rc;

	/*
	 * Anyone who may reach the port may reach the socket: the directory
	 * it is in says who may.
	 */
	if (strncmp(spec, "unix:", 5) == 0) {
		if ((fd = unixsock_listen(spec + 5, 0666, 4096, (uid_t)-1,
		    (gid_t)-1)) == -2)
			fatalx(PROC_EXIT_FATAL, "another server is listening on "
			    "%s", spec);
		if (fd == -1)
			fatal(PROC_EXIT_FATAL, "cannot listen on %s", spec);
		return fd;
	}
	snprintf(host, sizeof(host), "%s", spec);
	if ((port = strrchr(host, ':')) == NULL)
		fatalx(PROC_EXIT_FATAL, "listen address '%s' has no port", spec);
	*port++ = '\0';
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	rc = getaddrinfo(strcmp(host, "*") == 0 || host[0] == '\0' ? NULL :
	    host, port, &hints, &res);
	if (rc != 0)
		fatalx(PROC_EXIT_FATAL, "listen address '%s': %s", spec,
		    gai_strerror(rc));
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK |
		    SOCK_CLOEXEC, 0);
		if (fd == -1)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
		    listen(fd, 4096) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd == -1)
		fatal(PROC_EXIT_FATAL, "cannot listen on %s", spec);
	return fd;
}

/*
 * One tallyd per state directory: an flock on state_dir/tallyd.lock,
 * held by the master and inherited by its children, so a restart is
 * refused while even an orphaned child still runs.  journal.dir may lie
 * elsewhere, and two instances writing one journal would overwrite each
 * other's acknowledged frames: it is locked the same way.
 */
static void master_lock_pid(void);

/* Make a directory only we read, as recovery does, or find it so. */
static void
master_lock_dir(const char *dir, const char *what)
{
	struct stat st;

	if (mkdir(dir, 0700) == -1 && errno != EEXIST)
		fatal(PROC_EXIT_FATAL, "cannot create %s %s", what, dir);
	if (stat(dir, &st) == -1)
		fatal(PROC_EXIT_FATAL, "cannot stat %s %s", what, dir);
	if (!S_ISDIR(st.st_mode))
		fatalx(PROC_EXIT_FATAL, "%s %s: Not a directory", what, dir);
	/* The journal holds every client's data: no one else reads it. */
	if (st.st_mode & 077) {
		log_info("%s %s was mode %03o; making it 0700", what, dir,
		    (unsigned)(st.st_mode & 0777));
		if (chmod(dir, 0700) == -1)
			log_warn("cannot chmod 0700 %s", dir);
	}
}

/* The lock file in dir, taken; refused when another tallyd holds it. */
static int
master_lock_file(const char *dir, const char *what)
{
	char holder[32];
	int fd;

	if ((fd = lockfile_take(dir, 1, holder, sizeof(holder))) != -1)
		return fd;
	if (errno == EWOULDBLOCK)
		fatalx(PROC_EXIT_FATAL, "another tallyd (pid %s) is running on "
		    "%s %s", holder, what, dir);
	fatal(PROC_EXIT_FATAL, "cannot open lock file %s/tallyd.lock", dir);
}

static void
master_lock(void)
{
	struct stat st, jst;

	master_lock_dir(M.cf->state_dir, "state directory");
	M.lock_fd = master_lock_file(M.cf->state_dir, "state directory");
	/* The default journal.dir is in state_dir: a second lock, harmless. */
	master_lock_dir(M.cf->journal_dir, "journal directory");
	/* A second flock of the same file would refuse us: we hold it. */
	if (stat(M.cf->state_dir, &st) == 0 &&
	    stat(M.cf->journal_dir, &jst) == 0 &&
	    st.st_dev == jst.st_dev && st.st_ino == jst.st_ino)
		M.journal_lock_fd = M.lock_fd;
	else
		M.journal_lock_fd = master_lock_file(M.cf->journal_dir,
		    "journal directory");
	master_lock_pid();
}

/* The lock files name the master, for the refusals above. */
static void
master_lock_pid(void)
{
	const int fds[] = { M.lock_fd, M.journal_lock_fd };
	const char *dirs[] = { M.cf->state_dir, M.cf->journal_dir };

	for (int i = 0; i < 2; i++)
		if (lockfile_write_pid(fds[i], getpid()) == -1)
			log_warn("cannot write lock file in %s", dirs[i]);
}

static void
master_pid_file(void)
{
	FILE *f = NULL;
	int fd;

	/* Not writable by others whatever the umask: init scripts kill it. */
	if ((fd = open(M.cf->pid_file, O_WRONLY | O_CREAT | O_TRUNC |
	    O_CLOEXEC, 0644)) == -1 || fchmod(fd, 0644) == -1 ||
	    (f = fdopen(fd, "w")) == NULL) {
		/* An init script could neither stop nor watch us. */
		fatal(PROC_EXIT_FATAL, "cannot write pid file %s",
		    M.cf->pid_file);
	}
	if (fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) == EOF) {
		int e = errno;

		unlink(M.cf->pid_file);
		errno = e;
		fatal(PROC_EXIT_FATAL, "cannot write pid file %s",
		    M.cf->pid_file);
	}
	M.pid_file_written = 1;
}

/*
 * The pid file and the control socket go with the master however it
 * exits: a start that fails in recovery (fatal(), so exit()) must not
 * leave a pid file that an init script would later kill, by then maybe
 * another process's.  Registered with atexit(), which the children
 * inherit and also run: only the master removes anything.
 */
static void
master_unlink(void)
{
	if (getpid() != M.pid)
		return;
	if (M.pid_file_written && unlink(M.cf->pid_file) == -1 &&
	    errno != ENOENT)
		log_warn("cannot remove pid file %s", M.cf->pid_file);
	M.pid_file_written = 0;
	if (M.ctl_made && unlink(M.cf->control_socket) == -1 &&
	    errno != ENOENT)
		log_warn("cannot remove control socket %s",
		    M.cf->control_socket);
	M.ctl_made = 0;
	/* The first nlisten were bound by us; one refused was not. */
	for (int i = 0; i < M.nlisten; i++)
		if (strncmp(M.cf->listen[i], "unix:", 5) == 0 &&
		    unlink(M.cf->listen[i] + 5) == -1 && errno != ENOENT)
			log_warn("cannot remove socket %s", M.cf->listen[i]);
	M.nlisten = 0;
}

static void
master_user(void)
{
	struct passwd *pw;
	struct group *gr;

	M.env.uid = (uid_t)-1;
	M.env.gid = (gid_t)-1;
	if (M.cf->user[0] == '\0')
		return;
	if ((pw = getpwnam(M.cf->user)) == NULL)
		fatalx(PROC_EXIT_FATAL, "unknown user '%s' (server.user)",
		    M.cf->user);
	M.env.uid = pw->pw_uid;
	M.env.gid = pw->pw_gid;
	if (M.cf->group[0]) {
		if ((gr = getgrnam(M.cf->group)) == NULL)
			fatalx(PROC_EXIT_FATAL, "unknown group '%s' "
			    "(server.group)", M.cf->group);
		M.env.gid = gr->gr_gid;
	}
	/* The children write here after dropping privileges. */
	if (chown(M.cf->state_dir, M.env.uid, M.env.gid) == -1 ||
	    chown(M.cf->journal_dir, M.env.uid, M.env.gid) == -1)
		fatal(PROC_EXIT_FATAL, "cannot hand %s to user %s",
		    M.cf->state_dir, M.cf->user);
}

static struct child *
child_by_pid(pid_t pid)
{
	for (int i = 0; i < M.nchildren; i++)
		if (M.children[i].pid == pid)
			return &M.children[i];
	return NULL;
}

static void
child_start(struct child *c)
{
	pid_t pid;

	if (c->role == PROC_WORKER) {
		struct shm_slot *s = &M.shm.hdr->slots[c->slot];

		s->res_start = s->res_end = 0;
		s->res_try[0] = s->res_try[1] = 0;
	}
	pid = proc_fork(c->role, c->slot, &M.env);
	if (pid == -1) {
		log_warn("cannot fork %s", proc_name(c->role));
		c->respawn_ms = master_now_ms() + BACKOFF_MAX_MS;
		return;
	}
	c->pid = pid;
	c->started_ms = master_now_ms();
	c->respawn_ms = 0;
	if (c->role == PROC_WORKER)
		M.shm.hdr->slots[c->slot].pid = pid;
}

static void
master_signal_role(enum proc_role role, int sig)
{
	for (int i = 0; i < M.nchildren; i++)
		if (M.children[i].role == role && M.children[i].pid > 0)
			kill(M.children[i].pid, sig);
}

static int
master_alive(enum proc_role role)
{
	int n = 0;

	for (int i = 0; i < M.nchildren; i++)
		if (M.children[i].role == role && M.children[i].pid > 0)
			n++;
	return n;
}

void
master_fast_stop(int code)
{
	if (M.state == FAST_STOP)
		return;
	M.state = FAST_STOP;
	M.phase_ms = master_now_ms();
	M.exit_code = code;
	notify_send("STOPPING=1\nSTATUS=fast stop");
	for (int i = 0; i < M.nchildren; i++)
		if (M.children[i].pid > 0)
			kill(M.children[i].pid, SIGQUIT);
}

/* A child is gone: say how, and decide whether it comes back. */
static void
master_reaped(struct child *c, int status)
{
	struct shm_hdr *h = M.shm.hdr;
	uint64_t lived = master_now_ms() - c->started_ms;
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	int stopping = M.state != RUNNING;

	if (WIFSIGNALED(status))
		log_warnx("%s (pid %d) killed by signal %d (%s)",
		    proc_name(c->role), (int)c->pid, WTERMSIG(status),
		    strsignal(WTERMSIG(status)));
	else if (code != 0 || !stopping)
		log_warnx("%s (pid %d) exited with code %d",
		    proc_name(c->role), (int)c->pid, code);
	if (c->role == PROC_WORKER) {
		struct shm_slot *s = &h->slots[c->slot];
		uint64_t kept;

		/*
		 * Its half-written frame, if any, is the syncer's to pad;
		 * so is the range it was reserving, should it have won it.
		 */
		if (s->res_start != 0 || s->res_try[0] != 0) {
			int unsure = s->res_start == 0;

			if (shm_orphan_add(h, c->slot, unsure ? s->res_try[0] :
			    s->res_start, unsure ? s->res_try[1] : s->res_end,
			    unsure) == -1)
				log_warnx("no room to hand the syncer journal "
				    "LSN %llu left by worker %d: the journal "
				    "waits there until a restart", (unsigned
				    long long)(unsure ? s->res_try[0] :
				    s->res_start), (int)c->pid);
			syncer_kick(h->syncer_efd);
		}
		s->res_start = s->res_end = 0;
		s->res_try[0] = s->res_try[1] = 0;
		s->pid = 0;
		/*
		 * Its keyed requests in flight may be retried now, but for
		 * those it wrote to the journal: they may be applied, and
		 * are its successor's to settle.  One dead worker's at a
		 * time: one that died before its successor settled them
		 * has its own dropped.
		 */
		(void)idem_release_owner(M.shm.idem, c->pid, 1, &kept);
		if (kept > 0) {
			if (s->orphan_pid)
				idem_release_owner(M.shm.idem, s->orphan_pid,
				    0, NULL);
			s->orphan_pid = c->pid;
		}
		ratelimit_release_owner(M.shm.rl, c->pid);
		/*
		 * A change to the counter table it was in the middle of is
		 * undone, so no entry stays locked; the increments it held
		 * are settled by the next worker in its slot.
		 */
		counters_owner_repair(M.shm.counters, M.shm.owners[c->slot]);
	} else if (c->role == PROC_FLUSHER) {
		/*
		 * Keys it was taking back from PostgreSQL; the next flusher
		 * takes them again.  Left in flight, each would answer 409
		 * until a restart.
		 */
		idem_release_owner(M.shm.idem, c->pid, 0, NULL);
		counters_owner_repair(M.shm.counters,
		    M.shm.owners[SHM_FLUSHER]);
	}
	c->pid = 0;
	if (stopping)
		return;
	shm_count(&h->stats.restarts, 1);
	metrics_restart(&h->metrics, c->role);
	if (code == PROC_EXIT_FATAL) {
		c->fatal = 1;
		log_warnx("%s exited with the fatal code: not restarting it",
		    proc_name(c->role));
		if (c->role != PROC_WORKER || master_alive(PROC_WORKER) == 0)
			master_fast_stop(PROC_EXIT_FATAL);
		return;
	}
	c->failures = lived < STABLE_MS ? c->failures + 1 : 0;
	{
		uint64_t delay = BACKOFF_MIN_MS;

		for (int i = 1; i < c->failures && delay < BACKOFF_MAX_MS; i++)
			delay *= 2;
		if (delay > BACKOFF_MAX_MS)
			delay = BACKOFF_MAX_MS;
		c->respawn_ms = master_now_ms() + delay;
		log_info("restarting %s in %llu ms", proc_name(c->role),
		    (unsigned long long)delay);
	}
}

static void
master_reap(void)
{
	struct child *c;
	pid_t pid;
	int status;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
		if ((c = child_by_pid(pid)) != NULL)
			master_reaped(c, status);
}

/*
 * No worker is started again once a stop has begun: the sockets go with
 * the workers' copies, so that new connections are refused at once (a
 * load balancer tries another node) rather than left in the listen
 * queue to be reset when the last copy closes.
 */
static void
master_close_listeners(void)
{
	for (int i = 0; i < M.nlisten; i++) {
		if (M.listen_fds[i] != -1)
			close(M.listen_fds[i]);
		M.listen_fds[i] = -1;
	}
}

void
master_graceful(void)
{
	if (M.state != RUNNING)
		return;
	log_info("graceful stop: workers finish what is in flight, then the "
	    "journal is synced and flushed to PostgreSQL");
	notify_send("STOPPING=1\nSTATUS=graceful stop");
	M.state = STOP_WORKERS;
	M.phase_ms = master_now_ms();
	master_signal_role(PROC_WORKER, SIGTERM);
	master_close_listeners();
}

/* Move the stop along as each phase's children are gone. */
static int
master_advance(void)
{
	uint64_t t = master_now_ms();

	switch (M.state) {
	case STOP_WORKERS:
		if (master_alive(PROC_WORKER) == 0) {
			M.state = STOP_SYNCER;
			M.phase_ms = t;
			master_signal_role(PROC_SYNCER, SIGTERM);
		} else if (t - M.phase_ms > STOP_PHASE_MS)
			master_signal_role(PROC_WORKER, SIGKILL);
		return 0;
	case STOP_SYNCER:
		if (master_alive(PROC_SYNCER) == 0) {
			M.state = STOP_FLUSHER;
			M.phase_ms = t;
			master_signal_role(PROC_FLUSHER, SIGTERM);
		} else if (t - M.phase_ms > STOP_PHASE_MS)
			master_signal_role(PROC_SYNCER, SIGKILL);
		return 0;
	case STOP_FLUSHER:
		if (master_alive(PROC_FLUSHER) == 0)
			return 1;
		if (t - M.phase_ms > STOP_PHASE_MS)
			master_signal_role(PROC_FLUSHER, SIGKILL);
		return 0;
	case FAST_STOP:
		for (int i = 0; i < M.nchildren; i++)
			if (M.children[i].pid > 0) {
				if (t - M.phase_ms > FAST_STOP_MS)
					kill(M.children[i].pid, SIGKILL);
				return 0;
			}
		return 1;
	default:
		for (int i = 0; i < M.nchildren; i++) {
			struct child *c = &M.children[i];

			if (c->pid == 0 && !c->fatal && c->respawn_ms &&
			    t >= c->respawn_ms)
				child_start(c);
		}
		return 0;
	}
}

/*
 * The syncer and the flusher first; the workers once the flusher has
 * tried PostgreSQL (bounded), so that totals rebuilt at start are known
 * before the first GET whenever PostgreSQL is up.
 */
static void
master_start_children(void)
{
	struct timespec ms10 = { 0, 10 * 1000000 };
	uint64_t until = master_now_ms() + FLUSHER_WAIT_MS;

	for (int i = 0; i < M.nchildren; i++)
		if (M.children[i].role != PROC_WORKER)
			child_start(&M.children[i]);
	while (!__atomic_load_n(&M.shm.hdr->flusher_tried, __ATOMIC_ACQUIRE) &&
	    master_now_ms() < until && master_alive(PROC_FLUSHER))
		nanosleep(&ms10, NULL);
	for (int i = 0; i < M.nchildren; i++)
		if (M.children[i].role == PROC_WORKER)
			child_start(&M.children[i]);
}

/*
 * Run recovery in a child, as PostgreSQL's postmaster does.  A stop
 * asked for meanwhile ends it at once: replaying a long journal can take
 * a while, and whatever recovery did is done again at the next start.
 * A reload waits until the children run.
 */
static void
master_recover(void)
{
	struct signalfd_siginfo si;
	struct pollfd pfd;
	pid_t pid, r;
	int status, reload = 0;

	M.state = STARTING;
	if ((pid = proc_fork(PROC_STARTUP, 0, &M.env)) == -1)
		fatal(1, "cannot fork the startup process");
	pfd.fd = M.sigfd;
	pfd.events = POLLIN;
	while ((r = waitpid(pid, &status, WNOHANG)) != pid) {
		if (r == -1 && errno != EINTR)
			fatal(1, "waitpid");
		if (poll(&pfd, 1, 100) != 1 ||
		    read(M.sigfd, &si, sizeof(si)) != (ssize_t)sizeof(si))
			continue;
		if (si.ssi_signo == SIGHUP)
			reload = 1;
		if (si.ssi_signo != SIGTERM && si.ssi_signo != SIGINT &&
		    si.ssi_signo != SIGQUIT)
			continue;
		log_info("stop during recovery: ending the startup process "
		    "(pid %d); the next start recovers again", (int)pid);
		kill(pid, SIGKILL);
		while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
			;
		exit(0);
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		if (reload)
			master_reload();
		return;
	}
	if (WIFSIGNALED(status))
		fatalx(1, "recovery (pid %d) killed by signal %d", (int)pid,
		    WTERMSIG(status));
	fatalx(WEXITSTATUS(status) == PROC_EXIT_FATAL ? PROC_EXIT_FATAL : 1,
	    "recovery failed; not starting");
}

/* Publish the settings children pick up without a restart. */
static void
master_publish(const struct config *cf)
{
	struct shm_hdr *h = M.shm.hdr;
	int level = log_level_parse(cf->log_level);

	h->flush_interval_us = cf->flush_interval_us;
	h->log_level = level < 0 ? LOG_LEVEL_INFO : level;
	log_set_level(h->log_level);
	ratelimit_configure(M.shm.rl, cf);
	__atomic_add_fetch(&h->reload_gen, 1, __ATOMIC_RELEASE);
	/* A shorter flush_interval must not wait out the flusher's sleep. */
	if (h->flusher_efd > 0)
		syncer_kick(h->flusher_efd);
}

static void
master_restart_key(void *arg, const char *key)
{
	(void)arg;
	log_warnx("reload: %s changed; it takes effect only at the next "
	    "restart", key);
}

/*
 * SIGHUP: re-read the file.  A file with errors changes nothing; keys
 * that need a restart are named, so the operator knows.
 */
static int
master_reload_file(void)
{
	static struct config next;
	struct config_errors errs = { NULL, 0 };
	const struct config *cur = M.cf;

	/* The children follow, even when the file has errors. */
	log_reopen();
	__atomic_add_fetch(&M.shm.hdr->log_gen, 1, __ATOMIC_RELEASE);
	if (config_load(&next, M.path, M.overrides, M.noverrides, &errs)) {
		for (int i = 0; i < errs.n; i++)
			log_warnx("reload: %s", errs.msgs[i]);
		log_warnx("reload: configuration has errors; keeping the "
		    "running one");
		config_errors_free(&errs);
		return -1;
	}
	config_errors_free(&errs);
	config_restart_keys(cur, &next, master_restart_key, NULL);
	M.cf->flush_interval_us = next.flush_interval_us;
	memcpy(M.cf->log_level, next.log_level, sizeof(M.cf->log_level));
	M.cf->rate = next.rate;
	M.cf->burst = next.burst;
	memcpy(M.cf->proxies, next.proxies, sizeof(M.cf->proxies));
	M.cf->nproxies = next.nproxies;
	M.cf->proxy_unix = next.proxy_unix;
	memcpy(M.cf->statsd, next.statsd, sizeof(M.cf->statsd));
	memcpy(M.cf->metrics_prefix, next.metrics_prefix,
	    sizeof(M.cf->metrics_prefix));
	master_publish(M.cf);
	statsd_configure(&M.statsd, M.cf);
	log_info("reload: configuration applied (flush_interval %llu ms, "
	    "log_level %s)", (unsigned long long)(M.cf->flush_interval_us /
	    1000), M.cf->log_level);
	return 0;
}

int
master_reload(void)
{
	struct timespec ts;
	int rc;

	if (M.state != RUNNING)
		return master_reload_file();
	clock_gettime(CLOCK_MONOTONIC, &ts);
	notify_send("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
	    (unsigned long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
	rc = master_reload_file();
	notify_send("READY=1\nSTATUS=serving%s", rc == 0 ? "" :
	    "; the reloaded configuration had errors and was not applied");
	return rc;
}

/* Make the directory a run-time file lives in, if it is missing. */
static void
master_rundir(const char *file)
{
	char dir[1024], *slash;

	snprintf(dir, sizeof(dir), "%s", file);
	if ((slash = strrchr(dir, '/')) == NULL || slash == dir)
		return;
	*slash = '\0';
	if (mkdir(dir, 0755) == 0 && M.env.uid != (uid_t)-1 &&
	    chown(dir, 0, M.env.gid) == -1)
		log_warn("cannot give %s to group %d", dir, (int)M.env.gid);
}

static int
master_eventfd(void)
{
	int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

	if (fd == -1)
		fatal(1, "eventfd");
	return fd;
}

/*
 * Detach as a daemon.  The parent waits on a pipe until the master says
 * it serves, so "tallyd" run from an init script fails when start-up
 * fails rather than after, with the master's exit status and a pointer
 * to the log: the reason went there, not to the terminal.
 */
static int
master_daemonize(void)
{
	int p[2], fd, status, code;
	pid_t pid;
	char c;

	if (pipe(p) == -1)
		fatal(1, "pipe");
	if ((pid = fork()) == -1)
		fatal(1, "fork");
	if (pid != 0) {
		close(p[1]);
		if (read(p[0], &c, 1) == 1)
			_exit(0);
		code = 1;
		if (waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
		    WEXITSTATUS(status) != 0)
			code = WEXITSTATUS(status);
		fprintf(stderr, "tallyd: start failed (exit status %d); see "
		    "the log\n", code);
		_exit(code);
	}
	M.pid = getpid();
	close(p[0]);
	setsid();
	if (chdir("/") == -1)
		fatal(1, "chdir /");
	if ((fd = open("/dev/null", O_RDWR)) != -1) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
	return p[1];
}

/*
 * In a child, right after fork: the master's own descriptors are not its
 * business.  A worker that kept the control socket could accept tallyctl's
 * connections, and one that kept a client's would hold it open past the
 * master's close; the lock files stay, so a restart is refused while even
 * an orphan runs.
 */
static void
master_child_close(void)
{
	int fds[] = { M.sigfd, M.ready_fd, M.ctl_fd, M.statsd.fd };

	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (M.clients[i])
			close(M.clients[i]->fd);
}

int
master_main(struct config *cf, const char *path, char *const *overrides,
    int noverrides, int foreground)
{
	struct shm_hdr *h;
	sigset_t set;
	struct signalfd_siginfo si;
	struct pollfd pfd[2 + CONTROL_MAX_CLIENTS];
	int slot[2 + CONTROL_MAX_CLIENTS];
	int sig, n, npfd, timeout;
	char thp[32];

	M.cf = cf;
	M.path = path;
	M.overrides = overrides;
	M.noverrides = noverrides;
	M.exit_code = 0;
	M.ctl_fd = -1;
	M.sigfd = M.ready_fd = M.statsd.fd = -1;
	M.env.child_close = master_child_close;
	M.started = time(NULL);
	M.pid = getpid();
	atexit(master_unlink);
	log_init(1, "tallyd", LOG_DAEMON);
	log_set_role("master");
	notify_init();
	/* Refusals that need no daemon are said on the terminal. */
	master_lock();
	for (M.nlisten = 0; M.nlisten < cf->nlisten; M.nlisten++)
		M.listen_fds[M.nlisten] = master_bind_one(cf->listen[M.nlisten]);
	master_user();
	if (cf->log_file[0] && log_open_file(cf->log_file, M.env.uid,
	    M.env.gid) == -1)
		fatal(PROC_EXIT_FATAL, "cannot open log file %s",
		    cf->log_file);
	master_rundir(cf->control_socket);
	M.ctl_fd = control_listen(cf->control_socket, M.env.uid, M.env.gid);
	if (M.ctl_fd == -2)
		fatalx(PROC_EXIT_FATAL, "another tallyd is listening on "
		    "control socket %s", cf->control_socket);
	if (M.ctl_fd == -1)
		fatal(PROC_EXIT_FATAL, "cannot listen on control socket %s",
		    cf->control_socket);
	M.ctl_made = 1;
	if (!foreground) {
		M.ready_fd = master_daemonize();
		log_init(0, "tallyd", log_facility_parse(cf->syslog_facility));
		master_lock_pid();
	}
	proctitle_set("master process %s", proctitle_cmdline());

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGQUIT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (shm_create(&M.shm, cf) == -1)
		fatal(1, "cannot map %zu bytes of shared memory for %llu keys",
		    counters_size(cf->max_keys, cf->max_key_bytes),
		    (unsigned long long)cf->max_keys);
	h = M.shm.hdr;
	h->syncer_efd = master_eventfd();
	h->flusher_efd = master_eventfd();
	h->nslots = cf->workers;
	master_publish(cf);
	for (int i = 0; i < cf->workers; i++)
		h->slots[i].efd = master_eventfd();
	M.env.cf = cf;
	M.env.shm = &M.shm;
	M.env.listen_fds = M.listen_fds;
	M.env.nlisten = M.nlisten;
	if (!foreground) {
		master_rundir(cf->pid_file);
		master_pid_file();
	}
	if ((M.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) == -1)
		fatal(1, "signalfd");

	master_recover();

	n = 0;
	M.children[n++] = (struct child){ .role = PROC_SYNCER };
	M.children[n++] = (struct child){ .role = PROC_FLUSHER };
	for (int i = 0; i < cf->workers; i++)
		M.children[n++] = (struct child){ .role = PROC_WORKER,
		    .slot = i };
	M.nchildren = n;
	M.state = RUNNING;
	master_start_children();
	log_info("serving on %s%s with %d workers, journal %s, sync = %s",
	    cf->listen[0], cf->nlisten > 1 ? " and more" : "", cf->workers,
	    cf->journal_dir, cf->sync == SYNC_GROUP ? "group" : "interval");
	if (shm_huge_pages(thp, sizeof(thp)))
		log_info("shared memory: %zu MiB reserved, in 2 MiB pages as "
		    "it is touched (%s: %s)", M.shm.size >> 20,
		    SHM_THP_POLICY, thp);
	else
		log_info("shared memory: %zu MiB reserved, in 4 KiB pages "
		    "(%s: %s; \"advise\" gives its tables 2 MiB pages)",
		    M.shm.size >> 20, SHM_THP_POLICY, thp);
	notify_send("READY=1\nMAINPID=%d\nSTATUS=serving on %s%s with %d "
	    "workers", (int)getpid(), cf->listen[0], cf->nlisten > 1 ?
	    " and more" : "", cf->workers);
	if (M.ready_fd != -1) {
		(void)write(M.ready_fd, "", 1);
		close(M.ready_fd);
		M.ready_fd = -1;
	}
	statsd_init(&M.statsd);
	statsd_configure(&M.statsd, cf);

	for (;;) {
		npfd = master_pollfds(pfd, slot, M.sigfd);
		timeout = statsd_tick(&M.statsd, &M.shm, M.cf->flush_interval_us);
		if (timeout < 0 || timeout > 250)
			timeout = 250;
		if (poll(pfd, npfd, timeout) == -1 && errno != EINTR)
			log_warn("poll");
		sig = 0;
		if ((pfd[0].revents & POLLIN) &&
		    read(M.sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
			sig = si.ssi_signo;
		master_ctl_serve(pfd, slot, npfd);
		switch (sig) {
		case SIGCHLD:
			break;
		case SIGTERM:
		case SIGINT:
			master_graceful();
			break;
		case SIGQUIT:
			log_info("fast stop: children exit now; the journal is "
			    "replayed at the next start");
			master_fast_stop(0);
			break;
		case SIGHUP:
			master_reload();
			break;
		default:
			break;
		}
		master_reap();
		if (master_advance())
			break;
	}
	statsd_close(&M.statsd, &M.shm);
	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (M.clients[i])
			master_ctl_close(i);
	close(M.ctl_fd);
	master_unlink();
	log_info("stopped");
	return M.exit_code;
}
