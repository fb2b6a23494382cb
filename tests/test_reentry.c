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
 */
#include "harness.h"
#include <pthread.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

#define PS	UHMM_PAGE_SIZE
#define NPAGES	64

static volatile sig_atomic_t g_handled, g_handler_failed;

static void on_alarm(int sig)
{
	(void)sig;
	int e = errno;
	void *p = mmap(NULL, PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		g_handler_failed = 1;
	} else {
		((volatile char *)p)[0] = 1;
		if (madvise(p, PS, MADV_DONTNEED) || mprotect(p, PS, PROT_READ) || munmap(p, PS))
			g_handler_failed = 1;
	}
	g_handled++;
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
	struct uhmm_dmirror *dm;
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
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
	uint64_t rounds = getenv("UHMM_TEST_QUICK") ? 1000 : 4000, migrated = 0;
	for (uint64_t r = 0; r < rounds; r++) {
		struct uhmm_dmirror_cmd cmd = { .addr = (uintptr_t)buf, .npages = NPAGES };
		ASSERT_EQ(uhmm_dmirror_migrate_to_dev(dm, &cmd), 0);
		ASSERT_EQ(cmd.cpages, NPAGES);
		migrated += cmd.cpages;
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
	ASSERT_EQ(g_handler_failed, 0);
	ASSERT_GT(g_handled, 10);
	ASSERT_EQ(after.pages_to_device - before.pages_to_device, migrated);
	ASSERT_EQ(after.pages_to_system - before.pages_to_system, migrated);
	ASSERT_GE(after.cpu_faults_private - before.cpu_faults_private, rounds);
	printf("reentry: %d signal-handler mm calls during %" PRIu64 " page migrations\n",
	       (int)g_handled, migrated);
	uhmm_dmirror_close(dm);
	struct uhmm_devmem_stats st;
	ASSERT_EQ(uhmm_dmirror_devmem_stats(0, &st), 0);
	ASSERT_EQ(st.in_use, 0);
	ASSERT_EQ(munmap(buf, NPAGES * PS), 0);
}

TEST_MAIN()
