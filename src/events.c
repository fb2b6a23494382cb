/* SPDX-License-Identifier: MIT */
/*
 * events.c - a range changes: the common path of an intercepted munmap /
 * mremap / discarding madvise / MAP_FIXED (uhmm__before_unmap), and the
 * userfaultfd UNMAP/REMOVE/REMAP events the service thread reads for calls
 * uhmm did not see.
 */
#include "internal.h"
#include "compat.h"

#include <unistd.h>

/*
 * The order matters (found by the model, docs/model.md): the range is
 * marked as being torn down first, so no migration, grant or range fault
 * starts on it; operations already holding its pages finish; only then are
 * the mirrors invalidated, so that no mapping made by those operations
 * survives; and the device pages are freed last, when no mirror can reach
 * them any more.
 */
void uhmm__before_unmap(struct uhmm__as *as, uint64_t s, uint64_t e, enum uhmm_notify_event ev)
{
	uhmm__wait_range_unlocked(as, s, e);
	uhmm__invalidate(as, s, e, ev, NULL);
	uhmm__forget_range(as, s, e, ev == UHMM_NOTIFY_UNMAP);
}

static int remap_page(struct uhmm__as *as, uint64_t addr, struct pmeta *pm, void *arg)
{
	const int64_t *delta = arg;
	if (pm->state == PS_SYSTEM)
		return 0;
	uint64_t to = addr + (uint64_t)*delta;
	struct pmeta *npm = uhmm__pmeta(as, to, true);
	if (!npm)
		return 0;
	pm = uhmm__pmeta(as, addr, false);  /* looked up again after the allocation */
	npm->state = pm->state;
	npm->frame = pm->frame;
	if (uhmm__frame(as, pm->frame))
		uhmm__frame_set_owner(as, pm->frame, to, NULL);
	pm->state = PS_SYSTEM;
	pm->frame = 0;
	uhmm__pmeta_changed(as, addr, pm);
	return 0;
}

/* Move metadata of an mremap done behind our back, so device data follows. */
static void remap_unseen(struct uhmm__as *as, uint64_t from, uint64_t to, uint64_t len)
{
	uhmm__invalidate(as, from, from + len, UHMM_NOTIFY_UNMAP, NULL);
	int64_t delta = (int64_t)(to - from);
	uhmm__pt_lock(as);
	uhmm__walk(as, from, from + len, WALK_UNLOCKED, remap_page, &delta, NULL);
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
		uhmm__forget_range(as, s, e, m->event == UFFD_EVENT_UNMAP);
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
