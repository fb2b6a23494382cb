/* SPDX-License-Identifier: MIT */
/*
 * migrate.c - the second and third phases of a migration
 * (migrate_vma_pages, migrate_vma_finalize; setup is migrate_setup.c) and
 * eviction by device page (migrate_device_*).  pages() installs dst:
 * device-private pages stay out of the CPU view, system and coherent pages
 * are moved into it.  finalize puts back what did not migrate, frees the
 * frames no longer used and unlocks.
 */
#include "internal.h"
#include "compat.h"
#include "migrate.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The destination frame of page i if usable, else 0. */
static uint64_t dst_frame(struct uhmm__as *as, const struct uhmm_migrate *a, uint64_t i)
{
	uint64_t d = uhmm_migrate_pfn_to_page(a->dst[i]);
	struct frame *f = uhmm__frame(as, d);
	struct uhmm_devmem *p = f ? frame_pool(f) : NULL;
	if (!p || frame_ref(f) == 0)
		return 0;
	if (p != as->syspool && p->type == 0)
		return 0;
	return d;
}

static bool dst_private(struct uhmm__as *as, uint64_t d)
{
	struct frame *f = &as->frames[d];
	struct uhmm_devmem *p = frame_pool(f);
	return p != as->syspool && p->type == UHMM_DEVMEM_PRIVATE;
}

/* Install dst frame d for the page at addr (page locked by us); wake: its faulting thread. */
static int install(struct uhmm__as *as, uint64_t addr, uint64_t d, bool wake)
{
	struct frame *f = &as->frames[d];
	struct uhmm_devmem *p = frame_pool(f);
	int type = p == as->syspool ? 0 : p->type;
	int rc = 0;
	if (type == UHMM_DEVMEM_COHERENT) {
		rc = uhmm__move_into_cpu_writable(as, addr, d);
	} else if (type == 0) {
		/* a forwarded copy (fwd.c): its source's page goes to the CPU itself */
		char *page = uhmm__fwd_take_page(as, d);
		uint64_t from = page ? 0 : uhmm__fwd_take(as, d);
		if (page) {
			rc = uhmm__uffd_copy_wake(as, addr, page, PG_SIZE, wake);
			if (rc == -EEXIST && wake)
				uhmm__uffd_wake(as, addr, PG_SIZE);
			if (rc) {  /* not mapped: d holds the data, as copied */
				memcpy((void *)(uintptr_t)uhmm__frame_addr(as, d), page, PG_SIZE);
				uhmm__frame_set_populated(as, d, true);
			}
			uhmm__staging_put(&as->page_bounce, page);
		} else {
			rc = uhmm__move_into_cpu(as, addr, from ? from : d, wake);
			if (rc && from)
				uhmm__fwd_copy(as, d, from);  /* not mapped: d holds the data */
		}
	}
	if (rc)
		return rc;
	uhmm__pt_lock(as);
	struct pmeta *pm = uhmm__pmeta(as, addr, false);
	if (type == 0) {
		pm->state = PS_SYSTEM;
		pm->frame = 0;
	} else {
		pm->state = type == UHMM_DEVMEM_PRIVATE ? PS_PRIVATE : PS_COHERENT;
		pm->frame = (uint32_t)d;
		uhmm__frame_set_owner(as, d, addr, NULL);
	}
	uhmm__pt_unlock(as);
	if (type == 0)
		uhmm__frame_put(as, d);   /* its page went to the CPU view */
	return 0;
}

/*
 * pages(), first: every compound entry is written out page by page.  With a
 * huge destination (dst head COMPOUND, an unsplit huge page) tail k gets
 * its page k; otherwise the driver fell back to 4 KiB pages (its dst[i + k]
 * copied from source page k) and the source splits.  From here on each
 * entry names its own page, and the per-page paths do the rest: a huge
 * page is 512 pages in order, so runs of them still move in one call.
 */
static void expand_compound(struct uhmm__as *as, struct uhmm_migrate *a, struct mig *m)
{
	for (uint64_t i = 0; m->comp && i + HUGE_PAGES <= a->npages; i++) {
		if (m->comp[i] != COMP_HEAD)
			continue;
		uint64_t s = uhmm_migrate_pfn_to_page(a->src[i]);
		uint64_t d = uhmm_migrate_pfn_to_page(a->dst[i]);
		bool mig = a->src[i] & UHMM_MIGRATE_PFN_MIGRATE;
		bool huge = (a->dst[i] & UHMM_MIGRATE_PFN_COMPOUND) && uhmm__frame_is_huge(as, d);
		if (!huge)
			a->dst[i] &= ~UHMM_MIGRATE_PFN_COMPOUND;
		for (uint64_t k = 1; k < HUGE_PAGES; k++) {
			if (!a->src[i + k] && mig)
				a->src[i + k] = s ? uhmm_migrate_pfn(s + k) | UHMM_MIGRATE_PFN_MIGRATE |
						    UHMM_MIGRATE_PFN_WRITE : UHMM_MIGRATE_PFN_MIGRATE;
			if (huge && !a->dst[i + k])
				a->dst[i + k] = uhmm_migrate_pfn(d + k);
		}
		if (!huge && s)
			uhmm__frame_split(as, s);
		memset(&m->comp[i], COMP_NONE, HUGE_PAGES);
		i += HUGE_PAGES - 1;
	}
}

void uhmm_migrate_vma_pages(struct uhmm_migrate *a)
{
	struct mig *m = a ? a->uhmm__priv : NULL;
	if (!m)
		return;
	struct uhmm__as *as = m->as;
	expand_compound(as, a, m);
	uint64_t to_dev = 0, to_sys = 0;
	for (uint64_t i = 0; i < a->npages; i++) {
		if (!(a->src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		uint64_t addr = a->start + (i << PG_SHIFT);
		uint64_t d = dst_frame(as, a, i);
		if (!d) {
			a->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
			continue;
		}
		if (m->origin[i] == OR_HOLE) {
			uhmm__pt_lock(as);
			struct pmeta *pm = uhmm__pmeta(as, addr, false);
			bool lost = pm && pm->locked == LOCK_LOST;
			if (pm && !lost)
				pm->locked = LOCK_DATA;  /* from here on the CPU waits */
			uhmm__pt_unlock(as);
			if (lost) {
				a->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
				continue;
			}
		}
		/*
		 * A device-private page is installed now (nothing changes in the
		 * CPU view); pages that become CPU visible are installed by
		 * finalize, after the old page is released, so that whoever
		 * sees the new page also sees the counters settled.
		 */
		if (dst_private(as, d) && install(as, addr, d, false)) {
			a->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
			continue;
		}
		a->dst[i] |= UHMM_MIGRATE_PFN_MIGRATE;  /* consumed */
		if (frame_pool(&as->frames[d]) == as->syspool)
			to_sys++;
		else
			to_dev++;
	}
	STAT_ADD(pages_to_device, to_dev);
	STAT_ADD(bytes_to_device, to_dev << PG_SHIFT);
	STAT_ADD(pages_to_system, to_sys);
	STAT_ADD(bytes_to_system, to_sys << PG_SHIFT);
}

/* A page that did not migrate gets its data back where it was. */
static void restore_page(struct uhmm__as *as, uint64_t addr, uint64_t s, int origin)
{
	switch (origin) {
	case OR_SYSTEM:
		if (uhmm__move_into_cpu(as, addr, s, false))
			uhmm__log("migration: could not restore page 0x%llx",
				  (unsigned long long)addr);
		uhmm__frame_put(as, s);
		break;
	case OR_COHERENT:
		uhmm__move_into_cpu(as, addr, s, false);
		break;
	default:  /* private stays on its device; holes stay holes */
		break;
	}
}

/*
 * A forwarded copy's source s (fwd.c), its reference dropped: true when
 * that freed it but holds it until its page has moved (uhmm__frame_unhold
 * after the install); false when s is still referenced elsewhere, and so
 * keeps its page: the copy is done now, and the install is a plain one.
 */
static bool hold_fwd_source(struct uhmm__as *as, uint64_t s)
{
	if (uhmm__frame_put_hold(as, s))
		return true;
	uhmm__fwd_resolve(as, s);
	return false;
}

/*
 * The end of one page of a migration, the same for migrate_vma_finalize()
 * and migrate_device_finalize() (the kernel shares __migrate_device_finalize
 * the same way): a page that migrated has its old page s released (put_src:
 * unless the caller did it in a batch) and its new page d installed (a
 * device-private d stays out of the CPU view); one that did not gets its
 * data back where it was (origin) and the driver's unused page released.
 * The page stays locked: the caller unlocks.  0, or the install's error.
 */
static int finish_page(struct uhmm__as *as, uint64_t addr, uint64_t s, uint64_t d, bool migrated,
		       int origin, bool put_src, bool wake)
{
	if (migrated && !(s && uhmm__fwd_pair(as, d, s))) {
		if (s && put_src)
			uhmm__frame_put(as, s);  /* staging frame or old device page */
		return dst_private(as, d) ? 0 : install(as, addr, d, wake);
	}
	if (migrated) {
		/*
		 * Forwarded (fwd.c): s is freed first (the counters are settled
		 * when the page is mapped), its page moves to the CPU, then s
		 * goes back to the free list.
		 */
		bool held = put_src && hold_fwd_source(as, s);
		/*
		 * The move wakes the thread itself (one ioctl, not two); s
		 * may still be held for a moment after (uhmm_devmem_destroy
		 * waits for that).  A failed install wakes it all the same.
		 */
		int rc = install(as, addr, d, wake);
		if (held)
			uhmm__frame_unhold(as, s);
		if (rc && wake)
			uhmm__uffd_wake(as, addr, PG_SIZE);
		return rc;
	}
	restore_page(as, addr, s, origin);
	struct frame *f = uhmm__frame(as, d);
	if (f && frame_pool(f) && frame_ref(f))
		uhmm__frame_put(as, d);  /* the driver's unused page */
	return 0;
}

/* Page i migrated to a frame the CPU maps (system or coherent): that frame, else 0. */
static uint64_t sys_dst(struct uhmm__as *as, const struct uhmm_migrate *a, const struct mig *m,
			uint64_t i)
{
	if (m->origin[i] == OR_NONE || !(a->src[i] & UHMM_MIGRATE_PFN_MIGRATE) ||
	    !(a->dst[i] & UHMM_MIGRATE_PFN_MIGRATE))
		return 0;
	uint64_t d = uhmm_migrate_pfn_to_page(a->dst[i]);
	return dst_private(as, d) ? 0 : d;
}

/* INST_FWD: a forwarded copy's source, held by the early batch until its page has moved */
enum { INST_NONE, INST_DONE, INST_SRC_FREED, INST_FWD };

/*
 * finalize, first part: pages migrated to consecutive frames of one pool
 * that the CPU maps (system or coherent) go into the CPU view a run per
 * UFFDIO_MOVE (their old frames are released first, as install() does page
 * by page).  inst[i] says what was done for page i.
 */
static void install_sys_runs(struct uhmm__as *as, struct uhmm_migrate *a, struct mig *m,
			     uint8_t *inst)
{
	for (uint64_t i = 0; i < a->npages;) {
		uint64_t d = sys_dst(as, a, m, i), j = i + 1;
		/*
		 * runs stop at 2 MiB boundaries (a huge page then moves with one
		 * PMD) and at forwarded copies (their data is elsewhere: fwd.c)
		 */
		while (d && j < a->npages && j - i < MOVE_RUN_MAX &&
		       ((a->start + (j << PG_SHIFT)) & (HUGE_SIZE_BYTES - 1)) &&
		       sys_dst(as, a, m, j) == d + (j - i) &&
		       frame_pool(&as->frames[d + (j - i)]) == frame_pool(&as->frames[d]) &&
		       !frame_fwd_linked(&as->frames[d]) &&
		       !frame_fwd_linked(&as->frames[d + (j - i)]))
			j++;
		if (!d || j - i == 1) {
			i = j;
			continue;
		}
		uint64_t srcs[MOVE_RUN_MAX], ns = 0;
		for (uint64_t k = i; k < j; k++) {
			uint64_t s = uhmm_migrate_pfn_to_page(a->src[k]);
			if (s)
				srcs[ns++] = s;
			inst[k] = INST_SRC_FREED;
		}
		uhmm__frame_put_many(as, srcs, ns);
		uint64_t moved = 0;
		int rc = uhmm__uffd_move(as, a->start + (i << PG_SHIFT), uhmm__frame_addr(as, d),
					 (j - i) << PG_SHIFT, false, &moved);
		uint64_t ok = rc ? moved >> PG_SHIFT : j - i;
		bool sys = frame_pool(&as->frames[d]) == as->syspool;
		uhmm__pt_lock(as);
		for (uint64_t k = i; k < i + ok; k++) {
			struct pmeta *pm = uhmm__pmeta(as, a->start + (k << PG_SHIFT), false);
			pm->state = sys ? PS_SYSTEM : PS_COHERENT;
			pm->frame = sys ? 0 : (uint32_t)(d + (k - i));
		}
		uhmm__pt_unlock(as);
		/* the run's pages went to the CPU view: its frames are empty */
		if (sys) {  /* and no longer needed */
			uint64_t dsts[MOVE_RUN_MAX];
			for (uint64_t k = 0; k < ok; k++) {
				uhmm__frame_set_populated(as, d + k, false);
				dsts[k] = d + k;
			}
			uhmm__frame_put_many(as, dsts, ok);
		} else {
			uhmm__frame_set_run(as, d, ok, a->start + (i << PG_SHIFT), false);
		}
		for (uint64_t k = i; k < i + ok; k++)
			inst[k] = INST_DONE;
		i = j;
	}
}

void uhmm_migrate_vma_finalize(struct uhmm_migrate *a)
{
	struct mig *m = a ? a->uhmm__priv : NULL;
	if (!m)
		return;
	struct uhmm__as *as = m->as;
	expand_compound(as, a, m);  /* pages() did it, unless the driver skipped pages() */
	uint64_t t0 = uhmm__now_ns();
	uint64_t n_dev = 0, n_sys = 0;
	uint8_t *inst = uhmm__zalloc(a->npages);
	/* staging frames and old device pages, released together at the end */
	uint64_t *put = uhmm__zalloc(a->npages * sizeof(*put)), nput = 0;
	if (inst)
		install_sys_runs(as, a, m, inst);
	/*
	 * The sources of migrated pages go first, in one batch (one zap per
	 * run): before any install wakes a thread, so that the pool counters
	 * are settled when the CPU's access returns.
	 */
	for (uint64_t i = 0; put && i < a->npages; i++) {
		uint64_t s = uhmm_migrate_pfn_to_page(a->src[i]);
		if (m->origin[i] == OR_NONE || !s || !(a->src[i] & UHMM_MIGRATE_PFN_MIGRATE) ||
		    !(a->dst[i] & UHMM_MIGRATE_PFN_MIGRATE) || (inst && inst[i] != INST_NONE))
			continue;
		if (inst && uhmm__fwd_pair(as, uhmm_migrate_pfn_to_page(a->dst[i]), s)) {
			/* freed now, back on the free list once its page has moved */
			inst[i] = hold_fwd_source(as, s) ? INST_FWD : INST_SRC_FREED;
		} else {
			put[nput++] = s;
		}
	}
	if (put)
		uhmm__frame_put_many(as, put, nput);
	for (uint64_t i = 0; i < a->npages; i++) {
		if (m->origin[i] == OR_NONE)
			continue;
		uint64_t addr = a->start + (i << PG_SHIFT);
		uint64_t s = uhmm_migrate_pfn_to_page(a->src[i]);
		bool migrated = (a->src[i] & UHMM_MIGRATE_PFN_MIGRATE) &&
				(a->dst[i] & UHMM_MIGRATE_PFN_MIGRATE);
		uint64_t d = migrated ? uhmm_migrate_pfn_to_page(a->dst[i]) : dst_frame(as, a, i);
		uint8_t done = inst ? inst[i] : INST_NONE;
		/* The fault page's thread may go on at once (see LOCK_FAULT). */
		int irc = migrated && done == INST_DONE ? 0 :
			  finish_page(as, addr, s, d, migrated, m->origin[i],
				      done == INST_NONE && !put, addr == m->fault_addr);
		if (done == INST_FWD)
			uhmm__frame_unhold(as, s);
		if (irc) {
			TR_DUMP(addr);
			uhmm__log("migration: page 0x%llx could not be mapped back: %s (origin %d)",
				  (unsigned long long)addr, strerror(-irc), m->origin[i]);
		}
		if (migrated && frame_pool(&as->frames[d]) == as->syspool)
			n_sys++;
		else if (migrated)
			n_dev++;
		a->dst[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
	}
	/* Every page unlocked in one pt_lock hold (the fault page stays locked). */
	uhmm__pt_lock(as);
	for (uint64_t i = 0; i < a->npages; i++) {
		if (m->origin[i] == OR_NONE)
			continue;
		uhmm__page_release_locked(as, a->start + (i << PG_SHIFT));
	}
	uhmm__pt_unlock(as);
	/*
	 * Wake after unlocking: a woken thread sees the page's final state.
	 * The fault page is still locked (its fault unlocks it), but it is in
	 * the CPU view already, and a range fault reports it as such: its move
	 * woke its thread (one ioctl less on the fault path).
	 */
	if (!(m->fault_addr == a->start && a->end - a->start == PG_SIZE))
		uhmm__uffd_wake(as, a->start, a->end - a->start);
	uhmm__free(put, a->npages * sizeof(*put));
	uhmm__fork_unlock(as);
	if (n_dev)
		uhmm__event(UHMM_EV_MIGRATE_TO_DEV, (uint32_t)n_dev, a->start, a->end - a->start, t0);
	if (n_sys)
		uhmm__event(UHMM_EV_MIGRATE_TO_SYS, (uint32_t)n_sys, a->start, a->end - a->start, t0);
	uhmm__free(inst, a->npages);
	uhmm__free(m->origin, a->npages);
	uhmm__free(m->comp, a->npages);
	uhmm__free(m, sizeof(*m));
	a->uhmm__priv = NULL;
}

/* ---- eviction by device page ------------------------------------------- */

/*
 * src[0..511], taken for frames fr..fr+511: are they one unsplit huge page
 * at one 2 MiB-aligned address range, all in one state?  (Its pages are
 * locked by us: their metadata cannot change.)
 */
static bool dev_whole_huge(struct uhmm__as *as, const uint64_t *src, uint64_t fr)
{
	if ((fr & (HUGE_PAGES - 1)) || !uhmm__frame_is_huge(as, fr))
		return false;
	uint64_t addr = frame_addr_hint(&as->frames[fr]);
	if (addr & (HUGE_SIZE_BYTES - 1))
		return false;
	for (uint64_t k = 0; k < HUGE_PAGES; k++)
		if (!(src[k] & UHMM_MIGRATE_PFN_MIGRATE) ||
		    uhmm_migrate_pfn_to_page(src[k]) != fr + k ||
		    frame_addr_hint(&as->frames[fr + k]) != addr + (k << PG_SHIFT))
			return false;
	uhmm__pt_lock(as);
	int st = uhmm__pmeta(as, addr, false)->state;
	bool same = true;
	for (uint64_t k = 1; k < HUGE_PAGES && same; k++)
		same = uhmm__pmeta(as, addr + (k << PG_SHIFT), false)->state == st;
	uhmm__pt_unlock(as);
	return same;
}

/*
 * A compound entry at i written out as 512 entries of their own (the
 * driver gave 4 KiB pages, or the page does not migrate): src tails name
 * head + k; a compound dst is split the same way.
 */
static void dev_compound_split(uint64_t *src, uint64_t *dst, uint64_t i)
{
	uint64_t h = uhmm_migrate_pfn_to_page(src[i]);
	uint64_t sfl = src[i] & (UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_WRITE);
	for (uint64_t k = 0; k < HUGE_PAGES; k++)
		src[i + k] = uhmm_migrate_pfn(h + k) | sfl;
	if (!(dst[i] & UHMM_MIGRATE_PFN_COMPOUND))
		return;
	uint64_t d = uhmm_migrate_pfn_to_page(dst[i]);
	uint64_t dfl = dst[i] & UHMM_MIGRATE_PFN_MIGRATE;
	for (uint64_t k = 0; k < HUGE_PAGES; k++)
		dst[i + k] = d ? uhmm_migrate_pfn(d + k) | dfl : 0;
}

/* A usable huge system destination for compound entry i, or 0. */
static uint64_t dev_huge_dst(struct uhmm__as *as, const uint64_t *dst, uint64_t i)
{
	uint64_t d = uhmm_migrate_pfn_to_page(dst[i]);
	if (!(dst[i] & UHMM_MIGRATE_PFN_COMPOUND) || !d || (d & (HUGE_PAGES - 1)))
		return 0;
	for (uint64_t k = 0; k < HUGE_PAGES; k++) {
		struct frame *f = uhmm__frame(as, d + k);
		if (!f || frame_pool(f) != as->syspool || !frame_ref(f))
			return 0;
	}
	return d;
}

/*
 * finalize of a migrated compound entry: the 2 MiB go into the CPU view in
 * one move (a PMD move when the huge page is whole), the old device pages
 * and the emptied system frames are put in one batch each.  Pages the move
 * did not take are installed one by one.
 */
static void dev_install_huge(struct uhmm__as *as, uint64_t h, uint64_t d)
{
	uint64_t addr = frame_addr_hint(&as->frames[h]);  /* ours: pages locked */
	uint64_t frames[HUGE_PAGES], moved = 0;
	for (uint64_t k = 0; k < HUGE_PAGES; k++)
		frames[k] = h + k;
	uhmm__frame_put_many(as, frames, HUGE_PAGES);
	int rc = uhmm__uffd_move(as, addr, uhmm__frame_addr(as, d), HUGE_SIZE_BYTES, false, &moved);
	uint64_t ok = rc ? moved >> PG_SHIFT : HUGE_PAGES;
	uhmm__pt_lock(as);
	for (uint64_t k = 0; k < ok; k++) {
		struct pmeta *pm = uhmm__pmeta(as, addr + (k << PG_SHIFT), false);
		pm->state = PS_SYSTEM;
		pm->frame = 0;
	}
	uhmm__pt_unlock(as);
	for (uint64_t k = 0; k < ok; k++) {
		uhmm__frame_set_populated(as, d + k, false);
		frames[k] = d + k;
	}
	uhmm__frame_put_many(as, frames, ok);
	for (uint64_t k = ok; k < HUGE_PAGES; k++)
		if (install(as, addr + (k << PG_SHIFT), d + k, false))
			uhmm__log("eviction: page 0x%llx could not be mapped back",
				  (unsigned long long)(addr + (k << PG_SHIFT)));
}

int uhmm_migrate_device_range(uint64_t *src_pfns, uint64_t start, uint64_t npages)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (!src_pfns || !npages || !as || start + npages < start ||
	    start + npages > as->arena_frames)
		return -EINVAL;
	uhmm__fork_rdlock(as);
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t fr = start + i;
		struct frame *f = uhmm__frame(as, fr);
		src_pfns[i] = 0;
		/* Unlocked hints, checked against the page's metadata below. */
		struct uhmm_devmem *fpool = f ? frame_pool(f) : NULL;
		uint64_t addr = f ? frame_addr_hint(f) : 0;
		if (!fpool || fpool == as->syspool || !frame_ref(f) || !addr)
			continue;
		uhmm__pt_lock(as);
		uhmm__page_lock_wait(as, addr);
		struct pmeta *pm = uhmm__pmeta(as, addr, false);
		bool mine = pm && pm->frame == fr &&
			    (pm->state == PS_PRIVATE || pm->state == PS_COHERENT);
		if (mine)
			pm->locked = LOCK_DATA;
		int st = mine ? pm->state : 0;
		uhmm__pt_unlock(as);
		if (!mine)
			continue;
		uhmm__invalidate(as, addr, addr + PG_SIZE, UHMM_NOTIFY_MIGRATE, fpool->owner);
		if (st == PS_COHERENT) {
			int rc = uhmm__move_out_of_cpu(as, addr, fr, true);
			if (rc && rc != -ENOENT) {
				uhmm__page_release(as, addr);
				continue;
			}
		}
		src_pfns[i] = uhmm_migrate_pfn(fr) | UHMM_MIGRATE_PFN_MIGRATE |
			      UHMM_MIGRATE_PFN_WRITE;
	}
	/* A huge device page taken whole: one compound entry, as the kernel's. */
	for (uint64_t i = 0; i + HUGE_PAGES <= npages; i++) {
		if (!dev_whole_huge(as, src_pfns + i, start + i))
			continue;
		src_pfns[i] |= UHMM_MIGRATE_PFN_COMPOUND;
		memset(&src_pfns[i + 1], 0, (HUGE_PAGES - 1) * sizeof(*src_pfns));
		i += HUGE_PAGES - 1;
	}
	return 0;
}

void uhmm_migrate_device_pages(uint64_t *src_pfns, uint64_t *dst_pfns, uint64_t npages)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (!as || !src_pfns || !dst_pfns)
		return;
	uint64_t n = 0;
	for (uint64_t i = 0; i < npages; i++) {
		if (!(src_pfns[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		if ((src_pfns[i] & UHMM_MIGRATE_PFN_COMPOUND) && i + HUGE_PAGES <= npages) {
			if (dev_huge_dst(as, dst_pfns, i)) {  /* one huge system page */
				dst_pfns[i] |= UHMM_MIGRATE_PFN_MIGRATE;
				n += HUGE_PAGES;
				i += HUGE_PAGES - 1;
				continue;
			}
			dev_compound_split(src_pfns, dst_pfns, i);  /* 4 KiB pages */
		}
		uint64_t d = uhmm_migrate_pfn_to_page(dst_pfns[i]);
		struct frame *fd = uhmm__frame(as, d);
		if (!fd || frame_pool(fd) != as->syspool || !frame_ref(fd)) {
			src_pfns[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
			continue;
		}
		dst_pfns[i] |= UHMM_MIGRATE_PFN_MIGRATE;
		n++;
	}
	STAT_ADD(evictions, n);
	STAT_ADD(pages_to_system, n);
	STAT_ADD(bytes_to_system, n << PG_SHIFT);
}

void uhmm_migrate_device_finalize(uint64_t *src_pfns, uint64_t *dst_pfns, uint64_t npages)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (!as || !src_pfns || !dst_pfns)
		return;
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t s = uhmm_migrate_pfn_to_page(src_pfns[i]);
		if (!s)
			continue;
		if ((src_pfns[i] & UHMM_MIGRATE_PFN_COMPOUND) && i + HUGE_PAGES <= npages) {
			uint64_t d = (src_pfns[i] & UHMM_MIGRATE_PFN_MIGRATE) &&
				     (dst_pfns[i] & UHMM_MIGRATE_PFN_MIGRATE) ?
				     dev_huge_dst(as, dst_pfns, i) : 0;
			if (d) {
				uint64_t addr = frame_addr_hint(&as->frames[s]);
				dev_install_huge(as, s, d);
				memset(&dst_pfns[i], 0, HUGE_PAGES * sizeof(*dst_pfns));
				uhmm__pt_lock(as);
				for (uint64_t k = 0; k < HUGE_PAGES; k++) {
					uint64_t a = addr + (k << PG_SHIFT);
					uhmm__page_unlock(as, a, uhmm__pmeta(as, a, false));
				}
				uhmm__pt_unlock(as);
				uhmm__uffd_wake(as, addr, HUGE_SIZE_BYTES);
				i += HUGE_PAGES - 1;
				continue;
			}
			/* not migrated: each page is put back on its own below */
			src_pfns[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
			dev_compound_split(src_pfns, dst_pfns, i);
		}
		uint64_t addr = frame_addr_hint(&as->frames[s]);  /* ours: page locked */
		bool migrated = (src_pfns[i] & UHMM_MIGRATE_PFN_MIGRATE) &&
				(dst_pfns[i] & UHMM_MIGRATE_PFN_MIGRATE);
		uhmm__pt_lock(as);
		struct pmeta *pm = uhmm__pmeta(as, addr, false);
		int origin = pm && pm->state == PS_COHERENT ? OR_COHERENT : OR_PRIVATE;
		uhmm__pt_unlock(as);
		if (finish_page(as, addr, s, uhmm_migrate_pfn_to_page(dst_pfns[i]), migrated, origin,
				true, false))
			uhmm__log("eviction: page 0x%llx could not be mapped back",
				  (unsigned long long)addr);
		dst_pfns[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
		uhmm__page_release(as, addr);
		uhmm__uffd_wake(as, addr, PG_SIZE);
	}
	uhmm__fork_unlock(as);
}
