/* SPDX-License-Identifier: MIT */
/*
 * aspace.c - the address-space runtime: one per process, created on first
 * use.  Owns the userfaultfd, VMA lookup (PROCMAP_QUERY or /proc/self/maps),
 * registration of ranges, the page metadata (state + page lock of every page
 * that ever left SYSTEM), the fault-service thread and fork() handling.
 */
#include "internal.h"
#include "compat.h"

#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Protects g_as creation and teardown; outside the lock order (leaf, init only). */
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uhmm__as *g_as;
static int g_init_err;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;
/*
 * Set for good at the first fork() after uhmm started (in the parent, and
 * so in the child): from then on private pages may be shared copy-on-write,
 * and uhmm__page_scan() must read the kernel's "exclusively mapped" bit.
 */
static bool g_cow_possible;
static __thread bool tls_fork_holder;

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
		for (unsigned i = 0; i < BLOCK_PAGES; i++)
			if (!pmeta_idle(&b->pg[i]))
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

/* ---- VMAs ---------------------------------------------------------------- */

static int vma_from_maps_file(uint64_t addr, struct vma *out)
{
	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return -errno;
	char line[512];
	int rc = -EFAULT;
	while (fgets(line, sizeof(line), f)) {
		uint64_t s, e, off, ino;
		char perms[8], dev[16];
		int n = 0;
		if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %7s %" SCNx64 " %15s %" SCNu64 " %n",
			   &s, &e, perms, &off, dev, &ino, &n) < 6)
			continue;
		if (addr >= e)
			continue;  /* the first VMA ending above addr covers it or is next */
		const char *name = line + n;
		*out = (struct vma){
			.start = s, .end = e, .read = perms[0] == 'r', .write = perms[1] == 'w',
			.exec = perms[2] == 'x', .shared = perms[3] == 's', .file = ino != 0,
			.hugetlb = strstr(name, "/anon_hugepage") != NULL ||
				   strstr(name, "hugetlb") != NULL,
			.page_size = PG_SIZE,
		};
		rc = 0;
		break;
	}
	fclose(f);
	return rc;
}

/* The VMA containing addr, or the next one above it (start > addr: a hole).
 * -EFAULT if there is none above. */
int uhmm__vma_find(struct uhmm__as *as, uint64_t addr, struct vma *out)
{
	if (!(as->ufeat & UHMM_FEAT_PROCMAP_QUERY))
		return vma_from_maps_file(addr, out);
	struct procmap_query q = { .size = sizeof(q), .query_addr = addr,
				   .query_flags = PROCMAP_QUERY_COVERING_OR_NEXT_VMA };
	if (ioctl(as->maps_fd, PROCMAP_QUERY, &q) != 0)
		return errno == ENOENT ? -EFAULT : -errno;
	*out = (struct vma){
		.start = q.vma_start, .end = q.vma_end,
		.read = q.vma_flags & PROCMAP_QUERY_VMA_READABLE,
		.write = q.vma_flags & PROCMAP_QUERY_VMA_WRITABLE,
		.exec = q.vma_flags & PROCMAP_QUERY_VMA_EXECUTABLE,
		.shared = q.vma_flags & PROCMAP_QUERY_VMA_SHARED,
		.file = q.inode != 0,
		.hugetlb = q.vma_page_size > PG_SIZE,
		.page_size = q.vma_page_size ? q.vma_page_size : PG_SIZE,
	};
	return 0;
}

/* ---- registration ------------------------------------------------------- */

static bool reg_covers(struct uhmm__as *as, uint64_t s, uint64_t e, bool missing)
{
	/* Ranges are kept disjoint; walk until [s, e) is covered. */
	uint64_t at = s;
	bool progress = true;
	while (at < e && progress) {
		progress = false;
		for (struct reg_range *r = as->regs; r; r = r->next) {
			if (r->start <= at && at < r->end && (!missing || r->missing)) {
				at = r->end;
				progress = true;
			}
		}
	}
	return at >= e;
}

/* Caller holds pt_lock.  Drop [s, e) from the registration list. */
static void reg_forget(struct uhmm__as *as, uint64_t s, uint64_t e)
{
	uhmm__assert_pt_held(as);
	struct reg_range **pp = &as->regs, *r;
	while ((r = *pp)) {
		if (r->end <= s || r->start >= e) {
			pp = &r->next;
			continue;
		}
		if (r->start < s && r->end > e) {
			struct reg_range *tail = uhmm__zalloc(sizeof(*tail));
			if (tail) {
				*tail = (struct reg_range){ e, r->end, r->missing, r->next };
				r->next = tail;
			}
			r->end = s;
			pp = &r->next;
			continue;
		}
		if (r->start < s) {
			r->end = s;
			pp = &r->next;
		} else if (r->end > e) {
			r->start = e;
			pp = &r->next;
		} else {
			*pp = r->next;
			uhmm__free(r, sizeof(*r));
		}
	}
}

/*
 * MISSING registration covers exactly [start, end) (clipped to v): never the
 * rest of the VMA, which may hold a heap, a thread stack or a sanitizer's
 * records that the kernel merged with the application's mapping, and whose
 * faults would then wait for uhmm.  WP-only ("tracking") registration
 * changes no fault and takes the whole VMA, so that it splits nothing (a
 * split would break transparent huge pages).  WP-only registration ("tracked") makes the kernel
 * report munmap/mremap/madvise of the range without changing how its faults
 * are served; MISSING ("device-private capable") routes faults on absent
 * pages to the service thread and is only turned on where a page leaves the
 * CPU view.  Mappings userfaultfd cannot take (regular files) are left
 * untracked: the interposers still cover them.
 *
 * A range an intercepted call is tearing down is not registered (-EFAULT):
 * mremap unregisters its range so that the mapping is one VMA again, and a
 * registration of part of it would split it and make the move fail.  The
 * check and the ioctl are one step under reg_lock, which the mremap holds
 * for its UFFDIO_UNREGISTER.
 */
/* Caller holds pt_lock: record [s, e) as registered (mode missing). */
static void reg_add(struct uhmm__as *as, struct reg_range *r, uint64_t s, uint64_t e,
		    bool missing)
{
	uhmm__assert_pt_held(as);
	reg_forget(as, s, e);
	*r = (struct reg_range){ s, e, missing, as->regs };
	as->regs = r;
	/* Merge neighbours of the same mode: the list stays short. */
	for (struct reg_range **pp = &as->regs; *pp;) {
		struct reg_range *o = *pp;
		if (o != r && o->missing == r->missing && (o->end == r->start || o->start == r->end)) {
			r->start = o->start < r->start ? o->start : r->start;
			r->end = o->end > r->end ? o->end : r->end;
			*pp = o->next;
			uhmm__free(o, sizeof(*o));
			pp = &as->regs;
			continue;
		}
		pp = &o->next;
	}
}

/*
 * Caller holds pt_lock: the first run [*gs, *ge) of [at, e) that no
 * registration covers (*gs == e if none).  A tracking (WP-only)
 * registration goes only there: registering a range again replaces its
 * mode, and WP-only over a MISSING range would let the kernel fill the
 * holes of pages that are on a device with zeros.
 */
static void reg_gap(struct uhmm__as *as, uint64_t at, uint64_t e, uint64_t *gs, uint64_t *ge)
{
	uhmm__assert_pt_held(as);
	for (bool moved = true; moved && at < e;) {
		moved = false;
		for (struct reg_range *r = as->regs; r; r = r->next)
			if (r->start <= at && at < r->end) {
				at = r->end;
				moved = true;
			}
	}
	*gs = at < e ? at : e;
	*ge = e;
	for (struct reg_range *r = as->regs; r; r = r->next)
		if (r->start > *gs && r->start < *ge)
			*ge = r->start;
}

/* Register [s, e) (under reg_lock), as a whole (missing) or its gaps. */
static int register_locked(struct uhmm__as *as, uint64_t s, uint64_t e, bool missing)
{
	for (uint64_t at = s; at < e;) {
		uint64_t gs = at, ge = e;
		uhmm__pt_lock(as);
		if (!missing)
			reg_gap(as, at, e, &gs, &ge);
		uhmm__pt_unlock(as);
		if (gs >= e)
			return 0;
		struct reg_range *r = uhmm__zalloc(sizeof(*r));
		if (!r)
			return -ENOMEM;
		int rc = uhmm__uffd_register(as, gs, ge - gs, missing);
		if (rc) {
			uhmm__free(r, sizeof(*r));
			return rc;
		}
		uhmm__pt_lock(as);
		reg_add(as, r, gs, ge, missing);
		uhmm__pt_unlock(as);
		at = ge;
	}
	return 0;
}

int uhmm__ensure_registered(struct uhmm__as *as, const struct vma *v, uint64_t start,
			    uint64_t end, bool missing)
{
	uint64_t s = start < v->start ? v->start : start;
	uint64_t e = end > v->end ? v->end : end;
	if (!missing) {
		s = v->start;
		e = v->end;
	}
	if (s >= e)
		return 0;
	uhmm__pt_lock(as);
	bool done = reg_covers(as, s, e, missing);
	uhmm__pt_unlock(as);
	if (done)
		return 0;
	uhmm__lock(&as->reg_lock);
	uhmm__pt_lock(as);
	bool torn = uhmm__torn_overlaps(as, s, e);
	uhmm__pt_unlock(as);
	int rc = torn ? -EFAULT : register_locked(as, s, e, missing);
	uhmm__unlock(&as->reg_lock);
	return rc;
}

/* Caller holds pt_lock: does [start, end) touch a registered range? */
bool uhmm__reg_overlaps(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uhmm__assert_pt_held(as);
	for (struct reg_range *r = as->regs; r; r = r->next)
		if (r->start < end && start < r->end)
			return true;
	return false;
}

/*
 * Caller holds pt_lock: is addr in a MISSING-registered range?  An operation
 * that registered a range and then locked its pages checks again here: an
 * munmap + mmap in between leaves a new, unregistered mapping, whose pages
 * must not leave the CPU view (the kernel would fill the hole with zeros).
 */
bool uhmm__reg_missing(struct uhmm__as *as, uint64_t addr)
{
	uhmm__assert_pt_held(as);
	for (struct reg_range *r = as->regs; r; r = r->next)
		if (r->start <= addr && addr < r->end)
			return r->missing;
	return false;
}

/* ---- page scan ----------------------------------------------------------- */

/*
 * Per-page PAGE_IS_* categories of [start, end) into cats[], plus, if excl,
 * bit 63 for "mapped exclusively" (pagemap bit 56: a private page that is not
 * COW shared).  Until the process forks, every present private anonymous
 * page but the zero page is exclusive, and the pagemap is not read (it costs
 * as much as the scan itself).  A file page (PAGE_IS_FILE; pagemap bit 61
 * without PAGEMAP_SCAN) is never exclusive, whatever its map count: in a
 * MAP_PRIVATE file mapping it is the page cache's page, which the CPU maps
 * read-only until the first write makes the private (anonymous) copy, so
 * the kernel's hmm_range_fault() reports it without WRITE and breaks COW on
 * a write fault; MAP_SHARED callers do not look at the bit.  Pages shared
 * with a child forked before uhmm started, or merged by KSM, are reported
 * exclusive: a device write to one still goes through the kernel's
 * copy-on-write (uhmm_device_write writes by address), only the WRITE flag
 * is optimistic.  Returns 0 or -errno.
 */
#define CAT_EXCLUSIVE (1ULL << 63)
int uhmm__page_scan(struct uhmm__as *as, uint64_t start, uint64_t end,
		    uint64_t *cats, uint64_t npages, bool excl)
{
	memset(cats, 0, npages * sizeof(*cats));
	if (as->ufeat & UHMM_FEAT_PAGEMAP_SCAN) {
		struct page_region vec[64];
		uint64_t at = start;
		while (at < end) {
			struct pm_scan_arg a = {
				.size = sizeof(a), .start = at, .end = end,
				.vec = (uint64_t)(uintptr_t)vec, .vec_len = ARRAY_SIZE(vec),
				.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
				.return_mask = PAGE_IS_PRESENT | PAGE_IS_PFNZERO | PAGE_IS_HUGE |
					       PAGE_IS_SWAPPED | PAGE_IS_FILE,
			};
			long n = ioctl(as->pagemap_fd, PAGEMAP_SCAN, &a);
			if (n < 0)
				return -errno;
			for (long i = 0; i < n; i++)
				for (uint64_t p = vec[i].start; p < vec[i].end; p += PG_SIZE)
					cats[(p - start) >> PG_SHIFT] = vec[i].categories;
			if (a.walk_end <= at)
				break;
			at = a.walk_end;
		}
	}
	bool scanned = as->ufeat & UHMM_FEAT_PAGEMAP_SCAN;
	if (scanned && (!excl || !__atomic_load_n(&g_cow_possible, __ATOMIC_RELAXED))) {
		for (uint64_t i = 0; excl && i < npages; i++)
			if ((cats[i] & PAGE_IS_PRESENT) &&
			    !(cats[i] & (PAGE_IS_PFNZERO | PAGE_IS_FILE)))
				cats[i] |= CAT_EXCLUSIVE;
		return 0;
	}
	/* Exclusivity (and presence without PAGEMAP_SCAN) from /proc/self/pagemap. */
	uint64_t buf[512];
	for (uint64_t i = 0; i < npages; i += ARRAY_SIZE(buf)) {
		uint64_t n = npages - i < ARRAY_SIZE(buf) ? npages - i : ARRAY_SIZE(buf);
		off_t off = (off_t)(((start >> PG_SHIFT) + i) * sizeof(uint64_t));
		ssize_t got = pread(as->pagemap_fd, buf, n * sizeof(uint64_t), off);
		if (got < 0)
			return -errno;
		for (uint64_t j = 0; j < (uint64_t)got / sizeof(uint64_t); j++) {
			bool file = (buf[j] & PM_FILE) || (cats[i + j] & PAGE_IS_FILE);
			if ((buf[j] & PM_MMAP_EXCLUSIVE) && !file)
				cats[i + j] |= CAT_EXCLUSIVE;
			if (!(as->ufeat & UHMM_FEAT_PAGEMAP_SCAN) && (buf[j] & PM_PRESENT))
				cats[i + j] |= PAGE_IS_PRESENT | (file ? PAGE_IS_FILE : 0);
		}
	}
	return 0;
}

/*
 * Fill page a with the zero page if it is a hole of a MISSING-registered
 * range.  The page lock is held across the ioctl, not pt_lock: the ioctl
 * retries while an unmap event waits to be read, and the service thread
 * that reads it needs pt_lock.
 */
static int fill_hole(struct uhmm__as *as, uint64_t a)
{
	uhmm__pt_lock(as);
	struct pmeta *pm = uhmm__reg_missing(as, a) ? uhmm__pmeta(as, a, true) : NULL;
	bool mine = pm && pm->state == PS_SYSTEM && !pm->locked && !uhmm__torn_down(as, a);
	if (mine)
		pm->locked = LOCK_DATA;
	uhmm__pt_unlock(as);
	if (!mine)
		return 0;
	int rc = uhmm__uffd_zeropage(as, a, PG_SIZE, true);
	uhmm__pt_lock(as);
	uhmm__page_unlock(as, a, uhmm__pmeta(as, a, false));
	uhmm__pt_unlock(as);
	return rc == -EEXIST ? 0 : rc == -ENOENT ? -EFAULT : rc;
}

/*
 * Make [start, end) of v present (and writable if write) in the CPU view.
 * Holes in a MISSING-registered range are filled here with zero pages so the
 * caller does not wait for the service thread; the rest is the kernel's own
 * fault path (MADV_POPULATE_*).  -EFAULT/-EPERM/-ENOMEM on failure.
 */
int uhmm__populate(struct uhmm__as *as, const struct vma *v, uint64_t start, uint64_t end,
		   bool write)
{
	for (uint64_t a = start; a < end && !v->shared; a += PG_SIZE) {
		int rc = fill_hole(as, a);
		if (rc)
			return rc;
	}
	int adv = write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ;
	if (syscall(SYS_madvise, start, end - start, adv) == 0)
		return 0;
	int err = errno;
	if (err == EINVAL || err == ENOSYS) {
		/* Kernel without MADV_POPULATE: touch through the kernel. */
		for (uint64_t a = start; a < end; a += PG_SIZE) {
			char c;
			if (uhmm_device_read(&c, a, 1))
				return -EFAULT;
			if (write && uhmm_device_write(a, &c, 1))
				return -EFAULT;
		}
		return 0;
	}
	return err == ENOMEM ? -EFAULT : -err;
}

/* ---- CPU faults ---------------------------------------------------------- */

/* Resolve a fault on an absent SYSTEM page with the zero page. */
static int fault_missing(struct uhmm__as *as, uint64_t addr)
{
	STAT_ADD(cpu_faults_missing, 1);
	STAT_ADD(cpu_faults, 1);
	int rc = uhmm__uffd_zeropage(as, addr, PG_SIZE, true);
	if (rc == -EEXIST)
		rc = uhmm__uffd_wake(as, addr, PG_SIZE);
	if (rc == -ENOENT)  /* the range went away: let the access fail normally */
		rc = uhmm__uffd_wake(as, addr, PG_SIZE);
	return rc;
}

static int add_deferred(struct uhmm__as *as, uint64_t addr)
{
	struct deferred_fault *d = uhmm__zalloc(sizeof(*d));
	if (!d)
		return -ENOMEM;
	*d = (struct deferred_fault){ .addr = addr, .next = as->deferred_faults };
	as->deferred_faults = d;
	return 0;
}

/*
 * Serve a CPU fault at addr (page aligned), from the service thread or from
 * a thread that needs the page in the CPU view (range fault, fork, mremap).
 * The service thread never sleeps on a page lock: it parks the fault and
 * returns -EAGAIN; once the page is unlocked the thread is woken to retry
 * its access (serve_deferred), and a retry that still faults is a new
 * message.  Returns 0 when the page is back in the CPU view (or never left
 * it), else -errno (caller sends SIGBUS).
 */
int uhmm__cpu_fault(struct uhmm__as *as, uint64_t addr, bool write, bool from_service)
{
	uint64_t t0 = uhmm__now_ns();
	TR('F', addr, 0, 4096, write | from_service << 1);
	for (int tries = 0; tries < 64; tries++) {
		uhmm__pt_lock(as);
		struct pmeta *pm = uhmm__pmeta(as, addr, false);
		if (pm && uhmm__hole_fault(as, pm)) {
			/* A hole being migrated: the CPU wins, the migration loses it. */
			int rc = from_service ? fault_missing(as, addr) : 0;
			uhmm__pt_unlock(as);
			return rc;
		}
		if (pm && pm->locked) {
			if (from_service) {
				int rc = add_deferred(as, addr);
				pm->waiters = 1;
				uhmm__pt_unlock(as);
				return rc ? rc : -EAGAIN;
			}
			uhmm__page_lock_wait(as, addr);
			uhmm__pt_unlock(as);
			continue;
		}
		int state = pm ? pm->state : PS_SYSTEM;
		uint32_t fr = pm ? pm->frame : 0;
		if (state == PS_SYSTEM || state == PS_COHERENT) {
			int rc = 0;
			if (from_service) {
				rc = fault_missing(as, addr);
				uhmm__event(UHMM_EV_CPU_FAULT, 3, addr, PG_SIZE, t0);
			}
			uhmm__pt_unlock(as);
			return rc;
		}
		if (state == PS_EXCLUSIVE) {
			uhmm__pt_unlock(as);
			int rc = uhmm__exclusive_revoke(as, addr, from_service);
			if (rc == -EAGAIN)
				continue;
			return rc;
		}
		/*
		 * PS_PRIVATE: the owner's migrate_to_ram brings it back, with the
		 * page locked for it (LOCK_FAULT), so that no other operation
		 * takes the page in between and the driver's migration needs to
		 * wait for no lock (the service thread must never wait for one).
		 */
		struct frame *f = uhmm__frame(as, fr);
		struct uhmm_devmem *pool = f ? frame_pool(f) : NULL;
		if (!pool || !pool->ops || !pool->ops->migrate_to_ram) {
			uhmm__pt_unlock(as);
			return -EFAULT;
		}
		pm->locked = LOCK_FAULT;
		uhmm__pt_unlock(as);
		struct uhmm_fault vmf = { .addr = addr, .page = fr, .write = write };
		if (from_service && tries == 0) {
			/* Counted before the driver's migration wakes the thread. */
			STAT_ADD(cpu_faults_private, 1);
			STAT_ADD(cpu_faults, 1);
		}
		/*
		 * A slow pool's fault goes to a worker and the service thread
		 * goes on; a pool whose migrate_to_ram is fast in fact is served
		 * in place (the hand-off costs more than it saves: faultwork.c).
		 */
		if (from_service && uhmm__fault_should_defer(pool) &&
		    uhmm__fault_defer(as, pool, addr, fr, write, as->fault_tid, t0) == 0)
			return 0;
		uint64_t m0 = uhmm__now_ns();
		int rc = pool->ops->migrate_to_ram(pool, &vmf);
		uhmm__fault_timed(pool, uhmm__now_ns() - m0);
		uhmm__pt_lock(as);
		pm = uhmm__pmeta(as, addr, false);
		if (pm)  /* kept while locked: it cannot have gone */
			uhmm__page_unlock(as, addr, pm);
		uhmm__pt_unlock(as);
		if (rc)
			return rc;
		/*
		 * Done with this fault whatever the page's state is now: the
		 * thread re-runs its access, and if the driver left the page on
		 * the device it faults again (a new message).  Looking again
		 * here would take back a page that was legitimately migrated
		 * again right after the thread went on.
		 */
		if (from_service) {
			/* finalize woke the range; a driver that did nothing did not */
			uhmm__pt_lock(as);
			pm = uhmm__pmeta(as, addr, false);
			bool still = pm && pm->state == PS_PRIVATE;
			uhmm__pt_unlock(as);
			if (still)
				uhmm__uffd_wake(as, addr, PG_SIZE);
			uhmm__event(UHMM_EV_CPU_FAULT, 1, addr, PG_SIZE, t0);
			return 0;
		}
		uhmm__pt_lock(as);
		pm = uhmm__pmeta(as, addr, false);
		bool back = !pm || (pm->state != PS_PRIVATE && !pm->locked);
		uhmm__pt_unlock(as);
		if (back)
			return 0;
	}
	return -EBUSY;
}

#define BRING_BACK_TRIES 1000

/* Bring every device-private/exclusive page of [start, end) back to the CPU. */
int uhmm__bring_back_range(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	for (uint64_t a = start; a < end;) {
		uint64_t bend = uhmm__block_end(a);
		if (bend > end)
			bend = end;
		uhmm__pt_lock(as);
		bool any = uhmm__has_block(as, a);  /* none: nothing device-side here */
		uhmm__pt_unlock(as);
		if (!any) {
			a = bend;
			continue;
		}
		for (; a < bend; a += PG_SIZE) {
			uhmm__pt_lock(as);
			uhmm__page_lock_wait(as, a);
			struct pmeta *pm = uhmm__pmeta(as, a, false);
			int st = pm ? pm->state : PS_SYSTEM;
			uhmm__pt_unlock(as);
			/*
			 * A failure may be passing (an allocation, the driver's
			 * copy): the callers (mremap, mprotect, fork) cannot fail
			 * for it, and a page left behind would be lost, so retry.
			 */
			int rc = 0;
			for (int t = 0; t < BRING_BACK_TRIES &&
			     (st == PS_PRIVATE || st == PS_EXCLUSIVE); t++) {
				rc = uhmm__cpu_fault(as, a, false, false);
				if (rc == 0)
					break;
				sched_yield();
			}
			if (rc) {
				uhmm__log("page 0x%llx could not be brought back: %s",
					  (unsigned long long)a, strerror(-rc));
				return rc;
			}
		}
	}
	return 0;
}

/* Wait until no page of [start, end) is locked by an operation. */
void uhmm__wait_range_unlocked(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uhmm__pt_lock(as);
	for (uint64_t a = start; a < end;) {
		uint64_t bend = uhmm__block_end(a);
		if (!uhmm__has_block(as, a)) {
			a = bend;
			continue;
		}
		for (; a < end && a < bend; a += PG_SIZE)
			uhmm__page_lock_wait(as, a);
	}
	uhmm__pt_unlock(as);
}

/*
 * The range [start, end) is going away (munmap, or mremap after the data was
 * brought back): free every frame it held (device pages back to their pools,
 * I4) and forget its metadata and registration.
 */
void uhmm__forget_range(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uint32_t batch[256];
	unsigned n = 0;
	TR('G', start, 0, end - start, 0);
	/*
	 * Under reg_lock: a registration that passed its teardown check before
	 * the range was marked must have recorded itself before we forget.
	 */
	uhmm__lock(&as->reg_lock);
	uhmm__pt_lock(as);
	reg_forget(as, start, end);
	uhmm__pt_unlock(as);
	uhmm__unlock(&as->reg_lock);
	uhmm__pt_lock(as);
	for (uint64_t a = start; a < end;) {
		uint64_t bend = uhmm__block_end(a);
		if (!uhmm__has_block(as, a)) {
			a = bend;
			continue;
		}
		for (; a < end && a < bend; a += PG_SIZE) {
			uhmm__page_lock_wait(as, a);
			struct pmeta *pm = uhmm__pmeta(as, a, false);
			if (!pm || pm->state == PS_SYSTEM)
				continue;
			if (pm->frame)
				batch[n++] = pm->frame;
			pm->state = PS_SYSTEM;
			pm->frame = 0;
			uhmm__pmeta_changed(as, a, pm);
			if (n == ARRAY_SIZE(batch)) {
				uhmm__pt_unlock(as);
				for (unsigned i = 0; i < n; i++)
					uhmm__frame_put(as, batch[i]);
				n = 0;
				uhmm__pt_lock(as);
			}
		}
	}
	uhmm__pt_unlock(as);
	for (unsigned i = 0; i < n; i++)
		uhmm__frame_put(as, batch[i]);
}

/* ---- the fault-service thread ------------------------------------------- */

static void sigbus_thread(struct uhmm__as *as, const struct uffd_msg *m, int err)
{
	pid_t tid = (pid_t)m->arg.pagefault.feat.ptid;
	STAT_ADD(cpu_faults_sigbus, 1);
	uhmm__log("CPU fault at 0x%llx could not be served (%s): sending SIGBUS to thread %d",
		  (unsigned long long)m->arg.pagefault.address, strerror(-err), (int)tid);
	if (tid > 0)
		syscall(SYS_tgkill, as->pid, tid, SIGBUS);
	else
		kill(as->pid, SIGBUS);
	uhmm__uffd_wake(as, m->arg.pagefault.address & PG_MASK, PG_SIZE);
}

/* A fault a worker served (faultwork.c): as the end of uhmm__cpu_fault. */
void uhmm__fault_finish(struct uhmm__as *as, uint64_t addr, int rc, pid_t tid, uint64_t t0)
{
	uhmm__pt_lock(as);
	struct pmeta *pm = uhmm__pmeta(as, addr, false);
	if (pm)  /* kept while locked (LOCK_FAULT): it cannot have gone */
		uhmm__page_unlock(as, addr, pm);
	bool still = pm && pm->state == PS_PRIVATE;
	uhmm__pt_unlock(as);
	if (rc) {
		struct uffd_msg m = { .event = UFFD_EVENT_PAGEFAULT };
		m.arg.pagefault.address = addr;
		m.arg.pagefault.feat.ptid = (uint32_t)tid;
		sigbus_thread(as, &m, rc);
		return;
	}
	if (still)  /* the driver left it on the device: the thread faults again */
		uhmm__uffd_wake(as, addr, PG_SIZE);
	uhmm__event(UHMM_EV_CPU_FAULT, 1, addr, PG_SIZE, t0);
}

/*
 * Parked faults (a fault that found its page locked, see uhmm__cpu_fault):
 * once the page is unlocked, its thread is woken to retry the access, as
 * the kernel's fault that waited for a locked page returns and retries; a
 * fault that is still needed comes back as a new message and is served
 * then.  A parked fault is never served from here: by the time its page is
 * unlocked it may be stale.  Measured (page trace, test_migrate
 * migrate_fail_alloc_zero_private, a driver-owned pool): a fault worker's
 * migrate_to_ram window held page P; the thread, woken by the install of
 * the fault page, faulted on P and was parked; the install of P (a copy:
 * the mapping is read-only) woke it and it went on.  Its record, re-served
 * only after the thread's next migration had taken P to the device again,
 * ran migrate_to_ram for a fault that no longer existed and brought P back
 * (that migration then had 511 of 512 pages; or -ENOENT in its read-back).
 * A re-served record could likewise make a migration lose a collected hole
 * (LOCK_HOLE -> LOCK_LOST).  A wake of a thread that went on already is a
 * no-op, so a fault whose page is still locked stays parked, and the rest
 * are woken, never served.
 */
static void serve_deferred(struct uhmm__as *as)
{
	struct deferred_fault *wake = NULL, *keep = NULL;
	uhmm__pt_lock(as);
	struct deferred_fault *d = as->deferred_faults;
	as->deferred_faults = NULL;
	while (d) {
		struct deferred_fault *next = d->next;
		struct pmeta *pm = uhmm__pmeta(as, d->addr, false);
		/* a collected hole is no wait: the retried access takes it (hole_fault) */
		if (pm && pm->locked && pm->locked != LOCK_HOLE) {
			pm->waiters = 1;
			d->next = keep;
			keep = d;
		} else {
			d->next = wake;
			wake = d;
		}
		d = next;
	}
	as->deferred_faults = keep;  /* under pt_lock: an unlock still signals wake_fd */
	uhmm__pt_unlock(as);
	while (wake) {
		struct deferred_fault *next = wake->next;
		uhmm__uffd_wake(as, wake->addr, PG_SIZE);
		uhmm__free(wake, sizeof(*wake));
		wake = next;
	}
}

/* Read uffd messages, counting them under read_lock (see as->ev_read). */
ssize_t uhmm__uffd_read_msgs(struct uhmm__as *as, void *buf, size_t len)
{
	uhmm__lock(&as->read_lock);
	ssize_t n = read(as->uffd, buf, len);
	if (n > 0)
		as->ev_read += (uint64_t)n / sizeof(struct uffd_msg);
	uhmm__unlock(&as->read_lock);
	return n;
}

static void serve_msg(struct uhmm__as *as, const struct uffd_msg *m)
{
	uint64_t seq = __atomic_load_n(&as->ev_handled, __ATOMIC_RELAXED) + 1;
	if (m->event != UFFD_EVENT_PAGEFAULT) {
		STAT_ADD(uffd_events, 1);
		uhmm__handle_uffd_event(as, m, seq);
		__atomic_store_n(&as->ev_handled, seq, __ATOMIC_RELEASE);
		return;
	}
	__atomic_store_n(&as->ev_handled, seq, __ATOMIC_RELEASE);
	uint64_t addr = m->arg.pagefault.address & PG_MASK;
	bool write = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;
	as->fault_tid = (pid_t)m->arg.pagefault.feat.ptid;
	uhmm__service_follow(as->fault_tid);  /* serve it on its CPU (placement.c) */
	int rc = uhmm__cpu_fault(as, addr, write, true);
	if (rc && rc != -EAGAIN)
		sigbus_thread(as, m, rc);
}

/*
 * Service thread, inside an operation that got EAGAIN: read what is pending
 * on the uffd without handling it (that may need locks the operation holds),
 * so that an munmap/mremap waiting for its event to be read can finish.
 * Returns true if anything was read.
 */
bool uhmm__service_drain(struct uhmm__as *as)
{
	if (!as->pending)
		return false;
	unsigned room = 256 - as->npending;
	if (!room)
		return false;
	ssize_t n = uhmm__uffd_read_msgs(as, as->pending + as->npending,
					 room * sizeof(struct uffd_msg));
	if (n <= 0)
		return false;
	as->npending += (unsigned)(n / (ssize_t)sizeof(struct uffd_msg));
	return true;
}

static void *service_main(void *arg)
{
	struct uhmm__as *as = arg;
	uhmm__set_service_thread();
	uhmm__service_placement_init();
	struct pollfd pfd[3] = {
		{ .fd = as->uffd, .events = POLLIN },
		{ .fd = as->wake_fd, .events = POLLIN },
		{ .fd = as->stop_fd, .events = POLLIN },
	};
	struct uffd_msg msgs[32];
	for (;;) {
		/* Serving may read more early; loop until nothing is pending. */
		while (as->npending) {
			unsigned n = as->npending;
			struct uffd_msg early[256];
			memcpy(early, as->pending, n * sizeof(early[0]));
			as->npending = 0;
			for (unsigned i = 0; i < n; i++)
				serve_msg(as, &early[i]);
		}
		if (poll(pfd, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			uhmm__log("service thread: poll: %s", strerror(errno));
			break;
		}
		if (pfd[2].revents)
			break;
		if (pfd[1].revents) {
			uint64_t v;
			if (read(as->wake_fd, &v, sizeof(v)) > 0)
				serve_deferred(as);
		}
		if (pfd[0].revents & (POLLERR | POLLHUP))
			break;
		if (!(pfd[0].revents & POLLIN))
			continue;
		ssize_t n = uhmm__uffd_read_msgs(as, msgs, sizeof(msgs));
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			uhmm__log("service thread: read: %s", strerror(errno));
			break;
		}
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++)
			serve_msg(as, &msgs[i]);
	}
	return NULL;
}


/* ---- fork ---------------------------------------------------------------- */

void uhmm__fork_rdlock(struct uhmm__as *as)
{
	if (!tls_fork_holder)
		pthread_rwlock_rdlock(&as->fork_lock);
}

void uhmm__fork_unlock(struct uhmm__as *as)
{
	if (!tls_fork_holder)
		pthread_rwlock_unlock(&as->fork_lock);
}

/*
 * Before fork(): every page that is not in the CPU view comes back (device
 * private through its owner's migrate_to_ram, exclusive by revocation), and
 * no migration may start until the fork is done, so the child's copy of the
 * address space holds all the data (COW from there on, by the kernel).
 */
static void atfork_prepare(void)
{
	__atomic_store_n(&g_cow_possible, true, __ATOMIC_RELAXED);
	struct uhmm__as *as = uhmm__as_peek();
	if (!as)
		return;
	pthread_rwlock_wrlock(&as->fork_lock);
	tls_fork_holder = true;
	for (;;) {
		uint64_t addr = 0;
		uhmm__pt_lock(as);
		for (uint64_t h = 0; h < as->hash_size && !addr; h++)
			for (struct block *b = as->hash[h]; b && !addr; b = b->hnext)
				for (unsigned i = 0; i < BLOCK_PAGES; i++)
					if (b->pg[i].state == PS_PRIVATE ||
					    b->pg[i].state == PS_EXCLUSIVE) {
						addr = b->base + ((uint64_t)i << PG_SHIFT);
						break;
					}
		uhmm__pt_unlock(as);
		if (!addr)
			break;
		if (uhmm__cpu_fault(as, addr, false, false)) {
			uhmm__log("fork: page 0x%llx could not be brought back; the child "
				  "will read zeros there", (unsigned long long)addr);
			uhmm__pt_lock(as);
			struct pmeta *pm = uhmm__pmeta(as, addr, false);
			if (pm && !pm->locked)
				pm->state = PS_SYSTEM;  /* give up on it rather than loop */
			uhmm__pt_unlock(as);
		}
	}
	/*
	 * Coherent pages become plain system pages: after fork they are COW
	 * shared like any anonymous page, and the first write gives each side
	 * a system page of its own.
	 */
	for (uint64_t h = 0; h < as->hash_size; h++) {
		uhmm__pt_lock(as);
		uint32_t frames[BLOCK_PAGES];
		unsigned n = 0;
		for (struct block *b = as->hash[h]; b && !n; b = b->hnext) {
			for (unsigned i = 0; i < BLOCK_PAGES; i++) {
				struct pmeta *pm = &b->pg[i];
				if (pm->state != PS_COHERENT || pm->locked)
					continue;
				frames[n++] = pm->frame;
				pm->state = PS_SYSTEM;
				pm->frame = 0;
			}
			if (n)
				uhmm__pmeta_changed(as, b->base, &b->pg[0]);
		}
		uhmm__pt_unlock(as);
		for (unsigned i = 0; i < n; i++)
			uhmm__frame_put(as, frames[i]);
		if (n)
			h--;  /* the chain may hold more blocks: look again */
	}
}

static void atfork_parent(void)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (!as)
		return;
	tls_fork_holder = false;
	pthread_rwlock_unlock(&as->fork_lock);
}

/*
 * In the child: the parent's userfaultfd does not cover the child's memory
 * (no UFFD_FEATURE_EVENT_FORK), its service thread does not exist, and its
 * device pools belong to the parent.  The child drops the runtime (closing
 * its descriptors and the parent's frame arena) and makes a new one on
 * first use, so that it can open devices and use uhmm itself.
 */
static void atfork_child(void)
{
	struct uhmm__as *as = g_as;
	tls_fork_holder = false;
	if (!as)
		return;
	g_as = NULL;
	g_init_err = 0;
	close(as->uffd);
	close(as->arena_uffd);
	close(as->maps_fd);
	close(as->pagemap_fd);
	close(as->wake_fd);
	close(as->stop_fd);
	syscall(SYS_munmap, as->arena, as->arena_frames << PG_SHIFT);
	/* The rest of the old runtime's memory is abandoned in the child. */
	pthread_mutex_init(&g_init_lock, NULL);
}

static void install_atfork(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* ---- creation ------------------------------------------------------------ */

static uint64_t probe_ufeat(struct uhmm__as *as)
{
	uint64_t f = 0;
	if (as->features & UFFD_FEATURE_MOVE)
		f |= UHMM_FEAT_MOVE;
	if ((as->features & UFFD_FEATURE_EVENT_UNMAP) && (as->features & UFFD_FEATURE_EVENT_REMOVE))
		f |= UHMM_FEAT_EVENTS;
	f |= UHMM_FEAT_WP;
	struct pm_scan_arg a = { .size = sizeof(a), .start = 0, .end = 0 };
	if (ioctl(as->pagemap_fd, PAGEMAP_SCAN, &a) >= 0 || errno != ENOTTY)
		f |= UHMM_FEAT_PAGEMAP_SCAN;
	struct procmap_query q = { .size = sizeof(q), .query_addr = (uint64_t)(uintptr_t)&probe_ufeat };
	if (ioctl(as->maps_fd, PROCMAP_QUERY, &q) == 0)
		f |= UHMM_FEAT_PROCMAP_QUERY;
	return f;
}

static void as_destroy_fds(struct uhmm__as *as)
{
	int fds[] = { as->uffd, as->arena_uffd, as->maps_fd, as->pagemap_fd, as->wake_fd,
		      as->stop_fd };
	for (unsigned i = 0; i < ARRAY_SIZE(fds); i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

static int as_create(struct uhmm__as **out)
{
	if (sysconf(_SC_PAGESIZE) != (long)PG_SIZE) {
		uhmm__log("page size is %ld; uhmm supports 4 KiB pages only", sysconf(_SC_PAGESIZE));
		return -ENOTSUP;
	}
	struct uhmm__as *as = uhmm__zalloc(sizeof(*as));
	if (!as)
		return -ENOMEM;
	as->uffd = as->arena_uffd = as->maps_fd = as->pagemap_fd = as->wake_fd = as->stop_fd = -1;
	int rc = uhmm__uffd_open(&as->features);
	if (rc < 0) {
		uhmm__log("%s (%s)", uhmm__uffd_why(rc), strerror(-rc));
		uhmm__free(as, sizeof(*as));
		return rc == -EACCES ? -EPERM : rc;
	}
	as->uffd = rc;
	as->pid = getpid();
	as->maps_fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	as->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	as->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	as->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	as->pending = uhmm__zalloc(256 * sizeof(struct uffd_msg));
	as->hash_size = 4096;
	as->hash = uhmm__zalloc(as->hash_size * sizeof(*as->hash));
	rc = -ENOMEM;
	if (as->maps_fd < 0 || as->pagemap_fd < 0 || as->wake_fd < 0 || as->stop_fd < 0 ||
	    !as->hash || !as->pending) {
		rc = as->hash ? -errno : -ENOMEM;
		goto fail;
	}
	as->ufeat = probe_ufeat(as);
	pthread_rwlock_init(&as->fork_lock, NULL);
	pthread_mutex_init(&as->reg_lock, NULL);
	pthread_mutex_init(&as->read_lock, NULL);
	pthread_mutex_init(&as->nt_lock, NULL);
	pthread_cond_init(&as->nt_cond, NULL);
	pthread_mutex_init(&as->pt_lock, NULL);
	pthread_cond_init(&as->pt_cond, NULL);
	pthread_mutex_init(&as->arena_lock, NULL);
	rc = uhmm__arena_init(as);
	if (rc)
		goto fail;
	if (uhmm__inject(INJ_THREAD)) {
		rc = -EAGAIN;
		goto fail;
	}
	rc = -pthread_create(&as->service, NULL, service_main, as);
	if (rc)
		goto fail;
	pthread_setname_np(as->service, "uhmm-fault");
	as->service_started = true;
	uhmm__publish_start(as);  /* /dev/shm/uhmm.<pid>, UHMM_TRACE_FILE (publish.c) */
	*out = as;
	return 0;
fail:
	uhmm__log("runtime creation failed: %s", strerror(-rc));
	if (as->arena)
		syscall(SYS_munmap, as->arena, as->arena_frames << PG_SHIFT);
	as_destroy_fds(as);
	uhmm__free(as->hash, as->hash_size * sizeof(*as->hash));
	uhmm__free(as, sizeof(*as));
	return rc;
}

struct uhmm__as *uhmm__as_peek(void)
{
	return __atomic_load_n(&g_as, __ATOMIC_ACQUIRE);
}

struct uhmm__as *uhmm__as_get(int *err)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (UHMM_LIKELY(as))
		return as;
	pthread_once(&g_atfork_once, install_atfork);
	uhmm__intercept_link();
	uhmm__lock(&g_init_lock);
	if (!g_as && !g_init_err) {
		int rc = as_create(&as);
		if (rc)
			g_init_err = rc;
		else
			__atomic_store_n(&g_as, as, __ATOMIC_RELEASE);
	}
	as = g_as;
	if (!as && err)
		*err = g_init_err;
	uhmm__unlock(&g_init_lock);
	return as;
}

int uhmm_init(void)
{
	int err = 0;
	return uhmm__as_get(&err) ? 0 : err;
}

uint64_t uhmm_features(void)
{
	struct uhmm__as *as = uhmm__as_get(NULL);
	return as ? as->ufeat : 0;
}

/*
 * At exit: devices are told (RELEASE) and the service thread stops.  Pages
 * still on devices are not brought back: the process is going away.
 */
__attribute__((destructor)) static void as_exit(void)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (!as || as->pid != getpid())
		return;
	uhmm__notifier_release_all(as);
	uint64_t one = 1;
	if (write(as->stop_fd, &one, sizeof(one)) == sizeof(one) && as->service_started)
		pthread_join(as->service, NULL);
	uhmm__publish_exit();  /* the timeline written, /dev/shm/uhmm.<pid> removed */
}
