/*
 * Process titles.  Linux shows as a process's command line the memory
 * that exec laid argv's strings out in, and when the last byte of that
 * area is no longer a NUL it reads on into the environment strings that
 * follow.  So, as nginx and PostgreSQL do, both are copied to the heap
 * once, and the title is written over the originals: more room than argv
 * alone, which "tallyd -f" would leave too short for any title.
 *
 * The process's own name (comm, which pgrep and pidof match) stays
 * "tallyd".
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proctitle.h"

extern char **environ;

static char	*title;		/* exec's argv memory, NULL: no titles */
static size_t	 room;		/* its bytes, up to the environment's end */
static char	*cmdline = "";
/* The copy main() goes on with; volatile, as it is only ever written. */
static char  **volatile args;

static void
free_vec(char **v, int n)
{
	for (int i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static char **
copy_vec(char **v, int n)
{
	char **c;

	if ((c = calloc((size_t)n + 1, sizeof(*c))) == NULL)
		return NULL;
	for (int i = 0; i < n; i++)
		if ((c[i] = strdup(v[i])) == NULL) {
			free_vec(c, i);
			return NULL;
		}
	return c;
}

char **
proctitle_init(int argc, char **argv)
{
	char **nargv, **nenv, *end, *line, *p;
	size_t len = 0;
	int nenvc = 0;

	if (argc < 1 || argv[0] == NULL)
		return argv;
	/* Only strings that follow one another without a gap are ours. */
	end = argv[0];
	for (int i = 0; i < argc && argv[i] == end; i++)
		end += strlen(argv[i]) + 1;
	for (; environ[nenvc] != NULL; nenvc++)
		if (environ[nenvc] == end)
			end += strlen(environ[nenvc]) + 1;
	for (int i = 0; i < argc; i++)
		len += strlen(argv[i]) + 1;
	if ((line = malloc(len)) == NULL)
		return argv;
	p = line;
	for (int i = 0; i < argc; i++) {
		if (i > 0)
			*p++ = ' ';
		memcpy(p, argv[i], strlen(argv[i]));
		p += strlen(argv[i]);
	}
	*p = '\0';
	if ((nargv = copy_vec(argv, argc)) == NULL) {
		free(line);
		return argv;
	}
	if ((nenv = copy_vec(environ, nenvc)) == NULL) {
		free_vec(nargv, argc);
		free(line);
		return argv;
	}
	environ = nenv;
	/* glibc's own messages name the program through these. */
	program_invocation_name = nargv[0];
	if ((program_invocation_short_name = strrchr(nargv[0], '/')) != NULL)
		program_invocation_short_name++;
	else
		program_invocation_short_name = nargv[0];
	cmdline = line;
	args = nargv;
	title = argv[0];
	room = (size_t)(end - argv[0]);
	return args;
}

void
proctitle_set(const char *fmt, ...)
{
	va_list ap;
	size_t n;

	if (title == NULL || room < 2)
		return;
	snprintf(title, room, "tallyd: ");
	n = strlen(title);
	va_start(ap, fmt);
	vsnprintf(title + n, room - n, fmt, ap);
	va_end(ap);
	/* No trace of a longer title before it, nor of argv. */
	n = strlen(title);
	memset(title + n, 0, room - n);
}

const char *
proctitle_cmdline(void)
{
	return cmdline;
}
