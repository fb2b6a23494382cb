/* SPDX-License-Identifier: MIT */
/*
 * test_kernel.c - the cases of the kernel's selftest
 * tools/testing/selftests/mm/hmm-tests.c (current tree) that no other file
 * of tests/ ports: mixedmap, compound, migrate_anon_huge_err and
 * migrate_anon_huge_zero_err, written against the reference device
 * (uhmm_dmirror_*) with the kernel test's expectations, plus what each one
 * implies for uhmm_range_fault() and the counters.
 *
 * Each case runs twice, like tests/test_migrate.c: "private" on device 0
 * (device-private memory) and "coherent" on device 2 (device-coherent).
 * Every case checks the data and the counters: cmd.cpages and cmd.faults,
 * the process counters of uhmm_stats_get(), the pool counters (in_use back
 * to 0 at the end: I4) and, where the kernel's answer is about the CPU page
 * table, /proc/self/pagemap.
 */
#include "harness.h"
#include "dmtest.h"
#include <fcntl.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

#define PS		UHMM_PAGE_SIZE
#define PMD_SIZE	(2UL << 20)
#define PMD_PAGES	(PMD_SIZE / PS)
#define NINTS(size)	((size) / sizeof(int))
#define RW		(PROT_READ | PROT_WRITE)
#define PRIV_ANON	(MAP_PRIVATE | MAP_ANONYMOUS)

/* /proc/self/pagemap entry bits */
#define PM_PRESENT	(1ULL << 63)
#define PM_FILE		(1ULL << 61)	/* file page or shared anonymous */


/* ------------------------------------------------------------------------ */
/* helpers                                                                   */
/* ------------------------------------------------------------------------ */

/* Snapshot npages pages at addr into m[]; the command must cover them all. */
static void snapshot(struct uhmm_dmirror *dm, const void *addr, uint64_t npages,
		     unsigned char *m)
{
	memset(m, 0xAA, npages);
	EXPECT_CMD(uhmm_dmirror_snapshot, dm, addr, m, npages, 0);
}

static void snap_expect(const char *file, int line, struct uhmm_dmirror *dm, const void *addr,
			uint64_t npages, unsigned int want, unsigned int ignore)
{
	unsigned char *m = xmalloc(npages);

	snapshot(dm, addr, npages, m);
	for (uint64_t i = 0; i < npages; i++)
		if ((m[i] & ~ignore) != want)
			th_fail(file, line, "page %" PRIu64 ": snapshot 0x%02x, want 0x%02x", i,
				m[i], want);
	free(m);
}

/* Every page of [addr, +npages) snapshots exactly as want. */
#define EXPECT_SNAP(dm, addr, npages, want) snap_expect(__FILE__, __LINE__, dm, addr, npages, want, 0)
/* ... ignoring the PMD bit (a fallback to 4 KiB device pages has none). */
#define EXPECT_SNAP_ANY_ORDER(dm, addr, npages, want) \
	snap_expect(__FILE__, __LINE__, dm, addr, npages, want, UHMM_DMIRROR_PROT_PMD)

/* A page in dev's memory, of a writable mapping or not. */
static unsigned int dev_snap(unsigned int dev, bool writable)
{
	return (is_coherent(dev) ? UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL :
				   UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL) |
	       (writable ? UHMM_DMIRROR_PROT_WRITE : UHMM_DMIRROR_PROT_READ);
}

static uint64_t pagemap_entry(const void *addr)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	uint64_t e = 0;

	ASSERT_GE(fd, 0);
	ASSERT_EQ(pread(fd, &e, sizeof(e), (off_t)((uintptr_t)addr / PS * sizeof(e))),
		  (ssize_t)sizeof(e));
	close(fd);
	return e;
}

/* The CPU maps addr with the file's (page cache) page, or with an anonymous one. */
#define EXPECT_FILE_PAGE(addr) do {                                           \
	uint64_t pm_e = pagemap_entry(addr);                                  \
	ASSERT_TRUE(pm_e & PM_PRESENT);                                       \
	ASSERT_TRUE(pm_e & PM_FILE);                                          \
} while (0)
#define EXPECT_ANON_PAGE(addr) do {                                           \
	uint64_t pm_e = pagemap_entry(addr);                                  \
	ASSERT_TRUE(pm_e & PM_PRESENT);                                       \
	ASSERT_FALSE(pm_e & PM_FILE);                                         \
} while (0)

/* Why the CPU does not map a THP here (for a SKIP message). */
static const char *thp_setting(void)
{
	static char buf[128];
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");

	if (!f)
		return "no /sys/kernel/mm/transparent_hugepage";
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	buf[strcspn(buf, "\n")] = 0;
	return buf;
}

/* The CPU maps [p, p + 2 MiB) with one PMD (the snapshot says PMD) or SKIP. */
static void require_pmd_mapped(struct uhmm_dmirror *dm, const void *p, const char *what)
{
	unsigned char m = 0;

	snapshot(dm, p, 1, &m);
	if (!(m & UHMM_DMIRROR_PROT_PMD))
		SKIP("no %s for an aligned MADV_HUGEPAGE range (snapshot 0x%02x; THP: %s)", what,
		     m, thp_setting());
}

#define VARIANTS(name)						\
	TEST(name##_private) { name(0); }			\
	TEST(name##_coherent) { name(2); }

/* ------------------------------------------------------------------------ */
/* a recording notifier, for uhmm_range_fault() used directly                */
/* ------------------------------------------------------------------------ */

struct tnot {
	struct uhmm_interval_notifier n;
	int calls;	/* atomic */
};

static bool tnot_invalidate(struct uhmm_interval_notifier *n,
			    const struct uhmm_notifier_range *r, unsigned long cur_seq)
{
	struct tnot *t = (struct tnot *)((char *)n - offsetof(struct tnot, n));

	__atomic_add_fetch(&t->calls, 1, __ATOMIC_RELAXED);
	uhmm_interval_set_seq(n, cur_seq);
	return true;
}

static const struct uhmm_interval_notifier_ops tnot_ops = { .invalidate = tnot_invalidate };

/* Fault one page at addr with the read_begin / -EBUSY retry loop; its pfn. */
static int fault_one(struct tnot *t, const void *addr, uint64_t flags, uint64_t *pfn)
{
	struct uhmm_range r = {
		.notifier = &t->n,
		.start = (uint64_t)(uintptr_t)addr,
		.end = (uint64_t)(uintptr_t)addr + PS,
		.hmm_pfns = pfn,
		.default_flags = flags,
	};
	int ret = -EBUSY;

	for (int tries = 0; tries < 1000 && ret == -EBUSY; tries++) {
		r.notifier_seq = uhmm_interval_read_begin(&t->n);
		*pfn = 0;
		ret = uhmm_range_fault(&r);
	}
	return ret;
}

/* ------------------------------------------------------------------------ */
/* mixedmap                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * A file of npages pages, page k holding the ints index + 1000 * k: a
 * regular file under /tmp (as the kernel test's files) or a memfd (shmem).
 */
static int make_file(bool memfd, uint64_t npages)
{
	size_t size = npages * PS;
	int *buf = xmalloc(size);
	int fd;

	if (memfd)
		fd = (int)syscall(SYS_memfd_create, "test_kernel", 0);
	else
		fd = open("/tmp", O_TMPFILE | O_EXCL | O_RDWR, 0600);
	if (fd < 0 && !memfd)
		SKIP("O_TMPFILE not supported in /tmp: %s", strerror(errno));
	ASSERT_GE(fd, 0);
	for (uint64_t k = 0; k < npages; k++)
		fill_ints((char *)buf + k * PS, PS, (int)(1000 * k), 1);
	ASSERT_EQ(pwrite(fd, buf, size, 0), (ssize_t)size);
	free(buf);
	return fd;
}

/* Page k of the file still holds what make_file() wrote. */
static void file_page_expect(const char *file, int line, int fd, uint64_t k)
{
	int *buf = xmalloc(PS);

	if (pread(fd, buf, PS, (off_t)(k * PS)) != (ssize_t)PS)
		th_fail(file, line, "pread of file page %" PRIu64 " failed", k);
	ints_expect(file, line, buf, PS, (int)(1000 * k), 1);
	free(buf);
}

#define EXPECT_FILE_INTACT(fd, k) file_page_expect(__FILE__, __LINE__, fd, k)

/*
 * One round over a writable MAP_PRIVATE mapping of a file: read pages are
 * the file's own pages, which the CPU maps read-only until a write makes
 * the private copy.  hmm-tests' mixedmap: the snapshot of such a page is
 * PROT_READ.  And as hmm_range_fault() does, a range fault with REQ_WRITE
 * breaks copy-on-write (the page becomes anonymous) and reports WRITE; a
 * device write lands in the private copy, not in the file.
 */
static void mixedmap_round(struct uhmm_dmirror *dm, unsigned int dev, bool memfd)
{
	const uint64_t n = 3;
	int fd = make_file(memfd, n);
	char *p = th_mmap_isolated(n * PS, RW, PRIV_ANON);
	struct uhmm_stats s0, s1;
	struct uhmm_dmirror_cmd cmd;
	struct tnot t = { 0 };
	uint64_t pfn;
	int *buf = xmalloc(PS);

	/* an address of its own (th_mmap_isolated), then the file mapped there */
	ASSERT_MAPPED(p);
	ASSERT_EQ(munmap(p, n * PS), 0);
	ASSERT_TRUE(mmap(p, n * PS, RW, MAP_PRIVATE | MAP_FIXED, fd, 0) == p);

	/* The CPU reads every page: each is the file's page, mapped read-only. */
	for (uint64_t k = 0; k < n; k++) {
		EXPECT_INTS(p + k * PS, PS, (int)(1000 * k), 1);
		EXPECT_FILE_PAGE(p + k * PS);
	}

	/* mixedmap: a snapshot sees PROT_READ, and faults nothing in. */
	s0 = stats_now();
	EXPECT_SNAP(dm, p, n, UHMM_DMIRROR_PROT_READ);
	s1 = stats_now();
	ASSERT_GT(s1.range_faults - s0.range_faults, 0);
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, 0);
	for (uint64_t k = 0; k < n; k++)
		EXPECT_FILE_PAGE(p + k * PS);

	ASSERT_EQ(uhmm_interval_notifier_insert(&t.n, (uint64_t)(uintptr_t)p, n * PS, &tnot_ops),
		  0);

	/* A read fault of page 0 keeps the file's page: VALID, not WRITE. */
	ASSERT_EQ(fault_one(&t, p, UHMM_PFN_REQ_FAULT, &pfn), 0);
	ASSERT_TRUE(pfn & UHMM_PFN_VALID);
	ASSERT_FALSE(pfn & UHMM_PFN_WRITE);
	ASSERT_FALSE(pfn & UHMM_PFN_ERROR);
	EXPECT_FILE_PAGE(p);

	/* A write fault of page 1 breaks COW: an anonymous copy, WRITE. */
	ASSERT_EQ(fault_one(&t, p + PS, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, &pfn), 0);
	ASSERT_TRUE(pfn & UHMM_PFN_VALID);
	ASSERT_TRUE(pfn & UHMM_PFN_WRITE);
	ASSERT_EQ(pfn & UHMM_PFN_PFN_MASK, (uint64_t)(uintptr_t)(p + PS) / PS);
	EXPECT_ANON_PAGE(p + PS);
	EXPECT_INTS(p + PS, PS, 1000, 1);		/* the copy has the file's data */
	EXPECT_FILE_INTACT(fd, 1);
	/* REQ_WRITE without REQ_FAULT is no request: page 2 is not copied. */
	ASSERT_EQ(fault_one(&t, p + 2 * PS, UHMM_PFN_REQ_WRITE, &pfn), 0);
	ASSERT_TRUE(pfn & UHMM_PFN_VALID);
	ASSERT_FALSE(pfn & UHMM_PFN_WRITE);
	EXPECT_FILE_PAGE(p + 2 * PS);
	ASSERT_EQ(uhmm_interval_notifier_remove(&t.n), 0);

	/* The device reads page 2 (one fault), then writes it (one more). */
	memset(buf, 0xFF, PS);
	EXPECT_CMD(uhmm_dmirror_read, dm, p + 2 * PS, buf, 1, 1);
	EXPECT_INTS(buf, PS, 2000, 1);
	EXPECT_FILE_PAGE(p + 2 * PS);
	fill_ints(buf, PS, -7, 1);
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, p + 2 * PS, buf, 1, &cmd), 0);
	ASSERT_EQ(cmd.cpages, 1);
	ASSERT_EQ(cmd.faults, 1);		/* the read-only entry was not enough */
	EXPECT_ANON_PAGE(p + 2 * PS);
	EXPECT_INTS(p + 2 * PS, PS, -7, 1);	/* the private copy has the data... */
	EXPECT_FILE_INTACT(fd, 2);		/* ... the file does not */

	/* Now: page 0 still the file's (READ), pages 1 and 2 private (WRITE). */
	EXPECT_SNAP(dm, p, 1, UHMM_DMIRROR_PROT_READ);
	EXPECT_SNAP(dm, p + PS, 2, UHMM_DMIRROR_PROT_WRITE);
	EXPECT_FILE_PAGE(p);
	EXPECT_FILE_INTACT(fd, 0);

	ASSERT_EQ(munmap(p, n * PS), 0);
	close(fd);
	free(buf);
	ASSERT_EQ(pool(dev).in_use, 0);
}

static void mixedmap(unsigned int dev)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	pid_t pid;
	int status;

	mixedmap_round(dm, dev, true);
	mixedmap_round(dm, dev, false);

	/*
	 * After a fork() the scan reads the kernel's "mapped exclusively" bit
	 * (a private page may then be COW shared): a file page mapped once
	 * has it too, and must still be read-only.
	 */
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0)
		_exit(0);
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	mixedmap_round(dm, dev, true);
	mixedmap_round(dm, dev, false);
	finish(dm, dev, NULL);
}
VARIANTS(mixedmap)

/* ------------------------------------------------------------------------ */
/* compound                                                                  */
/* ------------------------------------------------------------------------ */

static size_t default_huge_page_size(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	size_t kb = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Hugepagesize: %zu kB", &kb) == 1)
			break;
	fclose(f);
	return kb * 1024;
}

/*
 * hugetlb: every page of a huge page snapshots with the level of the
 * mapping (PMD or PUD, by the default huge page size), WRITE, then READ
 * after mprotect(PROT_READ).
 */
static void compound(unsigned int dev)
{
	size_t hsize = default_huge_page_size();
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd cmd;
	unsigned char *m;
	unsigned int level;
	size_t size;
	uint64_t npages;
	char *p;
	int *mirror;

	if (!hsize)
		SKIP("no hugetlb support (no Hugepagesize in /proc/meminfo)");
	size = (PMD_SIZE + hsize - 1) / hsize * hsize;
	npages = size / PS;
	p = mmap(NULL, size, RW, PRIV_ANON | MAP_HUGETLB, -1, 0);
	if (p == MAP_FAILED)
		SKIP("no free hugetlb page of %zu KiB (vm.nr_hugepages): %s", hsize >> 10,
		     strerror(errno));
	dm = open_dev(dev);
	m = xmalloc(npages);
	mirror = xmalloc(size);
	fill_ints(p, size, 0, 1);

	snapshot(dm, p, npages, m);
	level = (m[0] & UHMM_DMIRROR_PROT_PUD) ? UHMM_DMIRROR_PROT_PUD : UHMM_DMIRROR_PROT_PMD;
	ASSERT_EQ(level, hsize >= (1UL << 30) ? UHMM_DMIRROR_PROT_PUD : UHMM_DMIRROR_PROT_PMD);
	EXPECT_SNAP(dm, p, npages, UHMM_DMIRROR_PROT_WRITE | level);

	/* the device reads what the CPU wrote, in one fault */
	memset(mirror, 0xFF, size);
	EXPECT_CMD(uhmm_dmirror_read, dm, p, mirror, npages, 1);
	EXPECT_INTS(mirror, size, 0, 1);

	ASSERT_EQ(mprotect(p, size, PROT_READ), 0);
	EXPECT_SNAP(dm, p, npages, UHMM_DMIRROR_PROT_READ | level);
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, p, mirror, npages, &cmd), -EPERM);
	EXPECT_INTS(p, size, 0, 1);

	ASSERT_EQ(munmap(p, size), 0);
	free(mirror);
	free(m);
	finish(dm, dev, NULL);
}
VARIANTS(compound)

/* ------------------------------------------------------------------------ */
/* migrate_anon_huge_err, migrate_anon_huge_zero_err                         */
/* ------------------------------------------------------------------------ */

/*
 * Migrate r to the device with FAIL_ALLOC armed (fail) or not; the whole
 * range must move (a failed huge allocation falls back to 4 KiB pages) and
 * the read-back has the data (ints from base, or zeros if base < 0); the
 * device's pages are writable if the mapping is.
 */
static void huge_to_dev(struct uhmm_dmirror *dm, unsigned int dev, struct region *r,
			int base, bool fail, bool writable)
{
	struct uhmm_devmem_stats p0 = pool(dev), p1;
	struct uhmm_stats s0 = stats_now(), s1;
	char *mirror = xmalloc(r->size);
	struct uhmm_dmirror_cmd cmd;

	if (fail)
		ASSERT_EQ(uhmm_dmirror_set_flags(dm, UHMM_DMIRROR_FLAG_FAIL_ALLOC), 0);
	memset(mirror, 0xFF, r->size);
	ASSERT_EQ(run_cmd(uhmm_dmirror_migrate_to_dev, dm, r->ptr, mirror, r->npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, r->npages);
	if (base < 0)
		EXPECT_ZERO(mirror, r->size);
	else
		EXPECT_INTS(mirror, r->size, base, 1);
	s1 = stats_now();
	p1 = pool(dev);
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, r->npages);
	ASSERT_EQ(p1.allocated - p0.allocated, r->npages);
	ASSERT_EQ(p1.in_use, r->npages);
	EXPECT_SNAP_ANY_ORDER(dm, r->ptr, r->npages, dev_snap(dev, writable));
	free(mirror);
}

/*
 * The CPU reads int idx of r (one page): a device-private page faults back
 * (and the device's fault window may take a few neighbours with it); a
 * coherent page is read in place.
 */
static void cpu_read_one(unsigned int dev, struct region *r, size_t idx, int want)
{
	struct uhmm_stats s0 = stats_now(), s1;
	uint64_t in_use = pool(dev).in_use;
	uint64_t back;

	ASSERT_EQ(((volatile int *)r->ptr)[idx], want);
	s1 = stats_now();
	back = s1.pages_to_system - s0.pages_to_system;
	if (is_coherent(dev)) {
		ASSERT_EQ(s1.cpu_faults_private - s0.cpu_faults_private, 0);
		ASSERT_EQ(back, 0);
		ASSERT_EQ(pool(dev).in_use, in_use);
		return;
	}
	ASSERT_EQ(s1.cpu_faults_private - s0.cpu_faults_private, 1);
	ASSERT_GE(back, 1);
	ASSERT_LE(back, 64);
	ASSERT_EQ(pool(dev).in_use, in_use - back);
}

/* migrate_to_sys of all of r; every page back in system memory. */
static void huge_to_sys(struct uhmm_dmirror *dm, unsigned int dev, struct region *r)
{
	struct uhmm_stats s0 = stats_now(), s1;
	uint64_t in_use = pool(dev).in_use;
	struct uhmm_dmirror_cmd cmd;

	ASSERT_EQ(run_cmd(uhmm_dmirror_migrate_to_sys, dm, r->ptr, NULL, r->npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, in_use);
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, in_use);
	ASSERT_EQ(s1.cpu_faults_private - s0.cpu_faults_private, 0);
	ASSERT_EQ(pool(dev).in_use, 0);
}

/*
 * hmm-tests' migrate_anon_huge_err: a THP migrates to the device with
 * FAIL_ALLOC armed: the huge allocation fails, the device falls back to
 * 4 KiB pages and every page moves; the CPU reads one page back.  The
 * failure was one-shot: a fresh THP then migrates whole without the flag.
 * Migrating back with FAIL_ALLOC armed completes too.
 */
static void migrate_anon_huge_err(unsigned int dev)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	struct region r;

	region_map(&r, PMD_PAGES, RW, PRIV_ANON, 1);
	fill_ints(r.ptr, r.size, 0, 1);
	require_pmd_mapped(dm, r.ptr, "THP");
	huge_to_dev(dm, dev, &r, 0, true, true);
	cpu_read_one(dev, &r, 2048, 2048);
	EXPECT_INTS(r.ptr, r.size, 0, 1);
	region_unmap(&r);
	ASSERT_EQ(pool(dev).in_use, 0);

	/* A fresh THP: FAIL_ALLOC was spent, everything moves. */
	region_map(&r, PMD_PAGES, RW, PRIV_ANON, 1);
	fill_ints(r.ptr, r.size, 3, 1);
	require_pmd_mapped(dm, r.ptr, "THP");
	huge_to_dev(dm, dev, &r, 3, false, true);

	/*
	 * Back with FAIL_ALLOC armed.  The kernel's driver fails the huge
	 * system-page allocation of its huge device page and splits; uhmm's
	 * device pages are 4 KiB pages and the destinations are system pages,
	 * so nothing fails (the flag stays armed: cleared below).
	 */
	ASSERT_EQ(uhmm_dmirror_set_flags(dm, UHMM_DMIRROR_FLAG_FAIL_ALLOC), 0);
	huge_to_sys(dm, dev, &r);
	ASSERT_EQ(((volatile int *)r.ptr)[2048], 2048 + 3);
	EXPECT_INTS(r.ptr, r.size, 3, 1);
	ASSERT_EQ(uhmm_dmirror_set_flags(dm, 0), 0);
	finish(dm, dev, &r);
}
VARIANTS(migrate_anon_huge_err)

/*
 * hmm-tests' migrate_anon_huge_zero_err: an empty PMD-aligned range of a
 * read-only mapping (the kernel collects one huge hole), then the huge
 * zero page, each migrated with FAIL_ALLOC armed: both complete, the device
 * and the CPU read zeros.
 */
static void migrate_anon_huge_zero_err(unsigned int dev)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	struct region r;

	region_map(&r, PMD_PAGES, PROT_READ, PRIV_ANON, 1);
	huge_to_dev(dm, dev, &r, -1, true, false);
	cpu_read_one(dev, &r, 2048, 0);
	EXPECT_ZERO(r.ptr, r.size);
	region_unmap(&r);
	ASSERT_EQ(pool(dev).in_use, 0);

	/* The huge zero page. */
	region_map(&r, PMD_PAGES, PROT_READ, PRIV_ANON, 1);
	ASSERT_EQ(*(volatile int *)r.ptr, 0);
	require_pmd_mapped(dm, r.ptr, "huge zero page");
	EXPECT_SNAP(dm, r.ptr, r.npages,
		    UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ | UHMM_DMIRROR_PROT_PMD);
	huge_to_dev(dm, dev, &r, -1, true, false);

	/* The CPU reads it all back: zeros; private pages leave the pool. */
	{
		struct uhmm_stats s0 = stats_now(), s1;

		EXPECT_ZERO(r.ptr, r.size);
		s1 = stats_now();
		ASSERT_EQ(s1.pages_to_system - s0.pages_to_system,
			  is_coherent(dev) ? 0 : r.npages);
		ASSERT_EQ(pool(dev).in_use, is_coherent(dev) ? r.npages : 0);
	}
	finish(dm, dev, &r);
}
VARIANTS(migrate_anon_huge_zero_err)

/* ------------------------------------------------------------------------ */
/* migrate_anon_huge_fault: a THP becomes one huge device page               */
/* ------------------------------------------------------------------------ */

/*
 * hmm-tests' migrate_anon_huge_fault with the current kernel's answer: a
 * PMD-mapped THP migrates to one huge device page (device-private: the
 * snapshot reads 0x26, DEV_PRIVATE_LOCAL | PMD | WRITE, on every page), the
 * device reads the data, and one CPU read brings the whole 2 MiB back in
 * one fault (the kernel migrates the folio back whole).  Coherent pages
 * stay CPU mapped.
 */
static void migrate_anon_huge_fault(unsigned int dev)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	struct region r;
	struct uhmm_stats s0, s1;
	unsigned char m;

	region_map(&r, PMD_PAGES, RW, PRIV_ANON, 1);
	fill_ints(r.ptr, r.size, 7, 1);
	require_pmd_mapped(dm, r.ptr, "THP");
	huge_to_dev(dm, dev, &r, 7, false, true);
	if (!is_coherent(dev))
		EXPECT_SNAP(dm, r.ptr, r.npages, 0x26);
	snapshot(dm, r.ptr, 1, &m);
	ASSERT_TRUE(m & UHMM_DMIRROR_PROT_PMD);
	s0 = stats_now();
	ASSERT_EQ(((volatile int *)r.ptr)[100000], 100000 + 7);
	s1 = stats_now();
	if (!is_coherent(dev)) {
		ASSERT_EQ(s1.cpu_faults_private - s0.cpu_faults_private, 1);
		ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, r.npages);
		ASSERT_EQ(pool(dev).in_use, 0);
	}
	EXPECT_INTS(r.ptr, r.size, 7, 1);
	s1 = stats_now();
	ASSERT_EQ(s1.cpu_faults_private - s0.cpu_faults_private, is_coherent(dev) ? 0 : 1);
	finish(dm, dev, &r);
}
VARIANTS(migrate_anon_huge_fault)

/* ------------------------------------------------------------------------ */
/* huge device pages: splits, eviction, fork                                 */
/* ------------------------------------------------------------------------ */

/* A THP at r on one huge device page of dev (the snapshot says PMD). */
static void huge_on_dev(struct uhmm_dmirror *dm, unsigned int dev, struct region *r, int base)
{
	unsigned char m;

	region_map(r, PMD_PAGES, RW, PRIV_ANON, 1);
	fill_ints(r->ptr, r->size, base, 1);
	require_pmd_mapped(dm, r->ptr, "THP");
	huge_to_dev(dm, dev, r, base, false, true);
	snapshot(dm, r->ptr, 1, &m);
	ASSERT_EQ(m, dev_snap(dev, true) | UHMM_DMIRROR_PROT_PMD);
}

/* Pages [from, to) of r: device pages of dev, none of them PMD (split). */
static void expect_split(struct uhmm_dmirror *dm, unsigned int dev, const char *p,
			 uint64_t npages)
{
	EXPECT_SNAP(dm, p, npages, dev_snap(dev, true));
}

/*
 * Partial munmap, MADV_DONTNEED, mprotect and mremap of a huge device page:
 * it splits, the pages that stay keep their data on the device (snapshot
 * without PMD), the pages that go return to the pool (I4).
 */
static void huge_split(unsigned int dev)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	size_t half = PMD_SIZE / 2;
	struct region r;
	char *q;

	/* munmap of the first half */
	huge_on_dev(dm, dev, &r, 11);
	ASSERT_EQ(munmap(r.ptr, half), 0);
	ASSERT_EQ(pool(dev).in_use, PMD_PAGES / 2);
	expect_split(dm, dev, r.ptr + half, PMD_PAGES / 2);
	ints_expect(__FILE__, __LINE__, r.ptr + half, half, 11 + (int)NINTS(half), 1);
	region_unmap(&r);
	ASSERT_EQ(pool(dev).in_use, 0);

	/* MADV_DONTNEED of one page in the middle: it reads zeros after */
	huge_on_dev(dm, dev, &r, 12);
	ASSERT_EQ(madvise(r.ptr + 100 * PS, PS, MADV_DONTNEED), 0);
	ASSERT_EQ(pool(dev).in_use, PMD_PAGES - 1);
	expect_split(dm, dev, r.ptr, 100);
	expect_split(dm, dev, r.ptr + 101 * PS, PMD_PAGES - 101);
	EXPECT_ZERO(r.ptr + 100 * PS, PS);
	ints_expect(__FILE__, __LINE__, r.ptr, 100 * PS, 12, 1);
	ints_expect(__FILE__, __LINE__, r.ptr + 101 * PS, r.size - 101 * PS,
		    12 + (int)NINTS(101 * PS), 1);
	region_unmap(&r);
	ASSERT_EQ(pool(dev).in_use, 0);

	/* mprotect of the second half read-only: the data stays whole */
	huge_on_dev(dm, dev, &r, 13);
	ASSERT_EQ(mprotect(r.ptr + half, half, PROT_READ), 0);
	EXPECT_INTS(r.ptr, r.size, 13, 1);
	region_unmap(&r);
	ASSERT_EQ(pool(dev).in_use, 0);

	/* mremap of the second half elsewhere: both halves keep their data */
	huge_on_dev(dm, dev, &r, 14);
	q = th_mmap_isolated(half, RW, PRIV_ANON);
	ASSERT_MAPPED(q);
	ASSERT_EQ(mremap(r.ptr + half, half, half, MREMAP_MAYMOVE | MREMAP_FIXED, q), (void *)q);
	/*
	 * mremap brings the moved pages back to the CPU first (docs/design.md
	 * section 4): a private huge page comes back whole (one migration of
	 * its 2 MiB), coherent pages of the moved half become system pages.
	 */
	ASSERT_EQ(pool(dev).in_use, is_coherent(dev) ? PMD_PAGES / 2 : 0);
	if (is_coherent(dev))
		expect_split(dm, dev, r.ptr, PMD_PAGES / 2);
	ints_expect(__FILE__, __LINE__, q, half, 14 + (int)NINTS(half), 1);
	ints_expect(__FILE__, __LINE__, r.ptr, half, 14, 1);
	ASSERT_EQ(munmap(q, half), 0);
	finish(dm, dev, &r);
}
VARIANTS(huge_split)

/* Eviction (release) and fork with a huge device page: the data comes back. */
static void huge_evict_fork(unsigned int dev)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	struct uhmm_stats s0, s1;
	struct region r;
	int status;
	pid_t pid;

	huge_on_dev(dm, dev, &r, 21);
	s0 = stats_now();
	ASSERT_EQ(uhmm_dmirror_release(dm), 0);
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, r.npages);
	ASSERT_EQ(s1.evictions - s0.evictions, r.npages);
	ASSERT_EQ(pool(dev).in_use, 0);
	/*
	 * A private huge page is evicted as one compound entry (the kernel's
	 * migrate_device_range): one huge system page, one move, a THP in the
	 * CPU view again.  (A coherent one left the CPU view page by page.)
	 */
	if (!is_coherent(dev))
		EXPECT_SNAP(dm, r.ptr, r.npages, UHMM_DMIRROR_PROT_WRITE | UHMM_DMIRROR_PROT_PMD);
	EXPECT_INTS(r.ptr, r.size, 21, 1);
	region_unmap(&r);

	huge_on_dev(dm, dev, &r, 22);
	fflush(stdout);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		ints_expect(__FILE__, __LINE__, r.ptr, r.size, 22, 1);
		memset(r.ptr, 0, r.size);	/* private to the child */
		_exit(0);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
	ASSERT_EQ(pool(dev).in_use, 0);	/* fork brought every page back */
	/* ...in one compound migration for the huge page: a THP again */
	if (!is_coherent(dev))
		EXPECT_SNAP(dm, r.ptr, r.npages, UHMM_DMIRROR_PROT_WRITE | UHMM_DMIRROR_PROT_PMD);
	EXPECT_INTS(r.ptr, r.size, 22, 1);
	finish(dm, dev, &r);
}
VARIANTS(huge_evict_fork)

/* ------------------------------------------------------------------------ */
/* file_read, file_write on a regular file (the kernel test's own kind)      */
/* ------------------------------------------------------------------------ */

/*
 * tests/test_mirror.c ports these on memfd and /dev/shm (shmem); the
 * kernel's cases map a regular file (O_TMPFILE in /tmp) MAP_SHARED, and run
 * on both kinds of device.  Read: the device reads the file's data in one
 * fault.  Write: the device's write reaches the mapping and the file.
 */
#define FILE_PAGES 1024UL	/* HMM_BUFFER_SIZE: 4 MiB */

static void file_read(unsigned int dev)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	size_t size = FILE_PAGES * PS;
	int fd = make_file(false, 1);
	int *m = xmalloc(size);
	struct uhmm_dmirror_cmd cmd;
	struct uhmm_stats s0, s1;
	int *p;

	ASSERT_EQ(ftruncate(fd, (off_t)size), 0);
	fill_ints(m, size, 0, 1);
	ASSERT_EQ(pwrite(fd, m, size, 0), (ssize_t)size);
	memset(m, 0, size);
	p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT_MAPPED(p);

	s0 = stats_now();
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, p, m, FILE_PAGES, &cmd), 0);
	s1 = stats_now();
	ASSERT_EQ(cmd.cpages, FILE_PAGES);
	ASSERT_EQ(cmd.faults, 1);
	ASSERT_GT(s1.range_faults - s0.range_faults, 0);
	EXPECT_INTS(m, size, 0, 1);
	/* read-only; a large folio of the page cache may be PMD mapped */
	EXPECT_SNAP_ANY_ORDER(dm, p, FILE_PAGES, UHMM_DMIRROR_PROT_READ);
	/* a write to a read-only shared mapping is refused, nothing written */
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, p, m, 1, &cmd), -EPERM);
	EXPECT_INTS(p, size, 0, 1);

	ASSERT_EQ(munmap(p, size), 0);
	close(fd);
	free(m);
	finish(dm, dev, NULL);
}
VARIANTS(file_read)

static void file_write(unsigned int dev)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	size_t size = FILE_PAGES * PS;
	int fd = make_file(false, 1);
	int *m = xmalloc(size);
	int *p;

	ASSERT_EQ(ftruncate(fd, (off_t)size), 0);
	p = mmap(NULL, size, RW, MAP_SHARED, fd, 0);
	ASSERT_MAPPED(p);
	fill_ints(m, size, 0, 1);
	EXPECT_CMD(uhmm_dmirror_write, dm, p, m, FILE_PAGES, 1);
	EXPECT_INTS(p, size, 0, 1);
	/* shared: writable in place, the file's own pages (no copy) */
	EXPECT_SNAP_ANY_ORDER(dm, p, FILE_PAGES, UHMM_DMIRROR_PROT_WRITE);
	EXPECT_FILE_PAGE(p);

	memset(m, 0, size);
	ASSERT_EQ(pread(fd, m, size, 0), (ssize_t)size);
	EXPECT_INTS(m, size, 0, 1);

	ASSERT_EQ(munmap(p, size), 0);
	close(fd);
	free(m);
	finish(dm, dev, NULL);
}
VARIANTS(file_write)

/* ------------------------------------------------------------------------ */
/* anon_write_child: the child's device is device 0                          */
/* ------------------------------------------------------------------------ */

/*
 * In the kernel's anon_write_child the child always opens device 0 (a
 * device-private one), whatever device the parent migrated the pages to
 * (tests/test_migrate.c's port uses the parent's device in the child): so
 * in the coherent variant the child's private device writes pages that
 * were on a coherent device at fork time.  The parent's data stays.
 */
static void child_round(unsigned int dev, int migrate, int thp)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	struct region r;
	int *mirror;
	int status;
	pid_t pid;

	if (thp) {
		region_map(&r, PMD_PAGES, RW, PRIV_ANON, 1);
	} else {
		r.npages = 1024;
		r.size = r.map_size = r.npages * PS;
		r.map = r.ptr = th_mmap_isolated(r.size, RW, PRIV_ANON);
		ASSERT_MAPPED(r.map);
	}
	mirror = xmalloc(r.size);
	fill_ints(r.ptr, r.size, 0, 1);
	if (migrate)
		huge_to_dev(dm, dev, &r, 0, false, true);
	fill_ints(mirror, r.size, -100000, 1);

	fflush(stdout);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		struct uhmm_dmirror *cdm = open_dev(0);

		EXPECT_INTS(r.ptr, r.size, 0, 1);
		EXPECT_CMD(uhmm_dmirror_write, cdm, r.ptr, mirror, r.npages, 1);
		EXPECT_INTS(r.ptr, r.size, -100000, 1);
		uhmm_dmirror_close(cdm);
		_exit(0);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
	EXPECT_INTS(r.ptr, r.size, 0, 1);
	free(mirror);
	finish(dm, dev, &r);
	pool_drained(0);
}

static void anon_write_child(unsigned int dev)
{
	for (int migrate = 0; migrate < 2; migrate++)
		for (int thp = 0; thp < 2; thp++)
			child_round(dev, migrate, thp);
}
VARIANTS(anon_write_child)

TEST_MAIN()
