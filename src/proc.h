/*
 * Process roles and the one place where children are forked.  Roles are
 * rows in a table (name, entry point), as in OpenBSD's proc.c.
 */
#ifndef TALLY_PROC_H
#define TALLY_PROC_H

#include <sys/types.h>

#include "config.h"
#include "shm.h"

/* Exit codes of children: a contract with the master. */
#define PROC_EXIT_OK		0	/* clean stop */
#define PROC_EXIT_RESPAWN	1	/* error: start me again */
#define PROC_EXIT_FATAL		2	/* bad config or journal: do not */

enum proc_role {
	PROC_STARTUP,
	PROC_SYNCER,
	PROC_FLUSHER,
	PROC_WORKER
};

struct proc_env {
	const struct config	*cf;
	struct shm		*shm;
	const int		*listen_fds;
	int			 nlisten;
	uid_t			 uid;	/* (uid_t)-1: keep */
	gid_t			 gid;
	void			(*child_close)(void);	/* the master's fds */
};

const char *proc_name(enum proc_role role);
/*
 * In a child's loop: apply settings the master reloaded (log level), and
 * reopen the log file after it did.  Returns 1 when there were new
 * settings.
 */
int	proc_reloaded(struct shm_hdr *h);
/*
 * Fork a child for role (slot: the worker's slot).  The child dies with
 * the master (PR_SET_PDEATHSIG), drops privileges, runs the role's entry
 * point and exits with its code.  Returns the child's pid, -1 on error.
 */
pid_t	proc_fork(enum proc_role role, int slot, const struct proc_env *env);

#endif
