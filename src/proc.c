/*
 * Forking children.  Every child starts the same way: the master's signal
 * mask and handlers are undone, the child arranges to die with the master
 * so a restart never finds orphans holding the port or the journal, and
 * privileges are dropped before any client byte is read.
 */
#include <sys/prctl.h>

#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flusher.h"
#include "log.h"
#include "proc.h"
#include "proctitle.h"
#include "recovery.h"
#include "syncer.h"
#include "worker.h"

static const struct {
	enum proc_role	 role;
	const char	*name;
} proc_table[] = {
	{ PROC_STARTUP,	"startup" },
	{ PROC_SYNCER,	"syncer" },
	{ PROC_FLUSHER,	"flusher" },
	{ PROC_WORKER,	"worker" },
};

const char *
proc_name(enum proc_role role)
{
	for (size_t i = 0; i < sizeof(proc_table) / sizeof(proc_table[0]); i++)
		if (proc_table[i].role == role)
			return proc_table[i].name;
	return "?";
}

int
proc_reloaded(struct shm_hdr *h)
{
	static uint64_t seen, seen_log;
	uint64_t gen = __atomic_load_n(&h->reload_gen, __ATOMIC_ACQUIRE);
	uint64_t log_gen = __atomic_load_n(&h->log_gen, __ATOMIC_ACQUIRE);

	if (log_gen != seen_log) {
		seen_log = log_gen;
		log_reopen();
	}
	if (gen == seen)
		return 0;
	seen = gen;
	log_set_level(h->log_level);
	return 1;
}

static void
proc_drop(const struct proc_env *env)
{
	if (env->uid == (uid_t)-1)
		return;
	if (setgroups(1, &env->gid) == -1 || setgid(env->gid) == -1 ||
	    setuid(env->uid) == -1)
		fatal(PROC_EXIT_FATAL, "%s: cannot drop privileges to uid %d",
		    __func__, (int)env->uid);
}

static int
proc_run(enum proc_role role, int slot, const struct proc_env *env)
{
	switch (role) {
	case PROC_STARTUP:
		return recovery_run(env->cf, env->shm);
	case PROC_SYNCER:
		return syncer_main(env->cf, env->shm);
	case PROC_FLUSHER:
		return flusher_main(env->cf, env->shm);
	case PROC_WORKER:
		return worker_main(env->cf, env->shm, slot, env->listen_fds,
		    env->nlisten);
	}
	return PROC_EXIT_FATAL;
}

pid_t
proc_fork(enum proc_role role, int slot, const struct proc_env *env)
{
	pid_t master = getpid(), pid;
	struct sigaction sa;
	sigset_t none;
	int sigs[] = { SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGCHLD, SIGPIPE };

	if ((pid = fork()) != 0)
		return pid;
	if (env->child_close)
		env->child_close();
	/*
	 * Only workers serve the listening sockets.  Held anywhere else,
	 * a socket would outlive the workers' and the master's copies in a
	 * stop, and the kernel would go on queueing connections on it.
	 */
	if (role != PROC_WORKER)
		for (int i = 0; i < env->nlisten; i++)
			if (env->listen_fds[i] != -1)
				close(env->listen_fds[i]);
	log_set_role(proc_name(role));
	if (role == PROC_WORKER)
		proctitle_set("worker process %d", slot);
	else
		proctitle_set("%s process", proc_name(role));
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
	/*
	 * ^C in a terminal and a hangup reach the whole process group, and
	 * "pkill -HUP tallyd" every process: only the master acts on them,
	 * stopping the children in order (workers, syncer, flusher) or
	 * reloading.  A child that stopped on its own would leave the
	 * workers' last frames unsynced and unflushed, or die of SIGHUP.
	 */
	sa.sa_handler = SIG_IGN;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	/* Before the parent-death signal: a change of uid clears it. */
	proc_drop(env);
	/* SIGQUIT is a fast stop: the journal makes it safe. */
	if (prctl(PR_SET_PDEATHSIG, SIGQUIT) == -1)
		log_warn("%s: prctl", __func__);
	if (getppid() != master)
		_exit(PROC_EXIT_OK);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	exit(proc_run(role, slot, env));
}
