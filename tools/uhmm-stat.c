/* SPDX-License-Identifier: MIT */
/*
 * uhmm-stat.c - watch a running process's uhmm counters, like vmstat 1:
 *   uhmm-stat PID              one snapshot (totals since the runtime started)
 *   uhmm-stat PID INTERVAL [COUNT]   a line per interval: rates per second
 *   uhmm-stat --json PID [INTERVAL [COUNT]]   one JSON object per line
 *   uhmm-stat -l               the uhmm processes of this machine (live/stale)
 * It reads the file the runtime publishes, /dev/shm/uhmm.<pid> (src/publish.c,
 * docs/observability.md), and links nothing of libuhmm: uhmm.h only gives
 * it struct uhmm_stats.  The layout below must match src/publish.c; readers
 * go by the offsets in the header, so fields added at the end of a section
 * are harmless.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "uhmm.h"

#define PUB_MAGIC "UHMMSTAT"
#define PUB_EXITED 1u
#define MAX_BUCKETS 64
#define MAX_EVTYPES 8
#define MAX_POOLS 64

struct pub_pool {
	uint64_t id, owner, type;
	uint64_t capacity, reserved, allocated, freed, in_use, alloc_failures;
};

struct pub_hdr {
	char magic[8];
	uint32_t version, hdr_size;
	uint32_t pid, flags;
	uint64_t start_time;
	uint64_t created_ns;
	uint64_t heartbeat_ns;
	uint64_t pub_seq;
	uint32_t stats_off, stats_size;
	uint32_t hist_off, hist_buckets;
	uint32_t events_off, events_n;
	uint32_t pools_off, pool_size;
	uint32_t pools_max, npools;
	uint64_t pools_skipped;
};

struct target {
	int pid;
	char path[64];
	const volatile char *map;
	size_t len;
	struct pub_hdr h;
};

struct sample {
	uint64_t t_ns;            /* our clock when read */
	struct uhmm_stats st;
	uint64_t hist[MAX_BUCKETS];
	unsigned nbuckets;
	uint64_t events[MAX_EVTYPES];
	struct pub_pool pools[MAX_POOLS];
	unsigned npools;
	uint32_t flags;
	uint64_t heartbeat_ns;
};

static const char *prog = "uhmm-stat";

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s: ", prog);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

/* Field 22 of /proc/PID/stat (start time, clock ticks since boot); 0 if unknown. */
static uint64_t proc_start_time(int pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	for (int f = 3; f <= 22 && p; f++)
		p = strchr(p + 1, ' ');
	return p ? strtoull(p + 1, NULL, 10) : 0;
}

static void proc_comm(int pid, char *buf, size_t len)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/comm", pid);
	buf[0] = 0;
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	if (fgets(buf, (int)len, f))
		buf[strcspn(buf, "\n")] = 0;
	fclose(f);
}

/* 1: the process maps the file; 0: it does not; -1: cannot tell. */
static int proc_maps_file(int pid, const char *file)
{
	char path[64], line[4096];
	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	int found = 0;
	size_t fl = strlen(file);
	while (fgets(line, sizeof(line), f)) {
		char *p = strstr(line, file);
		if (p && (p[fl] == '\n' || p[fl] == ' ' || p[fl] == 0)) {
			found = 1;
			break;
		}
	}
	fclose(f);
	return found;
}

/*
 * Whether the file belongs to a live process: NULL if so, else why not
 * (the pid is gone, it is another process now, or the program that made
 * the file has exec'd or is exiting).
 */
static const char *stale_reason(const struct pub_hdr *h, int pid, const char *file)
{
	if (kill(pid, 0) && errno == ESRCH)
		return "process is gone";
	uint64_t st = proc_start_time(pid);
	if (st && h->start_time && st != h->start_time)
		return "pid reused by another process";
	if (h->flags & PUB_EXITED)
		return "process is exiting";
	if (proc_maps_file(pid, file) == 0)
		return "process no longer runs uhmm (exec?)";
	return NULL;
}

/* 0, or -errno with *msg: open and check /dev/shm/uhmm.PID. */
static int target_open(struct target *t, int pid, const char **msg)
{
	memset(t, 0, sizeof(*t));
	t->pid = pid;
	snprintf(t->path, sizeof(t->path), "/dev/shm/uhmm.%d", pid);
	int fd = open(t->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		*msg = "cannot open";
		return -errno;
	}
	struct stat st;
	if (fstat(fd, &st) || (size_t)st.st_size < sizeof(struct pub_hdr)) {
		close(fd);
		*msg = "not a uhmm counters file (too short)";
		return -EINVAL;
	}
	void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED) {
		*msg = "cannot map";
		return -errno;
	}
	t->map = m;
	t->len = (size_t)st.st_size;
	memcpy(&t->h, m, sizeof(t->h));
	if (memcmp(t->h.magic, PUB_MAGIC, 8) != 0 || t->h.version < 1 ||
	    t->h.stats_off + 8 > t->len || t->h.hist_off + 8ull * t->h.hist_buckets > t->len ||
	    t->h.events_off + 8ull * t->h.events_n > t->len ||
	    t->h.pools_off + (uint64_t)t->h.pool_size * t->h.pools_max > t->len) {
		*msg = "not a uhmm counters file (bad header)";
		return -EINVAL;
	}
	if ((int)t->h.pid != pid) {
		*msg = "file names another pid";
		return -EINVAL;
	}
	return 0;
}

static uint64_t ld64(const volatile char *base, size_t off)
{
	return __atomic_load_n((const uint64_t *)(const void *)(base + off), __ATOMIC_ACQUIRE);
}

static void target_read(const struct target *t, struct sample *s)
{
	const volatile char *m = t->map;
	const struct pub_hdr *h = &t->h;
	memset(s, 0, sizeof(*s));
	size_t n = h->stats_size < sizeof(s->st) ? h->stats_size : sizeof(s->st);
	for (size_t i = 0; i < n / 8; i++)
		((uint64_t *)&s->st)[i] = ld64(m, h->stats_off + 8 * i);
	s->nbuckets = h->hist_buckets < MAX_BUCKETS ? h->hist_buckets : MAX_BUCKETS;
	for (unsigned i = 0; i < s->nbuckets; i++)
		s->hist[i] = ld64(m, h->hist_off + 8 * i);
	for (unsigned i = 0; i < h->events_n && i < MAX_EVTYPES; i++)
		s->events[i] = ld64(m, h->events_off + 8 * i);
	size_t pf = h->pool_size < sizeof(struct pub_pool) ? h->pool_size : sizeof(struct pub_pool);
	const struct pub_hdr *live = (const struct pub_hdr *)(const void *)m;
	for (int tries = 0; tries < 1000; tries++) {
		uint64_t seq = __atomic_load_n(&live->pub_seq, __ATOMIC_ACQUIRE);
		if (seq & 1)
			continue;
		unsigned np = __atomic_load_n(&live->npools, __ATOMIC_RELAXED);
		if (np > h->pools_max)
			np = h->pools_max;
		if (np > MAX_POOLS)
			np = MAX_POOLS;
		for (unsigned i = 0; i < np; i++) {
			memset(&s->pools[i], 0, sizeof(s->pools[i]));
			for (size_t k = 0; k < pf / 8; k++)
				((uint64_t *)&s->pools[i])[k] =
					ld64(m, h->pools_off + (size_t)h->pool_size * i + 8 * k);
		}
		s->npools = np;
		s->heartbeat_ns = __atomic_load_n(&live->heartbeat_ns, __ATOMIC_RELAXED);
		if (__atomic_load_n(&live->pub_seq, __ATOMIC_RELAXED) == seq)
			break;
	}
	s->flags = __atomic_load_n(&live->flags, __ATOMIC_ACQUIRE);
	s->t_ns = now_ns();
}

/* Latency quantile q (0..1) of a histogram, in ns (interpolated in its log2 bucket). */
static double quantile(const uint64_t *hist, unsigned nb, double q, uint64_t *count)
{
	uint64_t total = 0;
	for (unsigned b = 0; b < nb; b++)
		total += hist[b];
	if (count)
		*count = total;
	if (!total)
		return 0;
	double want = q * (double)total;
	if (want < 1)
		want = 1;
	uint64_t cum = 0;
	for (unsigned b = 0; b < nb; b++) {
		if (!hist[b])
			continue;
		if ((double)(cum + hist[b]) >= want) {
			double lo = b ? (double)(1ull << (b - 1)) : 0, hi = b ? lo * 2 : 1;
			return lo + (hi - lo) * (want - (double)cum) / (double)hist[b];
		}
		cum += hist[b];
	}
	return 0;
}

static const char *pool_type(uint64_t t)
{
	return t == 0 ? "system" : t == UHMM_DEVMEM_PRIVATE ? "private"
		: t == UHMM_DEVMEM_COHERENT ? "coherent" : "unknown";
}

static uint64_t inval_total(const struct uhmm_stats *st)
{
	uint64_t n = 0;
	for (int i = 0; i < 8; i++)
		n += st->invalidations[i];
	return n;
}

/* b - a, or b when the counters were reset in between. */
static uint64_t delta(uint64_t a, uint64_t b)
{
	return b >= a ? b - a : b;
}

/* ---- output ------------------------------------------------------------- */

#define NRATES 15
static const char *const rate_names[NRATES] = {
	"cpu_faults", "cpu_faults_private", "cpu_faults_exclusive", "cpu_faults_missing",
	"cpu_faults_sigbus", "migrations_to_device", "migrations_to_system",
	"pages_to_device", "pages_to_system", "mb_to_device", "mb_to_system",
	"exclusive_grants", "exclusive_revokes", "invalidations", "range_faults",
};

static void rates(const struct sample *a, const struct sample *b, double secs, double *r)
{
	const struct uhmm_stats *x = &a->st, *y = &b->st;
	double v[NRATES] = {
		(double)delta(x->cpu_faults, y->cpu_faults),
		(double)delta(x->cpu_faults_private, y->cpu_faults_private),
		(double)delta(x->cpu_faults_exclusive, y->cpu_faults_exclusive),
		(double)delta(x->cpu_faults_missing, y->cpu_faults_missing),
		(double)delta(x->cpu_faults_sigbus, y->cpu_faults_sigbus),
		(double)delta(a->events[UHMM_EV_MIGRATE_TO_DEV], b->events[UHMM_EV_MIGRATE_TO_DEV]),
		(double)delta(a->events[UHMM_EV_MIGRATE_TO_SYS], b->events[UHMM_EV_MIGRATE_TO_SYS]),
		(double)delta(x->pages_to_device, y->pages_to_device),
		(double)delta(x->pages_to_system, y->pages_to_system),
		(double)delta(x->bytes_to_device, y->bytes_to_device) / 1e6,
		(double)delta(x->bytes_to_system, y->bytes_to_system) / 1e6,
		(double)delta(x->exclusive_grants, y->exclusive_grants),
		(double)delta(x->exclusive_revokes, y->exclusive_revokes),
		(double)delta(inval_total(x), inval_total(y)),
		(double)delta(x->range_faults, y->range_faults),
	};
	for (int i = 0; i < NRATES; i++)
		r[i] = secs > 0 ? v[i] / secs : v[i];
}

static void hist_delta(const struct sample *a, const struct sample *b, uint64_t *h)
{
	for (unsigned i = 0; i < b->nbuckets; i++)
		h[i] = a ? delta(a->hist[i], b->hist[i]) : b->hist[i];
}

static void print_header(bool totals)
{
	printf("%s\n", totals
	       ? "--------- cpu faults ---------- --- migrations --- ------- pages ------ ---- MB ----- -- fault us -- - exclusive - -inval-"
	       : "-------- cpu faults/s --------- -- migrations/s -- ------ pages/s ----- --- MB/s ---- -- fault us -- -exclusive/s- inval/s");
	printf("%7s %5s %5s %5s %4s %8s %9s %9s %10s %6s %6s %6s %7s %6s %6s %7s\n",
	       "all", "priv", "excl", "miss", "sigb", "to_dev", "to_sys", "to_dev", "to_sys",
	       ">dev", ">sys", "p50", "p99", "grant", "revoke", "all");
}

static void fmt_num(char *buf, size_t len, double v)
{
	if (v >= 1e9)
		snprintf(buf, len, "%.1fG", v / 1e9);
	else if (v >= 1e6)
		snprintf(buf, len, "%.1fM", v / 1e6);
	else if (v >= 1e5)
		snprintf(buf, len, "%.0fk", v / 1e3);
	else if (v == (double)(uint64_t)v)
		snprintf(buf, len, "%.0f", v);
	else
		snprintf(buf, len, "%.1f", v);
}

static void print_line(const double *r, double p50, double p99, const struct sample *s)
{
	char f[NRATES][16];
	for (int i = 0; i < NRATES; i++)
		fmt_num(f[i], sizeof(f[i]), r[i]);
	printf("%7s %5s %5s %5s %4s %8s %9s %9s %10s %6.1f %6.1f %6.1f %7.1f %6s %6s %7s\n",
	       f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], r[9], r[10], p50 / 1e3,
	       p99 / 1e3, f[11], f[12], f[13]);
	for (unsigned i = 0; i < s->npools; i++) {
		const struct pub_pool *p = &s->pools[i];
		printf("  pool %-8s 0x%-12" PRIx64 " owner 0x%-12" PRIx64 " resident %" PRIu64
		       "/%" PRIu64 " pages  allocated %" PRIu64 " freed %" PRIu64 " failures %" PRIu64
		       "\n", pool_type(p->type), p->id, p->owner, p->in_use, p->capacity, p->allocated,
		       p->freed, p->alloc_failures);
	}
}

static void json_line(const struct target *t, const struct sample *s, const struct sample *prev,
		      double secs, bool interval)
{
	const struct uhmm_stats *st = &s->st;
	printf("{\"pid\":%d,\"state\":\"%s\",\"uptime_s\":%.3f,", t->pid,
	       (s->flags & PUB_EXITED) ? "exiting" : "live",
	       (double)(s->t_ns - t->h.created_ns) / 1e9);
	if (interval)
		printf("\"interval_s\":%.3f,", secs);
	printf("\"counters\":{\"cpu_faults\":%" PRIu64 ",\"cpu_faults_private\":%" PRIu64
	       ",\"cpu_faults_exclusive\":%" PRIu64 ",\"cpu_faults_missing\":%" PRIu64
	       ",\"cpu_faults_sigbus\":%" PRIu64 ",\"range_faults\":%" PRIu64
	       ",\"pages_to_device\":%" PRIu64 ",\"pages_to_system\":%" PRIu64
	       ",\"bytes_to_device\":%" PRIu64 ",\"bytes_to_system\":%" PRIu64
	       ",\"exclusive_grants\":%" PRIu64 ",\"exclusive_revokes\":%" PRIu64
	       ",\"invalidations\":%" PRIu64 ",\"invalidations_by_event\":[",
	       st->cpu_faults, st->cpu_faults_private, st->cpu_faults_exclusive,
	       st->cpu_faults_missing, st->cpu_faults_sigbus, st->range_faults,
	       st->pages_to_device, st->pages_to_system, st->bytes_to_device,
	       st->bytes_to_system, st->exclusive_grants, st->exclusive_revokes,
	       inval_total(st));
	for (int i = 0; i < 8; i++)
		printf("%s%" PRIu64, i ? "," : "", st->invalidations[i]);
	printf("],\"evictions\":%" PRIu64 ",\"alloc_failures\":%" PRIu64 ",\"uffd_events\":%" PRIu64
	       "},", st->evictions, st->alloc_failures, st->uffd_events);
	static const char *const ev[MAX_EVTYPES] = {
		NULL, "cpu_fault", "migrate_to_dev", "migrate_to_sys", "invalidate",
		"exclusive_grant", "exclusive_revoke", NULL,
	};
	printf("\"events\":{");
	bool first = true;
	for (int i = 0; i < MAX_EVTYPES; i++) {
		if (!ev[i])
			continue;
		printf("%s\"%s\":%" PRIu64, first ? "" : ",", ev[i], s->events[i]);
		first = false;
	}
	printf("},");
	if (interval) {
		double r[NRATES];
		rates(prev, s, secs, r);
		printf("\"rates\":{");
		for (int i = 0; i < NRATES; i++)
			printf("%s\"%s\":%.3f", i ? "," : "", rate_names[i], r[i]);
		printf("},");
	}
	uint64_t h[MAX_BUCKETS], count;
	hist_delta(interval ? prev : NULL, s, h);
	double p50 = quantile(h, s->nbuckets, 0.50, &count);
	double p99 = quantile(h, s->nbuckets, 0.99, NULL);
	printf("\"fault_latency_ns\":{\"count\":%" PRIu64 ",\"p50\":%.0f,\"p99\":%.0f,"
	       "\"log2_buckets\":[", count, p50, p99);
	for (unsigned i = 0; i < s->nbuckets; i++)
		printf("%s%" PRIu64, i ? "," : "", h[i]);
	printf("]},\"pools\":[");
	for (unsigned i = 0; i < s->npools; i++) {
		const struct pub_pool *p = &s->pools[i];
		printf("%s{\"id\":\"0x%" PRIx64 "\",\"owner\":\"0x%" PRIx64 "\",\"type\":\"%s\","
		       "\"capacity\":%" PRIu64 ",\"reserved\":%" PRIu64 ",\"allocated\":%" PRIu64
		       ",\"freed\":%" PRIu64 ",\"in_use\":%" PRIu64 ",\"alloc_failures\":%" PRIu64 "}",
		       i ? "," : "", p->id, p->owner, pool_type(p->type), p->capacity, p->reserved,
		       p->allocated, p->freed, p->in_use, p->alloc_failures);
	}
	printf("]}\n");
	fflush(stdout);
}

/* ---- commands ----------------------------------------------------------- */

static int list_processes(void)
{
	DIR *d = opendir("/dev/shm");
	if (!d)
		die("cannot read /dev/shm: %s", strerror(errno));
	printf("%-8s %-6s %9s %11s %9s %9s  %s\n", "PID", "STATE", "UPTIME", "CPU_FAULTS",
	       "TO_DEV", "TO_SYS", "COMMAND / WHY STALE");
	struct dirent *de;
	int n = 0;
	while ((de = readdir(d))) {
		char *end;
		if (strncmp(de->d_name, "uhmm.", 5) != 0)
			continue;
		long pid = strtol(de->d_name + 5, &end, 10);
		if (*end || pid <= 0)
			continue;
		struct target t;
		const char *msg;
		int rc = target_open(&t, (int)pid, &msg);
		n++;
		if (rc) {
			printf("%-8ld %-6s %9s %11s %9s %9s  %s: %s\n", pid, "?", "-", "-", "-", "-",
			       msg, strerror(-rc));
			continue;
		}
		struct sample s;
		target_read(&t, &s);
		const char *why = stale_reason(&t.h, t.pid, t.path);
		char comm[64] = "";
		if (!why)
			proc_comm(t.pid, comm, sizeof(comm));
		char up[32] = "-";
		if (!why)
			snprintf(up, sizeof(up), "%.1fs", (double)(s.t_ns - t.h.created_ns) / 1e9);
		printf("%-8ld %-6s %9s %11" PRIu64 " %9" PRIu64 " %9" PRIu64 "  %s\n", pid,
		       why ? "stale" : "live", up, s.st.cpu_faults, s.st.pages_to_device,
		       s.st.pages_to_system, why ? why : comm);
		munmap((void *)t.map, t.len);
	}
	closedir(d);
	if (!n)
		printf("(no uhmm process publishes counters)\n");
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: %s [--json] PID [INTERVAL [COUNT]]\n"
		   "       %s -l\n"
		   "Shows the uhmm counters a process publishes in /dev/shm/uhmm.PID: one\n"
		   "snapshot of the totals, or a line of rates per INTERVAL seconds.\n", prog, prog);
}

int main(int argc, char **argv)
{
	bool json = false, list = false;
	int pos[3], npos = 0;
	double interval = 0;
	long count = -1;
	const char *args[3];
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json") || !strcmp(argv[i], "-j"))
			json = true;
		else if (!strcmp(argv[i], "-l") || !strcmp(argv[i], "--list"))
			list = true;
		else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else if (argv[i][0] == '-' && argv[i][1]) {
			fprintf(stderr, "%s: unknown option %s\n", prog, argv[i]);
			usage(stderr);
			return 2;
		} else if (npos < 3) {
			args[npos] = argv[i];
			pos[npos] = i;
			npos++;
		} else {
			usage(stderr);
			return 2;
		}
	}
	(void)pos;
	if (list)
		return list_processes();
	if (npos < 1) {
		usage(stderr);
		return 2;
	}
	char *end;
	long pid = strtol(args[0], &end, 10);
	if (*end || pid <= 0 || pid > 0x7fffffff)
		die("not a process id: %s", args[0]);
	if (npos >= 2) {
		interval = strtod(args[1], &end);
		if (*end || !(interval > 0))
			die("not an interval in seconds: %s", args[1]);
	}
	if (npos >= 3) {
		count = strtol(args[2], &end, 10);
		if (*end || count <= 0)
			die("not a count: %s", args[2]);
	}

	bool exists = !(kill((pid_t)pid, 0) && errno == ESRCH);
	struct target t;
	const char *msg;
	int rc = target_open(&t, (int)pid, &msg);
	if (rc == -ENOENT)
		die(exists ? "%ld is not a uhmm process (no /dev/shm/uhmm.%ld: it has not used uhmm "
			     "yet, or runs with UHMM_STAT=0)" : "no such process: %ld", pid, pid);
	if (rc == -EACCES || rc == -EPERM)
		die("permission denied: %s (it belongs to another user)", t.path);
	if (rc)
		die("%s: %s: %s", t.path, msg, strerror(-rc));
	const char *why = stale_reason(&t.h, t.pid, t.path);
	if (why)
		die("%s is stale (%s)", t.path, why);

	struct sample cur, prev;
	target_read(&t, &cur);
	if (!interval) {
		if (json) {
			json_line(&t, &cur, NULL, 0, false);
		} else {
			double r[NRATES];
			struct sample zero;
			memset(&zero, 0, sizeof(zero));
			rates(&zero, &cur, 0, r);
			uint64_t h[MAX_BUCKETS];
			hist_delta(NULL, &cur, h);
			print_header(true);
			print_line(r, quantile(h, cur.nbuckets, 0.5, NULL),
				   quantile(h, cur.nbuckets, 0.99, NULL), &cur);
		}
		return 0;
	}
	/* Like vmstat: the first line is the average since the runtime started. */
	memset(&prev, 0, sizeof(prev));
	prev.t_ns = t.h.created_ns;
	prev.nbuckets = cur.nbuckets;
	for (long k = 0;; k++) {
		double secs = (double)(cur.t_ns - prev.t_ns) / 1e9;
		if (json) {
			json_line(&t, &cur, &prev, secs, true);
		} else {
			if (k % 20 == 0)
				print_header(false);
			double r[NRATES];
			rates(&prev, &cur, secs, r);
			uint64_t h[MAX_BUCKETS];
			hist_delta(&prev, &cur, h);
			print_line(r, quantile(h, cur.nbuckets, 0.5, NULL),
				   quantile(h, cur.nbuckets, 0.99, NULL), &cur);
			fflush(stdout);
		}
		if (count > 0 && k + 1 >= count)
			break;
		struct timespec ts = { (time_t)interval,
				       (long)((interval - (double)(time_t)interval) * 1e9) };
		nanosleep(&ts, NULL);
		prev = cur;
		target_read(&t, &cur);
		if ((cur.flags & PUB_EXITED) || (kill((pid_t)pid, 0) && errno == ESRCH)) {
			fprintf(stderr, "%s: process %ld exited\n", prog, pid);
			break;
		}
	}
	return 0;
}
