/*
 * Parsing and validation of client input, and the small JSON writer for
 * answers.  Everything here works on caller-provided byte ranges and
 * buffers: no globals, no logging, and no allocation but what yajl asks
 * of the arena below, so any worker thread, the unit tests and fuzzers
 * can call it directly.
 *
 * The body is parsed with yajl's callback API rather than yajl_tree: it
 * takes a length (no NUL-terminated copy), lets us refuse duplicate and
 * unknown members as they arrive, and stops at the first wrong token.
 * Numbers arrive as raw text through the number callback: yajl's own
 * integer conversion refuses INT64_MIN, which is a valid value here.
 * The usual form of a body is read without yajl (req_parse_plain), which
 * leaves every other body, and every refusal, to it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

#include "request.h"

enum req_field {
	FIELD_NONE,
	FIELD_KEY,
	FIELD_VALUE
};

struct req_ctx {
	struct increment_req	*out;
	size_t			 max_key;
	char			*err;
	size_t			 errlen;
	int			 depth;	/* 1 inside the object */
	int			 done;	/* the object closed */
	int			 have_key;
	int			 have_value;
	enum req_field		 field;	/* whose value is next */
};

/*
 * yajl's handle, lexer, buffers and stack come from an arena on the
 * parser's stack rather than malloc(): five allocations and five frees
 * for each request otherwise, about 900 instructions of a worker's 14000.
 * Each block starts with its size, for realloc(); what does not fit (a
 * long key full of escapes) goes to the heap, and only those blocks are
 * ever freed.
 */
#define REQ_ARENA_BYTES	4096

struct req_arena {
	size_t		used;
	_Alignas(16) unsigned char mem[REQ_ARENA_BYTES];
};

struct req_block {
	size_t		size;
	size_t		pad;	/* keeps what follows 16-byte aligned */
};

static int
req_arena_owns(const struct req_arena *a, const void *p)
{
	uintptr_t u = (uintptr_t)p, m = (uintptr_t)a->mem;

	return u >= m && u < m + sizeof(a->mem);
}

static void *
req_arena_malloc(void *ctx, size_t sz)
{
	struct req_arena *a = ctx;
	size_t need = sizeof(struct req_block) + ((sz + 15) & ~(size_t)15);
	struct req_block *b;

	if (need >= sz && need <= sizeof(a->mem) - a->used) {
		b = (struct req_block *)(void *)(a->mem + a->used);
		a->used += need;
	} else if (sz > SIZE_MAX - sizeof(*b) ||
	    (b = malloc(sizeof(*b) + sz)) == NULL)
		return NULL;
	b->size = sz;
	return b + 1;
}

static void
req_arena_free(void *ctx, void *p)
{
	if (p != NULL && !req_arena_owns(ctx, p))
		free((struct req_block *)p - 1);
}

static void *
req_arena_realloc(void *ctx, void *p, size_t sz)
{
	struct req_block *b, *nb;
	void *np;

	if (p == NULL)
		return req_arena_malloc(ctx, sz);
	b = (struct req_block *)p - 1;
	if (sz <= b->size)
		return p;
	if (!req_arena_owns(ctx, p)) {
		if (sz > SIZE_MAX - sizeof(*b) ||
		    (nb = realloc(b, sizeof(*b) + sz)) == NULL)
			return NULL;
		nb->size = sz;
		return nb + 1;
	}
	if ((np = req_arena_malloc(ctx, sz)) == NULL)
		return NULL;
	memcpy(np, p, b->size);
	return np;
}

static int
req_fail(struct req_ctx *c, const char *msg)
{
	/* The first complaint wins: it is the one nearest the cause. */
	if (c->err[0] == '\0')
		snprintf(c->err, c->errlen, "%s", msg);
	return 0;
}

/* A value other than the one each member wants. */
static int
req_wrong_type(struct req_ctx *c)
{
	if (c->depth == 0)
		return req_fail(c, "body must be a JSON object");
	if (c->field == FIELD_KEY)
		return req_fail(c, "field key must be a string");
	return req_fail(c, "field value must be an integer");
}

static int
req_on_null(void *ctx)
{
	return req_wrong_type(ctx);
}

static int
req_on_boolean(void *ctx, int v)
{
	return req_wrong_type(ctx);
}

/*
 * yajl's lexer has already checked the JSON number grammar, so s is
 * -?digits with an optional fraction and exponent.  Only the plain integer
 * form counts; 1.0, 1e3 and -0.0 are refused rather than rounded.
 */
static int
req_on_number(void *ctx, const char *s, size_t len)
{
	struct req_ctx *c = ctx;
	uint64_t mag = 0, limit = INT64_MAX;
	size_t i = 0;
	int neg = 0;

	if (c->depth == 0 || c->field != FIELD_VALUE)
		return req_wrong_type(c);
	if (len > 0 && s[0] == '-') {
		neg = 1;
		limit = (uint64_t)INT64_MAX + 1;
		i = 1;
	}
	if (i == len)
		return req_fail(c, "field value must be an integer");
	for (; i < len; i++) {
		unsigned d;

		if (s[i] < '0' || s[i] > '9')
			return req_fail(c, "field value must be an integer");
		d = (unsigned)(s[i] - '0');
		if (mag > (limit - d) / 10) {
			/* Keep scanning: 1e400 is a float, not an overflow. */
			for (; i < len; i++)
				if (s[i] < '0' || s[i] > '9')
					return req_fail(c,
					    "field value must be an integer");
			return req_fail(c, "value out of range for int64");
		}
		mag = mag * 10 + d;
	}
	if (neg)
		c->out->value = mag == (uint64_t)INT64_MAX + 1 ?
		    INT64_MIN : -(int64_t)mag;
	else
		c->out->value = (int64_t)mag;
	c->have_value = 1;
	c->field = FIELD_NONE;
	return 1;
}

static int
req_on_string(void *ctx, const unsigned char *s, size_t len)
{
	struct req_ctx *c = ctx;
	char msg[64];

	if (c->depth == 0 || c->field != FIELD_KEY)
		return req_wrong_type(c);
	if (len == 0)
		return req_fail(c, "key must not be empty");
	if (len > c->max_key) {
		snprintf(msg, sizeof(msg), "key longer than %zu bytes",
		    c->max_key);
		return req_fail(c, msg);
	}
	if (memchr(s, '\0', len) != NULL)
		return req_fail(c, "key must not contain NUL");
	if (!request_utf8_valid((const char *)s, len))
		return req_fail(c, "key is not valid UTF-8");
	memcpy(c->out->key, s, len);
	c->out->key_len = len;
	c->have_key = 1;
	c->field = FIELD_NONE;
	return 1;
}

static int
req_on_start_map(void *ctx)
{
	struct req_ctx *c = ctx;

	if (c->depth != 0)
		return req_wrong_type(c);
	c->depth = 1;
	return 1;
}

static int
req_on_map_key(void *ctx, const unsigned char *s, size_t len)
{
	struct req_ctx *c = ctx;

	if (len == 3 && memcmp(s, "key", 3) == 0) {
		if (c->have_key)
			return req_fail(c, "duplicate field");
		c->field = FIELD_KEY;
	} else if (len == 5 && memcmp(s, "value", 5) == 0) {
		if (c->have_value)
			return req_fail(c, "duplicate field");
		c->field = FIELD_VALUE;
	} else
		return req_fail(c, "unknown field");
	return 1;
}

static int
req_on_end_map(void *ctx)
{
	struct req_ctx *c = ctx;

	c->depth = 0;
	c->done = 1;
	return 1;
}

static int
req_on_start_array(void *ctx)
{
	return req_wrong_type(ctx);
}

static int
req_on_end_array(void *ctx)
{
	/* Unreachable: every array is refused at its start. */
	return 0;
}

static const yajl_callbacks req_callbacks = {
	req_on_null,
	req_on_boolean,
	NULL,			/* integers come through req_on_number */
	NULL,
	req_on_number,
	req_on_string,
	req_on_start_map,
	req_on_map_key,
	req_on_end_map,
	req_on_start_array,
	req_on_end_array
};

static int
req_hexval(unsigned char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/*
 * yajl decodes a lone high surrogate escape to "?" and glues a high
 * surrogate to any following \u escape, so "\ud800" or "\ud800\u0041"
 * would come out as a key the client never wrote.  Scan the escapes of a
 * body yajl accepted (backslashes occur only inside strings then) and
 * refuse any surrogate escape that is not a proper pair.
 */
static int
req_surrogates_paired(const char *p, size_t len)
{
	size_t i = 0;
	int want_low = 0;

	while (i < len) {
		unsigned cp = 0;
		int j;

		if (p[i] != '\\') {
			if (want_low)
				return 0;
			i++;
			continue;
		}
		if (i + 1 >= len)
			return 0;
		if (p[i + 1] != 'u') {
			if (want_low)
				return 0;
			i += 2;
			continue;
		}
		if (i + 6 > len)
			return 0;
		for (j = 0; j < 4; j++) {
			int h = req_hexval((unsigned char)p[i + 2 + j]);

			if (h < 0)
				return 0;
			cp = cp << 4 | (unsigned)h;
		}
		i += 6;
		if (cp >= 0xd800 && cp <= 0xdbff) {
			if (want_low)
				return 0;
			want_low = 1;
		} else if (cp >= 0xdc00 && cp <= 0xdfff) {
			if (!want_low)
				return 0;
			want_low = 0;
		} else if (want_low)
			return 0;
	}
	return !want_low;
}

/* UTF-8 check shared by the key test and the error diagnosis. */
static int
req_utf8_scan(const unsigned char *s, size_t len, int allow_nul)
{
	size_t i = 0;

	while (i < len) {
		unsigned char c = s[i];
		unsigned char lo = 0x80, hi = 0xbf;
		size_t n, k;

		if (c < 0x80) {
			if (c == 0 && !allow_nul)
				return 0;
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			n = 1;
		else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			if (c == 0xe0)
				lo = 0xa0;	/* overlong */
			else if (c == 0xed)
				hi = 0x9f;	/* surrogates */
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			if (c == 0xf0)
				lo = 0x90;	/* overlong */
			else if (c == 0xf4)
				hi = 0x8f;	/* above U+10FFFF */
		} else
			return 0;
		if (len - i - 1 < n)
			return 0;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return 0;
		for (k = 2; k <= n; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xbf)
				return 0;
		i += n + 1;
	}
	return 1;
}

int
request_utf8_valid(const char *s, size_t len)
{
	return req_utf8_scan((const unsigned char *)s, len, 0);
}

static size_t
req_max_key(size_t max_key_bytes)
{
	return max_key_bytes < REQUEST_MAX_KEY_BYTES ?
	    max_key_bytes : REQUEST_MAX_KEY_BYTES;
}

static const char *
plain_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* p at a member's value: a string of printable ASCII without escapes. */
static const char *
plain_key(const char *p, const char *end, size_t max_key,
    const char **key, size_t *key_len)
{
	const char *s;

	if (p == end || *p++ != '"')
		return NULL;
	for (s = p; p < end && *p != '"'; p++)
		if (*p < 0x20 || *p > 0x7e || *p == '\\')
			return NULL;
	if (p == end || p == s || (size_t)(p - s) > max_key)
		return NULL;
	*key = s;
	*key_len = (size_t)(p - s);
	return p + 1;
}

/* p at a member's value: an integer of at most 18 digits, which fits. */
static const char *
plain_value(const char *p, const char *end, int64_t *value)
{
	const char *s;
	uint64_t mag = 0;
	int neg = 0;

	if (p < end && *p == '-') {
		neg = 1;
		p++;
	}
	for (s = p; p < end && *p >= '0' && *p <= '9'; p++)
		mag = mag * 10 + (uint64_t)(*p - '0');
	if (p == s || p - s > 18 || (p - s > 1 && *s == '0'))
		return NULL;
	*value = neg ? -(int64_t)mag : (int64_t)mag;
	return p;
}

/*
 * Nearly every body is {"key":"...","value":N}, in either order, with an
 * ASCII key that needs no escapes.  That form is read here directly and
 * everything else, every refusal included, goes to yajl: with its arena
 * yajl was 1,900 of a worker's 12,300 instructions an increment.  What
 * this takes is a subset of what yajl takes, with the same result; the
 * unit tests and the fuzzer hold the two parsers to it.
 */
static int
req_parse_plain(const char *p, size_t len, size_t max_key,
    struct increment_req *out)
{
	const char *end = p + len, *key = NULL;
	size_t key_len = 0;
	int64_t value = 0;
	int have_key = 0, have_value = 0, m;

	p = plain_ws(p, end);
	if (p == end || *p++ != '{')
		return 0;
	for (m = 0; m < 2; m++) {
		p = plain_ws(p, end);
		if (m == 1) {
			if (p == end || *p++ != ',')
				return 0;
			p = plain_ws(p, end);
		}
		if (!have_key && end - p >= 5 && memcmp(p, "\"key\"", 5) == 0) {
			p = plain_ws(p + 5, end);
			if (p == end || *p++ != ':')
				return 0;
			p = plain_key(plain_ws(p, end), end, max_key, &key,
			    &key_len);
			have_key = 1;
		} else if (!have_value && end - p >= 7 &&
		    memcmp(p, "\"value\"", 7) == 0) {
			p = plain_ws(p + 7, end);
			if (p == end || *p++ != ':')
				return 0;
			p = plain_value(plain_ws(p, end), end, &value);
			have_value = 1;
		} else
			return 0;
		if (p == NULL)
			return 0;
	}
	p = plain_ws(p, end);
	if (p == end || *p++ != '}' || plain_ws(p, end) != end)
		return 0;
	memcpy(out->key, key, key_len);
	out->key_len = key_len;
	out->value = value;
	return 1;
}

int
request_parse_increment(const char *body, size_t len, size_t max_key_bytes,
    struct increment_req *out, char *err, size_t errlen)
{
	if (req_parse_plain(body, len, req_max_key(max_key_bytes), out)) {
		if (err != NULL && errlen > 0)
			err[0] = '\0';
		return 0;
	}
	return request_parse_increment_json(body, len, max_key_bytes, out,
	    err, errlen);
}

int
request_parse_increment_json(const char *body, size_t len,
    size_t max_key_bytes, struct increment_req *out, char *err,
    size_t errlen)
{
	char scratch[64];
	struct req_arena arena;
	yajl_alloc_funcs af = { req_arena_malloc, req_arena_realloc,
	    req_arena_free, &arena };
	struct req_ctx c;
	yajl_handle h;
	yajl_status st;

	if (err == NULL || errlen == 0) {
		err = scratch;
		errlen = sizeof(scratch);
	}
	err[0] = '\0';
	memset(&c, 0, sizeof(c));
	c.out = out;
	c.max_key = req_max_key(max_key_bytes);
	c.err = err;
	c.errlen = errlen;
	out->key_len = 0;
	out->value = 0;

	if (len == 0) {
		req_fail(&c, "body is not valid JSON");
		return -1;
	}
	arena.used = 0;
	if ((h = yajl_alloc(&req_callbacks, &af, &c)) == NULL) {
		req_fail(&c, "out of memory");
		return -1;
	}
	/*
	 * yajl's defaults are the strict parser wanted here: no comments,
	 * strings checked as UTF-8, no trailing garbage, one value, no
	 * partial one.  (check_request holds each of them to it.)
	 */
	st = yajl_parse(h, (const unsigned char *)body, len);
	if (st == yajl_status_ok)
		st = yajl_complete_parse(h);
	yajl_free(h);

	if (st != yajl_status_ok) {
		/* A callback may already have said what was wrong. */
		if (err[0] == '\0') {
			if (!req_utf8_scan((const unsigned char *)body, len, 1))
				req_fail(&c, "body is not valid UTF-8");
			else
				req_fail(&c, "body is not valid JSON");
		}
		return -1;
	}
	if (!c.done) {
		req_fail(&c, "body must be a JSON object");
		return -1;
	}
	if (!c.have_key) {
		req_fail(&c, "missing field: key");
		return -1;
	}
	if (!c.have_value) {
		req_fail(&c, "missing field: value");
		return -1;
	}
	/* Only the key string can hold escapes once the members are known. */
	if (!req_surrogates_paired(body, len)) {
		req_fail(&c, "key is not valid UTF-8");
		return -1;
	}
	return 0;
}

ssize_t
request_decode_key(const char *src, size_t len, char *out, size_t outcap)
{
	size_t i = 0, n = 0;

	while (i < len) {
		unsigned char ch = (unsigned char)src[i];

		if (ch == '%') {
			int hi, lo;

			if (len - i < 3)
				return -1;
			hi = req_hexval((unsigned char)src[i + 1]);
			lo = req_hexval((unsigned char)src[i + 2]);
			if (hi < 0 || lo < 0)
				return -1;
			ch = (unsigned char)(hi << 4 | lo);
			i += 3;
		} else
			i++;
		if (n >= outcap)
			return -1;
		out[n++] = (char)ch;
	}
	if (n == 0 || !request_utf8_valid(out, n))
		return -1;
	return (ssize_t)n;
}

ssize_t
request_parse_idem_key(const char *src, size_t len, char *out, size_t outcap)
{
	size_t i, n = 0;

	/* Optional whitespace around a field value is not part of it. */
	while (len > 0 && (src[0] == ' ' || src[0] == '\t')) {
		src++;
		len--;
	}
	while (len > 0 && (src[len - 1] == ' ' || src[len - 1] == '\t'))
		len--;
	if (len == 0)
		return -1;

	if (src[0] == '"') {
		/* RFC 8941 sf-string: only \" and \\ are escapes. */
		if (len < 2 || src[len - 1] != '"')
			return -1;
		for (i = 1; i < len - 1; i++) {
			unsigned char ch = (unsigned char)src[i];

			if (ch < 0x20 || ch > 0x7e || ch == '"')
				return -1;
			if (ch == '\\') {
				if (i + 1 >= len - 1)
					return -1;
				ch = (unsigned char)src[++i];
				if (ch != '"' && ch != '\\')
					return -1;
			}
			if (n >= outcap || n >= REQUEST_MAX_IDEM_BYTES)
				return -1;
			out[n++] = (char)ch;
		}
	} else {
		/*
		 * Trimmed above, so a space here is an inner one.  A quote
		 * means a broken sf-string, not a bare key that holds one.
		 */
		for (i = 0; i < len; i++) {
			unsigned char ch = (unsigned char)src[i];

			if (ch < 0x20 || ch > 0x7e || ch == '"')
				return -1;
			if (n >= outcap || n >= REQUEST_MAX_IDEM_BYTES)
				return -1;
			out[n++] = (char)ch;
		}
	}
	if (n == 0)
		return -1;
	return (ssize_t)n;
}

int
json_put_raw(char *buf, size_t cap, size_t *off, const char *s)
{
	size_t len = strlen(s);

	if (*off > cap || cap - *off < len)
		return -1;
	memcpy(buf + *off, s, len);
	*off += len;
	return 0;
}

static int
json_plain(char c)
{
	unsigned char ch = (unsigned char)c;

	return ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f;
}

int
json_put_string(char *buf, size_t cap, size_t *off, const char *s,
    size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = *off, i = 0, run;

	if (o >= cap)
		return -1;
	buf[o++] = '"';
	while (i < len) {
		unsigned char ch;
		char esc = 0;

		/* What needs no escape is copied a run at a time. */
		for (run = i; run < len && json_plain(s[run]); run++)
			;
		if (cap - o < run - i)
			return -1;
		memcpy(buf + o, s + i, run - i);
		o += run - i;
		if ((i = run) == len)
			break;
		ch = (unsigned char)s[i++];
		switch (ch) {
		case '"':
			esc = '"';
			break;
		case '\\':
			esc = '\\';
			break;
		case '\n':
			esc = 'n';
			break;
		case '\r':
			esc = 'r';
			break;
		case '\t':
			esc = 't';
			break;
		case '\b':
			esc = 'b';
			break;
		case '\f':
			esc = 'f';
			break;
		}
		if (esc != 0) {
			if (cap - o < 2)
				return -1;
			buf[o++] = '\\';
			buf[o++] = esc;
		} else {
			/* The other control characters, and DEL. */
			if (cap - o < 6)
				return -1;
			memcpy(buf + o, "\\u00", 4);
			buf[o + 4] = hex[ch >> 4];
			buf[o + 5] = hex[ch & 0xf];
			o += 6;
		}
	}
	if (cap - o < 1)
		return -1;
	buf[o++] = '"';
	*off = o;
	return 0;
}

int
json_put_int(char *buf, size_t cap, size_t *off, int64_t v)
{
	char tmp[24];
	uint64_t mag;
	size_t n = 0, len;

	/* Through uint64_t so that INT64_MIN needs no special case. */
	mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
	do {
		tmp[sizeof(tmp) - 1 - n++] = (char)('0' + mag % 10);
		mag /= 10;
	} while (mag != 0);
	if (v < 0)
		tmp[sizeof(tmp) - 1 - n++] = '-';
	len = n;
	if (*off > cap || cap - *off < len)
		return -1;
	memcpy(buf + *off, tmp + sizeof(tmp) - len, len);
	*off += len;
	return 0;
}

int
json_format_total(char *buf, size_t cap, size_t *off, const char *key,
    size_t key_len, int64_t value)
{
	size_t o = *off;

	if (json_put_raw(buf, cap, &o, "{\"key\":") == -1 ||
	    json_put_string(buf, cap, &o, key, key_len) == -1 ||
	    json_put_raw(buf, cap, &o, ",\"value\":") == -1 ||
	    json_put_int(buf, cap, &o, value) == -1 ||
	    json_put_raw(buf, cap, &o, "}") == -1)
		return -1;
	*off = o;
	return 0;
}

int
json_format_get(char *buf, size_t cap, size_t *off, const char *key,
    size_t key_len, int64_t value)
{
	size_t o = *off;

	if (json_put_raw(buf, cap, &o, "{") == -1 ||
	    json_put_string(buf, cap, &o, key, key_len) == -1 ||
	    json_put_raw(buf, cap, &o, ":") == -1 ||
	    json_put_int(buf, cap, &o, value) == -1 ||
	    json_put_raw(buf, cap, &o, "}") == -1)
		return -1;
	*off = o;
	return 0;
}

int
json_format_error(char *buf, size_t cap, size_t *off, const char *msg)
{
	size_t o = *off;

	if (json_put_raw(buf, cap, &o, "{\"error\":") == -1 ||
	    json_put_string(buf, cap, &o, msg, strlen(msg)) == -1 ||
	    json_put_raw(buf, cap, &o, "}") == -1)
		return -1;
	*off = o;
	return 0;
}
