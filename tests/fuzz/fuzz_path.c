/*
 * Fuzz target for request_decode_key(), the decoder of the key in GET
 * /increment/{key}.  A decoded key must be valid UTF-8 without NUL and
 * fit the buffer it was given.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char out[REQUEST_MAX_KEY_BYTES];
	size_t cap;
	char *src, *dst;
	ssize_t n;

	/*
	 * The first byte picks the capacity, so that the "result too long"
	 * edge is reached with short inputs too.
	 */
	if (size == 0)
		cap = sizeof(out);
	else {
		cap = data[0] == 0 ? sizeof(out) : data[0];
		data++;
		size--;
	}
	if ((src = malloc(size ? size : 1)) == NULL)
		return 0;
	memcpy(src, data, size);
	/* The output buffer too is exactly cap bytes on the heap. */
	if ((dst = malloc(cap)) == NULL) {
		free(src);
		return 0;
	}
	n = request_decode_key(src, size, dst, cap);
	if (n >= 0) {
		if ((size_t)n > cap || (size_t)n > size)
			abort();
		if (!request_utf8_valid(dst, n))
			abort();
		if (memchr(dst, '\0', n) != NULL)
			abort();
	} else if (n != -1)
		abort();
	free(dst);
	free(src);
	return 0;
}
