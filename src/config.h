/*
 * Configuration: tallyd.conf (INI) plus -o overrides.  Every key has a
 * default, so an empty file is a valid configuration.  Parsing collects
 * every error with its line instead of stopping at the first one.
 */
#ifndef TALLY_CONFIG_H
#define TALLY_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAX_LISTEN	8
#define CONFIG_MAX_WORKERS	64
#define CONFIG_MAX_PROXIES	32

/* An address block; IPv4 is held as ::ffff:a.b.c.d, its bits plus 96. */
struct config_cidr {
	uint8_t		addr[16];
	uint8_t		bits;
};

/* Durability policies; the contract each keeps is in tallyd.conf(5). */
enum sync_policy {
	SYNC_GROUP,	/* 202 only once the frame is fdatasync'ed */
	SYNC_INTERVAL	/* 202 once in the page cache; fsync every interval */
};

struct config {
	/* [server] */
	char		 listen[CONFIG_MAX_LISTEN][128];	/* host:port */
	int		 nlisten;
	int		 workers;		/* resolved: "auto" = CPUs */
	char		 node[128];		/* default: hostname */
	char		 state_dir[1024];
	char		 pid_file[1024];
	char		 control_socket[1024];
	size_t		 max_body;		/* bytes */
	uint64_t	 request_timeout_us;	/* one HTTP/1.1 request */
	uint64_t	 idle_timeout_us;	/* an HTTP/2 connection */
	uint64_t	 max_connections;	/* per worker */
	int		 http2;			/* accept h2c */
	char		 user[64];		/* empty: do not drop */
	char		 group[64];
	char		 log_level[16];		/* error|warning|info|debug */
	char		 syslog_facility[16];	/* daemon, local0..local7 */
	char		 log_file[1024];	/* empty: stderr or syslog */

	/* [journal] */
	char		 journal_dir[1024];	/* default: state_dir/journal */
	uint64_t	 segment_size;
	uint64_t	 max_size;
	enum sync_policy sync;
	uint64_t	 commit_delay_us;
	uint64_t	 sync_interval_us;

	/* [postgres] */
	char		 dsn[1024];
	char		 schema[64];
	uint64_t	 flush_interval_us;

	/* [counters] */
	uint64_t	 max_keys;
	size_t		 max_key_bytes;

	/* [idempotency] */
	uint64_t	 idem_ttl_us;
	uint64_t	 idem_max_keys;

	/* [ratelimit] */
	double		 rate;			/* requests/s; 0 = off */
	uint64_t	 burst;
	uint64_t	 rl_max_clients;
	struct config_cidr proxies[CONFIG_MAX_PROXIES];	/* trusted_proxies */
	int		 nproxies;
	int		 proxy_unix;		/* "unix" listed */

	/* [metrics] */
	char		 statsd[256];
	char		 metrics_prefix[64];
};

/*
 * One error message per bad line; the caller prints them all.
 */
struct config_errors {
	char	**msgs;
	int	  n;
};

void	config_defaults(struct config *cf);
/*
 * Load 'path' (NULL: defaults only) and then apply 'overrides' (strings of
 * the form "section.key=value").  Returns 0 when there were no errors.
 * Error texts look like "FILE:LINE: unknown key 'foo' in [server]" or
 * "-o server.workers=x: bad value 'x' for workers: not a number".
 * Derived defaults (journal dir, node, workers=auto) are resolved at the end.
 */
int	config_load(struct config *cf, const char *path,
	    char *const *overrides, int noverrides, struct config_errors *errs);
void	config_errors_free(struct config_errors *errs);
/*
 * Call fn with the name ("server.workers") of each key that differs
 * between a and b and that only a restart applies; returns how many.
 */
int	config_restart_keys(const struct config *a, const struct config *b,
	    void (*fn)(void *, const char *), void *arg);

/* Value parsers, exported for the tests and for -o. Return 0 on success. */
int	config_parse_size(const char *s, uint64_t *out);	/* 4K, 64M, 4G */
int	config_parse_duration(const char *s, uint64_t *out_us);	/* 10ms 1s 5m 24h; bare number = seconds */
int	config_parse_bool(const char *s, int *out);
/* a.b.c.d, a.b.c.d/n, v6addr, v6addr/n; *why says what is wrong. */
int	config_parse_cidr(const char *s, struct config_cidr *out,
	    const char **why);

#endif
