/* SPDX-License-Identifier: MIT */
/*
 * itree.h - the intrusive interval tree behind uhmm's interval notifiers.
 *
 * An AVL tree of struct uhmm__itree_node (defined in uhmm.h so that it can be
 * embedded in struct uhmm_interval_notifier), ordered by (start, node address)
 * so that equal intervals coexist, and augmented with subtree_last (the largest
 * "last" in a subtree) so that overlap queries skip subtrees that end too early.
 * aux holds the height of the node's subtree (a leaf has height 1).
 *
 * Intervals are inclusive: [start, last] with start <= last.  The tree does no
 * allocation and no locking: the caller owns the nodes and serializes access.
 * Insert and remove are O(log n); first() is O(log n), each next() O(log n).
 */
#ifndef UHMM_ITREE_H
#define UHMM_ITREE_H

#include <stdint.h>
#include <uhmm.h>

/* A tree; all zero is the empty tree. */
struct uhmm__itree {
	struct uhmm__itree_node *root;
	uint64_t count;
};

/* Add n; the caller has set n->start and n->last (start <= last). */
void uhmm__itree_insert(struct uhmm__itree *t, struct uhmm__itree_node *n);

/* Take n (which must be in t) out of t; n's links are cleared. */
void uhmm__itree_remove(struct uhmm__itree *t, struct uhmm__itree_node *n);

/*
 * The first node, in (start, address) order, whose interval overlaps
 * [start, last] (start <= last), or NULL.
 */
struct uhmm__itree_node *uhmm__itree_first(const struct uhmm__itree *t,
					   uint64_t start, uint64_t last);

/*
 * The first node after n, in (start, address) order, that overlaps
 * [start, last], or NULL.  n must be in a tree (normally it was returned by
 * first() or next() with the same bounds).
 */
struct uhmm__itree_node *uhmm__itree_next(const struct uhmm__itree_node *n,
					  uint64_t start, uint64_t last);

#endif
