/* SPDX-License-Identifier: MIT */
/*
 * test_itree.c - unit tests of the interval tree (src/itree.c) behind the
 * interval notifiers: empty-tree queries, inclusive boundaries, duplicates,
 * a randomized differential test against a brute-force array with full
 * invariant checks (order, parent links, subtree_last, AVL heights), and a
 * 100 000-node run with timings.
 *
 * The tree's symbols are hidden in the shared library, so the implementation
 * is compiled into this program directly.
 */
#include "harness.h"
#include "../src/itree.c"

struct tnode {
	struct uhmm__itree_node n;
	int in_tree;
};

/* The tree node is the first member of struct tnode. */
#define TN(p) ((struct tnode *)(uintptr_t)(p))

static uint64_t rng_state;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return x;
}

/* Uniform-ish value in [0, n). */
static uint64_t rnd_below(uint64_t n)
{
	return rnd() % n;
}

static int overlaps(const struct uhmm__itree_node *n, uint64_t start, uint64_t last)
{
	return n->start <= last && n->last >= start;
}

static void set_iv(struct tnode *tn, uint64_t start, uint64_t last)
{
	memset(tn, 0, sizeof(*tn));
	tn->n.start = start;
	tn->n.last = last;
}

/* ---- invariant checker ---- */

struct walk {
	const struct uhmm__itree_node *prev;
	uint64_t count;
};

static int key_less(const struct uhmm__itree_node *a, const struct uhmm__itree_node *b)
{
	if (a->start != b->start)
		return a->start < b->start;
	return (uintptr_t)a < (uintptr_t)b;
}

/* Checks the subtree at n; returns its height. */
static uint32_t check_subtree(const struct uhmm__itree_node *n,
			      const struct uhmm__itree_node *parent, struct walk *w)
{
	if (!n)
		return 0;
	ASSERT_TRUE(n->parent == parent);
	ASSERT_TRUE(n->start <= n->last);   /* unsigned: not ASSERT_LE */
	uint32_t hl = check_subtree(n->left, n, w);

	if (w->prev)
		ASSERT_TRUE(key_less(w->prev, n));
	w->prev = n;
	w->count++;
	ASSERT_EQ(TN(n)->in_tree, 1);
	uint32_t hr = check_subtree(n->right, n, w);

	uint64_t sl = n->last;
	if (n->left && n->left->subtree_last > sl)
		sl = n->left->subtree_last;
	if (n->right && n->right->subtree_last > sl)
		sl = n->right->subtree_last;
	ASSERT_TRUE(n->subtree_last == sl);
	ASSERT_LE(hl, hr + 1);
	ASSERT_LE(hr, hl + 1);
	uint32_t h = 1 + (hl > hr ? hl : hr);
	ASSERT_EQ(n->aux, h);
	return h;
}

static void check_tree(const struct uhmm__itree *t)
{
	struct walk w = { NULL, 0 };
	uint32_t h = check_subtree(t->root, NULL, &w);

	ASSERT_EQ(w.count, t->count);
	/* An AVL tree of height h holds at least m(h) = m(h-1) + m(h-2) + 1 nodes. */
	uint64_t m0 = 0, m1 = 1;
	for (uint32_t i = 1; i < h; i++) {
		uint64_t m2 = m1 + m0 + 1;
		m0 = m1;
		m1 = m2;
	}
	if (h)
		ASSERT_TRUE(t->count >= m1);
}

/*
 * Enumerates [start, last] with first/next and compares with the brute-force
 * set of in-tree nodes of pool[0..n): strictly increasing key order, every
 * node in the tree and overlapping, as many as the brute force finds.
 */
static void check_query(const struct uhmm__itree *t, struct tnode *pool, size_t n,
			uint64_t start, uint64_t last)
{
	uint64_t expect = 0, got = 0;
	const struct uhmm__itree_node *prev = NULL;

	for (size_t i = 0; i < n; i++)
		if (pool[i].in_tree && overlaps(&pool[i].n, start, last))
			expect++;
	for (struct uhmm__itree_node *it = uhmm__itree_first(t, start, last); it;
	     it = uhmm__itree_next(it, start, last)) {
		ASSERT_TRUE(TN(it) >= pool && TN(it) < pool + n);
		ASSERT_EQ(TN(it)->in_tree, 1);
		ASSERT_TRUE(overlaps(it, start, last));
		if (prev)
			ASSERT_TRUE(key_less(prev, it));
		prev = it;
		got++;
		ASSERT_LE(got, expect);
	}
	ASSERT_EQ(got, expect);
}

static void insert(struct uhmm__itree *t, struct tnode *tn)
{
	uhmm__itree_insert(t, &tn->n);
	tn->in_tree = 1;
}

static void remove_node(struct uhmm__itree *t, struct tnode *tn)
{
	uhmm__itree_remove(t, &tn->n);
	tn->in_tree = 0;
	ASSERT_TRUE(tn->n.left == NULL && tn->n.right == NULL && tn->n.parent == NULL);
}

/* ---- cases ---- */

TEST(empty)
{
	struct uhmm__itree t = { 0 };

	ASSERT_TRUE(uhmm__itree_first(&t, 0, 0) == NULL);
	ASSERT_TRUE(uhmm__itree_first(&t, 0, UINT64_MAX) == NULL);
	ASSERT_TRUE(uhmm__itree_first(&t, UINT64_MAX, UINT64_MAX) == NULL);
	check_tree(&t);

	/* Emptied again after use. */
	struct tnode a;
	set_iv(&a, 10, 20);
	insert(&t, &a);
	remove_node(&t, &a);
	ASSERT_TRUE(t.root == NULL);
	ASSERT_EQ(t.count, 0);
	ASSERT_TRUE(uhmm__itree_first(&t, 0, UINT64_MAX) == NULL);
}

TEST(single_boundaries)
{
	struct uhmm__itree t = { 0 };
	struct tnode a;

	set_iv(&a, 100, 199);
	insert(&t, &a);
	check_tree(&t);
	ASSERT_EQ(t.count, 1);
	ASSERT_TRUE(a.n.subtree_last == 199);

	/* Inclusive at both ends. */
	ASSERT_TRUE(uhmm__itree_first(&t, 0, 99) == NULL);
	ASSERT_TRUE(uhmm__itree_first(&t, 0, 100) == &a.n);
	ASSERT_TRUE(uhmm__itree_first(&t, 100, 100) == &a.n);
	ASSERT_TRUE(uhmm__itree_first(&t, 150, 160) == &a.n);
	ASSERT_TRUE(uhmm__itree_first(&t, 199, 199) == &a.n);
	ASSERT_TRUE(uhmm__itree_first(&t, 199, 1000) == &a.n);
	ASSERT_TRUE(uhmm__itree_first(&t, 200, 1000) == NULL);
	ASSERT_TRUE(uhmm__itree_first(&t, 200, 200) == NULL);
	ASSERT_TRUE(uhmm__itree_first(&t, 0, UINT64_MAX) == &a.n);
	ASSERT_TRUE(uhmm__itree_next(&a.n, 0, UINT64_MAX) == NULL);
	remove_node(&t, &a);

	/* Extreme values. */
	struct tnode b, c, d;
	set_iv(&b, 0, 0);
	set_iv(&c, UINT64_MAX, UINT64_MAX);
	set_iv(&d, 0, UINT64_MAX);
	insert(&t, &b);
	insert(&t, &c);
	check_tree(&t);
	ASSERT_TRUE(uhmm__itree_first(&t, 0, 0) == &b.n);
	ASSERT_TRUE(uhmm__itree_next(&b.n, 0, 0) == NULL);
	ASSERT_TRUE(uhmm__itree_first(&t, 1, UINT64_MAX - 1) == NULL);
	ASSERT_TRUE(uhmm__itree_first(&t, UINT64_MAX, UINT64_MAX) == &c.n);
	ASSERT_TRUE(uhmm__itree_first(&t, 0, UINT64_MAX) == &b.n);
	ASSERT_TRUE(uhmm__itree_next(&b.n, 0, UINT64_MAX) == &c.n);
	ASSERT_TRUE(uhmm__itree_next(&c.n, 0, UINT64_MAX) == NULL);
	insert(&t, &d);
	check_tree(&t);
	ASSERT_TRUE(t.root->subtree_last == UINT64_MAX);
	struct uhmm__itree_node *it = uhmm__itree_first(&t, 5, 6);
	ASSERT_TRUE(it == &d.n);
	ASSERT_TRUE(uhmm__itree_next(it, 5, 6) == NULL);
	remove_node(&t, &b);
	remove_node(&t, &c);
	remove_node(&t, &d);
	ASSERT_EQ(t.count, 0);
	ASSERT_TRUE(t.root == NULL);
}

TEST(touching_neighbours)
{
	struct uhmm__itree t = { 0 };
	struct tnode v[8];

	/* [0,9] [10,19] ... [70,79] */
	for (int i = 0; i < 8; i++) {
		set_iv(&v[i], (uint64_t)i * 10, (uint64_t)i * 10 + 9);
		insert(&t, &v[i]);
	}
	check_tree(&t);
	for (int i = 0; i < 8; i++) {
		uint64_t s = (uint64_t)i * 10, l = s + 9;
		struct uhmm__itree_node *it = uhmm__itree_first(&t, s, l);
		ASSERT_TRUE(it == &v[i].n);
		ASSERT_TRUE(uhmm__itree_next(it, s, l) == NULL);
		/* Query [l, l + 1] touches v[i] and v[i + 1]. */
		it = uhmm__itree_first(&t, l, l + 1);
		ASSERT_TRUE(it == &v[i].n);
		it = uhmm__itree_next(it, l, l + 1);
		ASSERT_TRUE(it == (i < 7 ? &v[i + 1].n : NULL));
	}
	for (uint64_t s = 0; s < 90; s++)
		for (uint64_t l = s; l < 90; l += 3)
			check_query(&t, v, 8, s, l);
}

TEST(duplicates)
{
	struct uhmm__itree t = { 0 };
	enum { N = 64 };
	struct tnode v[N];

	/* Identical intervals, and some that share only the start. */
	for (int i = 0; i < N; i++) {
		set_iv(&v[i], 1000, i % 2 ? 2000 : 1000 + (uint64_t)i);
		insert(&t, &v[i]);
		check_tree(&t);
	}
	ASSERT_EQ(t.count, N);
	/* All are enumerated once, in address order (array order). */
	int k = 0;
	for (struct uhmm__itree_node *it = uhmm__itree_first(&t, 0, 5000); it;
	     it = uhmm__itree_next(it, 0, 5000))
		ASSERT_TRUE(it == &v[k++].n);
	ASSERT_EQ(k, N);
	check_query(&t, v, N, 1000, 1000);
	check_query(&t, v, N, 1040, 1040);
	check_query(&t, v, N, 1063, 1999);
	check_query(&t, v, N, 1064, 1999);
	check_query(&t, v, N, 2000, 2000);
	check_query(&t, v, N, 2001, 3000);
	check_query(&t, v, N, 0, 999);
	/* Remove every third one, then the rest, checking as we go. */
	for (int i = 0; i < N; i += 3) {
		remove_node(&t, &v[i]);
		check_tree(&t);
		check_query(&t, v, N, 1000, 1030);
	}
	for (int i = 0; i < N; i++) {
		if (!v[i].in_tree)
			continue;
		remove_node(&t, &v[i]);
		check_tree(&t);
		check_query(&t, v, N, 1030, 1050);
	}
	ASSERT_EQ(t.count, 0);
	ASSERT_TRUE(t.root == NULL);
}

/* Sorted inserts and removals from both ends (the rotation-heavy cases). */
TEST(sequential)
{
	struct uhmm__itree t = { 0 };
	enum { N = 4096 };
	static struct tnode v[N];

	for (int i = 0; i < N; i++) {
		set_iv(&v[i], (uint64_t)i * 2, (uint64_t)i * 2 + 2);
		insert(&t, &v[i]);
	}
	check_tree(&t);
	check_query(&t, v, N, 100, 100);
	check_query(&t, v, N, 1001, 1001);
	for (int i = 0; i < N / 2; i++) {
		remove_node(&t, &v[i]);
		remove_node(&t, &v[N - 1 - i]);
		if (i % 128 == 0) {
			check_tree(&t);
			check_query(&t, v, N, (uint64_t)N - 5, (uint64_t)N + 5);
		}
	}
	ASSERT_EQ(t.count, 0);
	for (int i = N - 1; i >= 0; i--)
		insert(&t, &v[i]);
	check_tree(&t);
	/* Remove the root repeatedly: always the two-children path. */
	while (t.root) {
		remove_node(&t, TN(t.root));
		if (t.count % 256 == 0)
			check_tree(&t);
	}
	ASSERT_EQ(t.count, 0);
}

static uint64_t random_start(uint64_t span)
{
	/* Sometimes pin to a small set of starts to force duplicates. */
	if (rnd_below(8) == 0)
		return rnd_below(16) * (span / 16);
	return rnd_below(span);
}

static uint64_t random_len(void)
{
	switch (rnd_below(4)) {
	case 0:
		return 0;
	case 1:
		return rnd_below(16);
	case 2:
		return rnd_below(512);
	default:
		return rnd_below(8192);
	}
}

static void random_query(const struct uhmm__itree *t, struct tnode *pool, size_t n,
			 uint64_t span)
{
	uint64_t s = rnd_below(span + 16384);
	uint64_t l = s + random_len();

	check_query(t, pool, n, s, l);
}

TEST(random_differential)
{
	struct uhmm__itree t = { 0 };
	enum { POOL = 1500, OPS = 20000 };
	const uint64_t span = 50000;
	static struct tnode pool[POOL];

	rng_state = 0x9e3779b97f4a7c15ull;
	for (int op = 0; op < OPS; op++) {
		struct tnode *tn = &pool[rnd_below(POOL)];

		if (tn->in_tree) {
			remove_node(&t, tn);
		} else {
			uint64_t s = random_start(span);

			set_iv(tn, s, s + random_len());
			insert(&t, tn);
		}
		if (op % 8 == 7) {
			check_tree(&t);
			for (int q = 0; q < 4; q++)
				random_query(&t, pool, POOL, span);
		}
	}
	ASSERT_GT(t.count, 0);
	/* Whole range, then drain. */
	check_query(&t, pool, POOL, 0, UINT64_MAX);
	for (int i = 0; i < POOL; i++) {
		if (!pool[i].in_tree)
			continue;
		remove_node(&t, &pool[i]);
		if (i % 16 == 0) {
			check_tree(&t);
			random_query(&t, pool, POOL, span);
		}
	}
	ASSERT_EQ(t.count, 0);
	ASSERT_TRUE(t.root == NULL);
}

static double ms_since(uint64_t t0)
{
	return (double)(th_now_ns() - t0) / 1e6;
}

TEST(hundred_thousand)
{
	struct uhmm__itree t = { 0 };
	enum { N = 100000, Q = 100000, BRUTE_Q = 100 };
	const uint64_t span = 1ull << 36;
	struct tnode *v = calloc(N, sizeof(*v));
	uint32_t *order = calloc(N, sizeof(*order));

	ASSERT_NOT_NULL(v);
	ASSERT_NOT_NULL(order);
	rng_state = 0x2545f4914f6cdd1dull;

	uint64_t t0 = th_now_ns();
	for (int i = 0; i < N; i++) {
		uint64_t s = rnd_below(span);

		v[i].n.start = s;
		v[i].n.last = s + rnd_below(1u << 24);
		uhmm__itree_insert(&t, &v[i].n);
	}
	double ins_ms = ms_since(t0);
	for (int i = 0; i < N; i++)
		v[i].in_tree = 1;
	ASSERT_EQ(t.count, N);
	check_tree(&t);

	t0 = th_now_ns();
	uint64_t hits = 0;
	for (int q = 0; q < Q; q++) {
		uint64_t s = rnd_below(span), l = s + rnd_below(1u << 22);

		for (struct uhmm__itree_node *it = uhmm__itree_first(&t, s, l); it;
		     it = uhmm__itree_next(it, s, l))
			hits++;
	}
	double q_ms = ms_since(t0);
	ASSERT_GT(hits, 0);

	for (int q = 0; q < BRUTE_Q; q++) {
		uint64_t s = rnd_below(span);

		check_query(&t, v, N, s, s + rnd_below(1u << 24));
	}

	/* Remove in random order. */
	for (uint32_t i = 0; i < N; i++)
		order[i] = i;
	for (uint32_t i = N - 1; i > 0; i--) {
		uint32_t j = (uint32_t)rnd_below(i + 1), x = order[i];

		order[i] = order[j];
		order[j] = x;
	}
	t0 = th_now_ns();
	for (int i = 0; i < N; i++)
		uhmm__itree_remove(&t, &v[order[i]].n);
	double rm_ms = ms_since(t0);
	ASSERT_EQ(t.count, 0);
	ASSERT_TRUE(t.root == NULL);

	printf("# itree 100k: insert %.1f ms, %d queries %.1f ms (%" PRIu64
	       " hits), remove %.1f ms\n", ins_ms, Q, q_ms, hits, rm_ms);
	/* Generous: catches a lost log factor (an O(n) query), not noise. */
	double lim = 3000.0;
	const char *scale = getenv("UHMM_TEST_TIMEOUT_SCALE");
	if (scale && atoi(scale) > 1)
		lim *= atoi(scale);
	ASSERT_TRUE(ins_ms + q_ms + rm_ms < lim);
	free(order);
	free(v);
}

/* Mixed insert/remove at scale with periodic full checks. */
TEST(churn_with_checks)
{
	struct uhmm__itree t = { 0 };
	enum { N = 20000 };
	struct tnode *v = calloc(N, sizeof(*v));

	ASSERT_NOT_NULL(v);
	rng_state = 12345;
	for (int round = 0; round < 6; round++) {
		for (int i = 0; i < N; i++) {
			struct tnode *tn = &v[rnd_below(N)];

			if (tn->in_tree) {
				remove_node(&t, tn);
			} else {
				uint64_t s = random_start(1u << 20);

				set_iv(tn, s, s + random_len());
				insert(&t, tn);
			}
		}
		check_tree(&t);
		for (int q = 0; q < 50; q++)
			random_query(&t, v, N, 1u << 20);
	}
	free(v);
}

TEST_MAIN()
