/*
 * Fuzz target for config_load(): the input is loaded once as a
 * tallyd.conf file and once as -o overrides, one per line.  Every error
 * message is freed; under LeakSanitizer a leak in either path fails.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define MAXOV	256

static char	path[64];

static void
cleanup(void)
{
	unlink(path);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct config cf;
	struct config_errors errs;
	char *ov[MAXOV], *copy, *line, *nl;
	int fd, n = 0;

	if (path[0] == '\0') {
		snprintf(path, sizeof(path), "/tmp/fuzz_config.XXXXXX");
		if ((fd = mkstemp(path)) == -1) {
			perror("fuzz_config: mkstemp");
			abort();
		}
		close(fd);
		atexit(cleanup);
	}
	if ((fd = open(path, O_WRONLY | O_TRUNC)) == -1)
		abort();
	if (size > 0 && write(fd, data, size) != (ssize_t)size)
		abort();
	close(fd);

	config_load(&cf, path, NULL, 0, &errs);
	for (int i = 0; i < errs.n; i++)
		if (errs.msgs[i] == NULL)
			abort();
	config_errors_free(&errs);

	/* The same text as -o overrides: NULs end a string, as in argv. */
	if ((copy = malloc(size + 1)) == NULL)
		return 0;
	memcpy(copy, data, size);
	copy[size] = '\0';
	for (line = copy; n < MAXOV && line != NULL; line = nl) {
		if ((nl = strchr(line, '\n')) != NULL)
			*nl++ = '\0';
		ov[n++] = line;
	}
	config_load(&cf, NULL, ov, n, &errs);
	config_errors_free(&errs);
	free(copy);
	return 0;
}
