/* SPDX-License-Identifier: MIT */
/*
 * migrate_setup.c - the first phase of a migration (migrate_vma_setup): collect
 * and lock the pages, notify, take their data out of the CPU view.  The
 * other phases and eviction by device page are in migrate.c.
 *
 * setup locks every collected page (page lock in the metadata), notifies
 * (MIGRATE, owner), and takes the data out of the CPU view into a frame
 * with UFFDIO_MOVE, so that src[] only ever names frames.  A CPU access to a
 * collected page faults and waits for finalize.  A hole is collected without
 * data; if the CPU touches it during the migration the hole is filled and
 * the page is dropped at pages() ("lost race").  pages() installs dst:
 * device-private pages stay out of the CPU view, system and coherent pages
 * are moved into it.  finalize puts back what did not migrate, frees the
 * frames no longer used and unlocks.  The fork lock is held for reading from
 * setup to finalize (same thread).
 */
#include "internal.h"
#include "compat.h"
#include "migrate.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CAT_VMA_START (1ULL << 62)  /* setup's scan array: a VMA begins at this page */

static bool owner_match(struct uhmm__as *as, uint32_t fr, const void *owner, int type)
{
	struct frame *f = uhmm__frame(as, fr);
	struct uhmm_devmem *p = f ? frame_pool(f) : NULL;
	return p && p->type == type && p->owner == owner;
}

static int check_args(struct uhmm_migrate *a)
{
	if (!a || !a->src || !a->dst || (a->start & ~PG_MASK) || (a->end & ~PG_MASK) ||
	    a->start >= a->end || !a->flags)
		return -EINVAL;
	return 0;
}

/*
 * After collect() locked them, system pages are looked at in the page table:
 * a page with no data (never populated, or the zero page) is a hole.  This
 * must come after the locks: a page another operation was moving back while
 * collect() waited would otherwise be taken for a hole and lose its data.
 */
static void classify(struct uhmm__as *as, struct uhmm_migrate *a, uint64_t i0, uint64_t n,
		     uint8_t *origin, const uint64_t *cats)
{
	uhmm__pt_lock(as);
	for (uint64_t i = i0; i < i0 + n; i++) {
		if (origin[i] != OR_SYSTEM)
			continue;
		uint64_t addr = a->start + (i << PG_SHIFT);
		struct pmeta *pm = uhmm__pmeta(as, addr, false);
		if (cats[i] & PAGE_IS_SWAPPED) {
			origin[i] = OR_NONE;  /* swapped out: not taken (no swap-in from here) */
			uhmm__page_unlock(as, addr, pm);
		} else if (!(cats[i] & PAGE_IS_PRESENT) || (cats[i] & PAGE_IS_PFNZERO)) {
			origin[i] = OR_HOLE;
			pm->locked = LOCK_HOLE;
			TR('H', addr, 0, 4096, cats[i]);
		}
	}
	uhmm__pt_unlock(as);
}

/* Lock the pages of [start, end) that the selection takes; fills origin[]. */
static void collect(struct uhmm__as *as, struct uhmm_migrate *a, const struct vma *v,
		    uint64_t i0, uint64_t n, uint8_t *origin, struct mig *m)
{
	bool sys_ok = (a->flags & UHMM_MIGRATE_SELECT_SYSTEM) && !v->shared && !v->file &&
		      v->read;
	uhmm__pt_lock(as);
	for (uint64_t i = i0; i < i0 + n; i++) {
		uint64_t addr = a->start + (i << PG_SHIFT);
		origin[i] = OR_NONE;
		/*
		 * A page another operation holds is waited for, not skipped:
		 * every operation locks pages in ascending address order, so
		 * waiting cannot deadlock, and the CPU fault that just finished
		 * on it must not make this migration miss it.  A migration for
		 * a CPU fault (fault_page) waits for nothing, like the kernel's
		 * trylock: it may run on the fault-service thread.  Its fault
		 * page is locked already, by the fault (LOCK_FAULT).
		 */
		if (a->fault_page) {
			struct pmeta *fp = uhmm__pmeta(as, addr, false);
			if (fp && fp->locked &&
			    !(fp->locked == LOCK_FAULT && fp->frame == a->fault_page))
				continue;
		} else {
			uhmm__page_lock_wait(as, addr);
		}
		struct pmeta *pm = uhmm__pmeta(as, addr, false);
		int st = pm ? pm->state : PS_SYSTEM;
		bool torn = uhmm__torn_down(as, addr);  /* being unmapped: may only come back */
		if (st == PS_PRIVATE && (a->flags & UHMM_MIGRATE_SELECT_DEVICE_PRIVATE) &&
		    owner_match(as, pm->frame, a->pgmap_owner, UHMM_DEVMEM_PRIVATE)) {
			origin[i] = OR_PRIVATE;
		} else if (st == PS_COHERENT && (a->flags & UHMM_MIGRATE_SELECT_DEVICE_COHERENT) &&
			   owner_match(as, pm->frame, a->pgmap_owner, UHMM_DEVMEM_COHERENT)) {
			origin[i] = OR_COHERENT;
		} else if (st == PS_SYSTEM && sys_ok && !torn && uhmm__reg_missing(as, addr)) {
			origin[i] = OR_SYSTEM;  /* or a hole: classify() decides */
			pm = uhmm__pmeta(as, addr, true);
			if (!pm) {
				origin[i] = OR_NONE;
				continue;
			}
		}
		if (origin[i] != OR_NONE && pm->locked == LOCK_FAULT)
			m->fault_addr = addr;
		else if (origin[i] != OR_NONE)
			pm->locked = LOCK_DATA;
		TR('L', addr, 0, 4096, origin[i] * 16 + st);
	}
	uhmm__pt_unlock(as);
}

/* Switch page addr's lock from one kind to another; false if it was not "from". */
static bool switch_lock(struct uhmm__as *as, uint64_t addr, uint8_t from, uint8_t to)
{
	uhmm__pt_lock(as);
	struct pmeta *pm = uhmm__pmeta(as, addr, false);
	bool ok = pm->locked == from;
	if (ok)
		pm->locked = to;
	uhmm__pt_unlock(as);
	return ok;
}

static bool frame_is_zero(struct uhmm__as *as, uint64_t fr)
{
	static const char zeros[PG_SIZE];
	return !memcmp((const void *)(uintptr_t)uhmm__frame_addr(as, fr), zeros, PG_SIZE);
}

/*
 * The CPU wrote to a collected zero page before it left the CPU view: a
 * write to the zero page is a copy-on-write inside the kernel, not a
 * userfault, so nothing marked the hole lost.  What moved out is data now:
 * the page migrates like any other (src names the frame that holds it).
 */
static void hole_became_data(struct uhmm__as *as, struct uhmm_migrate *a, uint8_t *origin,
			     uint64_t i, uint64_t fr)
{
	uint64_t addr = a->start + (i << PG_SHIFT);
	uhmm__frame_set_owner(as, fr, addr, NULL);
	origin[i] = OR_SYSTEM;
	a->src[i] = uhmm_migrate_pfn(fr) | UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_WRITE;
}

/*
 * Zero pages of collected holes leave the CPU view so that the CPU faults on
 * them: moved into a scratch frame that is then dropped, unless the CPU
 * wrote to the page first (see hole_became_data).  (MADV_DONTNEED on a
 * registered range would post an event and wait for the service thread.)
 */

static void zap_zero_holes(struct uhmm__as *as, struct uhmm_migrate *a, uint8_t *origin,
			   const uint64_t *cats)
{
	for (uint64_t i = 0; i < a->npages; i++) {
		if (origin[i] != OR_HOLE || !(cats[i] & PAGE_IS_PRESENT))
			continue;
		uint64_t fr, addr = a->start + (i << PG_SHIFT);
		/*
		 * Until we know what moved, a CPU fault must wait: taken for a
		 * hole's fault it would be filled with zeros in place of data.
		 */
		if (!switch_lock(as, addr, LOCK_HOLE, LOCK_DATA))
			continue;  /* lost already: the CPU filled it */
		int rc = uhmm__frame_alloc(as, as->syspool, &fr);
		if (rc == 0) {
			rc = uhmm__move_out_of_cpu(as, addr, fr, false);
			if (rc == 0 && !frame_is_zero(as, fr)) {
				hole_became_data(as, a, origin, i, fr);
				continue;
			}
			uhmm__frame_put(as, fr);
		}
		switch_lock(as, addr, LOCK_DATA, LOCK_HOLE);
		/*
		 * MOVE cannot take the page of a read-only mapping: zap it
		 * there (the CPU cannot have written it).  A writable one is
		 * left out: the CPU may have written it since the scan.
		 */
		struct vma v;
		if (rc && rc != -ENOENT && uhmm__vma_find(as, addr, &v) == 0 && !v.write)
			rc = uhmm__zap_app_range(as, addr, addr + PG_SIZE);
		if (rc && rc != -ENOENT) {
			origin[i] = OR_NONE;  /* the CPU still maps it: not taken */
			uhmm__page_release(as, addr);
		}
	}
}

/* Take page i's data into a frame; sets src[i]. */
static void take_page(struct uhmm__as *as, struct uhmm_migrate *a, uint8_t *origin, uint64_t i)
{
	uint64_t addr = a->start + (i << PG_SHIFT);
	uint64_t fr = 0;
	int rc = 0;
	uhmm__pt_lock(as);
	struct pmeta *pm = uhmm__pmeta(as, addr, false);
	uint32_t dev_frame = pm ? pm->frame : 0;
	uhmm__pt_unlock(as);
	switch (origin[i]) {
	case OR_HOLE:
		a->src[i] = UHMM_MIGRATE_PFN_MIGRATE;
		return;
	case OR_PRIVATE:
		a->src[i] = uhmm_migrate_pfn(dev_frame) | UHMM_MIGRATE_PFN_MIGRATE |
			    UHMM_MIGRATE_PFN_WRITE;
		return;
	case OR_COHERENT:
		/* Its data is in the CPU view: take it back into its own frame. */
		rc = uhmm__move_out_of_cpu(as, addr, dev_frame, true);
		if (rc == 0 || rc == -ENOENT) {
			a->src[i] = uhmm_migrate_pfn(dev_frame) | UHMM_MIGRATE_PFN_MIGRATE |
				    UHMM_MIGRATE_PFN_WRITE;
			return;
		}
		break;
	case OR_SYSTEM:
		rc = uhmm__frame_alloc(as, as->syspool, &fr);
		if (rc)
			break;
		rc = uhmm__move_out_of_cpu(as, addr, fr, true);
		if (rc == 0) {
			uhmm__frame_set_owner(as, fr, addr, NULL);
			a->src[i] = uhmm_migrate_pfn(fr) | UHMM_MIGRATE_PFN_MIGRATE |
				    UHMM_MIGRATE_PFN_WRITE;
			return;
		}
		uhmm__frame_put(as, fr);
		if (rc == -ENOENT) {   /* went away meanwhile: a hole after all */
			uhmm__pt_lock(as);
			pm = uhmm__pmeta(as, addr, false);
			if (pm)
				pm->locked = LOCK_HOLE;
			uhmm__pt_unlock(as);
			origin[i] = OR_HOLE;
			a->src[i] = UHMM_MIGRATE_PFN_MIGRATE;
			return;
		}
		break;
	default:
		return;
	}
	/* Could not take it (shared page, kernel refused): leave it out. */
	origin[i] = OR_NONE;
	uhmm__page_release(as, addr);
}

/*
 * Take pages [i, j) (all OR_SYSTEM, one VMA) into staging frames: where the
 * frames are consecutive, one UFFDIO_MOVE takes a whole run.  A page the
 * move stops at (a hole, a shared page) goes through take_page().
 */
static void take_run(struct uhmm__as *as, struct uhmm_migrate *a, uint8_t *origin, uint64_t i,
		     uint64_t j)
{
	uint64_t fr[MOVE_RUN_MAX];
	long got = j - i > 1 ? uhmm__frame_alloc_many(as, as->syspool, j - i, fr) : 0;
	uint64_t k = i, used = 0;
	while (got > 0 && k < j && used < (uint64_t)got) {
		uint64_t len = 1;
		while (k + len < j && used + len < (uint64_t)got &&
		       fr[used + len] == fr[used + len - 1] + 1)
			len++;
		uint64_t moved = 0, addr = a->start + (k << PG_SHIFT);
		int rc = uhmm__uffd_move(as, uhmm__frame_addr(as, fr[used]), addr, len << PG_SHIFT,
					 false, &moved);
		uint64_t ok = rc ? moved >> PG_SHIFT : len;
		/* EEXIST: the page may have moved all the same (see move_out_exists). */
		if (rc == -EEXIST &&
		    uhmm__move_out_exists(as, addr + (ok << PG_SHIFT), fr[used + ok]) == 0) {
			ok++;
			rc = 0;
		}
		uhmm__frame_set_run(as, fr[used], ok, a->start + (k << PG_SHIFT), true);
		for (uint64_t q = 0; q < ok; q++, k++, used++)
			a->src[k] = uhmm_migrate_pfn(fr[used]) | UHMM_MIGRATE_PFN_MIGRATE |
				    UHMM_MIGRATE_PFN_WRITE;
		if (rc) {
			uhmm__frame_put(as, fr[used++]);
			take_page(as, a, origin, k++);
		}
	}
	for (; used < (uint64_t)(got > 0 ? got : 0); used++)
		uhmm__frame_put(as, fr[used]);
	for (; k < j; k++)
		take_page(as, a, origin, k);
}

/* Pages [i, i + HUGE_PAGES) become one compound entry headed by i. */
static void mark_compound(struct uhmm_migrate *a, struct mig *m, uint64_t i, uint64_t head_mpfn)
{
	a->src[i] = head_mpfn | UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_COMPOUND;
	m->comp[i] = COMP_HEAD;
	memset(&m->comp[i + 1], COMP_TAIL, HUGE_PAGES - 1);
}

/* A THP at addr (pages i..i+511, all OR_SYSTEM): one move into a huge staging page. */
static void take_huge_sys(struct uhmm__as *as, struct uhmm_migrate *a, struct mig *m,
			  uint64_t i, uint64_t addr)
{
	uint64_t h, moved = 0;
	if (uhmm__frame_alloc_huge(as, as->syspool, &h))
		return;  /* 4 KiB pages, by the usual runs */
	int rc = uhmm__uffd_move(as, uhmm__frame_addr(as, h), addr, HUGE_SIZE_BYTES, false, &moved);
	uint64_t ok = rc ? moved >> PG_SHIFT : HUGE_PAGES;
	TR('C', addr, uhmm__frame_addr(as, h), HUGE_SIZE_BYTES, rc);
	uhmm__frame_set_run(as, h, ok, addr, true);
	if (ok == HUGE_PAGES) {
		mark_compound(a, m, i, uhmm_migrate_pfn(h) | UHMM_MIGRATE_PFN_WRITE);
		return;
	}
	/* Part of it moved: those pages are taken one by one, the rest by take_page. */
	uhmm__frame_split(as, h);
	for (uint64_t q = 0; q < ok; q++)
		a->src[i + q] = uhmm_migrate_pfn(h + q) | UHMM_MIGRATE_PFN_MIGRATE |
				UHMM_MIGRATE_PFN_WRITE;
	uint64_t rest[HUGE_PAGES];
	for (uint64_t q = ok; q < HUGE_PAGES; q++)
		rest[q - ok] = h + q;
	uhmm__frame_put_many(as, rest, HUGE_PAGES - ok);
}

/*
 * Device pages i..i+511 at addr, all of origin o: one unsplit huge page of
 * the selected kind whose pages sit in order?  Returns its head, or 0.
 */
static uint64_t huge_dev_head(struct uhmm__as *as, uint64_t addr)
{
	uhmm__pt_lock(as);
	struct pmeta *pm = uhmm__pmeta(as, addr, false);
	uint64_t h = pm ? pm->frame : 0;
	bool ok = h && !(h & (HUGE_PAGES - 1)) && uhmm__frame_is_huge(as, h);
	for (uint64_t k = 1; ok && k < HUGE_PAGES; k++) {
		struct pmeta *q = uhmm__pmeta(as, addr + (k << PG_SHIFT), false);
		ok = q && q->frame == h + k && q->state == pm->state;
	}
	uhmm__pt_unlock(as);
	return ok ? h : 0;
}

/*
 * UHMM_MIGRATE_SELECT_COMPOUND: each 2 MiB block of the range that is a
 * THP, a hole with no page at all, or an unsplit huge device page becomes
 * one compound entry (m->comp marks its pages; the tails' src stay 0).
 */
static void collect_compound(struct uhmm__as *as, struct uhmm_migrate *a, struct mig *m,
			     const uint8_t *origin, const uint64_t *cats)
{
	uint64_t b = (a->start + HUGE_SIZE_BYTES - 1) & ~(HUGE_SIZE_BYTES - 1);
	for (; b >= a->start && b + HUGE_SIZE_BYTES <= a->end; b += HUGE_SIZE_BYTES) {
		uint64_t i = (b - a->start) >> PG_SHIFT, k;
		uint8_t o = origin[i];
		bool thp = true, hole = true;
		for (k = 0; k < HUGE_PAGES; k++) {
			uint64_t c = cats ? cats[i + k] & ~CAT_VMA_START : 0;
			if (origin[i + k] != o || a->src[i + k] ||
			    (k && cats && (cats[i + k] & CAT_VMA_START)))
				break;
			thp = thp && (c & PAGE_IS_PRESENT) && (c & PAGE_IS_HUGE) &&
			      !(c & (PAGE_IS_PFNZERO | PAGE_IS_SWAPPED));
			hole = hole && !(c & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED));
		}
		if (k < HUGE_PAGES)
			continue;
		if (o == OR_SYSTEM && thp && cats) {
			take_huge_sys(as, a, m, i, b);
		} else if (o == OR_HOLE && hole && cats) {
			mark_compound(a, m, i, 0);
		} else if (o == OR_PRIVATE || o == OR_COHERENT) {
			uint64_t h = huge_dev_head(as, b);
			if (!h)
				continue;
			if (o == OR_COHERENT) {
				/* its data is in the CPU view: back into its own frames, one move */
				uint64_t moved = 0;
				if (uhmm__uffd_move(as, uhmm__frame_addr(as, h), b, HUGE_SIZE_BYTES,
						    false, &moved))
					continue;  /* what moved, take_page finds gone (ENOENT) */
				for (k = 0; k < HUGE_PAGES; k++)
					uhmm__frame_set_populated(as, h + k, true);
			}
			mark_compound(a, m, i, uhmm_migrate_pfn(h) | UHMM_MIGRATE_PFN_WRITE);
		}
	}
}

int uhmm_migrate_vma_setup(struct uhmm_migrate *a)
{
	int rc = check_args(a);
	if (rc)
		return rc;
	int err = 0;
	struct uhmm__as *as = uhmm__as_get(&err);
	if (!as)
		return err;
	if (!(as->ufeat & UHMM_FEAT_MOVE)) {
		uhmm__log("migration needs UFFDIO_MOVE (Linux 6.8 or later); this kernel lacks it");
		return -EOPNOTSUPP;
	}
	a->npages = (a->end - a->start) >> PG_SHIFT;
	a->cpages = 0;
	a->uhmm__priv = NULL;
	memset(a->src, 0, a->npages * sizeof(*a->src));
	memset(a->dst, 0, a->npages * sizeof(*a->dst));
	/*
	 * The range may span VMAs (registration splits them), but no hole.
	 * Device pages are found by uhmm's own metadata: a selection of device
	 * pages only (migrate_to_ram) needs no VMA lookup at all.
	 */
	bool sys = a->flags & UHMM_MIGRATE_SELECT_SYSTEM;
	for (uint64_t at = a->start; sys && at < a->end;) {
		struct vma v;
		rc = uhmm__vma_find(as, at, &v);
		if (rc || v.start > at)
			return at == a->start ? -EFAULT : -EINVAL;
		if (v.hugetlb || !v.read)
			return -EINVAL;
		at = v.end;
	}
	uint64_t n = a->npages;
	bool comp = (a->flags & UHMM_MIGRATE_SELECT_COMPOUND) && n >= HUGE_PAGES;
	struct mig *m = uhmm__zalloc(sizeof(*m));
	uint8_t *origin = uhmm__zalloc(n);
	uint64_t *cats = uhmm__zalloc(n * sizeof(*cats));
	uint8_t *cmark = comp ? uhmm__zalloc(n) : NULL;
	rc = m && origin && cats && (cmark || !comp) ? 0 : -ENOMEM;
	bool fork_locked = rc == 0;
	if (rc == 0) {
		m->as = as;
		m->origin = origin;
		m->comp = cmark;
		uhmm__fork_rdlock(as);
	}
	if (!sys && rc == 0) {
		struct vma none = { .start = a->start, .end = a->end };
		collect(as, a, &none, 0, n, origin, m);
	}
	for (uint64_t at = a->start; sys && at < a->end && rc == 0;) {
		struct vma v;
		rc = uhmm__vma_find(as, at, &v);
		if (rc || v.start > at) {
			rc = -EINVAL;  /* unmapped meanwhile */
			break;
		}
		uint64_t ce = v.end < a->end ? v.end : a->end;
		uint64_t i0 = (at - a->start) >> PG_SHIFT, cn = (ce - at) >> PG_SHIFT;
		bool scan = !v.shared && !v.file;
		if (scan) {
			/* Exclusive pages are taken back from their holder first. */
			uhmm__bring_back_exclusive(as, at, ce);
			rc = uhmm__ensure_registered(as, &v, at, ce, true);
		}
		if (rc == 0)
			collect(as, a, &v, i0, cn, origin, m);
		if (rc == 0 && scan) {
			rc = uhmm__page_scan(as, at, ce, cats + i0, cn, false);
			if (rc == 0)
				classify(as, a, i0, cn, origin, cats);
			cats[i0] |= CAT_VMA_START;  /* one move cannot cross VMAs */
		}
		at = ce;
	}
	if (rc) {
		for (uint64_t i = 0; origin && i < n; i++)
			if (origin[i] != OR_NONE)
				uhmm__page_release(as, a->start + (i << PG_SHIFT));
		if (fork_locked)
			uhmm__fork_unlock(as);
		uhmm__free(m, sizeof(*m));
		uhmm__free(origin, n);
		uhmm__free(cats, n * sizeof(*cats));
		uhmm__free(cmark, n);
		return rc;
	}
	uhmm__invalidate(as, a->start, a->end, UHMM_NOTIFY_MIGRATE, a->pgmap_owner);
	zap_zero_holes(as, a, origin, cats);
	if (comp)
		collect_compound(as, a, m, origin, sys ? cats : NULL);
#define IN_COMP(i) (cmark && cmark[i])
	for (uint64_t i = 0; i < n;) {
		uint64_t j = i + 1;
		if (origin[i] == OR_SYSTEM && !a->src[i] && !IN_COMP(i)) {
			while (j < n && j - i < MOVE_RUN_MAX && origin[j] == OR_SYSTEM && !a->src[j] &&
			       !IN_COMP(j) && !(cats[j] & CAT_VMA_START))
				j++;
			take_run(as, a, origin, i, j);
		} else if (origin[i] != OR_NONE && !a->src[i] && !IN_COMP(i)) {
			take_page(as, a, origin, i);  /* zap_zero_holes may have taken it */
		}
		for (; i < j; i++)
			a->cpages += (a->src[i] & UHMM_MIGRATE_PFN_MIGRATE) != 0 ||
				     (IN_COMP(i) && cmark[i] == COMP_TAIL);
	}
#undef IN_COMP
	uhmm__free(cats, n * sizeof(*cats));
	a->uhmm__priv = m;
	return 0;
}
