/* SPDX-License-Identifier: MIT */
/*
 * uhmm.h - Heterogeneous Memory Management for userspace drivers on stock Linux.
 *
 * The HMM API; the reference device and the test hooks are in uhmm_dmirror.h.
 * Every public symbol starts with uhmm_ or UHMM_.  Every function that can fail returns 0 (or a count) on success and a
 * negative errno on failure; none aborts on bad input.
 *
 * The model is the kernel's (Documentation/mm/hmm.rst): one address space per
 * process, mirrored by devices through interval notifiers and uhmm_range_fault(),
 * and device memory pools whose pages can hold process pages ("device private":
 * the CPU faults them back; "device coherent": the CPU maps them) or be taken
 * exclusive for device atomics.
 *
 * Naming of pages ("pfns").  uhmm has no physical frame numbers to hand out, so
 * a "pfn" in this API is one of two things:
 *   - a system page mapped in the process: its virtual page number (addr >> 12);
 *   - a frame: a page-sized slot of host memory owned by uhmm, either a device
 *     page of a uhmm_devmem pool or a system page parked by uhmm during a
 *     migration.  Frame numbers are small integers, never 0.
 * uhmm_range_fault() output marks frames with UHMM_PFN_DEVICE; migration arrays
 * only ever carry frames.  uhmm_pfn_to_virt() turns either kind into a pointer.
 *
 * Thread safety: every function may be called from any thread unless its
 * comment says otherwise.  Callbacks (invalidate, page_free, migrate_to_ram)
 * run in whichever thread caused them, including uhmm's fault-service thread;
 * a callback must not call uhmm_interval_notifier_remove() on itself.
 */
#ifndef UHMM_H
#define UHMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define UHMM_API __attribute__((visibility("default")))
#else
#define UHMM_API
#endif

#define UHMM_VERSION_MAJOR 0
#define UHMM_VERSION_MINOR 1

#define UHMM_PAGE_SHIFT 12
#define UHMM_PAGE_SIZE (1UL << UHMM_PAGE_SHIFT)

/* ------------------------------------------------------------------------ */
/* Runtime                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * The runtime is created on first use by any function below; calling
 * uhmm_init() first only moves the cost (and the error) to a place of the
 * caller's choosing.  Returns 0, -EPERM (userfaultfd not permitted: one line
 * on stderr says which sysctl/device to fix), -ENOSYS (no userfaultfd) or
 * -ENOTSUP (page size is not 4 KiB).
 */
UHMM_API int uhmm_init(void);

/* Kernel features found at run time (bits below); 0 when the runtime failed. */
#define UHMM_FEAT_MOVE          (1ULL << 0)  /* UFFDIO_MOVE: zero-copy migration */
#define UHMM_FEAT_PAGEMAP_SCAN  (1ULL << 1)  /* PAGEMAP_SCAN ioctl */
#define UHMM_FEAT_PROCMAP_QUERY (1ULL << 2)  /* PROCMAP_QUERY ioctl */
#define UHMM_FEAT_EVENTS        (1ULL << 3)  /* UNMAP/REMAP/REMOVE events */
#define UHMM_FEAT_WP            (1ULL << 4)  /* write-protect registration */
UHMM_API uint64_t uhmm_features(void);

/*
 * Self-service CPU faults for [start, start + len) (page aligned, one
 * private anonymous read-write mapping): a CPU access to a page of the
 * range that is on a device (device-private or exclusive) or was never
 * populated is resolved by the faulting thread itself, in a SIGBUS handler
 * uhmm installs (UFFD_FEATURE_SIGBUS), instead of by uhmm's fault-service
 * thread: no thread hand-off.  Pages of the range already on a device come
 * back first.  The mode lasts until the range is unmapped.
 *
 * The price, as for UFFD_FEATURE_SIGBUS itself: a system call or other
 * kernel-mode access that touches such a page while it is off the CPU
 * (read(2) into it, process_vm_readv, O_DIRECT, futex on it) fails with
 * EFAULT instead of waiting for it; user-mode accesses are served.  A
 * SIGBUS handler the program installs afterwards replaces uhmm's: install
 * yours first (uhmm chains to it for every other SIGBUS), or chain to the
 * previous one.  The range must not hold the C library's own data (its
 * allocator's metadata), since the driver's migrate_to_ram runs in the
 * faulting thread's signal handler.  Raw-syscall unmaps of the range are
 * not seen after the fact (the interposers see libc's).
 *
 * Returns 0, -EINVAL (bad range or kind of mapping), -EFAULT (not one
 * mapping), -EBUSY (part of it is self-service already), -ENOSPC (64 ranges
 * already), -EOPNOTSUPP (the kernel lacks UFFD_FEATURE_SIGBUS), or the
 * error of bringing a page back.
 */
UHMM_API int uhmm_self_service(uint64_t start, uint64_t len);

/* ------------------------------------------------------------------------ */
/* Interval notifiers (mmu_interval_notifier)                                */
/* ------------------------------------------------------------------------ */

enum uhmm_notify_event {
	UHMM_NOTIFY_UNMAP = 0,        /* munmap(), mremap() of the old range */
	UHMM_NOTIFY_CLEAR,            /* pages zapped: MADV_DONTNEED/REMOVE/FREE */
	UHMM_NOTIFY_PROTECTION_VMA,   /* mprotect() */
	UHMM_NOTIFY_PROTECTION_PAGE,  /* a page became read-only (fork COW) */
	UHMM_NOTIFY_RELEASE,          /* the runtime is torn down (exit, fork child) */
	UHMM_NOTIFY_MIGRATE,          /* a page migrates; owner = pgmap_owner */
	UHMM_NOTIFY_EXCLUSIVE,        /* a page is made or stops being device-exclusive */
};

struct uhmm_notifier_range {
	uint64_t start;               /* first byte */
	uint64_t end;                 /* one past the last byte */
	enum uhmm_notify_event event;
	const void *owner;            /* MIGRATE/EXCLUSIVE: who causes it, else NULL */
};

struct uhmm_interval_notifier;

struct uhmm_interval_notifier_ops {
	/*
	 * Called before the CPU mapping of [range->start, range->end) changes.
	 * The driver takes its own lock, calls uhmm_interval_set_seq(n, cur_seq)
	 * and drops every device mapping of the range, then returns true.
	 * Returning false is reserved (non-blocking mode is never used).
	 */
	bool (*invalidate)(struct uhmm_interval_notifier *n,
			   const struct uhmm_notifier_range *range,
			   unsigned long cur_seq);
};

/* Interval tree node; every field is private to uhmm. */
struct uhmm__itree_node {
	uint64_t start, last, subtree_last;      /* [start, last] inclusive */
	struct uhmm__itree_node *left, *right, *parent;
	uint32_t aux;                            /* balancing data */
};

/*
 * Caller-allocated (embed it and use container_of-style arithmetic, as with
 * the kernel's struct mmu_interval_notifier).  Zero it before the first
 * insert.  Fields are private.
 */
struct uhmm_interval_notifier {
	struct uhmm__itree_node uhmm__node;
	const struct uhmm_interval_notifier_ops *uhmm__ops;
	unsigned long uhmm__seq;
	struct uhmm_interval_notifier *uhmm__deferred_next;
	int uhmm__state;
	int uhmm__deferred_op;
};

/*
 * Insert a notifier for [start, start + length).  Returns 0, -EINVAL (NULL,
 * no ops, length 0, overflow, already inserted) or a runtime error.  During
 * an invalidation the insert is deferred until it ends; read_begin() on the
 * new notifier then waits for it.
 */
UHMM_API int uhmm_interval_notifier_insert(struct uhmm_interval_notifier *n,
					   uint64_t start, uint64_t length,
					   const struct uhmm_interval_notifier_ops *ops);
/*
 * Remove a notifier.  If an invalidation is running, waits until it has
 * ended, so that no callback runs for n once this returns.  Returns 0 or
 * -EINVAL (NULL, never inserted, removed twice).  Never call it from n's own
 * invalidate callback.
 */
UHMM_API int uhmm_interval_notifier_remove(struct uhmm_interval_notifier *n);
/* Begin a read side critical section; waits out an invalidation in progress. */
UHMM_API unsigned long uhmm_interval_read_begin(struct uhmm_interval_notifier *n);
/* Under the driver lock: true if an invalidation hit n since read_begin(). */
UHMM_API bool uhmm_interval_read_retry(struct uhmm_interval_notifier *n,
				       unsigned long seq);
/* Same test without a lock: a hint that the work in progress is stale. */
UHMM_API bool uhmm_interval_check_retry(struct uhmm_interval_notifier *n,
					unsigned long seq);
/* From the invalidate callback, under the driver lock. */
UHMM_API void uhmm_interval_set_seq(struct uhmm_interval_notifier *n,
				    unsigned long cur_seq);

/* ------------------------------------------------------------------------ */
/* Range fault (hmm_range_fault)                                             */
/* ------------------------------------------------------------------------ */

/*
 * One uint64_t per page, in and out.  Output: VALID, WRITE, ERROR, DEVICE,
 * ZERO and the mapping order in the high bits, the pfn in the low bits.
 * Input: REQ_FAULT (== VALID) and REQ_WRITE (== WRITE) per page, combined as
 *   req = (hmm_pfns[i] & pfn_flags_mask) | default_flags.
 */
#define UHMM_PFN_VALID        (1ULL << 63)
#define UHMM_PFN_WRITE        (1ULL << 62)
#define UHMM_PFN_ERROR        (1ULL << 61)
#define UHMM_PFN_ORDER_SHIFT  56           /* 5 bits: log2(pages) of the CPU mapping */
#define UHMM_PFN_ORDER_MASK   (0x1FULL << UHMM_PFN_ORDER_SHIFT)
#define UHMM_PFN_DEVICE       (1ULL << 55) /* pfn is a device frame (see top of file) */
#define UHMM_PFN_ZERO         (1ULL << 54) /* the shared zero page, read-only */
#define UHMM_PFN_PFN_MASK     ((1ULL << 52) - 1)
#define UHMM_PFN_REQ_FAULT    UHMM_PFN_VALID
#define UHMM_PFN_REQ_WRITE    UHMM_PFN_WRITE
#define UHMM_PFN_FLAGS        (~UHMM_PFN_PFN_MASK)

struct uhmm_range {
	struct uhmm_interval_notifier *notifier; /* required */
	unsigned long notifier_seq;              /* from uhmm_interval_read_begin() */
	uint64_t start;                          /* page aligned */
	uint64_t end;                            /* page aligned, > start */
	uint64_t *hmm_pfns;                      /* (end - start) >> 12 entries */
	uint64_t default_flags;
	uint64_t pfn_flags_mask;
	const void *dev_private_owner;           /* report this owner's private pages */
};

/*
 * Snapshot the CPU page table over [start, end), faulting pages in where the
 * request says so.  Returns 0; -EFAULT (a requested page is a hole, PROT_NONE,
 * or could not be faulted in; not-requested holes read UHMM_PFN_ERROR);
 * -EPERM (write requested on a read-only mapping); -EBUSY (the notifier was
 * invalidated: call read_begin() and retry); -EINVAL (bad arguments).
 * A device-private page of another owner is migrated back to RAM when a fault
 * is requested on it; without a request it reads as not VALID.
 */
UHMM_API int uhmm_range_fault(struct uhmm_range *range);

static inline unsigned int uhmm_pfn_to_map_order(uint64_t hmm_pfn)
{
	return (unsigned int)((hmm_pfn & UHMM_PFN_ORDER_MASK) >> UHMM_PFN_ORDER_SHIFT);
}

/*
 * Host pointer for an output entry of uhmm_range_fault() (system page or
 * device frame) or for a frame number (flags clear).  NULL if invalid.
 * A system page pointer is the page's own virtual address: access it with
 * uhmm_device_read()/uhmm_device_write() to be safe against a racing munmap.
 */
UHMM_API void *uhmm_pfn_to_virt(uint64_t hmm_pfn);

/*
 * "DMA" for simulated devices: copy between a device buffer and process
 * memory at addr, through the kernel (process_vm_readv/writev), so that a
 * page unmapped under the device yields -EFAULT instead of SIGSEGV.
 * Returns 0 or -EFAULT.
 */
UHMM_API int uhmm_device_read(void *dst, uint64_t addr, size_t len);
UHMM_API int uhmm_device_write(uint64_t addr, const void *src, size_t len);

/* ------------------------------------------------------------------------ */
/* Device memory (struct dev_pagemap)                                        */
/* ------------------------------------------------------------------------ */

enum uhmm_devmem_type {
	UHMM_DEVMEM_PRIVATE = 1,   /* CPU cannot map it; CPU access faults back */
	UHMM_DEVMEM_COHERENT = 2,  /* CPU maps it; migration back is explicit */
};

struct uhmm_devmem;

/* Describes a CPU fault on a device-private page, for migrate_to_ram. */
struct uhmm_fault {
	uint64_t addr;             /* faulting address, page aligned */
	uint64_t page;             /* the device frame mapped there */
	bool write;                /* write access */
};

struct uhmm_devmem_ops {
	/*
	 * The last reference to a device page is gone; the frame returns to the
	 * pool's free list right after this returns.  Optional.
	 */
	void (*page_free)(struct uhmm_devmem *mem, uint64_t page);
	/*
	 * A CPU access hit this pool's private page.  Migrate at least
	 * vmf->page back with uhmm_migrate_vma_setup(fault_page = vmf->page);
	 * return 0, or a negative errno: the faulting thread then gets SIGBUS
	 * and the reason is logged.  Required for PRIVATE pools.
	 */
	int (*migrate_to_ram)(struct uhmm_devmem *mem, const struct uhmm_fault *vmf);
};

/*
 * Create a pool of up to max_pages device pages (frames are reserved lazily,
 * in chunks of 512).  owner identifies the driver (pgmap owner) and must not
 * be NULL.  Returns 0, -EINVAL, -ENOMEM or a runtime error.
 */
UHMM_API int uhmm_devmem_create(enum uhmm_devmem_type type, const void *owner,
				const struct uhmm_devmem_ops *ops, void *driver_data,
				uint64_t max_pages, struct uhmm_devmem **out);
/* Destroy an empty pool.  -EBUSY while any page is in use, -EINVAL on NULL. */
UHMM_API int uhmm_devmem_destroy(struct uhmm_devmem *mem);
/*
 * Allocate one device page with one reference.  Its content reads as zeros
 * (I5).  Returns 0, -ENOMEM (pool full or injected failure), -EINVAL.
 */
UHMM_API int uhmm_devmem_alloc(struct uhmm_devmem *mem, uint64_t *page);
/*
 * Up to n device pages at once, in ascending order (consecutive pages let
 * uhmm_page_copy_many move a run in one step).  Returns how many were
 * allocated (fewer when the pool runs out), -ENOMEM if none, -EINVAL.
 */
UHMM_API long uhmm_devmem_alloc_many(struct uhmm_devmem *mem, uint64_t n, uint64_t *pages);
/*
 * Huge device pages (order UHMM_HUGE_ORDER: 2 MiB).  A huge page is
 * UHMM_HUGE_PAGES consecutive pages, *page (the head) to *page + 511, of
 * one 512-page chunk of the pool (device indices consecutive too: one
 * copy run); each of them holds one reference and is freed by its own
 * uhmm_devmem_page_put().  Putting, or freeing by an unmap, any one of them
 * splits the huge page (uhmm_page_order() 0 from then on); the other pages
 * keep their data.  Returns 0, -EINVAL, or -ENOMEM when the pool has no
 * wholly free chunk and cannot grow by one: fall back to 4 KiB pages.
 * Thread-safe.
 */
#define UHMM_HUGE_ORDER 9
#define UHMM_HUGE_PAGES (1U << UHMM_HUGE_ORDER)
UHMM_API int uhmm_devmem_alloc_huge(struct uhmm_devmem *mem, uint64_t *page);
/* A huge system page (512 consecutive system pages), as uhmm_devmem_alloc_huge(). */
UHMM_API int uhmm_sys_page_alloc_huge(uint64_t *page);
/*
 * UHMM_HUGE_ORDER if page is the head of an unsplit huge page, 0 for any
 * other live page, -EINVAL for a page that is not live.  Thread-safe.
 */
UHMM_API int uhmm_page_order(uint64_t page);
/* Take / drop a reference to a device page; -EINVAL if not a live device page. */
UHMM_API int uhmm_devmem_page_get(uint64_t page);
UHMM_API int uhmm_devmem_page_put(uint64_t page);

UHMM_API struct uhmm_devmem *uhmm_page_devmem(uint64_t page); /* NULL: not a device page */
UHMM_API enum uhmm_devmem_type uhmm_devmem_type(const struct uhmm_devmem *mem);
UHMM_API const void *uhmm_devmem_owner(const struct uhmm_devmem *mem);
UHMM_API void *uhmm_devmem_driver_data(const struct uhmm_devmem *mem);
UHMM_API void *uhmm_page_zone_data(uint64_t page);
UHMM_API int uhmm_page_set_zone_data(uint64_t page, void *data);
/* Virtual address a device page currently holds data for, 0 if none. */
UHMM_API uint64_t uhmm_page_addr(uint64_t page);

struct uhmm_devmem_stats {
	uint64_t capacity;   /* max_pages */
	uint64_t reserved;   /* frames reserved so far (chunks) */
	uint64_t allocated;  /* allocations, total */
	uint64_t freed;      /* frees, total */
	uint64_t in_use;     /* allocated - freed */
	uint64_t alloc_failures;
};
UHMM_API int uhmm_devmem_stats(const struct uhmm_devmem *mem, struct uhmm_devmem_stats *st);

/*
 * A system page for the destination of a migration to RAM (the equivalent
 * of alloc_page_vma()).  It is a frame with one reference; migrate_vma_pages
 * consumes it.  Free an unused one with uhmm_devmem_page_put().
 */
UHMM_API int uhmm_sys_page_alloc(uint64_t *page);
/* Up to n system pages, ascending; as uhmm_devmem_alloc_many. */
UHMM_API long uhmm_sys_page_alloc_many(uint64_t n, uint64_t *pages);

/*
 * The driver's copy for migration: dst receives src's data.  Where both are
 * host frames this moves the physical page (no copy) and leaves src empty;
 * a src that holds no data leaves dst reading zeros.  Returns 0 or -errno.
 */
UHMM_API int uhmm_page_copy(uint64_t dst, uint64_t src);
/*
 * uhmm_page_copy() for n pairs (dst[i], src[i]); pairs with a 0 are
 * skipped.  Runs of consecutive pages on both sides move in one step: the
 * cost of a migration is then per run, not per page.  Returns the number of
 * pairs that failed (0: all copied), each one's errno in errs[] if not NULL,
 * or -EINVAL.
 */
UHMM_API long uhmm_page_copy_many(const uint64_t *dst, const uint64_t *src, uint64_t n,
				  int *errs);

/* ------------------------------------------------------------------------ */
/* Driver-owned device memory (memory the CPU cannot address)               */
/* ------------------------------------------------------------------------ */

/*
 * A pool created with uhmm_devmem_create_owned() holds no host memory: its
 * pages are names.  Each page has a dense index inside the pool
 * (uhmm_devmem_page_index(); device address = the driver's base + index *
 * UHMM_PAGE_SIZE), and uhmm never maps, reads, zeroes or zaps it:
 * uhmm_pfn_to_virt() gives NULL for it and uhmm_page_copy() into or out of
 * it fails with -EOPNOTSUPP.  Every copy goes through the driver's copy
 * callback, one call per run of consecutive pages, and the driver zeroes a
 * page it reuses for another address (I5 is the driver's duty here).
 */

/* One run of a copy: npages consecutive pages on both sides. */
struct uhmm_copy_run {
	uint64_t host;       /* host address of the run's system side, contiguous */
	uint64_t dev_index;  /* pool index of the run's first device page */
	uint64_t page;       /* the first device page (consecutive after it) */
	uint64_t npages;
	uint32_t flags;      /* UHMM_COPY_RUN_* */
	uint32_t pad;
};
/* TO_DEV: the source held no data (a hole or the zero page): clear the
 * device pages instead of copying (host is 0). */
#define UHMM_COPY_RUN_CLEAR (1U << 0)

enum uhmm_copy_dir {
	UHMM_COPY_TO_DEV = 1,  /* host -> device pages */
	UHMM_COPY_TO_RAM = 2,  /* device pages -> host */
};

struct uhmm_devmem_copy_ops {
	/*
	 * Start copying nruns runs in direction dir.  May return before the
	 * data has moved: set *fence to a nonzero value that wait() accepts;
	 * fences of one pool complete in order.  Leave *fence 0 when the copy
	 * is done on return.  Returns 0 or a negative errno: the pages of a
	 * failed call stay where they were (nothing is lost).  Called with no
	 * uhmm lock held, on any thread (the fault-service threads included):
	 * it must not touch process memory that may be on a device, and may
	 * call only uhmm_devmem_page_index() and uhmm_devmem_driver_data().
	 */
	int (*copy)(struct uhmm_devmem *mem, enum uhmm_copy_dir dir,
		    const struct uhmm_copy_run *runs, uint64_t nruns, uint64_t *fence);
	/* Wait until the copies up to fence are done: 0 or a negative errno
	 * (then every run since the previous wait counts as failed).
	 * Optional: NULL means copy() is synchronous. */
	int (*wait)(struct uhmm_devmem *mem, uint64_t fence);
};

/* uhmm_devmem_create_owned() flags */
/* CPU faults on this pool's pages are served off the fault-service thread,
 * so that a slow copy (a DMA, a network round trip) does not hold up faults
 * on other pages; each faulting thread wakes when its own page is in. */
#define UHMM_DEVMEM_DEFER_FAULTS (1U << 0)

/*
 * A PRIVATE pool whose memory the driver owns (see above).  copy_ops->copy
 * is required; ops as for uhmm_devmem_create() (migrate_to_ram required).
 * Returns 0, -EINVAL (bad arguments, a COHERENT type: coherent memory is
 * CPU-mapped, so it is host memory), -ENOMEM.
 */
UHMM_API int uhmm_devmem_create_owned(enum uhmm_devmem_type type, const void *owner,
				      const struct uhmm_devmem_ops *ops,
				      const struct uhmm_devmem_copy_ops *copy_ops,
				      unsigned int flags, void *driver_data,
				      uint64_t max_pages, struct uhmm_devmem **out);
/*
 * Staging the driver registered: len bytes at addr (page aligned, whole
 * pages) that the driver pinned or registered for DMA or RDMA.  From then
 * on every run uhmm gives mem's copy callback has its host side inside this
 * buffer: to RAM the driver writes there and uhmm copies the data into the
 * new system pages (no page of the buffer ever moves, so pinning is fine);
 * to the device uhmm first copies the source pages into it.  The buffer is
 * used in slots of up to 2 MiB (512 pages), one per batch in flight (at
 * most 64 slots); a batch is at most a slot, and a migration waits for a
 * free slot, so give at least one slot per thread that migrates at once.
 * It must stay mapped, and must not be memory that uhmm manages, for the
 * pool's life.  Once per pool.  Without it, copies to RAM go through a
 * small buffer of uhmm's own.  Returns 0, -EINVAL (not a live owned pool,
 * addr NULL or unaligned, len 0 or not whole pages), -EBUSY (already set).
 */
UHMM_API int uhmm_devmem_set_staging(struct uhmm_devmem *mem, void *addr, uint64_t len);
/* Whether mem's memory is the driver's (1), uhmm's host memory (0), -EINVAL. */
UHMM_API int uhmm_devmem_is_owned(const struct uhmm_devmem *mem);
/* The dense index of a live device page inside its pool, or -EINVAL. */
UHMM_API int64_t uhmm_devmem_page_index(uint64_t page);

/*
 * The middle phase done for the driver: for each src[i] with MIGRATE,
 * allocate a destination page, copy through mem's copy callback one run at
 * a time, wait for the fence, and set dst[i] (0 where it failed; the page
 * then stays where it was).  The direction follows src: system pages (a
 * migrate_vma_setup() to the device) go to new pages of mem; pages of mem
 * (migrate_to_ram, uhmm_migrate_device_range()) go to new system pages.
 * Host-memory pools are accepted too (copies by uhmm_page_copy_many()).
 * Returns the number of pages copied, or -EINVAL / the copy's -errno when
 * none was.  Doing the middle phase by hand stays possible.
 */
UHMM_API long uhmm_migrate_copy(struct uhmm_devmem *mem, const uint64_t *src,
				uint64_t *dst, uint64_t npages);

/* ------------------------------------------------------------------------ */
/* Migration (migrate_vma_*, migrate_device_*)                               */
/* ------------------------------------------------------------------------ */

#define UHMM_MIGRATE_PFN_VALID   (1ULL << 0)
#define UHMM_MIGRATE_PFN_MIGRATE (1ULL << 1)
#define UHMM_MIGRATE_PFN_WRITE   (1ULL << 3)
/*
 * A compound entry (setup with UHMM_MIGRATE_SELECT_COMPOUND): the head of
 * 512 pages, 2 MiB aligned, that move as one huge page: src[i] names the
 * first of 512 consecutive pages (or none: a 2 MiB hole) and src[i + 1] to
 * src[i + 511] are 0.  The driver either gives one huge page (dst[i] =
 * uhmm_migrate_pfn(head) | UHMM_MIGRATE_PFN_COMPOUND) or falls back to 4 KiB
 * pages: dst[i + k] for each k, copied from page src-head + k (the source is
 * split).  pages() writes the 511 tail entries of src (and of dst when it is
 * compound), so that from then on every entry names its own page.
 */
#define UHMM_MIGRATE_PFN_COMPOUND (1ULL << 4)
#define UHMM_MIGRATE_PFN_SHIFT   6

static inline uint64_t uhmm_migrate_pfn(uint64_t page)
{
	return (page << UHMM_MIGRATE_PFN_SHIFT) | UHMM_MIGRATE_PFN_VALID;
}
static inline uint64_t uhmm_migrate_pfn_to_page(uint64_t mpfn)
{
	return (mpfn & UHMM_MIGRATE_PFN_VALID) ? mpfn >> UHMM_MIGRATE_PFN_SHIFT : 0;
}

enum {
	UHMM_MIGRATE_SELECT_SYSTEM = 1 << 0,
	UHMM_MIGRATE_SELECT_DEVICE_PRIVATE = 1 << 1,
	UHMM_MIGRATE_SELECT_DEVICE_COHERENT = 1 << 2,
	/*
	 * Collect a 2 MiB-aligned block inside [start, end) as one compound
	 * entry: a THP the CPU maps with one PMD, a block with no page at all
	 * (a huge hole), or an unsplit huge device page of the selected kind.
	 * Without it every entry is a 4 KiB page.
	 */
	UHMM_MIGRATE_SELECT_COMPOUND = 1 << 3,
};

/*
 * Three phases, as in the kernel:
 *   setup:    collects and locks the pages of [start, end) that match flags
 *             (and pgmap_owner for device pages); src[i] gets a frame holding
 *             the data with VALID|MIGRATE(|WRITE), or MIGRATE alone for a hole
 *             or zero page (no data: clear instead of copy), or 0 when the page
 *             is not taken.  cpages counts the entries with MIGRATE.  The CPU
 *             cannot see a collected page: a CPU access waits for finalize.
 *   (driver)  for each src with MIGRATE: allocate dst, uhmm_page_copy() (or
 *             leave a hole to read zeros), dst[i] = uhmm_migrate_pfn(page).
 *             Leaving dst[i] = 0 keeps the page where it was.
 *   pages:    installs dst where possible; a hole the CPU filled meanwhile is
 *             lost (MIGRATE cleared in src[i]: "lost race").
 *   finalize: unlocks; the CPU sees the new pages; unused frames are freed.
 * setup returns 0 or -EINVAL (bad arguments, a hole or PROT_NONE in the
 * range, a hugetlb mapping), -EFAULT (nothing mapped), -EOPNOTSUPP (kernel
 * without UFFDIO_MOVE).  Shared and file mappings are never collected.
 */
struct uhmm_migrate {
	uint64_t start;                 /* page aligned */
	uint64_t end;                   /* page aligned, > start */
	uint64_t *src;                  /* npages entries, filled by setup */
	uint64_t *dst;                  /* npages entries, zeroed by setup */
	uint64_t npages;                /* out */
	uint64_t cpages;                /* out */
	const void *pgmap_owner;
	unsigned long flags;            /* UHMM_MIGRATE_SELECT_* */
	uint64_t fault_page;            /* migrate_to_ram: vmf->page, else 0 */
	void *uhmm__priv;               /* private */
};

UHMM_API int uhmm_migrate_vma_setup(struct uhmm_migrate *args);
UHMM_API void uhmm_migrate_vma_pages(struct uhmm_migrate *args);
UHMM_API void uhmm_migrate_vma_finalize(struct uhmm_migrate *args);

/*
 * Evict device pages by frame number, without knowing their addresses
 * (migrate_device_range).  src_pfns[i] for pages start..start+npages-1 of
 * the frame space: MIGRATE|VALID for a page that holds process data, 0 for a
 * free one.  An unsplit huge device page taken whole is one compound entry,
 * as in the kernel's migrate_device_range(): its head | COMPOUND, the 511
 * tails 0; the driver gives one huge system page (dst head | COMPOUND,
 * uhmm_sys_page_alloc_huge) or 4 KiB pages dst[i + k] copied from head + k
 * (the source splits).  The driver fills dst with system pages
 * (uhmm_sys_page_alloc + uhmm_page_copy, or uhmm_migrate_copy, which does
 * both forms); pages() puts them at their addresses (a huge page with one
 * move: a THP again); finalize unlocks.
 */
UHMM_API int uhmm_migrate_device_range(uint64_t *src_pfns, uint64_t start, uint64_t npages);
UHMM_API void uhmm_migrate_device_pages(uint64_t *src_pfns, uint64_t *dst_pfns, uint64_t npages);
UHMM_API void uhmm_migrate_device_finalize(uint64_t *src_pfns, uint64_t *dst_pfns, uint64_t npages);
/* The frame numbers a pool owns: [*first, *first + *count) per chunk index. */
UHMM_API int uhmm_devmem_chunk(const struct uhmm_devmem *mem, uint64_t idx,
			       uint64_t *first, uint64_t *count);

/* ------------------------------------------------------------------------ */
/* Device-exclusive access (make_device_exclusive)                           */
/* ------------------------------------------------------------------------ */

/*
 * Make each page of [start, start + npages pages) exclusive to owner.  The
 * page itself moves out of the CPU view (no copy); a CPU access faults,
 * notifies every notifier with UHMM_NOTIFY_EXCLUSIVE (owner NULL), waits for
 * them, and maps the page back with its current data.
 * pages[i] gets the frame now holding page i (device atomics go through
 * uhmm_pfn_to_virt(pages[i])), or 0 if that page could not be taken;
 * errs[i] (optional) gets 0 or why: -EOPNOTSUPP (shared/file memory),
 * -EFAULT (hole), -EPERM (not writable), -EBUSY.
 * Before each page moves, notifiers get UHMM_NOTIFY_EXCLUSIVE with owner =
 * owner: filter your own to avoid a livelock.  The driver re-checks its
 * notifier sequence (read_retry) before trusting the pages.
 * Returns the number of pages made exclusive (>= 0) or -EINVAL/-EFAULT.
 */
UHMM_API long uhmm_make_device_exclusive(uint64_t start, uint64_t npages,
					 const void *owner, uint64_t *pages, int *errs);
/*
 * Whether the page at addr is exclusive to owner right now, and its frame.
 * The answer stays true for as long as the caller holds the lock its
 * invalidate callback takes (a revocation must notify first); use it there
 * to confirm a grant instead of a sequence retry that any other device's
 * grant on the same page would defeat.
 */
UHMM_API bool uhmm_device_exclusive_held(uint64_t addr, const void *owner, uint64_t *page);
/* Give pages back to the CPU before any CPU fault does (device closes).
 * npages == 0: every page owner holds, wherever it is. */
UHMM_API int uhmm_device_exclusive_release(uint64_t start, uint64_t npages,
					   const void *owner);

/* ------------------------------------------------------------------------ */
/* Counters and events                                                       */
/* ------------------------------------------------------------------------ */

struct uhmm_stats {
	uint64_t cpu_faults;             /* all CPU faults served */
	uint64_t cpu_faults_private;     /* ... on device-private pages */
	uint64_t cpu_faults_exclusive;   /* ... on device-exclusive pages */
	uint64_t cpu_faults_missing;     /* ... on never-populated/zapped pages */
	uint64_t cpu_faults_sigbus;      /* ... that could not be served */
	uint64_t range_faults;           /* uhmm_range_fault() calls */
	uint64_t pages_to_device;        /* pages migrated to device memory */
	uint64_t pages_to_system;        /* pages migrated back */
	uint64_t bytes_to_device;
	uint64_t bytes_to_system;
	uint64_t exclusive_grants;
	uint64_t exclusive_revokes;
	uint64_t invalidations[8];       /* by enum uhmm_notify_event */
	uint64_t evictions;              /* pages evicted by device address */
	uint64_t alloc_failures;         /* device or system page allocation */
	uint64_t uffd_events;            /* UNMAP/REMAP/REMOVE events read */
};
/* Snapshot of the process counters (relaxed reads; no lock). */
UHMM_API void uhmm_stats_get(struct uhmm_stats *st);
UHMM_API void uhmm_stats_reset(void);

enum uhmm_event_type {
	UHMM_EV_CPU_FAULT = 1,  /* arg: cause (1 private, 2 exclusive, 3 missing) */
	UHMM_EV_MIGRATE_TO_DEV, /* arg: pages */
	UHMM_EV_MIGRATE_TO_SYS, /* arg: pages */
	UHMM_EV_INVALIDATE,     /* arg: event */
	UHMM_EV_EXCLUSIVE_GRANT,
	UHMM_EV_EXCLUSIVE_REVOKE,
};
struct uhmm_event {
	uint64_t ts_ns;         /* CLOCK_MONOTONIC */
	uint64_t addr;
	uint64_t len;
	uint64_t duration_ns;   /* faults and migrations */
	uint32_t type;
	uint32_t arg;
};
/*
 * Install (or clear with NULL) an event callback, called synchronously in
 * the thread that did the work (often the fault-service thread: it must not
 * touch memory that is on a device).  When this returns, no call of the
 * previous callback is still running.
 */
UHMM_API void uhmm_set_event_cb(void (*cb)(const struct uhmm_event *ev, void *arg), void *arg);

#ifdef __cplusplus
}
#endif
#endif /* UHMM_H */
