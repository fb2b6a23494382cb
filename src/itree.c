/* SPDX-License-Identifier: MIT */
/*
 * itree.c - the interval tree of itree.h: an AVL tree keyed by
 * (start, node address), each node caching its subtree's height (aux) and
 * largest interval end (subtree_last).
 *
 * Every structural change (insert, remove) is followed by a walk from the
 * lowest changed node up to the root that recomputes height and subtree_last
 * and rotates where the two children's heights differ by two.  The walk is
 * O(log n) because the tree height is.
 */
#include "itree.h"

#include <stddef.h>

typedef struct uhmm__itree_node itnode_t;

static inline uint32_t height(const itnode_t *n)
{
	return n ? n->aux : 0;
}

static inline uint64_t max_u64(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

/* Recompute n's height and subtree_last from its children. */
static void pull(itnode_t *n)
{
	uint32_t hl = height(n->left), hr = height(n->right);
	uint64_t sl = n->last;

	if (n->left)
		sl = max_u64(sl, n->left->subtree_last);
	if (n->right)
		sl = max_u64(sl, n->right->subtree_last);
	n->subtree_last = sl;
	n->aux = 1 + (hl > hr ? hl : hr);
}

/* Order of two distinct nodes: by start, then by address. */
static inline int goes_left_of(const itnode_t *a, const itnode_t *b)
{
	if (a->start != b->start)
		return a->start < b->start;
	return (uintptr_t)a < (uintptr_t)b;
}

/* Make the link that pointed at old (from parent, or the root) point at new. */
static void replace_child(struct uhmm__itree *t, itnode_t *parent, itnode_t *old,
			  itnode_t *new)
{
	if (!parent)
		t->root = new;
	else if (parent->left == old)
		parent->left = new;
	else
		parent->right = new;
	if (new)
		new->parent = parent;
}

/* x's right child takes x's place; returns it. */
static itnode_t *rotate_left(struct uhmm__itree *t, itnode_t *x)
{
	itnode_t *y = x->right;

	x->right = y->left;
	if (y->left)
		y->left->parent = x;
	replace_child(t, x->parent, x, y);
	y->left = x;
	x->parent = y;
	pull(x);
	pull(y);
	return y;
}

/* x's left child takes x's place; returns it. */
static itnode_t *rotate_right(struct uhmm__itree *t, itnode_t *x)
{
	itnode_t *y = x->left;

	x->left = y->right;
	if (y->right)
		y->right->parent = x;
	replace_child(t, x->parent, x, y);
	y->right = x;
	x->parent = y;
	pull(x);
	pull(y);
	return y;
}

/*
 * Restore the AVL invariant at n, whose subtrees are valid AVL trees with
 * heights differing by at most two.  Returns the node now at n's place.
 */
static itnode_t *rebalance(struct uhmm__itree *t, itnode_t *n)
{
	uint32_t hl = height(n->left), hr = height(n->right);

	if (hl > hr + 1) {
		if (height(n->left->left) < height(n->left->right))
			rotate_left(t, n->left);
		return rotate_right(t, n);
	}
	if (hr > hl + 1) {
		if (height(n->right->right) < height(n->right->left))
			rotate_right(t, n->right);
		return rotate_left(t, n);
	}
	pull(n);
	return n;
}

/* Recompute and rebalance every node from n up to the root. */
static void fix_upwards(struct uhmm__itree *t, itnode_t *n)
{
	while (n) {
		n = rebalance(t, n);
		n = n->parent;
	}
}

void uhmm__itree_insert(struct uhmm__itree *t, struct uhmm__itree_node *n)
{
	itnode_t *parent = NULL, **link = &t->root;

	while (*link) {
		parent = *link;
		link = goes_left_of(n, parent) ? &parent->left : &parent->right;
	}
	n->left = NULL;
	n->right = NULL;
	n->parent = parent;
	n->aux = 1;
	n->subtree_last = n->last;
	*link = n;
	t->count++;
	fix_upwards(t, parent);
}

/* n has two children: put its in-order successor in its place. */
static itnode_t *unlink_with_two_children(struct uhmm__itree *t, itnode_t *n)
{
	itnode_t *s = n->right, *fix_from;

	while (s->left)
		s = s->left;
	if (s->parent == n) {
		fix_from = s;
	} else {
		fix_from = s->parent;
		fix_from->left = s->right;
		if (s->right)
			s->right->parent = fix_from;
		s->right = n->right;
		n->right->parent = s;
	}
	s->left = n->left;
	n->left->parent = s;
	replace_child(t, n->parent, n, s);
	return fix_from;
}

void uhmm__itree_remove(struct uhmm__itree *t, struct uhmm__itree_node *n)
{
	itnode_t *fix_from;

	if (n->left && n->right) {
		fix_from = unlink_with_two_children(t, n);
	} else {
		fix_from = n->parent;
		replace_child(t, n->parent, n, n->left ? n->left : n->right);
	}
	n->left = NULL;
	n->right = NULL;
	n->parent = NULL;
	t->count--;
	fix_upwards(t, fix_from);
}

/*
 * The first node of the subtree at n that overlaps [start, last], where
 * n->subtree_last >= start.  NULL means that no node of the subtree overlaps
 * and that a node with start beyond last was met, so no later node overlaps
 * either.
 */
static itnode_t *subtree_first(itnode_t *n, uint64_t start, uint64_t last)
{
	for (;;) {
		if (n->left && n->left->subtree_last >= start) {
			n = n->left;
			continue;
		}
		if (n->start > last)
			return NULL;
		if (n->last >= start)
			return n;
		if (!n->right || n->right->subtree_last < start)
			return NULL;
		n = n->right;
	}
}

struct uhmm__itree_node *uhmm__itree_first(const struct uhmm__itree *t,
					   uint64_t start, uint64_t last)
{
	if (!t->root || t->root->subtree_last < start)
		return NULL;
	return subtree_first(t->root, start, last);
}

struct uhmm__itree_node *uhmm__itree_next(const struct uhmm__itree_node *n,
					  uint64_t start, uint64_t last)
{
	itnode_t *cur = (itnode_t *)n, *prev, *right = n->right;

	for (;;) {
		if (right && right->subtree_last >= start)
			return subtree_first(right, start, last);
		/* Climb to the first ancestor whose left subtree we were in. */
		do {
			prev = cur;
			cur = cur->parent;
			if (!cur)
				return NULL;
		} while (cur->right == prev);
		if (cur->start > last)
			return NULL;
		if (cur->last >= start)
			return cur;
		right = cur->right;
	}
}
