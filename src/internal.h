/* SPDX-License-Identifier: MIT */
/*
 * internal.h - what the subsystems of libuhmm share: the runtime (one per
 * process), page metadata, frames, pools, and the internal entry points of
 * each source file.  Internal symbols are uhmm__*; none is exported.
 *
 * The lock order and what each lock protects are written once, in
 * docs/design.md section 3; each lock's field below names its place there.
 * Every mutex is taken through uhmm__lock() (counted, see there), pt_lock
 * through uhmm__pt_lock() (holder checked in the debug build).
 */
#ifndef UHMM_INTERNAL_H
#define UHMM_INTERNAL_H
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <linux/userfaultfd.h>

#include "uhmm.h"
#include "itree.h"

#define PG_SHIFT 12
#define PG_SIZE (1UL << PG_SHIFT)
#define PG_MASK (~(PG_SIZE - 1))
#define BLOCK_SHIFT 21
#define BLOCK_PAGES (1U << (BLOCK_SHIFT - PG_SHIFT))
#define CHUNK_FRAMES 512U

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define UHMM_LIKELY(x) __builtin_expect(!!(x), 1)
#define UHMM_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ---- page metadata ---------------------------------------------------- */

enum pstate {
	PS_SYSTEM = 0,     /* CPU view is authoritative (present or never populated) */
	PS_PRIVATE,        /* data in a device-private frame; CPU view empty */
	PS_COHERENT,       /* a device-coherent page, mapped in the CPU view */
	PS_EXCLUSIVE,      /* data in a frame held exclusive by a device; CPU view empty */
};

/*
 * The page lock (pmeta.locked): who owns a page in transition.  A CPU fault
 * or device access on a locked page waits for LOCK_NONE (uhmm__page_lock_wait).
 */
enum page_lock {
	LOCK_NONE = 0,
	LOCK_DATA,    /* a migration, exclusive grant or revocation, or range
			 fault filling a hole, owns the page; its data is in a
			 frame or in place */
	LOCK_HOLE,    /* a migration collected a hole: the CPU may still fill it */
	LOCK_LOST,    /* a collected hole the CPU filled: the migration lost it */
	LOCK_FAULT,   /* a CPU fault, while its page's owner runs migrate_to_ram
			 (the kernel's locked vmf->page): a migration whose
			 fault_page names the page takes it without waiting and
			 leaves the unlock to the fault */
};

/* One per page that has ever left PS_SYSTEM.  Protected by as->pt_lock. */
struct pmeta {
	uint32_t frame;    /* PRIVATE/EXCLUSIVE: frame with the data; COHERENT: the device page */
	uint8_t state;     /* enum pstate */
	uint8_t locked;    /* enum page_lock */
	uint8_t waiters;   /* someone sleeps on as->pt_cond for this page */
	uint8_t pad;
};

struct block {
	uint64_t base;             /* address of pg[0], BLOCK aligned */
	struct block *hnext;       /* hash chain */
	uint32_t nused;            /* pages not in plain, unlocked SYSTEM state */
	struct pmeta pg[BLOCK_PAGES];
};

/* ---- frames: uhmm-owned host pages (device pages and parked system pages) */

struct frame {
	struct uhmm_devmem *pool;  /* owner pool (system frames: as->syspool) */
	void *zone_data;           /* driver data */
	uint64_t addr;             /* process address it holds data for, or 0 */
	const void *xowner;        /* exclusive holder (system frames) */
	uint32_t ref;              /* references; 0 = free */
	uint32_t next_free;        /* pool free-list links (doubly linked, */
	uint32_t prev_free;        /*   0 = none), under the pool's lock */
	uint8_t populated;         /* the frame may hold a page (zap before reuse) */
	/*
	 * HUGE_ORDER on the first frame of a chunk while its 512 frames are one
	 * huge page (uhmm__frame_alloc_huge), else 0.  A huge page is 512
	 * frames with a reference each; putting any one of them splits it
	 * (order back to 0).  Under the pool's lock; read as a hint elsewhere.
	 */
	uint8_t order;
	uint8_t pt_clean;          /* first frame of a chunk: its 2 MiB of the arena
				      has no page table yet (a THP can move in
				      with one PMD); under the pool's lock */
	uint8_t fwd_flags;         /* FWD_*, under as->fwd_lock (fwd.c) */
	uint32_t index;            /* dense index inside its pool (device address) */
	uint32_t fwd;              /* the other frame of a forwarded copy, or 0
				      (fwd.c; written under as->fwd_lock) */
};
#define FWD_DST  1u  /* this frame is the copy's destination: its data is fwd's page */
#define FWD_BUSY 2u  /* on the destination: the copy is being done */

#define HUGE_ORDER 9
#define HUGE_PAGES (1U << HUGE_ORDER)   /* = CHUNK_FRAMES: a huge page is a chunk */
#define HUGE_SIZE_BYTES ((uint64_t)HUGE_PAGES << PG_SHIFT)
static inline uint8_t frame_order(const struct frame *f)
{
	return __atomic_load_n(&f->order, __ATOMIC_ACQUIRE);
}

/*
 * pool, addr, xowner and ref change under the pool's lock, but are read
 * without it as hints (eviction scans frames by number; migration checks a
 * driver-supplied destination) and re-checked under pt_lock or the pool
 * lock before anything depends on them.  So every access is atomic: these
 * accessors for reads, __atomic stores for writes (devmem.c).
 */
static inline struct uhmm_devmem *frame_pool(const struct frame *f)
{
	return __atomic_load_n(&f->pool, __ATOMIC_ACQUIRE);
}
static inline uint32_t frame_ref(const struct frame *f)
{
	return __atomic_load_n(&f->ref, __ATOMIC_ACQUIRE);
}
static inline uint64_t frame_addr_hint(const struct frame *f)
{
	return __atomic_load_n(&f->addr, __ATOMIC_RELAXED);
}
static inline const void *frame_xowner(const struct frame *f)
{
	return __atomic_load_n(&f->xowner, __ATOMIC_RELAXED);
}
/*
 * The populated flag is handed between threads through the kernel (a
 * fault, a wake-up), which the sanitizers cannot see: relaxed atomics.
 */
static inline void frame_mark_populated(struct frame *f, int v)
{
	__atomic_store_n(&f->populated, (uint8_t)v, __ATOMIC_RELAXED);
}
static inline bool frame_populated(const struct frame *f)
{
	return __atomic_load_n(&f->populated, __ATOMIC_RELAXED);
}
/* Part of a forwarded copy (fwd.c): a hint, re-checked under as->fwd_lock. */
static inline bool frame_fwd_linked(const struct frame *f)
{
	return __atomic_load_n(&f->fwd, __ATOMIC_ACQUIRE) != 0;
}

/*
 * Staging slots (staging.c): host memory that a batch of a migration
 * copies through, nslots slots of slot_bytes each.  busy is a bitmask of
 * the slots taken, changed only by compare-and-swap (taken in signal
 * handlers too, so no lock); base is set once, then read-only.
 */
struct uhmm__staging {
	char *base;                /* NULL: none */
	uint64_t slot_bytes;       /* whole pages, at most HUGE_SIZE_BYTES */
	uint32_t nslots;           /* 1..64 */
	bool driver;               /* the driver's registered memory: wait for a slot */
	uint64_t busy;             /* atomic */
};

struct uhmm_devmem {
	struct uhmm__as *as;       /* runtime it belongs to (stale in a fork child) */
	pthread_mutex_t lock;      /* order 5: free list, chunks, counters, frame refs */
	int type;                  /* enum uhmm_devmem_type, or 0 for the system pool */
	const void *owner;
	const struct uhmm_devmem_ops *ops;
	void *driver_data;
	uint64_t max_pages;
	uint32_t free_head;        /* free frame list, 0 = empty */
	uint32_t nchunks;
	uint32_t *chunks;          /* first frame of each chunk */
	uint16_t *chunk_free;      /* free frames of each chunk */
	uint32_t chunks_cap;
	uint32_t nwhole;           /* chunks whose 512 frames are all free */
	uint64_t allocated, freed;
	uint64_t held;             /* freed frames not back on the free list yet
				      (uhmm__frame_put_hold) */
	uint64_t alloc_failures;    /* atomic: also counted outside the lock */
	bool dead;
	/*
	 * A driver-owned pool (uhmm_devmem_create_owned): its frames are names
	 * with no host memory behind them; copies go through copy_ops.  Set at
	 * creation, read-only after.
	 */
	bool owned;
	unsigned int flags;        /* UHMM_DEVMEM_DEFER_FAULTS */
	const struct uhmm_devmem_copy_ops *copy_ops;
	uint64_t mtr_ns;           /* atomic: recent migrate_to_ram time (faultwork.c) */
	struct uhmm__staging staging;  /* the driver's (uhmm_devmem_set_staging) */
	struct uhmm_devmem *next;  /* as->pools list (under as->arena_lock) */
};

/* ---- VMA information -------------------------------------------------- */

struct vma {
	uint64_t start, end;
	bool read, write, exec, shared, file, hugetlb;
	uint64_t page_size;
};

/* ---- the runtime ------------------------------------------------------ */

struct inflight_op {               /* an intercepted call (under pt_lock) */
	uint64_t start, end;
	bool done;                 /* the call returned */
	bool expect;               /* it touched a registered range: events may come */
	uint64_t end_seq;          /* done: uffd messages read by then (as->ev_read) */
	uint64_t end_ns;           /* done: when */
	bool teardown;             /* the range's pages are going away: no new
				      migration, exclusivity or device mapping */
	struct inflight_op *next;
};

struct deferred_fault {           /* a parked fault: its thread is woken on unlock */
	uint64_t addr;
	struct deferred_fault *next;
};

struct reg_range {                 /* a userfaultfd-registered range */
	uint64_t start, end;
	bool missing;              /* MISSING mode on (device-private capable) */
	struct reg_range *next;
};

/*
 * A self-service range (selfserve.c): registered with as->sigbus_uffd, so
 * that a fault there is a SIGBUS its own thread resolves.  start/end are
 * written under pt_lock and read without it (atomics): uffd.c picks the
 * descriptor of an ioctl by them, possibly with pt_lock held.  A free slot
 * has start == end.
 */
#define SS_MAX 64
struct ss_range {
	uint64_t start, end;
};

struct uhmm__as {
	int uffd;                  /* the process's ranges: faults and events */
	int sigbus_uffd;           /* self-service ranges: UFFD_FEATURE_SIGBUS, no
				      events (selfserve.c); -1 until first used */
	int arena_uffd;            /* the frame arena only: no events, so zapping a
				      frame never waits for the service thread */
	struct uhmm__staging bounce;  /* uhmm's own staging for driver copies to RAM */
	struct uhmm__staging page_bounce;  /* one-page slots of forwarded copies (fwd.c) */
	uint64_t features;         /* UFFD_FEATURE_* granted */
	uint64_t ufeat;            /* UHMM_FEAT_* */
	int maps_fd;               /* /proc/self/maps for PROCMAP_QUERY */
	int pagemap_fd;            /* /proc/self/pagemap for PAGEMAP_SCAN */
	int wake_fd;               /* eventfd: service thread re-checks deferred faults */
	int stop_fd;               /* eventfd: service thread exits */
	pid_t pid;
	unsigned long generation;  /* changes in a fork child */

	pthread_rwlock_t fork_lock; /* order 1: readers move pages, fork() writes */
	pthread_mutex_t reg_lock;  /* order 2a: UFFDIO_(UN)REGISTER of process ranges */

	/* notifiers: protected by nt_lock (order 3) */
	pthread_mutex_t nt_lock;
	pthread_cond_t nt_cond;    /* invalidation ended */
	struct uhmm__itree itree;
	unsigned long invalidate_seq;  /* odd while invalidating */
	unsigned long active_invalidates;
	struct uhmm_interval_notifier *deferred;

	/* page metadata: protected by pt_lock (order 4) */
	pthread_mutex_t pt_lock;
	const void *pt_owner;      /* UHMM_DEBUG: the holder (uhmm__pt_lock) */
	pthread_cond_t pt_cond;    /* a page lock was released */
	struct block **hash;
	uint64_t hash_size;
	struct deferred_fault *deferred_faults;
	struct reg_range *regs;
	struct inflight_op *inflight;

	/* frame arena: protected by arena_lock (order 6) */
	pthread_mutex_t arena_lock;
	pthread_mutex_t fwd_lock;  /* forwarded-copy links (fwd.c): a leaf */
	char *arena;
	uint64_t arena_frames;
	uint32_t arena_next_chunk;
	uint32_t *free_chunks;
	uint32_t nfree_chunks, free_chunks_cap;
	struct frame *frames;
	struct uhmm_devmem *pools;
	struct uhmm_devmem *syspool;

	pthread_t service;
	bool service_started;
	struct uhmm__faultwork *faultwork;  /* faultwork.c, started on first use */
	pid_t fault_tid;           /* service thread: the thread of the fault it serves */

	struct ss_range ss[SS_MAX];   /* self-service ranges (see struct ss_range) */

	/* messages the service thread read early (service thread only) */
	struct uffd_msg *pending;
	unsigned npending;
	/*
	 * uffd messages read and handled, counted by the service thread (the
	 * k-th read is the k-th handled).  ev_read changes under read_lock,
	 * with the read(): the kernel lets an munmap/mremap/madvise return
	 * only once its event is read, so an intercepted call that ends and
	 * then takes read_lock sees its events counted (intercept.c).
	 */
	pthread_mutex_t read_lock;  /* a leaf (design.md section 3) */
	uint64_t ev_read;           /* under read_lock */
	uint64_t ev_handled;        /* atomic; written by the service thread */
};

/*
 * uhmm's mutexes are taken through these, which count the locks this
 * thread holds.  An interposed munmap/mmap/mremap/madvise/mprotect that
 * reaches uhmm while the thread holds one (from a sanitizer's runtime
 * reporting inside uhmm, a signal handler, a callback) goes straight to the
 * kernel instead of taking uhmm's locks again (intercept.c).
 */
extern __thread unsigned uhmm__tls_locks __attribute__((tls_model("initial-exec")));
static inline void uhmm__lock(pthread_mutex_t *m)
{
	uhmm__tls_locks++;
	pthread_mutex_lock(m);
}
static inline void uhmm__unlock(pthread_mutex_t *m)
{
	pthread_mutex_unlock(m);
	uhmm__tls_locks--;
}
/* 0 with the lock taken (and counted), or EBUSY. */
static inline int uhmm__trylock(pthread_mutex_t *m)
{
	uhmm__tls_locks++;
	int rc = pthread_mutex_trylock(m);
	if (rc)
		uhmm__tls_locks--;
	return rc;
}
static inline bool uhmm__holds_lock(void)
{
	return uhmm__tls_locks != 0;
}

/*
 * Invariant checks of the debug build (make DEBUG=1): uhmm__assert() logs the
 * failed condition and aborts; compiled out otherwise (the mimalloc model).
 */
#ifdef UHMM_DEBUG
void uhmm__assert_fail(const char *cond, const char *file, int line) __attribute__((noreturn));
#define uhmm__assert(c) (UHMM_LIKELY(c) ? (void)0 : uhmm__assert_fail(#c, __FILE__, __LINE__))
#define UHMM_DEBUG_ON 1
#else
#define uhmm__assert(c) ((void)0)
#define UHMM_DEBUG_ON 0
#endif

/* Is addr in a self-service range?  No lock: see struct ss_range. */
static inline bool uhmm__ss_has(struct uhmm__as *as, uint64_t addr)
{
	if (UHMM_LIKELY(__atomic_load_n(&as->sigbus_uffd, __ATOMIC_ACQUIRE) < 0))
		return false;
	for (unsigned i = 0; i < SS_MAX; i++) {
		uint64_t s = __atomic_load_n(&as->ss[i].start, __ATOMIC_ACQUIRE);
		uint64_t e = __atomic_load_n(&as->ss[i].end, __ATOMIC_ACQUIRE);
		if (s <= addr && addr < e)
			return true;
	}
	return false;
}

/* pt_lock, with its holder tracked in the debug build. */
static inline void uhmm__pt_lock(struct uhmm__as *as)
{
	uhmm__lock(&as->pt_lock);
	if (UHMM_DEBUG_ON)
		as->pt_owner = &uhmm__tls_locks;
}
static inline void uhmm__pt_unlock(struct uhmm__as *as)
{
	uhmm__assert(as->pt_owner == &uhmm__tls_locks);
	if (UHMM_DEBUG_ON)
		as->pt_owner = NULL;
	uhmm__unlock(&as->pt_lock);
}
/* Wait on pt_cond (pt_lock held; held again on return). */
static inline void uhmm__pt_wait(struct uhmm__as *as)
{
	uhmm__assert(as->pt_owner == &uhmm__tls_locks);
	if (UHMM_DEBUG_ON)
		as->pt_owner = NULL;
	pthread_cond_wait(&as->pt_cond, &as->pt_lock);
	if (UHMM_DEBUG_ON)
		as->pt_owner = &uhmm__tls_locks;
}
/* Where a comment says "caller holds pt_lock". */
#define uhmm__assert_pt_held(as) uhmm__assert((as)->pt_owner == &uhmm__tls_locks)

/*
 * The internal entry points, file by file in layer order, bottom first
 * (docs/layers.txt; make check-layers fails on a call into a higher layer).
 */

/* runtime.c: the log, thread flags, process-wide facts */
void uhmm__log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
bool uhmm__in_service_thread(void);
void uhmm__set_service_thread(void);
void uhmm__set_fault_worker(void);
bool uhmm__in_fault_worker(void);
void uhmm__set_cow_possible(void);   /* the process forked: pages may be COW shared */
bool uhmm__cow_possible(void);

/* alloc.c: fault-path-safe memory (never the libc heap); zeroed */
void *uhmm__zalloc(size_t size);
void uhmm__free(void *p, size_t size);

/* uffd.c: the userfaultfds and their ioctls */
int uhmm__uffd_open(uint64_t *features_out);
int uhmm__uffd_open_arena(void);
int uhmm__uffd_register(struct uhmm__as *as, uint64_t start, uint64_t len, bool missing);
int uhmm__uffd_move(struct uhmm__as *as, uint64_t dst, uint64_t src, uint64_t len,
		    bool wake, uint64_t *moved);
int uhmm__uffd_move_mode(struct uhmm__as *as, uint64_t dst, uint64_t src, uint64_t len,
			 uint64_t mode, uint64_t *moved);
int uhmm__uffd_zeropage(struct uhmm__as *as, uint64_t dst, uint64_t len, bool wake);
int uhmm__uffd_copy(struct uhmm__as *as, uint64_t dst, const void *src, uint64_t len);
int uhmm__uffd_copy_wake(struct uhmm__as *as, uint64_t dst, const void *src, uint64_t len,
			 bool wake);
int uhmm__uffd_wake(struct uhmm__as *as, uint64_t start, uint64_t len);
const char *uhmm__uffd_why(int err);
ssize_t uhmm__uffd_read_msgs(struct uhmm__as *as, void *buf, size_t len);
bool uhmm__uffd_drain(struct uhmm__as *as);
int uhmm__uffd_open_sigbus(void);
int uhmm__uffd_register_fd(int fd, uint64_t start, uint64_t len, bool missing);
void uhmm__uffd_unregister(int fd, uint64_t start, uint64_t len);

/* page.c: page metadata and the page lock (pt_lock held for all of these) */
struct pmeta *uhmm__pmeta(struct uhmm__as *as, uint64_t addr, bool create);
bool uhmm__pmeta_valid(struct uhmm__as *as, const struct pmeta *pm);
bool uhmm__has_block(struct uhmm__as *as, uint64_t addr);
/* The end of the metadata block (2 MiB) that holds addr. */
static inline uint64_t uhmm__block_end(uint64_t addr)
{
	return (addr | ((1ULL << BLOCK_SHIFT) - 1)) + 1;
}
void uhmm__page_unlock(struct uhmm__as *as, uint64_t addr, struct pmeta *pm);
void uhmm__pmeta_changed(struct uhmm__as *as, uint64_t addr, struct pmeta *pm);
bool uhmm__page_lock_wait(struct uhmm__as *as, uint64_t addr);
void uhmm__page_release(struct uhmm__as *as, uint64_t addr);   /* takes pt_lock */
void uhmm__page_release_locked(struct uhmm__as *as, uint64_t addr);
/* The page walker (page.c): fn per page with metadata; nonzero stops the walk. */
typedef int (*uhmm__walk_fn)(struct uhmm__as *as, uint64_t addr, struct pmeta *pm, void *arg);
#define WALK_UNLOCKED 1U   /* wait for each page's lock to be free first */
int uhmm__walk(struct uhmm__as *as, uint64_t start, uint64_t end, unsigned flags,
	       uhmm__walk_fn fn, void *arg, uint64_t *at);
typedef bool (*uhmm__page_pred)(struct uhmm__as *as, const struct pmeta *pm, const void *arg);
uint64_t uhmm__page_find_any(struct uhmm__as *as, uhmm__page_pred pred, const void *arg);

/* ranges.c: registered ranges and intercepted calls in flight (pt_lock) */
bool uhmm__reg_covers(struct uhmm__as *as, uint64_t s, uint64_t e, bool missing);
void uhmm__reg_forget(struct uhmm__as *as, uint64_t s, uint64_t e);
void uhmm__reg_add(struct uhmm__as *as, struct reg_range *r, uint64_t s, uint64_t e,
		   bool missing);
void uhmm__reg_gap(struct uhmm__as *as, uint64_t at, uint64_t e, bool missing, uint64_t *gs,
		   uint64_t *ge);
bool uhmm__ss_add(struct uhmm__as *as, uint64_t start, uint64_t end);
void uhmm__ss_forget(struct uhmm__as *as, uint64_t start, uint64_t end);
bool uhmm__reg_overlaps(struct uhmm__as *as, uint64_t start, uint64_t end);
bool uhmm__reg_missing(struct uhmm__as *as, uint64_t addr);
struct inflight_op *uhmm__inflight_begin(struct uhmm__as *as, uint64_t s, uint64_t e,
					 bool teardown);
void uhmm__inflight_end(struct uhmm__as *as, struct inflight_op *op, bool ok);
bool uhmm__inflight_consume(struct uhmm__as *as, uint64_t start, uint64_t end, uint64_t seq);
bool uhmm__torn_down(struct uhmm__as *as, uint64_t addr);
bool uhmm__torn_overlaps(struct uhmm__as *as, uint64_t start, uint64_t end);

/* vma.c: mappings, registration, page scan, populate */
int uhmm__vma_find(struct uhmm__as *as, uint64_t addr, struct vma *out);
int uhmm__ensure_registered(struct uhmm__as *as, const struct vma *v, uint64_t start,
			    uint64_t end, bool missing);
int uhmm__page_scan(struct uhmm__as *as, uint64_t start, uint64_t end,
		    uint64_t *cats, uint64_t npages, bool excl);
int uhmm__populate(struct uhmm__as *as, const struct vma *v, uint64_t start, uint64_t end,
		   bool write);

/* frame.c: the arena, pools' free lists, frame references */
int uhmm__arena_init(struct uhmm__as *as);
/* Frame number f names a frame of the arena (0 is never one). */
static inline bool uhmm__frame_valid(struct uhmm__as *as, uint64_t f)
{
	return f > 0 && f < as->arena_frames;
}
static inline struct frame *uhmm__frame(struct uhmm__as *as, uint64_t f)
{
	return uhmm__frame_valid(as, f) ? &as->frames[f] : NULL;
}
static inline uint64_t uhmm__frame_addr(struct uhmm__as *as, uint64_t f)
{
	return (uint64_t)(uintptr_t)as->arena + (f << PG_SHIFT);
}
int uhmm__frame_alloc(struct uhmm__as *as, struct uhmm_devmem *pool, uint64_t *f);
/* staging.c */
int uhmm__staging_init(struct uhmm__as *as);
void uhmm__staging_fini(struct uhmm__as *as);
int uhmm__staging_set(struct uhmm_devmem *mem, void *addr, uint64_t len);
char *uhmm__staging_take(struct uhmm__as *as, struct uhmm_devmem *mem, bool to_ram,
			 struct uhmm__staging **from);
void uhmm__staging_put(struct uhmm__staging *st, char *slot);
char *uhmm__staging_take_page(struct uhmm__as *as);
uint64_t uhmm__staging_slot_pages(const struct uhmm_devmem *mem);

long uhmm__frame_alloc_many(struct uhmm__as *as, struct uhmm_devmem *pool, uint64_t n,
			    uint64_t *out);
int uhmm__frame_alloc_huge(struct uhmm__as *as, struct uhmm_devmem *pool, uint64_t *f);
/* Frame f heads a huge page whose 512 frames are live (a hint: pool lock not held). */
bool uhmm__frame_is_huge(struct uhmm__as *as, uint64_t f);
void uhmm__frame_split(struct uhmm__as *as, uint64_t f);
void uhmm__frame_set_populated(struct uhmm__as *as, uint64_t f, bool v);
void uhmm__frame_put(struct uhmm__as *as, uint64_t f);
void uhmm__frame_put_many(struct uhmm__as *as, uint64_t *f, uint64_t n);
bool uhmm__frame_put_hold(struct uhmm__as *as, uint64_t f);
void uhmm__frame_unhold(struct uhmm__as *as, uint64_t f);
void uhmm__frame_zap(struct uhmm__as *as, uint64_t f);
int uhmm__frame_copy_in(struct uhmm__as *as, uint64_t f, uint64_t n, const void *src);
void uhmm__frame_set_owner(struct uhmm__as *as, uint64_t f, uint64_t addr, const void *xowner);
void uhmm__pool_release_chunks(struct uhmm__as *as, struct uhmm_devmem *mem);
void uhmm__frame_set_run(struct uhmm__as *as, uint64_t f, uint64_t n, uint64_t addr, bool pop);
/*
 * fwd.c: forwarded copies between host frames.  link: s's data is d's page
 * from now on (false: not possible, copy now).  resolve: do the copy of the
 * link f is part of, if any (before touching f's host memory; both frames
 * keep the data, as after a copy).  take: s's
 * link is dropped and its source returned (finalize moves that page to the
 * CPU view), or 0.  pair: s <- d is linked.  freed: f's last reference
 * went (frame.c, before the zap): a source's page goes to its destination.
 * copy: d's page moved into s, unlinked (a take whose move failed).
 */
bool uhmm__fwd_link(struct uhmm__as *as, uint64_t s, uint64_t d);
void uhmm__fwd_resolve(struct uhmm__as *as, uint64_t f);
uint64_t uhmm__fwd_take(struct uhmm__as *as, uint64_t s);
bool uhmm__fwd_pair(struct uhmm__as *as, uint64_t s, uint64_t d);
void uhmm__fwd_freed(struct uhmm__as *as, uint64_t f);
void uhmm__fwd_copy(struct uhmm__as *as, uint64_t s, uint64_t d);  /* the copy itself */
/* link_page: s's data is a page of as->page_bounce (it is the link's until
 * the link ends); take_page: unlinked, the page returned (the caller gives
 * it back to as->page_bounce), or NULL if s has no such link. */
bool uhmm__fwd_link_page(struct uhmm__as *as, uint64_t s, char *page);
char *uhmm__fwd_take_page(struct uhmm__as *as, uint64_t s);

/* pagemove.c: a page into or out of the CPU view (the page lock is the caller's) */
/* Pages moved by one UFFDIO_MOVE at most (2 MiB: one page table). */
#define MOVE_RUN_MAX 512
int uhmm__move_out_exists(struct uhmm__as *as, uint64_t addr, uint64_t idx);
int uhmm__move_out_of_cpu(struct uhmm__as *as, uint64_t addr, uint64_t f, bool may_copy);
int uhmm__move_into_cpu(struct uhmm__as *as, uint64_t addr, uint64_t f, bool wake);
int uhmm__move_into_cpu_writable(struct uhmm__as *as, uint64_t addr, uint64_t f);
int uhmm__zap_app_range(struct uhmm__as *as, uint64_t start, uint64_t end);

/* invalidate.c: interval notifiers called before a change */
enum { NS_DETACHED = 0, NS_INSERTED, NS_DEFERRED };   /* uhmm__state */
enum { DEF_NONE = 0, DEF_ADD, DEF_REMOVE };           /* uhmm__deferred_op */
void uhmm__invalidate(struct uhmm__as *as, uint64_t start, uint64_t end,
		      enum uhmm_notify_event ev, const void *owner);
void uhmm__notifier_release_all(struct uhmm__as *as);

/* revoke.c: exclusive pages back to the CPU */
int uhmm__exclusive_revoke(struct uhmm__as *as, uint64_t addr, bool cpu_fault);
void uhmm__revoke_range(struct uhmm__as *as, uint64_t start, uint64_t end, const void *owner,
			bool any);
void uhmm__bring_back_exclusive(struct uhmm__as *as, uint64_t start, uint64_t end);
void uhmm__revoke_all(struct uhmm__as *as, const void *owner);

/*
 * fault.c: the CPU fault.  uhmm__fault_serve: the service thread serves a
 * fault message (never sleeps on a page lock: -EAGAIN parks it);
 * uhmm__fault_in: a thread needs the page in the CPU view and waits.
 */
int uhmm__fault_serve(struct uhmm__as *as, uint64_t addr, bool write);
int uhmm__fault_in(struct uhmm__as *as, uint64_t addr, bool write);
/* A self-service fault: the faulting thread, in its SIGBUS handler (selfserve.c). */
int uhmm__fault_self(struct uhmm__as *as, uint64_t addr, bool write);
int uhmm__bring_back_range(struct uhmm__as *as, uint64_t start, uint64_t end);
void uhmm__sigbus_thread(struct uhmm__as *as, uint64_t addr, pid_t tid, int err);
/* The end of a fault a worker served (page unlocked, thread woken or SIGBUS). */
void uhmm__fault_finish(struct uhmm__as *as, uint64_t addr, int rc, pid_t tid, uint64_t t0);

/* faultwork.c: deferred faults (UHMM_DEVMEM_DEFER_FAULTS) */
int uhmm__fault_defer(struct uhmm__as *as, struct uhmm_devmem *pool, uint64_t addr,
		      uint64_t page, bool write, pid_t tid, uint64_t t0);
bool uhmm__fault_should_defer(struct uhmm_devmem *pool);
void uhmm__fault_timed(struct uhmm_devmem *pool, uint64_t ns);
void uhmm__fault_time_begin(void);
uint64_t uhmm__fault_time_end(uint64_t wall_ns);
void uhmm__fault_copy_time(uint64_t ns);

/* placement.c: the service thread follows a pinned faulting thread */
void uhmm__service_placement_init(void);
void uhmm__service_follow(pid_t tid);

/* teardown.c: a range goes away */
void uhmm__wait_range_unlocked(struct uhmm__as *as, uint64_t start, uint64_t end);
void uhmm__forget_range(struct uhmm__as *as, uint64_t start, uint64_t end, bool unmapped);

/* events.c: a range changes (intercepted, or a uffd event) */
void uhmm__before_unmap(struct uhmm__as *as, uint64_t s, uint64_t e, enum uhmm_notify_event ev);
void uhmm__handle_uffd_event(struct uhmm__as *as, const void *msg, uint64_t seq);

/* service.c: the fault-service thread */
void *uhmm__service_main(void *arg);

/* lifecycle.c: the runtime's creation, fork lock, exit */
/* The runtime, or NULL with *err set.  Creates it on first use. */
struct uhmm__as *uhmm__as_get(int *err);
/* The runtime if it exists in this process, without creating it. */
struct uhmm__as *uhmm__as_peek(void);
void uhmm__fork_rdlock(struct uhmm__as *as);   /* readers: page-moving operations */
void uhmm__fork_unlock(struct uhmm__as *as);

/* devcopy.c: the driver's copies of a migration, in runs */
struct uhmm_devmem *uhmm__pool_of(struct uhmm__as *as, uint64_t page);

/* intercept.c: the interposers */
void uhmm__intercept_link(void);

/* stats.c */
extern struct uhmm_stats uhmm__stats;
extern struct uhmm_stats *uhmm__statp;  /* the live counters: &uhmm__stats or the published file */
#define STAT_ADD(field, n) \
	__atomic_fetch_add(&__atomic_load_n(&uhmm__statp, __ATOMIC_ACQUIRE)->field, (n), __ATOMIC_RELAXED)
void uhmm__event(uint32_t type, uint32_t arg, uint64_t addr, uint64_t len, uint64_t t0);
uint64_t uhmm__now_ns(void);
/* publish.c (/dev/shm/uhmm.<pid>) and timeline.c (UHMM_TRACE_FILE): docs/observability.md */
extern int uhmm__obs_on;
void uhmm__obs_event(uint32_t type, uint32_t arg, uint64_t addr, uint64_t len, uint64_t t0);
void uhmm__publish_start(struct uhmm__as *as);
void uhmm__publish_exit(void);
void uhmm__timeline_start(void);
bool uhmm__timeline_on(void);
void uhmm__timeline_record(uint32_t type, uint32_t arg, uint64_t addr, uint64_t len,
			   uint64_t ts_ns, uint64_t dur_ns);
void uhmm__timeline_exit(void);

/* inject.c: fault injection (UHMM_INJECT="point:rate,...") */
enum inject_point {
	INJ_DEVICE_ALLOC = 0,
	INJ_SYS_ALLOC,
	INJ_COPY,
	INJ_UFFD_IOCTL,
	INJ_THREAD,
	INJ_DRIVER_COPY,   /* uhmm_migrate_copy: a driver copy fails (-EIO) */
	INJ_NPOINTS,
};
bool uhmm__inject(enum inject_point p);
/*
 * Debug trace (build with -DUHMM_TRACE): a ring of page events, kind k,
 * addresses a and b of len bytes, value c; uhmm__tr_dump(addr) prints the
 * events that touched addr.  Compiled out otherwise.
 */
#ifdef UHMM_TRACE
void uhmm__tr(char k, uint64_t a, uint64_t b, uint64_t len, int64_t c);
void uhmm__tr_dump(uint64_t addr);
#define TR(k, a, b, l, c) \
	uhmm__tr(k, (uint64_t)(a), (uint64_t)(b), (uint64_t)(l), (int64_t)(c))
#define TR_DUMP(addr) uhmm__tr_dump(addr)
#else
#define TR(k, a, b, l, c) ((void)0)
#define TR_DUMP(addr) ((void)0)
#endif

#endif
