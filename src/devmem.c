/* SPDX-License-Identifier: MIT */
/*
 * devmem.c - device memory: the frame arena and the pools (dev_pagemap).
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

/*
 * Frame flags are handed between threads through the kernel (a fault, a
 * wake-up), which the sanitizers cannot see: relaxed atomics say so.
 */
static void set_populated(struct frame *f, int v)
{
	__atomic_store_n(&f->populated, (uint8_t)v, __ATOMIC_RELAXED);
}

static bool is_populated(const struct frame *f)
{
	return __atomic_load_n(&f->populated, __ATOMIC_RELAXED);
}

bool uhmm__frame_valid(struct uhmm__as *as, uint64_t f)
{
	return f > 0 && f < as->arena_frames;
}

struct frame *uhmm__frame(struct uhmm__as *as, uint64_t f)
{
	return uhmm__frame_valid(as, f) ? &as->frames[f] : NULL;
}

void uhmm__frame_zap(struct uhmm__as *as, uint64_t f)
{
	syscall(SYS_madvise, uhmm__frame_addr(as, f), PG_SIZE, MADV_DONTNEED);
	set_populated(&as->frames[f], 0);
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

/* pool->lock held: the last reference of frame idx went; a huge page it is part of splits. */
static void split_locked(struct uhmm__as *as, uint64_t idx)
{
	struct frame *h = &as->frames[idx & ~(uint64_t)(CHUNK_FRAMES - 1)];
	if (h->order)
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
		set_populated(&as->frames[first + k], 0);
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

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
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
	qsort(out, got, sizeof(*out), cmp_u64);
	return got ? (long)got : -ENOMEM;
}

void uhmm__frame_set_populated(struct uhmm__as *as, uint64_t f, bool v)
{
	set_populated(&as->frames[f], v);
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
	for (uint64_t i = 0; i < n; i++) {
		struct frame *f = uhmm__frame(as, idx[i]);
		struct uhmm_devmem *mem = f ? frame_pool(f) : NULL;
		if (!mem)
			continue;
		uhmm__lock(&mem->lock);
		uhmm__assert(f->ref > 0);
		bool last = f->ref != 0 && __atomic_sub_fetch(&f->ref, 1, __ATOMIC_ACQ_REL) == 0;
		if (last)
			split_locked(as, idx[i]);
		uhmm__unlock(&mem->lock);
		if (!last)
			continue;
		if (mem->ops && mem->ops->page_free)
			mem->ops->page_free(mem, idx[i]);
		idx[k++] = idx[i];
	}
	qsort(idx, k, sizeof(*idx), cmp_u64);
	for (uint64_t i = 0; i < k;) {
		uint64_t j = i;
		if (!is_populated(&as->frames[idx[i]])) {
			i++;
			continue;
		}
		while (j + 1 < k && idx[j + 1] == idx[j] + 1 && is_populated(&as->frames[idx[j + 1]]))
			j++;
		syscall(SYS_madvise, uhmm__frame_addr(as, idx[i]), (j - i + 1) << PG_SHIFT,
			MADV_DONTNEED);
		for (uint64_t m = i; m <= j; m++)
			set_populated(&as->frames[idx[m]], 0);
		i = j + 1;
	}
	for (uint64_t i = 0; i < k; i++) {
		struct frame *f = &as->frames[idx[i]];
		struct uhmm_devmem *mem = frame_pool(f);
		uhmm__lock(&mem->lock);
		__atomic_store_n(&f->addr, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&f->xowner, NULL, __ATOMIC_RELAXED);
		f->zone_data = NULL;
		free_push(as, mem, (uint32_t)idx[i]);
		mem->freed++;
		uhmm__unlock(&mem->lock);
	}
}

/*
 * Take the page at addr out of the CPU view into frame idx.  0, -ENOENT (no
 * page there: a hole), or the kernel's reason the page cannot move.  A page
 * of a mapping whose access flags differ from the arena's cannot be moved;
 * if the mapping is read-only (so the CPU cannot write the page meanwhile)
 * and may_copy, it is copied and zapped instead.
 */
/*
 * UFFDIO_MOVE said the frame is populated.  Measured (stress test, page
 * trace): when it races with the CPU's copy-on-write of the zero page, the
 * page can have moved all the same; the source is then empty.  So: source
 * empty -> it moved (0); source still there -> the frame was touched unseen
 * (a read maps the zero page): empty the frame and move again.
 */
int uhmm__move_out_exists(struct uhmm__as *as, uint64_t addr, uint64_t idx)
{
	uint64_t cat = 0;
	if (uhmm__page_scan(as, addr, addr + PG_SIZE, &cat, 1, false) == 0 &&
	    !(cat & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED))) {
		TR('Y', addr, uhmm__frame_addr(as, idx), PG_SIZE, 0);
		return 0;
	}
	TR('y', addr, uhmm__frame_addr(as, idx), PG_SIZE, 0);
	uhmm__frame_zap(as, idx);
	return uhmm__uffd_move(as, uhmm__frame_addr(as, idx), addr, PG_SIZE, false, NULL);
}

int uhmm__move_out_of_cpu(struct uhmm__as *as, uint64_t addr, uint64_t idx, bool may_copy)
{
	uint64_t fa = uhmm__frame_addr(as, idx);
	int rc = uhmm__uffd_move(as, fa, addr, PG_SIZE, false, NULL);
	if (rc == -EEXIST)
		rc = uhmm__move_out_exists(as, addr, idx);
	if (rc == -EBUSY) {
		/* Shared after fork (COW): make it ours, then move it. */
		syscall(SYS_madvise, addr, PG_SIZE, MADV_POPULATE_WRITE);
		rc = uhmm__uffd_move(as, fa, addr, PG_SIZE, false, NULL);
	}
	struct vma v;
	if (rc == -EINVAL && may_copy && uhmm__vma_find(as, addr, &v) == 0 && !v.write) {
		if (uhmm_device_read((void *)(uintptr_t)fa, addr, PG_SIZE) != 0)
			return -ENOENT;
		rc = uhmm__zap_app_range(as, addr, addr + PG_SIZE);
		if (rc)
			uhmm__frame_zap(as, idx);
	}
	if (rc == 0)
		set_populated(&as->frames[idx], 1);
	return rc;
}

/*
 * Put frame idx's data at addr in the CPU view (waking a thread faulting
 * there if wake).  An empty frame maps a zero page.  Where the mapping's
 * access flags differ from the arena's (mprotect done behind our back) the
 * data is copied instead of moved.
 */
int uhmm__move_into_cpu(struct uhmm__as *as, uint64_t addr, uint64_t idx, bool wake)
{
	uint64_t fa = uhmm__frame_addr(as, idx);
	int rc = uhmm__uffd_move(as, addr, fa, PG_SIZE, wake, NULL);
	if (rc == -ENOENT) {
		rc = uhmm__uffd_zeropage(as, addr, PG_SIZE, wake);
	} else if (rc == -EINVAL || rc == -EBUSY) {
		rc = uhmm__uffd_copy(as, addr, (const void *)(uintptr_t)fa, PG_SIZE);
		if (rc == 0)
			uhmm__frame_zap(as, idx);
	}
	if (rc == -EEXIST && wake)
		uhmm__uffd_wake(as, addr, PG_SIZE);
	if (rc == 0)
		set_populated(&as->frames[idx], 0);
	return rc;
}

/* Same, but an empty frame becomes a private zero-filled page, not the
 * shared zero page: a device-coherent page is a page of its own. */
int uhmm__move_into_cpu_writable(struct uhmm__as *as, uint64_t addr, uint64_t idx)
{
	static const char zeros[PG_SIZE] __attribute__((aligned(PG_SIZE)));
	uint64_t fa = uhmm__frame_addr(as, idx);
	int rc = uhmm__uffd_move(as, addr, fa, PG_SIZE, false, NULL);
	if (rc == -ENOENT)
		rc = uhmm__uffd_copy(as, addr, zeros, PG_SIZE);
	else if (rc == -EINVAL || rc == -EBUSY)
		return uhmm__move_into_cpu(as, addr, idx, false);
	if (rc == 0)
		set_populated(&as->frames[idx], 0);
	return rc;
}

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

int uhmm_devmem_destroy(struct uhmm_devmem *mem)
{
	struct uhmm__as *as = pool_as(mem);
	if (!as)
		return -EINVAL;
	/* Lock order: pool->lock before arena_lock, never both here. */
	uhmm__lock(&mem->lock);
	if (mem->allocated != mem->freed || mem->dead) {
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
	for (uint32_t i = 0; i < mem->nchunks; i++) {
		for (uint32_t j = 0; j < CHUNK_FRAMES; j++)
			__atomic_store_n(&as->frames[mem->chunks[i] + j].pool, NULL, __ATOMIC_RELEASE);
		arena_chunk_put(as, mem->chunks[i]);
	}
	uhmm__free(mem->chunks, mem->chunks_cap * sizeof(*mem->chunks));
	uhmm__free(mem->chunk_free, mem->chunks_cap * sizeof(*mem->chunk_free));
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
	struct frame *f = lock_live_frame(page, NULL);
	if (!f)
		return NULL;
	void *d = f->zone_data;
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
	if (uhmm__inject(INJ_COPY))
		return -EIO;
	uint64_t da = uhmm__frame_addr(as, dst), sa = uhmm__frame_addr(as, src);
	int rc = is_populated(fd) ? -EEXIST : uhmm__uffd_move(as, da, sa, PG_SIZE, false, NULL);
	if (rc == 0) {
		set_populated(fd, 1);
		set_populated(fs, 0);
		return 0;
	}
	if (rc == -ENOENT) {
		if (is_populated(fd))
			uhmm__frame_zap(as, dst);
		return 0;
	}
	memcpy((void *)(uintptr_t)da, (const void *)(uintptr_t)sa, PG_SIZE);
	set_populated(fd, 1);
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
		if (!fd || !fs || is_populated(fd) || frame_pool(fd)->owned ||
		    frame_pool(fs)->owned)
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
			set_populated(&as->frames[dst[k]], 1);
			set_populated(&as->frames[src[k]], 0);
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
		if (!dst[i] || !src[i] || !fd || !fs || is_populated(fd) || dst[i] == src[i] ||
		    frame_pool(fd)->owned || frame_pool(fs)->owned) {
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
	set_populated(f, 1);   /* the driver may touch it from now on */
	return (void *)(uintptr_t)uhmm__frame_addr(as, pfn);
}

int uhmm_device_read(void *dst, uint64_t addr, size_t len)
{
	struct iovec l = { dst, len }, r = { (void *)(uintptr_t)addr, len };
	ssize_t n = len ? process_vm_readv(getpid(), &l, 1, &r, 1, 0) : 0;
	return n == (ssize_t)len ? 0 : -EFAULT;
}

int uhmm_device_write(uint64_t addr, const void *src, size_t len)
{
	struct iovec l = { (void *)src, len }, r = { (void *)(uintptr_t)addr, len };
	ssize_t n = len ? process_vm_writev(getpid(), &l, 1, &r, 1, 0) : 0;
	return n == (ssize_t)len ? 0 : -EFAULT;
}
