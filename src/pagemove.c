/* SPDX-License-Identifier: MIT */
/*
 * pagemove.c - moving a page between the CPU view and a frame (UFFDIO_MOVE,
 * with the copies the kernel forces on some mappings), and uhmm's own zap
 * of process memory.  The page lock is the caller's.
 */
#include "internal.h"
#include "compat.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/*
 * uhmm's own MADV_DONTNEED of process memory: the kernel posts a REMOVE
 * event and waits until the service thread has read it, so the service
 * thread itself must never do this (-EDEADLK), and the event is marked as
 * ours so that it is not taken for the application's.
 */
int uhmm__zap_app_range(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	if (uhmm__in_service_thread())
		return -EDEADLK;
	struct inflight_op *op = uhmm__inflight_begin(as, start, end, false);
	int rc = (int)syscall(SYS_madvise, start, end - start, MADV_DONTNEED);
	uhmm__inflight_end(as, op, rc == 0);
	return rc ? -errno : 0;
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
		uhmm__frame_set_populated(as, idx, true);
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
		uhmm__frame_set_populated(as, idx, false);
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
		uhmm__frame_set_populated(as, idx, false);
	return rc;
}
