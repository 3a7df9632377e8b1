/*
 * Process titles: "tallyd: worker process 0" in ps(1) and top(1), so
 * that an operator tells the processes apart, as with nginx and
 * PostgreSQL.
 */
#ifndef TALLY_PROCTITLE_H
#define TALLY_PROCTITLE_H

/*
 * Call first thing in main().  Returns a copy of argv, on the heap, that
 * the caller uses from then on (getopt's optarg points into it): the
 * memory of the original is where titles are written.  On failure it
 * returns argv itself and titles stay as exec made them.
 */
char  **proctitle_init(int argc, char **argv);
/* "tallyd: " and the formatted text, cut to the room exec left. */
void	proctitle_set(const char *fmt, ...)
	    __attribute__((format(printf, 1, 2)));
/* The command line as started, words joined by spaces ("" before init). */
const char *proctitle_cmdline(void);

#endif
