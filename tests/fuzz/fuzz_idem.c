/*
 * Fuzz target for request_parse_idem_key(), the parser of the
 * Idempotency-Key header.  An accepted key is 1..255 bytes of printable
 * ASCII (spaces allowed inside), as the journal record and the
 * idempotency table expect.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char out[REQUEST_MAX_IDEM_BYTES + 1], again[REQUEST_MAX_IDEM_BYTES + 1];
	char quoted[2 * REQUEST_MAX_IDEM_BYTES + 2], *src;
	size_t q = 0;
	ssize_t n, m;

	if ((src = malloc(size ? size : 1)) == NULL)
		return 0;
	memcpy(src, data, size);
	n = request_parse_idem_key(src, size, out, sizeof(out));
	free(src);
	if (n == -1)
		return 0;
	if (n < 1 || n > REQUEST_MAX_IDEM_BYTES)
		abort();
	for (ssize_t i = 0; i < n; i++)
		if ((unsigned char)out[i] < 0x20 ||
		    (unsigned char)out[i] > 0x7e)
			abort();

	/* Both forms name the same key: quote it back and parse again. */
	quoted[q++] = '"';
	for (ssize_t i = 0; i < n; i++) {
		if (out[i] == '"' || out[i] == '\\')
			quoted[q++] = '\\';
		quoted[q++] = out[i];
	}
	quoted[q++] = '"';
	m = request_parse_idem_key(quoted, q, again, sizeof(again));
	if (m != n || memcmp(out, again, n) != 0)
		abort();
	return 0;
}
