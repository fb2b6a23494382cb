/* SPDX-License-Identifier: MIT */
/*
 * fault.c - the CPU fault on a page that is not in the CPU view: served
 * by the service thread (uhmm__fault_serve) or by a thread that needs the
 * page back (uhmm__fault_in: range fault, fork, mremap), bring-back of a
 * range, and the end of a fault served by a worker.
 */
#include "internal.h"
#include "compat.h"

#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- CPU faults ---------------------------------------------------------- */

/* A CPU fault on a collected hole: fill it and mark the migration lost. */
static bool hole_fault(struct uhmm__as *as, struct pmeta *pm)
{
	if (pm->locked != LOCK_HOLE)
		return false;
	pm->locked = LOCK_LOST;
	return true;
}

/* Resolve a fault on an absent SYSTEM page with the zero page. */
static int fault_missing(struct uhmm__as *as, uint64_t addr)
{
	STAT_ADD(cpu_faults_missing, 1);
	STAT_ADD(cpu_faults, 1);
	int rc = uhmm__uffd_zeropage(as, addr, PG_SIZE, true);
	if (rc == -EEXIST)
		rc = uhmm__uffd_wake(as, addr, PG_SIZE);
	if (rc == -ENOENT)  /* the range went away: let the access fail normally */
		rc = uhmm__uffd_wake(as, addr, PG_SIZE);
	return rc;
}

static int add_deferred(struct uhmm__as *as, uint64_t addr)
{
	struct deferred_fault *d = uhmm__zalloc(sizeof(*d));
	if (!d)
		return -ENOMEM;
	*d = (struct deferred_fault){ .addr = addr, .next = as->deferred_faults };
	as->deferred_faults = d;
	return 0;
}

/*
 * Who serves a fault.  SERVICE: the service thread, for a uffd message; it
 * never sleeps on a page lock (the fault is parked: -EAGAIN) and resolves
 * holes with the zero page.  IN: a thread that needs the page in the CPU
 * view (range fault, fork, mremap) and waits.  SELF: the faulting thread
 * itself, in its SIGBUS handler (a self-service range, selfserve.c): it
 * waits like IN, resolves holes and counts the fault like SERVICE, and
 * needs no wake-up.
 */
enum fault_mode { FAULT_SERVICE, FAULT_IN, FAULT_SELF };

/*
 * A self-service fault on a hole: the zero page, with pt_lock dropped (an
 * ioctl of this thread may retry EAGAIN, and the service thread may need
 * pt_lock to let the change that causes it finish).
 */
static int self_zero(struct uhmm__as *as, uint64_t addr, uint64_t t0)
{
	STAT_ADD(cpu_faults_missing, 1);
	STAT_ADD(cpu_faults, 1);
	int rc = uhmm__uffd_zeropage(as, addr, PG_SIZE, false);
	uhmm__event(UHMM_EV_CPU_FAULT, 3, addr, PG_SIZE, t0);
	return rc == -EEXIST ? 0 : rc;
}

/*
 * Serve a CPU fault at addr (page aligned), as mode says (above).  Returns
 * 0 when the page is back in the CPU view (or never left it), else -errno
 * (the caller sends SIGBUS, or fails the operation).
 */
static int cpu_fault(struct uhmm__as *as, uint64_t addr, bool write, enum fault_mode mode)
{
	bool service = mode == FAULT_SERVICE, counted = mode != FAULT_IN;
	uint64_t t0 = uhmm__now_ns();
	TR('F', addr, 0, 4096, write | mode << 1);
	for (int tries = 0; tries < 64; tries++) {
		uhmm__pt_lock(as);
		struct pmeta *pm = uhmm__pmeta(as, addr, false);
		if (pm && hole_fault(as, pm)) {
			/* A hole being migrated: the CPU wins, the migration loses it. */
			int rc = service ? fault_missing(as, addr) : 0;
			uhmm__pt_unlock(as);
			return mode == FAULT_SELF ? self_zero(as, addr, t0) : rc;
		}
		if (pm && pm->locked) {
			if (service) {
				int rc = add_deferred(as, addr);
				pm->waiters = 1;
				uhmm__pt_unlock(as);
				return rc ? rc : -EAGAIN;
			}
			uhmm__page_lock_wait(as, addr);
			uhmm__pt_unlock(as);
			continue;
		}
		int state = pm ? pm->state : PS_SYSTEM;
		uint32_t fr = pm ? pm->frame : 0;
		if (state == PS_SYSTEM || state == PS_COHERENT) {
			int rc = 0;
			if (service) {
				rc = fault_missing(as, addr);
				uhmm__event(UHMM_EV_CPU_FAULT, 3, addr, PG_SIZE, t0);
			}
			uhmm__pt_unlock(as);
			return mode == FAULT_SELF ? self_zero(as, addr, t0) : rc;
		}
		if (state == PS_EXCLUSIVE) {
			uhmm__pt_unlock(as);
			int rc = uhmm__exclusive_revoke(as, addr, counted);
			if (rc == -EAGAIN)
				continue;
			return rc;
		}
		/*
		 * PS_PRIVATE: the owner's migrate_to_ram brings it back, with the
		 * page locked for it (LOCK_FAULT), so that no other operation
		 * takes the page in between and the driver's migration needs to
		 * wait for no lock (the service thread must never wait for one).
		 */
		struct frame *f = uhmm__frame(as, fr);
		struct uhmm_devmem *pool = f ? frame_pool(f) : NULL;
		if (!pool || !pool->ops || !pool->ops->migrate_to_ram) {
			uhmm__pt_unlock(as);
			return -EFAULT;
		}
		pm->locked = LOCK_FAULT;
		uhmm__pt_unlock(as);
		struct uhmm_fault vmf = { .addr = addr, .page = fr, .write = write };
		if (counted && tries == 0) {
			/* Counted before the driver's migration wakes the thread. */
			STAT_ADD(cpu_faults_private, 1);
			STAT_ADD(cpu_faults, 1);
		}
		/*
		 * A slow pool's fault goes to a worker and the service thread
		 * goes on; a pool whose migrate_to_ram is fast in fact is served
		 * in place (the hand-off costs more than it saves: faultwork.c).
		 */
		if (service && uhmm__fault_should_defer(pool) &&
		    uhmm__fault_defer(as, pool, addr, fr, write, as->fault_tid, t0) == 0)
			return 0;
		uint64_t m0 = uhmm__now_ns();
		uhmm__fault_time_begin();
		int rc = pool->ops->migrate_to_ram(pool, &vmf);
		uhmm__fault_timed(pool, uhmm__fault_time_end(uhmm__now_ns() - m0));
		uhmm__pt_lock(as);
		pm = uhmm__pmeta(as, addr, false);
		if (pm)  /* kept while locked: it cannot have gone */
			uhmm__page_unlock(as, addr, pm);
		uhmm__pt_unlock(as);
		if (rc)
			return rc;
		/*
		 * Done with this fault whatever the page's state is now: the
		 * thread re-runs its access, and if the driver left the page on
		 * the device it faults again (a new message, or a new SIGBUS).
		 * Looking again here would take back a page that was
		 * legitimately migrated again right after the thread went on.
		 */
		if (service) {
			/* finalize woke the range; a driver that did nothing did not */
			uhmm__pt_lock(as);
			pm = uhmm__pmeta(as, addr, false);
			bool still = pm && pm->state == PS_PRIVATE;
			uhmm__pt_unlock(as);
			if (still)
				uhmm__uffd_wake(as, addr, PG_SIZE);
		}
		if (counted) {
			uhmm__event(UHMM_EV_CPU_FAULT, 1, addr, PG_SIZE, t0);
			return 0;
		}
		uhmm__pt_lock(as);
		pm = uhmm__pmeta(as, addr, false);
		bool back = !pm || (pm->state != PS_PRIVATE && !pm->locked);
		uhmm__pt_unlock(as);
		if (back)
			return 0;
	}
	return -EBUSY;
}

int uhmm__fault_serve(struct uhmm__as *as, uint64_t addr, bool write)
{
	return cpu_fault(as, addr, write, FAULT_SERVICE);
}

int uhmm__fault_in(struct uhmm__as *as, uint64_t addr, bool write)
{
	return cpu_fault(as, addr, write, FAULT_IN);
}

int uhmm__fault_self(struct uhmm__as *as, uint64_t addr, bool write)
{
	return cpu_fault(as, addr, write, FAULT_SELF);
}

#define BRING_BACK_TRIES 1000

static int off_cpu(struct uhmm__as *as, uint64_t addr, struct pmeta *pm, void *arg)
{
	(void)as, (void)addr, (void)arg;
	return pm->state == PS_PRIVATE || pm->state == PS_EXCLUSIVE;
}

/* Bring every device-private/exclusive page of [start, end) back to the CPU. */
int uhmm__bring_back_range(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	for (uint64_t a = start; a < end; a += PG_SIZE) {
		uhmm__pt_lock(as);
		int hit = uhmm__walk(as, a, end, WALK_UNLOCKED, off_cpu, NULL, &a);
		uhmm__pt_unlock(as);
		if (!hit)
			return 0;
		/*
		 * A failure may be passing (an allocation, the driver's copy):
		 * the callers (mremap, mprotect, fork) cannot fail for it, and a
		 * page left behind would be lost, so retry.
		 */
		int rc = 0;
		for (int t = 0; t < BRING_BACK_TRIES; t++) {
			rc = uhmm__fault_in(as, a, false);
			if (rc == 0)
				break;
			sched_yield();
		}
		if (rc) {
			uhmm__log("page 0x%llx could not be brought back: %s",
				  (unsigned long long)a, strerror(-rc));
			return rc;
		}
	}
	return 0;
}

/* The fault at addr of thread tid cannot be served: SIGBUS to that thread. */
void uhmm__sigbus_thread(struct uhmm__as *as, uint64_t addr, pid_t tid, int err)
{
	STAT_ADD(cpu_faults_sigbus, 1);
	uhmm__log("CPU fault at 0x%llx could not be served (%s): sending SIGBUS to thread %d",
		  (unsigned long long)addr, strerror(-err), (int)tid);
	if (tid > 0)
		syscall(SYS_tgkill, as->pid, tid, SIGBUS);
	else
		kill(as->pid, SIGBUS);
	uhmm__uffd_wake(as, addr & PG_MASK, PG_SIZE);
}

/* A fault a worker served (faultwork.c): as the end of cpu_fault. */
void uhmm__fault_finish(struct uhmm__as *as, uint64_t addr, int rc, pid_t tid, uint64_t t0)
{
	uhmm__pt_lock(as);
	struct pmeta *pm = uhmm__pmeta(as, addr, false);
	if (pm)  /* kept while locked (LOCK_FAULT): it cannot have gone */
		uhmm__page_unlock(as, addr, pm);
	bool still = pm && pm->state == PS_PRIVATE;
	uhmm__pt_unlock(as);
	if (rc) {
		uhmm__sigbus_thread(as, addr, tid, rc);
		return;
	}
	if (still)  /* the driver left it on the device: the thread faults again */
		uhmm__uffd_wake(as, addr, PG_SIZE);
	uhmm__event(UHMM_EV_CPU_FAULT, 1, addr, PG_SIZE, t0);
}
