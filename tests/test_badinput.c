/* SPDX-License-Identifier: MIT */
/*
 * test_badinput.c - bad arguments to every public entry point get their
 * documented errno (never a crash, never an abort), and the runtime still
 * works afterwards: each case ends with a device write + read round trip,
 * a notifier insert/remove and a pool check (assert_runtime_ok()).
 *
 * Covered: uhmm_dmirror_* (NULL handle/cmd, unaligned addr, npages == 0,
 * overflowing ranges, never-mapped addresses, bad atomic_add alignment,
 * unknown flags), interval notifiers (NULL, no ops, length 0, overflow,
 * double insert/remove), uhmm_range_fault, uhmm_devmem_* (NULL owner, bad
 * type, bogus page numbers, full pool), uhmm_migrate_vma_setup,
 * uhmm_make_device_exclusive, uhmm_device_read/write, uhmm_pfn_to_virt.
 */
#include "harness.h"
#include "dmtest.h"
#include <uhmm.h>
#include <uhmm_dmirror.h>

#define PS UHMM_PAGE_SIZE

static const struct {
	const char *name;
	dm_cmd_fn fn;
} cmds[] = {
	{ "read", uhmm_dmirror_read },
	{ "write", uhmm_dmirror_write },
	{ "migrate_to_dev", uhmm_dmirror_migrate_to_dev },
	{ "migrate_to_sys", uhmm_dmirror_migrate_to_sys },
	{ "snapshot", uhmm_dmirror_snapshot },
	{ "exclusive", uhmm_dmirror_exclusive },
	{ "check_exclusive", uhmm_dmirror_check_exclusive },
};
#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

/* Fail with the command's name when ret is not want. */
#define CHECK_RET(name, ret, want) do {                                       \
	int r_ = (ret), w_ = (want);                                          \
	if (r_ != w_)                                                         \
		th_fail(__FILE__, __LINE__, "%s: got %d, want %d",            \
			(name), r_, w_);                                      \
} while (0)

/* ------------------------------------------------------------------------ */
/* helpers                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * A page-aligned address with nothing mapped there: the lowest page of a
 * 63-page hole above a page kept mapped, so that the small mappings other
 * code may create meanwhile (placed top-down) do not land on it.
 */
static uint64_t hole_addr(void)
{
	char *p = map_anon(64 * PS, PROT_NONE, MAP_PRIVATE);

	ASSERT_EQ(munmap(p + PS, 63 * PS), 0);
	return (uint64_t)(uintptr_t)(p + PS);
}

static bool noop_invalidate(struct uhmm_interval_notifier *n,
			    const struct uhmm_notifier_range *r, unsigned long cur_seq)
{
	(void)r;
	uhmm_interval_set_seq(n, cur_seq);
	return true;
}

static const struct uhmm_interval_notifier_ops noop_ops = { .invalidate = noop_invalidate };

/* The runtime still serves a device and the notifier API after bad input. */
static void assert_runtime_ok(void)
{
	const uint64_t np = 4;
	int *p = map_anon(np * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *m = malloc(np * PS);
	struct uhmm_interval_notifier n;
	struct uhmm_dmirror *dm = open_dev(0);
	struct uhmm_dmirror_cmd cmd;
	struct uhmm_devmem_stats st;
	size_t nint = np * PS / sizeof(int);

	ASSERT_NOT_NULL(m);
	for (size_t i = 0; i < nint; i++)
		m[i] = (int)i * 3;
	ASSERT_EQ(run_cmd_at(uhmm_dmirror_write, dm, (uint64_t)(uintptr_t)p, m, np, &cmd), 0);
	ASSERT_EQ(cmd.cpages, np);
	for (size_t i = 0; i < nint; i++)
		ASSERT_EQ(p[i], (int)i * 3);
	memset(m, 0, np * PS);
	ASSERT_EQ(run_cmd_at(uhmm_dmirror_read, dm, (uint64_t)(uintptr_t)p, m, np, &cmd), 0);
	ASSERT_EQ(cmd.cpages, np);
	for (size_t i = 0; i < nint; i++)
		ASSERT_EQ(m[i], (int)i * 3);
	uhmm_dmirror_close(dm);
	ASSERT_EQ(uhmm_dmirror_devmem_stats(0, &st), 0);
	ASSERT_EQ(st.in_use, 0);

	memset(&n, 0, sizeof(n));
	ASSERT_EQ(uhmm_interval_notifier_insert(&n, (uint64_t)(uintptr_t)p, np * PS,
						&noop_ops), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(&n), 0);
	ASSERT_EQ(munmap(p, np * PS), 0);
	free(m);
}

/* ------------------------------------------------------------------------ */
/* dmirror                                                                   */
/* ------------------------------------------------------------------------ */

TEST(dmirror_null)
{
	struct uhmm_dmirror *dm = open_dev(0);
	char *p = map_anon(PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_dmirror_cmd cmd = {
		.addr = (uint64_t)(uintptr_t)p, .ptr = (uint64_t)(uintptr_t)p, .npages = 1,
	};
	uint64_t counts[8], old;
	struct uhmm_devmem_stats st;

	for (size_t i = 0; i < NCMDS; i++) {
		CHECK_RET(cmds[i].name, cmds[i].fn(NULL, &cmd), -EINVAL);
		CHECK_RET(cmds[i].name, cmds[i].fn(dm, NULL), -EINVAL);
	}
	ASSERT_EQ(uhmm_dmirror_release(NULL), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_set_flags(NULL, 0), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_atomic_add(NULL, (uint64_t)(uintptr_t)p, 1, &old), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_invalidations(NULL, counts), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_invalidations(dm, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_open(0, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_devmem_stats(0, NULL), -EINVAL);
	ASSERT_LT(uhmm_dmirror_devmem_stats(UHMM_DMIRROR_NDEVICES, &st), 0);
	uhmm_dmirror_close(NULL);

	uhmm_dmirror_close(dm);
	munmap(p, PS);
	assert_runtime_ok();
}

/* Every command on one bad (addr, npages) pair: all -EINVAL. */
static void all_cmds_einval(struct uhmm_dmirror *dm, uint64_t addr, uint64_t npages,
			    void *buf)
{
	for (size_t i = 0; i < NCMDS; i++)
		CHECK_RET(cmds[i].name, run_cmd_at(cmds[i].fn, dm, addr, buf, npages, NULL),
			  -EINVAL);
}

TEST(dmirror_unaligned)
{
	struct uhmm_dmirror *dm = open_dev(0);
	char *p = map_anon(2 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *buf = malloc(2 * PS);
	uint64_t a = (uint64_t)(uintptr_t)p;

	ASSERT_NOT_NULL(buf);
	memset(p, 0x3C, 2 * PS);
	all_cmds_einval(dm, a + 1, 1, buf);
	all_cmds_einval(dm, a + 8, 1, buf);
	all_cmds_einval(dm, a + PS / 2, 1, buf);
	all_cmds_einval(dm, a + PS - 1, 1, buf);
	/* nothing was written */
	for (size_t i = 0; i < 2 * PS; i++)
		ASSERT_EQ((unsigned char)p[i], 0x3C);

	uhmm_dmirror_close(dm);
	munmap(p, 2 * PS);
	free(buf);
	assert_runtime_ok();
}

TEST(dmirror_npages_zero)
{
	struct uhmm_dmirror *dm = open_dev(0);
	char *p = map_anon(PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char buf[64];

	all_cmds_einval(dm, (uint64_t)(uintptr_t)p, 0, buf);
	uhmm_dmirror_close(dm);
	munmap(p, PS);
	assert_runtime_ok();
}

TEST(dmirror_overflow)
{
	struct uhmm_dmirror *dm = open_dev(0);
	char *p = map_anon(PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t a = (uint64_t)(uintptr_t)p;
	char buf[64];

	/* addr + npages * 4096 wraps past 2^64 */
	all_cmds_einval(dm, ~(uint64_t)(PS - 1), 2, buf);
	all_cmds_einval(dm, a, UINT64_MAX / PS, buf);
	/* npages * 4096 itself overflows */
	all_cmds_einval(dm, a, (UINT64_MAX >> UHMM_PAGE_SHIFT) + 1, buf);
	all_cmds_einval(dm, a, UINT64_MAX, buf);

	uhmm_dmirror_close(dm);
	munmap(p, PS);
	assert_runtime_ok();
}

TEST(dmirror_unmapped)
{
	struct uhmm_dmirror *dm = open_dev(0);
	uint64_t hole = hole_addr();
	unsigned char *buf = malloc(PS);
	struct uhmm_dmirror_cmd cmd;

	ASSERT_NOT_NULL(buf);
	memset(buf, 0x77, PS);
	ASSERT_EQ(run_cmd_at(uhmm_dmirror_read, dm, hole, buf, 1, NULL), -EFAULT);
	ASSERT_EQ(buf[0], 0x77);
	ASSERT_EQ(run_cmd_at(uhmm_dmirror_write, dm, hole, buf, 1, NULL), -EFAULT);
	ASSERT_EQ(run_cmd_at(uhmm_dmirror_read, dm, 0, buf, 1, NULL), -EFAULT);
	ASSERT_EQ(run_cmd_at(uhmm_dmirror_write, dm, 0, buf, 1, NULL), -EFAULT);
	/* migration of a hole: -EINVAL */
	ASSERT_EQ(run_cmd_at(uhmm_dmirror_migrate_to_dev, dm, hole, buf, 1, NULL), -EINVAL);
	/* a snapshot reports the hole without failing */
	ASSERT_EQ(run_cmd_at(uhmm_dmirror_snapshot, dm, hole, buf, 1, &cmd), 0);
	ASSERT_EQ(cmd.cpages, 1);
	ASSERT_EQ(buf[0], UHMM_DMIRROR_PROT_ERROR);

	uhmm_dmirror_close(dm);
	free(buf);
	assert_runtime_ok();
}

/* A bad caller buffer (cmd->ptr): an error, not a crash; memory untouched. */
TEST(dmirror_bad_ptr)
{
	struct uhmm_dmirror *dm = open_dev(0);
	char *p = map_anon(PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t a = (uint64_t)(uintptr_t)p;
	int ret;

	memset(p, 0x42, PS);
	ret = run_cmd_at(uhmm_dmirror_read, dm, a, NULL, 1, NULL);
	ASSERT_TRUE(ret == -EFAULT || ret == -EINVAL);
	ret = run_cmd_at(uhmm_dmirror_write, dm, a, (void *)(uintptr_t)hole_addr(), 1, NULL);
	ASSERT_TRUE(ret == -EFAULT || ret == -EINVAL);
	ASSERT_EQ(p[0], 0x42);
	ASSERT_EQ(p[PS - 1], 0x42);

	uhmm_dmirror_close(dm);
	munmap(p, PS);
	assert_runtime_ok();
}

TEST(dmirror_atomic_unaligned)
{
	struct uhmm_dmirror *dm = open_dev(0);
	uint64_t *p = map_anon(PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t a = (uint64_t)(uintptr_t)p, old = 99;

	p[0] = 1000;
	p[1] = 2000;
	ASSERT_EQ(uhmm_dmirror_atomic_add(dm, a + 1, 1, &old), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_atomic_add(dm, a + 4, 1, &old), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_atomic_add(dm, a + PS - 4, 1, &old), -EINVAL);
	ASSERT_LT(uhmm_dmirror_atomic_add(dm, hole_addr(), 1, &old), 0);
	ASSERT_EQ(old, 99);

	/* an aligned one works, and the bad ones changed nothing */
	ASSERT_EQ(uhmm_dmirror_atomic_add(dm, a + 8, 5, &old), 0);
	ASSERT_EQ(old, 2000);
	ASSERT_EQ(p[0], 1000);
	ASSERT_EQ(p[1], 2005);

	uhmm_dmirror_close(dm);
	munmap(p, PS);
	assert_runtime_ok();
}

TEST(dmirror_set_flags_unknown)
{
	const uint64_t np = 4;
	struct uhmm_dmirror *dm = open_dev(0);
	int *p = map_anon(np * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *buf = malloc(np * PS);
	struct uhmm_dmirror_cmd cmd;
	struct uhmm_devmem_stats st;

	ASSERT_NOT_NULL(buf);
	for (size_t i = 0; i < np * PS / sizeof(int); i++)
		p[i] = (int)i;
	ASSERT_EQ(uhmm_dmirror_set_flags(dm, 1ULL << 5), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_set_flags(dm, 1ULL << 63), -EINVAL);
	/* includes FAIL_ALLOC: the call must be rejected as a whole */
	ASSERT_EQ(uhmm_dmirror_set_flags(dm, ~0ULL), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_set_flags(dm, 0), 0);

	/* no allocation failure was armed by the rejected calls */
	ASSERT_EQ(run_cmd_at(uhmm_dmirror_migrate_to_dev, dm, (uint64_t)(uintptr_t)p, buf, np,
			  &cmd), 0);
	ASSERT_EQ(cmd.cpages, np);
	ASSERT_EQ(uhmm_dmirror_devmem_stats(0, &st), 0);
	ASSERT_EQ(st.alloc_failures, 0);
	ASSERT_EQ(st.in_use, np);
	for (size_t i = 0; i < np * PS / sizeof(int); i++)
		ASSERT_EQ(p[i], (int)i);

	uhmm_dmirror_close(dm);
	ASSERT_EQ(uhmm_dmirror_devmem_stats(0, &st), 0);
	ASSERT_EQ(st.in_use, 0);
	munmap(p, np * PS);
	free(buf);
	assert_runtime_ok();
}

/* ------------------------------------------------------------------------ */
/* interval notifiers                                                        */
/* ------------------------------------------------------------------------ */

TEST(notifier_bad)
{
	char *p = map_anon(2 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t a = (uint64_t)(uintptr_t)p;
	struct uhmm_interval_notifier n, never;

	memset(&never, 0, sizeof(never));
	ASSERT_EQ(uhmm_interval_notifier_remove(NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_remove(&never), -EINVAL);

	memset(&n, 0, sizeof(n));
	ASSERT_EQ(uhmm_interval_notifier_insert(NULL, a, PS, &noop_ops), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&n, a, PS, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&n, a, 0, &noop_ops), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&n, ~(uint64_t)(PS - 1), 2 * PS, &noop_ops),
		  -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&n, a, UINT64_MAX, &noop_ops), -EINVAL);
	/* none of the rejected inserts left n in the tree */
	ASSERT_EQ(uhmm_interval_notifier_remove(&n), -EINVAL);

	memset(&n, 0, sizeof(n));
	ASSERT_EQ(uhmm_interval_notifier_insert(&n, a, 2 * PS, &noop_ops), 0);
	ASSERT_EQ(uhmm_interval_notifier_insert(&n, a, PS, &noop_ops), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_remove(&n), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(&n), -EINVAL);

	/* a change over the range after all that calls nothing and crashes nothing */
	ASSERT_EQ(munmap(p, 2 * PS), 0);
	assert_runtime_ok();
}

TEST(range_fault_bad)
{
	char *p = map_anon(2 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t a = (uint64_t)(uintptr_t)p, pfns[2];
	struct uhmm_interval_notifier n;
	struct uhmm_range ok, r;

	memset(p, 1, 2 * PS);
	memset(&n, 0, sizeof(n));
	ASSERT_EQ(uhmm_interval_notifier_insert(&n, a, 2 * PS, &noop_ops), 0);
	ok = (struct uhmm_range){
		.notifier = &n, .start = a, .end = a + 2 * PS, .hmm_pfns = pfns,
		.default_flags = UHMM_PFN_REQ_FAULT,
	};
	ok.notifier_seq = uhmm_interval_read_begin(&n);

	ASSERT_EQ(uhmm_range_fault(NULL), -EINVAL);
	r = ok;
	r.notifier = NULL;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok;
	r.hmm_pfns = NULL;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok;
	r.end = r.start;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok;
	r.start = a + 2 * PS;
	r.end = a;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok;
	r.start = a + 1;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok;
	r.end = a + PS + 100;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);

	/* the good one still works */
	ASSERT_EQ(uhmm_range_fault(&ok), 0);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_VALID);
	ASSERT_TRUE(pfns[1] & UHMM_PFN_VALID);

	ASSERT_EQ(uhmm_interval_notifier_remove(&n), 0);
	munmap(p, 2 * PS);
	assert_runtime_ok();
}

/* ------------------------------------------------------------------------ */
/* device memory                                                             */
/* ------------------------------------------------------------------------ */

static int dummy_migrate_to_ram(struct uhmm_devmem *mem, const struct uhmm_fault *vmf)
{
	(void)mem;
	(void)vmf;
	return -EIO;
}

static const struct uhmm_devmem_ops priv_ops = { .migrate_to_ram = dummy_migrate_to_ram };
static const struct uhmm_devmem_ops free_only_ops = { .page_free = NULL };
static const int owner_tag = 1;

TEST(devmem_create_bad)
{
	struct uhmm_devmem *mem = NULL;

	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, NULL, &priv_ops, NULL, 16, &mem),
		  -EINVAL);
	ASSERT_EQ(uhmm_devmem_create((enum uhmm_devmem_type)0, &owner_tag, &priv_ops, NULL,
				     16, &mem), -EINVAL);
	ASSERT_EQ(uhmm_devmem_create((enum uhmm_devmem_type)3, &owner_tag, &priv_ops, NULL,
				     16, &mem), -EINVAL);
	ASSERT_EQ(uhmm_devmem_create((enum uhmm_devmem_type)-1, &owner_tag, &priv_ops, NULL,
				     16, &mem), -EINVAL);
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, &owner_tag, &priv_ops, NULL, 16,
				     NULL), -EINVAL);
	/* migrate_to_ram is required for a private pool */
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, &owner_tag, NULL, NULL, 16, &mem),
		  -EINVAL);
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, &owner_tag, &free_only_ops, NULL,
				     16, &mem), -EINVAL);
	ASSERT_TRUE(mem == NULL);
	ASSERT_EQ(uhmm_devmem_destroy(NULL), -EINVAL);

	/* a good one after all that */
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, &owner_tag, &priv_ops, NULL, 16, &mem),
		  0);
	ASSERT_NOT_NULL(mem);
	ASSERT_TRUE(uhmm_devmem_owner(mem) == &owner_tag);
	ASSERT_EQ(uhmm_devmem_type(mem), UHMM_DEVMEM_PRIVATE);
	ASSERT_EQ(uhmm_devmem_destroy(mem), 0);
	assert_runtime_ok();
}

TEST(devmem_page_bad)
{
	const uint64_t bogus[] = { 0, 1ULL << 40, UHMM_PFN_PFN_MASK, UINT64_MAX };
	struct uhmm_devmem *mem = NULL;
	struct uhmm_devmem_stats st;
	uint64_t page = 0, page2 = 0;

	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, &owner_tag, &priv_ops, NULL, 1, &mem),
		  0);
	for (size_t i = 0; i < sizeof(bogus) / sizeof(bogus[0]); i++) {
		ASSERT_EQ(uhmm_devmem_page_put(bogus[i]), -EINVAL);
		ASSERT_EQ(uhmm_devmem_page_get(bogus[i]), -EINVAL);
		ASSERT_TRUE(uhmm_page_devmem(bogus[i]) == NULL);
		ASSERT_TRUE(uhmm_page_zone_data(bogus[i]) == NULL);
		ASSERT_EQ(uhmm_page_set_zone_data(bogus[i], &page), -EINVAL);
		ASSERT_EQ(uhmm_page_addr(bogus[i]), 0);
	}
	ASSERT_TRUE(uhmm_pfn_to_virt(0) == NULL);

	ASSERT_EQ(uhmm_devmem_alloc(NULL, &page), -EINVAL);
	ASSERT_EQ(uhmm_devmem_alloc(mem, NULL), -EINVAL);
	ASSERT_EQ(uhmm_devmem_stats(NULL, &st), -EINVAL);
	ASSERT_EQ(uhmm_devmem_stats(mem, NULL), -EINVAL);

	/* a pool of one page: the second allocation fails */
	ASSERT_EQ(uhmm_devmem_alloc(mem, &page), 0);
	ASSERT_NE(page, 0);
	ASSERT_TRUE(uhmm_page_devmem(page) == mem);
	ASSERT_EQ(uhmm_devmem_alloc(mem, &page2), -ENOMEM);
	ASSERT_EQ(uhmm_devmem_destroy(mem), -EBUSY);

	/* one reference: the second put is a put of a free page */
	ASSERT_EQ(uhmm_devmem_page_put(page), 0);
	ASSERT_EQ(uhmm_devmem_page_put(page), -EINVAL);
	ASSERT_EQ(uhmm_devmem_page_get(page), -EINVAL);
	ASSERT_EQ(uhmm_devmem_stats(mem, &st), 0);
	ASSERT_EQ(st.allocated, 1);
	ASSERT_EQ(st.freed, 1);
	ASSERT_EQ(st.in_use, 0);
	ASSERT_EQ(st.alloc_failures, 1);
	ASSERT_EQ(uhmm_devmem_destroy(mem), 0);
	assert_runtime_ok();
}

/* ------------------------------------------------------------------------ */
/* migration, exclusive access, "DMA"                                        */
/* ------------------------------------------------------------------------ */

TEST(migrate_setup_bad)
{
	char *p = map_anon(2 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t a = (uint64_t)(uintptr_t)p, src[2], dst[2];
	struct uhmm_migrate ok = {
		.start = a, .end = a + 2 * PS, .src = src, .dst = dst,
		.pgmap_owner = &owner_tag, .flags = UHMM_MIGRATE_SELECT_SYSTEM,
	};
	struct uhmm_migrate m;

	memset(p, 6, 2 * PS);
	ASSERT_EQ(uhmm_migrate_vma_setup(NULL), -EINVAL);
	m = ok;
	m.end = m.start;
	ASSERT_EQ(uhmm_migrate_vma_setup(&m), -EINVAL);
	m = ok;
	m.start = a + 2 * PS;
	m.end = a;
	ASSERT_EQ(uhmm_migrate_vma_setup(&m), -EINVAL);
	m = ok;
	m.start = a + 1;
	ASSERT_EQ(uhmm_migrate_vma_setup(&m), -EINVAL);
	m = ok;
	m.src = NULL;
	ASSERT_EQ(uhmm_migrate_vma_setup(&m), -EINVAL);
	m = ok;
	m.dst = NULL;
	ASSERT_EQ(uhmm_migrate_vma_setup(&m), -EINVAL);
	/* nothing was collected: the CPU still reads its data */
	ASSERT_EQ(p[0], 6);
	ASSERT_EQ(p[2 * PS - 1], 6);
	munmap(p, 2 * PS);
	assert_runtime_ok();
}

TEST(exclusive_and_dma_bad)
{
	uint64_t *p = map_anon(PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t a = (uint64_t)(uintptr_t)p, pages[1], v = 0;

	p[0] = 77;
	ASSERT_EQ(uhmm_make_device_exclusive(a + 8, 1, &owner_tag, pages, NULL), -EINVAL);
	ASSERT_EQ(uhmm_device_exclusive_release(a + 8, 1, &owner_tag), -EINVAL);
	ASSERT_EQ(p[0], 77);

	ASSERT_EQ(uhmm_device_read(&v, hole_addr(), sizeof(v)), -EFAULT);
	ASSERT_EQ(uhmm_device_write(hole_addr(), &v, sizeof(v)), -EFAULT);
	ASSERT_EQ(uhmm_device_read(&v, a, sizeof(v)), 0);
	ASSERT_EQ(v, 77);
	munmap(p, PS);
	assert_runtime_ok();
}

/* ---- driver-owned pools ----------------------------------------------------- */

static int g_copy_calls, g_copy_fail;
static uint64_t g_copy_pages;
static char g_owned_mem[64 * 4096];
/* the driver's registered staging, when a test set one: runs outside it are counted */
static char *g_stage;
static uint64_t g_stage_len, g_stage_outside;

static int owned_copy(struct uhmm_devmem *mem, enum uhmm_copy_dir dir,
		      const struct uhmm_copy_run *runs, uint64_t nruns, uint64_t *fence)
{
	(void)mem;
	g_copy_calls++;
	if (g_copy_fail)
		return -EIO;
	for (uint64_t r = 0; r < nruns; r++) {
		char *dev = g_owned_mem + runs[r].dev_index * 4096;
		size_t len = runs[r].npages * 4096;
		g_copy_pages += runs[r].npages;
		uintptr_t h = (uintptr_t)runs[r].host;
		if (g_stage && !(runs[r].flags & UHMM_COPY_RUN_CLEAR) &&
		    (h < (uintptr_t)g_stage || h + len > (uintptr_t)g_stage + g_stage_len))
			g_stage_outside++;
		if (dir == UHMM_COPY_TO_RAM)
			memcpy((void *)(uintptr_t)runs[r].host, dev, len);
		else if (runs[r].flags & UHMM_COPY_RUN_CLEAR)
			memset(dev, 0, len);
		else
			memcpy(dev, (void *)(uintptr_t)runs[r].host, len);
	}
	*fence = 0;
	return 0;
}

static const struct uhmm_devmem_copy_ops owned_ops = { .copy = owned_copy };
static const struct uhmm_devmem_copy_ops no_copy_ops = { .copy = NULL };

TEST(devmem_owned_bad)
{
	struct uhmm_devmem *mem = NULL;
	uint64_t page = 0, sys = 0, src[2] = { 0 }, dst[2] = { 0 };

	/* no copy callback, a coherent type, unknown flags, NULL out */
	ASSERT_EQ(uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, &owner_tag, &priv_ops, NULL, 0,
					   NULL, 16, &mem), -EINVAL);
	ASSERT_EQ(uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, &owner_tag, &priv_ops,
					   &no_copy_ops, 0, NULL, 16, &mem), -EINVAL);
	ASSERT_EQ(uhmm_devmem_create_owned(UHMM_DEVMEM_COHERENT, &owner_tag, &priv_ops,
					   &owned_ops, 0, NULL, 16, &mem), -EINVAL);
	ASSERT_EQ(uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, &owner_tag, &priv_ops,
					   &owned_ops, 1U << 7, NULL, 16, &mem), -EINVAL);
	ASSERT_EQ(uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, &owner_tag, NULL, &owned_ops, 0,
					   NULL, 16, &mem), -EINVAL);
	ASSERT_EQ(uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, &owner_tag, &priv_ops,
					   &owned_ops, 0, NULL, 16, NULL), -EINVAL);
	ASSERT_TRUE(mem == NULL);
	ASSERT_EQ(uhmm_devmem_is_owned(NULL), -EINVAL);
	ASSERT_EQ(uhmm_devmem_page_index(0), -EINVAL);
	ASSERT_EQ(uhmm_devmem_page_index(UINT64_MAX), -EINVAL);
	ASSERT_EQ(uhmm_migrate_copy(NULL, src, dst, 2), -EINVAL);

	ASSERT_EQ(uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, &owner_tag, &priv_ops,
					   &owned_ops, 0, NULL, 64, &mem), 0);
	ASSERT_EQ(uhmm_devmem_is_owned(mem), 1);
	ASSERT_EQ(uhmm_migrate_copy(mem, NULL, dst, 2), -EINVAL);
	ASSERT_EQ(uhmm_migrate_copy(mem, src, NULL, 2), -EINVAL);
	ASSERT_EQ(uhmm_migrate_copy(mem, src, dst, 0), -EINVAL);
	ASSERT_EQ(uhmm_migrate_copy(mem, src, dst, 2), 0);  /* nothing to migrate */
	/* its pages are names: no host address, no uhmm copy */
	ASSERT_EQ(uhmm_devmem_alloc(mem, &page), 0);
	ASSERT_EQ(uhmm_devmem_page_index(page), 0);
	ASSERT_TRUE(uhmm_pfn_to_virt(page) == NULL);
	ASSERT_TRUE(uhmm_pfn_to_virt(page | UHMM_PFN_VALID | UHMM_PFN_DEVICE) == NULL);
	ASSERT_EQ(uhmm_sys_page_alloc(&sys), 0);
	ASSERT_EQ(uhmm_devmem_page_index(sys), -EINVAL);  /* a system page has none */
	ASSERT_EQ(uhmm_page_copy(page, sys), -EOPNOTSUPP);
	ASSERT_EQ(uhmm_page_copy(sys, page), -EOPNOTSUPP);
	uint64_t d1[1] = { page }, s1[1] = { sys };
	int err[1] = { 0 };
	ASSERT_EQ(uhmm_page_copy_many(d1, s1, 1, err), 1);
	ASSERT_EQ(err[0], -EOPNOTSUPP);
	ASSERT_EQ(uhmm_devmem_destroy(mem), -EBUSY);
	ASSERT_EQ(uhmm_devmem_page_put(page), 0);
	ASSERT_EQ(uhmm_devmem_page_put(sys), 0);
	/* a host-memory pool is not owned */
	struct uhmm_devmem *host = NULL;
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, &owner_tag, &priv_ops, NULL, 16, &host),
		  0);
	ASSERT_EQ(uhmm_devmem_is_owned(host), 0);
	ASSERT_EQ(uhmm_devmem_destroy(host), 0);
	ASSERT_EQ(uhmm_devmem_destroy(mem), 0);
	ASSERT_EQ(uhmm_devmem_is_owned(mem), -EINVAL);  /* destroyed */
	assert_runtime_ok();
}

/*
 * The middle phase through a driver-owned pool, by hand of uhmm_migrate_copy:
 * data and holes in runs, and a failing driver copy that loses nothing.
 */
static struct uhmm_devmem *g_owned;

static int owned_to_ram(struct uhmm_devmem *mem, const struct uhmm_fault *vmf)
{
	uint64_t src[1], dst[1] = { 0 };
	struct uhmm_migrate m = { .start = vmf->addr, .end = vmf->addr + 4096, .src = src,
				  .dst = dst, .pgmap_owner = &owner_tag,
				  .flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
				  .fault_page = vmf->page };
	int rc = uhmm_migrate_vma_setup(&m);
	if (rc)
		return rc;
	long got = uhmm_migrate_copy(mem, src, dst, 1);
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	return got == 1 ? 0 : got < 0 ? (int)got : -EIO;
}

static const struct uhmm_devmem_ops owned_dev_ops = { .migrate_to_ram = owned_to_ram };

static long owned_migrate(char *buf, uint64_t npages)
{
	uint64_t src[16], dst[16];
	struct uhmm_migrate m = { .start = (uintptr_t)buf, .end = (uintptr_t)buf + npages * 4096,
				  .src = src, .dst = dst, .pgmap_owner = &owner_tag,
				  .flags = UHMM_MIGRATE_SELECT_SYSTEM };
	int rc = uhmm_migrate_vma_setup(&m);
	if (rc)
		return rc;
	long got = uhmm_migrate_copy(g_owned, src, dst, m.npages);
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	return got;
}

/*
 * 16 pages of malloc-like memory through g_owned and back, page hole
 * staying a hole (a clear run), each other page i filled with base + i: a
 * failing driver copy first (nothing moves, nothing lost, pool empty),
 * then the migration in calls driver copy calls (the device holds the data
 * and a cleared hole, not the stale bytes put in its memory: I5), then CPU
 * reads that fault every page back; data and counters exact.
 */
static void owned_round_trip(int hole, char base, int calls)
{
	char *buf = mmap(NULL, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	ASSERT_MAPPED(buf);
	for (int i = 0; i < 16; i++)
		if (i != hole)
			memset(buf + i * 4096, base + i, 4096);
	memset(g_owned_mem, 0x77, sizeof(g_owned_mem));  /* stale data: must not leak (I5) */

	g_copy_fail = 1;
	ASSERT_EQ(owned_migrate(buf, 16), -EIO);
	g_copy_fail = 0;
	struct uhmm_devmem_stats st;
	ASSERT_EQ(uhmm_devmem_stats(g_owned, &st), 0);
	ASSERT_EQ(st.in_use, 0);
	for (int i = 0; i < 16; i++)
		ASSERT_EQ(buf[i * 4096 + 100], i == hole ? 0 : base + i);

	struct uhmm_stats s0, s1;
	uhmm_stats_get(&s0);
	int calls0 = g_copy_calls;
	ASSERT_EQ(owned_migrate(buf, 16), 16);
	ASSERT_EQ(g_copy_calls - calls0, calls);
	ASSERT_EQ(uhmm_devmem_stats(g_owned, &st), 0);
	ASSERT_EQ(st.in_use, 16);
	for (int i = 0; i < 16; i++) {
		char want = i == hole ? 0 : base + i;
		int found = 0;
		for (int k = 0; k < 64 && !found; k++)
			found = g_owned_mem[k * 4096] == want && g_owned_mem[k * 4096 + 4095] == want;
		ASSERT_TRUE(found);
	}
	for (int i = 0; i < 16; i++)
		ASSERT_EQ(buf[i * 4096 + 4000], i == hole ? 0 : base + i);
	uhmm_stats_get(&s1);
	ASSERT_EQ(s1.cpu_faults_private - s0.cpu_faults_private, 16);
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, 16);
	ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, 16);
	ASSERT_EQ(uhmm_devmem_stats(g_owned, &st), 0);
	ASSERT_EQ(st.in_use, 0);
	ASSERT_EQ(munmap(buf, 16 * 4096), 0);
}

TEST(devmem_owned_copy)
{
	if (!(uhmm_features() & UHMM_FEAT_MOVE))
		SKIP("migration needs UFFDIO_MOVE (Linux 6.8+)");
	ASSERT_EQ(uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, &owner_tag, &owned_dev_ops,
					   &owned_ops, 0, NULL, 64, &g_owned), 0);
	owned_round_trip(5, 'a', 1);  /* one call for the batch */
	ASSERT_EQ(uhmm_devmem_destroy(g_owned), 0);
}

/*
 * One page to RAM through a driver-owned pool, by hand on this thread: the
 * driver's copy lands in uhmm's page bounce and finalize installs it
 * straight into the CPU view (a forwarded copy, fwd.c).  Between copy and
 * finalize the driver may read the new page (it sees the data) or give it
 * up (the page stays on the device, intact); 200 rounds, so that bounce
 * pages that were not given back would run out (64) and show as data
 * errors or a stuck copy.
 */
TEST(devmem_owned_forwarded)
{
	if (!(uhmm_features() & UHMM_FEAT_MOVE))
		SKIP("migration needs UFFDIO_MOVE (Linux 6.8+)");
	ASSERT_EQ(uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, &owner_tag, &owned_dev_ops,
					   &owned_ops, 0, NULL, 64, &g_owned), 0);
	char *buf = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	ASSERT_MAPPED(buf);
	for (int i = 0; i < 4; i++)
		memset(buf + i * 4096, 'a' + i, 4096);
	ASSERT_EQ(owned_migrate(buf, 4), 4);
	struct uhmm_devmem_stats st;
	struct uhmm_stats s0, s1;
	uhmm_stats_get(&s0);
	int gave_up = 0;
	for (int r = 0; r < 200; r++) {
		int i = r % 4, how = r % 3;
		char *page = buf + i * 4096;
		uint64_t src = 0, dst = 0;
		struct uhmm_migrate m = { .start = (uintptr_t)page, .end = (uintptr_t)page + 4096,
					  .src = &src, .dst = &dst, .pgmap_owner = &owner_tag,
					  .flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE };
		ASSERT_EQ(uhmm_migrate_vma_setup(&m), 0);
		ASSERT_EQ(m.cpages, 1);
		ASSERT_EQ(uhmm_migrate_copy(g_owned, &src, &dst, 1), 1);
		uint64_t sys = uhmm_migrate_pfn_to_page(dst);
		ASSERT_NE(sys, 0);
		ASSERT_EQ(uhmm_pfn_to_virt(src), NULL);  /* the device page: no host memory */
		if (how == 1) {
			const char *v = uhmm_pfn_to_virt(sys);
			ASSERT_NOT_NULL(v);
			ASSERT_EQ(v[0], 'a' + i);
			ASSERT_EQ(v[4095], 'a' + i);
		} else if (how == 2) {
			ASSERT_EQ(uhmm_devmem_page_put(sys), 0);
			dst = 0;
			gave_up++;
		}
		uhmm_migrate_vma_pages(&m);
		uhmm_migrate_vma_finalize(&m);
		ASSERT_EQ(uhmm_devmem_stats(g_owned, &st), 0);
		ASSERT_EQ(st.in_use, how == 2 ? 4 : 3);
		/* the CPU sees the data (a page given up faults back first) */
		ASSERT_EQ(page[0], 'a' + i);
		ASSERT_EQ(page[4095], 'a' + i);
		ASSERT_EQ(uhmm_devmem_stats(g_owned, &st), 0);
		ASSERT_EQ(st.in_use, 3);
		ASSERT_EQ(owned_migrate(page, 1), 1);
	}
	uhmm_stats_get(&s1);
	ASSERT_EQ(s1.cpu_faults_private - s0.cpu_faults_private, gave_up);
	ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, 200);
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, 200);
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(buf[i * 4096 + 7], 'a' + i);
	ASSERT_EQ(uhmm_devmem_stats(g_owned, &st), 0);
	ASSERT_EQ(st.in_use, 0);
	ASSERT_EQ(munmap(buf, 4 * 4096), 0);
	ASSERT_EQ(uhmm_devmem_destroy(g_owned), 0);
	assert_runtime_ok();
}

/*
 * Staging the driver registered (uhmm_devmem_set_staging): every run of
 * both directions has its host side inside the buffer, a batch is one slot
 * (8 pages here: a 16-page migration is two calls), data and counters
 * exact, a failing copy through it loses nothing; and its bad input.
 */
TEST(devmem_owned_staging)
{
	if (!(uhmm_features() & UHMM_FEAT_MOVE))
		SKIP("migration needs UFFDIO_MOVE (Linux 6.8+)");
	uint64_t len = 8 * 4096;
	char *stage = mmap(NULL, len + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
	ASSERT_MAPPED(stage);
	struct uhmm_devmem *host = NULL;
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, &owner_tag, &priv_ops, NULL, 16, &host),
		  0);
	ASSERT_EQ(uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, &owner_tag, &owned_dev_ops,
					   &owned_ops, 0, NULL, 64, &g_owned), 0);
	/* bad input: no pool, a host-memory pool, no buffer, unaligned, empty, part pages */
	ASSERT_EQ(uhmm_devmem_set_staging(NULL, stage, len), -EINVAL);
	ASSERT_EQ(uhmm_devmem_set_staging(host, stage, len), -EINVAL);
	ASSERT_EQ(uhmm_devmem_set_staging(g_owned, NULL, len), -EINVAL);
	ASSERT_EQ(uhmm_devmem_set_staging(g_owned, stage + 8, len), -EINVAL);
	ASSERT_EQ(uhmm_devmem_set_staging(g_owned, stage, 0), -EINVAL);
	ASSERT_EQ(uhmm_devmem_set_staging(g_owned, stage, len - 100), -EINVAL);
	ASSERT_EQ(uhmm_devmem_destroy(host), 0);
	ASSERT_EQ(uhmm_devmem_set_staging(g_owned, stage, len), 0);
	ASSERT_EQ(uhmm_devmem_set_staging(g_owned, stage + 4096, len), -EBUSY);  /* once */
	g_stage = stage;
	g_stage_len = len;
	g_stage_outside = 0;
	/* the driver writes the staging to RAM, uhmm installs from it */
	owned_round_trip(9, 'A', 2);  /* a batch is one 8-page slot */
	ASSERT_EQ(g_stage_outside, 0);
	g_stage = NULL;
	ASSERT_EQ(uhmm_devmem_destroy(g_owned), 0);
	ASSERT_EQ(munmap(stage, len + 4096), 0);
	assert_runtime_ok();
}

TEST_MAIN()
