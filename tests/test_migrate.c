/* SPDX-License-Identifier: MIT */
/*
 * test_migrate.c - conformance tests for migration between system memory and
 * device memory through the reference device (uhmm_dmirror_*): migrate_to_dev
 * and migrate_to_sys, CPU faults on device-private pages, device-coherent
 * pages that stay CPU mapped, eviction (release), snapshots of migrated pages,
 * fork, mremap/munmap of migrated ranges, THP ranges, allocation failures,
 * kernel-mode access (read(2)/write(2)) and the reuse of device pages (I5).
 *
 * The semantics are those of the kernel's selftest hmm-tests.c against
 * lib/test_hmm.c.  Each case runs twice: "private" on devices 0 and 1
 * (device-private pools) and "coherent" on devices 2 and 3.  Every case checks
 * the data and the counters: cmd.cpages, the process counters of
 * uhmm_stats_get() and the pool counters (in_use back to 0 at the end: I4).
 */
#include "harness.h"
#include "dmtest.h"
#include <fcntl.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE	25
#endif

#define PS		UHMM_PAGE_SIZE
#define NPAGES		1024UL			/* 4 MiB buffers, as hmm-tests */
#define PMD_SIZE	(2UL << 20)
#define PMD_PAGES	(PMD_SIZE / PS)
#define NROUNDS		10
#define NINTS(size)	((size) / sizeof(int))
#define RW		(PROT_READ | PROT_WRITE)
#define PRIV_ANON	(MAP_PRIVATE | MAP_ANONYMOUS)

#define SNAP_DEV_PRIVATE	(UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE)
#define SNAP_DEV_COHERENT	(UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL | UHMM_DMIRROR_PROT_WRITE)


/* ------------------------------------------------------------------------ */
/* helpers                                                                   */
/* ------------------------------------------------------------------------ */

static int to_dev(struct uhmm_dmirror *dm, const void *addr, void *mirror, uint64_t npages,
		  struct uhmm_dmirror_cmd *cmd)
{
	return run_cmd(uhmm_dmirror_migrate_to_dev, dm, addr, mirror, npages, cmd);
}

static int to_sys(struct uhmm_dmirror *dm, const void *addr, void *mirror, uint64_t npages,
		  struct uhmm_dmirror_cmd *cmd)
{
	return run_cmd(uhmm_dmirror_migrate_to_sys, dm, addr, mirror, npages, cmd);
}

static void *map_private_area(size_t len, int prot, int flags)
{
	return th_mmap_isolated(len, prot, flags);
}

static void snap_expect(const char *file, int line, struct uhmm_dmirror *dm, const void *addr,
			uint64_t npages, unsigned int want, unsigned int ignore)
{
	unsigned char *m = xmalloc(npages);
	struct uhmm_dmirror_cmd cmd;

	memset(m, 0xAA, npages);
	if (run_cmd(uhmm_dmirror_snapshot, dm, addr, m, npages, &cmd))
		th_fail(file, line, "snapshot failed");
	if (cmd.cpages != npages)
		th_fail(file, line, "snapshot cpages %" PRIu64 ", want %" PRIu64, cmd.cpages,
			npages);
	for (uint64_t i = 0; i < npages; i++)
		if ((m[i] & ~ignore) != want)
			th_fail(file, line, "page %" PRIu64 ": snapshot 0x%02x, want 0x%02x", i,
				m[i], want);
	free(m);
}

/* Every page of [addr, +npages) snapshots as want (ignoring the PMD bit). */
#define EXPECT_SNAP(dm, addr, npages, want) \
	snap_expect(__FILE__, __LINE__, dm, addr, npages, want, UHMM_DMIRROR_PROT_PMD)

static unsigned int dev_snap(unsigned int dev)
{
	return is_coherent(dev) ? SNAP_DEV_COHERENT : SNAP_DEV_PRIVATE;
}

/*
 * Migrate r to the device and check cpages, the device's copy and that moved
 * pages went to device memory (pages already in this device's memory stay).
 */
static void migrate_moved(struct uhmm_dmirror *dm, struct region *r, void *mirror, int base,
			  uint64_t moved)
{
	struct uhmm_stats s0 = stats_now(), s1;
	struct uhmm_dmirror_cmd cmd;

	memset(mirror, 0xFF, r->size);
	ASSERT_EQ(to_dev(dm, r->ptr, mirror, r->npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, r->npages);
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, moved);
	EXPECT_INTS(mirror, r->size, base, 1);
}

/* Migrate r, every page of which is in system memory. */
static void migrate_ok(struct uhmm_dmirror *dm, struct region *r, void *mirror, int base)
{
	migrate_moved(dm, r, mirror, base, r->npages);
}

/*
 * The CPU reads r back (pattern base): device-private pages fault back and
 * leave the pool; device-coherent pages are read in place.  dev_pages is how
 * many pages of r sit in dev's private memory before the read.
 */
static void cpu_read_back(unsigned int dev, struct region *r, int base, uint64_t dev_pages)
{
	struct uhmm_stats s0 = stats_now(), s1;
	uint64_t in_use = pool(dev).in_use;

	EXPECT_INTS(r->ptr, r->size, base, 1);
	s1 = stats_now();
	if (is_coherent(dev)) {
		ASSERT_EQ(s1.cpu_faults_private - s0.cpu_faults_private, 0);
		ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, 0);
		ASSERT_EQ(pool(dev).in_use, in_use);
		return;
	}
	if (dev_pages) {
		ASSERT_GT(s1.cpu_faults_private - s0.cpu_faults_private, 0);
		ASSERT_LE(s1.cpu_faults_private - s0.cpu_faults_private, dev_pages);
	}
	ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, dev_pages);
	ASSERT_EQ(pool(dev).in_use, in_use - dev_pages);
}

#define VARIANTS(name)						\
	TEST(name##_private) { name(0, 1); }			\
	TEST(name##_coherent) { name(2, 3); }

/* ------------------------------------------------------------------------ */
/* migrate, migrate_fault, migrate_release, migrate_shared, migrate_multiple */
/* ------------------------------------------------------------------------ */

/* CPU-written pages migrate to the device; the CPU reads them back. */
static void migrate(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	int *mirror = xmalloc(NPAGES * PS);
	struct region r;

	(void)dev2;
	region_map(&r, NPAGES, RW, PRIV_ANON, 0);
	fill_ints(r.ptr, r.size, 0, 1);
	migrate_ok(dm, &r, mirror, 0);
	ASSERT_EQ(pool(dev).in_use, r.npages);
	EXPECT_SNAP(dm, r.ptr, r.npages, dev_snap(dev));

	cpu_read_back(dev, &r, 0, is_coherent(dev) ? 0 : r.npages);
	/* private pages are plain system pages again; coherent ones stay */
	EXPECT_SNAP(dm, r.ptr, r.npages,
		    is_coherent(dev) ? SNAP_DEV_COHERENT : UHMM_DMIRROR_PROT_WRITE);
	free(mirror);
	finish(dm, dev, &r);
}
VARIANTS(migrate)

/* Migrate, fault half back, migrate the mix again. */
static void migrate_fault(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	int *mirror = xmalloc(NPAGES * PS);
	struct uhmm_stats s0, s1, s2;
	struct uhmm_dmirror_cmd cmd;
	struct region r;
	uint64_t back;

	(void)dev2;
	region_map(&r, NPAGES, RW, PRIV_ANON, 0);
	fill_ints(r.ptr, r.size, 0, 1);
	migrate_ok(dm, &r, mirror, 0);

	s0 = stats_now();
	EXPECT_INTS(r.ptr, r.size / 2, 0, 1);
	s1 = stats_now();
	back = s1.pages_to_system - s0.pages_to_system;
	if (is_coherent(dev)) {
		ASSERT_EQ(back, 0);
	} else {
		ASSERT_GE(back, r.npages / 2);
		ASSERT_LE(back, r.npages);
	}
	ASSERT_EQ(pool(dev).in_use, r.npages - back);

	/* Only the pages now in system memory move; cpages counts them all. */
	memset(mirror, 0xFF, r.size);
	ASSERT_EQ(to_dev(dm, r.ptr, mirror, r.npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, r.npages);
	s2 = stats_now();
	ASSERT_EQ(s2.pages_to_device - s1.pages_to_device, back);
	ASSERT_EQ(pool(dev).in_use, r.npages);
	EXPECT_INTS(mirror, r.size, 0, 1);
	EXPECT_SNAP(dm, r.ptr, r.npages, dev_snap(dev));

	cpu_read_back(dev, &r, 0, is_coherent(dev) ? 0 : r.npages);
	free(mirror);
	finish(dm, dev, &r);
}
VARIANTS(migrate_fault)

/* Migrate, then evict the whole device: pages are back in RAM, intact. */
static void migrate_release(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	int *mirror = xmalloc(NPAGES * PS);
	struct uhmm_stats s0, s1, s2;
	struct region r;

	(void)dev2;
	region_map(&r, NPAGES, RW, PRIV_ANON, 0);
	fill_ints(r.ptr, r.size, 0, 1);
	migrate_ok(dm, &r, mirror, 0);
	ASSERT_EQ(pool(dev).in_use, r.npages);

	s0 = stats_now();
	ASSERT_EQ(uhmm_dmirror_release(dm), 0);
	s1 = stats_now();
	ASSERT_EQ(pool(dev).in_use, 0);
	ASSERT_EQ(s1.evictions - s0.evictions, r.npages);
	EXPECT_SNAP(dm, r.ptr, r.npages, UHMM_DMIRROR_PROT_WRITE);

	EXPECT_INTS(r.ptr, r.size, 0, 1);
	s2 = stats_now();
	ASSERT_EQ(s2.cpu_faults_private - s1.cpu_faults_private, 0);
	ASSERT_EQ(s2.pages_to_system - s1.pages_to_system, 0);
	free(mirror);
	finish(dm, dev, &r);
}
VARIANTS(migrate_release)

/* Shared anonymous memory cannot migrate. */
static void migrate_shared(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	int *mirror = xmalloc(NPAGES * PS);
	struct uhmm_stats s0, s1;
	struct region r;

	(void)dev2;
	region_map(&r, NPAGES, RW, MAP_SHARED | MAP_ANONYMOUS, 0);
	fill_ints(r.ptr, r.size, 0, 1);
	s0 = stats_now();
	ASSERT_EQ(to_dev(dm, r.ptr, mirror, r.npages, NULL), -ENOENT);
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, 0);
	ASSERT_EQ(pool(dev).in_use, 0);
	EXPECT_INTS(r.ptr, r.size, 0, 1);
	free(mirror);
	finish(dm, dev, &r);
}
VARIANTS(migrate_shared)

/* Ten rounds there and back: CPU faults (private) or migrate_to_sys. */
static void migrate_multiple(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	int *mirror = xmalloc(NPAGES * PS);
	struct uhmm_stats s0 = stats_now(), s1;
	struct uhmm_dmirror_cmd cmd;
	struct region r;

	(void)dev2;
	for (int c = 0; c < NROUNDS; c++) {
		region_map(&r, NPAGES, RW, PRIV_ANON, 0);
		fill_ints(r.ptr, r.size, c, 1);
		migrate_ok(dm, &r, mirror, c);
		ASSERT_EQ(pool(dev).in_use, r.npages);
		if (is_coherent(dev)) {
			ASSERT_EQ(to_sys(dm, r.ptr, mirror, r.npages, &cmd), 0);
			ASSERT_EQ(cmd.cpages, r.npages);
			ASSERT_EQ(pool(dev).in_use, 0);
			EXPECT_SNAP(dm, r.ptr, r.npages, UHMM_DMIRROR_PROT_WRITE);
		}
		cpu_read_back(dev, &r, c, is_coherent(dev) ? 0 : r.npages);
		ASSERT_EQ(pool(dev).in_use, 0);
		region_unmap(&r);
	}
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, NROUNDS * NPAGES);
	ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, NROUNDS * NPAGES);
	free(mirror);
	finish(dm, dev, &r);
}
VARIANTS(migrate_multiple)

/* ------------------------------------------------------------------------ */
/* two devices: migrate_mixed, snapshot, double_map                          */
/* ------------------------------------------------------------------------ */

/*
 * Build the page states of hmm-tests over n pages at p: page 0 PROT_NONE,
 * page 1 a hole, page 2 the read-only zero page, page 3 read-only data (3),
 * pages 4.. read-write, page 4 holding 3.
 */
static void build_mixed(struct region *r, uint64_t n)
{
	char *p;
	int val;

	region_map(r, n, PROT_NONE, PRIV_ANON, 0);
	p = r->ptr;
	ASSERT_EQ(munmap(p + PS, PS), 0);
	ASSERT_EQ(mprotect(p + 2 * PS, PS, PROT_READ), 0);
	val = *(volatile int *)(p + 2 * PS) + 3;
	ASSERT_EQ(val, 3);
	ASSERT_EQ(mprotect(p + 3 * PS, PS, RW), 0);
	*(int *)(p + 3 * PS) = val;
	ASSERT_EQ(mprotect(p + 3 * PS, PS, PROT_READ), 0);
	ASSERT_EQ(mprotect(p + 4 * PS, (n - 4) * PS, RW), 0);
	*(int *)(p + 4 * PS) = val;
}

static void migrate_mixed(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev), *dm2 = open_dev(dev2);
	char *mirror = xmalloc(6 * PS);
	struct uhmm_stats s0, s1, s2;
	struct uhmm_dmirror_cmd cmd;
	struct region r;
	char *p;

	region_map(&r, 6, PROT_NONE, PRIV_ANON, 0);
	p = r.ptr;
	s0 = stats_now();
	ASSERT_EQ(to_dev(dm2, p, mirror, 6, NULL), -EINVAL);	/* PROT_NONE */
	region_unmap(&r);

	build_mixed(&r, 6);
	p = r.ptr;
	*(int *)(p + 5 * PS) = 3;
	ASSERT_EQ(to_dev(dm2, p, mirror, 3, NULL), -EINVAL);	/* hole at page 1 */
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, 0);
	ASSERT_EQ(pool(dev2).in_use, 0);

	/* Pages 2-5: zero page, read-only, read-write x2. */
	memset(mirror, 0xFF, 4 * PS);
	ASSERT_EQ(to_dev(dm2, p + 2 * PS, mirror, 4, &cmd), 0);
	ASSERT_EQ(cmd.cpages, 4);
	EXPECT_ZERO(mirror, PS);
	for (int i = 1; i < 4; i++)
		ASSERT_EQ(*(int *)(mirror + i * PS), 3);
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, 4);
	ASSERT_EQ(pool(dev2).in_use, 4);

	/* Page 5 belongs to the second device: the first cannot take it. */
	ASSERT_EQ(to_dev(dm, p + 5 * PS, mirror, 1, NULL), -ENOENT);
	s2 = stats_now();
	ASSERT_EQ(s2.pages_to_device - s1.pages_to_device, 0);
	ASSERT_EQ(pool(dev).in_use, 0);
	ASSERT_EQ(pool(dev2).in_use, 4);

	ASSERT_EQ(*(volatile int *)(p + 2 * PS), 0);
	for (int i = 3; i < 6; i++)
		ASSERT_EQ(*(volatile int *)(p + i * PS), 3);
	ASSERT_EQ(pool(dev2).in_use, is_coherent(dev2) ? 4 : 0);
	free(mirror);
	uhmm_dmirror_close(dm2);
	finish(dm, dev, &r);
	pool_drained(dev2);
}
VARIANTS(migrate_mixed)

/* The seven page states as seen by the first device's snapshot. */
static void snapshot(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev), *dm2 = open_dev(dev2);
	unsigned char m[7];
	char *mirror = xmalloc(PS);
	struct uhmm_stats s0, s1;
	struct uhmm_dmirror_cmd cmd;
	struct region r;
	char *p;

	build_mixed(&r, 7);
	p = r.ptr;
	s0 = stats_now();
	ASSERT_EQ(to_dev(dm, p + 5 * PS, mirror, 1, &cmd), 0);
	ASSERT_EQ(cmd.cpages, 1);
	ASSERT_EQ(to_dev(dm2, p + 6 * PS, mirror, 1, &cmd), 0);
	ASSERT_EQ(cmd.cpages, 1);
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, 2);
	ASSERT_EQ(pool(dev).in_use, 1);
	ASSERT_EQ(pool(dev2).in_use, 1);

	memset(m, 0xAA, sizeof(m));
	ASSERT_EQ(run_cmd(uhmm_dmirror_snapshot, dm, p, m, 7, &cmd), 0);
	ASSERT_EQ(cmd.cpages, 7);
	ASSERT_EQ(m[0], UHMM_DMIRROR_PROT_ERROR);
	ASSERT_EQ(m[1], UHMM_DMIRROR_PROT_ERROR);
	ASSERT_EQ(m[2], UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ);
	ASSERT_EQ(m[3], UHMM_DMIRROR_PROT_READ);
	ASSERT_EQ(m[4], UHMM_DMIRROR_PROT_WRITE);
	if (is_coherent(dev)) {
		ASSERT_EQ(m[5], SNAP_DEV_COHERENT);
		ASSERT_EQ(m[6], UHMM_DMIRROR_PROT_DEV_COHERENT_REMOTE | UHMM_DMIRROR_PROT_WRITE);
	} else {
		ASSERT_EQ(m[5], SNAP_DEV_PRIVATE);
		ASSERT_EQ(m[6], UHMM_DMIRROR_PROT_NONE);
	}
	/* a snapshot never faults: nothing moved */
	ASSERT_EQ(pool(dev).in_use, 1);
	ASSERT_EQ(pool(dev2).in_use, 1);

	/* The CPU still sees the right data everywhere; never-written pages are zero. */
	ASSERT_EQ(*(volatile int *)(p + 3 * PS), 3);
	ASSERT_EQ(*(volatile int *)(p + 4 * PS), 3);
	EXPECT_ZERO(p + 5 * PS, 2 * PS);
	free(mirror);
	uhmm_dmirror_close(dm2);
	finish(dm, dev, &r);
	pool_drained(dev2);
}
VARIANTS(snapshot)

/* Two devices read the same pages; then one takes them and the other reads. */
static void double_map(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev), *dm2 = open_dev(dev2);
	char *mirror = xmalloc(6 * PS);
	struct uhmm_stats s0, s1;
	struct uhmm_dmirror_cmd cmd;
	struct region r;

	region_map(&r, 6, RW, PRIV_ANON, 0);
	fill_ints(r.ptr, r.size, 0, 1);
	ASSERT_EQ(mprotect(r.ptr, r.size, PROT_READ), 0);

	memset(mirror, 0, r.size);
	EXPECT_CMD(uhmm_dmirror_read, dm, r.ptr, mirror, 6, 1);
	EXPECT_INTS(mirror, r.size, 0, 1);
	memset(mirror, 0, r.size);
	EXPECT_CMD(uhmm_dmirror_read, dm2, r.ptr, mirror, 6, 1);
	EXPECT_INTS(mirror, r.size, 0, 1);

	/* Read-only pages migrate to the second device. */
	memset(mirror, 0, r.size);
	ASSERT_EQ(to_dev(dm2, r.ptr, mirror, 6, &cmd), 0);
	ASSERT_EQ(cmd.cpages, 6);
	EXPECT_INTS(mirror, r.size, 0, 1);
	ASSERT_EQ(pool(dev2).in_use, 6);

	/* The first device lost its mirror entries and faults them again. */
	s0 = stats_now();
	memset(mirror, 0, r.size);
	EXPECT_CMD(uhmm_dmirror_read, dm, r.ptr, mirror, 6, 1);
	EXPECT_INTS(mirror, r.size, 0, 1);
	s1 = stats_now();
	/* another device's private pages come back to RAM; coherent ones are read in place */
	ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, is_coherent(dev2) ? 0 : 6);
	ASSERT_EQ(pool(dev2).in_use, is_coherent(dev2) ? 6 : 0);

	EXPECT_INTS(r.ptr, r.size, 0, 1);
	free(mirror);
	uhmm_dmirror_close(dm2);
	finish(dm, dev, &r);
	pool_drained(dev2);
}
VARIANTS(double_map)

/* ------------------------------------------------------------------------ */
/* fork: anon_write_child, hmm_cow_in_device                                 */
/* ------------------------------------------------------------------------ */

/* Child: sees the parent's data, then its own device writes privately. */
static void __attribute__((noreturn)) write_child(unsigned int dev, struct region *r,
						  int *mirror)
{
	struct uhmm_dmirror *dm;

	EXPECT_INTS(r->ptr, r->size, 0, 1);
	EXPECT_INTS(mirror, r->size, 0, -1);
	dm = open_dev(dev);
	EXPECT_CMD(uhmm_dmirror_write, dm, r->ptr, mirror, r->npages, 1);
	EXPECT_INTS(r->ptr, r->size, 0, -1);
	uhmm_dmirror_close(dm);
	_exit(0);
}

static void write_child_round(struct uhmm_dmirror *dm, unsigned int dev, int migrate, int thp)
{
	struct region r;
	int *mirror;
	int status;
	pid_t pid;

	region_map(&r, thp ? PMD_PAGES : NPAGES, RW, PRIV_ANON, thp);
	mirror = xmalloc(r.size);
	fill_ints(r.ptr, r.size, 0, 1);
	if (migrate) {
		migrate_ok(dm, &r, mirror, 0);
		ASSERT_EQ(pool(dev).in_use, r.npages);
	}
	fill_ints(mirror, r.size, 0, -1);

	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0)
		write_child(dev, &r, mirror);
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);

	/* The parent's pages did not change. */
	EXPECT_INTS(r.ptr, r.size, 0, 1);
	free(mirror);
	region_unmap(&r);
	ASSERT_EQ(pool(dev).in_use, 0);
}

static void anon_write_child(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	struct region none = { 0 };

	(void)dev2;
	for (int migrate = 0; migrate < 2; migrate++)
		for (int thp = 0; thp < 2; thp++)
			write_child_round(dm, dev, migrate, thp);
	finish(dm, dev, &none);
}
VARIANTS(anon_write_child)

/* Migrate, fork, parent writes: its pages become plain system pages. */
static void hmm_cow_in_device(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	char *mirror = xmalloc(4 * PS);
	struct region r;
	int sync[2], status;
	char ok = 0;
	pid_t pid;

	(void)dev2;
	region_map(&r, 4, RW, PRIV_ANON, 0);
	fill_ints(r.ptr, r.size, 0, 1);
	migrate_ok(dm, &r, mirror, 0);
	ASSERT_EQ(pipe(sync), 0);

	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		close(sync[0]);
		/* the child sees the data, reports, and waits to be killed */
		EXPECT_INTS(r.ptr, r.size, 0, 1);
		ok = 1;
		if (write(sync[1], &ok, 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(sync[1]);		/* a child that dies early gives EOF */
	ASSERT_EQ(read(sync[0], &ok, 1), 1);
	ASSERT_EQ(ok, 1);

	/* The parent writes while the child still shares the pages. */
	fill_ints(r.ptr, r.size, 7, 1);
	ASSERT_EQ(kill(pid, SIGKILL), 0);
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFSIGNALED(status));
	ASSERT_EQ(WTERMSIG(status), SIGKILL);

	EXPECT_SNAP(dm, r.ptr, r.npages, UHMM_DMIRROR_PROT_WRITE);
	EXPECT_INTS(r.ptr, r.size, 7, 1);
	close(sync[0]);
	free(mirror);
	finish(dm, dev, &r);
}
VARIANTS(hmm_cow_in_device)

/* ------------------------------------------------------------------------ */
/* munmap / mremap of migrated ranges                                        */
/* ------------------------------------------------------------------------ */

static void partial_unmap_round(struct uhmm_dmirror *dm, unsigned int dev, int thp, size_t off)
{
	size_t unmap_size = PMD_SIZE / 2;
	int *mirror = xmalloc(PMD_SIZE);
	struct region r;
	const int *p;

	region_map(&r, PMD_PAGES, RW, PRIV_ANON, thp);
	fill_ints(r.ptr, r.size, 0, 1);
	migrate_ok(dm, &r, mirror, 0);
	ASSERT_EQ(pool(dev).in_use, r.npages);

	/* unmapping returns the device pages of that part at once (I4) */
	ASSERT_EQ(munmap(r.ptr + off, unmap_size), 0);
	ASSERT_EQ(pool(dev).in_use, r.npages - unmap_size / PS);

	p = (const int *)r.ptr;
	for (size_t i = 0; i < NINTS(r.size); i++) {
		if (i * sizeof(int) >= off && i * sizeof(int) < off + unmap_size)
			continue;
		if (p[i] != (int)i)
			th_fail(__FILE__, __LINE__, "thp %d off %zu: int %zu is %d", thp, off, i,
				p[i]);
	}
	ASSERT_EQ(pool(dev).in_use, is_coherent(dev) ? r.npages - unmap_size / PS : 0);
	free(mirror);
	region_unmap(&r);
	ASSERT_EQ(pool(dev).in_use, 0);
}

static void migrate_partial_unmap_fault(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	const size_t offsets[] = { 0, PMD_SIZE / 4, PMD_SIZE / 2 };
	struct region none = { 0 };

	(void)dev2;
	for (int thp = -1; thp <= 1; thp += 2)
		for (size_t j = 0; j < sizeof(offsets) / sizeof(offsets[0]); j++)
			partial_unmap_round(dm, dev, thp, offsets[j]);
	finish(dm, dev, &none);
}
VARIANTS(migrate_partial_unmap_fault)

static char *remap_to(char *from, char *to, int dontunmap)
{
	int flags = MREMAP_MAYMOVE | MREMAP_FIXED | (dontunmap ? MREMAP_DONTUNMAP : 0);
	char *p = mremap(from, PMD_SIZE, PMD_SIZE, flags, to);

	ASSERT_MAPPED(p);
	ASSERT_TRUE(p == to);
	return p;
}

static void remap_round(struct uhmm_dmirror *dm, unsigned int dev, int before, int dontunmap,
			int thp, size_t off)
{
	int *mirror = xmalloc(PMD_SIZE);
	struct region r = { 0 }, cur;
	uint64_t in_use;
	char *target;

	/* 8 x 2 MiB reservation; the range at its PMD-aligned start, a gap after. */
	r.map_size = 8 * PMD_SIZE;
	r.map = map_private_area(r.map_size, RW, PRIV_ANON);
	ASSERT_MAPPED(r.map);
	r.ptr = (char *)(((uintptr_t)r.map + PMD_SIZE - 1) & ~(PMD_SIZE - 1));
	ASSERT_EQ(madvise(r.ptr, PMD_SIZE, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE), 0);
	/* The gap stays reserved (PROT_NONE) so nothing else is mapped there. */
	ASSERT_MAPPED(mmap(r.ptr + PMD_SIZE, 2 * PMD_SIZE, PROT_NONE, PRIV_ANON | MAP_FIXED, -1, 0));
	target = r.ptr + PMD_SIZE + off;
	cur = r;
	cur.size = PMD_SIZE;
	cur.npages = PMD_PAGES;
	fill_ints(cur.ptr, cur.size, 0, 1);

	if (before)
		cur.ptr = remap_to(r.ptr, target, dontunmap);
	migrate_ok(dm, &cur, mirror, 0);
	ASSERT_EQ(pool(dev).in_use, PMD_PAGES);
	if (!before)
		cur.ptr = remap_to(r.ptr, target, dontunmap);

	/*
	 * The data followed the mapping (the pages may have come back to RAM
	 * on the way: nothing more is required); the old range, if kept, is
	 * empty.
	 */
	in_use = pool(dev).in_use;
	ASSERT_LE(in_use, PMD_PAGES);
	EXPECT_INTS(cur.ptr, cur.size, 0, 1);
	if (dontunmap)
		EXPECT_ZERO(r.ptr, PMD_SIZE);
	ASSERT_EQ(pool(dev).in_use, is_coherent(dev) ? in_use : 0);

	ASSERT_EQ(munmap(cur.ptr, PMD_SIZE), 0);
	ASSERT_EQ(pool(dev).in_use, 0);
	free(mirror);
	region_unmap(&r);
}

static void migrate_remap_fault(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	const size_t offsets[] = { 0, PMD_SIZE / 4, PMD_SIZE / 2 };
	struct region none = { 0 };

	(void)dev2;
	for (int before = 0; before < 2; before++)
		for (int dontunmap = 0; dontunmap < 2; dontunmap++)
			for (int thp = 0; thp < 2; thp++)
				for (size_t j = 0; j < 3; j++)
					remap_round(dm, dev, before, dontunmap, thp, offsets[j]);
	finish(dm, dev, &none);
}
VARIANTS(migrate_remap_fault)

/* Migrated pages are still right after the mirror that moved them closes. */
static void close_with_pages(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	int *mirror = xmalloc(NPAGES * PS);
	struct region r;

	(void)dev2;
	region_map(&r, NPAGES, RW, PRIV_ANON, 0);
	fill_ints(r.ptr, r.size, 0, 1);
	migrate_ok(dm, &r, mirror, 0);
	uhmm_dmirror_close(dm);
	EXPECT_INTS(r.ptr, r.size, 0, 1);
	region_unmap(&r);
	pool_drained(dev);
	free(mirror);
}
VARIANTS(close_with_pages)

/* ------------------------------------------------------------------------ */
/* THP ranges                                                                */
/* ------------------------------------------------------------------------ */

/*
 * A THP range with no data migrates as zeros: never touched, or (zero_page)
 * read once by the CPU so that it maps the huge zero page.
 */
static void huge_zeros_round(unsigned int dev, bool zero_page)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	char *mirror = xmalloc(PMD_SIZE);
	struct uhmm_dmirror_cmd cmd;
	struct uhmm_stats s0, s1;
	struct region r;

	region_map(&r, PMD_PAGES, PROT_READ, PRIV_ANON, 1);
	if (zero_page)
		ASSERT_EQ(*(volatile int *)r.ptr, 0);
	memset(mirror, 0xFF, PMD_SIZE);
	s0 = stats_now();
	ASSERT_EQ(to_dev(dm, r.ptr, mirror, r.npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, r.npages);
	s1 = stats_now();
	if (!zero_page)
		ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, r.npages);
	ASSERT_EQ(pool(dev).in_use, r.npages);
	EXPECT_ZERO(mirror, PMD_SIZE);

	EXPECT_ZERO(r.ptr, r.size);
	ASSERT_EQ(pool(dev).in_use, is_coherent(dev) ? r.npages : 0);
	free(mirror);
	finish(dm, dev, &r);
}

/* A THP range never touched. */
static void migrate_anon_huge_empty(unsigned int dev, unsigned int dev2)
{
	(void)dev2;
	huge_zeros_round(dev, false);
}
VARIANTS(migrate_anon_huge_empty)

/* A THP range holding the (huge) zero page. */
static void migrate_anon_huge_zero(unsigned int dev, unsigned int dev2)
{
	(void)dev2;
	huge_zeros_round(dev, true);
}
VARIANTS(migrate_anon_huge_zero)

/* A migrated THP range freed (MADV_FREE, then munmap). */
static void migrate_anon_huge_free(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	int *mirror = xmalloc(PMD_SIZE);
	struct region r;

	(void)dev2;
	region_map(&r, PMD_PAGES, RW, PRIV_ANON, 1);
	fill_ints(r.ptr, r.size, 0, 1);
	migrate_ok(dm, &r, mirror, 0);
	ASSERT_EQ(pool(dev).in_use, r.npages);
	ASSERT_EQ(madvise(r.ptr, r.size, MADV_FREE), 0);
	region_unmap(&r);
	ASSERT_EQ(pool(dev).in_use, 0);		/* before close: unmap freed them */
	free(mirror);
	finish(dm, dev, &r);
}
VARIANTS(migrate_anon_huge_free)

/* A THP with data migrated, then faulted back by the CPU. */
static void migrate_anon_huge_fault(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	int *mirror = xmalloc(PMD_SIZE);
	struct region r;

	(void)dev2;
	region_map(&r, PMD_PAGES, RW, PRIV_ANON, 1);
	fill_ints(r.ptr, r.size, 0, 1);
	(void)madvise(r.ptr, r.size, MADV_COLLAPSE);	/* best effort: THP already */
	migrate_ok(dm, &r, mirror, 0);
	ASSERT_EQ(pool(dev).in_use, r.npages);
	EXPECT_SNAP(dm, r.ptr, r.npages, dev_snap(dev));

	cpu_read_back(dev, &r, 0, is_coherent(dev) ? 0 : r.npages);
	free(mirror);
	finish(dm, dev, &r);
}
VARIANTS(migrate_anon_huge_fault)

/* ------------------------------------------------------------------------ */
/* allocation failures                                                       */
/* ------------------------------------------------------------------------ */

/*
 * With FAIL_ALLOC armed, a migration moves fewer pages or fails with an
 * errno; the data stays intact and a retry migrates everything.
 */
static void fail_alloc_round(struct uhmm_dmirror *dm, unsigned int dev, struct region *r,
			     int base, bool zero)
{
	struct uhmm_devmem_stats p0 = pool(dev), p1;
	struct uhmm_stats s0 = stats_now(), s1;
	char *mirror = xmalloc(r->size);
	struct uhmm_dmirror_cmd cmd;
	int ret;

	ASSERT_EQ(uhmm_dmirror_set_flags(dm, UHMM_DMIRROR_FLAG_FAIL_ALLOC), 0);
	ret = to_dev(dm, r->ptr, mirror, r->npages, &cmd);
	if (ret == 0)
		ASSERT_LT(cmd.cpages, r->npages);
	else
		ASSERT_LT(ret, 0);
	p1 = pool(dev);
	s1 = stats_now();
	ASSERT_LT(s1.pages_to_device - s0.pages_to_device, r->npages);
	ASSERT_EQ(p1.in_use - p0.in_use, s1.pages_to_device - s0.pages_to_device);
	ASSERT_EQ(p1.allocated - p0.allocated, s1.pages_to_device - s0.pages_to_device);

	/* Data intact, wherever each page is now. */
	if (zero)
		EXPECT_ZERO(r->ptr, r->size);
	else
		EXPECT_INTS(r->ptr, r->size, base, 1);

	/* The failure was one-shot: a retry takes every page. */
	memset(mirror, 0xFF, r->size);
	ASSERT_EQ(to_dev(dm, r->ptr, mirror, r->npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, r->npages);
	ASSERT_EQ(pool(dev).in_use, r->npages);
	if (zero) {
		EXPECT_ZERO(mirror, r->size);
		EXPECT_ZERO(r->ptr, r->size);
	} else {
		EXPECT_INTS(mirror, r->size, base, 1);
		EXPECT_INTS(r->ptr, r->size, base, 1);
	}
	ASSERT_EQ(pool(dev).in_use, is_coherent(dev) ? r->npages : 0);
	free(mirror);
}

static void migrate_fail_alloc(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	struct region r;

	(void)dev2;
	region_map(&r, NPAGES, RW, PRIV_ANON, 0);
	fill_ints(r.ptr, r.size, 0, 1);
	fail_alloc_round(dm, dev, &r, 0, false);
	region_unmap(&r);

	/* 4 KiB pages on an aligned 2 MiB range (a THP: test_kernel.c) */
	region_map(&r, PMD_PAGES, RW, PRIV_ANON, -1);
	fill_ints(r.ptr, r.size, 5, 1);
	fail_alloc_round(dm, dev, &r, 5, false);
	finish(dm, dev, &r);
}
VARIANTS(migrate_fail_alloc)

static void migrate_fail_alloc_zero(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	struct region r;

	(void)dev2;
	/* the 4 KiB zero page (the huge zero page: test_kernel.c) */
	region_map(&r, PMD_PAGES, PROT_READ, PRIV_ANON, -1);
	ASSERT_EQ(*(volatile int *)r.ptr, 0);
	fail_alloc_round(dm, dev, &r, 0, true);
	finish(dm, dev, &r);
}
VARIANTS(migrate_fail_alloc_zero)

/* ------------------------------------------------------------------------ */
/* file-private memory, kernel-mode access, reuse of device pages            */
/* ------------------------------------------------------------------------ */

/*
 * COWed pages of a MAP_PRIVATE file mapping are not migrated by uhmm (the
 * VMA is not anonymous, so UFFDIO_MOVE refuses it, and a zapped private
 * page would expose the file's page instead of faulting): the device
 * reports -ENOENT, takes no page, and the data and the file are untouched.
 */
static void migrate_file_private(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	size_t size = NPAGES * PS;
	int *mirror = xmalloc(size);
	struct region r = { 0 };
	int fd = memfd_create("uhmm-test-migrate", 0);
	struct uhmm_stats s0, s1;

	(void)dev2;
	ASSERT_GE(fd, 0);
	fill_ints(mirror, size, 0, -1);
	ASSERT_EQ(pwrite(fd, mirror, size, 0), (ssize_t)size);
	r.map = mmap(NULL, size, RW, MAP_PRIVATE, fd, 0);
	ASSERT_MAPPED(r.map);
	r.ptr = r.map;
	r.map_size = r.size = size;
	r.npages = NPAGES;
	EXPECT_INTS(r.ptr, size, 0, -1);	/* file pages first */
	fill_ints(r.ptr, size, 0, 1);		/* then private copies */

	s0 = stats_now();
	ASSERT_EQ(to_dev(dm, r.ptr, mirror, r.npages, NULL), -ENOENT);
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, 0);
	ASSERT_EQ(pool(dev).in_use, 0);
	EXPECT_INTS(r.ptr, size, 0, 1);

	ASSERT_EQ(pread(fd, mirror, size, 0), (ssize_t)size);
	EXPECT_INTS(mirror, size, 0, -1);
	close(fd);
	free(mirror);
	finish(dm, dev, &r);
}
VARIANTS(migrate_file_private)

static void write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		ASSERT_GT(n, 0);
		p += n;
		len -= (size_t)n;
	}
}

static void read_all(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		ASSERT_GT(n, 0);
		p += n;
		len -= (size_t)n;
	}
}

/* The kernel copies from / into pages that sit in device memory. */
static void syscall_read_write(unsigned int dev, unsigned int dev2)
{
	const uint64_t n = 8;			/* 32 KiB: fits in a pipe */
	struct uhmm_dmirror *dm = open_dev(dev);
	char *mirror = xmalloc(n * PS), *chk = xmalloc(n * PS);
	uint64_t dev_pages = is_coherent(dev) ? 0 : n;
	struct uhmm_stats s0, s1;
	struct region r;
	int pfd[2], fd;

	(void)dev2;
	ASSERT_EQ(pipe(pfd), 0);
	region_map(&r, n, RW, PRIV_ANON, 0);

	/* write(2) FROM device pages */
	fill_ints(r.ptr, r.size, 11, 1);
	migrate_ok(dm, &r, mirror, 11);
	s0 = stats_now();
	write_all(pfd[1], r.ptr, r.size);
	s1 = stats_now();
	read_all(pfd[0], chk, r.size);
	EXPECT_INTS(chk, r.size, 11, 1);
	ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, dev_pages);
	ASSERT_EQ(s1.cpu_faults_private - s0.cpu_faults_private > 0, dev_pages > 0);
	ASSERT_EQ(pool(dev).in_use, n - dev_pages);

	/* read(2) INTO device pages, from a pipe */
	migrate_moved(dm, &r, mirror, 11, dev_pages);
	fill_ints(chk, r.size, 22, 1);
	write_all(pfd[1], chk, r.size);
	s0 = stats_now();
	read_all(pfd[0], r.ptr, r.size);
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, dev_pages);
	ASSERT_EQ(pool(dev).in_use, n - dev_pages);
	EXPECT_INTS(r.ptr, r.size, 22, 1);

	/* read(2) INTO device pages, from a file */
	fd = memfd_create("uhmm-test-rw", 0);
	ASSERT_GE(fd, 0);
	fill_ints(chk, r.size, 33, 1);
	ASSERT_EQ(pwrite(fd, chk, r.size, 0), (ssize_t)r.size);
	migrate_moved(dm, &r, mirror, 22, dev_pages);
	ASSERT_EQ(pread(fd, r.ptr, r.size, 0), (ssize_t)r.size);
	ASSERT_EQ(pool(dev).in_use, n - dev_pages);
	EXPECT_INTS(r.ptr, r.size, 33, 1);

	/* and write(2) FROM device pages into the file */
	migrate_moved(dm, &r, mirror, 33, dev_pages);
	ASSERT_EQ(pwrite(fd, r.ptr, r.size, r.size), (ssize_t)r.size);
	ASSERT_EQ(pread(fd, chk, r.size, r.size), (ssize_t)r.size);
	EXPECT_INTS(chk, r.size, 33, 1);

	close(fd);
	close(pfd[0]);
	close(pfd[1]);
	free(mirror);
	free(chk);
	finish(dm, dev, &r);
}
VARIANTS(syscall_read_write)

/*
 * When a CPU access to a device page returns, the migration that brought
 * the page back is over: the pool no longer counts the page.  The pages
 * are read one at a time, each read followed by two looks at the pool a
 * little apart, which agree.  Four rounds: written or zero pages (never
 * written: an empty device frame), in a scattered order (single-page
 * faults) or in order (a read-ahead stream, whose windows end with a
 * single page at the 2 MiB boundary).  A source released after the
 * install would show here (forwarded copies on the service thread: a
 * faulting thread that has not gone to sleep yet goes on as soon as its
 * page is mapped; devcopy.c fwd_ok).
 */
/* counters_settled's child: 0, or the step that found the pool unsettled. */
static int huge_zero_child(unsigned int dev, char *mirror)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd cmd;
	struct region r;
	if (uhmm_dmirror_open(dev, &dm))
		return 10;
	region_map(&r, PMD_PAGES, PROT_READ, PRIV_ANON, 1);  /* as migrate_anon_huge_zero */
	if (*(volatile int *)r.ptr != 0)
		return 11;
	if (to_dev(dm, r.ptr, mirror, PMD_PAGES, &cmd) || cmd.cpages != PMD_PAGES)
		return 12;
	for (uint64_t i = 0; i < NINTS(r.size); i++)
		if (((volatile int *)r.ptr)[i])
			return 13;
	uint64_t in_use = pool(dev).in_use;
	if (in_use != (is_coherent(dev) ? PMD_PAGES : 0)) {
		fprintf(stderr, "child: pool in_use %" PRIu64 " right after the reads\n", in_use);
		return 14;
	}
	if (is_coherent(dev) && (to_sys(dm, r.ptr, mirror, PMD_PAGES, &cmd) || pool(dev).in_use))
		return 15;
	uhmm_dmirror_close(dm);
	return 0;
}

static void counters_settled(unsigned int dev, unsigned int dev2)
{
	(void)dev2;
	struct uhmm_dmirror *dm = open_dev(dev);
	struct region r;
	struct uhmm_dmirror_cmd cmd;
	const uint64_t n = PMD_PAGES;
	char *mirror = xmalloc(n * PS);

	region_map(&r, n, RW, PRIV_ANON, -1);
	for (int round = 0; round < 8; round++) {
		bool zero = round & 1;
		uint64_t stride = round & 2 ? 1 : 37;  /* coprime with n: every page once */
		int base = 1000 * round;
		ASSERT_EQ(madvise(r.ptr, r.size, MADV_DONTNEED), 0);
		if (!zero)
			fill_ints(r.ptr, r.size, base, 1);
		ASSERT_EQ(to_dev(dm, r.ptr, mirror, n, &cmd), 0);
		ASSERT_EQ(cmd.cpages, n);
		ASSERT_EQ(pool(dev).in_use, n);
		struct uhmm_stats s0 = stats_now();
		for (uint64_t k = 0; k < n; k++) {
			uint64_t p = (k * stride) % n;
			const int *v = (const int *)(r.ptr + p * PS);
			ASSERT_EQ(*(volatile const int *)v, zero ? 0 : (int)(base + p * NINTS(PS)));
			uint64_t now = pool(dev).in_use;
			usleep(20);
			ASSERT_EQ(pool(dev).in_use, now);
		}
		struct uhmm_stats s1 = stats_now();
		if (zero)
			EXPECT_ZERO(r.ptr, r.size);
		else
			EXPECT_INTS(r.ptr, r.size, base, 1);
		ASSERT_EQ(pool(dev).in_use, is_coherent(dev) ? n : 0);
		if (!is_coherent(dev)) {
			ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, n);
			ASSERT_GT(s1.cpu_faults_private - s0.cpu_faults_private, 0);
		} else {
			ASSERT_EQ(s1.cpu_faults_private - s0.cpu_faults_private, 0);
			ASSERT_EQ(to_sys(dm, r.ptr, mirror, n, &cmd), 0);
			ASSERT_EQ(pool(dev).in_use, 0);
		}
	}
	region_unmap(&r);
	/*
	 * And the case that showed it (migrate_anon_huge_zero run alone, about
	 * one run in four): the huge zero page to a new mirror, read back at
	 * full speed, then the pool at once; each round in a new child, whose
	 * uhmm starts afresh as a new program's does.
	 */
	uhmm_dmirror_close(dm);
	for (int round = 0; round < 12; round++) {
		pid_t pid = fork();
		ASSERT_GE(pid, 0);
		if (pid == 0)
			_exit(huge_zero_child(dev, mirror));
		int status;
		ASSERT_EQ(waitpid(pid, &status, 0), pid);
		ASSERT_TRUE(WIFEXITED(status));
		ASSERT_EQ(WEXITSTATUS(status), 0);
	}
	free(mirror);
	pool_drained(dev);
}
VARIANTS(counters_settled)

/* I5: device pages freed by one range hold nothing when another gets them. */
static void i5_zero_reuse(unsigned int dev, unsigned int dev2)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	char *mirror = xmalloc(PMD_SIZE);
	struct uhmm_devmem_stats p0, p1;
	struct uhmm_dmirror_cmd cmd;
	struct region r;

	(void)dev2;
	region_map(&r, PMD_PAGES, RW, PRIV_ANON, 0);
	memset(r.ptr, 0x5A, r.size);
	memset(mirror, 0, PMD_SIZE);
	ASSERT_EQ(to_dev(dm, r.ptr, mirror, r.npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, r.npages);
	ASSERT_EQ((unsigned char)mirror[PMD_SIZE - 1], 0x5A);
	region_unmap(&r);
	p0 = pool(dev);
	ASSERT_EQ(p0.in_use, 0);

	/* a fresh range, never written, takes the freed device pages */
	region_map(&r, PMD_PAGES, RW, PRIV_ANON, 0);
	memset(mirror, 0xFF, PMD_SIZE);
	ASSERT_EQ(to_dev(dm, r.ptr, mirror, r.npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, r.npages);
	p1 = pool(dev);
	ASSERT_EQ(p1.in_use, r.npages);
	ASSERT_EQ(p1.allocated - p0.allocated, r.npages);
	ASSERT_EQ(p1.reserved, p0.reserved);		/* the same frames, reused */
	EXPECT_ZERO(mirror, PMD_SIZE);

	/* through the device again, then through the CPU */
	memset(mirror, 0xFF, PMD_SIZE);
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, r.ptr, mirror, r.npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, r.npages);
	EXPECT_ZERO(mirror, PMD_SIZE);
	EXPECT_ZERO(r.ptr, r.size);
	free(mirror);
	finish(dm, dev, &r);
}
VARIANTS(i5_zero_reuse)

TEST_MAIN()
