/* SPDX-License-Identifier: MIT */
/*
 * test_reentry.c - the interposers under reentrancy (issue: a sanitizer's
 * runtime calling munmap inside uhmm deadlocked CI).  A signal handler that
 * maps and unmaps memory fires at a high rate while the thread it
 * interrupts migrates pages, faults them back and takes the allocator's and
 * the page table's locks: an interposed call from inside uhmm must go
 * straight to the kernel instead of taking uhmm's locks again.  Checked:
 * no deadlock (the harness limit), every page's data, the counters of the
 * work done, and that the handler really ran inside uhmm calls.
 *
 * The driver here is the test itself, on the raw API, with no lock of its
 * own: a handler's munmap while the interrupted thread holds a *driver*
 * lock that the driver's invalidate callback takes again is the driver's
 * deadlock, as it would be in the kernel (docs/design.md section 4).
 */
#include "harness.h"
#include <pthread.h>
#include <uhmm.h>

#define PS	UHMM_PAGE_SIZE
#define NPAGES	64

/* the handler runs on any thread of the process (uhmm's included): atomics */
static int g_handled, g_handler_failed;
static struct uhmm_devmem *g_pool;
static const int g_owner;

static int migrate(uint64_t start, uint64_t end, unsigned long sel, uint64_t fault_page)
{
	uint64_t src[NPAGES], dst[NPAGES], page;
	struct uhmm_migrate m = { .start = start, .end = end, .src = src, .dst = dst,
				  .pgmap_owner = &g_owner, .flags = sel, .fault_page = fault_page };
	int rc = uhmm_migrate_vma_setup(&m);
	if (rc)
		return rc;
	for (uint64_t i = 0; i < m.npages; i++) {
		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		rc = sel == UHMM_MIGRATE_SELECT_SYSTEM ? uhmm_devmem_alloc(g_pool, &page)
						       : uhmm_sys_page_alloc(&page);
		uint64_t from = uhmm_migrate_pfn_to_page(src[i]);
		if (rc || (from && uhmm_page_copy(page, from))) {
			if (!rc)
				uhmm_devmem_page_put(page);
			continue;
		}
		dst[i] = uhmm_migrate_pfn(page);
	}
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	return (int)m.cpages;
}

static int to_ram(struct uhmm_devmem *mem, const struct uhmm_fault *vmf)
{
	(void)mem;
	int rc = migrate(vmf->addr, vmf->addr + PS, UHMM_MIGRATE_SELECT_DEVICE_PRIVATE, vmf->page);
	return rc < 0 ? rc : 0;
}

static void on_alarm(int sig)
{
	(void)sig;
	int e = errno;
	void *p = mmap(NULL, PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		__atomic_store_n(&g_handler_failed, 1, __ATOMIC_RELAXED);
	} else {
		((volatile char *)p)[0] = 1;
		if (madvise(p, PS, MADV_DONTNEED) || mprotect(p, PS, PROT_READ) || munmap(p, PS))
			__atomic_store_n(&g_handler_failed, 1, __ATOMIC_RELAXED);
	}
	__atomic_fetch_add(&g_handled, 1, __ATOMIC_RELAXED);
	errno = e;
}

TEST_TIMEOUT(signal_handler_mm_calls, 60)
{
	int rc = uhmm_init();
	if (rc == -ENOSYS || rc == -EPERM)
		SKIP("userfaultfd not available (uhmm_init: %s)", strerror(-rc));
	ASSERT_EQ(rc, 0);
	if (!(uhmm_features() & UHMM_FEAT_MOVE))
		SKIP("kernel without UFFDIO_MOVE: no migration");
	static const struct uhmm_devmem_ops ops = { .migrate_to_ram = to_ram };
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, &g_owner, &ops, NULL, 4 * NPAGES,
				     &g_pool), 0);
	uint64_t *buf = mmap(NULL, NPAGES * PS, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_MAPPED(buf);
	const uint64_t words = NPAGES * PS / 8;
	for (uint64_t i = 0; i < words; i++)
		buf[i] = i;

	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	ASSERT_EQ(sigaction(SIGPROF, &sa, NULL), 0);
	/* every 50 us of CPU time of this process: lands inside uhmm often */
	struct itimerval it = { { 0, 50 }, { 0, 50 } };
	ASSERT_EQ(setitimer(ITIMER_PROF, &it, NULL), 0);

	struct uhmm_stats before, after;
	uhmm_stats_get(&before);
	uint64_t rounds = getenv("UHMM_TEST_QUICK") ? 300 : 1000, migrated = 0;
	for (uint64_t r = 0; r < rounds; r++) {
		int n = migrate((uintptr_t)buf, (uintptr_t)buf + NPAGES * PS,
				UHMM_MIGRATE_SELECT_SYSTEM, 0);
		ASSERT_EQ(n, NPAGES);
		migrated += (uint64_t)n;
		/* the CPU faults every page back and changes it */
		for (uint64_t p = 0; p < NPAGES; p++)
			buf[p * PS / 8 + r % (PS / 8)] += 1;
	}
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_PROF, &off, NULL);
	uhmm_stats_get(&after);

	for (uint64_t i = 0; i < words; i++) {
		uint64_t in_page = i % (PS / 8);
		uint64_t bumps = 0;
		for (uint64_t r = 0; r < rounds; r++)
			bumps += r % (PS / 8) == in_page;
		ASSERT_EQ(buf[i], i + bumps);
	}
	ASSERT_EQ(__atomic_load_n(&g_handler_failed, __ATOMIC_RELAXED), 0);
	ASSERT_GT(__atomic_load_n(&g_handled, __ATOMIC_RELAXED), 10);
	ASSERT_EQ(after.pages_to_device - before.pages_to_device, migrated);
	ASSERT_EQ(after.pages_to_system - before.pages_to_system, migrated);
	ASSERT_EQ(after.cpu_faults_private - before.cpu_faults_private, migrated);
	printf("reentry: %d signal-handler mm calls during %" PRIu64 " page migrations\n",
	       __atomic_load_n(&g_handled, __ATOMIC_RELAXED), migrated);
	struct uhmm_devmem_stats st;
	ASSERT_EQ(uhmm_devmem_stats(g_pool, &st), 0);
	ASSERT_EQ(st.in_use, 0);
	ASSERT_EQ(st.allocated, migrated);
	ASSERT_EQ(munmap(buf, NPAGES * PS), 0);
	ASSERT_EQ(uhmm_devmem_destroy(g_pool), 0);
}

TEST_MAIN()
