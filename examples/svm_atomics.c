/* SPDX-License-Identifier: MIT */
/*
 * svm_atomics.c - the "OpenCL SVM atomics" use case, end to end.
 *
 * 64 uint64_t counters live in ordinary malloc'd memory (page aligned,
 * spread over 8 pages).  Two CPU threads add to random counters with
 * __atomic_fetch_add() while two simulated devices (dmirror 0 and 1, one
 * thread each) add to the same counters with uhmm_dmirror_atomic_add(),
 * which takes the page device-exclusive; the CPU takes it back on its next
 * touch.  At the end every counter must hold exactly the sum of what the
 * four threads added.
 *
 * Prints the operations done, the exclusivity grants and revocations
 * (uhmm_stats_get) and the latency of CPU faults on exclusive pages, as
 * reported by the library (UHMM_EV_CPU_FAULT events, cause 2) and as seen
 * by the CPU threads themselves (atomics that took longer than 1 us).
 *
 *   svm_atomics [--ops N]     N operations per thread (default 100000)
 * Exit status 0 when every counter is exact, 1 otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

#define NCOUNTERS	64
#define NPAGES		8
#define NCPU		2
#define NDEV		2
#define DEFAULT_OPS	100000ULL
#define PACE_SLACK	4		/* ops a thread may run ahead of the other side */
#define SLOW_NS		1000		/* a CPU atomic slower than this faulted */

struct sample_buf {
	uint64_t *ns;
	uint64_t cap;
	uint64_t n;			/* may exceed cap: samples are dropped */
};

struct run {
	uint64_t *base;			/* NPAGES pages, posix_memalign'd */
	uint64_t ops;
	struct uhmm_dmirror *dm[NDEV];
	pthread_barrier_t go;
	uint64_t done[NCPU + NDEV];	/* progress of each thread, for pacing */
	int failed;			/* a device thread gave up */
	uint64_t expect[NCPU + NDEV][NCOUNTERS];
	uint64_t dev_ops[NDEV];		/* device atomics done */
	struct sample_buf slow;		/* CPU atomics timed > SLOW_NS */
	struct sample_buf fault_ev;	/* UHMM_EV_CPU_FAULT, exclusive cause */
};

struct worker {
	struct run *r;
	int id;				/* 0..NCPU-1 CPU, then devices */
};

/* Counter k: page k % NPAGES, its own cache line within the page. */
static uint64_t *counter(struct run *r, unsigned int k)
{
	return r->base + (k % NPAGES) * (UHMM_PAGE_SIZE / 8) + (k / NPAGES) * 8;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: fixed seeds make every run do the same operations. */
static uint64_t rnd(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static void pick(uint64_t *seed, unsigned int *k, uint64_t *v)
{
	uint64_t x = rnd(seed);

	*k = (unsigned int)(x % NCOUNTERS);
	*v = 1 + (x >> 40) % 16;
}

static void sample_add(struct sample_buf *b, uint64_t ns)
{
	uint64_t i = __atomic_fetch_add(&b->n, 1, __ATOMIC_RELAXED);

	if (i < b->cap)
		b->ns[i] = ns;
}

/* Called synchronously by uhmm, from whichever thread served the fault. */
static void on_event(const struct uhmm_event *ev, void *arg)
{
	struct run *r = arg;

	if (ev->type == UHMM_EV_CPU_FAULT && ev->arg == 2)
		sample_add(&r->fault_ev, ev->duration_ns);
}

static int failed(struct run *r)
{
	return __atomic_load_n(&r->failed, __ATOMIC_ACQUIRE);
}

/* Operations done by the slowest thread of the other kind. */
static uint64_t slowest_other(struct run *r, int id)
{
	int first = id < NCPU ? NCPU : 0, last = id < NCPU ? NCPU + NDEV : NCPU;
	uint64_t m = UINT64_MAX;

	for (int t = first; t < last; t++) {
		uint64_t v = __atomic_load_n(&r->done[t], __ATOMIC_ACQUIRE);

		if (v < m)
			m = v;
	}
	return m;
}

/*
 * Plain CPU atomics take nanoseconds, device atomics on a page the device
 * already holds hardly more: left alone, each side would run in bursts and
 * rarely meet the other.  Each thread keeps within PACE_SLACK operations of
 * the slowest thread of the other side, so that CPU and devices contend for
 * the pages during the whole run.
 */
static void keep_pace(struct run *r, int id, uint64_t n)
{
	for (;;) {
		uint64_t m = slowest_other(r, id);

		if (m >= n || n - m <= PACE_SLACK || failed(r))
			return;
		sched_yield();
	}
}

/* A CPU thread: plain atomics, timing each one. */
static void *cpu_thread(void *p)
{
	struct worker *w = p;
	struct run *r = w->r;
	uint64_t seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(w->id + 1);

	pthread_barrier_wait(&r->go);
	for (uint64_t n = 0; n < r->ops; n++) {
		unsigned int k;
		uint64_t v, t0, dt;

		keep_pace(r, w->id, n);
		pick(&seed, &k, &v);
		t0 = now_ns();
		__atomic_fetch_add(counter(r, k), v, __ATOMIC_SEQ_CST);
		dt = now_ns() - t0;
		if (dt > SLOW_NS)
			sample_add(&r->slow, dt);
		r->expect[w->id][k] += v;
		__atomic_store_n(&r->done[w->id], n + 1, __ATOMIC_RELEASE);
	}
	__atomic_store_n(&r->done[w->id], UINT64_MAX, __ATOMIC_RELEASE);
	return NULL;
}

/* A device thread: its own mirror, device atomics only. */
static void *dev_thread(void *p)
{
	struct worker *w = p;
	struct run *r = w->r;
	int d = w->id - NCPU;
	uint64_t seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(w->id + 1);

	pthread_barrier_wait(&r->go);
	for (uint64_t n = 0; n < r->ops; n++) {
		unsigned int k;
		uint64_t v, old;
		int ret;

		keep_pace(r, w->id, n);
		pick(&seed, &k, &v);
		ret = uhmm_dmirror_atomic_add(r->dm[d], (uint64_t)(uintptr_t)counter(r, k),
					      v, &old);
		if (ret) {
			fprintf(stderr, "svm_atomics: device %d: atomic_add: %s\n", d,
				strerror(-ret));
			__atomic_store_n(&r->failed, 1, __ATOMIC_RELEASE);
			break;
		}
		r->expect[w->id][k] += v;
		r->dev_ops[d] = n + 1;
		__atomic_store_n(&r->done[w->id], n + 1, __ATOMIC_RELEASE);
	}
	__atomic_store_n(&r->done[w->id], UINT64_MAX, __ATOMIC_RELEASE);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void print_latency(const char *what, struct sample_buf *b)
{
	uint64_t n = b->n < b->cap ? b->n : b->cap;

	if (n == 0) {
		printf("%s: none\n", what);
		return;
	}
	qsort(b->ns, n, sizeof(*b->ns), cmp_u64);
	printf("%s: %" PRIu64 ", median %.1f us, p99 %.1f us, max %.1f us\n", what, b->n,
	       (double)b->ns[n / 2] / 1e3, (double)b->ns[(n * 99) / 100] / 1e3,
	       (double)b->ns[n - 1] / 1e3);
}

/* Every counter against the sum of what the threads added; prints misses. */
static int check_counters(struct run *r)
{
	int bad = 0;

	for (unsigned int k = 0; k < NCOUNTERS; k++) {
		uint64_t want = 0, got = __atomic_load_n(counter(r, k), __ATOMIC_SEQ_CST);

		for (int t = 0; t < NCPU + NDEV; t++)
			want += r->expect[t][k];
		if (got != want) {
			printf("counter %2u: %" PRIu64 ", expected %" PRIu64 "\n", k, got, want);
			bad++;
		}
	}
	if (bad)
		printf("counters: %d of %d wrong\n", bad, NCOUNTERS);
	else
		printf("counters: exact\n");
	return bad;
}

static int buf_alloc(struct sample_buf *b, uint64_t cap)
{
	b->cap = cap;
	b->n = 0;
	b->ns = malloc(cap * sizeof(*b->ns));
	if (!b->ns)
		return -ENOMEM;
	/*
	 * Populate it now: the event callback writes here from inside uhmm's
	 * fault handling, where a fault of its own would have to wait for
	 * itself.
	 */
	memset(b->ns, 0, cap * sizeof(*b->ns));
	return 0;
}

static int setup(struct run *r)
{
	void *mem;
	int ret = uhmm_init();

	if (ret) {
		fprintf(stderr, "svm_atomics: uhmm_init: %s\n", strerror(-ret));
		return ret;
	}
	if (posix_memalign(&mem, UHMM_PAGE_SIZE, NPAGES * UHMM_PAGE_SIZE))
		return -ENOMEM;
	memset(mem, 0, NPAGES * UHMM_PAGE_SIZE);
	r->base = mem;
	for (int d = 0; d < NDEV; d++) {
		ret = uhmm_dmirror_open((unsigned int)d, &r->dm[d]);
		if (ret) {
			fprintf(stderr, "svm_atomics: dmirror %d: %s\n", d, strerror(-ret));
			return ret;
		}
	}
	if (buf_alloc(&r->slow, NCPU * r->ops))
		return -ENOMEM;
	if (buf_alloc(&r->fault_ev, 2 * NCPU * r->ops + 4096))
		return -ENOMEM;
	return pthread_barrier_init(&r->go, NULL, NCPU + NDEV) ? -ENOMEM : 0;
}

static int run_threads(struct run *r)
{
	struct worker w[NCPU + NDEV];
	pthread_t th[NCPU + NDEV];

	for (int i = 0; i < NCPU + NDEV; i++) {
		w[i] = (struct worker){ r, i };
		if (pthread_create(&th[i], NULL, i < NCPU ? cpu_thread : dev_thread, &w[i])) {
			fprintf(stderr, "svm_atomics: pthread_create failed\n");
			exit(1);
		}
	}
	for (int i = 0; i < NCPU + NDEV; i++)
		pthread_join(th[i], NULL);
	return failed(r) ? -EIO : 0;
}

static uint64_t parse_ops(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--ops") && i + 1 < argc) {
			char *end;
			unsigned long long v = strtoull(argv[++i], &end, 0);

			if (*end == '\0' && v > 0)
				return v;
		}
		fprintf(stderr, "usage: %s [--ops N]   (N > 0 operations per thread)\n", argv[0]);
		exit(2);
	}
	return DEFAULT_OPS;
}

int main(int argc, char **argv)
{
	static struct run r;
	struct uhmm_stats s0, s1;
	uint64_t t0, t1, cpu_ops = 0, dev_ops = 0;
	int bad;

	r.ops = parse_ops(argc, argv);
	if (setup(&r))
		return 1;
	printf("svm_atomics: %d counters on %d pages at %p, %d CPU + %d device threads, "
	       "%" PRIu64 " ops each\n", NCOUNTERS, NPAGES, (void *)r.base, NCPU, NDEV, r.ops);
	fflush(stdout);

	uhmm_set_event_cb(on_event, &r);
	uhmm_stats_get(&s0);
	t0 = now_ns();
	bad = run_threads(&r) != 0;
	t1 = now_ns();
	uhmm_stats_get(&s1);
	uhmm_set_event_cb(NULL, NULL);

	for (int d = 0; d < NDEV; d++)
		dev_ops += r.dev_ops[d];
	cpu_ops = NCPU * r.ops;
	printf("operations: CPU %" PRIu64 ", device %" PRIu64 " in %.2f s\n", cpu_ops,
	       dev_ops, (double)(t1 - t0) / 1e9);
	printf("exclusivity: %" PRIu64 " grants, %" PRIu64 " revocations, %" PRIu64
	       " CPU faults on exclusive pages\n", s1.exclusive_grants - s0.exclusive_grants,
	       s1.exclusive_revokes - s0.exclusive_revokes,
	       s1.cpu_faults_exclusive - s0.cpu_faults_exclusive);
	print_latency("CPU fault on exclusive page (uhmm events)", &r.fault_ev);
	print_latency("CPU atomics slower than 1 us (timed by the threads)", &r.slow);

	bad |= check_counters(&r) != 0;
	for (int d = 0; d < NDEV; d++)
		uhmm_dmirror_close(r.dm[d]);
	free(r.base);
	return bad ? 1 : 0;
}
