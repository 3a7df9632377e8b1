/*
 * tallyctl: the admin command.  Commands for a running tallyd go to the
 * master over the control socket (control.h).  The journal commands read
 * journal files offline, from the same code the daemon uses, so they work
 * on a copy of a journal or on one whose daemon cannot start.
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <yajl/yajl_tree.h>

#include "config.h"
#include "control.h"
#include "journal.h"
#include "lockfile.h"
#include "request.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif

#define EXIT_USAGE	2

struct walk {
	struct journal	 j;
	int		 dump;
	uint64_t	 frames, records, paddings, bad, holes;
	uint8_t		*raw;
};

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: tallyctl [-c file] [-s socket] command [argument]\n"
	    "\n"
	    "commands:\n"
	    "  status                 version, uptime, processes, journal positions,\n"
	    "                         keys held and PostgreSQL state of the daemon\n"
	    "  flush                  flush now; wait until PostgreSQL has every\n"
	    "                         increment acknowledged so far\n"
	    "  get KEY                a key's total as the daemon holds it\n"
	    "  reload                 re-read the configuration (as SIGHUP)\n"
	    "  stop [--fast]          stop the daemon: gracefully, or at once\n"
	    "  journal verify [dir]   check every frame of a journal; exit 1 if any is bad\n"
	    "  journal dump [dir]     print every record of a journal\n"
	    "  journal skip LSN [dir] replace the damaged frame at LSN with padding,\n"
	    "                         losing its increments, so that tallyd can start\n"
	    "\n"
	    "options:\n"
	    "  -c file     configuration file (default %s/tallyd.conf); gives the\n"
	    "              control socket and the journal directory\n"
	    "  -s socket   control socket of a running tallyd\n"
	    "  -j, --json  print the daemon's answers as JSON\n"
	    "  -h, --help  this text\n"
	    "  -v, --version\n"
	    "              tallyctl's version\n"
	    "\n"
	    "Options may also follow the command; a KEY that begins with '-'\n"
	    "follows \"--\".\n"
	    "\n"
	    "exit status: 0 success, 1 failure, 2 usage\n", SYSCONFDIR);
}

static void
where(struct walk *w, uint64_t lsn, char *buf, size_t len)
{
	char name[32];

	journal_seg_name(name, sizeof(name),
	    journal_seg_base(w->j.seg_size, lsn));
	snprintf(buf, len, "%s offset %" PRIu64 " (LSN %" PRIu64 ")", name,
	    lsn % w->j.seg_size, lsn);
}

static void
dump_frame(struct walk *w, uint64_t lsn, const struct frame_info *fi)
{
	const uint8_t *p = w->raw, *end = w->raw + fi->raw_len;
	struct journal_record r;
	char key[REQUEST_MAX_KEY_BYTES * 6 + 3], idem[256 * 6 + 3], when[32];
	size_t off;
	time_t secs;
	struct tm tm;

	while (journal_record_next(&p, end, &r) == 1) {
		off = 0;
		if (json_put_string(key, sizeof(key), &off, r.key,
		    r.key_len) == -1)
			off = 0;
		key[off] = '\0';
		off = 0;
		if (r.idem == NULL ||
		    json_put_string(idem, sizeof(idem), &off, r.idem,
		    r.idem_len) == -1)
			strcpy(idem, "-");
		else
			idem[off] = '\0';
		secs = r.time_us / 1000000;
		gmtime_r(&secs, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
		printf("%" PRIu64 "\t%s\t%" PRId64 "\t%s.%06uZ\t%s\n", lsn, key,
		    r.value, when, (unsigned)(r.time_us % 1000000), idem);
	}
}

/*
 * The segment of p could not be opened for want of its file: was it
 * recycled since the listing?  The flusher removes the segments below
 * PostgreSQL's checkpoint, the lowest first, so one that a second listing
 * shows gone with every remaining segment above it was, and the walk goes
 * on at *next, the first that remains.  One gone with a segment still
 * below it is missing from the middle of the journal: an error.
 */
static int
seg_recycled(struct walk *w, uint64_t p, uint64_t *next)
{
	uint64_t *bases, base = journal_seg_base(w->j.seg_size, p);
	char first[32], last[32];
	int n, gone;

	if ((n = journal_list_segments(w->j.dir, &bases)) <= 0) {
		free(bases);
		return 0;
	}
	if ((gone = bases[0] > base)) {
		*next = bases[0];
		journal_seg_name(first, sizeof(first), base);
		journal_seg_name(last, sizeof(last), bases[0] - w->j.seg_size);
		if (base == bases[0] - w->j.seg_size)
			fprintf(stderr, "%s: segment %s recycled while reading "
			    "(below the checkpoint)\n", w->j.dir, first);
		else
			fprintf(stderr, "%s: segments %s to %s recycled while "
			    "reading (below the checkpoint)\n", w->j.dir,
			    first, last);
	}
	free(bases);
	return gone;
}

/* Walk every frame; report what is wrong.  Returns the end LSN. */
static uint64_t
walk_journal(struct walk *w, uint64_t start, uint64_t end)
{
	uint64_t p = journal_lsn_normalize(w->j.seg_size, start), found, next;
	struct frame_info fi;
	enum frame_status st;
	const uint8_t *f;
	char at[96];
	int e;

	while (p < end) {
		p = journal_lsn_normalize(w->j.seg_size, p);
		if (p >= end)
			break;
		if ((f = journal_at(&w->j, p, 0)) == NULL) {
			e = errno;
			if (e == ENOENT && seg_recycled(w, p, &next)) {
				p = next < end ? next : end;
				continue;
			}
			where(w, p, at, sizeof(at));
			fprintf(stderr, "%s: segment missing or unreadable: "
			    "%s\n", at, strerror(e));
			w->bad++;
			p = journal_seg_base(w->j.seg_size, p) + w->j.seg_size;
			continue;
		}
		st = journal_frame_check(f, w->j.seg_size - p % w->j.seg_size,
		    p, w->j.epoch, &fi);
		if (st == FRAME_OK && journal_frame_decode(f, &fi, w->raw)) {
			st = FRAME_BAD;
			fi.why = "records do not decode";
		}
		if (st == FRAME_OK) {
			w->frames++;
			w->records += fi.nrecords;
			if (w->dump)
				dump_frame(w, p, &fi);
			p += fi.len;
			continue;
		}
		if (st == FRAME_PADDING) {
			w->paddings++;
			p += fi.len;
			continue;
		}
		where(w, p, at, sizeof(at));
		if (!journal_find_valid(&w->j, p + JOURNAL_ALIGN, end, &found)) {
			if (st == FRAME_BAD)
				fprintf(stderr, "%s: torn frame at the tail "
				    "(%s): never acknowledged, cut off at the "
				    "next start\n", at, fi.why);
			break;
		}
		if (st == FRAME_EMPTY) {
			/* A writer died mid-frame: nothing after was acked. */
			fprintf(stderr, "%s: unfinished frame; frames after it "
			    "were never acknowledged\n", at);
			w->holes++;
		} else {
			fprintf(stderr, "%s: bad frame: %s\n", at, fi.why);
			w->bad++;
		}
		p = found;
	}
	return p;
}

static int
journal_cmd(const char *cmd, const char *dir)
{
	struct walk w;
	uint64_t *bases, seg_size, end;
	uint8_t epoch[JOURNAL_EPOCH_LEN];
	char node[JOURNAL_NODE_LEN], err[1200], hex[33];
	int n;

	memset(&w, 0, sizeof(w));
	w.dump = strcmp(cmd, "dump") == 0;
	n = journal_scan_dir(dir, &bases, epoch, node, &seg_size, err,
	    sizeof(err));
	if (n < 0) {
		fprintf(stderr, "tallyctl: %s\n", err);
		return 1;
	}
	if (n == 0) {
		fprintf(stderr, "tallyctl: no journal segments in %s\n", dir);
		return 1;
	}
	/* Nothing here writes: a copy on read-only media will do. */
	if (journal_open_readonly(&w.j, dir, seg_size, epoch, node) == -1) {
		fprintf(stderr, "tallyctl: cannot open %s: %s\n", dir,
		    strerror(errno));
		free(bases);
		return 1;
	}
	if ((w.raw = malloc(JOURNAL_MAX_RAW)) == NULL) {
		free(bases);
		return 1;
	}
	for (int i = 1; i < n; i++)
		if (bases[i] != bases[i - 1] + seg_size) {
			fprintf(stderr, "%s: segments missing between LSN %"
			    PRIu64 " and %" PRIu64 "\n", dir,
			    bases[i - 1] + seg_size, bases[i]);
			w.bad++;
		}
	end = walk_journal(&w, bases[0], bases[n - 1] + seg_size);
	if (!w.dump) {
		journal_epoch_hex(epoch, hex);
		printf("journal %s: node %s, epoch %s, %d segment%s of %" PRIu64
		    " bytes\n", dir, node, hex, n, n == 1 ? "" : "s", seg_size);
		printf("%" PRIu64 " frames, %" PRIu64 " records, %" PRIu64
		    " padding, %" PRIu64 " unfinished, %" PRIu64 " bad; "
		    "LSN %" PRIu64 " to %" PRIu64 "\n", w.frames, w.records,
		    w.paddings, w.holes, w.bad,
		    journal_lsn_normalize(seg_size, bases[0]), end);
	}
	free(w.raw);
	free(bases);
	journal_close(&w.j);
	return w.bad ? 1 : 0;
}

/*
 * The frame status at lsn as the walk and recovery see it: a frame whose
 * records do not decode is as bad as one whose checksum fails.
 */
static enum frame_status
skip_check(struct walk *w, uint64_t lsn, struct frame_info *fi)
{
	const uint8_t *f;
	enum frame_status st;

	if ((f = journal_at(&w->j, lsn, 0)) == NULL) {
		fi->why = strerror(errno);
		return FRAME_BAD;
	}
	st = journal_frame_check(f, w->j.seg_size - lsn % w->j.seg_size, lsn,
	    w->j.epoch, fi);
	if (st == FRAME_OK && journal_frame_decode(f, fi, w->raw)) {
		fi->why = "records do not decode";
		st = FRAME_BAD;
	}
	return st;
}

/*
 * The journal must not change under a running tallyd: take the lock it
 * holds on the directory.  A directory no tallyd ever ran on has none.
 */
static int
skip_lock(const char *dir)
{
	char holder[32];
	int fd;

	if ((fd = lockfile_take(dir, 0, holder, sizeof(holder))) != -1)
		return fd;
	if (errno == ENOENT)
		return -2;
	if (errno == EWOULDBLOCK)
		fprintf(stderr, "tallyctl: tallyd (pid %s) is running on %s; "
		    "stop it first\n", holder, dir);
	else
		fprintf(stderr, "tallyctl: cannot lock %s/tallyd.lock: %s\n",
		    dir, strerror(errno));
	return -1;
}

/*
 * Make a journal damaged in its middle startable again: the damaged frame
 * at lsn (as journal verify names it) becomes padding up to the next
 * whole frame, whose increments, and every later one's, are kept.  The
 * damaged frame's increments are lost; nothing else changes.
 */
static int
journal_skip(const char *dir, const char *arg)
{
	struct walk w;
	struct frame_info fi;
	enum frame_status st;
	uint64_t *bases = NULL, seg_size, lsn, p, end, found;
	uint8_t epoch[JOURNAL_EPOCH_LEN];
	char node[JOURNAL_NODE_LEN], err[1200], at[96], *ep;
	int n, lock, rc = 1;

	errno = 0;
	lsn = strtoull(arg, &ep, 10);
	if (errno || ep == arg || *ep != '\0' || arg[0] == '-') {
		fprintf(stderr, "tallyctl: '%s' is not an LSN\n", arg);
		return EXIT_USAGE;
	}
	if ((lock = skip_lock(dir)) == -1)
		return 1;
	memset(&w, 0, sizeof(w));
	n = journal_scan_dir(dir, &bases, epoch, node, &seg_size, err,
	    sizeof(err));
	if (n <= 0) {
		fprintf(stderr, "tallyctl: %s\n", n < 0 ? err :
		    "no journal segments");
		goto out_lock;
	}
	if (journal_open(&w.j, dir, seg_size, epoch, node) == -1 ||
	    (w.raw = malloc(JOURNAL_MAX_RAW)) == NULL) {
		fprintf(stderr, "tallyctl: cannot open %s: %s\n", dir,
		    strerror(errno));
		goto out;
	}
	end = bases[n - 1] + seg_size;
	/* lsn must be where a frame starts, walking from the first one. */
	for (p = journal_lsn_normalize(seg_size, bases[0]); p < lsn;
	    p = journal_lsn_normalize(seg_size, p)) {
		st = skip_check(&w, p, &fi);
		if (st <= FRAME_PADDING)
			p += fi.len;
		else if (!journal_find_valid(&w.j, p + JOURNAL_ALIGN, end, &p))
			break;
	}
	where(&w, lsn, at, sizeof(at));
	if (p != lsn) {
		fprintf(stderr, "tallyctl: %s: no frame starts there (see "
		    "'tallyctl journal verify')\n", at);
		goto out;
	}
	st = skip_check(&w, lsn, &fi);
	if (st != FRAME_BAD) {
		fprintf(stderr, "tallyctl: %s: %s; nothing to skip\n", at,
		    st == FRAME_EMPTY ? "an unfinished frame, which tallyd "
		    "pads by itself at start" : "the frame there is whole");
		goto out;
	}
	if (!journal_find_valid(&w.j, lsn + JOURNAL_ALIGN, end, &found)) {
		fprintf(stderr, "tallyctl: %s: no whole frame after it: a torn "
		    "tail, which tallyd cuts off by itself at start\n", at);
		goto out;
	}
	if (journal_pad(&w.j, lsn, found) == -1 ||
	    journal_sync(&w.j, lsn, found) == -1) {
		fprintf(stderr, "tallyctl: %s: cannot write padding: %s\n", at,
		    strerror(errno));
		goto out;
	}
	printf("%s: damaged frame (%s) replaced with padding up to LSN %"
	    PRIu64 " (%" PRIu64 " bytes); its increments are lost\n", at,
	    fi.why, found, found - lsn);
	rc = 0;
out:
	free(w.raw);
	journal_close(&w.j);
out_lock:
	free(bases);
	if (lock >= 0)
		close(lock);
	return rc;
}

/* Send one request, read one response.  Returns its status or -1. */
static int
ctl_call(const char *path, int type, const char *payload, size_t len,
    char *out, size_t outcap)
{
	struct sockaddr_un sun;
	uint8_t hdr[CONTROL_HDR];
	uint16_t status, rlen;
	size_t got = 0;
	ssize_t n;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path) || len > CONTROL_MAX_PAYLOAD) {
		fprintf(stderr, "tallyctl: control socket path or argument "
		    "too long\n");
		return -1;
	}
	strcpy(sun.sun_path, path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		fprintf(stderr, "tallyctl: cannot reach tallyd at %s: %s\n",
		    path, strerror(errno));
		if (fd != -1)
			close(fd);
		return -1;
	}
	control_header(hdr, type, len);
	/*
	 * A master with every control slot taken answers and closes at
	 * once, maybe before the request is written: its answer is still
	 * there to read (main() ignores SIGPIPE for this).
	 */
	if (write(fd, hdr, sizeof(hdr)) != (ssize_t)sizeof(hdr) ||
	    (len && write(fd, payload, len) != (ssize_t)len))
		shutdown(fd, SHUT_WR);
	while (got < sizeof(hdr)) {
		if ((n = read(fd, hdr + got, sizeof(hdr) - got)) <= 0)
			goto broken;
		got += n;
	}
	if (control_parse_header(hdr, &status, &rlen) == -1 || rlen >= outcap)
		goto broken;
	for (got = 0; got < rlen; got += n)
		if ((n = read(fd, out + got, rlen - got)) <= 0)
			goto broken;
	out[rlen] = '\0';
	close(fd);
	return status;
broken:
	fprintf(stderr, "tallyctl: tallyd at %s closed the connection\n",
	    path);
	close(fd);
	return -1;
}

static const char *
jstr(yajl_val v, const char **path)
{
	yajl_val x = yajl_tree_get(v, path, yajl_t_any);

	if (x == NULL)
		return "?";
	if (YAJL_IS_STRING(x))
		return YAJL_GET_STRING(x);
	if (YAJL_IS_NUMBER(x))
		return YAJL_GET_NUMBER(x);
	return YAJL_IS_TRUE(x) ? "yes" : YAJL_IS_FALSE(x) ? "no" : "?";
}

/* The human form of an answer; --json prints it as it came. */
static void
ctl_print(int type, const char *json)
{
	static const char *version[] = { "version", NULL },
	    *pid[] = { "pid", NULL }, *uptime[] = { "uptime_s", NULL },
	    *node[] = { "node", NULL }, *state[] = { "state", NULL },
	    *ins[] = { "journal", "insert_lsn", NULL },
	    *dur[] = { "journal", "durable_lsn", NULL },
	    *ck[] = { "journal", "checkpoint_lsn", NULL },
	    *backlog[] = { "journal", "backlog_bytes", NULL },
	    *keys[] = { "counters", "keys", NULL },
	    *cap[] = { "counters", "capacity", NULL },
	    *ikeys[] = { "idempotency", "keys", NULL },
	    *pg[] = { "postgres", "up", NULL },
	    *rrate[] = { "ratelimit", "rate", NULL },
	    *rlim[] = { "ratelimit", "limited", NULL },
	    *revict[] = { "ratelimit", "evicted", NULL },
	    *rej[] = { "rejected_records", NULL },
	    *bad[] = { "journal", "corrupt_reason", NULL },
	    *badseg[] = { "journal", "corrupt_segment", NULL },
	    *badoff[] = { "journal", "corrupt_offset", NULL },
	    *badlsn[] = { "journal", "corrupt_lsn", NULL },
	    *err[] = { "error", NULL }, *key[] = { "key", NULL },
	    *value[] = { "value", NULL }, *procs[] = { "processes", NULL },
	    *listen[] = { "listen", NULL };
	yajl_val v = yajl_tree_parse(json, NULL, 0), p;

	if (v == NULL) {
		printf("%s\n", json);
		return;
	}
	if (yajl_tree_get(v, err, yajl_t_string))
		fprintf(stderr, "tallyctl: %s\n", jstr(v, err));
	else if (type == CTL_STATUS) {
		printf("tallyd %s, pid %s, node %s, %s for %s s\n",
		    jstr(v, version), jstr(v, pid), jstr(v, node), jstr(v, state),
		    jstr(v, uptime));
		if ((p = yajl_tree_get(v, listen, yajl_t_array)) != NULL) {
			printf("listening on");
			for (size_t i = 0; i < YAJL_GET_ARRAY(p)->len; i++)
				if (YAJL_IS_STRING(YAJL_GET_ARRAY(p)->values[i]))
					printf(" %s", YAJL_GET_STRING(
					    YAJL_GET_ARRAY(p)->values[i]));
			printf("\n");
		}
		if ((p = yajl_tree_get(v, procs, yajl_t_array)) != NULL) {
			static const char *role[] = { "role", NULL },
			    *ppid[] = { "pid", NULL };

			for (size_t i = 0; i < YAJL_GET_ARRAY(p)->len; i++)
				printf("  %-8s pid %s\n",
				    jstr(YAJL_GET_ARRAY(p)->values[i], role),
				    jstr(YAJL_GET_ARRAY(p)->values[i], ppid));
		}
		printf("journal: insert %s, durable %s, checkpoint %s, "
		    "backlog %s bytes\n", jstr(v, ins), jstr(v, dur),
		    jstr(v, ck), jstr(v, backlog));
		printf("keys held: %s of %s; idempotency keys: %s\n",
		    jstr(v, keys), jstr(v, cap), jstr(v, ikeys));
		printf("rate limit: %s/s per client (0: off); %s requests "
		    "refused, %s busy buckets evicted\n", jstr(v, rrate),
		    jstr(v, rlim), jstr(v, revict));
		printf("PostgreSQL: %s\n", strcmp(jstr(v, pg), "yes") == 0 ?
		    "up" : "down");
		printf("records parked in tally_rejected: %s\n", jstr(v, rej));
		if (*jstr(v, bad) != '\0' && strcmp(jstr(v, bad), "?") != 0)
			printf("journal corrupt in %s at offset %s (LSN %s): %s; "
			    "flushing stopped there\n", jstr(v, badseg),
			    jstr(v, badoff), jstr(v, badlsn), jstr(v, bad));
	} else if (type == CTL_GET)
		printf("%s %s\n", jstr(v, key), jstr(v, value));
	else if (type == CTL_FLUSH)
		printf("flushed\n");
	else if (type == CTL_RELOAD)
		printf("reloaded\n");
	else
		printf("stopping\n");
	yajl_tree_free(v);
}

/* The daemon command in argv: its type and argument.  -1: a usage error. */
static int
ctl_parse(int argc, char **argv, int fast, const char **arg)
{
	*arg = NULL;
	if (argc == 1 && strcmp(argv[0], "stop") == 0)
		return fast ? CTL_STOP_FAST : CTL_STOP;
	if (fast)
		return -1;
	if (argc == 1 && strcmp(argv[0], "status") == 0)
		return CTL_STATUS;
	if (argc == 1 && strcmp(argv[0], "flush") == 0)
		return CTL_FLUSH;
	if (argc == 1 && strcmp(argv[0], "reload") == 0)
		return CTL_RELOAD;
	if (argc == 2 && strcmp(argv[0], "get") == 0 && argv[1][0]) {
		*arg = argv[1];
		return CTL_GET;
	}
	return -1;
}

static int
ctl_command(const char *sock, int json, int type, const char *arg)
{
	static char out[CONTROL_MAX_PAYLOAD + 1];
	int st;

	st = ctl_call(sock, type, arg, arg ? strlen(arg) : 0, out,
	    sizeof(out));
	if (st == -1)
		return 1;
	if (json)
		printf("%s\n", out);
	else
		ctl_print(type, out);
	return st == CTL_OK ? 0 : 1;
}

/* Load the configuration file; its errors on stderr. */
static int
ctl_config(struct config *cf, const char *conf)
{
	struct config_errors errs = { NULL, 0 };

	if (config_load(cf, conf, NULL, 0, &errs) == 0)
		return 0;
	for (int i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.msgs[i]);
	config_errors_free(&errs);
	return -1;
}

/* The journal directory: argv[i] when given, else the configured one. */
static const char *
journal_dir_arg(int argc, char **argv, int i, struct config *cf,
    const char *conf)
{
	if (argc > i)
		return argv[i];
	if (ctl_config(cf, conf) == -1)
		return NULL;
	return cf->journal_dir;
}

int
main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "json", no_argument, NULL, 'j' },
		{ "fast", no_argument, NULL, 'F' },
		{ "version", no_argument, NULL, 'v' },
		{ NULL, 0, NULL, 0 }
	};
	static struct config cf;
	const char *conf = SYSCONFDIR "/tallyd.conf", *dir, *sock = NULL;
	const char *arg;
	int ch, json = 0, fast = 0, type;

	/* Options may follow the command too ("status --json"). */
	while ((ch = getopt_long(argc, argv, "c:hjs:v", longopts, NULL)) !=
	    -1) {
		switch (ch) {
		case 'c':
			conf = optarg;
			break;
		case 's':
			sock = optarg;
			break;
		case 'j':
			json = 1;
			break;
		case 'F':
			fast = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'v':
			printf("tallyctl %s\n", PACKAGE_VERSION);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	argc -= optind;
	argv += optind;
	if (argc >= 2 && argc <= 3 && !fast &&
	    strcmp(argv[0], "journal") == 0 &&
	    (strcmp(argv[1], "verify") == 0 || strcmp(argv[1], "dump") == 0)) {
		if ((dir = journal_dir_arg(argc, argv, 2, &cf, conf)) == NULL)
			return 1;
		return journal_cmd(argv[1], dir);
	}
	if (argc >= 3 && argc <= 4 && !fast &&
	    strcmp(argv[0], "journal") == 0 && strcmp(argv[1], "skip") == 0) {
		if ((dir = journal_dir_arg(argc, argv, 3, &cf, conf)) == NULL)
			return 1;
		return journal_skip(dir, argv[2]);
	}
	/* A usage error is one whatever the configuration file holds. */
	if (argc == 0 || (type = ctl_parse(argc, argv, fast, &arg)) == -1) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (sock == NULL) {
		if (ctl_config(&cf, conf) == -1)
			return 1;
		sock = cf.control_socket;
	}
	/* A master that hangs up is a failure to report (exit 1), not death. */
	signal(SIGPIPE, SIG_IGN);
	return ctl_command(sock, json, type, arg);
}
