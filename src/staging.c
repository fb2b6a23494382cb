/* SPDX-License-Identifier: MIT */
/*
 * staging.c - host memory that the driver's copies of a driver-owned pool
 * go through: the driver's own registered buffer (uhmm_devmem_set_staging,
 * memory it pinned for DMA or RDMA), or uhmm's bounce for copies to RAM.
 *
 * Why a bounce at all: a migration to RAM needs new system pages, and a
 * new anonymous page is one the kernel zero-fills on first touch.  Letting
 * the driver write straight into fresh staging frames costs the kernel's
 * whole per-page fault work (allocation, zeroing, charge, LRU: ~4x the
 * copy, perf).  Written into a small buffer that stays populated and warm
 * in the cache instead, the data goes into the frames with UFFDIO_COPY,
 * which allocates each page without zeroing it and copies: the kernel's
 * own alloc-and-copy (docs/design.md §7, "Why a bounce").
 *
 * The runtime maps the bounce at creation (lifecycle.c); a driver sets its
 * staging once per pool (devmem.c checks the call).  Either kind is split
 * into slots, one batch of a migration in flight each, taken and given back
 * by compare-and-swap on a bitmask, no lock: a self-service fault takes one
 * in a signal handler.
 */
#include "internal.h"

#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BOUNCE_SLOTS 2   /* 2 x 2 MiB: one batch per CPU of this machine */
/* one-page copies held until finalize: as many as faults served at once */
#define PAGE_BOUNCE_SLOTS 64

static uint64_t all_slots(const struct uhmm__staging *st)
{
	return st->nslots >= 64 ? ~0ULL : (1ULL << st->nslots) - 1;
}

/* A free slot of st, or NULL when all are taken (and !wait). */
static char *slot_take(struct uhmm__staging *st, bool wait)
{
	uint64_t busy = __atomic_load_n(&st->busy, __ATOMIC_ACQUIRE);
	for (;;) {
		uint64_t free = ~busy & all_slots(st);
		if (!free) {
			if (!wait)
				return NULL;
			sched_yield();
			busy = __atomic_load_n(&st->busy, __ATOMIC_ACQUIRE);
			continue;
		}
		uint64_t bit = free & -free;
		if (__atomic_compare_exchange_n(&st->busy, &busy, busy | bit, false,
						__ATOMIC_ACQUIRE, __ATOMIC_ACQUIRE))
			return st->base + (uint64_t)__builtin_ctzll(bit) * st->slot_bytes;
	}
}

/*
 * uhmm's bounce, at the runtime's creation: address space only (nothing
 * is resident until a migration to RAM writes a slot).  -ENOMEM.
 */
static int bounce_map(struct uhmm__staging *st, uint64_t slot_bytes, uint32_t nslots)
{
	uint64_t len = slot_bytes * nslots;
	char *p = (char *)syscall(SYS_mmap, NULL, len, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	syscall(SYS_madvise, p, len, MADV_DONTDUMP);
	st->slot_bytes = slot_bytes;
	st->nslots = nslots;
	st->base = p;
	return 0;
}

static void bounce_unmap(struct uhmm__staging *st)
{
	if (st->base)
		syscall(SYS_munmap, st->base, st->nslots * st->slot_bytes);
	st->base = NULL;
}

int uhmm__staging_init(struct uhmm__as *as)
{
	int rc = bounce_map(&as->bounce, HUGE_SIZE_BYTES, BOUNCE_SLOTS);
	if (rc == 0)  /* optional: without it one-page copies use a slot */
		(void)bounce_map(&as->page_bounce, PG_SIZE, PAGE_BOUNCE_SLOTS);
	return rc;
}

void uhmm__staging_fini(struct uhmm__as *as)
{
	bounce_unmap(&as->bounce);
	bounce_unmap(&as->page_bounce);
}

/*
 * One page of uhmm's bounce for a one-page copy to RAM whose data stays
 * there until finalize installs it (a forwarded copy, fwd.c), or NULL when
 * none is free; given back with uhmm__staging_put(&as->page_bounce, p).
 */
char *uhmm__staging_take_page(struct uhmm__as *as)
{
	return as->page_bounce.base ? slot_take(&as->page_bounce, false) : NULL;
}

/*
 * A slot for one batch of mem's copies, or NULL: use the frames' own host
 * memory.  The driver's staging when it gave one (waited for: it copies
 * only from and to registered memory); for copies to RAM otherwise uhmm's
 * bounce, if a slot is free.  *from gets the staging to give it back to.
 */
char *uhmm__staging_take(struct uhmm__as *as, struct uhmm_devmem *mem, bool to_ram,
			 struct uhmm__staging **from)
{
	struct uhmm__staging *st = &mem->staging;
	if (!__atomic_load_n(&st->base, __ATOMIC_ACQUIRE))
		st = to_ram && as->bounce.base ? &as->bounce : NULL;
	*from = st;
	return st ? slot_take(st, st->driver) : NULL;
}

void uhmm__staging_put(struct uhmm__staging *st, char *slot)
{
	uint64_t k = (uint64_t)(slot - st->base) / st->slot_bytes;
	uhmm__assert(k < st->nslots);
	uhmm__assert(__atomic_load_n(&st->busy, __ATOMIC_RELAXED) & (1ULL << k));
	__atomic_fetch_and(&st->busy, ~(1ULL << k), __ATOMIC_RELEASE);
}

/* Pages per batch that a slot of mem's staging holds (the batch size cap). */
uint64_t uhmm__staging_slot_pages(const struct uhmm_devmem *mem)
{
	const struct uhmm__staging *st = &mem->staging;
	if (!__atomic_load_n(&st->base, __ATOMIC_ACQUIRE))
		return HUGE_PAGES;
	return st->slot_bytes >> PG_SHIFT;
}

/*
 * The driver's staging for mem (uhmm_devmem_set_staging checked mem and
 * the buffer): once per pool, since a migration may be using the one it
 * has.  0 or -EBUSY.
 */
int uhmm__staging_set(struct uhmm_devmem *mem, void *addr, uint64_t len)
{
	static pthread_mutex_t set_lock = PTHREAD_MUTEX_INITIALIZER;  /* a leaf (design.md §3) */
	struct uhmm__staging *st = &mem->staging;
	int rc = -EBUSY;
	uhmm__lock(&set_lock);
	if (!__atomic_load_n(&st->base, __ATOMIC_ACQUIRE)) {
		uint64_t slot = len < HUGE_SIZE_BYTES ? len : HUGE_SIZE_BYTES;
		uint64_t n = len / slot;
		st->slot_bytes = slot;
		st->nslots = n > 64 ? 64 : (uint32_t)n;
		st->driver = true;
		__atomic_store_n(&st->base, (char *)addr, __ATOMIC_RELEASE);
		rc = 0;
	}
	uhmm__unlock(&set_lock);
	return rc;
}
