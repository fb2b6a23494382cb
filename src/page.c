/* SPDX-License-Identifier: MIT */
/*
 * page.c - page metadata: the state and the page lock of every page that
 * ever left SYSTEM, kept in 2 MiB blocks in a hash under pt_lock.  The
 * bottom of the page-handling layers: calls nothing of uhmm's but the
 * allocator.
 */
#include "internal.h"
#include "compat.h"

#include <unistd.h>

/* A page's metadata is consistent (the debug build checks it on changes). */
bool uhmm__pmeta_valid(struct uhmm__as *as, const struct pmeta *pm)
{
	if (pm->state > PS_EXCLUSIVE || pm->locked > LOCK_FAULT)
		return false;
	if (pm->state == PS_SYSTEM)
		return true;
	/* a page off the CPU has a live frame of this runtime behind it */
	const struct frame *f = uhmm__frame(as, pm->frame);
	return f && frame_pool(f) && frame_ref(f) > 0;
}

/* ---- page metadata ----------------------------------------------------- */

static uint64_t hash_idx(struct uhmm__as *as, uint64_t base)
{
	uint64_t k = (base >> BLOCK_SHIFT) * 0x9E3779B97F4A7C15ull;
	return k >> 40 & (as->hash_size - 1);
}

/* Caller holds pt_lock.  NULL if the page never left SYSTEM and !create. */
struct pmeta *uhmm__pmeta(struct uhmm__as *as, uint64_t addr, bool create)
{
	uhmm__assert_pt_held(as);
	uint64_t base = addr & ~((1ULL << BLOCK_SHIFT) - 1);
	uint64_t h = hash_idx(as, base);
	struct block *b;
	for (b = as->hash[h]; b; b = b->hnext)
		if (b->base == base)
			return &b->pg[(addr - base) >> PG_SHIFT];
	if (!create)
		return NULL;
	b = uhmm__zalloc(sizeof(*b));
	if (!b)
		return NULL;
	b->base = base;
	b->hnext = as->hash[h];
	as->hash[h] = b;
	return &b->pg[(addr - base) >> PG_SHIFT];
}

/* Caller holds pt_lock: does addr's 2 MiB block hold any metadata? */
bool uhmm__has_block(struct uhmm__as *as, uint64_t addr)
{
	uhmm__assert_pt_held(as);
	return uhmm__pmeta(as, addr, false) != NULL;
}

static bool pmeta_idle(const struct pmeta *pm)
{
	return pm->state == PS_SYSTEM && !pm->locked && !pm->waiters;
}

/*
 * Is every page of block b idle?  Looked at outward from page k, the one
 * that changed: pages change in runs (a migration unlocks its pages in
 * address order), so a busy page is usually next to it.  A scan from the
 * block's start instead cost O(k) for page k, quadratic over a 2 MiB run:
 * 5.5 % of a THP migration's cycles (perf, bench_uhmm BENCH_ONLY=THP).
 */
static bool block_idle(const struct block *b, unsigned k)
{
	if (!pmeta_idle(&b->pg[k]))
		return false;
	for (unsigned d = 1; d <= k || k + d < BLOCK_PAGES; d++) {
		if (k + d < BLOCK_PAGES && !pmeta_idle(&b->pg[k + d]))
			return false;
		if (d <= k && !pmeta_idle(&b->pg[k - d]))
			return false;
	}
	return true;
}

/* Caller holds pt_lock; frees the block when its last page went idle. */
void uhmm__pmeta_changed(struct uhmm__as *as, uint64_t addr, struct pmeta *pm)
{
	uhmm__assert_pt_held(as);
	uhmm__assert(!pm || uhmm__pmeta_valid(as, pm));
	uint64_t base = addr & ~((1ULL << BLOCK_SHIFT) - 1);
	uint64_t h = hash_idx(as, base);
	struct block **pp, *b;
	for (pp = &as->hash[h]; (b = *pp); pp = &b->hnext) {
		if (b->base != base)
			continue;
		if (!block_idle(b, (unsigned)((addr - base) >> PG_SHIFT)))
			return;
		*pp = b->hnext;
		uhmm__free(b, sizeof(*b));
		return;
	}
}

/* Caller holds pt_lock: wait until addr's page is unlocked.  Returns with it held. */
bool uhmm__page_lock_wait(struct uhmm__as *as, uint64_t addr)
{
	uhmm__assert_pt_held(as);
	bool waited = false;
	for (;;) {
		struct pmeta *pm = uhmm__pmeta(as, addr, false);
		if (!pm || !pm->locked)
			return waited;
		pm->waiters = 1;
		uhmm__pt_wait(as);
		waited = true;
	}
}

/* Caller holds pt_lock: release a page lock and wake whoever waits on it. */
void uhmm__page_unlock(struct uhmm__as *as, uint64_t addr, struct pmeta *pm)
{
	uhmm__assert_pt_held(as);
	TR('U', addr, 0, 4096, pm->state);
	pm->locked = LOCK_NONE;
	if (pm->waiters) {
		pm->waiters = 0;
		pthread_cond_broadcast(&as->pt_cond);
	}
	if (as->deferred_faults) {
		uint64_t one = 1;
		if (write(as->wake_fd, &one, sizeof(one)) < 0) {
			/* the counter saturating still leaves the service thread awake */
		}
	}
	uhmm__pmeta_changed(as, addr, pm);
}

/* Release addr's page lock (takes pt_lock), unless it is a fault's: a
 * LOCK_FAULT page stays locked, its fault unlocks it. */
void uhmm__page_release(struct uhmm__as *as, uint64_t addr)
{
	uhmm__pt_lock(as);
	uhmm__page_release_locked(as, addr);
	uhmm__pt_unlock(as);
}

/* uhmm__page_release() with pt_lock held (a caller unlocking many pages in one hold). */
void uhmm__page_release_locked(struct uhmm__as *as, uint64_t addr)
{
	uhmm__assert_pt_held(as);
	struct pmeta *pm = uhmm__pmeta(as, addr, false);
	if (pm && pm->locked != LOCK_FAULT)
		uhmm__page_unlock(as, addr, pm);
}

/* ---- the page walker --------------------------------------------------- */

/*
 * Caller holds pt_lock.  Calls fn for every page of [start, end) that has
 * metadata, in address order; a 2 MiB block without metadata is skipped
 * whole (all its pages are plain SYSTEM pages).  With WALK_UNLOCKED the walk
 * first waits until the page's lock is free (uhmm__page_lock_wait), so fn
 * sees it unlocked.  fn may drop and retake pt_lock: the walk looks the
 * next page up again.  A nonzero return of fn stops the walk, which returns
 * it with *at (if not NULL) at that page; 0 when it ran to the end.
 */
int uhmm__walk(struct uhmm__as *as, uint64_t start, uint64_t end, unsigned flags,
	       uhmm__walk_fn fn, void *arg, uint64_t *at)
{
	uhmm__assert_pt_held(as);
	for (uint64_t a = start; a < end;) {
		uint64_t bend = uhmm__block_end(a);
		if (bend > end || bend < a)
			bend = end;
		if (!uhmm__has_block(as, a)) {
			a = bend;
			continue;
		}
		for (; a < bend; a += PG_SIZE) {
			if (flags & WALK_UNLOCKED)
				uhmm__page_lock_wait(as, a);
			struct pmeta *pm = uhmm__pmeta(as, a, false);
			if (!pm)
				continue;  /* the block went idle while fn waited */
			int rc = fn(as, a, pm, arg);
			if (rc) {
				if (at)
					*at = a;
				return rc;
			}
		}
	}
	return 0;
}

/*
 * Caller holds pt_lock: a page anywhere in the address space whose
 * metadata satisfies pred (blocks in hash order, not address order), or 0.
 * For whole-process scans (fork, releasing every page of an owner), which
 * visit the blocks that exist instead of the address space.
 */
uint64_t uhmm__page_find_any(struct uhmm__as *as, uhmm__page_pred pred, const void *arg)
{
	uhmm__assert_pt_held(as);
	for (uint64_t h = 0; h < as->hash_size; h++)
		for (struct block *b = as->hash[h]; b; b = b->hnext)
			for (unsigned i = 0; i < BLOCK_PAGES; i++)
				if (pred(as, &b->pg[i], arg))
					return b->base + ((uint64_t)i << PG_SHIFT);
	return 0;
}
