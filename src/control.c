/*
 * The control socket's wire format and its socket plumbing.  The master
 * decides what each command does (master.c); this file only makes sure
 * that what reaches it is one well-formed message.
 */
#include <sys/socket.h>
#include <sys/uio.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "control.h"
#include "le.h"
#include "unixsock.h"

void
control_header(uint8_t *out, uint16_t type_or_status, uint16_t len)
{
	le_put32(out, CONTROL_MAGIC);
	le_put16(out + 4, type_or_status);
	le_put16(out + 6, len);
}

int
control_parse_header(const uint8_t *in, uint16_t *type_or_status,
    uint16_t *len)
{
	*type_or_status = le_get16(in + 4);
	*len = le_get16(in + 6);
	if (le_get32(in) != CONTROL_MAGIC || *len > CONTROL_MAX_PAYLOAD)
		return -1;
	return 0;
}

int
control_parse_request(const uint8_t *buf, size_t n, struct control_msg *m)
{
	uint16_t type, len;

	if (n < CONTROL_HDR)
		return 0;
	if (control_parse_header(buf, &type, &len) == -1)
		return -1;
	switch (type) {
	case CTL_GET:
		if (len == 0)
			return -1;
		break;
	case CTL_STATUS:
	case CTL_FLUSH:
	case CTL_RELOAD:
	case CTL_STOP:
	case CTL_STOP_FAST:
		if (len != 0)
			return -1;
		break;
	default:
		return -1;
	}
	if (n < (size_t)CONTROL_HDR + len)
		return 0;
	m->type = type;
	m->len = len;
	m->payload = buf + CONTROL_HDR;
	return 1;
}

int
control_json_escape(char *out, size_t cap, const char *s, size_t len)
{
	size_t o = 0;

	for (size_t i = 0; i < len && o + 7 < cap; i++) {
		unsigned char ch = s[i];

		if (ch == '"' || ch == '\\') {
			out[o++] = '\\';
			out[o++] = ch;
		} else if (ch < 0x20 || ch == 0x7f)
			o += snprintf(out + o, cap - o, "\\u%04x", ch);
		else
			out[o++] = ch;
	}
	out[o] = '\0';
	return (int)o;
}

int
control_listen(const char *path, uid_t uid, gid_t gid)
{
	return unixsock_listen(path, 0660, 16, uid, gid);
}

int
control_read(struct control_client *c)
{
	struct control_msg m;
	ssize_t n;
	int rc;

	for (;;) {
		size_t want = CONTROL_HDR;

		if ((rc = control_parse_request(c->buf, c->have, &m)) != 0)
			return rc;
		/* A header that parsed: read exactly the rest of this request. */
		if (c->have >= CONTROL_HDR)
			want = CONTROL_HDR + le_get16(c->buf + 6);
		n = read(c->fd, c->buf + c->have, want - c->have);
		if (n == 0)
			return -1;
		if (n == -1)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		c->have += n;
	}
}

int
control_reply(int fd, int status, const char *payload, size_t len)
{
	uint8_t hdr[CONTROL_HDR];
	struct iovec iov[2];
	struct msghdr msg;

	if (len > CONTROL_MAX_PAYLOAD)
		len = CONTROL_MAX_PAYLOAD;
	control_header(hdr, status, len);
	iov[0].iov_base = hdr;
	iov[0].iov_len = sizeof(hdr);
	iov[1].iov_base = (void *)(uintptr_t)payload;
	iov[1].iov_len = len;
	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = iov;
	msg.msg_iovlen = 2;
	/* Small replies to a waiting client: one send does it. */
	return sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) ==
	    (ssize_t)(sizeof(hdr) + len) ? 0 : -1;
}

int
control_reply_str(int fd, int status, const char *payload)
{
	return control_reply(fd, status, payload, strlen(payload));
}
