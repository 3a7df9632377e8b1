/*
 * The master's own state, shared by its files: master.c (the children,
 * the stop phases, reloads) and master_control.c (the control socket
 * tallyctl talks to).  Nothing outside the master includes this.
 */
#ifndef TALLY_MASTER_INT_H
#define TALLY_MASTER_INT_H

#include <sys/types.h>

#include <poll.h>
#include <stdint.h>
#include <time.h>

#include "config.h"
#include "control.h"
#include "proc.h"
#include "shm.h"
#include "statsd.h"

enum master_state {
	STARTING, RUNNING, STOP_WORKERS, STOP_SYNCER, STOP_FLUSHER, FAST_STOP
};

struct child {
	enum proc_role	role;
	int		slot;
	pid_t		pid;
	uint64_t	started_ms;
	uint64_t	respawn_ms;	/* when to start again; 0: not due */
	int		failures;	/* consecutive short lives */
	int		fatal;		/* exited PROC_EXIT_FATAL: leave it */
};

extern struct master {
	struct config		*cf;
	struct shm		 shm;
	struct proc_env		 env;
	int			 listen_fds[CONFIG_MAX_LISTEN];
	int			 nlisten;
	struct child		 children[CONFIG_MAX_WORKERS + 2];
	int			 nchildren;
	enum master_state	 state;
	uint64_t		 phase_ms;
	int			 lock_fd;
	int			 journal_lock_fd;
	int			 exit_code;
	int			 pid_file_written;
	int			 ctl_made;	/* the control socket is ours */
	int			 sigfd;
	int			 ready_fd;	/* pipe to the waiting parent */
	pid_t			 pid;		/* ours, once detached */
	const char		*path;
	char *const		*overrides;
	int			 noverrides;
	int			 ctl_fd;
	struct control_client	*clients[CONTROL_MAX_CLIENTS];
	time_t			 started;
	struct statsd		 statsd;
} M;

/* master.c */
uint64_t master_now_ms(void);
void	master_graceful(void);
void	master_fast_stop(int code);
int	master_reload(void);

/* master_control.c */
int	master_pollfds(struct pollfd *pfd, int *slot, int sigfd);
void	master_ctl_serve(struct pollfd *pfd, const int *slot, int npfd);
void	master_ctl_close(int i);

#endif
