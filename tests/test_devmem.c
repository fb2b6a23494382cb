/* SPDX-License-Identifier: MIT */
/*
 * test_devmem.c - conformance tests for the public device-memory API used
 * directly, the way a real driver would (no dmirror): uhmm_devmem pools
 * (create/destroy, allocation up to max_pages, references and page_free,
 * zone data, accessors, zeroed pages), the three migrate_vma phases written
 * by hand with a migrate_to_ram callback, eviction by frame number
 * (uhmm_migrate_device_range), and argument checking.
 *
 * The test driver below owns one pool per test process (each case runs in its
 * own forked child): page_free counts calls, migrate_to_ram moves exactly the
 * faulting page back with uhmm_migrate_vma_setup/pages/finalize,
 * uhmm_sys_page_alloc and uhmm_page_copy, as lib/test_hmm.c does.
 */
#include "harness.h"
#include "dmtest.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/syscall.h>
#include <uhmm.h>

#define PS		UHMM_PAGE_SIZE
#define NINTS(size)	((size) / sizeof(int))
#define RW		(PROT_READ | PROT_WRITE)
#define PRIV_ANON	(MAP_PRIVATE | MAP_ANONYMOUS)
#define BOGUS_FRAME	((1ULL << 45) + 123)	/* no pool has such a frame */

/* ------------------------------------------------------------------------ */
/* the test driver                                                           */
/* ------------------------------------------------------------------------ */

static const char drv_owner[] = "test_devmem driver";

struct drv {
	struct uhmm_devmem *mem;
	atomic_uint frees;		/* page_free calls */
	atomic_uint faults;		/* migrate_to_ram calls */
	atomic_uint fault_errors;	/* migrate_to_ram calls that failed */
	atomic_uint wrong_mem;		/* callbacks with a mem that is not ours */
	atomic_uint_least64_t last_freed;
	atomic_uint_least64_t gate_addr;	/* migrate_to_ram of this page waits ... */
	atomic_int gate_entered;		/* ... says so here, until gate_addr is 0 */
};

static struct drv drv;

static void drv_page_free(struct uhmm_devmem *mem, uint64_t page)
{
	if (mem != drv.mem || uhmm_devmem_driver_data(mem) != &drv)
		atomic_fetch_add(&drv.wrong_mem, 1);
	atomic_store(&drv.last_freed, page);
	atomic_fetch_add(&drv.frees, 1);
}

/* Bring the one faulting page back to a system page. */
static int drv_migrate_to_ram(struct uhmm_devmem *mem, const struct uhmm_fault *vmf)
{
	uint64_t src = 0, dst = 0, sys;
	struct uhmm_migrate args = {
		.start = vmf->addr,
		.end = vmf->addr + PS,
		.src = &src,
		.dst = &dst,
		.pgmap_owner = drv_owner,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
		.fault_page = vmf->page,
	};
	int ret;

	atomic_fetch_add(&drv.faults, 1);
	if (mem != drv.mem)
		atomic_fetch_add(&drv.wrong_mem, 1);
	if (atomic_load(&drv.gate_addr) == vmf->addr) {
		atomic_store(&drv.gate_entered, 1);
		while (atomic_load(&drv.gate_addr) == vmf->addr)
			usleep(1000);
	}
	ret = uhmm_migrate_vma_setup(&args);
	if (ret)
		goto fail;
	if (src & UHMM_MIGRATE_PFN_MIGRATE) {
		ret = uhmm_sys_page_alloc(&sys);
		if (!ret)
			ret = uhmm_page_copy(sys, uhmm_migrate_pfn_to_page(src));
		if (!ret)
			dst = uhmm_migrate_pfn(sys) | (src & UHMM_MIGRATE_PFN_WRITE);
	}
	uhmm_migrate_vma_pages(&args);
	uhmm_migrate_vma_finalize(&args);
	if (!ret)
		return 0;
fail:
	atomic_fetch_add(&drv.fault_errors, 1);
	return ret;
}

static const struct uhmm_devmem_ops drv_ops = {
	.page_free = drv_page_free,
	.migrate_to_ram = drv_migrate_to_ram,
};

static const struct uhmm_devmem_ops drv_coherent_ops = {
	.page_free = drv_page_free,
};

static void runtime_or_skip(void)
{
	int ret = uhmm_init();

	if (ret == -ENOSYS)
		SKIP("kernel has no userfaultfd");
	if (ret == -EPERM)
		SKIP("userfaultfd not permitted for this user");
	ASSERT_EQ(ret, 0);
}

static void drv_create(enum uhmm_devmem_type type, uint64_t max_pages)
{
	runtime_or_skip();
	ASSERT_EQ(uhmm_devmem_create(type, drv_owner,
				     type == UHMM_DEVMEM_PRIVATE ? &drv_ops : &drv_coherent_ops,
				     &drv, max_pages, &drv.mem), 0);
	ASSERT_NOT_NULL(drv.mem);
}

/* The driver is done: no callback went wrong, the pool is empty and goes away. */
static void drv_destroy(void)
{
	struct uhmm_devmem_stats st;

	ASSERT_EQ(atomic_load(&drv.wrong_mem), 0);
	ASSERT_EQ(atomic_load(&drv.fault_errors), 0);
	ASSERT_EQ(uhmm_devmem_stats(drv.mem, &st), 0);
	ASSERT_EQ(st.in_use, 0);
	ASSERT_EQ(st.allocated, st.freed);
	ASSERT_EQ(atomic_load(&drv.frees), st.freed);
	ASSERT_EQ(uhmm_devmem_destroy(drv.mem), 0);
	drv.mem = NULL;
}

static struct uhmm_devmem_stats drv_stats(void)
{
	struct uhmm_devmem_stats st;

	memset(&st, 0, sizeof(st));
	ASSERT_EQ(uhmm_devmem_stats(drv.mem, &st), 0);
	return st;
}

static uint64_t drv_alloc(void)
{
	uint64_t page = 0;

	ASSERT_EQ(uhmm_devmem_alloc(drv.mem, &page), 0);
	ASSERT_NE(page, 0);
	return page;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);

	ASSERT_NOT_NULL(p);
	return p;
}

/* Driver phase of a migration to the pool: a device page per collected entry. */
static void drv_alloc_and_copy(const uint64_t *src, uint64_t *dst, uint64_t npages)
{
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t spage = uhmm_migrate_pfn_to_page(src[i]), dpage;

		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		dpage = drv_alloc();
		if (spage)
			ASSERT_EQ(uhmm_page_copy(dpage, spage), 0);
		dst[i] = uhmm_migrate_pfn(dpage);
		if ((src[i] & UHMM_MIGRATE_PFN_WRITE) || !spage)
			dst[i] |= UHMM_MIGRATE_PFN_WRITE;
	}
}

/* All three phases over [addr, +npages) into the pool; returns cpages. */
static uint64_t drv_migrate_to_dev(char *addr, uint64_t npages, uint64_t *dst)
{
	uint64_t *src = xcalloc(npages, sizeof(*src));
	struct uhmm_migrate args = {
		.start = (uint64_t)(uintptr_t)addr,
		.end = (uint64_t)(uintptr_t)addr + npages * PS,
		.src = src,
		.dst = dst,
		.pgmap_owner = drv_owner,
		.flags = UHMM_MIGRATE_SELECT_SYSTEM,
	};
	uint64_t cpages;

	ASSERT_EQ(uhmm_migrate_vma_setup(&args), 0);
	ASSERT_EQ(args.npages, npages);
	drv_alloc_and_copy(src, dst, npages);
	uhmm_migrate_vma_pages(&args);
	uhmm_migrate_vma_finalize(&args);
	cpages = args.cpages;
	free(src);
	return cpages;
}

/* ------------------------------------------------------------------------ */
/* pools                                                                     */
/* ------------------------------------------------------------------------ */

TEST(create_bad_args)
{
	const struct uhmm_devmem_ops no_fault = { .page_free = drv_page_free };
	const struct uhmm_devmem_ops no_ops = { 0 };
	struct uhmm_devmem *mem = NULL;
	struct uhmm_devmem_stats st;
	uint64_t page;

	runtime_or_skip();
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, NULL, &drv_ops, &drv, 16, &mem),
		  -EINVAL);
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, drv_owner, &drv_ops, &drv, 16, NULL),
		  -EINVAL);
	ASSERT_EQ(uhmm_devmem_create((enum uhmm_devmem_type)7, drv_owner, &drv_ops, &drv, 16,
				     &mem), -EINVAL);
	/* a private pool needs migrate_to_ram */
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, drv_owner, NULL, &drv, 16, &mem),
		  -EINVAL);
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, drv_owner, &no_fault, &drv, 16, &mem),
		  -EINVAL);
	ASSERT_TRUE(mem == NULL);
	ASSERT_EQ(uhmm_devmem_destroy(NULL), -EINVAL);
	ASSERT_EQ(uhmm_devmem_alloc(NULL, &page), -EINVAL);
	ASSERT_LT(uhmm_devmem_stats(NULL, &st), 0);

	/* a coherent pool needs no callbacks */
	ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_COHERENT, drv_owner, &no_ops, NULL, 16, &mem), 0);
	ASSERT_NOT_NULL(mem);
	ASSERT_EQ(uhmm_devmem_type(mem), UHMM_DEVMEM_COHERENT);
	ASSERT_TRUE(uhmm_devmem_owner(mem) == drv_owner);
	ASSERT_TRUE(uhmm_devmem_driver_data(mem) == NULL);
	ASSERT_EQ(uhmm_devmem_alloc(mem, NULL), -EINVAL);
	ASSERT_EQ(uhmm_devmem_destroy(mem), 0);
}

/* Allocation up to max_pages, then -ENOMEM; every page_free comes once. */
TEST(alloc_until_full)
{
	const uint64_t max = 600;		/* more than one chunk of 512 */
	uint64_t *pages = xcalloc(max, sizeof(*pages)), extra = 0;
	struct uhmm_stats s0, s1;
	struct uhmm_devmem_stats st;

	drv_create(UHMM_DEVMEM_PRIVATE, max);
	st = drv_stats();
	ASSERT_EQ(st.capacity, max);
	ASSERT_EQ(st.in_use, 0);
	for (uint64_t i = 0; i < max; i++) {
		pages[i] = drv_alloc();
		ASSERT_TRUE(uhmm_page_devmem(pages[i]) == drv.mem);
		for (uint64_t j = 0; j < i; j++)
			ASSERT_NE(pages[j], pages[i]);
	}
	s0 = stats_now();
	ASSERT_EQ(uhmm_devmem_alloc(drv.mem, &extra), -ENOMEM);
	s1 = stats_now();
	ASSERT_GE(s1.alloc_failures - s0.alloc_failures, 1);

	st = drv_stats();
	ASSERT_EQ(st.allocated, max);
	ASSERT_EQ(st.freed, 0);
	ASSERT_EQ(st.in_use, max);
	ASSERT_EQ(st.alloc_failures, 1);
	ASSERT_GE(st.reserved, max);
	ASSERT_LE(st.reserved, 1024);

	for (uint64_t i = 0; i < max; i++)
		ASSERT_EQ(uhmm_devmem_page_put(pages[i]), 0);
	ASSERT_EQ(atomic_load(&drv.frees), max);
	st = drv_stats();
	ASSERT_EQ(st.freed, max);
	ASSERT_EQ(st.in_use, 0);

	/* room again */
	extra = drv_alloc();
	ASSERT_EQ(drv_stats().in_use, 1);
	ASSERT_EQ(uhmm_devmem_page_put(extra), 0);
	free(pages);
	drv_destroy();
}

/* References: page_free exactly once, at the last put. */
TEST(page_get_put)
{
	uint64_t page;

	drv_create(UHMM_DEVMEM_PRIVATE, 16);
	page = drv_alloc();
	ASSERT_EQ(uhmm_devmem_page_get(page), 0);
	ASSERT_EQ(uhmm_devmem_page_put(page), 0);
	ASSERT_EQ(atomic_load(&drv.frees), 0);
	ASSERT_EQ(drv_stats().in_use, 1);
	ASSERT_TRUE(uhmm_page_devmem(page) == drv.mem);

	ASSERT_EQ(uhmm_devmem_page_put(page), 0);
	ASSERT_EQ(atomic_load(&drv.frees), 1);
	ASSERT_EQ(atomic_load(&drv.last_freed), page);
	ASSERT_EQ(drv_stats().in_use, 0);
	ASSERT_EQ(drv_stats().freed, 1);

	/* a free page is no longer live */
	ASSERT_EQ(uhmm_devmem_page_get(page), -EINVAL);
	ASSERT_EQ(uhmm_devmem_page_put(page), -EINVAL);
	ASSERT_EQ(atomic_load(&drv.frees), 1);
	ASSERT_EQ(uhmm_devmem_page_get(0), -EINVAL);
	ASSERT_EQ(uhmm_devmem_page_put(0), -EINVAL);
	ASSERT_EQ(uhmm_devmem_page_put(BOGUS_FRAME), -EINVAL);
	drv_destroy();
}

/* Accessors of a pool and of its pages. */
TEST(accessors)
{
	int tag1, tag2;
	uint64_t a, b;
	char *va, *vb;

	drv_create(UHMM_DEVMEM_PRIVATE, 16);
	ASSERT_EQ(uhmm_devmem_type(drv.mem), UHMM_DEVMEM_PRIVATE);
	ASSERT_TRUE(uhmm_devmem_owner(drv.mem) == drv_owner);
	ASSERT_TRUE(uhmm_devmem_driver_data(drv.mem) == &drv);

	a = drv_alloc();
	b = drv_alloc();
	ASSERT_TRUE(uhmm_page_devmem(a) == drv.mem);
	ASSERT_TRUE(uhmm_page_devmem(0) == NULL);
	ASSERT_TRUE(uhmm_page_devmem(BOGUS_FRAME) == NULL);
	ASSERT_EQ(uhmm_page_addr(a), 0);		/* holds no process data */

	ASSERT_EQ(uhmm_page_set_zone_data(a, &tag1), 0);
	ASSERT_EQ(uhmm_page_set_zone_data(b, &tag2), 0);
	ASSERT_TRUE(uhmm_page_zone_data(a) == &tag1);
	ASSERT_TRUE(uhmm_page_zone_data(b) == &tag2);
	ASSERT_EQ(uhmm_page_set_zone_data(a, NULL), 0);
	ASSERT_TRUE(uhmm_page_zone_data(a) == NULL);
	ASSERT_EQ(uhmm_page_set_zone_data(0, &tag1), -EINVAL);
	ASSERT_EQ(uhmm_page_set_zone_data(BOGUS_FRAME, &tag1), -EINVAL);
	ASSERT_TRUE(uhmm_page_zone_data(0) == NULL);

	/* each page is its own page-sized slot */
	va = uhmm_pfn_to_virt(a);
	vb = uhmm_pfn_to_virt(b);
	ASSERT_NOT_NULL(va);
	ASSERT_NOT_NULL(vb);
	ASSERT_TRUE(va + PS <= vb || vb + PS <= va);
	ASSERT_TRUE(uhmm_pfn_to_virt(BOGUS_FRAME) == NULL);

	ASSERT_EQ(uhmm_devmem_page_put(a), 0);
	ASSERT_EQ(uhmm_devmem_page_put(b), 0);
	ASSERT_EQ(atomic_load(&drv.frees), 2);
	drv_destroy();
}

/*
 * A huge page's zone data is the head's: every tail reads it while the huge
 * page is whole, and keeps it when the huge page splits, unless the driver
 * gave a tail its own (the stress test's leak: an eviction by owner skipped
 * the tails of a split huge page).
 */
TEST(zone_data_huge)
{
	int head_tag, tail_tag;
	uint64_t h;

	drv_create(UHMM_DEVMEM_PRIVATE, UHMM_HUGE_PAGES);
	ASSERT_EQ(uhmm_devmem_alloc_huge(drv.mem, &h), 0);
	ASSERT_EQ(uhmm_page_set_zone_data(h, &head_tag), 0);
	ASSERT_EQ(uhmm_page_set_zone_data(h + 7, &tail_tag), 0);
	ASSERT_TRUE(uhmm_page_zone_data(h + 1) == &head_tag);
	ASSERT_TRUE(uhmm_page_zone_data(h + UHMM_HUGE_PAGES - 1) == &head_tag);
	ASSERT_TRUE(uhmm_page_zone_data(h + 7) == &tail_tag);
	/* the head goes first: the split still hands its data to the tails */
	ASSERT_EQ(uhmm_devmem_page_put(h), 0);
	ASSERT_EQ(uhmm_page_order(h + 1), 0);
	ASSERT_TRUE(uhmm_page_zone_data(h) == NULL);  /* freed */
	for (uint64_t k = 1; k < UHMM_HUGE_PAGES; k++)
		ASSERT_TRUE(uhmm_page_zone_data(h + k) == (k == 7 ? (void *)&tail_tag
								 : (void *)&head_tag));
	/* split pages are pages of their own: a new value is theirs alone */
	ASSERT_EQ(uhmm_page_set_zone_data(h + 2, NULL), 0);
	ASSERT_TRUE(uhmm_page_zone_data(h + 2) == NULL);
	ASSERT_TRUE(uhmm_page_zone_data(h + 3) == &head_tag);
	for (uint64_t k = 1; k < UHMM_HUGE_PAGES; k++)
		ASSERT_EQ(uhmm_devmem_page_put(h + k), 0);
	ASSERT_EQ(atomic_load(&drv.frees), (int)UHMM_HUGE_PAGES);
	drv_destroy();
}

/* I5: a page reads zeros when allocated, also after another user dirtied it. */
TEST(alloc_zeroed)
{
	enum { N = 8 };
	uint64_t pages[N], extra;
	char *v;

	drv_create(UHMM_DEVMEM_PRIVATE, N);
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < N; i++) {
			pages[i] = drv_alloc();
			v = uhmm_pfn_to_virt(pages[i]);
			ASSERT_NOT_NULL(v);
			EXPECT_ZERO(v, PS);
			memset(v, 0xA5 + i, PS);
		}
		ASSERT_EQ(uhmm_devmem_alloc(drv.mem, &extra), -ENOMEM);
		for (int i = 0; i < N; i++)
			ASSERT_EQ(uhmm_devmem_page_put(pages[i]), 0);
	}
	ASSERT_EQ(atomic_load(&drv.frees), 3 * N);
	drv_destroy();
}

/*
 * The batch calls: alloc_many hands out ascending pages (up to the pool's
 * size), page_copy_many moves data (a run, a hole, a single page) and
 * reports each failure; bad arguments get -EINVAL.
 */
TEST(batch_alloc_copy)
{
	enum { N = 64 };
	uint64_t dev[N], sys[N], dst[N], extra[N];
	int errs[N];

	drv_create(UHMM_DEVMEM_PRIVATE, N + 8);
	ASSERT_EQ(uhmm_devmem_alloc_many(NULL, N, dev), -EINVAL);
	ASSERT_EQ(uhmm_devmem_alloc_many(drv.mem, 0, dev), -EINVAL);
	ASSERT_EQ(uhmm_devmem_alloc_many(drv.mem, N, NULL), -EINVAL);
	ASSERT_EQ(uhmm_sys_page_alloc_many(0, sys), -EINVAL);
	ASSERT_EQ(uhmm_sys_page_alloc_many(N, NULL), -EINVAL);
	ASSERT_EQ(uhmm_page_copy_many(NULL, sys, N, errs), -EINVAL);
	ASSERT_EQ(uhmm_page_copy_many(dev, NULL, N, errs), -EINVAL);

	ASSERT_EQ(uhmm_devmem_alloc_many(drv.mem, N, dev), N);
	ASSERT_EQ(drv_stats().in_use, N);
	for (int i = 1; i < N; i++)
		ASSERT_GT(dev[i], dev[i - 1]);
	/* Only 8 left: a short count, then -ENOMEM. */
	ASSERT_EQ(uhmm_devmem_alloc_many(drv.mem, N, extra), 8);
	ASSERT_EQ(uhmm_devmem_alloc_many(drv.mem, 1, extra + 8), -ENOMEM);
	for (int i = 0; i < 8; i++)
		ASSERT_EQ(uhmm_devmem_page_put(extra[i]), 0);

	/* Device pages with data, every 5th left empty (a hole: reads zeros). */
	for (int i = 0; i < N; i++)
		if (i % 5)
			memset(uhmm_pfn_to_virt(dev[i]), 0x40 + i, PS);
	ASSERT_EQ(uhmm_sys_page_alloc_many(N, sys), N);
	for (int i = 1; i < N; i++)
		ASSERT_GT(sys[i], sys[i - 1]);
	memcpy(dst, sys, sizeof(dst));
	dst[7] = 0;				/* skipped */
	ASSERT_EQ(uhmm_page_copy_many(dst, dev, N, errs), 0);
	for (int i = 0; i < N; i++) {
		char *v = uhmm_pfn_to_virt(sys[i]);

		ASSERT_EQ(errs[i], 0);
		if (i == 7 || i % 5 == 0) {
			EXPECT_ZERO(v, PS);
		} else {
			ASSERT_EQ(v[0], 0x40 + i);
			ASSERT_EQ(v[PS - 1], 0x40 + i);
		}
	}
	/* A bogus pair fails alone; the others are copied. */
	dst[0] = 1ULL << 40;
	ASSERT_EQ(uhmm_page_copy_many(dst, dev, 2, errs), 1);
	ASSERT_EQ(errs[0], -EINVAL);
	ASSERT_EQ(errs[1], 0);
	for (int i = 0; i < N; i++) {
		ASSERT_EQ(uhmm_devmem_page_put(dev[i]), 0);
		ASSERT_EQ(uhmm_devmem_page_put(sys[i]), 0);
	}
	ASSERT_EQ(drv_stats().in_use, 0);
	drv_destroy();
}

/* destroy refuses a pool with pages in use. */
TEST(destroy_busy)
{
	uint64_t page;

	drv_create(UHMM_DEVMEM_PRIVATE, 16);
	page = drv_alloc();
	ASSERT_EQ(uhmm_devmem_destroy(drv.mem), -EBUSY);
	ASSERT_EQ(drv_stats().in_use, 1);		/* still usable */
	ASSERT_TRUE(uhmm_page_devmem(page) == drv.mem);
	ASSERT_EQ(uhmm_devmem_page_put(page), 0);
	ASSERT_EQ(atomic_load(&drv.frees), 1);
	drv_destroy();
}

/* ------------------------------------------------------------------------ */
/* hand-written migration                                                    */
/* ------------------------------------------------------------------------ */

struct reader {
	const volatile int *addr;
	int value;
	atomic_int done;
};

static void *reader_fn(void *arg)
{
	struct reader *r = arg;

	r->value = *r->addr;
	atomic_store(&r->done, 1);
	return NULL;
}

/* Setup's output: every page collected, each frame holding the page's data. */
static void check_collected(const uint64_t *src, const uint64_t *dst, uint64_t n)
{
	const uint64_t want = UHMM_MIGRATE_PFN_VALID | UHMM_MIGRATE_PFN_MIGRATE |
			      UHMM_MIGRATE_PFN_WRITE;

	for (uint64_t i = 0; i < n; i++) {
		uint64_t frame = uhmm_migrate_pfn_to_page(src[i]);
		const int *data;

		ASSERT_EQ(src[i] & want, want);
		ASSERT_EQ(dst[i], 0);
		ASSERT_NE(frame, 0);
		data = uhmm_pfn_to_virt(frame);
		ASSERT_NOT_NULL(data);
		ASSERT_EQ(data[0], (int)(i * NINTS(PS)));
		ASSERT_EQ(data[NINTS(PS) - 1], (int)((i + 1) * NINTS(PS) - 1));
	}
}

/*
 * A buffer into a private pool, phase by phase; a CPU access during the
 * migration waits for finalize, and afterwards faults through migrate_to_ram
 * and sees the data.
 */
TEST(migrate_three_phases)
{
	const uint64_t n = 16;
	uint64_t *src = xcalloc(n, sizeof(*src)), *dst = xcalloc(n, sizeof(*dst));
	struct reader rd = { 0 };
	struct uhmm_stats s0, s1, s2;
	struct uhmm_migrate args;
	pthread_t thread;
	char *buf = NULL;
	unsigned int faults;

	drv_create(UHMM_DEVMEM_PRIVATE, 512);
	buf = map_anon(n * PS, RW, MAP_PRIVATE);
	fill_ints(buf, n * PS, 0, 1);
	memset(dst, 0x77, n * sizeof(*dst));		/* setup must zero it */
	s0 = stats_now();

	memset(&args, 0, sizeof(args));
	args.start = (uint64_t)(uintptr_t)buf;
	args.end = args.start + n * PS;
	args.src = src;
	args.dst = dst;
	args.pgmap_owner = drv_owner;
	args.flags = UHMM_MIGRATE_SELECT_SYSTEM;
	ASSERT_EQ(uhmm_migrate_vma_setup(&args), 0);
	ASSERT_EQ(args.npages, n);
	ASSERT_EQ(args.cpages, n);
	check_collected(src, dst, n);

	/* The CPU cannot see a collected page: a reader waits for finalize. */
	rd.addr = (const volatile int *)(buf + (n - 1) * PS);
	ASSERT_EQ(pthread_create(&thread, NULL, reader_fn, &rd), 0);
	usleep(100 * 1000);
	ASSERT_EQ(atomic_load(&rd.done), 0);

	drv_alloc_and_copy(src, dst, n);
	uhmm_migrate_vma_pages(&args);
	for (uint64_t i = 0; i < n; i++)
		ASSERT_TRUE(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	ASSERT_EQ(atomic_load(&rd.done), 0);
	uhmm_migrate_vma_finalize(&args);
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, n);

	/* The reader got the data of the last page, through migrate_to_ram. */
	ASSERT_EQ(pthread_join(thread, NULL), 0);
	ASSERT_EQ(rd.value, (int)((n - 1) * NINTS(PS)));
	faults = atomic_load(&drv.faults);
	ASSERT_GE(faults, 1);
	ASSERT_EQ(atomic_load(&drv.frees), faults);
	ASSERT_EQ(drv_stats().in_use, n - faults);
	for (uint64_t i = 0; i < n - 1; i++) {
		uint64_t dpage = uhmm_migrate_pfn_to_page(dst[i]);
		const int *dv = uhmm_pfn_to_virt(dpage);

		ASSERT_EQ(uhmm_page_addr(dpage), (uint64_t)(uintptr_t)(buf + i * PS));
		ASSERT_NOT_NULL(dv);
		ASSERT_EQ(dv[5], (int)(i * NINTS(PS) + 5));	/* the device's view */
	}

	/* The CPU reads everything back, one migrate_to_ram per page. */
	EXPECT_INTS(buf, n * PS, 0, 1);
	s2 = stats_now();
	ASSERT_EQ(atomic_load(&drv.faults), n);
	ASSERT_EQ(atomic_load(&drv.frees), n);
	ASSERT_EQ(drv_stats().in_use, 0);
	ASSERT_GE(s2.cpu_faults_private - s0.cpu_faults_private, n);
	ASSERT_EQ(s2.pages_to_system - s0.pages_to_system, n);

	/* the pages are plain memory again: writes stick, no more faults */
	fill_ints(buf, n * PS, 9, 1);
	EXPECT_INTS(buf, n * PS, 9, 1);
	ASSERT_EQ(atomic_load(&drv.faults), n);
	ASSERT_EQ(munmap(buf, n * PS), 0);
	free(src);
	free(dst);
	drv_destroy();
}

/* A reader that says when it is about to touch its page. */
struct tid_reader {
	const volatile int *addr;
	int value;
	atomic_int tid;
};

static void *tid_reader_fn(void *arg)
{
	struct tid_reader *r = arg;

	atomic_store(&r->tid, (int)syscall(SYS_gettid));
	r->value = *r->addr;
	return NULL;
}

/* Thread tid sleeps ('S': after tid_reader_fn's flag, that is in its fault). */
static bool thread_sleeping(int tid)
{
	char path[64], buf[256], *p;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	f = fopen(path, "r");
	if (!f)
		return false;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] == 'S';
}

/*
 * A CPU fault that found its page locked is parked by the service thread;
 * when the thread is woken by the operation that held the page (here the
 * install of a migration to RAM) it goes on, and its parked record must not
 * be served later as if the fault still were there: here the page went back
 * to the device meanwhile, and serving the record ran migrate_to_ram for a
 * fault that no longer existed (the page came back to RAM).  The service
 * thread is held in the migrate_to_ram of another page (the gate) from
 * before the record is parked until the page is on the device again.
 */
TEST_TIMEOUT(parked_fault_not_served_after_wake, 30)
{
	const uint64_t n = 3;		/* P: the parked fault, Q: the gate, S: the sync */
	uint64_t dst[3] = { 0 }, src1 = 0, dst1 = 0, sys;
	struct tid_reader rp = { 0 }, rq = { 0 }, rs = { 0 };
	pthread_t tp, tq, ts;
	struct uhmm_migrate args;
	unsigned int faults0, faults;
	char *buf;

	drv_create(UHMM_DEVMEM_PRIVATE, 16);
	buf = map_anon(n * PS, RW, MAP_PRIVATE);
	fill_ints(buf, n * PS, 0, 1);
	ASSERT_EQ(drv_migrate_to_dev(buf, n, dst), n);
	ASSERT_EQ(drv_stats().in_use, n);

	/* P back to RAM by hand: locked from setup to finalize */
	memset(&args, 0, sizeof(args));
	args.start = (uint64_t)(uintptr_t)buf;
	args.end = args.start + PS;
	args.src = &src1;
	args.dst = &dst1;
	args.pgmap_owner = drv_owner;
	args.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE;
	ASSERT_EQ(uhmm_migrate_vma_setup(&args), 0);
	ASSERT_EQ(args.cpages, 1);

	/* a reader of P faults on the locked page: parked */
	rp.addr = (const volatile int *)buf;
	ASSERT_EQ(pthread_create(&tp, NULL, tid_reader_fn, &rp), 0);
	while (!atomic_load(&rp.tid) || !thread_sleeping(atomic_load(&rp.tid)))
		usleep(1000);
	/*
	 * A reader of Q: the service thread serves it in place and waits in
	 * the gate; its message came after P's, so P's was read and parked.
	 */
	atomic_store(&drv.gate_addr, (uint64_t)(uintptr_t)(buf + PS));
	faults0 = atomic_load(&drv.faults);
	rq.addr = (const volatile int *)(buf + PS);
	ASSERT_EQ(pthread_create(&tq, NULL, tid_reader_fn, &rq), 0);
	while (!atomic_load(&drv.gate_entered))
		usleep(1000);

	/* P's migration ends: installed, unlocked, its reader woken and done */
	ASSERT_EQ(uhmm_sys_page_alloc(&sys), 0);
	ASSERT_EQ(uhmm_page_copy(sys, uhmm_migrate_pfn_to_page(src1)), 0);
	dst1 = uhmm_migrate_pfn(sys);
	uhmm_migrate_vma_pages(&args);
	uhmm_migrate_vma_finalize(&args);
	ASSERT_EQ(pthread_join(tp, NULL), 0);
	ASSERT_EQ(rp.value, 0);

	/* P goes to the device again, then the service thread goes on */
	ASSERT_EQ(drv_migrate_to_dev(buf, 1, dst), 1);
	atomic_store(&drv.gate_addr, 0);
	ASSERT_EQ(pthread_join(tq, NULL), 0);
	ASSERT_EQ(rq.value, (int)NINTS(PS));

	/* A fault on S is served after the parked record was looked at. */
	rs.addr = (const volatile int *)(buf + 2 * PS);
	ASSERT_EQ(pthread_create(&ts, NULL, tid_reader_fn, &rs), 0);
	ASSERT_EQ(pthread_join(ts, NULL), 0);
	ASSERT_EQ(rs.value, (int)(2 * NINTS(PS)));

	/* Q and S were faulted back, and nothing else: P stays on the device */
	faults = atomic_load(&drv.faults) - faults0;
	ASSERT_EQ(faults, 2);
	ASSERT_EQ(drv_stats().in_use, 1);
	EXPECT_INTS(buf, n * PS, 0, 1);
	ASSERT_EQ(drv_stats().in_use, 0);
	ASSERT_EQ(munmap(buf, n * PS), 0);
	drv_destroy();
}

/*
 * Plain malloc() memory: the heap, whose mapping the allocator (and uhmm's
 * own allocations) keep using while some of its pages are on the device.
 */
TEST_TIMEOUT(migrate_malloc_buffer, 30)
{
	const uint64_t n = 16;
	uint64_t *dst = xcalloc(n, sizeof(*dst));
	char *buf = NULL, *more[64];

	drv_create(UHMM_DEVMEM_PRIVATE, 64);
	ASSERT_EQ(posix_memalign((void **)&buf, PS, n * PS), 0);
	fill_ints(buf, n * PS, 0, 1);
	ASSERT_EQ(drv_migrate_to_dev(buf, n, dst), n);
	ASSERT_EQ(drv_stats().in_use, n);

	/* the heap grows and is used while the pages are away */
	for (int i = 0; i < 64; i++) {
		more[i] = malloc(8192);
		ASSERT_NOT_NULL(more[i]);
		memset(more[i], i, 8192);
	}
	EXPECT_INTS(buf, n * PS, 0, 1);
	ASSERT_EQ(atomic_load(&drv.faults), n);
	ASSERT_EQ(drv_stats().in_use, 0);
	for (int i = 0; i < 64; i++)
		free(more[i]);
	free(buf);
	free(dst);
	drv_destroy();
}

/* Unmapping device-private pages frees them, without migrating them back (I4). */
TEST(unmap_frees)
{
	const uint64_t n = 32;
	uint64_t *dst = xcalloc(n, sizeof(*dst));
	char *buf;

	drv_create(UHMM_DEVMEM_PRIVATE, 64);
	buf = map_anon(n * PS, RW, MAP_PRIVATE);
	fill_ints(buf, n * PS, 0, 1);
	ASSERT_EQ(drv_migrate_to_dev(buf, n, dst), n);
	ASSERT_EQ(drv_stats().in_use, n);
	ASSERT_EQ(uhmm_page_addr(uhmm_migrate_pfn_to_page(dst[3])),
		  (uint64_t)(uintptr_t)(buf + 3 * PS));

	ASSERT_EQ(munmap(buf, n * PS), 0);
	ASSERT_EQ(atomic_load(&drv.faults), 0);
	ASSERT_EQ(atomic_load(&drv.frees), n);
	ASSERT_EQ(drv_stats().in_use, 0);
	free(dst);
	drv_destroy();
}

/* Evict every page of the pool by frame number: data returns to its addresses. */
static uint64_t drv_evict_all(void)
{
	uint64_t first, count, done = 0, idx;

	for (idx = 0; uhmm_devmem_chunk(drv.mem, idx, &first, &count) == 0; idx++) {
		uint64_t *src = xcalloc(count, sizeof(*src));
		uint64_t *dst = xcalloc(count, sizeof(*dst));

		ASSERT_GT(count, 0);
		ASSERT_EQ(uhmm_migrate_device_range(src, first, count), 0);
		for (uint64_t i = 0; i < count; i++) {
			uint64_t sys, frame = uhmm_migrate_pfn_to_page(src[i]);

			if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
				continue;
			ASSERT_NE(frame, 0);
			ASSERT_EQ(uhmm_sys_page_alloc(&sys), 0);
			ASSERT_EQ(uhmm_page_copy(sys, frame), 0);
			dst[i] = uhmm_migrate_pfn(sys) | (src[i] & UHMM_MIGRATE_PFN_WRITE);
			done++;
		}
		uhmm_migrate_device_pages(src, dst, count);
		uhmm_migrate_device_finalize(src, dst, count);
		free(src);
		free(dst);
	}
	ASSERT_GT(idx, 0);
	return done;
}

TEST(evict_device_range)
{
	const uint64_t n = 40;
	uint64_t *dst = xcalloc(n, sizeof(*dst));
	struct uhmm_stats s0, s1;
	char *a, *b;

	drv_create(UHMM_DEVMEM_PRIVATE, 128);
	a = map_anon(n / 2 * PS, RW, MAP_PRIVATE);
	b = map_anon(n / 2 * PS, RW, MAP_PRIVATE);
	fill_ints(a, n / 2 * PS, 100, 1);
	fill_ints(b, n / 2 * PS, 200, 1);
	ASSERT_EQ(drv_migrate_to_dev(a, n / 2, dst), n / 2);
	ASSERT_EQ(drv_migrate_to_dev(b, n / 2, dst + n / 2), n / 2);
	ASSERT_EQ(drv_stats().in_use, n);

	s0 = stats_now();
	ASSERT_EQ(drv_evict_all(), n);
	s1 = stats_now();
	ASSERT_EQ(s1.evictions - s0.evictions, n);
	ASSERT_EQ(drv_stats().in_use, 0);
	ASSERT_EQ(atomic_load(&drv.frees), n);

	/* the data is back at its addresses, without any CPU fault on device pages */
	EXPECT_INTS(a, n / 2 * PS, 100, 1);
	EXPECT_INTS(b, n / 2 * PS, 200, 1);
	ASSERT_EQ(atomic_load(&drv.faults), 0);
	ASSERT_EQ(munmap(a, n / 2 * PS), 0);
	ASSERT_EQ(munmap(b, n / 2 * PS), 0);
	free(dst);
	drv_destroy();
}

/* Coherent pool: pages stay CPU mapped, come back by an explicit migration. */
TEST(coherent_migrate)
{
	const uint64_t n = 8;
	uint64_t *src = xcalloc(n, sizeof(*src)), *dst = xcalloc(n, sizeof(*dst));
	struct uhmm_stats s0, s1;
	struct uhmm_migrate args;
	char *buf;

	drv_create(UHMM_DEVMEM_COHERENT, 64);
	buf = map_anon(n * PS, RW, MAP_PRIVATE);
	fill_ints(buf, n * PS, 0, 1);
	ASSERT_EQ(drv_migrate_to_dev(buf, n, dst), n);
	ASSERT_EQ(drv_stats().in_use, n);
	s0 = stats_now();
	EXPECT_INTS(buf, n * PS, 0, 1);		/* no fault: the CPU maps them */
	fill_ints(buf, n * PS, 1, 1);
	s1 = stats_now();
	ASSERT_EQ(s1.cpu_faults_private - s0.cpu_faults_private, 0);
	ASSERT_EQ(drv_stats().in_use, n);

	memset(&args, 0, sizeof(args));
	args.start = (uint64_t)(uintptr_t)buf;
	args.end = args.start + n * PS;
	args.src = src;
	args.dst = dst;
	args.pgmap_owner = drv_owner;
	args.flags = UHMM_MIGRATE_SELECT_DEVICE_COHERENT;
	ASSERT_EQ(uhmm_migrate_vma_setup(&args), 0);
	ASSERT_EQ(args.cpages, n);
	for (uint64_t i = 0; i < n; i++) {
		uint64_t sys;

		ASSERT_TRUE(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
		ASSERT_TRUE(uhmm_page_devmem(uhmm_migrate_pfn_to_page(src[i])) == drv.mem);
		ASSERT_EQ(uhmm_sys_page_alloc(&sys), 0);
		ASSERT_EQ(uhmm_page_copy(sys, uhmm_migrate_pfn_to_page(src[i])), 0);
		dst[i] = uhmm_migrate_pfn(sys) | (src[i] & UHMM_MIGRATE_PFN_WRITE);
	}
	uhmm_migrate_vma_pages(&args);
	uhmm_migrate_vma_finalize(&args);
	ASSERT_EQ(drv_stats().in_use, 0);
	ASSERT_EQ(atomic_load(&drv.frees), n);
	EXPECT_INTS(buf, n * PS, 1, 1);

	/* and once more in, then unmapped: freed (I4) */
	memset(dst, 0, n * sizeof(*dst));
	ASSERT_EQ(drv_migrate_to_dev(buf, n, dst), n);
	ASSERT_EQ(munmap(buf, n * PS), 0);
	ASSERT_EQ(atomic_load(&drv.frees), 2 * n);
	free(src);
	free(dst);
	drv_destroy();
}

/* A dst entry that is not a pool page: that page is not migrated, data intact. */
TEST(bad_dst_entry)
{
	const uint64_t n = 4;
	uint64_t src[4] = { 0 }, dst[4] = { 0 };
	struct uhmm_stats s0, s1;
	struct uhmm_migrate args;
	char *buf;

	drv_create(UHMM_DEVMEM_PRIVATE, 16);
	buf = map_anon(n * PS, RW, MAP_PRIVATE);
	fill_ints(buf, n * PS, 0, 1);
	s0 = stats_now();
	memset(&args, 0, sizeof(args));
	args.start = (uint64_t)(uintptr_t)buf;
	args.end = args.start + n * PS;
	args.src = src;
	args.dst = dst;
	args.pgmap_owner = drv_owner;
	args.flags = UHMM_MIGRATE_SELECT_SYSTEM;
	ASSERT_EQ(uhmm_migrate_vma_setup(&args), 0);
	ASSERT_EQ(args.cpages, n);
	drv_alloc_and_copy(src + 1, dst + 1, n - 1);
	dst[0] = uhmm_migrate_pfn(BOGUS_FRAME) | UHMM_MIGRATE_PFN_WRITE;
	uhmm_migrate_vma_pages(&args);
	ASSERT_EQ(src[0] & UHMM_MIGRATE_PFN_MIGRATE, 0);
	for (uint64_t i = 1; i < n; i++)
		ASSERT_TRUE(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	uhmm_migrate_vma_finalize(&args);
	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, n - 1);
	ASSERT_EQ(drv_stats().in_use, n - 1);

	EXPECT_INTS(buf, n * PS, 0, 1);
	ASSERT_EQ(atomic_load(&drv.faults), n - 1);	/* page 0 never left */
	ASSERT_EQ(drv_stats().in_use, 0);
	ASSERT_EQ(munmap(buf, n * PS), 0);
	drv_destroy();
}

/* hugetlb mappings cannot migrate. */
TEST(migrate_hugetlb)
{
	const size_t size = 2UL << 20;
	uint64_t *src = xcalloc(size / PS, sizeof(*src)), *dst = xcalloc(size / PS, sizeof(*dst));
	struct uhmm_migrate args;
	char *p;

	drv_create(UHMM_DEVMEM_PRIVATE, 16);
	p = mmap(NULL, size, RW, PRIV_ANON | MAP_HUGETLB, -1, 0);
	if (p == MAP_FAILED)
		SKIP("no hugetlb pages available (vm.nr_hugepages is 0)");
	memset(p, 0x3C, size);
	memset(&args, 0, sizeof(args));
	args.start = (uint64_t)(uintptr_t)p;
	args.end = args.start + size;
	args.src = src;
	args.dst = dst;
	args.pgmap_owner = drv_owner;
	args.flags = UHMM_MIGRATE_SELECT_SYSTEM;
	ASSERT_EQ(uhmm_migrate_vma_setup(&args), -EINVAL);
	ASSERT_EQ((unsigned char)p[size - 1], 0x3C);
	ASSERT_EQ(drv_stats().in_use, 0);
	ASSERT_EQ(munmap(p, size), 0);
	free(src);
	free(dst);
	drv_destroy();
}

static int setup_range(uint64_t start, uint64_t end, uint64_t *src, uint64_t *dst)
{
	struct uhmm_migrate args;

	memset(&args, 0, sizeof(args));
	args.start = start;
	args.end = end;
	args.src = src;
	args.dst = dst;
	args.pgmap_owner = drv_owner;
	args.flags = UHMM_MIGRATE_SELECT_SYSTEM;
	return uhmm_migrate_vma_setup(&args);
}

/* Bad arguments are refused and nothing moves. */
/*
 * One page of the pool to RAM, by hand on this thread: setup, then
 * uhmm_migrate_copy into a new system page (a forwarded copy: finalize moves
 * the device page's data to the CPU in one step, fwd.c).  Whatever the
 * driver does between copy and finalize sees a copy's result: the new page
 * holds the data, the device page still does, and a driver that gives up
 * (drops its new page, clears dst) leaves the page on the device, intact.
 */
/* Page pfn's host memory holds want at int 5. */
static void expect_word5(uint64_t pfn, int want)
{
	const int *v = uhmm_pfn_to_virt(pfn);
	ASSERT_NOT_NULL(v);
	ASSERT_EQ(v[5], want);
}

static void to_ram_one(char *buf, int base, uint64_t i, int how)
{
	uint64_t src = 0, dst = 0;
	struct uhmm_migrate args = {
		.start = (uint64_t)(uintptr_t)(buf + i * PS),
		.end = (uint64_t)(uintptr_t)(buf + (i + 1) * PS),
		.src = &src, .dst = &dst,
		.pgmap_owner = drv_owner,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
	};
	int want5 = (int)(base + i * NINTS(PS) + 5);

	ASSERT_EQ(uhmm_migrate_vma_setup(&args), 0);
	ASSERT_EQ(args.cpages, 1);
	uint64_t dev = uhmm_migrate_pfn_to_page(src);
	ASSERT_EQ(uhmm_migrate_copy(drv.mem, &src, &dst, 1), 1);
	uint64_t sys = uhmm_migrate_pfn_to_page(dst);
	ASSERT_NE(sys, 0);
	ASSERT_EQ(uhmm_page_devmem(sys), NULL);
	switch (how) {
	case 1:  /* the new page, then the device page */
		expect_word5(sys, want5);
		expect_word5(dev, want5);
		break;
	case 2:  /* the device page first */
		expect_word5(dev, want5);
		expect_word5(sys, want5);
		break;
	case 3:  /* the driver gives up: its page goes, the page stays */
		ASSERT_EQ(uhmm_devmem_page_put(sys), 0);
		dst = 0;
		break;
	}
	uhmm_migrate_vma_pages(&args);
	uhmm_migrate_vma_finalize(&args);
	if (how == 3) {
		expect_word5(dev, want5);
		ASSERT_EQ(uhmm_page_addr(dev), args.start);
	}
}

TEST(forwarded_copy_to_ram)
{
	const uint64_t n = 8;
	uint64_t *dst = xcalloc(n, sizeof(*dst));
	struct uhmm_stats s0, s1, s2;

	drv_create(UHMM_DEVMEM_PRIVATE, 64);
	char *buf = map_anon(n * PS, RW, MAP_PRIVATE);
	fill_ints(buf, n * PS, 0, 1);
	ASSERT_EQ(drv_migrate_to_dev(buf, n, dst), n);
	ASSERT_EQ(drv_stats().in_use, n);

	s0 = stats_now();
	for (uint64_t i = 0; i < n; i++)
		to_ram_one(buf, 0, i, (int)(i % 4));
	s1 = stats_now();
	/* pages 3 and 7 stayed; the others came back without a CPU fault */
	ASSERT_EQ(s1.pages_to_system - s0.pages_to_system, n - 2);
	ASSERT_EQ(s1.cpu_faults - s0.cpu_faults, 0);
	ASSERT_EQ(atomic_load(&drv.faults), 0);
	ASSERT_EQ(drv_stats().in_use, 2);
	ASSERT_EQ(atomic_load(&drv.frees), n - 2);
	EXPECT_INTS(buf, n * PS, 0, 1);  /* 3 and 7 through migrate_to_ram */
	s2 = stats_now();
	ASSERT_EQ(atomic_load(&drv.faults), 2);
	ASSERT_EQ(s2.pages_to_system - s1.pages_to_system, 2);
	ASSERT_EQ(drv_stats().in_use, 0);
	ASSERT_EQ(atomic_load(&drv.frees), n);

	/* and a written page (no hole): once more, each way */
	fill_ints(buf, n * PS, 77, 1);
	ASSERT_EQ(drv_migrate_to_dev(buf, n, dst), n);
	for (uint64_t i = 0; i < n; i++)
		to_ram_one(buf, 77, i, (int)((i + 1) % 3));
	ASSERT_EQ(drv_stats().in_use, 0);
	EXPECT_INTS(buf, n * PS, 77, 1);
	ASSERT_EQ(munmap(buf, n * PS), 0);
	free(dst);
	drv_destroy();
}

/* migrate_to_ram through uhmm_migrate_copy: a one-page fault is a forwarded copy. */
static int drv_migrate_to_ram_copy(struct uhmm_devmem *mem, const struct uhmm_fault *vmf)
{
	uint64_t src = 0, dst = 0;
	struct uhmm_migrate args = {
		.start = vmf->addr, .end = vmf->addr + PS, .src = &src, .dst = &dst,
		.pgmap_owner = drv_owner, .flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
		.fault_page = vmf->page,
	};

	atomic_fetch_add(&drv.faults, 1);
	int ret = uhmm_migrate_vma_setup(&args);
	if (ret)
		return ret;
	long got = args.cpages ? uhmm_migrate_copy(mem, &src, &dst, 1) : 0;
	uhmm_migrate_vma_pages(&args);
	uhmm_migrate_vma_finalize(&args);
	if (got < 0)
		atomic_fetch_add(&drv.fault_errors, 1);
	return got < 0 ? (int)got : 0;
}

static const struct uhmm_devmem_ops drv_copy_ops = {
	.page_free = drv_page_free,
	.migrate_to_ram = drv_migrate_to_ram_copy,
};

/*
 * A pool whose last page came back by a CPU fault can be destroyed as
 * soon as the faulting thread goes on: the forwarded source finalize still
 * holds for the length of its move is waited for, not -EBUSY.  200 rounds
 * on fresh pools, data and counters checked each time.
 */
TEST_TIMEOUT(destroy_after_fault, 60)
{
	char *buf = th_mmap_isolated(PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	uint64_t dst = 0;

	ASSERT_MAPPED(buf);
	runtime_or_skip();
	for (int r = 0; r < 200; r++) {
		memset(&drv, 0, sizeof(drv));
		ASSERT_EQ(uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, drv_owner, &drv_copy_ops, &drv, 8,
					     &drv.mem), 0);
		fill_ints(buf, PS, r, 1);
		dst = 0;
		ASSERT_EQ(drv_migrate_to_dev(buf, 1, &dst), 1);
		ASSERT_EQ(drv_stats().in_use, 1);
		EXPECT_INTS(buf, PS, r, 1);  /* the CPU fault brings it back */
		ASSERT_EQ(atomic_load(&drv.faults), 1);
		drv_destroy();  /* in_use 0, frees exact, destroy 0 at once */
	}
	munmap(buf, PS);
}

TEST(migrate_bad_args)
{
	const uint64_t n = 4;
	uint64_t src[4], dst[4];
	struct uhmm_stats s0, s1;
	uint64_t a, gone;
	char *buf, *hole;

	drv_create(UHMM_DEVMEM_PRIVATE, 16);
	buf = map_anon(n * PS, RW, MAP_PRIVATE);
	fill_ints(buf, n * PS, 0, 1);
	a = (uint64_t)(uintptr_t)buf;
	s0 = stats_now();

	ASSERT_EQ(uhmm_migrate_vma_setup(NULL), -EINVAL);
	ASSERT_EQ(setup_range(a, a, src, dst), -EINVAL);			/* npages 0 */
	ASSERT_EQ(setup_range(a + n * PS, a, src, dst), -EINVAL);		/* start > end */
	ASSERT_EQ(setup_range(a + 8, a + n * PS, src, dst), -EINVAL);	/* misaligned */
	ASSERT_EQ(setup_range(a, a + n * PS - 8, src, dst), -EINVAL);
	ASSERT_EQ(setup_range(a, a + n * PS, NULL, dst), -EINVAL);
	ASSERT_EQ(setup_range(a, a + n * PS, src, NULL), -EINVAL);

	/* nothing mapped there at all */
	hole = map_anon(n * PS, RW, MAP_PRIVATE);
	gone = (uint64_t)(uintptr_t)hole;
	ASSERT_EQ(munmap(hole, n * PS), 0);
	ASSERT_EQ(setup_range(gone, gone + n * PS, src, dst), -EFAULT);

	s1 = stats_now();
	ASSERT_EQ(s1.pages_to_device - s0.pages_to_device, 0);
	ASSERT_EQ(drv_stats().allocated, 0);
	EXPECT_INTS(buf, n * PS, 0, 1);
	ASSERT_EQ(atomic_load(&drv.faults), 0);
	ASSERT_EQ(munmap(buf, n * PS), 0);
	drv_destroy();
}

TEST_MAIN()
