/* SPDX-License-Identifier: MIT */
/*
 * notifier.c - interval notifiers, the mmu_interval_notifier protocol:
 * a process-wide invalidate_seq that is odd while any invalidation that hit
 * a notifier is running; read_begin() waits out a running one; set_seq() and
 * read_retry() under the driver's lock detect collisions; inserts and removes
 * that arrive during an invalidation are deferred to its end so the tree
 * never changes under the callbacks.  Owns as->itree and the deferred list
 * (both under as->nt_lock, which is never held while a callback runs).
 */
#include "internal.h"

static bool invalidating(struct uhmm__as *as)
{
	return as->invalidate_seq & 1;
}

static void defer(struct uhmm__as *as, struct uhmm_interval_notifier *n, int op)
{
	n->uhmm__deferred_op = op;
	n->uhmm__deferred_next = as->deferred;
	as->deferred = n;
}

int uhmm_interval_notifier_insert(struct uhmm_interval_notifier *n, uint64_t start,
				  uint64_t length, const struct uhmm_interval_notifier_ops *ops)
{
	if (!n || !ops || !ops->invalidate || length == 0 || start + length < start)
		return -EINVAL;
	int err = 0;
	struct uhmm__as *as = uhmm__as_get(&err);
	if (!as)
		return err;
	uhmm__lock(&as->nt_lock);
	if (n->uhmm__state != NS_DETACHED) {
		uhmm__unlock(&as->nt_lock);
		return -EINVAL;
	}
	n->uhmm__ops = ops;
	n->uhmm__node.start = start;
	n->uhmm__node.last = start + length - 1;
	if (as->active_invalidates && invalidating(as)) {
		/* An odd seq one behind: read_begin() waits for the running one. */
		n->uhmm__seq = as->invalidate_seq - 1;
		n->uhmm__state = NS_DEFERRED;
		defer(as, n, DEF_ADD);
	} else {
		n->uhmm__seq = as->invalidate_seq;
		n->uhmm__state = NS_INSERTED;
		uhmm__itree_insert(&as->itree, &n->uhmm__node);
	}
	uhmm__unlock(&as->nt_lock);
	return 0;
}

int uhmm_interval_notifier_remove(struct uhmm_interval_notifier *n)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (!n || !as)
		return -EINVAL;
	uhmm__lock(&as->nt_lock);
	if (n->uhmm__state == NS_DETACHED ||
	    (n->uhmm__state == NS_DEFERRED && n->uhmm__deferred_op == DEF_REMOVE)) {
		uhmm__unlock(&as->nt_lock);
		return -EINVAL;
	}
	if (n->uhmm__state == NS_DEFERRED && n->uhmm__deferred_op == DEF_ADD) {
		/* Never reached the tree: cancel the pending insert. */
		n->uhmm__deferred_op = DEF_NONE;
		struct uhmm_interval_notifier **pp = &as->deferred;
		while (*pp && *pp != n)
			pp = &(*pp)->uhmm__deferred_next;
		if (*pp)
			*pp = n->uhmm__deferred_next;
		n->uhmm__deferred_next = NULL;
		n->uhmm__state = NS_DETACHED;
		uhmm__unlock(&as->nt_lock);
		return 0;
	}
	if (as->active_invalidates && invalidating(as)) {
		unsigned long seq = as->invalidate_seq;
		n->uhmm__state = NS_DEFERRED;
		defer(as, n, DEF_REMOVE);
		/* No callback for n may run once we return: wait the invalidation out. */
		while (as->invalidate_seq == seq)
			pthread_cond_wait(&as->nt_cond, &as->nt_lock);
	} else {
		uhmm__itree_remove(&as->itree, &n->uhmm__node);
		n->uhmm__state = NS_DETACHED;
	}
	uhmm__unlock(&as->nt_lock);
	return 0;
}

unsigned long uhmm_interval_read_begin(struct uhmm_interval_notifier *n)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (!n || !as)
		return 0;
	uhmm__lock(&as->nt_lock);
	unsigned long seq = __atomic_load_n(&n->uhmm__seq, __ATOMIC_ACQUIRE);
	/* n's seq equal to the odd global one: an invalidation of n is running. */
	while (seq == as->invalidate_seq && (seq & 1)) {
		pthread_cond_wait(&as->nt_cond, &as->nt_lock);
	}
	if (n->uhmm__state == NS_DEFERRED && n->uhmm__deferred_op == DEF_ADD) {
		while (n->uhmm__state == NS_DEFERRED)
			pthread_cond_wait(&as->nt_cond, &as->nt_lock);
	}
	seq = __atomic_load_n(&n->uhmm__seq, __ATOMIC_ACQUIRE);
	uhmm__unlock(&as->nt_lock);
	return seq;
}

bool uhmm_interval_read_retry(struct uhmm_interval_notifier *n, unsigned long seq)
{
	return !n || __atomic_load_n(&n->uhmm__seq, __ATOMIC_ACQUIRE) != seq;
}

bool uhmm_interval_check_retry(struct uhmm_interval_notifier *n, unsigned long seq)
{
	return !n || __atomic_load_n(&n->uhmm__seq, __ATOMIC_RELAXED) != seq;
}

void uhmm_interval_set_seq(struct uhmm_interval_notifier *n, unsigned long cur_seq)
{
	if (n)
		__atomic_store_n(&n->uhmm__seq, cur_seq, __ATOMIC_RELEASE);
}

