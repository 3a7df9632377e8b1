/*
 * The shared region: one anonymous shared mapping, header first, then the
 * counter table, then the Idempotency-Key table, then the rate limiter's
 * buckets, then the counter table's owners (each worker's ledger, the
 * flusher's undo record).  Anonymous memory is zero-filled and only the
 * pages touched cost memory, so a large max_keys is cheap until used.
 */
#include <sys/mman.h>
#include <sys/random.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "shm.h"

static size_t
hdr_size(void)
{
	return (sizeof(struct shm_hdr) + 4095) & ~(size_t)4095;
}

static size_t
align64(size_t n)
{
	return (n + 63) & ~(size_t)63;
}

int
shm_create(struct shm *s, const struct config *cf)
{
	size_t csize = align64(counters_size(cf->max_keys, cf->max_key_bytes));
	size_t isize = align64(idem_size(cf->idem_max_keys, cf->max_key_bytes));
	size_t rsize = align64(ratelimit_size(cf->rl_max_clients));
	size_t osize = counters_owner_size(COUNTERS_LEDGER);
	struct timespec ts;
	uint64_t seed;
	char *op;

	memset(s, 0, sizeof(*s));
	if (isize == 0 || rsize == 0) {
		errno = ENOMEM;
		return -1;
	}
	s->size = hdr_size() + csize + isize + rsize +
	    osize * CONFIG_MAX_WORKERS + counters_owner_size(0);
	s->base = mmap(NULL, s->size, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (s->base == MAP_FAILED) {
		s->base = NULL;
		return -1;
	}
	/*
	 * Random keys touch a new page of the counter table's index and of
	 * its entries on nearly every request: with 4 KiB pages that is a
	 * TLB miss or two each, while 100000 keys' index and entries fit
	 * in about 30 pages of 2 MiB.  Only a hint: the kernel grants it
	 * when shared memory may have huge pages (shm_huge_pages()), and
	 * ignores it otherwise.
	 */
	(void)madvise(s->base, s->size, MADV_HUGEPAGE);
	s->hdr = s->base;
	s->hdr->magic = SHM_MAGIC;
	s->hdr->syncer_efd = -1;
	s->hdr->flusher_efd = -1;
	s->counters = counters_init((char *)s->base + hdr_size(),
	    cf->max_keys, cf->max_key_bytes);
	s->idem = idem_init((char *)s->base + hdr_size() + csize,
	    cf->idem_max_keys, cf->max_key_bytes);
	/* Unknown outside, so that a client cannot aim at a bucket's set. */
	if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed)) {
		clock_gettime(CLOCK_REALTIME, &ts);
		seed = (uint64_t)ts.tv_nsec << 32 ^ (uint64_t)ts.tv_sec;
	}
	s->rl = ratelimit_init((char *)s->base + hdr_size() + csize + isize,
	    cf->rl_max_clients, seed);
	op = (char *)s->base + hdr_size() + csize + isize + rsize;
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++, op += osize) {
		s->owners[i] = (struct counter_owner *)(void *)op;
		counters_owner_init(s->owners[i], i + 1, COUNTERS_LEDGER);
	}
	s->owners[SHM_FLUSHER] = (struct counter_owner *)(void *)op;
	counters_owner_init(s->owners[SHM_FLUSHER], SHM_FLUSHER + 1, 0);
	return 0;
}

/*
 * The kernel's policy for huge pages in shared memory, as in
 * /sys/kernel/mm/transparent_hugepage/shmem_enabled ("never" when it
 * cannot be read), and whether it grants them to a region that asks as
 * shm_create() does.
 */
int
shm_huge_pages(char *policy, size_t len)
{
	char buf[128], *lb, *rb;
	FILE *f;

	snprintf(policy, len, "never");
	if ((f = fopen(SHM_THP_POLICY, "re")) == NULL)
		return 0;
	lb = fgets(buf, sizeof(buf), f);
	fclose(f);
	/* The policy in force is the bracketed word. */
	if (lb == NULL || (lb = strchr(buf, '[')) == NULL ||
	    (rb = strchr(lb, ']')) == NULL)
		return 0;
	snprintf(policy, len, "%.*s", (int)(rb - lb - 1), lb + 1);
	return strcmp(policy, "never") != 0 && strcmp(policy, "deny") != 0;
}

int
shm_orphan_add(struct shm_hdr *h, int prefer, uint64_t start, uint64_t end,
    int unsure)
{
	/*
	 * Claimed with an exchange: the master (for a dead worker) and a
	 * living worker (for its own failed write) may add at once.
	 */
	for (int n = 0; n < CONFIG_MAX_WORKERS; n++) {
		int i = (prefer + n) % CONFIG_MAX_WORKERS;
		uint64_t zero = 0;

		if (!__atomic_compare_exchange_n(&h->orphan_start[i], &zero,
		    SHM_ORPHAN_BUSY, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
			continue;
		h->orphan_end[i] = end;
		h->orphan_unsure[i] = unsure;
		shm_store(&h->orphan_start[i], start);
		return 0;
	}
	return -1;
}

void
shm_destroy(struct shm *s)
{
	if (s->base)
		munmap(s->base, s->size);
	memset(s, 0, sizeof(*s));
}
