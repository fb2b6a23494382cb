/* SPDX-License-Identifier: MIT */
/*
 * vma.c - the process's mappings: VMA lookup (PROCMAP_QUERY or
 * /proc/self/maps), registration of ranges with userfaultfd, the page scan
 * (PAGEMAP_SCAN or /proc/self/pagemap), populate, and device access to
 * process memory by address (uhmm_device_read/write).
 */
#include "internal.h"
#include "compat.h"

#include <fcntl.h>
#include <inttypes.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

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
/* Register [s, e) (under reg_lock), as a whole (missing) or its gaps. */
static int register_locked(struct uhmm__as *as, uint64_t s, uint64_t e, bool missing)
{
	for (uint64_t at = s; at < e;) {
		uint64_t gs = at, ge = e;
		uhmm__pt_lock(as);
		uhmm__reg_gap(as, at, e, missing, &gs, &ge);
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
		uhmm__reg_add(as, r, gs, ge, missing);
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
	bool done = uhmm__reg_covers(as, s, e, missing);
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
	if (scanned && (!excl || !uhmm__cow_possible())) {
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
