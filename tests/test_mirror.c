/* SPDX-License-Identifier: MIT */
/*
 * test_mirror.c - conformance tests for address-space mirroring through the
 * reference device (uhmm_dmirror_*): device reads and writes of private,
 * shared, huge and file-backed memory, page-table snapshots without device
 * memory, and the invalidation of device mirrors when the application
 * changes its mappings (mprotect, munmap, mremap, madvise(MADV_DONTNEED)).
 *
 * The semantics are those of the kernel's selftest hmm-tests.c against
 * lib/test_hmm.c; every case checks the data and the counters (cpages,
 * faults, pool counters, per-mirror invalidation counts, process stats).
 */
#include "harness.h"
#include "dmtest.h"
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

#define PS		UHMM_PAGE_SIZE
#define NPAGES		256UL			/* 1 MiB buffers, as hmm-tests */
#define NROUNDS		10
#define TWO_MB		(2UL << 20)
#define NINTS(size)	((size) / sizeof(int))

/* ------------------------------------------------------------------------ */
/* helpers                                                                   */
/* ------------------------------------------------------------------------ */

/* A 2 MiB aligned, MADV_HUGEPAGE region inside a 4 MiB reservation. */
static void *map_huge_aligned(void **base)
{
	char *p = map_anon(2 * TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *a = (char *)(((uintptr_t)p + TWO_MB - 1) & ~(TWO_MB - 1));

	ASSERT_EQ(madvise(a, TWO_MB, MADV_HUGEPAGE), 0);
	*base = p;
	return a;
}

static long first_nonzero(const void *buf, size_t size)
{
	const unsigned char *p = buf;

	for (size_t i = 0; i < size; i++)
		if (p[i])
			return (long)i;
	return -1;
}

/* Nothing is mapped at [addr, addr + len). */
static int is_hole(const void *addr, size_t len)
{
	return msync((void *)(uintptr_t)addr, len, MS_ASYNC) == -1 && errno == ENOMEM;
}

static void get_inval(struct uhmm_dmirror *dm, uint64_t c[8])
{
	ASSERT_EQ(uhmm_dmirror_invalidations(dm, c), 0);
}

/* After the last close: the device holds no page, and mirroring alone never allocated one. */
static void check_pool_untouched(unsigned int dev)
{
	struct uhmm_devmem_stats st;

	ASSERT_EQ(uhmm_dmirror_devmem_stats(dev, &st), 0);
	ASSERT_EQ(st.in_use, 0);
	ASSERT_EQ(st.allocated, 0);
	ASSERT_EQ(st.freed, 0);
}

/* ------------------------------------------------------------------------ */
/* open / close                                                              */
/* ------------------------------------------------------------------------ */

TEST(open_close)
{
	struct uhmm_dmirror *dm[UHMM_DMIRROR_NDEVICES], *twin, *bad = NULL;
	struct uhmm_devmem_stats st;
	int *p = map_anon(PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *m = xmalloc(PS);
	int ret;

	fill_ints(p, PS, 7, 1);
	for (unsigned int d = 0; d < UHMM_DMIRROR_NDEVICES; d++) {
		dm[d] = open_dev(d);
		for (unsigned int e = 0; e < d; e++)
			ASSERT_TRUE(dm[d] != dm[e]);
		/* each device works */
		memset(m, 0, PS);
		EXPECT_CMD(uhmm_dmirror_read, dm[d], p, m, 1, 1);
		ASSERT_INTS(m, PS, 7, 1);
	}
	/* the same index twice: two mirrors */
	twin = open_dev(0);
	ASSERT_TRUE(twin != dm[0]);
	uhmm_dmirror_close(twin);

	ret = uhmm_dmirror_open(UHMM_DMIRROR_NDEVICES, &bad);
	fprintf(stderr, "open(dev %d) -> %d\n", UHMM_DMIRROR_NDEVICES, ret);
	ASSERT_TRUE(ret == -EINVAL || ret == -ENODEV);
	ASSERT_TRUE(bad == NULL);
	ASSERT_LT(uhmm_dmirror_open(~0u, &bad), 0);
	ASSERT_LT(uhmm_dmirror_devmem_stats(UHMM_DMIRROR_NDEVICES, &st), 0);

	for (unsigned int d = 0; d < UHMM_DMIRROR_NDEVICES; d++) {
		uhmm_dmirror_close(dm[d]);
		check_pool_untouched(d);
	}
	ASSERT_INTS(p, PS, 7, 1);
	munmap(p, PS);
	free(m);
}

/* ------------------------------------------------------------------------ */
/* anonymous private memory                                                  */
/* ------------------------------------------------------------------------ */

/*
 * Page 0 never touched (pte_none), page 1 the zero page from a CPU read,
 * pages 2.. written by the CPU; the whole buffer read-only.
 */
static void anon_read(unsigned int dev)
{
	size_t size = NPAGES * PS;
	int *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(dev);
	struct uhmm_dmirror_cmd cmd;
	struct uhmm_stats s0, s1;
	size_t z = NINTS(2 * PS);

	for (size_t i = z; i < NINTS(size); i++)
		p[i] = (int)i;
	ASSERT_EQ(mprotect(p, size, PROT_READ), 0);
	ASSERT_EQ(((volatile int *)p)[NINTS(PS)], 0);

	memset(m, 0xA5, size);
	uhmm_stats_get(&s0);
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, p, m, NPAGES, &cmd), 0);
	uhmm_stats_get(&s1);
	ASSERT_EQ(cmd.cpages, NPAGES);
	ASSERT_EQ(cmd.faults, 1);
	ASSERT_GT(s1.range_faults, s0.range_faults);

	ASSERT_EQ(first_nonzero(m, 2 * PS), -1);
	for (size_t i = z; i < NINTS(size); i++)
		ASSERT_EQ(m[i], (int)i);
	/* the CPU view is unchanged */
	ASSERT_EQ(first_nonzero(p, 2 * PS), -1);
	for (size_t i = z; i < NINTS(size); i++)
		ASSERT_EQ(p[i], (int)i);

	uhmm_dmirror_close(dm);
	check_pool_untouched(dev);
	munmap(p, size);
	free(m);
}

TEST(anon_read_dev0) { anon_read(0); }
TEST(anon_read_dev2) { anon_read(2); }

/* A device read of PROT_NONE memory fails and leaves the caller's buffer alone. */
TEST(anon_read_prot)
{
	size_t size = NPAGES * PS;
	int *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(0);

	fill_ints(p, size, 0, 1);
	fill_ints(m, size, 0, -1);
	ASSERT_EQ(mprotect(p, size, PROT_NONE), 0);
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, p, m, NPAGES, NULL), -EFAULT);

	ASSERT_EQ(mprotect(p, size, PROT_READ), 0);
	ASSERT_INTS(p, size, 0, 1);
	ASSERT_INTS(m, size, 0, -1);

	/* readable again: the device can read it now */
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, p, m, NPAGES, NULL), 0);
	ASSERT_INTS(m, size, 0, 1);

	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	munmap(p, size);
	free(m);
}

static void anon_write(unsigned int dev)
{
	size_t size = NPAGES * PS;
	int *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(dev);

	fill_ints(m, size, 0, 1);
	EXPECT_CMD(uhmm_dmirror_write, dm, p, m, NPAGES, 1);
	ASSERT_INTS(p, size, 0, 1);

	uhmm_dmirror_close(dm);
	check_pool_untouched(dev);
	ASSERT_INTS(p, size, 0, 1);
	munmap(p, size);
	free(m);
}

TEST(anon_write_dev0) { anon_write(0); }
TEST(anon_write_dev2) { anon_write(2); }

/* Read-only mapping: -EPERM and nothing written; after mprotect(RW) it works. */
TEST(anon_write_prot)
{
	size_t size = NPAGES * PS;
	int *p = map_anon(size, PROT_READ, MAP_PRIVATE);
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(0);

	/* the device reads one zero page */
	memset(m, 0x5A, PS);
	EXPECT_CMD(uhmm_dmirror_read, dm, p, m, 1, 1);
	ASSERT_EQ(first_nonzero(m, PS), -1);

	fill_ints(m, size, 0, 1);
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, p, m, NPAGES, NULL), -EPERM);
	ASSERT_EQ(first_nonzero(p, size), -1);

	ASSERT_EQ(mprotect(p, size, PROT_READ | PROT_WRITE), 0);
	EXPECT_CMD(uhmm_dmirror_write, dm, p, m, NPAGES, 1);
	ASSERT_INTS(p, size, 0, 1);

	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	munmap(p, size);
	free(m);
}

/*
 * Fresh buffers each round take one fault; reading the same range again
 * with no CPU mapping change in between takes none (the mirror page table
 * still holds the pages, as lib/test_hmm.c's xarray does), and it sees what
 * the CPU wrote meanwhile (same pages).
 */
TEST(anon_read_multiple)
{
	size_t size = NPAGES * PS;
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(0);

	for (int c = 0; c < NROUNDS; c++) {
		int *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);

		fill_ints(p, size, c, 1);
		EXPECT_CMD(uhmm_dmirror_read, dm, p, m, NPAGES, 1);
		ASSERT_INTS(m, size, c, 1);

		memset(m, 0, size);
		EXPECT_CMD(uhmm_dmirror_read, dm, p, m, NPAGES, 0);
		ASSERT_INTS(m, size, c, 1);

		fill_ints(p, size, c + 1000, 1);
		EXPECT_CMD(uhmm_dmirror_read, dm, p, m, NPAGES, 0);
		ASSERT_INTS(m, size, c + 1000, 1);
		ASSERT_EQ(munmap(p, size), 0);
	}
	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	free(m);
}

/* A write maps pages writable in the mirror: later writes and reads take no fault. */
TEST(anon_write_multiple)
{
	size_t size = NPAGES * PS;
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(0);

	for (int c = 0; c < NROUNDS; c++) {
		int *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);

		fill_ints(m, size, c, 1);
		EXPECT_CMD(uhmm_dmirror_write, dm, p, m, NPAGES, 1);
		ASSERT_INTS(p, size, c, 1);

		fill_ints(m, size, c, -1);
		EXPECT_CMD(uhmm_dmirror_write, dm, p, m, NPAGES, 0);
		ASSERT_INTS(p, size, c, -1);

		memset(m, 0, size);
		EXPECT_CMD(uhmm_dmirror_read, dm, p, m, NPAGES, 0);
		ASSERT_INTS(m, size, c, -1);
		ASSERT_EQ(munmap(p, size), 0);
	}
	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	free(m);
}

/* ------------------------------------------------------------------------ */
/* device reads racing with munmap                                           */
/* ------------------------------------------------------------------------ */

struct teardown {
	struct uhmm_dmirror *dm;
	int *ptr;
	int *mirror;
	size_t size;
	int base;
	atomic_int unmapped;		/* munmap() of the upper half returned */
	int bad_ret;			/* a result other than 0 / -EFAULT */
	long bad_data;			/* first wrong int of a successful read, or -1 */
	int bad_cpages;
	int reads;
	int efaults;
};

static void *teardown_reader(void *arg)
{
	struct teardown *t = arg;
	struct uhmm_dmirror_cmd cmd;

	for (;;) {
		int after = atomic_load(&t->unmapped);
		int ret = run_cmd(uhmm_dmirror_read, t->dm, t->ptr, t->mirror,
				  t->size / PS, &cmd);

		t->reads++;
		if (ret == -EFAULT) {
			t->efaults++;
		} else if (ret != 0) {
			t->bad_ret = ret;
			break;
		} else if (!after) {
			/* started before munmap() returned: all old data */
			if (cmd.cpages != t->size / PS)
				t->bad_cpages = (int)cmd.cpages;
			t->bad_data = diff_ints(t->mirror, t->size, t->base, 1);
			if (t->bad_cpages || t->bad_data != -1)
				break;
		}
		if (after)
			break;		/* one read after the unmap is enough */
	}
	return NULL;
}

static void teardown_round(struct uhmm_dmirror *dm, int *m, int c, unsigned int *seed)
{
	size_t size = NPAGES * PS, half = size / 2;
	struct teardown t = {
		.dm = dm, .mirror = m, .size = size, .base = c, .bad_data = -1,
	};
	struct timespec d = { 0, (long)(rand_r(seed) % 200000) };
	struct uhmm_dmirror_cmd cmd;
	pthread_t th;

	t.ptr = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	fill_ints(t.ptr, size, c, 1);
	ASSERT_EQ(pthread_create(&th, NULL, teardown_reader, &t), 0);
	nanosleep(&d, NULL);
	ASSERT_EQ(munmap((char *)t.ptr + half, half), 0);
	atomic_store(&t.unmapped, 1);
	ASSERT_EQ(pthread_join(th, NULL), 0);

	ASSERT_EQ(t.bad_ret, 0);
	ASSERT_EQ(t.bad_cpages, 0);
	ASSERT_EQ(t.bad_data, -1);
	ASSERT_GE(t.reads, 1);

	/* the lower half is intact for the device; the upper half is gone */
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, t.ptr, m, half / PS, &cmd), 0);
	ASSERT_EQ(cmd.cpages, half / PS);
	ASSERT_INTS(m, half, c, 1);
	if (is_hole((char *)t.ptr + half, half))
		ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, (char *)t.ptr + half, m,
				  half / PS, NULL), -EFAULT);
	ASSERT_EQ(munmap(t.ptr, half), 0);
}

TEST(anon_teardown)
{
	struct uhmm_dmirror *dm = open_dev(0);
	int *m = xmalloc(NPAGES * PS);
	unsigned int seed = (unsigned int)th_now_ns();

	for (int c = 0; c < NROUNDS; c++)
		teardown_round(dm, m, c, &seed);
	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	free(m);
}

/* ------------------------------------------------------------------------ */
/* shared, huge and hugetlb memory                                           */
/* ------------------------------------------------------------------------ */

/* A child's device write to MAP_SHARED anonymous memory is seen by the parent. */
TEST(anon_write_child_shared)
{
	size_t size = NPAGES * PS;
	int *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_SHARED);
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(0);
	struct uhmm_dmirror_cmd cmd;
	int status;
	pid_t pid;

	fill_ints(p, size, 0, 1);
	fill_ints(m, size, 0, -1);
	/* the parent's mirror holds the shared pages before the fork */
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, p, m, NPAGES, &cmd), 0);
	ASSERT_EQ(cmd.cpages, NPAGES);
	ASSERT_INTS(m, size, 0, 1);
	fill_ints(m, size, 0, -1);

	fflush(stdout);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		struct uhmm_dmirror *cdm;

		ASSERT_INTS(p, size, 0, 1);
		ASSERT_INTS(m, size, 0, -1);
		cdm = open_dev(0);
		EXPECT_CMD(uhmm_dmirror_write, cdm, p, m, NPAGES, 1);
		ASSERT_INTS(p, size, 0, -1);
		uhmm_dmirror_close(cdm);
		_exit(0);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
	ASSERT_INTS(p, size, 0, -1);

	/* the parent's device sees the child's write too (same shared pages) */
	memset(m, 0, size);
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, p, m, NPAGES, &cmd), 0);
	ASSERT_EQ(cmd.cpages, NPAGES);
	ASSERT_INTS(m, size, 0, -1);

	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	munmap(p, size);
	free(m);
}

TEST(anon_write_huge)
{
	void *base;
	int *p = map_huge_aligned(&base);
	uint64_t npages = TWO_MB / PS;
	int *m = xmalloc(TWO_MB);
	struct uhmm_dmirror *dm = open_dev(0);
	struct uhmm_dmirror_cmd cmd;

	fill_ints(m, TWO_MB, 0, 1);
	EXPECT_CMD(uhmm_dmirror_write, dm, p, m, npages, 1);
	ASSERT_INTS(p, TWO_MB, 0, 1);

	memset(m, 0, TWO_MB);
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, p, m, npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, npages);
	ASSERT_INTS(m, TWO_MB, 0, 1);

	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	munmap(base, 2 * TWO_MB);
	free(m);
}

TEST(anon_write_hugetlbfs)
{
	uint64_t npages = TWO_MB / PS;
	struct uhmm_dmirror *dm;
	int *p, *m;

	p = mmap(NULL, TWO_MB, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (p == MAP_FAILED && errno == ENOMEM)
		SKIP("no free hugetlb pages (vm.nr_hugepages)");
	if (p == MAP_FAILED)
		SKIP("MAP_HUGETLB not supported: %s", strerror(errno));

	m = xmalloc(TWO_MB);
	dm = open_dev(0);
	fill_ints(m, TWO_MB, 0, 1);
	EXPECT_CMD(uhmm_dmirror_write, dm, p, m, npages, 1);
	ASSERT_INTS(p, TWO_MB, 0, 1);

	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	munmap(p, TWO_MB);
	free(m);
}

/* ------------------------------------------------------------------------ */
/* file-backed shared memory: memfd and a tmpfs file in /dev/shm             */
/* ------------------------------------------------------------------------ */

enum file_kind { FILE_MEMFD, FILE_SHM };

static int make_file(enum file_kind kind, size_t size)
{
	int fd;

	if (kind == FILE_MEMFD) {
		fd = memfd_create("uhmm-test", MFD_CLOEXEC);
	} else {
		char path[] = "/dev/shm/uhmm-test-XXXXXX";

		fd = mkstemp(path);
		if (fd < 0 && (errno == ENOENT || errno == EROFS))
			SKIP("no writable tmpfs at /dev/shm");
		if (fd >= 0)
			unlink(path);
	}
	ASSERT_GE(fd, 0);
	ASSERT_EQ(ftruncate(fd, (off_t)size), 0);
	return fd;
}

static void file_read(enum file_kind kind)
{
	size_t size = NPAGES * PS;
	int fd = make_file(kind, size);
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(0);
	struct uhmm_dmirror_cmd cmd;
	int *p;

	fill_ints(m, size, 0, 1);
	ASSERT_EQ(pwrite(fd, m, size, 0), (ssize_t)size);
	memset(m, 0, size);
	p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT_MAPPED(p);

	EXPECT_CMD(uhmm_dmirror_read, dm, p, m, NPAGES, 1);
	ASSERT_INTS(m, size, 0, 1);

	/* a later pwrite() reaches the same pages: the device sees it */
	fill_ints(m, size, 0, -1);
	ASSERT_EQ(pwrite(fd, m, size, 0), (ssize_t)size);
	memset(m, 0, size);
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, p, m, NPAGES, &cmd), 0);
	ASSERT_EQ(cmd.cpages, NPAGES);
	ASSERT_INTS(m, size, 0, -1);
	ASSERT_INTS(p, size, 0, -1);

	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	munmap(p, size);
	close(fd);
	free(m);
}

static void file_write(enum file_kind kind)
{
	size_t size = NPAGES * PS;
	int fd = make_file(kind, size);
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(0);
	int *p;

	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_MAPPED(p);
	fill_ints(m, size, 0, 1);
	EXPECT_CMD(uhmm_dmirror_write, dm, p, m, NPAGES, 1);
	ASSERT_INTS(p, size, 0, 1);

	memset(m, 0, size);
	ASSERT_EQ(pread(fd, m, size, 0), (ssize_t)size);
	ASSERT_INTS(m, size, 0, 1);

	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	munmap(p, size);
	close(fd);
	free(m);
}

TEST(file_read_memfd) { file_read(FILE_MEMFD); }
TEST(file_read_shm) { file_read(FILE_SHM); }
TEST(file_write_memfd) { file_write(FILE_MEMFD); }
TEST(file_write_shm) { file_write(FILE_SHM); }

/* ------------------------------------------------------------------------ */
/* snapshots (no device memory involved)                                     */
/* ------------------------------------------------------------------------ */

/*
 * Layout of 8 pages:
 *   0 PROT_NONE -> ERROR          1 hole -> ERROR
 *   2 read-only zero page -> ZERO|READ
 *   3 read-only data -> READ      4 written -> WRITE
 *   5 RW never touched -> NONE    6 RO never touched -> NONE
 *   7 written -> WRITE
 */
/* Set up the layout above; page 1 is unmapped last. */
static char *snapshot_layout(void)
{
	char *p = map_anon(8 * PS, PROT_NONE, MAP_PRIVATE);
	int val;

	ASSERT_EQ(mprotect(p + 2 * PS, PS, PROT_READ), 0);
	val = *(volatile int *)(p + 2 * PS) + 3;
	ASSERT_EQ(val, 3);
	ASSERT_EQ(mprotect(p + 3 * PS, PS, PROT_READ | PROT_WRITE), 0);
	*(int *)(p + 3 * PS) = val;
	ASSERT_EQ(mprotect(p + 3 * PS, PS, PROT_READ), 0);
	ASSERT_EQ(mprotect(p + 4 * PS, 2 * PS, PROT_READ | PROT_WRITE), 0);
	*(int *)(p + 4 * PS) = val;
	ASSERT_EQ(mprotect(p + 6 * PS, PS, PROT_READ), 0);
	ASSERT_EQ(mprotect(p + 7 * PS, PS, PROT_READ | PROT_WRITE), 0);
	*(int *)(p + 7 * PS) = val;
	ASSERT_EQ(munmap(p + PS, PS), 0);
	return p;
}

/*
 * False when an unrelated mmap() (another thread, a sanitizer) took the
 * one-page hole meanwhile: the layout is then not what the test describes.
 */
static bool snapshot_once(struct uhmm_dmirror *dm)
{
	const uint64_t np = 8;
	char *p = snapshot_layout();
	unsigned char m[8], vec[1];
	struct uhmm_dmirror_cmd cmd;
	bool intact = true;

	for (int round = 0; round < 2 && intact; round++) {
		memset(m, 0xAA, sizeof(m));
		ASSERT_EQ(run_cmd(uhmm_dmirror_snapshot, dm, p, m, np, &cmd), 0);
		intact = is_hole(p + PS, PS);
		if (!intact)
			break;
		ASSERT_EQ(cmd.cpages, np);
		ASSERT_EQ(m[0], UHMM_DMIRROR_PROT_ERROR);
		ASSERT_EQ(m[1], UHMM_DMIRROR_PROT_ERROR);
		ASSERT_EQ(m[2], UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ);
		ASSERT_EQ(m[3], UHMM_DMIRROR_PROT_READ);
		ASSERT_EQ(m[4], UHMM_DMIRROR_PROT_WRITE);
		ASSERT_EQ(m[5], UHMM_DMIRROR_PROT_NONE);
		ASSERT_EQ(m[6], UHMM_DMIRROR_PROT_NONE);
		ASSERT_EQ(m[7], UHMM_DMIRROR_PROT_WRITE);
	}
	if (intact) {
		/* a snapshot never faults: page 5 is still not populated */
		ASSERT_EQ(mincore(p + 5 * PS, PS, vec), 0);
		ASSERT_EQ(vec[0] & 1, 0);
		ASSERT_EQ(*(int *)(p + 3 * PS), 3);
	}
	munmap(p, PS);
	munmap(p + 2 * PS, (np - 2) * PS);
	return intact;
}

static void snapshot(unsigned int dev)
{
	struct uhmm_dmirror *dm = open_dev(dev);
	int tries = 0;

	while (!snapshot_once(dm))
		ASSERT_LT(++tries, 5);
	uhmm_dmirror_close(dm);
	check_pool_untouched(dev);
}

TEST(snapshot_dev0) { snapshot(0); }
TEST(snapshot_dev2) { snapshot(2); }

static void skip_without_thp(void)
{
	char buf[128] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");

	if (!f)
		SKIP("kernel without transparent huge pages");
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	if (strstr(buf, "[never]"))
		SKIP("transparent huge pages disabled (enabled=never)");
}

/* AnonHugePages (kB) of the VMA containing addr, from /proc/self/smaps. */
static long anon_huge_kb(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	uintptr_t a = (uintptr_t)addr;
	unsigned long lo, hi;
	char line[512];
	long kb = -1;
	int in = 0;

	ASSERT_NOT_NULL(f);
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
			in = lo <= a && a < hi;
			continue;
		}
		if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb;
}

TEST(snapshot_thp)
{
	uint64_t npages = TWO_MB / PS;
	unsigned char *m = xmalloc(npages);
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd cmd;
	void *base;
	char *p;

	skip_without_thp();
	p = map_huge_aligned(&base);
	memset(p, 1, TWO_MB);
	if (anon_huge_kb(p) < (long)(TWO_MB >> 10))
		SKIP("the kernel did not back the region with a THP (fragmented memory?)");

	dm = open_dev(0);
	memset(m, 0xAA, npages);
	ASSERT_EQ(run_cmd(uhmm_dmirror_snapshot, dm, p, m, npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, npages);
	for (uint64_t i = 0; i < npages; i++)
		ASSERT_EQ(m[i], UHMM_DMIRROR_PROT_WRITE | UHMM_DMIRROR_PROT_PMD);

	ASSERT_EQ(mprotect(p, TWO_MB, PROT_READ), 0);
	memset(m, 0xAA, npages);
	ASSERT_EQ(run_cmd(uhmm_dmirror_snapshot, dm, p, m, npages, &cmd), 0);
	ASSERT_EQ(cmd.cpages, npages);
	for (uint64_t i = 0; i < npages; i++)
		ASSERT_EQ(m[i], UHMM_DMIRROR_PROT_READ | UHMM_DMIRROR_PROT_PMD);
	ASSERT_EQ(first_nonzero(p, TWO_MB), 0);
	ASSERT_EQ(p[TWO_MB - 1], 1);

	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	munmap(base, 2 * TWO_MB);
	free(m);
}

/* ------------------------------------------------------------------------ */
/* application mapping changes invalidate the mirror before they return      */
/* ------------------------------------------------------------------------ */

#define INV_PAGES 16UL

static void inval_mprotect(unsigned int dev)
{
	size_t size = INV_PAGES * PS;
	int *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(dev);
	struct uhmm_dmirror_cmd cmd;
	uint64_t c0[8], c1[8];

	fill_ints(m, size, 11, 1);
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, p, m, INV_PAGES, &cmd), 0);
	ASSERT_EQ(cmd.faults, 1);
	ASSERT_INTS(p, size, 11, 1);

	get_inval(dm, c0);
	ASSERT_EQ(mprotect(p, size, PROT_READ), 0);
	get_inval(dm, c1);
	ASSERT_GT(c1[UHMM_NOTIFY_PROTECTION_VMA], c0[UHMM_NOTIFY_PROTECTION_VMA]);

	/* without the invalidation the mirror would still hold writable pages */
	fill_ints(m, size, 22, 1);
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, p, m, INV_PAGES, NULL), -EPERM);
	ASSERT_INTS(p, size, 11, 1);

	/* reading refaults (the mirror was emptied) and sees the old data */
	EXPECT_CMD(uhmm_dmirror_read, dm, p, m, INV_PAGES, 1);
	ASSERT_INTS(m, size, 11, 1);

	uhmm_dmirror_close(dm);
	check_pool_untouched(dev);
	munmap(p, size);
	free(m);
}

TEST(inval_mprotect_dev0) { inval_mprotect(0); }
TEST(inval_mprotect_dev2) { inval_mprotect(2); }

TEST(inval_munmap)
{
	size_t size = INV_PAGES * PS, half = size / 2;
	char *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(0);
	struct uhmm_dmirror_cmd cmd;
	uint64_t c0[8], c1[8];
	struct uhmm_stats s0, s1;

	fill_ints(m, size, 5, 1);
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, p, m, INV_PAGES, &cmd), 0);
	ASSERT_EQ(cmd.faults, 1);

	get_inval(dm, c0);
	uhmm_stats_get(&s0);
	ASSERT_EQ(munmap(p + half, half), 0);
	get_inval(dm, c1);
	uhmm_stats_get(&s1);
	ASSERT_GT(c1[UHMM_NOTIFY_UNMAP], c0[UHMM_NOTIFY_UNMAP]);
	ASSERT_GT(s1.invalidations[UHMM_NOTIFY_UNMAP], s0.invalidations[UHMM_NOTIFY_UNMAP]);
	ASSERT_TRUE(is_hole(p + half, half));

	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, p + half, m, half / PS, NULL), -EFAULT);
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, p + half, m, half / PS, NULL), -EFAULT);
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, p, m, INV_PAGES, NULL), -EFAULT);

	/* only the unmapped range was dropped: the lower half reads without a fault */
	memset(m, 0, size);
	EXPECT_CMD(uhmm_dmirror_read, dm, p, m, half / PS, 0);
	ASSERT_INTS(m, half, 5, 1);

	get_inval(dm, c0);
	ASSERT_EQ(munmap(p, half), 0);
	get_inval(dm, c1);
	ASSERT_GT(c1[UHMM_NOTIFY_UNMAP], c0[UHMM_NOTIFY_UNMAP]);
	ASSERT_TRUE(is_hole(p, half));
	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, p, m, half / PS, NULL), -EFAULT);

	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	free(m);
}

TEST(inval_mremap)
{
	const uint64_t np = 8;
	size_t size = np * PS;
	char *old = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *dst = map_anon(size, PROT_NONE, MAP_PRIVATE);
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(0);
	struct uhmm_dmirror_cmd cmd;
	uint64_t c0[8], c1[8];
	char *nu;

	fill_ints(m, size, 3, 1);
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, old, m, np, &cmd), 0);
	ASSERT_EQ(cmd.cpages, np);

	get_inval(dm, c0);
	nu = mremap(old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ASSERT_TRUE(nu == dst);
	get_inval(dm, c1);
	ASSERT_GT(c1[UHMM_NOTIFY_UNMAP], c0[UHMM_NOTIFY_UNMAP]);
	ASSERT_TRUE(is_hole(old, size));

	ASSERT_EQ(run_cmd(uhmm_dmirror_read, dm, old, m, np, NULL), -EFAULT);
	memset(m, 0, size);
	EXPECT_CMD(uhmm_dmirror_read, dm, nu, m, np, 1);
	ASSERT_INTS(m, size, 3, 1);
	ASSERT_INTS(nu, size, 3, 1);

	/* and the device can write at the new place */
	fill_ints(m, size, 4, -1);
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, nu, m, np, &cmd), 0);
	ASSERT_INTS(nu, size, 4, -1);
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, old, m, np, NULL), -EFAULT);

	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	munmap(nu, size);
	free(m);
}

TEST(inval_dontneed)
{
	const uint64_t np = 8;
	size_t size = np * PS;
	int *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *m = xmalloc(size);
	struct uhmm_dmirror *dm = open_dev(0);
	struct uhmm_dmirror_cmd cmd;
	uint64_t c0[8], c1[8];

	fill_ints(m, size, 9, 1);
	ASSERT_EQ(run_cmd(uhmm_dmirror_write, dm, p, m, np, &cmd), 0);
	ASSERT_EQ(cmd.faults, 1);
	ASSERT_INTS(p, size, 9, 1);

	get_inval(dm, c0);
	ASSERT_EQ(madvise(p, size, MADV_DONTNEED), 0);
	get_inval(dm, c1);
	ASSERT_GT(c1[UHMM_NOTIFY_CLEAR], c0[UHMM_NOTIFY_CLEAR]);

	memset(m, 0xA5, size);
	EXPECT_CMD(uhmm_dmirror_read, dm, p, m, np, 1);
	ASSERT_EQ(first_nonzero(m, size), -1);
	ASSERT_EQ(first_nonzero(p, size), -1);

	uhmm_dmirror_close(dm);
	check_pool_untouched(0);
	munmap(p, size);
	free(m);
}

TEST_MAIN()
