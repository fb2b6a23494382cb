/* SPDX-License-Identifier: MIT */
/*
 * bench.h - what the uhmm benchmarks (bench/bench_*.c) share: the sizes and
 * sample counts (so that a figure and its floor measure the same thing), the
 * clock, CPU pinning, percentiles and medians, the JSON-line writer (one
 * object per metric), the notes file, data files for bench/plot.sh, and the
 * group runner: each measurement runs in a forked child under a deadline, so
 * that a crash, a SIGBUS or a hang costs that group's metrics (value null,
 * with the reason in the notes), never the whole run.
 *
 * Output of a program run as "bench_X DIR":
 *   DIR/bench_X.jsonl       {"metric": M, "value": V, "unit": U, "floor": F, "ratio": R}
 *   DIR/bench_X_notes.txt   one line per remark (fallbacks, errors, checks)
 *   DIR/bench_*.dat         data for plot.sh (whitespace columns, '#' comments)
 * bench/run.sh merges the .jsonl files of both programs into DIR/bench.json.
 */
#ifndef UHMM_BENCH_H
#define UHMM_BENCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- what is measured (both programs) ---------------------------------- */

#define BENCH_PAGE		4096UL
#define BENCH_LAT_SAMPLES	20000UL		/* timed faults per latency metric */
#define BENCH_LAT_WARMUP	200UL		/* untimed faults before them */
#define BENCH_LAT_BATCH		1000UL		/* pages prepared per batch */
#define BENCH_MIG_BYTES		(256UL << 20)	/* migration / streaming size */
#define BENCH_MIG_REPS		5		/* repeats (median) */
#define BENCH_SEQ_REPS		3		/* streaming fault-back repeats */
#define BENCH_RF_BYTES		(1UL << 30)	/* range-fault snapshot size */
#define BENCH_RF_REPS		7
#define BENCH_NOTIFIERS		100000UL
#define BENCH_NT_CALLS		1000		/* mprotect calls per timed batch */
#define BENCH_NT_BATCHES	21
#define BENCH_SCALE_SMALL	(4UL << 20)
#define BENCH_SCALE_SMALL_REPS	15
#define BENCH_SCALE_BIG_REPS	3
#define BENCH_CURVE_REPS	3
#define BENCH_BUDGET_S		250		/* default wall budget per program */

/* Sizes of the throughput curve (MiB); the scaling size is appended. */
static const unsigned long bench_curve_mib[] = { 4, 16, 64, 256, 1024 };
#define BENCH_NCURVE (sizeof(bench_curve_mib) / sizeof(bench_curve_mib[0]))
/* Candidates for the large migrate_scaling size, largest first (MiB). */
static const unsigned long bench_scale_mib[] = { 4096, 2048, 1024 };
#define BENCH_NSCALE (sizeof(bench_scale_mib) / sizeof(bench_scale_mib[0]))

#define BENCH_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define BENCH_CONTAINER_OF(ptr, type, member) \
	((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* ---- clock, placement, memory ------------------------------------------ */

static inline uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/*
 * Thread placement, the same in every program and every group, chosen by
 * $BENCH_PLACEMENT:
 *   same (default)  every thread on CPU 0: a fault is served by a thread of
 *                   the faulting thread's CPU (the cheapest hand-off, and
 *                   the most reproducible one);
 *   split           helper threads (the floor's fault handler, uhmm's
 *                   service and device threads) on CPU 1, the measuring
 *                   thread on CPU 0: a fault is served across CPUs, whose
 *                   wake-up costs tens of us (milliseconds at p99 on VMs);
 *   free            helpers unpinned, the measuring thread on CPU 0: the
 *                   scheduler decides, and the spread between runs is large.
 * Helpers inherit the CPU mask of the thread that creates them, so a group
 * calls bench_place_helpers() before anything starts a thread (uhmm_init(),
 * the floor's pthread_create()) and bench_pin_self() once they exist (after
 * a warm-up).  On a 1-CPU machine split is the same as same.
 */
static inline const char *bench_placement(void)
{
	const char *p = getenv("BENCH_PLACEMENT");

	if (p && (!strcmp(p, "split") || !strcmp(p, "free")))
		return p;
	return "same";
}

static inline int bench_set_cpu(int cpu)
{
	cpu_set_t set;

	if (cpu < 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN), i;

		CPU_ZERO(&set);
		for (i = 0; i < n && i < CPU_SETSIZE; i++)
			CPU_SET((int)i, &set);
	} else {
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
	}
	return sched_setaffinity(0, sizeof(set), &set) ? -1 : cpu;
}

/* Before helper threads exist: the CPU they will inherit. */
static inline void bench_place_helpers(void)
{
	const char *p = bench_placement();

	if (!strcmp(p, "free"))
		bench_set_cpu(-1);
	else if (!strcmp(p, "same") || sysconf(_SC_NPROCESSORS_ONLN) < 2)
		bench_set_cpu(0);
	else
		bench_set_cpu(1);
}

/* The measuring thread, once helpers exist: CPU 0.  Returns it, or -1. */
static inline int bench_pin_self(void)
{
	return bench_set_cpu(0);
}

/* Anonymous private read-write mapping, not populated; NULL on failure. */
static inline void *bench_map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* Value stored in the first u64 of page i of a tagged buffer. */
static inline uint64_t bench_tag(size_t i)
{
	return (uint64_t)i * 0x9E3779B97F4A7C15ULL + 1;
}

/* Populate a buffer: every page written, its first u64 = bench_tag(page). */
static inline void bench_fill_tags(void *p, size_t len)
{
	char *c = p;
	size_t i;

	for (i = 0; i < len / BENCH_PAGE; i++)
		*(volatile uint64_t *)(c + i * BENCH_PAGE) = bench_tag(i);
}

/* MemAvailable from /proc/meminfo, in bytes (0 if unknown). */
static inline uint64_t bench_mem_available(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	unsigned long long kb = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	fclose(f);
	return (uint64_t)kb * 1024;
}

/* ---- statistics ---------------------------------------------------------- */

static inline int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static inline void bench_sort(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), bench_cmp_double);
}

/* Nearest-rank percentile (0 < p <= 100) of a sorted array; NAN if empty. */
static inline double bench_pct_sorted(const double *v, size_t n, double p)
{
	size_t rank;

	if (!n)
		return NAN;
	rank = (size_t)ceil(p / 100.0 * (double)n);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return v[rank - 1];
}

/* Median of n values (sorts them in place); NAN if empty. */
static inline double bench_median(double *v, size_t n)
{
	if (!n)
		return NAN;
	bench_sort(v, n);
	if (n & 1)
		return v[n / 2];
	return (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

static inline double bench_gbps(uint64_t bytes, uint64_t ns)
{
	return ns ? (double)bytes / (double)ns : NAN;   /* bytes/ns == GB/s */
}

/* ---- output ---------------------------------------------------------- */

#define BENCH_MAX_EMITTED 64

/* Shared between the parent and its group children (MAP_SHARED). */
struct bench_shared {
	int nemitted;
	char emitted[BENCH_MAX_EMITTED][64];
};

struct bench_state {
	char dir[PATH_MAX - 64];
	const char *prog;
	int json_fd;
	int notes_fd;
	struct bench_shared *sh;
	uint64_t deadline_ns;		/* whole program */
	uint64_t group_deadline_ns;	/* current group (valid in the child) */
};

static struct bench_state bench = { .json_fd = -1, .notes_fd = -1 };

static inline void bench_write_all(int fd, const char *s, size_t len)
{
	while (fd >= 0 && len) {
		ssize_t w = write(fd, s, len);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		s += w;
		len -= (size_t)w;
	}
}

/* Remark for the notes file (and stdout). */
__attribute__((format(printf, 1, 2)))
static inline void bench_note(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	line[n] = '\0';
	printf("  note: %s", line);
	fflush(stdout);
	bench_write_all(bench.notes_fd, line, (size_t)n);
}

static inline void bench_fmt_num(char *buf, size_t len, double v)
{
	if (isfinite(v))
		snprintf(buf, len, "%.6g", v);
	else
		snprintf(buf, len, "null");
}

/*
 * One JSON line per metric; NAN for value or floor writes null.  The ratio
 * is value / floor whenever both are known.
 */
static inline void bench_emit(const char *metric, double value, const char *unit, double floor_v)
{
	char v[32], f[32], r[32], line[256];
	double ratio = (isfinite(value) && isfinite(floor_v) && floor_v != 0) ?
		       value / floor_v : NAN;
	int n;

	bench_fmt_num(v, sizeof(v), value);
	bench_fmt_num(f, sizeof(f), floor_v);
	bench_fmt_num(r, sizeof(r), ratio);
	n = snprintf(line, sizeof(line),
		     "{\"metric\": \"%s\", \"value\": %s, \"unit\": \"%s\", "
		     "\"floor\": %s, \"ratio\": %s}\n", metric, v, unit, f, r);
	if (n > 0 && (size_t)n < sizeof(line))
		bench_write_all(bench.json_fd, line, (size_t)n);
	printf("  %-28s value %-12s floor %-12s %s\n", metric, v, f, unit);
	fflush(stdout);
	if (bench.sh && bench.sh->nemitted < BENCH_MAX_EMITTED) {
		snprintf(bench.sh->emitted[bench.sh->nemitted], sizeof(bench.sh->emitted[0]),
			 "%s", metric);
		__atomic_add_fetch(&bench.sh->nemitted, 1, __ATOMIC_SEQ_CST);
	}
}

static inline int bench_open_in_dir(const char *name, int flags)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/%s", bench.dir, name);
	return open(path, flags | O_CLOEXEC, 0644);
}

/* A data file under the output directory, with a header comment. */
static inline FILE *bench_data_open(const char *name, const char *mode, const char *header)
{
	char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", bench.dir, name);
	f = fopen(path, mode);
	if (!f) {
		bench_note("cannot write %s: %s", path, strerror(errno));
		return NULL;
	}
	if (header)
		fprintf(f, "# %s\n", header);
	return f;
}

/* Sorted latency samples (us) as "latency_us cdf" lines, for plot.sh. */
static inline void bench_write_cdf(const char *name, const char *what,
				   const double *sorted, size_t n)
{
	FILE *f = bench_data_open(name, "w", what);
	size_t i;

	if (!f)
		return;
	fprintf(f, "# latency_us cdf\n");
	for (i = 0; i < n; i++)
		fprintf(f, "%.4f %.6f\n", sorted[i], (double)(i + 1) / (double)n);
	fclose(f);
}

/*
 * Start of a program: DIR from argv[1] (default "build"), the JSON-lines and
 * notes files truncated, the shared record of emitted metrics mapped.
 */
static inline int bench_open(int argc, char **argv, const char *prog)
{
	const char *dir = argc > 1 ? argv[1] : "build";
	const char *budget = getenv("BENCH_BUDGET_S");
	char name[128];
	void *sh;

	setvbuf(stdout, NULL, _IOLBF, 0);
	snprintf(bench.dir, sizeof(bench.dir), "%s", dir);
	bench.prog = prog;
	snprintf(name, sizeof(name), "%s.jsonl", prog);
	bench.json_fd = bench_open_in_dir(name, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND);
	snprintf(name, sizeof(name), "%s_notes.txt", prog);
	bench.notes_fd = bench_open_in_dir(name, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND);
	if (bench.json_fd < 0) {
		fprintf(stderr, "%s: cannot write %s/%s.jsonl: %s\n", prog, dir, prog,
			strerror(errno));
		return -1;
	}
	sh = mmap(NULL, sizeof(struct bench_shared), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	bench.sh = sh == MAP_FAILED ? NULL : sh;
	bench.deadline_ns = bench_now_ns() +
			    (uint64_t)(budget ? atoi(budget) : BENCH_BUDGET_S) * 1000000000ULL;
	return 0;
}

/* ---- groups ---------------------------------------------------------------- */

struct bench_metric {
	const char *name;
	const char *unit;
};

static inline int bench_was_emitted(const char *metric)
{
	int i, n = bench.sh ? __atomic_load_n(&bench.sh->nemitted, __ATOMIC_SEQ_CST) : 0;

	for (i = 0; i < n; i++)
		if (!strcmp(bench.sh->emitted[i], metric))
			return 1;
	return 0;
}

/* Seconds left to the current group (in its child), never negative. */
static inline double bench_group_left_s(void)
{
	uint64_t now = bench_now_ns();

	return now >= bench.group_deadline_ns ? 0.0 :
	       (double)(bench.group_deadline_ns - now) / 1e9;
}

static inline void bench_describe_status(char *buf, size_t len, int status, int timed_out)
{
	if (timed_out)
		snprintf(buf, len, "timed out, killed");
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "died of signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else if (WIFEXITED(status) && WEXITSTATUS(status))
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
	else
		snprintf(buf, len, "did not measure it (see the messages above)");
}

/*
 * Run fn in a child with a deadline of timeout_s (cut to the program's
 * budget); the child starts on the helpers' CPU (bench_place_helpers()).
 * BENCH_ONLY=WORD runs only the groups whose name contains WORD.  Every
 * metric of the group that the child did not emit is emitted here with
 * value null, and the reason goes to the notes.
 */
static inline void bench_group(const char *name, void (*fn)(void),
			       const struct bench_metric *metrics, size_t nmetrics, int timeout_s)
{
	uint64_t now = bench_now_ns(), deadline = now + (uint64_t)timeout_s * 1000000000ULL;
	const char *only = getenv("BENCH_ONLY");
	int status = 0, timed_out = 0;
	char why[128];
	pid_t pid;
	size_t i;

	if (deadline > bench.deadline_ns)
		deadline = bench.deadline_ns;
	printf("[%s] %s\n", bench.prog, name);
	fflush(NULL);
	if (only && !strstr(name, only)) {
		snprintf(why, sizeof(why), "skipped: BENCH_ONLY=%s", only);
		goto fill;
	}
	if (deadline < now + 2000000000ULL) {
		snprintf(why, sizeof(why), "skipped: the run's time budget is spent");
		goto fill;
	}
	bench.group_deadline_ns = deadline;
	pid = fork();
	if (pid < 0) {
		snprintf(why, sizeof(why), "fork failed: %s", strerror(errno));
		goto fill;
	}
	if (pid == 0) {
		bench_place_helpers();
		fn();
		fflush(NULL);
		_exit(0);
	}
	for (;;) {
		pid_t w = waitpid(pid, &status, WNOHANG);

		if (w == pid || (w < 0 && errno != EINTR))
			break;
		if (bench_now_ns() >= deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			timed_out = 1;
			break;
		}
		usleep(5000);
	}
	bench_describe_status(why, sizeof(why), status, timed_out);
fill:
	for (i = 0; i < nmetrics; i++) {
		if (bench_was_emitted(metrics[i].name))
			continue;
		bench_note("%s: group '%s' %s", metrics[i].name, name, why);
		bench_emit(metrics[i].name, NAN, metrics[i].unit, NAN);
	}
}

static inline int bench_close(void)
{
	if (bench.json_fd >= 0)
		close(bench.json_fd);
	if (bench.notes_fd >= 0)
		close(bench.notes_fd);
	return 0;
}

#endif /* UHMM_BENCH_H */
