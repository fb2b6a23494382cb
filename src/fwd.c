/* SPDX-License-Identifier: MIT */
/*
 * fwd.c - forwarded copies: a copy between two host frames that is done
 * later, by the move that needs its result.
 *
 * A CPU fault on a page of a host-memory pool copies the device page d into
 * a new system frame s (uhmm_migrate_copy), and finalize moves s into the
 * CPU view: two UFFDIO_MOVEs, each a page-table change and a TLB flush, for
 * one page (the self-service fault profile: the copy 31% of the handler's
 * time, the install 27%).  A forwarded copy records instead that s's data
 * is d's page (s->fwd = d, d->fwd = s, FWD_DST on s), and finalize moves
 * d's page straight to the faulting address (uhmm__fwd_take): one move.
 *
 * Anything else that needs either frame's host memory first resolves the
 * link (uhmm__fwd_resolve): d's page is copied into s, which is what the
 * copy would have done, and d keeps its data as a copy's source does (the
 * driver may still read it).  Freeing d while the link stands moves its
 * page into s instead (nothing to keep); freeing s drops the link (d keeps
 * its own).  Only uhmm's own copy of one page to RAM (devcopy.c) makes
 * links: the frames are then the migration's (s new, d locked as its
 * source), and every other user of them is a driver's call that resolves
 * first.
 *
 * The same for a driver-owned pool, whose data comes to RAM through a
 * staging slot: the driver writes one page of uhmm's page bounce, and
 * instead of UFFDIO_COPY into s and UFFDIO_MOVE of s into the CPU view,
 * s is linked to that bounce page (s->fwd = FWD_PAGE_TAG | its slot) and
 * finalize copies it straight to the faulting address (uhmm__fwd_take_page):
 * one ioctl.  A resolve copies the bounce page into s; freeing s drops it.
 * The bounce page is given back when the link ends.
 *
 * as->fwd_lock (a leaf) guards the links.  A resolve marks the pair
 * FWD_BUSY and moves the page without the lock (an ioctl that may retry
 * must not hold a uhmm lock); whoever meets a busy pair waits for it.
 */
#include "internal.h"
#include "compat.h"

#include <sched.h>
#include <string.h>

static uint32_t fwd_peek(const struct frame *f)
{
	return __atomic_load_n(&f->fwd, __ATOMIC_ACQUIRE);
}

/* A link to a page of as->page_bounce: the tag and the slot's number. */
#define FWD_PAGE_TAG 0xffffff00u
static bool page_link(uint32_t v)
{
	return (v & FWD_PAGE_TAG) == FWD_PAGE_TAG;
}
static char *link_page(struct uhmm__as *as, uint32_t v)
{
	return as->page_bounce.base + (uint64_t)(v & ~FWD_PAGE_TAG) * PG_SIZE;
}

bool uhmm__fwd_link_page(struct uhmm__as *as, uint64_t s, char *page)
{
	struct frame *fs = uhmm__frame(as, s);
	uint64_t k = (uint64_t)(page - as->page_bounce.base) / PG_SIZE;
	if (!fs || frame_populated(fs) || k >= as->page_bounce.nslots)
		return false;
	bool ok = false;
	uhmm__lock(&as->fwd_lock);
	if (!fs->fwd) {
		fs->fwd_flags = FWD_DST;
		__atomic_store_n(&fs->fwd, FWD_PAGE_TAG | (uint32_t)k, __ATOMIC_RELEASE);
		ok = true;
	}
	uhmm__unlock(&as->fwd_lock);
	return ok;
}

/* The bounce page's data into frame s (new pages, not zeroed first). */
static void page_into_frame(struct uhmm__as *as, uint64_t s, const char *page)
{
	if (uhmm__frame_copy_in(as, s, 1, page))
		memcpy((void *)(uintptr_t)uhmm__frame_addr(as, s), page, PG_SIZE);
}

bool uhmm__fwd_link(struct uhmm__as *as, uint64_t s, uint64_t d)
{
	struct frame *fs = uhmm__frame(as, s), *fd = uhmm__frame(as, d);
	if (!fs || !fd || s == d || frame_populated(fs))
		return false;
	bool ok = false;
	uhmm__lock(&as->fwd_lock);
	if (!fs->fwd && !fd->fwd) {
		fs->fwd_flags = FWD_DST;
		fd->fwd_flags = 0;
		__atomic_store_n(&fd->fwd, (uint32_t)s, __ATOMIC_RELEASE);
		__atomic_store_n(&fs->fwd, (uint32_t)d, __ATOMIC_RELEASE);
		ok = true;
	}
	uhmm__unlock(&as->fwd_lock);
	return ok;
}

/* fwd_lock held: drop the link of the pair s <- d (d: a frame, or a bounce page's tag). */
static void unlink_locked(struct uhmm__as *as, uint64_t s, uint64_t d)
{
	struct frame *fs = &as->frames[s];
	__atomic_store_n(&fs->fwd, 0, __ATOMIC_RELEASE);
	fs->fwd_flags = 0;
	if (page_link((uint32_t)d)) {
		uhmm__staging_put(&as->page_bounce, link_page(as, (uint32_t)d));
		return;
	}
	struct frame *fd = &as->frames[d];
	__atomic_store_n(&fd->fwd, 0, __ATOMIC_RELEASE);
	fd->fwd_flags = 0;
}

/*
 * The pair f is part of, with fwd_lock held on success (*s the copy's
 * destination): 1.  0: f is not linked (any more), -EBUSY: the pair is
 * being resolved (the caller yields and looks again); the lock is not held.
 */
static int lock_pair(struct uhmm__as *as, uint64_t f, uint64_t *s, uint64_t *d)
{
	struct frame *ff = &as->frames[f];
	if (!fwd_peek(ff))
		return 0;
	uhmm__lock(&as->fwd_lock);
	if (!ff->fwd) {
		uhmm__unlock(&as->fwd_lock);
		return 0;
	}
	*s = ff->fwd_flags & FWD_DST ? f : ff->fwd;
	*d = ff->fwd_flags & FWD_DST ? ff->fwd : f;
	if (as->frames[*s].fwd_flags & FWD_BUSY) {
		uhmm__unlock(&as->fwd_lock);
		return -EBUSY;
	}
	return 1;
}

/* The copy that was put off: d's page into s (s reads zeros if d has none). */
void uhmm__fwd_copy(struct uhmm__as *as, uint64_t s, uint64_t d)
{
	struct frame *fs = &as->frames[s], *fd = &as->frames[d];
	uint64_t sa = uhmm__frame_addr(as, s), da = uhmm__frame_addr(as, d);
	int rc = uhmm__uffd_move(as, sa, da, PG_SIZE, false, NULL);
	if (rc == 0) {
		frame_mark_populated(fs, 1);
		frame_mark_populated(fd, 0);
	} else if (rc != -ENOENT) {
		memcpy((void *)(uintptr_t)sa, (const void *)(uintptr_t)da, PG_SIZE);
		frame_mark_populated(fs, 1);
		frame_mark_populated(fd, 1);
	}
}

/*
 * The same, keeping d's page: a copy.  A frame that holds no page is not
 * read (a read would map the zero page into the arena, and a later move
 * into the frame would find it occupied): s then reads zeros, as d does.
 */
static void fwd_dup(struct uhmm__as *as, uint64_t s, uint64_t d)
{
	if (!frame_populated(&as->frames[d]))
		return;
	memcpy((void *)(uintptr_t)uhmm__frame_addr(as, s),
	       (const void *)(uintptr_t)uhmm__frame_addr(as, d), PG_SIZE);
	frame_mark_populated(&as->frames[s], 1);
}

/* End the link f is part of: d's page copied (move: moved) into s. */
static void resolve(struct uhmm__as *as, uint64_t f, bool move)
{
	uint64_t s, d;
	int st;
	if (!uhmm__frame(as, f))
		return;
	while ((st = lock_pair(as, f, &s, &d)) == -EBUSY)
		sched_yield();
	if (st <= 0)
		return;
	as->frames[s].fwd_flags |= FWD_BUSY;
	uhmm__unlock(&as->fwd_lock);
	if (page_link((uint32_t)d))
		page_into_frame(as, s, link_page(as, (uint32_t)d));
	else if (move)
		uhmm__fwd_copy(as, s, d);
	else
		fwd_dup(as, s, d);
	uhmm__lock(&as->fwd_lock);
	unlink_locked(as, s, d);
	uhmm__unlock(&as->fwd_lock);
}

void uhmm__fwd_resolve(struct uhmm__as *as, uint64_t f)
{
	resolve(as, f, false);
}

uint64_t uhmm__fwd_take(struct uhmm__as *as, uint64_t s)
{
	uint64_t ps, d;
	int st;
	if (!uhmm__frame(as, s))
		return 0;
	while ((st = lock_pair(as, s, &ps, &d)) == -EBUSY)
		sched_yield();
	if (st <= 0)
		return 0;
	if (ps != s || page_link((uint32_t)d)) {
		uhmm__unlock(&as->fwd_lock);
		uhmm__fwd_resolve(as, s);  /* s is the source of a copy: do it first */
		return 0;
	}
	unlink_locked(as, s, d);
	uhmm__unlock(&as->fwd_lock);
	return d;
}

char *uhmm__fwd_take_page(struct uhmm__as *as, uint64_t s)
{
	uint64_t ps, d;
	int st;
	if (!uhmm__frame(as, s) || !page_link(fwd_peek(&as->frames[s])))
		return NULL;
	while ((st = lock_pair(as, s, &ps, &d)) == -EBUSY)
		sched_yield();
	if (st <= 0)
		return NULL;
	if (!page_link((uint32_t)d)) {
		uhmm__unlock(&as->fwd_lock);
		return NULL;
	}
	/* unlinked, the page still taken: the caller gives it back */
	__atomic_store_n(&as->frames[s].fwd, 0, __ATOMIC_RELEASE);
	as->frames[s].fwd_flags = 0;
	uhmm__unlock(&as->fwd_lock);
	return link_page(as, (uint32_t)d);
}

bool uhmm__fwd_pair(struct uhmm__as *as, uint64_t s, uint64_t d)
{
	struct frame *fs = uhmm__frame(as, s);
	if (!fs || !d || fwd_peek(fs) != d)
		return false;
	uhmm__lock(&as->fwd_lock);
	bool pair = fs->fwd == d && (fs->fwd_flags & FWD_DST);
	uhmm__unlock(&as->fwd_lock);
	return pair;
}

void uhmm__fwd_freed(struct uhmm__as *as, uint64_t f)
{
	uint64_t s, d;
	int st;
	while ((st = lock_pair(as, f, &s, &d)) == -EBUSY)
		sched_yield();
	if (st <= 0)
		return;
	if (s == f) {
		/* the destination goes: the source keeps its own page */
		unlink_locked(as, s, d);
		uhmm__unlock(&as->fwd_lock);
		return;
	}
	uhmm__unlock(&as->fwd_lock);
	resolve(as, f, true);  /* the source goes: its page to s first */
}
