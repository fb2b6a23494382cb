/* SPDX-License-Identifier: MIT */
/*
 * test_selfserve.c - self-service CPU faults (uhmm_self_service): a fault
 * on a page of a self-service range that is on a device, held exclusive or
 * never populated is served by the faulting thread in uhmm's SIGBUS
 * handler.  Each case checks the data, the counters, and that the work was
 * done in the faulting thread (the event callback runs in the thread that
 * did it: the faulting one, never the service thread); also the documented
 * price (a system call on such a page gets EFAULT), chaining of other
 * SIGBUS to the program's own handler, fork, two faulting threads, and bad
 * input.  Runs on device 0 (private; driver-owned memory, and host frames in
 * the [host] variant) and device 2 (coherent) where it applies.
 */
#include "harness.h"
#include "dmtest.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

#define PS	4096UL
#define NPAGES	256UL

/* CPU-fault events: how many, and how many ran in another thread than tid. */
static pid_t g_tid;
static uint64_t g_faults, g_foreign;
static void on_event(const struct uhmm_event *ev, void *arg)
{
	(void)arg;
	if (ev->type != UHMM_EV_CPU_FAULT)
		return;
	__atomic_fetch_add(&g_faults, 1, __ATOMIC_RELAXED);
	if ((pid_t)syscall(SYS_gettid) != __atomic_load_n(&g_tid, __ATOMIC_RELAXED))
		__atomic_fetch_add(&g_foreign, 1, __ATOMIC_RELAXED);
}

static void watch_faults(void)
{
	g_tid = (pid_t)syscall(SYS_gettid);
	g_faults = g_foreign = 0;
	uhmm_set_event_cb(on_event, NULL);
}

/* A self-service range of n pages, or SKIP where the kernel cannot. */
static int *self_range(size_t n)
{
	int *p = map_anon(n * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int rc = uhmm_self_service((uintptr_t)p, n * PS);

	if (rc == -ENOSYS || rc == -EPERM)
		SKIP("userfaultfd not available (%s)", strerror(-rc));
	if (rc == -EOPNOTSUPP)
		SKIP("the kernel has no UFFD_FEATURE_SIGBUS");
	ASSERT_EQ(rc, 0);
	return p;
}

static void to_dev(struct uhmm_dmirror *dm, void *p, size_t n)
{
	EXPECT_CMD(uhmm_dmirror_migrate_to_dev, dm, p, NULL, n, 0);
}

/* Device-private pages come back in the faulting thread, data exact. */
TEST(private_pages)
{
	struct uhmm_dmirror *dm = open_dev(0);
	int *p = self_range(NPAGES);

	fill_ints(p, NPAGES * PS, 3, 1);
	to_dev(dm, p, NPAGES);
	ASSERT_EQ(pool(0).in_use, NPAGES);
	struct uhmm_stats s0 = stats_now();

	watch_faults();
	EXPECT_INTS(p, NPAGES * PS, 3, 1);
	uhmm_set_event_cb(NULL, NULL);
	struct uhmm_stats s1 = stats_now();

	ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, NPAGES);
	ASSERT_GE(s1.cpu_faults_private - s0.cpu_faults_private, 1);
	ASSERT_EQ(s1.cpu_faults_sigbus - s0.cpu_faults_sigbus, 0);
	ASSERT_EQ(g_faults, s1.cpu_faults_private - s0.cpu_faults_private);
	ASSERT_EQ(g_foreign, 0);	/* none went to the service thread */
	ASSERT_EQ(pool(0).in_use, 0);
	/* and again: the range stays self-service */
	to_dev(dm, p, NPAGES);
	p[5 * PS / sizeof(int)] = -1;
	ASSERT_EQ(p[5 * PS / sizeof(int) + 1], (int)(5 * PS / sizeof(int) + 1 + 3));
	ASSERT_EQ(munmap(p, NPAGES * PS), 0);
	uhmm_dmirror_close(dm);
	pool_drained(0);
}

/* Never-populated pages: zero pages, one self-served fault each. */
TEST(holes)
{
	int *p = self_range(16);
	struct uhmm_stats s0 = stats_now();

	watch_faults();
	for (size_t i = 0; i < 16; i++)
		ASSERT_EQ(p[i * PS / sizeof(int)], 0);
	p[0] = 7;	/* a write after the zero page: the kernel's copy-on-write */
	uhmm_set_event_cb(NULL, NULL);
	struct uhmm_stats s1 = stats_now();

	ASSERT_EQ(p[0], 7);
	ASSERT_EQ(s1.cpu_faults_missing - s0.cpu_faults_missing, 16);
	ASSERT_EQ(g_faults, 16);
	ASSERT_EQ(g_foreign, 0);
	ASSERT_EQ(munmap(p, 16 * PS), 0);
}

/* An exclusive page is revoked by the thread that writes it. */
TEST(exclusive_pages)
{
	struct uhmm_dmirror *dm = open_dev(0);
	int *p = self_range(8);
	uint64_t old = 0;

	fill_ints(p, 8 * PS, 10, 1);
	EXPECT_CMD(uhmm_dmirror_exclusive, dm, p, NULL, 8, 0);
	ASSERT_EQ(uhmm_dmirror_atomic_add(dm, (uintptr_t)p, 5, &old), 0);
	struct uhmm_stats s0 = stats_now();

	watch_faults();
	for (size_t i = 0; i < 8; i++)
		p[i * PS / sizeof(int) + 1] += 1;
	uhmm_set_event_cb(NULL, NULL);
	struct uhmm_stats s1 = stats_now();

	ASSERT_EQ(s1.exclusive_revokes - s0.exclusive_revokes, 8);
	ASSERT_EQ(s1.cpu_faults_exclusive - s0.cpu_faults_exclusive, 8);
	ASSERT_EQ(g_foreign, 0);
	ASSERT_EQ(g_faults, 8);
	/* the device's atomic is there, and every page kept its data */
	uint64_t w0 = (uint64_t)(uint32_t)10 | (uint64_t)(uint32_t)11 << 32;
	ASSERT_EQ(*(uint64_t *)p, w0 + 5 + (1ULL << 32));
	for (size_t i = 1; i < 8; i++)
		ASSERT_EQ(p[i * PS / sizeof(int)], (int)(i * PS / sizeof(int) + 10));
	ASSERT_EQ(munmap(p, 8 * PS), 0);
	uhmm_dmirror_close(dm);
}

/* MADV_DONTNEED of part of the range: it reads zeros, and stays self-service. */
TEST(discard_keeps_mode)
{
	struct uhmm_dmirror *dm = open_dev(0);
	int *p = self_range(16);

	fill_ints(p, 16 * PS, 5, 1);
	to_dev(dm, p, 16);
	ASSERT_EQ(madvise(p, 8 * PS, MADV_DONTNEED), 0);	/* device pages freed: zeros */
	ASSERT_EQ(pool(0).in_use, 8);
	struct uhmm_stats s0 = stats_now();

	watch_faults();
	for (size_t i = 0; i < 8; i++)
		ASSERT_EQ(p[i * PS / sizeof(int)], 0);
	EXPECT_INTS((char *)p + 8 * PS, 8 * PS, (int)(8 * PS / sizeof(int)) + 5, 1);
	uhmm_set_event_cb(NULL, NULL);
	struct uhmm_stats s1 = stats_now();

	ASSERT_EQ(s1.cpu_faults_missing - s0.cpu_faults_missing, 8);
	ASSERT_GE(s1.cpu_faults_private - s0.cpu_faults_private, 1);
	ASSERT_EQ(g_foreign, 0);
	/* and it migrates again */
	fill_ints(p, 16 * PS, 6, 1);
	to_dev(dm, p, 16);
	EXPECT_INTS(p, 16 * PS, 6, 1);
	ASSERT_EQ(munmap(p, 16 * PS), 0);
	uhmm_dmirror_close(dm);
	pool_drained(0);
}

/* The documented price: a system call on a page that is on a device: EFAULT. */
TEST(syscall_efault)
{
	struct uhmm_dmirror *dm = open_dev(0);
	int *p = self_range(4);
	int fds[2];

	fill_ints(p, 4 * PS, 1, 1);
	to_dev(dm, p, 4);
	ASSERT_EQ(pipe(fds), 0);
	errno = 0;
	ASSERT_EQ(write(fds[1], p, PS), -1);	/* the kernel reads the page: not there */
	ASSERT_EQ(errno, EFAULT);
	ASSERT_EQ(p[0], 1);			/* a CPU access brings it back */
	ASSERT_EQ(write(fds[1], p, PS), (ssize_t)PS);
	close(fds[0]);
	close(fds[1]);
	EXPECT_INTS(p, 4 * PS, 1, 1);
	ASSERT_EQ(munmap(p, 4 * PS), 0);
	uhmm_dmirror_close(dm);
}

/* Another SIGBUS (a mapped file's page past its end) reaches the program's handler. */
static sigjmp_buf g_jump;
static volatile int g_app_sigbus;
static void app_sigbus(int sig)
{
	(void)sig;
	g_app_sigbus++;
	siglongjmp(g_jump, 1);
}

TEST(chains_other_sigbus)
{
	struct sigaction sa = { .sa_handler = app_sigbus };

	sigemptyset(&sa.sa_mask);
	ASSERT_EQ(sigaction(SIGBUS, &sa, NULL), 0);	/* before uhmm's, as documented */
	int *p = self_range(4);
	FILE *f = tmpfile();

	ASSERT_NOT_NULL(f);
	ASSERT_EQ(ftruncate(fileno(f), (off_t)PS), 0);
	char *m = mmap(NULL, 2 * PS, PROT_READ, MAP_SHARED, fileno(f), 0);

	ASSERT_MAPPED(m);
	if (sigsetjmp(g_jump, 1) == 0)
		(void)*(volatile char *)(m + PS);	/* past the end of the file */
	ASSERT_EQ(g_app_sigbus, 1);
	ASSERT_EQ(p[1], 0);	/* and uhmm's still serves its own */
	ASSERT_EQ(g_app_sigbus, 1);
	munmap(m, 2 * PS);
	fclose(f);
	ASSERT_EQ(munmap(p, 4 * PS), 0);
}

/* fork(): the child sees the data that was on the device. */
TEST(fork_child_sees_data)
{
	struct uhmm_dmirror *dm = open_dev(0);
	int *p = self_range(32);
	int status;

	fill_ints(p, 32 * PS, 40, 1);
	to_dev(dm, p, 32);
	fflush(stdout);
	pid_t pid = fork();

	ASSERT_GE(pid, 0);
	if (pid == 0) {
		ints_expect(__FILE__, __LINE__, p, 32 * PS, 40, 1);
		_exit(0);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	EXPECT_INTS(p, 32 * PS, 40, 1);
	ASSERT_EQ(pool(0).in_use, 0);
	ASSERT_EQ(munmap(p, 32 * PS), 0);
	uhmm_dmirror_close(dm);
}

/* Two threads fault on pages of one range at once, each serving its own. */
struct reader {
	int *p;
	size_t from, to;
	uint64_t bad;
};

static void *read_pages(void *arg)
{
	struct reader *r = arg;

	for (size_t i = r->from; i < r->to; i += 3)
		if (r->p[i * PS / sizeof(int)] != (int)(i * PS / sizeof(int) + 9))
			r->bad++;
	return NULL;
}

TEST(two_threads)
{
	struct uhmm_dmirror *dm = open_dev(0);
	int *p = self_range(NPAGES);

	fill_ints(p, NPAGES * PS, 9, 1);
	for (int round = 0; round < 20; round++) {
		to_dev(dm, p, NPAGES);
		struct reader r[2] = { { p, 0, NPAGES, 0 }, { p, 1, NPAGES, 0 } };
		pthread_t t[2];

		for (int i = 0; i < 2; i++)
			ASSERT_EQ(pthread_create(&t[i], NULL, read_pages, &r[i]), 0);
		for (int i = 0; i < 2; i++)
			pthread_join(t[i], NULL);
		ASSERT_EQ(r[0].bad + r[1].bad, 0);
	}
	EXPECT_INTS(p, NPAGES * PS, 9, 1);
	ASSERT_EQ(munmap(p, NPAGES * PS), 0);
	uhmm_dmirror_close(dm);
	pool_drained(0);
}

TEST(bad_input)
{
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *s = map_anon(PS, PROT_READ | PROT_WRITE, MAP_SHARED);
	char *ro = map_anon(PS, PROT_READ, MAP_PRIVATE);
	int rc = uhmm_self_service((uintptr_t)p, PS);

	if (rc == -ENOSYS || rc == -EPERM || rc == -EOPNOTSUPP)
		SKIP("self-service faults not available here (%s)", strerror(-rc));
	ASSERT_EQ(rc, 0);
	ASSERT_EQ(uhmm_self_service((uintptr_t)p, PS), -EBUSY);
	ASSERT_EQ(uhmm_self_service((uintptr_t)p + PS, 0), -EINVAL);
	ASSERT_EQ(uhmm_self_service((uintptr_t)p + 1, PS), -EINVAL);
	ASSERT_EQ(uhmm_self_service((uintptr_t)p + PS, PS + 1), -EINVAL);
	ASSERT_EQ(uhmm_self_service(UINT64_MAX & ~(PS - 1), 2 * PS), -EINVAL);
	ASSERT_EQ(uhmm_self_service((uintptr_t)p + PS, 1ULL << 40), -EFAULT);
	ASSERT_EQ(uhmm_self_service((uintptr_t)s, PS), -EINVAL);
	ASSERT_EQ(uhmm_self_service((uintptr_t)ro, PS), -EINVAL);
	ASSERT_EQ(munmap(p, 4 * PS), 0);
	/* the unmapped range is forgotten: a new mapping there may be self-service again */
	char *q = mmap(p, 4 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
		       -1, 0);
	ASSERT_TRUE(q == p);
	ASSERT_EQ(uhmm_self_service((uintptr_t)q, 4 * PS), 0);
	ASSERT_EQ(q[3 * PS], 0);
	munmap(q, 4 * PS);
	munmap(s, PS);
	munmap(ro, PS);
}

TEST_MAIN()
