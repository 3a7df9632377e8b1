/*
 * Fuzz target for request_parse_increment(), the parser of every POST
 * /increment body.  Beyond "no crash", an accepted body must yield a key
 * the rest of the daemon may trust (1..256 bytes of UTF-8 without NUL),
 * and the JSON the daemon writes back for it must parse to the same key
 * and value: a key that survives one direction only would be a counter
 * clients cannot name again.  The general parser alone
 * (request_parse_increment_json) must give the same answer as
 * request_parse_increment, which reads the usual form itself.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"

#define MAXKEY	256

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* Room for MAXKEY bytes escaped as \u00XX plus the frame of the object. */
static char	out[MAXKEY * 6 + 128];

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct increment_req a, b;
	char err[256], gerr[256], *body;
	size_t off = 0;
	int rc;

	/* A heap copy of exactly size bytes: a read past it is caught. */
	if ((body = malloc(size ? size : 1)) == NULL)
		return 0;
	memcpy(body, data, size);
	err[0] = '\0';
	rc = request_parse_increment(body, size, MAXKEY, &a, err, sizeof(err));
	if (request_parse_increment_json(body, size, MAXKEY, &b, gerr,
	    sizeof(gerr)) != rc)
		abort();
	free(body);
	if (rc != 0) {
		if (memchr(err, '\0', sizeof(err)) == NULL || err[0] == '\0')
			abort();
		if (strcmp(err, gerr) != 0)
			abort();
		return 0;
	}
	if (b.key_len != a.key_len || memcmp(a.key, b.key, a.key_len) != 0 ||
	    b.value != a.value)
		abort();

	if (a.key_len < 1 || a.key_len > MAXKEY)
		abort();
	if (!request_utf8_valid(a.key, a.key_len))
		abort();
	if (memchr(a.key, '\0', a.key_len) != NULL)
		abort();

	if (json_format_total(out, sizeof(out), &off, a.key, a.key_len,
	    a.value) != 0)
		abort();
	if (off > sizeof(out))
		abort();
	body = malloc(off);
	if (body == NULL)
		return 0;
	memcpy(body, out, off);
	if (request_parse_increment(body, off, MAXKEY, &b, err,
	    sizeof(err)) != 0)
		abort();
	free(body);
	if (b.key_len != a.key_len || memcmp(a.key, b.key, a.key_len) != 0 ||
	    b.value != a.value)
		abort();
	return 0;
}
