/* SPDX-License-Identifier: MIT */
/*
 * devmem.c - device memory pools, the public API (dev_pagemap): create and
 * destroy a pool, allocate device and system pages, page references and
 * zone data, copies between frames (uhmm_page_copy*), uhmm_pfn_to_virt.
 * The frames themselves (arena, free lists, references) are frame.c; see
 * there for what a frame is and for driver-owned pools.
 */
#include "internal.h"
#include "compat.h"

#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#define ARENA_FRAMES (1ULL << 24)   /* 64 GiB of address space, reserved lazily */

/* ---- public API ------------------------------------------------------ */

static bool pool_listed(struct uhmm__as *as, const struct uhmm_devmem *mem)
{
	uhmm__lock(&as->arena_lock);
	struct uhmm_devmem *p = as->pools;
	while (p && p != mem)
		p = p->next;
	uhmm__unlock(&as->arena_lock);
	return p != NULL;
}

/* The runtime of a live pool; NULL for NULL, destroyed or foreign pools. */
static struct uhmm__as *pool_as(const struct uhmm_devmem *mem)
{
	struct uhmm__as *as = uhmm__as_peek();
	return mem && as && pool_listed(as, mem) ? as : NULL;
}

static int pool_create(enum uhmm_devmem_type type, const void *owner,
		       const struct uhmm_devmem_ops *ops,
		       const struct uhmm_devmem_copy_ops *copy_ops, unsigned int flags,
		       void *driver_data, uint64_t max_pages, struct uhmm_devmem **out)
{
	if (!out || !owner || !ops || max_pages == 0 ||
	    (type != UHMM_DEVMEM_PRIVATE && type != UHMM_DEVMEM_COHERENT))
		return -EINVAL;
	if (type == UHMM_DEVMEM_PRIVATE && !ops->migrate_to_ram)
		return -EINVAL;
	if (max_pages > UINT32_MAX)
		return -ENOMEM;
	int err = 0;
	struct uhmm__as *as = uhmm__as_get(&err);
	if (!as)
		return err;
	if (max_pages > as->arena_frames / 2)
		return -ENOMEM;
	struct uhmm_devmem *mem = uhmm__zalloc(sizeof(*mem));
	if (!mem)
		return -ENOMEM;
	pthread_mutex_init(&mem->lock, NULL);
	mem->as = as;
	mem->type = type;
	mem->owner = owner;
	mem->ops = ops;
	mem->driver_data = driver_data;
	mem->max_pages = max_pages;
	mem->owned = copy_ops != NULL;
	mem->copy_ops = copy_ops;
	mem->flags = flags;
	uhmm__lock(&as->arena_lock);
	mem->next = as->pools;
	as->pools = mem;
	uhmm__unlock(&as->arena_lock);
	*out = mem;
	return 0;
}

int uhmm_devmem_create(enum uhmm_devmem_type type, const void *owner,
		       const struct uhmm_devmem_ops *ops, void *driver_data,
		       uint64_t max_pages, struct uhmm_devmem **out)
{
	return pool_create(type, owner, ops, NULL, 0, driver_data, max_pages, out);
}

int uhmm_devmem_create_owned(enum uhmm_devmem_type type, const void *owner,
			     const struct uhmm_devmem_ops *ops,
			     const struct uhmm_devmem_copy_ops *copy_ops, unsigned int flags,
			     void *driver_data, uint64_t max_pages, struct uhmm_devmem **out)
{
	/* Coherent memory is CPU-mapped, hence host memory: not driver-owned. */
	if (type != UHMM_DEVMEM_PRIVATE || !copy_ops || !copy_ops->copy ||
	    (flags & ~UHMM_DEVMEM_DEFER_FAULTS))
		return -EINVAL;
	return pool_create(type, owner, ops, copy_ops, flags, driver_data, max_pages, out);
}

int uhmm_devmem_is_owned(const struct uhmm_devmem *mem)
{
	return pool_as(mem) ? mem->owned : -EINVAL;
}

int uhmm_devmem_set_staging(struct uhmm_devmem *mem, void *addr, uint64_t len)
{
	if (uhmm_devmem_is_owned(mem) != 1 || !addr || len < PG_SIZE ||
	    ((uintptr_t)addr & (PG_SIZE - 1)) || (len & (PG_SIZE - 1)))
		return -EINVAL;
	return uhmm__staging_set(mem, addr, len);
}

int uhmm_devmem_destroy(struct uhmm_devmem *mem)
{
	struct uhmm__as *as = pool_as(mem);
	if (!as)
		return -EINVAL;
	/* Lock order: pool->lock before arena_lock, never both here. */
	uhmm__lock(&mem->lock);
	/*
	 * A held frame (uhmm__frame_put_hold) is free already but its page is
	 * still on its way to the CPU: the faulting thread may be awake before
	 * finalize unholds it.  Holds last one ioctl: wait for them (1 s at
	 * most), so that a pool emptied by faults can be destroyed at once.
	 */
	for (uint64_t t0 = uhmm__now_ns();
	     mem->held && !mem->dead && mem->allocated == mem->freed &&
	     uhmm__now_ns() - t0 < 1000000000ull;) {
		uhmm__unlock(&mem->lock);
		sched_yield();
		uhmm__lock(&mem->lock);
	}
	if (mem->allocated != mem->freed || mem->held || mem->dead) {
		int rc = mem->dead ? -EINVAL : -EBUSY;
		uhmm__unlock(&mem->lock);
		return rc;
	}
	mem->dead = true;
	uhmm__unlock(&mem->lock);
	uhmm__lock(&as->arena_lock);
	for (struct uhmm_devmem **pp = &as->pools; *pp; pp = &(*pp)->next) {
		if (*pp == mem) {
			*pp = mem->next;
			break;
		}
	}
	uhmm__unlock(&as->arena_lock);
	uhmm__pool_release_chunks(as, mem);
	pthread_mutex_destroy(&mem->lock);
	uhmm__free(mem, sizeof(*mem));
	return 0;
}

int uhmm_devmem_alloc(struct uhmm_devmem *mem, uint64_t *page)
{
	struct uhmm__as *as = pool_as(mem);
	if (!as || !page)
		return -EINVAL;
	return uhmm__frame_alloc(as, mem, page);
}

long uhmm_devmem_alloc_many(struct uhmm_devmem *mem, uint64_t n, uint64_t *pages)
{
	struct uhmm__as *as = pool_as(mem);
	if (!as || !pages || n == 0)
		return -EINVAL;
	return uhmm__frame_alloc_many(as, mem, n, pages);
}

long uhmm_sys_page_alloc_many(uint64_t n, uint64_t *pages)
{
	int err = 0;
	struct uhmm__as *as = uhmm__as_get(&err);
	if (!as)
		return err;
	if (!pages || n == 0)
		return -EINVAL;
	return uhmm__frame_alloc_many(as, as->syspool, n, pages);
}

int uhmm_sys_page_alloc(uint64_t *page)
{
	int err = 0;
	struct uhmm__as *as = uhmm__as_get(&err);
	if (!as)
		return err;
	if (!page)
		return -EINVAL;
	int rc = uhmm__frame_alloc(as, as->syspool, page);
	return rc;
}

int uhmm_devmem_alloc_huge(struct uhmm_devmem *mem, uint64_t *page)
{
	struct uhmm__as *as = pool_as(mem);
	if (!as || !page)
		return -EINVAL;
	return uhmm__frame_alloc_huge(as, mem, page);
}

int uhmm_sys_page_alloc_huge(uint64_t *page)
{
	int err = 0;
	struct uhmm__as *as = uhmm__as_get(&err);
	if (!as)
		return err;
	if (!page)
		return -EINVAL;
	return uhmm__frame_alloc_huge(as, as->syspool, page);
}

int uhmm_page_order(uint64_t page)
{
	struct uhmm__as *as = uhmm__as_peek();
	struct frame *f = as ? uhmm__frame(as, page) : NULL;
	if (!f || !frame_pool(f) || !frame_ref(f))
		return -EINVAL;
	return uhmm__frame_is_huge(as, page) ? HUGE_ORDER : 0;
}

/*
 * A live frame (ref > 0) of this runtime, or NULL; with its pool locked
 * (the caller unlocks) so that the fields read are consistent.
 */
static struct frame *lock_live_frame(uint64_t page, struct uhmm__as **asp)
{
	struct uhmm__as *as = uhmm__as_peek();
	struct frame *f = as ? uhmm__frame(as, page) : NULL;
	struct uhmm_devmem *pool = f ? __atomic_load_n(&f->pool, __ATOMIC_ACQUIRE) : NULL;
	if (!pool)
		return NULL;
	uhmm__lock(&pool->lock);
	if (frame_pool(f) != pool || f->ref == 0) {
		uhmm__unlock(&pool->lock);
		return NULL;
	}
	if (asp)
		*asp = as;
	return f;
}

static struct frame *live_frame(uint64_t page, struct uhmm__as **asp)
{
	struct frame *f = lock_live_frame(page, asp);
	if (f)
		uhmm__unlock(&frame_pool(f)->lock);
	return f;
}

int uhmm_devmem_page_get(uint64_t page)
{
	struct frame *f = lock_live_frame(page, NULL);
	if (!f)
		return -EINVAL;
	__atomic_add_fetch(&f->ref, 1, __ATOMIC_ACQ_REL);
	uhmm__unlock(&frame_pool(f)->lock);
	return 0;
}

int uhmm_devmem_page_put(uint64_t page)
{
	struct uhmm__as *as;
	struct frame *f = live_frame(page, &as);
	if (!f)
		return -EINVAL;
	uhmm__frame_put(as, page);
	return 0;
}

struct uhmm_devmem *uhmm_page_devmem(uint64_t page)
{
	struct uhmm__as *as;
	struct frame *f = live_frame(page, &as);
	struct uhmm_devmem *p = f ? frame_pool(f) : NULL;
	return p && p != as->syspool ? p : NULL;
}

enum uhmm_devmem_type uhmm_devmem_type(const struct uhmm_devmem *mem)
{
	return mem ? (enum uhmm_devmem_type)mem->type : (enum uhmm_devmem_type)0;
}

const void *uhmm_devmem_owner(const struct uhmm_devmem *mem)
{
	return mem ? mem->owner : NULL;
}

void *uhmm_devmem_driver_data(const struct uhmm_devmem *mem)
{
	return mem ? mem->driver_data : NULL;
}

void *uhmm_page_zone_data(uint64_t page)
{
	struct uhmm__as *as;
	struct frame *f = lock_live_frame(page, &as);
	if (!f)
		return NULL;
	void *d = f->zone_data;
	/* a tail of a whole huge page: the driver's data is the head's */
	struct frame *h = &as->frames[page & ~(uint64_t)(CHUNK_FRAMES - 1)];
	if (!d && h != f && frame_order(h) == HUGE_ORDER)
		d = h->zone_data;
	uhmm__unlock(&frame_pool(f)->lock);
	return d;
}

int uhmm_page_set_zone_data(uint64_t page, void *data)
{
	struct frame *f = lock_live_frame(page, NULL);
	if (!f)
		return -EINVAL;
	f->zone_data = data;
	uhmm__unlock(&frame_pool(f)->lock);
	return 0;
}

/*
 * A page's index is its name inside its pool, fixed while the pool owns it:
 * valid for a free page too (a page_free callback may ask).
 */
int64_t uhmm_devmem_page_index(uint64_t page)
{
	struct uhmm__as *as = uhmm__as_peek();
	struct frame *f = as ? uhmm__frame(as, page) : NULL;
	struct uhmm_devmem *p = f ? frame_pool(f) : NULL;
	if (!p || !p->type)
		return -EINVAL;  /* not a device page (system frames have none) */
	uhmm__lock(&p->lock);
	int64_t idx = frame_pool(f) == p ? (int64_t)f->index : -EINVAL;
	uhmm__unlock(&p->lock);
	return idx;
}

uint64_t uhmm_page_addr(uint64_t page)
{
	struct frame *f = lock_live_frame(page, NULL);
	if (!f)
		return 0;
	uint64_t a = f->addr;
	uhmm__unlock(&frame_pool(f)->lock);
	return a;
}

int uhmm_devmem_stats(const struct uhmm_devmem *mem, struct uhmm_devmem_stats *st)
{
	if (!pool_as(mem) || !st)
		return -EINVAL;
	struct uhmm_devmem *m = (struct uhmm_devmem *)mem;
	uhmm__lock(&m->lock);
	*st = (struct uhmm_devmem_stats){
		.capacity = m->max_pages,
		.reserved = (uint64_t)m->nchunks * CHUNK_FRAMES,
		.allocated = m->allocated,
		.freed = m->freed,
		.in_use = m->allocated - m->freed,
		.alloc_failures = __atomic_load_n(&m->alloc_failures, __ATOMIC_RELAXED),
	};
	uhmm__unlock(&m->lock);
	if (st->reserved > st->capacity)
		st->reserved = st->capacity;
	return 0;
}

int uhmm_devmem_chunk(const struct uhmm_devmem *mem, uint64_t idx, uint64_t *first,
		      uint64_t *count)
{
	if (!pool_as(mem) || !first || !count)
		return -EINVAL;
	struct uhmm_devmem *m = (struct uhmm_devmem *)mem;
	uhmm__lock(&m->lock);
	int rc = -ENOENT;
	if (idx < m->nchunks) {
		*first = m->chunks[idx];
		uint64_t left = m->max_pages - idx * CHUNK_FRAMES;
		*count = left < CHUNK_FRAMES ? left : CHUNK_FRAMES;
		rc = 0;
	}
	uhmm__unlock(&m->lock);
	return rc;
}

/*
 * The driver's copy.  Frames are host memory, so the page itself moves
 * (UFFDIO_MOVE, no data copy) when dst is empty; otherwise memcpy.  A src
 * that holds no page leaves dst reading zeros.
 */
int uhmm_page_copy(uint64_t dst, uint64_t src)
{
	struct uhmm__as *as;
	struct frame *fd = live_frame(dst, &as);
	struct frame *fs = live_frame(src, NULL);
	if (!fd || !fs || dst == src)
		return -EINVAL;
	if (frame_pool(fd)->owned || frame_pool(fs)->owned)
		return -EOPNOTSUPP;  /* no host memory: the driver copies */
	uhmm__fwd_resolve(as, dst);  /* their host memory as a copy left it */
	uhmm__fwd_resolve(as, src);
	if (uhmm__inject(INJ_COPY))
		return -EIO;
	uint64_t da = uhmm__frame_addr(as, dst), sa = uhmm__frame_addr(as, src);
	int rc = frame_populated(fd) ? -EEXIST : uhmm__uffd_move(as, da, sa, PG_SIZE, false, NULL);
	if (rc == 0) {
		frame_mark_populated(fd, 1);
		frame_mark_populated(fs, 0);
		return 0;
	}
	if (rc == -ENOENT) {
		if (frame_populated(fd))
			uhmm__frame_zap(as, dst);
		return 0;
	}
	memcpy((void *)(uintptr_t)da, (const void *)(uintptr_t)sa, PG_SIZE);
	frame_mark_populated(fd, 1);
	frame_mark_populated(fs, 1);  /* the read maps the zero page where src had none */
	return 0;
}

/*
 * How many pages from i on form a run that one UFFDIO_MOVE can copy: both
 * dst and src frames consecutive and live, dst empty.  *inj: the page after
 * the run had an injected copy failure (it ends the run).
 */
static uint64_t copy_run(const uint64_t *dst, const uint64_t *src, uint64_t i, uint64_t n,
			 bool *inj)
{
	uint64_t j = i + 1;
	*inj = false;
	while (j < n && j - i < MOVE_RUN_MAX && dst[j] == dst[j - 1] + 1 &&
	       src[j] == src[j - 1] + 1) {
		struct frame *fd = live_frame(dst[j], NULL), *fs = live_frame(src[j], NULL);
		if (!fd || !fs || frame_populated(fd) || frame_pool(fd)->owned ||
		    frame_pool(fs)->owned || frame_fwd_linked(fd) || frame_fwd_linked(fs))
			break;
		if (uhmm__inject(INJ_COPY)) {
			*inj = true;
			break;
		}
		j++;
	}
	return j - i;
}

/*
 * uhmm_page_copy() of n pages: pages whose frames are consecutive on both
 * sides move in one UFFDIO_MOVE (src holes stay holes: dst reads zeros).
 * An entry with dst or src 0 is skipped.  Returns the number of pages that
 * failed, with each one's errno in errs[] if given (0 for the others).
 */
/* Move pages [i, i + len) of a copy run; the ones that failed go one by one. */
static long copy_run_move(struct uhmm__as *as, const uint64_t *dst, const uint64_t *src,
			  uint64_t i, uint64_t len, int *errs)
{
	uint64_t moved = 0;
	int rc = uhmm__uffd_move_mode(as, uhmm__frame_addr(as, dst[i]), uhmm__frame_addr(as, src[i]),
				      len << PG_SHIFT, UFFDIO_MOVE_MODE_DONTWAKE |
				      UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, &moved);
	uint64_t ok = rc ? moved >> PG_SHIFT : len;
	long failed = 0;
	for (uint64_t k = i; k < i + len; k++) {
		int r = 0;
		if (k < i + ok) {
			frame_mark_populated(&as->frames[dst[k]], 1);
			frame_mark_populated(&as->frames[src[k]], 0);
		} else {
			r = uhmm_page_copy(dst[k], src[k]);  /* the single-page rules */
		}
		failed += r != 0;
		if (errs)
			errs[k] = r;
	}
	return failed;
}

long uhmm_page_copy_many(const uint64_t *dst, const uint64_t *src, uint64_t n, int *errs)
{
	if (!dst || !src)
		return -EINVAL;
	long failed = 0;
	for (uint64_t i = 0; i < n;) {
		struct uhmm__as *as = NULL;
		struct frame *fd = dst[i] && src[i] ? live_frame(dst[i], &as) : NULL;
		struct frame *fs = fd ? live_frame(src[i], NULL) : NULL;
		/* a forwarded copy's frame goes one by one too: uhmm_page_copy resolves it */
		if (!dst[i] || !src[i] || !fd || !fs || frame_populated(fd) || dst[i] == src[i] ||
		    frame_pool(fd)->owned || frame_pool(fs)->owned || frame_fwd_linked(fd) ||
		    frame_fwd_linked(fs)) {
			int r = dst[i] && src[i] ? uhmm_page_copy(dst[i], src[i]) : 0;
			failed += r != 0;
			if (errs)
				errs[i] = r;
			i++;
			continue;
		}
		if (uhmm__inject(INJ_COPY)) {
			failed++;
			if (errs)
				errs[i] = -EIO;
			i++;
			continue;
		}
		bool inj;
		uint64_t len = copy_run(dst, src, i, n, &inj);
		failed += copy_run_move(as, dst, src, i, len, errs);
		i += len;
		if (inj) {  /* copy_run stopped at an injected failure of page i */
			failed++;
			if (errs)
				errs[i] = -EIO;
			i++;
		}
	}
	return failed;
}

void *uhmm_pfn_to_virt(uint64_t hmm_pfn)
{
	uint64_t pfn = hmm_pfn & UHMM_PFN_PFN_MASK;
	if ((hmm_pfn & UHMM_PFN_VALID) && !(hmm_pfn & UHMM_PFN_DEVICE))
		return (void *)(uintptr_t)(pfn << PG_SHIFT);
	if (hmm_pfn & ~UHMM_PFN_PFN_MASK & ~(UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_DEVICE |
					       UHMM_PFN_ORDER_MASK))
		return NULL;
	struct uhmm__as *as;
	struct frame *f = live_frame(pfn, &as);
	if (!f || frame_pool(f)->owned)
		return NULL;   /* driver-owned memory has no host address */
	uhmm__fwd_resolve(as, pfn);  /* the driver sees what a copy left there */
	frame_mark_populated(f, 1);   /* the driver may touch it from now on */
	return (void *)(uintptr_t)uhmm__frame_addr(as, pfn);
}
