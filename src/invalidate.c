/* SPDX-License-Identifier: MIT */
/*
 * invalidate.c - the notifier calls of an invalidation: every interval
 * notifier overlapping a range hears it before the change; inserts and
 * removes that came meanwhile are applied at its end (notifier.c defers
 * them).  The tree and the deferred list are under nt_lock, never held while
 * a callback runs.
 */
#include "internal.h"

/* nt_lock held: apply deferred inserts/removes once no invalidation runs. */
static void apply_deferred(struct uhmm__as *as)
{
	struct uhmm_interval_notifier *n = as->deferred;
	as->deferred = NULL;
	while (n) {
		struct uhmm_interval_notifier *next = n->uhmm__deferred_next;
		n->uhmm__deferred_next = NULL;
		if (n->uhmm__deferred_op == DEF_ADD) {
			uhmm__itree_insert(&as->itree, &n->uhmm__node);
			n->uhmm__state = NS_INSERTED;
		} else if (n->uhmm__deferred_op == DEF_REMOVE) {
			uhmm__itree_remove(&as->itree, &n->uhmm__node);
			n->uhmm__state = NS_DETACHED;
		}
		n->uhmm__deferred_op = DEF_NONE;
		n = next;
	}
}

/*
 * Call every notifier overlapping [start, end) before the change.  The tree
 * is stable while active_invalidates > 0 (inserts/removes are deferred), so
 * the walk runs without nt_lock and callbacks may sleep.
 */
void uhmm__invalidate(struct uhmm__as *as, uint64_t start, uint64_t end,
		      enum uhmm_notify_event ev, const void *owner)
{
	if (start >= end)
		return;
	STAT_ADD(invalidations[ev & 7], 1);
	uhmm__lock(&as->nt_lock);
	struct uhmm__itree_node *node = uhmm__itree_first(&as->itree, start, end - 1);
	if (!node) {
		uhmm__unlock(&as->nt_lock);
		return;
	}
	uint64_t t0 = uhmm__now_ns();
	as->active_invalidates++;
	as->invalidate_seq |= 1;
	unsigned long cur_seq = as->invalidate_seq;
	uhmm__unlock(&as->nt_lock);

	struct uhmm_notifier_range r = { .start = start, .end = end, .event = ev, .owner = owner };
	for (; node; node = uhmm__itree_next(node, start, end - 1)) {
		struct uhmm_interval_notifier *n = (struct uhmm_interval_notifier *)
			((char *)node - offsetof(struct uhmm_interval_notifier, uhmm__node));
		n->uhmm__ops->invalidate(n, &r, cur_seq);
	}

	uhmm__lock(&as->nt_lock);
	if (--as->active_invalidates == 0) {
		as->invalidate_seq++;  /* even again: no invalidation running */
		apply_deferred(as);
		pthread_cond_broadcast(&as->nt_cond);
	}
	uhmm__unlock(&as->nt_lock);
	uhmm__event(UHMM_EV_INVALIDATE, ev, start, end - start, t0);
}

/* Process teardown: every notifier hears RELEASE over its whole range. */
void uhmm__notifier_release_all(struct uhmm__as *as)
{
	uhmm__invalidate(as, 0, UINT64_MAX & PG_MASK, UHMM_NOTIFY_RELEASE, NULL);
}
