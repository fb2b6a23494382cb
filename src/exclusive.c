/* SPDX-License-Identifier: MIT */
/*
 * exclusive.c - device-exclusive access (make_device_exclusive).  The page
 * itself moves out of the CPU view into a system frame held for the device
 * (UFFDIO_MOVE, no copy); device atomics work on that frame.  A CPU access
 * faults: every notifier hears EXCLUSIVE (owner NULL) and drops its atomic
 * mapping, then the same page moves back and the CPU goes on with the data
 * the device left.  Taking exclusivity notifies with owner = the device, so
 * the device can ignore its own notification (no livelock).
 */
#include "internal.h"
#include "compat.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Why page addr of v cannot be made exclusive, or 0. */
static int exclusive_refusal(const struct vma *v)
{
	if (v->shared || v->file)
		return -EOPNOTSUPP;
	if (!v->read)
		return -EFAULT;
	if (!v->write)
		return -EPERM;
	if (v->hugetlb)
		return -EOPNOTSUPP;
	return 0;
}

/* Lock page addr if it is a plain SYSTEM page (or already ours); see below. */
enum { TAKE_LOCKED, TAKE_ALREADY, TAKE_OTHER, TAKE_BRING_BACK };
static int lock_for_exclusive(struct uhmm__as *as, uint64_t addr, const void *owner,
			      uint64_t *frame)
{
	uhmm__pt_lock(as);
	uhmm__page_lock_wait(as, addr);
	bool gone = uhmm__torn_down(as, addr) || !uhmm__reg_missing(as, addr);  /* see there */
	struct pmeta *pm = gone ? NULL : uhmm__pmeta(as, addr, true);
	int r = TAKE_OTHER;
	if (pm && pm->state == PS_SYSTEM) {
		TR('X', addr, 0, 4096, 0);
		pm->locked = LOCK_DATA;
		r = TAKE_LOCKED;
	} else if (pm && pm->state == PS_EXCLUSIVE &&
		   frame_xowner(&as->frames[pm->frame]) == owner) {
		*frame = pm->frame;
		r = TAKE_ALREADY;
	} else if (pm) {
		r = TAKE_BRING_BACK;  /* on a device, or exclusive to another one */
	}
	uhmm__pt_unlock(as);
	return r;
}

static void finish_page(struct uhmm__as *as, uint64_t addr, uint64_t fr, bool taken)
{
	uhmm__pt_lock(as);
	struct pmeta *pm = uhmm__pmeta(as, addr, false);
	if (taken) {
		pm->state = PS_EXCLUSIVE;
		pm->frame = (uint32_t)fr;
	}
	uhmm__page_unlock(as, addr, pm);
	uhmm__pt_unlock(as);
}

/*
 * Make the plain system pages of [s, e) present and writable.  Pages that are
 * on a device are left to the loop below, which brings them back through
 * uhmm__fault_in() and gets an error if that fails: populating them here
 * would fault through userfaultfd, and a failure there is a SIGBUS for this
 * (the device's) thread.
 */
static void populate_system_runs(struct uhmm__as *as, uint64_t s, uint64_t e)
{
	uint64_t run = s;
	for (uint64_t a = s; a <= e; a += PG_SIZE) {
		bool sys = false;
		if (a < e) {
			uhmm__pt_lock(as);
			struct pmeta *pm = uhmm__pmeta(as, a, false);
			sys = !pm || (pm->state == PS_SYSTEM && !pm->locked);
			uhmm__pt_unlock(as);
		}
		if (sys)
			continue;
		if (a > run)
			syscall(SYS_madvise, run, a - run, MADV_POPULATE_WRITE);
		run = a + PG_SIZE;
	}
}

/* Make the pages of one VMA chunk exclusive; returns pages taken. */
static long exclusive_chunk(struct uhmm__as *as, uint64_t s, uint64_t e, const void *owner,
			    uint64_t *pages, int *errs)
{
	uint64_t n = (e - s) >> PG_SHIFT;
	uint8_t *locked = uhmm__zalloc(n);
	if (!locked)
		return -ENOMEM;
	populate_system_runs(as, s, e);
	long taken = 0;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t fr = 0;
		int r;
		/* Pages on a device or held by another device come back first. */
		for (int t = 0; t < 100; t++) {
			r = lock_for_exclusive(as, s + (i << PG_SHIFT), owner, &fr);
			if (r != TAKE_BRING_BACK)
				break;
			uhmm__fault_in(as, s + (i << PG_SHIFT), true);
		}
		if (r == TAKE_ALREADY) {
			pages[i] = fr;
			taken++;
		} else if (r == TAKE_LOCKED) {
			locked[i] = 1;
		} else if (errs) {
			errs[i] = -EBUSY;
		}
	}
	uhmm__invalidate(as, s, e, UHMM_NOTIFY_EXCLUSIVE, owner);
	uint64_t t0 = uhmm__now_ns();
	for (uint64_t i = 0; i < n; i++) {
		if (!locked[i])
			continue;
		uint64_t addr = s + (i << PG_SHIFT), fr = 0;
		int rc = uhmm__frame_alloc(as, as->syspool, &fr);
		if (rc == 0) {
			rc = uhmm__move_out_of_cpu(as, addr, fr, false);
			/*
			 * Nothing to move: the page was never populated, or lost
			 * its data (a racing migration of a hole, MADV_DONTNEED)
			 * after populate_system_runs().  It holds zeros, and so
			 * does the empty frame: the grant stands.
			 */
			if (rc == -ENOENT)
				rc = 0;
			if (rc) {
				uhmm__frame_put(as, fr);
				fr = 0;
			}
		}
		if (rc == 0) {
			uhmm__frame_set_owner(as, fr, addr, owner);
			pages[i] = fr;
			taken++;
			STAT_ADD(exclusive_grants, 1);
		} else if (errs) {
			errs[i] = rc == -ENOENT ? -EFAULT : -EBUSY;
		}
		finish_page(as, addr, fr, rc == 0);
	}
	uhmm__event(UHMM_EV_EXCLUSIVE_GRANT, 0, s, e - s, t0);
	uhmm__free(locked, n);
	return taken;
}

long uhmm_make_device_exclusive(uint64_t start, uint64_t npages, const void *owner,
				uint64_t *pages, int *errs)
{
	if ((start & ~PG_MASK) || npages == 0 || !pages ||
	    npages > (UINT64_MAX - start) >> PG_SHIFT)
		return -EINVAL;
	int err = 0;
	struct uhmm__as *as = uhmm__as_get(&err);
	if (!as)
		return err;
	if (!(as->ufeat & UHMM_FEAT_MOVE)) {
		uhmm__log("device-exclusive access needs UFFDIO_MOVE (Linux 6.8 or later)");
		return -EOPNOTSUPP;
	}
	uint64_t end = start + (npages << PG_SHIFT);
	memset(pages, 0, npages * sizeof(*pages));
	if (errs)
		memset(errs, 0, npages * sizeof(*errs));
	long total = 0;
	bool any_vma = false;
	uhmm__fork_rdlock(as);
	for (uint64_t a = start; a < end;) {
		struct vma v;
		uint64_t i = (a - start) >> PG_SHIFT;
		if (uhmm__vma_find(as, a, &v) || v.start > a) {
			if (errs)
				errs[i] = -EFAULT;
			a += PG_SIZE;
			continue;
		}
		any_vma = true;
		uint64_t e = v.end < end ? v.end : end;
		int why = exclusive_refusal(&v);
		if (!why)
			why = uhmm__ensure_registered(as, &v, a, e, true);
		if (why) {
			for (uint64_t p = a; p < e; p += PG_SIZE)
				if (errs)
					errs[(p - start) >> PG_SHIFT] = why;
		} else {
			long t = exclusive_chunk(as, a, e, owner, pages + i, errs ? errs + i : NULL);
			if (t < 0) {
				uhmm__fork_unlock(as);
				return t;
			}
			total += t;
		}
		a = e;
	}
	uhmm__fork_unlock(as);
	return any_vma ? total : -EFAULT;
}

int uhmm_device_exclusive_release(uint64_t start, uint64_t npages, const void *owner)
{
	if ((start & ~PG_MASK) || npages > (UINT64_MAX - start) >> PG_SHIFT)
		return -EINVAL;
	struct uhmm__as *as = uhmm__as_peek();
	if (!as)
		return 0;
	if (!npages)  /* the whole address space: walk the metadata, not the pages */
		uhmm__revoke_all(as, owner);
	else
		uhmm__revoke_range(as, start, start + (npages << PG_SHIFT), owner, false);
	return 0;
}

bool uhmm_device_exclusive_held(uint64_t addr, const void *owner, uint64_t *page)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (!as || (addr & ~PG_MASK))
		return false;
	uhmm__pt_lock(as);
	struct pmeta *pm = uhmm__pmeta(as, addr, false);
	bool held = pm && pm->state == PS_EXCLUSIVE && !pm->locked &&
		    frame_xowner(&as->frames[pm->frame]) == owner;
	if (held && page)
		*page = pm->frame;
	uhmm__pt_unlock(as);
	return held;
}
