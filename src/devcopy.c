/* SPDX-License-Identifier: MIT */
/*
 * devcopy.c - the middle phase of a migration done for the driver
 * (uhmm_migrate_copy): allocate the destination pages, copy each run of
 * consecutive pages with one call of the driver's copy callback (memory the
 * CPU cannot address) or with uhmm_page_copy_many (host-memory pools), wait
 * for the driver's fence, fill dst.  Takes no lock of its own: the pages
 * are locked by the migration that collected them, and the driver's
 * callback runs with no uhmm lock held.
 */
#include "internal.h"
#include "compat.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Pages handled per round: one allocation, one driver call, one fence. */
#define COPY_BATCH 512
/*
 * To the device of a driver-owned pool, reading the parked sources in
 * place: 16 MiB per call, so that a transport with a long pipe (a network)
 * has several runs in flight before its fence (far memory: one 2 MiB put
 * and its flush took 1.1 ms over UCX's TCP RMA, 16 MiB one flush after).
 */
#define COPY_BATCH_TO_DEV 4096

/* The pool of a live frame, or NULL (system frames give as->syspool). */
struct uhmm_devmem *uhmm__pool_of(struct uhmm__as *as, uint64_t page)
{
	struct frame *f = uhmm__frame(as, page);
	return f && frame_ref(f) ? frame_pool(f) : NULL;
}

/*
 * The runs of one batch: entry k copies between host address host[k] (0:
 * the source held no data, clear) and device page dev[k].  Consecutive
 * entries join a run when both sides are consecutive (and so is the device
 * index).
 */
static uint64_t make_runs(struct uhmm__as *as, const uint64_t *host, const uint64_t *dev,
			  uint64_t n, struct uhmm_copy_run *runs)
{
	uint64_t nr = 0;
	for (uint64_t k = 0; k < n; k++) {
		uint32_t idx = as->frames[dev[k]].index;
		struct uhmm_copy_run *r = nr ? &runs[nr - 1] : NULL;
		bool clear = host[k] == 0;
		if (r && (r->flags & UHMM_COPY_RUN_CLEAR) == (clear ? UHMM_COPY_RUN_CLEAR : 0) &&
		    dev[k] == r->page + r->npages && idx == r->dev_index + r->npages &&
		    (clear || host[k] == r->host + (r->npages << PG_SHIFT))) {
			r->npages++;
			continue;
		}
		runs[nr++] = (struct uhmm_copy_run){
			.host = host[k], .dev_index = idx, .page = dev[k], .npages = 1,
			.flags = clear ? UHMM_COPY_RUN_CLEAR : 0,
		};
	}
	return nr;
}

/* The driver's copy of one batch, and its fence: 0 or -errno. */
static int driver_copy(struct uhmm_devmem *mem, enum uhmm_copy_dir dir,
		       const struct uhmm_copy_run *runs, uint64_t nruns)
{
	/* "copy" covers every copy of a migration, the driver's too */
	if (uhmm__inject(INJ_DRIVER_COPY) || uhmm__inject(INJ_COPY))
		return -EIO;
	uint64_t fence = 0, t0 = uhmm__now_ns();
	int rc = mem->copy_ops->copy(mem, dir, runs, nruns, &fence);
	if (rc == 0 && fence && mem->copy_ops->wait)
		rc = mem->copy_ops->wait(mem, fence);
	uhmm__fault_copy_time(uhmm__now_ns() - t0);  /* a fault's cost (faultwork.c) */
	if (rc > 0)
		rc = -EIO;  /* a driver that returns a positive value failed all the same */
	return rc;
}

struct batch {
	uint64_t cap;                  /* entries: at most COPY_BATCH */
	uint64_t *idx;                 /* entry of src/dst */
	uint64_t *from;                /* source page, 0 for a hole */
	uint64_t *pages;               /* allocated destinations */
	uint64_t *host, *dev;
	struct uhmm_copy_run *runs;
	int *errs;
};

/*
 * A batch sized for the call, in one allocation: a one-page fault's
 * migration zeroed 64 KiB for a full-size batch (9 % of a self-service
 * fault's time, perf).
 */
static size_t batch_size(uint64_t cap)
{
	return sizeof(struct batch) +
	       cap * (5 * sizeof(uint64_t) + sizeof(struct uhmm_copy_run) + sizeof(int));
}

static struct batch *batch_new(uint64_t cap)
{
	struct batch *b = uhmm__zalloc(batch_size(cap));
	if (!b)
		return NULL;
	b->cap = cap;
	b->idx = (uint64_t *)(b + 1);
	b->from = b->idx + cap;
	b->pages = b->from + cap;
	b->host = b->pages + cap;
	b->dev = b->host + cap;
	b->runs = (struct uhmm_copy_run *)(b->dev + cap);
	b->errs = (int *)(b->runs + cap);
	return b;
}

/*
 * The system pages of a huge run that the driver will write: populated as
 * one THP where the kernel gives one (the arena is MADV_NOHUGEPAGE but for
 * this moment), so that the run goes into the CPU view with one PMD.
 */
static void populate_run(const struct uhmm_copy_run *r)
{
	bool huge = r->npages == HUGE_PAGES && !(r->host & (HUGE_SIZE_BYTES - 1));
	if (huge)
		syscall(SYS_madvise, r->host, HUGE_SIZE_BYTES, MADV_HUGEPAGE);
	syscall(SYS_madvise, r->host, r->npages << PG_SHIFT, MADV_POPULATE_WRITE);
	if (huge)
		syscall(SYS_madvise, r->host, HUGE_SIZE_BYTES, MADV_NOHUGEPAGE);
}

/*
 * Frames pages[0..n) take the data the driver wrote at slot + k pages for
 * entry k (UFFDIO_COPY: new pages, not zeroed first, one call per range of
 * consecutive frames); errs[k] gets each entry's result.
 */
static void install_from_slot(struct uhmm__as *as, const char *slot, const uint64_t *pages,
			      uint64_t n, int *errs)
{
	for (uint64_t k = 0, e; k < n; k = e) {
		for (e = k + 1; e < n && pages[e] == pages[e - 1] + 1; e++)
			;
		int rc = uhmm__frame_copy_in(as, pages[k], e - k, slot + (k << PG_SHIFT));
		for (uint64_t j = k; j < e; j++)
			errs[j] = rc;
	}
}

/*
 * The driver's copy of one batch of an owned pool into b->errs.  Through a
 * staging slot where there is one (to RAM: the driver writes the slot and
 * uhmm copies it into the frames; to the device, the driver's staging
 * only: uhmm copies the sources into it first), else the frames' own host
 * memory (populated first when the driver writes it).
 */
static void owned_copy(struct uhmm__as *as, struct uhmm_devmem *mem, bool to_ram,
		       struct batch *b, uint64_t n, bool huge)
{
	struct uhmm__staging *st = NULL;
	/* a huge page keeps its THP: populated in place, never through uhmm's bounce */
	bool driver = __atomic_load_n(&mem->staging.base, __ATOMIC_ACQUIRE) != NULL;
	/*
	 * One page to RAM (a fault): a page of uhmm's page bounce, which
	 * finalize copies straight to the CPU view (a forwarded copy, fwd.c).
	 * Not with the driver's own staging: its slots are waited for, and one
	 * held until finalize could be the one a second copy of the same
	 * migration waits for.
	 */
	char *slot = to_ram && n == 1 && !huge && !driver ? uhmm__staging_take_page(as) : NULL;
	bool one = slot != NULL;
	if (one)
		st = &as->page_bounce;
	else if (!huge || driver)
		slot = uhmm__staging_take(as, mem, to_ram, &st);
	uint64_t k;
	for (k = 0; k < n; k++) {
		uint64_t sys = to_ram ? b->pages[k] : b->from[k];  /* 0: a hole, to the device */
		b->dev[k] = to_ram ? b->from[k] : b->pages[k];
		if (!sys) {
			b->host[k] = 0;  /* the driver clears */
			continue;
		}
		/*
		 * A read of a frame with no page maps the zero page there:
		 * marked, the frame is emptied before its next use (or its
		 * next UFFDIO_COPY/MOVE finds it populated: EEXIST).
		 */
		if (!to_ram)
			uhmm__frame_set_populated(as, sys, true);
		if (slot) {
			b->host[k] = (uint64_t)(uintptr_t)slot + (k << PG_SHIFT);
			if (!to_ram)
				memcpy(slot + (k << PG_SHIFT),
				       (const void *)(uintptr_t)uhmm__frame_addr(as, sys), PG_SIZE);
		} else {
			b->host[k] = uhmm__frame_addr(as, sys);
		}
	}
	uint64_t nr = make_runs(as, b->host, b->dev, n, b->runs);
	if (to_ram && !slot) {
		/* the driver writes the system pages: populate each run at once */
		for (uint64_t r = 0; r < nr; r++)
			populate_run(&b->runs[r]);
		for (k = 0; k < n; k++)
			uhmm__frame_set_populated(as, b->pages[k], true);
	}
	int rc = driver_copy(mem, to_ram ? UHMM_COPY_TO_RAM : UHMM_COPY_TO_DEV, b->runs, nr);
	if (!rc && one && uhmm__fwd_link_page(as, b->pages[0], slot)) {
		b->errs[0] = 0;
		return;  /* the page is the link's now */
	}
	if (!rc && to_ram && slot) {
		install_from_slot(as, slot, b->pages, n, b->errs);
	} else {
		for (k = 0; k < n; k++)
			b->errs[k] = rc;
	}
	if (slot)
		uhmm__staging_put(st, slot);
}

/*
 * A forwarded copy (fwd.c) for this batch: one page of a host-memory pool
 * to RAM.  Finalize frees the source before the install moves its page
 * (uhmm__frame_put_hold), so a faulting thread that goes on as soon as the
 * page is mapped sees the pool counters settled (test_migrate.
 * counters_settled; before the hold, links on the service thread failed it).
 */
static bool fwd_ok(const struct uhmm_devmem *mem, bool to_ram, long got, const struct batch *b)
{
	return !mem->owned && to_ram && got == 1 && b->from[0];
}

/*
 * One batch of n entries; returns pages copied, or -errno if none was.
 * huge: b->pages holds a huge page already (n == HUGE_PAGES).
 */
static long copy_batch(struct uhmm__as *as, struct uhmm_devmem *mem, bool to_ram,
		       struct batch *b, uint64_t n, uint64_t *dst, bool huge)
{
	long got = huge ? (long)n : uhmm__frame_alloc_many(as, to_ram ? as->syspool : mem, n,
							   b->pages);
	if (got <= 0)
		return got < 0 ? got : -ENOMEM;  /* these pages stay where they are */
	uint64_t k, ok = 0;
	if (fwd_ok(mem, to_ram, got, b) && uhmm__fwd_link(as, b->pages[0], b->from[0]))
		/* one page to RAM: finalize moves it in one step (fwd.c) */
		b->errs[0] = uhmm__inject(INJ_COPY) ? -EIO : 0;
	else if (!mem->owned)
		uhmm_page_copy_many(b->pages, b->from, (uint64_t)got, b->errs);
	else
		owned_copy(as, mem, to_ram, b, (uint64_t)got, huge);
	int err = 0;
	for (k = 0; k < (uint64_t)got; k++) {
		if (b->errs[k]) {
			err = b->errs[k];
			uhmm__frame_put(as, b->pages[k]);
			continue;
		}
		dst[b->idx[k]] = uhmm_migrate_pfn(b->pages[k]);
		ok++;
	}
	if (huge && ok == n) {
		/* the kernel's form: the head names the huge page, the tails are 0 */
		dst[b->idx[0]] |= UHMM_MIGRATE_PFN_COMPOUND;
		for (k = 1; k < n; k++)
			dst[b->idx[k]] = 0;
	}
	return ok ? (long)ok : err ? err : -ENOMEM;
}

/*
 * Compound entry i (UHMM_MIGRATE_SELECT_COMPOUND): one huge destination
 * page and one run, or -ENOMEM when no huge page is free (the caller falls
 * back to 4 KiB pages).
 */
static long copy_huge(struct uhmm__as *as, struct uhmm_devmem *mem, bool to_ram,
		      struct batch *b, uint64_t i, uint64_t p, uint64_t *dst)
{
	uint64_t h;
	if (uhmm__frame_alloc_huge(as, to_ram ? as->syspool : mem, &h))
		return -ENOMEM;
	uhmm__assert(b->cap >= HUGE_PAGES);  /* a compound entry: npages >= 512 */
	for (uint64_t k = 0; k < HUGE_PAGES; k++) {
		b->idx[k] = i + k;
		b->from[k] = p ? p + k : 0;
		b->pages[k] = h + k;
	}
	return copy_batch(as, mem, to_ram, b, HUGE_PAGES, dst, true);
}

long uhmm_migrate_copy(struct uhmm_devmem *mem, const uint64_t *src, uint64_t *dst,
		       uint64_t npages)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (!as || !src || !dst || npages == 0 || uhmm_devmem_is_owned(mem) < 0 || !mem->type)
		return -EINVAL;
	/* The direction follows the first source page: one of mem's goes to RAM. */
	bool to_ram = false;
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t p = uhmm_migrate_pfn_to_page(src[i]);
		if ((src[i] & UHMM_MIGRATE_PFN_MIGRATE) && p) {
			to_ram = uhmm__pool_of(as, p) == mem;
			break;
		}
	}
	/* a batch fits one staging slot (to RAM, or the driver's) */
	uint64_t cap = COPY_BATCH;
	if (mem->owned)
		cap = to_ram || __atomic_load_n(&mem->staging.base, __ATOMIC_ACQUIRE) ?
			      uhmm__staging_slot_pages(mem) : COPY_BATCH_TO_DEV;
	struct batch *b = batch_new(npages < cap ? npages : cap);
	if (!b)
		return -ENOMEM;
	long copied = 0, err = 0;
	uint64_t n = 0, tails = 0, tail_from = 0;
	for (uint64_t i = 0; i <= npages; i++) {
		bool head = i < npages && (src[i] & UHMM_MIGRATE_PFN_COMPOUND);
		if (i < npages && ((src[i] & UHMM_MIGRATE_PFN_MIGRATE) || tails) && !dst[i]) {
			uint64_t p = uhmm_migrate_pfn_to_page(src[i]);
			if (tails && !src[i])
				p = tail_from ? tail_from + (HUGE_PAGES - tails) : 0;
			struct uhmm_devmem *sp = p ? uhmm__pool_of(as, p) : NULL;
			/* to RAM: only mem's pages; to the device: system pages or holes */
			bool take = to_ram ? sp == mem : (!p || sp == as->syspool);
			if (take && head && i + HUGE_PAGES <= npages) {
				/* a compound entry: a huge page, in a batch of its own */
				long r = n ? copy_batch(as, mem, to_ram, b, n, dst, false) : 0;
				if (r > 0)
					copied += r;
				else if (r < 0)
					err = r;
				n = 0;
				/* a staging slot smaller than a huge page: always split */
				r = b->cap >= HUGE_PAGES ? copy_huge(as, mem, to_ram, b, i, p, dst) : -ENOMEM;
				if (r != -ENOMEM) {
					if (r > 0)
						copied += r;
					else
						err = r;
					i += HUGE_PAGES - 1;
					continue;
				}
				/* no huge page: 4 KiB pages from source page p + k (a split) */
				tails = HUGE_PAGES;
				tail_from = p;
			}
			if (take) {
				b->idx[n] = i;
				b->from[n] = p;
				n++;
			}
		}
		if (tails)
			tails--;
		if (n && (n == b->cap || i == npages)) {
			long r = copy_batch(as, mem, to_ram, b, n, dst, false);
			if (r > 0)
				copied += r;
			else
				err = r;
			n = 0;
		}
	}
	uhmm__free(b, batch_size(b->cap));
	return copied ? copied : err;
}
