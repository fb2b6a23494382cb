/* SPDX-License-Identifier: MIT */
/*
 * service.c - the fault-service thread: reads the userfaultfd, serves
 * page faults (fault.c) and events (events.c), and wakes parked faults
 * once their pages are unlocked.
 */
#include "internal.h"
#include "compat.h"

#include <poll.h>
#include <unistd.h>

/*
 * Parked faults (a fault that found its page locked, see fault.c):
 * once the page is unlocked, its thread is woken to retry the access, as
 * the kernel's fault that waited for a locked page returns and retries; a
 * fault that is still needed comes back as a new message and is served
 * then.  A parked fault is never served from here: by the time its page is
 * unlocked it may be stale.  Measured (page trace, test_migrate
 * migrate_fail_alloc_zero_private, a driver-owned pool): a fault worker's
 * migrate_to_ram window held page P; the thread, woken by the install of
 * the fault page, faulted on P and was parked; the install of P (a copy:
 * the mapping is read-only) woke it and it went on.  Its record, re-served
 * only after the thread's next migration had taken P to the device again,
 * ran migrate_to_ram for a fault that no longer existed and brought P back
 * (that migration then had 511 of 512 pages; or -ENOENT in its read-back).
 * A re-served record could likewise make a migration lose a collected hole
 * (LOCK_HOLE -> LOCK_LOST).  A wake of a thread that went on already is a
 * no-op, so a fault whose page is still locked stays parked, and the rest
 * are woken, never served.
 */
static void serve_deferred(struct uhmm__as *as)
{
	struct deferred_fault *wake = NULL, *keep = NULL;
	uhmm__pt_lock(as);
	struct deferred_fault *d = as->deferred_faults;
	as->deferred_faults = NULL;
	while (d) {
		struct deferred_fault *next = d->next;
		struct pmeta *pm = uhmm__pmeta(as, d->addr, false);
		/* a collected hole is no wait: the retried access takes it (hole_fault) */
		if (pm && pm->locked && pm->locked != LOCK_HOLE) {
			pm->waiters = 1;
			d->next = keep;
			keep = d;
		} else {
			d->next = wake;
			wake = d;
		}
		d = next;
	}
	as->deferred_faults = keep;  /* under pt_lock: an unlock still signals wake_fd */
	uhmm__pt_unlock(as);
	while (wake) {
		struct deferred_fault *next = wake->next;
		uhmm__uffd_wake(as, wake->addr, PG_SIZE);
		uhmm__free(wake, sizeof(*wake));
		wake = next;
	}
}

static void serve_msg(struct uhmm__as *as, const struct uffd_msg *m)
{
	uint64_t seq = __atomic_load_n(&as->ev_handled, __ATOMIC_RELAXED) + 1;
	if (m->event != UFFD_EVENT_PAGEFAULT) {
		STAT_ADD(uffd_events, 1);
		uhmm__handle_uffd_event(as, m, seq);
		__atomic_store_n(&as->ev_handled, seq, __ATOMIC_RELEASE);
		return;
	}
	__atomic_store_n(&as->ev_handled, seq, __ATOMIC_RELEASE);
	uint64_t addr = m->arg.pagefault.address & PG_MASK;
	bool write = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;
	as->fault_tid = (pid_t)m->arg.pagefault.feat.ptid;
	uhmm__service_follow(as->fault_tid);  /* serve it on its CPU (placement.c) */
	int rc = uhmm__fault_serve(as, addr, write);
	if (rc && rc != -EAGAIN)
		uhmm__sigbus_thread(as, addr, as->fault_tid, rc);
}

void *uhmm__service_main(void *arg)
{
	struct uhmm__as *as = arg;
	uhmm__set_service_thread();
	uhmm__service_placement_init();
	struct pollfd pfd[3] = {
		{ .fd = as->uffd, .events = POLLIN },
		{ .fd = as->wake_fd, .events = POLLIN },
		{ .fd = as->stop_fd, .events = POLLIN },
	};
	struct uffd_msg msgs[32];
	for (;;) {
		/* Serving may read more early; loop until nothing is pending. */
		while (as->npending) {
			unsigned n = as->npending;
			struct uffd_msg early[256];
			memcpy(early, as->pending, n * sizeof(early[0]));
			as->npending = 0;
			for (unsigned i = 0; i < n; i++)
				serve_msg(as, &early[i]);
		}
		if (poll(pfd, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			uhmm__log("service thread: poll: %s", strerror(errno));
			break;
		}
		if (pfd[2].revents)
			break;
		if (pfd[1].revents) {
			uint64_t v;
			if (read(as->wake_fd, &v, sizeof(v)) > 0)
				serve_deferred(as);
		}
		if (pfd[0].revents & (POLLERR | POLLHUP))
			break;
		if (!(pfd[0].revents & POLLIN))
			continue;
		ssize_t n = uhmm__uffd_read_msgs(as, msgs, sizeof(msgs));
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			uhmm__log("service thread: read: %s", strerror(errno));
			break;
		}
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++)
			serve_msg(as, &msgs[i]);
	}
	return NULL;
}
