/*
 * Fuzz target for the control socket's wire format (control.h): the
 * input is the byte stream a client sends to the master.  It is parsed
 * with control_parse_request() as a sequence of requests, and then read
 * through control_read() from a socket pair, which must see exactly the
 * same requests.  Each key of a CTL_GET is rendered the way the master
 * renders it into a JSON reply, and each reply is sent with
 * control_reply() and decoded the way tallyctl decodes it.
 */
#include <sys/socket.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <yajl/yajl_tree.h>

#include "control.h"
#include "request.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define MAX_MSGS	4096

struct seen {
	uint16_t	type;
	uint16_t	len;
	size_t		off;
};

static int
known_type(uint16_t t)
{
	return t == CTL_STATUS || t == CTL_FLUSH || t == CTL_GET ||
	    t == CTL_RELOAD || t == CTL_STOP || t == CTL_STOP_FAST;
}

/* One request parsed from the pure function: check what it says. */
static void
check_msg(const uint8_t *buf, size_t n, const struct control_msg *m)
{
	struct control_msg again;
	uint8_t hdr[CONTROL_HDR];
	size_t whole = CONTROL_HDR + (size_t)m->len;

	if (!known_type(m->type) || m->len > CONTROL_MAX_PAYLOAD ||
	    whole > n || m->payload != buf + CONTROL_HDR)
		abort();
	if ((m->type == CTL_GET) != (m->len > 0))
		abort();
	control_header(hdr, m->type, m->len);
	if (memcmp(hdr, buf, CONTROL_HDR) != 0)
		abort();
	/* One byte short is "need more", never a request or an error. */
	if (control_parse_request(buf, whole - 1, &again) != 0)
		abort();
	if (control_parse_request(buf, whole, &again) != 1 ||
	    again.type != m->type || again.len != m->len)
		abort();
}

/* The key of a CTL_GET as a JSON string, as the master answers it. */
static void
check_escape(const uint8_t *key, size_t len, size_t small)
{
	size_t cap = 6 * len + 8;
	char *out, *doc;
	int o;

	if ((out = malloc(cap)) == NULL)
		return;
	o = control_json_escape(out, cap, (const char *)key, len);
	if (o < 0 || (size_t)o >= cap || out[o] != '\0' ||
	    strlen(out) != (size_t)o)
		abort();
	for (int i = 0; i < o; i++)
		if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
			abort();
	/* Valid UTF-8 without NUL, as held keys are: JSON that decodes back. */
	if (request_utf8_valid((const char *)key, len) &&
	    memchr(key, '\0', len) == NULL &&
	    (doc = malloc((size_t)o + 16)) != NULL) {
		static const char *path[] = { "k", NULL };
		yajl_val v, s;
		const char *got;

		snprintf(doc, (size_t)o + 16, "{\"k\":\"%s\"}", out);
		if ((v = yajl_tree_parse(doc, NULL, 0)) == NULL)
			abort();
		s = yajl_tree_get(v, path, yajl_t_string);
		if ((got = YAJL_GET_STRING(s)) == NULL ||
		    strlen(got) != len || memcmp(got, key, len) != 0)
			abort();
		yajl_tree_free(v);
		free(doc);
	}
	free(out);

	/* A buffer too small: cut short, still terminated, never past it. */
	if ((out = malloc(small)) == NULL)
		return;
	o = control_json_escape(out, small, (const char *)key, len);
	if (o < 0 || (size_t)o >= small || out[o] != '\0')
		abort();
	free(out);
}

/* A reply through a socket, decoded as tallyctl decodes it. */
static void
check_reply(int fd[2], int status, const uint8_t *p, size_t len)
{
	static uint8_t in[CONTROL_HDR + CONTROL_MAX_PAYLOAD + 1];
	uint16_t st, rlen;
	size_t want = len > CONTROL_MAX_PAYLOAD ? CONTROL_MAX_PAYLOAD : len;
	ssize_t n;

	if (control_reply(fd[0], status, (const char *)p, len) == -1)
		abort();
	n = read(fd[1], in, sizeof(in));
	if (n != (ssize_t)(CONTROL_HDR + want))
		abort();
	if (control_parse_header(in, &st, &rlen) == -1 || st != status ||
	    rlen != want || memcmp(in + CONTROL_HDR, p, want) != 0)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct seen seen[MAX_MSGS];
	struct control_client *c;
	struct control_msg m;
	size_t off = 0, nseen = 0, written = 0, k = 0;
	int fd[2], rc = 0, small;

	/* The pure parser over the whole stream. */
	while (nseen < MAX_MSGS &&
	    (rc = control_parse_request(data + off, size - off, &m)) == 1) {
		check_msg(data + off, size - off, &m);
		seen[nseen].type = m.type;
		seen[nseen].len = m.len;
		seen[nseen].off = off;
		nseen++;
		off += CONTROL_HDR + m.len;
	}
	if (nseen == MAX_MSGS)
		return 0;
	if (rc == 0 && size - off >= CONTROL_HDR + CONTROL_MAX_PAYLOAD)
		abort();

	/* The same stream read by the master's control_read(). */
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) == -1)
		return 0;
	fcntl(fd[0], F_SETFL, O_NONBLOCK);
	fcntl(fd[1], F_SETFL, O_NONBLOCK);
	while (written < size) {
		ssize_t n = write(fd[0], data + written, size - written);

		if (n <= 0)
			break;
		written += n;
	}
	if (written == size && (c = calloc(1, sizeof(*c))) != NULL) {
		shutdown(fd[0], SHUT_WR);
		c->fd = fd[1];
		while ((rc = control_read(c)) == 1) {
			if (k == nseen ||
			    control_parse_request(c->buf, c->have, &m) != 1 ||
			    m.type != seen[k].type || m.len != seen[k].len ||
			    c->have != CONTROL_HDR + (size_t)m.len ||
			    memcmp(c->buf, data + seen[k].off, c->have) != 0)
				abort();
			k++;
			c->have = 0;
		}
		/* At the end of the stream: everything seen, then closed. */
		if (rc != -1 || k != nseen)
			abort();
		free(c);
	}
	close(fd[0]);
	close(fd[1]);

	/* Replies: each key rendered, then sent back and decoded. */
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) == -1)
		return 0;
	small = size > 0 ? data[0] % 32 + 1 : 1;
	for (size_t i = 0; i < nseen && i < 8; i++) {
		const uint8_t *p = data + seen[i].off + CONTROL_HDR;

		if (seen[i].type == CTL_GET)
			check_escape(p, seen[i].len, small);
		check_reply(fd, i & 1 ? CTL_FAILED : CTL_OK, p, seen[i].len);
	}
	check_reply(fd, CTL_OK, data, size);
	close(fd[0]);
	close(fd[1]);
	return 0;
}
