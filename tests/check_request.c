/*
 * Tests of client input parsing and of the JSON writer.  Every body is
 * copied into a buffer of exactly its length, so a read past len shows up
 * under valgrind or AddressSanitizer; every refusal is checked against its
 * exact message, since that text is what a client sees.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <yajl/yajl_tree.h>

#include "request.h"

#define MAXKEY	256

/* Parse len bytes of body from a heap copy of exactly that size. */
static int
parse_n(const char *body, size_t len, size_t max_key,
    struct increment_req *out, char *err, size_t errlen)
{
	char *copy = malloc(len > 0 ? len : 1);
	int rc;

	ck_assert_ptr_nonnull(copy);
	memcpy(copy, body, len);
	rc = request_parse_increment(copy, len, max_key, out, err, errlen);
	free(copy);
	return rc;
}

static void
accept_n(const char *body, size_t len, size_t max_key, const char *key,
    size_t key_len, int64_t value)
{
	struct increment_req r;
	char err[128] = "";

	memset(&r, 0xaa, sizeof(r));
	ck_assert_msg(parse_n(body, len, max_key, &r, err, sizeof(err)) == 0,
	    "refused '%.*s': %s", (int)len, body, err);
	ck_assert_uint_eq(r.key_len, key_len);
	ck_assert_mem_eq(r.key, key, key_len);
	ck_assert_msg(r.value == value, "'%.*s': value %lld, want %lld",
	    (int)len, body, (long long)r.value, (long long)value);
}

static void
accept(const char *body, const char *key, int64_t value)
{
	accept_n(body, strlen(body), MAXKEY, key, strlen(key), value);
}

static void
refuse_n(const char *body, size_t len, size_t max_key, const char *msg)
{
	struct increment_req r;
	char err[128] = "unset";

	ck_assert_msg(parse_n(body, len, max_key, &r, err, sizeof(err)) == -1,
	    "accepted '%.*s'", (int)len, body);
	ck_assert_msg(strcmp(err, msg) == 0, "'%.*s': got \"%s\", want \"%s\"",
	    (int)len, body, err, msg);
}

static void
refuse(const char *body, const char *msg)
{
	refuse_n(body, strlen(body), MAXKEY, msg);
}

/* For literals holding NUL bytes. */
#define REFUSE_LIT(lit, msg)	refuse_n(lit, sizeof(lit) - 1, MAXKEY, msg)

/* Valid bodies. */

START_TEST(test_valid_plain)
{
	accept("{\"key\":\"k\",\"value\":20}", "k", 20);
	accept("{\"key\": \"clicks\", \"value\": 1}", "clicks", 1);
	accept("{\"value\":7,\"key\":\"rev\"}", "rev", 7);
	accept(" \t\r\n{ \"key\" : \"a b\" ,\n\"value\" : -3 } \n", "a b", -3);
	accept("{\"key\":\"z\",\"value\":0}", "z", 0);
	accept("{\"key\":\"z\",\"value\":-0}", "z", 0);
	/* A member name written with escapes is still that member. */
	accept("{\"\\u006bey\":\"e\",\"val\\u0075e\":5}", "e", 5);
}
END_TEST

START_TEST(test_valid_escapes)
{
	accept("{\"key\":\"caf\\u00e9\",\"value\":1}", "caf\xc3\xa9", 1);
	accept("{\"key\":\"caf\xc3\xa9\",\"value\":1}", "caf\xc3\xa9", 1);
	accept("{\"key\":\"\\ud83d\\ude00\",\"value\":1}",
	    "\xf0\x9f\x98\x80", 1);
	accept("{\"key\":\"\xf4\x8f\xbf\xbf\",\"value\":1}",
	    "\xf4\x8f\xbf\xbf", 1);
	accept("{\"key\":\"\\udbff\\udfff\",\"value\":1}",
	    "\xf4\x8f\xbf\xbf", 1);
	accept("{\"key\":\"q\\\"b\\\\s\\/n\\n\\t\",\"value\":2}",
	    "q\"b\\s/n\n\t", 2);
	/* An escaped backslash followed by u is not a \u escape. */
	accept("{\"key\":\"\\\\ud800\",\"value\":3}", "\\ud800", 3);
}
END_TEST

START_TEST(test_valid_key_length)
{
	char body[2048], key[MAXKEY + 1];
	int n;

	memset(key, 'a', MAXKEY);
	n = snprintf(body, sizeof(body), "{\"key\":\"%.*s\",\"value\":9}",
	    MAXKEY, key);
	accept_n(body, (size_t)n, MAXKEY, key, MAXKEY, 9);

	/* 128 two-byte characters: 768 bytes of input, 256 of key. */
	n = snprintf(body, sizeof(body), "{\"key\":\"");
	for (int i = 0; i < 128; i++) {
		n += snprintf(body + n, sizeof(body) - n, "\\u00e9");
		key[2 * i] = (char)0xc3;
		key[2 * i + 1] = (char)0xa9;
	}
	n += snprintf(body + n, sizeof(body) - n, "\",\"value\":1}");
	accept_n(body, (size_t)n, MAXKEY, key, MAXKEY, 1);

	accept_n("{\"key\":\"abc\",\"value\":1}", 23, 3, "abc", 3, 1);
}
END_TEST

/*
 * The longest key there can be, every character escaped: yajl's buffers
 * outgrow the parser's arena and move to the heap mid-string (valgrind
 * and ASan in CI see that path for leaks and overruns).
 */
START_TEST(test_valid_key_outgrows_arena)
{
	static char body[6 * REQUEST_MAX_KEY_BYTES + 64];
	static char key[REQUEST_MAX_KEY_BYTES];
	int n;

	for (int round = 0; round < 2; round++) {
		n = snprintf(body, sizeof(body), "{\"key\":\"");
		for (int i = 0; i < REQUEST_MAX_KEY_BYTES / 2; i++) {
			n += snprintf(body + n, sizeof(body) - n, "\\u00e9");
			key[2 * i] = (char)0xc3;
			key[2 * i + 1] = (char)0xa9;
		}
		n += snprintf(body + n, sizeof(body) - n, "\",\"value\":%d}",
		    round);
		accept_n(body, (size_t)n, REQUEST_MAX_KEY_BYTES, key,
		    REQUEST_MAX_KEY_BYTES, round);
	}
	/* One byte over: refused, and what was taken given back. */
	n = snprintf(body, sizeof(body), "{\"key\":\"a");
	for (int i = 0; i < REQUEST_MAX_KEY_BYTES / 2; i++)
		n += snprintf(body + n, sizeof(body) - n, "\\u00e9");
	n += snprintf(body + n, sizeof(body) - n, "\",\"value\":1}");
	refuse_n(body, (size_t)n, REQUEST_MAX_KEY_BYTES, "key longer than "
	    "2048 bytes");
}
END_TEST

START_TEST(test_valid_not_terminated)
{
	/* The body is a prefix of a longer buffer: only len bytes count. */
	const char *s = "{\"key\":\"k\",\"value\":12}garbage";

	accept_n(s, 22, MAXKEY, "k", 1, 12);
	refuse_n(s, 21, MAXKEY, "body is not valid JSON");
}
END_TEST

/* Invalid JSON. */

START_TEST(test_invalid_empty)
{
	refuse("", "body is not valid JSON");
	refuse(" ", "body is not valid JSON");
	refuse("\r\n\t ", "body is not valid JSON");
}
END_TEST

START_TEST(test_invalid_truncated)
{
	const char *s = "{\"key\":\"ab\\u00e9\",\"value\":-123}";
	size_t len = strlen(s);

	for (size_t i = 0; i < len; i++)
		refuse_n(s, i, MAXKEY, "body is not valid JSON");
	accept_n(s, len, MAXKEY, "ab\xc3\xa9", 4, -123);
}
END_TEST

START_TEST(test_invalid_trailing)
{
	refuse("{\"key\":\"k\",\"value\":1}x", "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":1},", "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":1}}", "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":1} {\"key\":\"k\",\"value\":1}",
	    "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":1}{}", "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":1} 5", "body is not valid JSON");
	REFUSE_LIT("{\"key\":\"k\",\"value\":1}\0", "body is not valid JSON");
}
END_TEST

START_TEST(test_invalid_syntax)
{
	refuse("{\"key\":\"k\",\"value\":1 /* c */}", "body is not valid JSON");
	refuse("/* c */{\"key\":\"k\",\"value\":1}", "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":1} // c", "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":1,}", "body is not valid JSON");
	refuse("{'key':'k','value':1}", "body is not valid JSON");
	refuse("{key:\"k\",value:1}", "body is not valid JSON");
	refuse("{\"key\":\"k\" \"value\":1}", "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":01}", "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":+1}", "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":0x10}", "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":NaN}", "body is not valid JSON");
	refuse("{\"key\":\"k\",\"value\":1.}", "body is not valid JSON");
	refuse("{\"key\":\"a\tb\",\"value\":1}", "body is not valid JSON");
	refuse("{\"key\":\"a\\x\",\"value\":1}", "body is not valid JSON");
	refuse("{\"key\":\"\\u12\",\"value\":1}", "body is not valid JSON");
	REFUSE_LIT("{\"key\":\"a\0b\",\"value\":1}", "body is not valid JSON");
}
END_TEST

START_TEST(test_invalid_raw_utf8)
{
	/* Bytes no UTF-8 text has: yajl's own check refuses the body. */
	refuse("{\"key\":\"\xff\",\"value\":1}", "body is not valid UTF-8");
	refuse("{\"key\":\"\x80\",\"value\":1}", "body is not valid UTF-8");
	refuse("{\"key\":\"\xc3\",\"value\":1}", "body is not valid UTF-8");
	refuse("{\"key\":\"\xe2\x82\",\"value\":1}", "body is not valid UTF-8");
}
END_TEST

/* Valid JSON of the wrong shape. */

START_TEST(test_shape_top_level)
{
	refuse("[]", "body must be a JSON object");
	refuse("[{\"key\":\"k\",\"value\":1}]", "body must be a JSON object");
	refuse("\"k\"", "body must be a JSON object");
	refuse("5", "body must be a JSON object");
	refuse("-1.5", "body must be a JSON object");
	refuse("null", "body must be a JSON object");
	refuse("true", "body must be a JSON object");
	refuse("false", "body must be a JSON object");
}
END_TEST

START_TEST(test_shape_members)
{
	refuse("{}", "missing field: key");
	refuse("{\"value\":1}", "missing field: key");
	refuse("{\"key\":\"k\"}", "missing field: value");
	refuse("{\"key\":\"k\",\"value\":1,\"extra\":1}", "unknown field");
	refuse("{\"extra\":1,\"key\":\"k\",\"value\":1}", "unknown field");
	refuse("{\"Key\":\"k\",\"value\":1}", "unknown field");
	refuse("{\"key \":\"k\",\"value\":1}", "unknown field");
	refuse("{\"\":\"k\",\"value\":1}", "unknown field");
	REFUSE_LIT("{\"key\0\":\"k\",\"value\":1}", "body is not valid JSON");
	refuse("{\"key\\u0000\":\"k\",\"value\":1}", "unknown field");
	refuse("{\"key\":\"k\",\"key\":\"k\",\"value\":1}", "duplicate field");
	refuse("{\"key\":\"k\",\"value\":1,\"value\":1}", "duplicate field");
	refuse("{\"value\":1,\"key\":\"k\",\"\\u006bey\":\"j\"}",
	    "duplicate field");
}
END_TEST

START_TEST(test_shape_types)
{
	refuse("{\"key\":5,\"value\":1}", "field key must be a string");
	refuse("{\"key\":null,\"value\":1}", "field key must be a string");
	refuse("{\"key\":true,\"value\":1}", "field key must be a string");
	refuse("{\"key\":false,\"value\":1}", "field key must be a string");
	refuse("{\"key\":1.5,\"value\":1}", "field key must be a string");
	refuse("{\"key\":[\"k\"],\"value\":1}", "field key must be a string");
	refuse("{\"key\":{\"a\":1},\"value\":1}", "field key must be a string");
	refuse("{\"key\":{},\"value\":1}", "field key must be a string");
	refuse("{\"key\":\"k\",\"value\":\"5\"}",
	    "field value must be an integer");
	refuse("{\"key\":\"k\",\"value\":null}",
	    "field value must be an integer");
	refuse("{\"key\":\"k\",\"value\":true}",
	    "field value must be an integer");
	refuse("{\"key\":\"k\",\"value\":[1]}",
	    "field value must be an integer");
	refuse("{\"key\":\"k\",\"value\":[]}",
	    "field value must be an integer");
	refuse("{\"key\":\"k\",\"value\":{\"v\":1}}",
	    "field value must be an integer");
	/* The first fault is the one reported. */
	refuse("{\"key\":5,\"value\":\"x\"}", "field key must be a string");
	refuse("{\"key\":5,\"value\":1", "field key must be a string");
}
END_TEST

/* int64 edges and non-integers. */

START_TEST(test_int64_edges)
{
	accept("{\"key\":\"k\",\"value\":9223372036854775807}", "k", INT64_MAX);
	accept("{\"key\":\"k\",\"value\":-9223372036854775808}", "k",
	    INT64_MIN);
	accept("{\"key\":\"k\",\"value\":9223372036854775806}", "k",
	    INT64_MAX - 1);
	accept("{\"key\":\"k\",\"value\":-9223372036854775807}", "k",
	    INT64_MIN + 1);
	accept("{\"key\":\"k\",\"value\":1000000000000000000}", "k",
	    INT64_C(1000000000000000000));
	refuse("{\"key\":\"k\",\"value\":9223372036854775808}",
	    "value out of range for int64");
	refuse("{\"key\":\"k\",\"value\":-9223372036854775809}",
	    "value out of range for int64");
	refuse("{\"key\":\"k\",\"value\":9223372036854775810}",
	    "value out of range for int64");
	refuse("{\"key\":\"k\",\"value\":18446744073709551616}",
	    "value out of range for int64");
	refuse("{\"key\":\"k\",\"value\":99999999999999999999999999999}",
	    "value out of range for int64");
	refuse("{\"key\":\"k\",\"value\":-99999999999999999999999999999}",
	    "value out of range for int64");
}
END_TEST

START_TEST(test_int64_floats)
{
	static const char *floats[] = {
		"1.5", "1.0", "0.0", "-0.0", "1e3", "1E3", "1e+3", "1e-3",
		"-1.5e2", "1e400", "99999999999999999999999.5",
		"99999999999999999999999e1", "9223372036854775807.0",
	};
	char body[128];

	for (size_t i = 0; i < sizeof(floats) / sizeof(floats[0]); i++) {
		snprintf(body, sizeof(body), "{\"key\":\"k\",\"value\":%s}",
		    floats[i]);
		refuse(body, "field value must be an integer");
	}
}
END_TEST

/* Key content. */

START_TEST(test_key_length)
{
	char body[2048], key[MAXKEY + 2];
	int n;

	refuse("{\"key\":\"\",\"value\":1}", "key must not be empty");
	memset(key, 'a', sizeof(key));
	n = snprintf(body, sizeof(body), "{\"key\":\"%.*s\",\"value\":9}",
	    MAXKEY + 1, key);
	refuse_n(body, (size_t)n, MAXKEY, "key longer than 256 bytes");
	refuse_n("{\"key\":\"abcd\",\"value\":1}", 24, 3,
	    "key longer than 3 bytes");
	/* The limit counts decoded bytes: 129 x U+00E9 is 258 bytes. */
	n = snprintf(body, sizeof(body), "{\"key\":\"");
	for (int i = 0; i < 129; i++)
		n += snprintf(body + n, sizeof(body) - n, "\\u00e9");
	n += snprintf(body + n, sizeof(body) - n, "\",\"value\":1}");
	refuse_n(body, (size_t)n, MAXKEY, "key longer than 256 bytes");
	/* A limit above the struct's room is held to that room. */
	refuse_n("{\"key\":\"\",\"value\":1}", 20, 100000,
	    "key must not be empty");
}
END_TEST

START_TEST(test_key_nul)
{
	refuse("{\"key\":\"\\u0000\",\"value\":1}", "key must not contain NUL");
	refuse("{\"key\":\"a\\u0000b\",\"value\":1}",
	    "key must not contain NUL");
}
END_TEST

START_TEST(test_key_surrogates)
{
	/* yajl would make "?" of this, or glue it to the next escape. */
	refuse("{\"key\":\"\\ud800\",\"value\":1}", "key is not valid UTF-8");
	refuse("{\"key\":\"a\\ud800b\",\"value\":1}", "key is not valid UTF-8");
	refuse("{\"key\":\"\\ud800\\u0041\",\"value\":1}",
	    "key is not valid UTF-8");
	refuse("{\"key\":\"\\ud800\\ud800\",\"value\":1}",
	    "key is not valid UTF-8");
	refuse("{\"key\":\"\\ud800\\n\",\"value\":1}",
	    "key is not valid UTF-8");
	refuse("{\"key\":\"\\udc00\",\"value\":1}", "key is not valid UTF-8");
	refuse("{\"key\":\"\\uDFFF\\uD800\",\"value\":1}",
	    "key is not valid UTF-8");
	refuse("{\"value\":1,\"key\":\"x\\uDBFF\"}", "key is not valid UTF-8");
}
END_TEST

START_TEST(test_key_raw_bad_utf8)
{
	/* Well formed in yajl's eyes, but overlong or out of range. */
	refuse("{\"key\":\"\xc0\xaf\",\"value\":1}", "key is not valid UTF-8");
	refuse("{\"key\":\"\xc1\xbf\",\"value\":1}", "key is not valid UTF-8");
	refuse("{\"key\":\"\xe0\x80\xaf\",\"value\":1}",
	    "key is not valid UTF-8");
	refuse("{\"key\":\"\xf0\x80\x80\xaf\",\"value\":1}",
	    "key is not valid UTF-8");
	refuse("{\"key\":\"\xed\xa0\x80\",\"value\":1}",
	    "key is not valid UTF-8");
	refuse("{\"key\":\"\xf4\x90\x80\x80\",\"value\":1}",
	    "key is not valid UTF-8");
}
END_TEST

START_TEST(test_err_buffer)
{
	struct increment_req r;
	char err[8];

	/* A short error buffer truncates the message, never overflows. */
	memset(err, 'x', sizeof(err));
	ck_assert_int_eq(request_parse_increment("[]", 2, MAXKEY, &r, err,
	    sizeof(err)), -1);
	ck_assert_str_eq(err, "body mu");
	ck_assert_int_eq(request_parse_increment("[]", 2, MAXKEY, &r, NULL,
	    0), -1);
}
END_TEST

/* request_utf8_valid */

struct utf8_case {
	const char	*s;
	size_t		 len;
	int		 valid;
};

#define U(str, v)	{ str, sizeof(str) - 1, v }

START_TEST(test_utf8_table)
{
	static const struct utf8_case cases[] = {
		U("", 1),
		U("plain ascii ~\x7f", 1),
		U("\x01", 1),
		U("\x00", 0),
		U("a\x00z", 0),
		U("\xc2\x80", 1),			/* U+0080 */
		U("\xdf\xbf", 1),			/* U+07FF */
		U("\xe0\xa0\x80", 1),			/* U+0800 */
		U("\xef\xbf\xbf", 1),			/* U+FFFF */
		U("\xed\x9f\xbf", 1),			/* U+D7FF */
		U("\xee\x80\x80", 1),			/* U+E000 */
		U("\xf0\x90\x80\x80", 1),		/* U+10000 */
		U("\xf4\x8f\xbf\xbf", 1),		/* U+10FFFF */
		U("\xe2\x82\xac\xf0\x9f\x98\x80", 1),
		/* overlongs */
		U("\xc0\x80", 0),
		U("\xc0\xaf", 0),
		U("\xc1\xbf", 0),
		U("\xe0\x80\x80", 0),
		U("\xe0\x9f\xbf", 0),
		U("\xf0\x80\x80\x80", 0),
		U("\xf0\x8f\xbf\xbf", 0),
		/* surrogates */
		U("\xed\xa0\x80", 0),			/* U+D800 */
		U("\xed\xbf\xbf", 0),			/* U+DFFF */
		U("\xed\xa0\xbd\xed\xb8\x80", 0),	/* CESU-8 pair */
		/* beyond U+10FFFF and invalid lead bytes */
		U("\xf4\x90\x80\x80", 0),
		U("\xf5\x80\x80\x80", 0),
		U("\xf7\xbf\xbf\xbf", 0),
		U("\xf8\x88\x80\x80\x80", 0),
		U("\xfc\x84\x80\x80\x80\x80", 0),
		U("\xfe", 0),
		U("\xff", 0),
		/* stray or missing continuation bytes */
		U("\x80", 0),
		U("\xbf", 0),
		U("a\x80", 0),
		U("\xc2", 0),
		U("\xc2\x41", 0),
		U("\xc2\xc0", 0),
		U("\xe2\x82", 0),
		U("\xe2\x82\x41", 0),
		U("\xe2\x28\xa1", 0),
		U("\xf0\x9f\x98", 0),
		U("\xf0\x9f\x98\x41", 0),
		U("\xf0\x9f\x41\x80", 0),
		U("\xc3\xa9\xc3", 0),
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *copy = malloc(cases[i].len + 1);

		memcpy(copy, cases[i].s, cases[i].len);
		ck_assert_msg(request_utf8_valid(copy, cases[i].len) ==
		    cases[i].valid, "case %zu: want %d", i, cases[i].valid);
		free(copy);
	}
}
END_TEST

START_TEST(test_utf8_all_code_points)
{
	/* Every scalar value encodes to something valid, at every length. */
	unsigned char b[4];

	for (unsigned cp = 1; cp <= 0x10ffff; cp++) {
		size_t n;

		if (cp >= 0xd800 && cp <= 0xdfff)
			continue;
		if (cp < 0x80) {
			b[0] = (unsigned char)cp;
			n = 1;
		} else if (cp < 0x800) {
			b[0] = (unsigned char)(0xc0 | cp >> 6);
			b[1] = (unsigned char)(0x80 | (cp & 0x3f));
			n = 2;
		} else if (cp < 0x10000) {
			b[0] = (unsigned char)(0xe0 | cp >> 12);
			b[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
			b[2] = (unsigned char)(0x80 | (cp & 0x3f));
			n = 3;
		} else {
			b[0] = (unsigned char)(0xf0 | cp >> 18);
			b[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
			b[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
			b[3] = (unsigned char)(0x80 | (cp & 0x3f));
			n = 4;
		}
		if (!request_utf8_valid((char *)b, n))
			ck_abort_msg("U+%04X refused", cp);
		/* Any proper prefix of a multibyte sequence is invalid. */
		for (size_t k = 1; k < n; k++)
			if (request_utf8_valid((char *)b, k))
				ck_abort_msg("U+%04X prefix %zu accepted",
				    cp, k);
	}
}
END_TEST

/* request_decode_key */

static void
decode_ok(const char *src, const char *want, size_t want_len)
{
	char out[64];

	memset(out, 0, sizeof(out));
	ck_assert_msg(request_decode_key(src, strlen(src), out, sizeof(out)) ==
	    (ssize_t)want_len, "decode '%s'", src);
	ck_assert_mem_eq(out, want, want_len);
}

static void
decode_bad(const char *src)
{
	char out[64];

	ck_assert_msg(request_decode_key(src, strlen(src), out, sizeof(out)) ==
	    -1, "decoded '%s'", src);
}

START_TEST(test_decode_valid)
{
	decode_ok("abc", "abc", 3);
	decode_ok("a%20b", "a b", 3);
	decode_ok("%2f%2F", "//", 2);
	decode_ok("a+b", "a+b", 3);
	decode_ok("%2B", "+", 1);
	decode_ok("%25", "%", 1);
	decode_ok("caf%C3%A9", "caf\xc3\xa9", 5);
	decode_ok("caf%c3%a9", "caf\xc3\xa9", 5);
	decode_ok("caf\xc3\xa9", "caf\xc3\xa9", 5);
	decode_ok("%F0%9F%98%80", "\xf0\x9f\x98\x80", 4);
	decode_ok("%7f", "\x7f", 1);
}
END_TEST

START_TEST(test_decode_invalid)
{
	decode_bad("");
	decode_bad("%");
	decode_bad("a%");
	decode_bad("%2");
	decode_bad("a%2");
	decode_bad("%zz");
	decode_bad("%g0");
	decode_bad("%0g");
	decode_bad("%%41");
	decode_bad("% 41");
	decode_bad("%00");
	decode_bad("a%00b");
	decode_bad("%ff");
	decode_bad("%C3");
	decode_bad("%C0%AF");
	decode_bad("%ED%A0%80");
	decode_bad("%F4%90%80%80");
	decode_bad("\xc3");
}
END_TEST

START_TEST(test_decode_capacity)
{
	char out[4];

	memset(out, 'x', sizeof(out));
	ck_assert_int_eq(request_decode_key("abc", 3, out, 3), 3);
	ck_assert_int_eq(out[3], 'x');
	ck_assert_int_eq(request_decode_key("abcd", 4, out, 3), -1);
	ck_assert_int_eq(out[3], 'x');
	ck_assert_int_eq(request_decode_key("%41%42%43", 9, out, 3), 3);
	ck_assert_mem_eq(out, "ABC", 3);
	ck_assert_int_eq(request_decode_key("%41%42%43%44", 12, out, 3), -1);
	ck_assert_int_eq(out[3], 'x');
	ck_assert_int_eq(request_decode_key("a", 1, out, 0), -1);
	/* Only len bytes are read: the escape is cut by len. */
	ck_assert_int_eq(request_decode_key("a%41", 3, out, sizeof(out)), -1);
	ck_assert_int_eq(request_decode_key("a%41", 1, out, sizeof(out)), 1);
}
END_TEST

/* request_parse_idem_key */

static void
idem_ok(const char *src, const char *want)
{
	char out[REQUEST_MAX_IDEM_BYTES];
	size_t len = strlen(src);
	char *copy = malloc(len + 1);
	ssize_t n;

	memcpy(copy, src, len);
	n = request_parse_idem_key(copy, len, out, sizeof(out));
	free(copy);
	ck_assert_msg(n == (ssize_t)strlen(want), "idem '%s': %zd", src, n);
	ck_assert_mem_eq(out, want, strlen(want));
}

static void
idem_bad(const char *src)
{
	char out[REQUEST_MAX_IDEM_BYTES];

	ck_assert_msg(request_parse_idem_key(src, strlen(src), out,
	    sizeof(out)) == -1, "idem '%s' accepted", src);
}

START_TEST(test_idem_forms)
{
	idem_ok("abc", "abc");
	idem_ok("\"abc\"", "abc");
	idem_ok("8e03978e-40d5-43e8", "8e03978e-40d5-43e8");
	idem_ok("\"8e03978e-40d5-43e8\"", "8e03978e-40d5-43e8");
	idem_ok("  abc\t", "abc");
	idem_ok(" \t\"abc\" ", "abc");
	idem_ok("a b", "a b");
	idem_ok("\" a b \"", " a b ");
	idem_ok("\"a\\\"b\"", "a\"b");
	idem_ok("\"a\\\\b\"", "a\\b");
	idem_ok("\"\\\\\"", "\\");
	idem_ok("a\\b", "a\\b");
	idem_ok("!~", "!~");
	idem_ok("x", "x");
}
END_TEST

START_TEST(test_idem_invalid)
{
	idem_bad("");
	idem_bad("   ");
	idem_bad("\"\"");
	idem_bad("\"");
	idem_bad("\"abc");
	idem_bad("abc\"x\"");
	idem_bad("\"a\"b\"");
	idem_bad("\"abc\";p=1");
	idem_bad("\"a\\nb\"");
	idem_bad("\"a\\\"");
	idem_bad("\"abc\\\"");
	idem_bad("a\tb");
	idem_bad("\"a\tb\"");
	idem_bad("a\x7f");
	idem_bad("a\x01");
	idem_bad("caf\xc3\xa9");
	idem_bad("\"caf\xc3\xa9\"");
	idem_bad("a\r\nb");
}
END_TEST

START_TEST(test_idem_length)
{
	char src[600], out[600];
	ssize_t n;

	memset(src, 'k', sizeof(src));
	n = request_parse_idem_key(src, 255, out, sizeof(out));
	ck_assert_int_eq(n, 255);
	ck_assert_int_eq(request_parse_idem_key(src, 256, out, sizeof(out)),
	    -1);
	/* Quoted: 255 characters inside the quotes. */
	src[0] = '"';
	src[256] = '"';
	ck_assert_int_eq(request_parse_idem_key(src, 257, out, sizeof(out)),
	    255);
	src[257] = '"';
	src[256] = 'k';
	ck_assert_int_eq(request_parse_idem_key(src, 258, out, sizeof(out)),
	    -1);
	/* Escapes count once: 200 x \\ inside quotes is 200 bytes. */
	src[0] = '"';
	for (int i = 0; i < 400; i++)
		src[1 + i] = '\\';
	src[401] = '"';
	n = request_parse_idem_key(src, 402, out, sizeof(out));
	ck_assert_int_eq(n, 200);
	for (int i = 0; i < 200; i++)
		ck_assert_int_eq(out[i], '\\');
	/* The caller's capacity is honoured. */
	memset(out, 'x', sizeof(out));
	ck_assert_int_eq(request_parse_idem_key("abcd", 4, out, 3), -1);
	ck_assert_int_eq(out[3], 'x');
	ck_assert_int_eq(request_parse_idem_key("\"abcd\"", 6, out, 3), -1);
	ck_assert_int_eq(out[3], 'x');
	ck_assert_int_eq(request_parse_idem_key("abc", 3, out, 3), 3);
}
END_TEST

/* JSON output */

static void
put_str_eq(const char *s, size_t len, const char *want)
{
	char buf[512];
	size_t off = 0;

	ck_assert_int_eq(json_put_string(buf, sizeof(buf), &off, s, len), 0);
	ck_assert_msg(off == strlen(want) && memcmp(buf, want, off) == 0,
	    "got %.*s want %s", (int)off, buf, want);
}

START_TEST(test_json_escaping)
{
	put_str_eq("", 0, "\"\"");
	put_str_eq("abc", 3, "\"abc\"");
	put_str_eq("a\"b", 3, "\"a\\\"b\"");
	put_str_eq("a\\b", 3, "\"a\\\\b\"");
	put_str_eq("/", 1, "\"/\"");
	put_str_eq("\n\r\t\b\f", 5, "\"\\n\\r\\t\\b\\f\"");
	put_str_eq("\x00", 1, "\"\\u0000\"");
	put_str_eq("\x01\x1f\x0b", 3, "\"\\u0001\\u001f\\u000b\"");
	put_str_eq("\x7f", 1, "\"\\u007f\"");
	put_str_eq("caf\xc3\xa9 \xf0\x9f\x98\x80", 10,
	    "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"");
	put_str_eq("~ ", 2, "\"~ \"");
}
END_TEST

START_TEST(test_json_int)
{
	static const struct {
		int64_t		 v;
		const char	*s;
	} cases[] = {
		{ 0, "0" }, { 1, "1" }, { -1, "-1" }, { 10, "10" },
		{ -20, "-20" }, { 1234567890, "1234567890" },
		{ INT64_MAX, "9223372036854775807" },
		{ INT64_MIN, "-9223372036854775808" },
		{ INT64_MIN + 1, "-9223372036854775807" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char buf[32];
		size_t off = 0;

		ck_assert_int_eq(json_put_int(buf, sizeof(buf), &off,
		    cases[i].v), 0);
		ck_assert_uint_eq(off, strlen(cases[i].s));
		ck_assert_mem_eq(buf, cases[i].s, off);
	}
}
END_TEST

START_TEST(test_json_formats)
{
	char buf[256];
	size_t off = 0;

	ck_assert_int_eq(json_format_total(buf, sizeof(buf), &off, "k", 1,
	    123), 0);
	ck_assert_uint_eq(off, strlen("{\"key\":\"k\",\"value\":123}"));
	ck_assert_mem_eq(buf, "{\"key\":\"k\",\"value\":123}", off);

	off = 0;
	ck_assert_int_eq(json_format_get(buf, sizeof(buf), &off, "k", 1,
	    -5), 0);
	ck_assert_uint_eq(off, strlen("{\"k\":-5}"));
	ck_assert_mem_eq(buf, "{\"k\":-5}", off);

	off = 0;
	ck_assert_int_eq(json_format_error(buf, sizeof(buf), &off,
	    "say \"no\""), 0);
	ck_assert_uint_eq(off, strlen("{\"error\":\"say \\\"no\\\"\"}"));
	ck_assert_mem_eq(buf, "{\"error\":\"say \\\"no\\\"\"}", off);

	/* Appending continues at *off. */
	off = 3;
	memcpy(buf, "xyz", 3);
	ck_assert_int_eq(json_put_raw(buf, sizeof(buf), &off, "ab"), 0);
	ck_assert_int_eq(json_put_int(buf, sizeof(buf), &off, 7), 0);
	ck_assert_uint_eq(off, 6);
	ck_assert_mem_eq(buf, "xyzab7", 6);
}
END_TEST

/*
 * For every capacity short of the full answer: -1, nothing written past
 * cap, and (for the format helpers) *off left where it was.
 */
START_TEST(test_json_small_buffers)
{
	const char *key = "q\"\x01\xc3\xa9";
	char want[128], buf[160];
	size_t need, off;

	off = 0;
	ck_assert_int_eq(json_format_total(want, sizeof(want), &off, key,
	    strlen(key), INT64_MIN), 0);
	need = off;
	ck_assert_mem_eq(want,
	    "{\"key\":\"q\\\"\\u0001\xc3\xa9\",\"value\":-9223372036854775808}",
	    need);

	for (size_t cap = 0; cap <= need; cap++) {
		int rc;

		memset(buf, '#', sizeof(buf));
		off = 0;
		rc = json_format_total(buf, cap, &off, key, strlen(key),
		    INT64_MIN);
		for (size_t i = cap; i < sizeof(buf); i++)
			ck_assert_int_eq(buf[i], '#');
		if (cap < need) {
			ck_assert_int_eq(rc, -1);
			ck_assert_uint_eq(off, 0);
		} else {
			ck_assert_int_eq(rc, 0);
			ck_assert_uint_eq(off, need);
			ck_assert_mem_eq(buf, want, need);
		}

		memset(buf, '#', sizeof(buf));
		off = 0;
		rc = json_format_get(buf, cap, &off, key, strlen(key), 1);
		for (size_t i = cap; i < sizeof(buf); i++)
			ck_assert_int_eq(buf[i], '#');
		if (rc == -1)
			ck_assert_uint_eq(off, 0);

		memset(buf, '#', sizeof(buf));
		off = 0;
		rc = json_format_error(buf, cap, &off, "bad \x01 thing");
		for (size_t i = cap; i < sizeof(buf); i++)
			ck_assert_int_eq(buf[i], '#');
		if (rc == -1)
			ck_assert_uint_eq(off, 0);

		memset(buf, '#', sizeof(buf));
		off = 0;
		rc = json_put_string(buf, cap, &off, key, strlen(key));
		for (size_t i = cap; i < sizeof(buf); i++)
			ck_assert_int_eq(buf[i], '#');
		ck_assert_int_eq(rc, cap >= 13 ? 0 : -1);

		memset(buf, '#', sizeof(buf));
		off = 0;
		rc = json_put_int(buf, cap, &off, INT64_MIN);
		for (size_t i = cap; i < sizeof(buf); i++)
			ck_assert_int_eq(buf[i], '#');
		ck_assert_int_eq(rc, cap >= 20 ? 0 : -1);
	}
	/* An offset already past the end is refused, not wrapped. */
	off = 10;
	ck_assert_int_eq(json_put_raw(buf, 5, &off, ""), -1);
	ck_assert_int_eq(json_put_string(buf, 5, &off, "", 0), -1);
	ck_assert_int_eq(json_put_int(buf, 5, &off, 0), -1);
	ck_assert_uint_eq(off, 10);
}
END_TEST

/* A key holding every ASCII byte but NUL, and some non-ASCII. */
static size_t
weird_key(char *key)
{
	size_t n = 0;

	for (int c = 1; c < 0x80; c++)
		key[n++] = (char)c;
	memcpy(key + n, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9);
	return n + 9;
}

START_TEST(test_json_round_trip_yajl)
{
	char key[256], buf[1024], text[1025], errbuf[128];
	const char *total_path[] = { "key", NULL };
	const char *value_path[] = { "value", NULL };
	size_t klen = weird_key(key), off = 0;
	yajl_val tree, v;

	key[klen] = '\0';
	ck_assert_int_eq(json_format_total(buf, sizeof(buf), &off, key, klen,
	    INT64_MAX), 0);
	memcpy(text, buf, off);
	text[off] = '\0';
	tree = yajl_tree_parse(text, errbuf, sizeof(errbuf));
	ck_assert_msg(tree != NULL, "yajl: %s", errbuf);
	v = yajl_tree_get(tree, total_path, yajl_t_string);
	ck_assert_ptr_nonnull(v);
	ck_assert_str_eq(YAJL_GET_STRING(v), key);
	v = yajl_tree_get(tree, value_path, yajl_t_number);
	ck_assert_ptr_nonnull(v);
	ck_assert(YAJL_IS_INTEGER(v));
	ck_assert(YAJL_GET_INTEGER(v) == INT64_MAX);
	yajl_tree_free(tree);

	off = 0;
	ck_assert_int_eq(json_format_get(buf, sizeof(buf), &off, key, klen,
	    -42), 0);
	memcpy(text, buf, off);
	text[off] = '\0';
	tree = yajl_tree_parse(text, errbuf, sizeof(errbuf));
	ck_assert_msg(tree != NULL, "yajl: %s", errbuf);
	ck_assert(YAJL_IS_OBJECT(tree));
	ck_assert_uint_eq(YAJL_GET_OBJECT(tree)->len, 1);
	ck_assert_str_eq(YAJL_GET_OBJECT(tree)->keys[0], key);
	ck_assert(YAJL_GET_INTEGER(YAJL_GET_OBJECT(tree)->values[0]) == -42);
	yajl_tree_free(tree);

	off = 0;
	ck_assert_int_eq(json_format_error(buf, sizeof(buf), &off, key), 0);
	memcpy(text, buf, off);
	text[off] = '\0';
	tree = yajl_tree_parse(text, errbuf, sizeof(errbuf));
	ck_assert_msg(tree != NULL, "yajl: %s", errbuf);
	v = yajl_tree_get(tree, (const char *[]){ "error", NULL },
	    yajl_t_string);
	ck_assert_ptr_nonnull(v);
	ck_assert_str_eq(YAJL_GET_STRING(v), key);
	yajl_tree_free(tree);
}
END_TEST

START_TEST(test_json_round_trip_parser)
{
	/* What we write, we read back: same key, same value. */
	char key[256], buf[1024];
	size_t klen = weird_key(key), off = 0;

	ck_assert_int_eq(json_format_total(buf, sizeof(buf), &off, key, klen,
	    INT64_MIN), 0);
	accept_n(buf, off, MAXKEY, key, klen, INT64_MIN);
}
END_TEST

/*
 * request_parse_increment reads the usual form itself and gives the rest
 * to yajl (request_parse_increment_json).  Both must answer alike, on
 * near misses of that form above all: each seed below, truncated, and
 * with every byte deleted, replaced or preceded by each of the bytes
 * that mean something to either parser.
 */
static const char *const diff_seeds[] = {
	"{\"key\":\"k\",\"value\":20}",
	"{\"value\":-7,\"key\":\"rev-1\"}",
	" {\r\n\t\"key\" : \"a b\" , \"value\" : 0 } ",
	"{\"key\":\"z\",\"value\":-0}",
	"{\"key\":\"max\",\"value\":999999999999999999}",
	"{\"key\":\"big\",\"value\":-9223372036854775808}",
	"{\"key\":\"big\",\"value\":9223372036854775807}",
	"{\"key\":\"f\",\"value\":1.0}",
	"{\"key\":\"e\",\"value\":1e3}",
	"{\"key\":\"lz\",\"value\":01}",
	"{\"key\":\"\",\"value\":1}",
	"{\"key\":\"abcd\",\"value\":1}",
	"{\"key\":\"abcde\",\"value\":1}",
	"{\"key\":\"q\\\"b\",\"value\":2}",
	"{\"key\":\"caf\xc3\xa9\",\"value\":1}",
	"{\"key\":\"del\x7f\",\"value\":1}",
	"{\"\\u006bey\":\"e\",\"value\":5}",
	"{\"key\":\"d\",\"key\":\"d\",\"value\":1}",
	"{\"key\":\"d\",\"value\":1,\"value\":1}",
	"{\"key\":\"x\",\"value\":1,\"extra\":1}",
	"{\"key\":\"x\"}",
	"{\"value\":1}",
	"{\"key\":1,\"value\":\"x\"}",
	"{\"key\":\"x\",\"value\":[1]}",
	"{\"key\":\"x\",\"value\":true}",
	"{\"key\":\"x\",\"value\":null}",
	"{\"key\":\"x\",\"value\":1}{}",
	"[{\"key\":\"x\",\"value\":1}]",
	"\v{\"key\":\"x\",\"value\":1}\f",
};

static const unsigned char diff_bytes[] = {
	'"', '\\', ',', ':', '{', '}', '[', ' ', '\t', '\n', '\r', '\v', '\f',
	'0', '1', '9', '-', '+', '.', 'e', 'k', 'u', 'v', 0x00, 0x1f, 0x7f,
	0x80, 0xc3, 0xff,
};

struct diff_count {
	size_t	accepted, refused;
};

static void
diff_one(const char *body, size_t len, size_t max_key, struct diff_count *n)
{
	struct increment_req a, b;
	char ea[128], eb[128], *copy = malloc(len > 0 ? len : 1);
	int ra, rb;

	ck_assert_ptr_nonnull(copy);
	memcpy(copy, body, len);
	memset(&a, 0xaa, sizeof(a));
	memset(&b, 0x55, sizeof(b));
	strcpy(ea, "unset");
	strcpy(eb, "unset");
	ra = request_parse_increment(copy, len, max_key, &a, ea, sizeof(ea));
	rb = request_parse_increment_json(copy, len, max_key, &b, eb,
	    sizeof(eb));
	free(copy);
	ck_assert_msg(ra == rb, "'%.*s' (max_key %zu): %d against yajl's %d",
	    (int)len, body, max_key, ra, rb);
	if (ra == 0) {
		ck_assert_msg(a.key_len == b.key_len &&
		    memcmp(a.key, b.key, a.key_len) == 0 && a.value == b.value,
		    "'%.*s': key '%.*s' value %lld against yajl's '%.*s' %lld",
		    (int)len, body, (int)a.key_len, a.key, (long long)a.value,
		    (int)b.key_len, b.key, (long long)b.value);
		ck_assert_str_eq(ea, "");
		n->accepted++;
	} else {
		ck_assert_msg(strcmp(ea, eb) == 0, "'%.*s': \"%s\" against "
		    "yajl's \"%s\"", (int)len, body, ea, eb);
		n->refused++;
	}
}

START_TEST(test_fast_path_agrees)
{
	struct diff_count n = { 0, 0 };
	char buf[128];
	size_t s, i, j, len, max_key;

	for (s = 0; s < sizeof(diff_seeds) / sizeof(diff_seeds[0]); s++) {
		const char *seed = diff_seeds[s];

		len = strlen(seed);
		ck_assert_uint_lt(len, sizeof(buf) - 1);
		/* 4 puts the keys "abcd" and "abcde" either side of it. */
		for (max_key = 4; max_key <= MAXKEY; max_key += MAXKEY - 4) {
			for (i = 0; i <= len; i++)
				diff_one(seed, i, max_key, &n);
			for (i = 0; i < len; i++) {
				memcpy(buf, seed, i);
				memcpy(buf + i, seed + i + 1, len - i - 1);
				diff_one(buf, len - 1, max_key, &n);
				for (j = 0; j < sizeof(diff_bytes); j++) {
					memcpy(buf, seed, len);
					buf[i] = (char)diff_bytes[j];
					diff_one(buf, len, max_key, &n);
					memcpy(buf, seed, i);
					buf[i] = (char)diff_bytes[j];
					memcpy(buf + i + 1, seed + i, len - i);
					diff_one(buf, len + 1, max_key, &n);
				}
			}
		}
	}
	/* Enough of both kinds for the comparison to mean something. */
	ck_assert_uint_gt(n.accepted, 1000);
	ck_assert_uint_gt(n.refused, 10000);
}
END_TEST

static Suite *
request_suite(void)
{
	Suite *s = suite_create("request");
	TCase *tc;

	tc = tcase_create("valid");
	tcase_add_test(tc, test_valid_plain);
	tcase_add_test(tc, test_valid_escapes);
	tcase_add_test(tc, test_valid_key_length);
	tcase_add_test(tc, test_valid_key_outgrows_arena);
	tcase_add_test(tc, test_valid_not_terminated);
	tcase_add_test(tc, test_fast_path_agrees);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);

	tc = tcase_create("invalid_json");
	tcase_add_test(tc, test_invalid_empty);
	tcase_add_test(tc, test_invalid_truncated);
	tcase_add_test(tc, test_invalid_trailing);
	tcase_add_test(tc, test_invalid_syntax);
	tcase_add_test(tc, test_invalid_raw_utf8);
	suite_add_tcase(s, tc);

	tc = tcase_create("shape");
	tcase_add_test(tc, test_shape_top_level);
	tcase_add_test(tc, test_shape_members);
	tcase_add_test(tc, test_shape_types);
	suite_add_tcase(s, tc);

	tc = tcase_create("int64");
	tcase_add_test(tc, test_int64_edges);
	tcase_add_test(tc, test_int64_floats);
	suite_add_tcase(s, tc);

	tc = tcase_create("key");
	tcase_add_test(tc, test_key_length);
	tcase_add_test(tc, test_key_nul);
	tcase_add_test(tc, test_key_surrogates);
	tcase_add_test(tc, test_key_raw_bad_utf8);
	tcase_add_test(tc, test_err_buffer);
	suite_add_tcase(s, tc);

	tc = tcase_create("utf8");
	tcase_add_test(tc, test_utf8_table);
	tcase_add_test(tc, test_utf8_all_code_points);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);

	tc = tcase_create("decode_key");
	tcase_add_test(tc, test_decode_valid);
	tcase_add_test(tc, test_decode_invalid);
	tcase_add_test(tc, test_decode_capacity);
	suite_add_tcase(s, tc);

	tc = tcase_create("idem_key");
	tcase_add_test(tc, test_idem_forms);
	tcase_add_test(tc, test_idem_invalid);
	tcase_add_test(tc, test_idem_length);
	suite_add_tcase(s, tc);

	tc = tcase_create("json_output");
	tcase_add_test(tc, test_json_escaping);
	tcase_add_test(tc, test_json_int);
	tcase_add_test(tc, test_json_formats);
	tcase_add_test(tc, test_json_small_buffers);
	tcase_add_test(tc, test_json_round_trip_yajl);
	tcase_add_test(tc, test_json_round_trip_parser);
	suite_add_tcase(s, tc);

	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(request_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
