/* SPDX-License-Identifier: MIT */
/*
 * test_inject.c - fault injection (UHMM_INJECT): for each injection point a
 * case sets the variable before its first uhmm call (every case is a fresh
 * forked child and the variable is read once, at first use), drives
 * operations that reach the point, proves it fired (uhmm_inject_fired) and
 * that nothing was lost: every operation completed or failed with a clean
 * errno, the CPU reads back every byte written, and every pool drains to
 * in_use == 0 once the mirrors are closed and the memory unmapped.
 * A last case mixes migrations and CPU faults for 5 s under several points
 * at once; a SIGBUS there is tolerated only where the injection made
 * bringing a page back impossible (a failed system page allocation) and the
 * library said why (cpu_faults_sigbus and a line on stderr).
 */
#include "harness.h"
#include "dmtest.h"

#include <pthread.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

#define PAGE		UHMM_PAGE_SIZE
#define WPP		(PAGE / 8)
#define NPAGES		256UL
#define SZ(n)		((n) * PAGE)

static const char *const points[] = { "device_alloc", "sys_alloc", "copy", "uffd_ioctl",
				      "thread" };

/* ---- SIGBUS bookkeeping ---------------------------------------------------- */

static volatile int g_sigbus;

/*
 * uhmm sends SIGBUS with tgkill after logging the reason and wakes the
 * thread: returning re-runs the access, which faults again.  A SIGBUS that
 * keeps coming back (a real hardware one would) ends the case.
 */
static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)si, (void)uc;
	if (__atomic_add_fetch(&g_sigbus, 1, __ATOMIC_RELAXED) > 10000) {
		static const char msg[] = "FAIL test_inject: endless SIGBUS\n";

		if (write(1, msg, sizeof(msg) - 1) < 0)
			_exit(TH_EXIT_FAIL);
		_exit(TH_EXIT_FAIL);
	}
}

static void catch_sigbus(void)
{
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };

	sigemptyset(&sa.sa_mask);
	ASSERT_EQ(sigaction(SIGBUS, &sa, NULL), 0);
}

/* ---- helpers ------------------------------------------------------------- */

static void start(const char *spec)
{
	ASSERT_EQ(setenv("UHMM_INJECT", spec, 1), 0);
	int rc = uhmm_init();

	if (rc == -ENOSYS || rc == -EPERM)
		SKIP("userfaultfd not available (uhmm_init: %s)", strerror(-rc));
	ASSERT_EQ(rc, 0);
	if (!(uhmm_features() & UHMM_FEAT_MOVE))
		SKIP("migration needs UFFDIO_MOVE (Linux 6.8+)");
	catch_sigbus();
}

static uint64_t word_of(const uint64_t *w, uint64_t gen)
{
	return gen << 48 ^ (uint64_t)(uintptr_t)w >> 3 ^ 0x5a5a5a5a5aULL;
}

static uint64_t *map_filled(size_t npages, uint64_t gen)
{
	uint64_t *p = th_mmap_isolated(SZ(npages), PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS);

	ASSERT_MAPPED(p);
	for (size_t i = 0; i < npages * WPP; i++)
		p[i] = word_of(&p[i], gen);
	return p;
}

/* The CPU reads every word back (faulting device pages home as needed). */
static void check_cpu(const uint64_t *p, size_t npages, uint64_t gen)
{
	for (size_t i = 0; i < npages * WPP; i++)
		if (p[i] != word_of(&p[i], gen))
			th_fail(__FILE__, __LINE__, "CPU read: page %zu word %zu: 0x%" PRIx64
				", expected 0x%" PRIx64, i / WPP, i % WPP, p[i],
				word_of(&p[i], gen));
}

/* A device buffer read of process memory at base compared word by word. */
static void check_buf(const uint64_t *buf, const uint64_t *base, size_t npages, uint64_t gen,
		      const char *what)
{
	for (size_t i = 0; i < npages * WPP; i++)
		if (buf[i] != word_of(&base[i], gen))
			th_fail(__FILE__, __LINE__, "%s: page %zu word %zu: 0x%" PRIx64
				", expected 0x%" PRIx64, what, i / WPP, i % WPP, buf[i],
				word_of(&base[i], gen));
}

static struct uhmm_dmirror_cmd cmd_of(const void *addr, size_t npages, void *buf)
{
	return (struct uhmm_dmirror_cmd){
		.addr = (uintptr_t)addr, .ptr = (uintptr_t)buf, .npages = npages,
	};
}

/* Pages of [p, p + npages) a snapshot shows in device memory (either kind). */
static size_t count_device(struct uhmm_dmirror *dm, const void *p, size_t npages)
{
	uint8_t *snap = malloc(npages);
	struct uhmm_dmirror_cmd c = cmd_of(p, npages, snap);
	size_t n = 0;

	ASSERT_NOT_NULL(snap);
	ASSERT_EQ(uhmm_dmirror_snapshot(dm, &c), 0);
	for (size_t i = 0; i < npages; i++)
		n += snap[i] == (UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE) ||
		     (snap[i] & 0xf0) == UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL ||
		     (snap[i] & 0xf0) == UHMM_DMIRROR_PROT_DEV_COHERENT_REMOTE;
	free(snap);
	return n;
}

/*
 * migrate_to_dev under injection: 0, or -ENOENT when some page stayed in
 * system memory (its read-back stops there).  Returns the pages the device
 * holds afterwards.
 */
static size_t migrate_in(struct uhmm_dmirror *dm, const void *p, size_t npages, int *partial)
{
	struct uhmm_dmirror_cmd c = cmd_of(p, npages, NULL);
	int rc = uhmm_dmirror_migrate_to_dev(dm, &c);

	if (rc != 0 && rc != -ENOENT)
		th_fail(__FILE__, __LINE__, "migrate_to_dev: %d (want 0 or -ENOENT)", rc);
	if (rc == 0)
		ASSERT_EQ(c.cpages, npages);
	else
		(*partial)++;
	return count_device(dm, p, npages);
}

/* migrate_to_sys until the device holds none of the range (bounded). */
static void migrate_out(struct uhmm_dmirror *dm, const void *p, size_t npages)
{
	for (int round = 0; round < 200; round++) {
		struct uhmm_dmirror_cmd c = cmd_of(p, npages, NULL);

		ASSERT_EQ(uhmm_dmirror_migrate_to_sys(dm, &c), 0);
		if (count_device(dm, p, npages) == 0)
			return;
	}
	th_fail(__FILE__, __LINE__, "pages still in device memory after 200 migrate_to_sys");
}

static void check_pools(const char *when)
{
	for (unsigned int d = 0; d < UHMM_DMIRROR_NDEVICES; d++) {
		struct uhmm_devmem_stats st;

		ASSERT_EQ(uhmm_dmirror_devmem_stats(d, &st), 0);
		if (st.in_use)
			th_fail(__FILE__, __LINE__, "device %u pool %s: in_use %" PRIu64
				" (allocated %" PRIu64 ", freed %" PRIu64 ")", d, when, st.in_use,
				st.allocated, st.freed);
	}
}

static void print_fired(const char *cas)
{
	printf("inject.%s: fired", cas);
	for (size_t i = 0; i < sizeof(points) / sizeof(points[0]); i++)
		printf(" %s=%ld", points[i], uhmm_inject_fired(points[i]));
	printf(", sigbus=%d\n", g_sigbus);
}

/*
 * Every SIGBUS the process got was one uhmm decided on and counted (signals
 * sent while one is pending merge, so the handler may see fewer).
 */
static void check_sigbus_accounted(void)
{
	struct uhmm_stats st;

	uhmm_stats_get(&st);
	ASSERT_LE((uint64_t)g_sigbus, st.cpu_faults_sigbus);
	if (g_sigbus)
		ASSERT_GT(st.cpu_faults_sigbus, 0);
}

/* ---- one case per point ---------------------------------------------------- */

TEST(device_alloc)
{
	start("device_alloc:50");
	struct uhmm_dmirror *d0 = open_dev(0), *d2 = open_dev(2);
	uint64_t *p = map_filled(NPAGES, 1), *buf = malloc(SZ(NPAGES));
	int partial = 0;
	size_t most = 0;

	ASSERT_NOT_NULL(buf);
	/*
	 * At 50 % per allocation a batch (or a huge page's 4 KiB fallback)
	 * often stops at its first page: go on until some round got pages.
	 */
	for (int round = 0; round < 64 && (round < 8 || !most); round++) {
		size_t n = migrate_in(round & 1 ? d2 : d0, p, NPAGES, &partial);

		most = n > most ? n : most;
	}
	ASSERT_GT(uhmm_inject_fired("device_alloc"), 0);
	ASSERT_GT(partial, 0);
	ASSERT_GT(most, 0);		/* the other half did migrate */
	struct uhmm_devmem_stats ds;

	ASSERT_EQ(uhmm_dmirror_devmem_stats(0, &ds), 0);
	ASSERT_GT(ds.alloc_failures, 0);
	/* Device 0 reads every page (pulling device 2's back where needed). */
	struct uhmm_dmirror_cmd c = cmd_of(p, NPAGES, buf);

	ASSERT_EQ(uhmm_dmirror_read(d0, &c), 0);
	check_buf(buf, p, NPAGES, 1, "device 0 read");
	check_cpu(p, NPAGES, 1);
	ASSERT_EQ(g_sigbus, 0);
	migrate_in(d0, p, NPAGES, &partial);
	uhmm_dmirror_close(d0);
	uhmm_dmirror_close(d2);
	check_pools("after close");
	check_cpu(p, NPAGES, 1);
	ASSERT_EQ(munmap(p, SZ(NPAGES)), 0);
	check_pools("after munmap");
	print_fired("device_alloc");
	free(buf);
}

TEST(sys_alloc)
{
	start("sys_alloc:30");
	struct uhmm_dmirror *d0 = open_dev(0), *d2 = open_dev(2);
	uint64_t *p = map_filled(NPAGES, 2);
	int partial = 0;
	size_t on_dev = 0;

	/* Migration setup parks system pages in system frames. */
	for (int round = 0; round < 4; round++)
		on_dev = migrate_in(d0, p, NPAGES, &partial);
	ASSERT_GT(uhmm_inject_fired("sys_alloc"), 0);
	ASSERT_GT(on_dev, 0);
	/* Exclusive grants need a system frame too: 0 or -EBUSY. */
	struct uhmm_dmirror_cmd c = cmd_of(p + 200 * WPP, 16, NULL);
	int rc = uhmm_dmirror_exclusive(d0, &c);

	if (rc != 0 && rc != -EBUSY)
		th_fail(__FILE__, __LINE__, "exclusive: %d (want 0 or -EBUSY)", rc);
	/* A device command fails with an errno; it never sends the caller SIGBUS. */
	ASSERT_EQ(g_sigbus, 0);
	/* Back to system memory explicitly: each failed page stays for the next round. */
	migrate_out(d0, p, NPAGES);
	check_cpu(p, NPAGES, 2);
	ASSERT_EQ(g_sigbus, 0);
	/* Coherent pages need no allocation to be read by the CPU. */
	for (int round = 0; round < 4; round++)
		migrate_in(d2, p, NPAGES, &partial);
	check_cpu(p, NPAGES, 2);
	ASSERT_EQ(g_sigbus, 0);
	/*
	 * CPU faults on private pages: migrate_to_ram may fail to get a system
	 * page, the thread gets SIGBUS (counted and logged) and retries.
	 */
	for (int round = 0; round < 4; round++)
		migrate_in(d0, p, NPAGES, &partial);
	check_cpu(p, NPAGES, 2);
	check_sigbus_accounted();
	/* Leave pages on both devices: closing must evict them all. */
	migrate_in(d0, p, NPAGES / 2, &partial);
	migrate_in(d2, p + NPAGES / 2 * WPP, NPAGES / 2, &partial);
	uhmm_dmirror_close(d0);
	uhmm_dmirror_close(d2);
	check_pools("after close");
	check_cpu(p, NPAGES, 2);
	ASSERT_EQ(munmap(p, SZ(NPAGES)), 0);
	check_pools("after munmap");
	print_fired("sys_alloc");
}

TEST(copy)
{
	start("copy:30");
	struct uhmm_dmirror *d0 = open_dev(0), *d2 = open_dev(2);
	uint64_t *p = map_filled(NPAGES, 3), *buf = malloc(SZ(NPAGES));
	int partial = 0;
	size_t on_dev = 0;

	ASSERT_NOT_NULL(buf);
	for (int round = 0; round < 4; round++)
		on_dev = migrate_in(round & 1 ? d2 : d0, p, NPAGES, &partial);
	/*
	 * Device 0's own memory is copied by its driver, one call per run of a
	 * chunk (the point fires per call, not per page): go back and forth
	 * until it has fired.
	 */
	for (int round = 0; round < 64 && !uhmm_inject_fired("copy"); round++) {
		migrate_out(d0, p, NPAGES);
		on_dev = migrate_in(d0, p, NPAGES, &partial);
	}
	/* a failed driver copy fails its whole run: try until one went through */
	for (int round = 0; round < 64 && !on_dev; round++)
		on_dev = migrate_in(d0, p, NPAGES, &partial);
	ASSERT_GT(uhmm_inject_fired("copy"), 0);
	ASSERT_GT(partial, 0);
	ASSERT_GT(on_dev, 0);
	/* A failed copy in migrate_to_ram leaves the page; the CPU faults again. */
	for (int round = 0; round < 4; round++)
		migrate_in(d0, p, NPAGES, &partial);
	check_cpu(p, NPAGES, 3);
	ASSERT_EQ(g_sigbus, 0);
	for (int round = 0; round < 4; round++)
		migrate_in(round & 1 ? d2 : d0, p, NPAGES, &partial);
	migrate_out(d2, p, NPAGES);
	migrate_out(d0, p, NPAGES);
	struct uhmm_dmirror_cmd c = cmd_of(p, NPAGES, buf);

	ASSERT_EQ(uhmm_dmirror_read(d2, &c), 0);
	check_buf(buf, p, NPAGES, 3, "device 2 read");
	migrate_in(d0, p, NPAGES / 2, &partial);
	migrate_in(d2, p + NPAGES / 2 * WPP, NPAGES / 2, &partial);
	uhmm_dmirror_close(d0);
	uhmm_dmirror_close(d2);
	check_pools("after close");
	check_cpu(p, NPAGES, 3);
	ASSERT_EQ(g_sigbus, 0);
	ASSERT_EQ(munmap(p, SZ(NPAGES)), 0);
	check_pools("after munmap");
	print_fired("copy");
	free(buf);
}

/* uffd ioctls that report EAGAIN are retried: every operation must succeed in full. */
TEST(uffd_ioctl)
{
	start("uffd_ioctl:50");
	struct uhmm_dmirror *d0 = open_dev(0), *d2 = open_dev(2);
	uint64_t *p = map_filled(NPAGES, 4), *buf = malloc(SZ(NPAGES));

	ASSERT_NOT_NULL(buf);
	for (int round = 0; round < 4; round++) {
		struct uhmm_dmirror *dm = round & 1 ? d2 : d0;
		struct uhmm_dmirror_cmd c = cmd_of(p, NPAGES, buf);

		ASSERT_EQ(uhmm_dmirror_migrate_to_dev(dm, &c), 0);
		ASSERT_EQ(c.cpages, NPAGES);
		check_buf(buf, p, NPAGES, 4, "migrate_to_dev read-back");
		ASSERT_EQ(count_device(dm, p, NPAGES), NPAGES);
		check_cpu(p, NPAGES, 4);	/* private pages fault back */
		if (dm == d2) {		/* coherent pages come back explicitly */
			c = cmd_of(p, NPAGES, NULL);
			ASSERT_EQ(uhmm_dmirror_migrate_to_sys(d2, &c), 0);
			ASSERT_EQ(c.cpages, NPAGES);
		}
	}
	ASSERT_GT(uhmm_inject_fired("uffd_ioctl"), 0);
	/* Exclusive, then the CPU writes (revoking) and the device reads it back. */
	struct uhmm_dmirror_cmd c = cmd_of(p, 16, buf);

	ASSERT_EQ(uhmm_dmirror_exclusive(d0, &c), 0);
	ASSERT_EQ(c.cpages, 16);
	for (size_t i = 0; i < NPAGES * WPP; i++)
		p[i] = word_of(&p[i], 5);
	c = cmd_of(p, NPAGES, buf);
	ASSERT_EQ(uhmm_dmirror_read(d0, &c), 0);
	check_buf(buf, p, NPAGES, 5, "device 0 read after CPU writes");
	c = cmd_of(p, NPAGES, NULL);
	ASSERT_EQ(uhmm_dmirror_migrate_to_dev(d0, &c), 0);
	c = cmd_of(p, NPAGES, NULL);
	ASSERT_EQ(uhmm_dmirror_migrate_to_sys(d0, &c), 0);
	ASSERT_EQ(c.cpages, NPAGES);
	check_cpu(p, NPAGES, 5);
	c = cmd_of(p, NPAGES, NULL);
	ASSERT_EQ(uhmm_dmirror_migrate_to_dev(d0, &c), 0);
	uhmm_dmirror_close(d0);
	uhmm_dmirror_close(d2);
	check_pools("after close");
	check_cpu(p, NPAGES, 5);
	ASSERT_EQ(g_sigbus, 0);
	ASSERT_EQ(munmap(p, SZ(NPAGES)), 0);
	check_pools("after munmap");
	print_fired("uffd_ioctl");
	free(buf);
}

/* The fault-service thread cannot be created: the runtime fails cleanly. */
TEST(thread)
{
	ASSERT_EQ(setenv("UHMM_INJECT", "thread:100", 1), 0);
	int rc = uhmm_init();

	if (rc == -ENOSYS || rc == -EPERM)
		SKIP("userfaultfd not available (uhmm_init: %s)", strerror(-rc));
	ASSERT_EQ(rc, -EAGAIN);
	ASSERT_GT(uhmm_inject_fired("thread"), 0);
	ASSERT_EQ(uhmm_inject_fired("no_such_point"), -1);
	ASSERT_EQ(uhmm_features(), 0);
	struct uhmm_dmirror *dm = NULL;

	ASSERT_LT(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(uhmm_init(), -EAGAIN);
	/* The interposed memory calls still work without a runtime. */
	uint64_t *p = map_filled(16, 6);

	check_cpu(p, 16, 6);
	ASSERT_EQ(madvise(p, SZ(16), MADV_DONTNEED), 0);
	ASSERT_EQ(p[0], 0);
	ASSERT_EQ(mprotect(p, SZ(16), PROT_READ), 0);
	ASSERT_EQ(munmap(p, SZ(16)), 0);
	print_fired("thread");
}

/* ---- mixed run ------------------------------------------------------------- */

#define MIX_RANGES 4
#define MIX_PAGES 64

struct mix {
	uint64_t *r[MIX_RANGES];
	uint64_t gen[MIX_RANGES][MIX_PAGES];	/* generation per page (CPU thread only) */
	int stop;
	uint64_t migrations, migrate_errs, cpu_ops, dev_reads, dev_read_errs;
	int last_dev_err;
};

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void *mix_migrator(void *arg)
{
	struct mix *m = arg;
	struct uhmm_dmirror *dms[3] = { open_dev(0), open_dev(1), open_dev(2) };
	uint64_t s = 0x1234567;

	while (!__atomic_load_n(&m->stop, __ATOMIC_ACQUIRE)) {
		unsigned int d = xs(&s) % 3, ri = xs(&s) % MIX_RANGES;
		unsigned int np = 1 + xs(&s) % MIX_PAGES, p0 = xs(&s) % (MIX_PAGES - np + 1);
		struct uhmm_dmirror_cmd c = cmd_of(m->r[ri] + (size_t)p0 * WPP, np, NULL);
		bool in = xs(&s) % 3 != 0;
		int rc = in ? uhmm_dmirror_migrate_to_dev(dms[d], &c)
			    : uhmm_dmirror_migrate_to_sys(dms[d], &c);

		if (rc != 0 && !(in && rc == -ENOENT))
			th_fail(__FILE__, __LINE__, "migrate_%s on device %u: %d", in ? "to_dev" :
				"to_sys", d, rc);
		m->migrations++;
		m->migrate_errs += rc != 0;
	}
	for (int i = 0; i < 3; i++)
		uhmm_dmirror_close(dms[i]);
	return NULL;
}

/* The CPU writes and checks pages (faulting them back); its mirror reads some. */
static void mix_cpu_step(struct mix *m, struct uhmm_dmirror *dm, uint64_t *buf, uint64_t *s)
{
	unsigned int ri = xs(s) % MIX_RANGES, pg = xs(s) % MIX_PAGES;
	uint64_t *w = m->r[ri] + (size_t)pg * WPP;

	switch (xs(s) % 3) {
	case 0:
		m->gen[ri][pg]++;
		for (size_t i = 0; i < WPP; i++)
			w[i] = word_of(&w[i], m->gen[ri][pg]);
		break;
	case 1:
		check_cpu(w, 1, m->gen[ri][pg]);
		break;
	default: {
		struct uhmm_dmirror_cmd c = cmd_of(w, 1, buf);
		int rc = uhmm_dmirror_read(dm, &c);

		m->dev_reads++;
		if (rc == 0) {
			check_buf(buf, w, 1, m->gen[ri][pg], "device read");
		} else {
			/* Bringing another device's page back can fail under injection. */
			m->dev_read_errs++;
			m->last_dev_err = rc;
			ASSERT_LT(rc, 0);
		}
	}
	}
	m->cpu_ops++;
}

/* stderr goes to a file during the run, so the library's reasons can be read. */
static FILE *capture_stderr(int *saved)
{
	FILE *f = tmpfile();

	ASSERT_NOT_NULL(f);
	fflush(stderr);
	*saved = dup(2);
	ASSERT_GE(*saved, 0);
	ASSERT_GE(dup2(fileno(f), 2), 0);
	return f;
}

static unsigned int restore_stderr(FILE *f, int saved)
{
	char line[512];
	unsigned int reasons = 0, shown = 0;

	fflush(stderr);
	ASSERT_GE(dup2(saved, 2), 0);
	close(saved);
	rewind(f);
	while (fgets(line, sizeof(line), f)) {
		if (strstr(line, "could not be served"))
			reasons++;
		if (shown++ < 3)
			printf("inject.mixed: library said: %s", line);
	}
	fclose(f);
	return reasons;
}

TEST_TIMEOUT(mixed, 120)
{
	int saved;
	FILE *errf;
	static struct mix m;
	pthread_t th;
	uint64_t s = 0xabcdef, *buf = malloc(PAGE);

	start("device_alloc:20,sys_alloc:5,copy:10,uffd_ioctl:10");
	errf = capture_stderr(&saved);
	ASSERT_NOT_NULL(buf);
	for (int i = 0; i < MIX_RANGES; i++)
		m.r[i] = map_filled(MIX_PAGES, 0);
	struct uhmm_dmirror *dm = open_dev(0);

	ASSERT_EQ(pthread_create(&th, NULL, mix_migrator, &m), 0);
	uint64_t t0 = th_now_ns();

	while (th_now_ns() - t0 < 5000000000ULL)
		mix_cpu_step(&m, dm, buf, &s);
	__atomic_store_n(&m.stop, 1, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	for (int i = 0; i < MIX_RANGES; i++)
		for (int pg = 0; pg < MIX_PAGES; pg++)
			check_cpu(m.r[i] + (size_t)pg * WPP, 1, m.gen[i][pg]);
	uhmm_dmirror_close(dm);
	check_pools("after close");
	for (int i = 0; i < MIX_RANGES; i++)
		ASSERT_EQ(munmap(m.r[i], SZ(MIX_PAGES)), 0);
	check_pools("after munmap");
	unsigned int reasons = restore_stderr(errf, saved);
	struct uhmm_stats st;

	uhmm_stats_get(&st);
	printf("inject.mixed: %" PRIu64 " migrations (%" PRIu64 " partial), %" PRIu64
	       " CPU steps, %" PRIu64 " device reads (%" PRIu64 " failed, last %d), "
	       "%" PRIu64 " pages to device, %" PRIu64 " to system, %" PRIu64
	       " CPU faults on private pages, %" PRIu64 " SIGBUS counted, %u reasons logged\n",
	       m.migrations, m.migrate_errs, m.cpu_ops, m.dev_reads, m.dev_read_errs,
	       m.last_dev_err, st.pages_to_device, st.pages_to_system, st.cpu_faults_private,
	       st.cpu_faults_sigbus, reasons);
	print_fired("mixed");
	for (int i = 0; i < 4; i++)
		ASSERT_GT(uhmm_inject_fired(points[i]), 0);
	ASSERT_GT(st.pages_to_device, 0);
	ASSERT_GT(st.cpu_faults_private, 0);
	/* A SIGBUS only where a system page could not be had, and never silently. */
	if (g_sigbus) {
		ASSERT_GT(uhmm_inject_fired("sys_alloc"), 0);
		ASSERT_GE(reasons, (unsigned int)g_sigbus);
	}
	check_sigbus_accounted();
	free(buf);
}

TEST_MAIN()
