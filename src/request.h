/*
 * Parsing and validation of client input: the JSON body of POST /increment,
 * the percent-encoded key of GET /increment/{key}, the Idempotency-Key
 * header.  Pure functions over byte ranges: nothing here touches shared
 * state, or the heap but for a body too big for the parser's own arena,
 * so the fuzzers and unit tests drive them directly.
 */
#ifndef TALLY_REQUEST_H
#define TALLY_REQUEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * The ceiling of max_key_bytes: every key must fit in PostgreSQL's B-tree
 * index on tally_counters.key, which takes at most 2704 bytes a row with
 * its 8 kB pages; a longer key would be acknowledged and then refused by
 * every flush, holding up all others.
 */
#define REQUEST_MAX_KEY_BYTES	2048
#define REQUEST_MAX_IDEM_BYTES	255

struct increment_req {
	char	key[REQUEST_MAX_KEY_BYTES];	/* not NUL-terminated */
	size_t	key_len;
	int64_t	value;
};

/*
 * Parse a body that must be exactly one JSON object with the members
 * "key" (string) and "value" (integer within int64), nothing else, no
 * duplicate members.  The key must be 1..max_key_bytes bytes of valid
 * UTF-8 without NUL.  On failure returns -1 and writes a short message
 * for the client into err (never quoting the input).
 */
int	request_parse_increment(const char *body, size_t len,
	    size_t max_key_bytes, struct increment_req *out,
	    char *err, size_t errlen);

/*
 * The same through the general JSON parser alone.  request_parse_increment
 * reads the usual form of a body itself and leaves the rest to this; the
 * tests and the fuzzer check that both give the same answer.
 */
int	request_parse_increment_json(const char *body, size_t len,
	    size_t max_key_bytes, struct increment_req *out,
	    char *err, size_t errlen);

/* 1 when s[0..len) is valid UTF-8 without NUL and without overlongs. */
int	request_utf8_valid(const char *s, size_t len);

/*
 * Percent-decode a path segment into out (capacity outcap).  Returns the
 * decoded length, or -1 for a bad escape, a result over outcap, or a
 * result that is not valid UTF-8 without NUL.
 */
ssize_t	request_decode_key(const char *src, size_t len, char *out,
	    size_t outcap);

/*
 * Idempotency-Key header: 1..255 printable ASCII (0x21..0x7e, plus inner
 * spaces), either bare or as a Structured Field string ("..." with \" and
 * \\ escapes).  Both forms name the same key: the unquoted text is written
 * to out.  Returns its length or -1.
 */
ssize_t	request_parse_idem_key(const char *src, size_t len, char *out,
	    size_t outcap);

/*
 * JSON output helpers.  They append to buf (capacity cap) at *off and
 * return 0, or -1 when buf is too small.  Strings are escaped as JSON
 * requires; non-ASCII UTF-8 passes through.
 */
int	json_put_string(char *buf, size_t cap, size_t *off, const char *s,
	    size_t len);
int	json_put_raw(char *buf, size_t cap, size_t *off, const char *s);
int	json_put_int(char *buf, size_t cap, size_t *off, int64_t v);

/* {"key": k, "value": v} */
int	json_format_total(char *buf, size_t cap, size_t *off, const char *key,
	    size_t key_len, int64_t value);
/* {"<key>": v} */
int	json_format_get(char *buf, size_t cap, size_t *off, const char *key,
	    size_t key_len, int64_t value);
/* {"error": msg} */
int	json_format_error(char *buf, size_t cap, size_t *off, const char *msg);

#endif
