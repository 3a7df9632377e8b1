/*
 * tallyctl: the admin command.  The journal commands read journal files
 * offline, from the same code the daemon uses, so they work on a copy of
 * a journal or on one whose daemon cannot start.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "journal.h"
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
	    "  journal verify [dir]   check every frame of a journal; exit 1 if any is bad\n"
	    "  journal dump [dir]     print every record of a journal\n"
	    "\n"
	    "options:\n"
	    "  -c file     configuration file (default %s/tallyd.conf); gives the\n"
	    "              journal directory when none is named\n"
	    "  -s socket   control socket of a running tallyd\n"
	    "  -h, --help  this text\n"
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

/* Walk every frame; report what is wrong.  Returns the end LSN. */
static uint64_t
walk_journal(struct walk *w, uint64_t start, uint64_t end)
{
	uint64_t p = journal_lsn_normalize(w->j.seg_size, start), found;
	struct frame_info fi;
	enum frame_status st;
	const uint8_t *f;
	char at[96];

	while (p < end) {
		p = journal_lsn_normalize(w->j.seg_size, p);
		if (p >= end)
			break;
		if ((f = journal_at(&w->j, p, 0)) == NULL) {
			where(w, p, at, sizeof(at));
			fprintf(stderr, "%s: segment missing or unreadable: "
			    "%s\n", at, strerror(errno));
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
	if (journal_open(&w.j, dir, seg_size, epoch, node) == -1) {
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

int
main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	static struct config cf;
	struct config_errors errs = { NULL, 0 };
	const char *conf = SYSCONFDIR "/tallyd.conf", *dir;
	int ch;

	while ((ch = getopt_long(argc, argv, "c:hs:", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			conf = optarg;
			break;
		case 's':
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	argc -= optind;
	argv += optind;
	if (argc >= 2 && strcmp(argv[0], "journal") == 0 &&
	    (strcmp(argv[1], "verify") == 0 || strcmp(argv[1], "dump") == 0) &&
	    argc <= 3) {
		if (argc == 3)
			dir = argv[2];
		else {
			if (config_load(&cf, conf, NULL, 0, &errs) != 0) {
				for (int i = 0; i < errs.n; i++)
					fprintf(stderr, "%s\n", errs.msgs[i]);
				config_errors_free(&errs);
				return 1;
			}
			dir = cf.journal_dir;
		}
		return journal_cmd(argv[1], dir);
	}
	usage(stderr);
	return EXIT_USAGE;
}
