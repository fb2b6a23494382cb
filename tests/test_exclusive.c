/* SPDX-License-Identifier: MIT */
/*
 * test_exclusive.c - device-exclusive access (make_device_exclusive) through
 * the reference device and the public API: taking pages exclusive and the
 * CPU taking them back (data and grant/revoke counters), mprotect, fork
 * copy-on-write, THP regions, shared and memfd memory (refused), device
 * atomics (uhmm_dmirror_atomic_add) alone and racing CPU atomics, munmap and
 * device close while pages are held, fault events logged by a callback that
 * writes into heap memory, bad arguments, and
 * uhmm_make_device_exclusive()/uhmm_device_exclusive_release() called
 * directly on a range with a hole.
 *
 * Semantics follow the exclusive cases of the kernel's hmm selftests; the
 * code is our own.
 */
#include "harness.h"
#include "dmtest.h"

#include <pthread.h>
#include <sched.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

#define PAGE		UHMM_PAGE_SIZE
#define NPAGES		1024UL			/* 4 MiB, as the kernel selftest */
#define SZ(n)		((n) * PAGE)
#define HUGE_SZ		(2UL << 20)

/* Per-case state: one mirror on device 0 and a private anonymous buffer. */
struct xbuf {
	struct uhmm_dmirror *dm;
	void *ptr;			/* process memory */
	void *mirror;			/* device-side copy (cmd.ptr) */
	uint64_t npages;
};

static void init_or_skip(void)
{
	int ret = uhmm_init();

	if (ret == -ENOSYS || ret == -EPERM)
		SKIP("userfaultfd not available (uhmm_init: %s)", strerror(-ret));
	ASSERT_EQ(ret, 0);
}

/*
 * Anonymous memory where nothing else maps, so that a hole punched in it
 * stays a hole (see th_mmap_isolated in harness.h).
 */
static char *map_far(size_t size)
{
	void *p = th_mmap_isolated(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);

	ASSERT_MAPPED(p);
	return p;
}

static void xbuf_init(struct xbuf *b, uint64_t npages)
{
	b->dm = open_dev(0);
	b->npages = npages;
	b->ptr = map_far(SZ(npages));		/* exclusive_munmap needs a lasting hole */
	b->mirror = malloc(SZ(npages));
	ASSERT_NOT_NULL(b->mirror);
	memset(b->mirror, 0xEE, SZ(npages));
}

static int check_excl(struct uhmm_dmirror *dm, const void *addr, uint64_t npages)
{
	struct uhmm_dmirror_cmd cmd;

	return run_cmd(uhmm_dmirror_check_exclusive, dm, addr, NULL, npages, &cmd);
}

/* Make b's whole buffer exclusive and check cpages and the data returned. */
static void make_all_exclusive(struct xbuf *b, int base)
{
	struct uhmm_dmirror_cmd cmd;
	int ret = run_cmd(uhmm_dmirror_exclusive, b->dm, b->ptr, b->mirror, b->npages, &cmd);

	ASSERT_EQ(ret, 0);
	ASSERT_EQ(cmd.cpages, b->npages);
	ASSERT_EQ(diff_ints(b->mirror, SZ(b->npages), base, 1), -1);
}

static uint64_t inval_count(struct uhmm_dmirror *dm, enum uhmm_notify_event ev)
{
	uint64_t counts[8] = { 0 };

	ASSERT_EQ(uhmm_dmirror_invalidations(dm, counts), 0);
	return counts[ev];
}

static uint64_t pool_in_use(unsigned int dev)
{
	struct uhmm_devmem_stats st;

	ASSERT_EQ(uhmm_dmirror_devmem_stats(dev, &st), 0);
	return st.in_use;
}

/*
 * Basic exclusive access: the device takes every page, the CPU takes each
 * back on its first touch, data survives both ways, and the counters say
 * so page for page.
 */
TEST(exclusive)
{
	struct uhmm_stats s0, s1, s2;
	struct xbuf b;
	int *ptr;
	uint64_t inv0;

	xbuf_init(&b, NPAGES);
	ptr = b.ptr;
	fill_ints(b.ptr, SZ(NPAGES), 0, 1);
	ASSERT_EQ(check_excl(b.dm, b.ptr, NPAGES), 0);

	uhmm_stats_get(&s0);
	make_all_exclusive(&b, 0);
	uhmm_stats_get(&s1);
	ASSERT_EQ(s1.exclusive_grants - s0.exclusive_grants, NPAGES);
	ASSERT_EQ(check_excl(b.dm, b.ptr, NPAGES), -EPERM);
	ASSERT_EQ(check_excl(b.dm, (char *)b.ptr + SZ(NPAGES - 1), 1), -EPERM);
	inv0 = inval_count(b.dm, UHMM_NOTIFY_EXCLUSIVE);

	for (size_t i = 0; i < SZ(NPAGES) / sizeof(int); i++)
		ASSERT_EQ(ptr[i]++, (int)i);
	ASSERT_EQ(diff_ints(b.ptr, SZ(NPAGES), 1, 1), -1);

	uhmm_stats_get(&s2);
	ASSERT_EQ(s2.exclusive_revokes - s1.exclusive_revokes, NPAGES);
	ASSERT_GE(s2.cpu_faults_exclusive - s1.cpu_faults_exclusive, 1);
	ASSERT_LE(s2.cpu_faults_exclusive - s1.cpu_faults_exclusive, NPAGES);
	ASSERT_GT(inval_count(b.dm, UHMM_NOTIFY_EXCLUSIVE), inv0);
	ASSERT_EQ(check_excl(b.dm, b.ptr, NPAGES), 0);

	/* The device sees the CPU's increments. */
	struct uhmm_dmirror_cmd cmd;
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, b.dm, b.ptr, b.mirror, NPAGES, &cmd), 0);
	ASSERT_EQ(cmd.cpages, NPAGES);
	ASSERT_EQ(diff_ints(b.mirror, SZ(NPAGES), 1, 1), -1);

	uhmm_dmirror_close(b.dm);
	ASSERT_EQ(pool_in_use(0), 0);
}

/* A range made read-only while the device holds it: device writes fail. */
TEST(exclusive_mprotect)
{
	struct uhmm_dmirror_cmd cmd;
	struct xbuf b;
	uint64_t inv0, old = 0;

	xbuf_init(&b, NPAGES);
	fill_ints(b.ptr, SZ(NPAGES), 0, 1);
	make_all_exclusive(&b, 0);
	inv0 = inval_count(b.dm, UHMM_NOTIFY_PROTECTION_VMA);

	ASSERT_EQ(mprotect(b.ptr, SZ(NPAGES), PROT_READ), 0);
	ASSERT_GT(inval_count(b.dm, UHMM_NOTIFY_PROTECTION_VMA), inv0);

	fill_ints(b.mirror, SZ(NPAGES), 7, 1);
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, b.dm, b.ptr, b.mirror, NPAGES, &cmd), -EPERM);
	ASSERT_EQ(uhmm_dmirror_atomic_add(b.dm, (uint64_t)(uintptr_t)b.ptr, 1, &old), -EPERM);

	/* Nothing was written, by either side. */
	ASSERT_EQ(diff_ints(b.ptr, SZ(NPAGES), 0, 1), -1);
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, b.dm, b.ptr, b.mirror, NPAGES, &cmd), 0);
	ASSERT_EQ(cmd.cpages, NPAGES);
	ASSERT_EQ(diff_ints(b.mirror, SZ(NPAGES), 0, 1), -1);
	uhmm_dmirror_close(b.dm);
}

/*
 * Child side of exclusive_cow: sees the pre-fork data (not the parent's
 * later writes), increments it, and can drive a device of its own.
 * Returns an exit code: 0 ok, else which step failed.
 */
static int cow_child(int *ptr, size_t size, void *mirror)
{
	struct uhmm_dmirror_cmd cmd;
	struct uhmm_dmirror *dm = NULL;

	if (diff_ints(ptr, size, 0, 1) != -1)
		return 10;
	for (size_t i = 0; i < size / sizeof(int); i++)
		ptr[i] += 1;
	if (diff_ints(ptr, size, 1, 1) != -1)
		return 11;
	if (uhmm_dmirror_open(0, &dm) != 0)
		return 12;
	memset(mirror, 0, size);
	if (run_cmd(uhmm_dmirror_read, dm, ptr, mirror, size / PAGE, &cmd) != 0)
		return 13;
	if (cmd.cpages != size / PAGE || diff_ints(mirror, size, 1, 1) != -1)
		return 14;
	uhmm_dmirror_close(dm);
	return 0;
}

/* fork() while the device holds every page: both sides get correct COW data. */
TEST(exclusive_cow)
{
	struct xbuf b;
	int *ptr, status;
	pid_t pid;

	xbuf_init(&b, NPAGES);
	ptr = b.ptr;
	fill_ints(b.ptr, SZ(NPAGES), 0, 1);
	make_all_exclusive(&b, 0);

	fflush(stdout);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0)
		_exit(cow_child(ptr, SZ(NPAGES), b.mirror));

	for (size_t i = 0; i < SZ(NPAGES) / sizeof(int); i++)
		ASSERT_EQ(ptr[i] += 2, (int)i + 2);
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);

	/* The child's increments stayed in the child. */
	ASSERT_EQ(diff_ints(b.ptr, SZ(NPAGES), 2, 1), -1);
	ASSERT_EQ(check_excl(b.dm, b.ptr, NPAGES), 0);
	uhmm_dmirror_close(b.dm);
	ASSERT_EQ(pool_in_use(0), 0);
}

static void *map_huge_region(void **raw)
{
	char *p = map_anon(2 * HUGE_SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *a = (char *)(((uintptr_t)p + HUGE_SZ - 1) & ~(HUGE_SZ - 1));

	*raw = p;
	ASSERT_EQ(madvise(a, HUGE_SZ, MADV_HUGEPAGE), 0);
	return a;
}

/* Every page: 0x5A bytes with its page index in the first word. */
static void thp_fill(char *a)
{
	memset(a, 0x5A, HUGE_SZ);
	for (uint64_t pg = 0; pg < HUGE_SZ / PAGE; pg++)
		memcpy(a + SZ(pg), &pg, sizeof(pg));
}

static long thp_check(const char *a)
{
	for (uint64_t pg = 0; pg < HUGE_SZ / PAGE; pg++) {
		uint64_t v;

		memcpy(&v, a + SZ(pg), sizeof(v));
		if (v != pg)
			return (long)pg;
		for (size_t off = sizeof(v); off < PAGE; off++)
			if ((unsigned char)a[SZ(pg) + off] != 0x5A)
				return (long)pg;
	}
	return -1;
}

/* Exclusive access to a (possibly) huge page: all of it, then part of it. */
TEST(exclusive_thp)
{
	const uint64_t np = HUGE_SZ / PAGE, sub = 100, nsub = 64;
	struct uhmm_dmirror *dm = open_dev(0);
	struct uhmm_dmirror_cmd cmd;
	struct uhmm_stats s0, s1;
	char *a, *mirror = malloc(HUGE_SZ);
	void *raw;

	ASSERT_NOT_NULL(mirror);
	a = map_huge_region(&raw);
	thp_fill(a);
	ASSERT_EQ(run_cmd(uhmm_dmirror_snapshot, dm, a, mirror, np, &cmd), 0);
	printf("# exclusive_thp: region %s\n", (mirror[0] & UHMM_DMIRROR_PROT_PMD) ?
	       "is PMD mapped" : "is not PMD mapped (no THP given)");

	ASSERT_EQ(run_cmd(uhmm_dmirror_exclusive, dm, a, mirror, np, &cmd), 0);
	ASSERT_EQ(cmd.cpages, np);
	ASSERT_EQ(thp_check(mirror), -1);
	ASSERT_EQ(check_excl(dm, a, np), -EPERM);
	ASSERT_EQ(thp_check(a), -1);		/* CPU reads take it all back */
	ASSERT_EQ(check_excl(dm, a, np), 0);

	/* A sub-range in the middle: the rest of the huge page stays usable. */
	uhmm_stats_get(&s0);
	ASSERT_EQ(run_cmd(uhmm_dmirror_exclusive, dm, a + SZ(sub), mirror, nsub, &cmd), 0);
	ASSERT_EQ(cmd.cpages, nsub);
	uhmm_stats_get(&s1);
	ASSERT_EQ(s1.exclusive_grants - s0.exclusive_grants, nsub);
	ASSERT_EQ(check_excl(dm, a, sub), 0);
	ASSERT_EQ(check_excl(dm, a + SZ(sub), nsub), -EPERM);
	((volatile char *)a)[9] = 0x5A;		/* CPU touches pages outside it */
	((volatile char *)a)[SZ(np - 1) + 9] = 0x5A;
	ASSERT_EQ(check_excl(dm, a + SZ(sub), nsub), -EPERM);
	ASSERT_EQ(thp_check(a), -1);
	ASSERT_EQ(check_excl(dm, a, np), 0);
	uhmm_stats_get(&s0);
	ASSERT_EQ(s0.exclusive_revokes - s1.exclusive_revokes, nsub);

	uhmm_dmirror_close(dm);
	ASSERT_EQ(munmap(raw, 2 * HUGE_SZ), 0);
	free(mirror);
}

/*
 * Shared memory cannot be made exclusive: the command takes nothing (or
 * fails with -EOPNOTSUPP), and the public call reports -EOPNOTSUPP per page.
 */
static void shared_case(struct uhmm_dmirror *dm, void *p, uint64_t np)
{
	struct uhmm_dmirror_cmd cmd;
	struct uhmm_stats s0, s1;
	static char mirror[SZ(8)];
	static const int owner;
	uint64_t pages[8];
	int errs[8], ret;

	ASSERT_LE(np, 8);
	fill_ints(p, SZ(np), 3, 1);
	uhmm_stats_get(&s0);
	ret = run_cmd(uhmm_dmirror_exclusive, dm, p, mirror, np, &cmd);
	ASSERT_TRUE(ret == -EOPNOTSUPP || ret == 0);
	if (ret == 0)
		ASSERT_EQ(cmd.cpages, 0);
	ASSERT_EQ(check_excl(dm, p, np), 0);

	memset(pages, 0xAB, sizeof(pages));
	memset(errs, 0, sizeof(errs));
	ASSERT_EQ(uhmm_make_device_exclusive((uintptr_t)p, np, &owner, pages, errs), 0);
	for (uint64_t i = 0; i < np; i++) {
		ASSERT_EQ(pages[i], 0);
		ASSERT_EQ(errs[i], -EOPNOTSUPP);
	}
	uhmm_stats_get(&s1);
	ASSERT_EQ(s1.exclusive_grants, s0.exclusive_grants);
	ASSERT_EQ(s1.cpu_faults_exclusive, s0.cpu_faults_exclusive);
	ASSERT_EQ(diff_ints(p, SZ(np), 3, 1), -1);
}

TEST(exclusive_shared)
{
	struct uhmm_dmirror *dm = open_dev(0);
	const uint64_t np = 8;
	void *p;
	int fd;

	p = map_anon(SZ(np), PROT_READ | PROT_WRITE, MAP_SHARED);
	shared_case(dm, p, np);
	ASSERT_EQ(munmap(p, SZ(np)), 0);

	fd = memfd_create("uhmm-excl", 0);
	ASSERT_GE(fd, 0);
	ASSERT_EQ(ftruncate(fd, (off_t)SZ(np)), 0);
	p = mmap(NULL, SZ(np), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_MAPPED(p);
	shared_case(dm, p, np);

	/* The file still holds the data (nothing was moved out of it). */
	int v = 0;
	ASSERT_EQ(pread(fd, &v, sizeof(v), 4 * sizeof(int)), (ssize_t)sizeof(v));
	ASSERT_EQ(v, 4 + 3);
	ASSERT_EQ(munmap(p, SZ(np)), 0);
	close(fd);
	uhmm_dmirror_close(dm);
}

/* Device atomics: old value back, new value seen by the CPU, grants. */
TEST(atomic_add)
{
	struct uhmm_dmirror *dm = open_dev(0);
	struct uhmm_stats s0, s1, s2;
	uint64_t *v, addr, old = 0;

	v = map_anon(SZ(2), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	v[3] = 1000;
	v[SZ(1) / 8] = 77;			/* first word of page 1 */
	addr = (uint64_t)(uintptr_t)&v[3];
	ASSERT_EQ(check_excl(dm, v, 1), 0);

	uhmm_stats_get(&s0);
	ASSERT_EQ(uhmm_dmirror_atomic_add(dm, addr, 5, &old), 0);
	ASSERT_EQ(old, 1000);
	uhmm_stats_get(&s1);
	ASSERT_GE(s1.exclusive_grants - s0.exclusive_grants, 1);
	ASSERT_EQ(check_excl(dm, v, 1), -EPERM);	/* taken when not held */
	ASSERT_EQ(check_excl(dm, &v[SZ(1) / 8], 1), 0);	/* only that page */

	/* Held already: no new grant. */
	ASSERT_EQ(uhmm_dmirror_atomic_add(dm, addr, 7, &old), 0);
	ASSERT_EQ(old, 1005);
	uhmm_stats_get(&s2);
	ASSERT_EQ(s2.exclusive_grants, s1.exclusive_grants);

	/* The CPU sees it (and takes the page back). */
	ASSERT_EQ(__atomic_load_n(&v[3], __ATOMIC_SEQ_CST), 1012);
	ASSERT_EQ(v[4], 0);
	ASSERT_EQ(check_excl(dm, v, 1), 0);
	uhmm_stats_get(&s1);
	ASSERT_GE(s1.exclusive_revokes - s2.exclusive_revokes, 1);

	/* Wrap-around is plain modular arithmetic; retaken after the revoke. */
	ASSERT_EQ(uhmm_dmirror_atomic_add(dm, addr, UINT64_MAX, &old), 0);
	ASSERT_EQ(old, 1012);
	uhmm_stats_get(&s2);
	ASSERT_GE(s2.exclusive_grants - s1.exclusive_grants, 1);
	ASSERT_EQ(v[3], 1011);
	ASSERT_EQ(v[SZ(1) / 8], 77);

	ASSERT_EQ(uhmm_dmirror_atomic_add(NULL, addr, 1, &old), -EINVAL);
	uhmm_dmirror_close(dm);
	ASSERT_EQ(v[3], 1011);
}

/* ---- concurrent CPU and device atomics on the same counters ---- */

#define NCTR		64
#define CTR_PAGES	8
/*
 * Per thread: about 3 s here.  Sanitizer builds (UHMM_TEST_QUICK=1, set by
 * make test SAN=...) run 10x fewer: still thousands of grants and revokes.
 */
static uint64_t conc_ops(void)
{
	return getenv("UHMM_TEST_QUICK") ? 15000UL : 150000UL;
}
#define CONC_OPS	conc_ops()
#define PACE_SLACK	4

struct conc {
	uint64_t *base;				/* CTR_PAGES pages */
	struct uhmm_dmirror *dm[2];
	pthread_barrier_t go;
	uint64_t done[4];			/* atomics: progress per thread */
	int dev_err[2];
	uint64_t exp[4][NCTR];			/* per thread, per counter */
	int bad_old;				/* device saw a counter go down */
};

/* Counter k lives on page k % CTR_PAGES, so all pages are contended. */
static uint64_t *ctr(struct conc *c, unsigned int k)
{
	return c->base + (k % CTR_PAGES) * (PAGE / 8) + (k / CTR_PAGES) * 3;
}

static uint64_t xs_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

struct conc_arg {
	struct conc *c;
	int id;					/* 0,1 CPU; 2,3 device */
};

static bool dev_failed(struct conc *c)
{
	return __atomic_load_n(&c->dev_err[0], __ATOMIC_ACQUIRE) ||
	       __atomic_load_n(&c->dev_err[1], __ATOMIC_ACQUIRE);
}

/*
 * Each thread stays within PACE_SLACK operations of the slowest thread of
 * the other side (CPU vs device), so that both sides contend for the pages
 * during the whole run instead of each running its ops in one burst.
 */
static void keep_pace(struct conc *c, int id, uint64_t n)
{
	int other = id < 2 ? 2 : 0;

	for (;;) {
		uint64_t a = __atomic_load_n(&c->done[other], __ATOMIC_ACQUIRE);
		uint64_t b = __atomic_load_n(&c->done[other + 1], __ATOMIC_ACQUIRE);
		uint64_t m = a < b ? a : b;

		if (m >= n || n - m <= PACE_SLACK || dev_failed(c))
			return;
		sched_yield();
	}
}

static void *cpu_worker(void *p)
{
	struct conc_arg *a = p;
	struct conc *c = a->c;
	uint64_t seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(a->id + 1);

	pthread_barrier_wait(&c->go);
	for (uint64_t n = 0; n < CONC_OPS; n++) {
		keep_pace(c, a->id, n);
		uint64_t r = xs_next(&seed);
		unsigned int k = (unsigned int)(r % NCTR);
		uint64_t v = 1 + (r >> 32) % 7;

		__atomic_fetch_add(ctr(c, k), v, __ATOMIC_SEQ_CST);
		c->exp[a->id][k] += v;
		__atomic_store_n(&c->done[a->id], n + 1, __ATOMIC_RELEASE);
	}
	__atomic_store_n(&c->done[a->id], UINT64_MAX, __ATOMIC_RELEASE);
	return NULL;
}

static void *dev_worker(void *p)
{
	struct conc_arg *a = p;
	struct conc *c = a->c;
	int d = a->id - 2;
	uint64_t seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(a->id + 1);
	uint64_t last[NCTR] = { 0 };

	pthread_barrier_wait(&c->go);
	for (uint64_t n = 0; n < CONC_OPS; n++) {
		keep_pace(c, a->id, n);
		uint64_t r = xs_next(&seed), old = 0;
		unsigned int k = (unsigned int)(r % NCTR);
		uint64_t v = 1 + (r >> 32) % 7;
		int ret = uhmm_dmirror_atomic_add(c->dm[d], (uintptr_t)ctr(c, k), v, &old);

		if (ret) {
			__atomic_store_n(&c->dev_err[d], ret, __ATOMIC_RELEASE);
			break;
		}
		if (old < last[k])
			__atomic_store_n(&c->bad_old, 1, __ATOMIC_RELAXED);
		last[k] = old + v;
		c->exp[a->id][k] += v;
		__atomic_store_n(&c->done[a->id], n + 1, __ATOMIC_RELEASE);
	}
	__atomic_store_n(&c->done[a->id], UINT64_MAX, __ATOMIC_RELEASE);
	return NULL;
}

TEST_TIMEOUT(concurrent_atomics, 180)
{
	struct conc *c = calloc(1, sizeof(*c));
	struct conc_arg args[4];
	pthread_t th[4];
	struct uhmm_stats s0, s1;
	uint64_t t0;

	ASSERT_NOT_NULL(c);
	c->dm[0] = open_dev(0);
	c->dm[1] = open_dev(0);			/* two mirrors, one device */
	c->base = map_anon(SZ(CTR_PAGES), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	for (unsigned int k = 0; k < NCTR; k++)
		*ctr(c, k) = 1000ULL * k;
	ASSERT_EQ(pthread_barrier_init(&c->go, NULL, 4), 0);

	uhmm_stats_get(&s0);
	t0 = th_now_ns();
	for (int i = 0; i < 4; i++) {
		args[i] = (struct conc_arg){ c, i };
		ASSERT_EQ(pthread_create(&th[i], NULL, i < 2 ? cpu_worker : dev_worker,
					 &args[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(pthread_join(th[i], NULL), 0);
	uhmm_stats_get(&s1);
	printf("# concurrent_atomics: %lu ops/thread in %.2f s, grants %" PRIu64
	       " revokes %" PRIu64 "\n", (unsigned long)CONC_OPS, (double)(th_now_ns() - t0) / 1e9,
	       s1.exclusive_grants - s0.exclusive_grants,
	       s1.exclusive_revokes - s0.exclusive_revokes);

	ASSERT_EQ(c->dev_err[0], 0);
	ASSERT_EQ(c->dev_err[1], 0);
	ASSERT_EQ(c->bad_old, 0);
	for (unsigned int k = 0; k < NCTR; k++) {
		uint64_t want = 1000ULL * k;

		for (int t = 0; t < 4; t++)
			want += c->exp[t][k];
		ASSERT_EQ(*ctr(c, k), want);
	}
	ASSERT_GE(s1.exclusive_revokes - s0.exclusive_revokes, 1000);
	ASSERT_GE(s1.exclusive_grants - s0.exclusive_grants, 1000);
	ASSERT_GE(s1.cpu_faults_exclusive - s0.cpu_faults_exclusive, 1);
	uhmm_dmirror_close(c->dm[0]);
	uhmm_dmirror_close(c->dm[1]);
	ASSERT_EQ(pool_in_use(0), 0);
}

/* ---- events of exclusive faults, recorded into fresh heap memory ---- */

#define EV_ROUNDS	24

struct ev_log {
	char *heap;			/* malloc'd, untouched: one page per record */
	uint64_t faults, grants, revokes, bad;
};

/*
 * Runs inside uhmm's fault handling (any thread).  It writes each fault
 * record into a page of the heap that nothing touched yet, as a profiler
 * writing into its malloc'd buffer would.
 */
static void ev_record(const struct uhmm_event *ev, void *arg)
{
	struct ev_log *l = arg;

	if (ev->type == UHMM_EV_EXCLUSIVE_GRANT)
		__atomic_fetch_add(&l->grants, 1, __ATOMIC_RELAXED);
	if (ev->type == UHMM_EV_EXCLUSIVE_REVOKE)
		__atomic_fetch_add(&l->revokes, 1, __ATOMIC_RELAXED);
	if (ev->type != UHMM_EV_CPU_FAULT || ev->arg != 2)
		return;
	uint64_t i = __atomic_fetch_add(&l->faults, 1, __ATOMIC_RELAXED);

	if (i < EV_ROUNDS)
		memcpy(l->heap + i * PAGE, ev, sizeof(*ev));
	if (ev->duration_ns == 0 || ev->duration_ns > 10000000000ULL || (ev->addr & (PAGE - 1)))
		__atomic_store_n(&l->bad, 1, __ATOMIC_RELAXED);
}

/*
 * Counters in posix_memalign'd heap memory, the device and the CPU taking
 * turns; an event callback logs every CPU fault on an exclusive page.  The
 * events match the counters, and the callback's own first touches of heap
 * pages do not stall the fault that runs it.
 */
TEST_TIMEOUT(exclusive_fault_events, 30)
{
	struct uhmm_dmirror *dm = open_dev(0);
	static struct ev_log l;
	struct uhmm_stats s0, s1;
	uint64_t *c, old;
	void *mem;

	ASSERT_EQ(posix_memalign(&mem, PAGE, SZ(4)), 0);
	c = mem;
	memset(c, 0, SZ(4));
	l.heap = malloc(SZ(EV_ROUNDS) + 64);	/* below the mmap threshold: heap */
	ASSERT_NOT_NULL(l.heap);

	uhmm_stats_get(&s0);
	uhmm_set_event_cb(ev_record, &l);
	for (int r = 0; r < EV_ROUNDS; r++) {
		uint64_t *w = &c[(size_t)(r % 4) * (PAGE / 8) + 1];

		ASSERT_EQ(uhmm_dmirror_atomic_add(dm, (uintptr_t)w, 3, &old), 0);
		ASSERT_EQ(old, (uint64_t)(r / 4) * 5);
		ASSERT_EQ(__atomic_fetch_add(w, 2, __ATOMIC_SEQ_CST), old + 3);
	}
	uhmm_set_event_cb(NULL, NULL);
	uhmm_stats_get(&s1);

	ASSERT_EQ(l.bad, 0);
	ASSERT_EQ(s1.cpu_faults_exclusive - s0.cpu_faults_exclusive, EV_ROUNDS);
	ASSERT_EQ(l.faults, EV_ROUNDS);
	ASSERT_EQ(l.revokes, s1.exclusive_revokes - s0.exclusive_revokes);
	ASSERT_GE(l.revokes, EV_ROUNDS);
	ASSERT_GE(l.grants, 1);
	for (int i = 0; i < EV_ROUNDS; i++) {
		struct uhmm_event ev;

		memcpy(&ev, l.heap + (size_t)i * PAGE, sizeof(ev));
		ASSERT_EQ(ev.addr, (uintptr_t)&c[(size_t)(i % 4) * (PAGE / 8)]);
	}
	for (int p = 0; p < 4; p++)
		ASSERT_EQ(c[(size_t)p * (PAGE / 8) + 1], (uint64_t)(EV_ROUNDS / 4) * 5);
	uhmm_dmirror_close(dm);
	free(l.heap);
	free(mem);
}

/* munmap() of held pages: the device lets go and the address is dead. */
TEST(exclusive_munmap)
{
	struct uhmm_dmirror_cmd cmd;
	struct xbuf b;
	uint64_t inv0;
	void *again;

	xbuf_init(&b, NPAGES);
	fill_ints(b.ptr, SZ(NPAGES), 0, 1);
	make_all_exclusive(&b, 0);
	inv0 = inval_count(b.dm, UHMM_NOTIFY_UNMAP);

	ASSERT_EQ(munmap(b.ptr, SZ(NPAGES)), 0);
	ASSERT_GT(inval_count(b.dm, UHMM_NOTIFY_UNMAP), inv0);
	ASSERT_EQ(pool_in_use(0), 0);
	ASSERT_EQ(check_excl(b.dm, b.ptr, NPAGES), 0);		/* mirror empty */

	memset(b.mirror, 0x11, SZ(NPAGES));
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, b.dm, b.ptr, b.mirror, NPAGES, &cmd), -EFAULT);
	ASSERT_EQ(((unsigned char *)b.mirror)[0], 0x11);
	uint64_t old = 0;
	ASSERT_EQ(uhmm_dmirror_atomic_add(b.dm, (uintptr_t)b.ptr, 1, &old), -EFAULT);

	/* New memory at the same address shows none of the old data. */
	again = mmap(b.ptr, SZ(NPAGES), PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (again == b.ptr) {
		ASSERT_EQ(run_cmd(uhmm_dmirror_read, b.dm, again, b.mirror, NPAGES, &cmd), 0);
		ASSERT_EQ(cmd.cpages, NPAGES);
		for (size_t i = 0; i < SZ(NPAGES); i += 512)
			ASSERT_EQ(((unsigned char *)b.mirror)[i] | ((char *)again)[i], 0);
	}
	uhmm_dmirror_close(b.dm);
	ASSERT_EQ(pool_in_use(0), 0);
}

/*
 * The device closes while holding pages (some changed by device atomics):
 * close gives them back, so later CPU reads take no exclusive fault.
 */
TEST(exclusive_close)
{
	struct uhmm_dmirror_cmd cmd;
	struct uhmm_stats s0, s1;
	struct xbuf b;
	uint64_t *w, old = 0;

	xbuf_init(&b, 64);
	fill_ints(b.ptr, SZ(64), 0, 1);
	make_all_exclusive(&b, 0);
	w = b.ptr;
	for (uint64_t pg = 0; pg < 64; pg += 3) {
		uint64_t *p = &w[pg * (PAGE / 8) + 5], before;

		memcpy(&before, (char *)b.mirror + (size_t)((char *)p - (char *)b.ptr), 8);
		ASSERT_EQ(uhmm_dmirror_atomic_add(b.dm, (uintptr_t)p, 1ULL << 40, &old), 0);
		ASSERT_EQ(old, before);
	}
	uhmm_stats_get(&s0);
	uhmm_dmirror_close(b.dm);

	for (uint64_t pg = 0; pg < 64; pg++) {
		uint64_t *p = &w[pg * (PAGE / 8) + 5];
		uint64_t want;

		memcpy(&want, (char *)b.mirror + (size_t)((char *)p - (char *)b.ptr), 8);
		if (pg % 3 == 0)
			want += 1ULL << 40;
		ASSERT_EQ(*p, want);
		memcpy(p, (char *)b.mirror + (size_t)((char *)p - (char *)b.ptr), 8);
	}
	ASSERT_EQ(diff_ints(b.ptr, SZ(64), 0, 1), -1);
	uhmm_stats_get(&s1);
	ASSERT_EQ(s1.cpu_faults_exclusive, s0.cpu_faults_exclusive);
	ASSERT_EQ(pool_in_use(0), 0);

	/* A new device sees the same data. */
	b.dm = open_dev(0);
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, b.dm, b.ptr, b.mirror, 64, &cmd), 0);
	ASSERT_EQ(diff_ints(b.mirror, SZ(64), 0, 1), -1);
	uhmm_dmirror_close(b.dm);
}

/* Bad arguments fail with the documented errno and touch nothing. */
TEST(exclusive_bad_input)
{
	struct uhmm_dmirror_cmd cmd;
	struct uhmm_stats s0, s1;
	struct xbuf b;
	char *none, *hole;

	xbuf_init(&b, 16);
	fill_ints(b.ptr, SZ(16), 0, 1);
	none = map_anon(SZ(4), PROT_NONE, MAP_PRIVATE);
	hole = map_far(SZ(4));
	ASSERT_EQ(munmap(hole, SZ(4)), 0);
	uhmm_stats_get(&s0);

	ASSERT_EQ(run_cmd(uhmm_dmirror_exclusive, b.dm, (char *)b.ptr + 8, b.mirror, 1, &cmd),
		  -EINVAL);
	ASSERT_EQ(run_cmd(uhmm_dmirror_exclusive, b.dm, b.ptr, b.mirror, 0, &cmd), -EINVAL);
	ASSERT_EQ(run_cmd(uhmm_dmirror_exclusive, b.dm, b.ptr, b.mirror,
			 UINT64_MAX / PAGE, &cmd), -EINVAL);
	ASSERT_EQ(run_cmd(uhmm_dmirror_exclusive, NULL, b.ptr, b.mirror, 1, &cmd), -EINVAL);
	ASSERT_EQ(run_cmd(uhmm_dmirror_exclusive, b.dm, none, b.mirror, 4, &cmd), -EFAULT);
	ASSERT_EQ(run_cmd(uhmm_dmirror_exclusive, b.dm, hole, b.mirror, 4, &cmd), -EFAULT);
	ASSERT_EQ(run_cmd(uhmm_dmirror_check_exclusive, b.dm, (char *)b.ptr + 1, NULL, 1, &cmd),
		  -EINVAL);
	ASSERT_EQ(run_cmd(uhmm_dmirror_check_exclusive, b.dm, b.ptr, NULL, 0, &cmd), -EINVAL);

	uint64_t *w = b.ptr, old = 0xABCD;
	ASSERT_EQ(uhmm_dmirror_atomic_add(b.dm, (uintptr_t)b.ptr + 4, 1, &old), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_atomic_add(b.dm, (uintptr_t)b.ptr + 1, 1, &old), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_atomic_add(b.dm, (uintptr_t)none, 1, &old), -EFAULT);
	ASSERT_EQ(uhmm_dmirror_atomic_add(b.dm, (uintptr_t)hole, 1, &old), -EFAULT);
	ASSERT_EQ(old, 0xABCD);

	uhmm_stats_get(&s1);
	ASSERT_EQ(s1.exclusive_grants, s0.exclusive_grants);
	ASSERT_EQ(check_excl(b.dm, b.ptr, 16), 0);
	ASSERT_EQ(diff_ints(b.ptr, SZ(16), 0, 1), -1);
	ASSERT_EQ(w[0], ((uint64_t)1 << 32) | 0);

	/* The public call validates the same way. */
	uint64_t pages[4];
	int errs[4];
	static const int owner;
	ASSERT_EQ(uhmm_make_device_exclusive((uintptr_t)b.ptr + 16, 1, &owner, pages, errs),
		  -EINVAL);
	ASSERT_EQ(uhmm_make_device_exclusive((uintptr_t)b.ptr, 0, &owner, pages, errs),
		  -EINVAL);
	long ret = uhmm_make_device_exclusive((uintptr_t)hole, 4, &owner, pages, errs);
	ASSERT_TRUE(ret == -EFAULT || ret == 0);
	if (ret == 0)
		for (int i = 0; i < 4; i++)
			ASSERT_EQ(errs[i], -EFAULT);
	uhmm_dmirror_close(b.dm);
}

/*
 * uhmm_make_device_exclusive() directly, on anon pages around a two-page
 * hole: per-page results, device access through the frames, explicit
 * release of one part and CPU faults on the other.
 */
TEST(api_make_exclusive)
{
	static const int owner;
	const uint64_t np = 8;
	struct uhmm_stats s0, s1, s2;
	uint64_t pages[8];
	int errs[8];
	char *p;

	init_or_skip();
	p = map_far(SZ(np));
	fill_ints(p, SZ(np), 9, 1);
	ASSERT_EQ(munmap(p + SZ(3), SZ(2)), 0);		/* hole: pages 3 and 4 */

	uhmm_stats_get(&s0);
	memset(pages, 0xAB, sizeof(pages));
	memset(errs, 0x7F, sizeof(errs));
	ASSERT_EQ(uhmm_make_device_exclusive((uintptr_t)p, np, &owner, pages, errs), 6);
	uhmm_stats_get(&s1);
	ASSERT_EQ(s1.exclusive_grants - s0.exclusive_grants, 6);

	for (uint64_t i = 0; i < np; i++) {
		if (i == 3 || i == 4) {
			ASSERT_EQ(pages[i], 0);
			ASSERT_EQ(errs[i], -EFAULT);
			continue;
		}
		ASSERT_EQ(errs[i], 0);
		ASSERT_NE(pages[i], 0);
		int *dev = uhmm_pfn_to_virt(pages[i]);
		ASSERT_NOT_NULL(dev);
		/* The frame holds the page's data; a device atomic through it. */
		ASSERT_EQ(diff_ints(dev, PAGE, 9 + (int)(i * PAGE / sizeof(int)), 1), -1);
		__atomic_fetch_add(&dev[1], 1000, __ATOMIC_SEQ_CST);
	}

	/* Held by owner, by no one else; nothing at the hole. */
	static const int other;
	uint64_t fr = 0;
	ASSERT_TRUE(uhmm_device_exclusive_held((uintptr_t)p + SZ(5), &owner, &fr));
	ASSERT_EQ(fr, pages[5]);
	ASSERT_FALSE(uhmm_device_exclusive_held((uintptr_t)p + SZ(5), &other, &fr));
	ASSERT_FALSE(uhmm_device_exclusive_held((uintptr_t)p + SZ(3), &owner, &fr));

	/* Pages 0-2 released by the device: the CPU finds them mapped. */
	ASSERT_EQ(uhmm_device_exclusive_release((uintptr_t)p, 3, &owner), 0);
	ASSERT_FALSE(uhmm_device_exclusive_held((uintptr_t)p, &owner, &fr));
	for (uint64_t i = 0; i < 3; i++)
		ASSERT_EQ(((int *)(p + SZ(i)))[1], 9 + 1 + (int)(i * PAGE / sizeof(int)) + 1000);
	uhmm_stats_get(&s2);
	ASSERT_EQ(s2.cpu_faults_exclusive, s1.cpu_faults_exclusive);

	/* Pages 5-7 still held: the CPU faults them back, revoking. */
	for (uint64_t i = 5; i < np; i++)
		ASSERT_EQ(((int *)(p + SZ(i)))[1], 9 + 1 + (int)(i * PAGE / sizeof(int)) + 1000);
	uhmm_stats_get(&s1);
	ASSERT_FALSE(uhmm_device_exclusive_held((uintptr_t)p + SZ(7), &owner, &fr));
	ASSERT_GE(s1.cpu_faults_exclusive - s2.cpu_faults_exclusive, 1);
	ASSERT_GE(s1.exclusive_revokes - s0.exclusive_revokes, 3);
	for (uint64_t i = 0; i < np; i++) {
		if (i == 3 || i == 4)
			continue;
		((int *)(p + SZ(i)))[1] -= 1000;
		ASSERT_EQ(diff_ints(p + SZ(i), PAGE, 9 + (int)(i * PAGE / sizeof(int)), 1), -1);
	}
	ASSERT_EQ(munmap(p, SZ(np)), 0);
}

TEST_MAIN()
