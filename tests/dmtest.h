/* SPDX-License-Identifier: MIT */
/*
 * dmtest.h - helpers shared by the tests that drive the reference device or
 * the device-memory API (test_migrate.c, test_kernel.c, test_mirror.c,
 * test_devmem.c, test_badinput.c, test_exclusive.c, test_inject.c): one
 * command with its counters reset (or checked, EXPECT_CMD), opening a
 * device (SKIP when userfaultfd is missing), anonymous mappings and
 * (THP-aligned) regions, counters and pool checks, and the int patterns the
 * tests write and check.  All static, so each test takes only what it uses.
 */
#ifndef UHMM_DMTEST_H
#define UHMM_DMTEST_H
#include "harness.h"
#include <uhmm.h>
#include <uhmm_dmirror.h>

typedef int (*dm_cmd_fn)(struct uhmm_dmirror *, struct uhmm_dmirror_cmd *);

__attribute__((unused)) static bool is_coherent(unsigned int dev)
{
	return dev >= 2;
}

/*
 * Issue one command at a raw address (bad-input tests pass any number);
 * cpages/faults start as garbage to prove they are reset.  out may be NULL.
 */

__attribute__((unused)) static int run_cmd_at(dm_cmd_fn fn, struct uhmm_dmirror *dm, uint64_t addr,
		      void *ptr, uint64_t npages, struct uhmm_dmirror_cmd *out)
{
	struct uhmm_dmirror_cmd cmd = {
		.addr = addr,
		.ptr = (uint64_t)(uintptr_t)ptr,
		.npages = npages,
		.cpages = 0xdeadbeef,
		.faults = 0xdeadbeef,
	};
	int ret = fn(dm, &cmd);

	if (out)
		*out = cmd;
	return ret;
}

/* The same command at a pointer of this process. */

__attribute__((unused)) static int run_cmd(dm_cmd_fn fn, struct uhmm_dmirror *dm, const void *addr, void *ptr,
		   uint64_t npages, struct uhmm_dmirror_cmd *out)
{
	return run_cmd_at(fn, dm, (uint64_t)(uintptr_t)addr, ptr, npages, out);
}

/*
 * A command that must succeed over all of its npages pages, taking exactly
 * faults device faults; a failure names the caller's file:line.
 */

__attribute__((unused)) static void cmd_expect(const char *file, int line, dm_cmd_fn fn,
		       struct uhmm_dmirror *dm, const void *addr, void *ptr,
		       uint64_t npages, uint64_t faults)
{
	struct uhmm_dmirror_cmd cmd;
	int ret = run_cmd(fn, dm, addr, ptr, npages, &cmd);

	if (ret)
		th_fail(file, line, "command at %p failed: %d", addr, ret);
	if (cmd.cpages != npages)
		th_fail(file, line, "cpages %" PRIu64 ", want %" PRIu64, cmd.cpages, npages);
	if (cmd.faults != faults)
		th_fail(file, line, "faults %" PRIu64 ", want %" PRIu64, cmd.faults, faults);
}

#define EXPECT_CMD(fn, dm, addr, ptr, npages, faults) \
	cmd_expect(__FILE__, __LINE__, fn, dm, addr, ptr, npages, faults)

__attribute__((unused)) static struct uhmm_dmirror *open_dev(unsigned int dev)
{
	struct uhmm_dmirror *dm = NULL;
	int ret = uhmm_dmirror_open(dev, &dm);

	if (ret == -ENOSYS)
		SKIP("kernel has no userfaultfd");
	if (ret == -EPERM)
		SKIP("userfaultfd not permitted for this user");
	ASSERT_EQ(ret, 0);
	ASSERT_NOT_NULL(dm);
	return dm;
}

/* Anonymous memory wherever the kernel puts it (flags: MAP_PRIVATE or MAP_SHARED, ...). */

__attribute__((unused)) static void *map_anon(size_t size, int prot, int flags)
{
	void *p = mmap(NULL, size, prot, flags | MAP_ANONYMOUS, -1, 0);

	ASSERT_MAPPED(p);
	return p;
}

__attribute__((unused)) static void *xmalloc(size_t size)
{
	void *p = malloc(size);

	ASSERT_NOT_NULL(p);
	return p;
}

__attribute__((unused)) static struct uhmm_stats stats_now(void)
{
	struct uhmm_stats st;

	uhmm_stats_get(&st);
	return st;
}

__attribute__((unused)) static struct uhmm_devmem_stats pool(unsigned int dev)
{
	struct uhmm_devmem_stats st;

	memset(&st, 0, sizeof(st));
	ASSERT_EQ(uhmm_dmirror_devmem_stats(dev, &st), 0);
	return st;
}

/* I4: every device page of the pool went back to it. */

__attribute__((unused)) static void pool_drained(unsigned int dev)
{
	struct uhmm_devmem_stats st = pool(dev);

	ASSERT_EQ(st.in_use, 0);
	ASSERT_EQ(st.allocated, st.freed);
}

__attribute__((unused)) static void zero_expect(const char *file, int line, const void *buf, size_t size)
{
	const unsigned char *p = buf;

	for (size_t i = 0; i < size; i++)
		if (p[i])
			th_fail(file, line, "byte %zu of %p is 0x%x, want 0", i, buf, p[i]);
}

#define EXPECT_ZERO(buf, size) zero_expect(__FILE__, __LINE__, buf, size)

/*
 * A range of npages pages where nothing else maps (th_mmap_isolated).  With
 * thp != 0 it is 2 MiB aligned inside a mapping 2 MiB larger and advised
 * MADV_HUGEPAGE (thp > 0) or MADV_NOHUGEPAGE (thp < 0).
 */
#define DM_PMD_SIZE	(2UL << 20)

struct region {
	char *map;
	size_t map_size;
	char *ptr;
	size_t size;
	uint64_t npages;
};

__attribute__((unused)) static void region_map(struct region *r, uint64_t npages, int prot, int flags,
		       int thp)
{
	r->npages = npages;
	r->size = npages * UHMM_PAGE_SIZE;
	r->map_size = thp ? r->size + DM_PMD_SIZE : r->size;
	r->map = th_mmap_isolated(r->map_size, prot, flags);
	ASSERT_MAPPED(r->map);
	r->ptr = r->map;
	if (!thp)
		return;
	r->ptr = (char *)(((uintptr_t)r->map + DM_PMD_SIZE - 1) & ~(DM_PMD_SIZE - 1));
	ASSERT_EQ(madvise(r->ptr, r->size, thp > 0 ? MADV_HUGEPAGE : MADV_NOHUGEPAGE), 0);
}

__attribute__((unused)) static void region_unmap(struct region *r)
{
	if (r->map)
		ASSERT_EQ(munmap(r->map, r->map_size), 0);
	r->map = NULL;
}

/* Close the mirror, unmap the range (r may be NULL), and check dev's pool is empty (I4). */

__attribute__((unused)) static void finish(struct uhmm_dmirror *dm, unsigned int dev, struct region *r)
{
	uhmm_dmirror_close(dm);
	if (r)
		region_unmap(r);
	pool_drained(dev);
}

/*
 * The int patterns: int i of a buffer holds sign * (i + base), sign 1 or -1
 * (a negated pattern tells a device write from the CPU's).
 */

__attribute__((unused)) static void fill_ints(void *buf, size_t size, int base, int sign)
{
	int *p = buf;

	for (size_t i = 0; i < size / sizeof(int); i++)
		p[i] = sign * ((int)i + base);
}

/* Index of the first int that differs from the fill_ints() pattern, or -1. */

__attribute__((unused)) static long diff_ints(const void *buf, size_t size, int base, int sign)
{
	const int *p = buf;

	for (size_t i = 0; i < size / sizeof(int); i++)
		if (p[i] != sign * ((int)i + base))
			return (long)i;
	return -1;
}

/* Fail at file:line with the first int that differs, its value and the one wanted. */

__attribute__((unused)) static void ints_expect(const char *file, int line, const void *buf, size_t size,
			int base, int sign)
{
	const int *p = buf;

	for (size_t i = 0; i < size / sizeof(int); i++)
		if (p[i] != sign * ((int)i + base))
			th_fail(file, line, "int %zu of %p is %d, want %d", i, buf, p[i],
				sign * ((int)i + base));
}

/* The ints of buf are sign * (index + base); ASSERT_INTS names only the index. */
#define EXPECT_INTS(buf, size, base, sign) ints_expect(__FILE__, __LINE__, buf, size, base, sign)
#define ASSERT_INTS(buf, size, base, sign) ASSERT_EQ(diff_ints(buf, size, base, sign), -1)

#endif
