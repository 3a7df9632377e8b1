/*
 * Recovery.
 *
 * Runs in the startup child, as PostgreSQL's startup process does, so a
 * crash here cannot take the master down.  It decides where the journal
 * ends and rebuilds the shared counter table; the flusher then reads the
 * checkpoint from PostgreSQL and replays from there.
 *
 * Where the journal ends: walk the frames from the local checkpoint to
 * the last valid frame.  An unwritten (all-zero) frame header with valid
 * frames after it is the reservation of a worker that died while copying
 * its frame: it was never acknowledged, and it is padded over.  A frame
 * with a header but a bad CRC ends the journal when nothing valid follows
 * (a tail torn by a power loss); when valid frames do follow, it is
 * corruption, and recovery refuses to guess: it names the segment and
 * offset and exits with the fatal code.
 *
 * The cut tail is zeroed and synced, so that no stale frame from before
 * the crash can later validate where new frames are being written.
 */
#include <sys/stat.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "idem.h"
#include "log.h"
#include "recovery.h"
#include "request.h"

/*
 * Records decoded but not yet added, with their frame's position: they
 * are added in journal order a batch at a time, so that the cache misses
 * of keys to come (index word, then entry) overlap this key's work.
 */
#define REC_BATCH	256	/* records staged at most */
#define REC_ARENA	(2 * JOURNAL_MAX_RAW)	/* their decoded frames */
#define REC_AHEAD	8	/* keys between the entry's prefetch and use */

struct rec_staged {
	struct journal_record	 r;
	uint64_t		 hash;
	uint64_t		 lsn;		/* its frame's */
	uint64_t		 frame_end;
};

struct rec_state {
	const struct config	*cf;
	struct shm		*shm;
	struct journal		 j;
	uint64_t		*bases;
	int			 nseg;
	uint8_t			*raw;		/* REC_ARENA bytes */
	size_t			 raw_used;
	struct rec_staged	 staged[REC_BATCH];
	int			 nstaged;
	uint64_t		 populated;	/* counters_populate() */
	uint64_t		 frames, records;
	uint64_t		 now_us;
	int			 idem_full_logged;
};

static uint64_t
seg_last(const struct rec_state *rs)
{
	return rs->bases[rs->nseg - 1] + rs->j.seg_size;
}

/* Add the staged records to the shared table, in journal order. */
static int
recovery_add_staged(struct rec_state *rs)
{
	struct counters *c = rs->shm->counters;
	struct counter_entry *e;
	int n = rs->nstaged;

	counters_populate(c, &rs->populated, (uint64_t)n);
	for (int i = 0; i < n; i++) {
		struct rec_staged *s = &rs->staged[i];
		const struct journal_record *r = &s->r;

		/* Its index word was asked for when it was staged. */
		if (i + REC_AHEAD < n)
			counters_prefetch_hash(c,
			    rs->staged[i + REC_AHEAD].hash, 1);
		if (r->key_len > rs->cf->max_key_bytes) {
			/* A restart under a lower limit than it was written. */
			if (r->key_len <= REQUEST_MAX_KEY_BYTES)
				log_warnx("journal record at LSN %llu has a "
				    "key of %u bytes, more than "
				    "counters.max_key_bytes (%zu); set it to "
				    "at least %u to replay the journal",
				    (unsigned long long)s->lsn,
				    (unsigned)r->key_len,
				    rs->cf->max_key_bytes,
				    (unsigned)r->key_len);
			else
				log_warnx("journal record at LSN %llu has a "
				    "key of %u bytes, more than this version "
				    "takes (%d)", (unsigned long long)s->lsn,
				    (unsigned)r->key_len,
				    REQUEST_MAX_KEY_BYTES);
			return -1;
		}
		if ((e = counters_get(c, r->key, r->key_len)) == NULL) {
			log_warnx("counter table full (max_keys %llu) "
			    "at LSN %llu; raise counters.max_keys",
			    (unsigned long long)rs->cf->max_keys,
			    (unsigned long long)s->lsn);
			return -1;
		}
		if (e->committed_known && e->unflushed == 0)
			counters_forget_committed(c, e);
		counters_add(c, e, r->value, s->frame_end);
		rs->records++;
		if (r->idem && r->time_us + rs->cf->idem_ttl_us > rs->now_us) {
			int64_t cm, un;
			int rc;

			/* Rebased once PostgreSQL's total is known. */
			counters_read(e, &cm, &un);
			rc = idem_restore(rs->shm->idem, r->idem, r->idem_len,
			    r->key, r->key_len, r->value, 202, un,
			    r->time_us + rs->cf->idem_ttl_us, s->frame_end);
			if (rc == -1 && !rs->idem_full_logged) {
				log_warnx("Idempotency-Key table full "
				    "(idempotency.max_keys %llu) at LSN %llu; "
				    "the keys from there on are not restored",
				    (unsigned long long)rs->cf->idem_max_keys,
				    (unsigned long long)s->lsn);
				rs->idem_full_logged = 1;
			}
		}
	}
	rs->nstaged = 0;
	rs->raw_used = 0;
	return 0;
}

/* A key's journaled sum, for idem_restore_end. */
static int
recovery_sum(void *arg, const char *key, size_t len, int64_t *sum)
{
	int64_t cm;
	int known;

	return counters_peek(arg, key, len, &cm, sum, &known) > 0 ? 0 : -1;
}

/*
 * Decode a frame and stage its records; -1 when it does not decode, -2
 * when the table is full.  Staged records are added before the arena or
 * the batch runs out, and by recovery_add_staged() at the end.
 */
static int
recovery_apply(struct rec_state *rs, const uint8_t *f,
    const struct frame_info *fi)
{
	struct journal_record r;
	const uint8_t *p, *end;
	uint8_t *raw;

	if (rs->raw_used + JOURNAL_MAX_RAW > REC_ARENA &&
	    recovery_add_staged(rs) == -1)
		return -2;
	raw = rs->raw + rs->raw_used;
	if (journal_frame_decode(f, fi, raw) == -1)
		return -1;
	rs->raw_used += fi->raw_len;
	p = raw;
	end = raw + fi->raw_len;
	while (journal_record_next(&p, end, &r) == 1) {
		struct rec_staged *s;

		if (rs->nstaged == REC_BATCH) {
			/* The rest of this frame moves to the arena's start. */
			size_t off = (size_t)(raw - rs->raw);
			size_t keep = rs->raw_used - off;

			if (recovery_add_staged(rs) == -1)
				return -2;
			memmove(rs->raw, raw, keep);
			p -= off;
			end -= off;
			r.key -= off;
			if (r.idem)
				r.idem -= off;
			raw = rs->raw;
			rs->raw_used = keep;
		}
		s = &rs->staged[rs->nstaged++];
		s->r = r;
		s->hash = counters_hash(r.key, r.key_len);
		s->lsn = fi->lsn;
		s->frame_end = fi->lsn + fi->len;
		counters_prefetch_hash(rs->shm->counters, s->hash, 0);
	}
	rs->frames++;
	return 0;
}

/* Zero [from, end of its segment) where not already zero, then sync. */
static int
recovery_cut(struct rec_state *rs, uint64_t from)
{
	uint64_t base = journal_seg_base(rs->j.seg_size, from);
	uint64_t off = from % rs->j.seg_size, last = 0;
	uint8_t *seg;
	char name[32];

	if ((seg = journal_at(&rs->j, base + JOURNAL_SEG_HDR, 0)) != NULL) {
		seg -= JOURNAL_SEG_HDR;
		for (uint64_t i = off; i < rs->j.seg_size; i += 8)
			if (*(uint64_t *)(void *)(seg + i) != 0)
				last = i + 8;
		if (last > off) {
			memset(seg + off, 0, last - off);
			if (journal_sync(&rs->j, base, base + rs->j.seg_size))
				return -1;
			log_info("cut %llu bytes of unfinished "
			    "journal tail at LSN %llu",
			    (unsigned long long)(last - off),
			    (unsigned long long)from);
		}
	}
	/* Later segments hold nothing acknowledged either. */
	for (int i = 0; i < rs->nseg; i++) {
		if (rs->bases[i] <= base)
			continue;
		journal_seg_name(name, sizeof(name), rs->bases[i]);
		if (unlinkat(rs->j.dirfd, name, 0) == -1)
			return -1;
		log_info("removed segment %s past the journal end",
		    name);
	}
	return fsync(rs->j.dirfd);
}

static int
recovery_mkdir(const char *dir)
{
	struct stat st;

	if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
		log_warn("cannot create directory %s", dir);
		return -1;
	}
	if (stat(dir, &st) == -1) {
		log_warn("cannot stat directory %s", dir);
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		log_warnx("%s: Not a directory", dir);
		return -1;
	}
	/* The journal holds every client's data: no one else reads it. */
	if ((st.st_mode & 077) && chmod(dir, 0700) == -1)
		log_warn("cannot chmod 0700 %s", dir);
	return 0;
}

/* No journal yet: make one with a new epoch. */
static int
recovery_create(struct rec_state *rs)
{
	struct shm_hdr *h = rs->shm->hdr;
	uint64_t start = JOURNAL_SEG_HDR;
	char hex[33];

	if (journal_new_epoch(h->epoch) == -1) {
		log_warn("cannot make a journal epoch");
		return 1;
	}
	h->seg_size = rs->cf->segment_size;
	if (journal_open(&rs->j, rs->cf->journal_dir, h->seg_size, h->epoch,
	    rs->cf->node) == -1 || journal_at(&rs->j, start, 1) == NULL) {
		log_warn("cannot create journal in %s",
		    rs->cf->journal_dir);
		return 1;
	}
	journal_epoch_hex(h->epoch, hex);
	log_info("created journal %s, epoch %s", rs->cf->journal_dir,
	    hex);
	h->start_lsn = h->checkpoint_lsn = start;
	h->insert_lsn = h->written_lsn = h->durable_lsn = start;
	h->recovered_lsn = start;
	return 0;
}

static int
recovery_replay(struct rec_state *rs)
{
	struct shm_hdr *h = rs->shm->hdr;
	struct checkpoint cp;
	struct frame_info fi;
	enum frame_status st;
	const uint8_t *f;
	uint64_t p, found, start;

	struct timespec t0, t1;
	int rc;

	start = journal_lsn_normalize(h->seg_size, rs->bases[0]);
	h->start_lsn = start;
	h->checkpoint_lsn = start;
	rc = checkpoint_read(rs->cf->state_dir, &cp);
	if (rc == -1) {
		log_warn("ignoring unreadable %s/checkpoint",
		    rs->cf->state_dir);
	} else if (rc == 1 && memcmp(cp.epoch, h->epoch,
	    JOURNAL_EPOCH_LEN) == 0 && cp.lsn > start)
		h->checkpoint_lsn = cp.lsn;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	p = h->checkpoint_lsn;
	for (;;) {
		p = journal_lsn_normalize(h->seg_size, p);
		if (p >= seg_last(rs))
			break;
		if ((f = journal_at(&rs->j, p, 0)) == NULL) {
			int e = errno;
			char name[32];

			journal_seg_name(name, sizeof(name),
			    journal_seg_base(h->seg_size, p));
			/*
			 * Segments are made whole before they are linked in:
			 * one that is there but will not map is damage (or a
			 * resource limit), not the journal's end, and cutting
			 * here would drop what it and later segments hold.
			 */
			if (e != ENOENT) {
				errno = e;
				log_warn("cannot map journal segment %s/%s "
				    "(LSN %llu); refusing to start rather than "
				    "cut the journal there",
				    rs->cf->journal_dir, name,
				    (unsigned long long)p);
				return e == EINVAL ? 2 : 1;	/* cut short */
			}
			/*
			 * Missing: its first writer died before creating it,
			 * while later writers went on.  Nothing in it was
			 * published; padded over below, like a lost frame.
			 */
			log_warnx("journal segment %s/%s (LSN %llu) is "
			    "missing, though later segments exist",
			    rs->cf->journal_dir, name, (unsigned long long)p);
			fi.why = "missing segment";
			st = FRAME_EMPTY;
		} else
			st = journal_frame_check(f, h->seg_size -
			    p % h->seg_size, p, h->epoch, &fi);
		if (st == FRAME_OK) {
			/* A limit of the configuration: restarts fail alike. */
			if ((rc = recovery_apply(rs, f, &fi)) == -2)
				return 2;
			if (rc == -1) {
				st = FRAME_BAD;
				fi.why = "records do not decode";
			}
		}
		if (st == FRAME_OK || st == FRAME_PADDING) {
			p += fi.len;
			continue;
		}
		if (!journal_find_valid(&rs->j, p + JOURNAL_ALIGN, seg_last(rs),
		    &found))
			break;	/* the end, or a tail torn by a power loss */
		if (st == FRAME_BAD) {
			char name[32];

			journal_seg_name(name, sizeof(name),
			    journal_seg_base(h->seg_size, p));
			log_warnx("journal corrupt in %s/%s at offset "
			    "%llu (LSN %llu): %s; a valid frame follows at LSN "
			    "%llu, so this is not a torn tail. Refusing to "
			    "start; inspect with 'tallyctl journal verify'",
			    rs->cf->journal_dir, name,
			    (unsigned long long)(p % h->seg_size),
			    (unsigned long long)p, fi.why,
			    (unsigned long long)found);
			return 2;
		}
		/*
		 * A writer died before publishing its frame while others
		 * went on: the hole held nothing acknowledged.  Pad it so
		 * every later reader walks straight over it.
		 */
		if (journal_pad(&rs->j, p, found) == -1) {
			log_warn("cannot pad unfinished frame at LSN "
			    "%llu", (unsigned long long)p);
			return 1;
		}
		log_info("padded unfinished frame at LSN %llu..%llu",
		    (unsigned long long)p, (unsigned long long)found);
		p = found;
	}
	if (recovery_add_staged(rs) == -1)
		return 2;
	if (recovery_cut(rs, p) == -1) {
		log_warn("cannot cut the journal tail at LSN %llu",
		    (unsigned long long)p);
		return 1;
	}
	if (p < h->checkpoint_lsn) {
		/* Only possible if the journal lost its tail on its own. */
		log_warnx("journal ends at LSN %llu, before the "
		    "checkpoint %llu; continuing after the checkpoint",
		    (unsigned long long)p,
		    (unsigned long long)h->checkpoint_lsn);
		p = h->checkpoint_lsn;
	}
	/*
	 * The frames found may be only in the page cache (every process was
	 * killed before the syncer got to them): durable_lsn says they are
	 * on disk, and the syncer starts after them.
	 */
	if (journal_sync(&rs->j, h->checkpoint_lsn, p) == -1) {
		log_warn("cannot fdatasync journal %s LSN %llu..%llu",
		    rs->cf->journal_dir, (unsigned long long)h->checkpoint_lsn,
		    (unsigned long long)p);
		return 1;
	}
	h->insert_lsn = h->written_lsn = h->durable_lsn = p;
	h->recovered_lsn = p;
	idem_restore_end(rs->shm->idem, recovery_sum, rs->shm->counters);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	log_info("replayed %llu records in %llu frames from LSN "
	    "%llu to %llu in %.3f s; %llu keys held",
	    (unsigned long long)rs->records, (unsigned long long)rs->frames,
	    (unsigned long long)h->checkpoint_lsn, (unsigned long long)p,
	    (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9,
	    (unsigned long long)counters_count(rs->shm->counters));
	return 0;
}

int
recovery_run(const struct config *cf, struct shm *shm)
{
	struct rec_state rs;
	struct shm_hdr *h = shm->hdr;
	char err[1200], node[JOURNAL_NODE_LEN];
	int rc;

	log_set_role("startup");
	memset(&rs, 0, sizeof(rs));
	rs.cf = cf;
	rs.shm = shm;
	rs.now_us = idem_now_us();
	rs.j.dirfd = -1;
	if (recovery_mkdir(cf->state_dir) == -1 ||
	    recovery_mkdir(cf->journal_dir) == -1)
		return 2;
	if (journal_remove_tmp(cf->journal_dir) == -1)
		log_warn("cannot list journal directory %s", cf->journal_dir);
	rs.nseg = journal_scan_dir(cf->journal_dir, &rs.bases, h->epoch, node,
	    &h->seg_size, err, sizeof(err));
	if (rs.nseg < 0) {
		log_warnx("%s", err);
		return 2;
	}
	if (rs.nseg == 0) {
		rc = recovery_create(&rs);
		goto done;
	}
	if (strcmp(node, cf->node) != 0)
		log_warnx("journal %s was written by node '%s', this "
		    "is node '%s'", cf->journal_dir, node, cf->node);
	if (h->seg_size != cf->segment_size)
		log_info("journal %s keeps its segment size %llu",
		    cf->journal_dir, (unsigned long long)h->seg_size);
	if (journal_open(&rs.j, cf->journal_dir, h->seg_size, h->epoch,
	    cf->node) == -1) {
		log_warn("cannot open journal %s", cf->journal_dir);
		rc = 1;
		goto done;
	}
	if ((rs.raw = malloc(REC_ARENA)) == NULL) {
		rc = 1;
		goto done;
	}
	rc = recovery_replay(&rs);
done:
	free(rs.raw);
	free(rs.bases);
	if (rs.j.dirfd != -1)
		journal_close(&rs.j);
	return rc;
}
