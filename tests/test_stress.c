/* SPDX-License-Identifier: MIT */
/*
 * test_stress.c - the deterministic multi-threaded stress test (I1, I3, I4).
 *
 * Actors share NRANGES private anonymous ranges of RPAGES pages and one
 * counters page:
 *   cpu-read     CPU reads of random page runs, checked word by word
 *   cpu-write    CPU writes of random word spans
 *   dev0, dev2   device reads/writes of random page runs through their own
 *                mirror on device 0 (private) and device 2 (coherent), plus
 *                unlocked reads that race the remapper
 *   migrate      migrate_to_dev / migrate_to_sys on devices 0, 1 and 2
 *   exclusive    device atomics and exclusive grants on the counters page,
 *                exclusive grants on data pages (checked)
 *   remap        munmap + mmap(MAP_FIXED_NOREPLACE) at the same address,
 *                mremap away and back, MADV_DONTNEED of a run
 * Each 8-byte word written holds (writer, sequence, range, page, word).
 * Each range has a shadow of the last value written per word.  Locks per
 * range: "map" (the remapper takes it for writing, every checked actor for
 * reading, with trylock: a range being replaced is skipped) and "data"
 * (writers take it for writing around a write and its shadow update,
 * readers for reading, so a read compares exactly with the shadow).
 * Migrations take no data lock: they race the writers, as they should.
 * A watchdog fails the run when an actor makes no progress for 10 s.
 * At the end: a full check of every range by the CPU and by both devices,
 * the counters page sums, every mirror closed and every range unmapped,
 * and every pool back to in_use == 0.
 *
 * UHMM_STRESS_SECONDS (default 20) and UHMM_STRESS_SEED (default fixed)
 * select the run; each actor's random sequence is xorshift seeded from
 * seed + actor id.
 *
 * Under fault injection (UHMM_INJECT set, see src/inject.c) operations may
 * fail, but only cleanly: a device or migration command returns a negative
 * errno, a CPU access gets its data or a SIGBUS whose reason uhmm logged
 * (counted; the access is retried).  A device write that failed may have
 * written part of its pages: every word must then hold either its old or
 * its new value, and the shadow takes what is there.  Nothing may be lost.
 */
#include "harness.h"

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

#define PAGE		UHMM_PAGE_SIZE
#define WPP		(PAGE / 8)		/* words per page */
#define NRANGES		4
#ifdef STRESS_THP
#define RPAGES		512			/* one 2 MiB THP per range */
#else
#define RPAGES		64
#endif
#define RSIZE		(RPAGES * PAGE)
#define MAXRUN		8			/* pages per device/CPU access */
#define WATCHDOG_S	10
#define DEFAULT_SEED	0x5eed5eedULL

/* ---- kinds of operations, counted per actor ---------------------------- */

enum kind {
	K_CPU_READ, K_CPU_WRITE, K_CPU_ATOMIC,
	K_DEV0_READ, K_DEV0_WRITE, K_DEV2_READ, K_DEV2_WRITE, K_DEV_RACE_READ,
	K_MIG_TO_DEV, K_MIG_TO_SYS, K_MIG_PARTIAL, K_MIG_RACE,
	K_ATOMIC, K_EXCL_COUNTERS, K_EXCL_DATA, K_EXCL_BUSY,
	K_UNMAP_REMAP, K_MREMAP, K_DONTNEED, K_SKIP,
	K_EXCL_THP, K_EXCL_THP_BUSY,
	K_NKINDS
};

static const char *const kind_name[K_NKINDS] = {
	"cpu_read", "cpu_write", "cpu_atomic",
	"dev0_read", "dev0_write", "dev2_read", "dev2_write", "dev_race_read",
	"migrate_to_dev", "migrate_to_sys", "migrate_partial", "migrate_race",
	"dev_atomic", "excl_counters", "excl_data", "excl_busy",
	"unmap_remap", "mremap", "dontneed", "skipped_busy_range",
	"excl_on_thp", "excl_on_thp_busy",
};

/* ---- shared state ------------------------------------------------------ */

struct srange {
	pthread_rwlock_t map;		/* write: being replaced */
	pthread_rwlock_t data;		/* write: a write + its shadow update */
	char *addr;			/* fixed for the whole run */
	uint64_t shadow[RPAGES * WPP];	/* protected by data (and map for writing) */
};

struct actor {
	const char *name;
	unsigned int id;		/* writer id, 1.. */
	pthread_t th;
	void *(*fn)(void *);
	uint64_t rng;
	uint64_t progress;		/* atomic: bumped after every operation */
	const char *doing;		/* atomic: what it is doing now */
	uint64_t ops[K_NKINDS];
	uint64_t seq;
	uint64_t add_total;		/* added to counters[0] */
	uint64_t add_own;		/* added to counters[id] */
	uint64_t errs[8];		/* tolerated errors seen in racing operations */
};

enum { E_OK, E_FAULT, E_INVAL, E_NOENT, E_BUSY, E_OTHER };

static struct srange g_r[NRANGES];
static volatile uint64_t *g_counters;	/* one page, never unmapped during the run */
static char *g_tmp;			/* where mremap moves a range to */
static int g_stop;
static uint64_t g_seed;
static uint64_t g_remap_kinds = 7;	/* bits: unmap+mmap, mremap, MADV_DONTNEED */
static bool g_inject;			/* UHMM_INJECT is set: clean failures allowed */
static uint64_t g_sigbus;		/* atomic: SIGBUS seen (injection only) */
static uint64_t g_failed_ops;		/* atomic: commands that failed cleanly */

/* SIGBUS under injection: uhmm logged why; returning retries the access. */
static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)si, (void)uc;
	__atomic_fetch_add(&g_sigbus, 1, __ATOMIC_RELAXED);
	usleep(100);
}

/* A command failed: fatal, unless injection made it fail (counted). */
static bool injected_failure(int rc)
{
	if (!g_inject || rc >= 0)
		return false;
	__atomic_fetch_add(&g_failed_ops, 1, __ATOMIC_RELAXED);
	return true;
}

/*
 * The library's debug trace, present only in a -DUHMM_TRACE build
 * (make TRACE=1): writes are recorded, and a failed check prints the
 * history of the page.
 */
static void (*uhmm__tr)(char k, uint64_t a, uint64_t b, uint64_t len, int64_t c);
static void (*uhmm__tr_dump)(uint64_t addr);

static void trace_hooks(void)
{
	*(void **)&uhmm__tr = dlsym(RTLD_DEFAULT, "uhmm__tr");
	*(void **)&uhmm__tr_dump = dlsym(RTLD_DEFAULT, "uhmm__tr_dump");
}

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rnd(struct actor *a)
{
	uint64_t x = a->rng;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	a->rng = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static unsigned int rnd_below(struct actor *a, unsigned int n)
{
	return (unsigned int)((rnd(a) >> 32) % n);
}

static uint64_t mix_seed(uint64_t s)
{
	s += 0x9E3779B97F4A7C15ULL;
	s = (s ^ (s >> 30)) * 0xBF58476D1CE4E5B9ULL;
	s = (s ^ (s >> 27)) * 0x94D049BB133111EBULL;
	s ^= s >> 31;
	return s ? s : 1;
}

static bool stopping(void)
{
	return __atomic_load_n(&g_stop, __ATOMIC_ACQUIRE);
}

static void doing(struct actor *a, const char *what)
{
	__atomic_store_n(&a->doing, what, __ATOMIC_RELEASE);
}

static void done_op(struct actor *a, enum kind k)
{
	a->ops[k]++;
	__atomic_fetch_add(&a->progress, 1, __ATOMIC_RELEASE);
}

static void count_err(struct actor *a, int rc)
{
	int e = rc == 0 ? E_OK : rc == -EFAULT ? E_FAULT : rc == -EINVAL ? E_INVAL :
		rc == -ENOENT ? E_NOENT : rc == -EBUSY ? E_BUSY : E_OTHER;
	a->errs[e]++;
}

/* Word value: writer (8 bits), sequence (32), range (2), page (6), word (9). */
static uint64_t word_val(unsigned int wid, uint64_t seq, unsigned int ri, unsigned int pg,
			 unsigned int w)
{
	return (uint64_t)wid << 56 | (seq & 0xffffffffULL) << 24 | (uint64_t)ri << 15 |
	       (uint64_t)pg << 9 | w;
}

static void describe(char *buf, size_t n, uint64_t v)
{
	if (!v)
		snprintf(buf, n, "0 (never written)");
	else
		snprintf(buf, n, "0x%016" PRIx64 " (writer %u seq %u range %u page %u word %u)",
			 v, (unsigned)(v >> 56), (unsigned)(v >> 24 & 0xffffffff),
			 (unsigned)(v >> 15 & 3), (unsigned)(v >> 9 & 63), (unsigned)(v & 511));
}

/*
 * Compare what a reader got for pages [p0, p0 + np) of range ri with the
 * shadow (the caller holds ri's data lock for reading).  Fails the run on
 * the first mismatch with the details.
 */
static void verify(struct actor *a, unsigned int ri, unsigned int p0, unsigned int np,
		   const uint64_t *got, const char *how)
{
	const uint64_t *want = &g_r[ri].shadow[(size_t)p0 * WPP];

	if (!memcmp(got, want, (size_t)np * PAGE))
		return;
	for (size_t i = 0; i < (size_t)np * WPP; i++) {
		if (got[i] == want[i])
			continue;
		size_t pg = p0 + i / WPP, bad = 0;

		for (size_t j = (i / WPP) * WPP; j < (i / WPP + 1) * WPP; j++)
			bad += got[j] != want[j];
		char e[128], g[128];

		if (uhmm__tr_dump)
			uhmm__tr_dump((uint64_t)(uintptr_t)g_r[ri].addr + pg * PAGE);
		describe(e, sizeof(e), want[i]);
		describe(g, sizeof(g), got[i]);
		printf("stress: I1 violated: %s by %s, range %u page %zu word %zu: expected %s, "
		       "got %s; %zu of %lu words of the page differ (seed %" PRIu64 ")\n",
		       how, a->name, ri, pg, i % WPP, e, g, bad, (unsigned long)WPP, g_seed);
		th_fail(__FILE__, __LINE__, "lost write or stale data: %s range %u page %zu word %zu",
			how, ri, pg, i % WPP);
	}
}

/* Random run of pages in a range: [*p0, *p0 + return). */
static unsigned int pick_run(struct actor *a, unsigned int max, unsigned int *p0)
{
	unsigned int np = 1 + rnd_below(a, max);

	*p0 = rnd_below(a, RPAGES - np + 1);
	return np;
}

/* Take range ri for a checked operation; false (and a skip) if it is being replaced. */
static bool range_enter(struct actor *a, unsigned int ri)
{
	if (pthread_rwlock_tryrdlock(&g_r[ri].map) == 0)
		return true;
	done_op(a, K_SKIP);
	sched_yield();
	return false;
}

static void range_leave(unsigned int ri)
{
	pthread_rwlock_unlock(&g_r[ri].map);
}

static struct uhmm_dmirror *open_mirror(unsigned int dev)
{
	struct uhmm_dmirror *dm = NULL;

	ASSERT_EQ(uhmm_dmirror_open(dev, &dm), 0);
	ASSERT_NOT_NULL(dm);
	return dm;
}

static void cpu_counter_add(struct actor *a)
{
	doing(a, "cpu atomic on counters page");
	__atomic_fetch_add(&g_counters[0], 1, __ATOMIC_SEQ_CST);
	g_counters[a->id]++;		/* plain read-modify-write of its own word */
	a->add_total++;
	a->add_own++;
	done_op(a, K_CPU_ATOMIC);
}

/* ---- CPU actors ---------------------------------------------------------- */

/*
 * The next step of a CPU actor: one time in 16 a counter atomic (done here,
 * false), else a random run [p0, +np) of range ri, entered (true) unless
 * the range is busy (false).
 */
static bool cpu_pick(struct actor *a, unsigned int *ri, unsigned int *p0, unsigned int *np)
{
	if (rnd_below(a, 16) == 0) {
		cpu_counter_add(a);
		return false;
	}
	*ri = rnd_below(a, NRANGES);
	*np = pick_run(a, MAXRUN, p0);
	return range_enter(a, *ri);
}

static void *cpu_reader(void *arg)
{
	struct actor *a = arg;
	uint64_t *buf = malloc(MAXRUN * PAGE);

	ASSERT_NOT_NULL(buf);
	while (!stopping()) {
		unsigned int ri, p0, np;

		if (!cpu_pick(a, &ri, &p0, &np))
			continue;
		doing(a, "cpu read");
		pthread_rwlock_rdlock(&g_r[ri].data);
		memcpy(buf, g_r[ri].addr + (size_t)p0 * PAGE, (size_t)np * PAGE);
		verify(a, ri, p0, np, buf, "CPU read");
		pthread_rwlock_unlock(&g_r[ri].data);
		range_leave(ri);
		done_op(a, K_CPU_READ);
	}
	free(buf);
	return NULL;
}

static void cpu_write_run(struct actor *a, unsigned int ri, unsigned int p0, unsigned int np)
{
	struct srange *r = &g_r[ri];
	uint64_t seq = ++a->seq;

	for (unsigned int p = p0; p < p0 + np; p++) {
		unsigned int w0 = 0, nw = WPP;

		if (rnd_below(a, 2)) {
			w0 = rnd_below(a, WPP);
			nw = 1 + rnd_below(a, WPP - w0);
		}
		volatile uint64_t *dst = (volatile uint64_t *)(r->addr + (size_t)p * PAGE);
		if (uhmm__tr)
			uhmm__tr('W', (uint64_t)(uintptr_t)dst, seq, PAGE, w0 * 1000 + nw);

		for (unsigned int w = w0; w < w0 + nw; w++) {
			uint64_t v = word_val(a->id, seq, ri, p, w);

			dst[w] = v;
			r->shadow[(size_t)p * WPP + w] = v;
		}
	}
}

static void *cpu_writer(void *arg)
{
	struct actor *a = arg;

	while (!stopping()) {
		unsigned int ri, p0, np;

		if (!cpu_pick(a, &ri, &p0, &np))
			continue;
		doing(a, "cpu write");
		pthread_rwlock_wrlock(&g_r[ri].data);
		cpu_write_run(a, ri, p0, np);
		pthread_rwlock_unlock(&g_r[ri].data);
		range_leave(ri);
		done_op(a, K_CPU_WRITE);
	}
	return NULL;
}

/* ---- device actors ------------------------------------------------------- */

struct dev_actor {
	struct actor a;
	unsigned int dev;
};

static void dev_read(struct actor *a, struct uhmm_dmirror *dm, unsigned int dev, uint64_t *buf)
{
	unsigned int ri = rnd_below(a, NRANGES), p0;
	unsigned int np = pick_run(a, MAXRUN, &p0);
	struct uhmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)g_r[ri].addr + (uint64_t)p0 * PAGE,
		.ptr = (uintptr_t)buf, .npages = np,
	};

	if (!range_enter(a, ri))
		return;
	doing(a, "device read");
	pthread_rwlock_rdlock(&g_r[ri].data);
	int rc = uhmm_dmirror_read(dm, &cmd);

	if ((rc != 0 || cmd.cpages != np) && !injected_failure(rc)) {
		printf("stress: %s: read of range %u pages %u+%u: rc %d cpages %" PRIu64 "\n",
		       a->name, ri, p0, np, rc, cmd.cpages);
		th_fail(__FILE__, __LINE__, "device read of a mapped range failed: %d", rc);
	}
	if (rc == 0)
		verify(a, ri, p0, np, buf, dev == 0 ? "device 0 read" : "device 2 read");
	pthread_rwlock_unlock(&g_r[ri].data);
	range_leave(ri);
	done_op(a, dev == 0 ? K_DEV0_READ : K_DEV2_READ);
}

/*
 * A device write failed (injection): some of its pages may have been
 * written.  Each word must hold its old or its new value; the shadow takes
 * what the CPU now reads.  (Caller holds the range's data lock for writing.)
 */
static void reconcile(struct actor *a, unsigned int ri, unsigned int p0, unsigned int np,
		      const uint64_t *want_new)
{
	uint64_t *now = malloc((size_t)np * PAGE);
	uint64_t *shadow = &g_r[ri].shadow[(size_t)p0 * WPP];

	ASSERT_NOT_NULL(now);
	memcpy(now, g_r[ri].addr + (size_t)p0 * PAGE, (size_t)np * PAGE);
	for (size_t i = 0; i < (size_t)np * WPP; i++) {
		if (now[i] != shadow[i] && now[i] != want_new[i]) {
			char g[128];

			describe(g, sizeof(g), now[i]);
			th_fail(__FILE__, __LINE__, "%s: failed write left range %u page %zu word %zu "
				"neither old nor new: %s", a->name, ri, p0 + i / WPP, i % WPP, g);
		}
		shadow[i] = now[i];
	}
	free(now);
}

static void dev_write(struct actor *a, struct uhmm_dmirror *dm, unsigned int dev, uint64_t *buf)
{
	unsigned int ri = rnd_below(a, NRANGES), p0;
	unsigned int np = pick_run(a, MAXRUN, &p0);
	struct uhmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)g_r[ri].addr + (uint64_t)p0 * PAGE,
		.ptr = (uintptr_t)buf, .npages = np,
	};
	uint64_t seq = ++a->seq;

	for (unsigned int p = 0; p < np; p++)
		for (unsigned int w = 0; w < WPP; w++)
			buf[(size_t)p * WPP + w] = word_val(a->id, seq, ri, p0 + p, w);
	if (!range_enter(a, ri))
		return;
	doing(a, "device write");
	pthread_rwlock_wrlock(&g_r[ri].data);
	int rc = uhmm_dmirror_write(dm, &cmd);

	if ((rc != 0 || cmd.cpages != np) && !injected_failure(rc)) {
		printf("stress: %s: write of range %u pages %u+%u: rc %d cpages %" PRIu64 "\n",
		       a->name, ri, p0, np, rc, cmd.cpages);
		th_fail(__FILE__, __LINE__, "device write of a mapped range failed: %d", rc);
	}
	if (rc == 0)
		memcpy(&g_r[ri].shadow[(size_t)p0 * WPP], buf, (size_t)np * PAGE);
	else
		reconcile(a, ri, p0, np, buf);
	pthread_rwlock_unlock(&g_r[ri].data);
	range_leave(ri);
	done_op(a, dev == 0 ? K_DEV0_WRITE : K_DEV2_WRITE);
}

/* A read that takes no lock: it may race an unmap (0 or -EFAULT, data unchecked). */
static void dev_race_read(struct actor *a, struct uhmm_dmirror *dm, uint64_t *buf)
{
	unsigned int ri = rnd_below(a, NRANGES), p0;
	unsigned int np = pick_run(a, MAXRUN, &p0);
	struct uhmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)g_r[ri].addr + (uint64_t)p0 * PAGE,
		.ptr = (uintptr_t)buf, .npages = np,
	};

	doing(a, "device read racing the remapper");
	int rc = uhmm_dmirror_read(dm, &cmd);

	count_err(a, rc);
	if (rc != 0 && rc != -EFAULT && !injected_failure(rc))
		th_fail(__FILE__, __LINE__, "%s: unlocked read: rc %d (want 0 or -EFAULT)",
			a->name, rc);
	done_op(a, K_DEV_RACE_READ);
}

static void *dev_thread(void *arg)
{
	struct dev_actor *d = arg;
	struct actor *a = &d->a;
	struct uhmm_dmirror *dm = open_mirror(d->dev);
	uint64_t *buf = malloc(MAXRUN * PAGE);

	ASSERT_NOT_NULL(buf);
	while (!stopping()) {
		unsigned int r = rnd_below(a, 20);

		if (r < 10)
			dev_read(a, dm, d->dev, buf);
		else if (r < 18)
			dev_write(a, dm, d->dev, buf);
		else
			dev_race_read(a, dm, buf);
	}
	doing(a, "closing its mirror");
	uhmm_dmirror_close(dm);
	free(buf);
	return NULL;
}

/* ---- migrator ------------------------------------------------------------ */

static const unsigned int mig_devs[3] = { 0, 1, 2 };

static void migrate_once(struct actor *a, struct uhmm_dmirror *dms[3], uint64_t *buf)
{
	unsigned int di = rnd_below(a, 3), ri = rnd_below(a, NRANGES), p0 = 0, np = RPAGES;
	bool to_dev = rnd_below(a, 5) < 3;
	unsigned int mode = rnd_below(a, 10);	/* 0: unlocked, 1-4: map, 5-9: map + data */
	struct uhmm_dmirror_cmd cmd = { .ptr = 0 };

	if (rnd_below(a, 4))
		np = pick_run(a, RPAGES, &p0);
	cmd.addr = (uintptr_t)g_r[ri].addr + (uint64_t)p0 * PAGE;
	cmd.npages = np;
	if (mode > 0 && !range_enter(a, ri))
		return;
	bool check = mode >= 5 && to_dev;

	if (check) {
		pthread_rwlock_rdlock(&g_r[ri].data);
		cmd.ptr = (uintptr_t)buf;
	}
	doing(a, to_dev ? "migrate_to_dev" : "migrate_to_sys");
	int rc = to_dev ? uhmm_dmirror_migrate_to_dev(dms[di], &cmd)
			: uhmm_dmirror_migrate_to_sys(dms[di], &cmd);

	if (mode == 0) {
		count_err(a, rc);
		if (rc != 0 && rc != -EINVAL && rc != -EFAULT && rc != -ENOENT &&
		    !injected_failure(rc))
			th_fail(__FILE__, __LINE__, "unlocked migration on device %u: rc %d",
				mig_devs[di], rc);
		done_op(a, K_MIG_RACE);
		return;
	}
	/* A mapped range: the read-back of migrate_to_dev may miss pages the CPU took back. */
	if (rc != 0 && !(to_dev && rc == -ENOENT) && !injected_failure(rc)) {
		printf("stress: migrate %s device %u range %u pages %u+%u: rc %d\n",
		       to_dev ? "to_dev" : "to_sys", mig_devs[di], ri, p0, np, rc);
		th_fail(__FILE__, __LINE__, "migration of a mapped range failed: %d", rc);
	}
	if (check && rc == 0) {
		ASSERT_EQ(cmd.cpages, np);
		verify(a, ri, p0, np, buf, "migrate_to_dev read-back");
	}
	if (check)
		pthread_rwlock_unlock(&g_r[ri].data);
	range_leave(ri);
	done_op(a, rc ? K_MIG_PARTIAL : to_dev ? K_MIG_TO_DEV : K_MIG_TO_SYS);
}

static void *migrator(void *arg)
{
	struct actor *a = arg;
	struct uhmm_dmirror *dms[3];
	uint64_t *buf = malloc(RSIZE);

	ASSERT_NOT_NULL(buf);
	for (int i = 0; i < 3; i++)
		dms[i] = open_mirror(mig_devs[i]);
	while (!stopping())
		migrate_once(a, dms, buf);
	doing(a, "closing its mirrors");
	for (int i = 0; i < 3; i++)
		uhmm_dmirror_close(dms[i]);
	free(buf);
	return NULL;
}

/* ---- exclusivity taker -------------------------------------------------- */

static void excl_atomic(struct actor *a, struct uhmm_dmirror *dm)
{
	uint64_t old = 0;
	uintptr_t base = (uintptr_t)g_counters;

	doing(a, "device atomic on counters page");
	/* A failed atomic_add did not add (it runs only inside a grant). */
	int rc = uhmm_dmirror_atomic_add(dm, base, 1, &old);

	if (rc && !injected_failure(rc))
		th_fail(__FILE__, __LINE__, "atomic_add on the counters page: %d", rc);
	if (rc == 0)
		a->add_total++;
	rc = uhmm_dmirror_atomic_add(dm, base + 8 * a->id, 1, &old);
	if (rc && !injected_failure(rc))
		th_fail(__FILE__, __LINE__, "atomic_add on own counter: %d", rc);
	if (rc) {
		done_op(a, K_ATOMIC);
		return;
	}
	if (old != a->add_own)
		th_fail(__FILE__, __LINE__, "own counter was %" PRIu64 ", expected %" PRIu64,
			old, a->add_own);
	a->add_own++;
	done_op(a, K_ATOMIC);
}

static void excl_counters(struct actor *a, struct uhmm_dmirror *dm)
{
	struct uhmm_dmirror_cmd cmd = { .addr = (uintptr_t)g_counters, .npages = 1 };

	doing(a, "exclusive on counters page");
	int rc = uhmm_dmirror_exclusive(dm, &cmd);

	if (rc != 0 && rc != -EBUSY && !injected_failure(rc))
		th_fail(__FILE__, __LINE__, "exclusive on the counters page: %d", rc);
	done_op(a, rc ? K_EXCL_BUSY : K_EXCL_COUNTERS);
}

#ifdef STRESS_THP
/* A range is mapped with MADV_HUGEPAGE: its first CPU write makes one THP. */
static void thp_advise(void *addr)
{
	ASSERT_EQ(madvise(addr, RSIZE, MADV_HUGEPAGE), 0);
}

/* Is page addr mapped by a THP (PMD) right now?  The device's snapshot says. */
static bool thp_mapped(struct uhmm_dmirror *dm, uint64_t addr)
{
	uint8_t prot = 0;
	struct uhmm_dmirror_cmd cmd = { .addr = addr, .ptr = (uintptr_t)&prot, .npages = 1 };

	return uhmm_dmirror_snapshot(dm, &cmd) == 0 && (prot & UHMM_DMIRROR_PROT_PMD);
}

static bool thp_available(void)
{
	char buf[128] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");

	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
	}
	return strstr(buf, "[always]") || strstr(buf, "[madvise]");
}

static void thp_first_touch(void);
#else
static void thp_advise(void *addr)
{
	(void)addr;
}
#endif

static void excl_data(struct actor *a, struct uhmm_dmirror *dm, uint64_t *buf)
{
	unsigned int ri = rnd_below(a, NRANGES), p0;
	unsigned int np = pick_run(a, 4, &p0);
	struct uhmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)g_r[ri].addr + (uint64_t)p0 * PAGE,
		.ptr = (uintptr_t)buf, .npages = np,
	};

	if (!range_enter(a, ri))
		return;
	doing(a, "exclusive on data pages");
	pthread_rwlock_rdlock(&g_r[ri].data);
#ifdef STRESS_THP
	/* Its first page THP-mapped now: the grant splits the THP (design.md). */
	bool thp = thp_mapped(dm, cmd.addr);
#endif
	int rc = uhmm_dmirror_exclusive(dm, &cmd);

	if (rc != 0 && rc != -EBUSY && !injected_failure(rc)) {
		printf("stress: exclusive on range %u pages %u+%u: rc %d cpages %" PRIu64 "\n",
		       ri, p0, np, rc, cmd.cpages);
		th_fail(__FILE__, __LINE__, "exclusive on mapped data pages: %d", rc);
	}
	if (rc == 0)
		verify(a, ri, p0, np, buf, "exclusive grant read-back");
	pthread_rwlock_unlock(&g_r[ri].data);
	range_leave(ri);
#ifdef STRESS_THP
	if (thp)
		a->ops[rc ? K_EXCL_THP_BUSY : K_EXCL_THP]++;
#endif
	done_op(a, rc ? K_EXCL_BUSY : K_EXCL_DATA);
}

static void *excl_taker(void *arg)
{
	struct actor *a = arg;
	struct uhmm_dmirror *dms[2] = { open_mirror(0), open_mirror(2) };
	uint64_t *buf = malloc(4 * PAGE);

	ASSERT_NOT_NULL(buf);
	while (!stopping()) {
		struct uhmm_dmirror *dm = dms[rnd_below(a, 2)];
		unsigned int r = rnd_below(a, 10);

		if (r < 5)
			excl_atomic(a, dm);
		else if (r < 7)
			excl_counters(a, dm);
		else
			excl_data(a, dm, buf);
	}
	doing(a, "closing its mirrors");
	uhmm_dmirror_close(dms[0]);
	uhmm_dmirror_close(dms[1]);
	free(buf);
	return NULL;
}

/* ---- remapper ------------------------------------------------------------ */

static void remap_fresh(struct srange *r)
{
	ASSERT_EQ(munmap(r->addr, RSIZE), 0);
	void *p = mmap(r->addr, RSIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

	if (p != r->addr)
		th_fail(__FILE__, __LINE__, "mmap at %p after munmap: got %p (%s)",
			(void *)r->addr, p, strerror(errno));
	thp_advise(r->addr);
	memset(r->shadow, 0, sizeof(r->shadow));
}

static void remap_away_and_back(struct srange *r)
{
	void *p = mremap(r->addr, RSIZE, RSIZE, MREMAP_MAYMOVE | MREMAP_FIXED, g_tmp);

	if (p != g_tmp)
		th_fail(__FILE__, __LINE__, "mremap away: %s", strerror(errno));
	p = mremap(g_tmp, RSIZE, RSIZE, MREMAP_MAYMOVE | MREMAP_FIXED, r->addr);
	if (p != r->addr)
		th_fail(__FILE__, __LINE__, "mremap back: %s", strerror(errno));
	/* The data moved with the mapping: the shadow stands. */
}

static void dontneed_run(struct actor *a, struct srange *r)
{
	unsigned int p0, np = pick_run(a, RPAGES / 4, &p0);

	ASSERT_EQ(madvise(r->addr + (size_t)p0 * PAGE, (size_t)np * PAGE, MADV_DONTNEED), 0);
	memset(&r->shadow[(size_t)p0 * WPP], 0, (size_t)np * PAGE);
}

static void *remapper(void *arg)
{
	struct actor *a = arg;

	while (!stopping()) {
		unsigned int ri = rnd_below(a, NRANGES), what = rnd_below(a, 10);
		struct srange *r = &g_r[ri];
		enum kind k = what < 4 ? K_UNMAP_REMAP : what < 8 ? K_MREMAP : K_DONTNEED;

		if (!(g_remap_kinds >> (k - K_UNMAP_REMAP) & 1)) {
			usleep(1000);
			continue;
		}

		doing(a, "waiting for a range");
		pthread_rwlock_wrlock(&r->map);
		doing(a, kind_name[k]);
		if (k == K_UNMAP_REMAP)
			remap_fresh(r);
		else if (k == K_MREMAP)
			remap_away_and_back(r);
		else
			dontneed_run(a, r);
		pthread_rwlock_unlock(&r->map);
		done_op(a, k);
		doing(a, "sleeping");
		usleep(1000 + rnd_below(a, 4000));
	}
	return NULL;
}

/* ---- watchdog ------------------------------------------------------------ */

struct watch {
	struct actor **actors;
	unsigned int n;
	uint64_t mask;			/* the actors that run */
	int stop;
};

static void *watchdog(void *arg)
{
	struct watch *w = arg;
	uint64_t last[16] = { 0 }, since[16];
	uint64_t now = th_now_ns();

	for (unsigned int i = 0; i < w->n; i++)
		since[i] = now;
	while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
		usleep(100 * 1000);
		now = th_now_ns();
		for (unsigned int i = 0; i < w->n; i++) {
			uint64_t p = __atomic_load_n(&w->actors[i]->progress, __ATOMIC_ACQUIRE);

			if (!(w->mask >> i & 1))
				continue;
			if (p != last[i]) {
				last[i] = p;
				since[i] = now;
				continue;
			}
			if (now - since[i] < WATCHDOG_S * 1000000000ULL)
				continue;
			for (unsigned int j = 0; j < w->n; j++)
				printf("stress: actor %-10s progress %" PRIu64 " doing: %s\n",
				       w->actors[j]->name, w->actors[j]->progress,
				       __atomic_load_n(&w->actors[j]->doing, __ATOMIC_ACQUIRE));
			if (getenv("UHMM_STRESS_HANG_WAIT")) {
				/* Debugging aid: time to attach a debugger to the stuck process. */
				printf("stress: stall in pid %d; waiting 120 s\n", (int)getpid());
				fflush(stdout);
				for (int t = 0; t < 1200; t++) {
					/* With TRACE=1: write a hex address to this file for its history. */
					FILE *f = fopen("/tmp/uhmm_stress_dump", "r");
					unsigned long long at = 0;

					if (f && fscanf(f, "%llx", &at) == 1 && uhmm__tr_dump)
						uhmm__tr_dump(at);
					if (f) {
						fclose(f);
						unlink("/tmp/uhmm_stress_dump");
					}
					usleep(100000);
				}
			}
			th_fail(__FILE__, __LINE__, "I3: actor %s made no progress for %d s (%s), seed %"
				PRIu64, w->actors[i]->name, WATCHDOG_S,
				__atomic_load_n(&w->actors[i]->doing, __ATOMIC_ACQUIRE), g_seed);
		}
	}
	return NULL;
}

/* ---- setup and final checks --------------------------------------------- */

static void setup_ranges(void)
{
	pthread_rwlockattr_t at;

	pthread_rwlockattr_init(&at);
	pthread_rwlockattr_setkind_np(&at, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	for (int i = 0; i < NRANGES; i++) {
		g_r[i].addr = th_mmap_isolated(RSIZE, PROT_READ | PROT_WRITE,
					       MAP_PRIVATE | MAP_ANONYMOUS);
		ASSERT_MAPPED(g_r[i].addr);
		thp_advise(g_r[i].addr);
		pthread_rwlock_init(&g_r[i].map, &at);
		pthread_rwlock_init(&g_r[i].data, &at);
	}
	pthread_rwlockattr_destroy(&at);
	/* A place to mremap to: reserved once, then left as a hole. */
	g_tmp = th_mmap_isolated(RSIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
	ASSERT_MAPPED(g_tmp);
	ASSERT_EQ(munmap(g_tmp, RSIZE), 0);
	g_counters = th_mmap_isolated(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	ASSERT_MAPPED((void *)g_counters);
}

#ifdef STRESS_THP
/*
 * Each range's first write (a zero, what the shadow holds) makes its THP;
 * the run SKIPs if the kernel could not give one to any range.
 */
static void thp_first_touch(void)
{
	struct uhmm_dmirror *dm = open_mirror(0);
	int thps = 0;

	for (int i = 0; i < NRANGES; i++) {
		*(volatile uint64_t *)g_r[i].addr = 0;
		thps += thp_mapped(dm, (uint64_t)(uintptr_t)g_r[i].addr);
	}
	uhmm_dmirror_close(dm);
	printf("stress: %d of %d ranges THP-mapped at the start\n", thps, NRANGES);
	if (!thps)
		SKIP("no transparent huge page could be allocated for the ranges");
}
#endif

/* Every word of every range, by the CPU and by both devices. */
static void final_check(struct actor *a)
{
	uint64_t *buf = malloc(RSIZE);
	struct uhmm_dmirror *dm[2] = { open_mirror(0), open_mirror(2) };

	ASSERT_NOT_NULL(buf);
	for (unsigned int ri = 0; ri < NRANGES; ri++) {
		memcpy(buf, g_r[ri].addr, RSIZE);
		verify(a, ri, 0, RPAGES, buf, "final CPU read");
		for (int d = 0; d < 2; d++) {
			struct uhmm_dmirror_cmd cmd = {
				.addr = (uintptr_t)g_r[ri].addr, .ptr = (uintptr_t)buf,
				.npages = RPAGES,
			};

			int rc = uhmm_dmirror_read(dm[d], &cmd);

			for (int t = 0; t < 1000 && injected_failure(rc); t++)
				rc = uhmm_dmirror_read(dm[d], &cmd);
			ASSERT_EQ(rc, 0);
			ASSERT_EQ(cmd.cpages, RPAGES);
			verify(a, ri, 0, RPAGES, buf, d ? "final device 2 read" : "final device 0 read");
		}
	}
	uhmm_dmirror_close(dm[0]);
	uhmm_dmirror_close(dm[1]);
	free(buf);
}

static void check_pools(const char *when)
{
	for (unsigned int d = 0; d < UHMM_DMIRROR_NDEVICES; d++) {
		struct uhmm_devmem_stats st;

		ASSERT_EQ(uhmm_dmirror_devmem_stats(d, &st), 0);
		if (st.in_use != 0)
			printf("stress: device %u pool %s: in_use %" PRIu64 " allocated %" PRIu64
			       " freed %" PRIu64 "\n", d, when, st.in_use, st.allocated, st.freed);
		ASSERT_EQ(st.in_use, 0);
	}
}

static void report(struct actor **actors, unsigned int n, double secs, bool all)
{
	uint64_t tot[K_NKINDS] = { 0 }, errs[8] = { 0 };
	struct uhmm_stats st;

	for (unsigned int i = 0; i < n; i++) {
		for (int k = 0; k < K_NKINDS; k++)
			tot[k] += actors[i]->ops[k];
		for (int e = 0; e < 8; e++)
			errs[e] += actors[i]->errs[e];
	}
	printf("stress: %.1f s, seed %" PRIu64 ", operations per second:\n", secs, g_seed);
	for (int k = 0; k < K_NKINDS; k++)
		printf("stress:   %-20s %10.1f/s  (%" PRIu64 ")\n", kind_name[k],
		       (double)tot[k] / secs, tot[k]);
	printf("stress: racing operations: ok %" PRIu64 ", -EFAULT %" PRIu64 ", -EINVAL %" PRIu64
	       ", -ENOENT %" PRIu64 "\n", errs[E_OK], errs[E_FAULT], errs[E_INVAL], errs[E_NOENT]);
	uhmm_stats_get(&st);
	uint64_t inval = 0;

	for (int i = 0; i < 8; i++)
		inval += st.invalidations[i];
	printf("stress: pages to device %" PRIu64 ", to system %" PRIu64 ", cpu faults %" PRIu64
	       " (private %" PRIu64 ", exclusive %" PRIu64 ", sigbus %" PRIu64 ")\n",
	       st.pages_to_device, st.pages_to_system, st.cpu_faults, st.cpu_faults_private,
	       st.cpu_faults_exclusive, st.cpu_faults_sigbus);
	printf("stress: exclusive grants %" PRIu64 ", revocations %" PRIu64 ", invalidations %"
	       PRIu64 " (unmap %" PRIu64 ", clear %" PRIu64 ", migrate %" PRIu64 ", exclusive %"
	       PRIu64 "), evictions %" PRIu64 "\n", st.exclusive_grants, st.exclusive_revokes,
	       inval, st.invalidations[UHMM_NOTIFY_UNMAP], st.invalidations[UHMM_NOTIFY_CLEAR],
	       st.invalidations[UHMM_NOTIFY_MIGRATE], st.invalidations[UHMM_NOTIFY_EXCLUSIVE],
	       st.evictions);
	if (g_inject) {
		/* SIGBUS only where uhmm logged why (its counter), never silently. */
		printf("stress: fault injection (%s): %" PRIu64 " commands failed cleanly, %"
		       PRIu64 " SIGBUS (counted by uhmm: %" PRIu64 "); fired:", getenv("UHMM_INJECT"),
		       g_failed_ops, g_sigbus, st.cpu_faults_sigbus);
		static const char *const pts[] = { "device_alloc", "sys_alloc", "copy",
						   "uffd_ioctl", "thread" };
		for (int i = 0; i < 5; i++)
			printf(" %s %ld", pts[i], uhmm_inject_fired(pts[i]));
		printf("\n");
		ASSERT_LE(g_sigbus, st.cpu_faults_sigbus);
	} else {
		ASSERT_EQ(st.cpu_faults_sigbus, 0);
	}
	if (!all)
		return;
	/* Every actor did real work, or the run proves nothing. */
	ASSERT_GT(tot[K_CPU_READ], 0);
	ASSERT_GT(tot[K_CPU_WRITE], 0);
	ASSERT_GT(tot[K_DEV0_READ] + tot[K_DEV0_WRITE], 0);
	ASSERT_GT(tot[K_DEV2_READ] + tot[K_DEV2_WRITE], 0);
	ASSERT_GT(tot[K_MIG_TO_DEV] + tot[K_MIG_PARTIAL], 0);
	ASSERT_GT(tot[K_ATOMIC], 0);
	ASSERT_GT(tot[K_UNMAP_REMAP] + tot[K_MREMAP], 0);
	ASSERT_GT(st.pages_to_device, 0);
	ASSERT_GT(st.exclusive_revokes, 0);
}

static void check_counters(struct actor **actors, unsigned int n)
{
	uint64_t total = 0;

	for (unsigned int i = 0; i < n; i++) {
		total += actors[i]->add_total;
		if (g_counters[actors[i]->id] != actors[i]->add_own)
			th_fail(__FILE__, __LINE__, "counter of %s: %" PRIu64 ", expected %" PRIu64,
				actors[i]->name, g_counters[actors[i]->id], actors[i]->add_own);
	}
	ASSERT_EQ(g_counters[0], total);
	printf("stress: counters page: %" PRIu64 " increments, none lost\n", total);
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *s = getenv(name);

	return s && *s ? strtoull(s, NULL, 0) : dflt;
}

/* 20 s of work and the final checks; make stress adds its run time. */
TEST_TIMEOUT(stress, 90)
{
	uint64_t secs = env_u64("UHMM_STRESS_SECONDS", 20);
	/* Debugging aid: a bit mask of the actors to run (bit i: actors[i]). */
	uint64_t mask = env_u64("UHMM_STRESS_ACTORS", ~0ULL);

	g_remap_kinds = env_u64("UHMM_STRESS_REMAP", 7);	/* likewise, for the remapper */
	int rc = uhmm_init();

	if (rc == -ENOSYS || rc == -EPERM)
		SKIP("userfaultfd not available (uhmm_init: %s)", strerror(-rc));
	ASSERT_EQ(rc, 0);
	g_seed = env_u64("UHMM_STRESS_SEED", DEFAULT_SEED);
	trace_hooks();
	g_inject = getenv("UHMM_INJECT") && *getenv("UHMM_INJECT");
	if (g_inject) {
		struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };

		sigaction(SIGBUS, &sa, NULL);
	}
	printf("stress: %" PRIu64 " s, seed %" PRIu64 " (set UHMM_STRESS_SEED to repeat)\n",
	       secs, g_seed);
#ifdef STRESS_THP
	if (!thp_available())
		SKIP("transparent huge pages are off (/sys/kernel/mm/transparent_hugepage/enabled)");
#endif
	setup_ranges();
#ifdef STRESS_THP
	thp_first_touch();
#endif

	static struct actor cr = { .name = "cpu-read", .fn = cpu_reader };
	static struct actor cw = { .name = "cpu-write", .fn = cpu_writer };
	static struct dev_actor d0 = { .a = { .name = "dev0", .fn = dev_thread }, .dev = 0 };
	static struct dev_actor d2 = { .a = { .name = "dev2", .fn = dev_thread }, .dev = 2 };
	static struct actor mg = { .name = "migrate", .fn = migrator };
	static struct actor ex = { .name = "exclusive", .fn = excl_taker };
	static struct actor rm = { .name = "remap", .fn = remapper };
	struct actor *actors[] = { &cr, &cw, &d0.a, &d2.a, &mg, &ex, &rm };
	unsigned int n = sizeof(actors) / sizeof(actors[0]);
	struct watch w = { .actors = actors, .n = n, .mask = mask };
	pthread_t wd;

	for (unsigned int i = 0; i < n; i++) {
		actors[i]->id = i + 1;
		actors[i]->rng = mix_seed(g_seed + i + 1);
		actors[i]->doing = "starting";
	}
	uint64_t t0 = th_now_ns();

	ASSERT_EQ(pthread_create(&wd, NULL, watchdog, &w), 0);
	for (unsigned int i = 0; i < n; i++) {
		void *arg = actors[i];

		if (mask >> i & 1)
			ASSERT_EQ(pthread_create(&actors[i]->th, NULL, actors[i]->fn, arg), 0);
	}
	while (th_now_ns() - t0 < secs * 1000000000ULL)
		usleep(50 * 1000);
	__atomic_store_n(&g_stop, 1, __ATOMIC_RELEASE);
	for (unsigned int i = 0; i < n; i++)
		if (mask >> i & 1)
			pthread_join(actors[i]->th, NULL);
	double elapsed = (double)(th_now_ns() - t0) / 1e9;

	__atomic_store_n(&w.stop, 1, __ATOMIC_RELEASE);
	pthread_join(wd, NULL);

	static struct actor fin = { .name = "final" };

	final_check(&fin);
	check_counters(actors, n);
	report(actors, n, elapsed, mask == ~0ULL && g_remap_kinds == 7);
#ifdef STRESS_THP
	/* The point of this variant: grants on THP-backed pages did happen. */
	if ((mask >> 5 & 1) && ex.ops[K_EXCL_THP] == 0)
		th_fail(__FILE__, __LINE__, "no exclusive grant hit a THP-mapped page (%" PRIu64
			" tried on THPs)", ex.ops[K_EXCL_THP_BUSY]);
#endif
	/* Every mirror is closed: nothing of the process stays in device memory. */
	check_pools("after every mirror closed");
	for (int i = 0; i < NRANGES; i++)
		ASSERT_EQ(munmap(g_r[i].addr, RSIZE), 0);
	ASSERT_EQ(munmap((void *)g_counters, PAGE), 0);
	check_pools("after every range unmapped");
}

TEST_MAIN()
