/*
 * The control socket: tallyctl talks to the master over a Unix stream
 * socket, never to the children.  Messages are typed and length-checked:
 *
 *	request		u32 magic "TLYC" | u16 type | u16 length | payload
 *	response	u32 magic "TLYC" | u16 status | u16 length | payload
 *
 * all little-endian; a payload is at most CONTROL_MAX_PAYLOAD bytes (a
 * counter key for CTL_GET, JSON in responses).  An unknown type, a bad
 * magic, an oversized length or a payload the type does not take closes
 * the connection.
 */
#ifndef TALLY_CONTROL_H
#define TALLY_CONTROL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CONTROL_MAGIC		0x43594c54U	/* "TLYC" */
#define CONTROL_HDR		8
#define CONTROL_MAX_PAYLOAD	8192
#define CONTROL_MAX_CLIENTS	16

enum control_type {
	CTL_STATUS = 1,
	CTL_FLUSH = 2,
	CTL_GET = 3,
	CTL_RELOAD = 4,
	CTL_STOP = 5,
	CTL_STOP_FAST = 6
};

enum control_status {
	CTL_OK = 0,
	CTL_FAILED = 1
};

/* One connected tallyctl, as the master reads it. */
struct control_client {
	int		fd;
	size_t		have;
	uint8_t		buf[CONTROL_HDR + CONTROL_MAX_PAYLOAD];
	uint64_t	flush_seq;	/* waiting for this flush; 0: not */
	uint64_t	deadline_ms;
	uint64_t	last_ms;	/* accepted, or its last request */
};

/* A request as the master acts on it; payload points into the buffer. */
struct control_msg {
	uint16_t	type;
	uint16_t	len;
	const uint8_t	*payload;
};

/* Encode a header into 8 bytes. */
void	control_header(uint8_t *out, uint16_t type_or_status, uint16_t len);
/* Decode one; -1 for a bad magic or a length over the maximum. */
int	control_parse_header(const uint8_t *in, uint16_t *type_or_status,
	    uint16_t *len);

/*
 * The request at the start of buf[0..n): 1 and *m when a whole
 * well-formed one is there, 0 when more bytes are needed, -1 when it can
 * never be one (bad magic, oversized, unknown type, or a payload its type
 * does not take: CTL_GET wants a key, the others nothing).  Pure, so that
 * the fuzzer drives it directly.
 */
int	control_parse_request(const uint8_t *buf, size_t n,
	    struct control_msg *m);
/*
 * s[0..len) as the inside of a JSON string into out[0..cap), cap > 0,
 * NUL-terminated; stops early rather than overflow.  The length written.
 */
int	control_json_escape(char *out, size_t cap, const char *s, size_t len);

/*
 * The listening socket, mode 0660, owned by uid:gid ((uid_t)-1: keep).
 * -1 and errno on failure; -2 when a server already answers on path,
 * whose socket is left alone.
 */
int	control_listen(const char *path, uid_t uid, gid_t gid);
/* 1: a whole request is in c->buf; 0: need more; -1: close the client. */
int	control_read(struct control_client *c);
/* Send one response.  -1 on failure (the client is then closed). */
int	control_reply(int fd, int status, const char *payload, size_t len);
/* The same for a NUL-terminated payload: no length counted by hand. */
int	control_reply_str(int fd, int status, const char *payload);

#endif
