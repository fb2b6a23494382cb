/* SPDX-License-Identifier: MIT */
/*
 * revoke.c - an exclusive page goes back to the CPU: the holder is told
 * (EXCLUSIVE, owner NULL) and drops its atomic mapping, then the page moves
 * back.  Used by the CPU fault and by the operations that need a range's
 * pages in the CPU view.
 */
#include "internal.h"
#include "compat.h"

/*
 * Give the page at addr back to the CPU: notify (EXCLUSIVE, owner NULL) so
 * the holder drops its atomic mapping, then move the page back and wake the
 * CPU.  0 when the page is (now) in the CPU view, -EAGAIN if it changed
 * state meanwhile (caller looks again).
 */
int uhmm__exclusive_revoke(struct uhmm__as *as, uint64_t addr, bool cpu_fault)
{
	uint64_t t0 = uhmm__now_ns();
	uhmm__pt_lock(as);
	struct pmeta *pm = uhmm__pmeta(as, addr, false);
	if (!pm || pm->state != PS_EXCLUSIVE) {
		int rc = pm && pm->locked ? -EAGAIN : 0;  /* read under the lock */
		uhmm__pt_unlock(as);
		return rc;
	}
	if (pm->locked) {
		uhmm__pt_unlock(as);
		return -EAGAIN;
	}
	pm->locked = LOCK_DATA;
	TR('V', addr, 0, 4096, 0);
	uint32_t fr = pm->frame;
	uhmm__pt_unlock(as);

	uhmm__invalidate(as, addr, addr + PG_SIZE, UHMM_NOTIFY_EXCLUSIVE, NULL);
	int rc = uhmm__move_into_cpu(as, addr, fr, false);
	bool ok = rc == 0 || rc == -ENOENT;
	if (ok) {
		/* Counted before the faulting thread is woken, so it sees them. */
		STAT_ADD(exclusive_revokes, 1);
		if (cpu_fault) {
			STAT_ADD(cpu_faults_exclusive, 1);
			STAT_ADD(cpu_faults, 1);
			uhmm__event(UHMM_EV_CPU_FAULT, 2, addr, PG_SIZE, t0);
		}
		uhmm__event(UHMM_EV_EXCLUSIVE_REVOKE, 0, addr, PG_SIZE, t0);
	}
	uhmm__pt_lock(as);
	pm = uhmm__pmeta(as, addr, false);
	if (ok) {
		pm->state = PS_SYSTEM;
		pm->frame = 0;
	}
	uhmm__page_unlock(as, addr, pm);
	uhmm__pt_unlock(as);
	uhmm__uffd_wake(as, addr, PG_SIZE);
	if (ok) {
		uhmm__frame_put(as, fr);
		return 0;
	}
	uhmm__log("exclusive page 0x%llx could not be given back: %s",
		  (unsigned long long)addr, strerror(-rc));
	return rc;
}

struct revoke_sel {
	const void *owner;
	bool any;
};

static bool held_by(struct uhmm__as *as, const struct pmeta *pm, const void *arg)
{
	const struct revoke_sel *sel = arg;
	return pm->state == PS_EXCLUSIVE &&
	       (sel->any || frame_xowner(&as->frames[pm->frame]) == sel->owner);
}

static bool held_unlocked(struct uhmm__as *as, const struct pmeta *pm, const void *arg)
{
	return !pm->locked && held_by(as, pm, arg);
}

static int revoke_hit(struct uhmm__as *as, uint64_t addr, struct pmeta *pm, void *arg)
{
	(void)addr;
	return held_by(as, pm, arg);
}

/* Revoke every exclusive page of [start, end) held by owner (any if any). */
void uhmm__revoke_range(struct uhmm__as *as, uint64_t start, uint64_t end, const void *owner,
			bool any)
{
	struct revoke_sel sel = { owner, any };
	for (uint64_t a = start; a < end; a += PG_SIZE) {
		uhmm__pt_lock(as);
		int hit = uhmm__walk(as, a, end, 0, revoke_hit, &sel, &a);
		uhmm__pt_unlock(as);
		if (!hit)
			return;
		while (uhmm__exclusive_revoke(as, a, false) == -EAGAIN)
			;
	}
}

/* Revoke, anywhere in the process, each unlocked exclusive page of owner. */
void uhmm__revoke_all(struct uhmm__as *as, const void *owner)
{
	struct revoke_sel sel = { owner, false };
	for (;;) {
		uhmm__pt_lock(as);
		uint64_t hit = uhmm__page_find_any(as, held_unlocked, &sel);
		uhmm__pt_unlock(as);
		if (!hit)
			return;
		uhmm__exclusive_revoke(as, hit, false);
	}
}

void uhmm__bring_back_exclusive(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uhmm__revoke_range(as, start, end, NULL, true);
}
