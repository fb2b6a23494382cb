/* SPDX-License-Identifier: MIT */
/*
 * intercept.c - notify before change.  libuhmm exports munmap, mremap,
 * mprotect, madvise and mmap; an application linked with it calls these
 * instead of libc's.  Each one invalidates the device mirrors of the range
 * (interval notifiers) and settles the device pages of the range *before*
 * making the system call, which is what invariant I2 needs.  Calls that do
 * not go through these symbols (raw syscall(), libc-internal calls such as
 * free() of a large block) are caught after the fact by the userfaultfd
 * UNMAP/REMOVE/REMAP events of tracked ranges; docs/design.md states the
 * guarantee of each path.
 */
#include "internal.h"
#include "compat.h"

#include <linux/userfaultfd.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

void uhmm__intercept_link(void)
{
	/* Referenced by the runtime so that static links keep this object. */
}

/*
 * The runtime an interposed call must go through, or NULL: straight to the
 * kernel.  Also NULL while this thread holds a uhmm lock (see uhmm__lock):
 * such a call comes from inside uhmm (a sanitizer report, a signal
 * handler), and taking uhmm's locks again would deadlock.  It then gets
 * what a raw syscall() gets: the userfaultfd events after the fact
 * (docs/design.md section 4).
 */
static struct uhmm__as *live_as(void)
{
	if (uhmm__holds_lock())
		return NULL;
	struct uhmm__as *as = uhmm__as_peek();
	return as && as->pid == getpid() ? as : NULL;
}

static void range_of(uint64_t addr, uint64_t len, uint64_t *s, uint64_t *e)
{
	*s = addr & PG_MASK;
	*e = (addr + len + PG_SIZE - 1) & PG_MASK;
	if (*e < *s)
		*e = UINT64_MAX & PG_MASK;
}

/*
 * An intercepted call is recorded before it runs.  Where it touches ranges
 * registered with userfaultfd the kernel also sends events for it: one per
 * VMA for MADV_DONTNEED (REMOVE), one for the whole range for munmap
 * (UNMAP), and measured: an UNMAP can be read after munmap returned.  The
 * service thread may handle them later still.  An event is the call's if it
 * falls in its range and the call is running, or ended less than
 * INFLIGHT_GRACE_NS ago, or the event was read before it ended (number <=
 * end_seq).  Until then the record stays, so that its events are recognised
 * as already handled and cannot hit a new mapping placed at the same
 * address in between; a raw-syscall event for the same range within that
 * time is taken for the call's (harmless: the call forgot the range).
 */
#define INFLIGHT_GRACE_NS 2000000000ULL
static struct inflight_op *inflight_begin(struct uhmm__as *as, uint64_t s, uint64_t e,
					  bool teardown)
{
	struct inflight_op *op = uhmm__zalloc(sizeof(*op));
	if (!op)
		return NULL;
	op->start = s;
	op->end = e;
	op->teardown = teardown;
	uhmm__pt_lock(as);
	op->expect = uhmm__reg_overlaps(as, s, e);
	op->next = as->inflight;
	as->inflight = op;
	uhmm__pt_unlock(as);
	return op;
}

/* An ended call whose events can still be handled (see above)? */
static bool inflight_recent(const struct inflight_op *op, uint64_t seq, uint64_t now)
{
	return op->expect && (seq <= op->end_seq || now - op->end_ns < INFLIGHT_GRACE_NS);
}

/* pt_lock held: drop the ended calls no event can still belong to. */
static void inflight_reap(struct uhmm__as *as)
{
	uhmm__assert_pt_held(as);
	uint64_t handled = __atomic_load_n(&as->ev_handled, __ATOMIC_ACQUIRE);
	uint64_t now = uhmm__now_ns();
	for (struct inflight_op **pp = &as->inflight; *pp;) {
		struct inflight_op *op = *pp;
		if (op->done && !inflight_recent(op, handled + 1, now)) {
			*pp = op->next;
			uhmm__free(op, sizeof(*op));
			continue;
		}
		pp = &op->next;
	}
}

static void inflight_end(struct uhmm__as *as, struct inflight_op *op, bool ok)
{
	if (!op)
		return;
	(void)ok;
	uhmm__lock(&as->read_lock);
	uint64_t seq = as->ev_read;  /* its events, if any, are read by now */
	uhmm__unlock(&as->read_lock);
	uhmm__pt_lock(as);
	op->done = true;
	op->end_seq = seq;
	op->end_ns = uhmm__now_ns();
	op->teardown = false;
	inflight_reap(as);
	uhmm__pt_unlock(as);
}

/* pt_lock held: is addr in a range an intercepted call is tearing down? */
bool uhmm__torn_down(struct uhmm__as *as, uint64_t addr)
{
	uhmm__assert_pt_held(as);
	for (struct inflight_op *op = as->inflight; op; op = op->next)
		if (op->teardown && op->start <= addr && addr < op->end)
			return true;
	return false;
}

/* pt_lock held: does [start, end) touch a range being torn down? */
bool uhmm__torn_overlaps(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uhmm__assert_pt_held(as);
	for (struct inflight_op *op = as->inflight; op; op = op->next)
		if (op->teardown && op->start < end && start < op->end)
			return true;
	return false;
}

/* The service thread handles event number seq, for [start, end): was it ours? */
bool uhmm__inflight_consume(struct uhmm__as *as, uint64_t start, uint64_t end, uint64_t seq)
{
	bool ours = false;
	uint64_t now = uhmm__now_ns();
	uhmm__pt_lock(as);
	for (struct inflight_op *op = as->inflight; op && !ours; op = op->next)
		ours = op->start <= start && end <= op->end &&
		       (!op->done || inflight_recent(op, seq, now));
	inflight_reap(as);
	uhmm__pt_unlock(as);
	return ours;
}

/*
 * uhmm's own MADV_DONTNEED of process memory: the kernel posts a REMOVE
 * event and waits until the service thread has read it, so the service
 * thread itself must never do this (-EDEADLK), and the event is marked as
 * ours so that it is not taken for the application's.
 */
int uhmm__zap_app_range(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	if (uhmm__in_service_thread())
		return -EDEADLK;
	struct inflight_op *op = inflight_begin(as, start, end, false);
	int rc = (int)syscall(SYS_madvise, start, end - start, MADV_DONTNEED);
	inflight_end(as, op, rc == 0);
	return rc ? -errno : 0;
}

/*
 * The order matters (found by the model, docs/model.md): the range is
 * marked as being torn down first, so no migration, grant or range fault
 * starts on it; operations already holding its pages finish; only then are
 * the mirrors invalidated, so that no mapping made by those operations
 * survives; and the device pages are freed last, when no mirror can reach
 * them any more.
 */
static void before_unmap(struct uhmm__as *as, uint64_t s, uint64_t e, enum uhmm_notify_event ev)
{
	uhmm__wait_range_unlocked(as, s, e);
	uhmm__invalidate(as, s, e, ev, NULL);
	uhmm__forget_range(as, s, e);
}

__attribute__((visibility("default"))) int munmap(void *addr, size_t len)
{
	struct uhmm__as *as = live_as();
	if (!as || len == 0 || ((uintptr_t)addr & (PG_SIZE - 1)))
		return (int)syscall(SYS_munmap, addr, len);
	uint64_t s, e;
	range_of((uintptr_t)addr, len, &s, &e);
	struct inflight_op *op = inflight_begin(as, s, e, true);
	TR('N', s, 0, e - s, op ? op->expect : -1);
	before_unmap(as, s, e, UHMM_NOTIFY_UNMAP);
	int rc = (int)syscall(SYS_munmap, addr, len);
	TR('n', s, 0, e - s, rc);
	inflight_end(as, op, rc == 0);
	return rc;
}

__attribute__((visibility("default"))) void *mremap(void *old, size_t old_size,
						     size_t new_size, int flags, ...)
{
	void *new_addr = NULL;
	if (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) {
		va_list ap;
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	struct uhmm__as *as = live_as();
	if (!as || ((uintptr_t)old & (PG_SIZE - 1)))
		return (void *)syscall(SYS_mremap, old, old_size, new_size, flags, new_addr);
	uint64_t os, oe;
	range_of((uintptr_t)old, old_size ? old_size : PG_SIZE, &os, &oe);
	/* Whether the kernel sends REMAP or UNMAP here depends on the move: not counted on. */
	struct inflight_op *op = inflight_begin(as, os, oe, true);
	/*
	 * Device pages come back to the CPU first, so the kernel moves the data
	 * with the mapping; the old range's mirrors go away before the move.
	 */
	uhmm__bring_back_range(as, os, oe);
	before_unmap(as, os, oe, UHMM_NOTIFY_UNMAP);
	/*
	 * uhmm's registration may have split the mapping into several VMAs,
	 * and the kernel does not mremap across VMAs: unregister the range
	 * (its pages are all back in the CPU view) so that they merge again.
	 */
	struct uffdio_range ur = { .start = os, .len = oe - os };
	uhmm__lock(&as->reg_lock);
	ioctl(as->uffd, UFFDIO_UNREGISTER, &ur);
	uhmm__unlock(&as->reg_lock);
	if ((flags & MREMAP_FIXED) && new_addr) {
		uint64_t s, e;
		range_of((uintptr_t)new_addr, new_size, &s, &e);
		before_unmap(as, s, e, UHMM_NOTIFY_UNMAP);
	}
	void *rc = (void *)syscall(SYS_mremap, old, old_size, new_size, flags, new_addr);
	inflight_end(as, op, rc != MAP_FAILED);
	return rc;
}

__attribute__((visibility("default"))) int mprotect(void *addr, size_t len, int prot)
{
	struct uhmm__as *as = live_as();
	if (!as || len == 0 || ((uintptr_t)addr & (PG_SIZE - 1)))
		return (int)syscall(SYS_mprotect, addr, len, prot);
	uint64_t s, e;
	range_of((uintptr_t)addr, len, &s, &e);
	uhmm__invalidate(as, s, e, UHMM_NOTIFY_PROTECTION_VMA, NULL);
	/*
	 * Device pages only live in read-write private mappings (UFFDIO_MOVE
	 * needs equal access flags on both sides), so a range that stops being
	 * read-write gets its pages back first.
	 */
	if (prot != (PROT_READ | PROT_WRITE))
		uhmm__bring_back_range(as, s, e);
	return (int)syscall(SYS_mprotect, addr, len, prot);
}

static bool advice_discards(int advice)
{
	return advice == MADV_DONTNEED || advice == MADV_REMOVE ||
	       advice == 24 /* MADV_DONTNEED_LOCKED */;
}

__attribute__((visibility("default"))) int madvise(void *addr, size_t len, int advice)
{
	struct uhmm__as *as = live_as();
	if (!as || len == 0 || ((uintptr_t)addr & (PG_SIZE - 1)) ||
	    !(advice_discards(advice) || advice == MADV_FREE))
		return (int)syscall(SYS_madvise, addr, len, advice);
	uint64_t s, e;
	range_of((uintptr_t)addr, len, &s, &e);
	bool discard = advice_discards(advice);
	struct inflight_op *op = inflight_begin(as, s, e, discard);
	/* Discarded data: device pages of the range are freed and read zero. */
	if (discard)
		before_unmap(as, s, e, UHMM_NOTIFY_CLEAR);
	else
		uhmm__invalidate(as, s, e, UHMM_NOTIFY_CLEAR, NULL);
	int rc = (int)syscall(SYS_madvise, addr, len, advice);
	inflight_end(as, op, rc == 0);
	return rc;
}

__attribute__((visibility("default"))) void *mmap(void *addr, size_t len, int prot, int flags,
						   int fd, off_t off)
{
	struct uhmm__as *as = (flags & MAP_FIXED) ? live_as() : NULL;
	if (!as || ((uintptr_t)addr & (PG_SIZE - 1)) || len == 0)
		return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	/* MAP_FIXED replaces whatever was there: that is an unmap first. */
	uint64_t s, e;
	range_of((uintptr_t)addr, len, &s, &e);
	struct inflight_op *op = inflight_begin(as, s, e, true);
	before_unmap(as, s, e, UHMM_NOTIFY_UNMAP);
	void *rc = (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	inflight_end(as, op, rc != MAP_FAILED);
	return rc;
}

__attribute__((visibility("default"))) void *mmap64(void *addr, size_t len, int prot, int flags,
						     int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

/* Move metadata of an mremap done behind our back, so device data follows. */
static void remap_unseen(struct uhmm__as *as, uint64_t from, uint64_t to, uint64_t len)
{
	uhmm__invalidate(as, from, from + len, UHMM_NOTIFY_UNMAP, NULL);
	uhmm__pt_lock(as);
	for (uint64_t o = 0; o < len; o += PG_SIZE) {
		uhmm__page_lock_wait(as, from + o);
		struct pmeta *pm = uhmm__pmeta(as, from + o, false);
		if (!pm || pm->state == PS_SYSTEM)
			continue;
		struct pmeta *npm = uhmm__pmeta(as, to + o, true);
		if (!npm)
			continue;
		/* The pointer may have moved if the table grew: look it up again. */
		pm = uhmm__pmeta(as, from + o, false);
		npm->state = pm->state;
		npm->frame = pm->frame;
		if (uhmm__frame(as, pm->frame))
			uhmm__frame_set_owner(as, pm->frame, to + o, NULL);
		pm->state = PS_SYSTEM;
		pm->frame = 0;
		uhmm__pmeta_changed(as, from + o, pm);
	}
	uhmm__pt_unlock(as);
}

/* UHMM_DEBUG: log events that no intercepted call announced (read once). */
static bool g_debug_events;
__attribute__((constructor)) static void read_debug_env(void)
{
	g_debug_events = getenv("UHMM_DEBUG") != NULL;
}

/* An UNMAP/REMOVE/REMAP event read by the service thread. */
void uhmm__handle_uffd_event(struct uhmm__as *as, const void *msgp, uint64_t seq)
{
	const struct uffd_msg *m = msgp;
	switch (m->event) {
	case UFFD_EVENT_UNMAP:
	case UFFD_EVENT_REMOVE: {
		uint64_t s = m->arg.remove.start, e = m->arg.remove.end;
		TR('E', s, 0, e - s, m->event);
		if (uhmm__inflight_consume(as, s, e, seq))
			return;
		TR('e', s, 0, e - s, m->event);
		if (g_debug_events)
			uhmm__log("unseen %s event %llx-%llx", m->event == UFFD_EVENT_UNMAP ? "UNMAP" : "REMOVE",
				  (unsigned long long)s, (unsigned long long)e);
		uhmm__invalidate(as, s, e, m->event == UFFD_EVENT_UNMAP ? UHMM_NOTIFY_UNMAP :
					   UHMM_NOTIFY_CLEAR, NULL);
		uhmm__forget_range(as, s, e);
		return;
	}
	case UFFD_EVENT_REMAP:
		if (uhmm__inflight_consume(as, m->arg.remap.from, m->arg.remap.from + m->arg.remap.len,
					   seq))
			return;
		remap_unseen(as, m->arg.remap.from, m->arg.remap.to, m->arg.remap.len);
		return;
	default:
		return;
	}
}
