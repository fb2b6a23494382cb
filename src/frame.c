/* SPDX-License-Identifier: MIT */
/*
 * frame.c - frames: the arena, the pools' free lists and chunks, frame
 * references.  The public pool API over them is devmem.c.
 *
 * A frame is a 4 KiB slot of one large anonymous mapping owned by uhmm (the
 * arena), registered with userfaultfd in WP mode only: touching an empty
 * frame gets an ordinary zero-filled page from the kernel, and UFFDIO_MOVE
 * may move pages into it.  Device pages of every pool and system pages
 * parked during a migration are frames, so moving data between the process
 * and a device is a page move, not a copy.  Frames are handed out empty
 * (they read as zeros: invariant I5) and zapped on free if they may hold a
 * page.  Pools take frames from the arena in chunks of 512.
 *
 * A driver-owned pool (memory the CPU cannot address) takes frames the same
 * way, but only as names: its frames' host slots are never mapped, read,
 * zeroed or zapped; uhmm_pfn_to_virt() gives NULL for them and
 * uhmm_page_copy() refuses them.  Each frame carries its dense index inside
 * its pool, the driver's device address.
 */
#include "internal.h"
#include "compat.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#define ARENA_FRAMES (1ULL << 24)   /* 64 GiB of address space, reserved lazily */

int uhmm__arena_init(struct uhmm__as *as)
{
	uint64_t len = ARENA_FRAMES << PG_SHIFT;
	/*
	 * 2 MiB aligned, so that a chunk (512 frames) is one PMD: a huge page
	 * (a chunk) can then take a THP with one page-table move.
	 */
	char *raw = (char *)syscall(SYS_mmap, NULL, len + HUGE_SIZE_BYTES, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (raw == MAP_FAILED)
		return -ENOMEM;
	char *a = (char *)(((uintptr_t)raw + HUGE_SIZE_BYTES - 1) & ~(uintptr_t)(HUGE_SIZE_BYTES - 1));
	if (a > raw)
		syscall(SYS_munmap, raw, (size_t)(a - raw));
	if (a + len < raw + len + HUGE_SIZE_BYTES)
		syscall(SYS_munmap, a + len, (size_t)(raw + len + HUGE_SIZE_BYTES - (a + len)));
	void *ft = (void *)syscall(SYS_mmap, NULL, ARENA_FRAMES * sizeof(struct frame),
				   PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ft == MAP_FAILED) {
		syscall(SYS_munmap, a, len);
		return -ENOMEM;
	}
	syscall(SYS_madvise, a, len, MADV_NOHUGEPAGE);
	/* Distinct VMA flags: never merged with an application mapping. */
	syscall(SYS_madvise, a, len, MADV_DONTDUMP);
	syscall(SYS_madvise, ft, ARENA_FRAMES * sizeof(struct frame), MADV_DONTDUMP);
	as->arena = a;
	as->arena_frames = ARENA_FRAMES;
	as->frames = ft;
	as->arena_next_chunk = 1;   /* chunk 0 holds frame 0, which means "none" */
	as->arena_uffd = uhmm__uffd_open_arena();
	if (as->arena_uffd < 0)
		return as->arena_uffd;
	struct uffdio_register reg = {
		.range = { .start = (uint64_t)(uintptr_t)a, .len = len },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};
	int rc = ioctl(as->arena_uffd, UFFDIO_REGISTER, &reg) == 0 ? 0 : -errno;
	if (rc) {
		uhmm__log("cannot register the frame arena with userfaultfd: %s", strerror(-rc));
		return rc;
	}
	static const struct uhmm_devmem_ops no_ops;
	struct uhmm_devmem *sys = uhmm__zalloc(sizeof(*sys));
	if (!sys)
		return -ENOMEM;
	pthread_mutex_init(&sys->lock, NULL);
	sys->as = as;
	sys->ops = &no_ops;
	sys->max_pages = ARENA_FRAMES;
	as->syspool = sys;
	return 0;
}

void uhmm__frame_zap(struct uhmm__as *as, uint64_t f)
{
	syscall(SYS_madvise, uhmm__frame_addr(as, f), PG_SIZE, MADV_DONTNEED);
	frame_mark_populated(&as->frames[f], 0);
}

/* arena_lock: a chunk of CHUNK_FRAMES frames, returns its first frame or 0. */
static uint32_t arena_chunk_get(struct uhmm__as *as, bool *fresh)
{
	uint32_t first = 0;
	*fresh = false;
	uhmm__lock(&as->arena_lock);
	if (as->nfree_chunks) {
		first = as->free_chunks[--as->nfree_chunks];
	} else if ((uint64_t)(as->arena_next_chunk + 1) * CHUNK_FRAMES <= as->arena_frames) {
		first = as->arena_next_chunk++ * CHUNK_FRAMES;
		*fresh = true;  /* never touched: no page table */
	}
	uhmm__unlock(&as->arena_lock);
	return first;
}

static void arena_chunk_put(struct uhmm__as *as, uint32_t first)
{
	uhmm__lock(&as->arena_lock);
	if (as->nfree_chunks == as->free_chunks_cap) {
		uint32_t cap = as->free_chunks_cap ? as->free_chunks_cap * 2 : 64;
		uint32_t *n = uhmm__zalloc(cap * sizeof(*n));
		if (!n) {
			uhmm__unlock(&as->arena_lock);
			return;  /* the chunk's address space is lost, nothing else */
		}
		if (as->free_chunks)
			memcpy(n, as->free_chunks, as->nfree_chunks * sizeof(*n));
		uhmm__free(as->free_chunks, as->free_chunks_cap * sizeof(*n));
		as->free_chunks = n;
		as->free_chunks_cap = cap;
	}
	as->free_chunks[as->nfree_chunks++] = first;
	uhmm__unlock(&as->arena_lock);
}

/*
 * The free list (pool->lock held): doubly linked, so that a huge
 * allocation can take the 512 frames of a whole free chunk out of it; each
 * chunk counts its free frames (chunk_free) and the pool its whole free
 * chunks (nwhole).
 */
static void free_push(struct uhmm__as *as, struct uhmm_devmem *mem, uint32_t idx)
{
	struct frame *f = &as->frames[idx];
	f->prev_free = 0;
	f->next_free = mem->free_head;
	if (mem->free_head)
		as->frames[mem->free_head].prev_free = idx;
	mem->free_head = idx;
	if (++mem->chunk_free[f->index / CHUNK_FRAMES] == CHUNK_FRAMES)
		mem->nwhole++;
}

static void free_unlink(struct uhmm__as *as, struct uhmm_devmem *mem, uint32_t idx)
{
	struct frame *f = &as->frames[idx];
	if (f->prev_free)
		as->frames[f->prev_free].next_free = f->next_free;
	else
		mem->free_head = f->next_free;
	if (f->next_free)
		as->frames[f->next_free].prev_free = f->prev_free;
	f->next_free = f->prev_free = 0;
	if (mem->chunk_free[f->index / CHUNK_FRAMES]-- == CHUNK_FRAMES)
		mem->nwhole--;
}

/* pool->lock held: add one chunk to the free list. */
static int pool_grow(struct uhmm__as *as, struct uhmm_devmem *mem)
{
	if ((uint64_t)mem->nchunks * CHUNK_FRAMES >= mem->max_pages)
		return -ENOMEM;
	if (mem->nchunks == mem->chunks_cap) {
		uint32_t cap = mem->chunks_cap ? mem->chunks_cap * 2 : 8;
		uint32_t *n = uhmm__zalloc(cap * sizeof(*n));
		uint16_t *nf = uhmm__zalloc(cap * sizeof(*nf));
		if (!n || !nf) {
			uhmm__free(n, cap * sizeof(*n));
			uhmm__free(nf, cap * sizeof(*nf));
			return -ENOMEM;
		}
		if (mem->chunks) {
			memcpy(n, mem->chunks, mem->nchunks * sizeof(*n));
			memcpy(nf, mem->chunk_free, mem->nchunks * sizeof(*nf));
		}
		uhmm__free(mem->chunks, mem->chunks_cap * sizeof(*n));
		uhmm__free(mem->chunk_free, mem->chunks_cap * sizeof(*nf));
		mem->chunks = n;
		mem->chunk_free = nf;
		mem->chunks_cap = cap;
	}
	bool fresh;
	uint32_t first = arena_chunk_get(as, &fresh);
	if (!first)
		return -ENOMEM;
	mem->chunks[mem->nchunks] = first;
	mem->chunk_free[mem->nchunks] = 0;
	mem->nchunks++;
	uint64_t usable = mem->max_pages - (uint64_t)(mem->nchunks - 1) * CHUNK_FRAMES;
	uint32_t n = usable < CHUNK_FRAMES ? (uint32_t)usable : CHUNK_FRAMES;
	__atomic_store_n(&as->frames[first].order, 0, __ATOMIC_RELAXED);
	as->frames[first].pt_clean = fresh;
	for (uint32_t i = n; i-- > 0;) {
		struct frame *f = &as->frames[first + i];
		f->zone_data = NULL;
		__atomic_store_n(&f->addr, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&f->xowner, NULL, __ATOMIC_RELAXED);
		__atomic_store_n(&f->ref, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&f->populated, 0, __ATOMIC_RELAXED);
		f->index = (mem->nchunks - 1) * CHUNK_FRAMES + i;
		__atomic_store_n(&f->pool, mem, __ATOMIC_RELEASE);
		free_push(as, mem, first + i);
	}
	return 0;
}

/* pool->lock held, frame idx unlinked from the free list: one reference. */
static void take_frame(struct uhmm__as *as, struct uhmm_devmem *mem, uint32_t idx)
{
	struct frame *f = &as->frames[idx];
	uhmm__assert(!__atomic_load_n(&f->fwd, __ATOMIC_RELAXED));  /* freed: unlinked */
	__atomic_store_n(&f->addr, 0, __ATOMIC_RELAXED);
	f->zone_data = NULL;
	__atomic_store_n(&f->xowner, NULL, __ATOMIC_RELAXED);
	__atomic_store_n(&f->ref, 1, __ATOMIC_RELEASE);
	mem->allocated++;
}

/* pool->lock held, free list not empty: take its head, one reference. */
static uint32_t pop_free(struct uhmm__as *as, struct uhmm_devmem *mem)
{
	uint32_t idx = mem->free_head;
	free_unlink(as, mem, idx);
	as->frames[idx & ~(CHUNK_FRAMES - 1)].pt_clean = 0;  /* 4 KiB use: a PTE table */
	take_frame(as, mem, idx);
	return idx;
}

/*
 * pool->lock held: the last reference of frame idx went; a huge page it is
 * part of splits.  The driver named the huge page by its head (the kernel's
 * form), so each former tail that has no zone data of its own takes the
 * head's: the pages stay the driver's after the split (an eviction that
 * asks each page whose it is finds every one of them).
 */
static void split_locked(struct uhmm__as *as, uint64_t idx)
{
	uint64_t first = idx & ~(uint64_t)(CHUNK_FRAMES - 1);
	struct frame *h = &as->frames[first];
	if (!h->order)
		return;
	for (uint32_t k = 1; k < CHUNK_FRAMES && h->zone_data; k++)
		if (!as->frames[first + k].zone_data)
			as->frames[first + k].zone_data = h->zone_data;
	__atomic_store_n(&h->order, 0, __ATOMIC_RELEASE);
}

void uhmm__frame_split(struct uhmm__as *as, uint64_t idx)
{
	struct frame *f = uhmm__frame(as, idx);
	struct uhmm_devmem *mem = f ? frame_pool(f) : NULL;
	if (!mem)
		return;
	uhmm__lock(&mem->lock);
	split_locked(as, idx);
	uhmm__unlock(&mem->lock);
}

bool uhmm__frame_is_huge(struct uhmm__as *as, uint64_t idx)
{
	struct frame *f = uhmm__frame(as, idx);
	return f && !(idx & (CHUNK_FRAMES - 1)) && frame_order(f) == HUGE_ORDER &&
	       frame_ref(f) > 0;
}

/*
 * Give the 2 MiB of the arena behind chunk first a fresh mapping, so that
 * it has no page table: UFFDIO_MOVE moves a THP into it with one PMD only
 * where the destination PMD is empty (otherwise the kernel splits the THP
 * and moves 512 PTEs), and MADV_DONTNEED leaves the PTE table of 4 KiB use
 * behind.  The frames are all free (nothing to lose); the new mapping gets
 * the arena's flags and registration back, so the VMAs merge again.
 */
static void chunk_refresh(struct uhmm__as *as, uint32_t first)
{
	uint64_t a = uhmm__frame_addr(as, first);
	void *p = (void *)syscall(SYS_mmap, a, HUGE_SIZE_BYTES, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
	if (p == MAP_FAILED) {
		uhmm__log("cannot remap arena chunk: %s", strerror(errno));
		return;
	}
	syscall(SYS_madvise, a, HUGE_SIZE_BYTES, MADV_NOHUGEPAGE);
	syscall(SYS_madvise, a, HUGE_SIZE_BYTES, MADV_DONTDUMP);
	struct uffdio_register reg = {
		.range = { .start = a, .len = HUGE_SIZE_BYTES },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};
	if (ioctl(as->arena_uffd, UFFDIO_REGISTER, &reg) != 0)
		uhmm__log("cannot register arena chunk: %s", strerror(errno));
	for (uint32_t k = 0; k < CHUNK_FRAMES; k++)
		frame_mark_populated(&as->frames[first + k], 0);
}

/* A failed allocation, in the pool's and the process's counters. */
static void count_alloc_failure(struct uhmm_devmem *mem)
{
	__atomic_fetch_add(&mem->alloc_failures, 1, __ATOMIC_RELAXED);
	STAT_ADD(alloc_failures, 1);
}

/*
 * Start of a single allocation: an injected failure (-ENOMEM, counted), a
 * destroyed pool (-EINVAL), or 0 with mem->lock held.
 */
static int alloc_begin(struct uhmm__as *as, struct uhmm_devmem *mem)
{
	if (uhmm__inject(mem == as->syspool ? INJ_SYS_ALLOC : INJ_DEVICE_ALLOC)) {
		count_alloc_failure(mem);
		return -ENOMEM;
	}
	uhmm__lock(&mem->lock);
	if (mem->dead) {
		uhmm__unlock(&mem->lock);
		return -EINVAL;
	}
	return 0;
}

/*
 * A huge page: the 512 frames of one chunk whose frames are all free (or
 * of a chunk the pool grows by), each with one reference, HUGE_ORDER on
 * the first.  -ENOMEM when no chunk is wholly free and the pool cannot
 * grow: the caller falls back to 4 KiB frames.
 */
int uhmm__frame_alloc_huge(struct uhmm__as *as, struct uhmm_devmem *mem, uint64_t *out)
{
	int rc = alloc_begin(as, mem);
	if (rc)
		return rc;
	uint32_t c = mem->nchunks;
	if (mem->nwhole)
		for (c = 0; c < mem->nchunks && mem->chunk_free[c] != CHUNK_FRAMES; c++)
			;
	if (c == mem->nchunks) {
		if (pool_grow(as, mem) != 0 || mem->chunk_free[mem->nchunks - 1] != CHUNK_FRAMES) {
			uhmm__unlock(&mem->lock);
			return -ENOMEM;  /* not counted: the caller falls back to 4 KiB */
		}
		c = mem->nchunks - 1;
	}
	uint32_t first = mem->chunks[c];
	for (uint32_t k = 0; k < CHUNK_FRAMES; k++) {
		free_unlink(as, mem, first + k);
		take_frame(as, mem, first + k);
	}
	__atomic_store_n(&as->frames[first].order, HUGE_ORDER, __ATOMIC_RELEASE);
	bool clean = as->frames[first].pt_clean;
	as->frames[first].pt_clean = 0;  /* its use may leave a PTE table (a split) */
	uhmm__unlock(&mem->lock);
	if (!clean && !mem->owned)
		chunk_refresh(as, first);
	*out = first;
	return 0;
}

int uhmm__frame_alloc(struct uhmm__as *as, struct uhmm_devmem *mem, uint64_t *out)
{
	int rc = alloc_begin(as, mem);
	if (rc)
		return rc;
	if (!mem->free_head && pool_grow(as, mem) != 0) {
		uhmm__unlock(&mem->lock);
		count_alloc_failure(mem);
		return -ENOMEM;
	}
	*out = pop_free(as, mem);
	uhmm__unlock(&mem->lock);
	return 0;
}

/*
 * Sort n frame numbers ascending, in place (heapsort).  Not qsort(): glibc's
 * merges through a malloc'd buffer above 1 KiB, and this runs on fault paths
 * (the service thread, a fault worker, a self-service SIGBUS handler, where
 * TSan caught malloc called from the signal handler with 512-page windows).
 */
static void sift_down(uint64_t *a, uint64_t i, uint64_t n)
{
	for (uint64_t c; (c = 2 * i + 1) < n; i = c) {
		if (c + 1 < n && a[c + 1] > a[c])
			c++;
		if (a[i] >= a[c])
			return;
		uint64_t t = a[i];
		a[i] = a[c];
		a[c] = t;
	}
}

/*
 * Ascending order.  The free lists give frames back mostly in order, or in
 * reverse (a list pushed in ascending order pops descending): those two
 * cost one pass, not a heapsort (9 % of a far-memory placement, perf).
 */
static void sort_u64(uint64_t *a, uint64_t n)
{
	uint64_t up = 1, down = 1;
	for (uint64_t i = 1; i < n; i++) {
		up += a[i - 1] < a[i];
		down += a[i - 1] > a[i];
	}
	if (up >= n)
		return;
	if (down >= n) {
		for (uint64_t i = 0, j = n - 1; i < j; i++, j--) {
			uint64_t t = a[i];
			a[i] = a[j];
			a[j] = t;
		}
		return;
	}
	for (uint64_t i = n / 2; i-- > 0;)
		sift_down(a, i, n);
	for (uint64_t end = n; end > 1; end--) {
		uint64_t t = a[0];
		a[0] = a[end - 1];
		a[end - 1] = t;
		sift_down(a, 0, end - 1);
	}
}

/*
 * Up to n frames of mem into out[], in ascending order, so that runs of
 * them can be filled or emptied with one UFFDIO_MOVE.  Returns how many (a
 * short count when the pool is full or an injected failure hits), or
 * -ENOMEM if none.
 */
long uhmm__frame_alloc_many(struct uhmm__as *as, struct uhmm_devmem *mem, uint64_t n,
			    uint64_t *out)
{
	bool sys = mem == as->syspool;
	uint64_t got = 0;
	uhmm__lock(&mem->lock);
	while (got < n && !mem->dead) {
		if (uhmm__inject(sys ? INJ_SYS_ALLOC : INJ_DEVICE_ALLOC) ||
		    (!mem->free_head && pool_grow(as, mem) != 0)) {
			count_alloc_failure(mem);
			break;
		}
		out[got++] = pop_free(as, mem);
	}
	uhmm__unlock(&mem->lock);
	sort_u64(out, (uint64_t)got);
	return got ? (long)got : -ENOMEM;
}

void uhmm__frame_set_populated(struct uhmm__as *as, uint64_t f, bool v)
{
	frame_mark_populated(&as->frames[f], v);
}

/* pool->lock held: drop a reference to f; the last one splits its huge page. */
static bool unref_locked(struct uhmm__as *as, uint64_t f)
{
	struct frame *fr = &as->frames[f];
	uhmm__assert(fr->ref > 0);
	bool last = fr->ref != 0 && __atomic_sub_fetch(&fr->ref, 1, __ATOMIC_ACQ_REL) == 0;
	if (last)
		split_locked(as, f);
	return last;
}

/* pool->lock held, f's last reference gone and its page zapped: onto the free list. */
static void release_locked(struct uhmm__as *as, struct uhmm_devmem *mem, uint64_t f)
{
	struct frame *fr = &as->frames[f];
	__atomic_store_n(&fr->addr, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&fr->xowner, NULL, __ATOMIC_RELAXED);
	fr->zone_data = NULL;
	free_push(as, mem, (uint32_t)f);
}

/*
 * Frames f .. f + n - 1 take n pages of data from src (UFFDIO_COPY: new
 * pages, not zeroed first).  A frame that maps a page uhmm did not put
 * there (as uhmm__move_out_exists finds) is emptied and the copy tried
 * again: the frames are the caller's alone.  They count as populated even
 * on failure (a copy stopped part way did some).  0 or -errno.
 */
int uhmm__frame_copy_in(struct uhmm__as *as, uint64_t f, uint64_t n, const void *src)
{
	uint64_t dst = uhmm__frame_addr(as, f), len = n << PG_SHIFT;
	int rc = uhmm__uffd_copy(as, dst, src, len);
	if (rc == -EEXIST) {
		for (uint64_t j = f; j < f + n; j++)
			uhmm__frame_zap(as, j);
		rc = uhmm__uffd_copy(as, dst, src, len);
	}
	for (uint64_t j = f; j < f + n; j++)
		frame_mark_populated(&as->frames[j], 1);
	return rc;
}

/*
 * Drop a reference to frame f, as uhmm__frame_put() does, but when it was
 * the last one keep the frame off the free list with its host page as it
 * is: f counts as freed (the pool's counters, the driver's page_free) and
 * is "held" until uhmm__frame_unhold().  Finalize moves a forwarded copy's
 * page out of its source in between (fwd.c), after the pool has let go of
 * the page: a thread that goes on as soon as the page is mapped sees the
 * counters settled.  A link of f stays as it is.  true: f is held.
 */
bool uhmm__frame_put_hold(struct uhmm__as *as, uint64_t f)
{
	struct frame *fr = uhmm__frame(as, f);
	struct uhmm_devmem *mem = fr ? frame_pool(fr) : NULL;
	if (!mem)
		return false;
	uhmm__lock(&mem->lock);
	bool last = unref_locked(as, f);
	if (last) {
		mem->freed++;
		mem->held++;
	}
	uhmm__unlock(&mem->lock);
	if (last && mem->ops && mem->ops->page_free)
		mem->ops->page_free(mem, f);
	return last;
}

/* The rest of the free of a frame uhmm__frame_put_hold() held: zap, free list. */
void uhmm__frame_unhold(struct uhmm__as *as, uint64_t f)
{
	struct frame *fr = &as->frames[f];
	struct uhmm_devmem *mem = frame_pool(fr);
	if (frame_fwd_linked(fr))
		uhmm__fwd_freed(as, f);  /* not taken after all: the link ends */
	if (frame_populated(fr)) {
		syscall(SYS_madvise, uhmm__frame_addr(as, f), PG_SIZE, MADV_DONTNEED);
		frame_mark_populated(fr, 0);
	}
	uhmm__lock(&mem->lock);
	uhmm__assert(mem->held > 0 && frame_ref(fr) == 0);
	release_locked(as, mem, f);
	mem->held--;
	uhmm__unlock(&mem->lock);
}

/* Drop a reference; the last one frees the frame (page_free, zap, free list). */
void uhmm__frame_put(struct uhmm__as *as, uint64_t idx)
{
	uhmm__frame_put_many(as, &idx, 1);
}

/*
 * uhmm__frame_put() of n frames (idx[] is reordered): the frames whose last
 * reference goes are zapped one run of consecutive frames per madvise, not
 * one page each (a migration's staging frames: 1.7 us a page otherwise).
 */
void uhmm__frame_put_many(struct uhmm__as *as, uint64_t *idx, uint64_t n)
{
	uint64_t k = 0;
	/* References drop with the pool lock held across frames of one pool. */
	struct uhmm_devmem *held = NULL;
	for (uint64_t i = 0; i < n; i++) {
		struct frame *f = uhmm__frame(as, idx[i]);
		struct uhmm_devmem *mem = f ? frame_pool(f) : NULL;
		if (!mem)
			continue;
		if (mem != held) {
			if (held)
				uhmm__unlock(&held->lock);
			uhmm__lock(&mem->lock);
			held = mem;
		}
		if (unref_locked(as, idx[i]))
			idx[k++] = idx[i];
	}
	if (held)
		uhmm__unlock(&held->lock);
	/* A forwarded copy either frame is part of ends first (fwd.c). */
	for (uint64_t i = 0; i < k; i++)
		if (frame_fwd_linked(&as->frames[idx[i]]))
			uhmm__fwd_freed(as, idx[i]);
	/* The driver hears of each freed page without uhmm's locks held. */
	for (uint64_t i = 0; i < k; i++) {
		struct uhmm_devmem *mem = frame_pool(&as->frames[idx[i]]);
		if (mem->ops && mem->ops->page_free)
			mem->ops->page_free(mem, idx[i]);
	}
	bool sorted = true;  /* usually: a migration's frames come in runs */
	for (uint64_t i = 1; i < k && sorted; i++)
		sorted = idx[i - 1] <= idx[i];
	if (!sorted)
		sort_u64(idx, k);
	for (uint64_t i = 0; i < k;) {
		uint64_t j = i;
		if (!frame_populated(&as->frames[idx[i]])) {
			i++;
			continue;
		}
		while (j + 1 < k && idx[j + 1] == idx[j] + 1 && frame_populated(&as->frames[idx[j + 1]]))
			j++;
		syscall(SYS_madvise, uhmm__frame_addr(as, idx[i]), (j - i + 1) << PG_SHIFT,
			MADV_DONTNEED);
		for (uint64_t m = i; m <= j; m++)
			frame_mark_populated(&as->frames[idx[m]], 0);
		i = j + 1;
	}
	held = NULL;
	for (uint64_t i = 0; i < k; i++) {
		struct frame *f = &as->frames[idx[i]];
		struct uhmm_devmem *mem = frame_pool(f);
		if (mem != held) {
			if (held)
				uhmm__unlock(&held->lock);
			uhmm__lock(&mem->lock);
			held = mem;
		}
		release_locked(as, mem, idx[i]);
		mem->freed++;
	}
	if (held)
		uhmm__unlock(&held->lock);
}

/* Which address frame f holds data for, and for whom (pool->lock). */
void uhmm__frame_set_owner(struct uhmm__as *as, uint64_t idx, uint64_t addr, const void *xowner)
{
	struct frame *f = &as->frames[idx];
	uhmm__lock(&frame_pool(f)->lock);
	__atomic_store_n(&f->addr, addr, __ATOMIC_RELAXED);
	__atomic_store_n(&f->xowner, xowner, __ATOMIC_RELAXED);
	uhmm__unlock(&frame_pool(f)->lock);
}

/*
 * Frames idx..idx+n-1 (one pool: a run of one chunk, or a huge page) hold
 * data for addr.. onwards, populated (pop) or not; one pool-lock hold.
 */
void uhmm__frame_set_run(struct uhmm__as *as, uint64_t idx, uint64_t n, uint64_t addr, bool pop)
{
	if (!n)
		return;
	struct uhmm_devmem *mem = frame_pool(&as->frames[idx]);
	uhmm__lock(&mem->lock);
	for (uint64_t q = 0; q < n; q++) {
		struct frame *f = &as->frames[idx + q];
		uhmm__assert(frame_pool(f) == mem);
		frame_mark_populated(f, pop);
		__atomic_store_n(&f->addr, addr + (q << PG_SHIFT), __ATOMIC_RELAXED);
		__atomic_store_n(&f->xowner, NULL, __ATOMIC_RELAXED);
	}
	uhmm__unlock(&mem->lock);
}

/* A destroyed pool (no frame in use) gives its chunks back to the arena. */
void uhmm__pool_release_chunks(struct uhmm__as *as, struct uhmm_devmem *mem)
{
	for (uint32_t i = 0; i < mem->nchunks; i++) {
		for (uint32_t j = 0; j < CHUNK_FRAMES; j++)
			__atomic_store_n(&as->frames[mem->chunks[i] + j].pool, NULL, __ATOMIC_RELEASE);
		arena_chunk_put(as, mem->chunks[i]);
	}
	uhmm__free(mem->chunks, mem->chunks_cap * sizeof(*mem->chunks));
	uhmm__free(mem->chunk_free, mem->chunks_cap * sizeof(*mem->chunk_free));
}
