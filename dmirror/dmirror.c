/* SPDX-License-Identifier: MIT */
/*
 * dmirror.c - the reference device, a simulated driver in the manner of the
 * kernel's lib/test_hmm.c.  It is written ONLY against the public API in
 * uhmm.h (no internal header): it is the proof that a driver can be built
 * on uhmm.  Four devices: 0 and 1 with device-private memory, 2 and 3 with
 * device-coherent memory.  Each open gives a mirror with its own page table
 * (filled by device faults through uhmm_range_fault and kept coherent by an
 * interval notifier over the whole address space); mirrors opened on the
 * same device share its memory pool.
 *
 * Memory touched while dm->lock is held (the page table) comes from mmap(),
 * never the heap: a heap page could be one that uhmm must fault in, and the
 * fault may need an invalidation that waits for dm->lock.
 *
 * Locks: dev->lock (device table entry: pool and open count) is taken
 * before nothing else; dm->lock protects dm's page table, flags and counters
 * and is the driver lock the invalidate callback takes.  No uhmm function
 * that can invalidate is called with dm->lock held.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>

#include "uhmm.h"
#include "uhmm_dmirror.h"

#define PAGE UHMM_PAGE_SIZE
#define PT_SHIFT 21
#define PT_PER_BLOCK 512
#define FAULT_WINDOW 64                    /* pages per uhmm_range_fault call */
#define DM_FAULT_TRIES 1000                /* device faults in a row without progress */
#define POOL_PAGES (1ULL << 21)            /* 8 GiB of device memory per device */
#define MIGRATE_CHUNK 512                  /* pages per migration call */
#define ADDR_LIMIT (1ULL << 47)

/* mirror entries */
#define E_VALID  (1ULL << 63)
#define E_WRITE  (1ULL << 62)
#define E_DEVICE (1ULL << 61)   /* value: a device-private page of this device */
#define E_EXCL   (1ULL << 60)   /* value: the frame held exclusive for atomics */
#define E_VALUE  ((1ULL << 52) - 1)

struct pt_block {
	uint64_t base;
	struct pt_block *next;
	uint64_t e[PT_PER_BLOCK];
};

struct dmirror_device {
	pthread_mutex_t lock;          /* protects pool, mem and nopen */
	struct uhmm_devmem *pool;
	/*
	 * Devices 0 and 1: the device's own memory, POOL_PAGES pages that uhmm
	 * knows only by index (a driver-owned pool), copied by memcpy like the
	 * kernel's test driver; NULL for the host-frame variant
	 * (UHMM_DMIRROR_MEMORY=host) and the coherent devices.
	 */
	char *mem;
	int slow_copy;                 /* atomic: UHMM_DMIRROR_FLAG_SLOW_COPY */
	int nopen;
	unsigned int idx;
	uint64_t next_fault;           /* atomic: where a sequential CPU stream faults next */
	uint64_t window;               /* atomic: pages migrate_to_ram takes back, 1..64 */
};

struct uhmm_dmirror {
	struct uhmm_interval_notifier notifier;
	struct dmirror_device *dev;
	pthread_mutex_t lock;          /* protects everything below */
	struct pt_block *pt[256];      /* hash by 2 MiB block */
	uint64_t flags;
	uint64_t inval[8];
};

static struct dmirror_device g_devs[UHMM_DMIRROR_NDEVICES];

/*
 * Open handles, so that a closed (freed) handle is refused with -EINVAL
 * instead of being used.  g_live_lock protects g_live; a leaf lock.
 */
static pthread_mutex_t g_live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uhmm_dmirror *g_live[1024];

static bool live_add(struct uhmm_dmirror *dm)
{
	bool ok = false;
	pthread_mutex_lock(&g_live_lock);
	for (unsigned i = 0; i < 1024 && !ok; i++)
		if (!g_live[i])
			g_live[i] = dm, ok = true;
	pthread_mutex_unlock(&g_live_lock);
	return ok;
}

static bool live_del(struct uhmm_dmirror *dm)
{
	bool found = false;
	if (!dm)
		return false;
	pthread_mutex_lock(&g_live_lock);
	for (unsigned i = 0; i < 1024 && !found; i++)
		if (g_live[i] == dm)
			g_live[i] = NULL, found = true;
	pthread_mutex_unlock(&g_live_lock);
	return found;
}

static bool live(const struct uhmm_dmirror *dm)
{
	bool found = false;
	if (!dm)
		return false;
	pthread_mutex_lock(&g_live_lock);
	for (unsigned i = 0; i < 1024 && !found; i++)
		found = g_live[i] == dm;
	pthread_mutex_unlock(&g_live_lock);
	return found;
}
static pthread_once_t g_devs_once = PTHREAD_ONCE_INIT;

/* The owner tag of a device: what its pool and dev_private_owner carry. */
static const void *dev_owner(struct dmirror_device *d)
{
	return d;
}

static bool is_private(struct dmirror_device *d)
{
	return d->idx < 2;
}

/* ---- mirror page table (dm->lock held) ---------------------------------- */

static uint64_t *pt_slot(struct uhmm_dmirror *dm, uint64_t addr, bool create)
{
	uint64_t base = addr & ~((1ULL << PT_SHIFT) - 1);
	unsigned h = (unsigned)((base >> PT_SHIFT) * 2654435761u) & 255;
	struct pt_block *b;
	for (b = dm->pt[h]; b; b = b->next)
		if (b->base == base)
			return &b->e[(addr - base) / PAGE];
	if (!create)
		return NULL;
	b = mmap(NULL, sizeof(*b), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (b == MAP_FAILED)
		return NULL;
	b->base = base;
	b->next = dm->pt[h];
	dm->pt[h] = b;
	return &b->e[(addr - base) / PAGE];
}

static uint64_t pt_get(struct uhmm_dmirror *dm, uint64_t addr)
{
	uint64_t *s = pt_slot(dm, addr, false);
	return s ? *s : 0;
}

static void pt_set(struct uhmm_dmirror *dm, uint64_t addr, uint64_t e)
{
	uint64_t *s = pt_slot(dm, addr, e != 0);
	if (s)
		*s = e;
}

static void pt_clear_range(struct uhmm_dmirror *dm, uint64_t start, uint64_t end)
{
	uint64_t first = start >> PT_SHIFT, last = (end - 1) >> PT_SHIFT;
	if (end > start && last - first < 64) {
		/* A few blocks: look each up instead of walking the table. */
		for (uint64_t blk = first; blk <= last; blk++) {
			uint64_t base = blk << PT_SHIFT;
			uint64_t s = start > base ? start : base;
			uint64_t bend = base + PT_PER_BLOCK * PAGE;
			uint64_t e = end < bend ? end : bend;
			uint64_t *slot = pt_slot(dm, s, false);
			if (slot)
				memset(slot, 0, (e - s) / PAGE * sizeof(uint64_t));
		}
		return;
	}
	for (unsigned h = 0; h < 256; h++)
		for (struct pt_block *b = dm->pt[h]; b; b = b->next) {
			uint64_t bend = b->base + PT_PER_BLOCK * PAGE;
			if (bend <= start || b->base >= end)
				continue;
			uint64_t s = start > b->base ? start : b->base;
			uint64_t e = end < bend ? end : bend;
			memset(&b->e[(s - b->base) / PAGE], 0, (e - s) / PAGE * sizeof(uint64_t));
		}
}

static void pt_free(struct uhmm_dmirror *dm)
{
	for (unsigned h = 0; h < 256; h++)
		while (dm->pt[h]) {
			struct pt_block *b = dm->pt[h];
			dm->pt[h] = b->next;
			munmap(b, sizeof(*b));
		}
}

/* ---- notifier ----------------------------------------------------------- */

static bool dm_invalidate(struct uhmm_interval_notifier *n, const struct uhmm_notifier_range *r,
			  unsigned long cur_seq)
{
	struct uhmm_dmirror *dm = (struct uhmm_dmirror *)n;
	/*
	 * No event is ignored, not even our own grants: an entry for the
	 * system page must go before the page moves (the model found that
	 * keeping it lets a device access fault while holding dm->lock).
	 * Grants are confirmed with uhmm_device_exclusive_held(), not with a
	 * sequence retry, so this cannot livelock.
	 */
	pthread_mutex_lock(&dm->lock);
	uhmm_interval_set_seq(n, cur_seq);
	dm->inval[r->event & 7]++;
	pt_clear_range(dm, r->start, r->end > ADDR_LIMIT ? ADDR_LIMIT : r->end);
	pthread_mutex_unlock(&dm->lock);
	return true;
}

static const struct uhmm_interval_notifier_ops dm_notifier_ops = {
	.invalidate = dm_invalidate,
};

/*
 * A notifier over just the pages one operation works on, so that its
 * read_retry() is not disturbed by invalidations elsewhere in the address
 * space (the mirror's own notifier covers all of it).
 */
struct dm_span {
	struct uhmm_interval_notifier n;
	struct uhmm_dmirror *dm;
};

static bool span_invalidate(struct uhmm_interval_notifier *n,
			    const struct uhmm_notifier_range *r, unsigned long cur_seq)
{
	struct uhmm_dmirror *dm = ((struct dm_span *)n)->dm;
	/*
	 * Clear the range here too, under the same lock hold as set_seq: the
	 * mirror's own notifier may have run first, and an operation that
	 * checked this span in between could have mapped a page again.
	 */
	pthread_mutex_lock(&dm->lock);
	uhmm_interval_set_seq(n, cur_seq);
	pt_clear_range(dm, r->start, r->end > ADDR_LIMIT ? ADDR_LIMIT : r->end);
	pthread_mutex_unlock(&dm->lock);
	return true;
}

static const struct uhmm_interval_notifier_ops span_ops = { .invalidate = span_invalidate };

static int span_begin(struct dm_span *sp, struct uhmm_dmirror *dm, uint64_t start, uint64_t end)
{
	memset(sp, 0, sizeof(*sp));
	sp->dm = dm;
	return uhmm_interval_notifier_insert(&sp->n, start, end - start, &span_ops);
}

/* The end of the window of at most FAULT_WINDOW pages that starts at a. */
static uint64_t window_end(uint64_t a, uint64_t end)
{
	return end - a > FAULT_WINDOW * PAGE ? a + FAULT_WINDOW * PAGE : end;
}

/*
 * Range-fault r (its flags say whether to fault or only look) under a span
 * notifier over it, until the result holds under dm->lock.  0: dm->lock is
 * held and the span inserted (the caller maps, unlocks, span_end()s);
 * otherwise the error, with neither.
 */
static int span_fault_locked(struct uhmm_dmirror *dm, struct dm_span *sp, struct uhmm_range *r)
{
	int rc = span_begin(sp, dm, r->start, r->end);
	if (rc)
		return rc;
	r->notifier = &sp->n;
	for (;;) {
		r->notifier_seq = uhmm_interval_read_begin(&sp->n);
		rc = uhmm_range_fault(r);
		if (rc == -EBUSY)
			continue;
		if (rc) {
			uhmm_interval_notifier_remove(&sp->n);
			return rc;
		}
		pthread_mutex_lock(&dm->lock);
		if (!uhmm_interval_read_retry(&sp->n, r->notifier_seq))
			return 0;
		pthread_mutex_unlock(&dm->lock);
	}
}

/* ---- device memory ops -------------------------------------------------- */

static int dm_migrate_to_ram(struct uhmm_devmem *mem, const struct uhmm_fault *vmf);

static const struct uhmm_devmem_ops dm_devmem_ops = {
	.page_free = NULL,
	.migrate_to_ram = dm_migrate_to_ram,
};

/* ---- the device's own memory (driver-owned pool) -------------------------- */

#define SLOW_COPY_NS 50000ULL              /* UHMM_DMIRROR_FLAG_SLOW_COPY */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* A device page's memory: our buffer at its index, or the host frame. */
static char *dev_page_ptr(struct dmirror_device *d, uint64_t page)
{
	if (!d->mem)
		return uhmm_pfn_to_virt(page);
	int64_t idx = uhmm_devmem_page_index(page);
	return idx < 0 ? NULL : d->mem + (uint64_t)idx * PAGE;
}

/*
 * The copy engine: one memcpy (or clear, I5) per run.  With the slow-copy
 * flag a call completes SLOW_COPY_NS later, like a DMA: the fence is that
 * time and dm_copy_wait sleeps until it.
 */
static int dm_copy(struct uhmm_devmem *mem, enum uhmm_copy_dir dir,
		   const struct uhmm_copy_run *runs, uint64_t nruns, uint64_t *fence)
{
	struct dmirror_device *d = uhmm_devmem_driver_data(mem);
	for (uint64_t r = 0; r < nruns; r++) {
		char *dev = d->mem + runs[r].dev_index * PAGE;
		void *host = (void *)(uintptr_t)runs[r].host;
		size_t len = runs[r].npages * PAGE;
		if (runs[r].dev_index + runs[r].npages > POOL_PAGES)
			return -EINVAL;
		if (dir == UHMM_COPY_TO_RAM)
			memcpy(host, dev, len);
		else if (runs[r].flags & UHMM_COPY_RUN_CLEAR)
			memset(dev, 0, len);
		else
			memcpy(dev, host, len);
	}
	if (__atomic_load_n(&d->slow_copy, __ATOMIC_RELAXED))
		*fence = now_ns() + SLOW_COPY_NS;
	return 0;
}

static int dm_copy_wait(struct uhmm_devmem *mem, uint64_t fence)
{
	(void)mem;
	for (uint64_t t = now_ns(); t < fence; t = now_ns()) {
		struct timespec ts = { 0, (long)(fence - t) };
		nanosleep(&ts, NULL);
	}
	return 0;
}

static const struct uhmm_devmem_copy_ops dm_copy_ops = {
	.copy = dm_copy,
	.wait = dm_copy_wait,
};

/* Device memory of a private device: its own (default) or host frames. */
static bool want_own_memory(void)
{
	const char *v = getenv("UHMM_DMIRROR_MEMORY");
	return !v || strcmp(v, "host") != 0;
}

/*
 * FAIL_ALLOC, as the kernel's test driver does it: the first device-page
 * allocation of the next migration to the device fails, and what that
 * costs depends on what the allocation was for.
 *
 * - A THP that migrates whole is one huge allocation in the kernel's driver
 *   (MIGRATE_PFN_COMPOUND: one huge device page); when FAIL_ALLOC fails it,
 *   the driver falls back to 4 KiB device pages and the migration completes.
 *   So is an empty PMD-aligned 2 MiB block of an anonymous VMA (the
 *   kernel's collect step gives a pmd_none hole one COMPOUND entry).  This
 *   device has 4 KiB pages only, so it recognizes a huge source the way
 *   collect does, from the CPU page table: a 2 MiB-aligned block lying
 *   wholly in the migration call that the CPU maps with one PMD
 *   (uhmm_range_fault reports map order 9: a THP or the huge zero page), or
 *   of which no page is present.  It must look before setup, which takes
 *   the pages out of the CPU view.  FAIL_ALLOC then fails the block's huge
 *   allocation (the flag is spent) and the block gets its 4 KiB pages: the
 *   fallback, as in the kernel.
 * - Any other first page (4 KiB mapped, in a split THP, a hole in a
 *   partly populated block) is one 4 KiB allocation: it fails, and that
 *   page stays in system memory.
 *
 * Migrations to system memory allocate no device page and leave the flag
 * armed.  The look at the page table is a snapshot: a block that changes
 * between it and setup still counts as it looked, for this one allocation
 * (a test hook); a userspace snapshot cannot tell an empty block from one
 * whose PTE table the kernel keeps after MADV_DONTNEED (no COMPOUND hole
 * there), nor from pages held by another device.
 */
#define HUGE_SIZE (PAGE * PT_PER_BLOCK)

/*
 * The 2 MiB block of [start, end) that is a huge source (above), or 0.
 * Our own device-private pages read as device pages, so they are not holes.
 */
static uint64_t huge_source(struct uhmm_dmirror *dm, uint64_t start, uint64_t end)
{
	uint64_t b = (start + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1);
	if (b < start || b + HUGE_SIZE > end || b + HUGE_SIZE < b)
		return 0;
	uint64_t pfns[FAULT_WINDOW];
	for (uint64_t a = b; a < b + HUGE_SIZE;) {
		uint64_t e = window_end(a, b + HUGE_SIZE);
		struct uhmm_range r = {
			.notifier = &dm->notifier, .start = a, .end = e, .hmm_pfns = pfns,
			.dev_private_owner = dev_owner(dm->dev),
		};
		r.notifier_seq = uhmm_interval_read_begin(&dm->notifier);
		int rc = uhmm_range_fault(&r);
		if (rc == -EBUSY)
			continue;
		if (rc)
			return 0;
		if (a == b && (pfns[0] & UHMM_PFN_VALID) && !(pfns[0] & UHMM_PFN_DEVICE))
			return uhmm_pfn_to_map_order(pfns[0]) == 9 ? b : 0;  /* PMD mapped? */
		for (uint64_t i = 0; i < (e - a) / PAGE; i++)
			if (pfns[i])
				return 0;  /* present, a device page, or not mapped readable */
		a = e;
	}
	return b;  /* no page present: a PMD hole */
}

/* Before setup: the huge source alloc_and_copy must know of (0: none). */
static uint64_t fail_alloc_plan(struct uhmm_dmirror *dm, uint64_t start, uint64_t end,
				bool to_device)
{
	pthread_mutex_lock(&dm->lock);
	bool armed = dm->flags & UHMM_DMIRROR_FLAG_FAIL_ALLOC;
	pthread_mutex_unlock(&dm->lock);
	return armed && to_device ? huge_source(dm, start, end) : 0;
}

/*
 * Copy or clear each collected page into a new page; fills dst (the copies
 * in runs, by uhmm_migrate_copy: our memcpy engine for our own memory,
 * page moves for host frames).  A page that gets no new page or whose copy
 * fails stays where it is.  FAIL_ALLOC (above) fails the first device-page
 * allocation: the huge one of huge_block (from fail_alloc_plan) if the
 * first collected page heads it, else that page's.
 */
static void alloc_and_copy(struct uhmm_dmirror *dm, struct uhmm_migrate *m, bool to_device,
			   uint64_t huge_block)
{
	uint64_t first = m->npages;
	for (uint64_t i = 0; i < m->npages && first == m->npages; i++)
		if (m->src[i] & UHMM_MIGRATE_PFN_MIGRATE)
			first = i;
	if (first == m->npages)
		return;
	uint64_t saved = m->src[first];
	if (to_device) {
		bool compound = m->src[first] & UHMM_MIGRATE_PFN_COMPOUND;
		bool huge = compound || (huge_block && huge_block == m->start + first * PAGE &&
					 huge_block + HUGE_SIZE <= m->end);
		pthread_mutex_lock(&dm->lock);
		bool fail = dm->flags & UHMM_DMIRROR_FLAG_FAIL_ALLOC;
		if (fail && !huge)
			m->src[first] &= ~UHMM_MIGRATE_PFN_MIGRATE;  /* gets no page */
		/* huge: the huge allocation failed; 4 KiB pages below (fallback) */
		dm->flags &= ~UHMM_DMIRROR_FLAG_FAIL_ALLOC;
		pthread_mutex_unlock(&dm->lock);
		if (fail && compound) {
			/* the split: each page of the source gets a 4 KiB page */
			uint64_t sp = uhmm_migrate_pfn_to_page(saved);
			m->src[first] &= ~UHMM_MIGRATE_PFN_COMPOUND;
			for (uint64_t k = 1; k < UHMM_HUGE_PAGES && first + k < m->npages; k++)
				m->src[first + k] = sp ? uhmm_migrate_pfn(sp + k) |
							 UHMM_MIGRATE_PFN_MIGRATE |
							 UHMM_MIGRATE_PFN_WRITE :
							 UHMM_MIGRATE_PFN_MIGRATE;
		}
	}
	uhmm_migrate_copy(dm->dev->pool, m->src, m->dst, m->npages);
	m->src[first] = saved;
	if (to_device)
		for (uint64_t i = 0; i < m->npages; i++)
			if (m->dst[i])
				uhmm_page_set_zone_data(uhmm_migrate_pfn_to_page(m->dst[i]), dm);
}

/*
 * How many pages a CPU fault at addr takes back: 1, unless the faults of
 * this device form a forward stream (each one where the last window ended),
 * then a window that doubles up to PREFETCH_MAX, within the 2 MiB block.
 * 512 (the whole block) rather than 64: a stream then costs one fault per
 * 2 MiB; bench_uhmm's streaming groups, alternated with 64, three runs
 * each: fault_to_ram_seq_gbps 6.37 -> 9.21, _free 6.94 -> 8.67 (medians).
 * A random fault still takes one page.
 */
#define PREFETCH_MAX 512
static uint64_t fault_window(struct dmirror_device *d, uint64_t addr)
{
	uint64_t w = 1;
	if (__atomic_load_n(&d->next_fault, __ATOMIC_RELAXED) == addr) {
		w = __atomic_load_n(&d->window, __ATOMIC_RELAXED) * 2;
		w = w > PREFETCH_MAX ? PREFETCH_MAX : w ? w : 1;
	}
	uint64_t block_left = (((addr >> 21) + 1) << 21) - addr;
	if (w * PAGE > block_left)
		w = block_left / PAGE;
	__atomic_store_n(&d->window, w, __ATOMIC_RELAXED);
	__atomic_store_n(&d->next_fault, addr + w * PAGE, __ATOMIC_RELAXED);
	return w;
}

/*
 * A CPU access hit one of our pages: migrate it back (fault_page), with the
 * pages after it when the faults stream (fault_window).  A page that gets
 * no system page stays on the device.
 */
static int dm_migrate_to_ram(struct uhmm_devmem *mem, const struct uhmm_fault *vmf)
{
	struct dmirror_device *d = uhmm_devmem_driver_data(mem);
	uint64_t src[UHMM_HUGE_PAGES], dst[UHMM_HUGE_PAGES];
	/*
	 * A page of a huge device page: the whole 2 MiB comes back as one
	 * (compound) migration, as the kernel's driver does for a folio of
	 * order > 0.
	 */
	uint64_t off = (vmf->addr & (HUGE_SIZE - 1)) / PAGE;
	bool huge = vmf->page >= off && uhmm_page_order(vmf->page - off) == UHMM_HUGE_ORDER;
	uint64_t start = huge ? vmf->addr - off * PAGE : vmf->addr;
	uint64_t w = huge ? UHMM_HUGE_PAGES : fault_window(d, vmf->addr);
	struct uhmm_migrate m = {
		.start = start, .end = start + w * PAGE, .src = src, .dst = dst,
		.pgmap_owner = uhmm_devmem_owner(mem),
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE |
			 (huge ? UHMM_MIGRATE_SELECT_COMPOUND : 0),
		.fault_page = vmf->page,
	};
	int rc = uhmm_migrate_vma_setup(&m);
	if (rc)
		return rc;
	long got = m.cpages ? uhmm_migrate_copy(mem, src, dst, m.npages) : 0;
	/*
	 * No system page for the fault page: an error (SIGBUS).  A failed
	 * copy leaves it on the device and the thread faults again.
	 */
	uint64_t fi = (vmf->addr - start) / PAGE;  /* the fault page's entry */
	bool fault_taken = (src[fi] & UHMM_MIGRATE_PFN_MIGRATE) ||
			   (huge && (src[0] & UHMM_MIGRATE_PFN_COMPOUND));
	bool fault_dst = dst[fi] || (huge && (dst[0] & UHMM_MIGRATE_PFN_COMPOUND));
	if (fault_taken && !fault_dst && got <= 0)
		rc = got < 0 && got != -EIO ? (int)got : got == 0 ? -ENOMEM : 0;
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	return rc;
}

/* ---- open / close --------------------------------------------------------- */

static void devs_reset(void)
{
	for (unsigned i = 0; i < UHMM_DMIRROR_NDEVICES; i++) {
		pthread_mutex_init(&g_devs[i].lock, NULL);
		g_devs[i].pool = NULL;
		g_devs[i].mem = NULL;  /* a fork child: the parent's memory is not ours */
		g_devs[i].slow_copy = 0;
		g_devs[i].nopen = 0;
		g_devs[i].idx = i;
	}
}

static void devs_init(void)
{
	devs_reset();
	/* A fork child gets fresh devices: the parent's pools are not its own. */
	pthread_atfork(NULL, NULL, devs_reset);
}

int uhmm_dmirror_open(unsigned int idx, struct uhmm_dmirror **out)
{
	if (!out || idx >= UHMM_DMIRROR_NDEVICES)
		return -EINVAL;
	pthread_once(&g_devs_once, devs_init);
	int rc = uhmm_init();
	if (rc)
		return rc;
	struct dmirror_device *d = &g_devs[idx];
	struct uhmm_dmirror *dm = calloc(1, sizeof(*dm));
	if (!dm)
		return -ENOMEM;
	pthread_mutex_init(&dm->lock, NULL);
	dm->dev = d;
	pthread_mutex_lock(&d->lock);
	if (!d->pool && is_private(d) && want_own_memory()) {
		/* virtual until used, like a device's memory that was never written */
		void *mem = mmap(NULL, POOL_PAGES * PAGE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (mem != MAP_FAILED)  /* like HBM: no 4 KiB first-touch faults */
			madvise(mem, POOL_PAGES * PAGE, MADV_HUGEPAGE);
		rc = mem == MAP_FAILED ? -ENOMEM :
		     uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, dev_owner(d), &dm_devmem_ops,
					      &dm_copy_ops, UHMM_DEVMEM_DEFER_FAULTS, d,
					      POOL_PAGES, &d->pool);
		if (rc == 0)
			d->mem = mem;
		else if (mem != MAP_FAILED)
			munmap(mem, POOL_PAGES * PAGE);
	} else if (!d->pool) {
		rc = uhmm_devmem_create(is_private(d) ? UHMM_DEVMEM_PRIVATE : UHMM_DEVMEM_COHERENT,
					dev_owner(d), &dm_devmem_ops, d, POOL_PAGES, &d->pool);
	}
	if (rc == 0)
		d->nopen++;
	pthread_mutex_unlock(&d->lock);
	if (rc == 0)
		rc = uhmm_interval_notifier_insert(&dm->notifier, 0, ADDR_LIMIT, &dm_notifier_ops);
	if (rc == 0 && !live_add(dm)) {
		uhmm_interval_notifier_remove(&dm->notifier);
		rc = -EMFILE;
	}
	if (rc) {
		if (d->pool) {
			pthread_mutex_lock(&d->lock);
			d->nopen--;
			pthread_mutex_unlock(&d->lock);
		}
		free(dm);
		return rc;
	}
	*out = dm;
	return 0;
}

/* Every device page this mirror put in memory goes back to the CPU. */
/* One pass over the device's pool; returns how many pages could not go back. */
static uint64_t evict_pass(struct uhmm_dmirror *dm, bool all)
{
	struct uhmm_devmem *pool = dm->dev->pool;
	uint64_t first, count, src[512], dst[512], left = 0;
	for (uint64_t c = 0; uhmm_devmem_chunk(pool, c, &first, &count) == 0; c++) {
		for (uint64_t off = 0; off < count; off += 512) {
			uint64_t n = count - off < 512 ? count - off : 512;
			uhmm_migrate_device_range(src, first + off, n);
			for (uint64_t i = 0; i < n; i++) {
				dst[i] = 0;
				uint64_t p = uhmm_migrate_pfn_to_page(src[i]);
				if (!p)
					continue;
				if (!all && uhmm_page_zone_data(p) != dm) {
					src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
					continue;
				}
			}
			uhmm_migrate_copy(pool, src, dst, n);  /* our copy engine, in runs */
			uhmm_migrate_device_pages(src, dst, n);
			for (uint64_t i = 0; i < n; i++)
				if (uhmm_migrate_pfn_to_page(src[i]) &&
				    (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || !dst[i]) &&
				    (all || uhmm_page_zone_data(uhmm_migrate_pfn_to_page(src[i])) == dm))
					left++;
			uhmm_migrate_device_finalize(src, dst, n);
		}
	}
	return left;
}

/*
 * Every device page this mirror (or, with all, anyone) put in memory goes
 * back to the CPU.  A page whose move fails (no system page, copy error) is
 * tried again: like the kernel's eviction, this does not give up (I4).
 */
static void evict_mine(struct uhmm_dmirror *dm, bool all)
{
	for (int pass = 0; pass < 10000 && evict_pass(dm, all); pass++)
		sched_yield();
}

void uhmm_dmirror_close(struct uhmm_dmirror *dm)
{
	if (!live_del(dm))
		return;  /* NULL, or closed already */
	uhmm_interval_notifier_remove(&dm->notifier);
	uhmm_device_exclusive_release(0, 0, dm);
	evict_mine(dm, false);
	pthread_mutex_lock(&dm->dev->lock);
	dm->dev->nopen--;
	pthread_mutex_unlock(&dm->dev->lock);
	pt_free(dm);
	pthread_mutex_destroy(&dm->lock);
	free(dm);
}

/* ---- commands ------------------------------------------------------------ */

static int check_cmd(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd)
{
	if (!live(dm) || !cmd)
		return -EINVAL;
	cmd->cpages = 0;
	cmd->faults = 0;
	if ((cmd->addr & (PAGE - 1)) || cmd->npages == 0 ||
	    cmd->npages > (UINT64_MAX - cmd->addr) / PAGE ||
	    cmd->addr + cmd->npages * PAGE > ADDR_LIMIT)
		return -EINVAL;
	return 0;
}

static int check_mapped(struct uhmm_dmirror *dm, uint64_t start, uint64_t end);

/* What a command needs besides a valid range (cmd_range). */
#define CMD_NEED_PTR	1u	/* a buffer at cmd->ptr */
#define CMD_NEED_MAPPED	2u	/* every page of the range mapped and readable */

/*
 * The prologue of the commands: cmd checked (cpages and faults reset), the
 * range it names in [*start, *end), and what need asks for; 0 or -errno.
 */
static int cmd_range(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd, unsigned int need,
		     uint64_t *start, uint64_t *end)
{
	int rc = check_cmd(dm, cmd);
	if (rc)
		return rc;
	if ((need & CMD_NEED_PTR) && !cmd->ptr)
		return -EINVAL;
	*start = cmd->addr;
	*end = cmd->addr + cmd->npages * PAGE;
	if (need & CMD_NEED_MAPPED)
		return check_mapped(dm, *start, *end);
	return 0;
}

/* One device fault over [start, end): fill the mirror, window by window. */
static int dm_fault(struct uhmm_dmirror *dm, uint64_t start, uint64_t end, bool write)
{
	uint64_t pfns[FAULT_WINDOW];
	for (uint64_t a = start; a < end;) {
		uint64_t e = window_end(a, end);
		struct dm_span sp;
		struct uhmm_range r = {
			.start = a, .end = e, .hmm_pfns = pfns,
			.default_flags = UHMM_PFN_REQ_FAULT | (write ? UHMM_PFN_REQ_WRITE : 0),
			.dev_private_owner = dev_owner(dm->dev),
		};
		int rc = span_fault_locked(dm, &sp, &r);
		if (rc)
			return rc;
		for (uint64_t i = 0; i < (e - a) / PAGE; i++) {
			uint64_t p = pfns[i], ent = 0;
			if (!(p & UHMM_PFN_VALID))
				continue;
			if ((p & UHMM_PFN_DEVICE) && uhmm_page_devmem(p & UHMM_PFN_PFN_MASK) ==
							     dm->dev->pool && is_private(dm->dev))
				ent = (p & UHMM_PFN_PFN_MASK) | E_DEVICE;
			else
				ent = (a / PAGE + i);  /* the page's own address, in pages */
			ent |= E_VALID | ((p & UHMM_PFN_WRITE) ? E_WRITE : 0);
			pt_set(dm, a + i * PAGE, ent);
		}
		pthread_mutex_unlock(&dm->lock);
		uhmm_interval_notifier_remove(&sp.n);
		a = e;
	}
	return 0;
}

/*
 * Copy between bounce and the mirrored pages; -ENOENT at the first
 * unmirrored page.  A device page (or a page held exclusive) is copied under
 * the mirror lock: the entry names a frame that is only ours while the lock
 * keeps invalidations out.  A system page is reached by its address
 * (process_vm_readv/writev), always coherent, and with the lock dropped:
 * that copy can fault through userfaultfd, and the fault's service may need
 * to invalidate this mirror (a deadlock if we held its lock).
 */
static int dm_access(struct uhmm_dmirror *dm, uint64_t start, uint64_t end, char *bounce,
		     bool write, uint64_t *done)
{
	int rc = 0;
	pthread_mutex_lock(&dm->lock);
	for (uint64_t a = start; a < end; a += PAGE) {
		uint64_t ent = pt_get(dm, a);
		char *buf = bounce + (a - start);
		if (!(ent & E_VALID) || (write && !(ent & E_WRITE))) {
			rc = -ENOENT;
			break;
		}
		if (ent & (E_DEVICE | E_EXCL)) {
			char *p = (ent & E_DEVICE) ? dev_page_ptr(dm->dev, ent & E_VALUE)
						   : uhmm_pfn_to_virt(ent & E_VALUE);
			if (!p) {
				rc = -EFAULT;
				break;
			}
			if (write)
				memcpy(p, buf, PAGE);
			else
				memcpy(buf, p, PAGE);
		} else {
			uint64_t va = (ent & E_VALUE) * PAGE;
			pthread_mutex_unlock(&dm->lock);
			rc = write ? uhmm_device_write(va, buf, PAGE) : uhmm_device_read(buf, va, PAGE);
			pthread_mutex_lock(&dm->lock);
			if (rc) {
				/*
				 * The kernel could not reach the page (unmapped
				 * meanwhile, or a fault it gave up waiting for):
				 * drop the entry and let the device fault again,
				 * which gives the real answer.
				 */
				if (pt_get(dm, a) == ent)
					pt_set(dm, a, 0);
				rc = -ENOENT;
				break;
			}
		}
		(*done)++;
	}
	pthread_mutex_unlock(&dm->lock);
	return rc;
}

static int dm_rw(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd, bool write)
{
	uint64_t start, end;
	int rc = cmd_range(dm, cmd, CMD_NEED_PTR, &start, &end);
	if (rc)
		return rc;
	char *bounce = malloc(cmd->npages * PAGE);
	if (!bounce)
		return -ENOMEM;
	/* The caller's buffer may be bad: copy it like copy_from_user would. */
	if (write && uhmm_device_read(bounce, cmd->ptr, cmd->npages * PAGE)) {
		free(bounce);
		return -EFAULT;
	}
	uint64_t done = 0;
	for (unsigned int tries = 0;; tries++) {
		uint64_t s = start + done * PAGE, before = done;
		rc = dm_access(dm, s, end, bounce + done * PAGE, write, &done);
		if (rc != -ENOENT)
			break;
		if (done > before)
			tries = 0;
		if (tries == DM_FAULT_TRIES) {
			rc = -EFAULT;  /* faulted in and lost again, over and over */
			break;
		}
		rc = dm_fault(dm, start + done * PAGE, end, write);
		if (rc)
			break;
		cmd->faults++;
	}
	if (rc == 0 && !write && uhmm_device_write(cmd->ptr, bounce, cmd->npages * PAGE))
		rc = -EFAULT;
	if (rc == 0)
		cmd->cpages = cmd->npages;
	free(bounce);
	return rc;
}

int uhmm_dmirror_read(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd)
{
	return dm_rw(dm, cmd, false);
}

int uhmm_dmirror_write(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd)
{
	return dm_rw(dm, cmd, true);
}

/*
 * Pages of [start, end) must all be mapped and readable (migration).  A
 * look, nothing faulted: in windows of 512 pages (64 cost 12 % of a 256 MiB
 * migration to the device, one range walk per window).
 */
#define CHECK_WINDOW 512
static int check_mapped(struct uhmm_dmirror *dm, uint64_t start, uint64_t end)
{
	uint64_t pfns[CHECK_WINDOW];
	for (uint64_t a = start; a < end;) {
		uint64_t e = end - a > CHECK_WINDOW * PAGE ? a + CHECK_WINDOW * PAGE : end;
		struct uhmm_range r = {
			.notifier = &dm->notifier, .start = a, .end = e, .hmm_pfns = pfns,
		};
		r.notifier_seq = uhmm_interval_read_begin(&dm->notifier);
		int rc = uhmm_range_fault(&r);
		if (rc == -EBUSY)
			continue;
		if (rc)
			return -EINVAL;
		for (uint64_t i = 0; i < (e - a) / PAGE; i++)
			if (pfns[i] & UHMM_PFN_ERROR)
				return -EINVAL;
		a = e;
	}
	return 0;
}

/*
 * Mirror the pages of [start, end) that are in this device's memory (a
 * snapshot, nothing faulted): after a migration, these are what the device
 * reads back; pages left in system memory stay unmirrored, as in the kernel
 * driver, so that the read-back reports them (-ENOENT).
 */
static int map_own_pages(struct uhmm_dmirror *dm, uint64_t start, uint64_t end)
{
	uint64_t pfns[FAULT_WINDOW];
	for (uint64_t a = start; a < end;) {
		uint64_t e = window_end(a, end);
		struct dm_span sp;
		struct uhmm_range r = {
			.start = a, .end = e, .hmm_pfns = pfns,
			.dev_private_owner = dev_owner(dm->dev),
		};
		int rc = span_fault_locked(dm, &sp, &r);
		if (rc)
			return rc;
		for (uint64_t i = 0; i < (e - a) / PAGE; i++) {
			uint64_t p = pfns[i];
			if (!(p & UHMM_PFN_DEVICE) || !(p & UHMM_PFN_VALID) ||
			    uhmm_page_devmem(p & UHMM_PFN_PFN_MASK) != dm->dev->pool)
				continue;
			uint64_t ent = is_private(dm->dev) ? (p & UHMM_PFN_PFN_MASK) | E_DEVICE
							   : a / PAGE + i;
			pt_set(dm, a + i * PAGE, ent | E_VALID | ((p & UHMM_PFN_WRITE) ? E_WRITE : 0));
		}
		pthread_mutex_unlock(&dm->lock);
		uhmm_interval_notifier_remove(&sp.n);
		a = e;
	}
	return 0;
}

static int migrate_range(struct uhmm_dmirror *dm, uint64_t start, uint64_t end, bool to_device,
			 uint64_t *cpages)
{
	uint64_t src[MIGRATE_CHUNK], dst[MIGRATE_CHUNK];
	for (uint64_t a = start; a < end;) {
		uint64_t e = end - a > MIGRATE_CHUNK * PAGE ? a + MIGRATE_CHUNK * PAGE : end;
		struct uhmm_migrate m = {
			.start = a, .end = e, .src = src, .dst = dst,
			.pgmap_owner = dev_owner(dm->dev),
			.flags = UHMM_MIGRATE_SELECT_COMPOUND |
				 (to_device ? UHMM_MIGRATE_SELECT_SYSTEM :
				  is_private(dm->dev) ? UHMM_MIGRATE_SELECT_DEVICE_PRIVATE :
							UHMM_MIGRATE_SELECT_DEVICE_COHERENT),
		};
		uint64_t huge = fail_alloc_plan(dm, a, e, to_device);
		int rc = uhmm_migrate_vma_setup(&m);
		if (rc == -EINVAL && e - a > PAGE) {
			/* The chunk spans VMAs: take one page at a time here. */
			e = a + PAGE;
			m.end = e;
			rc = uhmm_migrate_vma_setup(&m);
		}
		if (rc)
			return rc == -EFAULT ? -EINVAL : rc;
		alloc_and_copy(dm, &m, to_device, huge);
		uhmm_migrate_vma_pages(&m);
		for (uint64_t i = 0; i < m.npages; i++)
			if ((m.src[i] & UHMM_MIGRATE_PFN_MIGRATE) && uhmm_migrate_pfn_to_page(m.dst[i]))
				(*cpages)++;
		uhmm_migrate_vma_finalize(&m);
		a = e;
	}
	return 0;
}

/*
 * migrate_to_dev without a buffer for the read-back: the same answer
 * (-ENOENT at the first page the device does not map), no copy.
 */
static int mapped_count(struct uhmm_dmirror *dm, uint64_t start, uint64_t end, uint64_t *n)
{
	int rc = 0;
	*n = 0;
	pthread_mutex_lock(&dm->lock);
	for (uint64_t a = start; a < end && rc == 0; a += PAGE) {
		if (pt_get(dm, a) & E_VALID)
			(*n)++;
		else
			rc = -ENOENT;
	}
	pthread_mutex_unlock(&dm->lock);
	return rc;
}

int uhmm_dmirror_migrate_to_dev(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd)
{
	uint64_t start, end;
	int rc = cmd_range(dm, cmd, CMD_NEED_MAPPED, &start, &end);
	if (rc)
		return rc;
	uint64_t migrated = 0;
	rc = migrate_range(dm, start, end, true, &migrated);
	if (rc == 0)
		rc = map_own_pages(dm, start, end);
	if (rc)
		return rc;
	if (!cmd->ptr)
		return mapped_count(dm, start, end, &cmd->cpages);
	/*
	 * Like the kernel driver: read back what is now in device memory, a
	 * window at a time (no bounce buffer the size of the range).
	 */
	size_t win = 512 * PAGE;
	char *bounce = malloc(win);
	if (!bounce)
		return -ENOMEM;
	uint64_t done = 0;
	for (uint64_t a = start; a < end && rc == 0; a += win) {
		uint64_t e = end - a < win ? end : a + win, before = done;
		rc = dm_access(dm, a, e, bounce, false, &done);
		if (rc == 0 && cmd->ptr &&
		    uhmm_device_write(cmd->ptr + (a - start), bounce, (done - before) * PAGE))
			rc = -EFAULT;
	}
	if (rc && getenv("UHMM_DEBUG")) {
		uint8_t b = 0;
		struct uhmm_dmirror_cmd sc = { .addr = start + done * PAGE, .ptr = (uintptr_t)&b,
					       .npages = 1 };
		uhmm_dmirror_snapshot(dm, &sc);
		fprintf(stderr, "dmirror: read-back stops at page %llu (snapshot 0x%x), migrated %llu\n",
			(unsigned long long)done, b, (unsigned long long)migrated);
	}
	cmd->cpages = done;
	free(bounce);
	return rc;
}

int uhmm_dmirror_migrate_to_sys(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd)
{
	uint64_t start, end;
	int rc = cmd_range(dm, cmd, CMD_NEED_MAPPED, &start, &end);
	if (rc)
		return rc;
	return migrate_range(dm, start, end, false, &cmd->cpages);
}

static uint8_t snapshot_byte(struct uhmm_dmirror *dm, uint64_t p)
{
	if (p & UHMM_PFN_ERROR)
		return UHMM_DMIRROR_PROT_ERROR;
	if (!(p & UHMM_PFN_VALID))
		return UHMM_DMIRROR_PROT_NONE;
	uint8_t perm = UHMM_DMIRROR_PROT_NONE;
	if (p & UHMM_PFN_DEVICE) {
		struct uhmm_devmem *mem = uhmm_page_devmem(p & UHMM_PFN_PFN_MASK);
		bool local = mem == dm->dev->pool;
		if (uhmm_devmem_type(mem) == UHMM_DEVMEM_PRIVATE)
			perm = local ? UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL :
				       UHMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE;
		else
			perm = local ? UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL :
				       UHMM_DMIRROR_PROT_DEV_COHERENT_REMOTE;
	} else if (p & UHMM_PFN_ZERO) {
		perm = UHMM_DMIRROR_PROT_ZERO;
	}
	perm |= (p & UHMM_PFN_WRITE) ? UHMM_DMIRROR_PROT_WRITE : UHMM_DMIRROR_PROT_READ;
	unsigned order = uhmm_pfn_to_map_order(p);
	if (order == 9)
		perm |= UHMM_DMIRROR_PROT_PMD;
	else if (order == 18)
		perm |= UHMM_DMIRROR_PROT_PUD;
	return perm;
}

int uhmm_dmirror_snapshot(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd)
{
	uint64_t start, end;
	int rc = cmd_range(dm, cmd, CMD_NEED_PTR, &start, &end);
	if (rc)
		return rc;
	uint8_t *out = malloc(cmd->npages);
	if (!out)
		return -ENOMEM;
	uint64_t pfns[FAULT_WINDOW];
	for (uint64_t a = start; a < end;) {
		uint64_t e = window_end(a, end);
		struct uhmm_range r = {
			.notifier = &dm->notifier, .start = a, .end = e, .hmm_pfns = pfns,
			.dev_private_owner = dev_owner(dm->dev),
		};
		r.notifier_seq = uhmm_interval_read_begin(&dm->notifier);
		rc = uhmm_range_fault(&r);
		if (rc == -EBUSY)
			continue;
		if (rc)
			break;
		for (uint64_t i = 0; i < (e - a) / PAGE; i++)
			out[(a - start) / PAGE + i] = snapshot_byte(dm, pfns[i]);
		a = e;
	}
	if (rc == 0 && uhmm_device_write(cmd->ptr, out, cmd->npages))
		rc = -EFAULT;
	free(out);
	if (rc == 0)
		cmd->cpages = cmd->npages;
	return rc;
}

/* An atomic to run as soon as the page is held (under dm->lock). */
struct dm_atomic {
	uint64_t addr, val, old;
	bool done;
};

static void do_atomic(uint64_t ent, uint64_t page, struct dm_atomic *op)
{
	char *p = uhmm_pfn_to_virt(ent & E_VALUE);
	op->old = __atomic_fetch_add((uint64_t *)(p + (op->addr - page)), op->val,
				     __ATOMIC_SEQ_CST);
	op->done = true;
}

/*
 * Make [start, start + n pages) exclusive to dm and mirror the pages as
 * atomic entries.  With op, the atomic runs in the same critical section as
 * the mapping is installed, so a CPU access cannot take the page back in
 * between (that would starve the device).  Returns pages taken or -errno;
 * errs[] says why a page was not taken.
 */
/*
 * Take [start, start + n pages) exclusive and map what was granted.  With op,
 * run the atomic on the first page; with bounce, copy out every granted
 * page: both under the mirror lock, in the same critical section as the
 * grant check, so a revocation cannot come between (it needs the lock).
 */
static long take_exclusive(struct uhmm_dmirror *dm, uint64_t start, uint64_t n,
			   uint64_t *pages, int *errs, struct dm_atomic *op, char *bounce)
{
	long taken = uhmm_make_device_exclusive(start, n, dm, pages, errs);
	if (taken < 0)
		return taken;
	pthread_mutex_lock(&dm->lock);
	taken = 0;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t addr = start + i * PAGE, pg = 0;
		/* Under our lock a grant still held cannot be revoked under us. */
		if (!pages[i] || !uhmm_device_exclusive_held(addr, dm, &pg)) {
			if (pages[i] && errs)
				errs[i] = -EBUSY;
			pages[i] = 0;
			continue;
		}
		pages[i] = pg;
		pt_set(dm, addr, pg | E_EXCL | E_VALID | E_WRITE);
		if (bounce)
			memcpy(bounce + i * PAGE, uhmm_pfn_to_virt(pg), PAGE);
		taken++;
	}
	if (op && pages[0])
		do_atomic(pages[0] | E_EXCL, start, op);
	pthread_mutex_unlock(&dm->lock);
	return taken;
}

int uhmm_dmirror_exclusive(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd)
{
	int rc = check_cmd(dm, cmd);
	if (rc)
		return rc;
	uint64_t n = cmd->npages, start = cmd->addr;
	uint64_t *pages = calloc(n, sizeof(*pages));
	int *errs = calloc(n, sizeof(*errs));
	/* What the device holds, returned for verification. */
	char *bounce = cmd->ptr ? malloc(n * PAGE) : NULL;
	if (!pages || !errs || (cmd->ptr && !bounce)) {
		free(pages);
		free(errs);
		free(bounce);
		return -ENOMEM;
	}
	long taken = take_exclusive(dm, start, n, pages, errs, NULL, bounce);
	rc = taken < 0 ? (int)taken : 0;
	if (rc == 0) {
		cmd->cpages = (uint64_t)taken;
		for (uint64_t i = 0; i < n && rc == 0; i++)
			if (errs[i])
				rc = errs[i];
		if (rc == 0 && bounce && uhmm_device_write(cmd->ptr, bounce, n * PAGE))
			rc = -EFAULT;
	}
	free(pages);
	free(errs);
	free(bounce);
	return rc;
}

int uhmm_dmirror_check_exclusive(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd)
{
	int rc = check_cmd(dm, cmd);
	if (rc)
		return rc;
	pthread_mutex_lock(&dm->lock);
	for (uint64_t i = 0; i < cmd->npages && rc == 0; i++)
		if (pt_get(dm, cmd->addr + i * PAGE) & E_EXCL)
			rc = -EPERM;
	pthread_mutex_unlock(&dm->lock);
	return rc;
}

int uhmm_dmirror_atomic_add(struct uhmm_dmirror *dm, uint64_t addr, uint64_t val, uint64_t *old)
{
	if (!live(dm) || (addr & 7) || addr >= ADDR_LIMIT)
		return -EINVAL;
	uint64_t page = addr & ~(PAGE - 1);
	struct dm_atomic op = { .addr = addr, .val = val };
	pthread_mutex_lock(&dm->lock);
	uint64_t ent = pt_get(dm, page);
	if (ent & E_EXCL)
		do_atomic(ent, page, &op);
	pthread_mutex_unlock(&dm->lock);
	for (int tries = 0; !op.done && tries < 100000; tries++) {
		uint64_t pg = 0;
		int err = 0;
		long taken = take_exclusive(dm, page, 1, &pg, &err, &op, NULL);
		if (taken < 0)
			return (int)taken;
		if (!taken && err && err != -EBUSY)
			return err;
	}
	if (!op.done)
		return -EBUSY;
	if (old)
		*old = op.old;
	return 0;
}

int uhmm_dmirror_release(struct uhmm_dmirror *dm)
{
	if (!live(dm))
		return -EINVAL;
	evict_mine(dm, true);
	return 0;
}

int uhmm_dmirror_set_flags(struct uhmm_dmirror *dm, uint64_t flags)
{
	if (!live(dm) || (flags & ~(UHMM_DMIRROR_FLAG_FAIL_ALLOC | UHMM_DMIRROR_FLAG_SLOW_COPY)))
		return -EINVAL;
	pthread_mutex_lock(&dm->lock);
	dm->flags = flags & ~UHMM_DMIRROR_FLAG_SLOW_COPY;
	pthread_mutex_unlock(&dm->lock);
	/* a property of the device's copy engine, shared by its mirrors */
	__atomic_store_n(&dm->dev->slow_copy, !!(flags & UHMM_DMIRROR_FLAG_SLOW_COPY),
			 __ATOMIC_RELAXED);
	return 0;
}

int uhmm_dmirror_devmem_stats(unsigned int idx, struct uhmm_devmem_stats *st)
{
	if (idx >= UHMM_DMIRROR_NDEVICES || !st)
		return -EINVAL;
	pthread_once(&g_devs_once, devs_init);
	struct dmirror_device *d = &g_devs[idx];
	pthread_mutex_lock(&d->lock);
	int rc = d->pool ? uhmm_devmem_stats(d->pool, st) : 0;
	if (!d->pool)
		memset(st, 0, sizeof(*st));
	pthread_mutex_unlock(&d->lock);
	return rc;
}

int uhmm_dmirror_invalidations(struct uhmm_dmirror *dm, uint64_t counts[8])
{
	if (!live(dm) || !counts)
		return -EINVAL;
	pthread_mutex_lock(&dm->lock);
	memcpy(counts, dm->inval, sizeof(dm->inval));
	pthread_mutex_unlock(&dm->lock);
	return 0;
}
