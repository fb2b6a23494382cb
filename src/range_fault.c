/* SPDX-License-Identifier: MIT */
/*
 * range_fault.c - uhmm_range_fault (hmm_range_fault): a snapshot of the CPU
 * page table over a range, faulting pages in where the per-page request
 * asks.  Sources: the VMA (permissions, holes), uhmm's page metadata
 * (device pages, exclusive pages) and the kernel's page table through
 * PAGEMAP_SCAN and /proc/self/pagemap (present, zero page, huge, file,
 * exclusive).  As in hmm_range_fault(), WRITE means the CPU maps the page
 * writable now: a private page that is the zero page, COW shared, or the
 * file's own page of a MAP_PRIVATE file mapping is reported read-only, and
 * REQ_WRITE on it faults it for write (the kernel's copy-on-write).
 */
#include "internal.h"
#include "compat.h"

#define CAT_EXCLUSIVE (1ULL << 63)
/*
 * A page we populated can be taken away before the second scan (a racing
 * migration).  The walk restarts, like the kernel's after handle_mm_fault;
 * the racing change bumped the caller's notifier, so the restart usually
 * ends in -EBUSY at once.  The bound only stops a livelock against a
 * writer that never invalidates (none should exist): then -EBUSY too.
 */
#define RESTART_LIMIT 1000

static uint64_t req_of(const struct uhmm_range *r, uint64_t i)
{
	uint64_t req = (r->hmm_pfns[i] & r->pfn_flags_mask) | r->default_flags;
	return req & (UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE);
}

static unsigned int order_of(const struct vma *v, uint64_t cats)
{
	if (v->hugetlb)
		return v->page_size >= (1ULL << 30) ? 18 : 9;
	return (cats & PAGE_IS_HUGE) ? 9 : 0;
}

/*
 * Map order of device-private page a (frame fr): 9 while the 2 MiB block
 * holding it is one unsplit huge page with its 512 pages in order (checked
 * once per block: *ok_block caches the answer), else 0.  Caller holds pt_lock.
 */
static unsigned int dev_order(struct uhmm__as *as, uint64_t a, uint32_t fr, uint64_t *blk,
			      bool *ok_block)
{
	uint64_t base = a & ~(HUGE_SIZE_BYTES - 1), k0 = (a - base) >> PG_SHIFT;
	uint64_t h = fr - k0;
	if ((fr & (HUGE_PAGES - 1)) != k0 || !uhmm__frame_is_huge(as, h))
		return 0;
	if (*blk != base) {
		*blk = base;
		*ok_block = true;
		for (uint64_t k = 0; k < HUGE_PAGES && *ok_block; k++) {
			struct pmeta *pm = uhmm__pmeta(as, base + (k << PG_SHIFT), false);
			*ok_block = pm && pm->state == PS_PRIVATE && pm->frame == h + k && !pm->locked;
		}
	}
	return *ok_block ? HUGE_ORDER : 0;
}

struct dev_walk {
	struct uhmm_range *r;
	const struct vma *v;
	uint8_t *handled;     /* per page of the chunk: reported here, not by the scan */
	uint64_t s;           /* the chunk's start */
	uint64_t blk;         /* dev_order's cache: no block yet */
	bool blk_ok;
};
#define DEV_FAULT 1       /* dev_page: the page must come back first */

/* Caller holds pt_lock: page a of the chunk, if it is not a plain system page. */
static int dev_page(struct uhmm__as *as, uint64_t a, struct pmeta *pm, void *arg)
{
	struct dev_walk *w = arg;
	struct uhmm_range *r = w->r;
	uint64_t i = (a - r->start) >> PG_SHIFT;
	uint8_t *handled = &w->handled[(a - w->s) >> PG_SHIFT];
	int st = pm->state;
	/* A fault page already back in the CPU view is not busy (LOCK_FAULT). */
	bool locked = pm->locked && !(pm->locked == LOCK_FAULT && st == PS_SYSTEM);
	uint64_t req = req_of(r, i);
	if (st == PS_SYSTEM && !locked)
		return 0;
	struct frame *f = uhmm__frame(as, pm->frame);
	if (!locked && st == PS_PRIVATE && f && frame_pool(f)->owner == r->dev_private_owner &&
	    r->dev_private_owner) {
		if ((req & UHMM_PFN_REQ_WRITE) && !w->v->write)
			return -EPERM;
		r->hmm_pfns[i] = pm->frame | UHMM_PFN_VALID | UHMM_PFN_DEVICE |
				 (w->v->write ? UHMM_PFN_WRITE : 0) |
				 ((uint64_t)dev_order(as, a, pm->frame, &w->blk, &w->blk_ok)
				  << UHMM_PFN_ORDER_SHIFT);
		*handled = 1;
		return 0;
	}
	if (!locked && st == PS_COHERENT)
		return 0;  /* CPU mapped: the scan reports it, tagged below */
	if (!(req & UHMM_PFN_REQ_FAULT)) {
		r->hmm_pfns[i] = 0;
		*handled = 1;
		return 0;
	}
	return DEV_FAULT;
}

/*
 * Device-side state of the pages: report, or bring back if a fault is
 * asked.  One walk under pt_lock; it stops only where a page must come back
 * (the fault is served without pt_lock) and goes on after it.
 */
static int device_pages(struct uhmm__as *as, struct uhmm_range *r, const struct vma *v,
			uint64_t s, uint64_t e, uint8_t *handled)
{
	struct dev_walk w = { .r = r, .v = v, .handled = handled, .s = s, .blk = 1 };
	memset(handled, 0, (e - s) >> PG_SHIFT);
	for (uint64_t a = s; a < e; a += PG_SIZE) {
		uhmm__pt_lock(as);
		int rc = uhmm__walk(as, a, e, 0, dev_page, &w, &a);
		uhmm__pt_unlock(as);
		if (rc != DEV_FAULT)
			return rc;
		uint64_t req = req_of(r, (a - r->start) >> PG_SHIFT);
		if (uhmm__fault_in(as, a, req & UHMM_PFN_REQ_WRITE))
			return -EFAULT;
	}
	return 0;
}

/* Caller holds pt_lock: a coherent page the scan reported names its device page. */
static int coherent_page(struct uhmm__as *as, uint64_t a, struct pmeta *pm, void *arg)
{
	struct dev_walk *w = arg;
	uint64_t i = (a - w->r->start) >> PG_SHIFT;
	uint64_t *pfn = &w->r->hmm_pfns[i];
	(void)as;
	if (pm->state == PS_COHERENT && !pm->locked && !w->handled[(a - w->s) >> PG_SHIFT] &&
	    (*pfn & UHMM_PFN_VALID))
		*pfn = pm->frame | UHMM_PFN_VALID | UHMM_PFN_DEVICE |
		       (*pfn & (UHMM_PFN_WRITE | UHMM_PFN_ORDER_MASK));
	return 0;
}

static int fault_chunk(struct uhmm__as *as, struct uhmm_range *r, const struct vma *v,
		       uint64_t s, uint64_t e)
{
	uint64_t n = (e - s) >> PG_SHIFT, i0 = (s - r->start) >> PG_SHIFT;
	bool want_fault = false, want_write = false;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t req = req_of(r, i0 + i);
		want_fault |= req & UHMM_PFN_REQ_FAULT;
		want_write |= (req & UHMM_PFN_REQ_FAULT) && (req & UHMM_PFN_REQ_WRITE);
	}
	if (!v->read) {
		if (want_fault)
			return -EFAULT;
		for (uint64_t i = 0; i < n; i++)
			r->hmm_pfns[i0 + i] = UHMM_PFN_ERROR;
		return 0;
	}
	if (want_write && !v->write)
		return -EPERM;
	if (!v->file || v->shared)
		uhmm__ensure_registered(as, v, s, e, false);  /* best effort: tracking */

	uint8_t *handled = uhmm__zalloc(n);
	uint64_t *cats = uhmm__zalloc(n * sizeof(*cats));
	int rc = -ENOMEM;
	if (!handled || !cats)
		goto out;
	rc = device_pages(as, r, v, s, e, handled);
	if (rc)
		goto out;
	rc = uhmm__page_scan(as, s, e, cats, n, true);
	if (rc)
		goto out;
	if (want_fault) {
		/* Populate the runs of requested pages that are not good enough yet. */
		bool populated = false;
		for (uint64_t i = 0; i < n;) {
			uint64_t req = req_of(r, i0 + i);
			bool w = req & UHMM_PFN_REQ_WRITE;
			bool ok = (cats[i] & PAGE_IS_PRESENT) &&
				  (!w || v->shared || ((cats[i] & CAT_EXCLUSIVE) &&
						       !(cats[i] & PAGE_IS_PFNZERO)));
			if (handled[i] || !(req & UHMM_PFN_REQ_FAULT) || ok) {
				i++;
				continue;
			}
			uint64_t j = i + 1;
			while (j < n && !handled[j] && (req_of(r, i0 + j) & UHMM_PFN_REQ_FAULT) &&
			       !!(req_of(r, i0 + j) & UHMM_PFN_REQ_WRITE) == w)
				j++;
			rc = uhmm__populate(as, v, s + (i << PG_SHIFT), s + (j << PG_SHIFT), w);
			if (rc)
				goto out;
			populated = true;
			i = j;
		}
		rc = populated ? uhmm__page_scan(as, s, e, cats, n, true) : 0;  /* what it made */
		if (rc)
			goto out;
	}
	uhmm__pt_lock(as);
	for (uint64_t i = 0; i < n; i++) {
		/* A page an intercepted munmap is tearing down is already gone. */
		if (uhmm__torn_down(as, s + (i << PG_SHIFT))) {
			if (req_of(r, i0 + i) & UHMM_PFN_REQ_FAULT)
				rc = -EFAULT;
			handled[i] = 1;
			r->hmm_pfns[i0 + i] = UHMM_PFN_ERROR;
		}
	}
	uhmm__pt_unlock(as);
	if (rc)
		goto out;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t a = s + (i << PG_SHIFT);
		if (handled[i])
			continue;
		uint64_t req = req_of(r, i0 + i);
		if (!(cats[i] & PAGE_IS_PRESENT)) {
			if (req & UHMM_PFN_REQ_FAULT) {
				/* Populated, then taken again (a migration): walk again. */
				rc = -EAGAIN;
				goto out;
			}
			r->hmm_pfns[i0 + i] = 0;
			continue;
		}
		bool zero = cats[i] & PAGE_IS_PFNZERO;
		/* CAT_EXCLUSIVE: neither COW shared nor a private mapping's file page */
		bool wr = v->write && !zero && (v->shared || (cats[i] & CAT_EXCLUSIVE));
		uint64_t out = (a >> PG_SHIFT) | UHMM_PFN_VALID |
			       ((uint64_t)order_of(v, cats[i]) << UHMM_PFN_ORDER_SHIFT);
		if (wr)
			out |= UHMM_PFN_WRITE;
		if (zero)
			out |= UHMM_PFN_ZERO;
		r->hmm_pfns[i0 + i] = out;
	}
	/* Coherent device pages are CPU mapped; name the device page instead. */
	struct dev_walk w = { .r = r, .v = v, .handled = handled, .s = s };
	uhmm__pt_lock(as);
	uhmm__walk(as, s, e, 0, coherent_page, &w, NULL);
	uhmm__pt_unlock(as);
	rc = 0;
out:
	uhmm__free(handled, n);
	uhmm__free(cats, n * sizeof(*cats));
	return rc;
}

int uhmm_range_fault(struct uhmm_range *r)
{
	if (!r || !r->notifier || !r->hmm_pfns || (r->start & ~PG_MASK) ||
	    (r->end & ~PG_MASK) || r->start >= r->end)
		return -EINVAL;
	int err = 0;
	struct uhmm__as *as = uhmm__as_get(&err);
	if (!as)
		return err;
	STAT_ADD(range_faults, 1);
	unsigned int again = 0;
	for (uint64_t a = r->start; a < r->end;) {
		if (uhmm_interval_check_retry(r->notifier, r->notifier_seq))
			return -EBUSY;
		struct vma v;
		int rc = uhmm__vma_find(as, a, &v);
		if (rc == 0 && v.start > a) {
			/* A hole up to the next VMA. */
			v.end = v.start;
			rc = -EFAULT;
		} else if (rc) {
			v.end = r->end;
		}
		uint64_t e = v.end < r->end ? v.end : r->end;
		if (rc) {
			for (uint64_t p = a; p < e; p += PG_SIZE) {
				uint64_t i = (p - r->start) >> PG_SHIFT;
				if (req_of(r, i) & UHMM_PFN_REQ_FAULT)
					return -EFAULT;
				r->hmm_pfns[i] = UHMM_PFN_ERROR;
			}
		} else {
			rc = fault_chunk(as, r, &v, a, e);
			if (rc == -EAGAIN && ++again < RESTART_LIMIT) {
				sched_yield();
				continue;  /* the notifier check above ends it if it was invalidated */
			}
			if (rc)
				return rc == -EAGAIN ? -EBUSY : rc;
		}
		a = e;
	}
	if (uhmm_interval_check_retry(r->notifier, r->notifier_seq))
		return -EBUSY;
	return 0;
}
