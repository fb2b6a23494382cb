/* SPDX-License-Identifier: MIT */
/*
 * dmtest.h - helpers of the reference-device tests (test_migrate.c,
 * test_kernel.c): one command with its counters reset, opening a device
 * (SKIP when userfaultfd is missing), counters and pool checks, data checks.
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

/* Issue one command; cpages/faults start as garbage to prove they are reset. */

__attribute__((unused)) static int run_cmd(dm_cmd_fn fn, struct uhmm_dmirror *dm, const void *addr, void *ptr,
		   uint64_t npages, struct uhmm_dmirror_cmd *out)
{
	struct uhmm_dmirror_cmd cmd = {
		.addr = (uint64_t)(uintptr_t)addr,
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

#endif
