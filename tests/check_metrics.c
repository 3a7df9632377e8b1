/*
 * Tests of the metrics: route labels, histogram buckets, the Prometheus
 * text of a known region (sums over worker slots, cumulative buckets,
 * _count equal to +Inf, labels, truncation) and the StatsD lines of two
 * snapshots (deltas, gauges, means, the prefix).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "config.h"
#include "metrics.h"
#include "proc.h"
#include "shm.h"

static struct config cf;
static struct shm shm;

static void
setup(void)
{
	config_defaults(&cf);
	cf.max_keys = 64;
	cf.idem_max_keys = 64;
	ck_assert_int_eq(shm_create(&shm, &cf), 0);
}

static void
teardown(void)
{
	shm_destroy(&shm);
}

static int
has_line(const char *text, const char *line)
{
	size_t n = strlen(line);
	const char *p = text;

	while ((p = strstr(p, line)) != NULL) {
		if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
			return 1;
		p += n;
	}
	return 0;
}

START_TEST(test_route)
{
#define R(p) metrics_route(p, strlen(p))
	ck_assert_int_eq(R("/increment"), METRICS_ROUTE_INCREMENT);
	ck_assert_int_eq(R("/increment?x=1"), METRICS_ROUTE_INCREMENT);
	ck_assert_int_eq(R("/api/v1/increment"), METRICS_ROUTE_INCREMENT);
	ck_assert_int_eq(R("/increment/k%20y"), METRICS_ROUTE_GET);
	ck_assert_int_eq(R("/api/v1/increment/k"), METRICS_ROUTE_GET);
	ck_assert_int_eq(R("/increment/"), METRICS_ROUTE_OTHER);
	ck_assert_int_eq(R("/healthz"), METRICS_ROUTE_HEALTHZ);
	ck_assert_int_eq(R("/readyz"), METRICS_ROUTE_READYZ);
	ck_assert_int_eq(R("/metrics"), METRICS_ROUTE_METRICS);
	ck_assert_int_eq(R("/api/v1/metrics"), METRICS_ROUTE_METRICS);
	ck_assert_int_eq(R("/api/v10/metrics"), METRICS_ROUTE_OTHER);
	ck_assert_int_eq(R("/metricsx"), METRICS_ROUTE_OTHER);
	ck_assert_int_eq(R(""), METRICS_ROUTE_OTHER);
	ck_assert_int_eq(R("/"), METRICS_ROUTE_OTHER);
#undef R
}
END_TEST

START_TEST(test_buckets)
{
	struct metrics_hist h;

	memset(&h, 0, sizeof(h));
	metrics_hist_record(&h, 0);
	metrics_hist_record(&h, 50000);		/* on a bound: that bucket */
	metrics_hist_record(&h, 50001);
	metrics_hist_record(&h, 10000000000ULL);
	metrics_hist_record(&h, 10000000001ULL);	/* +Inf */
	ck_assert_uint_eq(h.bucket[0], 2);
	ck_assert_uint_eq(h.bucket[1], 1);
	ck_assert_uint_eq(h.bucket[METRICS_NBOUNDS - 1], 1);
	ck_assert_uint_eq(h.bucket[METRICS_NBOUNDS], 1);
	ck_assert_uint_eq(h.sum_ns, 20000100002ULL);
}
END_TEST

START_TEST(test_request_latency)
{
	static struct metrics_slot s;

	metrics_request(&s, METRICS_ROUTE_GET, 200, 1000, 71000);
	metrics_request(&s, METRICS_ROUTE_GET, 200, 0, 0);	/* no latency */
	metrics_request(&s, METRICS_ROUTE_GET, 200, 5000, 4000);	/* clamped */
	ck_assert_uint_eq(s.requests[METRICS_ROUTE_GET][0], 3);
	ck_assert_uint_eq(s.latency.bucket[0], 1);
	ck_assert_uint_eq(s.latency.bucket[1], 1);
	ck_assert_uint_eq(s.latency.sum_ns, 70000);
}
END_TEST

/* Requests in two slots, latencies, a restart, a few stats. */
static void
fill(void)
{
	struct metrics_shm *m = &shm.hdr->metrics;

	metrics_request(&m->slots[0], METRICS_ROUTE_INCREMENT, 202, 0, 0);
	metrics_request(&m->slots[0], METRICS_ROUTE_INCREMENT, 202, 0, 0);
	metrics_request(&m->slots[3], METRICS_ROUTE_INCREMENT, 202, 0, 0);
	metrics_request(&m->slots[3], METRICS_ROUTE_OTHER, 404, 0, 0);
	metrics_request(&m->slots[1], METRICS_ROUTE_GET, 299, 0, 0);
	metrics_hist_record(&m->slots[0].latency, 70000);
	metrics_hist_record(&m->slots[3].latency, 3000000);
	metrics_hist_record(&m->fsync, 1000000);
	metrics_restart(m, PROC_FLUSHER);
	metrics_restart(m, PROC_STARTUP);	/* not a restarted role */
	shm_count(&shm.hdr->stats.increments, 5);
	shm_count(&shm.hdr->stats.ratelimited, 2);
	shm_count(&shm.hdr->stats.rejected, 1);
	shm.hdr->insert_lsn = 1000;
	shm.hdr->checkpoint_lsn = 400;
}

START_TEST(test_render)
{
	struct metrics_snap sn;
	static char buf[65536];
	size_t n, full;

	fill();
	metrics_snapshot(&shm, &sn);
	n = metrics_render(&sn, buf, sizeof(buf));
	ck_assert_uint_lt(n, sizeof(buf));
	ck_assert_uint_eq(strlen(buf), n);
	ck_assert(has_line(buf, "# TYPE tallyd_http_requests_total counter"));
	ck_assert(has_line(buf,
	    "tallyd_http_requests_total{route=\"increment\",code=\"202\"} 3"));
	ck_assert(has_line(buf,
	    "tallyd_http_requests_total{route=\"other\",code=\"404\"} 1"));
	ck_assert(has_line(buf,
	    "tallyd_http_requests_total{route=\"get\",code=\"other\"} 1"));
	ck_assert(strstr(buf, "route=\"healthz\"") == NULL);
	ck_assert(has_line(buf,
	    "# TYPE tallyd_request_duration_seconds histogram"));
	ck_assert(has_line(buf,
	    "tallyd_request_duration_seconds_bucket{le=\"5e-05\"} 0"));
	ck_assert(has_line(buf,
	    "tallyd_request_duration_seconds_bucket{le=\"0.0001\"} 1"));
	ck_assert(has_line(buf,
	    "tallyd_request_duration_seconds_bucket{le=\"0.0025\"} 1"));
	ck_assert(has_line(buf,
	    "tallyd_request_duration_seconds_bucket{le=\"0.005\"} 2"));
	ck_assert(has_line(buf,
	    "tallyd_request_duration_seconds_bucket{le=\"+Inf\"} 2"));
	ck_assert(has_line(buf, "tallyd_request_duration_seconds_sum "
	    "0.003070000"));
	ck_assert(has_line(buf, "tallyd_request_duration_seconds_count 2"));
	ck_assert(has_line(buf, "tallyd_journal_fsync_duration_seconds_count 1"));
	ck_assert(has_line(buf, "tallyd_flush_duration_seconds_count 0"));
	ck_assert(has_line(buf, "tallyd_increments_total 5"));
	ck_assert(has_line(buf, "tallyd_ratelimited_requests_total 2"));
	ck_assert(has_line(buf, "tallyd_rejected_records_total 1"));
	ck_assert(has_line(buf, "tallyd_journal_backlog_bytes 600"));
	ck_assert(has_line(buf, "tallyd_keys_capacity 64"));
	ck_assert(has_line(buf,
	    "tallyd_process_restarts_total{role=\"flusher\"} 1"));
	ck_assert(has_line(buf,
	    "tallyd_process_restarts_total{role=\"worker\"} 0"));

	/* Too small: the length needed, and never past the buffer. */
	full = n;
	memset(buf, 'x', sizeof(buf));
	n = metrics_render(&sn, buf, 100);
	ck_assert_uint_eq(n, full);
	ck_assert_int_eq(buf[99], '\0');
	ck_assert_int_eq(buf[100], 'x');
}
END_TEST

struct lines {
	char	text[8192];
	size_t	len;
};

static void
collect(void *arg, const char *line, size_t len)
{
	struct lines *l = arg;

	ck_assert(memchr(line, '\n', len) == NULL);
	ck_assert_uint_lt(l->len + len + 1, sizeof(l->text));
	memcpy(l->text + l->len, line, len);
	l->len += len;
	l->text[l->len++] = '\n';
	l->text[l->len] = '\0';
}

START_TEST(test_statsd)
{
	struct metrics_snap prev, cur;
	struct metrics_shm *m = &shm.hdr->metrics;
	static struct lines l;

	fill();
	metrics_snapshot(&shm, &prev);
	metrics_request(&m->slots[2], METRICS_ROUTE_INCREMENT, 202, 0, 0);
	metrics_request(&m->slots[2], METRICS_ROUTE_INCREMENT, 400, 0, 0);
	metrics_hist_record(&m->slots[2].latency, 1000000);
	metrics_hist_record(&m->slots[5].latency, 3000000);
	shm_count(&shm.hdr->stats.increments, 7);
	metrics_restart(m, PROC_WORKER);
	metrics_snapshot(&shm, &cur);

	memset(&l, 0, sizeof(l));
	metrics_statsd(&cur, &prev, "app.tally", collect, &l);
	ck_assert(has_line(l.text, "app.tally.increments:7|c"));
	ck_assert(has_line(l.text, "app.tally.http_requests.increment.202:1|c"));
	ck_assert(has_line(l.text, "app.tally.http_requests.increment.400:1|c"));
	ck_assert(has_line(l.text, "app.tally.process_restarts.worker:1|c"));
	ck_assert(has_line(l.text, "app.tally.request_duration:2.000|ms"));
	ck_assert(has_line(l.text, "app.tally.journal_backlog_bytes:600|g"));
	ck_assert(has_line(l.text, "app.tally.keys_capacity:64|g"));
	/* Unchanged counters and idle histograms are left out. */
	ck_assert(strstr(l.text, "ratelimited") == NULL);
	ck_assert(strstr(l.text, "http_requests.other") == NULL);
	ck_assert(strstr(l.text, "process_restarts.flusher") == NULL);
	ck_assert(strstr(l.text, "fsync_duration") == NULL);

	/* From nothing: everything since start; no prefix, no dot. */
	memset(&prev, 0, sizeof(prev));
	memset(&l, 0, sizeof(l));
	metrics_statsd(&cur, &prev, "", collect, &l);
	ck_assert(has_line(l.text, "increments:12|c"));
	ck_assert(has_line(l.text, "http_requests.increment.202:4|c"));
	ck_assert(has_line(l.text, "journal_fsync_duration:1.000|ms"));
	ck_assert(has_line(l.text, "rejected_records:1|c"));
}
END_TEST

static Suite *
metrics_suite(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc;

	tc = tcase_create("labels");
	tcase_add_test(tc, test_route);
	tcase_add_test(tc, test_buckets);
	tcase_add_test(tc, test_request_latency);
	suite_add_tcase(s, tc);

	tc = tcase_create("render");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_render);
	tcase_add_test(tc, test_statsd);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(metrics_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
